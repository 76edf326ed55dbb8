//! End-to-end tests of the engine over real Kafka.
//!
//! These tests need no external Kafka: each starts its own embedded broker (tansu) on a free port in a
//! temporary directory, and uses unique topic and service names, so they can run in parallel and again.

use std::collections::BTreeMap;
use std::time::Duration;

use eddy_broker::{EmbeddedBroker, EmbeddedBrokerConfig};
use eddy_common::config::EngineConfig;
use eddy_engine::{Engine, Session, StatementResult};
use eddy_runtime::{KafkaConnection, QueryStatus};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

struct Harness {
    _dir: tempfile::TempDir,
    /// `None` while the broker is stopped ([`Harness::stop_broker`]).
    broker: Option<EmbeddedBroker>,
    bootstrap: String,
    service_id: String,
    prefix: String,
}

impl Harness {
    async fn start() -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = EmbeddedBroker::start(EmbeddedBrokerConfig {
            data_dir: dir.path().to_path_buf(),
            port: 0,
            ..Default::default()
        })
        .await
        .expect("embedded broker starts");
        let run = uuid::Uuid::new_v4().simple().to_string();
        Harness {
            _dir: dir,
            bootstrap: broker.bootstrap_servers(),
            broker: Some(broker),
            service_id: format!("svc{}", &run[..8]),
            prefix: format!("t{}_", &run[..8]),
        }
    }

    fn config(&self) -> EngineConfig {
        EngineConfig {
            service_id: self.service_id.clone(),
            topic_prefix: self.prefix.clone(),
            commit_interval_ms: 100,
            state_dir: self._dir.path().join("state"),
            ..Default::default()
        }
    }

    async fn engine(&self) -> Engine {
        Engine::start(self.config(), KafkaConnection::new(self.bootstrap.clone()))
            .await
            .expect("engine starts")
    }

    /// Stops the broker, as an outage would: clients keep their connections' addresses.
    async fn stop_broker(&mut self) {
        if let Some(broker) = self.broker.take() {
            broker.shutdown().await.expect("broker stops");
        }
    }

    /// Starts the broker again on its port and data, after [`Harness::stop_broker`].
    async fn restart_broker(&mut self) {
        let port = self
            .bootstrap
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .expect("the broker's port");
        let broker = EmbeddedBroker::start(EmbeddedBrokerConfig {
            data_dir: self._dir.path().to_path_buf(),
            port,
            ..Default::default()
        })
        .await
        .expect("embedded broker restarts");
        assert_eq!(broker.bootstrap_servers(), self.bootstrap);
        self.broker = Some(broker);
    }

    /// An engine of this harness's service with `config` (built on [`Harness::config`]).
    async fn engine_with(&self, config: EngineConfig) -> Engine {
        Engine::start(config, KafkaConnection::new(self.bootstrap.clone()))
            .await
            .expect("engine starts")
    }

    fn topic(&self, logical: &str) -> String {
        format!("{}{}", self.prefix, logical)
    }

    fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap.clone())
            .set("broker.address.family", "v4")
            .create()
            .expect("producer")
    }

    async fn produce(&self, topic: &str, key: Option<&str>, value: &str) {
        let producer = self.producer();
        let mut record = FutureRecord::<str, str>::to(topic).payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .expect("produce");
    }

    /// Reads `count` records of `topic` from the beginning (all partitions), failing after WAIT.
    async fn consume(&self, topic: &str, count: usize) -> Vec<(Option<String>, Option<String>)> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap.clone())
            .set("broker.address.family", "v4")
            .set("group.id", format!("test-{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let partitions = {
            let metadata = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .expect("metadata");
            metadata.topics()[0].partitions().len() as i32
        };
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .expect("assign");
        }
        consumer.assign(&assignment).expect("assign");
        let mut records = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while records.len() < count {
            let message = tokio::time::timeout_at(deadline, consumer.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "only {} of {count} records arrived on {topic}: {records:?}",
                        records.len()
                    )
                })
                .expect("consume");
            records.push((
                message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                message
                    .payload()
                    .map(|v| String::from_utf8_lossy(v).into_owned()),
            ));
        }
        records
    }

    /// Asserts that no more than `count` records are on `topic` (waits briefly for stragglers).
    async fn assert_exactly(&self, topic: &str, count: usize) {
        let connection = KafkaConnection::new(self.bootstrap.clone());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let total: i64 = connection
            .watermarks(topic)
            .await
            .expect("watermarks")
            .iter()
            .map(|(l, h)| h - l)
            .sum();
        assert_eq!(total as usize, count, "records on {topic}");
    }
}

async fn run(engine: &Engine, session: &mut Session, sql: &str) -> Vec<StatementResult> {
    engine
        .execute(session, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}\nfailed: {e}"))
}

/// Starts the push query `sql` (its statement has returned when this does).
async fn push_query(engine: &Engine, session: &mut Session, sql: &str) -> eddy_engine::PushQuery {
    match run(engine, session, sql).await.into_iter().next() {
        Some(StatementResult::Push(push)) => push,
        other => panic!("expected a push query from {sql}, got {other:?}"),
    }
}

fn json(text: &Option<String>) -> BTreeMap<String, Value> {
    serde_json::from_str(text.as_deref().expect("a value")).expect("JSON value")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csas_with_filter_and_functions_writes_json_that_consumers_read() {
    let h = Harness::start().await;
    let engine = h.engine().await;
    let mut session = Session::new();
    run(&engine, &mut session, "SET 'auto.offset.reset'='earliest';").await;
    run(
        &engine,
        &mut session,
        "CREATE STREAM orders (id STRING KEY, item STRING, qty INT, price DOUBLE) \
         WITH (KAFKA_TOPIC='orders', VALUE_FORMAT='JSON', PARTITIONS=2);",
    )
    .await;
    let input = h.topic("orders");
    h.produce(
        &input,
        Some("o1"),
        r#"{"item":"apple","qty":5,"price":0.5}"#,
    )
    .await;
    h.produce(
        &input,
        Some("o2"),
        r#"{"ITEM":"pear","QTY":50,"PRICE":1.25}"#,
    )
    .await;
    h.produce(&input, Some("o3"), r#"{"item":"fig","qty":20}"#)
        .await;
    run(
        &engine,
        &mut session,
        "CREATE STREAM big_orders AS SELECT id, UCASE(item) AS item, qty * 2 AS double_qty, \
         COALESCE(price, 0.0) * qty AS total FROM orders WHERE qty > 10 EMIT CHANGES;",
    )
    .await;
    let output = h.topic("BIG_ORDERS");
    let mut records = h.consume(&output, 2).await;
    records.sort();
    assert_eq!(records[0].0.as_deref(), Some("o2"));
    let first = json(&records[0].1);
    assert_eq!(first["ITEM"], Value::from("PEAR"));
    assert_eq!(first["DOUBLE_QTY"], Value::from(100));
    assert_eq!(first["TOTAL"], Value::from(62.5));
    assert!(
        !first.contains_key("ID"),
        "the key column is in the key, not the value: {first:?}"
    );
    assert_eq!(records[1].0.as_deref(), Some("o3"));
    assert_eq!(json(&records[1].1)["TOTAL"], Value::from(0.0));
    h.assert_exactly(&output, 2).await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_are_skipped_and_reported_in_the_processing_log() {
    let h = Harness::start().await;
    let engine = h.engine().await;
    let mut session = Session::new();
    run(&engine, &mut session, "SET 'auto.offset.reset'='earliest';").await;
    run(&engine, &mut session, "CREATE STREAM readings (sensor STRING KEY, temp INT) WITH (KAFKA_TOPIC='readings', PARTITIONS=1);").await;
    let input = h.topic("readings");
    h.produce(&input, Some("s1"), r#"{"temp": 21}"#).await;
    h.produce(&input, Some("s1"), r#"{"temp": "#).await; // offset 1: not JSON
    h.produce(&input, Some("s1"), r#"{"temp": "hot"}"#).await; // offset 2: wrong type
    h.produce(&input, Some("s2"), r#"{"temp": 23}"#).await;
    run(
        &engine,
        &mut session,
        "CREATE STREAM copy AS SELECT * FROM readings;",
    )
    .await;
    let records = h.consume(&h.topic("COPY"), 2).await;
    assert_eq!(json(&records[0].1)["TEMP"], Value::from(21));
    assert_eq!(json(&records[1].1)["TEMP"], Value::from(23));

    // The processing log is a stream like any other.
    let mut push = push_query(
        &engine,
        &mut session,
        "SELECT source_topic, source_partition, source_offset, error_type FROM eddy_processing_log EMIT CHANGES LIMIT 2;",
    )
    .await;
    let mut rows = Vec::new();
    while rows.len() < 2 {
        let batch = tokio::time::timeout(WAIT, push.next_batch())
            .await
            .expect("log rows in time")
            .expect("rows");
        for row in 0..batch.num_rows() {
            let cell = |c: usize| {
                datafusion::arrow::util::display::array_value_to_string(batch.column(c), row)
                    .expect("cell")
            };
            rows.push((cell(0), cell(1), cell(2), cell(3)));
        }
    }
    rows.sort();
    assert_eq!(
        rows[0],
        (
            input.clone(),
            "0".into(),
            "1".into(),
            "DESERIALIZATION_ERROR".into()
        )
    );
    assert_eq!(
        rows[1],
        (
            input.clone(),
            "0".into(),
            "2".into(),
            "DESERIALIZATION_ERROR".into()
        )
    );
    engine.shutdown().await;
}

/// A burst of bad records is logged in a few produce round trips, not one per record: with a
/// 300 ms linger and a queue of 50 entries, writing one entry at a time would take 150 s for
/// these 500 records (and hold the query up for most of it), far over `WAIT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_malformed_records_is_logged_without_a_round_trip_each() {
    const BAD_RECORDS: usize = 500;
    let h = Harness::start().await;
    let engine = h
        .engine_with(EngineConfig {
            producer_linger_ms: 300,
            processing_log_queue_records: 50,
            ..h.config()
        })
        .await;
    let mut session = Session::new();
    run(&engine, &mut session, "SET 'auto.offset.reset'='earliest';").await;
    run(&engine, &mut session, "CREATE STREAM readings (sensor STRING KEY, temp INT) WITH (KAFKA_TOPIC='readings', PARTITIONS=1);").await;
    let input = h.topic("readings");
    // Not JSON (no closing brace), then one good record.
    let mut values: Vec<String> = (0..BAD_RECORDS)
        .map(|i| format!(r#"{{"temp": {i}"#))
        .collect();
    values.push(r#"{"temp": 21}"#.to_owned());
    let producer = h.producer();
    let mut deliveries = Vec::new();
    for value in &values {
        let record = FutureRecord::<str, str>::to(&input)
            .key("s1")
            .payload(value);
        deliveries.push(producer.send(record, Duration::from_secs(30)));
    }
    for delivery in deliveries {
        delivery.await.expect("produce");
    }
    run(
        &engine,
        &mut session,
        "CREATE STREAM copy AS SELECT * FROM readings;",
    )
    .await;
    let records = h.consume(&h.topic("COPY"), 1).await;
    assert_eq!(json(&records[0].1)["TEMP"], Value::from(21));
    let logged = h
        .consume(&h.config().processing_log_topic(), BAD_RECORDS)
        .await;
    let mut offsets: Vec<i64> = logged
        .iter()
        .map(|(_, value)| json(value)["SOURCE_OFFSET"].as_i64().expect("an offset"))
        .collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (0..BAD_RECORDS as i64).collect::<Vec<_>>());
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_restores_the_catalog_and_resumes_without_loss() {
    let h = Harness::start().await;
    let input = h.topic("events");
    {
        let engine = h.engine().await;
        let mut session = Session::new();
        run(&engine, &mut session, "SET 'auto.offset.reset'='earliest';").await;
        run(&engine, &mut session, "CREATE STREAM events (id INT KEY, name STRING) WITH (KAFKA_TOPIC='events', PARTITIONS=3, KEY_FORMAT='JSON');").await;
        for i in 0..30 {
            h.produce(
                &input,
                Some(&i.to_string()),
                &format!(r#"{{"name":"e{i}"}}"#),
            )
            .await;
        }
        run(
            &engine,
            &mut session,
            "CREATE STREAM named AS SELECT id, UCASE(name) AS name FROM events;",
        )
        .await;
        h.consume(&h.topic("NAMED"), 30).await;
        engine.shutdown().await;
    }
    // Produced while Eddy is down.
    for i in 30..60 {
        h.produce(
            &input,
            Some(&i.to_string()),
            &format!(r#"{{"name":"e{i}"}}"#),
        )
        .await;
    }
    let engine = h.engine().await;
    let catalog = engine.catalog();
    assert!(
        catalog.source("EVENTS").is_some() && catalog.source("NAMED").is_some(),
        "catalog restored"
    );
    assert_eq!(
        catalog.queries().count(),
        1,
        "the persistent query is restored"
    );
    let records = h.consume(&h.topic("NAMED"), 60).await;
    let mut names: Vec<String> = records
        .iter()
        .map(|(_, v)| json(v)["NAME"].as_str().unwrap_or_default().to_owned())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(
        names.len(),
        60,
        "every event is in the output after the restart"
    );
    // Graceful shutdown committed the offsets: nothing was emitted twice.
    h.assert_exactly(&h.topic("NAMED"), 60).await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_statement_changes_nothing() {
    let h = Harness::start().await;
    let engine = h.engine().await;
    let mut session = Session::new();
    run(
        &engine,
        &mut session,
        "CREATE STREAM s (k STRING KEY, v INT) WITH (KAFKA_TOPIC='s', PARTITIONS=1);",
    )
    .await;
    let before = engine.catalog();
    let error = engine
        .execute(&mut session, "CREATE STREAM t AS SELECT k, vv FROM s;")
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "column \"VV\" not found in stream \"S\"; did you mean \"V\"?"
    );
    let error = engine
        .execute(
            &mut session,
            "CREATE STREAM u (x INT) WITH (KAFKA_TOPIC='missing');",
        )
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("topic \"missing\" does not exist"),
        "{error}"
    );
    assert_eq!(engine.catalog(), before);
    engine.shutdown().await;
}

/// Runs kcat with `args`, feeding `input` on stdin, and returns its stdout. kcat is installed by
/// `scripts/env.sh`; its absence fails the test rather than skipping it.
async fn kcat(args: &[&str], input: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("kcat")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kcat must be installed (scripts/env.sh installs it)");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).await.expect("kcat stdin");
    drop(stdin);
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("kcat finishes")
        .expect("kcat runs");
    assert!(
        output.status.success(),
        "kcat {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_fills_the_input_and_reads_back_the_csas_output() {
    let h = Harness::start().await;
    let engine = h.engine().await;
    let mut session = Session::new();
    let bootstrap = h.bootstrap.clone();
    run(&engine, &mut session, "SET 'auto.offset.reset'='earliest';").await;
    run(
        &engine,
        &mut session,
        "CREATE STREAM pageviews (user_id STRING KEY, page STRING, ms BIGINT) \
         WITH (KAFKA_TOPIC='pageviews', VALUE_FORMAT='JSON', PARTITIONS=1);",
    )
    .await;
    let input = h.topic("pageviews");
    kcat(
        &["-b", &bootstrap, "-P", "-t", &input, "-K", "|"],
        "alice|{\"page\":\"/home\",\"ms\":120}\nbob|{\"page\":\"/cart\",\"ms\":2500}\ncarol|{\"page\":\"/checkout\",\"ms\":3100}\n",
    )
    .await;
    run(
        &engine,
        &mut session,
        "CREATE STREAM slow_pages WITH (VALUE_FORMAT='DELIMITED') AS \
         SELECT user_id, CONCAT('page:', LCASE(page)) AS page, ms / 1000 AS seconds \
         FROM pageviews WHERE ms >= 1000 AND page <> '/home';",
    )
    .await;
    let output = kcat(
        &[
            "-b",
            &bootstrap,
            "-C",
            "-t",
            &h.topic("SLOW_PAGES"),
            "-o",
            "beginning",
            "-c",
            "2",
            "-f",
            "%k=%s\\n",
        ],
        "",
    )
    .await;
    assert_eq!(output, "bob=page:/cart,2\ncarol=page:/checkout,3\n");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_by_rekeys_the_output() {
    let h = Harness::start().await;
    let engine = h.engine().await;
    let mut session = Session::new();
    run(&engine, &mut session, "SET 'auto.offset.reset'='earliest';").await;
    run(&engine, &mut session, "CREATE STREAM clicks (id STRING KEY, region STRING, n INT) WITH (KAFKA_TOPIC='clicks', PARTITIONS=1);").await;
    let input = h.topic("clicks");
    h.produce(&input, Some("c1"), r#"{"region":"eu","n":1}"#)
        .await;
    h.produce(&input, Some("c2"), r#"{"region":"us","n":2}"#)
        .await;
    run(&engine, &mut session, "CREATE STREAM by_region WITH (PARTITIONS=2) AS SELECT id, UCASE(region) AS region, n FROM clicks PARTITION BY UCASE(region);").await;
    let mut records = h.consume(&h.topic("BY_REGION"), 2).await;
    records.sort();
    assert_eq!(records[0].0.as_deref(), Some("EU"));
    assert_eq!(records[1].0.as_deref(), Some("US"));
    let value = json(&records[0].1);
    assert_eq!(value["ID"], Value::from("c1"));
    assert_eq!(value["N"], Value::from(1));
    assert!(
        !value.contains_key("REGION"),
        "the new key column is in the key only: {value:?}"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_queries_start_at_the_latest_offset_by_default() {
    let h = Harness::start().await;
    let engine = h.engine().await;
    let mut session = Session::new();
    run(
        &engine,
        &mut session,
        "CREATE STREAM ticks (v INT) WITH (KAFKA_TOPIC='ticks', PARTITIONS=1);",
    )
    .await;
    let input = h.topic("ticks");
    h.produce(&input, None, r#"{"v":1}"#).await;
    let mut push = push_query(
        &engine,
        &mut session,
        "SELECT v FROM ticks EMIT CHANGES LIMIT 1;",
    )
    .await;
    // The query is subscribed once it has been assigned its partitions; keep producing newer
    // records until one arrives, and check it is never the old one.
    let mut next = 2;
    let batch = loop {
        h.produce(&input, None, &format!(r#"{{"v":{next}}}"#)).await;
        next += 1;
        if let Ok(batch) = tokio::time::timeout(Duration::from_secs(2), push.next_batch()).await {
            break batch.expect("a row");
        }
        assert!(next < 30, "no row arrived");
    };
    let v =
        datafusion::arrow::util::display::array_value_to_string(batch.column(0), 0).expect("cell");
    assert_ne!(
        v, "1",
        "a push query without auto.offset.reset=earliest must not replay old records"
    );
    assert!(push.next_batch().await.is_none(), "LIMIT 1 ends the query");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_query_reads_the_first_record_written_after_it_started() {
    // Its end is fixed when the statement returns. librdkafka, assigned the logical end by a new
    // consumer, looked it up 500 ms later, after the record below: it was never read.
    let h = Harness::start().await;
    let engine = h.engine().await;
    let mut session = Session::new();
    run(
        &engine,
        &mut session,
        "CREATE STREAM beats (v INT) WITH (KAFKA_TOPIC='beats', PARTITIONS=2);",
    )
    .await;
    let input = h.topic("beats");
    h.produce(&input, Some("a"), r#"{"v":1}"#).await;
    let mut push = push_query(
        &engine,
        &mut session,
        "SELECT v FROM beats EMIT CHANGES LIMIT 1;",
    )
    .await;
    h.produce(&input, Some("b"), r#"{"v":2}"#).await;
    let batch = tokio::time::timeout(Duration::from_secs(10), push.next_batch())
        .await
        .expect("the record written after the push query started arrives")
        .expect("a row");
    let v =
        datafusion::arrow::util::display::array_value_to_string(batch.column(0), 0).expect("cell");
    assert_eq!(v, "2");
    engine.shutdown().await;
}

/// A new persistent query's statement commits where it starts (the end of its input for
/// `latest`, the beginning for `earliest`) for its group before it returns. `latest` is then the
/// end when the statement ran: a record written right after it is read. Before, the consumer
/// reset to the end only once it had its partitions, after librdkafka's fixed 100 ms wait for
/// a partition nothing was committed for, and missed such a record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_query_starts_where_its_statement_ran() {
    let h = Harness::start().await;
    let input = h.topic("beats");
    let connection = KafkaConnection::new(h.bootstrap.clone());
    let engine = h.engine().await;
    let mut session = Session::new();
    run(
        &engine,
        &mut session,
        "CREATE STREAM beats (v INT) WITH (KAFKA_TOPIC='beats', PARTITIONS=2);",
    )
    .await;
    h.produce(&input, Some("a"), r#"{"v":1}"#).await;
    let ends: Vec<Option<i64>> = connection
        .watermarks(&input)
        .await
        .expect("watermarks")
        .into_iter()
        .map(|(_, high)| Some(high))
        .collect();
    // Created before, so that the record below is written as soon as the statement returns.
    let producer = h.producer();
    let query_id = create_query(
        &engine,
        &mut session,
        "CREATE STREAM beats_out AS SELECT v FROM beats;",
    )
    .await;
    let committed = committed_by_query(&h, &connection, &query_id, &input).await;
    producer
        .send(
            FutureRecord::<str, str>::to(&input)
                .key("b")
                .payload(r#"{"v":2}"#),
            Duration::from_secs(30),
        )
        .await
        .expect("produce");
    assert_eq!(committed, ends, "latest: the input's end is committed");
    let output = h.topic("BEATS_OUT");
    let records = h.consume(&output, 1).await;
    assert_eq!(json(&records[0].1)["V"], 2, "{records:?}");
    h.assert_exactly(&output, 1).await;

    run(&engine, &mut session, "SET 'auto.offset.reset'='earliest';").await;
    let query_id = create_query(
        &engine,
        &mut session,
        "CREATE STREAM beats_all AS SELECT v FROM beats;",
    )
    .await;
    let committed = committed_by_query(&h, &connection, &query_id, &input).await;
    assert_eq!(
        committed,
        vec![Some(0), Some(0)],
        "earliest: the input's beginning is committed"
    );
    h.consume(&h.topic("BEATS_ALL"), 2).await;
    engine.shutdown().await;
}

/// What the group of persistent query `query_id` has committed on each partition of `topic`.
async fn committed_by_query(
    h: &Harness,
    connection: &KafkaConnection,
    query_id: &str,
    topic: &str,
) -> Vec<Option<i64>> {
    let partitions = connection
        .watermarks(topic)
        .await
        .expect("watermarks")
        .len();
    connection
        .committed_offsets(
            &h.config().query_group_id(query_id),
            topic,
            partitions as i32,
        )
        .await
        .expect("committed offsets")
}

/// A table written from a table keeps its rows for pull queries, and at start reads its input up
/// to its group's committed offset into them when they are behind. A new one reset to `latest`
/// has an offset committed (the one its start pinned) but has processed nothing: the rows written
/// before it was created stay out of its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_table_of_a_table_keeps_no_rows_from_before_it_started() {
    let h = Harness::start().await;
    let engine = h.engine().await;
    let mut session = Session::new();
    for sql in [
        "CREATE TABLE users (id STRING PRIMARY KEY, city STRING) \
         WITH (KAFKA_TOPIC='users', VALUE_FORMAT='JSON', PARTITIONS=1);",
        "INSERT INTO users (id, city) VALUES ('u1', 'paris');",
        "CREATE TABLE parisians AS SELECT id, city FROM users WHERE city = 'paris';",
    ] {
        run(&engine, &mut session, sql).await;
    }
    insert_then_expect(
        &engine,
        "INSERT INTO users (id, city) VALUES ('u2', 'paris');",
        "SELECT * FROM parisians;",
        &["u2 paris"],
    )
    .await;
    engine.shutdown().await;
}

/// The count in the one-row result of `SELECT COUNT(*) ...`.
fn count_of(results: &[StatementResult]) -> i64 {
    use eddy_engine::arrow::array::AsArray;
    use eddy_engine::arrow::datatypes::Int64Type;
    match results.last() {
        Some(StatementResult::Rows { batches, .. }) => batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .map(|b| b.column(0).as_primitive::<Int64Type>().value(0))
            .unwrap_or(0),
        other => panic!("expected rows, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_token_lets_another_session_read_what_one_wrote() {
    let harness = Harness::start().await;
    let engine = harness.engine().await;
    let mut writer = Session::new();
    run(
        &engine,
        &mut writer,
        "CREATE STREAM clicks (user_id STRING KEY, page STRING) \
         WITH (KAFKA_TOPIC='clicks', VALUE_FORMAT='JSON', PARTITIONS=2); \
         SET 'auto.offset.reset'='earliest'; \
         CREATE TABLE per_page AS SELECT page, COUNT(*) AS n FROM clicks GROUP BY page EMIT CHANGES;",
    )
    .await;
    let mut reader = Session::new();
    // Each round: one session writes, another reads at once with the writer's token and must see
    // the row. Without the token the read races the aggregation (through a repartition topic).
    for round in 1..=5 {
        let results = run(
            &engine,
            &mut writer,
            &format!("INSERT INTO clicks (user_id, page) VALUES ('u{round}', '/home');"),
        )
        .await;
        let Some(StatementResult::Success { message, .. }) = results.last() else {
            panic!("INSERT gave {results:?}");
        };
        let token = message
            .split("read-after token '")
            .nth(1)
            .and_then(|rest| rest.split('\'').next())
            .unwrap_or_else(|| panic!("no token in {message:?}"));
        let results = run(
            &engine,
            &mut reader,
            &format!(
                "SET 'eddy.read_after'='{token}'; \
                 SELECT COUNT(*) FROM per_page WHERE page = '/home' AND n >= {round};"
            ),
        )
        .await;
        assert_eq!(
            count_of(&results),
            1,
            "round {round}: the row is not visible"
        );
    }
    engine.shutdown().await;
}

/// Orders of two customers for two items, the tables of both, and a push query joining all three
/// (a chain of two joins, with internal topics and state of its own) that ends after its two rows.
const ORDERS_CUSTOMERS_ITEMS: [&str; 10] = [
    "SET 'auto.offset.reset'='earliest';",
    "CREATE STREAM orders (order_id STRING KEY, customer_id STRING, item_id STRING, qty INT) \
     WITH (KAFKA_TOPIC='orders', VALUE_FORMAT='JSON', PARTITIONS=2);",
    "CREATE TABLE customers (id STRING PRIMARY KEY, name STRING) \
     WITH (KAFKA_TOPIC='customers', VALUE_FORMAT='JSON', PARTITIONS=2);",
    "CREATE TABLE items (id STRING PRIMARY KEY, price INT) \
     WITH (KAFKA_TOPIC='items', VALUE_FORMAT='JSON', PARTITIONS=3);",
    "INSERT INTO customers (id, name) VALUES ('c1', 'ann');",
    "INSERT INTO customers (id, name) VALUES ('c2', 'bob');",
    "INSERT INTO items (id, price) VALUES ('apple', 3);",
    "INSERT INTO items (id, price) VALUES ('pear', 5);",
    "INSERT INTO orders (order_id, customer_id, item_id, qty) VALUES ('o1', 'c1', 'apple', 2);",
    "INSERT INTO orders (order_id, customer_id, item_id, qty) VALUES ('o2', 'c2', 'pear', 1);",
];
const ORDERS_WITH_NAMES_AND_TOTALS: &str = "SELECT o.order_id, c.name, i.price * o.qty AS total \
     FROM orders o JOIN customers c ON o.customer_id = c.id JOIN items i ON o.item_id = i.id \
     EMIT CHANGES LIMIT 2;";

/// Runs [`ORDERS_CUSTOMERS_ITEMS`] and starts [`ORDERS_WITH_NAMES_AND_TOTALS`].
async fn push_query_over_a_join_chain(engine: &Engine) -> eddy_engine::PushQuery {
    let mut session = Session::new();
    for sql in ORDERS_CUSTOMERS_ITEMS {
        run(engine, &mut session, sql).await;
    }
    push_query(engine, &mut session, ORDERS_WITH_NAMES_AND_TOTALS).await
}

/// Reads the two rows of [`ORDERS_WITH_NAMES_AND_TOTALS`] and checks that the query ends there.
async fn read_orders_with_names_and_totals(push: &mut eddy_engine::PushQuery) {
    let mut rows = Vec::new();
    while rows.len() < 2 {
        let batch = tokio::time::timeout(WAIT, push.next_batch())
            .await
            .unwrap_or_else(|_| panic!("only {rows:?} arrived"))
            .expect("two rows before the end");
        rows.extend(row_texts(&batch));
    }
    rows.sort();
    assert_eq!(rows, ["o1 ann 6", "o2 bob 5"]);
    assert!(push.next_batch().await.is_none(), "LIMIT 2 ends the query");
}

/// The internal topics of push query `query_id`.
async fn topics_of_push_query(h: &Harness, query_id: &str) -> Vec<String> {
    let prefix = format!("_eddy-{}-query-{}-", h.service_id, query_id);
    let mut topics: Vec<String> = KafkaConnection::new(h.bootstrap.clone())
        .topics()
        .await
        .expect("topics")
        .into_iter()
        .map(|t| t.name)
        .filter(|name| name.contains(&prefix))
        .collect();
    topics.sort();
    topics
}

/// A push query over three sources runs as a chain of queries with internal topics and state of
/// its own; when it ends (here at its LIMIT), all of it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_query_over_a_join_chain_removes_its_topics_and_state_when_it_ends() {
    let h = Harness::start().await;
    let engine = h.engine().await;
    let mut push = push_query_over_a_join_chain(&engine).await;
    let query_id = push.query_id.clone();
    // Both joins repartition their left side, and the first writes the second's input.
    let topics = topics_of_push_query(&h, &query_id).await;
    assert_eq!(
        topics.len(),
        3,
        "the first join's output and both joins' repartition topics: {topics:?}"
    );
    read_orders_with_names_and_totals(&mut push).await;
    drop(push);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = topics_of_push_query(&h, &query_id).await;
        if left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ended push query's topics are still there: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    engine.shutdown().await;
    drop(engine);
    // The engine drops the stores of push queries at start too: look before one starts. Tasks
    // the engine aborted may hold the database a moment longer.
    let deadline = tokio::time::Instant::now() + WAIT;
    let state = loop {
        match eddy_state::StateStore::open(&h.config().state_dir, &Default::default()) {
            Ok(state) => break state,
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "state opens: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let transient: Vec<String> = state
        .store_names()
        .into_iter()
        .filter(|name| name.starts_with("transient-"))
        .collect();
    assert!(
        transient.is_empty(),
        "stores of the ended push query: {transient:?}"
    );
}

/// A push query that ends right before the engine shuts down is still cleaned up: shutdown lets
/// the clean-up task finish stopping its queries and deleting its topics, so that their consumers
/// are closed before a broker stopped next (the REPL stops its embedded broker right after). It
/// aborted the task instead, and the query's consumers closed later, against a broker that was
/// gone (librdkafka logged "Connection refused" at the REPL's exit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_cleaning_up_a_push_query_that_just_ended() {
    let h = Harness::start().await;
    let engine = h.engine().await;
    let mut push = push_query_over_a_join_chain(&engine).await;
    let query_id = push.query_id.clone();
    assert_eq!(topics_of_push_query(&h, &query_id).await.len(), 3);
    read_orders_with_names_and_totals(&mut push).await;
    drop(push);
    engine.shutdown().await;
    assert_eq!(
        topics_of_push_query(&h, &query_id).await,
        Vec::<String>::new(),
        "the ended push query's topics are deleted before shutdown returns"
    );
}

/// Names of the repartition topics on the broker (`-repartition`, `-repartition-right`).
async fn repartition_topics(connection: &KafkaConnection) -> Vec<String> {
    connection
        .topics()
        .await
        .expect("topics")
        .into_iter()
        .map(|t| t.name)
        .filter(|name| name.contains("-repartition"))
        .collect()
}

/// Each row of `batch` as its cells' text, separated by spaces.
fn row_texts(batch: &datafusion::arrow::array::RecordBatch) -> Vec<String> {
    (0..batch.num_rows())
        .map(|row| {
            (0..batch.num_columns())
                .map(|c| {
                    datafusion::arrow::util::display::array_value_to_string(batch.column(c), row)
                        .expect("cell")
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// The rows of a pull query's result as "cell cell", sorted.
fn rows_of(results: &[StatementResult]) -> Vec<String> {
    let Some(StatementResult::Rows { batches, .. }) = results.last() else {
        panic!("expected rows, got {results:?}")
    };
    let mut rows = Vec::new();
    for batch in batches {
        rows.extend(row_texts(batch));
    }
    rows.sort();
    rows
}

/// Inserts `(user, page)` clicks, then reads `per_page` once they are all counted.
async fn click_and_count(engine: &Engine, clicks: &[(&str, &str)]) -> Vec<String> {
    let mut session = Session::new();
    for (user, page) in clicks {
        run(
            engine,
            &mut session,
            &format!("INSERT INTO clicks (user_id, page) VALUES ('{user}', '{page}');"),
        )
        .await;
    }
    let results = run(
        engine,
        &mut session,
        "SET 'eddy.read_your_writes'='true'; SELECT page, n FROM per_page;",
    )
    .await;
    rows_of(&results)
}

/// Grouping a one-partition stream by another key needs no repartition topic: the one task
/// re-keys the records itself, and goes on doing so after a restart without counting anything
/// twice. A stream of two partitions still goes through the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregation_of_a_one_partition_stream_rekeys_in_its_task() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,librdkafka=warn,rdkafka=warn")
        .with_test_writer()
        .try_init();
    let h = Harness::start().await;
    let connection = KafkaConnection::new(h.bootstrap.clone());
    let query_id = {
        let engine = h.engine().await;
        let mut session = Session::new();
        for sql in [
            "SET 'auto.offset.reset'='earliest';",
            "CREATE STREAM clicks (user_id STRING KEY, page STRING) \
             WITH (KAFKA_TOPIC='clicks', VALUE_FORMAT='JSON', PARTITIONS=1);",
            "CREATE STREAM wide (user_id STRING KEY, page STRING) \
             WITH (KAFKA_TOPIC='wide', VALUE_FORMAT='JSON', PARTITIONS=2);",
            "CREATE TABLE wide_per_page AS SELECT page, COUNT(*) AS n FROM wide GROUP BY page;",
        ] {
            run(&engine, &mut session, sql).await;
        }
        let query_id = create_query(
            &engine,
            &mut session,
            "CREATE TABLE per_page AS SELECT page, COUNT(*) AS n FROM clicks GROUP BY page;",
        )
        .await;
        let topics = repartition_topics(&connection).await;
        assert!(
            topics.len() == 1 && topics[0].contains("WIDE_PER_PAGE"),
            "only the two-partition stream is repartitioned: {topics:?}"
        );
        let text = explain(&engine, &mut session, &query_id).await;
        assert!(text.contains("without repartition topic"), "{text}");
        assert_eq!(
            click_and_count(&engine, &[("u1", "/a"), ("u2", "/a"), ("u3", "/b")]).await,
            ["/a 2", "/b 1"]
        );
        engine.shutdown().await;
        query_id.clone()
    };
    let engine = h.engine().await;
    assert_eq!(
        click_and_count(&engine, &[("u4", "/a"), ("u5", "/c")]).await,
        ["/a 3", "/b 1", "/c 1"],
        "after a restart of {query_id}"
    );
    assert_eq!(repartition_topics(&connection).await.len(), 1);
    engine.shutdown().await;
}

/// The records of `topic` from the beginning, as "key value" texts, sorted.
async fn records_of(h: &Harness, topic: &str, count: usize) -> Vec<String> {
    let mut records: Vec<String> = h
        .consume(&h.topic(topic), count)
        .await
        .into_iter()
        .map(|(key, value)| format!("{} {}", key.unwrap_or_default(), value.unwrap_or_default()))
        .collect();
    records.sort();
    records
}

/// Joins of one-partition streams that are not keyed by their join column re-key them in the
/// join's task, the left stream of a stream-table join and the right stream of a stream-stream
/// join alike, and so does the join step of an aggregation over a join, as a repartition topic
/// of one partition would, without writing one; after a restart they go on where they stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_of_one_partition_streams_rekey_in_their_task() {
    let h = Harness::start().await;
    let connection = KafkaConnection::new(h.bootstrap.clone());
    let engine = h.engine().await;
    let mut session = Session::new();
    for sql in [
        "SET 'auto.offset.reset'='earliest';",
        "CREATE TABLE users (id STRING PRIMARY KEY, name STRING) \
         WITH (KAFKA_TOPIC='users', VALUE_FORMAT='JSON', PARTITIONS=1);",
        "CREATE STREAM clicks (click_id STRING KEY, user_id STRING, page STRING) \
         WITH (KAFKA_TOPIC='clicks', VALUE_FORMAT='JSON', PARTITIONS=1);",
        "CREATE STREAM orders (id STRING KEY, item STRING) \
         WITH (KAFKA_TOPIC='orders', VALUE_FORMAT='JSON', PARTITIONS=1);",
        "CREATE STREAM shipments (shipment_id STRING KEY, order_id STRING, carrier STRING) \
         WITH (KAFKA_TOPIC='shipments', VALUE_FORMAT='JSON', PARTITIONS=1);",
        "INSERT INTO users (id, name) VALUES ('u1', 'ann');",
        "INSERT INTO users (id, name) VALUES ('u2', 'bob');",
        "INSERT INTO clicks (click_id, user_id, page) VALUES ('k1', 'u1', '/a');",
        "INSERT INTO clicks (click_id, user_id, page) VALUES ('k2', 'u2', '/b');",
        "INSERT INTO orders (id, item) VALUES ('o1', 'apple');",
        "INSERT INTO shipments (shipment_id, order_id, carrier) VALUES ('s1', 'o1', 'dhl');",
    ] {
        run(&engine, &mut session, sql).await;
    }
    let mut query_ids = Vec::new();
    for sql in [
        "CREATE STREAM named_clicks AS SELECT c.user_id, c.page, u.name \
         FROM clicks c JOIN users u ON c.user_id = u.id;",
        "CREATE STREAM shipped AS SELECT o.id, o.item, s.carrier \
         FROM orders o JOIN shipments s WITHIN 1 HOUR ON o.id = s.order_id;",
        "CREATE TABLE shipped_items AS SELECT o.id, COUNT(*) AS shipments \
         FROM orders o JOIN shipments s WITHIN 1 HOUR ON o.id = s.order_id GROUP BY o.id;",
    ] {
        query_ids.push(create_query(&engine, &mut session, sql).await);
    }
    for query_id in &query_ids {
        let text = explain(&engine, &mut session, query_id).await;
        assert!(text.contains("without repartition topic"), "{text}");
    }
    let text = explain(&engine, &mut session, &query_ids[2]).await;
    assert!(text.contains("Its join steps 1 read inputs"), "{text}");
    assert_eq!(repartition_topics(&connection).await, Vec::<String>::new());
    // Keyed by the join column, as through a repartition topic.
    assert_eq!(
        records_of(&h, "NAMED_CLICKS", 2).await,
        [
            r#"u1 {"PAGE":"/a","NAME":"ann"}"#,
            r#"u2 {"PAGE":"/b","NAME":"bob"}"#
        ]
    );
    assert_eq!(
        records_of(&h, "SHIPPED", 1).await,
        [r#"o1 {"ITEM":"apple","CARRIER":"dhl"}"#]
    );
    assert_eq!(
        records_of(&h, "SHIPPED_ITEMS", 1).await,
        [r#"o1 {"SHIPMENTS":1}"#]
    );
    engine.shutdown().await;
    drop(engine);

    let engine = h.engine().await;
    let mut session = Session::new();
    for sql in [
        "INSERT INTO clicks (click_id, user_id, page) VALUES ('k3', 'u2', '/c');",
        "INSERT INTO orders (id, item) VALUES ('o2', 'pear');",
        "INSERT INTO shipments (shipment_id, order_id, carrier) VALUES ('s2', 'o2', 'ups');",
    ] {
        run(&engine, &mut session, sql).await;
    }
    assert_eq!(
        records_of(&h, "NAMED_CLICKS", 3).await[2],
        r#"u2 {"PAGE":"/c","NAME":"bob"}"#
    );
    assert_eq!(
        records_of(&h, "SHIPPED", 2).await[1],
        r#"o2 {"ITEM":"pear","CARRIER":"ups"}"#
    );
    assert_eq!(
        records_of(&h, "SHIPPED_ITEMS", 2).await,
        [r#"o1 {"SHIPMENTS":1}"#, r#"o2 {"SHIPMENTS":1}"#]
    );
    assert_eq!(repartition_topics(&connection).await, Vec::<String>::new());
    // Nothing read twice after the restart.
    h.assert_exactly(&h.topic("NAMED_CLICKS"), 3).await;
    h.assert_exactly(&h.topic("SHIPPED"), 2).await;
    h.assert_exactly(&h.topic("SHIPPED_ITEMS"), 2).await;
    engine.shutdown().await;
}

/// Creates the one-partition table `users` (u1 and u2 in paris, u3 in rome) and `per_city`,
/// their count by city, from the beginning; returns the query's id once both cities are counted.
async fn users_per_city(engine: &Engine, session: &mut Session) -> String {
    for sql in [
        "SET 'auto.offset.reset'='earliest';",
        "CREATE TABLE users (id STRING PRIMARY KEY, city STRING) \
         WITH (KAFKA_TOPIC='users', VALUE_FORMAT='JSON', PARTITIONS=1);",
        "INSERT INTO users (id, city) VALUES ('u1', 'paris');",
        "INSERT INTO users (id, city) VALUES ('u2', 'paris');",
        "INSERT INTO users (id, city) VALUES ('u3', 'rome');",
    ] {
        run(engine, session, sql).await;
    }
    let query_id = create_query(
        engine,
        session,
        "CREATE TABLE per_city AS SELECT city, COUNT(*) AS n FROM users GROUP BY city;",
    )
    .await;
    wait_for_rows(engine, "SELECT * FROM per_city;", &["paris 2", "rome 1"]).await;
    query_id
}

/// Grouping a one-partition table by another column needs no repartition topic either: the task
/// retracts a changed row's old contribution itself, and keeps the contributions in a store with
/// its own changelog, so that after a restart a change still moves its row from one group to
/// another exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregation_of_a_one_partition_table_retracts_in_its_task() {
    let h = Harness::start().await;
    let connection = KafkaConnection::new(h.bootstrap.clone());
    let count = "SELECT * FROM per_city;";
    {
        let engine = h.engine().await;
        let mut session = Session::new();
        let query_id = users_per_city(&engine, &mut session).await;
        run(
            &engine,
            &mut session,
            "INSERT INTO users (id, city) VALUES ('u2', 'rome');",
        )
        .await;
        wait_for_rows(&engine, count, &["paris 1", "rome 2"]).await;
        assert_eq!(repartition_topics(&connection).await, Vec::<String>::new());
        let text = explain(&engine, &mut session, &query_id).await;
        assert!(text.contains("without repartition topic"), "{text}");
        engine.shutdown().await;
    }
    let engine = h.engine().await;
    insert_then_expect(
        &engine,
        "INSERT INTO users (id, city) VALUES ('u3', 'paris');",
        count,
        &["paris 2", "rome 1"],
    )
    .await;
    engine.shutdown().await;
}

/// A crash between the two commits of an aggregation over a one-partition table (its state
/// written, the contributions not, the consumer's offset not) leaves the contributions a record
/// behind the state: the task reads that record again to rebuild them, without counting it twice,
/// and a later change of the same row still leaves the right group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregation_of_a_table_recovers_from_a_crash_between_its_commits() {
    let h = Harness::start().await;
    let count = "SELECT * FROM per_city;";
    let engine = h.engine().await;
    let mut session = Session::new();
    let query_id = users_per_city(&engine, &mut session).await;
    engine.shutdown().await;
    drop(engine);
    let open_state = || {
        eddy_state::StateStore::open(&h.config().state_dir, &eddy_state::StateConfig::default())
            .expect("state opens")
    };
    // The contributions after the first three records.
    let contributions = format!("{query_id}-upsert");
    let saved: Vec<_> = {
        let state = open_state();
        let store = state.store(&contributions).expect("store");
        assert_eq!(
            store.checkpoint(0).expect("checkpoint").source_offset,
            Some(3)
        );
        store
            .scan_prefix(0, b"")
            .expect("scan")
            .map(|entry| entry.expect("entry"))
            .collect()
    };
    assert_eq!(saved.len(), 3);

    let engine = h.engine().await;
    run(
        &engine,
        &mut session,
        "INSERT INTO users (id, city) VALUES ('u2', 'rome');",
    )
    .await;
    wait_for_rows(&engine, count, &["paris 1", "rome 2"]).await;
    engine.shutdown().await;
    drop(engine);
    // As if the process had died once the state counted u2's move: the contributions and the
    // consumer group's offset go back to before it.
    {
        let state = open_state();
        let store = state.store(&contributions).expect("store");
        let mut batch = eddy_state::StoreBatch::default();
        for (key, value) in &saved {
            batch.put(key, value);
        }
        batch.set_source_offset(3);
        store.write(0, batch).expect("contributions rolled back");
    }
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", h.bootstrap.clone())
        .set("group.id", h.config().query_group_id(&query_id))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&h.topic("users"), 0, Offset::Offset(3))
        .expect("offset");
    consumer
        .commit(&offsets, rdkafka::consumer::CommitMode::Sync)
        .expect("group offset rolled back");
    drop(consumer);

    let engine = h.engine().await;
    // Counted twice, u2's move would leave rome at 3 (then 2); with u2 still in paris in the
    // contributions, its move back would leave paris at 1.
    insert_then_expect(
        &engine,
        "INSERT INTO users (id, city) VALUES ('u2', 'paris');",
        count,
        &["paris 2", "rome 1"],
    )
    .await;
    engine.shutdown().await;
}

/// Runs `insert`, waits until the pull query `sql` gives `expected`, and checks that it still
/// does a moment later (a row counted twice would show up then).
async fn insert_then_expect(engine: &Engine, insert: &str, sql: &str, expected: &[&str]) {
    run(engine, &mut Session::new(), insert).await;
    wait_for_rows(engine, sql, expected).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        rows_of(&run(engine, &mut Session::new(), sql).await),
        expected
    );
}

/// Runs `sql`, a statement that creates a persistent query, and returns the query's id.
async fn create_query(engine: &Engine, session: &mut Session, sql: &str) -> String {
    let results = run(engine, session, sql).await;
    let Some(StatementResult::Success {
        query_id: Some(query_id),
        ..
    }) = results.last()
    else {
        panic!("{sql} gave {results:?}")
    };
    query_id.clone()
}

/// The text of `EXPLAIN query_id`.
async fn explain(engine: &Engine, session: &mut Session, query_id: &str) -> String {
    let results = run(engine, session, &format!("EXPLAIN {query_id};")).await;
    let Some(StatementResult::Explain { text }) = results.last() else {
        panic!("EXPLAIN gave {results:?}")
    };
    text.clone()
}

/// Runs the pull query `sql` until its rows (sorted texts) are `expected`, failing after WAIT.
async fn wait_for_rows(engine: &Engine, sql: &str, expected: &[&str]) {
    let mut session = Session::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rows = rows_of(&run(engine, &mut session, sql).await);
        if rows == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sql} gave {rows:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An aggregation over a join of one-partition streams runs in the join's task: the joined rows
/// are not written to a topic. Its state records the offsets of both join inputs it has counted,
/// so a join that lost its own state (store and changelog) replays its inputs up to them without
/// counting their pairs again, and joins new records with the rows it replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregation_in_its_join_task_counts_each_pair_once() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,librdkafka=warn,rdkafka=warn")
        .with_test_writer()
        .try_init();
    let h = Harness::start().await;
    let connection = KafkaConnection::new(h.bootstrap.clone());
    let count = "SELECT * FROM shipments_per_order;";
    let query_id = {
        let engine = h.engine().await;
        let mut session = Session::new();
        for sql in ORDERS_AND_SHIPMENTS.into_iter().chain([
            "INSERT INTO orders (id, item) VALUES ('o1', 'apple');",
            "INSERT INTO orders (id, item) VALUES ('o2', 'pear');",
            "INSERT INTO shipments (shipment_id, order_id, carrier) VALUES ('s1', 'o1', 'dhl');",
            "INSERT INTO shipments (shipment_id, order_id, carrier) VALUES ('s2', 'o2', 'ups');",
        ]) {
            run(&engine, &mut session, sql).await;
        }
        let query_id = create_query(
            &engine,
            &mut session,
            "CREATE TABLE shipments_per_order AS SELECT o.id, COUNT(*) AS n \
             FROM orders o JOIN shipments s WITHIN 1 HOUR ON o.id = s.order_id GROUP BY o.id;",
        )
        .await;
        wait_for_rows(&engine, count, &["o1 1", "o2 1"]).await;
        let text = explain(&engine, &mut session, &query_id).await;
        assert!(text.contains("Its aggregation runs in the task"), "{text}");
        let topics: Vec<String> = connection
            .topics()
            .await
            .expect("topics")
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert!(
            !topics.iter().any(|name| name.ends_with("-join-1")),
            "the joined rows have no topic: {topics:?}"
        );
        engine.shutdown().await;
        query_id.clone()
    };
    // The join loses its state: its store, and its changelog.
    let step = format!("{query_id}-JOIN-1");
    {
        let state = eddy_state::StateStore::open(
            &h.config().state_dir,
            &eddy_state::StateConfig::default(),
        )
        .expect("state opens");
        assert!(state.store_names().contains(&format!("{step}-join")));
        state
            .drop_store(&format!("{step}-join"))
            .expect("join store dropped");
    }
    let changelog = h.topic(&h.config().query_topic(&step, "changelog"));
    connection
        .delete_topic(&changelog)
        .await
        .expect("join changelog deleted");
    let engine = h.engine().await;
    // s1 and s2 are not counted again; s3 meets o1, which the join read again.
    insert_then_expect(
        &engine,
        "INSERT INTO shipments (shipment_id, order_id, carrier) VALUES ('s3', 'o1', 'tnt');",
        count,
        &["o1 2", "o2 1"],
    )
    .await;
    engine.shutdown().await;
    drop(engine);
    // Restarted with nothing new to read, a read-your-writes pull query answers at once.
    let engine = h.engine().await;
    let results = run(
        &engine,
        &mut Session::new(),
        &format!("SET 'eddy.read_your_writes'='true'; {count}"),
    )
    .await;
    assert_eq!(rows_of(&results), ["o1 2", "o2 1"]);
    engine.shutdown().await;
}

/// Produces every (topic, key, value) record, in order, and waits until Kafka has them all.
async fn produce_all(
    producer: &FutureProducer,
    records: impl IntoIterator<Item = (String, String, String)>,
) {
    let mut deliveries = Vec::new();
    for (topic, key, value) in records {
        let record = FutureRecord::<str, str>::to(&topic)
            .key(&key)
            .payload(&value);
        deliveries.push(
            producer
                .send_result(record)
                .map_err(|(error, _)| error)
                .expect("queued"),
        );
    }
    for delivery in deliveries {
        delivery.await.expect("delivered").expect("acknowledged");
    }
}

/// Records on `topic` now (all partitions).
async fn records_on(connection: &KafkaConnection, topic: &str) -> i64 {
    connection
        .watermarks(topic)
        .await
        .expect("watermarks")
        .iter()
        .map(|(low, high)| high - low)
        .sum()
}

/// A join that reads both of its sides itself (two streams `WITHIN` a window, two tables) stops
/// between batches when it is terminated, instead of reading the rest of its backlog first: with
/// batches of one record the backlog takes tens of seconds, yet TERMINATE returns at once and the
/// output stops growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_join_stops_without_reading_its_backlog() {
    // Enough that reading them one by one takes longer than TERMINATE waits for a task (10 s).
    const RECORDS: usize = 3000;
    let h = Harness::start().await;
    let connection = KafkaConnection::new(h.bootstrap.clone());
    let engine = Engine::start(
        EngineConfig {
            max_batch_records: 1,
            ..h.config()
        },
        KafkaConnection::new(h.bootstrap.clone()),
    )
    .await
    .expect("engine starts");
    let mut session = Session::new();
    for sql in [
        "SET 'auto.offset.reset'='earliest';",
        "CREATE STREAM lefts (k STRING KEY, v INT) \
         WITH (KAFKA_TOPIC='lefts', VALUE_FORMAT='JSON', PARTITIONS=1);",
        "CREATE STREAM rights (k STRING KEY, w INT) \
         WITH (KAFKA_TOPIC='rights', VALUE_FORMAT='JSON', PARTITIONS=1);",
        "CREATE TABLE left_table (k STRING PRIMARY KEY, v INT) \
         WITH (KAFKA_TOPIC='lefts', VALUE_FORMAT='JSON');",
        "CREATE TABLE right_table (k STRING PRIMARY KEY, w INT) \
         WITH (KAFKA_TOPIC='rights', VALUE_FORMAT='JSON');",
    ] {
        run(&engine, &mut session, sql).await;
    }
    let (lefts, rights) = (h.topic("lefts"), h.topic("rights"));
    produce_all(
        &h.producer(),
        (0..RECORDS).flat_map(|i| {
            [
                (lefts.clone(), format!("k{i}"), format!(r#"{{"V":{i}}}"#)),
                (rights.clone(), format!("k{i}"), format!(r#"{{"W":{i}}}"#)),
            ]
        }),
    )
    .await;
    for (output, sql) in [
        (
            "STREAM_JOINED",
            "CREATE STREAM stream_joined AS SELECT l.k, v, w \
             FROM lefts l JOIN rights r WITHIN 1 HOUR ON l.k = r.k;",
        ),
        (
            "TABLE_JOINED",
            "CREATE TABLE table_joined AS SELECT l.k, v, w \
             FROM left_table l JOIN right_table r ON l.k = r.k;",
        ),
    ] {
        let query_id = create_query(&engine, &mut session, sql).await;
        let output = h.topic(output);
        let deadline = tokio::time::Instant::now() + WAIT;
        while records_on(&connection, &output).await == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{query_id} wrote nothing"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let terminating = tokio::time::Instant::now();
        run(&engine, &mut session, &format!("TERMINATE {query_id};")).await;
        // A task that does not stop is given 10 s, then aborted: TERMINATE took that long.
        let terminate_took = terminating.elapsed();
        let after_terminate = records_on(&connection, &output).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let later = records_on(&connection, &output).await;
        assert!(
            terminate_took < Duration::from_secs(8)
                && after_terminate < RECORDS as i64
                && later == after_terminate,
            "{query_id} went on after TERMINATE (which took {terminate_took:?}): \
             {after_terminate} then {later} of {RECORDS} records"
        );
    }
    engine.shutdown().await;
}

/// A batch ends at `max_batch_bytes` as well as at `max_batch_records`: with a byte bound below
/// one record, a backlog read all at once still goes through the query one record per batch,
/// which `batches_in` (the `/metrics` counter) shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_ends_at_its_byte_bound() {
    const RECORDS: usize = 200;
    let h = Harness::start().await;
    let engine = Engine::start(
        EngineConfig {
            max_batch_bytes: 1,
            ..h.config()
        },
        KafkaConnection::new(h.bootstrap.clone()),
    )
    .await
    .expect("engine starts");
    let mut session = Session::new();
    // The whole backlog is in the topic before the query starts, so it could be one batch.
    numbered_stream(&h, &engine, &mut session, "bounded_in", RECORDS).await;
    run(
        &engine,
        &mut session,
        "CREATE STREAM bounded_out AS SELECT k, v FROM bounded_in;",
    )
    .await;
    assert_eq!(
        h.consume(&h.topic("BOUNDED_OUT"), RECORDS).await.len(),
        RECORDS
    );
    let query = metrics_of(&engine, "BOUNDED_OUT").await;
    assert_eq!(query.records_in, RECORDS as u64);
    assert_eq!(
        query.batches_in, RECORDS as u64,
        "every record is over the byte bound, so each is a batch of its own"
    );
    engine.shutdown().await;
}

/// Watermarks and start offsets of every partition of a topic come from two offsets requests
/// (earliest, latest) for all partitions: each partition gets its own, and an empty one has 0 for
/// both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermarks_and_assignments_cover_every_partition() {
    let h = Harness::start().await;
    let engine = h.engine().await;
    let mut session = Session::new();
    run(
        &engine,
        &mut session,
        "CREATE STREAM spread (v INT) WITH (KAFKA_TOPIC='spread', VALUE_FORMAT='JSON', PARTITIONS=3);",
    )
    .await;
    let topic = h.topic("spread");
    let producer = h.producer();
    for (partition, records) in [(0, 2), (2, 5)] {
        for i in 0..records {
            producer
                .send(
                    FutureRecord::<str, str>::to(&topic)
                        .partition(partition)
                        .payload(&format!(r#"{{"V":{i}}}"#)),
                    Duration::from_secs(30),
                )
                .await
                .expect("produce");
        }
    }
    let connection = KafkaConnection::new(h.bootstrap.clone());
    assert_eq!(
        connection.watermarks(&topic).await.expect("watermarks"),
        vec![(0, 2), (0, 0), (0, 5)]
    );
    for (start, expected) in [(Offset::End, [2, 0, 5]), (Offset::Beginning, [0, 0, 0])] {
        let assignment = connection
            .assignment_from(&topic, 3, start)
            .await
            .expect("assignment");
        let offsets: Vec<(i32, Offset)> = assignment
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset()))
            .collect();
        let wanted: Vec<(i32, Offset)> = (0..3)
            .zip(expected)
            .map(|(p, o)| (p, Offset::Offset(o)))
            .collect();
        assert_eq!(offsets, wanted, "assignment from {start:?}");
    }
    engine.shutdown().await;
}

/// From the earliest offsets on, the one-partition JSON stream `name` (`k STRING KEY, v INT`)
/// holding `records` records `k<i>`: `{"V": i}`; its topic.
async fn numbered_stream(
    h: &Harness,
    engine: &Engine,
    session: &mut Session,
    name: &str,
    records: usize,
) -> String {
    run(engine, session, "SET 'auto.offset.reset'='earliest';").await;
    run(
        engine,
        session,
        &format!(
            "CREATE STREAM {name} (k STRING KEY, v INT) \
             WITH (KAFKA_TOPIC='{name}', VALUE_FORMAT='JSON', PARTITIONS=1);"
        ),
    )
    .await;
    let topic = h.topic(name);
    produce_all(
        &h.producer(),
        (0..records).map(|i| (topic.clone(), format!("k{i}"), format!(r#"{{"V":{i}}}"#))),
    )
    .await;
    topic
}

/// Streams `auctions` (`id STRING KEY, seller STRING, ts BIGINT`, one a second from 0) and
/// `bids` (`auction STRING KEY, price INT, ts BIGINT`, `bids_per_auction` in each auction's first
/// second, the price numbering all bids), event time `ts`, one partition each, read from the
/// earliest offsets and written before the join `priced` of bids and auctions `WITHIN 1 SECOND`
/// without grace starts; its id, and the records it should write, sorted.
async fn auctions_and_their_bids(
    h: &Harness,
    engine: &Engine,
    auctions: usize,
    bids_per_auction: usize,
) -> (String, Vec<String>) {
    let mut session = Session::new();
    for sql in [
        "SET 'auto.offset.reset'='earliest';",
        "CREATE STREAM auctions (id STRING KEY, seller STRING, ts BIGINT) \
         WITH (KAFKA_TOPIC='auctions', VALUE_FORMAT='JSON', PARTITIONS=1, TIMESTAMP='ts');",
        "CREATE STREAM bids (auction STRING KEY, price INT, ts BIGINT) \
         WITH (KAFKA_TOPIC='bids', VALUE_FORMAT='JSON', PARTITIONS=1, TIMESTAMP='ts');",
    ] {
        run(engine, &mut session, sql).await;
    }
    let (auctions_topic, bids_topic) = (h.topic("auctions"), h.topic("bids"));
    produce_all(
        &h.producer(),
        (0..auctions).map(|a| {
            (
                auctions_topic.clone(),
                format!("a{a}"),
                format!(r#"{{"SELLER":"s{a}","TS":{}}}"#, a * 1000),
            )
        }),
    )
    .await;
    produce_all(
        &h.producer(),
        (0..auctions * bids_per_auction).map(|b| {
            let auction = b / bids_per_auction;
            let ts = auction * 1000 + (b % bids_per_auction) * 900 / bids_per_auction;
            (
                bids_topic.clone(),
                format!("a{auction}"),
                format!(r#"{{"PRICE":{b},"TS":{ts}}}"#),
            )
        }),
    )
    .await;
    let query_id = create_query(
        engine,
        &mut session,
        "CREATE STREAM priced AS SELECT b.auction, b.price, a.seller \
         FROM bids b JOIN auctions a WITHIN 1 SECOND GRACE PERIOD 0 SECONDS \
         ON b.auction = a.id;",
    )
    .await;
    let mut expected: Vec<String> = (0..auctions * bids_per_auction)
        .map(|b| {
            let auction = b / bids_per_auction;
            format!(r#"a{auction} {{"PRICE":{b},"SELLER":"s{auction}"}}"#)
        })
        .collect();
    expected.sort();
    (query_id, expected)
}

/// An engine reading batches of at most 5 records.
async fn engine_of_small_batches(h: &Harness) -> Engine {
    h.engine_with(EngineConfig {
        max_batch_records: 5,
        ..h.config()
    })
    .await
}

/// A stream-stream join over a backlog follows event time, not offsets. The auctions (one a
/// second) and their bids (ten in each auction's first second) are written before the join
/// starts, and it reads them in batches of 5: a batch of auctions spans 5 s of event time, a batch
/// of bids half a second. A join that took each round's batches whole ran the stream time 4 s
/// ahead of the bids it had read, and dropped most of the rest as late (`WITHIN 1 SECOND`, no
/// grace); a join that stops each round where its bids run out pairs every bid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_join_over_a_backlog_pairs_records_in_event_time_order() {
    const AUCTIONS: usize = 10;
    const BIDS_PER_AUCTION: usize = 10;
    let h = Harness::start().await;
    let engine = engine_of_small_batches(&h).await;
    let (_, expected) = auctions_and_their_bids(&h, &engine, AUCTIONS, BIDS_PER_AUCTION).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let query = metrics_of(&engine, "PRICED").await;
        assert_eq!(
            query.records_skipped, 0,
            "no bid or auction is late or malformed: {query:?}"
        );
        if query.records_in as usize == AUCTIONS * (1 + BIDS_PER_AUCTION) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the join read only part of its backlog: {query:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(records_of(&h, "PRICED", expected.len()).await, expected);
    h.assert_exactly(&h.topic("PRICED"), expected.len()).await;
    engine.shutdown().await;
}

/// A stream-stream join stopped in the middle of its backlog, with auctions read but waiting for
/// the bids to catch up with their event time, stores the offset of the first auction waiting,
/// not the reader's: restarted, it reads those auctions again and pairs every bid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_join_stopped_in_its_backlog_resumes_at_the_first_record_waiting() {
    const AUCTIONS: usize = 100;
    const BIDS_PER_AUCTION: usize = 10;
    let h = Harness::start().await;
    let engine = engine_of_small_batches(&h).await;
    let (query_id, expected) =
        auctions_and_their_bids(&h, &engine, AUCTIONS, BIDS_PER_AUCTION).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while metrics_of(&engine, "PRICED").await.records_out < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the join wrote nothing"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    engine.shutdown().await;
    drop(engine);
    let connection = KafkaConnection::new(h.bootstrap.clone());
    let written = records_on(&connection, &h.topic("PRICED")).await;
    assert!(
        (written as usize) < expected.len() / 2,
        "{query_id} stopped in its backlog, not after {written} records"
    );

    let engine = engine_of_small_batches(&h).await;
    assert_eq!(
        distinct_records_of(&h, "PRICED", expected.len()).await,
        expected,
        "after a restart of {query_id}"
    );
    assert_eq!(metrics_of(&engine, "PRICED").await.records_skipped, 0);
    engine.shutdown().await;
}

/// The metrics of the persistent query writing `sink`.
async fn metrics_of(engine: &Engine, sink: &str) -> eddy_engine::QueryMetricsSnapshot {
    let metrics = engine.query_metrics(Duration::from_secs(5)).await;
    metrics
        .into_iter()
        .find(|m| m.sink == sink)
        .unwrap_or_else(|| panic!("no metrics for {sink}"))
}

/// A query that writes a stream sends its next batches while the broker acknowledges earlier
/// ones (`max_batches_in_flight`). With batches of 5 records and 3 of them in flight, 300 records
/// come out once each and in order, the records counted out are those acknowledged, and the
/// query's group commits the input's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_in_flight_come_out_once_in_order_and_are_committed() {
    const RECORDS: usize = 300;
    let h = Harness::start().await;
    let engine = h
        .engine_with(EngineConfig {
            max_batch_records: 5,
            max_batches_in_flight: 3,
            ..h.config()
        })
        .await;
    let mut session = Session::new();
    let input = numbered_stream(&h, &engine, &mut session, "flights_in", RECORDS).await;
    let query_id = create_query(
        &engine,
        &mut session,
        "CREATE STREAM flights_out AS SELECT k, v * 2 AS twice FROM flights_in;",
    )
    .await;
    let output = h.topic("FLIGHTS_OUT");
    let twice: Vec<i64> = h
        .consume(&output, RECORDS)
        .await
        .iter()
        .map(|(_, value)| json(value)["TWICE"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(
        twice,
        (0..RECORDS as i64).map(|i| 2 * i).collect::<Vec<_>>()
    );
    h.assert_exactly(&output, RECORDS).await;
    let connection = KafkaConnection::new(h.bootstrap.clone());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let committed = committed_by_query(&h, &connection, &query_id, &input).await;
        if committed == [Some(RECORDS as i64)] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the query's group committed {committed:?}, not the input's end"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let query = metrics_of(&engine, "FLIGHTS_OUT").await;
    assert_eq!(query.records_out, RECORDS as u64);
    assert!(
        query.batches_in >= (RECORDS / 5) as u64,
        "batches of at most 5 records: {query:?}"
    );
    engine.shutdown().await;
}

/// The different records of `topic`, sorted, once at least `count` of them are different.
///
/// A query hands a partition over at least once: records a server wrote after its last commit are
/// written again by the server that takes the partition. So the topic can hold `count` records
/// before it holds `count` different ones, and only the different ones say whether every input
/// made it.
async fn distinct_records_of(h: &Harness, topic: &str, count: usize) -> Vec<String> {
    let connection = KafkaConnection::new(h.bootstrap.clone());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let total: i64 = connection
            .watermarks(&h.topic(topic))
            .await
            .map(|w| w.iter().map(|(low, high)| high - low).sum())
            .unwrap_or(0);
        let mut different = None;
        if total as usize >= count {
            let mut records = records_of(h, topic, total as usize).await;
            records.dedup();
            if records.len() >= count {
                return records;
            }
            different = Some(records.len());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{total} records on {topic}, {}, not {count} different ones",
            different.map_or("not read".to_owned(), |n| format!("{n} of them different"))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// From the beginning, the one-partition streams `orders` (keyed by order id) and `shipments`
/// (keyed by shipment id, with the order's id).
const ORDERS_AND_SHIPMENTS: [&str; 3] = [
    "SET 'auto.offset.reset'='earliest';",
    "CREATE STREAM orders (id STRING KEY, item STRING) \
     WITH (KAFKA_TOPIC='orders', VALUE_FORMAT='JSON', PARTITIONS=1);",
    "CREATE STREAM shipments (shipment_id STRING KEY, order_id STRING, carrier STRING) \
     WITH (KAFKA_TOPIC='shipments', VALUE_FORMAT='JSON', PARTITIONS=1);",
];

/// Waits until `done` holds, failing with `what` after WAIT.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Persistent queries outlive an outage of their broker. Those that fail while it is away (the
/// stream-stream join's reads time out at once) are restarted from their committed offsets, with
/// backoff, until the broker is back; their status says so meanwhile. Then every query goes on
/// where it stopped: nothing lost, nothing read twice. Without the restarts the failed join would
/// stay failed and never join the orders that come after the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_queries_restart_after_a_broker_outage() {
    let mut h = Harness::start().await;
    let engine = h
        .engine_with(EngineConfig {
            kafka_request_timeout_ms: 2_000,
            produce_timeout_ms: 2_000,
            query_retry_backoff_initial_ms: 200,
            query_retry_backoff_max_ms: 2_000,
            ..h.config()
        })
        .await;
    let mut session = Session::new();
    for sql in ORDERS_AND_SHIPMENTS.into_iter().chain([
        "INSERT INTO orders (id, item) VALUES ('o1', 'apple');",
        "INSERT INTO shipments (shipment_id, order_id, carrier) VALUES ('s1', 'o1', 'dhl');",
    ]) {
        run(&engine, &mut session, sql).await;
    }
    let mut query_ids = Vec::new();
    for sql in [
        "CREATE STREAM ordered AS SELECT id, item FROM orders WHERE item <> 'none';",
        "CREATE STREAM shipped AS SELECT o.id, o.item, s.carrier \
         FROM orders o JOIN shipments s WITHIN 1 HOUR ON o.id = s.order_id;",
        "CREATE TABLE items AS SELECT item, COUNT(*) AS n FROM orders GROUP BY item;",
    ] {
        query_ids.push(create_query(&engine, &mut session, sql).await);
    }
    assert_eq!(
        records_of(&h, "ORDERED", 1).await,
        [r#"o1 {"ITEM":"apple"}"#]
    );
    assert_eq!(
        records_of(&h, "SHIPPED", 1).await,
        [r#"o1 {"ITEM":"apple","CARRIER":"dhl"}"#]
    );
    let items = "SELECT item, n FROM items;";
    wait_for_rows(&engine, items, &["apple 1"]).await;
    // Every query has committed what it wrote (commit interval 100 ms).
    tokio::time::sleep(Duration::from_secs(1)).await;

    h.stop_broker().await;
    let failed = |engine: &Engine| {
        query_ids
            .iter()
            .filter_map(|id| match engine.query_status(id) {
                Some(QueryStatus::Error(message)) => Some(message),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    wait_until("no query failed while the broker was away", || {
        !failed(&engine).is_empty()
    })
    .await;
    // Failing restarts back off while the broker is away; the status tells when the next is.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let messages = failed(&engine);
    assert!(
        messages
            .iter()
            .any(|m| m.contains("times in a row; restart ")),
        "{messages:?}"
    );

    h.restart_broker().await;
    for sql in [
        "INSERT INTO orders (id, item) VALUES ('o2', 'pear');",
        "INSERT INTO shipments (shipment_id, order_id, carrier) VALUES ('s2', 'o2', 'ups');",
    ] {
        // The engine's producer reconnects on its own schedule.
        let deadline = tokio::time::Instant::now() + WAIT;
        while let Err(error) = engine.execute(&mut session, sql).await {
            assert!(tokio::time::Instant::now() < deadline, "{sql}: {error}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Output is at least once: a record whose offset could not be committed before the broker
    // went away, or before the rebalance that follows its return, is written again.
    assert_eq!(
        distinct_records_of(&h, "SHIPPED", 2).await,
        [
            r#"o1 {"ITEM":"apple","CARRIER":"dhl"}"#,
            r#"o2 {"ITEM":"pear","CARRIER":"ups"}"#
        ]
    );
    assert_eq!(
        distinct_records_of(&h, "ORDERED", 2).await,
        [r#"o1 {"ITEM":"apple"}"#, r#"o2 {"ITEM":"pear"}"#]
    );
    // A table's state is exact: each order counted once.
    wait_for_rows(&engine, items, &["apple 1", "pear 1"]).await;
    let statuses = || {
        query_ids
            .iter()
            .map(|id| engine.query_status(id))
            .collect::<Vec<_>>()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while statuses().iter().any(|s| *s != Some(QueryStatus::Running)) {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", statuses());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    engine.shutdown().await;
}

/// Inserts events `from..to` of `events`: keys `k0`..`k9`, which the murmur2 partitioner spreads
/// over both partitions.
async fn insert_events(engine: &Engine, from: usize, to: usize) {
    let mut session = Session::new();
    for n in from..to {
        let sql = format!("INSERT INTO events (id, n) VALUES ('k{}', {n});", n % 10);
        run(engine, &mut session, &sql).await;
    }
}

/// The records of `copied` that events `0..count` give.
fn copied_events(count: usize) -> Vec<String> {
    let mut records: Vec<String> = (0..count)
        .map(|n| format!(r#"k{} {{"N":{n}}}"#, n % 10))
        .collect();
    records.sort();
    records
}

/// Two servers of one service share a query's partitions. When the second starts, the group
/// rebalances: the first keeps running with the partitions it is given (a revoked partition's
/// task ends, not the query), and the second processes the others. When the second stops, the
/// first takes every partition back. No record is lost on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_of_one_service_share_a_querys_partitions_and_take_them_back() {
    let h = Harness::start().await;
    let first = h.engine().await;
    let mut session = Session::new();
    run(&first, &mut session, "SET 'auto.offset.reset'='earliest';").await;
    run(
        &first,
        &mut session,
        "CREATE STREAM events (id STRING KEY, n INT) \
         WITH (KAFKA_TOPIC='events', VALUE_FORMAT='JSON', PARTITIONS=2);",
    )
    .await;
    let query_id = create_query(
        &first,
        &mut session,
        "CREATE STREAM copied AS SELECT id, n FROM events;",
    )
    .await;
    insert_events(&first, 0, 10).await;
    assert_eq!(
        distinct_records_of(&h, "COPIED", 10).await,
        copied_events(10)
    );

    let second = h
        .engine_with(EngineConfig {
            state_dir: h._dir.path().join("state-2"),
            ..h.config()
        })
        .await;
    // Until the group has given the second server a partition, its query reads nothing.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut next = 10;
    while second
        .query_counts(&query_id)
        .map_or(0, |(records_in, ..)| records_in)
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second server never got a partition"
        );
        insert_events(&first, next, next + 10).await;
        next += 10;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        distinct_records_of(&h, "COPIED", next).await,
        copied_events(next)
    );
    assert_eq!(first.query_status(&query_id), Some(QueryStatus::Running));
    let (first_in, ..) = first.query_counts(&query_id).expect("first server's query");

    second.shutdown().await;
    drop(second);
    insert_events(&first, next, next + 10).await;
    next += 10;
    assert_eq!(
        distinct_records_of(&h, "COPIED", next).await,
        copied_events(next)
    );
    assert_eq!(first.query_status(&query_id), Some(QueryStatus::Running));
    let (first_in_after, ..) = first.query_counts(&query_id).expect("first server's query");
    // The first server read all ten of the last events: both partitions are back with it.
    assert!(
        first_in_after >= first_in + 10,
        "{first_in} then {first_in_after}"
    );
    first.shutdown().await;
}

/// The read-after token of the last `INSERT ... VALUES` of `results`.
fn read_after_token(results: &[StatementResult]) -> String {
    let Some(StatementResult::Success { message, .. }) = results.last() else {
        panic!("INSERT gave {results:?}");
    };
    message
        .split("read-after token '")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap_or_else(|| panic!("no token in {message:?}"))
        .to_owned()
}

/// An engine whose joins that read both sides themselves look for new records only every 3 s,
/// so that a read-your-writes test shows whether a pull query waits for them.
async fn engine_with_slow_joins(h: &Harness) -> Engine {
    h.engine_with(EngineConfig {
        table_join_poll_interval_ms: 3_000,
        ..h.config()
    })
    .await
}

/// Tables made by joining two tables answer pull queries, and read-your-writes waits for a
/// write to either table: on their keys (task p reads right partition p) and on a foreign key
/// (every task keeps a copy of every right partition; a right partition counts once every copy
/// has the write), although the joins look at their tables only every 3 s here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_queries_of_joined_tables_wait_for_writes_to_either_table() {
    let h = Harness::start().await;
    let engine = engine_with_slow_joins(&h).await;
    let mut session = Session::new();
    for sql in [
        "SET 'auto.offset.reset'='earliest';",
        "CREATE TABLE customers (id STRING PRIMARY KEY, name STRING) \
         WITH (KAFKA_TOPIC='customers', VALUE_FORMAT='JSON', PARTITIONS=3);",
        "CREATE TABLE orders (order_id STRING PRIMARY KEY, customer_id STRING, total INT) \
         WITH (KAFKA_TOPIC='orders', VALUE_FORMAT='JSON', PARTITIONS=2);",
        "CREATE TABLE credit (id STRING PRIMARY KEY, amount INT) \
         WITH (KAFKA_TOPIC='credit', VALUE_FORMAT='JSON', PARTITIONS=3);",
    ] {
        run(&engine, &mut session, sql).await;
    }
    create_query(
        &engine,
        &mut session,
        "CREATE TABLE order_names AS SELECT o.order_id, o.total, c.name \
         FROM orders o JOIN customers c ON o.customer_id = c.id;",
    )
    .await;
    create_query(
        &engine,
        &mut session,
        "CREATE TABLE customer_credit AS SELECT c.id, c.name, k.amount \
         FROM customers c LEFT JOIN credit k ON c.id = k.id;",
    )
    .await;
    let order_names = "SELECT order_id, total, name FROM order_names;";
    let customer_credit = "SELECT id, name, amount FROM customer_credit;";
    let mut reader = Session::new();
    run(&engine, &mut reader, "SET 'eddy.read_your_writes'='true';").await;
    for sql in [
        "INSERT INTO customers (id, name) VALUES ('c1', 'ann');",
        "INSERT INTO orders (order_id, customer_id, total) VALUES ('o1', 'c1', 10);",
    ] {
        run(&engine, &mut session, sql).await;
    }
    assert_eq!(
        rows_of(&run(&engine, &mut reader, order_names).await),
        ["o1 10 ann"]
    );
    assert_eq!(
        rows_of(&run(&engine, &mut reader, customer_credit).await),
        ["c1 ann "] // NULL amount
    );
    // The right table of the foreign-key join, the left of the other.
    let rename = "INSERT INTO customers (id, name) VALUES ('c1', 'anne');";
    run(&engine, &mut session, rename).await;
    assert_eq!(
        rows_of(&run(&engine, &mut reader, order_names).await),
        ["o1 10 anne"]
    );
    // The right table of the join on keys.
    let credit = "INSERT INTO credit (id, amount) VALUES ('c1', 7);";
    run(&engine, &mut session, credit).await;
    assert_eq!(
        rows_of(&run(&engine, &mut reader, customer_credit).await),
        ["c1 anne 7"]
    );
    // A read-after token of the foreign-key join's right table is waited for alone.
    let rename = "INSERT INTO customers (id, name) VALUES ('c1', 'annie');";
    let token = read_after_token(&run(&engine, &mut session, rename).await);
    let mut other = Session::new();
    let read_after = format!("SET 'eddy.read_after'='{token}'; {order_names}");
    assert_eq!(
        rows_of(&run(&engine, &mut other, &read_after).await),
        ["o1 10 annie"]
    );
    engine.shutdown().await;
}

/// Read-your-writes waits for the right side of a join too. A record just written to the right
/// stream of a stream-stream join is in the table that the next read-your-writes pull query
/// reads, and in the one read with its read-after token, although the join looks at its sides
/// only every 3 s here: before, only the left side was waited for, and the reads came back
/// without the new rows. (Joins of tables: the test before.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_waits_for_the_right_side_of_a_join() {
    let h = Harness::start().await;
    let engine = engine_with_slow_joins(&h).await;
    let mut session = Session::new();
    for sql in ORDERS_AND_SHIPMENTS {
        run(&engine, &mut session, sql).await;
    }
    create_query(
        &engine,
        &mut session,
        "CREATE TABLE shipped_items AS SELECT o.id, COUNT(*) AS shipments \
         FROM orders o JOIN shipments s WITHIN 1 HOUR ON o.id = s.order_id GROUP BY o.id;",
    )
    .await;
    let shipped = "SELECT id, shipments FROM shipped_items;";
    let mut reader = Session::new();
    run(&engine, &mut reader, "SET 'eddy.read_your_writes'='true';").await;
    // The left side first: nothing joins yet.
    let order = "INSERT INTO orders (id, item) VALUES ('o1', 'apple');";
    run(&engine, &mut session, order).await;
    let rows = rows_of(&run(&engine, &mut reader, shipped).await);
    assert_eq!(rows, Vec::<String>::new());
    let shipment =
        "INSERT INTO shipments (shipment_id, order_id, carrier) VALUES ('s1', 'o1', 'dhl');";
    run(&engine, &mut session, shipment).await;
    assert_eq!(rows_of(&run(&engine, &mut reader, shipped).await), ["o1 1"]);
    // A read-after token of the right side is waited for alone.
    let shipment =
        "INSERT INTO shipments (shipment_id, order_id, carrier) VALUES ('s2', 'o1', 'ups');";
    let token = read_after_token(&run(&engine, &mut session, shipment).await);
    let mut other = Session::new();
    let read_after = format!("SET 'eddy.read_after'='{token}'; {shipped}");
    let results = run(&engine, &mut other, &read_after).await;
    assert_eq!(rows_of(&results), ["o1 2"]);
    engine.shutdown().await;
}

/// A read-your-writes pull query of a table over a generated stream sees every event the
/// generator had handed to the query when the pull query ran, hence at least every record the
/// query had taken in before. Before, a generated source counted as having nothing to wait for:
/// a batch taken in and not yet in the table's state was missing (in CI, a table read right
/// after its topic showed the final counts came back empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_waits_for_the_events_a_generator_made() {
    let h = Harness::start().await;
    let engine = h.engine().await;
    let mut session = Session::new();
    run(
        &engine,
        &mut session,
        "CREATE STREAM bids WITH (CONNECTOR='nexmark', EVENT_TYPE='bid', \
         EVENTS_PER_SECOND=2000, MAX_EVENTS=1000000);",
    )
    .await;
    let query_id = create_query(
        &engine,
        &mut session,
        "CREATE TABLE bids_per_parity AS SELECT auction % 2 AS parity, COUNT(*) AS n \
         FROM bids GROUP BY auction % 2;",
    )
    .await;
    let mut reader = Session::new();
    run(&engine, &mut reader, "SET 'eddy.read_your_writes'='true';").await;
    let mut last_counted = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (taken_in, ..) = engine.query_counts(&query_id).expect("the query runs");
        let counted = count_of(
            &run(
                &engine,
                &mut reader,
                "SELECT CAST(SUM(n) AS BIGINT) FROM bids_per_parity;",
            )
            .await,
        );
        assert!(
            counted >= taken_in as i64,
            "the table counted {counted} bids after the query had taken in {taken_in}"
        );
        last_counted = counted;
    }
    // The generator went on all along: the reads were not all of an idle table.
    assert!(last_counted > 0, "no bid was counted");
    engine.shutdown().await;
}

/// A `CREATE SOURCE TABLE` keeps its rows for pull queries through restarts: the restarted
/// server starts the table's query again from the command topic, and a server whose local state
/// is gone reads the topic again into it, changes written while it was down included. Its query
/// writes no record anywhere: the topic holds only what its writer wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_table_keeps_its_rows_through_restarts_and_the_loss_of_local_state() {
    let h = Harness::start().await;
    let users = h.topic("users");
    let config = h.config();
    let cities = "SET 'eddy.read_your_writes'='true'; SELECT id, city FROM users;";
    {
        let engine = h.engine().await;
        let mut session = Session::new();
        run(
            &engine,
            &mut session,
            "CREATE TABLE users_w (id STRING PRIMARY KEY, city STRING) \
             WITH (KAFKA_TOPIC='users', VALUE_FORMAT='JSON', PARTITIONS=2);",
        )
        .await;
        h.produce(&users, Some("u1"), r#"{"CITY":"london"}"#).await;
        h.produce(&users, Some("u2"), r#"{"CITY":"oslo"}"#).await;
        run(
            &engine,
            &mut session,
            "CREATE SOURCE TABLE users (id STRING PRIMARY KEY, city STRING) \
             WITH (KAFKA_TOPIC='users', VALUE_FORMAT='JSON');",
        )
        .await;
        let results = run(&engine, &mut Session::new(), cities).await;
        assert_eq!(rows_of(&results), ["u1 london", "u2 oslo"]);
        engine.shutdown().await;
    }
    // Written while the server is down; then a restart with its state.
    h.produce(&users, Some("u1"), r#"{"CITY":"paris"}"#).await;
    {
        let engine = h.engine().await;
        let results = run(&engine, &mut Session::new(), cities).await;
        assert_eq!(rows_of(&results), ["u1 paris", "u2 oslo"]);
        engine.shutdown().await;
    }
    // A deletion, then a restart without local state.
    let producer = h.producer();
    producer
        .send(
            FutureRecord::<str, str>::to(&users).key("u2"),
            Duration::from_secs(30),
        )
        .await
        .expect("tombstone");
    std::fs::remove_dir_all(&config.state_dir).expect("state removed");
    {
        let engine = h.engine().await;
        let results = run(&engine, &mut Session::new(), cities).await;
        assert_eq!(rows_of(&results), ["u1 paris"]);
        engine.shutdown().await;
    }
    // Two rows and a tombstone written, by the test alone.
    h.assert_exactly(&users, 4).await;
}

/// Counts the log events of one level from the modules whose path starts with `target`.
struct LoggedEvents {
    level: tracing::Level,
    target: &'static str,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl LoggedEvents {
    /// Installs a counter of `level` events from `target` as this process's only log subscriber
    /// (nextest runs each test in a process of its own), and returns the count.
    fn install(
        level: tracing::Level,
        target: &'static str,
    ) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        tracing_subscriber::registry()
            .with(LoggedEvents {
                level,
                target,
                count: std::sync::Arc::clone(&count),
            })
            .try_init()
            .expect("this test's process has no other log subscriber (run it with cargo nextest)");
        count
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LoggedEvents {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let metadata = event.metadata();
        if *metadata.level() == self.level && metadata.target().starts_with(self.target) {
            self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// A server that starts again finds its command topic, its processing log and its queries'
/// internal topics there: it leaves them alone instead of asking to create them again, which
/// the broker refused with an error in its log for each (a dozen lines at every restart of a
/// server with a few queries). Needs its own process for the log (nextest runs each test so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_does_not_ask_to_create_the_topics_it_has() {
    let errors = LoggedEvents::install(tracing::Level::ERROR, "tansu");
    let h = Harness::start().await;
    {
        let engine = h.engine().await;
        let mut session = Session::new();
        run(
            &engine,
            &mut session,
            "CREATE STREAM clicks (user_id STRING KEY, page STRING) \
             WITH (KAFKA_TOPIC='clicks', VALUE_FORMAT='JSON', PARTITIONS=1);",
        )
        .await;
        // Its changelog topic is one more that the restart finds.
        run(
            &engine,
            &mut session,
            "CREATE TABLE per_page AS SELECT page, COUNT(*) AS n FROM clicks GROUP BY page;",
        )
        .await;
        engine.shutdown().await;
    }
    let before = errors.load(std::sync::atomic::Ordering::SeqCst);
    let engine = h.engine().await;
    wait_until("the table's query runs again", || {
        engine.catalog().queries().count() == 1
    })
    .await;
    let results = run(
        &engine,
        &mut Session::new(),
        "SET 'eddy.read_your_writes'='true'; SELECT * FROM per_page;",
    )
    .await;
    assert!(rows_of(&results).is_empty());
    engine.shutdown().await;
    assert_eq!(
        errors.load(std::sync::atomic::Ordering::SeqCst) - before,
        0,
        "the broker logged errors while the server started again"
    );
}

/// A `PRINT` whose broker goes away keeps trying (a broker that restarts comes back), and says
/// so in the server's log once for each error it meets, not at every try (10 a second).
/// Before, it said nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_print_that_cannot_read_says_so_in_the_log() {
    let warnings = LoggedEvents::install(tracing::Level::WARN, "eddy_runtime::print");
    let mut h = Harness::start().await;
    let engine = h.engine().await;
    let mut session = Session::new();
    run(
        &engine,
        &mut session,
        "CREATE STREAM notes (body STRING) WITH (KAFKA_TOPIC='notes', VALUE_FORMAT='JSON', PARTITIONS=1);",
    )
    .await;
    let Some(StatementResult::Print(mut print)) =
        run(&engine, &mut session, "PRINT 'notes' FROM BEGINNING;")
            .await
            .pop()
    else {
        panic!("PRINT gave no print result")
    };
    let header = tokio::time::timeout(WAIT, print.next_line())
        .await
        .expect("the header")
        .expect("a header line");
    assert!(header.starts_with("Topic: notes"), "{header}");
    h.stop_broker().await;
    wait_until("PRINT logs that it cannot read", || {
        warnings.load(std::sync::atomic::Ordering::SeqCst) > 0
    })
    .await;
    // About 30 tries in 3 s, meeting the same few errors of librdkafka (logging every try gave 30).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let logged = warnings.load(std::sync::atomic::Ordering::SeqCst);
    assert!(logged <= 5, "PRINT logged {logged} warnings for one outage");
    drop(print);
    h.restart_broker().await;
    engine.shutdown().await;
}

/// A session reading from the earliest offsets, and the stream `vals (k STRING KEY, v STRING)`.
async fn values_stream(engine: &Engine) -> Session {
    let mut session = Session::new();
    run(engine, &mut session, "SET 'auto.offset.reset'='earliest';").await;
    run(
        engine,
        &mut session,
        "CREATE STREAM vals (k STRING KEY, v STRING) WITH (KAFKA_TOPIC='vals', PARTITIONS=1);",
    )
    .await;
    session
}

/// `count` distinct values of 40 characters for key `key` of `topic`, as `{"V": ...}` records.
fn distinct_values(
    topic: &str,
    key: &str,
    from: usize,
    count: usize,
) -> Vec<(String, String, String)> {
    (from..from + count)
        .map(|i| {
            (
                topic.to_owned(),
                key.to_owned(),
                format!(r#"{{"V": "value-{i:034}"}}"#),
            )
        })
        .collect()
}

/// A group whose state outgrows `state_record_max_bytes` (here 4 KiB: a few dozen distinct
/// values) is not updated: its rows of that batch are reported to the processing log as
/// `STATE_TOO_LARGE` and dropped, it keeps the counts it had, and the query goes on with the
/// other groups. Before, the changelog refused the record and the query failed and restarted
/// for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_whose_state_outgrows_its_record_is_skipped_and_reported() {
    let h = Harness::start().await;
    let engine = h
        .engine_with(EngineConfig {
            state_record_max_bytes: 4096,
            ..h.config()
        })
        .await;
    let mut session = values_stream(&engine).await;
    run(
        &engine,
        &mut session,
        "CREATE TABLE distinct_vals AS SELECT k, COUNT_DISTINCT(v) AS n, COUNT(*) AS c FROM vals GROUP BY k;",
    )
    .await;
    let input = h.topic("vals");
    let producer = h.producer();
    produce_all(&producer, distinct_values(&input, "big", 0, 10)).await;
    let counts = "SET 'eddy.read_your_writes'='true'; SELECT k, n, c FROM distinct_vals;";
    wait_for_rows(&engine, counts, &["big 10 10"]).await;

    // 200 values more: about 10 KiB of state, in one batch or a few.
    produce_all(&producer, distinct_values(&input, "big", 10, 200)).await;
    produce_all(&producer, distinct_values(&input, "small", 0, 3)).await;
    wait_for_rows(&engine, counts, &["big 10 10", "small 3 3"]).await;
    let logged = h.consume(&h.config().processing_log_topic(), 1).await;
    let entry = json(&logged[0].1);
    assert_eq!(
        entry["ERROR_TYPE"],
        Value::from("STATE_TOO_LARGE"),
        "{entry:?}"
    );
    assert_eq!(
        entry["SOURCE_TOPIC"],
        Value::from(input.clone()),
        "{entry:?}"
    );
    let message = entry["MESSAGE"].as_str().unwrap_or_default();
    assert!(
        message.contains("state_record_max_bytes (4096)"),
        "{message}"
    );

    // The query still runs: a new value of the small group is counted.
    produce_all(&producer, distinct_values(&input, "small", 3, 1)).await;
    wait_for_rows(&engine, counts, &["big 10 10", "small 4 4"]).await;
    engine.shutdown().await;
}

/// A group's state may be larger than librdkafka's and Kafka's default largest record (1 MB):
/// 30 000 distinct values of 40 characters make a state of about 2 MB, which the changelog
/// (created with `max.message.bytes` = `state_record_max_bytes`, 8 MiB) and Eddy's producers
/// take. Before, the changelog's producer refused it (`MessageSizeTooLarge`) and the query
/// failed and restarted for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_state_larger_than_a_megabyte_goes_to_its_changelog() {
    const VALUES: usize = 30_000;
    let h = Harness::start().await;
    let engine = h.engine().await;
    let mut session = values_stream(&engine).await;
    let input = h.topic("vals");
    produce_all(&h.producer(), distinct_values(&input, "all", 0, VALUES)).await;
    run(
        &engine,
        &mut session,
        "CREATE TABLE distinct_vals AS SELECT k, COUNT_DISTINCT(v) AS n FROM vals GROUP BY k;",
    )
    .await;
    wait_for_rows(
        &engine,
        "SET 'eddy.read_your_writes'='true'; SELECT k, n FROM distinct_vals;",
        &[&format!("all {VALUES}")],
    )
    .await;
    engine.shutdown().await;
}
