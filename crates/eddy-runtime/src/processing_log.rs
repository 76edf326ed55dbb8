//! The processing log: where skipped records are reported.
//!
//! Every record a query cannot process (bad bytes, a failing expression, an output it cannot
//! serialize) becomes one JSON entry on the processing-log topic, which the engine exposes as the
//! stream `EDDY_PROCESSING_LOG`. Queries report through a bounded queue: when the log cannot keep up,
//! reporting queries wait rather than lose entries. The writer keeps up to as many entries being
//! written as the queue holds, so a burst of bad records costs a few produce round trips, not
//! one per record.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eddy_catalog::{Column, ColumnRole};
use eddy_common::types::SqlType;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// What went wrong with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorKind {
    /// The record's key or value could not be decoded in the source's format.
    DeserializationError,
    /// An expression of the query failed on the record (e.g. a bad CAST).
    ExpressionError,
    /// An output row could not be encoded in the sink's format.
    SerializationError,
    /// A record arrived after every window it belongs to had closed (its event time is older
    /// than the stream time minus the grace period): a windowed aggregation dropped it.
    LateRecord,
    /// A group's aggregation state would have grown past `state_record_max_bytes`: the batch's
    /// rows of that group were dropped and the group kept its previous state.
    StateTooLarge,
}

/// One processing-log entry; field names are the columns of `EDDY_PROCESSING_LOG`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub struct ProcessingLogEntry {
    pub query_id: String,
    pub level: &'static str,
    pub time: i64,
    pub error_type: ErrorKind,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub message: String,
    /// The offending record (lossy UTF-8, truncated to the configured length).
    pub record: Option<String>,
}

/// The value columns of the `EDDY_PROCESSING_LOG` stream, in the order of [`ProcessingLogEntry`].
pub fn processing_log_columns() -> Vec<Column> {
    let column = |name: &str, sql_type: SqlType| Column {
        name: name.to_owned(),
        sql_type,
        role: ColumnRole::Value,
    };
    vec![
        column("QUERY_ID", SqlType::String),
        column("LEVEL", SqlType::String),
        column("TIME", SqlType::BigInt),
        column("ERROR_TYPE", SqlType::String),
        column("SOURCE_TOPIC", SqlType::String),
        column("SOURCE_PARTITION", SqlType::Int),
        column("SOURCE_OFFSET", SqlType::BigInt),
        column("MESSAGE", SqlType::String),
        column("RECORD", SqlType::String),
    ]
}

/// A handle to report skipped records; cheap to clone.
#[derive(Clone)]
pub struct ProcessingLog {
    sender: mpsc::Sender<ProcessingLogEntry>,
    record_bytes: usize,
    written: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl ProcessingLog {
    /// Starts the writer. The returned handle owns the writer task; it ends when every
    /// [`ProcessingLog`] clone is dropped, once the entries it holds are written. At most
    /// `queue_records` entries wait in the queue, and as many again are being written.
    pub fn start(
        producer: FutureProducer,
        topic: String,
        queue_records: usize,
        record_bytes: usize,
    ) -> (Self, JoinHandle<()>) {
        let queue_records = queue_records.max(1);
        let (sender, receiver) = mpsc::channel::<ProcessingLogEntry>(queue_records);
        let written = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            producer,
            topic,
            most_in_flight: queue_records,
            written: Arc::clone(&written),
            failed: Arc::clone(&failed),
        };
        let task = tokio::spawn(writer.run(receiver));
        (
            Self {
                sender,
                record_bytes,
                written,
                failed,
            },
            task,
        )
    }

    /// Reports one skipped record. Waits when the log is behind.
    #[allow(clippy::too_many_arguments)]
    pub async fn report(
        &self,
        query_id: &str,
        error_type: ErrorKind,
        topic: &str,
        partition: i32,
        offset: i64,
        message: String,
        record: Option<&[u8]>,
    ) {
        warn!(query = query_id, topic, partition, offset, kind = ?error_type, "{message}");
        let record = record.map(|bytes| {
            let end = bytes.len().min(self.record_bytes);
            String::from_utf8_lossy(&bytes[..end]).into_owned()
        });
        let entry = ProcessingLogEntry {
            query_id: query_id.to_owned(),
            level: "ERROR",
            time: now_ms(),
            error_type,
            source_topic: topic.to_owned(),
            source_partition: partition,
            source_offset: offset,
            message,
            record,
        };
        if self.sender.send(entry).await.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Entries written to the topic so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Entries that could not be written.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// How long the writer waits for an entry's acknowledgement before it counts it as failed.
const ENTRY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the writer waits before it offers an entry again to a producer whose queue is full
/// while none of its own entries is in flight.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

/// The task that writes the queued entries to the processing-log topic.
struct Writer {
    producer: FutureProducer,
    topic: String,
    /// Most entries sent and not yet acknowledged.
    most_in_flight: usize,
    written: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

/// An entry's query and message, for the warning when it cannot be written.
type Sent = (String, String);

/// The acknowledgement of an entry sent.
type Acknowledgement = Pin<Box<dyn Future<Output = (Result<(), String>, Sent)> + Send>>;

impl Writer {
    async fn run(self, mut receiver: mpsc::Receiver<ProcessingLogEntry>) {
        let mut in_flight = FuturesUnordered::new();
        let mut open = true;
        while open || !in_flight.is_empty() {
            tokio::select! {
                entry = receiver.recv(), if open && in_flight.len() < self.most_in_flight => {
                    match entry {
                        Some(entry) => self.send(entry, &mut in_flight).await,
                        None => open = false,
                    }
                }
                Some(outcome) = in_flight.next(), if !in_flight.is_empty() => self.settle(outcome),
            }
        }
        debug!("processing log writer stopped");
    }

    /// Hands `entry` to the producer, its acknowledgement to `in_flight`; while the producer's
    /// queue is full, settles acknowledgements as they come back, then tries again (until the
    /// entry's timeout).
    async fn send(
        &self,
        entry: ProcessingLogEntry,
        in_flight: &mut FuturesUnordered<Acknowledgement>,
    ) {
        let payload = match serde_json::to_vec(&entry) {
            Ok(payload) => payload,
            Err(error) => {
                warn!(%error, "cannot serialize a processing-log entry");
                self.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let deadline = tokio::time::Instant::now() + ENTRY_TIMEOUT;
        loop {
            let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic)
                .payload(payload.as_slice())
                .timestamp(entry.time);
            let error = match self.producer.send_result(record) {
                Ok(delivery) => {
                    let sent = (entry.query_id, entry.message);
                    in_flight.push(Box::pin(async move {
                        let outcome = match tokio::time::timeout_at(deadline, delivery).await {
                            Ok(Ok(Ok(_))) => Ok(()),
                            Ok(Ok(Err((error, _)))) => Err(error.to_string()),
                            Ok(Err(_)) => Err("the producer went away".to_owned()),
                            Err(_) => Err("no acknowledgement in time".to_owned()),
                        };
                        (outcome, sent)
                    }));
                    return;
                }
                Err((error, _)) => error,
            };
            let queue_full = matches!(
                error,
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
            );
            if !queue_full || tokio::time::Instant::now() >= deadline {
                self.settle((Err(error.to_string()), (entry.query_id, entry.message)));
                return;
            }
            match in_flight.next().await {
                Some(outcome) => self.settle(outcome),
                None => tokio::time::sleep(QUEUE_FULL_PAUSE).await,
            }
        }
    }

    fn settle(&self, (outcome, (query_id, message)): (Result<(), String>, Sent)) {
        match outcome {
            Ok(()) => {
                self.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                warn!(%error, query = query_id, "cannot write to the processing log: {message}");
            }
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
