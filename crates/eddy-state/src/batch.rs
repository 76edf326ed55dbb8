//! Atomic write batches of one partition of a store.

use crate::keys::{PREFIX_LEN, TAG_DATA};

/// One operation of a [`StoreBatch`]; keys and values are ranges of the batch's buffer.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Put `buf[key]` (which starts with a prefix placeholder) to `buf[value]`.
    Put {
        key: std::ops::Range<usize>,
        value: std::ops::Range<usize>,
    },
    /// Delete `buf[key]` (which starts with a prefix placeholder).
    Delete { key: std::ops::Range<usize> },
    /// Delete everything the partition holds before this point of the batch.
    ClearPartition,
}

/// The changes to one partition of a store, applied atomically by
/// [`Store::write`](crate::Store::write): puts, deletes and the offsets that say which input
/// they reflect.
///
/// Operations apply in the order they were added, so a put after a delete of the same key
/// wins, and a put after [`clear_partition`](Self::clear_partition) survives it. The offsets
/// are written after all other operations, so they survive a clear in the same batch.
///
/// Keys and values are copied into one growing buffer, so building a batch allocates no memory
/// per entry.
#[derive(Debug, Clone, Default)]
pub struct StoreBatch {
    /// Keys (each preceded by [`PREFIX_LEN`] placeholder bytes that the write fills in with
    /// the partition prefix) and values, back to back.
    pub(crate) buf: Vec<u8>,
    pub(crate) ops: Vec<Op>,
    pub(crate) source_offset: Option<i64>,
    pub(crate) changelog_offset: Option<i64>,
}

impl StoreBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`. The key may be empty.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        let key = self.push_key(key);
        let start = self.buf.len();
        self.buf.extend_from_slice(value);
        self.ops.push(Op::Put {
            key,
            value: start..self.buf.len(),
        });
    }

    /// Deletes `key`; deleting a missing key is not an error.
    pub fn delete(&mut self, key: &[u8]) {
        let key = self.push_key(key);
        self.ops.push(Op::Delete { key });
    }

    /// Deletes every entry and both offsets that the partition holds before this batch (and the
    /// puts added to this batch so far); as one range tombstone, this costs the same for any
    /// partition size. Used to restore a partition from its changelog from scratch.
    pub fn clear_partition(&mut self) {
        self.ops.push(Op::ClearPartition);
    }

    /// Records that the input (source topic) records before `next_offset` are reflected in the
    /// partition after this batch: `next_offset` is the first input offset whose effect is not
    /// yet stored, where processing resumes after a restart.
    pub fn set_source_offset(&mut self, next_offset: i64) {
        self.source_offset = Some(next_offset);
    }

    /// Records that the changelog records before `next_offset` are applied to the partition
    /// after this batch: `next_offset` is where a restore from the changelog resumes.
    pub fn set_changelog_offset(&mut self, next_offset: i64) {
        self.changelog_offset = Some(next_offset);
    }

    /// The number of writes the batch makes: puts, deletes, partition clears, and one for each
    /// offset set.
    pub fn len(&self) -> usize {
        self.ops.len()
            + usize::from(self.source_offset.is_some())
            + usize::from(self.changelog_offset.is_some())
    }

    /// Whether the batch writes nothing, offsets included.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every operation and offset, keeping the allocated buffers for reuse.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.ops.clear();
        self.source_offset = None;
        self.changelog_offset = None;
    }

    /// Appends a placeholder prefix and `key`; returns the range of both.
    fn push_key(&mut self, key: &[u8]) -> std::ops::Range<usize> {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0, 0, 0, TAG_DATA]);
        self.buf.extend_from_slice(key);
        start..self.buf.len()
    }

    /// Writes the partition prefix into every key placeholder.
    pub(crate) fn fill_prefixes(&mut self, prefix: [u8; PREFIX_LEN]) {
        for op in &self.ops {
            let key = match op {
                Op::Put { key, .. } | Op::Delete { key } => key,
                Op::ClearPartition => continue,
            };
            self.buf[key.start..key.start + PREFIX_LEN].copy_from_slice(&prefix);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn len_counts_every_write() {
        let mut batch = StoreBatch::default();
        assert!(batch.is_empty());
        assert_eq!(batch.len(), 0);
        batch.put(b"a", b"1");
        batch.delete(b"b");
        assert_eq!(batch.len(), 2);
        batch.set_source_offset(10);
        batch.set_source_offset(11);
        assert_eq!(batch.len(), 3, "setting an offset twice writes it once");
        batch.set_changelog_offset(4);
        batch.clear_partition();
        assert_eq!(batch.len(), 5);
        assert!(!batch.is_empty());
        batch.clear();
        assert!(batch.is_empty());

        let mut offsets_only = StoreBatch::new();
        offsets_only.set_changelog_offset(0);
        assert!(!offsets_only.is_empty());
    }

    #[test]
    fn prefixes_fill_key_placeholders_only() {
        let mut batch = StoreBatch::default();
        batch.put(b"k", b"value");
        batch.delete(b"");
        batch.fill_prefixes([9, 8, 7, 6, TAG_DATA]);
        let Op::Put { key, value } = &batch.ops[0] else {
            panic!("expected a put: {:?}", batch.ops[0]);
        };
        assert_eq!(&batch.buf[key.clone()], &[9, 8, 7, 6, TAG_DATA, b'k']);
        assert_eq!(&batch.buf[value.clone()], b"value");
        let Op::Delete { key } = &batch.ops[1] else {
            panic!("expected a delete: {:?}", batch.ops[1]);
        };
        assert_eq!(&batch.buf[key.clone()], &[9, 8, 7, 6, TAG_DATA]);
    }
}
