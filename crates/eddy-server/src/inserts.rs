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
//! and each is acknowledged with its sequence number once Kafka has it; up to
//! [`crate::ServerConfig::inserts_stream_max_in_flight_rows`] rows wait for Kafka at once, and
//! acks come in the rows' order.
//! A row that cannot be inserted is answered with an error line and the stream goes on. A line
//! longer than [`crate::ServerConfig::max_request_bytes`] ends the stream with an error.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use eddy_catalog::SourceKind;
use std::collections::VecDeque;

use futures::future::{self, BoxFuture, FutureExt};
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

/// One acknowledgement line per row, in the rows' order. Rows are sent to Kafka as they arrive,
/// up to `inserts_stream_max_in_flight_rows` of them waiting for Kafka at once, and each is
/// acknowledged once Kafka has it (and every row before it has been answered). A client that
/// waits for an ack before sending the next row is answered as soon as Kafka has its row.
fn ack_stream(
    state: AppState,
    lines: Lines,
    target: String,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    let max_in_flight = state.config().inserts_stream_max_in_flight_rows.max(1);
    let inserts = Inserts {
        state,
        lines,
        target,
        next_seq: 0,
        in_flight: VecDeque::new(),
        reading: true,
        max_in_flight,
    };
    stream::unfold(inserts, |mut inserts| async move {
        let ack = inserts.next_ack().await?;
        Some((Ok(ack), inserts))
    })
}

/// A row's answer to come: its sequence number and the outcome of its insert.
type PendingAck = (u64, BoxFuture<'static, Result<(), String>>);

/// The state of one `/inserts-stream` request.
struct Inserts {
    state: AppState,
    lines: Lines,
    target: String,
    next_seq: u64,
    /// Rows sent (or refused) and not yet answered, oldest first.
    in_flight: VecDeque<PendingAck>,
    /// False once the body ended or could not be read on.
    reading: bool,
    max_in_flight: usize,
}

impl Inserts {
    /// The next acknowledgement line; `None` when every row is answered and the body ended.
    async fn next_ack(&mut self) -> Option<Bytes> {
        loop {
            if !self.reading || self.in_flight.len() >= self.max_in_flight {
                let (seq, outcome) = self.in_flight.pop_front()?;
                return Some(ack_line(seq, outcome.await));
            }
            let line = match self.in_flight.front_mut() {
                None => self.lines.next_row().await,
                Some((seq, outcome)) => tokio::select! {
                    // Answers first: a client may wait for them before it sends more.
                    biased;
                    answered = outcome => {
                        let seq = *seq;
                        self.in_flight.pop_front();
                        return Some(ack_line(seq, answered));
                    }
                    // Cancel-safe: a line is only taken from the buffer once it is complete.
                    line = self.lines.next_row() => line,
                },
            };
            let seq = self.next_seq;
            match line {
                None => self.reading = false,
                Some(Err(message)) => {
                    // The body cannot be read on: the answers end with why.
                    self.reading = false;
                    self.next_seq += 1;
                    self.in_flight
                        .push_back((seq, future::ready(Err(message)).boxed()));
                }
                Some(Ok(line)) => {
                    self.next_seq += 1;
                    let outcome = self.send(&line).await;
                    self.in_flight.push_back((seq, outcome));
                }
            }
        }
    }

    /// Sends one row; the future says whether Kafka has it. When the producer's queue is full,
    /// the rows sent before it are waited for (their answers keep their place in line), then
    /// the row is inserted waiting for room, so rows keep their order.
    async fn send(&mut self, line: &[u8]) -> BoxFuture<'static, Result<(), String>> {
        let backend = self.state.backend();
        match backend.send_json_row(&self.target, line) {
            Ok(Some(delivery)) => {
                async move { delivery.await.map(|_| ()).map_err(|e| e.to_string()) }.boxed()
            }
            Err(error) => future::ready(Err(error.to_string())).boxed(),
            Ok(None) => {
                // Wait for the rows already sent (not answered yet: their outcomes are kept).
                let mut settled = VecDeque::with_capacity(self.in_flight.len());
                while let Some((seq, outcome)) = self.in_flight.pop_front() {
                    let result = outcome.await;
                    settled.push_back((seq, future::ready(result).boxed()));
                }
                self.in_flight = settled;
                let result = backend
                    .insert_json_row(&self.target, line)
                    .await
                    .map_err(|e| e.to_string());
                future::ready(result).boxed()
            }
        }
    }
}

/// The acknowledgement line of row `seq`.
fn ack_line(seq: u64, outcome: Result<(), String>) -> Bytes {
    match outcome {
        Ok(()) => {
            let mut ack = json!({"status": "ok", "seq": seq}).to_string().into_bytes();
            ack.push(b'\n');
            Bytes::from(ack)
        }
        Err(message) => error_line(seq, &message),
    }
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
