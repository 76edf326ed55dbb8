//! Scalar conversions shared by the formats: a JSON token or a text field into a typed [`Slot`]
//! (ksqlDB's coercion rules), and typed values back into text.

use std::fmt;
use std::num::IntErrorKind;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::error::echo;
use crate::types::{Kind, MS_PER_DAY};

/// One decoded scalar column value of the row being decoded. Strings and bytes live in the row's
/// scratch buffers, or in the record itself; nested values in its node list.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Slot {
    Null,
    Bool(bool),
    I32(i32),
    I64(i64),
    F64(f64),
    I128(i128),
    /// UTF-8 text at `text[start..end]` of the row scratch.
    Text(usize, usize),
    /// UTF-8 text at `[start..end]` of the record part (key or value) the column belongs to, as
    /// the format checked it: a string without escapes is taken from the record, not copied
    /// into the scratch first.
    Input(usize, usize),
    /// Bytes at `bin[start..end]` of the row scratch.
    Bin(usize, usize),
    /// Index in the row scratch's nested nodes.
    Nested(usize),
    /// Returned by [`coerce_text`] for a STRING column: the input text itself is the value.
    SameText,
}

/// Why a token does not convert to a column type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detail {
    WrongType,
    OutOfRange,
    Invalid(&'static str),
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Detail::WrongType => Ok(()),
            Detail::OutOfRange => f.write_str(" (out of range)"),
            Detail::Invalid(why) => write!(f, " ({why})"),
        }
    }
}

/// What was found where a column value was expected, for messages.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Found<'a> {
    Bool(bool),
    Number(&'a str),
    Text(&'a str),
    Array,
    Object,
    /// Raw bytes of the given length (KAFKA format).
    Bytes(usize),
}

impl fmt::Display for Found<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Bool(b) => write!(f, "boolean {b}"),
            Found::Number(n) => {
                let e = echo(n);
                write!(f, "number {}", &e[1..e.len() - 1])
            }
            Found::Text(s) => write!(f, "string {}", echo(s)),
            Found::Array => f.write_str("array"),
            Found::Object => f.write_str("object"),
            Found::Bytes(n) => write!(f, "{n} bytes"),
        }
    }
}

/// `expected INT, found string "abc"`.
pub(crate) fn mismatch(kind: &Kind, found: Found<'_>, detail: Detail) -> String {
    format!("expected {kind}, found {found}{detail}")
}

/// A text token (a JSON string, a DELIMITED field, a JSON map key) into a column of `kind`.
/// BYTES are base64-decoded into `bin`.
pub(crate) fn coerce_text(kind: &Kind, s: &str, bin: &mut Vec<u8>) -> Result<Slot, Detail> {
    match kind {
        Kind::String => Ok(Slot::SameText),
        Kind::Boolean => {
            if s.eq_ignore_ascii_case("true") {
                Ok(Slot::Bool(true))
            } else if s.eq_ignore_ascii_case("false") {
                Ok(Slot::Bool(false))
            } else {
                Err(Detail::WrongType)
            }
        }
        Kind::Int | Kind::Date => s.parse::<i32>().map(Slot::I32).map_err(int_error),
        Kind::Time => match s.parse::<i32>() {
            Ok(v) if (0..MS_PER_DAY).contains(&v) => Ok(Slot::I32(v)),
            Ok(_) => Err(Detail::OutOfRange),
            Err(e) => Err(int_error(e)),
        },
        Kind::BigInt | Kind::Timestamp => s.parse::<i64>().map(Slot::I64).map_err(int_error),
        Kind::Double => s
            .parse::<f64>()
            .map(Slot::F64)
            .map_err(|_| Detail::WrongType),
        Kind::Decimal { precision, scale } => parse_decimal(s, *precision, *scale).map(Slot::I128),
        Kind::Bytes => {
            let start = bin.len();
            match BASE64.decode_vec(s, bin) {
                Ok(()) => Ok(Slot::Bin(start, bin.len())),
                Err(_) => {
                    bin.truncate(start);
                    Err(Detail::Invalid("invalid base64"))
                }
            }
        }
        Kind::Array { .. } | Kind::Map { .. } | Kind::Struct { .. } => Err(Detail::WrongType),
    }
}

fn int_error(e: std::num::ParseIntError) -> Detail {
    match e.kind() {
        IntErrorKind::PosOverflow | IntErrorKind::NegOverflow => Detail::OutOfRange,
        _ => Detail::WrongType,
    }
}

/// A JSON number (its text, already checked against the JSON grammar) into a column of `kind`.
/// Text for a STRING column is appended to `text`.
pub(crate) fn coerce_number(kind: &Kind, num: &str, text: &mut String) -> Result<Slot, Detail> {
    coerce_read_number(kind, num, short_integer(num), text)
}

/// [`coerce_number`] of a number whose reader also gave `short`, its value when it is a short
/// integer (what [`short_integer`] gives), so that its digits are not read twice.
pub(crate) fn coerce_read_number(
    kind: &Kind,
    num: &str,
    short: Option<i64>,
    text: &mut String,
) -> Result<Slot, Detail> {
    let integral = |min, max| match short {
        Some(v) if v < min || v > max => Err(Detail::OutOfRange),
        Some(v) => Ok(v),
        None => integral(num, min, max),
    };
    match kind {
        Kind::Int | Kind::Date => {
            integral(i64::from(i32::MIN), i64::from(i32::MAX)).map(|v| Slot::I32(v as i32))
        }
        Kind::Time => integral(0, i64::from(MS_PER_DAY) - 1).map(|v| Slot::I32(v as i32)),
        Kind::BigInt | Kind::Timestamp => integral(i64::MIN, i64::MAX).map(Slot::I64),
        Kind::Double => num
            .parse::<f64>()
            .map(Slot::F64)
            .map_err(|_| Detail::WrongType),
        Kind::Decimal { precision, scale } => {
            parse_decimal(num, *precision, *scale).map(Slot::I128)
        }
        Kind::String => {
            let start = text.len();
            text.push_str(num);
            Ok(Slot::Text(start, text.len()))
        }
        Kind::Boolean
        | Kind::Bytes
        | Kind::Array { .. }
        | Kind::Map { .. }
        | Kind::Struct { .. } => Err(Detail::WrongType),
    }
}

/// The value of `num` when it is at most 18 digits with an optional `-`: the usual JSON integer,
/// which cannot overflow an `i64`, read in one pass. `None` for anything else.
#[inline]
pub(crate) fn short_integer(num: &str) -> Option<i64> {
    let (negative, digits) = match num.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        all => (false, all),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut value: i64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i64::from(b - b'0');
    }
    Some(if negative { -value } else { value })
}

/// An integer-valued JSON number within `[min, max]`. `1.0` and `1e3` are accepted, `1.5` is not.
fn integral(num: &str, min: i64, max: i64) -> Result<i64, Detail> {
    if let Some(v) = short_integer(num) {
        return if v < min || v > max {
            Err(Detail::OutOfRange)
        } else {
            Ok(v)
        };
    }
    let is_integer = !num.bytes().any(|b| matches!(b, b'.' | b'e' | b'E'));
    let v = if is_integer {
        num.parse::<i64>().map_err(int_error)?
    } else {
        let f = num.parse::<f64>().map_err(|_| Detail::WrongType)?;
        if !f.is_finite() {
            return Err(Detail::OutOfRange);
        }
        if f.fract() != 0.0 {
            return Err(Detail::WrongType);
        }
        // 2^63 is exactly representable as f64; i64::MAX is not.
        const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
        if !(-TWO_POW_63..TWO_POW_63).contains(&f) {
            return Err(Detail::OutOfRange);
        }
        f as i64
    };
    if v < min || v > max {
        return Err(Detail::OutOfRange);
    }
    Ok(v)
}

/// A JSON boolean into a column of `kind`.
pub(crate) fn coerce_bool(kind: &Kind, b: bool, text: &mut String) -> Result<Slot, Detail> {
    match kind {
        Kind::Boolean => Ok(Slot::Bool(b)),
        Kind::String => {
            let start = text.len();
            text.push_str(if b { "true" } else { "false" });
            Ok(Slot::Text(start, text.len()))
        }
        _ => Err(Detail::WrongType),
    }
}

/// Largest exponent magnitude read from decimal text; beyond it only zero fits any DECIMAL.
const MAX_DECIMAL_EXPONENT: i64 = 1_000;

/// Parses decimal text (`-12.345`, `1.5E+2`, `+7`) into the unscaled value of DECIMAL(precision,
/// scale). Extra fraction digits are rounded half away from zero (Java's `HALF_UP`, as ksqlDB).
pub(crate) fn parse_decimal(s: &str, precision: u8, scale: i8) -> Result<i128, Detail> {
    let bytes = s.as_bytes();
    let (negative, rest) = match bytes.first() {
        Some(b'-') => (true, &bytes[1..]),
        Some(b'+') => (false, &bytes[1..]),
        _ => (false, bytes),
    };
    let mantissa_end = rest
        .iter()
        .position(|b| matches!(b, b'e' | b'E'))
        .unwrap_or(rest.len());
    let (mantissa, exponent_part) = rest.split_at(mantissa_end);
    let exponent: i64 = match exponent_part.get(1..) {
        None => 0,
        Some(e) => parse_exponent(e).ok_or(Detail::WrongType)?,
    };
    let (int_digits, frac_digits) = match mantissa.iter().position(|&b| b == b'.') {
        Some(dot) => (&mantissa[..dot], &mantissa[dot + 1..]),
        None => (mantissa, &mantissa[mantissa.len()..]),
    };
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err(Detail::WrongType);
    }
    if !int_digits.iter().chain(frac_digits).all(u8::is_ascii_digit) {
        return Err(Detail::WrongType);
    }
    let all_zero = int_digits.iter().chain(frac_digits).all(|&b| b == b'0');
    if all_zero {
        return Ok(0);
    }
    // Digit `i` of int_digits ++ frac_digits has weight 10^(int_len - 1 - i + exponent); keep the
    // digits with weight >= 10^-scale, that is the first `keep` of them.
    let total = int_digits.len() + frac_digits.len();
    let keep = int_digits.len() as i64 + exponent + i64::from(scale);
    if exponent.abs() > MAX_DECIMAL_EXPONENT {
        return if keep <= 0 {
            Ok(0)
        } else {
            Err(Detail::OutOfRange)
        };
    }
    let digit = |i: usize| -> u8 {
        let b = if i < int_digits.len() {
            int_digits[i]
        } else {
            frac_digits[i - int_digits.len()]
        };
        b - b'0'
    };
    let kept = keep.clamp(0, total as i64) as usize;
    let mut value: i128 = 0;
    for i in 0..kept {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(i128::from(digit(i))))
            .ok_or(Detail::OutOfRange)?;
    }
    if keep > total as i64 {
        for _ in 0..(keep - total as i64) {
            value = value.checked_mul(10).ok_or(Detail::OutOfRange)?;
        }
    } else if keep >= 0 && (keep as usize) < total && digit(keep as usize) >= 5 {
        value += 1;
    }
    let limit = 10i128.pow(u32::from(precision));
    if value >= limit {
        return Err(Detail::OutOfRange);
    }
    Ok(if negative { -value } else { value })
}

fn parse_exponent(e: &[u8]) -> Option<i64> {
    let (negative, digits) = match e.first() {
        Some(b'-') => (true, &e[1..]),
        Some(b'+') => (false, &e[1..]),
        _ => (false, e),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        v = (v * 10 + i64::from(d - b'0')).min(MAX_DECIMAL_EXPONENT + 1);
    }
    Some(if negative { -v } else { v })
}

/// Writes the unscaled decimal `v` with `scale` fraction digits as plain text (`-0.05`).
pub(crate) fn write_decimal(out: &mut Vec<u8>, v: i128, scale: i8) {
    if v < 0 {
        out.push(b'-');
    }
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(v.unsigned_abs()).as_bytes();
    let scale = scale.max(0) as usize;
    if scale == 0 {
        out.extend_from_slice(digits);
        return;
    }
    if digits.len() <= scale {
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat_n(b'0', scale - digits.len()));
        out.extend_from_slice(digits);
    } else {
        let (int, frac) = digits.split_at(digits.len() - scale);
        out.extend_from_slice(int);
        out.push(b'.');
        out.extend_from_slice(frac);
    }
}

pub(crate) fn write_int(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Writes a double as the shortest text that reads back to the same value; non-finite values as
/// `NaN`, `Infinity`, `-Infinity` (which [`coerce_text`] reads back).
pub(crate) fn write_f64(out: &mut Vec<u8>, f: f64) {
    if f.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format_finite(f).as_bytes());
    } else if f.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if f > 0.0 {
        out.extend_from_slice(b"Infinity");
    } else {
        out.extend_from_slice(b"-Infinity");
    }
}

pub(crate) fn write_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    let Some(len) = base64::encoded_len(bytes.len(), true) else {
        return;
    };
    out.resize(start + len, 0);
    let written = BASE64.encode_slice(bytes, &mut out[start..]).unwrap_or(0);
    out.truncate(start + written);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str, p: u8, sc: i8) -> Result<i128, Detail> {
        parse_decimal(s, p, sc)
    }

    #[test]
    fn decimals_parse_exactly_and_round_half_up() {
        assert_eq!(dec("12.34", 5, 2), Ok(1234));
        assert_eq!(dec("-12.34", 5, 2), Ok(-1234));
        assert_eq!(dec("12", 5, 2), Ok(1200));
        assert_eq!(dec("0.005", 5, 2), Ok(1));
        assert_eq!(dec("0.004", 5, 2), Ok(0));
        assert_eq!(dec("-0.005", 5, 2), Ok(-1));
        assert_eq!(dec("1.5E+2", 5, 2), Ok(15000));
        assert_eq!(dec("15e-1", 5, 2), Ok(150));
        assert_eq!(dec(".5", 5, 2), Ok(50));
        assert_eq!(dec("1e-2000", 5, 2), Ok(0));
        assert_eq!(dec("1e2000", 5, 2), Err(Detail::OutOfRange));
        assert_eq!(dec("1234.5", 5, 2), Err(Detail::OutOfRange));
        assert_eq!(dec("999.995", 5, 2), Err(Detail::OutOfRange));
        assert_eq!(
            dec("99999999999999999999999999999999999999", 38, 0),
            Ok(99999999999999999999999999999999999999)
        );
        assert_eq!(
            dec("999999999999999999999999999999999999999", 38, 0),
            Err(Detail::OutOfRange)
        );
        assert_eq!(
            dec("0.1000000000000000000000000000000000000000000000001", 5, 2),
            Ok(10)
        );
        for bad in ["", "-", ".", "1.2.3", "abc", "1e", "1e+", "1x"] {
            assert_eq!(dec(bad, 5, 2), Err(Detail::WrongType), "{bad}");
        }
    }

    #[test]
    fn decimals_write() {
        let w = |v, s| {
            let mut out = Vec::new();
            write_decimal(&mut out, v, s);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(w(1234, 2), "12.34");
        assert_eq!(w(-5, 2), "-0.05");
        assert_eq!(w(0, 3), "0.000");
        assert_eq!(w(42, 0), "42");
        assert_eq!(w(i128::MIN + 1, 0), (i128::MIN + 1).to_string());
    }

    #[test]
    fn numbers_into_integers() {
        let mut t = String::new();
        assert_eq!(coerce_number(&Kind::Int, "1", &mut t), Ok(Slot::I32(1)));
        assert_eq!(coerce_number(&Kind::Int, "1.0", &mut t), Ok(Slot::I32(1)));
        assert_eq!(
            coerce_number(&Kind::Int, "1e3", &mut t),
            Ok(Slot::I32(1000))
        );
        assert_eq!(
            coerce_number(&Kind::Int, "1.5", &mut t),
            Err(Detail::WrongType)
        );
        assert_eq!(
            coerce_number(&Kind::Int, "2147483648", &mut t),
            Err(Detail::OutOfRange)
        );
        assert_eq!(
            coerce_number(&Kind::Int, "-2147483648", &mut t),
            Ok(Slot::I32(i32::MIN))
        );
        assert_eq!(
            coerce_number(&Kind::BigInt, "9223372036854775807", &mut t),
            Ok(Slot::I64(i64::MAX))
        );
        assert_eq!(
            coerce_number(&Kind::BigInt, "9223372036854775808", &mut t),
            Err(Detail::OutOfRange)
        );
        assert_eq!(
            coerce_number(&Kind::BigInt, "1e19", &mut t),
            Err(Detail::OutOfRange)
        );
        assert_eq!(
            coerce_number(&Kind::Time, "86400000", &mut t),
            Err(Detail::OutOfRange)
        );
        assert_eq!(
            coerce_number(&Kind::Double, "1", &mut t),
            Ok(Slot::F64(1.0))
        );
        assert_eq!(
            coerce_number(&Kind::Boolean, "1", &mut t),
            Err(Detail::WrongType)
        );
        assert_eq!(
            coerce_number(&Kind::String, "1.5", &mut t),
            Ok(Slot::Text(0, 3))
        );
        // The one-pass path (up to 18 digits) and its edges.
        assert_eq!(
            coerce_number(&Kind::BigInt, "999999999999999999", &mut t),
            Ok(Slot::I64(999_999_999_999_999_999))
        );
        assert_eq!(
            coerce_number(&Kind::BigInt, "-999999999999999999", &mut t),
            Ok(Slot::I64(-999_999_999_999_999_999))
        );
        assert_eq!(
            coerce_number(&Kind::BigInt, "-9223372036854775808", &mut t),
            Ok(Slot::I64(i64::MIN))
        );
        assert_eq!(coerce_number(&Kind::BigInt, "-0", &mut t), Ok(Slot::I64(0)));
        assert_eq!(
            coerce_number(&Kind::Int, "2147483647", &mut t),
            Ok(Slot::I32(i32::MAX))
        );
        assert_eq!(
            coerce_number(&Kind::Int, "-2147483649", &mut t),
            Err(Detail::OutOfRange)
        );
        assert_eq!(short_integer("12a"), None);
        assert_eq!(short_integer("-"), None);
        assert_eq!(short_integer("1234567890123456789"), None);
        assert_eq!(short_integer("-123"), Some(-123));
    }

    #[test]
    fn text_coercions() {
        let mut b = Vec::new();
        assert_eq!(coerce_text(&Kind::Int, "12", &mut b), Ok(Slot::I32(12)));
        assert_eq!(
            coerce_text(&Kind::Int, "abc", &mut b),
            Err(Detail::WrongType)
        );
        assert_eq!(
            coerce_text(&Kind::Int, "99999999999", &mut b),
            Err(Detail::OutOfRange)
        );
        assert_eq!(
            coerce_text(&Kind::Boolean, "TRUE", &mut b),
            Ok(Slot::Bool(true))
        );
        assert_eq!(
            coerce_text(&Kind::Double, "Infinity", &mut b),
            Ok(Slot::F64(f64::INFINITY))
        );
        assert!(
            matches!(coerce_text(&Kind::Double, "NaN", &mut b), Ok(Slot::F64(f)) if f.is_nan())
        );
        assert_eq!(
            coerce_text(&Kind::Bytes, "AAEC", &mut b),
            Ok(Slot::Bin(0, 3))
        );
        assert_eq!(b, [0, 1, 2]);
        assert_eq!(
            coerce_text(&Kind::Bytes, "!!", &mut b),
            Err(Detail::Invalid("invalid base64"))
        );
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn doubles_round_trip_through_text() {
        for f in [
            0.1,
            -1.5e300,
            1.0,
            f64::MIN_POSITIVE,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            let mut out = Vec::new();
            write_f64(&mut out, f);
            let s = std::str::from_utf8(&out).unwrap();
            assert_eq!(s.parse::<f64>().unwrap(), f, "{s}");
        }
    }

    #[test]
    fn found_messages() {
        assert_eq!(
            mismatch(&Kind::Int, Found::Text("abc"), Detail::WrongType),
            "expected INT, found string \"abc\""
        );
        assert_eq!(
            mismatch(&Kind::Int, Found::Number("1.5"), Detail::WrongType),
            "expected INT, found number 1.5"
        );
        assert_eq!(
            mismatch(&Kind::Int, Found::Number("99999999999"), Detail::OutOfRange),
            "expected INT, found number 99999999999 (out of range)"
        );
    }
}
