//! What the in-process API test files share: sending a request through the router, the reply,
//! and issuing tokens the way clients do.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;
use ims_core::identity::{DomainRef, Named};
use serde_json::{Value, json};
use tower::ServiceExt;

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// A user or project of the Default domain, by name.
pub fn named(n: &str) -> Named {
    Named::Name {
        name: n.into(),
        domain: DomainRef::Name("Default".into()),
    }
}

pub async fn send(router: &Router, req: Request<Body>) -> Reply {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Reply {
        status,
        headers,
        body,
    }
}

/// A project-scoped token from `POST /identity/v3/auth/tokens`.
pub async fn issue_token(router: &Router, user: &str, password: &str, project: &str) -> String {
    let body = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": user, "domain": {"name": "Default"}, "password": password}}},
                      "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}});
    let req = Request::post("/identity/v3/auth/tokens")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let reply = send(router, req).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.headers["x-subject-token"]
        .to_str()
        .unwrap()
        .to_string()
}
