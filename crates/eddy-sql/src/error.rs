//! Parse errors with the position of the offending token.

use sqlparser::tokenizer::Location;
use thiserror::Error;

/// A statement that is not valid Eddy SQL. `Display` reads like PostgreSQL's
/// `syntax error at or near ...`, with the line and column (both from 1) of the offending token.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("syntax error at line {line}, column {column}: {message}")]
pub struct ParseError {
    /// What was wrong, e.g. `expected a data type, found "FOO"`.
    pub message: String,
    /// Line of the offending token, from 1 (0 when unknown).
    pub line: u64,
    /// Column of the offending token, from 1 (0 when unknown).
    pub column: u64,
}

impl ParseError {
    pub(crate) fn at(location: Location, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            line: location.line,
            column: location.column,
        }
    }

    /// Converts sqlparser's error, whose message ends with ` at Line: l, Column: c` when it knows the
    /// position. `fallback` is used when it does not (e.g. at the end of the input).
    pub(crate) fn from_sqlparser(
        error: sqlparser::parser::ParserError,
        fallback: Location,
    ) -> Self {
        use sqlparser::parser::ParserError as E;
        let text = match error {
            E::TokenizerError(text) | E::ParserError(text) => text,
            E::RecursionLimitExceeded => {
                return Self::at(fallback, "the statement is nested too deeply");
            }
        };
        let (message, location) = match text.rfind(" at Line: ") {
            Some(at) => {
                let position = &text[at + " at Line: ".len()..];
                let mut parts = position.split(", Column: ");
                let line = parts.next().and_then(|l| l.trim().parse().ok());
                let column = parts.next().and_then(|c| c.trim().parse().ok());
                match (line, column) {
                    (Some(line), Some(column)) => {
                        (text[..at].to_owned(), Location { line, column })
                    }
                    _ => (text.clone(), fallback),
                }
            }
            None => (text.clone(), fallback),
        };
        Self::at(location, humanize(&message))
    }
}

/// sqlparser says `Expected: an expression, found: EOF`; users read `expected an expression, found end of input`.
fn humanize(message: &str) -> String {
    let message = message
        .strip_prefix("sql parser error: ")
        .unwrap_or(message);
    let mut message = message
        .replace("Expected: ", "expected ")
        .replace(", found: ", ", found ");
    if message.ends_with("found EOF") {
        message.truncate(message.len() - "EOF".len());
        message.push_str("end of input");
    }
    message
}
