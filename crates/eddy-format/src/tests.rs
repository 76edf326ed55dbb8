//! End-to-end tests of decoding and encoding through the public API.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Date32Array, Decimal128Array,
    Float64Array, Int32Array, Int32Builder, Int64Array, ListBuilder, MapBuilder, MapFieldNames,
    RecordBatch, StringArray, StringBuilder, StructArray, Time32MillisecondArray,
    TimestampMillisecondArray,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Fields, Int32Type, Schema, TimeUnit};

use crate::{
    Decoded, EncodedBatch, Format, FormatError, RawBatch, RecordDecoder, RecordEncoder, RecordPart,
    SourceLayout,
};

fn list_of(t: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", t, true)))
}

fn map_of(k: DataType, v: DataType) -> DataType {
    DataType::Map(
        Arc::new(Field::new(
            "entries",
            DataType::Struct(Fields::from(vec![
                Field::new("key", k, false),
                Field::new("value", v, true),
            ])),
            false,
        )),
        false,
    )
}

fn struct_of(fields: Vec<Field>) -> DataType {
    DataType::Struct(Fields::from(fields))
}

fn f(name: &str, t: DataType) -> Field {
    Field::new(name, t, true)
}

fn layout(
    keys: Vec<Field>,
    values: Vec<Field>,
    key_format: Format,
    value_format: Format,
) -> SourceLayout {
    SourceLayout::new(keys, values, key_format, value_format).unwrap()
}

/// Decodes values (no key) at partition 0, offsets 100.., timestamps 1000...
fn decode_values(layout: &SourceLayout, values: &[&str]) -> Decoded {
    let mut raw = RawBatch::new();
    for (i, v) in values.iter().enumerate() {
        raw.push(None, Some(v.as_bytes()), 1000 + i as i64, 0, 100 + i as i64);
    }
    RecordDecoder::new(layout).unwrap().decode(&raw).unwrap()
}

fn json_values(values: Vec<Field>) -> SourceLayout {
    layout(vec![], values, Format::None, Format::JSON)
}

fn col<'a>(d: &'a Decoded, name: &str) -> &'a ArrayRef {
    d.batch.column_by_name(name).unwrap()
}

fn only_error(d: &Decoded) -> &str {
    assert_eq!(d.batch.num_rows(), 0, "expected no rows");
    assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
    &d.errors[0].reason
}

fn all_scalars() -> Vec<Field> {
    vec![
        f("B", DataType::Boolean),
        f("I", DataType::Int32),
        f("L", DataType::Int64),
        f("D", DataType::Float64),
        f("DEC", DataType::Decimal128(10, 2)),
        f("S", DataType::Utf8),
        f("BY", DataType::Binary),
        f("DT", DataType::Date32),
        f("T", DataType::Time32(TimeUnit::Millisecond)),
        f("TS", DataType::Timestamp(TimeUnit::Millisecond, None)),
    ]
}

#[test]
fn json_decodes_every_scalar_type() {
    let l = json_values(all_scalars());
    let d = decode_values(
        &l,
        &[
            r#"{"B":true,"I":-7,"L":9007199254740993,"D":1.5,"DEC":12.345,"S":"h\u00e9\"llo","BY":"AAEC","DT":19000,"T":3600000,"TS":1700000000000}"#,
            r#"{"b":"false","i":"12","l":"-3","d":1,"dec":"-0.5","s":"x","by":"","dt":"1","t":"0","ts":"5"}"#,
            r#"{}"#,
        ],
    );
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert_eq!(d.batch.num_rows(), 3);
    assert_eq!(
        col(&d, "B").as_boolean(),
        &BooleanArray::from(vec![Some(true), Some(false), None])
    );
    assert_eq!(
        col(&d, "I").as_primitive::<Int32Type>(),
        &Int32Array::from(vec![Some(-7), Some(12), None])
    );
    assert_eq!(
        col(&d, "L").as_ref(),
        &Int64Array::from(vec![Some(9007199254740993), Some(-3), None]) as &dyn Array
    );
    assert_eq!(
        col(&d, "D").as_ref(),
        &Float64Array::from(vec![Some(1.5), Some(1.0), None]) as &dyn Array
    );
    let dec = Decimal128Array::from(vec![Some(1235), Some(-50), None])
        .with_precision_and_scale(10, 2)
        .unwrap();
    assert_eq!(col(&d, "DEC").as_ref(), &dec as &dyn Array);
    assert_eq!(
        col(&d, "S").as_ref(),
        &StringArray::from(vec![Some("hé\"llo"), Some("x"), None]) as &dyn Array
    );
    let by = BinaryArray::from(vec![Some(&[0u8, 1, 2][..]), Some(&[][..]), None]);
    assert_eq!(col(&d, "BY").as_ref(), &by as &dyn Array);
    assert_eq!(
        col(&d, "DT").as_ref(),
        &Date32Array::from(vec![Some(19000), Some(1), None]) as &dyn Array
    );
    let t = Time32MillisecondArray::from(vec![Some(3_600_000), Some(0), None]);
    assert_eq!(col(&d, "T").as_ref(), &t as &dyn Array);
    let ts = TimestampMillisecondArray::from(vec![Some(1_700_000_000_000), Some(5), None]);
    assert_eq!(col(&d, "TS").as_ref(), &ts as &dyn Array);
}

#[test]
fn json_decodes_nested_types() {
    let l = json_values(vec![
        f("A", list_of(DataType::Int32)),
        f("M", map_of(DataType::Utf8, DataType::Float64)),
        f(
            "S",
            struct_of(vec![f("X", DataType::Int32), f("Y", DataType::Utf8)]),
        ),
        f(
            "AS",
            list_of(struct_of(vec![f("N", DataType::Decimal128(5, 1))])),
        ),
        f("MI", map_of(DataType::Int32, list_of(DataType::Utf8))),
    ]);
    let d = decode_values(
        &l,
        &[
            r#"{"a":[1,null,3],"m":{"x":1.5,"y":null},"s":{"y":"why","x":2,"z":"extra"},"as":[{"n":1.25},null,{}],"mi":{"7":["a"]}}"#,
            r#"{"a":null,"m":{},"s":null,"as":[],"mi":null}"#,
        ],
    );
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert_eq!(d.batch.num_rows(), 2);

    let a = col(&d, "A").as_list::<i32>();
    assert_eq!(
        a.value(0).as_primitive::<Int32Type>(),
        &Int32Array::from(vec![Some(1), None, Some(3)])
    );
    assert!(a.is_null(1));

    let m = col(&d, "M").as_map();
    assert_eq!(m.value_length(0), 2);
    assert_eq!(m.keys().as_string::<i32>().value(1), "y");
    assert!(m.values().is_null(1));
    assert_eq!(m.value_length(1), 0);
    assert!(!m.is_null(1));

    let s = col(&d, "S").as_struct();
    assert_eq!(s.column(0).as_primitive::<Int32Type>().value(0), 2);
    assert_eq!(s.column(1).as_string::<i32>().value(0), "why");
    assert!(s.is_null(1));

    let list = col(&d, "AS").as_list::<i32>();
    let structs = list.value(0);
    let structs = structs.as_struct();
    assert_eq!(structs.len(), 3);
    // 1.25 rounds half up to 1.3 at scale 1.
    assert_eq!(
        structs
            .column(0)
            .as_primitive::<arrow::datatypes::Decimal128Type>()
            .value(0),
        13
    );
    assert!(structs.is_null(1));
    assert!(structs.column(0).is_null(2));

    let mi = col(&d, "MI").as_map();
    assert_eq!(mi.keys().as_primitive::<Int32Type>().value(0), 7);
    assert!(mi.is_null(1));
}

#[test]
fn json_nested_type_errors_name_the_path() {
    let l = json_values(vec![
        f("ID", DataType::Int32),
        f("A", list_of(DataType::Int32)),
        f("S", struct_of(vec![f("X", DataType::Int32)])),
        f("M", map_of(DataType::Int32, DataType::Utf8)),
    ]);
    let d = decode_values(&l, &[r#"{"a":[1,"x"]}"#]);
    assert_eq!(
        only_error(&d),
        r#"value field "A"[1]: expected INT, found string "x""#
    );
    let d = decode_values(&l, &[r#"{"s":{"x":true}}"#]);
    assert_eq!(
        only_error(&d),
        r#"value field "S".X: expected INT, found boolean true"#
    );
    let d = decode_values(&l, &[r#"{"m":{"k":"v"}}"#]);
    assert_eq!(
        only_error(&d),
        r#"value field "M"["k"]: key expected INT, found string "k""#
    );
    let d = decode_values(&l, &[r#"{"a":{}}"#]);
    assert_eq!(
        only_error(&d),
        r#"value field "A": expected ARRAY<INT>, found object"#
    );
    let d = decode_values(&l, &[r#"{"id":[1]}"#]);
    assert_eq!(
        only_error(&d),
        r#"value field "ID": expected INT, found array"#
    );
}

#[test]
fn json_nested_value_into_string_column_is_its_json_text() {
    let l = json_values(vec![f("S", DataType::Utf8), f("N", DataType::Utf8)]);
    let d = decode_values(&l, &[r#"{"s":{"a": [1, "x"]},"n":12.50}"#]);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert_eq!(col(&d, "S").as_string::<i32>().value(0), r#"{"a":[1,"x"]}"#);
    assert_eq!(col(&d, "N").as_string::<i32>().value(0), "12.50");
}

#[test]
fn json_fields_match_case_insensitively_missing_are_null_extra_ignored() {
    let l = json_values(vec![
        f("ORDER_ID", DataType::Int64),
        f("Qty", DataType::Int32),
        f("NAME", DataType::Utf8),
    ]);
    let d = decode_values(
        &l,
        &[
            r#"{"order_id":1,"QTY":2,"Name":"a","extra":{"deep":[1,2,{"x":null}]}}"#,
            r#"{"qty":3}"#,
            r#"{"NAME":"b","NAME":"c","\u004fRDER_ID":4}"#,
        ],
    );
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert_eq!(
        col(&d, "ORDER_ID").as_ref(),
        &Int64Array::from(vec![Some(1), None, Some(4)]) as &dyn Array
    );
    assert_eq!(
        col(&d, "Qty").as_ref(),
        &Int32Array::from(vec![Some(2), Some(3), None]) as &dyn Array
    );
    assert_eq!(
        col(&d, "NAME").as_ref(),
        &StringArray::from(vec![Some("a"), None, Some("c")]) as &dyn Array
    );
}

#[test]
fn json_ambiguous_column_names_are_rejected() {
    let err = RecordDecoder::new(&json_values(vec![
        f("a", DataType::Int32),
        f("A", DataType::Int32),
    ]))
    .unwrap_err();
    assert!(matches!(err, FormatError::AmbiguousColumns { .. }), "{err}");
}

#[test]
fn json_malformed_records_report_byte_positions() {
    let l = json_values(vec![f("A", DataType::Int32), f("B", DataType::Utf8)]);
    let cases = [
        (
            r#"{"a": 1, "b": "x""#,
            "value is not valid JSON at byte 17: EOF while parsing an object",
        ),
        (
            r#"{"a": 1 "b": 2}"#,
            "value is not valid JSON at byte 8: expected `,` or `}`",
        ),
        (
            r#"{"a": 01}"#,
            "value is not valid JSON at byte 7: expected `,` or `}`",
        ),
        (
            r#"{"a": 1} x"#,
            "value is not valid JSON at byte 9: trailing characters",
        ),
        (
            r#"{"z": [1,}"#,
            "value is not valid JSON at byte 9: expected value",
        ),
        (
            r#"{"b": "x\q"}"#,
            "value is not valid JSON at byte 9: invalid escape",
        ),
        (
            "",
            "value is not valid JSON at byte 0: EOF while parsing a value",
        ),
        ("[1]", "value: expected a JSON object, found array"),
        ("\"s\"", "value: expected a JSON object, found string"),
        ("nope", "value is not valid JSON at byte 0: expected value"),
    ];
    for (input, reason) in cases {
        let d = decode_values(&l, &[input]);
        assert_eq!(only_error(&d), reason, "input {input}");
    }
    let mut raw = RawBatch::new();
    raw.push(None, Some(b"{\"b\": \"\xff\"}"), 0, 0, 0);
    let d = RecordDecoder::new(&l).unwrap().decode(&raw).unwrap();
    assert_eq!(
        only_error(&d),
        "value is not valid JSON at byte 7: invalid UTF-8"
    );
}

#[test]
fn json_wrong_types_are_precise_and_bounded() {
    let l = json_values(vec![
        f("QTY", DataType::Int32),
        f("BIG", DataType::Int64),
        f("OK", DataType::Boolean),
        f("DEC", DataType::Decimal128(4, 2)),
        f("BY", DataType::Binary),
        f("T", DataType::Time32(TimeUnit::Millisecond)),
        f("S", DataType::Utf8),
    ]);
    let long = "x".repeat(500);
    let long_record = format!(r#"{{"qty":"{long}"}}"#);
    let cases = [
        (
            r#"{"qty":"abc"}"#,
            r#"value field "QTY": expected INT, found string "abc""#,
        ),
        (
            r#"{"qty":1.5}"#,
            r#"value field "QTY": expected INT, found number 1.5"#,
        ),
        (
            r#"{"qty":2147483648}"#,
            r#"value field "QTY": expected INT, found number 2147483648 (out of range)"#,
        ),
        (
            r#"{"qty":true}"#,
            r#"value field "QTY": expected INT, found boolean true"#,
        ),
        (
            r#"{"big":"1e3"}"#,
            r#"value field "BIG": expected BIGINT, found string "1e3""#,
        ),
        (
            r#"{"ok":1}"#,
            r#"value field "OK": expected BOOLEAN, found number 1"#,
        ),
        (
            r#"{"dec":123.4}"#,
            r#"value field "DEC": expected DECIMAL(4, 2), found number 123.4 (out of range)"#,
        ),
        (
            r#"{"by":"***"}"#,
            r#"value field "BY": expected BYTES, found string "***" (invalid base64)"#,
        ),
        (
            r#"{"t":86400000}"#,
            r#"value field "T": expected TIME, found number 86400000 (out of range)"#,
        ),
        (
            long_record.as_str(),
            r#"value field "QTY": expected INT, found string "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...""#,
        ),
    ];
    for (input, reason) in cases {
        let d = decode_values(&l, &[input]);
        assert_eq!(only_error(&d), reason, "input {input}");
    }
    // Booleans and numbers into STRING keep their text.
    let d = decode_values(&l, &[r#"{"s":true}"#]);
    assert_eq!(col(&d, "S").as_string::<i32>().value(0), "true");
}

#[test]
fn mixed_batch_keeps_good_rows_in_order_with_pseudo_columns() {
    let l = layout(
        vec![f("ID", DataType::Utf8)],
        vec![f("QTY", DataType::Int32)],
        Format::Kafka,
        Format::JSON,
    );
    let mut raw = RawBatch::new();
    raw.push(Some(b"a"), Some(br#"{"qty":1}"#), 10, 0, 5);
    raw.push(Some(b"b"), Some(br#"{"qty":"bad"}"#), 11, 1, 6);
    raw.push(Some(b"c"), Some(br#"{"qty":3}"#), 12, 2, 7);
    raw.push(Some(b"\xff"), Some(br#"{"qty":4}"#), 13, 3, 8);
    raw.push(None, Some(br#"{"qty":5"#), 14, 4, 9);
    raw.push(None, None, 15, 5, 10);
    raw.push(Some(b"g"), Some(br#"{"qty":7}"#), 16, 6, 11);
    let mut decoder = RecordDecoder::new(&l).unwrap();
    let d = decoder.decode(&raw).unwrap();
    assert_eq!(d.batch.num_rows(), 4);
    let b = &d.batch;
    assert_eq!(
        b.column(0).as_ref(),
        &Int64Array::from(vec![10, 12, 15, 16]) as &dyn Array
    );
    assert_eq!(
        b.column(1).as_ref(),
        &Int32Array::from(vec![0, 2, 5, 6]) as &dyn Array
    );
    assert_eq!(
        b.column(2).as_ref(),
        &Int64Array::from(vec![5, 7, 10, 11]) as &dyn Array
    );
    assert_eq!(
        b.column(3).as_ref(),
        &StringArray::from(vec![Some("a"), Some("c"), None, Some("g")]) as &dyn Array
    );
    assert_eq!(
        b.column(4).as_ref(),
        &Int32Array::from(vec![Some(1), Some(3), None, Some(7)]) as &dyn Array
    );
    assert_eq!(d.tombstones, vec![2]);

    let errors: Vec<_> = d
        .errors
        .iter()
        .map(|e| (e.partition, e.offset, e.part))
        .collect();
    assert_eq!(
        errors,
        vec![
            (1, 6, RecordPart::Value),
            (3, 8, RecordPart::Key),
            (4, 9, RecordPart::Value)
        ]
    );
    assert_eq!(
        d.errors[1].reason,
        "key: expected STRING, found invalid UTF-8 at byte 0"
    );
    assert_eq!(
        d.errors[2].reason,
        "value is not valid JSON at byte 8: EOF while parsing an object"
    );

    // The decoder is reusable and starts each batch empty.
    raw.clear();
    raw.push(Some(b"z"), Some(br#"{"qty":9}"#), 20, 0, 30);
    let d = decoder.decode(&raw).unwrap();
    assert_eq!(d.batch.num_rows(), 1);
    assert!(d.errors.is_empty() && d.tombstones.is_empty());
    assert_eq!(d.batch.column(4).as_primitive::<Int32Type>().value(0), 9);
}

#[test]
fn not_null_columns_reject_missing_values() {
    let l = json_values(vec![
        Field::new("ID", DataType::Int32, false),
        f("X", DataType::Int32),
    ]);
    let d = decode_values(&l, &[r#"{"x":1}"#, r#"{"id":null}"#, r#"{"id":2}"#]);
    assert_eq!(d.batch.num_rows(), 1);
    assert_eq!(d.errors.len(), 2);
    assert_eq!(
        d.errors[0].reason,
        r#"value field "ID" is null or missing, but the column is NOT NULL"#
    );
}

#[test]
fn json_unwrapped_single_value() {
    let l = layout(
        vec![],
        vec![f("V", DataType::Int64)],
        Format::None,
        Format::Json {
            wrap_single_value: false,
        },
    );
    let d = decode_values(&l, &["42", " null ", "\"7\"", r#"{"v":1}"#, "1 2"]);
    assert_eq!(
        col(&d, "V").as_ref(),
        &Int64Array::from(vec![Some(42), None, Some(7)]) as &dyn Array
    );
    assert_eq!(d.errors[0].reason, "value: expected BIGINT, found object");
    assert_eq!(
        d.errors[1].reason,
        "value is not valid JSON at byte 2: trailing characters"
    );

    let l = layout(
        vec![],
        vec![f("V", list_of(DataType::Utf8))],
        Format::None,
        Format::Json {
            wrap_single_value: false,
        },
    );
    let d = decode_values(&l, &[r#"["a","b"]"#, "[1]"]);
    assert_eq!(d.batch.num_rows(), 2);
    assert_eq!(
        col(&d, "V")
            .as_list::<i32>()
            .value(1)
            .as_string::<i32>()
            .value(0),
        "1"
    );

    let err = SourceLayout::new(
        vec![],
        vec![f("A", DataType::Int32), f("B", DataType::Int32)],
        Format::None,
        Format::Json {
            wrap_single_value: false,
        },
    )
    .map(|l| RecordDecoder::new(&l))
    .unwrap()
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("exactly one column when WRAP_SINGLE_VALUE is false"),
        "{err}"
    );
}

#[test]
fn json_keys_decode_like_values() {
    let l = layout(
        vec![f("STORE", DataType::Int32), f("ITEM", DataType::Utf8)],
        vec![f("QTY", DataType::Int32)],
        Format::JSON,
        Format::JSON,
    );
    let mut raw = RawBatch::new();
    raw.push(
        Some(br#"{"store":1,"item":"x"}"#),
        Some(br#"{"qty":2}"#),
        0,
        0,
        0,
    );
    raw.push(Some(br#"{"store":"?"}"#), Some(br#"{"qty":2}"#), 0, 0, 1);
    let d = RecordDecoder::new(&l).unwrap().decode(&raw).unwrap();
    assert_eq!(d.batch.num_rows(), 1);
    assert_eq!(
        d.errors[0].reason,
        r#"key field "STORE": expected INT, found string "?""#
    );
    assert_eq!(d.errors[0].part, RecordPart::Key);
}

#[test]
fn kafka_decodes_each_supported_type() {
    let cases: Vec<(DataType, Vec<u8>, ArrayRef)> = vec![
        (
            DataType::Int32,
            7i32.to_be_bytes().to_vec(),
            Arc::new(Int32Array::from(vec![7])),
        ),
        (
            DataType::Int64,
            (-2i64).to_be_bytes().to_vec(),
            Arc::new(Int64Array::from(vec![-2])),
        ),
        (
            DataType::Float64,
            2.5f64.to_be_bytes().to_vec(),
            Arc::new(Float64Array::from(vec![2.5])),
        ),
        (
            DataType::Utf8,
            "héllo".as_bytes().to_vec(),
            Arc::new(StringArray::from(vec!["héllo"])),
        ),
        (
            DataType::Binary,
            vec![0, 255],
            Arc::new(BinaryArray::from(vec![&[0u8, 255][..]])),
        ),
    ];
    for (t, bytes, expected) in cases {
        let l = layout(
            vec![f("K", t.clone())],
            vec![f("V", t.clone())],
            Format::Kafka,
            Format::Kafka,
        );
        let mut raw = RawBatch::new();
        raw.push(Some(&bytes), Some(&bytes), 0, 0, 0);
        let d = RecordDecoder::new(&l).unwrap().decode(&raw).unwrap();
        assert!(d.errors.is_empty(), "{t}: {:?}", d.errors);
        assert_eq!(d.batch.column(3).as_ref(), expected.as_ref(), "{t}");
        assert_eq!(d.batch.column(4).as_ref(), expected.as_ref(), "{t}");
    }
}

#[test]
fn kafka_wrong_length_is_a_record_error() {
    let l = layout(
        vec![f("K", DataType::Int32)],
        vec![f("V", DataType::Int64)],
        Format::Kafka,
        Format::Kafka,
    );
    let mut raw = RawBatch::new();
    raw.push(Some(&[0, 0, 1]), Some(&[0; 8]), 0, 3, 9);
    raw.push(Some(&[0, 0, 0, 1]), Some(&[0; 9]), 0, 3, 10);
    raw.push(None, Some(&[0; 8]), 0, 3, 11);
    let d = RecordDecoder::new(&l).unwrap().decode(&raw).unwrap();
    assert_eq!(d.batch.num_rows(), 1);
    assert!(d.batch.column(3).is_null(0));
    assert_eq!(
        d.errors[0].reason,
        "key: expected INT (4 bytes, big-endian), found 3 bytes"
    );
    assert_eq!((d.errors[0].partition, d.errors[0].offset), (3, 9));
    assert_eq!(
        d.errors[1].reason,
        "value: expected BIGINT (8 bytes, big-endian), found 9 bytes"
    );
}

#[test]
fn kafka_rejects_unsupported_types_and_several_columns() {
    let l = layout(
        vec![f("K", DataType::Boolean)],
        vec![],
        Format::Kafka,
        Format::JSON,
    );
    let err = RecordDecoder::new(&l).unwrap_err().to_string();
    assert_eq!(
        err,
        "key column \"K\" has type BOOLEAN, which the KAFKA format does not support; \
         supported types are INT, BIGINT, DOUBLE, STRING, BYTES"
    );
    let l = layout(
        vec![f("A", DataType::Int32), f("B", DataType::Int32)],
        vec![],
        Format::Kafka,
        Format::JSON,
    );
    let err = RecordEncoder::new(&l).unwrap_err().to_string();
    assert!(
        err.contains("supports at most one column, found 2 key columns; hint: use the JSON"),
        "{err}"
    );
    let l = layout(
        vec![f("A", DataType::UInt8)],
        vec![],
        Format::JSON,
        Format::JSON,
    );
    let err = RecordDecoder::new(&l).unwrap_err().to_string();
    assert!(err.contains("not a supported SQL type"), "{err}");
    let l = layout(
        vec![f("A", DataType::Int32)],
        vec![],
        Format::None,
        Format::JSON,
    );
    assert!(RecordDecoder::new(&l).is_err());
}

#[test]
fn delimited_decodes_quotes_escapes_and_nulls() {
    let l = layout(
        vec![],
        vec![
            f("A", DataType::Int32),
            f("S", DataType::Utf8),
            f("D", DataType::Decimal128(5, 2)),
            f("B", DataType::Boolean),
        ],
        Format::None,
        Format::DELIMITED,
    );
    let d = decode_values(
        &l,
        &[
            r#"1,hello,1.5,true"#,
            r#"2,"a, ""quoted"" value",,false"#,
            r#",,,"#,
            r#"4,"",-0.01,"#,
            r#""5","x,y","2","TRUE""#,
        ],
    );
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert_eq!(
        col(&d, "A").as_ref(),
        &Int32Array::from(vec![Some(1), Some(2), None, Some(4), Some(5)]) as &dyn Array
    );
    let s = StringArray::from(vec![
        Some("hello"),
        Some("a, \"quoted\" value"),
        None,
        Some(""),
        Some("x,y"),
    ]);
    assert_eq!(col(&d, "S").as_ref(), &s as &dyn Array);
    let dec = Decimal128Array::from(vec![Some(150), None, None, Some(-1), Some(200)])
        .with_precision_and_scale(5, 2)
        .unwrap();
    assert_eq!(col(&d, "D").as_ref(), &dec as &dyn Array);
    let b = BooleanArray::from(vec![Some(true), Some(false), None, None, Some(true)]);
    assert_eq!(col(&d, "B").as_ref(), &b as &dyn Array);
}

#[test]
fn delimited_errors() {
    let l = layout(
        vec![],
        vec![f("A", DataType::Int32), f("S", DataType::Utf8)],
        Format::None,
        Format::DELIMITED,
    );
    let cases = [
        ("1", "value: expected 2 fields, found 1"),
        ("1,2,3", "value: expected 2 fields, found 3"),
        ("x,2", r#"value field "A": expected INT, found string "x""#),
        (
            r#"1,"abc"#,
            "value is not valid DELIMITED at byte 2: unterminated quoted field",
        ),
        (
            r#"1,"a"b"#,
            "value is not valid DELIMITED at byte 5: expected a delimiter after a closing quote",
        ),
    ];
    for (input, reason) in cases {
        let d = decode_values(&l, &[input]);
        assert_eq!(only_error(&d), reason, "input {input}");
    }
    let l = layout(
        vec![],
        vec![f("A", list_of(DataType::Int32))],
        Format::None,
        Format::DELIMITED,
    );
    let err = RecordDecoder::new(&l).unwrap_err().to_string();
    assert!(
        err.contains("has type ARRAY<INT>, which the DELIMITED format does not support"),
        "{err}"
    );
}

#[test]
fn delimited_with_tab() {
    let l = layout(
        vec![],
        vec![f("A", DataType::Int32), f("S", DataType::Utf8)],
        Format::None,
        Format::Delimited { delimiter: b'\t' },
    );
    let d = decode_values(&l, &["1\ta,b"]);
    assert_eq!(col(&d, "S").as_string::<i32>().value(0), "a,b");
}

/// A batch holding every type, with NULLs and edge values, in column order of `all_types()`.
fn all_types() -> Vec<Field> {
    let mut fields = all_scalars();
    fields.push(f("A", list_of(DataType::Int32)));
    fields.push(f("M", map_of(DataType::Utf8, DataType::Float64)));
    fields.push(f(
        "ST",
        struct_of(vec![
            f("X", DataType::Int32),
            f("Y", list_of(DataType::Utf8)),
        ]),
    ));
    fields
}

fn all_types_batch(fields: &[Field]) -> RecordBatch {
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
        Arc::new(Int32Array::from(vec![Some(i32::MIN), None, Some(i32::MAX)])),
        Arc::new(Int64Array::from(vec![Some(i64::MIN), None, Some(i64::MAX)])),
        Arc::new(Float64Array::from(vec![
            Some(0.1),
            None,
            Some(f64::NEG_INFINITY),
        ])),
        Arc::new(
            Decimal128Array::from(vec![Some(-1), None, Some(9_999_999_999)])
                .with_precision_and_scale(10, 2)
                .unwrap(),
        ),
        Arc::new(StringArray::from(vec![
            Some("a \"q\" ,\n\t é 😀"),
            None,
            Some(""),
        ])),
        Arc::new(BinaryArray::from(vec![
            Some(&[0u8, 1, 255][..]),
            None,
            Some(&[][..]),
        ])),
        Arc::new(Date32Array::from(vec![Some(-1), None, Some(20_000)])),
        Arc::new(Time32MillisecondArray::from(vec![
            Some(0),
            None,
            Some(86_399_999),
        ])),
        Arc::new(TimestampMillisecondArray::from(vec![
            Some(-5),
            None,
            Some(1_700_000_000_123),
        ])),
    ];
    if fields.len() > columns.len() {
        let mut list = ListBuilder::new(Int32Builder::new());
        list.append_value([Some(1), None]);
        list.append_null();
        list.append_value([]);
        columns.push(Arc::new(list.finish()));

        let names = MapFieldNames {
            entry: "entries".into(),
            key: "key".into(),
            value: "value".into(),
        };
        let mut map = MapBuilder::new(
            Some(names),
            StringBuilder::new(),
            arrow::array::Float64Builder::new(),
        );
        map.keys().append_value("k\"1");
        map.values().append_value(1.5);
        map.keys().append_value("k2");
        map.values().append_null();
        map.append(true).unwrap();
        map.append(false).unwrap();
        map.append(true).unwrap();
        columns.push(Arc::new(map.finish()));

        let mut y = ListBuilder::new(StringBuilder::new());
        y.append_value([Some("p")]);
        y.append_null();
        y.append_null();
        let DataType::Struct(st_fields) = fields[12].data_type().clone() else {
            unreachable!()
        };
        let st = StructArray::try_new(
            st_fields,
            vec![
                Arc::new(Int32Array::from(vec![Some(1), None, None])),
                Arc::new(y.finish()),
            ],
            Some(NullBuffer::from(vec![true, true, false])),
        )
        .unwrap();
        columns.push(Arc::new(st));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields.to_vec())), columns).unwrap()
}

/// Encodes `batch` (key columns then value columns) with `layout`, decodes it back and checks
/// that every column is unchanged.
fn assert_round_trip(layout: &SourceLayout, batch: &RecordBatch) -> EncodedBatch {
    let keys = layout.key_fields().len();
    let key_columns: Vec<usize> = (0..keys).collect();
    let value_columns: Vec<usize> = (keys..batch.num_columns()).collect();
    let mut out = EncodedBatch::new();
    RecordEncoder::new(layout)
        .unwrap()
        .encode(batch, &key_columns, &value_columns, &mut out)
        .unwrap();
    assert_eq!(out.len(), batch.num_rows());
    let mut raw = RawBatch::new();
    for i in 0..out.len() {
        raw.push(out.key(i), out.value(i), i as i64, 0, i as i64);
    }
    let d = RecordDecoder::new(layout).unwrap().decode(&raw).unwrap();
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    for (i, expected) in batch.columns().iter().enumerate() {
        let actual = d.batch.column(crate::PSEUDO_COLUMNS + i);
        assert_eq!(
            actual.as_ref(),
            expected.as_ref(),
            "column {}",
            batch.schema().field(i).name()
        );
    }
    out
}

#[test]
fn json_round_trips_every_type() {
    let fields = all_types();
    let batch = all_types_batch(&fields);
    let l = layout(
        vec![f("K", DataType::Int64)],
        fields.clone(),
        Format::Kafka,
        Format::JSON,
    );
    let mut with_key = vec![Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])) as ArrayRef];
    with_key.extend(batch.columns().iter().cloned());
    let mut schema_fields = vec![f("K", DataType::Int64)];
    schema_fields.extend(fields);
    let batch = RecordBatch::try_new(Arc::new(Schema::new(schema_fields)), with_key).unwrap();
    let out = assert_round_trip(&l, &batch);
    assert_eq!(out.key(1), None);
    let first = std::str::from_utf8(out.value(0).unwrap()).unwrap();
    assert!(
        first.starts_with(
            r#"{"B":true,"I":-2147483648,"L":-9223372036854775808,"D":0.1,"DEC":-0.01,"#
        ),
        "{first}"
    );
    let third = std::str::from_utf8(out.value(2).unwrap()).unwrap();
    assert!(
        third.contains(r#""D":"-Infinity""#)
            && third.contains(r#""BY":"""#)
            && third.contains(r#""ST":null"#),
        "{third}"
    );
}

#[test]
fn json_output_text() {
    let fields = vec![
        f("ID", DataType::Int32),
        f("Name", DataType::Utf8),
        f("M", map_of(DataType::Int32, DataType::Int32)),
    ];
    let l = layout(vec![], fields.clone(), Format::None, Format::JSON);
    let names = MapFieldNames {
        entry: "entries".into(),
        key: "key".into(),
        value: "value".into(),
    };
    let mut map = MapBuilder::new(Some(names), Int32Builder::new(), Int32Builder::new());
    map.keys().append_value(1);
    map.values().append_value(2);
    map.append(true).unwrap();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        vec![
            Arc::new(Int32Array::from(vec![7])),
            Arc::new(StringArray::from(vec![None::<&str>])),
            Arc::new(map.finish()),
        ],
    )
    .unwrap();
    let out = assert_round_trip(&l, &batch);
    assert_eq!(
        out.value(0),
        Some(&br#"{"ID":7,"Name":null,"M":{"1":2}}"#[..])
    );
    assert_eq!(out.key(0), None);
}

#[test]
fn json_unwrapped_round_trip_and_tombstone() {
    let fields = vec![f("V", DataType::Utf8)];
    let l = layout(
        vec![],
        fields.clone(),
        Format::None,
        Format::Json {
            wrap_single_value: false,
        },
    );
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        vec![Arc::new(StringArray::from(vec![Some("x"), None]))],
    )
    .unwrap();
    let out = assert_round_trip(&l, &batch);
    assert_eq!(out.value(0), Some(&b"\"x\""[..]));
    assert_eq!(out.value(1), None);
}

#[test]
fn delimited_round_trips_every_scalar_type() {
    let fields = all_scalars();
    let batch = all_types_batch(&fields);
    for delimiter in [b',', b'\t', b'|', b'.', b'-'] {
        let l = layout(
            vec![],
            fields.clone(),
            Format::None,
            Format::Delimited { delimiter },
        );
        let out = assert_round_trip(&l, &batch);
        if delimiter == b',' {
            assert_eq!(out.value(1), Some(&b",,,,,,,,,"[..]));
        }
    }
}

#[test]
fn kafka_round_trips_every_supported_type() {
    let cases: Vec<(DataType, ArrayRef)> = vec![
        (
            DataType::Int32,
            Arc::new(Int32Array::from(vec![Some(i32::MIN), None, Some(1)])),
        ),
        (
            DataType::Int64,
            Arc::new(Int64Array::from(vec![Some(i64::MAX), None, Some(-1)])),
        ),
        (
            DataType::Float64,
            Arc::new(Float64Array::from(vec![Some(-0.5), None, Some(f64::MAX)])),
        ),
        (
            DataType::Utf8,
            Arc::new(StringArray::from(vec![Some("é"), None, Some("")])),
        ),
        (
            DataType::Binary,
            Arc::new(BinaryArray::from(vec![
                Some(&[1u8][..]),
                None,
                Some(&[][..]),
            ])),
        ),
    ];
    for (t, array) in cases {
        let l = layout(
            vec![f("K", t.clone())],
            vec![f("V", t.clone())],
            Format::Kafka,
            Format::Kafka,
        );
        let schema = Arc::new(Schema::new(vec![f("K", t.clone()), f("V", t.clone())]));
        let batch = RecordBatch::try_new(schema, vec![array.clone(), array]).unwrap();
        let out = assert_round_trip(&l, &batch);
        assert_eq!(out.key(1), None, "{t}");
        assert_eq!(out.value(1), None, "{t}");
    }
    let l = layout(
        vec![f("K", DataType::Int32)],
        vec![],
        Format::Kafka,
        Format::None,
    );
    let schema = Arc::new(Schema::new(vec![f("K", DataType::Int32)]));
    let batch = RecordBatch::try_new(schema, vec![Arc::new(Int32Array::from(vec![258]))]).unwrap();
    let out = assert_round_trip(&l, &batch);
    assert_eq!(out.key(0), Some(&[0u8, 0, 1, 2][..]));
}

#[test]
fn encoder_rejects_mismatched_batches() {
    let l = layout(
        vec![],
        vec![f("A", DataType::Int32)],
        Format::None,
        Format::JSON,
    );
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![f("A", DataType::Utf8)])),
        vec![Arc::new(StringArray::from(vec!["x"]))],
    )
    .unwrap();
    let mut encoder = RecordEncoder::new(&l).unwrap();
    let mut out = EncodedBatch::new();
    let err = encoder.encode(&batch, &[], &[0], &mut out).unwrap_err();
    assert_eq!(
        err.to_string(),
        "record batch does not match the output layout: value column \"A\" is STRING in the batch, expected INT"
    );
    let err = encoder.encode(&batch, &[], &[3], &mut out).unwrap_err();
    assert!(
        err.to_string().contains("column index 3 is out of range"),
        "{err}"
    );
    let err = encoder.encode(&batch, &[0], &[0], &mut out).unwrap_err();
    assert!(
        err.to_string()
            .contains("1 key column indices given for 0 key columns"),
        "{err}"
    );
}

#[test]
fn large_batches_decode_completely() {
    let l = json_values(vec![
        f("ID", DataType::Int64),
        f("NAME", DataType::Utf8),
        f("TAGS", list_of(DataType::Utf8)),
    ]);
    let mut raw = RawBatch::with_capacity(5000, 5000 * 40);
    let records: Vec<String> = (0..5000)
        .map(|i| format!(r#"{{"id":{i},"name":"n{i}","tags":["t{}"]}}"#, i % 7))
        .collect();
    for (i, r) in records.iter().enumerate() {
        raw.push(None, Some(r.as_bytes()), 0, 0, i as i64);
    }
    let d = RecordDecoder::new(&l).unwrap().decode(&raw).unwrap();
    assert_eq!(d.batch.num_rows(), 5000);
    assert_eq!(col(&d, "NAME").as_string::<i32>().value(4999), "n4999");
    assert_eq!(
        col(&d, "TAGS")
            .as_list::<i32>()
            .value(4999)
            .as_string::<i32>()
            .value(0),
        "t1"
    );
}

#[test]
fn json_single_key_column_is_unwrapped_as_in_ksqldb() {
    // ksqlDB writes a single key column as the bare JSON value (`42`), never `{"ID":42}`.
    let l = layout(
        vec![f("ID", DataType::Int32)],
        vec![f("NAME", DataType::Utf8)],
        Format::JSON,
        Format::JSON,
    );
    assert_eq!(
        l.key_format(),
        Format::Json {
            wrap_single_value: false
        }
    );
    let mut raw = RawBatch::new();
    raw.push(Some(b"42"), Some(br#"{"name":"a"}"#), 0, 1, 7);
    raw.push(Some(b"\"43\""), Some(br#"{"name":"b"}"#), 0, 1, 8);
    raw.push(Some(br#"{"id":44}"#), Some(br#"{"name":"c"}"#), 0, 1, 9);
    raw.push(Some(b"null"), Some(br#"{"name":"d"}"#), 0, 1, 10);
    let d = RecordDecoder::new(&l).unwrap().decode(&raw).unwrap();
    assert_eq!(
        col(&d, "ID").as_ref(),
        &Int32Array::from(vec![Some(42), Some(43), None]) as &dyn Array
    );
    assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
    let e = &d.errors[0];
    assert_eq!((e.partition, e.offset, e.part), (1, 9, RecordPart::Key));
    assert_eq!(e.reason, "key: expected INT, found object");

    // And the encoder writes the bare value.
    let schema = Arc::new(Schema::new(vec![
        f("ID", DataType::Int32),
        f("NAME", DataType::Utf8),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int32Array::from(vec![Some(5), None])),
            Arc::new(StringArray::from(vec![Some("x"), Some("y")])),
        ],
    )
    .unwrap();
    let out = assert_round_trip(&l, &batch);
    assert_eq!(out.key(0), Some(&b"5"[..]));
    assert_eq!(out.key(1), None);
    assert_eq!(out.value(0), Some(&br#"{"NAME":"x"}"#[..]));
}

#[test]
fn json_decodes_nested_structs_maps_and_arrays() {
    let inner = struct_of(vec![f("CITY", DataType::Utf8), f("ZIP", DataType::Int32)]);
    let l = json_values(vec![
        f(
            "P",
            struct_of(vec![
                f("NAME", DataType::Utf8),
                f("ADDR", inner.clone()),
                f("TAGS", list_of(DataType::Utf8)),
            ]),
        ),
        f("MS", map_of(DataType::Utf8, inner)),
        f("AA", list_of(list_of(DataType::Int64))),
    ]);
    let d = decode_values(
        &l,
        &[
            r#"{"p":{"Name":"ann","addr":{"city":"Oslo","ZIP":150},"tags":["a","b"]},"ms":{"home":{"city":"X"},"none":null},"aa":[[1,2],[],null,[3]]}"#,
            r#"{"p":{"addr":null},"ms":null,"aa":[]}"#,
            r#"{"p":{}}"#,
        ],
    );
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert_eq!(d.batch.num_rows(), 3);

    let p = col(&d, "P").as_struct();
    assert_eq!(
        p.column_by_name("NAME").unwrap().as_ref(),
        &StringArray::from(vec![Some("ann"), None, None]) as &dyn Array
    );
    let addr = p.column_by_name("ADDR").unwrap().as_struct();
    assert!(addr.is_valid(0) && addr.is_null(1) && addr.is_null(2));
    assert_eq!(addr.column(0).as_string::<i32>().value(0), "Oslo");
    assert_eq!(addr.column(1).as_primitive::<Int32Type>().value(0), 150);
    let tags = p.column_by_name("TAGS").unwrap().as_list::<i32>();
    assert_eq!(
        tags.value(0).as_ref(),
        &StringArray::from(vec!["a", "b"]) as &dyn Array
    );
    assert!(tags.is_null(1));

    let ms = col(&d, "MS").as_map();
    assert_eq!(ms.value_length(0), 2);
    assert_eq!(ms.keys().as_string::<i32>().value(0), "home");
    let entries = ms.values().as_struct();
    assert_eq!(entries.column(0).as_string::<i32>().value(0), "X");
    assert!(entries.column(1).is_null(0));
    assert!(entries.is_null(1));
    assert!(ms.is_null(1));

    let aa = col(&d, "AA").as_list::<i32>();
    let first = aa.value(0);
    let first = first.as_list::<i32>();
    assert_eq!(first.len(), 4);
    assert_eq!(
        first.value(0).as_ref(),
        &Int64Array::from(vec![1, 2]) as &dyn Array
    );
    assert_eq!(first.value(1).len(), 0);
    assert!(first.is_null(2));
    assert_eq!(
        first.value(3).as_ref(),
        &Int64Array::from(vec![3]) as &dyn Array
    );
    assert_eq!(aa.value_length(1), 0);
    assert!(aa.is_null(2));

    // A type error deep inside names the whole path and leaves the other records alone.
    let d = decode_values(
        &l,
        &[
            r#"{"p":{"addr":{"zip":"north"}}}"#,
            r#"{"aa":[[1],[2,"x"]]}"#,
            r#"{"p":{"name":"ok"}}"#,
        ],
    );
    assert_eq!(d.batch.num_rows(), 1);
    assert_eq!(
        d.errors[0].reason,
        r#"value field "P".ADDR.ZIP: expected INT, found string "north""#
    );
    assert_eq!(
        d.errors[1].reason,
        r#"value field "AA"[1][1]: expected BIGINT, found string "x""#
    );
    assert_eq!(
        d.errors.iter().map(|e| e.offset).collect::<Vec<_>>(),
        vec![100, 101]
    );
}

#[test]
fn kafka_keys_are_big_endian_bytes() {
    let cases: Vec<(DataType, Vec<u8>, ArrayRef)> = vec![
        (
            DataType::Int32,
            vec![0xff, 0xff, 0xff, 0xfe],
            Arc::new(Int32Array::from(vec![-2])),
        ),
        (
            DataType::Int32,
            vec![0, 0, 1, 2],
            Arc::new(Int32Array::from(vec![258])),
        ),
        (
            DataType::Int64,
            vec![0, 0, 0, 0, 0, 0, 1, 0],
            Arc::new(Int64Array::from(vec![256])),
        ),
        (
            DataType::Float64,
            vec![0x3f, 0xf8, 0, 0, 0, 0, 0, 0],
            Arc::new(Float64Array::from(vec![1.5])),
        ),
        (
            DataType::Utf8,
            b"store-1".to_vec(),
            Arc::new(StringArray::from(vec!["store-1"])),
        ),
        (
            DataType::Utf8,
            vec![],
            Arc::new(StringArray::from(vec![""])),
        ),
        (
            DataType::Binary,
            vec![],
            Arc::new(BinaryArray::from(vec![&[][..]])),
        ),
    ];
    for (t, bytes, expected) in cases {
        let l = layout(
            vec![f("K", t.clone())],
            vec![f("V", DataType::Int32)],
            Format::Kafka,
            Format::JSON,
        );
        let mut raw = RawBatch::new();
        raw.push(Some(&bytes), Some(br#"{"v":1}"#), 0, 0, 0);
        raw.push(None, Some(br#"{"v":2}"#), 0, 0, 1);
        let d = RecordDecoder::new(&l).unwrap().decode(&raw).unwrap();
        assert!(d.errors.is_empty(), "{t}: {:?}", d.errors);
        let key = d.batch.column(3);
        assert_eq!(key.slice(0, 1).as_ref(), expected.as_ref(), "{t}");
        assert!(key.is_null(1), "{t}: a missing key is a NULL key column");
    }
    // Wrong lengths for every fixed-width type.
    for (t, width, name) in [
        (DataType::Int32, 4, "INT"),
        (DataType::Int64, 8, "BIGINT"),
        (DataType::Float64, 8, "DOUBLE"),
    ] {
        let l = layout(
            vec![f("K", t.clone())],
            vec![f("V", DataType::Int32)],
            Format::Kafka,
            Format::JSON,
        );
        let mut raw = RawBatch::new();
        for (i, len) in [0, width - 1, width + 1].into_iter().enumerate() {
            raw.push(Some(&vec![1; len]), Some(br#"{"v":1}"#), 0, 2, i as i64);
        }
        raw.push(Some(&vec![0; width]), Some(br#"{"v":1}"#), 0, 2, 3);
        let d = RecordDecoder::new(&l).unwrap().decode(&raw).unwrap();
        assert_eq!(d.batch.num_rows(), 1, "{t}");
        assert_eq!(
            d.batch
                .column(2)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0),
            3
        );
        let reasons: Vec<_> = d.errors.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [0, width - 1, width + 1]
                .iter()
                .map(|n| format!(
                    "key: expected {name} ({width} bytes, big-endian), found {n} bytes"
                ))
                .collect::<Vec<_>>(),
            "{t}"
        );
        assert!(
            d.errors
                .iter()
                .all(|e| e.part == RecordPart::Key && e.partition == 2)
        );
    }
}

#[test]
fn delimited_custom_delimiter_with_quotes() {
    let l = layout(
        vec![],
        vec![
            f("ID", DataType::Int64),
            f("NAME", DataType::Utf8),
            f("PRICE", DataType::Float64),
            f("BY", DataType::Binary),
        ],
        Format::None,
        Format::Delimited { delimiter: b'|' },
    );
    let d = decode_values(
        &l,
        &[
            r#"1|plain, with comma|2.5|AAE="#,
            r#"2|"pipe | inside"|-1|"#,
            r#"3|"say ""hi"""||"""#,
            r#""4"||1e3|"AQ==""#,
            "5|line\nbreak|0|",
            r#"6|"a|1|"#,
            "7|x|y|",
            "8|a|1",
        ],
    );
    assert_eq!(
        col(&d, "ID").as_ref(),
        &Int64Array::from(vec![1, 2, 3, 4, 5]) as &dyn Array
    );
    let names = StringArray::from(vec![
        Some("plain, with comma"),
        Some("pipe | inside"),
        Some("say \"hi\""),
        None,
        Some("line\nbreak"),
    ]);
    assert_eq!(col(&d, "NAME").as_ref(), &names as &dyn Array);
    assert_eq!(
        col(&d, "PRICE").as_ref(),
        &Float64Array::from(vec![Some(2.5), Some(-1.0), None, Some(1000.0), Some(0.0)])
            as &dyn Array
    );
    let by = BinaryArray::from(vec![
        Some(&[0u8, 1][..]),
        None,
        Some(&[][..]),
        Some(&[1u8][..]),
        None,
    ]);
    assert_eq!(col(&d, "BY").as_ref(), &by as &dyn Array);
    let errors: Vec<_> = d
        .errors
        .iter()
        .map(|e| (e.offset, e.reason.as_str()))
        .collect();
    assert_eq!(
        errors,
        vec![
            (
                105,
                "value is not valid DELIMITED at byte 2: unterminated quoted field"
            ),
            (
                106,
                r#"value field "PRICE": expected DOUBLE, found string "y""#
            ),
            (107, "value: expected 4 fields, found 3"),
        ]
    );

    // A comma is just text when the delimiter is `|`, and the encoder quotes only what needs it.
    let schema = Arc::new(Schema::new(l.value_fields().to_vec()));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(StringArray::from(vec!["a,b", "c|\"d\""])),
            Arc::new(Float64Array::from(vec![Some(0.5), None])),
            Arc::new(BinaryArray::from(vec![Some(&b"|"[..]), None])),
        ],
    )
    .unwrap();
    let out = assert_round_trip(&l, &batch);
    assert_eq!(out.value(0), Some(&b"1|a,b|0.5|fA=="[..]));
    assert_eq!(out.value(1), Some(&br#"2|"c|""d"""||"#[..]));
}

#[test]
fn malformed_records_are_skipped_and_reported_in_every_format() {
    let l = layout(
        vec![f("K", DataType::Int32)],
        vec![
            Field::new("ID", DataType::Int64, false),
            f("NAME", DataType::Utf8),
        ],
        Format::Kafka,
        Format::JSON,
    );
    let k = |v: i32| v.to_be_bytes();
    let mut raw = RawBatch::new();
    raw.push(Some(&k(1)), Some(br#"{"id":1,"name":"a"}"#), 10, 0, 100);
    raw.push(Some(&k(2)), Some(br#"{"id":2,"name":"b""#), 11, 1, 200); // bad JSON
    raw.push(Some(&k(3)), Some(br#"{"id":"three"}"#), 12, 2, 300); // wrong type
    raw.push(Some(&[0, 4]), Some(br#"{"id":4}"#), 13, 3, 400); // wrong key length
    raw.push(Some(&k(5)), Some(br#"{"id":null,"name":"e"}"#), 14, 4, 500); // null in NOT NULL
    raw.push(Some(&k(6)), Some(br#"{"name":"f"}"#), 15, 5, 600); // missing NOT NULL
    raw.push(Some(&k(7)), Some(br#"{"id":7}"#), 16, 6, 700);
    let d = RecordDecoder::new(&l).unwrap().decode(&raw).unwrap();
    assert_eq!(
        d.batch.column(4).as_ref(),
        &Int64Array::from(vec![1, 7]) as &dyn Array
    );
    assert_eq!(
        d.batch.column(0).as_ref(),
        &Int64Array::from(vec![10, 16]) as &dyn Array
    );
    assert_eq!(
        d.batch.column(3).as_ref(),
        &Int32Array::from(vec![1, 7]) as &dyn Array
    );
    let errors: Vec<_> = d
        .errors
        .iter()
        .map(|e| (e.partition, e.offset, e.part, e.reason.as_str()))
        .collect();
    assert_eq!(
        errors,
        vec![
            (
                1,
                200,
                RecordPart::Value,
                "value is not valid JSON at byte 18: EOF while parsing an object"
            ),
            (
                2,
                300,
                RecordPart::Value,
                r#"value field "ID": expected BIGINT, found string "three""#
            ),
            (
                3,
                400,
                RecordPart::Key,
                "key: expected INT (4 bytes, big-endian), found 2 bytes"
            ),
            (
                4,
                500,
                RecordPart::Value,
                r#"value field "ID" is null or missing, but the column is NOT NULL"#
            ),
            (
                5,
                600,
                RecordPart::Value,
                r#"value field "ID" is null or missing, but the column is NOT NULL"#
            ),
        ]
    );
    assert!(d.tombstones.is_empty());
    // The error's Display names where the record is.
    let shown = d.errors[2].to_string();
    assert!(
        shown.contains("partition 3") && shown.contains("offset 400"),
        "{shown}"
    );
}

#[test]
fn tombstones_are_rows_with_null_values_and_are_listed() {
    for value_format in [Format::JSON, Format::DELIMITED, Format::Kafka] {
        let l = layout(
            vec![f("ID", DataType::Utf8)],
            vec![f("V", DataType::Int32)],
            Format::Kafka,
            value_format,
        );
        let value: &[u8] = match value_format {
            Format::JSON => br#"{"v":1}"#,
            Format::Kafka => &[0, 0, 0, 1],
            _ => b"1",
        };
        let mut raw = RawBatch::new();
        raw.push(Some(b"a"), Some(value), 1, 0, 0);
        raw.push(Some(b"b"), None, 2, 0, 1);
        raw.push(Some(b"\xff"), None, 3, 0, 2); // a tombstone with a bad key is still an error
        raw.push(None, None, 4, 0, 3);
        raw.push(Some(b"c"), Some(value), 5, 0, 4);
        let d = RecordDecoder::new(&l).unwrap().decode(&raw).unwrap();
        let name = value_format.name();
        assert_eq!(d.tombstones, vec![1, 2], "{name}");
        assert_eq!(
            col(&d, "ID").as_ref(),
            &StringArray::from(vec![Some("a"), Some("b"), None, Some("c")]) as &dyn Array,
            "{name}"
        );
        assert_eq!(
            col(&d, "V").as_ref(),
            &Int32Array::from(vec![Some(1), None, None, Some(1)]) as &dyn Array,
            "{name}"
        );
        assert_eq!(d.errors.len(), 1, "{name}");
        assert_eq!((d.errors[0].offset, d.errors[0].part), (2, RecordPart::Key));
    }

    // A NOT NULL column cannot hold the NULLs of a tombstone or a missing key: the record is an
    // error, and the rest of the batch still decodes.
    let l = layout(
        vec![Field::new("ID", DataType::Utf8, false)],
        vec![Field::new("V", DataType::Int32, false)],
        Format::Kafka,
        Format::JSON,
    );
    let mut raw = RawBatch::new();
    raw.push(Some(b"a"), None, 1, 0, 0);
    raw.push(None, Some(br#"{"v":1}"#), 1, 0, 1);
    raw.push(Some(b"c"), Some(br#"{"v":2}"#), 1, 0, 2);
    let d = RecordDecoder::new(&l).unwrap().decode(&raw).unwrap();
    assert_eq!(d.batch.num_rows(), 1);
    assert!(d.tombstones.is_empty());
    let errors: Vec<_> = d
        .errors
        .iter()
        .map(|e| (e.offset, e.part, e.reason.as_str()))
        .collect();
    assert_eq!(
        errors,
        vec![
            (
                0,
                RecordPart::Value,
                r#"value is null (no bytes), but column "V" is NOT NULL"#
            ),
            (
                1,
                RecordPart::Key,
                r#"key is null (no bytes), but column "ID" is NOT NULL"#
            ),
        ]
    );

    // Encoding NULL values with no wrapped value columns writes a tombstone back.
    let l = layout(
        vec![f("ID", DataType::Utf8)],
        vec![f("V", DataType::Int32)],
        Format::Kafka,
        Format::Kafka,
    );
    let schema = Arc::new(Schema::new(vec![
        f("ID", DataType::Utf8),
        f("V", DataType::Int32),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["a"])),
            Arc::new(Int32Array::from(vec![None])),
        ],
    )
    .unwrap();
    let out = assert_round_trip(&l, &batch);
    assert_eq!((out.key(0), out.value(0)), (Some(&b"a"[..]), None));
}

#[test]
fn nested_not_null_fields_are_record_errors_never_batch_failures() {
    let strict_list = DataType::List(Arc::new(Field::new("item", DataType::Int32, false)));
    let strict_struct = struct_of(vec![Field::new("X", DataType::Int32, false)]);
    let l = json_values(vec![
        f("L", strict_list),
        f("S", strict_struct.clone()),
        f("LS", list_of(strict_struct)),
    ]);
    let d = decode_values(
        &l,
        &[
            r#"{"l":[1,null]}"#,
            r#"{"s":{}}"#,
            r#"{"ls":[{"x":1},{"x":null}]}"#,
            r#"{"l":[1,2],"s":null,"ls":[null,{"x":3}]}"#,
            r#"{"l":null,"s":{"x":4},"ls":null}"#,
        ],
    );
    assert_eq!(d.batch.num_rows(), 2, "{:?}", d.errors);
    let reasons: Vec<_> = d.errors.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(
        reasons,
        vec![
            r#"value field "L"[1]: expected INT, found null (the field is NOT NULL)"#,
            r#"value field "S".X: expected INT, found null (the field is NOT NULL)"#,
            r#"value field "LS"[1].X: expected INT, found null (the field is NOT NULL)"#,
        ]
    );
    let s = col(&d, "S").as_struct();
    assert!(s.is_null(0) && s.is_valid(1));
    assert_eq!(s.column(0).as_primitive::<Int32Type>().value(1), 4);
}
