//! A running continuous query: its driver (consumer, batching, commits) and partition tasks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{Int32Type, Int64Type};
use eddy_common::config::EngineConfig;
use eddy_format::{EncodedBatch, RawBatch, RecordDecoder, RecordEncoder, RecordPart, SourceLayout};
use eddy_planner::StreamingPlan;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::aggregate::{
    MaterializedView, PartitionAggregate, StateSpec, commit_partition, restore_partition,
    split_rows,
};
use crate::kafka::{KafkaConnection, KafkaError};
use crate::processing_log::{ErrorKind, ProcessingLog};
use crate::upsert::{UpsertSpec, Upserter};

/// Where a query starts when its consumer group has no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    Earliest,
    Latest,
}

impl OffsetReset {
    /// Parses `auto.offset.reset` values.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "earliest" => Some(OffsetReset::Earliest),
            "latest" => Some(OffsetReset::Latest),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        }
    }
}

/// A failure that stops a query.
#[derive(Debug, Error)]
pub enum QueryError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("cannot produce to topic \"{topic}\": {message}")]
    Produce { topic: String, message: String },
    #[error("cannot set up the decoder of topic \"{topic}\": {message}")]
    Format { topic: String, message: String },
    #[error("{0}")]
    Plan(String),
    #[error("expression failed: {0}")]
    Expression(String),
    #[error("state store: {0}")]
    State(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Where the output rows go.
pub enum SinkSpec {
    /// A Kafka topic (persistent queries).
    Kafka {
        /// Physical topic name.
        topic: String,
        producer: FutureProducer,
        /// Layout of the output records (the sink's formats and columns).
        layout: SourceLayout,
    },
    /// A client (push queries): batches of output rows in arrival order.
    Channel { sender: mpsc::Sender<RecordBatch> },
}

/// Everything needed to run one query.
pub struct QuerySpec {
    pub query_id: String,
    /// Consumer group. Persistent queries subscribe and commit in it; transient ones only assign.
    pub group_id: String,
    /// Persistent queries subscribe, commit and survive restarts; transient ones read every
    /// partition from `offset_reset` and never commit.
    pub persistent: bool,
    /// Physical source topic.
    pub source_topic: String,
    pub source_layout: SourceLayout,
    /// Index (in the decoded source batch) of the column that holds the event time
    /// (`TIMESTAMP='col'`); `None` keeps the Kafka record timestamp as `ROWTIME`.
    pub timestamp_column: Option<usize>,
    /// Skip records without a value (Kafka tombstones), as streams do.
    pub drop_tombstones: bool,
    pub plan: Arc<StreamingPlan>,
    /// Where an aggregation keeps its state; required when the plan aggregates.
    pub state: Option<StateSpec>,
    /// The source is a table whose changes must be retracted: the query keeps each key's last
    /// contribution here. On a query without aggregation (the writer of a repartition topic) the
    /// output rows carry their sign; on an aggregation (transient, one task) they are folded in.
    pub upsert: Option<UpsertSpec>,
    /// Run every input partition in one task (partition 0's): a transient aggregation reads all
    /// partitions without repartitioning, so one task must see every key.
    pub single_task: bool,
    pub sink: SinkSpec,
    pub offset_reset: OffsetReset,
    pub config: EngineConfig,
    pub connection: KafkaConnection,
    pub processing_log: ProcessingLog,
}

/// Lifecycle of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryStatus {
    Running,
    /// Stopped by a failure; the message says why.
    Error(String),
    /// Stopped on request or because its client went away.
    Stopped,
}

/// Counters of a running query.
#[derive(Debug)]
pub struct QueryMetrics {
    pub records_in: AtomicU64,
    pub records_out: AtomicU64,
    pub records_skipped: AtomicU64,
    /// Changelog records to replay before the query's partitions resume (grows as tasks start).
    pub restore_records_total: AtomicU64,
    /// Changelog records replayed so far.
    pub restore_records_done: AtomicU64,
    status: Mutex<QueryStatus>,
}

impl QueryMetrics {
    fn new() -> Self {
        Self {
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            records_skipped: AtomicU64::new(0),
            restore_records_total: AtomicU64::new(0),
            restore_records_done: AtomicU64::new(0),
            status: Mutex::new(QueryStatus::Running),
        }
    }

    pub fn status(&self) -> QueryStatus {
        self.status
            .lock()
            .map(|s| s.clone())
            .unwrap_or(QueryStatus::Error("status lock poisoned".into()))
    }

    fn set_status(&self, status: QueryStatus) {
        if let Ok(mut current) = self.status.lock() {
            // The first terminal status wins: an error is not overwritten by the stop that follows it.
            if *current == QueryStatus::Running {
                *current = status;
            }
        }
    }
}

/// Owns a running query. Dropping it stops the query and frees every task.
pub struct QueryHandle {
    pub query_id: String,
    pub metrics: Arc<QueryMetrics>,
    cancel: CancellationToken,
    driver: Option<JoinHandle<()>>,
    progress: QueryProgress,
    /// Queries that feed this one (the repartitioning half of an aggregation), owned by it.
    upstream: Vec<QueryHandle>,
}

impl QueryHandle {
    /// How far each query of the chain (upstream first, this one last) has processed its input.
    pub fn progress_chain(&self) -> Vec<QueryProgress> {
        let mut chain: Vec<QueryProgress> = self
            .upstream
            .iter()
            .flat_map(QueryHandle::progress_chain)
            .collect();
        chain.push(self.progress.clone());
        chain
    }

    /// Makes `upstream` part of this query: it stops, fails and is dropped with it.
    pub fn with_upstream(mut self, upstream: QueryHandle) -> Self {
        self.upstream.push(upstream);
        self
    }

    /// Stops the query gracefully: queued batches finish, acknowledged offsets are committed.
    pub async fn stop(mut self) {
        for upstream in std::mem::take(&mut self.upstream) {
            Box::pin(upstream.stop()).await;
        }
        self.cancel.cancel();
        if let Some(driver) = self.driver.take()
            && tokio::time::timeout(Duration::from_secs(30), driver)
                .await
                .is_err()
        {
            warn!(
                query = self.query_id,
                "query did not stop within 30 s; aborted"
            );
        }
    }

    pub fn status(&self) -> QueryStatus {
        for upstream in &self.upstream {
            if let status @ QueryStatus::Error(_) = upstream.status() {
                return status;
            }
        }
        self.metrics.status()
    }

    /// True once the query has stopped for any reason.
    pub fn is_finished(&self) -> bool {
        self.driver.as_ref().is_none_or(|d| d.is_finished())
            || self.upstream.iter().any(QueryHandle::is_finished)
    }

    /// Counters of the query and of the queries feeding it (records in are counted where they
    /// enter: at the first query of the chain).
    pub fn counts(&self) -> (u64, u64, u64) {
        let first = self
            .upstream
            .first()
            .map(|u| &u.metrics)
            .unwrap_or(&self.metrics);
        let skipped = self.metrics.records_skipped.load(Ordering::Relaxed)
            + self
                .upstream
                .iter()
                .map(|u| u.metrics.records_skipped.load(Ordering::Relaxed))
                .sum::<u64>();
        (
            first.records_in.load(Ordering::Relaxed),
            self.metrics.records_out.load(Ordering::Relaxed),
            skipped,
        )
    }
}

impl Drop for QueryHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(driver) = self.driver.take() {
            driver.abort();
        }
    }
}

/// Progress of one partition: the next offset whose input has been fully processed and whose
/// output has been acknowledged.
type Progress = Arc<AtomicI64>;

/// A read-only view of how far a query has processed each partition of its source topic.
#[derive(Clone)]
pub struct QueryProgress {
    /// Physical source topic.
    pub topic: String,
    /// Consumer group whose committed offsets tell how far the query got before this process
    /// (a partition with nothing new to process has no progress in memory).
    pub group_id: String,
    /// True for an aggregation: its progress is set once its state is restored, and committed
    /// offsets say nothing about a state still being restored.
    pub stateful: bool,
    partitions: Arc<Mutex<HashMap<i32, Progress>>>,
}

impl QueryProgress {
    /// The next offset of `partition` whose effects are visible (output acknowledged, state
    /// written); `None` before the query has processed anything there.
    pub fn processed(&self, partition: i32) -> Option<i64> {
        let partitions = self.partitions.lock().ok()?;
        partitions
            .get(&partition)
            .map(|p| p.load(Ordering::Acquire))
            .filter(|next| *next >= 0)
    }
}

/// Consumer context that commits a partition's acknowledged progress when the group takes the
/// partition away, so that the next owner starts where this one stopped.
struct QueryConsumerContext {
    topic: String,
    progress: Arc<Mutex<HashMap<i32, Progress>>>,
    revoked: Arc<Mutex<Vec<i32>>>,
    /// Partitions the group gave this consumer, for the driver to start their tasks at once (an
    /// aggregation restores its state before records arrive, even when none do).
    assigned: Arc<Mutex<Vec<i32>>>,
}

impl ClientContext for QueryConsumerContext {}

impl ConsumerContext for QueryConsumerContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance
            && let Ok(mut assigned) = self.assigned.lock()
        {
            assigned.extend(
                partitions
                    .elements()
                    .iter()
                    .filter(|e| e.topic() == self.topic)
                    .map(|e| e.partition()),
            );
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(partitions) = rebalance else {
            return;
        };
        let mut commit = TopicPartitionList::new();
        let Ok(progress) = self.progress.lock() else {
            return;
        };
        let Ok(mut revoked) = self.revoked.lock() else {
            return;
        };
        for element in partitions.elements() {
            let partition = element.partition();
            revoked.push(partition);
            if let Some(next) = progress
                .get(&partition)
                .map(|p| p.load(Ordering::Acquire))
                .filter(|n| *n >= 0)
            {
                let _ = commit.add_partition_offset(&self.topic, partition, Offset::Offset(next));
            }
        }
        if commit.count() > 0
            && let Err(error) = consumer.commit(&commit, CommitMode::Sync)
        {
            warn!(%error, "commit on revocation failed; records may be processed again");
        }
    }
}

struct PartitionWorker {
    sender: mpsc::Sender<RawBatch>,
    progress: Progress,
}

/// Starts `spec` and returns its handle.
pub async fn start_query(spec: QuerySpec) -> Result<QueryHandle, QueryError> {
    // Validate the formats before anything runs, so a bad definition fails the statement.
    RecordDecoder::new(&spec.source_layout).map_err(|e| QueryError::Format {
        topic: spec.source_topic.clone(),
        message: e.to_string(),
    })?;
    if let SinkSpec::Kafka { topic, layout, .. } = &spec.sink {
        RecordEncoder::new(layout).map_err(|e| QueryError::Format {
            topic: topic.clone(),
            message: e.to_string(),
        })?;
    }

    let progress: Arc<Mutex<HashMap<i32, Progress>>> = Arc::default();
    let revoked: Arc<Mutex<Vec<i32>>> = Arc::default();
    let assigned: Arc<Mutex<Vec<i32>>> = Arc::default();
    let context = QueryConsumerContext {
        topic: spec.source_topic.clone(),
        progress: Arc::clone(&progress),
        revoked: Arc::clone(&revoked),
        assigned: Arc::clone(&assigned),
    };
    let mut config = spec.connection.client_config();
    config
        .set("group.id", &spec.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", spec.offset_reset.as_str())
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "2000")
        .set(
            "fetch.wait.max.ms",
            spec.config.max_batch_wait_ms.max(1).to_string(),
        );
    let consumer: StreamConsumer<QueryConsumerContext> = config
        .create_with_context(context)
        .map_err(|e| KafkaError::client("consumer creation", e))?;

    if spec.persistent {
        consumer.subscribe(&[&spec.source_topic]).map_err(|e| {
            KafkaError::client(format!("subscription to \"{}\"", spec.source_topic), e)
        })?;
    } else {
        let info = spec
            .connection
            .topic(&spec.source_topic)
            .await?
            .ok_or_else(|| KafkaError::UnknownTopic {
                topic: spec.source_topic.clone(),
            })?;
        let offset = match spec.offset_reset {
            OffsetReset::Earliest => Offset::Beginning,
            OffsetReset::Latest => Offset::End,
        };
        let mut assignment = TopicPartitionList::new();
        for partition in 0..info.partitions {
            assignment
                .add_partition_offset(&spec.source_topic, partition, offset)
                .map_err(|e| KafkaError::client("assignment", e))?;
        }
        consumer
            .assign(&assignment)
            .map_err(|e| KafkaError::client("assignment", e))?;
    }

    let metrics = Arc::new(QueryMetrics::new());
    let cancel = CancellationToken::new();
    let query_id = spec.query_id.clone();
    let query_progress = QueryProgress {
        topic: spec.source_topic.clone(),
        group_id: spec.group_id.clone(),
        stateful: spec.state.is_some(),
        partitions: Arc::clone(&progress),
    };
    let driver = Driver {
        spec,
        consumer,
        progress,
        revoked,
        assigned,
        metrics: Arc::clone(&metrics),
        cancel: cancel.clone(),
    };
    let handle = tokio::spawn(driver.run());
    info!(query = query_id, "query started");
    Ok(QueryHandle {
        query_id,
        metrics,
        cancel,
        driver: Some(handle),
        progress: query_progress,
        upstream: Vec::new(),
    })
}

struct Driver {
    spec: QuerySpec,
    consumer: StreamConsumer<QueryConsumerContext>,
    progress: Arc<Mutex<HashMap<i32, Progress>>>,
    revoked: Arc<Mutex<Vec<i32>>>,
    assigned: Arc<Mutex<Vec<i32>>>,
    metrics: Arc<QueryMetrics>,
    cancel: CancellationToken,
}

impl Driver {
    async fn run(self) {
        let Driver {
            spec,
            consumer,
            progress,
            revoked,
            assigned,
            metrics,
            cancel,
        } = self;
        let spec = Arc::new(spec);
        let mut workers: HashMap<i32, PartitionWorker> = HashMap::new();
        let mut tasks: JoinSet<Result<(), QueryError>> = JoinSet::new();
        let mut buffers: HashMap<i32, RawBatch> = HashMap::new();
        let mut committed: HashMap<i32, i64> = HashMap::new();
        let wait = Duration::from_millis(spec.config.max_batch_wait_ms.max(1));
        let mut linger = tokio::time::interval(wait);
        linger.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut commit_tick = tokio::time::interval(Duration::from_millis(
            spec.config.commit_interval_ms.max(10),
        ));
        commit_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let max_batch = spec.config.max_batch_records.max(1);
        let mut consecutive_errors = 0u32;

        let outcome: Result<(), QueryError> = loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break Ok(()),
                Some(finished) = tasks.join_next(), if !tasks.is_empty() => {
                    match finished {
                        Ok(Ok(())) => break Ok(()), // the sink went away (push query done)
                        Ok(Err(error)) => break Err(error),
                        Err(join_error) if join_error.is_cancelled() => {}
                        Err(join_error) => break Err(QueryError::Internal(format!("partition task failed: {join_error}"))),
                    }
                }
                message = consumer.recv() => {
                    let message = match message {
                        Ok(message) => { consecutive_errors = 0; message }
                        Err(error) => {
                            consecutive_errors += 1;
                            warn!(query = spec.query_id, %error, "consumer error");
                            if consecutive_errors > 100 {
                                break Err(KafkaError::client("consume", error).into());
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let partition = message.partition();
                    let timestamp_ms = message.timestamp().to_millis().unwrap_or(0);
                    let buffer = buffers.entry(partition).or_insert_with(|| RawBatch::with_capacity(max_batch, max_batch * RAW_BYTES_PER_RECORD));
                    buffer.push(message.key(), message.payload(), timestamp_ms, partition, message.offset());
                    drop(message);
                    if buffer.len() >= max_batch {
                        let batch = std::mem::replace(buffer, RawBatch::with_capacity(max_batch, max_batch * RAW_BYTES_PER_RECORD));
                        let task = if spec.single_task { 0 } else { partition };
                        let worker = worker_for(task, &spec, &mut workers, &mut tasks, &progress, &metrics);
                        if worker.sender.send(batch).await.is_err() {
                            continue; // the task ended; join_next reports why
                        }
                    }
                }
                _ = linger.tick() => {
                    for (partition, buffer) in buffers.iter_mut() {
                        if buffer.is_empty() { continue; }
                        let batch = std::mem::replace(buffer, RawBatch::with_capacity(max_batch, max_batch * RAW_BYTES_PER_RECORD));
                        let task = if spec.single_task { 0 } else { *partition };
                        let worker = worker_for(task, &spec, &mut workers, &mut tasks, &progress, &metrics);
                        let _ = worker.sender.send(batch).await;
                    }
                    let revoked_now: Vec<i32> = revoked.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default();
                    for partition in revoked_now {
                        debug!(query = spec.query_id, partition, "partition revoked");
                        workers.remove(&partition);
                        buffers.remove(&partition);
                        committed.remove(&partition);
                        if let Ok(mut progress) = progress.lock() { progress.remove(&partition); }
                    }
                    let assigned_now: Vec<i32> = assigned.lock().map(|mut a| std::mem::take(&mut *a)).unwrap_or_default();
                    for partition in assigned_now {
                        debug!(query = spec.query_id, partition, "partition assigned");
                        let task = if spec.single_task { 0 } else { partition };
                        worker_for(task, &spec, &mut workers, &mut tasks, &progress, &metrics);
                    }
                }
                _ = commit_tick.tick(), if spec.persistent => {
                    let progress_of: HashMap<i32, Progress> =
                        workers.iter().map(|(partition, worker)| (*partition, Arc::clone(&worker.progress))).collect();
                    commit_progress(&consumer, &spec.source_topic, &progress_of, &mut committed, CommitMode::Async);
                }
            }
        };

        // Graceful end: close the partition queues, let queued batches finish, then commit what
        // was acknowledged.
        let progress_of: HashMap<i32, Progress> = workers
            .drain()
            .map(|(partition, worker)| (partition, worker.progress))
            .collect();
        if outcome.is_ok() && cancel.is_cancelled() {
            let drain = async { while tasks.join_next().await.is_some() {} };
            if tokio::time::timeout(Duration::from_secs(10), drain)
                .await
                .is_err()
            {
                warn!(
                    query = spec.query_id,
                    "partition tasks did not finish within 10 s"
                );
            }
        }
        tasks.abort_all();
        if spec.persistent {
            commit_progress(
                &consumer,
                &spec.source_topic,
                &progress_of,
                &mut committed,
                CommitMode::Sync,
            );
        }
        match outcome {
            Ok(()) => {
                metrics.set_status(QueryStatus::Stopped);
                info!(query = spec.query_id, "query stopped");
            }
            Err(error) => {
                warn!(query = spec.query_id, %error, "query failed");
                metrics.set_status(QueryStatus::Error(error.to_string()));
            }
        }
    }
}

fn commit_progress(
    consumer: &StreamConsumer<QueryConsumerContext>,
    topic: &str,
    progress: &HashMap<i32, Progress>,
    committed: &mut HashMap<i32, i64>,
    mode: CommitMode,
) {
    let mut list = TopicPartitionList::new();
    let mut advanced = Vec::new();
    for (partition, progress) in progress {
        let next = progress.load(Ordering::Acquire);
        if next >= 0
            && committed.get(partition).is_none_or(|c| *c < next)
            && list
                .add_partition_offset(topic, *partition, Offset::Offset(next))
                .is_ok()
        {
            advanced.push((*partition, next));
        }
    }
    if list.count() == 0 {
        return;
    }
    match consumer.commit(&list, mode) {
        Ok(()) => committed.extend(advanced),
        Err(error) => warn!(%error, topic, "offset commit failed; will retry"),
    }
}

fn worker_for<'a>(
    partition: i32,
    spec: &Arc<QuerySpec>,
    workers: &'a mut HashMap<i32, PartitionWorker>,
    tasks: &mut JoinSet<Result<(), QueryError>>,
    progress_registry: &Arc<Mutex<HashMap<i32, Progress>>>,
    metrics: &Arc<QueryMetrics>,
) -> &'a PartitionWorker {
    workers.entry(partition).or_insert_with(|| {
        let (sender, receiver) = mpsc::channel(spec.config.partition_queue_batches.max(1));
        let progress: Progress = Arc::new(AtomicI64::new(-1));
        if let Ok(mut registry) = progress_registry.lock() {
            registry.insert(partition, Arc::clone(&progress));
        }
        let task = PartitionTask {
            spec: Arc::clone(spec),
            partition,
            progress: Arc::clone(&progress),
            metrics: Arc::clone(metrics),
        };
        tasks.spawn(task.run(receiver));
        PartitionWorker { sender, progress }
    })
}

struct PartitionTask {
    spec: Arc<QuerySpec>,
    partition: i32,
    progress: Progress,
    metrics: Arc<QueryMetrics>,
}

impl PartitionTask {
    async fn run(self, mut receiver: mpsc::Receiver<RawBatch>) -> Result<(), QueryError> {
        let spec = &self.spec;
        let mut decoder =
            RecordDecoder::new(&spec.source_layout).map_err(|e| QueryError::Format {
                topic: spec.source_topic.clone(),
                message: e.to_string(),
            })?;
        let mut encoder = match &spec.sink {
            SinkSpec::Kafka { layout, topic, .. } => {
                Some(RecordEncoder::new(layout).map_err(|e| QueryError::Format {
                    topic: topic.clone(),
                    message: e.to_string(),
                })?)
            }
            SinkSpec::Channel { .. } => None,
        };
        let mut encoded = EncodedBatch::new();
        debug!(
            query = spec.query_id,
            partition = self.partition,
            "partition task started"
        );

        if spec.plan.aggregation.is_some() {
            return self
                .run_aggregate(receiver, decoder, encoder, encoded)
                .await;
        }
        if spec.upsert.is_some() {
            return self
                .run_upsert_writer(receiver, decoder, encoder, encoded)
                .await;
        }
        let mut skipped = Vec::new();
        while let Some(raw) = receiver.recv().await {
            let Some(&last_offset) = raw.offsets().last() else {
                continue;
            };
            skipped.clear();
            let batch = self.decode_input(&mut decoder, &raw, &mut skipped).await?;
            let output = self.process(batch, &mut skipped).await;
            if output.num_rows() > 0 {
                match (&spec.sink, encoder.as_mut()) {
                    (
                        SinkSpec::Kafka {
                            topic, producer, ..
                        },
                        Some(encoder),
                    ) => {
                        self.produce(topic, producer, encoder, &mut encoded, &output, false)
                            .await?;
                    }
                    (SinkSpec::Channel { sender }, _) => {
                        if sender.send(output.clone()).await.is_err() {
                            return Ok(()); // the client went away
                        }
                    }
                    _ => return Err(QueryError::Internal("sink without encoder".into())),
                }
                self.metrics
                    .records_out
                    .fetch_add(output.num_rows() as u64, Ordering::Relaxed);
            }
            self.progress.store(last_offset + 1, Ordering::Release);
        }
        Ok(())
    }

    /// Runs an aggregation: restores the partition's state, then folds every batch into it.
    async fn run_aggregate(
        &self,
        mut receiver: mpsc::Receiver<RawBatch>,
        mut decoder: RecordDecoder,
        mut encoder: Option<RecordEncoder>,
        mut encoded: EncodedBatch,
    ) -> Result<(), QueryError> {
        let spec = &self.spec;
        let state = spec.state.as_ref().ok_or_else(|| {
            QueryError::Internal("an aggregation started without a state store".into())
        })?;
        let view =
            MaterializedView::new(Arc::clone(&spec.plan), state.store.clone(), &state.limits)?;
        let mut aggregate = PartitionAggregate::new(view, self.partition);
        aggregate
            .restore(state, &spec.connection, &self.metrics, &spec.query_id)
            .await?;
        // The restored state covers the input below its source offset: that much is processed.
        self.progress
            .fetch_max(aggregate.next_source_offset(), Ordering::AcqRel);
        let changelog_producer = match &spec.sink {
            SinkSpec::Kafka { producer, .. } => Some(producer.clone()),
            SinkSpec::Channel { .. } => None,
        };
        let timeout = Duration::from_millis(spec.config.produce_timeout_ms);
        let aggregation = spec
            .plan
            .aggregation
            .as_ref()
            .ok_or_else(|| QueryError::Internal("an aggregation without aggregation".into()))?;
        // A transient aggregation over a table turns the table's changes into signed rows itself.
        let upserter = match &spec.upsert {
            Some(upsert) => Some((
                upsert,
                Upserter::new(upsert, Arc::clone(&aggregation.input_schema))?,
            )),
            None => None,
        };
        // Over a table, origin offsets are doubled (see `upsert`): halve them in reports.
        let origin_offset_divisor = if aggregation.retractable { 2 } else { 1 };
        let mut skipped = Vec::new();
        while let Some(raw) = receiver.recv().await {
            let Some(&last_offset) = raw.offsets().last() else {
                continue;
            };
            skipped.clear();
            let batch = self.decode_input(&mut decoder, &raw, &mut skipped).await?;
            // Records below the restored source offset are already counted in the state. (A
            // single task reads several partitions: its offsets are not one sequence, and the
            // origin offsets alone tell what was counted.)
            let batch = if spec.single_task {
                batch
            } else {
                skip_before(batch, aggregate.next_source_offset())?
            };
            let signs = match aggregation.sign_column {
                Some(column) => Some(sign_array(&batch, column)?),
                None => None,
            };
            let mut input = self.process(batch, &mut skipped).await;
            let mut signs = match signs {
                Some(signs) if signs.len() == input.num_rows() => Some(signs),
                Some(_) => {
                    return Err(QueryError::Internal(
                        "the signs of an aggregation's input rows were lost".into(),
                    ));
                }
                None => None,
            };
            if let Some((upsert, upserter)) = &upserter {
                let upserted = upserter.apply(&upsert.store, &raw, &input, &skipped, None)?;
                self.report_keyless(&upserted.keyless).await;
                commit_partition(
                    &upsert.store,
                    upserted.partition,
                    None,
                    None,
                    &upserted.writes,
                    last_offset + 1,
                    timeout,
                )
                .await?;
                input = upserted.rows;
                signs = Some(upserted.signs);
            }
            let applied = aggregate.apply(&input, signs.as_ref())?;
            for &(partition, offset) in &applied.null_keys {
                let offset = offset / origin_offset_divisor;
                self.metrics.records_skipped.fetch_add(1, Ordering::Relaxed);
                spec.processing_log
                    .report(
                        &spec.query_id,
                        ErrorKind::ExpressionError,
                        &state.origin_topic,
                        partition,
                        offset,
                        "a GROUP BY expression is NULL: the row belongs to no group and is skipped"
                            .to_owned(),
                        None,
                    )
                    .await;
            }
            for reason in &applied.failed_groups {
                self.metrics.records_skipped.fetch_add(1, Ordering::Relaxed);
                spec.processing_log
                    .report(
                        &spec.query_id,
                        ErrorKind::ExpressionError,
                        &spec.source_topic,
                        self.partition,
                        last_offset,
                        format!("the table row of a group could not be computed: {reason}"),
                        None,
                    )
                    .await;
            }
            let (rows, tombstones) = split_rows(&applied)?;
            debug!(
                query = spec.query_id,
                partition = self.partition,
                input = input.num_rows(),
                groups = applied.writes.len(),
                null_keys = applied.null_keys.len(),
                rows = rows.num_rows(),
                tombstones = tombstones.num_rows(),
                "aggregated a batch"
            );
            match (&spec.sink, encoder.as_mut()) {
                (
                    SinkSpec::Kafka {
                        topic, producer, ..
                    },
                    Some(encoder),
                ) => {
                    if rows.num_rows() > 0 {
                        self.produce(topic, producer, encoder, &mut encoded, &rows, false)
                            .await?;
                    }
                    if tombstones.num_rows() > 0 {
                        self.produce(topic, producer, encoder, &mut encoded, &tombstones, true)
                            .await?;
                    }
                }
                (SinkSpec::Channel { sender }, _) => {
                    if rows.num_rows() > 0 && sender.send(rows.clone()).await.is_err() {
                        return Ok(()); // the client went away
                    }
                }
                _ => return Err(QueryError::Internal("sink without encoder".into())),
            }
            self.metrics.records_out.fetch_add(
                (rows.num_rows() + tombstones.num_rows()) as u64,
                Ordering::Relaxed,
            );
            aggregate
                .commit(
                    state,
                    changelog_producer.as_ref(),
                    applied.writes,
                    last_offset + 1,
                    timeout,
                )
                .await?;
            self.progress.store(last_offset + 1, Ordering::Release);
        }
        Ok(())
    }

    /// Runs the writer of an aggregation over a table: restores the partition's contributions,
    /// then turns every batch of table records into signed rows for the repartition topic.
    async fn run_upsert_writer(
        &self,
        mut receiver: mpsc::Receiver<RawBatch>,
        mut decoder: RecordDecoder,
        mut encoder: Option<RecordEncoder>,
        mut encoded: EncodedBatch,
    ) -> Result<(), QueryError> {
        let spec = &self.spec;
        let upsert = spec
            .upsert
            .as_ref()
            .ok_or_else(|| QueryError::Internal("an upsert writer without its store".into()))?;
        let upserter = Upserter::new(upsert, Arc::clone(&spec.plan.output_schema))?;
        let checkpoint = restore_partition(
            &upsert.store,
            self.partition,
            upsert.changelog_topic.as_deref(),
            &spec.connection,
            &self.metrics,
            &spec.query_id,
        )
        .await?;
        let mut next_source_offset = checkpoint.source_offset.unwrap_or(0);
        self.progress
            .fetch_max(next_source_offset, Ordering::AcqRel);
        let SinkSpec::Kafka {
            topic, producer, ..
        } = &spec.sink
        else {
            return Err(QueryError::Internal(
                "an upsert writer must write to a topic".into(),
            ));
        };
        let encoder = encoder
            .as_mut()
            .ok_or_else(|| QueryError::Internal("sink without encoder".into()))?;
        let timeout = Duration::from_millis(spec.config.produce_timeout_ms);
        let mut skipped = Vec::new();
        while let Some(raw) = receiver.recv().await {
            let Some(&last_offset) = raw.offsets().last() else {
                continue;
            };
            skipped.clear();
            let batch = self.decode_input(&mut decoder, &raw, &mut skipped).await?;
            let batch = skip_before(batch, next_source_offset)?;
            let output = self.process(batch, &mut skipped).await;
            let upserted = upserter.apply(
                &upsert.store,
                &raw,
                &output,
                &skipped,
                Some(next_source_offset),
            )?;
            self.report_keyless(&upserted.keyless).await;
            if upserted.rows.num_rows() > 0 {
                self.produce(
                    topic,
                    producer,
                    encoder,
                    &mut encoded,
                    &upserted.rows,
                    false,
                )
                .await?;
                self.metrics
                    .records_out
                    .fetch_add(upserted.rows.num_rows() as u64, Ordering::Relaxed);
            }
            commit_partition(
                &upsert.store,
                self.partition,
                upsert.changelog_topic.as_deref(),
                Some(producer),
                &upserted.writes,
                last_offset + 1,
                timeout,
            )
            .await?;
            next_source_offset = last_offset + 1;
            self.progress.store(last_offset + 1, Ordering::Release);
        }
        Ok(())
    }

    /// Reports table records without a key: a table row needs one, so they are skipped.
    async fn report_keyless(&self, keyless: &[(i32, i64)]) {
        for &(partition, offset) in keyless {
            self.metrics.records_skipped.fetch_add(1, Ordering::Relaxed);
            self.spec
                .processing_log
                .report(
                    &self.spec.query_id,
                    ErrorKind::DeserializationError,
                    &self.spec.source_topic,
                    partition,
                    offset,
                    "a table record has no key: it updates no row and is skipped".to_owned(),
                    None,
                )
                .await;
        }
    }

    /// Decodes a raw batch, reporting malformed records, dropping stream tombstones and applying
    /// the event-time column. The (partition, offset) of every record skipped is added to
    /// `skipped`.
    async fn decode_input(
        &self,
        decoder: &mut RecordDecoder,
        raw: &RawBatch,
        skipped: &mut Vec<(i32, i64)>,
    ) -> Result<RecordBatch, QueryError> {
        let spec = &self.spec;
        {
            self.metrics
                .records_in
                .fetch_add(raw.len() as u64, Ordering::Relaxed);
            let decoded = decoder.decode(raw).map_err(|e| {
                QueryError::Internal(format!("decoder of \"{}\": {e}", spec.source_topic))
            })?;
            for error in &decoded.errors {
                self.metrics.records_skipped.fetch_add(1, Ordering::Relaxed);
                skipped.push((error.partition, error.offset));
                let record = raw
                    .offsets()
                    .iter()
                    .position(|o| *o == error.offset)
                    .and_then(|i| match error.part {
                        RecordPart::Key => raw.key(i),
                        RecordPart::Value => raw.value(i),
                    });
                spec.processing_log
                    .report(
                        &spec.query_id,
                        ErrorKind::DeserializationError,
                        &spec.source_topic,
                        error.partition,
                        error.offset,
                        error.reason.clone(),
                        record,
                    )
                    .await;
            }
            let mut batch = decoded.batch;
            if spec.drop_tombstones && !decoded.tombstones.is_empty() {
                batch = drop_rows(&batch, &decoded.tombstones)?;
            }
            match spec.timestamp_column {
                Some(column) => self.apply_event_time(batch, column, skipped).await,
                None => Ok(batch),
            }
        }
    }

    /// Makes `column` the batch's `ROWTIME`; rows without a usable timestamp are reported and skipped.
    async fn apply_event_time(
        &self,
        batch: RecordBatch,
        column: usize,
        skipped: &mut Vec<(i32, i64)>,
    ) -> Result<RecordBatch, QueryError> {
        use datafusion::arrow::compute::{cast, filter_record_batch, is_not_null};
        use datafusion::arrow::datatypes::{DataType, TimeUnit};
        // ROWTIME is BIGINT epoch milliseconds: timestamps of any unit go through Timestamp(ms).
        let millis = DataType::Timestamp(TimeUnit::Millisecond, None);
        let source = batch.column(column);
        let times = match source.data_type() {
            DataType::Timestamp(_, _) | DataType::Date32 => {
                cast(source, &millis).and_then(|t| cast(&t, &DataType::Int64))
            }
            DataType::Int64 | DataType::Int32 => cast(source, &DataType::Int64),
            other => {
                return Err(QueryError::Internal(format!(
                    "TIMESTAMP column has unsupported type {other}"
                )));
            }
        }
        .map_err(|e| QueryError::Internal(format!("event time: {e}")))?;
        let valid =
            is_not_null(&times).map_err(|e| QueryError::Internal(format!("event time: {e}")))?;
        let mut columns = batch.columns().to_vec();
        columns[0] = times;
        let batch = RecordBatch::try_new(batch.schema(), columns)
            .map_err(|e| QueryError::Internal(format!("event time: {e}")))?;
        if valid.true_count() == batch.num_rows() {
            return Ok(batch);
        }
        let partitions = batch.column(1).as_primitive_opt::<Int32Type>().cloned();
        let offsets = batch.column(2).as_primitive_opt::<Int64Type>().cloned();
        for row in (0..batch.num_rows()).filter(|&row| !valid.value(row)) {
            self.metrics.records_skipped.fetch_add(1, Ordering::Relaxed);
            let partition = partitions
                .as_ref()
                .map(|p| p.value(row))
                .unwrap_or(self.partition);
            let offset = offsets.as_ref().map(|o| o.value(row)).unwrap_or(-1);
            skipped.push((partition, offset));
            self.spec
                .processing_log
                .report(
                    &self.spec.query_id,
                    ErrorKind::DeserializationError,
                    &self.spec.source_topic,
                    partition,
                    offset,
                    "record has no event time: its TIMESTAMP column is null".to_owned(),
                    None,
                )
                .await;
        }
        filter_record_batch(&batch, &valid)
            .map_err(|e| QueryError::Internal(format!("event time: {e}")))
    }

    /// Runs the plan; if a batch fails, finds the failing rows one by one, reports and skips them
    /// (adding their partition and offset to `skipped`).
    async fn process(&self, batch: RecordBatch, skipped: &mut Vec<(i32, i64)>) -> RecordBatch {
        let plan = &self.spec.plan;
        let error = match plan.process(batch.clone()) {
            Ok(output) => return output,
            Err(error) => error,
        };
        debug!(query = self.spec.query_id, %error, "batch failed; isolating rows");
        let partitions = batch.column(1).as_primitive_opt::<Int32Type>().cloned();
        let offsets = batch.column(2).as_primitive_opt::<Int64Type>().cloned();
        let mut good = Vec::new();
        for row in 0..batch.num_rows() {
            match plan.process(batch.slice(row, 1)) {
                Ok(output) => good.push(output),
                Err(error) => {
                    self.metrics.records_skipped.fetch_add(1, Ordering::Relaxed);
                    let partition = partitions
                        .as_ref()
                        .map(|p| p.value(row))
                        .unwrap_or(self.partition);
                    let offset = offsets.as_ref().map(|o| o.value(row)).unwrap_or(-1);
                    skipped.push((partition, offset));
                    self.spec
                        .processing_log
                        .report(
                            &self.spec.query_id,
                            ErrorKind::ExpressionError,
                            &self.spec.source_topic,
                            partition,
                            offset,
                            format!("expression failed: {}", error.strip_backtrace()),
                            None,
                        )
                        .await;
                }
            }
        }
        concat_batches(&plan.output_schema, &good)
            .unwrap_or_else(|_| RecordBatch::new_empty(Arc::clone(&plan.output_schema)))
    }

    async fn produce(
        &self,
        topic: &str,
        producer: &FutureProducer,
        encoder: &mut RecordEncoder,
        encoded: &mut EncodedBatch,
        output: &RecordBatch,
        tombstones: bool,
    ) -> Result<(), QueryError> {
        let plan = &self.spec.plan;
        encoded.clear();
        encoder
            .encode(output, &plan.key_columns, &plan.value_columns, encoded)
            .map_err(|e| QueryError::Internal(format!("encoder of \"{topic}\": {e}")))?;
        let rowtimes = output
            .column(plan.rowtime_column)
            .as_primitive_opt::<Int64Type>()
            .cloned();
        let timeout = Duration::from_millis(self.spec.config.produce_timeout_ms);
        let deadline = Instant::now() + timeout;
        let mut pending: std::collections::VecDeque<DeliveryFuture> =
            std::collections::VecDeque::new();
        for row in 0..encoded.len() {
            let timestamp = rowtimes
                .as_ref()
                .filter(|r| r.is_valid(row))
                .map(|r| r.value(row));
            loop {
                let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
                if let Some(key) = encoded.key(row) {
                    record = record.key(key);
                }
                if let Some(value) = encoded.value(row).filter(|_| !tombstones) {
                    record = record.payload(value);
                }
                if let Some(timestamp) = timestamp {
                    record = record.timestamp(timestamp);
                }
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push_back(delivery);
                        break;
                    }
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                        _,
                    )) => {
                        // The producer's queue is full: wait for the oldest delivery, then retry.
                        if Instant::now() >= deadline {
                            return Err(QueryError::Produce {
                                topic: topic.to_owned(),
                                message: "producer queue stayed full".into(),
                            });
                        }
                        match pending.pop_front() {
                            Some(oldest) => await_delivery(topic, oldest).await?,
                            None => tokio::time::sleep(Duration::from_millis(5)).await,
                        }
                    }
                    Err((error, _)) => {
                        return Err(QueryError::Produce {
                            topic: topic.to_owned(),
                            message: error.to_string(),
                        });
                    }
                }
            }
        }
        for delivery in pending {
            await_delivery(topic, delivery).await?;
        }
        Ok(())
    }
}

/// `batch` without the rows whose offset (column 2, `ROWOFFSET`) is below `next_offset`.
fn skip_before(batch: RecordBatch, next_offset: i64) -> Result<RecordBatch, QueryError> {
    let Some(offsets) = batch.column(2).as_primitive_opt::<Int64Type>() else {
        return Err(QueryError::Internal("decoded batch has no offsets".into()));
    };
    if offsets.is_empty() || offsets.value(0) >= next_offset {
        return Ok(batch);
    }
    let keep = datafusion::arrow::array::BooleanArray::from_unary(offsets, |o| o >= next_offset);
    datafusion::arrow::compute::filter_record_batch(&batch, &keep)
        .map_err(|e| QueryError::Internal(format!("skipping restored records: {e}")))
}

/// The signs (+1 add, -1 retract) in column `column` of a decoded repartition batch.
fn sign_array(
    batch: &RecordBatch,
    column: usize,
) -> Result<datafusion::arrow::array::Int8Array, QueryError> {
    let signs = datafusion::arrow::compute::cast(
        batch.column(column),
        &datafusion::arrow::datatypes::DataType::Int8,
    )
    .map_err(|e| QueryError::Internal(format!("sign column: {e}")))?;
    let signs = signs
        .as_primitive_opt::<datafusion::arrow::datatypes::Int8Type>()
        .cloned()
        .ok_or_else(|| QueryError::Internal("sign column is not an integer".into()))?;
    if signs.null_count() > 0 {
        return Err(QueryError::Internal(
            "a repartitioned row has no sign".into(),
        ));
    }
    Ok(signs)
}

/// Bytes reserved per record when a raw batch is allocated.
const RAW_BYTES_PER_RECORD: usize = 256;

/// `batch` without the rows at `rows` (sorted ascending).
fn drop_rows(batch: &RecordBatch, rows: &[usize]) -> Result<RecordBatch, QueryError> {
    use datafusion::arrow::array::BooleanArray;
    let mut keep = vec![true; batch.num_rows()];
    for &row in rows {
        if let Some(flag) = keep.get_mut(row) {
            *flag = false;
        }
    }
    datafusion::arrow::compute::filter_record_batch(batch, &BooleanArray::from(keep))
        .map_err(|e| QueryError::Internal(format!("dropping tombstones: {e}")))
}

async fn await_delivery(topic: &str, delivery: DeliveryFuture) -> Result<(), QueryError> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => Err(QueryError::Produce {
            topic: topic.to_owned(),
            message: error.to_string(),
        }),
        Err(_) => Err(QueryError::Produce {
            topic: topic.to_owned(),
            message: "the producer was closed".into(),
        }),
    }
}
