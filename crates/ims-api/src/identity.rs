//! The Keystone v3 subset under `/identity`: version documents and `/v3/auth/tokens`
//! (password method, project scope by name or id), with Keystone's error bodies.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ims_core::identity::{DomainRef, IssuedToken, Named, PasswordAuth, TokenClaims};
use ims_domain::identity::{DEFAULT_DOMAIN_ID, DEFAULT_DOMAIN_NAME};
use ims_domain::{ErrorKind, Role};
use serde_json::{Value, json};

use crate::SharedState;
use crate::body::read_json_object;
use crate::error::{ApiError, ApiResult};

const SUBJECT_TOKEN: &str = "x-subject-token";

pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/", get(root))
        .route("/v3", get(v3))
        .route("/v3/", get(v3))
        .route(
            "/v3/auth/tokens",
            get(validate).head(validate).post(issue).delete(revoke),
        )
        .route(
            "/v3.0/OS-CREDENTIAL/credentials",
            get(crate::access_keys::list).post(crate::access_keys::create),
        )
        .route(
            "/v3.0/OS-CREDENTIAL/credentials/{access_key}",
            axum::routing::delete(crate::access_keys::delete),
        )
}

fn version(public_url: &str) -> Value {
    json!({
        "id": "v3.14",
        "status": "stable",
        "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": format!("{public_url}/identity/v3/")}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}],
    })
}

async fn root(State(state): State<SharedState>) -> Response {
    (
        StatusCode::MULTIPLE_CHOICES,
        axum::Json(json!({"versions": {"values": [version(&state.public_url)]}})),
    )
        .into_response()
}

async fn v3(State(state): State<SharedState>) -> axum::Json<Value> {
    axum::Json(json!({"version": version(&state.public_url)}))
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::invalid(message).keystone()
}

fn domain_ref(v: Option<&Value>) -> DomainRef {
    match v {
        Some(d) => match (
            d.get("id").and_then(Value::as_str),
            d.get("name").and_then(Value::as_str),
        ) {
            (Some(id), _) => DomainRef::Id(id.into()),
            (None, Some(name)) => DomainRef::Name(name.into()),
            (None, None) => DomainRef::Id(DEFAULT_DOMAIN_ID.into()),
        },
        None => DomainRef::Id(DEFAULT_DOMAIN_ID.into()),
    }
}

fn named(v: &Value, what: &str) -> ApiResult<Named> {
    if let Some(id) = v.get("id").and_then(Value::as_str) {
        return Ok(Named::Id(id.into()));
    }
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("{what} must have an id or a name")))?;
    Ok(Named::Name {
        name: name.into(),
        domain: domain_ref(v.get("domain")),
    })
}

fn parse_auth(body: &serde_json::Map<String, Value>) -> ApiResult<PasswordAuth> {
    let auth = body
        .get("auth")
        .ok_or_else(|| bad("'auth' is a required property"))?;
    let identity = auth
        .get("identity")
        .ok_or_else(|| bad("'identity' is a required property"))?;
    let methods = identity
        .get("methods")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("'methods' is a required property"))?;
    if !methods.iter().any(|m| m == "password") {
        return Err(bad("Only the password authentication method is supported."));
    }
    let user = identity
        .pointer("/password/user")
        .ok_or_else(|| bad("'user' is a required property"))?;
    let password = user
        .get("password")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("'password' is a required property"))?;
    let project = match auth.get("scope") {
        None => None,
        Some(scope) => match scope.get("project") {
            Some(project) => Some(named(project, "project")?),
            None => return Err(bad("Only project scope is supported.")),
        },
    };
    Ok(PasswordAuth {
        user: named(user, "user")?,
        password: password.into(),
        project,
    })
}

fn keystone_time(micros: i64) -> String {
    let t = ims_domain::from_micros(micros);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

fn token_body(
    claims: &TokenClaims,
    public_url: &str,
    region: &str,
    extra: &[ims_core::config::CatalogService],
) -> Value {
    let domain = json!({"id": DEFAULT_DOMAIN_ID, "name": DEFAULT_DOMAIN_NAME});
    let roles: Vec<Value> = claims
        .roles
        .iter()
        .filter_map(|r| Role::parse(r))
        .map(|r| json!({"id": r.id(), "name": r.as_str()}))
        .collect();
    let endpoint = |id: &str, url: String| json!({"id": id, "interface": "public", "region": region, "region_id": region, "url": url});
    let mut token = json!({
        "methods": ["password"],
        "user": {"id": claims.user_id, "name": claims.user_name, "domain": domain, "password_expires_at": null},
        "expires_at": keystone_time(claims.expires_at),
        "issued_at": keystone_time(claims.issued_at),
        "audit_ids": [claims.audit_id],
        "is_domain": false,
    });
    if let (Some(pid), Some(pname)) = (&claims.project_id, &claims.project_name) {
        token["project"] = json!({"id": pid, "name": pname, "domain": domain});
        token["roles"] = Value::Array(roles);
        let mut catalog = vec![
            json!({"type": "identity", "name": "keystone", "id": "ims-identity",
             "endpoints": [endpoint("ims-identity-public", format!("{public_url}/identity/v3"))]}),
            json!({"type": "image", "name": "glance", "id": "ims-image",
             "endpoints": [endpoint("ims-image-public", public_url.to_string())]}),
        ];
        for service in extra {
            let id = format!("ims-{}", service.service_type);
            catalog.push(
                json!({"type": service.service_type, "name": service.service_type, "id": id,
                "endpoints": [endpoint(&format!("{id}-public"), service.url.clone())]}),
            );
        }
        token["catalog"] = Value::Array(catalog);
    }
    json!({"token": token})
}

fn token_response(
    status: StatusCode,
    token: &str,
    claims: &TokenClaims,
    state: &SharedState,
    with_body: bool,
) -> Response {
    let body = if with_body {
        axum::Json(token_body(
            claims,
            &state.public_url,
            &state.app.config.region.name,
            &state.app.config.extra_catalog,
        ))
        .into_response()
    } else {
        StatusCode::OK.into_response()
    };
    let mut response = (status, body).into_response();
    if let Ok(v) = HeaderValue::from_str(token) {
        response.headers_mut().insert(SUBJECT_TOKEN, v);
    }
    response
}

async fn issue(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let map = read_json_object(&headers, body, state.app.config.limits.max_json_body)
        .await
        .map_err(ApiError::keystone)?;
    let auth = parse_auth(&map)?;
    let IssuedToken { token, claims } = state
        .app
        .identity
        .authenticate(auth)
        .await
        .map_err(|e| ApiError::from(e).keystone())?;
    Ok(token_response(
        StatusCode::CREATED,
        &token,
        &claims,
        &state,
        true,
    ))
}

/// Checks the caller's `X-Auth-Token` and returns the `X-Subject-Token` it asks about.
async fn subject(state: &SharedState, headers: &HeaderMap) -> ApiResult<(String, TokenClaims)> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let auth = header("x-auth-token").ok_or_else(|| {
        ApiError::new(
            ErrorKind::Unauthorized,
            "The request you have made requires authentication.",
        )
        .keystone()
    })?;
    state
        .app
        .identity
        .verify(&auth)
        .await
        .map_err(|e| ApiError::from(e).keystone())?;
    let subject = header(SUBJECT_TOKEN).ok_or_else(|| bad("X-Subject-Token is required"))?;
    let claims = state
        .app
        .identity
        .verify(&subject)
        .await
        .map_err(|_| ApiError::new(ErrorKind::NotFound, "Could not find token.").keystone())?;
    Ok((subject, claims))
}

async fn validate(
    State(state): State<SharedState>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (token, claims) = subject(&state, &headers).await?;
    Ok(token_response(
        StatusCode::OK,
        &token,
        &claims,
        &state,
        method != axum::http::Method::HEAD,
    ))
}

async fn revoke(State(state): State<SharedState>, headers: HeaderMap) -> ApiResult<StatusCode> {
    let (_, claims) = subject(&state, &headers).await?;
    state
        .app
        .identity
        .revoke(&claims)
        .await
        .map_err(|e| ApiError::from(e).keystone())?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_times_have_microseconds_and_z() {
        assert_eq!(
            keystone_time(1_700_000_000_123_456),
            "2023-11-14T22:13:20.123456Z"
        );
    }

    #[test]
    fn auth_bodies() {
        let body = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "u", "domain": {"name": "Default"}, "password": "p"}}},
                          "scope": {"project": {"name": "proj", "domain": {"name": "Default"}}}}});
        let auth = parse_auth(body.as_object().unwrap()).unwrap();
        assert_eq!(
            auth.user,
            Named::Name {
                name: "u".into(),
                domain: DomainRef::Name("Default".into())
            }
        );
        assert_eq!(
            auth.project,
            Some(Named::Name {
                name: "proj".into(),
                domain: DomainRef::Name("Default".into())
            })
        );
        let by_id = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"id": "abc", "password": "p"}}}, "scope": {"project": {"id": "pid"}}}});
        let auth = parse_auth(by_id.as_object().unwrap()).unwrap();
        assert_eq!(auth.project, Some(Named::Id("pid".into())));
        for bad_body in [
            json!({}),
            json!({"auth": {"identity": {"methods": ["token"]}}}),
            json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "u"}}}}}),
        ] {
            assert!(parse_auth(bad_body.as_object().unwrap()).is_err());
        }
    }
}
