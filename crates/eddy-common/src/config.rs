//! Engine configuration: every limit Eddy enforces is a named field here with a documented default.
//!
//! Units are the last part of a name (`commit_interval_ms`). An operator sets them by the same
//! names, with or without the `eddy.` prefix `SHOW PROPERTIES` prints, through
//! [`EngineConfig::set`] (the binary's `--set NAME=VALUE`).

use serde::{Deserialize, Serialize};

/// Limits and identities of one Eddy server. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    /// Identity of the Eddy cluster: servers with the same service id share a command topic, and
    /// therefore a catalog and the persistent queries. Default `eddy`.
    pub service_id: String,
    /// Prepended to the physical name of every Kafka topic Eddy reads or writes, user topics included.
    /// Used by `eddy test` to give every test file its own namespace on a shared broker. Default empty.
    pub topic_prefix: String,
    /// Most records decoded and processed as one Arrow batch. Default 16384.
    pub max_batch_records: usize,
    /// Most bytes of keys and values in one batch: a batch ends at `max_batch_records` or at
    /// this, whichever comes first (a single larger record makes a batch of its own). Batches
    /// fill up only while a query catches up; this bounds what a partition's queue holds,
    /// `partition_queue_batches` times it, whatever the records' size. Default 4 MiB.
    pub max_batch_bytes: usize,
    /// Longest a partially filled batch waits for more records before it is processed, and a
    /// query's consumers' and join readers' `fetch.wait.max.ms`. Default 20 ms.
    pub max_batch_wait_ms: u64,
    /// How often a join of two tables, or of two streams, checks both sides for new records
    /// (besides whenever the query's consumer delivers): the longest a change waits to be
    /// joined. Default 100 ms.
    pub table_join_poll_interval_ms: u64,
    /// Batches queued between a query's consumer and one partition's task; when full, the consumer
    /// stops polling (back-pressure). Default 4.
    pub partition_queue_batches: usize,
    /// Batches of output a partition task of a query that writes a stream may have sent and not
    /// yet seen acknowledged while it processes the next ones (1: each batch waits for its own).
    /// Progress, and so the committed offset, only covers batches acknowledged in full and in
    /// order. More than 2 gained nothing more against a broker of its own, and lost against the
    /// embedded broker on two cores (docs/benchmarks.md, "Batches in flight"). Default 2.
    pub max_batches_in_flight: usize,
    /// How often a persistent query commits the offsets whose output has been acknowledged. Default 1000 ms.
    pub commit_interval_ms: u64,
    /// Batches of rows buffered for a push-query client before the query waits for it. Default 16.
    pub push_query_queue_batches: usize,
    /// Lines of a `PRINT` buffered for a slow client before it stops reading the topic. Default 1024.
    pub print_queue_lines: usize,
    /// Records a push query or `PRINT` may return when it has no `LIMIT`; further rows are dropped
    /// with a notice only when the client stops reading. Default unlimited (0).
    pub push_query_max_rows: u64,
    /// How long a producer waits to fill a Kafka batch. Default 5 ms.
    pub producer_linger_ms: u64,
    /// Whether the producer is idempotent (librdkafka's `enable.idempotence`): each partition's
    /// records are written once and in the order sent, whatever the retries. Without it a retried
    /// request can land after later ones, and a table's topic or a changelog then holds an older
    /// row as a key's last. Turn it off only for a Kafka that refuses idempotent producers (an
    /// ACL without `IDEMPOTENT_WRITE`, on Kafka before 2.8). Default true.
    pub producer_idempotence: bool,
    /// Longest wait for a produced record to be acknowledged before the query reports a failure.
    /// Default 30000 ms.
    pub produce_timeout_ms: u64,
    /// Longest wait for a Kafka admin, metadata or command-topic operation, and at shutdown for
    /// the clean-up of push queries that just ended. Default 30000 ms.
    pub kafka_request_timeout_ms: u64,
    /// Records the processing log may hold in memory before the queries that report errors wait for
    /// it; its writer keeps as many again sent to the topic and not yet acknowledged. Default 1024.
    pub processing_log_queue_records: usize,
    /// Bytes of a malformed record copied into its processing-log entry. Default 1024.
    pub processing_log_record_bytes: usize,
    /// Partitions of topics Eddy creates when a statement does not say. Default 1.
    pub default_partitions: i32,
    /// Replication factor of topics Eddy creates when a statement does not say. Default 1.
    pub default_replicas: i32,
    /// Most rows a `SELECT ... EMIT CHANGES` without `LIMIT` buffers when the client is slow. Default 10000.
    pub max_pending_push_rows: usize,
    /// Directory of this server's RocksDB state (materialized tables). The binary puts it under its
    /// data directory. Default `eddy-data/state`.
    pub state_dir: std::path::PathBuf,
    /// RocksDB block cache shared by every store of the server. Default 64 MiB.
    pub state_block_cache_bytes: usize,
    /// Entries `COLLECT_LIST`, `COLLECT_SET` and `HISTOGRAM` keep per group (ksqlDB's default limit).
    /// Default 1000.
    pub collection_max_entries: usize,
    /// Most rows a pull query (a `SELECT` over a table without `EMIT CHANGES`) reads from a table's
    /// state before it fails with a hint to filter on the key. Default 1000000.
    pub pull_query_max_rows: usize,
    /// Longest a read-your-writes pull query waits for the table to catch up with its inputs.
    /// Default 10000 ms.
    pub read_your_writes_timeout_ms: u64,
    /// Most bytes of stored rows a stream-stream join packs into one record of its changelog:
    /// the join logs the rows each round stores in records of about this size instead of one
    /// record per row. Keep it below the broker's and the producer's largest message (1 MB by
    /// default in Kafka and librdkafka); a single larger row makes a record of its own.
    /// Default 512 KiB.
    pub join_changelog_record_bytes: usize,
    /// Largest record Eddy writes to a state's changelog, and so the largest stored state of one
    /// group of an aggregation (`COUNT_DISTINCT`, `COLLECT_SET`, `HISTOGRAM` and `TOPK` keep
    /// values). Changelog topics are created with this `max.message.bytes`, and Eddy's producers
    /// accept records this large. A group whose state would grow past it is not updated: the
    /// batch's rows of that group are skipped and reported to the processing log
    /// (`STATE_TOO_LARGE`). Default 8 MiB (Kafka's topic default is 1 MB).
    pub state_record_max_bytes: usize,
    /// How long a persistent query that failed (its broker went away, a produce timed out, a
    /// partition stalled) waits before it is restarted from its committed offsets; each failure
    /// in a row doubles the wait, up to `query_retry_backoff_max_ms`. Default 1000 ms.
    pub query_retry_backoff_initial_ms: u64,
    /// Longest wait between two restarts of a failing persistent query; a query that has run
    /// this long since its last restart counts its next failure as a first one again.
    /// Default 60000 ms.
    pub query_retry_backoff_max_ms: u64,
    /// Longest a stopping query (TERMINATE, DROP, shutdown) waits for its partition tasks to
    /// finish the batches queued and in flight; tasks still running then are aborted, and what
    /// they had not acknowledged is processed again when the query next starts. The stop then
    /// waits up to `kafka_request_timeout_ms` more for the last commit and the consumer's close.
    /// Default 10000 ms.
    pub query_stop_timeout_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            service_id: "eddy".to_owned(),
            topic_prefix: String::new(),
            max_batch_records: 16_384,
            max_batch_bytes: 4 << 20,
            max_batch_wait_ms: 20,
            table_join_poll_interval_ms: 100,
            partition_queue_batches: 4,
            max_batches_in_flight: 2,
            commit_interval_ms: 1000,
            push_query_queue_batches: 16,
            print_queue_lines: 1024,
            push_query_max_rows: 0,
            producer_linger_ms: 5,
            producer_idempotence: true,
            produce_timeout_ms: 30_000,
            kafka_request_timeout_ms: 30_000,
            processing_log_queue_records: 1024,
            processing_log_record_bytes: 1024,
            default_partitions: 1,
            default_replicas: 1,
            max_pending_push_rows: 10_000,
            state_dir: std::path::PathBuf::from("eddy-data/state"),
            state_block_cache_bytes: 64 << 20,
            collection_max_entries: 1000,
            pull_query_max_rows: 1_000_000,
            read_your_writes_timeout_ms: 10_000,
            join_changelog_record_bytes: 512 << 10,
            state_record_max_bytes: 8 << 20,
            query_retry_backoff_initial_ms: 1_000,
            query_retry_backoff_max_ms: 60_000,
            query_stop_timeout_ms: 10_000,
        }
    }
}

impl EngineConfig {
    /// The bounds of one input batch.
    pub fn batch_limits(&self) -> BatchLimits {
        BatchLimits {
            records: self.max_batch_records.max(1),
            bytes: self.max_batch_bytes.max(1),
            wait_ms: self.max_batch_wait_ms.max(1),
        }
    }

    /// Physical Kafka topic name of a logical topic name (applies [`EngineConfig::topic_prefix`]).
    pub fn physical_topic(&self, logical: &str) -> String {
        format!("{}{}", self.topic_prefix, logical)
    }

    /// Logical topic name of a physical one, or `None` when the topic is outside this namespace.
    pub fn logical_topic<'a>(&self, physical: &'a str) -> Option<&'a str> {
        physical.strip_prefix(self.topic_prefix.as_str())
    }

    /// The topic that records every DDL statement and persistent query, in order.
    pub fn command_topic(&self) -> String {
        format!("_eddy-{}-command", self.service_id)
    }

    /// The topic behind the processing-log stream.
    pub fn processing_log_topic(&self) -> String {
        format!("_eddy-{}-processing-log", self.service_id)
    }

    /// Every setting as `(eddy.<name>, value)`, for `SHOW PROPERTIES`.
    pub fn describe(&self) -> Vec<(String, String)> {
        let settings: [(&str, String); 31] = [
            ("service_id", self.service_id.clone()),
            ("topic_prefix", self.topic_prefix.clone()),
            ("max_batch_records", self.max_batch_records.to_string()),
            ("max_batch_bytes", self.max_batch_bytes.to_string()),
            ("max_batch_wait_ms", self.max_batch_wait_ms.to_string()),
            (
                "table_join_poll_interval_ms",
                self.table_join_poll_interval_ms.to_string(),
            ),
            (
                "partition_queue_batches",
                self.partition_queue_batches.to_string(),
            ),
            (
                "max_batches_in_flight",
                self.max_batches_in_flight.to_string(),
            ),
            ("commit_interval_ms", self.commit_interval_ms.to_string()),
            (
                "push_query_queue_batches",
                self.push_query_queue_batches.to_string(),
            ),
            ("print_queue_lines", self.print_queue_lines.to_string()),
            ("push_query_max_rows", self.push_query_max_rows.to_string()),
            ("producer_linger_ms", self.producer_linger_ms.to_string()),
            (
                "producer_idempotence",
                self.producer_idempotence.to_string(),
            ),
            ("produce_timeout_ms", self.produce_timeout_ms.to_string()),
            (
                "kafka_request_timeout_ms",
                self.kafka_request_timeout_ms.to_string(),
            ),
            (
                "processing_log_queue_records",
                self.processing_log_queue_records.to_string(),
            ),
            (
                "processing_log_record_bytes",
                self.processing_log_record_bytes.to_string(),
            ),
            ("default_partitions", self.default_partitions.to_string()),
            ("default_replicas", self.default_replicas.to_string()),
            (
                "max_pending_push_rows",
                self.max_pending_push_rows.to_string(),
            ),
            ("state_dir", self.state_dir.display().to_string()),
            (
                "state_block_cache_bytes",
                self.state_block_cache_bytes.to_string(),
            ),
            (
                "collection_max_entries",
                self.collection_max_entries.to_string(),
            ),
            ("pull_query_max_rows", self.pull_query_max_rows.to_string()),
            (
                "read_your_writes_timeout_ms",
                self.read_your_writes_timeout_ms.to_string(),
            ),
            (
                "join_changelog_record_bytes",
                self.join_changelog_record_bytes.to_string(),
            ),
            (
                "state_record_max_bytes",
                self.state_record_max_bytes.to_string(),
            ),
            (
                "query_retry_backoff_initial_ms",
                self.query_retry_backoff_initial_ms.to_string(),
            ),
            (
                "query_retry_backoff_max_ms",
                self.query_retry_backoff_max_ms.to_string(),
            ),
            (
                "query_stop_timeout_ms",
                self.query_stop_timeout_ms.to_string(),
            ),
        ];
        settings
            .into_iter()
            .map(|(name, value)| (format!("eddy.{name}"), value))
            .collect()
    }

    /// Sets the setting `name` (as [`EngineConfig::describe`] names it, `eddy.` prefix optional)
    /// from its text form. Fails on an unknown name or a value of the wrong kind, and on 0 for a
    /// limit where 0 would stop the engine (batch sizes, queue depths, intervals, timeouts).
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
        let key = name.strip_prefix("eddy.").unwrap_or(name);
        let invalid = |expected: &'static str| ConfigError::InvalidValue {
            name: format!("eddy.{key}"),
            value: value.to_owned(),
            expected,
        };
        let count = || {
            value
                .trim()
                .parse::<u64>()
                .map_err(|_| invalid("a whole number"))
        };
        let positive = || match count()? {
            0 => Err(invalid("a whole number above 0")),
            n => Ok(n),
        };
        let size = |n: u64| usize::try_from(n).map_err(|_| invalid("a smaller whole number"));
        let boolean = || match value.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(invalid("true or false")),
        };
        let partitions = || {
            value
                .trim()
                .parse::<i32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid("a whole number above 0"))
        };
        match key {
            "service_id" | "topic_prefix" if value.contains(char::is_whitespace) => {
                return Err(invalid("a name without spaces"));
            }
            "service_id" if value.is_empty() => return Err(invalid("a non-empty name")),
            "service_id" => self.service_id = value.to_owned(),
            "topic_prefix" => self.topic_prefix = value.to_owned(),
            "max_batch_records" => self.max_batch_records = size(positive()?)?,
            "max_batch_bytes" => self.max_batch_bytes = size(positive()?)?,
            "max_batch_wait_ms" => self.max_batch_wait_ms = positive()?,
            "table_join_poll_interval_ms" => self.table_join_poll_interval_ms = positive()?,
            "partition_queue_batches" => self.partition_queue_batches = size(positive()?)?,
            "max_batches_in_flight" => self.max_batches_in_flight = size(positive()?)?,
            "commit_interval_ms" => self.commit_interval_ms = positive()?,
            "push_query_queue_batches" => self.push_query_queue_batches = size(positive()?)?,
            "print_queue_lines" => self.print_queue_lines = size(positive()?)?,
            "push_query_max_rows" => self.push_query_max_rows = count()?,
            "producer_linger_ms" => self.producer_linger_ms = count()?,
            "producer_idempotence" => self.producer_idempotence = boolean()?,
            "produce_timeout_ms" => self.produce_timeout_ms = positive()?,
            "kafka_request_timeout_ms" => self.kafka_request_timeout_ms = positive()?,
            "processing_log_queue_records" => {
                self.processing_log_queue_records = size(positive()?)?
            }
            "processing_log_record_bytes" => self.processing_log_record_bytes = size(count()?)?,
            "default_partitions" => self.default_partitions = partitions()?,
            "default_replicas" => self.default_replicas = partitions()?,
            "max_pending_push_rows" => self.max_pending_push_rows = size(positive()?)?,
            "state_dir" if value.is_empty() => return Err(invalid("a directory")),
            "state_dir" => self.state_dir = std::path::PathBuf::from(value),
            "state_block_cache_bytes" => self.state_block_cache_bytes = size(count()?)?,
            "collection_max_entries" => self.collection_max_entries = size(positive()?)?,
            "pull_query_max_rows" => self.pull_query_max_rows = size(positive()?)?,
            "read_your_writes_timeout_ms" => self.read_your_writes_timeout_ms = positive()?,
            "join_changelog_record_bytes" => self.join_changelog_record_bytes = size(positive()?)?,
            "state_record_max_bytes" => self.state_record_max_bytes = size(positive()?)?,
            "query_retry_backoff_initial_ms" => self.query_retry_backoff_initial_ms = positive()?,
            "query_retry_backoff_max_ms" => self.query_retry_backoff_max_ms = positive()?,
            "query_stop_timeout_ms" => self.query_stop_timeout_ms = positive()?,
            _ => {
                return Err(ConfigError::UnknownSetting {
                    name: name.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Applies `NAME=VALUE` assignments in order (see [`EngineConfig::set`]).
    pub fn apply_assignments<'a>(
        &mut self,
        assignments: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ConfigError> {
        for assignment in assignments {
            let (name, value) =
                assignment
                    .split_once('=')
                    .ok_or_else(|| ConfigError::NotAnAssignment {
                        text: assignment.to_owned(),
                    })?;
            self.set(name.trim(), value.trim())?;
        }
        Ok(())
    }

    /// Logical name of an internal topic of a persistent query (`changelog`, `repartition`).
    pub fn query_topic(&self, query_id: &str, role: &str) -> String {
        format!("_eddy-{}-query-{query_id}-{role}", self.service_id)
    }

    /// Consumer group of a persistent query.
    pub fn query_group_id(&self, query_id: &str) -> String {
        format!("_eddy-{}-query-{}", self.service_id, query_id)
    }

    /// How long a persistent query waits before its restart after `failures` failures in a row
    /// (1 for the first): `query_retry_backoff_initial_ms` doubled for each failure before this
    /// one, at most `query_retry_backoff_max_ms`.
    pub fn query_retry_backoff_ms(&self, failures: u32) -> u64 {
        let doublings = failures.saturating_sub(1).min(63);
        self.query_retry_backoff_initial_ms
            .saturating_mul(1u64 << doublings)
            .min(self.query_retry_backoff_max_ms.max(1))
    }
}

/// Where an input batch ends: at `records` records or once its keys and values hold `bytes`
/// bytes, whichever comes first ([`EngineConfig::max_batch_records`],
/// [`EngineConfig::max_batch_bytes`]); and how long a fetch for it waits for records
/// ([`EngineConfig::max_batch_wait_ms`], the consumers' `fetch.wait.max.ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub records: usize,
    pub bytes: usize,
    pub wait_ms: u64,
}

impl BatchLimits {
    /// Whether a batch of `records` records and `bytes` bytes is full.
    pub fn is_full(&self, records: usize, bytes: usize) -> bool {
        records >= self.records || bytes >= self.bytes
    }
}

/// A setting that [`EngineConfig::set`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown setting \"{name}\"")]
    UnknownSetting { name: String },
    #[error("invalid value \"{value}\" for setting \"{name}\": expected {expected}")]
    InvalidValue {
        name: String,
        value: String,
        expected: &'static str,
    },
    #[error(
        "\"{text}\" is not a setting: expected NAME=VALUE, such as eddy.max_batch_records=8192"
    )]
    NotAnAssignment { text: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_described_setting_can_be_set_to_its_own_value() {
        let defaults = EngineConfig::default();
        let mut config = EngineConfig::default();
        for (name, value) in defaults.describe() {
            config
                .set(&name, &value)
                .unwrap_or_else(|e| panic!("{name}={value}: {e}"));
        }
        assert_eq!(config, defaults);
    }

    #[test]
    fn set_changes_the_named_setting_with_or_without_prefix() {
        let mut config = EngineConfig::default();
        config.set("eddy.max_batch_records", "8192").unwrap();
        config.set("max_batch_wait_ms", " 50 ").unwrap();
        config.set("eddy.producer_idempotence", "FALSE").unwrap();
        assert!(!config.producer_idempotence);
        config
            .apply_assignments(["eddy.commit_interval_ms = 250", "state_dir=/var/lib/eddy"])
            .unwrap();
        assert_eq!(config.max_batch_records, 8192);
        assert_eq!(config.max_batch_wait_ms, 50);
        assert_eq!(config.commit_interval_ms, 250);
        assert_eq!(config.state_dir, std::path::PathBuf::from("/var/lib/eddy"));
        let described: std::collections::HashMap<_, _> = config.describe().into_iter().collect();
        assert_eq!(described["eddy.max_batch_records"], "8192");
    }

    #[test]
    fn the_restart_backoff_doubles_up_to_its_maximum() {
        let config = EngineConfig {
            query_retry_backoff_initial_ms: 500,
            query_retry_backoff_max_ms: 3_000,
            ..Default::default()
        };
        let waits: Vec<u64> = (1..=6).map(|n| config.query_retry_backoff_ms(n)).collect();
        assert_eq!(waits, [500, 1_000, 2_000, 3_000, 3_000, 3_000]);
        assert_eq!(config.query_retry_backoff_ms(u32::MAX), 3_000);
        assert_eq!(config.query_retry_backoff_ms(0), 500);
    }

    #[test]
    fn a_batch_ends_at_its_record_or_byte_bound() {
        let limits = EngineConfig {
            max_batch_records: 100,
            max_batch_bytes: 1000,
            ..Default::default()
        }
        .batch_limits();
        assert!(!limits.is_full(99, 999));
        assert!(limits.is_full(100, 10), "record bound");
        assert!(limits.is_full(3, 1000), "byte bound");
    }

    #[test]
    fn batch_limits_carry_the_batch_wait_that_readers_fetch_with() {
        let limits = EngineConfig {
            max_batch_wait_ms: 35,
            ..Default::default()
        }
        .batch_limits();
        assert_eq!(limits.wait_ms, 35);
    }

    #[test]
    fn set_refuses_what_would_break_the_engine() {
        let mut config = EngineConfig::default();
        assert_eq!(
            config
                .set("eddy.max_batch_record", "1")
                .unwrap_err()
                .to_string(),
            "unknown setting \"eddy.max_batch_record\""
        );
        assert_eq!(
            config
                .set("max_batch_records", "0")
                .unwrap_err()
                .to_string(),
            "invalid value \"0\" for setting \"eddy.max_batch_records\": expected a whole number above 0"
        );
        assert!(config.set("max_batch_wait_ms", "20ms").is_err());
        assert!(config.set("default_partitions", "-1").is_err());
        assert!(config.set("service_id", "").is_err());
        assert!(config.set("producer_idempotence", "yes").is_err());
        assert!(config.apply_assignments(["max_batch_records"]).is_err());
        assert_eq!(
            config,
            EngineConfig::default(),
            "a refused setting changes nothing"
        );
    }

    #[test]
    fn prefix_round_trips() {
        let config = EngineConfig {
            topic_prefix: "t1_".into(),
            ..Default::default()
        };
        assert_eq!(config.physical_topic("orders"), "t1_orders");
        assert_eq!(config.logical_topic("t1_orders"), Some("orders"));
        assert_eq!(config.logical_topic("other"), None);
    }

    #[test]
    fn names_carry_the_service_id() {
        let config = EngineConfig {
            service_id: "prod".into(),
            ..Default::default()
        };
        assert_eq!(config.command_topic(), "_eddy-prod-command");
        assert_eq!(
            config.query_group_id("CSAS_X_1"),
            "_eddy-prod-query-CSAS_X_1"
        );
    }
}
