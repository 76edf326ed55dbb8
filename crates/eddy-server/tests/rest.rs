//! The REST API end to end: an embedded broker, an engine, the server on a real socket, and a
//! plain HTTP/1.1 client, as a ksqlDB client would use it.
//!
//! Self-contained: the broker runs in a temporary directory on a free port, and the engine has a
//! service id and topic prefix of its own.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use eddy_broker::{CLIENT_SETTINGS, EmbeddedBroker, EmbeddedBrokerConfig};
use eddy_common::config::EngineConfig;
use eddy_engine::Engine;
use eddy_runtime::KafkaConnection;
use eddy_server::{AppState, ServerConfig};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Longest any one exchange with the server may take.
const WAIT: Duration = Duration::from_secs(60);

/// One HTTP/1.1 connection to the server; dropping it closes the connection.
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Connection {
    async fn open(address: SocketAddr) -> Connection {
        let stream = TcpStream::connect(address).await.expect("connects");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP handshake");
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Connection { sender, driver }
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Response<Incoming> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "localhost")
            .header(CONTENT_TYPE, "application/vnd.ksql.v1+json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .expect("request");
        tokio::time::timeout(WAIT, self.sender.send_request(request))
            .await
            .expect("the server answers in time")
            .expect("the server answers")
    }
}

/// Sends one request on a fresh connection; returns the status and the whole body as text.
async fn call(
    address: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, String) {
    let mut connection = Connection::open(address).await;
    let response = connection.send(method, path, body).await;
    let status = response.status();
    assert_eq!(
        response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/vnd.ksql.v1+json")
    );
    let body = tokio::time::timeout(WAIT, response.into_body().collect())
        .await
        .expect("the body ends in time")
        .expect("body")
        .to_bytes();
    (
        status,
        String::from_utf8(body.to_vec()).expect("UTF-8 body"),
    )
}

/// One HTTP/2 connection (cleartext, prior knowledge), as ksqlDB's Java client opens.
struct Http2Connection {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Http2Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Http2Connection {
    async fn open(address: SocketAddr) -> Http2Connection {
        let stream = TcpStream::connect(address).await.expect("connects");
        let (sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .expect("HTTP/2 handshake");
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Http2Connection { sender, driver }
    }

    /// `POST /query-stream` with `sql`, accepting `accept`.
    async fn query_stream(&mut self, sql: &str, accept: &str) -> Response<Incoming> {
        let request = Request::builder()
            .method(Method::POST)
            .uri("http://localhost/query-stream")
            .header(hyper::header::ACCEPT, accept)
            .body(Full::new(Bytes::from(
                json!({"sql": sql, "properties": {"auto.offset.reset": "earliest"}}).to_string(),
            )))
            .expect("request");
        let response = tokio::time::timeout(WAIT, self.sender.send_request(request))
            .await
            .expect("the server answers in time")
            .expect("the server answers");
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        response
    }
}

/// The rest of a body, as text.
async fn text_of(response: Response<Incoming>) -> String {
    let body = tokio::time::timeout(WAIT, response.into_body().collect())
        .await
        .expect("the body ends in time")
        .expect("body")
        .to_bytes();
    String::from_utf8(body.to_vec()).expect("UTF-8 body")
}

const DELIMITED: &str = "application/vnd.ksqlapi.delimited.v1";

/// `POST path` with `body` on a fresh HTTP/1.1 connection, whatever the response's type.
async fn call_any(address: SocketAddr, path: &str, body: Value) -> (StatusCode, String) {
    let mut connection = Connection::open(address).await;
    let response = connection.send(Method::POST, path, Some(body)).await;
    let status = response.status();
    (status, text_of(response).await)
}

async fn ksql(address: SocketAddr, sql: &str, properties: Value) -> (StatusCode, Value) {
    let (status, body) = call(
        address,
        Method::POST,
        "/ksql",
        Some(json!({"ksql": sql, "streamsProperties": properties})),
    )
    .await;
    (status, serde_json::from_str(&body).expect("a JSON body"))
}

async fn query(address: SocketAddr, sql: &str, properties: Value) -> (StatusCode, String) {
    call(
        address,
        Method::POST,
        "/query",
        Some(json!({"ksql": sql, "streamsProperties": properties})),
    )
    .await
}

/// An embedded broker, an engine and the server on a free port, each of its own.
struct Running {
    address: SocketAddr,
    service_id: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: JoinHandle<Result<(), eddy_server::ServerError>>,
    engine: Engine,
    broker: EmbeddedBroker,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn start(config: ServerConfig) -> Running {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = EmbeddedBroker::start(EmbeddedBrokerConfig::new(dir.path().join("broker")))
            .await
            .expect("embedded broker starts");
        let mut connection = KafkaConnection::new(broker.bootstrap_servers());
        for (key, value) in CLIENT_SETTINGS {
            connection
                .properties
                .insert((*key).to_owned(), (*value).to_owned());
        }
        let run = uuid::Uuid::new_v4().simple().to_string();
        let service_id = format!("rest{}", &run[..8]);
        let engine = Engine::start(
            EngineConfig {
                service_id: service_id.clone(),
                topic_prefix: format!("r{}_", &run[..8]),
                commit_interval_ms: 100,
                state_dir: dir.path().join("state"),
                ..EngineConfig::default()
            },
            connection,
        )
        .await
        .expect("engine starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let address = listener.local_addr().expect("address");
        let state = AppState::for_engine(engine.clone(), config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(eddy_server::serve(listener, state, async move {
            let _ = stopped.await;
        }));
        Running {
            address,
            service_id,
            stop,
            server,
            engine,
            broker,
            _dir: dir,
        }
    }

    /// Waits for the server task (stopped through `stop`), then stops the engine and the broker.
    async fn finish(
        server: JoinHandle<Result<(), eddy_server::ServerError>>,
        engine: Engine,
        broker: EmbeddedBroker,
    ) {
        tokio::time::timeout(WAIT, server)
            .await
            .expect("the server stops in time")
            .expect("the server task")
            .expect("the server ran");
        engine.shutdown().await;
        drop(engine);
        broker.shutdown().await.expect("broker stops");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_api_end_to_end() {
    let Running {
        address,
        service_id,
        stop,
        server,
        engine,
        broker,
        _dir,
    } = Running::start(ServerConfig::default()).await;

    // DDL and a materialized table.
    let (status, body) = ksql(
        address,
        "CREATE STREAM s (k STRING KEY, v INT) WITH (KAFKA_TOPIC='s', VALUE_FORMAT='JSON', PARTITIONS=1);\n\
         CREATE TABLE t AS SELECT k, COUNT(*) AS n, SUM(v) AS total FROM s GROUP BY k;",
        json!({"ksql.streams.auto.offset.reset": "earliest"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body.as_array().map(Vec::len), Some(2), "{body}");
    assert_eq!(body[0]["@type"], "currentStatus");
    assert_eq!(body[0]["commandId"], "stream/S/create");
    assert_eq!(body[0]["commandStatus"]["status"], "SUCCESS");
    assert!(
        body[0]["commandSequenceNumber"]
            .as_i64()
            .is_some_and(|n| n >= 0),
        "{body}"
    );
    assert_eq!(body[1]["commandId"], "table/T/create");
    assert!(body[1]["commandStatus"]["queryId"].is_string(), "{body}");

    let (status, body) = ksql(
        address,
        "INSERT INTO s (k, v) VALUES ('a', 1); INSERT INTO s (k, v) VALUES ('a', 2);\n\
         INSERT INTO s (k, v) VALUES ('b', 5);",
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body.as_array().map(Vec::len), Some(3), "{body}");

    // SHOW STREAMS and DESCRIBE.
    let (status, body) = ksql(address, "SHOW STREAMS; DESCRIBE t;", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body[0]["@type"], "streams");
    assert!(
        body[0]["streams"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["name"] == "S" && s["type"] == "STREAM")),
        "{body}"
    );
    assert_eq!(body[1]["@type"], "sourceDescription");
    assert_eq!(body[1]["sourceDescription"]["type"], "TABLE");
    assert_eq!(
        body[1]["sourceDescription"]["fields"][0],
        json!({"name": "K", "schema": {"type": "STRING", "fields": null, "memberSchema": null},
               "type": "KEY"})
    );
    assert_eq!(
        body[1]["sourceDescription"]["writeQueries"][0]["state"], "RUNNING",
        "{body}"
    );

    // A pull query that reads its writes.
    let (status, text) = query(
        address,
        "SELECT * FROM t WHERE k='a';",
        json!({"eddy.read_your_writes": "true"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let rows: Value = serde_json::from_str(&text).expect("a JSON array");
    assert!(
        rows[0]["header"]["queryId"].is_string()
            && rows[0]["header"]["schema"]
                .as_str()
                .is_some_and(|s| s.starts_with("`K` STRING, `N` BIGINT, `TOTAL` ")),
        "{text}"
    );
    assert_eq!(rows[1], json!({"row": {"columns": ["a", 2, 3]}}), "{text}");
    assert_eq!(rows.as_array().map(Vec::len), Some(2), "{text}");

    // A push query from the beginning, to its LIMIT.
    let (status, text) = query(
        address,
        "SELECT k, v FROM s EMIT CHANGES LIMIT 2;",
        json!({"ksql.streams.auto.offset.reset": "earliest"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.starts_with("[{\"header\":"), "{text}");
    assert!(
        text.ends_with("{\"finalMessage\":\"Limit Reached\"}]\n"),
        "{text}"
    );
    let rows: Value = serde_json::from_str(&text).expect("a JSON array");
    assert_eq!(rows[0]["header"]["schema"], "`K` STRING, `V` INTEGER");
    assert_eq!(rows[1], json!({"row": {"columns": ["a", 1]}}));
    assert_eq!(rows[2], json!({"row": {"columns": ["a", 2]}}));

    // Bad statements.
    let (status, body) = ksql(address, "DESCRIBE nosuch;", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["@type"], "statement_error");
    assert_eq!(body["error_code"], 40001);
    assert_eq!(body["statementText"], "DESCRIBE nosuch;");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("NOSUCH")),
        "{body}"
    );
    let (status, body) = ksql(address, "SELECT * FROM t WHERE k='a';", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error_code"], 40002);

    // Info and health.
    let (status, text) = call(address, Method::GET, "/info", None).await;
    assert_eq!(status, StatusCode::OK);
    let info: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(info["KsqlServerInfo"]["ksqlServiceId"], service_id.as_str());
    assert_eq!(info["KsqlServerInfo"]["serverStatus"], "RUNNING");
    let (status, text) = call(address, Method::GET, "/healthcheck", None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).expect("JSON")["isHealthy"],
        true
    );

    // Prometheus metrics of the running queries.
    let mut connection = Connection::open(address).await;
    let response = connection.send(Method::GET, "/metrics", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = text_of(response).await;
    let sample = |name: &str| {
        text.lines()
            .find(|line| line.starts_with(&format!("{name}{{query=\"CTAS_T_")))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse::<f64>().ok())
    };
    assert_eq!(sample("eddy_query_running"), Some(1.0), "{text}");
    assert!(sample("eddy_query_records_in_total") >= Some(3.0), "{text}");
    assert_eq!(sample("eddy_query_lag_records"), Some(0.0), "{text}");
    assert!(sample("eddy_query_state_bytes").is_some(), "{text}");
    drop(connection);

    // The streaming API over HTTP/2: a pull query, newline-delimited (the default).
    let mut h2 = Http2Connection::open(address).await;
    let response = h2
        .query_stream("SELECT * FROM t WHERE k='a';", DELIMITED)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some(DELIMITED)
    );
    let text = text_of(response).await;
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0]["queryId"].is_string(), "{text}");
    assert_eq!(
        lines[0]["columnNames"],
        json!(["K", "N", "TOTAL"]),
        "{text}"
    );
    assert_eq!(lines[0]["columnTypes"][0], "STRING", "{text}");
    assert_eq!(lines[0]["columnTypes"][1], "BIGINT", "{text}");
    assert_eq!(lines[1], json!(["a", 2, 3]), "{text}");

    // A push query to its LIMIT, as one JSON array, on the same connection.
    let response = h2
        .query_stream(
            "SELECT k, v FROM s EMIT CHANGES LIMIT 2;",
            "application/json",
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = text_of(response).await;
    let rows: Value = serde_json::from_str(&text).expect("a JSON array");
    assert!(
        rows[0]["queryId"]
            .as_str()
            .is_some_and(|id| id.starts_with("transient_")),
        "{text}"
    );
    assert_eq!(
        rows[0]["columnTypes"],
        json!(["STRING", "INTEGER"]),
        "{text}"
    );
    assert_eq!(rows[1], json!(["a", 1]), "{text}");
    assert_eq!(rows[2], json!(["a", 2]), "{text}");
    assert_eq!(rows.as_array().map(Vec::len), Some(3), "{text}");

    // A push query without LIMIT runs until /close-query names it.
    let response = h2
        .query_stream("SELECT * FROM s EMIT CHANGES;", DELIMITED)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = Vec::new();
    while received.iter().filter(|&&b| b == b'\n').count() < 4 {
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("rows arrive in time")
            .expect("the body goes on")
            .expect("a frame");
        if let Ok(data) = frame.into_data() {
            received.extend_from_slice(&data);
        }
    }
    let text = String::from_utf8(received.clone()).expect("UTF-8");
    let header: Value =
        serde_json::from_str(text.lines().next().expect("a header")).expect("JSON header");
    let query_id = header["queryId"].as_str().expect("a query id").to_owned();
    let close = json!({"queryId": query_id});
    let (status, text) = call_any(address, "/close-query", close.clone()).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    while let Some(frame) = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("the body ends in time once closed")
    {
        if let Ok(data) = frame.expect("a frame").into_data() {
            received.extend_from_slice(&data);
        }
    }
    let text = String::from_utf8(received).expect("UTF-8");
    assert_eq!(text.lines().count(), 4, "{text}");
    assert_eq!(text.lines().nth(3), Some(r#"["b",5]"#), "{text}");
    // Closed and gone: a second close names the query it cannot find.
    let (status, text) = call_any(address, "/close-query", close).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains(&query_id), "{text}");

    // Errors are ksqlDB's error objects.
    let response = h2
        .query_stream("SELECT * FROM nosuch EMIT CHANGES;", DELIMITED)
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: Value = serde_json::from_str(&text_of(response).await).expect("JSON error");
    assert_eq!(error["@type"], "statement_error", "{error}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("NOSUCH")),
        "{error}"
    );
    drop(h2);

    // /query-stream over HTTP/1.1 too.
    let (status, text) = call_any(
        address,
        "/query-stream",
        json!({"sql": "SELECT k, v FROM s EMIT CHANGES LIMIT 1;",
               "properties": {"auto.offset.reset": "earliest"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(text.lines().nth(1), Some(r#"["a",1]"#), "{text}");

    // A push query without LIMIT stays open until the server shuts down, which ends it.
    let mut open = Connection::open(address).await;
    let response = open
        .send(
            Method::POST,
            "/query",
            Some(json!({"ksql": "SELECT * FROM s EMIT CHANGES;",
                        "streamsProperties": {"auto.offset.reset": "earliest"}})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = Vec::new();
    // Until every row is there; then shut down while the query is open.
    while received.windows(6).filter(|w| w == b"\"row\":").count() < 3 {
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("rows arrive in time")
            .expect("the body goes on")
            .expect("a frame");
        if let Ok(data) = frame.into_data() {
            received.extend_from_slice(&data);
        }
    }
    let _ = stop.send(());
    while !received.ends_with(b"]\n") {
        let Some(frame) = tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("the body ends in time")
        else {
            break;
        };
        if let Ok(data) = frame.expect("a frame").into_data() {
            received.extend_from_slice(&data);
        }
    }
    let text = String::from_utf8(received).expect("UTF-8");
    assert!(
        text.ends_with("{\"finalMessage\":\"Query Completed\"}]\n"),
        "{text}"
    );
    let rows: Value = serde_json::from_str(&text).expect("a JSON array");
    assert_eq!(rows.as_array().map(Vec::len), Some(5), "{text}");
    drop(body);
    drop(open);

    Running::finish(server, engine, broker).await;
}

/// `max_push_queries` bounds the push queries streaming at once, over `/query-stream` and
/// `/query` alike: one more is refused with ksqlDB's message, pull queries still run, and a slot
/// frees once its response is dropped by the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_queries_beyond_max_push_queries_are_refused() {
    let Running {
        address,
        stop,
        server,
        engine,
        broker,
        _dir,
        ..
    } = Running::start(ServerConfig {
        max_push_queries: 1,
        ..ServerConfig::default()
    })
    .await;
    let (status, body) = ksql(
        address,
        "CREATE STREAM s (k STRING KEY, v INT) WITH (KAFKA_TOPIC='s', VALUE_FORMAT='JSON', PARTITIONS=1);\n\
         CREATE TABLE t AS SELECT k, COUNT(*) AS n FROM s GROUP BY k;\n\
         INSERT INTO s (k, v) VALUES ('a', 1);",
        json!({"ksql.streams.auto.offset.reset": "earliest"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The one slot: a push query without LIMIT, open until its response is dropped.
    let mut h2 = Http2Connection::open(address).await;
    let open = h2
        .query_stream("SELECT * FROM s EMIT CHANGES;", DELIMITED)
        .await;
    assert_eq!(open.status(), StatusCode::OK);
    let mut open_body = open.into_body();
    let frame = tokio::time::timeout(WAIT, open_body.frame())
        .await
        .expect("the header arrives in time");
    assert!(frame.is_some(), "the open query's body goes on");

    let refused = |text: &str| {
        text.contains("exceed the configured limit") && text.contains("Configured limit: 1")
    };
    let second = h2
        .query_stream("SELECT * FROM s EMIT CHANGES;", DELIMITED)
        .await;
    assert_eq!(second.status(), StatusCode::BAD_REQUEST);
    let text = text_of(second).await;
    assert!(refused(&text), "{text}");
    let (status, text) = query(address, "SELECT * FROM s EMIT CHANGES;", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(refused(&text), "{text}");
    // Pull queries take no slot.
    let (status, text) = query(
        address,
        "SELECT * FROM t;",
        json!({"eddy.read_your_writes": "true"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");

    // Dropping the open response (the client resets its stream) gives the slot back.
    drop(open_body);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, text) = query(
            address,
            "SELECT k, v FROM s EMIT CHANGES LIMIT 1;",
            json!({"auto.offset.reset": "earliest"}),
        )
        .await;
        if status == StatusCode::OK {
            assert!(text.contains(r#"["a",1]"#), "{text}");
            break;
        }
        assert!(refused(&text), "{text}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was not given back: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(h2);
    let _ = stop.send(());
    Running::finish(server, engine, broker).await;
}
