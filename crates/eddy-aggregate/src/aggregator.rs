//! All the aggregates of one query: batch updates, final values, state (de)serialization.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Decimal128Array, Float64Array, Int32Array, Int64Array, ListArray,
    MapArray, StructArray, new_empty_array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Decimal128Type, Field, Float64Type, Int32Type, Int64Type};
use arrow::row::{Row, Rows};

use crate::error::AggregateError;
use crate::spec::{AggregateSpec, Func, Numeric, RowCodec, histogram_entry_fields};
use crate::state::{self, AggState, GroupState, Multiset};

/// The aggregates of one query, in order, over one group state per group.
#[derive(Debug, Clone)]
pub struct Aggregator {
    specs: Vec<AggregateSpec>,
    /// The state of a group that has seen no row.
    initial: GroupState,
}

/// The state of aggregate `$i` of group `$g`, as variant `$variant` (guaranteed by the shape
/// checks done before any update; a mismatch is reported, not a panic).
macro_rules! agg_state {
    ($states:ident, $g:expr, $i:expr, $variant:ident) => {
        match &mut $states[$g].aggs[$i] {
            AggState::$variant(s) => s,
            _ => return Err(mismatch($i)),
        }
    };
}

fn mismatch(index: usize) -> AggregateError {
    AggregateError::input(format!(
        "the state of aggregate {index} was not made by this aggregator"
    ))
}

/// Calls `f(row, group, add)` for every row whose value is not null (per `nulls`), in order.
#[inline(always)]
fn for_each_row(
    groups: &[u32],
    signs: Option<&[i8]>,
    nulls: Option<&NullBuffer>,
    mut f: impl FnMut(usize, usize, bool) -> Result<(), AggregateError>,
) -> Result<(), AggregateError> {
    for (row, &group) in groups.iter().enumerate() {
        if nulls.is_some_and(|nulls| nulls.is_null(row)) {
            continue;
        }
        let add = signs.is_none_or(|signs| signs[row] > 0);
        f(row, group as usize, add)?;
    }
    Ok(())
}

impl Aggregator {
    /// Groups the aggregates of one query; the states it makes hold one state per spec, in
    /// this order.
    pub fn new(specs: Vec<AggregateSpec>) -> Result<Self, AggregateError> {
        let aggs = specs.iter().map(AggregateSpec::initial_state).collect();
        Ok(Aggregator {
            specs,
            initial: GroupState { rows: 0, aggs },
        })
    }

    /// The aggregates, in order.
    pub fn specs(&self) -> &[AggregateSpec] {
        &self.specs
    }

    /// The state of a group that has seen no row. Evaluated, it gives COUNT 0, SUM 0, AVG 0.0,
    /// MIN/MAX/LATEST/EARLIEST NULL, empty ARRAYs and an empty MAP.
    pub fn new_state(&self) -> GroupState {
        self.initial.clone()
    }

    /// One field per aggregate, named by its lowercase function name (callers rename them to
    /// the query's column names), with [`AggregateSpec::output_type`] and
    /// [`AggregateSpec::output_nullable`].
    pub fn output_fields(&self) -> Vec<Field> {
        self.specs
            .iter()
            .map(|spec| {
                Field::new(
                    spec.name().to_ascii_lowercase(),
                    spec.output_type().clone(),
                    spec.output_nullable(),
                )
            })
            .collect()
    }

    /// Appends the serialized state to `out`: a format version byte (1), then the postcard
    /// encoding of the state.
    pub fn encode_state(&self, state: &GroupState, out: &mut Vec<u8>) {
        state::encode(state, out);
    }

    /// Reads a state written by [`encode_state`](Self::encode_state) for an aggregator with the
    /// same specs. Anything else (truncated or corrupt bytes, another version, another query's
    /// state, stored values that are not of the input type) is an
    /// [`AggregateError::InvalidState`], never a panic: every stored value is checked here, so
    /// that evaluating the state cannot fail on it.
    pub fn decode_state(&self, bytes: &[u8]) -> Result<GroupState, AggregateError> {
        let mut state = state::decode(bytes).map_err(AggregateError::state)?;
        self.check_decoded(&mut state)
            .map_err(AggregateError::state)?;
        Ok(state)
    }

    /// Folds `groups.len()` input rows into `states`.
    ///
    /// * `groups[row]` is the index in `states` of the row's group.
    /// * `args[i]` holds the argument columns of aggregate `i` (one column; none for
    ///   `COUNT(*)`), each `groups.len()` long and of the spec's input type.
    /// * `signs`: `None` adds every row; `Some(signs)` adds the rows whose sign is `1` and
    ///   retracts those whose sign is `-1` (a TABLE's old row is retracted when it changes or is
    ///   deleted). Rows are applied in order, which for LATEST/EARLIEST_BY_OFFSET is the offset
    ///   order.
    ///
    /// Inputs are checked before any state changes: a wrong length, type, group index or sign,
    /// a state made by another aggregator, or a retraction for an aggregate that cannot take
    /// one ([`AggregateSpec::new`] refuses LATEST/EARLIEST_BY_OFFSET on tables; MIN, MAX and
    /// TOPK made for a stream keep no values to retract) is an
    /// [`AggregateError::InvalidInput`].
    pub fn update(
        &self,
        states: &mut [GroupState],
        groups: &[u32],
        args: &[Vec<ArrayRef>],
        signs: Option<&[i8]>,
    ) -> Result<(), AggregateError> {
        self.check_update(states, groups, args, signs)?;
        match signs {
            None => {
                for &group in groups {
                    let rows = &mut states[group as usize].rows;
                    *rows = rows.wrapping_add(1);
                }
            }
            Some(signs) => {
                for (&group, &sign) in groups.iter().zip(signs) {
                    let rows = &mut states[group as usize].rows;
                    *rows = rows.wrapping_add(i64::from(sign));
                }
            }
        }
        for (i, spec) in self.specs.iter().enumerate() {
            update_one(spec, i, states, groups, args[i].first(), signs)?;
        }
        Ok(())
    }

    /// Folds `from` into `into`, as if every row that made `from` had been added to `into`
    /// after the rows that made `into`: for session windows, when a row bridges two sessions
    /// and they become one. The caller passes the earlier session as `into` and the later one
    /// as `from`: the order matters for LATEST_BY_OFFSET, EARLIEST_BY_OFFSET and COLLECT_LIST,
    /// and for what the collections keep at their limits (`into`'s values first).
    ///
    /// * Row counts, COUNT, SUM and AVG add up (wrapping where [`update`](Self::update) wraps;
    ///   a DECIMAL SUM stays exact). A DOUBLE SUM or AVG adds its NaN and infinity counts and
    ///   its finite sums (exactly 0 when no finite value is left); the finite part has the
    ///   rounding of adding the two partial sums rather than each value in turn.
    /// * MIN and MAX keep the smaller or larger value, or merge their multisets (table).
    /// * TOPK adds its multisets; for a stream it then keeps only the `k` largest values, as
    ///   `update` does.
    /// * COUNT_DISTINCT, COLLECT_SET and HISTOGRAM add the counts of the values `into` holds,
    ///   and take `from`'s other values in value order while `into` has fewer distinct values
    ///   than the limit `update` enforces. Below the limit this is exact; at the limit, `update`
    ///   would keep the first values seen, which `from` no longer knows, so which new values
    ///   are kept (and a HISTOGRAM's counts of values `from` dropped) is approximate, as the
    ///   limits are. COUNT_DISTINCT's count is still exact when neither state was retracted
    ///   from.
    /// * COLLECT_LIST appends `from`'s values to `into`'s, up to the same limit as `update`.
    /// * LATEST_BY_OFFSET keeps `from`'s value when it has one, EARLIEST_BY_OFFSET `into`'s.
    ///
    /// Retractions carry over as counts: a row retracted in `from` that was added to `into`
    /// is not taken back out of a multiset or list (it was not in `from`'s), only out of the
    /// counts and sums.
    ///
    /// Both states are checked first: a state made by another aggregator is an
    /// [`AggregateError::InvalidInput`], and `into` is then left unchanged.
    pub fn merge(&self, into: &mut GroupState, from: &GroupState) -> Result<(), AggregateError> {
        self.check_shape(into)?;
        self.check_shape(from)?;
        into.rows = into.rows.wrapping_add(from.rows);
        for (i, ((spec, into), from)) in self
            .specs
            .iter()
            .zip(&mut into.aggs)
            .zip(&from.aggs)
            .enumerate()
        {
            merge_one(spec, i, into, from)?;
        }
        Ok(())
    }

    /// The final values: one array per aggregate, whose row `j` is the value of `states[j]`.
    ///
    /// Fails only for a state made by another aggregator and for a DECIMAL SUM out of the range
    /// of its type ([`AggregateError::DecimalOverflow`]).
    pub fn evaluate(&self, states: &[&GroupState]) -> Result<Vec<ArrayRef>, AggregateError> {
        for state in states {
            self.check_shape(state)?;
        }
        self.specs
            .iter()
            .enumerate()
            .map(|(i, spec)| evaluate_one(spec, i, states))
            .collect()
    }

    /// Whether `state` has one state per spec, each of the kind the spec uses.
    fn check_shape(&self, state: &GroupState) -> Result<(), AggregateError> {
        if state.aggs.len() != self.initial.aggs.len() {
            return Err(AggregateError::input(format!(
                "a state has {} aggregates, this aggregator has {}",
                state.aggs.len(),
                self.initial.aggs.len()
            )));
        }
        for (i, (agg, initial)) in state.aggs.iter().zip(&self.initial.aggs).enumerate() {
            if std::mem::discriminant(agg) != std::mem::discriminant(initial) {
                return Err(mismatch(i));
            }
        }
        Ok(())
    }

    fn check_update(
        &self,
        states: &[GroupState],
        groups: &[u32],
        args: &[Vec<ArrayRef>],
        signs: Option<&[i8]>,
    ) -> Result<(), AggregateError> {
        let num_rows = groups.len();
        if args.len() != self.specs.len() {
            return Err(AggregateError::input(format!(
                "{} argument lists for {} aggregates",
                args.len(),
                self.specs.len()
            )));
        }
        for (i, (spec, columns)) in self.specs.iter().zip(args).enumerate() {
            let expected = usize::from(spec.input_type().is_some());
            if columns.len() != expected {
                return Err(AggregateError::input(format!(
                    "aggregate {i} ({}) takes {expected} argument columns, got {}",
                    spec.name(),
                    columns.len()
                )));
            }
            if let (Some(column), Some(input_type)) = (columns.first(), spec.input_type()) {
                if column.len() != num_rows {
                    return Err(AggregateError::input(format!(
                        "the argument of aggregate {i} ({}) has {} rows, the batch {num_rows}",
                        spec.name(),
                        column.len()
                    )));
                }
                if column.data_type() != input_type {
                    return Err(AggregateError::input(format!(
                        "the argument of aggregate {i} ({}) is {}, the aggregate was planned for {}",
                        spec.name(),
                        column.data_type(),
                        input_type
                    )));
                }
            }
        }
        if let Some(signs) = signs {
            if signs.len() != num_rows {
                return Err(AggregateError::input(format!(
                    "{} signs for {num_rows} rows",
                    signs.len()
                )));
            }
            if let Some(bad) = signs.iter().find(|&&s| s != 1 && s != -1) {
                return Err(AggregateError::input(format!(
                    "sign {bad}: signs are 1 (add) or -1 (retract)"
                )));
            }
            if signs.contains(&-1)
                && let Some(spec) = self.specs.iter().find(|s| !s.supports_retraction())
            {
                return Err(AggregateError::input(format!(
                    "{} was planned for a stream and cannot retract rows",
                    spec.name()
                )));
            }
        }
        if let Some(&max) = groups.iter().max()
            && max as usize >= states.len()
        {
            return Err(AggregateError::input(format!(
                "group index {max} for {} states",
                states.len()
            )));
        }
        for state in states {
            self.check_shape(state)?;
        }
        Ok(())
    }

    /// Checks a decoded state against the specs, and recomputes what is not serialized.
    fn check_decoded(&self, state: &mut GroupState) -> Result<(), String> {
        self.check_shape(state).map_err(|e| match e {
            AggregateError::InvalidInput(message) => message,
            other => other.to_string(),
        })?;
        for (i, (spec, agg)) in self.specs.iter().zip(&mut state.aggs).enumerate() {
            let Some(codec) = spec.codec.as_deref() else {
                continue;
            };
            // Which stored values may be NULL: COLLECT_LIST and COLLECT_SET keep NULLs, and so
            // do LATEST/EARLIEST_BY_OFFSET with ignore_nulls = false.
            let nulls = matches!(
                spec.func,
                Func::CollectList
                    | Func::CollectSet
                    | Func::LatestByOffset {
                        ignore_nulls: false
                    }
                    | Func::EarliestByOffset {
                        ignore_nulls: false
                    }
            );
            let valid = |value: &[u8]| codec.kind.is_valid(value, nulls);
            let ok = match agg {
                AggState::Extreme(value) | AggState::Offset(value) => {
                    value.as_deref().is_none_or(valid)
                }
                AggState::List(values) => values.iter().all(|v| valid(v)),
                AggState::Multiset(set) => set.recount() && set.counts.keys().all(|v| valid(v)),
                _ => true,
            };
            if !ok {
                return Err(format!(
                    "aggregate {i} ({}) holds a value that is not a {}",
                    spec.name(),
                    crate::spec::sql_type_name(&codec.data_type)
                ));
            }
        }
        Ok(())
    }
}

/// Converts a batch's argument column to arrow-row bytes, once per aggregate and batch.
fn to_rows(spec: &AggregateSpec, column: Option<&ArrayRef>) -> Result<Rows, AggregateError> {
    let (Some(codec), Some(column)) = (spec.codec.as_deref(), column) else {
        return Err(AggregateError::input(format!(
            "{} stores values but has no argument column",
            spec.name()
        )));
    };
    Ok(codec
        .converter
        .convert_columns(std::slice::from_ref(column))?)
}

fn column(spec: &AggregateSpec, column: Option<&ArrayRef>) -> Result<ArrayRef, AggregateError> {
    column
        .cloned()
        .ok_or_else(|| AggregateError::input(format!("{} has no argument column", spec.name())))
}

/// One aggregate over one batch: one dispatch on the function, then a typed loop.
fn update_one(
    spec: &AggregateSpec,
    i: usize,
    states: &mut [GroupState],
    groups: &[u32],
    arg: Option<&ArrayRef>,
    signs: Option<&[i8]>,
) -> Result<(), AggregateError> {
    let limits = &spec.limits;
    match spec.func {
        Func::CountStar => for_each_row(groups, signs, None, |_, g, add| {
            let count = agg_state!(states, g, i, Count);
            *count = count.wrapping_add(if add { 1 } else { -1 });
            Ok(())
        }),
        Func::Count => {
            let array = column(spec, arg)?;
            let nulls = array.logical_nulls();
            for_each_row(groups, signs, nulls.as_ref(), |_, g, add| {
                let count = agg_state!(states, g, i, Count);
                *count = count.wrapping_add(if add { 1 } else { -1 });
                Ok(())
            })
        }
        Func::Sum(numeric) | Func::Avg(numeric) => {
            let array = column(spec, arg)?;
            let is_sum = matches!(spec.func, Func::Sum(_));
            match numeric {
                Numeric::Int => {
                    let array = array.as_primitive::<Int32Type>();
                    let values = array.values();
                    if is_sum {
                        sum_int(states, i, groups, signs, array.nulls(), |row| {
                            i64::from(values[row])
                        })
                    } else {
                        avg_int(states, i, groups, signs, array.nulls(), |row| {
                            i64::from(values[row])
                        })
                    }
                }
                Numeric::BigInt => {
                    let array = array.as_primitive::<Int64Type>();
                    let values = array.values();
                    if is_sum {
                        sum_int(states, i, groups, signs, array.nulls(), |row| values[row])
                    } else {
                        avg_int(states, i, groups, signs, array.nulls(), |row| values[row])
                    }
                }
                Numeric::Double => {
                    let array = array.as_primitive::<Float64Type>();
                    let values = array.values();
                    for_each_row(groups, signs, array.nulls(), |row, g, add| {
                        let sum = if is_sum {
                            agg_state!(states, g, i, SumDouble)
                        } else {
                            agg_state!(states, g, i, AvgDouble)
                        };
                        sum.update(values[row], add);
                        Ok(())
                    })
                }
                Numeric::Decimal { .. } => {
                    let array = array.as_primitive::<Decimal128Type>();
                    let values = array.values();
                    if is_sum {
                        for_each_row(groups, signs, array.nulls(), |row, g, add| {
                            let sum = agg_state!(states, g, i, SumDecimal);
                            if add {
                                sum.add(values[row]);
                            } else {
                                sum.sub(values[row]);
                            }
                            Ok(())
                        })
                    } else {
                        for_each_row(groups, signs, array.nulls(), |row, g, add| {
                            let avg = agg_state!(states, g, i, AvgDecimal);
                            if add {
                                avg.sum.add(values[row]);
                                avg.count = avg.count.wrapping_add(1);
                            } else {
                                avg.sum.sub(values[row]);
                                avg.count = avg.count.wrapping_sub(1);
                            }
                            Ok(())
                        })
                    }
                }
            }
        }
        Func::Min | Func::Max => {
            let rows = to_rows(spec, arg)?;
            let nulls = arg.and_then(|a| a.nulls());
            let is_min = spec.func == Func::Min;
            if spec.retractable() {
                for_each_row(groups, signs, nulls, |row, g, add| {
                    let set = agg_state!(states, g, i, Multiset);
                    let value = rows.row(row).data();
                    if add {
                        set.insert(value);
                    } else {
                        set.remove(value);
                    }
                    Ok(())
                })
            } else {
                // Streams only add (checked in check_update).
                for_each_row(groups, signs, nulls, |row, g, _| {
                    let current = agg_state!(states, g, i, Extreme);
                    let value = rows.row(row).data();
                    match current {
                        None => *current = Some(value.to_vec()),
                        Some(current) => {
                            let better = if is_min {
                                value < current.as_slice()
                            } else {
                                value > current.as_slice()
                            };
                            if better {
                                // Reuses the allocation.
                                current.clear();
                                current.extend_from_slice(value);
                            }
                        }
                    }
                    Ok(())
                })
            }
        }
        Func::TopK { k } => {
            let rows = to_rows(spec, arg)?;
            let nulls = arg.and_then(|a| a.nulls());
            let bounded = !spec.retractable();
            for_each_row(groups, signs, nulls, |row, g, add| {
                let set = agg_state!(states, g, i, Multiset);
                let value = rows.row(row).data();
                if !add {
                    set.remove(value);
                } else if !bounded || set.total < k as u64 {
                    set.insert(value);
                } else if set.first().is_some_and(|smallest| value > smallest) {
                    // A stream keeps only the k largest values seen.
                    set.insert(value);
                    set.pop_first_one();
                }
                Ok(())
            })
        }
        Func::CountDistinct | Func::CollectSet | Func::Histogram => {
            let rows = to_rows(spec, arg)?;
            // COLLECT_SET keeps NULL as a value, as ksqlDB does; the others ignore NULLs.
            let nulls = match spec.func {
                Func::CollectSet => None,
                _ => arg.and_then(|a| a.nulls()),
            };
            let max = if spec.func == Func::CountDistinct {
                limits.count_distinct_max_values
            } else {
                limits.collection_max_entries
            };
            for_each_row(groups, signs, nulls, |row, g, add| {
                let set = agg_state!(states, g, i, Multiset);
                let value = rows.row(row).data();
                if !add {
                    set.remove(value);
                } else if set.distinct() < max || set.contains(value) {
                    set.insert(value);
                }
                Ok(())
            })
        }
        Func::CollectList => {
            let rows = to_rows(spec, arg)?;
            let max = limits.collection_max_entries;
            // NULLs are collected, as ksqlDB does.
            for_each_row(groups, signs, None, |row, g, add| {
                let list = agg_state!(states, g, i, List);
                let value = rows.row(row).data();
                if add {
                    if list.len() < max {
                        list.push(value.to_vec());
                    }
                } else if let Some(at) = list.iter().rposition(|v| v.as_slice() == value) {
                    // Like ksqlDB, the last occurrence goes; a value dropped at the limit is
                    // not found (or takes out an equal value kept earlier).
                    list.remove(at);
                }
                Ok(())
            })
        }
        Func::LatestByOffset { ignore_nulls } | Func::EarliestByOffset { ignore_nulls } => {
            let rows = to_rows(spec, arg)?;
            let nulls = if ignore_nulls {
                arg.and_then(|a| a.nulls())
            } else {
                None
            };
            let latest = matches!(spec.func, Func::LatestByOffset { .. });
            // Only adds (retraction is refused when planning and checked in check_update).
            for_each_row(groups, signs, nulls, |row, g, _| {
                let kept = agg_state!(states, g, i, Offset);
                let value = rows.row(row).data();
                match kept {
                    None => *kept = Some(value.to_vec()),
                    Some(kept) if latest => {
                        kept.clear();
                        kept.extend_from_slice(value);
                    }
                    Some(_) => {}
                }
                Ok(())
            })
        }
    }
}

#[inline(always)]
fn sum_int(
    states: &mut [GroupState],
    i: usize,
    groups: &[u32],
    signs: Option<&[i8]>,
    nulls: Option<&NullBuffer>,
    value: impl Fn(usize) -> i64,
) -> Result<(), AggregateError> {
    for_each_row(groups, signs, nulls, |row, g, add| {
        let sum = agg_state!(states, g, i, SumInt);
        // Wrapping, like ksqlDB's Java arithmetic; and exactly undone by a retraction.
        *sum = if add {
            sum.wrapping_add(value(row))
        } else {
            sum.wrapping_sub(value(row))
        };
        Ok(())
    })
}

#[inline(always)]
fn avg_int(
    states: &mut [GroupState],
    i: usize,
    groups: &[u32],
    signs: Option<&[i8]>,
    nulls: Option<&NullBuffer>,
    value: impl Fn(usize) -> i64,
) -> Result<(), AggregateError> {
    for_each_row(groups, signs, nulls, |row, g, add| {
        let avg = agg_state!(states, g, i, AvgInt);
        let v = i128::from(value(row));
        if add {
            avg.sum = avg.sum.wrapping_add(v);
            avg.count = avg.count.wrapping_add(1);
        } else {
            avg.sum = avg.sum.wrapping_sub(v);
            avg.count = avg.count.wrapping_sub(1);
        }
        Ok(())
    })
}

/// Folds the state `from` of aggregate `i` into `into` (see [`Aggregator::merge`]).
fn merge_one(
    spec: &AggregateSpec,
    i: usize,
    into: &mut AggState,
    from: &AggState,
) -> Result<(), AggregateError> {
    let limits = &spec.limits;
    match (into, from) {
        (AggState::Count(into), AggState::Count(from))
        | (AggState::SumInt(into), AggState::SumInt(from)) => *into = into.wrapping_add(*from),
        (AggState::SumDecimal(into), AggState::SumDecimal(from)) => into.add_sum(from),
        (AggState::SumDouble(into), AggState::SumDouble(from))
        | (AggState::AvgDouble(into), AggState::AvgDouble(from)) => into.merge(from),
        (AggState::AvgInt(into), AggState::AvgInt(from)) => {
            into.sum = into.sum.wrapping_add(from.sum);
            into.count = into.count.wrapping_add(from.count);
        }
        (AggState::AvgDecimal(into), AggState::AvgDecimal(from)) => {
            into.sum.add_sum(&from.sum);
            into.count = into.count.wrapping_add(from.count);
        }
        (AggState::Extreme(into), AggState::Extreme(from)) => {
            let is_min = match spec.func {
                Func::Min => true,
                Func::Max => false,
                _ => return Err(mismatch(i)),
            };
            if let Some(value) = from {
                let better = into.as_ref().is_none_or(|current| {
                    if is_min {
                        value < current
                    } else {
                        value > current
                    }
                });
                if better {
                    value.clone_into(into.get_or_insert_default());
                }
            }
        }
        (AggState::Multiset(into), AggState::Multiset(from)) => match spec.func {
            // A table's MIN and MAX, and a table's TOPK, keep every value.
            Func::Min | Func::Max => merge_counts(into, from),
            Func::TopK { k } => {
                merge_counts(into, from);
                if !spec.retractable() {
                    // A stream keeps only the k largest values seen.
                    into.keep_largest(k as u64);
                }
            }
            Func::CountDistinct | Func::CollectSet | Func::Histogram => {
                let max = if spec.func == Func::CountDistinct {
                    limits.count_distinct_max_values
                } else {
                    limits.collection_max_entries
                };
                for (value, &count) in &from.counts {
                    if into.distinct() < max || into.contains(value) {
                        into.insert_count(value, count);
                    }
                }
            }
            _ => return Err(mismatch(i)),
        },
        (AggState::List(into), AggState::List(from)) => {
            let room = limits.collection_max_entries.saturating_sub(into.len());
            into.extend(from.iter().take(room).cloned());
        }
        (AggState::Offset(into), AggState::Offset(from)) => match spec.func {
            // `from` is the later session.
            Func::LatestByOffset { .. } => {
                if let Some(value) = from {
                    value.clone_into(into.get_or_insert_default());
                }
            }
            Func::EarliestByOffset { .. } => {
                if into.is_none() {
                    into.clone_from(from);
                }
            }
            _ => return Err(mismatch(i)),
        },
        _ => return Err(mismatch(i)),
    }
    Ok(())
}

/// Adds every value of `from` with its count to `into`.
fn merge_counts(into: &mut Multiset, from: &Multiset) {
    for (value, &count) in &from.counts {
        into.insert_count(value, count);
    }
}

/// The states of aggregate `i`, as variant `$variant`.
macro_rules! agg_states {
    ($states:ident, $i:expr, $variant:ident) => {
        $states
            .iter()
            .map(|state| match &state.aggs[$i] {
                AggState::$variant(s) => Ok(s),
                _ => Err(mismatch($i)),
            })
            .collect::<Result<Vec<_>, AggregateError>>()?
    };
}

/// The codec of a value-storing aggregate.
fn codec(spec: &AggregateSpec) -> Result<&RowCodec, AggregateError> {
    spec.codec
        .as_deref()
        .ok_or_else(|| AggregateError::input(format!("{} has no value codec", spec.name())))
}

/// Decodes stored values (checked when decoded or written by this crate) into one array.
fn decode_values<'a>(
    codec: &RowCodec,
    values: impl Iterator<Item = &'a [u8]>,
) -> Result<ArrayRef, AggregateError> {
    let parser = codec.converter.parser();
    let rows: Vec<Row<'_>> = values.map(|value| parser.parse(value)).collect();
    if rows.is_empty() {
        return Ok(new_empty_array(&codec.data_type));
    }
    codec
        .converter
        .convert_rows(rows)?
        .pop()
        .ok_or_else(|| AggregateError::input("row conversion returned no column"))
}

/// List offsets from per-group lengths.
fn offsets(lengths: impl Iterator<Item = usize>) -> Result<OffsetBuffer<i32>, AggregateError> {
    let mut offsets = vec![0i32];
    let mut end: usize = 0;
    for len in lengths {
        end += len;
        offsets.push(i32::try_from(end).map_err(|_| {
            AggregateError::input("more than 2^31 collected values in one evaluation")
        })?);
    }
    Ok(OffsetBuffer::new(offsets.into()))
}

/// An `ARRAY` per group from the groups' stored values.
fn list_of<'a, I>(
    codec: &RowCodec,
    output_type: &DataType,
    per_group: Vec<I>,
) -> Result<ArrayRef, AggregateError>
where
    I: Iterator<Item = &'a [u8]> + Clone,
{
    let DataType::List(item) = output_type else {
        return Err(AggregateError::input(
            "a collecting aggregate without ARRAY type",
        ));
    };
    let offsets = offsets(per_group.iter().map(|values| values.clone().count()))?;
    let values = decode_values(codec, per_group.into_iter().flatten())?;
    Ok(Arc::new(ListArray::try_new(
        Arc::clone(item),
        offsets,
        values,
        None,
    )?))
}

/// 10^precision: the bound of a DECIMAL(precision, _) in units of its scale.
fn decimal_bound(precision: u8) -> u128 {
    10u128
        .checked_pow(u32::from(precision))
        .unwrap_or(u128::MAX)
}

fn evaluate_one(
    spec: &AggregateSpec,
    i: usize,
    states: &[&GroupState],
) -> Result<ArrayRef, AggregateError> {
    Ok(match spec.func {
        Func::CountStar | Func::Count => {
            let counts = agg_states!(states, i, Count);
            Arc::new(Int64Array::from_iter_values(counts.into_iter().copied()))
        }
        Func::Sum(numeric) => match numeric {
            Numeric::Int => {
                let sums = agg_states!(states, i, SumInt);
                // The low 32 bits: the INT sum wrapped as Java's int arithmetic does.
                Arc::new(Int32Array::from_iter_values(
                    sums.into_iter().map(|&sum| sum as i32),
                ))
            }
            Numeric::BigInt => {
                let sums = agg_states!(states, i, SumInt);
                Arc::new(Int64Array::from_iter_values(sums.into_iter().copied()))
            }
            Numeric::Double => {
                let sums = agg_states!(states, i, SumDouble);
                Arc::new(Float64Array::from_iter_values(
                    sums.into_iter().map(|sum| sum.sum()),
                ))
            }
            Numeric::Decimal { precision, scale } => {
                let bound = decimal_bound(precision);
                let sums = agg_states!(states, i, SumDecimal);
                let values = sums
                    .into_iter()
                    .map(|sum| match sum.exact() {
                        Some(value) if value.unsigned_abs() < bound => Ok(value),
                        _ => Err(AggregateError::DecimalOverflow { precision, scale }),
                    })
                    .collect::<Result<Vec<i128>, _>>()?;
                Arc::new(
                    Decimal128Array::from_iter_values(values)
                        .with_precision_and_scale(precision, scale)?,
                )
            }
        },
        // AVG of no value is 0.0, as in ksqlDB.
        Func::Avg(numeric) => {
            let averages: Vec<f64> = match numeric {
                Numeric::Int | Numeric::BigInt => agg_states!(states, i, AvgInt)
                    .into_iter()
                    .map(|avg| match avg.count {
                        0 => 0.0,
                        count => avg.sum as f64 / count as f64,
                    })
                    .collect(),
                Numeric::Double => agg_states!(states, i, AvgDouble)
                    .into_iter()
                    .map(|sum| match sum.count() {
                        0 => 0.0,
                        count => sum.sum() / count as f64,
                    })
                    .collect(),
                Numeric::Decimal { scale, .. } => {
                    let unit = 10f64.powi(i32::from(scale));
                    agg_states!(states, i, AvgDecimal)
                        .into_iter()
                        .map(|avg| match avg.count {
                            0 => 0.0,
                            count => avg.sum.to_f64() / unit / count as f64,
                        })
                        .collect()
                }
            };
            Arc::new(Float64Array::from(averages))
        }
        Func::Min | Func::Max => {
            let codec = codec(spec)?;
            let values: Vec<Option<&[u8]>> = if spec.retractable() {
                agg_states!(states, i, Multiset)
                    .into_iter()
                    .map(|set| {
                        if spec.func == Func::Min {
                            set.first()
                        } else {
                            set.last()
                        }
                    })
                    .collect()
            } else {
                agg_states!(states, i, Extreme)
                    .into_iter()
                    .map(|value| value.as_deref())
                    .collect()
            };
            decode_values(
                codec,
                values.into_iter().map(|v| v.unwrap_or(&spec.null_row[..])),
            )?
        }
        Func::LatestByOffset { .. } | Func::EarliestByOffset { .. } => {
            let codec = codec(spec)?;
            let values = agg_states!(states, i, Offset);
            decode_values(
                codec,
                values
                    .into_iter()
                    .map(|v| v.as_deref().unwrap_or(&spec.null_row[..])),
            )?
        }
        Func::CountDistinct => {
            let sets = agg_states!(states, i, Multiset);
            Arc::new(Int64Array::from_iter_values(
                sets.into_iter().map(|set| set.distinct() as i64),
            ))
        }
        Func::CollectList => {
            let lists = agg_states!(states, i, List);
            let per_group = lists
                .into_iter()
                .map(|list| list.iter().map(Vec::as_slice))
                .collect();
            list_of(codec(spec)?, spec.output_type(), per_group)?
        }
        Func::CollectSet => {
            let sets = agg_states!(states, i, Multiset);
            let per_group = sets
                .into_iter()
                .map(|set: &Multiset| set.counts.keys().map(Vec::as_slice))
                .collect();
            list_of(codec(spec)?, spec.output_type(), per_group)?
        }
        Func::TopK { k } => {
            let sets = agg_states!(states, i, Multiset);
            let per_group = sets.into_iter().map(|set| set.largest(k)).collect();
            list_of(codec(spec)?, spec.output_type(), per_group)?
        }
        Func::Histogram => {
            let DataType::Map(entries_field, _) = spec.output_type() else {
                return Err(AggregateError::input("HISTOGRAM without MAP type"));
            };
            let sets = agg_states!(states, i, Multiset);
            let offsets = offsets(sets.iter().map(|set| set.distinct()))?;
            let keys = decode_values(
                codec(spec)?,
                sets.iter()
                    .flat_map(|set| set.counts.keys().map(Vec::as_slice)),
            )?;
            let counts = Int64Array::from_iter_values(
                sets.iter()
                    .flat_map(|set| set.counts.values().map(|&c| c as i64)),
            );
            let entries =
                StructArray::try_new(histogram_entry_fields(), vec![keys, Arc::new(counts)], None)?;
            Arc::new(MapArray::try_new(
                Arc::clone(entries_field),
                offsets,
                entries,
                None,
                false,
            )?)
        }
    })
}
