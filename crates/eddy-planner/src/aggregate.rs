//! Continuous `GROUP BY`: DataFusion plans the query, Eddy runs the aggregation.
//!
//! DataFusion's SQL planner resolves names and types of an aggregate query, but its accumulators
//! cannot be stored per key in RocksDB, replayed from a changelog or retracted when a table row
//! changes. So the planner registers *planning stubs* for every aggregate function (their return
//! types come from `eddy-aggregate`, which also runs them), lowers the optimized plan around the
//! `Aggregate` node into three parts, and the runtime drives `eddy-aggregate` in between:
//!
//! ```text
//!  source batch ─▶ stages ─▶ [group key..., arguments...] ─▶ aggregate (state per key) ─▶
//!    [group key..., aggregate values...] ─▶ post stages (HAVING, projection) ─▶ table row or tombstone
//! ```

use std::sync::Arc;

use datafusion::arrow::array::{AsArray, BooleanArray, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, FieldRef, SchemaRef};
use datafusion::arrow::datatypes::{Int32Type, Int64Type};
use datafusion::common::{DataFusionError, ScalarValue, not_impl_err};
use datafusion::execution::context::{SessionContext, SessionState};
use datafusion::logical_expr::function::AccumulatorArgs;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Expr, ExprSchemable, LogicalPlan, Signature,
    Volatility,
};
use datafusion::physical_expr::PhysicalExpr;
use eddy_aggregate::AggregateSpec;
use eddy_catalog::{Column, ColumnRole, Source};
use eddy_common::types::SqlType;
use eddy_common::window::WindowSpec;

use crate::plan::{PlanError, Stage, StreamingPlan, nullable_schema, physical};

/// The hidden aggregate that carries each group's event time: the largest `ROWTIME` it has seen
/// (Kafka Streams' rule for the timestamp of an aggregation's result).
pub const ROWTIME_AGGREGATE: &str = "eddy_rowtime";

/// The hidden aggregate over `(ROWPARTITION, ROWOFFSET)` that tells the runtime where each input
/// row came from, so that rows a repartition topic holds twice are counted once. Its value is
/// never shown.
pub const ORIGIN_AGGREGATE: &str = "eddy_origin";

/// The hidden aggregates that stand for `WINDOWSTART` and `WINDOWEND` in a windowed aggregation:
/// the runtime gives each group its window's bounds (epoch milliseconds). Their argument
/// (`ROWTIME`) only lets DataFusion plan them.
pub const WINDOWSTART_AGGREGATE: &str = "eddy_windowstart";
pub const WINDOWEND_AGGREGATE: &str = "eddy_windowend";

/// The window of a windowed aggregation, and how it emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowPlan {
    pub spec: WindowSpec,
    /// `EMIT FINAL`: one row per window, when it closes; otherwise every change.
    pub emit_final: bool,
}

/// Output name of [`ORIGIN_AGGREGATE`].
pub const ORIGIN_OUTPUT: &str = "__eddy_origin";

/// Low bits of an origin offset that number the rows one input record gave, when an aggregation's
/// input explodes records into several rows (`EXPLODE`): the origin offset is then
/// `offset << ORIGIN_ROW_BITS | row`, so each row has an origin of its own and the duplicate check
/// (an origin below the next one not yet counted is a copy) stays exact. It bounds the rows one
/// record may contribute to such an aggregation to [`MAX_ROWS_PER_RECORD`] (more is reported and the
/// record skipped) and its source offsets to 2^46 (2^45 over tables).
pub const ORIGIN_ROW_BITS: u32 = 16;

/// Most rows one input record may contribute to an aggregation whose input explodes records.
pub const MAX_ROWS_PER_RECORD: usize = 1 << ORIGIN_ROW_BITS;

/// Where a plan's stages put each row's origin, and how many low bits number the rows of one
/// record (see [`ORIGIN_ROW_BITS`]). Set on plans whose stages explode records and whose origin
/// offsets the stages produce (over a table the upsert writer numbers them itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginNumbering {
    pub partition_column: usize,
    pub offset_column: usize,
}

impl OriginNumbering {
    /// Replaces each row's origin offset `o` by `o << ORIGIN_ROW_BITS | n`, where `n` counts the
    /// earlier rows of the same record (same origin partition and offset; a record's rows are
    /// adjacent). Fails when a record has more than [`MAX_ROWS_PER_RECORD`] rows or an offset is too
    /// large to shift.
    pub fn apply(&self, batch: RecordBatch) -> Result<RecordBatch, DataFusionError> {
        let partitions = batch
            .column(self.partition_column)
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| DataFusionError::Internal("origin partition is not an INT".into()))?;
        let offsets = batch
            .column(self.offset_column)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| DataFusionError::Internal("origin offset is not a BIGINT".into()))?;
        let numbered = number_origin_rows(
            (0..batch.num_rows()).map(|row| (partitions.value(row), offsets.value(row))),
            batch.num_rows(),
        )?;
        let mut columns = batch.columns().to_vec();
        columns[self.offset_column] = Arc::new(Int64Array::from(numbered));
        Ok(RecordBatch::try_new(batch.schema(), columns)?)
    }
}

/// Numbers the rows of each record: `(partition, origin offset)` pairs in row order, adjacent
/// when of the same record, to `origin << ORIGIN_ROW_BITS | row within the record`.
pub fn number_origin_rows(
    origins: impl Iterator<Item = (i32, i64)>,
    rows: usize,
) -> Result<Vec<i64>, DataFusionError> {
    let limit = i64::MAX >> ORIGIN_ROW_BITS;
    let mut numbered = Vec::with_capacity(rows);
    let mut previous: Option<(i32, i64)> = None;
    let mut row_in_record = 0i64;
    for origin in origins {
        let (_, offset) = origin;
        if !(0..=limit).contains(&offset) {
            return Err(DataFusionError::Execution(format!(
                "offset {offset} is too large for an aggregation over EXPLODE (at most {limit})"
            )));
        }
        row_in_record = if previous == Some(origin) {
            row_in_record + 1
        } else {
            0
        };
        if row_in_record >= MAX_ROWS_PER_RECORD as i64 {
            return Err(DataFusionError::Execution(format!(
                "the record exploded into more than {MAX_ROWS_PER_RECORD} rows, the most one \
                 record may add to an aggregation"
            )));
        }
        previous = Some(origin);
        numbered.push(offset << ORIGIN_ROW_BITS | row_in_record);
    }
    Ok(numbered)
}

/// A DataFusion aggregate function that only plans: it has the name and return type of an
/// `eddy-aggregate` function but cannot execute.
#[derive(Debug, PartialEq, Eq, Hash)]
struct PlanningStub {
    name: String,
    signature: Signature,
}

impl AggregateUDFImpl for PlanningStub {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        if [
            ROWTIME_AGGREGATE,
            ORIGIN_AGGREGATE,
            WINDOWSTART_AGGREGATE,
            WINDOWEND_AGGREGATE,
        ]
        .contains(&self.name.as_str())
        {
            return Ok(DataType::Int64);
        }
        // COUNT(*) arrives as count(1): it counts rows whatever its argument.
        AggregateSpec::return_type(&self.name, arg_types)
            .map_err(|e| DataFusionError::Plan(e.to_string()))
    }

    fn accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> datafusion::common::Result<Box<dyn Accumulator>> {
        not_impl_err!(
            "{} runs in continuous queries only; the planner must not execute it",
            self.name
        )
    }
}

/// Registers a planning stub for every aggregate function Eddy runs, replacing DataFusion's
/// `count`, `sum`, `avg`, `min` and `max` so that result types are the ones Eddy produces.
pub(crate) fn register_aggregate_stubs(ctx: &SessionContext) {
    let names = AggregateSpec::function_names().iter().copied().chain([
        ROWTIME_AGGREGATE,
        ORIGIN_AGGREGATE,
        WINDOWSTART_AGGREGATE,
        WINDOWEND_AGGREGATE,
    ]);
    for name in names {
        if name == "count_star" {
            continue;
        }
        ctx.register_udaf(AggregateUDF::new_from_impl(PlanningStub {
            name: name.to_owned(),
            signature: Signature::variadic_any(Volatility::Immutable),
        }));
    }
}

/// Name of the sign column that the repartition topic of an aggregation over a table carries.
pub const SIGN_COLUMN: &str = "SIGN";

/// One aggregate function call of a query.
#[derive(Debug, Clone)]
pub struct AggregateCall {
    /// `eddy-aggregate`'s function name (`count_star` for `COUNT(*)`), or [`ROWTIME_AGGREGATE`].
    pub function: String,
    /// Columns of the aggregation input that are its arguments.
    pub arg_columns: Vec<usize>,
    /// Trailing literal arguments (`TOPK(x, 3)`'s 3).
    pub literal_args: Vec<ScalarValue>,
    /// Name and type of its result.
    pub output: FieldRef,
}

impl AggregateCall {
    pub fn is_rowtime(&self) -> bool {
        self.function == ROWTIME_AGGREGATE
    }

    pub fn is_origin(&self) -> bool {
        self.function == ORIGIN_AGGREGATE
    }

    /// `WINDOWSTART` or `WINDOWEND` of a windowed aggregation.
    pub fn is_window_bound(&self) -> bool {
        self.function == WINDOWSTART_AGGREGATE || self.function == WINDOWEND_AGGREGATE
    }

    /// Whether this call is one of the planner's own (event time, origin, window bounds),
    /// not one the query wrote.
    pub fn is_hidden(&self) -> bool {
        self.is_rowtime() || self.is_origin() || self.is_window_bound()
    }
}

/// The stateful part of an aggregate query.
#[derive(Debug, Clone)]
pub struct AggregationPlan {
    /// Schema of the aggregation input the stages produce: group key columns first, then arguments.
    pub input_schema: SchemaRef,
    /// The first `group_count` input columns are the group key.
    pub group_count: usize,
    /// Aggregate calls in output order; one is the hidden [`ROWTIME_AGGREGATE`], one the hidden
    /// [`ORIGIN_AGGREGATE`].
    pub calls: Vec<AggregateCall>,
    /// Schema of the aggregate's result: the group key columns, then one column per call.
    pub aggregate_schema: SchemaRef,
    /// `HAVING` and the projection, applied to the aggregate's result. A `Filter` here does not
    /// drop rows: it marks them, and the runtime turns them into tombstones.
    pub post_stages: Vec<Stage>,
    /// True when the group key is not the source key, or the input is a table: records go
    /// through a repartition topic first.
    pub repartition: bool,
    /// True when the input is a table: changed and deleted rows are retracted.
    pub retractable: bool,
    /// Column of the aggregation's decoded source batch holding each row's sign (+1 adds the row,
    /// -1 retracts it): set on the aggregating half of a repartitioned aggregation over a table.
    pub sign_column: Option<usize>,
    /// The stages explode records (`EXPLODE`): origin offsets number the rows of each record
    /// (see [`ORIGIN_ROW_BITS`]).
    pub explodes: bool,
    /// The window of a windowed aggregation: the runtime assigns each row to its windows by its
    /// event time, and a group is a (group key, window) pair.
    pub window: Option<WindowPlan>,
}

/// Output of the post stages for a batch of groups.
pub struct PostOutput {
    /// Every group, projected.
    pub batch: RecordBatch,
    /// Whether each row passed `HAVING` (false rows become tombstones).
    pub keep: BooleanArray,
}

impl AggregationPlan {
    /// Where the input stages put each row's origin (partition, offset).
    pub fn origin_columns(&self) -> Option<OriginNumbering> {
        let call = self.calls.iter().find(|c| c.is_origin())?;
        match call.arg_columns.as_slice() {
            &[partition_column, offset_column] => Some(OriginNumbering {
                partition_column,
                offset_column,
            }),
            _ => None,
        }
    }

    /// The source offset an origin offset stands for: the row number of an exploding input is
    /// shifted out, and over a table the doubling of the upsert writer is halved.
    pub fn source_offset_of_origin(&self, origin: i64) -> i64 {
        let origin = if self.explodes {
            origin >> ORIGIN_ROW_BITS
        } else {
            origin
        };
        if self.retractable { origin / 2 } else { origin }
    }

    /// Applies `HAVING` and the projection to a batch of aggregate results.
    pub fn post_process(&self, batch: RecordBatch) -> Result<PostOutput, DataFusionError> {
        // A group that fails HAVING (or whose HAVING is NULL) is kept, marked: a tombstone.
        let (batch, keep) = crate::plan::marked(&self.post_stages, batch)?;
        Ok(PostOutput { batch, keep })
    }
}

/// Lowers the nodes above an `Aggregate` (projection, `HAVING`) and the aggregate itself.
/// Returns the stages below the aggregate (which produce its input) and the aggregation plan.
pub(crate) fn lower_aggregate_query(
    plan: &LogicalPlan,
    state: &SessionState,
    source: &Source,
    lower_input: &dyn Fn(&LogicalPlan) -> Result<Vec<Stage>, PlanError>,
) -> Result<(Vec<Stage>, AggregationPlan), PlanError> {
    match plan {
        LogicalPlan::Aggregate(aggregate) => {
            if aggregate.group_expr.is_empty() {
                return Err(PlanError::Invalid(
                    "aggregate functions in a continuous query need GROUP BY".into(),
                ));
            }
            let mut stages = lower_input(&aggregate.input)?;
            let input_schema = aggregate.input.schema();
            let mut exprs: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
            let mut fields = Vec::new();
            for (i, expr) in aggregate.group_expr.iter().enumerate() {
                if matches!(expr, Expr::GroupingSet(_)) {
                    return Err(PlanError::unsupported(
                        "GROUPING SETS, CUBE and ROLLUP",
                        true,
                        None,
                    ));
                }
                exprs.push(physical(state, expr.clone(), input_schema)?);
                let data_type = expr.to_field(input_schema)?.1.data_type().clone();
                fields.push(datafusion::arrow::datatypes::Field::new(
                    format!("K{i}"),
                    data_type,
                    true,
                ));
            }
            let aggregate_fields = aggregate.schema.fields();
            let group_count = aggregate.group_expr.len();
            let mut calls = Vec::new();
            for (i, expr) in aggregate.aggr_expr.iter().enumerate() {
                let call = match strip_alias(expr) {
                    Expr::AggregateFunction(call) => call,
                    other => {
                        return Err(PlanError::Invalid(format!(
                            "internal error: unexpected aggregate expression {other}"
                        )));
                    }
                };
                let name = call.func.name().to_owned();
                let params = &call.params;
                if params.filter.is_some() {
                    return Err(PlanError::unsupported(
                        "FILTER clauses on aggregates",
                        true,
                        Some("move the condition into WHERE or use CASE inside the aggregate"),
                    ));
                }
                if !params.order_by.is_empty() {
                    return Err(PlanError::unsupported(
                        "ORDER BY inside aggregates",
                        false,
                        None,
                    ));
                }
                if params.distinct {
                    return Err(PlanError::unsupported(
                        &format!("{}(DISTINCT ...)", name.to_uppercase()),
                        false,
                        Some("COUNT(DISTINCT x) and COUNT_DISTINCT(x) are supported"),
                    ));
                }
                let mut function = name.clone();
                let mut args = params.args.clone();
                if name == "count"
                    && args.len() == 1
                    && matches!(&args[0], Expr::Literal(value, _) if !value.is_null())
                {
                    function = "count_star".to_owned();
                    args.clear();
                }
                // The window's bounds come from the runtime, not from an input column.
                if function == WINDOWSTART_AGGREGATE || function == WINDOWEND_AGGREGATE {
                    args.clear();
                }
                // Leading column arguments, then literal ones.
                let columns = args
                    .iter()
                    .take_while(|a| !matches!(a, Expr::Literal(..)))
                    .count();
                let mut arg_columns = Vec::new();
                for arg in &args[..columns] {
                    arg_columns.push(exprs.len());
                    let data_type = arg.to_field(input_schema)?.1.data_type().clone();
                    fields.push(datafusion::arrow::datatypes::Field::new(
                        format!("A{}", exprs.len() - group_count),
                        data_type,
                        true,
                    ));
                    exprs.push(physical(state, arg.clone(), input_schema)?);
                }
                let mut literal_args = Vec::new();
                for arg in &args[columns..] {
                    match arg {
                        Expr::Literal(value, _) => literal_args.push(value.clone()),
                        other => {
                            return Err(PlanError::Invalid(format!(
                                "argument {other} of {} must be a constant",
                                name.to_uppercase()
                            )));
                        }
                    }
                }
                let output = Arc::clone(&aggregate_fields[group_count + i]);
                calls.push(AggregateCall {
                    function,
                    arg_columns,
                    literal_args,
                    output,
                });
            }
            let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
            stages.push(Stage::Project {
                exprs,
                schema: Arc::clone(&schema),
            });
            // A table's rows change: its aggregation always goes through the repartition writer,
            // which remembers each row's last contribution to retract it.
            let retractable = source.kind == eddy_catalog::SourceKind::Table;
            let explodes = stages.iter().any(|s| matches!(s, Stage::Unnest { .. }));
            let repartition = retractable || !groups_by_source_key(&aggregate.group_expr, source);
            Ok((
                stages,
                AggregationPlan {
                    input_schema: schema,
                    group_count,
                    calls,
                    aggregate_schema: nullable_schema(aggregate.schema.as_arrow()),
                    post_stages: Vec::new(),
                    repartition,
                    retractable,
                    sign_column: None,
                    explodes,
                    window: None,
                },
            ))
        }
        LogicalPlan::Projection(projection) => {
            let (stages, mut aggregation) =
                lower_aggregate_query(&projection.input, state, source, lower_input)?;
            let exprs = projection
                .expr
                .iter()
                .map(|expr| physical(state, expr.clone(), projection.input.schema()))
                .collect::<Result<Vec<_>, _>>()?;
            aggregation.post_stages.push(Stage::Project {
                exprs,
                schema: nullable_schema(projection.schema.as_arrow()),
            });
            Ok((stages, aggregation))
        }
        LogicalPlan::Filter(filter) => {
            let (stages, mut aggregation) =
                lower_aggregate_query(&filter.input, state, source, lower_input)?;
            aggregation.post_stages.push(Stage::Filter(physical(
                state,
                filter.predicate.clone(),
                filter.input.schema(),
            )?));
            Ok((stages, aggregation))
        }
        LogicalPlan::SubqueryAlias(alias) => {
            lower_aggregate_query(&alias.input, state, source, lower_input)
        }
        LogicalPlan::Sort(_) => Err(PlanError::unsupported(
            "ORDER BY",
            false,
            Some("a continuous query emits rows in the order they arrive"),
        )),
        other => Err(PlanError::unsupported(
            &format!("\"{}\" above GROUP BY", other.display()),
            false,
            None,
        )),
    }
}

/// True when the group key is exactly the source's key columns, in order: every key already lives
/// in one partition, so no repartitioning is needed.
fn groups_by_source_key(group_expr: &[Expr], source: &Source) -> bool {
    let keys: Vec<&str> = source.key_columns().map(|c| c.name.as_str()).collect();
    !keys.is_empty()
        && group_expr.len() == keys.len()
        && group_expr
            .iter()
            .zip(&keys)
            .all(|(expr, key)| matches!(strip_alias(expr), Expr::Column(c) if c.name == *key))
}

fn strip_alias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(alias) => strip_alias(&alias.expr),
        other => other,
    }
}

/// Which output columns of an aggregate query are the group key, in group order: the projection
/// must select every group expression unchanged (ksqlDB's rule: the key of a table is its GROUP BY).
pub(crate) fn key_columns_of_aggregate(
    plan: &LogicalPlan,
    group_count: usize,
) -> Result<Vec<Option<usize>>, PlanError> {
    let mut keys = vec![None; group_count];
    let LogicalPlan::Projection(projection) = plan else {
        return Ok(keys);
    };
    // The projection's input is the aggregate, possibly under HAVING's filter (same schema).
    let mut input = projection.input.as_ref();
    loop {
        match input {
            LogicalPlan::Filter(filter) => input = filter.input.as_ref(),
            LogicalPlan::SubqueryAlias(alias) => input = alias.input.as_ref(),
            _ => break,
        }
    }
    if !matches!(input, LogicalPlan::Aggregate(_)) {
        return Ok(keys);
    }
    let schema = input.schema();
    for (output, expr) in projection.expr.iter().enumerate() {
        if let Expr::Column(column) = strip_alias(expr)
            && let Ok(index) = schema.index_of_column(column)
            && index < group_count
            && keys[index].is_none()
        {
            keys[index] = Some(output);
        }
    }
    Ok(keys)
}

impl StreamingPlan {
    /// Columns of the internal topic an aggregation is repartitioned through: the group key
    /// columns (`K0`, `K1`, ...) as the record key, the arguments (`A0`, ...) as the value, and
    /// for a table input the row's sign ([`SIGN_COLUMN`]) last.
    pub fn repartition_columns(&self) -> Result<Vec<Column>, PlanError> {
        let aggregation = self.aggregation.as_ref().ok_or_else(|| {
            PlanError::Invalid("internal error: only aggregations are repartitioned".into())
        })?;
        let mut columns = aggregation
            .input_schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, field)| {
                let sql_type = SqlType::from_arrow(field.data_type()).ok_or_else(|| {
                    PlanError::UnsupportedOutputType {
                        column: field.name().clone(),
                        data_type: field.data_type().clone(),
                    }
                })?;
                Ok(Column {
                    name: field.name().clone(),
                    sql_type,
                    role: if i < aggregation.group_count {
                        ColumnRole::Key
                    } else {
                        ColumnRole::Value
                    },
                })
            })
            .collect::<Result<Vec<_>, PlanError>>()?;
        if aggregation.retractable {
            columns.push(Column {
                name: SIGN_COLUMN.to_owned(),
                sql_type: SqlType::Int,
                role: ColumnRole::Value,
            });
        }
        Ok(columns)
    }

    /// Splits an aggregation whose group key is not the source key into the query that writes
    /// its input to the repartition topic `internal` (whose columns are
    /// [`Self::repartition_columns`]) and the query that aggregates that topic.
    pub fn split_for_repartition(
        &self,
        internal: Source,
    ) -> Result<(StreamingPlan, StreamingPlan), PlanError> {
        let aggregation = self.aggregation.as_ref().ok_or_else(|| {
            PlanError::Invalid("internal error: only aggregations are repartitioned".into())
        })?;
        let width = aggregation.input_schema.fields().len();
        let group_count = aggregation.group_count;
        let rowtime_column = aggregation
            .calls
            .iter()
            .find(|c| c.is_rowtime())
            .and_then(|c| c.arg_columns.first().copied())
            .ok_or_else(|| {
                PlanError::Invalid("internal error: the aggregation lost its event time".into())
            })?;
        // Over a table, the writer's rows carry a sign: a stage appends SIGN = +1, and the
        // runtime's upsert writer turns the rows it retracts into -1.
        let mut writer_stages = self.stages.clone();
        let mut writer_schema = Arc::clone(&aggregation.input_schema);
        if aggregation.retractable {
            let mut exprs: Vec<Arc<dyn PhysicalExpr>> = writer_schema
                .fields()
                .iter()
                .enumerate()
                .map(|(i, field)| {
                    Arc::new(datafusion::physical_expr::expressions::Column::new(
                        field.name(),
                        i,
                    )) as Arc<dyn PhysicalExpr>
                })
                .collect();
            exprs.push(Arc::new(
                datafusion::physical_expr::expressions::Literal::new(ScalarValue::Int32(Some(1))),
            ));
            let mut fields: Vec<FieldRef> = writer_schema.fields().iter().cloned().collect();
            fields.push(Arc::new(datafusion::arrow::datatypes::Field::new(
                SIGN_COLUMN,
                DataType::Int32,
                false,
            )));
            writer_schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
            writer_stages.push(Stage::Project {
                exprs,
                schema: Arc::clone(&writer_schema),
            });
        }
        let writer_width = writer_schema.fields().len();
        let writer = StreamingPlan {
            source: self.source.clone(),
            stages: writer_stages,
            output_schema: writer_schema,
            key_columns: (0..group_count).collect(),
            key_sources: Vec::new(),
            value_columns: (group_count..writer_width).collect(),
            rowtime_column,
            sink_columns: self.repartition_columns()?,
            limit: None,
            aggregation: None,
            join: None,
            origin_numbering: self.origin_numbering,
            window_columns: None,
            logical_plan: self.logical_plan.clone(),
        };
        let first = internal.first_key_index();
        let reader = StreamingPlan {
            source: internal,
            stages: vec![Stage::Select {
                indices: (first..first + width).collect(),
            }],
            output_schema: Arc::clone(&self.output_schema),
            key_columns: self.key_columns.clone(),
            key_sources: Vec::new(),
            value_columns: self.value_columns.clone(),
            rowtime_column: self.rowtime_column,
            sink_columns: self.sink_columns.clone(),
            limit: self.limit,
            aggregation: Some(AggregationPlan {
                repartition: false,
                sign_column: aggregation.retractable.then_some(first + width),
                ..aggregation.clone()
            }),
            join: None,
            origin_numbering: None,
            window_columns: self.window_columns,
            logical_plan: self.logical_plan.clone(),
        };
        Ok((writer, reader))
    }
}
