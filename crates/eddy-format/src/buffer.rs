//! Reusable columnar byte buffers: [`RawBatch`] (records in, as polled from Kafka) and
//! [`EncodedBatch`] (records out, ready to produce). Both keep all bytes of a batch in one
//! contiguous allocation and are cleared, not dropped, between batches, so steady-state
//! polling and producing allocate nothing per record.

/// Variable-length, nullable byte strings stored contiguously: `data[offsets[i]..offsets[i + 1]]`.
#[derive(Debug, Clone)]
pub struct ByteColumn {
    data: Vec<u8>,
    /// `len() + 1` entries, starting at 0.
    offsets: Vec<usize>,
    /// `true` where the entry is absent (a null key, a tombstone value).
    nulls: Vec<bool>,
}

impl Default for ByteColumn {
    fn default() -> Self {
        Self::new()
    }
}

impl ByteColumn {
    pub fn new() -> Self {
        Self {
            data: Vec::new(),
            offsets: vec![0],
            nulls: Vec::new(),
        }
    }

    /// Room for `entries` entries totalling `bytes` bytes without reallocating.
    pub fn with_capacity(entries: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(entries + 1);
        offsets.push(0);
        Self {
            data: Vec::with_capacity(bytes),
            offsets,
            nulls: Vec::with_capacity(entries),
        }
    }

    pub fn len(&self) -> usize {
        self.nulls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nulls.is_empty()
    }

    /// Removes every entry, keeping the allocations.
    pub fn clear(&mut self) {
        self.data.clear();
        self.offsets.truncate(1);
        self.nulls.clear();
    }

    pub fn push(&mut self, bytes: Option<&[u8]>) {
        match bytes {
            Some(b) => {
                self.data.extend_from_slice(b);
                self.end_value();
            }
            None => self.end_null(),
        }
    }

    /// Entry `i`; `None` when it is absent or `i` is out of range.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        if *self.nulls.get(i)? {
            return None;
        }
        let start = *self.offsets.get(i)?;
        let end = *self.offsets.get(i + 1)?;
        self.data.get(start..end)
    }

    /// All bytes of all entries, back to back.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The bytes written since the last entry ended: the entry being built by an encoder.
    pub(crate) fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.data
    }

    /// Ends the entry being built with the bytes written into [`Self::buffer`] since the last one.
    pub(crate) fn end_value(&mut self) {
        self.offsets.push(self.data.len());
        self.nulls.push(false);
    }

    /// Ends the entry being built as absent, dropping any bytes written for it.
    pub(crate) fn end_null(&mut self) {
        let start = self.offsets.last().copied().unwrap_or(0);
        self.data.truncate(start);
        self.offsets.push(start);
        self.nulls.push(true);
    }
}

/// A batch of Kafka records as polled, before decoding. Reused across polls: [`RawBatch::clear`]
/// keeps every allocation.
#[derive(Debug, Clone, Default)]
pub struct RawBatch {
    keys: ByteColumn,
    values: ByteColumn,
    timestamps_ms: Vec<i64>,
    partitions: Vec<i32>,
    offsets: Vec<i64>,
}

impl RawBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for `records` records with `bytes` bytes of keys and values together.
    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        Self {
            keys: ByteColumn::with_capacity(records, bytes / 8),
            values: ByteColumn::with_capacity(records, bytes),
            timestamps_ms: Vec::with_capacity(records),
            partitions: Vec::with_capacity(records),
            offsets: Vec::with_capacity(records),
        }
    }

    /// Appends one record; `None` is an absent key or a tombstone value.
    pub fn push(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp_ms: i64,
        partition: i32,
        offset: i64,
    ) {
        self.keys.push(key);
        self.values.push(value);
        self.timestamps_ms.push(timestamp_ms);
        self.partitions.push(partition);
        self.offsets.push(offset);
    }

    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Bytes of all keys and values together.
    pub fn payload_bytes(&self) -> usize {
        self.keys.data().len() + self.values.data().len()
    }

    /// Removes every record, keeping the allocations.
    pub fn clear(&mut self) {
        self.keys.clear();
        self.values.clear();
        self.timestamps_ms.clear();
        self.partitions.clear();
        self.offsets.clear();
    }

    /// Key of record `i`; `None` when absent or out of range.
    pub fn key(&self, i: usize) -> Option<&[u8]> {
        self.keys.get(i)
    }

    /// Value of record `i`; `None` for a tombstone or out of range.
    pub fn value(&self, i: usize) -> Option<&[u8]> {
        self.values.get(i)
    }

    pub fn keys(&self) -> &ByteColumn {
        &self.keys
    }

    pub fn values(&self) -> &ByteColumn {
        &self.values
    }

    pub fn timestamps_ms(&self) -> &[i64] {
        &self.timestamps_ms
    }

    pub fn partitions(&self) -> &[i32] {
        &self.partitions
    }

    pub fn offsets(&self) -> &[i64] {
        &self.offsets
    }
}

/// Encoded records ready to produce: row `i` of the encoded Arrow batch is `key(i)`/`value(i)`.
/// `None` is an absent key or a tombstone value.
#[derive(Debug, Clone, Default)]
pub struct EncodedBatch {
    pub(crate) keys: ByteColumn,
    pub(crate) values: ByteColumn,
}

impl EncodedBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Removes every record, keeping the allocations.
    pub fn clear(&mut self) {
        self.keys.clear();
        self.values.clear();
    }

    pub fn key(&self, i: usize) -> Option<&[u8]> {
        self.keys.get(i)
    }

    pub fn value(&self, i: usize) -> Option<&[u8]> {
        self.values.get(i)
    }

    pub fn keys(&self) -> &ByteColumn {
        &self.keys
    }

    pub fn values(&self) -> &ByteColumn {
        &self.values
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_batch_push_get_clear() {
        let mut raw = RawBatch::new();
        raw.push(Some(b"k1"), Some(b"v1"), 10, 0, 100);
        raw.push(None, None, 11, 1, 101);
        raw.push(Some(b""), Some(b"value3"), 12, 2, 102);
        assert_eq!(raw.len(), 3);
        assert_eq!(
            raw.payload_bytes(),
            2 + 2 + 6,
            "keys and values, absent ones count 0"
        );
        assert_eq!(raw.key(0), Some(&b"k1"[..]));
        assert_eq!(raw.value(0), Some(&b"v1"[..]));
        assert_eq!(raw.key(1), None);
        assert_eq!(raw.value(1), None);
        assert_eq!(raw.key(2), Some(&b""[..]));
        assert_eq!(raw.value(2), Some(&b"value3"[..]));
        assert_eq!(raw.value(3), None, "out of range is None, not a panic");
        assert_eq!(raw.timestamps_ms(), &[10, 11, 12]);
        assert_eq!(raw.partitions(), &[0, 1, 2]);
        assert_eq!(raw.offsets(), &[100, 101, 102]);

        let cap = raw.values().data.capacity();
        raw.clear();
        assert!(raw.is_empty());
        assert_eq!(raw.value(0), None);
        assert_eq!(raw.values().data.capacity(), cap);
        raw.push(Some(b"x"), Some(b"y"), 1, 0, 0);
        assert_eq!(raw.value(0), Some(&b"y"[..]));
    }

    #[test]
    fn byte_column_null_drops_partial_bytes() {
        let mut c = ByteColumn::new();
        c.buffer().extend_from_slice(b"abc");
        c.end_value();
        c.buffer().extend_from_slice(b"partial");
        c.end_null();
        c.push(Some(b"d"));
        assert_eq!(c.get(0), Some(&b"abc"[..]));
        assert_eq!(c.get(1), None);
        assert_eq!(c.get(2), Some(&b"d"[..]));
        assert_eq!(c.data(), b"abcd");
    }
}
