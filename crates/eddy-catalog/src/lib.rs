//! The catalog of an Eddy cluster: its streams, tables and persistent queries.
//!
//! The catalog is never written directly. Every change is a [`Command`] appended to the command
//! topic; every server applies the commands in topic order with [`Catalog::apply`], so a restarted or
//! new server rebuilds exactly the same catalog and restarts the same persistent queries.
//!
//! ```text
//!  statement ──validate──▶ Command ──produce──▶ command topic ──consume──▶ Catalog::apply
//! ```

mod catalog;
mod source;

pub use catalog::{Catalog, CatalogError, Command, QueryInfo, QueryKind};
pub use source::{
    Column, ColumnRole, Generator, PSEUDO_COLUMNS, ROWOFFSET, ROWPARTITION, ROWTIME, Source,
    SourceKind,
};
