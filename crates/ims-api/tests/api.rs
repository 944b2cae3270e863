//! In-process API tests: the router over in-memory stores, driven with `oneshot` requests.

mod common;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bytes::Bytes;
use ims_core::{App, Config};
use ims_domain::Role;
use serde_json::{Value, json};

use common::{Reply, issue_token, named, send};

struct TestApp {
    router: Router,
    app: Arc<App>,
}

impl TestApp {
    async fn new() -> TestApp {
        Self::with_config(Config::default()).await
    }

    async fn with_config(config: Config) -> TestApp {
        let app = Arc::new(App::in_memory(config).await);
        app.identity.bootstrap(Some("adminpw")).await.unwrap();
        for (project, user, role) in [
            ("p1", "member1", Role::Member),
            ("p2", "member2", Role::Member),
            ("p1", "reader1", Role::Reader),
        ] {
            if app
                .identity
                .find_project(&named(project))
                .await
                .unwrap()
                .is_none()
            {
                app.identity.create_project(project).await.unwrap();
            }
            app.identity.create_user(user, "pw").await.unwrap();
            app.identity
                .assign_role(&named(user), &named(project), role, true)
                .await
                .unwrap();
        }
        TestApp {
            router: ims_api::router(app.clone()),
            app,
        }
    }

    async fn send(&self, req: Request<Body>) -> Reply {
        send(&self.router, req).await
    }

    async fn token(&self, user: &str, project: &str) -> String {
        let pw = if user == "admin" { "adminpw" } else { "pw" };
        issue_token(&self.router, user, pw, project).await
    }

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
        self.send(req.body(body.into()).unwrap()).await
    }

    async fn create(&self, token: &str, body: Value) -> Value {
        let r = self
            .call(
                token,
                "POST",
                "/v2/images",
                Some("application/json"),
                body.to_string(),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{:?}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()
    }

    async fn upload(&self, token: &str, id: &str, data: Vec<u8>) -> Reply {
        self.call(
            token,
            "PUT",
            &format!("/v2/images/{id}/file"),
            Some("application/octet-stream"),
            data,
        )
        .await
    }

    async fn show(&self, token: &str, id: &str) -> Value {
        let r = self
            .call(
                token,
                "GET",
                &format!("/v2/images/{id}"),
                None,
                Body::empty(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        r.json()
    }
}

fn qcow2_header(virtual_size: u64, backing: Option<&str>) -> Vec<u8> {
    let mut h = vec![0u8; 65536 * 4];
    h[0..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    if let Some(b) = backing {
        h[8..16].copy_from_slice(&512u64.to_be_bytes());
        h[16..20].copy_from_slice(&(b.len() as u32).to_be_bytes());
        h[512..512 + b.len()].copy_from_slice(b.as_bytes());
    }
    h[20..24].copy_from_slice(&16u32.to_be_bytes());
    h[24..32].copy_from_slice(&virtual_size.to_be_bytes());
    h[36..40].copy_from_slice(&1u32.to_be_bytes());
    h[40..48].copy_from_slice(&0x30000u64.to_be_bytes());
    h[48..56].copy_from_slice(&0x10000u64.to_be_bytes());
    h[56..60].copy_from_slice(&1u32.to_be_bytes());
    h[96..100].copy_from_slice(&4u32.to_be_bytes());
    h[100..104].copy_from_slice(&104u32.to_be_bytes());
    h
}

#[tokio::test]
async fn versions_and_identity_discovery() {
    let t = TestApp::new().await;
    let r = t.send(Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, StatusCode::MULTIPLE_CHOICES);
    assert_eq!(r.json()["versions"][0]["status"], "CURRENT");
    assert!(
        r.headers
            .get("x-openstack-request-id")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("req-")
    );
    let r = t
        .send(Request::get("/versions").body(Body::empty()).unwrap())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = t
        .send(Request::get("/identity").body(Body::empty()).unwrap())
        .await;
    assert_eq!(r.status, StatusCode::MULTIPLE_CHOICES);
    let r = t
        .send(Request::get("/identity/v3").body(Body::empty()).unwrap())
        .await;
    assert_eq!(r.json()["version"]["id"], "v3.14");
}

#[tokio::test]
async fn token_lifecycle_and_bad_credentials() {
    let t = TestApp::new().await;
    let token = t.token("member1", "p1").await;
    let subject = t
        .send(
            Request::get("/identity/v3/auth/tokens")
                .header("x-auth-token", &token)
                .header("x-subject-token", &token)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(subject.status, StatusCode::OK);
    let body = subject.json();
    let roles: Vec<&str> = body["token"]["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(roles, vec!["reader", "member"]);
    assert_eq!(body["token"]["project"]["name"], "p1");
    let catalog = body["token"]["catalog"].as_array().unwrap();
    assert!(catalog.iter().any(|s| s["type"] == "image"));
    let bad = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "member1", "domain": {"name": "Default"}, "password": "wrong"}}}}});
    let r = t
        .send(
            Request::post("/identity/v3/auth/tokens")
                .header("content-type", "application/json")
                .body(Body::from(bad.to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.json()["error"]["message"].is_string());
    let r = t
        .send(
            Request::delete("/identity/v3/auth/tokens")
                .header("x-auth-token", &token)
                .header("x-subject-token", &token)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = t
        .call(&token, "GET", "/v2/images", None, Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "revoked token refused");
    assert!(r.headers.contains_key(header::WWW_AUTHENTICATE));
}

#[tokio::test]
async fn create_upload_download_cycle() {
    let t = TestApp::new().await;
    let tok = t.token("member1", "p1").await;
    let img = t.create(&tok, json!({"name": "a", "disk_format": "raw", "container_format": "bare", "foo": "bar", "tags": ["x"]})).await;
    assert_eq!(img["status"], "queued");
    assert_eq!(img["visibility"], "shared");
    assert_eq!(img["foo"], "bar");
    let id = img["id"].as_str().unwrap().to_string();
    let r = t
        .call(
            &tok,
            "GET",
            &format!("/v2/images/{id}/file"),
            None,
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "no data yet");
    assert!(r.body.is_empty());
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    assert_eq!(
        t.upload(&tok, &id, data.clone()).await.status,
        StatusCode::NO_CONTENT
    );
    let shown = t.show(&tok, &id).await;
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["size"], 3_000_000);
    assert_eq!(shown["virtual_size"], 3_000_000);
    assert_eq!(shown["os_hash_algo"], "sha512");
    assert_eq!(shown["checksum"].as_str().unwrap().len(), 32);
    let r = t
        .call(
            &tok,
            "GET",
            &format!("/v2/images/{id}/file"),
            None,
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.as_ref(), data.as_slice());
    assert_eq!(
        r.headers["content-md5"],
        shown["checksum"].as_str().unwrap()
    );
    let mut req = Request::get(format!("/v2/images/{id}/file"))
        .header("x-auth-token", &tok)
        .header("range", "bytes=10-19");
    req = req.header("accept", "*/*");
    let r = t.send(req.body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body.as_ref(), &data[10..20]);
    assert_eq!(r.headers["content-range"], "bytes 10-19/3000000");
    let r = t
        .send(
            Request::get(format!("/v2/images/{id}/file"))
                .header("x-auth-token", &tok)
                .header("range", "bytes=5000000-")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    let r = t.upload(&tok, &id, b"again".to_vec()).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "upload to active image");
    assert_eq!(
        t.call(
            &tok,
            "DELETE",
            &format!("/v2/images/{id}"),
            None,
            Body::empty()
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        t.call(
            &tok,
            "GET",
            &format!("/v2/images/{id}"),
            None,
            Body::empty()
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        t.call(
            &tok,
            "DELETE",
            &format!("/v2/images/{id}"),
            None,
            Body::empty()
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn format_mismatch_and_references_are_refused_and_leave_queued() {
    let t = TestApp::new().await;
    let tok = t.token("member1", "p1").await;
    for (disk_format, data) in [
        ("qcow2", vec![7u8; 100_000]),
        ("raw", qcow2_header(64 << 20, None)),
        ("qcow2", qcow2_header(64 << 20, Some("/etc/passwd"))),
    ] {
        let img = t
            .create(
                &tok,
                json!({"disk_format": disk_format, "container_format": "bare"}),
            )
            .await;
        let id = img["id"].as_str().unwrap();
        let r = t.upload(&tok, id, data).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{disk_format}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let shown = t.show(&tok, id).await;
        assert_eq!(shown["status"], "queued");
        assert!(shown["checksum"].is_null() && shown["size"].is_null());
    }
    let img = t
        .create(
            &tok,
            json!({"disk_format": "qcow2", "container_format": "bare"}),
        )
        .await;
    let id = img["id"].as_str().unwrap();
    assert_eq!(
        t.upload(&tok, id, vec![1u8; 10]).await.status,
        StatusCode::BAD_REQUEST
    );
    let r = t.upload(&tok, id, qcow2_header(64 << 20, None)).await;
    assert_eq!(
        r.status,
        StatusCode::NO_CONTENT,
        "re-upload after a refusal works: {}",
        String::from_utf8_lossy(&r.body)
    );
    let shown = t.show(&tok, id).await;
    assert_eq!(shown["virtual_size"], 64u64 << 20);
    let blobs = t.app.images.collect_garbage().await.unwrap();
    assert_eq!(
        blobs.orphan_blobs_deleted, 0,
        "refused uploads left no blobs behind"
    );
}

#[tokio::test]
async fn declared_size_and_hangup_restore_queued() {
    let t = TestApp::new().await;
    let tok = t.token("member1", "p1").await;
    let img = t
        .create(
            &tok,
            json!({"disk_format": "raw", "container_format": "bare"}),
        )
        .await;
    let id = img["id"].as_str().unwrap();
    let req = Request::put(format!("/v2/images/{id}/file"))
        .header("x-auth-token", &tok)
        .header("content-type", "application/octet-stream")
        .header("x-openstack-image-size", "10")
        .body(Body::from(vec![0u8; 11]))
        .unwrap();
    assert_eq!(
        t.send(req).await.status,
        StatusCode::BAD_REQUEST,
        "larger than declared"
    );
    assert_eq!(t.show(&tok, id).await["status"], "queued");
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from(vec![1u8; 1 << 20])),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "client hung up",
        )),
    ];
    let req = Request::put(format!("/v2/images/{id}/file"))
        .header("x-auth-token", &tok)
        .header("content-type", "application/octet-stream")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    let r = t.send(req).await;
    assert!(r.status.is_client_error(), "{}", r.status);
    let shown = t.show(&tok, id).await;
    assert_eq!(shown["status"], "queued");
    assert!(shown["size"].is_null());
    assert_eq!(
        t.upload(&tok, id, vec![5u8; 1000]).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(t.show(&tok, id).await["size"], 1000);
}

#[tokio::test]
async fn quota_and_size_cap_enforced_while_streaming() {
    let mut config = Config::default();
    config.limits.image_size_total = Some(1); // MiB
    config.limits.image_size_cap = 1_200_000;
    let t = TestApp::with_config(config).await;
    let tok = t.token("member1", "p1").await;
    let a = t
        .create(
            &tok,
            json!({"disk_format": "raw", "container_format": "bare"}),
        )
        .await;
    let r = t
        .upload(&tok, a["id"].as_str().unwrap(), vec![0u8; 1_300_000])
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "size cap");
    assert_eq!(
        t.upload(&tok, a["id"].as_str().unwrap(), vec![0u8; 1_000_000])
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let b = t
        .create(
            &tok,
            json!({"disk_format": "raw", "container_format": "bare"}),
        )
        .await;
    let r = t
        .upload(&tok, b["id"].as_str().unwrap(), vec![0u8; 600_000])
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "quota");
    assert_eq!(
        t.show(&tok, b["id"].as_str().unwrap()).await["status"],
        "queued"
    );
}

#[tokio::test]
async fn bad_input_gets_clear_4xx() {
    let t = TestApp::new().await;
    let tok = t.token("member1", "p1").await;
    let r = t
        .call(
            &tok,
            "POST",
            "/v2/images",
            Some("application/json"),
            "{not json",
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("Malformed JSON")
    );
    let r = t
        .call(
            &tok,
            "POST",
            "/v2/images",
            Some("application/json"),
            "[1,2]",
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = t
        .call(&tok, "POST", "/v2/images", Some("text/xml"), "<a/>")
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = t
        .call(
            &tok,
            "POST",
            "/v2/images",
            Some("application/json"),
            json!({"unknown_field": 5}).to_string(),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "extra properties must be strings"
    );
    let r = t
        .call(
            &tok,
            "POST",
            "/v2/images",
            Some("application/json"),
            json!({"disk_format": "wrong"}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = t
        .call(
            &tok,
            "POST",
            "/v2/images",
            Some("application/json"),
            json!({"status": "active"}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = t
        .call(
            &tok,
            "POST",
            "/v2/images",
            Some("application/json"),
            json!({"os_glance_x": "1"}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let huge = json!({"name": "x".repeat(2 << 20)}).to_string();
    let r = t
        .call(&tok, "POST", "/v2/images", Some("application/json"), huge)
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    for path in [
        "/v2/images/not-a-uuid",
        "/v2/images/",
        "/v2/images/00000000-0000-0000-0000-000000000000",
    ] {
        assert_eq!(
            t.call(&tok, "GET", path, None, Body::empty()).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    let img = t.create(&tok, json!({"name": "p"})).await;
    let id = img["id"].as_str().unwrap();
    let path = format!("/v2/images/{id}");
    let patch =
        |ct: &'static str, body: Value| t.call(&tok, "PATCH", &path, Some(ct), body.to_string());
    let r = patch("application/json", json!([])).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(r.headers.contains_key("accept-patch"));
    let v21 = "application/openstack-images-v2.1-json-patch";
    assert_eq!(
        patch(v21, json!([{"op": "move", "path": "/name"}]))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        patch(v21, json!({"op": "add"})).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        patch(v21, json!([{"op": "add", "path": "/a/b", "value": "x"}]))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        patch(
            v21,
            json!([{"op": "replace", "path": "/status", "value": "active"}])
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    let r = patch(v21, json!([{"op": "add", "path": "/foo", "value": "bar"}, {"op": "replace", "path": "/name", "value": "q"}])).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["foo"], "bar");
    let r = t
        .call(
            &tok,
            "PUT",
            &format!("/v2/images/{id}/file"),
            Some("text/plain"),
            "x",
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = t
        .call(
            &tok,
            "PUT",
            &format!("/v2/images/{id}/file"),
            Some("application/octet-stream"),
            "x",
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "formats unset");
    let r = t
        .call(&tok, "GET", "/v2/images", Some("application/json"), "{}")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "body on GET");
    let r = t
        .call(&tok, "GET", "/v2/images?limit=-3", None, Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = t
        .send(Request::get("/v2/images").body(Body::empty()).unwrap())
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = t
        .call(
            "ims1.forged.token",
            "GET",
            "/v2/images",
            None,
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn visibility_policy_and_members() {
    let t = TestApp::new().await;
    let m1 = t.token("member1", "p1").await;
    let m2 = t.token("member2", "p2").await;
    let reader = t.token("reader1", "p1").await;
    let admin = t.token("admin", "admin").await;
    let p2 = t
        .app
        .identity
        .find_project(&named("p2"))
        .await
        .unwrap()
        .unwrap()
        .id;
    let r = t
        .call(
            &m1,
            "POST",
            "/v2/images",
            Some("application/json"),
            json!({"visibility": "public"}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "members cannot publicize");
    let private = t
        .create(&m1, json!({"name": "priv", "visibility": "private"}))
        .await;
    let shared = t.create(&m1, json!({"name": "shared"})).await;
    let sid = shared["id"].as_str().unwrap();
    let pid = private["id"].as_str().unwrap();
    assert_eq!(
        t.call(
            &m2,
            "GET",
            &format!("/v2/images/{pid}"),
            None,
            Body::empty()
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        t.call(
            &reader,
            "GET",
            &format!("/v2/images/{pid}"),
            None,
            Body::empty()
        )
        .await
        .status,
        StatusCode::OK
    );
    let r = t
        .call(
            &reader,
            "PATCH",
            &format!("/v2/images/{pid}"),
            Some("application/openstack-images-v2.1-json-patch"),
            json!([{"op": "replace", "path": "/name", "value": "x"}]).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "readers cannot modify");
    let r = t
        .call(
            &m1,
            "POST",
            &format!("/v2/images/{pid}/members"),
            Some("application/json"),
            json!({"member": p2}).to_string(),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "private images have no members"
    );
    let r = t
        .call(
            &m1,
            "POST",
            &format!("/v2/images/{sid}/members"),
            Some("application/json"),
            json!({"member": p2}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "pending");
    let r = t
        .call(
            &m1,
            "POST",
            &format!("/v2/images/{sid}/members"),
            Some("application/json"),
            json!({"member": p2}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let list = |tok: String, q: &'static str| {
        let t = &t;
        async move {
            t.call(&tok, "GET", &format!("/v2/images{q}"), None, Body::empty())
                .await
                .json()["images"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    assert_eq!(
        list(m2.clone(), "").await,
        0,
        "pending shares are not listed"
    );
    assert_eq!(list(m2.clone(), "?member_status=pending").await, 1);
    assert_eq!(
        t.call(
            &m2,
            "GET",
            &format!("/v2/images/{sid}"),
            None,
            Body::empty()
        )
        .await
        .status,
        StatusCode::OK,
        "pending member can show"
    );
    let accept = json!({"status": "accepted"}).to_string();
    let r = t
        .call(
            &m1,
            "PUT",
            &format!("/v2/images/{sid}/members/{p2}"),
            Some("application/json"),
            accept.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "owner cannot accept");
    let r = t
        .call(
            &m2,
            "PUT",
            &format!("/v2/images/{sid}/members/{p2}"),
            Some("application/json"),
            json!({"status": "bogus"}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = t
        .call(
            &m2,
            "PUT",
            &format!("/v2/images/{sid}/members/{p2}"),
            Some("application/json"),
            accept,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(list(m2.clone(), "").await, 1, "accepted share is listed");
    assert_eq!(list(admin.clone(), "").await, 2, "admin sees all");
    let r = t
        .call(
            &m2,
            "DELETE",
            &format!("/v2/images/{sid}"),
            None,
            Body::empty(),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "member of share cannot delete"
    );
    assert_eq!(
        t.call(
            &m1,
            "DELETE",
            &format!("/v2/images/{sid}/members/{p2}"),
            None,
            Body::empty()
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        t.call(
            &m2,
            "GET",
            &format!("/v2/images/{sid}"),
            None,
            Body::empty()
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    let r = t
        .call(
            &admin,
            "PATCH",
            &format!("/v2/images/{pid}"),
            Some("application/openstack-images-v2.0-json-patch"),
            json!([{"replace": "/visibility", "value": "public"}]).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        t.call(
            &m2,
            "GET",
            &format!("/v2/images/{pid}"),
            None,
            Body::empty()
        )
        .await
        .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn tags_protection_and_deactivation() {
    let t = TestApp::new().await;
    let tok = t.token("member1", "p1").await;
    let img = t
        .create(
            &tok,
            json!({"disk_format": "raw", "container_format": "bare", "protected": true}),
        )
        .await;
    let id = img["id"].as_str().unwrap();
    assert_eq!(
        t.call(
            &tok,
            "PUT",
            &format!("/v2/images/{id}/tags/blue"),
            None,
            Body::empty()
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        t.call(
            &tok,
            "PUT",
            &format!("/v2/images/{id}/tags/blue"),
            None,
            Body::empty()
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(t.show(&tok, id).await["tags"], json!(["blue"]));
    assert_eq!(
        t.call(
            &tok,
            "DELETE",
            &format!("/v2/images/{id}/tags/red"),
            None,
            Body::empty()
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        t.call(
            &tok,
            "DELETE",
            &format!("/v2/images/{id}"),
            None,
            Body::empty()
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    let r = t
        .call(
            &tok,
            "POST",
            &format!("/v2/images/{id}/actions/deactivate"),
            None,
            Body::empty(),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "queued image cannot be deactivated"
    );
    t.upload(&tok, id, vec![1u8; 512]).await;
    for _ in 0..2 {
        assert_eq!(
            t.call(
                &tok,
                "POST",
                &format!("/v2/images/{id}/actions/deactivate"),
                None,
                Body::empty()
            )
            .await
            .status,
            StatusCode::NO_CONTENT
        );
    }
    assert_eq!(t.show(&tok, id).await["status"], "deactivated");
    assert_eq!(
        t.call(
            &tok,
            "GET",
            &format!("/v2/images/{id}/file"),
            None,
            Body::empty()
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        t.call(
            &tok,
            "POST",
            &format!("/v2/images/{id}/actions/reactivate"),
            None,
            Body::empty()
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(t.show(&tok, id).await["status"], "active");
}

#[tokio::test]
async fn listing_pages_and_filters() {
    let t = TestApp::new().await;
    let tok = t.token("member1", "p1").await;
    for i in 0..7 {
        t.create(&tok, json!({"name": format!("img-{i}"), "disk_format": if i % 2 == 0 { "raw" } else { "qcow2" }, "tags": [format!("t{}", i % 3)]})).await;
    }
    let mut seen = Vec::new();
    let mut next = Some("/v2/images?limit=3&sort=name:asc".to_string());
    while let Some(url) = next {
        let page = t.call(&tok, "GET", &url, None, Body::empty()).await.json();
        for img in page["images"].as_array().unwrap() {
            seen.push(img["name"].as_str().unwrap().to_string());
        }
        next = page["next"].as_str().map(str::to_string);
    }
    assert_eq!(seen, (0..7).map(|i| format!("img-{i}")).collect::<Vec<_>>());
    let raw = t
        .call(
            &tok,
            "GET",
            "/v2/images?disk_format=raw",
            None,
            Body::empty(),
        )
        .await
        .json();
    assert_eq!(raw["images"].as_array().unwrap().len(), 4);
    let tagged = t
        .call(&tok, "GET", "/v2/images?tag=t1", None, Body::empty())
        .await
        .json();
    assert_eq!(tagged["images"].as_array().unwrap().len(), 2);
    let named = t
        .call(
            &tok,
            "GET",
            "/v2/images?name=in:img-1,img-2",
            None,
            Body::empty(),
        )
        .await
        .json();
    assert_eq!(named["images"].as_array().unwrap().len(), 2);
    let r = t
        .call(
            &tok,
            "GET",
            "/v2/images?marker=00000000-0000-0000-0000-000000000000",
            None,
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "unknown marker");
}

#[tokio::test]
async fn non_bare_containers_are_checked_for_safety_not_format() {
    let t = TestApp::new().await;
    let tok = t.token("member1", "p1").await;
    let img = t
        .create(
            &tok,
            json!({"disk_format": "qcow2", "container_format": "ovf"}),
        )
        .await;
    let id = img["id"].as_str().unwrap();
    assert_eq!(
        t.upload(&tok, id, vec![3u8; 4096]).await.status,
        StatusCode::NO_CONTENT
    );
    let shown = t.show(&tok, id).await;
    assert_eq!(shown["status"], "active");
    assert!(
        shown["virtual_size"].is_null(),
        "content is not the declared format, so no virtual size"
    );
    let img = t
        .create(
            &tok,
            json!({"disk_format": "qcow2", "container_format": "ova"}),
        )
        .await;
    let id = img["id"].as_str().unwrap();
    let r = t
        .upload(&tok, id, qcow2_header(64 << 20, Some("/etc/shadow")))
        .await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "a backing file is refused in any container"
    );
    assert!(String::from_utf8_lossy(&r.body).contains("/etc/shadow"));
}
