//! Streams and tables: a named schema over a Kafka topic.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use eddy_common::types::SqlType;
use serde::{Deserialize, Serialize};

/// Pseudo-column: the record's timestamp (event time), epoch milliseconds.
pub const ROWTIME: &str = "ROWTIME";
/// Pseudo-column: the Kafka partition the record was read from.
pub const ROWPARTITION: &str = "ROWPARTITION";
/// Pseudo-column: the Kafka offset of the record.
pub const ROWOFFSET: &str = "ROWOFFSET";
/// The pseudo-columns every source has, in the order they lead its Arrow schema.
pub const PSEUDO_COLUMNS: [&str; 3] = [ROWTIME, ROWPARTITION, ROWOFFSET];

/// A stream is an append-only log of facts; a table holds the latest value per primary key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceKind {
    Stream,
    Table,
}

impl SourceKind {
    /// `STREAM` or `TABLE`, as the user writes it.
    pub fn keyword(self) -> &'static str {
        match self {
            SourceKind::Stream => "STREAM",
            SourceKind::Table => "TABLE",
        }
    }

    /// `stream` or `table`, as error messages say it.
    pub fn noun(self) -> &'static str {
        match self {
            SourceKind::Stream => "stream",
            SourceKind::Table => "table",
        }
    }
}

/// Whether a column is stored in the Kafka record's key or value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColumnRole {
    /// `KEY` of a stream.
    Key,
    /// `PRIMARY KEY` of a table.
    PrimaryKey,
    /// A column of the record value.
    Value,
}

/// One declared column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub sql_type: SqlType,
    pub role: ColumnRole,
}

impl Column {
    pub fn is_key(&self) -> bool {
        !matches!(self.role, ColumnRole::Value)
    }
}

/// A stream or table: columns over a topic, with the formats of its keys and values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// Normalized name (unquoted names are upper case).
    pub name: String,
    pub kind: SourceKind,
    /// Key columns first, then value columns, in declaration order within each group.
    pub columns: Vec<Column>,
    /// Logical topic name (without the engine's topic prefix).
    pub topic: String,
    /// Key format name as declared (`KAFKA`, `JSON`, `DELIMITED`, `NONE`).
    pub key_format: String,
    /// Value format name as declared.
    pub value_format: String,
    /// Delimiter of the `DELIMITED` format.
    pub value_delimiter: Option<char>,
    /// `WRAP_SINGLE_VALUE` for single-column values.
    pub wrap_single_value: Option<bool>,
    /// Column holding the event time instead of the record timestamp (`TIMESTAMP='col'`).
    pub timestamp_column: Option<String>,
    /// Format of a string `TIMESTAMP` column (`TIMESTAMP_FORMAT`).
    pub timestamp_format: Option<String>,
    /// Partitions of the topic when the source was created.
    pub partitions: i32,
    /// The persistent query that writes this source, when it was created `AS SELECT`.
    pub written_by: Option<String>,
    /// The statement that created the source.
    pub sql: String,
    /// A stream whose records a built-in connector generates instead of a Kafka topic
    /// (`CONNECTOR='nexmark'`); it has no topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<Generator>,
    /// The window of a table made by a windowed aggregation: its key is (key columns, window),
    /// its records carry windowed keys, and it has the pseudo-columns `WINDOWSTART` and `WINDOWEND`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<eddy_common::window::WindowSpec>,
    /// Created with `CREATE SOURCE STREAM|TABLE`: read-only, so `INSERT` into it and
    /// `DROP ... DELETE TOPIC` of it are refused (its topic belongs to someone else).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// A built-in source of generated records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generator {
    /// The connector: `nexmark`.
    pub connector: String,
    /// Which events: `bid`, `auction` or `person`.
    pub event_type: String,
    /// Events generated per second; `None` generates as fast as the query takes them.
    pub events_per_second: Option<u64>,
    /// Events generated in all; `None` generates without end.
    pub max_events: Option<u64>,
}

impl Source {
    /// A source as `CREATE STREAM|TABLE name (columns) WITH (VALUE_FORMAT='JSON',
    /// PARTITIONS=partitions)` declares it: on topic `name` in lower case, with KAFKA keys and
    /// nothing else set. `columns` must list the key columns first.
    pub fn json(name: &str, kind: SourceKind, columns: Vec<Column>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            kind,
            columns,
            topic: name.to_lowercase(),
            key_format: "KAFKA".into(),
            value_format: "JSON".into(),
            value_delimiter: None,
            wrap_single_value: None,
            timestamp_column: None,
            timestamp_format: None,
            partitions,
            written_by: None,
            sql: String::new(),
            generator: None,
            window: None,
            read_only: false,
        }
    }

    pub fn key_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.is_key())
    }

    pub fn value_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| !c.is_key())
    }

    /// Finds a column by exact (already normalized) name.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The Arrow schema records of this source decode into: the pseudo-columns, then the key
    /// columns, then the value columns.
    pub fn arrow_schema(&self) -> SchemaRef {
        let mut fields = Vec::with_capacity(self.columns.len() + PSEUDO_COLUMNS.len());
        fields.push(Field::new(ROWTIME, DataType::Int64, false));
        fields.push(Field::new(ROWPARTITION, DataType::Int32, false));
        fields.push(Field::new(ROWOFFSET, DataType::Int64, false));
        for column in self.key_columns().chain(self.value_columns()) {
            fields.push(Field::new(&column.name, column.sql_type.to_arrow(), true));
        }
        Arc::new(Schema::new(fields))
    }

    /// Index in [`Source::arrow_schema`] of the first key column.
    pub fn first_key_index(&self) -> usize {
        PSEUDO_COLUMNS.len()
    }

    /// Number of key columns.
    pub fn key_count(&self) -> usize {
        self.key_columns().count()
    }
}
