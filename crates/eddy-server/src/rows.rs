//! Query results as ksqlDB's JSON rows: `{"row":{"columns":[...]}}`, values typed as in ksqlDB
//! (numbers and DECIMALs as JSON numbers, NULL as `null`, ARRAY as arrays, MAP and STRUCT as
//! objects, BYTES as base64 strings, TIMESTAMP/DATE/TIME as ISO-8601 strings).
//!
//! Values are written by arrow-json's encoders, with a base64 encoder for binary columns.

use std::sync::Arc;

use arrow_json::writer::{Encoder, EncoderFactory, EncoderOptions, NullableEncoder, make_encoder};
use base64::Engine as _;
use eddy_common::types::SqlType;
use eddy_engine::arrow::array::{Array, AsArray, RecordBatch};
use eddy_engine::arrow::datatypes::{DataType, FieldRef, Schema};
use eddy_engine::arrow::error::ArrowError;

/// How TIMESTAMP values are written (ksqlDB's ISO form, milliseconds).
const TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3f";
const TIME_FORMAT: &str = "%H:%M:%S%.3f";

/// ksqlDB's `header.schema` text: "`COL` STRING, `N` BIGINT".
pub fn schema_text(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .zip(column_types(schema))
        .map(|(field, sql_type)| format!("`{}` {sql_type}", field.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes the rows of record batches as ksqlDB's JSON rows.
pub struct RowWriter {
    options: EncoderOptions,
}

impl Default for RowWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl RowWriter {
    pub fn new() -> Self {
        Self {
            options: EncoderOptions::default()
                .with_explicit_nulls(true)
                .with_timestamp_format(TIMESTAMP_FORMAT.to_owned())
                .with_time_format(TIME_FORMAT.to_owned())
                .with_encoder_factory(Arc::new(Base64Binary)),
        }
    }

    /// Appends each row of `batch` to `out` as `{"row":{"columns":[...]}}`, `before` ahead of it
    /// and `after` behind it.
    pub fn write_rows(
        &self,
        batch: &RecordBatch,
        out: &mut Vec<u8>,
        before: &[u8],
        after: &[u8],
    ) -> Result<(), ArrowError> {
        self.write(
            batch,
            out,
            (before, b"{\"row\":{\"columns\":["),
            (b"]}}", after),
            None,
        )
    }

    /// Appends each row of `batch` to `out` as a JSON array of its values (the `/query-stream`
    /// form), `before` ahead of it and `after` behind it; `row_ends` gets the length of `out`
    /// after each row.
    pub fn write_arrays(
        &self,
        batch: &RecordBatch,
        out: &mut Vec<u8>,
        before: &[u8],
        after: &[u8],
        row_ends: &mut Vec<usize>,
    ) -> Result<(), ArrowError> {
        self.write(batch, out, (before, b"["), (b"]", after), Some(row_ends))
    }

    /// Each row's values, comma-separated, between the two parts of `open` and of `close`.
    fn write(
        &self,
        batch: &RecordBatch,
        out: &mut Vec<u8>,
        open: (&[u8], &[u8]),
        close: (&[u8], &[u8]),
        mut row_ends: Option<&mut Vec<usize>>,
    ) -> Result<(), ArrowError> {
        let schema = batch.schema();
        let mut encoders = schema
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(field, column)| make_encoder(field, column.as_ref(), &self.options))
            .collect::<Result<Vec<NullableEncoder<'_>>, ArrowError>>()?;
        for row in 0..batch.num_rows() {
            out.extend_from_slice(open.0);
            out.extend_from_slice(open.1);
            for (i, encoder) in encoders.iter_mut().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if encoder.is_null(row) {
                    out.extend_from_slice(b"null");
                } else {
                    encoder.encode(row, out);
                }
            }
            out.extend_from_slice(close.0);
            out.extend_from_slice(close.1);
            if let Some(ends) = row_ends.as_deref_mut() {
                ends.push(out.len());
            }
        }
        Ok(())
    }
}

/// ksqlDB's SQL type names of a schema's columns (`/query-stream`'s `columnTypes`).
pub fn column_types(schema: &Schema) -> Vec<String> {
    schema
        .fields()
        .iter()
        .map(|field| {
            SqlType::from_arrow(field.data_type())
                .map_or_else(|| field.data_type().to_string(), |t| t.to_string())
        })
        .collect()
}

/// Encodes BYTES as base64 strings, as ksqlDB does (arrow-json writes hex).
#[derive(Debug)]
struct Base64Binary;

impl EncoderFactory for Base64Binary {
    fn make_default_encoder<'a>(
        &self,
        _field: &'a FieldRef,
        array: &'a dyn Array,
        _options: &'a EncoderOptions,
    ) -> Result<Option<NullableEncoder<'a>>, ArrowError> {
        let encoder: Box<dyn Encoder + 'a> = match array.data_type() {
            DataType::Binary => {
                let values = array.as_binary::<i32>();
                Box::new(Base64Encoder(move |i| values.value(i)))
            }
            DataType::LargeBinary => {
                let values = array.as_binary::<i64>();
                Box::new(Base64Encoder(move |i| values.value(i)))
            }
            DataType::BinaryView => {
                let values = array.as_binary_view();
                Box::new(Base64Encoder(move |i| values.value(i)))
            }
            _ => return Ok(None),
        };
        Ok(Some(NullableEncoder::new(encoder, array.nulls().cloned())))
    }
}

struct Base64Encoder<F>(F);

impl<'a, F: Fn(usize) -> &'a [u8]> Encoder for Base64Encoder<F> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        out.push(b'"');
        let text = base64::engine::general_purpose::STANDARD.encode((self.0)(idx));
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use eddy_engine::arrow::array::{
        ArrayRef, BinaryArray, Decimal128Array, Int32Array, Int64Array, ListArray, StringArray,
        StructArray, TimestampMillisecondArray,
    };
    use eddy_engine::arrow::datatypes::{Field, Fields, Int32Type, TimeUnit};
    use serde_json::{Value, json};

    use super::*;

    fn batch() -> RecordBatch {
        let struct_fields = Fields::from(vec![
            Field::new("A", DataType::Utf8, true),
            Field::new("B", DataType::Int32, true),
        ]);
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("S", Arc::new(StringArray::from(vec![Some("x\"y"), None]))),
            ("I", Arc::new(Int32Array::from(vec![Some(1), Some(-2)]))),
            ("L", Arc::new(Int64Array::from(vec![Some(i64::MAX), None]))),
            (
                "D",
                Arc::new(
                    Decimal128Array::from(vec![Some(1234), Some(-5)])
                        .with_precision_and_scale(6, 2)
                        .expect("decimal"),
                ),
            ),
            (
                "A",
                Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
                    Some(vec![Some(1), None]),
                    None,
                ])),
            ),
            (
                "ST",
                Arc::new(StructArray::new(
                    struct_fields,
                    vec![
                        Arc::new(StringArray::from(vec![Some("a"), None])),
                        Arc::new(Int32Array::from(vec![Some(7), None])),
                    ],
                    None,
                )),
            ),
            (
                "B",
                Arc::new(BinaryArray::from(vec![Some(b"hi".as_slice()), None])),
            ),
            (
                "T",
                Arc::new(TimestampMillisecondArray::from(vec![Some(1_500), None])),
            ),
        ];
        RecordBatch::try_from_iter(columns).expect("batch")
    }

    #[test]
    fn values_are_json_typed() {
        let mut out = Vec::new();
        RowWriter::new()
            .write_rows(&batch(), &mut out, b"", b"\n")
            .expect("encodes");
        let rows: Vec<Value> = String::from_utf8(out)
            .expect("utf-8")
            .lines()
            .map(|line| serde_json::from_str(line).expect("each row is JSON"))
            .collect();
        assert_eq!(
            rows,
            vec![
                json!({"row": {"columns": [
                    "x\"y", 1, i64::MAX, 12.34, [1, null], {"A": "a", "B": 7}, "aGk=",
                    "1970-01-01T00:00:01.500"
                ]}}),
                json!({"row": {"columns": [
                    null, -2, null, -0.05, null, {"A": null, "B": null}, null, null
                ]}}),
            ]
        );
    }

    #[test]
    fn schema_text_is_ksqldb_s() {
        let schema = Schema::new(vec![
            Field::new("K", DataType::Utf8, true),
            Field::new("N", DataType::Int64, true),
            Field::new("T", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new(
                "A",
                DataType::List(Arc::new(Field::new("item", DataType::Int32, true))),
                true,
            ),
        ]);
        assert_eq!(
            schema_text(&schema),
            "`K` STRING, `N` BIGINT, `T` TIMESTAMP, `A` ARRAY<INTEGER>"
        );
    }
}
