//! The worker pool: a few tokio tasks that claim jobs of the kinds they have a [`JobHandler`]
//! for, run each in a `tracing` span carrying the job id, renew the lease while the handler
//! works, and record the outcome on the job. A worker that dies leaves its lease to expire; a
//! worker on this node or another then claims the job again and its handler resumes from the
//! state saved through [`JobContext::save_state`], so handlers must be idempotent.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::{ClaimRequest, Job, JobError, JobStore};

/// How long a claim lasts without a heartbeat: long enough to ride out a slow database, short
/// enough that a crashed node's jobs resume within a minute.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(45);
/// How often an idle worker looks for jobs submitted elsewhere (jobs submitted on this node wake
/// it at once through [`RunnerHandle::wake`]).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Back-off before a job that asked to be retried is claimable again.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(10);
/// How long finished jobs are kept (Glance keeps tasks 48 hours).
pub const DEFAULT_KEEP: Duration = Duration::from_secs(48 * 3600);
/// Heartbeats per lease period, so one late heartbeat does not lose the lease.
const HEARTBEATS_PER_LEASE: u32 = 3;

/// How a handler's run ended badly.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobFailure {
    /// A transient problem: run again later (until attempts run out).
    #[error("{0}")]
    Retry(String),
    /// The job cannot succeed: fail it with this reason, shown to the user.
    #[error("{0}")]
    Fatal(String),
    /// The lease was lost (another worker has the job): stop without recording anything.
    #[error("lease lost")]
    LeaseLost,
}

/// Runs jobs of one kind. Must be idempotent: after a crash the same job runs again, with the
/// state it last saved.
#[async_trait]
pub trait JobHandler: Send + Sync + 'static {
    async fn run(&self, ctx: &JobContext) -> Result<serde_json::Value, JobFailure>;
}

/// What a handler sees of its job and the lease it runs under.
pub struct JobContext {
    job: Job,
    store: Arc<dyn JobStore>,
    owner: String,
    lease: Duration,
    lost: watch::Receiver<bool>,
    /// The state last saved: the claimed job's, then each [`JobContext::save_state`]'s.
    state: Mutex<Option<serde_json::Value>>,
}

impl JobContext {
    /// The job as claimed: `state` is what an earlier attempt saved, if any.
    pub fn job(&self) -> &Job {
        &self.job
    }

    /// The state as saved now: what this run last saved, else what an earlier attempt saved.
    /// A handler that saves several things merges into this, since a save replaces the state.
    pub fn state(&self) -> Option<serde_json::Value> {
        self.state.lock().expect("job state lock poisoned").clone()
    }

    /// Saves progress (and renews the lease) so a resumed run can skip finished steps. The
    /// saved value replaces the job's state as a whole.
    pub async fn save_state(&self, state: serde_json::Value) -> Result<(), JobFailure> {
        let now = OffsetDateTime::now_utc();
        let id = self.job.id;
        match self
            .store
            .heartbeat(id, &self.owner, self.lease, Some(&state), now)
            .await
        {
            Ok(_) => {
                *self.state.lock().expect("job state lock poisoned") = Some(state);
                Ok(())
            }
            Err(JobError::LeaseLost(_)) => Err(JobFailure::LeaseLost),
            Err(e) => Err(JobFailure::Retry(format!("saving job state failed: {e}"))),
        }
    }

    /// Whether the lease was lost; a long handler checks this between steps.
    pub fn lease_lost(&self) -> bool {
        *self.lost.borrow()
    }
}

/// Tunables of a [`Runner`].
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// This worker's name in the lease columns; unique per process (e.g. host + pid + uuid).
    pub owner: String,
    /// Jobs run at once.
    pub concurrency: usize,
    pub lease: Duration,
    pub poll_interval: Duration,
    pub retry_delay: Duration,
    pub keep: Duration,
}

impl RunnerConfig {
    /// Defaults with a fresh unique owner name.
    pub fn new(node: &str) -> RunnerConfig {
        RunnerConfig {
            owner: format!("{node}/{}/{}", std::process::id(), uuid::Uuid::new_v4()),
            concurrency: 2,
            lease: DEFAULT_LEASE,
            poll_interval: DEFAULT_POLL_INTERVAL,
            retry_delay: DEFAULT_RETRY_DELAY,
            keep: DEFAULT_KEEP,
        }
    }
}

/// Wakes an idle worker of a runner; cheap to clone, usable before the runner starts (a service
/// that submits jobs holds one).
#[derive(Debug, Clone, Default)]
pub struct Waker(Arc<Notify>);

impl Waker {
    pub fn new() -> Waker {
        Waker::default()
    }

    /// Tells one idle worker to look for jobs now.
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// A handler registry by kind; [`Runner::start`] turns it into running workers.
pub struct Runner {
    store: Arc<dyn JobStore>,
    config: RunnerConfig,
    handlers: BTreeMap<String, Arc<dyn JobHandler>>,
    waker: Waker,
}

impl Runner {
    pub fn new(store: Arc<dyn JobStore>, config: RunnerConfig) -> Runner {
        Runner {
            store,
            config,
            handlers: BTreeMap::new(),
            waker: Waker::new(),
        }
    }

    /// Uses `waker` (handed to submitters earlier) to wake this runner's workers.
    pub fn with_waker(mut self, waker: Waker) -> Runner {
        self.waker = waker;
        self
    }

    /// Runs jobs of `kind` with `handler` (replacing an earlier one for the kind).
    pub fn register(&mut self, kind: &str, handler: Arc<dyn JobHandler>) -> &mut Runner {
        self.handlers.insert(kind.to_owned(), handler);
        self
    }

    /// Starts `concurrency` workers.
    pub fn start(self) -> RunnerHandle {
        let shared = Arc::new(Shared {
            store: self.store,
            request: ClaimRequest {
                kinds: self.handlers.keys().cloned().collect(),
                owner: self.config.owner.clone(),
                lease: self.config.lease,
            },
            handlers: self.handlers,
            config: self.config,
            wake: self.waker,
        });
        let (stop, stopped) = watch::channel(false);
        let workers = (0..shared.config.concurrency.max(1))
            .map(|n| tokio::spawn(worker(shared.clone(), n, stopped.clone())))
            .collect();
        RunnerHandle {
            shared,
            stop,
            workers,
        }
    }
}

/// The running workers.
pub struct RunnerHandle {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
}

impl RunnerHandle {
    /// Tells an idle worker to look for jobs now (call after submitting one).
    pub fn wake(&self) {
        self.shared.wake.wake();
    }

    /// The worker name written into leases.
    pub fn owner(&self) -> &str {
        &self.shared.config.owner
    }

    /// Stops claiming and waits for the jobs in hand to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for worker in self.workers {
            let _ = worker.await;
        }
    }

    /// Stops every worker at once, mid-job, as a crash would: leases are left to expire.
    pub fn abort(self) {
        for worker in &self.workers {
            worker.abort();
        }
    }
}

struct Shared {
    store: Arc<dyn JobStore>,
    request: ClaimRequest,
    handlers: BTreeMap<String, Arc<dyn JobHandler>>,
    config: RunnerConfig,
    wake: Waker,
}

async fn worker(shared: Arc<Shared>, n: usize, mut stopped: watch::Receiver<bool>) {
    while !*stopped.borrow() {
        let now = OffsetDateTime::now_utc();
        if n == 0
            && let Err(e) = shared.store.reap_exhausted(shared.config.keep, now).await
        {
            tracing::warn!(error = %e, "failing abandoned jobs");
        }
        match shared.store.claim(&shared.request, now).await {
            Ok(Some(job)) => {
                let span = tracing::info_span!("job", id = %job.id, kind = %job.kind);
                run_job(&shared, job).instrument(span).await;
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "claiming a job"),
        }
        tokio::select! {
            _ = shared.wake.0.notified() => {}
            _ = tokio::time::sleep(shared.config.poll_interval) => {}
            _ = stopped.changed() => {}
        }
    }
}

async fn run_job(shared: &Arc<Shared>, job: Job) {
    let Some(handler) = shared.handlers.get(&job.kind).cloned() else {
        return;
    };
    let (id, owner) = (job.id, shared.config.owner.clone());
    tracing::info!(attempt = job.attempts, "job started");
    let (lost_tx, lost) = watch::channel(false);
    let ctx = JobContext {
        state: Mutex::new(job.state.clone()),
        job,
        store: shared.store.clone(),
        owner: owner.clone(),
        lease: shared.config.lease,
        lost,
    };
    let _heartbeat = AbortOnDrop(tokio::spawn(heartbeat(shared.clone(), id, lost_tx)));
    // The handler runs as its own task so a panic fails the attempt, not the worker; the guards
    // stop it and the heartbeat if this worker is aborted.
    let span = tracing::Span::current();
    let mut run = AbortOnDrop(tokio::spawn(
        async move { handler.run(&ctx).await }.instrument(span),
    ));
    let outcome = (&mut run.0).await;
    drop(_heartbeat);
    let outcome = outcome.unwrap_or_else(|e| Err(JobFailure::Retry(format!("handler died: {e}"))));
    let now = OffsetDateTime::now_utc();
    let (store, keep) = (&shared.store, shared.config.keep);
    let recorded = match &outcome {
        Ok(result) => store
            .succeed(id, &owner, result, keep, now)
            .await
            .map(|_| ()),
        Err(JobFailure::Fatal(reason)) => {
            tracing::warn!(reason = %reason, "job failed");
            store.fail(id, &owner, reason, keep, now).await.map(|_| ())
        }
        Err(JobFailure::Retry(reason)) => {
            tracing::warn!(reason = %reason, "job attempt failed; will retry");
            let delay = shared.config.retry_delay;
            store
                .retry(id, &owner, reason, delay, keep, now)
                .await
                .map(|_| ())
        }
        Err(JobFailure::LeaseLost) => Ok(()),
    };
    match recorded {
        Ok(()) if outcome.is_ok() => tracing::info!("job succeeded"),
        Ok(()) => {}
        Err(e) => tracing::warn!(error = %e, "recording the job's outcome"),
    }
}

/// Aborts its task when dropped, so tasks spawned for a job die with the worker running it.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renews the lease every `lease / HEARTBEATS_PER_LEASE` until aborted; on losing it, tells the
/// handler through `lost` and stops.
async fn heartbeat(shared: Arc<Shared>, id: uuid::Uuid, lost: watch::Sender<bool>) {
    let period = shared.config.lease / HEARTBEATS_PER_LEASE;
    loop {
        tokio::time::sleep(period).await;
        let now = OffsetDateTime::now_utc();
        let (owner, lease) = (&shared.config.owner, shared.config.lease);
        match shared.store.heartbeat(id, owner, lease, None, now).await {
            Ok(_) => {}
            Err(JobError::LeaseLost(_)) | Err(JobError::NotFound(_)) => {
                tracing::warn!("job lease lost");
                let _ = lost.send(true);
                return;
            }
            Err(e) => tracing::warn!(error = %e, "renewing the job lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;

    use super::*;
    use crate::memory::MemoryJobStore;
    use crate::{JobStatus, NewJob};

    fn fast_config(name: &str) -> RunnerConfig {
        RunnerConfig {
            lease: Duration::from_millis(300),
            poll_interval: Duration::from_millis(20),
            retry_delay: Duration::ZERO,
            ..RunnerConfig::new(name)
        }
    }

    async fn wait_finished(store: &Arc<dyn JobStore>, id: uuid::Uuid) -> Job {
        for _ in 0..500 {
            let job = store.get(id).await.unwrap().unwrap();
            if job.status.is_finished() {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("job {id} did not finish");
    }

    /// Doubles `payload.n`; fails fatally on negative numbers, asks for a retry the first time
    /// it sees `flaky`.
    struct Doubler {
        runs: AtomicUsize,
    }

    #[async_trait]
    impl JobHandler for Doubler {
        async fn run(&self, ctx: &JobContext) -> Result<serde_json::Value, JobFailure> {
            let run = self.runs.fetch_add(1, Ordering::SeqCst);
            let n = ctx.job().payload["n"].as_i64().unwrap_or(0);
            if n < 0 {
                return Err(JobFailure::Fatal(format!("{n} is negative")));
            }
            if ctx.job().payload["flaky"] == json!(true) && ctx.job().attempts == 1 {
                return Err(JobFailure::Retry(format!("flaky on run {run}")));
            }
            Ok(json!({"doubled": n * 2}))
        }
    }

    #[tokio::test]
    async fn runs_jobs_and_records_outcomes() {
        let store: Arc<dyn JobStore> = Arc::new(MemoryJobStore::new());
        let doubler = Arc::new(Doubler {
            runs: AtomicUsize::new(0),
        });
        let mut runner = Runner::new(store.clone(), fast_config("t"));
        runner.register("double", doubler.clone());
        let handle = runner.start();
        let now = OffsetDateTime::now_utc();
        let ok = store
            .submit(NewJob::new("double", "p", json!({"n": 21})), now)
            .await
            .unwrap();
        let bad = store
            .submit(NewJob::new("double", "p", json!({"n": -1})), now)
            .await
            .unwrap();
        let flaky = store
            .submit(
                NewJob::new("double", "p", json!({"n": 2, "flaky": true})),
                now,
            )
            .await
            .unwrap();
        let other = store
            .submit(NewJob::new("unknown", "p", json!({})), now)
            .await
            .unwrap();
        handle.wake();
        let job = wait_finished(&store, ok.id).await;
        assert_eq!(job.status, JobStatus::Succeeded);
        assert_eq!(job.result, Some(json!({"doubled": 42})));
        let job = wait_finished(&store, bad.id).await;
        assert_eq!(job.status, JobStatus::Failed);
        assert_eq!(job.fail_reason.as_deref(), Some("-1 is negative"));
        let job = wait_finished(&store, flaky.id).await;
        assert_eq!((job.status, job.attempts), (JobStatus::Succeeded, 2));
        handle.shutdown().await;
        let other = store.get(other.id).await.unwrap().unwrap();
        assert_eq!(other.status, JobStatus::Queued, "no handler, never claimed");
    }

    /// Saves a step, then hangs until the test aborts its worker; the resumed run sees the step.
    struct Resumable;

    #[async_trait]
    impl JobHandler for Resumable {
        async fn run(&self, ctx: &JobContext) -> Result<serde_json::Value, JobFailure> {
            if let Some(state) = &ctx.job().state {
                assert_eq!(ctx.state().as_ref(), Some(state), "the claimed state");
                return Ok(json!({"resumed_from": state["step"]}));
            }
            assert_eq!(ctx.state(), None);
            ctx.save_state(json!({"step": 1})).await?;
            assert_eq!(
                ctx.state(),
                Some(json!({"step": 1})),
                "the state just saved"
            );
            assert_eq!(ctx.job().state, None, "the job as claimed");
            std::future::pending::<()>().await;
            unreachable!("pending never completes")
        }
    }

    #[tokio::test]
    async fn a_crashed_worker_s_job_resumes_elsewhere_from_saved_state() {
        let store: Arc<dyn JobStore> = Arc::new(MemoryJobStore::new());
        let mut first = Runner::new(store.clone(), fast_config("a"));
        first.register("resumable", Arc::new(Resumable));
        let first = first.start();
        let job = store
            .submit(
                NewJob::new("resumable", "p", json!({})),
                OffsetDateTime::now_utc(),
            )
            .await
            .unwrap();
        first.wake();
        for _ in 0..200 {
            if store.get(job.id).await.unwrap().unwrap().state.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        first.abort();
        let mut second = Runner::new(store.clone(), fast_config("b"));
        second.register("resumable", Arc::new(Resumable));
        let second = second.start();
        let done = wait_finished(&store, job.id).await;
        assert_eq!(done.status, JobStatus::Succeeded);
        assert_eq!(done.result, Some(json!({"resumed_from": 1})));
        assert_eq!(done.attempts, 2);
        second.shutdown().await;
    }

    /// Sleeps past several lease periods: the heartbeat must keep the lease.
    struct Slow;

    #[async_trait]
    impl JobHandler for Slow {
        async fn run(&self, ctx: &JobContext) -> Result<serde_json::Value, JobFailure> {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            assert!(!ctx.lease_lost());
            Ok(json!("slept"))
        }
    }

    #[tokio::test]
    async fn heartbeats_keep_a_long_job_s_lease() {
        let store: Arc<dyn JobStore> = Arc::new(MemoryJobStore::new());
        let mut runner = Runner::new(store.clone(), fast_config("a"));
        runner.register("slow", Arc::new(Slow));
        let runner = runner.start();
        let job = store
            .submit(
                NewJob::new("slow", "p", json!({})),
                OffsetDateTime::now_utc(),
            )
            .await
            .unwrap();
        runner.wake();
        let done = wait_finished(&store, job.id).await;
        assert_eq!((done.status, done.attempts), (JobStatus::Succeeded, 1));
        runner.shutdown().await;
    }
}
