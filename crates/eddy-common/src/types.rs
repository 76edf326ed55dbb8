//! The SQL type system (ksqlDB's types) and its Arrow mapping.
//! (Interim version; the full grammar-aware implementation replaces it.)

use std::fmt;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, TimeUnit};
use serde::{Deserialize, Serialize};

/// A ksqlDB SQL type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SqlType {
    Boolean,
    Int,
    BigInt,
    Double,
    Decimal { precision: u8, scale: i8 },
    String,
    Bytes,
    Date,
    Time,
    Timestamp,
    Array(Box<SqlType>),
    Map(Box<SqlType>, Box<SqlType>),
    Struct(Vec<(String, SqlType)>),
}

impl SqlType {
    pub fn to_arrow(&self) -> DataType {
        match self {
            SqlType::Boolean => DataType::Boolean,
            SqlType::Int => DataType::Int32,
            SqlType::BigInt => DataType::Int64,
            SqlType::Double => DataType::Float64,
            SqlType::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
            SqlType::String => DataType::Utf8,
            SqlType::Bytes => DataType::Binary,
            SqlType::Date => DataType::Date32,
            SqlType::Time => DataType::Time32(TimeUnit::Millisecond),
            SqlType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, None),
            SqlType::Array(item) => {
                DataType::List(Arc::new(Field::new("item", item.to_arrow(), true)))
            }
            SqlType::Map(key, value) => DataType::Map(
                Arc::new(Field::new(
                    "entries",
                    DataType::Struct(Fields::from(vec![
                        Field::new("key", key.to_arrow(), false),
                        Field::new("value", value.to_arrow(), true),
                    ])),
                    false,
                )),
                false,
            ),
            SqlType::Struct(fields) => DataType::Struct(Fields::from(
                fields
                    .iter()
                    .map(|(name, t)| Field::new(name, t.to_arrow(), true))
                    .collect::<Vec<_>>(),
            )),
        }
    }

    pub fn from_arrow(data_type: &DataType) -> Option<SqlType> {
        Some(match data_type {
            DataType::Boolean => SqlType::Boolean,
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::UInt8
            | DataType::UInt16 => SqlType::Int,
            DataType::Int64 | DataType::UInt32 => SqlType::BigInt,
            DataType::Float16 | DataType::Float32 | DataType::Float64 => SqlType::Double,
            DataType::Decimal128(p, s) => SqlType::Decimal {
                precision: *p,
                scale: *s,
            },
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => SqlType::String,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => SqlType::Bytes,
            DataType::Date32 | DataType::Date64 => SqlType::Date,
            DataType::Time32(_) | DataType::Time64(_) => SqlType::Time,
            DataType::Timestamp(_, _) => SqlType::Timestamp,
            DataType::List(f) | DataType::LargeList(f) => {
                SqlType::Array(Box::new(SqlType::from_arrow(f.data_type())?))
            }
            DataType::Map(entries, _) => match entries.data_type() {
                DataType::Struct(fields) if fields.len() == 2 => SqlType::Map(
                    Box::new(SqlType::from_arrow(fields[0].data_type())?),
                    Box::new(SqlType::from_arrow(fields[1].data_type())?),
                ),
                _ => return None,
            },
            DataType::Struct(fields) => SqlType::Struct(
                fields
                    .iter()
                    .map(|f| SqlType::from_arrow(f.data_type()).map(|t| (f.name().clone(), t)))
                    .collect::<Option<Vec<_>>>()?,
            ),
            _ => return None,
        })
    }
}

impl fmt::Display for SqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlType::Boolean => write!(f, "BOOLEAN"),
            SqlType::Int => write!(f, "INTEGER"),
            SqlType::BigInt => write!(f, "BIGINT"),
            SqlType::Double => write!(f, "DOUBLE"),
            SqlType::Decimal { precision, scale } => write!(f, "DECIMAL({precision}, {scale})"),
            SqlType::String => write!(f, "STRING"),
            SqlType::Bytes => write!(f, "BYTES"),
            SqlType::Date => write!(f, "DATE"),
            SqlType::Time => write!(f, "TIME"),
            SqlType::Timestamp => write!(f, "TIMESTAMP"),
            SqlType::Array(item) => write!(f, "ARRAY<{item}>"),
            SqlType::Map(k, v) => write!(f, "MAP<{k}, {v}>"),
            SqlType::Struct(fields) => {
                write!(f, "STRUCT<")?;
                for (i, (name, t)) in fields.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "`{name}` {t}")?;
                }
                write!(f, ">")
            }
        }
    }
}
