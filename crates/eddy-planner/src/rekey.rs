//! Joins on an expression of a stream (`ON UCASE(o.customer) = c.id`, `ON o.address->zip =
//! z.code`): the stream is repartitioned by that expression before the join.
//!
//! A join needs its stream keyed by the join expression. When the expression is a column, the
//! engine's repartition writer is `SELECT * FROM s PARTITION BY col`. For any other expression
//! [`rekey_join_expression`] gives the writer `SELECT *, <expr> AS KSQL_COL_n FROM s PARTITION
//! BY <expr>` (the new key is named as ksqlDB names computed columns) and the statement with
//! the expression replaced by that key column in its `ON` condition, which the join then finds
//! keyed as it needs.

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{Column as PhysicalColumn, cast};
use eddy_catalog::{Catalog, ROWOFFSET, ROWPARTITION, Source};
use sqlparser::ast::{self, GroupByExpr, SelectItem, SetExpr, TableWithJoins};

use crate::plan::{PlanError, Stage, StreamingPlan, named_source, quoted};

/// A join statement whose stream side is to be keyed by an expression.
#[derive(Debug, Clone)]
pub struct ExpressionRekey {
    /// The stream side's name.
    pub stream: String,
    /// `SELECT *, <expr> AS <key> FROM stream [AS q]`, to run with `partition_by`.
    pub writer_query: ast::Query,
    pub partition_by: Vec<ast::Expr>,
    /// The statement, joining on `q.<key>` in place of the expression.
    pub rewritten: ast::Query,
}

/// The repartitioning that keys the stream side of the statement's (only) join by its join
/// expression, when that is an expression of the stream's columns other than a column; `right`
/// names the right side (the right stream of a stream-stream join).
pub fn rekey_join_expression(
    query: &ast::Query,
    right: bool,
    catalog: &Catalog,
) -> Result<Option<ExpressionRekey>, PlanError> {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return Ok(None);
    };
    let [from] = select.from.as_slice() else {
        return Ok(None);
    };
    let [join] = from.joins.as_slice() else {
        return Ok(None);
    };
    let Some(condition) = on_condition(&join.join_operator) else {
        return Ok(None);
    };
    let ast::Expr::BinaryOp {
        left: lhs,
        op: ast::BinaryOperator::Eq,
        right: rhs,
    } = condition
    else {
        return Ok(None);
    };
    let relation = if right {
        &join.relation
    } else {
        &from.relation
    };
    let Some((name, qualifier)) = named_source(relation) else {
        return Ok(None);
    };
    let source = catalog.require_source(&name)?;
    let expression = match (
        reads_only(lhs, source, &qualifier),
        reads_only(rhs, source, &qualifier),
    ) {
        (true, false) => lhs.as_ref(),
        (false, true) => rhs.as_ref(),
        _ => return Ok(None),
    };
    if matches!(
        expression,
        ast::Expr::Identifier(_) | ast::Expr::CompoundIdentifier(_)
    ) {
        return Ok(None);
    }
    let key = (0..)
        .map(|n| format!("KSQL_COL_{n}"))
        .find(|name| source.column(name).is_none())
        .unwrap_or_default();

    let mut writer_query = query.clone();
    writer_query.limit_clause = None;
    writer_query.order_by = None;
    let SetExpr::Select(writer) = writer_query.body.as_mut() else {
        return Ok(None);
    };
    writer.projection = vec![
        SelectItem::Wildcard(ast::WildcardAdditionalOptions::default()),
        SelectItem::ExprWithAlias {
            expr: expression.clone(),
            alias: quoted(&key),
        },
    ];
    writer.from = vec![TableWithJoins {
        relation: relation.clone(),
        joins: Vec::new(),
    }];
    writer.selection = None;
    writer.group_by = GroupByExpr::Expressions(Vec::new(), Vec::new());
    writer.having = None;
    writer.distinct = None;

    let mut rewritten = query.clone();
    let key_reference = ast::Expr::CompoundIdentifier(vec![quoted(&qualifier), quoted(&key)]);
    if let SetExpr::Select(select) = rewritten.body.as_mut()
        && let Some(join) = select
            .from
            .get_mut(0)
            .and_then(|from| from.joins.get_mut(0))
        && let Some(ast::Expr::BinaryOp { left, right, .. }) =
            on_condition_mut(&mut join.join_operator)
    {
        for operand in [left, right] {
            if operand.as_ref() == expression {
                **operand = key_reference.clone();
            }
        }
    }
    Ok(Some(ExpressionRekey {
        stream: source.name.clone(),
        writer_query,
        partition_by: vec![expression.clone()],
        rewritten,
    }))
}

fn on_condition(operator: &ast::JoinOperator) -> Option<&ast::Expr> {
    use ast::JoinOperator as Op;
    match operator {
        Op::Join(ast::JoinConstraint::On(e))
        | Op::Inner(ast::JoinConstraint::On(e))
        | Op::Left(ast::JoinConstraint::On(e))
        | Op::LeftOuter(ast::JoinConstraint::On(e))
        | Op::Right(ast::JoinConstraint::On(e))
        | Op::RightOuter(ast::JoinConstraint::On(e))
        | Op::FullOuter(ast::JoinConstraint::On(e)) => Some(e),
        _ => None,
    }
}

fn on_condition_mut(operator: &mut ast::JoinOperator) -> Option<&mut ast::Expr> {
    use ast::JoinOperator as Op;
    match operator {
        Op::Join(ast::JoinConstraint::On(e))
        | Op::Inner(ast::JoinConstraint::On(e))
        | Op::Left(ast::JoinConstraint::On(e))
        | Op::LeftOuter(ast::JoinConstraint::On(e))
        | Op::Right(ast::JoinConstraint::On(e))
        | Op::RightOuter(ast::JoinConstraint::On(e))
        | Op::FullOuter(ast::JoinConstraint::On(e)) => Some(e),
        _ => None,
    }
}

/// Whether `expr` reads columns, and only columns of `source` (named `qualifier` in the query).
fn reads_only(expr: &ast::Expr, source: &Source, qualifier: &str) -> bool {
    let mut reads = false;
    let mut other = false;
    let _ = ast::visit_expressions(expr, |e| {
        match e {
            ast::Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                [q, column] if q.value == qualifier || q.value == source.name => {
                    reads = true;
                    other |= source.column(&column.value).is_none();
                }
                _ => other = true,
            },
            ast::Expr::Identifier(column) => {
                reads = true;
                other |= source.column(&column.value).is_none();
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    reads && !other
}

/// The stages that re-key a stream in the task that reads it, in place of a repartition topic:
/// `writer` (a `PARTITION BY` of the stream, as the engine's repartition writer runs it) and
/// then a projection into the layout records of `repartitioned` decode into (the pseudo-columns,
/// the new key columns, the value columns). Each row keeps the partition and offset it was read
/// at, so errors and the processing log name where it came from. `None` when the writer's stages
/// do not keep every row in order (a filter or `EXPLODE`), so that only a repartition topic can
/// stand for it.
///
/// This is what a task does when its stream has one partition, like the side it joins: a
/// repartition topic of one partition would hold the same records in the same order, at the
/// cost of writing and reading each once more.
pub fn rekey_in_task(writer: &StreamingPlan, repartitioned: &Source) -> Option<Vec<Stage>> {
    if writer.aggregation.is_some() || writer.join.is_some() || writer.origin_numbering.is_some() {
        return None;
    }
    let read = writer.source.arrow_schema();
    let (mut partition_at, mut offset_at) = (
        read.index_of(ROWPARTITION).ok()?,
        read.index_of(ROWOFFSET).ok()?,
    );
    let partition_field = read.field(partition_at).as_ref().clone();
    let offset_field = read.field(offset_at).as_ref().clone();
    // Where the row's partition and offset are in the batch a stage reads: the stages below
    // carry them as their last two columns.
    let mut stages = Vec::with_capacity(writer.stages.len() + 1);
    for stage in &writer.stages {
        match stage {
            Stage::Select { indices } => {
                let mut carried = indices.clone();
                carried.extend([partition_at, offset_at]);
                (partition_at, offset_at) = (indices.len(), indices.len() + 1);
                stages.push(Stage::Select { indices: carried });
            }
            Stage::Project { exprs, schema } => {
                let mut carried = exprs.clone();
                carried.push(column_expr(CARRIED_PARTITION, partition_at));
                carried.push(column_expr(CARRIED_OFFSET, offset_at));
                let mut fields: Vec<Field> =
                    schema.fields().iter().map(|f| f.as_ref().clone()).collect();
                fields.push(partition_field.clone().with_name(CARRIED_PARTITION));
                fields.push(offset_field.clone().with_name(CARRIED_OFFSET));
                (partition_at, offset_at) = (exprs.len(), exprs.len() + 1);
                stages.push(Stage::Project {
                    exprs: carried,
                    schema: Arc::new(Schema::new(fields)),
                });
            }
            Stage::Filter(_) | Stage::Unnest { .. } => return None,
        }
    }
    // The writer's output, with the two carried columns after it.
    let output = &writer.output_schema;
    let mut fields: Vec<Field> = output.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(partition_field.with_name(CARRIED_PARTITION));
    fields.push(offset_field.with_name(CARRIED_OFFSET));
    let carried_schema = Schema::new(fields);
    let target = repartitioned.arrow_schema();
    let picked: Vec<usize> = [writer.rowtime_column, partition_at, offset_at]
        .into_iter()
        .chain(writer.key_columns.iter().copied())
        .chain(writer.value_columns.iter().copied())
        .collect();
    if picked.len() != target.fields().len() {
        return None;
    }
    let mut exprs = Vec::with_capacity(picked.len());
    for (index, field) in picked.into_iter().zip(target.fields()) {
        let name = carried_schema.field(index).name();
        let expr = column_expr(name, index);
        exprs.push(cast(expr, &carried_schema, field.data_type().clone()).ok()?);
    }
    stages.push(Stage::Project {
        exprs,
        schema: target,
    });
    Some(stages)
}

/// Names of the row's partition and offset as [`rekey_in_task`]'s stages carry them.
const CARRIED_PARTITION: &str = "__eddy_read_partition";
const CARRIED_OFFSET: &str = "__eddy_read_offset";

fn column_expr(name: &str, index: usize) -> Arc<dyn PhysicalExpr> {
    Arc::new(PhysicalColumn::new(name, index))
}

#[cfg(test)]
mod tests {
    use eddy_catalog::{ColumnRole, SourceKind};
    use eddy_common::types::SqlType;

    use super::*;
    use crate::test_support::{catalog_of, query, source};

    fn catalog() -> Catalog {
        use ColumnRole::{Key, Value};
        catalog_of([
            source(
                "ORDERS",
                SourceKind::Stream,
                &[
                    ("ID", SqlType::String, Key),
                    ("CUST", SqlType::String, Value),
                ],
            ),
            source(
                "CUSTOMERS",
                SourceKind::Table,
                &[
                    ("ID", SqlType::String, Key),
                    ("NAME", SqlType::String, Value),
                ],
            ),
        ])
    }

    #[test]
    fn an_expression_of_the_stream_becomes_its_key() {
        let rekey = rekey_join_expression(
            &query("SELECT O.ID, C.NAME FROM ORDERS O JOIN CUSTOMERS C ON C.ID = upper(O.CUST)"),
            false,
            &catalog(),
        )
        .unwrap()
        .expect("a rekey");
        assert_eq!(rekey.stream, "ORDERS");
        assert_eq!(
            rekey.writer_query.to_string(),
            r#"SELECT *, upper(O.CUST) AS "KSQL_COL_0" FROM ORDERS O"#
        );
        assert_eq!(rekey.partition_by[0].to_string(), "upper(O.CUST)");
        assert_eq!(
            rekey.rewritten.to_string(),
            r#"SELECT O.ID, C.NAME FROM ORDERS O JOIN CUSTOMERS C ON C.ID = "O"."KSQL_COL_0""#
        );
    }

    #[test]
    fn columns_and_mixed_expressions_are_left_alone() {
        for sql in [
            "SELECT O.ID FROM ORDERS O JOIN CUSTOMERS C ON O.CUST = C.ID",
            "SELECT O.ID FROM ORDERS O JOIN CUSTOMERS C ON concat(O.CUST, C.NAME) = C.ID",
            "SELECT O.ID FROM ORDERS O JOIN CUSTOMERS C ON upper(O.NOPE) = C.ID",
        ] {
            assert!(
                rekey_join_expression(&query(sql), false, &catalog())
                    .unwrap()
                    .is_none(),
                "{sql}"
            );
        }
    }

    /// The repartition writer `sql PARTITION BY CUST` of ORDERS, and ORDERS as its topic holds it.
    async fn writer_by_cust(sql: &str) -> (StreamingPlan, Source) {
        let catalog = catalog();
        let writer = crate::Planner::new()
            .plan_query(
                &query(sql),
                &[sqlparser::ast::Expr::Identifier("CUST".into())],
                &catalog,
            )
            .await
            .unwrap();
        let repartitioned = Source {
            columns: writer.sink_columns.clone(),
            ..writer.source.clone()
        };
        (writer, repartitioned)
    }

    /// A stream re-keyed in its task reads as the repartition topic would: the new key first,
    /// the values after it, each row with the time, partition and offset it was read at.
    #[tokio::test]
    async fn rekeying_in_the_task_gives_the_rows_the_repartition_topic_would() {
        use datafusion::arrow::array::{Int32Array, Int64Array, RecordBatch, StringArray};
        use datafusion::arrow::util::display::array_value_to_string;

        let (writer, repartitioned) = writer_by_cust("SELECT * FROM ORDERS").await;
        let stages = rekey_in_task(&writer, &repartitioned).expect("a projection only");
        let decoded = RecordBatch::try_new(
            writer.source.arrow_schema(),
            vec![
                Arc::new(Int64Array::from(vec![1000, 2000])),
                Arc::new(Int32Array::from(vec![0, 0])),
                Arc::new(Int64Array::from(vec![41, 42])),
                Arc::new(StringArray::from(vec!["o1", "o2"])),
                Arc::new(StringArray::from(vec![Some("c7"), None])),
            ],
        )
        .unwrap();
        let rekeyed = stages
            .iter()
            .try_fold(decoded, |batch, stage| stage.apply(batch))
            .unwrap();
        assert_eq!(rekeyed.schema(), repartitioned.arrow_schema());
        let rows: Vec<String> = (0..rekeyed.num_rows())
            .map(|row| {
                (0..rekeyed.num_columns())
                    .map(|c| array_value_to_string(rekeyed.column(c), row).unwrap())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        assert_eq!(rows, ["1000 0 41 c7 o1", "2000 0 42  o2"]);
    }

    /// A writer that drops rows cannot be run in place of the topic: the rows' offsets would
    /// no longer line up.
    #[tokio::test]
    async fn a_writer_that_filters_is_not_rekeyed_in_the_task() {
        let (writer, repartitioned) =
            writer_by_cust("SELECT * FROM ORDERS WHERE CUST <> 'x'").await;
        assert!(rekey_in_task(&writer, &repartitioned).is_none());
    }
}
