//! The catalog and the commands that change it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::source::{Source, SourceKind};

/// How a persistent query writes its sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryKind {
    /// `CREATE STREAM ... AS SELECT`
    CreateStreamAsSelect,
    /// `CREATE TABLE ... AS SELECT`
    CreateTableAsSelect,
    /// `INSERT INTO ... SELECT`
    InsertInto,
    /// The query that keeps the rows of a `CREATE SOURCE TABLE` for pull queries: it reads the
    /// table's topic into the table's store and writes no topic. It lives and dies with its table
    /// (`DROP TABLE` stops it; `TERMINATE` refuses it).
    CreateSourceTable,
}

impl QueryKind {
    /// Prefix of generated query ids, as in ksqlDB.
    pub fn id_prefix(self) -> &'static str {
        match self {
            QueryKind::CreateStreamAsSelect => "CSAS",
            QueryKind::CreateTableAsSelect => "CTAS",
            QueryKind::InsertInto => "INSERTQUERY",
            QueryKind::CreateSourceTable => "CST",
        }
    }
}

/// A persistent query as recorded in the command topic. The query is planned again from `sql`
/// whenever a server starts it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryInfo {
    pub id: String,
    pub kind: QueryKind,
    /// The whole statement that created the query.
    pub sql: String,
    /// The stream or table the query writes.
    pub sink: String,
    /// The streams and tables the query reads.
    pub sources: Vec<String>,
    /// Session properties in force when the query was created (e.g. `auto.offset.reset`).
    pub properties: BTreeMap<String, String>,
    /// The query aggregates by a key other than its input's, or joins streams not keyed by
    /// their join columns, and its inputs had one partition when it was created: its one
    /// partition task re-keys the records itself instead of through a repartition topic.
    /// Decided once and kept, because the query's state counts the offsets of the topics it
    /// reads. Absent (false) in queries recorded before the choice
    /// existed, which keep their repartition topic.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rekeys_in_task: bool,
    /// The join steps of the query, by number (the n of `<id>-JOIN-<n>`, see `eddy-planner`'s
    /// chains), that re-key their one-partition streams in their task instead of through
    /// repartition topics, decided at creation like `rekeys_in_task`. Absent (empty) in queries
    /// recorded before steps could, whose steps keep their repartition topics.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps_rekeying_in_task: Vec<usize>,
    /// The query aggregates the output of its last join step, a stream-stream join of one
    /// partition, in that join's task: the joined rows go to the aggregation in memory, not
    /// through the step's output topic. Decided at creation like `rekeys_in_task`, because the
    /// aggregation's state counts the offsets of the join's inputs instead of that topic's.
    /// Absent (false) in queries recorded before, which keep their step's output topic.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub aggregates_in_join_task: bool,
}

impl QueryInfo {
    /// The streams and tables whose records the query reads: its `sources`, and for the query of
    /// a source table the table itself (which `sources` leaves out, or the query would keep its
    /// own table from being dropped).
    pub fn inputs(&self) -> Vec<String> {
        match self.kind {
            QueryKind::CreateSourceTable => vec![self.sink.clone()],
            _ => self.sources.clone(),
        }
    }
}

/// One change to the catalog, as stored (JSON) in the command topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
// Commands are rare (DDL) and stored as JSON: a boxed `Source` would only cost clarity.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Creates (or, with `or_replace`, replaces) a stream or table.
    CreateSource { source: Source, or_replace: bool },
    /// Removes a stream or table from the catalog (its topic is deleted separately, if asked).
    DropSource { name: String },
    /// Registers and starts a persistent query.
    StartQuery { query: QueryInfo },
    /// Stops a persistent query for good.
    TerminateQuery { id: String },
}

/// Why a command cannot be applied. Messages are user-facing (Postgres style).
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CatalogError {
    #[error("{kind} \"{name}\" already exists", kind = .existing.noun())]
    AlreadyExists { name: String, existing: SourceKind },
    #[error("stream or table \"{name}\" does not exist{hint}", hint = hint_suffix(.suggestion))]
    UnknownSource {
        name: String,
        suggestion: Option<String>,
    },
    #[error("query \"{id}\" does not exist{hint}", hint = hint_suffix(.suggestion))]
    UnknownQuery {
        id: String,
        suggestion: Option<String>,
    },
    #[error("query \"{id}\" already exists")]
    QueryExists { id: String },
    #[error(
        "cannot drop {kind} \"{name}\": it is used by {queries}\nhint: terminate the quer{plural} first with TERMINATE <query id>;",
        kind = .kind.noun(),
        queries = quote_list(.queries),
        plural = if .queries.len() == 1 { "y" } else { "ies" }
    )]
    SourceInUse {
        name: String,
        kind: SourceKind,
        queries: Vec<String>,
    },
}

fn hint_suffix(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!("; did you mean \"{s}\"?"),
        None => String::new(),
    }
}

fn quote_list(items: &[String]) -> String {
    items
        .iter()
        .map(|q| format!("query \"{q}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Streams, tables and persistent queries, keyed by their normalized names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    sources: BTreeMap<String, Source>,
    queries: BTreeMap<String, QueryInfo>,
    /// Number of the last query id handed out; ids stay unique across restarts because commands
    /// are replayed in order.
    last_query_number: u64,
}

impl Catalog {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn source(&self, name: &str) -> Option<&Source> {
        self.sources.get(name)
    }

    /// Puts `source` in place of the source of the same name, without a command: for planning a
    /// query against a private view of the catalog (a join reading its repartitioned stream).
    pub fn replace_source(&mut self, source: Source) {
        self.sources.insert(source.name.clone(), source);
    }

    /// Looks a source up, with a "did you mean" suggestion when it does not exist.
    pub fn require_source(&self, name: &str) -> Result<&Source, CatalogError> {
        self.sources
            .get(name)
            .ok_or_else(|| CatalogError::UnknownSource {
                name: name.to_owned(),
                suggestion: closest(name, self.sources.keys()),
            })
    }

    pub fn sources(&self) -> impl Iterator<Item = &Source> {
        self.sources.values()
    }

    pub fn query(&self, id: &str) -> Option<&QueryInfo> {
        self.queries.get(id)
    }

    pub fn queries(&self) -> impl Iterator<Item = &QueryInfo> {
        self.queries.values()
    }

    /// Queries that read `name`.
    pub fn readers_of(&self, name: &str) -> Vec<String> {
        self.queries
            .values()
            .filter(|q| q.sources.iter().any(|s| s == name))
            .map(|q| q.id.clone())
            .collect()
    }

    /// Queries that write `name`.
    pub fn writers_of(&self, name: &str) -> Vec<String> {
        self.queries
            .values()
            .filter(|q| q.sink == name)
            .map(|q| q.id.clone())
            .collect()
    }

    /// The id the next persistent query of `kind` writing `sink` would get.
    pub fn next_query_id(&self, kind: QueryKind, sink: &str) -> String {
        let number = self.last_query_number + 1;
        match kind {
            QueryKind::InsertInto => format!("{}_{number}", kind.id_prefix()),
            _ => format!("{}_{}_{number}", kind.id_prefix(), sink),
        }
    }

    /// Checks that `command` can be applied, without applying it.
    pub fn validate(&self, command: &Command) -> Result<(), CatalogError> {
        match command {
            Command::CreateSource { source, or_replace } => {
                if let Some(existing) = self.sources.get(&source.name)
                    && (!*or_replace || existing.kind != source.kind)
                {
                    return Err(CatalogError::AlreadyExists {
                        name: source.name.clone(),
                        existing: existing.kind,
                    });
                }
                Ok(())
            }
            Command::DropSource { name } => {
                let source = self.require_source(name)?;
                let mut users = self.readers_of(name);
                users.extend(self.writers_of(name));
                let users: BTreeSet<String> = users.into_iter().collect();
                if users.is_empty() {
                    Ok(())
                } else {
                    Err(CatalogError::SourceInUse {
                        name: name.clone(),
                        kind: source.kind,
                        queries: users.into_iter().collect(),
                    })
                }
            }
            Command::StartQuery { query } => {
                if self.queries.contains_key(&query.id) {
                    return Err(CatalogError::QueryExists {
                        id: query.id.clone(),
                    });
                }
                for name in query.sources.iter().chain(std::iter::once(&query.sink)) {
                    self.require_source(name)?;
                }
                Ok(())
            }
            Command::TerminateQuery { id } => {
                if self.queries.contains_key(id) {
                    Ok(())
                } else {
                    Err(CatalogError::UnknownQuery {
                        id: id.clone(),
                        suggestion: closest(id, self.queries.keys()),
                    })
                }
            }
        }
    }

    /// Applies `command` after validating it. Applying the same commands in the same order always
    /// gives the same catalog.
    pub fn apply(&mut self, command: Command) -> Result<(), CatalogError> {
        self.validate(&command)?;
        match command {
            Command::CreateSource { source, .. } => {
                self.sources.insert(source.name.clone(), source);
            }
            Command::DropSource { name } => {
                self.sources.remove(&name);
            }
            Command::StartQuery { query } => {
                if let Some(number) = query
                    .id
                    .rsplit('_')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    self.last_query_number = self.last_query_number.max(number);
                }
                self.queries.insert(query.id.clone(), query);
            }
            Command::TerminateQuery { id } => {
                self.queries.remove(&id);
            }
        }
        Ok(())
    }
}

/// The candidate closest to `name` by edit distance, if it is close enough to be a likely typo.
pub(crate) fn closest<'a>(
    name: &str,
    candidates: impl Iterator<Item = &'a String>,
) -> Option<String> {
    let limit = (name.len() / 3).max(1);
    candidates
        .map(|c| (edit_distance(&name.to_uppercase(), &c.to_uppercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.clone())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Column, ColumnRole};
    use eddy_common::types::SqlType;

    fn stream(name: &str) -> Source {
        let column = |name: &str, sql_type, role| Column {
            name: name.into(),
            sql_type,
            role,
        };
        let columns = vec![
            column("ID", SqlType::String, ColumnRole::Key),
            column("QTY", SqlType::Int, ColumnRole::Value),
        ];
        Source::json(name, SourceKind::Stream, columns, 1)
    }

    fn query(id: &str, source: &str, sink: &str) -> QueryInfo {
        QueryInfo {
            id: id.into(),
            kind: QueryKind::CreateStreamAsSelect,
            sql: String::new(),
            sink: sink.into(),
            sources: vec![source.into()],
            properties: BTreeMap::new(),
            rekeys_in_task: false,
            steps_rekeying_in_task: Vec::new(),
            aggregates_in_join_task: false,
        }
    }

    #[test]
    fn duplicate_source_is_rejected_unless_replaced() {
        let mut catalog = Catalog::new();
        catalog
            .apply(Command::CreateSource {
                source: stream("ORDERS"),
                or_replace: false,
            })
            .unwrap();
        let err = catalog
            .apply(Command::CreateSource {
                source: stream("ORDERS"),
                or_replace: false,
            })
            .unwrap_err();
        assert_eq!(err.to_string(), "stream \"ORDERS\" already exists");
        catalog
            .apply(Command::CreateSource {
                source: stream("ORDERS"),
                or_replace: true,
            })
            .unwrap();
    }

    #[test]
    fn unknown_source_suggests_a_close_name() {
        let mut catalog = Catalog::new();
        catalog
            .apply(Command::CreateSource {
                source: stream("ORDERS"),
                or_replace: false,
            })
            .unwrap();
        let err = catalog.require_source("ORDRES").unwrap_err();
        assert_eq!(
            err.to_string(),
            "stream or table \"ORDRES\" does not exist; did you mean \"ORDERS\"?"
        );
    }

    #[test]
    fn drop_of_a_source_in_use_names_the_queries() {
        let mut catalog = Catalog::new();
        catalog
            .apply(Command::CreateSource {
                source: stream("A"),
                or_replace: false,
            })
            .unwrap();
        catalog
            .apply(Command::CreateSource {
                source: stream("B"),
                or_replace: false,
            })
            .unwrap();
        catalog
            .apply(Command::StartQuery {
                query: query("CSAS_B_1", "A", "B"),
            })
            .unwrap();
        let err = catalog
            .apply(Command::DropSource { name: "A".into() })
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot drop stream \"A\": it is used by query \"CSAS_B_1\""),
            "{err}"
        );
        catalog
            .apply(Command::TerminateQuery {
                id: "CSAS_B_1".into(),
            })
            .unwrap();
        catalog
            .apply(Command::DropSource { name: "A".into() })
            .unwrap();
    }

    #[test]
    fn query_numbers_continue_after_replay() {
        let mut catalog = Catalog::new();
        catalog
            .apply(Command::CreateSource {
                source: stream("A"),
                or_replace: false,
            })
            .unwrap();
        catalog
            .apply(Command::CreateSource {
                source: stream("B"),
                or_replace: false,
            })
            .unwrap();
        catalog
            .apply(Command::StartQuery {
                query: query("CSAS_B_7", "A", "B"),
            })
            .unwrap();
        assert_eq!(
            catalog.next_query_id(QueryKind::CreateStreamAsSelect, "C"),
            "CSAS_C_8"
        );
    }

    #[test]
    fn commands_round_trip_through_json() {
        let command = Command::CreateSource {
            source: stream("ORDERS"),
            or_replace: false,
        };
        let json = serde_json::to_string(&command).unwrap();
        let back: Command = serde_json::from_str(&json).unwrap();
        assert_eq!(back, command);
    }

    #[test]
    fn queries_recorded_before_rekeying_in_task_keep_their_repartition_topic() {
        let mut query = query("CTAS_T_1", "S", "T");
        let json = serde_json::to_string(&Command::StartQuery {
            query: query.clone(),
        })
        .unwrap();
        assert!(!json.contains("rekeys_in_task"), "{json}");
        assert!(!json.contains("steps_rekeying_in_task"), "{json}");
        assert!(!json.contains("aggregates_in_join_task"), "{json}");
        let Command::StartQuery { query: back } = serde_json::from_str(&json).unwrap() else {
            panic!("not a StartQuery")
        };
        assert!(!back.rekeys_in_task);
        assert!(back.steps_rekeying_in_task.is_empty());
        assert!(!back.aggregates_in_join_task);
        query.rekeys_in_task = true;
        query.steps_rekeying_in_task = vec![1, 2];
        query.aggregates_in_join_task = true;
        let json = serde_json::to_string(&Command::StartQuery {
            query: query.clone(),
        })
        .unwrap();
        let back: Command = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Command::StartQuery { query });
    }
}
