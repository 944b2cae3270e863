//! The one configuration of a node: TOML file, then `IMS_*` environment overrides, with defaults
//! that run (embedded SQLite and a local directory under the data dir).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP server listens on. Env `IMS_LISTEN`.
    pub listen: SocketAddr,
    /// Base URL clients reach this node at, used in the catalog and `Location` headers.
    /// Default: `http://<listen>`. Env `IMS_PUBLIC_URL`.
    pub public_url: Option<String>,
    /// Directory for the embedded database and local store. Env `IMS_DATA_DIR`.
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`. Default: SQLite in the data dir. Env `IMS_DATABASE_URL`.
    pub database_url: Option<String>,
    /// This deployment's region and its peers (`region = "name"`, or a `[region]` table).
    /// Env `IMS_REGION` (the name).
    #[serde(deserialize_with = "region_setting")]
    pub region: RegionConfig,
    /// More services for the token catalog, e.g. another node of the same deployment as
    /// `image_remote` (tempest's `alternate_image_endpoint`). Env `IMS_EXTRA_CATALOG`
    /// (comma list of `type=url`).
    pub extra_catalog: Vec<CatalogService>,
    /// Lifetime of issued tokens in seconds. Env `IMS_TOKEN_TTL_SECS`.
    pub token_ttl_secs: u64,
    /// The one store of a single-store node (`[store]`; default: a local directory). Not
    /// allowed together with `[[stores]]`.
    pub store: Option<StoreConfig>,
    /// Several stores (`[[stores]]`, Glance's `enabled_backends`): images may be held by any
    /// of them, `/v2/info/stores` lists them and uploads and imports choose among them.
    pub stores: Vec<StoreEntry>,
    /// Users' own S3 buckets that images are imported from and exported to (`[buckets]`).
    /// Unset: import/export from buckets is unavailable. Env `IMS_BUCKETS_S3_ENDPOINT`,
    /// `…_REGION`, `…_ACCESS_KEY_ID`, `…_SECRET_ACCESS_KEY` (or `…_SECRET_ACCESS_KEY_FILE`),
    /// `…_ALLOW_HTTP`, `…_UNSIGNED_PAYLOAD`.
    pub buckets: Option<ims_blob::s3conf::S3Connection>,
    pub limits: Limits,
    pub gc: GcConfig,
    pub ims: ImsConfig,
    pub import: ImportConfig,
    pub conversion: ConversionConfig,
    pub cache: CacheConfig,
    pub locations: LocationsConfig,
}

/// Image locations (Glance's `show_multiple_locations`, `show_image_direct_url`,
/// `do_secure_hash`): where the data of an image can be read, shown and managed through
/// `locations` in PATCH and `/v2/images/{id}/locations` (v2.17). URLs are fetched under the
/// `[import]` URL policy (schemes, ports, public addresses, exempt targets).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocationsConfig {
    /// Images show `locations` and PATCH may add, replace and remove them (off by default, as
    /// in Glance: it reveals where data lives). Env `IMS_SHOW_MULTIPLE_LOCATIONS`.
    pub show_multiple_locations: bool,
    /// Images with data show `direct_url`, their first location. Env
    /// `IMS_SHOW_IMAGE_DIRECT_URL`.
    pub show_image_direct_url: bool,
    /// A location added with `POST /v2/images/{id}/locations` is read in full and hashed
    /// (md5 `checksum` and `os_hash_value`); off, the image only gets its size and any
    /// hashes the caller gave. Env `IMS_DO_SECURE_HASH`.
    pub do_secure_hash: bool,
    /// Most locations one image may have (Glance's `image_location_quota`).
    pub max_locations: usize,
}

impl Default for LocationsConfig {
    fn default() -> Self {
        LocationsConfig {
            show_multiple_locations: false,
            show_image_direct_url: false,
            do_secure_hash: true,
            max_locations: 10,
        }
    }
}

/// Format conversion (IMS export, Glance's import conversion): where work files go.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConversionConfig {
    /// Directory for the work files of conversions (sources needing random access, outputs
    /// being written); emptied of leftovers at start. Needs room for a source and its
    /// conversion. Default `<data_dir>/work`. Env `IMS_CONVERSION_WORK_DIR`.
    pub work_dir: Option<PathBuf>,
    /// Engine threads per conversion; 0 = one per core. Env `IMS_CONVERSION_THREADS`.
    pub threads: usize,
}

/// A format Glance's import may convert images to (`[import] convert_to`, like Glance's
/// `image_conversion` plugin's `output_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvertTarget {
    Raw,
    Qcow2,
    Vmdk,
    Vhd,
}

impl ConvertTarget {
    pub const ALL: [ConvertTarget; 4] = [
        ConvertTarget::Raw,
        ConvertTarget::Qcow2,
        ConvertTarget::Vmdk,
        ConvertTarget::Vhd,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConvertTarget::Raw => "raw",
            ConvertTarget::Qcow2 => "qcow2",
            ConvertTarget::Vmdk => "vmdk",
            ConvertTarget::Vhd => "vhd",
        }
    }

    pub fn parse(name: &str) -> Option<ConvertTarget> {
        ConvertTarget::ALL.into_iter().find(|t| t.as_str() == name)
    }

    pub fn format(self) -> ims_diskfmt::Format {
        match self {
            ConvertTarget::Raw => ims_diskfmt::Format::Raw,
            ConvertTarget::Qcow2 => ims_diskfmt::Format::Qcow2,
            ConvertTarget::Vmdk => ims_diskfmt::Format::Vmdk,
            ConvertTarget::Vhd => ims_diskfmt::Format::Vhd,
        }
    }
}

/// A service the token catalog lists besides this node's identity and image endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogService {
    /// The catalog's service type (`image_remote`).
    #[serde(rename = "type")]
    pub service_type: String,
    /// The endpoint's public URL.
    pub url: String,
}

impl CatalogService {
    /// `type=url`, as `IMS_EXTRA_CATALOG` lists them.
    fn parse(item: &str) -> Option<CatalogService> {
        let (service_type, url) = item.split_once('=')?;
        let (service_type, url) = (service_type.trim(), url.trim());
        if service_type.is_empty() || !(url.starts_with("http://") || url.starts_with("https://")) {
            return None;
        }
        Some(CatalogService {
            service_type: service_type.to_string(),
            url: url.trim_end_matches('/').to_string(),
        })
    }
}

/// This node's image cache (`/v2/cache`): whole images on local disk, per node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Keep downloaded and queued images on this node's disk and serve the cache API.
    /// Env `IMS_CACHE_ENABLED` (`true`/`false`).
    pub enabled: bool,
    /// Directory of this node's cache; must not be shared with another node.
    /// Default `<data_dir>/cache`. Env `IMS_CACHE_DIR`.
    pub dir: Option<PathBuf>,
    /// Bytes the cache may hold; least recently used images are evicted beyond it (Glance's
    /// `image_cache_max_size`). Env `IMS_CACHE_MAX_SIZE`.
    pub max_size: u64,
    /// Seconds between prefetcher passes over the queue (queueing an image also wakes it).
    /// Env `IMS_CACHE_PREFETCH_INTERVAL_SECS`.
    pub prefetch_interval_secs: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: false,
            dir: None,
            max_size: 10 << 30,
            prefetch_interval_secs: 300,
        }
    }
}

/// The IMS API (Huawei Cloud IMS dialect): signatures and the limits of the seed's tables 5-1…5-6.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImsConfig {
    /// Largest distance in seconds between a signed request's `X-Sdk-Date` and the server's
    /// clock. Env `IMS_SIGNATURE_MAX_SKEW_SECS`.
    pub signature_max_skew_secs: u64,
    /// File holding the 32-byte key access-key secrets are sealed with; created on first use.
    /// Default `<data_dir>/access-keys.seal`. Every node of a deployment needs the same file.
    /// Env `IMS_ACCESS_KEY_SEAL_FILE`.
    pub access_key_seal_file: Option<PathBuf>,
    /// Private images a project may own (seed table 5-1: 100 per region).
    /// Env `IMS_PRIVATE_IMAGE_QUOTA`.
    pub private_image_quota: u64,
}

impl Default for ImsConfig {
    fn default() -> Self {
        ImsConfig {
            signature_max_skew_secs: 900,
            access_key_seal_file: None,
            private_image_quota: 100,
        }
    }
}

/// Seed table 5-4: an image copied to another region may be at most 128 GB.
pub const DEFAULT_CROSS_REGION_COPY_SIZE_CAP: u64 = 128 << 30;

/// The region a deployment is, and the peer regions images can be copied to
/// (`copy_image_cross_region`). In TOML either `region = "name"` or a `[region]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegionConfig {
    /// This region's name: the catalog's region, and what peers call this deployment.
    pub name: String,
    /// Largest image (bytes) copied to another region. Env `IMS_CROSS_REGION_COPY_SIZE_CAP`.
    pub cross_region_copy_size_cap: u64,
    /// Peer regions (`[[region.peers]]`), each another `ims` deployment.
    pub peers: Vec<PeerRegion>,
}

impl Default for RegionConfig {
    fn default() -> Self {
        RegionConfig {
            name: "RegionOne".into(),
            cross_region_copy_size_cap: DEFAULT_CROSS_REGION_COPY_SIZE_CAP,
            peers: Vec::new(),
        }
    }
}

impl RegionConfig {
    pub fn peer(&self, name: &str) -> Option<&PeerRegion> {
        self.peers.iter().find(|p| p.name == name)
    }
}

/// A peer region and the trust credential this region uses there: the access key of an account
/// on the peer, whose project receives the copies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRegion {
    /// The peer's region name, as copy requests give it (`region`).
    pub name: String,
    /// The peer's API endpoint, `http(s)://host:port` (any path is ignored, as the SDK does).
    pub endpoint: String,
    /// The project on the peer that copies land in: its id (sent as `X-Project-Id`) and its name
    /// (what copy requests give as `project_name`).
    pub project_id: String,
    pub project_name: String,
    /// Access key id of the account on the peer.
    pub access_key: String,
    /// File holding that key's secret (never in the TOML file, never logged).
    pub secret_key_file: PathBuf,
}

impl<'de> Deserialize<'de> for RegionConfigSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RegionConfigSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a region name or a [region] table")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RegionConfigSetting(RegionConfig {
                    name: v.to_string(),
                    ..RegionConfig::default()
                }))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                RegionConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RegionConfigSetting)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// `region` as written: a bare name or the full table.
struct RegionConfigSetting(RegionConfig);

fn region_setting<'de, D: serde::Deserializer<'de>>(d: D) -> Result<RegionConfig, D::Error> {
    RegionConfigSetting::deserialize(d).map(|s| s.0)
}

/// Interoperable image import (`/v2/images/{id}/import`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImportConfig {
    /// Methods offered in `/v2/info/import`. Env `IMS_IMPORT_METHODS` (comma list).
    pub methods: Vec<ImportMethod>,
    /// URL schemes web-download may fetch. Env `IMS_IMPORT_ALLOWED_SCHEMES` (comma list).
    pub allowed_schemes: Vec<String>,
    /// Ports web-download may connect to. Env `IMS_IMPORT_ALLOWED_PORTS` (comma list).
    pub allowed_ports: Vec<u16>,
    /// Exact `ip:port` addresses web-download may reach although they are not public (loopback,
    /// private, link-local are refused otherwise). Env `IMS_IMPORT_EXEMPT_TARGETS` (comma list).
    pub exempt_targets: Vec<SocketAddr>,
    /// Import jobs this node runs at once. Env `IMS_IMPORT_WORKERS`.
    pub workers: usize,
    /// Convert imported images to this format after staging (Glance's `image_conversion`
    /// plugin, `output_format`); unset keeps the uploaded format. Env `IMS_IMPORT_CONVERT_TO`.
    pub convert_to: Option<ConvertTarget>,
}

/// An import method (Glance's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImportMethod {
    /// Data staged with `PUT /v2/images/{id}/stage` first.
    GlanceDirect,
    /// Data fetched from a URL.
    WebDownload,
    /// The data of an active image copied to more stores (admin; offered only with several
    /// stores).
    CopyImage,
    /// Data and properties read from an image of another Glance (this deployment's catalog
    /// endpoint in a region). Opt-in, as in Glance.
    GlanceDownload,
}

impl ImportMethod {
    pub const ALL: [ImportMethod; 4] = [
        ImportMethod::GlanceDirect,
        ImportMethod::WebDownload,
        ImportMethod::CopyImage,
        ImportMethod::GlanceDownload,
    ];

    /// Glance's default `enabled_import_methods` (`glance-download` is opt-in).
    pub const DEFAULT: [ImportMethod; 3] = [
        ImportMethod::GlanceDirect,
        ImportMethod::WebDownload,
        ImportMethod::CopyImage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ImportMethod::GlanceDirect => "glance-direct",
            ImportMethod::WebDownload => "web-download",
            ImportMethod::CopyImage => "copy-image",
            ImportMethod::GlanceDownload => "glance-download",
        }
    }

    pub fn parse(name: &str) -> Option<ImportMethod> {
        ImportMethod::ALL.into_iter().find(|m| m.as_str() == name)
    }
}

impl Default for ImportConfig {
    fn default() -> Self {
        ImportConfig {
            methods: ImportMethod::DEFAULT.to_vec(),
            allowed_schemes: vec!["http".into(), "https".into()],
            allowed_ports: vec![80, 443],
            exempt_targets: Vec::new(),
            workers: 2,
            convert_to: None,
        }
    }
}

/// Parses a comma list from the environment variable `name`, if set.
fn env_list<T>(
    get: &dyn Fn(&str) -> Option<String>,
    name: &'static str,
    parse: impl Fn(&str) -> Option<T>,
    slot: &mut Vec<T>,
) -> Result<(), ConfigError> {
    let Some(value) = get(name) else {
        return Ok(());
    };
    let mut items = Vec::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        items.push(parse(item).ok_or_else(|| ConfigError::Env {
            name,
            value: value.clone(),
            reason: format!("{item:?} is not valid"),
        })?);
    }
    *slot = items;
    Ok(())
}

/// Cleaning up after crashes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// Seconds between collector runs (the first runs at start-up). Env `IMS_GC_INTERVAL_SECS`.
    pub interval_secs: u64,
    /// A `saving` image whose upload sent no heartbeat for this long is reset to `queued`;
    /// uploads heartbeat every sixth of it. Env `IMS_UPLOAD_STALE_AFTER_SECS`.
    pub upload_stale_after_secs: u64,
    /// Unreferenced blobs and abandoned temp files younger than this are left alone (an upload
    /// may be about to publish). Env `IMS_ORPHAN_MIN_AGE_SECS`.
    pub orphan_min_age_secs: u64,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval_secs: 300,
            upload_stale_after_secs: 180,
            orphan_min_age_secs: 600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum StoreConfig {
    /// Image data in a local directory. `path` defaults to `<data_dir>/store`.
    /// Env `IMS_STORE_PATH`.
    Local { path: Option<PathBuf> },
    /// Image data in an S3 bucket (Garage, Ceph RGW, MinIO, AWS): `bucket`, `prefix` and a
    /// `[store.connection]` table. Env `IMS_STORE_KIND=s3` and `IMS_STORE_S3_*`.
    S3(ims_blob::s3::S3StoreConfig),
}

/// One of several stores (`[[stores]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreEntry {
    /// The id clients name it by (`stores`, `X-Image-Meta-Store`, `/v2/stores/{id}/…`): 1 to
    /// 255 of `A-Z a-z 0-9 _ -`, not starting with `os_glance_` (Glance's reserved stores).
    pub id: String,
    /// Shown in `/v2/info/stores`.
    #[serde(default)]
    pub description: Option<String>,
    /// Downloads read the stores holding an image highest weight first, and the image's
    /// `stores` lists them in that order. Default 0.
    #[serde(default)]
    pub weight: i64,
    /// Uploads and imports that name no store go here; exactly one store is the default.
    #[serde(default)]
    pub default: bool,
    /// Listed (`"read-only": "true"`) and read, never written: uploads, imports and copies
    /// refuse it and `all_stores` skips it.
    #[serde(default)]
    pub read_only: bool,
    pub kind: StoreKind,
    /// `kind = "local"`: the directory. Default `<data_dir>/stores/<id>`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `kind = "s3"`: bucket, prefix and `[stores.s3.connection]`.
    #[serde(default)]
    pub s3: Option<ims_blob::s3::S3StoreConfig>,
}

/// What a `[[stores]]` entry keeps its data in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    Local,
    S3,
    /// Glance's read-only `http` store: holds no data, names the external `http`/`https`
    /// locations images may have (at most one such entry).
    Http,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest image in bytes (Glance's `image_size_cap`). Env `IMS_IMAGE_SIZE_CAP`.
    pub image_size_cap: u64,
    /// Default `image_size_total` limit: MiB of image data a project may store (each store
    /// holding an image counts); unset = unlimited. Env `IMS_IMAGE_SIZE_TOTAL` (`-1` =
    /// unlimited). `ims admin project set-limit` overrides it per project.
    pub image_size_total: Option<u64>,
    /// Default `image_stage_total` limit: MiB of staged data (and of copies in progress) per
    /// project; unset = unlimited. Env `IMS_IMAGE_STAGE_TOTAL`.
    pub image_stage_total: Option<u64>,
    /// Default `image_count_total` limit: images a project may own; unset = unlimited. Env
    /// `IMS_IMAGE_COUNT_TOTAL`.
    pub image_count_total: Option<u64>,
    /// Default `image_count_uploading` limit: images a project may upload, stage, import or
    /// copy at once; unset = unlimited. Env `IMS_IMAGE_COUNT_UPLOADING`.
    pub image_count_uploading: Option<u64>,
    /// Largest JSON request body in bytes. Env `IMS_MAX_JSON_BODY`.
    pub max_json_body: usize,
}

impl Limits {
    /// The configured default limit of `resource` (a project's own limit replaces it).
    pub fn default_limit(&self, resource: ims_domain::QuotaResource) -> ims_domain::Limit {
        use ims_domain::QuotaResource as R;
        let value = match resource {
            R::ImageSizeTotal => self.image_size_total,
            R::ImageStageTotal => self.image_stage_total,
            R::ImageCountTotal => self.image_count_total,
            R::ImageCountUploading => self.image_count_uploading,
        };
        value.map_or(ims_domain::Limit::Unlimited, ims_domain::Limit::At)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            image_size_cap: 1 << 40,
            image_size_total: None,
            image_stage_total: None,
            image_count_total: None,
            image_count_uploading: None,
            max_json_body: 1 << 20,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9292)),
            public_url: None,
            data_dir: PathBuf::from("ims-data"),
            database_url: None,
            region: RegionConfig::default(),
            extra_catalog: Vec::new(),
            token_ttl_secs: 3600,
            store: None,
            stores: Vec::new(),
            buckets: None,
            limits: Limits::default(),
            gc: GcConfig::default(),
            ims: ImsConfig::default(),
            import: ImportConfig::default(),
            conversion: ConversionConfig::default(),
            cache: CacheConfig::default(),
            locations: LocationsConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Reading {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing config file {path}: {source}")]
    Parsing {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error(transparent)]
    S3Env(ims_blob::s3conf::S3EnvError),
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    Env {
        name: &'static str,
        value: String,
        reason: String,
    },
}

fn env_parse<T: std::str::FromStr>(
    get: &dyn Fn(&str) -> Option<String>,
    name: &'static str,
    slot: &mut T,
) -> Result<(), ConfigError>
where
    T::Err: std::fmt::Display,
{
    if let Some(value) = get(name) {
        *slot = value.parse().map_err(|e: T::Err| ConfigError::Env {
            name,
            value,
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

/// A per-project limit from the environment: a number, or `-1` for unlimited.
fn env_limit(
    get: &dyn Fn(&str) -> Option<String>,
    name: &'static str,
    slot: &mut Option<u64>,
) -> Result<(), ConfigError> {
    let Some(value) = get(name) else {
        return Ok(());
    };
    *slot = match value.trim() {
        "-1" => None,
        v => Some(
            v.parse()
                .map_err(|e: std::num::ParseIntError| ConfigError::Env {
                    name,
                    value: value.clone(),
                    reason: e.to_string(),
                })?,
        ),
    };
    Ok(())
}

/// `IMS_STORE_KIND` (`local` or `s3`), then `IMS_STORE_S3_*` for an S3 store, and
/// `IMS_BUCKETS_S3_*` for user buckets.
fn apply_store_env(
    config: &mut Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match env("IMS_STORE_KIND").as_deref() {
        Some("local") if !matches!(config.store, None | Some(StoreConfig::Local { .. })) => {
            config.store = Some(StoreConfig::Local { path: None });
        }
        Some("s3") if !matches!(config.store, Some(StoreConfig::S3(_))) => {
            config.store = Some(StoreConfig::S3(Default::default()));
        }
        None | Some("local" | "s3") => {}
        Some(other) => {
            return Err(ConfigError::Env {
                name: "IMS_STORE_KIND",
                value: other.to_string(),
                reason: "expected local or s3".into(),
            });
        }
    }
    if let Some(StoreConfig::S3(s3)) = &mut config.store {
        if let Some(bucket) = env("IMS_STORE_S3_BUCKET") {
            s3.bucket = bucket;
        }
        if let Some(prefix) = env("IMS_STORE_S3_PREFIX") {
            s3.prefix = prefix;
        }
        s3.connection
            .apply_env("IMS_STORE_S3_", env)
            .map_err(ConfigError::S3Env)?;
    }
    let from_file = config.buckets.is_some();
    let mut buckets = config.buckets.take().unwrap_or_default();
    let set = buckets
        .apply_env("IMS_BUCKETS_S3_", env)
        .map_err(ConfigError::S3Env)?;
    if set || from_file {
        config.buckets = Some(buckets);
    }
    Ok(())
}

impl Config {
    /// Defaults, then the TOML file (if any), then `IMS_*` variables from the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with(file, &|name| std::env::var(name).ok())
    }

    /// [`Config::load`] with an explicit environment, for tests.
    pub fn load_with(
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Reading {
                        path: path.to_path_buf(),
                        source,
                    })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parsing {
                    path: path.to_path_buf(),
                    source,
                })?
            }
            None => Config::default(),
        };
        env_parse(env, "IMS_LISTEN", &mut config.listen)?;
        if let Some(url) = env("IMS_PUBLIC_URL") {
            config.public_url = Some(url);
        }
        if let Some(dir) = env("IMS_DATA_DIR") {
            config.data_dir = PathBuf::from(dir);
        }
        if let Some(url) = env("IMS_DATABASE_URL") {
            config.database_url = Some(url);
        }
        if let Some(region) = env("IMS_REGION") {
            config.region.name = region;
        }
        env_parse(env, "IMS_TOKEN_TTL_SECS", &mut config.token_ttl_secs)?;
        env_list(
            env,
            "IMS_EXTRA_CATALOG",
            CatalogService::parse,
            &mut config.extra_catalog,
        )?;
        if let Some(path) = env("IMS_STORE_PATH") {
            config.store = Some(StoreConfig::Local {
                path: Some(PathBuf::from(path)),
            });
        }
        apply_store_env(&mut config, env)?;
        env_parse(env, "IMS_IMAGE_SIZE_CAP", &mut config.limits.image_size_cap)?;
        for (name, slot) in [
            ("IMS_IMAGE_SIZE_TOTAL", &mut config.limits.image_size_total),
            (
                "IMS_IMAGE_STAGE_TOTAL",
                &mut config.limits.image_stage_total,
            ),
            (
                "IMS_IMAGE_COUNT_TOTAL",
                &mut config.limits.image_count_total,
            ),
            (
                "IMS_IMAGE_COUNT_UPLOADING",
                &mut config.limits.image_count_uploading,
            ),
        ] {
            env_limit(env, name, slot)?;
        }
        env_parse(env, "IMS_MAX_JSON_BODY", &mut config.limits.max_json_body)?;
        env_parse(env, "IMS_GC_INTERVAL_SECS", &mut config.gc.interval_secs)?;
        env_parse(
            env,
            "IMS_UPLOAD_STALE_AFTER_SECS",
            &mut config.gc.upload_stale_after_secs,
        )?;
        env_parse(
            env,
            "IMS_ORPHAN_MIN_AGE_SECS",
            &mut config.gc.orphan_min_age_secs,
        )?;
        env_parse(
            env,
            "IMS_SIGNATURE_MAX_SKEW_SECS",
            &mut config.ims.signature_max_skew_secs,
        )?;
        if let Some(path) = env("IMS_ACCESS_KEY_SEAL_FILE") {
            config.ims.access_key_seal_file = Some(PathBuf::from(path));
        }
        env_parse(
            env,
            "IMS_CROSS_REGION_COPY_SIZE_CAP",
            &mut config.region.cross_region_copy_size_cap,
        )?;
        env_parse(
            env,
            "IMS_PRIVATE_IMAGE_QUOTA",
            &mut config.ims.private_image_quota,
        )?;
        env_parse(env, "IMS_CACHE_ENABLED", &mut config.cache.enabled)?;
        if let Some(dir) = env("IMS_CACHE_DIR") {
            config.cache.dir = Some(PathBuf::from(dir));
        }
        env_parse(env, "IMS_CACHE_MAX_SIZE", &mut config.cache.max_size)?;
        env_parse(
            env,
            "IMS_CACHE_PREFETCH_INTERVAL_SECS",
            &mut config.cache.prefetch_interval_secs,
        )?;
        let locations = &mut config.locations;
        env_parse(
            env,
            "IMS_SHOW_MULTIPLE_LOCATIONS",
            &mut locations.show_multiple_locations,
        )?;
        env_parse(
            env,
            "IMS_SHOW_IMAGE_DIRECT_URL",
            &mut locations.show_image_direct_url,
        )?;
        env_parse(env, "IMS_DO_SECURE_HASH", &mut locations.do_secure_hash)?;
        let import = &mut config.import;
        env_list(
            env,
            "IMS_IMPORT_METHODS",
            ImportMethod::parse,
            &mut import.methods,
        )?;
        env_list(
            env,
            "IMS_IMPORT_ALLOWED_SCHEMES",
            |s| Some(s.to_ascii_lowercase()),
            &mut import.allowed_schemes,
        )?;
        env_list(
            env,
            "IMS_IMPORT_ALLOWED_PORTS",
            |s| s.parse().ok(),
            &mut import.allowed_ports,
        )?;
        env_list(
            env,
            "IMS_IMPORT_EXEMPT_TARGETS",
            |s| s.parse().ok(),
            &mut import.exempt_targets,
        )?;
        env_parse(env, "IMS_IMPORT_WORKERS", &mut import.workers)?;
        if let Some(value) = env("IMS_IMPORT_CONVERT_TO") {
            import.convert_to = match value.as_str() {
                "" | "none" => None,
                name => Some(ConvertTarget::parse(name).ok_or_else(|| ConfigError::Env {
                    name: "IMS_IMPORT_CONVERT_TO",
                    value: value.clone(),
                    reason: "expected raw, qcow2, vmdk or vhd".into(),
                })?),
            };
        }
        if let Some(dir) = env("IMS_CONVERSION_WORK_DIR") {
            config.conversion.work_dir = Some(PathBuf::from(dir));
        }
        env_parse(
            env,
            "IMS_CONVERSION_THREADS",
            &mut config.conversion.threads,
        )?;
        Ok(config)
    }

    pub fn access_key_seal_file(&self) -> PathBuf {
        self.ims
            .access_key_seal_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("access-keys.seal"))
    }

    /// Where conversions keep their work files.
    pub fn work_dir(&self) -> PathBuf {
        self.conversion
            .work_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("work"))
    }

    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
            .trim_end_matches('/')
            .to_string()
    }

    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("ims.sqlite").display()
            )
        })
    }

    /// The local store's directory (`<data_dir>/store` unless configured); for an S3 store,
    /// where a local store would be.
    /// This node's cache directory.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("cache"))
    }

    pub fn store_path(&self) -> PathBuf {
        match &self.store {
            Some(StoreConfig::Local { path: Some(path) }) => path.clone(),
            _ => self.data_dir.join("store"),
        }
    }

    /// The directory of the local `[[stores]]` entry `entry`.
    pub fn store_entry_path(&self, entry: &StoreEntry) -> PathBuf {
        entry
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("stores").join(&entry.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_run_embedded() {
        let c = Config::load_with(None, &|_| None).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9292");
        assert_eq!(c.public_url(), "http://127.0.0.1:9292");
        assert_eq!(c.database_url(), "sqlite://ims-data/ims.sqlite?mode=rwc");
        assert_eq!(c.store_path(), PathBuf::from("ims-data/store"));
    }

    #[test]
    fn file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ims.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:80\"\nregion = \"R1\"\n[store]\nkind = \"local\"\npath = \"/srv/x\"\n[limits]\nimage_size_cap = 10\n",
        )
        .unwrap();
        let env = |k: &str| (k == "IMS_REGION").then(|| "R2".to_string());
        let c = Config::load_with(Some(&path), &env).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:80");
        assert_eq!(c.region.name, "R2");
        assert_eq!(c.store_path(), PathBuf::from("/srv/x"));
        assert_eq!(c.limits.image_size_cap, 10);
    }

    #[test]
    fn region_table_with_peers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ims.toml");
        std::fs::write(
            &path,
            "[region]\nname = \"a\"\ncross_region_copy_size_cap = 1024\n\
             [[region.peers]]\nname = \"b\"\nendpoint = \"http://127.0.0.1:9393\"\n\
             project_id = \"p\"\nproject_name = \"b-proj\"\naccess_key = \"AK\"\n\
             secret_key_file = \"/run/b.sk\"\n",
        )
        .unwrap();
        let c = Config::load_with(Some(&path), &|_| None).unwrap();
        assert_eq!(c.region.name, "a");
        assert_eq!(c.region.cross_region_copy_size_cap, 1024);
        let peer = c.region.peer("b").unwrap();
        assert_eq!(peer.endpoint, "http://127.0.0.1:9393");
        assert_eq!(peer.secret_key_file, PathBuf::from("/run/b.sk"));
        assert!(c.region.peer("a").is_none());
        // A bare name still works, and unknown keys in the table are errors.
        std::fs::write(&path, "region = \"solo\"\n").unwrap();
        let c = Config::load_with(Some(&path), &|_| None).unwrap();
        assert_eq!(c.region.name, "solo");
        assert_eq!(
            c.region.cross_region_copy_size_cap,
            DEFAULT_CROSS_REGION_COPY_SIZE_CAP
        );
        std::fs::write(&path, "[region]\nname = \"a\"\nsecret = \"x\"\n").unwrap();
        let err = Config::load_with(Some(&path), &|_| None).unwrap_err();
        assert!(err.to_string().contains("parsing"), "{err}");
    }

    #[test]
    fn project_limits_from_file_then_env() {
        use ims_domain::{Limit, QuotaResource as R};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ims.toml");
        std::fs::write(
            &path,
            "[limits]\nimage_size_total = 1024\nimage_count_total = 10\nimage_stage_total = 5\n",
        )
        .unwrap();
        let env = |k: &str| match k {
            "IMS_IMAGE_COUNT_UPLOADING" => Some("2".to_string()),
            "IMS_IMAGE_STAGE_TOTAL" => Some("-1".to_string()),
            _ => None,
        };
        let c = Config::load_with(Some(&path), &env).unwrap();
        assert_eq!(c.limits.default_limit(R::ImageSizeTotal), Limit::At(1024));
        assert_eq!(c.limits.default_limit(R::ImageCountTotal), Limit::At(10));
        assert_eq!(c.limits.default_limit(R::ImageStageTotal), Limit::Unlimited);
        assert_eq!(c.limits.default_limit(R::ImageCountUploading), Limit::At(2));
        let bad = |k: &str| (k == "IMS_IMAGE_COUNT_TOTAL").then(|| "many".to_string());
        let err = Config::load_with(None, &bad).unwrap_err();
        assert!(err.to_string().contains("IMS_IMAGE_COUNT_TOTAL"), "{err}");
    }

    #[test]
    fn import_lists_from_env() {
        let env = |k: &str| match k {
            "IMS_IMPORT_METHODS" => Some("web-download".to_string()),
            "IMS_IMPORT_ALLOWED_PORTS" => Some("80, 8080".to_string()),
            "IMS_IMPORT_EXEMPT_TARGETS" => Some("127.0.0.1:8123".to_string()),
            _ => None,
        };
        let c = Config::load_with(None, &env).unwrap();
        assert_eq!(c.import.methods, vec![ImportMethod::WebDownload]);
        assert_eq!(c.import.allowed_ports, vec![80, 8080]);
        assert_eq!(c.import.exempt_targets[0].to_string(), "127.0.0.1:8123");
        let bad = |k: &str| (k == "IMS_IMPORT_METHODS").then(|| "glance-upload".to_string());
        let err = Config::load_with(None, &bad).unwrap_err();
        assert!(err.to_string().contains("glance-upload"), "{err}");
    }

    #[test]
    fn cache_and_catalog_from_env() {
        let env = |k: &str| match k {
            "IMS_CACHE_ENABLED" => Some("true".to_string()),
            "IMS_CACHE_MAX_SIZE" => Some("4096".to_string()),
            "IMS_EXTRA_CATALOG" => Some("image_remote=http://127.0.0.1:9393/".to_string()),
            _ => None,
        };
        let c = Config::load_with(None, &env).unwrap();
        assert!(c.cache.enabled);
        assert_eq!(c.cache.max_size, 4096);
        assert_eq!(c.cache_dir(), PathBuf::from("ims-data/cache"));
        assert_eq!(
            c.extra_catalog,
            vec![CatalogService {
                service_type: "image_remote".into(),
                url: "http://127.0.0.1:9393".into()
            }]
        );
        assert!(!Config::load_with(None, &|_| None).unwrap().cache.enabled);
        let bad = |k: &str| (k == "IMS_EXTRA_CATALOG").then(|| "image_remote".to_string());
        assert!(Config::load_with(None, &bad).is_err());
    }

    #[test]
    fn unknown_keys_and_bad_env_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ims.toml");
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        assert!(matches!(
            Config::load_with(Some(&path), &|_| None),
            Err(ConfigError::Parsing { .. })
        ));
        let env = |k: &str| (k == "IMS_LISTEN").then(|| "nope".to_string());
        let err = Config::load_with(None, &env).unwrap_err();
        assert!(err.to_string().contains("IMS_LISTEN"), "{err}");
    }

    #[test]
    fn s3_store_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ims.toml");
        std::fs::write(
            &path,
            "[store]\nkind = \"s3\"\nbucket = \"images\"\n[store.connection]\nendpoint = \"http://127.0.0.1:3900\"\nallow_http = true\nsecret_access_key_file = \"/etc/ims/s3\"\n",
        )
        .unwrap();
        let env = |k: &str| match k {
            "IMS_STORE_S3_ACCESS_KEY_ID" => Some("GK1".to_string()),
            "IMS_STORE_S3_SECRET_ACCESS_KEY" => Some("very-secret".to_string()),
            "IMS_STORE_S3_PREFIX" => Some("ims/".to_string()),
            _ => None,
        };
        let c = Config::load_with(Some(&path), &env).unwrap();
        let Some(StoreConfig::S3(s3)) = &c.store else {
            panic!("expected an S3 store: {:?}", c.store)
        };
        assert_eq!(s3.bucket, "images");
        assert_eq!(s3.prefix, "ims/");
        assert_eq!(
            s3.connection.endpoint.as_deref(),
            Some("http://127.0.0.1:3900")
        );
        assert!(s3.connection.allow_http);
        assert_eq!(s3.connection.access_key_id.as_deref(), Some("GK1"));
        assert!(
            !format!("{c:?}").contains("very-secret"),
            "Debug hides the secret"
        );
        assert!(c.buckets.is_none());

        std::fs::write(
            &path,
            "[store]\nkind = \"s3\"\nbucket = \"b\"\nendpont = \"x\"\n",
        )
        .unwrap();
        assert!(matches!(
            Config::load_with(Some(&path), &|_| None),
            Err(ConfigError::Parsing { .. })
        ));
        let env = |k: &str| match k {
            "IMS_STORE_KIND" => Some("s3".to_string()),
            "IMS_STORE_S3_BUCKET" => Some("b2".to_string()),
            "IMS_BUCKETS_S3_ENDPOINT" => Some("http://127.0.0.1:3900".to_string()),
            _ => None,
        };
        let c = Config::load_with(None, &env).unwrap();
        assert!(matches!(&c.store, Some(StoreConfig::S3(s3)) if s3.bucket == "b2"));
        assert_eq!(
            c.buckets.unwrap().endpoint.as_deref(),
            Some("http://127.0.0.1:3900")
        );
        let env = |k: &str| (k == "IMS_STORE_KIND").then(|| "nfs".to_string());
        assert!(Config::load_with(None, &env).is_err());

        // `[buckets]` from the file alone (no IMS_BUCKETS_S3_* set) is kept.
        std::fs::write(
            &path,
            "[buckets]\nendpoint = \"http://127.0.0.1:3901\"\nallow_http = true\n",
        )
        .unwrap();
        let c = Config::load_with(Some(&path), &|_| None).unwrap();
        let buckets = c.buckets.expect("[buckets] from the file");
        assert_eq!(buckets.endpoint.as_deref(), Some("http://127.0.0.1:3901"));
        assert!(buckets.allow_http);
    }
}
