//! What pull queries read: the current rows of a materialized table, in a RocksDB store.
//!
//! Two kinds of tables keep such a store. An aggregation's store holds each group's state, from
//! which [`MaterializedView`](crate::MaterializedView) computes the rows. A table made from
//! tables without aggregation (see [`keeps_table_rows`]) keeps its output rows themselves in a
//! [`RowsView`]: the query's task writes every row and tombstone it sends to the table's topic
//! into the store (partition = the task's partition), so the store is the compaction of what the
//! task wrote, and as current as the query's progress, which read-your-writes waits on.
//!
//! - A join of two tables writes the rows after sending them and before the side state that
//!   produced them. A partition without the view's mark (never written, or lost) makes the task
//!   read both tables again from their beginnings ([`RowsView::prepare_partition`]).
//! - A query over one table (`CREATE TABLE t2 AS SELECT ... FROM t1 [WHERE ...]`) writes the rows
//!   with its next source offset in the same write batch, after sending them and before its
//!   progress. At start, a partition whose rows are behind what the query's group committed (lost,
//!   or from before such tables were materialized) reads the table from there up to the committed
//!   offset into the view only: nothing is sent again.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::row::{RowConverter, SortField};
use eddy_common::window::WindowSpec;
use eddy_planner::StreamingPlan;
use eddy_state::{Store, StoreBatch};

use crate::query::QueryError;

/// A materialized table as pull queries see it: its plan (whose output columns, key columns and
/// `ROWTIME` describe the rows), its store, and how store entries become rows.
pub trait PullView: Send + Sync {
    /// The plan whose output rows the table holds (`key_columns`, `value_columns`,
    /// `rowtime_column` and `sink_columns` index and name them).
    fn plan(&self) -> &Arc<StreamingPlan>;

    /// The store of the table's rows (or of the states they are computed from).
    fn store(&self) -> &Store;

    /// The window of a windowed table: its store keys are a key's bytes followed by a window,
    /// so [`Self::encode_keys`] gives the prefixes of a key's windows.
    fn window(&self) -> Option<&WindowSpec>;

    /// Encodes key values (one array per key column, in key order) into store keys.
    fn encode_keys(&self, columns: &[ArrayRef]) -> Result<Vec<Vec<u8>>, QueryError>;

    /// The rows of stored entries, in the plan's output schema.
    fn rows(&self, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<RecordBatch, QueryError>;
}

/// Whether a persistent query with `plan` that writes a table keeps that table's rows in a
/// [`RowsView`]: a join of two tables, or a query over one table without join or aggregation
/// keyed by the table's key.
pub fn keeps_table_rows(plan: &StreamingPlan) -> bool {
    plan.join
        .as_ref()
        .is_some_and(|join| join.left_table.is_some())
        || crate::table_changes::is_table_projection(plan)
}

/// First byte of a stored row: the version of its encoding.
const ROW_FORMAT_VERSION: u8 = 1;

/// The rows of a table made from tables (see [`keeps_table_rows`]): output key (arrow-row bytes
/// of the key columns) → the whole output row (a version byte, then arrow-row bytes of every
/// output column).
pub struct RowsView {
    plan: Arc<StreamingPlan>,
    store: Store,
    key_converter: RowConverter,
    row_converter: RowConverter,
}

impl std::fmt::Debug for RowsView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowsView")
            .field("store", &self.store.name())
            .finish()
    }
}

impl RowsView {
    /// The view of `plan`'s output rows in `store`.
    pub fn new(plan: Arc<StreamingPlan>, store: Store) -> Result<Self, QueryError> {
        let schema = &plan.output_schema;
        let converter = |fields: Vec<SortField>| {
            RowConverter::new(fields)
                .map_err(|e| QueryError::Plan(format!("the table's rows cannot be stored: {e}")))
        };
        let key_converter = converter(
            plan.key_columns
                .iter()
                .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                .collect(),
        )?;
        let row_converter = converter(
            schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        Ok(Self {
            plan,
            store,
            key_converter,
            row_converter,
        })
    }

    /// Makes partition `partition` of the view ready for the join's task, before the task opens
    /// its sides. A partition without the view's mark was never written (a new query, or one from
    /// before joined tables were materialized) or its local state was lost: its side partitions
    /// (`sides`: a store and its partitions each) are cleared, so that the task reads both tables
    /// again from their beginnings and its output rebuilds the view, and the mark is set.
    /// Returns whether the sides were cleared.
    pub(crate) fn prepare_partition(
        &self,
        partition: i32,
        sides: &[(&Store, Vec<i32>)],
    ) -> Result<bool, QueryError> {
        let checkpoint = self.store.checkpoint(partition).map_err(state)?;
        if checkpoint.source_offset.is_some() {
            return Ok(false);
        }
        for (store, partitions) in sides {
            for &side_partition in partitions {
                store.clear_partition(side_partition).map_err(state)?;
            }
        }
        let mut batch = StoreBatch::new();
        batch.clear_partition();
        // The mark: the view's own offsets are its sides' (it is written before them).
        batch.set_source_offset(0);
        self.store.write(partition, batch).map_err(state)?;
        Ok(true)
    }

    /// Adds to `batch` the rows the query sends (`rows`, in the plan's output schema) and the
    /// deletions of the keys it sends tombstones for (`tombstones`, same schema; only the key
    /// columns count), in that order, as the topic receives them.
    pub(crate) fn stage(
        &self,
        rows: &RecordBatch,
        tombstones: &RecordBatch,
        batch: &mut StoreBatch,
        value: &mut Vec<u8>,
    ) -> Result<(), QueryError> {
        if rows.num_rows() > 0 {
            let keys = self.convert_keys(rows)?;
            let values = self
                .row_converter
                .convert_columns(rows.columns())
                .map_err(|e| QueryError::Internal(format!("table row encoding: {e}")))?;
            for (key, row) in keys.iter().zip(values.iter()) {
                value.clear();
                value.push(ROW_FORMAT_VERSION);
                value.extend_from_slice(row.as_ref());
                batch.put(key.as_ref(), value);
            }
        }
        if tombstones.num_rows() > 0 {
            for key in self.convert_keys(tombstones)?.iter() {
                batch.delete(key.as_ref());
            }
        }
        Ok(())
    }

    /// The next source offset whose change partition `partition` does not hold (a view of a
    /// query over one table); `None` when the partition was never written.
    pub(crate) fn next_source_offset(&self, partition: i32) -> Result<Option<i64>, QueryError> {
        Ok(self
            .store
            .checkpoint(partition)
            .map_err(state)?
            .source_offset)
    }

    /// Writes the rows and tombstones a query over one table sent for a batch (see
    /// [`Self::stage`]) to partition `partition`, with the batch's next source offset in the same
    /// write.
    pub(crate) fn write_batch_of_table(
        &self,
        partition: i32,
        rows: &RecordBatch,
        tombstones: &RecordBatch,
        next_source_offset: i64,
        value: &mut Vec<u8>,
    ) -> Result<(), QueryError> {
        let mut batch = StoreBatch::new();
        self.stage(rows, tombstones, &mut batch, value)?;
        batch.set_source_offset(next_source_offset);
        self.write(partition, batch)
    }

    /// Writes `batch` (from [`Self::stage`]) to partition `partition`.
    pub(crate) fn write(&self, partition: i32, batch: StoreBatch) -> Result<(), QueryError> {
        self.store.write(partition, batch).map_err(state)
    }

    fn convert_keys(
        &self,
        batch: &RecordBatch,
    ) -> Result<datafusion::arrow::row::Rows, QueryError> {
        let columns: Vec<ArrayRef> = self
            .plan
            .key_columns
            .iter()
            .map(|&i| Arc::clone(batch.column(i)))
            .collect();
        self.key_converter
            .convert_columns(&columns)
            .map_err(|e| QueryError::Internal(format!("table row key encoding: {e}")))
    }
}

impl PullView for RowsView {
    fn plan(&self) -> &Arc<StreamingPlan> {
        &self.plan
    }

    fn store(&self) -> &Store {
        &self.store
    }

    fn window(&self) -> Option<&WindowSpec> {
        None
    }

    fn encode_keys(&self, columns: &[ArrayRef]) -> Result<Vec<Vec<u8>>, QueryError> {
        let rows = self
            .key_converter
            .convert_columns(columns)
            .map_err(|e| QueryError::Internal(format!("table row key encoding: {e}")))?;
        Ok(rows.iter().map(|r| r.as_ref().to_vec()).collect())
    }

    fn rows(&self, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<RecordBatch, QueryError> {
        let parser = self.row_converter.parser();
        let mut rows = Vec::with_capacity(entries.len());
        for (_, value) in entries {
            match value.split_first() {
                Some((&ROW_FORMAT_VERSION, row)) => rows.push(parser.parse(row)),
                _ => {
                    return Err(QueryError::Internal(format!(
                        "stored table row of {} has unknown format {}",
                        self.store.name(),
                        value.first().copied().unwrap_or(0)
                    )));
                }
            }
        }
        let columns = self
            .row_converter
            .convert_rows(rows)
            .map_err(|e| QueryError::Internal(format!("table row decoding: {e}")))?;
        RecordBatch::try_new(Arc::clone(&self.plan.output_schema), columns)
            .map_err(|e| QueryError::Internal(format!("table rows: {e}")))
    }
}

fn state(error: eddy_state::StateError) -> QueryError {
    QueryError::State(error.to_string())
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int32Array, Int64Array, StringArray};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use eddy_catalog::{ColumnRole, Source, SourceKind};
    use eddy_common::types::SqlType;
    use eddy_planner::Clauses;
    use eddy_state::{StateConfig, StateStore};

    use super::*;

    fn table(name: &str, value: &str, value_type: SqlType) -> Source {
        let columns = [
            ("ID", SqlType::String, ColumnRole::Key),
            (value, value_type, ColumnRole::Value),
        ];
        crate::test_support::source(name, SourceKind::Table, &columns, 2)
    }

    /// `USERS (ID, NAME) JOIN BALANCES (ID, AMOUNT)` on their keys.
    async fn users_with_balances() -> Arc<StreamingPlan> {
        let sql = r#"SELECT u."ID", u."NAME", b."AMOUNT" FROM "USERS" u JOIN "BALANCES" b ON u."ID" = b."ID""#;
        let sources = [
            table("USERS", "NAME", SqlType::String),
            table("BALANCES", "AMOUNT", SqlType::Int),
        ];
        Arc::new(crate::test_support::plan(sql, sources, Clauses::default()).await)
    }

    /// Output rows of the plan: (id, name, amount), with ROWTIME 7.
    fn output(plan: &StreamingPlan, rows: &[(&str, Option<&str>, Option<i32>)]) -> RecordBatch {
        let schema = &plan.output_schema;
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|field| -> ArrayRef {
                match field.name().as_str() {
                    "ID" => Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                    "NAME" => Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))),
                    "AMOUNT" => Arc::new(Int32Array::from_iter(rows.iter().map(|r| r.2))),
                    _ => Arc::new(Int64Array::from(vec![7; rows.len()])),
                }
            })
            .collect();
        RecordBatch::try_new(Arc::clone(schema), columns).unwrap()
    }

    fn stored(view: &RowsView) -> String {
        let mut entries = Vec::new();
        for partition in view.store().partitions().unwrap() {
            for entry in view.store().scan(partition, None, None).unwrap() {
                let (key, value) = entry.unwrap();
                entries.push((key.into_vec(), value.into_vec()));
            }
        }
        let rows = view.rows(&entries).unwrap();
        let plan = view.plan();
        let columns: Vec<ArrayRef> = plan
            .key_columns
            .iter()
            .chain(&plan.value_columns)
            .map(|&i| Arc::clone(rows.column(i)))
            .collect();
        let names: Vec<String> = plan.sink_columns.iter().map(|c| c.name.clone()).collect();
        let batch = RecordBatch::try_from_iter(names.into_iter().zip(columns)).unwrap();
        pretty_format_batches(&[batch]).unwrap().to_string()
    }

    #[tokio::test]
    async fn keeps_the_last_row_of_each_key_and_deletes_tombstoned_keys() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateStore::open(dir.path(), &StateConfig::default()).unwrap();
        let plan = users_with_balances().await;
        let view = RowsView::new(Arc::clone(&plan), state.store("q-rows").unwrap()).unwrap();
        let none = output(&plan, &[]);
        let mut batch = StoreBatch::new();
        let mut value = Vec::new();
        let rows = output(
            &plan,
            &[("u1", Some("ann"), Some(10)), ("u2", Some("bob"), None)],
        );
        view.stage(&rows, &none, &mut batch, &mut value).unwrap();
        view.write(0, batch).unwrap();
        // A later batch: u1 changes, u2 goes.
        let mut batch = StoreBatch::new();
        let rows = output(&plan, &[("u1", Some("anne"), Some(11))]);
        let tombstones = output(&plan, &[("u2", None, None)]);
        view.stage(&rows, &tombstones, &mut batch, &mut value)
            .unwrap();
        view.write(0, batch).unwrap();
        let expected = "\
+----+------+--------+
| ID | NAME | AMOUNT |
+----+------+--------+
| u1 | anne | 11     |
+----+------+--------+";
        assert_eq!(stored(&view), expected);
        // A key looked up as pull queries do finds its row.
        let key = view
            .encode_keys(&[Arc::new(StringArray::from(vec!["u1"]))])
            .unwrap();
        assert!(view.store().get(0, &key[0]).unwrap().is_some());
    }

    #[tokio::test]
    async fn a_partition_without_its_rows_clears_the_sides_to_rebuild_them() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateStore::open(dir.path(), &StateConfig::default()).unwrap();
        let plan = users_with_balances().await;
        let view = RowsView::new(Arc::clone(&plan), state.store("q-rows").unwrap()).unwrap();
        let left = state.store("q-join-left").unwrap();
        let right = state.store("q-join").unwrap();
        let side_state = |store: &Store, partition: i32| {
            let mut batch = StoreBatch::new();
            batch.put(b"k", b"v");
            batch.set_source_offset(5);
            store.write(partition, batch).unwrap();
        };
        for partition in [0, 1] {
            side_state(&left, partition);
            side_state(&right, partition);
        }
        let sides = |partition: i32| [(&left, vec![partition]), (&right, vec![partition])];
        // A new query's partition 0: marked; then its task writes sides and rows.
        assert!(view.prepare_partition(0, &sides(0)).unwrap());
        side_state(&left, 0);
        side_state(&right, 0);
        let mut batch = StoreBatch::new();
        view.stage(
            &output(&plan, &[("u1", Some("ann"), Some(1))]),
            &output(&plan, &[]),
            &mut batch,
            &mut Vec::new(),
        )
        .unwrap();
        view.write(0, batch).unwrap();
        // Started again, it keeps its sides and rows.
        assert!(!view.prepare_partition(0, &sides(0)).unwrap());
        assert_eq!(left.checkpoint(0).unwrap().source_offset, Some(5));
        assert_eq!(right.checkpoint(0).unwrap().source_offset, Some(5));
        assert!(stored(&view).contains("ann"));
        // Partition 1 has side state but no rows (lost, or from before joined rows were kept):
        // both sides are read again from the beginning, and only once.
        assert!(view.prepare_partition(1, &sides(1)).unwrap());
        assert_eq!(left.checkpoint(1).unwrap().source_offset, None);
        assert_eq!(right.checkpoint(1).unwrap().source_offset, None);
        assert!(left.get(1, b"k").unwrap().is_none());
        side_state(&right, 1);
        assert!(!view.prepare_partition(1, &sides(1)).unwrap());
        assert_eq!(right.checkpoint(1).unwrap().source_offset, Some(5));
        // Partition 0 of the sides was left alone.
        assert!(left.get(0, b"k").unwrap().is_some());
    }
}
