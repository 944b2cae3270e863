//! IMS bucket import and export against the real S3 server `scripts/test.sh` starts (Garage):
//! a qcow2 object becomes an active image through `create_image` with `image_url`, and the image
//! is exported to the bucket as VMDK, VHD and QCOW2 files that `qemu-img compare` finds equal to
//! the source, and as ZVHD and ZVHD2 files (which qemu-img cannot read) whose content the
//! independent `ims-diskfmt/tests/zvhd_check.py` and this crate's reader find equal to it; a
//! declared format that does not match the object's content fails the job. An export whose node
//! dies mid-way leaves no object and no work file, and finishes on the next node. An export whose
//! process is SIGKILLed mid-upload (this test binary, run again as a node, killed while its
//! multipart upload has parts), or that fails for good mid-upload, leaves zero incomplete
//! multipart uploads in the bucket (S3's ListMultipartUploads, signed here with SigV4).

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures::StreamExt;
use ims_blob::buckets::Buckets;
use ims_core::{App, Config};
use ims_diskfmt::Format;
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

    /// `export_image` of `image_id` to `bucket_url` as `format`; returns the job once it ended.
    async fn export(&self, image_id: &str, bucket_url: &str, format: &str) -> Value {
        let job_id = self.start_export(image_id, bucket_url, format).await;
        self.wait_job(&job_id).await
    }

    /// Submits an `export_image` job; returns its id.
    async fn start_export(&self, image_id: &str, bucket_url: &str, format: &str) -> String {
        let reply = self
            .call(
                "POST",
                &format!("/v1/cloudimages/{image_id}/file"),
                Some(json!({"bucket_url": bucket_url, "file_format": format})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{format}: {:?}", reply.body);
        reply.json()["job_id"].as_str().unwrap().to_string()
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

/// The whole object.
async fn read_object(buckets: &Buckets, bucket: &str, object: &str) -> Vec<u8> {
    let mut stream = buckets.open_object(bucket, object, None).await.unwrap();
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        data.extend_from_slice(&chunk.unwrap());
    }
    data
}

/// `file` is a `format` image (by content) whose virtual disk is `raw`: read by this crate's
/// reader, and for ZVHD/ZVHD2 also by the independent `zvhd_check.py` (SHA-256 of the disk).
fn assert_same_content(raw: &Path, file: &Path, format: Format) {
    let source = std::fs::read(raw).unwrap();
    let image = Arc::new(std::fs::File::open(file).unwrap());
    let found = ims_diskfmt::probe::probe(&*image).unwrap();
    assert_eq!(found.format, format, "{}", file.display());
    let disk = ims_diskfmt::disk::open(image, format, &Default::default()).unwrap();
    // ZVHD rounds its current size up; the original size is the source's.
    assert!(disk.virtual_size() >= source.len() as u64, "{format}");
    let mut content = vec![0u8; source.len()];
    disk.read_at(0, &mut content).unwrap();
    assert!(
        content == source,
        "{format}: the exported disk differs from the source"
    );
    if matches!(format, Format::Zvhd | Format::Zvhd2) {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../ims-diskfmt/tests/zvhd_check.py");
        let out = Command::new("python3")
            .arg(script)
            .arg(file)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "zvhd_check.py {format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let digest = hex_sha256(&source);
        let printed = String::from_utf8(out.stdout).unwrap();
        assert!(
            printed.contains(&digest),
            "zvhd_check.py {format}: {printed} (want {digest})"
        );
    }
}

fn hex_sha256(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
    let config = Config {
        data_dir: dir.path().join("data"),
        buckets: Some(connection),
        ..Config::default()
    };
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
        let job = client
            .export(&image_id, &format!("{bucket}:{out_object}"), format)
            .await;
        assert_eq!(job["status"], "SUCCESS", "{format}: {job}");
        let data = read_object(&buckets, &bucket, &out_object).await;
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
    for format in [Format::Zvhd, Format::Zvhd2] {
        let out_object = format!("{prefix}/out.{format}");
        let job = client
            .export(
                &image_id,
                &format!("{bucket}:{out_object}"),
                format.as_str(),
            )
            .await;
        assert_eq!(job["status"], "SUCCESS", "{format}: {job}");
        let file = dir.path().join(format!("exported.{format}"));
        std::fs::write(&file, read_object(&buckets, &bucket, &out_object).await).unwrap();
        assert_same_content(&raw, &file, format);
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

/// Runner settings of the restart test: a lease short enough that the next node claims the dead
/// one's job within seconds.
fn fast_runner(node: &str) -> ims_jobs::runner::RunnerConfig {
    ims_jobs::runner::RunnerConfig {
        lease: Duration::from_secs(2),
        poll_interval: Duration::from_millis(200),
        retry_delay: Duration::from_millis(200),
        ..ims_jobs::runner::RunnerConfig::new(node)
    }
}

/// Opens the node's app on `config` (SQLite and a local store in its data dir) with user alice
/// in project team; returns the app and a client with alice's token.
async fn open_node(config: &Config, first: bool) -> (Arc<App>, Client) {
    let app = Arc::new(App::open(config.clone()).await.unwrap());
    app.identity.bootstrap(Some("adminpw")).await.unwrap();
    if first {
        app.identity.create_project("team").await.unwrap();
        app.identity.create_user("alice", "pw").await.unwrap();
        app.identity
            .assign_role(&named("alice"), &named("team"), Role::Member, true)
            .await
            .unwrap();
    }
    let project = app
        .identity
        .find_project(&named("team"))
        .await
        .unwrap()
        .unwrap();
    let router = ims_api::router(app.clone());
    let token = issue_token(&router, "alice", "pw", "team").await;
    let client = Client {
        router,
        token,
        project: project.id,
    };
    (app, client)
}

/// The `ims-work-*` files in the work directory.
fn work_files(work_dir: &Path) -> Vec<String> {
    std::fs::read_dir(work_dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("ims-work-"))
                .collect()
        })
        .unwrap_or_default()
}

/// `len` bytes (a multiple of 4) of varied, poorly compressible data: exports of it take a while.
fn varied_data(len: u32) -> Vec<u8> {
    (0..len / 4)
        .flat_map(|i| (i.wrapping_mul(2_654_435_761) >> (i % 7)).to_le_bytes())
        .collect()
}

/// A node dies in the middle of an export (the job has saved progress, the object is not yet
/// complete): the bucket holds no object, the next start removes the work files it left, and the
/// next node claims the job once the lease expired and writes the whole object, equal to the
/// source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_cut_by_a_restart_resumes_and_leaves_no_garbage() {
    let Some((connection, bucket)) = ims_blob::conformance::s3_test_server() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().join("data"),
        buckets: Some(connection),
        ..Config::default()
    };
    let work_dir = config.work_dir();

    // A 128 MiB raw disk of varied data: converting it to ZVHD2 (zstd) takes a while.
    let raw = dir.path().join("big.raw");
    let data = varied_data(128 << 20);
    std::fs::write(&raw, &data).unwrap();

    let (app, client) = open_node(&config, true).await;
    let created = client
        .call(
            "POST",
            "/v2/images",
            Some(
                json!({"name": "big", "disk_format": "raw", "container_format": "bare",
                        "__os_version": "CentOS 7.9 64bit"}),
            ),
        )
        .await;
    let image_id = created.json()["id"].as_str().unwrap().to_string();
    let put = Request::put(format!("/v2/images/{image_id}/file"))
        .header("x-auth-token", &client.token)
        .header("content-type", "application/octet-stream")
        .body(Body::from(data))
        .unwrap();
    assert_eq!(
        send(&client.router, put).await.status,
        StatusCode::NO_CONTENT
    );

    let object = format!("restart-test-{}/big.zvhd2", uuid::Uuid::new_v4().simple());
    let jobs = app.cloud_images.jobs().clone();
    let first = app.runner(fast_runner("node-a")).start();
    let job_id = client
        .start_export(&image_id, &format!("{bucket}:{object}"), "zvhd2")
        .await;
    let id = uuid::Uuid::parse_str(&job_id).unwrap();
    for _ in 0..6000 {
        let job = jobs.get(id).await.unwrap().unwrap();
        if job.state.as_ref().is_some_and(|s| s["percent"].is_number()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.abort();
    let cut = jobs.get(id).await.unwrap().unwrap();
    assert!(
        !cut.status.is_finished() && cut.state.is_some(),
        "the export must be cut mid-way: {cut:?}"
    );
    let buckets = app.buckets.clone().unwrap();
    assert_eq!(
        buckets.object_size(&bucket, &object).await.unwrap(),
        None,
        "no partial object"
    );
    // What a killed process leaves in the work directory (an aborted task drops its own files).
    std::fs::create_dir_all(&work_dir).unwrap();
    std::fs::write(work_dir.join("ims-work-left-by-a-crash"), b"partial").unwrap();
    drop((client, app, jobs));

    let (app, client) = open_node(&config, false).await;
    assert_eq!(
        work_files(&work_dir),
        Vec::<String>::new(),
        "the start-up sweep"
    );
    let _second = app.runner(fast_runner("node-b")).start();
    let job = client.wait_job(&job_id).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let done = app.cloud_images.jobs().get(id).await.unwrap().unwrap();
    assert_eq!(done.attempts, 2, "{done:?}");
    let file = dir.path().join("resumed.zvhd2");
    std::fs::write(&file, read_object(&buckets, &bucket, &object).await).unwrap();
    assert_same_content(&raw, &file, Format::Zvhd2);
    assert_eq!(
        work_files(&work_dir),
        Vec::<String>::new(),
        "no work file left"
    );
}

/// S3 requests `object_store` does not make (ListMultipartUploads, ListParts), signed with AWS
/// SigV4 (header form, empty payload) for the test server's key.
struct S3Inspector {
    /// `http://host:port`, no trailing `/`.
    endpoint: String,
    host: String,
    region: String,
    access_key: String,
    secret_key: String,
}

/// S3's URI encoding (RFC 3986 unreserved characters kept), `/` kept too when `keep_slash`.
fn s3_encode(text: &str, keep_slash: bool) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b'/' if keep_slash => "/".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The texts of every `<tag>…</tag>` in `xml`.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(v, _)| v.to_string()))
        .collect()
}

impl S3Inspector {
    fn new(connection: &ims_blob::s3conf::S3Connection) -> S3Inspector {
        let endpoint = connection
            .endpoint
            .clone()
            .unwrap()
            .trim_end_matches('/')
            .to_string();
        let host = endpoint.split_once("://").unwrap().1.to_string();
        S3Inspector {
            endpoint,
            host,
            region: connection.region.clone().unwrap(),
            access_key: connection.access_key_id.clone().unwrap(),
            secret_key: connection
                .secret_access_key
                .as_ref()
                .unwrap()
                .expose()
                .to_string(),
        }
    }

    /// A signed `GET path?query`; returns the body of a 2xx answer.
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> String {
        let amz_date = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .unwrap();
        let day = &amz_date[..8];
        let mut pairs: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{}={}", s3_encode(k, false), s3_encode(v, false)))
            .collect();
        pairs.sort();
        let query = pairs.join("&");
        let payload_hash = hex_sha256(b"");
        let signed_headers = "host;x-amz-content-sha256;x-amz-date";
        let canonical = format!(
            "GET\n{path}\n{query}\nhost:{}\nx-amz-content-sha256:{payload_hash}\nx-amz-date:{amz_date}\n\n{signed_headers}\n{payload_hash}",
            self.host
        );
        let scope = format!("{day}/{}/s3/aws4_request", self.region);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex_sha256(canonical.as_bytes())
        );
        let mut key = format!("AWS4{}", self.secret_key).into_bytes();
        for part in [day, &self.region, "s3", "aws4_request"] {
            key = hmac_sha256(&key, part.as_bytes());
        }
        let signature = hex::encode(hmac_sha256(&key, to_sign.as_bytes()));
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            self.access_key
        );
        let reply = reqwest::Client::new()
            .get(format!("{}{path}?{query}", self.endpoint))
            .header("x-amz-date", &amz_date)
            .header("x-amz-content-sha256", &payload_hash)
            .header("authorization", authorization)
            .send()
            .await
            .unwrap();
        let status = reply.status();
        let body = reply.text().await.unwrap();
        assert!(status.is_success(), "GET {path}?{query}: {status} {body}");
        body
    }

    /// The ids of the incomplete multipart uploads of keys under `prefix` (ListMultipartUploads).
    async fn incomplete_uploads(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let xml = self
            .get(
                &format!("/{bucket}"),
                &[("uploads", ""), ("prefix", prefix)],
            )
            .await;
        assert!(
            xml_values(&xml, "IsTruncated") != ["true"],
            "more uploads than one listing holds: {xml}"
        );
        xml_values(&xml, "UploadId")
    }

    /// How many parts the upload holds so far (ListParts).
    async fn part_count(&self, bucket: &str, key: &str, upload_id: &str) -> usize {
        let path = format!("/{bucket}/{}", s3_encode(key, true));
        let xml = self.get(&path, &[("uploadId", upload_id)]).await;
        xml_values(&xml, "PartNumber").len()
    }
}

/// A TCP relay to `upstream` that forwards what clients send at most `bytes_per_sec` (all
/// connections together), so an upload through it takes seconds and can be cut mid-way.
async fn throttled_relay(upstream: String, bytes_per_sec: f64) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let next_send = Arc::new(tokio::sync::Mutex::new(tokio::time::Instant::now()));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (upstream, next_send) = (upstream.clone(), next_send.clone());
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let answers = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = match client_read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let at = {
                        let mut next = next_send.lock().await;
                        let at = (*next).max(tokio::time::Instant::now());
                        *next = at + Duration::from_secs_f64(n as f64 / bytes_per_sec);
                        at
                    };
                    tokio::time::sleep_until(at).await;
                    if server_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = server_write.shutdown().await;
                let _ = answers.await;
            });
        }
    });
    addr
}

/// Environment of [`export_node_process`]: the node's data directory…
const NODE_DATA_DIR_ENV: &str = "IMS_TEST_EXPORT_NODE_DATA_DIR";
/// …and the S3 endpoint it reaches the buckets through.
const NODE_S3_ENDPOINT_ENV: &str = "IMS_TEST_EXPORT_NODE_S3_ENDPOINT";

/// A child process, SIGKILLed when dropped (so a failing test leaves no node running).
struct NodeProcess(std::process::Child);

impl NodeProcess {
    /// Kills the process with SIGKILL, as the OOM killer or a power cut would: nothing of its
    /// own runs after this (no `Drop`, no abort of its uploads).
    fn sigkill(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Not a test of its own: the node process that
/// `a_sigkilled_export_resumes_and_leaves_no_incomplete_upload` starts (this test binary run
/// again with only this test) and kills. It runs export jobs on the data directory and S3
/// endpoint its environment names until it is killed; without them it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a node process started (and SIGKILLed) by a_sigkilled_export_resumes_and_leaves_no_incomplete_upload"]
async fn export_node_process() {
    let (Ok(data_dir), Ok(endpoint)) = (
        std::env::var(NODE_DATA_DIR_ENV),
        std::env::var(NODE_S3_ENDPOINT_ENV),
    ) else {
        eprintln!("{NODE_DATA_DIR_ENV} and {NODE_S3_ENDPOINT_ENV} are not set: nothing to run");
        return;
    };
    let (mut connection, _) =
        ims_blob::conformance::s3_test_server().expect("the S3 test server of the parent test");
    connection.endpoint = Some(endpoint);
    let config = Config {
        data_dir: data_dir.into(),
        buckets: Some(connection),
        ..Config::default()
    };
    let app = Arc::new(App::open(config).await.unwrap());
    let _runner = app.runner(fast_runner("killed-node")).start();
    eprintln!("export node running");
    std::future::pending::<()>().await;
}

/// Creates image `name` in alice's project from `data` (raw); returns its id.
async fn upload_raw_image(client: &Client, name: &str, data: Vec<u8>) -> String {
    let created = client
        .call(
            "POST",
            "/v2/images",
            Some(
                json!({"name": name, "disk_format": "raw", "container_format": "bare",
                        "__os_version": "CentOS 7.9 64bit"}),
            ),
        )
        .await;
    let image_id = created.json()["id"].as_str().unwrap().to_string();
    let put = Request::put(format!("/v2/images/{image_id}/file"))
        .header("x-auth-token", &client.token)
        .header("content-type", "application/octet-stream")
        .body(Body::from(data))
        .unwrap();
    assert_eq!(
        send(&client.router, put).await.status,
        StatusCode::NO_CONTENT
    );
    image_id
}

/// The process running an export is SIGKILLed while its multipart upload has parts in the
/// bucket: that upload is left behind (S3 keeps it, invisible, until someone aborts it). The
/// restarted node resumes the job, which aborts the upload its saved state names, writes the
/// whole object again, and leaves zero incomplete uploads; qemu-img reads the object as the
/// source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_export_resumes_and_leaves_no_incomplete_upload() {
    let Some((connection, bucket)) = ims_blob::conformance::s3_test_server() else {
        return;
    };
    let s3 = S3Inspector::new(&connection);
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().join("data"),
        buckets: Some(connection),
        ..Config::default()
    };
    let work_dir = config.work_dir();

    // 96 MiB of varied data: its qcow2 export is seven parts.
    let raw = dir.path().join("source.raw");
    let data = varied_data(96 << 20);
    std::fs::write(&raw, &data).unwrap();
    let (app, client) = open_node(&config, true).await;
    let image_id = upload_raw_image(&client, "to-export", data).await;
    let jobs = app.cloud_images.jobs().clone();

    // The node that will be killed reaches S3 through a relay passing 12 MiB/s, so its upload
    // takes about eight seconds.
    let relay = throttled_relay(s3.host.clone(), f64::from(12u32 << 20)).await;
    let mut node = NodeProcess(
        Command::new(std::env::current_exe().unwrap())
            .args(["export_node_process", "--exact", "--ignored", "--nocapture"])
            .env(NODE_DATA_DIR_ENV, &config.data_dir)
            .env(NODE_S3_ENDPOINT_ENV, format!("http://{relay}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("node.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let prefix = format!("sigkill-test-{}/", uuid::Uuid::new_v4().simple());
    let object = format!("{prefix}disk.qcow2");
    let job_id = client
        .start_export(&image_id, &format!("{bucket}:{object}"), "qcow2")
        .await;
    let id = uuid::Uuid::parse_str(&job_id).unwrap();
    let node_log = || std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default();

    // Wait for the recorded upload to hold a part, then kill the node.
    let mut upload_id = None;
    for _ in 0..1200 {
        let job = jobs.get(id).await.unwrap().unwrap();
        assert!(!job.status.is_finished(), "{job:?}\n{}", node_log());
        let recorded = job.state.as_ref().map_or(&Value::Null, |s| &s["upload"]);
        if let Some(upload) = recorded["upload_id"].as_str() {
            assert_eq!(recorded["bucket"], bucket.as_str(), "{recorded}");
            assert_eq!(recorded["object"], object.as_str(), "{recorded}");
            if s3.part_count(&bucket, &object, upload).await > 0 {
                upload_id = Some(upload.to_string());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let upload_id =
        upload_id.unwrap_or_else(|| panic!("no part of the upload within 60 s\n{}", node_log()));
    node.sigkill();
    let cut = jobs.get(id).await.unwrap().unwrap();
    assert!(!cut.status.is_finished(), "cut mid-upload: {cut:?}");
    assert_eq!(
        s3.incomplete_uploads(&bucket, &prefix).await,
        vec![upload_id.clone()],
        "the killed process left its upload"
    );
    assert_eq!(
        app.buckets
            .clone()
            .unwrap()
            .object_size(&bucket, &object)
            .await
            .unwrap(),
        None,
        "no partial object"
    );
    drop((client, app, jobs));

    // The node restarts (its start-up sweep removes the killed run's work files) and resumes.
    let (app, client) = open_node(&config, false).await;
    assert_eq!(work_files(&work_dir), Vec::<String>::new());
    let _runner = app.runner(fast_runner("restarted-node")).start();
    let job = client.wait_job(&job_id).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let done = app.cloud_images.jobs().get(id).await.unwrap().unwrap();
    assert_eq!(done.attempts, 2, "{done:?}");
    assert!(
        done.state
            .as_ref()
            .is_some_and(|s| s.get("upload").is_none()),
        "the finished upload is no longer recorded: {done:?}"
    );
    assert_eq!(
        s3.incomplete_uploads(&bucket, &prefix).await,
        Vec::<String>::new(),
        "no incomplete upload left in the bucket"
    );
    let buckets = app.buckets.clone().unwrap();
    let file = dir.path().join("exported.qcow2");
    std::fs::write(&file, read_object(&buckets, &bucket, &object).await).unwrap();
    qemu_img(&["check", "-f", "qcow2", file.to_str().unwrap()]);
    qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "qcow2",
        raw.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
}

/// An export that fails for good after its upload started (the stored data reads short: the
/// image has 40 MiB, its blob file only 24) aborts that upload: no object and zero incomplete
/// uploads are left, and the job's state names no upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_that_fails_for_good_leaves_no_incomplete_upload() {
    let Some((connection, bucket)) = ims_blob::conformance::s3_test_server() else {
        return;
    };
    let s3 = S3Inspector::new(&connection);
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().join("data"),
        buckets: Some(connection),
        ..Config::default()
    };
    let (app, client) = open_node(&config, true).await;
    let data: Vec<u8> = (0..40u32 << 20).map(|i| (i % 251) as u8).collect();
    let image_id = upload_raw_image(&client, "short-blob", data).await;
    let blobs: Vec<_> = walk_files(&config.data_dir.join("store/blobs"));
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&blobs[0])
        .unwrap()
        .set_len(24 << 20)
        .unwrap();

    let _runner = app.runner(fast_runner("node")).start();
    let prefix = format!("failed-export-{}/", uuid::Uuid::new_v4().simple());
    let object = format!("{prefix}disk.raw");
    let reply = client
        .call(
            "POST",
            &format!("/v1/cloudimages/{image_id}/file"),
            Some(json!({"bucket_url": format!("{bucket}:{object}"), "is_quick_export": true})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let job_id = reply.json()["job_id"].as_str().unwrap().to_string();
    let job = client.wait_job(&job_id).await;
    assert_eq!(job["status"], "FAIL", "{job}");
    let id = uuid::Uuid::parse_str(&job_id).unwrap();
    let failed = app.cloud_images.jobs().get(id).await.unwrap().unwrap();
    assert_eq!(
        failed.attempts, 1,
        "failed for good, not retried: {failed:?}"
    );
    assert!(
        failed
            .state
            .as_ref()
            .is_some_and(|s| s.get("upload").is_none()),
        "{failed:?}"
    );
    assert_eq!(
        s3.incomplete_uploads(&bucket, &prefix).await,
        Vec::<String>::new(),
        "no incomplete upload left in the bucket"
    );
    let buckets = app.buckets.clone().unwrap();
    assert_eq!(buckets.object_size(&bucket, &object).await.unwrap(), None);
}

/// Every file under `dir`, recursively.
fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk_files(&path));
        } else {
            files.push(path);
        }
    }
    files
}
