//! What the runtime's unit tests share: sources and the plans of queries over them.

use datafusion::sql::sqlparser::ast;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use eddy_catalog::{Catalog, Column, ColumnRole, Command, Source, SourceKind};
use eddy_common::types::SqlType;
use eddy_planner::{Clauses, Planner, StreamingPlan};

/// A JSON source `name` on topic `name` (lower case), KAFKA keys, of `partitions` partitions.
pub(crate) fn source(
    name: &str,
    kind: SourceKind,
    columns: &[(&str, SqlType, ColumnRole)],
    partitions: i32,
) -> Source {
    let columns = columns
        .iter()
        .map(|(name, sql_type, role)| Column {
            name: (*name).into(),
            sql_type: sql_type.clone(),
            role: *role,
        })
        .collect();
    Source::json(name, kind, columns, partitions)
}

/// The plan of the query `sql` (names in upper case and quoted: it is not normalized) over a
/// catalog of `sources`.
pub(crate) async fn plan(
    sql: &str,
    sources: impl IntoIterator<Item = Source>,
    clauses: Clauses<'_>,
) -> StreamingPlan {
    let mut catalog = Catalog::new();
    for source in sources {
        catalog
            .apply(Command::CreateSource {
                source,
                or_replace: false,
            })
            .expect("a new source");
    }
    let query = match Parser::parse_sql(&GenericDialect {}, sql)
        .expect("valid SQL")
        .remove(0)
    {
        ast::Statement::Query(query) => *query,
        other => panic!("not a query: {other}"),
    };
    Planner::new()
        .plan_select(&query, clauses, &catalog)
        .await
        .expect("a plan")
}
