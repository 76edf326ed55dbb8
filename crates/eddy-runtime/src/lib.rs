//! Runs streaming plans over Kafka.
//!
//! A running query is one Kafka consumer and one tokio task per input partition:
//!
//! ```text
//!              ┌──────────── driver task ────────────┐        ┌─ partition task (one per partition) ─┐
//!  Kafka ─recv─▶ RawBatch per partition (bounded size) ├─mpsc──▶ decode → stages → encode → produce   │
//!              │ commit acknowledged offsets          ◀─ack───┤ await delivery, then mark offsets    │
//!              └─────────────────────────────────────┘        └──────────────────────────────────────┘
//! ```
//!
//! Offsets are committed only after the output derived from them has been acknowledged by Kafka, so
//! output is at-least-once. Malformed records and rows whose expressions fail are skipped, counted and
//! written to the processing log with their topic, partition and offset; the query keeps running.
//! Every task belongs to the query's [`QueryHandle`]: stopping or dropping the handle frees them all.

mod aggregate;
mod generator;
mod join;
mod kafka;
mod print;
mod processing_log;
mod query;
mod stream_join;
mod table_changes;
mod table_view;
#[cfg(test)]
mod test_support;
mod upsert;
mod window;

pub use aggregate::{MaterializedView, RECORD_FRAMING_BYTES, RESERVED_KEY_BYTE, StateSpec};
pub use generator::{CONNECTORS, NEXMARK_EVENT_TYPES, check_datagen_columns, generator_columns};
pub use join::JoinSpec;
pub use kafka::{KafkaConnection, KafkaError, OffWorkerDrop, SharedProducer, TopicInfo};
pub use print::{PrintOptions, PrintStream, print_topic};
pub use processing_log::{ErrorKind, ProcessingLog, ProcessingLogEntry, processing_log_columns};
pub use query::{
    JoinedAggregation, OffsetReset, QueryError, QueryHandle, QueryMetrics, QueryProgress,
    QuerySpec, QueryStatus, SinkSpec, start_query,
};
pub use stream_join::{MAX_JOIN_INDEX_ENTRIES_PER_ROUND, RightStreamSpec};
pub use table_view::{PullView, RowsView, keeps_table_rows};
pub use upsert::UpsertSpec;
