//! ksqlDB's aggregate functions for Eddy's continuous `GROUP BY` queries, computed over Arrow
//! arrays a batch at a time, with a per-group state that can be serialized (other crates keep it
//! in RocksDB and in a Kafka changelog topic) and that supports retraction (aggregating a TABLE:
//! when an input row changes or is deleted, its old contribution is taken back out).
//!
//! # Use
//!
//! The planner checks each call with [`AggregateSpec::new`] (or only asks for its type with
//! [`AggregateSpec::return_type`]); the query's calls make one [`Aggregator`]. The runtime keeps
//! one [`GroupState`] per group (from [`Aggregator::new_state`] or
//! [`Aggregator::decode_state`]), folds each input batch into the states of its groups with
//! [`Aggregator::update`], reads the results with [`Aggregator::evaluate`], stores the states with
//! [`Aggregator::encode_state`], and deletes a table's group when its [`GroupState::rows`] falls
//! back to 0. Session windows that merge fold one session's state into the other's with
//! [`Aggregator::merge`].
//!
//! # Functions
//!
//! | call | input | result | NULL inputs | no (non-NULL) input |
//! | --- | --- | --- | --- | --- |
//! | `COUNT(*)` | — | BIGINT | counted | 0 |
//! | `COUNT(x)` | any | BIGINT | ignored | 0 |
//! | `SUM(x)` | INT, BIGINT, DOUBLE, DECIMAL(p, s) | the input type | ignored | 0 |
//! | `AVG(x)` | INT, BIGINT, DOUBLE, DECIMAL | DOUBLE | ignored | 0.0 |
//! | `MIN(x)`, `MAX(x)` | scalar | the input type | ignored | NULL |
//! | `COUNT_DISTINCT(x)` | scalar | BIGINT | ignored | 0 |
//! | `LATEST_BY_OFFSET(x [, ignore_nulls])` | scalar | the input type | ignored by default | NULL |
//! | `EARLIEST_BY_OFFSET(x [, ignore_nulls])` | scalar | the input type | ignored by default | NULL |
//! | `COLLECT_LIST(x)` | scalar | ARRAY, insertion order | collected | `[]` |
//! | `COLLECT_SET(x)` | scalar | ARRAY of distinct values, ascending | collected once, first | `[]` |
//! | `TOPK(x, k)` | scalar | ARRAY of the k largest, descending | ignored | `[]` |
//! | `HISTOGRAM(x)` | STRING | MAP<STRING, BIGINT> value → count | ignored | `{}` |
//!
//! "Scalar" is INT, BIGINT, DOUBLE, DECIMAL, STRING, BYTES, BOOLEAN, DATE, TIME or TIMESTAMP
//! (Arrow Int32, Int64, Float64, Decimal128, Utf8, Binary, Boolean, Date32, Time32(ms),
//! Timestamp(ms)): ksqlDB's collecting functions take only these "simple types" too. An ARRAY is
//! `List(Field("item", t, nullable))`; HISTOGRAM's MAP is `Map(Field("entries", Struct[key Utf8
//! not null, value Int64]), unsorted)`.
//!
//! Where ksqlDB's documentation and code decide, Eddy follows them:
//! * SUM of no value is 0 and AVG of no value is 0.0 (ksqlDB's initial values), not NULL.
//! * SUM of INT and BIGINT wraps around on overflow, as ksqlDB's Java `int` and `long` additions
//!   do (the documentation is silent). Wrapping is also the only choice a retraction undoes
//!   exactly; saturating could not be taken back. AVG keeps a 128-bit sum and does not wrap.
//! * SUM of DECIMAL(p, s) is a DECIMAL(p, s); a sum that does not fit is an error ("numeric field
//!   overflow", as ksqlDB and Postgres say), raised by [`Aggregator::evaluate`] so that the state
//!   stays exact and a later retraction can bring the sum back into range.
//! * SUM of DOUBLE follows IEEE arithmetic (infinities, NaN); the state counts NaN and infinite
//!   values apart from the finite sum, so retracting them restores it, and resets the finite sum
//!   to exactly 0 when no finite value is left. A retraction otherwise has the rounding of
//!   floating-point subtraction.
//! * COLLECT_LIST keeps NULLs; a retraction removes the last occurrence of the value.
//!   COLLECT_SET keeps NULL as one of its values (ksqlDB's code adds it like any other value);
//!   Eddy orders the set by value, NULL first, where ksqlDB keeps first-seen order.
//! * LATEST_BY_OFFSET and EARLIEST_BY_OFFSET ignore NULLs unless `ignore_nulls` is false. Rows
//!   arrive in offset order, so the latest is the last row applied and the earliest the first.
//!   They cannot aggregate a table.
//! * HISTOGRAM ignores NULLs (a MAP key cannot be NULL).
//! * COLLECT_LIST, COLLECT_SET and HISTOGRAM keep at most
//!   [`AggregateLimits::collection_max_entries`] entries (distinct values for the last two) and
//!   ignore the rest silently, like ksqlDB's `ksql.functions.collect_list.limit`; once a group
//!   hit the limit, retractions are approximate there, as in ksqlDB.
//!
//! Eddy extends ksqlDB where its state design allows: COUNT_DISTINCT is exact (ksqlDB estimates
//! with HyperLogLog), bounded by [`AggregateLimits::count_distinct_max_values`]; MIN, MAX, TOPK,
//! COUNT_DISTINCT and COLLECT_SET also aggregate tables (ksqlDB: streams only); AVG also takes
//! DECIMAL.
//!
//! # State design
//!
//! A [`GroupState`] holds the group's row count and one state per aggregate, a small enum.
//! Numeric aggregates keep numbers: counts (`i64`), SUM/AVG of integers (`i64`, `i128`), of
//! doubles (`f64` and counts), of decimals (an `i128` with an overflow counter, so sums never
//! lose digits). Aggregates that store, compare or collect values keep them as arrow-row bytes
//! (`arrow::row`, one converter per aggregate over the input type, ascending, nulls first): a
//! batch's argument column is converted once, and since byte order is value order, MIN, MAX and
//! TOPK compare bytes, and sets are `BTreeMap<bytes, count>` multisets. Values are converted back
//! to Arrow arrays only by [`Aggregator::evaluate`].
//!
//! Retraction: when a spec is made `retractable` (table input), every state can take a row back
//! exactly: MIN, MAX and TOPK keep a multiset of all values (unbounded), COLLECT_LIST removes an
//! occurrence, COLLECT_SET, COUNT_DISTINCT and HISTOGRAM keep counts. For a stream, MIN and MAX
//! keep one value and TOPK only its k values, so the state stays bounded.
//!
//! Updates go a batch at a time: one dispatch per aggregate and batch, then a typed loop over
//! the rows; nothing is allocated per row except when a state stores a value it did not hold.
//!
//! Serialization: a format version byte (1), then the postcard encoding of the state. Decoding
//! checks everything, including every stored value against the input type, and fails with an
//! error on bytes it did not write, never with a panic.

mod aggregator;
mod error;
mod row_bytes;
mod spec;
mod state;

#[cfg(test)]
mod tests;

pub use aggregator::Aggregator;
pub use error::AggregateError;
pub use spec::{AggregateLimits, AggregateSpec, LiteralArg, TOPK_MAX_K};
pub use state::GroupState;
