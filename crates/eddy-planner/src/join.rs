//! Stream-table joins: `SELECT ... FROM stream [LEFT] JOIN table ON stream.col = table.key`.
//!
//! DataFusion plans the whole query; the optimized plan is cut at its `Join` node into three
//! parts that the runtime drives around a per-partition table store:
//!
//! ```text
//!  table record batch ─▶ table stages (filters mark rows absent) ─▶ store: table key → row
//!  stream batch ─▶ stream stages ─▶ join key ─▶ look up the store ─▶ [stream columns, table columns]
//!      ─▶ post stages (projection, filters over both sides) ─▶ output
//! ```
//!
//! The inputs must be co-partitioned, as in ksqlDB: the stream's key is the join column, with the
//! table key's type and format, and both have the same number of partitions. Then a stream
//! record's table row lives in the same partition number, and one task per partition holds it.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions, UInt32Array,
};
use datafusion::arrow::compute::{and_kleene, cast, filter_record_batch, is_not_null, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::DataFusionError;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Expr, ExprSchemable, JoinType, LogicalPlan};
use datafusion::physical_expr::PhysicalExpr;
use eddy_catalog::{Source, SourceKind};
use eddy_common::window::JoinWindow;

use crate::plan::{PlanError, Stage, marked, nullable_schema, physical};

/// Which rows without a partner a join keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    /// `[INNER] JOIN`: a row without a partner gives no output.
    Inner,
    /// `LEFT [OUTER] JOIN`: a left row without a partner gives one with NULL right columns.
    Left,
    /// `RIGHT [OUTER] JOIN` (tables only).
    Right,
    /// `FULL OUTER JOIN` (tables only): either row alone gives a row.
    Full,
}

impl JoinKind {
    /// Whether a key with (`left`, `right`) rows present has a joined row.
    pub fn joins(self, left: bool, right: bool) -> bool {
        match self {
            JoinKind::Inner => left && right,
            JoinKind::Left => left,
            JoinKind::Right => right,
            JoinKind::Full => left || right,
        }
    }
}

/// The left side of a table-table join: its stages and rows, as for the right table.
#[derive(Debug, Clone)]
pub struct LeftTable {
    pub source: Source,
    /// Stages over decoded batches of the left table; filters mark rows absent.
    pub stages: Vec<Stage>,
    /// Schema of the left rows the store holds.
    pub row_schema: SchemaRef,
    /// (key column number, column of the joined batch) of every joined column that holds a key
    /// column of the result, from either side (a primary-key join) or from the left table (a
    /// foreign-key join): a tombstone's key is written into them.
    pub key_columns_in_joined: Vec<(usize, usize)>,
    /// Types of the left table's key columns (the result's key).
    pub key_types: Vec<DataType>,
    /// A foreign-key join: the left rows' join expressions (`JoinPlan::stream_key_exprs`) give
    /// the right table's key, and the result is keyed by the left table's key. Else both tables
    /// are joined on their primary keys.
    pub foreign_key: bool,
}

/// The window and right side of a stream-stream join (`WITHIN`); the right stream's stages, rows
/// and source are the plan's table fields ([`JoinPlan::table`], [`JoinPlan::table_stages`],
/// [`JoinPlan::table_row_schema`]).
#[derive(Debug, Clone)]
pub struct StreamJoin {
    pub window: JoinWindow,
    /// Computes the join key from the right stages' output, one expression per key column;
    /// [`JoinPlan::stream_key_exprs`] computes it from the left's.
    pub right_key_exprs: Vec<Arc<dyn PhysicalExpr>>,
    /// Schema of the left rows the join keeps (the left stages' output).
    pub left_row_schema: SchemaRef,
    /// Column of the left rows, and of the right rows, holding the record's event time.
    pub left_time_column: usize,
    pub right_time_column: usize,
    /// (key column number, column of the joined batch) of every joined column that holds a join
    /// key column, from either side: the output key of a row of one side alone is computed with
    /// its key in both sides' (see [`JoinPlan::join_streams`]).
    pub key_columns_in_joined: Vec<(usize, usize)>,
}

/// The join of a stream-table join query.
#[derive(Debug, Clone)]
pub struct JoinPlan {
    /// The table side.
    pub table: Source,
    pub kind: JoinKind,
    /// Computes the join key from the stream stages' output, one expression per table key column
    /// (in the table's key order); [`JoinPlan::stream_keys`] casts them to the table key types.
    pub stream_key_exprs: Vec<Arc<dyn PhysicalExpr>>,
    /// Types of the table's key columns.
    pub table_key_types: Vec<DataType>,
    /// Stages over decoded table batches. A `Filter` here marks rows absent (their key gets no
    /// row) instead of dropping them, see [`JoinPlan::table_rows`].
    pub table_stages: Vec<Stage>,
    /// Schema of the table rows the store holds (the table stages' output).
    pub table_row_schema: SchemaRef,
    /// Schema of a joined batch: stream stage output columns, then table row columns.
    pub joined_schema: SchemaRef,
    /// Stages over joined batches (the projection, filters that read both sides). In a
    /// table-table join a `Filter` here marks the joined row absent (a tombstone).
    pub post_stages: Vec<Stage>,
    /// Set for a join of two tables on their primary keys: then the left side is a table too,
    /// and the output is a table whose rows change when either side changes.
    pub left_table: Option<LeftTable>,
    /// Set for a join of two streams `WITHIN` a time window: then [`Self::table`] is the right
    /// stream, and both sides' records are kept for the window's retention.
    pub stream_join: Option<StreamJoin>,
}

impl JoinPlan {
    /// The join key of each stream row, as the table's key columns (same types).
    pub fn stream_keys(&self, stream: &RecordBatch) -> Result<Vec<ArrayRef>, DataFusionError> {
        keys_of(&self.stream_key_exprs, &self.table_key_types, stream)
    }

    /// The join key of each row of the right stream's stages, as the key types.
    pub fn right_stream_keys(&self, right: &RecordBatch) -> Result<Vec<ArrayRef>, DataFusionError> {
        let Some(stream_join) = &self.stream_join else {
            return Err(DataFusionError::Internal("not a stream-stream join".into()));
        };
        keys_of(&stream_join.right_key_exprs, &self.table_key_types, right)
    }

    /// Runs the right stream's stages over one of its decoded batches.
    pub fn right_stream_rows(&self, batch: RecordBatch) -> Result<RecordBatch, DataFusionError> {
        self.table_stages
            .iter()
            .try_fold(batch, |batch, stage| stage.apply(batch))
    }

    /// A stream-stream join's output: `left[i]` and `right[i]` index the rows of `left_rows` and
    /// `right_rows` that output row i joins (NULL: the side has none, for outer joins).
    /// `keys` are the join key columns of each output row and `output_key_columns` the output's
    /// key columns. Then the post stages run.
    ///
    /// As in ksqlDB, a row of one side alone has NULL in every column of the other side, its
    /// join key columns included (`WHERE s.order_id IS NULL` finds orders without shipment), and
    /// the output's key is the join key all the same: for such rows the post stages run a second
    /// time over the rows with the key in both sides' key columns, and the output's key columns
    /// come from there.
    pub fn join_streams(
        &self,
        left_rows: &RecordBatch,
        left: &UInt32Array,
        right_rows: &RecordBatch,
        right: &UInt32Array,
        keys: &[ArrayRef],
        output_key_columns: &[usize],
    ) -> Result<RecordBatch, DataFusionError> {
        let Some(stream_join) = &self.stream_join else {
            return Err(DataFusionError::Internal("not a stream-stream join".into()));
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.joined_schema.fields().len());
        for column in left_rows.columns() {
            columns.push(take(column.as_ref(), left, None)?);
        }
        for column in right_rows.columns() {
            columns.push(take(column.as_ref(), right, None)?);
        }
        let options = RecordBatchOptions::new().with_row_count(Some(left.len()));
        let joined =
            RecordBatch::try_new_with_options(Arc::clone(&self.joined_schema), columns, &options)?;
        if left.null_count() == 0 && right.null_count() == 0 {
            return self
                .post_stages
                .iter()
                .try_fold(joined, |batch, stage| stage.apply(batch));
        }
        let mut keyed: Vec<ArrayRef> = joined.columns().to_vec();
        for &(n, column) in &stream_join.key_columns_in_joined {
            let Some(key) = keys.get(n) else {
                return Err(DataFusionError::Internal("join key columns missing".into()));
            };
            let data_type = self.joined_schema.field(column).data_type();
            keyed[column] = if key.data_type() == data_type {
                Arc::clone(key)
            } else {
                cast(key, data_type)?
            };
        }
        let keyed = RecordBatch::try_new_with_options(joined.schema(), keyed, &options)?;
        let (output, passed) = marked(&self.post_stages, joined)?;
        let (keyed_output, _) = marked(&self.post_stages, keyed)?;
        let mut columns = output.columns().to_vec();
        for &column in output_key_columns {
            let Some(key) = keyed_output.columns().get(column) else {
                return Err(DataFusionError::Internal(
                    "output key column missing".into(),
                ));
            };
            columns[column] = Arc::clone(key);
        }
        let options = RecordBatchOptions::new().with_row_count(Some(output.num_rows()));
        let output = RecordBatch::try_new_with_options(output.schema(), columns, &options)?;
        Ok(filter_record_batch(&output, &passed)?)
    }

    /// Runs the table stages over a decoded table batch. Returns the rows (one per input row,
    /// in order) and whether each row is present: a row a table-side filter rejects (or whose
    /// filter is NULL) is absent, i.e. its key has no row for the join.
    pub fn table_rows(
        &self,
        batch: RecordBatch,
    ) -> Result<(RecordBatch, BooleanArray), DataFusionError> {
        marked(&self.table_stages, batch)
    }

    /// [`Self::table_rows`] for the left table of a table-table join.
    pub fn left_rows(
        &self,
        batch: RecordBatch,
    ) -> Result<(RecordBatch, BooleanArray), DataFusionError> {
        match &self.left_table {
            Some(left) => marked(&left.stages, batch),
            None => Err(DataFusionError::Internal("not a table-table join".into())),
        }
    }

    /// A table-table join's output for changed keys: `left[i]`/`right[i]` index the current left
    /// and right rows of key i (NULL: the side has no row). `keys` are the key columns of the
    /// changed keys; `output_key_columns` the output's key columns; `previously_joined[i]` whether
    /// key i had both (or, for outer joins, the needed) rows before the change. Returns the output
    /// rows of the keys that have one, and tombstones (output rows of which only the key columns
    /// matter) of the keys that have none now but may have had one.
    #[allow(clippy::too_many_arguments)]
    pub fn join_tables(
        &self,
        left_rows: &RecordBatch,
        left: &UInt32Array,
        right_rows: &RecordBatch,
        right: &UInt32Array,
        keys: &[ArrayRef],
        output_key_columns: &[usize],
        previously_joined: &[bool],
    ) -> Result<(RecordBatch, RecordBatch), DataFusionError> {
        let Some(left_table) = &self.left_table else {
            return Err(DataFusionError::Internal("not a table-table join".into()));
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.joined_schema.fields().len());
        for column in left_rows.columns() {
            columns.push(take(column.as_ref(), left, None)?);
        }
        for column in right_rows.columns() {
            columns.push(take(column.as_ref(), right, None)?);
        }
        let rows = left.len();
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        let joined =
            RecordBatch::try_new_with_options(Arc::clone(&self.joined_schema), columns, &options)?;
        let exists: BooleanArray = (0..rows)
            .map(|i| Some(self.kind.joins(left.is_valid(i), right.is_valid(i))))
            .collect();
        let (output, keep) = marked(&self.post_stages, joined.clone())?;
        let present = and_kleene(&exists, &keep)?;
        let present = BooleanArray::from(
            (0..rows)
                .map(|i| present.is_valid(i) && present.value(i))
                .collect::<Vec<bool>>(),
        );
        // The output key is the join key, also where it is selected from a side without a row
        // (a RIGHT or FULL OUTER join, and tombstones): the same projection runs over rows whose
        // key columns all hold the key, and the output's key columns come from there.
        let mut keyed: Vec<ArrayRef> = joined.columns().to_vec();
        for &(n, column) in &left_table.key_columns_in_joined {
            let Some(key) = keys.get(n) else {
                return Err(DataFusionError::Internal("join key columns missing".into()));
            };
            let data_type = joined.schema().field(column).data_type().clone();
            keyed[column] = if key.data_type() == &data_type {
                Arc::clone(key)
            } else {
                cast(key, &data_type)?
            };
        }
        let keyed = RecordBatch::try_new_with_options(joined.schema(), keyed, &options)?;
        let (keyed_output, _) = marked(&self.post_stages, keyed)?;
        let mut columns = output.columns().to_vec();
        for &column in output_key_columns {
            columns[column] = Arc::clone(keyed_output.column(column));
        }
        let output = RecordBatch::try_new_with_options(output.schema(), columns, &options)?;
        let rows_out = filter_record_batch(&output, &present)?;
        // A key without a row now gets a tombstone only if it may have had one before.
        let retracted = BooleanArray::from(
            (0..rows)
                .map(|i| !present.value(i) && previously_joined.get(i).copied().unwrap_or(true))
                .collect::<Vec<bool>>(),
        );
        let tombstones = filter_record_batch(&keyed_output, &retracted)?;
        Ok((rows_out, tombstones))
    }

    /// Puts each stream row next to its table row: `matches[i]` is the row of `table_rows` that
    /// stream row `i` joins, or NULL. An inner join drops unmatched rows; a left join keeps them
    /// with NULL table columns. Then the post stages run.
    pub fn join(
        &self,
        stream: &RecordBatch,
        table_rows: &RecordBatch,
        matches: &UInt32Array,
    ) -> Result<RecordBatch, DataFusionError> {
        let mut columns: Vec<ArrayRef> = stream.columns().to_vec();
        for column in table_rows.columns() {
            columns.push(take(column.as_ref(), matches, None)?);
        }
        let options = RecordBatchOptions::new().with_row_count(Some(stream.num_rows()));
        let mut joined =
            RecordBatch::try_new_with_options(Arc::clone(&self.joined_schema), columns, &options)?;
        if self.kind == JoinKind::Inner && matches.null_count() > 0 {
            joined = filter_record_batch(&joined, &is_not_null(matches)?)?;
        }
        self.post_stages
            .iter()
            .try_fold(joined, |batch, stage| stage.apply(batch))
    }
}

/// Evaluates key expressions over a batch, cast to the key types.
fn keys_of(
    exprs: &[Arc<dyn PhysicalExpr>],
    types: &[DataType],
    batch: &RecordBatch,
) -> Result<Vec<ArrayRef>, DataFusionError> {
    exprs
        .iter()
        .zip(types)
        .map(|(expr, data_type)| {
            let key = expr.evaluate(batch)?.into_array(batch.num_rows())?;
            if key.data_type() == data_type {
                Ok(key)
            } else {
                Ok(cast(&key, data_type)?)
            }
        })
        .collect()
}

/// Lowers one side of a join (its plan, over its source) into stages.
pub(crate) type LowerSide<'a> = dyn Fn(&LogicalPlan, &Source) -> Result<Vec<Stage>, PlanError> + 'a;

/// Lowers a join query's optimized plan: the stages above the `Join` (post stages), the stream
/// side's stages, and the join itself. `lower` lowers one side over its source.
pub(crate) fn lower_join_query(
    plan: &LogicalPlan,
    state: &SessionState,
    stream: &Source,
    table: &Source,
    within: Option<JoinWindow>,
    lower: &LowerSide<'_>,
) -> Result<(Vec<Stage>, JoinPlan), PlanError> {
    match plan {
        LogicalPlan::Projection(projection) => {
            let (stages, mut join) =
                lower_join_query(&projection.input, state, stream, table, within, lower)?;
            let exprs = projection
                .expr
                .iter()
                .map(|expr| physical(state, expr.clone(), projection.input.schema()))
                .collect::<Result<Vec<_>, _>>()?;
            join.post_stages.push(Stage::Project {
                exprs,
                schema: nullable_schema(projection.schema.as_arrow()),
            });
            Ok((stages, join))
        }
        LogicalPlan::Filter(filter) => {
            let (stages, mut join) =
                lower_join_query(&filter.input, state, stream, table, within, lower)?;
            join.post_stages.push(Stage::Filter(physical(
                state,
                filter.predicate.clone(),
                filter.input.schema(),
            )?));
            Ok((stages, join))
        }
        LogicalPlan::SubqueryAlias(alias) => {
            lower_join_query(&alias.input, state, stream, table, within, lower)
        }
        LogicalPlan::Join(join) if table.kind == SourceKind::Stream => {
            let Some(window) = within else {
                return Err(PlanError::Invalid(
                    "internal error: a stream-stream join without its window".into(),
                ));
            };
            lower_stream_join(join, state, stream, table, window, lower)
        }
        LogicalPlan::Join(join) => {
            let tables = stream.kind == SourceKind::Table;
            let kind = match join.join_type {
                JoinType::Inner => JoinKind::Inner,
                JoinType::Left => JoinKind::Left,
                JoinType::Right if tables => JoinKind::Right,
                JoinType::Full if tables => JoinKind::Full,
                other => {
                    return Err(PlanError::unsupported(
                        &format!("{} joins of a stream and a table", join_type_name(other)),
                        true,
                        Some("a stream joins a table with [INNER] JOIN or LEFT JOIN"),
                    ));
                }
            };
            if join.filter.is_some() {
                return Err(PlanError::unsupported(
                    "join conditions other than equality of the stream's join column and the \
                     table's key",
                    true,
                    Some("move other conditions to WHERE"),
                ));
            }
            let stream_stages = lower(&join.left, stream)?;
            let table_stages = lower(&join.right, table)?;
            if table_stages
                .iter()
                .any(|s| matches!(s, Stage::Unnest { .. }))
            {
                return Err(PlanError::unsupported(
                    "EXPLODE of a joined table",
                    false,
                    None,
                ));
            }
            // Each table key column must be equal to one stream expression.
            let table_keys: Vec<&str> = table.key_columns().map(|c| c.name.as_str()).collect();
            let mut stream_exprs: Vec<Option<Expr>> = vec![None; table_keys.len()];
            for (left, right) in &join.on {
                let Some(key) =
                    key_column(right).and_then(|name| table_keys.iter().position(|k| *k == name))
                else {
                    return Err(not_on_the_key(table));
                };
                stream_exprs[key] = Some(left.clone());
            }
            let Some(stream_exprs) = stream_exprs.into_iter().collect::<Option<Vec<_>>>() else {
                return Err(not_on_the_key(table));
            };
            let left_table = if tables {
                Some(left_table(
                    join,
                    kind,
                    &stream_exprs,
                    stream,
                    table,
                    stream_stages.clone(),
                )?)
            } else {
                check_co_partitioned(&stream_exprs, stream, table)?;
                None
            };
            let stream_key_exprs = stream_exprs
                .into_iter()
                .map(|expr| physical(state, expr, join.left.schema()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((
                stream_stages,
                JoinPlan {
                    table: table.clone(),
                    kind,
                    stream_key_exprs,
                    table_key_types: table.key_columns().map(|c| c.sql_type.to_arrow()).collect(),
                    table_stages,
                    table_row_schema: nullable_schema(join.right.schema().as_arrow()),
                    joined_schema: nullable_schema(join.schema.as_arrow()),
                    post_stages: Vec::new(),
                    left_table,
                    stream_join: None,
                },
            ))
        }
        other => Err(PlanError::unsupported(
            &format!("\"{}\" in a join query", other.display()),
            false,
            None,
        )),
    }
}

/// Lowers the `Join` of two streams: both sides' stages, their join keys and event times, and
/// the co-partitioning check (each stream keyed by its join column, stored alike, as many
/// partitions).
fn lower_stream_join(
    join: &datafusion::logical_expr::Join,
    state: &SessionState,
    left: &Source,
    right: &Source,
    window: JoinWindow,
    lower: &LowerSide<'_>,
) -> Result<(Vec<Stage>, JoinPlan), PlanError> {
    let kind = match join.join_type {
        JoinType::Inner => JoinKind::Inner,
        JoinType::Left => JoinKind::Left,
        JoinType::Right => JoinKind::Right,
        JoinType::Full => JoinKind::Full,
        other => {
            return Err(PlanError::unsupported(
                &format!("{} joins of two streams", join_type_name(other)),
                true,
                Some("streams join with [INNER] JOIN, LEFT JOIN, RIGHT JOIN or FULL OUTER JOIN"),
            ));
        }
    };
    if join.filter.is_some() {
        return Err(PlanError::unsupported(
            "join conditions other than equality of the two streams' join columns",
            true,
            Some("move other conditions to WHERE"),
        ));
    }
    let left_stages = lower(&join.left, left)?;
    let right_stages = lower(&join.right, right)?;
    if left_stages
        .iter()
        .chain(&right_stages)
        .any(|s| matches!(s, Stage::Unnest { .. }))
    {
        return Err(PlanError::unsupported(
            "EXPLODE in a stream-stream join",
            false,
            Some("explode the stream first with CREATE STREAM ... AS SELECT"),
        ));
    }
    let (left_exprs, right_exprs): (Vec<Expr>, Vec<Expr>) = join.on.iter().cloned().unzip();
    check_streams_co_partitioned(&left_exprs, &right_exprs, left, right)?;
    let left_schema = join.left.schema();
    let right_schema = join.right.schema();
    let key_types = right_exprs
        .iter()
        .map(|expr| expr.get_type(right_schema))
        .collect::<Result<Vec<DataType>, DataFusionError>>()?;
    let time_column = |schema: &datafusion::common::DFSchema, source: &Source| {
        schema
            .columns()
            .iter()
            .position(|c| c.name == eddy_catalog::ROWTIME)
            .ok_or_else(|| {
                PlanError::Invalid(format!(
                    "internal error: the join lost the event time of \"{}\"",
                    source.name
                ))
            })
    };
    let left_time_column = time_column(left_schema, left)?;
    let right_time_column = time_column(right_schema, right)?;
    let left_width = left_schema.fields().len();
    let mut key_columns_in_joined = Vec::new();
    for (n, (left_expr, right_expr)) in left_exprs.iter().zip(&right_exprs).enumerate() {
        if let Some(i) = key_column(left_expr)
            .and_then(|name| left_schema.columns().iter().position(|c| c.name == name))
        {
            key_columns_in_joined.push((n, i));
        }
        if let Some(i) = key_column(right_expr)
            .and_then(|name| right_schema.columns().iter().position(|c| c.name == name))
        {
            key_columns_in_joined.push((n, left_width + i));
        }
    }
    let physical_all = |exprs: Vec<Expr>, schema: &datafusion::common::DFSchemaRef| {
        exprs
            .into_iter()
            .map(|expr| physical(state, expr, schema))
            .collect::<Result<Vec<_>, _>>()
    };
    let stream_key_exprs = physical_all(left_exprs, left_schema)?;
    let right_key_exprs = physical_all(right_exprs, right_schema)?;
    Ok((
        left_stages,
        JoinPlan {
            table: right.clone(),
            kind,
            stream_key_exprs,
            table_key_types: key_types,
            table_stages: right_stages,
            table_row_schema: nullable_schema(right_schema.as_arrow()),
            joined_schema: nullable_schema(join.schema.as_arrow()),
            post_stages: Vec::new(),
            left_table: None,
            stream_join: Some(StreamJoin {
                window,
                right_key_exprs,
                left_row_schema: nullable_schema(left_schema.as_arrow()),
                left_time_column,
                right_time_column,
                key_columns_in_joined,
            }),
        },
    ))
}

/// Co-partitioning of two joined streams: the right stream must be keyed by its join column
/// (else the user repartitions it), the left one too, stored like the right's key and with as
/// many partitions (else a persistent query repartitions it by its join column).
fn check_streams_co_partitioned(
    left_exprs: &[Expr],
    right_exprs: &[Expr],
    left: &Source,
    right: &Source,
) -> Result<(), PlanError> {
    let keyed_by = |exprs: &[Expr], source: &Source| {
        let keys: Vec<&eddy_catalog::Column> = source.key_columns().collect();
        keys.len() == exprs.len()
            && exprs
                .iter()
                .zip(&keys)
                .all(|(expr, key)| matches!(expr, Expr::Column(c) if c.name == key.name))
    };
    let shown = |exprs: &[Expr]| {
        exprs
            .iter()
            .map(|e| match e {
                Expr::Column(column) => column.name.clone(),
                other => datafusion::logical_expr::expr_rewriter::unnormalize_col(other.clone())
                    .human_display()
                    .to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !keyed_by(right_exprs, right) {
        // A single join column of the type of the left's join column can be repartitioned by.
        let repartition_by = match (right_exprs, left_exprs) {
            ([Expr::Column(column)], [Expr::Column(left_column)]) => right
                .column(&column.name)
                .zip(left.column(&left_column.name))
                .filter(|(c, l)| c.sql_type == l.sql_type)
                .map(|(c, _)| c.name.clone()),
            _ => None,
        };
        return Err(PlanError::JoinNotCoPartitioned {
            message: format!(
                "stream \"{}\" is not keyed by its join expression {}: joined streams must both \
                 be partitioned by the join key\nhint: repartition it first: CREATE STREAM \
                 {}_BY_KEY AS SELECT * FROM {} PARTITION BY {};",
                right.name,
                shown(right_exprs),
                right.name,
                right.name,
                shown(right_exprs)
            ),
            stream: right.name.clone(),
            table: left.name.clone(),
            repartition_by,
            right: true,
        });
    }
    let right_keys: Vec<&eddy_catalog::Column> = right.key_columns().collect();
    // A single join column of the right key's type can be repartitioned by.
    let repartition_by = match (left_exprs, right_keys.as_slice()) {
        ([Expr::Column(column)], [right_key]) => left
            .column(&column.name)
            .filter(|c| c.sql_type == right_key.sql_type)
            .map(|c| c.name.clone()),
        _ => None,
    };
    let hint = format!(
        "\nhint: repartition it first: CREATE STREAM {}_BY_KEY AS SELECT * FROM {} PARTITION BY {};",
        left.name,
        left.name,
        shown(left_exprs)
    );
    let not_co_partitioned = |message: String| PlanError::JoinNotCoPartitioned {
        message,
        stream: left.name.clone(),
        table: right.name.clone(),
        repartition_by: repartition_by.clone(),
        right: false,
    };
    let same_types = left
        .key_columns()
        .zip(&right_keys)
        .all(|(l, r)| l.sql_type == r.sql_type);
    if !keyed_by(left_exprs, left) || !same_types {
        return Err(not_co_partitioned(format!(
            "stream \"{}\" is not keyed by the join expression {}: a stream-stream join needs \
             both streams partitioned by the join key{hint}",
            left.name,
            shown(left_exprs)
        )));
    }
    key_layouts_alike(left, right, &hint).map_err(not_co_partitioned)
}

/// Co-partitioned sides store their keys alike and have as many partitions: else the message
/// (ending with `hint`) that says which differs.
fn key_layouts_alike(left: &Source, right: &Source, hint: &str) -> Result<(), String> {
    let kind = |source: &Source| match source.kind {
        SourceKind::Stream => "stream",
        SourceKind::Table => "table",
    };
    if left.key_format != right.key_format {
        return Err(format!(
            "{} \"{}\" has key format {} and {} \"{}\" {}: joined keys must be stored alike{hint}",
            kind(left),
            left.name,
            left.key_format,
            kind(right),
            right.name,
            right.key_format
        ));
    }
    if left.partitions != right.partitions {
        return Err(format!(
            "{} \"{}\" has {} partitions and {} \"{}\" {}: a {}-{} join needs both with the same \
             number{hint}",
            kind(left),
            left.name,
            left.partitions,
            kind(right),
            right.name,
            right.partitions,
            kind(left),
            kind(right)
        ));
    }
    Ok(())
}

/// The left table of a join of two tables. On both primary keys, the tables must be stored and
/// partitioned alike. Otherwise the join is a foreign-key join (`[INNER]` or `LEFT`): the left
/// table's join expressions give the right table's key, and the result is keyed by the left
/// table's key; each task of the left table holds a copy of the whole right table, so the
/// partitioning of the two does not matter.
fn left_table(
    join: &datafusion::logical_expr::Join,
    kind: JoinKind,
    left_exprs: &[Expr],
    left: &Source,
    right: &Source,
    stages: Vec<Stage>,
) -> Result<LeftTable, PlanError> {
    let left_keys: Vec<&eddy_catalog::Column> = left.key_columns().collect();
    let right_keys: Vec<&eddy_catalog::Column> = right.key_columns().collect();
    let on_keys = left_keys.len() == left_exprs.len()
        && left_exprs.iter().zip(&left_keys).zip(&right_keys).all(
            |((expr, left_key), right_key)| {
                key_column(expr) == Some(left_key.name.as_str())
                    && left_key.sql_type == right_key.sql_type
            },
        );
    // Tables joined on their keys but stored or partitioned differently are joined as by a
    // foreign key (the left key points at the right row): each task copies the right table.
    let alike = left.key_format == right.key_format && left.partitions == right.partitions;
    let foreign_key = !on_keys || (!alike && matches!(kind, JoinKind::Inner | JoinKind::Left));
    if !on_keys && matches!(kind, JoinKind::Right | JoinKind::Full) {
        return Err(PlanError::unsupported(
            "RIGHT and FULL OUTER foreign-key joins",
            true,
            Some(
                "a foreign-key join of two tables is [INNER] JOIN or LEFT JOIN, as in ksqlDB: \
                 FROM a LEFT JOIN b ON a.<column> = b.<primary key>",
            ),
        ));
    }
    if !foreign_key && !alike {
        return Err(PlanError::Invalid(format!(
            "tables \"{}\" ({} partitions, key format {}) and \"{}\" ({} partitions, key \
             format {}) must have the same partition count and key format for a {} join\nhint: \
             an [INNER] or LEFT JOIN of them works: it keeps a copy of the right table",
            left.name,
            left.partitions,
            left.key_format,
            right.name,
            right.partitions,
            right.key_format,
            if kind == JoinKind::Right {
                "RIGHT"
            } else {
                "FULL OUTER"
            }
        )));
    }
    let left_schema = join.left.schema();
    let right_schema = join.right.schema();
    let left_width = left_schema.fields().len();
    let mut key_columns_in_joined = Vec::new();
    for (n, left_key) in left_keys.iter().enumerate() {
        if let Some(i) = left_schema
            .columns()
            .iter()
            .position(|c| c.name == left_key.name)
        {
            key_columns_in_joined.push((n, i));
        }
        // On the primary keys, the right key columns hold the result's key too.
        if let Some(right_key) = right_keys.get(n).filter(|_| !foreign_key)
            && let Some(i) = right_schema
                .columns()
                .iter()
                .position(|c| c.name == right_key.name)
        {
            key_columns_in_joined.push((n, left_width + i));
        }
    }
    Ok(LeftTable {
        source: left.clone(),
        stages,
        row_schema: nullable_schema(left_schema.as_arrow()),
        key_columns_in_joined,
        key_types: left_keys.iter().map(|c| c.sql_type.to_arrow()).collect(),
        foreign_key,
    })
}

fn join_type_name(join_type: JoinType) -> &'static str {
    match join_type {
        JoinType::Right | JoinType::Full => "RIGHT and FULL OUTER",
        _ => "SEMI and ANTI",
    }
}

/// The table column an `ON` operand names, through the casts type coercion adds.
fn key_column(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Column(column) => Some(column.name.as_str()),
        Expr::Cast(cast) => key_column(&cast.expr),
        Expr::TryCast(cast) => key_column(&cast.expr),
        _ => None,
    }
}

fn not_on_the_key(table: &Source) -> PlanError {
    let keys: Vec<&str> = table.key_columns().map(|c| c.name.as_str()).collect();
    PlanError::Invalid(format!(
        "a stream joins table \"{}\" on its PRIMARY KEY ({}): the ON condition must be \
         stream_expression = {}.{}",
        table.name,
        keys.join(", "),
        table.name,
        keys.first().copied().unwrap_or("key"),
    ))
}

/// ksqlDB's co-partitioning rule: the stream's key is the join column, stored like the table's
/// key, and both topics have the same number of partitions.
fn check_co_partitioned(
    stream_exprs: &[Expr],
    stream: &Source,
    table: &Source,
) -> Result<(), PlanError> {
    let stream_keys: Vec<&eddy_catalog::Column> = stream.key_columns().collect();
    let table_keys: Vec<&eddy_catalog::Column> = table.key_columns().collect();
    let keyed_by_join = stream_keys.len() == stream_exprs.len()
        && stream_exprs.iter().zip(&stream_keys).zip(&table_keys).all(
            |((expr, stream_key), table_key)| {
                matches!(expr, Expr::Column(c) if c.name == stream_key.name)
                    && stream_key.sql_type == table_key.sql_type
            },
        );
    let joined = stream_exprs
        .iter()
        .map(|e| e.human_display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    // A single join column of the table key's type can be repartitioned by.
    let repartition_by = match (stream_exprs, table_keys.as_slice()) {
        ([Expr::Column(column)], [table_key]) => stream
            .column(&column.name)
            .filter(|c| c.sql_type == table_key.sql_type)
            .map(|c| c.name.clone()),
        _ => None,
    };
    let not_co_partitioned = |message: String| PlanError::JoinNotCoPartitioned {
        message,
        stream: stream.name.clone(),
        table: table.name.clone(),
        repartition_by: repartition_by.clone(),
        right: false,
    };
    // The hint's statement reads the stream by its name: columns without the query's alias.
    let partition_by = stream_exprs
        .iter()
        .map(|e| match e {
            Expr::Column(column) => column.name.clone(),
            other => datafusion::logical_expr::expr_rewriter::unnormalize_col(other.clone())
                .human_display()
                .to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let hint = format!(
        "\nhint: repartition it first: CREATE STREAM {}_BY_KEY AS SELECT * FROM {} PARTITION BY \
         {partition_by};",
        stream.name, stream.name
    );
    if !keyed_by_join {
        return Err(not_co_partitioned(format!(
            "stream \"{}\" is not keyed by the join expression {joined}: a stream-table join needs \
             the stream partitioned like the table{hint}",
            stream.name
        )));
    }
    key_layouts_alike(stream, table, &hint).map_err(not_co_partitioned)?;
    if stream.kind != SourceKind::Stream || table.kind != SourceKind::Table {
        return Err(PlanError::Invalid(
            "internal error: join sides swapped".into(),
        ));
    }
    Ok(())
}
