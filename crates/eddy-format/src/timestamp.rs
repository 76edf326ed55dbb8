//! Event times written as text: the `TIMESTAMP_FORMAT` of a source whose `TIMESTAMP` column is a
//! STRING, as ksqlDB writes it (Java `DateTimeFormatter` patterns such as
//! `yyyy-MM-dd'T'HH:mm:ss.SSSX`), parsed into epoch milliseconds.
//!
//! The pattern is translated once into chrono's format items; each value is then parsed with
//! them. A pattern without a zone offset reads times as UTC, as ksqlDB does; a date-only pattern
//! reads midnight.

use arrow::array::{Array, Int64Array, StringArray};
use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, NaiveDate, NaiveDateTime};

/// A parsed `TIMESTAMP_FORMAT`.
#[derive(Debug, Clone)]
pub struct TimestampFormat {
    pattern: String,
    /// The chrono format string the pattern translates to.
    strftime: String,
    /// The pattern has a zone offset (`X`, `Z`, `x`).
    has_offset: bool,
    /// The pattern's offset accepts `Z` for UTC (`X`), which chrono spells `+00:00`.
    offset_accepts_z: bool,
    /// The pattern has a time of day (else values are dates, read as midnight UTC).
    has_time: bool,
}

/// Why a `TIMESTAMP_FORMAT` pattern cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid TIMESTAMP_FORMAT '{pattern}': {reason}")]
pub struct TimestampFormatError {
    pub pattern: String,
    pub reason: String,
}

impl TimestampFormat {
    /// Translates a Java `DateTimeFormatter` pattern. Supported letters: `y`/`u` (year: `yyyy`,
    /// `yy`), `M` (`MM`, `M`, `MMM` short name, `MMMM` full name), `d`, `D` (day of year), `H`,
    /// `h` with `a`, `m`, `s`, `S` (3, 6 or 9 fraction digits), `E` (day name, `EEE`/`EEEE`),
    /// `X`/`XX`/`XXX` (offset, `Z` for UTC), `Z` and `x`/`xx`/`xxx` (offset), quoted `'text'` and
    /// any other non-letter as itself.
    pub fn new(pattern: &str) -> Result<Self, TimestampFormatError> {
        let error = |reason: String| TimestampFormatError {
            pattern: pattern.to_owned(),
            reason,
        };
        let chars: Vec<char> = pattern.chars().collect();
        let mut out = String::new();
        let (mut has_offset, mut offset_accepts_z, mut has_time, mut has_date) =
            (false, false, false, false);
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c == '\'' {
                // 'text' is literal; '' is a quote.
                if chars.get(i + 1) == Some(&'\'') {
                    out.push('\'');
                    i += 2;
                    continue;
                }
                let close = chars[i + 1..]
                    .iter()
                    .position(|&c| c == '\'')
                    .ok_or_else(|| error("a quote is not closed".into()))?;
                for &literal in &chars[i + 1..i + 1 + close] {
                    push_literal(&mut out, literal);
                }
                i += close + 2;
                continue;
            }
            if !c.is_ascii_alphabetic() {
                push_literal(&mut out, c);
                i += 1;
                continue;
            }
            let run = chars[i..].iter().take_while(|&&d| d == c).count();
            i += run;
            let spec = match (c, run) {
                ('y' | 'u', 2) => "%y",
                ('y' | 'u', 4) => "%Y",
                ('M', 1 | 2) => "%m",
                ('M', 3) => "%b",
                ('M', 4) => "%B",
                ('d', 1 | 2) => "%d",
                ('D', 1..=3) => "%j",
                ('E', 1..=3) => "%a",
                ('E', 4) => "%A",
                ('H', 1 | 2) => "%H",
                ('h', 1 | 2) => "%I",
                ('a', 1) => "%p",
                ('m', 1 | 2) => "%M",
                ('s', 1 | 2) => "%S",
                ('S', 3) => "%3f",
                ('S', 6) => "%6f",
                ('S', 9) => "%9f",
                ('X', 1) => "%#z",
                ('X', 2) | ('Z', 1..=3) | ('x', 1 | 2) => "%z",
                ('X', 3) | ('x', 3) => "%:z",
                _ => {
                    return Err(error(format!(
                        "\"{}\" is not supported; use letters of y, M, d, D, E, H, h, a, m, s, S (3, 6 or 9), X, Z or x, and quote literal text",
                        std::iter::repeat_n(c, run).collect::<String>()
                    )));
                }
            };
            match c {
                'X' | 'Z' | 'x' => {
                    has_offset = true;
                    offset_accepts_z |= c == 'X';
                }
                'H' | 'h' | 'm' | 's' | 'S' => has_time = true,
                'y' | 'u' | 'M' | 'd' | 'D' => has_date = true,
                _ => {}
            }
            out.push_str(spec);
        }
        if !has_date {
            return Err(error("it has no date (y, M, d)".into()));
        }
        // chrono refuses format strings it cannot read; check once here.
        if StrftimeItems::new(&out).any(|item| matches!(item, Item::Error)) {
            return Err(error("it cannot be read".into()));
        }
        Ok(Self {
            pattern: pattern.to_owned(),
            strftime: out,
            has_offset,
            offset_accepts_z,
            has_time,
        })
    }

    /// The pattern as written.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Epoch milliseconds of `text`, or `None` when it does not match the pattern.
    pub fn parse_ms(&self, text: &str) -> Option<i64> {
        let text = text.trim();
        if self.has_offset {
            let parsed = match text.strip_suffix('Z') {
                Some(utc) if self.offset_accepts_z => {
                    DateTime::parse_from_str(&format!("{utc}+00:00"), &self.strftime)
                }
                _ => DateTime::parse_from_str(text, &self.strftime),
            };
            return parsed.ok().map(|t| t.timestamp_millis());
        }
        if self.has_time {
            return NaiveDateTime::parse_from_str(text, &self.strftime)
                .ok()
                .map(|t| t.and_utc().timestamp_millis());
        }
        NaiveDate::parse_from_str(text, &self.strftime)
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc().timestamp_millis())
    }

    /// Parses every value of `texts`: NULL where a value is NULL or does not match.
    pub fn parse_array(&self, texts: &StringArray) -> Int64Array {
        (0..texts.len())
            .map(|row| {
                if texts.is_null(row) {
                    None
                } else {
                    self.parse_ms(texts.value(row))
                }
            })
            .collect()
    }
}

fn push_literal(out: &mut String, c: char) {
    if c == '%' {
        out.push_str("%%");
    } else {
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(pattern: &str, text: &str) -> Option<i64> {
        TimestampFormat::new(pattern).unwrap().parse_ms(text)
    }

    #[test]
    fn ksqldb_patterns_parse_to_epoch_milliseconds() {
        // 2024-03-01T12:30:45.123Z
        let t = 1_709_296_245_123;
        assert_eq!(
            ms("yyyy-MM-dd'T'HH:mm:ss.SSSX", "2024-03-01T12:30:45.123Z"),
            Some(t)
        );
        assert_eq!(
            ms(
                "yyyy-MM-dd'T'HH:mm:ss.SSSXXX",
                "2024-03-01T13:30:45.123+01:00"
            ),
            Some(t)
        );
        assert_eq!(
            ms("yyyy-MM-dd'T'HH:mm:ss.SSSZ", "2024-03-01T07:30:45.123-0500"),
            Some(t)
        );
        // No zone: UTC.
        assert_eq!(
            ms("yyyy-MM-dd HH:mm:ss.SSS", "2024-03-01 12:30:45.123"),
            Some(t)
        );
        assert_eq!(
            ms("dd/MM/yyyy HH:mm:ss", "01/03/2024 12:30:45"),
            Some(t - 123)
        );
        assert_eq!(ms("yyyy-MM-dd", "2024-03-01"), Some(1_709_251_200_000));
        assert_eq!(
            ms("MMM d yyyy hh:mm a", "Mar 1 2024 12:30 PM"),
            Some(t - 45_123)
        );
        assert_eq!(
            ms("yyyy-MM-dd'T'HH:mm:ss", "1969-12-31T23:59:59"),
            Some(-1000)
        );
    }

    #[test]
    fn values_that_do_not_match_are_none() {
        assert_eq!(ms("yyyy-MM-dd HH:mm:ss", "2024-03-01"), None);
        assert_eq!(ms("yyyy-MM-dd HH:mm:ss", "yesterday"), None);
        assert_eq!(ms("yyyy-MM-dd", "2024-02-30"), None);
        let array = StringArray::from(vec![Some("2024-03-01"), None, Some("x")]);
        let parsed = TimestampFormat::new("yyyy-MM-dd")
            .unwrap()
            .parse_array(&array);
        assert_eq!(
            parsed.iter().collect::<Vec<_>>(),
            vec![Some(1_709_251_200_000), None, None]
        );
    }

    #[test]
    fn unsupported_patterns_say_why() {
        let error = TimestampFormat::new("yyyy-MM-dd GGG").unwrap_err();
        assert!(error.reason.contains("\"GGG\" is not supported"), "{error}");
        assert!(
            TimestampFormat::new("HH:mm")
                .unwrap_err()
                .reason
                .contains("no date")
        );
        assert!(
            TimestampFormat::new("yyyy-MM-dd 'T")
                .unwrap_err()
                .reason
                .contains("quote")
        );
        assert!(
            TimestampFormat::new("yyyy-MM-dd ss.SS")
                .unwrap_err()
                .reason
                .contains("SS")
        );
        // Literal percent signs and quotes.
        assert_eq!(
            ms("yyyy-MM-dd'%'''", "2024-03-01%'"),
            Some(1_709_251_200_000)
        );
    }
}
