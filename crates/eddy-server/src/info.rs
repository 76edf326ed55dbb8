//! `GET /info`, `GET /healthcheck`, `GET /clusterStatus`, and the answer to unknown paths.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde_json::json;

use crate::AppState;
use crate::error::ApiError;
use crate::request::{MediaType, json_response};

/// `{"KsqlServerInfo":{"version":..,"kafkaClusterId":..,"ksqlServiceId":..,"serverStatus":"RUNNING"}}`.
/// The version is Eddy's; the cluster id is empty when Kafka does not answer in time.
pub async fn info(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let timeout = Duration::from_millis(state.config().kafka_check_timeout_ms);
    let backend = state.backend();
    let cluster_id = backend.kafka_cluster_id(timeout).await.unwrap_or_default();
    json_response(
        StatusCode::OK,
        MediaType::negotiate(&headers),
        &json!({"KsqlServerInfo": {
            "version": env!("CARGO_PKG_VERSION"),
            "kafkaClusterId": cluster_id,
            "ksqlServiceId": backend.service_id(),
            "serverStatus": "RUNNING",
        }}),
    )
}

/// `{"isHealthy":..,"details":{"metastore":{"isHealthy":..},"kafka":{"isHealthy":..}}}`: 200
/// when healthy, 503 otherwise (as ksqlDB). The metastore is the in-memory catalog, always there;
/// Kafka is healthy when it answers for the command topic in time.
pub async fn healthcheck(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let timeout = Duration::from_millis(state.config().kafka_check_timeout_ms);
    let metastore = true;
    let kafka = state.backend().kafka_is_healthy(timeout).await;
    let healthy = metastore && kafka;
    json_response(
        if healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        MediaType::negotiate(&headers),
        &json!({
            "isHealthy": healthy,
            "details": {
                "metastore": {"isHealthy": metastore},
                "kafka": {"isHealthy": kafka},
            },
        }),
    )
}

/// `{"clusterStatus":{"<host:port>":{"hostAlive":true,"lastStatusUpdateMs":..,
/// "activeStandbyPerQuery":{..},"hostStoreLags":{..}}}}`: one server, which runs every
/// persistent query's every partition (no standbys).
pub async fn cluster_status(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let host = state
        .config()
        .advertised_listener
        .clone()
        .or_else(|| {
            headers
                .get(axum::http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "localhost:8088".to_owned());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let catalog = state.backend().catalog();
    let per_query: serde_json::Map<String, serde_json::Value> = catalog
        .queries()
        .map(|query| {
            (
                query.id.clone(),
                json!({
                    "activeStores": [],
                    "activePartitions": [],
                    "standByStores": [],
                    "standByPartitions": [],
                }),
            )
        })
        .collect();
    json_response(
        StatusCode::OK,
        MediaType::negotiate(&headers),
        &json!({"clusterStatus": {host: {
            "hostAlive": true,
            "lastStatusUpdateMs": now_ms,
            "activeStandbyPerQuery": per_query,
            "hostStoreLags": {"stateStoreLags": {}, "updateTimeMs": now_ms},
        }}}),
    )
}

pub async fn not_found(uri: Uri, headers: HeaderMap) -> Response {
    ApiError::not_found(uri.path()).into_response_as(MediaType::negotiate(&headers))
}
