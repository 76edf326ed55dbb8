//! The errors of the state stores.

use std::path::PathBuf;

/// An error of a state store operation.
///
/// Messages are lowercase, Postgres style, and name the directory, store and partition they
/// concern. The underlying RocksDB error is kept as text so that callers need not depend on
/// the `rocksdb` crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The RocksDB directory could not be created, listed or opened (for instance because another
    /// process holds its lock).
    #[error("cannot open state directory \"{path}\": {reason}")]
    Open {
        /// The state directory.
        path: PathBuf,
        /// What RocksDB or the file system said.
        reason: String,
    },
    /// A store name that cannot name a column family.
    #[error("invalid state store name \"{name}\": {reason}")]
    InvalidStoreName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The column family of a store could not be created.
    #[error("cannot create state store \"{store}\": {reason}")]
    CreateStore {
        /// The store.
        store: String,
        /// What RocksDB said.
        reason: String,
    },
    /// The column family of a store could not be dropped.
    #[error("cannot drop state store \"{store}\": {reason}")]
    DropStore {
        /// The store.
        store: String,
        /// What RocksDB said.
        reason: String,
    },
    /// The store was dropped (by [`StateStore::drop_store`](crate::StateStore::drop_store))
    /// after this handle on it was taken.
    #[error("state store \"{store}\" was dropped")]
    StoreDropped {
        /// The store.
        store: String,
    },
    /// A read (get, scan, checkpoint, partition listing) failed.
    #[error("cannot read partition {partition} of state store \"{store}\": {reason}")]
    Read {
        /// The store.
        store: String,
        /// The partition read, or -1 for reads across partitions.
        partition: i32,
        /// What RocksDB said.
        reason: String,
    },
    /// A write (batch, partition clear) failed; nothing of it was applied.
    #[error("cannot write partition {partition} of state store \"{store}\": {reason}")]
    Write {
        /// The store.
        store: String,
        /// The partition written.
        partition: i32,
        /// What RocksDB said.
        reason: String,
    },
    /// A stored key or metadata value does not have the layout this crate writes.
    #[error("corrupt entry in partition {partition} of state store \"{store}\": {detail}")]
    Corrupt {
        /// The store.
        store: String,
        /// The partition, or -1 when the key is too short to hold one.
        partition: i32,
        /// What is wrong.
        detail: String,
    },
}
