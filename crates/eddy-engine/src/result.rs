//! What executing a statement returns.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use eddy_catalog::{Column, SourceKind};
use eddy_runtime::PrintStream;
use tokio::sync::mpsc;

/// The result of one statement.
pub enum StatementResult {
    /// A statement that changed something or set something (`CREATE`, `DROP`, `INSERT`, `SET`...).
    Success {
        message: String,
        /// The persistent query the statement started, if any.
        query_id: Option<String>,
    },
    /// `SHOW STREAMS` / `SHOW TABLES` (and `DESCRIBE STREAMS`).
    Sources(Vec<SourceSummary>),
    /// `SHOW TOPICS`.
    Topics(Vec<TopicSummary>),
    /// `SHOW QUERIES`.
    Queries(Vec<QuerySummary>),
    /// `SHOW PROPERTIES`: (name, scope, value).
    Properties(Vec<(String, String, String)>),
    /// `DESCRIBE source`.
    Description(Box<SourceDescription>),
    /// `EXPLAIN`.
    Explain { text: String },
    /// A finite table of rows (pull queries, `SHOW FUNCTIONS`...).
    Rows {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    },
    /// A push query: rows keep arriving until its `LIMIT`, or until the result is dropped.
    Push(PushQuery),
    /// `PRINT topic`: text lines until its `LIMIT`, or until the result is dropped.
    Print(PrintResult),
}

impl std::fmt::Debug for StatementResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatementResult::Success { message, query_id } => f
                .debug_struct("Success")
                .field("message", message)
                .field("query_id", query_id)
                .finish(),
            StatementResult::Sources(s) => f.debug_tuple("Sources").field(s).finish(),
            StatementResult::Topics(t) => f.debug_tuple("Topics").field(t).finish(),
            StatementResult::Queries(q) => f.debug_tuple("Queries").field(q).finish(),
            StatementResult::Properties(p) => f.debug_tuple("Properties").field(p).finish(),
            StatementResult::Description(d) => f.debug_tuple("Description").field(d).finish(),
            StatementResult::Explain { text } => {
                f.debug_struct("Explain").field("text", text).finish()
            }
            StatementResult::Rows { batches, .. } => f
                .debug_struct("Rows")
                .field("batches", &batches.len())
                .finish(),
            StatementResult::Push(p) => f
                .debug_struct("Push")
                .field("query_id", &p.query_id)
                .finish(),
            StatementResult::Print(_) => f.debug_struct("Print").finish(),
        }
    }
}

/// One line of `SHOW STREAMS` / `SHOW TABLES`.
#[derive(Debug, Clone)]
pub struct SourceSummary {
    pub name: String,
    pub kind: SourceKind,
    pub topic: String,
    pub key_format: String,
    pub value_format: String,
    /// The window of a windowed table.
    pub window: Option<eddy_common::window::WindowSpec>,
}

/// One line of `SHOW TOPICS`.
#[derive(Debug, Clone)]
pub struct TopicSummary {
    pub name: String,
    pub partitions: i32,
    pub replicas: i32,
}

/// One line of `SHOW QUERIES`.
#[derive(Debug, Clone)]
pub struct QuerySummary {
    pub id: String,
    /// `RUNNING`, `ERROR: ...`, `STOPPED` or `NOT RUNNING` (not on this server).
    pub status: String,
    pub sink: String,
    pub sources: Vec<String>,
    pub sql: String,
}

/// `DESCRIBE [EXTENDED]`.
#[derive(Debug, Clone)]
pub struct SourceDescription {
    pub name: String,
    pub kind: SourceKind,
    /// Created with `CREATE SOURCE`: nothing may write into it.
    pub read_only: bool,
    pub columns: Vec<Column>,
    pub topic: String,
    pub key_format: String,
    pub value_format: String,
    pub partitions: i32,
    pub timestamp_column: Option<String>,
    /// The window of a windowed table.
    pub window: Option<eddy_common::window::WindowSpec>,
    pub sql: String,
    pub extended: bool,
    /// Queries reading this source.
    pub read_by: Vec<String>,
    /// Queries writing this source.
    pub written_by: Vec<String>,
    /// (records in, records out, records skipped) of the writing queries, when extended.
    pub statistics: Vec<(String, u64, u64, u64)>,
    /// The local state of a materialized table, when extended.
    pub state: Option<StateStatistics>,
}

/// What `DESCRIBE EXTENDED` shows of a materialized table's local state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateStatistics {
    /// RocksDB's estimate of the keys held (groups and bookkeeping entries).
    pub approximate_keys: u64,
    /// RocksDB's estimate of the live data size.
    pub approximate_bytes: u64,
    /// Changelog records replayed into the store since the query started, and how many there were
    /// to replay.
    pub restored_records: u64,
    pub records_to_restore: u64,
}

/// What `/metrics` reports of one persistent query running on this server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryMetricsSnapshot {
    pub query_id: String,
    /// The stream or table it writes.
    pub sink: String,
    /// Whether it is running (not failed or stopped).
    pub running: bool,
    pub records_in: u64,
    /// Input batches it processed: `records_in / batches_in` is its average batch.
    pub batches_in: u64,
    pub records_out: u64,
    /// Records skipped as malformed (each in the processing log).
    pub records_skipped: u64,
    /// Records of its first input not processed yet, over all partitions; `None` when Kafka did
    /// not answer in time.
    pub lag_records: Option<i64>,
    /// Changelog records replayed into its state, and how many there were to replay.
    pub restored_records: u64,
    pub records_to_restore: u64,
    /// RocksDB's estimate of the live size of the table it materializes, if it keeps one here.
    pub state_bytes: Option<u64>,
}

/// A running push query. Rows arrive in batches through [`PushQuery::next_batch`]; dropping the
/// value stops the query and frees its consumer and tasks.
pub struct PushQuery {
    pub query_id: String,
    /// The columns the client sees.
    pub schema: SchemaRef,
    pub(crate) rows: mpsc::Receiver<RecordBatch>,
    /// Output columns shown to the client, as indices into the plan's output batches.
    pub(crate) visible: Vec<usize>,
    pub(crate) limit: Option<u64>,
    pub(crate) emitted: u64,
    /// Its queries, state and internal topics; cleaned up when dropped.
    pub(crate) resources: Option<Box<crate::transient::TransientResources>>,
}

impl PushQuery {
    /// The next batch of rows, or `None` when the query has reached its `LIMIT` or stopped.
    pub async fn next_batch(&mut self) -> Option<RecordBatch> {
        if self.limit.is_some_and(|limit| self.emitted >= limit) {
            self.stop();
            return None;
        }
        let batch = self.rows.recv().await?;
        let mut batch = match batch.project(&self.visible) {
            Ok(batch) => batch,
            Err(_) => return None,
        };
        batch =
            RecordBatch::try_new(self.schema.clone(), batch.columns().to_vec()).unwrap_or(batch);
        if let Some(limit) = self.limit {
            let room = (limit - self.emitted) as usize;
            if batch.num_rows() > room {
                batch = batch.slice(0, room);
            }
        }
        self.emitted += batch.num_rows() as u64;
        Some(batch)
    }

    /// The `LIMIT` of the query, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Stops the query now.
    pub fn stop(&mut self) {
        self.resources.take();
        self.rows.close();
    }
}

/// A running `PRINT`.
pub struct PrintResult {
    pub(crate) stream: PrintStream,
}

impl PrintResult {
    /// The next line, or `None` when `PRINT` reached its `LIMIT` or end.
    pub async fn next_line(&mut self) -> Option<String> {
        self.stream.lines.recv().await
    }
}
