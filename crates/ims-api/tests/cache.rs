//! The image cache API (`/v2/cache`) on two nodes that share one metadata and image store but
//! each have their own cache directory, as tempest's `alternate_image_endpoint` runs it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use ims_blob::BlobStore;
use ims_core::{App, Config};
use ims_domain::Role;
use ims_meta::MetaStore;
use ims_meta::cloudimages::{CloudImageStore, MemoryCloudImageStore};
use ims_meta::metadefs::{MemoryMetadefStore, MetadefStore};
use serde_json::{Value, json};

use common::{Reply, issue_token, named, send};

struct Node {
    app: Arc<App>,
    router: Router,
    _cache_dir: tempfile::TempDir,
}

/// Two nodes over the same stores, caches enabled, each in its own directory.
async fn two_nodes() -> (Node, Node) {
    let meta: Arc<dyn MetaStore> = Arc::new(ims_meta::memory::MemoryStore::default());
    let metadefs: Arc<dyn MetadefStore> = Arc::new(MemoryMetadefStore::new());
    let blobs: Arc<dyn BlobStore> = Arc::new(ims_blob::memory::MemoryBlobStore::new());
    let cloud: Arc<dyn CloudImageStore> = Arc::new(MemoryCloudImageStore::new());
    let seal = rand::random();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.cache.enabled = true;
        config.cache.dir = Some(dir.path().to_path_buf());
        let app = Arc::new(
            App::with_stores(
                config,
                meta.clone(),
                metadefs.clone(),
                ims_core::stores::Stores::single(blobs.clone(), "memory"),
                cloud.clone(),
                seal,
            )
            .await
            .unwrap(),
        );
        nodes.push(Node {
            router: ims_api::router(app.clone()),
            app,
            _cache_dir: dir,
        });
    }
    let first = &nodes[0].app;
    first.identity.bootstrap(Some("adminpw")).await.unwrap();
    first.identity.create_project("p1").await.unwrap();
    first.identity.create_user("member1", "pw").await.unwrap();
    first
        .identity
        .assign_role(&named("member1"), &named("p1"), Role::Member, true)
        .await
        .unwrap();
    let second = nodes.pop().unwrap();
    (nodes.pop().unwrap(), second)
}

async fn call(
    node: &Node,
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
        req = req.header("content-type", ct);
    }
    send(&node.router, req.body(body.into()).unwrap()).await
}

async fn listing(node: &Node, admin: &str) -> (Vec<Value>, Vec<Value>) {
    let r = call(node, admin, "GET", "/v2/cache", None, Body::empty()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let v = r.json();
    (
        v["cached_images"].as_array().unwrap().clone(),
        v["queued_images"].as_array().unwrap().clone(),
    )
}

async fn create_image(node: &Node, token: &str, data: Option<&[u8]>) -> String {
    let body = json!({"name": "c", "disk_format": "raw", "container_format": "bare"});
    let r = call(
        node,
        token,
        "POST",
        "/v2/images",
        Some("application/json"),
        body.to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let id = r.json()["id"].as_str().unwrap().to_string();
    if let Some(data) = data {
        let r = call(
            node,
            token,
            "PUT",
            &format!("/v2/images/{id}/file"),
            Some("application/octet-stream"),
            data.to_vec(),
        )
        .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    }
    id
}

#[tokio::test]
async fn cache_cycle_on_two_nodes() {
    let (a, b) = two_nodes().await;
    let admin = issue_token(&a.router, "admin", "adminpw", "admin").await;
    let member = issue_token(&a.router, "member1", "pw", "p1").await;

    // Admin only; unknown images 404; images without data 400.
    let r = call(&a, &member, "GET", "/v2/cache", None, Body::empty()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = call(
        &a,
        &admin,
        "PUT",
        "/v2/cache/non-existing-image-id",
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let queued = create_image(&a, &member, None).await;
    let r = call(
        &a,
        &admin,
        "PUT",
        &format!("/v2/cache/{queued}"),
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Queue on node A: the prefetcher fills A's cache only.
    let data = b"cached image bytes".to_vec();
    let id = create_image(&a, &member, Some(&data)).await;
    let r = call(
        &a,
        &admin,
        "PUT",
        &format!("/v2/cache/{id}"),
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let (cached, queue) = listing(&a, &admin).await;
    assert!(cached.is_empty());
    assert_eq!(queue, vec![json!(id)]);
    a.app.images.prefetch_queued().await;
    let (cached, queue) = listing(&a, &admin).await;
    assert!(queue.is_empty());
    assert_eq!(cached.len(), 1);
    assert_eq!(cached[0]["image_id"], json!(id));
    assert_eq!(cached[0]["size"], json!(data.len()));
    assert_eq!(cached[0]["hits"], json!(0));
    assert_eq!(
        listing(&b, &admin).await,
        (vec![], vec![]),
        "node B has its own cache"
    );

    // A download on A is a hit; a download on B fills B's cache.
    let r = call(
        &a,
        &member,
        "GET",
        &format!("/v2/images/{id}/file"),
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(r.body.as_ref(), data.as_slice());
    assert_eq!(listing(&a, &admin).await.0[0]["hits"], json!(1));
    let r = call(
        &b,
        &member,
        "GET",
        &format!("/v2/images/{id}/file"),
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(r.body.as_ref(), data.as_slice());
    let mut filled = false;
    for _ in 0..200 {
        if !listing(&b, &admin).await.0.is_empty() {
            filled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(filled, "a download fills the node's cache");
    let r = call(
        &b,
        &member,
        "GET",
        &format!("/v2/images/{id}/file"),
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(r.body.as_ref(), data.as_slice());
    let r = Request::get(format!("/v2/images/{id}/file"))
        .header("x-auth-token", &member)
        .header("range", "bytes=2-5")
        .body(Body::empty())
        .unwrap();
    let r = send(&b.router, r).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body.as_ref(), &data[2..6]);

    // Clear: a bad target is 400; clearing B leaves A alone.
    let bad = Request::delete("/v2/cache")
        .header("x-auth-token", &admin)
        .header("x-image-cache-clear-target", "invalid")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&b.router, bad).await.status, StatusCode::BAD_REQUEST);
    let r = call(&b, &admin, "DELETE", "/v2/cache", None, Body::empty()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(listing(&b, &admin).await, (vec![], vec![]));
    assert_eq!(listing(&a, &admin).await.0.len(), 1);

    // Queue-only clear keeps cached images; deleting one entry removes it.
    let r = call(
        &a,
        &admin,
        "PUT",
        &format!("/v2/cache/{id}"),
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "queueing a cached image is a no-op"
    );
    let r = call(
        &a,
        &admin,
        "DELETE",
        &format!("/v2/cache/{id}"),
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(listing(&a, &admin).await, (vec![], vec![]));

    // Deleting the image drops it from this node's cache.
    let r = call(
        &a,
        &admin,
        "PUT",
        &format!("/v2/cache/{id}"),
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    a.app.images.prefetch_queued().await;
    assert_eq!(listing(&a, &admin).await.0.len(), 1);
    let r = call(
        &a,
        &member,
        "DELETE",
        &format!("/v2/images/{id}"),
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(listing(&a, &admin).await, (vec![], vec![]));
}

#[tokio::test]
async fn cache_routes_are_404_when_disabled() {
    let app = Arc::new(App::in_memory(Config::default()).await);
    app.identity.bootstrap(Some("adminpw")).await.unwrap();
    let router = ims_api::router(app);
    let admin = issue_token(&router, "admin", "adminpw", "admin").await;
    let r = send(
        &router,
        Request::get("/v2/cache")
            .header("x-auth-token", &admin)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
