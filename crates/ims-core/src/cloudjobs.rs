//! IMS asynchronous jobs on the durable queue (`ims-jobs`): every IMS operation that answers
//! with a `job_id` submits an [`ImsJob`]; a worker on any node runs it through
//! [`ImsJobHandler`], and `show_job` / `show_job_progress` read it back as a [`JobView`].
//!
//! A job's payload holds what the job query shows (`job_type`, the initial `entities`), who asked
//! (the caller, so the worker acts with the submitter's rights) and the operation's parameters.
//! The handler's result is merged into the entities. A failure keeps its [`ErrorKind`] in the
//! job's saved state (`error_kind`) so the API can map it to an IMS error code; the reason is
//! the job's `fail_reason`. Handlers are idempotent: a job whose worker died is claimed again
//! after its lease expires and runs from the state it last saved.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use ims_domain::{Caller, ErrorKind, MemberStatus, Role};
use ims_jobs::runner::{JobContext, JobFailure, JobHandler};
use ims_jobs::{Job, JobFilter, JobStatus as QueueStatus, NewJob};
use ims_meta::cloudimages::JobRecord;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::cloudimages::{CloudImageService, JobStatus};
use crate::cross_region::{CROSS_REGION_JOB_KIND, CROSS_REGION_JOB_TYPE};
use crate::error::{ServiceError, ServiceResult};

/// Attempts of an IMS job: a crash is resumed twice more, then the job fails.
const IMS_JOB_MAX_ATTEMPTS: u32 = 3;
/// Sub-jobs listed in a job view.
const MAX_SUB_JOBS: usize = 100;

/// What an IMS job does; each is a queue kind with its own handler branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImsJobKind {
    AddMembers,
    DeleteMembers,
    UpdateMembers,
    CopyInRegion,
    /// Reads a bucket object into a queued image (create_image, quick import, data disk,
    /// register_image).
    ImportFromBucket,
    /// Writes an image to a bucket object.
    ExportToBucket,
}

impl ImsJobKind {
    pub const ALL: [ImsJobKind; 6] = [
        ImsJobKind::AddMembers,
        ImsJobKind::DeleteMembers,
        ImsJobKind::UpdateMembers,
        ImsJobKind::CopyInRegion,
        ImsJobKind::ImportFromBucket,
        ImsJobKind::ExportToBucket,
    ];

    /// The queue kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ImsJobKind::AddMembers => "ims.add_members",
            ImsJobKind::DeleteMembers => "ims.delete_members",
            ImsJobKind::UpdateMembers => "ims.update_members",
            ImsJobKind::CopyInRegion => "ims.copy_in_region",
            ImsJobKind::ImportFromBucket => "ims.import_from_bucket",
            ImsJobKind::ExportToBucket => "ims.export_to_bucket",
        }
    }

    pub fn parse(kind: &str) -> Option<ImsJobKind> {
        ImsJobKind::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

/// A job to submit.
#[derive(Debug, Clone)]
pub struct ImsJob {
    pub kind: ImsJobKind,
    /// The `job_type` the job queries show (`imsImportImageJob`, …).
    pub job_type: &'static str,
    /// The entities shown from the start (`image_id`, `image_name`).
    pub entities: Value,
    /// The operation's parameters, read by its handler.
    pub params: Value,
    /// The image the job works on, if any.
    pub image_id: Option<uuid::Uuid>,
}

/// A job as the job queries render it.
#[derive(Debug, Clone)]
pub struct JobView {
    /// 32 lowercase hex digits, as IMS writes job ids.
    pub id: String,
    pub job_type: String,
    pub status: JobStatus,
    pub begin_time: OffsetDateTime,
    pub end_time: Option<OffsetDateTime>,
    pub error_kind: Option<ErrorKind>,
    pub fail_reason: Option<String>,
    /// The payload's entities with the handler's result merged in.
    pub entities: Value,
    /// 0–100; 100 once the job succeeded.
    pub percent: f64,
    pub sub_jobs: Vec<JobView>,
}

fn caller_json(caller: &Caller) -> Value {
    let roles: Vec<&str> = caller.roles.iter().map(|r| r.as_str()).collect();
    json!({"user_id": caller.user_id, "project_id": caller.project_id, "roles": roles})
}

fn caller_from(payload: &Value) -> Result<Caller, JobFailure> {
    let caller = &payload["caller"];
    let text = |key: &str| {
        caller[key]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| JobFailure::Fatal(format!("job payload has no caller {key}")))
    };
    let roles: BTreeSet<Role> = caller["roles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().and_then(Role::parse))
        .collect();
    Ok(Caller {
        user_id: text("user_id")?,
        project_id: text("project_id")?,
        roles,
    })
}

fn error_kind_named(name: &str) -> Option<ErrorKind> {
    ErrorKind::ALL
        .into_iter()
        .find(|k| format!("{k:?}") == name)
}

fn status_of(job: &Job) -> JobStatus {
    match job.status {
        QueueStatus::Queued if job.attempts == 0 => JobStatus::Init,
        QueueStatus::Queued | QueueStatus::Running => JobStatus::Running,
        QueueStatus::Succeeded => JobStatus::Success,
        QueueStatus::Failed => JobStatus::Fail,
    }
}

/// Whether a queue kind is an IMS job the job queries show.
fn is_ims_kind(kind: &str) -> bool {
    ImsJobKind::parse(kind).is_some() || kind == CROSS_REGION_JOB_KIND
}

/// The IMS view of a queue job.
pub fn job_view(job: &Job, sub_jobs: Vec<JobView>) -> JobView {
    let status = status_of(job);
    let mut entities = job.payload["entities"].clone();
    if !entities.is_object() {
        entities = json!({});
    }
    if let (Some(map), Some(Value::Object(result))) = (entities.as_object_mut(), &job.result) {
        map.extend(result.clone());
    }
    let state = job.state.as_ref();
    let error_kind = (status == JobStatus::Fail).then(|| {
        state
            .and_then(|s| s["error_kind"].as_str())
            .and_then(error_kind_named)
            .unwrap_or(ErrorKind::Internal)
    });
    let percent = match status {
        JobStatus::Success => 100.0,
        _ => state
            .and_then(|s| s["percent"].as_f64())
            .unwrap_or(0.0)
            .clamp(0.0, 100.0),
    };
    JobView {
        id: job.id.simple().to_string(),
        job_type: job.payload["job_type"]
            .as_str()
            .unwrap_or(if job.kind == CROSS_REGION_JOB_KIND {
                CROSS_REGION_JOB_TYPE
            } else {
                job.kind.as_str()
            })
            .to_string(),
        status,
        begin_time: job.created_at,
        end_time: job.status.is_finished().then_some(job.updated_at),
        error_kind,
        fail_reason: (status == JobStatus::Fail)
            .then(|| job.fail_reason.clone())
            .flatten(),
        entities,
        percent,
        sub_jobs,
    }
}

/// The IMS view of a legacy job record (cross-region copies submitted by earlier versions).
pub fn record_view(record: &JobRecord) -> JobView {
    let status = match record.status.as_str() {
        "RUNNING" => JobStatus::Running,
        "SUCCESS" => JobStatus::Success,
        "FAIL" => JobStatus::Fail,
        _ => JobStatus::Init,
    };
    let entities = serde_json::from_str::<Value>(&record.entities)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    JobView {
        id: record.id.clone(),
        job_type: record.job_type.clone(),
        status,
        begin_time: record.begin_time,
        end_time: record.end_time,
        error_kind: (status == JobStatus::Fail).then(|| {
            record
                .error_code
                .as_deref()
                .and_then(error_kind_named)
                .unwrap_or(ErrorKind::Internal)
        }),
        fail_reason: record.fail_reason.clone(),
        entities,
        percent: if status == JobStatus::Success {
            100.0
        } else {
            0.0
        },
        sub_jobs: Vec::new(),
    }
}

impl CloudImageService {
    /// Submits an IMS job for `caller`; returns its id (32 hex digits) at once.
    pub async fn submit_job(&self, caller: &Caller, job: ImsJob) -> ServiceResult<String> {
        self.submit_sub_job(caller, job, None).await
    }

    /// Submits a job that belongs to `parent` (shown in the parent's `sub_jobs_*`).
    pub async fn submit_sub_job(
        &self,
        caller: &Caller,
        job: ImsJob,
        parent: Option<uuid::Uuid>,
    ) -> ServiceResult<String> {
        let payload = json!({
            "job_type": job.job_type,
            "entities": job.entities,
            "caller": caller_json(caller),
            "params": job.params,
        });
        let mut new = NewJob::new(job.kind.as_str(), &caller.project_id, payload);
        new.user_id = Some(caller.user_id.clone());
        new.image_id = job.image_id;
        new.parent_id = parent;
        new.max_attempts = IMS_JOB_MAX_ATTEMPTS;
        let submitted = self
            .jobs()
            .submit(new, OffsetDateTime::now_utc())
            .await
            .map_err(|e| ServiceError::internal("submitting an IMS job", &e))?;
        self.wake_workers();
        tracing::info!(job_id = %submitted.id, kind = job.kind.as_str(), "IMS job submitted");
        Ok(submitted.id.simple().to_string())
    }

    /// A job of the caller's project (any project's for an admin), with its sub-jobs.
    pub async fn job(&self, caller: &Caller, id: &str) -> ServiceResult<JobView> {
        let missing = || ServiceError::not_found(format!("Job {id} not found"));
        let uuid = uuid::Uuid::parse_str(id).map_err(|_| missing())?;
        let job = self
            .jobs()
            .get(uuid)
            .await
            .map_err(|e| ServiceError::internal("reading a job", &e))?
            .filter(|j| is_ims_kind(&j.kind))
            .filter(|j| j.project == caller.project_id || caller.is_admin());
        let legacy = job
            .as_ref()
            .is_none_or(|j| j.kind == CROSS_REGION_JOB_KIND && j.payload.get("job_type").is_none());
        if legacy {
            // A cross-region copy submitted before those jobs' views moved onto the queue (its
            // queue job possibly expired since): its IMS record, never written again, has the
            // state it ended in.
            let record = self
                .records()
                .get_job(&uuid.simple().to_string())
                .await
                .map_err(|e| ServiceError::internal("reading a job record", &e))?
                .filter(|r| r.project_id == caller.project_id || caller.is_admin());
            if let Some(record) = record {
                return Ok(record_view(&record));
            }
        }
        let job = job.ok_or_else(missing)?;
        let filter = JobFilter {
            parent_id: Some(uuid),
            limit: Some(MAX_SUB_JOBS),
            ..JobFilter::default()
        };
        let children = self
            .jobs()
            .list(&filter)
            .await
            .map_err(|e| ServiceError::internal("listing sub-jobs", &e))?;
        let sub_jobs = children.iter().map(|c| job_view(c, Vec::new())).collect();
        Ok(job_view(&job, sub_jobs))
    }
}

/// Runs every [`ImsJobKind`].
pub struct ImsJobHandler {
    service: Arc<CloudImageService>,
}

impl ImsJobHandler {
    pub fn new(service: Arc<CloudImageService>) -> ImsJobHandler {
        ImsJobHandler { service }
    }

    async fn dispatch(
        &self,
        ctx: &JobContext,
        kind: ImsJobKind,
        caller: &Caller,
    ) -> ServiceResult<Value> {
        let params = &ctx.job().payload["params"];
        let service = &self.service;
        match kind {
            ImsJobKind::AddMembers => {
                let (images, projects) = (image_ids(params)?, strings(&params["projects"]));
                let mut results = Vec::new();
                for id in images {
                    results.extend(service.add_members(caller, id, &projects).await?);
                }
                Ok(json!({ "results": results }))
            }
            ImsJobKind::DeleteMembers => {
                let (images, projects) = (image_ids(params)?, strings(&params["projects"]));
                let mut results = Vec::new();
                for id in images {
                    results.extend(service.delete_members(caller, id, &projects).await?);
                }
                Ok(json!({ "results": results }))
            }
            ImsJobKind::UpdateMembers => {
                let project = params["project_id"].as_str().unwrap_or_default();
                let status = match params["status"].as_str() {
                    Some("accepted") => MemberStatus::Accepted,
                    Some("rejected") => MemberStatus::Rejected,
                    other => {
                        return Err(ServiceError::invalid(format!(
                            "Member status {other:?} is invalid."
                        )));
                    }
                };
                let mut results = Vec::new();
                for id in image_ids(params)? {
                    results.push(service.answer_member(caller, id, project, status).await?);
                }
                Ok(json!({ "results": results }))
            }
            ImsJobKind::CopyInRegion => {
                let source = parse_uuid(&params["source_id"])?;
                let target = copy_target(ctx, params).await?;
                let name = params["name"].as_str().unwrap_or_default();
                let description = params["description"].as_str();
                let enterprise_project = params["enterprise_project_id"].as_str();
                let copy = service
                    .copy_in_region(
                        caller,
                        source,
                        target,
                        name,
                        description,
                        enterprise_project,
                    )
                    .await?;
                Ok(json!({ "image_id": copy.id.to_string() }))
            }
            ImsJobKind::ImportFromBucket => service.run_bucket_import(ctx, caller, params).await,
            ImsJobKind::ExportToBucket => service.run_bucket_export(ctx, caller, params).await,
        }
    }
}

/// The id of an in-region copy: fixed in the payload at submission. A job submitted before
/// that was so gets one on its first run, saved in its state before the copy is created, so a
/// re-run after a crash finds the copy instead of making another.
async fn copy_target(ctx: &JobContext, params: &Value) -> ServiceResult<uuid::Uuid> {
    if let Some(id) = params.get("target_id").filter(|v| !v.is_null()) {
        return parse_uuid(id);
    }
    let saved = ctx.job().state.as_ref().and_then(|s| s.get("target_id"));
    if let Some(id) = saved {
        return parse_uuid(id);
    }
    let id = uuid::Uuid::new_v4();
    ctx.save_state(json!({ "target_id": id.to_string() }))
        .await
        .map_err(|e| ServiceError::new(ErrorKind::Conflict, e.to_string()))?;
    Ok(id)
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn parse_uuid(value: &Value) -> ServiceResult<uuid::Uuid> {
    value
        .as_str()
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
        .ok_or_else(|| ServiceError::invalid(format!("{value} is not an image id")))
}

fn image_ids(params: &Value) -> ServiceResult<Vec<uuid::Uuid>> {
    params["images"]
        .as_array()
        .into_iter()
        .flatten()
        .map(parse_uuid)
        .collect()
}

#[async_trait]
impl JobHandler for ImsJobHandler {
    async fn run(&self, ctx: &JobContext) -> Result<Value, JobFailure> {
        let job = ctx.job();
        let kind = ImsJobKind::parse(&job.kind)
            .ok_or_else(|| JobFailure::Fatal(format!("{} is not an IMS job kind", job.kind)))?;
        let caller = caller_from(&job.payload)?;
        match self.dispatch(ctx, kind, &caller).await {
            Ok(result) => Ok(result),
            Err(e) => {
                tracing::warn!(job_id = %job.id, kind = ?e.kind, reason = %e.message, "IMS job failed");
                // Merged into what this run saved (e.g. an export's progress), not the claimed state.
                let mut state = ctx.state().unwrap_or_else(|| json!({}));
                if let Some(map) = state.as_object_mut() {
                    map.insert("error_kind".into(), format!("{:?}", e.kind).into());
                }
                ctx.save_state(state).await?;
                Err(JobFailure::Fatal(e.message))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_callers_survive_the_payload() {
        for kind in ImsJobKind::ALL {
            assert_eq!(ImsJobKind::parse(kind.as_str()), Some(kind));
        }
        let caller = Caller {
            user_id: "u".into(),
            project_id: "p".into(),
            roles: [Role::Member, Role::Admin].into_iter().collect(),
        };
        let payload = json!({ "caller": caller_json(&caller) });
        assert_eq!(caller_from(&payload).unwrap(), caller);
        assert!(caller_from(&json!({})).is_err());
    }

    #[test]
    fn views_map_queue_states_to_ims_states() {
        let now = OffsetDateTime::now_utc();
        let payload = json!({"job_type": "imsNativeExportImageJob", "entities": {"image_id": "i"}});
        let mut job = NewJob::new(ImsJobKind::ExportToBucket.as_str(), "p", payload).into_job(now);
        let view = job_view(&job, Vec::new());
        assert_eq!(
            (view.status, view.job_type.as_str()),
            (JobStatus::Init, "imsNativeExportImageJob")
        );
        assert_eq!(view.id.len(), 32);
        job.attempts = 1;
        job.status = QueueStatus::Running;
        job.state = Some(json!({"percent": 40.0}));
        assert_eq!(job_view(&job, Vec::new()).percent, 40.0);
        job.status = QueueStatus::Failed;
        job.fail_reason = Some("no such bucket".into());
        job.state = Some(json!({"error_kind": "NotFound"}));
        let view = job_view(&job, Vec::new());
        assert_eq!(view.status, JobStatus::Fail);
        assert_eq!(view.error_kind, Some(ErrorKind::NotFound));
        assert_eq!(view.fail_reason.as_deref(), Some("no such bucket"));
        job.status = QueueStatus::Succeeded;
        job.result = Some(json!({"object": "o"}));
        let view = job_view(&job, Vec::new());
        assert_eq!((view.status, view.percent), (JobStatus::Success, 100.0));
        assert_eq!(view.entities, json!({"image_id": "i", "object": "o"}));
        assert_eq!(view.error_kind, None);
    }
}
