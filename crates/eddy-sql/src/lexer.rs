//! Tokens: splitting a script into statements and applying ksqlDB's identifier rules.

use sqlparser::dialect::GenericDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer, Word};

use crate::error::ParseError;

/// The tokens of one statement, without whitespace and comments, and the statement's text.
pub(crate) struct StatementTokens {
    pub(crate) tokens: Vec<TokenWithSpan>,
    pub(crate) sql: String,
    pub(crate) start: Location,
    /// Where the statement ends (its `;`, or the end of the input).
    pub(crate) end: Location,
}

pub(crate) fn tokenize(sql: &str) -> Result<Vec<TokenWithSpan>, ParseError> {
    Tokenizer::new(&GenericDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| ParseError::at(e.location, lower_first(&e.message)))
}

fn lower_first(message: &str) -> String {
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Splits a script into statements at top-level `;`.
pub(crate) fn split_statements(sql: &str) -> Result<Vec<StatementTokens>, ParseError> {
    let tokens = tokenize(sql)?;
    let offsets = LineOffsets::new(sql);
    let mut statements = Vec::new();
    let mut current: Vec<TokenWithSpan> = Vec::new();
    for token in tokens {
        match &token.token {
            Token::Whitespace(_) => {}
            Token::SemiColon => {
                if !current.is_empty() {
                    statements.push(finish(
                        sql,
                        &offsets,
                        std::mem::take(&mut current),
                        token.span.start,
                    ));
                }
            }
            _ => current.push(token),
        }
    }
    if !current.is_empty() {
        let end = offsets.end_location(sql);
        statements.push(finish(sql, &offsets, current, end));
    }
    Ok(statements)
}

fn finish(
    sql: &str,
    offsets: &LineOffsets,
    tokens: Vec<TokenWithSpan>,
    end: Location,
) -> StatementTokens {
    let start = tokens.first().map(|t| t.span.start).unwrap_or(end);
    let from = offsets.byte_offset(sql, start);
    let to = offsets.byte_offset(sql, end).max(from);
    StatementTokens {
        sql: sql[from..to].trim().to_owned(),
        tokens,
        start,
        end,
    }
}

/// True when `text` holds at least one statement and ends with a `;` outside strings and comments:
/// the REPL reads more lines until then.
pub fn is_complete(text: &str) -> bool {
    let Ok(tokens) = tokenize(text) else {
        return false;
    };
    tokens
        .iter()
        .rev()
        .find(|t| !matches!(t.token, Token::Whitespace(_)))
        .is_some_and(|t| t.token == Token::SemiColon)
}

/// Byte offset of the start of each line, to turn token locations into text slices.
struct LineOffsets {
    starts: Vec<usize>,
}

impl LineOffsets {
    fn new(sql: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
        Self { starts }
    }

    fn byte_offset(&self, sql: &str, location: Location) -> usize {
        let Some(&line_start) = usize::try_from(location.line)
            .ok()
            .and_then(|l| self.starts.get(l.saturating_sub(1)))
        else {
            return sql.len();
        };
        let column = usize::try_from(location.column)
            .unwrap_or(usize::MAX)
            .saturating_sub(1);
        sql[line_start..]
            .char_indices()
            .nth(column)
            .map(|(i, _)| line_start + i)
            .unwrap_or(sql.len())
    }

    fn end_location(&self, sql: &str) -> Location {
        let line = self.starts.len();
        let last_start = self.starts[line - 1];
        let column = sql[last_start..].chars().count() + 1;
        Location {
            line: line as u64,
            column: column as u64,
        }
    }
}

/// Applies ksqlDB's identifier rules to the tokens handed to sqlparser: an unquoted identifier is
/// upper-cased and double-quoted, a back-quoted one is double-quoted as written, and the name of a
/// function call (a word followed by `(`) is lower-cased, the spelling of DataFusion's registry.
/// Keywords are left alone for sqlparser; identifiers it still returns unquoted are normalized on
/// the AST afterwards.
pub(crate) fn normalize_tokens(tokens: &[TokenWithSpan]) -> Vec<TokenWithSpan> {
    let mut normalized = Vec::with_capacity(tokens.len());
    for (i, token) in tokens.iter().enumerate() {
        let next_is_paren = tokens.get(i + 1).is_some_and(|t| t.token == Token::LParen);
        let previous_is_period = i > 0 && tokens[i - 1].token == Token::Period;
        let token = match &token.token {
            Token::Word(word) => {
                let word = match word.quote_style {
                    Some(_) => Word {
                        value: word.value.clone(),
                        quote_style: Some('"'),
                        keyword: Keyword::NoKeyword,
                    },
                    None if next_is_paren && !previous_is_period => Word {
                        value: word.value.to_lowercase(),
                        quote_style: None,
                        keyword: word.keyword,
                    },
                    None if word.keyword == Keyword::NoKeyword => Word {
                        value: ksql_identifier(&word.value, false),
                        quote_style: Some('"'),
                        keyword: Keyword::NoKeyword,
                    },
                    None => word.clone(),
                };
                TokenWithSpan {
                    token: Token::Word(word),
                    span: token.span,
                }
            }
            _ => token.clone(),
        };
        normalized.push(token);
    }
    normalized
}

/// The normalized spelling of an identifier token: upper-cased unless quoted.
pub(crate) fn identifier(word: &Word) -> String {
    ksql_identifier(&word.value, word.quote_style.is_some())
}

/// ksqlDB's identifier rule, the one place it is written: upper-cased unless quoted.
pub(crate) fn ksql_identifier(value: &str, quoted: bool) -> String {
    if quoted {
        value.to_owned()
    } else {
        value.to_uppercase()
    }
}
