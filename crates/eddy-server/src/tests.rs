//! Handler tests over a fake backend, through `tower::ServiceExt::oneshot` (no socket, no Kafka).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{Request, StatusCode};
use eddy_catalog::{Catalog, Column, ColumnRole, SourceKind};
use eddy_common::types::SqlType;
use eddy_engine::arrow::array::{Int64Array, RecordBatch, StringArray};
use eddy_engine::arrow::datatypes::{DataType, Field, Schema};
use eddy_engine::{EngineError, Session, SourceDescription, SourceSummary, StatementResult};
use eddy_sql::{ParsedStatement, ShowTarget, Statement};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::{AppState, Backend, DEFAULT_MAX_REQUEST_BYTES, ServerConfig, app};

/// Answers statements with canned results, and records the session each ran in.
#[derive(Default)]
struct Fake {
    sessions: Mutex<Vec<Session>>,
    /// Rows given to `insert_json_row`, with their target.
    inserted: Mutex<Vec<(String, String)>>,
    /// Rows `send_json_row` sent that are not acknowledged yet, and the most there were.
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    most_in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait]
impl Backend for Fake {
    async fn execute(
        &self,
        session: &mut Session,
        statement: &ParsedStatement,
    ) -> Result<StatementResult, EngineError> {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.push(session.clone());
        }
        match &statement.statement {
            Statement::Set { name, value } => {
                if name == "auto.offset.reset" && value != "earliest" && value != "latest" {
                    return Err(EngineError::invalid(format!(
                        "invalid value '{value}' for property '{name}'"
                    )));
                }
                session.properties.insert(name.clone(), value.clone());
                Ok(StatementResult::Success {
                    message: format!("'{name}' set to '{value}'"),
                    query_id: None,
                })
            }
            Statement::CreateSource { name, .. } => Ok(StatementResult::Success {
                message: format!("Stream {name} created"),
                query_id: None,
            }),
            Statement::CreateSourceAs { name, .. } => Ok(StatementResult::Success {
                message: format!("Table {name} created and running"),
                query_id: Some(format!("CTAS_{name}_1")),
            }),
            Statement::Show {
                target: ShowTarget::Streams,
                ..
            } => Ok(StatementResult::Sources(vec![SourceSummary {
                name: "S".into(),
                kind: SourceKind::Stream,
                topic: "s".into(),
                key_format: "KAFKA".into(),
                value_format: "JSON".into(),
                window: None,
            }])),
            Statement::Show {
                target: ShowTarget::Properties,
                ..
            } => Ok(StatementResult::Properties(vec![(
                "eddy.max_batch_records".into(),
                "SERVER".into(),
                "16384".into(),
            )])),
            Statement::Describe { name, .. } if name == "S" => {
                Ok(StatementResult::Description(Box::new(SourceDescription {
                    name: "S".into(),
                    kind: SourceKind::Stream,
                    read_only: false,
                    columns: vec![
                        Column {
                            name: "K".into(),
                            sql_type: SqlType::String,
                            role: ColumnRole::Key,
                        },
                        Column {
                            name: "V".into(),
                            sql_type: SqlType::Array(Box::new(SqlType::Int)),
                            role: ColumnRole::Value,
                        },
                    ],
                    topic: "s".into(),
                    key_format: "KAFKA".into(),
                    value_format: "JSON".into(),
                    partitions: 2,
                    timestamp_column: None,
                    window: None,
                    sql: "CREATE STREAM S ...".into(),
                    extended: false,
                    read_by: vec![],
                    written_by: vec![],
                    statistics: vec![],
                    state: None,
                })))
            }
            Statement::Describe { name, .. } => Err(EngineError::invalid(format!(
                "stream or table \"{name}\" does not exist"
            ))),
            Statement::InsertValues { .. } => Err(EngineError::Internal("broken".into())),
            Statement::Select(_) => {
                let schema = Arc::new(Schema::new(vec![
                    Field::new("K", DataType::Utf8, true),
                    Field::new("N", DataType::Int64, true),
                ]));
                let batch = RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(StringArray::from(vec!["a"])),
                        Arc::new(Int64Array::from(vec![2])),
                    ],
                )
                .map_err(|e| EngineError::Internal(e.to_string()))?;
                Ok(StatementResult::Rows {
                    schema,
                    batches: vec![batch],
                })
            }
            other => Err(EngineError::invalid(format!("fake cannot run {other:?}"))),
        }
    }

    fn service_id(&self) -> String {
        "fake_".into()
    }

    async fn insert_json_row(&self, target: &str, row_json: &[u8]) -> Result<(), EngineError> {
        let row = String::from_utf8_lossy(row_json).into_owned();
        if row.contains("bad") {
            return Err(EngineError::invalid(format!("the row {row} is bad")));
        }
        if let Ok(mut inserted) = self.inserted.lock() {
            inserted.push((target.to_owned(), row));
        }
        Ok(())
    }

    /// Refuses a "bad" row at once; a row with "full" finds the producer's queue full; any
    /// other is recorded now and acknowledged after `"DELAY_MS"` milliseconds when the row has
    /// that field, else at once.
    fn send_json_row(
        &self,
        target: &str,
        row_json: &[u8],
    ) -> Result<Option<eddy_engine::RowDelivery>, EngineError> {
        let row = String::from_utf8_lossy(row_json).into_owned();
        if row.contains("bad") {
            return Err(EngineError::invalid(format!("the row {row} is bad")));
        }
        if row.contains("full") {
            return Ok(None);
        }
        let delay_ms = serde_json::from_str::<Value>(&row)
            .ok()
            .and_then(|v| v["DELAY_MS"].as_u64())
            .unwrap_or(0);
        if let Ok(mut inserted) = self.inserted.lock() {
            inserted.push((target.to_owned(), row));
        }
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.in_flight.fetch_add(1, SeqCst) + 1;
        self.most_in_flight.fetch_max(now, SeqCst);
        let in_flight = Arc::clone(&self.in_flight);
        Ok(Some(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            in_flight.fetch_sub(1, SeqCst);
            Ok((0, 0))
        })))
    }

    /// One stream, `S` (key `K`, value `V`), and one table, `T`.
    fn catalog(&self) -> Catalog {
        let mut catalog = Catalog::new();
        for (name, kind) in [("S", SourceKind::Stream), ("T", SourceKind::Table)] {
            let columns = vec![
                Column {
                    name: "K".into(),
                    sql_type: SqlType::String,
                    role: ColumnRole::Key,
                },
                Column {
                    name: "V".into(),
                    sql_type: SqlType::BigInt,
                    role: ColumnRole::Value,
                },
            ];
            catalog.replace_source(eddy_catalog::Source::json(name, kind, columns, 1));
        }
        catalog
    }

    fn query_state(&self, _id: &str) -> &'static str {
        "RUNNING"
    }

    async fn last_command_offset(&self, _timeout: Duration) -> Option<i64> {
        Some(41)
    }

    async fn kafka_cluster_id(&self, _timeout: Duration) -> Option<String> {
        Some("cluster-1".into())
    }

    async fn kafka_is_healthy(&self, _timeout: Duration) -> bool {
        true
    }
}

fn fake_app(fake: Arc<Fake>, config: ServerConfig) -> axum::Router {
    app(AppState::new(fake, config))
}

/// Sends `request` to a fresh app over `fake`; returns status, content type and body.
async fn send_to(fake: Arc<Fake>, request: Request<Body>) -> (StatusCode, String, Vec<u8>) {
    send_with(fake, ServerConfig::default(), request).await
}

/// [`send_to`] an app with `config`.
async fn send_with(
    fake: Arc<Fake>,
    config: ServerConfig,
    request: Request<Body>,
) -> (StatusCode, String, Vec<u8>) {
    let response = fake_app(fake, config)
        .oneshot(request)
        .await
        .expect("the router answers");
    let status = response.status();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, content_type, body)
}

/// Posts `body` to `/ksql` of a fresh app over a fake engine with `config`; returns the status
/// and the JSON body.
async fn post_ksql_with(config: ServerConfig, body: Value) -> (StatusCode, Value) {
    let (status, _, body) = send_with(
        Arc::new(Fake::default()),
        config,
        Request::post("/ksql")
            .header(CONTENT_TYPE, "application/vnd.ksql.v1+json")
            .body(Body::from(body.to_string()))
            .expect("request"),
    )
    .await;
    (status, serde_json::from_slice(&body).expect("JSON body"))
}

async fn post(path: &str, body: Value) -> (StatusCode, Value) {
    let (status, _, body) = send_to(
        Arc::new(Fake::default()),
        Request::post(path)
            .header(CONTENT_TYPE, "application/vnd.ksql.v1+json")
            .body(Body::from(body.to_string()))
            .expect("request"),
    )
    .await;
    (status, serde_json::from_slice(&body).expect("JSON body"))
}

#[tokio::test]
async fn create_statements_give_current_status_entities() {
    let (status, body) = post(
        "/ksql",
        json!({"ksql": "CREATE STREAM s (k STRING KEY) WITH (KAFKA_TOPIC='s');\n\
                CREATE TABLE t AS SELECT k, COUNT(*) FROM s GROUP BY k;",
               "streamsProperties": {}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!([
            {
                "@type": "currentStatus",
                "statementText": "CREATE STREAM s (k STRING KEY) WITH (KAFKA_TOPIC='s');",
                "commandId": "stream/S/create",
                "commandStatus": {"status": "SUCCESS", "message": "Stream S created", "queryId": null},
                "commandSequenceNumber": 41,
                "warnings": [],
            },
            {
                "@type": "currentStatus",
                "statementText": "CREATE TABLE t AS SELECT k, COUNT(*) FROM s GROUP BY k;",
                "commandId": "table/T/create",
                "commandStatus": {
                    "status": "SUCCESS",
                    "message": "Table T created and running",
                    "queryId": "CTAS_T_1",
                },
                "commandSequenceNumber": 41,
                "warnings": [],
            },
        ])
    );
}

#[tokio::test]
async fn show_streams_gives_a_streams_entity() {
    let (status, body) = post("/ksql", json!({"ksql": "SHOW STREAMS;"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!([{
            "@type": "streams",
            "statementText": "SHOW STREAMS;",
            "streams": [{
                "type": "STREAM", "name": "S", "topic": "s", "keyFormat": "KAFKA",
                "valueFormat": "JSON", "isWindowed": false,
            }],
            "warnings": [],
        }])
    );
}

#[tokio::test]
async fn describe_gives_a_source_description() {
    let (status, body) = post("/ksql", json!({"ksql": "DESCRIBE s;"})).await;
    assert_eq!(status, StatusCode::OK);
    let description = &body[0]["sourceDescription"];
    assert_eq!(body[0]["@type"], "sourceDescription");
    assert_eq!(description["name"], "S");
    assert_eq!(description["type"], "STREAM");
    assert_eq!(description["partitions"], 2);
    assert_eq!(
        description["fields"],
        json!([
            {"name": "K", "schema": {"type": "STRING", "fields": null, "memberSchema": null}, "type": "KEY"},
            {"name": "V", "schema": {"type": "ARRAY", "fields": null,
                "memberSchema": {"type": "INTEGER", "fields": null, "memberSchema": null}}},
        ])
    );
    assert_eq!(description["readQueries"], json!([]));
}

#[tokio::test]
async fn a_failing_statement_is_a_statement_error_with_the_entities_before_it() {
    let (status, body) = post(
        "/ksql",
        json!({"ksql": "SHOW STREAMS; DESCRIBE nosuch; SHOW STREAMS;"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["@type"], "statement_error");
    assert_eq!(body["error_code"], 40001);
    assert_eq!(body["statementText"], "DESCRIBE nosuch;");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("\"NOSUCH\"")),
        "{body}"
    );
    assert_eq!(body["entities"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["entities"][0]["@type"], "streams");
}

#[tokio::test]
async fn a_syntax_error_runs_nothing() {
    let (status, body) = post("/ksql", json!({"ksql": "SHOW STREAMS; SHOWW TABLES;"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["@type"], "statement_error");
    assert_eq!(body["error_code"], 40001);
    assert_eq!(body["entities"], json!([]));
}

#[tokio::test]
async fn an_internal_failure_is_a_generic_error() {
    let (status, body) = post("/ksql", json!({"ksql": "INSERT INTO s (k) VALUES ('a');"})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["@type"], "generic_error");
    assert_eq!(body["error_code"], 50000);
}

#[tokio::test]
async fn queries_sent_to_ksql_are_sent_to_query() {
    for sql in [
        "SELECT * FROM t WHERE k = 'a';",
        "SHOW STREAMS; SELECT * FROM s EMIT CHANGES;",
    ] {
        let (status, body) = post("/ksql", json!({"ksql": sql})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["@type"], "statement_error");
        assert_eq!(body["error_code"], 40002);
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("'/query'")),
            "{body}"
        );
        assert!(
            body["statementText"]
                .as_str()
                .is_some_and(|t| t.starts_with("SELECT")),
            "{body}"
        );
    }
}

#[tokio::test]
async fn streams_properties_become_session_properties() {
    let fake = Arc::new(Fake::default());
    let (status, _, _) = send_to(
        fake.clone(),
        Request::post("/query")
            .body(Body::from(
                json!({"ksql": "SELECT * FROM t WHERE k = 'a';",
                       "streamsProperties": {"ksql.streams.auto.offset.reset": "earliest",
                                             "eddy.read_your_writes": true}})
                .to_string(),
            ))
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let sessions = fake.sessions.lock().expect("sessions").clone();
    let last = sessions.last().expect("the query ran");
    assert_eq!(
        last.properties.get("auto.offset.reset").map(String::as_str),
        Some("earliest")
    );
    assert_eq!(
        last.properties
            .get("eddy.read_your_writes")
            .map(String::as_str),
        Some("true")
    );

    let (status, body) = post(
        "/ksql",
        json!({"ksql": "SHOW STREAMS;", "streamsProperties": {"auto.offset.reset": "sometimes"}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["statementText"],
        "SET 'auto.offset.reset'='sometimes';"
    );
}

/// `SHOW PROPERTIES` over REST lists the REST server's limits after the engine's settings, with
/// the values in force.
#[tokio::test]
async fn show_properties_lists_the_servers_limits() {
    let mut config = ServerConfig::default();
    config
        .set("eddy.server.inserts_stream_max_in_flight_rows", "7")
        .expect("a valid setting");
    let (status, body) = post_ksql_with(config, json!({"ksql": "SHOW PROPERTIES;"})).await;
    assert_eq!(status, StatusCode::OK);
    let properties = body[0]["properties"].as_array().expect("properties");
    let value_of = |name: &str| {
        properties
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| (p["scope"].clone(), p["value"].clone()))
    };
    assert_eq!(
        value_of("eddy.max_batch_records"),
        Some((json!("SERVER"), json!("16384")))
    );
    assert_eq!(
        value_of("eddy.server.inserts_stream_max_in_flight_rows"),
        Some((json!("SERVER"), json!("7")))
    );
    assert_eq!(
        value_of("eddy.server.max_request_bytes"),
        Some((
            json!("SERVER"),
            json!(DEFAULT_MAX_REQUEST_BYTES.to_string())
        ))
    );
}

/// Every limit `describe` lists can be set to its own value, by its full name or without
/// `eddy.`; zero, words and unknown names are refused by name.
#[test]
fn server_settings_are_set_by_name_and_checked() {
    let defaults = ServerConfig::default();
    let mut config = ServerConfig::default();
    let described = defaults.describe();
    assert_eq!(described.len(), 7);
    for (name, value) in &described {
        assert!(ServerConfig::is_server_setting(name), "{name}");
        config.set(name, value).expect("its own value");
    }
    assert_eq!(config.describe(), described);
    config
        .set("server.max_push_queries", "3")
        .expect("without eddy.");
    assert_eq!(config.max_push_queries, 3);
    config
        .set("eddy.server.max_request_bytes", "2048")
        .expect("a size");
    assert_eq!(config.max_request_bytes, 2048);
    for (name, value) in [
        ("eddy.server.keepalive_interval_ms", "0"),
        ("eddy.server.kafka_check_timeout_ms", "soon"),
    ] {
        let error = config.set(name, value).expect_err("refused").to_string();
        assert!(error.contains(name) && error.contains("above 0"), "{error}");
    }
    let error = config
        .set("eddy.server.max_sockets", "1")
        .expect_err("unknown")
        .to_string();
    assert!(
        error.contains("unknown setting \"eddy.server.max_sockets\""),
        "{error}"
    );
    assert!(!ServerConfig::is_server_setting("eddy.max_batch_records"));
    assert!(!ServerConfig::is_server_setting("max_batch_records"));
}

#[tokio::test]
async fn pull_query_answers_a_json_array() {
    let (status, content_type, body) = send_to(
        Arc::new(Fake::default()),
        Request::post("/query")
            .body(Body::from(
                json!({"ksql": "SELECT * FROM t WHERE k = 'a';"}).to_string(),
            ))
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "application/vnd.ksql.v1+json");
    let text = String::from_utf8(body).expect("utf-8");
    assert!(
        text.starts_with("[{\"header\":{\"queryId\":\"query_"),
        "{text}"
    );
    let value: Value = serde_json::from_str(&text).expect("a JSON array");
    assert_eq!(value[0]["header"]["schema"], "`K` STRING, `N` BIGINT");
    assert_eq!(value[1], json!({"row": {"columns": ["a", 2]}}));
}

#[tokio::test]
async fn query_refuses_other_statements_and_scripts() {
    let (status, body) = post("/query", json!({"ksql": "SHOW STREAMS;"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["@type"], "statement_error");
    assert_eq!(body["statementText"], "SHOW STREAMS;");
    let (status, body) = post(
        "/query",
        json!({"ksql": "SELECT * FROM t; SELECT * FROM t;"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error_code"], 40001);
}

#[tokio::test]
async fn accept_application_json_is_answered_in_kind() {
    let (status, content_type, _) = send_to(
        Arc::new(Fake::default()),
        Request::post("/ksql")
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(json!({"ksql": "SHOW STREAMS;"}).to_string()))
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "application/json");
}

#[tokio::test]
async fn malformed_and_oversized_bodies_are_refused() {
    let (status, body) = post("/ksql", json!({"statements": "SHOW STREAMS;"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["@type"], "generic_error");
    assert_eq!(body["error_code"], 40000);

    let config = ServerConfig {
        max_request_bytes: 64,
        ..ServerConfig::default()
    };
    let ksql = format!("SHOW STREAMS; -- {}", "x".repeat(100));
    let (status, body) = post_ksql_with(config, json!({ "ksql": ksql })).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error_code"], 41300);
}

#[tokio::test]
async fn info_and_healthcheck() {
    let get = |path: &'static str| async move {
        let (status, _, body) = send_to(
            Arc::new(Fake::default()),
            Request::get(path).body(Body::empty()).expect("request"),
        )
        .await;
        (
            status,
            serde_json::from_slice::<Value>(&body).expect("JSON"),
        )
    };
    let (status, body) = get("/info").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"KsqlServerInfo": {
            "version": env!("CARGO_PKG_VERSION"),
            "kafkaClusterId": "cluster-1",
            "ksqlServiceId": "fake_",
            "serverStatus": "RUNNING",
        }})
    );
    let (status, body) = get("/healthcheck").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"isHealthy": true, "details": {
            "metastore": {"isHealthy": true}, "kafka": {"isHealthy": true}}})
    );
    let (status, body) = get("/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error_code"], 40400);
}

#[tokio::test]
async fn cluster_status_names_this_server() {
    let config = ServerConfig {
        advertised_listener: Some("eddy-1:8088".into()),
        ..ServerConfig::default()
    };
    let response = fake_app(Arc::new(Fake::default()), config)
        .oneshot(
            Request::get("/clusterStatus")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("the router answers");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body: Value = serde_json::from_slice(&body).expect("JSON");
    let host = &body["clusterStatus"]["eddy-1:8088"];
    assert_eq!(host["hostAlive"], true, "{body}");
    assert!(host["lastStatusUpdateMs"].as_u64().is_some(), "{body}");
    assert!(host["activeStandbyPerQuery"].is_object(), "{body}");
    assert!(
        host["hostStoreLags"]["stateStoreLags"].is_object(),
        "{body}"
    );
}

#[tokio::test]
async fn basic_authentication_lets_only_the_right_credentials_in() {
    use base64::Engine as _;
    let config = ServerConfig {
        basic_auth: crate::BasicAuth::parse("ann:s3cr:et"),
        ..ServerConfig::default()
    };
    let app = fake_app(Arc::new(Fake::default()), config);
    let send = |authorization: Option<String>| {
        let app = app.clone();
        async move {
            let mut request = Request::get("/info");
            if let Some(authorization) = authorization {
                request = request.header(axum::http::header::AUTHORIZATION, authorization);
            }
            app.oneshot(request.body(Body::empty()).expect("request"))
                .await
                .expect("the router answers")
        }
    };
    let basic = |credentials: &str| {
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        ))
    };
    let refused = send(None).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        refused
            .headers()
            .get(axum::http::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok()),
        Some("Basic realm=\"eddy\"")
    );
    let body = refused
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(body["error_code"], 40100, "{body}");
    assert_eq!(
        send(basic("ann:wrong")).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(Some("Bearer abc".into())).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(send(basic("ann:s3cr:et")).await.status(), StatusCode::OK);
    assert!(crate::BasicAuth::parse("nobody").is_none());
    assert!(!format!("{:?}", crate::BasicAuth::parse("ann:pw")).contains("pw"));
}

#[tokio::test]
async fn inserts_stream_acknowledges_each_row_and_answers_a_bad_one_alone() {
    let fake = Arc::new(Fake::default());
    let request = Request::post("/inserts-stream")
        .body(Body::from(
            "{\"target\":\"s\"}\n{\"K\":\"a\",\"V\":1}\n\n{\"V\":\"bad\"}\n{\"k\":\"b\"}",
        ))
        .expect("request");
    let (status, content_type, body) = send_to(fake.clone(), request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, crate::stream::DELIMITED);
    let acks: Vec<Value> = String::from_utf8_lossy(&body)
        .lines()
        .map(|line| serde_json::from_str(line).expect("an ack is JSON"))
        .collect();
    assert_eq!(acks.len(), 3, "{acks:?}");
    assert_eq!(acks[0], json!({"status": "ok", "seq": 0}));
    assert_eq!(acks[1]["status"], "error");
    assert_eq!(acks[1]["seq"], 1);
    assert_eq!(acks[1]["error_code"], 40000);
    assert!(
        acks[1]["message"]
            .as_str()
            .is_some_and(|m| m.contains("bad")),
        "{acks:?}"
    );
    assert_eq!(acks[2], json!({"status": "ok", "seq": 2}));
    let inserted = fake.inserted.lock().expect("lock").clone();
    assert_eq!(
        inserted,
        vec![
            ("S".to_owned(), "{\"K\":\"a\",\"V\":1}".to_owned()),
            ("S".to_owned(), "{\"k\":\"b\"}".to_owned()),
        ]
    );
}

#[tokio::test]
async fn inserts_stream_refuses_tables_unknown_targets_and_a_missing_target_line() {
    for (body, expected) in [
        ("{\"target\":\"T\"}\n{\"K\":\"a\"}\n", "is a table"),
        ("{\"target\":\"nosuch\"}\n", "does not exist"),
        ("{\"K\":\"a\"}\n", "the first line"),
    ] {
        let fake = Arc::new(Fake::default());
        let request = Request::post("/inserts-stream")
            .body(Body::from(body))
            .expect("request");
        let (status, _, answer) = send_to(fake.clone(), request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let answer: Value = serde_json::from_slice(&answer).expect("JSON error");
        assert_eq!(answer["@type"], "generic_error", "{body}");
        assert!(
            answer["message"]
                .as_str()
                .is_some_and(|m| m.contains(expected)),
            "{body}: {answer}"
        );
        assert!(fake.inserted.lock().expect("lock").is_empty());
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM files in `dir`;
/// returns (certificate path, key path, certificate PEM).
fn self_signed_files(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("certificate");
    let cert_pem = certified.cert.pem();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, &cert_pem).expect("cert written");
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).expect("key written");
    (cert_path, key_path, cert_pem)
}

#[test]
fn tls_identity_errors_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key, _) = self_signed_files(dir.path());
    crate::TlsIdentity::load(crate::TlsOptions::new(cert.clone(), key.clone()))
        .expect("a certificate and its key load");

    let missing = dir.path().join("missing.pem");
    let error = crate::TlsIdentity::load(crate::TlsOptions::new(missing.clone(), key.clone()))
        .expect_err("missing certificate");
    assert!(
        error.to_string().contains(&missing.display().to_string()),
        "{error}"
    );

    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("written");
    let error = crate::TlsIdentity::load(crate::TlsOptions::new(empty.clone(), key.clone()))
        .expect_err("no certificate in the file");
    assert!(error.to_string().contains("holds no PEM"), "{error}");
    let error = crate::TlsIdentity::load(crate::TlsOptions::new(cert.clone(), empty.clone()))
        .expect_err("no key in the file");
    assert!(
        error.to_string().contains("no usable private key"),
        "{error}"
    );

    // The key of another certificate.
    let other = tempfile::tempdir().expect("dir");
    let (_, other_key, _) = self_signed_files(other.path());
    let error = crate::TlsIdentity::load(crate::TlsOptions::new(cert, other_key))
        .expect_err("a key that is not the certificate's");
    assert!(
        error.to_string().contains("do not make a TLS identity"),
        "{error}"
    );
}

#[tokio::test]
async fn https_serves_http2_and_http1_and_a_silent_client_blocks_no_one() {
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key, cert_pem) = self_signed_files(dir.path());
    let identity = crate::TlsIdentity::load(crate::TlsOptions::new(cert, key)).expect("identity");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let address = listener.local_addr().expect("address");
    let state = AppState::new(Arc::new(Fake::default()), ServerConfig::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        crate::serve_tls(listener, &identity, state, async move {
            let _ = stopped.await;
        })
        .await
    });

    // A client that connects and never says anything: the handshakes of others go on.
    let silent = tokio::net::TcpStream::connect(address)
        .await
        .expect("connects");

    let root = reqwest::Certificate::from_pem(cert_pem.as_bytes()).expect("root");
    let url = format!("https://127.0.0.1:{}/info", address.port());
    for (http1_only, version) in [
        (false, reqwest::Version::HTTP_2),
        (true, reqwest::Version::HTTP_11),
    ] {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(root.clone());
        if http1_only {
            builder = builder.http1_only();
        }
        let client = builder.build().expect("client");
        let response = tokio::time::timeout(Duration::from_secs(20), client.get(&url).send())
            .await
            .expect("answers in time")
            .expect("HTTPS request");
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        assert_eq!(response.version(), version, "ALPN picks the protocol");
        let body: Value =
            serde_json::from_str(&response.text().await.expect("body")).expect("JSON");
        assert!(body["KsqlServerInfo"]["version"].is_string(), "{body}");
    }

    // A client that does not trust the certificate is refused by its own TLS.
    let untrusting = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .build()
        .expect("client");
    let error = untrusting
        .get(&url)
        .send()
        .await
        .expect_err("an unknown certificate");
    assert!(error.is_connect(), "{error:?}");

    // Plain HTTP to the HTTPS port gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/info", address.port()))
        .timeout(Duration::from_secs(20))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");

    drop(silent);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("the server stops")
        .expect("server task")
        .expect("server result");
}

#[tokio::test]
async fn streaming_queries_beyond_max_push_queries_are_refused_until_one_ends() {
    use futures::StreamExt;
    let state = AppState::new(
        Arc::new(Fake::default()),
        ServerConfig {
            max_push_queries: 2,
            ..ServerConfig::default()
        },
    );
    let first = state.push_query_slot().expect("first slot");
    let second = state
        .push_query_slot()
        .expect("second slot")
        .held_by(futures::stream::iter([1, 2]));
    let refused = state.push_query_slot().err().expect("no third slot");
    assert!(refused.contains("Configured limit: 2"), "{refused}");
    // A response stream holds its slot until it is dropped, not until it ends.
    let mut second = Box::pin(second);
    assert_eq!(second.next().await, Some(1));
    assert_eq!(second.next().await, Some(2));
    assert_eq!(second.next().await, None);
    assert!(state.push_query_slot().is_err());
    drop(second);
    let third = state
        .push_query_slot()
        .expect("a slot after a stream is dropped");
    drop((first, third));
}

/// Acks come in the rows' order even when Kafka answers later rows first, a row whose
/// producer queue is full waits for the rows before it, and a client that sends its next row
/// only after the previous ack gets each ack without the body ending.
#[tokio::test]
async fn inserts_stream_answers_in_order_and_as_soon_as_kafka_has_a_row() {
    let fake = Arc::new(Fake::default());
    let request = Request::post("/inserts-stream")
        .body(Body::from(
            "{\"target\":\"S\"}\n{\"K\":\"a\",\"DELAY_MS\":300}\n{\"K\":\"b\",\"DELAY_MS\":1}\n\
             {\"V\":\"bad\"}\n{\"K\":\"full\"}\n{\"K\":\"c\"}\n",
        ))
        .expect("request");
    let (status, _, body) = send_to(fake.clone(), request).await;
    assert_eq!(status, StatusCode::OK);
    let acks: Vec<Value> = String::from_utf8_lossy(&body)
        .lines()
        .map(|line| serde_json::from_str(line).expect("an ack is JSON"))
        .collect();
    let answered: Vec<(u64, &str)> = acks
        .iter()
        .map(|a| {
            (
                a["seq"].as_u64().unwrap_or(99),
                a["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        answered,
        [(0, "ok"), (1, "ok"), (2, "error"), (3, "ok"), (4, "ok")],
        "{acks:?}"
    );
    let rows: Vec<String> = fake
        .inserted
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, row)| row.clone())
        .collect();
    assert_eq!(
        rows,
        [
            r#"{"K":"a","DELAY_MS":300}"#,
            r#"{"K":"b","DELAY_MS":1}"#,
            r#"{"K":"full"}"#,
            r#"{"K":"c"}"#
        ]
    );

    // An interactive client: the next row goes only once the previous one is answered.
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    let body = Body::from_stream(futures::stream::unfold(
        receiver,
        |mut receiver| async move { receiver.recv().await.map(|chunk| (chunk, receiver)) },
    ));
    // The answer starts once the target line is read.
    sender
        .send(Ok(bytes::Bytes::from_static(b"{\"target\":\"S\"}\n")))
        .await
        .expect("sent");
    let response = fake_app(Arc::new(Fake::default()), ServerConfig::default())
        .oneshot(
            Request::post("/inserts-stream")
                .body(body)
                .expect("request"),
        )
        .await
        .expect("the router answers");
    let mut answers = response.into_body();
    for seq in 0..3u64 {
        sender
            .send(Ok(bytes::Bytes::from(format!("{{\"K\":\"k{seq}\"}}\n"))))
            .await
            .expect("sent");
        let frame = tokio::time::timeout(Duration::from_secs(10), answers.frame())
            .await
            .expect("answered before the body ends")
            .expect("a frame")
            .expect("readable");
        let ack: Value = serde_json::from_slice(frame.data_ref().expect("data")).expect("JSON");
        assert_eq!(ack, json!({"status": "ok", "seq": seq}));
    }
    drop(sender);
    assert!(
        answers.frame().await.is_none(),
        "the answers end with the body"
    );
}

/// Rows wait for Kafka together, but never more than `inserts_stream_max_in_flight_rows`.
#[tokio::test]
async fn inserts_stream_sends_rows_together_up_to_its_bound() {
    let mut body = String::from("{\"target\":\"S\"}\n");
    for i in 0..6 {
        body.push_str(&format!("{{\"K\":\"k{i}\",\"DELAY_MS\":50}}\n"));
    }
    for (bound, most) in [
        (2, 2),
        (ServerConfig::default().inserts_stream_max_in_flight_rows, 6),
    ] {
        let fake = Arc::new(Fake::default());
        let config = ServerConfig {
            inserts_stream_max_in_flight_rows: bound,
            ..ServerConfig::default()
        };
        let response = fake_app(fake.clone(), config)
            .oneshot(
                Request::post("/inserts-stream")
                    .body(Body::from(body.clone()))
                    .expect("request"),
            )
            .await
            .expect("the router answers");
        let answers = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let ok = String::from_utf8_lossy(&answers)
            .lines()
            .filter(|line| line.contains("\"ok\""))
            .count();
        assert_eq!(ok, 6, "bound {bound}");
        assert_eq!(
            fake.most_in_flight
                .load(std::sync::atomic::Ordering::SeqCst),
            most,
            "bound {bound}"
        );
    }
}
