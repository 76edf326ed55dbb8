//! Executes Eddy statements.
//!
//! The engine owns the catalog (rebuilt from the command topic at start), the persistent queries
//! running on this server, and the planner. Front ends (REPL, REST server, `eddy test`) hand it SQL
//! text with a [`Session`] and get [`StatementResult`]s back.
//!
//! ```text
//!  SQL ──eddy-sql──▶ Statement ──┬─ DDL ──▶ Command ──▶ command topic ──▶ Catalog
//!                                ├─ CSAS / INSERT INTO ──▶ plan ──▶ persistent query (Kafka → Kafka)
//!                                ├─ SELECT ... EMIT CHANGES ──▶ plan ──▶ push query (Kafka → client)
//!                                └─ SHOW / DESCRIBE / EXPLAIN / PRINT / SET / INSERT VALUES
//! ```

mod ddl;
mod engine;
mod error;
mod execute;
mod layout;
mod materialize;
mod offline;
mod pull;
mod queries;
mod restart;
mod result;
mod transient;

use std::collections::BTreeMap;

/// The Arrow of the engine's results (DataFusion's), for callers that read `StatementResult::Rows`.
pub use datafusion::arrow;
pub use eddy_format::RawBatch;
pub use engine::{Engine, PROCESSING_LOG_STREAM};
pub use error::EngineError;
pub use offline::OfflineQuery;
pub use queries::RowDelivery;
pub use result::{
    PrintResult, PushQuery, QueryMetricsSnapshot, QuerySummary, SourceDescription, SourceSummary,
    StateStatistics, StatementResult, TopicSummary,
};

/// Per-client state: properties set with `SET`.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// Property name (as written, e.g. `auto.offset.reset`) → value.
    pub properties: BTreeMap<String, String>,
}

impl Session {
    pub fn new() -> Self {
        Self::default()
    }

    /// `auto.offset.reset` of this session: `earliest` or `latest` (the default).
    pub fn offset_reset(&self) -> eddy_runtime::OffsetReset {
        self.properties
            .get("auto.offset.reset")
            .and_then(|v| eddy_runtime::OffsetReset::parse(v))
            .unwrap_or(eddy_runtime::OffsetReset::Latest)
    }
}
