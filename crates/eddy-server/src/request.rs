//! Request bodies, content negotiation and the session a request runs in.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use eddy_engine::Session;
use eddy_sql::{ParsedStatement, Statement};
use serde::Deserialize;
use serde_json::Value;

use crate::backend::Backend;
use crate::error::ApiError;

/// ksqlDB's versioned media type, the default of every response.
pub const KSQL_V1_JSON: &str = "application/vnd.ksql.v1+json";
pub const APPLICATION_JSON: &str = "application/json";

/// Session properties of ksqlDB clients that are Eddy's under another name.
const PROPERTY_ALIASES: &[(&str, &str)] =
    &[("ksql.streams.auto.offset.reset", "auto.offset.reset")];

/// The media type of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    KsqlV1,
    Json,
}

impl MediaType {
    /// `application/json` when `Accept` asks for it and not for a ksqlDB type, else ksqlDB's.
    pub fn negotiate(headers: &HeaderMap) -> MediaType {
        let accept = headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
            .to_ascii_lowercase();
        if !accept.contains("application/vnd.ksql") && accept.contains(APPLICATION_JSON) {
            MediaType::Json
        } else {
            MediaType::KsqlV1
        }
    }

    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            MediaType::KsqlV1 => KSQL_V1_JSON,
            MediaType::Json => APPLICATION_JSON,
        })
    }
}

/// A response of `status` whose body is `value` as JSON, in `media`.
pub fn json_response(
    status: StatusCode,
    media: MediaType,
    value: &impl serde::Serialize,
) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => body_response(status, media, Body::from(body)),
        // Entities are plain data; a failure here is a bug, answered as one.
        Err(error) => body_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            media,
            Body::from(
                serde_json::json!({
                    "@type": "generic_error",
                    "error_code": crate::error::ERROR_CODE_SERVER_ERROR,
                    "message": format!("cannot encode the response: {error}"),
                    "stackTrace": [],
                })
                .to_string(),
            ),
        ),
    }
}

/// A response of `status` with `body`, in `media`.
pub fn body_response(status: StatusCode, media: MediaType, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, media.header_value());
    response
}

/// The body of `POST /ksql` and `POST /query`. Fields ksqlDB clients send that Eddy does not use
/// (`sessionVariables`, `commandSequenceNumber`, ...) are ignored.
#[derive(Debug, Deserialize)]
pub struct KsqlRequest {
    /// The statements, each ending with `;` (`sql` is the `/query-stream` spelling).
    #[serde(alias = "sql")]
    pub ksql: String,
    /// Session properties for this request only (`properties` is the `/query-stream` spelling).
    #[serde(rename = "streamsProperties", alias = "properties", default)]
    pub streams_properties: Option<BTreeMap<String, Value>>,
}

impl KsqlRequest {
    /// Reads the body: JSON whatever the `Content-Type`, within the body limit.
    pub fn parse(
        body: Result<Bytes, BytesRejection>,
        limit_bytes: usize,
    ) -> Result<Self, ApiError> {
        let body = body.map_err(|rejection| match rejection {
            BytesRejection::FailedToBufferBody(
                axum::extract::rejection::FailedToBufferBody::LengthLimitError(_),
            ) => ApiError::payload_too_large(limit_bytes),
            other => ApiError::bad_request(format!("cannot read the request body: {other}")),
        })?;
        serde_json::from_slice(&body).map_err(|error| {
            ApiError::bad_request(format!(
                "the request body is not a JSON object with a \"ksql\" string: {error}"
            ))
        })
    }

    /// The session the request's statements run in: its `streamsProperties` applied with `SET`
    /// (so the engine checks them), `ksql.streams.auto.offset.reset` read as `auto.offset.reset`.
    pub async fn session(&self, backend: &dyn Backend) -> Result<Session, ApiError> {
        let mut session = Session::new();
        for (name, value) in self.streams_properties.iter().flatten() {
            let name = PROPERTY_ALIASES
                .iter()
                .find(|(alias, _)| alias == name)
                .map_or(name.as_str(), |(_, eddy)| eddy);
            let value = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let sql = format!("SET '{name}'='{value}'");
            let set = ParsedStatement {
                statement: Statement::Set {
                    name: name.to_owned(),
                    value,
                },
                sql: sql.clone(),
                line: 1,
            };
            backend
                .execute(&mut session, &set)
                .await
                .map_err(|error| ApiError::from_engine(error, format!("{sql};"), Vec::new()))?;
        }
        Ok(session)
    }
}

/// A statement's text as ksqlDB reports it: as written, with its `;`.
pub fn statement_text(statement: &ParsedStatement) -> String {
    format!("{};", statement.sql.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_only_when_asked_for_without_the_ksql_type() {
        let mut headers = HeaderMap::new();
        assert_eq!(MediaType::negotiate(&headers), MediaType::KsqlV1);
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        assert_eq!(MediaType::negotiate(&headers), MediaType::Json);
        headers.insert(
            ACCEPT,
            HeaderValue::from_static(
                "application/vnd.ksql.v1+json; q=0.9, application/json; q=0.5",
            ),
        );
        assert_eq!(MediaType::negotiate(&headers), MediaType::KsqlV1);
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        assert_eq!(MediaType::negotiate(&headers), MediaType::KsqlV1);
    }

    #[test]
    fn request_fields_by_both_spellings_and_unknown_ones_ignored() {
        let body = br#"{"sql":"SHOW STREAMS;","properties":{"a":"b"},"sessionVariables":{},"x":1}"#;
        let request = KsqlRequest::parse(Ok(Bytes::from_static(body)), 1024).expect("parses");
        assert_eq!(request.ksql, "SHOW STREAMS;");
        assert_eq!(
            request.streams_properties.as_ref().and_then(|p| p.get("a")),
            Some(&Value::String("b".into()))
        );
        let request =
            KsqlRequest::parse(Ok(Bytes::from_static(br#"{"ksql":"x;"}"#)), 1024).expect("parses");
        assert!(request.streams_properties.is_none());
    }

    #[test]
    fn malformed_body_is_a_bad_request() {
        let error = KsqlRequest::parse(Ok(Bytes::from_static(b"{\"ksql\": 1}")), 1024)
            .expect_err("ksql must be a string");
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        assert_eq!(error.body()["@type"], "generic_error");
        assert_eq!(error.body()["error_code"], 40000);
    }
}
