//! The errors of this crate: user-facing ones (bad calls, overflow) worded like Postgres, with
//! ksqlDB's type names, and internal ones (a caller passing inconsistent inputs or states).

use arrow::error::ArrowError;

/// What can go wrong when planning or running aggregates.
///
/// The planning errors ([`UnknownFunction`](Self::UnknownFunction) to
/// [`NotRetractable`](Self::NotRetractable)) are meant for the user as they are: lowercase,
/// naming the function and the ksqlDB types, with a `hint:` line where one helps.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    /// The name is not one of [`AggregateSpec::function_names`](crate::AggregateSpec::function_names).
    #[error("function {name} does not exist\nhint: the aggregate functions are {list}", list = crate::spec::function_list())]
    UnknownFunction { name: String },

    /// The number of arguments does not fit the function.
    #[error(
        "function {function} does not take {found} {noun}\nhint: write {usage}",
        noun = if *.found == 1 { "argument" } else { "arguments" }
    )]
    ArgumentCount {
        function: &'static str,
        found: usize,
        usage: &'static str,
    },

    /// The function does not accept a column of this type.
    #[error(
        "function {function} does not accept {found} arguments\nhint: {function} takes {expected}"
    )]
    ArgumentType {
        function: &'static str,
        /// The ksqlDB name of the type given, e.g. `STRING`.
        found: String,
        /// The ksqlDB names of the types accepted, e.g. `INT, BIGINT, DOUBLE or DECIMAL`.
        expected: &'static str,
    },

    /// A literal argument (TOPK's `k`, LATEST_BY_OFFSET's `ignore_nulls`) is out of range or of
    /// the wrong type; the message says which.
    #[error("{message}")]
    InvalidArgument {
        function: &'static str,
        message: String,
    },

    /// The function cannot take a row back out of its state, so it cannot aggregate a table.
    #[error("{function} cannot aggregate a table: a changed row cannot be taken back out of it")]
    NotRetractable { function: &'static str },

    /// A `SUM` of decimals left the range of its `DECIMAL(precision, scale)` type.
    #[error(
        "numeric field overflow: the SUM of DECIMAL({precision}, {scale}) values does not fit in \
         DECIMAL({precision}, {scale})\nhint: cast the argument to a DECIMAL with a larger precision"
    )]
    DecimalOverflow { precision: u8, scale: i8 },

    /// Bytes given to `decode_state` are not a state of this aggregator (corrupt, truncated,
    /// from another query or another format version).
    #[error("invalid aggregate state: {0}")]
    InvalidState(String),

    /// The caller passed inconsistent inputs (lengths, types, group indexes, signs) or a state
    /// made by another aggregator: a bug in the caller, not in the query.
    #[error("invalid aggregate input: {0}")]
    InvalidInput(String),

    /// Arrow failed converting values (not expected for the supported types).
    #[error(transparent)]
    Arrow(#[from] ArrowError),
}

impl AggregateError {
    pub(crate) fn input(message: impl Into<String>) -> Self {
        AggregateError::InvalidInput(message.into())
    }

    pub(crate) fn state(message: impl Into<String>) -> Self {
        AggregateError::InvalidState(message.into())
    }
}
