//! In-process tests of image locations: PATCH add/replace/remove on `/locations` with
//! Glance's answers, validation data that matches or conflicts, refused schemes and URLs the
//! URL policy refuses (a loopback server that is not exempt), downloads streamed from an
//! `http` location, the v2.17 `POST /v2/images/{id}/locations` task (hashes computed and
//! checked, data inspected), and an image deleted while its location is being hashed.

#[allow(dead_code)] // the shared harness; this file does not use every helper
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use ims_core::config::{StoreEntry, StoreKind};
use ims_core::{App, Config};
use ims_domain::Role;
use md5::Digest;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use common::{Reply, issue_token, named, send};

const PATCH: &str = "application/openstack-images-v2.1-json-patch";

/// What the loopback server serves.
struct Served {
    addr: SocketAddr,
    /// Connections to `/slow` still open.
    slow_open: Arc<AtomicUsize>,
}

/// A loopback server: `/image` answers `data`, `/slow` streams 64 KiB every 50 ms for a
/// minute, anything else 404.
async fn file_server(data: Vec<u8>) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let data = Arc::new(data);
    let slow_open = Arc::new(AtomicUsize::new(0));
    let open = slow_open.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let data = data.clone();
            let open = open.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                match head.split_whitespace().nth(1) {
                    Some("/image") => {
                        let h = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            data.len()
                        );
                        let _ = conn.write_all(h.as_bytes()).await;
                        let _ = conn.write_all(&data).await;
                    }
                    Some("/slow") => {
                        open.fetch_add(1, Ordering::SeqCst);
                        let _ = conn
                            .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                            .await;
                        for _ in 0..1200 {
                            if conn.write_all(&[0u8; 65536]).await.is_err() {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        open.fetch_sub(1, Ordering::SeqCst);
                    }
                    _ => {
                        let _ = conn
                            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                            .await;
                    }
                }
            });
        }
    });
    Served { addr, slow_open }
}

fn entry(id: &str, weight: i64, default: bool, kind: StoreKind) -> StoreEntry {
    StoreEntry {
        id: id.into(),
        description: None,
        weight,
        default,
        read_only: false,
        kind,
        path: None,
        s3: None,
    }
}

struct Node {
    router: Router,
    admin: String,
    member: String,
    _workers: ims_jobs::runner::RunnerHandle,
}

/// Two local stores and the `http` store `web`; locations shown; `exempt` is the one
/// non-public address the URL policy lets through.
async fn node(exempt: SocketAddr) -> Node {
    let mut config = Config {
        stores: vec![
            entry("fs", 100, true, StoreKind::Local),
            entry("fs2", 50, false, StoreKind::Local),
            entry("web", 0, false, StoreKind::Http),
        ],
        ..Config::default()
    };
    config.locations.show_multiple_locations = true;
    config.locations.show_image_direct_url = true;
    config.import.allowed_ports.push(exempt.port());
    config.import.exempt_targets.push(exempt);
    let app = Arc::new(App::in_memory(config).await);
    app.identity.bootstrap(Some("adminpw")).await.unwrap();
    app.identity.create_project("p1").await.unwrap();
    app.identity.create_user("member1", "pw").await.unwrap();
    app.identity
        .assign_role(&named("member1"), &named("p1"), Role::Member, true)
        .await
        .unwrap();
    let workers = app.start_workers("test");
    let router = ims_api::router(app);
    let admin = issue_token(&router, "admin", "adminpw", "admin").await;
    let member = issue_token(&router, "member1", "pw", "p1").await;
    Node {
        router,
        admin,
        member,
        _workers: workers,
    }
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

    async fn show(&self, id: &str) -> Value {
        let r = self
            .call(&self.member, "GET", &format!("/v2/images/{id}"), None, "")
            .await;
        assert_eq!(r.status, StatusCode::OK);
        r.json()
    }

    async fn create(&self, disk_format: &str) -> String {
        let body = json!({"name": "i", "disk_format": disk_format, "container_format": "bare"});
        let r = self
            .call(
                &self.member,
                "POST",
                "/v2/images",
                Some("application/json"),
                body.to_string(),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        let image = r.json();
        assert_eq!(image["locations"], json!([]), "shown, empty: {image}");
        image["id"].as_str().unwrap().to_owned()
    }

    async fn patch_as(&self, token: &str, id: &str, ops: Value) -> Reply {
        self.call(
            token,
            "PATCH",
            &format!("/v2/images/{id}"),
            Some(PATCH),
            ops.to_string(),
        )
        .await
    }

    async fn patch(&self, id: &str, ops: Value) -> Reply {
        self.patch_as(&self.member, id, ops).await
    }

    async fn add_location(&self, id: &str, body: Value) -> Reply {
        self.call(
            &self.member,
            "POST",
            &format!("/v2/images/{id}/locations"),
            Some("application/json"),
            body.to_string(),
        )
        .await
    }

    /// Polls the image's tasks until every one finished; returns them and the image.
    async fn wait_tasks(&self, id: &str) -> (Vec<Value>, Value) {
        for _ in 0..1000 {
            let r = self
                .call(
                    &self.member,
                    "GET",
                    &format!("/v2/images/{id}/tasks"),
                    None,
                    "",
                )
                .await;
            let tasks = r.json()["tasks"].as_array().unwrap().clone();
            if !tasks.is_empty()
                && tasks
                    .iter()
                    .all(|t| t["status"] == "success" || t["status"] == "failure")
            {
                return (tasks, self.show(id).await);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("tasks of {id} did not finish");
    }
}

fn data() -> Vec<u8> {
    (0..300_000u32).map(|i| (i % 251) as u8).collect()
}

fn add_op(url: &str, metadata: Value) -> Value {
    json!([{"op": "add", "path": "/locations/-", "value": {"url": url, "metadata": metadata}}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_adds_replaces_and_removes_locations() {
    let served = file_server(data()).await;
    let n = node(served.addr).await;
    let url = format!("http://{}/image", served.addr);
    let id = n.create("raw").await;

    let r = n.patch(&id, add_op(&url, json!({"foo": "bar"}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json());
    let image = r.json();
    assert_eq!(image["status"], "active");
    assert_eq!(image["size"], 300_000);
    assert_eq!(image["virtual_size"], 300_000);
    assert_eq!(image["os_hash_algo"], Value::Null, "no hashing on PATCH");
    assert_eq!(image["checksum"], Value::Null);
    assert_eq!(
        image["locations"],
        json!([{"url": url, "metadata": {"foo": "bar", "store": "web"}}])
    );
    assert_eq!(image["direct_url"], url.as_str());
    assert_eq!(image["stores"], "web");

    let second = format!("{url}#new");
    let r = n
        .patch(&id, add_op(&second, json!({"speed": "88mph"})))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json());
    let mut locations = r.json()["locations"].clone();
    assert_eq!(locations[1]["url"], second.as_str());

    // Replacing with the same list, or only changing metadata, works.
    let replace = |value: &Value| json!([{"op": "replace", "path": "/locations", "value": value}]);
    let r = n.patch(&id, replace(&locations)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json());
    locations[0]["metadata"]["date"] = json!("2015-10-15");
    let r = n.patch(&id, replace(&locations)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json());
    // Dropping or changing a URL does not; neither does the empty list.
    let dropped = json!([locations[0].clone()]);
    assert_eq!(
        n.patch(&id, replace(&dropped)).await.status,
        StatusCode::BAD_REQUEST
    );
    let changed = json!([locations[0].clone(), {"url": format!("{url}#new3"), "metadata": {}}]);
    assert_eq!(
        n.patch(&id, replace(&changed)).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        n.patch(&id, replace(&json!([]))).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(n.show(&id).await["locations"], locations);

    // Removing needs an admin, and never takes the last location.
    let remove = json!([{"op": "remove", "path": "/locations/0"}]);
    assert_eq!(
        n.patch(&id, remove.clone()).await.status,
        StatusCode::FORBIDDEN
    );
    let r = n.patch_as(&n.admin, &id, remove.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json());
    let image = r.json();
    assert_eq!(image["locations"].as_array().unwrap().len(), 1);
    assert_eq!(image["locations"][0]["url"], second.as_str());
    assert_eq!(image["direct_url"], second.as_str());
    assert_eq!(
        n.patch_as(&n.admin, &id, remove).await.status,
        StatusCode::FORBIDDEN
    );
    let bad_position = json!([{"op": "remove", "path": "/locations/7"}]);
    assert_eq!(
        n.patch_as(&n.admin, &id, bad_position).await.status,
        StatusCode::FORBIDDEN,
        "one location left: removing any is the last-location refusal"
    );

    // The admin-only v2.17 listing.
    let r = n
        .call(
            &n.member,
            "GET",
            &format!("/v2/images/{id}/locations"),
            None,
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = n
        .call(
            &n.admin,
            "GET",
            &format!("/v2/images/{id}/locations"),
            None,
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()[0]["url"], second.as_str());

    // An uploaded image shows its store as its one location.
    let uploaded = n.create("raw").await;
    let r = n
        .call(
            &n.member,
            "PUT",
            &format!("/v2/images/{uploaded}/file"),
            Some("application/octet-stream"),
            vec![1u8; 1000],
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let image = n.show(&uploaded).await;
    assert_eq!(image["locations"].as_array().unwrap().len(), 1);
    assert_eq!(image["locations"][0]["metadata"], json!({"store": "fs"}));
    assert_eq!(image["direct_url"], image["locations"][0]["url"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_data_is_recorded_and_conflicts_are_409() {
    let served = file_server(data()).await;
    let n = node(served.addr).await;
    let url = format!("http://{}/image", served.addr);
    let id = n.create("raw").await;
    let with_hash = |url: &str, checksum: &str, value: &str, algo: &str| {
        json!([{"op": "add", "path": "/locations/-", "value": {
            "url": url, "metadata": {},
            "validation_data": {"checksum": checksum, "os_hash_value": value, "os_hash_algo": algo},
        }}])
    };
    let (c1, h1) = ("1".repeat(32), "deadbeef".repeat(16));
    let r = n.patch(&id, with_hash(&url, &c1, &h1, "sha512")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json());
    let image = r.json();
    assert_eq!(image["status"], "active");
    assert_eq!(image["checksum"], c1.as_str());
    assert_eq!(image["os_hash_value"], h1.as_str());
    assert_eq!(image["os_hash_algo"], "sha512");
    assert!(image["locations"][0].get("validation_data").is_none());

    // The same values on another location are fine.
    let second = format!("{url}#new");
    let r = n.patch(&id, with_hash(&second, &c1, &h1, "sha512")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json());
    // Any different value is a conflict, and changes nothing.
    let third = format!("{url}#third");
    for (c, h, a) in [
        ("2".repeat(32), h1.clone(), "sha512"),
        (c1.clone(), "beefdead".repeat(16), "sha512"),
        (c1.clone(), h1.clone(), "sha256"),
    ] {
        let r = n.patch(&id, with_hash(&third, &c, &h, a)).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.json());
    }
    let image = n.show(&id).await;
    assert_eq!(image["locations"].as_array().unwrap().len(), 2);
    assert_eq!(image["checksum"], c1.as_str());

    // On a queued image the algorithm must be the configured one.
    let other = n.create("raw").await;
    let r = n
        .patch(&other, with_hash(&url, &c1, &"ab".repeat(32), "sha256"))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(n.show(&other).await["status"], "queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schemes_and_unexempt_addresses_are_refused() {
    let served = file_server(data()).await;
    let other = file_server(data()).await;
    let n = node(served.addr).await;
    let id = n.create("raw").await;
    for url in [
        "gopher://info.cern.ch".to_owned(),
        "file:///etc/passwd".to_owned(),
        format!("ims://fs/images/{id}/x"),
    ] {
        let r = n.patch(&id, add_op(&url, json!({}))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{url}: {}", r.json());
    }
    // A loopback server that is not the exempt one (its port is not allowed either).
    let loopback = format!("http://{}/image", other.addr);
    let r = n.patch(&id, add_op(&loopback, json!({}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.json().to_string().contains("does not pass filtering"),
        "{}",
        r.json()
    );
    let r = n.add_location(&id, json!({"url": loopback})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json().to_string().contains("does not pass filtering"));
    // The exempt address on another port is refused too.
    let port_only = format!("http://127.0.0.1:{}/image", other.addr.port());
    let r = n.add_location(&id, json!({"url": port_only})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let image = n.show(&id).await;
    assert_eq!(image["status"], "queued");
    assert_eq!(image["locations"], json!([]));
    // A URL that is not there.
    let missing = format!("http://{}/missing", served.addr);
    let r = n.patch(&id, add_op(&missing, json!({}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_at_a_location_is_inspected_and_downloaded() {
    let served = file_server(data()).await;
    let n = node(served.addr).await;
    let url = format!("http://{}/image", served.addr);
    // Raw bytes declared qcow2 are refused (bare: the format must match).
    let qcow = n.create("qcow2").await;
    let r = n.patch(&qcow, add_op(&url, json!({}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.json());
    assert_eq!(n.show(&qcow).await["status"], "queued");

    let id = n.create("raw").await;
    assert_eq!(
        n.patch(&id, add_op(&url, json!({}))).await.status,
        StatusCode::OK
    );
    let r = n
        .call(&n.member, "GET", &format!("/v2/images/{id}/file"), None, "")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, data());
    let req = Request::builder()
        .method("GET")
        .uri(format!("/v2/images/{id}/file"))
        .header("x-auth-token", &n.member)
        .header(header::RANGE, "bytes=1000-1999")
        .body(Body::empty())
        .unwrap();
    let r = send(&n.router, req).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, data()[1000..2000].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v217_location_import_hashes_and_validates() {
    let served = file_server(data()).await;
    let n = node(served.addr).await;
    let url = format!("http://{}/image", served.addr);
    let sha256 = hex::encode(sha2::Sha256::digest(data()));
    let sha512 = hex::encode(sha2::Sha512::digest(data()));
    let md5 = hex::encode(md5::Md5::digest(data()));

    let id = n.create("raw").await;
    for bad in [
        json!({"url": url, "validation_data": {"os_hash_algo": "sha512", "os_hash_value": "dbc9e0f80d131e64b94913a7b40bb5"}}),
        json!({"url": url, "validation_data": {"os_hash_value": sha512}}),
        json!({"url": url, "validation_data": {"os_hash_algo": "sha123", "os_hash_value": sha512}}),
        json!({"url": url, "validation_data": {"os_hash_algo": "sha512", "os_hash_value": sha256}}),
        json!({"validation_data": {}}),
    ] {
        let r = n.add_location(&id, bad.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.json());
    }
    let r = n
        .add_location(
            &id,
            json!({"url": url, "validation_data": {"os_hash_algo": "sha256", "os_hash_value": sha256}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let (tasks, image) = n.wait_tasks(&id).await;
    assert_eq!(tasks.len(), 1, "the refused calls made no task");
    assert_eq!(tasks[0]["type"], "location_import");
    assert_eq!(tasks[0]["status"], "success", "{}", tasks[0]);
    assert_eq!(image["status"], "active");
    assert_eq!(image["os_hash_algo"], "sha256");
    assert_eq!(image["os_hash_value"], sha256.as_str());
    assert_eq!(image["checksum"], md5.as_str());
    assert_eq!(image["size"], 300_000);
    assert_eq!(image["stores"], "web");
    assert!(image.get("os_glance_import_task").is_none(), "{image}");
    // Only a queued image takes a location this way.
    let r = n.add_location(&id, json!({"url": url})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);

    // A wrong hash fails the task: queued, no hashes, the location stays.
    let wrong = n.create("raw").await;
    let r = n
        .add_location(
            &wrong,
            json!({"url": url, "validation_data": {"os_hash_algo": "sha512", "os_hash_value": "beefdead".repeat(16)}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let (tasks, image) = n.wait_tasks(&wrong).await;
    assert_eq!(tasks[0]["status"], "failure");
    assert_eq!(image["status"], "queued");
    assert_eq!(image["checksum"], Value::Null);
    assert_eq!(image["os_hash_algo"], Value::Null);
    assert_eq!(image["os_hash_value"], Value::Null);
    assert_eq!(image["stores"], "web");

    // Without validation data the server hashes with sha512.
    let plain = n.create("raw").await;
    assert_eq!(
        n.add_location(&plain, json!({"url": url})).await.status,
        StatusCode::ACCEPTED
    );
    let (tasks, image) = n.wait_tasks(&plain).await;
    assert_eq!(tasks[0]["status"], "success");
    assert_eq!(image["os_hash_algo"], "sha512");
    assert_eq!(image["os_hash_value"], sha512.as_str());
    assert_eq!(image["checksum"], md5.as_str());

    // Data that is not its declared format fails the task after inspection.
    let qcow = n.create("qcow2").await;
    assert_eq!(
        n.add_location(&qcow, json!({"url": url})).await.status,
        StatusCode::ACCEPTED
    );
    let (tasks, image) = n.wait_tasks(&qcow).await;
    assert_eq!(tasks[0]["status"], "failure", "{}", tasks[0]);
    assert_eq!(image["status"], "queued");
    assert_eq!(image["size"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_image_cancels_hash_calculation() {
    let served = file_server(data()).await;
    let n = node(served.addr).await;
    let id = n.create("raw").await;
    let url = format!("http://{}/slow", served.addr);
    assert_eq!(
        n.add_location(&id, json!({"url": url})).await.status,
        StatusCode::ACCEPTED
    );
    // Wait until the job reads the location.
    for _ in 0..500 {
        if served.slow_open.load(Ordering::SeqCst) > 0 && n.show(&id).await["status"] == "importing"
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(n.show(&id).await["status"], "importing");
    let r = n
        .call(&n.member, "DELETE", &format!("/v2/images/{id}"), None, "")
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // The job stops reading within its polling period and ends failed.
    let mut stopped = false;
    for _ in 0..500 {
        let jobs = served.slow_open.load(Ordering::SeqCst);
        if jobs == 0 {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stopped, "the location is still being read after the delete");
    let r = n
        .call(&n.member, "GET", &format!("/v2/images/{id}"), None, "")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
