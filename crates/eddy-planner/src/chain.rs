//! Statements with more than one join, and aggregations over a join, as chains of steps.
//!
//! The runtime joins two sources at a time, and aggregates one. A statement
//! `FROM a JOIN b ON .. JOIN c ON ..` therefore runs as a chain, as in ksqlDB: a *join step*
//! joins `a` and `b` and writes the columns of both that the rest reads (and their keys) to an
//! internal topic, and the rest of the statement reads that output in their place. The output is a source named `A JOIN B` (the
//! sides' qualifiers) whose columns are named as `SELECT *` over a join names them (`A_X`,
//! `B_Y`), and the statement is rewritten to read it: `a.x` and an unqualified `x` of `a` become
//! `"A JOIN B"."A_X"`, `*` and `a.*` become those columns under their usual names. An
//! aggregation over a join is split the same way, its join becoming the step.
//!
//! ```text
//!  FROM a JOIN b ON a.k = b.k JOIN c ON b.ck = c.id      step 1: SELECT a.k AS A_K, ..., b.ck AS B_CK
//!                                                               FROM a JOIN b ON a.k = b.k
//!                                                       rest:   FROM "A JOIN B" JOIN c
//!                                                               ON "A JOIN B".B_CK = c.id
//! ```
//!
//! The engine plans and starts the steps (each one an ordinary two-source join, repartitioned
//! when its inputs are not co-partitioned) and the rewritten statement over their outputs.

use std::{collections::HashSet, ops::ControlFlow};

use eddy_catalog::{Catalog, PSEUDO_COLUMNS, Source};
use sqlparser::ast::{
    self, GroupByExpr, Ident, ObjectName, SelectItem, SelectItemQualifiedWildcardKind, SetExpr,
    TableFactor,
};

use crate::plan::{
    PlanError, closest_name, joined_table, named_source, object_name_to_string, quoted,
};

/// One source a join step reads, as the statement names it.
#[derive(Debug, Clone)]
struct StepSide {
    source: Source,
    /// The alias, or the source's name.
    qualifier: String,
    /// The output of an earlier step: its columns keep their names in the next step's output.
    step_output: bool,
}

impl StepSide {
    /// Whether `qualifier` (of `qualifier.column`) names this side.
    fn is_named(&self, qualifier: &str) -> bool {
        self.qualifier == qualifier || self.source.name == qualifier
    }

    /// The name of this side's column `column` in the step's output.
    fn output_column(&self, column: &str) -> String {
        if self.step_output {
            column.to_owned()
        } else {
            format!("{}_{column}", self.qualifier)
        }
    }

    /// This side's key and value columns, as `(name in the side, name in the step's output)`.
    fn columns(&self) -> impl Iterator<Item = (&str, String)> {
        self.source
            .key_columns()
            .chain(self.source.value_columns())
            .map(|c| (c.name.as_str(), self.output_column(&c.name)))
    }
}

/// The first join of a statement that must run as a step of its own.
#[derive(Debug, Clone)]
pub struct JoinStep {
    /// `SELECT a.k AS A_K, ..., b.y AS B_Y FROM a JOIN b ON ...`: every column of both sides,
    /// until [`Self::keep_only_columns_read_by`] drops those the rest does not read.
    pub query: ast::Query,
    /// Name of the step's output in the rewritten statement (`A JOIN B`).
    pub output_name: String,
    sides: [StepSide; 2],
    /// The sources joined after this step, with their qualifiers.
    later: Vec<(Source, String)>,
}

/// The first join of `query` as a step, when the statement cannot run as one query: it joins
/// more than two sources, or aggregates a join. `step_outputs` names the sources of `catalog`
/// that are outputs of earlier steps.
pub fn first_join_step(
    query: &ast::Query,
    catalog: &Catalog,
    step_outputs: &[String],
) -> Result<Option<JoinStep>, PlanError> {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return Ok(None);
    };
    let [from] = select.from.as_slice() else {
        return Ok(None);
    };
    let grouped =
        matches!(&select.group_by, GroupByExpr::Expressions(exprs, _) if !exprs.is_empty());
    let Some(first_join) = from.joins.first() else {
        return Ok(None);
    };
    if from.joins.len() < 2 && !grouped {
        return Ok(None);
    }
    // A subquery on the left is the planner's to refuse.
    let Some((left_name, left_qualifier)) = named_source(&from.relation) else {
        return Ok(None);
    };
    let left = StepSide {
        source: catalog.require_source(&left_name)?.clone(),
        step_output: step_outputs.contains(&left_name),
        qualifier: left_qualifier,
    };
    let (right_source, right_qualifier) = joined_table(first_join, catalog)?;
    let right = StepSide {
        source: right_source,
        qualifier: right_qualifier,
        step_output: false,
    };
    if left.qualifier == right.qualifier {
        return Err(PlanError::Invalid(format!(
            "\"{}\" names two sources of the join\nhint: give one of them an alias: FROM {} AS x JOIN ...",
            left.qualifier, left.source.name
        )));
    }
    let later = from.joins[1..]
        .iter()
        .map(|join| joined_table(join, catalog))
        .collect::<Result<Vec<_>, _>>()?;

    let mut step_query = query.clone();
    step_query.limit_clause = None;
    step_query.order_by = None;
    let SetExpr::Select(step_select) = step_query.body.as_mut() else {
        return Ok(None);
    };
    step_select.projection = [&left, &right]
        .into_iter()
        .flat_map(|side| {
            side.columns()
                .map(|(column, output)| SelectItem::ExprWithAlias {
                    expr: ast::Expr::CompoundIdentifier(vec![
                        quoted(&side.qualifier),
                        quoted(column),
                    ]),
                    alias: quoted(&output),
                })
        })
        .collect();
    step_select.from[0].joins.truncate(1);
    step_select.selection = None;
    step_select.group_by = GroupByExpr::Expressions(Vec::new(), Vec::new());
    step_select.having = None;
    step_select.distinct = None;
    let output_name = format!("{} JOIN {}", left.qualifier, right.qualifier);
    Ok(Some(JoinStep {
        query: step_query,
        output_name,
        sides: [left, right],
        later,
    }))
}

impl JoinStep {
    /// The names of the sources this step reads that are not outputs of earlier steps.
    pub fn user_sources(&self) -> impl Iterator<Item = &str> {
        self.sides
            .iter()
            .filter(|side| !side.step_output)
            .map(|side| side.source.name.as_str())
    }

    /// Drops from the step's output the value columns that `rest` (this step's [`Self::rewrite`]
    /// of the statement) and its `partition_by` never read. A join stores the rows of both sides
    /// as it outputs them, in its state and its changelog, so a column nobody reads costs a write
    /// per row (Nexmark's q4 wrote every bid's `extra` padding to its join's changelog). The key
    /// columns and timestamp column of both sides, and the columns of the join's `ON`, stay.
    pub fn keep_only_columns_read_by(&mut self, rest: &ast::Query, partition_by: &[ast::Expr]) {
        let mut read: HashSet<String> = HashSet::new();
        let mut note_read = |expr: &ast::Expr| {
            if let ast::Expr::CompoundIdentifier(parts) = expr
                && let [qualifier, column] = parts.as_slice()
                && qualifier.value == self.output_name
            {
                read.insert(column.value.clone());
            }
            ControlFlow::<()>::Continue(())
        };
        let _ = ast::visit_expressions(rest, &mut note_read);
        for expr in partition_by {
            let _ = ast::visit_expressions(expr, &mut note_read);
        }
        for side in &self.sides {
            let kept = side
                .source
                .key_columns()
                .map(|column| column.name.as_str())
                .chain(side.source.timestamp_column.as_deref());
            read.extend(kept.map(|column| side.output_column(column)));
        }
        let SetExpr::Select(select) = self.query.body.as_mut() else {
            return;
        };
        // The ON clause: every expression of the step but its projection.
        let projection = std::mem::take(&mut select.projection);
        let mut on_columns = Vec::new();
        let _ = ast::visit_expressions(&self.query, |expr| {
            let parts = match expr {
                ast::Expr::CompoundIdentifier(parts) => parts.as_slice(),
                ast::Expr::Identifier(ident) => std::slice::from_ref(ident),
                _ => return ControlFlow::<()>::Continue(()),
            };
            if let Ok(Some(output)) = self.resolve(parts) {
                on_columns.push(output);
            }
            ControlFlow::Continue(())
        });
        read.extend(on_columns);
        let SetExpr::Select(select) = self.query.body.as_mut() else {
            return;
        };
        select.projection = projection
            .into_iter()
            .filter(|item| match item {
                SelectItem::ExprWithAlias { alias, .. } => read.contains(&alias.value),
                _ => true,
            })
            .collect();
    }

    /// `query` (and its `PARTITION BY` expressions) rewritten to read this step's output in
    /// place of its two sides.
    pub fn rewrite(
        &self,
        query: &ast::Query,
        partition_by: &[ast::Expr],
    ) -> Result<(ast::Query, Vec<ast::Expr>), PlanError> {
        let mut query = query.clone();
        let SetExpr::Select(select) = query.body.as_mut() else {
            return Err(PlanError::Invalid(
                "internal error: a join step over a query that is not a SELECT".into(),
            ));
        };
        select.projection = self.rewrite_projection(std::mem::take(&mut select.projection))?;
        let from = &mut select.from[0];
        from.relation = TableFactor::Table {
            name: ObjectName::from(vec![quoted(&self.output_name)]),
            alias: None,
            args: None,
            with_hints: Vec::new(),
            version: None,
            with_ordinality: false,
            partitions: Vec::new(),
            json_path: None,
            sample: None,
            index_hints: Vec::new(),
        };
        from.joins.remove(0);
        let mut failure = None;
        let _ = ast::visit_expressions_mut(&mut query, |expr| match self.rewrite_reference(expr) {
            Ok(()) => ControlFlow::Continue(()),
            Err(error) => {
                failure = Some(error);
                ControlFlow::Break(())
            }
        });
        let mut partition_by = partition_by.to_vec();
        for expr in &mut partition_by {
            let _ = ast::visit_expressions_mut(expr, |expr| match self.rewrite_reference(expr) {
                Ok(()) => ControlFlow::Continue(()),
                Err(error) => {
                    failure.get_or_insert(error);
                    ControlFlow::Break(())
                }
            });
        }
        match failure {
            Some(error) => Err(error),
            None => Ok((query, partition_by)),
        }
    }

    /// `*` and `a.*` become the step output's columns under the names they have in the output;
    /// a bare column of a side keeps its name (`a.x` is still named `X`).
    fn rewrite_projection(
        &self,
        projection: Vec<SelectItem>,
    ) -> Result<Vec<SelectItem>, PlanError> {
        let output_columns = |side: &StepSide| -> Vec<SelectItem> {
            side.columns()
                .map(|(_, output)| SelectItem::ExprWithAlias {
                    expr: self.output_reference(&output),
                    alias: quoted(&output),
                })
                .collect()
        };
        let mut rewritten = Vec::with_capacity(projection.len());
        for item in projection {
            match item {
                SelectItem::Wildcard(_) => {
                    rewritten.extend(self.sides.iter().flat_map(output_columns));
                    for (_, qualifier) in &self.later {
                        rewritten.push(SelectItem::QualifiedWildcard(
                            SelectItemQualifiedWildcardKind::ObjectName(ObjectName::from(vec![
                                quoted(qualifier),
                            ])),
                            ast::WildcardAdditionalOptions::default(),
                        ));
                    }
                }
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(name),
                    _,
                ) if self
                    .sides
                    .iter()
                    .any(|side| side.is_named(&object_name_to_string(&name))) =>
                {
                    let name = object_name_to_string(&name);
                    for side in self.sides.iter().filter(|side| side.is_named(&name)) {
                        rewritten.extend(output_columns(side));
                    }
                }
                SelectItem::UnnamedExpr(ast::Expr::Identifier(ident))
                    if self.resolve(std::slice::from_ref(&ident))?.is_some() =>
                {
                    rewritten.push(SelectItem::ExprWithAlias {
                        alias: ident.clone(),
                        expr: ast::Expr::Identifier(ident),
                    });
                }
                SelectItem::UnnamedExpr(ast::Expr::CompoundIdentifier(parts))
                    if self.resolve(&parts)?.is_some() =>
                {
                    let alias = parts.last().cloned().unwrap_or_else(|| Ident::new(""));
                    rewritten.push(SelectItem::ExprWithAlias {
                        alias,
                        expr: ast::Expr::CompoundIdentifier(parts),
                    });
                }
                other => rewritten.push(other),
            }
        }
        Ok(rewritten)
    }

    fn output_reference(&self, column: &str) -> ast::Expr {
        ast::Expr::CompoundIdentifier(vec![quoted(&self.output_name), quoted(column)])
    }

    /// Replaces a reference to a column of a side by the output's column.
    fn rewrite_reference(&self, expr: &mut ast::Expr) -> Result<(), PlanError> {
        let resolved = match &*expr {
            ast::Expr::Identifier(ident) => self.resolve(std::slice::from_ref(ident))?,
            ast::Expr::CompoundIdentifier(parts) => self.resolve(parts)?,
            _ => None,
        };
        if let Some(column) = resolved {
            *expr = self.output_reference(&column);
        }
        Ok(())
    }

    /// The output column a reference (`x` or `q.x`) reads, if it reads a side of this step.
    fn resolve(&self, parts: &[Ident]) -> Result<Option<String>, PlanError> {
        match parts {
            [qualifier, column] => {
                let Some(side) = self.sides.iter().find(|s| s.is_named(&qualifier.value)) else {
                    return Ok(None);
                };
                if PSEUDO_COLUMNS.contains(&column.value.as_str()) {
                    return Ok(Some(column.value.clone()));
                }
                match side.source.column(&column.value) {
                    Some(found) => Ok(Some(side.output_column(&found.name))),
                    None => Err(PlanError::UnknownColumn {
                        column: column.value.clone(),
                        kind: side.source.kind.noun(),
                        source_name: side.source.name.clone(),
                        suggestion: closest_name(
                            &column.value,
                            side.source.columns.iter().map(|c| c.name.as_str()),
                        ),
                    }),
                }
            }
            [column] => {
                if PSEUDO_COLUMNS.contains(&column.value.as_str()) {
                    return Ok(None);
                }
                let has = |source: &Source| source.column(&column.value).is_some();
                let mut owners: Vec<&str> = self
                    .sides
                    .iter()
                    .filter(|side| has(&side.source))
                    .map(|side| side.qualifier.as_str())
                    .collect();
                let in_sides = owners.len();
                owners.extend(
                    self.later
                        .iter()
                        .filter(|(source, _)| has(source))
                        .map(|(_, qualifier)| qualifier.as_str()),
                );
                match owners.as_slice() {
                    [] => Ok(None),
                    [_] if in_sides == 1 => {
                        let side = self
                            .sides
                            .iter()
                            .find(|side| has(&side.source))
                            .ok_or_else(|| {
                                PlanError::Invalid("internal error: lost a side".into())
                            })?;
                        Ok(Some(side.output_column(&column.value)))
                    }
                    [_] => Ok(None),
                    several => Err(PlanError::Invalid(format!(
                        "column reference \"{}\" is ambiguous: {} have it\nhint: qualify it: {}",
                        column.value,
                        several.join(", "),
                        several
                            .iter()
                            .map(|q| format!("{q}.{}", column.value))
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ))),
                }
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use eddy_catalog::{ColumnRole, SourceKind};
    use eddy_common::types::SqlType;

    use super::*;
    use crate::test_support::{catalog_of, query, source};

    /// Stream `ORDERS (ID KEY, CID, IID, QTY)`, tables `CUSTOMERS (ID, NAME)` and
    /// `ITEMS (ID, PRICE, NAME)`.
    fn catalog() -> Catalog {
        use ColumnRole::{Key, Value};
        catalog_of([
            source(
                "ORDERS",
                SourceKind::Stream,
                &[
                    ("ID", SqlType::String, Key),
                    ("CID", SqlType::String, Value),
                    ("IID", SqlType::String, Value),
                    ("QTY", SqlType::Int, Value),
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
            source(
                "ITEMS",
                SourceKind::Table,
                &[
                    ("ID", SqlType::String, Key),
                    ("PRICE", SqlType::Int, Value),
                    ("NAME", SqlType::String, Value),
                ],
            ),
        ])
    }

    fn step(sql: &str) -> Result<Option<JoinStep>, PlanError> {
        first_join_step(&query(sql), &catalog(), &[])
    }

    const THREE_WAY: &str = "FROM ORDERS O JOIN CUSTOMERS C ON O.CID = C.ID \
                             JOIN ITEMS I ON O.IID = I.ID";

    #[test]
    fn one_join_without_group_by_is_not_split() {
        assert!(
            step("SELECT * FROM ORDERS O JOIN CUSTOMERS C ON O.CID = C.ID")
                .unwrap()
                .is_none()
        );
        assert!(
            step("SELECT ID, COUNT(*) FROM ORDERS GROUP BY ID")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn the_first_join_becomes_a_step_with_every_column_of_both_sides() {
        let step = step(&format!("SELECT O.ID, I.PRICE {THREE_WAY} WHERE O.QTY > 1"))
            .unwrap()
            .expect("a step");
        assert_eq!(step.output_name, "O JOIN C");
        assert_eq!(
            step.query.to_string(),
            r#"SELECT "O"."ID" AS "O_ID", "O"."CID" AS "O_CID", "O"."IID" AS "O_IID", "O"."QTY" AS "O_QTY", "C"."ID" AS "C_ID", "C"."NAME" AS "C_NAME" FROM ORDERS O JOIN CUSTOMERS C ON O.CID = C.ID"#
        );
        assert_eq!(
            step.user_sources().collect::<Vec<_>>(),
            ["ORDERS", "CUSTOMERS"]
        );
    }

    /// The step of `sql`, pruned to what the rest of `sql` reads.
    fn pruned_step(sql: &str) -> String {
        let mut step = step(sql).unwrap().expect("a step");
        let (rest, partition_by) = step.rewrite(&query(sql), &[]).unwrap();
        step.keep_only_columns_read_by(&rest, &partition_by);
        step.query.to_string()
    }

    #[test]
    fn the_step_outputs_only_the_columns_the_rest_reads_and_its_keys() {
        // O.ID: key; O.CID: ON; O.IID: the later join's ON; O.QTY: WHERE; C.ID: key and ON.
        // C.NAME is read by nothing after the step.
        assert_eq!(
            pruned_step(&format!("SELECT O.ID, I.PRICE {THREE_WAY} WHERE O.QTY > 1")),
            r#"SELECT "O"."ID" AS "O_ID", "O"."CID" AS "O_CID", "O"."IID" AS "O_IID", "O"."QTY" AS "O_QTY", "C"."ID" AS "C_ID" FROM ORDERS O JOIN CUSTOMERS C ON O.CID = C.ID"#
        );
        // A wildcard reads every column of its sides.
        assert_eq!(
            pruned_step(&format!("SELECT C.*, I.PRICE {THREE_WAY}")),
            r#"SELECT "O"."ID" AS "O_ID", "O"."CID" AS "O_CID", "O"."IID" AS "O_IID", "C"."ID" AS "C_ID", "C"."NAME" AS "C_NAME" FROM ORDERS O JOIN CUSTOMERS C ON O.CID = C.ID"#
        );
    }

    #[test]
    fn the_rest_reads_the_step_output_and_keeps_its_column_names() {
        let step = step(&format!(
            "SELECT O.ID, QTY * I.PRICE AS TOTAL, I.NAME AS ITEM, C.* {THREE_WAY} WHERE O.QTY > 1"
        ))
        .unwrap()
        .expect("a step");
        let partition_by = [ast::Expr::Identifier(Ident::new("CID"))];
        let (rewritten, partition_by) = step
            .rewrite(
                &query(&format!(
                    "SELECT O.ID, QTY * I.PRICE AS TOTAL, I.NAME AS ITEM, C.* {THREE_WAY} WHERE O.QTY > 1"
                )),
                &partition_by,
            )
            .unwrap();
        assert_eq!(
            rewritten.to_string(),
            r#"SELECT "O JOIN C"."O_ID" AS ID, "O JOIN C"."O_QTY" * I.PRICE AS TOTAL, I.NAME AS ITEM, "O JOIN C"."C_ID" AS "C_ID", "O JOIN C"."C_NAME" AS "C_NAME" FROM "O JOIN C" JOIN ITEMS I ON "O JOIN C"."O_IID" = I.ID WHERE "O JOIN C"."O_QTY" > 1"#
        );
        assert_eq!(partition_by[0].to_string(), r#""O JOIN C"."O_CID""#);
    }

    #[test]
    fn star_lists_the_step_columns_then_the_later_sources() {
        let sql = format!("SELECT * {THREE_WAY}");
        let step = step(&sql).unwrap().expect("a step");
        let (rewritten, _) = step.rewrite(&query(&sql), &[]).unwrap();
        let text = rewritten.to_string();
        assert!(
            text.starts_with(r#"SELECT "O JOIN C"."O_ID" AS "O_ID", "#),
            "{text}"
        );
        assert!(
            text.contains(r#""O JOIN C"."C_NAME" AS "C_NAME", "I".* FROM"#),
            "{text}"
        );
    }

    #[test]
    fn an_aggregation_over_one_join_is_split() {
        let sql = "SELECT C.NAME, COUNT(*) FROM ORDERS O JOIN CUSTOMERS C ON O.CID = C.ID GROUP BY C.NAME";
        let step = step(sql).unwrap().expect("a step");
        let (rewritten, _) = step.rewrite(&query(sql), &[]).unwrap();
        assert_eq!(
            rewritten.to_string(),
            r#"SELECT "O JOIN C"."C_NAME" AS NAME, COUNT(*) FROM "O JOIN C" GROUP BY "O JOIN C"."C_NAME""#
        );
    }

    #[test]
    fn bad_references_are_named() {
        // NAME is a column of CUSTOMERS and of ITEMS.
        let sql = format!("SELECT NAME {THREE_WAY}");
        let first = step(&sql).unwrap().expect("a step");
        let error = first.rewrite(&query(&sql), &[]).unwrap_err().to_string();
        assert!(
            error.starts_with(r#"column reference "NAME" is ambiguous: C, I have it"#),
            "{error}"
        );
        assert!(
            error.contains("hint: qualify it: C.NAME or I.NAME"),
            "{error}"
        );
        let sql = format!("SELECT C.NAMEE {THREE_WAY}");
        let first = step(&sql).unwrap().expect("a step");
        let error = first.rewrite(&query(&sql), &[]).unwrap_err().to_string();
        assert_eq!(
            error,
            r#"column "NAMEE" not found in table "CUSTOMERS"; did you mean "NAME"?"#
        );
        let error = step(
            "SELECT * FROM ORDERS O JOIN ORDERS O ON O.ID = O.ID JOIN ITEMS I ON O.IID = I.ID",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("\"O\" names two sources of the join"),
            "{error}"
        );
    }
}
