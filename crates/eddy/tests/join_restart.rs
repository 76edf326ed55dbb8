//! Joins across restarts: a restarted server resumes its join queries with the table rows it
//! had (local state), and a server whose local state was deleted rebuilds them from the tables'
//! topics and the stream-stream join's changelog. Runs the `eddy` binary against its own embedded broker (started here).

use eddy_broker::{EmbeddedBroker, EmbeddedBrokerConfig};

mod common;

use common::{has_row, run_statements};

const SERVICE_ID: &str = "join-restart";

const SETUP: &str = "\
SET 'auto.offset.reset'='earliest';
CREATE TABLE users (id STRING PRIMARY KEY, name STRING) WITH (KAFKA_TOPIC='users', VALUE_FORMAT='JSON', PARTITIONS=2);
CREATE TABLE balances (id STRING PRIMARY KEY, amount INT) WITH (KAFKA_TOPIC='balances', VALUE_FORMAT='JSON', PARTITIONS=2);
CREATE STREAM clicks (user_id STRING KEY, page STRING) WITH (KAFKA_TOPIC='clicks', VALUE_FORMAT='JSON', PARTITIONS=2);
CREATE STREAM visits (visit_id STRING KEY, user_id STRING) WITH (KAFKA_TOPIC='visits', VALUE_FORMAT='JSON', PARTITIONS=2);
CREATE STREAM payments (user_id STRING KEY, amount INT) WITH (KAFKA_TOPIC='payments', VALUE_FORMAT='JSON', PARTITIONS=2);
INSERT INTO users (id, name) VALUES ('u1', 'ann');
INSERT INTO users (id, name) VALUES ('u2', 'bob');
INSERT INTO balances (id, amount) VALUES ('u1', 10);
CREATE STREAM enriched AS SELECT c.user_id, c.page, u.name FROM clicks c LEFT JOIN users u ON c.user_id = u.id;
CREATE STREAM visit_names AS SELECT v.visit_id, v.user_id, u.name FROM visits v JOIN users u ON v.user_id = u.id;
CREATE TABLE user_balances AS SELECT u.id, u.name, b.amount FROM users u JOIN balances b ON u.id = b.id;
CREATE TABLE upper_names AS SELECT id, UCASE(name) AS name FROM users;
CREATE STREAM paid_clicks AS SELECT c.user_id, c.page, p.amount FROM clicks c JOIN payments p WITHIN 1 HOUR ON c.user_id = p.user_id;
INSERT INTO clicks (user_id, page) VALUES ('u1', '/a');
INSERT INTO payments (user_id, amount) VALUES ('u1', 5);
INSERT INTO visits (visit_id, user_id) VALUES ('v1', 'u2');
SELECT user_id, page, name FROM enriched EMIT CHANGES LIMIT 1;
SELECT visit_id, name FROM visit_names EMIT CHANGES LIMIT 1;
SELECT id, name, amount FROM user_balances EMIT CHANGES LIMIT 1;
SELECT user_id, page, amount FROM paid_clicks EMIT CHANGES LIMIT 1;
";

#[tokio::test]
async fn joins_resume_after_a_restart_and_rebuild_lost_table_state_from_the_topics() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let broker = EmbeddedBroker::start(EmbeddedBrokerConfig::new(dir.path().join("broker")))
        .await
        .expect("the embedded broker starts");
    let bootstrap = broker.bootstrap_servers();
    let data_dir = dir.path().join("eddy");
    std::fs::create_dir_all(&data_dir).expect("data directory");

    let (stdout, stderr) = run_statements(&bootstrap, &data_dir, SERVICE_ID, SETUP).await;
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        has_row(&stdout, &["u1", "/a", "ann"]),
        "first run\n{context}"
    );
    assert!(has_row(&stdout, &["v1", "bob"]), "first run\n{context}");
    assert!(
        has_row(&stdout, &["u1", "ann", "10"]),
        "first run\n{context}"
    );
    assert!(has_row(&stdout, &["u1", "/a", "5"]), "first run\n{context}");

    // A restart resumes the four queries; changes made while they run are joined (a payment
    // meets the click the stream-stream join stored before the restart).
    let (stdout, stderr) = run_statements(
        &bootstrap,
        &data_dir,
        SERVICE_ID,
        "SET 'auto.offset.reset'='earliest';
INSERT INTO users (id, name) VALUES ('u1', 'ann-2');
INSERT INTO balances (id, amount) VALUES ('u2', 20);
INSERT INTO clicks (user_id, page) VALUES ('u1', '/b');
INSERT INTO visits (visit_id, user_id) VALUES ('v2', 'u1');
INSERT INTO payments (user_id, amount) VALUES ('u1', 7);
SELECT user_id, page, name FROM enriched WHERE page = '/b' EMIT CHANGES LIMIT 1;
SELECT user_id, page, amount FROM paid_clicks WHERE page = '/a' AND amount = 7 EMIT CHANGES LIMIT 1;
SELECT visit_id, name FROM visit_names WHERE visit_id = 'v2' EMIT CHANGES LIMIT 1;
SELECT id, name, amount FROM user_balances WHERE id = 'u2' EMIT CHANGES LIMIT 1;
SET 'eddy.read_your_writes'='true';
SELECT id || '/pulled', name, amount FROM user_balances;
SELECT id || '/pulled', name FROM upper_names;
",
    )
    .await;
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        has_row(&stdout, &["u1", "/b", "ann-2"]),
        "after restart\n{context}"
    );
    assert!(
        has_row(&stdout, &["v2", "ann-2"]),
        "after restart\n{context}"
    );
    assert!(
        has_row(&stdout, &["u2", "bob", "20"]),
        "after restart\n{context}"
    );
    assert!(
        has_row(&stdout, &["u1", "/a", "7"]),
        "after restart\n{context}"
    );
    // The table-table join and the table from a table keep their rows for pull queries.
    assert!(
        has_row(&stdout, &["u1/pulled", "ANN-2"]),
        "after restart\n{context}"
    );
    assert!(
        has_row(&stdout, &["u1/pulled", "ann-2", "10"]),
        "after restart\n{context}"
    );
    assert!(
        has_row(&stdout, &["u2/pulled", "bob", "20"]),
        "after restart\n{context}"
    );

    // The rows' stores alone are gone (lost, or a server from before such tables kept their
    // rows): the join reads both tables again, the other query its table up to what its group
    // committed, and the pull queries wait for them.
    {
        let state = eddy_state::StateStore::open(
            &data_dir.join("state"),
            &eddy_state::StateConfig::default(),
        )
        .expect("the stopped server's state opens");
        let rows_stores: Vec<String> = state
            .store_names()
            .into_iter()
            .filter(|name| name.ends_with("-rows"))
            .collect();
        assert_eq!(rows_stores.len(), 2, "stores: {:?}", state.store_names());
        for store in rows_stores {
            state.drop_store(&store).expect("a rows store is deleted");
        }
    }
    let (stdout, stderr) = run_statements(
        &bootstrap,
        &data_dir,
        SERVICE_ID,
        "SET 'eddy.read_your_writes'='true';
SELECT id || '/rebuilt', name, amount FROM user_balances;
SELECT id || '/rebuilt', name FROM upper_names;
",
    )
    .await;
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        has_row(&stdout, &["u1/rebuilt", "ann-2", "10"]),
        "after losing the joined rows\n{context}"
    );
    assert!(
        has_row(&stdout, &["u2/rebuilt", "bob", "20"]),
        "after losing the joined rows\n{context}"
    );
    assert!(
        has_row(&stdout, &["u1/rebuilt", "ANN-2"]) && has_row(&stdout, &["u2/rebuilt", "BOB"]),
        "after losing the rows of the table from a table\n{context}"
    );

    // Without local state, the table sides are read again from their topics: the next stream
    // records still find their rows, and the table-table join still knows u1 and u2; the
    // stream-stream join rebuilds its stored clicks from its changelog.
    std::fs::remove_dir_all(data_dir.join("state")).expect("state directory removed");
    let (stdout, stderr) = run_statements(
        &bootstrap,
        &data_dir,
        SERVICE_ID,
        "SET 'auto.offset.reset'='earliest';
INSERT INTO clicks (user_id, page) VALUES ('u2', '/c');
INSERT INTO visits (visit_id, user_id) VALUES ('v3', 'u1');
PRODUCE TO balances KEY 'u1' VALUE NULL;
INSERT INTO payments (user_id, amount) VALUES ('u1', 11);
SELECT user_id, page, amount FROM paid_clicks WHERE page = '/a' AND amount = 11 EMIT CHANGES LIMIT 1;
SELECT user_id, page, name FROM enriched WHERE page = '/c' EMIT CHANGES LIMIT 1;
SELECT visit_id, name FROM visit_names WHERE visit_id = 'v3' EMIT CHANGES LIMIT 1;
SELECT id, name, amount FROM user_balances WHERE id = 'u1' AND amount IS NULL EMIT CHANGES LIMIT 1;
SET 'eddy.read_your_writes'='true';
SELECT id || '/after', name, amount FROM user_balances;
",
    )
    .await;
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        has_row(&stdout, &["u2", "/c", "bob"]),
        "after losing state\n{context}"
    );
    assert!(
        has_row(&stdout, &["v3", "ann-2"]),
        "after losing state\n{context}"
    );
    assert!(
        has_row(&stdout, &["u1", "/a", "11"]),
        "after losing state\n{context}"
    );
    // u1's balance was deleted: its joined row became a tombstone.
    assert!(
        has_row(&stdout, &["u1", "NULL", "NULL"]),
        "after losing state\n{context}"
    );
    assert!(
        has_row(&stdout, &["u2/after", "bob", "20"]),
        "after losing state\n{context}"
    );
    assert!(
        !stdout.contains("u1/after"),
        "u1's joined row is deleted\n{context}"
    );
}
