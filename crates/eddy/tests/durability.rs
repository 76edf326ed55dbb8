//! Durability of materialized tables, with real processes: `kill -9` of the `eddy` binary in the
//! middle of a stream, then a restart, must leave the table equal to a batch recomputation of
//! the input (nothing lost, nothing counted twice); deleting the local state directory must
//! restore the table from its changelog. The same holds for an aggregation over a table, whose
//! input rows change and are deleted while the server is killed.
//!
//! Needs a broker: the test starts its own embedded one in a temporary directory, and runs the
//! `eddy` binary against it with `--bootstrap-servers`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use eddy_broker::{CLIENT_SETTINGS, EmbeddedBroker, EmbeddedBrokerConfig};
use eddy_runtime::KafkaConnection;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

mod common;

use common::run_statements;

const RECORDS: usize = 20_000;
const REGIONS: usize = 7;
const SERVICE_ID: &str = "durability";

fn eddy(bootstrap: &str, data_dir: &Path, log: &str) -> Command {
    common::eddy(bootstrap, data_dir, SERVICE_ID, log)
}

/// Rows of the last table printed: region → (count, total).
fn parse_totals(stdout: &str) -> BTreeMap<String, (i64, i64)> {
    let mut rows = BTreeMap::new();
    for line in stdout.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if !line.trim_start().starts_with('|') || cells.len() != 3 || cells[0] == "REGION" {
            continue;
        }
        if let (Ok(n), Ok(total)) = (cells[1].parse(), cells[2].parse()) {
            rows.insert(cells[0].to_owned(), (n, total));
        }
    }
    rows
}

/// Key of input record `i` (the same for both topics).
fn user(i: usize) -> String {
    format!("user-{}", i % 97)
}

/// Value of record `i` of the `accounts` table: the user's current region and amount, or a
/// tombstone (`None`) that deletes the user.
fn account(i: usize) -> Option<(String, i64)> {
    (i % 11 != 5).then(|| (format!("t{}", (i / 97) % REGIONS), (i % 13) as i64))
}

/// The user the third server moves with INSERT VALUES after its state was deleted.
const MOVED_USER: &str = "user-1";

fn expected_totals(moved: bool) -> BTreeMap<String, (i64, i64)> {
    let mut totals = BTreeMap::new();
    for i in 0..RECORDS {
        let entry = totals.entry(format!("r{}", i % REGIONS)).or_insert((0, 0));
        entry.0 += 1;
        entry.1 += (i % 13) as i64;
    }
    // The table over `accounts` counts each user's last row; deleted users not at all.
    let mut accounts = BTreeMap::new();
    for i in 0..RECORDS {
        accounts.insert(user(i), account(i));
    }
    if moved {
        accounts.insert(MOVED_USER.to_owned(), Some(("t0".to_owned(), 100)));
    }
    for (region, amount) in accounts.into_values().flatten() {
        let entry = totals.entry(region).or_insert((0, 0));
        entry.0 += 1;
        entry.1 += amount;
    }
    totals
}

async fn produce_all(bootstrap: String) {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &bootstrap)
        .set("broker.address.family", "v4")
        .set("linger.ms", "5");
    for (key, value) in CLIENT_SETTINGS {
        config.set(*key, *value);
    }
    let producer: FutureProducer = config.create().expect("producer");
    let mut pending = Vec::new();
    for i in 0..RECORDS {
        let key = user(i);
        let value = format!("{{\"region\":\"r{}\",\"amount\":{}}}", i % REGIONS, i % 13);
        let record = FutureRecord::to("events").key(&key).payload(&value);
        match producer.send_result(record) {
            Ok(delivery) => pending.push(delivery),
            Err((error, _)) => panic!("cannot queue record {i}: {error}"),
        }
        let value = account(i)
            .map(|(region, amount)| format!("{{\"region\":\"{region}\",\"amount\":{amount}}}"));
        let mut record = FutureRecord::to("accounts").key(&key);
        if let Some(value) = &value {
            record = record.payload(value);
        }
        match producer.send_result(record) {
            Ok(delivery) => pending.push(delivery),
            Err((error, _)) => panic!("cannot queue account record {i}: {error}"),
        }
        if pending.len() >= 500 {
            for delivery in pending.drain(..) {
                assert!(matches!(delivery.await, Ok(Ok(_))), "record delivered");
            }
            // Spread the input over time so that the kill lands mid-stream.
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
    for delivery in pending {
        assert!(matches!(delivery.await, Ok(Ok(_))), "record delivered");
    }
}

async fn kill_9(child: &mut Child) {
    let pid = child.id().expect("the child runs");
    let status = Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status()
        .await
        .expect("kill runs");
    assert!(status.success(), "kill -9 {pid} failed");
    let _ = child.wait().await;
}

const QUERY: &str = "SET 'eddy.read_your_writes'='true';\n\
                     SET 'eddy.read_your_writes_timeout_ms'='60000';\n\
                     SELECT region, n, total FROM totals ORDER BY region;\n\
                     SELECT region, n, total FROM current_totals ORDER BY region;\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_survives_kill_9_and_the_loss_of_its_local_state() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let broker = EmbeddedBroker::start(EmbeddedBrokerConfig::new(dir.path().join("broker")))
        .await
        .expect("the embedded broker starts");
    let bootstrap = broker.bootstrap_servers();
    let data_dir = dir.path().join("eddy");
    std::fs::create_dir_all(&data_dir).expect("data directory");

    // The first server creates the table and is killed while the input is still arriving.
    // Its output is not read: discard it so that a full pipe never blocks it.
    let mut first = eddy(&bootstrap, &data_dir, "warn")
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("eddy starts");
    let mut stdin = first.stdin.take().expect("stdin");
    stdin
        .write_all(
            b"CREATE STREAM events (user_id STRING KEY, region STRING, amount INT) \
              WITH (KAFKA_TOPIC='events', VALUE_FORMAT='JSON', PARTITIONS=4);\n\
              SET 'auto.offset.reset'='earliest';\n\
              CREATE TABLE totals AS SELECT region, COUNT(*) AS n, SUM(amount) AS total \
              FROM events GROUP BY region EMIT CHANGES;\n\
              CREATE TABLE accounts (user_id STRING PRIMARY KEY, region STRING, amount INT) \
              WITH (KAFKA_TOPIC='accounts', VALUE_FORMAT='JSON', PARTITIONS=4);\n\
              CREATE TABLE current_totals AS SELECT region, COUNT(*) AS n, SUM(amount) AS total \
              FROM accounts GROUP BY region EMIT CHANGES;\n",
        )
        .await
        .expect("statements written");
    let connection = KafkaConnection::new(bootstrap.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while connection
        .topic("CURRENT_TOTALS")
        .await
        .ok()
        .flatten()
        .is_none()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tables were not created"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let producer = tokio::spawn(produce_all(bootstrap.clone()));
    // Kill once both tables have written some output but the input is not complete.
    loop {
        let mut written = Vec::new();
        for table in ["TOTALS", "CURRENT_TOTALS"] {
            let records: i64 = connection
                .watermarks(table)
                .await
                .map(|w| w.iter().map(|(low, high)| high - low).sum())
                .unwrap_or(0);
            written.push(records);
        }
        if written.iter().all(|records| *records > 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tables wrote nothing within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !producer.is_finished(),
        "the input was complete before the kill; the test would not test a crash mid-stream"
    );
    kill_9(&mut first).await;
    drop(stdin);
    producer.await.expect("the producer finishes");

    // A new server resumes the query from the command topic; the table must match the input.
    let (stdout, stderr) = run_statements(&bootstrap, &data_dir, SERVICE_ID, QUERY).await;
    assert_eq!(
        parse_totals(&stdout),
        expected_totals(false),
        "after kill -9 and restart\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    // Without its local state, the server restores the tables from their changelogs: the
    // aggregates, and which row each key of `accounts` contributed (moving a user must take back
    // its restored contribution).
    std::fs::remove_dir_all(data_dir.join("state")).expect("state directory removed");
    let (stdout, stderr) = run_statements(
        &bootstrap,
        &data_dir,
        SERVICE_ID,
        &format!(
            "INSERT INTO accounts (user_id, region, amount) VALUES ('{MOVED_USER}', 't0', 100);\n\
             {QUERY}DESCRIBE EXTENDED totals;\n"
        ),
    )
    .await;
    let expected = expected_totals(true);
    assert!(
        stderr.contains("restoring state from the changelog"),
        "no restore was logged:\n{stderr}"
    );
    let restored = stdout
        .lines()
        .find_map(|line| line.split("; restored ").nth(1))
        .unwrap_or_else(|| panic!("DESCRIBE EXTENDED shows no restore:\n{stdout}"));
    let numbers: Vec<u64> = restored
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    assert!(
        numbers.len() == 2 && numbers[0] == numbers[1] && numbers[0] > 0,
        "DESCRIBE EXTENDED should show a finished restore, shows: {restored}"
    );
    assert_eq!(
        parse_totals(&stdout),
        expected,
        "after restoring from the changelog\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    broker.shutdown().await.expect("the embedded broker stops");
}
