//! Tuning of the server's RocksDB.

/// Tuning of the one RocksDB a server keeps its state in.
///
/// The defaults suit a server with a few dozen stores; memory use is roughly
/// `block_cache_bytes + stores × 2 × write_buffer_bytes` (RocksDB keeps up to two memtables of
/// a column family in memory while one is being flushed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    /// Size of the LRU block cache shared by every store (column family), holding uncompressed
    /// data blocks, index blocks and bloom filters. Default: 64 MiB.
    pub block_cache_bytes: usize,
    /// Size of one store's memtable before it is flushed to an SST file. Default: 16 MiB per
    /// store.
    pub write_buffer_bytes: usize,
    /// Most SST files RocksDB keeps open at once; `-1` keeps every file open. Default: 512.
    pub max_open_files: i32,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 16 << 20,
            max_open_files: 512,
        }
    }
}
