//! Materialized tables: starting aggregation queries with their state, changelog and repartition
//! topics, and answering pull queries from that state.

use std::sync::Arc;

use eddy_catalog::{Source, SourceKind};
use eddy_planner::StreamingPlan;
use eddy_runtime::{
    JoinedAggregation, MaterializedView, OffsetReset, PullView, QueryHandle, QuerySpec, SinkSpec,
    StateSpec, UpsertSpec, start_query,
};
use tracing::info;

use crate::engine::{Engine, PlannedStep, poisoned};
use crate::error::EngineError;
use crate::layout::{sink_layout, source_layout, timestamp_index};

impl Engine {
    /// Whether a new persistent query with this plan re-keys in its one partition task (see
    /// `QueryInfo::rekeys_in_task`): it aggregates a stream or table by a key other than its
    /// own, and that input has one partition, so a repartition topic would hold the same records
    /// in the same one partition at the cost of writing and reading each of them once more. (A
    /// table's changes are then retracted in the task, by the upsert step its repartition writer
    /// would run.)
    ///
    /// Or it joins, without join steps, streams that need re-keying, and each of them has one
    /// partition like the side it joins (see [`Self::join_rekeys_in_task`]).
    pub(crate) async fn rekeys_in_task(
        &self,
        planned: &crate::engine::PlannedQuery,
    ) -> Result<bool, EngineError> {
        let plan = &planned.plan;
        if planned.steps.is_empty() && plan.join.is_some() && !planned.repartitions.is_empty() {
            return Ok(self
                .join_rekeys_in_task(plan, &planned.repartitions)
                .await?
                .is_some());
        }
        let Some(aggregation) = &plan.aggregation else {
            return Ok(false);
        };
        if !aggregation.repartition {
            return Ok(false);
        }
        if plan.source.generator.is_some() {
            return Ok(true);
        }
        // A join step's output does not exist yet: its partitions are the step's.
        let partitions = match self
            .inner
            .connection
            .topic(&self.physical_topic(&plan.source))
            .await?
        {
            Some(topic) => topic.partitions,
            None => plan.source.partitions,
        };
        Ok(partitions == 1)
    }

    /// The numbers (from 1) of the join steps of a new persistent query that re-key their
    /// streams in their own task (see `QueryInfo::steps_rekeying_in_task` and
    /// [`Self::join_rekeys_in_task`]).
    pub(crate) async fn steps_rekeying_in_task(
        &self,
        planned: &crate::engine::PlannedQuery,
    ) -> Result<Vec<usize>, EngineError> {
        let mut numbers = Vec::new();
        for (index, step) in planned.steps.iter().enumerate() {
            if self
                .join_rekeys_in_task(&step.plan, &step.repartitions)
                .await?
                .is_some()
            {
                numbers.push(index + 1);
            }
        }
        Ok(numbers)
    }

    /// Whether a new persistent query aggregates its last join step's output in that join's task
    /// (see `QueryInfo::aggregates_in_join_task`).
    pub(crate) async fn aggregates_in_join_task(
        &self,
        planned: &crate::engine::PlannedQuery,
    ) -> Result<bool, EngineError> {
        let (Some(aggregation), Some(step)) = (&planned.plan.aggregation, planned.steps.last())
        else {
            return Ok(false);
        };
        if aggregation.retractable {
            return Ok(false);
        }
        self.join_step_hosts_aggregation(step).await
    }

    /// Whether an aggregation of `step`'s output can run in the step's task: the step joins two
    /// streams of one partition each, so it runs as one task that sees every joined row, and it
    /// needs no repartition topic (its streams are keyed by their join columns, or re-key in
    /// that task).
    async fn join_step_hosts_aggregation(&self, step: &PlannedStep) -> Result<bool, EngineError> {
        let Some(join) = &step.plan.join else {
            return Ok(false);
        };
        if join.stream_join.is_none() {
            return Ok(false);
        }
        if !step.repartitions.is_empty()
            && self
                .join_rekeys_in_task(&step.plan, &step.repartitions)
                .await?
                .is_none()
        {
            return Ok(false);
        }
        for source in [&step.plan.source, &join.table] {
            // An earlier step's output may not exist yet: its partitions are that step's.
            let partitions = match self
                .inner
                .connection
                .topic(&self.physical_topic(source))
                .await?
            {
                Some(topic) => topic.partitions,
                None => source.partitions,
            };
            if partitions != 1 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Starts the last join step of a query (number `number`) with the query's aggregation in
    /// its task (see `QueryInfo::aggregates_in_join_task`): one query that reads the join's two
    /// streams, keeps the join's state under the step's name and the aggregation's under the
    /// query's, and writes the table; the step's output topic is never created.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start_aggregation_in_join_task(
        &self,
        query_id: &str,
        mut step: PlannedStep,
        number: usize,
        rekeying: crate::engine::StepRekeying<'_>,
        plan: StreamingPlan,
        sink: &Source,
        [left_reset, right_reset]: [OffsetReset; 2],
    ) -> Result<QueryHandle, EngineError> {
        let config = &self.inner.config;
        self.rekey_step_in_task(query_id, number, &mut step, rekeying)
            .await?;
        if !step.repartitions.is_empty() || !self.join_step_hosts_aggregation(&step).await? {
            return Err(EngineError::invalid(format!(
                "query {query_id} aggregates in the task of its join step {}, but the streams \
                 that step joins no longer have one partition each: joined rows of one group \
                 would be counted in different tasks\nhint: TERMINATE {query_id}, then create \
                 the table again",
                step.id
            )));
        }
        let join = self
            .join_spec(
                &step.plan,
                &join_store_name(&step.id),
                Some(&step.id),
                right_reset,
            )
            .await?;
        let source_topic = self.physical_topic(&step.plan.source);
        let state = self
            .aggregation_state(query_id, 1, source_topic.clone())
            .await?;
        let view_plan = Arc::new(plan);
        let joined = JoinedAggregation {
            plan: Arc::clone(&view_plan),
            input_schema: Arc::clone(source_layout(&view_plan.source)?.schema()),
            state: state.clone(),
        };
        let spec = QuerySpec {
            query_id: query_id.to_owned(),
            group_id: config.query_group_id(query_id),
            persistent: true,
            source_topic,
            source_layout: source_layout(&step.plan.source)?,
            timestamp_column: timestamp_index(&step.plan.source),
            timestamp_format: crate::layout::timestamp_format(&step.plan.source)?,
            drop_tombstones: true,
            sink: SinkSpec::Kafka {
                topic: self.physical_topic(sink),
                producer: self.inner.producer.get()?,
                layout: sink_layout(sink, &view_plan)?,
                partitions: sink.partitions,
            },
            plan: Arc::new(step.plan),
            state: None,
            single_task: false,
            upsert: None,
            join,
            aggregate_joined: Some(Arc::new(joined)),
            rows_view: None,
            generator: None,
            offset_reset: left_reset,
            config: config.clone(),
            connection: self.inner.connection.clone(),
            processing_log: self.inner.processing_log.clone(),
        };
        let handle = start_query(spec).await?;
        self.register_view(sink, view_plan, &state)?;
        Ok(handle)
    }

    /// The state of aggregation `query_id`: its store, and its changelog of `partitions`
    /// (created if missing).
    async fn aggregation_state(
        &self,
        query_id: &str,
        partitions: i32,
        origin_topic: String,
    ) -> Result<StateSpec, EngineError> {
        let config = &self.inner.config;
        let store = self
            .inner
            .state
            .store(query_id)
            .map_err(|e| EngineError::Internal(format!("state store of {query_id}: {e}")))?;
        let changelog = config.physical_topic(&config.query_topic(query_id, "changelog"));
        self.create_changelog(&changelog, partitions).await?;
        Ok(StateSpec {
            store,
            changelog_topic: Some(changelog),
            limits: self.aggregate_limits(),
            origin_topic,
        })
    }

    /// The upsert step of aggregation `query_id` over a table (see [`UpsertSpec::new`] for
    /// `signed_output`): its store, and its changelog of `partitions` (created if missing).
    async fn upsert_spec(
        &self,
        query_id: &str,
        partitions: i32,
        aggregation: &eddy_planner::AggregationPlan,
        signed_output: bool,
    ) -> Result<UpsertSpec, EngineError> {
        let config = &self.inner.config;
        let store = self
            .inner
            .state
            .store(&upsert_store_name(query_id))
            .map_err(|e| EngineError::Internal(format!("state store of {query_id}: {e}")))?;
        let changelog = config.physical_topic(&config.query_topic(query_id, "upsert-changelog"));
        self.create_changelog(&changelog, partitions).await?;
        Ok(UpsertSpec::new(
            store,
            Some(changelog),
            aggregation,
            signed_output,
        )?)
    }

    /// Starts an aggregation: (repartition writer →) aggregate with RocksDB state and changelog;
    /// with `rekeys_in_task`, without repartition writer (see [`Self::rekeys_in_task`]).
    pub(crate) async fn start_aggregation(
        &self,
        query_id: &str,
        plan: StreamingPlan,
        sink: &Source,
        offset_reset: OffsetReset,
        rekeys_in_task: bool,
    ) -> Result<QueryHandle, EngineError> {
        let config = &self.inner.config;
        let connection = &self.inner.connection;
        let aggregation = plan
            .aggregation
            .as_ref()
            .ok_or_else(|| EngineError::Internal("not an aggregation".into()))?;
        let source_topic = self.physical_topic(&plan.source);
        // A generated source is one partition.
        let source_partitions = match &plan.source.generator {
            Some(_) => 1,
            None => connection
                .topic(&source_topic)
                .await?
                .map(|t| t.partitions)
                .ok_or_else(|| eddy_runtime::KafkaError::UnknownTopic {
                    topic: plan.source.topic.clone(),
                })?,
        };
        let sink_spec = |plan: &StreamingPlan| -> Result<SinkSpec, EngineError> {
            Ok(SinkSpec::Kafka {
                topic: self.physical_topic(sink),
                producer: self.inner.producer.get()?,
                layout: sink_layout(sink, plan)?,
                partitions: sink.partitions,
            })
        };
        let state = self
            .aggregation_state(query_id, source_partitions, source_topic.clone())
            .await?;
        let group_id = config.query_group_id(query_id);
        if rekeys_in_task && source_partitions != 1 {
            return Err(EngineError::invalid(format!(
                "query {query_id} groups its input in one partition task, but \"{}\" now has \
                 {source_partitions} partitions: its keys would be counted apart\nhint: \
                 TERMINATE {query_id}, then create the table again",
                plan.source.name
            )));
        }
        if !aggregation.repartition || rekeys_in_task {
            // Over a table, the task retracts changed rows itself, keeping each key's
            // contribution in a store of its own with its own changelog, as the repartition
            // writer would.
            let upsert = if aggregation.retractable {
                Some(
                    self.upsert_spec(query_id, source_partitions, aggregation, false)
                        .await?,
                )
            } else {
                None
            };
            let view_plan = Arc::new(plan);
            let sink_spec = sink_spec(&view_plan)?;
            let spec = QuerySpec {
                query_id: query_id.to_owned(),
                group_id,
                persistent: true,
                source_topic,
                source_layout: source_layout(&view_plan.source)?,
                timestamp_column: timestamp_index(&view_plan.source),
                timestamp_format: crate::layout::timestamp_format(&view_plan.source)?,
                drop_tombstones: view_plan.source.kind == SourceKind::Stream,
                plan: Arc::clone(&view_plan),
                state: Some(state.clone()),
                single_task: false,
                upsert,
                join: None,
                aggregate_joined: None,
                rows_view: None,
                generator: view_plan.source.generator.clone(),
                sink: sink_spec,
                offset_reset,
                config: config.clone(),
                connection: connection.clone(),
                processing_log: self.inner.processing_log.clone(),
            };
            let handle = start_query(spec).await?;
            self.register_view(sink, view_plan, &state)?;
            return Ok(handle);
        }

        // The group key is not the source key: write the aggregation input to an internal topic
        // keyed by the group key, so each key's state lives in exactly one partition task.
        let repartition_logical = config.query_topic(query_id, "repartition");
        let internal = Source {
            read_only: false,
            name: format!("{query_id}_REPARTITION"),
            kind: SourceKind::Stream,
            columns: plan.repartition_columns()?,
            topic: repartition_logical.clone(),
            key_format: "JSON".into(),
            value_format: "JSON".into(),
            value_delimiter: None,
            wrap_single_value: None,
            timestamp_column: None,
            timestamp_format: None,
            partitions: source_partitions,
            written_by: Some(query_id.to_owned()),
            generator: None,
            window: None,
            sql: String::new(),
        };
        let repartition_topic = config.physical_topic(&repartition_logical);
        connection
            .create_topic(
                &repartition_topic,
                source_partitions,
                config.default_replicas,
                &[],
            )
            .await?;
        // Over a table, the writer remembers each key's contribution to retract it when the row
        // changes or is deleted; that memory is state too, with its own changelog.
        let upsert = if aggregation.retractable {
            Some(
                self.upsert_spec(query_id, source_partitions, aggregation, true)
                    .await?,
            )
        } else {
            None
        };
        let (writer, reader) = plan.split_for_repartition(internal.clone())?;
        let writer_spec = QuerySpec {
            query_id: format!("{query_id}-repartition"),
            group_id: format!("{group_id}-repartition"),
            persistent: true,
            source_topic,
            source_layout: source_layout(&writer.source)?,
            timestamp_column: timestamp_index(&writer.source),
            timestamp_format: crate::layout::timestamp_format(&writer.source)?,
            // The upsert writer sees tombstones in the raw records; the stages never do.
            drop_tombstones: true,
            sink: SinkSpec::Kafka {
                topic: repartition_topic.clone(),
                producer: self.inner.producer.get()?,
                layout: sink_layout(&internal, &writer)?,
                partitions: internal.partitions,
            },
            plan: Arc::new(writer),
            state: None,
            single_task: false,
            upsert,
            join: None,
            aggregate_joined: None,
            rows_view: None,
            generator: plan.source.generator.clone(),
            offset_reset,
            config: config.clone(),
            connection: connection.clone(),
            processing_log: self.inner.processing_log.clone(),
        };
        let reader = Arc::new(reader);
        let reader_spec = QuerySpec {
            query_id: query_id.to_owned(),
            group_id,
            persistent: true,
            source_topic: repartition_topic,
            source_layout: source_layout(&internal)?,
            timestamp_column: None,
            timestamp_format: None,
            drop_tombstones: true,
            plan: Arc::clone(&reader),
            state: Some(state.clone()),
            single_task: false,
            upsert: None,
            join: None,
            aggregate_joined: None,
            rows_view: None,
            generator: None,
            sink: sink_spec(&reader)?,
            // Everything written to the internal topic belongs to this query.
            offset_reset: OffsetReset::Earliest,
            config: config.clone(),
            connection: connection.clone(),
            processing_log: self.inner.processing_log.clone(),
        };
        let upstream = start_query(writer_spec).await?;
        let handle = start_query(reader_spec).await?.with_upstream(upstream);
        self.register_view(sink, reader, &state)?;
        info!(
            query = query_id,
            "aggregation started with a repartition topic"
        );
        Ok(handle)
    }

    /// Creates the compacted changelog topic `topic` (physical name) of a query's state, taking
    /// records of up to `state_record_max_bytes` (Kafka's default is 1 MB).
    async fn create_changelog(&self, topic: &str, partitions: i32) -> Result<(), EngineError> {
        let config = &self.inner.config;
        let max_message_bytes = config
            .state_record_max_bytes
            .saturating_add(eddy_runtime::RECORD_FRAMING_BYTES)
            .to_string();
        self.inner
            .connection
            .create_topic(
                topic,
                partitions,
                config.default_replicas,
                &[
                    ("cleanup.policy", "compact"),
                    ("max.message.bytes", &max_message_bytes),
                ],
            )
            .await?;
        Ok(())
    }

    fn register_view(
        &self,
        sink: &Source,
        plan: Arc<StreamingPlan>,
        state: &StateSpec,
    ) -> Result<(), EngineError> {
        let view = MaterializedView::new(plan, state.store.clone(), &state.limits)?;
        self.inner
            .views
            .lock()
            .map_err(|_| poisoned())?
            .insert(sink.name.clone(), Arc::new(view) as Arc<dyn PullView>);
        Ok(())
    }

    /// Forgets the materialization of `table` and deletes its local state.
    pub(crate) fn drop_view(&self, table: &str, query_id: &str) {
        if let Ok(mut views) = self.inner.views.lock() {
            views.remove(table);
        }
        // The stores of its join steps (`<id>-JOIN-<n>...`) too.
        let steps_prefix = format!("{query_id}-JOIN-");
        let steps = self
            .inner
            .state
            .store_names()
            .into_iter()
            .filter(|name| name.starts_with(&steps_prefix));
        for store in [
            query_id.to_owned(),
            upsert_store_name(query_id),
            join_store_name(query_id),
            format!("{}-left", join_store_name(query_id)),
            rows_store_name(query_id),
        ]
        .into_iter()
        .chain(steps)
        {
            if let Err(error) = self.inner.state.drop_store(&store) {
                tracing::warn!(query = query_id, %error, "cannot delete the query's local state");
            }
        }
    }

    /// The joined table of a stream-table join plan, with its store `store_name`.
    /// A persistent query (`query_id`) keeps a stream-stream join's state in a changelog too.
    pub(crate) async fn join_spec(
        &self,
        plan: &eddy_planner::StreamingPlan,
        store_name: &str,
        query_id: Option<&str>,
        right_reset: OffsetReset,
    ) -> Result<Option<eddy_runtime::JoinSpec>, EngineError> {
        let Some(join) = &plan.join else {
            return Ok(None);
        };
        let right_stream = match &join.stream_join {
            Some(_) => Some(eddy_runtime::RightStreamSpec {
                topic: self.physical_topic(&join.table),
                layout: crate::layout::source_layout(&join.table)?,
                timestamp_column: crate::layout::timestamp_index(&join.table),
                timestamp_format: crate::layout::timestamp_format(&join.table)?,
                offset_reset: right_reset,
            }),
            None => None,
        };
        let changelog_topic = match (&join.stream_join, query_id) {
            (Some(_), Some(query_id)) => {
                let config = &self.inner.config;
                let changelog = config.physical_topic(&config.query_topic(query_id, "changelog"));
                self.create_changelog(&changelog, join.table.partitions)
                    .await?;
                Some(changelog)
            }
            _ => None,
        };
        let store = |name: &str| {
            self.inner
                .state
                .store(name)
                .map_err(|e| EngineError::Internal(e.to_string()))
        };
        let left = match &join.left_table {
            Some(left) => Some((
                self.physical_topic(&left.source),
                crate::layout::source_layout(&left.source)?,
                store(&format!("{store_name}-left"))?,
            )),
            None => None,
        };
        Ok(Some(eddy_runtime::JoinSpec {
            table_topic: self.physical_topic(&join.table),
            table_layout: crate::layout::source_layout(&join.table)?,
            store: store(store_name)?,
            left,
            right_stream,
            changelog_topic,
        }))
    }

    pub(crate) fn aggregate_limits(&self) -> eddy_aggregate::AggregateLimits {
        eddy_aggregate::AggregateLimits {
            collection_max_entries: self.inner.config.collection_max_entries,
            state_max_bytes: self.inner.config.state_record_max_bytes,
            ..Default::default()
        }
    }

    /// The materialization of `table` on this server, if a running query keeps one.
    pub(crate) fn view(&self, table: &str) -> Option<Arc<dyn PullView>> {
        self.inner.views.lock().ok()?.get(table).cloned()
    }
}

/// Name of the store where the upsert writer of query `query_id` (an aggregation over a table)
/// keeps each source key's contribution.
pub(crate) fn upsert_store_name(query_id: &str) -> String {
    format!("{query_id}-upsert")
}

/// The store of a stream-table join query's table rows.
pub(crate) fn join_store_name(query_id: &str) -> String {
    format!("{query_id}-join")
}

/// The store of the rows of a table that query `query_id` makes from tables
/// (`eddy_runtime::RowsView`).
pub(crate) fn rows_store_name(query_id: &str) -> String {
    format!("{query_id}-rows")
}
