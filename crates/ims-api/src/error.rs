//! One table from error kind to HTTP status per dialect, and the error bodies: Glance's
//! `{"message","code","title"}`, Keystone's `{"error":{"code","title","message"}}`, IMS's
//! `{"error":{"code":"IMG.xxxx","message"}}` and the API gateway's
//! `{"error_code":"APIGW.0301","error_msg"}` (failed signatures, as Huawei Cloud answers them).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ims_core::ServiceError;
use ims_domain::ErrorKind;

/// The status every kind maps to, in every dialect.
pub fn status_for(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Gone => StatusCode::GONE,
        ErrorKind::AlreadyExists | ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::InvalidInput | ErrorKind::Unsupported => StatusCode::BAD_REQUEST,
        ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::QuotaExceeded | ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The IMS dialect's table: status and `IMG.` code per kind. IMS documents only 400, 401, 403,
/// 404, 500 and 503, so conflicts and quota errors are 400s. `IMG.0001` ("The request message
/// format is invalid.") is Huawei's; the other codes are this service's own, one per kind.
pub fn ims_status_and_code(kind: ErrorKind) -> (StatusCode, &'static str) {
    match kind {
        ErrorKind::InvalidInput => (StatusCode::BAD_REQUEST, "IMG.0001"),
        ErrorKind::Unsupported => (StatusCode::BAD_REQUEST, "IMG.0140"),
        ErrorKind::UnsupportedMediaType => (StatusCode::BAD_REQUEST, "IMG.0141"),
        ErrorKind::AlreadyExists | ErrorKind::Conflict => (StatusCode::BAD_REQUEST, "IMG.0409"),
        ErrorKind::QuotaExceeded => (StatusCode::BAD_REQUEST, "IMG.0413"),
        ErrorKind::TooLarge => (StatusCode::BAD_REQUEST, "IMG.0414"),
        ErrorKind::NotFound | ErrorKind::Gone => (StatusCode::NOT_FOUND, "IMG.0404"),
        ErrorKind::Forbidden => (StatusCode::FORBIDDEN, "IMG.0403"),
        ErrorKind::Unauthorized => (StatusCode::UNAUTHORIZED, "IMG.0401"),
        ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "IMG.0503"),
        ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "IMG.0500"),
    }
}

/// The API gateway's code for a refused signature or token.
pub const GATEWAY_AUTH_CODE: &str = "APIGW.0301";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Glance,
    Keystone,
    Ims,
    Gateway,
}

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    pub dialect: Dialect,
    /// For 401: where to authenticate (`WWW-Authenticate`).
    pub auth_uri: Option<String>,
    /// Extra headers (`Accept-Patch` on 415, `Content-Range` on 416).
    pub headers: Vec<(header::HeaderName, String)>,
    /// Overrides the kind's status (416 has no kind of its own).
    pub status: Option<StatusCode>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            dialect: Dialect::Glance,
            auth_uri: None,
            headers: Vec::new(),
            status: None,
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }
    pub fn keystone(mut self) -> Self {
        self.dialect = Dialect::Keystone;
        self
    }
    pub fn ims(mut self) -> Self {
        self.dialect = Dialect::Ims;
        self
    }
    pub fn gateway(mut self) -> Self {
        self.dialect = Dialect::Gateway;
        self
    }
    pub fn with_header(mut self, name: header::HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        ApiError::new(e.kind, e.message)
    }
}

#[cfg(test)]
fn body_for(status: StatusCode, message: &str, dialect: Dialect) -> serde_json::Value {
    body_for_kind(status, None, message, dialect)
}

fn body_for_kind(
    status: StatusCode,
    kind: Option<ErrorKind>,
    message: &str,
    dialect: Dialect,
) -> serde_json::Value {
    let title = status.canonical_reason().unwrap_or("Error");
    match dialect {
        Dialect::Ims => serde_json::json!({
            "error": {
                "code": ims_status_and_code(kind.unwrap_or(ErrorKind::Internal)).1,
                "message": message,
            },
        }),
        Dialect::Gateway => serde_json::json!({
            "error_code": GATEWAY_AUTH_CODE,
            "error_msg": format!("Incorrect IAM authentication information: {message}"),
        }),
        Dialect::Glance => serde_json::json!({
            "message": format!("{message}<br /><br />\n\n\n"),
            "code": format!("{} {title}", status.as_u16()),
            "title": title,
        }),
        Dialect::Keystone => serde_json::json!({
            "error": {"code": status.as_u16(), "title": title, "message": message},
        }),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status.unwrap_or_else(|| match self.dialect {
            Dialect::Ims => ims_status_and_code(self.kind).0,
            Dialect::Gateway => StatusCode::UNAUTHORIZED,
            Dialect::Glance | Dialect::Keystone => status_for(self.kind),
        });
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), message = %self.message, "request failed");
        }
        let body = body_for_kind(status, Some(self.kind), &self.message, self.dialect);
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(uri) = self.auth_uri
            && let Ok(v) = HeaderValue::from_str(&format!("Keystone uri=\"{uri}\""))
        {
            headers.insert(header::WWW_AUTHENTICATE, v);
        }
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_maps_to_a_client_or_server_error() {
        for kind in ErrorKind::ALL {
            let status = status_for(kind);
            assert!(
                status.is_client_error() || status.is_server_error(),
                "{kind:?} → {status}"
            );
            assert_eq!(
                status.is_server_error(),
                matches!(kind, ErrorKind::Internal | ErrorKind::Unavailable),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn the_ims_table_uses_only_the_statuses_ims_documents() {
        let documented = [400, 401, 403, 404, 500, 503];
        for kind in ErrorKind::ALL {
            let (status, code) = ims_status_and_code(kind);
            assert!(documented.contains(&status.as_u16()), "{kind:?} → {status}");
            assert!(code.starts_with("IMG.") && code.len() == 8, "{code}");
            let response = ApiError::new(kind, "m").ims().into_response();
            assert_eq!(response.status(), status);
        }
        let body = body_for_kind(
            StatusCode::BAD_REQUEST,
            Some(ErrorKind::InvalidInput),
            "The request message format is invalid.",
            Dialect::Ims,
        );
        assert_eq!(body["error"]["code"], "IMG.0001");
        let gw = body_for(StatusCode::UNAUTHORIZED, "bad signature", Dialect::Gateway);
        assert_eq!(gw["error_code"], "APIGW.0301");
    }

    #[test]
    fn glance_and_keystone_bodies() {
        let g = body_for(
            StatusCode::NOT_FOUND,
            "No image found with ID x",
            Dialect::Glance,
        );
        assert_eq!(g["code"], "404 Not Found");
        assert_eq!(g["title"], "Not Found");
        assert!(
            g["message"]
                .as_str()
                .unwrap()
                .starts_with("No image found with ID x")
        );
        let k = body_for(StatusCode::UNAUTHORIZED, "nope", Dialect::Keystone);
        assert_eq!(k["error"]["code"], 401);
        assert_eq!(k["error"]["message"], "nope");
    }
}
