//! Tab completion of the shell: keywords, shell commands, and the names of the streams, tables and
//! columns the engine knows.
//!
//! rustyline calls the completer on the thread that reads the terminal, so it cannot ask the
//! engine (which lives on the async runtime). The shell refreshes a [`CompletionNames`] snapshot
//! after every statement instead, and the completer reads it under a lock held only to copy the
//! candidates out.

use std::borrow::Cow;
use std::sync::{Arc, RwLock};

use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Helper};

/// Most candidates a completion lists (a prefix of one letter over a wide catalog).
pub const MAX_COMPLETION_CANDIDATES: usize = 200;

/// Words of Eddy SQL and of the shell, in upper case, offered anywhere a word starts.
pub const KEYWORDS: &[&str] = &[
    "ADVANCE",
    "ALL",
    "AND",
    "ARRAY",
    "AS",
    "ASC",
    "BEGINNING",
    "BETWEEN",
    "BIGINT",
    "BOOLEAN",
    "BY",
    "BYTES",
    "CASE",
    "CAST",
    "CHANGES",
    "CREATE",
    "DATE",
    "DAY",
    "DAYS",
    "DECIMAL",
    "DELETE_TOPIC",
    "DESC",
    "DESCRIBE",
    "DISTINCT",
    "DOUBLE",
    "DROP",
    "ELSE",
    "EMIT",
    "END",
    "EXISTS",
    "EXPLAIN",
    "EXTENDED",
    "FALSE",
    "FINAL",
    "FROM",
    "FULL",
    "GRACE",
    "GROUP",
    "HAVING",
    "HELP",
    "HOPPING",
    "HOUR",
    "HOURS",
    "IF",
    "IN",
    "INNER",
    "INSERT",
    "INT",
    "INTEGER",
    "INTERVAL",
    "INTO",
    "IS",
    "JOIN",
    "KAFKA_TOPIC",
    "KEY",
    "KEY_FORMAT",
    "LEFT",
    "LIKE",
    "LIMIT",
    "LIST",
    "MAP",
    "MILLISECONDS",
    "MINUTE",
    "MINUTES",
    "NOT",
    "NULL",
    "ON",
    "OR",
    "OUTER",
    "PARTITION",
    "PARTITIONS",
    "PERIOD",
    "PRIMARY",
    "PRINT",
    "PRODUCE",
    "PROPERTIES",
    "QUERIES",
    "REPLACE",
    "RETENTION",
    "RIGHT",
    "RUN",
    "SCRIPT",
    "SECOND",
    "SECONDS",
    "SELECT",
    "SESSION",
    "SET",
    "SHOW",
    "SIZE",
    "SOURCE",
    "SPOOL",
    "STREAM",
    "STREAMS",
    "STRING",
    "STRUCT",
    "TABLE",
    "TABLES",
    "TERMINATE",
    "THEN",
    "TIMESTAMP",
    "TIMESTAMP_FORMAT",
    "TO",
    "TOPICS",
    "TRUE",
    "TUMBLING",
    "UNSET",
    "VALUE_FORMAT",
    "VALUES",
    "VARCHAR",
    "WHEN",
    "WHERE",
    "WINDOW",
    "WINDOWEND",
    "WINDOWSTART",
    "WITH",
    "WITHIN",
    "ROWTIME",
    "ROWPARTITION",
    "ROWOFFSET",
    // Functions.
    "ABS",
    "AVG",
    "COALESCE",
    "CONCAT",
    "COUNT",
    "COUNT_DISTINCT",
    "EARLIEST_BY_OFFSET",
    "EXPLODE",
    "IFNULL",
    "LATEST_BY_OFFSET",
    "LCASE",
    "LEN",
    "MAX",
    "MIN",
    "REGEXP_SPLIT_TO_ARRAY",
    "SPLIT",
    "SUBSTRING",
    "SUM",
    "TOPK",
    "TRIM",
    "UCASE",
];

/// Words after which only a stream or table name makes sense.
const SOURCE_CONTEXT: &[&str] = &["FROM", "JOIN", "DESCRIBE", "INTO", "TABLE", "STREAM"];

/// What the engine knows, as completion sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompletionNames {
    /// Stream and table names, as the catalog spells them.
    pub sources: Vec<String>,
    /// Column names of every source, as the catalog spells them, without duplicates.
    pub columns: Vec<String>,
}

/// The snapshot the shell refreshes and the completer reads.
pub type SharedNames = Arc<RwLock<CompletionNames>>;

/// The shell's rustyline helper: completion only (no hints, highlighting or validation: a
/// statement's end is decided by the shell, see [`crate::repl::InputBuffer`]).
pub struct ShellHelper {
    names: SharedNames,
    files: FilenameCompleter,
}

impl ShellHelper {
    pub fn new(names: SharedNames) -> Self {
        Self {
            names,
            files: FilenameCompleter::new(),
        }
    }
}

impl Helper for ShellHelper {}
impl Hinter for ShellHelper {
    type Hint = String;
}
impl Validator for ShellHelper {}
impl Highlighter for ShellHelper {
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(
        &'s self,
        prompt: &'p str,
        _default: bool,
    ) -> Cow<'b, str> {
        Cow::Borrowed(prompt)
    }
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        if in_string(before) {
            // File names inside the quotes of RUN SCRIPT '...' and SPOOL '...'.
            let upper = before.trim_start().to_ascii_uppercase();
            if upper.starts_with("RUN SCRIPT") || upper.starts_with("SPOOL") {
                return self.files.complete(line, pos, ctx);
            }
            return Ok((pos, Vec::new()));
        }
        let names = match self.names.read() {
            Ok(names) => names.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        Ok(complete_word(before, &names))
    }
}

/// True when `text` ends inside a single-quoted string.
fn in_string(text: &str) -> bool {
    text.chars().filter(|&c| c == '\'').count() % 2 == 1
}

/// The start of the word that ends `before` and the candidates for it.
pub fn complete_word(before: &str, names: &CompletionNames) -> (usize, Vec<Pair>) {
    let start = before
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_alphanumeric() || *c == '_')
        .last()
        .map_or(before.len(), |(i, _)| i);
    let prefix = &before[start..];
    let previous = before[..start]
        .trim_end()
        .rsplit(|c: char| c.is_whitespace() || c == '(' || c == ',')
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    let source_context = SOURCE_CONTEXT.contains(&previous.as_str());
    // An empty word completes only where a source name goes (`FROM <Tab>` lists them).
    if prefix.is_empty() && !(source_context && before[..start].ends_with(char::is_whitespace)) {
        return (start, Vec::new());
    }
    let after_dot = before[..start].ends_with('.');
    let lower = !prefix.chars().any(|c| c.is_uppercase());
    let upper_prefix = prefix.to_uppercase();
    let mut candidates: Vec<Pair> = Vec::new();
    let offer = |word: &str, candidates: &mut Vec<Pair>| {
        if !word.to_uppercase().starts_with(&upper_prefix) {
            return;
        }
        let replacement = spelled(word, lower);
        if candidates.iter().all(|c| c.replacement != replacement) {
            candidates.push(Pair {
                display: replacement.clone(),
                replacement,
            });
        }
    };
    if source_context && !after_dot {
        for source in &names.sources {
            offer(source, &mut candidates);
        }
    } else {
        if !after_dot {
            for source in &names.sources {
                offer(source, &mut candidates);
            }
        }
        for column in &names.columns {
            offer(column, &mut candidates);
        }
        if !after_dot {
            for keyword in KEYWORDS {
                offer(keyword, &mut candidates);
            }
        }
    }
    candidates.sort_by(|a, b| a.replacement.cmp(&b.replacement));
    candidates.truncate(MAX_COMPLETION_CANDIDATES);
    (start, candidates)
}

/// How a name is typed: unquoted names are case-insensitive, so an upper-case name follows the
/// case of what was typed; any other name needs its double quotes.
fn spelled(name: &str, lower: bool) -> String {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        && name.chars().next().is_some_and(|c| !c.is_ascii_digit());
    if !plain {
        format!("\"{}\"", name.replace('"', "\"\""))
    } else if lower {
        name.to_ascii_lowercase()
    } else {
        name.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> CompletionNames {
        CompletionNames {
            sources: vec!["ORDERS".into(), "ORDER_TOTALS".into(), "MixedCase".into()],
            columns: vec!["ORDER_ID".into(), "QTY".into()],
        }
    }

    fn words(before: &str) -> Vec<String> {
        complete_word(before, &names())
            .1
            .into_iter()
            .map(|p| p.replacement)
            .collect()
    }

    #[test]
    fn keywords_follow_the_case_typed() {
        assert_eq!(words("SHOW STR"), ["STREAM", "STREAMS", "STRING", "STRUCT"]);
        assert_eq!(words("show str"), ["stream", "streams", "string", "struct"]);
        assert_eq!(words("SHOW PROPER"), ["PROPERTIES"]);
    }

    #[test]
    fn after_from_only_sources_are_offered() {
        assert_eq!(words("SELECT * FROM ord"), ["order_totals", "orders"]);
        assert_eq!(words("SELECT * FROM Mi"), ["\"MixedCase\""]);
    }

    #[test]
    fn columns_sources_and_keywords_elsewhere_and_columns_after_a_dot() {
        assert_eq!(words("SELECT ORD"), ["ORDERS", "ORDER_ID", "ORDER_TOTALS"]);
        assert_eq!(words("SELECT o.q"), ["qty"]);
    }

    #[test]
    fn the_start_is_where_the_word_begins() {
        let (start, _) = complete_word("SELECT qt", &names());
        assert_eq!(start, 7);
        let (start, candidates) = complete_word("SELECT ", &names());
        assert_eq!((start, candidates.len()), (7, 0));
        let (start, candidates) = complete_word("SELECT * FROM ", &names());
        assert_eq!((start, candidates.len()), (14, 3));
    }

    #[test]
    fn nothing_is_completed_inside_a_string() {
        assert!(in_string("INSERT INTO t VALUES ('or"));
        assert!(!in_string("INSERT INTO t VALUES ('or', "));
    }
}
