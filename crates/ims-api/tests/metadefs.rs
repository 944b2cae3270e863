//! In-process API tests for `/v2/metadefs`: the router over in-memory stores, driven the way
//! tempest's admin metadef tests and glanceclient drive it.

mod common;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use ims_core::{App, Config};
use ims_domain::Role;
use serde_json::{Value, json};

use common::{Reply, issue_token, named, send};

struct TestApp {
    router: Router,
    admin: String,
    reader: String,
    other: String,
}

impl TestApp {
    async fn new() -> TestApp {
        let app = Arc::new(App::in_memory(Config::default()).await);
        app.identity.bootstrap(Some("adminpw")).await.unwrap();
        for (project, user, role) in [
            ("p1", "reader1", Role::Reader),
            ("p2", "member2", Role::Member),
        ] {
            app.identity.create_project(project).await.unwrap();
            app.identity.create_user(user, "pw").await.unwrap();
            app.identity
                .assign_role(&named(user), &named(project), role, true)
                .await
                .unwrap();
        }
        let mut t = TestApp {
            router: ims_api::router(app),
            admin: String::new(),
            reader: String::new(),
            other: String::new(),
        };
        t.admin = t.token("admin", "adminpw", "admin").await;
        t.reader = t.token("reader1", "pw", "p1").await;
        t.other = t.token("member2", "pw", "p2").await;
        t
    }

    async fn send(&self, req: Request<Body>) -> Reply {
        send(&self.router, req).await
    }

    async fn token(&self, user: &str, pw: &str, project: &str) -> String {
        issue_token(&self.router, user, pw, project).await
    }

    async fn call(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("x-auth-token", token);
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.send(req.body(body).unwrap()).await
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>, want: StatusCode) -> Value {
        let r = self.call(&self.admin, method, path, body).await;
        assert_eq!(
            r.status,
            want,
            "{method} {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        if r.body.is_empty() {
            Value::Null
        } else {
            r.json()
        }
    }

    async fn create_namespace(&self, name: &str, extra: Value) -> Value {
        let mut body = json!({"namespace": name, "visibility": "public", "description": "Tempest",
                              "protected": false, "display_name": name});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        self.ok(
            "POST",
            "/v2/metadefs/namespaces",
            Some(body),
            StatusCode::CREATED,
        )
        .await
    }
}

#[tokio::test]
async fn resource_types_are_seeded_and_namespaces_listed() {
    let t = TestApp::new().await;
    let types = t
        .ok("GET", "/v2/metadefs/resource_types", None, StatusCode::OK)
        .await;
    let names: Vec<&str> = types["resource_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for rt in [
        "OS::Glance::Image",
        "OS::Cinder::Volume",
        "OS::Nova::Flavor",
        "OS::Nova::Aggregate",
        "OS::Nova::Server",
        "OS::Trove::Instance",
    ] {
        assert!(names.contains(&rt), "{rt} missing from {names:?}");
    }
    assert!(
        types["resource_types"][0]["created_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );

    let list = t
        .ok("GET", "/v2/metadefs/namespaces", None, StatusCode::OK)
        .await;
    assert_eq!(list["schema"], "/v2/schemas/metadefs/namespaces");
    assert_eq!(list["first"], "/v2/metadefs/namespaces");
    assert!(list["namespaces"].as_array().unwrap().len() >= 3);

    let page = t
        .ok(
            "GET",
            "/v2/metadefs/namespaces?limit=1&sort_dir=asc&sort_key=namespace",
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(page["namespaces"].as_array().unwrap().len(), 1);
    assert_eq!(
        page["first"],
        "/v2/metadefs/namespaces?limit=1&sort_dir=asc&sort_key=namespace"
    );
    let next = page["next"].as_str().unwrap();
    assert!(next.contains("marker="), "{next}");
    let page2 = t.ok("GET", next, None, StatusCode::OK).await;
    assert_ne!(
        page2["namespaces"][0]["namespace"],
        page["namespaces"][0]["namespace"]
    );

    let by_rt = t
        .ok(
            "GET",
            "/v2/metadefs/namespaces?resource_types=OS::Nova::Flavor",
            None,
            StatusCode::OK,
        )
        .await;
    for ns in by_rt["namespaces"].as_array().unwrap() {
        let rts = ns["resource_type_associations"].as_array().unwrap();
        assert!(rts.iter().any(|a| a["name"] == "OS::Nova::Flavor"));
    }
    let r = t
        .call(
            &t.admin,
            "GET",
            "/v2/metadefs/namespaces?visibility=shared",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn namespace_lifecycle_like_tempest() {
    let t = TestApp::new().await;
    let created = t
        .create_namespace("tempest-ns", json!({"protected": true, "resource_type_associations": [{"name": "OS::Glance::Image"}]}))
        .await;
    assert_eq!(created["namespace"], "tempest-ns");
    assert_eq!(created["self"], "/v2/metadefs/namespaces/tempest-ns");
    assert!(created["owner"].is_string());
    let dup = t
        .call(
            &t.admin,
            "POST",
            "/v2/metadefs/namespaces",
            Some(json!({"namespace": "tempest-ns"})),
        )
        .await;
    assert_eq!(dup.status, StatusCode::CONFLICT);

    let shown = t
        .ok(
            "GET",
            "/v2/metadefs/namespaces/tempest-ns",
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(shown["visibility"], "public");
    assert_eq!(
        shown["resource_type_associations"][0]["name"],
        "OS::Glance::Image"
    );

    let r = t
        .call(
            &t.admin,
            "DELETE",
            "/v2/metadefs/namespaces/tempest-ns",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let updated = t
        .ok(
            "PUT",
            "/v2/metadefs/namespaces/tempest-ns",
            Some(
                json!({"namespace": "tempest-ns", "description": "Tempest", "visibility": "private",
                        "display_name": "tempest-ns", "protected": false}),
            ),
            StatusCode::OK,
        )
        .await;
    assert_eq!(updated["visibility"], "private");
    assert_eq!(updated["protected"], false);

    t.ok(
        "DELETE",
        "/v2/metadefs/namespaces/tempest-ns",
        None,
        StatusCode::NO_CONTENT,
    )
    .await;
    let r = t
        .call(&t.admin, "GET", "/v2/metadefs/namespaces/tempest-ns", None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let r = t
        .call(
            &t.admin,
            "POST",
            "/v2/metadefs/namespaces",
            Some(json!({"namespace": "x", "self": "y"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn objects_properties_tags_and_associations() {
    let t = TestApp::new().await;
    t.create_namespace("ns", json!({})).await;
    let base = "/v2/metadefs/namespaces/ns";

    let obj = t
        .ok(
            "POST",
            &format!("{base}/objects"),
            Some(json!({"name": "obj one"})),
            StatusCode::CREATED,
        )
        .await;
    assert_eq!(obj["self"], "/v2/metadefs/namespaces/ns/objects/obj one");
    assert_eq!(obj["schema"], "/v2/schemas/metadefs/object");
    let upd = t
        .ok(
            "PUT",
            &format!("{base}/objects/obj%20one"),
            Some(json!({"name": "obj-two"})),
            StatusCode::OK,
        )
        .await;
    assert_eq!(upd["name"], "obj-two");
    let shown = t
        .ok(
            "GET",
            &format!("{base}/objects/obj-two"),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(shown["name"], "obj-two");
    let list = t
        .ok("GET", &format!("{base}/objects"), None, StatusCode::OK)
        .await;
    assert_eq!(list["objects"].as_array().unwrap().len(), 1);
    t.ok(
        "DELETE",
        &format!("{base}/objects/obj-two"),
        None,
        StatusCode::NO_CONTENT,
    )
    .await;

    let enum_ = json!(["xen", "qemu", "kvm"]);
    t.ok(
        "POST",
        &format!("{base}/resource_types"),
        Some(json!({"name": "OS::Glance::Image"})),
        StatusCode::CREATED,
    )
    .await;
    let prop = t
        .ok("POST", &format!("{base}/properties"),
            Some(json!({"name": "OS::Glance::Image", "title": "T1", "type": "string", "enum": enum_})),
            StatusCode::CREATED)
        .await;
    assert_eq!(prop["title"], "T1");
    let prop = t
        .ok(
            "GET",
            &format!("{base}/properties/OS::Glance::Image"),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(prop["name"], "OS::Glance::Image");
    let prop = t
        .ok("PUT", &format!("{base}/properties/OS::Glance::Image"),
            Some(json!({"name": "OS::Glance::Image", "title": "T2", "type": "string", "enum": enum_})),
            StatusCode::OK)
        .await;
    assert_eq!(prop["title"], "T2");
    let r = t
        .call(
            &t.admin,
            "POST",
            &format!("{base}/properties"),
            Some(json!({"name": "p", "type": "string"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    t.ok(
        "DELETE",
        &format!("{base}/properties/OS::Glance::Image"),
        None,
        StatusCode::NO_CONTENT,
    )
    .await;
    let props = t
        .ok("GET", &format!("{base}/properties"), None, StatusCode::OK)
        .await;
    assert_eq!(props["properties"], json!({}));

    let tags = json!({"tags": [{"name": "sample-tag1"}, {"name": "sample-tag2"}, {"name": "sample-tag3"}]});
    let created = t
        .ok(
            "POST",
            &format!("{base}/tags"),
            Some(tags),
            StatusCode::CREATED,
        )
        .await;
    assert_eq!(created["tags"].as_array().unwrap().len(), 3);
    let tag = t
        .ok(
            "POST",
            &format!("{base}/tags/extra"),
            None,
            StatusCode::CREATED,
        )
        .await;
    assert_eq!(tag["name"], "extra");
    assert!(tag["created_at"].is_string());
    let tag = t
        .ok(
            "PUT",
            &format!("{base}/tags/extra"),
            Some(json!({"name": "renamed"})),
            StatusCode::OK,
        )
        .await;
    assert_eq!(tag["name"], "renamed");
    t.ok(
        "DELETE",
        &format!("{base}/tags/renamed"),
        None,
        StatusCode::NO_CONTENT,
    )
    .await;
    let list = t
        .ok("GET", &format!("{base}/tags"), None, StatusCode::OK)
        .await;
    assert_eq!(list["tags"].as_array().unwrap().len(), 3);
    t.ok(
        "DELETE",
        &format!("{base}/tags"),
        None,
        StatusCode::NO_CONTENT,
    )
    .await;
    let list = t
        .ok("GET", &format!("{base}/tags"), None, StatusCode::OK)
        .await;
    assert_eq!(list["tags"], json!([]));

    let assocs = t
        .ok(
            "GET",
            &format!("{base}/resource_types"),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(
        assocs["resource_type_associations"][0]["name"],
        "OS::Glance::Image"
    );
    t.ok(
        "DELETE",
        &format!("{base}/resource_types/OS::Glance::Image"),
        None,
        StatusCode::NO_CONTENT,
    )
    .await;
    let assocs = t
        .ok(
            "GET",
            &format!("{base}/resource_types"),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(assocs["resource_type_associations"], json!([]));
}

#[tokio::test]
async fn non_admins_read_what_they_may_and_write_nothing() {
    let t = TestApp::new().await;
    t.create_namespace("pub", json!({})).await;
    t.create_namespace(
        "mine",
        json!({"visibility": "private", "owner": "p1-id-placeholder"}),
    )
    .await;

    let r = t
        .call(&t.other, "GET", "/v2/metadefs/namespaces/pub", None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = t
        .call(&t.other, "GET", "/v2/metadefs/namespaces/mine", None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = t
        .call(&t.other, "POST", "/v2/metadefs/namespaces/pub/tags/x", None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = t
        .call(
            &t.other,
            "POST",
            "/v2/metadefs/namespaces",
            Some(json!({"namespace": "n"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = t
        .call(&t.reader, "DELETE", "/v2/metadefs/namespaces/pub", None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = t
        .call(&t.reader, "GET", "/v2/metadefs/resource_types", None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let list = t
        .call(&t.other, "GET", "/v2/metadefs/namespaces", None)
        .await
        .json();
    let names: Vec<&str> = list["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["namespace"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"pub") && !names.contains(&"mine"),
        "{names:?}"
    );
}
