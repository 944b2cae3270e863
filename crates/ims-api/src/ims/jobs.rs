//! IMS job queries (both endpoints), the image quota and the OS version list.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use ims_core::cloudjobs::JobView;
use ims_domain::os_catalog;
use serde_json::{Value, json};

use super::{ImsCaller, ImsResult, check_project, invalid};
use crate::SharedState;
use crate::error::ims_status_and_code;

/// Job times as IMS writes them: UTC with milliseconds, `2024-11-06T06:19:43.195Z`.
/// A job time as IMS writes it: UTC with exactly three fractional digits
/// (`2024-11-06T06:19:43.190Z`; RFC 3339 formatting would drop trailing zeros, and the SDK's
/// users compare these strings).
fn job_time(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

fn sub_job_json(view: &JobView) -> Value {
    json!({
        "status": view.status.as_str(),
        "job_id": view.id,
        "job_type": view.job_type,
        "begin_time": job_time(view.begin_time),
        "end_time": view.end_time.map(job_time).unwrap_or_default(),
        "error_code": view.error_kind.map(|k| ims_status_and_code(k).1),
        "fail_reason": view.fail_reason,
        "entities": {
            "image_id": view.entities.get("image_id"),
            "image_name": view.entities.get("image_name"),
        },
    })
}

/// The common fields; `progress` switches to `show_job_progress`' entity spelling.
fn job_json(view: &JobView, progress: bool) -> Value {
    let error_code = view.error_kind.map(|kind| ims_status_and_code(kind).1);
    let mut entities = view.entities.clone();
    if let Some(map) = entities.as_object_mut() {
        map.insert("process_percent".into(), json!(view.percent));
        if progress {
            let sub = view.sub_jobs.first().map(|s| s.id.clone());
            map.entry("subJobId").or_insert(sub.into());
        } else if let Some(code) = error_code {
            map.insert("error_code".into(), code.into());
            map.insert("error".into(), view.fail_reason.clone().into());
        }
        let results: Vec<Value> = view.sub_jobs.iter().map(sub_job_json).collect();
        let ids: Vec<&str> = view.sub_jobs.iter().map(|s| s.id.as_str()).collect();
        map.insert("sub_jobs_result".into(), json!(results));
        map.insert("sub_jobs_list".into(), json!(ids));
    }
    json!({
        "status": view.status.as_str(),
        "job_id": view.id,
        "job_type": view.job_type,
        "begin_time": job_time(view.begin_time),
        "end_time": view.end_time.map(job_time).unwrap_or_default(),
        "error_code": error_code,
        "fail_reason": view.fail_reason,
        "entities": entities,
    })
}

pub async fn show_job_progress(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    Path(job_id): Path<String>,
) -> ImsResult<Response> {
    let view = state.app.cloud_images.job(&caller, &job_id).await?;
    Ok(Json(job_json(&view, true)).into_response())
}

pub async fn show_job(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    Path((project_id, job_id)): Path<(String, String)>,
) -> ImsResult<Response> {
    check_project(&caller, &project_id)?;
    let view = state.app.cloud_images.job(&caller, &job_id).await?;
    Ok(Json(job_json(&view, false)).into_response())
}

/// The quota IMS reports: private images per project (seed table 5-1).
pub async fn show_quota(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
) -> ImsResult<Response> {
    let cloud = &state.app.cloud_images;
    let used = cloud.private_image_count(&caller.project_id).await?;
    let quota = cloud.config().private_image_quota;
    Ok(Json(json!({
        "quotas": {"resources": [
            {"type": "image", "used": used, "quota": quota, "min": 1, "max": quota.max(1)},
        ]}
    }))
    .into_response())
}

/// `GET /v1/cloudimages/os_version?tag=uefi&tag=arm`: the seed's catalogue grouped by platform;
/// every `tag` (`bms`, `uefi`, `arm`, `x86`) must hold. Each version also carries its UEFI
/// support and end of support (extra keys the SDK ignores).
pub async fn list_os_versions(
    ImsCaller(_caller): ImsCaller,
    RawQuery(raw): RawQuery,
) -> ImsResult<Response> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|_| invalid("The query string is invalid."))?;
    let mut tags = Vec::new();
    for (key, value) in pairs {
        if key == "tag" {
            for tag in value.split(',') {
                match tag {
                    "bms" | "uefi" | "arm" | "x86" | "kvm" => tags.push(tag.to_string()),
                    other => return Err(invalid(format!("Tag {other} is invalid."))),
                }
            }
        }
    }
    let mut groups: Vec<(&str, Vec<Value>)> = Vec::new();
    for entry in os_catalog::entries() {
        let holds = tags.iter().all(|t| match t.as_str() {
            "uefi" => entry.uefi,
            "arm" => entry.arm,
            "x86" => entry.x86,
            "bms" => entry.bms,
            _ => true,
        });
        if !holds {
            continue;
        }
        let end_of_support = entry.end_of_life().map(|e| match e {
            os_catalog::EndOfLife::On(d) => d.to_string(),
            os_catalog::EndOfLife::Stopped => "stopped".into(),
        });
        let item = json!({
            "platform": entry.platform,
            "os_version_key": entry.key(),
            "os_version": entry.name,
            "os_bit": entry.bits,
            "os_type": entry.os_type.as_str(),
            "support_uefi": entry.uefi,
            "end_of_support": end_of_support,
        });
        match groups.iter_mut().find(|(p, _)| *p == entry.platform) {
            Some((_, list)) => list.push(item),
            None => groups.push((entry.platform, vec![item])),
        }
    }
    let body: Vec<Value> = groups
        .into_iter()
        .map(|(platform, list)| json!({"platform": platform, "version_list": list}))
        .collect();
    Ok(Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::job_time;

    #[test]
    fn job_times_have_three_fractional_digits_in_utc() {
        let t = time::macros::datetime!(2026-12-08 01:47:16.640 +08:00);
        assert_eq!(job_time(t), "2026-12-07T17:47:16.640Z");
        let t = time::macros::datetime!(2026-12-08 01:47:16 UTC);
        assert_eq!(job_time(t), "2026-12-08T01:47:16.000Z");
    }
}
