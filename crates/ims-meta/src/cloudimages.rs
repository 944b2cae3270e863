//! Storage for what only the IMS API needs: access keys (AK/SK, the secret sealed by the
//! service) and the records of IMS jobs as `show_job` reports them. The [`CloudImageStore`]
//! trait, its in-memory fake, its SQL implementation on [`SqlStore`] and the [`conformance`]
//! suite both must pass.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use ims_domain::{from_micros, to_micros};
use time::OffsetDateTime;

use crate::sql::{Pool, SqlStore};
use crate::{MetaError, MetaResult};

/// One access key. The secret is stored only sealed (encrypted by the service with a key kept
/// outside the database); the store never sees it in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKeyRecord {
    /// The AK clients send in `Access=`.
    pub access_key: String,
    pub user_id: String,
    /// The sealed secret key (nonce + ciphertext + tag).
    pub sealed_secret: Vec<u8>,
    pub description: Option<String>,
    pub created_at: OffsetDateTime,
}

/// One IMS job as the job queries report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    /// 32 lowercase hex digits.
    pub id: String,
    pub project_id: String,
    /// `imsImportImageJob`, `imsAddImageMembersJob`, …
    pub job_type: String,
    /// `INIT`, `RUNNING`, `SUCCESS` or `FAIL`.
    pub status: String,
    pub begin_time: OffsetDateTime,
    pub end_time: Option<OffsetDateTime>,
    pub error_code: Option<String>,
    pub fail_reason: Option<String>,
    /// The job's `entities` object, serialised by the service.
    pub entities: String,
}

fn key_label(ak: &str) -> String {
    format!("access key {ak}")
}

/// What the IMS API persists besides images.
///
/// Semantics every implementation shares (checked by [`conformance`]):
/// - `create_access_key` fails with `AlreadyExists` on a duplicate AK;
/// - `list_access_keys` returns the user's keys ordered by `(created_at, access_key)`;
/// - `delete_access_key` fails with `NotFound` if absent;
/// - `put_job` inserts or replaces the record with that id.
#[async_trait]
pub trait CloudImageStore: Send + Sync + 'static {
    async fn create_access_key(&self, key: &AccessKeyRecord) -> MetaResult<()>;
    async fn get_access_key(&self, access_key: &str) -> MetaResult<Option<AccessKeyRecord>>;
    async fn list_access_keys(&self, user_id: &str) -> MetaResult<Vec<AccessKeyRecord>>;
    async fn delete_access_key(&self, access_key: &str) -> MetaResult<()>;

    async fn put_job(&self, job: &JobRecord) -> MetaResult<()>;
    async fn get_job(&self, id: &str) -> MetaResult<Option<JobRecord>>;
}

/// The in-memory fake.
#[derive(Debug, Default)]
pub struct MemoryCloudImageStore {
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    keys: BTreeMap<String, AccessKeyRecord>,
    jobs: BTreeMap<String, JobRecord>,
}

impl MemoryCloudImageStore {
    pub fn new() -> MemoryCloudImageStore {
        MemoryCloudImageStore::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // Every write replaces whole records, so a poisoned lock still guards consistent data.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl CloudImageStore for MemoryCloudImageStore {
    async fn create_access_key(&self, key: &AccessKeyRecord) -> MetaResult<()> {
        let mut state = self.state();
        if state.keys.contains_key(&key.access_key) {
            return Err(MetaError::AlreadyExists(key_label(&key.access_key)));
        }
        state.keys.insert(key.access_key.clone(), key.clone());
        Ok(())
    }

    async fn get_access_key(&self, access_key: &str) -> MetaResult<Option<AccessKeyRecord>> {
        Ok(self.state().keys.get(access_key).cloned())
    }

    async fn list_access_keys(&self, user_id: &str) -> MetaResult<Vec<AccessKeyRecord>> {
        let mut keys: Vec<_> = self
            .state()
            .keys
            .values()
            .filter(|k| k.user_id == user_id)
            .cloned()
            .collect();
        keys.sort_by(|a, b| (a.created_at, &a.access_key).cmp(&(b.created_at, &b.access_key)));
        Ok(keys)
    }

    async fn delete_access_key(&self, access_key: &str) -> MetaResult<()> {
        self.state()
            .keys
            .remove(access_key)
            .map(drop)
            .ok_or_else(|| MetaError::NotFound(key_label(access_key)))
    }

    async fn put_job(&self, job: &JobRecord) -> MetaResult<()> {
        self.state().jobs.insert(job.id.clone(), job.clone());
        Ok(())
    }

    async fn get_job(&self, id: &str) -> MetaResult<Option<JobRecord>> {
        Ok(self.state().jobs.get(id).cloned())
    }
}

fn db_error(op: &'static str) -> impl FnOnce(sqlx::Error) -> MetaError {
    move |source| MetaError::Database { op, source }
}

const KEY_COLUMNS: &str = "access_key, user_id, sealed_secret, description, created_at";
const JOB_COLUMNS: &str = "id, project_id, job_type, status, begin_time, end_time, error_code, \
                           fail_reason, entities";

#[derive(sqlx::FromRow)]
struct KeyRow {
    access_key: String,
    user_id: String,
    sealed_secret: Vec<u8>,
    description: Option<String>,
    created_at: i64,
}

impl From<KeyRow> for AccessKeyRecord {
    fn from(row: KeyRow) -> AccessKeyRecord {
        AccessKeyRecord {
            access_key: row.access_key,
            user_id: row.user_id,
            sealed_secret: row.sealed_secret,
            description: row.description,
            created_at: from_micros(row.created_at),
        }
    }
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: String,
    project_id: String,
    job_type: String,
    status: String,
    begin_time: i64,
    end_time: Option<i64>,
    error_code: Option<String>,
    fail_reason: Option<String>,
    entities: String,
}

impl From<JobRow> for JobRecord {
    fn from(row: JobRow) -> JobRecord {
        JobRecord {
            id: row.id,
            project_id: row.project_id,
            job_type: row.job_type,
            status: row.status,
            begin_time: from_micros(row.begin_time),
            end_time: row.end_time.map(from_micros),
            error_code: row.error_code,
            fail_reason: row.fail_reason,
            entities: row.entities,
        }
    }
}

#[async_trait]
impl CloudImageStore for SqlStore {
    async fn create_access_key(&self, key: &AccessKeyRecord) -> MetaResult<()> {
        let sql = format!("INSERT INTO access_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5)");
        let result = match self.pool() {
            Pool::Sqlite(pool) => sqlx::query(&sql)
                .bind(&key.access_key)
                .bind(&key.user_id)
                .bind(key.sealed_secret.as_slice())
                .bind(key.description.as_deref())
                .bind(to_micros(key.created_at))
                .execute(pool)
                .await
                .map(drop),
            Pool::Postgres(pool) => sqlx::query(&sql)
                .bind(&key.access_key)
                .bind(&key.user_id)
                .bind(key.sealed_secret.as_slice())
                .bind(key.description.as_deref())
                .bind(to_micros(key.created_at))
                .execute(pool)
                .await
                .map(drop),
        };
        match result {
            Ok(()) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(MetaError::AlreadyExists(key_label(&key.access_key)))
            }
            Err(e) => Err(db_error("create_access_key")(e)),
        }
    }

    async fn get_access_key(&self, access_key: &str) -> MetaResult<Option<AccessKeyRecord>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM access_keys WHERE access_key = $1");
        let row: Option<KeyRow> = match self.pool() {
            Pool::Sqlite(pool) => {
                sqlx::query_as(&sql)
                    .bind(access_key)
                    .fetch_optional(pool)
                    .await
            }
            Pool::Postgres(pool) => {
                sqlx::query_as(&sql)
                    .bind(access_key)
                    .fetch_optional(pool)
                    .await
            }
        }
        .map_err(db_error("get_access_key"))?;
        Ok(row.map(Into::into))
    }

    async fn list_access_keys(&self, user_id: &str) -> MetaResult<Vec<AccessKeyRecord>> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM access_keys WHERE user_id = $1 \
             ORDER BY created_at, access_key"
        );
        let rows: Vec<KeyRow> = match self.pool() {
            Pool::Sqlite(pool) => sqlx::query_as(&sql).bind(user_id).fetch_all(pool).await,
            Pool::Postgres(pool) => sqlx::query_as(&sql).bind(user_id).fetch_all(pool).await,
        }
        .map_err(db_error("list_access_keys"))?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn delete_access_key(&self, access_key: &str) -> MetaResult<()> {
        let sql = "DELETE FROM access_keys WHERE access_key = $1";
        let rows = match self.pool() {
            Pool::Sqlite(pool) => sqlx::query(sql)
                .bind(access_key)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
            Pool::Postgres(pool) => sqlx::query(sql)
                .bind(access_key)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
        }
        .map_err(db_error("delete_access_key"))?;
        if rows == 0 {
            return Err(MetaError::NotFound(key_label(access_key)));
        }
        Ok(())
    }

    async fn put_job(&self, job: &JobRecord) -> MetaResult<()> {
        let sql = format!(
            "INSERT INTO ims_job_records ({JOB_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
             end_time = excluded.end_time, error_code = excluded.error_code, \
             fail_reason = excluded.fail_reason, entities = excluded.entities"
        );
        macro_rules! run {
            ($pool:expr) => {
                sqlx::query(&sql)
                    .bind(&job.id)
                    .bind(&job.project_id)
                    .bind(&job.job_type)
                    .bind(&job.status)
                    .bind(to_micros(job.begin_time))
                    .bind(job.end_time.map(to_micros))
                    .bind(job.error_code.as_deref())
                    .bind(job.fail_reason.as_deref())
                    .bind(&job.entities)
                    .execute($pool)
                    .await
                    .map(drop)
            };
        }
        match self.pool() {
            Pool::Sqlite(pool) => run!(pool),
            Pool::Postgres(pool) => run!(pool),
        }
        .map_err(db_error("put_job"))
    }

    async fn get_job(&self, id: &str) -> MetaResult<Option<JobRecord>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM ims_job_records WHERE id = $1");
        let row: Option<JobRow> = match self.pool() {
            Pool::Sqlite(pool) => sqlx::query_as(&sql).bind(id).fetch_optional(pool).await,
            Pool::Postgres(pool) => sqlx::query_as(&sql).bind(id).fetch_optional(pool).await,
        }
        .map_err(db_error("get_job"))?;
        Ok(row.map(Into::into))
    }
}

/// The suite every [`CloudImageStore`] must pass.
pub mod conformance {
    use super::*;

    fn key(ak: &str, user: &str, at: i64) -> AccessKeyRecord {
        AccessKeyRecord {
            access_key: ak.into(),
            user_id: user.into(),
            sealed_secret: vec![1, 2, 3, 0, 255],
            description: Some("ci".into()),
            created_at: from_micros(at),
        }
    }

    pub async fn access_keys(store: &dyn CloudImageStore) {
        let a = key("AKA", "u1", 2_000_000);
        let b = key("AKB", "u1", 1_000_000);
        store.create_access_key(&a).await.unwrap();
        store.create_access_key(&b).await.unwrap();
        store.create_access_key(&key("AKC", "u2", 0)).await.unwrap();
        assert!(matches!(
            store.create_access_key(&a).await,
            Err(MetaError::AlreadyExists(_))
        ));
        assert_eq!(store.get_access_key("AKA").await.unwrap(), Some(a.clone()));
        assert_eq!(store.get_access_key("nope").await.unwrap(), None);
        let listed = store.list_access_keys("u1").await.unwrap();
        assert_eq!(listed, vec![b.clone(), a.clone()]);
        store.delete_access_key("AKB").await.unwrap();
        assert!(matches!(
            store.delete_access_key("AKB").await,
            Err(MetaError::NotFound(_))
        ));
        assert_eq!(store.list_access_keys("u1").await.unwrap(), vec![a]);
    }

    pub async fn jobs(store: &dyn CloudImageStore) {
        let mut job = JobRecord {
            id: "0123456789abcdef0123456789abcdef".into(),
            project_id: "p1".into(),
            job_type: "imsAddImageMembersJob".into(),
            status: "RUNNING".into(),
            begin_time: from_micros(5_000_000),
            end_time: None,
            error_code: None,
            fail_reason: None,
            entities: "{}".into(),
        };
        store.put_job(&job).await.unwrap();
        assert_eq!(store.get_job(&job.id).await.unwrap(), Some(job.clone()));
        job.status = "FAIL".into();
        job.end_time = Some(from_micros(6_000_000));
        job.error_code = Some("IMG.0001".into());
        job.fail_reason = Some("bad".into());
        job.entities = r#"{"image_id":"x"}"#.into();
        store.put_job(&job).await.unwrap();
        assert_eq!(store.get_job(&job.id).await.unwrap(), Some(job.clone()));
        assert_eq!(store.get_job("missing").await.unwrap(), None);
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[tokio::test]
        async fn memory_store_conforms() {
            let store = MemoryCloudImageStore::new();
            access_keys(&store).await;
            jobs(&store).await;
        }

        #[tokio::test]
        async fn sqlite_store_conforms() {
            let dir = tempfile::tempdir().unwrap();
            let url = format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("t.sqlite").display()
            );
            let store = SqlStore::connect(&url).await.unwrap();
            access_keys(&store).await;
            jobs(&store).await;
        }

        #[tokio::test]
        async fn postgres_store_conforms() {
            let Ok(url) = std::env::var("IMS_TEST_PG_URL") else {
                return;
            };
            let store = SqlStore::connect(&url).await.unwrap();
            // Shared database: start from a clean slate for the fixed keys this suite uses.
            for ak in ["AKA", "AKB", "AKC"] {
                let _ = store.delete_access_key(ak).await;
            }
            access_keys(&store).await;
            jobs(&store).await;
        }
    }
}
