//! Runs every `sql-tests/*.slt` file, the way `cargo test` checks the SQL dialect end to end.
//!
//! Self-contained: the test starts its own embedded broker in a temporary directory (no external
//! Kafka) and runs each file in a fresh namespace of it. Filter with `EDDY_SLT=name` (a substring
//! of the file name) to run some files only.

use std::path::PathBuf;

use eddy_broker::{CLIENT_SETTINGS, EmbeddedBroker, EmbeddedBrokerConfig};
use eddy_cli::slt::{SltConfig, run_files_with};
use eddy_runtime::KafkaConnection;

fn slt_files() -> Vec<PathBuf> {
    // The runtime variable (set by cargo and nextest) names this checkout; the compile-time one
    // names wherever the cached test binary was built, which is another clone when clones share
    // one CARGO_TARGET_DIR and this one's sources are older than the build.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    let dir = PathBuf::from(manifest_dir).join("../../sql-tests");
    let dir = dir.canonicalize().unwrap_or(dir);
    let filter = std::env::var("EDDY_SLT").ok();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .filter(|p| {
            filter.as_deref().is_none_or(|f| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().contains(f))
            })
        })
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_tests_pass_on_an_embedded_broker() {
    let files = slt_files();
    assert!(!files.is_empty(), "no .slt files found in sql-tests/");
    let dir = tempfile::tempdir().expect("temporary directory");
    let broker = EmbeddedBroker::start(EmbeddedBrokerConfig::new(dir.path().join("broker")))
        .await
        .expect("the embedded broker starts");
    let mut connection = KafkaConnection::new(broker.bootstrap_servers());
    for (key, value) in CLIENT_SETTINGS {
        connection
            .properties
            .insert((*key).to_owned(), (*value).to_owned());
    }
    let summary = run_files_with(&connection, &files, &SltConfig::default())
        .await
        .expect("the runner runs");
    broker.shutdown().await.expect("the embedded broker stops");
    println!("{summary}");
    if !summary.success() {
        let failing: Vec<String> = summary
            .failures()
            .map(|f| f.path.display().to_string())
            .collect();
        panic!(
            "{} of {} .slt files failed: {}\n\n{summary}",
            failing.len(),
            summary.files.len(),
            failing.join(", ")
        );
    }
}
