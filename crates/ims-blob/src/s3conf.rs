//! How to reach an S3-compatible service (endpoint, region, credentials), shared by the S3 blob
//! store and the user-bucket access in [`crate::buckets`]. Secrets come from a file or the
//! environment and never appear in `Debug` output or logs.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::{ClientOptions, RetryConfig};
use serde::Deserialize;

use crate::{BlobError, BlobResult};

/// Region used when none is configured; Garage and Ceph RGW accept any name they were set up
/// with, AWS needs the bucket's real region.
pub const DEFAULT_REGION: &str = "us-east-1";
/// Retries of a failed request (connection reset, 5xx, throttling) before giving up.
const MAX_RETRIES: usize = 5;
/// How long one request may take before it is abandoned and retried; a part is at most
/// [`crate::s3::MAX_PART_SIZE`], which even a slow link moves in this time.
const REQUEST_TIMEOUT_SECS: u64 = 600;
/// How long establishing a connection may take.
const CONNECT_TIMEOUT_SECS: u64 = 10;

/// A secret string: shown as `***` by `Debug`, never serialised.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Connection settings for an S3-compatible service.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Connection {
    /// Service URL, e.g. `http://127.0.0.1:3900` (Garage) or `https://rgw.example:7480`. Unset:
    /// AWS S3 for the region. Buckets are addressed path-style (`endpoint/bucket/key`).
    pub endpoint: Option<String>,
    /// Region the service signs for. Default `us-east-1`.
    pub region: Option<String>,
    /// Access key id. Unset (and no secret): requests are sent unsigned (public buckets).
    pub access_key_id: Option<String>,
    /// File whose content (trimmed) is the secret access key.
    pub secret_access_key_file: Option<PathBuf>,
    /// The secret itself; only from the environment (`…SECRET_ACCESS_KEY`), never from a file
    /// that may be shared or checked in.
    #[serde(skip)]
    pub secret_access_key: Option<Secret>,
    /// Allow `http://` endpoints (loopback test servers, a trusted LAN). Default false.
    pub allow_http: bool,
    /// Send `UNSIGNED-PAYLOAD` instead of hashing every request body with SHA-256 for the
    /// signature: saves CPU on big uploads; integrity then rests on TLS. Default false.
    pub unsigned_payload: bool,
}

/// An `IMS_…` variable that could not be applied to an [`S3Connection`].
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}={value:?} is invalid: expected true or false")]
pub struct S3EnvError {
    pub name: String,
    pub value: String,
}

fn parse_bool(name: String, value: String) -> Result<bool, S3EnvError> {
    match value.as_str() {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err(S3EnvError { name, value }),
    }
}

impl S3Connection {
    /// Overrides fields from `{prefix}ENDPOINT`, `{prefix}REGION`, `{prefix}ACCESS_KEY_ID`,
    /// `{prefix}SECRET_ACCESS_KEY`, `{prefix}SECRET_ACCESS_KEY_FILE`, `{prefix}ALLOW_HTTP` and
    /// `{prefix}UNSIGNED_PAYLOAD`; returns whether any was set.
    pub fn apply_env(
        &mut self,
        prefix: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<bool, S3EnvError> {
        let var = |suffix: &str| {
            let name = format!("{prefix}{suffix}");
            env(&name).map(|value| (name, value))
        };
        let mut any = false;
        if let Some((_, v)) = var("ENDPOINT") {
            self.endpoint = Some(v);
            any = true;
        }
        if let Some((_, v)) = var("REGION") {
            self.region = Some(v);
            any = true;
        }
        if let Some((_, v)) = var("ACCESS_KEY_ID") {
            self.access_key_id = Some(v);
            any = true;
        }
        if let Some((_, v)) = var("SECRET_ACCESS_KEY") {
            self.secret_access_key = Some(Secret::new(v));
            any = true;
        }
        if let Some((_, v)) = var("SECRET_ACCESS_KEY_FILE") {
            self.secret_access_key_file = Some(PathBuf::from(v));
            any = true;
        }
        if let Some((name, v)) = var("ALLOW_HTTP") {
            self.allow_http = parse_bool(name, v)?;
            any = true;
        }
        if let Some((name, v)) = var("UNSIGNED_PAYLOAD") {
            self.unsigned_payload = parse_bool(name, v)?;
            any = true;
        }
        Ok(any)
    }

    /// The secret key: from the environment if given there, else from the file.
    fn secret(&self) -> BlobResult<Option<Secret>> {
        if let Some(secret) = &self.secret_access_key {
            return Ok(Some(secret.clone()));
        }
        let Some(path) = &self.secret_access_key_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|source| BlobError::Io {
            op: "reading S3 secret key file",
            key: path.display().to_string(),
            source,
        })?;
        Ok(Some(Secret::new(text.trim())))
    }

    /// A client for one bucket of this service.
    pub(crate) fn client(&self, bucket: &str) -> BlobResult<Arc<AmazonS3>> {
        let secret = self.secret()?;
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(self.region.as_deref().unwrap_or(DEFAULT_REGION))
            .with_allow_http(self.allow_http)
            .with_virtual_hosted_style_request(false)
            .with_unsigned_payload(self.unsigned_payload)
            .with_retry(RetryConfig {
                max_retries: MAX_RETRIES,
                ..RetryConfig::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(std::time::Duration::from_secs(REQUEST_TIMEOUT_SECS))
                    .with_connect_timeout(std::time::Duration::from_secs(CONNECT_TIMEOUT_SECS))
                    .with_allow_http(self.allow_http),
            );
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        match (&self.access_key_id, secret) {
            (Some(id), Some(secret)) => {
                builder = builder
                    .with_access_key_id(id)
                    .with_secret_access_key(secret.expose());
            }
            (None, None) => builder = builder.with_skip_signature(true),
            _ => {
                return Err(BlobError::Config(
                    "S3 access_key_id and secret access key must be given together".into(),
                ));
            }
        }
        let client = builder
            .build()
            .map_err(|e| BlobError::Config(format!("S3 client for bucket {bucket:?}: {e}")))?;
        Ok(Arc::new(client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_and_debug_hides_the_secret() {
        let mut c = S3Connection::default();
        let env = |name: &str| match name {
            "X_ENDPOINT" => Some("http://127.0.0.1:3900".to_string()),
            "X_SECRET_ACCESS_KEY" => Some("hunter2".to_string()),
            "X_ALLOW_HTTP" => Some("true".to_string()),
            _ => None,
        };
        assert!(c.apply_env("X_", &env).unwrap());
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert!(c.allow_http);
        assert!(!format!("{c:?}").contains("hunter2"));
        let bad = |name: &str| (name == "X_ALLOW_HTTP").then(|| "maybe".to_string());
        assert!(c.apply_env("X_", &bad).is_err());
        assert!(!S3Connection::default().apply_env("X_", &|_| None).unwrap());
    }

    #[test]
    fn key_id_without_secret_is_refused() {
        let c = S3Connection {
            access_key_id: Some("GK1".into()),
            ..S3Connection::default()
        };
        assert!(matches!(c.client("b"), Err(BlobError::Config(_))));
    }
}
