//! Reading request bodies: bounded JSON with Glance's messages, and content-type checks.

use axum::body::Body;
use axum::http::{HeaderMap, header};
use ims_domain::ErrorKind;

use crate::error::{ApiError, ApiResult};

pub fn content_type(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        raw.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Reads a JSON body of at most `limit` bytes. `expect_types` lists the media types accepted;
/// a missing Content-Type is accepted as JSON.
pub async fn read_json(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    expect_types: &[&str],
) -> ApiResult<serde_json::Value> {
    if let Some(ct) = content_type(headers)
        && !expect_types.contains(&ct.as_str())
    {
        return Err(ApiError::new(
            ErrorKind::UnsupportedMediaType,
            format!("Unsupported Content-Type {ct}"),
        ));
    }
    let too_large = || {
        ApiError::new(
            ErrorKind::TooLarge,
            format!("Request body is larger than {limit} bytes."),
        )
    };
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if is_length_limit(&e) {
            too_large()
        } else {
            ApiError::invalid(format!("Error reading the request body: {e}"))
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|_| ApiError::invalid("Malformed JSON in request body."))
}

/// A JSON body that must be an object.
pub async fn read_json_object(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> ApiResult<serde_json::Map<String, serde_json::Value>> {
    match read_json(headers, body, limit, &["application/json"]).await? {
        serde_json::Value::Object(map) => Ok(map),
        _ => Err(ApiError::invalid("Unexpected body type. Expected dict.")),
    }
}
