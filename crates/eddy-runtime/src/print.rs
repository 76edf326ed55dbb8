//! `PRINT topic`: raw records of any topic as text lines, for looking at what is really there.

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::Offset;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::kafka::{KafkaConnection, KafkaError};

/// Distinct read errors a `PRINT` remembers having logged during one outage.
const PRINT_ERRORS_REMEMBERED: usize = 16;

/// What `PRINT` reads.
#[derive(Debug, Clone)]
pub struct PrintOptions {
    /// Physical topic name.
    pub topic: String,
    /// Name shown to the user.
    pub display_topic: String,
    pub from_beginning: bool,
    /// Print every n-th record.
    pub interval: u64,
    pub limit: Option<u64>,
    /// Lines buffered for a slow client before reading pauses.
    pub queue_lines: usize,
}

/// A running `PRINT`: lines arrive on `lines`; dropping it stops the reader.
pub struct PrintStream {
    pub lines: mpsc::Receiver<String>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Drop for PrintStream {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.task.abort();
    }
}

/// Starts printing `options.topic`.
pub async fn print_topic(
    connection: &KafkaConnection,
    options: PrintOptions,
) -> Result<PrintStream, KafkaError> {
    let info = connection
        .topic(&options.topic)
        .await?
        .ok_or_else(|| KafkaError::UnknownTopic {
            topic: options.display_topic.clone(),
        })?;
    let consumer =
        connection.consumer(&format!("_eddy-print-{}", std::process::id()), "earliest")?;
    let start = if options.from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    let assignment = connection
        .assignment_from(&options.topic, info.partitions, start)
        .await?;
    consumer
        .assign(&assignment)
        .map_err(|e| KafkaError::client("assignment", e))?;

    let (sender, lines) = mpsc::channel(options.queue_lines.max(1));
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let task = tokio::spawn(async move {
        let header = format!(
            "Topic: {}, partitions: {}",
            options.display_topic, info.partitions
        );
        if sender.send(header).await.is_err() {
            return;
        }
        let mut seen = 0u64;
        let mut printed = 0u64;
        // The errors of the current outage, each logged once (librdkafka alternates between a few).
        let mut errors_logged: HashSet<String> = HashSet::new();
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return,
                message = consumer.recv() => message,
            };
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    // Kept reading (a broker that restarts comes back), but said once per error.
                    let error = error.to_string();
                    if !errors_logged.contains(&error) {
                        tracing::warn!(topic = options.display_topic, %error, "PRINT cannot read; trying again");
                        if errors_logged.len() >= PRINT_ERRORS_REMEMBERED {
                            errors_logged.clear();
                        }
                        errors_logged.insert(error);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            errors_logged.clear();
            let partition = message.partition();
            seen += 1;
            if !(seen - 1).is_multiple_of(options.interval.max(1)) {
                continue;
            }
            let line = format!(
                "rowtime: {}, key: {}, value: {}, partition: {}, offset: {}",
                format_rowtime(message.timestamp().to_millis()),
                show_bytes(message.key()),
                show_bytes(message.payload()),
                partition,
                message.offset()
            );
            drop(message);
            if sender.send(line).await.is_err() {
                return;
            }
            printed += 1;
            if options.limit.is_some_and(|limit| printed >= limit) {
                return;
            }
        }
    });
    Ok(PrintStream {
        lines,
        cancel,
        task,
    })
}

fn show_bytes(bytes: Option<&[u8]>) -> String {
    match bytes {
        None => "<null>".to_owned(),
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text)
                if !text
                    .chars()
                    .any(|c| c.is_control() && c != '\n' && c != '\t') =>
            {
                text.to_owned()
            }
            _ => bytes
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
        },
    }
}

/// `2026/11/25 08:00:00.000 Z`, like ksqlDB's PRINT.
fn format_rowtime(millis: Option<i64>) -> String {
    match millis.and_then(chrono_like) {
        Some(text) => text,
        None => "N/A".to_owned(),
    }
}

/// Formats epoch milliseconds as UTC without pulling a date crate into the hot path.
fn chrono_like(millis: i64) -> Option<String> {
    let seconds = millis.div_euclid(1000);
    let ms = millis.rem_euclid(1000);
    let days = seconds.div_euclid(86_400);
    let secs_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    Some(format!(
        "{year:04}/{month:02}/{day:02} {:02}:{:02}:{:02}.{ms:03} Z",
        secs_of_day / 3600,
        (secs_of_day % 3600) / 60,
        secs_of_day % 60
    ))
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rowtime_formats_like_ksqldb() {
        assert_eq!(format_rowtime(Some(0)), "1970/01/01 00:00:00.000 Z");
        assert_eq!(
            format_rowtime(Some(1_589_385_200_123)),
            "2020/05/13 15:53:20.123 Z"
        );
        assert_eq!(format_rowtime(None), "N/A");
    }

    #[test]
    fn binary_bytes_print_as_hex() {
        assert_eq!(show_bytes(Some(&[0, 0, 0, 7])), "00 00 00 07");
        assert_eq!(show_bytes(Some(b"{\"a\":1}")), "{\"a\":1}");
        assert_eq!(show_bytes(None), "<null>");
    }
}
