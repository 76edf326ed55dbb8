//! Who may use the API. HTTP basic authentication: with [`crate::ServerConfig::basic_auth`] set, a request without
//! those credentials is answered 401 with `WWW-Authenticate` and ksqlDB's error body. And a
//! headless server takes no statements over REST.

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine as _;

use crate::AppState;
use crate::error::ApiError;
use crate::request::MediaType;

/// ksqlDB's code for a request without valid credentials.
const ERROR_CODE_UNAUTHORIZED: u32 = 40100;

pub async fn require_credentials(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &state.config().basic_auth else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| {
            base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .ok()
        })
        .and_then(|v| String::from_utf8(v).ok());
    let authorized = given.is_some_and(|given| {
        let expected = format!("{}:{}", expected.user, expected.password);
        constant_time_eq(given.as_bytes(), expected.as_bytes())
    });
    if authorized {
        return next.run(request).await;
    }
    let mut response = ApiError::Generic {
        status: StatusCode::UNAUTHORIZED,
        code: ERROR_CODE_UNAUTHORIZED,
        message: "Unauthorized: this server needs a user and password (HTTP basic \
                  authentication)"
            .into(),
    }
    .into_response_as(MediaType::Json);
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"eddy\""),
    );
    response
}

/// In headless mode, statements and queries come from the queries file only.
pub async fn refuse_when_headless(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if !state.config().headless {
        return next.run(request).await;
    }
    ApiError::bad_request(
        "this server runs in headless mode (eddy server --queries-file): it runs the statements \
         of its file and takes no statements or queries over REST",
    )
    .into_response_as(MediaType::negotiate(request.headers()))
}

/// Compares without stopping at the first difference, so timing does not tell how much of a
/// guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_only_when_every_byte_is() {
        assert!(constant_time_eq(b"ann:secret", b"ann:secret"));
        assert!(!constant_time_eq(b"ann:secreT", b"ann:secret"));
        assert!(!constant_time_eq(b"ann:secret!", b"ann:secret"));
    }
}
