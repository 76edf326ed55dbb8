//! `eddy bench table`: how fast a materialized table is built and read.
//!
//! 1. Fills a stream's topic with `events` JSON records over `keys` distinct group keys.
//! 2. Creates `CREATE TABLE ... AS SELECT k, COUNT(*), SUM(amount), MAX(amount) ... GROUP BY k`
//!    reading from the beginning, and times until a read-your-writes pull query sees every event:
//!    the aggregation throughput, end to end (consume, decode, repartition through Kafka,
//!    aggregate in RocksDB with its changelog, produce the table's topic).
//! 3. Runs `lookups` pull queries by key and a few full scans, and reports their latency
//!    percentiles (each is parsed, planned by DataFusion and answered from RocksDB).
//!
//! With `--window`, the table is a windowed aggregation (its count check allows for the windows
//! each event falls in).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use eddy_common::config::EngineConfig;
use eddy_engine::{Engine, Session, StatementResult};
use eddy_runtime::KafkaConnection;
use rdkafka::producer::FutureRecord;

/// What to run.
pub struct TableBench {
    pub events: usize,
    pub keys: usize,
    pub lookups: usize,
    pub partitions: i32,
    /// A WINDOW clause (without the keyword) that makes the table windowed.
    pub window: Option<String>,
}

pub async fn run(
    connection: &KafkaConnection,
    base: &EngineConfig,
    bench: TableBench,
) -> Result<()> {
    if bench.keys == 0 || bench.events == 0 {
        bail!("--events and --keys must be positive");
    }
    let BenchEngine {
        engine,
        config,
        _state_dir,
    } = BenchEngine::start(connection, base).await?;
    let mut session = Session::new();
    execute(
        &engine,
        &mut session,
        &format!(
            "CREATE STREAM bench_events (id STRING KEY, k STRING, amount INT) \
             WITH (KAFKA_TOPIC='bench_events', VALUE_FORMAT='JSON', PARTITIONS={});",
            bench.partitions
        ),
    )
    .await?;

    let started = Instant::now();
    produce(connection, &config.physical_topic("bench_events"), &bench).await?;
    let produce_seconds = started.elapsed().as_secs_f64();

    execute(
        &engine,
        &mut session,
        "SET 'auto.offset.reset'='earliest'; \
         SET 'eddy.read_your_writes'='true'; \
         SET 'eddy.read_your_writes_timeout_ms'='600000';",
    )
    .await?;
    let window = match &bench.window {
        Some(window) => format!(" WINDOW {window}"),
        None => String::new(),
    };
    let create = format!(
        "CREATE TABLE bench_totals AS SELECT k, COUNT(*) AS n, SUM(amount) AS total, \
         MAX(amount) AS biggest FROM bench_events{window} GROUP BY k EMIT CHANGES;"
    );
    let copies = windows_per_event(&create)?;
    let started = Instant::now();
    execute(&engine, &mut session, &create).await?;
    let counted = match execute(&engine, &mut session, "SELECT SUM(n) FROM bench_totals;").await? {
        StatementResult::Rows { batches, .. } => first_i64(&batches),
        _ => None,
    };
    let aggregate_seconds = started.elapsed().as_secs_f64();
    let expected = bench.events as i64 * copies;
    if counted != Some(expected) {
        bail!("the table counted {counted:?} events, expected {expected}");
    }

    // Read-your-writes costs a round of Kafka metadata requests per query: timed on its own.
    let mut consistent = Vec::new();
    for i in 0..20 {
        let sql = format!(
            "SELECT * FROM bench_totals WHERE k = 'k{}';",
            i % bench.keys
        );
        let started = Instant::now();
        execute(&engine, &mut session, &sql).await?;
        consistent.push(started.elapsed());
    }
    execute(
        &engine,
        &mut session,
        "SET 'eddy.read_your_writes'='false';",
    )
    .await?;
    let mut lookups = Vec::with_capacity(bench.lookups);
    for i in 0..bench.lookups {
        let key = (i * 7919) % bench.keys;
        let sql = format!("SELECT * FROM bench_totals WHERE k = 'k{key}';");
        let started = Instant::now();
        execute(&engine, &mut session, &sql).await?;
        lookups.push(started.elapsed());
    }
    let mut scans = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        execute(
            &engine,
            &mut session,
            "SELECT k, n FROM bench_totals WHERE total > 0 ORDER BY n DESC LIMIT 10;",
        )
        .await?;
        scans.push(started.elapsed());
    }
    engine.shutdown().await;

    let mut table = comfy_table::Table::new();
    table.set_header(vec!["measure", "value"]);
    table.add_row(vec![
        "events, keys, partitions".to_owned(),
        format!("{}, {}, {}", bench.events, bench.keys, bench.partitions),
    ]);
    table.add_row(vec![
        "window".to_owned(),
        bench.window.clone().unwrap_or_else(|| "none".into()),
    ]);
    table.add_row(vec![
        "produce (events/s)".to_owned(),
        format!("{:.0}", bench.events as f64 / produce_seconds),
    ]);
    table.add_row(vec![
        "aggregate, end to end (events/s)".to_owned(),
        format!("{:.0}", bench.events as f64 / aggregate_seconds),
    ]);
    let (p50, p99, max) = percentiles(&mut lookups);
    table.add_row(vec![
        format!("pull by key, {} queries", bench.lookups),
        format!("p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"),
    ]);
    let (p50, p99, max) = percentiles(&mut consistent);
    table.add_row(vec![
        "pull by key with read-your-writes, 20 queries".to_owned(),
        format!("p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"),
    ]);
    let (p50, p99, max) = percentiles(&mut scans);
    table.add_row(vec![
        format!("pull full scan + ORDER BY over {} keys", bench.keys),
        format!("p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"),
    ]);
    println!("{table}");
    Ok(())
}

/// An engine of its own for one bench run: a fresh service id and topic prefix, so runs never see
/// each other's topics, and a temporary state directory that goes with it.
pub(crate) struct BenchEngine {
    pub engine: Engine,
    pub config: EngineConfig,
    pub _state_dir: tempfile::TempDir,
}

impl BenchEngine {
    /// An engine in a namespace of its own, with `base`'s limits (the `--set` options).
    pub(crate) async fn start(connection: &KafkaConnection, base: &EngineConfig) -> Result<Self> {
        let id = uuid_like();
        let state_dir = tempfile::Builder::new()
            .prefix("eddy-bench-")
            .tempdir()
            .context("cannot create a temporary state directory")?;
        let config = EngineConfig {
            service_id: format!("bench-{id}"),
            topic_prefix: format!("bench-{id}-"),
            state_dir: state_dir.path().to_path_buf(),
            ..base.clone()
        };
        let engine = Engine::start(config.clone(), connection.clone())
            .await
            .context("cannot start the engine")?;
        Ok(Self {
            engine,
            config,
            _state_dir: state_dir,
        })
    }
}

pub(crate) async fn execute(
    engine: &Engine,
    session: &mut Session,
    sql: &str,
) -> Result<StatementResult> {
    let mut results = engine
        .execute(session, sql)
        .await
        .with_context(|| format!("statement failed: {sql}"))?;
    results.pop().context("no statement")
}

async fn produce(connection: &KafkaConnection, topic: &str, bench: &TableBench) -> Result<()> {
    produce_records(connection, topic, bench.events, |i, key, value| {
        use std::fmt::Write;
        let _ = write!(key, "e{i}");
        let _ = write!(
            value,
            "{{\"k\":\"k{}\",\"amount\":{}}}",
            i % bench.keys,
            i % 100
        );
    })
    .await
}

/// Produces `count` records to `topic`, `fill(i, key, value)` writing record i.
pub(crate) async fn produce_records(
    connection: &KafkaConnection,
    topic: &str,
    count: usize,
    fill: impl Fn(usize, &mut String, &mut String),
) -> Result<()> {
    let producer = connection.producer()?;
    let mut pending = std::collections::VecDeque::new();
    let (mut key, mut value) = (String::new(), String::new());
    for i in 0..count {
        key.clear();
        value.clear();
        fill(i, &mut key, &mut value);
        loop {
            match producer.send_result(FutureRecord::to(topic).key(&key).payload(&value)) {
                Ok(delivery) => {
                    pending.push_back(delivery);
                    break;
                }
                Err((error, _)) => {
                    let Some(oldest) = pending.pop_front() else {
                        bail!("cannot produce: {error}");
                    };
                    if !matches!(oldest.await, Ok(Ok(_))) {
                        bail!("a record was not delivered");
                    }
                }
            }
        }
        while pending.len() > 10_000 {
            if let Some(oldest) = pending.pop_front()
                && !matches!(oldest.await, Ok(Ok(_)))
            {
                bail!("a record was not delivered");
            }
        }
    }
    for delivery in pending {
        if !matches!(delivery.await, Ok(Ok(_))) {
            bail!("a record was not delivered");
        }
    }
    Ok(())
}

fn first_i64(batches: &[datafusion_arrow::RecordBatch]) -> Option<i64> {
    use datafusion_arrow::{Array, AsArray, Int64Type};
    let batch = batches.iter().find(|b| b.num_rows() > 0)?;
    let column = batch.column(0).as_primitive_opt::<Int64Type>()?;
    (!column.is_null(0)).then(|| column.value(0))
}

/// Arrow through the engine's DataFusion, without naming DataFusion in this crate's dependencies.
mod datafusion_arrow {
    pub use eddy_engine::arrow::array::{Array, AsArray, RecordBatch};
    pub use eddy_engine::arrow::datatypes::Int64Type;
}

/// (p50, p99, max) in milliseconds.
fn percentiles(samples: &mut [Duration]) -> (f64, f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    samples.sort();
    let at = |q: f64| {
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[index].as_secs_f64() * 1000.0
    };
    (at(0.5), at(0.99), at(1.0))
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}", nanos & 0xffff_ffff_ffff)
}

/// How many windows each event of `create` counts in: 1, or SIZE / ADVANCE BY of a hopping
/// window (which must divide it, so that the check of the count is exact).
fn windows_per_event(create: &str) -> Result<i64> {
    let parsed = eddy_sql::parse_statements(create)?;
    let window = parsed
        .first()
        .and_then(|p| p.statement.select())
        .and_then(|s| s.window);
    match window.map(|w| w.kind) {
        Some(eddy_common::window::WindowKind::Hopping {
            size_ms,
            advance_ms,
        }) => {
            if size_ms % advance_ms != 0 {
                bail!("for the bench, a hopping window's ADVANCE BY must divide its SIZE");
            }
            Ok(size_ms / advance_ms)
        }
        _ => Ok(1),
    }
}
