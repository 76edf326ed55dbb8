//! Windows of a windowed aggregation (`WINDOW TUMBLING|HOPPING|SESSION (...)`), shared by the
//! parser, the catalog (a windowed table remembers its window) and the runtime (which assigns
//! records to windows, closes and expires them).
//!
//! Times are epoch milliseconds. A time window `[start, start + size)` holds the records whose
//! event time is in it; `WINDOWEND` is exclusive. A session holds records no further apart than
//! its gap; its `WINDOWEND` is the event time of its last record (inclusive), as in ksqlDB.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Grace period of a window whose `WINDOW` clause gives none: ksqlDB's (and Kafka Streams'
/// historical) 24 hours.
pub const DEFAULT_GRACE_PERIOD_MS: i64 = 24 * 60 * 60 * 1000;

/// Largest size, advance, gap, grace period or retention a window may have: 10 years. Bounds the
/// arithmetic on event times (no overflow for any `i64` event time within ±2^62).
pub const MAX_WINDOW_DURATION_MS: i64 = 10 * 365 * 24 * 60 * 60 * 1000;

/// Most windows one record may fall in (`SIZE / ADVANCE BY` of a hopping window).
pub const MAX_WINDOWS_PER_RECORD: i64 = 1000;

/// The kind of a window and its dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// Fixed-size, non-overlapping windows aligned to the epoch.
    Tumbling { size_ms: i64 },
    /// Fixed-size windows starting every `advance_ms` (a record falls in `size / advance` of them).
    Hopping { size_ms: i64, advance_ms: i64 },
    /// Periods of activity separated by at least `gap_ms` without records.
    Session { gap_ms: i64 },
}

/// A `WINDOW` clause: its kind, grace period and retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSpec {
    pub kind: WindowKind,
    /// How long after a window ends (in stream time) records are still added to it.
    pub grace_ms: i64,
    /// How long after a window ends (in stream time) it is kept in the state, for pull queries.
    pub retention_ms: i64,
}

/// Why a `WINDOW` clause is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WindowError(pub String);

impl WindowSpec {
    /// A window with the given grace period (default [`DEFAULT_GRACE_PERIOD_MS`]) and retention
    /// (default: the window's length plus its grace period, the least that keeps every window
    /// until it closes). Checks the bounds of every duration.
    pub fn new(
        kind: WindowKind,
        grace_ms: Option<i64>,
        retention_ms: Option<i64>,
    ) -> Result<Self, WindowError> {
        let positive = |what: &str, value: i64| {
            if value <= 0 {
                Err(WindowError(format!(
                    "window {what} must be positive, not {value} ms"
                )))
            } else if value > MAX_WINDOW_DURATION_MS {
                Err(WindowError(format!(
                    "window {what} of {value} ms is longer than the most allowed ({MAX_WINDOW_DURATION_MS} ms, 10 years)"
                )))
            } else {
                Ok(())
            }
        };
        match kind {
            WindowKind::Tumbling { size_ms } => positive("SIZE", size_ms)?,
            WindowKind::Hopping {
                size_ms,
                advance_ms,
            } => {
                positive("SIZE", size_ms)?;
                positive("ADVANCE BY", advance_ms)?;
                if advance_ms > size_ms {
                    return Err(WindowError(format!(
                        "a hopping window's ADVANCE BY ({advance_ms} ms) must not be larger than its SIZE ({size_ms} ms)\nhint: use a TUMBLING window when they are equal"
                    )));
                }
                let windows = (size_ms + advance_ms - 1) / advance_ms;
                if windows > MAX_WINDOWS_PER_RECORD {
                    return Err(WindowError(format!(
                        "a hopping window of SIZE {size_ms} ms that ADVANCEs BY {advance_ms} ms puts each record in {windows} windows; at most {MAX_WINDOWS_PER_RECORD} are allowed"
                    )));
                }
            }
            WindowKind::Session { gap_ms } => positive("session gap", gap_ms)?,
        }
        let grace_ms = grace_ms.unwrap_or(DEFAULT_GRACE_PERIOD_MS);
        if !(0..=MAX_WINDOW_DURATION_MS).contains(&grace_ms) {
            return Err(WindowError(format!(
                "GRACE PERIOD must be between 0 and {MAX_WINDOW_DURATION_MS} ms, not {grace_ms} ms"
            )));
        }
        let least_retention_ms = kind.length_ms() + grace_ms;
        let retention_ms = retention_ms.unwrap_or(least_retention_ms);
        positive("RETENTION", retention_ms)?;
        if retention_ms < least_retention_ms {
            return Err(WindowError(format!(
                "RETENTION ({retention_ms} ms) must be at least the window's {} plus its GRACE PERIOD ({least_retention_ms} ms): a window must be kept until it closes",
                match kind {
                    WindowKind::Session { .. } => "gap",
                    _ => "SIZE",
                }
            )));
        }
        Ok(Self {
            kind,
            grace_ms,
            retention_ms,
        })
    }

    /// True for session windows, whose bounds come from the records.
    pub fn is_session(&self) -> bool {
        matches!(self.kind, WindowKind::Session { .. })
    }

    /// `TUMBLING`, `HOPPING` or `SESSION`, as ksqlDB names window types.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            WindowKind::Tumbling { .. } => "TUMBLING",
            WindowKind::Hopping { .. } => "HOPPING",
            WindowKind::Session { .. } => "SESSION",
        }
    }

    /// The stream time at which a window that ends at `end` closes: from then on records no
    /// longer change it, and `EMIT FINAL` emits it. A time window closes at its end plus the
    /// grace period; a session at its end plus its gap plus the grace period (until then a
    /// record that is not late may still extend it).
    pub fn close_time(&self, end: i64) -> i64 {
        match self.kind {
            WindowKind::Session { gap_ms } => end + gap_ms + self.grace_ms,
            _ => end + self.grace_ms,
        }
    }

    /// The stream time from which a window that ends at `end` is dropped from the state.
    pub fn expiry_time(&self, end: i64) -> i64 {
        match self.kind {
            WindowKind::Session { gap_ms } => end + gap_ms + self.retention_ms,
            _ => end + self.retention_ms,
        }
    }

    /// Calls `f(start)` for the start of every time window that contains `time`, oldest first.
    /// Windows start at 0 or later (as in Kafka Streams): a negative time is in none. Nothing
    /// for session windows.
    #[inline]
    pub fn for_each_window_start(&self, time: i64, mut f: impl FnMut(i64)) {
        match self.kind {
            WindowKind::Tumbling { size_ms } => {
                if time >= 0 {
                    f(time - time.rem_euclid(size_ms))
                }
            }
            WindowKind::Hopping {
                size_ms,
                advance_ms,
            } => {
                // The latest window containing `time` starts at the largest multiple of the
                // advance not above it; earlier ones every advance back while they still reach it.
                let last = time - time.rem_euclid(advance_ms);
                let mut start = last - (size_ms - 1) / advance_ms * advance_ms;
                while start <= last {
                    if start >= 0 && start + size_ms > time {
                        f(start);
                    }
                    start += advance_ms;
                }
            }
            WindowKind::Session { .. } => {}
        }
    }

    /// The end of the time window that starts at `start` (exclusive).
    pub fn end_of(&self, start: i64) -> i64 {
        match self.kind {
            WindowKind::Tumbling { size_ms } | WindowKind::Hopping { size_ms, .. } => {
                start + size_ms
            }
            WindowKind::Session { .. } => start,
        }
    }
}

impl WindowKind {
    /// The size of a time window, the gap of a session window.
    pub fn length_ms(&self) -> i64 {
        match *self {
            WindowKind::Tumbling { size_ms } | WindowKind::Hopping { size_ms, .. } => size_ms,
            WindowKind::Session { gap_ms } => gap_ms,
        }
    }
}

/// A duration as ksqlDB writes it: the largest unit that divides it (`1 MINUTE`, `90 SECONDS`).
pub fn format_duration_ms(ms: i64) -> String {
    const UNITS: [(i64, &str); 4] = [
        (24 * 60 * 60 * 1000, "DAY"),
        (60 * 60 * 1000, "HOUR"),
        (60 * 1000, "MINUTE"),
        (1000, "SECOND"),
    ];
    for (unit_ms, name) in UNITS {
        if ms != 0 && ms % unit_ms == 0 {
            let n = ms / unit_ms;
            return format!("{n} {name}{}", if n == 1 { "" } else { "S" });
        }
    }
    format!("{ms} MILLISECOND{}", if ms == 1 { "" } else { "S" })
}

impl fmt::Display for WindowSpec {
    /// The clause as it would be written: `TUMBLING (SIZE 1 MINUTE, RETENTION ..., GRACE PERIOD ...)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            WindowKind::Tumbling { size_ms } => {
                write!(f, "TUMBLING (SIZE {}", format_duration_ms(size_ms))?
            }
            WindowKind::Hopping {
                size_ms,
                advance_ms,
            } => write!(
                f,
                "HOPPING (SIZE {}, ADVANCE BY {}",
                format_duration_ms(size_ms),
                format_duration_ms(advance_ms)
            )?,
            WindowKind::Session { gap_ms } => write!(f, "SESSION ({}", format_duration_ms(gap_ms))?,
        }
        write!(
            f,
            ", RETENTION {}, GRACE PERIOD {})",
            format_duration_ms(self.retention_ms),
            format_duration_ms(self.grace_ms)
        )
    }
}

/// The `WITHIN` clause of a stream-stream join: `WITHIN n UNIT` or `WITHIN (before, after)`, with
/// an optional `GRACE PERIOD`.
///
/// A left record at `t` joins the right records whose event time is in
/// `[t - before_ms, t + after_ms]` (so a right record at `t` joins the left records in
/// `[t - after_ms, t + before_ms]`). A record is *late*, and dropped, when its window has closed:
/// a left record when `t + after_ms + grace_ms` is below the stream time, a right record when
/// `t + before_ms + grace_ms` is. Either side's records are kept for
/// [`JoinWindow::retention_ms`] of stream time, the least that keeps every record a non-late
/// record can still match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinWindow {
    pub before_ms: i64,
    pub after_ms: i64,
    pub grace_ms: i64,
}

impl JoinWindow {
    /// A join window; `grace_ms` defaults to [`DEFAULT_GRACE_PERIOD_MS`], as in ksqlDB. Checks
    /// the bounds of every duration.
    pub fn new(before_ms: i64, after_ms: i64, grace_ms: Option<i64>) -> Result<Self, WindowError> {
        let grace_ms = grace_ms.unwrap_or(DEFAULT_GRACE_PERIOD_MS);
        for (what, value) in [
            ("WITHIN's before", before_ms),
            ("WITHIN's after", after_ms),
            ("GRACE PERIOD", grace_ms),
        ] {
            if !(0..=MAX_WINDOW_DURATION_MS).contains(&value) {
                return Err(WindowError(format!(
                    "{what} must be between 0 and {MAX_WINDOW_DURATION_MS} ms, not {value} ms"
                )));
            }
        }
        Ok(Self {
            before_ms,
            after_ms,
            grace_ms,
        })
    }

    /// How far past a record's own time the window of one side reaches: `after_ms` for the left
    /// side, `before_ms` for the right.
    pub fn reach_ms(&self, left: bool) -> i64 {
        if left { self.after_ms } else { self.before_ms }
    }

    /// Stream time after which a record of one side at `time` is late and its window closed (a
    /// record is late when this is below the stream time).
    pub fn close_time(&self, left: bool, time: i64) -> i64 {
        time.saturating_add(self.reach_ms(left) + self.grace_ms)
    }

    /// How long (in stream time) a record is kept: `before + after + grace`.
    pub fn retention_ms(&self) -> i64 {
        self.before_ms + self.after_ms + self.grace_ms
    }

    /// Stream time after which a record of either side at `time` can match no record any more.
    pub fn expiry_time(&self, time: i64) -> i64 {
        time.saturating_add(self.retention_ms())
    }

    /// Whether a left record at `left_time` and a right record at `right_time` join.
    #[inline]
    pub fn joins(&self, left_time: i64, right_time: i64) -> bool {
        right_time >= left_time.saturating_sub(self.before_ms)
            && right_time <= left_time.saturating_add(self.after_ms)
    }
}

impl fmt::Display for JoinWindow {
    /// The clause as it would be written: `WITHIN (1 MINUTE, 2 MINUTES) GRACE PERIOD 10 SECONDS`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.before_ms == self.after_ms {
            write!(f, "WITHIN {}", format_duration_ms(self.before_ms))?;
        } else {
            write!(
                f,
                "WITHIN ({}, {})",
                format_duration_ms(self.before_ms),
                format_duration_ms(self.after_ms)
            )?;
        }
        write!(f, " GRACE PERIOD {}", format_duration_ms(self.grace_ms))
    }
}

/// Encodes an event time so that byte order is time order (the sign bit flipped, big-endian).
#[inline]
pub fn ordered_time_bytes(time: i64) -> [u8; 8] {
    ((time as u64) ^ (1 << 63)).to_be_bytes()
}

/// The inverse of [`ordered_time_bytes`].
#[inline]
pub fn time_from_ordered_bytes(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn starts(spec: &WindowSpec, time: i64) -> Vec<i64> {
        let mut out = Vec::new();
        spec.for_each_window_start(time, |s| out.push(s));
        out
    }

    #[test]
    fn join_windows_match_close_and_expire_per_side() {
        let window = JoinWindow::new(10, 30, Some(5)).unwrap();
        // A left record at 100 joins right records in [90, 130].
        assert!(window.joins(100, 90) && window.joins(100, 130) && window.joins(100, 100));
        assert!(!window.joins(100, 89) && !window.joins(100, 131));
        // Its window closes once the right side can no longer bring a match: 100 + 30 + 5.
        assert_eq!(window.close_time(true, 100), 135);
        // A right record at 100 joins left records in [70, 110]: it closes at 100 + 10 + 5.
        assert_eq!(window.close_time(false, 100), 115);
        assert_eq!(window.retention_ms(), 45);
        assert_eq!(window.expiry_time(100), 145);
        // The last right record a left record at 100 can meet is not late at stream time 145.
        let right = 130;
        assert!(window.joins(100, right) && window.close_time(false, right) >= 145);
        assert_eq!(
            window.to_string(),
            "WITHIN (10 MILLISECONDS, 30 MILLISECONDS) GRACE PERIOD 5 MILLISECONDS"
        );
        let symmetric = JoinWindow::new(60_000, 60_000, None).unwrap();
        assert_eq!(symmetric.grace_ms, DEFAULT_GRACE_PERIOD_MS);
        assert_eq!(symmetric.to_string(), "WITHIN 1 MINUTE GRACE PERIOD 1 DAY");
        assert!(JoinWindow::new(-1, 0, None).is_err());
        assert!(JoinWindow::new(0, 0, Some(MAX_WINDOW_DURATION_MS + 1)).is_err());
    }

    #[test]
    fn tumbling_windows_align_to_the_epoch_and_start_after_it() {
        let spec = WindowSpec::new(WindowKind::Tumbling { size_ms: 1000 }, Some(0), None).unwrap();
        assert_eq!(starts(&spec, 0), vec![0]);
        assert_eq!(starts(&spec, 999), vec![0]);
        assert_eq!(starts(&spec, 1000), vec![1000]);
        assert_eq!(starts(&spec, -1), Vec::<i64>::new());
        assert_eq!(spec.end_of(1000), 2000);
        assert_eq!(spec.retention_ms, 1000);
    }

    #[test]
    fn hopping_windows_hold_every_record_size_over_advance_times() {
        let spec = WindowSpec::new(
            WindowKind::Hopping {
                size_ms: 1000,
                advance_ms: 300,
            },
            Some(0),
            None,
        )
        .unwrap();
        // Windows start at multiples of 300 and last 1000 ms.
        assert_eq!(starts(&spec, 950), vec![0, 300, 600, 900]);
        assert_eq!(starts(&spec, 1000), vec![300, 600, 900]);
        assert_eq!(starts(&spec, 1200), vec![300, 600, 900, 1200]);
        // No window starts before the epoch.
        assert_eq!(starts(&spec, 100), vec![0]);
        for time in [-5000, -1, 0, 1, 299, 300, 12345] {
            for start in starts(&spec, time) {
                assert!(
                    start <= time && time < start + 1000,
                    "{time} in [{start}, +1000)"
                );
                assert_eq!(start.rem_euclid(300), 0);
            }
        }
    }

    #[test]
    fn bad_windows_are_refused_with_the_reason() {
        let hop = |size_ms, advance_ms| {
            WindowSpec::new(
                WindowKind::Hopping {
                    size_ms,
                    advance_ms,
                },
                None,
                None,
            )
        };
        assert!(hop(1000, 2000).unwrap_err().0.contains("ADVANCE BY"));
        assert!(hop(1_000_000, 1).unwrap_err().0.contains("at most 1000"));
        assert!(
            WindowSpec::new(WindowKind::Tumbling { size_ms: 0 }, None, None)
                .unwrap_err()
                .0
                .contains("SIZE must be positive")
        );
        let short = WindowSpec::new(
            WindowKind::Tumbling { size_ms: 1000 },
            Some(500),
            Some(1200),
        );
        assert!(short.unwrap_err().0.contains("at least"));
        let spec = WindowSpec::new(WindowKind::Session { gap_ms: 60_000 }, None, None).unwrap();
        assert_eq!(spec.grace_ms, DEFAULT_GRACE_PERIOD_MS);
        assert_eq!(spec.close_time(0), 60_000 + DEFAULT_GRACE_PERIOD_MS);
    }

    #[test]
    fn ordered_time_bytes_sort_like_times() {
        let times = [i64::MIN, -1000, -1, 0, 1, 1000, i64::MAX];
        for pair in times.windows(2) {
            assert!(ordered_time_bytes(pair[0]) < ordered_time_bytes(pair[1]));
        }
        for time in times {
            assert_eq!(time_from_ordered_bytes(ordered_time_bytes(time)), time);
        }
    }

    #[test]
    fn windows_print_as_written() {
        let spec = WindowSpec::new(
            WindowKind::Hopping {
                size_ms: 60_000,
                advance_ms: 10_000,
            },
            Some(1500),
            Some(3_600_000),
        )
        .unwrap();
        assert_eq!(
            spec.to_string(),
            "HOPPING (SIZE 1 MINUTE, ADVANCE BY 10 SECONDS, RETENTION 1 HOUR, GRACE PERIOD 1500 MILLISECONDS)"
        );
    }
}
