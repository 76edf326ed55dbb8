//! Pull queries: `SELECT ... FROM table` without `EMIT CHANGES`, answered from RocksDB.
//!
//! Every materialized table is a DataFusion `TableProvider` over its store, so any SQL runs over
//! it (filters on values, `ORDER BY`, `LIMIT`, aggregates, joins of tables). Conditions on the key
//! (`=`, `IN`, `<`, `<=`, `>`, `>=`, `BETWEEN`; all key columns for multi-column keys) are pushed
//! into the scan, which then reads only those keys or that key range instead of the whole table:
//! group keys are stored in arrow's row format, whose byte order is the value order.

use std::collections::HashSet;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session as DfSession;
use datafusion::common::{DataFusionError, ScalarValue, TableReference};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::parser::Statement as DfStatement;
use eddy_catalog::{ROWTIME, SourceKind};
use eddy_runtime::PullView;
use sqlparser::ast;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::execute::SelectParts;
use crate::{Session, StatementResult};

/// Session property that makes pull queries wait until the tables they read have processed
/// everything their inputs held when the query arrived.
pub(crate) const READ_YOUR_WRITES: &str = "eddy.read_your_writes";

/// Session property holding a token returned by `INSERT ... VALUES` (`topic@partition:offset`):
/// pull queries wait until the tables they read have processed that record, so one client can
/// read what another wrote.
pub(crate) const READ_AFTER: &str = "eddy.read_after";

/// Session property that overrides `EngineConfig::read_your_writes_timeout_ms`.
pub(crate) const READ_YOUR_WRITES_TIMEOUT_MS: &str = "eddy.read_your_writes_timeout_ms";

/// Longest read-your-writes wait a session may ask for.
const MAX_READ_YOUR_WRITES_TIMEOUT_MS: u64 = 600_000;

impl Engine {
    /// Runs a pull query.
    pub(crate) async fn pull_query(
        &self,
        session: &Session,
        select: &SelectParts<'_>,
    ) -> Result<StatementResult, EngineError> {
        if select.window.is_some() {
            return Err(EngineError::invalid_with_hint(
                "a WINDOW clause needs EMIT CHANGES or EMIT FINAL: without EMIT the SELECT is a pull query, which reads the windows a windowed table holds",
                "filter a windowed table's rows on WINDOWSTART and WINDOWEND",
            ));
        }
        let catalog = self.catalog();
        let mut tables = Vec::new();
        let mut unknown = None;
        let _ = ast::visit_relations(select.query, |relation| {
            let name = relation_name(relation);
            if !tables.contains(&name) {
                tables.push(name);
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
        let mut views = Vec::new();
        for name in &tables {
            let source = match catalog.require_source(name) {
                Ok(source) => source,
                Err(error) => {
                    unknown.get_or_insert(error);
                    continue;
                }
            };
            match self.view(name) {
                Some(view) => views.push((name.clone(), view)),
                None if source.kind == SourceKind::Stream => {
                    return Err(EngineError::invalid_with_hint(
                        format!("pull queries cannot read stream \"{name}\""),
                        "add EMIT CHANGES to run a push query that streams rows as they arrive",
                    ));
                }
                None => {
                    return Err(EngineError::invalid_with_hint(
                        format!(
                            "table \"{name}\" is not materialized: no query on this server keeps its state"
                        ),
                        "pull queries read tables created by CREATE TABLE ... AS SELECT; add EMIT CHANGES to stream its changes instead",
                    ));
                }
            }
        }
        if let Some(error) = unknown {
            return Err(error.into());
        }
        if views.is_empty() {
            return Err(EngineError::invalid(
                "a pull query must read FROM a materialized table",
            ));
        }
        let read_after = session
            .properties
            .get(READ_AFTER)
            .map(|token| parse_token(token))
            .transpose()?
            .map(|(topic, partition, offset)| {
                (self.inner.config.physical_topic(&topic), partition, offset)
            });
        let read_your_writes = session
            .properties
            .get(READ_YOUR_WRITES)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if read_your_writes || read_after.is_some() {
            let timeout_ms = match session.properties.get(READ_YOUR_WRITES_TIMEOUT_MS) {
                Some(value) => value
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms <= MAX_READ_YOUR_WRITES_TIMEOUT_MS)
                    .ok_or_else(|| {
                        EngineError::invalid(format!(
                            "invalid value '{value}' for property '{READ_YOUR_WRITES_TIMEOUT_MS}'; \
                             expected milliseconds from 0 to {MAX_READ_YOUR_WRITES_TIMEOUT_MS}"
                        ))
                    })?,
                None => self.inner.config.read_your_writes_timeout_ms,
            };
            for (name, _) in &views {
                let target = if read_your_writes {
                    None
                } else {
                    read_after.clone()
                };
                self.wait_for_inputs(name, Duration::from_millis(timeout_ms), target)
                    .await?;
            }
        }
        let ctx = SessionContext::new_with_state(self.inner.planner.pull_state()?);
        for (name, view) in views {
            let provider = StateTable::new(view, self.inner.config.pull_query_max_rows)?;
            ctx.register_table(TableReference::bare(name.as_str()), Arc::new(provider))
                .map_err(pull_error)?;
        }
        let mut query = select.query.clone();
        expand_wildcards(&mut query, &catalog);
        if let Some(limit) = select.limit {
            query.limit_clause = Some(ast::LimitClause::LimitOffset {
                limit: Some(ast::Expr::value(ast::Value::Number(
                    limit.to_string(),
                    false,
                ))),
                offset: None,
                limit_by: vec![],
            });
        }
        let state = ctx.state();
        eddy_planner::Planner::reject_aggregates_in_group_by(&query, &state)?;
        let statement = DfStatement::Statement(Box::new(ast::Statement::Query(Box::new(query))));
        let plan = state
            .statement_to_plan(statement)
            .await
            .map_err(pull_error)?;
        let frame = ctx.execute_logical_plan(plan).await.map_err(pull_error)?;
        let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame.collect().await.map_err(pull_error)?;
        Ok(StatementResult::Rows { schema, batches })
    }

    /// Waits until the query that materializes `table` has processed every record its inputs held
    /// when this was called (each query of a repartitioned chain in turn, the right side of a
    /// join that reads it itself, and every event a generated source had made). With `target` (a
    /// physical topic, partition and offset), the first input of the chain that reads that topic
    /// waits for that record only, and the inputs before it not at all.
    async fn wait_for_inputs(
        &self,
        table: &str,
        timeout: Duration,
        target: Option<(String, i32, i64)>,
    ) -> Result<(), EngineError> {
        let writer = self
            .catalog()
            .writers_of(table)
            .first()
            .cloned()
            .ok_or_else(|| EngineError::Internal(format!("no query writes \"{table}\"")))?;
        let chain = self
            .inner
            .queries
            .lock()
            .map_err(|_| crate::engine::poisoned())?
            .get(&writer)
            .map(|q| q.progress_chain())
            .unwrap_or_default();
        let deadline = tokio::time::Instant::now() + timeout;
        let connection = &self.inner.connection;
        let token_stage = match &target {
            Some((topic, ..)) => Some(
                chain
                    .iter()
                    .position(|progress| progress.topic == *topic)
                    .ok_or_else(|| {
                        EngineError::invalid(format!(
                            "the read-after token is for topic \"{}\", which table \"{table}\" does not read",
                            self.inner.config.logical_topic(topic).unwrap_or(topic)
                        ))
                    })?,
            ),
            None => None,
        };
        for (stage, progress) in chain.into_iter().enumerate() {
            if token_stage.is_some_and(|token| stage < token) {
                continue;
            }
            if progress.topic.is_empty() {
                // A generated source (one partition, no topic): what its generator has handed
                // to the query so far is what a high watermark is to a topic.
                if let Some(high) = progress.generated().filter(|high| *high > 0) {
                    wait_until_processed(&progress, 0, high, deadline, table, timeout).await?;
                }
                continue;
            }
            let mut watermarks = connection.watermarks(&progress.topic).await?;
            if let Some((_, partition, offset)) =
                target.as_ref().filter(|_| Some(stage) == token_stage)
            {
                // Wait for the token's record only: every other partition counts as caught up.
                for (p, (low, high)) in watermarks.iter_mut().enumerate() {
                    if p as i32 == *partition {
                        *low = 0;
                        *high = offset + 1;
                    } else {
                        *high = *low;
                    }
                }
            }
            // A partition with nothing new since the last commit gets no batch, hence no progress
            // in memory: what the group committed counts too (it is only committed once processed).
            let committed = connection
                .committed_offsets(&progress.group_id, &progress.topic, watermarks.len() as i32)
                .await?;
            for (partition, (low, high)) in watermarks.into_iter().enumerate() {
                let committed = committed.get(partition).copied().flatten();
                let partition = partition as i32;
                // An aggregation's progress appears once its state is restored; before, what the
                // group committed does not mean the state holds it.
                let committed = committed.filter(|_| !progress.stateful);
                if high <= low || committed.is_some_and(|c| c >= high) {
                    continue;
                }
                wait_until_processed(&progress, partition, high, deadline, table, timeout).await?;
            }
        }
        Ok(())
    }
}

/// Waits until `progress` has processed `partition` up to (not including) offset `high`, failing
/// at `deadline` (`timeout` after the wait for `table` began).
async fn wait_until_processed(
    progress: &eddy_runtime::QueryProgress,
    partition: i32,
    high: i64,
    deadline: tokio::time::Instant,
    table: &str,
    timeout: Duration,
) -> Result<(), EngineError> {
    while progress.processed(partition).is_none_or(|next| next < high) {
        if tokio::time::Instant::now() >= deadline {
            return Err(EngineError::invalid_with_hint(
                format!(
                    "table \"{table}\" did not catch up with its input within {} ms",
                    timeout.as_millis()
                ),
                "the query may be failing or far behind; see DESCRIBE EXTENDED, or SET 'eddy.read_your_writes_timeout_ms'",
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// The table a (possibly qualified) name refers to: its last part.
fn relation_name(name: &ast::ObjectName) -> String {
    name.0
        .last()
        .map(|part| match part {
            ast::ObjectNamePart::Identifier(ident) => ident.value.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

/// Parses a read-after token `topic@partition:offset` (as `INSERT ... VALUES` returns it).
fn parse_token(token: &str) -> Result<(String, i32, i64), EngineError> {
    let parsed = token.rsplit_once('@').and_then(|(topic, position)| {
        let (partition, offset) = position.split_once(':')?;
        Some((
            topic.to_owned(),
            partition.trim().parse::<i32>().ok()?,
            offset.trim().parse::<i64>().ok()?,
        ))
    });
    parsed
        .filter(|(topic, _, _)| !topic.is_empty())
        .ok_or_else(|| {
            EngineError::invalid_with_hint(
                format!("invalid read-after token '{token}'"),
                "use the token INSERT ... VALUES returned, such as 'orders@0:42'",
            )
        })
}

/// The read-after token of a record: `topic@partition:offset`.
pub(crate) fn read_after_token(topic: &str, partition: i32, offset: i64) -> String {
    format!("{topic}@{partition}:{offset}")
}

/// ksqlDB's `SELECT *` means the key and value columns, not `ROWTIME`: expands `*` and `t.*` of the
/// top-level `SELECT` into those columns of each table in `FROM`.
fn expand_wildcards(query: &mut ast::Query, catalog: &eddy_catalog::Catalog) {
    let ast::SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    let mut relations: Vec<(String, String)> = Vec::new(); // (qualifier, table)
    for table in &select.from {
        let factors =
            std::iter::once(&table.relation).chain(table.joins.iter().map(|j| &j.relation));
        for factor in factors {
            if let ast::TableFactor::Table { name, alias, .. } = factor {
                let table_name = relation_name(name);
                let qualifier = alias
                    .as_ref()
                    .map(|a| a.name.value.clone())
                    .unwrap_or_else(|| table_name.clone());
                relations.push((qualifier, table_name));
            }
        }
    }
    let columns_of = |qualifier: &str, table: &str| -> Vec<ast::SelectItem> {
        catalog
            .source(table)
            .map(|source| {
                let item = |name: &str| {
                    ast::SelectItem::UnnamedExpr(ast::Expr::CompoundIdentifier(vec![
                        ast::Ident::with_quote('"', qualifier),
                        ast::Ident::with_quote('"', name),
                    ]))
                };
                let mut items: Vec<ast::SelectItem> =
                    source.key_columns().map(|c| item(&c.name)).collect();
                // A windowed table's window follows its key, as in ksqlDB.
                if source.window.is_some() {
                    for name in [eddy_planner::WINDOWSTART, eddy_planner::WINDOWEND] {
                        if !source.value_columns().any(|c| c.name == name) {
                            items.push(item(name));
                        }
                    }
                }
                items.extend(source.value_columns().map(|c| item(&c.name)));
                items
            })
            .unwrap_or_default()
    };
    let mut expanded = Vec::with_capacity(select.projection.len());
    for item in select.projection.drain(..) {
        match item {
            ast::SelectItem::Wildcard(_) => {
                for (qualifier, table) in &relations {
                    expanded.extend(columns_of(qualifier, table));
                }
            }
            ast::SelectItem::QualifiedWildcard(
                ast::SelectItemQualifiedWildcardKind::ObjectName(name),
                options,
            ) => {
                let qualifier = name.to_string().trim_matches('"').to_owned();
                match relations.iter().find(|(q, _)| *q == qualifier) {
                    Some((q, table)) => expanded.extend(columns_of(q, table)),
                    None => expanded.push(ast::SelectItem::QualifiedWildcard(
                        ast::SelectItemQualifiedWildcardKind::ObjectName(name),
                        options,
                    )),
                }
            }
            other => expanded.push(other),
        }
    }
    select.projection = expanded;
}

fn pull_error(error: DataFusionError) -> EngineError {
    EngineError::Plan(eddy_planner::PlanError::DataFusion(error))
}

/// A materialized table as DataFusion sees it: its key and value columns, then `ROWTIME`.
struct StateTable {
    view: Arc<dyn PullView>,
    schema: SchemaRef,
    /// Output columns of the view's plan, in table order.
    columns: Vec<usize>,
    key_count: usize,
    max_rows: usize,
}

impl std::fmt::Debug for StateTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateTable")
            .field("store", &self.view.store().name())
            .field("schema", &self.schema)
            .finish()
    }
}

impl StateTable {
    fn new(view: Arc<dyn PullView>, max_rows: usize) -> Result<Self, EngineError> {
        let plan = view.plan();
        let mut columns: Vec<usize> = plan.key_columns.clone();
        columns.extend(&plan.value_columns);
        let mut fields: Vec<Field> = plan
            .sink_columns
            .iter()
            .map(|c| Field::new(&c.name, c.sql_type.to_arrow(), true))
            .collect();
        if fields.len() != columns.len() {
            return Err(EngineError::Internal(
                "table columns do not match the plan".into(),
            ));
        }
        // A windowed table's rows are (key, window): WINDOWSTART and WINDOWEND follow the key
        // columns, unless the query selected them into the value already.
        if let Some(window) = plan.window_columns {
            let key_count = plan.key_columns.len();
            for (offset, (name, column)) in [
                (eddy_planner::WINDOWSTART, window.start),
                (eddy_planner::WINDOWEND, window.end),
            ]
            .into_iter()
            .enumerate()
            {
                if fields.iter().any(|f| f.name() == name) {
                    continue;
                }
                let at = (key_count + offset).min(fields.len());
                fields.insert(at, Field::new(name, DataType::Int64, true));
                columns.insert(at, column);
            }
        }
        fields.push(Field::new(ROWTIME, DataType::Int64, true));
        columns.push(plan.rowtime_column);
        Ok(Self {
            key_count: plan.key_columns.len(),
            view,
            schema: Arc::new(Schema::new(fields)),
            columns,
            max_rows,
        })
    }

    /// The key column a filter constrains, with the constraint; `None` if it is not a key filter.
    fn key_constraint(&self, filter: &Expr) -> Option<(usize, KeyConstraint)> {
        let key_index = |expr: &Expr| -> Option<usize> {
            match expr {
                Expr::Column(column) => self
                    .schema
                    .index_of(&column.name)
                    .ok()
                    .filter(|i| *i < self.key_count),
                _ => None,
            }
        };
        let literal = |expr: &Expr| -> Option<ScalarValue> {
            match expr {
                Expr::Literal(value, _) if !value.is_null() => Some(value.clone()),
                _ => None,
            }
        };
        match filter {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (column, value, op) = match (key_index(left), literal(right)) {
                    (Some(column), Some(value)) => (column, value, *op),
                    _ => match (key_index(right), literal(left)) {
                        (Some(column), Some(value)) => (column, value, op.swap()?),
                        _ => return None,
                    },
                };
                let constraint = match op {
                    Operator::Eq => KeyConstraint::Points(vec![value]),
                    Operator::Gt => KeyConstraint::Range(Bound::Excluded(value), Bound::Unbounded),
                    Operator::GtEq => {
                        KeyConstraint::Range(Bound::Included(value), Bound::Unbounded)
                    }
                    Operator::Lt => KeyConstraint::Range(Bound::Unbounded, Bound::Excluded(value)),
                    Operator::LtEq => {
                        KeyConstraint::Range(Bound::Unbounded, Bound::Included(value))
                    }
                    _ => return None,
                };
                Some((column, constraint))
            }
            Expr::InList(in_list) if !in_list.negated => {
                let column = key_index(&in_list.expr)?;
                let values = in_list
                    .list
                    .iter()
                    .map(literal)
                    .collect::<Option<Vec<_>>>()?;
                Some((column, KeyConstraint::Points(values)))
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) => {
                let column = key_index(expr)?;
                Some((
                    column,
                    KeyConstraint::Range(
                        Bound::Included(literal(low)?),
                        Bound::Included(literal(high)?),
                    ),
                ))
            }
            _ => None,
        }
    }

    /// What to read, from the pushed-down filters.
    fn selection(&self, filters: &[Expr]) -> Selection {
        let mut points: Vec<Option<Vec<ScalarValue>>> = vec![None; self.key_count];
        let mut lower = Bound::Unbounded;
        let mut upper = Bound::Unbounded;
        for filter in filters {
            match self.key_constraint(filter) {
                Some((column, KeyConstraint::Points(values))) => {
                    points[column] = Some(match points[column].take() {
                        // Two equality filters on one column: only values in both can match.
                        Some(previous) => previous
                            .into_iter()
                            .filter(|v| values.contains(v))
                            .collect(),
                        None => values,
                    });
                }
                Some((0, KeyConstraint::Range(low, high))) if self.key_count == 1 => {
                    lower = tighter(lower, low, true);
                    upper = tighter(upper, high, false);
                }
                _ => {}
            }
        }
        if points.iter().all(Option::is_some) {
            let columns: Vec<Vec<ScalarValue>> = points.into_iter().flatten().collect();
            return Selection::Points(columns);
        }
        if self.key_count == 1
            && !(matches!(lower, Bound::Unbounded) && matches!(upper, Bound::Unbounded))
        {
            return Selection::Range(lower, upper);
        }
        Selection::All
    }

    /// Encodes one key column's values, or `None` when a value does not fit the key's type.
    fn encode(&self, values: &[Vec<ScalarValue>]) -> Option<Vec<Vec<u8>>> {
        // The cartesian product of every column's values: each is one full key.
        let mut keys: Vec<Vec<ScalarValue>> = vec![Vec::new()];
        for (column, column_values) in values.iter().enumerate() {
            let data_type = self.schema.field(column).data_type();
            let mut next = Vec::with_capacity(keys.len() * column_values.len());
            for key in &keys {
                for value in column_values {
                    let value = value.cast_to(data_type).ok()?;
                    let mut key = key.clone();
                    key.push(value);
                    next.push(key);
                }
            }
            keys = next;
            if keys.len() > self.max_rows {
                return None;
            }
        }
        if keys.is_empty() {
            return Some(Vec::new());
        }
        let arrays: Vec<ArrayRef> = (0..values.len())
            .map(|column| {
                ScalarValue::iter_to_array(keys.iter().map(|key| key[column].clone())).ok()
            })
            .collect::<Option<Vec<_>>>()?;
        self.view.encode_keys(&arrays).ok()
    }

    fn encode_bound(&self, bound: Bound<ScalarValue>) -> Option<Bound<Vec<u8>>> {
        let encode_one = |value: ScalarValue| -> Option<Vec<u8>> {
            self.encode(&[vec![value]])?.into_iter().next()
        };
        Some(match bound {
            Bound::Included(value) => Bound::Included(encode_one(value)?),
            Bound::Excluded(value) => Bound::Excluded(encode_one(value)?),
            Bound::Unbounded => Bound::Unbounded,
        })
    }

    /// Reads the selected entries of every partition.
    fn read(&self, selection: Selection) -> Result<Vec<Entry>, DataFusionError> {
        let store = self.view.store();
        let partitions = store.partitions().map_err(external)?;
        let mut entries = Vec::new();
        let too_many = |count: usize| -> Result<(), DataFusionError> {
            if count > self.max_rows {
                return Err(DataFusionError::Execution(format!(
                    "the pull query reads more than {} rows of the table\nhint: filter on the key, or raise eddy.pull_query_max_rows",
                    self.max_rows
                )));
            }
            Ok(())
        };
        let windowed = self.view.window().is_some();
        let (lower, upper) = match selection {
            // A windowed table's key is the prefix of its windows' keys.
            Selection::Points(values) if windowed => {
                let Some(keys) = self.encode(&values) else {
                    return self.read(Selection::All);
                };
                let mut seen: HashSet<&[u8]> = HashSet::new();
                for partition in partitions {
                    for key in keys.iter().filter(|k| seen.insert(k)) {
                        for entry in store.scan_prefix(partition, key).map_err(external)? {
                            let (key, value) = entry.map_err(external)?;
                            entries.push((key.into_vec(), value.into_vec()));
                            too_many(entries.len())?;
                        }
                    }
                    seen.clear();
                }
                return Ok(entries);
            }
            Selection::Points(values) => {
                let Some(keys) = self.encode(&values) else {
                    return self.read(Selection::All);
                };
                let mut seen: HashSet<&[u8]> = HashSet::new();
                let keys: Vec<&[u8]> = keys
                    .iter()
                    .map(Vec::as_slice)
                    .filter(|k| seen.insert(k))
                    .collect();
                for partition in partitions {
                    let found = store.multi_get(partition, &keys).map_err(external)?;
                    for (key, value) in keys.iter().zip(found) {
                        if let Some(value) = value {
                            entries.push((key.to_vec(), value));
                        }
                    }
                }
                return Ok(entries);
            }
            Selection::Range(lower, upper) => {
                match (self.encode_bound(lower), self.encode_bound(upper)) {
                    // Every window of a key sorts after the key's bytes and before their
                    // successor: `key > k` starts after all of k's windows, `key <= k` ends there.
                    (Some(lower), Some(upper)) if windowed => {
                        let after = |k: Vec<u8>| match eddy_state::prefix_successor(&k) {
                            Some(next) => Bound::Excluded(next),
                            None => Bound::Unbounded,
                        };
                        let lower = match lower {
                            Bound::Excluded(k) => match eddy_state::prefix_successor(&k) {
                                Some(next) => Bound::Included(next),
                                None => return Ok(entries),
                            },
                            other => other,
                        };
                        let upper = match upper {
                            Bound::Included(k) => after(k),
                            other => other,
                        };
                        (lower, upper)
                    }
                    (Some(lower), Some(upper)) => (lower, upper),
                    _ => (Bound::Unbounded, Bound::Unbounded),
                }
            }
            Selection::All => (Bound::Unbounded, Bound::Unbounded),
        };
        // Eddy's own bookkeeping entries sort after every group key.
        let reserved = [eddy_runtime::RESERVED_KEY_BYTE];
        for partition in partitions {
            let lower = as_ref_bound(&lower);
            let upper = match &upper {
                Bound::Unbounded => Bound::Excluded(&reserved[..]),
                other => as_ref_bound(other),
            };
            for entry in store
                .scan_range(partition, lower, upper)
                .map_err(external)?
            {
                let (key, value) = entry.map_err(external)?;
                entries.push((key.into_vec(), value.into_vec()));
                too_many(entries.len())?;
            }
        }
        Ok(entries)
    }
}

/// A stored (key, state) pair.
type Entry = (Vec<u8>, Vec<u8>);

enum KeyConstraint {
    Points(Vec<ScalarValue>),
    Range(Bound<ScalarValue>, Bound<ScalarValue>),
}

enum Selection {
    /// Every combination of these values (one list per key column).
    Points(Vec<Vec<ScalarValue>>),
    Range(Bound<ScalarValue>, Bound<ScalarValue>),
    All,
}

/// The tighter of two bounds: the larger lower bound, or the smaller upper bound.
fn tighter(a: Bound<ScalarValue>, b: Bound<ScalarValue>, is_lower: bool) -> Bound<ScalarValue> {
    use std::cmp::Ordering;
    let value = |bound: &Bound<ScalarValue>| match bound {
        Bound::Included(v) | Bound::Excluded(v) => Some(v.clone()),
        Bound::Unbounded => None,
    };
    match (value(&a), value(&b)) {
        (None, _) => b,
        (_, None) => a,
        (Some(x), Some(y)) => match x.partial_cmp(&y) {
            Some(Ordering::Less) => {
                if is_lower {
                    b
                } else {
                    a
                }
            }
            Some(Ordering::Greater) => {
                if is_lower {
                    a
                } else {
                    b
                }
            }
            // Equal values: an excluded bound is the tighter one.
            Some(Ordering::Equal) => {
                if matches!(a, Bound::Excluded(_)) {
                    a
                } else {
                    b
                }
            }
            None => a,
        },
    }
}

fn as_ref_bound(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn external(error: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(error))
}

#[async_trait]
impl TableProvider for StateTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>, DataFusionError> {
        // Key filters narrow the scan; DataFusion still applies them to what the scan returns.
        Ok(filters
            .iter()
            .map(|filter| match self.key_constraint(filter) {
                Some(_) => TableProviderFilterPushDown::Inexact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        let entries = self.read(self.selection(filters))?;
        tracing::debug!(
            store = self.view.store().name(),
            entries = entries.len(),
            filters = filters.len(),
            "pull query scan"
        );
        let rows = self
            .view
            .rows(&entries)
            .map_err(|e| DataFusionError::Execution(e.to_string()))?;
        let columns: Vec<ArrayRef> = self
            .columns
            .iter()
            .map(|&i| Arc::clone(rows.column(i)))
            .collect();
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            Arc::clone(&self.schema),
            projection.cloned(),
        )?)
    }
}
