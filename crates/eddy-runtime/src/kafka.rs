//! The one place Eddy's Kafka clients are configured and its admin operations live.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eddy_format::RawBatch;
use rdkafka::message::Message;

use eddy_common::config::BatchLimits;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use thiserror::Error;
use tracing::warn;

use crate::query::QueryError;

/// A Kafka failure, phrased for users.
#[derive(Debug, Error)]
pub enum KafkaError {
    #[error("topic \"{topic}\" does not exist")]
    UnknownTopic { topic: String },
    #[error("kafka {operation} failed: {source}")]
    Client {
        operation: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("kafka {operation} did not finish within {timeout_ms} ms")]
    Timeout { operation: String, timeout_ms: u64 },
    #[error("internal error: {0}")]
    Internal(String),
}

impl KafkaError {
    pub(crate) fn client(operation: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        KafkaError::Client {
            operation: operation.into(),
            source,
        }
    }
}

/// Partitions and name of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: i32,
    pub replicas: i32,
}

/// librdkafka's default `message.max.bytes`, the least a producer is given.
pub const LIBRDKAFKA_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// The largest `message.max.bytes` librdkafka accepts.
const LIBRDKAFKA_MESSAGE_MAX_BYTES_LIMIT: usize = 1_000_000_000;

/// How to reach Kafka: bootstrap servers plus any extra librdkafka properties (e.g. security).
#[derive(Clone)]
pub struct KafkaConnection {
    pub bootstrap_servers: String,
    /// Extra librdkafka properties applied to every client.
    pub properties: BTreeMap<String, String>,
    /// Longest wait for an admin or metadata request.
    pub request_timeout_ms: u64,
    /// Producer `linger.ms`.
    pub producer_linger_ms: u64,
    /// Producer `message.max.bytes`: the largest record (and produce request) a producer
    /// sends; librdkafka's default is 1 000 000. The engine raises it to fit its largest state
    /// record (`state_record_max_bytes`).
    pub producer_message_max_bytes: usize,
    /// Producer `enable.idempotence`: each partition's records are written once and in order,
    /// whatever the retries (without it, a retried request can land after later ones).
    pub producer_idempotence: bool,
    /// Long-lived clients for watermark and committed-offset lookups, by consumer group (`""`
    /// for none): creating a client per lookup costs about 100 ms. Shared by clones.
    offset_clients: Arc<Mutex<HashMap<String, Arc<BaseConsumer>>>>,
    /// The admin client, created on first use and shared by clones. rdkafka's admin client stops
    /// its polling thread when dropped, which waits out that thread's 100 ms poll: a client per
    /// request made every topic creation and deletion a tenth of a second slower, and blocked
    /// the async worker that dropped it as long. The cached one is dropped in place (not on a
    /// thread of its own like [`OffWorkerDrop`]), once, by [`Self::close_clients`] or the last
    /// clone: its drop waits for no broker, and a drop still under way on another thread when
    /// the process exits can crash it.
    admin_client: Arc<Mutex<Option<SharedAdminClient>>>,
}

type SharedAdminClient = Arc<AdminClient<DefaultClientContext>>;

impl std::fmt::Debug for KafkaConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConnection")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("properties", &self.properties)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("producer_linger_ms", &self.producer_linger_ms)
            .field(
                "producer_message_max_bytes",
                &self.producer_message_max_bytes,
            )
            .field("producer_idempotence", &self.producer_idempotence)
            .finish_non_exhaustive()
    }
}

/// librdkafka's `reconnect.backoff.ms` for every client: the first wait before connecting to a
/// broker again (doubled at each failure up to `reconnect.backoff.max.ms`, 10 s), instead of
/// librdkafka's 100 ms. librdkafka also spaces connections it opens for a request (such as the
/// lookup of a group's coordinator) by half of it. A new client drops its bootstrap connection as
/// soon as the metadata names the brokers; a coordinator lookup in flight on that connection
/// fails, and the next one waited out those 50 ms: about one new consumer in two, on the
/// embedded broker, took 50 ms longer to find its group (docs/benchmarks.md, "Connections
/// tried again sooner").
pub const RECONNECT_BACKOFF_MS: u64 = 10;

/// Most cached offset clients; the cache is emptied when it would grow beyond.
const MAX_OFFSET_CLIENTS: usize = 64;

impl KafkaConnection {
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            properties: BTreeMap::new(),
            request_timeout_ms: 30_000,
            producer_linger_ms: 5,
            producer_message_max_bytes: LIBRDKAFKA_MESSAGE_MAX_BYTES,
            producer_idempotence: true,
            offset_clients: Arc::default(),
            admin_client: Arc::default(),
        }
    }

    /// Closes the cached offset and admin clients (shared by every clone of this connection);
    /// later requests open new ones.
    pub fn close_clients(&self) {
        if let Ok(mut clients) = self.offset_clients.lock() {
            clients.clear();
        }
        // Taken out of the lock before it is dropped.
        let admin = self
            .admin_client
            .lock()
            .ok()
            .and_then(|mut admin| admin.take());
        drop(admin);
    }

    /// The cached offset client of `group` (`""`: no group), created on first use.
    fn offset_client(&self, group: &str) -> Result<Arc<BaseConsumer>, KafkaError> {
        let mut clients = self
            .offset_clients
            .lock()
            .map_err(|_| KafkaError::Internal("offset client cache poisoned".into()))?;
        if let Some(client) = clients.get(group) {
            return Ok(Arc::clone(client));
        }
        let mut config = self.client_config();
        if !group.is_empty() {
            config
                .set("group.id", group)
                .set("enable.auto.commit", "false");
        }
        let client: Arc<BaseConsumer> = Arc::new(
            config
                .create()
                .map_err(|e| KafkaError::client("offset client creation", e))?,
        );
        if clients.len() >= MAX_OFFSET_CLIENTS {
            clients.clear();
        }
        clients.insert(group.to_owned(), Arc::clone(&client));
        Ok(client)
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Base configuration shared by every client; [`Self::properties`] override it.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("broker.address.family", "v4")
            .set("socket.timeout.ms", self.request_timeout_ms.to_string())
            .set("reconnect.backoff.ms", RECONNECT_BACKOFF_MS.to_string())
            .set("log_level", "4");
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    /// A producer whose partitioner matches the Java client's (murmur2 of the key bytes), so records
    /// with the same key land in the same partition whether Eddy, ksqlDB or Kafka Streams wrote them.
    /// Idempotent unless `producer_idempotence` is off: a table's topic or a changelog whose
    /// records a retry reordered would hold an older row as a key's last.
    pub fn producer(&self) -> Result<FutureProducer, KafkaError> {
        let mut config = self.client_config();
        config
            .set("partitioner", "murmur2_random")
            .set("linger.ms", self.producer_linger_ms.to_string())
            .set(
                "message.max.bytes",
                self.producer_message_max_bytes
                    .clamp(
                        LIBRDKAFKA_MESSAGE_MAX_BYTES,
                        LIBRDKAFKA_MESSAGE_MAX_BYTES_LIMIT,
                    )
                    .to_string(),
            )
            .set("message.timeout.ms", self.request_timeout_ms.to_string())
            .set("compression.type", "none")
            .set("enable.idempotence", self.producer_idempotence.to_string());
        config
            .create()
            .map_err(|e| KafkaError::client("producer creation", e))
    }

    /// A consumer in `group_id`; transient readers use a group of their own and never commit.
    /// Its close (which waits for the broker) runs on tokio's blocking pool when it is dropped.
    pub fn consumer(
        &self,
        group_id: &str,
        offset_reset: &str,
    ) -> Result<OffWorkerDrop<StreamConsumer>, KafkaError> {
        let mut config = self.client_config();
        config
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", offset_reset)
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "2000");
        config.set("group.id", group_id);
        config
            .create()
            .map(OffWorkerDrop::new)
            .map_err(|e| KafkaError::client("consumer creation", e))
    }

    /// The cached admin client, created on first use.
    fn admin(&self) -> Result<SharedAdminClient, KafkaError> {
        let mut cached = self
            .admin_client
            .lock()
            .map_err(|_| KafkaError::Internal("admin client cache poisoned".into()))?;
        if let Some(admin) = cached.as_ref() {
            return Ok(Arc::clone(admin));
        }
        let admin: SharedAdminClient = Arc::new(
            self.client_config()
                .create()
                .map_err(|e| KafkaError::client("admin client creation", e))?,
        );
        *cached = Some(Arc::clone(&admin));
        Ok(admin)
    }

    fn admin_options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.timeout()))
            .operation_timeout(Some(self.timeout()))
    }

    /// Creates a topic. Returns `false` if it already existed.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replicas: i32,
        config: &[(&str, &str)],
    ) -> Result<bool, KafkaError> {
        // An existing topic is left alone without asking to create it: a broker logs a refused
        // creation as an error (the embedded one did at every start, for the command topic and
        // every query's internal topics). A topic created in between is still refused below.
        if self.topic(name).await?.is_some() {
            return Ok(false);
        }
        let admin = self.admin()?;
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replicas));
        for (key, value) in config {
            topic = topic.set(key, value);
        }
        let results = admin
            .create_topics(&[topic], &self.admin_options())
            .await
            .map_err(|e| KafkaError::client(format!("creation of topic \"{name}\""), e))?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => return Ok(false),
                Err((_, code)) => {
                    return Err(KafkaError::client(
                        format!("creation of topic \"{name}\""),
                        rdkafka::error::KafkaError::AdminOp(code),
                    ));
                }
            }
        }
        // Metadata propagates asynchronously; wait until the topic is visible (bounded).
        self.wait_for_topic(name).await?;
        Ok(true)
    }

    async fn wait_for_topic(&self, name: &str) -> Result<TopicInfo, KafkaError> {
        let deadline = tokio::time::Instant::now() + self.timeout();
        loop {
            if let Some(info) = self.topic(name).await?
                && info.partitions > 0
            {
                return Ok(info);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(KafkaError::Timeout {
                    operation: format!("creation of topic \"{name}\""),
                    timeout_ms: self.request_timeout_ms,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Deletes a topic; a topic that does not exist is not an error.
    pub async fn delete_topic(&self, name: &str) -> Result<(), KafkaError> {
        let admin = self.admin()?;
        let results = admin
            .delete_topics(&[name], &self.admin_options())
            .await
            .map_err(|e| KafkaError::client(format!("deletion of topic \"{name}\""), e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((_, code)) => {
                    return Err(KafkaError::client(
                        format!("deletion of topic \"{name}\""),
                        rdkafka::error::KafkaError::AdminOp(code),
                    ));
                }
            }
        }
        Ok(())
    }

    /// All topics visible to this client.
    pub async fn topics(&self) -> Result<Vec<TopicInfo>, KafkaError> {
        self.metadata(None).await
    }

    /// One topic, or `None` if it does not exist.
    pub async fn topic(&self, name: &str) -> Result<Option<TopicInfo>, KafkaError> {
        Ok(self
            .metadata(Some(name.to_owned()))
            .await?
            .into_iter()
            .find(|t| t.name == name && t.partitions > 0))
    }

    async fn metadata(&self, topic: Option<String>) -> Result<Vec<TopicInfo>, KafkaError> {
        let consumer = self.offset_client("")?;
        let timeout = self.timeout();
        // librdkafka's metadata call blocks; keep it off the async workers.
        tokio::task::spawn_blocking(move || -> Result<Vec<TopicInfo>, KafkaError> {
            let metadata = consumer
                .fetch_metadata(topic.as_deref(), Timeout::After(timeout))
                .map_err(|e| KafkaError::client("metadata request", e))?;
            Ok(metadata
                .topics()
                .iter()
                .filter(|t| t.error().is_none())
                .map(|t| TopicInfo {
                    name: t.name().to_owned(),
                    partitions: t.partitions().len() as i32,
                    replicas: t
                        .partitions()
                        .first()
                        .map(|p| p.replicas().len() as i32)
                        .unwrap_or(0),
                })
                .collect())
        })
        .await
        .map_err(|e| KafkaError::Internal(format!("metadata task failed: {e}")))?
    }

    /// Low and high watermarks of every partition of `topic`, indexed by partition.
    pub async fn watermarks(&self, topic: &str) -> Result<Vec<(i64, i64)>, KafkaError> {
        let info = self
            .topic(topic)
            .await?
            .ok_or_else(|| KafkaError::UnknownTopic {
                topic: topic.to_owned(),
            })?;
        self.partitions_watermarks(topic, info.partitions).await
    }

    /// Low and high watermarks of partitions `0..partitions` of `topic`: two offsets requests
    /// whatever the number of partitions (see [`Self::offsets_at`]).
    async fn partitions_watermarks(
        &self,
        topic: &str,
        partitions: i32,
    ) -> Result<Vec<(i64, i64)>, KafkaError> {
        let lows = self
            .offsets_at(topic, partitions, Offset::Beginning)
            .await?;
        let highs = self.offsets_at(topic, partitions, Offset::End).await?;
        Ok(lows.into_iter().zip(highs).collect())
    }

    /// The earliest (`Offset::Beginning`) or latest (`Offset::End`) offset of each of the
    /// partitions `0..partitions` of `topic`, in one offsets request for all of them, where a
    /// lookup per partition made one request each, one after the other.
    async fn offsets_at(
        &self,
        topic: &str,
        partitions: i32,
        start: Offset,
    ) -> Result<Vec<i64>, KafkaError> {
        let consumer = self.offset_client("")?;
        let timeout = self.timeout();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || -> Result<Vec<i64>, KafkaError> {
            let context = || format!("{start:?} offsets of \"{topic}\"");
            let mut request = TopicPartitionList::new();
            for partition in 0..partitions {
                request
                    .add_partition_offset(&topic, partition, start)
                    .map_err(|e| KafkaError::client(context(), e))?;
            }
            // A timestamp of -2 (`Beginning`) or -1 (`End`) asks for the earliest or the latest
            // offset, as Kafka's ListOffsets defines them.
            let answer = consumer
                .offsets_for_times(request, Timeout::After(timeout))
                .map_err(|e| KafkaError::client(context(), e))?;
            (0..partitions)
                .map(|partition| {
                    let element = answer.find_partition(&topic, partition).ok_or_else(|| {
                        KafkaError::Internal(format!(
                            "{}: no answer for partition {partition}",
                            context()
                        ))
                    })?;
                    element.error().map_err(|e| {
                        KafkaError::client(format!("{} partition {partition}", context()), e)
                    })?;
                    match element.offset() {
                        Offset::Offset(offset) => Ok(offset),
                        other => Err(KafkaError::Internal(format!(
                            "{} partition {partition}: the broker answered {other:?}",
                            context()
                        ))),
                    }
                })
                .collect()
        })
        .await
        .map_err(|e| KafkaError::Internal(format!("offsets task failed: {e}")))?
    }

    /// The high watermark of one partition (one offsets request, no metadata request): what a
    /// join reads its table up to before each stream batch.
    pub async fn high_watermark(&self, topic: &str, partition: i32) -> Result<i64, KafkaError> {
        Ok(self.partition_watermarks(topic, partition).await?.1)
    }

    /// The offset a reader assigned `start` begins at: the offset itself, or the partition's low
    /// (`Offset::Beginning`) or high (`Offset::End`) watermark now.
    ///
    /// Readers are assigned concrete offsets. A consumer assigned a logical one asks the broker
    /// for it only once it knows the partition's leader, and a new consumer does not know it yet:
    /// librdkafka then retries the lookup after a fixed 500 ms. That delayed every first read of
    /// a join's side by half a second, and a push query reading from the end missed the records
    /// written in that half second, as the end was looked up only then.
    pub async fn start_offset(
        &self,
        topic: &str,
        partition: i32,
        start: Offset,
    ) -> Result<i64, KafkaError> {
        match start {
            Offset::Offset(offset) => Ok(offset),
            Offset::Beginning => Ok(self.partition_watermarks(topic, partition).await?.0),
            Offset::End => Ok(self.partition_watermarks(topic, partition).await?.1),
            other => Err(unsupported_start(other)),
        }
    }

    /// An assignment of every partition of `topic` (it has `partitions`) at the offsets
    /// `start` resolves to now (see [`Self::start_offset`]).
    pub async fn assignment_from(
        &self,
        topic: &str,
        partitions: i32,
        start: Offset,
    ) -> Result<TopicPartitionList, KafkaError> {
        let offsets: Vec<i64> = match start {
            Offset::Offset(offset) => vec![offset; usize::try_from(partitions).unwrap_or(0)],
            Offset::Beginning | Offset::End => self.offsets_at(topic, partitions, start).await?,
            other => return Err(unsupported_start(other)),
        };
        let mut assignment = TopicPartitionList::new();
        for (partition, offset) in (0..partitions).zip(offsets) {
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(offset))
                .map_err(|e| KafkaError::client("assignment", e))?;
        }
        Ok(assignment)
    }

    /// Low and high watermarks of one partition (one offsets request).
    async fn partition_watermarks(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<(i64, i64), KafkaError> {
        let consumer = self.offset_client("")?;
        let timeout = self.timeout();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            consumer
                .fetch_watermarks(&topic, partition, Timeout::After(timeout))
                .map_err(|e| {
                    KafkaError::client(
                        format!("watermarks of \"{topic}\" partition {partition}"),
                        e,
                    )
                })
        })
        .await
        .map_err(|e| KafkaError::Internal(format!("watermark task failed: {e}")))?
    }

    /// The offsets `group` has committed on each of `partitions` of `topic` (`None`: nothing
    /// committed). Reads them without joining the group.
    pub async fn committed_offsets(
        &self,
        group: &str,
        topic: &str,
        partitions: i32,
    ) -> Result<Vec<Option<i64>>, KafkaError> {
        let consumer = self.offset_client(group)?;
        let timeout = self.timeout();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            committed_offsets_of(&*consumer, &topic, partitions, timeout)
        })
        .await
        .map_err(|e| KafkaError::Internal(format!("offset task failed: {e}")))?
    }

    /// Produces one record and waits for its acknowledgement; returns (partition, offset).
    pub async fn produce_one(
        &self,
        producer: &FutureProducer,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp_ms: Option<i64>,
    ) -> Result<(i32, i64), KafkaError> {
        let record = future_record(topic, partition, key, value, timestamp_ms);
        match producer.send(record, Timeout::After(self.timeout())).await {
            Ok(delivery) => Ok((delivery.partition, delivery.offset)),
            Err((error, _)) => Err(KafkaError::client(format!("produce to \"{topic}\""), error)),
        }
    }

    /// Hands one record to the producer without waiting: records sent one after the other are
    /// written in that order. The returned future resolves to its partition and offset once
    /// Kafka has it. `Ok(None)` when the producer's queue is full: nothing was sent (wait for
    /// earlier records, or use [`Self::produce_one`], which waits for room).
    pub fn send_one(
        &self,
        producer: &FutureProducer,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp_ms: Option<i64>,
    ) -> Result<Option<SentRecord>, KafkaError> {
        let record = future_record(topic, None, key, value, timestamp_ms);
        let delivery = match producer.send_result(record) {
            Ok(delivery) => delivery,
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                _,
            )) => return Ok(None),
            Err((error, _)) => {
                return Err(KafkaError::client(format!("produce to \"{topic}\""), error));
            }
        };
        let what = format!("produce to \"{topic}\"");
        Ok(Some(Box::pin(async move {
            match delivery.await {
                Ok(Ok(delivered)) => Ok((delivered.partition, delivered.offset)),
                Ok(Err((error, _))) => Err(KafkaError::client(what, error)),
                Err(_) => Err(KafkaError::Internal(format!(
                    "{what}: the producer was closed"
                ))),
            }
        })))
    }
}

/// A record handed to the producer ([`KafkaConnection::send_one`]): resolves to its partition
/// and offset once Kafka has it.
pub type SentRecord =
    std::pin::Pin<Box<dyn Future<Output = Result<(i32, i64), KafkaError>> + Send + 'static>>;

/// A record to produce; `None` parts are left out (no key, a tombstone, the partitioner's
/// choice, the producer's clock).
fn future_record<'a>(
    topic: &'a str,
    partition: Option<i32>,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    timestamp_ms: Option<i64>,
) -> FutureRecord<'a, [u8], [u8]> {
    let mut record: FutureRecord<'a, [u8], [u8]> = FutureRecord::to(topic);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(value) = value {
        record = record.payload(value);
    }
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    if let Some(timestamp_ms) = timestamp_ms {
        record = record.timestamp(timestamp_ms);
    }
    record
}

/// A librdkafka client whose drop may block (a consumer's close waits for the broker, without a
/// bound), dropped on a thread of its own instead of the async worker that lets go of it. An async
/// worker blocked on the broker can stall the broker itself when it runs on the same workers (the
/// embedded one): a terminated join that dropped its readers on both workers of a two-core
/// machine waited for the broker forever. Not tokio's blocking pool either: a runtime waits for
/// its blocking tasks when it shuts down, and with the broker already gone the close never ends
/// (a test that failed with queries running hung until its timeout). The thread ends when the
/// close does, or with the process.
pub struct OffWorkerDrop<T: Send + 'static>(Option<T>);

/// The producer shared by every query of an engine, replaced when it has failed for good.
///
/// An idempotent producer can meet a *fatal* error (the broker fenced its producer id, or lost
/// track of its sequence numbers): it then fails every send for ever. [`Self::get`] hands out a
/// new producer once the current one has, so that queries restarted after such a failure (and
/// later statements) write again. Sends already under way on the old one fail and are retried
/// by their query's restart; its clone is dropped with its last holder.
pub struct SharedProducer {
    connection: KafkaConnection,
    current: std::sync::RwLock<FutureProducer>,
}

impl SharedProducer {
    pub fn new(connection: KafkaConnection) -> Result<Self, KafkaError> {
        let current = std::sync::RwLock::new(connection.producer()?);
        Ok(Self {
            connection,
            current,
        })
    }

    /// The producer to send with: the current one, or a new one if it met a fatal error.
    pub fn get(&self) -> Result<FutureProducer, KafkaError> {
        {
            let current = self
                .current
                .read()
                .map_err(|_| KafkaError::Internal("the producer lock is poisoned".into()))?;
            if current.client().fatal_error().is_none() {
                return Ok(current.clone());
            }
        }
        let mut current = self
            .current
            .write()
            .map_err(|_| KafkaError::Internal("the producer lock is poisoned".into()))?;
        // Another caller may have replaced it meanwhile.
        if let Some((code, reason)) = current.client().fatal_error() {
            warn!(
                ?code,
                reason, "the producer failed for good (fatal error): replacing it"
            );
            *current = self.connection.producer()?;
        }
        Ok(current.clone())
    }
}

/// The offsets the group of `consumer` has committed on each of `partitions` of `topic` (`None`:
/// nothing committed), read without joining the group. Blocks for up to `timeout`.
pub(crate) fn committed_offsets_of<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<Vec<Option<i64>>, KafkaError> {
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(list, Timeout::After(timeout))
        .map_err(|e| KafkaError::client(format!("committed offsets of \"{topic}\""), e))?;
    Ok((0..partitions)
        .map(|partition| {
            committed
                .find_partition(topic, partition)
                .and_then(|element| match element.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                })
        })
        .collect())
}

/// Commits `offsets` (partition, next offset to read) of `topic` for the group of `consumer`,
/// which need not have joined it: a commit of generation -1, as the group's own tools make, which
/// Kafka accepts only while the group has no members. Blocks until the broker answers.
pub(crate) fn commit_offsets_of<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    offsets: &[(i32, i64)],
) -> Result<(), KafkaError> {
    let mut list = TopicPartitionList::new();
    for &(partition, offset) in offsets {
        list.add_partition_offset(topic, partition, Offset::Offset(offset))
            .map_err(|e| KafkaError::client("offset commit", e))?;
    }
    consumer
        .commit(&list, CommitMode::Sync)
        .map_err(|e| KafkaError::client(format!("offset commit of \"{topic}\""), e))
}

impl<T: Send + 'static> OffWorkerDrop<T> {
    pub fn new(inner: T) -> Self {
        Self(Some(inner))
    }

    /// The client, for a caller that closes it where and when it chooses.
    pub fn into_inner(mut self) -> T {
        match self.0.take() {
            Some(inner) => inner,
            // Only `drop` and this take it out, and both consume the value.
            None => unreachable!("an OffWorkerDrop is used after its drop"),
        }
    }
}

impl<T: Send + 'static> std::ops::Deref for OffWorkerDrop<T> {
    type Target = T;

    fn deref(&self) -> &T {
        match &self.0 {
            Some(inner) => inner,
            // Only `drop` takes it out.
            None => unreachable!("an OffWorkerDrop is used after its drop"),
        }
    }
}

impl<T: Send + 'static> Drop for OffWorkerDrop<T> {
    fn drop(&mut self) {
        if let Some(inner) = self.0.take() {
            let spawned = std::thread::Builder::new()
                .name("eddy-client-close".into())
                .spawn(move || drop(inner));
            if let Err(error) = spawned {
                // The closure, and the client with it, is gone with the failed spawn.
                warn!(%error, "cannot start a thread to close a Kafka client; closed in place");
            }
        }
    }
}

/// One partition of a topic read by a consumer of its own (assigned, no group membership, no
/// commits): the table sides of joins and the right side of a stream-stream join, whose next
/// offsets live in the query's state store.
pub(crate) struct PartitionReader {
    topic: String,
    partition: i32,
    consumer: OffWorkerDrop<StreamConsumer>,
    /// Next offset to read.
    next_offset: i64,
    limits: BatchLimits,
    /// How long a read waits for a record below the high watermark before asking where the
    /// consumer is (offsets without records, such as transaction markers).
    idle: Duration,
}

impl PartitionReader {
    /// Reads partition `partition` of `topic` from `start`: an offset, or the beginning (the
    /// low watermark now, see [`KafkaConnection::start_offset`]).
    pub(crate) async fn open(
        connection: &KafkaConnection,
        group_id: &str,
        topic: &str,
        partition: i32,
        start: Offset,
        limits: BatchLimits,
    ) -> Result<Self, KafkaError> {
        let next_offset = match start {
            Offset::Offset(offset) => offset,
            Offset::Beginning => connection.start_offset(topic, partition, start).await?,
            other => {
                return Err(KafkaError::Internal(format!(
                    "a partition reader starts at an offset or the beginning, not {other:?}"
                )));
            }
        };
        let consumer: StreamConsumer = connection
            .client_config()
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            // As the query's own consumer: a fetch that finds nothing new returns within a
            // batch's wait, so records written meanwhile are not held back by librdkafka's
            // default 500 ms (a table join's right-side updates, a stream join's sides).
            .set("fetch.wait.max.ms", limits.wait_ms.max(1).to_string())
            .create()
            .map_err(|e| KafkaError::client("partition reader creation", e))?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(next_offset))
            .map_err(|e| KafkaError::client("partition reader assignment", e))?;
        consumer
            .assign(&assignment)
            .map_err(|e| KafkaError::client("partition reader assignment", e))?;
        Ok(Self {
            topic: topic.to_owned(),
            partition,
            consumer: OffWorkerDrop::new(consumer),
            next_offset,
            limits,
            idle: Duration::from_millis(connection.request_timeout_ms.max(1000)),
        })
    }

    /// The next offset to read.
    pub(crate) fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// The partition's high watermark now.
    pub(crate) async fn high_watermark(
        &self,
        connection: &KafkaConnection,
    ) -> Result<i64, QueryError> {
        Ok(connection
            .high_watermark(&self.topic, self.partition)
            .await?)
    }

    /// Reads the next batch of records below `high` (up to the batch limits); `None` when the
    /// partition is read up to `high`.
    pub(crate) async fn read_batch(&mut self, high: i64) -> Result<Option<RawBatch>, QueryError> {
        if self.next_offset >= high {
            return Ok(None);
        }
        let mut raw = RawBatch::with_capacity(self.limits.records.min(1024), 64 * 1024);
        while self.next_offset < high && !self.limits.is_full(raw.len(), raw.payload_bytes()) {
            let message = match tokio::time::timeout(self.idle, self.consumer.recv()).await {
                Ok(Ok(message)) => Some(message),
                Ok(Err(error)) => {
                    return Err(
                        KafkaError::client(format!("read of \"{}\"", self.topic), error).into(),
                    );
                }
                Err(_) => None,
            };
            match message {
                Some(message) => {
                    raw.push(
                        message.key(),
                        message.payload(),
                        message.timestamp().to_millis().unwrap_or(0),
                        self.partition,
                        message.offset(),
                    );
                    self.next_offset = message.offset() + 1;
                }
                None => {
                    // Offsets without records (transaction markers) end below the watermark.
                    match self.position() {
                        Some(position) if position >= high => self.next_offset = position,
                        _ => {
                            return Err(QueryError::Internal(format!(
                                "\"{}\" partition {} stopped at offset {} of {high}",
                                self.topic, self.partition, self.next_offset
                            )));
                        }
                    }
                }
            }
        }
        Ok(if raw.is_empty() { None } else { Some(raw) })
    }

    fn position(&self) -> Option<i64> {
        self.consumer.position().ok().and_then(|list| {
            list.find_partition(&self.topic, self.partition)
                .and_then(|p| p.offset().to_raw())
        })
    }
}

/// A reader's start that is none of an offset, the beginning or the end.
fn unsupported_start(start: Offset) -> KafkaError {
    KafkaError::Internal(format!(
        "a reader starts at an offset, the beginning or the end, not {start:?}"
    ))
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;

    use super::*;

    #[test]
    fn clients_reconnect_after_the_short_backoff_unless_a_property_says_otherwise() {
        let mut connection = KafkaConnection::new("127.0.0.1:1");
        assert_eq!(
            connection.client_config().get("reconnect.backoff.ms"),
            Some(RECONNECT_BACKOFF_MS.to_string().as_str())
        );
        connection
            .properties
            .insert("reconnect.backoff.ms".into(), "250".into());
        assert_eq!(
            connection.client_config().get("reconnect.backoff.ms"),
            Some("250")
        );
    }

    #[test]
    fn clones_share_one_admin_client_until_the_clients_are_closed() {
        // Creating an admin client needs no broker.
        let connection = KafkaConnection::new("127.0.0.1:1");
        let first = connection.admin().expect("admin client");
        let from_clone = connection.clone().admin().expect("admin client");
        assert!(
            Arc::ptr_eq(&first, &from_clone),
            "every request and clone uses the same admin client"
        );
        connection.close_clients();
        let reopened = connection.admin().expect("admin client");
        assert!(
            !Arc::ptr_eq(&first, &reopened),
            "closing the clients drops the cached admin client"
        );
    }

    #[test]
    fn a_producer_that_failed_for_good_is_replaced() {
        // Creating a producer needs no broker.
        let shared = SharedProducer::new(KafkaConnection::new("127.0.0.1:1")).expect("producer");
        let first = shared.get().expect("producer");
        let again = shared.get().expect("producer");
        assert_eq!(
            first.client().native_ptr(),
            again.client().native_ptr(),
            "a healthy producer is shared"
        );
        let reason = CString::new("fenced by the test").expect("no NUL");
        // SAFETY: the client pointer is alive (`first` holds it) and the reason a valid C string.
        unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                first.client().native_ptr(),
                rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__FENCED,
                reason.as_ptr(),
            );
        }
        assert!(first.client().fatal_error().is_some());
        let replaced = shared.get().expect("a new producer");
        assert_ne!(first.client().native_ptr(), replaced.client().native_ptr());
        assert!(replaced.client().fatal_error().is_none());
        assert_eq!(
            replaced.client().native_ptr(),
            shared.get().expect("producer").client().native_ptr()
        );
    }
}
