//! The request loop of the patched tansu-storage (`vendor/README.md`, fourth patch): read-only
//! requests are served beside a write in progress, writes still one at a time and in order, and a
//! requester that went away does not stop the loop.
//!
//! These drive `ChannelRequestLayer` with a storage service of the test's own, so that a write can
//! be held open until the test says so; the embedded broker's sqlite engine uses the same layer
//! (with `CONCURRENT_READS` lanes), and the Kafka tests of `broker.rs` and the whole suite cover it
//! end to end.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use rama::{Context, Layer, Service};
use tansu_storage::{
    ChannelRequestLayer, Request, RequestSender, Response, TopicId, bounded_channel,
};
use tokio::{
    sync::{Notify, oneshot},
    task::JoinHandle,
    time::timeout,
};
use tokio_util::sync::CancellationToken;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Long enough for any request of this fake storage to be answered on a loaded CI machine; a
/// request that takes longer is taken to be never served.
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);

/// A storage service whose write (`DeleteGroups`) waits until a read (`Ping`) has been served, and
/// whose other write (`Maintain`) records its order and how many writes were in progress at once.
#[derive(Clone, Default)]
struct GatedStorage {
    read_served: Arc<Notify>,
    writes_in_progress: Arc<AtomicUsize>,
    most_writes_in_progress: Arc<AtomicUsize>,
    maintained_at: Arc<Mutex<Vec<SystemTime>>>,
}

impl Service<(), Request> for GatedStorage {
    type Response = Response;
    type Error = tansu_storage::Error;

    async fn serve(&self, _ctx: Context<()>, request: Request) -> Result<Response, Self::Error> {
        match request {
            Request::Ping => {
                self.read_served.notify_one();
                Ok(Response::Ping(Ok(())))
            }
            Request::DeleteGroups(_) => {
                self.read_served.notified().await;
                Ok(Response::DeleteGroups(Ok(Vec::new())))
            }
            Request::Maintain(at) => {
                let in_progress = self.writes_in_progress.fetch_add(1, Ordering::SeqCst) + 1;
                self.most_writes_in_progress
                    .fetch_max(in_progress, Ordering::SeqCst);
                // Gives a write served beside this one the time to start.
                tokio::time::sleep(Duration::from_millis(5)).await;
                if let Ok(mut order) = self.maintained_at.lock() {
                    order.push(at);
                }
                self.writes_in_progress.fetch_sub(1, Ordering::SeqCst);
                Ok(Response::Maintain(Ok(())))
            }
            other => panic!("this test's storage does not serve {other}"),
        }
    }
}

/// Serves `storage` behind the layer as the sqlite engine configures it, with `concurrent_reads`
/// read lanes.
fn serve(
    storage: GatedStorage,
    concurrent_reads: usize,
) -> (
    RequestSender,
    JoinHandle<Result<(), tansu_storage::Error>>,
    CancellationToken,
) {
    let cancellation = CancellationToken::new();
    let (sender, receiver) = bounded_channel(1);
    let service = ChannelRequestLayer::new(cancellation.clone())
        .with_concurrent_reads(concurrent_reads)
        .into_layer(storage);
    let loop_task = tokio::spawn(async move { service.serve(Context::default(), receiver).await });
    (sender, loop_task, cancellation)
}

async fn send(sender: &RequestSender, request: Request) -> oneshot::Receiver<Response> {
    let (answer, answered) = oneshot::channel();
    sender
        .send((request, answer))
        .await
        .expect("the request loop is running");
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_is_served_while_a_write_is_in_progress() -> TestResult {
    let (sender, loop_task, cancellation) = serve(GatedStorage::default(), 1);

    // The write waits for the read; served one after the other, neither is ever answered.
    let write = send(&sender, Request::DeleteGroups(None)).await;
    let read = send(&sender, Request::Ping).await;

    let read = timeout(ANSWER_DEADLINE, read).await;
    assert!(
        matches!(read, Ok(Ok(Response::Ping(Ok(()))))),
        "the read was not served while the write was in progress: {read:?}"
    );
    let write = timeout(ANSWER_DEADLINE, write).await;
    assert!(
        matches!(write, Ok(Ok(Response::DeleteGroups(Ok(_))))),
        "{write:?}"
    );

    cancellation.cancel();
    loop_task.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_served_one_at_a_time_in_order() -> TestResult {
    let storage = GatedStorage::default();
    let (sender, loop_task, cancellation) = serve(storage.clone(), 3);

    let base = SystemTime::UNIX_EPOCH;
    let sent: Vec<SystemTime> = (0..6).map(|i| base + Duration::from_secs(i)).collect();
    let mut answers = Vec::new();
    for at in &sent {
        answers.push(send(&sender, Request::Maintain(*at)).await);
        // Reads in between take lanes of their own and must not let writes overlap.
        answers.push(send(&sender, Request::Ping).await);
    }
    for answer in answers {
        timeout(ANSWER_DEADLINE, answer).await??;
    }

    assert_eq!(storage.most_writes_in_progress.load(Ordering::SeqCst), 1);
    assert_eq!(*storage.maintained_at.lock().expect("not poisoned"), sent);

    cancellation.cancel();
    loop_task.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_that_went_away_does_not_stop_the_loop() -> TestResult {
    // Both paths: with no read lanes every request is served in turn, as upstream does.
    for concurrent_reads in [0, 2] {
        let (sender, loop_task, cancellation) = serve(GatedStorage::default(), concurrent_reads);

        drop(send(&sender, Request::Maintain(SystemTime::UNIX_EPOCH)).await);
        drop(send(&sender, Request::Ping).await);

        let read = timeout(ANSWER_DEADLINE, send(&sender, Request::Ping).await).await;
        assert!(
            matches!(read, Ok(Ok(Response::Ping(Ok(()))))),
            "with {concurrent_reads} read lanes, a request after an unanswerable one: {read:?}"
        );

        cancellation.cancel();
        loop_task.await??;
    }
    Ok(())
}

#[test]
fn requests_that_change_storage_are_not_read_only() {
    let writes = [
        Request::DeleteGroups(None),
        Request::DeleteTopic(TopicId::Name("t".into())),
        Request::Maintain(SystemTime::UNIX_EPOCH),
        Request::OffsetCommit {
            group_id: "g".into(),
            retention_time_ms: None,
            offsets: Vec::new(),
        },
        Request::DeleteRecords(Vec::new()),
    ];
    for write in writes {
        assert!(!write.is_read_only(), "{write} is classed read-only");
    }
    let reads = [
        Request::Ping,
        Request::Brokers,
        Request::Metadata(None),
        Request::ListGroups(None),
        Request::CommittedOffsetTopitions("g".into()),
    ];
    for read in reads {
        assert!(read.is_read_only(), "{read} is not classed read-only");
    }
}
