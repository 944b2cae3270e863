//! Cross-cutting request handling: request ids and tracing spans, bodies where none belong, the
//! SDK-HMAC-SHA256 signature check (Huawei Cloud SDKs' AK/SK), and the token check that turns
//! `X-Auth-Token` into a [`Caller`].

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use ims_domain::{Caller, ErrorKind};
use tracing::Instrument;

use crate::SharedState;
use crate::error::ApiError;

pub const REQUEST_ID_HEADER: &str = "x-openstack-request-id";
/// Longest client-supplied request id we adopt (Glance's rule).
const MAX_REQUEST_ID_LEN: usize = 64;

fn client_request_id(req: &Request) -> Option<String> {
    let value = req.headers().get(REQUEST_ID_HEADER)?.to_str().ok()?;
    let ok = value.starts_with("req-")
        && value.len() <= MAX_REQUEST_ID_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    ok.then(|| value.to_string())
}

/// The request's id, as echoed in `x-openstack-request-id` (a request extension).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Gives every request an id (the client's if valid), a tracing span, and echoes the id back.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = client_request_id(&req).unwrap_or_else(|| format!("req-{}", uuid::Uuid::new_v4()));
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id);
    let mut response = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| tracing::debug!(status = response.status().as_u16(), "done"));
    if let Ok(v) = HeaderValue::from_str(&id) {
        // Huawei Cloud's SDKs read `X-Request-Id`; OpenStack clients the other.
        response.headers_mut().insert("x-request-id", v.clone());
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    response
}

fn has_body(req: &Request) -> bool {
    use axum::body::HttpBody;
    let headers = req.headers();
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    length > 0 || !req.body().is_end_stream()
}

/// Glance refuses bodies on reads, deletes and actions.
pub async fn reject_unexpected_body(req: Request, next: Next) -> Response {
    let no_body_route = matches!(*req.method(), Method::GET | Method::DELETE | Method::HEAD)
        || (req.method() == Method::POST && req.uri().path().contains("/actions/"));
    if no_body_route && req.uri().path().starts_with("/v2/") && has_body(&req) {
        return ApiError::invalid("A body is not expected with this request.").into_response();
    }
    next.run(req).await
}

/// The caller an AK/SK signature proved, put in the request's extensions by [`sdk_signature`].
#[derive(Clone)]
pub struct SignedCaller(pub Caller);

/// Verifies SDK-HMAC-SHA256 signatures (any route): the body is read (bounded by the JSON body
/// limit, since the signature covers its hash) and put back, unless it is signed as
/// `UNSIGNED-PAYLOAD`, which streams through unread; a bad signature, a skewed date or
/// a replay is refused with the API gateway's 401 body. Requests without an SDK signature pass.
pub async fn sdk_signature(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let authorization = match req.headers().get(header::AUTHORIZATION) {
        Some(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
        None => return next.run(req).await,
    };
    if !ims_core::sdk_signature::is_sdk_signature(&authorization) {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    // A body signed as UNSIGNED-PAYLOAD is not covered by the signature: it streams through
    // unread (image data pushed by a peer region). Otherwise the signature covers its hash.
    let unsigned = parts
        .headers
        .get("x-sdk-content-sha256")
        .is_some_and(|v| v.as_bytes() == ims_core::sdk_signature::UNSIGNED_PAYLOAD.as_bytes());
    let (bytes, body) = if unsigned {
        (Bytes::new(), Some(body))
    } else {
        let limit = state.app.config.limits.max_json_body;
        let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
            return ApiError::new(
                ErrorKind::TooLarge,
                format!("A signed request body may be at most {limit} bytes."),
            )
            .ims()
            .into_response();
        };
        (bytes, None)
    };
    let headers = parts.headers.clone();
    let lookup = |name: &str| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let signed = ims_core::sdk_signature::SignedRequest {
        method: parts.method.as_str(),
        raw_path: parts.uri.path(),
        raw_query: parts.uri.query().unwrap_or(""),
        header: &lookup,
        body: &bytes,
    };
    match state
        .app
        .access_keys
        .authenticate(&authorization, &signed)
        .await
    {
        Ok(caller) => {
            parts.extensions.insert(SignedCaller(caller));
            let body = body.unwrap_or_else(|| Body::from(bytes));
            next.run(Request::from_parts(parts, body)).await
        }
        Err(e) => {
            tracing::info!(error = %e, "signature refused");
            ApiError::new(ErrorKind::Unauthorized, e.to_string())
                .gateway()
                .into_response()
        }
    }
}

/// A verified, project-scoped caller.
pub struct Authed(pub Caller);

impl FromRequestParts<SharedState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(SignedCaller(caller)) = parts.extensions.get::<SignedCaller>() {
            return Ok(Authed(caller.clone()));
        }
        let unauthorized = |message: &str| {
            let mut e = ApiError::new(ErrorKind::Unauthorized, message);
            e.auth_uri = Some(format!("{}/identity/v3", state.public_url));
            e
        };
        let token = parts
            .headers
            .get("x-auth-token")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| unauthorized("This server could not verify that you are authorized to access the document you requested."))?;
        let claims = state
            .app
            .identity
            .verify(token)
            .await
            .map_err(|e| unauthorized(&e.message))?;
        let caller = claims.caller().ok_or_else(|| {
            ApiError::new(ErrorKind::Forbidden, "A project-scoped token is required.")
        })?;
        Ok(Authed(caller))
    }
}
