//! The table side of a stream-table join: per partition, the table's current rows in RocksDB.
//!
//! Each partition task of a join query owns partition p of the table: a consumer assigned to
//! partition p of the table's topic (the stream and the table are co-partitioned, see
//! `eddy-planner`'s `join`), and partition p of the query's store, which maps the table key
//! (arrow-row bytes of the key columns) to the row the table stages produce (arrow-row bytes).
//! The topic is the store's changelog: each write batch records the next table offset, so after a
//! restart the task reads on from there, and from the beginning when the local state is gone.
//!
//! Before each batch of stream records the task *catches up*: it reads the table partition up to
//! the high watermark it has at that moment. A stream record therefore joins every table change
//! written before the record was processed (more than Kafka Streams promises without
//! `max.task.idle.ms`), at the cost of one offsets request per stream batch.

use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch, UInt32Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{RowConverter, SortField};
use eddy_common::config::BatchLimits;
use eddy_format::{RawBatch, RecordDecoder, SourceLayout};
use eddy_planner::JoinPlan;
use eddy_state::{Store, StoreBatch};
use rdkafka::Offset;
use tracing::info;

use crate::kafka::{KafkaConnection, PartitionReader};
use crate::processing_log::{ErrorKind, ProcessingLog};
use crate::query::QueryError;

/// What a join query needs besides its plan: where the other side's records are and where its
/// state goes.
pub struct JoinSpec {
    /// Physical topic of the table.
    pub table_topic: String,
    pub table_layout: SourceLayout,
    /// The query's table store (one per query; keys prefixed by partition).
    pub store: Store,
    /// The left table of a table-table join: its topic, layout and store.
    pub left: Option<(String, SourceLayout, Store)>,
    /// The right stream of a stream-stream join (then the `table_*` fields describe it too).
    pub right_stream: Option<crate::stream_join::RightStreamSpec>,
    /// Changelog of the store, for joins whose state is not a topic already (stream-stream
    /// joins of persistent queries); partition p holds partition p's entries.
    pub changelog_topic: Option<String>,
}

/// Changes of one batch of table records, per key (last change wins), in first-seen order:
/// the key's new row, or `None` when it has none any more. The store write is separate so that
/// the join's output can be sent before the state that produced it is written.
pub(crate) struct Prepared {
    pub batch: StoreBatch,
    pub changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Where one table of a join is and how its rows look.
struct SideSpec<'a> {
    topic: &'a str,
    layout: &'a SourceLayout,
    store: &'a Store,
    source: &'a eddy_catalog::Source,
    row_schema: &'a datafusion::arrow::datatypes::SchemaRef,
    left: bool,
}

/// Partition p of a join's table: its consumer, decoder and store.
pub(crate) struct TableSide {
    topic: String,
    /// The topic partition read.
    partition: i32,
    /// Where its rows are in the store: the topic partition, except for the copies of a
    /// foreign-key join's right table (see [`TableSide::open_copy`]).
    store_partition: i32,
    store: Store,
    plan: JoinPlan,
    decoder: RecordDecoder,
    key_converter: RowConverter,
    row_converter: RowConverter,
    reader: PartitionReader,
    /// The decoded table batch's key columns.
    key_indices: Vec<usize>,
    /// This is the left table of a table-table join.
    left: bool,
    /// The store had this side's rows (a checkpoint) when the task started.
    restored: bool,
    /// The left table of a foreign-key join: encodes the right table's keys its rows join.
    foreign_key_converter: Option<RowConverter>,
}

/// First byte of the foreign-key index entries kept next to a foreign-key join's left rows
/// (`[FK_INDEX][right key][left key]`): arrow-row keys start with 0 or 1, never with it, and are
/// prefix-free, so a prefix scan of `[FK_INDEX][right key]` finds exactly that key's left rows.
const FK_INDEX: u8 = 0xFF;

impl TableSide {
    /// Opens partition `partition` of the (right) table: reads where the store left off.
    pub(crate) async fn open(
        spec: &JoinSpec,
        plan: &JoinPlan,
        partition: i32,
        group_id: &str,
        connection: &KafkaConnection,
        limits: BatchLimits,
    ) -> Result<Self, QueryError> {
        let side = SideSpec {
            topic: &spec.table_topic,
            layout: &spec.table_layout,
            store: &spec.store,
            source: &plan.table,
            row_schema: &plan.table_row_schema,
            left: false,
        };
        Self::open_side(
            side,
            plan,
            (partition, partition),
            group_id,
            connection,
            limits,
        )
        .await
    }

    /// Opens the copy that task `task` of a foreign-key join keeps of partition `right` (of
    /// `right_count`) of the right table, at store partition `task * right_count + right`.
    pub(crate) async fn open_copy(
        spec: &JoinSpec,
        plan: &JoinPlan,
        (task, right, right_count): (i32, i32, i32),
        group_id: &str,
        connection: &KafkaConnection,
        limits: BatchLimits,
    ) -> Result<Self, QueryError> {
        let store_partition = i64::from(task)
            .checked_mul(i64::from(right_count))
            .and_then(|p| p.checked_add(i64::from(right)))
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| {
                QueryError::Plan(format!(
                    "a foreign-key join of {right_count} right partitions cannot keep a copy for \
                     partition {task}"
                ))
            })?;
        let side = SideSpec {
            topic: &spec.table_topic,
            layout: &spec.table_layout,
            store: &spec.store,
            source: &plan.table,
            row_schema: &plan.table_row_schema,
            left: false,
        };
        Self::open_side(
            side,
            plan,
            (right, store_partition),
            &format!("{group_id}-copy-{task}"),
            connection,
            limits,
        )
        .await
    }

    /// Opens partition `partition` of the left table of a table-table join.
    pub(crate) async fn open_left(
        spec: &JoinSpec,
        plan: &JoinPlan,
        partition: i32,
        group_id: &str,
        connection: &KafkaConnection,
        limits: BatchLimits,
    ) -> Result<Self, QueryError> {
        let (Some((topic, layout, store)), Some(left)) = (&spec.left, &plan.left_table) else {
            return Err(QueryError::Internal(
                "a table join without its left table".into(),
            ));
        };
        let side = SideSpec {
            topic,
            layout,
            store,
            source: &left.source,
            row_schema: &left.row_schema,
            left: true,
        };
        Self::open_side(
            side,
            plan,
            (partition, partition),
            &format!("{group_id}-left"),
            connection,
            limits,
        )
        .await
    }

    async fn open_side(
        side: SideSpec<'_>,
        plan: &JoinPlan,
        (partition, store_partition): (i32, i32),
        group_id: &str,
        connection: &KafkaConnection,
        limits: BatchLimits,
    ) -> Result<Self, QueryError> {
        let decoder = RecordDecoder::new(side.layout).map_err(|e| QueryError::Format {
            topic: side.topic.to_owned(),
            message: e.to_string(),
        })?;
        let converter = |types: Vec<SortField>| {
            RowConverter::new(types).map_err(|e| {
                QueryError::Plan(format!("the joined table's rows cannot be stored: {e}"))
            })
        };
        let sort_fields =
            |types: &[DataType]| types.iter().map(|t| SortField::new(t.clone())).collect();
        let left_table = plan.left_table.as_ref().filter(|_| side.left);
        let key_converter = converter(match left_table {
            Some(left) => sort_fields(&left.key_types),
            None => sort_fields(&plan.table_key_types),
        })?;
        let foreign_key_converter = match left_table {
            Some(left) if left.foreign_key => Some(converter(sort_fields(&plan.table_key_types))?),
            _ => None,
        };
        let row_converter = converter(
            side.row_schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        let first_key = side.source.first_key_index();
        let key_indices = (first_key..first_key + side.source.key_count()).collect();
        let checkpoint = side
            .store
            .checkpoint(store_partition)
            .map_err(|e| QueryError::State(e.to_string()))?;
        let start = match checkpoint.source_offset {
            Some(offset) => Offset::Offset(offset),
            None => Offset::Beginning,
        };
        let reader = PartitionReader::open(
            connection,
            &format!("{group_id}-table"),
            side.topic,
            partition,
            start,
            limits,
        )
        .await?;
        Ok(Self {
            topic: side.topic.to_owned(),
            partition,
            store_partition,
            store: side.store.clone(),
            plan: plan.clone(),
            decoder,
            key_converter,
            row_converter,
            reader,
            key_indices,
            left: side.left,
            restored: checkpoint.source_offset.is_some(),
            foreign_key_converter,
        })
    }

    /// The table partition's high watermark now.
    pub(crate) async fn high_watermark(
        &self,
        connection: &KafkaConnection,
    ) -> Result<i64, QueryError> {
        self.reader.high_watermark(connection).await
    }

    /// Applies the table partition's records up to its current high watermark.
    pub(crate) async fn catch_up(
        &mut self,
        connection: &KafkaConnection,
        log: &ProcessingLog,
        query_id: &str,
    ) -> Result<(), QueryError> {
        let high = self.high_watermark(connection).await?;
        while let Some(raw) = self.read_batch(high).await? {
            let prepared = self.prepare(&raw, log, query_id).await?;
            self.write(prepared.batch)?;
        }
        Ok(())
    }

    /// Reads the next batch of table records below `high`; `None` when the table is read up to
    /// `high`.
    pub(crate) async fn read_batch(&mut self, high: i64) -> Result<Option<RawBatch>, QueryError> {
        self.reader.read_batch(high).await
    }

    /// What a batch of table records changes: rows for present records, deletes for tombstones
    /// and rows the table stages reject, and the next offset, in one store batch (not written).
    pub(crate) async fn prepare(
        &mut self,
        raw: &RawBatch,
        log: &ProcessingLog,
        query_id: &str,
    ) -> Result<Prepared, QueryError> {
        let mut batch = StoreBatch::default();
        batch.set_source_offset(self.reader.next_offset());
        let mut changes: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        if raw.is_empty() {
            return Ok(Prepared { batch, changes });
        }
        let decoded = self
            .decoder
            .decode(raw)
            .map_err(|e| QueryError::Internal(format!("decoder of \"{}\": {e}", self.topic)))?;
        for error in &decoded.errors {
            log.report(
                query_id,
                ErrorKind::DeserializationError,
                &self.topic,
                error.partition,
                error.offset,
                format!("joined table record skipped: {}", error.reason),
                None,
            )
            .await;
        }
        let table = decoded.batch;
        let key_columns: Vec<_> = self
            .key_indices
            .iter()
            .map(|&i| Arc::clone(table.column(i)))
            .collect();
        let keys = self
            .key_converter
            .convert_columns(&key_columns)
            .map_err(|e| QueryError::Internal(format!("joined table key: {e}")))?;
        let (rows, present) = if self.left {
            self.plan.left_rows(table.clone())
        } else {
            self.plan.table_rows(table.clone())
        }
        .map_err(|e| QueryError::Expression(e.to_string()))?;
        let mut change_index: std::collections::HashMap<Vec<u8>, usize> =
            std::collections::HashMap::new();
        let values = self
            .row_converter
            .convert_columns(rows.columns())
            .map_err(|e| QueryError::Internal(format!("joined table row: {e}")))?;
        // Tombstones are listed in row order.
        let mut tombstones = decoded.tombstones.iter().peekable();
        let offsets = table
            .column(eddy_catalog::PSEUDO_COLUMNS.len() - 1)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .cloned();
        for row in 0..table.num_rows() {
            let tombstone = tombstones.next_if(|&&t| t == row).is_some();
            if key_columns.iter().any(|k| k.is_null(row)) {
                let offset = offsets.as_ref().map(|o| o.value(row)).unwrap_or(-1);
                log.report(
                    query_id,
                    ErrorKind::DeserializationError,
                    &self.topic,
                    self.partition,
                    offset,
                    "a joined table record has no key: it is skipped".to_owned(),
                    None,
                )
                .await;
                continue;
            }
            let key = keys.row(row);
            let value = if tombstone || !present.value(row) || present.is_null(row) {
                batch.delete(key.as_ref());
                None
            } else {
                let value = values.row(row);
                batch.put(key.as_ref(), value.as_ref());
                Some(value.as_ref().to_vec())
            };
            match change_index.get(key.as_ref()) {
                Some(&i) => changes[i].1 = value,
                None => {
                    change_index.insert(key.as_ref().to_vec(), changes.len());
                    changes.push((key.as_ref().to_vec(), value));
                }
            }
        }
        Ok(Prepared { batch, changes })
    }

    pub(crate) fn write(&self, batch: StoreBatch) -> Result<(), QueryError> {
        self.store
            .write(self.store_partition, batch)
            .map_err(|e| QueryError::State(e.to_string()))
    }

    /// Looks up the table row of each stream row: the table rows found and, per stream row, the
    /// index of its row among them (NULL: none, or a NULL join key).
    pub(crate) fn lookup(
        &self,
        stream: &RecordBatch,
    ) -> Result<(RecordBatch, UInt32Array), QueryError> {
        let keys = self
            .plan
            .stream_keys(stream)
            .map_err(|e| QueryError::Expression(e.to_string()))?;
        let key_rows = self
            .key_converter
            .convert_columns(&keys)
            .map_err(|e| QueryError::Internal(format!("join key: {e}")))?;
        let rows = stream.num_rows();
        let mut wanted: Vec<&[u8]> = Vec::with_capacity(rows);
        let mut wanted_by: Vec<Option<usize>> = Vec::with_capacity(rows);
        for row in 0..rows {
            if keys.iter().any(|k| k.is_null(row)) {
                wanted_by.push(None);
            } else {
                wanted_by.push(Some(wanted.len()));
                wanted.push(key_rows.row(row).data());
            }
        }
        let found = self.get_rows(&wanted)?;
        // Per stream row, its stored row: none for a NULL key or a key without a row.
        let rows: Vec<Option<&[u8]>> = wanted_by
            .iter()
            .map(|w| w.and_then(|i| found[i].as_deref()))
            .collect();
        self.decode_rows(&rows)
    }

    /// Rows of this table for `rows` (stored row bytes, `None`: no row), decoded: the rows found
    /// and, per entry, its index among them (NULL: none).
    pub(crate) fn decode_rows(
        &self,
        rows: &[Option<&[u8]>],
    ) -> Result<(RecordBatch, UInt32Array), QueryError> {
        let parser = self.row_converter.parser();
        let mut found = Vec::with_capacity(rows.len());
        let mut indices = Vec::with_capacity(rows.len());
        for row in rows {
            match row {
                Some(bytes) => {
                    indices.push(Some(found.len() as u32));
                    found.push(parser.parse(bytes));
                }
                None => indices.push(None),
            }
        }
        let columns = self
            .row_converter
            .convert_rows(found)
            .map_err(|e| QueryError::Internal(format!("stored table row: {e}")))?;
        let schema = if self.left {
            self.plan
                .left_table
                .as_ref()
                .map(|l| Arc::clone(&l.row_schema))
                .ok_or_else(|| QueryError::Internal("no left table".into()))?
        } else {
            Arc::clone(&self.plan.table_row_schema)
        };
        let count = indices.iter().flatten().count();
        let batch = RecordBatch::try_new_with_options(
            schema,
            columns,
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(count)),
        )
        .map_err(|e| QueryError::Internal(format!("stored table rows: {e}")))?;
        Ok((batch, UInt32Array::from(indices)))
    }

    /// The key columns of stored keys.
    pub(crate) fn decode_keys(
        &self,
        keys: &[&[u8]],
    ) -> Result<Vec<datafusion::arrow::array::ArrayRef>, QueryError> {
        let parser = self.key_converter.parser();
        self.key_converter
            .convert_rows(keys.iter().map(|k| parser.parse(k)))
            .map_err(|e| QueryError::Internal(format!("stored table key: {e}")))
    }

    /// The stored rows of `keys` in this table's partition.
    pub(crate) fn get_rows(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, QueryError> {
        self.store
            .multi_get(self.store_partition, keys)
            .map_err(|e| QueryError::State(e.to_string()))
    }

    /// The right table's key each of `rows` (stored left rows of a foreign-key join; `None`: no
    /// row) joins, encoded as the right table stores its keys; `None` for a missing row or a
    /// NULL foreign key.
    pub(crate) fn foreign_keys(
        &self,
        rows: &[Option<&[u8]>],
    ) -> Result<Vec<Option<Vec<u8>>>, QueryError> {
        let Some(converter) = &self.foreign_key_converter else {
            return Err(QueryError::Internal("not a foreign-key join".into()));
        };
        let (batch, index) = self.decode_rows(rows)?;
        let keys = self
            .plan
            .stream_keys(&batch)
            .map_err(|e| QueryError::Expression(e.to_string()))?;
        let encoded = converter
            .convert_columns(&keys)
            .map_err(|e| QueryError::Internal(format!("foreign key: {e}")))?;
        Ok((0..rows.len())
            .map(|i| {
                let row = index.is_valid(i).then(|| index.value(i) as usize)?;
                if keys.iter().any(|k| k.is_null(row)) {
                    return None;
                }
                Some(encoded.row(row).as_ref().to_vec())
            })
            .collect())
    }

    /// The index entry saying left row `left_key` joins right key `foreign_key`.
    pub(crate) fn foreign_key_entry(foreign_key: &[u8], left_key: &[u8]) -> Vec<u8> {
        let mut entry = Vec::with_capacity(1 + foreign_key.len() + left_key.len());
        entry.push(FK_INDEX);
        entry.extend_from_slice(foreign_key);
        entry.extend_from_slice(left_key);
        entry
    }

    /// The keys of the stored left rows of a foreign-key join that join right key
    /// `foreign_key`.
    pub(crate) fn rows_joining(&self, foreign_key: &[u8]) -> Result<Vec<Vec<u8>>, QueryError> {
        let prefix = Self::foreign_key_entry(foreign_key, &[]);
        self.store
            .scan_prefix(self.store_partition, &prefix)
            .map_err(|e| QueryError::State(e.to_string()))?
            .map(|entry| {
                entry
                    .map(|(key, _)| key[prefix.len()..].to_vec())
                    .map_err(|e| QueryError::State(e.to_string()))
            })
            .collect()
    }

    /// The next offset of the table partition to apply.
    pub(crate) fn next_offset(&self) -> i64 {
        self.reader.next_offset()
    }

    pub(crate) fn is_left(&self) -> bool {
        self.left
    }

    /// Whether the store had this side's rows when the task started (else they are read again
    /// from the topic's beginning).
    pub(crate) fn restored(&self) -> bool {
        self.restored
    }

    pub(crate) fn log_ready(&self, query_id: &str) {
        info!(
            query = query_id,
            partition = self.partition,
            next_offset = self.reader.next_offset(),
            "joined table ready"
        );
    }
}
