//! The Image API v2 over HTTP: requests, error bodies, pagination and name resolution.

use std::time::Duration;

use anyhow::Context as _;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;

use super::auth::{self, AuthArgs};

/// How long to wait for a TCP/TLS connection; transfers themselves have no deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest server error text echoed to the user.
const MAX_ERROR_TEXT: usize = 1000;
/// Upper bound on followed `next` links, so a server that loops cannot hang the client.
const MAX_LIST_PAGES: usize = 100_000;

const PATCH_CONTENT_TYPE: &str = "application/openstack-images-v2.1-json-patch";

/// A request the server refused, with the server's own explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (HTTP {})", self.message, self.status)
    }
}

impl std::error::Error for ApiError {}

/// The human-readable message in an error response body: Glance's
/// `{"message","code","title"}`, Keystone's `{"error":{"message"}}`, or plain text/HTML.
pub fn error_message(status: u16, body: &[u8]) -> String {
    let from_json = serde_json::from_slice::<Value>(body).ok().and_then(|json| {
        let text = |pointer: &str| {
            json.pointer(pointer)
                .and_then(Value::as_str)
                .map(clean_text)
                .filter(|text| !text.is_empty())
        };
        text("/message")
            .or_else(|| text("/error/message"))
            .or_else(|| text("/title"))
            .or_else(|| text("/error/title"))
            .or_else(|| text("/code"))
    });
    let message =
        from_json.unwrap_or_else(|| clean_text(&strip_tags(&String::from_utf8_lossy(body))));
    if message.is_empty() {
        let reason = StatusCode::from_u16(status)
            .ok()
            .and_then(|code| code.canonical_reason())
            .unwrap_or("request failed");
        return reason.to_owned();
    }
    let mut message = message;
    if message.chars().count() > MAX_ERROR_TEXT {
        message = message.chars().take(MAX_ERROR_TEXT).collect::<String>() + "…";
    }
    message
}

/// Glance's messages carry `<br />` and trailing newlines; collapse them into one line.
fn clean_text(text: &str) -> String {
    text.replace("<br />", " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn strip_tags(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_tag = false;
    for ch in text.chars() {
        match ch {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(ch),
            _ => {}
        }
    }
    out
}

/// Turns a non-2xx response into an [`ApiError`]; passes 2xx responses through.
pub async fn check_status(response: Response) -> anyhow::Result<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.bytes().await.unwrap_or_default();
    Err(ApiError {
        status: status.as_u16(),
        message: error_message(status.as_u16(), &body),
    }
    .into())
}

/// `true` for the 8-4-4-4-12 hex form Glance uses for image IDs.
pub fn looks_like_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    let lengths = [8, 4, 4, 4, 12];
    groups.len() == lengths.len()
        && groups
            .iter()
            .zip(lengths)
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Why a name did not pick out one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    NotFound { name: String },
    Ambiguous { name: String, ids: Vec<String> },
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolveError::NotFound { name } => {
                write!(f, "No image with a name or ID of '{name}' exists.")
            }
            ResolveError::Ambiguous { name, ids } => write!(
                f,
                "More than one image is named '{name}'; use an ID instead: {}",
                ids.join(", ")
            ),
        }
    }
}

impl std::error::Error for ResolveError {}

/// Chooses the image called `name` among the name-filtered list results.
pub fn pick_by_name(name: &str, mut candidates: Vec<Value>) -> Result<Value, ResolveError> {
    candidates.retain(|image| image.get("name").and_then(Value::as_str) == Some(name));
    match candidates.len() {
        0 => Err(ResolveError::NotFound {
            name: name.to_owned(),
        }),
        1 => Ok(candidates.remove(0)),
        _ => Err(ResolveError::Ambiguous {
            name: name.to_owned(),
            ids: candidates
                .iter()
                .filter_map(|image| image.get("id").and_then(Value::as_str))
                .map(str::to_owned)
                .collect(),
        }),
    }
}

/// The `id` of an image document.
pub fn image_id(image: &Value) -> anyhow::Result<&str> {
    image
        .get("id")
        .and_then(Value::as_str)
        .context("the server returned an image without an id")
}

/// The absolute URL of a `next` link, which Glance gives as `/v2/images?...`.
pub fn next_page_url(base: &str, next: &str) -> String {
    if next.starts_with("http://") || next.starts_with("https://") {
        next.to_owned()
    } else if next.starts_with('/') {
        format!("{base}{next}")
    } else {
        format!("{base}/v2/{next}")
    }
}

/// An authenticated Image API v2 client.
pub struct ImageClient {
    http: reqwest::Client,
    base: String,
    token: String,
    project_id: Option<String>,
}

impl ImageClient {
    /// Authenticates and finds the image endpoint.
    pub async fn connect(args: &AuthArgs) -> anyhow::Result<Self> {
        let settings = auth::resolve_settings(args)?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("ims-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        let session = auth::establish(&http, &settings).await?;
        Ok(ImageClient {
            http,
            base: session.image_url,
            token: session.token,
            project_id: session.project_id,
        })
    }

    /// The project the token is scoped to, when known.
    pub fn project_id(&self) -> Option<&str> {
        self.project_id.as_deref()
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v2{path}", self.base)
    }

    fn image_url(&self, id: &str, suffix: &str) -> String {
        self.url(&format!("/images/{}{suffix}", encode_segment(id)))
    }

    pub fn request(&self, method: Method, url: &str) -> RequestBuilder {
        self.http
            .request(method, url)
            .header("X-Auth-Token", &self.token)
            .header(ACCEPT, "application/json")
    }

    /// Sends a request and checks its status.
    pub async fn send(&self, request: RequestBuilder) -> anyhow::Result<Response> {
        let request = request.build().context("building the request")?;
        let description = format!("{} {}", request.method(), request.url());
        let response = self
            .http
            .execute(request)
            .await
            .with_context(|| format!("{description} failed"))?;
        check_status(response).await
    }

    async fn send_json(&self, request: RequestBuilder) -> anyhow::Result<Value> {
        let response = self.send(request).await?;
        let url = response.url().to_string();
        let body = response.bytes().await.context("reading the response")?;
        serde_json::from_slice(&body).with_context(|| format!("{url} did not return JSON"))
    }

    pub async fn get_image(&self, id: &str) -> anyhow::Result<Value> {
        self.send_json(self.request(Method::GET, &self.image_url(id, "")))
            .await
    }

    /// Lists images matching `query`; with `follow_next`, every page.
    pub async fn list_images(
        &self,
        query: &[(String, String)],
        follow_next: bool,
    ) -> anyhow::Result<Vec<Value>> {
        let mut images = Vec::new();
        let mut page = self
            .send_json(self.request(Method::GET, &self.url("/images")).query(query))
            .await?;
        for _ in 0..MAX_LIST_PAGES {
            let batch = match page.get_mut("images").map(Value::take) {
                Some(Value::Array(batch)) => batch,
                _ => anyhow::bail!("the image list response has no 'images' array"),
            };
            let exhausted = batch.is_empty();
            images.extend(batch);
            let next = page.get("next").and_then(Value::as_str);
            let Some(next) = next.filter(|_| follow_next && !exhausted) else {
                return Ok(images);
            };
            let url = next_page_url(&self.base, next);
            page = self.send_json(self.request(Method::GET, &url)).await?;
        }
        anyhow::bail!("gave up after {MAX_LIST_PAGES} pages of images")
    }

    /// Finds an image the way openstackclient does: by ID if it looks like one, else by name.
    pub async fn resolve(&self, name_or_id: &str) -> anyhow::Result<Value> {
        self.resolve_with(name_or_id, &[]).await
    }

    /// Like [`resolve`](Self::resolve), but a name also matches images shared with the
    /// caller that are still pending or rejected (for `member accept|reject`).
    pub async fn resolve_shared_with_me(&self, name_or_id: &str) -> anyhow::Result<Value> {
        let extra = [
            ("visibility".to_owned(), "shared".to_owned()),
            ("member_status".to_owned(), "all".to_owned()),
        ];
        self.resolve_with(name_or_id, &extra).await
    }

    async fn resolve_with(
        &self,
        name_or_id: &str,
        extra_query: &[(String, String)],
    ) -> anyhow::Result<Value> {
        if looks_like_uuid(name_or_id) {
            match self.get_image(name_or_id).await {
                Ok(image) => return Ok(image),
                Err(err) if is_not_found(&err) => {}
                Err(err) => return Err(err),
            }
        }
        let mut query = vec![("name".to_owned(), name_or_id.to_owned())];
        query.extend_from_slice(extra_query);
        let candidates = self.list_images(&query, true).await?;
        Ok(pick_by_name(name_or_id, candidates)?)
    }

    pub async fn create_image(&self, body: &Value) -> anyhow::Result<Value> {
        self.send_json(self.request(Method::POST, &self.url("/images")).json(body))
            .await
    }

    pub async fn patch_image(&self, id: &str, ops: &[Value]) -> anyhow::Result<Value> {
        let body = serde_json::to_vec(ops)?;
        let request = self
            .request(Method::PATCH, &self.image_url(id, ""))
            .header(CONTENT_TYPE, PATCH_CONTENT_TYPE)
            .body(body);
        self.send_json(request).await
    }

    pub async fn delete_image(&self, id: &str) -> anyhow::Result<()> {
        self.send(self.request(Method::DELETE, &self.image_url(id, "")))
            .await?;
        Ok(())
    }

    /// Uploads `body` (`size` bytes) as the image data.
    pub async fn put_file(&self, id: &str, body: reqwest::Body, size: u64) -> anyhow::Result<()> {
        let request = self
            .request(Method::PUT, &self.image_url(id, "/file"))
            .header(CONTENT_TYPE, "application/octet-stream")
            .header("x-openstack-image-size", size.to_string())
            .header(reqwest::header::CONTENT_LENGTH, size.to_string())
            .body(body);
        self.send(request).await?;
        Ok(())
    }

    /// Starts downloading the image data; the body is left for the caller to stream.
    pub async fn get_file(&self, id: &str) -> anyhow::Result<Response> {
        self.send(self.request(Method::GET, &self.image_url(id, "/file")))
            .await
    }

    pub async fn add_tag(&self, id: &str, tag: &str) -> anyhow::Result<()> {
        let url = self.image_url(id, &format!("/tags/{}", encode_segment(tag)));
        self.send(self.request(Method::PUT, &url)).await?;
        Ok(())
    }

    pub async fn remove_tag(&self, id: &str, tag: &str) -> anyhow::Result<()> {
        let url = self.image_url(id, &format!("/tags/{}", encode_segment(tag)));
        self.send(self.request(Method::DELETE, &url)).await?;
        Ok(())
    }

    pub async fn list_members(&self, id: &str) -> anyhow::Result<Vec<Value>> {
        let mut body = self
            .send_json(self.request(Method::GET, &self.image_url(id, "/members")))
            .await?;
        match body.get_mut("members").map(Value::take) {
            Some(Value::Array(members)) => Ok(members),
            _ => anyhow::bail!("the member list response has no 'members' array"),
        }
    }

    pub async fn add_member(&self, id: &str, member: &str) -> anyhow::Result<Value> {
        let request = self
            .request(Method::POST, &self.image_url(id, "/members"))
            .json(&serde_json::json!({"member": member}));
        self.send_json(request).await
    }

    pub async fn update_member(
        &self,
        id: &str,
        member: &str,
        status: &str,
    ) -> anyhow::Result<Value> {
        let url = self.image_url(id, &format!("/members/{}", encode_segment(member)));
        let request = self
            .request(Method::PUT, &url)
            .json(&serde_json::json!({"status": status}));
        self.send_json(request).await
    }

    pub async fn remove_member(&self, id: &str, member: &str) -> anyhow::Result<()> {
        let url = self.image_url(id, &format!("/members/{}", encode_segment(member)));
        self.send(self.request(Method::DELETE, &url)).await?;
        Ok(())
    }
}

fn is_not_found(err: &anyhow::Error) -> bool {
    err.downcast_ref::<ApiError>()
        .is_some_and(|api| api.status == 404)
}

/// Percent-encodes one path segment (tags and member IDs are free text).
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn glance_error_bodies_become_one_line() {
        let body = br#"{"message": "No image found with ID b107<br /><br />\n\n\n", "code": "404 Not Found", "title": "Not Found"}"#;
        assert_eq!(error_message(404, body), "No image found with ID b107");
    }

    #[test]
    fn keystone_error_bodies_are_understood() {
        let body = br#"{"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}}"#;
        assert_eq!(
            error_message(401, body),
            "The request you have made requires authentication."
        );
    }

    #[test]
    fn non_json_error_bodies_fall_back_to_text_or_reason() {
        assert_eq!(
            error_message(502, b"<html><body><h1>Bad gateway</h1></body></html>"),
            "Bad gateway"
        );
        assert_eq!(error_message(503, b""), "Service Unavailable");
        assert_eq!(
            error_message(400, br#"{"title": "Bad Request"}"#),
            "Bad Request"
        );
    }

    #[test]
    fn api_error_display_has_message_and_status() {
        let err = ApiError {
            status: 403,
            message: "Forbidden to delete a protected image.".into(),
        };
        assert_eq!(
            err.to_string(),
            "Forbidden to delete a protected image. (HTTP 403)"
        );
    }

    #[test]
    fn uuid_detection() {
        assert!(looks_like_uuid("92be50c1-3c7f-4b53-8a6f-0e2d1c4b5a69"));
        assert!(looks_like_uuid("92BE50C1-3C7F-4B53-8A6F-0E2D1C4B5A69"));
        assert!(!looks_like_uuid("92be50c13c7f4b538a6f0e2d1c4b5a69"));
        assert!(!looks_like_uuid("cirros"));
        assert!(!looks_like_uuid("92be50c1-3c7f-4b53-8a6f-0e2d1c4b5a6z"));
    }

    #[test]
    fn name_resolution_requires_exactly_one_exact_match() {
        let a = json!({"id": "1", "name": "cirros"});
        let b = json!({"id": "2", "name": "cirros"});
        let other = json!({"id": "3", "name": "cirros-0.6"});
        assert_eq!(
            pick_by_name("cirros", vec![a.clone(), other.clone()]).unwrap(),
            a
        );
        assert_eq!(
            pick_by_name("cirros", vec![other]).unwrap_err(),
            ResolveError::NotFound {
                name: "cirros".into()
            }
        );
        let ambiguous = pick_by_name("cirros", vec![a, b]).unwrap_err();
        assert_eq!(
            ambiguous.to_string(),
            "More than one image is named 'cirros'; use an ID instead: 1, 2"
        );
    }

    #[test]
    fn next_links_are_joined_to_the_unversioned_endpoint() {
        assert_eq!(
            next_page_url("http://h:9292", "/v2/images?marker=x"),
            "http://h:9292/v2/images?marker=x"
        );
        assert_eq!(
            next_page_url("http://h/image", "/v2/images?marker=x"),
            "http://h/image/v2/images?marker=x"
        );
        assert_eq!(
            next_page_url("http://h", "https://other/v2/images?marker=x"),
            "https://other/v2/images?marker=x"
        );
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(encode_segment("plain-tag_1.0"), "plain-tag_1.0");
    }
}
