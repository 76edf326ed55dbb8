//! One store (column family): reads, scans and atomic batch writes, per partition.

use std::fmt;
use std::iter::FusedIterator;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rocksdb::{BoundColumnFamily, DBRawIteratorWithThreadMode, ReadOptions, WriteBatch};

use crate::StateError;
use crate::batch::{Op, StoreBatch};
use crate::keys::{
    self, META_CHANGELOG_OFFSET, META_SOURCE_OFFSET, PREFIX_LEN, TAG_DATA, TAG_END, data_key,
    meta_key, partition_end, partition_start,
};
use crate::state::{Db, Inner};

/// The partition reported by errors of reads that span partitions.
const ANY_PARTITION: i32 = -1;

/// How far one partition of a store has come, as recorded by the batches written to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The next input (source topic) offset whose effect is NOT yet in the store: where
    /// processing of the partition resumes. `None` if no batch has set it.
    pub source_offset: Option<i64>,
    /// The next changelog offset not yet applied to the store: where a restore of the partition
    /// from its changelog resumes. `None` if no batch has set it.
    pub changelog_offset: Option<i64>,
}

/// A handle on one store: a column family of the server's RocksDB.
///
/// Cheap to clone; `Send + Sync`. Keeps the database open while it lives. After
/// [`StateStore::drop_store`](crate::StateStore::drop_store) of its store, every operation fails
/// with [`StateError::StoreDropped`].
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    name: Arc<str>,
    /// Set when this store (not a later one of the same name) is dropped.
    dropped: Arc<AtomicBool>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("name", &self.name)
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .finish()
    }
}

impl Store {
    pub(crate) fn new(inner: Arc<Inner>, name: Arc<str>, dropped: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            name,
            dropped,
        }
    }

    /// The store's name (its column family's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The column family of this store, held for the duration of one operation.
    ///
    /// The handle is looked up before the dropped flag is read: if the flag is still clear,
    /// the drop had not begun when the handle was taken, so the handle is this store's and
    /// not that of a newer store of the same name. Holding the handle keeps it valid even if
    /// the store is dropped meanwhile; RocksDB then discards or rejects the operation.
    fn cf(&self) -> Result<Arc<BoundColumnFamily<'_>>, StateError> {
        let dropped = || StateError::StoreDropped {
            store: self.name.to_string(),
        };
        let cf = self.inner.db.cf_handle(&self.name).ok_or_else(dropped)?;
        if self.dropped.load(Ordering::SeqCst) {
            return Err(dropped());
        }
        Ok(cf)
    }

    fn read_error(&self, partition: i32, error: rocksdb::Error) -> StateError {
        StateError::Read {
            store: self.name.to_string(),
            partition,
            reason: error.into_string(),
        }
    }

    fn write_error(&self, partition: i32, error: rocksdb::Error) -> StateError {
        StateError::Write {
            store: self.name.to_string(),
            partition,
            reason: error.into_string(),
        }
    }

    /// The value of `key` in `partition`, if any.
    pub fn get(&self, partition: i32, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        let cf = self.cf()?;
        self.inner
            .db
            .get_cf(&cf, data_key(partition, key))
            .map_err(|e| self.read_error(partition, e))
    }

    /// The values of `keys` in `partition`, in the order of `keys`, read in one batched
    /// RocksDB lookup from one consistent view of the store.
    pub fn multi_get(
        &self,
        partition: i32,
        keys: &[&[u8]],
    ) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        let cf = self.cf()?;
        let physical: Vec<Vec<u8>> = keys.iter().map(|key| data_key(partition, key)).collect();
        self.inner
            .db
            .batched_multi_get_cf(&cf, &physical, false)
            .into_iter()
            .map(|value| match value {
                Ok(value) => Ok(value.map(|v| v.to_vec())),
                Err(e) => Err(self.read_error(partition, e)),
            })
            .collect()
    }

    /// The entries of `partition` with `lower <= key < upper` (`None`: unbounded), in key
    /// order. See [`scan_range`](Self::scan_range) for the other bound kinds.
    pub fn scan(
        &self,
        partition: i32,
        lower: Option<&[u8]>,
        upper: Option<&[u8]>,
    ) -> Result<ScanIter<'_>, StateError> {
        self.scan_range(
            partition,
            lower.map_or(Bound::Unbounded, Bound::Included),
            upper.map_or(Bound::Unbounded, Bound::Excluded),
        )
    }

    /// The entries of `partition` between `lower` and `upper`, in (bytewise) key order.
    ///
    /// `key > a` is `(Excluded(a), Unbounded)`, `key <= b` is `(Unbounded, Included(b))`,
    /// `key BETWEEN a AND b` is `(Included(a), Included(b))`. An empty range (lower above upper)
    /// yields nothing.
    pub fn scan_range(
        &self,
        partition: i32,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
    ) -> Result<ScanIter<'_>, StateError> {
        // The smallest key greater than `k` is `k ++ [0]`: that makes every bound an inclusive
        // lower or exclusive upper physical key, as RocksDB's iterate bounds are.
        let after = |k: &[u8]| {
            let mut key = data_key(partition, k);
            key.push(0);
            key
        };
        let lower = match lower {
            Bound::Included(k) => data_key(partition, k),
            Bound::Excluded(k) => after(k),
            Bound::Unbounded => keys::prefix(partition, TAG_DATA).to_vec(),
        };
        let upper = match upper {
            Bound::Included(k) => after(k),
            Bound::Excluded(k) => data_key(partition, k),
            Bound::Unbounded => partition_end(partition).to_vec(),
        };
        let upper = upper.max(lower.clone());
        self.scan_physical(partition, lower, upper)
    }

    /// The entries of `partition` whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, partition: i32, prefix: &[u8]) -> Result<ScanIter<'_>, StateError> {
        let upper = keys::prefix_successor(prefix);
        self.scan_range(
            partition,
            Bound::Included(prefix),
            upper.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
        )
    }

    /// An iterator over the data keys in `[lower, upper)`, which must lie in `partition`'s data.
    fn scan_physical(
        &self,
        partition: i32,
        lower: Vec<u8>,
        upper: Vec<u8>,
    ) -> Result<ScanIter<'_>, StateError> {
        let cf = self.cf()?;
        let mut options = ReadOptions::default();
        options.set_iterate_lower_bound(lower.clone());
        options.set_iterate_upper_bound(upper);
        let mut iter = self.inner.db.raw_iterator_cf_opt(&cf, options);
        iter.seek(&lower);
        Ok(ScanIter {
            iter,
            _cf: cf,
            store: self,
            partition,
            done: false,
        })
    }

    /// The partitions that hold entries or offsets, in numeric order.
    ///
    /// Jumps from one partition to the next with a seek, so it costs one seek per partition
    /// however large the partitions are.
    pub fn partitions(&self) -> Result<Vec<i32>, StateError> {
        let cf = self.cf()?;
        let mut options = ReadOptions::default();
        // Needed to cross prefixes should a prefix extractor ever be configured.
        options.set_total_order_seek(true);
        options.fill_cache(false);
        let mut iter = self.inner.db.raw_iterator_cf_opt(&cf, options);
        let mut partitions = Vec::new();
        iter.seek_to_first();
        while let Some(key) = iter.key() {
            let partition = keys::decode_partition(key)
                .filter(|_| key.len() >= PREFIX_LEN && key[PREFIX_LEN - 1] < TAG_END)
                .ok_or_else(|| StateError::Corrupt {
                    store: self.name.to_string(),
                    partition: ANY_PARTITION,
                    detail: format!("key {key:02x?} has no partition prefix"),
                })?;
            partitions.push(partition);
            // Greater than `key` (whose tag is below TAG_END), so the loop always advances.
            iter.seek(partition_end(partition));
        }
        iter.status()
            .map_err(|e| self.read_error(ANY_PARTITION, e))?;
        Ok(partitions)
    }

    /// Applies `batch` to `partition` as one RocksDB write batch: all of its puts, deletes and
    /// offsets become visible (and durable) together, or none do.
    ///
    /// The write goes to the write-ahead log without an fsync: see the crate documentation on
    /// durability.
    pub fn write(&self, partition: i32, mut batch: StoreBatch) -> Result<(), StateError> {
        let cf = self.cf()?;
        if batch.is_empty() {
            return Ok(());
        }
        batch.fill_prefixes(keys::prefix(partition, TAG_DATA));
        let mut write = WriteBatch::with_capacity_bytes(batch.buf.len() + 16 * batch.len() + 64);
        for op in &batch.ops {
            match op {
                Op::Put { key, value } => {
                    write.put_cf(&cf, &batch.buf[key.clone()], &batch.buf[value.clone()]);
                }
                Op::Delete { key } => write.delete_cf(&cf, &batch.buf[key.clone()]),
                Op::ClearPartition => {
                    write.delete_range_cf(
                        &cf,
                        partition_start(partition),
                        partition_end(partition),
                    );
                }
            }
        }
        if let Some(offset) = batch.source_offset {
            write.put_cf(
                &cf,
                meta_key(partition, META_SOURCE_OFFSET),
                offset.to_be_bytes(),
            );
        }
        if let Some(offset) = batch.changelog_offset {
            write.put_cf(
                &cf,
                meta_key(partition, META_CHANGELOG_OFFSET),
                offset.to_be_bytes(),
            );
        }
        self.inner
            .db
            .write_opt(write, &self.inner.write_options)
            .map_err(|e| self.write_error(partition, e))
    }

    /// The offsets last written to `partition` (both read from one consistent view).
    pub fn checkpoint(&self, partition: i32) -> Result<Checkpoint, StateError> {
        let cf = self.cf()?;
        let names = [META_SOURCE_OFFSET, META_CHANGELOG_OFFSET];
        let physical = names.map(|name| meta_key(partition, name));
        let mut offsets = [None, None];
        let values = self.inner.db.batched_multi_get_cf(&cf, &physical, false);
        for ((offset, value), name) in offsets.iter_mut().zip(values).zip(names) {
            let Some(value) = value.map_err(|e| self.read_error(partition, e))? else {
                continue;
            };
            let bytes: [u8; 8] = value.as_ref().try_into().map_err(|_| StateError::Corrupt {
                store: self.name.to_string(),
                partition,
                detail: format!(
                    "metadata \"{}\" has {} bytes instead of 8",
                    String::from_utf8_lossy(name),
                    value.len()
                ),
            })?;
            *offset = Some(i64::from_be_bytes(bytes));
        }
        let [source_offset, changelog_offset] = offsets;
        Ok(Checkpoint {
            source_offset,
            changelog_offset,
        })
    }

    /// Deletes every entry and both offsets of `partition` (one range tombstone), leaving the
    /// other partitions as they are. To clear and refill atomically, use
    /// [`StoreBatch::clear_partition`] instead.
    pub fn clear_partition(&self, partition: i32) -> Result<(), StateError> {
        let cf = self.cf()?;
        self.inner
            .db
            .delete_range_cf_opt(
                &cf,
                partition_start(partition),
                partition_end(partition),
                &self.inner.write_options,
            )
            .map_err(|e| self.write_error(partition, e))?;
        tracing::debug!(store = %self.name, partition, "cleared state partition");
        Ok(())
    }

    /// Estimated bytes of the store: live data in SST files plus memtables. 0 if the store was
    /// dropped or RocksDB cannot say.
    pub fn approximate_size_bytes(&self) -> u64 {
        self.int_property(rocksdb::properties::ESTIMATE_LIVE_DATA_SIZE)
            .saturating_add(self.int_property(rocksdb::properties::CUR_SIZE_ALL_MEM_TABLES))
    }

    /// Estimated number of entries of the store, offsets included (RocksDB's
    /// `estimate-num-keys`: deletes and overwrites not yet compacted make it inexact). 0 if the
    /// store was dropped or RocksDB cannot say.
    pub fn approximate_entries(&self) -> u64 {
        self.int_property(rocksdb::properties::ESTIMATE_NUM_KEYS)
    }

    fn int_property(&self, name: &rocksdb::properties::PropName) -> u64 {
        let Ok(cf) = self.cf() else {
            return 0;
        };
        match self.inner.db.property_int_value_cf(&cf, name) {
            Ok(value) => value.unwrap_or(0),
            Err(e) => {
                tracing::warn!(store = %self.name, property = ?name, error = %e, "cannot read rocksdb property");
                0
            }
        }
    }
}

/// The entries of one partition of a store in key order: `(user key, value)` pairs, the user
/// key without the partition prefix. Created by [`Store::scan`] and its variants.
///
/// Sees the store as it was when the scan was created: later writes do not show. While it lives
/// it pins the memtables and files of that view, so do not keep one open for long.
pub struct ScanIter<'a> {
    // Fields drop in declaration order: the iterator before the column family handle it uses.
    iter: DBRawIteratorWithThreadMode<'a, Db>,
    _cf: Arc<BoundColumnFamily<'a>>,
    store: &'a Store,
    partition: i32,
    done: bool,
}

impl fmt::Debug for ScanIter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScanIter")
            .field("store", &self.store.name)
            .field("partition", &self.partition)
            .field("done", &self.done)
            .finish()
    }
}

impl Iterator for ScanIter<'_> {
    type Item = Result<(Box<[u8]>, Box<[u8]>), StateError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let Some((key, value)) = self.iter.item() else {
            self.done = true;
            return self
                .iter
                .status()
                .err()
                .map(|e| Err(self.store.read_error(self.partition, e)));
        };
        // The iterate bounds keep the iterator inside the partition's data; check anyway, as
        // a wrong key here would leak another partition's entries.
        if key.len() < PREFIX_LEN || key[..PREFIX_LEN] != keys::prefix(self.partition, TAG_DATA) {
            self.done = true;
            return Some(Err(StateError::Corrupt {
                store: self.store.name.to_string(),
                partition: self.partition,
                detail: "scan left the partition".to_owned(),
            }));
        }
        let entry = (Box::from(&key[PREFIX_LEN..]), Box::from(value));
        self.iter.next();
        Some(Ok(entry))
    }
}

impl FusedIterator for ScanIter<'_> {}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{StateConfig, StateStore};

    fn open(dir: &Path) -> StateStore {
        StateStore::open(dir, &StateConfig::default()).unwrap()
    }

    fn put(store: &Store, partition: i32, entries: &[(&[u8], &[u8])]) {
        let mut batch = StoreBatch::default();
        for (key, value) in entries {
            batch.put(key, value);
        }
        store.write(partition, batch).unwrap();
    }

    type Entries = Vec<(Vec<u8>, Vec<u8>)>;

    fn collect(iter: ScanIter<'_>) -> Entries {
        iter.map(|entry| {
            let (key, value) = entry.unwrap();
            (key.into_vec(), value.into_vec())
        })
        .collect()
    }

    fn keys_of(entries: &Entries) -> Vec<&[u8]> {
        entries.iter().map(|(key, _)| key.as_slice()).collect()
    }

    #[test]
    fn put_get_delete() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path());
        let store = state.store("t").unwrap();
        assert_eq!(store.name(), "t");
        assert_eq!(store.get(0, b"k").unwrap(), None);

        put(&store, 0, &[(b"k", b"v1"), (b"other", b"x")]);
        assert_eq!(store.get(0, b"k").unwrap().as_deref(), Some(&b"v1"[..]));

        let mut batch = StoreBatch::default();
        batch.put(b"k", b"v2");
        store.write(0, batch).unwrap();
        assert_eq!(store.get(0, b"k").unwrap().as_deref(), Some(&b"v2"[..]));

        let mut batch = StoreBatch::default();
        batch.delete(b"k");
        batch.delete(b"never-there");
        store.write(0, batch).unwrap();
        assert_eq!(store.get(0, b"k").unwrap(), None);
        assert_eq!(store.get(0, b"other").unwrap().as_deref(), Some(&b"x"[..]));

        // Operations of a batch apply in order.
        let mut batch = StoreBatch::default();
        batch.put(b"a", b"1");
        batch.delete(b"a");
        batch.delete(b"b");
        batch.put(b"b", b"2");
        store.write(0, batch).unwrap();
        assert_eq!(store.get(0, b"a").unwrap(), None);
        assert_eq!(store.get(0, b"b").unwrap().as_deref(), Some(&b"2"[..]));

        // Empty batches write nothing and succeed.
        store.write(0, StoreBatch::default()).unwrap();
    }

    #[test]
    fn empty_user_key_and_value_are_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path());
        let store = state.store("t").unwrap();
        put(&store, 4, &[(b"", b"empty key"), (b"a", b"")]);
        assert_eq!(
            store.get(4, b"").unwrap().as_deref(),
            Some(&b"empty key"[..])
        );
        assert_eq!(store.get(4, b"a").unwrap().as_deref(), Some(&b""[..]));
        assert_eq!(store.get(5, b"").unwrap(), None);
        let entries = collect(store.scan(4, None, None).unwrap());
        assert_eq!(
            entries,
            vec![
                (b"".to_vec(), b"empty key".to_vec()),
                (b"a".to_vec(), b"".to_vec())
            ]
        );
        // An empty lower bound is the smallest key; an empty exclusive upper bound excludes all.
        assert_eq!(collect(store.scan(4, Some(b""), None).unwrap()).len(), 2);
        assert!(collect(store.scan(4, None, Some(b"")).unwrap()).is_empty());
        let mut batch = StoreBatch::default();
        batch.delete(b"");
        store.write(4, batch).unwrap();
        assert_eq!(store.get(4, b"").unwrap(), None);
    }

    #[test]
    fn multi_get_returns_values_in_key_order_of_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path());
        let store = state.store("t").unwrap();
        put(&store, 1, &[(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]);
        put(&store, 2, &[(b"d", b"other partition")]);
        let keys: [&[u8]; 6] = [b"c", b"missing", b"a", b"d", b"c", b""];
        let values = store.multi_get(1, &keys).unwrap();
        assert_eq!(
            values,
            vec![
                Some(b"3".to_vec()),
                None,
                Some(b"1".to_vec()),
                None,
                Some(b"3".to_vec()),
                None
            ]
        );
        assert_eq!(
            store.multi_get(2, &[b"d"]).unwrap(),
            vec![Some(b"other partition".to_vec())]
        );
        assert!(store.multi_get(1, &[]).unwrap().is_empty());
    }

    #[test]
    fn scan_honours_every_bound_kind() {
        use Bound::{Excluded, Included, Unbounded};
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path());
        let store = state.store("t").unwrap();
        let keys: [&[u8]; 10] = [
            b"",
            b"a",
            b"b",
            b"b\0",
            b"bb",
            b"c",
            b"d",
            &[0xFF],
            &[0xFF, 0xFF],
            &[0xFF, 0xFF, 0x00],
        ];
        // Written in reverse to show that order comes from the store.
        for partition in [0, 1, 2] {
            let mut batch = StoreBatch::default();
            for key in keys.iter().rev() {
                batch.put(key, format!("{partition}").as_bytes());
            }
            batch.set_source_offset(99);
            store.write(partition, batch).unwrap();
        }

        let scan = |lower: Bound<&[u8]>, upper: Bound<&[u8]>| {
            let entries = collect(store.scan_range(1, lower, upper).unwrap());
            assert!(
                entries.iter().all(|(_, value)| value == b"1"),
                "{entries:?}"
            );
            entries.into_iter().map(|(key, _)| key).collect::<Vec<_>>()
        };
        let expect = |wanted: &[&[u8]]| wanted.iter().map(|k| k.to_vec()).collect::<Vec<_>>();

        assert_eq!(scan(Unbounded, Unbounded), expect(&keys));
        assert_eq!(scan(Included(b"b"), Unbounded), expect(&keys[2..]));
        assert_eq!(scan(Excluded(b"b"), Unbounded), expect(&keys[3..]));
        assert_eq!(scan(Unbounded, Excluded(b"bb")), expect(&keys[..4]));
        assert_eq!(scan(Unbounded, Included(b"b")), expect(&keys[..3]));
        assert_eq!(scan(Unbounded, Included(&[0xFF, 0xFF])), expect(&keys[..9]));
        assert_eq!(scan(Excluded(&[0xFF, 0xFF]), Unbounded), expect(&keys[9..]));
        // BETWEEN 'a' AND 'c'
        assert_eq!(scan(Included(b"a"), Included(b"c")), expect(&keys[1..6]));
        assert_eq!(scan(Excluded(b"a"), Excluded(b"c")), expect(&keys[2..5]));
        assert_eq!(scan(Excluded(b"a"), Included(b"c")), expect(&keys[2..6]));
        assert_eq!(scan(Included(b"a"), Excluded(b"c")), expect(&keys[1..5]));
        // Empty ranges.
        assert_eq!(scan(Included(b"c"), Included(b"a")), expect(&[]));
        assert_eq!(scan(Excluded(b"b"), Included(b"b")), expect(&[]));
        assert_eq!(scan(Excluded(b"b"), Excluded(b"b")), expect(&[]));
        assert_eq!(scan(Included(b"b"), Excluded(b"b")), expect(&[]));
        assert_eq!(scan(Included(b"b"), Included(b"b")), expect(&[b"b"]));

        // The Option form: lower inclusive, upper exclusive.
        let entries = collect(store.scan(1, Some(b"a"), Some(b"c")).unwrap());
        assert_eq!(keys_of(&entries), &keys[1..5]);
        let entries = collect(store.scan(1, None, None).unwrap());
        assert_eq!(keys_of(&entries), &keys);

        // Prefixes, including one whose successor needs a carry and one with none.
        let entries = collect(store.scan_prefix(1, b"b").unwrap());
        assert_eq!(keys_of(&entries), &keys[2..5]);
        let entries = collect(store.scan_prefix(1, &[0xFF]).unwrap());
        assert_eq!(keys_of(&entries), &keys[7..]);
        let entries = collect(store.scan_prefix(1, &[0xFF, 0xFF]).unwrap());
        assert_eq!(keys_of(&entries), &keys[8..]);
        let entries = collect(store.scan_prefix(1, b"").unwrap());
        assert_eq!(keys_of(&entries), &keys);
        assert!(collect(store.scan_prefix(1, b"zz").unwrap()).is_empty());
    }

    #[test]
    fn partitions_do_not_leak_into_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path());
        let store = state.store("t").unwrap();
        // 0, 1 and 256 differ in one byte of the prefix each; -1 and i32::MAX / i32::MIN sit
        // at the edges of the key space.
        let partitions = [0, 1, 256, 65_536, -1, i32::MIN, i32::MAX];
        for (i, &partition) in partitions.iter().enumerate() {
            let mut batch = StoreBatch::default();
            for key in [&b""[..], b"\x00", b"\x01", b"k", b"\xFF\xFF\xFF\xFF"] {
                batch.put(key, format!("p{partition}").as_bytes());
            }
            batch.put(format!("only-{partition}").as_bytes(), b"x");
            batch.set_source_offset(i as i64);
            batch.set_changelog_offset(100 + i as i64);
            store.write(partition, batch).unwrap();
        }
        for (i, &partition) in partitions.iter().enumerate() {
            let own_value = format!("p{partition}").into_bytes();
            let entries = collect(store.scan(partition, None, None).unwrap());
            assert_eq!(entries.len(), 6, "partition {partition}: {entries:?}");
            let only = format!("only-{partition}").into_bytes();
            for (key, value) in &entries {
                if *key == only {
                    assert_eq!(value, b"x");
                } else {
                    assert_eq!(*value, own_value, "partition {partition} key {key:?}");
                }
            }
            assert_eq!(store.get(partition, b"k").unwrap(), Some(own_value));
            assert_eq!(
                store.checkpoint(partition).unwrap(),
                Checkpoint {
                    source_offset: Some(i as i64),
                    changelog_offset: Some(100 + i as i64)
                }
            );
        }
        assert_eq!(store.get(2, b"k").unwrap(), None);
        assert_eq!(store.get(-2, b"k").unwrap(), None);
        assert!(collect(store.scan(255, None, None).unwrap()).is_empty());
        assert!(collect(store.scan(-2, None, None).unwrap()).is_empty());
        assert_eq!(store.checkpoint(2).unwrap(), Checkpoint::default());
        assert_eq!(
            store.partitions().unwrap(),
            vec![i32::MIN, -1, 0, 1, 256, 65_536, i32::MAX]
        );
    }

    #[test]
    fn partitions_lists_partitions_with_data_or_offsets_only() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path());
        let store = state.store("t").unwrap();
        assert!(store.partitions().unwrap().is_empty());
        put(&store, 7, &[(b"k", b"v")]);
        let mut offsets_only = StoreBatch::default();
        offsets_only.set_changelog_offset(3);
        store.write(-5, offsets_only).unwrap();
        put(&store, 0, &[(b"k", b"v")]);
        let mut emptied = StoreBatch::default();
        emptied.put(b"k", b"v");
        emptied.delete(b"k");
        store.write(9, emptied).unwrap();
        assert_eq!(store.partitions().unwrap(), vec![-5, 0, 7]);
        // A partition's metadata stays out of its scans.
        assert!(collect(store.scan(-5, None, None).unwrap()).is_empty());
    }

    #[test]
    fn checkpoint_is_written_with_the_data_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let state = open(dir.path());
            let store = state.store("agg").unwrap();
            assert_eq!(store.checkpoint(3).unwrap(), Checkpoint::default());
            let mut batch = StoreBatch::default();
            batch.put(b"user-1", b"42");
            batch.delete(b"user-2");
            batch.set_source_offset(1_000);
            batch.set_changelog_offset(17);
            store.write(3, batch).unwrap();

            // A later batch that moves only the source offset keeps the changelog offset.
            let mut batch = StoreBatch::default();
            batch.put(b"user-3", b"7");
            batch.set_source_offset(1_001);
            store.write(3, batch).unwrap();
            // Offsets at the edges of i64 round-trip.
            let mut batch = StoreBatch::default();
            batch.set_source_offset(i64::MAX);
            batch.set_changelog_offset(-1);
            store.write(4, batch).unwrap();
        }
        let state = open(dir.path());
        let store = state.store("agg").unwrap();
        assert_eq!(
            store.checkpoint(3).unwrap(),
            Checkpoint {
                source_offset: Some(1_001),
                changelog_offset: Some(17)
            }
        );
        assert_eq!(
            store.checkpoint(4).unwrap(),
            Checkpoint {
                source_offset: Some(i64::MAX),
                changelog_offset: Some(-1)
            }
        );
        assert_eq!(
            store.get(3, b"user-1").unwrap().as_deref(),
            Some(&b"42"[..])
        );
        assert_eq!(store.get(3, b"user-3").unwrap().as_deref(), Some(&b"7"[..]));
    }

    #[test]
    fn corrupt_entries_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path());
        let store = state.store("t").unwrap();
        let cf = store.cf().unwrap();
        state_db(&store)
            .put_cf(&cf, meta_key(2, META_SOURCE_OFFSET), b"short")
            .unwrap();
        let err = store.checkpoint(2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "corrupt entry in partition 2 of state store \"t\": \
             metadata \"source_offset\" has 5 bytes instead of 8"
        );

        // Keys this crate never writes make partitions() fail instead of looping or lying.
        for foreign in [&b"xy"[..], &[0x80, 0, 0, 9, 0x07, b'k']] {
            let store = state.store("foreign").unwrap();
            put(&store, 1, &[(b"k", b"v")]);
            state_db(&store)
                .put_cf(&store.cf().unwrap(), foreign, b"v")
                .unwrap();
            let err = store.partitions().unwrap_err();
            assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
            assert!(err.to_string().contains("has no partition prefix"), "{err}");
            state.drop_store("foreign").unwrap();
        }
    }

    fn state_db(store: &Store) -> &Db {
        &store.inner.db
    }

    /// The writer side of [`checkpoint_and_data_agree_after_the_process_is_killed`]: runs only
    /// in the child process that test starts.
    #[test]
    #[ignore = "child process of checkpoint_and_data_agree_after_the_process_is_killed"]
    fn crash_child_writer() {
        let Some(dir) = std::env::var_os("EDDY_STATE_CRASH_DIR") else {
            return;
        };
        let state = open(Path::new(&dir));
        let store = state.store("crash").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        for i in 0..5_000_000_i64 {
            let mut batch = StoreBatch::default();
            batch.put(format!("k{i:08}").as_bytes(), &i.to_be_bytes());
            batch.put(b"count", &(i + 1).to_be_bytes());
            batch.set_source_offset(i + 1);
            batch.set_changelog_offset(2 * (i + 1));
            store.write(0, batch).unwrap();
            if i == 100 {
                println!("EDDY_STATE_CHILD_READY");
            }
            if std::time::Instant::now() > deadline {
                break;
            }
        }
    }

    #[test]
    fn checkpoint_and_data_agree_after_the_process_is_killed() {
        use std::io::BufRead;

        struct KillOnDrop(std::process::Child);
        impl Drop for KillOnDrop {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }

        let dir = tempfile::tempdir().unwrap();
        let mut child = KillOnDrop(
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "store::tests::crash_child_writer",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("EDDY_STATE_CRASH_DIR", dir.path())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let stdout = child.0.stdout.take().unwrap();
        let ready = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("EDDY_STATE_CHILD_READY"));
        assert!(ready, "the child writer never got ready");
        std::thread::sleep(std::time::Duration::from_millis(300));
        // SIGKILL: no destructor, no flush; RocksDB recovers from its WAL on reopen.
        child.0.kill().unwrap();
        child.0.wait().unwrap();

        let state = open(dir.path());
        let store = state.store("crash").unwrap();
        let checkpoint = store.checkpoint(0).unwrap();
        let n = checkpoint.source_offset.unwrap();
        assert!(n > 100, "the child wrote {n} batches");
        assert_eq!(checkpoint.changelog_offset, Some(2 * n));
        assert_eq!(
            store.get(0, b"count").unwrap(),
            Some(n.to_be_bytes().to_vec())
        );
        let last = format!("k{:08}", n - 1);
        assert_eq!(
            store.get(0, last.as_bytes()).unwrap(),
            Some((n - 1).to_be_bytes().to_vec())
        );
        let next = format!("k{n:08}");
        assert_eq!(store.get(0, next.as_bytes()).unwrap(), None);
        let data = collect(store.scan_prefix(0, b"k").unwrap());
        assert_eq!(data.len() as i64, n);
    }

    #[test]
    fn clear_partition_leaves_other_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path());
        let store = state.store("t").unwrap();
        let other_store = state.store("u").unwrap();
        for partition in [0, 1, 2] {
            let mut batch = StoreBatch::default();
            batch.put(b"a", b"1");
            batch.put(b"b", b"2");
            batch.set_source_offset(10);
            batch.set_changelog_offset(20);
            store.write(partition, batch.clone()).unwrap();
            other_store.write(partition, batch).unwrap();
        }
        store.clear_partition(1).unwrap();
        assert!(collect(store.scan(1, None, None).unwrap()).is_empty());
        assert_eq!(store.get(1, b"a").unwrap(), None);
        assert_eq!(store.checkpoint(1).unwrap(), Checkpoint::default());
        assert_eq!(store.partitions().unwrap(), vec![0, 2]);
        for partition in [0, 2] {
            assert_eq!(collect(store.scan(partition, None, None).unwrap()).len(), 2);
            assert_eq!(store.checkpoint(partition).unwrap().source_offset, Some(10));
        }
        assert_eq!(other_store.partitions().unwrap(), vec![0, 1, 2]);
        assert_eq!(
            other_store.get(1, b"a").unwrap().as_deref(),
            Some(&b"1"[..])
        );

        // The partition can be written again.
        put(&store, 1, &[(b"c", b"3")]);
        let entries = collect(store.scan(1, None, None).unwrap());
        assert_eq!(entries, vec![(b"c".to_vec(), b"3".to_vec())]);
        store.clear_partition(42).unwrap(); // an empty partition
    }

    #[test]
    fn batch_clear_partition_then_refill_is_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path());
        let store = state.store("t").unwrap();
        let mut batch = StoreBatch::default();
        batch.put(b"old", b"1");
        batch.put(b"kept", b"1");
        batch.set_source_offset(5);
        batch.set_changelog_offset(6);
        store.write(3, batch).unwrap();
        put(&store, 4, &[(b"neighbour", b"1")]);

        let mut batch = StoreBatch::default();
        batch.put(b"lost", b"put before the clear");
        batch.clear_partition();
        batch.put(b"kept", b"2");
        batch.set_changelog_offset(0);
        store.write(3, batch).unwrap();
        let entries = collect(store.scan(3, None, None).unwrap());
        assert_eq!(entries, vec![(b"kept".to_vec(), b"2".to_vec())]);
        assert_eq!(
            store.checkpoint(3).unwrap(),
            Checkpoint {
                source_offset: None,
                changelog_offset: Some(0)
            }
        );
        assert_eq!(
            store.get(4, b"neighbour").unwrap().as_deref(),
            Some(&b"1"[..])
        );
    }

    #[test]
    fn scan_sees_the_store_as_of_its_creation() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path());
        let store = state.store("t").unwrap();
        put(&store, 0, &[(b"a", b"1"), (b"c", b"1")]);
        let mut iter = store.scan(0, None, None).unwrap();
        let first = iter.next().unwrap().unwrap();
        put(&store, 0, &[(b"b", b"new"), (b"c", b"2")]);
        let rest: Vec<_> = iter.map(Result::unwrap).collect();
        assert_eq!(&*first.0, b"a");
        assert_eq!(rest, vec![(Box::from(&b"c"[..]), Box::from(&b"1"[..]))]);
    }

    #[test]
    fn readers_see_whole_batches_while_a_writer_writes() {
        const BATCHES: i64 = 2_000;
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path());
        let store = state.store("t").unwrap();
        let done = Arc::new(AtomicBool::new(false));

        let readers: Vec<_> = (0..3)
            .map(|_| {
                let store = store.clone();
                let done = Arc::clone(&done);
                std::thread::spawn(move || {
                    let mut last = 0;
                    let mut scans = 0;
                    loop {
                        let finished = done.load(Ordering::SeqCst);
                        let entries = collect(store.scan(0, None, None).unwrap());
                        let a = entries.iter().filter(|(k, _)| k[0] == b'a').count();
                        let b = entries.iter().filter(|(k, _)| k[0] == b'b').count();
                        assert_eq!(a, b, "a scan saw half a batch");
                        assert!(a >= last, "a scan went back from {last} to {a}");
                        assert!(entries.windows(2).all(|w| w[0].0 < w[1].0), "unordered");
                        for (key, value) in &entries {
                            assert_eq!(key[1..], value[..], "value of {key:?}");
                        }
                        let offset = store.checkpoint(0).unwrap().source_offset.unwrap_or(0);
                        assert!(offset >= a as i64, "offset {offset} behind {a} batches");
                        if a > 0 {
                            let key = format!("a{:06}", a - 1);
                            assert!(store.get(0, key.as_bytes()).unwrap().is_some());
                        }
                        last = a;
                        scans += 1;
                        if finished {
                            assert_eq!(a as i64, BATCHES);
                            return scans;
                        }
                    }
                })
            })
            .collect();

        for i in 0..BATCHES {
            let mut batch = StoreBatch::default();
            let n = format!("{i:06}");
            batch.put(format!("a{n}").as_bytes(), n.as_bytes());
            batch.put(format!("b{n}").as_bytes(), n.as_bytes());
            batch.set_source_offset(i + 1);
            store.write(0, batch).unwrap();
        }
        done.store(true, Ordering::SeqCst);
        for reader in readers {
            assert!(reader.join().unwrap() >= 1);
        }
    }

    #[test]
    fn approximate_size_and_entries_grow_with_data() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path());
        let store = state.store("t").unwrap();
        let empty_size = store.approximate_size_bytes();
        assert_eq!(store.approximate_entries(), 0);
        let mut batch = StoreBatch::default();
        for i in 0..1_000 {
            batch.put(format!("key-{i:04}").as_bytes(), &[7; 100]);
        }
        store.write(0, batch).unwrap();
        assert!(
            store.approximate_size_bytes() >= empty_size + 100_000,
            "{} after 100 kB, {empty_size} before",
            store.approximate_size_bytes()
        );
        let entries = store.approximate_entries();
        assert!((900..=1_100).contains(&entries), "{entries} entries");

        state.drop_store("t").unwrap();
        assert_eq!(store.approximate_size_bytes(), 0);
        assert_eq!(store.approximate_entries(), 0);
    }
}
