//! Headless mode: `eddy server --queries-file f.sql` runs the file's statements at start, takes
//! none over REST, and starts again from the same file after a restart (statements already
//! applied are skipped). Needs a broker: the server starts its own embedded one.

use std::time::Duration;

use tokio::process::Command;

mod common;

const QUERIES: &str = "\
-- The pipeline this server runs.
CREATE STREAM readings (sensor STRING KEY, celsius DOUBLE)
  WITH (KAFKA_TOPIC='readings', VALUE_FORMAT='JSON', PARTITIONS=1);
SET 'auto.offset.reset'='earliest';
CREATE TABLE hottest AS SELECT sensor, MAX(celsius) AS max_celsius FROM readings GROUP BY sensor;
";

/// `curl` a path of the server: (HTTP status, body).
async fn curl(url: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut command = Command::new("curl");
    command
        .arg("-s")
        .arg("-w")
        .arg("\n%{http_code}")
        .arg(format!("{url}{path}"));
    if let Some(body) = body {
        command
            .arg("-H")
            .arg("Content-Type: application/vnd.ksql.v1+json")
            .arg("-d")
            .arg(body);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("curl finishes within 60 s")
        .expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_headless_server_runs_its_file_and_takes_no_statements() {
    let files = tempfile::tempdir().expect("temporary directory");
    let queries = files.path().join("queries.sql");
    std::fs::write(&queries, QUERIES).expect("writes the queries file");
    let queries = queries.to_string_lossy().into_owned();
    let args = ["--queries-file", queries.as_str()];

    let data = tempfile::tempdir().expect("temporary directory");
    let server = common::start_server_with(data, &args).await;
    let output = server.startup_output.join("\n");
    assert!(output.contains("CREATE STREAM readings"), "{output}");
    assert!(
        !output.contains("already applied"),
        "a first start applies everything: {output}"
    );

    let (status, body) = curl(&server.url, "/ksql", Some(r#"{"ksql":"SHOW STREAMS;"}"#)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("headless mode"), "{body}");
    let (status, body) = curl(
        &server.url,
        "/query",
        Some(r#"{"ksql":"SELECT * FROM hottest;"}"#),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = curl(&server.url, "/info", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("RUNNING"), "{body}");

    // The same file starts the server again: what it made is there, nothing is made twice.
    let data = server.stop().await;
    let server = common::start_server_with(data, &args).await;
    let output = server.startup_output.join("\n");
    assert_eq!(
        output.matches("already applied: skipped").count(),
        2,
        "both CREATEs are skipped, SET runs: {output}"
    );
    let (status, body) = curl(&server.url, "/clusterStatus", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("CTAS_HOTTEST_"),
        "the query runs again: {body}"
    );
    server.stop().await;
}
