//! Errors of statement execution, split by whose fault they are.

use eddy_catalog::CatalogError;
use eddy_planner::PlanError;
use eddy_runtime::{KafkaError, QueryError};
use eddy_sql::ParseError;
use thiserror::Error;

/// Why a statement failed. `Display` is the user-facing message.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The statement text is not valid Eddy SQL.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The statement is valid SQL but cannot be planned (unknown column, unsupported feature...).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The statement conflicts with the catalog (exists already, unknown source...).
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The statement is wrong in a way the parser cannot see (bad property, wrong format...).
    #[error("{message}{}", .hint.as_deref().map(|h| format!("\nhint: {h}")).unwrap_or_default())]
    Invalid {
        message: String,
        hint: Option<String>,
    },
    /// Kafka failed or refused.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// A query could not be started.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// A broken invariant: a bug in Eddy.
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    pub fn invalid(message: impl Into<String>) -> Self {
        EngineError::Invalid {
            message: message.into(),
            hint: None,
        }
    }

    pub fn invalid_with_hint(message: impl Into<String>, hint: impl Into<String>) -> Self {
        EngineError::Invalid {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    /// True when the statement itself is at fault (HTTP 400), false for server-side failures.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            EngineError::Parse(_)
                | EngineError::Plan(_)
                | EngineError::Catalog(_)
                | EngineError::Invalid { .. }
        )
    }
}
