//! What the planner's unit tests share: sources, catalogs and parsed queries.

use eddy_catalog::{Catalog, Column, ColumnRole, Command, Source, SourceKind};
use eddy_common::types::SqlType;
use sqlparser::ast;
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

/// A JSON source `name` on topic `name` (lower case), KAFKA keys, one partition.
pub(crate) fn source(
    name: &str,
    kind: SourceKind,
    columns: &[(&str, SqlType, ColumnRole)],
) -> Source {
    let columns = columns
        .iter()
        .map(|(name, sql_type, role)| Column {
            name: (*name).into(),
            sql_type: sql_type.clone(),
            role: *role,
        })
        .collect();
    Source::json(name, kind, columns, 1)
}

/// A catalog of `sources`.
pub(crate) fn catalog_of(sources: impl IntoIterator<Item = Source>) -> Catalog {
    let mut catalog = Catalog::new();
    for source in sources {
        catalog
            .apply(Command::CreateSource {
                source,
                or_replace: false,
            })
            .expect("a new source");
    }
    catalog
}

/// `sql`, a query, parsed as is (no normalization: write names in upper case).
pub(crate) fn query(sql: &str) -> ast::Query {
    match Parser::parse_sql(&GenericDialect {}, sql)
        .expect("valid SQL")
        .remove(0)
    {
        ast::Statement::Query(query) => *query,
        other => panic!("not a query: {other}"),
    }
}
