//! `eddy cli --server URL`: the same shell over a server's REST API, the way ksqlDB's CLI talks to
//! ksqlDB. Statements are parsed here (so syntax errors point at their position without a round
//! trip); `SELECT` goes to `POST /query-stream` (delimited rows, streamed as they arrive, and the
//! query closed when Ctrl-C drops the connection), anything else to `POST /ksql`, whose entities
//! are printed as tables, and `PRINT` to `POST /query`, whose text lines are printed as they
//! come. `https://` servers are reached over TLS (rustls; the system's roots plus
//! `--tls-ca-file`). `SET`/`UNSET` are kept here and sent with every request as its
//! properties, as ksqlDB's CLI does.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use comfy_table::Table;
use eddy_sql::{ParsedStatement, Statement};
use serde_json::{Value, json};

use crate::CliError;
use crate::complete::CompletionNames;
use crate::render::{NULL_TEXT, PushTable, new_table};
use crate::repl::{ShellOutput, ShellTarget};

/// Longest wait for a server's answer to a statement (not for push query rows, which may be
/// minutes apart).
pub const REMOTE_STATEMENT_TIMEOUT_MS: u64 = 120_000;
/// Longest row line the shell takes from `/query-stream`.
pub const MAX_REMOTE_ROW_BYTES: usize = 16 * 1024 * 1024;
/// Width a streamed column gets at least, so that most values stay aligned.
const MIN_REMOTE_COLUMN_WIDTH: usize = 12;

/// A server the shell talks to.
pub struct RemoteTarget {
    http: reqwest::Client,
    base_url: String,
    basic_auth: Option<(String, String)>,
    properties: BTreeMap<String, String>,
}

/// Largest `--tls-ca-file` read, in bytes.
pub const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

/// The certificates of a PEM file, to trust as roots.
fn trusted_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, CliError> {
    use std::io::Read;
    let unreadable = |e: std::io::Error| {
        CliError::Remote(format!("cannot read the CA file {}: {e}", path.display()))
    };
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .map_err(unreadable)?
        .take(MAX_CA_FILE_BYTES + 1)
        .read_to_end(&mut pem)
        .map_err(unreadable)?;
    if pem.len() as u64 > MAX_CA_FILE_BYTES {
        return Err(CliError::Remote(format!(
            "the CA file {} is larger than {MAX_CA_FILE_BYTES} bytes",
            path.display()
        )));
    }
    let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        CliError::Remote(format!(
            "the CA file {} is not PEM certificates: {e}",
            path.display()
        ))
    })?;
    if certificates.is_empty() {
        return Err(CliError::Remote(format!(
            "the CA file {} holds no PEM \"CERTIFICATE\" block",
            path.display()
        )));
    }
    Ok(certificates)
}

impl RemoteTarget {
    /// Checks that `base_url` is an Eddy or ksqlDB server (`GET /info`); returns the target and
    /// the server's version line.
    ///
    /// An `https://` server's certificate must chain to a root the system trusts or to one of
    /// the certificates in `trusted_ca_path` (a PEM file).
    pub async fn connect(
        base_url: &str,
        basic_auth: Option<(String, String)>,
        trusted_ca_path: Option<&Path>,
    ) -> Result<(Self, String), CliError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(10));
        if let Some(path) = trusted_ca_path {
            for certificate in trusted_certificates(path)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder
            .build()
            .map_err(|e| CliError::Remote(format!("HTTP client: {e}")))?;
        let target = Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            basic_auth,
            properties: BTreeMap::new(),
        };
        let info: Value = target
            .request(reqwest::Method::GET, "/info")
            .timeout(Duration::from_millis(REMOTE_STATEMENT_TIMEOUT_MS))
            .send()
            .await
            .map_err(|e| CliError::Remote(format!("cannot reach {base_url}: {e}")))?
            .error_for_status()
            .map_err(|e| CliError::Remote(format!("{base_url}/info: {e}")))?
            .json_value()
            .await?;
        let version = info["KsqlServerInfo"]["version"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned();
        Ok((target, version))
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        match &self.basic_auth {
            Some((user, password)) => request.basic_auth(user, Some(password)),
            None => request,
        }
    }

    async fn ksql(&self, sql: &str) -> Result<Result<Vec<Value>, String>, CliError> {
        let response = self
            .request(reqwest::Method::POST, "/ksql")
            .header("Content-Type", "application/vnd.ksql.v1+json")
            .header("Accept", "application/vnd.ksql.v1+json")
            .timeout(Duration::from_millis(REMOTE_STATEMENT_TIMEOUT_MS))
            .body(json!({"ksql": sql, "streamsProperties": self.properties}).to_string())
            .send()
            .await
            .map_err(|e| CliError::Remote(format!("POST /ksql: {e}")))?;
        let status = response.status();
        let body = response.json_value().await?;
        if !status.is_success() {
            return Ok(Err(error_message(&body)));
        }
        match body {
            Value::Array(entities) => Ok(Ok(entities)),
            other => Ok(Err(format!("unexpected answer from /ksql: {other}"))),
        }
    }

    async fn query(
        &self,
        sql: &str,
        push: bool,
        out: &mut ShellOutput,
    ) -> Result<Result<(), String>, CliError> {
        let io_error = |e| CliError::io("writing to the terminal", e);
        let response = self
            .request(reqwest::Method::POST, "/query-stream")
            .header("Content-Type", "application/vnd.ksqlapi.delimited.v1")
            .header("Accept", "application/vnd.ksqlapi.delimited.v1")
            .body(json!({"sql": sql, "properties": self.properties}).to_string())
            .send()
            .await
            .map_err(|e| CliError::Remote(format!("POST /query-stream: {e}")))?;
        if !response.status().is_success() {
            let body = response.json_value().await?;
            return Ok(Err(error_message(&body)));
        }
        let mut lines = BodyLines::new(response);
        let mut table: Option<StreamedTable> = None;
        let mut interrupt = std::pin::pin!(tokio::signal::ctrl_c());
        let interrupted = loop {
            let line = tokio::select! {
                _ = &mut interrupt => break true,
                line = lines.next() => line?,
            };
            let Some(line) = line else {
                break false;
            };
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(line)
                .map_err(|e| CliError::Remote(format!("query row is not JSON: {e}")))?;
            match (&mut table, value) {
                (None, header @ Value::Object(_)) => {
                    if header.get("columnNames").is_none() {
                        return Ok(Err(error_message(&header)));
                    }
                    let streamed = StreamedTable::new(&header);
                    writeln!(out, "{}", streamed.header()).map_err(io_error)?;
                    table = Some(streamed);
                }
                (Some(table), Value::Array(values)) => {
                    writeln!(out, "{}", table.row(&values)).map_err(io_error)?;
                }
                (_, other) => {
                    if let Some(table) = &table {
                        writeln!(out, "{}", table.rule()).map_err(io_error)?;
                    }
                    return Ok(Err(error_message(&other)));
                }
            }
            out.flush().map_err(io_error)?;
        };
        // Dropping the response closes the stream, which ends the query on the server.
        drop(lines);
        if let Some(table) = &table {
            writeln!(out, "{}", table.rule()).map_err(io_error)?;
            if !interrupted && push {
                writeln!(out, "Limit Reached").map_err(io_error)?;
            } else if interrupted {
                writeln!(out, "Query terminated").map_err(io_error)?;
            }
        }
        out.flush().map_err(io_error)?;
        Ok(Ok(()))
    }

    /// `PRINT` through `POST /query` (as ksqlDB's CLI does): the server streams its lines as
    /// text; they are printed as they come until the `LIMIT` or Ctrl-C.
    async fn print(
        &self,
        sql: &str,
        out: &mut ShellOutput,
    ) -> Result<Result<(), String>, CliError> {
        let io_error = |e| CliError::io("writing to the terminal", e);
        let response = self
            .request(reqwest::Method::POST, "/query")
            .header("Content-Type", "application/vnd.ksql.v1+json")
            .body(json!({"ksql": sql, "streamsProperties": self.properties}).to_string())
            .send()
            .await
            .map_err(|e| CliError::Remote(format!("POST /query: {e}")))?;
        if !response.status().is_success() {
            let body = response.json_value().await?;
            return Ok(Err(error_message(&body)));
        }
        let mut lines = BodyLines::new(response);
        let mut interrupt = std::pin::pin!(tokio::signal::ctrl_c());
        loop {
            let line = tokio::select! {
                _ = &mut interrupt => {
                    writeln!(out, "Topic printing ceased").map_err(io_error)?;
                    break;
                }
                line = lines.next() => line?,
            };
            let Some(line) = line else {
                break;
            };
            // Bare newlines are the server's keepalives.
            if line.trim().is_empty() {
                continue;
            }
            writeln!(out, "{}", line.trim_end_matches('\r')).map_err(io_error)?;
            out.flush().map_err(io_error)?;
        }
        out.flush().map_err(io_error)?;
        Ok(Ok(()))
    }
}

/// The lines of a streamed response body, each at most [`MAX_REMOTE_ROW_BYTES`].
struct BodyLines {
    response: reqwest::Response,
    pending: Vec<u8>,
    ended: bool,
}

impl BodyLines {
    fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            pending: Vec::new(),
            ended: false,
        }
    }

    /// The next line without its newline; `None` at the end of the body.
    async fn next(&mut self) -> Result<Option<String>, CliError> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return Ok(Some(String::from_utf8_lossy(&line[..end]).into_owned()));
            }
            if self.pending.len() > MAX_REMOTE_ROW_BYTES {
                return Err(CliError::Remote(format!(
                    "a line of the answer is longer than {MAX_REMOTE_ROW_BYTES} bytes \
                     (MAX_REMOTE_ROW_BYTES)"
                )));
            }
            if self.ended {
                if self.pending.is_empty() {
                    return Ok(None);
                }
                let rest = std::mem::take(&mut self.pending);
                return Ok(Some(String::from_utf8_lossy(&rest).into_owned()));
            }
            match self
                .response
                .chunk()
                .await
                .map_err(|e| CliError::Remote(format!("reading the answer: {e}")))?
            {
                Some(chunk) => self.pending.extend_from_slice(&chunk),
                None => self.ended = true,
            }
        }
    }
}

#[async_trait::async_trait]
impl ShellTarget for RemoteTarget {
    async fn execute(
        &mut self,
        statement: &ParsedStatement,
        out: &mut ShellOutput,
    ) -> Result<Result<(), String>, CliError> {
        let io_error = |e| CliError::io("writing to the terminal", e);
        match &statement.statement {
            Statement::Set { name, value } => {
                self.properties
                    .insert(name.trim().to_owned(), value.clone());
                writeln!(out, "'{name}' set to '{value}'").map_err(io_error)?;
                Ok(Ok(()))
            }
            Statement::Unset { name } => {
                let message = match self.properties.remove(name.trim()) {
                    Some(_) => format!("'{name}' unset"),
                    None => format!("'{name}' was not set"),
                };
                writeln!(out, "{message}").map_err(io_error)?;
                Ok(Ok(()))
            }
            Statement::Select(select) => {
                let push = matches!(select.emit, Some(eddy_sql::Emit::Changes));
                self.query(&statement.sql, push, out).await
            }
            Statement::Print { .. } => self.print(&format!("{};", statement.sql), out).await,
            _ => {
                let entities = match self.ksql(&format!("{};", statement.sql)).await? {
                    Ok(entities) => entities,
                    Err(message) => return Ok(Err(message)),
                };
                for entity in &entities {
                    writeln!(out, "{}", render_entity(entity)).map_err(io_error)?;
                }
                out.flush().map_err(io_error)?;
                Ok(Ok(()))
            }
        }
    }

    async fn names(&mut self) -> CompletionNames {
        let mut names = CompletionNames::default();
        let Ok(Ok(entities)) = self
            .ksql("SHOW STREAMS EXTENDED; SHOW TABLES EXTENDED;")
            .await
        else {
            return names;
        };
        for entity in &entities {
            let Some(descriptions) = entity["sourceDescriptions"].as_array() else {
                continue;
            };
            for description in descriptions {
                if let Some(name) = description["name"].as_str() {
                    names.sources.push(name.to_owned());
                }
                for field in description["fields"].as_array().into_iter().flatten() {
                    if let Some(name) = field["name"].as_str()
                        && !names.columns.iter().any(|c| c == name)
                    {
                        names.columns.push(name.to_owned());
                    }
                }
            }
        }
        names
    }
}

/// Reads a body as JSON, or as a JSON string of its text when it is not JSON.
trait JsonBody {
    async fn json_value(self) -> Result<Value, CliError>;
}

impl JsonBody for reqwest::Response {
    async fn json_value(self) -> Result<Value, CliError> {
        let text = self
            .text()
            .await
            .map_err(|e| CliError::Remote(format!("reading the answer: {e}")))?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

/// The message of a ksqlDB error entity (`{"@type":"statement_error","message":...}`), of a
/// `/query-stream` error line, or the body itself.
fn error_message(body: &Value) -> String {
    body.get("message")
        .or_else(|| body.get("errorMessage"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| match body {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        })
}

/// A `/ksql` entity as the local shell would print it.
pub fn render_entity(entity: &Value) -> String {
    let text = |value: &Value| match value {
        Value::Null => NULL_TEXT.to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let rows = |items: &Value, columns: &[(&str, &str)]| -> String {
        let mut table: Table = new_table(&columns.iter().map(|(h, _)| *h).collect::<Vec<_>>());
        for item in items.as_array().into_iter().flatten() {
            table.add_row(columns.iter().map(|(_, field)| text(&item[*field])));
        }
        table.to_string()
    };
    match entity["@type"].as_str().unwrap_or_default() {
        "currentStatus" => text(&entity["commandStatus"]["message"]),
        "streams" => rows(
            &entity["streams"],
            &[
                ("Stream Name", "name"),
                ("Kafka Topic", "topic"),
                ("Key Format", "keyFormat"),
                ("Value Format", "valueFormat"),
            ],
        ),
        "tables" => rows(
            &entity["tables"],
            &[
                ("Table Name", "name"),
                ("Kafka Topic", "topic"),
                ("Key Format", "keyFormat"),
                ("Value Format", "valueFormat"),
            ],
        ),
        "queries" => rows(
            &entity["queries"],
            &[
                ("Query ID", "id"),
                ("Status", "state"),
                ("Query String", "queryString"),
            ],
        ),
        "kafka_topics" => rows(
            &entity["topics"],
            &[("Kafka Topic", "name"), ("Partitions", "replicaInfo")],
        ),
        "properties" => {
            let mut table = new_table(&["Property", "Value"]);
            if let Some(properties) = entity["properties"].as_object() {
                for (name, value) in properties {
                    table.add_row([name.clone(), text(value)]);
                }
            }
            table.to_string()
        }
        "sourceDescription" => {
            let description = &entity["sourceDescription"];
            let mut lines = vec![
                format!("Name                 : {}", text(&description["name"])),
                format!("Type                 : {}", text(&description["type"])),
                format!("Kafka topic          : {}", text(&description["topic"])),
                format!("Key format           : {}", text(&description["keyFormat"])),
                format!(
                    "Value format         : {}",
                    text(&description["valueFormat"])
                ),
            ];
            let mut fields = new_table(&["Field", "Type"]);
            for field in description["fields"].as_array().into_iter().flatten() {
                let mut kind = text(&field["schema"]["type"]);
                if let Some(key) = field["type"].as_str().filter(|t| *t == "KEY") {
                    kind = format!("{kind} ({key})");
                }
                fields.add_row([text(&field["name"]), kind]);
            }
            lines.push(fields.to_string());
            lines.join("\n")
        }
        "statement_error" | "generic_error" => format!("ERROR: {}", error_message(entity)),
        _ => serde_json::to_string_pretty(entity).unwrap_or_else(|_| entity.to_string()),
    }
}

/// A streamed result's layout: the local shell's push table, widths chosen from the header.
struct StreamedTable {
    table: PushTable,
}

impl StreamedTable {
    fn new(header: &Value) -> Self {
        let names: Vec<String> = header["columnNames"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| n.as_str().unwrap_or_default().to_owned())
            .collect();
        Self {
            table: PushTable::with_names(names, MIN_REMOTE_COLUMN_WIDTH),
        }
    }

    fn rule(&self) -> String {
        self.table.footer()
    }

    fn header(&self) -> String {
        self.table.header()
    }

    fn row(&self, values: &[Value]) -> String {
        let cells: Vec<String> = values
            .iter()
            .map(|v| match v {
                Value::Null => NULL_TEXT.to_owned(),
                Value::String(s) => s.replace('\n', "\\n"),
                other => other.to_string(),
            })
            .collect();
        self.table.line(&cells)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities_print_as_the_local_shell_prints_them() {
        let status = json!({"@type": "currentStatus", "commandStatus": {"status": "SUCCESS", "message": "stream \"S\" created"}});
        assert_eq!(render_entity(&status), "stream \"S\" created");
        let streams = json!({"@type": "streams", "streams": [{"name": "S", "topic": "s", "keyFormat": "KAFKA", "valueFormat": "JSON"}]});
        let text = render_entity(&streams);
        assert!(
            text.contains("Stream Name") && text.contains("| S "),
            "{text}"
        );
        let error =
            json!({"@type": "statement_error", "error_code": 40001, "message": "no such stream"});
        assert_eq!(render_entity(&error), "ERROR: no such stream");
    }

    #[test]
    fn streamed_rows_keep_the_header_widths() {
        let table = StreamedTable::new(&json!({"columnNames": ["ID", "QTY"]}));
        let row = table.row(&[json!("a"), json!(7)]);
        assert_eq!(row.len(), table.rule().len());
        assert!(row.starts_with("| a "), "{row}");
        assert_eq!(
            table
                .row(&[Value::Null, json!(1)])
                .matches(NULL_TEXT)
                .count(),
            1
        );
    }
}
