//! `MemoryJobStore`: the in-memory fake [`JobStore`], for service tests and as the reference
//! the conformance suite holds the SQL store to.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    ClaimRequest, Job, JobError, JobFilter, JobResult, JobStatus, JobStore, NewJob, add_duration,
    exhausted_reason,
};

/// Jobs in a map behind one mutex.
#[derive(Debug, Default)]
pub struct MemoryJobStore {
    jobs: Mutex<BTreeMap<Uuid, Job>>,
}

impl MemoryJobStore {
    pub fn new() -> MemoryJobStore {
        MemoryJobStore::default()
    }

    fn with_jobs<T>(&self, f: impl FnOnce(&mut BTreeMap<Uuid, Job>) -> T) -> T {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut jobs)
    }

    /// Runs `change` on the job if `owner` holds its live lease at `now`.
    fn with_lease(
        &self,
        id: Uuid,
        owner: &str,
        now: OffsetDateTime,
        change: impl FnOnce(&mut Job),
    ) -> JobResult<Job> {
        self.with_jobs(|jobs| {
            let job = jobs.get_mut(&id).ok_or(JobError::NotFound(id))?;
            if !holds_lease(job, owner, now) {
                return Err(JobError::LeaseLost(id));
            }
            change(job);
            job.updated_at = now;
            Ok(job.clone())
        })
    }
}

/// Whether `owner` holds a lease on `job` that is live at `now`.
pub(crate) fn holds_lease(job: &Job, owner: &str, now: OffsetDateTime) -> bool {
    job.status == JobStatus::Running
        && job.lease_owner.as_deref() == Some(owner)
        && job.lease_expires_at.is_some_and(|t| t > now)
}

/// Whether a claim at `now` may take `job`.
fn claimable(job: &Job, kinds: &[String], now: OffsetDateTime) -> bool {
    let ready = match job.status {
        JobStatus::Queued => job.not_before <= now,
        JobStatus::Running => job.lease_expires_at.is_none_or(|t| t <= now),
        JobStatus::Succeeded | JobStatus::Failed => false,
    };
    ready && job.attempts < job.max_attempts && kinds.contains(&job.kind)
}

fn finish(job: &mut Job, status: JobStatus, keep: Duration, now: OffsetDateTime) {
    job.status = status;
    job.lease_owner = None;
    job.lease_expires_at = None;
    job.expires_at = Some(add_duration(now, keep));
}

#[async_trait]
impl JobStore for MemoryJobStore {
    async fn submit(&self, job: NewJob, now: OffsetDateTime) -> JobResult<Job> {
        job.validate()?;
        self.with_jobs(|jobs| {
            if jobs.contains_key(&job.id) {
                return Err(JobError::AlreadyExists(job.id));
            }
            let job = job.into_job(now);
            jobs.insert(job.id, job.clone());
            Ok(job)
        })
    }

    async fn get(&self, id: Uuid) -> JobResult<Option<Job>> {
        Ok(self.with_jobs(|jobs| jobs.get(&id).cloned()))
    }

    async fn list(&self, filter: &JobFilter) -> JobResult<Vec<Job>> {
        let mut found: Vec<Job> = self.with_jobs(|jobs| {
            jobs.values()
                .filter(|j| filter.matches(j))
                .cloned()
                .collect()
        });
        found.sort_by_key(|j| std::cmp::Reverse((j.created_at, j.id)));
        found.truncate(filter.effective_limit());
        Ok(found)
    }

    async fn claim(&self, request: &ClaimRequest, now: OffsetDateTime) -> JobResult<Option<Job>> {
        self.with_jobs(|jobs| {
            let next = jobs
                .values()
                .filter(|j| claimable(j, &request.kinds, now))
                .min_by_key(|j| (j.created_at, j.id))
                .map(|j| j.id);
            let Some(id) = next else { return Ok(None) };
            let Some(job) = jobs.get_mut(&id) else {
                return Ok(None);
            };
            job.status = JobStatus::Running;
            job.lease_owner = Some(request.owner.clone());
            job.lease_expires_at = Some(add_duration(now, request.lease));
            job.attempts += 1;
            job.updated_at = now;
            Ok(Some(job.clone()))
        })
    }

    async fn heartbeat(
        &self,
        id: Uuid,
        owner: &str,
        lease: Duration,
        state: Option<&serde_json::Value>,
        now: OffsetDateTime,
    ) -> JobResult<Job> {
        self.with_lease(id, owner, now, |job| {
            job.lease_expires_at = Some(add_duration(now, lease));
            if let Some(state) = state {
                job.state = Some(state.clone());
            }
        })
    }

    async fn succeed(
        &self,
        id: Uuid,
        owner: &str,
        result: &serde_json::Value,
        keep: Duration,
        now: OffsetDateTime,
    ) -> JobResult<Job> {
        self.with_lease(id, owner, now, |job| {
            job.result = Some(result.clone());
            job.fail_reason = None;
            finish(job, JobStatus::Succeeded, keep, now);
        })
    }

    async fn fail(
        &self,
        id: Uuid,
        owner: &str,
        reason: &str,
        keep: Duration,
        now: OffsetDateTime,
    ) -> JobResult<Job> {
        self.with_lease(id, owner, now, |job| {
            job.fail_reason = Some(reason.to_owned());
            finish(job, JobStatus::Failed, keep, now);
        })
    }

    async fn retry(
        &self,
        id: Uuid,
        owner: &str,
        reason: &str,
        delay: Duration,
        keep: Duration,
        now: OffsetDateTime,
    ) -> JobResult<Job> {
        self.with_lease(id, owner, now, |job| {
            job.fail_reason = Some(reason.to_owned());
            if job.attempts >= job.max_attempts {
                job.fail_reason = Some(exhausted_reason(job));
                finish(job, JobStatus::Failed, keep, now);
            } else {
                job.status = JobStatus::Queued;
                job.lease_owner = None;
                job.lease_expires_at = None;
                job.not_before = add_duration(now, delay);
            }
        })
    }

    async fn reap_exhausted(&self, keep: Duration, now: OffsetDateTime) -> JobResult<u64> {
        self.with_jobs(|jobs| {
            let mut reaped = 0;
            for job in jobs.values_mut() {
                let expired = job.lease_expires_at.is_none_or(|t| t <= now);
                if job.status == JobStatus::Running && expired && job.attempts >= job.max_attempts {
                    job.fail_reason = Some(exhausted_reason(job));
                    job.updated_at = now;
                    finish(job, JobStatus::Failed, keep, now);
                    reaped += 1;
                }
            }
            Ok(reaped)
        })
    }

    async fn delete_expired(&self, now: OffsetDateTime) -> JobResult<u64> {
        self.with_jobs(|jobs| {
            let before = jobs.len();
            jobs.retain(|_, j| !(j.status.is_finished() && j.expires_at.is_some_and(|t| t < now)));
            Ok((before - jobs.len()) as u64)
        })
    }
}
