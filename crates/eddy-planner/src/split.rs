//! ksqlDB's string-splitting functions, `SPLIT(string, delimiter)` and
//! `REGEXP_SPLIT_TO_ARRAY(string, regexp)`, as vectorized DataFusion functions returning
//! `ARRAY<STRING>`.
//!
//! Both follow ksqlDB: a string without the delimiter gives itself as the only element; a
//! delimiter at the start or end, or two in a row, give empty elements (so
//! `REGEXP_SPLIT_TO_ARRAY('a b.', '\W+')` is `['a', 'b', '']`); an empty delimiter splits into
//! characters; a NULL argument gives NULL. The delimiter of a batch is usually one literal: it is
//! read (and a pattern compiled) once per batch, not per row.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, ListBuilder, StringBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// How a [`SplitFunction`] finds delimiters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Delimiter {
    /// `SPLIT`: the delimiter is a literal string.
    Literal,
    /// `REGEXP_SPLIT_TO_ARRAY`: the delimiter is a regular expression (Rust `regex` syntax).
    Regex,
}

/// `SPLIT` or `REGEXP_SPLIT_TO_ARRAY`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SplitFunction {
    name: &'static str,
    delimiter: Delimiter,
    signature: Signature,
}

/// `SPLIT(string, delimiter)`.
pub(crate) fn split() -> ScalarUDF {
    ScalarUDF::new_from_impl(SplitFunction {
        name: "split",
        delimiter: Delimiter::Literal,
        signature: Signature::string(2, Volatility::Immutable),
    })
}

/// `REGEXP_SPLIT_TO_ARRAY(string, regexp)`.
pub(crate) fn regexp_split_to_array() -> ScalarUDF {
    ScalarUDF::new_from_impl(SplitFunction {
        name: "regexp_split_to_array",
        delimiter: Delimiter::Regex,
        signature: Signature::string(2, Volatility::Immutable),
    })
}

fn list_of_strings() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

/// The delimiter of one row, compiled: literal strings are used as they are.
enum Compiled {
    Literal(String),
    Regex(regex::Regex),
}

impl SplitFunction {
    fn compile(&self, delimiter: &str) -> Result<Compiled> {
        match self.delimiter {
            Delimiter::Literal => Ok(Compiled::Literal(delimiter.to_owned())),
            Delimiter::Regex => regex::Regex::new(delimiter)
                .map(Compiled::Regex)
                .map_err(|e| {
                    // The regex crate's message spans lines (pattern, caret, reason): keep the reason.
                    let reason = e.to_string();
                    let reason = reason.lines().last().unwrap_or_default().trim();
                    let reason = reason.strip_prefix("error: ").unwrap_or(reason).to_owned();
                    DataFusionError::Execution(format!(
                        "invalid regular expression {delimiter:?} in {}: {reason}",
                        self.name.to_uppercase()
                    ))
                }),
        }
    }
}

/// Appends the pieces of `text` split at `delimiter` to the list being built.
fn push_pieces(builder: &mut ListBuilder<StringBuilder>, text: &str, delimiter: &Compiled) {
    let values = builder.values();
    match delimiter {
        Compiled::Literal(d) if d.is_empty() => {
            let mut buffer = [0u8; 4];
            text.chars()
                .for_each(|c| values.append_value(c.encode_utf8(&mut buffer)));
        }
        Compiled::Regex(r) if r.as_str().is_empty() => {
            let mut buffer = [0u8; 4];
            text.chars()
                .for_each(|c| values.append_value(c.encode_utf8(&mut buffer)));
        }
        Compiled::Literal(d) => text.split(d.as_str()).for_each(|p| values.append_value(p)),
        Compiled::Regex(r) => r.split(text).for_each(|p| values.append_value(p)),
    }
    builder.append(true);
}

fn as_utf8_array(value: &ColumnarValue, rows: usize) -> Result<ArrayRef> {
    let array = value.to_array(rows)?;
    Ok(match array.data_type() {
        DataType::Utf8 => array,
        _ => cast(&array, &DataType::Utf8)?,
    })
}

impl ScalarUDFImpl for SplitFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(list_of_strings())
    }

    /// Rejects an invalid constant pattern when the query is planned, not on every record.
    fn simplify(&self, args: Vec<Expr>, _info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        if let Some(Expr::Literal(
            ScalarValue::Utf8(Some(pattern))
            | ScalarValue::LargeUtf8(Some(pattern))
            | ScalarValue::Utf8View(Some(pattern)),
            _,
        )) = args.get(1)
        {
            self.compile(pattern)?;
        }
        Ok(ExprSimplifyResult::Original(args))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [text, delimiter] = args.args.as_slice() else {
            return Err(DataFusionError::Plan(format!(
                "{} takes a string and a delimiter",
                self.name.to_uppercase()
            )));
        };
        let rows = args.number_rows;
        let texts = as_utf8_array(text, rows)?;
        let texts = texts.as_string::<i32>();
        let mut builder = ListBuilder::with_capacity(
            StringBuilder::with_capacity(rows * 4, texts.value_data().len()),
            rows,
        );
        match delimiter {
            // One delimiter for the whole batch: compiled once.
            ColumnarValue::Scalar(scalar) => {
                let delimiter = match scalar {
                    ScalarValue::Utf8(d) | ScalarValue::LargeUtf8(d) | ScalarValue::Utf8View(d) => {
                        d.as_deref()
                    }
                    other if other.is_null() => None,
                    other => {
                        return Err(DataFusionError::Plan(format!(
                            "{}: the delimiter must be a string, not {}",
                            self.name.to_uppercase(),
                            other.data_type()
                        )));
                    }
                };
                let compiled = delimiter.map(|d| self.compile(d)).transpose()?;
                for row in 0..texts.len() {
                    match &compiled {
                        Some(compiled) if texts.is_valid(row) => {
                            push_pieces(&mut builder, texts.value(row), compiled)
                        }
                        _ => builder.append_null(),
                    }
                }
            }
            // A delimiter per row: recompiled only when it changes.
            ColumnarValue::Array(_) => {
                let delimiters = as_utf8_array(delimiter, rows)?;
                let delimiters = delimiters.as_string::<i32>();
                let mut last: Option<(String, Compiled)> = None;
                for row in 0..texts.len() {
                    if texts.is_null(row) || delimiters.is_null(row) {
                        builder.append_null();
                        continue;
                    }
                    let d = delimiters.value(row);
                    if last.as_ref().is_none_or(|(previous, _)| previous != d) {
                        last = Some((d.to_owned(), self.compile(d)?));
                    }
                    if let Some((_, compiled)) = &last {
                        push_pieces(&mut builder, texts.value(row), compiled);
                    }
                }
            }
        }
        let array: ArrayRef = Arc::new(builder.finish());
        Ok(match (text, delimiter) {
            (ColumnarValue::Scalar(_), ColumnarValue::Scalar(_)) => {
                ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?)
            }
            _ => ColumnarValue::Array(array),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;
    use datafusion::config::ConfigOptions;

    fn run(
        function: ScalarUDF,
        texts: Vec<Option<&str>>,
        delimiter: ColumnarValue,
    ) -> Vec<Option<Vec<String>>> {
        let rows = texts.len();
        let args = ScalarFunctionArgs {
            args: vec![
                ColumnarValue::Array(Arc::new(StringArray::from(texts))),
                delimiter,
            ],
            arg_fields: vec![
                Arc::new(Field::new("t", DataType::Utf8, true)),
                Arc::new(Field::new("d", DataType::Utf8, true)),
            ],
            number_rows: rows,
            return_field: Arc::new(Field::new("r", list_of_strings(), true)),
            config_options: Arc::new(ConfigOptions::default()),
        };
        let result = function
            .invoke_with_args(args)
            .unwrap()
            .to_array(rows)
            .unwrap();
        let lists = result.as_list::<i32>();
        (0..rows)
            .map(|row| {
                lists.is_valid(row).then(|| {
                    let items = lists.value(row);
                    let items = items.as_string::<i32>();
                    items
                        .iter()
                        .map(|s| s.unwrap_or_default().to_owned())
                        .collect()
                })
            })
            .collect()
    }

    fn literal(d: &str) -> ColumnarValue {
        ColumnarValue::Scalar(ScalarValue::Utf8(Some(d.to_owned())))
    }

    fn strings(items: &[&str]) -> Option<Vec<String>> {
        Some(items.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn split_keeps_empty_pieces_and_splits_chars_on_empty_delimiter() {
        let got = run(
            split(),
            vec![Some("a,b,,c,"), Some("abc"), None, Some("")],
            literal(","),
        );
        assert_eq!(
            got,
            vec![
                strings(&["a", "b", "", "c", ""]),
                strings(&["abc"]),
                None,
                strings(&[""]),
            ]
        );
        assert_eq!(
            run(split(), vec![Some("héj")], literal("")),
            vec![strings(&["h", "é", "j"])]
        );
        let null_delimiter = ColumnarValue::Scalar(ScalarValue::Utf8(None));
        assert_eq!(run(split(), vec![Some("a,b")], null_delimiter), vec![None]);
    }

    #[test]
    fn regexp_split_splits_on_matches() {
        let got = run(
            regexp_split_to_array(),
            vec![Some("The cat, the hat."), Some("word")],
            literal(r"\W+"),
        );
        assert_eq!(
            got,
            vec![
                strings(&["The", "cat", "the", "hat", ""]),
                strings(&["word"])
            ]
        );
    }

    #[test]
    fn per_row_delimiters_and_bad_patterns() {
        let delimiters = ColumnarValue::Array(Arc::new(StringArray::from(vec![
            Some(","),
            Some(";"),
            None,
        ])));
        let got = run(
            split(),
            vec![Some("a,b"), Some("c;d"), Some("e")],
            delimiters,
        );
        assert_eq!(got, vec![strings(&["a", "b"]), strings(&["c", "d"]), None]);

        let rows = 1;
        let args = ScalarFunctionArgs {
            args: vec![
                ColumnarValue::Array(Arc::new(StringArray::from(vec![Some("x")]))),
                literal("(unclosed"),
            ],
            arg_fields: vec![],
            number_rows: rows,
            return_field: Arc::new(Field::new("r", list_of_strings(), true)),
            config_options: Arc::new(ConfigOptions::default()),
        };
        let error = regexp_split_to_array().invoke_with_args(args).unwrap_err();
        assert!(
            error.to_string().contains("invalid regular expression"),
            "{error}"
        );
    }
}
