//! The examples under `examples/` run as their READMEs say: `eddy server` (here on an embedded
//! broker in a temporary directory, on a free port), then the example's `run.sh`, which talks to
//! the server with curl only. Needs a broker: it starts its own (the server's embedded one).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

mod common;

use common::start_server;

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
