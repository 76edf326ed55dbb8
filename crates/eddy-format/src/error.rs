//! Errors: [`FormatError`] for problems found while setting a format up (the user's schema or
//! properties, or a batch that does not match its layout), [`RecordError`] for one bad record.

use std::fmt;

/// Which half of a Kafka record a column, a format or an error belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordPart {
    Key,
    Value,
}

impl RecordPart {
    /// `"key"` or `"value"`, as used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordPart::Key => "key",
            RecordPart::Value => "value",
        }
    }

    /// `"KEY"` or `"VALUE"`, the prefix of the part's `WITH` properties (`KEY_FORMAT`, `VALUE_DELIMITER`).
    pub fn property_prefix(self) -> &'static str {
        match self {
            RecordPart::Key => "KEY",
            RecordPart::Value => "VALUE",
        }
    }
}

impl fmt::Display for RecordPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A problem with a format's configuration or with the data handed to an encoder as a whole.
///
/// Everything but [`FormatError::BatchMismatch`] and [`FormatError::Internal`] is the user's to fix
/// (schema or `WITH` properties); those two mean a bug in the caller or in this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("unknown {part} format \"{name}\"; valid formats are {valid}")]
    UnknownFormat {
        part: RecordPart,
        name: String,
        valid: &'static str,
    },

    #[error("invalid value \"{value}\" for property {property}: {reason}")]
    InvalidProperty {
        property: String,
        value: String,
        reason: String,
    },

    #[error(
        "{part} column \"{column}\" has type {type_name}, which the {format} format does not support; \
         supported types are {supported}"
    )]
    UnsupportedType {
        part: RecordPart,
        column: String,
        type_name: String,
        format: &'static str,
        supported: &'static str,
    },

    #[error(
        "the {format} {part} format supports {max}, found {count} {part} columns; hint: {hint}"
    )]
    ColumnCount {
        part: RecordPart,
        format: &'static str,
        max: &'static str,
        count: usize,
        hint: &'static str,
    },

    #[error(
        "{part} columns \"{first}\" and \"{second}\" differ only in case; the JSON format matches field names case-insensitively"
    )]
    AmbiguousColumns {
        part: RecordPart,
        first: String,
        second: String,
    },

    #[error("invalid source layout: {0}")]
    InvalidLayout(String),

    #[error("record batch does not match the output layout: {0}")]
    BatchMismatch(String),

    #[error("internal error in eddy-format: {0}")]
    Internal(String),
}

/// One record that could not be decoded. It produced no row; the rest of the batch is unaffected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    pub partition: i32,
    pub offset: i64,
    pub part: RecordPart,
    /// What is wrong, precisely, e.g. `value field "QTY": expected INT, found string "abc"`.
    /// Echoed record content is truncated to a bounded length.
    pub reason: String,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "partition {} offset {}: {}",
            self.partition, self.offset, self.reason
        )
    }
}

impl std::error::Error for RecordError {}

/// Longest echo of record content in an error message, in bytes (cut at a character boundary).
pub(crate) const MAX_ECHO_BYTES: usize = 40;

/// Writes `s` quoted, cut to [`MAX_ECHO_BYTES`] with an ellipsis.
pub(crate) fn echo(s: &str) -> String {
    if s.len() <= MAX_ECHO_BYTES {
        return format!("\"{s}\"");
    }
    let mut end = MAX_ECHO_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("\"{}...\"", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_truncates_at_char_boundary() {
        assert_eq!(echo("abc"), "\"abc\"");
        let long = "é".repeat(30);
        let e = echo(&long);
        assert!(e.len() <= MAX_ECHO_BYTES + 5);
        assert!(e.ends_with("...\""));
    }

    #[test]
    fn record_error_display() {
        let e = RecordError {
            partition: 2,
            offset: 7,
            part: RecordPart::Value,
            reason: "bad".into(),
        };
        assert_eq!(e.to_string(), "partition 2 offset 7: bad");
    }
}
