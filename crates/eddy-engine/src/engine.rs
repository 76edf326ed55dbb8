//! The engine: catalog, command topic, running queries.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use eddy_catalog::{Catalog, Command, QueryInfo, QueryKind, Source};
use eddy_common::config::EngineConfig;
use eddy_planner::Planner;
use eddy_runtime::{
    KafkaConnection, OffsetReset, ProcessingLog, QueryHandle, QuerySpec, QueryStatus, SinkSpec,
    start_query,
};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::error::EngineError;
use crate::layout::source_layout;
use crate::transient::{Janitor, TransientResources};

/// Name of the stream over the processing log.
pub const PROCESSING_LOG_STREAM: &str = "EDDY_PROCESSING_LOG";

/// A running Eddy engine. Cheap to clone; every clone is the same engine.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<EngineInner>,
}

pub(crate) struct EngineInner {
    pub(crate) config: EngineConfig,
    pub(crate) connection: KafkaConnection,
    /// The producer every query and statement sends with (see `SharedProducer::get`).
    pub(crate) producer: eddy_runtime::SharedProducer,
    pub(crate) planner: Planner,
    /// Never held across `.await`.
    pub(crate) catalog: RwLock<Catalog>,
    /// Persistent queries running on this server. Never held across `.await`.
    pub(crate) queries: Mutex<HashMap<String, QueryHandle>>,
    /// Serializes catalog changes so that validate → produce → apply is atomic on this server.
    pub(crate) command_lock: tokio::sync::Mutex<()>,
    pub(crate) processing_log: ProcessingLog,
    processing_log_task: Mutex<Option<JoinHandle<()>>>,
    /// This server's RocksDB: one store per aggregation query.
    pub(crate) state: eddy_state::StateStore,
    /// Table name → the materialization a running query keeps of it, for pull queries. Never held
    /// across `.await`.
    pub(crate) views: Mutex<HashMap<String, Arc<dyn eddy_runtime::PullView>>>,
    /// Where ended push queries go to be cleaned up (see `crate::transient`).
    pub(crate) janitor: Janitor,
    janitor_task: Mutex<Option<crate::transient::JanitorTask>>,
    /// Failed persistent queries on their way back (see `crate::restart`).
    pub(crate) restarts: crate::restart::Restarts,
    restart_task: Mutex<Option<JoinHandle<()>>>,
}

/// Takes the task out of `slot`, if it is still there, aborts it and waits until it has ended.
async fn abort_and_wait(slot: &Mutex<Option<JoinHandle<()>>>) {
    // The guard is dropped at the end of this statement, before the wait.
    let task = slot.lock().ok().and_then(|mut task| task.take());
    if let Some(task) = task {
        task.abort();
        let _ = task.await;
    }
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        for task in [&self.restart_task, &self.processing_log_task] {
            if let Ok(mut task) = task.lock()
                && let Some(task) = task.take()
            {
                task.abort();
            }
        }
        if let Ok(mut janitor) = self.janitor_task.lock()
            && let Some(janitor) = janitor.take()
        {
            janitor.abort();
        }
    }
}

impl Engine {
    /// Connects to Kafka, rebuilds the catalog from the command topic and restarts every persistent
    /// query from its committed offsets.
    pub async fn start(
        config: EngineConfig,
        mut connection: KafkaConnection,
    ) -> Result<Engine, EngineError> {
        connection.request_timeout_ms = config.kafka_request_timeout_ms;
        connection.producer_linger_ms = config.producer_linger_ms;
        // A state record of `state_record_max_bytes` goes out with its key and the framing of
        // its record batch.
        connection.producer_message_max_bytes = config
            .state_record_max_bytes
            .saturating_add(eddy_runtime::RECORD_FRAMING_BYTES);
        connection.producer_idempotence = config.producer_idempotence;
        let producer = eddy_runtime::SharedProducer::new(connection.clone())?;
        let command_topic = config.command_topic();
        connection
            .create_topic(
                &command_topic,
                1,
                config.default_replicas,
                &[("cleanup.policy", "delete"), ("retention.ms", "-1")],
            )
            .await?;
        let log_topic = config.processing_log_topic();
        connection
            .create_topic(&log_topic, 1, config.default_replicas, &[])
            .await?;
        // The processing log's producer is its own and not idempotent: it never fails for good,
        // and the order of its reports matters less than their arrival.
        let mut log_connection = connection.clone();
        log_connection.producer_idempotence = false;
        let log_producer = log_connection.producer()?;
        let (processing_log, processing_log_task) = ProcessingLog::start(
            log_producer,
            log_topic,
            config.processing_log_queue_records,
            config.processing_log_record_bytes,
        );

        let state = eddy_state::StateStore::open(
            &config.state_dir,
            &eddy_state::StateConfig {
                block_cache_bytes: config.state_block_cache_bytes,
                ..Default::default()
            },
        )
        .map_err(|e| EngineError::invalid(e.to_string()))?;
        // The state of push queries that ran before a restart is of no use.
        for name in state.store_names() {
            if name.starts_with(crate::queries::TRANSIENT_STORE_PREFIX)
                && let Err(error) = state.drop_store(&name)
            {
                warn!(store = name, %error, "cannot delete a push query's leftover state");
            }
        }
        let (janitor, janitor_task) = Janitor::start(state.clone(), connection.clone());
        let engine = Engine {
            inner: Arc::new(EngineInner {
                config,
                connection,
                producer,
                planner: Planner::new(),
                catalog: RwLock::new(Catalog::new()),
                queries: Mutex::new(HashMap::new()),
                command_lock: tokio::sync::Mutex::new(()),
                processing_log,
                processing_log_task: Mutex::new(Some(processing_log_task)),
                state,
                views: Mutex::new(HashMap::new()),
                janitor,
                janitor_task: Mutex::new(Some(janitor_task)),
                restarts: Default::default(),
                restart_task: Mutex::new(None),
            }),
        };
        let replayed = engine.replay_commands().await?;
        info!(
            commands = replayed,
            topic = command_topic,
            "catalog restored from the command topic"
        );
        engine.ensure_processing_log_stream().await?;

        let queries: Vec<QueryInfo> = engine.catalog().queries().cloned().collect();
        for query in queries {
            if let Err(error) = engine.start_persistent_query(&query).await {
                engine.schedule_restart(&query.id, error.to_string());
            }
        }
        let restart_task = crate::restart::start_restart_task(
            Arc::downgrade(&engine.inner),
            crate::restart::restart_check_interval(
                engine.inner.config.query_retry_backoff_initial_ms,
            ),
        );
        if let Ok(mut task) = engine.inner.restart_task.lock() {
            *task = Some(restart_task);
        }
        Ok(engine)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    pub fn connection(&self) -> &KafkaConnection {
        &self.inner.connection
    }

    /// A snapshot of the catalog.
    pub fn catalog(&self) -> Catalog {
        self.inner
            .catalog
            .read()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// Status of a persistent query on this server: `Error` from its failure until it runs
    /// again (see `crate::restart`), with when it is restarted.
    pub fn query_status(&self, id: &str) -> Option<QueryStatus> {
        if let Some(restart) = self.restart_of(id)
            && restart.retry_at.is_some()
        {
            return Some(QueryStatus::Error(
                restart.describe(tokio::time::Instant::now()),
            ));
        }
        self.inner.queries.lock().ok()?.get(id).map(|q| q.status())
    }

    /// (records in, records out, records skipped) of a persistent query on this server.
    pub fn query_counts(&self, id: &str) -> Option<(u64, u64, u64)> {
        let queries = self.inner.queries.lock().ok()?;
        Some(queries.get(id)?.counts())
    }

    /// Metrics of every persistent query running on this server. Lags take one offsets request
    /// per query, each bounded by `timeout`.
    pub async fn query_metrics(
        &self,
        timeout: Duration,
    ) -> Vec<crate::result::QueryMetricsSnapshot> {
        use std::sync::atomic::Ordering::Relaxed;
        let catalog = self.catalog();
        // Read under the lock, then released before any Kafka call.
        let running: Vec<_> = match self.inner.queries.lock() {
            Ok(queries) => catalog
                .queries()
                .filter_map(|info| {
                    let handle = queries.get(&info.id)?;
                    let (records_in, records_out, records_skipped) = handle.counts();
                    Some((
                        info.clone(),
                        matches!(handle.status(), QueryStatus::Running),
                        (
                            records_in,
                            handle.batches_in(),
                            records_out,
                            records_skipped,
                        ),
                        (
                            handle.metrics.restore_records_done.load(Relaxed),
                            handle.metrics.restore_records_total.load(Relaxed),
                        ),
                        handle.progress_chain().into_iter().next(),
                    ))
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut snapshots = Vec::with_capacity(running.len());
        for (
            info,
            is_running,
            (records_in, batches_in, records_out, records_skipped),
            restore,
            first,
        ) in running
        {
            let lag_records = match first {
                Some(progress) if !progress.topic.is_empty() => {
                    tokio::time::timeout(timeout, self.lag_of(&progress))
                        .await
                        .ok()
                        .flatten()
                }
                _ => None,
            };
            snapshots.push(crate::result::QueryMetricsSnapshot {
                state_bytes: self
                    .view(&info.sink)
                    .map(|view| view.store().approximate_size_bytes()),
                query_id: info.id,
                sink: info.sink,
                running: is_running,
                records_in,
                batches_in,
                records_out,
                records_skipped,
                lag_records,
                restored_records: restore.0,
                records_to_restore: restore.1,
            });
        }
        snapshots
    }

    /// Records of `progress`'s topic past what the query has processed (or its group
    /// committed), over all partitions.
    async fn lag_of(&self, progress: &eddy_runtime::QueryProgress) -> Option<i64> {
        let connection = &self.inner.connection;
        let watermarks = connection.watermarks(&progress.topic).await.ok()?;
        let committed = connection
            .committed_offsets(&progress.group_id, &progress.topic, watermarks.len() as i32)
            .await
            .ok()?;
        Some(
            watermarks
                .iter()
                .enumerate()
                .map(|(partition, &(low, high))| {
                    let done = progress
                        .processed(partition as i32)
                        .or_else(|| committed.get(partition).copied().flatten())
                        .unwrap_or(low);
                    (high - done.max(low)).max(0)
                })
                .sum(),
        )
    }

    /// Stops every query (committing their progress) and the processing log.
    pub async fn shutdown(&self) {
        // First, so that no failed query is started again while the others stop.
        abort_and_wait(&self.inner.restart_task).await;
        let handles: Vec<QueryHandle> = self
            .inner
            .queries
            .lock()
            .map(|mut q| q.drain().map(|(_, h)| h).collect())
            .unwrap_or_default();
        for handle in handles {
            handle.stop().await;
        }
        // Push queries that ended are still being stopped by the clean-up task: let it finish
        // them (bounded), so that their consumers are closed before the caller stops a broker.
        // Push queries still open belong to their clients; their state goes at the next start.
        let janitor = self
            .inner
            .janitor_task
            .lock()
            .ok()
            .and_then(|mut t| t.take());
        if let Some(janitor) = janitor {
            let timeout = Duration::from_millis(self.inner.config.kafka_request_timeout_ms);
            janitor.finish(timeout).await;
        }
        // The processing log's task owns a producer clone: end it now, so that no Kafka client of
        // this engine outlives the call but the engine's own producer.
        abort_and_wait(&self.inner.processing_log_task).await;
        self.inner.connection.close_clients();
    }

    /// Reads the command topic from the beginning to its current end and applies every command.
    async fn replay_commands(&self) -> Result<usize, EngineError> {
        let topic = self.inner.config.command_topic();
        let watermarks = self.inner.connection.watermarks(&topic).await?;
        let Some(&(low, high)) = watermarks.first() else {
            return Ok(0);
        };
        if high <= low {
            return Ok(0);
        }
        let group = format!(
            "_eddy-{}-replay-{}",
            self.inner.config.service_id,
            uuid::Uuid::new_v4()
        );
        let consumer = self.inner.connection.consumer(&group, "earliest")?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&topic, 0, Offset::Offset(low))
            .map_err(|e| EngineError::Internal(format!("command topic assignment: {e}")))?;
        consumer
            .assign(&assignment)
            .map_err(|e| EngineError::Internal(format!("command topic assignment: {e}")))?;
        let timeout = Duration::from_millis(self.inner.config.kafka_request_timeout_ms);
        let mut applied = 0;
        loop {
            let message = tokio::time::timeout(timeout, consumer.recv())
                .await
                .map_err(|_| {
                    EngineError::Internal(format!(
                        "reading the command topic \"{topic}\" timed out"
                    ))
                })?;
            let message = message
                .map_err(|e| EngineError::Internal(format!("reading the command topic: {e}")))?;
            let offset = message.offset();
            if let Some(payload) = message.payload() {
                match serde_json::from_slice::<Command>(payload) {
                    Ok(command) => {
                        let mut catalog = self.inner.catalog.write().map_err(|_| poisoned())?;
                        match catalog.apply(command) {
                            Ok(()) => applied += 1,
                            Err(error) => {
                                warn!(offset, %error, "skipping command that no longer applies")
                            }
                        }
                    }
                    Err(error) => warn!(offset, %error, "skipping unreadable command"),
                }
            }
            if offset + 1 >= high {
                break;
            }
        }
        Ok(applied)
    }

    /// Validates `command`, records it in the command topic, then applies it.
    pub(crate) async fn submit(&self, command: Command) -> Result<(), EngineError> {
        let _guard = self.inner.command_lock.lock().await;
        self.inner
            .catalog
            .read()
            .map_err(|_| poisoned())?
            .validate(&command)?;
        let payload = serde_json::to_vec(&command)
            .map_err(|e| EngineError::Internal(format!("command encoding: {e}")))?;
        let topic = self.inner.config.command_topic();
        self.inner
            .connection
            .produce_one(
                &self.inner.producer.get()?,
                &topic,
                Some(0),
                None,
                Some(&payload),
                None,
            )
            .await?;
        self.inner
            .catalog
            .write()
            .map_err(|_| poisoned())?
            .apply(command)?;
        Ok(())
    }

    async fn ensure_processing_log_stream(&self) -> Result<(), EngineError> {
        if self.catalog().source(PROCESSING_LOG_STREAM).is_some() {
            return Ok(());
        }
        let source = Source {
            read_only: false,
            name: PROCESSING_LOG_STREAM.to_owned(),
            kind: eddy_catalog::SourceKind::Stream,
            columns: eddy_runtime::processing_log_columns(),
            topic: self.inner.config.processing_log_topic(),
            key_format: "NONE".into(),
            value_format: "JSON".into(),
            value_delimiter: None,
            wrap_single_value: None,
            timestamp_column: None,
            timestamp_format: None,
            partitions: 1,
            written_by: None,
            generator: None,
            window: None,
            sql: String::new(),
        };
        self.submit(Command::CreateSource {
            source,
            or_replace: false,
        })
        .await
    }

    /// Physical topic of a source; the processing log's topic is outside the user namespace.
    pub(crate) fn physical_topic(&self, source: &Source) -> String {
        if source.name == PROCESSING_LOG_STREAM {
            source.topic.clone()
        } else {
            self.inner.config.physical_topic(&source.topic)
        }
    }

    /// Plans and starts a persistent query recorded in the catalog.
    pub(crate) async fn start_persistent_query(
        &self,
        query: &QueryInfo,
    ) -> Result<(), EngineError> {
        let statements = eddy_sql::parse_statements(&query_select_text(query))?;
        let statement = statements
            .into_iter()
            .next()
            .ok_or_else(|| EngineError::Internal(format!("query {} has no statement", query.id)))?;
        let select = crate::execute::select_of(&statement.statement)
            .ok_or_else(|| EngineError::Internal(format!("query {} is not a SELECT", query.id)))?;
        let catalog = self.catalog();
        let sink = catalog.require_source(&query.sink)?.clone();
        let offset_reset = query
            .properties
            .get("auto.offset.reset")
            .and_then(|v| OffsetReset::parse(v))
            .unwrap_or(OffsetReset::Latest);
        let planned = self
            .plan_persistent(
                &query.id,
                &crate::execute::SelectParts::from_select(select),
                &catalog,
            )
            .await?;
        let handle = self
            .start_planned(
                &query.id,
                planned,
                &sink,
                offset_reset,
                query.rekeys_in_task,
                &query.steps_rekeying_in_task,
                query.aggregates_in_join_task,
            )
            .await?;
        self.register_query_handle(&query.id, handle)
    }

    /// Starts a planned statement: its join steps, each writing its output topic, then the
    /// query that writes `sink`; all under the returned handle. `rekeys_in_task`: see
    /// `QueryInfo::rekeys_in_task`; `steps_rekeying_in_task`: see
    /// `QueryInfo::steps_rekeying_in_task`; `aggregates_in_join_task`: see
    /// `QueryInfo::aggregates_in_join_task`.
    #[allow(clippy::too_many_arguments)]
    async fn start_planned(
        &self,
        query_id: &str,
        planned: PlannedQuery,
        sink: &Source,
        offset_reset: OffsetReset,
        rekeys_in_task: bool,
        steps_rekeying_in_task: &[usize],
        aggregates_in_join_task: bool,
    ) -> Result<QueryHandle, EngineError> {
        let PlannedQuery {
            mut plan,
            mut repartitions,
            mut steps,
            ..
        } = planned;
        if aggregates_in_join_task {
            let last = steps.pop().ok_or_else(|| {
                EngineError::Internal(format!(
                    "query {query_id} aggregates in its join's task but has no join step"
                ))
            })?;
            let last_number = steps.len() + 1;
            let rekeying = StepRekeying::Recorded(steps_rekeying_in_task);
            let (upstream, left_reset) = self
                .start_steps(query_id, steps, offset_reset, rekeying, None)
                .await?;
            let handle = self
                .start_aggregation_in_join_task(
                    query_id,
                    last,
                    last_number,
                    rekeying,
                    plan,
                    sink,
                    [left_reset, offset_reset],
                )
                .await?;
            return Ok(with_upstreams(handle, upstream, Vec::new()));
        }
        if rekeys_in_task && steps.is_empty() && plan.join.is_some() && !repartitions.is_empty() {
            let Some(rekeys) = self.join_rekeys_in_task(&plan, &repartitions).await? else {
                return Err(EngineError::invalid(format!(
                    "query {query_id} re-keys its joined streams in its one partition task, but \
                     they or the sources they join no longer have one partition each: keys \
                     would meet in different tasks\nhint: TERMINATE {query_id}, then create \
                     it again"
                )));
            };
            rekeys.apply(&mut plan);
            repartitions.clear();
        }
        let (upstream, left_reset) = self
            .start_steps(
                query_id,
                steps,
                offset_reset,
                StepRekeying::Recorded(steps_rekeying_in_task),
                None,
            )
            .await?;
        let (writers, resets) = self
            .start_repartition_writers(query_id, repartitions, [left_reset, offset_reset], None)
            .await?;
        let handle = if plan.aggregation.is_some() {
            self.start_aggregation(query_id, plan, sink, resets[0], rekeys_in_task)
                .await?
        } else {
            self.start_stateless(query_id, plan, sink, resets, None, true)
                .await?
        };
        Ok(with_upstreams(handle, upstream, writers))
    }

    /// Starts the join steps of a statement, each writing its output topic and reading the one
    /// before. Returns them as one handle (the last step owning the others), and where the query
    /// after them starts reading its left input: the statement's `offset_reset` when there are
    /// no steps, else the last step's output from the beginning (every record of it belongs to
    /// this statement). With `transient`, the steps are a push query's (see `crate::transient`).
    /// `rekeying` says which steps re-key their one-partition streams in their task.
    pub(crate) async fn start_steps(
        &self,
        query_id: &str,
        steps: Vec<PlannedStep>,
        offset_reset: OffsetReset,
        rekeying: StepRekeying<'_>,
        mut transient: Option<&mut TransientResources>,
    ) -> Result<(Option<QueryHandle>, OffsetReset), EngineError> {
        let config = &self.inner.config;
        let mut upstream: Option<QueryHandle> = None;
        let mut left_reset = offset_reset;
        for (index, mut step) in steps.into_iter().enumerate() {
            self.rekey_step_in_task(query_id, index + 1, &mut step, rekeying)
                .await?;
            let output_topic = config.physical_topic(&step.output.topic);
            if let Some(resources) = transient.as_deref_mut() {
                resources.add_topic(output_topic.clone());
            }
            self.inner
                .connection
                .create_topic(
                    &output_topic,
                    step.output.partitions,
                    config.default_replicas,
                    &[],
                )
                .await?;
            let (writers, resets) = self
                .start_repartition_writers(
                    &step.id,
                    step.repartitions,
                    [left_reset, offset_reset],
                    transient.as_deref_mut(),
                )
                .await?;
            let handle = self
                .start_stateless(
                    &step.id,
                    step.plan,
                    &step.output,
                    resets,
                    transient.as_deref_mut(),
                    false,
                )
                .await?;
            upstream = Some(with_upstreams(handle, upstream, writers));
            left_reset = OffsetReset::Earliest;
        }
        Ok((upstream, left_reset))
    }

    /// Re-keys the streams of join step `number` (from 1) of `query_id` in its task, removing its
    /// repartition writers, when `rekeying` says so; refuses a recorded choice that no longer
    /// holds.
    pub(crate) async fn rekey_step_in_task(
        &self,
        query_id: &str,
        number: usize,
        step: &mut PlannedStep,
        rekeying: StepRekeying<'_>,
    ) -> Result<(), EngineError> {
        let rekeys = match rekeying {
            StepRekeying::Recorded(numbers) if !numbers.contains(&number) => None,
            StepRekeying::Recorded(_) => Some(
                self.join_rekeys_in_task(&step.plan, &step.repartitions)
                    .await?
                    .ok_or_else(|| {
                        EngineError::invalid(format!(
                            "the join step {} of query {query_id} re-keys its joined streams \
                                 in its one partition task, but they or the sources they join no \
                                 longer have one partition each: keys would meet in different \
                                 tasks\nhint: TERMINATE {query_id}, then create it again",
                            step.id
                        ))
                    })?,
            ),
            StepRekeying::WherePossible => {
                self.join_rekeys_in_task(&step.plan, &step.repartitions)
                    .await?
            }
        };
        if let Some(rekeys) = rekeys {
            rekeys.apply(&mut step.plan);
            step.repartitions.clear();
        }
        Ok(())
    }

    fn register_query_handle(&self, id: &str, handle: QueryHandle) -> Result<(), EngineError> {
        let previous = self
            .inner
            .queries
            .lock()
            .map_err(|_| poisoned())?
            .insert(id.to_owned(), handle);
        drop(previous);
        Ok(())
    }

    /// Plans a persistent statement. One that joins more than two sources, or aggregates a join,
    /// becomes a chain of join steps and a last query over their outputs (see
    /// `eddy_planner::first_join_step`); each step and the last query are planned by
    /// [`Self::plan_two_way`].
    pub(crate) async fn plan_persistent(
        &self,
        query_id: &str,
        select: &crate::execute::SelectParts<'_>,
        catalog: &Catalog,
    ) -> Result<PlannedQuery, EngineError> {
        let mut query = select.query.clone();
        let mut partition_by = select.partition_by.to_vec();
        let mut within: std::collections::VecDeque<_> = select.within.iter().copied().collect();
        let mut catalog = std::borrow::Cow::Borrowed(catalog);
        let mut steps: Vec<PlannedStep> = Vec::new();
        let mut step_outputs: Vec<String> = Vec::new();
        let mut sources: Vec<String> = Vec::new();
        while let Some(mut step) = eddy_planner::first_join_step(&query, &catalog, &step_outputs)? {
            let number = steps.len() + 1;
            let step_id = format!("{query_id}-JOIN-{number}");
            let clauses = eddy_planner::Clauses {
                within: within.pop_front().flatten(),
                ..Default::default()
            };
            // The rest first: the step outputs only the columns the rest reads.
            (query, partition_by) = step.rewrite(&query, &partition_by)?;
            step.keep_only_columns_read_by(&query, &partition_by);
            let (plan, repartitions) = self
                .plan_two_way(&step_id, &step.query, clauses, &catalog)
                .await?;
            let output = self.step_output(query_id, number, &step, &plan);
            sources.extend(step.user_sources().map(str::to_owned));
            catalog.to_mut().replace_source(output.clone());
            step_outputs.push(output.name.clone());
            steps.push(PlannedStep {
                id: step_id,
                plan,
                repartitions,
                output,
            });
        }
        let clauses = eddy_planner::Clauses {
            partition_by: &partition_by,
            within: within.pop_front().flatten(),
            ..select.clauses()
        };
        let (plan, repartitions) = self
            .plan_two_way(query_id, &query, clauses, &catalog)
            .await?;
        let read = std::iter::once(&plan.source.name)
            .chain(plan.join.as_ref().map(|join| &join.table.name));
        for name in read {
            if !step_outputs.contains(name) && !sources.contains(name) {
                sources.push(name.clone());
            }
        }
        Ok(PlannedQuery {
            plan,
            repartitions,
            steps,
            sources,
        })
    }

    /// The source a join step writes: the columns of both sides that the rest of the statement
    /// reads (named as the step's query names them), in an internal topic of the statement's query with the join's partitions.
    fn step_output(
        &self,
        query_id: &str,
        number: usize,
        step: &eddy_planner::JoinStep,
        plan: &eddy_planner::StreamingPlan,
    ) -> Source {
        let key_count = plan.sink_columns.iter().filter(|c| c.is_key()).count();
        Source {
            read_only: false,
            name: step.output_name.clone(),
            // A join of two tables is a table; any join of a stream is a stream.
            kind: plan.source.kind,
            columns: plan.sink_columns.clone(),
            topic: self
                .inner
                .config
                .query_topic(query_id, &format!("join-{number}")),
            key_format: crate::ddl::default_key_format(&plan.source, key_count),
            value_format: "JSON".into(),
            value_delimiter: None,
            wrap_single_value: None,
            timestamp_column: None,
            timestamp_format: None,
            partitions: plan.source.partitions.max(1),
            written_by: Some(query_id.to_owned()),
            generator: None,
            window: None,
            sql: String::new(),
        }
    }

    /// Plans a query of at most one join. A join whose stream side is not partitioned like the
    /// other side is planned over that stream repartitioned by its join column (both streams of
    /// a stream-stream join may need it); the writers are returned with the plan.
    pub(crate) async fn plan_two_way(
        &self,
        query_id: &str,
        query: &sqlparser::ast::Query,
        clauses: eddy_planner::Clauses<'_>,
        catalog: &Catalog,
    ) -> Result<(eddy_planner::StreamingPlan, Vec<JoinRepartition>), EngineError> {
        let mut catalog = std::borrow::Cow::Borrowed(catalog);
        let mut query = std::borrow::Cow::Borrowed(query);
        let mut repartitions: Vec<JoinRepartition> = Vec::new();
        loop {
            let planned = self
                .inner
                .planner
                .plan_select(&query, clauses, &catalog)
                .await;
            match planned {
                // Keyed by an expression: repartition by it, and join on the new key column.
                Err(
                    error @ eddy_planner::PlanError::JoinNotCoPartitioned {
                        repartition_by: None,
                        ..
                    },
                ) => {
                    let eddy_planner::PlanError::JoinNotCoPartitioned {
                        stream,
                        table,
                        right,
                        ..
                    } = &error
                    else {
                        return Err(error.into());
                    };
                    let rekey = eddy_planner::rekey_join_expression(&query, *right, &catalog)?
                        .filter(|rekey| rekey.stream == *stream)
                        .filter(|_| !repartitions.iter().any(|r| r.right == *right));
                    let Some(rekey) = rekey else {
                        return Err(error.into());
                    };
                    let writer = self
                        .inner
                        .planner
                        .plan_query(&rekey.writer_query, &rekey.partition_by, &catalog)
                        .await?;
                    let repartition =
                        self.repartition_of(query_id, writer, stream, table, *right, &catalog)?;
                    catalog
                        .to_mut()
                        .replace_source(repartition.internal.clone());
                    repartitions.push(repartition);
                    query = std::borrow::Cow::Owned(rekey.rewritten);
                }
                Err(eddy_planner::PlanError::JoinNotCoPartitioned {
                    stream,
                    table,
                    repartition_by: Some(column),
                    right,
                    ..
                }) if !repartitions.iter().any(|r| r.right == right) => {
                    let repartition = self
                        .join_repartition(query_id, &stream, &table, &column, right, &catalog)
                        .await?;
                    catalog
                        .to_mut()
                        .replace_source(repartition.internal.clone());
                    repartitions.push(repartition);
                }
                other => return Ok((other?, repartitions)),
            }
        }
    }

    /// The writer that repartitions `stream` by `column` into the query's internal topic
    /// (`...-repartition`, or `...-repartition-right` for the right stream of a stream-stream
    /// join, with the partition count and key format of the other side, `table`), and the stream
    /// as the join reads it there (same name, `column` as its key).
    async fn join_repartition(
        &self,
        query_id: &str,
        stream: &str,
        table: &str,
        column: &str,
        right: bool,
        catalog: &Catalog,
    ) -> Result<JoinRepartition, EngineError> {
        let writer_text = format!("SELECT * FROM `{stream}` PARTITION BY `{column}` EMIT CHANGES;");
        let writer_statement = eddy_sql::parse_statements(&writer_text)?
            .into_iter()
            .next()
            .ok_or_else(|| EngineError::Internal("repartition query did not parse".into()))?;
        let writer_select = crate::execute::select_of(&writer_statement.statement)
            .ok_or_else(|| EngineError::Internal("repartition query is not a SELECT".into()))?;
        let writer = self
            .inner
            .planner
            .plan_query(&writer_select.query, &writer_select.partition_by, catalog)
            .await?;
        self.repartition_of(query_id, writer, stream, table, right, catalog)
    }

    /// A join's repartition by `writer` (a `PARTITION BY` of `stream`) into the query's internal
    /// topic, with the partition count and key format of the other side, `table`.
    fn repartition_of(
        &self,
        query_id: &str,
        writer: eddy_planner::StreamingPlan,
        stream: &str,
        table: &str,
        right: bool,
        catalog: &Catalog,
    ) -> Result<JoinRepartition, EngineError> {
        let config = &self.inner.config;
        let table = catalog.require_source(table)?;
        let internal = Source {
            read_only: false,
            name: stream.to_owned(),
            kind: eddy_catalog::SourceKind::Stream,
            columns: writer.sink_columns.clone(),
            topic: config.query_topic(
                query_id,
                if right {
                    "repartition-right"
                } else {
                    "repartition"
                },
            ),
            key_format: table.key_format.clone(),
            value_format: "JSON".into(),
            value_delimiter: None,
            wrap_single_value: None,
            timestamp_column: None,
            timestamp_format: None,
            partitions: table.partitions,
            written_by: Some(query_id.to_owned()),
            generator: None,
            window: None,
            sql: String::new(),
        };
        Ok(JoinRepartition {
            writer,
            internal,
            right,
        })
    }

    /// Starts the writers that fill a join's repartition topics. `resets` are where the streams
    /// they repartition start; returned with the resets of the join over their topics (whose
    /// every record belongs to this query). With `transient`, they are a push query's: they
    /// neither subscribe nor commit, and their topics are recorded for its clean-up.
    pub(crate) async fn start_repartition_writers(
        &self,
        query_id: &str,
        repartitions: Vec<JoinRepartition>,
        mut resets: [OffsetReset; 2],
        mut transient: Option<&mut TransientResources>,
    ) -> Result<(Vec<QueryHandle>, [OffsetReset; 2]), EngineError> {
        let config = &self.inner.config;
        let group_id = config.query_group_id(query_id);
        let mut writers = Vec::with_capacity(repartitions.len());
        for JoinRepartition {
            writer,
            internal,
            right,
        } in repartitions
        {
            let repartition_topic = config.physical_topic(&internal.topic);
            if let Some(resources) = transient.as_deref_mut() {
                resources.add_topic(repartition_topic.clone());
            }
            self.inner
                .connection
                .create_topic(
                    &repartition_topic,
                    internal.partitions,
                    config.default_replicas,
                    &[],
                )
                .await?;
            let suffix = if right {
                "repartition-right"
            } else {
                "repartition"
            };
            let side = usize::from(right);
            let writer_spec = QuerySpec {
                query_id: format!("{query_id}-{suffix}"),
                group_id: format!("{group_id}-{suffix}"),
                persistent: transient.is_none(),
                source_topic: self.physical_topic(&writer.source),
                source_layout: source_layout(&writer.source)?,
                timestamp_column: crate::layout::timestamp_index(&writer.source),
                timestamp_format: crate::layout::timestamp_format(&writer.source)?,
                drop_tombstones: true,
                sink: SinkSpec::Kafka {
                    topic: repartition_topic,
                    producer: self.inner.producer.get()?,
                    layout: crate::layout::sink_layout(&internal, &writer)?,
                    partitions: internal.partitions,
                },
                plan: Arc::new(writer),
                state: None,
                single_task: false,
                upsert: None,
                join: None,
                aggregate_joined: None,
                rows_view: None,
                generator: None,
                offset_reset: resets[side],
                config: config.clone(),
                connection: self.inner.connection.clone(),
                processing_log: self.inner.processing_log.clone(),
            };
            writers.push(start_query(writer_spec).await?);
            resets[side] = OffsetReset::Earliest;
        }
        Ok((writers, resets))
    }

    /// Starts a query without aggregation that writes `sink`. With `transient`, it is a join
    /// step of a push query: it neither subscribes nor commits, and its join state has no
    /// changelog and a store of the push query's. With `materialize`, a persistent query that
    /// writes a table from tables keeps the table's rows for pull queries (`RowsView`).
    async fn start_stateless(
        &self,
        query_id: &str,
        plan: eddy_planner::StreamingPlan,
        sink: &Source,
        [offset_reset, right_reset]: [OffsetReset; 2],
        transient: Option<&mut TransientResources>,
        materialize: bool,
    ) -> Result<QueryHandle, EngineError> {
        let generator = plan.source.generator.clone();
        let persistent = transient.is_none();
        let join = if persistent {
            self.join_spec(
                &plan,
                &crate::materialize::join_store_name(query_id),
                Some(query_id),
                right_reset,
            )
            .await?
        } else {
            let store = crate::queries::transient_store_prefix(query_id);
            self.join_spec(
                &plan,
                &crate::materialize::join_store_name(&store),
                None,
                right_reset,
            )
            .await?
        };
        let plan = Arc::new(plan);
        let view = if materialize
            && persistent
            && sink.kind == eddy_catalog::SourceKind::Table
            && eddy_runtime::keeps_table_rows(&plan)
        {
            let store = self
                .inner
                .state
                .store(&crate::materialize::rows_store_name(query_id))
                .map_err(|e| EngineError::Internal(e.to_string()))?;
            Some(Arc::new(eddy_runtime::RowsView::new(
                Arc::clone(&plan),
                store,
            )?))
        } else {
            None
        };
        let spec = QuerySpec {
            query_id: query_id.to_owned(),
            group_id: self.inner.config.query_group_id(query_id),
            persistent,
            source_topic: self.physical_topic(&plan.source),
            source_layout: source_layout(&plan.source)?,
            timestamp_column: crate::layout::timestamp_index(&plan.source),
            timestamp_format: crate::layout::timestamp_format(&plan.source)?,
            drop_tombstones: plan.source.kind == eddy_catalog::SourceKind::Stream,
            // Only the query that keeps a source table's rows writes a read-only table; its
            // topic is the one it reads.
            sink: if sink.read_only {
                if view.is_none() {
                    return Err(EngineError::Internal(format!(
                        "the query of source table \"{}\" keeps no rows",
                        sink.name
                    )));
                }
                SinkSpec::View
            } else {
                SinkSpec::Kafka {
                    topic: self.physical_topic(sink),
                    producer: self.inner.producer.get()?,
                    layout: crate::layout::sink_layout(sink, &plan)?,
                    partitions: sink.partitions,
                }
            },
            plan,
            state: None,
            single_task: false,
            upsert: None,
            join,
            aggregate_joined: None,
            rows_view: view.clone(),
            generator,
            offset_reset,
            config: self.inner.config.clone(),
            connection: self.inner.connection.clone(),
            processing_log: self.inner.processing_log.clone(),
        };
        let handle = start_query(spec).await?;
        if let Some(view) = view {
            self.inner
                .views
                .lock()
                .map_err(|_| poisoned())?
                .insert(sink.name.clone(), view);
        }
        Ok(handle)
    }

    /// Stops a persistent query on this server, committing its progress.
    pub(crate) async fn stop_persistent_query(&self, id: &str) {
        let handle = self
            .inner
            .queries
            .lock()
            .ok()
            .and_then(|mut q| q.remove(id));
        if let Some(handle) = handle {
            handle.stop().await;
        }
    }

    /// Properties in force for a new query: the session's, over the defaults.
    pub(crate) fn query_properties(&self, session: &crate::Session) -> BTreeMap<String, String> {
        session.properties.clone()
    }
}

/// The statement whose SELECT a persistent query runs: the one that created it, except for a
/// source table's query, which reads its table whole (its CREATE SOURCE TABLE has no SELECT).
pub(crate) fn query_select_text(query: &QueryInfo) -> String {
    match query.kind {
        QueryKind::CreateSourceTable => {
            format!("SELECT * FROM `{}`;", query.sink.replace('`', "``"))
        }
        _ => query.sql.clone(),
    }
}

/// A persistent statement, planned: the query that writes its sink, and the join steps that
/// write the internal sources it reads.
pub(crate) struct PlannedQuery {
    pub(crate) plan: eddy_planner::StreamingPlan,
    /// Writers of the streams its join reads repartitioned.
    pub(crate) repartitions: Vec<JoinRepartition>,
    /// In the order they run: each reads the one before (its left side) and the statement's
    /// next joined source.
    pub(crate) steps: Vec<PlannedStep>,
    /// The streams and tables of the catalog the statement reads, in the order it names them.
    pub(crate) sources: Vec<String>,
}

impl PlannedQuery {
    /// The plans of the join steps, each with the source it writes, then the last query's.
    pub(crate) fn explain(&self) -> String {
        let mut text = String::new();
        for (number, step) in self.steps.iter().enumerate() {
            text.push_str(&format!(
                "Join step {} (writes \"{}\"):\n{}\n",
                number + 1,
                step.output.name,
                step.plan.explain()
            ));
        }
        if !self.steps.is_empty() {
            text.push_str("Over the join steps:\n");
        }
        text.push_str(&self.plan.explain());
        text
    }
}

/// One join of a chain: its query (id `<query id>-JOIN-<n>`), writing `output`.
/// `handle` owning the queries that feed it: `writers` (its repartition writers, which it reads)
/// and before them `steps` (the join steps, which the writers or the query read).
pub(crate) fn with_upstreams(
    mut handle: QueryHandle,
    steps: Option<QueryHandle>,
    writers: Vec<QueryHandle>,
) -> QueryHandle {
    for writer in writers.into_iter().rev() {
        handle = handle.with_first_upstream(writer);
    }
    match steps {
        Some(steps) => handle.with_first_upstream(steps),
        None => handle,
    }
}

/// Which join steps [`Engine::start_steps`] re-keys in their task.
#[derive(Clone, Copy)]
pub(crate) enum StepRekeying<'a> {
    /// Those a persistent query recorded at creation, by number from 1
    /// (`QueryInfo::steps_rekeying_in_task`).
    Recorded(&'a [usize]),
    /// Every step whose streams can be now (a push query decides at each start).
    WherePossible,
}

pub(crate) struct PlannedStep {
    pub(crate) id: String,
    pub(crate) plan: eddy_planner::StreamingPlan,
    pub(crate) repartitions: Vec<JoinRepartition>,
    output: Source,
}

/// The re-keying of a join's streams in the join's own task (see
/// [`Engine::join_rekeys_in_task`]): for each stream, whether it is the right side, the stages
/// that re-key its records, and the stream as it is in the catalog.
pub(crate) struct JoinRekeys(Vec<(bool, Vec<eddy_planner::Stage>, Source)>);

impl JoinRekeys {
    /// Makes `plan` read each stream as it is and re-key it before its own stages.
    pub(crate) fn apply(self, plan: &mut eddy_planner::StreamingPlan) {
        for (right, mut stages, stream) in self.0 {
            match (right, plan.join.as_mut()) {
                (true, Some(join)) => {
                    stages.append(&mut join.table_stages);
                    join.table_stages = stages;
                    join.table = stream;
                }
                _ => {
                    stages.append(&mut plan.stages);
                    plan.stages = stages;
                    plan.source = stream;
                }
            }
        }
    }
}

impl Engine {
    /// How the join of `plan` can re-key its streams in its own task instead of writing them to
    /// the repartition topics of `repartitions`: when each stream has one partition (its topic
    /// now, not only the catalog), so does the side it joins, and its writer keeps every row in
    /// order. A repartition topic of one partition would hold the same records in the same
    /// order, at the cost of writing and reading each of them once more. `None` when any of them
    /// cannot be.
    pub(crate) async fn join_rekeys_in_task(
        &self,
        plan: &eddy_planner::StreamingPlan,
        repartitions: &[JoinRepartition],
    ) -> Result<Option<JoinRekeys>, EngineError> {
        if plan.join.is_none() || repartitions.is_empty() {
            return Ok(None);
        }
        let mut rekeys = Vec::with_capacity(repartitions.len());
        for repartition in repartitions {
            let stream = &repartition.writer.source;
            if repartition.internal.partitions != 1 || stream.generator.is_some() {
                return Ok(None);
            }
            let topic = self.physical_topic(stream);
            let partitions = match self.inner.connection.topic(&topic).await? {
                Some(topic) => topic.partitions,
                None => stream.partitions,
            };
            if partitions != 1 {
                return Ok(None);
            }
            let Some(stages) =
                eddy_planner::rekey_in_task(&repartition.writer, &repartition.internal)
            else {
                return Ok(None);
            };
            rekeys.push((repartition.right, stages, stream.clone()));
        }
        Ok(Some(JoinRekeys(rekeys)))
    }
}

/// A join's stream repartitioned by the join column: the writer query, and the stream as the
/// join reads it from the internal topic.
pub(crate) struct JoinRepartition {
    writer: eddy_planner::StreamingPlan,
    internal: Source,
    /// Whether it is the right stream of a stream-stream join.
    right: bool,
}

pub(crate) fn poisoned() -> EngineError {
    EngineError::Internal("a lock was poisoned by an earlier panic".into())
}
