//! Statements that read or write data without changing the catalog: push queries, INSERT VALUES,
//! PRODUCE, PRINT, SHOW, DESCRIBE, EXPLAIN.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, new_null_array};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::util::display::FormatOptions;
use eddy_catalog::{ROWTIME, SourceKind};
use eddy_format::{EncodedBatch, RecordEncoder};
use eddy_planner::ROWTIME_OUTPUT;
use eddy_runtime::{PrintOptions, QuerySpec, SinkSpec, print_topic, start_query};
use sqlparser::ast;
use tokio::sync::mpsc;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::execute::SelectParts;
use crate::layout::{source_layout, value_layout};
use crate::result::{
    PrintResult, PushQuery, QuerySummary, SourceDescription, SourceSummary, TopicSummary,
};
use crate::{Session, StatementResult};

/// Stores of transient aggregations are named with this prefix; a server deletes them at start.
pub(crate) const TRANSIENT_STORE_PREFIX: &str = "transient-";

/// The prefix of every store of push query (or join step) `query_id`: a step's id starts with its
/// push query's, so its stores fall under the query's prefix and go with them.
pub(crate) fn transient_store_prefix(query_id: &str) -> String {
    format!("{TRANSIENT_STORE_PREFIX}{query_id}")
}

/// `transient_<first source>_<uuid>`: unique, and usable in topic and group names.
fn transient_query_id(query: &sqlparser::ast::Query) -> String {
    let source = match query.body.as_ref() {
        sqlparser::ast::SetExpr::Select(select) => {
            select.from.first().and_then(|from| match &from.relation {
                sqlparser::ast::TableFactor::Table { name, .. } => Some(name.to_string()),
                _ => None,
            })
        }
        _ => None,
    };
    let source: String = source
        .unwrap_or_else(|| "query".into())
        .to_uppercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    format!("transient_{source}_{}", uuid::Uuid::new_v4().simple())
}

impl Engine {
    /// `SELECT ... EMIT CHANGES [LIMIT n]`: a transient query streaming rows to the caller.
    ///
    /// Planned as a persistent statement is, so that a join of more than two sources, an
    /// aggregation over a join and a join that needs a repartition run too: as a chain of
    /// queries writing internal topics, all owned by the push query (see `crate::transient`).
    pub(crate) async fn push_query(
        &self,
        session: &Session,
        select: &SelectParts<'_>,
    ) -> Result<StatementResult, EngineError> {
        let catalog = self.catalog();
        let query_id = transient_query_id(select.query);
        let parts = SelectParts {
            query: select.query,
            partition_by: &[],
            emit: select.emit,
            window: select.window,
            within: select.within,
            limit: select.limit,
        };
        let mut planned = self.plan_persistent(&query_id, &parts, &catalog).await?;
        // As a persistent query would, a join of one-partition streams re-keys them in its task.
        if planned.steps.is_empty()
            && let Some(rekeys) = self
                .join_rekeys_in_task(&planned.plan, &planned.repartitions)
                .await?
        {
            rekeys.apply(&mut planned.plan);
            planned.repartitions.clear();
        }
        let store_prefix = transient_store_prefix(&query_id);
        // From here on, whatever is started or created is cleaned up when `resources` goes.
        let mut resources = self
            .inner
            .janitor
            .resources(&query_id, store_prefix.clone());
        let offset_reset = session.offset_reset();
        let (steps, left_reset) = self
            .start_steps(
                &query_id,
                planned.steps,
                offset_reset,
                crate::engine::StepRekeying::WherePossible,
                Some(&mut resources),
            )
            .await?;
        let (writers, [left_reset, right_reset]) = self
            .start_repartition_writers(
                &query_id,
                planned.repartitions,
                [left_reset, offset_reset],
                Some(&mut resources),
            )
            .await?;
        let plan = planned.plan;
        let limit = select.limit.or(plan.limit);
        let visible: Vec<usize> = (0..plan.output_schema.fields().len())
            .filter(|&i| {
                i != plan.rowtime_column
                    && !plan.output_schema.field(i).name().starts_with("__eddy_")
            })
            .collect();
        let schema = Arc::new(Schema::new(
            visible
                .iter()
                .map(|&i| plan.output_schema.field(i).as_ref().clone())
                .collect::<Vec<Field>>(),
        ));
        let (sender, rows) = mpsc::channel(self.inner.config.push_query_queue_batches.max(1));
        let store = |name: &str| {
            self.inner
                .state
                .store(name)
                .map_err(|e| EngineError::Internal(e.to_string()))
        };
        // A transient aggregation keeps its state in a store of its own, without changelog, and
        // runs every partition in one task so that each key has one state.
        let state = match &plan.aggregation {
            Some(_) => Some(eddy_runtime::StateSpec {
                store: store(&store_prefix)?,
                changelog_topic: None,
                limits: self.aggregate_limits(),
                origin_topic: self.physical_topic(&plan.source),
            }),
            None => None,
        };
        // Over a table, changed and deleted rows are retracted: the query remembers each key's
        // contribution in a second transient store.
        let upsert = match &plan.aggregation {
            Some(aggregation) if aggregation.retractable => Some(eddy_runtime::UpsertSpec::new(
                store(&crate::materialize::upsert_store_name(&store_prefix))?,
                None,
                aggregation,
                false,
            )?),
            _ => None,
        };
        let join = self
            .join_spec(
                &plan,
                &crate::materialize::join_store_name(&store_prefix),
                None,
                right_reset,
            )
            .await?;
        let spec = QuerySpec {
            query_id: query_id.clone(),
            group_id: format!("_eddy-{}-{query_id}", self.inner.config.service_id),
            persistent: false,
            source_topic: self.physical_topic(&plan.source),
            source_layout: source_layout(&plan.source)?,
            timestamp_column: crate::layout::timestamp_index(&plan.source),
            timestamp_format: crate::layout::timestamp_format(&plan.source)?,
            // An aggregation over a table sees tombstones through its upsert writer.
            drop_tombstones: plan.source.kind == SourceKind::Stream || upsert.is_some(),
            sink: SinkSpec::Channel { sender },
            single_task: state.is_some(),
            upsert,
            join,
            aggregate_joined: None,
            rows_view: None,
            generator: plan.source.generator.clone(),
            state,
            plan: Arc::new(plan),
            offset_reset: left_reset,
            config: self.inner.config.clone(),
            connection: self.inner.connection.clone(),
            processing_log: self.inner.processing_log.clone(),
        };
        let handle = start_query(spec).await?;
        resources.set_handle(crate::engine::with_upstreams(handle, steps, writers));
        Ok(StatementResult::Push(PushQuery {
            query_id,
            schema,
            rows,
            visible,
            limit,
            emitted: 0,
            resources: Some(Box::new(resources)),
        }))
    }

    /// `INSERT INTO name [(columns)] VALUES (...)`.
    pub(crate) async fn insert_values(
        &self,
        target: &str,
        columns: &[String],
        values: &[ast::Expr],
    ) -> Result<StatementResult, EngineError> {
        let source = self.catalog().require_source(target)?.clone();
        crate::ddl::refuse_write_target(&source)?;
        let names: Vec<String> = if columns.is_empty() {
            source
                .key_columns()
                .chain(source.value_columns())
                .map(|c| c.name.clone())
                .collect()
        } else {
            columns.to_vec()
        };
        if names.len() != values.len() {
            return Err(EngineError::invalid(format!(
                "INSERT INTO \"{target}\" names {} columns but gives {} values",
                names.len(),
                values.len()
            )));
        }
        for name in &names {
            if name != ROWTIME && source.column(name).is_none() {
                return Err(eddy_planner::PlanError::UnknownColumn {
                    column: name.clone(),
                    kind: source.kind.noun(),
                    source_name: source.name.clone(),
                    suggestion: None,
                }
                .into());
            }
        }
        let row = self.inner.planner.evaluate_row(values).await?;
        let options = CastOptions {
            safe: false,
            format_options: FormatOptions::default(),
        };
        // Build a one-row batch in the layout the sink encoder expects: key columns, value columns,
        // and the event time.
        let mut fields = Vec::new();
        let mut arrays: Vec<ArrayRef> = Vec::new();
        for column in source.key_columns().chain(source.value_columns()) {
            let data_type = column.sql_type.to_arrow();
            let array = match names.iter().position(|n| *n == column.name) {
                Some(i) => cast_with_options(row.column(i), &data_type, &options).map_err(|e| {
                    EngineError::invalid(format!(
                        "value for column \"{}\" cannot be converted to {}: {e}",
                        column.name, column.sql_type
                    ))
                })?,
                None => new_null_array(&data_type, 1),
            };
            fields.push(Field::new(&column.name, data_type, true));
            arrays.push(array);
        }
        let timestamp_ms = match names.iter().position(|n| n == ROWTIME) {
            Some(i) => {
                let array =
                    cast_with_options(row.column(i), &DataType::Int64, &options).map_err(|e| {
                        EngineError::invalid(format!("ROWTIME must be epoch milliseconds: {e}"))
                    })?;
                use datafusion::arrow::array::{Array, AsArray};
                let values = array.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
                if values.is_null(0) {
                    None
                } else {
                    Some(values.value(0))
                }
            }
            None => None,
        };
        self.produce_row(&source, fields, arrays, timestamp_ms)
            .await
    }

    /// Inserts one row given as a JSON object of column values (`/inserts-stream`): fields are
    /// matched to columns without regard to case, missing columns are NULL, a `ROWTIME` field
    /// (epoch ms) sets the record's timestamp. Values are read as the JSON format reads them
    /// from a topic (so STRUCT, MAP and ARRAY values are JSON objects and arrays, BYTES base64,
    /// DATE days, TIME ms of day, TIMESTAMP epoch ms); a field that does not fit its column's
    /// type, or names no column, fails the row with a message that says which.
    pub async fn insert_json_row(
        &self,
        target: &str,
        row_json: &[u8],
    ) -> Result<StatementResult, EngineError> {
        let row = self.json_row_record(target, row_json)?;
        let (partition, offset) = self
            .inner
            .connection
            .produce_one(
                &self.inner.producer.get()?,
                &row.topic,
                None,
                row.key.as_deref(),
                row.value.as_deref(),
                row.timestamp_ms,
            )
            .await?;
        Ok(inserted_message(&row.source, partition, offset))
    }

    /// [`Engine::insert_json_row`] without waiting: the row is checked, encoded and handed to
    /// the producer now (rows sent one after the other are written in that order), and the
    /// returned future resolves once Kafka has it. `Ok(None)` when the producer's queue is
    /// full: nothing was sent (wait for earlier rows, or use [`Engine::insert_json_row`]).
    pub fn send_json_row(
        &self,
        target: &str,
        row_json: &[u8],
    ) -> Result<Option<RowDelivery>, EngineError> {
        let row = self.json_row_record(target, row_json)?;
        let sent = self.inner.connection.send_one(
            &self.inner.producer.get()?,
            &row.topic,
            row.key.as_deref(),
            row.value.as_deref(),
            row.timestamp_ms,
        )?;
        Ok(sent.map(|delivery| -> RowDelivery { Box::pin(async move { Ok(delivery.await?) }) }))
    }

    /// A JSON row of `target` checked and encoded as its Kafka record.
    fn json_row_record(&self, target: &str, row_json: &[u8]) -> Result<EncodedRow, EngineError> {
        let source = self.catalog().require_source(target)?.clone();
        crate::ddl::refuse_write_target(&source)?;
        let row: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(row_json)
            .map_err(|e| {
                EngineError::invalid(format!("a row must be a JSON object of column values: {e}"))
            })?;
        if row.is_empty() {
            return Err(EngineError::invalid("the row has no columns"));
        }
        let mut timestamp_ms = None;
        for (field, value) in &row {
            if field.eq_ignore_ascii_case(ROWTIME) {
                timestamp_ms = match value {
                    serde_json::Value::Null => None,
                    value => Some(value.as_i64().ok_or_else(|| {
                        EngineError::invalid(format!(
                            "ROWTIME must be epoch milliseconds, not {value}"
                        ))
                    })?),
                };
            } else if !source
                .columns
                .iter()
                .any(|c| c.name.eq_ignore_ascii_case(field))
            {
                return Err(eddy_planner::PlanError::UnknownColumn {
                    column: field.clone(),
                    kind: source.kind.noun(),
                    source_name: source.name.clone(),
                    suggestion: None,
                }
                .into());
            }
        }
        // Every column, keys included, read from the one JSON object.
        let fields: Vec<Field> = source
            .key_columns()
            .chain(source.value_columns())
            .map(|c| Field::new(&c.name, c.sql_type.to_arrow(), true))
            .collect();
        let layout = eddy_format::SourceLayout::new(
            Vec::new(),
            fields.clone(),
            eddy_format::Format::Kafka,
            eddy_format::Format::JSON,
        )
        .map_err(|e| EngineError::Internal(format!("insert layout: {e}")))?;
        let mut decoder = eddy_format::RecordDecoder::new(&layout)
            .map_err(|e| EngineError::Internal(format!("insert decoder: {e}")))?;
        let mut raw = eddy_format::RawBatch::new();
        raw.push(None, Some(row_json), 0, 0, 0);
        let decoded = decoder
            .decode(&raw)
            .map_err(|e| EngineError::Internal(format!("insert decode: {e}")))?;
        if let Some(error) = decoded.errors.first() {
            return Err(EngineError::invalid(format!(
                "the row does not fit \"{}\": {}",
                source.name, error.reason
            )));
        }
        let pseudo_columns = decoded.batch.num_columns() - fields.len();
        let arrays: Vec<ArrayRef> = decoded.batch.columns()[pseudo_columns..].to_vec();
        if decoded.batch.num_rows() != 1 {
            return Err(EngineError::Internal(format!(
                "insert decode gave {} rows",
                decoded.batch.num_rows()
            )));
        }
        let (key, value) = encode_row(&source, fields, arrays)?;
        Ok(EncodedRow {
            topic: self.physical_topic(&source),
            source,
            key,
            value,
            timestamp_ms,
        })
    }

    /// Encodes one row of `source` (its columns in order, as `fields` and one-row `arrays`) and
    /// produces it to the source's topic.
    async fn produce_row(
        &self,
        source: &eddy_catalog::Source,
        fields: Vec<Field>,
        arrays: Vec<ArrayRef>,
        timestamp_ms: Option<i64>,
    ) -> Result<StatementResult, EngineError> {
        let (key, value) = encode_row(source, fields, arrays)?;
        let topic = self.physical_topic(source);
        let (partition, offset) = self
            .inner
            .connection
            .produce_one(
                &self.inner.producer.get()?,
                &topic,
                None,
                key.as_deref(),
                value.as_deref(),
                timestamp_ms,
            )
            .await?;
        Ok(inserted_message(source, partition, offset))
    }

    /// `PRODUCE TO 'topic' ...`: one raw record, for tests and tools.
    pub(crate) async fn produce_raw(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp_ms: Option<i64>,
    ) -> Result<StatementResult, EngineError> {
        let physical = self.inner.config.physical_topic(topic);
        if self.inner.connection.topic(&physical).await?.is_none() {
            return Err(eddy_runtime::KafkaError::UnknownTopic {
                topic: topic.to_owned(),
            }
            .into());
        }
        let (partition, offset) = self
            .inner
            .connection
            .produce_one(
                &self.inner.producer.get()?,
                &physical,
                partition,
                key,
                value,
                timestamp_ms,
            )
            .await?;
        Ok(StatementResult::Success {
            message: format!(
                "produced 1 record to \"{topic}\" (partition {partition}, offset {offset})"
            ),
            query_id: None,
        })
    }

    /// `PRINT topic [FROM BEGINNING] [INTERVAL n] [LIMIT n]`.
    pub(crate) async fn print(
        &self,
        topic: &str,
        from_beginning: bool,
        interval: Option<u64>,
        limit: Option<u64>,
    ) -> Result<StatementResult, EngineError> {
        let physical = if topic == self.inner.config.processing_log_topic() {
            topic.to_owned()
        } else {
            self.inner.config.physical_topic(topic)
        };
        let stream = print_topic(
            &self.inner.connection,
            PrintOptions {
                topic: physical,
                display_topic: topic.to_owned(),
                from_beginning,
                interval: interval.unwrap_or(1),
                limit,
                queue_lines: self.inner.config.print_queue_lines,
            },
        )
        .await?;
        Ok(StatementResult::Print(PrintResult { stream }))
    }

    /// `SHOW STREAMS` / `SHOW TABLES`.
    pub(crate) fn show_sources(&self, kind: SourceKind) -> StatementResult {
        let sources = self
            .catalog()
            .sources()
            .filter(|s| s.kind == kind)
            .map(|s| SourceSummary {
                name: s.name.clone(),
                kind: s.kind,
                topic: s.topic.clone(),
                key_format: s.key_format.clone(),
                value_format: s.value_format.clone(),
                window: s.window,
            })
            .collect();
        StatementResult::Sources(sources)
    }

    /// `SHOW TOPICS`: the topics of this namespace, without Eddy's internal ones.
    pub(crate) async fn show_topics(&self) -> Result<StatementResult, EngineError> {
        let mut topics: Vec<TopicSummary> = self
            .inner
            .connection
            .topics()
            .await?
            .into_iter()
            .filter_map(|t| {
                let name = self.inner.config.logical_topic(&t.name)?.to_owned();
                (!name.starts_with('_')).then_some(TopicSummary {
                    name,
                    partitions: t.partitions,
                    replicas: t.replicas,
                })
            })
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(StatementResult::Topics(topics))
    }

    /// `SHOW QUERIES`.
    pub(crate) fn show_queries(&self) -> StatementResult {
        let queries = self
            .catalog()
            .queries()
            .map(|q| QuerySummary {
                id: q.id.clone(),
                status: match self.query_status(&q.id) {
                    Some(eddy_runtime::QueryStatus::Running) => "RUNNING".into(),
                    Some(eddy_runtime::QueryStatus::Error(message)) => format!("ERROR: {message}"),
                    Some(eddy_runtime::QueryStatus::Stopped) => "STOPPED".into(),
                    None => "NOT RUNNING".into(),
                },
                sink: q.sink.clone(),
                sources: q.inputs(),
                sql: q.sql.clone(),
            })
            .collect();
        StatementResult::Queries(queries)
    }

    /// `DESCRIBE [EXTENDED] name`.
    pub(crate) fn describe(
        &self,
        name: &str,
        extended: bool,
    ) -> Result<StatementResult, EngineError> {
        let catalog = self.catalog();
        let source = catalog.require_source(name)?;
        let written_by = catalog.writers_of(name);
        let statistics = if extended {
            written_by
                .iter()
                .filter_map(|id| self.query_counts(id).map(|(i, o, s)| (id.clone(), i, o, s)))
                .collect()
        } else {
            Vec::new()
        };
        Ok(StatementResult::Description(Box::new(SourceDescription {
            name: source.name.clone(),
            kind: source.kind,
            read_only: source.read_only,
            columns: source.columns.clone(),
            // A generated stream has no topic: say what makes its records instead.
            topic: match &source.generator {
                Some(generator) if generator.event_type.is_empty() => {
                    format!("none (CONNECTOR='{}')", generator.connector)
                }
                Some(generator) => format!(
                    "none (CONNECTOR='{}', EVENT_TYPE='{}')",
                    generator.connector, generator.event_type
                ),
                None => source.topic.clone(),
            },
            key_format: source.key_format.clone(),
            value_format: source.value_format.clone(),
            window: source.window,
            partitions: source.partitions,
            timestamp_column: source.timestamp_column.clone(),
            sql: source.sql.clone(),
            extended,
            read_by: catalog.readers_of(name),
            state: if extended {
                self.state_statistics(name)
            } else {
                None
            },
            written_by,
            statistics,
        })))
    }

    /// Size and restore progress of the local state of table `name`, if this server keeps one.
    fn state_statistics(&self, name: &str) -> Option<crate::result::StateStatistics> {
        use std::sync::atomic::Ordering::Relaxed;
        let view = self.view(name)?;
        let writer = self.catalog().writers_of(name).first().cloned()?;
        let (restored_records, records_to_restore) = {
            let queries = self.inner.queries.lock().ok()?;
            let metrics = &queries.get(&writer)?.metrics;
            (
                metrics.restore_records_done.load(Relaxed),
                metrics.restore_records_total.load(Relaxed),
            )
        };
        Some(crate::result::StateStatistics {
            approximate_keys: view.store().approximate_entries(),
            approximate_bytes: view.store().approximate_size_bytes(),
            restored_records,
            records_to_restore,
        })
    }

    /// `EXPLAIN SELECT ...` (the plan a query would get).
    pub(crate) async fn explain_select(
        &self,
        select: &SelectParts<'_>,
    ) -> Result<StatementResult, EngineError> {
        let planned = self
            .plan_persistent("explain", select, &self.catalog())
            .await?;
        Ok(StatementResult::Explain {
            text: planned.explain(),
        })
    }

    /// `EXPLAIN query_id`.
    pub(crate) async fn explain_query(&self, id: &str) -> Result<StatementResult, EngineError> {
        let catalog = self.catalog();
        let query = catalog.query(&id.to_uppercase()).cloned().ok_or_else(|| {
            EngineError::Catalog(eddy_catalog::CatalogError::UnknownQuery {
                id: id.to_owned(),
                suggestion: None,
            })
        })?;
        let statements = eddy_sql::parse_statements(&crate::engine::query_select_text(&query))?;
        let statement = statements
            .first()
            .ok_or_else(|| EngineError::Internal("empty query text".into()))?;
        let select = crate::execute::select_of(&statement.statement)
            .ok_or_else(|| EngineError::Internal(format!("query {id} is not a SELECT")))?;
        let mut result = self
            .explain_select(&SelectParts::from_select(select))
            .await?;
        if let StatementResult::Explain { text } = &mut result {
            let status = self
                .query_status(&query.id)
                .map(|s| format!("{s:?}"))
                .unwrap_or_else(|| "NOT RUNNING".into());
            *text = format!(
                "Query: {}\nStatus: {status}\nSQL: {}\n{text}",
                query.id, query.sql
            );
            if query.rekeys_in_task {
                text.push_str(
                    "\nIts inputs have one partition: the records are re-keyed in its one \
                     task, without repartition topic.",
                );
            }
            if !query.steps_rekeying_in_task.is_empty() {
                let steps: Vec<String> = query
                    .steps_rekeying_in_task
                    .iter()
                    .map(|n| n.to_string())
                    .collect();
                text.push_str(&format!(
                    "\nIts join steps {} read inputs of one partition: their records are \
                     re-keyed in their one task, without repartition topic.",
                    steps.join(", ")
                ));
            }
            if query.aggregates_in_join_task {
                text.push_str(
                    "\nIts aggregation runs in the task of its last join step, whose streams \
                     have one partition each: the joined rows go to it without a topic.",
                );
            }
            if let Some(view) = self.view(&query.sink) {
                text.push_str(&format!(
                    "\nPull queries of {} read the copy this server keeps (store \"{}\").",
                    query.sink,
                    view.store().name()
                ));
            }
        }
        Ok(result)
    }
}

/// A row sent with [`Engine::send_json_row`]: resolves to its partition and offset once Kafka
/// has it.
pub type RowDelivery =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(i32, i64), EngineError>> + Send>>;

/// A row checked against its stream and encoded as a Kafka record.
struct EncodedRow {
    source: eddy_catalog::Source,
    /// Physical topic.
    topic: String,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    timestamp_ms: Option<i64>,
}

/// A record's encoded key and value (`None`: none).
type EncodedKeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Encodes one row of `source` (its columns in order, as `fields` and one-row `arrays`) as its
/// record's key and value.
fn encode_row(
    source: &eddy_catalog::Source,
    mut fields: Vec<Field>,
    mut arrays: Vec<ArrayRef>,
) -> Result<EncodedKeyValue, EngineError> {
    let target = &source.name;
    fields.push(Field::new(ROWTIME_OUTPUT, DataType::Int64, true));
    arrays.push(new_null_array(&DataType::Int64, 1));
    let batch = RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        arrays,
        &RecordBatchOptions::new().with_row_count(Some(1)),
    )
    .map_err(|e| EngineError::Internal(format!("insert batch: {e}")))?;
    let key_count = source.key_count();
    let key_columns: Vec<usize> = (0..key_count).collect();
    let value_columns: Vec<usize> = (key_count..source.columns.len()).collect();
    let mut encoder = RecordEncoder::new(&value_layout(source)?)
        .map_err(|e| EngineError::invalid(e.to_string()))?;
    let mut encoded = EncodedBatch::new();
    encoder
        .encode(&batch, &key_columns, &value_columns, &mut encoded)
        .map_err(|e| {
            EngineError::invalid(format!("cannot encode the row for \"{target}\": {e}"))
        })?;
    Ok((
        encoded.key(0).map(<[u8]>::to_vec),
        encoded.value(0).map(<[u8]>::to_vec),
    ))
}

/// What an inserted row answers: where it went, and the read-after token of that position.
fn inserted_message(source: &eddy_catalog::Source, partition: i32, offset: i64) -> StatementResult {
    StatementResult::Success {
        message: format!(
            "inserted 1 row into \"{}\" (partition {partition}, offset {offset}); \
             read-after token '{}'",
            source.name,
            crate::pull::read_after_token(&source.topic, partition, offset)
        ),
        query_id: None,
    }
}
