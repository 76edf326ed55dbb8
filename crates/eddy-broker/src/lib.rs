//! The embedded Kafka-compatible broker of Eddy.
//!
//! Without `--bootstrap-servers`, `eddy` runs [tansu](https://github.com/tansu-io/tansu) in its own
//! process, listening on `127.0.0.1`, with its data in a sqlite database under the data directory.
//! Any Kafka client can produce to it and consume from it; the engine itself talks to it through
//! rdkafka exactly as it talks to any other Kafka, so there is one code path.
//!
//! ```text
//!   rdkafka / kcat / any Kafka client
//!                 │ Kafka protocol, tcp://127.0.0.1:<port>
//!                 ▼
//!   ┌──────────── EmbeddedBroker (owns one tokio task) ───────────┐
//!   │ tansu_broker::Broker::serve ── one task per connection       │
//!   │           │                                                  │
//!   │ tansu_storage sqlite engine ── <data_dir>/tansu.db (+wal,shm)│
//!   └──────────────────────────────────────────────────────────────┘
//! ```
//!
//! ```no_run
//! # async fn demo() -> Result<(), eddy_broker::BrokerError> {
//! use eddy_broker::{EmbeddedBroker, EmbeddedBrokerConfig};
//!
//! let broker = EmbeddedBroker::start(EmbeddedBrokerConfig::new("/var/lib/eddy/broker")).await?;
//! println!("kafka listening on {}", broker.bootstrap_servers());
//! broker.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Lifecycle
//!
//! [`EmbeddedBroker::start`] returns once the broker accepts TCP connections. The broker runs in a
//! task owned by the [`EmbeddedBroker`]: [`EmbeddedBroker::shutdown`] stops it and waits, and
//! dropping the handle aborts it. tansu 0.6 offers no graceful stop to a library user (its
//! cancellation token is private), so stopping aborts the task; sqlite rolls back whatever
//! transaction was open, so committed data and offsets survive. tansu's sqlite engine runs one more
//! task of its own (its request loop), which is aborted when the last clone of the storage is dropped,
//! so it may outlive [`EmbeddedBroker::shutdown`] by a scheduler tick; sqlite (WAL mode) lets a new
//! broker open the same database meanwhile.
//!
//! # Client settings
//!
//! [`CLIENT_SETTINGS`] lists the librdkafka settings clients of this broker should use. The broker
//! advertises `127.0.0.1:<port>`, so no address-family setting is needed.
//!
//! # What tansu 0.6 does and does not do
//!
//! Checked by the integration tests of this crate with rdkafka (librdkafka 2.12) and kcat:
//!
//! - Works: `CreateTopics` through the admin API (any partition count, replication factor 1),
//!   metadata, produce with keys, values, headers and explicit (create-time) timestamps, fetch,
//!   `ListOffsets` (earliest and latest, so `assign` at `Offset::Beginning`/`Offset::End` works),
//!   consumer groups (join, sync, heartbeat, leave) with `subscribe`, committing offsets and
//!   resuming from them in a new consumer, the same after a restart of the broker on the same data
//!   directory; the default (`murmur2_random`/`consistent_random`) key partitioner of librdkafka
//!   spreading keys over partitions; kcat producing (`-P -K:`) and consuming (`-C -e`).
//! - Topics are **not** created automatically: producing to or subscribing to an unknown topic
//!   gets `UNKNOWN_TOPIC_OR_PARTITION` until the topic is created with `CreateTopics`.
//! - Timestamps are stored as given by the producer (create time); the broker does not stamp
//!   log-append time.
//! - Transactions and compaction exist in tansu's code but are not relied on, nor tested, by Eddy
//!   (see the crate's test suite for exactly what is).
//! - There is one broker (node 111), so replication factor is always 1.

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener as StdTcpListener},
    path::{Path, PathBuf},
    time::Duration,
};

use tansu_broker::{NODE_ID, broker::Broker, coordinator::group::administrator::Controller};
use tansu_storage::StorageContainer;
use thiserror::Error;
use tokio::{
    net::TcpStream,
    task::{JoinError, JoinSet},
    time::{Instant, sleep, timeout, timeout_at},
};
use tracing::{debug, info, warn};
use url::Url;
use uuid::Uuid;

/// Default of [`EmbeddedBrokerConfig::startup_timeout_ms`]: 10 seconds.
pub const DEFAULT_STARTUP_TIMEOUT_MS: u64 = 10_000;

/// Default of [`EmbeddedBrokerConfig::bind_attempts`].
pub const DEFAULT_BIND_ATTEMPTS: u32 = 5;

/// Name of the sqlite database file inside [`EmbeddedBrokerConfig::data_dir`]. sqlite keeps
/// `-wal` and `-shm` files next to it.
pub const DATABASE_FILE_NAME: &str = "tansu.db";

/// The cluster id under which tansu keys all its rows; constant so a restart finds its data.
pub const CLUSTER_ID: &str = "eddy";

/// librdkafka settings (name, value) a client of the embedded broker should use.
///
/// - `allow.auto.create.topics=false`: tansu does not create topics on metadata requests, so a
///   consumer must not count on it; topics are created with the admin API.
/// - `topic.metadata.refresh.interval.ms=1000`: a topic created while a consumer is subscribed
///   is noticed in a second instead of librdkafka's default five minutes.
pub const CLIENT_SETTINGS: &[(&str, &str)] = &[
    ("allow.auto.create.topics", "false"),
    ("topic.metadata.refresh.interval.ms", "1000"),
];

/// How long [`EmbeddedBroker::start`] waits before trying again when the database is locked.
const DATABASE_LOCKED_RETRY_INTERVAL: Duration = Duration::from_millis(50);

/// How long [`EmbeddedBroker::shutdown`] waits for sqlite to close the database once the broker's
/// task has ended.
const DATABASE_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often [`EmbeddedBroker::shutdown`] checks whether the database is closed.
const DATABASE_CLOSE_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// How often [`EmbeddedBroker::start`] tries to connect while the broker starts.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Configuration of an [`EmbeddedBroker`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddedBrokerConfig {
    /// Directory of the broker's sqlite database ([`DATABASE_FILE_NAME`]); created if missing.
    /// Its path must be valid UTF-8 and need no escaping in a URL (no spaces, `?`, `#`,
    /// non-ASCII), because tansu takes the database path from a URL without unescaping it.
    pub data_dir: PathBuf,
    /// TCP port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// How long [`EmbeddedBroker::start`] waits for the broker to accept connections.
    /// Default [`DEFAULT_STARTUP_TIMEOUT_MS`].
    pub startup_timeout_ms: u64,
    /// With `port` 0: how many free ports are tried when another process takes the picked port
    /// before the broker binds it. Default [`DEFAULT_BIND_ATTEMPTS`].
    pub bind_attempts: u32,
}

/// Default of [`EmbeddedBrokerConfig::data_dir`], relative to the current directory: the
/// `broker` directory inside the default data directory of the `eddy` binary.
pub const DEFAULT_DATA_DIR: &str = "eddy-data/broker";

impl Default for EmbeddedBrokerConfig {
    /// Data in [`DEFAULT_DATA_DIR`], on a free port, with default limits.
    fn default() -> Self {
        Self::new(DEFAULT_DATA_DIR)
    }
}

impl EmbeddedBrokerConfig {
    /// A configuration with its data in `data_dir`, on a free port, with default limits.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            port: 0,
            startup_timeout_ms: DEFAULT_STARTUP_TIMEOUT_MS,
            bind_attempts: DEFAULT_BIND_ATTEMPTS,
        }
    }

    /// The same configuration on a given port (0 picks a free one).
    pub fn with_port(self, port: u16) -> Self {
        Self { port, ..self }
    }
}

/// Why the embedded broker could not start or stopped.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// The configured port is taken by another process.
    #[error(
        "port {port} on 127.0.0.1 is already in use; hint: stop the process using it, \
         choose another port, or use port 0 to pick a free one"
    )]
    PortInUse { port: u16 },

    /// Every free port picked was taken by another process before the broker could bind it.
    #[error("no free port on 127.0.0.1 could be bound after {attempts} attempts")]
    NoFreePort { attempts: u32 },

    /// Binding a port failed for another reason than it being in use.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// The data directory cannot be created or written to.
    #[error(
        "data directory \"{}\" is not writable: {source}; hint: choose a directory the process \
         can create files in",
        path.display()
    )]
    DataDirNotWritable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The data directory's path cannot be handed to tansu's storage.
    #[error("data directory \"{}\" is not supported: {reason}", path.display())]
    UnsupportedDataDir { path: PathBuf, reason: &'static str },

    /// The broker did not open its storage and accept TCP connections in time.
    #[error(
        "broker on {addr} did not start within {timeout_ms} ms; \
         hint: raise startup_timeout_ms"
    )]
    StartupTimeout { addr: SocketAddr, timeout_ms: u64 },

    /// The sqlite database stayed locked by another connection until the startup deadline.
    #[error(
        "database \"{}\" is locked; hint: stop the other broker or eddy using this data \
         directory, or choose another data directory",
        path.display()
    )]
    DatabaseLocked {
        path: PathBuf,
        #[source]
        source: tansu_broker::Error,
    },

    /// tansu reported an error (opening its storage, serving).
    #[error("broker failed: {0}")]
    Broker(#[source] tansu_broker::Error),

    /// The broker task panicked: a bug in tansu or here.
    #[error("broker task panicked: {message}")]
    Panicked { message: String },

    /// The broker task ended although nothing asked it to.
    #[error("broker stopped unexpectedly")]
    StoppedUnexpectedly,
}

/// A running tansu broker on 127.0.0.1; see the [crate documentation](crate).
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    database_path: PathBuf,
    /// The broker's serve task, and only it. Dropping the set aborts it.
    tasks: JoinSet<Result<(), tansu_broker::Error>>,
}

impl EmbeddedBroker {
    /// Starts a broker and returns once it accepts TCP connections.
    pub async fn start(config: EmbeddedBrokerConfig) -> Result<Self, BrokerError> {
        let database_path = prepare_data_dir(&config.data_dir).await?;
        let storage = storage_url(&database_path)?;
        let timeout_ms = config.startup_timeout_ms;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let attempts = if config.port == 0 {
            config.bind_attempts.max(1)
        } else {
            1
        };

        let mut attempt = 1;
        loop {
            let port = if config.port == 0 {
                pick_free_port()?
            } else {
                check_port_free(config.port)?;
                config.port
            };
            let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));

            let launched = match timeout_at(deadline, launch(addr, &storage)).await {
                Ok(launched) => launched,
                Err(_elapsed) => return Err(BrokerError::StartupTimeout { addr, timeout_ms }),
            };
            match launched {
                Ok(tasks) => {
                    info!(%addr, database = %database_path.display(), "embedded broker started");
                    return Ok(Self {
                        addr,
                        database_path,
                        tasks,
                    });
                }
                Err(Launch::AddrInUse) if config.port == 0 && attempt < attempts => {
                    warn!(%addr, attempt, attempts, "picked port was taken, trying another");
                    attempt += 1;
                }
                Err(Launch::AddrInUse) if config.port == 0 => {
                    return Err(BrokerError::NoFreePort { attempts });
                }
                Err(Launch::AddrInUse) => return Err(BrokerError::PortInUse { port }),
                Err(Launch::DatabaseLocked(error)) => {
                    // Most likely the storage of a broker that was just stopped or dropped in this
                    // process is still closing; that takes milliseconds. Another process using
                    // the database keeps it locked until the deadline.
                    if Instant::now() + DATABASE_LOCKED_RETRY_INTERVAL >= deadline {
                        return Err(BrokerError::DatabaseLocked {
                            path: database_path,
                            source: error,
                        });
                    }
                    debug!(%addr, ?error, "database is locked, retrying");
                    sleep(DATABASE_LOCKED_RETRY_INTERVAL).await;
                }
                Err(Launch::Failed(error)) => return Err(error),
            }
        }
    }

    /// The address clients bootstrap from: `127.0.0.1:<port>`.
    pub fn bootstrap_servers(&self) -> String {
        self.addr.to_string()
    }

    /// The address the broker listens on and advertises.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The sqlite database file of the broker.
    pub fn database_path(&self) -> &Path {
        &self.database_path
    }

    /// Resolves when the broker stops on its own, which only happens on failure, and says why.
    /// Cancel safe, so it can be raced against a shutdown signal. Once it has returned, the
    /// broker is gone and later calls return [`BrokerError::StoppedUnexpectedly`] at once.
    pub async fn failure(&mut self) -> BrokerError {
        match self.tasks.join_next().await {
            Some(outcome) => task_error(outcome),
            None => BrokerError::StoppedUnexpectedly,
        }
    }

    /// Stops the broker and waits until its task has ended. Returns the broker's error if it had
    /// already failed.
    pub async fn shutdown(mut self) -> Result<(), BrokerError> {
        self.tasks.abort_all();
        let mut result = Ok(());
        while let Some(outcome) = self.tasks.join_next().await {
            match outcome {
                Err(join) if join.is_cancelled() => {}
                Ok(Ok(())) => {}
                failed => result = Err(task_error(failed)),
            }
        }
        self.wait_until_database_closed().await;
        debug!(addr = %self.addr, "embedded broker stopped");
        result
    }

    /// Waits, for at most [`DATABASE_CLOSE_TIMEOUT`], until tansu's storage has closed the sqlite
    /// database, so that a broker started next on the same data directory finds it unlocked.
    ///
    /// Aborting the serve task does not close the database at once: the connection tasks and
    /// tansu's storage task each hold the storage and are dropped one after the other by the
    /// runtime. tansu offers no way to await that, but sqlite shows it: when the last connection
    /// to a database in WAL mode closes, sqlite checkpoints the write-ahead log into the database
    /// and deletes the `-wal` file.
    async fn wait_until_database_closed(&self) {
        let mut wal = self.database_path.clone().into_os_string();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let closed = async {
            while tokio::fs::try_exists(&wal).await.unwrap_or(false) {
                sleep(DATABASE_CLOSE_POLL_INTERVAL).await;
            }
        };
        if timeout(DATABASE_CLOSE_TIMEOUT, closed).await.is_err() {
            warn!(
                wal = %wal.display(),
                "the broker's database was not closed in time; a broker started next on this data \
                 directory may find it locked"
            );
        }
    }
}

/// Outcome of one attempt to start tansu on a port.
enum Launch {
    /// Someone else bound the port first.
    AddrInUse,
    /// sqlite reported the database busy (`SQLITE_BUSY`): another connection holds a lock.
    DatabaseLocked(tansu_broker::Error),
    Failed(BrokerError),
}

impl From<tansu_broker::Error> for Launch {
    fn from(error: tansu_broker::Error) -> Self {
        match error {
            tansu_broker::Error::Io(ref io) if io.kind() == ErrorKind::AddrInUse => {
                Launch::AddrInUse
            }
            // tansu opens sqlite without a busy timeout, so a lock held by another connection
            // fails at once. The libsql error sits inside a type-erased deadpool error, so it is
            // recognised by its rendering: `SqliteFailure(5, "database is locked")`.
            error if format!("{error:?}").contains("database is locked") => {
                Launch::DatabaseLocked(error)
            }
            error => Launch::Failed(BrokerError::Broker(error)),
        }
    }
}

/// Builds tansu on `addr`, spawns its serve task and waits until it accepts connections. The
/// caller bounds how long this takes.
async fn launch(
    addr: SocketAddr,
    storage: &Url,
) -> Result<JoinSet<Result<(), tansu_broker::Error>>, Launch> {
    let listener = Url::parse(&format!("tcp://{addr}"))
        .map_err(|error| Launch::Failed(BrokerError::Broker(error.into())))?;

    // `builder` is an associated function of the generic `Broker`; the parameters are what
    // `build` returns.
    let mut broker = Broker::<Controller<StorageContainer>, StorageContainer>::builder()
        .node_id(NODE_ID)
        .cluster_id(CLUSTER_ID)
        .incarnation_id(Uuid::new_v4())
        .advertised_listener(listener.clone())
        .storage(storage.clone())
        .listener(listener)
        .silent(true)
        .build()
        .await?;

    let mut tasks = JoinSet::new();
    let started = Instant::now();
    tasks.spawn(async move { broker.serve(started).await });

    loop {
        tokio::select! {
            Some(outcome) = tasks.join_next() => return Err(launch_error(outcome)),
            connected = TcpStream::connect(addr) => {
                if connected.is_ok() {
                    break;
                }
                sleep(READY_POLL_INTERVAL).await;
            }
        }
    }

    // A connection was accepted, but by whom? If another process took the port in the moment
    // between our check and tansu's bind, tansu's bind has failed by now or fails very soon.
    sleep(READY_POLL_INTERVAL).await;
    if let Some(outcome) = tasks.try_join_next() {
        return Err(launch_error(outcome));
    }
    Ok(tasks)
}

/// Classifies how the serve task ended during startup.
fn launch_error(outcome: Result<Result<(), tansu_broker::Error>, JoinError>) -> Launch {
    match outcome {
        Ok(Err(error)) => error.into(),
        other => Launch::Failed(task_error(other)),
    }
}

/// The error to report for a serve task that has ended.
fn task_error(outcome: Result<Result<(), tansu_broker::Error>, JoinError>) -> BrokerError {
    match outcome {
        Ok(Ok(())) => BrokerError::StoppedUnexpectedly,
        Ok(Err(error)) => BrokerError::Broker(error),
        Err(join) if join.is_panic() => {
            let panic = join.into_panic();
            let message = panic
                .downcast_ref::<&str>()
                .map(|message| (*message).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string panic payload".to_owned());
            BrokerError::Panicked { message }
        }
        Err(_cancelled) => BrokerError::StoppedUnexpectedly,
    }
}

/// Creates the data directory, checks that files can be created in it and that the database
/// file is writable, and returns the database file's absolute path.
async fn prepare_data_dir(data_dir: &Path) -> Result<PathBuf, BrokerError> {
    let not_writable = |source| BrokerError::DataDirNotWritable {
        path: data_dir.to_owned(),
        source,
    };
    tokio::fs::create_dir_all(data_dir)
        .await
        .map_err(not_writable)?;
    let dir = tokio::fs::canonicalize(data_dir)
        .await
        .map_err(not_writable)?;

    // sqlite in WAL mode creates `-wal` and `-shm` files next to the database.
    let probe = dir.join(format!(".eddy-write-check-{}", Uuid::new_v4()));
    tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .await
        .map_err(not_writable)?;
    tokio::fs::remove_file(&probe)
        .await
        .map_err(not_writable)?;

    // An empty file is a valid empty sqlite database.
    let database_path = dir.join(DATABASE_FILE_NAME);
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&database_path)
        .await
        .map_err(not_writable)?;
    Ok(database_path)
}

/// The `sqlite:` URL under which tansu opens `database_path` (absolute).
///
/// tansu's sqlite engine pushes the URL's host and path, minus one leading `/`, onto the current
/// directory. `sqlite:////abs/tansu.db` has no host and the path `//abs/tansu.db`; stripped of one
/// `/` it is absolute, and pushing an absolute path replaces the current directory, so the
/// database lands at `/abs/tansu.db` whatever the current directory is.
fn storage_url(database_path: &Path) -> Result<Url, BrokerError> {
    let unsupported = |reason| BrokerError::UnsupportedDataDir {
        path: database_path
            .parent()
            .unwrap_or(database_path)
            .to_path_buf(),
        reason,
    };
    let path = database_path
        .to_str()
        .ok_or_else(|| unsupported("its path is not valid UTF-8"))?;
    if !path.starts_with('/') {
        return Err(unsupported("its path is not an absolute Unix path"));
    }
    let url = Url::parse(&format!("sqlite:///{path}"))
        .map_err(|_| unsupported("its path does not form a valid URL"))?;
    if url.path() != format!("/{path}") || url.query().is_some() || url.fragment().is_some() {
        return Err(unsupported(
            "its path has characters a URL escapes (such as space, ?, # or non-ASCII), \
             which tansu's storage does not unescape",
        ));
    }
    Ok(url)
}

/// Asks the OS for a free port on 127.0.0.1 and releases it for tansu to bind.
fn pick_free_port() -> Result<u16, BrokerError> {
    let any = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
    StdTcpListener::bind(any)
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|source| BrokerError::Bind { addr: any, source })
}

/// Fails with [`BrokerError::PortInUse`] if `port` cannot be bound on 127.0.0.1.
fn check_port_free(port: u16) -> Result<(), BrokerError> {
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    match StdTcpListener::bind(addr) {
        Ok(_listener) => Ok(()),
        Err(error) if error.kind() == ErrorKind::AddrInUse => {
            Err(BrokerError::PortInUse { port })
        }
        Err(source) => Err(BrokerError::Bind { addr, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_url_keeps_an_absolute_path() -> Result<(), BrokerError> {
        let url = storage_url(Path::new("/var/lib/eddy/tansu.db"))?;
        assert_eq!(url.as_str(), "sqlite:////var/lib/eddy/tansu.db");
        assert_eq!(url.path(), "//var/lib/eddy/tansu.db");
        assert_eq!(url.domain(), None);
        Ok(())
    }

    #[test]
    fn storage_url_rejects_paths_a_url_would_escape() {
        for path in ["/tmp/a b/tansu.db", "/tmp/a?b/tansu.db", "/tmp/a#b/tansu.db", "/tmp/ä/tansu.db"] {
            assert!(
                matches!(
                    storage_url(Path::new(path)),
                    Err(BrokerError::UnsupportedDataDir { .. })
                ),
                "{path} should be rejected"
            );
        }
    }
}
