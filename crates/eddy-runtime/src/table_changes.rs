//! Table semantics for a query without join or aggregation over a table
//! (`CREATE TABLE t2 AS SELECT ... FROM t1 [WHERE ...]`).
//!
//! The output is a table too, keyed like the input, so every input change must leave the output
//! key's row as the input row's image, or without a row:
//!
//! - a tombstone in the input (a deleted row) gives a tombstone for its key;
//! - a row that `WHERE` filters out gives a tombstone, as Kafka Streams' `KTable#filter` does:
//!   the key may have had a row before, which no longer holds (a key that never had one gets a
//!   harmless extra tombstone);
//! - a row whose expressions fail is skipped and logged, as everywhere: its key keeps its row;
//! - a record without a key (a NULL key column) changes no row: it is skipped and logged.
//!
//! Within a batch only each key's last change counts (as a table's changes per key do), so the
//! rows and the tombstones sent for a batch concern distinct keys and their order does not
//! matter.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, concat_batches, take_record_batch};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::row::{RowConverter, SortField};
use eddy_catalog::{ROWOFFSET, ROWTIME, SourceKind};
use eddy_planner::StreamingPlan;

use crate::query::QueryError;

/// The keys and lineage a query over a table needs to send a batch as table changes.
pub(crate) struct TableChanges {
    plan: Arc<StreamingPlan>,
    /// Encodes the input's key columns, to keep each key's last change.
    input_keys: RowConverter,
    input_key_columns: Vec<usize>,
    /// Encodes the output's key columns, to find the inputs that gave no output row.
    output_keys: RowConverter,
    rowtime_column: usize,
    offset_column: usize,
}

impl TableChanges {
    /// The table semantics of `plan`, if it reads a table without join or aggregation and keys
    /// its output by the table's key columns.
    pub(crate) fn of(plan: &Arc<StreamingPlan>) -> Result<Option<Self>, QueryError> {
        if !is_table_projection(plan) {
            return Ok(None);
        }
        let input_schema = plan.source.arrow_schema();
        let first = plan.source.first_key_index();
        let input_key_columns: Vec<usize> = (first..first + plan.source.key_count()).collect();
        let converter = |fields: Vec<SortField>| {
            RowConverter::new(fields)
                .map_err(|e| QueryError::Plan(format!("the table's keys cannot be compared: {e}")))
        };
        let input_keys = converter(
            input_key_columns
                .iter()
                .map(|&i| SortField::new(input_schema.field(i).data_type().clone()))
                .collect(),
        )?;
        let output_keys = converter(
            plan.key_columns
                .iter()
                .map(|&i| SortField::new(plan.output_schema.field(i).data_type().clone()))
                .collect(),
        )?;
        let column = |name: &str| {
            input_schema
                .index_of(name)
                .map_err(|_| QueryError::Internal(format!("decoded records without {name}")))
        };
        Ok(Some(Self {
            plan: Arc::clone(plan),
            input_keys,
            input_key_columns,
            output_keys,
            rowtime_column: column(ROWTIME)?,
            offset_column: column(ROWOFFSET)?,
        }))
    }

    /// Splits a decoded batch into the last change of each key, in input order: the rows to run
    /// through the query, and the deleted rows (offsets in `deleted_offsets`: records without a
    /// value). Records without a key are left out; their offsets are added to `keyless`.
    pub(crate) fn last_changes(
        &self,
        batch: &RecordBatch,
        deleted_offsets: &HashSet<i64>,
        keyless: &mut Vec<i64>,
    ) -> Result<(RecordBatch, RecordBatch), QueryError> {
        let columns: Vec<ArrayRef> = self
            .input_key_columns
            .iter()
            .map(|&i| Arc::clone(batch.column(i)))
            .collect();
        let keys = self
            .input_keys
            .convert_columns(&columns)
            .map_err(internal)?;
        let offsets = batch.column(self.offset_column).as_primitive::<Int64Type>();
        let has_null_key = columns.iter().any(|c| c.null_count() > 0);
        let mut seen = HashSet::with_capacity(batch.num_rows());
        let (mut rows, mut deleted) = (Vec::new(), Vec::new());
        for i in (0..batch.num_rows()).rev() {
            if has_null_key && columns.iter().any(|c| c.is_null(i)) {
                keyless.push(offsets.value(i));
                continue;
            }
            if !seen.insert(keys.row(i)) {
                continue;
            }
            if deleted_offsets.contains(&offsets.value(i)) {
                deleted.push(i as u32);
            } else {
                rows.push(i as u32);
            }
        }
        let take = |mut indices: Vec<u32>| {
            indices.reverse();
            take_record_batch(batch, &UInt32Array::from(indices)).map_err(internal)
        };
        keyless.reverse();
        Ok((take(rows)?, take(deleted)?))
    }

    /// The tombstones (in the output schema, only key columns and `ROWTIME` set) of a batch's
    /// last changes: every deleted row, and every row (of `rows`, run through the query) that
    /// gave no output row and did not fail (`failed`: the partitions and offsets the query
    /// skipped).
    pub(crate) fn tombstones(
        &self,
        rows: &RecordBatch,
        output: &RecordBatch,
        failed: &[(i32, i64)],
        deleted: &RecordBatch,
    ) -> Result<RecordBatch, QueryError> {
        let schema = &self.plan.output_schema;
        let deleted = self.as_tombstones(deleted)?;
        if rows.num_rows() == 0 {
            return Ok(deleted);
        }
        let candidates = self.as_tombstones(rows)?;
        let output_keys = self
            .output_keys
            .convert_columns(&self.key_columns(output))
            .map_err(internal)?;
        let kept: HashSet<_> = output_keys.iter().collect();
        let candidate_keys = self
            .output_keys
            .convert_columns(&self.key_columns(&candidates))
            .map_err(internal)?;
        let failed: HashSet<i64> = failed.iter().map(|(_, offset)| *offset).collect();
        let offsets = rows.column(self.offset_column).as_primitive::<Int64Type>();
        let filtered_out: Vec<u32> = (0..candidates.num_rows())
            .filter(|&i| {
                !kept.contains(&candidate_keys.row(i)) && !failed.contains(&offsets.value(i))
            })
            .map(|i| i as u32)
            .collect();
        let filtered_out =
            take_record_batch(&candidates, &UInt32Array::from(filtered_out)).map_err(internal)?;
        concat_batches(schema, [&filtered_out, &deleted]).map_err(internal)
    }

    /// Input rows as output tombstones: the key columns from the input's key columns they come
    /// from, `ROWTIME` from the input's, every other column NULL (the planner makes every output
    /// column nullable).
    fn as_tombstones(&self, input: &RecordBatch) -> Result<RecordBatch, QueryError> {
        let schema = &self.plan.output_schema;
        let rows = input.num_rows();
        let columns = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, field)| {
                let from = if i == self.plan.rowtime_column {
                    Some(self.rowtime_column)
                } else {
                    self.plan
                        .key_columns
                        .iter()
                        .position(|&k| k == i)
                        .map(|k| self.plan.key_sources[k])
                };
                match from {
                    Some(column) => cast(input.column(column), field.data_type()).map_err(internal),
                    None => Ok(datafusion::arrow::array::new_null_array(
                        field.data_type(),
                        rows,
                    )),
                }
            })
            .collect::<Result<Vec<ArrayRef>, _>>()?;
        RecordBatch::try_new(Arc::clone(schema), columns).map_err(internal)
    }

    fn key_columns(&self, batch: &RecordBatch) -> Vec<ArrayRef> {
        self.plan
            .key_columns
            .iter()
            .map(|&i| Arc::clone(batch.column(i)))
            .collect()
    }
}

/// Whether `plan` reads a table without join or aggregation and keys its output by the table's
/// key columns: its output is a table keyed like its input.
pub(crate) fn is_table_projection(plan: &StreamingPlan) -> bool {
    plan.source.kind == SourceKind::Table
        && plan.join.is_none()
        && plan.aggregation.is_none()
        && !plan.key_sources.is_empty()
        && plan.key_sources.len() == plan.key_columns.len()
}

fn internal(error: impl std::fmt::Display) -> QueryError {
    QueryError::Internal(format!("table changes: {error}"))
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Array, Int32Array, Int64Array, StringArray};
    use eddy_catalog::{ColumnRole, Source};
    use eddy_common::types::SqlType;
    use eddy_planner::Clauses;

    use super::*;

    fn people() -> Source {
        let columns = [
            ("ID", SqlType::String, ColumnRole::PrimaryKey),
            ("NAME", SqlType::String, ColumnRole::Value),
            ("AGE", SqlType::Int, ColumnRole::Value),
        ];
        crate::test_support::source("PEOPLE", SourceKind::Table, &columns, 1)
    }

    async fn plan(sql: &str) -> Arc<StreamingPlan> {
        Arc::new(crate::test_support::plan(sql, [people()], Clauses::default()).await)
    }

    /// Decoded records of PEOPLE: (id, name, age; None for a deleted row), offsets from 0.
    fn decoded(records: &[(&str, Option<(&str, i32)>)]) -> RecordBatch {
        let n = records.len();
        RecordBatch::try_new(
            people().arrow_schema(),
            vec![
                Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| 100 + i))),
                Arc::new(Int32Array::from(vec![0; n])),
                Arc::new(Int64Array::from_iter_values(0..n as i64)),
                Arc::new(StringArray::from_iter_values(records.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter(
                    records.iter().map(|r| r.1.map(|v| v.0)),
                )),
                Arc::new(Int32Array::from_iter(
                    records.iter().map(|r| r.1.map(|v| v.1)),
                )),
            ],
        )
        .unwrap()
    }

    /// The key column of output rows and whether each is a tombstone (NULL name).
    fn keys(plan: &StreamingPlan, batch: &RecordBatch) -> Vec<String> {
        let key = batch.column(plan.key_columns[0]).as_string::<i32>();
        let name = batch.column(plan.value_columns[0]).as_string::<i32>();
        (0..batch.num_rows())
            .map(|i| {
                if name.is_null(i) {
                    format!("{} deleted", key.value(i))
                } else {
                    format!("{} {}", key.value(i), name.value(i))
                }
            })
            .collect()
    }

    #[tokio::test]
    async fn a_batch_gives_each_keys_last_row_or_a_tombstone() {
        let plan = plan(r#"SELECT "ID" AS "PERSON", "NAME" FROM "PEOPLE" WHERE "AGE" >= 18"#).await;
        let changes = TableChanges::of(&plan)
            .unwrap()
            .expect("a table from a table");
        let batch = decoded(&[
            ("p1", Some(("ann", 30))),
            ("p2", Some(("bob", 40))),
            ("p1", Some(("ann", 10))), // filtered out now
            ("p3", None),              // deleted
            ("p4", Some(("dan", 50))), // its expressions fail (below)
            ("p5", Some(("eve", 5))),
            ("p5", Some(("eve", 25))), // passes now
        ]);
        let deleted_offsets = HashSet::from([3]);
        let mut keyless = Vec::new();
        let (rows, deleted) = changes
            .last_changes(&batch, &deleted_offsets, &mut keyless)
            .unwrap();
        assert!(keyless.is_empty());
        let offsets = |b: &RecordBatch| -> Vec<i64> {
            b.column(2).as_primitive::<Int64Type>().values().to_vec()
        };
        assert_eq!(
            offsets(&rows),
            [1, 2, 4, 6],
            "the last change of each key, in order"
        );
        assert_eq!(offsets(&deleted), [3]);
        let output = plan.process(rows.clone()).unwrap();
        assert_eq!(keys(&plan, &output), ["p2 bob", "p4 dan", "p5 eve"]);
        let tombstones = changes.tombstones(&rows, &output, &[], &deleted).unwrap();
        assert_eq!(keys(&plan, &tombstones), ["p1 deleted", "p3 deleted"]);
        let rowtimes = tombstones
            .column(plan.rowtime_column)
            .as_primitive::<Int64Type>();
        assert_eq!(
            rowtimes.values().to_vec(),
            [102, 103],
            "the changes' own times"
        );
        // A row whose expressions failed gives neither a row nor a tombstone: its key keeps
        // its row.
        let without_p4 = take_record_batch(&output, &UInt32Array::from(vec![0, 2])).unwrap();
        let tombstones = changes
            .tombstones(&rows, &without_p4, &[(0, 4)], &deleted)
            .unwrap();
        assert_eq!(keys(&plan, &tombstones), ["p1 deleted", "p3 deleted"]);
    }

    #[tokio::test]
    async fn records_without_a_key_change_nothing() {
        let plan = plan(r#"SELECT "ID", "NAME" FROM "PEOPLE""#).await;
        let changes = TableChanges::of(&plan).unwrap().unwrap();
        let batch = decoded(&[("p1", Some(("ann", 30))), ("p2", None)]);
        let ids: ArrayRef = Arc::new(StringArray::from(vec![None, Some("p2")]));
        let mut columns = batch.columns().to_vec();
        columns[3] = ids;
        let batch = RecordBatch::try_new(batch.schema(), columns).unwrap();
        let mut keyless = Vec::new();
        let (rows, deleted) = changes
            .last_changes(&batch, &HashSet::from([1]), &mut keyless)
            .unwrap();
        assert_eq!((rows.num_rows(), deleted.num_rows()), (0, 1));
        assert_eq!(keyless, [0]);
    }

    #[tokio::test]
    async fn only_queries_keyed_by_the_tables_key_get_table_changes() {
        let plan = plan(r#"SELECT "ID", "NAME" FROM "PEOPLE""#).await;
        assert!(TableChanges::of(&plan).unwrap().is_some());
        let plan = plan_without_key().await;
        assert!(TableChanges::of(&plan).unwrap().is_none());
    }

    async fn plan_without_key() -> Arc<StreamingPlan> {
        plan(r#"SELECT "NAME", "AGE" FROM "PEOPLE""#).await
    }
}
