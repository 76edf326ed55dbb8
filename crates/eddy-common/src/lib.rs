//! Shared vocabulary of Eddy: the SQL type system and its Arrow mapping, configuration limits,
//! windows of windowed aggregations.
pub mod config;
pub mod types;
pub mod window;
