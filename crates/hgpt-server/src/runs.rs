//! Runs: admission (a bounded number running, a bounded queue), driving the
//! pipeline, the live event log that subscribers follow, cancellation,
//! shutdown, and writing everything to the run store.
//!
//! Invariants:
//! - every admitted run reaches exactly one terminal state, and that state
//!   is in the store before the run leaves the live table (so a reader that
//!   misses it in memory finds it complete in the store);
//! - a run's events have consecutive sequence numbers from 1; the first is
//!   `state: queued` and the last a terminal `state`;
//! - store writes happen on one writer thread, in the order they were made.

use crate::conversation::Conversation;
use crate::error::ApiError;
use crate::metrics::Metrics;
use futures::FutureExt as _;
use hgpt_core::pipeline::Pipeline;
use hgpt_core::record::{RunEvent, RunRecord, TaskStatus};
use hgpt_store::{NewRun, RunFinish, RunRow, RunState, Store, StoredEvent};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How many runs may run and wait, and how long shutdown waits for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimits {
    /// Runs executing at once.
    pub max_running: usize,
    /// Runs waiting for a slot; beyond this, new runs get 429.
    pub max_queued: usize,
    /// How long a shutdown lets running runs finish before interrupting them.
    pub shutdown_grace: Duration,
}

impl Default for RunLimits {
    fn default() -> Self {
        Self {
            max_running: 4,
            max_queued: 64,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub state: RunState,
    pub record: Option<RunRecord>,
    pub error: Option<String>,
    pub finished_at_ms: u64,
}

impl Outcome {
    fn without_record(state: RunState, error: impl Into<String>) -> Self {
        Self {
            state,
            record: None,
            error: Some(error.into()),
            finished_at_ms: now_ms(),
        }
    }
}

struct LiveState {
    state: RunState,
    started_at_ms: Option<u64>,
    events: Vec<StoredEvent>,
    outcome: Option<Outcome>,
    /// Whether the outcome has been written to the store.
    stored: bool,
}

/// A run the server holds in memory while it is queued or running.
pub(crate) struct LiveRun {
    pub id: String,
    pub created_at_ms: u64,
    pub conversation: Conversation,
    inner: Mutex<LiveState>,
    /// The number of events so far, for subscribers to wait on (also
    /// touched when the ended run is stored).
    changed: watch::Sender<usize>,
    cancel: CancellationToken,
}

impl LiveRun {
    /// Events after `after`, and whether the run has ended (then the batch
    /// holds everything up to the terminal event).
    pub(crate) fn events_after(&self, after: u64) -> (Vec<StoredEvent>, bool) {
        let inner = lock(&self.inner);
        let start = (after as usize).min(inner.events.len());
        (inner.events[start..].to_vec(), inner.outcome.is_some())
    }

    /// The outcome, once the run has ended.
    pub(crate) fn outcome(&self) -> Option<Outcome> {
        lock(&self.inner).outcome.clone()
    }

    /// A receiver that changes whenever an event is added.
    pub(crate) fn subscribe(&self) -> watch::Receiver<usize> {
        self.changed.subscribe()
    }

    /// The outcome once the run has ended and is in the store.
    pub(crate) async fn finished(&self) -> Outcome {
        let mut changes = self.subscribe();
        loop {
            {
                let inner = lock(&self.inner);
                if let (Some(outcome), true) = (&inner.outcome, inner.stored) {
                    return outcome.clone();
                }
            }
            if changes.changed().await.is_err() {
                // The sender lives in `self`, so this cannot happen while
                // `self` is borrowed; answer something terminal regardless.
                return Outcome::without_record(RunState::Interrupted, "the run was lost");
            }
        }
    }

    /// The run as `GET /v1/runs/{id}` shows it.
    pub(crate) fn row(&self) -> RunRow {
        let inner = lock(&self.inner);
        let outcome = inner.outcome.as_ref();
        RunRow {
            id: self.id.clone(),
            state: inner.state,
            created_at_ms: self.created_at_ms,
            started_at_ms: inner.started_at_ms,
            finished_at_ms: outcome.map(|o| o.finished_at_ms),
            request: self.conversation.request.clone(),
            messages: self.conversation.messages.clone(),
            record: outcome
                .and_then(|o| o.record.as_ref())
                .and_then(|r| serde_json::to_value(r).ok()),
            error: outcome.and_then(|o| o.error.clone()),
        }
    }

    /// Append an event (numbered) and tell subscribers; with `outcome`, the
    /// run ends with it, atomically.
    fn push(&self, data: Value, outcome: Option<Outcome>, writer: &StoreWriter) {
        let event = {
            let mut inner = lock(&self.inner);
            let event = StoredEvent {
                seq: inner.events.len() as u64 + 1,
                at_ms: now_ms(),
                data,
            };
            inner.events.push(event.clone());
            if let Some(outcome) = outcome {
                inner.state = outcome.state;
                inner.outcome = Some(outcome);
            }
            event
        };
        writer.send(Write::Event(self.id.clone(), event));
        self.changed.send_modify(|count| *count += 1);
    }
}

/// Cancels a run when dropped before the run ended: held by a request that
/// waits for a run, so that a client that leaves stops it.
pub(crate) struct CancelOnDrop(pub Arc<LiveRun>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.0.outcome().is_none() {
            self.0.cancel.cancel();
        }
    }
}

/// A running slot held by a planning request (`POST /tasks`), released on
/// drop.
pub(crate) struct PlanningSlot {
    runs: Arc<Runs>,
    _slot: OwnedSemaphorePermit,
}

impl Drop for PlanningSlot {
    fn drop(&mut self) {
        self.runs.running.fetch_sub(1, Ordering::SeqCst);
        self.runs.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A store operation, done in order on the writer thread.
enum Write {
    Insert(NewRun),
    Running(String, u64),
    Event(String, StoredEvent),
    Finish(String, RunFinish, oneshot::Sender<()>),
}

/// The handle of the writer thread.
#[derive(Clone)]
struct StoreWriter {
    sender: mpsc::UnboundedSender<Write>,
    /// Writes the store refused (a full disk, a broken file): counted so
    /// that `/healthz` and `/metrics` show it.
    failures: Arc<AtomicU64>,
}

impl StoreWriter {
    /// Start the thread. It ends when every handle is dropped.
    fn start(store: Store) -> Result<Self, std::io::Error> {
        let (sender, mut receiver) = mpsc::unbounded_channel::<Write>();
        let failures = Arc::new(AtomicU64::new(0));
        let counted = failures.clone();
        std::thread::Builder::new()
            .name("hgpt-store-writer".into())
            .spawn(move || {
                let mut batch = Vec::new();
                while let Some(first) = receiver.blocking_recv() {
                    batch.push(first);
                    while batch.len() < 4096 {
                        match receiver.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    apply(&store, std::mem::take(&mut batch), &counted);
                }
            })?;
        Ok(Self { sender, failures })
    }

    fn send(&self, write: Write) {
        if self.sender.send(write).is_err() {
            self.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!("the run store writer has stopped; a write was lost");
        }
    }
}

/// Apply a batch of writes in order, events of one run grouped; failures
/// are logged and counted in `failures`.
fn apply(store: &Store, batch: Vec<Write>, failures: &AtomicU64) {
    let mut pending: Option<(String, Vec<StoredEvent>)> = None;
    let flush = |pending: &mut Option<(String, Vec<StoredEvent>)>| {
        if let Some((id, events)) = pending.take()
            && let Err(e) = store.append_events(&id, &events)
        {
            failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(run = %id, "cannot store {} events: {e}", events.len());
        }
    };
    for write in batch {
        match write {
            Write::Event(id, event) => match &mut pending {
                Some((current, events)) if *current == id => events.push(event),
                _ => {
                    flush(&mut pending);
                    pending = Some((id, vec![event]));
                }
            },
            other => {
                flush(&mut pending);
                let result = match other {
                    Write::Insert(run) => store.insert_run(&run),
                    Write::Running(id, at) => store.set_running(&id, at),
                    Write::Finish(id, finish, done) => {
                        let result = store.finish_run(&id, &finish);
                        let _ = done.send(());
                        result
                    }
                    Write::Event(..) => Ok(()),
                };
                if let Err(e) = result {
                    failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("run store write failed: {e}");
                }
            }
        }
    }
    flush(&mut pending);
}

/// Why a run the last server left unfinished was interrupted.
const INTERRUPTED: &str = "the server stopped before the run finished";

/// A fresh run id: time-ordered, with random bits.
fn new_run_id() -> String {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(SEQUENCE.fetch_add(1, Ordering::Relaxed));
    format!("run_{:011x}{:08x}", now_ms(), hasher.finish() as u32)
}

/// The run manager.
pub(crate) struct Runs {
    pipeline: Arc<Pipeline>,
    store: Store,
    writer: StoreWriter,
    limits: RunLimits,
    slots: Arc<Semaphore>,
    /// Queued plus running.
    admitted: AtomicUsize,
    running: AtomicUsize,
    live: Mutex<HashMap<String, Arc<LiveRun>>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    pub metrics: Metrics,
}

impl Runs {
    /// A manager over `store`; runs the store left unfinished (a crash or a
    /// shutdown) are marked interrupted first.
    pub(crate) fn new(
        pipeline: Arc<Pipeline>,
        store: Store,
        limits: RunLimits,
    ) -> Result<Arc<Self>, crate::ServerError> {
        // Runs the last server left unfinished end with a terminal state
        // event, like every run's log.
        let interrupted = store.mark_interrupted(
            now_ms(),
            INTERRUPTED,
            Some(&json!({"type": "state", "state": "interrupted", "error": INTERRUPTED})),
        )?;
        if !interrupted.is_empty() {
            tracing::warn!(
                "{} runs left unfinished by the last server were marked interrupted",
                interrupted.len()
            );
        }
        let writer = StoreWriter::start(store.clone())?;
        Ok(Arc::new(Self {
            pipeline,
            store,
            writer,
            slots: Arc::new(Semaphore::new(limits.max_running.max(1))),
            limits,
            admitted: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            live: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            metrics: Metrics::default(),
        }))
    }

    /// The pipeline runs go through.
    pub(crate) fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The store.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// (queued, running) now.
    pub(crate) fn load(&self) -> (usize, usize) {
        let admitted = self.admitted.load(Ordering::SeqCst);
        let running = self.running.load(Ordering::SeqCst);
        (admitted.saturating_sub(running), running)
    }

    /// Store writes that failed since the server started.
    pub(crate) fn store_failures(&self) -> u64 {
        self.writer.failures.load(Ordering::Relaxed)
    }

    /// A run still in memory.
    pub(crate) fn live(&self, id: &str) -> Option<Arc<LiveRun>> {
        lock(&self.live).get(id).cloned()
    }

    /// Count one more queued or running piece of work, or refuse it with
    /// 429 when the queue is full (503 while shutting down).
    fn admit(&self) -> Result<(), ApiError> {
        if self.shutdown.is_cancelled() {
            return Err(ApiError::shutting_down());
        }
        let capacity = self.limits.max_running.max(1) + self.limits.max_queued;
        if self
            .admitted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < capacity).then_some(n + 1)
            })
            .is_err()
        {
            self.metrics.run_rejected();
            let retry_after = self
                .metrics
                .mean_run_seconds()
                .map_or(5, |s| s.ceil().clamp(1.0, 120.0) as u64);
            return Err(ApiError::busy(
                format!(
                    "the server is at its limit of {} running and {} queued runs; retry later",
                    self.limits.max_running.max(1),
                    self.limits.max_queued
                ),
                retry_after,
            ));
        }
        Ok(())
    }

    /// A running slot for a planning request, after those queued before it.
    pub(crate) async fn planning_slot(self: &Arc<Self>) -> Result<PlanningSlot, ApiError> {
        self.admit()?;
        let slot = tokio::select! {
            slot = self.slots.clone().acquire_owned() => slot.ok(),
            () = self.shutdown.cancelled() => None,
        };
        let Some(slot) = slot else {
            self.admitted.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::shutting_down());
        };
        self.running.fetch_add(1, Ordering::SeqCst);
        Ok(PlanningSlot {
            runs: self.clone(),
            _slot: slot,
        })
    }

    /// Admit a run and start it (it waits for a slot in the queue).
    pub(crate) fn start(
        self: &Arc<Self>,
        conversation: Conversation,
    ) -> Result<Arc<LiveRun>, ApiError> {
        self.admit()?;
        let created_at_ms = now_ms();
        let (changed, _) = watch::channel(0);
        let run = Arc::new(LiveRun {
            id: new_run_id(),
            created_at_ms,
            conversation,
            inner: Mutex::new(LiveState {
                state: RunState::Queued,
                started_at_ms: None,
                events: Vec::new(),
                outcome: None,
                stored: false,
            }),
            changed,
            cancel: CancellationToken::new(),
        });
        lock(&self.live).insert(run.id.clone(), run.clone());
        self.writer.send(Write::Insert(NewRun {
            id: run.id.clone(),
            created_at_ms,
            request: run.conversation.request.clone(),
            messages: run.conversation.messages.clone(),
        }));
        run.push(
            json!({"type": "state", "state": "queued"}),
            None,
            &self.writer,
        );
        let runs = self.clone();
        let driven = run.clone();
        self.tracker.spawn(async move { runs.drive(driven).await });
        Ok(run)
    }

    /// Ask a live run to stop (it may already have ended); `None` when it
    /// is not in memory.
    pub(crate) fn cancel(&self, id: &str) -> Option<Arc<LiveRun>> {
        let run = self.live(id)?;
        if run.outcome().is_none() {
            run.cancel.cancel();
        }
        Some(run)
    }

    async fn drive(self: Arc<Self>, run: Arc<LiveRun>) {
        let slot = tokio::select! {
            biased;
            _ = run.cancel.cancelled() => {
                return self.finish(&run, Outcome::without_record(
                    RunState::Cancelled, "cancelled before it started")).await;
            }
            _ = self.shutdown.cancelled() => {
                return self.finish(&run, Outcome::without_record(
                    RunState::Interrupted, "the server shut down before the run started")).await;
            }
            slot = self.slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => {
                    return self.finish(&run, Outcome::without_record(
                        RunState::Interrupted, "the server shut down before the run started")).await;
                }
            },
        };
        self.running.fetch_add(1, Ordering::SeqCst);
        let started_at_ms = now_ms();
        {
            let mut inner = lock(&run.inner);
            inner.state = RunState::Running;
            inner.started_at_ms = Some(started_at_ms);
        }
        self.writer
            .send(Write::Running(run.id.clone(), started_at_ms));
        run.push(
            json!({"type": "state", "state": "running"}),
            None,
            &self.writer,
        );

        let grace = self.limits.shutdown_grace;
        let shutdown = self.shutdown.clone();
        let outcome = tokio::select! {
            outcome = AssertUnwindSafe(self.execute(&run)).catch_unwind() => {
                outcome.unwrap_or_else(|panic| {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "no message".to_string());
                    tracing::error!(run = %run.id, "the run panicked: {message}");
                    Outcome::without_record(
                        RunState::Failed,
                        format!("internal error: the run panicked ({message})"),
                    )
                })
            }
            _ = run.cancel.cancelled() => Outcome::without_record(
                RunState::Cancelled, "cancelled while running"),
            _ = async move {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
            } => Outcome::without_record(
                RunState::Interrupted, "the server shut down before the run finished"),
        };
        drop(slot);
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.finish(&run, outcome).await;
    }

    /// The pipeline on a run, its events copied into the run's log as they
    /// come.
    async fn execute(&self, run: &LiveRun) -> Outcome {
        let (sink, mut events) = mpsc::unbounded_channel::<RunEvent>();
        let conversation = &run.conversation;
        let pipeline_run =
            self.pipeline
                .run(&conversation.request, &conversation.history, Some(sink));
        tokio::pin!(pipeline_run);
        let result = loop {
            tokio::select! {
                biased;
                Some(event) = events.recv() => self.record_event(run, &event),
                result = &mut pipeline_run => {
                    while let Ok(event) = events.try_recv() {
                        self.record_event(run, &event);
                    }
                    break result;
                }
            }
        };
        match result {
            Ok(record) => Outcome {
                state: if record.error.is_some() {
                    RunState::Failed
                } else {
                    RunState::Succeeded
                },
                error: record.error.clone(),
                record: Some(record),
                finished_at_ms: now_ms(),
            },
            Err(e) => {
                self.metrics.llm_failed();
                Outcome::without_record(RunState::Failed, e.to_string())
            }
        }
    }

    fn record_event(&self, run: &LiveRun, event: &RunEvent) {
        if let RunEvent::TaskFinished { record } = event
            && record.status == TaskStatus::Failed
        {
            self.metrics
                .task_failed(record.endpoint.as_deref().unwrap_or("none"));
        }
        match serde_json::to_value(event) {
            Ok(data) => run.push(data, None, &self.writer),
            Err(e) => tracing::error!(run = %run.id, "cannot encode an event: {e}"),
        }
    }

    /// End a run: the terminal event, the store, then out of the live table.
    async fn finish(&self, run: &Arc<LiveRun>, outcome: Outcome) {
        let state = outcome.state;
        if let Some(record) = &outcome.record {
            self.metrics.observe(record);
            if record.error.is_some() {
                self.metrics.llm_failed();
            }
        }
        self.metrics.run_finished(state.as_str());
        let finish = RunFinish {
            state,
            finished_at_ms: outcome.finished_at_ms,
            record: outcome
                .record
                .as_ref()
                .and_then(|r| serde_json::to_value(r).ok()),
            error: outcome.error.clone(),
        };
        // The slot in the queue is free before anyone hears that the run
        // ended, so a client that saw it end can start another at once.
        self.admitted.fetch_sub(1, Ordering::SeqCst);
        let mut data = json!({"type": "state", "state": state.as_str()});
        if let Some(error) = &outcome.error {
            data["error"] = Value::String(error.clone());
        }
        run.push(data, Some(outcome), &self.writer);
        let (done, stored) = oneshot::channel();
        self.writer
            .send(Write::Finish(run.id.clone(), finish, done));
        let _ = stored.await;
        lock(&run.inner).stored = true;
        // Wake those waiting in `finished` (the event count is unchanged).
        run.changed.send_modify(|_| {});
        lock(&self.live).remove(&run.id);
    }

    /// Refuse new runs, interrupt queued ones, give running ones the grace
    /// period, and wait until every run is in the store.
    pub(crate) async fn shut_down(&self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Cancelled when the server begins to shut down.
    pub(crate) fn stopping(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Begin shutting down without waiting (new runs are refused).
    pub(crate) fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }
}
