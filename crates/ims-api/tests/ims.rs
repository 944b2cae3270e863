//! In-process tests of the IMS API: requests signed with SDK-HMAC-SHA256 as `huaweicloudsdkcore`
//! signs them, through the router over in-memory stores, and the error bodies the SDK parses.

mod common;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use ims_core::sdk_signature::{SignedRequest, canonical_request, sign};
use ims_core::{App, Config};
use ims_domain::Role;
use serde_json::json;

use common::{Reply, issue_token, named, send};

struct Ims {
    router: Router,
    project: String,
    ak: String,
    sk: String,
}

async fn setup() -> Ims {
    let app = Arc::new(App::in_memory(Config::default()).await);
    app.identity.bootstrap(Some("adminpw")).await.unwrap();
    let project = app.identity.create_project("team").await.unwrap();
    let user = app.identity.create_user("alice", "pw").await.unwrap();
    app.identity
        .assign_role(&named("alice"), &named("team"), Role::Member, true)
        .await
        .unwrap();
    let key = app.access_keys.create(&user.id, None).await.unwrap();
    Ims {
        router: ims_api::router(app),
        project: project.id,
        ak: key.key.access_key,
        sk: key.secret,
    }
}

fn sdk_date(offset_secs: i64) -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::seconds(offset_secs))
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap()
}

impl Ims {
    /// A request signed like the SDK signs it (`sk` overrides the secret, `skew` the date).
    fn signed(
        &self,
        method: &str,
        uri: &str,
        body: &str,
        sk: Option<&str>,
        skew: i64,
    ) -> Request<Body> {
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let date = sdk_date(skew);
        let content_type = if body.is_empty() {
            "application/json"
        } else {
            "application/json;charset=utf-8"
        };
        let headers = [
            ("content-type", content_type.to_string()),
            ("host", "127.0.0.1:9292".to_string()),
            ("user-agent", "huaweicloud-usdk-python/3.0".to_string()),
            ("x-project-id", self.project.clone()),
            ("x-sdk-date", date.clone()),
        ];
        let lookup = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.clone())
        };
        let names: Vec<String> = headers.iter().map(|(k, _)| k.to_string()).collect();
        let request = SignedRequest {
            method,
            raw_path: path,
            raw_query: query,
            header: &lookup,
            body: body.as_bytes(),
        };
        let canonical = canonical_request(&request, &names).unwrap();
        let signature = sign(&canonical, &date, sk.unwrap_or(&self.sk).as_bytes());
        let mut builder = Request::builder().method(method).uri(uri);
        for (k, v) in &headers {
            builder = builder.header(*k, v);
        }
        builder
            .header(
                "authorization",
                format!(
                    "SDK-HMAC-SHA256 Access={}, SignedHeaders={}, Signature={signature}",
                    self.ak,
                    names.join(";")
                ),
            )
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    async fn send(&self, req: Request<Body>) -> Reply {
        send(&self.router, req).await
    }
}

#[tokio::test]
async fn signed_requests_are_served_and_bad_ones_get_the_gateway_body() {
    let ims = setup().await;
    let ok = ims
        .send(ims.signed("GET", "/v1/cloudimages/quota", "", None, 0))
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    assert_eq!(ok.json()["quotas"]["resources"][0]["used"], 0);
    assert!(ok.headers.contains_key("x-request-id"));

    let wrong = ims
        .send(ims.signed("GET", "/v1/cloudimages/quota", "", Some("nope"), 0))
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.json()["error_code"], "APIGW.0301");

    let skewed = ims
        .send(ims.signed("GET", "/v1/cloudimages/quota", "", None, -3600))
        .await;
    assert_eq!(skewed.status, StatusCode::UNAUTHORIZED);
    assert!(
        skewed.json()["error_msg"]
            .as_str()
            .unwrap()
            .contains("seconds")
    );

    let body = json!({"image_id": uuid::Uuid::new_v4().to_string(), "tag": "a.b"}).to_string();
    let change = ims.signed("PUT", "/v1/cloudimages/tags", &body, None, 0);
    let (parts, b) = change.into_parts();
    let again = Request::from_parts(parts.clone(), Body::from(body.clone()));
    let first = ims.send(Request::from_parts(parts, b)).await;
    assert_eq!(first.status, StatusCode::NOT_FOUND, "{:?}", first.body);
    assert_eq!(first.json()["error"]["code"], "IMG.0404");
    let replay = ims.send(again).await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    assert!(
        replay.json()["error_msg"]
            .as_str()
            .unwrap()
            .contains("replay")
    );
}

#[tokio::test]
async fn ims_errors_use_the_ims_body() {
    let ims = setup().await;
    let malformed = ims
        .send(ims.signed("POST", "/v1/cloudimages/members", "{not json", None, 0))
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.json()["error"]["code"], "IMG.0001");

    let bad_type = ims
        .send(ims.signed("GET", "/v2/cloudimages?__imagetype=bogus", "", None, 0))
        .await;
    assert_eq!(bad_type.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_type.json()["error"]["code"], "IMG.0001");

    let other_project = format!("/v2/{}/images/tags", "0".repeat(32));
    let forbidden = ims
        .send(ims.signed("GET", &other_project, "", None, 0))
        .await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert_eq!(forbidden.json()["error"]["code"], "IMG.0403");

    let unsigned = send(
        &ims.router,
        Request::get("/v1/cloudimages/quota")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(unsigned.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unsigned.json()["error_code"], "APIGW.0301");
}

#[tokio::test]
async fn a_token_works_too_and_images_are_shared_between_dialects() {
    let ims = setup().await;
    let token = issue_token(&ims.router, "alice", "pw", "team").await;
    let create = Request::post("/v2/images")
        .header("x-auth-token", &token)
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"name": "both", "disk_format": "raw", "container_format": "bare",
                   "__os_version": "CentOS 7.9 64bit"})
            .to_string(),
        ))
        .unwrap();
    let created = send(&ims.router, create).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(created.json()["__platform"], "CentOS");
    let listed = send(
        &ims.router,
        Request::get("/v2/cloudimages?__platform=CentOS")
            .header("x-auth-token", &token)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(listed.status, StatusCode::OK, "{:?}", listed.body);
    let images = listed.json()["images"].as_array().unwrap().clone();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["__imagetype"], "private");
    assert_eq!(images[0]["__os_bit"], "64");
    assert_eq!(images[0]["__image_size"], "0");
}

/// Lists `/v2/cloudimages?<query>` with a token; the names of the images, sorted.
async fn list_names(ims: &Ims, token: &str, query: &str) -> Result<Vec<String>, Reply> {
    let reply = send(
        &ims.router,
        Request::get(format!("/v2/cloudimages?{query}"))
            .header("x-auth-token", token)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    if reply.status != StatusCode::OK {
        return Err(reply);
    }
    let mut names: Vec<String> = reply.json()["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    Ok(names)
}

async fn glance_create(ims: &Ims, token: &str, body: serde_json::Value) {
    let create = Request::post("/v2/images")
        .header("x-auth-token", token)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let created = send(&ims.router, create).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
}

#[tokio::test]
async fn enterprise_project_and_flavor_filters() {
    let ims = setup().await;
    let token = issue_token(&ims.router, "alice", "pw", "team").await;
    let admin = issue_token(&ims.router, "admin", "adminpw", "admin").await;
    let ep = uuid::Uuid::new_v4().to_string();
    // `__os_version` makes them IMS images (the service fills in `__imagetype` and the rest).
    let base = json!({"disk_format": "raw", "container_format": "bare",
                      "__os_version": "CentOS 7.9 64bit"});
    let with = |extra: serde_json::Value| {
        let mut body = base.clone();
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    glance_create(
        &ims,
        &token,
        with(json!({"name": "arm-ep", "architecture": "arm", "enterprise_project_id": ep})),
    )
    .await;
    glance_create(
        &ims,
        &token,
        with(json!({"name": "disk", "__support_diskintensive": "true"})),
    )
    .await;
    glance_create(&ims, &token, with(json!({"name": "plain"}))).await;
    glance_create(
        &ims,
        &admin,
        with(json!({"name": "public-x86", "visibility": "public"})),
    )
    .await;

    let names = |q: &'static str| list_names(&ims, &token, q);
    let private = "__imagetype=private";
    assert_eq!(
        list_names(
            &ims,
            &token,
            &format!("{private}&enterprise_project_id={ep}")
        )
        .await
        .unwrap(),
        ["arm-ep"]
    );
    assert_eq!(
        names("__imagetype=private&enterprise_project_id=0")
            .await
            .unwrap(),
        ["disk", "plain"]
    );
    assert_eq!(
        names("__imagetype=private&enterprise_project_id=all_granted_eps")
            .await
            .unwrap()
            .len(),
        3
    );
    let bad = names("enterprise_project_id=nope").await.unwrap_err();
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["error"]["code"], "IMG.0001");

    assert_eq!(
        names("__imagetype=private&flavor_id=kc1.large.2")
            .await
            .unwrap(),
        ["arm-ep"]
    );
    assert_eq!(
        names("__imagetype=private&flavor_id=d6.large.2")
            .await
            .unwrap(),
        ["disk"]
    );
    assert_eq!(
        names("__imagetype=private&flavor_id=s6.large.2")
            .await
            .unwrap(),
        ["disk", "plain"]
    );
    // flavor_id alone: the public images the flavor boots.
    assert_eq!(names("flavor_id=s6.large.2").await.unwrap(), ["public-x86"]);
    assert!(names("flavor_id=kc1.large.2").await.unwrap().is_empty());
    let unknown = names("flavor_id=zz9.large.2").await.unwrap_err();
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
}

/// Splits RFC 4180 text into rows of cells (quoted cells may hold commas, quotes, line breaks).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut cell) = (Vec::new(), Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    rows
}

#[tokio::test]
async fn csv_export_has_the_console_columns_and_parses_back() {
    let ims = setup().await;
    let token = issue_token(&ims.router, "alice", "pw", "team").await;
    let admin = issue_token(&ims.router, "admin", "adminpw", "admin").await;
    let base = |name: &str| {
        json!({"name": name, "disk_format": "raw", "container_format": "bare",
               "__os_version": "CentOS 7.9 64bit", "min_disk": 40})
    };
    glance_create(&ims, &token, base("plain")).await;
    glance_create(&ims, &token, base("with, comma \"quoted\"\nand a line")).await;
    let mut public = base("public-one");
    public["visibility"] = "public".into();
    glance_create(&ims, &admin, public).await;

    let export = |query: &'static str| {
        send(
            &ims.router,
            Request::get(format!("/v2/cloudimages/export.csv?{query}"))
                .header("x-auth-token", &token)
                .body(Body::empty())
                .unwrap(),
        )
    };
    let private = export("__imagetype=private").await;
    assert_eq!(private.status, StatusCode::OK, "{:?}", private.body);
    assert_eq!(private.headers["content-type"], "text/csv; charset=utf-8");
    let rows = parse_csv(std::str::from_utf8(&private.body).unwrap());
    assert_eq!(
        rows[0],
        [
            "Name",
            "ID",
            "Status",
            "OS Type",
            "OS",
            "Image Type",
            "Disk Capacity (GB)",
            "Encrypted",
            "Created At"
        ]
    );
    let mut names: Vec<&str> = rows[1..].iter().map(|r| r[0].as_str()).collect();
    names.sort();
    assert_eq!(names, ["plain", "with, comma \"quoted\"\nand a line"]);
    for row in &rows[1..] {
        assert_eq!(row.len(), 9, "{row:?}");
        assert!(uuid::Uuid::parse_str(&row[1]).is_ok());
        assert_eq!(
            &row[2..8],
            [
                "queued",
                "Linux",
                "CentOS 7.9 64bit",
                "ECS system disk image",
                "40",
                "No"
            ]
        );
    }
    let public = export("__imagetype=gold").await;
    let rows = parse_csv(std::str::from_utf8(&public.body).unwrap());
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1][0], "public-one");
    let all = export("").await;
    assert_eq!(parse_csv(std::str::from_utf8(&all.body).unwrap()).len(), 4);
}

/// Sends `method uri` with a token and an optional JSON body.
async fn with_token(
    router: &Router,
    token: &str,
    method: &str,
    uri: &str,
    body: Option<serde_json::Value>,
) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("x-auth-token", token)
        .header("content-type", "application/json")
        .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
        .unwrap();
    send(router, req).await
}

/// Polls an IMS job until it ends.
async fn wait_job(router: &Router, token: &str, project: &str, job_id: &str) -> serde_json::Value {
    for _ in 0..300 {
        let job = with_token(
            router,
            token,
            "GET",
            &format!("/v1/{project}/jobs/{job_id}"),
            None,
        )
        .await
        .json();
        if job["status"] == "SUCCESS" || job["status"] == "FAIL" {
            return job;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("job {job_id} did not end");
}

/// An in-region copy job whose worker died after creating the copy (finished, or only the
/// `queued` record) makes no second copy when it runs again: the target id is fixed at
/// submission and the re-run finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_run_copy_job_makes_exactly_one_copy() {
    let app = Arc::new(App::in_memory(Config::default()).await);
    app.identity.bootstrap(Some("adminpw")).await.unwrap();
    let project = app.identity.create_project("team").await.unwrap();
    let user = app.identity.create_user("alice", "pw").await.unwrap();
    app.identity
        .assign_role(&named("alice"), &named("team"), Role::Member, true)
        .await
        .unwrap();
    let router = ims_api::router(app.clone());
    let token = issue_token(&router, "alice", "pw", "team").await;
    let created = with_token(
        &router,
        &token,
        "POST",
        "/v2/images",
        Some(
            json!({"name": "src", "disk_format": "raw", "container_format": "bare",
                    "__os_version": "CentOS 7.9 64bit"}),
        ),
    )
    .await;
    let source = created.json()["id"].as_str().unwrap().to_string();
    let put = Request::put(format!("/v2/images/{source}/file"))
        .header("x-auth-token", &token)
        .header("content-type", "application/octet-stream")
        .body(Body::from(vec![7u8; 1 << 16]))
        .unwrap();
    assert_eq!(send(&router, put).await.status, StatusCode::NO_CONTENT);

    // Two copy jobs, submitted while no worker runs; each names its target from the start.
    let mut jobs = Vec::new();
    for name in ["copy-finished", "copy-half-made"] {
        let reply = with_token(
            &router,
            &token,
            "POST",
            &format!("/v1/cloudimages/{source}/copy"),
            Some(json!({"name": name})),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let job_id = reply.json()["job_id"].as_str().unwrap().to_string();
        let job = job_now(&router, &token, &project.id, &job_id).await;
        assert_eq!(job["status"], "INIT", "{job}");
        let target = job["entities"]["image_id"].as_str().unwrap().to_string();
        jobs.push((name, job_id, target));
    }
    // The first job's earlier attempt did the whole copy and died before recording success…
    let caller = ims_domain::Caller {
        user_id: user.id.clone(),
        project_id: project.id.clone(),
        roles: [Role::Member].into_iter().collect(),
    };
    let (name, _, target) = &jobs[0];
    let target_id = uuid::Uuid::parse_str(target).unwrap();
    let source_id = uuid::Uuid::parse_str(&source).unwrap();
    let made = app
        .cloud_images
        .copy_in_region(&caller, source_id, target_id, name, None, None)
        .await
        .unwrap();
    assert_eq!(made.id, target_id);
    // …the second's died right after creating the (still queued) record.
    let (name, _, target) = &jobs[1];
    let half = with_token(
        &router,
        &token,
        "POST",
        "/v2/images",
        Some(json!({"id": target, "name": name, "disk_format": "raw",
                    "container_format": "bare"})),
    )
    .await;
    assert_eq!(half.status, StatusCode::CREATED, "{:?}", half.body);

    let _workers = app.start_workers("copy-test");
    for (name, job_id, target) in &jobs {
        let job = wait_job(&router, &token, &project.id, job_id).await;
        assert_eq!(job["status"], "SUCCESS", "{job}");
        assert_eq!(job["entities"]["image_id"], target.as_str(), "{job}");
        let listed = with_token(
            &router,
            &token,
            "GET",
            &format!("/v2/cloudimages?name={name}"),
            None,
        )
        .await
        .json();
        let images = listed["images"].as_array().unwrap();
        assert_eq!(images.len(), 1, "exactly one {name}: {listed}");
        assert_eq!(images[0]["id"], target.as_str());
        assert_eq!(images[0]["status"], "active");
        assert_eq!(images[0]["__originalimagename"], source.as_str());
    }
    // Running a finished job's step again still names the same single copy.
    let again = app
        .cloud_images
        .copy_in_region(&caller, source_id, target_id, "copy-finished", None, None)
        .await
        .unwrap();
    assert_eq!(again.id, target_id);
    let all = with_token(
        &router,
        &token,
        "GET",
        "/v2/cloudimages?__imagetype=private",
        None,
    )
    .await
    .json();
    assert_eq!(all["images"].as_array().unwrap().len(), 3, "{all}");
}

/// The job as it is now.
async fn job_now(router: &Router, token: &str, project: &str, job_id: &str) -> serde_json::Value {
    with_token(
        router,
        token,
        "GET",
        &format!("/v1/{project}/jobs/{job_id}"),
        None,
    )
    .await
    .json()
}

/// Cross-region copies submitted by earlier versions kept their IMS view in a job record (the
/// queue job's payload held only the copy's parameters): the job queries still read it.
#[tokio::test]
async fn legacy_cross_region_job_records_stay_readable() {
    let app = Arc::new(App::in_memory(Config::default()).await);
    app.identity.bootstrap(Some("adminpw")).await.unwrap();
    let project = app.identity.create_project("team").await.unwrap();
    app.identity.create_user("alice", "pw").await.unwrap();
    app.identity
        .assign_role(&named("alice"), &named("team"), Role::Member, true)
        .await
        .unwrap();
    let router = ims_api::router(app.clone());
    let token = issue_token(&router, "alice", "pw", "team").await;
    let now = time::OffsetDateTime::now_utc();
    let mut old = ims_jobs::NewJob::new(
        "ims.cross_region_copy",
        &project.id,
        json!({"source_image_id": uuid::Uuid::new_v4(), "target_image_id": uuid::Uuid::new_v4(),
               "name": "old-copy", "description": null, "region": "region-b"}),
    );
    let id = uuid::Uuid::new_v4();
    old.id = id;
    app.cloud_images.jobs().submit(old, now).await.unwrap();
    app.cloud
        .put_job(&ims_meta::cloudimages::JobRecord {
            id: id.simple().to_string(),
            project_id: project.id.clone(),
            job_type: "imsCrossRegionCopyImageJob".into(),
            status: "FAIL".into(),
            begin_time: now,
            end_time: Some(now),
            error_code: Some("NotFound".into()),
            fail_reason: Some("The source image is no longer active.".into()),
            entities: json!({"image_name": "old-copy"}).to_string(),
        })
        .await
        .unwrap();
    for uri in [
        format!("/v1/{}/jobs/{}", project.id, id.simple()),
        format!("/v1/cloudimages/job/{}", id.simple()),
    ] {
        let reply = with_token(&router, &token, "GET", &uri, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{uri}: {:?}", reply.body);
        let job = reply.json();
        assert_eq!(job["status"], "FAIL", "{uri}: {job}");
        assert_eq!(job["job_type"], "imsCrossRegionCopyImageJob", "{job}");
        assert_eq!(job["fail_reason"], "The source image is no longer active.");
        assert_eq!(job["entities"]["image_name"], "old-copy");
    }
}

/// Without `[buckets]`, bucket jobs start (input checked first) and end FAIL naming the missing
/// object storage, with the unavailable code; a failed import leaves no image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_jobs_fail_without_object_storage() {
    let app = Arc::new(App::in_memory(Config::default()).await);
    app.identity.bootstrap(Some("adminpw")).await.unwrap();
    let project = app.identity.create_project("team").await.unwrap();
    app.identity.create_user("alice", "pw").await.unwrap();
    app.identity
        .assign_role(&named("alice"), &named("team"), Role::Member, true)
        .await
        .unwrap();
    let _workers = app.start_workers("no-buckets");
    let router = ims_api::router(app.clone());
    let token = issue_token(&router, "alice", "pw", "team").await;
    let reply = with_token(
        &router,
        &token,
        "POST",
        "/v2/cloudimages/action",
        Some(
            json!({"name": "from-bucket", "image_url": "images:disk.qcow2", "min_disk": 40,
                    "os_version": "CentOS 7.9 64bit"}),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let job_id = reply.json()["job_id"].as_str().unwrap().to_string();
    let job = wait_job(&router, &token, &project.id, &job_id).await;
    assert_eq!(job["status"], "FAIL", "{job}");
    assert_eq!(job["error_code"], "IMG.0503", "{job}");
    assert!(
        job["fail_reason"]
            .as_str()
            .unwrap()
            .contains("Object storage is not configured"),
        "{job}"
    );
    let listed = with_token(
        &router,
        &token,
        "GET",
        "/v2/cloudimages?name=from-bucket",
        None,
    )
    .await
    .json();
    assert_eq!(listed["images"], json!([]), "{listed}");
}
