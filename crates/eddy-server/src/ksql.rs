//! `POST /ksql`: runs a script of statements, answering one entity per statement.
//!
//! The whole script is parsed first (a syntax error runs nothing) and refused when it holds a
//! query (`SELECT`, `PRINT`: those go to `/query`). Statements then run in order; the first that
//! fails ends the request with a `statement_error` carrying the entities of those before it,
//! which stay executed.

use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use eddy_engine::StatementResult;
use eddy_sql::Statement;
use std::time::Duration;

use crate::AppState;
use crate::entity::entity_of;
use crate::error::ApiError;
use crate::request::{KsqlRequest, MediaType, json_response, statement_text};

pub async fn handle(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let media = MediaType::negotiate(&headers);
    match run(&state, body).await {
        Ok(entities) => json_response(StatusCode::OK, media, &entities),
        Err(error) => error.into_response_as(media),
    }
}

async fn run(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Vec<crate::entity::KsqlEntity>, ApiError> {
    let request = KsqlRequest::parse(body, state.config().max_request_bytes)?;
    let statements = eddy_sql::parse_statements(&request.ksql)
        .map_err(|error| ApiError::bad_statement(error.to_string(), request.ksql.trim()))?;
    if let Some(query) = statements
        .iter()
        .find(|s| matches!(s.statement, Statement::Select(_) | Statement::Print { .. }))
    {
        return Err(ApiError::query_endpoint(statement_text(query)));
    }
    let backend = state.backend();
    let mut session = request.session(backend).await?;
    let kafka_timeout = Duration::from_millis(state.config().kafka_check_timeout_ms);
    let mut entities = Vec::with_capacity(statements.len());
    for statement in &statements {
        let text = statement_text(statement);
        match backend.execute(&mut session, statement).await {
            Ok(mut result) => {
                // The engine lists its own settings; the server's are known here.
                if let StatementResult::Properties(rows) = &mut result {
                    rows.extend(
                        state
                            .config()
                            .describe()
                            .into_iter()
                            .map(|(name, value)| (name, "SERVER".to_owned(), value)),
                    );
                }
                entities.push(entity_of(statement, text, result, backend, kafka_timeout).await?)
            }
            Err(error) => return Err(ApiError::from_engine(error, text, entities)),
        }
    }
    Ok(entities)
}
