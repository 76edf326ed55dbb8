//! `eddy cli --server URL`: the shell on a running `eddy server` over real HTTP and HTTPS.
//! Statements go to `/ksql`, queries to `/query-stream`, `PRINT` to `/query`, `SET` travels as
//! request properties, and syntax errors are caught before a request. Over HTTPS, streaming
//! inserts of STRUCT, MAP and ARRAY values too.
//!
//! Needs a broker: the server starts its embedded one in a temporary directory.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

mod common;

/// Runs `eddy cli ARGS` with `statements` on its standard input to the end; returns its exit
/// status, stdout and stderr.
async fn run_shell(args: &[&str], statements: &str) -> (ExitStatus, String, String) {
    let home = tempfile::tempdir().expect("home");
    let mut child = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .arg("cli")
        .args(args)
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
    let (mut out, mut err) = (String::new(), String::new());
    let read_both = async {
        let _ = tokio::join!(
            stdout.read_to_string(&mut out),
            stderr.read_to_string(&mut err)
        );
    };
    let finished = tokio::time::timeout(Duration::from_secs(120), async {
        read_both.await;
        child.wait().await
    })
    .await;
    let status = match finished {
        Ok(status) => status.expect("the shell runs"),
        Err(_) => panic!("the shell did not end within 120 s"),
    };
    (status, out, err)
}

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
    let (status, out, err) = run_shell(&["--server", &server.url], &statements).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_the_shell_prints_and_streaming_inserts_take_nested_values() {
    let tls = tempfile::tempdir().expect("tls dir");
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("certificate");
    let cert_path = tls.path().join("cert.pem");
    let key_path = tls.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).expect("cert written");
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).expect("key written");
    let cert_arg = cert_path.display().to_string();
    let key_arg = key_path.display().to_string();
    let server = common::start_server_with(
        tempfile::tempdir().expect("data"),
        &["--tls-cert-file", &cert_arg, "--tls-key-file", &key_arg],
    )
    .await;
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );

    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(
            reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).expect("root"),
        )
        .build()
        .expect("client");
    let topic = format!("tls_profiles_{}", std::process::id());
    let created = client
        .post(format!("{}/ksql", server.url))
        .body(
            serde_json::json!({"ksql": format!(
                "CREATE STREAM profiles (id STRING KEY, address STRUCT<city STRING, zip INT>, \
                 scores MAP<STRING, INT>, tags ARRAY<STRING>) \
                 WITH (KAFKA_TOPIC='{topic}', VALUE_FORMAT='JSON', PARTITIONS=1);"
            )})
            .to_string(),
        )
        .send()
        .await
        .expect("POST /ksql over HTTPS");
    assert_eq!(
        created.version(),
        reqwest::Version::HTTP_2,
        "ALPN gives HTTP/2"
    );
    let body = created.text().await.expect("body");
    assert!(body.contains("SUCCESS"), "{body}");

    // Streaming inserts: nested values as JSON objects and arrays; a bad one answered alone.
    let rows = [
        r#"{"target":"profiles"}"#,
        r#"{"ID":"p1","ADDRESS":{"city":"Lyon","zip":69001},"SCORES":{"math":7,"art":9},"TAGS":["a","b"]}"#,
        r#"{"id":"p2","address":{"CITY":"Oslo"},"scores":{},"tags":[]}"#,
        r#"{"id":"p3","address":{"city":"Rome","zip":"not a number"}}"#,
        r#"{"id":"p4","nosuch":1}"#,
    ];
    let acks = client
        .post(format!("{}/inserts-stream", server.url))
        .body(rows.join("\n"))
        .send()
        .await
        .expect("POST /inserts-stream")
        .text()
        .await
        .expect("acks");
    let acks: Vec<serde_json::Value> = acks
        .lines()
        .map(|line| serde_json::from_str(line).expect("an ack is JSON"))
        .collect();
    assert_eq!(acks.len(), 4, "{acks:?}");
    assert_eq!(acks[0]["status"], "ok", "{acks:?}");
    assert_eq!(acks[1]["status"], "ok", "{acks:?}");
    assert_eq!(acks[2]["status"], "error", "{acks:?}");
    assert!(
        acks[2]["message"]
            .as_str()
            .is_some_and(|m| m.contains("ZIP")),
        "the error names the field: {acks:?}"
    );
    assert_eq!(acks[3]["status"], "error", "{acks:?}");
    assert!(
        acks[3]["message"]
            .as_str()
            .is_some_and(|m| m.to_uppercase().contains("NOSUCH")),
        "{acks:?}"
    );

    let ca_arg = cert_path.display().to_string();
    let statements = format!(
        "SET 'auto.offset.reset'='earliest';\n\
         SELECT id, address->city AS city, address->zip AS zip, scores['art'] AS art, tags[2] AS tag FROM profiles EMIT CHANGES LIMIT 2;\n\
         PRINT '{topic}' FROM BEGINNING LIMIT 2;\n"
    );
    let (status, out, err) = run_shell(
        &["--server", &server.url, "--tls-ca-file", &ca_arg],
        &statements,
    )
    .await;
    assert!(status.success(), "stdout:\n{out}\nstderr:\n{err}");
    let expect = |needle: &str| assert!(out.contains(needle), "{needle:?} missing in:\n{out}");
    expect("shell on server https://");
    let rows = common::rows(&out);
    assert!(
        rows.iter()
            .any(|row| row == &["p1", "Lyon", "69001", "9", "b"]),
        "{rows:?}\n{out}"
    );
    assert!(
        rows.iter()
            .any(|row| row == &["p2", "Oslo", "NULL", "NULL", "NULL"]),
        "{rows:?}\n{out}"
    );
    // PRINT streams the topic's records as the server's /query gives them.
    expect("key: p1");
    expect("Lyon");
    expect("key: p2");

    // Without the CA, the shell does not trust the server, and says so.
    let (status, out, err) = run_shell(&["--server", &server.url], "SHOW STREAMS;\n").await;
    assert!(!status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("cannot reach"), "{err}");
    server.stop().await;
}
