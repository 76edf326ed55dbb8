//! Generated sources: records made by a built-in connector instead of read from Kafka.
//!
//! `CREATE STREAM bids WITH (CONNECTOR='nexmark', EVENT_TYPE='bid')` is a stream whose records
//! the `nexmark` crate's generator makes: the same events, in the same order, every time, with
//! event times (`date_time`) counted from the generator's start. The
//! generator encodes each event as the JSON record a Kafka topic would hold and hands batches to
//! the same partition task a Kafka source feeds, so a query over a generator runs exactly the code
//! it would run over Kafka, without the broker: `eddy bench nexmark` uses it to measure the engine
//! alone. A query over a generator has one partition (0); offsets count events from 0, and the
//! record timestamp is the event's `date_time`. A restarted query starts again from event 0.
//!
//! `CONNECTOR='datagen'` fills the columns a stream declares instead, with values derived from
//! (event number, column) by a hash: varied, and the same on every run; its timestamps are the
//! wall-clock time of generation.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use eddy_catalog::{Column, ColumnRole, Generator};
use eddy_common::types::SqlType;
use eddy_format::RawBatch;
use nexmark::EventGenerator;
use nexmark::config::NexmarkConfig;
use nexmark::event::{Event, EventType};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::query::QueryError;

/// Connectors Eddy has built in.
pub const CONNECTORS: &[&str] = &["nexmark", "datagen"];

/// Column types `datagen` fills.
const DATAGEN_TYPES: &str = "BOOLEAN, INT, BIGINT, DOUBLE, STRING";

/// Checks that `datagen` can fill `columns`: scalar types, and a key it can write in the KAFKA
/// format (one column, not BOOLEAN).
pub fn check_datagen_columns(columns: &[Column]) -> Result<(), QueryError> {
    if columns.is_empty() {
        return Err(QueryError::Plan(
            "a datagen stream needs a column list: datagen fills the columns it is given".into(),
        ));
    }
    for column in columns {
        if !matches!(
            column.sql_type,
            SqlType::Boolean | SqlType::Int | SqlType::BigInt | SqlType::Double | SqlType::String
        ) {
            return Err(QueryError::Plan(format!(
                "datagen cannot fill column {} of type {}: it fills {DATAGEN_TYPES}",
                column.name, column.sql_type
            )));
        }
    }
    let keys: Vec<&Column> = columns.iter().filter(|c| c.is_key()).collect();
    if keys.len() > 1 || keys.iter().any(|c| c.sql_type == SqlType::Boolean) {
        return Err(QueryError::Plan(
            "datagen writes at most one KEY column, of type INT, BIGINT, DOUBLE or STRING".into(),
        ));
    }
    Ok(())
}

/// A well-mixed 64-bit hash of (event, column): datagen's values, the same on every run.
fn mix(event: u64, column: u64) -> u64 {
    let mut z = event
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(column.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(0x94D0_49BB_1331_11EB);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Datagen's numbers for a hash: INT/BIGINT in 0..1000, DOUBLE in [0, 1000).
fn datagen_int(h: u64) -> i64 {
    (h % 1000) as i64
}

fn datagen_double(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64 * 1000.0
}

/// Writes datagen's text of `column` for hash `h`: `<column>_<0..100>`.
fn datagen_text(out: &mut Vec<u8>, column: &Column, h: u64) {
    let _ = write!(out, "{}_{}", column.name.to_ascii_lowercase(), h % 100);
}

/// Writes datagen's JSON value of `column` for `event`.
fn datagen_json(out: &mut Vec<u8>, column: &Column, index: usize, event: u64) {
    let h = mix(event, index as u64);
    match column.sql_type {
        SqlType::Boolean => out.extend_from_slice(if h & 1 == 1 { b"true" } else { b"false" }),
        SqlType::Int | SqlType::BigInt => {
            let _ = write!(out, "{}", datagen_int(h));
        }
        SqlType::Double => {
            let _ = write!(out, "{}", datagen_double(h));
        }
        _ => {
            out.push(b'"');
            datagen_text(out, column, h);
            out.push(b'"');
        }
    }
}

/// Writes datagen's key for `event` in the KAFKA format: the same values as in a value.
fn datagen_key(out: &mut Vec<u8>, column: &Column, index: usize, event: u64) {
    let h = mix(event, index as u64);
    match column.sql_type {
        SqlType::Int => out.extend_from_slice(&(datagen_int(h) as i32).to_be_bytes()),
        SqlType::BigInt => out.extend_from_slice(&datagen_int(h).to_be_bytes()),
        SqlType::Double => out.extend_from_slice(&datagen_double(h).to_be_bytes()),
        _ => datagen_text(out, column, h),
    }
}

/// Nexmark event types, as `EVENT_TYPE` names them.
pub const NEXMARK_EVENT_TYPES: &[&str] = &["bid", "auction", "person"];

/// The columns of a generated stream: what each record's JSON value holds.
pub fn generator_columns(generator: &Generator) -> Result<Vec<Column>, QueryError> {
    use SqlType::{BigInt, String as Text};
    let columns: &[(&str, SqlType)] = match event_type(generator)? {
        EventType::Bid => &[
            ("AUCTION", BigInt),
            ("BIDDER", BigInt),
            ("PRICE", BigInt),
            ("CHANNEL", Text),
            ("URL", Text),
            ("DATE_TIME", BigInt),
            ("EXTRA", Text),
        ],
        EventType::Auction => &[
            ("ID", BigInt),
            ("ITEM_NAME", Text),
            ("DESCRIPTION", Text),
            ("INITIAL_BID", BigInt),
            ("RESERVE", BigInt),
            ("DATE_TIME", BigInt),
            ("EXPIRES", BigInt),
            ("SELLER", BigInt),
            ("CATEGORY", BigInt),
            ("EXTRA", Text),
        ],
        EventType::Person => &[
            ("ID", BigInt),
            ("NAME", Text),
            ("EMAIL_ADDRESS", Text),
            ("CREDIT_CARD", Text),
            ("CITY", Text),
            ("STATE", Text),
            ("DATE_TIME", BigInt),
            ("EXTRA", Text),
        ],
    };
    Ok(columns
        .iter()
        .map(|(name, sql_type)| Column {
            name: (*name).to_owned(),
            sql_type: sql_type.clone(),
            role: ColumnRole::Value,
        })
        .collect())
}

fn event_type(generator: &Generator) -> Result<EventType, QueryError> {
    if generator.connector.eq_ignore_ascii_case("datagen") {
        return Err(QueryError::Plan(
            "datagen streams have the columns they declare, not event types".into(),
        ));
    }
    if !generator.connector.eq_ignore_ascii_case("nexmark") {
        return Err(QueryError::Plan(format!(
            "unknown connector \"{}\"; Eddy has {}",
            generator.connector,
            CONNECTORS.join(", ")
        )));
    }
    match generator.event_type.to_ascii_lowercase().as_str() {
        "bid" => Ok(EventType::Bid),
        "auction" => Ok(EventType::Auction),
        "person" => Ok(EventType::Person),
        other => Err(QueryError::Plan(format!(
            "unknown nexmark EVENT_TYPE \"{other}\"; it is one of {}",
            NEXMARK_EVENT_TYPES.join(", ")
        ))),
    }
}

/// Generates the records of `generator` in batches of at most `batch_records`, at its rate, and
/// sends them to a partition task until `max_events` are sent, the task goes away, or the query
/// is cancelled. Returns the number of events sent; `sent` follows it as batches go (the next
/// offset the task will be handed is `sent`), for read-your-writes to know what to wait for.
pub(crate) async fn run_generator(
    generator: Generator,
    columns: Vec<Column>,
    batch_records: usize,
    sender: mpsc::Sender<RawBatch>,
    sent: Arc<AtomicI64>,
) -> Result<u64, QueryError> {
    let datagen = generator.connector.eq_ignore_ascii_case("datagen");
    let mut events = if datagen {
        check_datagen_columns(&columns)?;
        None
    } else {
        Some(
            EventGenerator::new(NexmarkConfig::default()).with_type_filter(event_type(&generator)?),
        )
    };
    let max_events = generator.max_events.unwrap_or(u64::MAX);
    let batch_records = batch_records.max(1) as u64;
    let started = Instant::now();
    let mut next: u64 = 0;
    let mut value = Vec::with_capacity(512);
    let mut key = Vec::with_capacity(32);
    let mut exhausted = false;
    while next < max_events && !exhausted {
        let mut count = batch_records.min(max_events - next);
        if let Some(rate) = generator.events_per_second.filter(|r| *r > 0) {
            // Send what is due now (at least one event), then wait for the next one's time.
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            if due <= next {
                let at = started + Duration::from_secs_f64((next + 1) as f64 / rate as f64);
                tokio::time::sleep_until(at).await;
                continue;
            }
            count = count.min(due - next);
        }
        let mut raw = RawBatch::with_capacity(count as usize, count as usize * 256);
        for offset in next..next + count {
            value.clear();
            key.clear();
            let Some(events) = events.as_mut() else {
                // datagen: a JSON object of the value columns, the key column as the key.
                value.push(b'{');
                let mut first = true;
                let mut has_key = false;
                for (index, column) in columns.iter().enumerate() {
                    if column.is_key() {
                        datagen_key(&mut key, column, index, offset);
                        has_key = true;
                        continue;
                    }
                    if !first {
                        value.push(b',');
                    }
                    first = false;
                    let _ = write!(value, "\"{}\":", column.name);
                    datagen_json(&mut value, column, index, offset);
                }
                value.push(b'}');
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                raw.push(
                    has_key.then_some(&key[..]),
                    Some(&value),
                    now_ms,
                    0,
                    offset as i64,
                );
                continue;
            };
            let Some(event) = events.next() else {
                exhausted = true;
                break;
            };
            let (id, timestamp) = match &event {
                Event::Bid(bid) => (bid.auction, bid.date_time),
                Event::Auction(auction) => (auction.id, auction.date_time),
                Event::Person(person) => (person.id, person.date_time),
            };
            let encoded = match &event {
                Event::Bid(bid) => serde_json::to_writer(&mut value, bid),
                Event::Auction(auction) => serde_json::to_writer(&mut value, auction),
                Event::Person(person) => serde_json::to_writer(&mut value, person),
            };
            encoded.map_err(|e| QueryError::Internal(format!("nexmark event encoding: {e}")))?;
            let _ = write!(key, "{id}");
            raw.push(Some(&key), Some(&value), timestamp as i64, 0, offset as i64);
        }
        let records = raw.len() as u64;
        if records > 0 && sender.send(raw).await.is_err() {
            break; // the partition task ended (its client went away, or it failed)
        }
        next += records;
        sent.store(next as i64, Ordering::Release);
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bids(max_events: u64, events_per_second: Option<u64>) -> Generator {
        Generator {
            connector: "nexmark".into(),
            event_type: "bid".into(),
            events_per_second,
            max_events: Some(max_events),
        }
    }

    async fn collect(generator: Generator, batch: usize) -> Vec<RawBatch> {
        let (sender, mut receiver) = mpsc::channel(4);
        let sent = Arc::new(AtomicI64::new(0));
        let task = tokio::spawn(run_generator(
            generator,
            Vec::new(),
            batch,
            sender,
            Arc::clone(&sent),
        ));
        let mut batches = Vec::new();
        while let Some(raw) = receiver.recv().await {
            batches.push(raw);
        }
        let events = task.await.unwrap().unwrap();
        // What the generator says it sent is every record received, and no more.
        let received: usize = batches.iter().map(RawBatch::len).sum();
        assert_eq!(events as usize, received);
        assert_eq!(sent.load(Ordering::Acquire) as usize, received);
        batches
    }

    #[tokio::test]
    async fn a_generator_sends_max_events_in_batches_with_offsets_from_zero() {
        let batches = collect(bids(25, None), 10).await;
        let sizes: Vec<usize> = batches.iter().map(RawBatch::len).collect();
        assert_eq!(sizes, vec![10, 10, 5]);
        let offsets: Vec<i64> = batches.iter().flat_map(|b| b.offsets().to_vec()).collect();
        assert_eq!(offsets, (0..25).collect::<Vec<i64>>());
        let value: serde_json::Value =
            serde_json::from_slice(batches[0].value(0).unwrap()).unwrap();
        for field in [
            "auction",
            "bidder",
            "price",
            "channel",
            "url",
            "date_time",
            "extra",
        ] {
            assert!(value.get(field).is_some(), "{field} missing in {value}");
        }
        assert_eq!(
            batches[0].key(0).unwrap(),
            value["auction"].to_string().as_bytes()
        );
        assert_eq!(
            batches[0].timestamps_ms()[0],
            value["date_time"].as_i64().unwrap()
        );
    }

    #[tokio::test]
    async fn the_same_generator_makes_the_same_events() {
        // Everything but the time, which counts from the generator's start.
        let event = |batches: &[RawBatch], i: usize| {
            let mut value: serde_json::Value =
                serde_json::from_slice(batches[0].value(i).unwrap()).unwrap();
            value.as_object_mut().unwrap().remove("date_time");
            value
        };
        let first = collect(bids(5, None), 5).await;
        let second = collect(bids(5, None), 5).await;
        for i in 0..5 {
            assert_eq!(event(&first, i), event(&second, i));
        }
    }

    #[tokio::test]
    async fn a_rate_spreads_events_over_time() {
        let started = Instant::now();
        let batches = collect(bids(50, Some(250)), 1000).await;
        assert_eq!(batches.iter().map(RawBatch::len).sum::<usize>(), 50);
        // 50 events at 250 per second cannot be sent in less than 0.2 s (the last is due then).
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(195), "{elapsed:?}");
        assert!(batches.len() > 1, "a rate must not send everything at once");
    }

    fn column(name: &str, sql_type: SqlType, role: ColumnRole) -> Column {
        Column {
            name: name.into(),
            sql_type,
            role,
        }
    }

    #[tokio::test]
    async fn datagen_fills_the_declared_columns_the_same_way_every_time() {
        let columns = vec![
            column("ID", SqlType::String, ColumnRole::Key),
            column("N", SqlType::BigInt, ColumnRole::Value),
            column("X", SqlType::Double, ColumnRole::Value),
            column("OK", SqlType::Boolean, ColumnRole::Value),
        ];
        let generator = Generator {
            connector: "datagen".into(),
            event_type: String::new(),
            events_per_second: None,
            max_events: Some(3),
        };
        let run = || {
            let (sender, mut receiver) = mpsc::channel(4);
            let task = tokio::spawn(run_generator(
                generator.clone(),
                columns.clone(),
                10,
                sender,
                Arc::new(AtomicI64::new(0)),
            ));
            async move {
                let mut batches = Vec::new();
                while let Some(raw) = receiver.recv().await {
                    batches.push(raw);
                }
                task.await.unwrap().unwrap();
                batches
            }
        };
        let first = run().await;
        let second = run().await;
        assert_eq!(first[0].len(), 3);
        let value: serde_json::Value = serde_json::from_slice(first[0].value(1).unwrap()).unwrap();
        let n = value["N"].as_i64().unwrap();
        assert!((0..1000).contains(&n), "{value}");
        let x = value["X"].as_f64().unwrap();
        assert!((0.0..1000.0).contains(&x), "{value}");
        assert!(
            value["OK"].is_boolean() && value.get("ID").is_none(),
            "{value}"
        );
        assert!(
            std::str::from_utf8(first[0].key(1).unwrap())
                .unwrap()
                .starts_with("id_")
        );
        for i in 0..3 {
            assert_eq!(first[0].value(i), second[0].value(i));
            assert_eq!(first[0].key(i), second[0].key(i));
        }
        assert_ne!(first[0].value(0), first[0].value(1), "events differ");
    }

    #[test]
    fn datagen_refuses_what_it_cannot_fill() {
        assert!(check_datagen_columns(&[]).is_err());
        let date = column("D", SqlType::Date, ColumnRole::Value);
        assert!(
            check_datagen_columns(&[date])
                .unwrap_err()
                .to_string()
                .contains("cannot fill column D")
        );
        let keys = [
            column("A", SqlType::Int, ColumnRole::Key),
            column("B", SqlType::Int, ColumnRole::Key),
        ];
        assert!(check_datagen_columns(&keys).is_err());
    }

    #[test]
    fn columns_match_the_event_type_and_bad_names_are_refused() {
        let columns = generator_columns(&bids(1, None)).unwrap();
        assert_eq!(columns[0].name, "AUCTION");
        let mut auction = bids(1, None);
        auction.event_type = "AUCTION".into();
        assert_eq!(generator_columns(&auction).unwrap().len(), 10);
        let mut bad = bids(1, None);
        bad.event_type = "bids".into();
        assert!(
            generator_columns(&bad)
                .unwrap_err()
                .to_string()
                .contains("bid, auction, person")
        );
        bad.connector = "kinesis".into();
        assert!(
            generator_columns(&bad)
                .unwrap_err()
                .to_string()
                .contains("unknown connector")
        );
    }
}
