//! Storage for metadata definitions (Glance's "metadefs"): the [`MetadefStore`] trait, its
//! in-memory fake, its SQL implementation on [`SqlStore`] and the [`conformance`] suite.
//!
//! A namespace is one record: its own fields plus `contents`, an opaque text document (the
//! service keeps JSON there) holding its properties, objects, tags and resource-type
//! associations. Every change to a namespace is a read-modify-write of the whole record under
//! an optimistic `revision`, like images. Namespaces are few (tens), so listing returns them all
//! and the service filters, sorts and pages.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use async_trait::async_trait;
use ims_domain::{from_micros, to_micros};
use time::OffsetDateTime;

use crate::sql::{Pool, SqlStore};
use crate::{MetaError, MetaResult};

/// Who may read a namespace besides admins and its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceVisibility {
    Public,
    Private,
}

impl NamespaceVisibility {
    pub fn as_str(self) -> &'static str {
        match self {
            NamespaceVisibility::Public => "public",
            NamespaceVisibility::Private => "private",
        }
    }

    pub fn parse(s: &str) -> Option<NamespaceVisibility> {
        match s {
            "public" => Some(NamespaceVisibility::Public),
            "private" => Some(NamespaceVisibility::Private),
            _ => None,
        }
    }
}

/// One stored namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceRecord {
    /// Stable identity; `namespace` (the name) may change.
    pub id: uuid::Uuid,
    /// The unique name clients address it by.
    pub namespace: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub visibility: NamespaceVisibility,
    pub protected: bool,
    pub owner: Option<String>,
    /// Properties, objects, tags and associations, serialised by the service.
    pub contents: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub revision: i64,
}

/// A kind of resource namespaces can apply to (`OS::Glance::Image`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceTypeRecord {
    pub name: String,
    /// Seeded system types are protected.
    pub protected: bool,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// Everything the service persists about metadata definitions.
///
/// Semantics every implementation shares (checked by [`conformance`]):
/// - namespace names are unique: `create_namespace`, and an `update_namespace` that renames,
///   fail with `AlreadyExists` on a clash;
/// - `update_namespace` writes the record only if the stored `revision` equals the record's,
///   then stores and returns `revision + 1`; else `Conflict` (`NotFound` if the id is gone);
/// - `list_namespaces` returns every namespace ordered by `(created_at, id)`;
/// - `list_resource_types` returns every type ordered by `(created_at, name)`;
/// - `add_resource_type` keeps an existing type and returns whichever is stored.
#[async_trait]
pub trait MetadefStore: Send + Sync + 'static {
    async fn create_namespace(&self, ns: &NamespaceRecord) -> MetaResult<()>;
    async fn get_namespace(&self, name: &str) -> MetaResult<Option<NamespaceRecord>>;
    async fn list_namespaces(&self) -> MetaResult<Vec<NamespaceRecord>>;
    async fn update_namespace(&self, ns: &NamespaceRecord) -> MetaResult<NamespaceRecord>;
    /// `NotFound` if absent.
    async fn delete_namespace(&self, name: &str) -> MetaResult<()>;

    async fn list_resource_types(&self) -> MetaResult<Vec<ResourceTypeRecord>>;
    async fn add_resource_type(&self, rt: &ResourceTypeRecord) -> MetaResult<ResourceTypeRecord>;

    /// Whether the named seed set was recorded as loaded.
    async fn seed_applied(&self, name: &str) -> MetaResult<bool>;
    /// Records the named seed set as loaded (idempotent).
    async fn record_seed(&self, name: &str) -> MetaResult<()>;
}

fn namespace_label(name: &str) -> String {
    format!("metadata definition namespace {name}")
}

/// The in-memory [`MetadefStore`], for tests and `App::in_memory`.
#[derive(Debug, Default)]
pub struct MemoryMetadefStore {
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    namespaces: BTreeMap<uuid::Uuid, NamespaceRecord>,
    resource_types: BTreeMap<String, ResourceTypeRecord>,
    seeds: BTreeSet<String>,
}

impl MemoryState {
    fn name_taken(&self, name: &str, except: uuid::Uuid) -> bool {
        self.namespaces
            .values()
            .any(|n| n.namespace == name && n.id != except)
    }
}

impl MemoryMetadefStore {
    pub fn new() -> MemoryMetadefStore {
        MemoryMetadefStore::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // A panic while holding the lock leaves whole records behind; keep serving.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl MetadefStore for MemoryMetadefStore {
    async fn create_namespace(&self, ns: &NamespaceRecord) -> MetaResult<()> {
        let mut state = self.state();
        if state.namespaces.contains_key(&ns.id) || state.name_taken(&ns.namespace, ns.id) {
            return Err(MetaError::AlreadyExists(namespace_label(&ns.namespace)));
        }
        state.namespaces.insert(ns.id, ns.clone());
        Ok(())
    }

    async fn get_namespace(&self, name: &str) -> MetaResult<Option<NamespaceRecord>> {
        let state = self.state();
        Ok(state
            .namespaces
            .values()
            .find(|n| n.namespace == name)
            .cloned())
    }

    async fn list_namespaces(&self) -> MetaResult<Vec<NamespaceRecord>> {
        let mut all: Vec<_> = self.state().namespaces.values().cloned().collect();
        all.sort_by_key(|n| (n.created_at, n.id));
        Ok(all)
    }

    async fn update_namespace(&self, ns: &NamespaceRecord) -> MetaResult<NamespaceRecord> {
        let mut state = self.state();
        let stored = state
            .namespaces
            .get(&ns.id)
            .ok_or_else(|| MetaError::NotFound(namespace_label(&ns.namespace)))?;
        if stored.revision != ns.revision {
            return Err(MetaError::Conflict(namespace_label(&ns.namespace)));
        }
        if state.name_taken(&ns.namespace, ns.id) {
            return Err(MetaError::AlreadyExists(namespace_label(&ns.namespace)));
        }
        let mut updated = ns.clone();
        updated.revision += 1;
        state.namespaces.insert(ns.id, updated.clone());
        Ok(updated)
    }

    async fn delete_namespace(&self, name: &str) -> MetaResult<()> {
        let mut state = self.state();
        let id = state
            .namespaces
            .values()
            .find(|n| n.namespace == name)
            .map(|n| n.id)
            .ok_or_else(|| MetaError::NotFound(namespace_label(name)))?;
        state.namespaces.remove(&id);
        Ok(())
    }

    async fn list_resource_types(&self) -> MetaResult<Vec<ResourceTypeRecord>> {
        let mut all: Vec<_> = self.state().resource_types.values().cloned().collect();
        all.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
        Ok(all)
    }

    async fn add_resource_type(&self, rt: &ResourceTypeRecord) -> MetaResult<ResourceTypeRecord> {
        let mut state = self.state();
        Ok(state
            .resource_types
            .entry(rt.name.clone())
            .or_insert_with(|| rt.clone())
            .clone())
    }

    async fn seed_applied(&self, name: &str) -> MetaResult<bool> {
        Ok(self.state().seeds.contains(name))
    }

    async fn record_seed(&self, name: &str) -> MetaResult<()> {
        self.state().seeds.insert(name.to_owned());
        Ok(())
    }
}

/// Runs `$body` with `$pool` bound to whichever pool the store holds.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store.pool() {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

const NAMESPACE_COLUMNS: &str = "id, namespace, display_name, description, visibility, protected, \
     owner, contents, created_at, updated_at, revision";

#[derive(Debug, sqlx::FromRow)]
struct NamespaceRow {
    id: String,
    namespace: String,
    display_name: Option<String>,
    description: Option<String>,
    visibility: String,
    protected: bool,
    owner: Option<String>,
    contents: String,
    created_at: i64,
    updated_at: i64,
    revision: i64,
}

impl TryFrom<NamespaceRow> for NamespaceRecord {
    type Error = MetaError;

    fn try_from(row: NamespaceRow) -> MetaResult<NamespaceRecord> {
        let corrupt = |what: &str| {
            MetaError::CorruptRow(format!("metadef namespace {}: {what}", row.namespace))
        };
        Ok(NamespaceRecord {
            id: row.id.parse().map_err(|_| corrupt("id"))?,
            visibility: NamespaceVisibility::parse(&row.visibility)
                .ok_or_else(|| corrupt("visibility"))?,
            namespace: row.namespace.clone(),
            display_name: row.display_name,
            description: row.description,
            protected: row.protected,
            owner: row.owner,
            contents: row.contents,
            created_at: from_micros(row.created_at),
            updated_at: from_micros(row.updated_at),
            revision: row.revision,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
struct ResourceTypeRow {
    name: String,
    protected: bool,
    created_at: i64,
    updated_at: i64,
}

impl From<ResourceTypeRow> for ResourceTypeRecord {
    fn from(row: ResourceTypeRow) -> ResourceTypeRecord {
        ResourceTypeRecord {
            name: row.name,
            protected: row.protected,
            created_at: from_micros(row.created_at),
            updated_at: from_micros(row.updated_at),
        }
    }
}

fn db_error(op: &'static str) -> impl FnOnce(sqlx::Error) -> MetaError {
    move |source| MetaError::Database { op, source }
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.is_unique_violation())
}

impl SqlStore {
    async fn fetch_namespaces(
        &self,
        op: &'static str,
        sql: &str,
        name: Option<&str>,
    ) -> MetaResult<Vec<NamespaceRecord>> {
        let rows: Vec<NamespaceRow> = on_pool!(self, pool => {
            let mut query = sqlx::query_as::<_, NamespaceRow>(sql);
            if let Some(name) = name {
                query = query.bind(name);
            }
            query.fetch_all(pool).await.map_err(db_error(op))?
        });
        rows.into_iter().map(NamespaceRecord::try_from).collect()
    }
}

#[async_trait]
impl MetadefStore for SqlStore {
    async fn create_namespace(&self, ns: &NamespaceRecord) -> MetaResult<()> {
        let sql = format!(
            "INSERT INTO metadef_namespaces ({NAMESPACE_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        );
        let result = on_pool!(self, pool => sqlx::query(&sql)
            .bind(ns.id.to_string())
            .bind(&ns.namespace)
            .bind(ns.display_name.as_deref())
            .bind(ns.description.as_deref())
            .bind(ns.visibility.as_str())
            .bind(ns.protected)
            .bind(ns.owner.as_deref())
            .bind(&ns.contents)
            .bind(to_micros(ns.created_at))
            .bind(to_micros(ns.updated_at))
            .bind(ns.revision)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()));
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => {
                Err(MetaError::AlreadyExists(namespace_label(&ns.namespace)))
            }
            Err(e) => Err(db_error("create_metadef_namespace")(e)),
        }
    }

    async fn get_namespace(&self, name: &str) -> MetaResult<Option<NamespaceRecord>> {
        let sql =
            format!("SELECT {NAMESPACE_COLUMNS} FROM metadef_namespaces WHERE namespace = $1");
        let mut found = self
            .fetch_namespaces("get_metadef_namespace", &sql, Some(name))
            .await?;
        Ok(found.pop())
    }

    async fn list_namespaces(&self) -> MetaResult<Vec<NamespaceRecord>> {
        let sql =
            format!("SELECT {NAMESPACE_COLUMNS} FROM metadef_namespaces ORDER BY created_at, id");
        self.fetch_namespaces("list_metadef_namespaces", &sql, None)
            .await
    }

    async fn update_namespace(&self, ns: &NamespaceRecord) -> MetaResult<NamespaceRecord> {
        let sql = "UPDATE metadef_namespaces SET namespace = $1, display_name = $2, \
                   description = $3, visibility = $4, protected = $5, owner = $6, contents = $7, \
                   updated_at = $8, revision = $9 WHERE id = $10 AND revision = $11";
        let result = on_pool!(self, pool => sqlx::query(sql)
            .bind(&ns.namespace)
            .bind(ns.display_name.as_deref())
            .bind(ns.description.as_deref())
            .bind(ns.visibility.as_str())
            .bind(ns.protected)
            .bind(ns.owner.as_deref())
            .bind(&ns.contents)
            .bind(to_micros(ns.updated_at))
            .bind(ns.revision + 1)
            .bind(ns.id.to_string())
            .bind(ns.revision)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()));
        let rows = match result {
            Ok(rows) => rows,
            Err(e) if is_unique_violation(&e) => {
                return Err(MetaError::AlreadyExists(namespace_label(&ns.namespace)));
            }
            Err(e) => return Err(db_error("update_metadef_namespace")(e)),
        };
        if rows == 1 {
            let mut updated = ns.clone();
            updated.revision += 1;
            return Ok(updated);
        }
        let exists_sql = "SELECT COUNT(*) FROM metadef_namespaces WHERE id = $1";
        let count: i64 = on_pool!(self, pool => sqlx::query_scalar(exists_sql)
            .bind(ns.id.to_string())
            .fetch_one(pool)
            .await
            .map_err(db_error("update_metadef_namespace"))?);
        if count == 0 {
            Err(MetaError::NotFound(namespace_label(&ns.namespace)))
        } else {
            Err(MetaError::Conflict(namespace_label(&ns.namespace)))
        }
    }

    async fn delete_namespace(&self, name: &str) -> MetaResult<()> {
        let sql = "DELETE FROM metadef_namespaces WHERE namespace = $1";
        let rows = on_pool!(self, pool => sqlx::query(sql)
            .bind(name)
            .execute(pool)
            .await
            .map_err(db_error("delete_metadef_namespace"))?
            .rows_affected());
        if rows == 0 {
            return Err(MetaError::NotFound(namespace_label(name)));
        }
        Ok(())
    }

    async fn list_resource_types(&self) -> MetaResult<Vec<ResourceTypeRecord>> {
        let sql = "SELECT name, protected, created_at, updated_at FROM metadef_resource_types \
                   ORDER BY created_at, name";
        let rows = on_pool!(self, pool => sqlx::query_as::<_, ResourceTypeRow>(sql)
            .fetch_all(pool)
            .await
            .map_err(db_error("list_metadef_resource_types"))?);
        Ok(rows.into_iter().map(ResourceTypeRecord::from).collect())
    }

    async fn add_resource_type(&self, rt: &ResourceTypeRecord) -> MetaResult<ResourceTypeRecord> {
        let insert = "INSERT INTO metadef_resource_types (name, protected, created_at, updated_at) \
                      VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING";
        let select = "SELECT name, protected, created_at, updated_at FROM metadef_resource_types \
                      WHERE name = $1";
        let row = on_pool!(self, pool => {
            sqlx::query(insert)
                .bind(&rt.name)
                .bind(rt.protected)
                .bind(to_micros(rt.created_at))
                .bind(to_micros(rt.updated_at))
                .execute(pool)
                .await
                .map_err(db_error("add_metadef_resource_type"))?;
            sqlx::query_as::<_, ResourceTypeRow>(select)
                .bind(&rt.name)
                .fetch_one(pool)
                .await
                .map_err(db_error("add_metadef_resource_type"))?
        });
        Ok(row.into())
    }

    async fn seed_applied(&self, name: &str) -> MetaResult<bool> {
        let sql = "SELECT COUNT(*) FROM metadef_seeds WHERE name = $1";
        let count: i64 = on_pool!(self, pool => sqlx::query_scalar(sql)
            .bind(name)
            .fetch_one(pool)
            .await
            .map_err(db_error("metadef_seed_applied"))?);
        Ok(count > 0)
    }

    async fn record_seed(&self, name: &str) -> MetaResult<()> {
        let sql = "INSERT INTO metadef_seeds (name, applied_at) VALUES ($1, $2) \
                   ON CONFLICT (name) DO NOTHING";
        on_pool!(self, pool => sqlx::query(sql)
            .bind(name)
            .bind(to_micros(ims_domain::now()))
            .execute(pool)
            .await
            .map(|_| ())
            .map_err(db_error("record_metadef_seed"))?);
        Ok(())
    }
}

/// The suite every [`MetadefStore`] must pass; each function takes a fresh, empty store.
pub mod conformance {
    use super::*;
    use ims_domain::ErrorKind;

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000 + seconds).expect("valid time")
    }

    pub fn namespace(name: &str, created: i64) -> NamespaceRecord {
        NamespaceRecord {
            id: uuid::Uuid::new_v4(),
            namespace: name.to_owned(),
            display_name: Some(format!("{name} display")),
            description: None,
            visibility: NamespaceVisibility::Private,
            protected: false,
            owner: Some("p1".into()),
            contents: r#"{"tags":[]}"#.into(),
            created_at: at(created),
            updated_at: at(created),
            revision: 0,
        }
    }

    /// Create, read back, reject duplicates, list in creation order, delete.
    pub async fn namespace_lifecycle(store: &dyn MetadefStore) {
        let a = namespace("OS::Test::A", 2);
        let b = namespace("OS::Test::B", 1);
        store.create_namespace(&a).await.unwrap();
        store.create_namespace(&b).await.unwrap();
        assert_eq!(
            store.get_namespace("OS::Test::A").await.unwrap(),
            Some(a.clone())
        );
        assert_eq!(store.get_namespace("OS::Test::C").await.unwrap(), None);

        let dup = namespace("OS::Test::A", 3);
        let err = store.create_namespace(&dup).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);

        let names: Vec<_> = store
            .list_namespaces()
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.namespace)
            .collect();
        assert_eq!(names, ["OS::Test::B", "OS::Test::A"]);

        store.delete_namespace("OS::Test::A").await.unwrap();
        let err = store.delete_namespace("OS::Test::A").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert_eq!(store.list_namespaces().await.unwrap().len(), 1);
    }

    /// Updates bump the revision, lose races with `Conflict`, and renames stay unique.
    pub async fn namespace_updates(store: &dyn MetadefStore) {
        let a = namespace("OS::Test::A", 1);
        store
            .create_namespace(&namespace("OS::Test::B", 2))
            .await
            .unwrap();
        store.create_namespace(&a).await.unwrap();

        let mut changed = a.clone();
        changed.namespace = "OS::Test::Renamed".into();
        changed.visibility = NamespaceVisibility::Public;
        changed.protected = true;
        changed.owner = None;
        changed.description = Some("d".into());
        changed.contents = r#"{"tags":[{"name":"x"}]}"#.into();
        changed.updated_at = at(5);
        let stored = store.update_namespace(&changed).await.unwrap();
        assert_eq!(stored.revision, 1);
        assert_eq!(
            store.get_namespace("OS::Test::Renamed").await.unwrap(),
            Some(stored.clone())
        );
        assert_eq!(store.get_namespace("OS::Test::A").await.unwrap(), None);

        let err = store.update_namespace(&changed).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);

        let mut clash = stored.clone();
        clash.namespace = "OS::Test::B".into();
        let err = store.update_namespace(&clash).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);

        store.delete_namespace("OS::Test::Renamed").await.unwrap();
        let err = store.update_namespace(&stored).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }

    /// Resource types are added once and listed in creation order; seeds are remembered.
    pub async fn resource_types_and_seeds(store: &dyn MetadefStore) {
        let rt = |name: &str, created: i64| ResourceTypeRecord {
            name: name.into(),
            protected: true,
            created_at: at(created),
            updated_at: at(created),
        };
        store
            .add_resource_type(&rt("OS::Nova::Server", 2))
            .await
            .unwrap();
        store
            .add_resource_type(&rt("OS::Glance::Image", 1))
            .await
            .unwrap();
        let again = ResourceTypeRecord {
            protected: false,
            ..rt("OS::Glance::Image", 9)
        };
        let kept = store.add_resource_type(&again).await.unwrap();
        assert_eq!(kept, rt("OS::Glance::Image", 1));
        let names: Vec<_> = store
            .list_resource_types()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["OS::Glance::Image", "OS::Nova::Server"]);

        assert!(!store.seed_applied("standard-v1").await.unwrap());
        store.record_seed("standard-v1").await.unwrap();
        store.record_seed("standard-v1").await.unwrap();
        assert!(store.seed_applied("standard-v1").await.unwrap());
        assert!(!store.seed_applied("standard-v2").await.unwrap());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_passes_the_conformance_suite() {
        conformance::namespace_lifecycle(&MemoryMetadefStore::new()).await;
        conformance::namespace_updates(&MemoryMetadefStore::new()).await;
        conformance::resource_types_and_seeds(&MemoryMetadefStore::new()).await;
    }

    #[test]
    fn visibility_round_trips() {
        for v in [NamespaceVisibility::Public, NamespaceVisibility::Private] {
            assert_eq!(NamespaceVisibility::parse(v.as_str()), Some(v));
        }
        assert_eq!(NamespaceVisibility::parse("shared"), None);
    }
}
