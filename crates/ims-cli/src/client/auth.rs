//! Credentials for `ims image`: `--os-*` flags, `OS_*` variables, `clouds.yaml`, and Keystone v3.
//!
//! Resolution follows openstackclient: explicit flags and environment variables win over the
//! `clouds.yaml` profile; a token plus an image URL skips identity entirely; otherwise a
//! project-scoped password token is requested and the image endpoint is read from its catalog.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{ApiError, check_status};
use super::usage;

/// Authentication options, each also an `OS_*` environment variable.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Authentication")]
pub struct AuthArgs {
    /// Cloud profile from clouds.yaml.
    #[arg(
        long = "os-cloud",
        env = "OS_CLOUD",
        global = true,
        value_name = "NAME"
    )]
    pub os_cloud: Option<String>,
    /// Identity URL, e.g. http://127.0.0.1:9292/identity/v3 (`/v3` is appended if missing).
    #[arg(
        long = "os-auth-url",
        env = "OS_AUTH_URL",
        global = true,
        value_name = "URL"
    )]
    pub os_auth_url: Option<String>,
    #[arg(long = "os-username", env = "OS_USERNAME", global = true)]
    pub os_username: Option<String>,
    #[arg(
        long = "os-password",
        env = "OS_PASSWORD",
        global = true,
        hide_env_values = true
    )]
    pub os_password: Option<String>,
    #[arg(long = "os-project-name", env = "OS_PROJECT_NAME", global = true)]
    pub os_project_name: Option<String>,
    #[arg(long = "os-project-id", env = "OS_PROJECT_ID", global = true)]
    pub os_project_id: Option<String>,
    /// Domain of the user [default: Default].
    #[arg(
        long = "os-user-domain-name",
        env = "OS_USER_DOMAIN_NAME",
        global = true
    )]
    pub os_user_domain_name: Option<String>,
    #[arg(long = "os-user-domain-id", env = "OS_USER_DOMAIN_ID", global = true)]
    pub os_user_domain_id: Option<String>,
    /// Domain of the project [default: Default].
    #[arg(
        long = "os-project-domain-name",
        env = "OS_PROJECT_DOMAIN_NAME",
        global = true
    )]
    pub os_project_domain_name: Option<String>,
    #[arg(
        long = "os-project-domain-id",
        env = "OS_PROJECT_DOMAIN_ID",
        global = true
    )]
    pub os_project_domain_id: Option<String>,
    #[arg(long = "os-region-name", env = "OS_REGION_NAME", global = true)]
    pub os_region_name: Option<String>,
    /// Catalog interface: public, internal or admin [default: public].
    #[arg(long = "os-interface", env = "OS_INTERFACE", global = true)]
    pub os_interface: Option<String>,
    /// An existing token (skips the password exchange).
    #[arg(
        long = "os-token",
        env = "OS_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub os_token: Option<String>,
    /// Image service URL, overriding the catalog.
    #[arg(
        long = "os-image-url",
        env = "OS_IMAGE_URL",
        global = true,
        value_name = "URL"
    )]
    pub os_image_url: Option<String>,
}

/// Every setting that can come from flags, the environment or a cloud profile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub auth_url: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub project_name: Option<String>,
    pub project_id: Option<String>,
    pub user_domain_name: Option<String>,
    pub user_domain_id: Option<String>,
    pub project_domain_name: Option<String>,
    pub project_domain_id: Option<String>,
    pub region_name: Option<String>,
    pub interface: Option<String>,
    pub token: Option<String>,
    pub image_url: Option<String>,
}

impl Settings {
    fn from_args(args: &AuthArgs) -> Self {
        Settings {
            auth_url: args.os_auth_url.clone(),
            username: args.os_username.clone(),
            password: args.os_password.clone(),
            project_name: args.os_project_name.clone(),
            project_id: args.os_project_id.clone(),
            user_domain_name: args.os_user_domain_name.clone(),
            user_domain_id: args.os_user_domain_id.clone(),
            project_domain_name: args.os_project_domain_name.clone(),
            project_domain_id: args.os_project_domain_id.clone(),
            region_name: args.os_region_name.clone(),
            interface: args.os_interface.clone(),
            token: args.os_token.clone(),
            image_url: args.os_image_url.clone(),
        }
    }

    /// `self` with every unset field taken from `fallback`.
    fn or(self, fallback: Settings) -> Settings {
        Settings {
            auth_url: self.auth_url.or(fallback.auth_url),
            username: self.username.or(fallback.username),
            password: self.password.or(fallback.password),
            project_name: self.project_name.or(fallback.project_name),
            project_id: self.project_id.or(fallback.project_id),
            user_domain_name: self.user_domain_name.or(fallback.user_domain_name),
            user_domain_id: self.user_domain_id.or(fallback.user_domain_id),
            project_domain_name: self.project_domain_name.or(fallback.project_domain_name),
            project_domain_id: self.project_domain_id.or(fallback.project_domain_id),
            region_name: self.region_name.or(fallback.region_name),
            interface: self.interface.or(fallback.interface),
            token: self.token.or(fallback.token),
            image_url: self.image_url.or(fallback.image_url),
        }
    }
}

/// The part of `clouds.yaml` this client reads; other keys are ignored.
#[derive(Debug, Deserialize)]
struct CloudsFile {
    #[serde(default)]
    clouds: BTreeMap<String, CloudEntry>,
}

#[derive(Debug, Deserialize)]
struct CloudEntry {
    #[serde(default)]
    auth: CloudAuth,
    region_name: Option<String>,
    interface: Option<String>,
    image_endpoint_override: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct CloudAuth {
    auth_url: Option<Scalar>,
    username: Option<Scalar>,
    password: Option<Scalar>,
    project_name: Option<Scalar>,
    project_id: Option<Scalar>,
    user_domain_name: Option<Scalar>,
    user_domain_id: Option<Scalar>,
    project_domain_name: Option<Scalar>,
    project_domain_id: Option<Scalar>,
    token: Option<Scalar>,
}

/// A YAML scalar read as text: an all-digit project ID or password is still a string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn text(value: &Option<Scalar>) -> Option<String> {
        value.as_ref().map(|scalar| match scalar {
            Scalar::Text(text) => text.clone(),
            Scalar::Integer(number) => number.to_string(),
            Scalar::Float(number) => number.to_string(),
            Scalar::Bool(flag) => flag.to_string(),
        })
    }
}

/// The settings of cloud `name` in a `clouds.yaml` text; `Ok(None)` if it has no such cloud.
pub fn parse_clouds_yaml(text: &str, name: &str) -> anyhow::Result<Option<Settings>> {
    let file: CloudsFile = serde_norway::from_str(text)?;
    let Some(entry) = file.clouds.get(name) else {
        return Ok(None);
    };
    let auth = &entry.auth;
    Ok(Some(Settings {
        auth_url: Scalar::text(&auth.auth_url),
        username: Scalar::text(&auth.username),
        password: Scalar::text(&auth.password),
        project_name: Scalar::text(&auth.project_name),
        project_id: Scalar::text(&auth.project_id),
        user_domain_name: Scalar::text(&auth.user_domain_name),
        user_domain_id: Scalar::text(&auth.user_domain_id),
        project_domain_name: Scalar::text(&auth.project_domain_name),
        project_domain_id: Scalar::text(&auth.project_domain_id),
        region_name: entry.region_name.clone(),
        interface: entry.interface.clone(),
        token: Scalar::text(&auth.token),
        image_url: entry.image_endpoint_override.clone(),
    }))
}

/// Where openstackclient looks for `clouds.yaml`, in order.
fn clouds_yaml_candidates() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(file) = std::env::var_os("OS_CLIENT_CONFIG_FILE") {
        paths.push(PathBuf::from(file));
    }
    paths.push(PathBuf::from("clouds.yaml"));
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".config")));
    if let Some(config_home) = config_home {
        paths.push(config_home.join("openstack/clouds.yaml"));
    }
    paths.push(PathBuf::from("/etc/openstack/clouds.yaml"));
    paths
}

fn load_cloud(name: &str) -> anyhow::Result<Settings> {
    let candidates = clouds_yaml_candidates();
    for path in &candidates {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        let parsed = parse_clouds_yaml(&text, name).map_err(|err| {
            usage(format!(
                "{} is not valid clouds.yaml: {err}",
                path.display()
            ))
        })?;
        if let Some(settings) = parsed {
            return Ok(settings);
        }
    }
    let searched: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(usage(format!(
        "cloud '{name}' not found in any of: {}",
        searched.join(", ")
    )))
}

/// Effective settings: flags and environment first, then the named cloud profile.
pub fn resolve_settings(args: &AuthArgs) -> anyhow::Result<Settings> {
    let explicit = Settings::from_args(args);
    match &args.os_cloud {
        Some(cloud) => Ok(explicit.or(load_cloud(cloud)?)),
        None => Ok(explicit),
    }
}

/// Appends `/v3` to an identity URL that names no version, as keystoneauth's discovery would.
pub fn versioned_auth_url(auth_url: &str) -> String {
    let trimmed = auth_url.trim_end_matches('/');
    let last_segment = trimmed.rsplit('/').next().unwrap_or("");
    if is_version_segment(last_segment) {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/v3")
    }
}

/// The unversioned image endpoint: trailing slashes and a `/v2` (or `/v2.x`) suffix removed.
pub fn unversioned_image_url(url: &str) -> String {
    let trimmed = url.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some((base, last)) if is_version_segment(last) && last.starts_with("v2") => base.to_owned(),
        _ => trimmed.to_owned(),
    }
}

fn is_version_segment(segment: &str) -> bool {
    let Some(digits) = segment.strip_prefix('v') else {
        return false;
    };
    let mut parts = digits.split('.');
    let major_ok = parts
        .next()
        .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    major_ok && parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn domain_ref(id: &Option<String>, name: &Option<String>) -> Value {
    match (id, name) {
        (Some(id), _) => json!({"id": id}),
        (None, Some(name)) => json!({"name": name}),
        (None, None) => json!({"name": "Default"}),
    }
}

/// The `POST /v3/auth/tokens` body for a project-scoped password token.
pub fn password_auth_body(settings: &Settings) -> anyhow::Result<Value> {
    let mut missing = Vec::new();
    if settings.auth_url.is_none() {
        missing.push("OS_AUTH_URL / --os-auth-url");
    }
    if settings.username.is_none() {
        missing.push("OS_USERNAME / --os-username");
    }
    if settings.password.is_none() {
        missing.push("OS_PASSWORD / --os-password");
    }
    if settings.project_id.is_none() && settings.project_name.is_none() {
        missing.push("OS_PROJECT_NAME or OS_PROJECT_ID");
    }
    if !missing.is_empty() {
        return Err(usage(format!(
            "missing credentials: set {} (or use --os-cloud, or OS_TOKEN with OS_IMAGE_URL)",
            missing.join(", ")
        )));
    }
    let user = json!({
        "name": settings.username,
        "domain": domain_ref(&settings.user_domain_id, &settings.user_domain_name),
        "password": settings.password,
    });
    let project = match &settings.project_id {
        Some(id) => json!({"id": id}),
        None => json!({
            "name": settings.project_name,
            "domain": domain_ref(&settings.project_domain_id, &settings.project_domain_name),
        }),
    };
    Ok(json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": user}},
        "scope": {"project": project},
    }}))
}

/// Picks the image endpoint from a token's catalog: service type `image`, the requested
/// interface, and the requested region when one is given.
pub fn image_endpoint_from_catalog(
    token: &Value,
    interface: &str,
    region: Option<&str>,
) -> anyhow::Result<String> {
    let catalog = token
        .pointer("/token/catalog")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let endpoints = catalog
        .iter()
        .filter(|service| service.get("type").and_then(Value::as_str) == Some("image"))
        .filter_map(|service| service.get("endpoints").and_then(Value::as_array))
        .flatten();
    for endpoint in endpoints {
        let field = |key: &str| endpoint.get(key).and_then(Value::as_str);
        if field("interface") != Some(interface) {
            continue;
        }
        if let Some(region) = region
            && field("region_id") != Some(region)
            && field("region") != Some(region)
        {
            continue;
        }
        if let Some(url) = field("url") {
            return Ok(unversioned_image_url(url));
        }
    }
    let region_note = region
        .map(|r| format!(" in region {r}"))
        .unwrap_or_default();
    Err(anyhow::anyhow!(
        "the service catalog has no {interface} endpoint for the image service{region_note}"
    ))
}

/// A usable session: a token, the unversioned image endpoint and the token's project.
#[derive(Debug, Clone)]
pub struct Session {
    pub token: String,
    pub image_url: String,
    pub project_id: Option<String>,
}

/// Authenticates as the settings say.
pub async fn establish(http: &reqwest::Client, settings: &Settings) -> anyhow::Result<Session> {
    let interface = settings.interface.as_deref().unwrap_or("public");
    let region = settings.region_name.as_deref();
    if let Some(token) = &settings.token {
        if let Some(image_url) = &settings.image_url {
            return Ok(Session {
                token: token.clone(),
                image_url: unversioned_image_url(image_url),
                project_id: settings.project_id.clone(),
            });
        }
        let Some(auth_url) = &settings.auth_url else {
            return Err(usage(
                "OS_TOKEN needs OS_IMAGE_URL / --os-image-url (or OS_AUTH_URL to look it up)",
            ));
        };
        let url = format!("{}/auth/tokens", versioned_auth_url(auth_url));
        let response = http
            .get(&url)
            .header("X-Auth-Token", token)
            .header("X-Subject-Token", token)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .with_context(|| format!("could not reach the identity service at {url}"))?;
        let response = check_status(response).await?;
        let body: Value = response.json().await.context("reading the token")?;
        return Ok(Session {
            token: token.clone(),
            image_url: image_url_for(settings, &body, interface, region)?,
            project_id: token_project_id(&body),
        });
    }
    let request = password_auth_body(settings)?;
    let auth_url = versioned_auth_url(settings.auth_url.as_deref().unwrap_or_default());
    let url = format!("{auth_url}/auth/tokens");
    let response = http
        .post(&url)
        .header(reqwest::header::ACCEPT, "application/json")
        .json(&request)
        .send()
        .await
        .with_context(|| format!("could not reach the identity service at {url}"))?;
    let response = check_status(response).await?;
    let token = response
        .headers()
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| ApiError {
            status: response.status().as_u16(),
            message: "the identity service returned no X-Subject-Token header".to_owned(),
        })?;
    let body: Value = response.json().await.context("reading the token")?;
    Ok(Session {
        token,
        image_url: image_url_for(settings, &body, interface, region)?,
        project_id: token_project_id(&body),
    })
}

fn image_url_for(
    settings: &Settings,
    token_body: &Value,
    interface: &str,
    region: Option<&str>,
) -> anyhow::Result<String> {
    match &settings.image_url {
        Some(url) => Ok(unversioned_image_url(url)),
        None => image_endpoint_from_catalog(token_body, interface, region),
    }
}

fn token_project_id(token_body: &Value) -> Option<String> {
    token_body
        .pointer("/token/project/id")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOUDS: &str = r#"
clouds:
  ims:
    auth_type: password
    auth:
      auth_url: http://127.0.0.1:9292/identity
      username: admin
      password: secret
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    interface: public
    identity_api_version: 3
  other:
    auth:
      auth_url: http://other/v3
      project_id: 1234
"#;

    #[test]
    fn clouds_yaml_profile_is_read() {
        let settings = parse_clouds_yaml(CLOUDS, "ims").unwrap().unwrap();
        assert_eq!(
            settings,
            Settings {
                auth_url: Some("http://127.0.0.1:9292/identity".into()),
                username: Some("admin".into()),
                password: Some("secret".into()),
                project_name: Some("admin".into()),
                user_domain_name: Some("Default".into()),
                project_domain_name: Some("Default".into()),
                region_name: Some("RegionOne".into()),
                interface: Some("public".into()),
                ..Settings::default()
            }
        );
    }

    #[test]
    fn clouds_yaml_unknown_cloud_is_none() {
        assert!(parse_clouds_yaml(CLOUDS, "nope").unwrap().is_none());
    }

    #[test]
    fn clouds_yaml_numbers_are_read_as_text() {
        let settings = parse_clouds_yaml(CLOUDS, "other").unwrap().unwrap();
        assert_eq!(settings.project_id.as_deref(), Some("1234"));
    }

    #[test]
    fn malformed_clouds_yaml_is_an_error() {
        assert!(parse_clouds_yaml("clouds: [", "ims").is_err());
    }

    #[test]
    fn explicit_settings_override_the_profile() {
        let profile = parse_clouds_yaml(CLOUDS, "ims").unwrap().unwrap();
        let explicit = Settings {
            password: Some("from-env".into()),
            ..Settings::default()
        };
        let merged = explicit.or(profile);
        assert_eq!(merged.password.as_deref(), Some("from-env"));
        assert_eq!(merged.username.as_deref(), Some("admin"));
    }

    #[test]
    fn auth_url_gets_v3_only_without_a_version() {
        assert_eq!(
            versioned_auth_url("http://h:9292/identity"),
            "http://h:9292/identity/v3"
        );
        assert_eq!(
            versioned_auth_url("http://h:9292/identity/"),
            "http://h:9292/identity/v3"
        );
        assert_eq!(
            versioned_auth_url("http://h:9292/identity/v3/"),
            "http://h:9292/identity/v3"
        );
        assert_eq!(versioned_auth_url("http://h/v3.14"), "http://h/v3.14");
        assert_eq!(versioned_auth_url("http://h/vault"), "http://h/vault/v3");
    }

    #[test]
    fn image_url_drops_v2_suffix() {
        assert_eq!(unversioned_image_url("http://h:9292/"), "http://h:9292");
        assert_eq!(unversioned_image_url("http://h:9292/v2/"), "http://h:9292");
        assert_eq!(
            unversioned_image_url("http://h/image/v2.1"),
            "http://h/image"
        );
        assert_eq!(unversioned_image_url("http://h/image"), "http://h/image");
    }

    #[test]
    fn password_body_scopes_by_project_name_with_default_domains() {
        let settings = Settings {
            auth_url: Some("http://h/v3".into()),
            username: Some("u".into()),
            password: Some("p".into()),
            project_name: Some("proj".into()),
            ..Settings::default()
        };
        assert_eq!(
            password_auth_body(&settings).unwrap(),
            json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": "u", "domain": {"name": "Default"}, "password": "p"}}},
                "scope": {"project": {"name": "proj", "domain": {"name": "Default"}}}}})
        );
    }

    #[test]
    fn password_body_prefers_ids() {
        let settings = Settings {
            auth_url: Some("http://h/v3".into()),
            username: Some("u".into()),
            password: Some("p".into()),
            project_name: Some("proj".into()),
            project_id: Some("pid".into()),
            user_domain_id: Some("default".into()),
            ..Settings::default()
        };
        let body = password_auth_body(&settings).unwrap();
        assert_eq!(
            body.pointer("/auth/scope/project"),
            Some(&json!({"id": "pid"}))
        );
        assert_eq!(
            body.pointer("/auth/identity/password/user/domain"),
            Some(&json!({"id": "default"}))
        );
    }

    #[test]
    fn missing_credentials_are_a_usage_error_naming_them() {
        let err = password_auth_body(&Settings::default()).unwrap_err();
        assert!(err.downcast_ref::<super::super::UsageError>().is_some());
        let text = err.to_string();
        assert!(text.contains("OS_AUTH_URL") && text.contains("OS_PROJECT_NAME"));
    }

    fn token_with_catalog() -> Value {
        json!({"token": {"project": {"id": "p1"}, "catalog": [
            {"type": "identity", "endpoints": [
                {"interface": "public", "region_id": "RegionOne", "url": "http://h/identity/v3"}]},
            {"type": "image", "endpoints": [
                {"interface": "internal", "region_id": "RegionOne", "url": "http://internal:9292"},
                {"interface": "public", "region_id": "RegionTwo", "url": "http://two:9292/"},
                {"interface": "public", "region_id": "RegionOne", "url": "http://one:9292/v2"}]}]}})
    }

    #[test]
    fn catalog_lookup_matches_type_interface_and_region() {
        let token = token_with_catalog();
        assert_eq!(
            image_endpoint_from_catalog(&token, "public", None).unwrap(),
            "http://two:9292"
        );
        assert_eq!(
            image_endpoint_from_catalog(&token, "public", Some("RegionOne")).unwrap(),
            "http://one:9292"
        );
        assert_eq!(
            image_endpoint_from_catalog(&token, "internal", None).unwrap(),
            "http://internal:9292"
        );
        assert!(image_endpoint_from_catalog(&token, "admin", None).is_err());
        assert!(image_endpoint_from_catalog(&json!({}), "public", None).is_err());
        assert_eq!(token_project_id(&token).as_deref(), Some("p1"));
    }
}
