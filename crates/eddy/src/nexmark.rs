//! `eddy bench load-nexmark` and `eddy bench nexmark`: the Nexmark benchmark over Kafka.
//!
//! Events come from the `nexmark` crate's generator (the reference data of Flink's, RisingWave's
//! and Arroyo's Nexmark runs) and are written as JSON to `<prefix>person`, `<prefix>auction` and
//! `<prefix>bid`. For each query, `eddy bench nexmark` measures, over the same bids:
//!
//! - **DataFusion batch**: the query as one DataFusion batch job over Arrow data in memory — a
//!   bound on what the SQL itself costs;
//! - **engine only**: Eddy's per-batch work (JSON decode → stages → JSON encode) in memory, one
//!   thread, no broker; the fastest of [`ENGINE_ONLY_PASSES`] passes, since one pass lasts a
//!   fraction of a second and the embedded broker's own work beside it (it has just written the
//!   raw pipe's topic) would otherwise decide the figure;
//! - **generator → engine**: the query as a push query over a generated stream
//!   (`CONNECTOR='nexmark'`): generating and JSON-encoding the events, the partition task's
//!   decode and stages, rows handed to the client; the runtime without Kafka;
//! - **end to end**: `CREATE STREAM ... AS SELECT` from the Kafka topic to a Kafka topic, timed
//!   until the output topic holds every output row; with the CPU time the process spent;
//! - **raw consume**: librdkafka reading the input topic and doing nothing else — the ceiling of
//!   any consumer on this broker; for each stateful query, of the topics it reads (persons and
//!   auctions are larger records, written in smaller batches, and read slower than bids);
//! - **raw pipe**: librdkafka reading the input topic and producing every record unchanged to
//!   another topic — the ceiling of a query that writes every row (q0, q1) on this broker;
//! - **latency**: q0 running while bids arrive at a steady rate, each stamped with the wall-clock
//!   time it was sent (`date_time`); a consumer of the output takes the difference on arrival.
//!
//! The stateless queries ([`QUERIES`]) are q0, q1, q2, q14, q21 and q22. The stateful ones
//! ([`STATEFUL_QUERIES`]: q3, q4, q5, q7, q8, q11, q15, q16, q17; joins, windows, sessions,
//! aggregations with `COUNT(DISTINCT ...)`, aggregations over tables) read persons and auctions
//! too, written to their own topics. They are measured end to end only, until their result (a
//! stream's topic, or a table counted by a read-your-writes pull query) holds as many rows as
//! DataFusion's batch version of the query over the same events; q4, whose five rows exist from
//! its first auctions on, until its rows hold DataFusion's values; q11 and q15-q17, whose rows
//! exist long before their last bid, until the table's sums of their counts (bids, distinct
//! bidders, ...) are DataFusion's too.
//!
//! Output row counts of the engine and of DataFusion must agree, so every run also checks results.

use std::collections::HashSet;
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
use nexmark::event::{Auction, Bid, Event, EventType, Person};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The stateless Nexmark queries Eddy can express today, in its SQL, over the stream `bid`; the
/// same text runs in DataFusion.
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
    // Nexmark's q14 (a calculation with a CASE and a UDF) with its hour and `count_char(extra,
    // 'c')` written in built-in functions: `date_time` is epoch milliseconds here.
    (
        "q14",
        "SELECT auction, bidder, 0.908 * price AS price, \
         CASE WHEN (date_time / 3600000) % 24 BETWEEN 8 AND 18 THEN 'dayTime' \
         WHEN (date_time / 3600000) % 24 <= 6 OR (date_time / 3600000) % 24 >= 20 THEN 'nightTime' \
         ELSE 'otherTime' END AS bid_time_type, \
         date_time, extra, character_length(extra) - character_length(replace(extra, 'c', '')) AS c_counts \
         FROM bid WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000",
    ),
    // Nexmark's q21: a channel id from the channel's name, or else from the URL by a regular
    // expression (its `REGEXP_EXTRACT(url, ..., 2)` is `regexp_match(url, ...)[2]`).
    (
        "q21",
        "SELECT auction, bidder, price, channel, \
         CASE WHEN lower(channel) = 'apple' THEN '0' WHEN lower(channel) = 'google' THEN '1' \
         WHEN lower(channel) = 'facebook' THEN '2' WHEN lower(channel) = 'baidu' THEN '3' \
         ELSE regexp_match(url, '(&|^)channel_id=([^&]*)')[2] END AS channel_id \
         FROM bid WHERE regexp_match(url, '(&|^)channel_id=([^&]*)')[2] IS NOT NULL \
         OR lower(channel) IN ('apple', 'google', 'facebook', 'baidu')",
    ),
    // Nexmark's q22: the first three directories of the bid's URL.
    (
        "q22",
        "SELECT auction, bidder, price, channel, split_part(url, '/', 4) AS dir1, \
         split_part(url, '/', 5) AS dir2, split_part(url, '/', 6) AS dir3 FROM bid",
    ),
];

/// What a stateful query's result is, and so how the bench knows it is complete.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    /// A stream: complete when its topic holds every expected row.
    Stream,
    /// A table: complete when a read-your-writes pull query counts every expected row.
    Table,
    /// A table whose rows all exist long before its inputs are read (q4's five categories):
    /// complete when a read-your-writes pull query of its `key` and `value` columns gives
    /// DataFusion's rows (the first two columns of its query), values within a relative 1e-9.
    TableValues {
        key: &'static str,
        value: &'static str,
    },
    /// A table whose row count is reached long before its inputs are read (one row per day,
    /// channel or bidder session): complete when a read-your-writes pull query gives
    /// DataFusion's row count and DataFusion's sum of each of `columns` (integer columns, such
    /// as each row's count of bids, whose sum is final only once every bid is counted).
    TableTotals { columns: &'static [&'static str] },
}

/// Which Nexmark inputs a stateful query reads: the events it is measured against.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Inputs {
    persons: bool,
    auctions: bool,
    bids: bool,
}

/// A Nexmark query that keeps state (joins, windows, aggregations), over `person` (a table keyed
/// by id), `person_stream` (the same topic as a stream), `auction` (keyed by id) and `bid`.
struct StatefulQuery {
    name: &'static str,
    /// What it computes; where that differs from Nexmark's definition, how.
    what: &'static str,
    /// The statements that create its result, in order; the last creates `output`.
    statements: &'static [&'static str],
    output: &'static str,
    output_kind: Output,
    /// The same result as one DataFusion query over the events in memory: its row count is the
    /// count Eddy's result must reach (and, for [`Output::TableValues`], its rows the rows).
    datafusion: &'static str,
    inputs: Inputs,
}

/// Nexmark's stateful queries in Eddy's SQL. Not expressed yet: q6 (an OVER window of each
/// seller's last 10 auctions), q9, q18 and q19 (`ROW_NUMBER` per key), q12 (processing-time
/// windows), q13 (a join with a bounded side input), q20 (a bid-auction join without a time bound)
/// and q10 (writing files).
const STATEFUL_QUERIES: &[StatefulQuery] = &[
    StatefulQuery {
        name: "q3",
        what: "local item suggestion: auctions of category 10 joined with their seller (a table) in OR, ID or CA (the generator writes states in lower case)",
        statements: &[
            "CREATE STREAM q3_out AS SELECT P.name AS name, P.city AS city, P.state AS state, A.id AS id \
             FROM auction A JOIN person P ON A.seller = P.id \
             WHERE A.category = 10 AND (P.state = 'or' OR P.state = 'id' OR P.state = 'ca');",
        ],
        output: "q3_out",
        output_kind: Output::Stream,
        datafusion: "SELECT P.name, P.city, P.state, A.id FROM auction A JOIN person P ON A.seller = P.id \
             WHERE A.category = 10 AND P.state IN ('or', 'id', 'ca')",
        inputs: Inputs {
            persons: true,
            auctions: true,
            bids: false,
        },
    },
    StatefulQuery {
        name: "q4",
        what: "average winning price per category: the auction-bid join (bids between the auction's start and expiry), MAX per auction, then AVG over that table",
        statements: &[
            "CREATE TABLE q4_winning AS SELECT A.id AS id, A.category AS category, MAX(B.price) AS final \
             FROM auction A JOIN bid B WITHIN (0 SECONDS, 1 MINUTE) GRACE PERIOD 1 MINUTE ON A.id = B.auction \
             WHERE B.date_time >= A.date_time AND B.date_time <= A.expires GROUP BY A.id, A.category;",
            "CREATE TABLE q4_out AS SELECT category, AVG(final) AS avg_final FROM q4_winning GROUP BY category;",
        ],
        output: "q4_out",
        output_kind: Output::TableValues {
            key: "category",
            value: "avg_final",
        },
        datafusion: "SELECT category, AVG(final) FROM (SELECT A.id, A.category, MAX(B.price) AS final \
             FROM auction A JOIN bid B ON A.id = B.auction \
             WHERE B.date_time BETWEEN A.date_time AND A.expires GROUP BY A.id, A.category) GROUP BY category",
        inputs: Inputs {
            persons: false,
            auctions: true,
            bids: true,
        },
    },
    StatefulQuery {
        name: "q5",
        what: "bids per auction per hopping window (10 s, every 2 s); Nexmark's q5 then keeps each window's hottest auction",
        statements: &[
            "CREATE TABLE q5_out AS SELECT auction, COUNT(*) AS num FROM bid \
             WINDOW HOPPING (SIZE 10 SECONDS, ADVANCE BY 2 SECONDS) GROUP BY auction;",
        ],
        output: "q5_out",
        output_kind: Output::Table,
        datafusion: "SELECT DISTINCT auction, window_start FROM (SELECT auction, unnest(make_array(\
             date_time - date_time % 2000, date_time - date_time % 2000 - 2000, \
             date_time - date_time % 2000 - 4000, date_time - date_time % 2000 - 6000, \
             date_time - date_time % 2000 - 8000)) AS window_start FROM bid)",
        inputs: Inputs {
            persons: false,
            auctions: false,
            bids: true,
        },
    },
    StatefulQuery {
        name: "q7",
        what: "highest bid per auction per tumbling 10 s window; Nexmark's q7 takes the highest of all auctions per window",
        statements: &[
            "CREATE TABLE q7_out AS SELECT auction, MAX(price) AS price FROM bid \
             WINDOW TUMBLING (SIZE 10 SECONDS) GROUP BY auction;",
        ],
        output: "q7_out",
        output_kind: Output::Table,
        datafusion: "SELECT auction, date_time - date_time % 10000 AS window_start, MAX(price) FROM bid \
             GROUP BY auction, date_time - date_time % 10000",
        inputs: Inputs {
            persons: false,
            auctions: false,
            bids: true,
        },
    },
    StatefulQuery {
        name: "q8",
        what: "new users who opened an auction: persons joined with the auctions they sell within 10 s (a stream-stream join; Nexmark's q8 uses one tumbling window)",
        statements: &[
            "CREATE STREAM q8_out AS SELECT P.id AS id, P.name AS name, A.reserve AS reserve \
             FROM person_stream P JOIN auction A WITHIN 10 SECONDS GRACE PERIOD 1 MINUTE ON P.id = A.seller;",
        ],
        output: "q8_out",
        output_kind: Output::Stream,
        datafusion: "SELECT P.id, P.name, A.reserve FROM person P JOIN auction A ON P.id = A.seller \
             WHERE A.date_time BETWEEN P.date_time - 10000 AND P.date_time + 10000",
        inputs: Inputs {
            persons: true,
            auctions: true,
            bids: false,
        },
    },
    StatefulQuery {
        name: "q11",
        what: "bids per bidder session (records at most 10 s apart): a session window",
        statements: &[
            "CREATE TABLE q11_out AS SELECT bidder, COUNT(*) AS bid_count FROM bid \
             WINDOW SESSION (10 SECONDS) GROUP BY bidder;",
        ],
        output: "q11_out",
        output_kind: Output::TableTotals {
            columns: &["bid_count"],
        },
        // A bid more than 10 s after its bidder's previous one starts a session; the running
        // count of starts numbers them (peers share one: RANGE frame, the default).
        datafusion: "SELECT bidder, COUNT(*) AS bid_count FROM (SELECT bidder, \
             SUM(starts) OVER (PARTITION BY bidder ORDER BY date_time) AS session FROM (SELECT bidder, date_time, \
             CASE WHEN date_time - LAG(date_time) OVER (PARTITION BY bidder ORDER BY date_time) <= 10000 \
             THEN 0 ELSE 1 END AS starts FROM bid)) GROUP BY bidder, session",
        inputs: Inputs {
            persons: false,
            auctions: false,
            bids: true,
        },
    },
    StatefulQuery {
        name: "q15",
        what: "bidding statistics per day: bids, bidders and auctions in three price ranges, with COUNT(DISTINCT ...) (Nexmark's FILTER clauses written as CASE)",
        statements: &[Q15],
        output: "q15_out",
        output_kind: Output::TableTotals {
            columns: &[
                "total_bids",
                "rank1_bids",
                "total_bidders",
                "rank1_bidders",
                "total_auctions",
                "rank3_auctions",
            ],
        },
        datafusion: Q15_DATAFUSION,
        inputs: Inputs {
            persons: false,
            auctions: false,
            bids: true,
        },
    },
    StatefulQuery {
        name: "q16",
        what: "channel statistics per day: q15 per channel (10 004 channels)",
        statements: &[Q16],
        output: "q16_out",
        output_kind: Output::TableTotals {
            columns: &[
                "total_bids",
                "rank2_bids",
                "total_bidders",
                "rank2_bidders",
                "total_auctions",
            ],
        },
        datafusion: Q16_DATAFUSION,
        inputs: Inputs {
            persons: false,
            auctions: false,
            bids: true,
        },
    },
    StatefulQuery {
        name: "q17",
        what: "auction statistics per day: bids in three price ranges, MIN, MAX, AVG and SUM of the price, per auction",
        statements: &[
            "CREATE TABLE q17_out AS SELECT auction, date_time / 86400000 AS day, COUNT(*) AS total_bids, \
             SUM(CASE WHEN price < 10000 THEN 1 ELSE 0 END) AS rank1_bids, \
             SUM(CASE WHEN price >= 10000 AND price < 1000000 THEN 1 ELSE 0 END) AS rank2_bids, \
             SUM(CASE WHEN price >= 1000000 THEN 1 ELSE 0 END) AS rank3_bids, \
             MIN(price) AS min_price, MAX(price) AS max_price, AVG(price) AS avg_price, SUM(price) AS sum_price \
             FROM bid GROUP BY auction, date_time / 86400000;",
        ],
        output: "q17_out",
        output_kind: Output::TableTotals {
            columns: &[
                "total_bids",
                "rank1_bids",
                "rank3_bids",
                "min_price",
                "max_price",
                "sum_price",
            ],
        },
        datafusion: "SELECT auction, date_time / 86400000 AS day, COUNT(*) AS total_bids, \
             SUM(CASE WHEN price < 10000 THEN 1 ELSE 0 END) AS rank1_bids, \
             SUM(CASE WHEN price >= 1000000 THEN 1 ELSE 0 END) AS rank3_bids, \
             MIN(price) AS min_price, MAX(price) AS max_price, SUM(price) AS sum_price \
             FROM bid GROUP BY auction, date_time / 86400000",
        inputs: Inputs {
            persons: false,
            auctions: false,
            bids: true,
        },
    },
];

/// The columns of Nexmark's q15 and q16 (`COUNT(*) FILTER (WHERE ...)` written as `SUM(CASE
/// ...)`, `COUNT(DISTINCT x) FILTER (WHERE ...)` as `COUNT(DISTINCT CASE ... THEN x END)`), after
/// their group keys.
macro_rules! bid_statistics {
    () => {
        "COUNT(*) AS total_bids, \
         SUM(CASE WHEN price < 10000 THEN 1 ELSE 0 END) AS rank1_bids, \
         SUM(CASE WHEN price >= 10000 AND price < 1000000 THEN 1 ELSE 0 END) AS rank2_bids, \
         SUM(CASE WHEN price >= 1000000 THEN 1 ELSE 0 END) AS rank3_bids, \
         COUNT(DISTINCT bidder) AS total_bidders, \
         COUNT(DISTINCT CASE WHEN price < 10000 THEN bidder END) AS rank1_bidders, \
         COUNT(DISTINCT CASE WHEN price >= 10000 AND price < 1000000 THEN bidder END) AS rank2_bidders, \
         COUNT(DISTINCT CASE WHEN price >= 1000000 THEN bidder END) AS rank3_bidders, \
         COUNT(DISTINCT auction) AS total_auctions, \
         COUNT(DISTINCT CASE WHEN price < 10000 THEN auction END) AS rank1_auctions, \
         COUNT(DISTINCT CASE WHEN price >= 10000 AND price < 1000000 THEN auction END) AS rank2_auctions, \
         COUNT(DISTINCT CASE WHEN price >= 1000000 THEN auction END) AS rank3_auctions \
         FROM bid"
    };
}

const Q15: &str = concat!(
    "CREATE TABLE q15_out AS SELECT date_time / 86400000 AS day, ",
    bid_statistics!(),
    " GROUP BY date_time / 86400000;"
);
const Q15_DATAFUSION: &str = concat!(
    "SELECT date_time / 86400000 AS day, ",
    bid_statistics!(),
    " GROUP BY date_time / 86400000"
);
const Q16: &str = concat!(
    "CREATE TABLE q16_out AS SELECT channel, date_time / 86400000 AS day, ",
    bid_statistics!(),
    " GROUP BY channel, date_time / 86400000;"
);
const Q16_DATAFUSION: &str = concat!(
    "SELECT channel, date_time / 86400000 AS day, ",
    bid_statistics!(),
    " GROUP BY channel, date_time / 86400000"
);

/// The person table and stream and the auction stream the stateful queries read.
fn person_and_auction_sources(
    person_topic: &str,
    auction_topic: &str,
    partitions: i32,
) -> [String; 3] {
    let person_columns = "name STRING, email_address STRING, credit_card STRING, city STRING, \
                          state STRING, date_time BIGINT, extra STRING";
    [
        format!(
            "CREATE TABLE person (id BIGINT PRIMARY KEY, {person_columns}) WITH (KAFKA_TOPIC='{person_topic}', \
             KEY_FORMAT='JSON', VALUE_FORMAT='JSON', PARTITIONS={partitions});"
        ),
        format!(
            "CREATE STREAM person_stream (id BIGINT KEY, {person_columns}) WITH (KAFKA_TOPIC='{person_topic}', \
             KEY_FORMAT='JSON', VALUE_FORMAT='JSON', PARTITIONS={partitions});"
        ),
        format!(
            "CREATE STREAM auction (id BIGINT KEY, item_name STRING, description STRING, initial_bid BIGINT, \
             reserve BIGINT, date_time BIGINT, expires BIGINT, seller BIGINT, category BIGINT, extra STRING) \
             WITH (KAFKA_TOPIC='{auction_topic}', KEY_FORMAT='JSON', VALUE_FORMAT='JSON', PARTITIONS={partitions});"
        ),
    ]
}

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

/// Passes of the engine-only run over the bids; the fastest is reported.
const ENGINE_ONLY_PASSES: usize = 3;

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
pub async fn run(
    connection: &KafkaConnection,
    base: &EngineConfig,
    bench: NexmarkBench,
) -> Result<()> {
    if bench.bids == 0 {
        bail!("--events must be positive");
    }
    let all_names = || {
        QUERIES
            .iter()
            .map(|q| q.0)
            .chain(STATEFUL_QUERIES.iter().map(|q| q.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut queries: Vec<(&str, &str)> = Vec::new();
    let mut stateful: Vec<&StatefulQuery> = Vec::new();
    if bench.queries.is_empty() {
        queries = QUERIES.to_vec();
        stateful = STATEFUL_QUERIES.iter().collect();
    } else {
        for name in &bench.queries {
            if let Some(query) = QUERIES.iter().find(|(q, _)| q.eq_ignore_ascii_case(name)) {
                queries.push(*query);
            } else if let Some(query) = STATEFUL_QUERIES
                .iter()
                .find(|q| q.name.eq_ignore_ascii_case(name))
            {
                stateful.push(query);
            } else {
                bail!("unknown query {name}; Eddy runs {}", all_names());
            }
        }
    }

    // The event stream up to the `bids`-th bid: the same bids as a bid-only generator, with the
    // persons and auctions generated between them.
    let mut bids: Vec<Bid> = Vec::with_capacity(bench.bids);
    let mut persons: Vec<Person> = Vec::new();
    let mut auctions: Vec<Auction> = Vec::new();
    for event in EventGenerator::new(NexmarkConfig::default()) {
        match event {
            Event::Bid(bid) => bids.push(bid),
            Event::Person(person) => persons.push(person),
            Event::Auction(auction) => auctions.push(auction),
        }
        if bids.len() >= bench.bids {
            break;
        }
    }
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
    } = BenchEngine::start(connection, base).await?;
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
    if !stateful.is_empty() {
        for statement in
            person_and_auction_sources("nexmark_person", "nexmark_auction", bench.partitions)
        {
            execute(&engine, &mut session, &statement).await?;
        }
        let producer = connection.producer()?;
        let mut sender = Sender::new(&producer);
        let person_topic = config.physical_topic("nexmark_person");
        for person in &persons {
            let value = serde_json::to_vec(person).context("cannot encode a person")?;
            sender
                .send(
                    &person_topic,
                    &person.id.to_string(),
                    &value,
                    person.date_time as i64,
                )
                .await?;
        }
        let auction_topic = config.physical_topic("nexmark_auction");
        for auction in &auctions {
            let value = serde_json::to_vec(auction).context("cannot encode an auction")?;
            sender
                .send(
                    &auction_topic,
                    &auction.id.to_string(),
                    &value,
                    auction.date_time as i64,
                )
                .await?;
        }
        sender.finish().await?;
    }

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

    let fetch_wait_ms = config.max_batch_wait_ms;
    let raw_consume_seconds =
        raw_consume(connection, fetch_wait_ms, &[&bid_topic], bids.len()).await?;
    let pipe_topic = config.physical_topic("nexmark_raw_pipe");
    connection
        .create_topic(&pipe_topic, bench.partitions, 1, &[])
        .await
        .context("cannot create the raw pipe's topic")?;
    let raw_pipe_seconds = raw_pipe(
        connection,
        fetch_wait_ms,
        &bid_topic,
        &pipe_topic,
        bids.len(),
    )
    .await?;

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
        let mut engine_seconds = f64::INFINITY;
        for _ in 0..ENGINE_ONLY_PASSES {
            let started = Instant::now();
            let mut produced = 0;
            for raw in &raw_batches {
                produced += offline.run(raw)?;
            }
            engine_seconds = engine_seconds.min(started.elapsed().as_secs_f64());
            if produced != expected {
                bail!("{name}: the engine produced {produced} rows, DataFusion {expected}");
            }
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
        // Each query is measured alone: the embedded broker does not keep up with every query
        // of the run polling it at once.
        execute(&engine, &mut session, "TERMINATE ALL;").await?;
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
    let mut stateful_results = Vec::new();
    if !stateful.is_empty() {
        let context = SessionContext::new();
        for (name, batch) in [
            ("person", persons_batch(&persons)?),
            ("auction", auctions_batch(&auctions)?),
            ("bid", arrow_bids.clone()),
        ] {
            let table = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
            context.register_table(name, Arc::new(table))?;
        }
        // The ceiling of each query is a raw consume of the topics it reads, measured once per
        // set of topics.
        let person_topic = config.physical_topic("nexmark_person");
        let auction_topic = config.physical_topic("nexmark_auction");
        let mut raw_input_seconds: Vec<(Inputs, f64)> = Vec::new();
        for query in &stateful {
            let inputs = query.inputs;
            if raw_input_seconds.iter().any(|(seen, _)| *seen == inputs) {
                continue;
            }
            let mut topics = Vec::new();
            let mut records = 0;
            for (read, topic, count) in [
                (inputs.persons, person_topic.as_str(), persons.len()),
                (inputs.auctions, auction_topic.as_str(), auctions.len()),
                (inputs.bids, bid_topic.as_str(), bids.len()),
            ] {
                if read {
                    topics.push(topic);
                    records += count;
                }
            }
            let seconds = raw_consume(connection, fetch_wait_ms, &topics, records)
                .await
                .with_context(|| format!("raw consume of {}", topics.join(", ")))?;
            raw_input_seconds.push((inputs, seconds));
        }
        for query in &stateful {
            let raw_consume_seconds = raw_input_seconds
                .iter()
                .find(|(seen, _)| *seen == query.inputs)
                .map_or(f64::NAN, |(_, seconds)| *seconds);
            let result = run_stateful(
                query,
                &context,
                &engine,
                &mut session,
                connection,
                &config,
                [persons.len(), auctions.len(), bids.len()],
            )
            .await
            .with_context(|| query.name.to_owned())?;
            stateful_results.push((result, raw_consume_seconds));
        }
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
    if !results.is_empty() {
        println!("{table}");
    }
    if !stateful_results.is_empty() {
        println!(
            "stateful queries over {} persons, {} auctions and {} bids (end to end from the beginning of the topics; events: those of the query's inputs):",
            persons.len(),
            auctions.len(),
            bids.len()
        );
        let mut table = comfy_table::Table::new();
        table.set_header(vec![
            "query",
            "input events",
            "output rows",
            "DataFusion batch (events/s)",
            "end to end (events/s)",
            "end to end (events per CPU-second)",
            "raw consume of its inputs (events/s)",
            "end to end / raw consume of its inputs",
        ]);
        for (result, raw_consume_seconds) in &stateful_results {
            let events = result.input_events as f64;
            table.add_row(vec![
                result.name.clone(),
                result.input_events.to_string(),
                result.output_rows.to_string(),
                format!("{:.0}", events / result.datafusion_seconds),
                format!("{:.0}", events / result.end_to_end_seconds),
                format!(
                    "{:.0}",
                    events / result.end_to_end_cpu_seconds.max(f64::EPSILON)
                ),
                format!("{:.0}", events / raw_consume_seconds),
                format!(
                    "{:.0}%",
                    100.0 * raw_consume_seconds / result.end_to_end_seconds
                ),
            ]);
        }
        println!("{table}");
        for query in &stateful {
            println!("{}: {}", query.name, query.what);
        }
    }
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

/// One stateful query's measurements.
struct StatefulResult {
    name: String,
    input_events: usize,
    output_rows: usize,
    datafusion_seconds: f64,
    end_to_end_seconds: f64,
    end_to_end_cpu_seconds: f64,
}

/// Runs `query` with DataFusion over the events in memory (`context`), then end to end from the
/// topics, until Eddy's result holds as many rows as DataFusion's. `counts` are the persons,
/// auctions and bids.
async fn run_stateful(
    query: &StatefulQuery,
    context: &SessionContext,
    engine: &Engine,
    session: &mut Session,
    connection: &KafkaConnection,
    config: &EngineConfig,
    counts: [usize; 3],
) -> Result<StatefulResult> {
    let started = Instant::now();
    let expected_batches = context.sql(query.datafusion).await?.collect().await?;
    let datafusion_seconds = started.elapsed().as_secs_f64();
    let expected: usize = expected_batches.iter().map(RecordBatch::num_rows).sum();
    if expected == 0 {
        bail!("DataFusion found no rows: too few events for this query");
    }
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    for statement in query.statements {
        execute(engine, session, statement).await?;
    }
    match query.output_kind {
        Output::Stream => {
            wait_for_records(
                connection,
                &config.physical_topic(&query.output.to_uppercase()),
                expected,
            )
            .await?;
        }
        Output::Table => wait_for_table_rows(engine, query.output, expected).await?,
        Output::TableValues { key, value } => {
            let expected = key_values(&expected_batches, 0, 1)?;
            wait_for_table_values(engine, query.output, key, value, &expected).await?;
        }
        Output::TableTotals { columns } => {
            let expected = totals(&expected_batches, columns)?;
            wait_for_table_totals(engine, query.output, columns, &expected).await?;
        }
    }
    let end_to_end_seconds = started.elapsed().as_secs_f64();
    let end_to_end_cpu_seconds = process_cpu_seconds() - cpu_before;
    // How each query of the chain batched its input (larger batches: fewer Kafka round trips,
    // and an aggregation writes each group once per batch).
    for metrics in engine.query_metrics(Duration::from_secs(5)).await {
        if metrics.running && metrics.batches_in > 0 {
            println!(
                "  {} {}: {} records in, {} batches in (average {:.0}), {} records out",
                query.name,
                metrics.query_id,
                metrics.records_in,
                metrics.batches_in,
                metrics.records_in as f64 / metrics.batches_in as f64,
                metrics.records_out
            );
        }
    }
    execute(engine, session, "TERMINATE ALL;").await?;
    let [persons, auctions, bids] = counts;
    let inputs = query.inputs;
    let input_events = usize::from(inputs.persons) * persons
        + usize::from(inputs.auctions) * auctions
        + usize::from(inputs.bids) * bids;
    Ok(StatefulResult {
        name: query.name.to_owned(),
        input_events,
        output_rows: expected,
        datafusion_seconds,
        end_to_end_seconds,
        end_to_end_cpu_seconds,
    })
}

/// Runs the pull query `sql` on `table` with read-your-writes every 200 ms until `check` says its
/// batches are the result wanted (`Ok(true)`) or fails (`Err`), at most 600 s; `describe` says
/// what the table holds when that runs out. A read-your-writes that gives up while the table is far
/// behind is asked again.
async fn wait_for_pull_query(
    engine: &Engine,
    table: &str,
    sql: &str,
    mut check: impl FnMut(&[RecordBatch]) -> Result<bool>,
    describe: impl Fn() -> String,
) -> Result<()> {
    let mut session = Session::new();
    execute(engine, &mut session, "SET 'eddy.read_your_writes'='true';").await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        match engine.execute(&mut session, sql).await {
            Ok(mut results) => match results.pop() {
                Some(eddy_engine::StatementResult::Rows { batches, .. }) => {
                    if check(&batches)? {
                        return Ok(());
                    }
                }
                _ => bail!("the pull query on {table} gave no rows"),
            },
            Err(error) if error.to_string().contains("did not catch up") => {}
            Err(error) => return Err(error).with_context(|| format!("reading {table}")),
        }
        if Instant::now() > deadline {
            bail!("after 600 s, {}", describe());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (at most 600 s) until a read-your-writes pull query counts `rows` rows in `table`; fails
/// if it counts more, or never gets there.
async fn wait_for_table_rows(engine: &Engine, table: &str, rows: usize) -> Result<()> {
    let counted = std::cell::Cell::new(0usize);
    wait_for_pull_query(
        engine,
        table,
        &format!("SELECT COUNT(*) AS n FROM {table};"),
        |batches| {
            let n = batches
                .iter()
                .find(|b| b.num_rows() > 0)
                .and_then(|b| {
                    b.column(0)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .map(|counts| counts.value(0))
                })
                .unwrap_or(0) as usize;
            counted.set(n);
            if n > rows {
                bail!("{table} has {n} rows, DataFusion {rows}");
            }
            Ok(n == rows)
        },
        || format!("{table} has {} of {rows} rows", counted.get()),
    )
    .await
}

/// Column `key` (as BIGINT) and column `value` (as DOUBLE) of `batches`, sorted by key.
fn key_values(batches: &[RecordBatch], key: usize, value: usize) -> Result<Vec<(i64, f64)>> {
    use datafusion::arrow::array::{Array, Float64Array};
    use datafusion::arrow::compute::cast;
    let mut rows = Vec::new();
    for batch in batches {
        let keys = cast(batch.column(key), &DataType::Int64)?;
        let values = cast(batch.column(value), &DataType::Float64)?;
        let (Some(keys), Some(values)) = (
            keys.as_any().downcast_ref::<Int64Array>(),
            values.as_any().downcast_ref::<Float64Array>(),
        ) else {
            bail!("key or value column of an unexpected type");
        };
        for row in 0..batch.num_rows() {
            if keys.is_null(row) || values.is_null(row) {
                bail!("a NULL key or value in row {row}");
            }
            rows.push((keys.value(row), values.value(row)));
        }
    }
    rows.sort_by_key(|(key, _)| *key);
    Ok(rows)
}

/// Waits (at most 600 s) until a read-your-writes pull query of `key` and `value` in `table`
/// gives `expected` (sorted by key; values within a relative 1e-9).
async fn wait_for_table_values(
    engine: &Engine,
    table: &str,
    key: &str,
    value: &str,
    expected: &[(i64, f64)],
) -> Result<()> {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
    let found = std::cell::RefCell::new(Vec::new());
    wait_for_pull_query(
        engine,
        table,
        &format!("SELECT {key}, {value} FROM {table};"),
        |batches| {
            let rows = key_values(batches, 0, 1)?;
            let matches = rows.len() == expected.len()
                && rows
                    .iter()
                    .zip(expected)
                    .all(|((k, v), (ek, ev))| k == ek && close(*v, *ev));
            *found.borrow_mut() = rows;
            Ok(matches)
        },
        || format!("{table} has {:?}; DataFusion: {expected:?}", found.borrow()),
    )
    .await
}

/// The row count of `batches`, then the sum of each of `columns` (looked up by name,
/// case-insensitively; integers, NULLs counting as 0).
fn totals(batches: &[RecordBatch], columns: &[&str]) -> Result<Vec<i64>> {
    use datafusion::arrow::array::Array;
    use datafusion::arrow::compute::{cast, sum};
    let mut totals = vec![0i64; columns.len() + 1];
    for batch in batches {
        totals[0] += batch.num_rows() as i64;
        for (total, name) in totals[1..].iter_mut().zip(columns) {
            let schema = batch.schema();
            let (index, _) = schema
                .fields()
                .iter()
                .enumerate()
                .find(|(_, field)| field.name().eq_ignore_ascii_case(name))
                .with_context(|| format!("no column {name} in {schema:?}"))?;
            if !batch.column(index).data_type().is_integer() {
                bail!("column {name} is not an integer");
            }
            let values = cast(batch.column(index), &DataType::Int64)?;
            let Some(values) = values.as_any().downcast_ref::<Int64Array>() else {
                bail!("column {name} is not an integer");
            };
            *total += sum(values).unwrap_or(0);
        }
    }
    Ok(totals)
}

/// Waits (at most 600 s) until a read-your-writes pull query of `table` gives the row count and
/// the sums of `columns` in `expected` (see [`totals`]).
async fn wait_for_table_totals(
    engine: &Engine,
    table: &str,
    columns: &[&str],
    expected: &[i64],
) -> Result<()> {
    let mut select = "SELECT COUNT(*) AS n".to_owned();
    for column in columns {
        let _ = write!(select, ", SUM({column}) AS {column}");
    }
    let _ = write!(select, " FROM {table};");
    let found = std::cell::RefCell::new(Vec::new());
    wait_for_pull_query(
        engine,
        table,
        &select,
        |batches| {
            let mut values = Vec::with_capacity(expected.len());
            for batch in batches.iter().filter(|b| b.num_rows() > 0) {
                for column in batch.columns() {
                    let column = datafusion::arrow::compute::cast(column, &DataType::Int64)?;
                    let Some(column) = column.as_any().downcast_ref::<Int64Array>() else {
                        bail!("a total of {table} is not an integer");
                    };
                    values.push(column.value(0));
                }
            }
            let matches = values == expected;
            *found.borrow_mut() = values;
            Ok(matches)
        },
        || {
            format!(
                "{table}'s row count and sums of {} are {:?}; DataFusion: {expected:?}",
                columns.join(", "),
                found.borrow()
            )
        },
    )
    .await
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
/// How long the latency run waits for its warm-up bids to come through q0_live (the query's
/// group join included).
const LATENCY_WARM_UP_SECONDS: u64 = 60;

/// The `extra` of warm-up bids, which the latency consumer does not count.
const LATENCY_WARM_UP_MARK: &str = "eddy-latency-warm-up";

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
    // Output partitions a warm-up bid has come through: the query has joined its group and
    // reads from the end of its input, and this consumer fetches, so that the timed bids measure
    // the running pipeline, not its start.
    let warmed_up: Arc<std::sync::Mutex<HashSet<i32>>> = Arc::default();
    let warmed_up_seen = Arc::clone(&warmed_up);
    let collector = tokio::task::spawn_blocking(move || -> Result<Vec<i64>> {
        let mut latencies = Vec::with_capacity(expected);
        let deadline = Instant::now()
            + Duration::from_secs(LATENCY_WARM_UP_SECONDS + u64::from(seconds) + 120);
        while latencies.len() < expected && Instant::now() < deadline {
            let Some(message) = consumer.poll(Duration::from_millis(50)) else {
                continue;
            };
            let message = message.context("latency consume")?;
            let arrived = wall_clock_ms();
            let row = message
                .payload()
                .and_then(|value| serde_json::from_slice::<serde_json::Value>(value).ok());
            let extra = row
                .as_ref()
                .and_then(|row| row.get("EXTRA").and_then(serde_json::Value::as_str));
            if extra == Some(LATENCY_WARM_UP_MARK) {
                if let Ok(mut seen) = warmed_up_seen.lock() {
                    seen.insert(message.partition());
                }
                continue;
            }
            let sent = row.and_then(|row| row.get("DATE_TIME").and_then(serde_json::Value::as_i64));
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
    // Warm-up bids, one every 100 ms with keys that reach every partition, until one has come
    // through each output partition.
    let warm_up_deadline =
        tokio::time::Instant::now() + Duration::from_secs(LATENCY_WARM_UP_SECONDS);
    let mut warm_up = template[0].clone();
    warm_up.extra = LATENCY_WARM_UP_MARK.to_owned();
    let warm_up_value = serde_json::to_vec(&warm_up).context("cannot encode a bid")?;
    for key in 0u64.. {
        let seen = warmed_up.lock().map(|seen| seen.len()).unwrap_or(0);
        if seen >= partitions.max(1) as usize {
            break;
        }
        if tokio::time::Instant::now() > warm_up_deadline {
            bail!(
                "no warm-up bid came through q0_live within {LATENCY_WARM_UP_SECONDS} s \
                 ({seen} of {partitions} partitions)"
            );
        }
        let mut warm_up_sender = Sender::new(&producer);
        warm_up_sender
            .send(&input, &key.to_string(), &warm_up_value, wall_clock_ms())
            .await?;
        warm_up_sender.finish().await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

/// The persons as one Arrow batch with the stream's columns.
fn persons_batch(persons: &[Person]) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("email_address", DataType::Utf8, true),
        Field::new("credit_card", DataType::Utf8, true),
        Field::new("city", DataType::Utf8, true),
        Field::new("state", DataType::Utf8, true),
        Field::new("date_time", DataType::Int64, true),
        Field::new("extra", DataType::Utf8, true),
    ]));
    let ints =
        |f: fn(&Person) -> i64| Arc::new(Int64Array::from_iter_values(persons.iter().map(f)));
    let strings =
        |f: fn(&Person) -> &str| Arc::new(StringArray::from_iter_values(persons.iter().map(f)));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            ints(|p| p.id as i64),
            strings(|p| &p.name),
            strings(|p| &p.email_address),
            strings(|p| &p.credit_card),
            strings(|p| &p.city),
            strings(|p| &p.state),
            ints(|p| p.date_time as i64),
            strings(|p| &p.extra),
        ],
    )?)
}

/// The auctions as one Arrow batch with the stream's columns.
fn auctions_batch(auctions: &[Auction]) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("item_name", DataType::Utf8, true),
        Field::new("description", DataType::Utf8, true),
        Field::new("initial_bid", DataType::Int64, true),
        Field::new("reserve", DataType::Int64, true),
        Field::new("date_time", DataType::Int64, true),
        Field::new("expires", DataType::Int64, true),
        Field::new("seller", DataType::Int64, true),
        Field::new("category", DataType::Int64, true),
        Field::new("extra", DataType::Utf8, true),
    ]));
    let ints =
        |f: fn(&Auction) -> i64| Arc::new(Int64Array::from_iter_values(auctions.iter().map(f)));
    let strings =
        |f: fn(&Auction) -> &str| Arc::new(StringArray::from_iter_values(auctions.iter().map(f)));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            ints(|a| a.id as i64),
            strings(|a| &a.item_name),
            strings(|a| &a.description),
            ints(|a| a.initial_bid as i64),
            ints(|a| a.reserve as i64),
            ints(|a| a.date_time as i64),
            ints(|a| a.expires as i64),
            ints(|a| a.seller as i64),
            ints(|a| a.category as i64),
            strings(|a| &a.extra),
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

/// The consumer settings a query's consumer has that bear on fetching (`fetch.wait.max.ms` is the
/// engine's `max_batch_wait_ms`), so that the raw ceilings are measured as the engine reads.
fn raw_client_config(connection: &KafkaConnection, fetch_wait_ms: u64) -> ClientConfig {
    let mut config = connection.client_config();
    config
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", fetch_wait_ms.max(1).to_string());
    config
}

/// Seconds librdkafka takes to read `records` records of `topics` from the beginning, all of their
/// partitions assigned to one consumer (as a query reading several topics has them).
async fn raw_consume(
    connection: &KafkaConnection,
    fetch_wait_ms: u64,
    topics: &[&str],
    records: usize,
) -> Result<f64> {
    let consumer: BaseConsumer = raw_client_config(connection, fetch_wait_ms)
        .set("group.id", format!("{}-raw", topics.join("+")))
        .create()
        .context("cannot create the raw consumer")?;
    // Concrete offsets, as the engine's readers have (see `KafkaConnection::start_offset`).
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        let partitions = connection
            .topic(topic)
            .await?
            .with_context(|| format!("the topic {topic} is gone"))?
            .partitions;
        for element in connection
            .assignment_from(topic, partitions, Offset::Beginning)
            .await?
            .elements()
        {
            assignment.add_partition_offset(topic, element.partition(), element.offset())?;
        }
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
    fetch_wait_ms: u64,
    input: &str,
    output: &str,
    records: usize,
) -> Result<f64> {
    let consumer: rdkafka::consumer::StreamConsumer = raw_client_config(connection, fetch_wait_ms)
        .set("group.id", format!("{input}-raw-pipe"))
        .create()
        .context("cannot create the raw pipe's consumer")?;
    let partitions = connection
        .topic(input)
        .await?
        .context("the bid topic is gone")?
        .partitions;
    let assignment = connection
        .assignment_from(input, partitions, Offset::Beginning)
        .await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_count_rows_and_sum_the_named_columns_over_every_batch() -> Result<()> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, true),
            Field::new("Total_Bids", DataType::Int64, true),
            Field::new("bidders", DataType::Int32, true),
        ]));
        let batch = |keys: Vec<&str>, bids: Vec<Option<i64>>, bidders: Vec<i32>| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(StringArray::from(keys)),
                    Arc::new(Int64Array::from(bids)),
                    Arc::new(datafusion::arrow::array::Int32Array::from(bidders)),
                ],
            )
        };
        let batches = [
            batch(vec!["a", "b"], vec![Some(3), None], vec![1, 2])?,
            batch(vec!["c"], vec![Some(4)], vec![5])?,
        ];
        // Rows, then the sums in the order asked; names match case-insensitively, NULL adds 0.
        assert_eq!(totals(&batches, &["bidders", "total_bids"])?, vec![3, 8, 7]);
        assert!(totals(&batches, &["missing"]).is_err());
        assert!(totals(&batches, &["key"]).is_err(), "a string is no total");
        Ok(())
    }
}
