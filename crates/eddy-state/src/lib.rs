//! Durable, partitioned key-value state of Eddy's materialized tables, in RocksDB.
//!
//! A persistent query that aggregates or materializes a table keeps, for each row key, the
//! row's current value (or the aggregation's accumulator). That state lives here:
//!
//! - **One RocksDB per server** ([`StateStore`]), opened once at start-up from the server's
//!   state directory. All stores share its write-ahead log, its background threads and one LRU
//!   block cache, so the memory of the server's state is bounded by [`StateConfig`] however many
//!   tables it materializes.
//! - **One column family per store** ([`Store`]), e.g. one per materialized table or
//!   aggregation. Dropping a store ([`StateStore::drop_store`]) drops its column family and its
//!   files at once, without touching the others.
//! - **Keys prefixed by Kafka partition.** A stream task owns one partition of its input topic,
//!   and so one partition of each of its stores: every operation takes the partition, and its
//!   state can be scanned, restored from the changelog and dropped ([`Store::clear_partition`])
//!   partition by partition when partitions move between servers.
//! - **Offsets in the same atomic batch as the state they describe.** A [`StoreBatch`] carries
//!   a task's puts and deletes together with the next source offset to process and the next
//!   changelog offset to apply; [`Store::write`] commits them as one RocksDB write batch, so
//!   after a crash the [`Checkpoint`] read back says exactly which input the state reflects.
//!
//! This crate stores bytes only: it does not talk to Kafka. Producing the changelog and
//! consuming it to restore a partition is the runtime's job; keys and values are encoded by
//! the caller (the same bytes as the changelog record, typically).
//!
//! # Key layout
//!
//! Every physical key of a column family starts with a five-byte partition prefix:
//!
//! ```text
//!  0        4     5
//! +--------+-----+----------------------+
//! | part.  | tag | user key (any bytes) |
//! +--------+-----+----------------------+
//!   u32 BE  0x00 = metadata: "source_offset", "changelog_offset" -> i64 BE
//!   sign    0x01 = data:     user key -> user value
//!   flipped
//!
//! partition -1      | 7F FF FF FF | 00 | changelog_offset |
//!                   | 7F FF FF FF | 00 | source_offset    |
//!                   | 7F FF FF FF | 01 | ...user keys...  |
//! partition 0       | 80 00 00 00 | 00 | ...              |
//!                   | 80 00 00 00 | 01 | ...              |
//! partition 1       | 80 00 00 01 | 01 | ...              |
//! partition 256     | 80 00 01 00 | 01 | ...              |
//! ```
//!
//! The partition is stored big-endian with its sign bit flipped, so the bytewise order of keys
//! is the numeric order of partitions, and each partition (metadata, then data in user-key
//! order) is one contiguous key range: scans use it as RocksDB iterate bounds, clears delete
//! it with one range tombstone, and [`Store::partitions`] jumps from one range to the next.
//!
//! No prefix extractor is configured: whole-key bloom filters serve point reads, and scans
//! need no prefix-mode caveats (a prefix extractor can be added later; RocksDB ignores the
//! filters of files written under another one).
//!
//! # Durability
//!
//! Every write goes to RocksDB's write-ahead log, without an fsync per write. A crash of the
//! process loses nothing: the log is in the operating system's page cache and is replayed when
//! the store is reopened. A crash of the machine may lose the last writes; they are lost
//! whole, batch by batch, and since each batch carries its offsets, the [`Checkpoint`] read
//! after restart still matches the data, and the task re-processes (or re-restores from the
//! changelog) from there. Column families are flushed atomically (`atomic_flush`), so stores
//! never disagree about what was flushed.
//!
//! # Example
//!
//! ```
//! use eddy_state::{StateConfig, StateStore, StoreBatch};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let state = StateStore::open(dir.path(), &StateConfig::default())?;
//! let counts = state.store("pageviews_by_user")?;
//!
//! let mut batch = StoreBatch::default();
//! batch.put(b"alice", &3_i64.to_be_bytes());
//! batch.set_source_offset(1_042); // the input offsets before 1042 are counted
//! batch.set_changelog_offset(77);
//! counts.write(5, batch)?; // partition 5
//!
//! assert_eq!(counts.get(5, b"alice")?, Some(3_i64.to_be_bytes().to_vec()));
//! assert_eq!(counts.checkpoint(5)?.source_offset, Some(1_042));
//! for entry in counts.scan(5, Some(b"a"), Some(b"b"))? {
//!     let (user_key, value) = entry?;
//!     assert_eq!(&*user_key, b"alice");
//!     assert_eq!(value.len(), 8);
//! }
//! # Ok(())
//! # }
//! ```

mod batch;
mod config;
mod error;
mod keys;
mod state;
mod store;

pub use batch::StoreBatch;
pub use config::StateConfig;
pub use error::StateError;
pub use keys::prefix_successor;
pub use state::StateStore;
pub use store::{Checkpoint, ScanIter, Store};
