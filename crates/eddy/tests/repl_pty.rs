//! The interactive shell under a pseudo-terminal, the way a person uses it: rustyline in raw
//! mode, Tab completion, multi-line statements, `help`, `RUN SCRIPT`, `SPOOL`, a syntax error's
//! caret, a push query streaming until Ctrl-C, and the history file.
//!
//! Needs a broker: the `eddy` binary starts its embedded one (`--broker-port 0`) in a fresh data
//! directory, so the topics are this run's alone.

use std::process::Command;

use rexpect::session::{PtySession, spawn_command};

/// Bound of each wait for output (the first includes the embedded broker's start).
const EXPECT_TIMEOUT_MS: u64 = 60_000;

fn expect(session: &mut PtySession, needle: &str) -> String {
    match session.exp_string(needle) {
        Ok(before) => before,
        Err(error) => panic!("waiting for {needle:?}: {error}"),
    }
}

fn send(session: &mut PtySession, text: &str) {
    session.send(text).expect("written to the terminal");
    session.flush().expect("flushed to the terminal");
}

#[test]
fn the_shell_completes_streams_runs_scripts_spools_and_stops_push_queries() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let run = uuid_like();
    let script = dir.path().join("setup.sql");
    let spool = dir.path().join("spool.txt");
    std::fs::write(
        &script,
        format!(
            "-- two statements, the second on two lines\n\
             CREATE STREAM pty_orders (id STRING KEY, qty INT)\n  WITH (KAFKA_TOPIC='pty_orders_{run}', VALUE_FORMAT='JSON', PARTITIONS=1);\n\
             INSERT INTO pty_orders (id, qty) VALUES ('a', 7341);\n"
        ),
    )
    .expect("script written");

    let mut command = Command::new(env!("CARGO_BIN_EXE_eddy"));
    command
        .arg("--data-dir")
        .arg(&data)
        .arg("--broker-port")
        .arg("0")
        .arg("--set")
        .arg("eddy.max_batch_wait_ms=37")
        .env("HOME", dir.path())
        .env("TERM", "xterm")
        .env("NO_COLOR", "1")
        .env("EDDY_LOG", "error");
    let mut shell = spawn_command(command, Some(EXPECT_TIMEOUT_MS)).expect("eddy starts");
    expect(&mut shell, "eddy> ");

    send(&mut shell, "help\n");
    expect(&mut shell, "RUN SCRIPT 'file.sql'");
    expect(&mut shell, "eddy> ");

    // The engine runs with the limit given by --set.
    send(&mut shell, "SHOW PROPERTIES;\n");
    if let Err(error) = shell.exp_regex(r"eddy\.max_batch_wait_ms +\| +\w+ +\| +37 +\|") {
        panic!("SHOW PROPERTIES should print the --set value 37: {error}");
    }
    expect(&mut shell, "eddy> ");

    send(&mut shell, &format!("SPOOL '{}'\n", spool.display()));
    expect(&mut shell, "Spooling to");
    expect(&mut shell, "eddy> ");

    send(&mut shell, &format!("RUN SCRIPT '{}';\n", script.display()));
    expect(&mut shell, "stream \"PTY_ORDERS\" created");
    expect(&mut shell, "eddy> ");

    // A statement over two lines: the second prompt says it goes on.
    send(&mut shell, "SHOW\n");
    expect(&mut shell, "   -> ");
    send(&mut shell, "STREAMS;\n");
    expect(&mut shell, "PTY_ORDERS");
    expect(&mut shell, "eddy> ");

    // Tab completes the stream's name (in the case typed) from the catalog, then a keyword.
    send(&mut shell, "DESCRIBE pty_o\t");
    expect(&mut shell, "pty_orders");
    send(&mut shell, ";\n");
    expect(&mut shell, "QTY");
    expect(&mut shell, "eddy> ");
    send(&mut shell, "SHOW PROPER\t");
    expect(&mut shell, "PROPERTIES");
    send(&mut shell, ";\n");
    expect(&mut shell, "eddy> ");

    // A syntax error shows the line and a caret under the offending word.
    send(&mut shell, "SELECT * FRM pty_orders EMIT CHANGES;\n");
    expect(&mut shell, "syntax error at line 1, column 10");
    expect(&mut shell, "LINE 1: SELECT * FRM pty_orders");
    let caret_line = expect(&mut shell, "^");
    let caret_indent = caret_line.rsplit('\n').next().unwrap_or_default();
    assert_eq!(
        caret_indent,
        " ".repeat("LINE 1: SELECT * ".len()),
        "the caret is under FRM: {caret_line:?}"
    );
    expect(&mut shell, "eddy> ");

    // A push query streams its row and runs until Ctrl-C, which gives the prompt back.
    send(&mut shell, "SET 'auto.offset.reset'='earliest';\n");
    expect(&mut shell, "eddy> ");
    send(&mut shell, "SELECT id, qty FROM pty_orders EMIT CHANGES;\n");
    expect(&mut shell, "7341");
    shell.send_control('c').expect("Ctrl-C sent");
    expect(&mut shell, "eddy> ");

    send(&mut shell, "SPOOL OFF\n");
    expect(&mut shell, "Stopped spooling");
    send(&mut shell, "exit\n");
    shell.exp_eof().expect("the shell ends");

    let spooled = std::fs::read_to_string(&spool).expect("spool file");
    assert!(spooled.contains("eddy> SHOW\nSTREAMS;"), "{spooled}");
    assert!(spooled.contains("PTY_ORDERS"), "{spooled}");
    assert!(spooled.contains("7341"), "{spooled}");
    assert!(!spooled.contains("Stopped spooling"), "{spooled}");
    let history = std::fs::read_to_string(data.join("history")).expect("history file");
    assert!(history.contains("RUN SCRIPT"), "{history}");
    assert!(history.contains("DESCRIBE pty_orders;"), "{history}");
}

/// A per-run suffix for topic names.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}_{nanos}", std::process::id())
}

#[test]
fn a_bad_setting_fails_at_start_with_its_name() {
    let output = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args([
            "--set",
            "eddy.max_batch_records=0",
            "test",
            "no-such-file.slt",
        ])
        .env("EDDY_LOG", "error")
        .output()
        .expect("eddy runs");
    assert!(!output.status.success(), "a bad --set must fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "invalid value \"0\" for setting \"eddy.max_batch_records\": expected a whole number above 0"
        ),
        "stderr: {stderr}"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args(["--set", "eddy.no_such_limit=1", "test", "no-such-file.slt"])
        .output()
        .expect("eddy runs");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("unknown setting \"eddy.no_such_limit\""),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
