//! The interactive shell.
//!
//! rustyline blocks its thread while it waits for a key, so each `readline` runs on tokio's
//! blocking pool and hands the editor back when it returns; the engine's queries keep running on
//! the runtime meanwhile. A statement may span lines (prompt `eddy> `, then `   -> `) and ends with a
//! `;` outside strings and comments ([`eddy_sql::is_complete`]). Ctrl-C clears the statement being
//! typed, cancels a statement being executed, and stops a running push query or `PRINT`; Ctrl-D,
//! `exit` or `quit` leave.
//!
//! Besides statements the shell knows a few commands of its own (`help`, `SPOOL file|OFF`,
//! `RUN SCRIPT 'file.sql'`), completes words with Tab ([`crate::complete`]), and shows where a
//! syntax error is, PostgreSQL's way: the line and a caret under the offending token.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use eddy_engine::{Engine, Session};
use eddy_sql::{ParseError, ParsedStatement, Statement};
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{CompletionType, Config, Editor};

use crate::CliError;
use crate::complete::{CompletionNames, SharedNames, ShellHelper};
use crate::render::print_result;

/// Prompt of a new statement.
pub const PROMPT: &str = "eddy> ";
/// Prompt of the following lines of a statement.
pub const CONTINUATION_PROMPT: &str = "   -> ";
/// Name of the history file in the data directory.
pub const HISTORY_FILE_NAME: &str = "history";
/// History file in the home directory when there is no data directory.
pub const HOME_HISTORY_FILE_NAME: &str = ".eddy_history";
/// Largest file `RUN SCRIPT` reads.
pub const MAX_SCRIPT_BYTES: u64 = 16 * 1024 * 1024;
/// How deep scripts may run scripts (`RUN SCRIPT` inside a script).
pub const MAX_SCRIPT_DEPTH: usize = 8;

/// What `help` prints.
pub const HELP_TEXT: &str = "\
Statements end with ';' and may span lines. Tab completes keywords, streams, tables and columns.

  CREATE STREAM|TABLE name (col TYPE [KEY|PRIMARY KEY], ...) WITH (KAFKA_TOPIC='t', VALUE_FORMAT='JSON', ...);
  CREATE STREAM|TABLE name [WITH (...)] AS SELECT ...;   a persistent query writing a new topic
  INSERT INTO name SELECT ...;  INSERT INTO name (cols) VALUES (...);
  SELECT ... FROM name [WHERE ...] EMIT CHANGES [LIMIT n];   a push query (Ctrl-C stops it)
  SELECT ... FROM table WHERE key = ...;                     a pull query
  SHOW STREAMS|TABLES|TOPICS|QUERIES|PROPERTIES;  DESCRIBE [EXTENDED] name;  EXPLAIN query|SELECT;
  PRINT topic [FROM BEGINNING] [INTERVAL n] [LIMIT n];  PRODUCE TO topic [KEY 'k'] VALUE 'v';
  DROP STREAM|TABLE [IF EXISTS] name [DELETE TOPIC];  TERMINATE query_id|ALL;
  SET 'property'='value';  UNSET 'property';   e.g. SET 'auto.offset.reset'='earliest';

Shell commands:
  RUN SCRIPT 'file.sql';   execute the statements of a file (it stops at the first error)
  SPOOL file | SPOOL OFF   also write statements and their results to a file
  help                     this text
  exit | quit | Ctrl-D     leave (Ctrl-C clears the line or stops what runs)

Docs: docs/sql.md in the Eddy repository.";

/// Settings of the shell.
#[derive(Debug, Clone, Default)]
pub struct ReplConfig {
    /// Where statements are remembered between sessions; `None` keeps no history.
    pub history_path: Option<PathBuf>,
    /// Printed once before the first prompt.
    pub banner: Option<String>,
}

/// `DATA_DIR/history` when there is a data directory, else `$HOME/.eddy_history`.
pub fn default_history_path(data_dir: Option<&Path>) -> Option<PathBuf> {
    match data_dir {
        Some(dir) => Some(dir.join(HISTORY_FILE_NAME)),
        None => {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(HOME_HISTORY_FILE_NAME))
        }
    }
}

/// What a line of input did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Nothing to run yet: the line was blank or the statement goes on.
    Pending,
    /// One or more complete statements to execute.
    Statements(String),
    /// A command of the shell itself.
    Command(ShellCommand),
    /// `exit` or `quit`.
    Exit,
}

/// Commands of the shell that take one line and need no `;`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellCommand {
    /// `help`.
    Help,
    /// `SPOOL file`: write what follows to the file too.
    SpoolTo(PathBuf),
    /// `SPOOL OFF`.
    SpoolOff,
}

impl ShellCommand {
    /// The command a whole line is, if it is one.
    pub fn parse(line: &str) -> Option<ShellCommand> {
        let line = line.trim().trim_end_matches(';').trim();
        if line.eq_ignore_ascii_case("help") || line == "?" {
            return Some(ShellCommand::Help);
        }
        let (word, rest) = line.split_once(char::is_whitespace)?;
        if !word.eq_ignore_ascii_case("spool") {
            return None;
        }
        let target = rest.trim();
        let target = target
            .strip_prefix('\'')
            .and_then(|t| t.strip_suffix('\''))
            .unwrap_or(target);
        if target.is_empty() {
            None
        } else if target.eq_ignore_ascii_case("off") {
            Some(ShellCommand::SpoolOff)
        } else {
            Some(ShellCommand::SpoolTo(PathBuf::from(target)))
        }
    }
}

/// Lines typed so far of the statement being entered.
#[derive(Debug, Default)]
pub struct InputBuffer {
    text: String,
}

impl InputBuffer {
    /// True when no statement is being typed.
    pub fn is_empty(&self) -> bool {
        self.text.trim().is_empty()
    }

    /// The prompt for the next line.
    pub fn prompt(&self) -> &'static str {
        if self.is_empty() {
            PROMPT
        } else {
            CONTINUATION_PROMPT
        }
    }

    /// Forgets the statement being typed (Ctrl-C).
    pub fn clear(&mut self) {
        self.text.clear();
    }

    /// Adds a line; returns the statements once they end with `;`.
    pub fn push_line(&mut self, line: &str) -> Input {
        if self.is_empty() {
            let word = line.trim().trim_end_matches(';').trim();
            if word.eq_ignore_ascii_case("exit") || word.eq_ignore_ascii_case("quit") {
                self.text.clear();
                return Input::Exit;
            }
            if let Some(command) = ShellCommand::parse(line) {
                self.text.clear();
                return Input::Command(command);
            }
        }
        if self.is_empty() && line.trim().is_empty() {
            self.text.clear();
            return Input::Pending;
        }
        self.text.push_str(line);
        self.text.push('\n');
        if eddy_sql::is_complete(&self.text) {
            let text = std::mem::take(&mut self.text);
            Input::Statements(text.trim().to_owned())
        } else {
            Input::Pending
        }
    }
}

/// Where the shell writes: the terminal, and the spool file while one is open.
#[derive(Default)]
pub struct ShellOutput {
    spool: Option<(PathBuf, File)>,
}

impl ShellOutput {
    /// Starts spooling to `path` (appending), ending any spool before.
    pub fn spool_to(&mut self, path: &Path) -> std::io::Result<()> {
        let file = File::options().create(true).append(true).open(path)?;
        self.spool = Some((path.to_owned(), file));
        Ok(())
    }

    /// Ends spooling; the file it wrote, if any.
    pub fn spool_off(&mut self) -> Option<PathBuf> {
        self.spool.take().map(|(path, _)| path)
    }

    /// Writes `text` to the spool file only (the terminal has it already: what was typed).
    fn spool_only(&mut self, text: &str) -> std::io::Result<()> {
        match &mut self.spool {
            Some((_, file)) => writeln!(file, "{text}"),
            None => Ok(()),
        }
    }
}

impl Write for ShellOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stdout().write_all(buf)?;
        if let Some((_, file)) = &mut self.spool {
            file.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()?;
        if let Some((_, file)) = &mut self.spool {
            file.flush()?;
        }
        Ok(())
    }
}

/// Runs the shell until `exit`, `quit` or Ctrl-D. Statement errors are printed as
/// `ERROR: <message>` and the shell goes on; only a failing terminal ends it with an error.
pub async fn run(engine: Engine, config: ReplConfig) -> Result<(), CliError> {
    run_on(
        LocalTarget {
            engine,
            session: Session::new(),
        },
        config,
    )
    .await
}

/// What the shell executes statements on: the engine in this process, or a server over REST
/// ([`crate::remote`]).
#[async_trait::async_trait]
pub trait ShellTarget: Send {
    /// Executes one statement and writes its result (streaming push queries until their
    /// `LIMIT`, their end or Ctrl-C); an error is returned, not written.
    async fn execute(
        &mut self,
        statement: &ParsedStatement,
        out: &mut ShellOutput,
    ) -> Result<Result<(), String>, CliError>;

    /// The stream, table and column names Tab completes, as of now.
    async fn names(&mut self) -> CompletionNames;
}

/// The engine of this process and the shell's session on it.
pub struct LocalTarget {
    pub engine: Engine,
    pub session: Session,
}

#[async_trait::async_trait]
impl ShellTarget for LocalTarget {
    async fn execute(
        &mut self,
        statement: &ParsedStatement,
        out: &mut ShellOutput,
    ) -> Result<Result<(), String>, CliError> {
        let io_error = |e| CliError::io("writing to the terminal", e);
        let outcome = tokio::select! {
            outcome = self.engine.execute_statement(&mut self.session, statement) => outcome,
            _ = tokio::signal::ctrl_c() => {
                return Ok(Err("cancelled; the statement may have been partly applied".into()));
            }
        };
        match outcome {
            Ok(result) => {
                print_result(result, out, tokio::signal::ctrl_c())
                    .await
                    .map_err(io_error)?;
                Ok(Ok(()))
            }
            Err(error) => Ok(Err(error.to_string())),
        }
    }

    async fn names(&mut self) -> CompletionNames {
        let catalog = self.engine.catalog();
        let mut fresh = CompletionNames::default();
        for source in catalog.sources() {
            fresh.sources.push(source.name.clone());
            for column in &source.columns {
                if !fresh.columns.contains(&column.name) {
                    fresh.columns.push(column.name.clone());
                }
            }
        }
        fresh
    }
}

/// Runs the shell on `target` until `exit`, `quit` or Ctrl-D.
pub async fn run_on<T: ShellTarget>(mut target: T, config: ReplConfig) -> Result<(), CliError> {
    let names: SharedNames = Arc::new(RwLock::new(CompletionNames::default()));
    let editor_config = Config::builder()
        .completion_type(CompletionType::List)
        .auto_add_history(false)
        .build();
    let mut editor: Editor<ShellHelper, DefaultHistory> =
        Editor::with_config(editor_config).map_err(|e| CliError::Editor(e.to_string()))?;
    editor.set_helper(Some(ShellHelper::new(Arc::clone(&names))));
    if let Some(path) = &config.history_path {
        // A missing history file is normal on the first run.
        let _ = editor.load_history(path);
    }
    if let Some(banner) = &config.banner {
        println!("{banner}");
    }
    let mut buffer = InputBuffer::default();
    let mut out = ShellOutput::default();
    let io_error = |e| CliError::io("writing to the terminal", e);
    refresh_names(&mut target, &names).await;
    loop {
        let prompt = buffer.prompt();
        let (returned, line) = tokio::task::spawn_blocking(move || {
            let line = editor.readline(prompt);
            (editor, line)
        })
        .await
        .map_err(|e| CliError::Internal(format!("line editor task: {e}")))?;
        editor = returned;
        let line = match line {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(error) => return Err(CliError::Editor(error.to_string())),
        };
        let remember = |editor: &mut Editor<ShellHelper, DefaultHistory>, entry: &str| {
            let _ = editor.add_history_entry(entry);
            if let Some(path) = &config.history_path
                && let Err(error) = editor.save_history(path)
            {
                tracing::debug!(%error, path = %path.display(), "cannot save the history");
            }
        };
        match buffer.push_line(&line) {
            Input::Pending => {}
            Input::Exit => break,
            Input::Command(command) => {
                remember(&mut editor, line.trim());
                run_command(&command, &mut out).map_err(io_error)?;
            }
            Input::Statements(sql) => {
                remember(&mut editor, sql.as_str());
                out.spool_only(&format!("{PROMPT}{sql}"))
                    .map_err(io_error)?;
                execute(&mut target, &sql, &mut out, None, 0).await?;
                refresh_names(&mut target, &names).await;
            }
        }
    }
    out.flush().map_err(io_error)
}

fn run_command(command: &ShellCommand, out: &mut ShellOutput) -> std::io::Result<()> {
    match command {
        ShellCommand::Help => writeln!(out, "{HELP_TEXT}")?,
        ShellCommand::SpoolTo(path) => match out.spool_to(path) {
            Ok(()) => writeln!(out, "Spooling to '{}'.", path.display())?,
            Err(error) => writeln!(out, "ERROR: cannot spool to '{}': {error}", path.display())?,
        },
        ShellCommand::SpoolOff => match out.spool_off() {
            Some(path) => writeln!(out, "Stopped spooling to '{}'.", path.display())?,
            None => writeln!(out, "Not spooling.")?,
        },
    }
    out.flush()
}

/// Puts the target's names where the completer reads them.
async fn refresh_names<T: ShellTarget>(target: &mut T, names: &SharedNames) {
    let fresh = target.names().await;
    match names.write() {
        Ok(mut names) => *names = fresh,
        Err(poisoned) => *poisoned.into_inner() = fresh,
    }
}

/// `ERROR: <syntax error>` and, PostgreSQL's way, the offending line with a caret under the
/// column (tabs kept, so that the caret lines up).
pub fn syntax_error_text(sql: &str, error: &ParseError, origin: Option<&Path>) -> String {
    let mut text = match origin {
        Some(path) => format!("ERROR: in '{}': {error}", path.display()),
        None => format!("ERROR: {error}"),
    };
    let Some(line) = usize::try_from(error.line)
        .ok()
        .filter(|l| *l > 0)
        .and_then(|l| sql.lines().nth(l - 1))
    else {
        return text;
    };
    let label = format!("LINE {}: ", error.line);
    let column = usize::try_from(error.column).unwrap_or(0).saturating_sub(1);
    let pad: String = line
        .chars()
        .take(column)
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    text.push_str(&format!(
        "\n{label}{line}\n{}{pad}^",
        " ".repeat(label.len())
    ));
    text
}

/// Executes the statements of `sql` one by one, printing each result as soon as it is there (so a
/// failing statement does not hide the results of those before it); Ctrl-C cancels the statement
/// being executed. A syntax error anywhere executes nothing. `origin` is the script `sql` comes
/// from, `depth` how many scripts run it. Returns whether every statement succeeded.
async fn execute<T: ShellTarget>(
    target: &mut T,
    sql: &str,
    out: &mut ShellOutput,
    origin: Option<&Path>,
    depth: usize,
) -> Result<bool, CliError> {
    let io_error = |e| CliError::io("writing to the terminal", e);
    let statements = match eddy_sql::parse_statements(sql) {
        Ok(statements) => statements,
        Err(error) => {
            writeln!(out, "{}", syntax_error_text(sql, &error, origin)).map_err(io_error)?;
            out.flush().map_err(io_error)?;
            return Ok(false);
        }
    };
    for statement in &statements {
        if let Statement::RunScript { path } = &statement.statement {
            let path = match origin.and_then(Path::parent) {
                Some(dir) if Path::new(path).is_relative() => dir.join(path),
                _ => PathBuf::from(path),
            };
            if !Box::pin(run_script(target, &path, out, depth + 1)).await? {
                return Ok(false);
            }
            continue;
        }
        match target.execute(statement, out).await? {
            Ok(()) => {}
            Err(error) => {
                match origin {
                    Some(path) => writeln!(
                        out,
                        "ERROR: in '{}', line {}: {error}",
                        path.display(),
                        statement.line
                    ),
                    None => writeln!(out, "ERROR: {error}"),
                }
                .map_err(io_error)?;
                out.flush().map_err(io_error)?;
                return Ok(false);
            }
        }
        out.flush().map_err(io_error)?;
    }
    out.flush().map_err(io_error)?;
    Ok(true)
}

/// `RUN SCRIPT`: reads the file (at most [`MAX_SCRIPT_BYTES`]) and executes its statements,
/// stopping at the first that fails.
async fn run_script<T: ShellTarget>(
    target: &mut T,
    path: &Path,
    out: &mut ShellOutput,
    depth: usize,
) -> Result<bool, CliError> {
    let io_error = |e| CliError::io("writing to the terminal", e);
    if depth > MAX_SCRIPT_DEPTH {
        writeln!(
            out,
            "ERROR: RUN SCRIPT '{}': scripts run scripts more than {MAX_SCRIPT_DEPTH} deep",
            path.display()
        )
        .map_err(io_error)?;
        return Ok(false);
    }
    let sql = match read_script(path) {
        Ok(sql) => sql,
        Err(message) => {
            writeln!(out, "ERROR: RUN SCRIPT '{}': {message}", path.display()).map_err(io_error)?;
            return Ok(false);
        }
    };
    Box::pin(execute(target, &sql, out, Some(path), depth)).await
}

fn read_script(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = File::open(path).map_err(|e| e.to_string())?;
    let mut sql = String::new();
    let read = file
        .take(MAX_SCRIPT_BYTES + 1)
        .read_to_string(&mut sql)
        .map_err(|e| e.to_string())?;
    if read as u64 > MAX_SCRIPT_BYTES {
        return Err(format!(
            "the file is larger than {MAX_SCRIPT_BYTES} bytes (MAX_SCRIPT_BYTES)"
        ));
    }
    Ok(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_span_lines_until_a_semicolon() {
        let mut buffer = InputBuffer::default();
        assert_eq!(buffer.prompt(), PROMPT);
        assert_eq!(buffer.push_line("SELECT *"), Input::Pending);
        assert_eq!(buffer.prompt(), CONTINUATION_PROMPT);
        assert_eq!(buffer.push_line("FROM s WHERE x = ';'"), Input::Pending);
        assert_eq!(
            buffer.push_line("EMIT CHANGES;"),
            Input::Statements("SELECT *\nFROM s WHERE x = ';'\nEMIT CHANGES;".into())
        );
        assert_eq!(buffer.prompt(), PROMPT);
    }

    #[test]
    fn exit_and_quit_leave_only_between_statements() {
        let mut buffer = InputBuffer::default();
        assert_eq!(buffer.push_line("  EXIT "), Input::Exit);
        assert_eq!(buffer.push_line("quit;"), Input::Exit);
        assert_eq!(buffer.push_line("SELECT"), Input::Pending);
        assert_eq!(buffer.push_line("quit"), Input::Pending);
        buffer.clear();
        assert!(buffer.is_empty());
    }

    #[test]
    fn blank_lines_are_ignored() {
        let mut buffer = InputBuffer::default();
        assert_eq!(buffer.push_line("   "), Input::Pending);
        assert_eq!(buffer.prompt(), PROMPT);
    }

    #[test]
    fn help_and_spool_are_shell_commands_between_statements() {
        let mut buffer = InputBuffer::default();
        assert_eq!(buffer.push_line("help"), Input::Command(ShellCommand::Help));
        assert_eq!(
            buffer.push_line("SPOOL '/tmp/out.txt';"),
            Input::Command(ShellCommand::SpoolTo("/tmp/out.txt".into()))
        );
        assert_eq!(
            buffer.push_line("spool off"),
            Input::Command(ShellCommand::SpoolOff)
        );
        assert_eq!(buffer.push_line("SELECT"), Input::Pending);
        assert_eq!(buffer.push_line("help"), Input::Pending);
        assert_eq!(ShellCommand::parse("spool"), None);
    }

    #[test]
    fn a_syntax_error_shows_its_line_with_a_caret() {
        let sql = "SHOW STREAMS;\nSELECT * FRM s EMIT CHANGES;";
        let error = eddy_sql::parse_statements(sql).unwrap_err();
        let text = syntax_error_text(sql, &error, None);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("ERROR: syntax error at line 2"),
            "{text}"
        );
        assert_eq!(lines[1], "LINE 2: SELECT * FRM s EMIT CHANGES;");
        let caret = lines[2].find('^').unwrap() - "LINE 2: ".len();
        assert_eq!(&lines[1]["LINE 2: ".len() + caret..][..3], "FRM", "{text}");
    }

    #[test]
    fn scripts_are_bounded() {
        let dir = std::env::temp_dir().join(format!("eddy-script-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.sql");
        let file = File::create(&path).unwrap();
        file.set_len(MAX_SCRIPT_BYTES + 1).unwrap();
        assert!(read_script(&path).unwrap_err().contains("larger than"));
        assert!(read_script(&dir.join("missing.sql")).is_err());
        std::fs::write(&path, "SHOW STREAMS;").unwrap();
        assert_eq!(read_script(&path).unwrap(), "SHOW STREAMS;");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn history_lives_in_the_data_dir() {
        assert_eq!(
            default_history_path(Some(Path::new("/d"))),
            Some(PathBuf::from("/d/history"))
        );
    }
}
