//! The aggregate operator of a partition task: per-key state in RocksDB, a changelog in Kafka.
//!
//! For every batch of aggregation input (`[group key..., arguments...]`, see `eddy-planner`):
//!
//! ```text
//!  group keys ─RowConverter─▶ key bytes ─multi_get─▶ states ─eddy-aggregate update─▶ new states
//!     │                                                                  │
//!     └──────── evaluate ─▶ post stages (HAVING, projection) ─▶ rows and tombstones
//!
//!  1. produce the rows to the sink and wait for every acknowledgement
//!  2. produce the new states and the source offset to the changelog, wait
//!  3. write states + source offset + changelog offset in one RocksDB batch
//!  4. advance the partition's progress (committed to the consumer group later)
//! ```
//!
//! A crash between 1 and 2 repeats the batch's output (identical upserts); between 2 and 3 the
//! restore at start replays the changelog tail. Either way the state counts every input record
//! exactly once: records below the restored source offset are skipped.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int8Array, Int64Array, RecordBatch, UInt32Array,
};
use datafusion::arrow::compute::{filter_record_batch, not};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;
use eddy_aggregate::{AggregateLimits, AggregateSpec, Aggregator, GroupState, LiteralArg};
use eddy_common::window::WindowSpec;
use eddy_planner::{AggregationPlan, StreamingPlan, WindowPlan};
use eddy_state::{Checkpoint, Store, StoreBatch};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::kafka::{KafkaConnection, KafkaError, OffWorkerDrop};
use crate::query::{QueryError, QueryMetrics};
use crate::window::STREAM_TIME_KEY;

/// Key of the changelog record that carries the source offset a partition's state has reached.
/// Group keys are arrow-row encoded and never start with 0xFF.
pub(crate) const SOURCE_OFFSET_KEY: &[u8] = b"\xffsource_offset";

/// Prefix of the store keys (and changelog records) that hold, per origin partition (the
/// partition of the query's source a row came from), the next origin offset not yet counted.
/// Followed by the origin partition as i32 big-endian.
const ORIGIN_KEY_PREFIX: &[u8] = b"\xffo:";

/// Key of the store entry (and changelog record) in which an aggregation run in its join's task
/// keeps the next offset of the join's right input it has counted; its source offset is the left
/// input's (see `crate::query::JoinedAggregation`).
pub(crate) const JOINED_RIGHT_OFFSET_KEY: &[u8] = b"\xffjoined_right_offset";

/// Group keys are arrow-row encoded and start below this byte; Eddy's own keys start with it.
pub const RESERVED_KEY_BYTE: u8 = 0xFF;

/// Bytes a record takes beyond its key and value in a produce request (record batch header,
/// record framing), counted against a topic's `max.message.bytes`.
pub const RECORD_FRAMING_BYTES: usize = 1024;

/// Format version of a stored group: `[version][event time i64 BE][eddy-aggregate state]`.
const STATE_FORMAT_VERSION: u8 = 1;

/// Where a query's aggregation state lives.
#[derive(Clone)]
pub struct StateSpec {
    pub store: Store,
    /// Physical name of the compacted changelog topic; it has at least as many partitions as the
    /// aggregation's input topic, and partition p holds the state of input partition p. `None` for
    /// transient queries, whose state dies with them.
    pub changelog_topic: Option<String>,
    pub limits: AggregateLimits,
    /// Physical topic of the query's source (before any repartition topic), named in the
    /// processing-log entries of rows the aggregation skips.
    pub origin_topic: String,
}

/// Everything a pull query needs to turn stored states into table rows.
pub struct MaterializedView {
    plan: Arc<StreamingPlan>,
    aggregator: Aggregator,
    slots: Vec<Slot>,
    /// Encodes group keys; a windowed group's store key adds its window (see `window`).
    key_converter: RowConverter,
    store: Store,
    window: Option<WindowPlan>,
    /// Largest stored group (key, state and record framing); see [`AggregateLimits`].
    state_max_bytes: usize,
}

/// Where each aggregate call of the plan gets its value.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// The i-th aggregate of the `Aggregator`.
    Aggregate(usize),
    /// The group's event time, from this input column.
    Rowtime(usize),
    /// Where each row came from: (origin partition column, origin offset column).
    Origin(usize, usize),
    /// The start of the group's window (`WINDOWSTART`).
    WindowStart,
    /// The end of the group's window (`WINDOWEND`).
    WindowEnd,
}

impl MaterializedView {
    pub fn new(
        plan: Arc<StreamingPlan>,
        store: Store,
        limits: &AggregateLimits,
    ) -> Result<Self, QueryError> {
        let aggregation = aggregation_of(&plan)?;
        let mut specs = Vec::new();
        let mut slots = Vec::new();
        for call in &aggregation.calls {
            if call.is_rowtime() {
                let column = call.arg_columns.first().copied().ok_or_else(|| {
                    QueryError::Internal("event-time aggregate without argument".into())
                })?;
                slots.push(Slot::Rowtime(column));
                continue;
            }
            if call.is_window_bound() {
                slots.push(if call.function == eddy_planner::WINDOWSTART_AGGREGATE {
                    Slot::WindowStart
                } else {
                    Slot::WindowEnd
                });
                continue;
            }
            if call.is_origin() {
                let [partition, offset] = call.arg_columns[..] else {
                    return Err(QueryError::Internal(
                        "origin aggregate needs a partition and an offset".into(),
                    ));
                };
                slots.push(Slot::Origin(partition, offset));
                continue;
            }
            let arg_types: Vec<DataType> = call
                .arg_columns
                .iter()
                .map(|&c| aggregation.input_schema.field(c).data_type().clone())
                .collect();
            let literals = call
                .literal_args
                .iter()
                .map(literal_arg)
                .collect::<Result<Vec<_>, _>>()?;
            let spec = AggregateSpec::new(
                &call.function,
                &arg_types,
                &literals,
                aggregation.retractable,
                limits,
            )
            .map_err(|e| QueryError::Plan(e.to_string()))?;
            slots.push(Slot::Aggregate(specs.len()));
            specs.push(spec);
        }
        let aggregator = Aggregator::new(specs).map_err(|e| QueryError::Plan(e.to_string()))?;
        let key_converter = RowConverter::new(
            aggregation.input_schema.fields()[..aggregation.group_count]
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(|e| QueryError::Internal(format!("group key encoding: {e}")))?;
        let window = aggregation.window;
        Ok(Self {
            plan,
            aggregator,
            slots,
            key_converter,
            store,
            window,
            state_max_bytes: limits.state_max_bytes,
        })
    }

    /// The window of a windowed table: its store keys are a group key's bytes and a window,
    /// so [`Self::encode_keys`] gives the prefixes of a group's windows.
    pub fn window(&self) -> Option<&WindowSpec> {
        self.window.as_ref().map(|w| &w.spec)
    }

    pub fn plan(&self) -> &Arc<StreamingPlan> {
        &self.plan
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Encodes group key values (one array per key column, in key order) into store keys (for
    /// a windowed table, the prefixes of the keys of each group's windows).
    pub fn encode_keys(&self, columns: &[ArrayRef]) -> Result<Vec<Vec<u8>>, QueryError> {
        let rows = self
            .key_converter
            .convert_columns(columns)
            .map_err(|e| QueryError::Internal(format!("group key encoding: {e}")))?;
        Ok(rows.iter().map(|r| r.as_ref().to_vec()).collect())
    }

    /// Table rows of stored groups: the post stages' output for groups that pass `HAVING`.
    pub fn rows(&self, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<RecordBatch, QueryError> {
        let mut keys = Vec::with_capacity(entries.len());
        let mut states = Vec::with_capacity(entries.len());
        let mut rowtimes = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let (rowtime, state) = self.decode(value)?;
            keys.push(key.as_slice());
            states.push(state);
            rowtimes.push(rowtime);
        }
        let deleted = vec![false; states.len()];
        let Evaluated {
            batch,
            keep,
            failed,
        } = self.evaluate(&keys, &states, &rowtimes, &deleted)?;
        // As in the table's topic, a group whose row cannot be computed has no row (the query that
        // keeps the table logged why to the processing log).
        if let Some((_, reason)) = failed.first() {
            warn!(
                store = self.store.name(),
                groups = failed.len(),
                "pull query: rows left out: {reason}"
            );
        }
        filter_record_batch(&batch, &keep).map_err(internal)
    }

    fn decode(&self, bytes: &[u8]) -> Result<(i64, GroupState), QueryError> {
        if bytes.len() < 9 || bytes[0] != STATE_FORMAT_VERSION {
            return Err(QueryError::Internal(format!(
                "stored group state has unknown format {}",
                bytes.first().copied().unwrap_or(0)
            )));
        }
        let mut rowtime = [0u8; 8];
        rowtime.copy_from_slice(&bytes[1..9]);
        let state = self
            .aggregator
            .decode_state(&bytes[9..])
            .map_err(|e| QueryError::Internal(format!("stored group state: {e}")))?;
        Ok((i64::from_be_bytes(rowtime), state))
    }

    fn encode(&self, rowtime: i64, state: &GroupState, out: &mut Vec<u8>) {
        out.clear();
        out.push(STATE_FORMAT_VERSION);
        out.extend_from_slice(&rowtime.to_be_bytes());
        self.aggregator.encode_state(state, out);
    }

    /// Aggregate values of `states` run through the post stages. Returns every group's output row
    /// and whether it is a row (true) or a tombstone (false: deleted, or filtered by `HAVING`).
    /// Like [`Self::evaluate_all`], but a group whose value or projection fails (a DECIMAL sum
    /// out of range, a division by zero in the projection) does not fail the others: it is left
    /// out of the output and returned with the reason, in the third element.
    fn evaluate(
        &self,
        keys: &[&[u8]],
        states: &[GroupState],
        rowtimes: &[i64],
        deleted: &[bool],
    ) -> Result<Evaluated, QueryError> {
        match self.evaluate_all(keys, states, rowtimes, deleted) {
            Ok((batch, keep)) => {
                return Ok(Evaluated {
                    batch,
                    keep,
                    failed: Vec::new(),
                });
            }
            Err(QueryError::Expression(_)) => {}
            Err(other) => return Err(other),
        }
        let mut batches = Vec::new();
        let mut keeps = Vec::new();
        let mut failed = Vec::new();
        for i in 0..keys.len() {
            let one = i..i + 1;
            match self.evaluate_all(
                &keys[one.clone()],
                &states[one.clone()],
                &rowtimes[one.clone()],
                &deleted[one],
            ) {
                Ok((batch, keep)) => {
                    batches.push(batch);
                    keeps.push(keep.value(0));
                }
                Err(QueryError::Expression(reason)) => failed.push((i, reason)),
                Err(other) => return Err(other),
            }
        }
        let batch = datafusion::arrow::compute::concat_batches(&self.plan.output_schema, &batches)
            .map_err(internal)?;
        Ok(Evaluated {
            batch,
            keep: BooleanArray::from(keeps),
            failed,
        })
    }

    fn evaluate_all(
        &self,
        keys: &[&[u8]],
        states: &[GroupState],
        rowtimes: &[i64],
        deleted: &[bool],
    ) -> Result<(RecordBatch, BooleanArray), QueryError> {
        let aggregation = aggregation_of(&self.plan)?;
        let parser = self.key_converter.parser();
        // A windowed group's key ends with its window.
        let mut bounds: Option<(Vec<i64>, Vec<i64>)> = None;
        let mut group_keys: Vec<&[u8]> = keys.to_vec();
        if let Some(window) = &self.window {
            let (mut starts, mut ends) = (Vec::with_capacity(keys.len()), Vec::new());
            ends.reserve(keys.len());
            for key in group_keys.iter_mut() {
                let (group, start, end) = crate::window::split_key(&window.spec, key)
                    .ok_or_else(|| QueryError::Internal("windowed key without window".into()))?;
                *key = group;
                starts.push(start);
                ends.push(end);
            }
            bounds = Some((starts, ends));
        }
        let mut columns = self
            .key_converter
            .convert_rows(group_keys.iter().map(|k| parser.parse(k)))
            .map_err(|e| QueryError::Internal(format!("group key decoding: {e}")))?;
        let refs: Vec<&GroupState> = states.iter().collect();
        let mut values = self
            .aggregator
            .evaluate(&refs)
            .map_err(|e| QueryError::Expression(e.to_string()))?
            .into_iter()
            .map(Some)
            .collect::<Vec<_>>();
        for slot in &self.slots {
            match slot {
                Slot::Aggregate(i) => columns.push(
                    values[*i]
                        .take()
                        .ok_or_else(|| QueryError::Internal("aggregate evaluated twice".into()))?,
                ),
                Slot::Rowtime(_) => columns.push(Arc::new(Int64Array::from(rowtimes.to_vec()))),
                Slot::Origin(..) => {
                    columns.push(datafusion::arrow::array::new_null_array(
                        &DataType::Int64,
                        keys.len(),
                    ));
                }
                Slot::WindowStart | Slot::WindowEnd => {
                    let (starts, ends) = bounds.as_ref().ok_or_else(|| {
                        QueryError::Internal("window bounds of a query without window".into())
                    })?;
                    let times = if matches!(slot, Slot::WindowStart) {
                        starts
                    } else {
                        ends
                    };
                    columns.push(Arc::new(Int64Array::from(times.clone())));
                }
            }
        }
        let batch = RecordBatch::try_new(Arc::clone(&aggregation.aggregate_schema), columns)
            .map_err(internal)?;
        let post = aggregation
            .post_process(batch)
            .map_err(|e| QueryError::Expression(e.strip_backtrace()))?;
        let alive = BooleanArray::from(deleted.iter().map(|d| !d).collect::<Vec<_>>());
        let keep = datafusion::arrow::compute::and(&post.keep, &alive).map_err(internal)?;
        Ok((post.batch, keep))
    }
}

impl crate::table_view::PullView for MaterializedView {
    fn plan(&self) -> &Arc<StreamingPlan> {
        MaterializedView::plan(self)
    }

    fn store(&self) -> &Store {
        MaterializedView::store(self)
    }

    fn window(&self) -> Option<&WindowSpec> {
        MaterializedView::window(self)
    }

    fn encode_keys(&self, columns: &[ArrayRef]) -> Result<Vec<Vec<u8>>, QueryError> {
        MaterializedView::encode_keys(self, columns)
    }

    fn rows(&self, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<RecordBatch, QueryError> {
        MaterializedView::rows(self, entries)
    }
}

/// Output rows of a set of groups.
struct Evaluated {
    /// The rows that could be computed, in the plan's output schema.
    batch: RecordBatch,
    /// Which of them are table rows; the others are tombstones.
    keep: BooleanArray,
    /// (group index, reason) of the groups whose row could not be computed.
    failed: Vec<(usize, String)>,
}

/// The groups one batch touched, before their rows are computed.
#[derive(Default)]
struct Folded {
    /// Store keys of the groups (a windowed group's key includes its window).
    keys: Vec<Vec<u8>>,
    states: Vec<GroupState>,
    rowtimes: Vec<i64>,
    /// Groups that are gone (no row left, or a session merged into another): tombstones.
    deleted: Vec<bool>,
    /// Windows the batch created: (group, window end); they are indexed to close and expire.
    new_windows: Vec<(usize, i64)>,
    /// Further store writes (close index entries of merged-away sessions).
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Further store writes the changelog does not carry (expiry index entries of merged-away
    /// sessions).
    local_writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// (origin partition, source offset) of the rows every window of which had closed.
    late: Vec<(i32, i64)>,
}

/// Groups rows by key: the distinct keys in first-seen order and each row's group.
fn group_rows_of<'k>(
    row_keys: impl Iterator<Item = &'k [u8]>,
    rows: usize,
) -> (Vec<&'k [u8]>, Vec<u32>) {
    let mut index: HashMap<&[u8], u32> = HashMap::with_capacity(rows.min(1024));
    let mut keys: Vec<&[u8]> = Vec::new();
    let mut groups: Vec<u32> = Vec::with_capacity(rows);
    for key in row_keys {
        let next = keys.len() as u32;
        let group = *index.entry(key).or_insert_with(|| {
            keys.push(key);
            next
        });
        groups.push(group);
    }
    (keys, groups)
}

/// What one batch of input did to a partition's state.
pub(crate) struct Applied {
    /// One row per touched group, in the plan's output schema.
    pub rows: RecordBatch,
    /// Which rows are table rows; the others are tombstones.
    pub keep: BooleanArray,
    /// Store key → new stored state (`None`: the group is gone).
    pub writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Store writes the changelog does not carry: the windows' expiry index, which a restore
    /// derives from the windows' keys ([`expiry_entry_of`]).
    pub local_writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// (origin partition, origin offset) of the input rows dropped because a group key column
    /// was NULL.
    pub null_keys: Vec<(i32, i64)>,
    /// Groups whose output row could not be computed, with the reason: their state is updated,
    /// their row is not written.
    pub failed_groups: Vec<String>,
    /// Groups whose new state was larger than `state_record_max_bytes`, with the reason: they
    /// kept their previous state and their rows of the batch were dropped.
    pub too_large_groups: Vec<String>,
    /// (origin partition, source offset) of the rows a windowed aggregation dropped because
    /// every window they fall in had closed.
    pub late: Vec<(i32, i64)>,
}

/// The aggregate operator of one partition task.
pub(crate) struct PartitionAggregate {
    view: MaterializedView,
    partition: i32,
    /// Input offsets below this are already counted in the state.
    next_source_offset: i64,
    /// Origin partition → next origin offset not yet counted. A repartition topic may hold a
    /// row twice (its writer is at-least-once); the copy has an origin offset already counted.
    origins: HashMap<i32, i64>,
    /// The largest event time the partition has seen (windowed aggregations; `i64::MIN` before
    /// the first record).
    stream_time: i64,
    /// Whether rows with an origin already counted are skipped (see `origins`). Off for an
    /// aggregation in its join's task, whose rows come from no topic: its join replays
    /// what it counted without handing it the rows again.
    checks_origins: bool,
}

impl PartitionAggregate {
    pub(crate) fn new(view: MaterializedView, partition: i32) -> Self {
        Self {
            view,
            partition,
            next_source_offset: 0,
            origins: HashMap::new(),
            stream_time: i64::MIN,
            checks_origins: true,
        }
    }

    /// The aggregation of a join's rows in the join's task: every row it is given counts (see
    /// `checks_origins`).
    pub(crate) fn of_joined_rows(mut self) -> Self {
        self.checks_origins = false;
        self
    }

    /// Loads the origin offsets of the partition from the store.
    fn load_origins(&mut self) -> Result<(), QueryError> {
        self.origins.clear();
        let entries = self
            .view
            .store
            .scan_prefix(self.partition, ORIGIN_KEY_PREFIX)
            .map_err(state_error)?;
        for entry in entries {
            let (key, value) = entry.map_err(state_error)?;
            let origin = key
                .get(ORIGIN_KEY_PREFIX.len()..)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(i32::from_be_bytes);
            let next = <[u8; 8]>::try_from(&value[..]).ok().map(i64::from_be_bytes);
            if let (Some(origin), Some(next)) = (origin, next) {
                self.origins.insert(origin, next);
            }
        }
        Ok(())
    }

    /// Input offsets below the returned one are already in the state and must be skipped.
    pub(crate) fn next_source_offset(&self) -> i64 {
        self.next_source_offset
    }

    /// The next offsets of a join's left and right inputs whose pairs this aggregation, run in
    /// the join's task, has counted (0 and 0 before the first).
    pub(crate) fn joined_offsets(&self) -> Result<[i64; 2], QueryError> {
        let right = self
            .stored_i64(JOINED_RIGHT_OFFSET_KEY, "right input offset")?
            .unwrap_or(0);
        Ok([self.next_source_offset, right])
    }

    /// The big-endian i64 stored under one of Eddy's own keys, if any; `what` names it in the
    /// error when it is not 8 bytes.
    fn stored_i64(&self, key: &[u8], what: &str) -> Result<Option<i64>, QueryError> {
        let Some(bytes) = self
            .view
            .store
            .get(self.partition, key)
            .map_err(state_error)?
        else {
            return Ok(None);
        };
        <[u8; 8]>::try_from(bytes.as_slice())
            .map(|bytes| Some(i64::from_be_bytes(bytes)))
            .map_err(|_| QueryError::Internal(format!("stored {what} is not 8 bytes")))
    }

    /// Brings the local store up to the end of the changelog partition and loads the checkpoint.
    pub(crate) async fn restore(
        &mut self,
        spec: &StateSpec,
        connection: &KafkaConnection,
        metrics: &QueryMetrics,
        query_id: &str,
    ) -> Result<(), QueryError> {
        let window = aggregation_of(&self.view.plan)?
            .window
            .as_ref()
            .map(|window| window.spec);
        let expiry_entry = |key: &[u8]| window.as_ref().and_then(|w| expiry_entry_of(w, key));
        let checkpoint = restore_partition(
            &self.view.store,
            self.partition,
            spec.changelog_topic.as_deref(),
            connection,
            metrics,
            query_id,
            Some(&expiry_entry),
        )
        .await?;
        self.next_source_offset = checkpoint.source_offset.unwrap_or(0);
        self.stream_time = self
            .stored_i64(STREAM_TIME_KEY, "stream time")?
            .unwrap_or(i64::MIN);
        self.load_origins()
    }

    /// Folds one batch of aggregation input into the state (in memory; nothing is written yet).
    /// `signs[row]` is +1 to add a row, -1 to retract it (table input); `None` adds every row.
    pub(crate) fn apply(
        &mut self,
        input: &RecordBatch,
        signs: Option<&Int8Array>,
    ) -> Result<Applied, QueryError> {
        let (input, signs, origin_writes) = self.skip_counted(input, signs)?;
        let plan = Arc::clone(&self.view.plan);
        let aggregation = aggregation_of(&plan)?;
        let group_count = aggregation.group_count;
        // Rows whose group key has a NULL belong to no group (as in ksqlDB): dropped and counted.
        let mut valid: Option<BooleanArray> = None;
        for column in &input.columns()[..group_count] {
            if column.null_count() > 0 {
                let present = datafusion::arrow::compute::is_not_null(column).map_err(internal)?;
                valid = Some(match valid {
                    Some(v) => datafusion::arrow::compute::and(&v, &present).map_err(internal)?,
                    None => present,
                });
            }
        }
        let (input, signs, null_keys) = match valid {
            Some(valid) => {
                let dropped = self.origins_of(&input, &valid);
                let (input, signs) = filter_rows(&input, signs.as_ref(), &valid)?;
                (input, signs, dropped)
            }
            None => (input, signs, Vec::new()),
        };
        let stream_time_before = self.stream_time;
        let folded = match &aggregation.window {
            None => self.fold_groups(&input, signs.as_ref())?,
            Some(window) if window.spec.is_session() => self.fold_sessions(&input, &window.spec)?,
            Some(window) => self.fold_time_windows(&input, &window.spec)?,
        };
        let Folded {
            keys,
            mut states,
            mut rowtimes,
            mut deleted,
            new_windows,
            writes: folded_writes,
            local_writes,
            late,
        } = folded;
        let mut writes = Vec::with_capacity(keys.len() + folded_writes.len());
        let mut too_large = Vec::new();
        let mut buffer = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            if deleted[i] {
                writes.push((key.clone(), None));
                continue;
            }
            self.view.encode(rowtimes[i], &states[i], &mut buffer);
            let record_bytes = key.len() + buffer.len() + RECORD_FRAMING_BYTES;
            if record_bytes <= self.view.state_max_bytes {
                writes.push((key.clone(), Some(buffer.clone())));
                continue;
            }
            // The new state cannot be stored (nor logged): the group keeps the state it had
            // before this batch, or stays absent if it is new, and the batch's rows of it are
            // dropped.
            let (old_states, old_rowtimes, existed) = self.load_states(&[key.as_slice()])?;
            too_large.push(format!(
                "the state of a group would grow to {record_bytes} bytes, more than \
                 state_record_max_bytes ({}): the batch's rows of that group are dropped and \
                 it keeps its previous state",
                self.view.state_max_bytes
            ));
            if let (Some(state), Some(rowtime), Some(true)) = (
                old_states.into_iter().next(),
                old_rowtimes.first(),
                existed.first(),
            ) {
                self.view.encode(*rowtime, &state, &mut buffer);
                writes.push((key.clone(), Some(buffer.clone())));
                states[i] = state;
                rowtimes[i] = *rowtime;
            } else {
                writes.push((key.clone(), None));
                deleted[i] = true;
            }
        }
        let view = &self.view;
        let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let Evaluated {
            batch: rows_out,
            keep,
            failed,
        } = view.evaluate(&key_refs, &states, &rowtimes, &deleted)?;
        writes.extend(folded_writes);
        writes.extend(origin_writes);
        let mut applied = Applied {
            rows: rows_out,
            keep,
            writes,
            local_writes,
            null_keys,
            failed_groups: failed.into_iter().map(|(_, reason)| reason).collect(),
            too_large_groups: too_large,
            late,
        };
        if let Some(window) = &aggregation.window {
            if self.stream_time != stream_time_before {
                applied.writes.push((
                    STREAM_TIME_KEY.to_vec(),
                    Some(self.stream_time.to_be_bytes().to_vec()),
                ));
            }
            self.close_and_expire(
                window,
                &keys,
                &states,
                &rowtimes,
                &deleted,
                &new_windows,
                &mut applied,
            )?;
        }
        Ok(applied)
    }

    /// Groups the rows by their group key, loads the groups' states and folds the rows in.
    fn fold_groups(
        &self,
        input: &RecordBatch,
        signs: Option<&Int8Array>,
    ) -> Result<Folded, QueryError> {
        let group_count = aggregation_of(&self.view.plan)?.group_count;
        let rows = self
            .view
            .key_converter
            .convert_columns(&input.columns()[..group_count])
            .map_err(|e| QueryError::Internal(format!("group key encoding: {e}")))?;
        let (keys, groups) = group_rows_of(rows.iter().map(|row| row.data()), input.num_rows());
        let (mut states, mut rowtimes, _) = self.load_states(&keys)?;
        self.fold_rows(input, signs, &groups, &mut states, &mut rowtimes)?;
        let deleted = states.iter().map(|s| s.rows <= 0).collect();
        Ok(Folded {
            keys: keys.iter().map(|k| k.to_vec()).collect(),
            states,
            rowtimes,
            deleted,
            ..Folded::default()
        })
    }

    /// Assigns every row to the time windows it falls in that are still open (advancing the
    /// stream time row by row, as records arrive), then folds each (group key, window).
    fn fold_time_windows(
        &mut self,
        input: &RecordBatch,
        spec: &WindowSpec,
    ) -> Result<Folded, QueryError> {
        let group_count = aggregation_of(&self.view.plan)?.group_count;
        let times = self.event_times(input)?;
        let mut stream_time = self.stream_time;
        let mut take = Vec::with_capacity(input.num_rows());
        let mut starts = Vec::with_capacity(input.num_rows());
        let mut assigned = vec![false; input.num_rows()];
        for (row, slot) in assigned.iter_mut().enumerate() {
            let time = times.value(row);
            stream_time = stream_time.max(time);
            spec.for_each_window_start(time, |start| {
                // A window takes records until the stream time reaches its close time.
                if spec.close_time(spec.end_of(start)) > stream_time {
                    take.push(row as u32);
                    starts.push(start);
                    *slot = true;
                }
            });
        }
        self.stream_time = stream_time;
        let late = if assigned.iter().all(|a| *a) {
            Vec::new()
        } else {
            self.origins_of(input, &BooleanArray::from(assigned))
        };
        let input = datafusion::arrow::compute::take_record_batch(input, &UInt32Array::from(take))
            .map_err(internal)?;
        let group_rows = self
            .view
            .key_converter
            .convert_columns(&input.columns()[..group_count])
            .map_err(|e| QueryError::Internal(format!("group key encoding: {e}")))?;
        // Every row's store key in one buffer: its group key's bytes, then its window.
        let mut buffer = Vec::with_capacity(starts.len() * 24);
        let mut ends = Vec::with_capacity(starts.len() + 1);
        ends.push(0);
        for (row, &start) in group_rows.iter().zip(&starts) {
            buffer.extend_from_slice(row.data());
            crate::window::push_window(spec, &mut buffer, start, spec.end_of(start));
            ends.push(buffer.len());
        }
        let row_keys = ends.windows(2).map(|pair| &buffer[pair[0]..pair[1]]);
        let (keys, groups) = group_rows_of(row_keys, input.num_rows());
        let (mut states, mut rowtimes, existed) = self.load_states(&keys)?;
        self.fold_rows(&input, None, &groups, &mut states, &mut rowtimes)?;
        let mut new_windows = Vec::new();
        for (group, key) in keys.iter().enumerate() {
            if !existed[group] {
                let (_, _, end) = crate::window::split_key(spec, key)
                    .ok_or_else(|| QueryError::Internal("windowed key without window".into()))?;
                new_windows.push((group, end));
            }
        }
        Ok(Folded {
            deleted: vec![false; keys.len()],
            keys: keys.iter().map(|k| k.to_vec()).collect(),
            states,
            rowtimes,
            new_windows,
            late,
            ..Folded::default()
        })
    }

    /// Assigns every row to its session: the stored and new sessions of its key within the gap
    /// of its event time merge into one (whose state is the merge of theirs); a row whose merged
    /// session already closed is late. Merged-away sessions are deleted (tombstones).
    fn fold_sessions(
        &mut self,
        input: &RecordBatch,
        spec: &WindowSpec,
    ) -> Result<Folded, QueryError> {
        let eddy_common::window::WindowKind::Session { gap_ms } = spec.kind else {
            return Err(QueryError::Internal(
                "a session fold without session window".into(),
            ));
        };
        let group_count = aggregation_of(&self.view.plan)?.group_count;
        let times = self.event_times(input)?;
        let rows = input.num_rows();
        // The close time each row meets: the stream time after it, less the grace period.
        let mut close_times = Vec::with_capacity(rows);
        let mut stream_time = self.stream_time;
        for row in 0..rows {
            stream_time = stream_time.max(times.value(row));
            close_times.push(stream_time.saturating_sub(spec.grace_ms));
        }
        self.stream_time = stream_time;
        let group_rows = self
            .view
            .key_converter
            .convert_columns(&input.columns()[..group_count])
            .map_err(|e| QueryError::Internal(format!("group key encoding: {e}")))?;
        let mut index: HashMap<&[u8], usize> = HashMap::new();
        let mut group_keys: Vec<&[u8]> = Vec::new();
        let mut rows_of: Vec<Vec<usize>> = Vec::new();
        for (row, key) in group_rows.iter().enumerate() {
            let key = key.data();
            let next = group_keys.len();
            let group = *index.entry(key).or_insert_with(|| {
                group_keys.push(key);
                rows_of.push(Vec::new());
                next
            });
            rows_of[group].push(row);
        }
        /// A session of one key while the batch is folded.
        struct Session {
            start: i64,
            end: i64,
            /// Indices (in `stored`) of the stored sessions merged into it.
            stored: Vec<usize>,
            rows: Vec<usize>,
            alive: bool,
        }
        let emit_final = self.view.window.is_some_and(|w| w.emit_final);
        let mut folded = Folded::default();
        let mut row_group = vec![u32::MAX; rows];
        for (group_key, key_rows) in group_keys.iter().zip(&rows_of) {
            let (min_time, max_time) =
                key_rows.iter().fold((i64::MAX, i64::MIN), |(lo, hi), &r| {
                    (lo.min(times.value(r)), hi.max(times.value(r)))
                });
            let stored = crate::window::find_sessions(
                spec,
                &self.view.store,
                self.partition,
                group_key,
                min_time.saturating_sub(gap_ms),
                max_time.saturating_add(gap_ms),
            )?;
            let mut sessions: Vec<Session> = stored
                .iter()
                .enumerate()
                .map(|(i, stored)| Session {
                    start: stored.start,
                    end: stored.end,
                    stored: vec![i],
                    rows: Vec::new(),
                    alive: true,
                })
                .collect();
            let mut overlapping = Vec::new();
            for &row in key_rows {
                let time = times.value(row);
                overlapping.clear();
                let (mut start, mut end) = (time, time);
                for (i, session) in sessions.iter().enumerate() {
                    if session.alive
                        && session.end >= time.saturating_sub(gap_ms)
                        && session.start <= time.saturating_add(gap_ms)
                    {
                        overlapping.push(i);
                        start = start.min(session.start);
                        end = end.max(session.end);
                    }
                }
                if end < close_times[row] {
                    continue; // late: its session closed already
                }
                let target = match overlapping.first() {
                    Some(&i) => i,
                    None => {
                        sessions.push(Session {
                            start,
                            end,
                            stored: Vec::new(),
                            rows: Vec::new(),
                            alive: true,
                        });
                        sessions.len() - 1
                    }
                };
                for &i in &overlapping[1.min(overlapping.len())..] {
                    let merged_stored = std::mem::take(&mut sessions[i].stored);
                    let merged_rows = std::mem::take(&mut sessions[i].rows);
                    sessions[i].alive = false;
                    sessions[target].stored.extend(merged_stored);
                    sessions[target].rows.extend(merged_rows);
                }
                let session = &mut sessions[target];
                session.start = start;
                session.end = end;
                session.rows.push(row);
            }
            for session in sessions
                .iter_mut()
                .filter(|s| s.alive && !s.rows.is_empty())
            {
                let mut key = group_key.to_vec();
                crate::window::push_window(spec, &mut key, session.start, session.end);
                // The merged state: the stored sessions' states in time order.
                session.stored.sort_by_key(|&i| stored[i].start);
                let mut state = self.view.aggregator.new_state();
                let mut rowtime = i64::MIN;
                let mut kept_key = false;
                for &i in &session.stored {
                    let crate::window::StoredSession {
                        key: old_key,
                        value,
                        end: old_end,
                        ..
                    } = &stored[i];
                    let (old_rowtime, old_state) = self.view.decode(value)?;
                    self.view
                        .aggregator
                        .merge(&mut state, &old_state)
                        .map_err(|e| QueryError::Internal(format!("session merge: {e}")))?;
                    rowtime = rowtime.max(old_rowtime);
                    if *old_key == key {
                        kept_key = true;
                        continue;
                    }
                    // Merged into another session (or grown): its old key is gone.
                    folded.keys.push(old_key.clone());
                    folded.states.push(old_state);
                    folded.rowtimes.push(old_rowtime);
                    folded.deleted.push(true);
                    let expiry = crate::window::WindowIndex::Expiry;
                    let due = expiry.due_time(spec, *old_end);
                    folded.local_writes.push((expiry.entry(due, old_key), None));
                    if emit_final {
                        let close = crate::window::WindowIndex::Close;
                        let due = close.due_time(spec, *old_end);
                        folded.writes.push((close.entry(due, old_key), None));
                    }
                }
                let group = folded.keys.len();
                for &row in &session.rows {
                    row_group[row] = group as u32;
                }
                if !kept_key {
                    folded.new_windows.push((group, session.end));
                }
                folded.keys.push(key);
                folded.states.push(state);
                folded.rowtimes.push(rowtime);
                folded.deleted.push(false);
            }
        }
        let keep = BooleanArray::from(row_group.iter().map(|g| *g != u32::MAX).collect::<Vec<_>>());
        if keep.false_count() > 0 {
            folded.late = self.origins_of(input, &keep);
        }
        let input = filter_record_batch(input, &keep).map_err(internal)?;
        let groups: Vec<u32> = row_group.into_iter().filter(|g| *g != u32::MAX).collect();
        self.fold_rows(
            &input,
            None,
            &groups,
            &mut folded.states,
            &mut folded.rowtimes,
        )?;
        Ok(folded)
    }

    /// After a windowed batch: indexes the windows it created, emits (for `EMIT FINAL`, in place
    /// of the batch's changes) the windows that closed, and drops those past their retention.
    #[allow(clippy::too_many_arguments)]
    fn close_and_expire(
        &self,
        window: &WindowPlan,
        keys: &[Vec<u8>],
        states: &[GroupState],
        rowtimes: &[i64],
        deleted: &[bool],
        new_windows: &[(usize, i64)],
        applied: &mut Applied,
    ) -> Result<(), QueryError> {
        use crate::window::{MAX_WINDOW_CHANGES_PER_BATCH, WindowIndex};
        let spec = &window.spec;
        let stream_time = self.stream_time;
        let mut closing: Vec<Vec<u8>> = Vec::new();
        let mut expiring: Vec<Vec<u8>> = Vec::new();
        for &(group, end) in new_windows {
            let key = &keys[group];
            if window.emit_final {
                let due = WindowIndex::Close.due_time(spec, end);
                if due <= stream_time {
                    closing.push(key.clone());
                } else {
                    applied
                        .writes
                        .push((WindowIndex::Close.entry(due, key), Some(Vec::new())));
                }
            }
            let due = WindowIndex::Expiry.due_time(spec, end);
            if due <= stream_time {
                expiring.push(key.clone());
            } else {
                applied
                    .local_writes
                    .push((WindowIndex::Expiry.entry(due, key), Some(Vec::new())));
            }
        }
        // Keys this batch deleted (merged sessions) are gone, whatever the store's indexes say.
        let gone: std::collections::HashSet<&[u8]> = keys
            .iter()
            .zip(deleted)
            .filter(|(_, d)| **d)
            .map(|(k, _)| k.as_slice())
            .collect();
        let mut capped = false;
        if window.emit_final {
            let room = MAX_WINDOW_CHANGES_PER_BATCH.saturating_sub(closing.len());
            let due =
                WindowIndex::Close.due(&self.view.store, self.partition, stream_time, room)?;
            capped = due.len() >= room;
            for due in due {
                applied.writes.push((due.entry, None));
                if !gone.contains(due.key.as_slice()) {
                    closing.push(due.key);
                }
            }
            // The closed windows' states: this batch's when it changed them, else the store's.
            let batch_index: HashMap<&[u8], usize> = keys
                .iter()
                .enumerate()
                .filter(|(g, _)| !deleted[*g])
                .map(|(g, k)| (k.as_slice(), g))
                .collect();
            let mut closed_keys: Vec<&[u8]> = Vec::with_capacity(closing.len());
            let mut closed_states = Vec::with_capacity(closing.len());
            let mut closed_rowtimes = Vec::with_capacity(closing.len());
            let unchanged: Vec<&[u8]> = closing
                .iter()
                .map(Vec::as_slice)
                .filter(|k| !batch_index.contains_key(k))
                .collect();
            let stored = self
                .view
                .store
                .multi_get(self.partition, &unchanged)
                .map_err(state_error)?;
            let mut stored = unchanged.into_iter().zip(stored).collect::<HashMap<_, _>>();
            for key in &closing {
                if let Some(&group) = batch_index.get(key.as_slice()) {
                    closed_keys.push(key.as_slice());
                    closed_states.push(states[group].clone());
                    closed_rowtimes.push(rowtimes[group]);
                } else if let Some(Some(value)) = stored.remove(key.as_slice()) {
                    let (rowtime, state) = self.view.decode(&value)?;
                    closed_keys.push(key.as_slice());
                    closed_states.push(state);
                    closed_rowtimes.push(rowtime);
                }
            }
            let none_deleted = vec![false; closed_keys.len()];
            let Evaluated {
                batch,
                keep,
                failed,
            } = self.view.evaluate(
                &closed_keys,
                &closed_states,
                &closed_rowtimes,
                &none_deleted,
            )?;
            // EMIT FINAL writes each window once, when it closes; a window failing HAVING has
            // no row (and, never written, needs no tombstone).
            let rows = filter_record_batch(&batch, &keep).map_err(internal)?;
            applied.keep = BooleanArray::from(vec![true; rows.num_rows()]);
            applied.rows = rows;
            applied
                .failed_groups
                .extend(failed.into_iter().map(|(_, reason)| reason));
        }
        if !capped {
            let room = MAX_WINDOW_CHANGES_PER_BATCH.saturating_sub(expiring.len());
            for due in
                WindowIndex::Expiry.due(&self.view.store, self.partition, stream_time, room)?
            {
                applied.local_writes.push((due.entry, None));
                if !gone.contains(due.key.as_slice()) {
                    expiring.push(due.key);
                }
            }
        }
        for key in expiring {
            applied.writes.push((key, None));
        }
        Ok(())
    }

    /// The event time of every input row (the hidden `eddy_rowtime` aggregate's argument).
    fn event_times(&self, input: &RecordBatch) -> Result<Int64Array, QueryError> {
        let column = self
            .view
            .slots
            .iter()
            .find_map(|slot| match slot {
                Slot::Rowtime(column) => Some(*column),
                _ => None,
            })
            .ok_or_else(|| {
                QueryError::Internal("a windowed aggregation without event time".into())
            })?;
        let times = input
            .column(column)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| QueryError::Internal("event time is not a BIGINT".into()))?;
        if times.null_count() > 0 {
            return Err(QueryError::Internal("a row without event time".into()));
        }
        Ok(times.clone())
    }

    /// The stored states of `keys` (a new state for a key not stored), their event times
    /// (`i64::MIN` when new) and whether each was stored.
    #[allow(clippy::type_complexity)]
    fn load_states(
        &self,
        keys: &[&[u8]],
    ) -> Result<(Vec<GroupState>, Vec<i64>, Vec<bool>), QueryError> {
        let stored = self
            .view
            .store
            .multi_get(self.partition, keys)
            .map_err(state_error)?;
        let mut states = Vec::with_capacity(keys.len());
        let mut rowtimes = Vec::with_capacity(keys.len());
        let mut existed = Vec::with_capacity(keys.len());
        for value in stored {
            match value {
                Some(bytes) => {
                    let (rowtime, state) = self.view.decode(&bytes)?;
                    rowtimes.push(rowtime);
                    states.push(state);
                    existed.push(true);
                }
                None => {
                    rowtimes.push(i64::MIN);
                    states.push(self.view.aggregator.new_state());
                    existed.push(false);
                }
            }
        }
        Ok((states, rowtimes, existed))
    }

    /// Folds the rows of `input` into `states` (`groups[row]` is the row's group) and raises
    /// each group's event time to its rows' largest.
    fn fold_rows(
        &self,
        input: &RecordBatch,
        signs: Option<&Int8Array>,
        groups: &[u32],
        states: &mut [GroupState],
        rowtimes: &mut [i64],
    ) -> Result<(), QueryError> {
        let view = &self.view;
        let aggregation = aggregation_of(&view.plan)?;
        let mut args: Vec<Vec<ArrayRef>> = Vec::new();
        for (call, slot) in aggregation.calls.iter().zip(&view.slots) {
            match slot {
                Slot::Aggregate(_) => args.push(
                    call.arg_columns
                        .iter()
                        .map(|&c| Arc::clone(input.column(c)))
                        .collect(),
                ),
                Slot::Rowtime(column) => {
                    if let Some(times) = input.column(*column).as_primitive_opt::<Int64Type>() {
                        for (row, &group) in groups.iter().enumerate() {
                            if times.is_valid(row) {
                                let time = &mut rowtimes[group as usize];
                                *time = (*time).max(times.value(row));
                            }
                        }
                    }
                }
                Slot::Origin(..) | Slot::WindowStart | Slot::WindowEnd => {}
            }
        }
        let sign_values: Option<&[i8]> = signs.map(|s| s.values().as_ref());
        view.aggregator
            .update(states, groups, &args, sign_values)
            .map_err(|e| QueryError::Expression(e.to_string()))?;
        for time in rowtimes.iter_mut() {
            if *time == i64::MIN {
                *time = 0;
            }
        }
        Ok(())
    }

    /// (origin partition, source offset) of the rows `valid` marks false; -1 when unknown (see
    /// `AggregationPlan::source_offset_of_origin` for how origins encode source offsets).
    fn origins_of(&self, input: &RecordBatch, valid: &BooleanArray) -> Vec<(i32, i64)> {
        let aggregation = aggregation_of(&self.view.plan).ok();
        let origin = self.view.slots.iter().find_map(|slot| match slot {
            Slot::Origin(partition, offset) => Some((*partition, *offset)),
            _ => None,
        });
        let columns = origin.and_then(|(p, o)| {
            Some((
                input
                    .column(p)
                    .as_primitive_opt::<datafusion::arrow::datatypes::Int32Type>()?,
                input.column(o).as_primitive_opt::<Int64Type>()?,
            ))
        });
        (0..valid.len())
            .filter(|&row| !valid.value(row))
            .map(|row| match (columns, aggregation) {
                (Some((partitions, offsets)), Some(aggregation)) => (
                    partitions.value(row),
                    aggregation.source_offset_of_origin(offsets.value(row)),
                ),
                _ => (-1, -1),
            })
            .collect()
    }

    /// Drops rows whose origin offset was already counted, advances the origin offsets, and
    /// returns the store writes that record them.
    #[allow(clippy::type_complexity)]
    fn skip_counted(
        &mut self,
        input: &RecordBatch,
        signs: Option<&Int8Array>,
    ) -> Result<
        (
            RecordBatch,
            Option<Int8Array>,
            Vec<(Vec<u8>, Option<Vec<u8>>)>,
        ),
        QueryError,
    > {
        let origin = self.view.slots.iter().find_map(|slot| match slot {
            Slot::Origin(partition, offset) => Some((*partition, *offset)),
            _ => None,
        });
        let Some((partition_column, offset_column)) = origin.filter(|_| self.checks_origins) else {
            return Ok((input.clone(), signs.cloned(), Vec::new()));
        };
        let partitions = input
            .column(partition_column)
            .as_primitive_opt::<datafusion::arrow::datatypes::Int32Type>()
            .ok_or_else(|| QueryError::Internal("origin partition is not an INT".into()))?;
        let offsets = input
            .column(offset_column)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| QueryError::Internal("origin offset is not a BIGINT".into()))?;
        let mut keep = Vec::with_capacity(input.num_rows());
        let mut changed: Vec<i32> = Vec::new();
        for row in 0..input.num_rows() {
            if partitions.is_null(row) || offsets.is_null(row) {
                keep.push(true);
                continue;
            }
            let (origin, offset) = (partitions.value(row), offsets.value(row));
            let next = self.origins.entry(origin).or_insert(0);
            if offset < *next {
                keep.push(false);
            } else {
                *next = offset + 1;
                if !changed.contains(&origin) {
                    changed.push(origin);
                }
                keep.push(true);
            }
        }
        let writes = changed
            .into_iter()
            .map(|origin| {
                let mut key = ORIGIN_KEY_PREFIX.to_vec();
                key.extend_from_slice(&origin.to_be_bytes());
                let next = self.origins.get(&origin).copied().unwrap_or(0);
                (key, Some(next.to_be_bytes().to_vec()))
            })
            .collect();
        if keep.iter().all(|k| *k) {
            return Ok((input.clone(), signs.cloned(), writes));
        }
        let (input, signs) = filter_rows(input, signs, &BooleanArray::from(keep))?;
        Ok((input, signs, writes))
    }

    /// Sends the batch's new states and source offset to the changelog, waits for them, then
    /// writes them to the store in one batch with the changelog position.
    pub(crate) async fn commit(
        &mut self,
        spec: &StateSpec,
        producer: Option<&FutureProducer>,
        writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        local_writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        next_source_offset: i64,
        timeout: Duration,
    ) -> Result<(), QueryError> {
        commit_partition_with_local(
            &self.view.store,
            self.partition,
            spec.changelog_topic.as_deref(),
            producer,
            &writes,
            &local_writes,
            &[],
            next_source_offset,
            timeout,
        )
        .await?;
        self.next_source_offset = next_source_offset;
        Ok(())
    }
}

/// Sends `writes` and the source offset they reach to the changelog partition, waits for every
/// acknowledgement, then writes them to the store in one batch with the changelog position.
pub(crate) async fn commit_partition(
    store: &Store,
    partition: i32,
    changelog_topic: Option<&str>,
    producer: Option<&FutureProducer>,
    writes: &[(Vec<u8>, Option<Vec<u8>>)],
    next_source_offset: i64,
    timeout: Duration,
) -> Result<(), QueryError> {
    commit_partition_with_local(
        store,
        partition,
        changelog_topic,
        producer,
        writes,
        &[],
        &[],
        next_source_offset,
        timeout,
    )
    .await
}

/// [`commit_partition`] with `local_writes` that go to the store's write batch only, not to the
/// changelog (state the task rebuilds from the rest after a restore), and `changelog_writes`
/// that go to the changelog only (records the task unpacks into store entries after a restore).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn commit_partition_with_local(
    store: &Store,
    partition: i32,
    changelog_topic: Option<&str>,
    producer: Option<&FutureProducer>,
    writes: &[(Vec<u8>, Option<Vec<u8>>)],
    local_writes: &[(Vec<u8>, Option<Vec<u8>>)],
    changelog_writes: &[(Vec<u8>, Option<Vec<u8>>)],
    next_source_offset: i64,
    timeout: Duration,
) -> Result<(), QueryError> {
    let mut last_offset = None;
    if let (Some(topic), Some(producer)) = (changelog_topic, producer) {
        let mut deliveries = Deliveries::new(topic, timeout);
        let offset_bytes = next_source_offset.to_be_bytes();
        for (key, value) in writes.iter().chain(changelog_writes) {
            deliveries
                .send(producer, partition, key, value.as_deref())
                .await?;
        }
        deliveries
            .send(producer, partition, SOURCE_OFFSET_KEY, Some(&offset_bytes))
            .await?;
        last_offset = deliveries.finish().await?;
    }
    let mut batch = StoreBatch::default();
    for (key, value) in writes.iter().chain(local_writes) {
        match value {
            Some(value) => batch.put(key, value),
            None => batch.delete(key),
        }
    }
    batch.set_source_offset(next_source_offset);
    if let Some(last) = last_offset {
        batch.set_changelog_offset(last + 1);
    }
    store.write(partition, batch).map_err(state_error)
}

/// The key of the store entry a restore derives from a changelog record's key, if any: put
/// (with an empty value) with the record, deleted with its tombstone.
pub(crate) type DerivedEntry<'a> = &'a (dyn Fn(&[u8]) -> Option<Vec<u8>> + Sync);

/// The expiry index entry of the window whose store key is `key`: the changelog does not carry
/// the index, a restore derives it from each window it restores. `None` for the partition's own
/// entries (keys starting with `0xFF`).
pub(crate) fn expiry_entry_of(spec: &WindowSpec, key: &[u8]) -> Option<Vec<u8>> {
    if key.first() == Some(&0xFF) {
        return None;
    }
    let (_, _, end) = crate::window::split_key(spec, key)?;
    let index = crate::window::WindowIndex::Expiry;
    Some(index.entry(index.due_time(spec, end), key))
}

/// Brings partition `partition` of `store` up to the end of its changelog partition (from the
/// position the store last applied, or from the beginning when the local state is gone) and
/// returns its checkpoint. Progress goes to the query's restore metrics and the log. `derived`
/// gives the entries the changelog does not carry (see [`DerivedEntry`]).
pub(crate) async fn restore_partition(
    store: &Store,
    partition: i32,
    changelog_topic: Option<&str>,
    connection: &KafkaConnection,
    metrics: &QueryMetrics,
    query_id: &str,
    derived: Option<DerivedEntry<'_>>,
) -> Result<Checkpoint, QueryError> {
    let checkpoint = store.checkpoint(partition).map_err(state_error)?;
    let Some(changelog_topic) = changelog_topic else {
        return Ok(checkpoint);
    };
    let watermarks = connection.watermarks(changelog_topic).await?;
    let (low, high) = watermarks.get(partition as usize).copied().ok_or_else(|| {
        QueryError::Internal(format!(
            "changelog \"{}\" has no partition {partition}",
            changelog_topic
        ))
    })?;
    let start = checkpoint.changelog_offset.unwrap_or(low).max(low);
    if start >= high {
        return Ok(checkpoint);
    }
    let total = (high - start) as u64;
    metrics
        .restore_records_total
        .fetch_add(total, Ordering::Relaxed);
    info!(
        query = query_id,
        partition,
        from = start,
        to = high,
        local = checkpoint.changelog_offset.is_some(),
        "restoring state from the changelog"
    );
    // Dropped on the blocking pool: its close waits for the broker (see `OffWorkerDrop`).
    let consumer: OffWorkerDrop<StreamConsumer> = connection
        .client_config()
        .set("group.id", format!("{query_id}-restore"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map(OffWorkerDrop::new)
        .map_err(|e| KafkaError::client("restore consumer creation", e))?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(changelog_topic, partition, Offset::Offset(start))
        .map_err(|e| KafkaError::client("restore assignment", e))?;
    consumer
        .assign(&assignment)
        .map_err(|e| KafkaError::client("restore assignment", e))?;
    let mut batch = StoreBatch::default();
    let mut batch_bytes = 0usize;
    let mut applied = 0u64;
    let mut last_log = tokio::time::Instant::now();
    let idle = Duration::from_millis(connection.request_timeout_ms.max(1000));
    let mut next = start;
    while next < high {
        let message = match tokio::time::timeout(idle, consumer.recv()).await {
            Ok(Ok(message)) => message,
            Ok(Err(error)) => return Err(KafkaError::client("changelog restore", error).into()),
            Err(_) => {
                return Err(QueryError::Internal(format!(
                    "changelog \"{}\" partition {partition} stopped at offset {next} of {high} during restore",
                    changelog_topic
                )));
            }
        };
        next = message.offset() + 1;
        batch_bytes +=
            message.key().map_or(0, <[u8]>::len) + message.payload().map_or(0, <[u8]>::len);
        match (message.key(), message.payload()) {
            (Some(SOURCE_OFFSET_KEY), Some(value)) if value.len() == 8 => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(value);
                batch.set_source_offset(i64::from_be_bytes(bytes));
            }
            (Some(key), Some(value)) => {
                batch.put(key, value);
                if let Some(entry) = derived.and_then(|derive| derive(key)) {
                    batch.put(&entry, &[]);
                }
            }
            (Some(key), None) => {
                batch.delete(key);
                if let Some(entry) = derived.and_then(|derive| derive(key)) {
                    batch.delete(&entry);
                }
            }
            (None, _) => warn!(
                query = query_id,
                partition,
                offset = message.offset(),
                "changelog record without key skipped"
            ),
        }
        applied += 1;
        metrics.restore_records_done.fetch_add(1, Ordering::Relaxed);
        if batch.len() >= RESTORE_BATCH_RECORDS
            || batch_bytes >= RESTORE_BATCH_BYTES
            || next >= high
        {
            batch.set_changelog_offset(next);
            store
                .write(partition, std::mem::take(&mut batch))
                .map_err(state_error)?;
            batch_bytes = 0;
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            last_log = tokio::time::Instant::now();
            info!(
                query = query_id,
                partition, applied, total, "restoring state"
            );
        }
    }
    if !batch.is_empty() {
        batch.set_changelog_offset(next);
        store.write(partition, batch).map_err(state_error)?;
    }
    let checkpoint = store.checkpoint(partition).map_err(state_error)?;
    info!(
        query = query_id,
        partition,
        applied,
        next_source_offset = checkpoint.source_offset.unwrap_or(0),
        "state restored"
    );
    Ok(checkpoint)
}

/// Records sent to one topic whose acknowledgements are awaited together, with back-pressure
/// when the producer's queue is full.
pub(crate) struct Deliveries<'a> {
    topic: &'a str,
    pending: std::collections::VecDeque<DeliveryFuture>,
    deadline: tokio::time::Instant,
    last_offset: Option<i64>,
}

impl<'a> Deliveries<'a> {
    pub(crate) fn new(topic: &'a str, timeout: Duration) -> Self {
        Self {
            topic,
            pending: std::collections::VecDeque::new(),
            deadline: tokio::time::Instant::now() + timeout,
            last_offset: None,
        }
    }

    pub(crate) async fn send(
        &mut self,
        producer: &FutureProducer,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), QueryError> {
        loop {
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(self.topic).key(key).partition(partition);
            if let Some(value) = value {
                record = record.payload(value);
            }
            match producer.send_result(record) {
                Ok(delivery) => {
                    self.pending.push_back(delivery);
                    return Ok(());
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => {
                    if tokio::time::Instant::now() >= self.deadline {
                        return Err(QueryError::Produce {
                            topic: self.topic.to_owned(),
                            message: "producer queue stayed full".into(),
                        });
                    }
                    match self.pending.pop_front() {
                        Some(oldest) => self.await_one(oldest).await?,
                        None => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
                Err((error, _)) => {
                    return Err(QueryError::Produce {
                        topic: self.topic.to_owned(),
                        message: error.to_string(),
                    });
                }
            }
        }
    }

    async fn await_one(&mut self, delivery: DeliveryFuture) -> Result<(), QueryError> {
        let offset = crate::query::acknowledged(self.topic, delivery.await)?;
        self.last_offset = Some(self.last_offset.unwrap_or(-1).max(offset));
        Ok(())
    }

    /// Waits for every acknowledgement; returns the largest offset written.
    pub(crate) async fn finish(mut self) -> Result<Option<i64>, QueryError> {
        while let Some(delivery) = self.pending.pop_front() {
            self.await_one(delivery).await?;
        }
        Ok(self.last_offset)
    }
}

/// Changelog records applied to the store per write during a restore.
const RESTORE_BATCH_RECORDS: usize = 1024;
/// Bytes of changelog keys and values applied per write during a restore (a stream-stream
/// join's records hold many rows each, up to `join_changelog_record_bytes`).
const RESTORE_BATCH_BYTES: usize = 4 << 20;

/// Rows of an applied batch split into table rows and tombstones.
pub(crate) fn split_rows(applied: &Applied) -> Result<(RecordBatch, RecordBatch), QueryError> {
    let rows = filter_record_batch(&applied.rows, &applied.keep).map_err(internal)?;
    let gone = not(&applied.keep).map_err(internal)?;
    let tombstones = filter_record_batch(&applied.rows, &gone).map_err(internal)?;
    Ok((rows, tombstones))
}

/// The rows of `input` (and their signs) where `keep` is true.
fn filter_rows(
    input: &RecordBatch,
    signs: Option<&Int8Array>,
    keep: &BooleanArray,
) -> Result<(RecordBatch, Option<Int8Array>), QueryError> {
    let input = filter_record_batch(input, keep).map_err(internal)?;
    let signs = signs
        .map(|s| datafusion::arrow::compute::filter(s, keep))
        .transpose()
        .map_err(internal)?
        .map(|a| {
            a.as_primitive::<datafusion::arrow::datatypes::Int8Type>()
                .clone()
        });
    Ok((input, signs))
}

fn aggregation_of(plan: &StreamingPlan) -> Result<&AggregationPlan, QueryError> {
    plan.aggregation
        .as_ref()
        .ok_or_else(|| QueryError::Internal("plan has no aggregation".into()))
}

fn literal_arg(value: &ScalarValue) -> Result<LiteralArg, QueryError> {
    let array = value
        .to_array()
        .map_err(|e| QueryError::Plan(e.strip_backtrace()))?;
    LiteralArg::try_from_array(array.as_ref()).map_err(|e| QueryError::Plan(e.to_string()))
}

fn internal(error: impl std::fmt::Display) -> QueryError {
    QueryError::Internal(error.to_string())
}

fn state_error(error: eddy_state::StateError) -> QueryError {
    QueryError::State(error.to_string())
}
