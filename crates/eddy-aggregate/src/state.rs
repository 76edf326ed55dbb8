//! Per-group state and its serialized form.
//!
//! The serialized form is a format version byte ([`FORMAT_VERSION`]) followed by the postcard
//! encoding of [`GroupState`]. Postcard writes enum variants by index and struct fields in order,
//! so the variants of [`AggState`] and the fields of every state struct must never be reordered
//! or removed: new kinds of state are appended, and any other change bumps the version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The first byte of every encoded state.
pub(crate) const FORMAT_VERSION: u8 = 1;

/// The state of one group: its row count and one state per aggregate of the query, in order.
///
/// Made by [`Aggregator::new_state`](crate::Aggregator::new_state) or
/// [`Aggregator::decode_state`](crate::Aggregator::decode_state), and only meaningful to the
/// aggregator that made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupState {
    /// Rows added minus rows retracted. When a table's group reaches 0 it has no row left and
    /// the caller deletes it (its aggregates are then back to their initial values, up to the
    /// documented limits).
    pub rows: i64,
    pub(crate) aggs: Vec<AggState>,
}

/// The state of one aggregate in one group. Values that are compared or collected are stored as
/// arrow-row bytes of the input type (see [`crate::row_bytes`]), whose byte order is the values'
/// order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum AggState {
    /// COUNT(*), COUNT(x).
    Count(i64),
    /// SUM of INT or BIGINT, wrapping (the INT result is the low 32 bits).
    SumInt(i64),
    /// SUM of DECIMAL, in units of the scale.
    SumDecimal(WideSum),
    /// SUM of DOUBLE.
    SumDouble(DoubleSum),
    /// AVG of INT or BIGINT.
    AvgInt(IntAvg),
    /// AVG of DECIMAL.
    AvgDecimal(DecimalAvg),
    /// AVG of DOUBLE.
    AvgDouble(DoubleSum),
    /// MIN or MAX of a stream: the current extreme.
    Extreme(Option<Vec<u8>>),
    /// MIN or MAX of a table, TOPK, COUNT_DISTINCT, COLLECT_SET, HISTOGRAM: values with their
    /// multiplicities.
    Multiset(Multiset),
    /// COLLECT_LIST: values in insertion order (NULL included).
    List(Vec<Vec<u8>>),
    /// LATEST_BY_OFFSET, EARLIEST_BY_OFFSET: the value kept, if any row was kept yet.
    Offset(Option<Vec<u8>>),
}

/// A sum of `i128` that cannot overflow: `low` wraps and `high` counts the wraps, so that the
/// value is `high * 2^128 + low` and every addition can be subtracted back exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WideSum {
    pub(crate) low: i128,
    pub(crate) high: i64,
}

impl WideSum {
    #[inline]
    pub(crate) fn add(&mut self, value: i128) {
        let (low, wrapped) = self.low.overflowing_add(value);
        self.low = low;
        if wrapped {
            self.high = self.high.wrapping_add(if value > 0 { 1 } else { -1 });
        }
    }

    #[inline]
    pub(crate) fn sub(&mut self, value: i128) {
        let (low, wrapped) = self.low.overflowing_sub(value);
        self.low = low;
        if wrapped {
            self.high = self.high.wrapping_add(if value > 0 { -1 } else { 1 });
        }
    }

    /// Adds another sum exactly: the value becomes the sum of both values (`high` wraps like
    /// it does in [`add`](Self::add)).
    #[inline]
    pub(crate) fn add_sum(&mut self, other: &WideSum) {
        self.add(other.low);
        self.high = self.high.wrapping_add(other.high);
    }

    /// The value, if it fits in an `i128`.
    pub(crate) fn exact(&self) -> Option<i128> {
        (self.high == 0).then_some(self.low)
    }

    pub(crate) fn to_f64(self) -> f64 {
        self.low as f64 + self.high as f64 * 2f64.powi(128)
    }
}

/// A sum of doubles that can take values back out: finite values are summed (reset to exactly
/// 0 when none is left, so rounding errors do not outlive the values), NaN and infinities are
/// counted, so that retracting an infinity restores the finite sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct DoubleSum {
    pub(crate) finite: f64,
    pub(crate) finite_count: i64,
    pub(crate) nan: i64,
    pub(crate) pos_inf: i64,
    pub(crate) neg_inf: i64,
}

impl DoubleSum {
    #[inline]
    pub(crate) fn update(&mut self, value: f64, add: bool) {
        let delta = if add { 1 } else { -1 };
        if value.is_finite() {
            self.finite_count = self.finite_count.wrapping_add(delta);
            if self.finite_count == 0 {
                self.finite = 0.0;
            } else if add {
                self.finite += value;
            } else {
                self.finite -= value;
            }
        } else if value.is_nan() {
            self.nan = self.nan.wrapping_add(delta);
        } else if value > 0.0 {
            self.pos_inf = self.pos_inf.wrapping_add(delta);
        } else {
            self.neg_inf = self.neg_inf.wrapping_add(delta);
        }
    }

    /// Adds the values of another sum: the counts add up, and the finite sums too, reset to
    /// exactly 0 when no finite value is left (as [`update`](Self::update) does). The finite
    /// part has the rounding of adding the two partial sums rather than each value in turn.
    #[inline]
    pub(crate) fn merge(&mut self, other: &DoubleSum) {
        self.finite_count = self.finite_count.wrapping_add(other.finite_count);
        self.finite = if self.finite_count == 0 {
            0.0
        } else {
            self.finite + other.finite
        };
        self.nan = self.nan.wrapping_add(other.nan);
        self.pos_inf = self.pos_inf.wrapping_add(other.pos_inf);
        self.neg_inf = self.neg_inf.wrapping_add(other.neg_inf);
    }

    /// The sum, as Java would have computed it from the values present.
    pub(crate) fn sum(&self) -> f64 {
        if self.nan != 0 || (self.pos_inf != 0 && self.neg_inf != 0) {
            f64::NAN
        } else if self.pos_inf != 0 {
            f64::INFINITY
        } else if self.neg_inf != 0 {
            f64::NEG_INFINITY
        } else {
            self.finite
        }
    }

    /// How many values are present.
    pub(crate) fn count(&self) -> i64 {
        self.finite_count
            .wrapping_add(self.nan)
            .wrapping_add(self.pos_inf)
            .wrapping_add(self.neg_inf)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IntAvg {
    /// Cannot overflow: 2^64 values of at most 2^63 in magnitude fit.
    pub(crate) sum: i128,
    pub(crate) count: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DecimalAvg {
    pub(crate) sum: WideSum,
    pub(crate) count: i64,
}

/// Values (arrow-row bytes) with their multiplicities, ordered by value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Multiset {
    pub(crate) counts: BTreeMap<Vec<u8>, u64>,
    /// The sum of the counts; not serialized, recomputed by [`Multiset::recount`].
    #[serde(skip)]
    pub(crate) total: u64,
}

impl Multiset {
    /// Adds one occurrence; allocates only for a value not present yet.
    #[inline]
    pub(crate) fn insert(&mut self, value: &[u8]) {
        match self.counts.get_mut(value) {
            Some(count) => *count = count.saturating_add(1),
            None => {
                self.counts.insert(value.to_vec(), 1);
            }
        }
        self.total = self.total.saturating_add(1);
    }

    /// Adds `count` occurrences (a count of 0 adds nothing).
    pub(crate) fn insert_count(&mut self, value: &[u8], count: u64) {
        if count == 0 {
            return;
        }
        match self.counts.get_mut(value) {
            Some(current) => *current = current.saturating_add(count),
            None => {
                self.counts.insert(value.to_vec(), count);
            }
        }
        self.total = self.total.saturating_add(count);
    }

    /// Removes one occurrence; false if the value is not present.
    #[inline]
    pub(crate) fn remove(&mut self, value: &[u8]) -> bool {
        let Some(count) = self.counts.get_mut(value) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            self.counts.remove(value);
        }
        self.total = self.total.saturating_sub(1);
        true
    }

    #[inline]
    pub(crate) fn contains(&self, value: &[u8]) -> bool {
        self.counts.contains_key(value)
    }

    /// The number of distinct values.
    #[inline]
    pub(crate) fn distinct(&self) -> usize {
        self.counts.len()
    }

    pub(crate) fn first(&self) -> Option<&[u8]> {
        self.counts.first_key_value().map(|(k, _)| k.as_slice())
    }

    pub(crate) fn last(&self) -> Option<&[u8]> {
        self.counts.last_key_value().map(|(k, _)| k.as_slice())
    }

    /// Removes one occurrence of the smallest value.
    pub(crate) fn pop_first_one(&mut self) {
        if let Some(mut entry) = self.counts.first_entry() {
            if *entry.get() > 1 {
                *entry.get_mut() -= 1;
            } else {
                entry.remove();
            }
            self.total = self.total.saturating_sub(1);
        }
    }

    /// Removes occurrences of the smallest values until at most `k` are left, so that the set
    /// holds the `k` largest values (with their multiplicities). Takes whole counts at a time,
    /// not one occurrence per step.
    pub(crate) fn keep_largest(&mut self, k: u64) {
        while self.total > k {
            let Some(mut entry) = self.counts.first_entry() else {
                // Only a `total` out of step with the counts gets here.
                self.total = 0;
                return;
            };
            let excess = self.total - k;
            if *entry.get() > excess {
                *entry.get_mut() -= excess;
                self.total = k;
            } else {
                self.total = self.total.saturating_sub(entry.remove());
            }
        }
    }

    /// The largest values first, each repeated by its count, at most `k` in all.
    pub(crate) fn largest(&self, k: usize) -> impl Iterator<Item = &[u8]> + Clone {
        self.counts
            .iter()
            .rev()
            .flat_map(|(value, &count)| {
                std::iter::repeat_n(
                    value.as_slice(),
                    usize::try_from(count).unwrap_or(usize::MAX),
                )
            })
            .take(k)
    }

    /// Recomputes `total` after decoding; false if a count is 0 or the sum overflows.
    pub(crate) fn recount(&mut self) -> bool {
        let mut total: u64 = 0;
        for &count in self.counts.values() {
            if count == 0 {
                return false;
            }
            match total.checked_add(count) {
                Some(sum) => total = sum,
                None => return false,
            }
        }
        self.total = total;
        true
    }
}

/// Appends the serialized form of `state` to `out`.
pub(crate) fn encode(state: &GroupState, out: &mut Vec<u8>) {
    out.push(FORMAT_VERSION);
    let buffer = std::mem::take(out);
    // Postcard only fails for fixed-size buffers or sequences of unknown length; these types
    // have neither, so writing them to a Vec cannot fail.
    *out = postcard::to_extend(state, buffer).expect("postcard writes a GroupState to a Vec");
}

/// Reads the serialized form, checking the version and that every byte is used. The caller
/// checks the contents against its aggregates.
pub(crate) fn decode(bytes: &[u8]) -> Result<GroupState, String> {
    let Some((&version, body)) = bytes.split_first() else {
        return Err("empty input".into());
    };
    if version != FORMAT_VERSION {
        return Err(format!(
            "unknown format version {version} (this build reads version {FORMAT_VERSION})"
        ));
    }
    let (state, rest) =
        postcard::take_from_bytes::<GroupState>(body).map_err(|e| format!("malformed: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes", rest.len()));
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_sum_is_exact_through_overflow() {
        let mut sum = WideSum::default();
        let values = [i128::MAX, i128::MAX, 5, i128::MIN, -7, i128::MAX];
        for v in values {
            sum.add(v);
        }
        assert_eq!(sum.exact(), None);
        for v in values.iter().rev() {
            sum.sub(*v);
        }
        assert_eq!(sum, WideSum::default());
        sum.add(i128::MAX);
        sum.add(1);
        assert_eq!(sum.high, 1);
        assert_eq!(sum.to_f64(), 2f64.powi(127));
        sum.sub(2);
        assert_eq!(sum.exact(), Some(i128::MAX - 1));
    }

    #[test]
    fn double_sum_retracts_infinities_and_nan() {
        let mut sum = DoubleSum::default();
        sum.update(1.5, true);
        sum.update(f64::INFINITY, true);
        assert_eq!(sum.sum(), f64::INFINITY);
        sum.update(f64::NEG_INFINITY, true);
        assert!(sum.sum().is_nan());
        sum.update(f64::NAN, true);
        sum.update(f64::INFINITY, false);
        sum.update(f64::NEG_INFINITY, false);
        assert!(sum.sum().is_nan());
        sum.update(f64::NAN, false);
        assert_eq!(sum.sum(), 1.5);
        assert_eq!(sum.count(), 1);
        sum.update(0.1, true);
        sum.update(0.2, true);
        sum.update(1.5, false);
        sum.update(0.1, false);
        sum.update(0.2, false);
        // Rounding errors are gone with the last value.
        assert_eq!(sum.sum().to_bits(), 0f64.to_bits());
    }

    #[test]
    fn multiset_counts_and_orders() {
        let mut set = Multiset::default();
        for v in [b"b", b"a", b"c", b"b"] {
            set.insert(v);
        }
        assert_eq!(set.total, 4);
        assert_eq!(set.distinct(), 3);
        assert_eq!(set.first(), Some(&b"a"[..]));
        assert_eq!(set.last(), Some(&b"c"[..]));
        let top: Vec<&[u8]> = set.largest(3).collect();
        assert_eq!(top, vec![&b"c"[..], b"b", b"b"]);
        assert!(set.remove(b"b"));
        assert!(set.contains(b"b"));
        assert!(set.remove(b"b"));
        assert!(!set.contains(b"b"));
        assert!(!set.remove(b"b"));
        set.pop_first_one();
        assert_eq!(set.first(), Some(&b"c"[..]));
        assert_eq!(set.total, 1);
    }
}
