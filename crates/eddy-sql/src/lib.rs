//! The KSQL dialect of Eddy: statement AST and parser on top of sqlparser, with line/column
//! positions in errors.
//!
//! Eddy speaks ksqlDB's SQL: `CREATE STREAM`/`CREATE TABLE` with column lists and `WITH (...)`
//! properties, `CREATE ... AS SELECT`, `INSERT INTO`, `SELECT ... EMIT CHANGES`, `PARTITION BY`,
//! `SHOW`, `DESCRIBE`, `DROP`, `TERMINATE`, `EXPLAIN`, `PRINT`, `SET`/`UNSET`, plus Eddy's own
//! `PRODUCE` for feeding raw records in tests. The statements specific to KSQL are parsed here; the
//! queries inside them are parsed by sqlparser into its standard [`sqlparser::ast::Query`], so that
//! DataFusion can plan them unchanged.
//!
//! Identifiers follow ksqlDB's rules: unquoted identifiers are upper-cased, back-quoted ones keep
//! their case. In the returned AST every identifier is double-quoted, so downstream consumers must
//! not normalize again; function names are lower-cased (DataFusion's registry spelling).
//! `struct->field` is rewritten to `get_field(struct, 'FIELD')`.
//!
//! ```
//! use eddy_sql::{parse_statements, Statement};
//! let parsed = parse_statements("SELECT id, ucase(name) FROM users WHERE age > 21 EMIT CHANGES;")?;
//! let Statement::Select(select) = &parsed[0].statement else { unreachable!() };
//! assert_eq!(select.query.to_string(), r#"SELECT "ID", ucase("NAME") FROM "USERS" WHERE "AGE" > 21"#);
//! # Ok::<(), eddy_sql::ParseError>(())
//! ```

mod ast;
mod error;
mod lexer;
mod normalize;
mod parser;

pub use ast::{
    ColumnDef, ColumnKeyRole, Emit, ParsedStatement, Property, Select, ShowTarget, SourceKind,
    Statement,
};
pub use error::ParseError;
pub use lexer::is_complete;
pub use parser::{parse_expression, parse_statements};

#[cfg(test)]
mod tests;
