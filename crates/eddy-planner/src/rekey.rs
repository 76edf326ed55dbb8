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

use eddy_catalog::{Catalog, Source};
use sqlparser::ast::{self, GroupByExpr, SelectItem, SetExpr, TableWithJoins};

use crate::plan::{PlanError, named_source, quoted};

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
}
