//! [`Kind`]: the SQL types this crate reads and writes, resolved once from Arrow data types so that
//! the per-record code matches on a small enum instead of inspecting `DataType`s.

use std::fmt;

use arrow::datatypes::{DataType, FieldRef, Fields, TimeUnit};

/// Milliseconds in a day: the exclusive upper bound of a TIME value.
pub(crate) const MS_PER_DAY: i32 = 86_400_000;

/// A SQL type with its Arrow representation fixed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    /// `Boolean`
    Boolean,
    /// `Int32`
    Int,
    /// `Int64`
    BigInt,
    /// `Float64`
    Double,
    /// `Decimal128(precision, scale)` with `0 <= scale <= precision <= 38`.
    Decimal { precision: u8, scale: i8 },
    /// `Utf8`
    String,
    /// `Binary`
    Bytes,
    /// `Date32`: days since the epoch.
    Date,
    /// `Time32(Millisecond)`: milliseconds since midnight.
    Time,
    /// `Timestamp(Millisecond, None)`: milliseconds since the epoch.
    Timestamp,
    /// `List(item)`
    Array { item: FieldRef, kind: Box<Kind> },
    /// `Map(entries: Struct<key not null, value>, unsorted)`
    Map {
        entries: FieldRef,
        key: Box<Kind>,
        value: Box<Kind>,
        value_nullable: bool,
    },
    /// `Struct(fields)` with at least one field.
    Struct { fields: Fields, kinds: Vec<Kind> },
}

impl Kind {
    /// The kind for an Arrow type, or `None` if this crate does not support it.
    pub(crate) fn from_arrow(data_type: &DataType) -> Option<Kind> {
        Some(match data_type {
            DataType::Boolean => Kind::Boolean,
            DataType::Int32 => Kind::Int,
            DataType::Int64 => Kind::BigInt,
            DataType::Float64 => Kind::Double,
            DataType::Decimal128(p, s) if *s >= 0 && (*s as u8) <= *p && *p >= 1 && *p <= 38 => {
                Kind::Decimal {
                    precision: *p,
                    scale: *s,
                }
            }
            DataType::Utf8 => Kind::String,
            DataType::Binary => Kind::Bytes,
            DataType::Date32 => Kind::Date,
            DataType::Time32(TimeUnit::Millisecond) => Kind::Time,
            DataType::Timestamp(TimeUnit::Millisecond, None) => Kind::Timestamp,
            DataType::List(item) => Kind::Array {
                item: item.clone(),
                kind: Box::new(Kind::from_arrow(item.data_type())?),
            },
            DataType::Map(entries, false) if !entries.is_nullable() => match entries.data_type() {
                DataType::Struct(kv) if kv.len() == 2 && !kv[0].is_nullable() => Kind::Map {
                    entries: entries.clone(),
                    key: Box::new(Kind::from_arrow(kv[0].data_type())?),
                    value: Box::new(Kind::from_arrow(kv[1].data_type())?),
                    value_nullable: kv[1].is_nullable(),
                },
                _ => return None,
            },
            DataType::Struct(fields) if !fields.is_empty() => Kind::Struct {
                fields: fields.clone(),
                kinds: fields
                    .iter()
                    .map(|f| Kind::from_arrow(f.data_type()))
                    .collect::<Option<Vec<_>>>()?,
            },
            _ => return None,
        })
    }

    pub(crate) fn is_nested(&self) -> bool {
        matches!(
            self,
            Kind::Array { .. } | Kind::Map { .. } | Kind::Struct { .. }
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Boolean => f.write_str("BOOLEAN"),
            Kind::Int => f.write_str("INT"),
            Kind::BigInt => f.write_str("BIGINT"),
            Kind::Double => f.write_str("DOUBLE"),
            Kind::Decimal { precision, scale } => write!(f, "DECIMAL({precision}, {scale})"),
            Kind::String => f.write_str("STRING"),
            Kind::Bytes => f.write_str("BYTES"),
            Kind::Date => f.write_str("DATE"),
            Kind::Time => f.write_str("TIME"),
            Kind::Timestamp => f.write_str("TIMESTAMP"),
            Kind::Array { kind, .. } => write!(f, "ARRAY<{kind}>"),
            Kind::Map { key, value, .. } => write!(f, "MAP<{key}, {value}>"),
            Kind::Struct { fields, kinds } => {
                f.write_str("STRUCT<")?;
                for (i, (field, kind)) in fields.iter().zip(kinds).enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "`{}` {kind}", field.name())?;
                }
                f.write_str(">")
            }
        }
    }
}

/// Displays an Arrow type the way users wrote it if it maps to SQL, else Arrow's own spelling.
pub(crate) fn type_name(data_type: &DataType) -> String {
    match Kind::from_arrow(data_type) {
        Some(kind) => kind.to_string(),
        None => format!("{data_type} (not a supported SQL type)"),
    }
}

/// One column of a record part, resolved for decoding and encoding.
#[derive(Debug, Clone)]
pub(crate) struct Column {
    /// The name exactly as in the schema.
    pub name: String,
    /// `name` lowercased with Unicode rules, for matching non-ASCII JSON field names.
    pub folded: String,
    pub kind: Kind,
    pub nullable: bool,
}

impl Column {
    pub(crate) fn new(name: &str, kind: Kind, nullable: bool) -> Self {
        Self {
            name: name.to_string(),
            folded: name.to_lowercase(),
            kind,
            nullable,
        }
    }

    /// Whether a JSON field name refers to this column (case-insensitive, no allocation for ASCII).
    /// The usual lowercase JSON name is compared whole first.
    #[inline]
    pub(crate) fn matches(&self, key: &str) -> bool {
        if key == self.folded
            || (key.len() == self.name.len() && key.eq_ignore_ascii_case(&self.name))
        {
            return true;
        }
        !key.is_ascii() && key.to_lowercase() == self.folded
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::Field;

    use super::*;

    #[test]
    fn names() {
        let map = DataType::Map(
            Arc::new(Field::new(
                "entries",
                DataType::Struct(Fields::from(vec![
                    Field::new("key", DataType::Utf8, false),
                    Field::new("value", DataType::Int32, true),
                ])),
                false,
            )),
            false,
        );
        assert_eq!(type_name(&map), "MAP<STRING, INT>");
        assert_eq!(type_name(&DataType::Decimal128(5, 2)), "DECIMAL(5, 2)");
        assert!(type_name(&DataType::UInt8).contains("not a supported"));
        assert!(Kind::from_arrow(&DataType::Decimal128(2, 3)).is_none());
    }

    #[test]
    fn column_matching() {
        let c = Column::new("QTY", Kind::Int, true);
        assert!(c.matches("qty"));
        assert!(c.matches("Qty"));
        assert!(!c.matches("qt"));
        let c = Column::new("ÉTÉ", Kind::Int, true);
        assert!(c.matches("été"));
    }
}
