//! Guest inspection on import: once an image's data is durable, read the OS inside it
//! (`ims-guest`) and fill the OS properties the user did not set (`__os_type`, `__os_version`,
//! `__os_bit`, `__platform`, `hw_firmware_type`, `architecture`, `__is_config_init`).
//!
//! Inspection is advice, never a gate: it runs off the async runtime with a deadline and a cap
//! on the bytes it may read, and any failure is logged and leaves the image as it was.
//! Every import path calls the same hook: the Glance upload and import jobs through
//! `ImageService::ingest`, the IMS API's imports through
//! [`crate::cloudimages::CloudImageService::inspect_imported_image`]; both end in
//! [`apply_os_properties`].
//!
//! "The user did not set it" has two forms: the property is absent (Glance images), or it holds
//! one of the IMS placeholders (`Other Linux(64 bit)`, `x86`, `bios`) that the IMS API writes
//! when a value is not given; [`OS_PLACEHOLDERS_PROPERTY`] names those, so inspection replaces
//! them and never a value the user stated.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ims_blob::{BlobKey, BlobStore};
use ims_diskfmt::ReadAt;
use ims_domain::image::MAX_PROPERTIES;
use ims_guest::Inspection;

/// Longest an inspection may run; a hostile or huge image is given up on after this.
pub const INSPECTION_DEADLINE: Duration = Duration::from_secs(30);
/// Most bytes an inspection may read from the blob (a normal OS image needs a few MiB).
pub const INSPECTION_MAX_READ: u64 = 512 << 20;
/// Reads from the blob are made in blocks of this size and cached: the parsers read many small
/// pieces (sectors, inodes, directory blocks) close together.
const BLOCK: u64 = 256 << 10;
/// Blocks kept in the cache (`CACHE_BLOCKS * BLOCK` = 16 MiB at most per inspection).
const CACHE_BLOCKS: usize = 64;

/// The OS properties inspection fills, in the order they are documented.
pub const OS_PROPERTIES: &[&str] = &[
    "__os_type",
    "__os_version",
    "__os_bit",
    "__platform",
    "hw_firmware_type",
    "architecture",
    "__is_config_init",
];

/// Image property listing the OS properties that hold the IMS API's placeholders rather than
/// values the user gave: a comma list of the heads of [`PLACEHOLDER_GROUPS`]. Written when an
/// IMS image is created, removed once its data has been inspected.
pub const OS_PLACEHOLDERS_PROPERTY: &str = "__os_placeholders";

/// Placeholder groups: the head named in [`OS_PLACEHOLDERS_PROPERTY`] and the properties that
/// are replaced with it (they follow from one another).
pub const PLACEHOLDER_GROUPS: &[(&str, &[&str])] = &[
    (
        "__os_version",
        &[
            "__os_version",
            "__os_type",
            "__os_bit",
            "__platform",
            "__os_end_of_support",
        ],
    ),
    ("architecture", &["architecture", "__support_arm"]),
    ("hw_firmware_type", &["hw_firmware_type"]),
];

/// The [`OS_PLACEHOLDERS_PROPERTY`] value for these group heads, `None` when there are none.
pub fn placeholders_value(heads: &[&str]) -> Option<String> {
    (!heads.is_empty()).then(|| heads.join(","))
}

/// What inspection found, as image properties (`key → value`), for [`fill_os_properties`].
pub type OsProperties = BTreeMap<&'static str, String>;

/// Inspects the blob `key` (`size` bytes) and returns the OS properties it implies; `None` when
/// nothing was found or inspection failed (the reason is logged).
pub async fn inspect_blob(
    blobs: Arc<dyn BlobStore>,
    key: BlobKey,
    size: u64,
    image_id: uuid::Uuid,
) -> Option<OsProperties> {
    let handle = tokio::runtime::Handle::current();
    let started = Instant::now();
    let source = BlobSource {
        blobs,
        key,
        size,
        handle,
        deadline: started + INSPECTION_DEADLINE,
        state: Mutex::new(CacheState::default()),
    };
    let run = tokio::task::spawn_blocking(move || ims_guest::inspect(Arc::new(source)));
    let result = match tokio::time::timeout(INSPECTION_DEADLINE, run).await {
        Ok(Ok(r)) => r,
        Ok(Err(join)) => {
            tracing::warn!(image_id = %image_id, error = %join, "guest inspection stopped");
            return None;
        }
        Err(_) => {
            tracing::warn!(image_id = %image_id, "guest inspection timed out");
            return None;
        }
    };
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(inspection) => {
            let props = os_properties(&inspection);
            tracing::info!(
                image_id = %image_id,
                elapsed_ms,
                os_version = props.get("__os_version").map(String::as_str),
                "guest inspected"
            );
            (!props.is_empty()).then_some(props)
        }
        Err(e) => {
            tracing::info!(image_id = %image_id, elapsed_ms, error = %e, "guest not inspected");
            None
        }
    }
}

/// The properties an inspection implies; empty when it found no operating system.
pub fn os_properties(inspection: &Inspection) -> OsProperties {
    let mut props = OsProperties::new();
    let (Some(facts), Some(seed)) = (inspection.facts(), inspection.seed_os()) else {
        return props;
    };
    props.insert("__os_type", seed.os_type.as_str().to_string());
    props.insert("__os_version", seed.os_version.clone());
    props.insert("__os_bit", seed.bits.to_string());
    props.insert("__platform", seed.platform.to_string());
    if let Some(fw) = inspection.firmware.hw_firmware_type() {
        props.insert("hw_firmware_type", fw.to_string());
    }
    if let Some(arch) = facts.arch.as_deref() {
        // Glance and Nova name 32-bit x86 `i686` (Nova canonicalises `i386` to it).
        let arch = if arch == "i386" { "i686" } else { arch };
        props.insert("architecture", arch.to_string());
    }
    props.insert("__is_config_init", facts.cloud_init.is_some().to_string());
    props
}

/// Sets each of `found` on `properties` unless the user already set that key, and never beyond
/// the image's property quota; returns the keys it set.
pub fn fill_os_properties(
    properties: &mut BTreeMap<String, String>,
    found: &OsProperties,
) -> Vec<&'static str> {
    let mut set = Vec::new();
    for (&key, value) in found {
        if !properties.contains_key(key) && properties.len() < MAX_PROPERTIES {
            properties.insert(key.to_string(), value.clone());
            set.push(key);
        }
    }
    set
}

/// The guest hook's last step, on the image's properties: drops [`OS_PLACEHOLDERS_PROPERTY`],
/// replaces the placeholder groups it named with what inspection `found` (when it found that
/// group's head), then fills every other property that is absent ([`fill_os_properties`]).
/// IMS images (those with `__imagetype`) get the IMS vocabulary: `architecture` `x86`/`arm`
/// with `__support_arm`, and the seed's `__os_end_of_support` for the version found.
/// Returns the keys set.
pub fn apply_os_properties(
    properties: &mut BTreeMap<String, String>,
    found: Option<&OsProperties>,
) -> Vec<&'static str> {
    let placeholders = properties
        .remove(OS_PLACEHOLDERS_PROPERTY)
        .unwrap_or_default();
    let Some(found) = found else {
        return Vec::new();
    };
    let mut found = found.clone();
    if properties.contains_key("__imagetype") {
        if let Some(arch) = found.get("architecture") {
            let arm = arch == "aarch64" || arch.starts_with("arm");
            found.insert("architecture", if arm { "arm" } else { "x86" }.to_string());
            found.insert("__support_arm", arm.to_string());
        }
        if let Some(eol) = found
            .get("__os_version")
            .and_then(|v| crate::cloudimages::os_facts(Some(v)).end_of_support)
        {
            found.insert("__os_end_of_support", eol);
        }
    }
    for (head, keys) in PLACEHOLDER_GROUPS {
        if placeholders.split(',').any(|p| p == *head) && found.contains_key(head) {
            for key in *keys {
                properties.remove(*key);
            }
        }
    }
    fill_os_properties(properties, &found)
}

impl crate::images::ImageService {
    /// Inspects the durable data of image `id` and applies what it found
    /// ([`apply_os_properties`]); returns the keys set. Inspection failures only mean nothing
    /// is set; an image without data is an error.
    pub async fn inspect_guest(&self, id: uuid::Uuid) -> crate::ServiceResult<Vec<&'static str>> {
        let image = self.meta.get_image(id).await?.ok_or_else(|| {
            crate::ServiceError::not_found(format!("No image found with ID {id}"))
        })?;
        let data = image.data.as_ref().ok_or_else(|| {
            crate::ServiceError::invalid(format!("Image {id} has no data to inspect"))
        })?;
        let key = BlobKey::parse(&data.blob_key)
            .map_err(|e| crate::ServiceError::internal("reading the image's blob key", &e))?;
        let size = u64::try_from(data.size).unwrap_or(0);
        // The first of the image's stores this node has (they all hold the same bytes).
        let blobs = data
            .stores
            .iter()
            .find_map(|s| self.stores.get(s))
            .map(|s| s.blobs.clone())
            .ok_or_else(|| {
                crate::ServiceError::not_found(format!(
                    "None of image {id}'s stores is available on this node."
                ))
            })?;
        let found = inspect_blob(blobs, key, size, id).await;
        let mut set = Vec::new();
        self.mutate(id, |img| {
            set = apply_os_properties(&mut img.properties, found.as_ref());
            Ok(())
        })
        .await?;
        Ok(set)
    }
}

/// A blob read positionally for `ims-guest`: blocks fetched with ranged reads on the runtime
/// (from the blocking thread inspection runs on), cached, bounded in time and bytes.
struct BlobSource {
    blobs: Arc<dyn BlobStore>,
    key: BlobKey,
    size: u64,
    handle: tokio::runtime::Handle,
    deadline: Instant,
    state: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    /// (block index, bytes), most recently used last.
    blocks: Vec<(u64, Arc<Vec<u8>>)>,
    bytes_read: u64,
}

impl BlobSource {
    fn block(&self, index: u64) -> io::Result<Arc<Vec<u8>>> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| io::Error::other("cache poisoned"))?;
        if let Some(pos) = state.blocks.iter().position(|(i, _)| *i == index) {
            let entry = state.blocks.remove(pos);
            let data = entry.1.clone();
            state.blocks.push(entry);
            return Ok(data);
        }
        if Instant::now() > self.deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "guest inspection deadline passed",
            ));
        }
        let start = index
            .checked_mul(BLOCK)
            .filter(|&s| s < self.size)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let end = start.saturating_add(BLOCK).min(self.size);
        if state.bytes_read.saturating_add(end - start) > INSPECTION_MAX_READ {
            return Err(io::Error::other(format!(
                "guest inspection read more than {INSPECTION_MAX_READ} bytes"
            )));
        }
        state.bytes_read += end - start;
        let data = Arc::new(self.handle.block_on(self.fetch(start, end))?);
        if state.blocks.len() >= CACHE_BLOCKS {
            state.blocks.remove(0);
        }
        state.blocks.push((index, data.clone()));
        Ok(data)
    }

    async fn fetch(&self, start: u64, end: u64) -> io::Result<Vec<u8>> {
        let mut stream = self
            .blobs
            .open(&self.key, Some(start..end))
            .await
            .map_err(io::Error::other)?;
        let mut out = Vec::with_capacity((end - start) as usize);
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.map_err(io::Error::other)?);
        }
        if out.len() as u64 != end - start {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        Ok(out)
    }
}

impl ReadAt for BlobSource {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let block = self.block(offset / BLOCK)?;
        let at = (offset % BLOCK) as usize;
        let n = block.len().saturating_sub(at).min(buf.len());
        buf[..n].copy_from_slice(&block[at..at + n]);
        Ok(n)
    }

    fn len(&self) -> u64 {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ims_blob::memory::MemoryBlobStore;

    #[test]
    fn user_values_win() {
        let mut props = BTreeMap::from([("__os_version".to_string(), "Mine 1 64bit".to_string())]);
        let found = OsProperties::from([
            ("__os_version", "CentOS 7.9 64bit".to_string()),
            ("__os_bit", "64".to_string()),
        ]);
        assert_eq!(fill_os_properties(&mut props, &found), vec!["__os_bit"]);
        assert_eq!(props["__os_version"], "Mine 1 64bit");
        assert_eq!(props["__os_bit"], "64");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blob_source_reads_across_blocks_and_refuses_nothing_found() {
        let blobs: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
        let key = BlobKey::parse("guest-test").unwrap();
        let data: Vec<u8> = (0..(BLOCK as usize * 2 + 100)).map(|i| i as u8).collect();
        let mut w = blobs.create(&key).await.unwrap();
        w.write(Bytes::from(data.clone())).await.unwrap();
        w.commit().await.unwrap();
        let source = BlobSource {
            blobs: blobs.clone(),
            key: key.clone(),
            size: data.len() as u64,
            handle: tokio::runtime::Handle::current(),
            deadline: Instant::now() + INSPECTION_DEADLINE,
            state: Mutex::new(CacheState::default()),
        };
        let got = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; 300];
            let mut filled = 0;
            while filled < buf.len() {
                let n = source
                    .read_at(BLOCK - 150 + filled as u64, &mut buf[filled..])
                    .unwrap();
                filled += n;
            }
            buf
        })
        .await
        .unwrap();
        assert_eq!(got, data[BLOCK as usize - 150..BLOCK as usize + 150]);
        // Zeros hold no OS: nothing to fill.
        assert!(
            inspect_blob(blobs, key, data.len() as u64, uuid::Uuid::nil())
                .await
                .is_none()
        );
    }
}
