//! From a normalized `SELECT` to a [`StreamingPlan`].

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions};
use datafusion::arrow::array::{UInt32Array, UInt32Builder};
use datafusion::arrow::compute::{and_kleene, filter_record_batch, is_not_null, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DFSchema, DataFusionError, SchemaError, TableReference};
use datafusion::datasource::empty::EmptyTable;
use datafusion::execution::context::{SessionContext, SessionState};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionConfig;
use datafusion::sql::parser::Statement as DfStatement;
use eddy_catalog::{Catalog, CatalogError, Column, ColumnRole, PSEUDO_COLUMNS, ROWTIME, Source};
use eddy_common::types::SqlType;
use eddy_common::window::{JoinWindow, WindowSpec};
use sqlparser::ast::{
    self, GroupByExpr, Ident, ObjectName, ObjectNamePart, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, TableFactor,
};
use thiserror::Error;

use crate::aggregate::{
    AggregationPlan, ORIGIN_AGGREGATE, ORIGIN_OUTPUT, OriginNumbering, ROWTIME_AGGREGATE,
    WINDOWEND_AGGREGATE, WINDOWSTART_AGGREGATE, WindowPlan, key_columns_of_aggregate,
    lower_aggregate_query,
};
use crate::functions::register_ksql_functions;
use crate::join::{JoinPlan, lower_join_query};

/// Name of the hidden output column that carries each output record's event time.
pub const ROWTIME_OUTPUT: &str = "__eddy_rowtime";
/// Prefix of the hidden output columns that carry the new key of a `PARTITION BY` query.
const KEY_OUTPUT_PREFIX: &str = "__eddy_key_";
/// Names of the hidden output columns that carry each row's window bounds in a windowed
/// aggregation (the windowed record key is made from them).
pub const WINDOWSTART_OUTPUT: &str = "__eddy_windowstart";
pub const WINDOWEND_OUTPUT: &str = "__eddy_windowend";
/// The pseudo-columns of a windowed aggregation: its window's bounds, epoch milliseconds.
pub const WINDOWSTART: &str = "WINDOWSTART";
pub const WINDOWEND: &str = "WINDOWEND";

/// The clauses of a KSQL `SELECT` that standard SQL has not.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clauses<'a> {
    /// `PARTITION BY` expressions (the new key); empty keeps the source key when the projection
    /// carries it.
    pub partition_by: &'a [ast::Expr],
    /// The `WINDOW` clause of a windowed aggregation.
    pub window: Option<WindowSpec>,
    /// `EMIT FINAL`: a windowed aggregation emits each window once, when it closes.
    pub emit_final: bool,
    /// The `WITHIN` clause of a stream-stream join.
    pub within: Option<JoinWindow>,
}

/// Where a windowed aggregation's output rows carry their window's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowColumns {
    pub start: usize,
    pub end: usize,
}

/// Why a query cannot be planned. Messages are user-facing (Postgres style).
#[derive(Debug, Error)]
pub enum PlanError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("{feature} {verb} not supported yet in continuous queries{hint}", verb = if *.plural { "are" } else { "is" }, hint = .hint.as_deref().map(|h| format!("\nhint: {h}")).unwrap_or_default())]
    Unsupported {
        feature: String,
        plural: bool,
        hint: Option<String>,
    },
    #[error("column \"{column}\" not found in {kind} \"{source_name}\"{suggestion}", suggestion = .suggestion.as_deref().map(|s| format!("; did you mean \"{s}\"?")).unwrap_or_default())]
    UnknownColumn {
        column: String,
        kind: &'static str,
        source_name: String,
        suggestion: Option<String>,
    },
    #[error(
        "column \"{column}\" has type {data_type}, which Eddy cannot write to a stream or table"
    )]
    UnsupportedOutputType { column: String, data_type: DataType },
    #[error(
        "the query produces column \"{column}\" twice\nhint: give one of them another name with AS"
    )]
    DuplicateColumn { column: String },
    #[error("{0}")]
    Invalid(String),
    /// A join whose stream side `stream` is not partitioned like the other side `table`. When
    /// the join expression is a column of the stream with the other side's key type, a
    /// persistent query repartitions the stream by it (`repartition_by`) with the other side's
    /// partition count and key format; `right` says the stream is the right side (of a
    /// stream-stream join). `message` says what is wrong.
    #[error("{message}")]
    JoinNotCoPartitioned {
        message: String,
        stream: String,
        table: String,
        repartition_by: Option<String>,
        right: bool,
    },
    #[error("{}", clean_datafusion_message(.0))]
    DataFusion(#[from] DataFusionError),
}

impl PlanError {
    pub(crate) fn unsupported(feature: &str, plural: bool, hint: Option<&str>) -> Self {
        PlanError::Unsupported {
            feature: feature.to_owned(),
            plural,
            hint: hint.map(str::to_owned),
        }
    }
}

/// DataFusion's messages name the phase ("Error during planning: ..."); users need only the reason.
fn clean_datafusion_message(error: &DataFusionError) -> String {
    // Wrappers ("optimizer rule ... failed") say where, not why.
    let message = error.find_root().strip_backtrace();
    let message = message
        .strip_prefix("Error during planning: ")
        .or_else(|| message.strip_prefix("Schema error: "))
        .or_else(|| message.strip_prefix("This feature is not implemented: "))
        .or_else(|| message.strip_prefix("Arrow error: "))
        .or_else(|| message.strip_prefix("Execution error: "))
        .unwrap_or(&message);
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// One operator of a streaming plan, applied to every batch in order.
#[derive(Clone)]
pub enum Stage {
    /// Keeps the columns at these indices (DataFusion's projection push-down into the scan).
    Select { indices: Vec<usize> },
    /// Keeps the rows for which the predicate is true.
    Filter(Arc<dyn PhysicalExpr>),
    /// Computes new columns.
    Project {
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        schema: SchemaRef,
    },
    /// `EXPLODE` (DataFusion's `UNNEST`): each input row becomes one row per element of its list
    /// columns (as many as the longest; shorter lists give NULLs), other columns repeated. A row
    /// whose lists are all NULL or empty gives no row, as in ksqlDB. Rows of one input row stay
    /// together and in input order.
    Unnest {
        /// Input columns holding the lists to explode.
        lists: Vec<usize>,
        /// For each output column, the input column it comes from.
        sources: Vec<usize>,
        schema: SchemaRef,
    },
}

impl fmt::Debug for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Select { indices } => write!(f, "Select {indices:?}"),
            Stage::Filter(predicate) => write!(f, "Filter {predicate}"),
            Stage::Project { exprs, schema } => {
                write!(f, "Project ")?;
                for (i, (expr, field)) in exprs.iter().zip(schema.fields()).enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{expr} AS {}", field.name())?;
                }
                Ok(())
            }
            Stage::Unnest { lists, schema, .. } => {
                write!(f, "Unnest lists {lists:?} into [")?;
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                write!(f, "{}]", names.join(", "))
            }
        }
    }
}

impl Stage {
    /// Applies this stage to one batch.
    pub fn apply(&self, batch: RecordBatch) -> Result<RecordBatch, DataFusionError> {
        match self {
            Stage::Select { indices } => Ok(batch.project(indices)?),
            Stage::Filter(predicate) => {
                let mask = predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
                let mask = mask.as_boolean_opt().ok_or_else(|| {
                    DataFusionError::Internal(format!(
                        "filter predicate returned {}",
                        mask.data_type()
                    ))
                })?;
                if mask.null_count() == 0 && mask.true_count() == mask.len() {
                    return Ok(batch);
                }
                Ok(filter_record_batch(&batch, mask)?)
            }
            Stage::Project { exprs, schema } => {
                let rows = batch.num_rows();
                let columns = exprs
                    .iter()
                    .map(|expr| {
                        expr.evaluate(&batch)
                            .and_then(|value| value.into_array(rows))
                    })
                    .collect::<Result<Vec<ArrayRef>, _>>()?;
                let options = RecordBatchOptions::new().with_row_count(Some(rows));
                Ok(RecordBatch::try_new_with_options(
                    Arc::clone(schema),
                    columns,
                    &options,
                )?)
            }
            Stage::Unnest {
                lists,
                sources,
                schema,
            } => unnest(&batch, lists, sources, schema),
        }
    }
}

/// Runs stages over a batch, turning filters into a mask instead of dropping rows: (rows,
/// whether each row passed every filter). NULL is not true: such a row did not pass, as in SQL.
/// Used where a filtered-out row still means something (a tombstone, an absent table row).
pub(crate) fn marked(
    stages: &[Stage],
    batch: RecordBatch,
) -> Result<(RecordBatch, BooleanArray), DataFusionError> {
    let rows = batch.num_rows();
    let mut passed = BooleanArray::from(vec![true; rows]);
    let mut batch = batch;
    for stage in stages {
        match stage {
            Stage::Filter(predicate) => {
                let mask = predicate.evaluate(&batch)?.into_array(rows)?;
                let mask = mask.as_boolean_opt().ok_or_else(|| {
                    DataFusionError::Internal(format!("filter returned {}", mask.data_type()))
                })?;
                let known = is_not_null(mask)?;
                passed = and_kleene(&and_kleene(&passed, mask)?, &known)?;
            }
            other => batch = other.apply(batch)?,
        }
    }
    Ok((batch, passed))
}

/// The [`Stage::Unnest`] kernel: one pass to count output rows, then `take` per column.
fn unnest(
    batch: &RecordBatch,
    lists: &[usize],
    sources: &[usize],
    schema: &SchemaRef,
) -> Result<RecordBatch, DataFusionError> {
    let list_arrays = lists
        .iter()
        .map(|&i| {
            batch.column(i).as_list_opt::<i32>().ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "EXPLODE of {} (not an ARRAY)",
                    batch.column(i).data_type()
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let length = |list: &datafusion::arrow::array::ListArray, row: usize| {
        if list.is_null(row) {
            0
        } else {
            let offsets = list.value_offsets();
            (offsets[row + 1] - offsets[row]) as usize
        }
    };
    let rows = batch.num_rows();
    // Output rows per input row: the longest of its lists.
    let mut counts = Vec::with_capacity(rows);
    let mut total = 0usize;
    for row in 0..rows {
        let count = list_arrays
            .iter()
            .map(|list| length(list, row))
            .max()
            .unwrap_or(0);
        counts.push(count);
        total += count;
    }
    if total > u32::MAX as usize {
        return Err(DataFusionError::Execution(format!(
            "EXPLODE would produce {total} rows from one batch"
        )));
    }
    let mut repeat = Vec::with_capacity(total);
    for (row, &count) in counts.iter().enumerate() {
        repeat.extend(std::iter::repeat_n(row as u32, count));
    }
    let repeat = UInt32Array::from(repeat);
    // Element indices into each list's values; NULL past the end of a shorter list.
    let mut elements: Vec<ArrayRef> = Vec::with_capacity(list_arrays.len());
    for list in &list_arrays {
        let offsets = list.value_offsets();
        let mut indices = UInt32Builder::with_capacity(total);
        for (row, &count) in counts.iter().enumerate() {
            let own = length(list, row);
            let start = offsets[row] as u32;
            for i in 0..count {
                if i < own {
                    indices.append_value(start + i as u32);
                } else {
                    indices.append_null();
                }
            }
        }
        elements.push(take(list.values().as_ref(), &indices.finish(), None)?);
    }
    let columns = sources
        .iter()
        .map(|source| match lists.iter().position(|l| l == source) {
            Some(k) => Ok(Arc::clone(&elements[k])),
            None => Ok(take(batch.column(*source).as_ref(), &repeat, None)?),
        })
        .collect::<Result<Vec<ArrayRef>, DataFusionError>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(total));
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &options,
    )?)
}

/// A continuous query over one source, ready for the runtime.
#[derive(Debug)]
pub struct StreamingPlan {
    /// The stream or table read.
    pub source: Source,
    /// Operators applied to each decoded batch of the source, in order.
    pub stages: Vec<Stage>,
    /// Schema of the batches the last stage produces.
    pub output_schema: SchemaRef,
    /// Output columns written to the record key, in key order.
    pub key_columns: Vec<usize>,
    /// For a query without join or aggregation whose key columns are the source's key columns
    /// (selected as they are, or renamed): the source column (in [`Source::arrow_schema`]) each
    /// key column comes from, in key order. Empty otherwise. A query over a table writes a
    /// tombstone for a source row it filters out, keyed from these.
    pub key_sources: Vec<usize>,
    /// Output columns written to the record value, in order.
    pub value_columns: Vec<usize>,
    /// Output column holding the event time of each output record.
    pub rowtime_column: usize,
    /// The columns of the sink a `CREATE ... AS SELECT` creates: key columns, then value columns.
    pub sink_columns: Vec<Column>,
    /// A `LIMIT` written in the query itself.
    pub limit: Option<u64>,
    /// The aggregation of a `GROUP BY` query: `stages` produce its input, and `output_schema`,
    /// `key_columns`, `value_columns` and `rowtime_column` describe its post stages' output.
    pub aggregation: Option<AggregationPlan>,
    /// The join of a stream-table join: `stages` produce the stream side, the runtime looks up
    /// the table and runs [`JoinPlan::join`], whose output is `output_schema`.
    pub join: Option<JoinPlan>,
    /// Set when the stages explode records into an aggregation's input: [`Self::process`] numbers
    /// the rows of each record in their origin offsets (see [`crate::ORIGIN_ROW_BITS`]).
    pub origin_numbering: Option<OriginNumbering>,
    /// Set on windowed aggregations: the output columns holding each row's window bounds, which
    /// the record key carries in ksqlDB's windowed key format.
    pub window_columns: Option<WindowColumns>,
    /// DataFusion's optimized logical plan, for `EXPLAIN`.
    pub logical_plan: LogicalPlan,
}

impl StreamingPlan {
    /// The window of a windowed aggregation.
    pub fn window(&self) -> Option<&WindowSpec> {
        self.aggregation
            .as_ref()
            .and_then(|a| a.window.as_ref())
            .map(|w| &w.spec)
    }

    /// Runs every stage over one batch of the source.
    pub fn process(&self, batch: RecordBatch) -> Result<RecordBatch, DataFusionError> {
        let output = self
            .stages
            .iter()
            .try_fold(batch, |batch, stage| stage.apply(batch))?;
        match &self.origin_numbering {
            Some(numbering) => numbering.apply(output),
            None => Ok(output),
        }
    }

    /// Text for `EXPLAIN`: the logical plan and the streaming stages.
    pub fn explain(&self) -> String {
        let mut text = String::from("Logical plan:\n");
        for line in self.logical_plan.display_indent().to_string().lines() {
            text.push_str("  ");
            text.push_str(line);
            text.push('\n');
        }
        text.push_str("Streaming plan:\n");
        text.push_str(&format!(
            "  Source: {} (topic {})\n",
            self.source.name, self.source.topic
        ));
        for stage in &self.stages {
            text.push_str(&format!("  {stage:?}\n"));
        }
        if let Some(aggregation) = &self.aggregation {
            let groups: Vec<&str> = aggregation.input_schema.fields()[..aggregation.group_count]
                .iter()
                .map(|f| f.name().as_str())
                .collect();
            let calls: Vec<String> = aggregation
                .calls
                .iter()
                .filter(|c| !c.is_hidden())
                .map(|c| format!("{} AS {}", c.function.to_uppercase(), c.output.name()))
                .collect();
            text.push_str(&format!(
                "  Aggregate: GROUP BY [{}] COMPUTE [{}]{}{}\n",
                groups.join(", "),
                calls.join(", "),
                if aggregation.repartition {
                    "; repartitioned by the group key"
                } else {
                    ""
                },
                if aggregation.retractable {
                    "; retracts changed table rows"
                } else {
                    ""
                },
            ));
            if let Some(window) = &aggregation.window {
                text.push_str(&format!(
                    "  Window: {window}{}\n",
                    if window.emit_final {
                        "; EMIT FINAL"
                    } else {
                        ""
                    },
                    window = window.spec
                ));
            }
            for stage in &aggregation.post_stages {
                text.push_str(&format!("  {stage:?}\n"));
            }
        }
        let names = |indices: &[usize]| {
            indices
                .iter()
                .map(|&i| self.output_schema.field(i).name().clone())
                .collect::<Vec<_>>()
                .join(", ")
        };
        text.push_str(&format!(
            "  Key: [{}]\n  Value: [{}]\n",
            names(&self.key_columns),
            names(&self.value_columns)
        ));
        text
    }
}

/// Plans queries; cheap to clone and share.
#[derive(Clone)]
pub struct Planner {
    state: SessionState,
    /// `state` with Eddy's aggregate functions in place of DataFusion's (planning only).
    aggregate_state: SessionState,
}

impl Default for Planner {
    fn default() -> Self {
        Self::new()
    }
}

impl Planner {
    pub fn new() -> Self {
        let mut config = SessionConfig::new()
            .with_target_partitions(1)
            .with_information_schema(false);
        let options = config.options_mut();
        // eddy-sql already applied ksqlDB's identifier rules and quotes every identifier.
        options.sql_parser.enable_ident_normalization = false;
        // Formats produce and consume Utf8; keep one string type throughout.
        options.sql_parser.map_string_types_to_utf8view = false;
        let ctx = SessionContext::new_with_config(config);
        register_ksql_functions(&ctx);
        let state = ctx.state();
        let aggregate_ctx = SessionContext::new_with_state(state.clone());
        crate::aggregate::register_aggregate_stubs(&aggregate_ctx);
        Self {
            state,
            aggregate_state: aggregate_ctx.state(),
        }
    }

    /// Plans a continuous `SELECT` over the catalog. `partition_by` re-keys the output
    /// (`PARTITION BY`); an empty slice keeps the source key when the projection carries it.
    pub async fn plan_query(
        &self,
        query: &ast::Query,
        partition_by: &[ast::Expr],
        catalog: &Catalog,
    ) -> Result<StreamingPlan, PlanError> {
        self.plan_select(
            query,
            Clauses {
                partition_by,
                ..Clauses::default()
            },
            catalog,
        )
        .await
    }

    /// Plans a continuous `SELECT` with its KSQL clauses (`PARTITION BY`, `WINDOW`, `EMIT`).
    pub async fn plan_select(
        &self,
        query: &ast::Query,
        clauses: Clauses<'_>,
        catalog: &Catalog,
    ) -> Result<StreamingPlan, PlanError> {
        let partition_by = clauses.partition_by;
        let mut query = query.clone();
        let limit = take_limit(&mut query)?;
        let select = match query.body.as_mut() {
            SetExpr::Select(select) => select,
            SetExpr::SetOperation { op, .. } => {
                return Err(PlanError::unsupported(
                    &op.to_string().to_uppercase(),
                    false,
                    None,
                ));
            }
            _ => {
                return Err(PlanError::Invalid(
                    "expected SELECT ... FROM a stream or table".into(),
                ));
            }
        };
        if query.order_by.is_some() {
            return Err(PlanError::unsupported(
                "ORDER BY",
                false,
                Some("a continuous query emits rows in the order they arrive"),
            ));
        }
        if select.from.len() != 1 {
            return Err(PlanError::Invalid(if select.from.is_empty() {
                "a continuous query must read FROM a stream or table".into()
            } else {
                "a comma-separated FROM list is not supported; use JOIN".into()
            }));
        }
        // The joined table, and its name in the query.
        let joined: Option<(Source, String)> = match select.from[0].joins.as_slice() {
            [] => None,
            [join] => Some(joined_table(join, catalog)?),
            _ => {
                // The engine runs such a statement as a chain (see `chain`).
                return Err(PlanError::Invalid(
                    "internal error: a query of more than one join must be split into join steps \
                     first"
                        .into(),
                ));
            }
        };
        if select.distinct.is_some() {
            return Err(PlanError::unsupported(
                "SELECT DISTINCT",
                false,
                Some("use GROUP BY"),
            ));
        }
        let grouped = match &select.group_by {
            GroupByExpr::Expressions(exprs, modifiers) => {
                if !modifiers.is_empty() {
                    return Err(PlanError::unsupported(
                        "GROUPING SETS, CUBE and ROLLUP",
                        true,
                        None,
                    ));
                }
                !exprs.is_empty()
            }
            GroupByExpr::All(_) => {
                return Err(PlanError::unsupported("GROUP BY ALL", false, None));
            }
        };
        if select.having.is_some() && !grouped {
            return Err(PlanError::Invalid("HAVING requires GROUP BY".into()));
        }
        if !grouped && let Some(function) = first_aggregate_call(&select.projection) {
            return Err(PlanError::Invalid(format!(
                "aggregate function {} in a continuous query needs GROUP BY",
                function.to_uppercase()
            )));
        }
        if clauses.window.is_some() && !grouped {
            return Err(PlanError::Invalid(
                "a WINDOW clause needs GROUP BY: windows group the rows of an aggregation".into(),
            ));
        }
        if clauses.emit_final && clauses.window.is_none() {
            return Err(PlanError::Invalid(
                "EMIT FINAL needs a windowed aggregation: it emits each window once, when it closes\n\
                 hint: add WINDOW TUMBLING|HOPPING|SESSION (...) before GROUP BY, or use EMIT CHANGES"
                    .into(),
            ));
        }
        rewrite_window_bounds(select, clauses.window.is_some())?;
        if grouped && !partition_by.is_empty() {
            return Err(PlanError::Invalid(
                "PARTITION BY cannot be combined with GROUP BY: a table is keyed by its GROUP BY"
                    .into(),
            ));
        }
        rename_explode(&mut select.projection);
        if grouped {
            rewrite_count_distinct(&mut select.projection);
            if let Some(having) = &mut select.having {
                rewrite_count_distinct_expr(having);
            }
        }
        let (source_name, qualifier) = match (
            named_source(&select.from[0].relation),
            &mut select.from[0].relation,
        ) {
            (Some(named), _) => named,
            (
                None,
                TableFactor::Derived {
                    lateral: false,
                    subquery,
                    alias,
                    ..
                },
            ) => {
                let qualifier = alias
                    .as_ref()
                    .map(|a| a.name.value.clone())
                    .unwrap_or_else(|| SUBQUERY_ALIAS.to_owned());
                if alias.is_none() {
                    *alias = Some(ast::TableAlias {
                        explicit: true,
                        name: quoted(SUBQUERY_ALIAS),
                        columns: Vec::new(),
                        at: None,
                    });
                }
                let source_name = prepare_subquery(subquery, catalog)?;
                if select.projection.iter().any(|item| {
                    matches!(
                        item,
                        SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
                    )
                }) {
                    return Err(PlanError::unsupported(
                        "* over a subquery",
                        false,
                        Some("name the subquery's columns"),
                    ));
                }
                (source_name, qualifier)
            }
            (None, other) => return Err(PlanError::Invalid(format!("cannot read from {other}"))),
        };
        let source = catalog.require_source(&source_name)?.clone();
        for read in std::iter::once(&source).chain(joined.as_ref().map(|(t, _)| t)) {
            if read.window.is_some() {
                return Err(PlanError::unsupported(
                    &format!("reading the windowed table \"{}\"", read.name),
                    false,
                    Some("read it with pull queries, or aggregate the stream it is built from"),
                ));
            }
        }
        if clauses.window.is_some() && source.kind == eddy_catalog::SourceKind::Table {
            return Err(PlanError::Invalid(format!(
                "table \"{}\" cannot be aggregated in windows: windows group events, and a table's rows are not events\n\
                 hint: aggregate the stream the table is built from",
                source.name
            )));
        }

        if let Some((joined, _)) = &joined {
            check_join_kinds(&source, joined, clauses.within)?;
        } else if clauses.within.is_some() {
            return Err(PlanError::Invalid(
                "WITHIN belongs to a join of two streams: FROM a JOIN b WITHIN 1 HOUR ON ..."
                    .into(),
            ));
        }
        if let Some((table, table_qualifier)) = &joined {
            if grouped {
                // The engine runs it as a chain: the join, then the aggregation.
                return Err(PlanError::Invalid(
                    "internal error: an aggregation over a join must be split into a join step \
                     first"
                        .into(),
                ));
            }
            if source.generator.is_some() {
                return Err(PlanError::unsupported(
                    "joins of a generated stream",
                    true,
                    None,
                ));
            }
            expand_join_wildcards(
                &mut select.projection,
                &[
                    (&source, qualifier.as_str()),
                    (table, table_qualifier.as_str()),
                ],
            )?;
        }
        expand_wildcards(&mut select.projection, &source, &qualifier)?;
        // ksqlDB's integer literals are INT when they fit: `qty + 1` stays INT.
        let mut partition_by = partition_by.to_vec();
        for item in &mut select.projection {
            if let SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } = item {
                type_integer_literals(expr);
            }
        }
        if let Some(selection) = &mut select.selection {
            type_integer_literals(selection);
        }
        partition_by.iter_mut().for_each(type_integer_literals);
        let partition_by = partition_by.as_slice();
        name_output_columns(&mut select.projection)?;
        let mut key_names = Vec::new();
        let mut hidden = Vec::new();
        for (i, expr) in partition_by.iter().enumerate() {
            if matches!(expr, ast::Expr::Value(v) if matches!(v.value, ast::Value::Null)) {
                if partition_by.len() > 1 {
                    return Err(PlanError::Invalid(
                        "PARTITION BY NULL cannot be combined with other expressions".into(),
                    ));
                }
                continue;
            }
            // ksqlDB names the new key after the projection item that selects the partitioning
            // expression (`UCASE(region) AS region ... PARTITION BY UCASE(region)`).
            let aliased = select.projection.iter().find_map(|item| match item {
                SelectItem::ExprWithAlias {
                    expr: selected,
                    alias,
                } if selected == expr => Some(alias.value.clone()),
                _ => None,
            });
            key_names.push(aliased.unwrap_or_else(|| partition_key_name(expr, i)));
            hidden.push(SelectItem::ExprWithAlias {
                expr: expr.clone(),
                alias: quoted(&format!("{KEY_OUTPUT_PREFIX}{i}")),
            });
        }
        let repartitioned = !partition_by.is_empty();
        hidden.extend(std::mem::take(&mut select.projection));
        select.projection = hidden;
        let mut rowtime = ast::Expr::CompoundIdentifier(vec![quoted(&qualifier), quoted(ROWTIME)]);
        // Two joined streams' records make a result as late as the later of them.
        if let Some((joined, joined_qualifier)) = &joined
            && joined.kind == eddy_catalog::SourceKind::Stream
        {
            let other =
                ast::Expr::CompoundIdentifier(vec![quoted(joined_qualifier), quoted(ROWTIME)]);
            rowtime = function_call("greatest", vec![rowtime, other]);
        }
        select.projection.push(SelectItem::ExprWithAlias {
            expr: if grouped {
                rowtime_aggregate(rowtime)
            } else {
                rowtime
            },
            alias: quoted(ROWTIME_OUTPUT),
        });
        if grouped {
            // Where each input row came from: an aggregation skips rows it has already counted
            // when a repartition topic holds them twice (its writer is at-least-once).
            let pseudo =
                |name: &str| ast::Expr::CompoundIdentifier(vec![quoted(&qualifier), quoted(name)]);
            select.projection.push(SelectItem::ExprWithAlias {
                expr: hidden_aggregate(
                    ORIGIN_AGGREGATE,
                    vec![
                        pseudo(eddy_catalog::ROWPARTITION),
                        pseudo(eddy_catalog::ROWOFFSET),
                    ],
                ),
                alias: quoted(ORIGIN_OUTPUT),
            });
        }
        if clauses.window.is_some() {
            let rowtime = ast::Expr::CompoundIdentifier(vec![quoted(&qualifier), quoted(ROWTIME)]);
            for (function, alias) in [
                (WINDOWSTART_AGGREGATE, WINDOWSTART_OUTPUT),
                (WINDOWEND_AGGREGATE, WINDOWEND_OUTPUT),
            ] {
                select.projection.push(SelectItem::ExprWithAlias {
                    expr: hidden_aggregate(function, vec![rowtime.clone()]),
                    alias: quoted(alias),
                });
            }
        }
        if let Some(having) = &mut select.having {
            type_integer_literals(having);
        }
        if let GroupByExpr::Expressions(exprs, _) = &mut select.group_by {
            // A bare number would group every row by that constant: say what was meant instead.
            if let Some(position) = exprs.iter().find_map(|expr| match expr {
                ast::Expr::Value(value) if matches!(value.value, ast::Value::Number(..)) => {
                    Some(value.to_string())
                }
                _ => None,
            }) {
                return Err(PlanError::Unsupported {
                    feature: format!("GROUP BY by position (GROUP BY {position})"),
                    plural: false,
                    hint: Some(
                        "name the expression: GROUP BY column_or_expression, and select it".into(),
                    ),
                });
            }
            exprs.iter_mut().for_each(type_integer_literals);
        }

        let table = Arc::new(EmptyTable::new(source.arrow_schema()));
        // A fresh catalog per plan: SessionState clones share their catalog list, and concurrent
        // plans of the same source must not see each other's registrations.
        let base = if grouped {
            &self.aggregate_state
        } else {
            &self.state
        };
        let ctx = SessionContext::new_with_state(self.isolated_state(base)?);
        ctx.register_table(TableReference::bare(source.name.as_str()), table)?;
        if let Some((table, _)) = &joined
            && table.name != source.name
        {
            ctx.register_table(
                TableReference::bare(table.name.as_str()),
                Arc::new(EmptyTable::new(table.arrow_schema())),
            )?;
        }
        let state = ctx.state();
        Self::reject_aggregates_in_group_by(&query, &state)?;
        let statement = DfStatement::Statement(Box::new(ast::Statement::Query(Box::new(query))));
        let logical = state
            .statement_to_plan(statement)
            .await
            .map_err(|e| explain_error(e, &source))?;
        let logical = state.optimize(&logical)?;

        let (stages, aggregation, join) = if let Some((table, _)) = &joined {
            let (stages, join) = lower_join_query(
                &logical,
                &state,
                &source,
                table,
                clauses.within,
                &|input, side| lower(input, &state, side),
            )?;
            (stages, None, Some(join))
        } else if grouped {
            let (stages, aggregation) =
                lower_aggregate_query(&logical, &state, &source, &|input| {
                    lower(input, &state, &source)
                })?;
            (stages, Some(aggregation), None)
        } else {
            (lower(&logical, &state, &source)?, None, None)
        };
        let mut aggregation = aggregation;
        if let (Some(aggregation), Some(spec)) = (&mut aggregation, clauses.window) {
            aggregation.window = Some(WindowPlan {
                spec,
                emit_final: clauses.emit_final,
            });
        }
        let output_schema = nullable_schema(logical.schema().as_arrow());
        let index_of = |name: &str| output_schema.index_of(name).ok();
        let window_columns = match (index_of(WINDOWSTART_OUTPUT), index_of(WINDOWEND_OUTPUT)) {
            (Some(start), Some(end)) if clauses.window.is_some() => {
                Some(WindowColumns { start, end })
            }
            _ if clauses.window.is_some() => {
                return Err(PlanError::Invalid(
                    "internal error: the plan lost its window columns".into(),
                ));
            }
            _ => None,
        };
        let rowtime_column = index_of(ROWTIME_OUTPUT).ok_or_else(|| {
            PlanError::Invalid("internal error: the plan lost its event-time column".into())
        })?;

        let mut key_columns = Vec::new();
        let mut key_sources = Vec::new();
        let mut key_output_names = Vec::new();
        if let Some(aggregation) = &aggregation {
            let keys = key_columns_of_aggregate(&logical, aggregation.group_count)?;
            for (i, key) in keys.into_iter().enumerate() {
                let Some(index) = key else {
                    let expr = match &select_group_by(&logical) {
                        Some(exprs) => exprs
                            .get(i)
                            .map(|e| {
                                datafusion::logical_expr::expr_rewriter::unnormalize_col(e.clone())
                                    .human_display()
                                    .to_string()
                            })
                            .unwrap_or_default(),
                        None => String::new(),
                    };
                    return Err(PlanError::Invalid(format!(
                        "the query must select its GROUP BY expression {expr}: it becomes the \
                         table's key\nhint: add it to the SELECT list"
                    )));
                };
                key_columns.push(index);
                key_output_names.push(output_schema.field(index).name().clone());
            }
        } else if repartitioned {
            for (i, name) in key_names.iter().enumerate() {
                if let Some(index) = index_of(&format!("{KEY_OUTPUT_PREFIX}{i}")) {
                    key_columns.push(index);
                    key_output_names.push(name.clone());
                }
            }
        } else if let LogicalPlan::Projection(projection) = &logical {
            let source_keys: Vec<&str> = source.key_columns().map(|c| c.name.as_str()).collect();
            let mut keys_seen: Vec<&str> = Vec::new();
            for (i, expr) in projection.expr.iter().enumerate() {
                let column = match expr {
                    Expr::Column(column) => Some(column),
                    Expr::Alias(alias) => match alias.expr.as_ref() {
                        Expr::Column(column) => Some(column),
                        _ => None,
                    },
                    _ => None,
                };
                // A key column, from either side of a join (both hold the join key); selected
                // twice (`SELECT *` over a join of two tables keyed `ID`), it is a key once.
                let Some(column) = column.filter(|c| source_keys.contains(&c.name.as_str())) else {
                    continue;
                };
                if !keys_seen.contains(&column.name.as_str()) {
                    keys_seen.push(column.name.as_str());
                    key_columns.push(i);
                    key_output_names.push(output_schema.field(i).name().clone());
                    if join.is_none()
                        && let Ok(index) = source.arrow_schema().index_of(&column.name)
                    {
                        key_sources.push(index);
                    }
                }
            }
            if key_sources.len() != key_columns.len() {
                key_sources.clear();
            }
        }
        if join
            .as_ref()
            .is_some_and(|j| j.left_table.is_some() && key_columns.is_empty())
        {
            return Err(PlanError::Invalid(
                "a join of two tables must select the join key: it becomes the result's key\n\
                 hint: add the left table's key column to the SELECT list"
                    .into(),
            ));
        }
        let value_columns: Vec<usize> = (0..output_schema.fields().len())
            .filter(|i| !key_columns.contains(i) && *i != rowtime_column)
            .filter(|i| {
                let name = output_schema.field(*i).name();
                !(name.starts_with(KEY_OUTPUT_PREFIX)
                    || name == ORIGIN_OUTPUT
                    || name == WINDOWSTART_OUTPUT
                    || name == WINDOWEND_OUTPUT
                    || (repartitioned && key_names.contains(name)))
            })
            .collect();

        let mut sink_columns = Vec::with_capacity(key_columns.len() + value_columns.len());
        for (index, name) in key_columns.iter().zip(&key_output_names) {
            sink_columns.push(sink_column(
                name,
                output_schema.field(*index).data_type(),
                ColumnRole::Key,
            )?);
        }
        for index in &value_columns {
            let field = output_schema.field(*index);
            sink_columns.push(sink_column(
                field.name(),
                field.data_type(),
                ColumnRole::Value,
            )?);
        }

        // Over a table the upsert writer numbers origins after its retractions.
        let origin_numbering = aggregation
            .as_ref()
            .filter(|a| a.explodes && !a.retractable)
            .and_then(|a| a.origin_columns());
        Ok(StreamingPlan {
            source,
            stages,
            join,
            origin_numbering,
            output_schema,
            key_columns,
            key_sources,
            value_columns,
            rowtime_column,
            sink_columns,
            limit,
            aggregation,
            window_columns,
            logical_plan: logical,
        })
    }

    /// The planner's session state with its own empty catalog.
    fn isolated_state(&self, base: &SessionState) -> Result<SessionState, PlanError> {
        use datafusion::catalog::{
            CatalogProvider, MemoryCatalogProvider, MemoryCatalogProviderList, MemorySchemaProvider,
        };
        use datafusion::execution::SessionStateBuilder;
        let options = &base.config_options().catalog;
        let catalog = MemoryCatalogProvider::new();
        catalog.register_schema(
            &options.default_schema,
            Arc::new(MemorySchemaProvider::new()),
        )?;
        let catalogs = MemoryCatalogProviderList::new();
        datafusion::catalog::CatalogProviderList::register_catalog(
            &catalogs,
            options.default_catalog.clone(),
            Arc::new(catalog),
        );
        Ok(SessionStateBuilder::new_from_existing(base.clone())
            .with_catalog_list(Arc::new(catalogs))
            .build())
    }

    /// A session state with DataFusion's own functions and an empty catalog of its own, for
    /// pull queries: full SQL executed by DataFusion over tables the caller registers.
    pub fn pull_state(&self) -> Result<SessionState, PlanError> {
        self.isolated_state(&self.state)
    }

    /// Refuses a `GROUP BY` over an aggregate function, named there or by its position in the
    /// select list (`GROUP BY 1`), as Postgres does. DataFusion's own error for it is an internal
    /// one ("schema contains duplicate unqualified field name", "physical plan does not support
    /// logical expression AggregateFunction").
    pub fn reject_aggregates_in_group_by(
        query: &ast::Query,
        state: &SessionState,
    ) -> Result<(), PlanError> {
        let ast::SetExpr::Select(select) = query.body.as_ref() else {
            return Ok(());
        };
        let GroupByExpr::Expressions(exprs, _) = &select.group_by else {
            return Ok(());
        };
        let aggregates = state.aggregate_functions();
        let aggregate_in = |expr: &ast::Expr| {
            let mut found = None;
            let _ = ast::visit_expressions(expr, |e| {
                if let ast::Expr::Function(function) = e
                    && aggregates.contains_key(&function.name.to_string().to_lowercase())
                {
                    found = Some(e.to_string());
                    return std::ops::ControlFlow::Break(());
                }
                std::ops::ControlFlow::Continue(())
            });
            found
        };
        for expr in exprs {
            let grouped = match expr {
                ast::Expr::Value(value) => match &value.value {
                    ast::Value::Number(position, _) => position
                        .parse::<usize>()
                        .ok()
                        .and_then(|position| position.checked_sub(1))
                        .and_then(|index| select.projection.get(index))
                        .and_then(|item| match item {
                            ast::SelectItem::UnnamedExpr(expr)
                            | ast::SelectItem::ExprWithAlias { expr, .. } => Some(expr),
                            _ => None,
                        }),
                    _ => None,
                },
                other => Some(other),
            };
            if let Some(aggregate) = grouped.and_then(aggregate_in) {
                let start = ast::Spanned::span(expr).start;
                let at = if start.line > 0 {
                    format!(" at line {}, column {}", start.line, start.column)
                } else {
                    String::new()
                };
                return Err(PlanError::Invalid(format!(
                    "aggregate functions are not allowed in GROUP BY{at}: {aggregate}\n\
                     hint: group by the columns the aggregate reads, or drop it from GROUP BY"
                )));
            }
        }
        Ok(())
    }

    /// Evaluates constant expressions (the `VALUES` of an `INSERT`) into a one-row batch.
    pub async fn evaluate_row(&self, exprs: &[ast::Expr]) -> Result<RecordBatch, PlanError> {
        let items = exprs
            .iter()
            .enumerate()
            .map(|(i, expr)| format!("{expr} AS \"c{i}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let ctx = SessionContext::new_with_state(self.state.clone());
        let frame = ctx.sql(&format!("SELECT {items}")).await?;
        let batches = frame.collect().await?;
        let batch = batches
            .into_iter()
            .find(|b| b.num_rows() > 0)
            .ok_or_else(|| PlanError::Invalid("VALUES produced no row".into()))?;
        Ok(batch)
    }
}

/// The group expressions of the `Aggregate` under an aggregate query's projection, for messages.
fn select_group_by(plan: &LogicalPlan) -> Option<Vec<Expr>> {
    match plan {
        LogicalPlan::Aggregate(aggregate) => Some(aggregate.group_expr.clone()),
        other => other
            .inputs()
            .first()
            .and_then(|input| select_group_by(input)),
    }
}

/// Replaces `WINDOWSTART` and `WINDOWEND` in the projection and `HAVING` of a windowed
/// aggregation by the hidden aggregates that give each group its window's bounds; elsewhere
/// they are refused with the reason.
fn rewrite_window_bounds(select: &mut ast::Select, windowed: bool) -> Result<(), PlanError> {
    let bound = |expr: &ast::Expr| -> Option<&'static str> {
        let name = match expr {
            ast::Expr::Identifier(ident) => ident,
            ast::Expr::CompoundIdentifier(parts) if parts.len() == 2 => &parts[1],
            _ => return None,
        };
        match name.value.as_str() {
            WINDOWSTART => Some(WINDOWSTART_AGGREGATE),
            WINDOWEND => Some(WINDOWEND_AGGREGATE),
            _ => None,
        }
    };
    let mut misplaced = None;
    let mut check = |expr: &ast::Expr| {
        let _ = ast::visit_expressions(expr, |e| {
            if let Some(function) = bound(e) {
                misplaced.get_or_insert(function);
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
    };
    if let Some(selection) = &select.selection {
        check(selection);
    }
    if let GroupByExpr::Expressions(exprs, _) = &select.group_by {
        exprs.iter().for_each(&mut check);
    }
    if misplaced.is_some() {
        return Err(PlanError::Invalid(
            "WINDOWSTART and WINDOWEND can only be selected (or used in HAVING): they are the bounds of the window a group's row belongs to".into(),
        ));
    }
    let mut found = false;
    let mut rewrite = |expr: &mut ast::Expr| {
        let _ = ast::visit_expressions_mut(expr, |e| {
            if let Some(function) = bound(e) {
                found = true;
                let rowtime = match e {
                    ast::Expr::CompoundIdentifier(parts) => {
                        ast::Expr::CompoundIdentifier(vec![parts[0].clone(), quoted(ROWTIME)])
                    }
                    _ => ast::Expr::Identifier(quoted(ROWTIME)),
                };
                *e = hidden_aggregate(function, vec![rowtime]);
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
    };
    for item in &mut select.projection {
        if let SelectItem::UnnamedExpr(expr) = item {
            // `SELECT WINDOWSTART` keeps its name.
            if let Some(function) = bound(expr) {
                let name = if function == WINDOWSTART_AGGREGATE {
                    WINDOWSTART
                } else {
                    WINDOWEND
                };
                *item = SelectItem::ExprWithAlias {
                    expr: expr.clone(),
                    alias: quoted(name),
                };
            }
        }
        if let SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } = item {
            rewrite(expr);
        }
    }
    if let Some(having) = &mut select.having {
        rewrite(having);
    }
    if found && !windowed {
        return Err(PlanError::Invalid(
            "WINDOWSTART and WINDOWEND exist only in windowed aggregations\nhint: add WINDOW TUMBLING|HOPPING|SESSION (...) before GROUP BY".into(),
        ));
    }
    Ok(())
}

/// `eddy_rowtime(ROWTIME)`: the hidden aggregate that gives each group its event time.
fn rowtime_aggregate(rowtime: ast::Expr) -> ast::Expr {
    hidden_aggregate(ROWTIME_AGGREGATE, vec![rowtime])
}

/// A call of one of the planner's hidden aggregates.
fn hidden_aggregate(name: &str, args: Vec<ast::Expr>) -> ast::Expr {
    function_call(name, args)
}

/// A call of function `name` (unquoted: resolved as DataFusion resolves a written call).
fn function_call(name: &str, args: Vec<ast::Expr>) -> ast::Expr {
    ast::Expr::Function(ast::Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: ast::FunctionArguments::None,
        args: ast::FunctionArguments::List(ast::FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|arg| ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(arg)))
                .collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

/// The name of the first aggregate function called in `projection`, if any.
fn first_aggregate_call(projection: &[SelectItem]) -> Option<String> {
    let names = eddy_aggregate::AggregateSpec::function_names();
    let mut found = None;
    for item in projection {
        if let SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } = item {
            let _ = ast::visit_expressions(expr, |e| {
                if let ast::Expr::Function(function) = e {
                    let name = function.name.to_string().to_lowercase();
                    if names.contains(&name.as_str()) {
                        found = Some(name);
                        return std::ops::ControlFlow::Break(());
                    }
                }
                std::ops::ControlFlow::Continue(())
            });
        }
        if found.is_some() {
            break;
        }
    }
    found
}

/// `COUNT(DISTINCT x)` is `COUNT_DISTINCT(x)` (DataFusion would rewrite it into a nested
/// aggregation, which cannot run continuously).
fn rewrite_count_distinct(projection: &mut [SelectItem]) {
    for item in projection {
        if let SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } = item {
            rewrite_count_distinct_expr(expr);
        }
    }
}

/// The stream or table of `JOIN source [AS alias] ON ...` and its name in the query.
pub(crate) fn joined_table(
    join: &ast::Join,
    catalog: &Catalog,
) -> Result<(Source, String), PlanError> {
    use ast::JoinOperator as Op;
    match &join.join_operator {
        Op::Join(ast::JoinConstraint::On(_))
        | Op::Inner(ast::JoinConstraint::On(_))
        | Op::Left(ast::JoinConstraint::On(_))
        | Op::LeftOuter(ast::JoinConstraint::On(_))
        | Op::Right(ast::JoinConstraint::On(_))
        | Op::RightOuter(ast::JoinConstraint::On(_))
        | Op::FullOuter(ast::JoinConstraint::On(_)) => {}
        Op::Join(_)
        | Op::Inner(_)
        | Op::Left(_)
        | Op::LeftOuter(_)
        | Op::Right(_)
        | Op::RightOuter(_)
        | Op::FullOuter(_) => {
            return Err(PlanError::Invalid(
                "a join needs an ON condition (USING and NATURAL are not supported)".into(),
            ));
        }
        _ => {
            // `join` displays as `<OPERATOR> JOIN <relation> ...`: name the operator.
            let text = join.to_string();
            let operator = text.split(" JOIN").next().unwrap_or("this kind of").trim();
            return Err(PlanError::unsupported(
                &format!("{operator} joins"),
                true,
                None,
            ));
        }
    }
    let Some((name, qualifier)) = named_source(&join.relation) else {
        return Err(PlanError::unsupported(
            "joins of subqueries",
            true,
            Some("join a stream or a table by name"),
        ));
    };
    let joined = catalog.require_source(&name)?.clone();
    Ok((joined, qualifier))
}

/// Which sources join which: a stream joins a table, or a stream `WITHIN` a window; a table joins
/// a table.
fn check_join_kinds(
    left: &Source,
    right: &Source,
    within: Option<JoinWindow>,
) -> Result<(), PlanError> {
    use eddy_catalog::SourceKind::{Stream, Table};
    match (left.kind, right.kind, within) {
        (Stream, Stream, Some(_)) | (Stream | Table, Table, None) => Ok(()),
        (Stream, Stream, None) => Err(PlanError::Invalid(format!(
            "a join of two streams needs a time window: FROM {} JOIN {} WITHIN 1 HOUR ON ...\n\
             hint: WITHIN n UNIT [GRACE PERIOD m UNIT] pairs records at most n apart in event time",
            left.name, right.name
        ))),
        (Table, Stream, _) => Err(PlanError::Invalid(format!(
            "table \"{}\" cannot join stream \"{}\": a stream joins a table, not the reverse\n\
             hint: FROM {} JOIN {} ON ...",
            left.name, right.name, right.name, left.name
        ))),
        (_, Table, Some(_)) => Err(PlanError::Invalid(format!(
            "WITHIN belongs to a join of two streams, and \"{}\" is a table: a table's current \
             row joins without a time window",
            right.name
        ))),
    }
}

/// The name of a stream or table read by name (`FROM s [AS alias]`), and its name in the query
/// (the alias, else the name).
pub(crate) fn named_source(relation: &TableFactor) -> Option<(String, String)> {
    let TableFactor::Table {
        name,
        alias,
        args: None,
        ..
    } = relation
    else {
        return None;
    };
    let source_name = object_name_to_string(name);
    let qualifier = alias
        .as_ref()
        .map(|a| a.name.value.clone())
        .unwrap_or_else(|| source_name.clone());
    Some((source_name, qualifier))
}

/// `*` over a join means every key and value column of both sources, named as ksqlDB names
/// them: `<ALIAS>_<COLUMN>`; `alias.*` the columns of one source.
fn expand_join_wildcards(
    projection: &mut Vec<SelectItem>,
    sources: &[(&Source, &str)],
) -> Result<(), PlanError> {
    let columns = |source: &Source, qualifier: &str| {
        source
            .key_columns()
            .chain(source.value_columns())
            .map(|c| SelectItem::ExprWithAlias {
                expr: ast::Expr::CompoundIdentifier(vec![quoted(qualifier), quoted(&c.name)]),
                alias: quoted(&format!("{qualifier}_{}", c.name)),
            })
            .collect::<Vec<_>>()
    };
    let mut expanded = Vec::with_capacity(projection.len());
    for item in projection.drain(..) {
        match item {
            SelectItem::Wildcard(_) => {
                for (source, qualifier) in sources {
                    expanded.extend(columns(source, qualifier));
                }
            }
            SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(name), _) => {
                let name = object_name_to_string(&name);
                let Some((source, qualifier)) = sources
                    .iter()
                    .find(|(source, qualifier)| *qualifier == name || source.name == name)
                else {
                    return Err(PlanError::Invalid(format!(
                        "\"{name}\" in \"{name}.*\" is not a source of this query"
                    )));
                };
                expanded.extend(columns(source, qualifier));
            }
            other => expanded.push(other),
        }
    }
    *projection = expanded;
    Ok(())
}

/// Alias given to a subquery in `FROM` that has none, so hidden columns can name it.
const SUBQUERY_ALIAS: &str = "__eddy_subquery";

/// Prepares a subquery in `FROM` (`SELECT ... FROM (SELECT ... FROM s WHERE ...) GROUP BY ...`):
/// one `SELECT` over one stream or table, without `GROUP BY`, `LIMIT`, joins or further nesting.
/// Its projection is expanded and named like a top-level one, and it passes the source's
/// `ROWTIME`, `ROWPARTITION` and `ROWOFFSET` through so the outer query's hidden columns find them.
/// Returns the source's name.
fn prepare_subquery(subquery: &mut ast::Query, catalog: &Catalog) -> Result<String, PlanError> {
    let nested = || {
        PlanError::unsupported(
            "subqueries in FROM other than one SELECT over one stream or table",
            true,
            Some("write the inner query as its own CREATE STREAM ... AS SELECT"),
        )
    };
    if subquery.limit_clause.is_some() || subquery.order_by.is_some() || subquery.with.is_some() {
        return Err(nested());
    }
    let SetExpr::Select(select) = subquery.body.as_mut() else {
        return Err(nested());
    };
    if select.from.len() != 1
        || !select.from[0].joins.is_empty()
        || select.distinct.is_some()
        || select.having.is_some()
        || !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty())
    {
        return Err(nested());
    }
    let Some((source_name, qualifier)) = named_source(&select.from[0].relation) else {
        return Err(nested());
    };
    let source = catalog.require_source(&source_name)?;
    expand_wildcards(&mut select.projection, source, &qualifier)?;
    rename_explode(&mut select.projection);
    for item in &mut select.projection {
        if let SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } = item {
            type_integer_literals(expr);
        }
    }
    if let Some(selection) = &mut select.selection {
        type_integer_literals(selection);
    }
    name_output_columns(&mut select.projection)?;
    for pseudo in [ROWTIME, eddy_catalog::ROWPARTITION, eddy_catalog::ROWOFFSET] {
        let selected = select.projection.iter().any(
            |item| matches!(item, SelectItem::ExprWithAlias { alias, .. } if alias.value == pseudo),
        );
        if !selected {
            select.projection.push(SelectItem::ExprWithAlias {
                expr: ast::Expr::CompoundIdentifier(vec![quoted(&qualifier), quoted(pseudo)]),
                alias: quoted(pseudo),
            });
        }
    }
    Ok(source_name)
}

/// ksqlDB's table function `EXPLODE(array)` is DataFusion's `UNNEST(array)`.
fn rename_explode(projection: &mut [SelectItem]) {
    for item in projection {
        if let SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } = item {
            let _ = ast::visit_expressions_mut(expr, |e| {
                if let ast::Expr::Function(function) = e
                    && function.name.to_string().eq_ignore_ascii_case("explode")
                {
                    function.name = ObjectName::from(vec![Ident::new("unnest")]);
                }
                std::ops::ControlFlow::<()>::Continue(())
            });
        }
    }
}

fn rewrite_count_distinct_expr(expr: &mut ast::Expr) {
    let _ = ast::visit_expressions_mut(expr, |e| {
        if let ast::Expr::Function(function) = e
            && function.name.to_string().eq_ignore_ascii_case("count")
            && let ast::FunctionArguments::List(list) = &mut function.args
            && matches!(
                list.duplicate_treatment,
                Some(ast::DuplicateTreatment::Distinct)
            )
        {
            list.duplicate_treatment = None;
            function.name = ObjectName::from(vec![Ident::new("count_distinct")]);
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

/// Removes a standard `LIMIT n` from the query and returns n.
fn take_limit(query: &mut ast::Query) -> Result<Option<u64>, PlanError> {
    let Some(clause) = query.limit_clause.take() else {
        return Ok(None);
    };
    let limit = match &clause {
        ast::LimitClause::LimitOffset {
            limit: Some(limit),
            offset: None,
            limit_by,
        } if limit_by.is_empty() => limit,
        _ => return Err(PlanError::unsupported("OFFSET", false, None)),
    };
    match limit {
        ast::Expr::Value(value) => match &value.value {
            ast::Value::Number(n, _) => n.parse::<u64>().map(Some).map_err(|_| {
                PlanError::Invalid(format!("LIMIT must be a non-negative integer, found {n}"))
            }),
            other => Err(PlanError::Invalid(format!(
                "LIMIT must be a non-negative integer, found {other}"
            ))),
        },
        other => Err(PlanError::Invalid(format!(
            "LIMIT must be a non-negative integer, found {other}"
        ))),
    }
}

pub(crate) fn quoted(name: &str) -> Ident {
    Ident::with_quote('"', name)
}

pub(crate) fn object_name_to_string(name: &ObjectName) -> String {
    name.0
        .last()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => ident.value.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

/// Makes integer literals that fit 32 bits `INT`s, as ksqlDB types them (DataFusion's are BIGINT).
fn type_integer_literals(expr: &mut ast::Expr) {
    let _ = ast::visit_expressions_mut(expr, |e| {
        if let ast::Expr::Value(value) = e
            && let ast::Value::Number(text, _) = &value.value
            && text.parse::<i32>().is_ok()
        {
            *e = ast::Expr::Cast {
                kind: ast::CastKind::Cast,
                expr: Box::new(e.clone()),
                data_type: ast::DataType::Int(None),
                array: false,
                format: None,
            };
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

/// The output name of a projection item that has one without an alias.
fn natural_name(item: &SelectItem) -> Option<String> {
    match item {
        SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.clone()),
        SelectItem::UnnamedExpr(ast::Expr::Identifier(ident)) => Some(ident.value.clone()),
        SelectItem::UnnamedExpr(ast::Expr::CompoundIdentifier(parts)) => {
            parts.last().map(|p| p.value.clone())
        }
        SelectItem::UnnamedExpr(expr) => struct_field_name(expr),
        _ => None,
    }
}

/// `get_field(s, 'CITY')` (written `s->city`) is named after its field, as in ksqlDB.
fn struct_field_name(expr: &ast::Expr) -> Option<String> {
    let ast::Expr::Function(function) = expr else {
        return None;
    };
    if function.name.to_string() != "get_field" {
        return None;
    }
    let ast::FunctionArguments::List(list) = &function.args else {
        return None;
    };
    match list.args.get(1) {
        Some(ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(ast::Expr::Value(value)))) => {
            match &value.value {
                ast::Value::SingleQuotedString(field) => Some(field.clone()),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Names every output column as ksqlDB does: aliases and column names as they are, struct fields
/// after the field, any other expression `KSQL_COL_n` (n counting from 0, skipping taken names).
/// Two columns with one name are an error.
fn name_output_columns(projection: &mut [SelectItem]) -> Result<(), PlanError> {
    let mut taken: Vec<String> = projection.iter().filter_map(natural_name).collect();
    let mut next = 0;
    for item in projection.iter_mut() {
        if natural_name(item).is_some() {
            continue;
        }
        if let SelectItem::UnnamedExpr(expr) = item {
            let name = loop {
                let candidate = format!("KSQL_COL_{next}");
                next += 1;
                if !taken.contains(&candidate) {
                    break candidate;
                }
            };
            taken.push(name.clone());
            *item = SelectItem::ExprWithAlias {
                expr: expr.clone(),
                alias: quoted(&name),
            };
        }
    }
    for item in projection.iter_mut() {
        if let (SelectItem::UnnamedExpr(expr), Some(name)) = (&*item, natural_name(item))
            && !matches!(
                expr,
                ast::Expr::Identifier(_) | ast::Expr::CompoundIdentifier(_)
            )
        {
            *item = SelectItem::ExprWithAlias {
                expr: expr.clone(),
                alias: quoted(&name),
            };
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for name in projection.iter().filter_map(natural_name) {
        if !seen.insert(name.clone()) {
            return Err(PlanError::DuplicateColumn { column: name });
        }
    }
    Ok(())
}

/// ksqlDB's `SELECT *` means the key and value columns, not the pseudo-columns.
fn expand_wildcards(
    projection: &mut Vec<SelectItem>,
    source: &Source,
    qualifier: &str,
) -> Result<(), PlanError> {
    let columns = || {
        source
            .key_columns()
            .chain(source.value_columns())
            .map(|c| {
                SelectItem::UnnamedExpr(ast::Expr::CompoundIdentifier(vec![
                    quoted(qualifier),
                    quoted(&c.name),
                ]))
            })
            .collect::<Vec<_>>()
    };
    let mut expanded = Vec::with_capacity(projection.len());
    for item in projection.drain(..) {
        match item {
            SelectItem::Wildcard(_) => expanded.extend(columns()),
            SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(name), _) => {
                let name = object_name_to_string(&name);
                if name != qualifier && name != source.name {
                    return Err(PlanError::Invalid(format!(
                        "\"{name}\" in \"{name}.*\" is not a source of this query"
                    )));
                }
                expanded.extend(columns());
            }
            other => expanded.push(other),
        }
    }
    *projection = expanded;
    Ok(())
}

/// ksqlDB names the key column after a `PARTITION BY` column, or `KSQL_COL_n` for an expression.
fn partition_key_name(expr: &ast::Expr, index: usize) -> String {
    match expr {
        ast::Expr::Identifier(ident) => ident.value.clone(),
        ast::Expr::CompoundIdentifier(parts) => {
            parts.last().map(|p| p.value.clone()).unwrap_or_default()
        }
        _ => format!("KSQL_COL_{index}"),
    }
}

fn sink_column(name: &str, data_type: &DataType, role: ColumnRole) -> Result<Column, PlanError> {
    let sql_type =
        SqlType::from_arrow(data_type).ok_or_else(|| PlanError::UnsupportedOutputType {
            column: name.to_owned(),
            data_type: data_type.clone(),
        })?;
    Ok(Column {
        name: name.to_owned(),
        sql_type,
        role,
    })
}

pub(crate) fn nullable_schema(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ))
}

/// Turns DataFusion's unknown-column errors into Eddy's, with a suggestion.
fn explain_error(error: DataFusionError, source: &Source) -> PlanError {
    if let DataFusionError::SchemaError(schema_error, _) = error.find_root()
        && let SchemaError::FieldNotFound { field, .. } = schema_error.as_ref()
    {
        let column = field.name.clone();
        let candidates = source
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .chain(PSEUDO_COLUMNS);
        let suggestion = closest_name(&column, candidates);
        return PlanError::UnknownColumn {
            column,
            kind: source.kind.noun(),
            source_name: source.name.clone(),
            suggestion,
        };
    }
    // EXPLODE is DataFusion's UNNEST under ksqlDB's name: speak of what the user wrote.
    if error
        .to_string()
        .contains("unnest() can only be applied to")
    {
        return PlanError::Invalid("EXPLODE takes an ARRAY".into());
    }
    PlanError::DataFusion(error)
}

pub(crate) fn closest_name<'a>(
    name: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<String> {
    let upper = name.to_uppercase();
    candidates
        .map(|c| (strsim_distance(&upper, &c.to_uppercase()), c))
        .filter(|(d, _)| *d <= (name.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_owned())
}

fn strsim_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            current[j + 1] = (previous[j] + usize::from(ca != *cb))
                .min(previous[j + 1] + 1)
                .min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// Rewrites an optimized logical plan into stages over the source's batches.
fn lower(
    plan: &LogicalPlan,
    state: &SessionState,
    source: &Source,
) -> Result<Vec<Stage>, PlanError> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            if scan.table_name.table() != source.name {
                return Err(PlanError::Invalid(format!(
                    "internal error: unexpected scan of {}",
                    scan.table_name
                )));
            }
            let mut stages = Vec::new();
            if let Some(indices) = &scan.projection {
                let all: Vec<usize> = (0..source.arrow_schema().fields().len()).collect();
                if indices != &all {
                    stages.push(Stage::Select {
                        indices: indices.clone(),
                    });
                }
            }
            if let Some(predicate) = scan.filters.iter().cloned().reduce(Expr::and) {
                stages.push(Stage::Filter(physical(
                    state,
                    predicate,
                    &scan.projected_schema,
                )?));
            }
            Ok(stages)
        }
        LogicalPlan::Filter(filter) => {
            let mut stages = lower(&filter.input, state, source)?;
            stages.push(Stage::Filter(physical(
                state,
                filter.predicate.clone(),
                filter.input.schema(),
            )?));
            Ok(stages)
        }
        LogicalPlan::Projection(projection) => {
            let mut stages = lower(&projection.input, state, source)?;
            let exprs = projection
                .expr
                .iter()
                .map(|expr| physical(state, expr.clone(), projection.input.schema()))
                .collect::<Result<Vec<_>, _>>()?;
            stages.push(Stage::Project {
                exprs,
                schema: nullable_schema(projection.schema.as_arrow()),
            });
            Ok(stages)
        }
        LogicalPlan::SubqueryAlias(alias) => lower(&alias.input, state, source),
        LogicalPlan::Aggregate(_) => Err(PlanError::unsupported("aggregate functions", true, None)),
        LogicalPlan::Join(_) => Err(PlanError::unsupported("joins", true, None)),
        LogicalPlan::Window(_) => Err(PlanError::unsupported(
            "window functions (OVER)",
            true,
            None,
        )),
        LogicalPlan::Unnest(unnest) => {
            if !unnest.struct_type_columns.is_empty() {
                return Err(PlanError::unsupported(
                    "EXPLODE of a STRUCT",
                    false,
                    Some("EXPLODE takes an ARRAY"),
                ));
            }
            if unnest.list_type_columns.iter().any(|(_, l)| l.depth != 1) {
                return Err(PlanError::unsupported("nested EXPLODE", false, None));
            }
            let input_schema = unnest.input.schema();
            let lists: Vec<usize> = unnest.list_type_columns.iter().map(|(i, _)| *i).collect();
            if let Some(&i) = lists
                .iter()
                .find(|&&i| !matches!(input_schema.field(i).data_type(), DataType::List(_)))
            {
                return Err(PlanError::Invalid(format!(
                    "EXPLODE takes an ARRAY, not {}",
                    input_schema.field(i).data_type()
                )));
            }
            let mut stages = lower(&unnest.input, state, source)?;
            stages.push(Stage::Unnest {
                lists,
                sources: unnest.dependency_indices.clone(),
                schema: nullable_schema(unnest.schema.as_arrow()),
            });
            Ok(stages)
        }
        LogicalPlan::Sort(_) => Err(PlanError::unsupported("ORDER BY", false, None)),
        LogicalPlan::Distinct(_) => Err(PlanError::unsupported("SELECT DISTINCT", false, None)),
        LogicalPlan::EmptyRelation(_) => Err(PlanError::Invalid(
            "a continuous query must read FROM a stream or table".into(),
        )),
        other => Err(PlanError::unsupported(
            &format!("\"{}\"", other.display()),
            false,
            None,
        )),
    }
}

pub(crate) fn physical(
    state: &SessionState,
    expr: Expr,
    schema: &DFSchema,
) -> Result<Arc<dyn PhysicalExpr>, PlanError> {
    Ok(state.create_physical_expr(expr, schema)?)
}

#[cfg(test)]
mod tests;
