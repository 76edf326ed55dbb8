//! `eddy cli --server URL`: the shell on a running `eddy server` over real HTTP. Statements go
//! to `/ksql`, queries to `/query-stream`, `SET` travels as request properties, and syntax errors
//! are caught before a request.
//!
//! Needs a broker: the server starts its embedded one in a temporary directory.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_runs_statements_and_queries_on_a_server() {
    let server = common::start_server().await;
    let topic = format!("remote_orders_{}", std::process::id());
    let statements = format!(
        "CREATE STREAM remote_orders (id STRING KEY, qty INT) WITH (KAFKA_TOPIC='{topic}', VALUE_FORMAT='JSON', PARTITIONS=1);\n\
         INSERT INTO remote_orders (id, qty) VALUES ('a', 4517);\n\
         SHOW STREAMS;\n\
         DESCRIBE remote_orders;\n\
         SELECT * FRM remote_orders;\n\
         SET 'auto.offset.reset'='earliest';\n\
         SELECT id, qty FROM remote_orders EMIT CHANGES LIMIT 1;\n\
         DROP STREAM no_such_stream;\n"
    );
    let home = tempfile::tempdir().expect("home");
    let mut child = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .arg("cli")
        .arg("--server")
        .arg(&server.url)
        .env("HOME", home.path())
        .env("NO_COLOR", "1")
        .env("EDDY_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("eddy cli starts");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(statements.as_bytes())
        .await
        .expect("statements written");
    drop(stdin);
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let status = tokio::time::timeout(Duration::from_secs(120), child.wait())
        .await
        .expect("the shell ends within 120 s")
        .expect("the shell runs");
    let (mut out, mut err) = (String::new(), String::new());
    stdout.read_to_string(&mut out).await.expect("stdout");
    stderr.read_to_string(&mut err).await.expect("stderr");
    assert!(status.success(), "stdout:\n{out}\nstderr:\n{err}");

    let expect = |needle: &str| assert!(out.contains(needle), "{needle:?} missing in:\n{out}");
    expect("shell on server http://");
    expect("stream \"REMOTE_ORDERS\" created");
    // SHOW STREAMS and DESCRIBE print tables from the /ksql entities.
    expect("| REMOTE_ORDERS");
    expect("| QTY");
    // The syntax error never reached the server: it has the local caret.
    expect("LINE 1: SELECT * FRM remote_orders;");
    // The push query saw the row only because SET travelled with it (earliest).
    expect("| a            | 4517");
    expect("Limit Reached");
    expect("ERROR:");
    assert!(out.contains("NO_SUCH_STREAM"), "{out}");
    server.stop().await;
}
