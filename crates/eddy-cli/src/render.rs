//! Statement results as text: aligned tables for finite results, and row-by-row output for push
//! queries and `PRINT`.
//!
//! Finite results ([`render`]) are drawn with comfy-table. A push query cannot be measured before
//! it ends, so [`PushTable`] prints its header once, with column widths chosen from the column
//! names and types, and then each row as it arrives; a value wider than its column widens that row
//! only. Values are formatted with Arrow's `ArrayFormatter`, `NULL` for nulls.

use std::future::Future;
use std::io::{self, Write};

use comfy_table::{Cell, ContentArrangement, Table};
use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use eddy_catalog::{Column, ColumnRole, SourceKind};
use eddy_engine::{
    PrintResult, PushQuery, QuerySummary, SourceDescription, SourceSummary, StatementResult,
    TopicSummary,
};

/// How a SQL `NULL` is shown.
pub const NULL_TEXT: &str = "NULL";

/// ASCII borders, a `+---+` line under the header and no lines between rows (ksqlDB's look).
const TABLE_PRESET: &str = "||--+-++|    ++++++";

/// Narrowest column of a streamed push-query table, in characters.
const MIN_PUSH_COLUMN_WIDTH: usize = 4;

/// Arrow display options of Eddy's front ends: nulls (nested ones too) shown as `NULL`.
pub fn format_options() -> FormatOptions<'static> {
    FormatOptions::new()
        .with_null(NULL_TEXT)
        .with_display_error(true)
}

/// Every value of `array` as display text.
pub fn column_strings(array: &dyn Array) -> Vec<String> {
    let options = format_options();
    match ArrayFormatter::try_new(array, &options) {
        Ok(formatter) => (0..array.len())
            .map(|row| formatter.value(row).to_string())
            .collect(),
        // Every Arrow type Eddy produces has a formatter; show the problem rather than hide rows.
        Err(error) => vec![format!("<cannot display {}: {error}>", array.data_type()); array.len()],
    }
}

/// The rows of `batch` as display text, row by row.
pub fn batch_rows(batch: &RecordBatch) -> Vec<Vec<String>> {
    rows_with(batch, column_strings)
}

/// The rows of `batch`, each column turned into text by `column_text`.
pub fn rows_with(
    batch: &RecordBatch,
    column_text: impl Fn(&dyn Array) -> Vec<String>,
) -> Vec<Vec<String>> {
    let mut columns: Vec<std::vec::IntoIter<String>> = batch
        .columns()
        .iter()
        .map(|c| column_text(c.as_ref()).into_iter())
        .collect();
    (0..batch.num_rows())
        .map(|_| {
            columns
                .iter_mut()
                .map(|c| c.next().unwrap_or_default())
                .collect()
        })
        .collect()
}

/// An empty table with Eddy's look and these column headers.
pub fn new_table<S: AsRef<str>>(header: &[S]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(TABLE_PRESET)
        .set_content_arrangement(ContentArrangement::Disabled)
        .force_no_tty()
        .set_header(header.iter().map(|h| Cell::new(h.as_ref())));
    table
}

/// The text of a finite result, or `None` for the streaming kinds ([`StatementResult::Push`] and
/// [`StatementResult::Print`]), which [`print_result`] streams.
pub fn render(result: &StatementResult) -> Option<String> {
    Some(match result {
        StatementResult::Success { message, .. } => message.clone(),
        StatementResult::Sources(sources) => sources_table(sources).to_string(),
        StatementResult::Topics(topics) => topics_table(topics).to_string(),
        StatementResult::Queries(queries) => queries_table(queries).to_string(),
        StatementResult::Properties(properties) => {
            let mut table = new_table(&["Property", "Scope", "Value"]);
            for (name, scope, value) in properties {
                table.add_row(vec![name, scope, value]);
            }
            table.to_string()
        }
        StatementResult::Description(description) => describe(description),
        StatementResult::Explain { text } => text.trim_end().to_owned(),
        StatementResult::Rows { schema, batches } => {
            let mut table = new_table(
                &schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>(),
            );
            for batch in batches {
                for row in batch_rows(batch) {
                    table.add_row(row);
                }
            }
            table.to_string()
        }
        StatementResult::Push(_) | StatementResult::Print(_) => return None,
    })
}

fn sources_table(sources: &[SourceSummary]) -> Table {
    let name = match sources.first().map(|s| s.kind) {
        Some(SourceKind::Stream) => "Stream Name",
        Some(SourceKind::Table) => "Table Name",
        None => "Name",
    };
    let mut table = new_table(&[name, "Kafka Topic", "Key Format", "Value Format"]);
    for source in sources {
        table.add_row(vec![
            &source.name,
            &source.topic,
            &source.key_format,
            &source.value_format,
        ]);
    }
    table
}

fn topics_table(topics: &[TopicSummary]) -> Table {
    let mut table = new_table(&["Kafka Topic", "Partitions", "Partition Replicas"]);
    for topic in topics {
        table.add_row(vec![
            topic.name.clone(),
            topic.partitions.to_string(),
            topic.replicas.to_string(),
        ]);
    }
    table
}

fn queries_table(queries: &[QuerySummary]) -> Table {
    let mut table = new_table(&["Query ID", "Status", "Sink Name", "Sources", "Query String"]);
    for query in queries {
        table.add_row(vec![
            query.id.clone(),
            query.status.clone(),
            query.sink.clone(),
            query.sources.join(", "),
            query.sql.trim().to_owned(),
        ]);
    }
    table
}

/// The type of a column as `DESCRIBE` shows it: `STRING KEY`, `INTEGER PRIMARY KEY`, `DOUBLE`.
pub fn column_type_text(column: &Column) -> String {
    match column.role {
        ColumnRole::Key => format!("{} KEY", column.sql_type),
        ColumnRole::PrimaryKey => format!("{} PRIMARY KEY", column.sql_type),
        ColumnRole::Value => column.sql_type.to_string(),
    }
}

/// `DESCRIBE [EXTENDED]`: name and kind, the columns, and with `EXTENDED` the topic, formats,
/// queries and their counts.
fn describe(description: &SourceDescription) -> String {
    let mut out = String::new();
    let line = |out: &mut String, label: &str, value: &str| {
        out.push_str(&format!("{label:<20}: {value}\n"))
    };
    line(&mut out, "Name", &description.name);
    line(&mut out, "Type", description.kind.keyword());
    if description.read_only {
        line(&mut out, "Read-only", "yes (CREATE SOURCE)");
    }
    if description.extended {
        line(
            &mut out,
            "Kafka topic",
            &format!(
                "{} (partitions: {})",
                description.topic, description.partitions
            ),
        );
        line(&mut out, "Key format", &description.key_format);
        line(&mut out, "Value format", &description.value_format);
        let timestamp = description
            .timestamp_column
            .as_deref()
            .unwrap_or("not set, using ROWTIME");
        line(&mut out, "Timestamp column", timestamp);
        if let Some(window) = &description.window {
            line(&mut out, "Window", &window.to_string());
        }
        if !description.sql.is_empty() {
            line(&mut out, "Statement", description.sql.trim());
        }
    }
    let mut table = new_table(&["Field", "Type"]);
    for column in &description.columns {
        table.add_row(vec![column.name.clone(), column_type_text(column)]);
    }
    out.push_str(&table.to_string());
    if description.extended {
        let list = |ids: &[String]| {
            if ids.is_empty() {
                "none".to_owned()
            } else {
                ids.join(", ")
            }
        };
        out.push('\n');
        line(&mut out, "Written by", &list(&description.written_by));
        line(&mut out, "Read by", &list(&description.read_by));
        for (query, records_in, records_out, skipped) in &description.statistics {
            line(
                &mut out,
                "Statistics",
                &format!("{query}: {records_in} records in, {records_out} out, {skipped} skipped"),
            );
        }
        if let Some(state) = &description.state {
            line(
                &mut out,
                "State",
                &format!(
                    "about {} keys, {} bytes in RocksDB; restored {} of {} changelog records",
                    state.approximate_keys,
                    state.approximate_bytes,
                    state.restored_records,
                    state.records_to_restore
                ),
            );
        }
        out.truncate(out.trim_end().len());
    }
    out
}

/// Writes `result` to `out`. Push queries and `PRINT` are streamed as rows arrive, until their
/// `LIMIT`, their end, or `interrupt` completes (Ctrl-C in the REPL), which stops them.
pub async fn print_result<W, F>(
    result: StatementResult,
    out: &mut W,
    interrupt: F,
) -> io::Result<()>
where
    W: Write,
    F: Future,
{
    match result {
        StatementResult::Push(mut push) => stream_push(&mut push, out, interrupt).await,
        StatementResult::Print(mut print) => stream_print(&mut print, out, interrupt).await,
        other => {
            if let Some(text) = render(&other) {
                writeln!(out, "{text}")?;
            }
            out.flush()
        }
    }
}

/// How a streamed result ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// It returned its `LIMIT` rows.
    LimitReached,
    /// It ended by itself before any limit (the query stopped or failed).
    Ended,
    /// The interrupt (Ctrl-C) stopped it.
    Interrupted,
}

/// Prints a push query's header, then its rows as they arrive; stops the query on `interrupt`.
pub async fn stream_push<W: Write, F: Future>(
    push: &mut PushQuery,
    out: &mut W,
    interrupt: F,
) -> io::Result<()> {
    let table = PushTable::new(&push.schema);
    writeln!(out, "{}", table.header())?;
    out.flush()?;
    let mut rows = 0u64;
    let mut interrupt = std::pin::pin!(interrupt);
    let end = loop {
        tokio::select! {
            _ = &mut interrupt => {
                push.stop();
                break StreamEnd::Interrupted;
            }
            batch = push.next_batch() => match batch {
                Some(batch) => {
                    rows += batch.num_rows() as u64;
                    if batch.num_rows() > 0 {
                        write!(out, "{}", table.rows(&batch))?;
                        out.flush()?;
                    }
                }
                None if push.limit().is_some_and(|limit| rows >= limit) => break StreamEnd::LimitReached,
                None => break StreamEnd::Ended,
            }
        }
    };
    writeln!(out, "{}", table.footer())?;
    match end {
        StreamEnd::LimitReached => writeln!(out, "Limit Reached")?,
        StreamEnd::Ended | StreamEnd::Interrupted => writeln!(out, "Query terminated")?,
    }
    out.flush()
}

/// Prints `PRINT`'s lines as they arrive; stops on `interrupt`.
pub async fn stream_print<W: Write, F: Future>(
    print: &mut PrintResult,
    out: &mut W,
    interrupt: F,
) -> io::Result<()> {
    let mut interrupt = std::pin::pin!(interrupt);
    loop {
        tokio::select! {
            _ = &mut interrupt => {
                writeln!(out, "Topic printing ceased")?;
                break;
            }
            line = print.next_line() => match line {
                Some(line) => {
                    writeln!(out, "{line}")?;
                    out.flush()?;
                }
                None => break,
            }
        }
    }
    out.flush()
}

/// The layout of a streamed push-query table: fixed column widths chosen before the first row.
/// A value longer than its column is wrapped onto as many lines as it needs, inside the column,
/// as ksqlDB's CLI does, so the grid stays whole.
#[derive(Debug, Clone)]
pub struct PushTable {
    names: Vec<String>,
    widths: Vec<usize>,
}

impl PushTable {
    pub fn new(schema: &Schema) -> Self {
        let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let widths = schema
            .fields()
            .iter()
            .map(|f| {
                f.name()
                    .chars()
                    .count()
                    .max(typical_width(f.data_type()))
                    .max(MIN_PUSH_COLUMN_WIDTH)
            })
            .collect();
        Self { names, widths }
    }

    /// A table of `names` whose columns are at least `min_width` wide (for results whose types
    /// are not known, such as rows read over REST).
    pub fn with_names(names: Vec<String>, min_width: usize) -> Self {
        let widths = names
            .iter()
            .map(|n| n.chars().count().max(min_width))
            .collect();
        Self { names, widths }
    }

    fn rule(&self) -> String {
        let mut line = String::from("+");
        for width in &self.widths {
            line.push_str(&"-".repeat(width + 2));
            line.push('+');
        }
        line
    }

    /// One row of already formatted cells: one line, or more when a cell is longer than its
    /// column (without a final newline).
    pub fn line(&self, cells: &[String]) -> String {
        let pieces: Vec<Vec<&str>> = cells
            .iter()
            .zip(&self.widths)
            .map(|(cell, &width)| wrap(cell, width))
            .collect();
        let height = pieces.iter().map(Vec::len).max().unwrap_or(1);
        let mut text = String::new();
        for line in 0..height {
            if line > 0 {
                text.push('\n');
            }
            text.push('|');
            for (cell, width) in pieces.iter().zip(&self.widths) {
                let piece = cell.get(line).copied().unwrap_or("");
                text.push_str(&format!(" {piece:<width$} |"));
            }
        }
        text
    }

    /// The rule, the column names and the rule under them.
    pub fn header(&self) -> String {
        let rule = self.rule();
        format!("{rule}\n{}\n{rule}", self.line(&self.names))
    }

    /// The rows of `batch`, one line each, each ending with a newline.
    pub fn rows(&self, batch: &RecordBatch) -> String {
        let mut text = String::new();
        for row in batch_rows(batch) {
            // Embedded line breaks would break the grid; show them escaped.
            let row: Vec<String> = row.into_iter().map(|v| v.replace('\n', "\\n")).collect();
            text.push_str(&self.line(&row));
            text.push('\n');
        }
        text
    }

    /// The closing rule.
    pub fn footer(&self) -> String {
        self.rule()
    }
}

/// A width that fits most values of a type, so that streamed rows usually stay aligned.
/// `cell` cut into pieces of at most `width` characters (one piece when it fits), in one pass.
fn wrap(cell: &str, width: usize) -> Vec<&str> {
    let width = width.max(1);
    let mut pieces = Vec::with_capacity(cell.len() / width + 1);
    let mut start = 0;
    for (count, (index, _)) in cell.char_indices().enumerate() {
        if count > 0 && count % width == 0 {
            pieces.push(&cell[start..index]);
            start = index;
        }
    }
    pieces.push(&cell[start..]);
    pieces
}

fn typical_width(data_type: &DataType) -> usize {
    match data_type {
        DataType::Boolean => 5,
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16 => {
            6
        }
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => 13,
        DataType::Float16 | DataType::Float32 | DataType::Float64 | DataType::Decimal128(..) => 10,
        DataType::Date32 | DataType::Date64 => 10,
        DataType::Time32(_) | DataType::Time64(_) => 12,
        DataType::Timestamp(..) => 23,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => 12,
        _ => 20,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{BooleanArray, Float64Array, Int32Array, StringArray};
    use datafusion::arrow::datatypes::Field;
    use eddy_common::types::SqlType;

    use super::*;

    fn column(name: &str, sql_type: SqlType, role: ColumnRole) -> Column {
        Column {
            name: name.into(),
            sql_type,
            role,
        }
    }

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ID", DataType::Int32, true),
            Field::new("NAME", DataType::Utf8, true),
            Field::new("PRICE", DataType::Float64, true),
            Field::new("OK", DataType::Boolean, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int32Array::from(vec![Some(1), None])),
                Arc::new(StringArray::from(vec![Some("apple"), None])),
                Arc::new(Float64Array::from(vec![Some(1.5), Some(2.0)])),
                Arc::new(BooleanArray::from(vec![Some(true), None])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn success_is_its_message() {
        let result = StatementResult::Success {
            message: "stream \"S\" created".into(),
            query_id: None,
        };
        assert_eq!(render(&result).unwrap(), "stream \"S\" created");
    }

    #[test]
    fn show_streams_is_a_table() {
        let result = StatementResult::Sources(vec![SourceSummary {
            name: "ORDERS".into(),
            kind: SourceKind::Stream,
            topic: "orders".into(),
            key_format: "KAFKA".into(),
            value_format: "JSON".into(),
            window: None,
        }]);
        let expected = "\
+-------------+-------------+------------+--------------+
| Stream Name | Kafka Topic | Key Format | Value Format |
+-------------+-------------+------------+--------------+
| ORDERS      | orders      | KAFKA      | JSON         |
+-------------+-------------+------------+--------------+";
        assert_eq!(render(&result).unwrap(), expected);
    }

    #[test]
    fn show_tables_names_tables() {
        let result = StatementResult::Sources(vec![SourceSummary {
            name: "USERS".into(),
            kind: SourceKind::Table,
            topic: "users".into(),
            key_format: "KAFKA".into(),
            value_format: "JSON".into(),
            window: None,
        }]);
        assert!(render(&result).unwrap().contains("| Table Name |"));
    }

    #[test]
    fn show_topics_is_a_table() {
        let result = StatementResult::Topics(vec![TopicSummary {
            name: "orders".into(),
            partitions: 3,
            replicas: 1,
        }]);
        let expected = "\
+-------------+------------+--------------------+
| Kafka Topic | Partitions | Partition Replicas |
+-------------+------------+--------------------+
| orders      | 3          | 1                  |
+-------------+------------+--------------------+";
        assert_eq!(render(&result).unwrap(), expected);
    }

    #[test]
    fn show_queries_is_a_table() {
        let result = StatementResult::Queries(vec![QuerySummary {
            id: "CSAS_BIG_1".into(),
            status: "RUNNING".into(),
            sink: "BIG".into(),
            sources: vec!["ORDERS".into()],
            sql: "CREATE STREAM big AS SELECT * FROM orders EMIT CHANGES;".into(),
        }]);
        let text = render(&result).unwrap();
        assert!(
            text.contains("| Query ID   | Status  | Sink Name | Sources | Query String"),
            "{text}"
        );
        assert!(
            text.contains("| CSAS_BIG_1 | RUNNING | BIG       | ORDERS  | CREATE STREAM big"),
            "{text}"
        );
    }

    #[test]
    fn show_properties_is_a_table() {
        let result = StatementResult::Properties(vec![(
            "auto.offset.reset".into(),
            "SESSION".into(),
            "earliest".into(),
        )]);
        let expected = "\
+-------------------+---------+----------+
| Property          | Scope   | Value    |
+-------------------+---------+----------+
| auto.offset.reset | SESSION | earliest |
+-------------------+---------+----------+";
        assert_eq!(render(&result).unwrap(), expected);
    }

    fn description(extended: bool) -> SourceDescription {
        SourceDescription {
            name: "USERS".into(),
            kind: SourceKind::Table,
            read_only: false,
            columns: vec![
                column("ID", SqlType::String, ColumnRole::PrimaryKey),
                column("AGE", SqlType::Int, ColumnRole::Value),
            ],
            topic: "users".into(),
            key_format: "KAFKA".into(),
            value_format: "JSON".into(),
            partitions: 2,
            timestamp_column: None,
            window: None,
            sql: "CREATE TABLE users (id STRING PRIMARY KEY, age INT) WITH (KAFKA_TOPIC='users');"
                .into(),
            extended,
            read_by: vec![],
            written_by: vec!["CTAS_USERS_0".into()],
            statistics: vec![("CTAS_USERS_0".into(), 3, 2, 1)],
            state: None,
        }
    }

    #[test]
    fn describe_marks_keys() {
        let expected = "\
Name                : USERS
Type                : TABLE
+-------+--------------------+
| Field | Type               |
+-------+--------------------+
| ID    | STRING PRIMARY KEY |
| AGE   | INTEGER            |
+-------+--------------------+";
        assert_eq!(
            render(&StatementResult::Description(Box::new(description(false)))).unwrap(),
            expected
        );
        let key = column("K", SqlType::BigInt, ColumnRole::Key);
        assert_eq!(column_type_text(&key), "BIGINT KEY");
    }

    #[test]
    fn describe_extended_adds_topic_queries_and_counts() {
        let text = render(&StatementResult::Description(Box::new(description(true)))).unwrap();
        assert!(
            text.contains("Kafka topic         : users (partitions: 2)"),
            "{text}"
        );
        assert!(
            text.contains("Timestamp column    : not set, using ROWTIME"),
            "{text}"
        );
        assert!(
            text.contains("Written by          : CTAS_USERS_0"),
            "{text}"
        );
        assert!(text.contains("Read by             : none"), "{text}");
        assert!(
            text.contains("CTAS_USERS_0: 3 records in, 2 out, 1 skipped"),
            "{text}"
        );
    }

    #[test]
    fn explain_is_its_text() {
        let result = StatementResult::Explain {
            text: "Projection\n  Filter\n".into(),
        };
        assert_eq!(render(&result).unwrap(), "Projection\n  Filter");
    }

    #[test]
    fn rows_show_nulls() {
        let batch = batch();
        let result = StatementResult::Rows {
            schema: batch.schema(),
            batches: vec![batch],
        };
        let expected = "\
+------+-------+-------+------+
| ID   | NAME  | PRICE | OK   |
+------+-------+-------+------+
| 1    | apple | 1.5   | true |
| NULL | NULL  | 2.0   | NULL |
+------+-------+-------+------+";
        assert_eq!(render(&result).unwrap(), expected);
    }

    #[test]
    fn push_table_streams_rows_under_a_fixed_header() {
        let batch = batch();
        let table = PushTable::new(&batch.schema());
        let expected_header = "\
+--------+--------------+------------+-------+
| ID     | NAME         | PRICE      | OK    |
+--------+--------------+------------+-------+";
        assert_eq!(table.header(), expected_header);
        assert_eq!(
            table.rows(&batch),
            "| 1      | apple        | 1.5        | true  |\n| NULL   | NULL         | 2.0        | NULL  |\n"
        );
        assert_eq!(
            table.footer(),
            "+--------+--------------+------------+-------+"
        );
    }

    #[test]
    fn a_push_table_wraps_a_long_value_inside_its_column() {
        let table = PushTable::with_names(vec!["ID".into(), "NOTE".into()], 4);
        let line = table.line(&["k1".into(), "a value of 22 letters".into()]);
        assert_eq!(
            line,
            "| k1   | a va |\n\
             |      | lue  |\n\
             |      | of 2 |\n\
             |      | 2 le |\n\
             |      | tter |\n\
             |      | s    |"
        );
        let rule = table.footer();
        assert!(
            line.lines().all(|l| l.len() == rule.len()),
            "every line is as wide as the rule: {line}"
        );
        // Characters, not bytes: a multi-byte value is cut between characters.
        assert_eq!(
            table.line(&["ü".repeat(6), "ok".into()]),
            "| üüüü | ok   |\n| üü   |      |"
        );
        // A value that fits stays on one line.
        assert_eq!(table.line(&["k1".into(), "fits".into()]), "| k1   | fits |");
    }

    #[test]
    fn nested_nulls_show_as_null() {
        use datafusion::arrow::array::ListArray;
        use datafusion::arrow::datatypes::Int32Type;
        let list =
            ListArray::from_iter_primitive::<Int32Type, _, _>(vec![Some(vec![Some(1), None])]);
        assert_eq!(column_strings(&list), vec!["[1, NULL]"]);
    }
}
