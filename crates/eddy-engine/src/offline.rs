//! A continuous query's per-batch work without Kafka: decode → stages → encode, in memory.
//!
//! `eddy bench nexmark` times it as the engine-only rate: what Eddy's operators cost when no
//! broker sits in between. The work is the same code a partition task runs on each batch.

use std::sync::Arc;

use eddy_catalog::{Source, SourceKind};
use eddy_format::{EncodedBatch, RawBatch, RecordDecoder, RecordEncoder};
use eddy_planner::StreamingPlan;
use eddy_sql::Statement;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::layout::{sink_layout, source_layout};

/// A planned stateless query that processes raw batches in memory.
pub struct OfflineQuery {
    plan: Arc<StreamingPlan>,
    decoder: RecordDecoder,
    encoder: RecordEncoder,
    encoded: EncodedBatch,
}

impl Engine {
    /// Plans `select` (a stateless `SELECT` over a stream of the catalog) the way `CREATE STREAM
    /// ... AS SELECT` would, writing its rows with the source's formats.
    pub async fn offline_query(&self, select: &str) -> Result<OfflineQuery, EngineError> {
        let mut statements = eddy_sql::parse_statements(select)?;
        let (Some(parsed), true) = (statements.pop(), statements.is_empty()) else {
            return Err(EngineError::invalid("expected exactly one SELECT"));
        };
        let Statement::Select(select) = parsed.statement else {
            return Err(EngineError::invalid("expected a SELECT"));
        };
        let plan = self
            .inner
            .planner
            .plan_query(&select.query, &select.partition_by, &self.catalog())
            .await?;
        if plan.aggregation.is_some() {
            return Err(EngineError::invalid(
                "offline queries are stateless: GROUP BY needs a state store",
            ));
        }
        let sink = Source {
            read_only: false,
            name: "OFFLINE_SINK".into(),
            kind: SourceKind::Stream,
            columns: crate::ddl::sink_columns(SourceKind::Stream, &plan)?,
            topic: "offline".into(),
            key_format: if plan.key_columns.is_empty() {
                "NONE".into()
            } else {
                plan.source.key_format.clone()
            },
            value_format: plan.source.value_format.clone(),
            value_delimiter: plan.source.value_delimiter,
            wrap_single_value: None,
            timestamp_column: None,
            timestamp_format: None,
            partitions: 1,
            written_by: None,
            generator: None,
            window: None,
            sql: String::new(),
        };
        let decoder = RecordDecoder::new(&source_layout(&plan.source)?)
            .map_err(|e| EngineError::invalid(e.to_string()))?;
        let encoder = RecordEncoder::new(&sink_layout(&sink, &plan)?)
            .map_err(|e| EngineError::invalid(e.to_string()))?;
        Ok(OfflineQuery {
            plan: Arc::new(plan),
            decoder,
            encoder,
            encoded: EncodedBatch::new(),
        })
    }
}

impl OfflineQuery {
    /// Decodes `raw`, runs the stages and encodes the output; returns the number of output rows.
    pub fn run(&mut self, raw: &RawBatch) -> Result<usize, EngineError> {
        let decoded = self
            .decoder
            .decode(raw)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        let output = self
            .plan
            .process(decoded.batch)
            .map_err(|e| EngineError::Internal(e.strip_backtrace()))?;
        self.encoded.clear();
        self.encoder
            .encode(
                &output,
                &self.plan.key_columns,
                &self.plan.value_columns,
                &mut self.encoded,
            )
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        Ok(self.encoded.len())
    }
}
