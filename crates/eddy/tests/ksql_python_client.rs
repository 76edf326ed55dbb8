//! A ksqlDB client from PyPI against `eddy server`, unmodified: ksql-python-ng (pinned), which
//! speaks `/ksql`, `/query`, `/query-stream` over HTTP/2 and `/close-query`. The script it runs
//! is `tests/clients/ksql_python_ng.py`.
//!
//! Needs python3 and PyPI: the client is installed into a virtual environment under
//! `$HOME/.cache/eddy-pyclients` (`EDDY_PYCLIENTS_VENV` overrides it) on first use. Needs a
//! broker: the server starts its own embedded one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

mod common;

/// The client, as installed: its version is pinned so that the test means the same every run.
const CLIENT: &str = "ksql-python-ng==0.29.0.1";
/// The client passes `cert=` to `httpx.get`, which httpx 0.28 removed: the last httpx it runs on.
const HTTPX: &str = "httpx[http2]==0.27.2";

fn venv_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EDDY_PYCLIENTS_VENV") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".cache").join("eddy-pyclients")
}

async fn run(program: &Path, args: &[&str]) -> std::process::Output {
    tokio::time::timeout(
        Duration::from_secs(600),
        Command::new(program).args(args).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{} {args:?} finishes within 600 s", program.display()))
    .unwrap_or_else(|e| panic!("{} runs: {e}", program.display()))
}

/// The venv's python with the client installed.
async fn python_with_client() -> PathBuf {
    let venv = venv_dir();
    let python = venv.join("bin").join("python");
    if !python.exists() {
        let output = run(
            Path::new("python3"),
            &["-m", "venv", &venv.to_string_lossy()],
        )
        .await;
        assert!(
            output.status.success(),
            "python3 -m venv: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let check = run(
        &python,
        &[
            "-c",
            "import importlib.metadata as m; print(m.version('ksql-python-ng'), m.version('httpx'))",
        ],
    )
    .await;
    let installed = String::from_utf8_lossy(&check.stdout).trim().to_owned();
    let wanted = [CLIENT, HTTPX]
        .map(|requirement| requirement.split("==").nth(1).unwrap_or_default())
        .join(" ");
    if !check.status.success() || installed != wanted {
        let output = run(
            &python,
            &[
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                CLIENT,
                HTTPX,
            ],
        )
        .await;
        assert!(
            output.status.success(),
            "pip install {CLIENT} {HTTPX}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ksql_python_ng_works_against_eddy() {
    let python = python_with_client().await;
    let server = common::start_server().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("clients")
        .join("ksql_python_ng.py");
    let output = run(&python, &[&script.to_string_lossy(), &server.url]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("ksql-python-ng: ok"),
        "the client failed:\n{stdout}\n{stderr}"
    );
}
