//! The upsert writer of an aggregation over a table: turns table changes into signed rows.
//!
//! A table record replaces the previous record with its key, and a tombstone deletes it. An
//! aggregation over a table must therefore take back what the previous record contributed. The
//! upsert writer keeps, per source key, the aggregation input rows its last record produced
//! (its *contribution*, arrow-row encoded) and, for each record of a batch in offset order, emits
//!
//! ```text
//!   the stored contribution, sign -1, origin offset 2·offset      (if the key had one)
//!   the record's new rows,   sign +1, origin offset 2·offset + 1  (unless a tombstone or filtered out)
//! ```
//!
//! The doubled origin offsets keep the aggregation's duplicate check exact: a writer that crashed
//! after producing and before committing emits the same rows with the same origin offsets again.
//! Records that could not be decoded or computed change nothing (the previous contribution stays);
//! records without a key are reported by the caller.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int8Array, Int32Array, Int64Array, RecordBatch,
};
use datafusion::arrow::compute::interleave_record_batch;
use datafusion::arrow::datatypes::{Int32Type, Int64Type, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use eddy_format::RawBatch;
use eddy_planner::{AggregationPlan, MAX_ROWS_PER_RECORD, number_origin_rows};
use eddy_state::Store;

use crate::query::QueryError;

/// Format version of a stored contribution: `[version]([row length u32 BE][arrow-row bytes])*`.
const CONTRIBUTION_FORMAT_VERSION: u8 = 1;

/// Where the upsert writer of an aggregation over a table keeps each key's contribution.
#[derive(Clone)]
pub struct UpsertSpec {
    /// Store of the contributions, keyed by the source record's key bytes.
    pub store: Store,
    /// Physical name of its compacted changelog (partition p holds source partition p); `None`
    /// for transient queries.
    pub changelog_topic: Option<String>,
    /// Columns of the rows the writer's stages produce (`[group key.., arguments..]`, see
    /// `eddy-planner`), by role.
    columns: UpsertColumns,
}

#[derive(Clone, Copy, Debug)]
struct UpsertColumns {
    group_count: usize,
    origin_partition: usize,
    origin_offset: usize,
    rowtime: usize,
    /// The `SIGN` column the writer's stages append when its rows go to a repartition topic.
    sign: Option<usize>,
    /// The stages explode records: origin offsets number each record's rows.
    explodes: bool,
}

impl UpsertSpec {
    /// The upsert writer of `aggregation`'s input. `signed_output` is true when the rows carry a
    /// sign column after the aggregation input (they are written to a repartition topic).
    pub fn new(
        store: Store,
        changelog_topic: Option<String>,
        aggregation: &AggregationPlan,
        signed_output: bool,
    ) -> Result<Self, QueryError> {
        let origin = aggregation
            .calls
            .iter()
            .find(|c| c.is_origin())
            .map(|c| c.arg_columns.clone());
        let rowtime = aggregation
            .calls
            .iter()
            .find(|c| c.is_rowtime())
            .and_then(|c| c.arg_columns.first().copied());
        let (Some(&[origin_partition, origin_offset]), Some(rowtime)) =
            (origin.as_deref(), rowtime)
        else {
            return Err(QueryError::Internal(
                "an aggregation over a table lost its origin or event-time columns".into(),
            ));
        };
        Ok(Self {
            store,
            changelog_topic,
            columns: UpsertColumns {
                group_count: aggregation.group_count,
                origin_partition,
                origin_offset,
                rowtime,
                sign: signed_output.then(|| aggregation.input_schema.fields().len()),
                explodes: aggregation.explodes,
            },
        })
    }
}

/// What one batch of table records did.
pub(crate) struct Upserted {
    /// The partition of the batch (every raw batch holds one partition's records).
    pub partition: i32,
    /// Retractions and additions in record order, in the writer's output schema.
    pub rows: RecordBatch,
    /// Sign of each row: -1 retracts it, +1 adds it.
    pub signs: Int8Array,
    /// Source key → new contribution (`None`: the key has none any more).
    pub writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Records skipped: they change nothing.
    pub rejected: Vec<Rejected>,
}

/// A table record the upsert writer skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rejected {
    pub partition: i32,
    pub offset: i64,
    pub reason: Rejection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// A table row needs a key.
    NoKey,
    /// The record exploded into more than `MAX_ROWS_PER_RECORD` rows.
    TooManyRows,
}

/// Turns batches of table records into signed aggregation input.
pub(crate) struct Upserter {
    columns: UpsertColumns,
    converter: RowConverter,
    schema: SchemaRef,
}

/// Where an emitted row comes from.
#[derive(Clone, Copy)]
enum Emitted {
    /// Row `row` of the decoded stored contributions.
    Retracted(usize),
    /// Row `row` of the stages' output.
    Added(usize),
}

impl Upserter {
    /// `schema` is the schema of the writer's stage output.
    pub(crate) fn new(spec: &UpsertSpec, schema: SchemaRef) -> Result<Self, QueryError> {
        let fields = schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect::<Vec<_>>();
        let converter = RowConverter::new(fields).map_err(|e| {
            QueryError::Plan(format!(
                "the columns of this aggregation over a table cannot be stored: {e}"
            ))
        })?;
        Ok(Self {
            columns: spec.columns,
            converter,
            schema,
        })
    }

    /// Applies the records of `raw` at or above `from_offset` (every record when `None`) to the
    /// contributions in `store`. `output` is the stages' output for the batch's decoded,
    /// non-tombstone records; `skipped` lists the (partition, offset) of the records that could not
    /// be decoded or computed. Nothing is written: the caller commits [`Upserted::writes`].
    pub(crate) fn apply(
        &self,
        store: &Store,
        raw: &RawBatch,
        output: &RecordBatch,
        skipped: &[(i32, i64)],
        from_offset: Option<i64>,
    ) -> Result<Upserted, QueryError> {
        let columns = self.columns;
        let partition = raw.partitions().first().copied().unwrap_or(0);
        if raw.partitions().iter().any(|p| *p != partition) {
            return Err(QueryError::Internal(
                "an upsert batch mixes partitions".into(),
            ));
        }
        let skipped: HashSet<i64> = skipped
            .iter()
            .filter(|(p, _)| *p == partition)
            .map(|(_, o)| *o)
            .collect();
        // The stages' output rows of a record are contiguous and in record order (stages filter
        // and project, keeping order), so a cursor finds them as the records are walked.
        let origin_offsets = output
            .column(columns.origin_offset)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| QueryError::Internal("origin offset is not a BIGINT".into()))?;
        if origin_offsets.null_count() > 0 {
            return Err(QueryError::Internal(
                "an output row lost its origin offset".into(),
            ));
        }
        let origin_offsets = origin_offsets.values();
        let mut cursor = 0usize;
        let new_rows = self
            .converter
            .convert_columns(output.columns())
            .map_err(|e| QueryError::Internal(format!("contribution encoding: {e}")))?;
        let key_columns = &output.columns()[..columns.group_count];
        let has_null_key: Vec<bool> = if key_columns.iter().any(|c| c.null_count() > 0) {
            (0..output.num_rows())
                .map(|row| key_columns.iter().any(|c| c.is_null(row)))
                .collect()
        } else {
            vec![false; output.num_rows()]
        };

        // The records to apply, and the stored contributions of their keys.
        let applies = |i: usize| {
            let offset = raw.offsets()[i];
            from_offset.is_none_or(|from| offset >= from) && !skipped.contains(&offset)
        };
        let mut rejected = Vec::new();
        let mut keys: Vec<&[u8]> = Vec::new();
        let mut key_index: HashMap<&[u8], usize> = HashMap::new();
        for i in (0..raw.len()).filter(|&i| applies(i)) {
            match raw.key(i) {
                Some(key) => {
                    key_index.entry(key).or_insert_with(|| {
                        keys.push(key);
                        keys.len() - 1
                    });
                }
                None => rejected.push(Rejected {
                    partition,
                    offset: raw.offsets()[i],
                    reason: Rejection::NoKey,
                }),
            }
        }
        let stored = store
            .multi_get(partition, &keys)
            .map_err(|e| QueryError::State(e.to_string()))?;
        let mut current: Vec<Option<Vec<u8>>> = stored;
        let mut touched = vec![false; keys.len()];

        // Walk the records in order: retract the key's contribution, add the record's rows.
        // The retracted rows' bytes, back to back, and where each row is in them.
        let mut retracted_bytes: Vec<u8> = Vec::new();
        let mut retracted_rows: Vec<std::ops::Range<usize>> = Vec::new();
        let mut emitted: Vec<Emitted> = Vec::new();
        let mut emitted_offsets: Vec<i64> = Vec::new();
        let mut emitted_rowtimes: Vec<Option<i64>> = Vec::new();
        let mut signs: Vec<i8> = Vec::new();
        for i in (0..raw.len()).filter(|&i| applies(i)) {
            let Some(key) = raw.key(i) else { continue };
            let Some(&k) = key_index.get(key) else {
                continue;
            };
            let offset = raw.offsets()[i];
            let timestamp = raw.timestamps_ms()[i];
            while cursor < origin_offsets.len() && origin_offsets[cursor] < offset {
                cursor += 1;
            }
            let first = cursor;
            while cursor < origin_offsets.len() && origin_offsets[cursor] == offset {
                cursor += 1;
            }
            if columns.explodes && cursor - first > MAX_ROWS_PER_RECORD {
                // Its rows cannot each have an origin of their own: the record changes nothing.
                rejected.push(Rejected {
                    partition,
                    offset,
                    reason: Rejection::TooManyRows,
                });
                continue;
            }
            if let Some(contribution) = current[k].take() {
                for_each_row(&contribution, |row| {
                    emitted.push(Emitted::Retracted(retracted_rows.len()));
                    let start = retracted_bytes.len();
                    retracted_bytes.extend_from_slice(row);
                    retracted_rows.push(start..retracted_bytes.len());
                    emitted_offsets.push(2 * offset);
                    emitted_rowtimes.push(Some(timestamp));
                    signs.push(-1);
                })?;
            }
            let mut contribution = vec![CONTRIBUTION_FORMAT_VERSION];
            let mut contributes = false;
            for (row, &null_key) in has_null_key.iter().enumerate().take(cursor).skip(first) {
                emitted.push(Emitted::Added(row));
                emitted_offsets.push(2 * offset + 1);
                emitted_rowtimes.push(None);
                signs.push(1);
                // A row without a group key belongs to no group: the aggregation reports it,
                // and there is nothing to take back later.
                if !null_key {
                    let bytes = new_rows.row(row);
                    let bytes = bytes.as_ref();
                    contribution.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                    contribution.extend_from_slice(bytes);
                    contributes = true;
                }
            }
            current[k] = contributes.then_some(contribution);
            touched[k] = true;
        }

        let retracted = self.decode_rows(&retracted_bytes, &retracted_rows)?;
        let indices: Vec<(usize, usize)> = emitted
            .iter()
            .map(|e| match *e {
                Emitted::Retracted(row) => (0, row),
                Emitted::Added(row) => (1, row),
            })
            .collect();
        let rows = interleave_record_batch(&[&retracted, output], &indices)
            .map_err(|e| QueryError::Internal(format!("signed rows: {e}")))?;
        let rows = self.restamp(rows, partition, &emitted_offsets, &emitted_rowtimes, &signs)?;
        let writes = keys
            .iter()
            .zip(current)
            .zip(touched)
            .filter(|(_, touched)| *touched)
            .map(|((key, contribution), _)| (key.to_vec(), contribution))
            .collect();
        Ok(Upserted {
            partition,
            rows,
            signs: Int8Array::from(signs),
            writes,
            rejected,
        })
    }

    /// Stored contribution rows (`bytes[range]` each) back to Arrow, in the writer's output schema.
    fn decode_rows(
        &self,
        bytes: &[u8],
        rows: &[std::ops::Range<usize>],
    ) -> Result<RecordBatch, QueryError> {
        if rows.is_empty() {
            return Ok(RecordBatch::new_empty(Arc::clone(&self.schema)));
        }
        let parser = self.converter.parser();
        let columns = self
            .converter
            .convert_rows(rows.iter().map(|r| parser.parse(&bytes[r.clone()])))
            .map_err(|e| QueryError::Internal(format!("stored contribution: {e}")))?;
        RecordBatch::try_new(Arc::clone(&self.schema), columns)
            .map_err(|e| QueryError::Internal(format!("stored contribution: {e}")))
    }

    /// Sets the origin (this partition, doubled offsets), the event time of retractions (the
    /// retracting record's timestamp) and the sign column of the emitted rows.
    fn restamp(
        &self,
        rows: RecordBatch,
        partition: i32,
        offsets: &[i64],
        rowtimes: &[Option<i64>],
        signs: &[i8],
    ) -> Result<RecordBatch, QueryError> {
        let columns = self.columns;
        let mut arrays: Vec<ArrayRef> = rows.columns().to_vec();
        arrays[columns.origin_partition] =
            Arc::new(Int32Array::from(vec![partition; rows.num_rows()]));
        arrays[columns.origin_offset] = Arc::new(Int64Array::from(if columns.explodes {
            number_origin_rows(offsets.iter().map(|&o| (partition, o)), offsets.len())
                .map_err(|e| QueryError::Internal(e.to_string()))?
        } else {
            offsets.to_vec()
        }));
        let current = rows
            .column(columns.rowtime)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| QueryError::Internal("event time is not a BIGINT".into()))?;
        arrays[columns.rowtime] = Arc::new(Int64Array::from_iter(rowtimes.iter().enumerate().map(
            |(row, time)| time.or_else(|| current.is_valid(row).then(|| current.value(row))),
        )));
        if let Some(sign) = columns.sign {
            if rows.column(sign).as_primitive_opt::<Int32Type>().is_none() {
                return Err(QueryError::Internal("sign column is not an INT".into()));
            }
            arrays[sign] = Arc::new(Int32Array::from_iter_values(
                signs.iter().map(|s| i32::from(*s)),
            ));
        }
        RecordBatch::try_new(rows.schema(), arrays)
            .map_err(|e| QueryError::Internal(format!("signed rows: {e}")))
    }
}

/// Calls `row` with each arrow-row encoded row of a stored contribution, in order.
fn for_each_row(bytes: &[u8], mut row: impl FnMut(&[u8])) -> Result<(), QueryError> {
    let corrupt = || QueryError::Internal("stored contribution is corrupt".into());
    let Some((&version, mut rest)) = bytes.split_first() else {
        return Err(corrupt());
    };
    if version != CONTRIBUTION_FORMAT_VERSION {
        return Err(QueryError::Internal(format!(
            "stored contribution has unknown format {version}"
        )));
    }
    while !rest.is_empty() {
        let (length, tail) = rest.split_first_chunk::<4>().ok_or_else(corrupt)?;
        let length = u32::from_be_bytes(*length) as usize;
        if tail.len() < length {
            return Err(corrupt());
        }
        let (bytes, tail) = tail.split_at(length);
        row(bytes);
        rest = tail;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use eddy_state::{StateConfig, StateStore, StoreBatch};

    use super::*;

    /// Stage output `[K0 group, A0 value, A1 rowtime, A2 origin partition, A3 origin offset, SIGN]`.
    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("K0", DataType::Utf8, true),
            Field::new("A0", DataType::Int64, true),
            Field::new("A1", DataType::Int64, true),
            Field::new("A2", DataType::Int32, true),
            Field::new("A3", DataType::Int64, true),
            Field::new("SIGN", DataType::Int32, false),
        ]))
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        _state: StateStore,
        store: Store,
        upserter: Upserter,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let state = StateStore::open(dir.path(), &StateConfig::default()).unwrap();
        let store = state.store("q-upsert").unwrap();
        let spec = UpsertSpec {
            store: store.clone(),
            changelog_topic: None,
            columns: UpsertColumns {
                group_count: 1,
                origin_partition: 3,
                origin_offset: 4,
                rowtime: 2,
                sign: Some(5),
                explodes: false,
            },
        };
        let upserter = Upserter::new(&spec, schema()).unwrap();
        Fixture {
            _dir: dir,
            _state: state,
            store,
            upserter,
        }
    }

    /// A raw batch of partition 0: (key, value present, offset), timestamps 1000 + offset.
    fn raw(records: &[(Option<&str>, bool, i64)]) -> RawBatch {
        let mut raw = RawBatch::new();
        for &(key, value, offset) in records {
            raw.push(
                key.map(str::as_bytes),
                value.then_some(b"{}".as_slice()),
                1000 + offset,
                0,
                offset,
            );
        }
        raw
    }

    /// The stages' output: (group, value, offset) per surviving record.
    fn output(rows: &[(Option<&str>, i64, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter_values(
                    rows.iter().map(|r| 1000 + r.2),
                )),
                Arc::new(Int32Array::from(vec![0; rows.len()])),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(Int32Array::from(vec![1; rows.len()])),
            ],
        )
        .unwrap()
    }

    /// (group, value, origin offset, sign) of the emitted rows; checks SIGN matches the signs.
    fn emitted(upserted: &Upserted) -> Vec<(Option<String>, i64, i64, i8)> {
        let rows = &upserted.rows;
        let groups = rows.column(0).as_string::<i32>();
        let values = rows.column(1).as_primitive::<Int64Type>();
        let offsets = rows.column(4).as_primitive::<Int64Type>();
        let sign_column = rows.column(5).as_primitive::<Int32Type>();
        (0..rows.num_rows())
            .map(|row| {
                let sign = upserted.signs.value(row);
                assert_eq!(
                    sign_column.value(row),
                    i32::from(sign),
                    "SIGN column of row {row}"
                );
                (
                    groups.is_valid(row).then(|| groups.value(row).to_owned()),
                    values.value(row),
                    offsets.value(row),
                    sign,
                )
            })
            .collect()
    }

    impl Fixture {
        /// Applies a first batch and commits it, as the writer does.
        fn apply_committed(&self, raw: &RawBatch, output: &RecordBatch) {
            let upserted = self
                .upserter
                .apply(&self.store, raw, output, &[], None)
                .unwrap();
            commit(&self.store, &upserted);
        }
    }

    fn commit(store: &Store, upserted: &Upserted) {
        let mut batch = StoreBatch::default();
        for (key, value) in &upserted.writes {
            match value {
                Some(value) => batch.put(key, value),
                None => batch.delete(key),
            }
        }
        store.write(upserted.partition, batch).unwrap();
    }

    fn row(group: &str, value: i64, origin: i64, sign: i8) -> (Option<String>, i64, i64, i8) {
        (Some(group.to_owned()), value, origin, sign)
    }

    #[test]
    fn a_batch_retracts_each_keys_previous_row_in_record_order() {
        let f = fixture();
        // k1 = a:1, k2 = b:2, k1 = b:3 (moves), k1 deleted.
        let raw = raw(&[
            (Some("k1"), true, 0),
            (Some("k2"), true, 1),
            (Some("k1"), true, 2),
            (Some("k1"), false, 3),
        ]);
        let output = output(&[(Some("a"), 1, 0), (Some("b"), 2, 1), (Some("b"), 3, 2)]);
        let upserted = f
            .upserter
            .apply(&f.store, &raw, &output, &[], None)
            .unwrap();
        assert_eq!(
            emitted(&upserted),
            vec![
                row("a", 1, 1, 1),
                row("b", 2, 3, 1),
                row("a", 1, 4, -1),
                row("b", 3, 5, 1),
                row("b", 3, 6, -1),
            ]
        );
        // A retraction carries the retracting record's time; an addition its own.
        let times = upserted.rows.column(2).as_primitive::<Int64Type>();
        assert_eq!(times.values().to_vec(), vec![1000, 1001, 1002, 1002, 1003]);
        let mut writes = upserted.writes.clone();
        writes.sort();
        assert_eq!(writes[0].0, b"k1".to_vec());
        assert!(writes[0].1.is_none(), "a deleted key keeps no contribution");
        assert_eq!(writes[1].0, b"k2".to_vec());
        assert!(writes[1].1.is_some());
    }

    #[test]
    fn a_stored_contribution_is_retracted_by_a_later_batch() {
        let f = fixture();
        f.apply_committed(
            &raw(&[(Some("k1"), true, 0)]),
            &output(&[(Some("a"), 7, 0)]),
        );
        let second = f
            .upserter
            .apply(
                &f.store,
                &raw(&[(Some("k1"), true, 1)]),
                &output(&[(Some("c"), 8, 1)]),
                &[],
                None,
            )
            .unwrap();
        assert_eq!(
            emitted(&second),
            vec![row("a", 7, 2, -1), row("c", 8, 3, 1)]
        );
    }

    #[test]
    fn skipped_keyless_and_already_applied_records_change_nothing() {
        let f = fixture();
        f.apply_committed(
            &raw(&[(Some("k1"), true, 0)]),
            &output(&[(Some("a"), 1, 0)]),
        );
        // Offset 1 is below the restored source offset, 2 failed to decode, 3 has no key.
        let raw = raw(&[
            (Some("k1"), true, 1),
            (Some("k1"), true, 2),
            (None, true, 3),
        ]);
        let output = output(&[(Some("x"), 9, 1), (Some("y"), 9, 3)]);
        let upserted = f
            .upserter
            .apply(&f.store, &raw, &output, &[(0, 2)], Some(2))
            .unwrap();
        assert!(emitted(&upserted).is_empty());
        assert!(upserted.writes.is_empty());
        assert_eq!(
            upserted.rejected,
            vec![Rejected {
                partition: 0,
                offset: 3,
                reason: Rejection::NoKey
            }]
        );
    }

    #[test]
    fn a_filtered_out_record_retracts_and_a_null_group_is_not_kept() {
        let f = fixture();
        // k1's second record was filtered out by WHERE (no output row, not skipped); k2's row
        // has a NULL group key: emitted for the aggregation to report, never retracted.
        let raw = raw(&[
            (Some("k1"), true, 0),
            (Some("k1"), true, 1),
            (Some("k2"), true, 2),
            (Some("k2"), true, 3),
        ]);
        let output = output(&[(Some("a"), 1, 0), (None, 5, 2), (Some("b"), 6, 3)]);
        let upserted = f
            .upserter
            .apply(&f.store, &raw, &output, &[], None)
            .unwrap();
        assert_eq!(
            emitted(&upserted),
            vec![
                row("a", 1, 1, 1),
                row("a", 1, 2, -1),
                (None, 5, 5, 1),
                row("b", 6, 7, 1),
            ]
        );
    }

    #[test]
    fn one_record_may_contribute_several_rows() {
        let f = fixture();
        f.apply_committed(
            &raw(&[(Some("k1"), true, 0)]),
            &output(&[(Some("a"), 1, 0), (Some("b"), 2, 0)]),
        );
        let second = f
            .upserter
            .apply(
                &f.store,
                &raw(&[(Some("k1"), false, 1)]),
                &output(&[]),
                &[],
                None,
            )
            .unwrap();
        assert_eq!(
            emitted(&second),
            vec![row("a", 1, 2, -1), row("b", 2, 2, -1)]
        );
    }
}
