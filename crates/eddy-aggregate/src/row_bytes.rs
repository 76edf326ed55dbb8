//! Checks that bytes read back from a stored state are arrow-row encodings of one value of the
//! input type, before they reach `RowConverter::convert_rows`, which panics on malformed rows.
//!
//! The checks follow the encoding documented in `arrow::row` for an ascending field with nulls
//! first (`SortOptions::default()`), the only one this crate uses. They accept exactly the bytes
//! that arrow writes (padding and null payloads must be zero), so two stored encodings are equal
//! if and only if their values are; a test encodes many values with arrow and checks them here,
//! so a change of the format in a new arrow release fails the tests, not the decoding of states.

use arrow::datatypes::{DataType, TimeUnit};

/// The null sentinel of a nulls-first field.
const NULL: u8 = 0;
/// The validity byte of a fixed-width value.
const VALID: u8 = 1;
/// Variable-width: an empty value.
const EMPTY: u8 = 1;
/// Variable-width: a non-empty value, blocks follow.
const NON_EMPTY: u8 = 2;
/// Variable-width: the sentinel after a block that is not the last one.
const CONTINUATION: u8 = 0xFF;
/// Variable-width: the first 32 bytes are written in 4 mini-blocks of 8, the rest in blocks of 32.
const MINI_BLOCK_SIZE: usize = 8;
const MINI_BLOCK_COUNT: usize = 4;
const BLOCK_SIZE: usize = 32;

/// How a value of a supported input type is laid out in arrow-row bytes. Only the types that
/// ksqlDB's scalar SQL types map to are supported: they are the types the value-storing
/// functions accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowKind {
    /// Validity byte and `width` bytes (INT, BIGINT, DOUBLE, DECIMAL, DATE, TIME, TIMESTAMP).
    Fixed(usize),
    /// Validity byte and 0 or 1.
    Boolean,
    /// Sentinel and blocks.
    Bytes,
    /// Sentinel and blocks of UTF-8.
    Utf8,
}

impl RowKind {
    pub(crate) fn of(data_type: &DataType) -> Option<RowKind> {
        Some(match data_type {
            DataType::Int32 | DataType::Date32 | DataType::Time32(TimeUnit::Millisecond) => {
                RowKind::Fixed(4)
            }
            DataType::Int64
            | DataType::Float64
            | DataType::Timestamp(TimeUnit::Millisecond, None) => RowKind::Fixed(8),
            DataType::Decimal128(_, _) => RowKind::Fixed(16),
            DataType::Boolean => RowKind::Boolean,
            DataType::Binary => RowKind::Bytes,
            DataType::Utf8 => RowKind::Utf8,
            _ => return None,
        })
    }

    /// Whether `row` is the encoding of one value (or of NULL, if `allow_null`).
    pub(crate) fn is_valid(self, row: &[u8], allow_null: bool) -> bool {
        match self {
            RowKind::Fixed(width) => match row.split_first() {
                Some((&NULL, rest)) => {
                    allow_null && rest.len() == width && rest.iter().all(|&b| b == 0)
                }
                Some((&VALID, rest)) => rest.len() == width,
                _ => false,
            },
            RowKind::Boolean => match row {
                [NULL, 0] => allow_null,
                [VALID, value] => *value <= 1,
                _ => false,
            },
            RowKind::Bytes | RowKind::Utf8 => match row.split_first() {
                Some((&NULL, rest)) => allow_null && rest.is_empty(),
                Some((&EMPTY, rest)) => rest.is_empty(),
                Some((&NON_EMPTY, rest)) => valid_blocks(rest, self == RowKind::Utf8),
                _ => false,
            },
        }
    }
}

/// Whether `blocks` is a sequence of blocks ending exactly at its end, with zero padding, and
/// (for strings) UTF-8 content.
fn valid_blocks(blocks: &[u8], utf8: bool) -> bool {
    let mut content = Vec::new();
    let mut at = 0;
    let mut index = 0;
    loop {
        let size = if index < MINI_BLOCK_COUNT {
            MINI_BLOCK_SIZE
        } else {
            BLOCK_SIZE
        };
        let (Some(block), Some(&sentinel)) = (blocks.get(at..at + size), blocks.get(at + size))
        else {
            return false;
        };
        at += size + 1;
        index += 1;
        if sentinel == CONTINUATION {
            if utf8 {
                content.extend_from_slice(block);
            }
            continue;
        }
        let len = usize::from(sentinel);
        if len == 0 || len > size || block[len..].iter().any(|&b| b != 0) || at != blocks.len() {
            return false;
        }
        if utf8 {
            content.extend_from_slice(&block[..len]);
            return std::str::from_utf8(&content).is_ok();
        }
        return true;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, BinaryArray, BooleanArray, Decimal128Array, Float64Array, Int32Array, StringArray,
    };
    use arrow::row::{RowConverter, SortField};

    use super::*;

    fn encodings(array: ArrayRef) -> Vec<Vec<u8>> {
        let converter = RowConverter::new(vec![SortField::new(array.data_type().clone())]).unwrap();
        let rows = converter.convert_columns(&[array]).unwrap();
        rows.iter().map(|row| row.data().to_vec()).collect()
    }

    /// Every encoding arrow writes is accepted; every proper prefix and every extension of one
    /// is rejected. This is the test that catches a change of arrow's row format.
    fn check_all(array: ArrayRef) {
        let kind = RowKind::of(array.data_type()).unwrap();
        let nulls: Vec<bool> = (0..array.len()).map(|i| array.is_null(i)).collect();
        for (row, is_null) in encodings(array).into_iter().zip(nulls) {
            assert!(kind.is_valid(&row, true), "{kind:?} rejects {row:?}");
            assert_eq!(kind.is_valid(&row, false), !is_null, "{row:?}");
            for cut in 0..row.len() {
                assert!(
                    !kind.is_valid(&row[..cut], true),
                    "{kind:?} accepts a prefix of {row:?}"
                );
            }
            let mut longer = row.clone();
            longer.push(0);
            assert!(!kind.is_valid(&longer, true), "{kind:?} accepts {longer:?}");
        }
    }

    #[test]
    fn accepts_exactly_what_arrow_writes() {
        let strings: Vec<Option<String>> = (0..80)
            .map(|len| Some("é".repeat(len / 2) + &"x".repeat(len % 2)))
            .chain([None, Some(String::new())])
            .collect();
        check_all(Arc::new(StringArray::from(strings)));
        let bytes: Vec<Option<Vec<u8>>> = (0..80u8)
            .map(|len| Some(vec![0xFF; usize::from(len)]))
            .chain([None])
            .collect();
        check_all(Arc::new(BinaryArray::from_iter(bytes)));
        check_all(Arc::new(Int32Array::from(vec![
            Some(0),
            None,
            Some(i32::MIN),
        ])));
        check_all(Arc::new(Float64Array::from(vec![
            Some(-0.0),
            None,
            Some(f64::NAN),
        ])));
        check_all(Arc::new(BooleanArray::from(vec![
            Some(true),
            Some(false),
            None,
        ])));
        check_all(Arc::new(
            Decimal128Array::from(vec![Some(12345), None])
                .with_precision_and_scale(10, 2)
                .unwrap(),
        ));
    }

    #[test]
    fn rejects_malformed_bytes() {
        let utf8 = RowKind::Utf8;
        assert!(!utf8.is_valid(&[], true));
        assert!(!utf8.is_valid(&[7], true));
        // A block whose sentinel claims more bytes than the block has.
        let mut row = vec![NON_EMPTY];
        row.extend_from_slice(b"abcdefgh");
        row.push(9);
        assert!(!utf8.is_valid(&row, true));
        // Non-zero padding.
        let mut row = vec![NON_EMPTY];
        row.extend_from_slice(b"ab\0\0\0\0\0x");
        row.push(2);
        assert!(!utf8.is_valid(&row, true));
        // Not UTF-8, but fine as BYTES.
        let mut row = vec![NON_EMPTY, 0xC3, 0x28, 0, 0, 0, 0, 0, 0];
        row.push(2);
        assert!(!utf8.is_valid(&row, true));
        assert!(RowKind::Bytes.is_valid(&row, true));
        assert!(!RowKind::Boolean.is_valid(&[VALID, 2], true));
        assert!(!RowKind::Fixed(4).is_valid(&[NULL, 0, 0, 1, 0], true));
        assert!(!RowKind::Fixed(4).is_valid(&[2, 0, 0, 0, 0], true));
    }
}
