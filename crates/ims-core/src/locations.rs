//! Image locations (Glance's `show_multiple_locations` and the v2.17 location API): where an
//! image's data can be read. Data in this service's stores shows as one location per store;
//! external locations belong to the read-only `http` store and are `http`/`https` URLs only.
//!
//! A location URL is a fetch target of the server, so it goes through the import URL policy
//! ([`crate::fetch`]: schemes, ports, public addresses after resolution, pinned address,
//! redirects re-checked), and its data is read in full and inspected like an upload (a bare
//! disk must be its declared format, references to other files are refused) before a size or
//! hash is recorded. PATCH adds read the URL before answering; `POST /v2/images/{id}/locations`
//! does it in a `location_import` job that also hashes the data (`do_secure_hash`) and checks
//! the caller's validation data. A job watches its image and stops when it is deleted (on any
//! node). Downloads of an image whose data is only at locations stream from the first location
//! that answers.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use ims_blob::{BlobError, BlobStream};
use ims_diskfmt::probe::InspectionWindow;
use ims_domain::image::{ImageLocation, LocationData};
use ims_domain::{Caller, ErrorKind, Image, ImageStatus};
use ims_jobs::runner::{JobContext, JobFailure, JobHandler};
use ims_jobs::{Job, JobStore, NewJob};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::config::LocationsConfig;
use crate::error::{ServiceError, ServiceResult};
use crate::fetch::{UrlPolicy, check_url, open_url};
use crate::images::ImageService;
use crate::import::{LOCK_PROPERTY, check_import_lock};
use crate::patch::PatchKind;

/// The job kind of a v2.17 location import (Glance's task type `location_import`).
pub const LOCATION_JOB_KIND: &str = "glance.location_import";
/// The hash algorithm of `os_hash_value` when the caller names none (Glance's
/// `hashing_algorithm`).
pub const DEFAULT_HASH_ALGO: &str = "sha512";
/// Algorithms `POST /v2/images/{id}/locations` accepts in `validation_data`.
pub const HASH_ALGOS: &[&str] = &["sha1", "sha256", "sha512", "md5"];
/// How often a location import checks that its image still exists while reading.
const CANCEL_POLL: Duration = Duration::from_secs(1);
/// Location imports run once more after a crash; a failure the handler reports is final.
const LOCATION_MAX_ATTEMPTS: u32 = 3;
/// Chunks queued for the hashing thread before the reader waits; bounds memory.
const HASH_QUEUE_DEPTH: usize = 4;
/// Longest location URL (Glance's schema: `maxLength` 255).
pub const MAX_LOCATION_URL: usize = 255;
/// The metadata key naming a location's store (multi-store).
const STORE_KEY: &str = "store";

/// What a location (the value of a PATCH op or a v2.17 call) says.
#[derive(Debug, Clone, PartialEq)]
pub struct LocationValue {
    pub url: String,
    pub metadata: Map<String, Value>,
    pub validation: Option<ValidationData>,
}

/// Values for the image's hashes that come with a location. PATCH needs `os_hash_algo` and
/// `os_hash_value` (and may give `checksum`); v2.17 gives both or neither.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidationData {
    pub checksum: Option<String>,
    pub os_hash_algo: Option<String>,
    pub os_hash_value: Option<String>,
}

impl ValidationData {
    fn entries(&self) -> [(&'static str, Option<&String>); 3] {
        [
            ("checksum", self.checksum.as_ref()),
            ("os_hash_algo", self.os_hash_algo.as_ref()),
            ("os_hash_value", self.os_hash_value.as_ref()),
        ]
    }
}

/// The location part of a PATCH op on `/locations` (replace) or `/locations/<n|->` (add,
/// remove).
#[derive(Debug, Clone, PartialEq)]
pub struct LocationPatch {
    /// The pointer's second segment (`add`, `remove`).
    pub position: Option<String>,
    /// One value for `add`, the whole list for `replace`, none for `remove`.
    pub values: Vec<LocationValue>,
}

/// What the node does with locations.
#[derive(Debug, Clone, Default)]
pub struct LocationSettings {
    pub config: LocationsConfig,
    /// The import URL policy; location URLs are fetched under it.
    pub policy: UrlPolicy,
}

/// A location URL read and inspected: how many bytes it holds, of what virtual size, and the
/// hashes when they were computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadLocation {
    pub size: u64,
    pub virtual_size: Option<u64>,
    pub hashes: Option<LocationHashes>,
}

/// md5 `checksum` and the `os_hash_value` of `algo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocationHashes {
    pub md5: String,
    pub algo: String,
    pub value: String,
}

/// The locations as images show them: one per store holding the blob (`ims://<store>/<key>`),
/// then the external ones; `(url, metadata)`.
pub fn shown_locations(image: &Image, multi_store: bool) -> Vec<(String, Map<String, Value>)> {
    let mut shown = Vec::new();
    if let Some(data) = &image.data {
        for store in &data.stores {
            let mut metadata = Map::new();
            if multi_store {
                metadata.insert(STORE_KEY.into(), json!(store));
            }
            shown.push((format!("ims://{store}/{}", data.blob_key), metadata));
        }
    }
    for location in &image.locations {
        shown.push((location.url.clone(), parse_metadata(&location.metadata)));
    }
    shown
}

fn parse_metadata(text: &str) -> Map<String, Value> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// The stores an image's `stores` lists: those holding the blob, then the `http` store if
/// the image has external locations.
pub fn shown_stores(image: &Image, http_store: Option<&str>) -> Vec<String> {
    let mut ids: Vec<String> = image
        .data
        .as_ref()
        .map(|d| d.stores.clone())
        .unwrap_or_default();
    if let Some(http) = http_store
        && !image.locations.is_empty()
        && !ids.iter().any(|s| s == http)
    {
        ids.push(http.to_owned());
    }
    ids
}

/// Hex digits only (any case), as Glance's `bytearray.fromhex` accepts them (no spaces).
fn hex_bytes(text: &str) -> Option<usize> {
    (text.len() % 2 == 0 && text.bytes().all(|b| b.is_ascii_hexdigit())).then(|| text.len() / 2)
}

/// Digest size of a hash algorithm in bytes.
fn digest_size(algo: &str) -> Option<usize> {
    match algo {
        "md5" => Some(16),
        "sha1" => Some(20),
        "sha256" => Some(32),
        "sha512" => Some(64),
        _ => None,
    }
}

/// md5 and one more digest of a stream, on a thread of its own.
struct LocationHasher {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    handle: std::thread::JoinHandle<(String, String)>,
    algo: String,
}

enum Digester {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Digester {
    fn new(algo: &str) -> Option<Digester> {
        use sha2::Digest;
        Some(match algo {
            "md5" => Digester::Md5(md5::Md5::new()),
            "sha1" => Digester::Sha1(sha1::Sha1::new()),
            "sha256" => Digester::Sha256(sha2::Sha256::new()),
            "sha512" => Digester::Sha512(sha2::Sha512::new()),
            _ => return None,
        })
    }

    fn update(&mut self, data: &[u8]) {
        use sha2::Digest;
        match self {
            Digester::Md5(d) => d.update(data),
            Digester::Sha1(d) => d.update(data),
            Digester::Sha256(d) => d.update(data),
            Digester::Sha512(d) => d.update(data),
        }
    }

    fn hex(self) -> String {
        use sha2::Digest;
        match self {
            Digester::Md5(d) => hex::encode(d.finalize()),
            Digester::Sha1(d) => hex::encode(d.finalize()),
            Digester::Sha256(d) => hex::encode(d.finalize()),
            Digester::Sha512(d) => hex::encode(d.finalize()),
        }
    }
}

impl LocationHasher {
    fn spawn(algo: &str) -> ServiceResult<LocationHasher> {
        let mut digest = Digester::new(algo)
            .ok_or_else(|| ServiceError::invalid(format!("Unknown hash algorithm {algo}")))?;
        let mut md5 = Digester::new("md5").expect("md5 is known");
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(HASH_QUEUE_DEPTH);
        let handle = std::thread::Builder::new()
            .name("ims-location-hash".into())
            .spawn(move || {
                while let Some(chunk) = rx.blocking_recv() {
                    md5.update(&chunk);
                    digest.update(&chunk);
                }
                (md5.hex(), digest.hex())
            })
            .map_err(|e| ServiceError::internal("spawning a hashing thread", &e))?;
        Ok(LocationHasher {
            tx,
            handle,
            algo: algo.to_owned(),
        })
    }

    async fn finish(self) -> ServiceResult<LocationHashes> {
        drop(self.tx);
        let handle = self.handle;
        let (md5, value) = tokio::task::spawn_blocking(move || handle.join())
            .await
            .map_err(|e| ServiceError::internal("hashing location data", &e))?
            .map_err(|_| ServiceError::new(ErrorKind::Internal, "the hashing thread panicked"))?;
        Ok(LocationHashes {
            md5,
            algo: self.algo,
            value,
        })
    }
}

/// Why reading a location stopped.
enum ReadError {
    /// The URL could not be read or its data is not acceptable.
    Refused(String),
    /// The image is gone (or no longer held): stop quietly.
    Cancelled,
    Service(ServiceError),
}

impl ImageService {
    /// The node's location settings.
    pub fn location_settings(&self) -> &LocationSettings {
        &self.locations
    }

    /// 400 unless `url` may be an external location here: an `http`/`https` URL while the
    /// `http` store is configured, that passes the URL policy now.
    async fn check_location_url(&self, url: &str) -> ServiceResult<()> {
        let scheme_ok = url::Url::parse(url)
            .map(|u| matches!(u.scheme(), "http" | "https"))
            .unwrap_or(false);
        if !scheme_ok || self.stores.http().is_none() || url.len() > MAX_LOCATION_URL {
            return Err(ServiceError::invalid(format!("Invalid location: {url}")));
        }
        check_url(&self.locations.policy, url)
            .await
            .map(|_| ())
            .map_err(|e| {
                ServiceError::invalid(format!("URI for location does not pass filtering: {e}"))
            })
    }

    /// Reads `url` in full under the URL policy: counts its bytes (up to the size cap), keeps
    /// the inspection window, hashes with `algo` if given, and calls `still_wanted` every
    /// [`CANCEL_POLL`]; then inspects the data against `image`'s formats.
    async fn read_location<F, Fut>(
        &self,
        image: &Image,
        url: &str,
        algo: Option<&str>,
        still_wanted: F,
    ) -> Result<ReadLocation, ReadError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let refused = |e: String| ReadError::Refused(format!("Invalid location {url}: {e}"));
        let response = open_url(&self.locations.policy, url)
            .await
            .map_err(|e| refused(e.to_string()))?;
        let hasher = match algo {
            Some(algo) => Some(LocationHasher::spawn(algo).map_err(ReadError::Service)?),
            None => None,
        };
        let cap = self.limits.image_size_cap;
        let mut window = InspectionWindow::builder();
        let mut stream = response.bytes_stream();
        let mut size: u64 = 0;
        let mut last_poll = Instant::now();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| refused(e.to_string()))?;
            size = size
                .checked_add(chunk.len() as u64)
                .filter(|s| *s <= cap)
                .ok_or_else(|| refused(format!("larger than the limit of {cap} bytes")))?;
            window.push(&chunk);
            if let Some(hasher) = &hasher {
                // A send fails only if the hashing thread died, which `finish` reports.
                let _ = hasher.tx.send(chunk).await;
            }
            if last_poll.elapsed() >= CANCEL_POLL {
                last_poll = Instant::now();
                if !still_wanted().await {
                    return Err(ReadError::Cancelled);
                }
            }
        }
        if size == 0 {
            return Err(refused("it holds no data".into()));
        }
        let disk_format = image.disk_format.clone().unwrap_or_default();
        let bare = image.container_format.as_deref() == Some("bare");
        let virtual_size = crate::upload::inspect_data(window.finish(), disk_format, bare, size)
            .await
            .map_err(|e| refused(e.message))?;
        let hashes = match hasher {
            Some(hasher) => Some(hasher.finish().await.map_err(ReadError::Service)?),
            None => None,
        };
        Ok(ReadLocation {
            size,
            virtual_size,
            hashes,
        })
    }

    /// Reads every URL a PATCH document adds that the image does not have yet (before the
    /// update, which must not wait on the network); `(url, what was read)`.
    pub(crate) async fn read_patch_locations(
        &self,
        image: &Image,
        ops: &[crate::patch::PatchOp],
    ) -> ServiceResult<Vec<(String, ReadLocation)>> {
        let mut read: Vec<(String, ReadLocation)> = Vec::new();
        for op in ops {
            let Some(location) = &op.location else {
                continue;
            };
            if op.kind == PatchKind::Remove || location.values.is_empty() {
                continue;
            }
            self.require_shown(op.kind)?;
            for value in &location.values {
                let known = image.locations.iter().any(|l| l.url == value.url)
                    || read.iter().any(|(u, _)| *u == value.url);
                let stored = shown_locations(image, self.stores.is_multi())
                    .iter()
                    .any(|(u, _)| *u == value.url);
                if known || stored {
                    continue;
                }
                image.require_formats()?;
                self.check_location_url(&value.url).await?;
                let found = self
                    .read_location(image, &value.url, None, || async { true })
                    .await
                    .map_err(|e| match e {
                        ReadError::Refused(message) => ServiceError::invalid(message),
                        ReadError::Cancelled => ServiceError::conflict("cancelled"),
                        ReadError::Service(e) => e,
                    })?;
                read.push((value.url.clone(), found));
            }
        }
        Ok(read)
    }

    fn require_shown(&self, kind: PatchKind) -> ServiceResult<()> {
        if self.locations.config.show_multiple_locations {
            return Ok(());
        }
        let verb = match kind {
            PatchKind::Add => "add",
            PatchKind::Replace => "update",
            PatchKind::Remove => "remove",
        };
        Err(ServiceError::forbidden(format!(
            "It's not allowed to {verb} locations if locations are invisible."
        )))
    }

    /// Applies one location op of a PATCH to `image` (Glance's `_do_add_locations`,
    /// `_do_replace_locations`, `_do_remove_locations`). Stores whose copy a removal dropped
    /// are pushed to `dropped` (their blobs are deleted after the update).
    pub(crate) fn apply_location_op(
        &self,
        image: &mut Image,
        caller: &Caller,
        kind: PatchKind,
        patch: &LocationPatch,
        read: &[(String, ReadLocation)],
        dropped: &mut Vec<String>,
    ) -> ServiceResult<()> {
        match kind {
            PatchKind::Add => self.add_patch_location(image, patch, read),
            PatchKind::Replace => self.replace_patch_locations(image, patch, read),
            PatchKind::Remove => self.remove_patch_location(image, caller, patch, dropped),
        }
    }

    fn add_patch_location(
        &self,
        image: &mut Image,
        patch: &LocationPatch,
        read: &[(String, ReadLocation)],
    ) -> ServiceResult<()> {
        self.require_shown(PatchKind::Add)?;
        let [value] = patch.values.as_slice() else {
            return Err(ServiceError::invalid(
                "Adding a location needs one location.",
            ));
        };
        if !matches!(image.status, ImageStatus::Active | ImageStatus::Queued) {
            return Err(ServiceError::conflict(format!(
                "It's not allowed to add locations if image status is {}.",
                image.status.as_str()
            )));
        }
        if image.data.is_some() {
            return Err(ServiceError::conflict(format!(
                "Image {} keeps its data in this service's stores; external locations can only be added to an image without stored data.",
                image.id
            )));
        }
        let new_values = validation_values(image, std::slice::from_ref(value))?;
        let position = op_position(patch.position.as_deref(), image.locations.len(), true)
            .ok_or_else(|| ServiceError::invalid("Invalid position for adding a location."))?;
        let location = self.stored_location(value);
        if image.locations.contains(&location) {
            return Err(ServiceError::invalid(format!(
                "The location {} is already in the image.",
                value.url
            )));
        }
        if image.locations.len() >= self.locations.config.max_locations {
            return Err(ServiceError::too_large(format!(
                "Maximum number of locations exceeded ({})",
                self.locations.config.max_locations
            )));
        }
        let found = self.found_size(image, &value.url, read)?;
        image.locations.insert(position, location);
        self.activate_with(image, found, &new_values)
    }

    fn replace_patch_locations(
        &self,
        image: &mut Image,
        patch: &LocationPatch,
        read: &[(String, ReadLocation)],
    ) -> ServiceResult<()> {
        if patch.values.is_empty() {
            return Err(ServiceError::forbidden(
                "Cannot set locations to empty list.",
            ));
        }
        self.require_shown(PatchKind::Replace)?;
        if !matches!(image.status, ImageStatus::Active | ImageStatus::Queued) {
            return Err(ServiceError::conflict(format!(
                "It's not allowed to replace locations if image status is {}.",
                image.status.as_str()
            )));
        }
        let new_values = validation_values(image, &patch.values)?;
        let multi = self.stores.is_multi();
        let current = shown_locations(image, multi);
        let mut current_urls: Vec<&str> = current.iter().map(|(u, _)| u.as_str()).collect();
        let mut new_urls: Vec<&str> = patch.values.iter().map(|v| v.url.as_str()).collect();
        current_urls.sort_unstable();
        new_urls.sort_unstable();
        if !current.is_empty() && current_urls != new_urls {
            return Err(ServiceError::invalid(format!(
                "Original locations is not empty: {}",
                current_urls.join(", ")
            )));
        }
        let stored = image.data.as_ref().map(|d| d.stores.len()).unwrap_or(0);
        let mut external = Vec::with_capacity(patch.values.len());
        for value in &patch.values {
            match current[..stored].iter().find(|(u, _)| *u == value.url) {
                // A store's copy: its location cannot be edited.
                Some((_, metadata)) if *metadata != value.metadata => {
                    return Err(ServiceError::invalid(
                        "The locations of data held in this service's stores cannot be changed.",
                    ));
                }
                Some(_) => {}
                None => {
                    let location = self.stored_location(value);
                    if external.contains(&location) {
                        return Err(ServiceError::invalid(format!(
                            "The location {} is given twice.",
                            value.url
                        )));
                    }
                    external.push(location);
                }
            }
        }
        if external.len() > self.locations.config.max_locations {
            return Err(ServiceError::too_large(format!(
                "Maximum number of locations exceeded ({})",
                self.locations.config.max_locations
            )));
        }
        if current.is_empty() {
            // New data: every location must hold the same number of bytes.
            let mut found = None;
            for value in &patch.values {
                let this = self.found_size(image, &value.url, read)?;
                if found.is_some_and(|f: (u64, Option<u64>)| f.0 != this.0) {
                    return Err(ServiceError::invalid(format!(
                        "Invalid location {}: it holds {} bytes, another location {}.",
                        value.url,
                        this.0,
                        found.map(|f| f.0).unwrap_or_default()
                    )));
                }
                found = Some(this);
            }
            image.locations = external;
            if let Some(found) = found {
                return self.activate_with(image, found, &new_values);
            }
            return Ok(());
        }
        image.locations = external;
        Ok(())
    }

    fn remove_patch_location(
        &self,
        image: &mut Image,
        caller: &Caller,
        patch: &LocationPatch,
        dropped: &mut Vec<String>,
    ) -> ServiceResult<()> {
        if !caller.is_admin() {
            return Err(ServiceError::forbidden(
                "You are not authorized to complete delete_image_location action.",
            ));
        }
        self.require_shown(PatchKind::Remove)?;
        if image.status != ImageStatus::Active {
            return Err(ServiceError::conflict(format!(
                "It's not allowed to remove locations if image status is {}.",
                image.status.as_str()
            )));
        }
        let stored = image.data.as_ref().map(|d| d.stores.len()).unwrap_or(0);
        let total = stored + image.locations.len();
        if total == 1 {
            return Err(ServiceError::forbidden(
                "Cannot remove last location in the image.",
            ));
        }
        let position = op_position(patch.position.as_deref(), total, false)
            .ok_or_else(|| ServiceError::invalid("Invalid position for removing a location."))?;
        if position < stored {
            if let Some(data) = image.data.as_mut() {
                dropped.push(data.stores.remove(position));
            }
            if image.data.as_ref().is_some_and(|d| d.stores.is_empty()) {
                // The last copy here left: the data now lives at the external locations.
                let data = image.data.take().expect("checked above");
                image.location_data = Some(LocationData {
                    size: data.size,
                    checksum: Some(data.checksum),
                    os_hash_algo: Some(data.os_hash_algo),
                    os_hash_value: Some(data.os_hash_value),
                    virtual_size: data.virtual_size,
                });
            }
        } else {
            image.locations.remove(position - stored);
        }
        Ok(())
    }

    /// The location as the image keeps it: the caller's metadata, with the `http` store named
    /// on a multi-store node (Glance's `get_updated_store_location`).
    fn stored_location(&self, value: &LocationValue) -> ImageLocation {
        let mut metadata = value.metadata.clone();
        if let Some(http) = self.stores.http().filter(|_| self.stores.is_multi()) {
            metadata.insert(STORE_KEY.into(), json!(http.id));
        }
        ImageLocation {
            url: value.url.clone(),
            metadata: Value::Object(metadata).to_string(),
        }
    }

    /// `(size, virtual size)` of `url`: read before the update, or the image's own when the URL
    /// is already one of its locations. A location of an image with data must hold as many
    /// bytes as the image.
    fn found_size(
        &self,
        image: &Image,
        url: &str,
        read: &[(String, ReadLocation)],
    ) -> ServiceResult<(u64, Option<u64>)> {
        let known = image
            .location_data
            .as_ref()
            .map(|d| (d.size as u64, d.virtual_size.map(|v| v as u64)));
        let found = match read.iter().find(|(u, _)| u == url) {
            Some((_, r)) => (r.size, r.virtual_size),
            None => {
                known.ok_or_else(|| ServiceError::invalid(format!("Invalid location: {url}")))?
            }
        };
        if let Some((size, _)) = known
            && size != found.0
        {
            return Err(ServiceError::invalid(format!(
                "Invalid location {url}: it holds {} bytes, the image {size}.",
                found.0
            )));
        }
        Ok(found)
    }

    /// A queued image whose first location was just set becomes active with the location's
    /// size and the validation data's hashes (Glance computes none here).
    fn activate_with(
        &self,
        image: &mut Image,
        (size, virtual_size): (u64, Option<u64>),
        values: &ValidationData,
    ) -> ServiceResult<()> {
        if image.status != ImageStatus::Queued {
            return Ok(());
        }
        image.location_data = Some(LocationData {
            size: size as i64,
            checksum: values.checksum.clone(),
            os_hash_algo: values.os_hash_algo.clone(),
            os_hash_value: values.os_hash_value.clone(),
            virtual_size: virtual_size.map(|v| v as i64),
        });
        image.transition(ImageStatus::Active)?;
        Ok(())
    }

    /// Streams the data of an image that lives only at external locations (or a byte range of
    /// it) from the first location that answers, under the URL policy. The stream ends after
    /// the image's size and fails if the location holds fewer bytes.
    pub(crate) async fn open_external(
        &self,
        image: &Image,
        range: Option<Range<u64>>,
    ) -> ServiceResult<BlobStream> {
        let data = image
            .location_data
            .as_ref()
            .ok_or_else(|| ServiceError::not_found("The image has no data"))?;
        let size = data.size as u64;
        let range = range.unwrap_or(0..size);
        let mut last_error = None;
        for location in &image.locations {
            match open_url(&self.locations.policy, &location.url).await {
                Ok(response) => {
                    let stream = response
                        .bytes_stream()
                        .map(|c| c.map_err(|e| BlobError::Config(format!("location: {e}"))));
                    return Ok(window_stream(Box::pin(stream), range));
                }
                Err(e) => {
                    tracing::warn!(image_id = %image.id, error = %e, "reading a location failed; trying the next");
                    last_error = Some(e);
                }
            }
        }
        Err(ServiceError::new(
            ErrorKind::Unavailable,
            match last_error {
                Some(e) => format!("No location of the image could be read: {e}"),
                None => "The image has no location to read.".into(),
            },
        ))
    }
}

/// The bytes `range` of `stream`; an error if the stream ends before `range.end`.
fn window_stream(stream: BlobStream, range: Range<u64>) -> BlobStream {
    let state = (stream, 0u64, range, false);
    Box::pin(futures::stream::unfold(
        state,
        |(mut stream, mut offset, range, done)| async move {
            if done || offset >= range.end {
                return None;
            }
            loop {
                match stream.next().await {
                    None => {
                        let err = BlobError::Config(format!(
                            "the location ended after {offset} of {} bytes",
                            range.end
                        ));
                        return Some((Err(err), (stream, offset, range, true)));
                    }
                    Some(Err(e)) => return Some((Err(e), (stream, offset, range, true))),
                    Some(Ok(chunk)) => {
                        let start = offset;
                        let end = offset + chunk.len() as u64;
                        offset = end;
                        if end <= range.start {
                            continue;
                        }
                        let from = range.start.saturating_sub(start) as usize;
                        let to = (range.end.min(end) - start) as usize;
                        return Some((Ok(chunk.slice(from..to)), (stream, offset, range, false)));
                    }
                }
            }
        },
    ))
}

/// Glance's `_get_locations_op_pos`: a number or `-` (the end), within bounds.
fn op_position(segment: Option<&str>, len: usize, allow_end: bool) -> Option<usize> {
    let segment = segment?;
    let pos = if segment == "-" {
        if allow_end { len } else { len.checked_sub(1)? }
    } else if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
        segment.parse().ok()?
    } else {
        return None;
    };
    let fits = if allow_end { pos <= len } else { pos < len };
    fits.then_some(pos)
}

/// The image's current value of a validation key.
fn current_value<'a>(image: &'a Image, key: &str) -> Option<&'a str> {
    if let Some(data) = &image.data {
        return Some(match key {
            "checksum" => data.checksum.as_str(),
            "os_hash_algo" => data.os_hash_algo.as_str(),
            _ => data.os_hash_value.as_str(),
        });
    }
    let data = image.location_data.as_ref()?;
    match key {
        "checksum" => data.checksum.as_deref(),
        "os_hash_algo" => data.os_hash_algo.as_deref(),
        _ => data.os_hash_value.as_deref(),
    }
}

/// Glance's `_validate_validation_data`: the values the locations' validation data adds to
/// the image (values equal to the image's are fine, different ones are 409; new ones only
/// on a queued image, with the configured algorithm and well-formed digests).
fn validation_values(image: &Image, values: &[LocationValue]) -> ServiceResult<ValidationData> {
    let mut given = ValidationData::default();
    for value in values {
        let Some(validation) = &value.validation else {
            continue;
        };
        for (key, v) in validation.entries() {
            let Some(v) = v else { continue };
            let slot = match key {
                "checksum" => &mut given.checksum,
                "os_hash_algo" => &mut given.os_hash_algo,
                _ => &mut given.os_hash_value,
            };
            if slot.as_ref().is_some_and(|s| s != v) {
                return Err(ServiceError::conflict(format!(
                    "Conflicting values for {key}"
                )));
            }
            *slot = Some(v.clone());
        }
    }
    let mut new = ValidationData::default();
    for (key, v) in given.entries() {
        let Some(v) = v else { continue };
        match current_value(image, key) {
            Some(current) if current == v => continue,
            Some(_) => {
                return Err(ServiceError::conflict(format!(
                    "{key} is already set with a different value"
                )));
            }
            None => {}
        }
        match key {
            "checksum" => new.checksum = Some(v.clone()),
            "os_hash_algo" => new.os_hash_algo = Some(v.clone()),
            _ => new.os_hash_value = Some(v.clone()),
        }
    }
    if new == ValidationData::default() {
        return Ok(new);
    }
    if image.status != ImageStatus::Queued {
        let keys: Vec<&str> = new
            .entries()
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| *k)
            .collect();
        return Err(ServiceError::conflict(format!(
            "New value(s) for {} may only be provided when image status is 'queued'",
            keys.join(", ")
        )));
    }
    if let Some(checksum) = &new.checksum
        && hex_bytes(checksum) != Some(16)
    {
        return Err(ServiceError::conflict(format!(
            "checksum ({checksum}) is not the correct size for md5 (should be 16 bytes)"
        )));
    }
    let algo = new.os_hash_algo.as_deref().unwrap_or("None");
    if algo != DEFAULT_HASH_ALGO {
        return Err(ServiceError::conflict(format!(
            "os_hash_algo must be {DEFAULT_HASH_ALGO}, not {algo}"
        )));
    }
    let value = new.os_hash_value.as_deref().unwrap_or_default();
    if hex_bytes(value) != digest_size(algo) {
        return Err(ServiceError::conflict(format!(
            "os_hash_value ({value}) is not the correct size for {algo} (should be {} bytes)",
            digest_size(algo).unwrap_or_default()
        )));
    }
    Ok(new)
}

/// `POST /v2/images/{id}/locations` and `GET` of the same (v2.17), and the job that reads a
/// location.
pub struct LocationService {
    images: Arc<ImageService>,
    jobs: Arc<dyn JobStore>,
    waker: ims_jobs::runner::Waker,
}

impl LocationService {
    pub fn new(
        images: Arc<ImageService>,
        jobs: Arc<dyn JobStore>,
        waker: ims_jobs::runner::Waker,
    ) -> LocationService {
        LocationService {
            images,
            jobs,
            waker,
        }
    }

    /// The handler workers run location imports with.
    pub fn handler(&self) -> Arc<dyn JobHandler> {
        Arc::new(LocationImportHandler {
            images: self.images.clone(),
        })
    }

    /// `GET /v2/images/{id}/locations` (Glance's `fetch_image_location`: service or admin).
    pub async fn list(
        &self,
        caller: &Caller,
        id: uuid::Uuid,
    ) -> ServiceResult<Vec<(String, Map<String, Value>)>> {
        let image = self.images.get(caller, id).await?;
        if !caller.is_admin() {
            return Err(ServiceError::forbidden(
                "You are not authorized to complete fetch_image_location action.",
            ));
        }
        Ok(shown_locations(&image, self.images.stores().is_multi()))
    }

    /// `POST /v2/images/{id}/locations`: checks, locks the queued image and submits the
    /// `location_import` job (Glance answers 202).
    pub async fn add(
        &self,
        caller: &Caller,
        id: uuid::Uuid,
        url: &str,
        validation: &ValidationData,
        request_id: Option<String>,
    ) -> ServiceResult<Job> {
        let image = self.images.get(caller, id).await?;
        if image.status != ImageStatus::Queued {
            return Err(ServiceError::conflict(format!(
                "It's not allowed to add locations if image status is {}.",
                image.status.as_str()
            )));
        }
        let image = self.images.owned(caller, id, "add_image_location").await?;
        if !url.starts_with("http") || self.images.stores().http().is_none() {
            return Err(ServiceError::forbidden(
                "http store must be enabled to use location API by normal user.",
            ));
        }
        check_hashing_data(validation)?;
        image.require_formats()?;
        self.images.check_location_url(url).await?;
        check_import_lock(&self.jobs, &image).await?;
        let mut job = NewJob::new(
            LOCATION_JOB_KIND,
            image.owner.as_deref().unwrap_or(&caller.project_id),
            json!({
                "image_id": id.to_string(),
                "loc_url": url,
                "validation_data": {
                    "os_hash_algo": validation.os_hash_algo,
                    "os_hash_value": validation.os_hash_value,
                },
            }),
        );
        job.image_id = Some(id);
        job.user_id = Some(caller.user_id.clone());
        job.request_id = request_id;
        job.max_attempts = LOCATION_MAX_ATTEMPTS;
        let job_id = job.id.to_string();
        self.images
            .mutate(id, |image| {
                if image.status != ImageStatus::Queued {
                    return Err(ServiceError::conflict(format!(
                        "Image {id} changed to {} during the call.",
                        image.status.as_str()
                    )));
                }
                image
                    .properties
                    .insert(LOCK_PROPERTY.into(), job_id.clone());
                Ok(())
            })
            .await?;
        let job = match self.jobs.submit(job, OffsetDateTime::now_utc()).await {
            Ok(job) => job,
            Err(e) => {
                self.images.release_location_lock(id, &job_id, false).await;
                return Err(ServiceError::internal("submitting the location job", &e));
            }
        };
        self.waker.wake();
        Ok(job)
    }
}

/// Glance's `_validate_hashing_data` for v2.17: a digest must be hex of the algorithm's size
/// (400); the algorithm is one of [`HASH_ALGOS`].
pub fn check_hashing_data(validation: &ValidationData) -> ServiceResult<()> {
    let Some(value) = &validation.os_hash_value else {
        return Ok(());
    };
    let algo = validation
        .os_hash_algo
        .as_deref()
        .unwrap_or(DEFAULT_HASH_ALGO);
    let want = digest_size(algo)
        .ok_or_else(|| ServiceError::invalid(format!("Unknown os_hash_algo {algo}")))?;
    let Some(bytes) = hex_bytes(value) else {
        return Err(ServiceError::invalid(format!(
            "os_hash_value ({value}) is not a valid hexadecimal value"
        )));
    };
    if bytes != want {
        return Err(ServiceError::invalid(format!(
            "os_hash_value: ({value}) is not the correct size for ({algo}) (should be ({want}) bytes)"
        )));
    }
    Ok(())
}

impl ImageService {
    /// Ends a location import's hold on the image. `failed`: an image still `importing` goes
    /// back to `queued` without hashes (the location stays, as in Glance's `http` store).
    async fn release_location_lock(&self, id: uuid::Uuid, job_id: &str, failed: bool) {
        let released = self
            .mutate(id, |image| {
                if image.properties.get(LOCK_PROPERTY).map(String::as_str) == Some(job_id) {
                    image.properties.remove(LOCK_PROPERTY);
                }
                if failed && image.status == ImageStatus::Importing {
                    image.transition(ImageStatus::Queued)?;
                    image.location_data = None;
                }
                Ok(())
            })
            .await;
        if let Err(e) = released {
            tracing::debug!(image_id = %id, error = %e, "releasing the location lock");
        }
    }
}

/// Runs `location_import` jobs: add the location, read it (hashing it with `do_secure_hash`),
/// inspect, check the validation data, publish.
struct LocationImportHandler {
    images: Arc<ImageService>,
}

impl LocationImportHandler {
    /// Whether the image still exists and is held by this job.
    async fn held(&self, id: uuid::Uuid, job_id: &str) -> bool {
        matches!(
            self.images.meta.get_image(id).await,
            Ok(Some(image)) if image.status == ImageStatus::Importing
                && image.properties.get(LOCK_PROPERTY).map(String::as_str) == Some(job_id)
        )
    }

    async fn import(
        &self,
        id: uuid::Uuid,
        job_id: &str,
        url: &str,
        validation: &ValidationData,
    ) -> Result<Image, JobFailure> {
        let images = &self.images;
        let settings = images.locations.clone();
        let location = images.stored_location(&LocationValue {
            url: url.to_owned(),
            metadata: Map::new(),
            validation: None,
        });
        // Glance's `_UpdateLocationTask`: the location joins the image, which is importing.
        let image = images
            .mutate(id, |image| {
                if image.properties.get(LOCK_PROPERTY).map(String::as_str) != Some(job_id) {
                    return Err(ServiceError::conflict("not held by this job"));
                }
                if image.status == ImageStatus::Queued {
                    image.transition(ImageStatus::Importing)?;
                }
                if image.status != ImageStatus::Importing {
                    return Err(ServiceError::conflict(format!(
                        "image is {}",
                        image.status.as_str()
                    )));
                }
                if !image.locations.iter().any(|l| l.url == location.url) {
                    image.locations.push(location.clone());
                }
                Ok(())
            })
            .await
            .map_err(|e| JobFailure::Fatal(format!("image {id}: {e}")))?;
        let algo = settings.config.do_secure_hash.then(|| {
            validation
                .os_hash_algo
                .clone()
                .unwrap_or_else(|| DEFAULT_HASH_ALGO.to_owned())
        });
        let read = images
            .read_location(&image, url, algo.as_deref(), || self.held(id, job_id))
            .await;
        let read = match read {
            Ok(read) => read,
            Err(ReadError::Cancelled) => {
                tracing::info!(image_id = %id, "location import cancelled: the image was deleted");
                return Err(JobFailure::Fatal(format!(
                    "Hash calculation for image {id} has been canceled"
                )));
            }
            Err(ReadError::Refused(message)) => return Err(self.fail(id, job_id, message).await),
            Err(ReadError::Service(e)) => return Err(self.fail(id, job_id, e.to_string()).await),
        };
        // Glance's `_VerifyValidationData` (with hashes) or `_SetHashValues` (without).
        let data = match &read.hashes {
            Some(hashes) => {
                if let Some(expected) = &validation.os_hash_value
                    && !expected.eq_ignore_ascii_case(&hashes.value)
                {
                    let message = format!(
                        "os_hash_value: ({expected}) not matched with actual os_hash_value: ({})",
                        hashes.value
                    );
                    return Err(self.fail(id, job_id, message).await);
                }
                LocationData {
                    size: read.size as i64,
                    checksum: Some(hashes.md5.clone()),
                    os_hash_algo: Some(hashes.algo.clone()),
                    os_hash_value: Some(hashes.value.clone()),
                    virtual_size: read.virtual_size.map(|v| v as i64),
                }
            }
            None => LocationData {
                size: read.size as i64,
                checksum: None,
                os_hash_algo: validation.os_hash_algo.clone(),
                os_hash_value: validation.os_hash_value.clone(),
                virtual_size: read.virtual_size.map(|v| v as i64),
            },
        };
        images
            .mutate(id, |image| {
                if image.status != ImageStatus::Importing
                    || image.properties.get(LOCK_PROPERTY).map(String::as_str) != Some(job_id)
                {
                    return Err(ServiceError::conflict(format!(
                        "image is {} and not held by this job",
                        image.status.as_str()
                    )));
                }
                image.properties.remove(LOCK_PROPERTY);
                image.location_data = Some(data.clone());
                image.transition(ImageStatus::Active)?;
                Ok(())
            })
            .await
            .map_err(|e| JobFailure::Fatal(format!("publishing image {id}: {e}")))
    }

    async fn fail(&self, id: uuid::Uuid, job_id: &str, message: String) -> JobFailure {
        tracing::warn!(image_id = %id, reason = %message, "location import failed");
        self.images.release_location_lock(id, job_id, true).await;
        JobFailure::Fatal(message)
    }
}

#[async_trait]
impl JobHandler for LocationImportHandler {
    async fn run(&self, ctx: &JobContext) -> Result<Value, JobFailure> {
        let job = ctx.job();
        let id = job
            .image_id
            .ok_or_else(|| JobFailure::Fatal("location job names no image".into()))?;
        let url = job.payload["loc_url"]
            .as_str()
            .ok_or_else(|| JobFailure::Fatal("location job names no URL".into()))?
            .to_owned();
        let text = |key: &str| {
            job.payload["validation_data"][key]
                .as_str()
                .map(str::to_owned)
        };
        let validation = ValidationData {
            checksum: None,
            os_hash_algo: text("os_hash_algo"),
            os_hash_value: text("os_hash_value"),
        };
        let job_id = job.id.to_string();
        let image = self.import(id, &job_id, &url, &validation).await?;
        Ok(json!({"image_id": image.id.to_string(), "url": url}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_glance() {
        assert_eq!(op_position(Some("-"), 2, true), Some(2));
        assert_eq!(op_position(Some("-"), 2, false), Some(1));
        assert_eq!(op_position(Some("0"), 2, false), Some(0));
        assert_eq!(op_position(Some("2"), 2, true), Some(2));
        assert_eq!(op_position(Some("2"), 2, false), None);
        assert_eq!(op_position(Some("-"), 0, false), None);
        assert_eq!(op_position(Some("x"), 2, true), None);
        assert_eq!(op_position(None, 2, true), None);
    }

    #[test]
    fn hashing_data_is_checked_like_glance() {
        let v = |algo: Option<&str>, value: &str| ValidationData {
            checksum: None,
            os_hash_algo: algo.map(str::to_owned),
            os_hash_value: Some(value.to_owned()),
        };
        assert!(check_hashing_data(&v(Some("sha256"), &"ab".repeat(32))).is_ok());
        assert!(check_hashing_data(&v(None, &"ab".repeat(64))).is_ok());
        for bad in [
            v(Some("sha512"), "dbc9e0f80d131e64b94913a7b40bb5"),
            v(Some("sha512"), &"ab".repeat(32)),
            v(Some("sha123"), &"ab".repeat(64)),
            v(Some("sha256"), &"zz".repeat(32)),
        ] {
            assert_eq!(
                check_hashing_data(&bad).unwrap_err().kind,
                ErrorKind::InvalidInput
            );
        }
    }

    #[tokio::test]
    async fn windows_cut_ranges_and_report_short_data() {
        let chunks = || -> Vec<Result<Bytes, BlobError>> {
            vec![
                Ok(Bytes::from_static(b"0123")),
                Ok(Bytes::from_static(b"4567")),
                Ok(Bytes::from_static(b"89")),
            ]
        };
        let stream: BlobStream = Box::pin(futures::stream::iter(chunks()));
        let out: Vec<_> = window_stream(stream, 3..7).collect().await;
        let bytes: Vec<u8> = out.into_iter().flat_map(|c| c.unwrap().to_vec()).collect();
        assert_eq!(bytes, b"3456");
        let stream: BlobStream = Box::pin(futures::stream::iter(chunks()));
        let out: Vec<_> = window_stream(stream, 0..12).collect().await;
        assert!(out.last().unwrap().is_err(), "short data is an error");
    }
}
