//! `eddy bench join`: stream-table and stream-stream join throughput, end to end through Kafka,
//! next to a plain pass-through of the same stream in the same run (the ceiling for a query that
//! writes every record).
//!
//! 1. Fills `bench_users` (a table, `keys` rows) and `bench_clicks` (a stream, `events` records
//!    keyed by user, co-partitioned with the table), and `bench_click_ids` and
//!    `bench_conversions` (streams of `events` records each, both keyed by click).
//! 2. Runs `CREATE STREAM ... AS SELECT` pass-through, the stream-table `LEFT JOIN`, and the
//!    stream-stream `JOIN ... WITHIN 1 HOUR` of clicks and conversions (each click meets its
//!    conversion: as many pairs as events), each from the beginning, and times until its output
//!    topic holds every event.
//! 3. Checks that the joined records found their users (a sample of the output is decoded).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use eddy_common::config::EngineConfig;
use eddy_engine::Session;
use eddy_runtime::KafkaConnection;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

use crate::bench::{BenchEngine, execute, produce_records};

/// Longest one query may take to write every event.
const QUERY_TIMEOUT: Duration = Duration::from_secs(900);
/// Output records decoded to check that joined rows found their table rows.
const SAMPLE_RECORDS: usize = 1_000;

/// What to run.
pub struct JoinBench {
    pub events: usize,
    pub keys: usize,
    pub partitions: i32,
}

pub async fn run(
    connection: &KafkaConnection,
    base: &EngineConfig,
    bench: JoinBench,
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
            "CREATE TABLE bench_users (id STRING PRIMARY KEY, name STRING, tier INT) \
             WITH (KAFKA_TOPIC='bench_users', VALUE_FORMAT='JSON', PARTITIONS={p}); \
             CREATE STREAM bench_clicks (user_id STRING KEY, page STRING, ms INT) \
             WITH (KAFKA_TOPIC='bench_clicks', VALUE_FORMAT='JSON', PARTITIONS={p}); \
             CREATE STREAM bench_click_ids (click_id STRING KEY, page STRING, ms INT) \
             WITH (KAFKA_TOPIC='bench_click_ids', VALUE_FORMAT='JSON', PARTITIONS={p}); \
             CREATE STREAM bench_conversions (click_id STRING KEY, amount INT) \
             WITH (KAFKA_TOPIC='bench_conversions', VALUE_FORMAT='JSON', PARTITIONS={p}); \
             SET 'auto.offset.reset'='earliest';",
            p = bench.partitions
        ),
    )
    .await?;
    produce_records(
        connection,
        &config.physical_topic("bench_users"),
        bench.keys,
        |i, key, value| {
            use std::fmt::Write;
            let _ = write!(key, "user-{i}");
            let _ = write!(value, "{{\"name\":\"name-{i}\",\"tier\":{}}}", i % 3);
        },
    )
    .await?;
    let keys = bench.keys;
    produce_records(
        connection,
        &config.physical_topic("bench_clicks"),
        bench.events,
        |i, key, value| {
            use std::fmt::Write;
            let _ = write!(key, "user-{}", (i * 7919) % keys);
            let _ = write!(value, "{{\"page\":\"/p/{}\",\"ms\":{}}}", i % 50, i % 1000);
        },
    )
    .await?;

    // The stream-stream join pairs each click with its conversion: both keyed by click, so there
    // are as many pairs as events (keyed by user, every click would meet every conversion of its
    // user within the hour).
    produce_records(
        connection,
        &config.physical_topic("bench_conversions"),
        bench.events,
        |i, key, value| {
            use std::fmt::Write;
            let _ = write!(key, "click-{i}");
            let _ = write!(value, "{{\"amount\":{}}}", i % 100);
        },
    )
    .await?;
    produce_records(
        connection,
        &config.physical_topic("bench_click_ids"),
        bench.events,
        |i, key, value| {
            use std::fmt::Write;
            let _ = write!(key, "click-{i}");
            let _ = write!(value, "{{\"page\":\"/p/{}\",\"ms\":{}}}", i % 50, i % 1000);
        },
    )
    .await?;
    let queries = [
        (
            "pass-through",
            "CREATE STREAM bench_copy AS SELECT user_id, page, ms FROM bench_clicks;",
            "bench_copy",
        ),
        (
            "stream-table LEFT JOIN",
            "CREATE STREAM bench_enriched AS SELECT c.user_id, c.page, c.ms, u.name, u.tier \
             FROM bench_clicks c LEFT JOIN bench_users u ON c.user_id = u.id;",
            "bench_enriched",
        ),
        (
            "stream-stream JOIN",
            "CREATE STREAM bench_converted AS SELECT c.click_id, c.page, v.amount \
             FROM bench_click_ids c JOIN bench_conversions v \
             WITHIN 1 HOUR GRACE PERIOD 1 HOUR ON c.click_id = v.click_id;",
            "bench_converted",
        ),
    ];
    println!(
        "{} click events over {} users, {} partitions",
        bench.events, bench.keys, bench.partitions
    );
    println!("{:<24} {:>10} {:>14}", "query", "seconds", "events/s");
    for (name, sql, topic) in queries {
        let started = Instant::now();
        execute(&engine, &mut session, sql).await?;
        let topic = config.physical_topic(&topic.to_uppercase());
        wait_for_records(connection, &topic, bench.events).await?;
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "{name:<24} {seconds:>10.2} {:>14.0}",
            bench.events as f64 / seconds
        );
        if topic.ends_with("BENCH_ENRICHED") {
            check_joined(connection, &topic)?;
        }
    }
    engine.shutdown().await;
    Ok(())
}

/// Waits until `topic` holds `count` records.
async fn wait_for_records(connection: &KafkaConnection, topic: &str, count: usize) -> Result<()> {
    let started = Instant::now();
    loop {
        let written: i64 = connection
            .watermarks(topic)
            .await
            .map(|w| w.iter().map(|(low, high)| high - low).sum())
            .unwrap_or(0);
        if written >= count as i64 {
            return Ok(());
        }
        if started.elapsed() > QUERY_TIMEOUT {
            bail!("{topic} holds {written} of {count} records after {QUERY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Decodes a sample of the joined output: every click's user exists, so none may lack its name.
fn check_joined(connection: &KafkaConnection, topic: &str) -> Result<()> {
    let consumer: BaseConsumer = connection
        .client_config()
        .set("group.id", "eddy-bench-join-check")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .context("check consumer")?;
    consumer.subscribe(&[topic]).context("check subscription")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = 0;
    while seen < SAMPLE_RECORDS && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.context("check read")?;
        let value = message.payload().unwrap_or_default();
        let text = String::from_utf8_lossy(value);
        if !text.contains("\"NAME\":\"name-") {
            bail!("a joined record lacks its user's name: {text}");
        }
        seen += 1;
    }
    if seen == 0 {
        bail!("no joined record could be read back");
    }
    println!("checked {seen} joined records: each found its user");
    Ok(())
}
