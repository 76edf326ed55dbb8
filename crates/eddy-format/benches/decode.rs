//! Decoding and encoding throughput, 100k JSON records per iteration: small records (5 fields)
//! and Nexmark bids (7 fields, about 240 bytes, the records `eddy bench nexmark` reads).
//!
//! `cargo bench -p eddy-format --bench decode`; criterion reports elements/s = records/s.

use std::hint::black_box;

use arrow::datatypes::{DataType, Field, TimeUnit};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eddy_format::{EncodedBatch, Format, RawBatch, RecordDecoder, RecordEncoder, SourceLayout};

const RECORDS: usize = 100_000;

fn layout(value_format: Format) -> SourceLayout {
    let values = vec![
        Field::new("ID", DataType::Int64, true),
        Field::new("NAME", DataType::Utf8, true),
        Field::new("PRICE", DataType::Float64, true),
        Field::new("QTY", DataType::Int32, true),
        Field::new("TS", DataType::Timestamp(TimeUnit::Millisecond, None), true),
    ];
    match SourceLayout::new(
        vec![Field::new("STORE", DataType::Utf8, true)],
        values,
        Format::Kafka,
        value_format,
    ) {
        Ok(layout) => layout,
        Err(e) => panic!("bench layout: {e}"),
    }
}

fn raw_batch() -> RawBatch {
    let mut raw = RawBatch::with_capacity(RECORDS, RECORDS * 100);
    let mut value = String::new();
    for i in 0..RECORDS {
        value.clear();
        use std::fmt::Write;
        let _ = write!(
            value,
            r#"{{"id":{i},"name":"item-{}","price":{}.{},"qty":{},"ts":{}}}"#,
            i % 1000,
            i % 100,
            i % 10,
            i % 50,
            1_700_000_000_000i64 + i as i64
        );
        let key = format!("store-{}", i % 16);
        raw.push(
            Some(key.as_bytes()),
            Some(value.as_bytes()),
            i as i64,
            0,
            i as i64,
        );
    }
    raw
}

/// Benchmarks `decode_100k_<name>` (the records of `raw`) and `encode_100k_<name>` (the decoded
/// batch back to records; columns 0-2 of a decoded batch are ROWTIME, ROWPARTITION, ROWOFFSET).
fn decode_and_encode(
    c: &mut Criterion,
    name: &str,
    layout: &SourceLayout,
    raw: &RawBatch,
    key_columns: &[usize],
    value_columns: &[usize],
) {
    let mut decoder = match RecordDecoder::new(layout) {
        Ok(d) => d,
        Err(e) => panic!("decoder: {e}"),
    };
    let mut group = c.benchmark_group("json");
    group.throughput(Throughput::Elements(raw.len() as u64));
    group.sample_size(20);
    group.bench_function(format!("decode_100k_{name}"), |b| {
        b.iter(|| {
            let decoded = decoder.decode(black_box(raw));
            black_box(decoded.map(|d| d.batch.num_rows()))
        })
    });

    let batch = match decoder.decode(raw) {
        Ok(d) => d.batch,
        Err(e) => panic!("decode: {e}"),
    };
    let mut encoder = match RecordEncoder::new(layout) {
        Ok(e) => e,
        Err(e) => panic!("encoder: {e}"),
    };
    let mut out = EncodedBatch::new();
    group.bench_function(format!("encode_100k_{name}"), |b| {
        b.iter(|| {
            out.clear();
            let r = encoder.encode(black_box(&batch), key_columns, value_columns, &mut out);
            black_box((r.is_ok(), out.len()))
        })
    });
    group.finish();
}

fn bench(c: &mut Criterion) {
    decode_and_encode(
        c,
        "5_fields",
        &layout(Format::JSON),
        &raw_batch(),
        &[3],
        &[4, 5, 6, 7, 8],
    );
}

/// The bid stream of `eddy bench nexmark`: `auction, bidder, price, channel, url, date_time,
/// extra`, no key.
fn bid_layout() -> SourceLayout {
    let values = vec![
        Field::new("AUCTION", DataType::Int64, true),
        Field::new("BIDDER", DataType::Int64, true),
        Field::new("PRICE", DataType::Int64, true),
        Field::new("CHANNEL", DataType::Utf8, true),
        Field::new("URL", DataType::Utf8, true),
        Field::new("DATE_TIME", DataType::Int64, true),
        Field::new("EXTRA", DataType::Utf8, true),
    ];
    match SourceLayout::new(Vec::new(), values, Format::None, Format::JSON) {
        Ok(layout) => layout,
        Err(e) => panic!("bid layout: {e}"),
    }
}

/// Bids shaped like the `nexmark` crate's (serde_json of its `Bid`): a channel name, a URL of
/// about 70 bytes and an `extra` of 54-82 lowercase letters.
fn bid_batch() -> RawBatch {
    let channels = ["Google", "Facebook", "Baidu", "Apple", "channel-4711"];
    let mut raw = RawBatch::with_capacity(RECORDS, RECORDS * 250);
    let mut value = String::new();
    let mut extra = String::new();
    for i in 0..RECORDS {
        extra.clear();
        for j in 0..54 + i % 29 {
            extra.push(char::from(b'a' + ((i * 7 + j * 13) % 26) as u8));
        }
        value.clear();
        use std::fmt::Write;
        let _ = write!(
            value,
            r#"{{"auction":{},"bidder":{},"price":{},"channel":"{}","url":"https://www.nexmark.com/qvx/yhj/lwc/item.htm?query=1&channel_id={}","date_time":{},"extra":"{extra}"}}"#,
            1000 + i / 10,
            1000 + i % 977,
            100 + (i * 7919) % 1_000_000,
            channels[i % channels.len()],
            (i * 31) % 1_000_000_000,
            1_436_918_400_000i64 + i as i64,
        );
        raw.push(None, Some(value.as_bytes()), i as i64, 0, i as i64);
    }
    raw
}

fn bench_bids(c: &mut Criterion) {
    decode_and_encode(
        c,
        "bids",
        &bid_layout(),
        &bid_batch(),
        &[],
        &[3, 4, 5, 6, 7, 8, 9],
    );
}

criterion_group!(benches, bench, bench_bids);
criterion_main!(benches);
