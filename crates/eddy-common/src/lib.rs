//! Shared vocabulary of Eddy: the SQL type system and its Arrow mapping, configuration limits, ids.
pub mod config;
pub mod types;
