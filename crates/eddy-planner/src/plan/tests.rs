use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, UInt32Array,
};
use eddy_catalog::{Catalog, ColumnRole, Source, SourceKind};
use eddy_common::types::SqlType;
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use super::*;
use crate::aggregate::AggregateCall;
use crate::test_support::{catalog_of, query, source};

fn orders() -> Source {
    source(
        "ORDERS",
        SourceKind::Stream,
        &[
            ("ID", SqlType::String, ColumnRole::Key),
            ("ITEM", SqlType::String, ColumnRole::Value),
            ("QTY", SqlType::Int, ColumnRole::Value),
        ],
    )
}

/// `ORDER_STATE`: the same columns as `ORDERS`, as a table keyed by `ID`.
fn order_state() -> Source {
    Source {
        name: "ORDER_STATE".into(),
        kind: SourceKind::Table,
        topic: "order_state".into(),
        ..orders()
    }
}

fn catalog() -> Catalog {
    catalog_of([orders(), order_state()])
}

fn expr(sql: &str) -> ast::Expr {
    Parser::new(&GenericDialect {})
        .try_with_sql(sql)
        .unwrap()
        .parse_expr()
        .unwrap()
}

fn input_batch() -> RecordBatch {
    let source = orders();
    RecordBatch::try_new(
        source.arrow_schema(),
        vec![
            Arc::new(Int64Array::from(vec![1000, 2000, 3000])),
            Arc::new(Int32Array::from(vec![0, 0, 1])),
            Arc::new(Int64Array::from(vec![10, 11, 12])),
            Arc::new(StringArray::from(vec!["a", "b", "c"])),
            Arc::new(StringArray::from(vec![Some("apple"), None, Some("pear")])),
            Arc::new(Int32Array::from(vec![Some(1), Some(5), None])),
        ],
    )
    .unwrap()
}

async fn plan(sql: &str, partition_by: &[&str]) -> Result<StreamingPlan, PlanError> {
    let partition_by: Vec<ast::Expr> = partition_by.iter().map(|e| expr(e)).collect();
    Planner::new()
        .plan_query(&query(sql), &partition_by, &catalog())
        .await
}

fn names(plan: &StreamingPlan, indices: &[usize]) -> Vec<String> {
    indices
        .iter()
        .map(|&i| plan.output_schema.field(i).name().clone())
        .collect()
}

#[tokio::test]
async fn star_means_key_and_value_columns_and_keeps_the_key() {
    let plan = plan(r#"SELECT * FROM "ORDERS""#, &[]).await.unwrap();
    assert_eq!(names(&plan, &plan.key_columns), ["ID"]);
    assert_eq!(names(&plan, &plan.value_columns), ["ITEM", "QTY"]);
    let out = plan.process(input_batch()).unwrap();
    assert_eq!(out.num_rows(), 3);
    let rowtime = out.column(plan.rowtime_column);
    assert_eq!(rowtime.len(), 3);
}

#[tokio::test]
async fn filter_and_functions_run_over_batches() {
    let plan = plan(
        r#"SELECT "ID", ucase("ITEM") AS "UP", "QTY" * 2 AS "DOUBLE_QTY" FROM "ORDERS" WHERE "QTY" > 1"#,
        &[],
    )
    .await
    .unwrap();
    let out = plan.process(input_batch()).unwrap();
    assert_eq!(
        out.num_rows(),
        1,
        "only QTY=5 passes; NULL QTY is filtered out"
    );
    let up = out
        .column(out.schema().index_of("UP").unwrap())
        .as_string::<i32>();
    assert!(up.is_null(0));
    let doubled = out.column(out.schema().index_of("DOUBLE_QTY").unwrap());
    let doubled = datafusion::arrow::compute::cast(doubled, &DataType::Int64).unwrap();
    assert_eq!(
        doubled
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .value(0),
        10
    );
    assert_eq!(
        plan.sink_columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["ID", "UP", "DOUBLE_QTY"]
    );
    assert_eq!(plan.sink_columns[0].role, ColumnRole::Key);
}

#[tokio::test]
async fn a_projection_without_the_key_has_no_key() {
    let plan = plan(r#"SELECT "ITEM" FROM "ORDERS""#, &[]).await.unwrap();
    assert!(plan.key_columns.is_empty());
    assert_eq!(names(&plan, &plan.value_columns), ["ITEM"]);
}

#[tokio::test]
async fn partition_by_moves_the_column_to_the_key() {
    let plan = plan(r#"SELECT "ITEM", "QTY" FROM "ORDERS""#, &[r#""ITEM""#])
        .await
        .unwrap();
    assert_eq!(plan.sink_columns[0].name, "ITEM");
    assert_eq!(plan.sink_columns[0].role, ColumnRole::Key);
    assert_eq!(names(&plan, &plan.value_columns), ["QTY"]);
    let out = plan.process(input_batch()).unwrap();
    let key = out.column(plan.key_columns[0]).as_string::<i32>();
    assert_eq!(key.value(0), "apple");
}

#[tokio::test]
async fn partition_by_an_expression_names_the_key_ksql_col() {
    let plan = plan(r#"SELECT "QTY" FROM "ORDERS""#, &[r#"lcase("ID")"#])
        .await
        .unwrap();
    assert_eq!(plan.sink_columns[0].name, "KSQL_COL_0");
}

#[tokio::test]
async fn partition_by_an_aliased_projection_names_the_key_after_the_alias() {
    let plan = plan(
        r#"SELECT lcase("ID") AS "LID", "QTY" FROM "ORDERS""#,
        &[r#"lcase("ID")"#],
    )
    .await
    .unwrap();
    let names: Vec<(&str, bool)> = plan
        .sink_columns
        .iter()
        .map(|c| (c.name.as_str(), c.is_key()))
        .collect();
    assert_eq!(names, [("LID", true), ("QTY", false)]);
}

#[tokio::test]
async fn unknown_columns_suggest_the_closest() {
    let err = plan(r#"SELECT "QTYY" FROM "ORDERS""#, &[])
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "column \"QTYY\" not found in stream \"ORDERS\"; did you mean \"QTY\"?"
    );
}

#[tokio::test]
async fn unknown_sources_are_reported() {
    let err = plan(r#"SELECT * FROM "ORDER""#, &[]).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "stream or table \"ORDER\" does not exist; did you mean \"ORDERS\"?"
    );
}

async fn plan_within(sql: &str, within: Option<JoinWindow>) -> Result<StreamingPlan, PlanError> {
    Planner::new()
        .plan_select(
            &query(sql),
            Clauses {
                within,
                ..Clauses::default()
            },
            &catalog(),
        )
        .await
}

#[tokio::test]
async fn a_stream_stream_join_needs_within_and_runs_both_sides_stages() {
    let within = JoinWindow::new(1000, 1000, Some(0)).unwrap();
    let sql = r#"SELECT a."ID", a."QTY", b."ITEM", b."ID" AS "B_ID" FROM "ORDERS" a FULL OUTER JOIN "ORDERS" b ON a."ID" = b."ID" WHERE a."QTY" IS NULL OR a."QTY" > 0"#;
    let err = plan_within(sql, None).await.unwrap_err();
    assert!(err.to_string().contains("needs a time window"), "{err}");
    let plan = plan_within(sql, Some(within)).await.unwrap();
    let join = plan.join.as_ref().expect("a join");
    let stream_join = join.stream_join.as_ref().expect("a stream-stream join");
    assert_eq!(join.kind, crate::JoinKind::Full);
    assert_eq!(stream_join.window, within);
    assert_eq!(names(&plan, &plan.key_columns), ["ID"]);
    // The later record's event time is the result's.
    assert!(
        plan.logical_plan
            .display_indent()
            .to_string()
            .contains("greatest")
    );

    // Left rows a, b, c (the plan's stages) and right rows (the right stages) with their times.
    let left = plan.process(input_batch()).unwrap();
    let right = join.right_stream_rows(input_batch()).unwrap();
    // The stored rows' schemas: the stages' output, nullable (stored rows decode into them).
    let types = |schema: &SchemaRef| {
        schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(types(&left.schema()), types(&stream_join.left_row_schema));
    assert_eq!(types(&right.schema()), types(&join.table_row_schema));
    let time = |batch: &RecordBatch, column: usize| {
        batch
            .column(column)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .value(2)
    };
    assert_eq!(time(&left, stream_join.left_time_column), 3000);
    assert_eq!(time(&right, stream_join.right_time_column), 3000);
    let keys = join.right_stream_keys(&right).unwrap();
    assert_eq!(keys[0].as_string::<i32>().value(1), "b");
    // Pairs (a, a), (b alone), (alone, c): the result's key is the join key, never NULL, while
    // the other side's key column of a row alone is NULL, as in ksqlDB.
    let left_index = UInt32Array::from(vec![Some(0), Some(1), None]);
    let right_index = UInt32Array::from(vec![Some(0), None, Some(2)]);
    let pair_keys: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "c"]));
    let out = join
        .join_streams(
            &left,
            &left_index,
            &right,
            &right_index,
            &[pair_keys],
            &plan.key_columns,
        )
        .unwrap();
    let right_id = out
        .column(plan.output_schema.index_of("B_ID").unwrap())
        .as_string::<i32>();
    assert_eq!(right_id.value(0), "a");
    assert!(right_id.is_null(1), "the right side of a left row alone");
    assert_eq!(right_id.value(2), "c");
    let id = out
        .column(plan.output_schema.index_of("ID").unwrap())
        .as_string::<i32>();
    let item = out
        .column(plan.output_schema.index_of("ITEM").unwrap())
        .as_string::<i32>();
    assert_eq!(
        out.num_rows(),
        3,
        "QTY NULL passes the WHERE for the right-only row"
    );
    assert_eq!((id.value(0), id.value(1), id.value(2)), ("a", "b", "c"));
    assert_eq!(item.value(0), "apple");
    assert!(item.is_null(1));
    assert_eq!(item.value(2), "pear");
    let rowtime = out
        .column(plan.rowtime_column)
        .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
    assert_eq!(
        (rowtime.value(0), rowtime.value(1), rowtime.value(2)),
        (1000, 2000, 3000)
    );
}

#[tokio::test]
async fn joins_of_the_wrong_kinds_of_sources_are_refused_with_the_right_form() {
    let within = JoinWindow::new(1000, 1000, None).unwrap();
    // Each refused query, and what its error must say.
    let refusals = [
        (
            r#"SELECT s."ID" FROM "ORDER_STATE" s JOIN "ORDERS" o ON s."ID" = o."ID""#,
            None,
            "a stream joins a table, not the reverse",
        ),
        (
            r#"SELECT o."ID" FROM "ORDERS" o JOIN "ORDER_STATE" s ON o."ID" = s."ID""#,
            Some(within),
            "WITHIN belongs to a join of two streams",
        ),
        (
            r#"SELECT "ID" FROM "ORDERS""#,
            Some(within),
            "WITHIN belongs to a join of two streams",
        ),
        // The right stream must be keyed by its join column (the left one is repartitioned).
        (
            r#"SELECT a."ID" FROM "ORDERS" a JOIN "ORDERS" b ON a."ID" = b."ITEM""#,
            Some(within),
            "\"ORDERS\" is not keyed by its join expression ITEM",
        ),
    ];
    for (sql, within, expected) in refusals {
        let err = plan_within(sql, within).await.unwrap_err();
        assert!(err.to_string().contains(expected), "{sql}: {err}");
    }
    let err = plan_within(
        r#"SELECT a."ID" FROM "ORDERS" a JOIN "ORDERS" b ON a."ITEM" = b."ID""#,
        Some(within),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, PlanError::JoinNotCoPartitioned { repartition_by: Some(c), .. } if c == "ITEM"),
        "{err}"
    );
}

#[tokio::test]
async fn a_stream_table_join_looks_up_the_table_by_key_and_projects_both_sides() {
    let plan = plan(
        r#"SELECT o."ID", o."QTY", s."ITEM" AS "CURRENT_ITEM" FROM "ORDERS" o LEFT JOIN "ORDER_STATE" s ON o."ID" = s."ID" WHERE s."QTY" IS NULL OR s."QTY" > 1"#,
        &[],
    )
    .await
    .unwrap();
    let join = plan.join.as_ref().expect("a join");
    assert_eq!(join.kind, crate::JoinKind::Left);
    assert_eq!(join.table.name, "ORDER_STATE");
    assert_eq!(names(&plan, &plan.key_columns), ["ID"]);
    assert_eq!(names(&plan, &plan.value_columns), ["QTY", "CURRENT_ITEM"]);

    // The table side: rows as the store keeps them (the table stages' output).
    let (table_rows, present) = join.table_rows(input_batch()).unwrap();
    assert_eq!(table_rows.schema(), join.table_row_schema);
    assert_eq!(
        present.true_count(),
        3,
        "no table-side filter in a LEFT JOIN"
    );

    // Stream rows a, b, c; a joins table row 2, b none, c table row 0.
    let stream = plan.process(input_batch()).unwrap();
    let keys = join.stream_keys(&stream).unwrap();
    assert_eq!(keys.len(), 1);
    let matches = UInt32Array::from(vec![Some(2), None, Some(0)]);
    let out = join.join(&stream, &table_rows, &matches).unwrap();
    let item = out
        .column(plan.output_schema.index_of("CURRENT_ITEM").unwrap())
        .as_string::<i32>();
    // a meets "pear" (QTY NULL passes), b meets nothing (NULL passes), c meets "apple" whose
    // QTY 1 fails the WHERE over the joined row.
    assert_eq!(out.num_rows(), 2);
    assert_eq!(item.value(0), "pear");
    assert!(item.is_null(1));

    // An inner join drops the unmatched row.
    let inner = self::plan(
        r#"SELECT o."ID", s."ITEM" FROM "ORDERS" o JOIN "ORDER_STATE" s ON o."ID" = s."ID""#,
        &[],
    )
    .await
    .unwrap();
    let join = inner.join.as_ref().unwrap();
    let stream = inner.process(input_batch()).unwrap();
    let (table_rows, _) = join.table_rows(input_batch()).unwrap();
    let out = join.join(&stream, &table_rows, &matches).unwrap();
    assert_eq!(out.num_rows(), 2);
}

#[tokio::test]
async fn an_inner_join_filter_on_the_table_marks_table_rows_absent() {
    let plan = plan(
        r#"SELECT o."ID", s."ITEM" FROM "ORDERS" o JOIN "ORDER_STATE" s ON o."ID" = s."ID" WHERE s."QTY" > 1"#,
        &[],
    )
    .await
    .unwrap();
    let join = plan.join.as_ref().unwrap();
    let (rows, present) = join.table_rows(input_batch()).unwrap();
    assert_eq!(rows.num_rows(), 3, "rows are kept, marked");
    let present: Vec<bool> = (0..3)
        .map(|i| present.is_valid(i) && present.value(i))
        .collect();
    assert_eq!(present, [false, true, false]);
}

#[tokio::test]
async fn limit_is_taken_out_of_the_query() {
    let plan = plan(r#"SELECT * FROM "ORDERS" LIMIT 3"#, &[])
        .await
        .unwrap();
    assert_eq!(plan.limit, Some(3));
}

#[tokio::test]
async fn constant_rows_evaluate() {
    let batch = Planner::new()
        .evaluate_row(&[expr("1 + 2"), expr("'x'"), expr("NULL")])
        .await
        .unwrap();
    assert_eq!(batch.num_rows(), 1);
    assert_eq!(batch.num_columns(), 3);
}

#[tokio::test]
async fn explain_shows_both_plans() {
    let plan = plan(r#"SELECT "ID" FROM "ORDERS" WHERE "QTY" > 1"#, &[])
        .await
        .unwrap();
    let text = plan.explain();
    assert!(
        text.contains("Logical plan:")
            && text.contains("Streaming plan:")
            && text.contains("Filter"),
        "{text}"
    );
}

#[tokio::test]
async fn one_planner_plans_the_same_source_many_times_concurrently() {
    let planner = Planner::new();
    let catalog = catalog();
    let first = query(r#"SELECT "ID" FROM "ORDERS""#);
    let second = query(r#"SELECT "ITEM" FROM "ORDERS" WHERE "QTY" > 1"#);
    let (a, b) = tokio::join!(
        planner.plan_query(&first, &[], &catalog),
        planner.plan_query(&second, &[], &catalog)
    );
    a.unwrap();
    b.unwrap();
    planner.plan_query(&first, &[], &catalog).await.unwrap();
}

#[tokio::test]
async fn output_columns_are_named_as_in_ksqldb() {
    let plan = plan(
        r#"SELECT "ID", "QTY" + 1, ucase("ITEM"), "QTY" AS "KSQL_COL_1", "QTY" * 2 FROM "ORDERS""#,
        &[],
    )
    .await
    .unwrap();
    let columns: Vec<(&str, String)> = plan
        .sink_columns
        .iter()
        .map(|c| (c.name.as_str(), c.sql_type.to_string()))
        .collect();
    assert_eq!(
        columns,
        [
            ("ID", "STRING".to_owned()),
            ("KSQL_COL_0", "INTEGER".to_owned()),
            ("KSQL_COL_2", "STRING".to_owned()),
            ("KSQL_COL_1", "INTEGER".to_owned()),
            ("KSQL_COL_3", "INTEGER".to_owned()),
        ],
        "INT + 1 stays INT; generated names skip taken ones"
    );
}

#[tokio::test]
async fn a_column_produced_twice_is_an_error_with_a_hint() {
    let err = plan(r#"SELECT "ITEM", "ITEM" FROM "ORDERS""#, &[])
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the query produces column \"ITEM\" twice\nhint: give one of them another name with AS"
    );
}

#[tokio::test]
async fn rowtime_is_bigint_milliseconds() {
    let plan = plan(
        r#"SELECT "ID", "ROWTIME" FROM "ORDERS" WHERE "ROWTIME" >= 2000"#,
        &[],
    )
    .await
    .unwrap();
    let out = plan.process(input_batch()).unwrap();
    assert_eq!(out.num_rows(), 2);
    assert_eq!(plan.sink_columns[1].sql_type.to_string(), "BIGINT");
}

#[tokio::test]
async fn group_by_a_value_column_is_repartitioned_and_keyed_by_it() {
    let plan = plan(
        r#"SELECT "ITEM", count(*) AS "N", sum("QTY") AS "TOTAL", avg("QTY") AS "MEAN" FROM "ORDERS" GROUP BY "ITEM""#,
        &[],
    )
    .await
    .unwrap();
    let aggregation = plan.aggregation.as_ref().expect("an aggregation");
    assert!(aggregation.repartition, "ITEM is not the source key");
    assert!(!aggregation.retractable, "a stream is never retracted");
    assert_eq!(aggregation.group_count, 1);
    assert_eq!(names(&plan, &plan.key_columns), ["ITEM"]);
    assert_eq!(names(&plan, &plan.value_columns), ["N", "TOTAL", "MEAN"]);
    // ksqlDB's result types: COUNT is BIGINT, SUM(INT) stays INT, AVG is DOUBLE.
    let types: Vec<String> = plan
        .sink_columns
        .iter()
        .map(|c| c.sql_type.to_string())
        .collect();
    assert_eq!(types, ["STRING", "BIGINT", "INTEGER", "DOUBLE"]);
    let functions: Vec<&str> = aggregation
        .calls
        .iter()
        .map(|c| c.function.as_str())
        .collect();
    assert!(functions.contains(&"count_star"), "{functions:?}");
    // The stages produce the aggregation input: the group key first.
    let input = plan.process(input_batch()).unwrap();
    assert_eq!(input.schema(), aggregation.input_schema);
    assert_eq!(input.num_rows(), 3);
}

#[tokio::test]
async fn group_by_the_source_key_is_not_repartitioned() {
    let plan = plan(
        r#"SELECT "ID", max("QTY") AS "BIGGEST" FROM "ORDERS" GROUP BY "ID""#,
        &[],
    )
    .await
    .unwrap();
    assert!(!plan.aggregation.as_ref().unwrap().repartition);
}

#[tokio::test]
async fn an_aggregation_over_a_table_is_split_with_signed_rows() {
    // Even grouped by the table's own key: the writer must remember each key's row.
    let plan = plan(
        r#"SELECT "ID", sum("QTY") AS "TOTAL" FROM "ORDER_STATE" GROUP BY "ID""#,
        &[],
    )
    .await
    .unwrap();
    let aggregation = plan.aggregation.as_ref().expect("an aggregation");
    assert!(aggregation.retractable && aggregation.repartition);
    let columns = plan.repartition_columns().unwrap();
    let last = columns.last().unwrap();
    assert_eq!(last.name, crate::SIGN_COLUMN);
    assert_eq!(last.role, ColumnRole::Value);
    let mut internal = orders();
    internal.columns = columns;
    let (writer, reader) = plan.split_for_repartition(internal.clone()).unwrap();
    // The writer's rows are the aggregation input plus SIGN = +1.
    let written = writer.process(input_batch()).unwrap();
    let width = aggregation.input_schema.fields().len();
    assert_eq!(written.num_columns(), width + 1);
    assert_eq!(
        written
            .column(width)
            .as_primitive::<datafusion::arrow::datatypes::Int32Type>()
            .values()
            .to_vec(),
        vec![1, 1, 1]
    );
    assert_eq!(*writer.value_columns.last().unwrap(), width);
    // The reader finds the sign after the aggregation input in its decoded batch.
    let read = reader.aggregation.as_ref().unwrap();
    assert_eq!(read.sign_column, Some(internal.first_key_index() + width));
    assert!(!read.repartition);
}

#[tokio::test]
async fn having_is_a_post_stage_filter_and_count_distinct_is_rewritten() {
    let plan = plan(
        r#"SELECT "ITEM", count(DISTINCT "ID") AS "IDS" FROM "ORDERS" GROUP BY "ITEM" HAVING count(*) > 1"#,
        &[],
    )
    .await
    .unwrap();
    let aggregation = plan.aggregation.as_ref().unwrap();
    assert!(
        aggregation
            .post_stages
            .iter()
            .any(|s| matches!(s, Stage::Filter(_)))
    );
    assert!(
        aggregation
            .calls
            .iter()
            .any(|c| c.function == "count_distinct")
    );
}

#[tokio::test]
async fn aggregate_errors_say_what_to_do() {
    let missing_key = plan(
        r#"SELECT count(*) AS "N" FROM "ORDERS" GROUP BY "ITEM""#,
        &[],
    )
    .await
    .unwrap_err()
    .to_string();
    // The expression as the user wrote it, without DataFusion's qualifier.
    assert!(
        missing_key.contains("must select its GROUP BY expression ITEM:"),
        "{missing_key}"
    );
    let no_group = plan(r#"SELECT count(*) AS "N" FROM "ORDERS""#, &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(no_group.contains("needs GROUP BY"), "{no_group}");
    let wrong_type = plan(
        r#"SELECT "ID", sum("ITEM") AS "S" FROM "ORDERS" GROUP BY "ID""#,
        &[],
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        wrong_type.contains("SUM does not accept STRING"),
        "{wrong_type}"
    );
}

#[tokio::test]
async fn explode_gives_a_row_per_element_and_repeats_the_other_columns() {
    let plan = plan(
        r#"SELECT "ID", explode(split("ITEM", 'p')) AS "PIECE", explode(split('x y', ' ')) AS "XY" FROM "ORDERS""#,
        &[],
    )
    .await
    .unwrap();
    assert!(
        plan.stages
            .iter()
            .any(|s| matches!(s, Stage::Unnest { .. }))
    );
    assert_eq!(names(&plan, &plan.key_columns), ["ID"]);
    let out = plan.process(input_batch()).unwrap();
    let column = |name: &str| {
        let array = out.column(plan.output_schema.index_of(name).unwrap());
        let strings = array.as_string::<i32>();
        (0..strings.len())
            .map(|i| strings.is_valid(i).then(|| strings.value(i).to_owned()))
            .collect::<Vec<_>>()
    };
    let some = |items: &[&str]| {
        items
            .iter()
            .map(|s| Some(s.to_string()))
            .collect::<Vec<_>>()
    };
    // apple → [a, "", le]; NULL → [x, y] padded; pear → ["", ear, NULL].
    assert_eq!(column("ID"), some(&["a", "a", "a", "b", "b", "c", "c"]));
    let mut pieces = some(&["a", "", "le"]);
    pieces.extend([None, None, Some(String::new()), Some("ear".into())]);
    assert_eq!(column("PIECE"), pieces);
    assert_eq!(
        column("XY"),
        vec![
            Some("x".into()),
            Some("y".into()),
            None,
            Some("x".into()),
            Some("y".into()),
            Some("x".into()),
            Some("y".into())
        ]
    );
}

#[tokio::test]
async fn an_exploding_aggregation_numbers_the_rows_of_each_record() {
    let plan = plan(
        r#"SELECT "W", count(*) AS "N" FROM (SELECT explode(split("ITEM", 'p')) AS "W" FROM "ORDERS") GROUP BY "W""#,
        &[],
    )
    .await
    .unwrap();
    let aggregation = plan.aggregation.as_ref().unwrap();
    assert!(aggregation.explodes);
    let numbering = plan.origin_numbering.expect("origins are numbered");
    let input = plan.process(input_batch()).unwrap();
    let origins = input
        .column(numbering.offset_column)
        .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
    let shifted = |offset: i64, row: i64| offset << crate::ORIGIN_ROW_BITS | row;
    // apple (offset 10) gives three rows, the NULL item (11) none, pear (12) two.
    assert_eq!(
        origins.values().to_vec(),
        vec![
            shifted(10, 0),
            shifted(10, 1),
            shifted(10, 2),
            shifted(12, 0),
            shifted(12, 1)
        ]
    );
    assert_eq!(aggregation.source_offset_of_origin(shifted(12, 1)), 12);
    // The repartition writer numbers them too; the reader only reads them.
    let internal = Source {
        name: "INTERNAL".into(),
        columns: plan.repartition_columns().unwrap(),
        ..orders()
    };
    let (writer, reader) = plan.split_for_repartition(internal).unwrap();
    assert_eq!(writer.origin_numbering, Some(numbering));
    assert_eq!(reader.origin_numbering, None);

    // Over a table the upsert writer numbers them after its retractions.
    let plan = self::plan(
        r#"SELECT "W", count(*) AS "N" FROM (SELECT explode(split("ITEM", 'p')) AS "W" FROM "ORDER_STATE") GROUP BY "W""#,
        &[],
    )
    .await
    .unwrap();
    let aggregation = plan.aggregation.as_ref().unwrap();
    assert!(aggregation.explodes && aggregation.retractable);
    assert_eq!(plan.origin_numbering, None);
    assert_eq!(
        aggregation.source_offset_of_origin(shifted(2 * 7 + 1, 3)),
        7
    );
}

#[test]
fn origin_numbering_bounds_rows_per_record_and_offsets() {
    let rows = |n: usize| std::iter::repeat_n((0, 5i64), n);
    let numbered = crate::number_origin_rows(rows(3).chain([(1, 5), (0, 6)]), 5).unwrap();
    assert_eq!(
        numbered,
        vec![5 << 16, 5 << 16 | 1, 5 << 16 | 2, 5 << 16, 6 << 16]
    );
    let error = crate::number_origin_rows(rows(crate::MAX_ROWS_PER_RECORD + 1), 0).unwrap_err();
    assert!(
        error.to_string().contains("more than 65536 rows"),
        "{error}"
    );
    assert!(crate::number_origin_rows([(0, i64::MAX >> 10)].into_iter(), 1).is_err());
}

#[tokio::test]
async fn a_full_outer_table_join_keys_every_row_and_retracts_keys_that_stop_joining() {
    let plan = plan(
        r#"SELECT a."ID", a."ITEM", b."QTY" FROM "ORDER_STATE" a FULL OUTER JOIN "ORDER_STATE" b ON a."ID" = b."ID""#,
        &[],
    )
    .await
    .unwrap();
    let join = plan.join.as_ref().expect("a join");
    assert_eq!(join.kind, crate::JoinKind::Full);
    assert!(join.left_table.is_some(), "both sides are tables");
    assert_eq!(names(&plan, &plan.key_columns), ["ID"]);
    let (left_rows, _) = join.left_rows(input_batch()).unwrap();
    let (right_rows, _) = join.table_rows(input_batch()).unwrap();
    // Keys a, b, c: a has only a left row, b only a right row, c neither (it joined before).
    let left = UInt32Array::from(vec![Some(0), None, None]);
    let right = UInt32Array::from(vec![None, Some(1), None]);
    let keys: Vec<datafusion::arrow::array::ArrayRef> =
        vec![Arc::new(StringArray::from(vec!["a", "b", "c"]))];
    let (rows, tombstones) = join
        .join_tables(
            &left_rows,
            &left,
            &right_rows,
            &right,
            &keys,
            &plan.key_columns,
            &[false, false, true],
        )
        .unwrap();
    let id = plan.output_schema.index_of("ID").unwrap();
    let ids = rows.column(id).as_string::<i32>();
    // b's key is selected from the left side, which has no row: it is still the key.
    assert_eq!((ids.value(0), ids.value(1)), ("a", "b"));
    let qty = rows
        .column(plan.output_schema.index_of("QTY").unwrap())
        .as_primitive::<datafusion::arrow::datatypes::Int32Type>();
    assert!(qty.is_null(0) && qty.value(1) == 5);
    assert_eq!(tombstones.num_rows(), 1);
    assert_eq!(tombstones.column(id).as_string::<i32>().value(0), "c");

    // An inner join: neither a nor b joins; only c, which joined before, is retracted.
    let inner = self::plan(
        r#"SELECT a."ID", b."QTY" FROM "ORDER_STATE" a JOIN "ORDER_STATE" b ON a."ID" = b."ID""#,
        &[],
    )
    .await
    .unwrap();
    let join = inner.join.as_ref().unwrap();
    let (left_rows, _) = join.left_rows(input_batch()).unwrap();
    let (right_rows, _) = join.table_rows(input_batch()).unwrap();
    let (rows, tombstones) = join
        .join_tables(
            &left_rows,
            &left,
            &right_rows,
            &right,
            &keys,
            &inner.key_columns,
            &[false, false, true],
        )
        .unwrap();
    assert_eq!((rows.num_rows(), tombstones.num_rows()), (0, 1));
}

async fn plan_windowed(sql: &str, emit_final: bool) -> Result<StreamingPlan, PlanError> {
    let window = eddy_common::window::WindowSpec::new(
        eddy_common::window::WindowKind::Tumbling { size_ms: 60_000 },
        Some(0),
        None,
    )
    .unwrap();
    Planner::new()
        .plan_select(
            &query(sql),
            Clauses {
                partition_by: &[],
                window: Some(window),
                emit_final,
                within: None,
            },
            &catalog(),
        )
        .await
}

#[tokio::test]
async fn a_windowed_aggregation_carries_its_window_and_the_window_bounds() {
    let plan = plan_windowed(
        r#"SELECT "ID", "WINDOWSTART", "WINDOWEND" AS "E", COUNT(*) AS "N" FROM "ORDERS" GROUP BY "ID""#,
        true,
    )
    .await
    .unwrap();
    let aggregation = plan.aggregation.as_ref().expect("an aggregation");
    let window = aggregation.window.expect("a window");
    assert!(window.emit_final);
    assert_eq!(plan.window().map(|w| w.retention_ms), Some(60_000));
    // The window bounds come from the runtime: hidden calls without input columns.
    let bounds: Vec<&AggregateCall> = aggregation
        .calls
        .iter()
        .filter(|c| c.is_window_bound())
        .collect();
    assert!(!bounds.is_empty());
    assert!(bounds.iter().all(|c| c.arg_columns.is_empty()));
    assert_eq!(names(&plan, &plan.key_columns), ["ID"]);
    assert_eq!(names(&plan, &plan.value_columns), ["WINDOWSTART", "E", "N"]);
    let columns = plan.window_columns.expect("window columns");
    assert_eq!(
        plan.output_schema.field(columns.start).name(),
        WINDOWSTART_OUTPUT
    );
    assert_eq!(
        plan.output_schema.field(columns.end).name(),
        WINDOWEND_OUTPUT
    );
    assert!(plan.explain().contains("Window: TUMBLING (SIZE 1 MINUTE"));
}

#[tokio::test]
async fn window_bounds_and_emit_final_are_refused_where_they_mean_nothing() {
    let unwindowed = plan(
        r#"SELECT "ID", "WINDOWSTART", COUNT(*) FROM "ORDERS" GROUP BY "ID""#,
        &[],
    )
    .await
    .unwrap_err();
    assert!(
        unwindowed
            .to_string()
            .contains("only in windowed aggregations"),
        "{unwindowed}"
    );
    let in_where = plan_windowed(
        r#"SELECT "ID", COUNT(*) FROM "ORDERS" WHERE "WINDOWEND" > 0 GROUP BY "ID""#,
        false,
    )
    .await
    .unwrap_err();
    assert!(
        in_where.to_string().contains("can only be selected"),
        "{in_where}"
    );
    let ungrouped = plan_windowed(r#"SELECT "ID" FROM "ORDERS""#, false)
        .await
        .unwrap_err();
    assert!(
        ungrouped.to_string().contains("needs GROUP BY"),
        "{ungrouped}"
    );
    let over_table = plan_windowed(
        r#"SELECT "ID", COUNT(*) FROM "ORDER_STATE" GROUP BY "ID""#,
        false,
    )
    .await
    .unwrap_err();
    assert!(
        over_table
            .to_string()
            .contains("cannot be aggregated in windows"),
        "{over_table}"
    );
    let final_without_window = Planner::new()
        .plan_select(
            &query(r#"SELECT "ID", COUNT(*) FROM "ORDERS" GROUP BY "ID""#),
            Clauses {
                emit_final: true,
                ..Clauses::default()
            },
            &catalog(),
        )
        .await
        .unwrap_err();
    assert!(
        final_without_window
            .to_string()
            .contains("EMIT FINAL needs"),
        "{final_without_window}"
    );
}

#[tokio::test]
async fn a_join_of_two_tables_on_a_left_column_is_a_foreign_key_join_keyed_by_the_left_key() {
    // ORDER_STATE's ITEM points at another ORDER_STATE row's key.
    let fk = plan(
        r#"SELECT a."ID", a."QTY", b."QTY" AS "ITEM_QTY" FROM "ORDER_STATE" a LEFT JOIN "ORDER_STATE" b ON a."ITEM" = b."ID""#,
        &[],
    )
    .await
    .unwrap();
    let join = fk.join.as_ref().expect("a join");
    let left = join.left_table.as_ref().expect("a join of two tables");
    assert!(left.foreign_key);
    assert_eq!(join.kind, crate::JoinKind::Left);
    assert_eq!(names(&fk, &fk.key_columns), ["ID"]);
    // Only the left key column holds the result's key.
    assert_eq!(
        left.key_columns_in_joined.len(),
        1,
        "{:?}",
        left.key_columns_in_joined
    );
    // The foreign key is computed from the left rows.
    let rows = RecordBatch::try_new(
        Arc::clone(&left.row_schema),
        left.row_schema
            .fields()
            .iter()
            .map(|f| match f.name().as_str() {
                "ITEM" => Arc::new(StringArray::from(vec![Some("k2"), None])) as ArrayRef,
                "ID" => Arc::new(StringArray::from(vec!["k1", "k3"])) as ArrayRef,
                _ => datafusion::arrow::array::new_null_array(f.data_type(), 2),
            })
            .collect(),
    )
    .unwrap();
    let keys = join.stream_keys(&rows).unwrap();
    let keys = keys[0].as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!(keys.iter().collect::<Vec<_>>(), [Some("k2"), None]);

    let primary = plan(
        r#"SELECT a."ID", b."QTY" FROM "ORDER_STATE" a JOIN "ORDER_STATE" b ON a."ID" = b."ID""#,
        &[],
    )
    .await
    .unwrap();
    let left = primary
        .join
        .as_ref()
        .and_then(|j| j.left_table.as_ref())
        .unwrap();
    assert!(!left.foreign_key);

    let err = plan(
        r#"SELECT a."ID" FROM "ORDER_STATE" a FULL OUTER JOIN "ORDER_STATE" b ON a."ITEM" = b."ID""#,
        &[],
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("RIGHT and FULL OUTER foreign-key joins are not supported"),
        "{err}"
    );
}
