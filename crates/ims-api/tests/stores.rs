//! In-process multi-store tests: `/v2/info/stores` (and detail), the store chosen on upload
//! and import (`X-Image-Meta-Store`, `stores`, `all_stores`), the `stores` property in weight
//! order, weighted reads that fall back to the next store, `copy-image`, and
//! `DELETE /v2/stores/{store}/{id}` with Glance's refusals.

#[allow(dead_code)] // the shared harness; this file does not use every helper
mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use ims_blob::BlobKey;
use ims_core::config::{StoreEntry, StoreKind};
use ims_core::{App, Config};
use ims_domain::Role;
use serde_json::{Value, json};

use common::{Reply, issue_token, named, send};

fn entry(id: &str, weight: i64, default: bool, read_only: bool) -> StoreEntry {
    StoreEntry {
        id: id.into(),
        description: Some(format!("{id} store")),
        weight,
        default,
        read_only,
        kind: StoreKind::Local,
        path: None,
        s3: None,
    }
}

/// `fs` (weight 100, default), `fs2` (50) and the read-only `web` (10).
fn multi_store_config() -> Config {
    Config {
        stores: vec![
            entry("fs2", 50, false, false),
            entry("fs", 100, true, false),
            entry("web", 10, false, true),
        ],
        ..Config::default()
    }
}

struct Node {
    router: Router,
    app: Arc<App>,
    admin: String,
    member: String,
    _workers: ims_jobs::runner::RunnerHandle,
}

async fn node(config: Config) -> Node {
    let app = Arc::new(App::in_memory(config).await);
    app.identity.bootstrap(Some("adminpw")).await.unwrap();
    app.identity.create_project("p1").await.unwrap();
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
        _workers: workers,
    }
}

impl Node {
    async fn call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("x-auth-token", token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        send(&self.router, req.body(body.into()).unwrap()).await
    }

    async fn show(&self, id: &str) -> Value {
        let r = self
            .call(
                &self.member,
                "GET",
                &format!("/v2/images/{id}"),
                &[],
                Body::empty(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        r.json()
    }

    async fn create(&self) -> Reply {
        let body = json!({"name": "i", "disk_format": "raw", "container_format": "bare"});
        let json = [(header::CONTENT_TYPE.as_str(), "application/json")];
        let r = self
            .call(&self.member, "POST", "/v2/images", &json, body.to_string())
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        r
    }

    async fn create_id(&self) -> String {
        self.create().await.json()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn upload(&self, id: &str, store: Option<&str>, data: &[u8]) -> Reply {
        let mut headers = vec![(header::CONTENT_TYPE.as_str(), "application/octet-stream")];
        if let Some(store) = store {
            headers.push(("x-image-meta-store", store));
        }
        self.call(
            &self.member,
            "PUT",
            &format!("/v2/images/{id}/file"),
            &headers,
            data.to_vec(),
        )
        .await
    }

    async fn stage(&self, id: &str, data: &[u8]) {
        let headers = [(header::CONTENT_TYPE.as_str(), "application/octet-stream")];
        let r = self
            .call(
                &self.member,
                "PUT",
                &format!("/v2/images/{id}/stage"),
                &headers,
                data.to_vec(),
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
    }

    async fn import(&self, token: &str, id: &str, body: Value) -> Reply {
        let json = [(header::CONTENT_TYPE.as_str(), "application/json")];
        self.call(
            token,
            "POST",
            &format!("/v2/images/{id}/import"),
            &json,
            body.to_string(),
        )
        .await
    }

    async fn download(&self, id: &str) -> Reply {
        self.call(
            &self.member,
            "GET",
            &format!("/v2/images/{id}/file"),
            &[],
            Body::empty(),
        )
        .await
    }

    /// Polls until the image's import lock is released; returns the image.
    async fn wait_import(&self, id: &str) -> Value {
        for _ in 0..500 {
            let image = self.show(id).await;
            if image.get("os_glance_import_task").is_none() {
                return image;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("import of {id} did not finish");
    }

    async fn tasks(&self, id: &str) -> Vec<Value> {
        let r = self
            .call(
                &self.member,
                "GET",
                &format!("/v2/images/{id}/tasks"),
                &[],
                Body::empty(),
            )
            .await;
        r.json()["tasks"].as_array().unwrap().clone()
    }

    async fn del(&self, token: &str, store: &str, image: &str) -> StatusCode {
        let path = format!("/v2/stores/{store}/{image}");
        self.call(token, "DELETE", &path, &[], Body::empty())
            .await
            .status
    }

    /// The keys of the image's blobs in `store`.
    async fn blobs_in(&self, store: &str, id: &str) -> Vec<BlobKey> {
        let blobs = &self.app.images.stores().get(store).unwrap().blobs;
        let prefix = format!("images/{id}/");
        let listed = blobs.list().await.unwrap();
        listed
            .into_iter()
            .filter(|b| b.key.as_str().starts_with(&prefix))
            .map(|b| b.key)
            .collect()
    }

    async fn blob_in(&self, store: &str, id: &str) -> bool {
        !self.blobs_in(store, id).await.is_empty()
    }
}

const DATA: &[u8] = &[7u8; 4096];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_stores_lists_the_stores_by_weight() {
    let single = node(Config::default()).await;
    let r = single
        .call(&single.member, "GET", "/v2/info/stores", &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let methods = single
        .call(&single.member, "GET", "/v2/info/import", &[], Body::empty())
        .await
        .json();
    assert!(
        !methods.to_string().contains("copy-image"),
        "one store, nothing to copy to: {methods}"
    );

    let n = node(multi_store_config()).await;
    let r = n
        .call(&n.member, "GET", "/v2/info/stores", &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"stores": [
            {"id": "fs", "description": "fs store", "default": "true", "weight": 100},
            {"id": "fs2", "description": "fs2 store", "weight": 50},
            {"id": "web", "description": "web store", "read-only": "true", "weight": 10},
        ]})
    );
    let r = n
        .call(
            &n.member,
            "GET",
            "/v2/info/stores/detail",
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let detail = n
        .call(
            &n.admin,
            "GET",
            "/v2/info/stores/detail",
            &[],
            Body::empty(),
        )
        .await
        .json();
    assert_eq!(detail["stores"][0]["type"], "file");
    assert_eq!(detail["stores"][0]["weight"], 100);
    assert!(detail["stores"][0]["properties"].is_object());
    let methods = n
        .call(&n.member, "GET", "/v2/info/import", &[], Body::empty())
        .await
        .json();
    assert_eq!(
        methods["import-methods"]["value"],
        json!(["glance-direct", "web-download", "copy-image"])
    );
    let created = n.create().await;
    assert_eq!(
        created.headers.get("openstack-image-store-ids").unwrap(),
        "fs,fs2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_goes_to_the_chosen_or_default_store() {
    let n = node(multi_store_config()).await;
    let id = n.create_id().await;
    assert!(n.show(&id).await.get("stores").is_none(), "no data yet");
    assert_eq!(
        n.upload(&id, Some("nowhere"), DATA).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        n.upload(&id, Some("web"), DATA).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(n.show(&id).await["status"], "queued");
    assert_eq!(
        n.upload(&id, Some("fs2"), DATA).await.status,
        StatusCode::NO_CONTENT
    );
    let image = n.show(&id).await;
    assert_eq!(image["stores"], "fs2");
    assert!(n.blob_in("fs2", &id).await && !n.blob_in("fs", &id).await);
    assert_eq!(n.download(&id).await.body, DATA);

    let id = n.create_id().await;
    assert_eq!(
        n.upload(&id, None, DATA).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(n.show(&id).await["stores"], "fs");

    // A single-store node shows no `stores` and has no store to choose.
    let single = node(Config::default()).await;
    let id = single.create_id().await;
    assert_eq!(
        single.upload(&id, None, DATA).await.status,
        StatusCode::NO_CONTENT
    );
    assert!(single.show(&id).await.get("stores").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glance_direct_imports_to_all_or_named_stores() {
    let n = node(multi_store_config()).await;
    let id = n.create_id().await;
    n.stage(&id, DATA).await;
    let r = n
        .import(
            &n.member,
            &id,
            json!({"method": {"name": "glance-direct"}, "stores": ["nowhere"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "unknown store");
    let r = n
        .import(
            &n.member,
            &id,
            json!({"method": {"name": "glance-direct"}, "stores": ["web"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "read-only store");
    let r = n
        .import(
            &n.member,
            &id,
            json!({"method": {"name": "glance-direct"}, "all_stores": true}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let image = n.wait_import(&id).await;
    assert_eq!(image["status"], "active");
    assert_eq!(
        image["stores"], "fs,fs2",
        "weight order, read-only store skipped"
    );
    assert_eq!(image["os_glance_importing_to_stores"], "");
    assert_eq!(image["os_glance_failed_import"], "");
    assert!(n.blob_in("fs", &id).await && n.blob_in("fs2", &id).await);
    let tasks = n.tasks(&id).await;
    assert_eq!(tasks[0]["input"]["backend"], json!(["fs", "fs2"]));
    assert_eq!(tasks[0]["result"]["stores"], json!(["fs", "fs2"]));

    let id = n.create_id().await;
    n.stage(&id, DATA).await;
    let r = n
        .call(
            &n.member,
            "POST",
            &format!("/v2/images/{id}/import"),
            &[
                (header::CONTENT_TYPE.as_str(), "application/json"),
                ("x-image-meta-store", "fs2"),
            ],
            json!({"method": {"name": "glance-direct"}}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let image = n.wait_import(&id).await;
    assert_eq!(image["stores"], "fs2");
    assert_eq!(n.download(&id).await.body, DATA);

    let single = node(Config::default()).await;
    let id = single.create_id().await;
    single.stage(&id, DATA).await;
    let r = single
        .import(
            &single.member,
            &id,
            json!({"method": {"name": "glance-direct"}, "all_stores_must_succeed": false}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "only with several stores"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_image_adds_stores_for_admins_only() {
    let n = node(multi_store_config()).await;
    let id = n.create_id().await;
    let copy_all = json!({"method": {"name": "copy-image"}, "all_stores": true,
                          "all_stores_must_succeed": false});
    assert_eq!(
        n.import(&n.admin, &id, copy_all.clone()).await.status,
        StatusCode::CONFLICT,
        "queued image: nothing to copy"
    );
    assert_eq!(
        n.upload(&id, None, DATA).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        n.import(&n.member, &id, copy_all.clone()).await.status,
        StatusCode::FORBIDDEN
    );
    let to_fs = json!({"method": {"name": "copy-image"}, "stores": ["fs"]});
    assert_eq!(
        n.import(&n.admin, &id, to_fs).await.status,
        StatusCode::BAD_REQUEST,
        "fs already holds it"
    );
    assert_eq!(
        n.import(&n.admin, &id, copy_all.clone()).await.status,
        StatusCode::ACCEPTED
    );
    let image = n.wait_import(&id).await;
    assert_eq!(image["status"], "active");
    assert_eq!(image["stores"], "fs,fs2");
    assert_eq!(image["os_glance_importing_to_stores"], "");
    assert_eq!(image["os_glance_failed_import"], "");
    assert!(n.blob_in("fs2", &id).await);
    assert_eq!(n.tasks(&id).await.len(), 1);
    // Every store holds it now: accepted, and no task is started.
    assert_eq!(
        n.import(&n.admin, &id, copy_all).await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(n.tasks(&id).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_from_store_follows_glances_rules_and_reads_fall_back() {
    let n = node(multi_store_config()).await;
    let id = n.create_id().await;
    n.stage(&id, DATA).await;
    let all = json!({"method": {"name": "glance-direct"}, "all_stores": true});
    assert_eq!(
        n.import(&n.member, &id, all).await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(n.wait_import(&id).await["stores"], "fs,fs2");

    // The highest-weight store lost the blob: the read falls back to the next store.
    let key = n.blobs_in("fs", &id).await.remove(0);
    let fs = n.app.images.stores().get("fs").unwrap().blobs.clone();
    let saved: Vec<u8> = DATA.to_vec();
    fs.delete(&key).await.unwrap();
    assert_eq!(n.download(&id).await.body, saved);

    assert_eq!(
        n.del(&n.member, "fs", &id).await,
        StatusCode::FORBIDDEN,
        "admin only"
    );
    assert_eq!(n.del(&n.admin, "nowhere", &id).await, StatusCode::CONFLICT);
    assert_eq!(
        n.del(&n.admin, "fs", &uuid::Uuid::new_v4().to_string())
            .await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        n.del(&n.admin, "web", &id).await,
        StatusCode::NOT_FOUND,
        "not held there"
    );
    assert_eq!(n.del(&n.admin, "fs", &id).await, StatusCode::NO_CONTENT);
    assert_eq!(n.show(&id).await["stores"], "fs2");
    assert_eq!(n.download(&id).await.body, saved);
    assert_eq!(
        n.del(&n.admin, "fs2", &id).await,
        StatusCode::FORBIDDEN,
        "the last copy"
    );
    assert!(n.blob_in("fs2", &id).await);

    let queued = n.create_id().await;
    assert_eq!(
        n.del(&n.admin, "fs", &queued).await,
        StatusCode::CONFLICT,
        "not active"
    );

    let single = node(Config::default()).await;
    let id = single.create_id().await;
    let path = format!("/v2/stores/local/{id}");
    let r = single
        .call(&single.admin, "DELETE", &path, &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_image_deletes_its_data_in_every_store() {
    let n = node(multi_store_config()).await;
    let id = n.create_id().await;
    n.stage(&id, DATA).await;
    let all = json!({"method": {"name": "glance-direct"}, "all_stores": true});
    assert_eq!(
        n.import(&n.member, &id, all).await.status,
        StatusCode::ACCEPTED
    );
    n.wait_import(&id).await;
    let fs = n.app.images.stores().get("fs").unwrap().blobs.clone();
    let fs2 = n.app.images.stores().get("fs2").unwrap().blobs.clone();
    assert_eq!(fs2.list().await.unwrap().len(), 1);
    let r = n
        .call(
            &n.member,
            "DELETE",
            &format!("/v2/images/{id}"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(fs.list().await.unwrap().is_empty());
    assert!(fs2.list().await.unwrap().is_empty());
}

/// `glance-download`: a node reads an image from its own catalog endpoint (a real listener, as
/// the user who asked), taking the data, the formats and Glance's property prefixes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glance_download_reads_an_image_of_the_catalog_endpoint() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = multi_store_config();
    config.public_url = Some(format!("http://{}", listener.local_addr().unwrap()));
    config
        .import
        .methods
        .push(ims_core::config::ImportMethod::GlanceDownload);
    let n = node(config).await;
    let server = n.router.clone();
    tokio::spawn(async move { axum::serve(listener, server).await });

    let src = n.create_id().await;
    assert_eq!(
        n.upload(&src, Some("fs2"), DATA).await.status,
        StatusCode::NO_CONTENT
    );
    let patch = json!([
        {"op": "add", "path": "/hw_cpu_cores", "value": "5"},
        {"op": "add", "path": "/os_distro", "value": "rhel"},
        {"op": "add", "path": "/speed", "value": "88mph"},
    ]);
    let ct = [(
        header::CONTENT_TYPE.as_str(),
        "application/openstack-images-v2.1-json-patch",
    )];
    let r = n
        .call(
            &n.member,
            "PATCH",
            &format!("/v2/images/{src}"),
            &ct,
            patch.to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    let download = |region: &str, image: &str| {
        json!({"method": {"name": "glance-download", "glance_image_id": image,
                          "glance_region": region, "glance_service_interface": "public"}})
    };
    let dst = n.create_id().await;
    let r = n
        .import(&n.member, &dst, download("RegionOne", "foo"))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&r.body).contains("image id does not look like a UUID"));
    let r = n.import(&n.member, &dst, download("RegionOne", &src)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let image = n.wait_import(&dst).await;
    assert_eq!(image["status"], "active", "{image}");
    assert_eq!(image["stores"], "fs");
    assert_eq!(
        (&image["disk_format"], &image["container_format"]),
        (&json!("raw"), &json!("bare"))
    );
    assert_eq!(
        (&image["hw_cpu_cores"], &image["os_distro"]),
        (&json!("5"), &json!("rhel"))
    );
    assert!(image.get("speed").is_none(), "not a copied property");
    assert_eq!(n.download(&dst).await.body, DATA);

    for (region, source) in [
        ("not a region", src.clone()),
        ("RegionOne", uuid::Uuid::new_v4().to_string()),
    ] {
        let dst = n.create_id().await;
        let r = n.import(&n.member, &dst, download(region, &source)).await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        let image = n.wait_import(&dst).await;
        assert_eq!(image["status"], "queued", "{region} {source}: {image}");
        assert_eq!(n.tasks(&dst).await[0]["status"], "failure");
    }
}
