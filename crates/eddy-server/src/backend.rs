//! What the REST API needs of the engine, as a trait so that handlers can be tested without Kafka.

use std::time::Duration;

use async_trait::async_trait;
use eddy_catalog::Catalog;
use eddy_engine::{Engine, EngineError, RowDelivery, Session, StatementResult};
use eddy_sql::ParsedStatement;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::OnceCell;

/// The engine, as the REST API uses it.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Executes one parsed statement in `session`.
    async fn execute(
        &self,
        session: &mut Session,
        statement: &ParsedStatement,
    ) -> Result<StatementResult, EngineError>;

    /// Inserts one row, a JSON object of column values, into the stream `target`
    /// (`/inserts-stream`); see [`Engine::insert_json_row`].
    async fn insert_json_row(&self, target: &str, row_json: &[u8]) -> Result<(), EngineError>;

    /// [`Backend::insert_json_row`] without waiting for Kafka: the row is sent now (rows sent
    /// one after the other are written in that order) and the future resolves once Kafka has
    /// it; `Ok(None)` when nothing was sent because the producer's queue is full. See
    /// [`Engine::send_json_row`].
    fn send_json_row(
        &self,
        target: &str,
        row_json: &[u8],
    ) -> Result<Option<RowDelivery>, EngineError>;

    /// The service id: servers with the same one share a catalog and queries.
    fn service_id(&self) -> String;

    /// A snapshot of the catalog.
    fn catalog(&self) -> Catalog;

    /// ksqlDB's state of a persistent query: `RUNNING`, `ERROR`, or `UNRESPONSIVE` when it does not
    /// run on this server.
    fn query_state(&self, id: &str) -> &'static str;

    /// Offset of the last command in the command topic (ksqlDB's command sequence number), if it
    /// can be read within `timeout`.
    async fn last_command_offset(&self, timeout: Duration) -> Option<i64>;

    /// Kafka's cluster id, if Kafka tells within `timeout`.
    async fn kafka_cluster_id(&self, timeout: Duration) -> Option<String>;

    /// Whether Kafka answers (the command topic's metadata) within `timeout`.
    async fn kafka_is_healthy(&self, timeout: Duration) -> bool;

    /// What `/metrics` reports: the persistent queries running here. None by default.
    async fn query_metrics(&self, _timeout: Duration) -> Vec<eddy_engine::QueryMetricsSnapshot> {
        Vec::new()
    }
}

/// [`Backend`] over a running [`Engine`].
pub struct EngineBackend {
    engine: Engine,
    /// Asked once: it does not change while the server runs.
    cluster_id: OnceCell<String>,
}

impl EngineBackend {
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            cluster_id: OnceCell::new(),
        }
    }
}

#[async_trait]
impl Backend for EngineBackend {
    async fn execute(
        &self,
        session: &mut Session,
        statement: &ParsedStatement,
    ) -> Result<StatementResult, EngineError> {
        self.engine.execute_statement(session, statement).await
    }

    async fn insert_json_row(&self, target: &str, row_json: &[u8]) -> Result<(), EngineError> {
        self.engine
            .insert_json_row(target, row_json)
            .await
            .map(|_| ())
    }

    fn send_json_row(
        &self,
        target: &str,
        row_json: &[u8],
    ) -> Result<Option<RowDelivery>, EngineError> {
        self.engine.send_json_row(target, row_json)
    }

    fn service_id(&self) -> String {
        self.engine.config().service_id.clone()
    }

    fn catalog(&self) -> Catalog {
        self.engine.catalog()
    }

    fn query_state(&self, id: &str) -> &'static str {
        match self.engine.query_status(id) {
            Some(eddy_runtime::QueryStatus::Running) => "RUNNING",
            Some(eddy_runtime::QueryStatus::Error(_)) => "ERROR",
            Some(eddy_runtime::QueryStatus::Stopped) | None => "UNRESPONSIVE",
        }
    }

    async fn last_command_offset(&self, timeout: Duration) -> Option<i64> {
        let topic = self.engine.config().command_topic();
        let watermarks = tokio::time::timeout(timeout, self.engine.connection().watermarks(&topic))
            .await
            .ok()?
            .ok()?;
        watermarks.first().map(|&(_, high)| high - 1)
    }

    async fn kafka_cluster_id(&self, timeout: Duration) -> Option<String> {
        let config = self.engine.connection().client_config();
        self.cluster_id
            .get_or_try_init(|| async move {
                let consumer: BaseConsumer = config.create().map_err(|_| ())?;
                tokio::task::spawn_blocking(move || consumer.client().fetch_cluster_id(timeout))
                    .await
                    .ok()
                    .flatten()
                    .ok_or(())
            })
            .await
            .ok()
            .cloned()
    }

    async fn query_metrics(&self, timeout: Duration) -> Vec<eddy_engine::QueryMetricsSnapshot> {
        self.engine.query_metrics(timeout).await
    }

    async fn kafka_is_healthy(&self, timeout: Duration) -> bool {
        let topic = self.engine.config().command_topic();
        matches!(
            tokio::time::timeout(timeout, self.engine.connection().topic(&topic)).await,
            Ok(Ok(Some(_)))
        )
    }
}
