//! `eddy`: streaming SQL over Kafka.
//!
//! ```text
//! eddy [--bootstrap-servers HOST:PORT] [--data-dir DIR] [--service-id ID]   interactive shell
//! eddy server [--listen 127.0.0.1:8088] [...same options]                   ksqlDB-compatible REST API
//! eddy test [--bootstrap-servers HOST:PORT] FILE.slt|DIR...                 run sqllogictest files
//! ```
//!
//! Without `--bootstrap-servers`, an embedded Kafka-compatible broker (feature `embedded-broker`,
//! on by default) is started with its data under `DATA_DIR/broker` (for `eddy test`, under a
//! temporary directory). Logs go to stderr at WARN; `EDDY_LOG` changes that (`RUST_LOG` syntax).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use eddy_cli::repl::{ReplConfig, default_history_path};
use eddy_cli::slt::{SltConfig, run_files_with};
use eddy_common::config::EngineConfig;
use eddy_engine::Engine;
use eddy_runtime::KafkaConnection;
use tracing_subscriber::EnvFilter;

/// Port of the embedded broker of the shell, Kafka's usual one so that tools find it.
const DEFAULT_BROKER_PORT: u16 = 9092;

/// Address of `eddy server`: ksqlDB's usual port, on the loopback interface only.
const DEFAULT_LISTEN: &str = "127.0.0.1:8088";

/// Environment variable with the log filter (`RUST_LOG` syntax), default `warn`.
const LOG_ENV: &str = "EDDY_LOG";

#[derive(Debug, Parser)]
#[command(
    name = "eddy",
    version,
    about = "Streaming SQL over Kafka: an interactive shell, a ksqlDB-compatible REST server, and a \
             test runner for .slt files"
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Directory of Eddy's local data: the embedded broker's storage, state and the shell history.
    #[arg(long, value_name = "DIR", default_value = "./eddy-data", global = true)]
    data_dir: PathBuf,
    /// Port of the embedded broker on 127.0.0.1 (0 picks a free one); unused with --bootstrap-servers.
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_BROKER_PORT, global = true)]
    broker_port: u16,
    /// Identity of the Eddy cluster: servers with the same id share a catalog and queries.
    #[arg(
        long,
        value_name = "ID",
        default_value = "eddy",
        env = "EDDY_SERVICE_ID",
        global = true
    )]
    service_id: String,
    /// Set an engine limit, by the name `SHOW PROPERTIES` prints (the `eddy.` prefix is
    /// optional), e.g. `--set eddy.max_batch_records=8192`; repeatable, applied after the other
    /// options (`SHOW PROPERTIES` lists them; docs/architecture.md, "Limits"). `eddy server` also
    /// takes the REST server's limits, `eddy.server.*` (e.g. `eddy.server.max_request_bytes`).
    #[arg(long = "set", value_name = "NAME=VALUE", global = true)]
    settings: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Args)]
struct KafkaArgs {
    /// Kafka to connect to; without it, an embedded broker is started.
    #[arg(
        long,
        value_name = "HOST:PORT",
        env = "EDDY_BOOTSTRAP_SERVERS",
        global = true
    )]
    bootstrap_servers: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the ksqlDB-compatible REST API (/ksql, /query, /info, /healthcheck) until Ctrl-C or
    /// SIGTERM.
    Server {
        /// Address to listen on.
        #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Require HTTP basic authentication with this user and password (better given in
        /// the environment, where `ps` does not show it).
        #[arg(long, value_name = "USER:PASSWORD", env = "EDDY_BASIC_AUTH", hide_env_values = true, value_parser = parse_basic_auth)]
        basic_auth: Option<eddy_server::BasicAuth>,
        /// Headless mode: run the statements of this file at start (again after each restart;
        /// those already applied are skipped) and take none over REST.
        #[arg(long, value_name = "FILE.sql")]
        queries_file: Option<PathBuf>,
        /// Serve HTTPS with this PEM certificate (followed by its chain's intermediates).
        #[arg(
            long,
            value_name = "FILE.pem",
            env = "EDDY_TLS_CERT_FILE",
            requires = "tls_key_file"
        )]
        tls_cert_file: Option<PathBuf>,
        /// The PEM private key of --tls-cert-file.
        #[arg(
            long,
            value_name = "FILE.pem",
            env = "EDDY_TLS_KEY_FILE",
            requires = "tls_cert_file"
        )]
        tls_key_file: Option<PathBuf>,
        /// Most push queries and PRINTs streaming to clients at once; more are refused until
        /// one ends (ksqlDB's ksql.max.push.queries). The same as `--set
        /// eddy.server.max_push_queries=N`, which it overrides. Default 100.
        #[arg(long, value_name = "N")]
        max_push_queries: Option<usize>,
    },
    /// The shell on a running Eddy (or ksqlDB) server, over its REST API.
    Cli {
        /// The server's address, e.g. http://127.0.0.1:8088.
        #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8088")]
        server: String,
        /// The server's basic-authentication credentials (better given in the environment).
        #[arg(long, value_name = "USER:PASSWORD", env = "EDDY_BASIC_AUTH", hide_env_values = true, value_parser = parse_credentials)]
        basic_auth: Option<(String, String)>,
        /// Trust the certificates of this PEM file (a private CA, or a self-signed server
        /// certificate) besides the system's, for an https:// server.
        #[arg(long, value_name = "FILE.pem", env = "EDDY_TLS_CA_FILE")]
        tls_ca_file: Option<PathBuf>,
    },
    /// Run sqllogictest files, each in a fresh namespace; exits non-zero when any fails.
    Test {
        /// `.slt` files, or directories whose `*.slt` files are run in name order.
        #[arg(required = true, value_name = "FILE.slt")]
        files: Vec<PathBuf>,
        /// Longest a push query or PRINT of a test may take to return its LIMIT rows.
        #[arg(long, value_name = "MS", default_value_t = eddy_cli::slt::DEFAULT_QUERY_TIMEOUT_MS)]
        query_timeout_ms: u64,
    },
    /// Measure Eddy (see docs/benchmarks.md).
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Build a materialized table from N events, then time pull queries on it.
    Table {
        /// Events in the input stream.
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// Distinct group keys.
        #[arg(long, default_value_t = 10_000)]
        keys: usize,
        /// Pull queries by key to time.
        #[arg(long, default_value_t = 1_000)]
        lookups: usize,
        /// Partitions of the input topic.
        #[arg(long, default_value_t = 2)]
        partitions: i32,
        /// Make the table a windowed aggregation: a WINDOW clause without `WINDOW`, such as
        /// 'TUMBLING (SIZE 1 SECOND)' (keep the default grace period: events arrive out of order
        /// across partitions).
        #[arg(long)]
        window: Option<String>,
    },
    /// Run the Nexmark queries Eddy supports: DataFusion batch, engine only, end to end through
    /// Kafka, and the raw consume rate of the same topic.
    Nexmark {
        /// Bids to generate and process.
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Partitions of the bid topic.
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        /// Queries to run, comma-separated (default: every query Eddy supports).
        #[arg(long, value_delimiter = ',')]
        queries: Vec<String>,
        /// Bids per second sent while q0's end-to-end latency is measured.
        #[arg(long, default_value_t = 2_000)]
        latency_rate: u32,
        /// How long the latency run sends bids.
        #[arg(long, default_value_t = 10)]
        latency_seconds: u32,
    },
    /// Time a stream-table and a stream-stream join end to end, next to a pass-through.
    Join {
        /// Click events in the stream.
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// Users in the table.
        #[arg(long, default_value_t = 10_000)]
        keys: usize,
        /// Partitions of both topics.
        #[arg(long, default_value_t = 2)]
        partitions: i32,
    },
    /// Fill Kafka topics with Nexmark events as JSON (for Eddy and for peers to read).
    LoadNexmark {
        /// Events to generate (persons, auctions and bids in Nexmark's proportions).
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Partitions of each topic.
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        /// Topic names are this prefix followed by person, auction and bid.
        #[arg(long, default_value = "nexmark_")]
        topic_prefix: String,
    },
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cli: Cli) -> Result<ExitCode> {
    // Checked before anything starts, so that a wrong setting fails at once.
    let mut engine_config = EngineConfig {
        service_id: cli.service_id,
        state_dir: cli.data_dir.join("state"),
        ..EngineConfig::default()
    };
    let (server_settings, engine_settings) = split_settings(&cli.settings);
    engine_config
        .apply_assignments(engine_settings)
        .context("--set")?;
    let mut server_config = eddy_server::ServerConfig::default();
    for (name, value) in &server_settings {
        server_config.set(name, value).context("--set")?;
    }
    if !server_settings.is_empty() && !matches!(cli.command, Some(Command::Server { .. })) {
        bail!(
            "--set {}: the REST server's settings apply to `eddy server` only",
            server_settings[0].0
        );
    }
    match cli.command {
        None => shell(cli.kafka, &cli.data_dir, cli.broker_port, engine_config)
            .await
            .map(|()| ExitCode::SUCCESS),
        Some(Command::Cli {
            server,
            basic_auth,
            tls_ca_file,
        }) => remote_shell(&server, basic_auth, tls_ca_file.as_deref())
            .await
            .map(|()| ExitCode::SUCCESS),
        Some(Command::Server {
            listen,
            basic_auth,
            queries_file,
            tls_cert_file,
            tls_key_file,
            max_push_queries,
        }) => server(
            cli.kafka,
            &cli.data_dir,
            cli.broker_port,
            engine_config,
            ServerOptions {
                listen,
                basic_auth,
                queries_file,
                tls: tls_cert_file
                    .zip(tls_key_file)
                    .map(|(cert, key)| tls_options(cert, key, &server_config)),
                config: eddy_server::ServerConfig {
                    max_push_queries: max_push_queries.unwrap_or(server_config.max_push_queries),
                    ..server_config
                },
            },
        )
        .await
        .map(|()| ExitCode::SUCCESS),
        Some(Command::Test {
            files,
            query_timeout_ms,
        }) => test(cli.kafka, &files, query_timeout_ms, engine_config).await,
        Some(Command::Bench { which }) => bench(cli.kafka, which, &engine_config)
            .await
            .map(|()| ExitCode::SUCCESS),
    }
}

/// The engine of the shell and the server, on the given Kafka or on an embedded broker whose data
/// is under `data_dir` (returned so that it is shut down after the engine).
async fn start_engine(
    kafka: KafkaArgs,
    data_dir: &Path,
    broker_port: u16,
    config: EngineConfig,
) -> Result<(Engine, KafkaConnection, Option<embedded::Broker>)> {
    let (connection, broker) = match kafka.bootstrap_servers {
        Some(servers) => (KafkaConnection::new(servers), None),
        None => {
            std::fs::create_dir_all(data_dir).with_context(|| {
                format!("cannot create the data directory {}", data_dir.display())
            })?;
            let broker = embedded::start(&data_dir.join("broker"), broker_port).await?;
            println!(
                "Embedded Kafka broker listening on {}",
                broker.bootstrap_servers()
            );
            (broker.connection(), Some(broker))
        }
    };
    let engine = Engine::start(config, connection.clone())
        .await
        .with_context(|| {
            format!(
                "cannot start the engine on Kafka at {}",
                connection.bootstrap_servers
            )
        })?;
    Ok((engine, connection, broker))
}

/// Stops the engine (committing its queries' progress), then the embedded broker, if any.
async fn stop_engine(engine: Engine, broker: Option<embedded::Broker>) -> Result<()> {
    engine.shutdown().await;
    // Kafka clients must be gone before the broker stops, or librdkafka logs connection errors.
    drop(engine);
    tokio::task::yield_now().await;
    if let Some(broker) = broker {
        broker.shutdown().await?;
    }
    Ok(())
}

/// The interactive shell.
async fn shell(
    kafka: KafkaArgs,
    data_dir: &Path,
    broker_port: u16,
    config: EngineConfig,
) -> Result<()> {
    let (engine, connection, broker) = start_engine(kafka, data_dir, broker_port, config).await?;
    let history_path = default_history_path(broker.as_ref().map(|_| data_dir));
    let banner = format!(
        "Eddy {} on Kafka at {}. Statements end with ';'; type 'exit' or press Ctrl-D to leave.",
        env!("CARGO_PKG_VERSION"),
        connection.bootstrap_servers
    );
    let outcome = eddy_cli::repl::run(
        engine.clone(),
        ReplConfig {
            history_path,
            banner: Some(banner),
        },
    )
    .await;
    stop_engine(engine, broker).await?;
    outcome.context("the shell failed")
}

/// `eddy cli --server URL`: the shell on a server over REST; the history is `~/.eddy_history`.
async fn remote_shell(
    server: &str,
    basic_auth: Option<(String, String)>,
    tls_ca_file: Option<&Path>,
) -> Result<()> {
    let (target, version) =
        eddy_cli::remote::RemoteTarget::connect(server, basic_auth, tls_ca_file)
            .await
            .context("cannot start the shell")?;
    let banner = format!(
        "Eddy {} shell on server {server} (version {version}). Statements end with ';'; type 'help', or 'exit' to leave.",
        env!("CARGO_PKG_VERSION"),
    );
    eddy_cli::repl::run_on(
        target,
        ReplConfig {
            history_path: default_history_path(None),
            banner: Some(banner),
        },
    )
    .await
    .context("the shell failed")
}

/// `eddy server`: the REST API until Ctrl-C or SIGTERM, then a graceful stop (open push queries
/// end, in-flight requests finish, the engine commits its queries' progress).
async fn server(
    kafka: KafkaArgs,
    data_dir: &Path,
    broker_port: u16,
    config: EngineConfig,
    options: ServerOptions,
) -> Result<()> {
    let ServerOptions {
        listen,
        basic_auth,
        queries_file,
        tls,
        config: server_config,
    } = options;
    // Loaded before anything starts, so that a wrong certificate or key fails at once.
    let tls = tls
        .map(eddy_server::TlsIdentity::load)
        .transpose()
        .context("cannot serve HTTPS")?;
    // Read before anything starts, so that a wrong path fails at once.
    let queries = match &queries_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the queries file {}", path.display()))?,
        ),
        None => None,
    };
    let (engine, connection, broker) = start_engine(kafka, data_dir, broker_port, config).await?;
    if let (Some(queries), Some(path)) = (&queries, &queries_file) {
        match engine.run_queries_file(queries).await {
            Ok(done) => {
                for (statement, message) in done {
                    println!(
                        "{}: {message}",
                        statement.lines().next().unwrap_or_default()
                    );
                }
            }
            Err(error) => {
                stop_engine(engine, broker).await?;
                return Err(anyhow::anyhow!("{error}"))
                    .with_context(|| format!("the queries file {} failed", path.display()));
            }
        }
    }
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(error) => {
            stop_engine(engine, broker).await?;
            return Err(error).with_context(|| {
                format!(
                    "cannot listen on {listen} (another server there? try --listen 127.0.0.1:0)"
                )
            });
        }
    };
    let address = listener
        .local_addr()
        .context("cannot read the address listened on")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("Eddy REST API listening on {scheme}://{address}");
    println!(
        "Eddy {} on Kafka at {}; Ctrl-C or SIGTERM stops it.",
        env!("CARGO_PKG_VERSION"),
        connection.bootstrap_servers
    );
    let config = eddy_server::ServerConfig {
        advertised_listener: Some(address.to_string()),
        basic_auth,
        headless: queries.is_some(),
        ..server_config
    };
    let state = eddy_server::AppState::for_engine(engine.clone(), config);
    let outcome = match &tls {
        Some(identity) => {
            eddy_server::serve_tls(listener, identity, state, shutdown_signal()).await
        }
        None => eddy_server::serve(listener, state, shutdown_signal()).await,
    };
    stop_engine(engine, broker).await?;
    outcome.context("the REST server failed")
}

/// What `eddy server` is asked for besides the engine.
struct ServerOptions {
    listen: SocketAddr,
    basic_auth: Option<eddy_server::BasicAuth>,
    queries_file: Option<PathBuf>,
    /// HTTPS: the certificate and key files.
    tls: Option<eddy_server::TlsOptions>,
    /// The server's limits (`--set eddy.server.*`, `--max-push-queries`).
    config: eddy_server::ServerConfig,
}

/// HTTPS with the certificate chain and key files, under the server's handshake limits.
fn tls_options(
    cert: PathBuf,
    key: PathBuf,
    config: &eddy_server::ServerConfig,
) -> eddy_server::TlsOptions {
    eddy_server::TlsOptions {
        handshake_timeout_ms: config.tls_handshake_timeout_ms,
        max_pending_handshakes: config.max_pending_tls_handshakes,
        ..eddy_server::TlsOptions::new(cert, key)
    }
}

/// Splits `--set` assignments into the REST server's settings, as (name, value), and the
/// engine's, as given. An assignment without `=` is left to the engine's, which refuses it.
fn split_settings(settings: &[String]) -> (Vec<(&str, &str)>, Vec<&str>) {
    let mut server = Vec::new();
    let mut engine = Vec::new();
    for assignment in settings {
        match assignment.split_once('=') {
            Some((name, value)) if eddy_server::ServerConfig::is_server_setting(name.trim()) => {
                server.push((name.trim(), value.trim()));
            }
            _ => engine.push(assignment.as_str()),
        }
    }
    (server, engine)
}

fn parse_basic_auth(credentials: &str) -> Result<eddy_server::BasicAuth, String> {
    eddy_server::BasicAuth::parse(credentials)
        .ok_or_else(|| "expected USER:PASSWORD, both non-empty".to_owned())
}

fn parse_credentials(credentials: &str) -> Result<(String, String), String> {
    match credentials.split_once(':') {
        Some((user, password)) if !user.is_empty() && !password.is_empty() => {
            Ok((user.to_owned(), password.to_owned()))
        }
        _ => Err("expected USER:PASSWORD, both non-empty".to_owned()),
    }
}

/// Completes on Ctrl-C or, on Unix, SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No Ctrl-C handler can be installed: rely on SIGTERM alone.
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// The given Kafka, or an embedded broker on a free port in a temporary directory (returned so
/// that it outlives the broker).
async fn kafka_or_temporary_broker(
    kafka: KafkaArgs,
    prefix: &str,
) -> Result<(
    KafkaConnection,
    Option<embedded::Broker>,
    Option<tempfile::TempDir>,
)> {
    match kafka.bootstrap_servers {
        Some(servers) => Ok((KafkaConnection::new(servers), None, None)),
        None => {
            let dir = tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .context("cannot create a temporary directory for the embedded broker")?;
            let broker = embedded::start(&dir.path().join("broker"), 0).await?;
            Ok((broker.connection(), Some(broker), Some(dir)))
        }
    }
}

/// `eddy test`.
async fn test(
    kafka: KafkaArgs,
    paths: &[PathBuf],
    query_timeout_ms: u64,
    engine: EngineConfig,
) -> Result<ExitCode> {
    let files = expand_test_files(paths)?;
    // The guard keeps the temporary directory alive until the broker is shut down.
    let (connection, broker, _temp_dir) = kafka_or_temporary_broker(kafka, "eddy-test-").await?;
    let config = SltConfig {
        query_timeout_ms,
        engine,
    };
    let summary = run_files_with(&connection, &files, &config).await;
    if let Some(broker) = broker {
        broker.shutdown().await?;
    }
    let summary = summary?;
    println!("{summary}");
    Ok(if summary.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `eddy bench ...`, on the given Kafka or on an embedded broker in a temporary directory.
async fn bench(kafka: KafkaArgs, which: BenchCommand, engine: &EngineConfig) -> Result<()> {
    let (connection, broker, _temp_dir) = kafka_or_temporary_broker(kafka, "eddy-bench-").await?;
    let outcome = match which {
        BenchCommand::Table {
            events,
            keys,
            lookups,
            partitions,
            window,
        } => {
            bench::run(
                &connection,
                engine,
                bench::TableBench {
                    events,
                    keys,
                    lookups,
                    partitions,
                    window,
                },
            )
            .await
        }
        BenchCommand::Nexmark {
            events,
            partitions,
            queries,
            latency_rate,
            latency_seconds,
        } => {
            nexmark::run(
                &connection,
                engine,
                nexmark::NexmarkBench {
                    bids: events,
                    partitions,
                    queries,
                    latency_rate,
                    latency_seconds,
                },
            )
            .await
        }
        BenchCommand::Join {
            events,
            keys,
            partitions,
        } => {
            join_bench::run(
                &connection,
                engine,
                join_bench::JoinBench {
                    events,
                    keys,
                    partitions,
                },
            )
            .await
        }
        BenchCommand::LoadNexmark {
            events,
            partitions,
            topic_prefix,
        } => {
            nexmark::load(
                &connection,
                nexmark::LoadNexmark {
                    events,
                    partitions,
                    topic_prefix,
                },
            )
            .await
        }
    };
    if let Some(broker) = broker {
        broker.shutdown().await?;
    }
    outcome
}

/// Files as given, and the `*.slt` files of directories, in name order.
fn expand_test_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot read directory {}", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "slt"))
                .collect();
            found.sort();
            if found.is_empty() {
                bail!("no .slt files in {}", path.display());
            }
            files.extend(found);
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            bail!("no such test file: {}", path.display());
        }
    }
    Ok(files)
}

mod bench;
mod join_bench;
mod nexmark;

#[cfg(feature = "embedded-broker")]
mod embedded {
    use std::path::Path;

    use anyhow::{Context, Result};
    use eddy_broker::{CLIENT_SETTINGS, EmbeddedBroker, EmbeddedBrokerConfig};
    use eddy_runtime::KafkaConnection;

    /// The embedded broker, and how to connect to it.
    pub struct Broker {
        broker: EmbeddedBroker,
    }

    impl Broker {
        pub fn bootstrap_servers(&self) -> String {
            self.broker.bootstrap_servers()
        }

        /// A connection with the client settings the embedded broker needs.
        pub fn connection(&self) -> KafkaConnection {
            let mut connection = KafkaConnection::new(self.broker.bootstrap_servers());
            for (key, value) in CLIENT_SETTINGS {
                connection
                    .properties
                    .insert((*key).to_owned(), (*value).to_owned());
            }
            connection
        }

        pub async fn shutdown(self) -> Result<()> {
            self.broker
                .shutdown()
                .await
                .context("the embedded broker failed to stop")
        }
    }

    pub async fn start(data_dir: &Path, port: u16) -> Result<Broker> {
        let broker = EmbeddedBroker::start(EmbeddedBrokerConfig::new(data_dir).with_port(port))
            .await
            .with_context(|| {
                format!(
                    "cannot start the embedded broker on 127.0.0.1:{port} with its data in {} \
                     (if the port is taken, try --broker-port 0 for any free port)",
                    data_dir.display()
                )
            })?;
        Ok(Broker { broker })
    }
}

#[cfg(not(feature = "embedded-broker"))]
mod embedded {
    use std::path::Path;

    use anyhow::{Result, bail};
    use eddy_runtime::KafkaConnection;

    /// Never built: this binary has no embedded broker.
    pub enum Broker {}

    impl Broker {
        pub fn bootstrap_servers(&self) -> String {
            match *self {}
        }

        pub fn connection(&self) -> KafkaConnection {
            match *self {}
        }

        pub async fn shutdown(self) -> Result<()> {
            match self {}
        }
    }

    pub async fn start(_data_dir: &Path, _port: u16) -> Result<Broker> {
        bail!(
            "this eddy was built without the embedded broker (cargo feature `embedded-broker`); \
             pass --bootstrap-servers HOST:PORT to use a Kafka cluster"
        )
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn server_settings_are_told_apart_from_the_engines() {
        let settings: Vec<String> = [
            "eddy.server.max_request_bytes=2048",
            "eddy.max_batch_records = 8",
            "server.max_push_queries= 3",
            "no_equals_sign",
        ]
        .map(String::from)
        .to_vec();
        let (server, engine) = split_settings(&settings);
        assert_eq!(
            server,
            [
                ("eddy.server.max_request_bytes", "2048"),
                ("server.max_push_queries", "3")
            ]
        );
        assert_eq!(engine, ["eddy.max_batch_records = 8", "no_equals_sign"]);
        let mut config = eddy_server::ServerConfig::default();
        config
            .set("eddy.server.tls_handshake_timeout_ms", "2500")
            .expect("a timeout");
        config
            .set("eddy.server.max_pending_tls_handshakes", "8")
            .expect("a bound");
        let tls = tls_options("c.pem".into(), "k.pem".into(), &config);
        assert_eq!(
            (tls.handshake_timeout_ms, tls.max_pending_handshakes),
            (2500, 8)
        );
        let cli = Cli::parse_from(["eddy", "server", "--max-push-queries", "4"]);
        assert!(matches!(
            cli.command,
            Some(Command::Server {
                max_push_queries: Some(4),
                ..
            })
        ));
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bootstrap_servers_works_before_and_after_test() {
        let cli = Cli::parse_from(["eddy", "test", "--bootstrap-servers", "k:9092", "a.slt"]);
        assert_eq!(cli.kafka.bootstrap_servers.as_deref(), Some("k:9092"));
        let cli = Cli::parse_from(["eddy", "--bootstrap-servers", "k:9092", "test", "a.slt"]);
        assert_eq!(cli.kafka.bootstrap_servers.as_deref(), Some("k:9092"));
        let cli = Cli::parse_from(["eddy"]);
        assert_eq!(cli.data_dir, PathBuf::from("./eddy-data"));
        assert!(cli.command.is_none());
    }

    #[test]
    fn server_listens_on_8088_by_default_and_takes_the_global_options() {
        let cli = Cli::parse_from(["eddy", "server"]);
        assert!(matches!(
            cli.command,
            Some(Command::Server { listen, .. }) if listen == DEFAULT_LISTEN.parse().expect("address")
        ));
        let cli = Cli::parse_from([
            "eddy",
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "d",
            "--service-id",
            "s",
        ]);
        assert_eq!(cli.data_dir, PathBuf::from("d"));
        assert_eq!(cli.service_id, "s");
        assert!(matches!(
            cli.command,
            Some(Command::Server { listen, .. }) if listen.port() == 0
        ));
    }
}
