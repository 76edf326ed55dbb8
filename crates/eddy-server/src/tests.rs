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

use crate::{AppState, Backend, ServerConfig, app};

/// Answers statements with canned results, and records the session each ran in.
#[derive(Default)]
struct Fake {
    sessions: Mutex<Vec<Session>>,
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
            Statement::Describe { name, .. } if name == "S" => {
                Ok(StatementResult::Description(SourceDescription {
                    name: "S".into(),
                    kind: SourceKind::Stream,
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
                }))
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

    fn catalog(&self) -> Catalog {
        Catalog::new()
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
    let response = fake_app(fake, ServerConfig::default())
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
    let response = fake_app(Arc::new(Fake::default()), config)
        .oneshot(
            Request::post("/ksql")
                .body(Body::from(json!({ "ksql": ksql }).to_string()))
                .expect("request"),
        )
        .await
        .expect("the router answers");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body: Value = serde_json::from_slice(&body).expect("JSON body");
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
