//! One aggregate call: which function, on which type, with which literal arguments, and whether
//! it must support retraction. Everything that can be checked before data arrives is checked
//! here, so that [`Aggregator::update`](crate::Aggregator::update) only fails on caller bugs.

use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, AsArray, new_null_array};
use arrow::datatypes::{
    DataType, Field, Fields, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    TimeUnit, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::row::{RowConverter, SortField};

use crate::error::AggregateError;
use crate::row_bytes::RowKind;
use crate::state::{AggState, DoubleSum, Multiset, WideSum};

/// Upper bounds on the per-group state of the collecting functions, so that one hot group cannot
/// grow its state (a RocksDB value, a changelog record) without limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateLimits {
    /// At most this many entries per group: elements of a `COLLECT_LIST`, distinct values of a
    /// `COLLECT_SET`, distinct keys of a `HISTOGRAM`. Further values (new values, for the last
    /// two) are ignored silently, like ksqlDB's `ksql.functions.collect_list.limit` and
    /// `ksql.functions.collect_set.limit`. Default 1000, ksqlDB's value (fixed in Confluent
    /// Cloud, and HISTOGRAM's hard-coded limit).
    pub collection_max_entries: usize,
    /// At most this many distinct values are counted per group by `COUNT_DISTINCT`; once a group
    /// has that many, further *new* values are not counted (values already counted still are,
    /// and retracting a value that was never counted changes nothing). Default 1,000,000. Eddy
    /// counts exactly, unlike ksqlDB's HyperLogLog estimate, so the state grows with the values.
    pub count_distinct_max_values: usize,
    /// Most bytes of one group's stored state (a RocksDB value and a changelog record, with its
    /// key). This crate does not enforce it: the operator that stores states skips an update
    /// that would exceed it. Default 8 MiB.
    pub state_max_bytes: usize,
}

impl Default for AggregateLimits {
    fn default() -> Self {
        AggregateLimits {
            collection_max_entries: 1000,
            count_distinct_max_values: 1_000_000,
            state_max_bytes: 8 << 20,
        }
    }
}

/// A trailing literal argument of an aggregate call: TOPK's `k`, the `ignore_nulls` flag of
/// LATEST_BY_OFFSET and EARLIEST_BY_OFFSET. The other variants exist so that a wrong literal gets
/// a precise error rather than a planner-side guess.
#[derive(Debug, Clone, PartialEq)]
pub enum LiteralArg {
    Boolean(bool),
    Integer(i64),
    Double(f64),
    String(String),
    Null,
    /// A literal of another type, by its ksqlDB type name (for the error that rejects it).
    Other(String),
}

impl LiteralArg {
    /// The literal held by a one-row Arrow array, such as DataFusion's
    /// `ScalarValue::to_array()` gives (this crate does not depend on DataFusion): integers of
    /// any width are [`Integer`](Self::Integer), floats [`Double`](Self::Double), strings
    /// [`String`](Self::String), a NULL of any type [`Null`](Self::Null), any other type
    /// [`Other`](Self::Other). An array that is not one row long is an
    /// [`AggregateError::InvalidInput`].
    pub fn try_from_array(array: &dyn Array) -> Result<LiteralArg, AggregateError> {
        if array.len() != 1 {
            return Err(AggregateError::input(format!(
                "a literal argument is one value, got an array of {}",
                array.len()
            )));
        }
        if array.logical_nulls().is_some_and(|nulls| nulls.is_null(0)) {
            return Ok(LiteralArg::Null);
        }
        let integer = |value: Option<i64>| match value {
            Some(value) => LiteralArg::Integer(value),
            None => LiteralArg::Other(sql_type_name(array.data_type())),
        };
        Ok(match array.data_type() {
            DataType::Boolean => LiteralArg::Boolean(array.as_boolean().value(0)),
            DataType::Int8 => integer(Some(array.as_primitive::<Int8Type>().value(0).into())),
            DataType::Int16 => integer(Some(array.as_primitive::<Int16Type>().value(0).into())),
            DataType::Int32 => integer(Some(array.as_primitive::<Int32Type>().value(0).into())),
            DataType::Int64 => integer(Some(array.as_primitive::<Int64Type>().value(0))),
            DataType::UInt8 => integer(Some(array.as_primitive::<UInt8Type>().value(0).into())),
            DataType::UInt16 => integer(Some(array.as_primitive::<UInt16Type>().value(0).into())),
            DataType::UInt32 => integer(Some(array.as_primitive::<UInt32Type>().value(0).into())),
            DataType::UInt64 => {
                integer(array.as_primitive::<UInt64Type>().value(0).try_into().ok())
            }
            DataType::Float32 => {
                LiteralArg::Double(array.as_primitive::<Float32Type>().value(0).into())
            }
            DataType::Float64 => LiteralArg::Double(array.as_primitive::<Float64Type>().value(0)),
            DataType::Utf8 => LiteralArg::String(array.as_string::<i32>().value(0).to_string()),
            DataType::LargeUtf8 => {
                LiteralArg::String(array.as_string::<i64>().value(0).to_string())
            }
            DataType::Utf8View => LiteralArg::String(array.as_string_view().value(0).to_string()),
            other => LiteralArg::Other(sql_type_name(other)),
        })
    }
}

impl fmt::Display for LiteralArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LiteralArg::Boolean(true) => f.write_str("TRUE"),
            LiteralArg::Boolean(false) => f.write_str("FALSE"),
            LiteralArg::Integer(v) => write!(f, "{v}"),
            LiteralArg::Double(v) => write!(f, "{v}"),
            LiteralArg::String(v) => write!(f, "'{}'", v.replace('\'', "''")),
            LiteralArg::Null => f.write_str("NULL"),
            LiteralArg::Other(type_name) => write!(f, "a {type_name} value"),
        }
    }
}

/// The largest `k` of `TOPK(x, k)`.
pub const TOPK_MAX_K: i64 = 1000;

/// The functions, as the planner registers them (lowercase, sorted). `count_star` is not among
/// them: it is the name [`AggregateSpec::new`] takes for `COUNT(*)`.
const FUNCTION_NAMES: &[&str] = &[
    "avg",
    "collect_list",
    "collect_set",
    "count",
    "count_distinct",
    "earliest_by_offset",
    "histogram",
    "latest_by_offset",
    "max",
    "min",
    "sum",
    "topk",
];

pub(crate) fn function_list() -> String {
    FUNCTION_NAMES
        .iter()
        .map(|name| name.to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(", ")
}

const NUMERIC_TYPES: &str = "INT, BIGINT, DOUBLE or DECIMAL";
const SCALAR_TYPES: &str =
    "INT, BIGINT, DOUBLE, DECIMAL, STRING, BYTES, BOOLEAN, DATE, TIME or TIMESTAMP";
const STRING_TYPE: &str = "STRING";

/// The function of an aggregate call, without its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    CountStar,
    Count,
    Sum,
    Avg,
    Min,
    Max,
    CountDistinct,
    LatestByOffset,
    EarliestByOffset,
    CollectList,
    CollectSet,
    TopK,
    Histogram,
}

impl Name {
    fn parse(name: &str) -> Option<Name> {
        Some(match name.to_ascii_lowercase().as_str() {
            "count_star" => Name::CountStar,
            "count" => Name::Count,
            "sum" => Name::Sum,
            "avg" => Name::Avg,
            "min" => Name::Min,
            "max" => Name::Max,
            "count_distinct" => Name::CountDistinct,
            "latest_by_offset" => Name::LatestByOffset,
            "earliest_by_offset" => Name::EarliestByOffset,
            "collect_list" => Name::CollectList,
            "collect_set" => Name::CollectSet,
            "topk" => Name::TopK,
            "histogram" => Name::Histogram,
            _ => return None,
        })
    }

    /// The SQL name, for messages.
    fn sql(self) -> &'static str {
        match self {
            Name::CountStar | Name::Count => "COUNT",
            Name::Sum => "SUM",
            Name::Avg => "AVG",
            Name::Min => "MIN",
            Name::Max => "MAX",
            Name::CountDistinct => "COUNT_DISTINCT",
            Name::LatestByOffset => "LATEST_BY_OFFSET",
            Name::EarliestByOffset => "EARLIEST_BY_OFFSET",
            Name::CollectList => "COLLECT_LIST",
            Name::CollectSet => "COLLECT_SET",
            Name::TopK => "TOPK",
            Name::Histogram => "HISTOGRAM",
        }
    }

    fn usage(self) -> &'static str {
        match self {
            Name::CountStar | Name::Count => "COUNT(x) or COUNT(*)",
            Name::Sum => "SUM(x)",
            Name::Avg => "AVG(x)",
            Name::Min => "MIN(x)",
            Name::Max => "MAX(x)",
            Name::CountDistinct => "COUNT_DISTINCT(x)",
            Name::LatestByOffset => "LATEST_BY_OFFSET(x [, ignore_nulls])",
            Name::EarliestByOffset => "EARLIEST_BY_OFFSET(x [, ignore_nulls])",
            Name::CollectList => "COLLECT_LIST(x)",
            Name::CollectSet => "COLLECT_SET(x)",
            Name::TopK => "TOPK(x, k)",
            Name::Histogram => "HISTOGRAM(x)",
        }
    }

    /// How many literal arguments may follow the column: (least, most).
    fn literal_range(self) -> (usize, usize) {
        match self {
            Name::TopK => (1, 1),
            Name::LatestByOffset | Name::EarliestByOffset => (0, 1),
            _ => (0, 0),
        }
    }

    fn count_error(self, found: usize) -> AggregateError {
        AggregateError::ArgumentCount {
            function: self.sql(),
            found,
            usage: self.usage(),
        }
    }

    /// The output type for a column of type `input`, or the error naming what is accepted.
    fn output_type(self, input: &DataType) -> Result<DataType, AggregateError> {
        let reject = |expected: &'static str| AggregateError::ArgumentType {
            function: self.sql(),
            found: sql_type_name(input),
            expected,
        };
        match self {
            Name::CountStar | Name::Count => Ok(DataType::Int64),
            Name::Sum => Numeric::of(input)
                .map(|_| input.clone())
                .ok_or_else(|| reject(NUMERIC_TYPES)),
            Name::Avg => Numeric::of(input)
                .map(|_| DataType::Float64)
                .ok_or_else(|| reject(NUMERIC_TYPES)),
            Name::Min | Name::Max | Name::LatestByOffset | Name::EarliestByOffset => {
                RowKind::of(input)
                    .map(|_| input.clone())
                    .ok_or_else(|| reject(SCALAR_TYPES))
            }
            Name::CountDistinct => RowKind::of(input)
                .map(|_| DataType::Int64)
                .ok_or_else(|| reject(SCALAR_TYPES)),
            Name::CollectList | Name::CollectSet | Name::TopK => RowKind::of(input)
                .map(|_| list_type(input.clone()))
                .ok_or_else(|| reject(SCALAR_TYPES)),
            Name::Histogram => match input {
                DataType::Utf8 => Ok(histogram_type()),
                _ => Err(reject(STRING_TYPE)),
            },
        }
    }
}

/// The numeric input types of SUM and AVG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Numeric {
    Int,
    BigInt,
    Double,
    Decimal { precision: u8, scale: i8 },
}

impl Numeric {
    fn of(data_type: &DataType) -> Option<Numeric> {
        match data_type {
            DataType::Int32 => Some(Numeric::Int),
            DataType::Int64 => Some(Numeric::BigInt),
            DataType::Float64 => Some(Numeric::Double),
            DataType::Decimal128(precision, scale) => Some(Numeric::Decimal {
                precision: *precision,
                scale: *scale,
            }),
            _ => None,
        }
    }
}

/// The function of an aggregate call, with its literal arguments resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    CountStar,
    Count,
    Sum(Numeric),
    Avg(Numeric),
    Min,
    Max,
    CountDistinct,
    LatestByOffset { ignore_nulls: bool },
    EarliestByOffset { ignore_nulls: bool },
    CollectList,
    CollectSet,
    TopK { k: usize },
    Histogram,
}

/// The arrow-row encoding of one aggregate's input: values that a state stores are kept as
/// these bytes, whose order is the values' order.
#[derive(Debug)]
pub(crate) struct RowCodec {
    pub(crate) converter: RowConverter,
    pub(crate) kind: RowKind,
    pub(crate) data_type: DataType,
}

impl RowCodec {
    fn new(data_type: &DataType) -> Result<Option<Arc<RowCodec>>, AggregateError> {
        let Some(kind) = RowKind::of(data_type) else {
            return Ok(None);
        };
        let converter = RowConverter::new(vec![SortField::new(data_type.clone())])?;
        Ok(Some(Arc::new(RowCodec {
            converter,
            kind,
            data_type: data_type.clone(),
        })))
    }

    /// The encoding of a NULL value, for states that hold no value.
    pub(crate) fn null_row(&self) -> Result<Vec<u8>, AggregateError> {
        let nulls = new_null_array(&self.data_type, 1);
        let rows = self.converter.convert_columns(&[nulls])?;
        Ok(rows.row(0).data().to_vec())
    }
}

/// One aggregate call of a query, checked and ready to run.
#[derive(Debug, Clone)]
pub struct AggregateSpec {
    name: Name,
    pub(crate) func: Func,
    input_type: Option<DataType>,
    output_type: DataType,
    retractable: bool,
    pub(crate) limits: AggregateLimits,
    /// Present for the functions that store values (MIN, MAX, COUNT_DISTINCT, COLLECT_*, TOPK,
    /// HISTOGRAM, *_BY_OFFSET).
    pub(crate) codec: Option<Arc<RowCodec>>,
    /// The encoding of NULL (empty when there is no codec).
    pub(crate) null_row: Arc<[u8]>,
}

impl AggregateSpec {
    /// Checks one aggregate call.
    ///
    /// * `name`: the lowercase function name as written (`"count"`, `"sum"`,
    ///   `"latest_by_offset"`, ...; matched case-insensitively); `"count_star"` for `COUNT(*)`
    ///   (`"count"` with no argument means the same).
    /// * `arg_types`: the Arrow types of the column arguments (one, none for `COUNT(*)`).
    /// * `literal_args`: the trailing literal arguments: TOPK's `k` (an integer from 1 to 1000),
    ///   the optional `ignore_nulls` of LATEST_BY_OFFSET and EARLIEST_BY_OFFSET (a boolean,
    ///   default true).
    /// * `retractable`: the input is a TABLE, so rows are also retracted (see
    ///   [`Aggregator::update`](crate::Aggregator::update)). LATEST_BY_OFFSET and
    ///   EARLIEST_BY_OFFSET refuse it.
    /// * `limits`: the state bounds of the collecting functions.
    pub fn new(
        name: &str,
        arg_types: &[DataType],
        literal_args: &[LiteralArg],
        retractable: bool,
        limits: &AggregateLimits,
    ) -> Result<Self, AggregateError> {
        let mut fname = Name::parse(name).ok_or_else(|| AggregateError::UnknownFunction {
            name: name.to_ascii_uppercase(),
        })?;
        let found = arg_types.len() + literal_args.len();
        if fname == Name::Count && found == 0 {
            fname = Name::CountStar;
        }
        let (least, most) = fname.literal_range();
        let columns = if fname == Name::CountStar { 0 } else { 1 };
        if arg_types.len() != columns || literal_args.len() < least || literal_args.len() > most {
            return Err(fname.count_error(found));
        }
        let input_type = arg_types.first().cloned();
        let output_type = match &input_type {
            Some(input) => fname.output_type(input)?,
            None => DataType::Int64,
        };
        let func = resolve(fname, input_type.as_ref(), literal_args)?;
        if retractable && matches!(fname, Name::LatestByOffset | Name::EarliestByOffset) {
            return Err(AggregateError::NotRetractable {
                function: fname.sql(),
            });
        }
        let stores_values = !matches!(
            func,
            Func::CountStar | Func::Count | Func::Sum(_) | Func::Avg(_)
        );
        let codec = match (&input_type, stores_values) {
            (Some(input), true) => RowCodec::new(input)?,
            _ => None,
        };
        let null_row: Arc<[u8]> = match &codec {
            Some(codec) => codec.null_row()?.into(),
            None => Arc::from(Vec::new()),
        };
        Ok(AggregateSpec {
            name: fname,
            func,
            input_type,
            output_type,
            retractable,
            limits: limits.clone(),
            codec,
            null_row,
        })
    }

    /// The Arrow type of the results.
    pub fn output_type(&self) -> &DataType {
        &self.output_type
    }

    /// Whether a result can be NULL: only MIN, MAX, LATEST_BY_OFFSET and EARLIEST_BY_OFFSET
    /// (no value yet, or a NULL kept by `ignore_nulls = false`). The others have a value for
    /// every group: 0, 0.0, an empty ARRAY or an empty MAP.
    pub fn output_nullable(&self) -> bool {
        matches!(
            self.func,
            Func::Min | Func::Max | Func::LatestByOffset { .. } | Func::EarliestByOffset { .. }
        )
    }

    /// The Arrow type of the column argument (`None` for `COUNT(*)`).
    pub fn input_type(&self) -> Option<&DataType> {
        self.input_type.as_ref()
    }

    /// The SQL name of the function, uppercase (`COUNT` for `COUNT(*)` too).
    pub fn name(&self) -> &'static str {
        self.name.sql()
    }

    /// Whether the spec was made for a table input.
    pub fn retractable(&self) -> bool {
        self.retractable
    }

    /// Whether the state can take rows back out: false for LATEST_BY_OFFSET and
    /// EARLIEST_BY_OFFSET, and for MIN, MAX and TOPK made for a stream (they keep a bounded
    /// state that has forgotten the values a retraction would need).
    pub(crate) fn supports_retraction(&self) -> bool {
        match self.func {
            Func::LatestByOffset { .. } | Func::EarliestByOffset { .. } => false,
            Func::Min | Func::Max | Func::TopK { .. } => self.retractable,
            _ => true,
        }
    }

    /// The supported function names, lowercase, for the planner to register. `COUNT(*)` is
    /// `count` with no argument (or `count_star`, which is not listed).
    pub fn function_names() -> &'static [&'static str] {
        FUNCTION_NAMES
    }

    /// The result type of a call, without building a spec: for registering planning stubs with
    /// DataFusion, which passes the types of every argument, literals included. So the trailing
    /// literal arguments may be given here or left out (TOPK's `k`, the `ignore_nulls` flag):
    /// only their number is checked, not their types; [`AggregateSpec::new`] checks their
    /// values.
    pub fn return_type(name: &str, arg_types: &[DataType]) -> Result<DataType, AggregateError> {
        let fname = Name::parse(name).ok_or_else(|| AggregateError::UnknownFunction {
            name: name.to_ascii_uppercase(),
        })?;
        let (_, most) = fname.literal_range();
        match (fname, arg_types) {
            (Name::CountStar, []) | (Name::Count, []) => Ok(DataType::Int64),
            (Name::CountStar, _) => Err(fname.count_error(arg_types.len())),
            (_, [input, literals @ ..]) if literals.len() <= most => fname.output_type(input),
            _ => Err(fname.count_error(arg_types.len())),
        }
    }

    /// The state of a group that has seen no row.
    pub(crate) fn initial_state(&self) -> AggState {
        match self.func {
            Func::CountStar | Func::Count => AggState::Count(0),
            Func::Sum(Numeric::Int | Numeric::BigInt) => AggState::SumInt(0),
            Func::Sum(Numeric::Double) => AggState::SumDouble(DoubleSum::default()),
            Func::Sum(Numeric::Decimal { .. }) => AggState::SumDecimal(WideSum::default()),
            Func::Avg(Numeric::Int | Numeric::BigInt) => AggState::AvgInt(Default::default()),
            Func::Avg(Numeric::Double) => AggState::AvgDouble(DoubleSum::default()),
            Func::Avg(Numeric::Decimal { .. }) => AggState::AvgDecimal(Default::default()),
            Func::Min | Func::Max if !self.retractable => AggState::Extreme(None),
            Func::Min
            | Func::Max
            | Func::CountDistinct
            | Func::CollectSet
            | Func::TopK { .. }
            | Func::Histogram => AggState::Multiset(Multiset::default()),
            Func::CollectList => AggState::List(Vec::new()),
            Func::LatestByOffset { .. } | Func::EarliestByOffset { .. } => AggState::Offset(None),
        }
    }
}

/// Resolves the literal arguments into the function's parameters.
fn resolve(
    name: Name,
    input: Option<&DataType>,
    literals: &[LiteralArg],
) -> Result<Func, AggregateError> {
    let numeric = || input.and_then(Numeric::of).unwrap_or(Numeric::BigInt);
    let ignore_nulls = || match literals.first() {
        None => Ok(true),
        Some(LiteralArg::Boolean(flag)) => Ok(*flag),
        Some(other) => Err(AggregateError::InvalidArgument {
            function: name.sql(),
            message: format!(
                "argument ignore_nulls of {} must be a BOOLEAN literal, got {other}\nhint: write {}",
                name.sql(),
                name.usage()
            ),
        }),
    };
    Ok(match name {
        Name::CountStar => Func::CountStar,
        Name::Count => Func::Count,
        Name::Sum => Func::Sum(numeric()),
        Name::Avg => Func::Avg(numeric()),
        Name::Min => Func::Min,
        Name::Max => Func::Max,
        Name::CountDistinct => Func::CountDistinct,
        Name::LatestByOffset => Func::LatestByOffset {
            ignore_nulls: ignore_nulls()?,
        },
        Name::EarliestByOffset => Func::EarliestByOffset {
            ignore_nulls: ignore_nulls()?,
        },
        Name::CollectList => Func::CollectList,
        Name::CollectSet => Func::CollectSet,
        Name::Histogram => Func::Histogram,
        Name::TopK => match literals.first() {
            Some(LiteralArg::Integer(k)) if (1..=TOPK_MAX_K).contains(k) => Func::TopK {
                // In range 1..=1000, so the conversion is exact.
                k: *k as usize,
            },
            other => {
                let got = other.map_or_else(|| "nothing".to_string(), |lit| lit.to_string());
                return Err(AggregateError::InvalidArgument {
                    function: name.sql(),
                    message: format!(
                        "argument k of TOPK must be an integer literal from 1 to {TOPK_MAX_K}, got {got}"
                    ),
                });
            }
        },
    })
}

/// `ARRAY<item>` as Eddy's other crates expect it.
pub(crate) fn list_type(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", item, true)))
}

/// The fields of HISTOGRAM's `MAP<STRING, BIGINT>` entries.
pub(crate) fn histogram_entry_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Int64, true),
    ])
}

/// HISTOGRAM's `MAP<STRING, BIGINT>` as Eddy's other crates expect it.
pub(crate) fn histogram_type() -> DataType {
    DataType::Map(
        Arc::new(Field::new(
            "entries",
            DataType::Struct(histogram_entry_fields()),
            false,
        )),
        false,
    )
}

/// The ksqlDB name of an Arrow type, for messages.
pub(crate) fn sql_type_name(data_type: &DataType) -> String {
    match data_type {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Decimal128(precision, scale) => format!("DECIMAL({precision}, {scale})"),
        DataType::Utf8 => "STRING".into(),
        DataType::Binary => "BYTES".into(),
        DataType::Date32 => "DATE".into(),
        DataType::Time32(TimeUnit::Millisecond) => "TIME".into(),
        DataType::Timestamp(TimeUnit::Millisecond, None) => "TIMESTAMP".into(),
        DataType::Null => "NULL".into(),
        DataType::List(item) => format!("ARRAY<{}>", sql_type_name(item.data_type())),
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(fields) if fields.len() == 2 => format!(
                "MAP<{}, {}>",
                sql_type_name(fields[0].data_type()),
                sql_type_name(fields[1].data_type())
            ),
            _ => "MAP".into(),
        },
        DataType::Struct(fields) => format!(
            "STRUCT<{}>",
            fields
                .iter()
                .map(|f| format!("{} {}", f.name(), sql_type_name(f.data_type())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        // Types that Eddy's SQL types do not map to: Arrow's own name.
        other => other.to_string(),
    }
}
