//! The statements of the KSQL dialect.
//!
//! Names of streams, tables and columns are already normalized: upper-cased unless they were
//! back-quoted. Queries are sqlparser ASTs with every identifier double-quoted.

use eddy_common::types::SqlType;
use eddy_common::window::{JoinWindow, WindowSpec};
use sqlparser::ast;

/// One statement of a script, with its own text (for the command topic and error messages).
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedStatement {
    pub statement: Statement,
    /// The statement's text as written, without the terminating `;`.
    pub sql: String,
    /// Line of the statement's first token, from 1.
    pub line: u64,
}

/// STREAM or TABLE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Stream,
    Table,
}

/// Whether a declared column lives in the record key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKeyRole {
    /// A value column.
    Value,
    /// `KEY`: a key column of a stream.
    Key,
    /// `PRIMARY KEY`: a key column of a table.
    PrimaryKey,
}

/// A column in `CREATE STREAM/TABLE name (...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDef {
    pub name: String,
    pub sql_type: SqlType,
    pub key: ColumnKeyRole,
}

/// One `NAME = value` of a `WITH (...)` clause. Names are upper-cased; values are the literal's
/// text (strings unquoted, numbers and booleans as written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    pub name: String,
    pub value: String,
}

/// How a query emits its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    /// `EMIT CHANGES`: every change as it happens.
    Changes,
    /// `EMIT FINAL`: one result per window, when it closes.
    Final,
}

/// A KSQL `SELECT`: a standard query plus the clauses standard SQL does not have.
#[derive(Debug, Clone, PartialEq)]
pub struct Select {
    /// The query without `PARTITION BY`, `WINDOW`, `WITHIN` and `EMIT` (its `LIMIT` stays in it).
    pub query: ast::Query,
    /// `PARTITION BY` expressions (the new key), empty when absent.
    pub partition_by: Vec<ast::Expr>,
    /// The `WINDOW` clause of a windowed aggregation.
    pub window: Option<WindowSpec>,
    /// The `WITHIN` clauses of stream-stream joins, by join: `within[i]` belongs to the i-th
    /// `JOIN` of the `FROM` clause (counting from 0); joins after the last `WITHIN` have none.
    pub within: Vec<Option<JoinWindow>>,
    pub emit: Option<Emit>,
}

impl Select {
    /// The `WITHIN` clause of the `join`-th join (0 is the first), if it has one.
    pub fn within_of(&self, join: usize) -> Option<JoinWindow> {
        self.within.get(join).copied().flatten()
    }
}

/// What `SHOW`/`LIST` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShowTarget {
    Streams,
    Tables,
    Topics,
    Queries,
    Properties,
}

/// A statement of the dialect.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// `CREATE [OR REPLACE] [SOURCE] STREAM|TABLE [IF NOT EXISTS] name (columns) WITH (...)`.
    CreateSource {
        kind: SourceKind,
        name: String,
        /// `SOURCE`: the stream or table is read-only (no `INSERT`, no `DROP ... DELETE TOPIC`).
        read_only: bool,
        or_replace: bool,
        if_not_exists: bool,
        columns: Vec<ColumnDef>,
        properties: Vec<Property>,
    },
    /// `CREATE [OR REPLACE] STREAM|TABLE [IF NOT EXISTS] name [WITH (...)] AS SELECT ...`.
    CreateSourceAs {
        kind: SourceKind,
        name: String,
        or_replace: bool,
        if_not_exists: bool,
        properties: Vec<Property>,
        select: Box<Select>,
    },
    /// `INSERT INTO name [WITH (QUERY_ID='id')] SELECT ...`.
    InsertSelect {
        target: String,
        properties: Vec<Property>,
        select: Box<Select>,
    },
    /// `INSERT INTO name [(columns)] VALUES (...)`.
    InsertValues {
        target: String,
        columns: Vec<String>,
        values: Vec<ast::Expr>,
    },
    /// `SELECT ...` (a push query with `EMIT CHANGES`).
    Select(Box<Select>),
    /// `SHOW|LIST STREAMS|TABLES|TOPICS|QUERIES|PROPERTIES [EXTENDED]`.
    Show { target: ShowTarget, extended: bool },
    /// `DESCRIBE [EXTENDED] name`.
    Describe { name: String, extended: bool },
    /// `DROP STREAM|TABLE [IF EXISTS] name [DELETE TOPIC]`.
    Drop {
        kind: SourceKind,
        name: String,
        if_exists: bool,
        delete_topic: bool,
    },
    /// `TERMINATE query_id` or `TERMINATE ALL` (`query_id` is `None`).
    Terminate { query_id: Option<String> },
    /// `EXPLAIN SELECT ...`.
    ExplainSelect(Box<Select>),
    /// `EXPLAIN query_id`.
    ExplainQuery { query_id: String },
    /// `PRINT topic [FROM BEGINNING] [INTERVAL n] [LIMIT n]`. The topic is as written (topic names
    /// are case-sensitive).
    Print {
        topic: String,
        from_beginning: bool,
        interval: Option<u64>,
        limit: Option<u64>,
    },
    /// `SET 'name' = 'value'`.
    Set { name: String, value: String },
    /// `UNSET 'name'`.
    Unset { name: String },
    /// Eddy's `PRODUCE TO topic [PARTITION n] [KEY 'k'|NULL] VALUE 'v'|NULL [TIMESTAMP ms]`: one
    /// raw record with exactly these bytes, e.g. to feed malformed input in tests.
    Produce {
        topic: String,
        partition: Option<i32>,
        key: Option<String>,
        value: Option<String>,
        timestamp_ms: Option<i64>,
    },
    /// `RUN SCRIPT 'file.sql'`: a command of the interactive shell, which reads the file and
    /// executes its statements; a server refuses it (its files are not the client's).
    RunScript { path: String },
}

impl Statement {
    /// The select of statements that run a query.
    pub fn select(&self) -> Option<&Select> {
        match self {
            Statement::CreateSourceAs { select, .. }
            | Statement::InsertSelect { select, .. }
            | Statement::Select(select)
            | Statement::ExplainSelect(select) => Some(select),
            _ => None,
        }
    }
}
