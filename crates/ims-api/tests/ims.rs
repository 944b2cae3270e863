//! In-process tests of the IMS API: requests signed with SDK-HMAC-SHA256 as `huaweicloudsdkcore`
//! signs them, through the router over in-memory stores, and the error bodies the SDK parses.

mod common;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use ims_core::sdk_signature::{SignedRequest, canonical_request, sign};
use ims_core::{App, Config};
use ims_domain::Role;
use serde_json::json;

use common::{Reply, issue_token, named, send};

struct Ims {
    router: Router,
    project: String,
    ak: String,
    sk: String,
}

async fn setup() -> Ims {
    let app = Arc::new(App::in_memory(Config::default()).await);
    app.identity.bootstrap(Some("adminpw")).await.unwrap();
    let project = app.identity.create_project("team").await.unwrap();
    let user = app.identity.create_user("alice", "pw").await.unwrap();
    app.identity
        .assign_role(&named("alice"), &named("team"), Role::Member, true)
        .await
        .unwrap();
    let key = app.access_keys.create(&user.id, None).await.unwrap();
    Ims {
        router: ims_api::router(app),
        project: project.id,
        ak: key.key.access_key,
        sk: key.secret,
    }
}

fn sdk_date(offset_secs: i64) -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::seconds(offset_secs))
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap()
}

impl Ims {
    /// A request signed like the SDK signs it (`sk` overrides the secret, `skew` the date).
    fn signed(
        &self,
        method: &str,
        uri: &str,
        body: &str,
        sk: Option<&str>,
        skew: i64,
    ) -> Request<Body> {
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let date = sdk_date(skew);
        let content_type = if body.is_empty() {
            "application/json"
        } else {
            "application/json;charset=utf-8"
        };
        let headers = [
            ("content-type", content_type.to_string()),
            ("host", "127.0.0.1:9292".to_string()),
            ("user-agent", "huaweicloud-usdk-python/3.0".to_string()),
            ("x-project-id", self.project.clone()),
            ("x-sdk-date", date.clone()),
        ];
        let lookup = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.clone())
        };
        let names: Vec<String> = headers.iter().map(|(k, _)| k.to_string()).collect();
        let request = SignedRequest {
            method,
            raw_path: path,
            raw_query: query,
            header: &lookup,
            body: body.as_bytes(),
        };
        let canonical = canonical_request(&request, &names).unwrap();
        let signature = sign(&canonical, &date, sk.unwrap_or(&self.sk).as_bytes());
        let mut builder = Request::builder().method(method).uri(uri);
        for (k, v) in &headers {
            builder = builder.header(*k, v);
        }
        builder
            .header(
                "authorization",
                format!(
                    "SDK-HMAC-SHA256 Access={}, SignedHeaders={}, Signature={signature}",
                    self.ak,
                    names.join(";")
                ),
            )
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    async fn send(&self, req: Request<Body>) -> Reply {
        send(&self.router, req).await
    }
}

#[tokio::test]
async fn signed_requests_are_served_and_bad_ones_get_the_gateway_body() {
    let ims = setup().await;
    let ok = ims
        .send(ims.signed("GET", "/v1/cloudimages/quota", "", None, 0))
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    assert_eq!(ok.json()["quotas"]["resources"][0]["used"], 0);
    assert!(ok.headers.contains_key("x-request-id"));

    let wrong = ims
        .send(ims.signed("GET", "/v1/cloudimages/quota", "", Some("nope"), 0))
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.json()["error_code"], "APIGW.0301");

    let skewed = ims
        .send(ims.signed("GET", "/v1/cloudimages/quota", "", None, -3600))
        .await;
    assert_eq!(skewed.status, StatusCode::UNAUTHORIZED);
    assert!(
        skewed.json()["error_msg"]
            .as_str()
            .unwrap()
            .contains("seconds")
    );

    let body = json!({"image_id": uuid::Uuid::new_v4().to_string(), "tag": "a.b"}).to_string();
    let change = ims.signed("PUT", "/v1/cloudimages/tags", &body, None, 0);
    let (parts, b) = change.into_parts();
    let again = Request::from_parts(parts.clone(), Body::from(body.clone()));
    let first = ims.send(Request::from_parts(parts, b)).await;
    assert_eq!(first.status, StatusCode::NOT_FOUND, "{:?}", first.body);
    assert_eq!(first.json()["error"]["code"], "IMG.0404");
    let replay = ims.send(again).await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    assert!(
        replay.json()["error_msg"]
            .as_str()
            .unwrap()
            .contains("replay")
    );
}

#[tokio::test]
async fn ims_errors_use_the_ims_body() {
    let ims = setup().await;
    let malformed = ims
        .send(ims.signed("POST", "/v1/cloudimages/members", "{not json", None, 0))
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.json()["error"]["code"], "IMG.0001");

    let bad_type = ims
        .send(ims.signed("GET", "/v2/cloudimages?__imagetype=bogus", "", None, 0))
        .await;
    assert_eq!(bad_type.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_type.json()["error"]["code"], "IMG.0001");

    let other_project = format!("/v2/{}/images/tags", "0".repeat(32));
    let forbidden = ims
        .send(ims.signed("GET", &other_project, "", None, 0))
        .await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert_eq!(forbidden.json()["error"]["code"], "IMG.0403");

    let unsigned = send(
        &ims.router,
        Request::get("/v1/cloudimages/quota")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(unsigned.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unsigned.json()["error_code"], "APIGW.0301");
}

#[tokio::test]
async fn a_token_works_too_and_images_are_shared_between_dialects() {
    let ims = setup().await;
    let token = issue_token(&ims.router, "alice", "pw", "team").await;
    let create = Request::post("/v2/images")
        .header("x-auth-token", &token)
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"name": "both", "disk_format": "raw", "container_format": "bare",
                   "__os_version": "CentOS 7.9 64bit"})
            .to_string(),
        ))
        .unwrap();
    let created = send(&ims.router, create).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(created.json()["__platform"], "CentOS");
    let listed = send(
        &ims.router,
        Request::get("/v2/cloudimages?__platform=CentOS")
            .header("x-auth-token", &token)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(listed.status, StatusCode::OK, "{:?}", listed.body);
    let images = listed.json()["images"].as_array().unwrap().clone();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["__imagetype"], "private");
    assert_eq!(images[0]["__os_bit"], "64");
    assert_eq!(images[0]["__image_size"], "0");
}

/// Lists `/v2/cloudimages?<query>` with a token; the names of the images, sorted.
async fn list_names(ims: &Ims, token: &str, query: &str) -> Result<Vec<String>, Reply> {
    let reply = send(
        &ims.router,
        Request::get(format!("/v2/cloudimages?{query}"))
            .header("x-auth-token", token)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    if reply.status != StatusCode::OK {
        return Err(reply);
    }
    let mut names: Vec<String> = reply.json()["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    Ok(names)
}

async fn glance_create(ims: &Ims, token: &str, body: serde_json::Value) {
    let create = Request::post("/v2/images")
        .header("x-auth-token", token)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let created = send(&ims.router, create).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
}

#[tokio::test]
async fn enterprise_project_and_flavor_filters() {
    let ims = setup().await;
    let token = issue_token(&ims.router, "alice", "pw", "team").await;
    let admin = issue_token(&ims.router, "admin", "adminpw", "admin").await;
    let ep = uuid::Uuid::new_v4().to_string();
    // `__os_version` makes them IMS images (the service fills in `__imagetype` and the rest).
    let base = json!({"disk_format": "raw", "container_format": "bare",
                      "__os_version": "CentOS 7.9 64bit"});
    let with = |extra: serde_json::Value| {
        let mut body = base.clone();
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    glance_create(
        &ims,
        &token,
        with(json!({"name": "arm-ep", "architecture": "arm", "enterprise_project_id": ep})),
    )
    .await;
    glance_create(
        &ims,
        &token,
        with(json!({"name": "disk", "__support_diskintensive": "true"})),
    )
    .await;
    glance_create(&ims, &token, with(json!({"name": "plain"}))).await;
    glance_create(
        &ims,
        &admin,
        with(json!({"name": "public-x86", "visibility": "public"})),
    )
    .await;

    let names = |q: &'static str| list_names(&ims, &token, q);
    let private = "__imagetype=private";
    assert_eq!(
        list_names(
            &ims,
            &token,
            &format!("{private}&enterprise_project_id={ep}")
        )
        .await
        .unwrap(),
        ["arm-ep"]
    );
    assert_eq!(
        names("__imagetype=private&enterprise_project_id=0")
            .await
            .unwrap(),
        ["disk", "plain"]
    );
    assert_eq!(
        names("__imagetype=private&enterprise_project_id=all_granted_eps")
            .await
            .unwrap()
            .len(),
        3
    );
    let bad = names("enterprise_project_id=nope").await.unwrap_err();
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["error"]["code"], "IMG.0001");

    assert_eq!(
        names("__imagetype=private&flavor_id=kc1.large.2")
            .await
            .unwrap(),
        ["arm-ep"]
    );
    assert_eq!(
        names("__imagetype=private&flavor_id=d6.large.2")
            .await
            .unwrap(),
        ["disk"]
    );
    assert_eq!(
        names("__imagetype=private&flavor_id=s6.large.2")
            .await
            .unwrap(),
        ["disk", "plain"]
    );
    // flavor_id alone: the public images the flavor boots.
    assert_eq!(names("flavor_id=s6.large.2").await.unwrap(), ["public-x86"]);
    assert!(names("flavor_id=kc1.large.2").await.unwrap().is_empty());
    let unknown = names("flavor_id=zz9.large.2").await.unwrap_err();
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
}

/// Splits RFC 4180 text into rows of cells (quoted cells may hold commas, quotes, line breaks).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut cell) = (Vec::new(), Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    rows
}

#[tokio::test]
async fn csv_export_has_the_console_columns_and_parses_back() {
    let ims = setup().await;
    let token = issue_token(&ims.router, "alice", "pw", "team").await;
    let admin = issue_token(&ims.router, "admin", "adminpw", "admin").await;
    let base = |name: &str| {
        json!({"name": name, "disk_format": "raw", "container_format": "bare",
               "__os_version": "CentOS 7.9 64bit", "min_disk": 40})
    };
    glance_create(&ims, &token, base("plain")).await;
    glance_create(&ims, &token, base("with, comma \"quoted\"\nand a line")).await;
    let mut public = base("public-one");
    public["visibility"] = "public".into();
    glance_create(&ims, &admin, public).await;

    let export = |query: &'static str| {
        send(
            &ims.router,
            Request::get(format!("/v2/cloudimages/export.csv?{query}"))
                .header("x-auth-token", &token)
                .body(Body::empty())
                .unwrap(),
        )
    };
    let private = export("__imagetype=private").await;
    assert_eq!(private.status, StatusCode::OK, "{:?}", private.body);
    assert_eq!(private.headers["content-type"], "text/csv; charset=utf-8");
    let rows = parse_csv(std::str::from_utf8(&private.body).unwrap());
    assert_eq!(
        rows[0],
        [
            "Name",
            "ID",
            "Status",
            "OS Type",
            "OS",
            "Image Type",
            "Disk Capacity (GB)",
            "Encrypted",
            "Created At"
        ]
    );
    let mut names: Vec<&str> = rows[1..].iter().map(|r| r[0].as_str()).collect();
    names.sort();
    assert_eq!(names, ["plain", "with, comma \"quoted\"\nand a line"]);
    for row in &rows[1..] {
        assert_eq!(row.len(), 9, "{row:?}");
        assert!(uuid::Uuid::parse_str(&row[1]).is_ok());
        assert_eq!(
            &row[2..8],
            [
                "queued",
                "Linux",
                "CentOS 7.9 64bit",
                "ECS system disk image",
                "40",
                "No"
            ]
        );
    }
    let public = export("__imagetype=gold").await;
    let rows = parse_csv(std::str::from_utf8(&public.body).unwrap());
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1][0], "public-one");
    let all = export("").await;
    assert_eq!(parse_csv(std::str::from_utf8(&all.body).unwrap()).len(), 4);
}
