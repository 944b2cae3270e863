//! In-process tests of Glance's four per-project limits (`image_size_total`,
//! `image_stage_total`, `image_count_total`, `image_count_uploading`): each one at its
//! boundary where Glance enforces it (create, upload, stage, import, copy-image), the 413 that
//! names it, per-project overrides replacing the configured defaults, streams cut off with
//! nothing left behind, and the numbers `/v2/info/usage` reports.

#[allow(dead_code)] // the shared harness; this file does not use every helper
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use ims_core::config::{StoreEntry, StoreKind};
use ims_core::{App, Config};
use ims_domain::{Limit, QuotaResource as R, Role};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use common::{Reply, issue_token, named, send};

const MIB: usize = 1 << 20;

struct Node {
    router: Router,
    app: Arc<App>,
    admin: String,
    member: String,
    project: String,
    _workers: ims_jobs::runner::RunnerHandle,
}

async fn node(config: Config) -> Node {
    let app = Arc::new(App::in_memory(config).await);
    app.identity.bootstrap(Some("adminpw")).await.unwrap();
    let project = app.identity.create_project("p1").await.unwrap().id;
    app.identity.create_user("member1", "pw").await.unwrap();
    app.identity
        .assign_role(&named("member1"), &named("p1"), Role::Member, true)
        .await
        .unwrap();
    let workers = app.start_workers("test");
    let router = ims_api::router(app.clone());
    let admin = issue_token(&router, "admin", "adminpw", "admin").await;
    let member = issue_token(&router, "member1", "pw", "p1").await;
    Node {
        router,
        app,
        admin,
        member,
        project,
        _workers: workers,
    }
}

/// A loopback server answering `/image` with `data`.
async fn file_server(data: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let data = Arc::new(data);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let data = data.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    data.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(&data).await;
            });
        }
    });
    addr
}

fn web_config(addr: SocketAddr) -> Config {
    let mut config = Config::default();
    config.import.allowed_ports.push(addr.port());
    config.import.exempt_targets.push(addr);
    config
}

fn two_stores() -> Config {
    let entry = |id: &str, weight: i64, default: bool| StoreEntry {
        id: id.into(),
        description: None,
        weight,
        default,
        read_only: false,
        kind: StoreKind::Local,
        path: None,
        s3: None,
    };
    Config {
        stores: vec![entry("fs", 100, true), entry("fs2", 50, false)],
        ..Config::default()
    }
}

/// A 413 whose body names `resource`'s limit.
fn assert_over(reply: &Reply, resource: &str) {
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{reply:?}");
    let body = String::from_utf8_lossy(&reply.body);
    assert!(
        body.contains(&format!("{resource} is over limit")),
        "{body}"
    );
}

impl Node {
    async fn call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        ct: Option<&str>,
        body: impl Into<Body>,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("x-auth-token", token);
        if let Some(ct) = ct {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        send(&self.router, req.body(body.into()).unwrap()).await
    }

    async fn create(&self) -> Reply {
        let body = json!({"disk_format": "raw", "container_format": "bare"}).to_string();
        self.call(
            &self.member,
            "POST",
            "/v2/images",
            Some("application/json"),
            body,
        )
        .await
    }

    async fn create_id(&self) -> String {
        let r = self.create().await;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        r.json()["id"].as_str().unwrap().to_owned()
    }

    async fn put(&self, id: &str, what: &str, data: Vec<u8>) -> Reply {
        self.call(
            &self.member,
            "PUT",
            &format!("/v2/images/{id}/{what}"),
            Some("application/octet-stream"),
            data,
        )
        .await
    }

    /// Sends `data` in 64 KiB pieces with no declared size, so a limit can only stop it while
    /// it streams.
    async fn put_streamed(&self, id: &str, what: &str, data: Vec<u8>) -> Reply {
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = data
            .chunks(64 << 10)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        let req = Request::builder()
            .method("PUT")
            .uri(format!("/v2/images/{id}/{what}"))
            .header("x-auth-token", &self.member)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from_stream(futures::stream::iter(chunks)))
            .unwrap();
        send(&self.router, req).await
    }

    async fn show(&self, id: &str) -> Value {
        let r = self
            .call(&self.member, "GET", &format!("/v2/images/{id}"), None, "")
            .await;
        assert_eq!(r.status, StatusCode::OK);
        r.json()
    }

    async fn import(&self, token: &str, id: &str, body: Value) -> Reply {
        self.call(
            token,
            "POST",
            &format!("/v2/images/{id}/import"),
            Some("application/json"),
            body.to_string(),
        )
        .await
    }

    /// `(limit, usage)` of `resource` in the member project's `/v2/info/usage`.
    async fn usage(&self, resource: &str) -> (i64, i64) {
        let r = self
            .call(&self.member, "GET", "/v2/info/usage", None, "")
            .await;
        assert_eq!(r.status, StatusCode::OK);
        let entry = &r.json()["usage"][resource];
        (
            entry["limit"].as_i64().unwrap(),
            entry["usage"].as_i64().unwrap(),
        )
    }

    async fn set_limit(&self, resource: R, limit: Option<Limit>) {
        self.app
            .images
            .set_project_limit(&self.project, resource, limit)
            .await
            .unwrap();
    }

    /// Waits for the image's import tasks to finish; returns the newest and the image.
    async fn finished_task(&self, id: &str) -> (Value, Value) {
        for _ in 0..500 {
            let r = self
                .call(
                    &self.admin,
                    "GET",
                    &format!("/v2/images/{id}/tasks"),
                    None,
                    "",
                )
                .await;
            let tasks = r.json()["tasks"].as_array().unwrap().clone();
            if let Some(task) = tasks.first()
                && (task["status"] == "success" || task["status"] == "failure")
            {
                return (task.clone(), self.show(id).await);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the import of {id} did not finish");
    }

    /// Blob keys of image data and of staged data (both in the default store).
    async fn blobs(&self) -> (Vec<String>, Vec<String>) {
        let list = self.app.images.stores().staging().list().await.unwrap();
        let mut keys: Vec<String> = list.iter().map(|b| b.key.as_str().to_owned()).collect();
        keys.sort();
        keys.into_iter().partition(|k| !k.starts_with("staging/"))
    }
}

#[tokio::test]
async fn usage_reports_every_limit_unlimited_by_default() {
    let n = node(Config::default()).await;
    let r = n.call(&n.member, "GET", "/v2/info/usage", None, "").await;
    assert_eq!(
        r.json(),
        json!({"usage": {
            "image_size_total": {"limit": -1, "usage": 0},
            "image_stage_total": {"limit": -1, "usage": 0},
            "image_count_total": {"limit": -1, "usage": 0},
            "image_count_uploading": {"limit": -1, "usage": 0},
        }})
    );
}

#[tokio::test]
async fn image_count_total_stops_create_at_the_limit() {
    let mut config = Config::default();
    config.limits.image_count_total = Some(2);
    let n = node(config).await;
    let first = n.create_id().await;
    n.create_id().await;
    assert_eq!(n.usage("image_count_total").await, (2, 2));
    let refused = n.create().await;
    assert_over(&refused, "image_count_total");
    assert!(
        String::from_utf8_lossy(&refused.body).contains("current usage 2 and delta 1"),
        "{refused:?}"
    );
    assert_eq!(
        n.usage("image_count_total").await,
        (2, 2),
        "nothing created"
    );
    // Deleting frees a place.
    let r = n
        .call(
            &n.member,
            "DELETE",
            &format!("/v2/images/{first}"),
            None,
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    n.create_id().await;
    assert_over(&n.create().await, "image_count_total");
    // The project's own limit replaces the default, both ways.
    n.set_limit(R::ImageCountTotal, Some(Limit::At(3))).await;
    assert_eq!(n.usage("image_count_total").await, (3, 2));
    n.create_id().await;
    assert_over(&n.create().await, "image_count_total");
    n.set_limit(R::ImageCountTotal, Some(Limit::Unlimited))
        .await;
    n.create_id().await;
    assert_eq!(n.usage("image_count_total").await, (-1, 4));
    n.set_limit(R::ImageCountTotal, None).await;
    assert_eq!(n.usage("image_count_total").await, (2, 4));
    assert_over(&n.create().await, "image_count_total");
}

#[tokio::test]
async fn image_size_total_checked_at_upload_and_while_streaming() {
    let mut config = Config::default();
    config.limits.image_size_total = Some(1);
    let n = node(config).await;
    let a = n.create_id().await;
    // Exactly the limit fits.
    assert_eq!(
        n.put(&a, "file", vec![1u8; MIB]).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(n.usage("image_size_total").await, (1, 1));
    // Usage equals the limit, so an upload may start, but its first byte is one too many.
    let b = n.create_id().await;
    let (data_before, _) = n.blobs().await;
    let r = n.put_streamed(&b, "file", vec![2u8; 3 * (64 << 10)]).await;
    assert_over(&r, "image_size_total");
    let shown = n.show(&b).await;
    assert_eq!(
        (shown["status"].clone(), shown["size"].clone()),
        (json!("queued"), Value::Null)
    );
    assert_eq!(
        n.blobs().await.0,
        data_before,
        "the cut-off upload left no data"
    );
    // A declared size over the budget is refused before any data is written.
    let req = Request::put(format!("/v2/images/{b}/file"))
        .header("x-auth-token", &n.member)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("x-openstack-image-size", "10")
        .body(Body::from(vec![2u8; 10]))
        .unwrap();
    let r = send(&n.router, req).await;
    assert_over(&r, "image_size_total");
    // A larger own limit: the second image fits, and usage counts both.
    n.set_limit(R::ImageSizeTotal, Some(Limit::At(3))).await;
    assert_eq!(
        n.put(&b, "file", vec![2u8; 2 * MIB]).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(n.usage("image_size_total").await, (3, 3));
    // Lowered below the usage: the next upload is refused before it starts.
    n.set_limit(R::ImageSizeTotal, Some(Limit::At(2))).await;
    let c = n.create_id().await;
    let r = n.put(&c, "file", vec![3u8; 1]).await;
    assert_over(&r, "image_size_total");
    assert!(
        String::from_utf8_lossy(&r.body).contains("over limit of 2 due to current usage 3"),
        "{r:?}"
    );
    assert_eq!(n.show(&c).await["status"], "queued");
    // The import call is refused the same way (Glance checks it first).
    let r = n
        .import(
            &n.member,
            &c,
            json!({"method": {"name": "web-download", "uri": "http://127.0.0.1:1/x"}}),
        )
        .await;
    assert_over(&r, "image_size_total");
}

#[tokio::test]
async fn image_size_total_counts_every_store_holding_the_image() {
    let mut config = two_stores();
    config.limits.image_size_total = Some(3);
    let n = node(config).await;
    let a = n.create_id().await;
    assert_eq!(
        n.put(&a, "file", vec![1u8; MIB + 5]).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(n.usage("image_size_total").await, (3, 1));
    let r = n
        .import(
            &n.admin,
            &a,
            json!({"method": {"name": "copy-image"}, "stores": ["fs2"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    let (task, image) = n.finished_task(&a).await;
    assert_eq!(task["status"], "success", "{task}");
    assert_eq!(image["stores"], "fs,fs2");
    // 2 × (1 MiB + 5 bytes), in whole MiB.
    assert_eq!(n.usage("image_size_total").await, (3, 2));
    // One more MiB is exactly the limit; a byte past it is not.
    let b = n.create_id().await;
    let r = n.put_streamed(&b, "file", vec![2u8; MIB]).await;
    assert_over(&r, "image_size_total");
    assert_eq!(
        n.put(&b, "file", vec![2u8; MIB - 10]).await.status,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn image_stage_total_checked_at_stage_and_while_streaming() {
    let mut config = Config::default();
    config.limits.image_stage_total = Some(1);
    let n = node(config).await;
    let a = n.create_id().await;
    assert_eq!(
        n.put(&a, "stage", vec![1u8; MIB]).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(n.usage("image_stage_total").await, (1, 1));
    // The staged data does not count as stored data.
    assert_eq!(n.usage("image_size_total").await, (-1, 0));
    let b = n.create_id().await;
    let r = n.put_streamed(&b, "stage", vec![2u8; 2 * (64 << 10)]).await;
    assert_over(&r, "image_stage_total");
    assert_eq!(n.show(&b).await["status"], "queued");
    let (_, staged) = n.blobs().await;
    assert_eq!(
        staged,
        vec![format!("staging/{a}")],
        "only a's data is staged"
    );
    // Over the limit already: refused before the stream starts.
    n.set_limit(R::ImageStageTotal, Some(Limit::At(0))).await;
    let r = n.put(&b, "stage", vec![2u8; 1]).await;
    assert_over(&r, "image_stage_total");
    assert!(
        String::from_utf8_lossy(&r.body)
            .contains("over limit of 0 due to current usage 1 and delta 0"),
        "{r:?}"
    );
    // Importing the staged data frees the staging space.
    n.set_limit(R::ImageStageTotal, None).await;
    let r = n
        .import(&n.member, &a, json!({"method": {"name": "glance-direct"}}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    let (task, image) = n.finished_task(&a).await;
    assert_eq!(
        (task["status"].clone(), image["status"].clone()),
        (json!("success"), json!("active"))
    );
    assert_eq!(n.usage("image_stage_total").await, (1, 0));
    assert_eq!(n.usage("image_size_total").await, (-1, 1));
    assert_eq!(
        n.put(&b, "stage", vec![2u8; MIB]).await.status,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn image_count_uploading_counts_stages_and_uploads_in_progress() {
    let mut config = Config::default();
    config.limits.image_count_uploading = Some(1);
    let n = node(config).await;
    let a = n.create_id().await;
    let b = n.create_id().await;
    // A staged image is an upload in progress until it is imported.
    assert_eq!(
        n.put(&a, "stage", vec![1u8; 1000]).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(n.usage("image_count_uploading").await, (1, 1));
    let r = n.put(&b, "file", vec![2u8; 1000]).await;
    assert_over(&r, "image_count_uploading");
    assert!(
        String::from_utf8_lossy(&r.body).contains("current usage 2 and delta 0"),
        "{r:?}"
    );
    assert_eq!(n.show(&b).await["status"], "queued");
    assert_over(
        &n.put(&b, "stage", vec![2u8; 1000]).await,
        "image_count_uploading",
    );
    assert_eq!(n.show(&b).await["status"], "queued");
    assert_eq!(n.blobs().await.1, vec![format!("staging/{a}")]);
    assert_eq!(n.usage("image_count_uploading").await, (1, 1));
    // The project's own limit lets a second one through.
    n.set_limit(R::ImageCountUploading, Some(Limit::At(2)))
        .await;
    assert_eq!(
        n.put(&b, "file", vec![2u8; 1000]).await.status,
        StatusCode::NO_CONTENT
    );
    // An upload of a project with a limit of 0 is refused and the image stays queued.
    n.set_limit(R::ImageCountUploading, Some(Limit::At(0)))
        .await;
    let c = n.create_id().await;
    assert_over(
        &n.put(&c, "file", vec![3u8; 10]).await,
        "image_count_uploading",
    );
    assert_eq!(n.show(&c).await["status"], "queued");
}

#[tokio::test]
async fn glance_direct_import_over_image_size_total_fails_its_task() {
    let mut config = Config::default();
    config.limits.image_size_total = Some(1);
    let n = node(config).await;
    let a = n.create_id().await;
    assert_eq!(
        n.put(&a, "stage", vec![1u8; 2 * MIB]).await.status,
        StatusCode::NO_CONTENT
    );
    // The call passes (nothing is stored yet); the task adds the 2 staged MiB and fails.
    let r = n
        .import(&n.member, &a, json!({"method": {"name": "glance-direct"}}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    let (task, image) = n.finished_task(&a).await;
    assert_eq!(task["status"], "failure");
    let message = task["message"].as_str().unwrap();
    assert!(
        message.contains("image_size_total is over limit of 1 due to current usage 0 and delta 2"),
        "{message}"
    );
    assert_eq!(image["status"], "queued");
    assert_eq!(image["os_glance_importing_to_stores"], "");
    assert!(image.get("os_glance_import_task").is_none());
    assert_eq!(n.blobs().await, (vec![], vec![]), "no data left anywhere");
    assert_eq!(n.usage("image_stage_total").await, (-1, 0));
    assert_eq!(n.usage("image_count_uploading").await, (-1, 0));
}

#[tokio::test]
async fn web_download_over_count_uploading_or_stage_total_fails_its_task() {
    let addr = file_server(vec![7u8; 4096]).await;
    let mut config = web_config(addr);
    config.limits.image_count_uploading = Some(1);
    let n = node(config).await;
    let uri = format!("http://{addr}/image");
    let web = json!({"method": {"name": "web-download", "uri": uri}});
    // Within the limit: the import counts itself and succeeds.
    let a = n.create_id().await;
    assert_eq!(
        n.import(&n.member, &a, web.clone()).await.status,
        StatusCode::ACCEPTED
    );
    let (task, image) = n.finished_task(&a).await;
    assert_eq!(
        (task["status"].clone(), image["status"].clone()),
        (json!("success"), json!("active"))
    );
    // A staged image holds the one place: the web-download task is refused.
    let staged = n.create_id().await;
    assert_eq!(
        n.put(&staged, "stage", vec![1u8; 2 * MIB]).await.status,
        StatusCode::NO_CONTENT
    );
    let b = n.create_id().await;
    assert_eq!(
        n.import(&n.member, &b, web.clone()).await.status,
        StatusCode::ACCEPTED
    );
    let (task, image) = n.finished_task(&b).await;
    assert_eq!(task["status"], "failure");
    assert!(
        task["message"]
            .as_str()
            .unwrap()
            .contains("image_count_uploading is over limit of 1"),
        "{task}"
    );
    assert_eq!(image["status"], "queued");
    assert!(image["size"].is_null());
    // With room for uploads, the staging space is what is short: 2 MiB staged, limit 1.
    n.set_limit(R::ImageCountUploading, Some(Limit::Unlimited))
        .await;
    n.set_limit(R::ImageStageTotal, Some(Limit::At(1))).await;
    assert_eq!(
        n.import(&n.member, &b, web.clone()).await.status,
        StatusCode::ACCEPTED
    );
    let (task, image) = n.finished_task(&b).await;
    assert_eq!(task["status"], "failure");
    assert!(
        task["message"]
            .as_str()
            .unwrap()
            .contains("image_stage_total is over limit of 1 due to current usage 2"),
        "{task}"
    );
    assert_eq!(image["status"], "queued");
    n.set_limit(R::ImageStageTotal, Some(Limit::At(2))).await;
    assert_eq!(
        n.import(&n.member, &b, web).await.status,
        StatusCode::ACCEPTED
    );
    let (task, image) = n.finished_task(&b).await;
    assert_eq!(
        (task["status"].clone(), image["size"].clone()),
        (json!("success"), json!(4096))
    );
}

#[tokio::test]
async fn copy_image_counts_as_staging_and_as_an_upload() {
    let n = node(two_stores()).await;
    let a = n.create_id().await;
    assert_eq!(
        n.put(&a, "file", vec![1u8; 2 * MIB]).await.status,
        StatusCode::NO_CONTENT
    );
    let copy = json!({"method": {"name": "copy-image"}, "stores": ["fs2"]});
    // The copy of 2 MiB needs 2 MiB of staging space.
    n.set_limit(R::ImageStageTotal, Some(Limit::At(1))).await;
    assert_eq!(
        n.import(&n.admin, &a, copy.clone()).await.status,
        StatusCode::ACCEPTED
    );
    let (task, image) = n.finished_task(&a).await;
    assert_eq!(task["status"], "failure");
    assert!(
        task["message"]
            .as_str()
            .unwrap()
            .contains("image_stage_total is over limit of 1 due to current usage 2 and delta 0"),
        "{task}"
    );
    assert_eq!(
        (image["status"].clone(), image["stores"].clone()),
        (json!("active"), json!("fs"))
    );
    assert_eq!(image["os_glance_importing_to_stores"], "");
    // The copy is an upload in progress.
    n.set_limit(R::ImageStageTotal, Some(Limit::At(2))).await;
    n.set_limit(R::ImageCountUploading, Some(Limit::At(0)))
        .await;
    assert_eq!(
        n.import(&n.admin, &a, copy.clone()).await.status,
        StatusCode::ACCEPTED
    );
    let (task, image) = n.finished_task(&a).await;
    assert_eq!(task["status"], "failure");
    assert!(
        task["message"]
            .as_str()
            .unwrap()
            .contains("image_count_uploading is over limit of 0"),
        "{task}"
    );
    assert_eq!(image["stores"], "fs");
    assert_eq!(n.usage("image_count_uploading").await, (0, 0));
    // At both limits exactly, the copy goes through.
    n.set_limit(R::ImageCountUploading, Some(Limit::At(1)))
        .await;
    assert_eq!(
        n.import(&n.admin, &a, copy).await.status,
        StatusCode::ACCEPTED
    );
    let (task, image) = n.finished_task(&a).await;
    assert_eq!(
        (task["status"].clone(), image["stores"].clone()),
        (json!("success"), json!("fs,fs2"))
    );
    assert_eq!(n.usage("image_size_total").await, (-1, 4));
    assert_eq!(n.usage("image_stage_total").await, (2, 0));
}
