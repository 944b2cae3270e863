//! The stores a node keeps image data in: one `[store]` (single-store, Glance without
//! `enabled_backends`) or several `[[stores]]` with ids, weights, a default and read-only
//! flags. [`Stores`] is the registry the services choose stores from; every store is a
//! [`BlobStore`], so a local directory, S3 or the in-memory fake serve alike.

use std::sync::Arc;

use ims_blob::BlobStore;
use ims_blob::local::LocalBlobStore;
use ims_blob::s3::S3BlobStore;

use crate::config::{Config, StoreConfig, StoreEntry, StoreKind};
use crate::error::{ServiceError, ServiceResult};

/// The id of the only store of a single-store node, as image records name it.
pub const SINGLE_STORE_ID: &str = "local";
/// Longest store id accepted (Glance's store ids are config keys; this is generous).
const MAX_STORE_ID_LEN: usize = 255;
/// Store ids Glance reserves for its own staging and tasks stores.
const RESERVED_STORE_PREFIX: &str = "os_glance_";

/// One store: what `/v2/info/stores` shows and the blobs behind it.
pub struct Store {
    pub id: String,
    pub description: Option<String>,
    pub weight: i64,
    pub read_only: bool,
    /// The driver as `/v2/info/stores/detail` names it: `file` or `s3`.
    pub driver: &'static str,
    /// Driver settings shown to admins in `/v2/info/stores/detail` (never credentials).
    pub properties: Vec<(&'static str, String)>,
    pub blobs: Arc<dyn BlobStore>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("id", &self.id)
            .field("weight", &self.weight)
            .field("read_only", &self.read_only)
            .field("driver", &self.driver)
            .finish_non_exhaustive()
    }
}

/// A store configuration that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum StoresConfigError {
    #[error("store id {0:?} is invalid: 1 to 255 of A-Z a-z 0-9 _ -, not starting with os_glance_")]
    InvalidId(String),
    #[error("store id {0:?} is configured twice")]
    DuplicateId(String),
    #[error("exactly one of [[stores]] must have default = true; found {0}")]
    DefaultCount(usize),
    #[error("the default store {0:?} is read-only")]
    DefaultReadOnly(String),
    #[error("[store] and [[stores]] are both set; use one")]
    BothForms,
    #[error("store {id:?}: {reason}")]
    Backend { id: String, reason: String },
}

/// Glance's read-only `http` store (`kind = "http"`): it holds no blobs; the external
/// `http`/`https` locations of images belong to it, and `/v2/info/stores` lists it read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpStore {
    pub id: String,
    pub description: Option<String>,
    pub weight: i64,
}

/// Every store of the node, highest weight first (ties by id).
#[derive(Debug)]
pub struct Stores {
    stores: Vec<Store>,
    default: usize,
    multi: bool,
    http: Option<HttpStore>,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_STORE_ID_LEN
        && !id.starts_with(RESERVED_STORE_PREFIX)
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

impl Stores {
    /// A single-store node: `blobs` under the id [`SINGLE_STORE_ID`]; `/v2/info/stores` is 404.
    pub fn single(blobs: Arc<dyn BlobStore>, driver: &'static str) -> Stores {
        Stores {
            stores: vec![Store {
                id: SINGLE_STORE_ID.into(),
                description: None,
                weight: 0,
                read_only: false,
                driver,
                properties: Vec::new(),
                blobs,
            }],
            default: 0,
            multi: false,
            http: None,
        }
    }

    /// Several stores; `default_id` must name a writable one.
    pub fn multiple(mut stores: Vec<Store>, default_id: &str) -> Result<Stores, StoresConfigError> {
        let mut seen = std::collections::HashSet::new();
        for store in &stores {
            if !valid_id(&store.id) {
                return Err(StoresConfigError::InvalidId(store.id.clone()));
            }
            if !seen.insert(store.id.as_str()) {
                return Err(StoresConfigError::DuplicateId(store.id.clone()));
            }
        }
        stores.sort_by(|a, b| b.weight.cmp(&a.weight).then_with(|| a.id.cmp(&b.id)));
        let default = stores
            .iter()
            .position(|s| s.id == default_id)
            .ok_or(StoresConfigError::DefaultCount(0))?;
        if stores[default].read_only {
            return Err(StoresConfigError::DefaultReadOnly(default_id.into()));
        }
        Ok(Stores {
            stores,
            default,
            multi: true,
            http: None,
        })
    }

    /// Adds the read-only `http` store; its id must not name another store.
    pub fn with_http(mut self, http: HttpStore) -> Result<Stores, StoresConfigError> {
        if !valid_id(&http.id) {
            return Err(StoresConfigError::InvalidId(http.id));
        }
        if self.get(&http.id).is_some() {
            return Err(StoresConfigError::DuplicateId(http.id));
        }
        self.http = Some(http);
        Ok(self)
    }

    /// The read-only `http` store, if configured.
    pub fn http(&self) -> Option<&HttpStore> {
        self.http.as_ref()
    }

    /// Opens what `config` names: `[[stores]]` if set, else `[store]` (default: a local
    /// directory under the data dir).
    pub async fn open(config: &Config) -> ServiceResult<Stores> {
        let refuse = |e: StoresConfigError| ServiceError::invalid(e.to_string());
        if config.stores.is_empty() {
            return Ok(match &config.store {
                None | Some(StoreConfig::Local { .. }) => {
                    Stores::single(Arc::new(LocalBlobStore::open(config.store_path())?), "file")
                }
                Some(StoreConfig::S3(s3)) => {
                    let store = S3BlobStore::connect(s3).await?;
                    tracing::info!(bucket = store.bucket(), "image data in S3");
                    Stores::single(Arc::new(store), "s3")
                }
            });
        }
        if config.store.is_some() {
            return Err(refuse(StoresConfigError::BothForms));
        }
        let (http, entries) = split_http(&config.stores).map_err(refuse)?;
        let default_id = default_entry(&entries).map_err(refuse)?;
        let mut stores = Vec::with_capacity(entries.len());
        for entry in &entries {
            let (blobs, properties): (Arc<dyn BlobStore>, _) = match entry.kind {
                StoreKind::Http => unreachable!("split_http keeps http stores apart"),
                StoreKind::Local => {
                    let path = config.store_entry_path(entry);
                    let props = vec![("data_dir", path.display().to_string())];
                    (Arc::new(LocalBlobStore::open(path)?), props)
                }
                StoreKind::S3 => {
                    let s3 = entry.s3.as_ref().ok_or_else(|| {
                        refuse(StoresConfigError::Backend {
                            id: entry.id.clone(),
                            reason: "kind = \"s3\" needs a [stores.s3] table".into(),
                        })
                    })?;
                    let props = vec![("bucket", s3.bucket.clone()), ("prefix", s3.prefix.clone())];
                    (Arc::new(S3BlobStore::connect(s3).await?), props)
                }
            };
            stores.push(store_from_entry(entry, blobs, properties));
        }
        let mut stores = Stores::multiple(stores, &default_id).map_err(refuse)?;
        if let Some(http) = http {
            stores = stores.with_http(http).map_err(refuse)?;
        }
        tracing::info!(stores = ?stores.ids(), default = %stores.default_store().id, "image stores");
        Ok(stores)
    }

    /// `[[stores]]` with every store in memory, for tests; `[store]` alone gives one store.
    pub fn in_memory(config: &Config) -> Stores {
        let memory = || Arc::new(ims_blob::memory::MemoryBlobStore::new()) as Arc<dyn BlobStore>;
        if config.stores.is_empty() {
            return Stores::single(memory(), "memory");
        }
        let (http, entries) = split_http(&config.stores).expect("test stores are valid");
        let default_id = default_entry(&entries).expect("test stores name one default");
        let stores = entries
            .iter()
            .map(|entry| store_from_entry(entry, memory(), Vec::new()))
            .collect();
        let stores = Stores::multiple(stores, &default_id).expect("test stores are valid");
        match http {
            Some(http) => stores.with_http(http).expect("test stores are valid"),
            None => stores,
        }
    }

    /// Whether several stores are configured (Glance's multi-store mode).
    pub fn is_multi(&self) -> bool {
        self.multi
    }

    /// Every store, highest weight first.
    pub fn all(&self) -> &[Store] {
        &self.stores
    }

    pub fn ids(&self) -> Vec<&str> {
        self.stores.iter().map(|s| s.id.as_str()).collect()
    }

    pub fn default_store(&self) -> &Store {
        &self.stores[self.default]
    }

    pub fn get(&self, id: &str) -> Option<&Store> {
        self.stores.iter().find(|s| s.id == id)
    }

    /// The stores data may be written to, highest weight first.
    pub fn writable(&self) -> impl Iterator<Item = &Store> {
        self.stores.iter().filter(|s| !s.read_only)
    }

    /// A store to write to: unknown → `NotFound`, read-only → `InvalidInput`.
    pub fn writable_store(&self, id: &str) -> ServiceResult<&Store> {
        let store = self.get(id).ok_or_else(|| {
            ServiceError::not_found(format!("Store {id} is not available on this node."))
        })?;
        if store.read_only {
            return Err(ServiceError::invalid(format!("Store {id} is read-only.")));
        }
        Ok(store)
    }

    /// Sorts store ids highest weight first (ids no longer configured last, in their order).
    pub fn order(&self, ids: &mut [String]) {
        let rank = |id: &String| {
            self.stores
                .iter()
                .position(|s| &s.id == id)
                .unwrap_or(usize::MAX)
        };
        ids.sort_by_key(rank);
    }

    /// Where staged import data waits: the default store.
    pub fn staging(&self) -> &Arc<dyn BlobStore> {
        &self.default_store().blobs
    }
}

/// The `kind = "http"` entry (at most one, never the default) and the other entries.
fn split_http(
    entries: &[StoreEntry],
) -> Result<(Option<HttpStore>, Vec<StoreEntry>), StoresConfigError> {
    let (http, others): (Vec<&StoreEntry>, Vec<&StoreEntry>) =
        entries.iter().partition(|e| e.kind == StoreKind::Http);
    let http = match http.as_slice() {
        [] => None,
        [one] if one.default => return Err(StoresConfigError::DefaultReadOnly(one.id.clone())),
        [one] => Some(HttpStore {
            id: one.id.clone(),
            description: one.description.clone(),
            weight: one.weight,
        }),
        [_, second, ..] => {
            return Err(StoresConfigError::Backend {
                id: second.id.clone(),
                reason: "only one store may be kind = \"http\"".into(),
            });
        }
    };
    Ok((http, others.into_iter().cloned().collect()))
}

/// The id of the one `[[stores]]` entry with `default = true` (a lone store is the default).
fn default_entry(entries: &[StoreEntry]) -> Result<String, StoresConfigError> {
    let defaults: Vec<&StoreEntry> = entries.iter().filter(|e| e.default).collect();
    match (defaults.as_slice(), entries) {
        ([one], _) => Ok(one.id.clone()),
        ([], [only]) => Ok(only.id.clone()),
        (many, _) => Err(StoresConfigError::DefaultCount(many.len())),
    }
}

fn store_from_entry(
    entry: &StoreEntry,
    blobs: Arc<dyn BlobStore>,
    properties: Vec<(&'static str, String)>,
) -> Store {
    Store {
        id: entry.id.clone(),
        description: entry.description.clone(),
        weight: entry.weight,
        read_only: entry.read_only,
        driver: match entry.kind {
            StoreKind::Local => "file",
            StoreKind::S3 => "s3",
            StoreKind::Http => "http",
        },
        properties,
        blobs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(id: &str, weight: i64, read_only: bool) -> Store {
        Store {
            id: id.into(),
            description: None,
            weight,
            read_only,
            driver: "memory",
            properties: Vec::new(),
            blobs: Arc::new(ims_blob::memory::MemoryBlobStore::new()),
        }
    }

    #[test]
    fn stores_sort_by_weight_and_order_ids() {
        let stores = Stores::multiple(
            vec![
                store("b", 10, false),
                store("a", 50, false),
                store("c", 10, true),
            ],
            "b",
        )
        .unwrap();
        assert_eq!(stores.ids(), ["a", "b", "c"]);
        assert_eq!(stores.default_store().id, "b");
        let writable: Vec<_> = stores.writable().map(|s| s.id.as_str()).collect();
        assert_eq!(writable, ["a", "b"]);
        let mut ids = vec!["gone".to_string(), "c".into(), "a".into()];
        stores.order(&mut ids);
        assert_eq!(ids, ["a", "c", "gone"]);
        assert_eq!(
            stores.writable_store("c").unwrap_err().kind,
            ims_domain::ErrorKind::InvalidInput
        );
        assert_eq!(
            stores.writable_store("x").unwrap_err().kind,
            ims_domain::ErrorKind::NotFound
        );
    }

    #[test]
    fn bad_store_sets_are_refused() {
        let err = |stores, default| Stores::multiple(stores, default).unwrap_err();
        assert!(matches!(
            err(
                vec![store("os_glance_staging", 0, false)],
                "os_glance_staging"
            ),
            StoresConfigError::InvalidId(_)
        ));
        assert!(matches!(
            err(vec![store("a,b", 0, false)], "a,b"),
            StoresConfigError::InvalidId(_)
        ));
        assert!(matches!(
            err(vec![store("a", 0, false), store("a", 1, false)], "a"),
            StoresConfigError::DuplicateId(_)
        ));
        assert!(matches!(
            err(vec![store("a", 0, true)], "a"),
            StoresConfigError::DefaultReadOnly(_)
        ));
        assert!(matches!(
            err(vec![store("a", 0, false)], "b"),
            StoresConfigError::DefaultCount(0)
        ));
    }

    #[test]
    fn stores_from_config() {
        let text = r#"
            [[stores]]
            id = "fs"
            kind = "local"
            weight = 100
            default = true
            description = "primary"
            [[stores]]
            id = "fs2"
            kind = "local"
            weight = 50
            [[stores]]
            id = "cold"
            kind = "s3"
            read_only = true
            [stores.s3]
            bucket = "images"
        "#;
        let config: Config = toml::from_str(text).unwrap();
        let stores = Stores::in_memory(&config);
        assert!(stores.is_multi());
        assert_eq!(stores.ids(), ["fs", "fs2", "cold"]);
        assert_eq!(stores.get("cold").unwrap().driver, "s3");
        assert_eq!(
            config.store_entry_path(&config.stores[1]),
            std::path::PathBuf::from("ims-data/stores/fs2")
        );
        let two_defaults: Config = toml::from_str(
            "[[stores]]\nid = \"a\"\nkind = \"local\"\ndefault = true\n[[stores]]\nid = \"b\"\nkind = \"local\"\ndefault = true\n",
        )
        .unwrap();
        assert!(matches!(
            default_entry(&two_defaults.stores),
            Err(StoresConfigError::DefaultCount(2))
        ));
        assert!(!Stores::in_memory(&Config::default()).is_multi());
    }
}
