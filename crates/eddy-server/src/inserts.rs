//! `POST /inserts-stream`: ksqlDB's streaming inserts, over HTTP/2 or HTTP/1.1.
//!
//! ```text
//!  request:  {"target":"ORDERS"}\n{"ID":"o1","QTY":2}\n{"ID":"o2","QTY":5}\n ...
//!  response: {"status":"ok","seq":0}\n{"status":"ok","seq":1}\n ...
//!            {"status":"error","seq":2,"error_code":40000,"message":"..."}\n  (that row only)
//! ```
//!
//! The first line names the stream; every later line is one row, a JSON object whose fields
//! are column names (matched without regard to case; missing columns are NULL; `ROWTIME` sets
//! the record's timestamp). Values are read as the JSON format reads a topic's records, so
//! STRUCT and MAP values are JSON objects, ARRAY values arrays, BYTES base64, DATE days, TIME
//! milliseconds of the day and TIMESTAMP epoch milliseconds. Rows are inserted as they arrive
//! and each is acknowledged with its sequence number once Kafka has it.
//! A row that cannot be inserted is answered with an error line and the stream goes on. A line
//! longer than [`crate::ServerConfig::max_request_bytes`] ends the stream with an error.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use eddy_catalog::SourceKind;
use futures::stream::{self, Stream, StreamExt};
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiError, ERROR_CODE_BAD_REQUEST};
use crate::request::MediaType;

/// The request body, read line by line, bounded.
struct Lines {
    body: axum::body::BodyDataStream,
    buffer: BytesMut,
    limit_bytes: usize,
    ended: bool,
}

impl Lines {
    /// The next line without its newline; `None` at the end of the body.
    async fn next(&mut self) -> Option<Result<Bytes, String>> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line = self.buffer.split_to(end + 1).freeze();
                return Some(Ok(line.slice(..end)));
            }
            if self.buffer.len() > self.limit_bytes {
                return Some(Err(format!(
                    "a line of the request is longer than {} bytes",
                    self.limit_bytes
                )));
            }
            if self.ended {
                if self.buffer.is_empty() {
                    return None;
                }
                let rest = self.buffer.split().freeze();
                return Some(Ok(rest));
            }
            match self.body.next().await {
                Some(Ok(data)) => self.buffer.extend_from_slice(&data),
                Some(Err(error)) => return Some(Err(format!("cannot read the request: {error}"))),
                None => self.ended = true,
            }
        }
    }

    /// The next line that is not blank.
    async fn next_row(&mut self) -> Option<Result<Bytes, String>> {
        loop {
            match self.next().await? {
                Ok(line) if line.iter().all(u8::is_ascii_whitespace) => continue,
                other => return Some(other),
            }
        }
    }
}

pub async fn handle(State(state): State<AppState>, body: Body) -> Response {
    let mut lines = Lines {
        body: body.into_data_stream(),
        buffer: BytesMut::new(),
        limit_bytes: state.config().max_request_bytes,
        ended: false,
    };
    let target = match lines.next_row().await {
        Some(Ok(line)) => match serde_json::from_slice::<Value>(&line) {
            Ok(Value::Object(fields)) => fields
                .get("target")
                .and_then(Value::as_str)
                .map(str::to_owned),
            _ => None,
        },
        _ => None,
    };
    let Some(target) = target else {
        return ApiError::bad_request(
            "the first line of /inserts-stream must be {\"target\":\"<stream name>\"}",
        )
        .into_response_as(MediaType::Json);
    };
    let name = target.to_uppercase();
    let catalog = state.backend().catalog();
    let Some(source) = catalog
        .source(&name)
        .or_else(|| catalog.source(&target))
        .cloned()
    else {
        return ApiError::bad_request(format!("stream \"{target}\" does not exist"))
            .into_response_as(MediaType::Json);
    };
    if source.kind != SourceKind::Stream {
        return ApiError::bad_request(format!(
            "/inserts-stream inserts into streams, and \"{}\" is a table",
            source.name
        ))
        .into_response_as(MediaType::Json);
    }
    let acks = ack_stream(state, lines, source.name.clone());
    let mut response = Response::new(Body::from_stream(acks));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(crate::stream::DELIMITED),
    );
    response
}

/// One acknowledgement line per row, produced as rows arrive.
fn ack_stream(
    state: AppState,
    lines: Lines,
    target: String,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    stream::unfold(Some((state, lines, 0u64)), move |progress| {
        let target = target.clone();
        async move {
            let (state, mut lines, seq) = progress?;
            let line = match lines.next_row().await? {
                Ok(line) => line,
                Err(message) => {
                    // The body cannot be read on: the stream ends with why.
                    return Some((Ok(error_line(seq, &message)), None));
                }
            };
            let ack = match insert(&state, &target, &line).await {
                Ok(()) => json!({"status": "ok", "seq": seq}),
                Err(message) => json!({
                    "status": "error",
                    "seq": seq,
                    "error_code": ERROR_CODE_BAD_REQUEST,
                    "message": message,
                }),
            };
            let mut ack = ack.to_string().into_bytes();
            ack.push(b'\n');
            Some((Ok(Bytes::from(ack)), Some((state, lines, seq + 1))))
        }
    })
}

fn error_line(seq: u64, message: &str) -> Bytes {
    let mut line = json!({
        "status": "error",
        "seq": seq,
        "error_code": ERROR_CODE_BAD_REQUEST,
        "message": message,
    })
    .to_string()
    .into_bytes();
    line.push(b'\n');
    Bytes::from(line)
}

/// Inserts one row (a JSON object) into `target`.
async fn insert(state: &AppState, target: &str, line: &[u8]) -> Result<(), String> {
    state
        .backend()
        .insert_json_row(target, line)
        .await
        .map_err(|e| e.to_string())
}
