//! Errors of the front ends.

use thiserror::Error;

/// Why a front end stopped.
#[derive(Debug, Error)]
pub enum CliError {
    /// A statement failed; the REPL prints these and goes on, other callers may not.
    #[error(transparent)]
    Engine(#[from] eddy_engine::EngineError),
    /// The terminal or a file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The server of `eddy cli --server` could not be reached or answered nonsense.
    #[error("{0}")]
    Remote(String),
    /// The line editor failed (not Ctrl-C or Ctrl-D, which end input normally).
    #[error("line editor: {0}")]
    Editor(String),
    /// A task of the front end panicked or was cancelled: a bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CliError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        CliError::Io {
            context: context.into(),
            source,
        }
    }
}
