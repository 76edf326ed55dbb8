//! Plans Eddy queries.
//!
//! A `SELECT` arrives as a normalized sqlparser [`Query`] (see `eddy-sql`). The planner exposes the
//! catalog's streams and tables to DataFusion as schema-only tables, lets DataFusion's SQL planner
//! and optimizer produce a logical plan, and rewrites that plan into a [`StreamingPlan`]: a chain of
//! [`Stage`]s of DataFusion physical expressions that the runtime applies to every Arrow batch decoded
//! from the source topic.
//!
//! ```text
//!  Query ──expand *, add hidden columns──▶ DataFusion SqlToRel ──▶ LogicalPlan ──optimize──▶
//!        ──rewrite──▶ StreamingPlan { source, stages: [Filter, Project], key/value/rowtime columns }
//! ```
//!
//! A `GROUP BY` query is split around its aggregate: stages produce `[group key..., arguments...]`,
//! the runtime folds them into per-key state with `eddy-aggregate`, and post stages (`HAVING`, the
//! projection) turn the aggregate values into table rows (see `aggregate`).
//!
//! A statement joining more than two sources, or aggregating a join, is a chain of such plans:
//! [`first_join_step`] splits off its first join as a query of its own and rewrites the rest to
//! read that join's output (see `chain`).
//!
//! Every plan carries two hidden columns computed next to the user's projection: the new record key
//! when the query has `PARTITION BY`, and the event time (`ROWTIME`) of the output record.

mod aggregate;
mod chain;
mod functions;
mod join;
mod plan;
mod rekey;
mod split;
#[cfg(test)]
mod test_support;

pub use aggregate::{
    AggregateCall, AggregationPlan, MAX_ROWS_PER_RECORD, ORIGIN_AGGREGATE, ORIGIN_OUTPUT,
    ORIGIN_ROW_BITS, OriginNumbering, PostOutput, ROWTIME_AGGREGATE, SIGN_COLUMN,
    WINDOWEND_AGGREGATE, WINDOWSTART_AGGREGATE, WindowPlan, number_origin_rows,
};
pub use chain::{JoinStep, first_join_step};
pub use join::{JoinKind, JoinPlan, LeftTable, StreamJoin};
pub use plan::{
    Clauses, PlanError, Planner, ROWTIME_OUTPUT, Stage, StreamingPlan, WINDOWEND, WINDOWEND_OUTPUT,
    WINDOWSTART, WINDOWSTART_OUTPUT, WindowColumns,
};
pub use rekey::{ExpressionRekey, rekey_in_task, rekey_join_expression};
