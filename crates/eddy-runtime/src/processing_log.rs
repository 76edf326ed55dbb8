//! The processing log: where skipped records are reported.
//!
//! Every record a query cannot process (bad bytes, a failing expression, an output it cannot
//! serialize) becomes one JSON entry on the processing-log topic, which the engine exposes as the
//! stream `EDDY_PROCESSING_LOG`. Queries report through a bounded queue: when the log cannot keep up,
//! reporting queries wait rather than lose entries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use eddy_catalog::{Column, ColumnRole};
use eddy_common::types::SqlType;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
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
    /// [`ProcessingLog`] clone is dropped.
    pub fn start(
        producer: FutureProducer,
        topic: String,
        queue_records: usize,
        record_bytes: usize,
    ) -> (Self, JoinHandle<()>) {
        let (sender, mut receiver) = mpsc::channel::<ProcessingLogEntry>(queue_records.max(1));
        let written = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (written_by_task, failed_by_task) = (Arc::clone(&written), Arc::clone(&failed));
        let task = tokio::spawn(async move {
            while let Some(entry) = receiver.recv().await {
                let payload = match serde_json::to_vec(&entry) {
                    Ok(payload) => payload,
                    Err(error) => {
                        warn!(%error, "cannot serialize a processing-log entry");
                        failed_by_task.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic)
                    .payload(payload.as_slice())
                    .timestamp(entry.time);
                match producer
                    .send(record, Timeout::After(std::time::Duration::from_secs(30)))
                    .await
                {
                    Ok(_) => {
                        written_by_task.fetch_add(1, Ordering::Relaxed);
                    }
                    Err((error, _)) => {
                        failed_by_task.fetch_add(1, Ordering::Relaxed);
                        warn!(%error, query = entry.query_id, "cannot write to the processing log: {}", entry.message);
                    }
                }
            }
            debug!("processing log writer stopped");
        });
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

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
