//! [`RecordEncoder`]: rows of an Arrow [`RecordBatch`] into Kafka key and value bytes, written
//! back to back into an [`EncodedBatch`] so the producer sends slices without per-row allocation.
//! Every encoding reads back through [`crate::RecordDecoder`] to the same values.

use arrow::array::{
    Array, AsArray, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float64Array,
    Int32Array, Int64Array, ListArray, MapArray, StringArray, Time32MillisecondArray,
    TimestampMillisecondArray,
};
use arrow::buffer::NullBuffer;
use arrow::record_batch::RecordBatch;

use crate::buffer::{ByteColumn, EncodedBatch};
use crate::coerce::{write_base64, write_decimal, write_f64, write_int};
use crate::error::{FormatError, RecordPart};
use crate::format::Format;
use crate::json::write_string;
use crate::layout::{SourceLayout, resolve_columns};
use crate::types::{Column, Kind, type_name};

/// Encodes rows for one output layout (its key and value columns and formats). Reuse one per sink.
#[derive(Debug)]
pub struct RecordEncoder {
    key_format: Format,
    value_format: Format,
    key_columns: Vec<Column>,
    value_columns: Vec<Column>,
    /// `"NAME":` per value column for wrapped JSON, `,`-prefixed after the first.
    key_prefixes: Vec<Vec<u8>>,
    value_prefixes: Vec<Vec<u8>>,
}

impl RecordEncoder {
    /// Prepares an encoder; fails if a format cannot carry a column's type.
    pub fn new(layout: &SourceLayout) -> Result<Self, FormatError> {
        let key_columns =
            resolve_columns(RecordPart::Key, layout.key_format(), layout.key_fields())?;
        let value_columns = resolve_columns(
            RecordPart::Value,
            layout.value_format(),
            layout.value_fields(),
        )?;
        Ok(Self {
            key_format: layout.key_format(),
            value_format: layout.value_format(),
            key_prefixes: json_prefixes(key_columns.iter().map(|c| c.name.as_str())),
            value_prefixes: json_prefixes(value_columns.iter().map(|c| c.name.as_str())),
            key_columns,
            value_columns,
        })
    }

    /// Appends one record per row of `batch` to `out`. `key_columns` and `value_columns` are the
    /// indices in `batch` of the layout's key and value columns, in layout order. Errors only
    /// when the batch does not match the layout (a bug in the caller).
    pub fn encode(
        &mut self,
        batch: &RecordBatch,
        key_columns: &[usize],
        value_columns: &[usize],
        out: &mut EncodedBatch,
    ) -> Result<(), FormatError> {
        let keys = readers(batch, RecordPart::Key, key_columns, &self.key_columns)?;
        let values = readers(batch, RecordPart::Value, value_columns, &self.value_columns)?;
        for row in 0..batch.num_rows() {
            encode_part(
                self.key_format,
                &keys,
                &self.key_prefixes,
                row,
                &mut out.keys,
            );
            encode_part(
                self.value_format,
                &values,
                &self.value_prefixes,
                row,
                &mut out.values,
            );
        }
        Ok(())
    }
}

fn json_prefixes<'a>(names: impl Iterator<Item = &'a str>) -> Vec<Vec<u8>> {
    names
        .enumerate()
        .map(|(i, name)| {
            let mut prefix = Vec::with_capacity(name.len() + 4);
            if i > 0 {
                prefix.push(b',');
            }
            write_string(&mut prefix, name);
            prefix.push(b':');
            prefix
        })
        .collect()
}

fn readers<'a>(
    batch: &'a RecordBatch,
    part: RecordPart,
    indices: &[usize],
    columns: &[Column],
) -> Result<Vec<Reader<'a>>, FormatError> {
    if indices.len() != columns.len() {
        return Err(FormatError::BatchMismatch(format!(
            "{} {part} column indices given for {} {part} columns",
            indices.len(),
            columns.len()
        )));
    }
    indices
        .iter()
        .zip(columns)
        .map(|(&i, column)| {
            let array = batch.columns().get(i).ok_or_else(|| {
                FormatError::BatchMismatch(format!(
                    "column index {i} is out of range for a batch of {} columns",
                    batch.num_columns()
                ))
            })?;
            Reader::new(array.as_ref(), &column.kind).ok_or_else(|| {
                FormatError::BatchMismatch(format!(
                    "{part} column \"{}\" is {} in the batch, expected {}",
                    column.name,
                    type_name(array.data_type()),
                    column.kind
                ))
            })
        })
        .collect()
}

/// A column of the batch, downcast once per batch, with its nulls looked up once too: the null
/// check of every value is then a test of the validity bitmap, without a dispatch on the type.
struct Reader<'a> {
    /// The validity bitmap; `None` when the column has no nulls.
    nulls: Option<&'a NullBuffer>,
    values: Values<'a>,
}

/// The values of a column, by type.
enum Values<'a> {
    Boolean(&'a BooleanArray),
    Int32(&'a Int32Array),
    Int64(&'a Int64Array),
    Float64(&'a Float64Array),
    Decimal(&'a Decimal128Array),
    Utf8(&'a StringArray),
    Binary(&'a BinaryArray),
    Date32(&'a Date32Array),
    Time32(&'a Time32MillisecondArray),
    Timestamp(&'a TimestampMillisecondArray),
    List(&'a ListArray, Box<Reader<'a>>),
    Map(&'a MapArray, Box<Reader<'a>>, Box<Reader<'a>>),
    /// With each field's `"name":` prefix.
    Struct(Vec<(Vec<u8>, Reader<'a>)>),
}

impl<'a> Reader<'a> {
    fn new(array: &'a dyn Array, kind: &Kind) -> Option<Self> {
        if Kind::from_arrow(array.data_type()).as_ref() != Some(kind) && !kind.is_nested() {
            return None;
        }
        let values = match kind {
            Kind::Boolean => Values::Boolean(array.as_boolean_opt()?),
            Kind::Int => Values::Int32(array.as_primitive_opt()?),
            Kind::BigInt => Values::Int64(array.as_primitive_opt()?),
            Kind::Double => Values::Float64(array.as_primitive_opt()?),
            Kind::Decimal { .. } => Values::Decimal(array.as_primitive_opt()?),
            Kind::String => Values::Utf8(array.as_string_opt()?),
            Kind::Bytes => Values::Binary(array.as_binary_opt()?),
            Kind::Date => Values::Date32(array.as_primitive_opt()?),
            Kind::Time => Values::Time32(array.as_primitive_opt()?),
            Kind::Timestamp => Values::Timestamp(array.as_primitive_opt()?),
            Kind::Array { kind, .. } => {
                let list = array.as_list_opt::<i32>()?;
                Values::List(list, Box::new(Reader::new(list.values().as_ref(), kind)?))
            }
            Kind::Map { key, value, .. } => {
                let map = array.as_map_opt()?;
                Values::Map(
                    map,
                    Box::new(Reader::new(map.keys().as_ref(), key)?),
                    Box::new(Reader::new(map.values().as_ref(), value)?),
                )
            }
            Kind::Struct { kinds, .. } => {
                let s = array.as_struct_opt()?;
                if s.num_columns() != kinds.len() {
                    return None;
                }
                let prefixes = json_prefixes(s.fields().iter().map(|f| f.name().as_str()));
                let children = s
                    .columns()
                    .iter()
                    .zip(kinds)
                    .zip(prefixes)
                    .map(|((c, k), prefix)| Some((prefix, Reader::new(c.as_ref(), k)?)))
                    .collect::<Option<Vec<_>>>()?;
                Values::Struct(children)
            }
        };
        let nulls = array.nulls().filter(|nulls| nulls.null_count() > 0);
        Some(Reader { nulls, values })
    }

    #[inline]
    fn is_null(&self, row: usize) -> bool {
        self.nulls.is_some_and(|nulls| nulls.is_null(row))
    }
}

/// The child rows of a list or map row.
fn child_range(offsets: &[i32], row: usize) -> std::ops::Range<usize> {
    let start = offsets.get(row).copied().unwrap_or(0).max(0) as usize;
    let end = offsets.get(row + 1).copied().unwrap_or(0).max(0) as usize;
    start..end.max(start)
}

fn encode_part(
    format: Format,
    readers: &[Reader<'_>],
    prefixes: &[Vec<u8>],
    row: usize,
    out: &mut ByteColumn,
) {
    let all_null_single = readers.len() == 1 && readers[0].is_null(row);
    match format {
        Format::None => out.end_null(),
        _ if readers.is_empty() => out.end_null(),
        Format::Kafka
        | Format::Json {
            wrap_single_value: false,
        } if all_null_single => out.end_null(),
        Format::Kafka => {
            write_kafka(out.buffer(), &readers[0], row);
            out.end_value();
        }
        Format::Json {
            wrap_single_value: false,
        } => {
            write_json(out.buffer(), &readers[0], row);
            out.end_value();
        }
        Format::Json {
            wrap_single_value: true,
        } => {
            let buf = out.buffer();
            buf.push(b'{');
            for (reader, prefix) in readers.iter().zip(prefixes) {
                buf.extend_from_slice(prefix);
                write_json(buf, reader, row);
            }
            buf.push(b'}');
            out.end_value();
        }
        Format::Delimited { delimiter } => {
            let buf = out.buffer();
            for (i, reader) in readers.iter().enumerate() {
                if i > 0 {
                    buf.push(delimiter);
                }
                write_delimited(buf, reader, row, delimiter);
            }
            out.end_value();
        }
    }
}

fn write_kafka(out: &mut Vec<u8>, r: &Reader<'_>, row: usize) {
    match &r.values {
        Values::Int32(a) => out.extend_from_slice(&a.value(row).to_be_bytes()),
        Values::Int64(a) => out.extend_from_slice(&a.value(row).to_be_bytes()),
        Values::Float64(a) => out.extend_from_slice(&a.value(row).to_be_bytes()),
        Values::Utf8(a) => out.extend_from_slice(a.value(row).as_bytes()),
        Values::Binary(a) => out.extend_from_slice(a.value(row)),
        // Other types are rejected when the encoder is built.
        _ => write_text(out, r, row),
    }
}

/// Writes a non-null value as text (DELIMITED fields, JSON map keys): strings and bytes without
/// quotes, doubles as digits or `NaN`/`Infinity`, anything else as its JSON text.
fn write_text(out: &mut Vec<u8>, r: &Reader<'_>, row: usize) {
    match &r.values {
        Values::Float64(a) => write_f64(out, a.value(row)),
        Values::Utf8(a) => out.extend_from_slice(a.value(row).as_bytes()),
        Values::Binary(a) => write_base64(out, a.value(row)),
        _ => write_json(out, r, row),
    }
}

fn write_delimited(out: &mut Vec<u8>, r: &Reader<'_>, row: usize, delimiter: u8) {
    if r.is_null(row) {
        return;
    }
    let start = out.len();
    write_text(out, r, row);
    let written = &out[start..];
    let needs_quotes = (written.is_empty()
        && matches!(r.values, Values::Utf8(_) | Values::Binary(_)))
        || written
            .iter()
            .any(|&b| b == delimiter || b == b'"' || b == b'\n' || b == b'\r');
    if needs_quotes {
        let text = out.split_off(start);
        out.push(b'"');
        for &b in &text {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    }
}

fn write_json(out: &mut Vec<u8>, r: &Reader<'_>, row: usize) {
    if r.is_null(row) {
        out.extend_from_slice(b"null");
        return;
    }
    match &r.values {
        Values::Float64(a) if !a.value(row).is_finite() => {
            out.push(b'"');
            write_f64(out, a.value(row));
            out.push(b'"');
        }
        Values::Utf8(a) => write_string(out, a.value(row)),
        Values::Binary(a) => {
            out.push(b'"');
            write_base64(out, a.value(row));
            out.push(b'"');
        }
        Values::List(a, child) => {
            out.push(b'[');
            for (n, i) in child_range(a.value_offsets(), row).enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                write_json(out, child, i);
            }
            out.push(b']');
        }
        Values::Map(a, keys, values) => {
            out.push(b'{');
            for (n, i) in child_range(a.value_offsets(), row).enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                match &keys.values {
                    Values::Utf8(k) => write_string(out, k.value(i)),
                    _ => {
                        out.push(b'"');
                        write_text(out, keys, i);
                        out.push(b'"');
                    }
                }
                out.push(b':');
                write_json(out, values, i);
            }
            out.push(b'}');
        }
        Values::Struct(children) => {
            out.push(b'{');
            for (prefix, child) in children {
                out.extend_from_slice(prefix);
                write_json(out, child, row);
            }
            out.push(b'}');
        }
        Values::Float64(a) => write_f64(out, a.value(row)),
        Values::Boolean(a) => out.extend_from_slice(if a.value(row) { b"true" } else { b"false" }),
        Values::Int32(a) => write_int(out, a.value(row)),
        Values::Int64(a) => write_int(out, a.value(row)),
        Values::Decimal(a) => write_decimal(out, a.value(row), a.scale()),
        Values::Date32(a) => write_int(out, a.value(row)),
        Values::Time32(a) => write_int(out, a.value(row)),
        Values::Timestamp(a) => write_int(out, a.value(row)),
    }
}
