//! Runs every `sql-tests/*.slt` file, the way `cargo test` checks the SQL dialect end to end.
//!
//! One test per file (`sql_tests aggregate.slt`, ...), so that the test runner reports each file,
//! runs files side by side, and bounds each by its own timeout rather than the whole directory
//! by one. Self-contained: every file starts its own embedded broker in a temporary directory
//! (no external Kafka) and runs in a fresh namespace of it. Filter by test name as usual
//! (`cargo nextest run --test sql_tests -E 'test(windows)'`, `cargo test --test sql_tests windows`),
//! or with `EDDY_SLT=name` (a substring of the file name).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use eddy_broker::{CLIENT_SETTINGS, EmbeddedBroker, EmbeddedBrokerConfig};
use eddy_cli::slt::{SltConfig, run_file};
use eddy_runtime::KafkaConnection;
use libtest_mimic::{Arguments, Failed, Trial};

fn slt_dir() -> PathBuf {
    // The runtime variable (set by cargo and nextest) names this checkout; the compile-time one
    // names wherever the cached test binary was built, which is another clone when clones share
    // one CARGO_TARGET_DIR and this one's sources are older than the build.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    let dir = PathBuf::from(manifest_dir).join("../../sql-tests");
    dir.canonicalize().unwrap_or(dir)
}

fn slt_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let filter = std::env::var("EDDY_SLT").ok();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_slt = path.extension().is_some_and(|e| e == "slt");
        let wanted = filter.as_deref().is_none_or(|f| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(f))
        });
        if is_slt && wanted {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Runs one file on an embedded broker of its own.
fn run_on_embedded_broker(path: &Path) -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build a tokio runtime: {e}"))?;
    runtime.block_on(async {
        let dir = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
        let broker = EmbeddedBroker::start(EmbeddedBrokerConfig::new(dir.path().join("broker")))
            .await
            .map_err(|e| format!("the embedded broker does not start: {e}"))?;
        let mut connection = KafkaConnection::new(broker.bootstrap_servers());
        for (key, value) in CLIENT_SETTINGS {
            connection
                .properties
                .insert((*key).to_owned(), (*value).to_owned());
        }
        let outcome = run_file(&connection, path, &SltConfig::default()).await;
        broker
            .shutdown()
            .await
            .map_err(|e| format!("the embedded broker does not stop: {e}"))?;
        println!(
            "{} in {:.1} s (namespace {})",
            path.display(),
            outcome.elapsed.as_secs_f64(),
            outcome.service_id
        );
        match outcome.error {
            None => Ok(()),
            Some(error) => Err(Failed::from(error)),
        }
    })
}

fn main() -> ExitCode {
    let arguments = Arguments::from_args();
    let dir = slt_dir();
    let files = match slt_files(&dir) {
        Ok(files) => files,
        Err(error) => {
            eprintln!("cannot read {}: {error}", dir.display());
            return ExitCode::FAILURE;
        }
    };
    if files.is_empty() {
        eprintln!("no .slt files in {}", dir.display());
        return ExitCode::FAILURE;
    }
    let trials = files
        .into_iter()
        .map(|path| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string());
            Trial::test(name, move || run_on_embedded_broker(&path))
        })
        .collect();
    libtest_mimic::run(&arguments, trials).exit_code()
}
