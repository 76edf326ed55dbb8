//! [`Format`]: how one part of a Kafka record (key or value) is serialized, and its parsing from
//! `WITH (KEY_FORMAT=..., VALUE_FORMAT=..., VALUE_DELIMITER=..., WRAP_SINGLE_VALUE=...)`.

use std::fmt;
use std::str::FromStr;

use crate::error::{FormatError, RecordPart};

/// The formats [`Format::parse`] accepts, for error messages.
const VALID_FORMATS: &str = "'NONE', 'KAFKA', 'JSON', 'DELIMITED'";

/// Serialization of one part of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// No data: the part has no columns and its bytes are ignored (keyless streams).
    None,
    /// Kafka's own serializers: INT is a 4-byte big-endian i32, BIGINT an 8-byte big-endian i64,
    /// DOUBLE an 8-byte big-endian IEEE 754 f64, STRING UTF-8, BYTES raw. At most one column.
    Kafka,
    /// A JSON object whose fields are the columns, matched case-insensitively. With
    /// `wrap_single_value: false` and exactly one column, the record is the bare column value.
    Json { wrap_single_value: bool },
    /// Delimiter-separated fields in column order; `"` quotes a field, `""` inside quotes is a quote;
    /// an empty field is NULL.
    Delimited { delimiter: u8 },
}

/// The optional properties that refine a format, as given in a `WITH` clause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FormatProperties<'a> {
    /// `KEY_DELIMITER`/`VALUE_DELIMITER`: one character, or `TAB`/`SPACE`. DELIMITED only; default `,`.
    pub delimiter: Option<&'a str>,
    /// `WRAP_SINGLE_VALUE`. JSON only; default `true`.
    pub wrap_single_value: Option<bool>,
}

impl Format {
    /// The format's name as written in SQL: `NONE`, `KAFKA`, `JSON`, `DELIMITED`.
    pub fn name(&self) -> &'static str {
        match self {
            Format::None => "NONE",
            Format::Kafka => "KAFKA",
            Format::Json { .. } => "JSON",
            Format::Delimited { .. } => "DELIMITED",
        }
    }

    /// JSON with the default of wrapping a single column in an object.
    pub const JSON: Format = Format::Json {
        wrap_single_value: true,
    };

    /// DELIMITED with the default `,` delimiter.
    pub const DELIMITED: Format = Format::Delimited { delimiter: b',' };

    /// Parses a format name (case-insensitive) with its properties, for the `part` of the record
    /// (used to name properties in errors: `VALUE_DELIMITER`).
    ///
    /// ```
    /// use eddy_format::{Format, FormatProperties, RecordPart};
    /// let props = FormatProperties { delimiter: Some("TAB"), ..Default::default() };
    /// let f = Format::parse(RecordPart::Value, "delimited", &props).unwrap();
    /// assert_eq!(f, Format::Delimited { delimiter: b'\t' });
    /// assert!(Format::parse(RecordPart::Value, "xml", &Default::default()).is_err());
    /// ```
    pub fn parse(
        part: RecordPart,
        name: &str,
        props: &FormatProperties<'_>,
    ) -> Result<Format, FormatError> {
        let upper = name.trim().to_ascii_uppercase();
        let format = match upper.as_str() {
            "NONE" => Format::None,
            "KAFKA" => Format::Kafka,
            "JSON" => Format::Json {
                wrap_single_value: props.wrap_single_value.unwrap_or(true),
            },
            "DELIMITED" => {
                let delimiter = match props.delimiter {
                    Some(d) => parse_delimiter(part, d)?,
                    None => b',',
                };
                Format::Delimited { delimiter }
            }
            _ => {
                return Err(FormatError::UnknownFormat {
                    part,
                    name: name.to_string(),
                    valid: VALID_FORMATS,
                });
            }
        };
        if let (Some(d), false) = (props.delimiter, matches!(format, Format::Delimited { .. })) {
            return Err(FormatError::InvalidProperty {
                property: format!("{}_DELIMITER", part.property_prefix()),
                value: d.to_string(),
                reason: format!(
                    "delimiters apply only to {}_FORMAT='DELIMITED', not '{}'",
                    part.property_prefix(),
                    format.name()
                ),
            });
        }
        if let (Some(w), false) = (
            props.wrap_single_value,
            matches!(format, Format::Json { .. }),
        ) {
            return Err(FormatError::InvalidProperty {
                property: "WRAP_SINGLE_VALUE".to_string(),
                value: w.to_string(),
                reason: format!(
                    "WRAP_SINGLE_VALUE applies only to the JSON format, not '{}'",
                    format.name()
                ),
            });
        }
        Ok(format)
    }
}

fn parse_delimiter(part: RecordPart, text: &str) -> Result<u8, FormatError> {
    let invalid = |reason: &str| FormatError::InvalidProperty {
        property: format!("{}_DELIMITER", part.property_prefix()),
        value: text.to_string(),
        reason: reason.to_string(),
    };
    if text.eq_ignore_ascii_case("TAB") {
        return Ok(b'\t');
    }
    if text.eq_ignore_ascii_case("SPACE") {
        return Ok(b' ');
    }
    match text.as_bytes() {
        [b'"' | b'\r' | b'\n'] => Err(invalid("a quote or a line break cannot be a delimiter")),
        [b] if b.is_ascii() => Ok(*b),
        _ => Err(invalid(
            "expected a single ASCII character, or 'TAB' or 'SPACE'",
        )),
    }
}

impl FromStr for Format {
    type Err = FormatError;

    /// A value format by name with default properties.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::parse(RecordPart::Value, s, &FormatProperties::default())
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(
        name: &str,
        delimiter: Option<&str>,
        wrap: Option<bool>,
    ) -> Result<Format, FormatError> {
        Format::parse(
            RecordPart::Value,
            name,
            &FormatProperties {
                delimiter,
                wrap_single_value: wrap,
            },
        )
    }

    #[test]
    fn names_are_case_insensitive() {
        assert_eq!("json".parse::<Format>(), Ok(Format::JSON));
        assert_eq!("Kafka".parse::<Format>(), Ok(Format::Kafka));
        assert_eq!("NONE".parse::<Format>(), Ok(Format::None));
        assert_eq!("delimited".parse::<Format>(), Ok(Format::DELIMITED));
        assert_eq!(
            parse("json", None, Some(false)),
            Ok(Format::Json {
                wrap_single_value: false
            })
        );
    }

    #[test]
    fn delimiters() {
        assert_eq!(
            parse("DELIMITED", Some("|"), None),
            Ok(Format::Delimited { delimiter: b'|' })
        );
        assert_eq!(
            parse("DELIMITED", Some("tab"), None),
            Ok(Format::Delimited { delimiter: b'\t' })
        );
        assert_eq!(
            parse("DELIMITED", Some("SPACE"), None),
            Ok(Format::Delimited { delimiter: b' ' })
        );
        let err = parse("DELIMITED", Some("ab"), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("VALUE_DELIMITER") && err.contains("single ASCII character"),
            "{err}"
        );
        assert!(parse("DELIMITED", Some("\""), None).is_err());
        assert!(parse("DELIMITED", Some("é"), None).is_err());
        let err = parse("JSON", Some(","), None).unwrap_err().to_string();
        assert!(err.contains("only to VALUE_FORMAT='DELIMITED'"), "{err}");
        assert!(parse("KAFKA", None, Some(true)).is_err());
    }

    #[test]
    fn unknown_format_lists_valid_ones() {
        let err = "xml".parse::<Format>().unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown value format \"xml\"; valid formats are 'NONE', 'KAFKA', 'JSON', 'DELIMITED'"
        );
    }
}
