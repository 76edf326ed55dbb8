//! [`RecordDecoder`]: a [`RawBatch`] of Kafka records into one Arrow [`RecordBatch`] in the
//! source's schema, skipping (and reporting) records that do not decode.
//!
//! Each record is decoded into per-column [`Slot`]s in reusable scratch memory; only when both
//! key and value decoded cleanly is the row appended to the column builders. A bad record thus
//! leaves no partial row, and the scalar path allocates nothing per record.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch};
use arrow::datatypes::SchemaRef;

use crate::buffer::RawBatch;
use crate::builder::{ColumnBuilder, Scratch, check_node};
use crate::coerce::{Detail, Found, Slot, coerce_bool, coerce_read_number, coerce_text, mismatch};
use crate::error::{FormatError, RecordError, RecordPart};
use crate::format::Format;
use crate::json::{Parser, SyntaxError};
use crate::layout::{SourceLayout, resolve_columns};
use crate::types::{Column, Kind};

/// Initial row capacity of the column builders.
const INITIAL_CAPACITY: usize = 1024;

/// The result of decoding one [`RawBatch`].
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The good records, in input order, in the layout's schema.
    pub batch: RecordBatch,
    /// One entry per record that produced no row.
    pub errors: Vec<RecordError>,
    /// Rows of `batch` whose record had no value (a Kafka tombstone); their value columns are NULL.
    /// Streams usually drop these; tables treat them as deletes.
    pub tombstones: Vec<usize>,
}

/// Decodes raw Kafka records into Arrow record batches for one [`SourceLayout`]. Reuse one
/// decoder per task: it keeps its buffers between batches.
pub struct RecordDecoder {
    schema: SchemaRef,
    key_format: Format,
    value_format: Format,
    /// Key columns then value columns.
    columns: Vec<Column>,
    key_count: usize,
    builders: Vec<ColumnBuilder>,
    slots: Vec<Slot>,
    scratch: Scratch,
    tmp: Scratch,
    delimited_fields: Vec<FieldSpan>,
    rowtime: Vec<i64>,
    partition: Vec<i32>,
    offset: Vec<i64>,
}

impl std::fmt::Debug for RecordDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordDecoder")
            .field("schema", &self.schema)
            .field("key_format", &self.key_format)
            .field("value_format", &self.value_format)
            .finish_non_exhaustive()
    }
}

/// Why a record part did not decode.
enum PartError {
    Syntax(SyntaxError),
    /// The column at this index of the part had a bad value; the string is the reason.
    Field(usize, String),
    /// Anything about the part as a whole.
    Part(String),
}

impl From<SyntaxError> for PartError {
    fn from(e: SyntaxError) -> Self {
        PartError::Syntax(e)
    }
}

impl PartError {
    fn describe(self, part: RecordPart, format: Format, columns: &[Column]) -> String {
        match self {
            PartError::Syntax(e) => format!(
                "{part} is not valid {} at byte {}: {}",
                format.name(),
                e.pos,
                e.msg
            ),
            PartError::Field(i, reason) => match columns.get(i) {
                Some(c)
                    if !matches!(
                        format,
                        Format::Kafka
                            | Format::Json {
                                wrap_single_value: false
                            }
                    ) =>
                {
                    if reason.starts_with(['[', '.', ':']) {
                        format!("{part} field \"{}\"{reason}", c.name)
                    } else {
                        format!("{part} field \"{}\": {reason}", c.name)
                    }
                }
                _ => format!(
                    "{part}{}{reason}",
                    if reason.starts_with(['[', '.', ':']) {
                        ""
                    } else {
                        ": "
                    }
                ),
            },
            PartError::Part(reason) => format!("{part}: {reason}"),
        }
    }
}

impl RecordDecoder {
    /// Prepares a decoder; fails if a format cannot carry a column's type.
    pub fn new(layout: &SourceLayout) -> Result<Self, FormatError> {
        let mut columns =
            resolve_columns(RecordPart::Key, layout.key_format(), layout.key_fields())?;
        let key_count = columns.len();
        columns.extend(resolve_columns(
            RecordPart::Value,
            layout.value_format(),
            layout.value_fields(),
        )?);
        let builders = columns
            .iter()
            .map(|c| ColumnBuilder::new(&c.kind, INITIAL_CAPACITY))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| FormatError::Internal(format!("cannot create column builder: {e}")))?;
        Ok(Self {
            schema: layout.schema().clone(),
            key_format: layout.key_format(),
            value_format: layout.value_format(),
            slots: vec![Slot::Null; columns.len()],
            columns,
            key_count,
            builders,
            scratch: Scratch::default(),
            tmp: Scratch::default(),
            delimited_fields: Vec::new(),
            rowtime: Vec::new(),
            partition: Vec::new(),
            offset: Vec::new(),
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Decodes a batch. Bad records are skipped and listed in [`Decoded::errors`]; an `Err` means
    /// a broken invariant (a bug), never bad input.
    pub fn decode(&mut self, raw: &RawBatch) -> Result<Decoded, FormatError> {
        let mut errors = Vec::new();
        let mut tombstones = Vec::new();
        self.rowtime.reserve(raw.len());
        self.partition.reserve(raw.len());
        self.offset.reserve(raw.len());
        let meta = raw
            .timestamps_ms()
            .iter()
            .zip(raw.partitions())
            .zip(raw.offsets());
        for (i, ((&timestamp, &partition), &offset)) in meta.enumerate() {
            let key = raw.key(i);
            let value = raw.value(i);
            if let Err((part, reason)) = self.decode_row(key, value) {
                errors.push(RecordError {
                    partition,
                    offset,
                    part,
                    reason,
                });
                continue;
            }
            if value.is_none() {
                tombstones.push(self.rowtime.len());
            }
            self.rowtime.push(timestamp);
            self.partition.push(partition);
            self.offset.push(offset);
        }
        let batch = self.finish_batch()?;
        Ok(Decoded {
            batch,
            errors,
            tombstones,
        })
    }

    fn decode_row(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<(), (RecordPart, String)> {
        self.scratch.clear();
        self.slots.fill(Slot::Null);
        let (key_columns, value_columns) = self.columns.split_at(self.key_count);
        let (key_slots, value_slots) = self.slots.split_at_mut(self.key_count);
        let parts = [
            (
                RecordPart::Key,
                self.key_format,
                key,
                key_columns,
                key_slots,
            ),
            (
                RecordPart::Value,
                self.value_format,
                value,
                value_columns,
                value_slots,
            ),
        ];
        // Each part's bytes as the format checked them to be UTF-8: `Slot::Input` points into them.
        let mut texts = [""; 2];
        for ((part, format, bytes, columns, slots), text) in parts.into_iter().zip(&mut texts) {
            let Some(bytes) = bytes else {
                // No key, or no value (a tombstone): every column of the part is NULL, which a
                // NOT NULL column cannot hold.
                if let Some(column) = columns.iter().find(|c| !c.nullable) {
                    return Err((
                        part,
                        format!(
                            "{part} is null (no bytes), but column \"{}\" is NOT NULL",
                            column.name
                        ),
                    ));
                }
                continue;
            };
            let result = match format {
                Format::None => Ok(""),
                Format::Kafka => decode_kafka(bytes, columns, slots, &mut self.scratch),
                Format::Json { wrap_single_value } => decode_json(
                    bytes,
                    wrap_single_value,
                    columns,
                    slots,
                    &mut self.scratch,
                    &mut self.tmp,
                ),
                Format::Delimited { delimiter } => decode_delimited(
                    bytes,
                    delimiter,
                    columns,
                    slots,
                    &mut self.scratch,
                    &mut self.delimited_fields,
                )
                .map(|()| ""),
            };
            *text = result.map_err(|e| (part, e.describe(part, format, columns)))?;
            if let Some((column, _)) = columns
                .iter()
                .zip(slots.iter())
                .find(|(c, s)| !c.nullable && **s == Slot::Null)
            {
                return Err((
                    part,
                    format!(
                        "{part} field \"{}\" is null or missing, but the column is NOT NULL",
                        column.name
                    ),
                ));
            }
        }
        let [key_text, value_text] = texts;
        for (i, ((builder, column), slot)) in self
            .builders
            .iter_mut()
            .zip(&self.columns)
            .zip(&self.slots)
            .enumerate()
        {
            let input = if i < self.key_count {
                key_text
            } else {
                value_text
            };
            builder.append_slot(&column.kind, *slot, &self.scratch, input, &mut self.tmp);
        }
        Ok(())
    }

    fn finish_batch(&mut self) -> Result<RecordBatch, FormatError> {
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        arrays.push(Arc::new(Int64Array::from(std::mem::take(
            &mut self.rowtime,
        ))));
        arrays.push(Arc::new(Int32Array::from(std::mem::take(
            &mut self.partition,
        ))));
        arrays.push(Arc::new(Int64Array::from(std::mem::take(&mut self.offset))));
        for builder in &mut self.builders {
            arrays.push(
                builder
                    .finish()
                    .map_err(|e| FormatError::Internal(format!("cannot finish column: {e}")))?,
            );
        }
        RecordBatch::try_new(self.schema.clone(), arrays).map_err(|e| {
            FormatError::Internal(format!("decoded columns do not match the schema: {e}"))
        })
    }
}

/// KAFKA: the bytes are the single column's value. Returns them as text when they are a STRING's.
fn decode_kafka<'b>(
    bytes: &'b [u8],
    columns: &[Column],
    slots: &mut [Slot],
    scratch: &mut Scratch,
) -> Result<&'b str, PartError> {
    let (Some(column), Some(slot)) = (columns.first(), slots.first_mut()) else {
        return Ok("");
    };
    let mut checked = "";
    let wrong_length = |width| {
        PartError::Field(
            0,
            format!(
                "expected {} ({width} bytes, big-endian), found {}",
                column.kind,
                Found::Bytes(bytes.len())
            ),
        )
    };
    *slot = match column.kind {
        Kind::Int => Slot::I32(i32::from_be_bytes(
            bytes.try_into().map_err(|_| wrong_length(4))?,
        )),
        Kind::BigInt => Slot::I64(i64::from_be_bytes(
            bytes.try_into().map_err(|_| wrong_length(8))?,
        )),
        Kind::Double => Slot::F64(f64::from_be_bytes(
            bytes.try_into().map_err(|_| wrong_length(8))?,
        )),
        Kind::String => {
            let text = std::str::from_utf8(bytes).map_err(|e| {
                PartError::Field(
                    0,
                    format!(
                        "expected STRING, found invalid UTF-8 at byte {}",
                        e.valid_up_to()
                    ),
                )
            })?;
            checked = text;
            Slot::Input(0, text.len())
        }
        Kind::Bytes => {
            let start = scratch.bin.len();
            scratch.bin.extend_from_slice(bytes);
            Slot::Bin(start, scratch.bin.len())
        }
        _ => {
            return Err(PartError::Part(format!(
                "KAFKA cannot carry {}",
                column.kind
            )));
        }
    };
    Ok(checked)
}

/// JSON: an object of fields, or (unwrapped) the single column's value. Returns the record as
/// the text the parser checked.
fn decode_json<'b>(
    bytes: &'b [u8],
    wrap: bool,
    columns: &[Column],
    slots: &mut [Slot],
    scratch: &mut Scratch,
    junk: &mut Scratch,
) -> Result<&'b str, PartError> {
    let mut p = Parser::new(bytes)?;
    let text = p.text();
    if !wrap {
        if let (Some(column), Some(slot)) = (columns.first(), slots.first_mut()) {
            *slot = json_value(&mut p, column, scratch, junk).map_err(|e| e.at(0))?;
        }
        p.finish()?;
        return Ok(text);
    }
    match p.peek() {
        Some(b'{') => {}
        Some(b'n') => {
            // A JSON null record: every column NULL.
            p.literal(b"null")?;
            p.finish()?;
            return Ok(text);
        }
        Some(b) => {
            let found = match b {
                b'[' => "array",
                b'"' => "string",
                b't' | b'f' => "boolean",
                b'-' | b'0'..=b'9' => "number",
                _ => return Err(p.error("expected value").into()),
            };
            return Err(PartError::Part(format!(
                "expected a JSON object, found {found}"
            )));
        }
        None => return Err(p.error("EOF while parsing a value").into()),
    }
    if p.begin_object()? {
        p.finish()?;
        return Ok(text);
    }
    let mut hint = 0;
    loop {
        let key = p.member_key()?;
        let name: &str = if key.escaped {
            scratch.name.clear();
            p.unescape_into(key, &mut scratch.name)?;
            &scratch.name
        } else {
            p.raw_text(key)
        };
        match find_column(columns, name, hint) {
            Some(i) => {
                hint = i + 1;
                if let (Some(column), Some(slot)) = (columns.get(i), slots.get_mut(i)) {
                    *slot = json_value(&mut p, column, scratch, junk).map_err(|e| e.at(i))?;
                }
            }
            None => p.skip_value(0)?,
        }
        if !p.next_member()? {
            break;
        }
    }
    p.finish()?;
    Ok(text)
}

/// The column a JSON field name refers to; tries `hint` (the column after the last match) first,
/// since producers usually write fields in column order.
#[inline]
fn find_column(columns: &[Column], name: &str, hint: usize) -> Option<usize> {
    let matches = |c: &Column| c.matches(name);
    if columns.get(hint).is_some_and(matches) {
        return Some(hint);
    }
    columns.iter().position(matches)
}

/// A problem with one JSON value, before we know which column it was for.
enum ValueError {
    Syntax(SyntaxError),
    Type(String),
}

impl From<SyntaxError> for ValueError {
    fn from(e: SyntaxError) -> Self {
        ValueError::Syntax(e)
    }
}

impl ValueError {
    fn at(self, column: usize) -> PartError {
        match self {
            ValueError::Syntax(e) => PartError::Syntax(e),
            ValueError::Type(reason) => PartError::Field(column, reason),
        }
    }
}

/// Reads the JSON value at the parser's position into a slot for `column`.
fn json_value(
    p: &mut Parser<'_>,
    column: &Column,
    scratch: &mut Scratch,
    junk: &mut Scratch,
) -> Result<Slot, ValueError> {
    let kind = &column.kind;
    let type_error =
        |found: Found<'_>, detail: Detail| ValueError::Type(mismatch(kind, found, detail));
    match p.peek() {
        Some(b'"') => {
            let s = p.string()?;
            if !s.escaped {
                // Taken from the record as it is: no copy into the scratch.
                if *kind == Kind::String {
                    return Ok(Slot::Input(s.start, s.end));
                }
                let value = p.raw_text(s);
                return coerce_text(kind, value, &mut scratch.bin)
                    .map_err(|d| type_error(Found::Text(value), d));
            }
            let start = scratch.text.len();
            p.unescape_into(s, &mut scratch.text)?;
            let end = scratch.text.len();
            if *kind == Kind::String {
                return Ok(Slot::Text(start, end));
            }
            let Scratch { text, bin, .. } = scratch;
            let value = text.get(start..end).unwrap_or_default();
            let slot =
                coerce_text(kind, value, bin).map_err(|d| type_error(Found::Text(value), d))?;
            text.truncate(start);
            Ok(slot)
        }
        Some(b'-' | b'0'..=b'9') => {
            let (n, short) = p.number_and_integer()?;
            coerce_read_number(kind, n, short, &mut scratch.text)
                .map_err(|d| type_error(Found::Number(n), d))
        }
        Some(b't') => {
            p.literal(b"true")?;
            coerce_bool(kind, true, &mut scratch.text).map_err(|d| type_error(Found::Bool(true), d))
        }
        Some(b'f') => {
            p.literal(b"false")?;
            coerce_bool(kind, false, &mut scratch.text)
                .map_err(|d| type_error(Found::Bool(false), d))
        }
        Some(b'n') => {
            p.literal(b"null")?;
            Ok(Slot::Null)
        }
        Some(open @ (b'[' | b'{')) => {
            if kind.is_nested() {
                let node = p.node(0)?;
                check_node(kind, column.nullable, &node, junk).map_err(ValueError::Type)?;
                scratch.nodes.push(node);
                Ok(Slot::Nested(scratch.nodes.len() - 1))
            } else if *kind == Kind::String {
                // ksqlDB reads a nested JSON value into a STRING column as its JSON text.
                let node = p.node(0)?;
                let start = scratch.text.len();
                crate::json::write_node(&mut scratch.text, &node);
                Ok(Slot::Text(start, scratch.text.len()))
            } else {
                let found = if open == b'[' {
                    Found::Array
                } else {
                    Found::Object
                };
                Err(type_error(found, Detail::WrongType))
            }
        }
        Some(_) => Err(p.error("expected value").into()),
        None => Err(p.error("EOF while parsing a value").into()),
    }
}

/// One field of a DELIMITED record: `bytes[start..end]`, or, for a quoted field with `""` escapes,
/// `text[start..end]` of the scratch.
#[derive(Debug, Clone, Copy)]
struct FieldSpan {
    start: usize,
    end: usize,
    quoted: bool,
    in_scratch: bool,
}

/// DELIMITED: fields in column order.
fn decode_delimited(
    bytes: &[u8],
    delimiter: u8,
    columns: &[Column],
    slots: &mut [Slot],
    scratch: &mut Scratch,
    fields: &mut Vec<FieldSpan>,
) -> Result<(), PartError> {
    if columns.is_empty() {
        return Ok(());
    }
    split_delimited(bytes, delimiter, fields, &mut scratch.unquoted)?;
    if fields.len() != columns.len() {
        return Err(PartError::Part(format!(
            "expected {} fields, found {}",
            columns.len(),
            fields.len()
        )));
    }
    for (i, ((field, column), slot)) in fields.iter().zip(columns).zip(slots.iter_mut()).enumerate()
    {
        let raw = if field.in_scratch {
            &scratch.unquoted[field.start..field.end]
        } else {
            &bytes[field.start..field.end]
        };
        // An empty field is NULL; a quoted empty one is the empty STRING or BYTES value.
        if raw.is_empty() && !(field.quoted && matches!(column.kind, Kind::String | Kind::Bytes)) {
            *slot = Slot::Null;
            continue;
        }
        let Ok(text) = std::str::from_utf8(raw) else {
            return Err(PartError::Field(
                i,
                format!("expected {}, found invalid UTF-8", column.kind),
            ));
        };
        *slot = match coerce_text(&column.kind, text, &mut scratch.bin) {
            Ok(Slot::SameText) => {
                let start = scratch.text.len();
                scratch.text.push_str(text);
                Slot::Text(start, scratch.text.len())
            }
            Ok(slot) => slot,
            Err(d) => {
                return Err(PartError::Field(
                    i,
                    mismatch(&column.kind, Found::Text(text), d),
                ));
            }
        };
    }
    Ok(())
}

/// Splits a DELIMITED record into fields, unescaping quoted fields that contain `""` into `unquoted`.
fn split_delimited(
    bytes: &[u8],
    delimiter: u8,
    fields: &mut Vec<FieldSpan>,
    unquoted: &mut Vec<u8>,
) -> Result<(), PartError> {
    fields.clear();
    unquoted.clear();
    let mut pos = 0;
    loop {
        if bytes.get(pos) == Some(&b'"') {
            let open = pos;
            pos += 1;
            let content_start = pos;
            let mut escaped = false;
            let scratch_start = unquoted.len();
            loop {
                let Some(q) = bytes[pos..].iter().position(|&b| b == b'"') else {
                    return Err(PartError::Syntax(SyntaxError {
                        pos: open,
                        msg: "unterminated quoted field",
                    }));
                };
                unquoted.extend_from_slice(&bytes[pos..pos + q]);
                pos += q + 1;
                if bytes.get(pos) == Some(&b'"') {
                    escaped = true;
                    unquoted.push(b'"');
                    pos += 1;
                } else {
                    break;
                }
            }
            let span = if escaped {
                FieldSpan {
                    start: scratch_start,
                    end: unquoted.len(),
                    quoted: true,
                    in_scratch: true,
                }
            } else {
                unquoted.truncate(scratch_start);
                FieldSpan {
                    start: content_start,
                    end: pos - 1,
                    quoted: true,
                    in_scratch: false,
                }
            };
            fields.push(span);
            match bytes.get(pos) {
                None => return Ok(()),
                Some(&b) if b == delimiter => pos += 1,
                Some(_) => {
                    return Err(PartError::Syntax(SyntaxError {
                        pos,
                        msg: "expected a delimiter after a closing quote",
                    }));
                }
            }
        } else {
            let end = bytes[pos..]
                .iter()
                .position(|&b| b == delimiter)
                .map(|i| pos + i);
            fields.push(FieldSpan {
                start: pos,
                end: end.unwrap_or(bytes.len()),
                quoted: false,
                in_scratch: false,
            });
            match end {
                Some(end) => pos = end + 1,
                None => return Ok(()),
            }
        }
    }
}
