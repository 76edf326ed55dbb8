//! The sqllogictest runner behind `eddy test` and `cargo test`.
//!
//! Each file runs against a fresh namespace of its own: a new [`Engine`] whose `service_id` is
//! `slt-<uuid>` and whose `topic_prefix` is `slt-<uuid>-`, so files sharing one Kafka never see
//! each other's topics, streams or queries. Every `connection` of a file is a new [`Session`] on the
//! file's engine. At the end of a file its engine is shut down, and the topics of its namespace are
//! deleted when the file passed (a failing file's topics are kept for inspection).
//!
//! How records map to Eddy:
//!
//! - `statement ok` / `statement error <regex>`: executes the SQL; the regex is searched for in the
//!   error's message (which may contain a `hint: ...` line).
//! - `query <types>`: executes the SQL and compares its rows. A push query (`SELECT ... EMIT
//!   CHANGES LIMIT n`) is read until its `LIMIT`, for at most [`SltConfig::query_timeout_ms`];
//!   a push query without `LIMIT` is an error, because it would never end. `PRINT` gives one row
//!   per line (its first line is the `Topic: ..., partitions: n` header). `SHOW`, `DESCRIBE` and
//!   `EXPLAIN` give rows too (see [`result_rows`]); other statements give their message as a row.
//! - Column types are checked: `T` text, `I` integers, `R` floating point and decimals, and any
//!   other letter (say `B` for booleans, `?` in generated files) for every other type.
//! - Values: `NULL`, strings as they are (the empty string as `(empty)`), booleans `true`/`false`,
//!   everything else as Arrow displays it.
//! - Rows are shown as if the file ran on a default engine (service id `eddy`, no topic prefix):
//!   the namespace's prefix is removed from topic names and its service id shown as `eddy`, so the
//!   processing log's topic reads `_eddy-eddy-processing-log`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use eddy_common::config::EngineConfig;
use eddy_engine::{Engine, EngineError, Session, StatementResult};
use eddy_runtime::KafkaConnection;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};
use thiserror::Error;
use tokio::time::timeout_at;

use crate::CliError;
use crate::render::{NULL_TEXT, column_strings, column_type_text};

/// Default of [`SltConfig::query_timeout_ms`].
pub const DEFAULT_QUERY_TIMEOUT_MS: u64 = 30_000;

/// How an empty string is shown (sqllogictest cannot show an empty value).
pub const EMPTY_TEXT: &str = "(empty)";

/// Rows of a failed push query quoted in its timeout error.
const ROWS_QUOTED_IN_ERRORS: usize = 10;

/// Limits of a test run.
#[derive(Debug, Clone)]
pub struct SltConfig {
    /// Longest a push query or `PRINT` may take to return its `LIMIT` rows. Default 30 000 ms.
    pub query_timeout_ms: u64,
    /// Engine settings of every file; `service_id` and `topic_prefix` are replaced per file.
    pub engine: EngineConfig,
}

impl Default for SltConfig {
    fn default() -> Self {
        Self {
            query_timeout_ms: DEFAULT_QUERY_TIMEOUT_MS,
            engine: EngineConfig::default(),
        }
    }
}

/// Why one statement of a test file failed. `Display` is what `statement error <regex>` matches.
#[derive(Debug, Error)]
pub enum SltError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A push query or `PRINT` did not end in time.
    #[error("{what} did not return its LIMIT rows within {}; got {count} rows: {rows}", duration_text(*.timeout_ms))]
    Timeout {
        what: &'static str,
        timeout_ms: u64,
        count: usize,
        rows: String,
    },
    /// A push query without `LIMIT` never ends.
    #[error(
        "a push query in a test needs a LIMIT, or it would never end\nhint: add LIMIT n before the ';'"
    )]
    NoLimit,
}

fn duration_text(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

/// A connection of a test file: the file's engine and a session of its own.
pub struct EddyDb {
    engine: Engine,
    session: Session,
    query_timeout: Duration,
    namespace: Namespace,
    /// How to start the engine again (`RESTART`): its Kafka connection, and how often it was
    /// restarted (each restart gets a state directory of its own).
    connection: Option<KafkaConnection>,
    restarts: usize,
}

/// The test-file statement that restarts the file's engine.
const RESTART: &str = "RESTART";

impl EddyDb {
    pub fn new(engine: Engine, config: &SltConfig) -> Self {
        let namespace = Namespace::of(engine.config());
        Self {
            engine,
            session: Session::new(),
            query_timeout: Duration::from_millis(config.query_timeout_ms),
            namespace,
            connection: None,
            restarts: 0,
        }
    }

    /// Lets `RESTART` start the engine again on `connection`.
    pub fn restartable(mut self, connection: KafkaConnection) -> Self {
        self.connection = Some(connection);
        self
    }

    /// `RESTART`: stops the engine and starts a new one with the same service id and topic
    /// prefix and an empty state directory, as a server that lost its disk (or a task moved to
    /// another server): it replays the command topic, resumes the persistent queries from their
    /// committed offsets and rebuilds their state from the changelogs. The session stays.
    async fn restart(&mut self) -> Result<(), SltError> {
        let connection = self.connection.clone().ok_or_else(|| {
            SltError::Engine(EngineError::invalid(
                "RESTART is not available on this connection",
            ))
        })?;
        self.engine.shutdown().await;
        self.restarts += 1;
        let mut config = self.engine.config().clone();
        config.state_dir = config.state_dir.join(format!("restart-{}", self.restarts));
        self.engine = Engine::start(config, connection).await?;
        Ok(())
    }
}

#[async_trait]
impl AsyncDB for EddyDb {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        if sql
            .trim()
            .trim_end_matches(';')
            .trim()
            .eq_ignore_ascii_case(RESTART)
        {
            self.restart().await?;
            return Ok(DBOutput::StatementComplete(0));
        }
        let results = self.engine.execute(&mut self.session, sql).await?;
        // Earlier results of a multi-statement record are dropped (which stops push queries);
        // the last one is the record's output.
        let Some(last) = results.into_iter().last() else {
            return Ok(DBOutput::StatementComplete(0));
        };
        let (types, mut rows) = result_rows(last, self.query_timeout).await?;
        for row in &mut rows {
            for value in row.iter_mut() {
                *value = self.namespace.hide(value);
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {
        // The file's first engine is shut down by its runner; a restarted one only here.
        if self.restarts > 0 {
            self.engine.shutdown().await;
        }
    }

    fn engine_name(&self) -> &str {
        "eddy"
    }

    async fn sleep(duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// The per-file names, and how to show them as a default engine's.
#[derive(Debug, Clone)]
struct Namespace {
    service_id: String,
    topic_prefix: String,
}

impl Namespace {
    fn of(config: &EngineConfig) -> Self {
        Self {
            service_id: config.service_id.clone(),
            topic_prefix: config.topic_prefix.clone(),
        }
    }

    fn hide(&self, text: &str) -> String {
        let mut text = text.to_owned();
        if self.service_id.is_empty() || self.service_id == "eddy" {
            return text;
        }
        // Internal topics first: they contain the service id, which may start the topic prefix.
        text = text.replace(&format!("_eddy-{}-", self.service_id), "_eddy-eddy-");
        if !self.topic_prefix.is_empty() {
            text = text.replace(&self.topic_prefix, "");
        }
        text.replace(&self.service_id, "eddy")
    }
}

type Rows = (Vec<DefaultColumnType>, Vec<Vec<String>>);

/// The rows a statement result gives a `query` record:
///
/// | result | columns |
/// |---|---|
/// | `Success` | message (T) |
/// | `Rows`, push query | the result's columns |
/// | `SHOW STREAMS`/`TABLES` | name, topic, key format, value format (TTTT) |
/// | `SHOW TOPICS` | name, partitions, replicas (TII) |
/// | `SHOW QUERIES` | id, status, sink, sources joined by `,` (TTTT) |
/// | `SHOW PROPERTIES` | name, scope, value (TTT) |
/// | `DESCRIBE` | column, type with `KEY`/`PRIMARY KEY` (TT); `EXTENDED` adds label/value rows |
/// | `EXPLAIN`, `PRINT` | one row per line (T) |
pub async fn result_rows(
    result: StatementResult,
    query_timeout: Duration,
) -> Result<Rows, SltError> {
    use DefaultColumnType::{Integer, Text};
    Ok(match result {
        StatementResult::Success { message, .. } => (vec![Text], vec![vec![message]]),
        StatementResult::Rows { schema, batches } => {
            let types = schema
                .fields()
                .iter()
                .map(|f| column_type(f.data_type()))
                .collect();
            (types, batches.iter().flat_map(slt_rows).collect())
        }
        StatementResult::Sources(sources) => (
            vec![Text; 4],
            sources
                .into_iter()
                .map(|s| vec![s.name, s.topic, s.key_format, s.value_format])
                .collect(),
        ),
        StatementResult::Topics(topics) => (
            vec![Text, Integer, Integer],
            topics
                .into_iter()
                .map(|t| vec![t.name, t.partitions.to_string(), t.replicas.to_string()])
                .collect(),
        ),
        StatementResult::Queries(queries) => (
            vec![Text; 4],
            queries
                .into_iter()
                .map(|q| vec![q.id, q.status, q.sink, q.sources.join(",")])
                .collect(),
        ),
        StatementResult::Properties(properties) => (
            vec![Text; 3],
            properties
                .into_iter()
                .map(|(n, s, v)| vec![n, s, v])
                .collect(),
        ),
        StatementResult::Description(d) => {
            let mut rows: Vec<Vec<String>> = d
                .columns
                .iter()
                .map(|c| vec![c.name.clone(), column_type_text(c)])
                .collect();
            if d.extended {
                let list = |ids: &[String]| {
                    if ids.is_empty() {
                        "none".to_owned()
                    } else {
                        ids.join(",")
                    }
                };
                let mut add = |label: &str, value: String| rows.push(vec![label.to_owned(), value]);
                add("Type", d.kind.keyword().to_owned());
                if d.read_only {
                    add("Read-only", "true".to_owned());
                }
                add("Kafka topic", d.topic.clone());
                add("Partitions", d.partitions.to_string());
                add("Key format", d.key_format.clone());
                add("Value format", d.value_format.clone());
                add(
                    "Timestamp column",
                    d.timestamp_column
                        .clone()
                        .unwrap_or_else(|| "ROWTIME".into()),
                );
                if let Some(window) = &d.window {
                    add("Window", window.to_string());
                }
                add("Written by", list(&d.written_by));
                add("Read by", list(&d.read_by));
                for (query, records_in, records_out, skipped) in &d.statistics {
                    add(
                        "Statistics",
                        format!("{query}: in {records_in}, out {records_out}, skipped {skipped}"),
                    );
                }
                // RocksDB's size estimates vary from run to run; restore progress does not.
                if let Some(state) = &d.state {
                    add(
                        "State",
                        format!(
                            "restored {} of {} changelog records",
                            state.restored_records, state.records_to_restore
                        ),
                    );
                }
            }
            (vec![Text; 2], rows)
        }
        StatementResult::Explain { text } => (
            vec![Text],
            text.lines().map(|l| vec![l.to_owned()]).collect(),
        ),
        StatementResult::Push(mut push) => {
            if push.limit().is_none() {
                return Err(SltError::NoLimit);
            }
            let types = push
                .schema
                .fields()
                .iter()
                .map(|f| column_type(f.data_type()))
                .collect();
            let deadline = tokio::time::Instant::now() + query_timeout;
            let mut rows = Vec::new();
            loop {
                match timeout_at(deadline, push.next_batch()).await {
                    Ok(Some(batch)) => rows.extend(slt_rows(&batch)),
                    Ok(None) => break,
                    Err(_) => return Err(timeout("query", query_timeout, &rows)),
                }
            }
            (types, rows)
        }
        StatementResult::Print(mut print) => {
            let deadline = tokio::time::Instant::now() + query_timeout;
            let mut rows = Vec::new();
            loop {
                match timeout_at(deadline, print.next_line()).await {
                    Ok(Some(line)) => rows.push(vec![line]),
                    Ok(None) => break,
                    Err(_) => return Err(timeout("PRINT", query_timeout, &rows)),
                }
            }
            (vec![Text], rows)
        }
    })
}

fn timeout(what: &'static str, query_timeout: Duration, rows: &[Vec<String>]) -> SltError {
    let mut quoted: Vec<String> = rows
        .iter()
        .take(ROWS_QUOTED_IN_ERRORS)
        .map(|r| format!("[{}]", r.join(" ")))
        .collect();
    if rows.len() > ROWS_QUOTED_IN_ERRORS {
        quoted.push(format!("... {} more", rows.len() - ROWS_QUOTED_IN_ERRORS));
    }
    SltError::Timeout {
        what,
        timeout_ms: query_timeout.as_millis() as u64,
        count: rows.len(),
        rows: if quoted.is_empty() {
            "none".into()
        } else {
            quoted.join(", ")
        },
    }
}

/// The sqllogictest column type of an Arrow type.
pub fn column_type(data_type: &DataType) -> DefaultColumnType {
    match data_type {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => DefaultColumnType::Integer,
        DataType::Float16
        | DataType::Float32
        | DataType::Float64
        | DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => DefaultColumnType::FloatingPoint,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DefaultColumnType::Text,
        _ => DefaultColumnType::Any,
    }
}

/// Every value of `array` as sqllogictest text: `NULL`, `(empty)` for an empty string, and
/// otherwise Arrow's display.
pub fn slt_values(array: &dyn Array) -> Vec<String> {
    let mut values = column_strings(array);
    let empty_strings: Vec<bool> = match array.data_type() {
        DataType::Utf8 => array
            .as_string::<i32>()
            .iter()
            .map(|v| v == Some(""))
            .collect(),
        DataType::LargeUtf8 => array
            .as_string::<i64>()
            .iter()
            .map(|v| v == Some(""))
            .collect(),
        DataType::Utf8View => array
            .as_string_view()
            .iter()
            .map(|v| v == Some(""))
            .collect(),
        _ => Vec::new(),
    };
    for (row, value) in values.iter_mut().enumerate() {
        if array.is_null(row) {
            *value = NULL_TEXT.to_owned();
        } else if empty_strings.get(row).copied().unwrap_or(false) {
            *value = EMPTY_TEXT.to_owned();
        }
    }
    values
}

/// The rows of `batch` as sqllogictest text.
pub fn slt_rows(batch: &RecordBatch) -> Vec<Vec<String>> {
    crate::render::rows_with(batch, slt_values)
}

/// The outcome of one file.
#[derive(Debug, Clone)]
pub struct FileOutcome {
    pub path: PathBuf,
    /// The namespace (service id) the file ran in.
    pub service_id: String,
    /// `None` when every record passed; otherwise sqllogictest's report, with `file:line`.
    pub error: Option<String>,
    pub elapsed: Duration,
}

impl FileOutcome {
    pub fn passed(&self) -> bool {
        self.error.is_none()
    }
}

/// The outcome of a run: one entry per file, in the order given.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub files: Vec<FileOutcome>,
}

impl Summary {
    pub fn passed(&self) -> usize {
        self.files.iter().filter(|f| f.passed()).count()
    }

    pub fn failures(&self) -> impl Iterator<Item = &FileOutcome> {
        self.files.iter().filter(|f| !f.passed())
    }

    /// True when every file passed.
    pub fn success(&self) -> bool {
        self.files.iter().all(FileOutcome::passed)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for file in &self.files {
            let status = if file.passed() { "PASS" } else { "FAIL" };
            writeln!(
                f,
                "{status} {} ({:.1} s)",
                file.path.display(),
                file.elapsed.as_secs_f64()
            )?;
        }
        for file in self.failures() {
            writeln!(
                f,
                "\n--- {} (namespace {}) ---",
                file.path.display(),
                file.service_id
            )?;
            writeln!(
                f,
                "{}",
                file.error.as_deref().unwrap_or_default().trim_end()
            )?;
        }
        let failed = self.files.len() - self.passed();
        write!(f, "\n{} passed, {failed} failed", self.passed())
    }
}

/// Runs `files` one after another against the Kafka at `bootstrap_servers`, each in a fresh
/// namespace, with the default [`SltConfig`].
pub async fn run_files(bootstrap_servers: &str, files: &[PathBuf]) -> Result<Summary, CliError> {
    run_files_with(
        &KafkaConnection::new(bootstrap_servers),
        files,
        &SltConfig::default(),
    )
    .await
}

/// [`run_files`] with a prepared connection (extra client properties) and limits.
pub async fn run_files_with(
    connection: &KafkaConnection,
    files: &[PathBuf],
    config: &SltConfig,
) -> Result<Summary, CliError> {
    let mut summary = Summary::default();
    for path in files {
        summary.files.push(run_file(connection, path, config).await);
    }
    Ok(summary)
}

/// Runs one file in a fresh namespace.
pub async fn run_file(
    connection: &KafkaConnection,
    path: &Path,
    config: &SltConfig,
) -> FileOutcome {
    let started = Instant::now();
    let id = uuid::Uuid::new_v4().simple().to_string();
    // Each file's tables keep their state in a directory of their own, deleted afterwards.
    let state_dir = std::env::temp_dir().join(format!("eddy-slt-{id}"));
    let engine_config = EngineConfig {
        service_id: format!("slt-{id}"),
        topic_prefix: format!("slt-{id}-"),
        state_dir: state_dir.clone(),
        ..config.engine.clone()
    };
    let service_id = engine_config.service_id.clone();
    let outcome = |error: Option<String>| FileOutcome {
        path: path.to_owned(),
        service_id: service_id.clone(),
        error,
        elapsed: started.elapsed(),
    };
    if let Err(error) = std::fs::metadata(path) {
        return outcome(Some(format!("cannot read {}: {error}", path.display())));
    }
    let engine = match Engine::start(engine_config.clone(), connection.clone()).await {
        Ok(engine) => engine,
        Err(error) => return outcome(Some(format!("cannot start the engine: {error}"))),
    };
    let mut runner = sqllogictest::Runner::new({
        let engine = engine.clone();
        let config = config.clone();
        let connection = connection.clone();
        move || {
            let db = EddyDb::new(engine.clone(), &config).restartable(connection.clone());
            async move { Ok::<_, SltError>(db) }
        }
    });
    runner.with_column_validator(sqllogictest::strict_column_validator);
    let result = runner.run_file_async(path).await;
    runner.shutdown_async().await;
    drop(runner);
    engine.shutdown().await;
    drop(engine);
    let _ = std::fs::remove_dir_all(&state_dir);
    let error = result.err().map(|e| e.display(false).to_string());
    if error.is_none() {
        delete_namespace_topics(connection, &engine_config).await;
    }
    outcome(error)
}

/// Deletes the topics of a namespace (best effort: a failure only leaves topics behind).
async fn delete_namespace_topics(connection: &KafkaConnection, config: &EngineConfig) {
    let internal = format!("_eddy-{}-", config.service_id);
    let Ok(topics) = connection.topics().await else {
        return;
    };
    for topic in topics {
        if (topic.name.starts_with(&config.topic_prefix) || topic.name.starts_with(&internal))
            && let Err(error) = connection.delete_topic(&topic.name).await
        {
            tracing::debug!(topic = topic.name, %error, "cannot delete a test topic");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        BooleanArray, Decimal128Array, Float64Array, Int64Array, RecordBatch, StringArray,
        TimestampMillisecondArray,
    };
    use datafusion::arrow::datatypes::{Field, Schema, TimeUnit};

    use super::*;

    #[test]
    fn values_show_null_and_empty_strings() {
        let strings = StringArray::from(vec![Some("a b"), Some(""), None]);
        assert_eq!(slt_values(&strings), vec!["a b", "(empty)", "NULL"]);
        let booleans = BooleanArray::from(vec![Some(true), Some(false), None]);
        assert_eq!(slt_values(&booleans), vec!["true", "false", "NULL"]);
        let floats = Float64Array::from(vec![Some(1.0), Some(0.25), None]);
        assert_eq!(slt_values(&floats), vec!["1.0", "0.25", "NULL"]);
        let decimals = Decimal128Array::from(vec![Some(1250), None])
            .with_precision_and_scale(10, 2)
            .unwrap();
        assert_eq!(slt_values(&decimals), vec!["12.50", "NULL"]);
        let timestamps = TimestampMillisecondArray::from(vec![Some(1_700_000_000_123)]);
        assert_eq!(slt_values(&timestamps), vec!["2023-11-14T22:13:20.123"]);
    }

    #[test]
    fn types_map_to_letters() {
        assert_eq!(column_type(&DataType::Int32), DefaultColumnType::Integer);
        assert_eq!(column_type(&DataType::Int64), DefaultColumnType::Integer);
        assert_eq!(
            column_type(&DataType::Float64),
            DefaultColumnType::FloatingPoint
        );
        assert_eq!(
            column_type(&DataType::Decimal128(10, 2)),
            DefaultColumnType::FloatingPoint
        );
        assert_eq!(column_type(&DataType::Utf8), DefaultColumnType::Text);
        assert_eq!(column_type(&DataType::Boolean), DefaultColumnType::Any);
        assert_eq!(
            column_type(&DataType::Timestamp(TimeUnit::Millisecond, None)),
            DefaultColumnType::Any
        );
    }

    #[tokio::test]
    async fn rows_result_becomes_rows() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("N", DataType::Int64, true),
            Field::new("S", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec![Some(""), None])),
            ],
        )
        .unwrap();
        let (types, rows) = result_rows(
            StatementResult::Rows {
                schema,
                batches: vec![batch],
            },
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!(
            types,
            vec![DefaultColumnType::Integer, DefaultColumnType::Text]
        );
        assert_eq!(rows, vec![vec!["1", "(empty)"], vec!["2", "NULL"]]);
    }

    #[tokio::test]
    async fn success_is_a_message_row() {
        let result = StatementResult::Success {
            message: "stream \"S\" created".into(),
            query_id: None,
        };
        let (types, rows) = result_rows(result, Duration::from_secs(1)).await.unwrap();
        assert_eq!(types, vec![DefaultColumnType::Text]);
        assert_eq!(rows, vec![vec!["stream \"S\" created"]]);
    }

    #[test]
    fn namespace_is_shown_as_the_default_one() {
        let namespace = Namespace {
            service_id: "slt-abc".into(),
            topic_prefix: "slt-abc-".into(),
        };
        assert_eq!(namespace.hide("slt-abc-orders"), "orders");
        assert_eq!(
            namespace.hide("_eddy-slt-abc-processing-log"),
            "_eddy-eddy-processing-log"
        );
    }

    #[test]
    fn timeout_message_quotes_rows() {
        let error = timeout(
            "query",
            Duration::from_secs(30),
            &[vec!["1".into(), "a".into()]],
        );
        assert_eq!(
            error.to_string(),
            "query did not return its LIMIT rows within 30 s; got 1 rows: [1 a]"
        );
        let error = timeout("query", Duration::from_millis(1500), &[]);
        assert_eq!(
            error.to_string(),
            "query did not return its LIMIT rows within 1500 ms; got 0 rows: none"
        );
    }
}
