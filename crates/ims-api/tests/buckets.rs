//! IMS bucket import and export against the real S3 server `scripts/test.sh` starts (Garage):
//! a qcow2 object becomes an active image through `create_image` with `image_url`, and the image
//! is exported to the bucket as VMDK, VHD and QCOW2 files that `qemu-img compare` finds equal to
//! the source; a declared format that does not match the object's content fails the job.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures::StreamExt;
use ims_core::{App, Config};
use ims_domain::Role;
use serde_json::{Value, json};

use common::{Reply, issue_token, named, send};

struct Client {
    router: Router,
    token: String,
    project: String,
}

impl Client {
    async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("x-auth-token", &self.token)
            .header("content-type", "application/json")
            .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
            .unwrap();
        send(&self.router, req).await
    }

    /// `create_image` from a bucket object; returns the job once it has ended.
    async fn import(&self, name: &str, image_url: &str) -> Value {
        let body = json!({"name": name, "image_url": image_url, "min_disk": 40,
                          "os_version": "CentOS 7.9 64bit"});
        let reply = self
            .call("POST", "/v2/cloudimages/action", Some(body))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        self.wait_job(reply.json()["job_id"].as_str().unwrap())
            .await
    }

    /// Polls the job until it ends; returns its final JSON.
    async fn wait_job(&self, job_id: &str) -> Value {
        let uri = format!("/v1/{}/jobs/{job_id}", self.project);
        for _ in 0..600 {
            let reply = self.call("GET", &uri, None).await;
            assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
            let job = reply.json();
            if job["status"] == "SUCCESS" || job["status"] == "FAIL" {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("job {job_id} did not end within 60 s");
    }
}

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 48 MiB raw disk with data, zeros and a hole, and its qcow2 conversion.
fn make_source(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let raw = dir.join("source.raw");
    let mut data = vec![0u8; 48 << 20];
    for (i, chunk) in data.chunks_mut(4096).enumerate() {
        if i % 3 != 0 {
            let byte = (i % 251) as u8;
            chunk
                .iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = byte ^ (j as u8));
        }
    }
    data[(40 << 20)..].fill(0);
    std::fs::write(&raw, &data).unwrap();
    let qcow2 = dir.join("source.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        qcow2.to_str().unwrap(),
    ]);
    (raw, qcow2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_import_and_export_round_trip_through_garage() {
    let Some((connection, bucket)) = ims_blob::conformance::s3_test_server() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.data_dir = dir.path().join("data");
    config.buckets = Some(connection);
    let app = Arc::new(App::in_memory(config).await);
    app.identity.bootstrap(Some("adminpw")).await.unwrap();
    let project = app.identity.create_project("team").await.unwrap();
    app.identity.create_user("alice", "pw").await.unwrap();
    app.identity
        .assign_role(&named("alice"), &named("team"), Role::Member, true)
        .await
        .unwrap();
    let _workers = app.start_workers("bucket-test");
    let router = ims_api::router(app.clone());
    let token = issue_token(&router, "alice", "pw", "team").await;
    let client = Client {
        router,
        token,
        project: project.id,
    };
    let buckets = app.buckets.clone().expect("buckets configured");

    let (raw, qcow2) = make_source(dir.path());
    let prefix = format!("bucket-test-{}", uuid::Uuid::new_v4().simple());
    let object = format!("{prefix}/disk.qcow2");
    let bytes = bytes::Bytes::from(std::fs::read(&qcow2).unwrap());
    let stream = futures::stream::iter([Ok(bytes)]).boxed();
    buckets
        .put_object_stream(&bucket, &object, stream)
        .await
        .unwrap();

    // Import: create_image from the bucket object.
    let job = client
        .import("from-bucket", &format!("{bucket}:{object}"))
        .await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let image_id = job["entities"]["image_id"].as_str().unwrap().to_string();
    let image = client
        .call("GET", &format!("/v2/images/{image_id}"), None)
        .await
        .json();
    assert_eq!(image["status"], "active", "{image}");
    assert_eq!(image["disk_format"], "qcow2", "{image}");
    assert_eq!(
        image["size"],
        std::fs::metadata(&qcow2).unwrap().len(),
        "{image}"
    );
    assert_eq!(image["virtual_size"], 48u64 << 20, "{image}");

    // Export to each format; the downloaded file has the source's content.
    for (format, qemu_format) in [("vmdk", "vmdk"), ("vhd", "vpc"), ("qcow2", "qcow2")] {
        let out_object = format!("{prefix}/out.{format}");
        let reply = client
            .call(
                "POST",
                &format!("/v1/cloudimages/{image_id}/file"),
                Some(
                    json!({"bucket_url": format!("{bucket}:{out_object}"), "file_format": format}),
                ),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{format}: {:?}", reply.body);
        let job = client
            .wait_job(reply.json()["job_id"].as_str().unwrap())
            .await;
        assert_eq!(job["status"], "SUCCESS", "{format}: {job}");
        let mut stream = buckets
            .open_object(&bucket, &out_object, None)
            .await
            .unwrap();
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            data.extend_from_slice(&chunk.unwrap());
        }
        let file = dir.path().join(format!("exported.{format}"));
        std::fs::write(&file, &data).unwrap();
        if qemu_format != "vpc" {
            // qemu-img has no check for VHD.
            qemu_img(&["check", "-f", qemu_format, file.to_str().unwrap()]);
        }
        qemu_img(&[
            "compare",
            "-f",
            "raw",
            "-F",
            qemu_format,
            raw.to_str().unwrap(),
            file.to_str().unwrap(),
        ]);
    }

    // A declared format that is not the content (VHD data named .qcow2): the job fails and
    // leaves no image.
    let vhd = bytes::Bytes::from(std::fs::read(dir.path().join("exported.vhd")).unwrap());
    let disguised = format!("{prefix}/disguised.qcow2");
    let stream = futures::stream::iter([Ok(vhd)]).boxed();
    buckets
        .put_object_stream(&bucket, &disguised, stream)
        .await
        .unwrap();
    let job = client
        .import("lying", &format!("{bucket}:{disguised}"))
        .await;
    assert_eq!(job["status"], "FAIL", "{job}");
    let listed = client
        .call("GET", "/v2/cloudimages?name=lying", None)
        .await
        .json();
    assert_eq!(listed["images"], json!([]), "{listed}");
}
