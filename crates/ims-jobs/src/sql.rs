//! `SqlJobStore`: the [`JobStore`] over sqlx, on the pool of an `ims-meta` [`SqlStore`] (SQLite
//! or PostgreSQL). The `jobs` table comes from `ims-meta`'s migration `0003_jobs.sql`, so the
//! database has one migration sequence.
//!
//! A claim is one `UPDATE … WHERE id = (SELECT … LIMIT 1) RETURNING …`: SQLite runs writers one
//! at a time, and on PostgreSQL the inner select locks its row with `FOR UPDATE SKIP LOCKED`, so
//! concurrent claimers take different jobs. Every lease-holder write repeats the lease condition
//! in its `WHERE`, so a worker whose lease lapsed cannot overwrite its successor.

use std::time::Duration;

use async_trait::async_trait;
use ims_domain::{from_micros, to_micros};
use ims_meta::sql::{Pool, SqlStore};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    ClaimRequest, Job, JobError, JobFilter, JobResult, JobStatus, JobStore, NewJob, add_duration,
    exhausted_reason,
};

const COLUMNS: &str = "id, kind, project, user_id, image_id, parent_id, request_id, payload, \
     state, status, lease_owner, lease_expires_at, not_before, attempts, max_attempts, result, \
     fail_reason, created_at, updated_at, expires_at";

/// The lease-holder condition on `$1` (id), `$2` (owner) and `$3` (now).
const HOLDS_LEASE: &str =
    "id = $1 AND status = 'running' AND lease_owner = $2 AND lease_expires_at > $3";

/// The [`JobStore`] over the metadata database.
#[derive(Debug, Clone)]
pub struct SqlJobStore {
    pool: Pool,
}

/// Runs `$body` with `$pool` bound to whichever pool the store holds.
macro_rules! on_pool {
    ($self:expr, $pool:ident => $body:expr) => {
        match &$self.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// Binds every [`Arg`] of `$args` to the sqlx query `$query`, in order.
macro_rules! bind_args {
    ($query:expr, $args:expr) => {{
        let mut query = $query;
        for arg in $args {
            query = match arg {
                Arg::Text(v) => query.bind(v.as_str()),
                Arg::OptText(v) => query.bind(v.as_deref()),
                Arg::Int(v) => query.bind(*v),
                Arg::Int32(v) => query.bind(*v),
            };
        }
        query
    }};
}

/// A value bound to a `$N` placeholder.
#[derive(Debug, Clone)]
enum Arg {
    Text(String),
    OptText(Option<String>),
    Int(i64),
    Int32(i32),
}

/// How a held job ends: its final status, the result (success) or reason (failure), and how
/// long the finished job is kept.
struct Ending {
    status: JobStatus,
    result: Option<String>,
    reason: Option<String>,
    keep: Duration,
}

/// One `jobs` row as sqlx decodes it.
#[derive(Debug, sqlx::FromRow)]
struct JobRow {
    id: String,
    kind: String,
    project: String,
    user_id: Option<String>,
    image_id: Option<String>,
    parent_id: Option<String>,
    request_id: Option<String>,
    payload: String,
    state: Option<String>,
    status: String,
    lease_owner: Option<String>,
    lease_expires_at: Option<i64>,
    not_before: i64,
    attempts: i32,
    max_attempts: i32,
    result: Option<String>,
    fail_reason: Option<String>,
    created_at: i64,
    updated_at: i64,
    expires_at: Option<i64>,
}

fn corrupt(id: &str, what: &str) -> JobError {
    JobError::CorruptRow(format!("job {id}: {what}"))
}

fn parse_uuid(id: &str, text: &str, what: &str) -> JobResult<Uuid> {
    Uuid::parse_str(text).map_err(|_| corrupt(id, what))
}

fn parse_json(id: &str, text: &str, what: &str) -> JobResult<serde_json::Value> {
    serde_json::from_str(text).map_err(|_| corrupt(id, what))
}

impl TryFrom<JobRow> for Job {
    type Error = JobError;

    fn try_from(row: JobRow) -> JobResult<Job> {
        let id = row.id.as_str();
        Ok(Job {
            id: parse_uuid(id, id, "id")?,
            kind: row.kind.clone(),
            project: row.project.clone(),
            user_id: row.user_id.clone(),
            image_id: row
                .image_id
                .as_deref()
                .map(|t| parse_uuid(id, t, "image_id"))
                .transpose()?,
            parent_id: row
                .parent_id
                .as_deref()
                .map(|t| parse_uuid(id, t, "parent_id"))
                .transpose()?,
            request_id: row.request_id.clone(),
            payload: parse_json(id, &row.payload, "payload")?,
            state: row
                .state
                .as_deref()
                .map(|t| parse_json(id, t, "state"))
                .transpose()?,
            status: JobStatus::parse(&row.status).ok_or_else(|| corrupt(id, "status"))?,
            lease_owner: row.lease_owner.clone(),
            lease_expires_at: row.lease_expires_at.map(from_micros),
            not_before: from_micros(row.not_before),
            attempts: u32::try_from(row.attempts).map_err(|_| corrupt(id, "attempts"))?,
            max_attempts: u32::try_from(row.max_attempts)
                .map_err(|_| corrupt(id, "max_attempts"))?,
            result: row
                .result
                .as_deref()
                .map(|t| parse_json(id, t, "result"))
                .transpose()?,
            fail_reason: row.fail_reason.clone(),
            created_at: from_micros(row.created_at),
            updated_at: from_micros(row.updated_at),
            expires_at: row.expires_at.map(from_micros),
        })
    }
}

fn db_error(op: &'static str) -> impl FnOnce(sqlx::Error) -> JobError {
    move |source| JobError::Database { op, source }
}

fn micros(t: OffsetDateTime) -> Arg {
    Arg::Int(to_micros(t))
}

fn attempts_arg(n: u32) -> JobResult<Arg> {
    i32::try_from(n)
        .map(Arg::Int32)
        .map_err(|_| JobError::Invalid(format!("max_attempts {n} is too large")))
}

impl SqlJobStore {
    /// Jobs in the database `meta` is connected to (its migrations created the table).
    pub fn new(meta: &SqlStore) -> SqlJobStore {
        SqlJobStore {
            pool: meta.pool().clone(),
        }
    }

    async fn fetch(&self, op: &'static str, sql: &str, args: &[Arg]) -> JobResult<Vec<Job>> {
        let rows: Vec<JobRow> = on_pool!(self, pool => {
            bind_args!(sqlx::query_as::<_, JobRow>(sql), args)
                .fetch_all(pool)
                .await
                .map_err(db_error(op))?
        });
        rows.into_iter().map(Job::try_from).collect()
    }

    async fn execute(&self, op: &'static str, sql: &str, args: &[Arg]) -> JobResult<u64> {
        on_pool!(self, pool => {
            bind_args!(sqlx::query(sql), args)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
                .map_err(db_error(op))
        })
    }

    /// Runs `UPDATE jobs SET {set} WHERE <lease held> RETURNING …` with `$1..$3` = id, owner,
    /// now and `extra` from `$4`; `LeaseLost` (or `NotFound`) if it matched nothing.
    async fn update_held(
        &self,
        op: &'static str,
        id: Uuid,
        owner: &str,
        now: OffsetDateTime,
        set: &str,
        extra: Vec<Arg>,
    ) -> JobResult<Job> {
        let sql = format!("UPDATE jobs SET {set} WHERE {HOLDS_LEASE} RETURNING {COLUMNS}");
        let mut args = vec![
            Arg::Text(id.to_string()),
            Arg::Text(owner.to_owned()),
            micros(now),
        ];
        args.extend(extra);
        match self.fetch(op, &sql, &args).await?.pop() {
            Some(job) => Ok(job),
            None if self.get(id).await?.is_some() => Err(JobError::LeaseLost(id)),
            None => Err(JobError::NotFound(id)),
        }
    }

    /// Ends a held job as `end` says.
    async fn finish_held(
        &self,
        op: &'static str,
        id: Uuid,
        owner: &str,
        now: OffsetDateTime,
        end: Ending,
    ) -> JobResult<Job> {
        let Ending {
            status,
            result,
            reason,
            keep,
        } = end;
        let set = "status = $4, result = COALESCE($5, result), fail_reason = $6, \
                   lease_owner = NULL, lease_expires_at = NULL, expires_at = $7, updated_at = $3";
        let extra = vec![
            Arg::Text(status.as_str().to_owned()),
            Arg::OptText(result),
            Arg::OptText(reason),
            micros(add_duration(now, keep)),
        ];
        self.update_held(op, id, owner, now, set, extra).await
    }
}

#[async_trait]
impl JobStore for SqlJobStore {
    async fn submit(&self, job: NewJob, now: OffsetDateTime) -> JobResult<Job> {
        job.validate()?;
        let max_attempts = attempts_arg(job.max_attempts)?;
        let job = job.into_job(now);
        let sql = format!(
            "INSERT INTO jobs ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, NULL, \
             NULL, $10, 0, $11, NULL, NULL, $10, $10, NULL)"
        );
        let args = vec![
            Arg::Text(job.id.to_string()),
            Arg::Text(job.kind.clone()),
            Arg::Text(job.project.clone()),
            Arg::OptText(job.user_id.clone()),
            Arg::OptText(job.image_id.map(|i| i.to_string())),
            Arg::OptText(job.parent_id.map(|i| i.to_string())),
            Arg::OptText(job.request_id.clone()),
            Arg::Text(job.payload.to_string()),
            Arg::Text(job.status.as_str().to_owned()),
            micros(now),
            max_attempts,
        ];
        match self.execute("submitting a job", &sql, &args).await {
            Ok(_) => Ok(job),
            Err(JobError::Database { source, .. }) if matches!(&source, sqlx::Error::Database(e) if e.is_unique_violation()) => {
                Err(JobError::AlreadyExists(job.id))
            }
            Err(e) => Err(e),
        }
    }

    async fn get(&self, id: Uuid) -> JobResult<Option<Job>> {
        let sql = format!("SELECT {COLUMNS} FROM jobs WHERE id = $1");
        let mut jobs = self
            .fetch("reading a job", &sql, &[Arg::Text(id.to_string())])
            .await?;
        Ok(jobs.pop())
    }

    async fn list(&self, filter: &JobFilter) -> JobResult<Vec<Job>> {
        let mut sql = format!("SELECT {COLUMNS} FROM jobs WHERE 1 = 1");
        let mut args = Vec::new();
        let mut add = |column: &str, value: Option<String>| {
            if let Some(value) = value {
                args.push(Arg::Text(value));
                sql.push_str(&format!(" AND {column} = ${}", args.len()));
            }
        };
        add("project", filter.project.clone());
        add("kind", filter.kind.clone());
        add("status", filter.status.map(|s| s.as_str().to_owned()));
        add("image_id", filter.image_id.map(|i| i.to_string()));
        add("parent_id", filter.parent_id.map(|i| i.to_string()));
        let limit = i64::try_from(filter.effective_limit()).unwrap_or(i64::MAX);
        args.push(Arg::Int(limit));
        sql.push_str(&format!(
            " ORDER BY created_at DESC, id DESC LIMIT ${}",
            args.len()
        ));
        self.fetch("listing jobs", &sql, &args).await
    }

    async fn claim(&self, request: &ClaimRequest, now: OffsetDateTime) -> JobResult<Option<Job>> {
        if request.kinds.is_empty() {
            return Ok(None);
        }
        let mut args = vec![
            Arg::Text(request.owner.clone()),
            micros(add_duration(now, request.lease)),
            micros(now),
        ];
        let mut kinds = String::new();
        for kind in &request.kinds {
            args.push(Arg::Text(kind.clone()));
            if !kinds.is_empty() {
                kinds.push_str(", ");
            }
            kinds.push_str(&format!("${}", args.len()));
        }
        let runnable = "attempts < max_attempts AND ((status = 'queued' AND not_before <= $3) \
                        OR (status = 'running' AND (lease_expires_at IS NULL OR \
                        lease_expires_at <= $3)))";
        let lock = match self.pool {
            Pool::Sqlite(_) => "",
            Pool::Postgres(_) => " FOR UPDATE SKIP LOCKED",
        };
        let sql = format!(
            "UPDATE jobs SET status = 'running', lease_owner = $1, lease_expires_at = $2, \
             attempts = attempts + 1, updated_at = $3 \
             WHERE id = (SELECT id FROM jobs WHERE kind IN ({kinds}) AND {runnable} \
             ORDER BY created_at, id LIMIT 1{lock}) AND {runnable} RETURNING {COLUMNS}"
        );
        Ok(self.fetch("claiming a job", &sql, &args).await?.pop())
    }

    async fn heartbeat(
        &self,
        id: Uuid,
        owner: &str,
        lease: Duration,
        state: Option<&serde_json::Value>,
        now: OffsetDateTime,
    ) -> JobResult<Job> {
        let set = "lease_expires_at = $4, state = COALESCE($5, state), updated_at = $3";
        let extra = vec![
            micros(add_duration(now, lease)),
            Arg::OptText(state.map(|s| s.to_string())),
        ];
        self.update_held("renewing a job lease", id, owner, now, set, extra)
            .await
    }

    async fn succeed(
        &self,
        id: Uuid,
        owner: &str,
        result: &serde_json::Value,
        keep: Duration,
        now: OffsetDateTime,
    ) -> JobResult<Job> {
        let end = Ending {
            status: JobStatus::Succeeded,
            result: Some(result.to_string()),
            reason: None,
            keep,
        };
        self.finish_held("finishing a job", id, owner, now, end)
            .await
    }

    async fn fail(
        &self,
        id: Uuid,
        owner: &str,
        reason: &str,
        keep: Duration,
        now: OffsetDateTime,
    ) -> JobResult<Job> {
        let end = Ending {
            status: JobStatus::Failed,
            result: None,
            reason: Some(reason.to_owned()),
            keep,
        };
        self.finish_held("failing a job", id, owner, now, end).await
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
        let job = self.get(id).await?.ok_or(JobError::NotFound(id))?;
        if job.attempts >= job.max_attempts {
            let mut last = job;
            last.fail_reason = Some(reason.to_owned());
            let end = Ending {
                status: JobStatus::Failed,
                result: None,
                reason: Some(exhausted_reason(&last)),
                keep,
            };
            return self.finish_held("failing a job", id, owner, now, end).await;
        }
        let set = "status = 'queued', fail_reason = $4, not_before = $5, lease_owner = NULL, \
                   lease_expires_at = NULL, updated_at = $3";
        let extra = vec![
            Arg::Text(reason.to_owned()),
            micros(add_duration(now, delay)),
        ];
        self.update_held("requeueing a job", id, owner, now, set, extra)
            .await
    }

    async fn reap_exhausted(&self, keep: Duration, now: OffsetDateTime) -> JobResult<u64> {
        let dead = "status = 'running' AND attempts >= max_attempts AND \
                    (lease_expires_at IS NULL OR lease_expires_at <= $1)";
        let sql = format!("SELECT {COLUMNS} FROM jobs WHERE {dead}");
        let mut reaped = 0;
        for job in self
            .fetch("finding abandoned jobs", &sql, &[micros(now)])
            .await?
        {
            let sql = format!(
                "UPDATE jobs SET status = 'failed', fail_reason = $3, lease_owner = NULL, \
                 lease_expires_at = NULL, expires_at = $4, updated_at = $1 \
                 WHERE id = $2 AND {dead}"
            );
            let args = [
                micros(now),
                Arg::Text(job.id.to_string()),
                Arg::Text(exhausted_reason(&job)),
                micros(add_duration(now, keep)),
            ];
            reaped += self
                .execute("failing an abandoned job", &sql, &args)
                .await?;
        }
        Ok(reaped)
    }

    async fn delete_expired(&self, now: OffsetDateTime) -> JobResult<u64> {
        let sql = "DELETE FROM jobs WHERE status IN ('succeeded', 'failed') AND expires_at < $1";
        self.execute("deleting expired jobs", sql, &[micros(now)])
            .await
    }
}
