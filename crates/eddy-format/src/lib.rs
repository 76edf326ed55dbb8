//! Record formats (KAFKA, JSON, DELIMITED) decoded straight into Arrow record batches and encoded
//! back.
//!
//! A source task polls a batch of Kafka records into a reusable [`RawBatch`], and a
//! [`RecordDecoder`] turns it into one Arrow [`RecordBatch`](arrow::array::RecordBatch) in the
//! source's schema ([`SourceLayout`]): the pseudo-columns `ROWTIME`, `ROWPARTITION`, `ROWOFFSET`,
//! then the key columns, then the value columns. Records that do not decode produce no row and
//! are reported as [`RecordError`]s with their partition and offset; they never fail the batch.
//! A sink goes the other way with a [`RecordEncoder`] into an [`EncodedBatch`]. Event times
//! written as text are read with a [`TimestampFormat`] (`TIMESTAMP_FORMAT`).
//!
//! ```text
//!  Kafka ──poll──▶ RawBatch ──RecordDecoder──▶ RecordBatch + [RecordError]
//!                  (keys, values,              (ROWTIME, ROWPARTITION, ROWOFFSET,
//!                   timestamps, …)              key columns…, value columns…)
//!
//!  RecordBatch ──RecordEncoder──▶ EncodedBatch ──produce──▶ Kafka
//!                                 (contiguous keys and values)
//! ```
//!
//! The wire formats are ksqlDB's, so topics written by one can be read by the other:
//!
//! | format | shape | types |
//! |---|---|---|
//! | `KAFKA` | Kafka's serializers: big-endian INT (4 bytes), BIGINT and DOUBLE (8 bytes), UTF-8 STRING, raw BYTES; one column at most | INT, BIGINT, DOUBLE, STRING, BYTES |
//! | `JSON` | an object of fields matched case-insensitively (missing → NULL, extra ignored), or a bare value with `WRAP_SINGLE_VALUE=false`; DECIMAL as a number, BYTES as base64, DATE as days, TIME as ms of day, TIMESTAMP as epoch ms | all |
//! | `DELIMITED` | fields in column order, `"`-quoted with `""` escapes; an empty field is NULL | all but ARRAY, MAP, STRUCT |
//!
//! Decoding is built for throughput: each column has a concrete Arrow builder chosen once, a
//! record is parsed into reusable typed slots and appended only when it is valid, and the JSON
//! parser reads numbers and strings in place without building a document tree for scalars.
//!
//! ```
//! use arrow::datatypes::{DataType, Field};
//! use eddy_format::{Format, RawBatch, RecordDecoder, SourceLayout};
//!
//! let layout = SourceLayout::new(
//!     vec![Field::new("ID", DataType::Utf8, true)],
//!     vec![Field::new("QTY", DataType::Int32, true)],
//!     Format::Kafka,
//!     Format::JSON,
//! )?;
//! let mut decoder = RecordDecoder::new(&layout)?;
//! let mut raw = RawBatch::new();
//! raw.push(Some(b"a"), Some(br#"{"qty": 3}"#), 1_000, 0, 41);
//! raw.push(Some(b"b"), Some(br#"{"qty": "x"}"#), 1_001, 0, 42);
//! let decoded = decoder.decode(&raw)?;
//! assert_eq!(decoded.batch.num_rows(), 1);
//! assert_eq!(decoded.errors[0].offset, 42);
//! assert_eq!(decoded.errors[0].reason, r#"value field "QTY": expected INT, found string "x""#);
//! # Ok::<(), eddy_format::FormatError>(())
//! ```

mod buffer;
mod builder;
mod coerce;
mod decode;
mod encode;
mod error;
mod format;
mod json;
mod layout;
mod timestamp;
mod types;

pub use buffer::{ByteColumn, EncodedBatch, RawBatch};
pub use decode::{Decoded, RecordDecoder};
pub use encode::RecordEncoder;
pub use error::{FormatError, RecordError, RecordPart};
pub use format::{Format, FormatProperties};
pub use layout::{PSEUDO_COLUMNS, ROWOFFSET, ROWPARTITION, ROWTIME, SourceLayout, pseudo_fields};
pub use timestamp::{TimestampFormat, TimestampFormatError};

#[cfg(test)]
mod tests;
