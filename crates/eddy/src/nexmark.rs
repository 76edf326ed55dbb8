//! `eddy bench load-nexmark` and `eddy bench nexmark`: the Nexmark benchmark over Kafka.
//!
//! Events come from the `nexmark` crate's generator (the reference data of Flink's, RisingWave's
//! and Arroyo's Nexmark runs) and are written as JSON to `<prefix>person`, `<prefix>auction` and
//! `<prefix>bid`. For each query, `eddy bench nexmark` measures, over the same bids:
//!
//! - **DataFusion batch**: the query as one DataFusion batch job over Arrow data in memory — a
//!   bound on what the SQL itself costs;
//! - **engine only**: Eddy's per-batch work (JSON decode → stages → JSON encode) in memory, one
//!   thread, no broker;
//! - **generator → engine**: the query as a push query over a generated stream
//!   (`CONNECTOR='nexmark'`): generating and JSON-encoding the events, the partition task's
//!   decode and stages, rows handed to the client; the runtime without Kafka;
//! - **end to end**: `CREATE STREAM ... AS SELECT` from the Kafka topic to a Kafka topic, timed
//!   until the output topic holds every output row; with the CPU time the process spent;
//! - **raw consume**: librdkafka reading the input topic and doing nothing else — the ceiling of
//!   any consumer on this broker;
//! - **raw pipe**: librdkafka reading the input topic and producing every record unchanged to
//!   another topic — the ceiling of a query that writes every row (q0, q1) on this broker;
//! - **latency**: q0 running while bids arrive at a steady rate, each stamped with the wall-clock
//!   time it was sent (`date_time`); a consumer of the output takes the difference on arrival.
//!
//! Output row counts of the engine and of DataFusion must agree, so every run also checks results.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use eddy_common::config::EngineConfig;
use eddy_engine::{Engine, RawBatch, Session};

use crate::bench::BenchEngine;
use eddy_runtime::KafkaConnection;
use nexmark::EventGenerator;
use nexmark::config::NexmarkConfig;
use nexmark::event::{Bid, Event, EventType};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

/// The Nexmark queries Eddy can express today, in its SQL, over the stream `bid`.
pub const QUERIES: &[(&str, &str)] = &[
    (
        "q0",
        "SELECT auction, bidder, price, date_time, extra FROM bid",
    ),
    (
        "q1",
        "SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid",
    ),
    (
        "q2",
        "SELECT auction, price FROM bid WHERE auction % 123 = 0",
    ),
];

/// The stream the queries read, over the bid topic `topic`.
fn bid_stream(topic: &str, partitions: i32) -> String {
    format!(
        "CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, \
         url STRING, date_time BIGINT, extra STRING) \
         WITH (KAFKA_TOPIC='{topic}', VALUE_FORMAT='JSON', PARTITIONS={partitions});"
    )
}

/// Records per raw batch in the engine-only run (the runtime's default batch size).
fn batch_records() -> usize {
    EngineConfig::default().max_batch_records.max(1)
}

/// `eddy bench load-nexmark`: what to write.
pub struct LoadNexmark {
    pub events: usize,
    pub partitions: i32,
    pub topic_prefix: String,
}

/// `eddy bench nexmark`: what to run.
pub struct NexmarkBench {
    pub bids: usize,
    pub partitions: i32,
    pub queries: Vec<String>,
    /// Bids per second sent during the latency run.
    pub latency_rate: u32,
    /// How long the latency run sends.
    pub latency_seconds: u32,
}

/// Generates `events` Nexmark events (persons, auctions and bids in Nexmark's proportions) and
/// writes them as JSON to `<prefix>person`, `<prefix>auction`, `<prefix>bid`.
pub async fn load(connection: &KafkaConnection, load: LoadNexmark) -> Result<()> {
    let mut written = [0usize; 3];
    let topics = ["person", "auction", "bid"].map(|t| format!("{}{t}", load.topic_prefix));
    for topic in &topics {
        connection
            .create_topic(topic, load.partitions, 1, &[])
            .await
            .with_context(|| format!("cannot create topic {topic}"))?;
    }
    let producer = connection.producer()?;
    let mut sender = Sender::new(&producer);
    let started = Instant::now();
    for event in EventGenerator::new(NexmarkConfig::default()).take(load.events) {
        let (index, key, timestamp, value) = match &event {
            Event::Person(person) => (0, person.id, person.date_time, serde_json::to_vec(person)),
            Event::Auction(auction) => (
                1,
                auction.id,
                auction.date_time,
                serde_json::to_vec(auction),
            ),
            Event::Bid(bid) => (2, bid.auction, bid.date_time, serde_json::to_vec(bid)),
        };
        let value = value.context("cannot encode an event")?;
        sender
            .send(&topics[index], &key.to_string(), &value, timestamp as i64)
            .await?;
        written[index] += 1;
    }
    sender.finish().await?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "wrote {} persons to {}, {} auctions to {}, {} bids to {} ({} partitions each) in {seconds:.1} s: {:.0} events/s",
        written[0],
        topics[0],
        written[1],
        topics[1],
        written[2],
        topics[2],
        load.partitions,
        load.events as f64 / seconds
    );
    Ok(())
}

/// Produces records with back-pressure: at most `MAX_IN_FLIGHT` unacknowledged.
struct Sender<'a> {
    producer: &'a rdkafka::producer::FutureProducer,
    pending: std::collections::VecDeque<rdkafka::producer::DeliveryFuture>,
}

/// Unacknowledged records a loader keeps in flight.
const MAX_IN_FLIGHT: usize = 50_000;

impl<'a> Sender<'a> {
    fn new(producer: &'a rdkafka::producer::FutureProducer) -> Self {
        Self {
            producer,
            pending: std::collections::VecDeque::new(),
        }
    }

    async fn send(
        &mut self,
        topic: &str,
        key: &str,
        value: &[u8],
        timestamp_ms: i64,
    ) -> Result<()> {
        loop {
            if self.pending.len() >= MAX_IN_FLIGHT {
                self.await_oldest().await?;
            }
            let record = FutureRecord::to(topic)
                .key(key)
                .payload(value)
                .timestamp(timestamp_ms);
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    self.pending.push_back(delivery);
                    return Ok(());
                }
                Err((error, _)) => {
                    if self.pending.is_empty() {
                        bail!("cannot produce to {topic}: {error}");
                    }
                    self.await_oldest().await?;
                }
            }
        }
    }

    async fn await_oldest(&mut self) -> Result<()> {
        if let Some(delivery) = self.pending.pop_front()
            && !matches!(delivery.await, Ok(Ok(_)))
        {
            bail!("a record was not delivered");
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<()> {
        while !self.pending.is_empty() {
            self.await_oldest().await?;
        }
        Ok(())
    }
}

/// One query's measurements.
struct QueryResult {
    name: String,
    output_rows: usize,
    datafusion_seconds: f64,
    engine_seconds: f64,
    generated_seconds: f64,
    end_to_end_seconds: f64,
    end_to_end_cpu_seconds: f64,
}

/// Runs the benchmark: generates `bids` bids, loads them, and measures every query.
pub async fn run(connection: &KafkaConnection, bench: NexmarkBench) -> Result<()> {
    if bench.bids == 0 {
        bail!("--events must be positive");
    }
    let queries: Vec<(&str, &str)> = if bench.queries.is_empty() {
        QUERIES.to_vec()
    } else {
        bench
            .queries
            .iter()
            .map(|name| {
                QUERIES
                    .iter()
                    .find(|(q, _)| q.eq_ignore_ascii_case(name))
                    .copied()
                    .with_context(|| {
                        format!(
                            "unknown query {name}; Eddy runs {}",
                            QUERIES.iter().map(|q| q.0).collect::<Vec<_>>().join(", ")
                        )
                    })
            })
            .collect::<Result<_>>()?
    };

    let bids: Vec<Bid> = EventGenerator::new(NexmarkConfig::default())
        .with_type_filter(EventType::Bid)
        .take(bench.bids)
        .filter_map(|event| match event {
            Event::Bid(bid) => Some(bid),
            _ => None,
        })
        .collect();
    let payloads: Vec<Vec<u8>> = bids
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<_, _>>()
        .context("cannot encode a bid")?;
    let input_bytes: usize = payloads.iter().map(Vec::len).sum();

    let BenchEngine {
        engine,
        config,
        _state_dir,
    } = BenchEngine::start(connection).await?;
    let mut session = Session::new();
    execute(
        &engine,
        &mut session,
        &bid_stream("nexmark_bid", bench.partitions),
    )
    .await?;
    execute(&engine, &mut session, "SET 'auto.offset.reset'='earliest';").await?;
    execute(
        &engine,
        &mut session,
        &format!(
            "CREATE STREAM bid_generated WITH (CONNECTOR='nexmark', EVENT_TYPE='bid', MAX_EVENTS={});",
            bench.bids
        ),
    )
    .await?;
    let bid_topic = config.physical_topic("nexmark_bid");

    let producer = connection.producer()?;
    let mut sender = Sender::new(&producer);
    let started = Instant::now();
    for (bid, payload) in bids.iter().zip(&payloads) {
        sender
            .send(
                &bid_topic,
                &bid.auction.to_string(),
                payload,
                bid.date_time as i64,
            )
            .await?;
    }
    sender.finish().await?;
    let produce_seconds = started.elapsed().as_secs_f64();

    let raw_consume_seconds = raw_consume(connection, &bid_topic, bids.len()).await?;
    let pipe_topic = config.physical_topic("nexmark_raw_pipe");
    connection
        .create_topic(&pipe_topic, bench.partitions, 1, &[])
        .await
        .context("cannot create the raw pipe's topic")?;
    let raw_pipe_seconds = raw_pipe(connection, &bid_topic, &pipe_topic, bids.len()).await?;

    let arrow_bids = bids_batch(&bids)?;
    let raw_batches = raw_batches(&bids, &payloads);
    let mut results = Vec::new();
    for (name, sql) in queries {
        // DataFusion batch execution of the same query over the same bids, in memory.
        let context = SessionContext::new();
        let table = MemTable::try_new(arrow_bids.schema(), vec![vec![arrow_bids.clone()]])?;
        context.register_table("bid", Arc::new(table))?;
        let started = Instant::now();
        let expected: usize = context
            .sql(sql)
            .await?
            .collect()
            .await?
            .iter()
            .map(RecordBatch::num_rows)
            .sum();
        let datafusion_seconds = started.elapsed().as_secs_f64();

        // Eddy's per-batch work, in memory.
        let mut offline = engine
            .offline_query(sql)
            .await
            .with_context(|| format!("cannot plan {name}"))?;
        let started = Instant::now();
        let mut produced = 0;
        for raw in &raw_batches {
            produced += offline.run(raw)?;
        }
        let engine_seconds = started.elapsed().as_secs_f64();
        if produced != expected {
            bail!("{name}: the engine produced {produced} rows, DataFusion {expected}");
        }

        // The runtime without Kafka: a push query over a generated stream of the same bids.
        let generated_sql = sql.replacen("FROM bid", "FROM bid_generated", 1);
        let started = Instant::now();
        let generated_rows = push_rows(&engine, &mut session, &generated_sql).await?;
        let generated_seconds = started.elapsed().as_secs_f64();
        if generated_rows != expected {
            bail!(
                "{name}: over the generator the engine produced {generated_rows} rows, DataFusion {expected}"
            );
        }

        // End to end, Kafka to Kafka.
        let cpu_before = process_cpu_seconds();
        let started = Instant::now();
        let output = format!("{name}_out");
        execute(
            &engine,
            &mut session,
            &format!("CREATE STREAM {output} AS {sql};"),
        )
        .await?;
        wait_for_records(
            connection,
            &config.physical_topic(&output.to_uppercase()),
            expected,
        )
        .await
        .with_context(|| format!("{name} end to end"))?;
        let end_to_end_seconds = started.elapsed().as_secs_f64();
        let end_to_end_cpu_seconds = process_cpu_seconds() - cpu_before;
        results.push(QueryResult {
            name: name.to_owned(),
            output_rows: expected,
            datafusion_seconds,
            engine_seconds,
            generated_seconds,
            end_to_end_seconds,
            end_to_end_cpu_seconds,
        });
    }
    let latency = measure_latency(
        &engine,
        &mut session,
        connection,
        &config,
        bench.partitions,
        bench.latency_rate,
        bench.latency_seconds,
    )
    .await
    .context("latency run")?;
    engine.shutdown().await;

    let events = bids.len() as f64;
    println!(
        "{} bids ({:.1} MB of JSON), {} partitions; produced at {:.0} events/s; \
         raw librdkafka consume {:.0} events/s; raw pipe (consume + produce) {:.0} events/s",
        bids.len(),
        input_bytes as f64 / 1e6,
        bench.partitions,
        events / produce_seconds,
        events / raw_consume_seconds,
        events / raw_pipe_seconds
    );
    let mut table = comfy_table::Table::new();
    table.set_header(vec![
        "query",
        "output rows",
        "DataFusion batch (events/s)",
        "engine only, 1 thread (events/s)",
        "generator → engine (events/s)",
        "end to end (events/s)",
        "end to end (events per CPU-second)",
        "end to end / raw consume",
        "end to end / raw pipe",
    ]);
    for result in &results {
        table.add_row(vec![
            result.name.clone(),
            result.output_rows.to_string(),
            format!("{:.0}", events / result.datafusion_seconds),
            format!("{:.0}", events / result.engine_seconds),
            format!("{:.0}", events / result.generated_seconds),
            format!("{:.0}", events / result.end_to_end_seconds),
            format!(
                "{:.0}",
                events / result.end_to_end_cpu_seconds.max(f64::EPSILON)
            ),
            format!(
                "{:.0}%",
                100.0 * raw_consume_seconds / result.end_to_end_seconds
            ),
            format!(
                "{:.0}%",
                100.0 * raw_pipe_seconds / result.end_to_end_seconds
            ),
        ]);
    }
    println!("{table}");
    println!(
        "latency of q0 end to end at {} bids/s for {} s ({} bids): p50 {} ms, p99 {} ms, max {} ms",
        bench.latency_rate,
        bench.latency_seconds,
        latency.samples,
        latency.p50_ms,
        latency.p99_ms,
        latency.max_ms
    );
    println!(
        "peak RSS of this process (engine, and the embedded broker when no Kafka was given): {} MB",
        peak_rss_kb().map_or("?".to_owned(), |kb| (kb / 1024).to_string())
    );
    Ok(())
}

async fn execute(engine: &Engine, session: &mut Session, sql: &str) -> Result<()> {
    crate::bench::execute(engine, session, sql).await.map(drop)
}

/// Runs `select` as a push query to its end (a generated stream with MAX_EVENTS ends); returns the
/// rows it produced.
async fn push_rows(engine: &Engine, session: &mut Session, select: &str) -> Result<usize> {
    let mut results = engine
        .execute(session, &format!("{select} EMIT CHANGES;"))
        .await
        .with_context(|| format!("statement failed: {select}"))?;
    let Some(eddy_engine::StatementResult::Push(mut push)) = results.pop() else {
        bail!("not a push query: {select}");
    };
    let mut rows = 0;
    while let Some(batch) = push.next_batch().await {
        rows += batch.num_rows();
    }
    Ok(rows)
}

/// End-to-end latencies of one run, in milliseconds.
struct Latency {
    samples: usize,
    p50_ms: i64,
    p99_ms: i64,
    max_ms: i64,
}

/// Runs q0 over a new bid stream while bids arrive at `rate` per second for `seconds`, each with
/// `date_time` = the wall-clock time it was sent; the latency of an output row is its arrival time
/// at a consumer of the output topic minus that `date_time`.
async fn measure_latency(
    engine: &Engine,
    session: &mut Session,
    connection: &KafkaConnection,
    config: &EngineConfig,
    partitions: i32,
    rate: u32,
    seconds: u32,
) -> Result<Latency> {
    if rate == 0 || seconds == 0 {
        bail!("--latency-rate and --latency-seconds must be positive");
    }
    execute(
        engine,
        session,
        &bid_stream("nexmark_bid_live", partitions).replacen("STREAM bid ", "STREAM bid_live ", 1),
    )
    .await?;
    execute(
        engine,
        session,
        "CREATE STREAM q0_live AS SELECT auction, bidder, price, date_time, extra FROM bid_live;",
    )
    .await?;
    let input = config.physical_topic("nexmark_bid_live");
    let output = config.physical_topic("Q0_LIVE");
    // The query starts from the end of its (empty) input: wait until its consumer has joined,
    // or the first bids would be missed.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let consumer: BaseConsumer = connection
        .client_config()
        .set("group.id", format!("{output}-latency"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .context("cannot create the latency consumer")?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(&output, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let expected = rate as usize * seconds as usize;
    let collector = tokio::task::spawn_blocking(move || -> Result<Vec<i64>> {
        let mut latencies = Vec::with_capacity(expected);
        let deadline = Instant::now() + Duration::from_secs(u64::from(seconds) + 120);
        while latencies.len() < expected && Instant::now() < deadline {
            let Some(message) = consumer.poll(Duration::from_millis(50)) else {
                continue;
            };
            let message = message.context("latency consume")?;
            let arrived = wall_clock_ms();
            let sent = message
                .payload()
                .and_then(|value| serde_json::from_slice::<serde_json::Value>(value).ok())
                .and_then(|row| row.get("DATE_TIME").and_then(serde_json::Value::as_i64));
            if let Some(sent) = sent {
                latencies.push(arrived - sent);
            }
        }
        Ok(latencies)
    });

    let template: Vec<Bid> = EventGenerator::new(NexmarkConfig::default())
        .with_type_filter(EventType::Bid)
        .take(1000)
        .filter_map(|event| match event {
            Event::Bid(bid) => Some(bid),
            _ => None,
        })
        .collect();
    let producer = connection.producer()?;
    let mut sender = Sender::new(&producer);
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let started = tokio::time::Instant::now();
    for i in 0..expected {
        tokio::time::sleep_until(started + interval.mul_f64(i as f64)).await;
        let mut bid = template[i % template.len()].clone();
        bid.date_time = wall_clock_ms() as u64;
        let value = serde_json::to_vec(&bid).context("cannot encode a bid")?;
        sender
            .send(
                &input,
                &bid.auction.to_string(),
                &value,
                bid.date_time as i64,
            )
            .await?;
    }
    sender.finish().await?;
    let mut latencies = collector.await.context("latency consumer")??;
    if latencies.len() < expected {
        bail!(
            "q0 delivered {} of {expected} bids within 120 s after the last was sent",
            latencies.len()
        );
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    Ok(Latency {
        samples: latencies.len(),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    })
}

fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The bids as one Arrow batch with the stream's columns.
fn bids_batch(bids: &[Bid]) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, true),
        Field::new("bidder", DataType::Int64, true),
        Field::new("price", DataType::Int64, true),
        Field::new("channel", DataType::Utf8, true),
        Field::new("url", DataType::Utf8, true),
        Field::new("date_time", DataType::Int64, true),
        Field::new("extra", DataType::Utf8, true),
    ]));
    let ints = |f: fn(&Bid) -> i64| Arc::new(Int64Array::from_iter_values(bids.iter().map(f)));
    let strings = |f: fn(&Bid) -> &str| Arc::new(StringArray::from_iter_values(bids.iter().map(f)));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            ints(|b| b.auction as i64),
            ints(|b| b.bidder as i64),
            ints(|b| b.price as i64),
            strings(|b| &b.channel),
            strings(|b| &b.url),
            ints(|b| b.date_time as i64),
            strings(|b| &b.extra),
        ],
    )?)
}

/// The bids as the raw batches a partition task would receive.
fn raw_batches(bids: &[Bid], payloads: &[Vec<u8>]) -> Vec<RawBatch> {
    let size = batch_records();
    let mut key = String::new();
    bids.chunks(size)
        .zip(payloads.chunks(size))
        .enumerate()
        .map(|(chunk, (bids, payloads))| {
            let mut raw = RawBatch::with_capacity(bids.len(), bids.len() * 200);
            for (i, (bid, payload)) in bids.iter().zip(payloads).enumerate() {
                key.clear();
                let _ = write!(key, "{}", bid.auction);
                raw.push(
                    Some(key.as_bytes()),
                    Some(payload),
                    bid.date_time as i64,
                    0,
                    (chunk * size + i) as i64,
                );
            }
            raw
        })
        .collect()
}

/// Seconds librdkafka takes to read `records` records of `topic` from the beginning.
async fn raw_consume(connection: &KafkaConnection, topic: &str, records: usize) -> Result<f64> {
    let consumer: BaseConsumer = connection
        .client_config()
        .set("group.id", format!("{topic}-raw"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("cannot create the raw consumer")?;
    let partitions = connection
        .topic(topic)
        .await?
        .context("the bid topic is gone")?
        .partitions;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    let mut seen = 0usize;
    let mut bytes = 0usize;
    while seen < records {
        if Instant::now() > deadline {
            bail!("raw consume read {seen} of {records} records in 600 s");
        }
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.context("raw consume")?;
            bytes += message.payload().map_or(0, <[u8]>::len);
            seen += 1;
        }
    }
    std::hint::black_box(bytes);
    Ok(started.elapsed().as_secs_f64())
}

/// Seconds librdkafka takes to copy `records` records of `input` (from the beginning) to `output`,
/// every delivery acknowledged.
async fn raw_pipe(
    connection: &KafkaConnection,
    input: &str,
    output: &str,
    records: usize,
) -> Result<f64> {
    let consumer: rdkafka::consumer::StreamConsumer = connection
        .client_config()
        .set("group.id", format!("{input}-raw-pipe"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("cannot create the raw pipe's consumer")?;
    let partitions = connection
        .topic(input)
        .await?
        .context("the bid topic is gone")?
        .partitions;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(input, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let producer = connection.producer()?;
    let mut sender = Sender::new(&producer);
    let started = Instant::now();
    for _ in 0..records {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .context("the raw pipe waited 60 s for a record")?
            .context("raw pipe consume")?;
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        let timestamp = message.timestamp().to_millis().unwrap_or(0);
        sender
            .send(
                output,
                &key,
                message.payload().unwrap_or_default(),
                timestamp,
            )
            .await?;
    }
    sender.finish().await?;
    Ok(started.elapsed().as_secs_f64())
}

/// Waits until `topic` holds `records` records (at most 600 s).
async fn wait_for_records(connection: &KafkaConnection, topic: &str, records: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let held: i64 = connection
            .watermarks(topic)
            .await
            .map(|w| w.iter().map(|(low, high)| high - low).sum())
            .unwrap_or(0);
        if held >= records as i64 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the output topic holds {held} of {records} records after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// CPU seconds (user + system) this process has used, from /proc.
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    // Linux's USER_HZ is 100 on every architecture Eddy builds for.
    100.0
}

/// Peak resident set size of this process in KiB.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
}
