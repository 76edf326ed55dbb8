//! The examples under `examples/` run as their READMEs say: `eddy server` (here on an embedded
//! broker in a temporary directory, on a free port), then the example's `run.sh`, which talks to
//! the server with curl only. Needs a broker: it starts its own (the server's embedded one).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running `eddy server` and its address.
struct Server {
    _child: Child,
    url: String,
    _data: tempfile::TempDir,
}

async fn start_server() -> Server {
    let data = tempfile::tempdir().expect("temporary directory");
    let mut child = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .arg("--data-dir")
        .arg(data.path())
        .arg("--broker-port")
        .arg("0")
        .arg("server")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env("EDDY_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("eddy server starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let url = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.expect("server output") {
            if let Some(url) = line.strip_prefix("Eddy REST API listening on ") {
                return url.trim().to_owned();
            }
        }
        panic!("eddy server exited before listening");
    })
    .await
    .expect("eddy server listens within 120 s");
    // Keep reading so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Server {
        _child: child,
        url,
        _data: data,
    }
}

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// Runs an example's `run.sh` against `url`; returns its stdout, failing on a non-zero exit.
async fn run_example(name: &str, url: &str, env: &[(&str, &str)]) -> String {
    let script = repository_root().join("examples").join(name).join("run.sh");
    let output = tokio::time::timeout(
        Duration::from_secs(300),
        Command::new("bash")
            .arg(&script)
            .env("EDDY_URL", url)
            .envs(env.iter().copied())
            .output(),
    )
    .await
    .expect("the example finishes within 300 s")
    .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{name}/run.sh failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Word counts as `\W+` splitting gives them: runs of letters, digits and `_`, lower-cased.
fn count_words(text: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for word in text
        .to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
    {
        *counts.entry(word.to_owned()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn the_examples_run_from_their_readmes() {
    let server = start_server().await;

    // Word count: the table holds exactly the counts of lines.txt, then moves with one more line.
    let text = std::fs::read_to_string(repository_root().join("examples/wordcount/lines.txt"))
        .expect("lines.txt");
    let stdout = run_example("wordcount", &server.url, &[]).await;
    let (before, after) = stdout
        .split_once("after one more line")
        .expect("the script shows counts twice");
    let mut shown: BTreeMap<String, u64> = BTreeMap::new();
    for line in before.lines().filter(|l| l.starts_with("  ")) {
        let (word, count) = line.trim().split_once(' ').expect("word count");
        shown.insert(word.to_owned(), count.parse().expect("a count"));
    }
    let expected = count_words(&text);
    assert_eq!(shown, expected, "word counts of lines.txt\n{stdout}");
    let the = expected.get("the").copied().unwrap_or(0);
    assert!(
        after.contains(&format!("  the {}", the + 2)) && after.contains("  end 2"),
        "one more line moves the counts\n{stdout}"
    );

    // Inventory: the script checks every count it reads against the events it sent and fails
    // otherwise; a second run continues from the first one's state.
    let stdout = run_example("inventory", &server.url, &[("EVENTS", "30"), ("SEED", "3")]).await;
    assert!(stdout.contains("created streams"), "{stdout}");
    assert_eq!(
        stdout.matches(" (expected ").count(),
        3,
        "a check every ten events\n{stdout}"
    );
    let stdout = run_example("inventory", &server.url, &[("EVENTS", "10"), ("SEED", "4")]).await;
    assert!(!stdout.contains("created streams"), "{stdout}");
    assert!(stdout.contains("after 10 events"), "{stdout}");
}
