//! Windows of a windowed aggregation in a partition task's store.
//!
//! A windowed group is a (group key, window) pair. Its store key is the group key's arrow-row
//! bytes followed by the window: `start` for time windows, `end, start` for sessions (so that a
//! key's sessions are ordered by end, and those that may touch a new record are found with one
//! seek), each as [`ordered_time_bytes`]. Arrow-row bytes are prefix-free, so the group key's
//! bytes are a prefix of exactly its windows' keys: one prefix scan reads a key's windows.
//!
//! Besides the groups, a partition keeps (keys starting with `0xFF`):
//!
//! - its **stream time**, the largest event time it has seen;
//! - the **close index** `0xFF c [close time] [group key]` of windows an `EMIT FINAL` query has not
//!   emitted yet;
//! - the **expiry index** `0xFF x [expiry time] [group key]` of every window it keeps.
//!
//! The stream time and the close index go to the changelog like every state write; the expiry
//! index stays local, and a restore derives it from the windows' keys
//! (`aggregate::expiry_entry_of`).
//!
//! Both indexes are ordered by time, so a batch finds the windows that closed or expired with a
//! range scan from the start that stops at the first one still open.

use std::ops::Bound;

use eddy_common::window::{WindowSpec, ordered_time_bytes, time_from_ordered_bytes};
use eddy_state::{Store, prefix_successor};

use crate::query::QueryError;

/// Key of the partition's stream time (an `i64` big-endian).
pub(crate) const STREAM_TIME_KEY: &[u8] = b"\xffstream_time";

/// Prefix of the close index (windows an `EMIT FINAL` query still has to emit).
const CLOSE_INDEX_PREFIX: &[u8] = b"\xffc";

/// Prefix of the expiry index (every window kept, by the time it is dropped).
const EXPIRY_INDEX_PREFIX: &[u8] = b"\xffx";

/// Most windows one batch closes (emits, for `EMIT FINAL`) or expires; the rest wait for the
/// next batch. Bounds the work and the output of one batch when many windows end together.
pub(crate) const MAX_WINDOW_CHANGES_PER_BATCH: usize = 10_000;

/// Bytes the window adds to a group's store key.
pub(crate) fn suffix_len(spec: &WindowSpec) -> usize {
    if spec.is_session() { 16 } else { 8 }
}

/// Appends a window to a group key's bytes.
pub(crate) fn push_window(spec: &WindowSpec, key: &mut Vec<u8>, start: i64, end: i64) {
    if spec.is_session() {
        key.extend_from_slice(&ordered_time_bytes(end));
    }
    key.extend_from_slice(&ordered_time_bytes(start));
}

/// The group key bytes and window `(start, end)` of a windowed store key.
pub(crate) fn split_key<'k>(spec: &WindowSpec, key: &'k [u8]) -> Option<(&'k [u8], i64, i64)> {
    let at = key.len().checked_sub(suffix_len(spec))?;
    let (group, window) = key.split_at(at);
    let time = |bytes: &[u8]| -> Option<i64> {
        Some(time_from_ordered_bytes(<[u8; 8]>::try_from(bytes).ok()?))
    };
    if spec.is_session() {
        let end = time(&window[..8])?;
        let start = time(&window[8..])?;
        Some((group, start, end))
    } else {
        let start = time(window)?;
        Some((group, start, spec.end_of(start)))
    }
}

/// Which index an entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WindowIndex {
    Close,
    Expiry,
}

impl WindowIndex {
    fn prefix(self) -> &'static [u8] {
        match self {
            WindowIndex::Close => CLOSE_INDEX_PREFIX,
            WindowIndex::Expiry => EXPIRY_INDEX_PREFIX,
        }
    }

    /// The time at which this index acts on a window that ends at `end`.
    pub(crate) fn due_time(self, spec: &WindowSpec, end: i64) -> i64 {
        match self {
            WindowIndex::Close => spec.close_time(end),
            WindowIndex::Expiry => spec.expiry_time(end),
        }
    }

    /// The index entry of the window with store key `key`, due at `time`.
    pub(crate) fn entry(self, time: i64, key: &[u8]) -> Vec<u8> {
        let prefix = self.prefix();
        let mut entry = Vec::with_capacity(prefix.len() + 8 + key.len());
        entry.extend_from_slice(prefix);
        entry.extend_from_slice(&ordered_time_bytes(time));
        entry.extend_from_slice(key);
        entry
    }

    /// The windows due at or before `time`, oldest first, at most `limit`.
    pub(crate) fn due(
        self,
        store: &Store,
        partition: i32,
        time: i64,
        limit: usize,
    ) -> Result<Vec<DueWindow>, QueryError> {
        let prefix = self.prefix();
        let mut upper = prefix.to_vec();
        upper.extend_from_slice(&ordered_time_bytes(time));
        let mut due = Vec::new();
        let entries = store
            .scan_range(partition, Bound::Included(prefix), Bound::Unbounded)
            .map_err(state_error)?;
        for entry in entries {
            let (entry, _) = entry.map_err(state_error)?;
            // Entries are ordered by due time: stop at the first one that is not due.
            if !entry.starts_with(prefix) || entry[..upper.len().min(entry.len())] > upper[..] {
                break;
            }
            if due.len() >= limit {
                break;
            }
            let key = entry.get(prefix.len() + 8..).unwrap_or_default().to_vec();
            due.push(DueWindow {
                entry: entry.into_vec(),
                key,
            });
        }
        Ok(due)
    }
}

/// A window an index says is due.
pub(crate) struct DueWindow {
    /// The index entry (to delete once acted on).
    pub(crate) entry: Vec<u8>,
    /// The window's store key.
    pub(crate) key: Vec<u8>,
}

/// A session of one key as the store holds it.
pub(crate) struct StoredSession {
    pub(crate) key: Vec<u8>,
    /// The stored group state.
    pub(crate) value: Vec<u8>,
    pub(crate) start: i64,
    pub(crate) end: i64,
}

/// The stored sessions of group key `group` whose end is at or after `earliest_end` and whose
/// start is at or before `latest_start`, by end.
pub(crate) fn find_sessions(
    spec: &WindowSpec,
    store: &Store,
    partition: i32,
    group: &[u8],
    earliest_end: i64,
    latest_start: i64,
) -> Result<Vec<StoredSession>, QueryError> {
    let mut lower = group.to_vec();
    lower.extend_from_slice(&ordered_time_bytes(earliest_end));
    let upper = prefix_successor(group);
    let entries = store
        .scan_range(
            partition,
            Bound::Included(&lower),
            upper.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
        )
        .map_err(state_error)?;
    let mut found = Vec::new();
    for entry in entries {
        let (key, value) = entry.map_err(state_error)?;
        let Some((key_group, start, end)) = split_key(spec, &key) else {
            continue;
        };
        if key_group != group {
            continue;
        }
        // Sessions of one key do not overlap: ordered by end, they are ordered by start too.
        if start > latest_start {
            break;
        }
        found.push(StoredSession {
            key: key.into_vec(),
            value: value.into_vec(),
            start,
            end,
        });
    }
    Ok(found)
}

fn state_error(error: eddy_state::StateError) -> QueryError {
    QueryError::State(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_common::window::WindowKind;

    #[test]
    fn windowed_keys_split_back_into_group_and_window() {
        let session = WindowSpec::new(WindowKind::Session { gap_ms: 10 }, Some(0), None).unwrap();
        let mut key = b"group".to_vec();
        push_window(&session, &mut key, -5, 42);
        assert_eq!(split_key(&session, &key), Some((&b"group"[..], -5, 42)));
        let tumbling =
            WindowSpec::new(WindowKind::Tumbling { size_ms: 100 }, Some(0), None).unwrap();
        let mut key = b"g".to_vec();
        push_window(&tumbling, &mut key, 200, 300);
        assert_eq!(split_key(&tumbling, &key), Some((&b"g"[..], 200, 300)));
        assert_eq!(split_key(&tumbling, b"short"), None);
    }

    #[test]
    fn index_entries_sort_by_due_time() {
        let early = WindowIndex::Close.entry(-10, b"zzz");
        let late = WindowIndex::Close.entry(5, b"aaa");
        assert!(early < late);
        assert!(WindowIndex::Close.entry(i64::MAX, b"") < WindowIndex::Expiry.entry(i64::MIN, b""));
    }
}

/// Kafka's default partitioner hash (murmur2 with Kafka's seed), as the Java client computes
/// it: windowed records go to the partition of their key without the window, as Kafka Streams
/// writes them, so a windowed table lives where its keys do.
pub(crate) fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition Kafka's default partitioner gives `key` among `partitions`.
pub(crate) fn partition_of(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

/// Windowed record keys in ksqlDB's (Kafka Streams') format: the key as the key format
/// writes it, then the window start (time windows) or the window end and start (sessions),
/// each a big-endian `i64`; and each record's partition, from the key without its window.
pub(crate) struct WindowedKeys {
    buffer: Vec<u8>,
    ends: Vec<usize>,
    partitions: Vec<i32>,
}

impl WindowedKeys {
    pub(crate) fn new<'k>(
        spec: &WindowSpec,
        keys: impl Iterator<Item = Option<&'k [u8]>>,
        starts: &[i64],
        ends: &[i64],
        partitions: i32,
    ) -> Self {
        let mut buffer = Vec::new();
        let mut offsets = vec![0];
        let mut record_partitions = Vec::with_capacity(starts.len());
        for ((key, &start), &end) in keys.zip(starts).zip(ends) {
            let key = key.unwrap_or_default();
            record_partitions.push(partition_of(key, partitions));
            buffer.extend_from_slice(key);
            if spec.is_session() {
                buffer.extend_from_slice(&end.to_be_bytes());
            }
            buffer.extend_from_slice(&start.to_be_bytes());
            offsets.push(buffer.len());
        }
        Self {
            buffer,
            ends: offsets,
            partitions: record_partitions,
        }
    }

    pub(crate) fn key(&self, row: usize) -> &[u8] {
        &self.buffer[self.ends[row]..self.ends[row + 1]]
    }

    pub(crate) fn partition(&self, row: usize) -> i32 {
        self.partitions[row]
    }
}

#[cfg(test)]
mod murmur_tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Kafka's own test vectors for Utils.murmur2 (as signed 32-bit results).
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input) as i32,
                expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn windowed_keys_append_the_window_big_endian() {
        let spec = WindowSpec::new(
            eddy_common::window::WindowKind::Session { gap_ms: 5 },
            Some(0),
            None,
        )
        .unwrap();
        let keys = WindowedKeys::new(&spec, [Some(&b"k"[..])].into_iter(), &[1], &[2], 4);
        assert_eq!(keys.key(0), b"k\0\0\0\0\0\0\0\x02\0\0\0\0\0\0\0\x01");
        assert_eq!(keys.partition(0), partition_of(b"k", 4));
    }
}
