//! From parsed statements to engine operations.

use eddy_catalog::{ColumnRole, SourceKind};
use eddy_common::window::WindowSpec;
use eddy_sql::{ColumnKeyRole, Emit, ParsedStatement, Select, ShowTarget, Statement};
use sqlparser::ast;

use crate::ddl::{DeclaredColumn, Properties};
use crate::engine::Engine;
use crate::error::EngineError;
use crate::{Session, StatementResult};

/// Session properties `SET` understands, with the values they accept (`None`: any value).
const SESSION_PROPERTIES: &[(&str, Option<&[&str]>)] = &[
    ("auto.offset.reset", Some(&["earliest", "latest"])),
    (crate::pull::READ_YOUR_WRITES, Some(&["true", "false"])),
];

/// The parts of a KSQL `SELECT` the engine needs, borrowed from the statement.
pub(crate) struct SelectParts<'a> {
    pub query: &'a ast::Query,
    pub partition_by: &'a [ast::Expr],
    pub emit: Option<Emit>,
    pub window: Option<WindowSpec>,
    /// `WITHIN` by join (see [`Select::within`]).
    pub within: &'a [Option<eddy_common::window::JoinWindow>],
    /// A `LIMIT` given outside the query (the query's own `LIMIT` is read by the planner).
    pub limit: Option<u64>,
}

impl<'a> SelectParts<'a> {
    pub(crate) fn from_select(select: &'a Select) -> Self {
        Self {
            query: &select.query,
            partition_by: &select.partition_by,
            emit: select.emit,
            window: select.window,
            within: &select.within,
            limit: None,
        }
    }

    /// The clauses the planner needs besides the query.
    pub(crate) fn clauses(&self) -> eddy_planner::Clauses<'a> {
        eddy_planner::Clauses {
            partition_by: self.partition_by,
            window: self.window,
            emit_final: self.emit == Some(Emit::Final),
            within: self.within.first().copied().flatten(),
        }
    }
}

/// The SELECT of a statement that runs a query.
pub(crate) fn select_of(statement: &Statement) -> Option<&Select> {
    statement.select()
}

fn kind_of(kind: eddy_sql::SourceKind) -> SourceKind {
    match kind {
        eddy_sql::SourceKind::Stream => SourceKind::Stream,
        eddy_sql::SourceKind::Table => SourceKind::Table,
    }
}

impl Engine {
    /// Parses `sql` and executes its statements in order, stopping at the first error. A syntax
    /// error anywhere in the script executes nothing.
    pub async fn execute(
        &self,
        session: &mut Session,
        sql: &str,
    ) -> Result<Vec<StatementResult>, EngineError> {
        let statements = eddy_sql::parse_statements(sql)?;
        let mut results = Vec::with_capacity(statements.len());
        for statement in &statements {
            results.push(self.execute_statement(session, statement).await?);
        }
        Ok(results)
    }

    /// Runs a queries file at the start of a headless server (`eddy server --queries-file`): its
    /// statements in order in one session, stopping at the first error. A statement whose
    /// stream, table or query the catalog already holds with the same text (the file ran
    /// before this restart; the command topic brought it back) is skipped, so that the same
    /// file can start the server every time. Returns what ran, as (statement, message).
    pub async fn run_queries_file(&self, sql: &str) -> Result<Vec<(String, String)>, EngineError> {
        let statements = eddy_sql::parse_statements(sql)?;
        let mut session = Session::new();
        let mut done = Vec::with_capacity(statements.len());
        for statement in &statements {
            let catalog = self.catalog();
            let applied = match &statement.statement {
                Statement::CreateSource { name, .. } | Statement::CreateSourceAs { name, .. } => {
                    catalog.source(name).is_some_and(|s| s.sql == statement.sql)
                }
                Statement::InsertSelect { .. } => catalog.queries().any(|q| q.sql == statement.sql),
                _ => false,
            };
            let message = if applied {
                "already applied: skipped".to_owned()
            } else {
                match self.execute_statement(&mut session, statement).await? {
                    StatementResult::Success { message, .. } => message,
                    _ => "done".to_owned(),
                }
            };
            done.push((statement.sql.clone(), message));
        }
        Ok(done)
    }

    /// Executes one parsed statement.
    pub async fn execute_statement(
        &self,
        session: &mut Session,
        parsed: &ParsedStatement,
    ) -> Result<StatementResult, EngineError> {
        let sql = parsed.sql.as_str();
        match &parsed.statement {
            Statement::CreateSource {
                kind,
                name,
                read_only,
                or_replace,
                if_not_exists,
                columns,
                properties,
            } => {
                let kind = kind_of(*kind);
                let columns = columns
                    .iter()
                    .map(|c| DeclaredColumn {
                        name: c.name.clone(),
                        sql_type: c.sql_type.clone(),
                        role: match c.key {
                            ColumnKeyRole::Value => ColumnRole::Value,
                            ColumnKeyRole::Key => ColumnRole::Key,
                            ColumnKeyRole::PrimaryKey => ColumnRole::PrimaryKey,
                        },
                    })
                    .collect();
                let properties =
                    Properties::new(properties.iter().map(|p| (p.name.clone(), p.value.clone())))?;
                self.create_source(
                    kind,
                    name.clone(),
                    columns,
                    properties,
                    crate::ddl::CreateOptions {
                        read_only: *read_only,
                        or_replace: *or_replace,
                        if_not_exists: *if_not_exists,
                    },
                    sql,
                )
                .await
            }
            Statement::CreateSourceAs {
                kind,
                name,
                or_replace,
                if_not_exists,
                properties,
                select,
            } => {
                if *or_replace {
                    return Err(EngineError::invalid(
                        "CREATE OR REPLACE ... AS SELECT is not supported yet",
                    ));
                }
                let properties =
                    Properties::new(properties.iter().map(|p| (p.name.clone(), p.value.clone())))?;
                let select = SelectParts::from_select(select);
                self.create_source_as(
                    session,
                    kind_of(*kind),
                    name.clone(),
                    properties,
                    *if_not_exists,
                    &select,
                    sql,
                )
                .await
            }
            Statement::InsertSelect {
                target,
                properties,
                select,
            } => {
                let mut query_id = None;
                for property in properties {
                    if property.name == "QUERY_ID" {
                        query_id = Some(property.value.clone());
                    } else {
                        return Err(EngineError::invalid_with_hint(
                            format!("unknown property \"{}\" for INSERT INTO", property.name),
                            "the only property is QUERY_ID",
                        ));
                    }
                }
                self.insert_select(
                    session,
                    target,
                    query_id,
                    &SelectParts::from_select(select),
                    sql,
                )
                .await
            }
            Statement::InsertValues {
                target,
                columns,
                values,
            } => self.insert_values(target, columns, values).await,
            Statement::Select(select) => {
                let parts = SelectParts::from_select(select);
                if !select.partition_by.is_empty() {
                    return Err(EngineError::invalid(
                        "PARTITION BY is allowed only in CREATE STREAM ... AS SELECT",
                    ));
                }
                if parts.emit.is_none() {
                    return self.pull_query(session, &parts).await;
                }
                self.push_query(session, &parts).await
            }
            Statement::Show { target, .. } => match target {
                ShowTarget::Streams => Ok(self.show_sources(SourceKind::Stream)),
                ShowTarget::Tables => Ok(self.show_sources(SourceKind::Table)),
                ShowTarget::Topics => self.show_topics().await,
                ShowTarget::Queries => Ok(self.show_queries()),
                ShowTarget::Properties => Ok(self.show_properties(session)),
            },
            Statement::Describe { name, extended } => self.describe(name, *extended),
            Statement::Drop {
                kind,
                name,
                if_exists,
                delete_topic,
            } => {
                self.drop_source(kind_of(*kind), name, *if_exists, *delete_topic)
                    .await
            }
            Statement::Terminate { query_id } => self.terminate(query_id.as_deref()).await,
            Statement::ExplainSelect(select) => {
                let parts = SelectParts::from_select(select);
                self.explain_select(&parts).await
            }
            Statement::ExplainQuery { query_id } => self.explain_query(query_id).await,
            Statement::Print {
                topic,
                from_beginning,
                interval,
                limit,
            } => self.print(topic, *from_beginning, *interval, *limit).await,
            Statement::Set { name, value } => {
                let name = name.trim().to_owned();
                if let Some((_, Some(allowed))) =
                    SESSION_PROPERTIES.iter().find(|(n, _)| *n == name)
                {
                    let value = value.trim().to_lowercase();
                    if !allowed.contains(&value.as_str()) {
                        return Err(EngineError::invalid(format!(
                            "invalid value '{value}' for property '{name}'; valid values are {}",
                            allowed.join(", ")
                        )));
                    }
                    session.properties.insert(name.clone(), value.clone());
                    return Ok(StatementResult::Success {
                        message: format!("'{name}' set to '{value}'"),
                        query_id: None,
                    });
                }
                session.properties.insert(name.clone(), value.clone());
                Ok(StatementResult::Success {
                    message: format!("'{name}' set to '{value}'"),
                    query_id: None,
                })
            }
            Statement::Unset { name } => {
                let message = match session.properties.remove(name.trim()) {
                    Some(_) => format!("'{name}' unset"),
                    None => format!("'{name}' was not set"),
                };
                Ok(StatementResult::Success {
                    message,
                    query_id: None,
                })
            }
            Statement::Produce {
                topic,
                partition,
                key,
                value,
                timestamp_ms,
            } => {
                self.produce_raw(
                    topic,
                    *partition,
                    key.as_deref().map(str::as_bytes),
                    value.as_deref().map(str::as_bytes),
                    *timestamp_ms,
                )
                .await
            }
            Statement::RunScript { path } => Err(EngineError::invalid_with_hint(
                format!("RUN SCRIPT '{path}' runs in the eddy shell, which reads the file"),
                "send the script's statements themselves",
            )),
        }
    }

    /// `SHOW PROPERTIES`: the session's properties, then the server's limits.
    fn show_properties(&self, session: &Session) -> StatementResult {
        let mut rows: Vec<(String, String, String)> = session
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), "SESSION".to_owned(), v.clone()))
            .collect();
        if !session.properties.contains_key("auto.offset.reset") {
            rows.push((
                "auto.offset.reset".into(),
                "DEFAULT".into(),
                "latest".into(),
            ));
        }
        for (name, value) in self.inner.config.describe() {
            rows.push((name, "SERVER".into(), value));
        }
        StatementResult::Properties(rows)
    }
}
