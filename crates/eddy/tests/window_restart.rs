//! Windowed aggregations across restarts: a restarted server resumes its windowed queries with
//! their windows *and their stream time* (a record that was late before the restart is still
//! late after it), updates windows stored before the restart (records within the grace period,
//! sessions that merge with stored ones), and rebuilds all of it from the changelogs when its
//! local state is gone. An `EMIT FINAL` table writes each window to its topic exactly once, over
//! all the restarts. The output topics hold ksqlDB's windowed keys.
//!
//! Needs a broker: the test starts its own embedded one in a temporary directory, and runs the
//! `eddy` binary against it with `--bootstrap-servers`, three times on one data directory.
//!
//! The input stream has one partition, so its stream time is the largest event time inserted so
//! far, in the order of the `INSERT`s. The expected rows below are worked out by hand from the
//! window rules of `docs/sql.md` ("Windowed aggregations"):
//!
//! - `PER_MINUTE`: tumbling 1 minute, grace 10 s: `[t - t % 60000, +60000)`, closed once the
//!   stream time reaches its end + 10 000.
//! - `SESSIONS`: gap 30 s, grace 0: records of a key at most 30 000 apart form one session
//!   (`WINDOWEND` = its last record); a record whose merged session ends before the stream time
//!   is late.
//! - `FINALS`: tumbling 1 minute, grace 0, `EMIT FINAL`, default retention (size + grace): a
//!   window is written once the stream time reaches its end, and dropped from the state at its
//!   end + 60 000.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use eddy_broker::{CLIENT_SETTINGS, EmbeddedBroker, EmbeddedBrokerConfig};
use eddy_runtime::KafkaConnection;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

mod common;

use common::{cells, has_row, run_statements};

const SERVICE_ID: &str = "window-restart";

/// Bound of reading one output topic back.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The body of the table printed with the column names `header` (case-insensitive): the rows
/// between the rule under the header and the rule that ends the table. `None` if no such table
/// was printed. Each query of a run has its own column names, so this picks its result.
fn table(stdout: &str, header: &[&str]) -> Option<Vec<Vec<String>>> {
    let mut lines = stdout.lines().map(str::trim);
    lines.by_ref().find(|line| {
        line.starts_with('|') && {
            let names = cells(line);
            names.len() == header.len()
                && names
                    .iter()
                    .zip(header)
                    .all(|(name, wanted)| name.eq_ignore_ascii_case(wanted))
        }
    })?;
    let mut body = Vec::new();
    let mut lines = lines.skip_while(|line| line.starts_with('+'));
    for line in lines.by_ref() {
        if !line.starts_with('|') {
            break;
        }
        body.push(cells(line));
    }
    Some(body)
}

/// Expected table rows, from `(user, numbers...)` tuples.
fn expected_rows(rows: &[(&str, &[i64])]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|(user, numbers)| {
            std::iter::once((*user).to_owned())
                .chain(numbers.iter().map(i64::to_string))
                .collect()
        })
        .collect()
}

/// Checks the result of the query whose columns are `header` against `expected`, exactly.
fn assert_table(
    stdout: &str,
    stderr: &str,
    run: &str,
    header: &[&str],
    expected: &[(&str, &[i64])],
) {
    let context = format!("{run}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let got = table(stdout, header)
        .unwrap_or_else(|| panic!("no result with the columns {header:?} in the {context}"));
    assert_eq!(
        got,
        expected_rows(expected),
        "rows of {header:?} in the {context}"
    );
}

/// A tumbling window's record key: the user id (`KAFKA` format: its UTF-8 bytes), then the
/// window start as a big-endian 64-bit integer.
fn window_key(user: &str, start: i64) -> Vec<u8> {
    let mut key = user.as_bytes().to_vec();
    key.extend_from_slice(&start.to_be_bytes());
    key
}

/// A session's record key: the user id, then the session's end, then its start (big-endian).
fn session_key(user: &str, start: i64, end: i64) -> Vec<u8> {
    let mut key = user.as_bytes().to_vec();
    key.extend_from_slice(&end.to_be_bytes());
    key.extend_from_slice(&start.to_be_bytes());
    key
}

/// A record read back from a topic: key and value bytes.
type RawRecord = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Every record of partition 0 of `topic` (the only one: the outputs have the input's single
/// partition), from the low to the high watermark as they are now.
async fn read_topic(connection: &KafkaConnection, topic: &str, reader: &str) -> Vec<RawRecord> {
    let watermarks = connection
        .watermarks(topic)
        .await
        .unwrap_or_else(|e| panic!("watermarks of {topic}: {e}"));
    assert_eq!(watermarks.len(), 1, "{topic} should have one partition");
    let (low, high) = watermarks[0];
    if high <= low {
        return Vec::new();
    }
    let consumer = connection
        .consumer(&format!("{SERVICE_ID}-reader-{reader}"), "earliest")
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Offset(low))
        .expect("assignment");
    consumer.assign(&assignment).expect("assign");
    let mut records = Vec::new();
    loop {
        let message = tokio::time::timeout(READ_TIMEOUT, consumer.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{topic}: read {} records of offsets {low}..{high} within {READ_TIMEOUT:?}",
                    records.len()
                )
            })
            .unwrap_or_else(|e| panic!("reading {topic}: {e}"));
        records.push((
            message.key().map(<[u8]>::to_vec),
            message.payload().map(<[u8]>::to_vec),
        ));
        if message.offset() + 1 >= high {
            return records;
        }
    }
}

/// The field `name` (case-insensitive) of a JSON object value.
fn json_field(value: &[u8], name: &str) -> serde_json::Value {
    let value: serde_json::Value = serde_json::from_slice(value).unwrap_or_else(|e| {
        panic!(
            "value {:?} is not JSON: {e}",
            String::from_utf8_lossy(value)
        )
    });
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("value {value} is not a JSON object"));
    object
        .iter()
        .find(|(field, _)| field.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("value {value} has no field {name}"))
}

fn show_key(key: &[u8]) -> String {
    match key.iter().position(|b| !b.is_ascii_alphanumeric()) {
        Some(at) => format!(
            "{}+{:02x?}",
            String::from_utf8_lossy(&key[..at]),
            &key[at..]
        ),
        None => String::from_utf8_lossy(key).into_owned(),
    }
}

/// The `EMIT FINAL` table's records, each as (key, (WHO, WS, N)): its topic must hold exactly
/// the windows in `expected`, each once, under its windowed key.
fn assert_final_records(records: &[RawRecord], expected: &[(&str, i64, i64)], run: &str) {
    let mut seen = BTreeMap::new();
    let mut shown = Vec::new();
    for (key, value) in records {
        let key = key
            .clone()
            .unwrap_or_else(|| panic!("{run}: a FINALS record without key"));
        let value = value
            .clone()
            .unwrap_or_else(|| panic!("{run}: a FINALS tombstone under {}", show_key(&key)));
        let who = json_field(&value, "WHO");
        let ws = json_field(&value, "WS");
        let n = json_field(&value, "N");
        shown.push(format!("{} -> {who} {ws} {n}", show_key(&key)));
        let row = (
            who.as_str().expect("WHO is a string").to_owned(),
            ws.as_i64().expect("WS is an integer"),
            n.as_i64().expect("N is an integer"),
        );
        *seen.entry((key, row)).or_insert(0) += 1;
    }
    let wanted: BTreeMap<_, _> = expected
        .iter()
        .map(|&(user, start, n)| ((window_key(user, start), (user.to_owned(), start, n)), 1))
        .collect();
    assert_eq!(
        seen,
        wanted,
        "{run}: the FINALS topic must hold each closed window once, under its windowed key; it holds:\n{}",
        shown.join("\n")
    );
}

const SETUP: &str = "\
SET 'auto.offset.reset'='earliest';
CREATE STREAM clicks (user_id STRING KEY, page STRING) WITH (KAFKA_TOPIC='clicks', VALUE_FORMAT='JSON', PARTITIONS=1);
CREATE TABLE per_minute AS SELECT user_id, COUNT(*) AS clicks FROM clicks WINDOW TUMBLING (SIZE 1 MINUTE, RETENTION 1 DAY, GRACE PERIOD 10 SECONDS) GROUP BY user_id;
CREATE TABLE sessions AS SELECT user_id, COUNT(*) AS session_clicks FROM clicks WINDOW SESSION (30 SECONDS, RETENTION 1 DAY, GRACE PERIOD 0 SECONDS) GROUP BY user_id;
CREATE TABLE finals AS SELECT user_id, MIN(user_id) AS who, WINDOWSTART AS ws, COUNT(*) AS n FROM clicks WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 0 SECONDS) GROUP BY user_id EMIT FINAL;
INSERT INTO clicks (user_id, page, ROWTIME) VALUES ('alice', '/a', 1000);
INSERT INTO clicks (user_id, page, ROWTIME) VALUES ('alice', '/b', 2000);
INSERT INTO clicks (user_id, page, ROWTIME) VALUES ('bob', '/a', 30000);
INSERT INTO clicks (user_id, page, ROWTIME) VALUES ('alice', '/c', 61000);
INSERT INTO clicks (user_id, page, ROWTIME) VALUES ('bob', '/b', 100000);
INSERT INTO clicks (user_id, page, ROWTIME) VALUES ('alice', '/d', 125000);
";

/// The pull queries of every run; each has its own column names (see [`table`]).
const QUERIES: &str = "\
SET 'eddy.read_your_writes'='true';
SELECT user_id, WINDOWSTART, WINDOWEND, clicks FROM per_minute ORDER BY user_id, WINDOWSTART;
SELECT user_id, WINDOWSTART, WINDOWEND, session_clicks FROM sessions ORDER BY user_id, WINDOWSTART;
SELECT user_id, WINDOWSTART, ws, n FROM finals ORDER BY user_id, WINDOWSTART;
";

const PER_MINUTE: &[&str] = &["USER_ID", "WINDOWSTART", "WINDOWEND", "CLICKS"];
const SESSIONS: &[&str] = &["USER_ID", "WINDOWSTART", "WINDOWEND", "SESSION_CLICKS"];
const FINALS: &[&str] = &["USER_ID", "WINDOWSTART", "WS", "N"];

/// Checks the three pull queries of a run.
fn assert_run(
    stdout: &str,
    stderr: &str,
    run: &str,
    per_minute: &[(&str, &[i64])],
    sessions: &[(&str, &[i64])],
    finals: &[(&str, &[i64])],
) {
    assert_table(stdout, stderr, run, PER_MINUTE, per_minute);
    assert_table(stdout, stderr, run, SESSIONS, sessions);
    assert_table(stdout, stderr, run, FINALS, finals);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_and_their_stream_time_survive_restarts_and_the_loss_of_local_state() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let broker = EmbeddedBroker::start(EmbeddedBrokerConfig::new(dir.path().join("broker")))
        .await
        .expect("the embedded broker starts");
    let bootstrap = broker.bootstrap_servers();
    let mut connection = KafkaConnection::new(bootstrap.clone());
    for (key, value) in CLIENT_SETTINGS {
        connection
            .properties
            .insert((*key).to_owned(), (*value).to_owned());
    }
    let data_dir = dir.path().join("eddy");
    std::fs::create_dir_all(&data_dir).expect("data directory");

    // First run: stream time 125000. FINALS has closed the windows that end by then
    // ([0, 60000) and [60000, 120000)) and dropped those past end + 60000 ([0, 60000)).
    let (stdout, stderr) = run_statements(
        &bootstrap,
        &data_dir,
        SERVICE_ID,
        &format!("{SETUP}{QUERIES}"),
    )
    .await;
    assert_run(
        &stdout,
        &stderr,
        "first run",
        &[
            ("alice", &[0, 60000, 2]),
            ("alice", &[60000, 120000, 1]),
            ("alice", &[120000, 180000, 1]),
            ("bob", &[0, 60000, 1]),
            ("bob", &[60000, 120000, 1]),
        ],
        &[
            ("alice", &[1000, 2000, 2]),
            ("alice", &[61000, 61000, 1]),
            ("alice", &[125000, 125000, 1]),
            ("bob", &[30000, 30000, 1]),
            ("bob", &[100000, 100000, 1]),
        ],
        &[
            ("alice", &[60000, 60000, 1]),
            ("alice", &[120000, 120000, 1]),
            ("bob", &[60000, 60000, 1]),
        ],
    );
    let mut finals = vec![
        ("alice", 0, 2),
        ("bob", 0, 1),
        ("alice", 60000, 1),
        ("bob", 60000, 1),
    ];
    assert_final_records(
        &read_topic(&connection, "FINALS", "finals-1").await,
        &finals,
        "after the first run",
    );

    // Second run, on the same state. The stream time is still 125000:
    // - 5000 is late everywhere ([0, 60000) closed at 70000; alice's session [1000, 2000]
    //   would end at 5000 < 125000). Counted, it would make alice's first window 3.
    // - 118000 is within PER_MINUTE's grace ([60000, 120000) closes at 130000), and within the
    //   gap of alice's session [125000, 125000] stored by the first run, which it extends to
    //   [118000, 125000]; FINALS closed [60000, 120000) at 120000: late there.
    // - bob 128000 (stream time 128000) merges with bob's stored session [100000, 100000].
    // - alice 185000 (stream time 185000) closes FINALS' [120000, 180000) windows: alice's from
    //   the first run and bob's from this one. [60000, 120000) expires from FINALS' state.
    // - alice 175000 is within PER_MINUTE's grace ([120000, 180000) closes at 190000) and
    //   merges with the session [185000, 185000]; FINALS must not write [120000, 180000) again.
    let (stdout, stderr) = run_statements(
        &bootstrap,
        &data_dir,
        SERVICE_ID,
        &format!(
            "INSERT INTO clicks (user_id, page, ROWTIME) VALUES ('alice', '/late', 5000);
INSERT INTO clicks (user_id, page, ROWTIME) VALUES ('alice', '/e', 118000);
INSERT INTO clicks (user_id, page, ROWTIME) VALUES ('bob', '/c', 128000);
INSERT INTO clicks (user_id, page, ROWTIME) VALUES ('alice', '/f', 185000);
INSERT INTO clicks (user_id, page, ROWTIME) VALUES ('alice', '/g', 175000);
{QUERIES}"
        ),
    )
    .await;
    assert_run(
        &stdout,
        &stderr,
        "second run (restart)",
        &[
            ("alice", &[0, 60000, 2]),
            ("alice", &[60000, 120000, 2]),
            ("alice", &[120000, 180000, 2]),
            ("alice", &[180000, 240000, 1]),
            ("bob", &[0, 60000, 1]),
            ("bob", &[60000, 120000, 1]),
            ("bob", &[120000, 180000, 1]),
        ],
        &[
            ("alice", &[1000, 2000, 2]),
            ("alice", &[61000, 61000, 1]),
            ("alice", &[118000, 125000, 2]),
            ("alice", &[175000, 185000, 2]),
            ("bob", &[30000, 30000, 1]),
            ("bob", &[100000, 128000, 2]),
        ],
        &[
            ("alice", &[120000, 120000, 1]),
            ("alice", &[180000, 180000, 1]),
            ("bob", &[120000, 120000, 1]),
        ],
    );
    finals.extend([("alice", 120000, 1), ("bob", 120000, 1)]);
    assert_final_records(
        &read_topic(&connection, "FINALS", "finals-2").await,
        &finals,
        "after the second run",
    );

    // Third run, without local state: everything comes back from the changelogs, the stream
    // time (185000) too:
    // - bob 50000 is late ([0, 60000) closed; bob's session [30000, 30000] would end at 50000).
    // - alice 245000 (stream time 245000) closes FINALS' [180000, 240000), written by the
    //   second run's state; [120000, 180000) expires from FINALS' state.
    // - alice 235000 is within PER_MINUTE's grace ([180000, 240000) closes at 250000), merges
    //   with the session [245000, 245000], and is late for FINALS.
    std::fs::remove_dir_all(data_dir.join("state")).expect("state directory removed");
    let (stdout, stderr) = run_statements(&bootstrap, &data_dir, SERVICE_ID,
        &format!(
            "SET 'auto.offset.reset'='earliest';
INSERT INTO clicks (user_id, page, ROWTIME) VALUES ('bob', '/late', 50000);
INSERT INTO clicks (user_id, page, ROWTIME) VALUES ('alice', '/h', 245000);
INSERT INTO clicks (user_id, page, ROWTIME) VALUES ('alice', '/i', 235000);
{QUERIES}CREATE STREAM final_rows (who STRING, ws BIGINT, n BIGINT) WITH (KAFKA_TOPIC='FINALS', KEY_FORMAT='NONE', VALUE_FORMAT='JSON');
SELECT who, ws, n FROM final_rows EMIT CHANGES LIMIT 7;
"
        ),
    )
    .await;
    let run = "third run (local state deleted)";
    for query in ["CTAS_PER_MINUTE_1", "CTAS_SESSIONS_2", "CTAS_FINALS_3"] {
        assert!(
            stderr.contains(&format!(
                "restoring state from the changelog query=\"{query}\""
            )),
            "{run}: no restore of {query} from its changelog was logged:\n{stderr}"
        );
    }
    assert_run(
        &stdout,
        &stderr,
        run,
        &[
            ("alice", &[0, 60000, 2]),
            ("alice", &[60000, 120000, 2]),
            ("alice", &[120000, 180000, 2]),
            ("alice", &[180000, 240000, 2]),
            ("alice", &[240000, 300000, 1]),
            ("bob", &[0, 60000, 1]),
            ("bob", &[60000, 120000, 1]),
            ("bob", &[120000, 180000, 1]),
        ],
        &[
            ("alice", &[1000, 2000, 2]),
            ("alice", &[61000, 61000, 1]),
            ("alice", &[118000, 125000, 2]),
            ("alice", &[175000, 185000, 2]),
            ("alice", &[235000, 245000, 2]),
            ("bob", &[30000, 30000, 1]),
            ("bob", &[100000, 128000, 2]),
        ],
        &[
            ("alice", &[180000, 180000, 1]),
            ("alice", &[240000, 240000, 1]),
        ],
    );
    finals.push(("alice", 180000, 1));

    // The FINALS topic read back as a stream without key (the windowed key is not decoded):
    // the seven windows that closed, each once.
    let context = format!("{run}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let pushed = table(&stdout, &["WHO", "WS", "N"])
        .unwrap_or_else(|| panic!("no rows of final_rows in the {context}"));
    let distinct: BTreeSet<&Vec<String>> = pushed.iter().collect();
    assert_eq!(
        distinct.len(),
        pushed.len(),
        "a window of FINALS was written twice\n{context}"
    );
    for &(user, start, n) in &finals {
        let (start, n) = (start.to_string(), n.to_string());
        assert!(
            has_row(&stdout, &[user, &start, &n]),
            "final_rows lacks the window ({user}, {start}) with {n} clicks\n{context}"
        );
    }
    assert_eq!(pushed.len(), finals.len(), "rows of final_rows\n{context}");
    // All of the topic, also what came after the seven rows: nothing more.
    assert_final_records(
        &read_topic(&connection, "FINALS", "finals-3").await,
        &finals,
        "after the third run",
    );

    // The windowed keys of the EMIT CHANGES tables: the user id's bytes, then the window start
    // (sessions: the end, then the start) as big-endian 64-bit integers. Each key's last record
    // is its window's current row; sessions merged away were deleted (tombstones).
    let records = read_topic(&connection, "PER_MINUTE", "per-minute").await;
    let first_key = records
        .first()
        .and_then(|(key, _)| key.clone())
        .expect("PER_MINUTE has a first record with a key");
    assert!(
        [window_key("alice", 0), window_key("bob", 0)].contains(&first_key),
        "the first record of PER_MINUTE is for alice's or bob's window at 0, as \
         user id + 8-byte big-endian start; its key is {}",
        show_key(&first_key)
    );
    let mut latest: BTreeMap<Vec<u8>, Option<i64>> = BTreeMap::new();
    for (key, value) in &records {
        let key = key.clone().expect("PER_MINUTE records have keys");
        let clicks = value.as_deref().map(|v| {
            json_field(v, "CLICKS")
                .as_i64()
                .expect("CLICKS is an integer")
        });
        latest.insert(key, clicks);
    }
    let expected: BTreeMap<Vec<u8>, Option<i64>> = [
        ("alice", 0, 2),
        ("alice", 60000, 2),
        ("alice", 120000, 2),
        ("alice", 180000, 2),
        ("alice", 240000, 1),
        ("bob", 0, 1),
        ("bob", 60000, 1),
        ("bob", 120000, 1),
    ]
    .into_iter()
    .map(|(user, start, clicks)| (window_key(user, start), Some(clicks)))
    .collect();
    let show = |map: &BTreeMap<Vec<u8>, Option<i64>>| {
        map.iter()
            .map(|(k, v)| format!("{} -> {v:?}", show_key(k)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        latest,
        expected,
        "PER_MINUTE's topic, last record by key:\n{}",
        show(&latest)
    );

    let records = read_topic(&connection, "SESSIONS", "sessions").await;
    let mut latest: BTreeMap<Vec<u8>, Option<i64>> = BTreeMap::new();
    for (key, value) in &records {
        let key = key.clone().expect("SESSIONS records have keys");
        let clicks = value.as_deref().map(|v| {
            json_field(v, "SESSION_CLICKS")
                .as_i64()
                .expect("SESSION_CLICKS is an integer")
        });
        latest.insert(key, clicks);
    }
    let live: BTreeMap<Vec<u8>, Option<i64>> = latest
        .iter()
        .filter(|(_, v)| v.is_some())
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let expected: BTreeMap<Vec<u8>, Option<i64>> = [
        ("alice", 1000, 2000, 2),
        ("alice", 61000, 61000, 1),
        ("alice", 118000, 125000, 2),
        ("alice", 175000, 185000, 2),
        ("alice", 235000, 245000, 2),
        ("bob", 30000, 30000, 1),
        ("bob", 100000, 128000, 2),
    ]
    .into_iter()
    .map(|(user, start, end, clicks)| (session_key(user, start, end), Some(clicks)))
    .collect();
    assert_eq!(
        live,
        expected,
        "SESSIONS' topic, last record by key:\n{}",
        show(&latest)
    );
    // Written by the first run, merged by the second: deleted under their old windows.
    for (user, start, end) in [("alice", 125000, 125000), ("bob", 100000, 100000)] {
        assert_eq!(
            latest.get(&session_key(user, start, end)),
            Some(&None),
            "{user}'s session [{start}, {end}] should end with a tombstone; SESSIONS' topic, last record by key:\n{}",
            show(&latest)
        );
    }

    // The changelogs hold the windows, not the expiry index: a restore derives the index from
    // the windows it restores (the third run's expiries above depend on it).
    for query in ["CTAS_PER_MINUTE_1", "CTAS_SESSIONS_2", "CTAS_FINALS_3"] {
        let changelog = format!("_eddy-{SERVICE_ID}-query-{query}-changelog");
        let records = read_topic(&connection, &changelog, &format!("changelog-{query}")).await;
        assert!(!records.is_empty(), "{changelog} is empty");
        let index_entries = records
            .iter()
            .filter(|(key, _)| key.as_deref().is_some_and(|k| k.starts_with(b"\xffx")))
            .count();
        assert_eq!(index_entries, 0, "{changelog} holds expiry index entries");
    }

    broker.shutdown().await.expect("the embedded broker stops");
}
