//! The durable job queue. A [`Job`] is a row with a lease: a worker claims it
//! ([`JobStore::claim`]) by writing its name and a lease expiry, renews the lease while it works
//! ([`JobStore::heartbeat`], which also saves the handler's progress), and ends it
//! ([`JobStore::succeed`], [`JobStore::fail`], [`JobStore::retry`]). A job whose lease expired —
//! its worker crashed or was cut off — is claimable again, and its handler resumes from the
//! state last saved. [`sql::SqlJobStore`] keeps jobs in the metadata database (SQLite or
//! PostgreSQL, migration `0003_jobs.sql` of `ims-meta`), [`memory::MemoryJobStore`] is the fake,
//! [`conformance`] is the suite both pass, and [`runner`] is the worker pool.

pub mod conformance;
pub mod memory;
pub mod runner;
pub mod sql;

use std::time::Duration;

use async_trait::async_trait;
use ims_domain::ErrorKind;
use time::OffsetDateTime;
use uuid::Uuid;

/// Attempts a job gets unless its submitter says otherwise: a crash or a transient failure is
/// retried, a job that keeps killing its worker is not retried forever.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Longest `kind`, `project` or `request_id` accepted; they are identifiers, not documents.
pub const MAX_LABEL_LEN: usize = 255;
/// Most jobs one [`JobStore::list`] returns.
pub const MAX_LIST_LIMIT: usize = 1000;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    /// Waiting for a worker (new, or put back by [`JobStore::retry`]).
    Queued,
    /// Held by a worker whose lease has not expired (or expired and not yet reclaimed).
    Running,
    Succeeded,
    Failed,
}

impl JobStatus {
    pub const ALL: [JobStatus; 4] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Succeeded or failed: nothing will change the job any more.
    pub fn is_finished(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed)
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: Uuid,
    /// Which handler runs it (e.g. `glance.import`).
    pub kind: String,
    /// The project that owns it; listing is per project.
    pub project: String,
    pub user_id: Option<String>,
    /// The image it works on, if any (Glance's `GET /v2/images/{id}/tasks`).
    pub image_id: Option<Uuid>,
    /// The job that spawned this one (a sub-job), if any.
    pub parent_id: Option<Uuid>,
    /// The request id of the API call that submitted it.
    pub request_id: Option<String>,
    /// What to do, as the submitter described it. Never changes.
    pub payload: serde_json::Value,
    /// How far the handler got, saved with heartbeats so a resumed run can skip done work.
    pub state: Option<serde_json::Value>,
    pub status: JobStatus,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<OffsetDateTime>,
    /// Not claimable before this instant (retry back-off).
    pub not_before: OffsetDateTime,
    /// Claims so far, the current one included.
    pub attempts: u32,
    pub max_attempts: u32,
    pub result: Option<serde_json::Value>,
    /// Why it failed (or why the last attempt failed, while it is retried).
    pub fail_reason: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// A finished job may be deleted after this instant ([`JobStore::delete_expired`]).
    pub expires_at: Option<OffsetDateTime>,
}

/// What a submitter provides; the store fills in the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub id: Uuid,
    pub kind: String,
    pub project: String,
    pub user_id: Option<String>,
    pub image_id: Option<Uuid>,
    pub parent_id: Option<Uuid>,
    pub request_id: Option<String>,
    pub payload: serde_json::Value,
    pub max_attempts: u32,
}

impl NewJob {
    /// A job of `kind` for `project` with a fresh id and the default attempts.
    pub fn new(kind: &str, project: &str, payload: serde_json::Value) -> NewJob {
        NewJob {
            id: Uuid::new_v4(),
            kind: kind.to_owned(),
            project: project.to_owned(),
            user_id: None,
            image_id: None,
            parent_id: None,
            request_id: None,
            payload,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }

    /// Checks the limits every store enforces the same way.
    pub fn validate(&self) -> JobResult<()> {
        for (what, value) in [
            ("kind", Some(self.kind.as_str())),
            ("project", Some(self.project.as_str())),
            ("request_id", self.request_id.as_deref()),
            ("user_id", self.user_id.as_deref()),
        ] {
            if value.is_some_and(|v| v.len() > MAX_LABEL_LEN) {
                return Err(JobError::Invalid(format!(
                    "{what} is longer than {MAX_LABEL_LEN} bytes"
                )));
            }
        }
        if self.kind.is_empty() {
            return Err(JobError::Invalid("kind is empty".into()));
        }
        if self.max_attempts == 0 {
            return Err(JobError::Invalid("max_attempts is 0".into()));
        }
        Ok(())
    }

    /// The stored job this becomes at `now`.
    pub fn into_job(self, now: OffsetDateTime) -> Job {
        Job {
            id: self.id,
            kind: self.kind,
            project: self.project,
            user_id: self.user_id,
            image_id: self.image_id,
            parent_id: self.parent_id,
            request_id: self.request_id,
            payload: self.payload,
            state: None,
            status: JobStatus::Queued,
            lease_owner: None,
            lease_expires_at: None,
            not_before: now,
            attempts: 0,
            max_attempts: self.max_attempts,
            result: None,
            fail_reason: None,
            created_at: now,
            updated_at: now,
            expires_at: None,
        }
    }
}

/// Which jobs [`JobStore::list`] returns: every set field must match. Newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFilter {
    pub project: Option<String>,
    pub kind: Option<String>,
    pub status: Option<JobStatus>,
    pub image_id: Option<Uuid>,
    pub parent_id: Option<Uuid>,
    /// At most this many (capped at [`MAX_LIST_LIMIT`]); `None` means the cap.
    pub limit: Option<usize>,
}

impl JobFilter {
    pub fn matches(&self, job: &Job) -> bool {
        self.project.as_ref().is_none_or(|p| *p == job.project)
            && self.kind.as_ref().is_none_or(|k| *k == job.kind)
            && self.status.is_none_or(|s| s == job.status)
            && self.image_id.is_none_or(|i| Some(i) == job.image_id)
            && self.parent_id.is_none_or(|i| Some(i) == job.parent_id)
    }

    pub fn effective_limit(&self) -> usize {
        self.limit.unwrap_or(MAX_LIST_LIMIT).min(MAX_LIST_LIMIT)
    }
}

/// How a claim is made: which kinds the worker runs, its name, and for how long it may hold
/// the job without a heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRequest {
    pub kinds: Vec<String>,
    pub owner: String,
    pub lease: Duration,
}

/// A failure of the job store, with the stable kind callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job {0} not found")]
    NotFound(Uuid),
    #[error("job {0} already exists")]
    AlreadyExists(Uuid),
    /// The caller no longer holds the job's lease: it expired and another worker claimed the
    /// job, or the job already ended.
    #[error("lease on job {0} is no longer held by this worker")]
    LeaseLost(Uuid),
    #[error("invalid job: {0}")]
    Invalid(String),
    #[error("job store operation {op} failed: {source}")]
    Database {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("stored job row is corrupt: {0}")]
    CorruptRow(String),
}

impl JobError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            JobError::NotFound(_) => ErrorKind::NotFound,
            JobError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            JobError::LeaseLost(_) => ErrorKind::Conflict,
            JobError::Invalid(_) => ErrorKind::InvalidInput,
            JobError::Database { .. } | JobError::CorruptRow(_) => ErrorKind::Internal,
        }
    }
}

pub type JobResult<T> = Result<T, JobError>;

/// Durable storage of jobs with leases.
///
/// Semantics every implementation shares (checked by [`conformance`]):
/// - `claim` takes the oldest (by `created_at`, then id) job of one of the requested kinds that
///   is `Queued` with `not_before <= now`, or `Running` with an expired lease, and whose
///   `attempts < max_attempts`; it becomes `Running` under the caller's lease with `attempts`
///   incremented. Two concurrent claims never get the same job.
/// - `heartbeat`, `succeed`, `fail` and `retry` act only for the lease holder of a `Running`
///   job whose lease has not expired at `now`; otherwise `LeaseLost` (`NotFound` if no such job).
/// - `reap_exhausted` fails `Running` jobs whose lease expired with no attempts left.
/// - Finished jobs get `expires_at = now + keep`, and `delete_expired` removes them after it.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Stores a new `Queued` job; `AlreadyExists` on a duplicate id.
    async fn submit(&self, job: NewJob, now: OffsetDateTime) -> JobResult<Job>;
    async fn get(&self, id: Uuid) -> JobResult<Option<Job>>;
    async fn list(&self, filter: &JobFilter) -> JobResult<Vec<Job>>;
    async fn claim(&self, request: &ClaimRequest, now: OffsetDateTime) -> JobResult<Option<Job>>;
    /// Extends the lease to `now + lease` and, if given, saves the handler's `state`.
    async fn heartbeat(
        &self,
        id: Uuid,
        owner: &str,
        lease: Duration,
        state: Option<&serde_json::Value>,
        now: OffsetDateTime,
    ) -> JobResult<Job>;
    async fn succeed(
        &self,
        id: Uuid,
        owner: &str,
        result: &serde_json::Value,
        keep: Duration,
        now: OffsetDateTime,
    ) -> JobResult<Job>;
    async fn fail(
        &self,
        id: Uuid,
        owner: &str,
        reason: &str,
        keep: Duration,
        now: OffsetDateTime,
    ) -> JobResult<Job>;
    /// Gives the job back: `Queued` again, claimable from `now + delay`, with `reason` kept as
    /// the last failure. If no attempts are left it is `Failed` instead.
    async fn retry(
        &self,
        id: Uuid,
        owner: &str,
        reason: &str,
        delay: Duration,
        keep: Duration,
        now: OffsetDateTime,
    ) -> JobResult<Job>;
    /// Fails every `Running` job whose lease expired before `now` with no attempts left;
    /// returns how many.
    async fn reap_exhausted(&self, keep: Duration, now: OffsetDateTime) -> JobResult<u64>;
    /// Deletes finished jobs whose `expires_at` is before `now`; returns how many.
    async fn delete_expired(&self, now: OffsetDateTime) -> JobResult<u64>;
}

/// `now + d`, saturating far in the future instead of overflowing.
pub fn add_duration(now: OffsetDateTime, d: Duration) -> OffsetDateTime {
    time::Duration::try_from(d)
        .ok()
        .and_then(|d| now.checked_add(d))
        .unwrap_or(time::macros::datetime!(9999-12-31 0:00 UTC))
}

/// The reason stored on a job whose attempts ran out while its lease expired.
pub fn exhausted_reason(job: &Job) -> String {
    let last = job
        .fail_reason
        .as_deref()
        .unwrap_or("the worker stopped responding");
    format!("gave up after {} attempts; last: {last}", job.attempts)
}
