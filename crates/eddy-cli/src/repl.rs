//! The interactive shell.
//!
//! rustyline blocks its thread while it waits for a key, so each `readline` runs on tokio's
//! blocking pool and hands the editor back when it returns; the engine's queries keep running on
//! the runtime meanwhile. A statement may span lines (prompt `eddy> `, then `   -> `) and ends with a
//! `;` outside strings and comments ([`eddy_sql::is_complete`]). Ctrl-C clears the statement being
//! typed, cancels a statement being executed, and stops a running push query or `PRINT`; Ctrl-D,
//! `exit` or `quit` leave.

use std::io::Write;
use std::path::{Path, PathBuf};

use eddy_engine::{Engine, Session};
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

use crate::CliError;
use crate::render::print_result;

/// Prompt of a new statement.
pub const PROMPT: &str = "eddy> ";
/// Prompt of the following lines of a statement.
pub const CONTINUATION_PROMPT: &str = "   -> ";
/// Name of the history file in the data directory.
pub const HISTORY_FILE_NAME: &str = "history";
/// History file in the home directory when there is no data directory.
pub const HOME_HISTORY_FILE_NAME: &str = ".eddy_history";

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
    /// `exit` or `quit`.
    Exit,
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

/// Runs the shell until `exit`, `quit` or Ctrl-D. Statement errors are printed as
/// `ERROR: <message>` and the shell goes on; only a failing terminal ends it with an error.
pub async fn run(engine: Engine, config: ReplConfig) -> Result<(), CliError> {
    let mut editor = DefaultEditor::new().map_err(|e| CliError::Editor(e.to_string()))?;
    if let Some(path) = &config.history_path {
        // A missing history file is normal on the first run.
        let _ = editor.load_history(path);
    }
    if let Some(banner) = &config.banner {
        println!("{banner}");
    }
    let mut session = Session::new();
    let mut buffer = InputBuffer::default();
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
        match buffer.push_line(&line) {
            Input::Pending => {}
            Input::Exit => break,
            Input::Statements(sql) => {
                let _ = editor.add_history_entry(sql.as_str());
                if let Some(path) = &config.history_path
                    && let Err(error) = editor.save_history(path)
                {
                    tracing::debug!(%error, path = %path.display(), "cannot save the history");
                }
                execute(&engine, &mut session, &sql).await?;
            }
        }
    }
    Ok(())
}

/// Executes the statements of `sql` one by one, printing each result as soon as it is there (so a
/// failing statement does not hide the results of those before it); Ctrl-C cancels the statement
/// being executed. A syntax error anywhere executes nothing.
async fn execute(engine: &Engine, session: &mut Session, sql: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout();
    let io_error = |e| CliError::io("writing to the terminal", e);
    let statements = match eddy_sql::parse_statements(sql) {
        Ok(statements) => statements,
        Err(error) => {
            writeln!(stdout, "ERROR: {error}").map_err(io_error)?;
            return stdout.flush().map_err(io_error);
        }
    };
    for statement in &statements {
        let outcome = tokio::select! {
            outcome = engine.execute_statement(session, statement) => outcome,
            _ = tokio::signal::ctrl_c() => {
                println!("ERROR: cancelled; the statement may have been partly applied");
                return Ok(());
            }
        };
        match outcome {
            Ok(result) => {
                print_result(result, &mut stdout, tokio::signal::ctrl_c())
                    .await
                    .map_err(io_error)?;
            }
            Err(error) => {
                writeln!(stdout, "ERROR: {error}").map_err(io_error)?;
                break;
            }
        }
        stdout.flush().map_err(io_error)?;
    }
    stdout.flush().map_err(io_error)
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
    fn history_lives_in_the_data_dir() {
        assert_eq!(
            default_history_path(Some(Path::new("/d"))),
            Some(PathBuf::from("/d/history"))
        );
    }
}
