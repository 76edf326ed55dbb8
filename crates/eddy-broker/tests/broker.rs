//! Integration tests of the embedded broker: real Kafka clients (rdkafka, kcat) against tansu.
//!
//! Each test has its own data directory and topic names, so the tests run in parallel. Every wait
//! is bounded by [`WAIT`] (or [`STARTUP`]) so a broken broker fails a test instead of hanging it.

use std::{
    net::{SocketAddr, TcpStream as StdTcpStream},
    path::Path,
    process::Stdio,
    time::Duration,
};

use eddy_broker::{BrokerError, CLIENT_SETTINGS, EmbeddedBroker, EmbeddedBrokerConfig};
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{CommitMode, Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
};
use tempfile::TempDir;
use tokio::{io::AsyncWriteExt, process::Command, time::timeout};
use uuid::Uuid;

/// Bound of any single wait on the broker or a client.
const WAIT: Duration = Duration::from_secs(30);

/// Bound of a broker start (also passed to the broker as its own startup timeout).
const STARTUP: Duration = Duration::from_secs(20);

/// Records per test topic.
const RECORDS: usize = 100;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn config(data_dir: &Path) -> EmbeddedBrokerConfig {
    EmbeddedBrokerConfig {
        startup_timeout_ms: STARTUP.as_millis() as u64,
        ..EmbeddedBrokerConfig::new(data_dir)
    }
}

async fn start(data_dir: &Path) -> EmbeddedBroker {
    let started = std::time::Instant::now();
    let broker = timeout(STARTUP + Duration::from_secs(5), EmbeddedBroker::start(config(data_dir)))
        .await
        .expect("broker start timed out")
        .expect("broker failed to start");
    eprintln!(
        "broker on {} started in {} ms",
        broker.bootstrap_servers(),
        started.elapsed().as_millis()
    );
    broker
}

async fn stop(broker: EmbeddedBroker) {
    timeout(WAIT, broker.shutdown())
        .await
        .expect("broker shutdown timed out")
        .expect("broker failed");
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4())
}

fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (name, value) in CLIENT_SETTINGS {
        config.set(*name, *value);
    }
    config
}

fn key(i: usize) -> String {
    format!("key-{i}")
}

fn value(i: usize) -> String {
    format!("value-{i}")
}

async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> TestResult {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap).create()?;
    let options = AdminOptions::new().operation_timeout(Some(WAIT));
    let results = timeout(
        WAIT,
        admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &options,
        ),
    )
    .await??;
    for result in results {
        if let Err((name, code)) = result {
            return Err(format!("creating topic {name} failed: {code}").into());
        }
    }
    Ok(())
}

/// Produces records `range` (keys `key-i`, values `value-i`) in order to partition 0 of `topic`
/// and checks each lands at offset `i`.
async fn produce(bootstrap: &str, topic: &str, range: std::ops::Range<usize>) -> TestResult {
    let producer: FutureProducer = client_config(bootstrap)
        .set("message.timeout.ms", WAIT.as_millis().to_string())
        // One in-flight request so the delivery order is the production order.
        .set("max.in.flight.requests.per.connection", "1")
        .create()?;
    for i in range {
        let (key, value) = (key(i), value(i));
        let record = FutureRecord::to(topic).partition(0).key(&key).payload(&value);
        let delivery = timeout(WAIT, producer.send(record, WAIT))
            .await?
            .map_err(|(error, _message)| format!("producing record {i}: {error}"))?;
        assert_eq!(delivery.partition, 0);
        assert_eq!(delivery.offset, i as i64, "offset of record {i}");
    }
    Ok(())
}

fn consumer(bootstrap: &str, group: &str) -> Result<StreamConsumer, rdkafka::error::KafkaError> {
    client_config(bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "10000")
        .create()
}

/// Receives `count` records from a subscribed `consumer`: (key, value, offset).
async fn receive(consumer: &StreamConsumer, count: usize) -> Result<Vec<(String, String, i64)>, String> {
    let mut received = Vec::with_capacity(count);
    while received.len() < count {
        let message = timeout(WAIT, consumer.recv())
            .await
            .map_err(|_| format!("timed out after {} of {count} records", received.len()))?
            .map_err(|error| format!("consuming: {error}"))?;
        let text = |bytes: Option<&[u8]>| String::from_utf8_lossy(bytes.unwrap_or_default()).into_owned();
        received.push((text(message.key()), text(message.payload()), message.offset()));
    }
    Ok(received)
}

fn expected(range: std::ops::Range<usize>) -> Vec<(String, String, i64)> {
    range.map(|i| (key(i), value(i), i as i64)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdkafka_produces_and_consumes() -> TestResult {
    let dir = TempDir::new()?;
    let broker = start(dir.path()).await;
    let bootstrap = broker.bootstrap_servers();
    assert_eq!(bootstrap, format!("127.0.0.1:{}", broker.local_addr().port()));
    assert_eq!(broker.database_path(), dir.path().canonicalize()?.join("tansu.db"));

    let topic = unique("rdkafka");
    create_topic(&bootstrap, &topic, 1).await?;
    produce(&bootstrap, &topic, 0..RECORDS).await?;

    let consumer = consumer(&bootstrap, &unique("group"))?;
    consumer.subscribe(&[&topic])?;
    assert_eq!(receive(&consumer, RECORDS).await?, expected(0..RECORDS));
    drop(consumer);

    assert!(
        std::fs::metadata(broker.database_path())?.len() > 0,
        "the database is in the data directory"
    );
    stop(broker).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_produces_and_consumes() -> TestResult {
    match Command::new("kcat").arg("-V").output().await {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!("`kcat -V` failed ({}); run scripts/env.sh to install kcat", output.status),
        Err(error) => panic!("kcat is not installed ({error}); run scripts/env.sh to install it"),
    }

    let dir = TempDir::new()?;
    let broker = start(dir.path()).await;
    let bootstrap = broker.bootstrap_servers();
    let topic = unique("kcat");
    create_topic(&bootstrap, &topic, 1).await?;

    let input: String = (0..RECORDS).map(|i| format!("{}:{}\n", key(i), value(i))).collect();
    let mut producer = Command::new("kcat")
        .args(["-b", &bootstrap, "-P", "-t", &topic, "-K:", "-p", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = producer.stdin.take().expect("piped stdin");
    stdin.write_all(input.as_bytes()).await?;
    drop(stdin);
    let produced = timeout(WAIT, producer.wait_with_output()).await??;
    assert!(
        produced.status.success(),
        "kcat -P failed: {}",
        String::from_utf8_lossy(&produced.stderr)
    );

    let consumed = timeout(
        WAIT,
        Command::new("kcat")
            .args(["-b", &bootstrap, "-C", "-t", &topic, "-o", "beginning", "-e", "-f", "%k:%s\n"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    assert!(
        consumed.status.success(),
        "kcat -C failed: {}",
        String::from_utf8_lossy(&consumed.stderr)
    );
    assert_eq!(String::from_utf8(consumed.stdout)?, input);

    stop(broker).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_a_restart() -> TestResult {
    let dir = TempDir::new()?;
    let topic = unique("restart");

    let broker = start(dir.path()).await;
    let bootstrap = broker.bootstrap_servers();
    create_topic(&bootstrap, &topic, 1).await?;
    produce(&bootstrap, &topic, 0..RECORDS).await?;
    let database = broker.database_path().to_owned();
    stop(broker).await;
    // shutdown returns once sqlite has closed the database, which deletes its write-ahead log.
    assert!(!database.with_file_name("tansu.db-wal").exists(), "the database is closed");

    let broker = start(dir.path()).await;
    let bootstrap = broker.bootstrap_servers();
    let consumer = consumer(&bootstrap, &unique("group"))?;
    consumer.subscribe(&[&topic])?;
    assert_eq!(receive(&consumer, RECORDS).await?, expected(0..RECORDS));
    drop(consumer);

    // The log continues after the records of the first broker.
    produce(&bootstrap, &topic, RECORDS..RECORDS + 10).await?;
    stop(broker).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_a_restart() -> TestResult {
    const COMMITTED: usize = 40;
    let dir = TempDir::new()?;
    let topic = unique("offsets");
    let group = unique("group");

    let broker = start(dir.path()).await;
    let bootstrap = broker.bootstrap_servers();
    create_topic(&bootstrap, &topic, 1).await?;
    produce(&bootstrap, &topic, 0..RECORDS).await?;
    {
        let consumer = consumer(&bootstrap, &group)?;
        consumer.subscribe(&[&topic])?;
        assert_eq!(receive(&consumer, COMMITTED).await?, expected(0..COMMITTED));
        let mut offsets = TopicPartitionList::new();
        offsets.add_partition_offset(&topic, 0, Offset::Offset(COMMITTED as i64))?;
        consumer.commit(&offsets, CommitMode::Sync)?;

        let committed = consumer.committed(WAIT)?;
        let partition = committed
            .find_partition(&topic, 0)
            .ok_or("no committed offset for partition 0")?;
        assert_eq!(partition.offset(), Offset::Offset(COMMITTED as i64));
    }
    stop(broker).await;

    let broker = start(dir.path()).await;
    let bootstrap = broker.bootstrap_servers();
    let consumer = consumer(&bootstrap, &group)?;
    consumer.subscribe(&[&topic])?;
    // auto.offset.reset is earliest: had the offset been lost, this would start at record 0.
    assert_eq!(
        receive(&consumer, RECORDS - COMMITTED).await?,
        expected(COMMITTED..RECORDS)
    );
    drop(consumer);
    stop(broker).await;
    Ok(())
}

/// Polls until nothing accepts connections on `addr`.
async fn wait_until_closed(addr: SocketAddr) -> TestResult {
    timeout(WAIT, async {
        while StdTcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .map_err(|_| format!("{addr} still accepts connections").into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_or_shutting_down_stops_the_broker() -> TestResult {
    let dir = TempDir::new()?;

    let broker = start(dir.path()).await;
    let addr = broker.local_addr();
    drop(broker);
    wait_until_closed(addr).await?;

    let broker = start(dir.path()).await;
    let addr = broker.local_addr();
    stop(broker).await;
    // shutdown waits for the serve task, whose listener is dropped with it.
    assert!(StdTcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_reported() -> TestResult {
    let dir = TempDir::new()?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    let result = timeout(WAIT, EmbeddedBroker::start(config(dir.path()).with_port(port))).await?;
    match result {
        Err(error @ BrokerError::PortInUse { .. }) => {
            assert!(error.to_string().starts_with(&format!("port {port} on 127.0.0.1 is already in use")));
        }
        other => panic!("expected PortInUse, got {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_free_port_is_used() -> TestResult {
    let dir = TempDir::new()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let broker = timeout(WAIT, EmbeddedBroker::start(config(dir.path()).with_port(port))).await??;
    assert_eq!(broker.bootstrap_servers(), format!("127.0.0.1:{port}"));
    stop(broker).await;
    Ok(())
}
