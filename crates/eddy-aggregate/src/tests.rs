//! Behaviour tests of the aggregates through the public API (plus a look inside states where a
//! bound must be checked).

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int32Array,
    Int64Array, StringArray,
};
use arrow::datatypes::{DataType, Field, Fields, Float64Type, Int32Type, Int64Type};

use crate::state::AggState;
use crate::{AggregateError, AggregateLimits, AggregateSpec, Aggregator, GroupState, LiteralArg};

// ---------------------------------------------------------------------------------------------
// Helpers

fn spec(
    name: &str,
    ty: Option<DataType>,
    literals: &[LiteralArg],
    retractable: bool,
) -> AggregateSpec {
    spec_with(name, ty, literals, retractable, &AggregateLimits::default())
}

fn spec_with(
    name: &str,
    ty: Option<DataType>,
    literals: &[LiteralArg],
    retractable: bool,
    limits: &AggregateLimits,
) -> AggregateSpec {
    let types: Vec<DataType> = ty.into_iter().collect();
    AggregateSpec::new(name, &types, literals, retractable, limits)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// An aggregator and its group states; every aggregate with an argument reads the same column.
struct Run {
    agg: Aggregator,
    states: Vec<GroupState>,
}

impl Run {
    fn new(specs: Vec<AggregateSpec>, groups: usize) -> Run {
        let agg = Aggregator::new(specs).unwrap();
        let states = (0..groups).map(|_| agg.new_state()).collect();
        Run { agg, states }
    }

    fn one(spec: AggregateSpec, groups: usize) -> Run {
        Run::new(vec![spec], groups)
    }

    fn args(&self, column: &ArrayRef) -> Vec<Vec<ArrayRef>> {
        self.agg
            .specs()
            .iter()
            .map(|spec| match spec.input_type() {
                Some(_) => vec![Arc::clone(column)],
                None => vec![],
            })
            .collect()
    }

    fn try_apply(
        &mut self,
        groups: &[u32],
        column: &ArrayRef,
        signs: Option<&[i8]>,
    ) -> Result<(), AggregateError> {
        let args = self.args(column);
        self.agg.update(&mut self.states, groups, &args, signs)
    }

    fn add(&mut self, groups: &[u32], column: ArrayRef) {
        self.try_apply(groups, &column, None).unwrap();
    }

    fn retract(&mut self, groups: &[u32], column: ArrayRef) {
        let signs = vec![-1i8; groups.len()];
        self.try_apply(groups, &column, Some(&signs)).unwrap();
    }

    fn try_eval(&self) -> Result<Vec<ArrayRef>, AggregateError> {
        let states: Vec<&GroupState> = self.states.iter().collect();
        self.agg.evaluate(&states)
    }

    /// The values of aggregate `i` for every group.
    fn eval(&self, i: usize) -> ArrayRef {
        let out = self.try_eval().unwrap();
        assert_eq!(out.len(), self.agg.specs().len());
        for (array, spec) in out.iter().zip(self.agg.specs()) {
            assert_eq!(array.data_type(), spec.output_type());
            assert_eq!(array.len(), self.states.len());
        }
        Arc::clone(&out[i])
    }

    /// Replaces every state by its decoded encoding, checking that nothing changed.
    fn roundtrip(&mut self) {
        for state in &mut self.states {
            let mut bytes = Vec::new();
            self.agg.encode_state(state, &mut bytes);
            assert_eq!(bytes[0], 1, "format version");
            let decoded = self.agg.decode_state(&bytes).unwrap();
            assert_eq!(&decoded, state);
            *state = decoded;
        }
    }

    fn rows(&self) -> Vec<i64> {
        self.states.iter().map(|s| s.rows).collect()
    }
}

fn int64s(values: &[Option<i64>]) -> ArrayRef {
    Arc::new(Int64Array::from(values.to_vec()))
}

fn int32s(values: &[Option<i32>]) -> ArrayRef {
    Arc::new(Int32Array::from(values.to_vec()))
}

fn doubles(values: &[Option<f64>]) -> ArrayRef {
    Arc::new(Float64Array::from(values.to_vec()))
}

fn strings(values: &[Option<&str>]) -> ArrayRef {
    Arc::new(StringArray::from(values.to_vec()))
}

fn decimals(values: &[Option<i128>], precision: u8, scale: i8) -> ArrayRef {
    Arc::new(
        Decimal128Array::from(values.to_vec())
            .with_precision_and_scale(precision, scale)
            .unwrap(),
    )
}

fn as_i64s(array: &ArrayRef) -> Vec<Option<i64>> {
    match array.data_type() {
        DataType::Int64 => array.as_primitive::<Int64Type>().iter().collect(),
        DataType::Int32 => array
            .as_primitive::<Int32Type>()
            .iter()
            .map(|v| v.map(i64::from))
            .collect(),
        other => panic!("not an integer array: {other}"),
    }
}

fn as_f64s(array: &ArrayRef) -> Vec<Option<f64>> {
    array.as_primitive::<Float64Type>().iter().collect()
}

fn as_strings(array: &ArrayRef) -> Vec<Option<String>> {
    array
        .as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_string))
        .collect()
}

fn as_lists<T>(array: &ArrayRef, items: impl Fn(&ArrayRef) -> Vec<T>) -> Vec<Vec<T>> {
    let lists = array.as_list::<i32>();
    assert_eq!(lists.null_count(), 0, "collections are never NULL");
    (0..lists.len()).map(|i| items(&lists.value(i))).collect()
}

fn as_maps(array: &ArrayRef) -> Vec<Vec<(String, i64)>> {
    let maps = array.as_map();
    (0..maps.len())
        .map(|i| {
            let entries = maps.value(i);
            let keys = entries.column(0).as_string::<i32>();
            let counts = entries.column(1).as_primitive::<Int64Type>();
            (0..entries.len())
                .map(|j| (keys.value(j).to_string(), counts.value(j)))
                .collect()
        })
        .collect()
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

// ---------------------------------------------------------------------------------------------
// COUNT

#[test]
fn count_star_counts_rows_and_count_skips_nulls() {
    let mut run = Run::new(
        vec![
            spec("count_star", None, &[], true),
            spec("count", Some(DataType::Int64), &[], true),
            // COUNT with no argument is COUNT(*).
            spec("count", None, &[], true),
        ],
        2,
    );
    run.add(&[0, 1, 0, 0], int64s(&[Some(1), None, None, Some(3)]));
    assert_eq!(as_i64s(&run.eval(0)), [Some(3), Some(1)]);
    assert_eq!(as_i64s(&run.eval(1)), [Some(2), Some(0)]);
    assert_eq!(as_i64s(&run.eval(2)), [Some(3), Some(1)]);
    run.retract(&[0], int64s(&[None]));
    assert_eq!(as_i64s(&run.eval(0)), [Some(2), Some(1)]);
    assert_eq!(as_i64s(&run.eval(1)), [Some(2), Some(0)]);
    run.retract(&[0], int64s(&[Some(1)]));
    assert_eq!(as_i64s(&run.eval(1)), [Some(1), Some(0)]);
    run.roundtrip();
    assert_eq!(as_i64s(&run.eval(0)), [Some(1), Some(1)]);
}

#[test]
fn count_accepts_any_type() {
    let list = DataType::List(Arc::new(Field::new("item", DataType::Int32, true)));
    let spec = spec("count", Some(list), &[], false);
    assert_eq!(spec.output_type(), &DataType::Int64);
    let mut run = Run::one(spec, 1);
    let lists: ArrayRef = Arc::new(arrow::array::ListArray::from_iter_primitive::<
        Int32Type,
        _,
        _,
    >(vec![Some(vec![Some(1)]), None, Some(vec![])]));
    run.add(&[0, 0, 0], lists);
    assert_eq!(as_i64s(&run.eval(0)), [Some(2)]);
}

// ---------------------------------------------------------------------------------------------
// SUM

#[test]
fn sum_int_keeps_the_input_type_ignores_nulls_and_retracts() {
    let mut run = Run::one(spec("sum", Some(DataType::Int32), &[], true), 3);
    run.add(&[0, 1, 0], int32s(&[Some(5), None, Some(7)]));
    let out = run.eval(0);
    assert_eq!(out.data_type(), &DataType::Int32);
    // Group 1 saw only a NULL, group 2 nothing: ksqlDB's SUM starts at 0.
    assert_eq!(as_i64s(&out), [Some(12), Some(0), Some(0)]);
    run.retract(&[0], int32s(&[Some(7)]));
    assert_eq!(as_i64s(&run.eval(0)), [Some(5), Some(0), Some(0)]);
    run.roundtrip();
    run.retract(&[0], int32s(&[Some(5)]));
    assert_eq!(as_i64s(&run.eval(0)), [Some(0), Some(0), Some(0)]);
}

#[test]
fn sum_wraps_like_java_and_retraction_undoes_it() {
    let mut run = Run::one(spec("sum", Some(DataType::Int32), &[], true), 1);
    run.add(&[0, 0], int32s(&[Some(i32::MAX), Some(1)]));
    assert_eq!(as_i64s(&run.eval(0)), [Some(i64::from(i32::MIN))]);
    run.retract(&[0], int32s(&[Some(1)]));
    assert_eq!(as_i64s(&run.eval(0)), [Some(i64::from(i32::MAX))]);

    let mut run = Run::one(spec("sum", Some(DataType::Int64), &[], true), 1);
    run.add(&[0, 0], int64s(&[Some(i64::MAX), Some(2)]));
    assert_eq!(as_i64s(&run.eval(0)), [Some(i64::MIN + 1)]);
    run.retract(&[0], int64s(&[Some(2)]));
    assert_eq!(as_i64s(&run.eval(0)), [Some(i64::MAX)]);
}

#[test]
fn sum_double() {
    let mut run = Run::one(spec("sum", Some(DataType::Float64), &[], true), 2);
    run.add(&[0, 0, 1], doubles(&[Some(1.5), Some(2.25), None]));
    assert_eq!(as_f64s(&run.eval(0)), [Some(3.75), Some(0.0)]);
    run.retract(&[0], doubles(&[Some(1.5)]));
    assert_eq!(as_f64s(&run.eval(0)), [Some(2.25), Some(0.0)]);
    run.add(&[0], doubles(&[Some(f64::INFINITY)]));
    assert_eq!(as_f64s(&run.eval(0))[0], Some(f64::INFINITY));
    run.roundtrip();
    run.retract(&[0], doubles(&[Some(f64::INFINITY)]));
    assert_eq!(as_f64s(&run.eval(0))[0], Some(2.25));
}

#[test]
fn sum_decimal_is_exact_and_overflow_is_an_error() {
    let ty = DataType::Decimal128(5, 2);
    let mut run = Run::one(spec("sum", Some(ty.clone()), &[], true), 2);
    run.add(&[0, 0, 1], decimals(&[Some(12345), Some(-345), None], 5, 2));
    let out = run.eval(0);
    assert_eq!(out.data_type(), &ty);
    let values: Vec<Option<i128>> = out
        .as_primitive::<arrow::datatypes::Decimal128Type>()
        .iter()
        .collect();
    assert_eq!(values, [Some(12000), Some(0)]);

    // 120.00 + 900.00 does not fit in DECIMAL(5, 2).
    run.add(&[0], decimals(&[Some(90000)], 5, 2));
    let err = run.try_eval().unwrap_err();
    assert!(matches!(
        err,
        AggregateError::DecimalOverflow {
            precision: 5,
            scale: 2
        }
    ));
    assert_eq!(
        err.to_string(),
        "numeric field overflow: the SUM of DECIMAL(5, 2) values does not fit in DECIMAL(5, 2)\n\
         hint: cast the argument to a DECIMAL with a larger precision"
    );
    // The state is still exact: taking a row back brings the sum back in range.
    run.retract(&[0], decimals(&[Some(12345)], 5, 2));
    let values: Vec<Option<i128>> = run
        .eval(0)
        .as_primitive::<arrow::datatypes::Decimal128Type>()
        .iter()
        .collect();
    assert_eq!(values, [Some(89655), Some(0)]);
}

#[test]
fn sum_decimal_survives_i128_overflow() {
    let ty = DataType::Decimal128(38, 0);
    let mut run = Run::one(spec("sum", Some(ty), &[], true), 1);
    let big = 10i128.pow(38) - 1;
    run.add(
        &[0, 0, 0],
        decimals(&[Some(big), Some(big), Some(big)], 38, 0),
    );
    assert!(run.try_eval().is_err());
    run.roundtrip();
    run.retract(&[0, 0], decimals(&[Some(big), Some(big)], 38, 0));
    let values: Vec<Option<i128>> = run
        .eval(0)
        .as_primitive::<arrow::datatypes::Decimal128Type>()
        .iter()
        .collect();
    assert_eq!(values, [Some(big)]);
}

// ---------------------------------------------------------------------------------------------
// AVG

#[test]
fn avg_is_double_zero_when_empty_and_retracts() {
    let mut run = Run::one(spec("avg", Some(DataType::Int32), &[], true), 2);
    run.add(&[0, 0, 1], int32s(&[Some(1), Some(2), None]));
    let out = run.eval(0);
    assert_eq!(out.data_type(), &DataType::Float64);
    // No non-NULL value: 0.0, as ksqlDB's AVG.
    assert_eq!(as_f64s(&out), [Some(1.5), Some(0.0)]);
    run.retract(&[0], int32s(&[Some(1)]));
    assert_eq!(as_f64s(&run.eval(0)), [Some(2.0), Some(0.0)]);

    // No 32-bit overflow (ksqlDB sums INT averages in an int).
    let mut run = Run::one(spec("avg", Some(DataType::Int32), &[], true), 1);
    run.add(&[0, 0], int32s(&[Some(i32::MAX), Some(i32::MAX)]));
    assert_eq!(as_f64s(&run.eval(0)), [Some(f64::from(i32::MAX))]);

    let mut run = Run::one(spec("avg", Some(DataType::Float64), &[], true), 1);
    run.add(&[0, 0, 0], doubles(&[Some(1.0), Some(2.0), Some(6.0)]));
    assert_eq!(as_f64s(&run.eval(0)), [Some(3.0)]);
    run.retract(&[0], doubles(&[Some(6.0)]));
    assert_eq!(as_f64s(&run.eval(0)), [Some(1.5)]);

    let mut run = Run::one(spec("avg", Some(DataType::Decimal128(6, 2)), &[], true), 1);
    run.add(&[0, 0], decimals(&[Some(150), Some(250)], 6, 2));
    assert_eq!(as_f64s(&run.eval(0)), [Some(2.0)]);
    run.roundtrip();
    run.retract(&[0], decimals(&[Some(150)], 6, 2));
    assert_eq!(as_f64s(&run.eval(0)), [Some(2.5)]);
}

// ---------------------------------------------------------------------------------------------
// MIN, MAX

#[test]
fn min_max_of_a_stream_ignore_nulls_across_interleaved_groups() {
    let mut run = Run::new(
        vec![
            spec("min", Some(DataType::Int64), &[], false),
            spec("max", Some(DataType::Int64), &[], false),
        ],
        3,
    );
    run.add(
        &[0, 1, 0, 1, 0, 2],
        int64s(&[Some(5), Some(-1), None, Some(-7), Some(2), None]),
    );
    assert_eq!(as_i64s(&run.eval(0)), [Some(2), Some(-7), None]);
    assert_eq!(as_i64s(&run.eval(1)), [Some(5), Some(-1), None]);
    run.roundtrip();
    run.add(&[2, 0], int64s(&[Some(0), Some(9)]));
    assert_eq!(as_i64s(&run.eval(0)), [Some(2), Some(-7), Some(0)]);
    assert_eq!(as_i64s(&run.eval(1)), [Some(9), Some(-1), Some(0)]);

    // A stream's MIN keeps one value, so it cannot take one back.
    let err = run
        .try_apply(&[0], &int64s(&[Some(2)]), Some(&[-1]))
        .unwrap_err();
    assert!(matches!(err, AggregateError::InvalidInput(_)), "{err}");
    assert_eq!(as_i64s(&run.eval(0)), [Some(2), Some(-7), Some(0)]);
}

#[test]
fn min_max_of_strings_and_doubles() {
    let mut run = Run::new(
        vec![
            spec("min", Some(DataType::Utf8), &[], false),
            spec("max", Some(DataType::Utf8), &[], false),
        ],
        1,
    );
    run.add(
        &[0, 0, 0, 0],
        strings(&[Some("pear"), Some("apple"), None, Some("zebra")]),
    );
    assert_eq!(as_strings(&run.eval(0)), [s("apple")]);
    assert_eq!(as_strings(&run.eval(1)), [s("zebra")]);

    let mut run = Run::new(
        vec![
            spec("min", Some(DataType::Float64), &[], false),
            spec("max", Some(DataType::Float64), &[], false),
        ],
        1,
    );
    run.add(&[0, 0, 0], doubles(&[Some(-0.5), Some(-3.25), Some(1e300)]));
    assert_eq!(as_f64s(&run.eval(0)), [Some(-3.25)]);
    assert_eq!(as_f64s(&run.eval(1)), [Some(1e300)]);
}

#[test]
fn min_max_of_a_table_retract_to_the_next_value() {
    let mut run = Run::new(
        vec![
            spec("min", Some(DataType::Int64), &[], true),
            spec("max", Some(DataType::Int64), &[], true),
        ],
        1,
    );
    run.add(&[0, 0, 0, 0], int64s(&[Some(5), Some(3), Some(3), Some(8)]));
    assert_eq!(as_i64s(&run.eval(0)), [Some(3)]);
    assert_eq!(as_i64s(&run.eval(1)), [Some(8)]);
    run.retract(&[0], int64s(&[Some(3)]));
    // One 3 is left.
    assert_eq!(as_i64s(&run.eval(0)), [Some(3)]);
    run.roundtrip();
    run.retract(&[0, 0], int64s(&[Some(3), Some(8)]));
    assert_eq!(as_i64s(&run.eval(0)), [Some(5)]);
    assert_eq!(as_i64s(&run.eval(1)), [Some(5)]);
    run.retract(&[0], int64s(&[Some(5)]));
    assert_eq!(as_i64s(&run.eval(0)), [None]);
    assert_eq!(as_i64s(&run.eval(1)), [None]);
    assert_eq!(run.rows(), [0]);
}

#[test]
fn min_max_of_dates_and_booleans() {
    let mut run = Run::new(
        vec![
            spec("min", Some(DataType::Date32), &[], true),
            spec("max", Some(DataType::Date32), &[], true),
        ],
        1,
    );
    let dates: ArrayRef = Arc::new(Date32Array::from(vec![Some(19000), Some(-5), None]));
    run.add(&[0, 0, 0], dates);
    let min = run.eval(0);
    assert_eq!(min.data_type(), &DataType::Date32);
    assert_eq!(
        min.as_primitive::<arrow::datatypes::Date32Type>().value(0),
        -5
    );

    let mut run = Run::new(
        vec![
            spec("min", Some(DataType::Boolean), &[], false),
            spec("max", Some(DataType::Boolean), &[], false),
        ],
        1,
    );
    let flags: ArrayRef = Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)]));
    run.add(&[0, 0, 0], flags);
    assert!(!run.eval(0).as_boolean().value(0));
    assert!(run.eval(1).as_boolean().value(0));
}

// ---------------------------------------------------------------------------------------------
// COUNT_DISTINCT

#[test]
fn count_distinct_is_exact_ignores_nulls_and_retracts() {
    let mut run = Run::one(spec("count_distinct", Some(DataType::Utf8), &[], true), 2);
    run.add(
        &[0, 0, 1, 0, 0],
        strings(&[Some("a"), Some("b"), Some("a"), Some("a"), None]),
    );
    let out = run.eval(0);
    assert_eq!(out.data_type(), &DataType::Int64);
    assert_eq!(as_i64s(&out), [Some(2), Some(1)]);
    run.retract(&[0], strings(&[Some("a")]));
    assert_eq!(as_i64s(&run.eval(0)), [Some(2), Some(1)]);
    run.roundtrip();
    run.retract(&[0], strings(&[Some("a")]));
    assert_eq!(as_i64s(&run.eval(0)), [Some(1), Some(1)]);
}

#[test]
fn count_distinct_stops_counting_new_values_at_its_limit() {
    let limits = AggregateLimits {
        count_distinct_max_values: 2,
        ..AggregateLimits::default()
    };
    let mut run = Run::one(
        spec_with("count_distinct", Some(DataType::Int64), &[], true, &limits),
        1,
    );
    run.add(&[0, 0, 0, 0], int64s(&[Some(1), Some(2), Some(3), Some(1)]));
    assert_eq!(as_i64s(&run.eval(0)), [Some(2)]);
    run.retract(&[0], int64s(&[Some(1)]));
    // One 1 is still there.
    assert_eq!(as_i64s(&run.eval(0)), [Some(2)]);
    run.retract(&[0], int64s(&[Some(2)]));
    assert_eq!(as_i64s(&run.eval(0)), [Some(1)]);
    run.add(&[0], int64s(&[Some(3)]));
    assert_eq!(as_i64s(&run.eval(0)), [Some(2)]);
}

// ---------------------------------------------------------------------------------------------
// LATEST_BY_OFFSET, EARLIEST_BY_OFFSET

#[test]
fn latest_and_earliest_across_two_batches() {
    let mut run = Run::new(
        vec![
            spec("latest_by_offset", Some(DataType::Utf8), &[], false),
            spec("earliest_by_offset", Some(DataType::Utf8), &[], false),
            spec(
                "latest_by_offset",
                Some(DataType::Utf8),
                &[LiteralArg::Boolean(false)],
                false,
            ),
            spec(
                "earliest_by_offset",
                Some(DataType::Utf8),
                &[LiteralArg::Boolean(false)],
                false,
            ),
            spec(
                "latest_by_offset",
                Some(DataType::Utf8),
                &[LiteralArg::Boolean(true)],
                false,
            ),
        ],
        3,
    );
    run.add(&[0, 1, 0, 0], strings(&[Some("a"), None, Some("b"), None]));
    assert_eq!(as_strings(&run.eval(0)), [s("b"), None, None]);
    assert_eq!(as_strings(&run.eval(1)), [s("a"), None, None]);
    assert_eq!(as_strings(&run.eval(2)), [None, None, None]);
    assert_eq!(as_strings(&run.eval(3)), [s("a"), None, None]);
    run.roundtrip();
    run.add(
        &[1, 0, 2, 0],
        strings(&[Some("x"), Some("c"), Some("z"), None]),
    );
    // Ignoring NULLs (the default, and TRUE).
    assert_eq!(as_strings(&run.eval(0)), [s("c"), s("x"), s("z")]);
    assert_eq!(as_strings(&run.eval(4)), [s("c"), s("x"), s("z")]);
    assert_eq!(as_strings(&run.eval(1)), [s("a"), s("x"), s("z")]);
    // Keeping NULLs: the last row of group 0 is NULL; group 1's first row was NULL.
    assert_eq!(as_strings(&run.eval(2)), [None, s("x"), s("z")]);
    assert_eq!(as_strings(&run.eval(3)), [s("a"), None, s("z")]);
    run.roundtrip();
    assert_eq!(as_strings(&run.eval(3)), [s("a"), None, s("z")]);
}

#[test]
fn latest_and_earliest_refuse_tables() {
    let err = AggregateSpec::new(
        "latest_by_offset",
        &[DataType::Int64],
        &[],
        true,
        &AggregateLimits::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "LATEST_BY_OFFSET cannot aggregate a table: a changed row cannot be taken back out of it"
    );
    let err = AggregateSpec::new(
        "earliest_by_offset",
        &[DataType::Int64],
        &[LiteralArg::Boolean(false)],
        true,
        &AggregateLimits::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "EARLIEST_BY_OFFSET cannot aggregate a table: a changed row cannot be taken back out of it"
    );
}

#[test]
fn latest_rejects_a_non_boolean_flag() {
    let err = AggregateSpec::new(
        "latest_by_offset",
        &[DataType::Int64],
        &[LiteralArg::Integer(3)],
        false,
        &AggregateLimits::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "argument ignore_nulls of LATEST_BY_OFFSET must be a BOOLEAN literal, got 3\n\
         hint: write LATEST_BY_OFFSET(x [, ignore_nulls])"
    );
}

// ---------------------------------------------------------------------------------------------
// COLLECT_LIST

#[test]
fn collect_list_keeps_order_and_nulls_and_retracts_one_occurrence() {
    let spec = spec("collect_list", Some(DataType::Int64), &[], true);
    assert_eq!(
        spec.output_type(),
        &DataType::List(Arc::new(Field::new("item", DataType::Int64, true)))
    );
    let mut run = Run::one(spec, 3);
    run.add(
        &[0, 1, 0, 0, 0],
        int64s(&[Some(1), Some(3), None, Some(2), Some(1)]),
    );
    assert_eq!(
        as_lists(&run.eval(0), as_i64s),
        [vec![Some(1), None, Some(2), Some(1)], vec![Some(3)], vec![]]
    );
    run.retract(&[0], int64s(&[Some(1)]));
    // ksqlDB removes the last occurrence.
    assert_eq!(
        as_lists(&run.eval(0), as_i64s),
        [vec![Some(1), None, Some(2)], vec![Some(3)], vec![]]
    );
    run.roundtrip();
    run.retract(&[0, 1], int64s(&[None, Some(3)]));
    assert_eq!(
        as_lists(&run.eval(0), as_i64s),
        [vec![Some(1), Some(2)], vec![], vec![]]
    );
    assert_eq!(run.rows(), [2, 0, 0]);
}

#[test]
fn collect_list_stops_at_the_limit() {
    let limits = AggregateLimits {
        collection_max_entries: 3,
        ..AggregateLimits::default()
    };
    let mut run = Run::one(
        spec_with("collect_list", Some(DataType::Utf8), &[], false, &limits),
        1,
    );
    run.add(
        &[0, 0, 0, 0, 0],
        strings(&[Some("a"), Some("b"), Some("c"), Some("d"), Some("e")]),
    );
    assert_eq!(
        as_lists(&run.eval(0), as_strings),
        [vec![s("a"), s("b"), s("c")]]
    );
    assert_eq!(run.rows(), [5]);
    // The default is ksqlDB's 1000.
    let mut run = Run::one(spec("collect_list", Some(DataType::Int32), &[], false), 1);
    let values: Vec<Option<i32>> = (0..1500).map(Some).collect();
    run.add(&vec![0; 1500], int32s(&values));
    assert_eq!(as_lists(&run.eval(0), as_i64s)[0].len(), 1000);
}

// ---------------------------------------------------------------------------------------------
// COLLECT_SET

#[test]
fn collect_set_is_ordered_by_value_and_retracts_by_count() {
    let mut run = Run::one(spec("collect_set", Some(DataType::Utf8), &[], true), 2);
    run.add(
        &[0, 0, 1, 0, 0],
        strings(&[Some("b"), Some("a"), Some("z"), None, Some("b")]),
    );
    assert_eq!(
        as_lists(&run.eval(0), as_strings),
        [vec![None, s("a"), s("b")], vec![s("z")]]
    );
    run.retract(&[0], strings(&[Some("b")]));
    assert_eq!(
        as_lists(&run.eval(0), as_strings)[0],
        [None, s("a"), s("b")]
    );
    run.roundtrip();
    run.retract(&[0, 0], strings(&[Some("b"), None]));
    assert_eq!(as_lists(&run.eval(0), as_strings)[0], [s("a")]);
}

#[test]
fn collect_set_limits_distinct_values() {
    let limits = AggregateLimits {
        collection_max_entries: 2,
        ..AggregateLimits::default()
    };
    let mut run = Run::one(
        spec_with("collect_set", Some(DataType::Int64), &[], false, &limits),
        1,
    );
    run.add(&[0, 0, 0, 0], int64s(&[Some(9), Some(1), Some(5), Some(9)]));
    assert_eq!(as_lists(&run.eval(0), as_i64s), [vec![Some(1), Some(9)]]);
}

// ---------------------------------------------------------------------------------------------
// TOPK

fn topk_total(state: &GroupState) -> u64 {
    match &state.aggs[0] {
        AggState::Multiset(set) => {
            assert_eq!(set.total, set.counts.values().sum::<u64>());
            set.total
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn topk_of_a_stream_keeps_k_values() {
    let spec = spec(
        "topk",
        Some(DataType::Int64),
        &[LiteralArg::Integer(2)],
        false,
    );
    assert_eq!(
        spec.output_type(),
        &DataType::List(Arc::new(Field::new("item", DataType::Int64, true)))
    );
    let mut run = Run::one(spec, 2);
    run.add(
        &[0, 0, 1, 0, 0, 0, 1],
        int64s(&[Some(5), Some(1), None, Some(9), Some(5), Some(7), Some(4)]),
    );
    assert_eq!(
        as_lists(&run.eval(0), as_i64s),
        [vec![Some(9), Some(7)], vec![Some(4)]]
    );
    assert!(topk_total(&run.states[0]) <= 2);
    let values: Vec<Option<i64>> = (0..500).map(|v| Some((v * 7919) % 1000)).collect();
    run.add(&vec![0; 500], int64s(&values));
    assert_eq!(topk_total(&run.states[0]), 2);
    let mut all: Vec<i64> = values
        .iter()
        .flatten()
        .copied()
        .chain([5, 1, 9, 5, 7])
        .collect();
    all.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(
        as_lists(&run.eval(0), as_i64s)[0],
        [Some(all[0]), Some(all[1])]
    );

    // Duplicates count.
    let mut run = Run::one(
        crate::tests::spec(
            "topk",
            Some(DataType::Int64),
            &[LiteralArg::Integer(3)],
            false,
        ),
        1,
    );
    run.add(&[0, 0, 0, 0], int64s(&[Some(5), Some(5), Some(1), Some(0)]));
    assert_eq!(
        as_lists(&run.eval(0), as_i64s),
        [vec![Some(5), Some(5), Some(1)]]
    );
    assert_eq!(topk_total(&run.states[0]), 3);
}

#[test]
fn topk_of_a_table_retracts_to_the_next_values() {
    let mut run = Run::one(
        spec(
            "topk",
            Some(DataType::Utf8),
            &[LiteralArg::Integer(2)],
            true,
        ),
        1,
    );
    run.add(
        &[0, 0, 0, 0],
        strings(&[Some("b"), Some("a"), Some("d"), Some("c")]),
    );
    assert_eq!(as_lists(&run.eval(0), as_strings), [vec![s("d"), s("c")]]);
    run.retract(&[0], strings(&[Some("d")]));
    assert_eq!(as_lists(&run.eval(0), as_strings), [vec![s("c"), s("b")]]);
    run.roundtrip();
    run.retract(&[0, 0], strings(&[Some("c"), Some("b")]));
    assert_eq!(as_lists(&run.eval(0), as_strings), [vec![s("a")]]);
}

#[test]
fn topk_k_must_be_an_integer_from_1_to_1000() {
    let make = |literals: &[LiteralArg]| {
        AggregateSpec::new(
            "topk",
            &[DataType::Int64],
            literals,
            false,
            &AggregateLimits::default(),
        )
    };
    assert!(make(&[LiteralArg::Integer(1)]).is_ok());
    assert!(make(&[LiteralArg::Integer(1000)]).is_ok());
    for bad in [
        LiteralArg::Integer(0),
        LiteralArg::Integer(1001),
        LiteralArg::Integer(-1),
        LiteralArg::Boolean(true),
        LiteralArg::String("3".into()),
    ] {
        let err = make(std::slice::from_ref(&bad)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("argument k of TOPK must be an integer literal from 1 to 1000, got {bad}")
        );
    }
    let err = make(&[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "function TOPK does not take 1 argument\nhint: write TOPK(x, k)"
    );
}

// ---------------------------------------------------------------------------------------------
// HISTOGRAM

#[test]
fn histogram_counts_values_and_retracts() {
    let spec = spec("histogram", Some(DataType::Utf8), &[], true);
    let expected_type = DataType::Map(
        Arc::new(Field::new(
            "entries",
            DataType::Struct(Fields::from(vec![
                Field::new("key", DataType::Utf8, false),
                Field::new("value", DataType::Int64, true),
            ])),
            false,
        )),
        false,
    );
    assert_eq!(spec.output_type(), &expected_type);
    let mut run = Run::one(spec, 3);
    run.add(
        &[0, 1, 0, 0, 0],
        strings(&[Some("b"), Some("x"), Some("a"), Some("b"), None]),
    );
    let a = |v: &str, c: i64| (v.to_string(), c);
    assert_eq!(
        as_maps(&run.eval(0)),
        [vec![a("a", 1), a("b", 2)], vec![a("x", 1)], vec![]]
    );
    run.retract(&[0, 1], strings(&[Some("b"), Some("x")]));
    assert_eq!(
        as_maps(&run.eval(0)),
        [vec![a("a", 1), a("b", 1)], vec![], vec![]]
    );
    run.roundtrip();
    run.retract(&[0], strings(&[Some("b")]));
    assert_eq!(as_maps(&run.eval(0)), [vec![a("a", 1)], vec![], vec![]]);

    let limits = AggregateLimits {
        collection_max_entries: 2,
        ..AggregateLimits::default()
    };
    let mut run = Run::one(
        spec_with("histogram", Some(DataType::Utf8), &[], false, &limits),
        1,
    );
    run.add(
        &[0, 0, 0, 0],
        strings(&[Some("a"), Some("b"), Some("c"), Some("a")]),
    );
    // Known keys still count; a third key is ignored.
    assert_eq!(as_maps(&run.eval(0)), [vec![a("a", 2), a("b", 1)]]);
}

// ---------------------------------------------------------------------------------------------
// Several aggregates, groups, states

fn all_functions(retractable: bool) -> Vec<AggregateSpec> {
    let int = Some(DataType::Int64);
    let mut specs = vec![
        spec("count_star", None, &[], retractable),
        spec("count", int.clone(), &[], retractable),
        spec("sum", int.clone(), &[], retractable),
        spec("avg", int.clone(), &[], retractable),
        spec("min", int.clone(), &[], retractable),
        spec("max", int.clone(), &[], retractable),
        spec("count_distinct", int.clone(), &[], retractable),
        spec("collect_list", int.clone(), &[], retractable),
        spec("collect_set", int.clone(), &[], retractable),
        spec("topk", int.clone(), &[LiteralArg::Integer(2)], retractable),
    ];
    if !retractable {
        specs.push(spec("latest_by_offset", int.clone(), &[], false));
        specs.push(spec(
            "earliest_by_offset",
            int,
            &[LiteralArg::Boolean(false)],
            false,
        ));
    }
    specs
}

#[test]
fn many_aggregates_over_interleaved_groups() {
    let mut run = Run::new(all_functions(false), 3);
    run.add(
        &[2, 0, 1, 0, 2, 1, 0],
        int64s(&[
            Some(10),
            Some(1),
            None,
            Some(3),
            Some(-10),
            Some(4),
            Some(3),
        ]),
    );
    let out = run.try_eval().unwrap();
    let col = |i: usize| as_i64s(&out[i]);
    assert_eq!(col(0), [Some(3), Some(2), Some(2)]);
    assert_eq!(col(1), [Some(3), Some(1), Some(2)]);
    assert_eq!(col(2), [Some(7), Some(4), Some(0)]);
    assert_eq!(as_f64s(&out[3]), [Some(7.0 / 3.0), Some(4.0), Some(0.0)]);
    assert_eq!(col(4), [Some(1), Some(4), Some(-10)]);
    assert_eq!(col(5), [Some(3), Some(4), Some(10)]);
    assert_eq!(col(6), [Some(2), Some(1), Some(2)]);
    assert_eq!(
        as_lists(&out[7], as_i64s),
        [
            vec![Some(1), Some(3), Some(3)],
            vec![None, Some(4)],
            vec![Some(10), Some(-10)]
        ]
    );
    assert_eq!(
        as_lists(&out[8], as_i64s),
        [
            vec![Some(1), Some(3)],
            vec![None, Some(4)],
            vec![Some(-10), Some(10)]
        ]
    );
    assert_eq!(
        as_lists(&out[9], as_i64s),
        [
            vec![Some(3), Some(3)],
            vec![Some(4)],
            vec![Some(10), Some(-10)]
        ]
    );
    assert_eq!(col(10), [Some(3), Some(4), Some(-10)]);
    assert_eq!(col(11), [Some(1), None, Some(10)]);
    assert_eq!(run.rows(), [3, 2, 2]);

    let fields = run.agg.output_fields();
    assert_eq!(fields.len(), 12);
    assert_eq!(fields[0].name(), "count");
    assert!(!fields[0].is_nullable());
    assert!(fields[4].is_nullable());
    assert_eq!(fields[9].name(), "topk");
    for (field, array) in fields.iter().zip(&out) {
        assert_eq!(field.data_type(), array.data_type());
    }
}

#[test]
fn groups_reach_zero_rows_and_their_initial_values() {
    let mut run = Run::new(all_functions(true), 2);
    let column = int64s(&[Some(4), None, Some(4), Some(-2)]);
    run.add(&[0, 0, 1, 0], Arc::clone(&column));
    assert_eq!(run.rows(), [3, 1]);
    run.roundtrip();
    run.retract(&[0, 0, 1, 0], column);
    assert_eq!(run.rows(), [0, 0]);
    let fresh = Run::new(all_functions(true), 2);
    assert_eq!(run.try_eval().unwrap(), fresh.try_eval().unwrap());
    assert_eq!(run.states, fresh.states);
}

#[test]
fn mixed_signs_in_one_batch() {
    let mut run = Run::new(
        vec![
            spec("sum", Some(DataType::Int64), &[], true),
            spec("max", Some(DataType::Int64), &[], true),
        ],
        2,
    );
    run.add(&[0, 1], int64s(&[Some(5), Some(6)]));
    // A table row moves from group 0 to group 1 with a new value: the old one is retracted.
    run.try_apply(&[0, 1], &int64s(&[Some(5), Some(9)]), Some(&[-1, 1]))
        .unwrap();
    assert_eq!(as_i64s(&run.eval(0)), [Some(0), Some(15)]);
    assert_eq!(as_i64s(&run.eval(1)), [None, Some(9)]);
    assert_eq!(run.rows(), [0, 2]);
}

#[test]
fn empty_batches_and_no_states() {
    let mut run = Run::new(all_functions(false), 0);
    run.add(&[], int64s(&[]));
    let out = run.try_eval().unwrap();
    assert!(out.iter().all(|a| a.is_empty()));
}

// ---------------------------------------------------------------------------------------------
// Inputs checked before any change

#[test]
fn inconsistent_inputs_are_errors_and_change_nothing() {
    let mut run = Run::new(all_functions(true), 2);
    run.add(&[0, 1], int64s(&[Some(1), Some(2)]));
    let before = run.states.clone();
    let column = int64s(&[Some(1), Some(2)]);
    let errors = [
        run.try_apply(&[0, 2], &column, None),
        run.try_apply(&[0], &column, None),
        run.try_apply(&[0, 1], &column, Some(&[1])),
        run.try_apply(&[0, 1], &column, Some(&[1, 0])),
        run.try_apply(&[0, 1], &int32s(&[Some(1), Some(2)]), None),
    ];
    for result in errors {
        let err = result.unwrap_err();
        assert!(matches!(err, AggregateError::InvalidInput(_)), "{err}");
    }
    let args = vec![vec![]; 3];
    assert!(run.agg.update(&mut run.states, &[0], &args, None).is_err());
    assert_eq!(run.states, before);

    // A state of another aggregator.
    let other = Aggregator::new(vec![spec("count_star", None, &[], true)]).unwrap();
    let mut foreign = vec![other.new_state()];
    let args = run.args(&int64s(&[Some(1)]));
    assert!(run.agg.update(&mut foreign, &[0], &args, None).is_err());
    assert!(run.agg.evaluate(&[&foreign[0]]).is_err());
}

// ---------------------------------------------------------------------------------------------
// Serialization

#[test]
fn every_state_round_trips() {
    for retractable in [false, true] {
        let mut specs = all_functions(retractable);
        specs.push(spec("sum", Some(DataType::Float64), &[], retractable));
        specs.push(spec("avg", Some(DataType::Float64), &[], retractable));
        specs.push(spec(
            "sum",
            Some(DataType::Decimal128(10, 3)),
            &[],
            retractable,
        ));
        specs.push(spec(
            "avg",
            Some(DataType::Decimal128(10, 3)),
            &[],
            retractable,
        ));
        specs.push(spec("histogram", Some(DataType::Utf8), &[], retractable));
        let agg = Aggregator::new(specs).unwrap();
        let mut states = vec![agg.new_state(), agg.new_state()];
        let args = |ints: ArrayRef, n: usize| -> Vec<Vec<ArrayRef>> {
            agg.specs()
                .iter()
                .map(|spec| match spec.input_type() {
                    None => vec![],
                    Some(DataType::Int64) => vec![Arc::clone(&ints)],
                    Some(DataType::Float64) => vec![doubles(&vec![Some(0.5); n])],
                    Some(DataType::Decimal128(..)) => vec![decimals(&vec![Some(1234); n], 10, 3)],
                    Some(DataType::Utf8) => vec![strings(&vec![Some("é"); n])],
                    Some(other) => panic!("{other}"),
                })
                .collect()
        };
        let before: Vec<GroupState> = states.clone();
        for state in &before {
            let mut bytes = Vec::new();
            agg.encode_state(state, &mut bytes);
            assert_eq!(&agg.decode_state(&bytes).unwrap(), state);
        }
        agg.update(
            &mut states,
            &[0, 1, 0],
            &args(int64s(&[Some(3), None, Some(-3)]), 3),
            None,
        )
        .unwrap();
        let evaluated = agg.evaluate(&states.iter().collect::<Vec<_>>()).unwrap();
        let mut bytes = Vec::new();
        for state in &states {
            bytes.clear();
            agg.encode_state(state, &mut bytes);
            let decoded = agg.decode_state(&bytes).unwrap();
            assert_eq!(&decoded, state);
            // Appending to a buffer that holds something else already.
            let mut out = vec![7, 7];
            agg.encode_state(state, &mut out);
            assert_eq!(&out[2..], &bytes[..]);
        }
        let decoded: Vec<GroupState> = states
            .iter()
            .map(|state| {
                let mut bytes = Vec::new();
                agg.encode_state(state, &mut bytes);
                agg.decode_state(&bytes).unwrap()
            })
            .collect();
        assert_eq!(
            agg.evaluate(&decoded.iter().collect::<Vec<_>>()).unwrap(),
            evaluated
        );
    }
}

/// A deterministic PRNG (splitmix64), so that failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn decoding_garbage_is_an_error_not_a_panic() {
    let mut run = Run::new(all_functions(false), 1);
    run.add(&[0, 0], int64s(&[Some(3), None]));
    let mut good = Vec::new();
    run.agg.encode_state(&run.states[0], &mut good);

    let err = run.agg.decode_state(&[]).unwrap_err();
    assert_eq!(err.to_string(), "invalid aggregate state: empty input");
    let mut other_version = good.clone();
    other_version[0] = 2;
    let err = run.agg.decode_state(&other_version).unwrap_err();
    assert!(
        err.to_string().contains("unknown format version 2"),
        "{err}"
    );
    let mut longer = good.clone();
    longer.push(0);
    assert!(run.agg.decode_state(&longer).is_err());
    for cut in 0..good.len() {
        assert!(run.agg.decode_state(&good[..cut]).is_err(), "prefix {cut}");
    }

    // Random bytes, and every single-byte corruption of a good state: errors, or a state that
    // evaluates; never a panic.
    let mut rng = Rng(42);
    for _ in 0..2000 {
        let len = rng.below(64) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if rng.below(2) == 0 && !bytes.is_empty() {
            bytes[0] = 1;
        }
        if let Ok(state) = run.agg.decode_state(&bytes) {
            run.agg.evaluate(&[&state]).unwrap();
        }
    }
    for at in 1..good.len() {
        for value in [0u8, 1, 2, 0x7F, 0x80, 0xFF] {
            let mut bytes = good.clone();
            bytes[at] = value;
            if let Ok(state) = run.agg.decode_state(&bytes) {
                run.agg.evaluate(&[&state]).unwrap();
            }
        }
    }
}

#[test]
fn decoding_checks_the_state_against_the_aggregates() {
    // Another query's state.
    let count = Aggregator::new(vec![spec("count_star", None, &[], false)]).unwrap();
    let sum = Aggregator::new(vec![spec("sum", Some(DataType::Int64), &[], false)]).unwrap();
    let mut bytes = Vec::new();
    count.encode_state(&count.new_state(), &mut bytes);
    let err = sum.decode_state(&bytes).unwrap_err();
    assert!(matches!(err, AggregateError::InvalidState(_)), "{err}");

    // Well-formed postcard holding a value that is not an arrow-row STRING.
    let agg =
        Aggregator::new(vec![spec("collect_list", Some(DataType::Utf8), &[], false)]).unwrap();
    let mut state = agg.new_state();
    let AggState::List(values) = &mut state.aggs[0] else {
        panic!()
    };
    values.push(vec![2, 0xC3, 0x28, 0, 0, 0, 0, 0, 0, 2]);
    let mut bytes = Vec::new();
    agg.encode_state(&state, &mut bytes);
    let err = agg.decode_state(&bytes).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid aggregate state: aggregate 0 (COLLECT_LIST) holds a value that is not a STRING"
    );

    // A NULL where the function never stores one.
    let agg = Aggregator::new(vec![spec("min", Some(DataType::Int32), &[], false)]).unwrap();
    let mut state = agg.new_state();
    state.aggs[0] = AggState::Extreme(Some(vec![0, 0, 0, 0, 0]));
    let mut bytes = Vec::new();
    agg.encode_state(&state, &mut bytes);
    assert!(agg.decode_state(&bytes).is_err());

    // A multiset count of 0.
    let agg =
        Aggregator::new(vec![spec("collect_set", Some(DataType::Int32), &[], false)]).unwrap();
    let mut state = agg.new_state();
    let AggState::Multiset(set) = &mut state.aggs[0] else {
        panic!()
    };
    set.counts.insert(vec![1, 0x80, 0, 0, 1], 0);
    let mut bytes = Vec::new();
    agg.encode_state(&state, &mut bytes);
    assert!(agg.decode_state(&bytes).is_err());
}

// ---------------------------------------------------------------------------------------------
// Planning errors

#[test]
fn wrong_types_are_errors_with_a_hint() {
    let check = |name: &str, ty: DataType, message: &str| {
        let err = AggregateSpec::new(
            name,
            std::slice::from_ref(&ty),
            &[],
            false,
            &AggregateLimits::default(),
        )
        .unwrap_err();
        assert!(matches!(err, AggregateError::ArgumentType { .. }), "{err}");
        assert_eq!(err.to_string(), message);
        let err = AggregateSpec::return_type(name, &[ty]).unwrap_err();
        assert_eq!(err.to_string(), message);
    };
    check(
        "sum",
        DataType::Utf8,
        "function SUM does not accept STRING arguments\nhint: SUM takes INT, BIGINT, DOUBLE or DECIMAL",
    );
    check(
        "avg",
        DataType::Boolean,
        "function AVG does not accept BOOLEAN arguments\nhint: AVG takes INT, BIGINT, DOUBLE or DECIMAL",
    );
    check(
        "histogram",
        DataType::Int32,
        "function HISTOGRAM does not accept INT arguments\nhint: HISTOGRAM takes STRING",
    );
    check(
        "min",
        DataType::List(Arc::new(Field::new("item", DataType::Int32, true))),
        "function MIN does not accept ARRAY<INT> arguments\nhint: MIN takes INT, BIGINT, DOUBLE, \
         DECIMAL, STRING, BYTES, BOOLEAN, DATE, TIME or TIMESTAMP",
    );
    check(
        "collect_set",
        DataType::Struct(Fields::from(vec![Field::new("A", DataType::Int64, true)])),
        "function COLLECT_SET does not accept STRUCT<A BIGINT> arguments\nhint: COLLECT_SET takes \
         INT, BIGINT, DOUBLE, DECIMAL, STRING, BYTES, BOOLEAN, DATE, TIME or TIMESTAMP",
    );
}

#[test]
fn unknown_functions_and_argument_counts() {
    let limits = AggregateLimits::default();
    let err = AggregateSpec::new("median", &[DataType::Int64], &[], false, &limits).unwrap_err();
    assert_eq!(
        err.to_string(),
        "function MEDIAN does not exist
hint: the aggregate functions are AVG, COLLECT_LIST, \
         COLLECT_SET, COUNT, COUNT_DISTINCT, EARLIEST_BY_OFFSET, HISTOGRAM, LATEST_BY_OFFSET, MAX, \
         MIN, SUM, TOPK"
    );
    let err = AggregateSpec::new("sum", &[], &[], false, &limits).unwrap_err();
    assert_eq!(
        err.to_string(),
        "function SUM does not take 0 arguments\nhint: write SUM(x)"
    );
    let err = AggregateSpec::new(
        "sum",
        &[DataType::Int64, DataType::Int64],
        &[],
        false,
        &limits,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "function SUM does not take 2 arguments\nhint: write SUM(x)"
    );
    let err = AggregateSpec::new(
        "sum",
        &[DataType::Int64],
        &[LiteralArg::Integer(1)],
        false,
        &limits,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "function SUM does not take 2 arguments\nhint: write SUM(x)"
    );
    let err =
        AggregateSpec::new("count_star", &[DataType::Int64], &[], false, &limits).unwrap_err();
    assert_eq!(
        err.to_string(),
        "function COUNT does not take 1 argument\nhint: write COUNT(x) or COUNT(*)"
    );
    let err = AggregateSpec::new(
        "latest_by_offset",
        &[DataType::Int64],
        &[LiteralArg::Boolean(true), LiteralArg::Boolean(true)],
        false,
        &limits,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "function LATEST_BY_OFFSET does not take 3 arguments\nhint: write LATEST_BY_OFFSET(x [, ignore_nulls])"
    );
    // Names are matched case-insensitively.
    let spec = AggregateSpec::new("Collect_List", &[DataType::Int64], &[], false, &limits).unwrap();
    assert_eq!(spec.name(), "COLLECT_LIST");
}

#[test]
fn return_types_for_the_planner() {
    let list = |t: DataType| DataType::List(Arc::new(Field::new("item", t, true)));
    let cases = [
        ("count", vec![], DataType::Int64),
        ("count_star", vec![], DataType::Int64),
        ("count", vec![DataType::Utf8], DataType::Int64),
        ("sum", vec![DataType::Int32], DataType::Int32),
        ("sum", vec![DataType::Int64], DataType::Int64),
        ("sum", vec![DataType::Float64], DataType::Float64),
        (
            "sum",
            vec![DataType::Decimal128(12, 2)],
            DataType::Decimal128(12, 2),
        ),
        ("avg", vec![DataType::Int32], DataType::Float64),
        ("min", vec![DataType::Utf8], DataType::Utf8),
        ("max", vec![DataType::Binary], DataType::Binary),
        ("count_distinct", vec![DataType::Float64], DataType::Int64),
        (
            "latest_by_offset",
            vec![DataType::Boolean],
            DataType::Boolean,
        ),
        (
            "latest_by_offset",
            vec![DataType::Int32, DataType::Boolean],
            DataType::Int32,
        ),
        (
            "earliest_by_offset",
            vec![DataType::Date32],
            DataType::Date32,
        ),
        ("collect_list", vec![DataType::Utf8], list(DataType::Utf8)),
        ("collect_set", vec![DataType::Int32], list(DataType::Int32)),
        (
            "topk",
            vec![DataType::Float64, DataType::Int64],
            list(DataType::Float64),
        ),
        ("topk", vec![DataType::Float64], list(DataType::Float64)),
        (
            "histogram",
            vec![DataType::Utf8],
            crate::spec::histogram_type(),
        ),
    ];
    for (name, args, expected) in cases {
        assert_eq!(
            AggregateSpec::return_type(name, &args).unwrap(),
            expected,
            "{name}({args:?})"
        );
    }
    assert!(AggregateSpec::return_type("sum", &[]).is_err());
    assert!(AggregateSpec::return_type("topk", &vec![DataType::Int64; 3]).is_err());
    assert!(AggregateSpec::return_type("nope", &[]).is_err());
    let names = AggregateSpec::function_names();
    assert_eq!(names.len(), 12);
    for name in names {
        let err = AggregateSpec::return_type(name, &vec![DataType::Utf8; 9]).unwrap_err();
        assert!(
            matches!(err, AggregateError::ArgumentCount { .. }),
            "{name}: {err}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Property test: random adds and retractions against a naive recomputation

#[test]
fn random_adds_and_retractions_match_a_naive_recomputation() {
    const GROUPS: usize = 4;
    let specs = vec![
        spec("sum", Some(DataType::Int64), &[], true),
        spec("count", Some(DataType::Int64), &[], true),
        spec("count_star", None, &[], true),
        spec("min", Some(DataType::Int64), &[], true),
        spec("max", Some(DataType::Int64), &[], true),
        spec("count_distinct", Some(DataType::Int64), &[], true),
        spec("collect_set", Some(DataType::Int64), &[], true),
        spec("avg", Some(DataType::Int64), &[], true),
    ];
    let mut run = Run::new(specs, GROUPS);
    // The rows each group holds now.
    let mut naive: Vec<Vec<Option<i64>>> = vec![Vec::new(); GROUPS];
    let mut rng = Rng(7);
    for batch in 0..300 {
        let len = 1 + rng.below(24) as usize;
        let mut groups = Vec::with_capacity(len);
        let mut values = Vec::with_capacity(len);
        let mut signs = Vec::with_capacity(len);
        for _ in 0..len {
            let g = rng.below(GROUPS as u64) as usize;
            if !naive[g].is_empty() && rng.below(3) == 0 {
                let at = rng.below(naive[g].len() as u64) as usize;
                values.push(naive[g].swap_remove(at));
                signs.push(-1);
            } else {
                let value = match rng.below(12) {
                    0 | 1 => None,
                    2 => Some(i64::MAX - rng.below(3) as i64),
                    3 => Some(i64::MIN + rng.below(3) as i64),
                    _ => Some(rng.below(11) as i64 - 5),
                };
                naive[g].push(value);
                values.push(value);
                signs.push(1);
            }
            groups.push(g as u32);
        }
        run.try_apply(&groups, &int64s(&values), Some(&signs))
            .unwrap();
        if batch % 7 == 0 {
            run.roundtrip();
        }

        let out = run.try_eval().unwrap();
        for (g, rows) in naive.iter().enumerate() {
            let present: Vec<i64> = rows.iter().flatten().copied().collect();
            let distinct: BTreeSet<i64> = present.iter().copied().collect();
            let context = format!("batch {batch}, group {g}, rows {rows:?}");
            assert_eq!(run.states[g].rows, rows.len() as i64, "{context}");
            let sum = present.iter().fold(0i64, |a, &v| a.wrapping_add(v));
            assert_eq!(as_i64s(&out[0])[g], Some(sum), "{context}");
            assert_eq!(as_i64s(&out[1])[g], Some(present.len() as i64), "{context}");
            assert_eq!(as_i64s(&out[2])[g], Some(rows.len() as i64), "{context}");
            assert_eq!(
                as_i64s(&out[3])[g],
                present.iter().min().copied(),
                "{context}"
            );
            assert_eq!(
                as_i64s(&out[4])[g],
                present.iter().max().copied(),
                "{context}"
            );
            assert_eq!(
                as_i64s(&out[5])[g],
                Some(distinct.len() as i64),
                "{context}"
            );
            let mut set: Vec<Option<i64>> = Vec::new();
            if rows.iter().any(Option::is_none) {
                set.push(None);
            }
            set.extend(distinct.iter().map(|&v| Some(v)));
            assert_eq!(as_lists(&out[6], as_i64s)[g], set, "{context}");
            let avg = if present.is_empty() {
                0.0
            } else {
                present.iter().map(|&v| i128::from(v)).sum::<i128>() as f64 / present.len() as f64
            };
            assert_eq!(as_f64s(&out[7])[g], Some(avg), "{context}");
        }
    }
}

#[test]
fn literals_from_one_row_arrays() {
    use arrow::array::{Date32Array, NullArray, UInt64Array};
    let one = |array: ArrayRef| LiteralArg::try_from_array(array.as_ref()).unwrap();
    assert_eq!(one(int64s(&[Some(3)])), LiteralArg::Integer(3));
    assert_eq!(one(int32s(&[Some(-3)])), LiteralArg::Integer(-3));
    assert_eq!(one(int32s(&[None])), LiteralArg::Null);
    assert_eq!(one(Arc::new(NullArray::new(1))), LiteralArg::Null);
    assert_eq!(
        one(Arc::new(BooleanArray::from(vec![false]))),
        LiteralArg::Boolean(false)
    );
    assert_eq!(one(doubles(&[Some(2.5)])), LiteralArg::Double(2.5));
    assert_eq!(one(strings(&[Some("x")])), LiteralArg::String("x".into()));
    assert_eq!(
        one(Arc::new(UInt64Array::from(vec![u64::MAX]))),
        LiteralArg::Other("UInt64".into())
    );
    let date = one(Arc::new(Date32Array::from(vec![1])));
    assert_eq!(date, LiteralArg::Other("DATE".into()));
    let err = AggregateSpec::new(
        "topk",
        &[DataType::Int64],
        &[date],
        false,
        &AggregateLimits::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "argument k of TOPK must be an integer literal from 1 to 1000, got a DATE value"
    );
    assert!(LiteralArg::try_from_array(int64s(&[Some(1), Some(2)]).as_ref()).is_err());
}

// ---------------------------------------------------------------------------------------------
// Merging states (session windows)

/// Two sessions of one group: state 0 made by `first`, state 1 by `second`, state 2 by both
/// (`first`, then `second`), and `merged`: state 1 merged into state 0, which must be state 2.
struct Sessions {
    run: Run,
    merged: GroupState,
}

impl Sessions {
    fn new(specs: Vec<AggregateSpec>, first: ArrayRef, second: ArrayRef) -> Sessions {
        Sessions::with_signs(specs, first, None, second, None)
    }

    fn with_signs(
        specs: Vec<AggregateSpec>,
        first: ArrayRef,
        first_signs: Option<&[i8]>,
        second: ArrayRef,
        second_signs: Option<&[i8]>,
    ) -> Sessions {
        let mut run = Run::new(specs, 3);
        for (group, column, signs) in [
            (0, &first, first_signs),
            (2, &first, first_signs),
            (1, &second, second_signs),
            (2, &second, second_signs),
        ] {
            run.try_apply(&vec![group; column.len()], column, signs)
                .unwrap();
        }
        let mut merged = run.states[0].clone();
        run.agg.merge(&mut merged, &run.states[1]).unwrap();
        Sessions { run, merged }
    }

    /// Applies one more batch to the merged state and to the state of both sessions.
    fn apply(&mut self, column: ArrayRef, signs: Option<&[i8]>) {
        let args = self.run.args(&column);
        self.run
            .agg
            .update(
                std::slice::from_mut(&mut self.merged),
                &vec![0; column.len()],
                &args,
                signs,
            )
            .unwrap();
        self.run
            .try_apply(&vec![2; column.len()], &column, signs)
            .unwrap();
    }

    /// Checks that the merged state is the state of both sessions; returns its values.
    fn assert_exact(&self) -> Vec<ArrayRef> {
        assert_eq!(self.merged, self.run.states[2]);
        self.assert_evaluates_alike()
    }

    /// Checks that the merged state evaluates like the state of both sessions (the same
    /// values, or the same error) and survives a round trip; returns its values.
    fn assert_evaluates_alike(&self) -> Vec<ArrayRef> {
        let merged = self.run.agg.evaluate(&[&self.merged]);
        let both = self.run.agg.evaluate(&[&self.run.states[2]]);
        assert_eq!(
            merged.as_ref().map_err(ToString::to_string),
            both.as_ref().map_err(ToString::to_string)
        );
        let mut bytes = Vec::new();
        self.run.agg.encode_state(&self.merged, &mut bytes);
        assert_eq!(self.run.agg.decode_state(&bytes).unwrap(), self.merged);
        merged.unwrap_or_default()
    }
}

/// The values of a STRING column, for tables of cases.
type Strs<'a> = &'a [Option<&'a str>];

/// Every function over `ty`: SUM and AVG if it is numeric, HISTOGRAM if it is STRING.
fn all_functions_of(ty: &DataType, retractable: bool) -> Vec<AggregateSpec> {
    let t = Some(ty.clone());
    let mut specs = vec![
        spec("count_star", None, &[], retractable),
        spec("count", t.clone(), &[], retractable),
        spec("min", t.clone(), &[], retractable),
        spec("max", t.clone(), &[], retractable),
        spec("count_distinct", t.clone(), &[], retractable),
        spec("collect_list", t.clone(), &[], retractable),
        spec("collect_set", t.clone(), &[], retractable),
        spec("topk", t.clone(), &[LiteralArg::Integer(2)], retractable),
    ];
    if ty == &DataType::Utf8 {
        specs.push(spec("histogram", t.clone(), &[], retractable));
    } else {
        specs.push(spec("sum", t.clone(), &[], retractable));
        specs.push(spec("avg", t.clone(), &[], retractable));
    }
    if !retractable {
        for ignore_nulls in [true, false] {
            let flag = [LiteralArg::Boolean(ignore_nulls)];
            specs.push(spec("latest_by_offset", t.clone(), &flag, false));
            specs.push(spec("earliest_by_offset", t.clone(), &flag, false));
        }
    }
    specs
}

/// A column of `ty` from small codes: 0 is NULL, 1 to 3 the type's extremes (the largest
/// DECIMALs, NaN and infinities), the others small values.
fn coded_column(ty: &DataType, codes: &[u64]) -> ArrayRef {
    let big = 10i128.pow(38) - 1;
    let small = |code: u64| code as i64 - 6;
    let valid = |code: u64| (code != 0).then_some(code);
    match ty {
        DataType::Int64 => int64s(
            &codes
                .iter()
                .map(|&c| {
                    valid(c).map(|c| match c {
                        1 => i64::MAX,
                        2 => i64::MIN,
                        3 => i64::MAX - 1,
                        _ => small(c),
                    })
                })
                .collect::<Vec<_>>(),
        ),
        DataType::Float64 => doubles(
            &codes
                .iter()
                .map(|&c| {
                    valid(c).map(|c| match c {
                        1 => f64::NAN,
                        2 => f64::INFINITY,
                        3 => f64::NEG_INFINITY,
                        // Halves: their sums are exact, so no rounding differs.
                        _ => small(c) as f64 / 2.0,
                    })
                })
                .collect::<Vec<_>>(),
        ),
        DataType::Decimal128(38, 0) => decimals(
            &codes
                .iter()
                .map(|&c| {
                    valid(c).map(|c| match c {
                        1 | 3 => big,
                        2 => -big,
                        _ => i128::from(small(c)),
                    })
                })
                .collect::<Vec<_>>(),
            38,
            0,
        ),
        DataType::Utf8 => {
            let words = ["", "a", "ab", "b", "é", "a\u{0}", "zz", "m", "ba", "abc"];
            strings(
                &codes
                    .iter()
                    .map(|&c| valid(c).map(|c| words[c as usize % words.len()]))
                    .collect::<Vec<_>>(),
            )
        }
        other => panic!("{other}"),
    }
}

/// One session's rows: codes and signs. For a table, some rows take back a row the session
/// added before (a session never retracts another session's rows).
fn random_session(rng: &mut Rng, retractable: bool) -> (Vec<u64>, Vec<i8>) {
    let mut present: Vec<u64> = Vec::new();
    let mut codes = Vec::new();
    let mut signs = Vec::new();
    for _ in 0..rng.below(10) {
        if retractable && !present.is_empty() && rng.below(4) == 0 {
            let at = rng.below(present.len() as u64) as usize;
            codes.push(present.swap_remove(at));
            signs.push(-1);
        } else {
            let code = rng.below(12);
            present.push(code);
            codes.push(code);
            signs.push(1);
        }
    }
    (codes, signs)
}

#[test]
fn merging_two_sessions_is_updating_with_all_their_rows() {
    let mut rng = Rng(2024);
    let types = [
        DataType::Int64,
        DataType::Float64,
        DataType::Decimal128(38, 0),
        DataType::Utf8,
    ];
    for ty in &types {
        for retractable in [false, true] {
            for trial in 0..150 {
                let (first, first_signs) = random_session(&mut rng, retractable);
                let (second, second_signs) = random_session(&mut rng, retractable);
                let context = format!(
                    "{ty}, retractable {retractable}, trial {trial}: {first:?} {first_signs:?}, \
                     {second:?} {second_signs:?}"
                );
                let sessions = Sessions::with_signs(
                    all_functions_of(ty, retractable),
                    coded_column(ty, &first),
                    Some(&first_signs),
                    coded_column(ty, &second),
                    Some(&second_signs),
                );
                assert_eq!(sessions.merged, sessions.run.states[2], "{context}");
                sessions.assert_exact();

                // The state of no row changes nothing, on either side.
                let agg = &sessions.run.agg;
                let mut state = sessions.merged.clone();
                agg.merge(&mut state, &agg.new_state()).unwrap();
                assert_eq!(state, sessions.merged, "{context}");
                let mut state = agg.new_state();
                agg.merge(&mut state, &sessions.merged).unwrap();
                assert_eq!(state, sessions.merged, "{context}");
            }
        }
    }
}

#[test]
fn merge_adds_counts_sums_and_averages() {
    let specs = vec![
        spec("count_star", None, &[], false),
        spec("count", Some(DataType::Int32), &[], false),
        spec("sum", Some(DataType::Int32), &[], false),
        spec("avg", Some(DataType::Int32), &[], false),
    ];
    let sessions = Sessions::new(
        specs,
        int32s(&[Some(i32::MAX), None, Some(3)]),
        int32s(&[Some(1), Some(i32::MAX), None, None]),
    );
    let out = sessions.assert_exact();
    assert_eq!(sessions.merged.rows, 7);
    assert_eq!(as_i64s(&out[0]), [Some(7)]);
    assert_eq!(as_i64s(&out[1]), [Some(4)]);
    // 2 * (2^31 - 1) + 4 wraps to 2, as Java's int does.
    assert_eq!(as_i64s(&out[2]), [Some(2)]);
    // AVG does not wrap.
    assert_eq!(
        as_f64s(&out[3]),
        [Some((2.0 * f64::from(i32::MAX) + 4.0) / 4.0)]
    );

    let sessions = Sessions::new(
        vec![spec("sum", Some(DataType::Int64), &[], true)],
        int64s(&[Some(i64::MAX)]),
        int64s(&[Some(2)]),
    );
    assert_eq!(as_i64s(&sessions.assert_exact()[0]), [Some(i64::MIN + 1)]);
}

#[test]
fn merge_double_sums_count_nan_and_infinities_and_reset_the_finite_sum() {
    let specs = vec![
        spec("sum", Some(DataType::Float64), &[], true),
        spec("avg", Some(DataType::Float64), &[], true),
    ];
    let sum_and_avg = |out: &[ArrayRef]| (as_f64s(&out[0])[0], as_f64s(&out[1])[0]);

    // +inf in one session and -inf in the other make NaN; taking both back out of the merged
    // state restores the finite sum.
    let mut sessions = Sessions::new(
        specs.clone(),
        doubles(&[Some(1.5), Some(f64::INFINITY), None]),
        doubles(&[Some(f64::NEG_INFINITY), Some(2.25)]),
    );
    let (sum, avg) = sum_and_avg(&sessions.assert_exact());
    assert!(sum.is_some_and(f64::is_nan) && avg.is_some_and(f64::is_nan));
    sessions.apply(
        doubles(&[Some(f64::INFINITY), Some(f64::NEG_INFINITY)]),
        Some(&[-1, -1]),
    );
    assert_eq!(
        sum_and_avg(&sessions.assert_exact()),
        (Some(3.75), Some(1.875))
    );

    // A NaN counts as a value for AVG; taking it back leaves the other session's values.
    let mut sessions = Sessions::new(
        specs.clone(),
        doubles(&[Some(1.0), Some(f64::NEG_INFINITY)]),
        doubles(&[Some(f64::NAN)]),
    );
    let (sum, avg) = sum_and_avg(&sessions.assert_exact());
    assert!(sum.is_some_and(f64::is_nan) && avg.is_some_and(f64::is_nan));
    sessions.apply(doubles(&[Some(f64::NAN)]), Some(&[-1]));
    assert_eq!(
        sum_and_avg(&sessions.assert_exact()),
        (Some(f64::NEG_INFINITY), Some(f64::NEG_INFINITY))
    );
    sessions.apply(doubles(&[Some(f64::NEG_INFINITY)]), Some(&[-1]));
    assert_eq!(
        sum_and_avg(&sessions.assert_exact()),
        (Some(1.0), Some(1.0))
    );

    // When no finite value is left, the finite sum is exactly 0, not the rounding error of
    // adding the two partial sums.
    let (first, second) = (0.1 + 0.2 + 0.3, -0.3 - 0.2 - 0.1);
    assert_ne!(first + second, 0.0);
    let values = doubles(&[Some(0.1), Some(0.2), Some(0.3)]);
    let backwards = doubles(&[Some(0.3), Some(0.2), Some(0.1)]);
    let sessions = Sessions::with_signs(specs, values, None, backwards, Some(&[-1, -1, -1]));
    let (sum, avg) = sum_and_avg(&sessions.assert_exact());
    assert_eq!(sum.map(f64::to_bits), Some(0f64.to_bits()));
    assert_eq!(avg, Some(0.0));
}

#[test]
fn merge_decimal_sums_stay_exact_near_and_past_overflow() {
    let big = 10i128.pow(38) - 1;
    let ty = Some(DataType::Decimal128(38, 0));
    let specs = vec![
        spec("sum", ty.clone(), &[], true),
        spec("avg", ty, &[], true),
    ];
    let decimal = |out: &ArrayRef| -> Vec<Option<i128>> {
        out.as_primitive::<arrow::datatypes::Decimal128Type>()
            .iter()
            .collect()
    };

    // Each session leaves the range of i128, upwards and downwards; together they are back.
    let sessions = Sessions::new(
        specs.clone(),
        decimals(&[Some(big), Some(big), Some(big), Some(5)], 38, 0),
        decimals(&[Some(-big), Some(-big), Some(-big), Some(2)], 38, 0),
    );
    for (state, high) in sessions.run.states[..2].iter().zip([1, -1]) {
        let AggState::SumDecimal(sum) = &state.aggs[0] else {
            panic!("{state:?}")
        };
        assert_eq!(sum.high, high);
    }
    let out = sessions.assert_exact();
    assert_eq!(decimal(&out[0]), [Some(7)]);
    assert_eq!(as_f64s(&out[1]), [Some(7.0 / 8.0)]);

    // Adding the two low parts wraps: the merged sum is out of range until a value is taken
    // back, and exact again then.
    for sign in [1, -1] {
        let mut sessions = Sessions::new(
            specs.clone(),
            decimals(&[Some(sign * big)], 38, 0),
            decimals(&[Some(sign * big), Some(-sign)], 38, 0),
        );
        let err = sessions.run.agg.evaluate(&[&sessions.merged]).unwrap_err();
        assert!(
            matches!(err, AggregateError::DecimalOverflow { .. }),
            "{err}"
        );
        sessions.assert_exact();
        sessions.apply(decimals(&[Some(sign * big)], 38, 0), Some(&[-1]));
        let out = sessions.assert_exact();
        assert_eq!(decimal(&out[0]), [Some(sign * big - sign)]);
    }

    // Out of the range of DECIMAL(5, 2) together, not alone.
    let mut sessions = Sessions::new(
        vec![spec("sum", Some(DataType::Decimal128(5, 2)), &[], true)],
        decimals(&[Some(99_999)], 5, 2),
        decimals(&[Some(1)], 5, 2),
    );
    let err = sessions.run.agg.evaluate(&[&sessions.merged]).unwrap_err();
    assert!(matches!(
        err,
        AggregateError::DecimalOverflow {
            precision: 5,
            scale: 2
        }
    ));
    sessions.assert_exact();
    sessions.apply(decimals(&[Some(1)], 5, 2), Some(&[-1]));
    assert_eq!(decimal(&sessions.assert_exact()[0]), [Some(99_999)]);
}

#[test]
fn merge_min_max_keeps_the_extreme_of_both_sessions() {
    let t = Some(DataType::Utf8);
    let specs = || {
        vec![
            spec("min", t.clone(), &[], false),
            spec("max", t.clone(), &[], false),
            spec("min", t.clone(), &[], true),
            spec("max", t.clone(), &[], true),
        ]
    };
    let cases: [(Strs, Strs, Option<&str>, Option<&str>); 6] = [
        (
            &[Some("pear"), None, Some("apple")],
            &[Some("apricot"), Some("zebra")],
            Some("apple"),
            Some("zebra"),
        ),
        (
            &[Some("b"), Some("ab")],
            &[Some("a"), None],
            Some("a"),
            Some("b"),
        ),
        (
            &[Some("ab")],
            &[Some("a"), Some("abc")],
            Some("a"),
            Some("abc"),
        ),
        (&[None], &[Some("m")], Some("m"), Some("m")),
        (&[Some("m")], &[], Some("m"), Some("m")),
        (&[None], &[None], None, None),
    ];
    for (first, second, min, max) in cases {
        let sessions = Sessions::new(specs(), strings(first), strings(second));
        let out = sessions.assert_exact();
        let (min, max) = (min.map(str::to_string), max.map(str::to_string));
        for (i, expected) in [&min, &max, &min, &max].into_iter().enumerate() {
            let expected = std::slice::from_ref(expected);
            assert_eq!(as_strings(&out[i]), expected, "{i}: {first:?} {second:?}");
        }
    }

    // A table's MIN keeps every value of both sessions, to retract to the next one.
    let mut sessions = Sessions::new(
        vec![spec("min", Some(DataType::Int64), &[], true)],
        int64s(&[Some(5), Some(3)]),
        int64s(&[Some(1), Some(4)]),
    );
    for (retracted, min) in [(1, 3), (3, 4), (4, 5)] {
        sessions.apply(int64s(&[Some(retracted)]), Some(&[-1]));
        assert_eq!(as_i64s(&sessions.assert_exact()[0]), [Some(min)]);
    }
}

#[test]
fn merge_latest_and_earliest_treat_from_as_the_later_session() {
    let t = Some(DataType::Utf8);
    let specs = || {
        let mut specs = Vec::new();
        for ignore_nulls in [true, false] {
            let flag = [LiteralArg::Boolean(ignore_nulls)];
            specs.push(spec("latest_by_offset", t.clone(), &flag, false));
            specs.push(spec("earliest_by_offset", t.clone(), &flag, false));
        }
        specs
    };
    // (first, second, [latest, earliest, latest keeping NULLs, earliest keeping NULLs])
    let cases: [(Strs, Strs, [Option<&str>; 4]); 6] = [
        (
            &[Some("a"), Some("b")],
            &[Some("c"), None],
            [Some("c"), Some("a"), None, Some("a")],
        ),
        (&[], &[Some("x")], [Some("x"); 4]),
        (
            &[None],
            &[Some("x")],
            [Some("x"), Some("x"), Some("x"), None],
        ),
        (&[Some("y")], &[], [Some("y"); 4]),
        (
            &[Some("y")],
            &[None],
            [Some("y"), Some("y"), None, Some("y")],
        ),
        (&[], &[], [None; 4]),
    ];
    for (first, second, expected) in cases {
        let sessions = Sessions::new(specs(), strings(first), strings(second));
        let out = sessions.assert_exact();
        for (i, value) in expected.into_iter().enumerate() {
            assert_eq!(
                as_strings(&out[i]),
                [value.map(str::to_string)],
                "aggregate {i}: {first:?} {second:?}"
            );
        }
    }
}

#[test]
fn merge_collect_list_appends_up_to_the_limit() {
    let limits = AggregateLimits {
        collection_max_entries: 3,
        ..AggregateLimits::default()
    };
    let specs = || {
        vec![
            spec_with("collect_list", Some(DataType::Utf8), &[], false, &limits),
            spec_with("collect_list", Some(DataType::Utf8), &[], true, &limits),
        ]
    };
    let cases: [(Strs, Strs, Strs); 5] = [
        (
            &[Some("a"), None],
            &[Some("b"), Some("c"), Some("d")],
            &[Some("a"), None, Some("b")],
        ),
        (
            &[Some("a"), Some("b"), Some("c"), Some("d")],
            &[Some("e")],
            &[Some("a"), Some("b"), Some("c")],
        ),
        (
            &[],
            &[Some("a"), Some("b"), Some("c"), Some("d")],
            &[Some("a"), Some("b"), Some("c")],
        ),
        (
            &[Some("a")],
            &[None, Some("a")],
            &[Some("a"), None, Some("a")],
        ),
        (&[Some("b")], &[], &[Some("b")]),
    ];
    for (first, second, expected) in cases {
        let sessions = Sessions::new(specs(), strings(first), strings(second));
        let out = sessions.assert_exact();
        let expected: Vec<Option<String>> =
            expected.iter().map(|v| v.map(str::to_string)).collect();
        for list in &out {
            assert_eq!(as_lists(list, as_strings), std::slice::from_ref(&expected));
        }
    }
}

#[test]
fn merge_topk_of_a_stream_keeps_k_values_and_of_a_table_all() {
    let topk = |k: i64, retractable: bool| {
        spec(
            "topk",
            Some(DataType::Int64),
            &[LiteralArg::Integer(k)],
            retractable,
        )
    };
    let sessions = Sessions::new(
        vec![topk(3, false)],
        int64s(&[Some(5), Some(1), Some(9), Some(5)]),
        int64s(&[Some(7), Some(5), Some(2), None]),
    );
    let out = sessions.assert_exact();
    assert_eq!(
        as_lists(&out[0], as_i64s),
        [vec![Some(9), Some(7), Some(5)]]
    );
    assert_eq!(topk_total(&sessions.merged), 3);

    // Pruning takes part of a count: {5: 3, 9: 1} keeps two 5s.
    let sessions = Sessions::new(
        vec![topk(3, false)],
        int64s(&[Some(5), Some(5), Some(5)]),
        int64s(&[Some(9), Some(1)]),
    );
    let out = sessions.assert_exact();
    assert_eq!(
        as_lists(&out[0], as_i64s),
        [vec![Some(9), Some(5), Some(5)]]
    );
    assert_eq!(topk_total(&sessions.merged), 3);

    // A table keeps every value, to retract to the next ones.
    let mut sessions = Sessions::new(
        vec![topk(2, true)],
        int64s(&[Some(5), Some(1)]),
        int64s(&[Some(9), Some(7)]),
    );
    assert_eq!(topk_total(&sessions.merged), 4);
    assert_eq!(
        as_lists(&sessions.assert_exact()[0], as_i64s),
        [vec![Some(9), Some(7)]]
    );
    sessions.apply(int64s(&[Some(9), Some(7)]), Some(&[-1, -1]));
    assert_eq!(
        as_lists(&sessions.assert_exact()[0], as_i64s),
        [vec![Some(5), Some(1)]]
    );
}

#[test]
fn merge_distinct_collections_respect_their_limits() {
    let limits = AggregateLimits {
        collection_max_entries: 3,
        count_distinct_max_values: 3,
        ..AggregateLimits::default()
    };
    let t = Some(DataType::Utf8);
    let specs = || {
        vec![
            spec_with("count_distinct", t.clone(), &[], false, &limits),
            spec_with("collect_set", t.clone(), &[], false, &limits),
            spec_with("histogram", t.clone(), &[], false, &limits),
        ]
    };
    let sizes = |state: &GroupState| -> Vec<usize> {
        state
            .aggs
            .iter()
            .map(|agg| match agg {
                AggState::Multiset(set) => set.distinct(),
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let a = |v: &str, c: i64| (v.to_string(), c);

    // Below the limit, and with `into` full: exactly as updating.
    let sessions = Sessions::new(
        specs(),
        strings(&[Some("a"), None]),
        strings(&[Some("b"), Some("a")]),
    );
    let out = sessions.assert_exact();
    assert_eq!(as_i64s(&out[0]), [Some(2)]);
    assert_eq!(as_lists(&out[1], as_strings), [vec![None, s("a"), s("b")]]);
    assert_eq!(as_maps(&out[2]), [vec![a("a", 2), a("b", 1)]]);

    let sessions = Sessions::new(
        specs(),
        strings(&[Some("c"), Some("a"), Some("b")]),
        strings(&[Some("c"), Some("d")]),
    );
    let out = sessions.assert_exact();
    assert_eq!(as_i64s(&out[0]), [Some(3)]);
    assert_eq!(
        as_lists(&out[1], as_strings),
        [vec![s("a"), s("b"), s("c")]]
    );
    assert_eq!(as_maps(&out[2]), [vec![a("a", 1), a("b", 1), a("c", 2)]]);

    // Reaching the limit while merging: updating keeps the first values seen (d, c), which
    // `from` no longer knows; the merge takes `from`'s new values in value order (b, c). The
    // state never exceeds the limit, and COUNT_DISTINCT's count is still exact.
    let sessions = Sessions::new(
        specs(),
        strings(&[Some("a")]),
        strings(&[Some("d"), Some("c"), Some("b"), Some("a")]),
    );
    assert_eq!(sizes(&sessions.run.states[2]), [3, 3, 3]);
    assert_eq!(sizes(&sessions.merged), [3, 3, 3]);
    let out = sessions.run.agg.evaluate(&[&sessions.merged]).unwrap();
    let both = sessions
        .run
        .agg
        .evaluate(&[&sessions.run.states[2]])
        .unwrap();
    assert_eq!(&out[0], &both[0]);
    assert_eq!(as_i64s(&out[0]), [Some(3)]);
    assert_eq!(
        as_lists(&both[1], as_strings),
        [vec![s("a"), s("c"), s("d")]]
    );
    assert_eq!(
        as_lists(&out[1], as_strings),
        [vec![s("a"), s("b"), s("c")]]
    );
    // `from` dropped its second "a" at its own limit, so only `into`'s is counted.
    assert_eq!(as_maps(&both[2]), [vec![a("a", 2), a("c", 1), a("d", 1)]]);
    assert_eq!(as_maps(&out[2]), [vec![a("a", 1), a("b", 1), a("c", 1)]]);
}

#[test]
fn merging_at_the_limits_never_grows_a_state_past_them() {
    let limits = AggregateLimits {
        collection_max_entries: 3,
        count_distinct_max_values: 4,
        ..AggregateLimits::default()
    };
    let t = Some(DataType::Utf8);
    let specs = || {
        vec![
            spec_with("collect_list", t.clone(), &[], false, &limits),
            spec_with("count_distinct", t.clone(), &[], false, &limits),
            spec_with("collect_set", t.clone(), &[], false, &limits),
            spec_with("histogram", t.clone(), &[], false, &limits),
            spec_with("topk", t.clone(), &[LiteralArg::Integer(2)], false, &limits),
        ]
    };
    let mut rng = Rng(99);
    for trial in 0..300 {
        let (first, _) = random_session(&mut rng, false);
        let (second, _) = random_session(&mut rng, false);
        let context = format!("trial {trial}: {first:?}, {second:?}");
        let sessions = Sessions::new(
            specs(),
            coded_column(&DataType::Utf8, &first),
            coded_column(&DataType::Utf8, &second),
        );
        let (merged, both) = (&sessions.merged, &sessions.run.states[2]);
        // COLLECT_LIST and TOPK: exactly as updating.
        assert_eq!(merged.aggs[0], both.aggs[0], "{context}");
        assert_eq!(merged.aggs[4], both.aggs[4], "{context}");
        for (i, max) in [(1, 4), (2, 3), (3, 3)] {
            let (AggState::Multiset(merged), AggState::Multiset(both)) =
                (&merged.aggs[i], &both.aggs[i])
            else {
                panic!("{context}")
            };
            // As large as updating makes it, never larger.
            assert_eq!(merged.distinct(), both.distinct(), "{i}, {context}");
            assert!(merged.distinct() <= max, "{i}, {context}");
            // `into`'s values are all kept.
            let AggState::Multiset(into) = &sessions.run.states[0].aggs[i] else {
                panic!("{context}")
            };
            assert!(into.counts.keys().all(|v| merged.contains(v)), "{context}");
        }
        // COUNT_DISTINCT counts exactly without retractions, at its limit too.
        let out = sessions.run.agg.evaluate(&[merged]).unwrap();
        let expected = sessions.run.agg.evaluate(&[both]).unwrap();
        for i in [0, 1, 4] {
            assert_eq!(&out[i], &expected[i], "{i}, {context}");
        }
    }
}

#[test]
fn merging_a_state_of_another_aggregator_is_an_error() {
    let agg = Aggregator::new(vec![
        spec("count_star", None, &[], false),
        spec("min", Some(DataType::Int64), &[], false),
    ])
    .unwrap();
    let mut states = vec![agg.new_state()];
    let args = vec![vec![], vec![int64s(&[Some(4), Some(2)])]];
    agg.update(&mut states, &[0, 0], &args, None).unwrap();
    let mut state = states.pop().unwrap();
    let before = state.clone();

    // Fewer aggregates, as `from` and as `into`.
    let other = Aggregator::new(vec![spec("count_star", None, &[], false)]).unwrap();
    let err = agg.merge(&mut state, &other.new_state()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid aggregate input: a state has 1 aggregates, this aggregator has 2"
    );
    let mut foreign = other.new_state();
    let err = agg.merge(&mut foreign, &state).unwrap_err();
    assert!(matches!(err, AggregateError::InvalidInput(_)), "{err}");
    assert_eq!(foreign, other.new_state());

    // As many aggregates, but the second keeps another kind of state (a table's MIN keeps a
    // multiset, a stream's one value): nothing changes, not even the first aggregate's.
    let table = Aggregator::new(vec![
        spec("count_star", None, &[], false),
        spec("min", Some(DataType::Int64), &[], true),
    ])
    .unwrap();
    let mut from = vec![table.new_state()];
    table.update(&mut from, &[0, 0], &args, None).unwrap();
    let err = agg.merge(&mut state, &from[0]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid aggregate input: the state of aggregate 1 was not made by this aggregator"
    );
    assert_eq!(state, before);
    let mut into = from[0].clone();
    assert!(agg.merge(&mut into, &state).is_err());
    assert_eq!(into, from[0]);
}
