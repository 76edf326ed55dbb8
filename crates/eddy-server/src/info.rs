//! `GET /info`, `GET /healthcheck`, `GET /clusterStatus`, `GET /metrics`, and the answer to
//! unknown paths.

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

/// `GET /metrics`: the persistent queries running here, in Prometheus' text format (0.0.4).
pub async fn metrics(State(state): State<AppState>) -> Response {
    let timeout = Duration::from_millis(state.config().kafka_check_timeout_ms);
    let queries = state.backend().query_metrics(timeout).await;
    let mut response = Response::new(axum::body::Body::from(prometheus_text(&queries)));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// The metric families of `/metrics`, one sample per query each.
fn prometheus_text(queries: &[eddy_engine::QueryMetricsSnapshot]) -> String {
    use eddy_engine::QueryMetricsSnapshot as Q;
    type Sample = fn(&Q) -> Option<String>;
    let families: [(&str, &str, &str, Sample); 9] = [
        (
            "eddy_query_running",
            "gauge",
            "1 while the query runs, 0 once it failed or stopped.",
            |q| Some(u8::from(q.running).to_string()),
        ),
        (
            "eddy_query_records_in_total",
            "counter",
            "Records the query has read from its inputs.",
            |q| Some(q.records_in.to_string()),
        ),
        (
            "eddy_query_batches_in_total",
            "counter",
            "Input batches the query has processed; records in / batches in is its average batch.",
            |q| Some(q.batches_in.to_string()),
        ),
        (
            "eddy_query_records_out_total",
            "counter",
            "Records the query has written.",
            |q| Some(q.records_out.to_string()),
        ),
        (
            "eddy_query_records_skipped_total",
            "counter",
            "Malformed records the query skipped (each is in the processing log).",
            |q| Some(q.records_skipped.to_string()),
        ),
        (
            "eddy_query_lag_records",
            "gauge",
            "Records of the query's first input not processed yet, over all partitions.",
            |q| q.lag_records.map(|l| l.to_string()),
        ),
        (
            "eddy_query_restored_records",
            "gauge",
            "Changelog records replayed into the query's state since it started.",
            |q| Some(q.restored_records.to_string()),
        ),
        (
            "eddy_query_records_to_restore",
            "gauge",
            "Changelog records the query's state had to replay when it started.",
            |q| Some(q.records_to_restore.to_string()),
        ),
        (
            "eddy_query_state_bytes",
            "gauge",
            "Estimated live size of the table the query materializes on this server.",
            |q| q.state_bytes.map(|b| b.to_string()),
        ),
    ];
    let label = |value: &str| {
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let mut text = String::new();
    for (name, kind, help, sample) in families {
        text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for query in queries {
            if let Some(value) = sample(query) {
                text.push_str(&format!(
                    "{name}{{query=\"{}\",sink=\"{}\"}} {value}\n",
                    label(&query.query_id),
                    label(&query.sink)
                ));
            }
        }
    }
    text
}

pub async fn not_found(uri: Uri, headers: HeaderMap) -> Response {
    ApiError::not_found(uri.path()).into_response_as(MediaType::negotiate(&headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_prometheus_text_with_escaped_labels() {
        let query = eddy_engine::QueryMetricsSnapshot {
            query_id: "CTAS_T_1".into(),
            sink: "a\"b".into(),
            running: true,
            records_in: 5,
            batches_in: 2,
            records_out: 2,
            records_skipped: 1,
            lag_records: None,
            restored_records: 0,
            records_to_restore: 0,
            state_bytes: Some(100),
        };
        let text = prometheus_text(&[query]);
        assert!(
            text.contains("# TYPE eddy_query_records_in_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("eddy_query_records_in_total{query=\"CTAS_T_1\",sink=\"a\\\"b\"} 5\n"),
            "{text}"
        );
        assert!(
            text.contains("eddy_query_batches_in_total{query=\"CTAS_T_1\",sink=\"a\\\"b\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("eddy_query_running{query=\"CTAS_T_1\""),
            "{text}"
        );
        // Unknown lag: no sample, the family is still declared.
        assert!(
            text.contains("# TYPE eddy_query_lag_records gauge\n# HELP"),
            "{text}"
        );
        assert!(!text.contains("eddy_query_lag_records{"), "{text}");
    }
}
