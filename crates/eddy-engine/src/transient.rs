//! What a push query leaves behind, and its removal when the query ends.
//!
//! A push query (`SELECT ... EMIT CHANGES`) may run as several queries: a join of more than two
//! sources or an aggregation over a join runs as a chain of join steps, and a stream not
//! partitioned like the source it joins is first repartitioned (as persistent queries do). Those
//! queries write internal topics (`_eddy-<service>-query-transient_..-join-1`, `...-repartition`)
//! and keep state in stores named `transient-<query id>...`. A push query owns all of it through a
//! [`TransientResources`]: when the client goes away (or `LIMIT` is reached) the value is dropped,
//! and the engine's clean-up task stops the queries gracefully, then drops their stores and
//! deletes their topics.
//!
//! At most [`RETIRING_PUSH_QUERIES_MAX`] ended push queries wait for that task; past it, an ended
//! query's tasks are cancelled at once and its stores are left to the next start of the server
//! (which drops every `transient-` store). Topics of push queries a crash interrupted are left:
//! other servers of the service may be using topics of the same form.
//!
//! When the engine shuts down ([`JanitorTask::finish`]) the task takes no more queries and
//! finishes the clean-ups under way and those queued, so that their queries' Kafka clients are
//! closed before the caller stops the broker; aborting it instead dropped those queries' handles,
//! and their consumers closed later against a broker that was gone.

use std::time::Duration;

use eddy_runtime::{KafkaConnection, QueryHandle};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{info, warn};

/// Ended push queries queued for their clean-up (see the module docs).
pub(crate) const RETIRING_PUSH_QUERIES_MAX: usize = 256;

/// Ended push queries cleaned up at once: stopping one waits for its tasks to end.
const CLEAN_UPS_AT_ONCE_MAX: usize = 8;

/// An ended push query, as the clean-up task gets it.
struct Retired {
    query_id: String,
    handle: Option<QueryHandle>,
    store_prefix: String,
    topics: Vec<String>,
}

/// The sending end of the clean-up task's queue. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Janitor {
    sender: mpsc::Sender<Retired>,
}

impl Janitor {
    /// Starts the clean-up task; it ends when every `Janitor` clone is dropped, when it is told
    /// to finish, or when it is aborted (see [`JanitorTask`]).
    pub(crate) fn start(
        state: eddy_state::StateStore,
        connection: KafkaConnection,
    ) -> (Self, JanitorTask) {
        let (sender, mut retired) = mpsc::channel::<Retired>(RETIRING_PUSH_QUERIES_MAX);
        let (finish, mut finishing) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            // Owned here: aborting this task aborts the clean-ups under way.
            let mut cleaning = JoinSet::new();
            loop {
                tokio::select! {
                    query = retired.recv(), if cleaning.len() < CLEAN_UPS_AT_ONCE_MAX => {
                        let Some(query) = query else { break };
                        cleaning.spawn(clean_up(state.clone(), connection.clone(), query));
                    }
                    Some(_) = cleaning.join_next(), if !cleaning.is_empty() => {}
                    // Told to finish, or its `JanitorTask` is gone.
                    _ = &mut finishing => {
                        retired.close();
                        while let Ok(query) = retired.try_recv() {
                            cleaning.spawn(clean_up(state.clone(), connection.clone(), query));
                        }
                        break;
                    }
                }
            }
            while cleaning.join_next().await.is_some() {}
        });
        (Self { sender }, JanitorTask { task, finish })
    }

    /// The resources of a new push query, empty so far: the query is cleaned up when the value
    /// is dropped, however far it got.
    pub(crate) fn resources(&self, query_id: &str, store_prefix: String) -> TransientResources {
        TransientResources {
            query_id: query_id.to_owned(),
            handle: None,
            store_prefix,
            topics: Vec::new(),
            janitor: self.clone(),
        }
    }
}

/// The clean-up task of an engine, with the means to end it.
pub(crate) struct JanitorTask {
    task: JoinHandle<()>,
    finish: oneshot::Sender<()>,
}

impl JanitorTask {
    /// Ends the task once the clean-ups under way and those queued are done (their queries
    /// stopped, their stores dropped, their topics deleted), waiting at most `timeout`; what is
    /// left then is aborted. Push queries whose clients still hold them are not among those.
    pub(crate) async fn finish(self, timeout: Duration) {
        // Fails only when the task has ended already.
        let _ = self.finish.send(());
        let mut task = self.task;
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            warn!(
                timeout_ms = timeout.as_millis() as u64,
                "ended push queries were not cleaned up in time; the rest is left to the next start"
            );
            task.abort();
            let _ = task.await;
        }
    }

    /// Aborts the task and the clean-ups under way at once.
    pub(crate) fn abort(&self) {
        self.task.abort();
    }
}

/// The queries, stores and topics of one push query (see the module docs).
pub(crate) struct TransientResources {
    query_id: String,
    handle: Option<QueryHandle>,
    /// Every store whose name starts with this belongs to the query.
    store_prefix: String,
    /// Physical names of the internal topics created for the query.
    topics: Vec<String>,
    janitor: Janitor,
}

impl TransientResources {
    /// Records an internal topic as the query's, before it is created.
    pub(crate) fn add_topic(&mut self, physical: String) {
        self.topics.push(physical);
    }

    /// The query's running queries (a chain's last query, owning the others).
    pub(crate) fn set_handle(&mut self, handle: QueryHandle) {
        self.handle = Some(handle);
    }
}

impl Drop for TransientResources {
    fn drop(&mut self) {
        let retired = Retired {
            query_id: std::mem::take(&mut self.query_id),
            handle: self.handle.take(),
            store_prefix: std::mem::take(&mut self.store_prefix),
            topics: std::mem::take(&mut self.topics),
        };
        if let Err(error) = self.janitor.sender.try_send(retired) {
            let retired = match error {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
            };
            // Dropping the handle cancels the query's tasks now.
            warn!(
                query = retired.query_id,
                topics = ?retired.topics,
                "too many ended push queries wait for their clean-up; this one's state waits \
                 for the next start and its topics are left"
            );
        }
    }
}

async fn clean_up(state: eddy_state::StateStore, connection: KafkaConnection, query: Retired) {
    if let Some(handle) = query.handle {
        handle.stop().await;
    }
    for store in state.store_names() {
        if store.starts_with(&query.store_prefix)
            && let Err(error) = state.drop_store(&store)
        {
            warn!(query = query.query_id, store, %error, "cannot drop a push query's state");
        }
    }
    for topic in &query.topics {
        match connection.delete_topic(topic).await {
            Ok(()) => info!(
                query = query.query_id,
                topic, "deleted a push query's topic"
            ),
            Err(error) => {
                warn!(query = query.query_id, topic, %error, "cannot delete a push query's topic")
            }
        }
    }
}
