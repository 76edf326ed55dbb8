//! Statements that change the catalog: CREATE, CREATE ... AS SELECT, INSERT INTO ... SELECT, DROP,
//! TERMINATE.

use std::collections::BTreeMap;

use eddy_catalog::{Column, ColumnRole, Command, QueryInfo, QueryKind, Source, SourceKind};
use eddy_common::types::SqlType;
use eddy_planner::StreamingPlan;
use tracing::info;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::layout::{check_formats, normalize_format};
use crate::{Session, StatementResult};

/// `WITH (...)` properties: upper-cased names → literal values rendered as text.
#[derive(Debug, Clone, Default)]
pub(crate) struct Properties {
    values: BTreeMap<String, String>,
}

/// Properties `CREATE STREAM/TABLE` accepts.
const SOURCE_PROPERTIES: &[&str] = &[
    "KAFKA_TOPIC",
    "VALUE_FORMAT",
    "KEY_FORMAT",
    "FORMAT",
    "PARTITIONS",
    "REPLICAS",
    "TIMESTAMP",
    "TIMESTAMP_FORMAT",
    "VALUE_DELIMITER",
    "KEY_DELIMITER",
    "WRAP_SINGLE_VALUE",
    "RETENTION_MS",
    "CONNECTOR",
    "EVENT_TYPE",
    "EVENTS_PER_SECOND",
    "MAX_EVENTS",
];

/// Properties of a generated stream (`CONNECTOR=...`); the others describe a topic.
const GENERATOR_PROPERTIES: &[&str] =
    &["CONNECTOR", "EVENT_TYPE", "EVENTS_PER_SECOND", "MAX_EVENTS"];

impl Properties {
    pub(crate) fn new(
        values: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, EngineError> {
        let mut map = BTreeMap::new();
        for (name, value) in values {
            let name = name.to_uppercase();
            if !SOURCE_PROPERTIES.contains(&name.as_str()) {
                return Err(EngineError::invalid_with_hint(
                    format!("unknown property \"{name}\""),
                    format!("valid properties are {}", SOURCE_PROPERTIES.join(", ")),
                ));
            }
            if map.insert(name.clone(), value).is_some() {
                return Err(EngineError::invalid(format!(
                    "property \"{name}\" is given twice"
                )));
            }
        }
        Ok(Self { values: map })
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub(crate) fn int(&self, name: &str) -> Result<Option<i32>, EngineError> {
        match self.get(name) {
            None => Ok(None),
            Some(text) => text
                .parse::<i32>()
                .ok()
                .filter(|n| *n > 0)
                .map(Some)
                .ok_or_else(|| {
                    EngineError::invalid(format!(
                        "property \"{name}\" must be a positive integer, found {text}"
                    ))
                }),
        }
    }

    pub(crate) fn bool(&self, name: &str) -> Result<Option<bool>, EngineError> {
        match self.get(name).map(|v| v.to_ascii_lowercase()) {
            None => Ok(None),
            Some(v) if v == "true" => Ok(Some(true)),
            Some(v) if v == "false" => Ok(Some(false)),
            Some(v) => Err(EngineError::invalid(format!(
                "property \"{name}\" must be true or false, found {v}"
            ))),
        }
    }

    /// (key format, value format) from `FORMAT`, `KEY_FORMAT` and `VALUE_FORMAT`.
    fn formats(&self) -> Result<(Option<String>, Option<String>), EngineError> {
        let both = self.get("FORMAT").map(normalize_format).transpose()?;
        let key = self.get("KEY_FORMAT").map(normalize_format).transpose()?;
        let value = self.get("VALUE_FORMAT").map(normalize_format).transpose()?;
        if both.is_some() && (key.is_some() || value.is_some()) {
            return Err(EngineError::invalid(
                "FORMAT cannot be combined with KEY_FORMAT or VALUE_FORMAT",
            ));
        }
        Ok((key.or_else(|| both.clone()), value.or(both)))
    }

    fn delimiter(&self) -> Result<Option<char>, EngineError> {
        match self.get("VALUE_DELIMITER") {
            None => Ok(None),
            Some(text) => match text.to_uppercase().as_str() {
                "TAB" => Ok(Some('\t')),
                "SPACE" => Ok(Some(' ')),
                _ => {
                    let mut chars = text.chars();
                    match (chars.next(), chars.next()) {
                        (Some(c), None) => Ok(Some(c)),
                        _ => Err(EngineError::invalid_with_hint(
                            format!("VALUE_DELIMITER must be one character, found '{text}'"),
                            "use a single character, 'TAB' or 'SPACE'",
                        )),
                    }
                }
            },
        }
    }
}

/// A column as declared in `CREATE STREAM/TABLE`.
pub(crate) struct DeclaredColumn {
    pub name: String,
    pub sql_type: eddy_common::types::SqlType,
    pub role: ColumnRole,
}

impl Engine {
    /// `CREATE [OR REPLACE] STREAM|TABLE [IF NOT EXISTS] name (columns) WITH (...)`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn create_source(
        &self,
        kind: SourceKind,
        name: String,
        columns: Vec<DeclaredColumn>,
        properties: Properties,
        options: CreateOptions,
        sql: &str,
    ) -> Result<StatementResult, EngineError> {
        let CreateOptions {
            read_only,
            or_replace,
            if_not_exists,
        } = options;
        if let Some(existing) = self.catalog().source(&name) {
            if if_not_exists {
                return Ok(StatementResult::Success {
                    message: format!("{} \"{name}\" already exists", existing.kind.noun()),
                    query_id: None,
                });
            }
            if !or_replace {
                return Err(eddy_catalog::CatalogError::AlreadyExists {
                    name,
                    existing: existing.kind,
                }
                .into());
            }
            // A source table's query keeps the rows of the table as it was declared.
            if (existing.read_only || read_only) && existing.kind == SourceKind::Table {
                return Err(EngineError::invalid_with_hint(
                    format!(
                        "CREATE OR REPLACE cannot change table \"{name}\": a query keeps the rows of a SOURCE table as it was declared"
                    ),
                    format!("drop the table first: DROP TABLE {name}"),
                ));
            }
        }
        if properties.get("CONNECTOR").is_some() {
            return self
                .create_generated_source(kind, name, columns, properties, options, sql)
                .await;
        }
        for property in GENERATOR_PROPERTIES {
            if properties.get(property).is_some() {
                return Err(EngineError::invalid_with_hint(
                    format!("property \"{property}\" belongs to generated streams"),
                    "add CONNECTOR='nexmark' to generate the stream's records",
                ));
            }
        }
        let columns = check_columns(kind, &name, columns)?;
        let topic = properties
            .get("KAFKA_TOPIC")
            .map(str::to_owned)
            .ok_or_else(|| {
                EngineError::invalid_with_hint(
                    format!(
                        "missing property KAFKA_TOPIC for {} \"{name}\"",
                        kind.noun()
                    ),
                    format!(
                        "add WITH (KAFKA_TOPIC='{}', VALUE_FORMAT='JSON', PARTITIONS=1)",
                        name.to_lowercase()
                    ),
                )
            })?;
        let (key_format, value_format) = properties.formats()?;
        let has_key = columns.iter().any(Column::is_key);
        let key_format = key_format.unwrap_or_else(|| {
            if has_key {
                "KAFKA".into()
            } else {
                "NONE".into()
            }
        });
        let value_format = value_format.unwrap_or_else(|| "JSON".into());
        let mut source = Source {
            name: name.clone(),
            kind,
            columns,
            topic: topic.clone(),
            key_format,
            value_format,
            value_delimiter: properties.delimiter()?,
            wrap_single_value: properties.bool("WRAP_SINGLE_VALUE")?,
            timestamp_column: properties.get("TIMESTAMP").map(|c| c.to_uppercase()),
            timestamp_format: properties.get("TIMESTAMP_FORMAT").map(str::to_owned),
            partitions: 0,
            written_by: None,
            generator: None,
            window: None,
            sql: sql.to_owned(),
            read_only,
        };
        check_timestamp(&source)?;
        check_formats(&source)?;

        let physical = self.inner.config.physical_topic(&topic);
        let partitions = properties.int("PARTITIONS")?;
        source.partitions = match self.inner.connection.topic(&physical).await? {
            Some(info) => {
                if let Some(wanted) = partitions
                    && wanted != info.partitions
                {
                    return Err(EngineError::invalid(format!(
                        "topic \"{topic}\" has {} partitions, but PARTITIONS={wanted} was given",
                        info.partitions
                    )));
                }
                info.partitions
            }
            None => {
                let Some(partitions) = partitions else {
                    return Err(EngineError::invalid_with_hint(
                        format!("topic \"{topic}\" does not exist"),
                        "to create it, add PARTITIONS=n to the WITH clause",
                    ));
                };
                let replicas = properties
                    .int("REPLICAS")?
                    .unwrap_or(self.inner.config.default_replicas);
                let compact = [("cleanup.policy", "compact")];
                let config: &[(&str, &str)] = if kind == SourceKind::Table {
                    &compact
                } else {
                    &[]
                };
                self.inner
                    .connection
                    .create_topic(&physical, partitions, replicas, config)
                    .await?;
                partitions
            }
        };
        if read_only && kind == SourceKind::Table {
            return self.create_source_table(source, sql).await;
        }
        self.submit(Command::CreateSource { source, or_replace })
            .await?;
        Ok(StatementResult::Success {
            message: format!("{} \"{name}\" created", kind.noun()),
            query_id: None,
        })
    }

    /// Stops and forgets the query that keeps the rows of source table `source`, before the
    /// table goes. Other queries that read the table keep it from being dropped, as for any
    /// table, and then nothing is stopped.
    async fn stop_source_table_queries(&self, source: &Source) -> Result<(), EngineError> {
        let catalog = self.catalog();
        let readers = catalog.readers_of(&source.name);
        if !readers.is_empty() {
            return Err(eddy_catalog::CatalogError::SourceInUse {
                name: source.name.clone(),
                kind: source.kind,
                queries: readers,
            }
            .into());
        }
        let keepers = catalog.writers_of(&source.name).into_iter().filter(|id| {
            catalog
                .query(id)
                .is_some_and(|q| q.kind == QueryKind::CreateSourceTable)
        });
        for id in keepers {
            self.submit(Command::TerminateQuery { id: id.clone() })
                .await?;
            self.stop_persistent_query(&id).await;
            self.drop_view(&source.name, &id);
        }
        Ok(())
    }

    /// Records a new `source` and the `query` that writes it in the command topic, then starts
    /// the query.
    async fn record_source_and_query(
        &self,
        source: Source,
        query: &QueryInfo,
    ) -> Result<(), EngineError> {
        self.submit(Command::CreateSource {
            source,
            or_replace: false,
        })
        .await?;
        self.submit(Command::StartQuery {
            query: query.clone(),
        })
        .await?;
        self.start_recorded_query(query).await
    }

    /// `CREATE SOURCE TABLE`: the read-only table, and the query that keeps its rows for pull
    /// queries (as ksqlDB does): it reads the table's topic from the beginning into the table's
    /// store and writes no topic.
    async fn create_source_table(
        &self,
        mut source: Source,
        sql: &str,
    ) -> Result<StatementResult, EngineError> {
        let name = source.name.clone();
        let query_id = self
            .catalog()
            .next_query_id(QueryKind::CreateSourceTable, &name);
        source.written_by = Some(query_id.clone());
        let query = QueryInfo {
            id: query_id.clone(),
            kind: QueryKind::CreateSourceTable,
            sql: sql.to_owned(),
            sink: name.clone(),
            // It reads its own table: as a reader it would keep the table from being dropped.
            sources: Vec::new(),
            // The rows are the whole topic, whatever the session says.
            properties: [("auto.offset.reset".to_owned(), "earliest".to_owned())].into(),
            rekeys_in_task: false,
            steps_rekeying_in_task: Vec::new(),
            aggregates_in_join_task: false,
        };
        self.record_source_and_query(source, &query).await?;
        info!(query = query_id, table = name, "source table materialized");
        Ok(StatementResult::Success {
            message: format!("table \"{name}\" created; query {query_id} keeps its rows"),
            query_id: Some(query_id),
        })
    }

    /// `CREATE STREAM name WITH (CONNECTOR='nexmark', EVENT_TYPE='bid' [, EVENTS_PER_SECOND=n]
    /// [, MAX_EVENTS=n])` or `CREATE STREAM name (columns) WITH (CONNECTOR='datagen', ...)`: a
    /// stream whose records a built-in connector generates.
    async fn create_generated_source(
        &self,
        kind: SourceKind,
        name: String,
        columns: Vec<DeclaredColumn>,
        properties: Properties,
        options: CreateOptions,
        sql: &str,
    ) -> Result<StatementResult, EngineError> {
        let or_replace = options.or_replace;
        if kind == SourceKind::Table {
            return Err(EngineError::invalid_with_hint(
                format!("table \"{name}\" cannot have a CONNECTOR"),
                "generated records are events: use CREATE STREAM",
            ));
        }
        for property in [
            "KAFKA_TOPIC",
            "PARTITIONS",
            "REPLICAS",
            "KEY_FORMAT",
            "VALUE_FORMAT",
            "FORMAT",
            "TIMESTAMP",
        ] {
            if properties.get(property).is_some() {
                return Err(EngineError::invalid(format!(
                    "property \"{property}\" does not apply to a generated stream: it has no topic"
                )));
            }
        }
        let positive = |property: &str| -> Result<Option<u64>, EngineError> {
            match properties.get(property) {
                None => Ok(None),
                Some(text) => match text.trim().parse::<u64>() {
                    Ok(value) if value > 0 => Ok(Some(value)),
                    _ => Err(EngineError::invalid(format!(
                        "property \"{property}\" must be a positive whole number, not '{text}'"
                    ))),
                },
            }
        };
        let connector = properties
            .get("CONNECTOR")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let mut generator = eddy_catalog::Generator {
            connector: connector.clone(),
            event_type: String::new(),
            events_per_second: positive("EVENTS_PER_SECOND")?,
            max_events: positive("MAX_EVENTS")?,
        };
        let columns = match connector.as_str() {
            "datagen" => {
                if properties.get("EVENT_TYPE").is_some() {
                    return Err(EngineError::invalid(
                        "EVENT_TYPE is for CONNECTOR='nexmark'; datagen fills the declared columns",
                    ));
                }
                let columns = check_columns(kind, &name, columns)?;
                eddy_runtime::check_datagen_columns(&columns)
                    .map_err(|e| EngineError::invalid(e.to_string()))?;
                columns
            }
            _ => {
                if !columns.is_empty() {
                    return Err(EngineError::invalid_with_hint(
                        format!("generated stream \"{name}\" has the columns of its events"),
                        "remove the column list; DESCRIBE shows the columns",
                    ));
                }
                generator.event_type = properties
                    .get("EVENT_TYPE")
                    .ok_or_else(|| {
                        EngineError::invalid_with_hint(
                            format!("missing property EVENT_TYPE for generated stream \"{name}\""),
                            format!(
                                "EVENT_TYPE is one of {}",
                                eddy_runtime::NEXMARK_EVENT_TYPES.join(", ")
                            ),
                        )
                    })?
                    .to_ascii_lowercase();
                eddy_runtime::generator_columns(&generator)
                    .map_err(|e| EngineError::invalid(e.to_string()))?
            }
        };
        let key_format = if columns.iter().any(Column::is_key) {
            "KAFKA"
        } else {
            "NONE"
        };
        let source = Source {
            name: name.clone(),
            kind,
            columns,
            topic: String::new(),
            key_format: key_format.into(),
            value_format: "JSON".into(),
            value_delimiter: None,
            wrap_single_value: None,
            timestamp_column: None,
            timestamp_format: None,
            partitions: 1,
            written_by: None,
            sql: sql.to_owned(),
            generator: Some(generator),
            window: None,
            read_only: options.read_only,
        };
        self.submit(Command::CreateSource { source, or_replace })
            .await?;
        Ok(StatementResult::Success {
            message: format!("stream \"{name}\" created"),
            query_id: None,
        })
    }

    /// `CREATE [OR REPLACE] STREAM|TABLE name [WITH (...)] AS SELECT ...`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn create_source_as(
        &self,
        session: &Session,
        kind: SourceKind,
        name: String,
        properties: Properties,
        if_not_exists: bool,
        select: &crate::execute::SelectParts<'_>,
        sql: &str,
    ) -> Result<StatementResult, EngineError> {
        if let Some(existing) = self.catalog().source(&name) {
            if if_not_exists {
                return Ok(StatementResult::Success {
                    message: format!("{} \"{name}\" already exists", existing.kind.noun()),
                    query_id: None,
                });
            }
            return Err(eddy_catalog::CatalogError::AlreadyExists {
                name,
                existing: existing.kind,
            }
            .into());
        }
        let catalog = self.catalog();
        // Planned to validate; the query is planned again when it starts, under its id.
        let planned = self.plan_persistent("validation", select, &catalog).await?;
        let plan = &planned.plan;
        if plan.limit.is_some() {
            return Err(EngineError::invalid(
                "LIMIT is not allowed in a persistent query",
            ));
        }
        let aggregates = plan.aggregation.is_some();
        if aggregates && kind == SourceKind::Stream {
            return Err(EngineError::invalid_with_hint(
                format!("cannot create stream \"{name}\" from a GROUP BY query"),
                "an aggregation produces a table: use CREATE TABLE ... AS SELECT",
            ));
        }
        match (kind, plan.source.kind) {
            (SourceKind::Table, SourceKind::Stream) if aggregates => {}
            (SourceKind::Stream, SourceKind::Table) => {
                return Err(EngineError::invalid_with_hint(
                    format!(
                        "cannot create stream \"{name}\" from table \"{}\"",
                        plan.source.name
                    ),
                    "use CREATE TABLE ... AS SELECT",
                ));
            }
            (SourceKind::Table, SourceKind::Stream) => {
                return Err(EngineError::invalid_with_hint(
                    format!(
                        "cannot create table \"{name}\" from stream \"{}\" without GROUP BY",
                        plan.source.name
                    ),
                    "add GROUP BY to aggregate the stream, or use CREATE STREAM ... AS SELECT",
                ));
            }
            _ => {}
        }
        let (key_format, value_format) = properties.formats()?;
        let columns = sink_columns(kind, plan)?;
        let has_key = columns.iter().any(Column::is_key);
        let key_count = columns.iter().filter(|c| c.is_key()).count();
        let key_format = match key_format {
            Some(format) => format,
            None if !has_key => "NONE".into(),
            None => default_key_format(&plan.source, key_count),
        };
        let topic = properties
            .get("KAFKA_TOPIC")
            .map(str::to_owned)
            .unwrap_or_else(|| name.clone());
        let query_kind = match kind {
            SourceKind::Stream => QueryKind::CreateStreamAsSelect,
            SourceKind::Table => QueryKind::CreateTableAsSelect,
        };
        let query_id = catalog.next_query_id(query_kind, &name);
        let sink = Source {
            read_only: false,
            name: name.clone(),
            kind,
            columns,
            topic: topic.clone(),
            key_format,
            value_format: value_format.unwrap_or_else(|| plan.source.value_format.clone()),
            value_delimiter: properties.delimiter()?.or(plan.source.value_delimiter),
            wrap_single_value: properties.bool("WRAP_SINGLE_VALUE")?,
            timestamp_column: None,
            timestamp_format: None,
            partitions: properties
                .int("PARTITIONS")?
                .unwrap_or(plan.source.partitions.max(1)),
            written_by: Some(query_id.clone()),
            generator: None,
            window: plan.window().copied(),
            sql: sql.to_owned(),
        };
        check_formats(&sink)?;
        crate::layout::sink_layout(&sink, plan)?;
        let physical = self.inner.config.physical_topic(&topic);
        if self.inner.connection.topic(&physical).await?.is_none() {
            let replicas = properties
                .int("REPLICAS")?
                .unwrap_or(self.inner.config.default_replicas);
            self.inner
                .connection
                .create_topic(&physical, sink.partitions, replicas, &[])
                .await?;
        }
        let query = QueryInfo {
            id: query_id.clone(),
            kind: query_kind,
            sql: sql.to_owned(),
            sink: name.clone(),
            sources: planned.sources.clone(),
            properties: self.query_properties(session),
            rekeys_in_task: self.rekeys_in_task(&planned).await?,
            steps_rekeying_in_task: self.steps_rekeying_in_task(&planned).await?,
            aggregates_in_join_task: self.aggregates_in_join_task(&planned).await?,
        };
        self.record_source_and_query(sink, &query).await?;
        info!(query = query_id, "persistent query created");
        Ok(StatementResult::Success {
            message: format!("created query with id {query_id}"),
            query_id: Some(query_id),
        })
    }

    /// `INSERT INTO name SELECT ...`.
    pub(crate) async fn insert_select(
        &self,
        session: &Session,
        target: &str,
        query_id: Option<String>,
        select: &crate::execute::SelectParts<'_>,
        sql: &str,
    ) -> Result<StatementResult, EngineError> {
        let catalog = self.catalog();
        let sink = catalog.require_source(target)?.clone();
        refuse_write_target(&sink)?;
        if sink.kind != SourceKind::Stream {
            return Err(EngineError::invalid(format!(
                "INSERT INTO requires a stream; \"{target}\" is a table"
            )));
        }
        let planned = self.plan_persistent("validation", select, &catalog).await?;
        let plan = &planned.plan;
        if plan.limit.is_some() {
            return Err(EngineError::invalid(
                "LIMIT is not allowed in a persistent query",
            ));
        }
        if planned.sources.contains(&sink.name) {
            return Err(EngineError::invalid(format!(
                "INSERT INTO \"{target}\" cannot read from \"{target}\" itself"
            )));
        }
        let produced = sink_columns(SourceKind::Stream, plan)?;
        let expected: Vec<(String, String, bool)> = sink
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.sql_type.to_string(), c.is_key()))
            .collect();
        let actual: Vec<(String, String, bool)> = produced
            .iter()
            .map(|c| (c.name.clone(), c.sql_type.to_string(), c.is_key()))
            .collect();
        if expected != actual {
            let render = |cols: &[(String, String, bool)]| {
                cols.iter()
                    .map(|(n, t, k)| format!("{n} {t}{}", if *k { " KEY" } else { "" }))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(EngineError::invalid_with_hint(
                format!("the query's columns do not match stream \"{target}\""),
                format!(
                    "the stream has ({}); the query produces ({})",
                    render(&expected),
                    render(&actual)
                ),
            ));
        }
        let query_id = match query_id {
            Some(id) => id.to_uppercase(),
            None => catalog.next_query_id(QueryKind::InsertInto, target),
        };
        let query = QueryInfo {
            id: query_id.clone(),
            kind: QueryKind::InsertInto,
            sql: sql.to_owned(),
            sink: target.to_owned(),
            sources: planned.sources.clone(),
            properties: self.query_properties(session),
            rekeys_in_task: self.rekeys_in_task(&planned).await?,
            steps_rekeying_in_task: self.steps_rekeying_in_task(&planned).await?,
            aggregates_in_join_task: self.aggregates_in_join_task(&planned).await?,
        };
        self.submit(Command::StartQuery {
            query: query.clone(),
        })
        .await?;
        self.start_recorded_query(&query).await?;
        Ok(StatementResult::Success {
            message: format!("created query with id {query_id}"),
            query_id: Some(query_id),
        })
    }

    /// `DROP STREAM|TABLE [IF EXISTS] name [DELETE TOPIC]`.
    pub(crate) async fn drop_source(
        &self,
        kind: SourceKind,
        name: &str,
        if_exists: bool,
        delete_topic: bool,
    ) -> Result<StatementResult, EngineError> {
        let catalog = self.catalog();
        let Some(source) = catalog.source(name).cloned() else {
            if if_exists {
                return Ok(StatementResult::Success {
                    message: format!("{} \"{name}\" does not exist", kind.noun()),
                    query_id: None,
                });
            }
            return Err(catalog
                .require_source(name)
                .err()
                .map(EngineError::from)
                .unwrap_or_else(|| EngineError::Internal("source vanished".into())));
        };
        if source.kind != kind {
            return Err(EngineError::invalid_with_hint(
                format!(
                    "\"{name}\" is a {}, not a {}",
                    source.kind.noun(),
                    kind.noun()
                ),
                format!("use DROP {} {name}", source.kind.keyword()),
            ));
        }
        if name == crate::PROCESSING_LOG_STREAM {
            return Err(EngineError::invalid(
                "the processing log stream cannot be dropped",
            ));
        }
        if delete_topic && source.read_only {
            return Err(EngineError::invalid_with_hint(
                format!(
                    "{} \"{name}\" is read-only: DELETE TOPIC would delete the topic it reads",
                    kind.noun()
                ),
                format!(
                    "drop it without DELETE TOPIC: DROP {} {name}",
                    kind.keyword()
                ),
            ));
        }
        if source.read_only {
            self.stop_source_table_queries(&source).await?;
        }
        self.submit(Command::DropSource {
            name: name.to_owned(),
        })
        .await?;
        let delete_topic = delete_topic && source.generator.is_none();
        if delete_topic {
            self.inner
                .connection
                .delete_topic(&self.physical_topic(&source))
                .await?;
        }
        Ok(StatementResult::Success {
            message: format!(
                "{} \"{name}\" dropped{}",
                kind.noun(),
                if delete_topic {
                    format!(" and topic \"{}\" deleted", source.topic)
                } else {
                    String::new()
                }
            ),
            query_id: None,
        })
    }

    /// `TERMINATE id` / `TERMINATE ALL`.
    pub(crate) async fn terminate(&self, id: Option<&str>) -> Result<StatementResult, EngineError> {
        let catalog = self.catalog();
        let ids: Vec<String> = match id {
            Some(id) => {
                let id = id.to_uppercase();
                if let Some(query) = catalog
                    .query(&id)
                    .filter(|q| q.kind == QueryKind::CreateSourceTable)
                {
                    return Err(EngineError::invalid_with_hint(
                        format!(
                            "query \"{id}\" keeps the rows of source table \"{}\" and stops only with it",
                            query.sink
                        ),
                        format!("drop the table: DROP TABLE {}", query.sink),
                    ));
                }
                vec![id]
            }
            // Every query a statement made; source tables keep theirs.
            None => catalog
                .queries()
                .filter(|q| q.kind != QueryKind::CreateSourceTable)
                .map(|q| q.id.clone())
                .collect(),
        };

        for id in &ids {
            let sink = self.catalog().query(id).map(|q| q.sink.clone());
            self.submit(Command::TerminateQuery { id: id.clone() })
                .await?;
            self.stop_persistent_query(id).await;
            if let Some(sink) = sink {
                self.drop_view(&sink, id);
            }
        }
        let message = match ids.len() {
            1 if id.is_some() => format!("query \"{}\" terminated", ids[0]),
            n => format!("{n} queries terminated"),
        };
        Ok(StatementResult::Success {
            message,
            query_id: None,
        })
    }
}

/// The key format of a query's output with `key_count` key columns, read from `source`: the
/// source's, except that KAFKA keys hold one column (a key of several needs JSON) and a source
/// without a key gives KAFKA.
pub(crate) fn default_key_format(source: &Source, key_count: usize) -> String {
    if key_count > 1 {
        "JSON".into()
    } else if source.key_format == "NONE" {
        "KAFKA".into()
    } else {
        source.key_format.clone()
    }
}

/// Checks declared columns against ksqlDB's rules; returns key columns first.
fn check_columns(
    kind: SourceKind,
    name: &str,
    declared: Vec<DeclaredColumn>,
) -> Result<Vec<Column>, EngineError> {
    let mut seen = std::collections::BTreeSet::new();
    let mut keys = Vec::new();
    let mut values = Vec::new();
    for column in declared {
        if !seen.insert(column.name.clone()) {
            return Err(EngineError::invalid(format!(
                "column \"{}\" is declared twice",
                column.name
            )));
        }
        if eddy_catalog::PSEUDO_COLUMNS.contains(&column.name.as_str())
            || column.name == "WINDOWSTART"
            || column.name == "WINDOWEND"
        {
            return Err(EngineError::invalid(format!(
                "\"{}\" is a reserved column name",
                column.name
            )));
        }
        match (kind, column.role) {
            (SourceKind::Stream, ColumnRole::PrimaryKey) => {
                return Err(EngineError::invalid_with_hint(
                    format!(
                        "column \"{}\" is a PRIMARY KEY, but streams have no primary key",
                        column.name
                    ),
                    "use KEY for a stream's key column",
                ));
            }
            (SourceKind::Table, ColumnRole::Key) => {
                return Err(EngineError::invalid_with_hint(
                    format!(
                        "column \"{}\" is a KEY, but tables need a PRIMARY KEY",
                        column.name
                    ),
                    "use PRIMARY KEY",
                ));
            }
            _ => {}
        }
        let column = Column {
            name: column.name,
            sql_type: column.sql_type,
            role: column.role,
        };
        if column.is_key() {
            keys.push(column)
        } else {
            values.push(column)
        }
    }
    if kind == SourceKind::Table && keys.is_empty() {
        return Err(EngineError::invalid_with_hint(
            format!("table \"{name}\" has no PRIMARY KEY"),
            "declare one column as PRIMARY KEY, e.g. (id STRING PRIMARY KEY, ...)",
        ));
    }
    if keys.is_empty() && values.is_empty() {
        return Err(EngineError::invalid(format!(
            "{} \"{name}\" has no columns",
            kind.noun()
        )));
    }
    keys.extend(values);
    Ok(keys)
}

/// The columns of a sink written by `plan`, with the key role of `kind`.
pub(crate) fn sink_columns(
    kind: SourceKind,
    plan: &StreamingPlan,
) -> Result<Vec<Column>, EngineError> {
    let mut seen = std::collections::BTreeSet::new();
    let mut columns = Vec::with_capacity(plan.sink_columns.len());
    for column in &plan.sink_columns {
        if !seen.insert(column.name.clone()) {
            return Err(EngineError::invalid_with_hint(
                format!("the query produces column \"{}\" twice", column.name),
                "give one of them another name with AS",
            ));
        }
        let mut column = column.clone();
        if column.is_key() && kind == SourceKind::Table {
            column.role = ColumnRole::PrimaryKey;
        }
        columns.push(column);
    }
    if kind == SourceKind::Table && !columns.iter().any(Column::is_key) {
        return Err(EngineError::invalid_with_hint(
            "the query does not select the table's primary key",
            "include the key column in the SELECT list",
        ));
    }
    Ok(columns)
}

/// How `CREATE [OR REPLACE] [SOURCE] STREAM|TABLE [IF NOT EXISTS]` was spelled.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CreateOptions {
    /// `SOURCE`: the new stream or table is read-only.
    pub read_only: bool,
    pub or_replace: bool,
    pub if_not_exists: bool,
}

/// Rows cannot be written into a generated stream (it has no topic) nor into a read-only one
/// (`CREATE SOURCE`).
pub(crate) fn refuse_write_target(source: &Source) -> Result<(), EngineError> {
    if let Some(generator) = &source.generator {
        return Err(EngineError::invalid(format!(
            "stream \"{}\" is generated by the {} connector: it has no topic to write into",
            source.name, generator.connector
        )));
    }
    if source.read_only {
        let keyword = source.kind.keyword();
        return Err(EngineError::invalid_with_hint(
            format!(
                "{} \"{}\" is read-only: it was created with CREATE SOURCE {keyword}",
                source.kind.noun(),
                source.name
            ),
            format!(
                "to write into its topic, declare the topic again with CREATE {keyword} (without SOURCE)"
            ),
        ));
    }
    Ok(())
}

/// The `TIMESTAMP` column must exist and hold a time: BIGINT or INT epoch milliseconds, a
/// TIMESTAMP or DATE, or a STRING in the `TIMESTAMP_FORMAT` given with it.
fn check_timestamp(source: &Source) -> Result<(), EngineError> {
    let kind = source.kind.noun();
    let name = &source.name;
    let Some(column) = &source.timestamp_column else {
        if source.timestamp_format.is_some() {
            return Err(EngineError::invalid_with_hint(
                "TIMESTAMP_FORMAT needs TIMESTAMP: it tells how to read the TIMESTAMP column",
                "add TIMESTAMP='column' to the WITH clause",
            ));
        }
        return Ok(());
    };
    let Some(found) = source.column(column) else {
        return Err(EngineError::invalid(format!(
            "TIMESTAMP column \"{column}\" is not a column of {kind} \"{name}\""
        )));
    };
    match (&found.sql_type, &source.timestamp_format) {
        (SqlType::String, Some(format)) => {
            eddy_format::TimestampFormat::new(format)
                .map_err(|e| EngineError::invalid(e.to_string()))?;
            Ok(())
        }
        (SqlType::String, None) => Err(EngineError::invalid_with_hint(
            format!("TIMESTAMP column \"{column}\" is a STRING: its format must be given"),
            "add TIMESTAMP_FORMAT='yyyy-MM-dd''T''HH:mm:ss.SSSX' (a Java DateTimeFormatter pattern) to the WITH clause",
        )),
        (SqlType::BigInt | SqlType::Int | SqlType::Timestamp | SqlType::Date, None) => Ok(()),
        (other, Some(_)) => Err(EngineError::invalid(format!(
            "TIMESTAMP_FORMAT applies to a STRING TIMESTAMP column; \"{column}\" is {other}"
        ))),
        (other, None) => Err(EngineError::invalid(format!(
            "TIMESTAMP column \"{column}\" is {other}; it must be BIGINT (epoch milliseconds), TIMESTAMP, DATE, or a STRING with TIMESTAMP_FORMAT"
        ))),
    }
}
