//! In-process import tests: staging and glance-direct, web-download from a loopback file server
//! (exempted by config), failures that put the image back, and the task views over the jobs.

#[allow(dead_code)] // the shared harness; this file does not use every helper
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use ims_core::{App, Config};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use common::{Reply, issue_token, send};

/// A loopback server answering `/image` with `data` and anything else with 404.
async fn file_server(data: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let data = Arc::new(data);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let data = data.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                if head.split_whitespace().nth(1) == Some("/image") {
                    let h = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        data.len()
                    );
                    let _ = conn.write_all(h.as_bytes()).await;
                    let _ = conn.write_all(&data).await;
                } else {
                    let _ = conn
                        .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                        .await;
                }
            });
        }
    });
    addr
}

struct Node {
    router: Router,
    token: String,
    _workers: ims_jobs::runner::RunnerHandle,
}

async fn node(exempt: Option<SocketAddr>) -> Node {
    let mut config = Config::default();
    if let Some(addr) = exempt {
        config.import.allowed_ports.push(addr.port());
        config.import.exempt_targets.push(addr);
    }
    let app = Arc::new(App::in_memory(config).await);
    app.identity.bootstrap(Some("adminpw")).await.unwrap();
    let workers = app.start_workers("test");
    let router = ims_api::router(app);
    let token = issue_token(&router, "admin", "adminpw", "admin").await;
    Node {
        router,
        token,
        _workers: workers,
    }
}

impl Node {
    async fn call(
        &self,
        method: &str,
        path: &str,
        ct: Option<&str>,
        body: impl Into<Body>,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("x-auth-token", &self.token);
        if let Some(ct) = ct {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        send(&self.router, req.body(body.into()).unwrap()).await
    }

    async fn json(&self, path: &str) -> Value {
        let r = self.call("GET", path, None, Body::empty()).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        r.json()
    }

    async fn create_raw(&self) -> String {
        let body = json!({"name": "i", "disk_format": "raw", "container_format": "bare"});
        let r = self
            .call(
                "POST",
                "/v2/images",
                Some("application/json"),
                body.to_string(),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        r.json()["id"].as_str().unwrap().to_owned()
    }

    async fn import(&self, id: &str, method: Value) -> Reply {
        let body = json!({ "method": method }).to_string();
        self.call(
            "POST",
            &format!("/v2/images/{id}/import"),
            Some("application/json"),
            body,
        )
        .await
    }

    /// Polls the image's tasks until every one finished; returns them and the image.
    async fn wait_tasks(&self, id: &str) -> (Vec<Value>, Value) {
        for _ in 0..500 {
            let tasks = self.json(&format!("/v2/images/{id}/tasks")).await["tasks"]
                .as_array()
                .unwrap()
                .clone();
            if !tasks.is_empty()
                && tasks
                    .iter()
                    .all(|t| t["status"] == "success" || t["status"] == "failure")
            {
                return (tasks, self.json(&format!("/v2/images/{id}")).await);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("tasks of {id} did not finish");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glance_direct_import_publishes_the_staged_data() {
    let n = node(None).await;
    let info = n.json("/v2/info/import").await;
    assert_eq!(
        info["import-methods"]["value"],
        json!(["glance-direct", "web-download"])
    );
    let id = n.create_raw().await;
    let data = vec![7u8; 100_000];
    let r = n
        .call(
            "PUT",
            &format!("/v2/images/{id}/stage"),
            Some("application/octet-stream"),
            data.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        n.json(&format!("/v2/images/{id}")).await["status"],
        "uploading"
    );
    // Staging twice is refused: the image is no longer queued.
    let r = n
        .call(
            "PUT",
            &format!("/v2/images/{id}/stage"),
            Some("application/octet-stream"),
            vec![1u8],
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = n.import(&id, json!({"name": "glance-direct"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let request_id = r.headers["x-openstack-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let (tasks, image) = n.wait_tasks(&id).await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["status"], "success", "{}", tasks[0]);
    assert_eq!(tasks[0]["request_id"], request_id.as_str());
    assert_eq!(tasks[0]["type"], "api_image_import");
    assert_eq!(
        tasks[0]["input"]["import_req"]["method"]["name"],
        "glance-direct"
    );
    assert_eq!(image["status"], "active");
    assert_eq!(image["size"], 100_000);
    assert_eq!(image["checksum"].as_str().map(str::len), Some(32));
    assert!(
        image.get("os_glance_import_task").is_none(),
        "lock released: {image}"
    );
    let download = n
        .call("GET", &format!("/v2/images/{id}/file"), None, Body::empty())
        .await;
    assert_eq!(download.body.as_ref(), data.as_slice());
    let task_id = tasks[0]["id"].as_str().unwrap();
    let task = n.json(&format!("/v2/tasks/{task_id}")).await;
    assert_eq!(task["image_id"], id.as_str());
    let listed = n.json("/v2/tasks").await;
    assert!(
        listed["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == task_id)
    );
    // A second import of an active image is refused.
    let r = n.import(&id, json!({"name": "glance-direct"})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_download_fetches_from_an_exempt_server_and_refuses_others() {
    let data = b"0123456789".repeat(5000);
    let server = file_server(data.clone()).await;
    let n = node(Some(server)).await;
    let id = n.create_raw().await;
    let uri = format!("http://{server}/image");
    let r = n
        .import(&id, json!({"name": "web-download", "uri": uri}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let (tasks, image) = n.wait_tasks(&id).await;
    assert_eq!(tasks[0]["status"], "success", "{}", tasks[0]);
    assert_eq!(image["status"], "active");
    assert_eq!(image["size"], data.len());

    // Loopback on another port, or by another spelling: refused at the call, image untouched.
    let other = n.create_raw().await;
    for uri in [
        format!("http://127.0.0.2:{}/image", server.port()),
        format!("http://[::ffff:127.0.0.1]:{}/image", server.port()),
        "http://localhost/image".to_string(),
        "http://0x7f000001/image".to_string(),
    ] {
        let r = n
            .import(&other, json!({"name": "web-download", "uri": uri}))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}: {:?}", r.body);
    }
    assert_eq!(
        n.json(&format!("/v2/images/{other}")).await["status"],
        "queued"
    );

    // A source that fails puts the image back to queued and says which stores failed.
    let r = n
        .import(
            &other,
            json!({"name": "web-download", "uri": format!("http://{server}/missing")}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let (tasks, image) = n.wait_tasks(&other).await;
    assert_eq!(tasks[0]["status"], "failure");
    assert!(
        tasks[0]["message"].as_str().unwrap().contains("404"),
        "{}",
        tasks[0]
    );
    assert_eq!(image["status"], "queued");
    assert_eq!(image["os_glance_failed_import"], "local");
    assert!(image.get("os_glance_import_task").is_none());
}

#[tokio::test]
async fn import_requests_are_validated() {
    let n = node(None).await;
    let id = n.create_raw().await;
    // glance-direct needs staged data first.
    let r = n.import(&id, json!({"name": "glance-direct"})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    for method in [json!({"name": "nope"}), json!({"name": "web-download"})] {
        let r = n.import(&id, method.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{method}");
    }
    let r = n
        .import(
            &uuid::Uuid::new_v4().to_string(),
            json!({"name": "glance-direct"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = n
        .call(
            "GET",
            &format!("/v2/tasks/{}", uuid::Uuid::new_v4()),
            None,
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
