//! [`ColumnBuilder`]: one Arrow builder per column, chosen by [`Kind`] once, so appending a value
//! is a `match` on an enum, never a virtual call. Rows are decoded into [`Slot`]s first and
//! appended only when the whole record is valid, so a bad record leaves nothing behind.

use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Float64Builder, Int32Builder, Int64Builder, ListArray, MapArray, NullBufferBuilder,
    StringBuilder, StructArray, Time32MillisecondBuilder, TimestampMillisecondBuilder,
};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, FieldRef, Fields};
use arrow::error::ArrowError;

use crate::coerce::{Detail, Found, Slot, coerce_bool, coerce_number, coerce_text, mismatch};
use crate::error::echo;
use crate::json::{Node, write_node};
use crate::types::Kind;

/// Per-record working memory, cleared (not freed) between records.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// Text of STRING slots.
    pub text: String,
    /// Bytes of BYTES slots.
    pub bin: Vec<u8>,
    /// Values of nested slots.
    pub nodes: Vec<Node>,
    /// An unescaped JSON field name.
    pub name: String,
    /// DELIMITED fields unquoted from `""` escapes.
    pub unquoted: Vec<u8>,
}

impl Scratch {
    pub(crate) fn clear(&mut self) {
        self.text.clear();
        self.bin.clear();
        self.nodes.clear();
        self.name.clear();
        self.unquoted.clear();
    }
}

pub(crate) enum ColumnBuilder {
    Boolean(BooleanBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder),
    Utf8(StringBuilder),
    Binary(BinaryBuilder),
    Date32(Date32Builder),
    Time32(Time32MillisecondBuilder),
    Timestamp(TimestampMillisecondBuilder),
    List(Box<ListParts>),
    Map(Box<MapParts>),
    Struct(Box<StructParts>),
}

pub(crate) struct ListParts {
    field: FieldRef,
    item: Kind,
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
    child: ColumnBuilder,
}

pub(crate) struct MapParts {
    entries: FieldRef,
    key: Kind,
    value: Kind,
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
    keys: ColumnBuilder,
    values: ColumnBuilder,
}

pub(crate) struct StructParts {
    fields: Fields,
    kinds: Vec<Kind>,
    nulls: NullBufferBuilder,
    children: Vec<ColumnBuilder>,
}

/// Offset of the end of a child of `len` values; saturates, and `finish` rejects a child that
/// outgrew `i32`, so offsets stay monotonic either way.
fn offset(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX)
}

fn offsets_buffer(
    offsets: &mut Vec<i32>,
    child_len: usize,
) -> Result<OffsetBuffer<i32>, ArrowError> {
    if i32::try_from(child_len).is_err() {
        return Err(ArrowError::ComputeError(format!(
            "nested column of {child_len} values exceeds i32 offsets"
        )));
    }
    let taken = std::mem::replace(offsets, vec![0]);
    Ok(OffsetBuffer::new(ScalarBuffer::from(taken)))
}

impl ColumnBuilder {
    pub(crate) fn new(kind: &Kind, capacity: usize) -> Result<Self, ArrowError> {
        Ok(match kind {
            Kind::Boolean => ColumnBuilder::Boolean(BooleanBuilder::with_capacity(capacity)),
            Kind::Int => ColumnBuilder::Int32(Int32Builder::with_capacity(capacity)),
            Kind::BigInt => ColumnBuilder::Int64(Int64Builder::with_capacity(capacity)),
            Kind::Double => ColumnBuilder::Float64(Float64Builder::with_capacity(capacity)),
            Kind::Decimal { precision, scale } => ColumnBuilder::Decimal(
                Decimal128Builder::with_capacity(capacity)
                    .with_precision_and_scale(*precision, *scale)?,
            ),
            Kind::String => {
                ColumnBuilder::Utf8(StringBuilder::with_capacity(capacity, capacity * 16))
            }
            Kind::Bytes => {
                ColumnBuilder::Binary(BinaryBuilder::with_capacity(capacity, capacity * 16))
            }
            Kind::Date => ColumnBuilder::Date32(Date32Builder::with_capacity(capacity)),
            Kind::Time => ColumnBuilder::Time32(Time32MillisecondBuilder::with_capacity(capacity)),
            Kind::Timestamp => {
                ColumnBuilder::Timestamp(TimestampMillisecondBuilder::with_capacity(capacity))
            }
            Kind::Array { item, kind } => ColumnBuilder::List(Box::new(ListParts {
                field: item.clone(),
                item: (**kind).clone(),
                offsets: vec![0],
                nulls: NullBufferBuilder::new(capacity),
                child: ColumnBuilder::new(kind, capacity)?,
            })),
            Kind::Map {
                entries,
                key,
                value,
                ..
            } => ColumnBuilder::Map(Box::new(MapParts {
                entries: entries.clone(),
                key: (**key).clone(),
                value: (**value).clone(),
                offsets: vec![0],
                nulls: NullBufferBuilder::new(capacity),
                keys: ColumnBuilder::new(key, capacity)?,
                values: ColumnBuilder::new(value, capacity)?,
            })),
            Kind::Struct { fields, kinds } => ColumnBuilder::Struct(Box::new(StructParts {
                fields: fields.clone(),
                kinds: kinds.clone(),
                nulls: NullBufferBuilder::new(capacity),
                children: kinds
                    .iter()
                    .map(|k| ColumnBuilder::new(k, capacity))
                    .collect::<Result<_, _>>()?,
            })),
        })
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            ColumnBuilder::Boolean(b) => b.len(),
            ColumnBuilder::Int32(b) => b.len(),
            ColumnBuilder::Int64(b) => b.len(),
            ColumnBuilder::Float64(b) => b.len(),
            ColumnBuilder::Decimal(b) => b.len(),
            ColumnBuilder::Utf8(b) => b.len(),
            ColumnBuilder::Binary(b) => b.len(),
            ColumnBuilder::Date32(b) => b.len(),
            ColumnBuilder::Time32(b) => b.len(),
            ColumnBuilder::Timestamp(b) => b.len(),
            ColumnBuilder::List(p) => p.nulls.len(),
            ColumnBuilder::Map(p) => p.nulls.len(),
            ColumnBuilder::Struct(p) => p.nulls.len(),
        }
    }

    pub(crate) fn append_null(&mut self) {
        match self {
            ColumnBuilder::Boolean(b) => b.append_null(),
            ColumnBuilder::Int32(b) => b.append_null(),
            ColumnBuilder::Int64(b) => b.append_null(),
            ColumnBuilder::Float64(b) => b.append_null(),
            ColumnBuilder::Decimal(b) => b.append_null(),
            ColumnBuilder::Utf8(b) => b.append_null(),
            ColumnBuilder::Binary(b) => b.append_null(),
            ColumnBuilder::Date32(b) => b.append_null(),
            ColumnBuilder::Time32(b) => b.append_null(),
            ColumnBuilder::Timestamp(b) => b.append_null(),
            ColumnBuilder::List(p) => {
                p.offsets.push(offset(p.child.len()));
                p.nulls.append_null();
            }
            ColumnBuilder::Map(p) => {
                p.offsets.push(offset(p.keys.len()));
                p.nulls.append_null();
            }
            ColumnBuilder::Struct(p) => {
                for child in &mut p.children {
                    child.append_null();
                }
                p.nulls.append_null();
            }
        }
    }

    /// Appends a decoded slot; text and bytes slots point into `scratch` (input slots into
    /// `input`, the record part it was decoded from), nested ones into its nodes.
    #[inline]
    pub(crate) fn append_slot(
        &mut self,
        kind: &Kind,
        slot: Slot,
        scratch: &Scratch,
        input: &str,
        tmp: &mut Scratch,
    ) {
        if let Slot::Nested(i) = slot {
            match scratch.nodes.get(i) {
                Some(node) => self.append_node(kind, node, tmp),
                None => self.append_null(),
            }
            return;
        }
        if let (ColumnBuilder::Utf8(b), Slot::Input(start, end)) = (&mut *self, slot) {
            match input.get(start..end) {
                Some(s) => b.append_value(s),
                None => b.append_null(),
            }
            return;
        }
        self.append_scalar(slot, &scratch.text, &scratch.bin);
    }

    /// Appends a scalar slot whose text or bytes live in `text`/`bin`. A slot that does not fit the
    /// builder (impossible when the slot came from coercing to this column's kind) appends NULL,
    /// keeping every column the same length.
    #[inline]
    fn append_scalar(&mut self, slot: Slot, text: &str, bin: &[u8]) {
        match (self, slot) {
            (ColumnBuilder::Boolean(b), Slot::Bool(v)) => b.append_value(v),
            (ColumnBuilder::Int32(b), Slot::I32(v)) => b.append_value(v),
            (ColumnBuilder::Date32(b), Slot::I32(v)) => b.append_value(v),
            (ColumnBuilder::Time32(b), Slot::I32(v)) => b.append_value(v),
            (ColumnBuilder::Int64(b), Slot::I64(v)) => b.append_value(v),
            (ColumnBuilder::Timestamp(b), Slot::I64(v)) => b.append_value(v),
            (ColumnBuilder::Float64(b), Slot::F64(v)) => b.append_value(v),
            (ColumnBuilder::Decimal(b), Slot::I128(v)) => b.append_value(v),
            (ColumnBuilder::Utf8(b), Slot::Text(start, end)) => match text.get(start..end) {
                Some(s) => b.append_value(s),
                None => b.append_null(),
            },
            (ColumnBuilder::Binary(b), Slot::Bin(start, end)) => match bin.get(start..end) {
                Some(v) => b.append_value(v),
                None => b.append_null(),
            },
            (builder, _) => builder.append_null(),
        }
    }

    /// Appends a JSON value already validated by [`check_node`] against `kind`. Total: anything
    /// that does not convert appends NULL, so nested builders always stay aligned.
    pub(crate) fn append_node(&mut self, kind: &Kind, node: &Node, tmp: &mut Scratch) {
        match self {
            ColumnBuilder::List(p) => match node {
                Node::Array(items) => {
                    for item in items {
                        p.child.append_node(&p.item, item, tmp);
                    }
                    p.offsets.push(offset(p.child.len()));
                    p.nulls.append_non_null();
                }
                _ => self.append_null(),
            },
            ColumnBuilder::Map(p) => match node {
                Node::Object(members) => {
                    for (key, value) in members {
                        tmp.clear();
                        match coerce_text(&p.key, key, &mut tmp.bin) {
                            Ok(Slot::SameText) => p.keys.append_str(key),
                            Ok(slot) => p.keys.append_scalar(slot, &tmp.text, &tmp.bin),
                            Err(_) => p.keys.append_null(),
                        }
                        p.values.append_node(&p.value, value, tmp);
                    }
                    p.offsets.push(offset(p.keys.len()));
                    p.nulls.append_non_null();
                }
                _ => self.append_null(),
            },
            ColumnBuilder::Struct(p) => match node {
                Node::Object(members) => {
                    for ((field, kind), child) in p.fields.iter().zip(&p.kinds).zip(&mut p.children)
                    {
                        let member = members
                            .iter()
                            .rev()
                            .find(|(k, _)| name_matches(field.name(), k));
                        child.append_node(kind, member.map_or(&Node::Null, |(_, v)| v), tmp);
                    }
                    p.nulls.append_non_null();
                }
                _ => self.append_null(),
            },
            leaf => {
                tmp.clear();
                let slot = match node {
                    Node::Null => Ok(Slot::Null),
                    Node::Bool(b) => coerce_bool(kind, *b, &mut tmp.text),
                    Node::Number(n) => coerce_number(kind, n, &mut tmp.text),
                    Node::Text(s) => coerce_text(kind, s, &mut tmp.bin),
                    Node::Array(_) | Node::Object(_) if *kind == Kind::String => {
                        write_node(&mut tmp.text, node);
                        Ok(Slot::Text(0, tmp.text.len()))
                    }
                    Node::Array(_) | Node::Object(_) => Ok(Slot::Null),
                };
                match (slot, node) {
                    (Ok(Slot::SameText), Node::Text(s)) => leaf.append_str(s),
                    (Ok(slot), _) => leaf.append_scalar(slot, &tmp.text, &tmp.bin),
                    (Err(_), _) => leaf.append_null(),
                }
            }
        }
    }

    /// Appends text to a STRING builder (NULL for any other builder).
    pub(crate) fn append_str(&mut self, s: &str) {
        match self {
            ColumnBuilder::Utf8(b) => b.append_value(s),
            other => other.append_null(),
        }
    }

    /// Takes the values appended so far as an array; the builder is empty afterwards.
    pub(crate) fn finish(&mut self) -> Result<ArrayRef, ArrowError> {
        Ok(match self {
            ColumnBuilder::Boolean(b) => Arc::new(b.finish()),
            ColumnBuilder::Int32(b) => Arc::new(b.finish()),
            ColumnBuilder::Int64(b) => Arc::new(b.finish()),
            ColumnBuilder::Float64(b) => Arc::new(b.finish()),
            ColumnBuilder::Decimal(b) => Arc::new(b.finish()),
            ColumnBuilder::Utf8(b) => Arc::new(b.finish()),
            ColumnBuilder::Binary(b) => Arc::new(b.finish()),
            ColumnBuilder::Date32(b) => Arc::new(b.finish()),
            ColumnBuilder::Time32(b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(b) => Arc::new(b.finish()),
            ColumnBuilder::List(p) => {
                let offsets = offsets_buffer(&mut p.offsets, p.child.len())?;
                let values = p.child.finish()?;
                Arc::new(ListArray::try_new(
                    p.field.clone(),
                    offsets,
                    values,
                    p.nulls.finish(),
                )?)
            }
            ColumnBuilder::Map(p) => {
                let offsets = offsets_buffer(&mut p.offsets, p.keys.len())?;
                let DataType::Struct(kv) = p.entries.data_type() else {
                    return Err(ArrowError::SchemaError(
                        "map entries are not a struct".to_string(),
                    ));
                };
                let entries = StructArray::try_new(
                    kv.clone(),
                    vec![p.keys.finish()?, p.values.finish()?],
                    None,
                )?;
                Arc::new(MapArray::try_new(
                    p.entries.clone(),
                    offsets,
                    entries,
                    p.nulls.finish(),
                    false,
                )?)
            }
            ColumnBuilder::Struct(p) => {
                let children = p
                    .children
                    .iter_mut()
                    .map(ColumnBuilder::finish)
                    .collect::<Result<Vec<_>, _>>()?;
                Arc::new(StructArray::try_new(
                    p.fields.clone(),
                    children,
                    p.nulls.finish(),
                )?)
            }
        })
    }
}

/// Case-insensitive match of a JSON field name against a struct field or column name.
pub(crate) fn name_matches(name: &str, key: &str) -> bool {
    (key.len() == name.len() && key.eq_ignore_ascii_case(name))
        || (!key.is_ascii() && key.to_lowercase() == name.to_lowercase())
}

/// Checks that a JSON value converts to `kind`, returning the path and reason of the first
/// problem, e.g. `[2]: expected INT, found string "x"`. `junk` is scratch space.
pub(crate) fn check_node(
    kind: &Kind,
    nullable: bool,
    node: &Node,
    junk: &mut Scratch,
) -> Result<(), String> {
    junk.clear();
    let leaf = |r: Result<Slot, Detail>, found: Found<'_>| {
        r.map(drop)
            .map_err(|d| format!(": {}", mismatch(kind, found, d)))
    };
    match node {
        Node::Null if nullable => Ok(()),
        Node::Null => Err(format!(
            ": expected {kind}, found null (the field is NOT NULL)"
        )),
        Node::Bool(b) => leaf(coerce_bool(kind, *b, &mut junk.text), Found::Bool(*b)),
        Node::Number(n) => leaf(coerce_number(kind, n, &mut junk.text), Found::Number(n)),
        Node::Text(s) => leaf(coerce_text(kind, s, &mut junk.bin), Found::Text(s)),
        Node::Array(items) => match kind {
            Kind::Array {
                item,
                kind: item_kind,
            } => {
                for (i, it) in items.iter().enumerate() {
                    check_node(item_kind, item.is_nullable(), it, junk)
                        .map_err(|e| format!("[{i}]{e}"))?;
                }
                Ok(())
            }
            Kind::String => Ok(()),
            _ => Err(format!(
                ": {}",
                mismatch(kind, Found::Array, Detail::WrongType)
            )),
        },
        Node::Object(members) => match kind {
            Kind::Map {
                key,
                value,
                value_nullable,
                ..
            } => {
                for (k, v) in members {
                    junk.clear();
                    coerce_text(key, k, &mut junk.bin).map_err(|d| {
                        format!("[{}]: key {}", echo(k), mismatch(key, Found::Text(k), d))
                    })?;
                    check_node(value, *value_nullable, v, junk)
                        .map_err(|e| format!("[{}]{e}", echo(k)))?;
                }
                Ok(())
            }
            Kind::Struct { fields, kinds } => {
                for (field, field_kind) in fields.iter().zip(kinds) {
                    match members
                        .iter()
                        .rev()
                        .find(|(k, _)| name_matches(field.name(), k))
                    {
                        Some((_, v)) => check_node(field_kind, field.is_nullable(), v, junk),
                        None => check_node(field_kind, field.is_nullable(), &Node::Null, junk),
                    }
                    .map_err(|e| format!(".{}{e}", field.name()))?;
                }
                Ok(())
            }
            Kind::String => Ok(()),
            _ => Err(format!(
                ": {}",
                mismatch(kind, Found::Object, Detail::WrongType)
            )),
        },
    }
}
