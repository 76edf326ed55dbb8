//! Errors of the REST API, answered with ksqlDB's error bodies:
//!
//! ```text
//! {"@type":"statement_error","error_code":40001,"message":"...","stackTrace":[],
//!  "statementText":"...;","entities":[...]}          a statement failed (entities: those before it)
//! {"@type":"generic_error","error_code":50000,"message":"...","stackTrace":[]}
//! ```
//!
//! Error codes are ksqlDB's: the HTTP status times 100, plus a detail digit for statements.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use eddy_engine::EngineError;
use serde_json::{Value, json};
use thiserror::Error;

use crate::entity::KsqlEntity;
use crate::request::MediaType;

/// ksqlDB's `BAD_STATEMENT`: the statement is wrong.
pub const ERROR_CODE_BAD_STATEMENT: u32 = 40001;
/// ksqlDB's `QUERY_ENDPOINT`: the statement must be sent to `/query`.
pub const ERROR_CODE_QUERY_ENDPOINT: u32 = 40002;
/// ksqlDB's `BAD_REQUEST`: the request itself is malformed.
pub const ERROR_CODE_BAD_REQUEST: u32 = 40000;
pub const ERROR_CODE_NOT_FOUND: u32 = 40400;
pub const ERROR_CODE_PAYLOAD_TOO_LARGE: u32 = 41300;
/// ksqlDB's `SERVER_ERROR`.
pub const ERROR_CODE_SERVER_ERROR: u32 = 50000;

/// The message ksqlDB gives when a query is sent to `/ksql`; clients recognise it.
const QUERY_ENDPOINT_MESSAGE: &str = "The following statement types should be issued to the \
                                      websocket endpoint '/query':\n\t* PRINT\n\t* SELECT";

/// A failed request, with the HTTP status and ksqlDB body it is answered with.
#[derive(Debug, Error)]
pub enum ApiError {
    /// A statement failed: ksqlDB's `statement_error`.
    #[error("{message}")]
    Statement {
        status: StatusCode,
        code: u32,
        message: String,
        /// The failed statement, with its `;`.
        statement_text: String,
        /// Results of the statements of the request that ran before it.
        entities: Vec<KsqlEntity>,
    },
    /// A request failed outside any statement: ksqlDB's `generic_error`.
    #[error("{message}")]
    Generic {
        status: StatusCode,
        code: u32,
        message: String,
    },
}

impl ApiError {
    /// The statement is at fault (400, 40001).
    pub fn bad_statement(message: impl Into<String>, statement_text: impl Into<String>) -> Self {
        ApiError::Statement {
            status: StatusCode::BAD_REQUEST,
            code: ERROR_CODE_BAD_STATEMENT,
            message: message.into(),
            statement_text: statement_text.into(),
            entities: Vec::new(),
        }
    }

    /// A `SELECT` or `PRINT` sent to `/ksql` (400, 40002).
    pub fn query_endpoint(statement_text: impl Into<String>) -> Self {
        ApiError::Statement {
            status: StatusCode::BAD_REQUEST,
            code: ERROR_CODE_QUERY_ENDPOINT,
            message: QUERY_ENDPOINT_MESSAGE.to_owned(),
            statement_text: statement_text.into(),
            entities: Vec::new(),
        }
    }

    /// `error` of the engine executing `statement_text`, after `entities` succeeded. The user's
    /// mistakes are 400 (40001); Kafka's and the runtime's failures are ksqlDB's server error for
    /// a statement (500, 50000, still a `statement_error`); a bug in Eddy is a `generic_error`.
    pub fn from_engine(
        error: EngineError,
        statement_text: impl Into<String>,
        entities: Vec<KsqlEntity>,
    ) -> Self {
        let (status, code) = if error.is_user_error() {
            (StatusCode::BAD_REQUEST, ERROR_CODE_BAD_STATEMENT)
        } else if matches!(error, EngineError::Internal(_)) {
            return ApiError::server_error(error.to_string());
        } else {
            (StatusCode::INTERNAL_SERVER_ERROR, ERROR_CODE_SERVER_ERROR)
        };
        ApiError::Statement {
            status,
            code,
            message: error.to_string(),
            statement_text: statement_text.into(),
            entities,
        }
    }

    /// The request is malformed (400, 40000).
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::Generic {
            status: StatusCode::BAD_REQUEST,
            code: ERROR_CODE_BAD_REQUEST,
            message: message.into(),
        }
    }

    /// The request body is over the limit (413, 41300).
    pub fn payload_too_large(limit_bytes: usize) -> Self {
        ApiError::Generic {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: ERROR_CODE_PAYLOAD_TOO_LARGE,
            message: format!(
                "request body is larger than the server's limit of {limit_bytes} bytes"
            ),
        }
    }

    /// No such resource (404, 40400).
    pub fn not_found(path: &str) -> Self {
        ApiError::Generic {
            status: StatusCode::NOT_FOUND,
            code: ERROR_CODE_NOT_FOUND,
            message: format!(
                "no resource \"{path}\"; the REST API has POST /ksql, POST /query, GET /info and \
                 GET /healthcheck"
            ),
        }
    }

    /// A broken invariant of the server (500, 50000).
    pub fn server_error(message: impl Into<String>) -> Self {
        ApiError::Generic {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: ERROR_CODE_SERVER_ERROR,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Statement { status, .. } | ApiError::Generic { status, .. } => *status,
        }
    }

    /// The JSON body ksqlDB answers with.
    pub fn body(&self) -> Value {
        match self {
            ApiError::Statement {
                code,
                message,
                statement_text,
                entities,
                ..
            } => {
                // Entities are plain data and always serialize; an empty list is the fallback.
                let entities = serde_json::to_value(entities).unwrap_or_else(|_| json!([]));
                json!({
                    "@type": "statement_error",
                    "error_code": code,
                    "message": message,
                    "stackTrace": [],
                    "statementText": statement_text,
                    "entities": entities,
                })
            }
            ApiError::Generic { code, message, .. } => json!({
                "@type": "generic_error",
                "error_code": code,
                "message": message,
                "stackTrace": [],
            }),
        }
    }

    /// The response, in `media`.
    pub(crate) fn into_response_as(self, media: MediaType) -> Response {
        crate::request::json_response(self.status(), media, &self.body())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_response_as(MediaType::KsqlV1)
    }
}

/// Why the server could not run.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error("the HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// The TLS certificate or key cannot be used; the message names the file.
    #[error("{0}")]
    Tls(String),
}
