//! Restarting failed persistent queries.
//!
//! A persistent query fails when something it cannot get past happens: the broker goes away and
//! a produce times out, a partition it reads stalls, a commit or a restore fails. It must not stay
//! failed: the broker comes back, the partition moves. The engine's *restart task* looks at the
//! queries of this server every [`RESTART_CHECK_INTERVAL_MS_MAX`] at most (sooner when the first
//! backoff is shorter), and restarts each failed one from its committed offsets, the way a
//! restart of the server would: stop what is left of it, plan it again from its SQL, start it.
//!
//! Restarts back off: `eddy.query_retry_backoff_initial_ms` after the first failure, doubled after
//! each further failure in a row, at most `eddy.query_retry_backoff_max_ms`. A query that has
//! run that maximum since its restart starts again from the initial backoff. A query that could
//! not even be started (at the server's start, or when it was created) is retried the same way.
//! Until it runs again, its status is `ERROR`, with its last error, how many times it failed in a
//! row and when it is retried next.
//!
//! The restart holds the engine's command lock, like a statement that changes the catalog, so
//! it cannot interleave with `TERMINATE` or `DROP`: a query no longer in the catalog is forgotten,
//! not restarted.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

use eddy_runtime::QueryStatus;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::engine::{Engine, EngineInner};

/// Longest time between two looks of the restart task at the queries' statuses.
pub(crate) const RESTART_CHECK_INTERVAL_MS_MAX: u64 = 1_000;

/// Where a failed persistent query is on its way back.
#[derive(Debug, Clone)]
pub(crate) struct Restart {
    /// Failures in a row, this one included.
    pub(crate) failures: u32,
    /// The error of the last failure (of the query, or of its last restart).
    pub(crate) last_error: String,
    /// When the query is restarted next; `None` once it runs again.
    pub(crate) retry_at: Option<Instant>,
    /// When it last started running again.
    pub(crate) restarted_at: Option<Instant>,
}

impl Restart {
    /// The status text of a query waiting for its restart.
    pub(crate) fn describe(&self, now: Instant) -> String {
        let when = match self.retry_at {
            Some(at) if at > now => format!("in {} ms", (at - now).as_millis()),
            Some(_) => "under way".to_owned(),
            None => "done".to_owned(),
        };
        format!(
            "{} (failed {} time{} in a row; restart {when})",
            self.last_error,
            self.failures,
            if self.failures == 1 { "" } else { "s" }
        )
    }
}

/// Starts the restart task of `engine`. It holds the engine weakly: it ends when the engine is
/// dropped, or when the returned handle is aborted.
pub(crate) fn start_restart_task(
    engine: Weak<EngineInner>,
    check_every: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(check_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = engine.upgrade() else {
                return;
            };
            Engine { inner }.restart_failed_queries().await;
        }
    })
}

/// How often the restart task looks at the queries: at most every
/// [`RESTART_CHECK_INTERVAL_MS_MAX`], and at least twice per initial backoff.
pub(crate) fn restart_check_interval(initial_backoff_ms: u64) -> Duration {
    Duration::from_millis((initial_backoff_ms / 2).clamp(10, RESTART_CHECK_INTERVAL_MS_MAX))
}

impl Engine {
    /// Records that query `id` failed with `error` (or could not be started): it is restarted
    /// after the backoff its failures in a row call for.
    pub(crate) fn schedule_restart(&self, id: &str, error: String) {
        let now = Instant::now();
        let config = &self.inner.config;
        let Ok(mut restarts) = self.inner.restarts.lock() else {
            return;
        };
        let restart = restarts.entry(id.to_owned()).or_insert(Restart {
            failures: 0,
            last_error: String::new(),
            retry_at: None,
            restarted_at: None,
        });
        // A query that ran for the longest backoff since its restart fails for the first time.
        let reset_after = Duration::from_millis(config.query_retry_backoff_max_ms);
        if restart
            .restarted_at
            .is_some_and(|at| now.saturating_duration_since(at) >= reset_after)
        {
            restart.failures = 0;
        }
        restart.failures = restart.failures.saturating_add(1);
        let wait_ms = config.query_retry_backoff_ms(restart.failures);
        restart.retry_at = Some(now + Duration::from_millis(wait_ms));
        restart.last_error = error;
        warn!(
            query = id,
            failures = restart.failures,
            wait_ms,
            error = restart.last_error,
            "persistent query failed; it will be restarted"
        );
    }

    /// Starts a query just recorded in the command topic. One that cannot start stays in the
    /// catalog, as on every server of the service, and is retried like a failed one.
    pub(crate) async fn start_recorded_query(
        &self,
        query: &eddy_catalog::QueryInfo,
    ) -> Result<(), crate::EngineError> {
        self.start_persistent_query(query)
            .await
            .inspect_err(|error| self.schedule_restart(&query.id, error.to_string()))
    }

    /// The restart of query `id` under way, if it failed and has not run long since.
    pub(crate) fn restart_of(&self, id: &str) -> Option<Restart> {
        self.inner.restarts.lock().ok()?.get(id).cloned()
    }

    /// One look of the restart task: notes the queries that failed since the last look, restarts
    /// those whose backoff is over, and forgets the restarts of queries that have run long enough.
    pub(crate) async fn restart_failed_queries(&self) {
        let now = Instant::now();
        let newly_failed: Vec<(String, String)> = match self.inner.queries.lock() {
            Ok(queries) => {
                let restarts = self
                    .inner
                    .restarts
                    .lock()
                    .map(|r| r.clone())
                    .unwrap_or_default();
                queries
                    .iter()
                    .filter_map(|(id, handle)| match handle.status() {
                        // Already scheduled: the handle is the failed one, not yet replaced.
                        QueryStatus::Error(_)
                            if restarts.get(id).is_some_and(|r| r.retry_at.is_some()) =>
                        {
                            None
                        }
                        QueryStatus::Error(error) => Some((id.clone(), error)),
                        _ => None,
                    })
                    .collect()
            }
            Err(_) => return,
        };
        for (id, error) in newly_failed {
            self.schedule_restart(&id, error);
        }
        let reset_after = Duration::from_millis(self.inner.config.query_retry_backoff_max_ms);
        let due: Vec<String> = match self.inner.restarts.lock() {
            Ok(mut restarts) => {
                restarts.retain(|_, r| {
                    r.retry_at.is_some()
                        || r.restarted_at
                            .is_some_and(|at| now.saturating_duration_since(at) < reset_after)
                });
                restarts
                    .iter()
                    .filter(|(_, r)| r.retry_at.is_some_and(|at| at <= now))
                    .map(|(id, _)| id.clone())
                    .collect()
            }
            Err(_) => return,
        };
        for id in due {
            self.restart_query(&id).await;
        }
    }

    /// Stops what is left of failed query `id` and starts it again, under the command lock.
    async fn restart_query(&self, id: &str) {
        let _guard = self.inner.command_lock.lock().await;
        // Its failed part has ended; this stops the rest (join steps, repartitioning).
        self.stop_persistent_query(id).await;
        let Some(info) = self.catalog().queries().find(|q| q.id == id).cloned() else {
            // Terminated or dropped meanwhile.
            if let Ok(mut restarts) = self.inner.restarts.lock() {
                restarts.remove(id);
            }
            return;
        };
        match self.start_persistent_query(&info).await {
            Ok(()) => {
                if let Ok(mut restarts) = self.inner.restarts.lock()
                    && let Some(restart) = restarts.get_mut(id)
                {
                    restart.retry_at = None;
                    restart.restarted_at = Some(Instant::now());
                    info!(
                        query = id,
                        failures = restart.failures,
                        "persistent query restarted"
                    );
                }
            }
            Err(error) => self.schedule_restart(id, error.to_string()),
        }
    }
}

/// The restarts under way, by query id. Never held across `.await`.
pub(crate) type Restarts = std::sync::Mutex<HashMap<String, Restart>>;
