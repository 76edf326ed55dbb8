//! `POST /query`: one `SELECT` (or `PRINT`), answered as ksqlDB's chunked JSON array.
//!
//! ```text
//! pull:  [{"header":{"queryId":"query_..","schema":"`K` STRING, `N` BIGINT"}},\n{"row":..},\n{"row":..}]
//! push:  [{"header":{...}},\n{"row":..},\n{"row":..},\n{"finalMessage":"Limit Reached"}]\n
//! ```
//!
//! A push query's rows are written as they arrive; while none arrive a newline is written every
//! keepalive interval, so that a client that went away is noticed. The response body owns the
//! [`PushQuery`]: when hyper drops it (the client disconnected), the query stops and frees its
//! consumer and tasks. `PRINT` streams its lines as text, one per line.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use eddy_engine::arrow::array::RecordBatch;
use eddy_engine::arrow::datatypes::SchemaRef;
use eddy_engine::{PrintResult, PushQuery, StatementResult};
use eddy_sql::Statement;
use futures::stream::{self, Stream};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::request::{KsqlRequest, MediaType, body_response, statement_text};
use crate::rows::{RowWriter, schema_text};
use crate::{AppState, PushQuerySlot};

/// Final message of a push query that returned its `LIMIT` rows.
const LIMIT_REACHED: &str = "Limit Reached";
/// Final message of a push query that ended otherwise (stopped, failed, server shutting down).
const QUERY_COMPLETED: &str = "Query Completed";

pub async fn handle(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let media = MediaType::negotiate(&headers);
    let request = match KsqlRequest::parse(body, state.config().max_request_bytes) {
        Ok(request) => request,
        Err(error) => return error.into_response_as(media),
    };
    match run(&state, &request, "/query").await {
        Ok(Answer::Pull { schema, batches }) => {
            let query_id = state.new_pull_query_id();
            match pull_body(&query_id, &schema, &batches) {
                Ok(body) => body_response(StatusCode::OK, media, Body::from(body)),
                Err(error) => error.into_response_as(media),
            }
        }
        Ok(Answer::Push(push, slot)) => body_response(
            StatusCode::OK,
            media,
            Body::from_stream(slot.held_by(push_stream(
                push,
                state.keepalive(),
                state.shutdown_token().clone(),
            ))),
        ),
        Ok(Answer::Print(print, slot)) => body_response(
            StatusCode::OK,
            media,
            Body::from_stream(slot.held_by(print_stream(
                print,
                state.keepalive(),
                state.shutdown_token().clone(),
            ))),
        ),
        Err(error) => error.into_response_as(media),
    }
}

/// What a query request gave.
pub(crate) enum Answer {
    Pull {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    },
    /// A push query, with the slot it holds among the server's streaming queries.
    Push(PushQuery, PushQuerySlot),
    Print(PrintResult, PushQuerySlot),
}

/// Runs the one `SELECT` or `PRINT` of a request to `endpoint`.
pub(crate) async fn run(
    state: &AppState,
    request: &KsqlRequest,
    endpoint: &str,
) -> Result<Answer, ApiError> {
    let statements = eddy_sql::parse_statements(&request.ksql)
        .map_err(|error| ApiError::bad_statement(error.to_string(), request.ksql.trim()))?;
    let [statement] = statements.as_slice() else {
        return Err(ApiError::bad_statement(
            format!(
                "{endpoint} runs exactly one statement, and the request has {}; send each query \
                 in a request of its own",
                statements.len()
            ),
            request.ksql.trim(),
        ));
    };
    let text = statement_text(statement);
    if !matches!(
        statement.statement,
        Statement::Select(_) | Statement::Print { .. }
    ) {
        return Err(ApiError::bad_statement(
            format!(
                "{endpoint} runs SELECT and PRINT statements only; send other statements to /ksql"
            ),
            text,
        ));
    }
    let streams = match &statement.statement {
        Statement::Select(select) => select.emit.is_some(),
        _ => true,
    };
    // Taken before the query starts, so that a server at its limit starts no consumer.
    let slot = if streams {
        Some(state.push_query_slot().map_err(ApiError::bad_request)?)
    } else {
        None
    };
    let backend = state.backend();
    let mut session = request.session(backend).await?;
    match (backend.execute(&mut session, statement).await, slot) {
        (Ok(StatementResult::Rows { schema, batches }), _) => Ok(Answer::Pull { schema, batches }),
        (Ok(StatementResult::Push(push)), Some(slot)) => Ok(Answer::Push(push, slot)),
        (Ok(StatementResult::Print(print)), Some(slot)) => Ok(Answer::Print(print, slot)),
        (Ok(other), _) => Err(ApiError::server_error(format!(
            "statement {text} gave no rows but {other:?}"
        ))),
        (Err(error), _) => Err(ApiError::from_engine(error, text, Vec::new())),
    }
}

/// The `header` object of a result.
fn header(query_id: &str, schema: &SchemaRef) -> Vec<u8> {
    json!({"header": {"queryId": query_id, "schema": schema_text(schema)}})
        .to_string()
        .into_bytes()
}

/// A pull query's whole response.
fn pull_body(
    query_id: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Vec<u8>, ApiError> {
    let writer = RowWriter::new();
    let mut out = b"[".to_vec();
    out.extend_from_slice(&header(query_id, schema));
    for batch in batches {
        writer
            .write_rows(batch, &mut out, b",\n", b"")
            .map_err(|error| ApiError::server_error(format!("cannot encode rows: {error}")))?;
    }
    out.push(b']');
    Ok(out)
}

/// Where a streamed response is.
enum Phase {
    Header,
    Rows,
    Done,
}

struct PushState {
    push: PushQuery,
    writer: RowWriter,
    phase: Phase,
    rows: u64,
    keepalive: Duration,
    shutdown: CancellationToken,
}

impl Drop for PushState {
    fn drop(&mut self) {
        // The query stops when `push` is dropped, right after this.
        tracing::debug!(
            query = self.push.query_id,
            rows = self.rows,
            "push query response ended"
        );
    }
}

/// A push query's response, chunk by chunk. Owns the query: dropping the stream stops it.
fn push_stream(
    push: PushQuery,
    keepalive: Duration,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    let state = PushState {
        push,
        writer: RowWriter::new(),
        phase: Phase::Header,
        rows: 0,
        keepalive,
        shutdown,
    };
    stream::unfold(state, |mut state| async move {
        let chunk = next_push_chunk(&mut state).await?;
        Some((Ok(Bytes::from(chunk)), state))
    })
}

async fn next_push_chunk(state: &mut PushState) -> Option<Vec<u8>> {
    loop {
        match state.phase {
            Phase::Done => return None,
            Phase::Header => {
                state.phase = Phase::Rows;
                let mut chunk = b"[".to_vec();
                chunk.extend_from_slice(&header(&state.push.query_id, &state.push.schema));
                chunk.extend_from_slice(b",\n");
                return Some(chunk);
            }
            Phase::Rows => {
                let next = tokio::select! {
                    biased;
                    _ = state.shutdown.cancelled() => None,
                    // `next_batch` is cancel-safe: it only awaits a channel receive.
                    next = tokio::time::timeout(state.keepalive, state.push.next_batch()) => match next {
                        Err(_idle) => return Some(b"\n".to_vec()),
                        Ok(next) => next,
                    },
                };
                match next {
                    Some(batch) if batch.num_rows() == 0 => continue,
                    Some(batch) => {
                        state.rows += batch.num_rows() as u64;
                        let mut chunk = Vec::new();
                        if let Err(error) = state.writer.write_rows(&batch, &mut chunk, b"", b",\n")
                        {
                            state.phase = Phase::Done;
                            state.push.stop();
                            return Some(error_chunk(&format!("cannot encode rows: {error}")));
                        }
                        return Some(chunk);
                    }
                    None => {
                        state.phase = Phase::Done;
                        state.push.stop();
                        let limit_reached =
                            state.push.limit().is_some_and(|limit| state.rows >= limit);
                        let message = if limit_reached {
                            LIMIT_REACHED
                        } else {
                            QUERY_COMPLETED
                        };
                        let mut chunk = json!({"finalMessage": message}).to_string().into_bytes();
                        chunk.extend_from_slice(b"]\n");
                        return Some(chunk);
                    }
                }
            }
        }
    }
}

/// The last chunk of a result that failed midway: ksqlDB's `errorMessage` row, closing the array.
fn error_chunk(message: &str) -> Vec<u8> {
    let mut chunk = json!({"errorMessage": {
        "@type": "generic_error",
        "error_code": crate::error::ERROR_CODE_SERVER_ERROR,
        "message": message,
        "stackTrace": [],
    }})
    .to_string()
    .into_bytes();
    chunk.extend_from_slice(b"]\n");
    chunk
}

/// `PRINT`'s lines as text, a newline after each; a bare newline every keepalive interval while
/// idle. Owns the `PRINT`: dropping the stream stops it.
fn print_stream(
    print: PrintResult,
    keepalive: Duration,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    stream::unfold(Some(print), move |print| {
        let shutdown = shutdown.clone();
        async move {
            let mut print = print?;
            let line = tokio::select! {
                biased;
                _ = shutdown.cancelled() => None,
                line = tokio::time::timeout(keepalive, print.next_line()) => match line {
                    Err(_idle) => return Some((Ok(Bytes::from_static(b"\n")), Some(print))),
                    Ok(line) => line,
                },
            };
            let line = line?;
            Some((Ok(Bytes::from(format!("{line}\n"))), Some(print)))
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use eddy_engine::arrow::array::{Int64Array, StringArray};
    use eddy_engine::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn pull_body_is_ksqldb_s_framing() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("K", DataType::Utf8, true),
            Field::new("N", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(Int64Array::from(vec![Some(1), None])),
            ],
        )
        .expect("batch");
        let body = pull_body("query_1", &schema, &[batch]).expect("encodes");
        assert_eq!(
            String::from_utf8(body).expect("utf-8"),
            "[{\"header\":{\"queryId\":\"query_1\",\"schema\":\"`K` STRING, `N` BIGINT\"}},\n\
             {\"row\":{\"columns\":[\"a\",1]}},\n\
             {\"row\":{\"columns\":[\"b\",null]}}]"
        );
        let empty = pull_body("query_2", &schema, &[]).expect("encodes");
        let value: serde_json::Value = serde_json::from_slice(&empty).expect("valid JSON");
        assert_eq!(value.as_array().map(Vec::len), Some(1));
    }
}
