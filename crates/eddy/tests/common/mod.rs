//! What the tests that run the `eddy` binary share: starting it against a broker, feeding a
//! REPL session its statements, and reading the tables it prints.

// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// Bound of one run of the `eddy` REPL (start, statements, shutdown).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// The `eddy` binary on `bootstrap` with its data in `data_dir` (also its `HOME`, for the
/// history), logging `log` (`EDDY_LOG` syntax), with piped standard streams.
pub fn eddy(bootstrap: &str, data_dir: &Path, service_id: &str, log: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_eddy"));
    command
        .arg("--bootstrap-servers")
        .arg(bootstrap)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--service-id")
        .arg(service_id)
        .env("EDDY_LOG", log)
        .env("NO_COLOR", "1")
        .env("HOME", data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs `statements` in a fresh `eddy` REPL to the end of its input; returns (stdout, stderr).
/// A run that does not end within [`RUN_TIMEOUT`] is killed and the test fails with what it
/// printed so far.
pub async fn run_statements(
    bootstrap: &str,
    data_dir: &Path,
    service_id: &str,
    statements: &str,
) -> (String, String) {
    let mut child = eddy(bootstrap, data_dir, service_id, "warn,eddy_runtime=info")
        .spawn()
        .expect("eddy starts");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(statements.as_bytes())
        .await
        .expect("statements written");
    drop(stdin);
    // Read both pipes on their own tasks, so that a run that hangs still shows its output.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let stdout = tokio::spawn(async move {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text).await;
        String::from_utf8_lossy(&text).into_owned()
    });
    let stderr = tokio::spawn(async move {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text).await;
        String::from_utf8_lossy(&text).into_owned()
    });
    let finished = tokio::time::timeout(RUN_TIMEOUT, child.wait()).await;
    if finished.is_err() {
        let _ = child.kill().await;
    }
    let stdout = stdout.await.expect("stdout reader");
    let stderr = stderr.await.expect("stderr reader");
    match finished {
        Ok(status) => {
            status.expect("eddy runs");
        }
        Err(_) => panic!(
            "eddy did not finish within {RUN_TIMEOUT:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        ),
    }
    (stdout, stderr)
}

/// The cells of a table line (`| a | b |`).
pub fn cells(line: &str) -> Vec<String> {
    line.trim()
        .trim_matches('|')
        .split('|')
        .map(|cell| cell.trim().to_owned())
        .collect()
}

/// The cells of every table row printed (lines between `|`), header rows included.
pub fn rows(stdout: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .filter(|line| line.trim_start().starts_with('|'))
        .map(cells)
        .collect()
}

/// Whether a printed table has a row of exactly these cells.
pub fn has_row(stdout: &str, cells: &[&str]) -> bool {
    rows(stdout).iter().any(|row| row == cells)
}

/// A running `eddy server` and its address.
pub struct Server {
    child: Child,
    pub url: String,
    pub data: tempfile::TempDir,
    /// What the server printed before it listened.
    pub startup_output: Vec<String>,
}

impl Server {
    /// Stops the server as SIGTERM does and returns its data directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
        self.data
    }
}

/// `eddy server` on an embedded broker in a temporary directory, both on free ports.
pub async fn start_server() -> Server {
    let data = tempfile::tempdir().expect("temporary directory");
    start_server_with(data, &[]).await
}

/// `eddy server ARGS` with its data in `data`, on an embedded broker, both on free ports.
pub async fn start_server_with(data: tempfile::TempDir, args: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .arg("--data-dir")
        .arg(data.path())
        .arg("--broker-port")
        .arg("0")
        .arg("server")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .args(args)
        .env("EDDY_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("eddy server starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut startup_output = Vec::new();
    let url = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.expect("server output") {
            if let Some(url) = line.strip_prefix("Eddy REST API listening on ") {
                return url.trim().to_owned();
            }
            startup_output.push(line);
        }
        panic!("eddy server exited before listening: {startup_output:?}");
    })
    .await
    .expect("eddy server listens within 120 s");
    // Keep reading so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Server {
        child,
        url,
        data,
        startup_output,
    }
}
