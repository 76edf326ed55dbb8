//! A running continuous query: its driver (consumer, batching, commits) and partition tasks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{Int32Type, Int64Type, SchemaRef};
use eddy_common::config::EngineConfig;
use eddy_format::{EncodedBatch, RawBatch, RecordDecoder, RecordEncoder, RecordPart, SourceLayout};
use eddy_planner::{MAX_ROWS_PER_RECORD, StreamingPlan};
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
    Applied, JOINED_RIGHT_OFFSET_KEY, MaterializedView, PartitionAggregate, StateSpec,
    commit_partition, commit_partition_with_local, restore_partition, split_rows,
};
use crate::join::{JoinSpec, TableSide};
use crate::kafka::{KafkaConnection, KafkaError, OffWorkerDrop, PartitionReader};
use crate::processing_log::{ErrorKind, ProcessingLog};
use crate::stream_join::{Side, StreamJoiner};
use crate::upsert::{Rejected, Rejection, UpsertSpec, Upserter};

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
        /// Partitions of the topic (windowed keys are partitioned by their key alone).
        partitions: i32,
    },
    /// A client (push queries): batches of output rows in arrival order.
    Channel { sender: mpsc::Sender<RecordBatch> },
    /// Nothing outside the query: its rows go only to its `rows_view` (the query that keeps a
    /// read-only `CREATE SOURCE TABLE`'s rows for pull queries; its topic is someone else's).
    View,
}

/// The aggregation of a stream-stream join's output rows, run in the join's partition task (see
/// `QuerySpec::aggregate_joined`). Its state records the offsets of both join inputs that it has
/// counted, ahead of (or with) the join's own: after a restart the join replays its inputs up to
/// them without aggregating, so each pair is counted once.
pub struct JoinedAggregation {
    /// The aggregation, planned over the join's output as a source.
    pub plan: Arc<StreamingPlan>,
    /// That source's rows as its decoder would give them (pseudo-columns, key, value columns):
    /// the aggregation's stages read these.
    pub input_schema: SchemaRef,
    pub state: StateSpec,
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
    /// `TIMESTAMP_FORMAT`: the `TIMESTAMP` column is a STRING in this format.
    pub timestamp_format: Option<eddy_format::TimestampFormat>,
    /// Skip records without a value (Kafka tombstones), as streams do.
    pub drop_tombstones: bool,
    pub plan: Arc<StreamingPlan>,
    /// Where an aggregation keeps its state; required when the plan aggregates.
    pub state: Option<StateSpec>,
    /// The source is a table whose changes must be retracted: the query keeps each key's last
    /// contribution here. On a query without aggregation (the writer of a repartition topic) the
    /// output rows carry their sign; on an aggregation (transient, one task) they are folded in.
    pub upsert: Option<UpsertSpec>,
    /// The joined table of a stream-table join (the plan has the join itself).
    pub join: Option<JoinSpec>,
    /// The output rows of a persistent query that writes a table from tables (a join of two
    /// tables, or a query over one table without join or aggregation), kept for pull queries.
    pub rows_view: Option<Arc<crate::table_view::RowsView>>,
    /// The plan is a stream-stream join whose output rows this aggregation folds in the join's
    /// own task, instead of a join step writing them to a topic that the aggregation reads back;
    /// `sink` is then the aggregation's table.
    pub aggregate_joined: Option<Arc<JoinedAggregation>>,
    /// The source is generated by a built-in connector instead of read from `source_topic`.
    pub generator: Option<eddy_catalog::Generator>,
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
    /// Input batches processed: `records_in / batches_in` is the average batch, which grows
    /// while the query catches up with a backlog.
    pub batches_in: AtomicU64,
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
            batches_in: AtomicU64::new(0),
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
    /// The right side's progress of a join that reads that side itself (two streams, two
    /// tables): a record written there changes the output too.
    right_progress: Option<QueryProgress>,
    /// Queries that feed this one (the repartitioning half of an aggregation), owned by it.
    upstream: Vec<QueryHandle>,
    /// Longest [`Self::stop`] waits for the query to end (see [`stop_timeout`]).
    stop_timeout: Duration,
}

/// How long stopping a query of `spec` may take: its partition tasks' drain
/// (`query_stop_timeout_ms`), then its last commit and its consumer's close (the request
/// timeout), and a second of slack.
fn stop_timeout(spec: &QuerySpec) -> Duration {
    Duration::from_millis(
        spec.config
            .query_stop_timeout_ms
            .saturating_add(spec.connection.request_timeout_ms.max(1000))
            .saturating_add(1000),
    )
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
        chain.extend(self.right_progress.clone());
        chain
    }

    /// Makes `upstream` part of this query: it stops, fails and is dropped with it.
    pub fn with_upstream(mut self, upstream: QueryHandle) -> Self {
        self.upstream.push(upstream);
        self
    }

    /// Like [`Self::with_upstream`], for a query that runs before every other upstream of this
    /// one (it feeds them): it comes first in [`Self::progress_chain`].
    pub fn with_first_upstream(mut self, upstream: QueryHandle) -> Self {
        self.upstream.insert(0, upstream);
        self
    }

    /// Stops the query gracefully: queued batches finish, acknowledged offsets are committed.
    pub async fn stop(mut self) {
        for upstream in std::mem::take(&mut self.upstream) {
            Box::pin(upstream.stop()).await;
        }
        self.cancel.cancel();
        if let Some(driver) = self.driver.take()
            && tokio::time::timeout(self.stop_timeout, driver)
                .await
                .is_err()
        {
            warn!(
                query = self.query_id,
                timeout_ms = self.stop_timeout.as_millis() as u64,
                "query did not stop in time; aborted"
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

    /// Input batches of the first query of the chain (where `counts` counts records in).
    pub fn batches_in(&self) -> u64 {
        self.upstream
            .first()
            .map(|u| &u.metrics)
            .unwrap_or(&self.metrics)
            .batches_in
            .load(Ordering::Relaxed)
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

/// How far the partition tasks of a join that reads its right side itself got there, by (task
/// partition, right partition): task p of a foreign-key join reads every right partition (into
/// copies of its own), task p of any other join right partition p.
type RightProgress = Arc<Mutex<HashMap<(i32, i32), Progress>>>;

/// Where a query's partition tasks publish how far they got, per partition: in its source topic,
/// and in the right side of a join that reads that side itself.
#[derive(Clone, Default)]
struct ProgressRegistry {
    source: Arc<Mutex<HashMap<i32, Progress>>>,
    right: RightProgress,
}

impl ProgressRegistry {
    /// Forgets a partition the query no longer has, and its task's right-side progress.
    fn remove(&self, partition: i32) {
        if let Ok(mut registry) = self.source.lock() {
            registry.remove(&partition);
        }
        if let Ok(mut registry) = self.right.lock() {
            registry.retain(|(task, _), _| *task != partition);
        }
    }
}

/// Where a [`QueryProgress`] reads its partitions' progress.
#[derive(Clone)]
enum ProgressSource {
    /// One task per partition of the topic.
    Partitions(Arc<Mutex<HashMap<i32, Progress>>>),
    /// A join's right side: a partition counts as far as the task that is furthest behind in it.
    Right(RightProgress),
}

/// A read-only view of how far a query has processed each partition of its source topic.
#[derive(Clone)]
pub struct QueryProgress {
    /// Physical source topic; empty for a generated source.
    pub topic: String,
    /// Consumer group whose committed offsets tell how far the query got before this process
    /// (a partition with nothing new to process has no progress in memory).
    pub group_id: String,
    /// True for an aggregation: its progress is set once its state is restored, and committed
    /// offsets say nothing about a state still being restored.
    pub stateful: bool,
    partitions: ProgressSource,
    /// For a generated source: the next offset its generator has handed to the query (what a
    /// topic's high watermark is to a Kafka source).
    generated: Option<Arc<AtomicI64>>,
}

impl QueryProgress {
    /// For a generated source (one partition, 0): how many events its generator has handed to
    /// the query so far. `None` for a source read from Kafka.
    pub fn generated(&self) -> Option<i64> {
        self.generated
            .as_ref()
            .map(|generated| generated.load(Ordering::Acquire))
    }

    /// The next offset of `partition` whose effects are visible (output acknowledged, state
    /// written); `None` before the query has processed anything there.
    pub fn processed(&self, partition: i32) -> Option<i64> {
        match &self.partitions {
            ProgressSource::Partitions(partitions) => partitions
                .lock()
                .ok()?
                .get(&partition)
                .map(|p| p.load(Ordering::Acquire))
                .filter(|next| *next >= 0),
            ProgressSource::Right(tasks) => {
                let tasks = tasks.lock().ok()?;
                let mut slowest: Option<i64> = None;
                for ((_, right), progress) in tasks.iter() {
                    if *right != partition {
                        continue;
                    }
                    let next = progress.load(Ordering::Acquire);
                    if next < 0 {
                        return None;
                    }
                    slowest = Some(slowest.map_or(next, |s| s.min(next)));
                }
                slowest
            }
        }
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
        {
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
                    let _ =
                        commit.add_partition_offset(&self.topic, partition, Offset::Offset(next));
                }
            }
        }
        // Asynchronous: librdkafka finishes the revocation only once the commit is answered,
        // without blocking this thread. A synchronous commit waits for the broker without a
        // bound, and this callback also runs when the consumer is dropped (the query's task
        // aborted): with the broker gone, that drop never returned.
        if commit.count() > 0
            && let Err(error) = consumer.commit(&commit, CommitMode::Async)
        {
            warn!(%error, "commit on revocation failed; records may be processed again");
        }
    }
}

struct PartitionWorker {
    sender: mpsc::Sender<RawBatch>,
    progress: Progress,
}

/// The consumer of a query's source topic, in the query's group.
type QueryConsumer = OffWorkerDrop<StreamConsumer<QueryConsumerContext>>;

/// Pins where a new persistent query starts, before its consumer subscribes, and returns the
/// consumer with the start's offsets.
///
/// For each partition its group has no committed offset for, the query's reset target (the low
/// watermark for `earliest`, the high one for `latest`, read now) is committed for the group, so
/// that its consumer starts from a committed offset:
/// - librdkafka (2.12, `rd_kafka_offset_reset`) waits a fixed 100 ms before it looks up the reset
///   offset of a partition with no committed offset, which delayed every new query's first batch;
/// - `latest` means the end of the input when the statement ran, not when the consumer got its
///   partitions a few hundred milliseconds later: records written in between are read;
/// - a query stopped before it processed anything resumes from that point on restart, instead of
///   resetting to the end again and skipping what was written while it was down.
///
/// The query's own consumer reads and commits the offsets: it finds the group's coordinator,
/// which it needs anyway to join (a client of its own for this took 60 ms on the embedded
/// broker). A refused commit (Kafka refuses one while the group has members, as when another
/// server runs the query) leaves the consumer to reset by itself, as before. Fails only when the
/// broker does not answer within twice the request timeout: the consumer is then lost with the
/// blocked call, and the query fails (and is started again like any failed query).
async fn pin_start_offsets(
    spec: &QuerySpec,
    consumer: QueryConsumer,
) -> Result<(QueryConsumer, StartOffsets), KafkaError> {
    if !spec.persistent {
        return Ok((consumer, StartOffsets::default()));
    }
    let watermarks = match spec.connection.watermarks(&spec.source_topic).await {
        Ok(watermarks) => watermarks,
        Err(error) => {
            warn!(query = spec.query_id, %error, "cannot read where the query starts; read-your-writes waits for its first records");
            return Ok((consumer, StartOffsets::default()));
        }
    };
    let topic = spec.source_topic.clone();
    let query_id = spec.query_id.clone();
    let latest = spec.offset_reset == OffsetReset::Latest;
    let timeout = Duration::from_millis(spec.connection.request_timeout_ms);
    let pin = tokio::task::spawn_blocking(move || {
        let start = pin_with(&consumer, &query_id, &topic, &watermarks, latest, timeout);
        (consumer, start)
    });
    match tokio::time::timeout(timeout * 2, pin).await {
        Ok(Ok(pinned)) => Ok(pinned),
        Ok(Err(error)) => Err(KafkaError::Internal(format!(
            "the task that pins where the query starts failed: {error}"
        ))),
        Err(_) => Err(KafkaError::Timeout {
            operation: format!("offset commit of \"{}\"", spec.source_topic),
            timeout_ms: spec.connection.request_timeout_ms * 2,
        }),
    }
}

/// The blocking part of [`pin_start_offsets`], given the input's watermarks by partition.
fn pin_with(
    consumer: &StreamConsumer<QueryConsumerContext>,
    query_id: &str,
    topic: &str,
    watermarks: &[(i64, i64)],
    latest: bool,
    timeout: Duration,
) -> StartOffsets {
    let committed = match crate::kafka::committed_offsets_of(
        consumer,
        topic,
        watermarks.len() as i32,
        timeout,
    ) {
        Ok(committed) => committed,
        Err(error) => {
            warn!(query = query_id, %error, "cannot read where the query starts; read-your-writes waits for its first records");
            return StartOffsets::default();
        }
    };
    let targets: Vec<(i32, i64)> = watermarks
        .iter()
        .zip(committed)
        .enumerate()
        .filter(|(_, (_, committed))| committed.is_none())
        .map(|(partition, (&(low, high), _))| (partition as i32, if latest { high } else { low }))
        .collect();
    let mut start = StartOffsets::default();
    if targets.is_empty() {
        return start;
    }
    match crate::kafka::commit_offsets_of(consumer, topic, &targets) {
        Ok(()) => start.pinned = targets.iter().copied().collect(),
        Err(error) => {
            debug!(query = query_id, %error, "the query's start was not pinned; its consumer resets by itself");
        }
    }
    if latest {
        start.floors = targets.into_iter().collect();
    }
    start
}

/// Where a persistent query starts on the partitions its group had no committed offset for when
/// it started (see [`pin_start_offsets`]), by partition.
#[derive(Debug, Default)]
struct StartOffsets {
    /// For `latest`: the offset below which the partition's records never reach the query. Its
    /// progress counts them as processed once a task has the partition; without that,
    /// read-your-writes waited for a record the query was never going to read, until it timed
    /// out. Empty for `earliest`, for transient queries, and when the broker cannot tell
    /// (read-your-writes then waits for the query's first record there, as before).
    floors: HashMap<i32, i64>,
    /// The offsets this start committed for the group: while the group's committed offset is
    /// still the one pinned, the query has processed nothing there.
    pinned: HashMap<i32, i64>,
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

    if let Some(generator) = spec.generator.clone() {
        return Ok(start_generated_query(spec, generator));
    }

    let registry = ProgressRegistry::default();
    let progress = Arc::clone(&registry.source);
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
    // Dropped off the async workers: when the query's task is aborted (its handle dropped), the
    // consumer's close waits for the broker, without a bound.
    let consumer: QueryConsumer = OffWorkerDrop::new(
        config
            .create_with_context(context)
            .map_err(|e| KafkaError::client("consumer creation", e))?,
    );

    let (consumer, start_offsets) = pin_start_offsets(&spec, consumer).await?;
    let start_offsets = Arc::new(start_offsets);
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
        // Where "latest" is is fixed now, before the statement returns: every record written
        // after it is read.
        let assignment = spec
            .connection
            .assignment_from(&spec.source_topic, info.partitions, offset)
            .await?;
        consumer
            .assign(&assignment)
            .map_err(|e| KafkaError::client("assignment", e))?;
    }

    // A transient join that reads both sides itself needs its partition tasks before (or
    // without) records of the query's own source.
    if !spec.persistent && reads_both_sides(&spec) {
        let partitions = spec
            .connection
            .topic(&spec.source_topic)
            .await?
            .map_or(1, |t| t.partitions);
        if let Ok(mut assigned) = assigned.lock() {
            assigned.extend(0..partitions);
        }
    }
    let metrics = Arc::new(QueryMetrics::new());
    let cancel = CancellationToken::new();
    let query_id = spec.query_id.clone();
    let query_progress = QueryProgress {
        topic: spec.source_topic.clone(),
        group_id: spec.group_id.clone(),
        // A join of tables keeping its rows for pull queries may be rebuilding them from the
        // beginning of its inputs, whatever the group committed.
        stateful: spec.state.is_some()
            || spec.aggregate_joined.is_some()
            || spec.rows_view.is_some(),
        partitions: ProgressSource::Partitions(Arc::clone(&progress)),
        generated: None,
    };
    let right_progress = match (&spec.join, reports_right_progress(&spec)) {
        (Some(join), true) => Some(QueryProgress {
            topic: join.table_topic.clone(),
            group_id: spec.group_id.clone(),
            // The group commits no offset of this side: only what the tasks report counts.
            stateful: true,
            partitions: ProgressSource::Right(Arc::clone(&registry.right)),
            generated: None,
        }),
        _ => None,
    };
    let driver = Driver {
        spec,
        consumer,
        registry,
        start_offsets,
        revoked,
        assigned,
        metrics: Arc::clone(&metrics),
        cancel: cancel.clone(),
    };
    let stop_timeout = stop_timeout(&driver.spec);
    let handle = tokio::spawn(driver.run());
    info!(query = query_id, "query started");
    Ok(QueryHandle {
        query_id,
        metrics,
        cancel,
        driver: Some(handle),
        progress: query_progress,
        right_progress,
        upstream: Vec::new(),
        stop_timeout,
    })
}

/// Starts a query whose source is generated: one partition task fed by the generator.
fn start_generated_query(spec: QuerySpec, generator: eddy_catalog::Generator) -> QueryHandle {
    let metrics = Arc::new(QueryMetrics::new());
    let cancel = CancellationToken::new();
    let registry = ProgressRegistry::default();
    let query_id = spec.query_id.clone();
    let generated = Arc::new(AtomicI64::new(0));
    let query_progress = QueryProgress {
        topic: String::new(),
        group_id: spec.group_id.clone(),
        stateful: spec.state.is_some(),
        partitions: ProgressSource::Partitions(Arc::clone(&registry.source)),
        generated: Some(Arc::clone(&generated)),
    };
    let stop_timeout = stop_timeout(&spec);
    let driver = tokio::spawn(run_generated(
        Arc::new(spec),
        generator,
        generated,
        registry,
        Arc::clone(&metrics),
        cancel.clone(),
    ));
    info!(query = query_id, "query started over a generated source");
    QueryHandle {
        query_id,
        metrics,
        cancel,
        driver: Some(driver),
        progress: query_progress,
        right_progress: None,
        upstream: Vec::new(),
        stop_timeout,
    }
}

/// Drives a query over a generated source until the generator is done and its last batch is
/// processed, the sink goes away, a failure, or cancellation.
async fn run_generated(
    spec: Arc<QuerySpec>,
    generator: eddy_catalog::Generator,
    generated: Arc<AtomicI64>,
    registry: ProgressRegistry,
    metrics: Arc<QueryMetrics>,
    cancel: CancellationToken,
) {
    let mut workers: HashMap<i32, PartitionWorker> = HashMap::new();
    let mut tasks: JoinSet<Result<(), QueryError>> = JoinSet::new();
    // A generated source has no topic, so nothing below a start.
    let start_offsets = StartOffsets::default();
    worker_for(
        0,
        &spec,
        &mut workers,
        &mut tasks,
        &registry,
        &start_offsets,
        &metrics,
    );
    let Some(worker) = workers.remove(&0) else {
        metrics.set_status(QueryStatus::Error("no partition task".into()));
        return;
    };
    // The generator owns the only sender: when it is done, the task drains its queue and ends.
    let generation = crate::generator::run_generator(
        generator,
        spec.plan.source.columns.clone(),
        spec.config.max_batch_records,
        worker.sender,
        generated,
    );
    tokio::pin!(generation);
    let mut generating = true;
    let outcome: Result<(), QueryError> = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break Ok(()),
            Some(finished) = tasks.join_next(), if !tasks.is_empty() => {
                match finished {
                    Ok(result) => break result,
                    Err(join_error) if join_error.is_cancelled() => break Ok(()),
                    Err(join_error) => break Err(QueryError::Internal(format!("partition task failed: {join_error}"))),
                }
            }
            generated = &mut generation, if generating => {
                generating = false;
                match generated {
                    Ok(events) => debug!(query = spec.query_id, events, "generator done"),
                    Err(error) => break Err(error),
                }
            }
        }
    };
    tasks.abort_all();
    record_outcome(&metrics, &spec.query_id, outcome);
}

/// Sets a finished query's status and logs how it ended.
fn record_outcome(metrics: &QueryMetrics, query_id: &str, outcome: Result<(), QueryError>) {
    match outcome {
        Ok(()) => {
            metrics.set_status(QueryStatus::Stopped);
            info!(query = query_id, "query stopped");
        }
        Err(error) => {
            warn!(query = query_id, %error, "query failed");
            metrics.set_status(QueryStatus::Error(error.to_string()));
        }
    }
}

struct Driver {
    spec: QuerySpec,
    consumer: QueryConsumer,
    registry: ProgressRegistry,
    /// See [`pin_start_offsets`].
    start_offsets: Arc<StartOffsets>,
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
            registry,
            start_offsets,
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
        let limits = spec.config.batch_limits();
        let max_batch = limits.records;
        // Room reserved for a batch's keys and values: what a full batch of small records needs.
        let batch_bytes = (max_batch * RAW_BYTES_PER_RECORD).min(limits.bytes);
        let mut consecutive_errors = 0u32;

        let outcome: Result<(), QueryError> = loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break Ok(()),
                Some(finished) = tasks.join_next(), if !tasks.is_empty() => {
                    match finished {
                        // A persistent query's task ends by itself when its partition is
                        // revoked (a rebalance: another server joined, or the broker came
                        // back); the query goes on with the partitions it has.
                        Ok(Ok(())) if spec.persistent => {}
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
                    let buffer = buffers.entry(partition).or_insert_with(|| RawBatch::with_capacity(max_batch, batch_bytes));
                    buffer.push(message.key(), message.payload(), timestamp_ms, partition, message.offset());
                    drop(message);
                    if limits.is_full(buffer.len(), buffer.payload_bytes()) {
                        let batch = std::mem::replace(buffer, RawBatch::with_capacity(max_batch, batch_bytes));
                        let task = if spec.single_task { 0 } else { partition };
                        let worker = worker_for(task, &spec, &mut workers, &mut tasks, &registry, &start_offsets, &metrics);
                        if !hand_over(&worker.sender, batch, &cancel).await {
                            continue; // the task ended (join_next reports why), or the query is
                            // cancelled
                        }
                    }
                }
                _ = linger.tick() => {
                    for (partition, buffer) in buffers.iter_mut() {
                        if buffer.is_empty() { continue; }
                        let batch = std::mem::replace(buffer, RawBatch::with_capacity(max_batch, batch_bytes));
                        let task = if spec.single_task { 0 } else { *partition };
                        let worker = worker_for(task, &spec, &mut workers, &mut tasks, &registry, &start_offsets, &metrics);
                        hand_over(&worker.sender, batch, &cancel).await;
                    }
                    let revoked_now: Vec<i32> = revoked.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default();
                    for partition in revoked_now {
                        debug!(query = spec.query_id, partition, "partition revoked");
                        workers.remove(&partition);
                        buffers.remove(&partition);
                        committed.remove(&partition);
                        registry.remove(partition);
                    }
                    let assigned_now: Vec<i32> = assigned.lock().map(|mut a| std::mem::take(&mut *a)).unwrap_or_default();
                    // A join that reads both sides itself needs the query's consumer only for
                    // the partitions it owns and their commits: its fetches would be wasted.
                    let mut paused = TopicPartitionList::new();
                    for partition in assigned_now {
                        debug!(query = spec.query_id, partition, "partition assigned");
                        let task = if spec.single_task { 0 } else { partition };
                        worker_for(task, &spec, &mut workers, &mut tasks, &registry, &start_offsets, &metrics);
                        if reads_both_sides(&spec) {
                            paused.add_partition(&spec.source_topic, partition);
                        }
                    }
                    if paused.count() > 0 && let Err(error) = consumer.pause(&paused) {
                        warn!(query = spec.query_id, %error, "cannot pause the join's own consumer");
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
            let timeout_ms = spec.config.query_stop_timeout_ms;
            if tokio::time::timeout(Duration::from_millis(timeout_ms), drain)
                .await
                .is_err()
            {
                warn!(
                    query = spec.query_id,
                    timeout_ms,
                    "partition tasks did not finish their batches in time (query_stop_timeout_ms); aborted"
                );
            }
        }
        tasks.abort_all();
        // The last commit waits for the broker, and so does the consumer's close when it is
        // dropped, both without a bound: they run on a thread of their own (see `OffWorkerDrop`),
        // which the query waits for up to the request timeout.
        let persistent = spec.persistent;
        let topic = spec.source_topic.clone();
        let consumer = consumer.into_inner();
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let closing = std::thread::Builder::new()
            .name("eddy-query-close".into())
            .spawn(move || {
                if persistent {
                    commit_progress(
                        &consumer,
                        &topic,
                        &progress_of,
                        &mut committed,
                        CommitMode::Sync,
                    );
                }
                drop(consumer);
                let _ = done.send(());
            });
        let timeout = Duration::from_millis(spec.connection.request_timeout_ms.max(1000));
        match closing {
            Err(error) => warn!(query = spec.query_id, %error, "the last commit failed"),
            Ok(_) => match tokio::time::timeout(timeout, finished).await {
                Ok(_) => {}
                Err(_) => warn!(
                    query = spec.query_id,
                    timeout_ms = timeout.as_millis() as u64,
                    "the last commit and the consumer's close did not finish in time; the query \
                     may resume from its previous commit"
                ),
            },
        }
        record_outcome(&metrics, &spec.query_id, outcome);
    }
}

/// A join whose partition tasks read its right side themselves and report how far they got
/// there: a join of two streams or of two tables (task p reads right partition p, or, in a
/// foreign-key join, every right partition).
fn reports_right_progress(spec: &QuerySpec) -> bool {
    reads_both_sides(spec)
}

/// A join of two tables whose task p reads every partition of the right table (a foreign-key
/// join, or a join on keys of tables partitioned differently): it reports its progress in each.
fn reads_every_right_partition(spec: &QuerySpec) -> bool {
    spec.plan
        .join
        .as_ref()
        .and_then(|join| join.left_table.as_ref())
        .is_some_and(|left| left.foreign_key)
}

/// A join of two tables or two streams: its partition tasks read both sides with readers of
/// their own, and the query's consumer only owns partitions and commits.
fn reads_both_sides(spec: &QuerySpec) -> bool {
    spec.plan
        .join
        .as_ref()
        .is_some_and(|join| join.stream_join.is_some() || join.left_table.is_some())
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

/// Queues `batch` for a partition task; false if the task has ended or the query is cancelled
/// first. The wait for room must not outlast a cancellation: a join that reads both of its
/// inputs itself drains its queue only between rounds, so a queue filled before the join paused
/// the query's consumer stayed full until the join had read its whole backlog, and the query did
/// not stop for that long.
async fn hand_over(
    sender: &mpsc::Sender<RawBatch>,
    batch: RawBatch,
    cancel: &CancellationToken,
) -> bool {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => false,
        sent = sender.send(batch) => sent.is_ok(),
    }
}

fn worker_for<'a>(
    partition: i32,
    spec: &Arc<QuerySpec>,
    workers: &'a mut HashMap<i32, PartitionWorker>,
    tasks: &mut JoinSet<Result<(), QueryError>>,
    registry: &ProgressRegistry,
    start_offsets: &StartOffsets,
    metrics: &Arc<QueryMetrics>,
) -> &'a PartitionWorker {
    workers.entry(partition).or_insert_with(|| {
        let (sender, receiver) = mpsc::channel(spec.config.partition_queue_batches.max(1));
        let progress: Progress = Arc::new(AtomicI64::new(-1));
        let right_progress: Progress = Arc::new(AtomicI64::new(-1));
        if let Ok(mut registry) = registry.source.lock() {
            registry.insert(partition, Arc::clone(&progress));
        }
        // A task that reads every right partition registers its progress in each itself.
        if !reads_every_right_partition(spec)
            && let Ok(mut registry) = registry.right.lock()
        {
            registry.insert((partition, partition), Arc::clone(&right_progress));
        }
        let task = PartitionTask {
            spec: Arc::clone(spec),
            partition,
            progress: Arc::clone(&progress),
            right_progress,
            right_registry: Arc::clone(&registry.right),
            start_floor: start_offsets.floors.get(&partition).copied(),
            pinned_start: start_offsets.pinned.get(&partition).copied(),
            metrics: Arc::clone(metrics),
        };
        tasks.spawn(task.run(receiver));
        PartitionWorker { sender, progress }
    })
}

/// Buffers a partition task reuses from batch to batch (see `PartitionTask::transform`).
#[derive(Default)]
struct BatchInputs {
    /// The partition and offset of each input record the batch skipped.
    skipped: Vec<(i32, i64)>,
    /// The offsets of the batch's tombstones, for a table of a table.
    deleted_offsets: std::collections::HashSet<i64>,
}

/// Where decoded input records come from: their topic and how their event time is found.
struct InputSide<'a> {
    topic: &'a str,
    timestamp_column: Option<usize>,
    timestamp_format: Option<&'a eddy_format::TimestampFormat>,
    drop_tombstones: bool,
}

struct PartitionTask {
    spec: Arc<QuerySpec>,
    partition: i32,
    progress: Progress,
    /// The right side's next offset to process, for a join that reports it (see
    /// `reports_right_progress`).
    right_progress: Progress,
    /// Where a task that reads every right partition reports its progress in each.
    right_registry: RightProgress,
    /// The offset below which this partition's records will never reach the query (see
    /// [`pin_start_offsets`]).
    start_floor: Option<i64>,
    /// The offset this start of the query committed for the partition, if it did (see
    /// [`pin_start_offsets`]).
    pinned_start: Option<i64>,
    metrics: Arc<QueryMetrics>,
}

impl PartitionTask {
    /// Counts the records below the partition's start floor as processed: they never reach a
    /// query that started at the end of its input. Called once what the task restored is in its
    /// progress, so that read-your-writes still waits for a restore.
    fn skip_to_start_floor(&self) {
        if let Some(floor) = self.start_floor {
            self.progress.fetch_max(floor, Ordering::AcqRel);
        }
    }

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
            SinkSpec::Channel { .. } | SinkSpec::View => None,
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
        if spec
            .plan
            .join
            .as_ref()
            .is_some_and(|j| j.left_table.as_ref().is_some_and(|l| l.foreign_key))
        {
            return self.run_foreign_key_join(receiver, encoder, encoded).await;
        }
        if spec
            .plan
            .join
            .as_ref()
            .is_some_and(|j| j.left_table.is_some())
        {
            return self.run_table_join(receiver, encoder, encoded).await;
        }
        if spec
            .plan
            .join
            .as_ref()
            .is_some_and(|j| j.stream_join.is_some())
        {
            return self.run_stream_join(receiver, encoder, encoded).await;
        }
        if spec.join.is_some() {
            return self.run_join(receiver, decoder, encoder, encoded).await;
        }
        // A table written from a table: deleted and filtered-out rows become tombstones (push
        // queries show every change as it comes instead).
        let table_changes = match &spec.sink {
            SinkSpec::Kafka { .. } | SinkSpec::View => {
                crate::table_changes::TableChanges::of(&spec.plan)?
            }
            SinkSpec::Channel { .. } => None,
        };
        if matches!(spec.sink, SinkSpec::View)
            && (table_changes.is_none() || spec.rows_view.is_none())
        {
            return Err(QueryError::Internal(
                "a query that only keeps rows must read a table into a rows view".into(),
            ));
        }
        // Such a table keeps its rows for pull queries: first, what its rows lack of what the
        // group committed.
        let rows_view = spec.rows_view.as_deref().zip(table_changes.as_ref());
        if let Some((view, changes)) = rows_view {
            self.fill_rows_view(view, changes, &mut decoder).await?;
            // What the rows hold is processed, though no record may come soon (read-your-writes
            // trusts no committed offset of a query that keeps rows).
            if let Some(next) = view.next_source_offset(self.partition)? {
                self.progress.fetch_max(next, Ordering::AcqRel);
            }
        }
        self.skip_to_start_floor();
        if rows_view.is_none() && matches!(spec.sink, SinkSpec::Kafka { .. }) {
            return self
                .run_writing(receiver, decoder, encoder, encoded, table_changes.as_ref())
                .await;
        }
        let mut inputs = BatchInputs::default();
        let mut view_value = Vec::new();
        while let Some(raw) = receiver.recv().await {
            let Some(&last_offset) = raw.offsets().last() else {
                continue;
            };
            let (output, tombstones) = self
                .transform(&raw, &mut decoder, table_changes.as_ref(), &mut inputs)
                .await?;
            if !self
                .deliver(&output, tombstones.as_ref(), encoder.as_mut(), &mut encoded)
                .await?
            {
                return Ok(()); // the client went away
            }
            // The table's rows, with the offset they reach, before the progress says so.
            if let (Some((view, _)), Some(tombstones)) = (rows_view, &tombstones) {
                let next = last_offset + 1;
                view.write_batch_of_table(
                    self.partition,
                    &output,
                    tombstones,
                    next,
                    &mut view_value,
                )?;
            }
            self.progress.store(last_offset + 1, Ordering::Release);
        }
        Ok(())
    }

    /// The loop of a query that writes a Kafka topic and keeps no rows. While the broker
    /// acknowledges one batch's output the task processes the next ones, up to
    /// `max_batches_in_flight` batches sent and not yet acknowledged: waiting for each batch's
    /// acknowledgements before the next left the task idle for a produce round trip per batch,
    /// and the broker idle while the task worked. A batch's offsets count as processed once its
    /// output and that of every batch before it are acknowledged, so the committed offsets and
    /// read-your-writes mean what they did.
    async fn run_writing(
        &self,
        mut receiver: mpsc::Receiver<RawBatch>,
        mut decoder: RecordDecoder,
        mut encoder: Option<RecordEncoder>,
        mut encoded: EncodedBatch,
        table_changes: Option<&crate::table_changes::TableChanges>,
    ) -> Result<(), QueryError> {
        let SinkSpec::Kafka { topic, .. } = &self.spec.sink else {
            return Err(QueryError::Internal(
                "a writing task without a topic".into(),
            ));
        };
        let mut in_flight = BatchesInFlight::new(self.spec.config.max_batches_in_flight);
        let mut inputs = BatchInputs::default();
        let mut input_open = true;
        while input_open || !in_flight.is_empty() {
            tokio::select! {
                biased;
                settled = in_flight.settle_oldest(topic), if !in_flight.is_empty() => {
                    if let Some((records, next_offset)) = settled? {
                        self.metrics.records_out.fetch_add(records, Ordering::Relaxed);
                        self.progress.store(next_offset, Ordering::Release);
                    }
                }
                raw = receiver.recv(), if input_open && in_flight.has_room() => {
                    let Some(raw) = raw else {
                        input_open = false; // stopping: what is in flight is still awaited
                        continue;
                    };
                    let Some(&last_offset) = raw.offsets().last() else {
                        continue;
                    };
                    let (output, tombstones) = self
                        .transform(&raw, &mut decoder, table_changes, &mut inputs)
                        .await?;
                    let mut deliveries = Acknowledgements::default();
                    self.send_as(
                        &self.spec.plan,
                        &output,
                        tombstones.as_ref(),
                        encoder.as_mut(),
                        &mut encoded,
                        &mut deliveries,
                    )
                    .await?;
                    in_flight.push(deliveries, last_offset + 1);
                }
            }
        }
        Ok(())
    }

    /// Decodes a batch and runs the query's stages over it: the output rows and, for a table
    /// of a table, the tombstones (see `TableChanges`).
    async fn transform(
        &self,
        raw: &RawBatch,
        decoder: &mut RecordDecoder,
        table_changes: Option<&crate::table_changes::TableChanges>,
        inputs: &mut BatchInputs,
    ) -> Result<(RecordBatch, Option<RecordBatch>), QueryError> {
        inputs.skipped.clear();
        let batch = self.decode_input(decoder, raw, &mut inputs.skipped).await?;
        Ok(match table_changes {
            Some(changes) => {
                let (output, tombstones) = self
                    .table_changes(
                        changes,
                        raw,
                        &batch,
                        &mut inputs.deleted_offsets,
                        &mut inputs.skipped,
                    )
                    .await?;
                (output, Some(tombstones))
            }
            None => (self.process(batch, &mut inputs.skipped).await, None),
        })
    }

    /// The output rows and tombstones of a batch of a table's changes (see `TableChanges`).
    async fn table_changes(
        &self,
        changes: &crate::table_changes::TableChanges,
        raw: &RawBatch,
        batch: &RecordBatch,
        deleted_offsets: &mut std::collections::HashSet<i64>,
        skipped: &mut Vec<(i32, i64)>,
    ) -> Result<(RecordBatch, RecordBatch), QueryError> {
        deleted_offsets.clear();
        deleted_offsets.extend(
            raw.offsets()
                .iter()
                .enumerate()
                .filter(|(i, _)| raw.value(*i).is_none())
                .map(|(_, offset)| *offset),
        );
        let mut keyless = Vec::new();
        let (rows, deleted) = changes.last_changes(batch, deleted_offsets, &mut keyless)?;
        if !keyless.is_empty() {
            let origins: Vec<(i32, i64)> = keyless.iter().map(|&o| (self.partition, o)).collect();
            self.report_skipped_rows(
                &origins,
                ErrorKind::DeserializationError,
                &self.spec.source_topic,
                "a table record has no key: it changes no row and is skipped",
            )
            .await;
        }
        let failed_from = skipped.len();
        let output = self.process(rows.clone(), skipped).await;
        let tombstones = changes.tombstones(&rows, &output, &skipped[failed_from..], &deleted)?;
        Ok((output, tombstones))
    }

    /// Brings partition p of a table's rows (`view`) up to the offset the query's group committed,
    /// when they are behind it (lost, or from before the table kept its rows): reads the table
    /// from the rows' own next offset (the beginning when they have none) into the view only,
    /// since the output was sent then. A new query (nothing committed, or only the offset its start
    /// pinned: see [`pin_start_offsets`]) has nothing to fill.
    /// Malformed records and failing rows met again are reported again.
    async fn fill_rows_view(
        &self,
        view: &crate::table_view::RowsView,
        changes: &crate::table_changes::TableChanges,
        decoder: &mut RecordDecoder,
    ) -> Result<(), QueryError> {
        let spec = &self.spec;
        let partitions = spec
            .connection
            .topic(&spec.source_topic)
            .await?
            .map(|t| t.partitions)
            .ok_or_else(|| KafkaError::UnknownTopic {
                topic: spec.source_topic.clone(),
            })?;
        let committed = spec
            .connection
            .committed_offsets(&spec.group_id, &spec.source_topic, partitions)
            .await?;
        let Some(target) = usize::try_from(self.partition)
            .ok()
            .and_then(|p| committed.get(p).copied().flatten())
        else {
            return Ok(());
        };
        // Committed when this start pinned where the query starts, not after processing.
        if self.pinned_start == Some(target) {
            return Ok(());
        }
        let from = view.next_source_offset(self.partition)?;
        if from.is_some_and(|from| from >= target) {
            return Ok(());
        }
        info!(
            query = spec.query_id,
            partition = self.partition,
            from = from.unwrap_or(0),
            to = target,
            "the table's rows are behind the query: reading its input again into them"
        );
        let mut reader = PartitionReader::open(
            &spec.connection,
            &format!("{}-rows", spec.group_id),
            &spec.source_topic,
            self.partition,
            from.map_or(Offset::Beginning, Offset::Offset),
            spec.config.batch_limits(),
        )
        .await?;
        let mut skipped = Vec::new();
        let mut deleted_offsets = std::collections::HashSet::new();
        let mut value = Vec::new();
        while let Some(raw) = reader.read_batch(target).await? {
            let Some(&last_offset) = raw.offsets().last() else {
                continue;
            };
            skipped.clear();
            let batch = self.decode_input(decoder, &raw, &mut skipped).await?;
            let (output, tombstones) = self
                .table_changes(changes, &raw, &batch, &mut deleted_offsets, &mut skipped)
                .await?;
            let next = last_offset + 1;
            view.write_batch_of_table(self.partition, &output, &tombstones, next, &mut value)?;
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
        let timeout = Duration::from_millis(spec.config.produce_timeout_ms);
        let aggregation = spec
            .plan
            .aggregation
            .as_ref()
            .ok_or_else(|| QueryError::Internal("an aggregation without aggregation".into()))?;
        // An aggregation over a table that re-keys in its task (a persistent one of one partition,
        // or a transient one) turns the table's changes into signed rows itself.
        let upserter = match &spec.upsert {
            Some(upsert) => Some((
                upsert,
                Upserter::new(upsert, Arc::clone(&aggregation.input_schema))?,
            )),
            None => None,
        };
        // A persistent one keeps the contributions with their own changelog and source offset,
        // committed after the aggregation's: the contributions may trail the state, never lead
        // it. The task reads from the lower of the two; the records between rebuild the
        // contributions, and the aggregation skips their rows by their origins.
        let mut upsert_next_offset = None;
        if let (Some((upsert, _)), true) = (&upserter, spec.persistent) {
            upsert_next_offset = Some(self.restore_upsert(upsert).await?);
        }
        let resume_offset = |aggregate: &PartitionAggregate, upsert_next: Option<i64>| {
            upsert_next.map_or(aggregate.next_source_offset(), |upsert| {
                upsert.min(aggregate.next_source_offset())
            })
        };
        // The restored state covers the input below its source offset: that much is processed.
        self.progress.fetch_max(
            resume_offset(&aggregate, upsert_next_offset),
            Ordering::AcqRel,
        );
        self.skip_to_start_floor();
        let changelog_producer = match &spec.sink {
            SinkSpec::Kafka { producer, .. } if spec.persistent => Some(producer),
            _ => None,
        };
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
            let resume = resume_offset(&aggregate, upsert_next_offset);
            let batch = if spec.single_task {
                batch
            } else {
                skip_before(batch, resume)?
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
            let mut upsert_commit = None;
            if let Some((upsert, upserter)) = &upserter {
                let from_offset = upsert_next_offset.map(|_| resume);
                let upserted =
                    upserter.apply(&upsert.store, &raw, &input, &skipped, from_offset)?;
                self.report_rejected(&upserted.rejected).await;
                input = upserted.rows;
                signs = Some(upserted.signs);
                upsert_commit = Some((upsert, upserted.partition, upserted.writes));
            }
            let applied = aggregate.apply(&input, signs.as_ref())?;
            if !self
                .finish_aggregated(
                    &mut aggregate,
                    state,
                    &spec.plan,
                    applied,
                    input.num_rows(),
                    last_offset,
                    [last_offset + 1, 0],
                    encoder.as_mut(),
                    &mut encoded,
                )
                .await?
            {
                return Ok(()); // the client went away
            }
            // After the aggregation's commit, so that a crash between the two leaves the
            // contributions behind the state (see `upsert_next_offset`).
            if let Some((upsert, partition, writes)) = upsert_commit {
                commit_partition(
                    &upsert.store,
                    partition,
                    upsert.changelog_topic.as_deref(),
                    changelog_producer,
                    &writes,
                    last_offset + 1,
                    timeout,
                )
                .await?;
                if let Some(next) = &mut upsert_next_offset {
                    *next = last_offset + 1;
                }
            }
            self.progress.store(last_offset + 1, Ordering::Release);
        }
        Ok(())
    }

    /// The end of an aggregated batch: reports the rows it dropped, delivers the table rows and
    /// commits the state with `next_offsets[0]` as its source offset (and, after a join in the
    /// same task, `next_offsets[1]` as the right input's). `last_offset` is where failed groups
    /// are reported. False when the client went away.
    #[allow(clippy::too_many_arguments)]
    async fn finish_aggregated(
        &self,
        aggregate: &mut PartitionAggregate,
        state: &StateSpec,
        plan: &StreamingPlan,
        mut applied: Applied,
        input_rows: usize,
        last_offset: i64,
        next_offsets: [i64; 2],
        encoder: Option<&mut RecordEncoder>,
        encoded: &mut EncodedBatch,
    ) -> Result<bool, QueryError> {
        let spec = &self.spec;
        self.report_skipped_rows(
            &applied.null_keys,
            ErrorKind::ExpressionError,
            &state.origin_topic,
            "a GROUP BY expression is NULL: the row belongs to no group and is skipped",
        )
        .await;
        self.report_skipped_rows(
            &applied.late,
            ErrorKind::LateRecord,
            &state.origin_topic,
            "the record is late: every window it belongs to had closed (its event time is \
             older than the stream time minus the grace period), so it is dropped",
        )
        .await;
        let failed_groups = applied.failed_groups.iter().map(|reason| {
            (
                ErrorKind::ExpressionError,
                format!("the table row of a group could not be computed: {reason}"),
            )
        });
        let too_large_groups = applied
            .too_large_groups
            .iter()
            .map(|reason| (ErrorKind::StateTooLarge, reason.clone()));
        for (kind, message) in failed_groups.chain(too_large_groups) {
            self.metrics.records_skipped.fetch_add(1, Ordering::Relaxed);
            spec.processing_log
                .report(
                    &spec.query_id,
                    kind,
                    &spec.source_topic,
                    self.partition,
                    last_offset,
                    message,
                    None,
                )
                .await;
        }
        let (rows, tombstones) = split_rows(&applied)?;
        debug!(
            query = spec.query_id,
            partition = self.partition,
            input = input_rows,
            groups = applied.writes.len(),
            null_keys = applied.null_keys.len(),
            rows = rows.num_rows(),
            tombstones = tombstones.num_rows(),
            "aggregated a batch"
        );
        if !self
            .deliver_as(plan, &rows, Some(&tombstones), encoder, encoded)
            .await?
        {
            return Ok(false);
        }
        if spec.aggregate_joined.is_some() {
            applied.writes.push((
                JOINED_RIGHT_OFFSET_KEY.to_vec(),
                Some(next_offsets[1].to_be_bytes().to_vec()),
            ));
        }
        let changelog_producer = match &spec.sink {
            SinkSpec::Kafka { producer, .. } => Some(producer),
            SinkSpec::Channel { .. } | SinkSpec::View => None,
        };
        aggregate
            .commit(
                state,
                changelog_producer,
                applied.writes,
                applied.local_writes,
                next_offsets[0],
                Duration::from_millis(spec.config.produce_timeout_ms),
            )
            .await?;
        Ok(true)
    }

    /// Brings an upsert step's contributions up to the end of their changelog; returns the next
    /// source offset they cover.
    async fn restore_upsert(&self, upsert: &UpsertSpec) -> Result<i64, QueryError> {
        let checkpoint = restore_partition(
            &upsert.store,
            self.partition,
            upsert.changelog_topic.as_deref(),
            &self.spec.connection,
            &self.metrics,
            &self.spec.query_id,
            None,
        )
        .await?;
        Ok(checkpoint.source_offset.unwrap_or(0))
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
        let mut next_source_offset = self.restore_upsert(upsert).await?;
        self.progress
            .fetch_max(next_source_offset, Ordering::AcqRel);
        self.skip_to_start_floor();
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
            self.report_rejected(&upserted.rejected).await;
            if upserted.rows.num_rows() > 0 {
                let mut deliveries = Acknowledgements::default();
                self.produce(
                    &spec.plan,
                    topic,
                    producer,
                    encoder,
                    &mut encoded,
                    &upserted.rows,
                    false,
                    &mut deliveries,
                )
                .await?;
                deliveries.settle(topic).await?;
                self.metrics
                    .records_out
                    .fetch_add(deliveries.records, Ordering::Relaxed);
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

    /// Counts and reports rows a query skipped, by the (partition, offset) of the `topic`
    /// records they came from.
    async fn report_skipped_rows(
        &self,
        origins: &[(i32, i64)],
        kind: ErrorKind,
        topic: &str,
        message: &str,
    ) {
        for &(partition, offset) in origins {
            self.metrics.records_skipped.fetch_add(1, Ordering::Relaxed);
            self.spec
                .processing_log
                .report(
                    &self.spec.query_id,
                    kind,
                    topic,
                    partition,
                    offset,
                    message.to_owned(),
                    None,
                )
                .await;
        }
    }

    /// Reports table records the upsert writer skipped.
    async fn report_rejected(&self, rejected: &[Rejected]) {
        for record in rejected {
            self.metrics.records_skipped.fetch_add(1, Ordering::Relaxed);
            let (kind, message) = match record.reason {
                Rejection::NoKey => (
                    ErrorKind::DeserializationError,
                    "a table record has no key: it updates no row and is skipped".to_owned(),
                ),
                Rejection::TooManyRows => (
                    ErrorKind::ExpressionError,
                    format!(
                        "the record exploded into more than {MAX_ROWS_PER_RECORD} rows, the most \
                         one record may add to an aggregation: it is skipped"
                    ),
                ),
            };
            self.spec
                .processing_log
                .report(
                    &self.spec.query_id,
                    kind,
                    &self.spec.source_topic,
                    record.partition,
                    record.offset,
                    message,
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
        let side = InputSide {
            topic: &spec.source_topic,
            timestamp_column: spec.timestamp_column,
            timestamp_format: spec.timestamp_format.as_ref(),
            drop_tombstones: spec.drop_tombstones,
        };
        self.decode_side(decoder, raw, skipped, &side).await
    }

    /// [`Self::decode_input`] for records of `side`.
    async fn decode_side(
        &self,
        decoder: &mut RecordDecoder,
        raw: &RawBatch,
        skipped: &mut Vec<(i32, i64)>,
        side: &InputSide<'_>,
    ) -> Result<RecordBatch, QueryError> {
        let spec = &self.spec;
        {
            self.metrics
                .records_in
                .fetch_add(raw.len() as u64, Ordering::Relaxed);
            self.metrics.batches_in.fetch_add(1, Ordering::Relaxed);
            let decoded = decoder
                .decode(raw)
                .map_err(|e| QueryError::Internal(format!("decoder of \"{}\": {e}", side.topic)))?;
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
                        side.topic,
                        error.partition,
                        error.offset,
                        error.reason.clone(),
                        record,
                    )
                    .await;
            }
            let mut batch = decoded.batch;
            if side.drop_tombstones && !decoded.tombstones.is_empty() {
                batch = drop_rows(&batch, &decoded.tombstones)?;
            }
            match side.timestamp_column {
                Some(column) => self.apply_event_time(batch, column, skipped, side).await,
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
        side: &InputSide<'_>,
    ) -> Result<RecordBatch, QueryError> {
        use datafusion::arrow::compute::{cast, filter_record_batch, is_not_null};
        use datafusion::arrow::datatypes::{DataType, TimeUnit};
        // ROWTIME is BIGINT epoch milliseconds: timestamps of any unit go through Timestamp(ms).
        let millis = DataType::Timestamp(TimeUnit::Millisecond, None);
        let source = batch.column(column);
        let format = side.timestamp_format;
        let times = match source.data_type() {
            DataType::Utf8 => match (format, source.as_string_opt::<i32>()) {
                (Some(format), Some(texts)) => Ok(Arc::new(format.parse_array(texts)) as ArrayRef),
                _ => {
                    return Err(QueryError::Internal(
                        "a STRING TIMESTAMP column without TIMESTAMP_FORMAT".into(),
                    ));
                }
            },
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
        // ROWTIME is never NULL: rows without an event time are reported, then dropped before
        // their times replace it.
        let with_times = |batch: &RecordBatch, times: ArrayRef| {
            let mut columns = batch.columns().to_vec();
            columns[0] = times;
            RecordBatch::try_new(batch.schema(), columns)
                .map_err(|e| QueryError::Internal(format!("event time: {e}")))
        };
        if valid.true_count() == batch.num_rows() {
            return with_times(&batch, times);
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
            let message = match (format, source.as_string_opt::<i32>()) {
                (Some(format), Some(texts)) if texts.is_valid(row) => format!(
                    "record has no event time: its TIMESTAMP column '{}' does not match TIMESTAMP_FORMAT '{}'",
                    texts.value(row),
                    format.pattern()
                ),
                _ => "record has no event time: its TIMESTAMP column is null".to_owned(),
            };
            self.spec
                .processing_log
                .report(
                    &self.spec.query_id,
                    ErrorKind::DeserializationError,
                    side.topic,
                    partition,
                    offset,
                    message,
                    None,
                )
                .await;
        }
        let kept = filter_record_batch(&batch, &valid)
            .map_err(|e| QueryError::Internal(format!("event time: {e}")))?;
        let times = datafusion::arrow::compute::filter(&times, &valid)
            .map_err(|e| QueryError::Internal(format!("event time: {e}")))?;
        with_times(&kept, times)
    }

    /// Runs the plan; if a batch fails, finds the failing rows one by one, reports and skips them
    /// (adding their partition and offset to `skipped`).
    async fn process(&self, batch: RecordBatch, skipped: &mut Vec<(i32, i64)>) -> RecordBatch {
        let plan = &self.spec.plan;
        let attempt = |batch: RecordBatch| {
            plan.process(batch)
                .map_err(|e| QueryError::Expression(e.strip_backtrace()))
        };
        match self.isolating(batch, skipped, attempt).await {
            Ok(output) => output,
            // `attempt` fails with expression errors only, which `isolating` reports.
            Err(_) => RecordBatch::new_empty(Arc::clone(&plan.output_schema)),
        }
    }

    /// Runs `attempt` over the batch; if it fails with an expression error, runs it row by row,
    /// reports and skips the failing rows (adding their partition and offset to `skipped`). Any
    /// other error stops the query.
    async fn isolating(
        &self,
        batch: RecordBatch,
        skipped: &mut Vec<(i32, i64)>,
        attempt: impl Fn(RecordBatch) -> Result<RecordBatch, QueryError>,
    ) -> Result<RecordBatch, QueryError> {
        let spec = &self.spec;
        self.isolating_in(
            batch,
            skipped,
            attempt,
            &spec.plan.output_schema,
            &spec.source_topic,
        )
        .await
    }

    /// [`Self::isolating`] for records of `topic` that `attempt` turns into `schema` rows.
    async fn isolating_in(
        &self,
        batch: RecordBatch,
        skipped: &mut Vec<(i32, i64)>,
        attempt: impl Fn(RecordBatch) -> Result<RecordBatch, QueryError>,
        schema: &SchemaRef,
        topic: &str,
    ) -> Result<RecordBatch, QueryError> {
        let error = match attempt(batch.clone()) {
            Ok(output) => return Ok(output),
            Err(QueryError::Expression(error)) => error,
            Err(other) => return Err(other),
        };
        debug!(query = self.spec.query_id, %error, "batch failed; isolating rows");
        let partitions = batch.column(1).as_primitive_opt::<Int32Type>().cloned();
        let offsets = batch.column(2).as_primitive_opt::<Int64Type>().cloned();
        let mut good = Vec::new();
        for row in 0..batch.num_rows() {
            match attempt(batch.slice(row, 1)) {
                Ok(output) => good.push(output),
                Err(QueryError::Expression(error)) => {
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
                            topic,
                            partition,
                            offset,
                            format!("expression failed: {error}"),
                            None,
                        )
                        .await;
                }
                Err(other) => return Err(other),
            }
        }
        concat_batches(schema, &good)
            .map_err(|e| QueryError::Internal(format!("rows kept after failed expressions: {e}")))
    }

    /// Runs a stream-table join: catches up with the table partition before each stream batch,
    /// then joins the batch's rows with the table's current rows.
    async fn run_join(
        &self,
        mut receiver: mpsc::Receiver<RawBatch>,
        mut decoder: RecordDecoder,
        mut encoder: Option<RecordEncoder>,
        mut encoded: EncodedBatch,
    ) -> Result<(), QueryError> {
        let spec = &self.spec;
        let (Some(join_spec), Some(join)) = (spec.join.as_ref(), spec.plan.join.as_ref()) else {
            return Err(QueryError::Internal(
                "a join started without its table".into(),
            ));
        };
        let mut table = TableSide::open(
            join_spec,
            join,
            self.partition,
            &spec.group_id,
            &spec.connection,
            spec.config.batch_limits(),
        )
        .await?;
        table
            .catch_up(&spec.connection, &spec.processing_log, &spec.query_id)
            .await?;
        table.log_ready(&spec.query_id);
        let mut skipped = Vec::new();
        while let Some(raw) = receiver.recv().await {
            let Some(&last_offset) = raw.offsets().last() else {
                continue;
            };
            table
                .catch_up(&spec.connection, &spec.processing_log, &spec.query_id)
                .await?;
            skipped.clear();
            let batch = self.decode_input(&mut decoder, &raw, &mut skipped).await?;
            let table = &table;
            let attempt = |batch: RecordBatch| {
                let stream = spec
                    .plan
                    .process(batch)
                    .map_err(|e| QueryError::Expression(e.strip_backtrace()))?;
                let (rows, matches) = table.lookup(&stream)?;
                join.join(&stream, &rows, &matches)
                    .map_err(|e| QueryError::Expression(e.strip_backtrace()))
            };
            let output = self.isolating(batch, &mut skipped, attempt).await?;
            if !self
                .deliver(&output, None, encoder.as_mut(), &mut encoded)
                .await?
            {
                return Ok(()); // the client went away
            }
            self.progress.store(last_offset + 1, Ordering::Release);
        }
        Ok(())
    }

    /// Runs a join of two tables. Both tables are read by this task's own consumers (the query's
    /// consumer, on the left table, only owns partitions and commits; its partitions are paused);
    /// whenever either side has new records (checked every `table_join_poll_interval_ms`), the
    /// changed keys' joined rows, or tombstones, are sent, then the side's store is written with
    /// its next offset.
    async fn run_table_join(
        &self,
        mut receiver: mpsc::Receiver<RawBatch>,
        mut encoder: Option<RecordEncoder>,
        mut encoded: EncodedBatch,
    ) -> Result<(), QueryError> {
        let spec = &self.spec;
        let (Some(join_spec), Some(join)) = (spec.join.as_ref(), spec.plan.join.as_ref()) else {
            return Err(QueryError::Internal(
                "a join started without its tables".into(),
            ));
        };
        let limits = spec.config.batch_limits();
        let (group_id, connection) = (&spec.group_id, &spec.connection);
        self.prepare_table_view(&[self.partition], &[self.partition])?;
        let mut left = TableSide::open_left(
            join_spec,
            join,
            self.partition,
            group_id,
            connection,
            limits,
        )
        .await?;
        let mut right = TableSide::open(
            join_spec,
            join,
            self.partition,
            group_id,
            connection,
            limits,
        )
        .await?;
        // A side read again from its beginning (its local state is gone) does not know which
        // keys joined before; if the output already has records, every key that does not join
        // now gets a tombstone until both sides are caught up.
        let mut retract_unknown =
            !(left.restored() && right.restored()) && self.output_has_records().await?;
        // What the right side's store holds is processed, though no round may come soon.
        self.right_progress
            .fetch_max(right.next_offset(), Ordering::AcqRel);
        let mut poll = self.table_join_poll();
        loop {
            tokio::select! {
                raw = receiver.recv() => if raw.is_none() { return Ok(()) },
                _ = poll.tick() => {}
            }
            for this_is_left in [true, false] {
                let (this, other) = if this_is_left {
                    (&mut left, &right)
                } else {
                    (&mut right, &left)
                };
                let output = |this: &TableSide, prepared: &mut crate::join::Prepared| {
                    let keys = &spec.plan.key_columns;
                    table_join_output(join, this, other, prepared, keys, retract_unknown)
                        .map(|output| vec![output])
                };
                if !self
                    .drain_table_side(this, &receiver, &mut encoder, &mut encoded, output)
                    .await?
                {
                    return Ok(()); // the client went away, or the query ends
                }
            }
            retract_unknown = false;
            // The query's consumer is paused (see `reads_both_sides`): the left table's progress
            // is this task's own reader's.
            self.progress
                .fetch_max(left.next_offset(), Ordering::AcqRel);
            self.right_progress
                .fetch_max(right.next_offset(), Ordering::AcqRel);
        }
    }

    /// Applies a table side's records up to its high watermark, a batch at a time: the batch's
    /// changes give `output` (rows and tombstones, in one or more parts), which is sent before
    /// the batch is written to the side's store. False when the client went away, or when the
    /// task's partition queue (`receiver`) is closed: the query ends or lost the partition, and
    /// the task stops after the batch in hand instead of reading the rest of a backlog.
    async fn drain_table_side(
        &self,
        side: &mut TableSide,
        receiver: &mpsc::Receiver<RawBatch>,
        encoder: &mut Option<RecordEncoder>,
        encoded: &mut EncodedBatch,
        mut output: impl FnMut(
            &TableSide,
            &mut crate::join::Prepared,
        ) -> Result<Vec<(RecordBatch, RecordBatch)>, QueryError>,
    ) -> Result<bool, QueryError> {
        let spec = &self.spec;
        let view = spec.rows_view.as_deref();
        let mut view_value = Vec::new();
        let high = side.high_watermark(&spec.connection).await?;
        loop {
            if receiver.is_closed() {
                return Ok(false);
            }
            let Some(raw) = side.read_batch(high).await? else {
                break;
            };
            self.metrics
                .records_in
                .fetch_add(raw.len() as u64, Ordering::Relaxed);
            self.metrics.batches_in.fetch_add(1, Ordering::Relaxed);
            let mut prepared = side
                .prepare(&raw, &spec.processing_log, &spec.query_id)
                .await?;
            if !prepared.changes.is_empty() {
                let mut view_batch = eddy_state::StoreBatch::new();
                for (rows, tombstones) in output(side, &mut prepared)? {
                    if !self
                        .deliver(&rows, Some(&tombstones), encoder.as_mut(), encoded)
                        .await?
                    {
                        return Ok(false);
                    }
                    if let Some(view) = view {
                        view.stage(&rows, &tombstones, &mut view_batch, &mut view_value)?;
                    }
                }
                // The table's rows before the state that made them: a crash between the two
                // makes the same rows again.
                if let Some(view) = view {
                    view.write(self.partition, view_batch)?;
                }
            }
            side.write(prepared.batch)?;
        }
        Ok(true)
    }

    /// Makes partition p of a joined table's rows ready before the task opens its sides (see
    /// `RowsView::prepare_partition`): without them, the sides' store partitions (`left` of the
    /// left store, `right` of the right one) are cleared, to be read again from the start.
    fn prepare_table_view(&self, left: &[i32], right: &[i32]) -> Result<(), QueryError> {
        let Some(join) = self.spec.join.as_ref() else {
            return Ok(());
        };
        let (Some(view), Some((_, _, left_store))) =
            (self.spec.rows_view.as_deref(), join.left.as_ref())
        else {
            return Ok(());
        };
        let sides = [(left_store, left.to_vec()), (&join.store, right.to_vec())];
        if view.prepare_partition(self.partition, &sides)? {
            info!(
                query = self.spec.query_id,
                partition = self.partition,
                "the joined table's rows are not stored here: reading both tables from the beginning"
            );
        }
        Ok(())
    }

    /// Whether the query's output topic has records already (a push query's has none).
    async fn output_has_records(&self) -> Result<bool, QueryError> {
        Ok(match &self.spec.sink {
            SinkSpec::Kafka { topic, .. } => self
                .spec
                .connection
                .watermarks(topic)
                .await?
                .iter()
                .any(|&(_, high)| high > 0),
            SinkSpec::Channel { .. } | SinkSpec::View => false,
        })
    }

    /// The pace at which a join that reads both sides itself (tables, or streams `WITHIN` a
    /// window) looks for their new records.
    fn table_join_poll(&self) -> tokio::time::Interval {
        let mut poll = tokio::time::interval(Duration::from_millis(
            self.spec.config.table_join_poll_interval_ms.max(1),
        ));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll
    }

    /// Runs a foreign-key join of two tables for partition p of the left table. The task reads
    /// that partition and *every* partition of the right table into a copy of its own (store
    /// partitions `p * right partitions + q`), so that the right row of any foreign key is at
    /// hand and each result key (the left key) has one writer, this task; next to the left rows
    /// an index `[right key][left key]` finds the left rows a right change concerns. A left
    /// change gives its key's joined row; a right change the joined rows of every left row that
    /// points at it. Output is sent before the state that made it is written: at-least-once.
    async fn run_foreign_key_join(
        &self,
        mut receiver: mpsc::Receiver<RawBatch>,
        mut encoder: Option<RecordEncoder>,
        mut encoded: EncodedBatch,
    ) -> Result<(), QueryError> {
        let spec = &self.spec;
        let (Some(join_spec), Some(join)) = (spec.join.as_ref(), spec.plan.join.as_ref()) else {
            return Err(QueryError::Internal(
                "a join started without its tables".into(),
            ));
        };
        let limits = spec.config.batch_limits();
        let right_partitions = spec
            .connection
            .topic(&join_spec.table_topic)
            .await?
            .map(|t| t.partitions)
            .ok_or_else(|| KafkaError::UnknownTopic {
                topic: join_spec.table_topic.clone(),
            })?;
        let copy_partitions = (0..right_partitions)
            .filter_map(|right| {
                i32::try_from(i64::from(self.partition) * i64::from(right_partitions))
                    .ok()?
                    .checked_add(right)
            })
            .collect::<Vec<_>>();
        self.prepare_table_view(&[self.partition], &copy_partitions)?;
        let mut left = TableSide::open_left(
            join_spec,
            join,
            self.partition,
            &spec.group_id,
            &spec.connection,
            limits,
        )
        .await?;
        let mut copies = Vec::with_capacity(usize::try_from(right_partitions).unwrap_or(0));
        for right in 0..right_partitions {
            copies.push(
                TableSide::open_copy(
                    join_spec,
                    join,
                    (self.partition, right, right_partitions),
                    &spec.group_id,
                    &spec.connection,
                    limits,
                )
                .await?,
            );
        }
        // What each copy holds is processed, though no round may come soon; the copy of right
        // partition q counts for q's read-your-writes once every task's copy has it.
        let copy_progress: Vec<Progress> = copies
            .iter()
            .map(|copy| Arc::new(AtomicI64::new(copy.next_offset())))
            .collect();
        if let Ok(mut registry) = self.right_registry.lock() {
            for (right, progress) in (0..right_partitions).zip(&copy_progress) {
                registry.insert((self.partition, right), Arc::clone(progress));
            }
        }
        // As for a primary-key join: a side read again from its beginning does not know which
        // keys joined before, so every key that does not join gets a tombstone until caught up.
        let mut retract_unknown = !(left.restored() && copies.iter().all(TableSide::restored))
            && self.output_has_records().await?;
        let mut poll = self.table_join_poll();
        loop {
            tokio::select! {
                raw = receiver.recv() => if raw.is_none() { return Ok(()) },
                _ = poll.tick() => {}
            }
            let left_output = |left: &TableSide, prepared: &mut crate::join::Prepared| {
                let keys = &spec.plan.key_columns;
                foreign_key_left_output(join, left, &copies, prepared, keys, retract_unknown)
                    .map(|output| vec![output])
            };
            if !self
                .drain_table_side(
                    &mut left,
                    &receiver,
                    &mut encoder,
                    &mut encoded,
                    left_output,
                )
                .await?
            {
                return Ok(()); // the client went away, or the query ends
            }
            for copy in &mut copies {
                // A right key can concern many left rows: the output is made in slices.
                let right_output = |copy: &TableSide, prepared: &mut crate::join::Prepared| {
                    prepared
                        .changes
                        .chunks(limits.records)
                        .map(|changes| {
                            let keys = &spec.plan.key_columns;
                            foreign_key_right_output(
                                join,
                                &left,
                                copy,
                                changes,
                                keys,
                                retract_unknown,
                            )
                        })
                        .collect::<Result<Vec<_>, _>>()
                };
                if !self
                    .drain_table_side(copy, &receiver, &mut encoder, &mut encoded, right_output)
                    .await?
                {
                    return Ok(());
                }
            }
            retract_unknown = false;
            // The query's consumer is paused (see `reads_both_sides`): the left table's progress
            // is this task's own reader's.
            self.progress
                .fetch_max(left.next_offset(), Ordering::AcqRel);
            for (copy, progress) in copies.iter().zip(&copy_progress) {
                progress.fetch_max(copy.next_offset(), Ordering::AcqRel);
            }
        }
    }

    /// Runs a join of two streams `WITHIN` a window. Both streams are read by this task's own
    /// readers (the query's consumer, on the left stream, only owns partitions and commits; its
    /// partitions are paused), in rounds of one batch of each side (see `stream_join`); each
    /// round's output is sent, then its state changes go to the changelog and the store with
    /// both next offsets.
    async fn run_stream_join(
        &self,
        mut receiver: mpsc::Receiver<RawBatch>,
        mut encoder: Option<RecordEncoder>,
        mut encoded: EncodedBatch,
    ) -> Result<(), QueryError> {
        let spec = &self.spec;
        let (Some(join_spec), Some(join)) = (spec.join.as_ref(), spec.plan.join.as_ref()) else {
            return Err(QueryError::Internal(
                "a stream join started without its streams".into(),
            ));
        };
        let Some(right_spec) = join_spec.right_stream.as_ref() else {
            return Err(QueryError::Internal(
                "a stream join started without its right stream".into(),
            ));
        };
        let Some(stream_join) = join.stream_join.as_ref() else {
            return Err(QueryError::Internal("not a stream-stream join".into()));
        };
        let local = join_spec
            .store
            .checkpoint(self.partition)
            .map_err(|e| QueryError::State(e.to_string()))?;
        let restored = restore_partition(
            &join_spec.store,
            self.partition,
            join_spec.changelog_topic.as_deref(),
            &spec.connection,
            &self.metrics,
            &spec.query_id,
            None,
        )
        .await?;
        let mut joiner = StreamJoiner::open(
            join_spec.store.clone(),
            self.partition,
            join,
            join_spec
                .changelog_topic
                .as_ref()
                .map(|_| spec.config.join_changelog_record_bytes),
        )?;
        if restored.changelog_offset != local.changelog_offset {
            let rows = joiner.rebuild_after_restore()?;
            debug!(
                query = spec.query_id,
                partition = self.partition,
                rows,
                "join rows and expiry index rebuilt"
            );
        }
        // An aggregation in this task has counted the pairs of both inputs up to its offsets,
        // which the join's own may trail (the aggregation commits first): the join replays up
        // to them without aggregating.
        let mut joined_aggregate = match &spec.aggregate_joined {
            Some(joined) => {
                let view = MaterializedView::new(
                    Arc::clone(&joined.plan),
                    joined.state.store.clone(),
                    &joined.state.limits,
                )?;
                let mut aggregate = PartitionAggregate::new(view, self.partition).of_joined_rows();
                aggregate
                    .restore(
                        &joined.state,
                        &spec.connection,
                        &self.metrics,
                        &spec.query_id,
                    )
                    .await?;
                Some((joined, aggregate))
            }
            None => None,
        };
        let mut replay_until = match &joined_aggregate {
            Some((_, aggregate)) => Some(aggregate.joined_offsets()?),
            None => None,
        };
        if let Some([counted_left, counted_right]) = replay_until {
            // The table holds the pairs of the inputs below what the aggregation counted:
            // read-your-writes (which trusts no committed offset of a stateful query) need not
            // wait for a round that may never come when nothing new arrives.
            self.progress.fetch_max(counted_left, Ordering::AcqRel);
            self.right_progress
                .fetch_max(counted_right, Ordering::AcqRel);
        }
        // Each side resumes at its stored next offset; a new query starts where it is told.
        let mut starts = [Offset::Beginning, Offset::Beginning];
        for (side, topic, reset) in [
            (Side::Left, spec.source_topic.as_str(), spec.offset_reset),
            (
                Side::Right,
                right_spec.topic.as_str(),
                right_spec.offset_reset,
            ),
        ] {
            starts[side as usize] = match (joiner.next_offset(side), reset) {
                (Some(offset), _) => Offset::Offset(offset),
                (None, OffsetReset::Earliest) => Offset::Beginning,
                (None, OffsetReset::Latest) => Offset::Offset(
                    spec.connection
                        .high_watermark(topic, self.partition)
                        .await?,
                ),
            };
        }
        let limits = spec.config.batch_limits();
        let [left_start, right_start] = starts;
        let mut readers = [
            PartitionReader::open(
                &spec.connection,
                &format!("{}-left", spec.group_id),
                &spec.source_topic,
                self.partition,
                left_start,
                limits,
            )
            .await?,
            PartitionReader::open(
                &spec.connection,
                &format!("{}-right", spec.group_id),
                &right_spec.topic,
                self.partition,
                right_start,
                limits,
            )
            .await?,
        ];
        // Where the right side resumes is processed (or, for a new query reading from the
        // latest offset, never will be), though no round may come soon.
        self.right_progress
            .fetch_max(readers[1].next_offset(), Ordering::AcqRel);
        let format_error = |topic: &str, e: eddy_format::FormatError| QueryError::Format {
            topic: topic.to_owned(),
            message: e.to_string(),
        };
        let mut decoders = [
            RecordDecoder::new(&spec.source_layout)
                .map_err(|e| format_error(&spec.source_topic, e))?,
            RecordDecoder::new(&right_spec.layout)
                .map_err(|e| format_error(&right_spec.topic, e))?,
        ];
        let sides = [
            InputSide {
                topic: &spec.source_topic,
                timestamp_column: spec.timestamp_column,
                timestamp_format: spec.timestamp_format.as_ref(),
                drop_tombstones: true,
            },
            InputSide {
                topic: &right_spec.topic,
                timestamp_column: right_spec.timestamp_column,
                timestamp_format: right_spec.timestamp_format.as_ref(),
                drop_tombstones: true,
            },
        ];
        let changelog_producer = match &spec.sink {
            SinkSpec::Kafka { producer, .. } => Some(producer.clone()),
            SinkSpec::Channel { .. } | SinkSpec::View => None,
        };
        let timeout = Duration::from_millis(spec.config.produce_timeout_ms);
        let mut poll = self.table_join_poll();
        info!(
            query = spec.query_id,
            partition = self.partition,
            stream_time = joiner.stream_time(),
            "stream join ready"
        );
        let mut skipped = Vec::new();
        let mut highs = [-1i64; 2];
        // Rows read and decoded but not processed yet: a round takes each side only up to where
        // a side with records not read yet runs out (`round_cut`), and the rest waits here. A
        // side is read again only once its rows waiting are processed, so this holds at most a
        // batch per side.
        let mut waiting: [Option<RecordBatch>; 2] = [None, None];
        // Each side's next offset after the rows processed so far: what a round stores and
        // commits, where a restart resumes (rows waiting are read again then).
        let mut processed = [readers[0].next_offset(), readers[1].next_offset()];
        loop {
            tokio::select! {
                raw = receiver.recv() => if raw.is_none() { return Ok(()) },
                _ = poll.tick() => {}
            }
            loop {
                if receiver.is_closed() {
                    // The query ends or lost the partition: stop between rounds (each round's
                    // state and next offsets are written whole) instead of reading the backlog.
                    return Ok(());
                }
                if replay_until
                    .is_some_and(|counted| processed[0] >= counted[0] && processed[1] >= counted[1])
                {
                    replay_until = None;
                }
                // While replaying, no side is read past what the aggregation counted, so every
                // pair of the round is one it counted before.
                let replaying = replay_until;
                let limit = |side: usize, high: i64| match replaying {
                    Some(counted) => high.min(counted[side]),
                    None => high,
                };
                let mut read_any = false;
                for side in [Side::Left, Side::Right] {
                    let s = side as usize;
                    if waiting[s].as_ref().is_some_and(|rows| rows.num_rows() > 0) {
                        continue;
                    }
                    // A side is read up to the high watermark last asked for; a new one is asked
                    // for only once the reader has caught up with it (one request per round
                    // trip to the end of the partition, not one per batch).
                    if readers[s].next_offset() >= highs[s] {
                        highs[s] = readers[s].high_watermark(&spec.connection).await?;
                    }
                    if let Some(raw) = readers[s].read_batch(limit(s, highs[s])).await? {
                        read_any = true;
                        skipped.clear();
                        waiting[s] = Some(
                            self.decode_side(&mut decoders[s], &raw, &mut skipped, &sides[s])
                                .await?,
                        );
                    }
                }
                // A side read to its end may have grown while the other side was read: ask
                // again, so that the round does not run the other side past records of this one
                // that are written but not read (their stream time would make them late).
                for side in [Side::Left, Side::Right] {
                    let s = side as usize;
                    if readers[s].next_offset() >= highs[s] {
                        highs[s] = readers[s].high_watermark(&spec.connection).await?;
                    }
                }
                let more_unread = [0, 1].map(|s| readers[s].next_offset() < limit(s, highs[s]));
                let [left_read, right_read] = [0, 1].map(|s| {
                    waiting[s]
                        .take()
                        .unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(decoders[s].schema())))
                });
                let [left_taken, right_taken] =
                    crate::stream_join::round_cut(&left_read, &right_read, more_unread)?;
                let mut next_offsets = [0i64; 2];
                let mut round_rows = Vec::with_capacity(2);
                for (s, (read, taken)) in [(left_read, left_taken), (right_read, right_taken)]
                    .into_iter()
                    .enumerate()
                {
                    let rest = read.slice(taken, read.num_rows() - taken);
                    next_offsets[s] = match rest.column(2).as_primitive_opt::<Int64Type>() {
                        Some(offsets) if !offsets.is_empty() => offsets.value(0),
                        _ => readers[s].next_offset(),
                    };
                    if rest.num_rows() > 0 {
                        waiting[s] = Some(rest);
                    }
                    round_rows.push(read.slice(0, taken));
                }
                if !read_any && left_taken + right_taken == 0 {
                    if more_unread.contains(&true) {
                        // A side with records written since it was read holds the round back:
                        // read them first rather than commit a round of nothing.
                        continue;
                    }
                    break;
                }
                processed = next_offsets;
                let right_decoded = round_rows
                    .pop()
                    .ok_or_else(|| QueryError::Internal("lost the right rows read".into()))?;
                let left_decoded = round_rows
                    .pop()
                    .ok_or_else(|| QueryError::Internal("lost the left rows read".into()))?;
                let [left_in_time, right_in_time] =
                    joiner.advance(&left_decoded, &right_decoded)?;
                debug!(
                    query = spec.query_id,
                    partition = self.partition,
                    left_rows = left_decoded.num_rows(),
                    right_rows = right_decoded.num_rows(),
                    left_next_offset = next_offsets[0],
                    right_next_offset = next_offsets[1],
                    stream_time = joiner.stream_time(),
                    "stream join round"
                );
                let mut kept = Vec::with_capacity(2);
                for (s, (batch, in_time)) in
                    [(left_decoded, left_in_time), (right_decoded, right_in_time)]
                        .into_iter()
                        .enumerate()
                {
                    let late = self.late_rows(&batch, &in_time);
                    self.report_skipped_rows(
                        &late,
                        ErrorKind::LateRecord,
                        sides[s].topic,
                        "the record is late: its join window had closed (its event time plus the \
                         window's reach and grace period is older than the stream time), so it \
                         is dropped",
                    )
                    .await;
                    let batch = datafusion::arrow::compute::filter_record_batch(&batch, &in_time)
                        .map_err(|e| QueryError::Internal(format!("late records: {e}")))?;
                    skipped.clear();
                    let rows = if s == 0 {
                        let attempt = |batch: RecordBatch| {
                            spec.plan
                                .process(batch)
                                .map_err(|e| QueryError::Expression(e.strip_backtrace()))
                        };
                        self.isolating_in(
                            batch,
                            &mut skipped,
                            attempt,
                            &stream_join.left_row_schema,
                            sides[s].topic,
                        )
                        .await?
                    } else {
                        let attempt = |batch: RecordBatch| {
                            join.right_stream_rows(batch)
                                .map_err(|e| QueryError::Expression(e.strip_backtrace()))
                        };
                        self.isolating_in(
                            batch,
                            &mut skipped,
                            attempt,
                            &join.table_row_schema,
                            sides[s].topic,
                        )
                        .await?
                    };
                    kept.push(rows);
                }
                let right_rows = kept
                    .pop()
                    .ok_or_else(|| QueryError::Internal("lost the right rows".into()))?;
                let left_rows = kept
                    .pop()
                    .ok_or_else(|| QueryError::Internal("lost the left rows".into()))?;
                let round = joiner.round(join, left_rows, right_rows, next_offsets)?;
                let output = self.join_stream_pairs(join, &round).await?;
                let delivered = match &mut joined_aggregate {
                    Some(_) if replaying.is_some() => true,
                    Some((joined, aggregate)) => {
                        self.aggregate_joined_rows(
                            joined,
                            aggregate,
                            &output,
                            next_offsets,
                            encoder.as_mut(),
                            &mut encoded,
                        )
                        .await?
                    }
                    None => {
                        self.deliver(&output, None, encoder.as_mut(), &mut encoded)
                            .await?
                    }
                };
                if !delivered {
                    return Ok(()); // the client went away
                }
                commit_partition_with_local(
                    &join_spec.store,
                    self.partition,
                    join_spec.changelog_topic.as_deref(),
                    changelog_producer.as_ref(),
                    &round.writes,
                    &round.local_writes,
                    &round.changelog_writes,
                    next_offsets[0],
                    timeout,
                )
                .await?;
                self.progress.store(next_offsets[0], Ordering::Release);
                self.right_progress
                    .store(next_offsets[1], Ordering::Release);
            }
        }
    }

    /// Folds a join round's output rows into the aggregation that runs in the join's task, and
    /// commits its state with the round's next offsets (before the join commits its own). False
    /// when the client went away.
    async fn aggregate_joined_rows(
        &self,
        joined: &JoinedAggregation,
        aggregate: &mut PartitionAggregate,
        output: &RecordBatch,
        next_offsets: [i64; 2],
        encoder: Option<&mut RecordEncoder>,
        encoded: &mut EncodedBatch,
    ) -> Result<bool, QueryError> {
        let input = joined_rows_as_input(
            &self.spec.plan,
            output,
            &joined.input_schema,
            self.partition,
        )?;
        let attempt = |batch: RecordBatch| {
            joined
                .plan
                .process(batch)
                .map_err(|e| QueryError::Expression(e.strip_backtrace()))
        };
        let mut skipped = Vec::new();
        let input = self
            .isolating_in(
                input,
                &mut skipped,
                attempt,
                &joined.plan.output_schema,
                &self.spec.source_topic,
            )
            .await?;
        let applied = aggregate.apply(&input, None)?;
        if input.num_rows() == 0 && applied.writes.is_empty() && applied.rows.num_rows() == 0 {
            // Nothing counted: the offsets the aggregation last committed still say what it
            // counted (a restart replays the rounds between without pairs).
            return Ok(true);
        }
        self.finish_aggregated(
            aggregate,
            &joined.state,
            &joined.plan,
            applied,
            input.num_rows(),
            next_offsets[0] - 1,
            next_offsets,
            encoder,
            encoded,
        )
        .await
    }

    /// The joined rows of a stream join round; if an expression over both sides fails, the
    /// pairs run one by one and the failing ones are reported (by the left stream's partition)
    /// and skipped.
    async fn join_stream_pairs(
        &self,
        join: &eddy_planner::JoinPlan,
        round: &crate::stream_join::Round,
    ) -> Result<RecordBatch, QueryError> {
        let attempt = |offset: usize, length: usize| {
            let keys: Vec<ArrayRef> = round.keys.iter().map(|k| k.slice(offset, length)).collect();
            join.join_streams(
                &round.left_rows,
                &round.left.slice(offset, length),
                &round.right_rows,
                &round.right.slice(offset, length),
                &keys,
                &self.spec.plan.key_columns,
            )
        };
        let pairs = round.left.len();
        let error = match attempt(0, pairs) {
            Ok(output) => return Ok(output),
            Err(error) => error.strip_backtrace(),
        };
        debug!(query = self.spec.query_id, %error, "joined rows failed; isolating pairs");
        let mut good = Vec::new();
        for pair in 0..pairs {
            match attempt(pair, 1) {
                Ok(output) => good.push(output),
                Err(error) => {
                    self.metrics.records_skipped.fetch_add(1, Ordering::Relaxed);
                    self.spec
                        .processing_log
                        .report(
                            &self.spec.query_id,
                            ErrorKind::ExpressionError,
                            &self.spec.source_topic,
                            self.partition,
                            -1,
                            format!(
                                "expression over joined records failed: {}",
                                error.strip_backtrace()
                            ),
                            None,
                        )
                        .await;
                }
            }
        }
        concat_batches(&self.spec.plan.output_schema, &good)
            .map_err(|e| QueryError::Internal(format!("joined rows: {e}")))
    }

    /// (partition, offset) of the decoded rows that are not `in_time`.
    fn late_rows(
        &self,
        batch: &RecordBatch,
        in_time: &datafusion::arrow::array::BooleanArray,
    ) -> Vec<(i32, i64)> {
        let partitions = batch.column(1).as_primitive_opt::<Int32Type>();
        let offsets = batch.column(2).as_primitive_opt::<Int64Type>();
        (0..batch.num_rows())
            .filter(|&row| !in_time.value(row))
            .map(|row| {
                (
                    partitions.map_or(self.partition, |p| p.value(row)),
                    offsets.map_or(-1, |o| o.value(row)),
                )
            })
            .collect()
    }

    /// Sends output rows, and the tombstones of a table's deleted keys, to the sink and counts
    /// them. A push query's client sees rows only. False when that client is gone.
    async fn deliver(
        &self,
        output: &RecordBatch,
        tombstones: Option<&RecordBatch>,
        encoder: Option<&mut RecordEncoder>,
        encoded: &mut EncodedBatch,
    ) -> Result<bool, QueryError> {
        self.deliver_as(&self.spec.plan, output, tombstones, encoder, encoded)
            .await
    }

    /// [`Self::deliver`] of the rows of `plan`, which may be another than the query's (an
    /// aggregation in its join's task).
    async fn deliver_as(
        &self,
        plan: &StreamingPlan,
        output: &RecordBatch,
        tombstones: Option<&RecordBatch>,
        encoder: Option<&mut RecordEncoder>,
        encoded: &mut EncodedBatch,
    ) -> Result<bool, QueryError> {
        let tombstones = tombstones.filter(|t| t.num_rows() > 0);
        if output.num_rows() == 0 && tombstones.is_none() {
            return Ok(true);
        }
        match &self.spec.sink {
            SinkSpec::Kafka { topic, .. } => {
                let mut deliveries = Acknowledgements::default();
                self.send_as(plan, output, tombstones, encoder, encoded, &mut deliveries)
                    .await?;
                deliveries.settle(topic).await?;
                self.metrics
                    .records_out
                    .fetch_add(deliveries.records, Ordering::Relaxed);
            }
            SinkSpec::Channel { sender } => {
                if output.num_rows() > 0 && sender.send(output.clone()).await.is_err() {
                    return Ok(false);
                }
                self.metrics
                    .records_out
                    .fetch_add(output.num_rows() as u64, Ordering::Relaxed);
            }
            // The caller writes the rows into the view: they count as the query's output.
            SinkSpec::View => {
                let removed = tombstones.map_or(0, RecordBatch::num_rows);
                self.metrics
                    .records_out
                    .fetch_add((output.num_rows() + removed) as u64, Ordering::Relaxed);
            }
        }
        Ok(true)
    }

    /// Sends output rows and tombstones of `plan` to the query's Kafka sink without waiting for
    /// their acknowledgements, which join `deliveries`.
    async fn send_as(
        &self,
        plan: &StreamingPlan,
        output: &RecordBatch,
        tombstones: Option<&RecordBatch>,
        encoder: Option<&mut RecordEncoder>,
        encoded: &mut EncodedBatch,
        deliveries: &mut Acknowledgements,
    ) -> Result<(), QueryError> {
        let tombstones = tombstones.filter(|t| t.num_rows() > 0);
        let (
            SinkSpec::Kafka {
                topic, producer, ..
            },
            Some(encoder),
        ) = (&self.spec.sink, encoder)
        else {
            return Err(QueryError::Internal("sink without encoder".into()));
        };
        if output.num_rows() > 0 {
            self.produce(
                plan, topic, producer, encoder, encoded, output, false, deliveries,
            )
            .await?;
        }
        if let Some(tombstones) = tombstones {
            self.produce(
                plan, topic, producer, encoder, encoded, tombstones, true, deliveries,
            )
            .await?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn produce(
        &self,
        plan: &StreamingPlan,
        topic: &str,
        producer: &FutureProducer,
        encoder: &mut RecordEncoder,
        encoded: &mut EncodedBatch,
        output: &RecordBatch,
        tombstones: bool,
        deliveries: &mut Acknowledgements,
    ) -> Result<(), QueryError> {
        encoded.clear();
        encoder
            .encode(output, &plan.key_columns, &plan.value_columns, encoded)
            .map_err(|e| QueryError::Internal(format!("encoder of \"{topic}\": {e}")))?;
        let rowtimes = output
            .column(plan.rowtime_column)
            .as_primitive_opt::<Int64Type>()
            .cloned();
        let windowed = match (plan.window(), plan.window_columns, &self.spec.sink) {
            (Some(spec), Some(columns), SinkSpec::Kafka { partitions, .. }) => {
                let bounds = |column: usize| {
                    output
                        .column(column)
                        .as_primitive_opt::<Int64Type>()
                        .map(|a| a.values())
                        .ok_or_else(|| QueryError::Internal("window bounds are not BIGINT".into()))
                };
                Some(crate::window::WindowedKeys::new(
                    spec,
                    (0..encoded.len()).map(|row| encoded.key(row)),
                    bounds(columns.start)?,
                    bounds(columns.end)?,
                    *partitions,
                ))
            }
            _ => None,
        };
        let timeout = Duration::from_millis(self.spec.config.produce_timeout_ms);
        let deadline = Instant::now() + timeout;
        for row in 0..encoded.len() {
            let timestamp = rowtimes
                .as_ref()
                .filter(|r| r.is_valid(row))
                .map(|r| r.value(row));
            loop {
                let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
                if let Some(windowed) = &windowed {
                    record = record
                        .key(windowed.key(row))
                        .partition(windowed.partition(row));
                } else if let Some(key) = encoded.key(row) {
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
                        deliveries.pending.push_back(delivery);
                        deliveries.records += 1;
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
                        if !deliveries.settle_oldest(topic).await? {
                            // The queue holds other batches' records: they are on their way.
                            tokio::time::sleep(Duration::from_millis(5)).await;
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
        Ok(())
    }
}

/// What a produced record's [`DeliveryFuture`] yields.
pub(crate) type Acknowledgement = Result<
    rdkafka::producer::future_producer::OwnedDeliveryResult,
    futures::channel::oneshot::Canceled,
>;

/// The acknowledgements a partition task still waits for, oldest first, and how many records
/// they are for. Generic over the acknowledgement's future for its tests.
struct Acknowledgements<F = DeliveryFuture> {
    pending: std::collections::VecDeque<F>,
    records: u64,
}

impl<F> Default for Acknowledgements<F> {
    fn default() -> Self {
        Self {
            pending: std::collections::VecDeque::new(),
            records: 0,
        }
    }
}

impl<F> Acknowledgements<F>
where
    F: std::future::Future<Output = Acknowledgement> + Unpin,
{
    /// Waits for every pending acknowledgement. Cancel-safe: an acknowledgement leaves the queue
    /// only once it has arrived, so a dropped call leaves the rest to the next.
    async fn settle(&mut self, topic: &str) -> Result<(), QueryError> {
        while self.settle_oldest(topic).await? {}
        Ok(())
    }

    /// Waits for the oldest pending acknowledgement; false if none is pending. Cancel-safe.
    async fn settle_oldest(&mut self, topic: &str) -> Result<bool, QueryError> {
        let Some(oldest) = self.pending.front_mut() else {
            return Ok(false);
        };
        let outcome = oldest.await;
        self.pending.pop_front();
        acknowledged(topic, outcome).map(|_| true)
    }
}

/// The offset a produced record was written at, from its acknowledgement, or the produce error
/// naming `topic`.
pub(crate) fn acknowledged(topic: &str, outcome: Acknowledgement) -> Result<i64, QueryError> {
    match outcome {
        Ok(Ok(delivered)) => Ok(delivered.offset),
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

/// The batches a partition task has sent and not yet seen acknowledged in full, oldest first,
/// each with the offset that follows it (see `PartitionTask::run_writing`).
struct BatchesInFlight<F = DeliveryFuture> {
    batches: std::collections::VecDeque<(Acknowledgements<F>, i64)>,
    most: usize,
}

impl<F> BatchesInFlight<F>
where
    F: std::future::Future<Output = Acknowledgement> + Unpin,
{
    /// Room for `most` batches (at least one).
    fn new(most: usize) -> Self {
        let most = most.max(1);
        Self {
            batches: std::collections::VecDeque::with_capacity(most),
            most,
        }
    }

    fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    fn has_room(&self) -> bool {
        self.batches.len() < self.most
    }

    fn push(&mut self, deliveries: Acknowledgements<F>, next_offset: i64) {
        self.batches.push_back((deliveries, next_offset));
    }

    /// Waits until the oldest batch is acknowledged in full and removes it: its record count
    /// and next offset; `None` when no batch is in flight. Cancel-safe: the batch stays first
    /// until every acknowledgement of it has arrived.
    async fn settle_oldest(&mut self, topic: &str) -> Result<Option<(u64, i64)>, QueryError> {
        let Some((deliveries, _)) = self.batches.front_mut() else {
            return Ok(None);
        };
        deliveries.settle(topic).await?;
        Ok(self
            .batches
            .pop_front()
            .map(|(deliveries, next_offset)| (deliveries.records, next_offset)))
    }
}

/// A join's output rows as the rows of the source its aggregation was planned over (see
/// [`JoinedAggregation`]): the join's `ROWTIME`, the task's partition, no offset (-1), then the
/// key and value columns in the order the join writes them to its topic, in the source's types.
fn joined_rows_as_input(
    join_plan: &StreamingPlan,
    output: &RecordBatch,
    schema: &SchemaRef,
    partition: i32,
) -> Result<RecordBatch, QueryError> {
    use datafusion::arrow::array::{Int32Array, Int64Array};
    let rows = output.num_rows();
    let written: Vec<usize> = join_plan
        .key_columns
        .iter()
        .chain(&join_plan.value_columns)
        .copied()
        .collect();
    let fields = schema.fields();
    if fields.len() != written.len() + 3 {
        return Err(QueryError::Internal(format!(
            "the join writes {} columns, its aggregation reads {}",
            written.len(),
            fields.len().saturating_sub(3)
        )));
    }
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(fields.len());
    columns.push(Arc::clone(output.column(join_plan.rowtime_column)));
    columns.push(Arc::new(Int32Array::from_value(partition, rows)));
    columns.push(Arc::new(Int64Array::from_value(-1, rows)));
    for (field, column) in fields.iter().skip(3).zip(written) {
        let array = output.column(column);
        columns.push(if array.data_type() == field.data_type() {
            Arc::clone(array)
        } else {
            datafusion::arrow::compute::cast(array, field.data_type()).map_err(|e| {
                QueryError::Internal(format!("joined column \"{}\": {e}", field.name()))
            })?
        });
    }
    RecordBatch::try_new(Arc::clone(schema), columns)
        .map_err(|e| QueryError::Internal(format!("joined rows as aggregation input: {e}")))
}

/// A table-table join's output for one side's changes: the changed keys' new rows on that side,
/// the other side's stored rows, joined. Returns (rows, tombstones).
fn table_join_output(
    join: &eddy_planner::JoinPlan,
    this: &TableSide,
    other: &TableSide,
    prepared: &crate::join::Prepared,
    output_keys: &[usize],
    retract_unknown: bool,
) -> Result<(RecordBatch, RecordBatch), QueryError> {
    let keys: Vec<&[u8]> = prepared.changes.iter().map(|(k, _)| k.as_slice()).collect();
    let these: Vec<Option<&[u8]>> = prepared.changes.iter().map(|(_, v)| v.as_deref()).collect();
    let others = other.get_rows(&keys)?;
    let others: Vec<Option<&[u8]>> = others.iter().map(|v| v.as_deref()).collect();
    let (this_rows, this_index) = this.decode_rows(&these)?;
    let (other_rows, other_index) = other.decode_rows(&others)?;
    let key_columns = this.decode_keys(&keys)?;
    // The store still holds this side's rows before the change.
    let previously_joined: Vec<bool> = if retract_unknown {
        vec![true; keys.len()]
    } else {
        this.get_rows(&keys)?
            .iter()
            .zip(&others)
            .map(|(before, other)| {
                let (this_had, other_has) = (before.is_some(), other.is_some());
                if this.is_left() {
                    join.kind.joins(this_had, other_has)
                } else {
                    join.kind.joins(other_has, this_had)
                }
            })
            .collect()
    };
    let result = if this.is_left() {
        join.join_tables(
            &this_rows,
            &this_index,
            &other_rows,
            &other_index,
            &key_columns,
            output_keys,
            &previously_joined,
        )
    } else {
        join.join_tables(
            &other_rows,
            &other_index,
            &this_rows,
            &this_index,
            &key_columns,
            output_keys,
            &previously_joined,
        )
    };
    result.map_err(|e| QueryError::Expression(e.strip_backtrace()))
}

/// A foreign-key join's output for a batch of left changes, whose index entries it adds to the
/// batch's store writes: each changed left key's joined row, or a tombstone when it has none now
/// but had a row before.
fn foreign_key_left_output(
    join: &eddy_planner::JoinPlan,
    left: &TableSide,
    copies: &[TableSide],
    prepared: &mut crate::join::Prepared,
    output_keys: &[usize],
    retract_unknown: bool,
) -> Result<(RecordBatch, RecordBatch), QueryError> {
    let keys: Vec<&[u8]> = prepared.changes.iter().map(|(k, _)| k.as_slice()).collect();
    let rows: Vec<Option<&[u8]>> = prepared.changes.iter().map(|(_, v)| v.as_deref()).collect();
    // The store still holds the rows before the change.
    let before = left.get_rows(&keys)?;
    let before: Vec<Option<&[u8]>> = before.iter().map(|v| v.as_deref()).collect();
    let foreign_keys = left.foreign_keys(&rows)?;
    let foreign_keys_before = left.foreign_keys(&before)?;
    for ((key, now), then) in keys.iter().zip(&foreign_keys).zip(&foreign_keys_before) {
        if now == then {
            continue;
        }
        if let Some(then) = then {
            prepared
                .batch
                .delete(&TableSide::foreign_key_entry(then, key));
        }
        if let Some(now) = now {
            prepared
                .batch
                .put(&TableSide::foreign_key_entry(now, key), &[]);
        }
    }
    // The right row of each foreign key, from whichever copy holds it.
    let mut right: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
    let wanted: Vec<(usize, &[u8])> = foreign_keys
        .iter()
        .enumerate()
        .filter_map(|(i, k)| k.as_deref().map(|k| (i, k)))
        .collect();
    let wanted_keys: Vec<&[u8]> = wanted.iter().map(|(_, k)| *k).collect();
    for copy in copies {
        for ((i, _), found) in wanted.iter().zip(copy.get_rows(&wanted_keys)?) {
            if right[*i].is_none() {
                right[*i] = found;
            }
        }
    }
    let right: Vec<Option<&[u8]>> = right.iter().map(|v| v.as_deref()).collect();
    let Some(any_copy) = copies.first() else {
        return Err(QueryError::Internal(
            "a right table without partitions".into(),
        ));
    };
    let (left_rows, left_index) = left.decode_rows(&rows)?;
    let (right_rows, right_index) = any_copy.decode_rows(&right)?;
    let key_columns = left.decode_keys(&keys)?;
    let previously_joined: Vec<bool> = before
        .iter()
        .map(|b| retract_unknown || b.is_some())
        .collect();
    join.join_tables(
        &left_rows,
        &left_index,
        &right_rows,
        &right_index,
        &key_columns,
        output_keys,
        &previously_joined,
    )
    .map_err(|e| QueryError::Expression(e.strip_backtrace()))
}

/// A foreign-key join's output for changes of right rows (`copy`'s, not yet written): the joined
/// row, or a tombstone, of every left row that points at a changed key.
fn foreign_key_right_output(
    join: &eddy_planner::JoinPlan,
    left: &TableSide,
    copy: &TableSide,
    changes: &[(Vec<u8>, Option<Vec<u8>>)],
    output_keys: &[usize],
    retract_unknown: bool,
) -> Result<(RecordBatch, RecordBatch), QueryError> {
    let right_keys: Vec<&[u8]> = changes.iter().map(|(k, _)| k.as_slice()).collect();
    let before = copy.get_rows(&right_keys)?;
    // (left key, change) of every left row a change concerns.
    let mut pairs: Vec<(Vec<u8>, usize)> = Vec::new();
    for (change, key) in right_keys.iter().enumerate() {
        pairs.extend(left.rows_joining(key)?.into_iter().map(|k| (k, change)));
    }
    let left_keys: Vec<&[u8]> = pairs.iter().map(|(k, _)| k.as_slice()).collect();
    let left_rows = left.get_rows(&left_keys)?;
    let left_rows: Vec<Option<&[u8]>> = left_rows.iter().map(|v| v.as_deref()).collect();
    let right_rows: Vec<Option<&[u8]>> = pairs
        .iter()
        .map(|(_, change)| changes[*change].1.as_deref())
        .collect();
    let (left_batch, left_index) = left.decode_rows(&left_rows)?;
    let (right_batch, right_index) = copy.decode_rows(&right_rows)?;
    let key_columns = left.decode_keys(&left_keys)?;
    // An inner join's row existed if the right row did; a left join's row always did.
    let previously_joined: Vec<bool> = pairs
        .iter()
        .map(|(_, change)| {
            retract_unknown
                || join.kind == eddy_planner::JoinKind::Left
                || before[*change].is_some()
        })
        .collect();
    join.join_tables(
        &left_batch,
        &left_index,
        &right_batch,
        &right_index,
        &key_columns,
        output_keys,
        &previously_joined,
    )
    .map_err(|e| QueryError::Expression(e.strip_backtrace()))
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

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use futures::channel::oneshot;
    use rdkafka::Timestamp;
    use rdkafka::error::KafkaError;
    use rdkafka::message::OwnedMessage;
    use rdkafka::producer::future_producer::{Delivery, OwnedDeliveryResult};

    use super::*;

    type Acknowledger = oneshot::Sender<OwnedDeliveryResult>;

    /// A batch of `records` sent records and what acknowledges each.
    fn sent(
        records: usize,
    ) -> (
        Acknowledgements<oneshot::Receiver<OwnedDeliveryResult>>,
        Vec<Acknowledger>,
    ) {
        let mut deliveries = Acknowledgements::default();
        let mut acknowledgers = Vec::new();
        for _ in 0..records {
            let (acknowledger, delivery) = oneshot::channel();
            deliveries.pending.push_back(delivery);
            deliveries.records += 1;
            acknowledgers.push(acknowledger);
        }
        (deliveries, acknowledgers)
    }

    fn acknowledge(acknowledger: Acknowledger) {
        let delivered = Delivery {
            partition: 0,
            offset: 0,
            timestamp: Timestamp::NotAvailable,
        };
        assert!(
            acknowledger.send(Ok(delivered)).is_ok(),
            "the batch is gone"
        );
    }

    #[tokio::test]
    async fn a_batch_is_settled_only_once_it_and_every_batch_before_it_are_acknowledged() {
        let mut in_flight = BatchesInFlight::new(2);
        let (first, first_acknowledgers) = sent(2);
        let (second, second_acknowledgers) = sent(1);
        in_flight.push(first, 10);
        assert!(in_flight.has_room());
        in_flight.push(second, 20);
        assert!(!in_flight.has_room(), "two batches in flight at most");

        second_acknowledgers.into_iter().for_each(acknowledge);
        let mut first_acknowledgers = first_acknowledgers.into_iter();
        first_acknowledgers.next().into_iter().for_each(acknowledge);
        // Each attempt is dropped unfinished, as `run_writing`'s select drops it when a batch
        // arrives; the acknowledgement it took must not be forgotten, nor the one it waits for.
        for _ in 0..2 {
            assert!(
                in_flight.settle_oldest("out").now_or_never().is_none(),
                "the first batch still waits for one acknowledgement"
            );
        }
        first_acknowledgers.for_each(acknowledge);
        assert_eq!(
            in_flight.settle_oldest("out").await.ok(),
            Some(Some((2, 10)))
        );
        assert!(in_flight.has_room());
        assert_eq!(
            in_flight.settle_oldest("out").await.ok(),
            Some(Some((1, 20)))
        );
        assert!(in_flight.is_empty());
        assert_eq!(in_flight.settle_oldest("out").await.ok(), Some(None));
    }

    #[tokio::test]
    async fn a_refused_or_abandoned_record_fails_its_batch_naming_the_topic() {
        let (mut deliveries, acknowledgers) = sent(2);
        let mut acknowledgers = acknowledgers.into_iter();
        acknowledgers.next().into_iter().for_each(acknowledge);
        let refused = OwnedMessage::new(
            None,
            None,
            "out".into(),
            Timestamp::NotAvailable,
            0,
            -1,
            None,
        );
        if let Some(acknowledger) = acknowledgers.next() {
            let error = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
            assert!(acknowledger.send(Err((error, refused))).is_ok());
        }
        match deliveries.settle("out").await {
            Err(QueryError::Produce { topic, message }) => {
                assert_eq!(topic, "out");
                assert!(message.contains("too large"), "{message}");
            }
            other => panic!("expected a produce error, got {other:?}"),
        }

        let (mut deliveries, acknowledgers) = sent(1);
        drop(acknowledgers); // the producer went away
        match deliveries.settle("out").await {
            Err(QueryError::Produce { message, .. }) => {
                assert_eq!(message, "the producer was closed");
            }
            other => panic!("expected a produce error, got {other:?}"),
        }
    }
}
