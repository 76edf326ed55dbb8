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
//! [`EmbeddedBroker::start`] returns once the broker accepts TCP connections (tens of
//! milliseconds). The broker runs in a task owned by the [`EmbeddedBroker`]. tansu 0.6 offers no
//! graceful stop to a library user (its cancellation token is private), so stopping aborts the
//! task; sqlite rolls back whatever transaction was open, so committed records and offsets
//! survive. [`EmbeddedBroker::shutdown`] aborts the task and then waits until tansu's storage,
//! whose clones the runtime drops one task after another, has closed the database, so a broker
//! started next on the same data directory finds it unlocked. Dropping the handle aborts the task
//! without waiting; a broker started right after on the same directory may find the database
//! locked for a few milliseconds, which [`EmbeddedBroker::start`] rides out by trying again until
//! its deadline.
//!
//! # Client settings
//!
//! [`CLIENT_SETTINGS`] lists the librdkafka settings clients of this broker should use. The broker
//! advertises `127.0.0.1:<port>`, so no address-family setting is needed.
//!
//! # What tansu 0.6 does and does not do
//!
//! The integration tests of this crate check, with rdkafka (librdkafka 2.12) and kcat:
//! `CreateTopics`; produce with keys and values, in order; fetch; consumer groups with `subscribe`
//! and committed offsets, also across a restart on the same data directory; records across a
//! restart; `DeleteTopics` deleting one topic only and retention (both thanks to the workarounds
//! below); a consumer reading on after a topic it fetches is deleted (thanks to a patch of the
//! vendored tansu-storage, see `vendor/README.md`: unpatched, librdkafka crashes the process); kcat
//! producing (`-P -K:`) and consuming (`-C -e`). A one-off probe (not kept as a test) also found:
//!
//! - Works: several partitions, librdkafka's default partitioner spreading keys over them;
//!   headers; producer (create-time) timestamps, stored as given (no log-append time); null keys
//!   and values; `ListOffsets` earliest, latest and by timestamp; `DescribeConfigs` (returns only
//!   the configs given at creation, each flagged as a default); `DeleteGroups`. `CreateTopics`
//!   accepts any replication factor and stores any config, such as `cleanup.policy=compact`.
//! - Topics are **not** created automatically: producing to an unknown topic gets
//!   `UNKNOWN_TOPIC_OR_PARTITION` until it times out; create topics with `CreateTopics`.
//! - Not supported (not advertised in `ApiVersions`): `AlterConfigs`, `CreatePartitions`,
//!   `EndTxn`. So transactions do not work: `init_transactions` and transactional sends succeed,
//!   `commit_transaction` fails, and a `read_committed` consumer sees the uncommitted records.
//! - Retention and compaction run in tansu's maintenance, when the broker starts and every 10
//!   minutes after, only for topics created with an explicit `cleanup.policy`: `delete` deletes
//!   records whose timestamp is older than `retention.ms` (default 7 days; tested), `compact`
//!   keeps the last record of each key, tombstones included, and records without a key (tested;
//!   by the patched statement of vendor/README.md, twelfth patch: tansu's was quadratic and held
//!   the broker up for minutes over a large database). **Known limitation:** a
//!   compaction still reads every record of every compacted topic, values included, in the one
//!   write transaction every produce waits for: 8 s over 800 000 changelog records (1.8 GB of
//!   database) the first time, 0.9 s when nothing is left to delete.
//! - kcat (or any client) linked with librdkafka older than 2.2.0, such as Debian 12's kcat
//!   (librdkafka 2.0.2), cannot connect: librdkafka before 2.2.0 misreads tagged fields
//!   (librdkafka #4278) and tansu's `ApiVersions` v3 response carries four ("Read underflow").
//! - There is one broker (node 111).
//!
//! # Workarounds of tansu bugs
//!
//! Before serving, [`EmbeddedBroker::start`] installs three sqlite triggers and an index in
//! tansu's database (`STORAGE_FIXES` in the source):
//!
//! - Every record a fetch returns has its headers looked up by partition and offset, but tansu's
//!   `header` table has no index, so each lookup scans every header ever written, of every topic:
//!   once clients write headers (quixstreams' changelogs, Kafka Streams, tracing headers), fetches
//!   grow quadratic and the broker stops answering within minutes. The index makes each lookup a
//!   search.
//! - `DeleteTopics` of one topic deletes **every** topic (its final `delete from topic` matches the
//!   whole cluster). The trigger keeps the topics that still have partitions.
//! - `retention.ms=-1` (keep forever) with `cleanup.policy=delete` deletes **all** records of the
//!   topic at each maintenance run (`now - timestamp > -1`). The trigger keeps the records of
//!   topics with a negative retention; a side effect is that `DeleteRecords` on such a topic
//!   deletes nothing.
//! - A consumer group whose leader died (`kill -9`, no `LeaveGroup`) while another member was
//!   joining stays with **no partitions assigned** for good. The new member joins as a follower of
//!   the dead leader; when the leader's session expires, tansu drops it just before handling the
//!   follower's `SyncGroup`, then lets that follower complete the generation with its empty list
//!   of assignments, so every member is assigned nothing and, heartbeats being fine, no rebalance
//!   ever follows. The trigger turns such a group (formed, with no assignment at all, which a
//!   leader never sends) back into a forming one of the next generation without a leader: the
//!   members' next heartbeat gets `REBALANCE_IN_PROGRESS`, they join again, one of them leads and
//!   assigns the partitions, a couple of seconds after the dead leader's session expired.

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

/// How long [`EmbeddedBroker::shutdown`] lets the write-ahead log stay before it opens a probe
/// connection of its own, and again between probes (see [`close_leftover_wal`]).
const DATABASE_CLOSE_PROBE_INTERVAL: Duration = Duration::from_millis(100);

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
        source: BoxError,
    },

    /// The workarounds for tansu's storage could not be installed in the database.
    #[error("cannot prepare the database \"{}\": {source}", path.display())]
    Database {
        path: PathBuf,
        #[source]
        source: BoxError,
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

/// The source of some [`BrokerError`]s: an error of tansu or of sqlite.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

            let launched = match timeout_at(deadline, launch(addr, &storage, &database_path)).await
            {
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
    ///
    /// Not always, though: a closing connection deletes the log only if no other connection holds
    /// the database, so two of tansu's connections closed at the same moment on two threads can
    /// each see the other and both leave it. Once the log has stayed for
    /// [`DATABASE_CLOSE_PROBE_INTERVAL`], a probe connection is opened and closed
    /// ([`close_leftover_wal`]): when tansu's connections are all gone, the probe's close is the
    /// last and deletes the log; while one is open, the probe changes nothing.
    async fn wait_until_database_closed(&self) {
        let wal = wal_path(&self.database_path);
        let closed = async {
            let mut next_probe = Instant::now() + DATABASE_CLOSE_PROBE_INTERVAL;
            while tokio::fs::try_exists(&wal).await.unwrap_or(false) {
                if Instant::now() >= next_probe {
                    if let Err(error) = close_leftover_wal(&self.database_path).await {
                        debug!(%error, "probing whether the broker's database is closed failed");
                    }
                    next_probe = Instant::now() + DATABASE_CLOSE_PROBE_INTERVAL;
                }
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
    DatabaseLocked(BoxError),
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
            error if is_database_locked(&error) => Launch::DatabaseLocked(error.into()),
            error => Launch::Failed(BrokerError::Broker(error)),
        }
    }
}

/// Whether `error` is sqlite's `SQLITE_BUSY`, rendered by libsql as
/// `SqliteFailure(5, "database is locked")`.
fn is_database_locked(error: &dyn std::fmt::Debug) -> bool {
    format!("{error:?}").contains("database is locked")
}

/// Builds tansu on `addr`, installs [`STORAGE_FIXES`], spawns the serve task and waits until it
/// accepts connections. The caller bounds how long this takes.
async fn launch(
    addr: SocketAddr,
    storage: &Url,
    database_path: &Path,
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

    // `build` has created tansu's tables; nothing is served yet.
    fix_storage(database_path).await.map_err(|error| {
        if is_database_locked(&error) {
            Launch::DatabaseLocked(error.into())
        } else {
            Launch::Failed(BrokerError::Database {
                path: database_path.to_owned(),
                source: error.into(),
            })
        }
    })?;

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

/// SQL run on tansu's database once tansu has created its tables and before the broker serves:
/// triggers and an index that work around bugs of tansu 0.6 (of its sqlite storage and its group
/// coordinator).
/// Idempotent, and harmless once tansu is fixed.
const STORAGE_FIXES: &str = "
-- DeleteTopics. tansu deletes the partitions (topition rows) of the topic, then runs
-- `delete from topic where topic.cluster in (select c.id ... where t.name = $2)`, which deletes
-- every topic of the cluster. Only the topic being deleted has lost its partitions, so keep the
-- topics that still have some.
create trigger if not exists eddy_delete_only_the_deleted_topic
before delete on topic
when exists (select 1 from topition where topition.topic = old.id)
begin
    select raise(ignore);
end;

-- Record headers. A fetch looks up the headers of each record it returns by (topition,
-- offset_id), and deleting a record cascades to its headers; without this index each lookup scans
-- the whole header table (a fetch of 90 000 records with 34 000 headers stored took minutes).
create index if not exists eddy_header_by_record on header (topition, offset_id);

-- Retention. tansu's maintenance (when the broker starts, then every 10 minutes) deletes the
-- records of a `cleanup.policy=delete` topic with `now - timestamp > retention.ms`, so
-- `retention.ms=-1`, keep forever, deletes them all. Keep the records of topics with a negative
-- retention. Deleting such a topic still deletes its records: tansu deletes the configuration of
-- the topic first.
create trigger if not exists eddy_keep_records_of_infinite_retention
before delete on record
when exists (
    select 1
    from topition tp
    join topic_configuration tc on tc.topic = tp.topic
    where tp.id = old.topition
    and tc.name = 'retention.ms'
    and cast(tc.value as integer) < 0
)
begin
    select raise(ignore);
end;

-- Consumer groups. tansu's group coordinator keeps each group in memory and writes it here as
-- JSON after every request, with `e_tag` a hash of the JSON, and `where e_tag = <the e_tag it last
-- wrote>`. When a member joins while the leader is dead but not yet expired, it joins as a
-- follower; when the dead leader's session expires, tansu drops it right before handling the
-- follower's SyncGroup, and, with no leader left, lets that follower form the group with the
-- follower's (empty) assignments: every member gets no partitions, forever. A leader always sends
-- an assignment for every member, so a formed group without any assignment comes from a follower.
-- Make it a forming group of the next generation without a leader, under a new `e_tag`. tansu's
-- next write of the group finds its `e_tag` outdated (RETURNING reports the row before this
-- trigger ran) and reloads the group from here; the members' heartbeats then get
-- REBALANCE_IN_PROGRESS for their older generation, they join again, and the first of them leads.
create trigger if not exists eddy_reform_group_formed_without_assignments
after update of detail on consumer_group_detail
when json_type(new.detail, '$.state.Formed') = 'object'
and not exists (select 1 from json_each(new.detail, '$.state.Formed.assignments'))
begin
    update consumer_group_detail
    set detail = json_set(
            new.detail,
            '$.generation_id', json_extract(new.detail, '$.generation_id') + 1,
            '$.state', json_object('Forming', json_object(
                'protocol_type', json_extract(new.detail, '$.state.Formed.protocol_type'),
                'protocol_name', json_extract(new.detail, '$.state.Formed.protocol_name'),
                'leader', null
            ))
        ),
        -- A random UUID, hyphenated as tansu writes and compares it.
        e_tag = (
            select substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-' || substr(h, 13, 4) || '-'
                || substr(h, 17, 4) || '-' || substr(h, 21, 12)
            from (select lower(hex(randomblob(16))) as h)
        )
    where id = new.id;
end;
";

/// How long [`fix_storage`] waits for a lock on the database before failing with
/// `SQLITE_BUSY`; [`EmbeddedBroker::start`] then tries again until its deadline.
const FIX_STORAGE_BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// Installs [`STORAGE_FIXES`] in the database at `database_path`.
async fn fix_storage(database_path: &Path) -> Result<(), libsql::Error> {
    let database = libsql::Builder::new_local(database_path).build().await?;
    let connection = database.connect()?;
    connection.busy_timeout(FIX_STORAGE_BUSY_TIMEOUT)?;
    connection.execute_batch(STORAGE_FIXES).await?;
    Ok(())
}

/// The path of the write-ahead log sqlite keeps beside the database at `database_path`.
fn wal_path(database_path: &Path) -> PathBuf {
    let mut wal = database_path.to_owned().into_os_string();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// Opens a connection to the database, reads from it and closes it, so that a write-ahead log left
/// by connections that are all closed is checkpointed into the database and deleted, as sqlite does
/// when the last connection closes. While another connection is open the log stays.
///
/// The read matters: a connection opens the log only at its first read, and closes (checkpoints
/// and deletes) only a log it has opened.
async fn close_leftover_wal(database_path: &Path) -> Result<(), libsql::Error> {
    let database = libsql::Builder::new_local(database_path).build().await?;
    let connection = database.connect()?;
    connection.busy_timeout(FIX_STORAGE_BUSY_TIMEOUT)?;
    let mut rows = connection.query("PRAGMA schema_version", ()).await?;
    while rows.next().await?.is_some() {}
    Ok(())
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
    tokio::fs::remove_file(&probe).await.map_err(not_writable)?;

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
        Err(error) if error.kind() == ErrorKind::AddrInUse => Err(BrokerError::PortInUse { port }),
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

    type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

    /// A database in WAL mode, at `dir/tansu.db`, with 100 rows in its write-ahead log and no
    /// connection open: what two connections that closed at the same moment leave. It is made by
    /// copying the files of a database whose connection is still open.
    async fn database_with_a_leftover_wal(dir: &Path) -> TestResult {
        let source = tempfile::TempDir::new()?;
        let source_path = source.path().join(DATABASE_FILE_NAME);
        let database = libsql::Builder::new_local(&source_path).build().await?;
        let connection = database.connect()?;
        // Keep every row in the log: no automatic checkpoint. (The one at close comes after the
        // copy below.)
        connection
            .query("PRAGMA journal_mode = WAL", ())
            .await?
            .next()
            .await?;
        connection
            .query("PRAGMA wal_autocheckpoint = 0", ())
            .await?
            .next()
            .await?;
        connection
            .execute_batch(
                "create table t (id integer primary key);
                 with recursive n(i) as (select 1 union all select i + 1 from n where i < 100)
                 insert into t select i from n;",
            )
            .await?;
        for name in [DATABASE_FILE_NAME, "tansu.db-wal"] {
            std::fs::copy(source.path().join(name), dir.join(name))?;
        }
        Ok(())
    }

    async fn rows_in(database_path: &Path) -> Result<i64, libsql::Error> {
        let database = libsql::Builder::new_local(database_path).build().await?;
        let connection = database.connect()?;
        let mut rows = connection.query("select count(*) from t", ()).await?;
        match rows.next().await? {
            Some(row) => row.get::<i64>(0),
            None => Ok(-1),
        }
    }

    #[tokio::test]
    async fn a_probe_deletes_a_wal_no_connection_holds_and_keeps_its_rows() -> TestResult {
        let dir = tempfile::TempDir::new()?;
        let database_path = dir.path().join(DATABASE_FILE_NAME);
        database_with_a_leftover_wal(dir.path()).await?;
        let wal = wal_path(&database_path);
        assert!(wal.exists());

        close_leftover_wal(&database_path).await?;
        assert!(
            !wal.exists(),
            "the probe's close is the last and deletes the log"
        );
        assert_eq!(rows_in(&database_path).await?, 100);
        Ok(())
    }

    #[tokio::test]
    async fn a_probe_leaves_the_wal_of_a_database_another_connection_holds() -> TestResult {
        let dir = tempfile::TempDir::new()?;
        let database_path = dir.path().join(DATABASE_FILE_NAME);
        database_with_a_leftover_wal(dir.path()).await?;
        let wal = wal_path(&database_path);

        let database = libsql::Builder::new_local(&database_path).build().await?;
        let holder = database.connect()?;
        holder
            .query("select count(*) from t", ())
            .await?
            .next()
            .await?;
        close_leftover_wal(&database_path).await?;
        assert!(wal.exists(), "an open connection keeps the log");

        drop(holder);
        drop(database);
        assert!(
            !wal.exists(),
            "the holder's close is the last and deletes the log"
        );
        Ok(())
    }

    #[test]
    fn storage_url_rejects_paths_a_url_would_escape() {
        for path in [
            "/tmp/a b/tansu.db",
            "/tmp/a?b/tansu.db",
            "/tmp/a#b/tansu.db",
            "/tmp/ä/tansu.db",
        ] {
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
