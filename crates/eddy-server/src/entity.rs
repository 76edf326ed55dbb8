//! ksqlDB's result entities of `/ksql`, one per statement, tagged by `@type`; built from the
//! engine's [`StatementResult`]s. Field names and their order are ksqlDB's.

use std::collections::BTreeMap;

use eddy_catalog::{Catalog, Column, QueryInfo, SourceKind};
use eddy_common::types::SqlType;
use eddy_engine::{QuerySummary, SourceDescription, SourceSummary, StatementResult, TopicSummary};
use eddy_sql::{ParsedStatement, ShowTarget, Statement};
use serde::Serialize;
use serde_json::Value;

use crate::backend::Backend;
use crate::error::ApiError;

/// One result of `/ksql`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "@type")]
pub enum KsqlEntity {
    #[serde(rename = "currentStatus")]
    CurrentStatus(CommandStatusEntity),
    #[serde(rename = "streams")]
    Streams(StreamsList),
    #[serde(rename = "tables")]
    Tables(TablesList),
    #[serde(rename = "queries")]
    Queries(QueriesList),
    #[serde(rename = "sourceDescription")]
    SourceDescription(SourceDescriptionEntity),
    #[serde(rename = "kafka_topics")]
    KafkaTopics(KafkaTopicsList),
    #[serde(rename = "properties")]
    Properties(PropertiesList),
    #[serde(rename = "queryDescription")]
    QueryDescription(QueryDescriptionEntity),
}

/// A condition worth knowing that did not fail the statement.
#[derive(Debug, Clone, Serialize)]
pub struct Warning {
    pub message: String,
}

/// The result of a statement that changed something (`CREATE`, `DROP`, `TERMINATE`, `INSERT`...).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandStatusEntity {
    pub statement_text: String,
    /// `stream/NAME/create`, `table/NAME/drop`, `terminate/ID/execute`...
    pub command_id: String,
    pub command_status: CommandStatus,
    /// Offset of the statement's command in the command topic; -1 for statements that write none.
    pub command_sequence_number: i64,
    pub warnings: Vec<Warning>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandStatus {
    /// Always `SUCCESS`: statements are executed before the response is sent.
    pub status: &'static str,
    pub message: String,
    /// The persistent query the statement started.
    pub query_id: Option<String>,
}

/// One stream or table of `SHOW STREAMS` / `SHOW TABLES`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceInfo {
    /// `STREAM` or `TABLE`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: String,
    pub topic: String,
    pub key_format: String,
    pub value_format: String,
    pub is_windowed: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamsList {
    pub statement_text: String,
    pub streams: Vec<SourceInfo>,
    pub warnings: Vec<Warning>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TablesList {
    pub statement_text: String,
    pub tables: Vec<SourceInfo>,
    pub warnings: Vec<Warning>,
}

/// A persistent query, as `SHOW QUERIES` and `DESCRIBE` list it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunningQuery {
    pub query_string: String,
    pub sinks: Vec<String>,
    pub sink_kafka_topics: Vec<String>,
    pub id: String,
    /// Servers of the cluster by the query's state there: this server's only.
    pub status_count: BTreeMap<&'static str, u32>,
    pub query_type: &'static str,
    pub state: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueriesList {
    pub statement_text: String,
    pub queries: Vec<RunningQuery>,
    pub warnings: Vec<Warning>,
}

/// A column, or a field of a `STRUCT`.
#[derive(Debug, Clone, Serialize)]
pub struct FieldInfo {
    pub name: String,
    pub schema: SchemaInfo,
    /// `KEY` for key columns, absent for the others.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub field_type: Option<&'static str>,
}

/// A SQL type: its base type, the fields of a `STRUCT`, the element (or map value) type of an
/// `ARRAY` (or `MAP`), the precision and scale of a `DECIMAL`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaInfo {
    #[serde(rename = "type")]
    pub base_type: &'static str,
    pub fields: Option<Vec<FieldInfo>>,
    pub member_schema: Option<Box<SchemaInfo>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<&'static str, i64>,
}

impl SchemaInfo {
    pub fn of(sql_type: &SqlType) -> SchemaInfo {
        let mut schema = SchemaInfo {
            base_type: "",
            fields: None,
            member_schema: None,
            parameters: BTreeMap::new(),
        };
        schema.base_type = match sql_type {
            SqlType::Boolean => "BOOLEAN",
            SqlType::Int => "INTEGER",
            SqlType::BigInt => "BIGINT",
            SqlType::Double => "DOUBLE",
            SqlType::Decimal { precision, scale } => {
                schema.parameters.insert("precision", i64::from(*precision));
                schema.parameters.insert("scale", i64::from(*scale));
                "DECIMAL"
            }
            SqlType::String => "STRING",
            SqlType::Bytes => "BYTES",
            SqlType::Date => "DATE",
            SqlType::Time => "TIME",
            SqlType::Timestamp => "TIMESTAMP",
            SqlType::Array(item) => {
                schema.member_schema = Some(Box::new(SchemaInfo::of(item)));
                "ARRAY"
            }
            SqlType::Map(_, value) => {
                schema.member_schema = Some(Box::new(SchemaInfo::of(value)));
                "MAP"
            }
            SqlType::Struct(fields) => {
                schema.fields = Some(
                    fields
                        .iter()
                        .map(|(name, t)| FieldInfo {
                            name: name.clone(),
                            schema: SchemaInfo::of(t),
                            field_type: None,
                        })
                        .collect(),
                );
                "STRUCT"
            }
        };
        schema
    }
}

/// `DESCRIBE [EXTENDED]`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceDescriptionEntity {
    pub statement_text: String,
    pub source_description: SourceDescriptionInfo,
    pub warnings: Vec<Warning>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceDescriptionInfo {
    pub name: String,
    /// `TUMBLING`, `HOPPING` or `SESSION` for a windowed table, else `null`.
    pub window_type: Option<String>,
    pub read_queries: Vec<RunningQuery>,
    pub write_queries: Vec<RunningQuery>,
    pub fields: Vec<FieldInfo>,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The timestamp column, or empty for the record's timestamp.
    pub timestamp: String,
    /// Record counts of the writing queries (extended only).
    pub statistics: String,
    pub error_stats: String,
    pub statistics_map: BTreeMap<String, Value>,
    pub error_stats_map: BTreeMap<String, Value>,
    pub extended: bool,
    pub key_format: String,
    pub value_format: String,
    pub topic: String,
    pub partitions: i32,
    /// Not tracked by Eddy: 0.
    pub replication: i32,
    pub statement: String,
    pub query_offset_summaries: Vec<Value>,
    pub source_constraints: Vec<String>,
}

/// One topic of `SHOW TOPICS`: its replicas per partition.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaTopicInfo {
    pub name: String,
    pub replica_info: Vec<i32>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaTopicsList {
    pub statement_text: String,
    pub topics: Vec<KafkaTopicInfo>,
    pub warnings: Vec<Warning>,
}

/// One property of `SHOW PROPERTIES`; `scope` is `SESSION`, `DEFAULT` or `SERVER`.
#[derive(Debug, Clone, Serialize)]
pub struct Property {
    pub name: String,
    pub scope: String,
    pub value: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PropertiesList {
    pub statement_text: String,
    pub properties: Vec<Property>,
    /// Properties the session set.
    pub overwritten_properties: Vec<String>,
    /// Properties at their default.
    pub default_properties: Vec<String>,
    pub warnings: Vec<Warning>,
}

/// `EXPLAIN`: Eddy's plan text in `executionPlan`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryDescriptionEntity {
    pub statement_text: String,
    pub query_description: QueryDescription,
    pub warnings: Vec<Warning>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryDescription {
    /// The persistent query explained, or empty for `EXPLAIN SELECT`.
    pub id: String,
    pub statement_text: String,
    pub window_type: Option<String>,
    pub fields: Vec<FieldInfo>,
    pub sources: Vec<String>,
    pub sinks: Vec<String>,
    pub topology: String,
    pub execution_plan: String,
    pub overridden_properties: BTreeMap<String, String>,
    pub query_type: &'static str,
}

/// ksqlDB's command id of a statement: `stream/NAME/create`, `table/NAME/drop`,
/// `terminate/ID/execute`; statements that write no command are named after what they do.
pub fn command_id(statement: &Statement) -> String {
    let kind = |k: eddy_sql::SourceKind| match k {
        eddy_sql::SourceKind::Stream => "stream",
        eddy_sql::SourceKind::Table => "table",
    };
    match statement {
        Statement::CreateSource { kind: k, name, .. }
        | Statement::CreateSourceAs { kind: k, name, .. } => format!("{}/{name}/create", kind(*k)),
        Statement::Drop { kind: k, name, .. } => format!("{}/{name}/drop", kind(*k)),
        Statement::Terminate { query_id } => {
            format!("terminate/{}/execute", query_id.as_deref().unwrap_or("ALL"))
        }
        Statement::InsertSelect { target, .. } => format!("stream/{target}/create"),
        Statement::InsertValues { target, .. } => format!("insert/{target}/execute"),
        Statement::Set { name, .. } | Statement::Unset { name } => {
            format!("property/{}/set", name.trim())
        }
        Statement::Produce { topic, .. } => format!("produce/{topic}/execute"),
        _ => "statement//execute".to_owned(),
    }
}

/// Whether a successful `statement` wrote a command to the command topic.
fn writes_command(statement: &Statement) -> bool {
    matches!(
        statement,
        Statement::CreateSource { .. }
            | Statement::CreateSourceAs { .. }
            | Statement::InsertSelect { .. }
            | Statement::Drop { .. }
            | Statement::Terminate { .. }
    )
}

/// The entity of `result`, the result of `statement` (whose text is `text`).
pub async fn entity_of(
    statement: &ParsedStatement,
    text: String,
    result: StatementResult,
    backend: &dyn Backend,
    kafka_timeout: std::time::Duration,
) -> Result<KsqlEntity, ApiError> {
    Ok(match result {
        StatementResult::Success { message, query_id } => {
            let command_sequence_number = if writes_command(&statement.statement) {
                backend
                    .last_command_offset(kafka_timeout)
                    .await
                    .unwrap_or(-1)
            } else {
                -1
            };
            KsqlEntity::CurrentStatus(CommandStatusEntity {
                statement_text: text,
                command_id: command_id(&statement.statement),
                command_status: CommandStatus {
                    status: "SUCCESS",
                    message,
                    query_id,
                },
                command_sequence_number,
                warnings: Vec::new(),
            })
        }
        StatementResult::Sources(sources) => {
            let infos = sources.iter().map(source_info).collect();
            let tables = match &statement.statement {
                Statement::Show { target, .. } => matches!(target, ShowTarget::Tables),
                _ => sources.first().is_some_and(|s| s.kind == SourceKind::Table),
            };
            if tables {
                KsqlEntity::Tables(TablesList {
                    statement_text: text,
                    tables: infos,
                    warnings: Vec::new(),
                })
            } else {
                KsqlEntity::Streams(StreamsList {
                    statement_text: text,
                    streams: infos,
                    warnings: Vec::new(),
                })
            }
        }
        StatementResult::Topics(topics) => KsqlEntity::KafkaTopics(KafkaTopicsList {
            statement_text: text,
            topics: topics.iter().map(topic_info).collect(),
            warnings: Vec::new(),
        }),
        StatementResult::Queries(queries) => {
            let catalog = backend.catalog();
            KsqlEntity::Queries(QueriesList {
                statement_text: text,
                queries: queries
                    .iter()
                    .map(|q| running_query_of_summary(q, &catalog))
                    .collect(),
                warnings: Vec::new(),
            })
        }
        StatementResult::Properties(rows) => KsqlEntity::Properties(properties_list(text, rows)),
        StatementResult::Description(description) => {
            KsqlEntity::SourceDescription(SourceDescriptionEntity {
                statement_text: text,
                source_description: source_description(&description, backend),
                warnings: Vec::new(),
            })
        }
        StatementResult::Explain { text: plan } => {
            let catalog = backend.catalog();
            let query = match &statement.statement {
                Statement::ExplainQuery { query_id } => catalog.query(query_id),
                _ => None,
            };
            KsqlEntity::QueryDescription(QueryDescriptionEntity {
                statement_text: text.clone(),
                query_description: QueryDescription {
                    id: query.map(|q| q.id.clone()).unwrap_or_default(),
                    statement_text: query.map_or(text, |q| q.sql.clone()),
                    window_type: None,
                    fields: Vec::new(),
                    sources: query.map(|q| q.inputs()).unwrap_or_default(),
                    sinks: query.map(|q| vec![q.sink.clone()]).unwrap_or_default(),
                    topology: String::new(),
                    execution_plan: plan,
                    overridden_properties: query.map(|q| q.properties.clone()).unwrap_or_default(),
                    query_type: if query.is_some() {
                        "PERSISTENT"
                    } else {
                        "PUSH"
                    },
                },
                warnings: Vec::new(),
            })
        }
        StatementResult::Rows { .. } | StatementResult::Push(_) | StatementResult::Print(_) => {
            // Queries are refused before anything runs; reaching this is a bug.
            return Err(ApiError::server_error(format!(
                "statement {text} returned rows on /ksql; send queries to /query"
            )));
        }
    })
}

fn source_info(source: &SourceSummary) -> SourceInfo {
    SourceInfo {
        kind: source.kind.keyword(),
        name: source.name.clone(),
        topic: source.topic.clone(),
        key_format: source.key_format.clone(),
        value_format: source.value_format.clone(),
        is_windowed: source.window.is_some(),
    }
}

fn topic_info(topic: &TopicSummary) -> KafkaTopicInfo {
    KafkaTopicInfo {
        name: topic.name.clone(),
        replica_info: vec![topic.replicas; usize::try_from(topic.partitions).unwrap_or(0)],
    }
}

fn properties_list(statement_text: String, rows: Vec<(String, String, String)>) -> PropertiesList {
    let with_scope = |scope: &str| {
        rows.iter()
            .filter(|(_, s, _)| s == scope)
            .map(|(name, _, _)| name.clone())
            .collect()
    };
    PropertiesList {
        statement_text,
        overwritten_properties: with_scope("SESSION"),
        default_properties: with_scope("DEFAULT"),
        properties: rows
            .iter()
            .map(|(name, scope, value)| Property {
                name: name.clone(),
                scope: scope.clone(),
                value: value.clone(),
            })
            .collect(),
        warnings: Vec::new(),
    }
}

/// ksqlDB's `statusCount` of a query in `state` on this server.
fn status_count(state: &'static str) -> BTreeMap<&'static str, u32> {
    BTreeMap::from([(state, 1)])
}

/// `state` of `SHOW QUERIES`' status text (`RUNNING`, `ERROR: ...`, `STOPPED`, `NOT RUNNING`).
fn state_of_status(status: &str) -> &'static str {
    if status == "RUNNING" {
        "RUNNING"
    } else if status.starts_with("ERROR") {
        "ERROR"
    } else {
        "UNRESPONSIVE"
    }
}

fn sink_topics(sink: &str, catalog: &Catalog) -> Vec<String> {
    catalog
        .source(sink)
        .map(|s| vec![s.topic.clone()])
        .unwrap_or_default()
}

fn running_query_of_summary(query: &QuerySummary, catalog: &Catalog) -> RunningQuery {
    let state = state_of_status(&query.status);
    RunningQuery {
        query_string: query.sql.clone(),
        sinks: vec![query.sink.clone()],
        sink_kafka_topics: sink_topics(&query.sink, catalog),
        id: query.id.clone(),
        status_count: status_count(state),
        query_type: "PERSISTENT",
        state,
    }
}

fn running_query(query: &QueryInfo, state: &'static str, catalog: &Catalog) -> RunningQuery {
    RunningQuery {
        query_string: query.sql.clone(),
        sinks: vec![query.sink.clone()],
        sink_kafka_topics: sink_topics(&query.sink, catalog),
        id: query.id.clone(),
        status_count: status_count(state),
        query_type: "PERSISTENT",
        state,
    }
}

/// A column as `DESCRIBE` gives it.
pub fn field_info(column: &Column) -> FieldInfo {
    FieldInfo {
        name: column.name.clone(),
        schema: SchemaInfo::of(&column.sql_type),
        field_type: column.is_key().then_some("KEY"),
    }
}

fn source_description(
    description: &SourceDescription,
    backend: &dyn Backend,
) -> SourceDescriptionInfo {
    let catalog = backend.catalog();
    let queries = |ids: &[String]| -> Vec<RunningQuery> {
        ids.iter()
            .map(|id| match catalog.query(id) {
                Some(query) => running_query(query, backend.query_state(id), &catalog),
                None => RunningQuery {
                    query_string: String::new(),
                    sinks: Vec::new(),
                    sink_kafka_topics: Vec::new(),
                    id: id.clone(),
                    status_count: status_count("UNRESPONSIVE"),
                    query_type: "PERSISTENT",
                    state: "UNRESPONSIVE",
                },
            })
            .collect()
    };
    let statistics = description
        .statistics
        .iter()
        .map(|(query, records_in, records_out, skipped)| {
            format!("{query}: {records_in} records in, {records_out} out, {skipped} skipped")
        })
        .collect::<Vec<_>>()
        .join("\n");
    SourceDescriptionInfo {
        name: description.name.clone(),
        window_type: description.window.map(|w| w.type_name().to_owned()),
        read_queries: queries(&description.read_by),
        write_queries: queries(&description.written_by),
        fields: description.columns.iter().map(field_info).collect(),
        kind: description.kind.keyword(),
        timestamp: description.timestamp_column.clone().unwrap_or_default(),
        statistics,
        error_stats: String::new(),
        statistics_map: BTreeMap::new(),
        error_stats_map: BTreeMap::new(),
        extended: description.extended,
        key_format: description.key_format.clone(),
        value_format: description.value_format.clone(),
        topic: description.topic.clone(),
        partitions: description.partitions,
        replication: 0,
        statement: description.sql.clone(),
        query_offset_summaries: Vec::new(),
        source_constraints: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_info_nests_like_ksqldb() {
        let t = SqlType::Struct(vec![
            ("A".into(), SqlType::Array(Box::new(SqlType::Int))),
            (
                "M".into(),
                SqlType::Map(
                    Box::new(SqlType::String),
                    Box::new(SqlType::Decimal {
                        precision: 4,
                        scale: 2,
                    }),
                ),
            ),
        ]);
        let json = serde_json::to_value(SchemaInfo::of(&t)).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "type": "STRUCT",
                "fields": [
                    {"name": "A", "schema": {"type": "ARRAY", "fields": null,
                        "memberSchema": {"type": "INTEGER", "fields": null, "memberSchema": null}}},
                    {"name": "M", "schema": {"type": "MAP", "fields": null,
                        "memberSchema": {"type": "DECIMAL", "fields": null, "memberSchema": null,
                            "parameters": {"precision": 4, "scale": 2}}}},
                ],
                "memberSchema": null,
            })
        );
    }

    #[test]
    fn command_ids_name_the_object_and_action() {
        let parse = |sql: &str| {
            eddy_sql::parse_statements(sql)
                .expect("parses")
                .remove(0)
                .statement
        };
        assert_eq!(
            command_id(&parse(
                "CREATE STREAM s (k STRING KEY) WITH (KAFKA_TOPIC='s');"
            )),
            "stream/S/create"
        );
        assert_eq!(command_id(&parse("DROP TABLE t;")), "table/T/drop");
        assert_eq!(
            command_id(&parse("TERMINATE ALL;")),
            "terminate/ALL/execute"
        );
    }
}
