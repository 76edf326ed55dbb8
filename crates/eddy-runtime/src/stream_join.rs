//! Stream-stream joins (`FROM a JOIN b WITHIN n UNIT [GRACE PERIOD m UNIT] ON ...`): per
//! partition, both streams' recent records in RocksDB.
//!
//! Each partition task reads partition p of both streams (they are co-partitioned by the join
//! key, see `eddy-planner`'s `join`) with readers of its own, and works in *rounds*: a batch of
//! each side, read up to the high watermarks it has at that moment. A round takes each side's
//! rows only up to where a side with records not read yet runs out ([`round_cut`]); the other
//! side's rows after that point wait for the next round, and the next offsets stored with the
//! round are those of the first rows waiting. A round
//!
//! 1. advances the stream time (the largest event time read from either side) over both batches
//!    in the order Kafka Streams would process them (the side whose next record is older first)
//!    and drops the records that arrive after their window closed (late, logged);
//! 2. runs each side's stages, then pairs every new record with the other side's stored records
//!    and with the other side's new records, of the same key and within the window;
//! 3. for an outer side, emits each record that met no partner once its window has closed (its
//!    *close index* entry comes due), with NULLs for the other side;
//! 4. stores the new records for the window's retention (an *expiry index* deletes them later).
//!
//! Store layout (one store per query, keys prefixed by partition by `eddy-state`):
//!
//! ```text
//!  [side 'l'|'r'][join key (arrow-row)][event time (ordered)][sequence u64 BE] → row (arrow-row)
//!  ['c'][side 'l'|'r'][first sequence u64 BE]  (a row chunk, see below)        → expiry time i64 BE
//!  ['x'][expiry time (ordered)][row or chunk key]                              → ∅
//!  ['u'][close time (ordered)][row key]   (outer sides: records without partner) → ∅
//!  ['m'][name]                             stream time, sequences, next offsets → i64 BE
//! ```
//!
//! The join key's arrow-row bytes are prefix-free, so one key's records of one side are a range
//! ordered by event time, and a window is one range scan.
//!
//! The query's changelog (so that a lost local state is rebuilt) gets the close index and the
//! `m` entries key by key, but not the rows: the rows a round stores are logged in *row chunks*,
//! records of up to `join_changelog_record_bytes` holding many rows each
//! (`[expiry time i64 BE]` then `[u32 BE length][row key][u32 BE length][row]` per row), keyed by
//! the chunk key above. Rows are only ever deleted by their expiry, so a chunk is deleted from the
//! changelog (a tombstone) when its last row expires, and a row's own expiry deletes it from the
//! store only. Logging per row cost two changelog records for every record joined (its row and
//! its tombstone), each a broker write; chunks cost two per round and side. A restore puts each
//! chunk's rows back ([`StreamJoiner::rebuild_after_restore`]), rows of a live chunk that expired
//! since included: their expiry entries are due at once, and an expired row meets no record in
//! time. The expiry index follows from the row and chunk keys and is not logged either.

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt32Array,
};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{Int64Type, SchemaRef};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use eddy_common::window::{JoinWindow, ordered_time_bytes, time_from_ordered_bytes};
use eddy_format::SourceLayout;
use eddy_planner::{JoinKind, JoinPlan, StreamJoin};
use eddy_state::Store;

use crate::query::QueryError;

/// Most close- and expiry-index entries one round handles; the rest wait for the next round, so
/// a jump of the stream time over many records does not make one huge batch.
pub const MAX_JOIN_INDEX_ENTRIES_PER_ROUND: usize = 10_000;

const LEFT_ROW: u8 = b'l';
const RIGHT_ROW: u8 = b'r';
const EXPIRY_INDEX: u8 = b'x';
const ROW_CHUNK: u8 = b'c';
/// Length of a chunk's header (its expiry time) and of its store entry.
const CHUNK_HEADER_LEN: usize = 8;
const CLOSE_INDEX: u8 = b'u';
const STREAM_TIME_KEY: &[u8] = b"mstream_time";
const SEQUENCE_KEYS: [&[u8]; 2] = [b"msequence_l", b"msequence_r"];
const NEXT_OFFSET_KEYS: [&[u8]; 2] = [b"mnext_offset_l", b"mnext_offset_r"];
/// Event time and sequence after the join key in a row key.
const ROW_KEY_SUFFIX_LEN: usize = 16;

/// Where the right stream of a stream-stream join is and how its records are read.
#[derive(Clone)]
pub struct RightStreamSpec {
    /// Physical topic.
    pub topic: String,
    pub layout: SourceLayout,
    /// Decoded column holding the event time (`TIMESTAMP='col'`), as for the query's source.
    pub timestamp_column: Option<usize>,
    pub timestamp_format: Option<eddy_format::TimestampFormat>,
    /// Where this stream starts when the query has no stored progress (the query's left input
    /// may start elsewhere: a repartition topic is read from its beginning).
    pub offset_reset: crate::OffsetReset,
}

/// One side of the join: 0 left, 1 right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Side {
    Left = 0,
    Right = 1,
}

impl Side {
    fn tag(self) -> u8 {
        match self {
            Side::Left => LEFT_ROW,
            Side::Right => RIGHT_ROW,
        }
    }

    fn is_left(self) -> bool {
        self == Side::Left
    }
}

/// How many rows of each side's decoded batch (column 0 is `ROWTIME`, each side in offset
/// order) a round takes: the rows Kafka Streams would process, in the order of
/// [`StreamJoiner::advance`], before it needs a record not read yet.
///
/// `more_unread[side]` says whether the side's partition holds records after its batch. When
/// such a side's batch runs out, the round ends there: its next record may be older than the
/// other side's next rows, which wait for the next round, so that the stream time does not pass
/// records of this side not yet read. (Over a backlog, the batch of a sparse side, such as
/// auctions beside their bids, spans far more event time than the other's; taking it whole made
/// the other side's next records late.) A side read to its end does not hold the other back:
/// its next record is not written yet, and Kafka Streams does not wait for it either
/// (`max.task.idle.ms` 0).
pub(crate) fn round_cut(
    left: &RecordBatch,
    right: &RecordBatch,
    more_unread: [bool; 2],
) -> Result<[usize; 2], QueryError> {
    let (left_times, right_times) = (row_times(left)?, row_times(right)?);
    let (mut l, mut r) = (0, 0);
    loop {
        let (left_done, right_done) = (l == left_times.len(), r == right_times.len());
        let waits_for_left = left_done && more_unread[Side::Left as usize];
        let waits_for_right = right_done && more_unread[Side::Right as usize];
        if (left_done && right_done) || waits_for_left || waits_for_right {
            return Ok([l, r]);
        }
        if left_is_next(left_times, right_times, l, r) {
            l += 1;
        } else {
            r += 1;
        }
    }
}

/// A decoded batch's `ROWTIME` (column 0).
fn row_times(batch: &RecordBatch) -> Result<&Int64Array, QueryError> {
    batch
        .column(0)
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| QueryError::Internal("ROWTIME is not BIGINT".into()))
}

/// Whether, with `l` left rows and `r` right rows processed (not both sides done), the next
/// record processed is the left one: the side whose next record is older goes first, the left
/// on a tie.
fn left_is_next(left_times: &Int64Array, right_times: &Int64Array, l: usize, r: usize) -> bool {
    r >= right_times.len() || (l < left_times.len() && left_times.value(l) <= right_times.value(r))
}

/// What one round produces: the pairs to join (indices into each side's candidate rows, NULL for
/// the side an unmatched outer row lacks), the key of each pair, and the state changes.
pub(crate) struct Round {
    pub left_rows: RecordBatch,
    pub left: UInt32Array,
    pub right_rows: RecordBatch,
    pub right: UInt32Array,
    pub keys: Vec<ArrayRef>,
    /// Store and changelog writes: key → value, `None` deletes.
    pub writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Store writes kept out of the changelog (rows and the expiry index, rebuilt after a
    /// restore from the row chunks).
    pub local_writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Changelog records that are not store entries as such: the row chunks of the rows stored.
    pub changelog_writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// A record read back from the store.
struct Stored {
    row_key: Box<[u8]>,
    time: i64,
    value: Box<[u8]>,
}

/// Partition p of a stream-stream join: its stream time and what it knows of the store.
pub(crate) struct StreamJoiner {
    store: Store,
    partition: i32,
    window: JoinWindow,
    kind: JoinKind,
    key_converter: RowConverter,
    row_converters: [RowConverter; 2],
    row_schemas: [SchemaRef; 2],
    time_columns: [usize; 2],
    /// Largest event time read from either side; `None` before the first record.
    stream_time: Option<i64>,
    next_sequence: [u64; 2],
    next_offsets: [Option<i64>; 2],
    /// Most bytes of rows in one changelog record (`join_changelog_record_bytes`); `None`
    /// when the join has no changelog (a push query's), which then builds no row chunks.
    changelog_record_bytes: Option<usize>,
}

impl StreamJoiner {
    /// Partition `partition` of the join, from what its (restored) store holds; its rows go to
    /// the changelog in records of up to `changelog_record_bytes` bytes of rows (`None`: the
    /// join has no changelog).
    pub(crate) fn open(
        store: Store,
        partition: i32,
        join: &JoinPlan,
        changelog_record_bytes: Option<usize>,
    ) -> Result<Self, QueryError> {
        let stream_join = stream_join_of(join)?;
        let converter = |fields: Vec<SortField>| {
            RowConverter::new(fields).map_err(|e| {
                QueryError::Plan(format!("the joined streams' rows cannot be stored: {e}"))
            })
        };
        let fields = |schema: &SchemaRef| {
            schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect::<Vec<_>>()
        };
        let key_converter = converter(
            join.table_key_types
                .iter()
                .map(|t| SortField::new(t.clone()))
                .collect(),
        )?;
        let row_schemas = [
            Arc::clone(&stream_join.left_row_schema),
            Arc::clone(&join.table_row_schema),
        ];
        let row_converters = [
            converter(fields(&row_schemas[0]))?,
            converter(fields(&row_schemas[1]))?,
        ];
        let read_i64 = |key: &[u8]| -> Result<Option<i64>, QueryError> {
            let value = store.get(partition, key).map_err(state_error)?;
            Ok(value
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map(i64::from_be_bytes))
        };
        let stream_time = read_i64(STREAM_TIME_KEY)?;
        let next_sequence = [
            read_i64(SEQUENCE_KEYS[0])?.unwrap_or(0) as u64,
            read_i64(SEQUENCE_KEYS[1])?.unwrap_or(0) as u64,
        ];
        let next_offsets = [
            read_i64(NEXT_OFFSET_KEYS[0])?,
            read_i64(NEXT_OFFSET_KEYS[1])?,
        ];
        Ok(Self {
            store,
            partition,
            window: stream_join.window,
            kind: join.kind,
            key_converter,
            row_converters,
            row_schemas,
            time_columns: [stream_join.left_time_column, stream_join.right_time_column],
            stream_time,
            next_sequence,
            next_offsets,
            changelog_record_bytes: changelog_record_bytes.map(|bytes| bytes.max(1)),
        })
    }

    /// The next offset of a side that the store recorded (`None`: the side was never read).
    pub(crate) fn next_offset(&self, side: Side) -> Option<i64> {
        self.next_offsets[side as usize]
    }

    pub(crate) fn stream_time(&self) -> Option<i64> {
        self.stream_time
    }

    /// Advances the stream time over both sides' decoded batches (column 0 is `ROWTIME`) in the
    /// order Kafka Streams processes two partitions (the side whose next record is older first;
    /// each side in offset order) and returns which rows of each side are in time (not late).
    pub(crate) fn advance(
        &mut self,
        left: &RecordBatch,
        right: &RecordBatch,
    ) -> Result<[BooleanArray; 2], QueryError> {
        let (left_times, right_times) = (row_times(left)?, row_times(right)?);
        let mut in_time = [
            Vec::with_capacity(left_times.len()),
            Vec::with_capacity(right_times.len()),
        ];
        let (mut l, mut r) = (0, 0);
        while l < left_times.len() || r < right_times.len() {
            let take_left = left_is_next(left_times, right_times, l, r);
            let (side, time) = if take_left {
                l += 1;
                (Side::Left, left_times.value(l - 1))
            } else {
                r += 1;
                (Side::Right, right_times.value(r - 1))
            };
            let stream_time = self.stream_time.map_or(time, |t| t.max(time));
            self.stream_time = Some(stream_time);
            in_time[side as usize]
                .push(self.window.close_time(side.is_left(), time) >= stream_time);
        }
        let [left_in_time, right_in_time] = in_time;
        Ok([
            BooleanArray::from(left_in_time),
            BooleanArray::from(right_in_time),
        ])
    }

    /// Joins a round's new rows (each side's stage output, in time) with each other and with
    /// the stored rows, closes and expires what the stream time has passed, and says how the
    /// store changes. `next_offsets` are the sides' next offsets after the round.
    pub(crate) fn round(
        &mut self,
        join: &JoinPlan,
        left_rows: RecordBatch,
        right_rows: RecordBatch,
        next_offsets: [i64; 2],
    ) -> Result<Round, QueryError> {
        let expression =
            |e: datafusion::common::DataFusionError| QueryError::Expression(e.strip_backtrace());
        let internal =
            |what: &str, e: &dyn std::fmt::Display| QueryError::Internal(format!("{what}: {e}"));
        let stream_time = self.stream_time.unwrap_or(i64::MIN);
        let new_rows = [left_rows, right_rows];
        let key_columns = [
            join.stream_keys(&new_rows[0]).map_err(expression)?,
            join.right_stream_keys(&new_rows[1]).map_err(expression)?,
        ];
        let keys: [Rows; 2] = [
            self.key_converter
                .convert_columns(&key_columns[0])
                .map_err(|e| internal("join key", &e))?,
            self.key_converter
                .convert_columns(&key_columns[1])
                .map_err(|e| internal("join key", &e))?,
        ];
        let times = [
            time_values(&new_rows[0], self.time_columns[0])?,
            time_values(&new_rows[1], self.time_columns[1])?,
        ];
        let has_key = |side: usize, row: usize| key_columns[side].iter().all(|k| k.is_valid(row));
        let outer = [
            matches!(self.kind, JoinKind::Left | JoinKind::Full),
            matches!(self.kind, JoinKind::Right | JoinKind::Full),
        ];

        // The other side's stored rows each new row may meet, per key: one range scan per key.
        let mut stored: [Vec<Stored>; 2] = [Vec::new(), Vec::new()];
        let mut stored_by_key: [HashMap<&[u8], std::ops::Range<usize>>; 2] =
            [HashMap::new(), HashMap::new()];
        for side in [Side::Left, Side::Right] {
            let other = 1 - side as usize;
            let mut spans: HashMap<&[u8], (i64, i64)> = HashMap::new();
            for (row, &time) in times[side as usize].iter().enumerate() {
                if !has_key(side as usize, row) {
                    continue;
                }
                let span = spans
                    .entry(keys[side as usize].row(row).data())
                    .or_insert((time, time));
                span.0 = span.0.min(time);
                span.1 = span.1.max(time);
            }
            let other_tag = if side.is_left() { RIGHT_ROW } else { LEFT_ROW };
            for (key, (min, max)) in spans {
                // A left row at t meets right rows in [t - before, t + after]; a right row at t
                // meets left rows in [t - after, t + before].
                let (back, ahead) = if side.is_left() {
                    (self.window.before_ms, self.window.after_ms)
                } else {
                    (self.window.after_ms, self.window.before_ms)
                };
                let from = row_key_prefix(other_tag, key, min.saturating_sub(back));
                let to =
                    row_key_prefix(other_tag, key, max.saturating_add(ahead).saturating_add(1));
                let start = stored[other].len();
                let scan = self
                    .store
                    .scan_range(self.partition, Bound::Included(&from), Bound::Excluded(&to))
                    .map_err(state_error)?;
                for entry in scan {
                    let (row_key, value) = entry.map_err(state_error)?;
                    let time = row_key_time(&row_key)?;
                    stored[other].push(Stored {
                        row_key,
                        time,
                        value,
                    });
                }
                stored_by_key[other].insert(key, start..stored[other].len());
            }
        }

        // Pairs, as (side row references): new rows are 0.., stored ones are numbered after.
        let counts = [new_rows[0].num_rows(), new_rows[1].num_rows()];
        let mut used_stored: [HashMap<usize, u32>; 2] = [HashMap::new(), HashMap::new()];
        let mut pair_left: Vec<Option<u32>> = Vec::new();
        let mut pair_right: Vec<Option<u32>> = Vec::new();
        let mut pair_keys: Vec<&[u8]> = Vec::new();
        let mut matched_new = [vec![false; counts[0]], vec![false; counts[1]]];
        let mut matched_stored: HashSet<&[u8]> = HashSet::new();
        let window = self.window;
        // New rows of one side against the other side's stored rows.
        for side in [Side::Left, Side::Right] {
            let s = side as usize;
            let other = 1 - s;
            for row in 0..counts[s] {
                if !has_key(s, row) {
                    continue;
                }
                let key = keys[s].row(row).data();
                let Some(range) = stored_by_key[other].get(key) else {
                    continue;
                };
                let time = times[s][row];
                for index in range.clone() {
                    let candidate = &stored[other][index];
                    let joins = if side.is_left() {
                        window.joins(time, candidate.time)
                    } else {
                        window.joins(candidate.time, time)
                    };
                    if !joins {
                        continue;
                    }
                    let next = used_stored[other].len() as u32;
                    let reference =
                        counts[other] as u32 + *used_stored[other].entry(index).or_insert(next);
                    let (l, r) = if side.is_left() {
                        (row as u32, reference)
                    } else {
                        (reference, row as u32)
                    };
                    pair_left.push(Some(l));
                    pair_right.push(Some(r));
                    pair_keys.push(key);
                    matched_new[s][row] = true;
                    if outer[other] {
                        matched_stored.insert(&candidate.row_key[..]);
                    }
                }
            }
        }
        // New rows against new rows of the other side.
        let mut new_right_by_key: HashMap<&[u8], Vec<usize>> = HashMap::new();
        for row in 0..counts[1] {
            if has_key(1, row) {
                new_right_by_key
                    .entry(keys[1].row(row).data())
                    .or_default()
                    .push(row);
            }
        }
        for row in 0..counts[0] {
            if !has_key(0, row) {
                continue;
            }
            let key = keys[0].row(row).data();
            let Some(rights) = new_right_by_key.get(key) else {
                continue;
            };
            for &right in rights {
                if window.joins(times[0][row], times[1][right]) {
                    pair_left.push(Some(row as u32));
                    pair_right.push(Some(right as u32));
                    pair_keys.push(key);
                    matched_new[0][row] = true;
                    matched_new[1][right] = true;
                }
            }
        }

        let mut writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut local_writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut changelog_writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        // Stored rows that found a partner leave the close index.
        for row_key in &matched_stored {
            let Some(side) = row_side(row_key) else {
                continue;
            };
            let close = window.close_time(side.is_left(), row_key_time(row_key)?);
            writes.push((index_key(CLOSE_INDEX, close, row_key), None));
        }

        // New rows: stored for the window's retention; an outer side's unmatched rows wait for
        // their window to close, or go out now when it already has (a NULL key never joins).
        let row_values = [
            self.row_converters[0]
                .convert_columns(new_rows[0].columns())
                .map_err(|e| internal("joined row", &e))?,
            self.row_converters[1]
                .convert_columns(new_rows[1].columns())
                .map_err(|e| internal("joined row", &e))?,
        ];
        for side in [Side::Left, Side::Right] {
            let s = side as usize;
            let mut chunk = self
                .changelog_record_bytes
                .map(|bytes| RowChunk::new(side, bytes));
            for row in 0..counts[s] {
                let time = times[s][row];
                let key = keys[s].row(row).data();
                let unmatched = outer[s] && !matched_new[s][row];
                if !has_key(s, row) || window.close_time(side.is_left(), time) < stream_time {
                    if unmatched {
                        push_alone(
                            side,
                            row as u32,
                            key,
                            &mut pair_left,
                            &mut pair_right,
                            &mut pair_keys,
                        );
                    }
                    if !has_key(s, row) {
                        continue;
                    }
                }
                if window.expiry_time(time) < stream_time {
                    continue;
                }
                let sequence = self.next_sequence[s];
                self.next_sequence[s] += 1;
                let mut row_key = row_key_prefix(side.tag(), key, time);
                row_key.extend_from_slice(&sequence.to_be_bytes());
                local_writes.push((
                    index_key(EXPIRY_INDEX, window.expiry_time(time), &row_key),
                    Some(Vec::new()),
                ));
                if unmatched && window.close_time(side.is_left(), time) >= stream_time {
                    writes.push((
                        index_key(
                            CLOSE_INDEX,
                            window.close_time(side.is_left(), time),
                            &row_key,
                        ),
                        Some(Vec::new()),
                    ));
                }
                let value = row_values[s].row(row).data();
                if let Some(chunk) = chunk.as_mut() {
                    chunk.push(
                        sequence,
                        &row_key,
                        value,
                        window.expiry_time(time),
                        &mut changelog_writes,
                        &mut local_writes,
                    );
                }
                local_writes.push((row_key, Some(value.to_vec())));
            }
            if let Some(chunk) = chunk.as_mut() {
                chunk.finish(&mut changelog_writes, &mut local_writes);
            }
        }

        // Stored rows whose window closed without a partner: out with NULLs for the other side.
        let mut closed: Vec<Stored> = Vec::new();
        let mut index_full = false;
        if outer[0] || outer[1] {
            let upper = index_key(CLOSE_INDEX, stream_time, &[]);
            let scan = self
                .store
                .scan_range(
                    self.partition,
                    Bound::Included(&[CLOSE_INDEX][..]),
                    Bound::Excluded(&upper[..]),
                )
                .map_err(state_error)?;
            let mut due_rows: Vec<Box<[u8]>> = Vec::new();
            for entry in scan {
                let (index, _) = entry.map_err(state_error)?;
                if due_rows.len() >= MAX_JOIN_INDEX_ENTRIES_PER_ROUND {
                    index_full = true;
                    break;
                }
                writes.push((index.to_vec(), None));
                let row_key: Box<[u8]> = Box::from(&index[9..]);
                if !matched_stored.contains(&row_key[..]) {
                    due_rows.push(row_key);
                }
            }
            let wanted: Vec<&[u8]> = due_rows.iter().map(|k| &k[..]).collect();
            let values = self
                .store
                .multi_get(self.partition, &wanted)
                .map_err(state_error)?;
            for (row_key, value) in due_rows.into_iter().zip(values) {
                if let Some(value) = value {
                    let time = row_key_time(&row_key)?;
                    closed.push(Stored {
                        row_key,
                        time,
                        value: value.into_boxed_slice(),
                    });
                }
            }
        }

        // Expired rows leave the store (after every close is handled: a close comes no later).
        if !index_full {
            let upper = index_key(EXPIRY_INDEX, stream_time, &[]);
            let scan = self
                .store
                .scan_range(
                    self.partition,
                    Bound::Included(&[EXPIRY_INDEX][..]),
                    Bound::Excluded(&upper[..]),
                )
                .map_err(state_error)?;
            for entry in scan.take(MAX_JOIN_INDEX_ENTRIES_PER_ROUND) {
                let (index, _) = entry.map_err(state_error)?;
                // A chunk leaves the changelog with its last row; a row only leaves the store.
                let expired = index[9..].to_vec();
                if expired.first() == Some(&ROW_CHUNK) {
                    writes.push((expired, None));
                } else {
                    local_writes.push((expired, None));
                }
                local_writes.push((index.to_vec(), None));
            }
        }

        // The candidate rows of each side: new rows, then the stored rows pairs use, then the
        // closed rows (each alone).
        let mut stored_rows: [Vec<&[u8]>; 2] = [Vec::new(), Vec::new()];
        for s in 0..2 {
            let mut used: Vec<(u32, usize)> =
                used_stored[s].iter().map(|(&i, &n)| (n, i)).collect();
            used.sort_unstable();
            stored_rows[s] = used.iter().map(|&(_, i)| &stored[s][i].value[..]).collect();
        }
        let mut closed_count = [0u32; 2];
        for row in &closed {
            let Some(side) = row_side(&row.row_key) else {
                continue;
            };
            let s = side as usize;
            let reference = (counts[s] + stored_rows[s].len()) as u32 + closed_count[s];
            closed_count[s] += 1;
            let key = &row.row_key[1..row.row_key.len() - ROW_KEY_SUFFIX_LEN];
            push_alone(
                side,
                reference,
                key,
                &mut pair_left,
                &mut pair_right,
                &mut pair_keys,
            );
        }
        for (s, rows) in stored_rows.iter_mut().enumerate() {
            for row in &closed {
                if row_side(&row.row_key).map(|side| side as usize) == Some(s) {
                    rows.push(&row.value[..]);
                }
            }
        }
        let [left_new, right_new] = new_rows;
        let left_rows = self.candidates(0, left_new, &stored_rows[0])?;
        let right_rows = self.candidates(1, right_new, &stored_rows[1])?;
        let key_parser = self.key_converter.parser();
        let keys = self
            .key_converter
            .convert_rows(pair_keys.iter().map(|k| key_parser.parse(k)))
            .map_err(|e| internal("join key", &e))?;

        for (side, offset) in [Side::Left, Side::Right].into_iter().zip(next_offsets) {
            self.next_offsets[side as usize] = Some(offset);
            writes.push((
                NEXT_OFFSET_KEYS[side as usize].to_vec(),
                Some(offset.to_be_bytes().to_vec()),
            ));
            writes.push((
                SEQUENCE_KEYS[side as usize].to_vec(),
                Some(
                    (self.next_sequence[side as usize] as i64)
                        .to_be_bytes()
                        .to_vec(),
                ),
            ));
        }
        if let Some(time) = self.stream_time {
            writes.push((STREAM_TIME_KEY.to_vec(), Some(time.to_be_bytes().to_vec())));
        }
        Ok(Round {
            left_rows,
            left: UInt32Array::from(pair_left),
            right_rows,
            right: UInt32Array::from(pair_right),
            keys,
            writes,
            local_writes,
            changelog_writes,
        })
    }

    /// After a restore from the changelog: puts the rows of every restored row chunk into the
    /// store (keeping the chunk as its expiry time), then writes the expiry index entry of every
    /// stored row and chunk (the index is not in the changelog; it follows from their keys).
    /// Entries of rows deleted since are harmless: expiring them deletes nothing. Returns the
    /// number of rows stored.
    pub(crate) fn rebuild_after_restore(&self) -> Result<usize, QueryError> {
        let mut batch = eddy_state::StoreBatch::default();
        let mut batch_bytes = 0usize;
        for entry in self
            .store
            .scan_prefix(self.partition, &[ROW_CHUNK])
            .map_err(state_error)?
        {
            let (chunk_key, payload) = entry.map_err(state_error)?;
            if payload.len() == CHUNK_HEADER_LEN {
                continue; // its rows are in the store already
            }
            let malformed = || {
                QueryError::State(format!(
                    "the changelog record of join rows {} of partition {} is malformed",
                    hex(&chunk_key),
                    self.partition
                ))
            };
            let (expiry, rows) = chunk_rows(&payload).ok_or_else(malformed)?;
            for (row_key, row) in rows {
                if row_side(row_key).is_none() {
                    return Err(malformed());
                }
                batch.put(row_key, row);
                batch_bytes += row_key.len() + row.len();
            }
            batch.put(&chunk_key, &expiry.to_be_bytes());
            if batch_bytes >= REBUILD_BATCH_BYTES {
                self.store
                    .write(self.partition, std::mem::take(&mut batch))
                    .map_err(state_error)?;
                batch_bytes = 0;
            }
        }
        self.store
            .write(self.partition, std::mem::take(&mut batch))
            .map_err(state_error)?;

        let mut rows = 0;
        for tag in [LEFT_ROW, RIGHT_ROW] {
            for entry in self
                .store
                .scan_prefix(self.partition, &[tag])
                .map_err(state_error)?
            {
                let (row_key, _) = entry.map_err(state_error)?;
                let expiry = self.window.expiry_time(row_key_time(&row_key)?);
                batch.put(&index_key(EXPIRY_INDEX, expiry, &row_key), &[]);
                rows += 1;
            }
        }
        for entry in self
            .store
            .scan_prefix(self.partition, &[ROW_CHUNK])
            .map_err(state_error)?
        {
            let (chunk_key, expiry) = entry.map_err(state_error)?;
            let expiry = <[u8; 8]>::try_from(&expiry[..])
                .map(i64::from_be_bytes)
                .map_err(|_| QueryError::State("a join row chunk without expiry time".into()))?;
            batch.put(&index_key(EXPIRY_INDEX, expiry, &chunk_key), &[]);
        }
        self.store
            .write(self.partition, batch)
            .map_err(state_error)?;
        Ok(rows)
    }

    /// A side's new rows followed by decoded stored rows.
    fn candidates(
        &self,
        side: usize,
        new_rows: RecordBatch,
        stored: &[&[u8]],
    ) -> Result<RecordBatch, QueryError> {
        if stored.is_empty() {
            return Ok(new_rows);
        }
        let converter = &self.row_converters[side];
        let parser = converter.parser();
        let columns = converter
            .convert_rows(stored.iter().map(|bytes| parser.parse(bytes)))
            .map_err(|e| QueryError::Internal(format!("stored joined row: {e}")))?;
        let schema = Arc::clone(&self.row_schemas[side]);
        let stored = RecordBatch::try_new_with_options(
            Arc::clone(&schema),
            columns,
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(stored.len())),
        )
        .map_err(|e| QueryError::Internal(format!("stored joined rows: {e}")))?;
        concat_batches(&schema, [&new_rows, &stored])
            .map_err(|e| QueryError::Internal(format!("joined rows: {e}")))
    }
}

/// Bytes of rows put into the store per write while unpacking restored row chunks.
const REBUILD_BATCH_BYTES: usize = 4 << 20;

/// The rows one side of a round stores, packed into changelog records of up to `max_bytes`
/// bytes of rows (a larger row makes a record of its own). Each finished chunk goes to the
/// changelog whole and to the store as its expiry time (the latest of its rows), with an expiry
/// index entry.
struct RowChunk {
    tag: u8,
    max_bytes: usize,
    /// Key of the chunk being filled (from its first row's sequence); empty when none is.
    key: Vec<u8>,
    expiry: i64,
    payload: Vec<u8>,
}

impl RowChunk {
    fn new(side: Side, max_bytes: usize) -> Self {
        Self {
            tag: side.tag(),
            max_bytes,
            key: Vec::new(),
            expiry: i64::MIN,
            payload: Vec::new(),
        }
    }

    fn push(
        &mut self,
        sequence: u64,
        row_key: &[u8],
        row: &[u8],
        expiry: i64,
        changelog_writes: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>,
        local_writes: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) {
        let row_bytes = 8 + row_key.len() + row.len();
        if !self.key.is_empty()
            && self.payload.len() - CHUNK_HEADER_LEN + row_bytes > self.max_bytes
        {
            self.finish(changelog_writes, local_writes);
        }
        if self.key.is_empty() {
            self.key = chunk_key(self.tag, sequence);
            self.expiry = i64::MIN;
            self.payload.clear();
            self.payload.extend_from_slice(&[0; CHUNK_HEADER_LEN]);
        }
        self.expiry = self.expiry.max(expiry);
        for part in [row_key, row] {
            self.payload
                .extend_from_slice(&(part.len() as u32).to_be_bytes());
            self.payload.extend_from_slice(part);
        }
    }

    /// Hands over the chunk being filled, if any.
    fn finish(
        &mut self,
        changelog_writes: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>,
        local_writes: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) {
        if self.key.is_empty() {
            return;
        }
        let key = std::mem::take(&mut self.key);
        let expiry = self.expiry.to_be_bytes();
        self.payload[..CHUNK_HEADER_LEN].copy_from_slice(&expiry);
        local_writes.push((index_key(EXPIRY_INDEX, self.expiry, &key), Some(Vec::new())));
        local_writes.push((key.clone(), Some(expiry.to_vec())));
        changelog_writes.push((key, Some(std::mem::take(&mut self.payload))));
    }
}

fn chunk_key(tag: u8, sequence: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(10);
    key.push(ROW_CHUNK);
    key.push(tag);
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

/// A row chunk's expiry time and its (row key, row) pairs.
type ChunkRows<'p> = (i64, Vec<(&'p [u8], &'p [u8])>);

/// The expiry time and rows of a row chunk; `None` if it is malformed.
fn chunk_rows(payload: &[u8]) -> Option<ChunkRows<'_>> {
    fn part<'p>(rest: &mut &'p [u8]) -> Option<&'p [u8]> {
        let (length, tail) = rest.split_at_checked(4)?;
        let length = u32::from_be_bytes(length.try_into().ok()?) as usize;
        let (part, tail) = tail.split_at_checked(length)?;
        *rest = tail;
        Some(part)
    }
    let (header, mut rest) = payload.split_at_checked(CHUNK_HEADER_LEN)?;
    let expiry = i64::from_be_bytes(header.try_into().ok()?);
    let mut rows = Vec::new();
    while !rest.is_empty() {
        let row_key = part(&mut rest)?;
        let row = part(&mut rest)?;
        rows.push((row_key, row));
    }
    (!rows.is_empty()).then_some((expiry, rows))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The stream-stream part of a join plan.
fn stream_join_of(join: &JoinPlan) -> Result<&StreamJoin, QueryError> {
    join.stream_join
        .as_ref()
        .ok_or_else(|| QueryError::Internal("not a stream-stream join".into()))
}

/// One output row of a side's row alone (an outer join's row without partner).
fn push_alone<'k>(
    side: Side,
    reference: u32,
    key: &'k [u8],
    left: &mut Vec<Option<u32>>,
    right: &mut Vec<Option<u32>>,
    keys: &mut Vec<&'k [u8]>,
) {
    if side.is_left() {
        left.push(Some(reference));
        right.push(None);
    } else {
        left.push(None);
        right.push(Some(reference));
    }
    keys.push(key);
}

/// `[tag][key][time]`: the start of a key's rows of one side at `time`.
fn row_key_prefix(tag: u8, key: &[u8], time: i64) -> Vec<u8> {
    let mut row_key = Vec::with_capacity(1 + key.len() + ROW_KEY_SUFFIX_LEN);
    row_key.push(tag);
    row_key.extend_from_slice(key);
    row_key.extend_from_slice(&ordered_time_bytes(time));
    row_key
}

/// `[tag][time][row key]`: an entry of the close or expiry index.
fn index_key(tag: u8, time: i64, row_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + row_key.len());
    key.push(tag);
    key.extend_from_slice(&ordered_time_bytes(time));
    key.extend_from_slice(row_key);
    key
}

fn row_side(row_key: &[u8]) -> Option<Side> {
    match row_key.first() {
        Some(&LEFT_ROW) => Some(Side::Left),
        Some(&RIGHT_ROW) => Some(Side::Right),
        _ => None,
    }
}

/// The event time in a row key (before its sequence number).
fn row_key_time(row_key: &[u8]) -> Result<i64, QueryError> {
    let end = row_key.len().checked_sub(8);
    let bytes = end
        .and_then(|end| end.checked_sub(8).map(|start| &row_key[start..end]))
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .ok_or_else(|| QueryError::State("a stream join's row key is too short".into()))?;
    Ok(time_from_ordered_bytes(bytes))
}

/// The event times of a side's rows (its `ROWTIME` column, never NULL).
fn time_values(rows: &RecordBatch, column: usize) -> Result<Vec<i64>, QueryError> {
    let times = rows
        .column(column)
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| QueryError::Internal("a joined stream's ROWTIME is not BIGINT".into()))?;
    Ok((0..times.len())
        .map(|i| {
            if times.is_valid(i) {
                times.value(i)
            } else {
                i64::MIN
            }
        })
        .collect())
}

fn state_error(error: eddy_state::StateError) -> QueryError {
    QueryError::State(error.to_string())
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int32Array, Int64Array, StringArray};
    use eddy_catalog::{ColumnRole, Source, SourceKind};
    use eddy_common::types::SqlType;
    use eddy_planner::{Clauses, StreamingPlan};
    use eddy_state::{StateConfig, StateStore, StoreBatch};

    use super::*;

    fn stream(name: &str, key: &str, value: &str) -> Source {
        let columns = [
            (key, SqlType::String, ColumnRole::Key),
            (value, SqlType::String, ColumnRole::Value),
        ];
        crate::test_support::source(name, SourceKind::Stream, &columns, 1)
    }

    /// `ORDERS (ID KEY, ITEM) FULL OUTER JOIN SHIPMENTS (ORDER_ID KEY, CARRIER) WITHIN 10 ms,
    /// no grace`.
    async fn full_join() -> StreamingPlan {
        let sql = r#"SELECT o."ID", o."ITEM", s."CARRIER" FROM "ORDERS" o FULL OUTER JOIN "SHIPMENTS" s ON o."ID" = s."ORDER_ID""#;
        let sources = [
            stream("ORDERS", "ID", "ITEM"),
            stream("SHIPMENTS", "ORDER_ID", "CARRIER"),
        ];
        let clauses = Clauses {
            within: Some(JoinWindow::new(10, 10, Some(0)).unwrap()),
            ..Clauses::default()
        };
        crate::test_support::plan(sql, sources, clauses).await
    }

    /// A decoded batch of one side: (key, value, event time), offsets from `first_offset`.
    fn decoded(source: &Source, records: &[(&str, &str, i64)], first_offset: i64) -> RecordBatch {
        RecordBatch::try_new(
            source.arrow_schema(),
            vec![
                Arc::new(Int64Array::from_iter_values(records.iter().map(|r| r.2))),
                Arc::new(Int32Array::from(vec![0; records.len()])),
                Arc::new(Int64Array::from_iter_values(
                    (0..records.len() as i64).map(|i| first_offset + i),
                )),
                Arc::new(StringArray::from_iter_values(records.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(records.iter().map(|r| r.1))),
            ],
        )
        .unwrap()
    }

    /// A decoded batch holding only event times, enough for [`round_cut`].
    fn times(times: &[i64]) -> RecordBatch {
        RecordBatch::try_from_iter([(
            "ROWTIME",
            Arc::new(Int64Array::from(times.to_vec())) as ArrayRef,
        )])
        .unwrap()
    }

    #[test]
    fn a_round_ends_where_a_side_with_unread_records_runs_out() {
        // Bids every millisecond beside auctions every 50: the auctions' batch spans more event
        // time than the bids', so the round stops at the last bid read; the auctions after it wait.
        let bids = times(&(1..=10).collect::<Vec<_>>());
        let auctions = times(&[1, 50, 100]);
        assert_eq!(round_cut(&bids, &auctions, [true, true]).unwrap(), [10, 1]);
        // The same the other way round: the right side runs out first.
        assert_eq!(round_cut(&auctions, &bids, [true, true]).unwrap(), [1, 10]);
        // A tie goes to the left, as in `advance`.
        assert_eq!(
            round_cut(&times(&[5]), &times(&[5]), [true, true]).unwrap(),
            [1, 0]
        );
        // A side whose batch is empty but whose partition is not holds everything back.
        assert_eq!(
            round_cut(&times(&[]), &auctions, [true, true]).unwrap(),
            [0, 0]
        );
    }

    #[test]
    fn a_side_read_to_its_end_does_not_hold_the_other_back() {
        let bids = times(&(1..=10).collect::<Vec<_>>());
        let auctions = times(&[1, 50, 100]);
        assert_eq!(round_cut(&bids, &auctions, [false, true]).unwrap(), [10, 3]);
        assert_eq!(
            round_cut(&bids, &auctions, [false, false]).unwrap(),
            [10, 3]
        );
        assert_eq!(
            round_cut(&times(&[]), &auctions, [false, true]).unwrap(),
            [0, 3]
        );
        // The side with unread records still stops the round once its own batch runs out.
        assert_eq!(
            round_cut(&times(&[60, 70]), &auctions, [false, true]).unwrap(),
            [2, 3]
        );
        assert_eq!(
            round_cut(&times(&[200]), &auctions, [true, false]).unwrap(),
            [1, 3]
        );
    }

    #[test]
    fn a_round_takes_rows_in_the_order_advance_processes_them() {
        // Out of order within a side: the cut follows the same merge as `advance`, each side in
        // offset order, so the left's 3 (after its 20) goes before the right's 25, and the left's
        // 30 waits once the right has run out.
        let left = times(&[10, 20, 3, 30]);
        let right = times(&[15, 25]);
        assert_eq!(round_cut(&left, &right, [true, true]).unwrap(), [3, 2]);
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        state: StateStore,
        store: Store,
        plan: StreamingPlan,
        /// The changelog as compaction leaves it: the last value of every key not deleted.
        changelog: std::cell::RefCell<std::collections::BTreeMap<Vec<u8>, Vec<u8>>>,
    }

    impl Fixture {
        /// Runs one round as the partition task does and applies its writes; returns the joined
        /// rows as "ID ITEM CARRIER" (NULL for NULL), sorted.
        fn round(
            &self,
            joiner: &mut StreamJoiner,
            left: &[(&str, &str, i64)],
            right: &[(&str, &str, i64)],
        ) -> Vec<String> {
            let join = self.plan.join.as_ref().unwrap();
            let left = decoded(&self.plan.source, left, 0);
            let right = decoded(&join.table, right, 0);
            let [left_in_time, right_in_time] = joiner.advance(&left, &right).unwrap();
            let left =
                datafusion::arrow::compute::filter_record_batch(&left, &left_in_time).unwrap();
            let right =
                datafusion::arrow::compute::filter_record_batch(&right, &right_in_time).unwrap();
            let left = self.plan.process(left).unwrap();
            let right = join.right_stream_rows(right).unwrap();
            let round = joiner.round(join, left, right, [7, 9]).unwrap();
            let output = join
                .join_streams(
                    &round.left_rows,
                    &round.left,
                    &round.right_rows,
                    &round.right,
                    &round.keys,
                    &self.plan.key_columns,
                )
                .unwrap();
            let mut batch = StoreBatch::default();
            for (key, value) in round.writes.iter().chain(&round.local_writes) {
                match value {
                    Some(value) => batch.put(key, value),
                    None => batch.delete(key),
                }
            }
            self.store.write(0, batch).unwrap();
            let mut changelog = self.changelog.borrow_mut();
            for (key, value) in round.writes.iter().chain(&round.changelog_writes) {
                match value {
                    Some(value) => changelog.insert(key.clone(), value.clone()),
                    None => changelog.remove(key),
                };
            }
            let text = |column: &str, row: usize| {
                let values = output
                    .column(self.plan.output_schema.index_of(column).unwrap())
                    .as_string::<i32>();
                if values.is_null(row) {
                    "NULL".to_owned()
                } else {
                    values.value(row).to_owned()
                }
            };
            let mut rows: Vec<String> = (0..output.num_rows())
                .map(|row| {
                    format!(
                        "{} {} {}",
                        text("ID", row),
                        text("ITEM", row),
                        text("CARRIER", row)
                    )
                })
                .collect();
            rows.sort();
            rows
        }

        /// Stored records of one side.
        fn stored(&self, tag: u8) -> usize {
            self.store
                .scan_prefix(0, &[tag])
                .unwrap()
                .filter(|entry| entry.is_ok())
                .count()
        }

        /// One round over both sides' new records, as it is (nothing applied to the store).
        fn raw_round(
            &self,
            joiner: &mut StreamJoiner,
            left: &[(&str, &str, i64)],
            right: &[(&str, &str, i64)],
        ) -> Round {
            let join = self.plan.join.as_ref().unwrap();
            let left = self
                .plan
                .process(decoded(&self.plan.source, left, 0))
                .unwrap();
            let right = join
                .right_stream_rows(decoded(&join.table, right, 0))
                .unwrap();
            joiner.round(join, left, right, [3, 1]).unwrap()
        }

        /// Keys in the (compacted) changelog that start with `tag`.
        fn logged(&self, tag: u8) -> usize {
            self.changelog
                .borrow()
                .keys()
                .filter(|key| key.first() == Some(&tag))
                .count()
        }
    }

    /// Store entries as (key, value).
    type Entries = Vec<(Box<[u8]>, Box<[u8]>)>;

    /// Every entry of a store's partition 0 but its checkpoint.
    fn entries(store: &Store) -> Entries {
        [
            LEFT_ROW,
            RIGHT_ROW,
            ROW_CHUNK,
            EXPIRY_INDEX,
            CLOSE_INDEX,
            b'm',
        ]
        .into_iter()
        .flat_map(|tag| store.scan_prefix(0, &[tag]).unwrap().map(Result::unwrap))
        .collect()
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let state = StateStore::open(dir.path(), &StateConfig::default()).unwrap();
        let store = state.store("q-join").unwrap();
        Fixture {
            _dir: dir,
            state,
            store,
            plan: full_join().await,
            changelog: Default::default(),
        }
    }

    #[tokio::test]
    async fn pairs_close_unmatched_rows_expire_and_resume_from_the_store() {
        let fixture = fixture().await;
        let join = fixture.plan.join.as_ref().unwrap();
        let mut joiner = StreamJoiner::open(fixture.store.clone(), 0, join, Some(1 << 20)).unwrap();
        // In merged time order: a@100 (left), a@105 (right), b@200, c@300. Each is in time at
        // its own turn. a meets a; b's window (200 + 10) closed by 300: it goes out alone; c's
        // window is open until 310.
        let rows = fixture.round(
            &mut joiner,
            &[("a", "apple", 100), ("b", "pear", 200)],
            &[("a", "dhl", 105), ("c", "ups", 300)],
        );
        assert_eq!(rows, ["a apple dhl", "b pear NULL"]);
        assert_eq!(joiner.stream_time(), Some(300));
        // Records already past their retention (t + 20 < 300) are not stored at all.
        assert_eq!(fixture.stored(LEFT_ROW), 0);
        assert_eq!(fixture.stored(RIGHT_ROW), 1, "c is kept");
        assert_eq!(fixture.stored(CLOSE_INDEX), 1, "c waits for a partner");

        // A new right record meets a stored left one within the window; stream time 400 closes
        // c (alone, key in both key columns) and expires every record older than 400 - 20.
        let rows = fixture.round(&mut joiner, &[("d", "fig", 395)], &[("d", "gls", 400)]);
        assert_eq!(rows, ["c NULL ups", "d fig gls"]);
        assert_eq!(fixture.stored(LEFT_ROW), 1, "d");
        assert_eq!(fixture.stored(RIGHT_ROW), 1, "c expired, d stays");
        assert_eq!(fixture.stored(CLOSE_INDEX), 0, "d found its partner");

        // Late: 350 + 10 < 400. Dropped before the join, so d meets nothing new.
        let left = decoded(&fixture.plan.source, &[("d", "late", 350)], 5);
        let right = decoded(&join.table, &[], 0);
        let [in_time, _] = joiner.advance(&left, &right).unwrap();
        assert!(!in_time.value(0));

        // A joiner opened on the same store resumes with its stream time and offsets; a record
        // stored before meets a new one.
        let mut resumed =
            StreamJoiner::open(fixture.store.clone(), 0, join, Some(1 << 20)).unwrap();
        // The expiry index is not in the changelog: a restored store gets it from its rows.
        let mut batch = StoreBatch::default();
        for entry in fixture.store.scan_prefix(0, &[EXPIRY_INDEX]).unwrap() {
            batch.delete(&entry.unwrap().0);
        }
        fixture.store.write(0, batch).unwrap();
        assert_eq!(fixture.stored(EXPIRY_INDEX), 0);
        assert_eq!(resumed.rebuild_after_restore().unwrap(), 2);
        assert_eq!(fixture.stored(EXPIRY_INDEX), 2 + fixture.stored(ROW_CHUNK));
        assert_eq!(resumed.stream_time(), Some(400));
        assert_eq!(resumed.next_offset(Side::Left), Some(7));
        assert_eq!(resumed.next_offset(Side::Right), Some(9));
        let rows = fixture.round(&mut resumed, &[("e", "kiwi", 401)], &[("d", "tnt", 398)]);
        assert_eq!(rows, ["d fig tnt"]);
        // e waits for its window to close at 411, then goes out alone.
        assert_eq!(fixture.stored(CLOSE_INDEX), 1);
        let rows = fixture.round(&mut resumed, &[], &[("z", "ups", 412)]);
        assert_eq!(rows, ["e kiwi NULL"]);
        // Stream time 431 expires every row older than 411 (retention 20), those stored before
        // the rebuild too; z (412) stays.
        fixture.round(&mut resumed, &[], &[("y", "ups", 431)]);
        assert_eq!(fixture.stored(LEFT_ROW), 0, "d and e expired");
        assert_eq!(fixture.stored(RIGHT_ROW), 2, "z and y stay");
    }

    #[tokio::test]
    async fn rows_are_logged_in_chunks_that_rebuild_a_lost_store() {
        let fixture = fixture().await;
        let join = fixture.plan.join.as_ref().unwrap();
        let left = [("a", "apple", 100), ("b", "pear", 101), ("c", "plum", 102)];
        let right = [("a", "dhl", 105)];

        // One chunk per side and round; no row is logged on its own.
        let mut joiner = StreamJoiner::open(fixture.store.clone(), 0, join, Some(1 << 20)).unwrap();
        assert_eq!(fixture.round(&mut joiner, &left, &right), ["a apple dhl"]);
        assert_eq!(fixture.stored(LEFT_ROW) + fixture.stored(RIGHT_ROW), 4);
        assert_eq!(fixture.logged(ROW_CHUNK), 2);
        assert_eq!(fixture.logged(LEFT_ROW) + fixture.logged(RIGHT_ROW), 0);
        assert_eq!(fixture.logged(CLOSE_INDEX), 2, "b and c wait for a partner");

        // A lost store rebuilt from the changelog holds what the store held.
        let restored = fixture.state.store("q-join-restored").unwrap();
        let mut batch = StoreBatch::default();
        for (key, value) in fixture.changelog.borrow().iter() {
            batch.put(key, value);
        }
        restored.write(0, batch).unwrap();
        let rebuilt = StreamJoiner::open(restored.clone(), 0, join, Some(1 << 20)).unwrap();
        assert_eq!(rebuilt.rebuild_after_restore().unwrap(), 4);
        assert_eq!(entries(&restored), entries(&fixture.store));
        assert_eq!(rebuilt.stream_time(), Some(105));

        // Stream time 200 expires every row: their chunks leave the changelog, and b and c go
        // out alone.
        let rows = fixture.round(&mut joiner, &[], &[("z", "ups", 200)]);
        assert_eq!(rows, ["b pear NULL", "c plum NULL"]);
        assert_eq!(fixture.stored(LEFT_ROW) + fixture.stored(RIGHT_ROW), 1, "z");
        assert_eq!(fixture.logged(ROW_CHUNK), 1, "z's chunk");
        assert_eq!(fixture.stored(ROW_CHUNK), 1);

        // With records of at most one row's bytes, each row is a chunk of its own.
        let small = fixture.state.store("q-join-small").unwrap();
        let mut joiner = StreamJoiner::open(small.clone(), 0, join, Some(1)).unwrap();
        let round = fixture.raw_round(&mut joiner, &left, &right);
        assert_eq!(round.changelog_writes.len(), 4);
        let rows: usize = round
            .changelog_writes
            .iter()
            .map(|(_, chunk)| chunk_rows(chunk.as_deref().unwrap()).unwrap().1.len())
            .sum();
        assert_eq!(rows, 4);

        // A join without changelog (a push query's) builds no chunks.
        let unlogged = fixture.state.store("q-join-unlogged").unwrap();
        let mut joiner = StreamJoiner::open(unlogged, 0, join, None).unwrap();
        let round = fixture.raw_round(&mut joiner, &left, &right);
        assert!(round.changelog_writes.is_empty());
        assert!(
            round
                .local_writes
                .iter()
                .all(|(key, _)| key.first() != Some(&ROW_CHUNK))
        );
    }

    #[test]
    fn a_malformed_chunk_is_refused() {
        assert!(chunk_rows(&[0; 8]).is_none(), "no row");
        assert!(chunk_rows(&[0; 7]).is_none(), "no header");
        let mut payload = 7i64.to_be_bytes().to_vec();
        for part in [&b"lkey"[..], b"row"] {
            payload.extend_from_slice(&(part.len() as u32).to_be_bytes());
            payload.extend_from_slice(part);
        }
        assert_eq!(
            chunk_rows(&payload),
            Some((7, vec![(&b"lkey"[..], &b"row"[..])]))
        );
        payload.push(0);
        assert!(chunk_rows(&payload).is_none(), "a trailing byte");
    }
}
