//! [`SourceLayout`]: the Arrow schema of a source's rows and where each column comes from.

use std::ops::Range;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};

use crate::error::{FormatError, RecordPart};
use crate::format::Format;
use crate::types::{Column, Kind, type_name};

/// Pseudo-column: the record's timestamp, `Timestamp(Millisecond, None)`, not null.
pub const ROWTIME: &str = "ROWTIME";
/// Pseudo-column: the record's partition, `Int32`, not null.
pub const ROWPARTITION: &str = "ROWPARTITION";
/// Pseudo-column: the record's offset, `Int64`, not null.
pub const ROWOFFSET: &str = "ROWOFFSET";

/// Number of pseudo-columns at the start of every source schema.
pub const PSEUDO_COLUMNS: usize = 3;

/// The three pseudo-column fields, in schema order.
pub fn pseudo_fields() -> [Field; PSEUDO_COLUMNS] {
    [
        // BIGINT epoch milliseconds, as in ksqlDB (`WHERE ROWTIME >= 1700000000000`).
        Field::new(ROWTIME, DataType::Int64, false),
        Field::new(ROWPARTITION, DataType::Int32, false),
        Field::new(ROWOFFSET, DataType::Int64, false),
    ]
}

/// The rows of a source: `ROWTIME, ROWPARTITION, ROWOFFSET`, then the key columns, then the value
/// columns, and the format of each part of the record.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceLayout {
    schema: SchemaRef,
    key_count: usize,
    key_format: Format,
    value_format: Format,
}

impl SourceLayout {
    /// Builds the schema from the key and value columns.
    ///
    /// ```
    /// use arrow::datatypes::{DataType, Field};
    /// use eddy_format::{Format, SourceLayout};
    /// let layout = SourceLayout::new(
    ///     vec![Field::new("ID", DataType::Utf8, true)],
    ///     vec![Field::new("QTY", DataType::Int32, true)],
    ///     Format::Kafka,
    ///     Format::JSON,
    /// ).unwrap();
    /// assert_eq!(layout.schema().fields().len(), 5);
    /// assert_eq!(layout.value_columns(), 4..5);
    /// ```
    pub fn new(
        key_fields: impl IntoIterator<Item = Field>,
        value_fields: impl IntoIterator<Item = Field>,
        key_format: Format,
        value_format: Format,
    ) -> Result<Self, FormatError> {
        let mut fields: Vec<Field> = pseudo_fields().into();
        fields.extend(key_fields);
        let key_count = fields.len() - PSEUDO_COLUMNS;
        fields.extend(value_fields);
        Self::from_schema(
            Arc::new(Schema::new(fields)),
            key_count,
            key_format,
            value_format,
        )
    }

    /// Takes a full schema whose first fields are the pseudo-columns, then `key_count` key columns,
    /// then the value columns.
    ///
    /// As in ksqlDB, a single key column in the JSON format is never wrapped in an object: the
    /// layout's [`key_format`](Self::key_format) is then `Json { wrap_single_value: false }`.
    pub fn from_schema(
        schema: SchemaRef,
        key_count: usize,
        key_format: Format,
        value_format: Format,
    ) -> Result<Self, FormatError> {
        let expected = pseudo_fields();
        for (i, want) in expected.iter().enumerate() {
            match schema.fields().get(i) {
                Some(f) if f.name() == want.name() && f.data_type() == want.data_type() => {}
                Some(f) => {
                    return Err(FormatError::InvalidLayout(format!(
                        "column {} is \"{}\" {}, expected pseudo-column \"{}\" {}",
                        i + 1,
                        f.name(),
                        f.data_type(),
                        want.name(),
                        want.data_type()
                    )));
                }
                None => {
                    return Err(FormatError::InvalidLayout(format!(
                        "schema has {} columns, expected at least the pseudo-columns ROWTIME, ROWPARTITION, ROWOFFSET",
                        schema.fields().len()
                    )));
                }
            }
        }
        if PSEUDO_COLUMNS + key_count > schema.fields().len() {
            return Err(FormatError::InvalidLayout(format!(
                "{key_count} key columns do not fit in a schema of {} columns",
                schema.fields().len()
            )));
        }
        // ksqlDB never wraps a single key column (it sets UNWRAP_SINGLES on every key format that
        // supports it): with KEY_FORMAT='JSON' and one key column the key is the bare JSON value,
        // e.g. `42`, not `{"ID":42}`. Several key columns are an object of fields.
        let key_format = match key_format {
            Format::Json { .. } if key_count == 1 => Format::Json {
                wrap_single_value: false,
            },
            other => other,
        };
        Ok(Self {
            schema,
            key_count,
            key_format,
            value_format,
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Indices in the schema of the key columns.
    pub fn key_columns(&self) -> Range<usize> {
        PSEUDO_COLUMNS..PSEUDO_COLUMNS + self.key_count
    }

    /// Indices in the schema of the value columns.
    pub fn value_columns(&self) -> Range<usize> {
        PSEUDO_COLUMNS + self.key_count..self.schema.fields().len()
    }

    pub fn key_fields(&self) -> &[FieldRef] {
        &self.schema.fields()[self.key_columns()]
    }

    pub fn value_fields(&self) -> &[FieldRef] {
        &self.schema.fields()[self.value_columns()]
    }

    pub fn key_format(&self) -> Format {
        self.key_format
    }

    pub fn value_format(&self) -> Format {
        self.value_format
    }
}

const ALL_TYPES: &str = "BOOLEAN, INT, BIGINT, DOUBLE, DECIMAL, STRING, BYTES, DATE, TIME, TIMESTAMP, ARRAY, MAP, STRUCT";
const KAFKA_TYPES: &str = "INT, BIGINT, DOUBLE, STRING, BYTES";
const DELIMITED_TYPES: &str =
    "BOOLEAN, INT, BIGINT, DOUBLE, DECIMAL, STRING, BYTES, DATE, TIME, TIMESTAMP";

/// Resolves the columns of one record part and checks that `format` can carry them.
pub(crate) fn resolve_columns(
    part: RecordPart,
    format: Format,
    fields: &[FieldRef],
) -> Result<Vec<Column>, FormatError> {
    let unsupported = |field: &FieldRef, supported| FormatError::UnsupportedType {
        part,
        column: field.name().clone(),
        type_name: type_name(field.data_type()),
        format: format.name(),
        supported,
    };
    let mut columns = Vec::with_capacity(fields.len());
    for field in fields {
        let kind =
            Kind::from_arrow(field.data_type()).ok_or_else(|| unsupported(field, ALL_TYPES))?;
        let ok = match format {
            Format::None | Format::Json { .. } => true,
            Format::Kafka => matches!(
                kind,
                Kind::Int | Kind::BigInt | Kind::Double | Kind::String | Kind::Bytes
            ),
            Format::Delimited { .. } => !kind.is_nested(),
        };
        if !ok {
            let supported = if format == Format::Kafka {
                KAFKA_TYPES
            } else {
                DELIMITED_TYPES
            };
            return Err(unsupported(field, supported));
        }
        columns.push(Column::new(field.name(), kind, field.is_nullable()));
    }
    match format {
        Format::None if !columns.is_empty() => Err(FormatError::ColumnCount {
            part,
            format: "NONE",
            max: "no columns",
            count: columns.len(),
            hint: "declare a format for them, e.g. KEY_FORMAT='KAFKA'",
        }),
        Format::Kafka if columns.len() > 1 => Err(FormatError::ColumnCount {
            part,
            format: "KAFKA",
            max: "at most one column",
            count: columns.len(),
            hint: "use the JSON or DELIMITED format for several columns",
        }),
        Format::Json {
            wrap_single_value: false,
        } if columns.len() != 1 => Err(FormatError::ColumnCount {
            part,
            format: "JSON",
            max: "exactly one column when WRAP_SINGLE_VALUE is false",
            count: columns.len(),
            hint: "remove WRAP_SINGLE_VALUE=false, or declare a single column",
        }),
        Format::Json { .. } => {
            for (i, a) in columns.iter().enumerate() {
                if let Some(b) = columns[..i].iter().find(|b| b.folded == a.folded) {
                    return Err(FormatError::AmbiguousColumns {
                        part,
                        first: b.name.clone(),
                        second: a.name.clone(),
                    });
                }
            }
            Ok(columns)
        }
        _ => Ok(columns),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_schema_without_pseudo_columns() {
        let schema = Arc::new(Schema::new(vec![Field::new("A", DataType::Int32, true)]));
        let err = SourceLayout::from_schema(schema, 0, Format::None, Format::JSON).unwrap_err();
        assert!(
            err.to_string()
                .contains("expected pseudo-column \"ROWTIME\""),
            "{err}"
        );
    }

    #[test]
    fn rejects_too_many_keys() {
        let schema = Arc::new(Schema::new(pseudo_fields().to_vec()));
        assert!(SourceLayout::from_schema(schema, 1, Format::Kafka, Format::JSON).is_err());
    }
}
