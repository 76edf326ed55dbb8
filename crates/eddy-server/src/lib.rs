//! Eddy's REST API, compatible with ksqlDB's, so that existing ksqlDB clients work unmodified.
//!
//! ```text
//!  POST /ksql   {"ksql": "CREATE ...; SHOW STREAMS;", "streamsProperties": {...}}
//!       └─ eddy-sql splits and parses ─▶ Engine::execute_statement per statement
//!            ─▶ [ {"@type":"currentStatus",...}, {"@type":"streams",...} ]   (one entity each)
//!  POST /query  {"ksql": "SELECT ...;", "streamsProperties": {...}}
//!       └─ pull query ─▶ [{"header":...},\n{"row":...},\n{"row":...}]            (then closes)
//!       └─ push query ─▶ [{"header":...},\n{"row":...},\n ... {"finalMessage":"Limit Reached"}]\n
//!                         rows stream as they arrive (chunked); a newline every keepalive
//!                         interval while idle; the query stops when the client goes away
//!  POST /query-stream {"sql": "SELECT ...;", "properties": {...}}   (HTTP/2 or HTTP/1.1)
//!       └─ {"queryId":..,"columnNames":[..],"columnTypes":[..]}\n["a",1]\n ...  (delimited)
//!  POST /close-query {"queryId": ...}: ends a /query-stream push query
//!  POST /inserts-stream {"target":"S"}\n{row}\n{row}...  ─▶ {"status":"ok","seq":0}\n ...
//!  GET  /info, GET /healthcheck, GET /clusterStatus, GET /metrics (Prometheus text)
//! ```
//!
//! [`serve_tls`] serves the same over HTTPS (rustls, HTTP/2 by ALPN) from a PEM certificate
//! chain and key ([`TlsIdentity`]); [`serve`] is plain HTTP.
//!
//! With [`ServerConfig::basic_auth`] set, every request needs those credentials (HTTP basic
//! authentication, as ksqlDB's `authentication.method=BASIC`); others get 401. A headless
//! server ([`ServerConfig::headless`]) refuses statements and queries over REST.
//!
//! Field names, `@type` tags, error codes and the `/query` framing are ksqlDB's. Requests are JSON
//! whatever their `Content-Type` (as ksqlDB, which takes curl's default form type too); unknown
//! fields are ignored. Responses are `application/vnd.ksql.v1+json`, or `application/json` when
//! the `Accept` header asks for that and not for the ksqlDB type. Bodies larger than
//! [`ServerConfig::max_request_bytes`] are refused with 413.
//!
//! `SET` in a request (and `streamsProperties`) lasts for that request only, as in ksqlDB.
//! [`app`] builds the router over any [`Backend`] (the engine, or a fake in tests); [`serve`] runs
//! it on a listener until a shutdown signal, ending open push-query responses first.

mod auth;
mod backend;
mod entity;
mod error;
mod info;
mod inserts;
mod ksql;
mod query;
mod request;
mod rows;
mod stream;
mod tls;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use eddy_common::config::ConfigError;
use tokio_util::sync::CancellationToken;

pub use backend::{Backend, EngineBackend};
pub use error::{ApiError, ServerError};
pub use tls::{
    DEFAULT_MAX_PENDING_TLS_HANDSHAKES, DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS, MAX_PEM_FILE_BYTES,
    TlsIdentity, TlsListener, TlsOptions,
};

/// Default of [`ServerConfig::max_request_bytes`]: 1 MiB, ample for any script of statements.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Default of [`ServerConfig::keepalive_interval_ms`] (ksqlDB's disconnect check is also 1 s).
pub const DEFAULT_KEEPALIVE_INTERVAL_MS: u64 = 1_000;

/// Default of [`ServerConfig::max_push_queries`]: ksqlDB's `ksql.max.push.queries` default.
pub const DEFAULT_MAX_PUSH_QUERIES: usize = 100;

/// Default of [`ServerConfig::inserts_stream_max_in_flight_rows`].
pub const DEFAULT_INSERTS_STREAM_MAX_IN_FLIGHT_ROWS: usize = 1_000;

/// Default of [`ServerConfig::kafka_check_timeout_ms`].
pub const DEFAULT_KAFKA_CHECK_TIMEOUT_MS: u64 = 5_000;

/// Limits of the REST server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest request body accepted, in bytes; larger ones get 413 and a `generic_error`.
    /// Default [`DEFAULT_MAX_REQUEST_BYTES`].
    pub max_request_bytes: usize,
    /// While a push query has no row to send, a newline is written this often, so that a client
    /// that went away is noticed (the write fails) and its query stopped. Default
    /// [`DEFAULT_KEEPALIVE_INTERVAL_MS`].
    pub keepalive_interval_ms: u64,
    /// Most push queries and `PRINT`s streaming to clients at once (over `/query` and
    /// `/query-stream` together); one more is refused with 400 until one ends. Default
    /// [`DEFAULT_MAX_PUSH_QUERIES`].
    pub max_push_queries: usize,
    /// Longest wait for Kafka in `/healthcheck` and `/info`. Default
    /// [`DEFAULT_KAFKA_CHECK_TIMEOUT_MS`].
    pub kafka_check_timeout_ms: u64,
    /// `host:port` clients reach this server at: its key in `/clusterStatus`. Default none
    /// (the request's `Host` header, else `localhost:8088`).
    pub advertised_listener: Option<String>,
    /// When set, every request must carry these credentials (HTTP basic authentication);
    /// others get 401. Default none: no authentication.
    pub basic_auth: Option<BasicAuth>,
    /// Headless mode (`eddy server --queries-file`): the server runs the statements of its
    /// file and takes none over REST; `/ksql`, `/query`, `/query-stream`, `/close-query` and
    /// `/inserts-stream` answer 400. Default false.
    pub headless: bool,
    /// Rows of one `/inserts-stream` request sent to Kafka and not yet acknowledged; when this
    /// many wait, the next row is read once the oldest is acknowledged. Default
    /// [`DEFAULT_INSERTS_STREAM_MAX_IN_FLIGHT_ROWS`].
    pub inserts_stream_max_in_flight_rows: usize,
    /// Over HTTPS, the longest a connection's TLS handshake may take; `eddy server` copies it
    /// into [`TlsOptions::handshake_timeout_ms`]. Default [`DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS`].
    pub tls_handshake_timeout_ms: u64,
    /// Over HTTPS, the most TLS handshakes in progress at once; `eddy server` copies it into
    /// [`TlsOptions::max_pending_handshakes`]. Default [`DEFAULT_MAX_PENDING_TLS_HANDSHAKES`].
    pub max_pending_tls_handshakes: usize,
}

/// The one user and password of HTTP basic authentication.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub user: String,
    pub password: String,
}

impl BasicAuth {
    /// `user:password` (the password may hold colons).
    pub fn parse(credentials: &str) -> Option<BasicAuth> {
        let (user, password) = credentials.split_once(':')?;
        (!user.is_empty() && !password.is_empty()).then(|| BasicAuth {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }
}

impl std::fmt::Debug for BasicAuth {
    /// Never prints the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            keepalive_interval_ms: DEFAULT_KEEPALIVE_INTERVAL_MS,
            max_push_queries: DEFAULT_MAX_PUSH_QUERIES,
            kafka_check_timeout_ms: DEFAULT_KAFKA_CHECK_TIMEOUT_MS,
            advertised_listener: None,
            basic_auth: None,
            headless: false,
            inserts_stream_max_in_flight_rows: DEFAULT_INSERTS_STREAM_MAX_IN_FLIGHT_ROWS,
            tls_handshake_timeout_ms: DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS,
            max_pending_tls_handshakes: DEFAULT_MAX_PENDING_TLS_HANDSHAKES,
        }
    }
}

/// Prefix of the server's settings (`eddy.server.max_request_bytes`, ...), which `eddy server
/// --set` takes beside the engine's and `SHOW PROPERTIES` over REST lists.
pub const SERVER_SETTING_PREFIX: &str = "eddy.server.";

impl ServerConfig {
    /// Whether `name` names a server setting (`eddy.server.<limit>`, the `eddy.` optional).
    pub fn is_server_setting(name: &str) -> bool {
        name.strip_prefix("eddy.")
            .unwrap_or(name)
            .starts_with("server.")
    }

    /// The server's limits as settings (name, value), in the form [`Self::set`] takes.
    pub fn describe(&self) -> Vec<(String, String)> {
        [
            ("max_request_bytes", self.max_request_bytes.to_string()),
            (
                "keepalive_interval_ms",
                self.keepalive_interval_ms.to_string(),
            ),
            ("max_push_queries", self.max_push_queries.to_string()),
            (
                "kafka_check_timeout_ms",
                self.kafka_check_timeout_ms.to_string(),
            ),
            (
                "inserts_stream_max_in_flight_rows",
                self.inserts_stream_max_in_flight_rows.to_string(),
            ),
            (
                "tls_handshake_timeout_ms",
                self.tls_handshake_timeout_ms.to_string(),
            ),
            (
                "max_pending_tls_handshakes",
                self.max_pending_tls_handshakes.to_string(),
            ),
        ]
        .into_iter()
        .map(|(name, value)| (format!("{SERVER_SETTING_PREFIX}{name}"), value))
        .collect()
    }

    /// Sets the limit `name` (as [`Self::describe`] names it, `eddy.` prefix optional) from its
    /// text form. Fails on an unknown name and on anything but a whole number above 0: each of
    /// these at 0 would refuse every request of its kind.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
        let key = name.strip_prefix("eddy.").unwrap_or(name);
        let Some(limit) = key.strip_prefix("server.") else {
            return Err(ConfigError::UnknownSetting {
                name: name.to_owned(),
            });
        };
        let positive = value
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ConfigError::InvalidValue {
                name: format!("{SERVER_SETTING_PREFIX}{limit}"),
                value: value.to_owned(),
                expected: "a whole number above 0",
            });
        let size = |n: u64| {
            usize::try_from(n).map_err(|_| ConfigError::InvalidValue {
                name: format!("{SERVER_SETTING_PREFIX}{limit}"),
                value: value.to_owned(),
                expected: "a smaller whole number",
            })
        };
        match limit {
            "max_request_bytes" => self.max_request_bytes = size(positive?)?,
            "keepalive_interval_ms" => self.keepalive_interval_ms = positive?,
            "max_push_queries" => self.max_push_queries = size(positive?)?,
            "kafka_check_timeout_ms" => self.kafka_check_timeout_ms = positive?,
            "inserts_stream_max_in_flight_rows" => {
                self.inserts_stream_max_in_flight_rows = size(positive?)?
            }
            "tls_handshake_timeout_ms" => self.tls_handshake_timeout_ms = positive?,
            "max_pending_tls_handshakes" => self.max_pending_tls_handshakes = size(positive?)?,
            _ => {
                return Err(ConfigError::UnknownSetting {
                    name: format!("{SERVER_SETTING_PREFIX}{limit}"),
                });
            }
        }
        Ok(())
    }
}

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<StateInner>,
}

struct StateInner {
    backend: Arc<dyn Backend>,
    config: ServerConfig,
    /// Cancelled when the server shuts down: open push-query responses end then.
    shutdown: CancellationToken,
    /// Numbers the ids of pull queries, which the engine does not name.
    pull_queries: AtomicU64,
    push_queries: stream::PushQueries,
    /// One permit per push query or `PRINT` that may stream at once.
    push_query_slots: Arc<tokio::sync::Semaphore>,
}

/// A push query's place among the [`ServerConfig::max_push_queries`]; freed when dropped.
pub(crate) struct PushQuerySlot(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl PushQuerySlot {
    /// `stream`, holding the slot until the stream is dropped (its response ended or its client
    /// went away).
    pub(crate) fn held_by<S: futures::Stream + Send>(
        self,
        stream: S,
    ) -> impl futures::Stream<Item = S::Item> + Send {
        use futures::StreamExt;
        stream.map(move |item| {
            let _held = &self;
            item
        })
    }
}

impl AppState {
    pub fn new(backend: Arc<dyn Backend>, config: ServerConfig) -> Self {
        let push_query_slots =
            Arc::new(tokio::sync::Semaphore::new(config.max_push_queries.max(1)));
        Self {
            inner: Arc::new(StateInner {
                backend,
                config,
                shutdown: CancellationToken::new(),
                pull_queries: AtomicU64::new(0),
                push_queries: stream::PushQueries::default(),
                push_query_slots,
            }),
        }
    }

    /// The state of a server over `engine`.
    pub fn for_engine(engine: eddy_engine::Engine, config: ServerConfig) -> Self {
        Self::new(Arc::new(EngineBackend::new(engine)), config)
    }

    pub(crate) fn backend(&self) -> &dyn Backend {
        self.inner.backend.as_ref()
    }

    pub(crate) fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    pub(crate) fn keepalive(&self) -> Duration {
        Duration::from_millis(self.inner.config.keepalive_interval_ms.max(1))
    }

    /// A new id for a pull query's response (`query_<epoch ms>_<n>`).
    pub(crate) fn new_pull_query_id(&self) -> String {
        let number = self
            .inner
            .pull_queries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!(
            "query_{}_{number}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
        )
    }

    /// A slot for one more streaming query, or why there is none (ksqlDB's message).
    pub(crate) fn push_query_slot(&self) -> Result<PushQuerySlot, String> {
        let limit = self.inner.config.max_push_queries.max(1);
        self.inner
            .push_query_slots
            .clone()
            .try_acquire_owned()
            .map(PushQuerySlot)
            .map_err(|_| {
                format!(
                    "Not executing statement(s) as it would cause the number of active, push \
                     queries to exceed the configured limit. Terminate existing PUSH queries, or \
                     increase the server's max_push_queries (eddy server --max-push-queries). \
                     Current push query count: {limit}. Configured limit: {limit}."
                )
            })
    }

    /// The push queries streaming to clients, by id, each with the token that ends it.
    pub(crate) fn push_queries(&self) -> &stream::PushQueries {
        &self.inner.push_queries
    }

    /// Ends every open push-query response (each writes its final message); new requests are
    /// still served.
    pub fn end_streams(&self) {
        self.inner.shutdown.cancel();
    }
}

/// The REST API's routes over `state`.
pub fn app(state: AppState) -> Router {
    let limit = state.config().max_request_bytes;
    let statements = Router::new()
        .route("/ksql", post(ksql::handle))
        .route("/query", post(query::handle))
        .route("/query-stream", post(stream::handle))
        .route("/close-query", post(stream::close))
        .route("/inserts-stream", post(inserts::handle))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::refuse_when_headless,
        ));
    Router::new()
        .merge(statements)
        .route("/info", get(info::info))
        .route("/healthcheck", get(info::healthcheck))
        .route("/clusterStatus", get(info::cluster_status))
        .route("/metrics", get(info::metrics))
        .fallback(info::not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_credentials,
        ))
        .with_state(state)
}

/// Serves [`app`] on `listener` until `shutdown` completes, then ends open push-query responses
/// and waits for in-flight requests to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    serve_on(listener, state, shutdown).await
}

/// [`serve`] over HTTPS: connections on `listener` are TLS with `identity`'s certificate.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    identity: &TlsIdentity,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let listener = identity.listener(listener).map_err(ServerError::Serve)?;
    serve_on(listener, state, shutdown).await
}

async fn serve_on<L>(
    listener: L,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let router = app(state.clone());
    let signal = async move {
        shutdown.await;
        state.end_streams();
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(signal)
        .await
        .map_err(ServerError::Serve)
}

#[cfg(test)]
mod tests;
