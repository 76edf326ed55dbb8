//! Eddy's front ends, as a library: what the `eddy` binary runs.
//!
//! - [`render`] turns [`StatementResult`](eddy_engine::StatementResult)s into aligned text tables
//!   (the look of ksqlDB's CLI) and streams push queries and `PRINT` row by row until their
//!   `LIMIT`, their end, or Ctrl-C.
//! - [`repl`] is the interactive shell: a rustyline editor with multi-line statements, history,
//!   `help`, `SPOOL` and `RUN SCRIPT`, on a tokio runtime that keeps running queries while the
//!   editor waits for input; [`complete`] is its Tab completion, [`remote`] runs it on a server
//!   over REST (`eddy cli --server URL`).
//! - [`slt`] runs sqllogictest files (`*.slt`) against an engine, each file in its own namespace
//!   (service id and topic prefix), so files sharing one Kafka never see each other's topics.
//!
//! ```text
//!  terminal ──rustyline──▶ repl ──┐
//!                                 ├──▶ Engine::execute ──▶ StatementResult ──▶ render ──▶ stdout
//!  *.slt ──sqllogictest──▶ slt ───┘                                       └──▶ slt rows ──▶ compare
//! ```

pub mod complete;
mod error;
pub mod remote;
pub mod render;
pub mod repl;
pub mod slt;

pub use error::CliError;
