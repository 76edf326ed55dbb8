//! `POST /query-stream` and `POST /close-query`: ksqlDB's streaming API (the one its Java client
//! speaks), over HTTP/2 (cleartext, prior knowledge) and HTTP/1.1.
//!
//! ```text
//!  POST /query-stream {"sql": "SELECT ...;", "properties": {...}}
//!   application/vnd.ksqlapi.delimited.v1 (the default):
//!     {"queryId":"transient_..","columnNames":["K","N"],"columnTypes":["STRING","BIGINT"]}\n
//!     ["a",1]\n
//!     ["b",null]\n                       rows of a push query as they arrive, until its LIMIT
//!   application/json: the same as one array: [{"queryId":..},\n["a",1],\n["b",null]]
//!   (each line of the delimited form is one JSON value followed by a newline)
//!  POST /close-query {"queryId": "transient_.."}  ends that push query's response (200, no body)
//! ```
//!
//! A push query's response owns its query: it stops when the response ends, when the client
//! goes away, on `/close-query`, or when the server shuts down. Errors before the first row are
//! ksqlDB's error objects with a 4xx/5xx status, as on `/query`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use eddy_engine::PushQuery;
use eddy_engine::arrow::array::RecordBatch;
use eddy_engine::arrow::datatypes::SchemaRef;
use futures::stream::{self, Stream};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::error::ApiError;
use crate::query::{Answer, run};
use crate::request::{KsqlRequest, MediaType};
use crate::rows::{RowWriter, column_types};

/// The newline-delimited media type of `/query-stream`, its default.
pub const DELIMITED: &str = "application/vnd.ksqlapi.delimited.v1";

/// How `/query-stream` frames its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// A JSON value per line.
    Delimited,
    /// One JSON array.
    Json,
}

impl Framing {
    /// `application/json` when `Accept` asks for it and not for the delimited type.
    fn negotiate(headers: &HeaderMap) -> Framing {
        let accept = headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
            .to_ascii_lowercase();
        if !accept.contains(DELIMITED) && accept.contains(crate::request::APPLICATION_JSON) {
            Framing::Json
        } else {
            Framing::Delimited
        }
    }

    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Framing::Delimited => DELIMITED,
            Framing::Json => crate::request::APPLICATION_JSON,
        })
    }

    /// The framing's bytes: before the header, after it, before and after each row, at the end.
    fn parts(self) -> Parts {
        match self {
            Framing::Delimited => Parts {
                open: b"",
                after_header: b"\n",
                before_row: b"",
                after_row: b"\n",
                close: b"",
            },
            Framing::Json => Parts {
                open: b"[",
                after_header: b"",
                before_row: b",\n",
                after_row: b"",
                close: b"]",
            },
        }
    }
}

/// See [`Framing::parts`].
struct Parts {
    open: &'static [u8],
    after_header: &'static [u8],
    before_row: &'static [u8],
    after_row: &'static [u8],
    close: &'static [u8],
}

/// The push queries `/query-stream` is streaming, by id: `/close-query` cancels one. Entries
/// are removed when their response ends. Never locked across `.await`.
#[derive(Default)]
pub(crate) struct PushQueries {
    running: Arc<Mutex<HashMap<String, CancellationToken>>>,
}

impl PushQueries {
    /// Registers `query_id`: the token ends its response; dropping the guard unregisters it.
    fn register(&self, query_id: &str) -> Registration {
        let closed = CancellationToken::new();
        if let Ok(mut running) = self.running.lock() {
            running.insert(query_id.to_owned(), closed.clone());
        }
        Registration {
            running: Arc::clone(&self.running),
            query_id: query_id.to_owned(),
            closed,
        }
    }

    /// Ends `query_id`'s response; false when no such query is streaming.
    fn close(&self, query_id: &str) -> bool {
        let closed = self
            .running
            .lock()
            .ok()
            .and_then(|running| running.get(query_id).cloned());
        match closed {
            Some(closed) => {
                closed.cancel();
                true
            }
            None => false,
        }
    }
}

/// A push query's entry in [`PushQueries`], removed when the response (which owns it) ends.
struct Registration {
    running: Arc<Mutex<HashMap<String, CancellationToken>>>,
    query_id: String,
    closed: CancellationToken,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut running) = self.running.lock() {
            running.remove(&self.query_id);
        }
    }
}

pub async fn handle(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let framing = Framing::negotiate(&headers);
    let request = match KsqlRequest::parse(body, state.config().max_request_bytes) {
        Ok(request) => request,
        Err(error) => return error.into_response_as(MediaType::Json),
    };
    let answer = match run(&state, &request, "/query-stream").await {
        Ok(answer) => answer,
        Err(error) => return error.into_response_as(MediaType::Json),
    };
    match answer {
        Answer::Pull { schema, batches } => {
            let query_id = state.new_pull_query_id();
            match pull_chunks(framing, &query_id, &schema, &batches) {
                Ok(chunks) => response(
                    framing,
                    Body::from_stream(stream::iter(
                        chunks.into_iter().map(Ok::<_, std::convert::Infallible>),
                    )),
                ),
                Err(error) => error.into_response_as(MediaType::Json),
            }
        }
        Answer::Push(push, slot) => response(
            framing,
            Body::from_stream(slot.held_by(push_stream(framing, push, &state))),
        ),
        Answer::Print(..) => ApiError::bad_statement(
            "/query-stream runs SELECT statements; PRINT streams text, send it to /query",
            request.ksql.trim(),
        )
        .into_response_as(MediaType::Json),
    }
}

fn response(framing: Framing, body: Body) -> Response {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, framing.content_type());
    response
}

/// The header object of a result: its query id and columns.
fn header(query_id: &str, schema: &SchemaRef) -> Vec<u8> {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    json!({
        "queryId": query_id,
        "columnNames": names,
        "columnTypes": column_types(schema),
    })
    .to_string()
    .into_bytes()
}

fn encode_error(error: impl std::fmt::Display) -> ApiError {
    ApiError::server_error(format!("cannot encode rows: {error}"))
}

/// A pull query's response, as chunks: the header, then each row in a chunk of its own (as
/// ksqlDB writes them; simple clients read one delimited value per chunk).
fn pull_chunks(
    framing: Framing,
    query_id: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Vec<Bytes>, ApiError> {
    let parts = framing.parts();
    let mut first = parts.open.to_vec();
    first.extend_from_slice(&header(query_id, schema));
    first.extend_from_slice(parts.after_header);
    let mut chunks = vec![Bytes::from(first)];
    let writer = RowWriter::new();
    for batch in batches {
        row_chunks(&writer, batch, &parts, &mut chunks).map_err(encode_error)?;
    }
    if !parts.close.is_empty() {
        chunks.push(Bytes::from_static(parts.close));
    }
    Ok(chunks)
}

/// Appends each row of `batch` to `chunks` as a chunk of its own.
fn row_chunks(
    writer: &RowWriter,
    batch: &RecordBatch,
    parts: &Parts,
    chunks: &mut Vec<Bytes>,
) -> Result<(), eddy_engine::arrow::error::ArrowError> {
    // One pass over the batch into one buffer; the chunks are slices of it.
    let mut encoded = Vec::new();
    let mut ends = Vec::with_capacity(batch.num_rows());
    writer.write_arrays(
        batch,
        &mut encoded,
        parts.before_row,
        parts.after_row,
        &mut ends,
    )?;
    let encoded = Bytes::from(encoded);
    let mut start = 0;
    for end in ends {
        chunks.push(encoded.slice(start..end));
        start = end;
    }
    Ok(())
}

/// Where a push query's response is.
struct PushResponse {
    framing: Framing,
    /// The header, until it is sent.
    header: Option<Vec<u8>>,
    push: PushQuery,
    writer: RowWriter,
    registration: Registration,
    shutdown: CancellationToken,
    /// Rows encoded and not yet sent, one chunk each.
    pending: std::collections::VecDeque<Bytes>,
    done: bool,
}

/// A push query's response: the header, then its rows as they arrive, until the query ends, is
/// closed, or the server shuts down. Owns the query (dropping the stream stops it) and its
/// registration.
fn push_stream(
    framing: Framing,
    push: PushQuery,
    state: &AppState,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + use<> {
    let parts = framing.parts();
    let mut header_bytes = parts.open.to_vec();
    header_bytes.extend_from_slice(&header(&push.query_id, &push.schema));
    header_bytes.extend_from_slice(parts.after_header);
    let response = PushResponse {
        framing,
        header: Some(header_bytes),
        registration: state.push_queries().register(&push.query_id),
        push,
        writer: RowWriter::new(),
        shutdown: state.shutdown_token().clone(),
        pending: std::collections::VecDeque::new(),
        done: false,
    };
    stream::unfold(response, |mut response| async move {
        let chunk = next_chunk(&mut response).await?;
        Some((Ok(chunk), response))
    })
}

async fn next_chunk(response: &mut PushResponse) -> Option<Bytes> {
    if let Some(header) = response.header.take() {
        return Some(Bytes::from(header));
    }
    if let Some(row) = response.pending.pop_front() {
        return Some(row);
    }
    if response.done {
        return None;
    }
    let parts = response.framing.parts();
    loop {
        let next = tokio::select! {
            biased;
            _ = response.registration.closed.cancelled() => None,
            _ = response.shutdown.cancelled() => None,
            // `next_batch` is cancel-safe: it only awaits a channel receive.
            next = response.push.next_batch() => next,
        };
        let Some(batch) = next else {
            response.done = true;
            response.push.stop();
            return Some(Bytes::from_static(parts.close));
        };
        if batch.num_rows() == 0 {
            continue;
        }
        let mut rows = Vec::with_capacity(batch.num_rows());
        if let Err(error) = row_chunks(&response.writer, &batch, &parts, &mut rows) {
            // Mid-stream there is no status to set: the response ends short, and the log says why.
            tracing::warn!(query = response.push.query_id, %error, "cannot encode push rows");
            response.done = true;
            response.push.stop();
            return None;
        }
        response.pending.extend(rows);
        if let Some(row) = response.pending.pop_front() {
            return Some(row);
        }
    }
}

/// The body of `POST /close-query`.
#[derive(Debug, Deserialize)]
struct CloseQuery {
    #[serde(rename = "queryId")]
    query_id: String,
}

pub async fn close(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            return ApiError::bad_request(format!("cannot read the request body: {rejection}"))
                .into_response_as(MediaType::Json);
        }
    };
    let request: CloseQuery = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return ApiError::bad_request(format!(
                "the request body is not a JSON object with a \"queryId\" string: {error}"
            ))
            .into_response_as(MediaType::Json);
        }
    };
    if state.push_queries().close(&request.query_id) {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::OK;
        response
    } else {
        ApiError::bad_request(format!(
            "no push query with id \"{}\" is running on this server",
            request.query_id
        ))
        .into_response_as(MediaType::Json)
    }
}
