//! End to end: two regions, each a real `ims serve` with its own SQLite database and store, and
//! `copy_image_cross_region` between them, signed with SDK-HMAC-SHA256 as the SDK signs. The copy
//! arrives with the same bytes and checksums; the seed's refusals (encrypted, too large, a second
//! copy of the same image while one runs) answer with IMS codes; and a copy submitted while the
//! peer is down survives a restart of the source region and completes once the peer is back.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ims_core::sdk_signature::{OutgoingRequest, UNSIGNED_PAYLOAD, sdk_date, sign_request};
use serde_json::{Value, json};

/// How long a copy job may take before the test gives up (it includes one retry back-off).
const JOB_TIMEOUT: Duration = Duration::from_secs(90);
/// The size cap region A enforces in this test.
const SIZE_CAP: u64 = 4 << 20;

struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ims() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ims"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `ims serve` on `port` and waits for it to listen.
fn serve(data: &Path, config: Option<&Path>, port: u16) -> Server {
    let mut cmd = ims();
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(data)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("IMS_ADMIN_PASSWORD", "adminpw")
        .env("IMS_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    let mut child = cmd.spawn().expect("starting ims serve");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = lines
            .next()
            .expect("ims serve exited before listening")
            .unwrap();
        if line.starts_with("ims listening on") {
            break;
        }
    }
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child }
}

/// Runs `ims admin --data-dir DATA ARGS…` and returns the first output line's tab fields.
fn admin(data: &Path, args: &[&str]) -> Vec<String> {
    let out = ims()
        .arg("admin")
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env("IMS_ADMIN_PASSWORD", "adminpw")
        .output()
        .unwrap();
    assert!(out.status.success(), "ims admin {args:?}: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().next().unwrap_or("").to_string();
    line.split('\t').map(str::to_string).collect()
}

/// An account on a region: a project, a member user, and its access key.
struct Account {
    project_id: String,
    ak: String,
    sk: String,
}

fn account(data: &Path, project: &str, user: &str) -> Account {
    let project_id = admin(data, &["project", "create", project])[0].clone();
    admin(
        data,
        &[
            "user",
            "create",
            user,
            "--password",
            "pw",
            "--project",
            project,
            "--role",
            "member",
        ],
    );
    let key = admin(data, &["access-key", "create", "--user", user]);
    Account {
        project_id,
        ak: key[0].clone(),
        sk: key[1].clone(),
    }
}

enum Payload {
    Empty,
    Json(Value),
    Data(Vec<u8>),
}

/// A signed request to `port` as `who`; returns the status and the body.
async fn call(
    port: u16,
    who: &Account,
    method: &str,
    path: &str,
    payload: Payload,
) -> (u16, Vec<u8>) {
    let host = format!("127.0.0.1:{port}");
    let (content_type, body, signed) = match &payload {
        Payload::Empty => ("application/json", Vec::new(), true),
        Payload::Json(v) => (
            "application/json;charset=utf-8",
            v.to_string().into_bytes(),
            true,
        ),
        Payload::Data(d) => ("application/octet-stream", d.clone(), false),
    };
    let mut headers: Vec<(String, String)> = vec![
        ("content-type".into(), content_type.into()),
        ("host".into(), host.clone()),
        ("user-agent".into(), "ims-cross-region-test".into()),
        ("x-project-id".into(), who.project_id.clone()),
        (
            "x-sdk-date".into(),
            sdk_date(time::OffsetDateTime::now_utc()),
        ),
    ];
    if !signed {
        headers.push(("x-sdk-content-sha256".into(), UNSIGNED_PAYLOAD.into()));
    }
    let authorization = sign_request(
        &OutgoingRequest {
            method,
            raw_path: path,
            raw_query: "",
            headers: &headers,
            body: signed.then_some(body.as_slice()),
        },
        &who.ak,
        who.sk.as_bytes(),
    )
    .unwrap();
    let client = reqwest::Client::new();
    let mut request = client
        .request(method.parse().unwrap(), format!("http://{host}{path}"))
        .header("authorization", authorization)
        .body(body);
    for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
        request = request.header(k.as_str(), v.as_str());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)))
}

/// Creates an active raw image of `data` (plus `extra` properties) and returns its id.
async fn image_with(port: u16, who: &Account, name: &str, data: &[u8], extra: Value) -> String {
    let mut body = json!({"name": name, "disk_format": "raw", "container_format": "bare",
                          "__os_version": "Ubuntu 22.04 server 64bit"});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let (status, created) = call(port, who, "POST", "/v2/images", Payload::Json(body)).await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&created));
    let id = json_of(&created)["id"].as_str().unwrap().to_string();
    let (status, answer) = call(
        port,
        who,
        "PUT",
        &format!("/v2/images/{id}/file"),
        Payload::Data(data.to_vec()),
    )
    .await;
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&answer));
    id
}

/// Deterministic bytes that are no known disk format.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn copy(port: u16, who: &Account, image: &str, name: &str) -> (u16, Value) {
    let body = json!({"name": name, "region": "region-b", "project_name": "dest",
                      "agency_name": "ims_admin", "description": "from a"});
    let (status, answer) = call(
        port,
        who,
        "POST",
        &format!("/v1/cloudimages/{image}/cross_region_copy"),
        Payload::Json(body),
    )
    .await;
    (status, json_of(&answer))
}

/// Polls the IMS job until it ends; returns the job.
async fn wait_job(port: u16, who: &Account, job: &str) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = call(
            port,
            who,
            "GET",
            &format!("/v1/cloudimages/job/{job}"),
            Payload::Empty,
        )
        .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let job = json_of(&body);
        if matches!(job["status"].as_str(), Some("SUCCESS" | "FAIL")) {
            return job;
        }
        assert!(started.elapsed() < JOB_TIMEOUT, "job still {job}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn write_config(dir: &Path, b_port: u16, b: &Account) -> PathBuf {
    let secret = dir.join("region-b.sk");
    std::fs::write(&secret, &b.sk).unwrap();
    let config = dir.join("ims.toml");
    std::fs::write(
        &config,
        format!(
            "[region]\nname = \"region-a\"\ncross_region_copy_size_cap = {SIZE_CAP}\n\
             [[region.peers]]\nname = \"region-b\"\nendpoint = \"http://127.0.0.1:{b_port}\"\n\
             project_id = \"{}\"\nproject_name = \"dest\"\naccess_key = \"{}\"\n\
             secret_key_file = \"{}\"\n",
            b.project_id,
            b.ak,
            secret.display()
        ),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_between_two_regions() {
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    // Region B: the peer, with the account region A's trust credential belongs to.
    let b_port = free_port();
    let b_server = serve(&b_dir, None, b_port);
    let b = account(&b_dir, "dest", "trust");
    // Region A: the source, configured with B as its peer.
    let a_port = free_port();
    let first_a = serve(&a_dir, None, a_port);
    let a = account(&a_dir, "src", "alice");
    drop(first_a);
    let config = write_config(tmp.path(), b_port, &b);
    let a_server = serve(&a_dir, Some(&config), a_port);

    // 3 MiB: several chunks through the streaming path.
    let data = pattern(3 << 20, 7);
    let source = image_with(
        a_port,
        &a,
        "src-image",
        &data,
        json!({"architecture": "x86"}),
    )
    .await;
    let (status, answer) = copy(a_port, &a, &source, "copied").await;
    assert_eq!(status, 200, "{answer}");
    let job = wait_job(a_port, &a, answer["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["job_type"], "imsCrossRegionCopyImageJob");
    let target = job["entities"]["image_id"].as_str().unwrap().to_string();
    assert_eq!(job["entities"]["image_name"], "copied");

    // On B: same bytes and checksums, the IMS attributes, owned by B's project.
    let (_, a_image) = call(
        a_port,
        &a,
        "GET",
        &format!("/v2/images/{source}"),
        Payload::Empty,
    )
    .await;
    let a_image = json_of(&a_image);
    let (status, b_image) = call(
        b_port,
        &b,
        "GET",
        &format!("/v2/images/{target}"),
        Payload::Empty,
    )
    .await;
    assert_eq!(status, 200);
    let b_image = json_of(&b_image);
    assert_eq!(b_image["status"], "active");
    assert_eq!(b_image["name"], "copied");
    assert_eq!(b_image["owner"], b.project_id);
    for key in [
        "checksum",
        "os_hash_value",
        "size",
        "disk_format",
        "__os_version",
        "__platform",
    ] {
        assert_eq!(b_image[key], a_image[key], "{key}");
    }
    assert_eq!(b_image["__originalimagename"], source);
    assert_eq!(b_image["__description"], "from a");
    let (status, bytes) = call(
        b_port,
        &b,
        "GET",
        &format!("/v2/images/{target}/file"),
        Payload::Empty,
    )
    .await;
    assert_eq!(status, 200);
    assert!(bytes == data, "the copy's bytes differ");
    // The lock is released: the same image can be copied again.
    let (status, again) = copy(a_port, &a, &source, "copied-again").await;
    assert_eq!(status, 200, "{again}");
    let job = wait_job(a_port, &a, again["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_ne!(job["entities"]["image_id"].as_str().unwrap(), target);

    // Refusals (seed table 5-4) with IMS's codes.
    let encrypted = image_with(
        a_port,
        &a,
        "enc",
        &pattern(4096, 3),
        json!({"__system__cmkid": "kms-key-1"}),
    )
    .await;
    let (status, refused) = copy(a_port, &a, &encrypted, "x").await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (400, Some("IMG.0140")),
        "{refused}"
    );
    let big = image_with(
        a_port,
        &a,
        "big",
        &pattern(SIZE_CAP as usize + 1, 5),
        json!({}),
    )
    .await;
    let (status, refused) = copy(a_port, &a, &big, "x").await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (400, Some("IMG.0414")),
        "{refused}"
    );
    let body =
        json!({"name": "x", "region": "region-z", "project_name": "dest", "agency_name": "a"});
    let (status, refused) = call(
        a_port,
        &a,
        "POST",
        &format!("/v1/cloudimages/{source}/cross_region_copy"),
        Payload::Json(body),
    )
    .await;
    let refused = json_of(&refused);
    assert_eq!(status, 400);
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("region-z")
    );

    // The peer goes down: the copy is accepted and waits; a second copy of the same image is
    // refused while the first is pending; the source region restarts; the peer comes back and
    // the first copy completes.
    drop(b_server);
    let (status, pending) = copy(a_port, &a, &source, "after-outage").await;
    assert_eq!(status, 200, "{pending}");
    let pending_job = pending["job_id"].as_str().unwrap().to_string();
    let (status, refused) = copy(a_port, &a, &source, "second").await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (400, Some("IMG.0409")),
        "{refused}"
    );
    drop(a_server);
    let _b_server = serve(&b_dir, None, b_port);
    let _a_server = serve(&a_dir, Some(&config), a_port);
    let job = wait_job(a_port, &a, &pending_job).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let resumed = job["entities"]["image_id"].as_str().unwrap().to_string();
    let (status, bytes) = call(
        b_port,
        &b,
        "GET",
        &format!("/v2/images/{resumed}/file"),
        Payload::Empty,
    )
    .await;
    assert_eq!(status, 200);
    assert!(bytes == data, "the resumed copy's bytes differ");
}
