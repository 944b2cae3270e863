//! Metadata storage for images, members and identity. One trait, [`MetaStore`], with an
//! in-memory fake ([`memory::MemoryStore`]) and a sqlx implementation for SQLite and PostgreSQL
//! ([`sql::SqlStore`]); [`conformance`] holds the suite every implementation must pass.

pub mod cloudimages;
pub mod conformance;
pub mod memory;
pub mod metadefs;
pub mod sql;

use async_trait::async_trait;
use ims_domain::{
    ErrorKind, Image, ImageListQuery, Limit, Member, Project, QuotaResource, Role, User,
};

/// A failure of the metadata store, with the stable kind callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// An optimistic update lost a race: the stored revision differs from the caller's.
    #[error("{0} was changed concurrently")]
    Conflict(String),
    #[error("marker {0} not found")]
    MarkerNotFound(uuid::Uuid),
    #[error("database operation {op} failed: {source}")]
    Database {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrating the database failed: {0}")]
    Migrating(#[source] sqlx::migrate::MigrateError),
    #[error("stored row is corrupt: {0}")]
    CorruptRow(String),
}

impl MetaError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            MetaError::NotFound(_) => ErrorKind::NotFound,
            MetaError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            MetaError::Conflict(_) => ErrorKind::Conflict,
            MetaError::MarkerNotFound(_) => ErrorKind::InvalidInput,
            MetaError::Database { .. } | MetaError::Migrating(_) | MetaError::CorruptRow(_) => {
                ErrorKind::Internal
            }
        }
    }
}

pub type MetaResult<T> = Result<T, MetaError>;

/// Usage of one project, for quotas (Glance's `user_get_*_usage` / `*_count` queries).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectUsage {
    /// Bytes of image data the project stores: `size` times the number of stores holding it,
    /// over images that are not deleted or killed.
    pub image_size_total: i64,
    /// Images the project owns that are not deleted or killed.
    pub image_count_total: i64,
    /// Images `saving`, `uploading` or `importing`, plus other live images with a non-empty
    /// `os_glance_importing_to_stores` (a copy in progress).
    pub image_count_uploading: i64,
    /// Bytes of the copies in progress (`size` of the live images, other than `uploading` and
    /// `importing` ones, with a non-empty `os_glance_importing_to_stores`). Staged data is not
    /// in the metadata: see `staged_images`.
    pub copying_size: i64,
    /// Images `uploading` or `importing`, whose data may wait in the staging area, sorted.
    pub staged_images: Vec<uuid::Uuid>,
}

/// The property an import lists the stores it still writes to in (Glance's name).
pub const IMPORTING_TO_STORES_PROPERTY: &str = "os_glance_importing_to_stores";

/// Everything the service persists about images and identity.
///
/// Semantics every implementation shares (checked by [`conformance`]):
/// - `create_image` fails with `AlreadyExists` if the id was ever used, even by a deleted image.
/// - `get_image` returns deleted images too (with status `deleted`); callers decide.
/// - `update_image` writes the whole record (tags and properties included) only if the stored
///   `revision` equals `image.revision`, then stores and returns `revision + 1`; else `Conflict`.
/// - `list_images` applies [`ImageListQuery`] exactly as Glance does; deleted and killed
///   images are never listed.
#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    async fn create_image(&self, image: &Image) -> MetaResult<()>;
    async fn get_image(&self, id: uuid::Uuid) -> MetaResult<Option<Image>>;
    async fn update_image(&self, image: &Image) -> MetaResult<Image>;
    async fn list_images(&self, query: &ImageListQuery) -> MetaResult<Vec<Image>>;
    async fn project_usage(&self, owner: &str) -> MetaResult<ProjectUsage>;
    /// Sets (`Some`) or removes (`None`) the project's own limit of `resource`, which replaces
    /// the configured default (`Limit::Unlimited` is stored too: no limit for this project).
    async fn set_project_limit(
        &self,
        project_id: &str,
        resource: QuotaResource,
        limit: Option<Limit>,
    ) -> MetaResult<()>;
    /// The project's own limits, in [`QuotaResource::ALL`] order.
    async fn project_limits(&self, project_id: &str) -> MetaResult<Vec<(QuotaResource, Limit)>>;
    /// Blob keys referenced by any image (for the garbage collector).
    async fn referenced_blob_keys(&self) -> MetaResult<Vec<String>>;
    /// How many image records name `blob_key` in the store `store` (in-region copies share
    /// their source's blob; it may leave a store only when this is 0). One indexed lookup, not
    /// a scan of every image.
    async fn blob_reference_count(&self, blob_key: &str, store: &str) -> MetaResult<u64>;
    /// Blob keys of images whose data the store `store` holds, sorted (the collector of that
    /// store keeps exactly these).
    async fn referenced_blob_keys_in(&self, store: &str) -> MetaResult<Vec<String>>;

    async fn add_member(&self, member: &Member) -> MetaResult<()>;
    async fn get_member(&self, image_id: uuid::Uuid, member_id: &str)
    -> MetaResult<Option<Member>>;
    async fn list_members(&self, image_id: uuid::Uuid) -> MetaResult<Vec<Member>>;
    /// Updates status and `updated_at`; `NotFound` if absent.
    async fn update_member(&self, member: &Member) -> MetaResult<()>;
    /// `NotFound` if absent.
    async fn delete_member(&self, image_id: uuid::Uuid, member_id: &str) -> MetaResult<()>;

    /// `AlreadyExists` on a duplicate id or (domain, name).
    async fn create_project(&self, project: &Project) -> MetaResult<()>;
    async fn get_project(&self, id: &str) -> MetaResult<Option<Project>>;
    async fn find_project(&self, domain_id: &str, name: &str) -> MetaResult<Option<Project>>;
    async fn list_projects(&self) -> MetaResult<Vec<Project>>;
    /// `AlreadyExists` on a duplicate id or (domain, name).
    async fn create_user(&self, user: &User) -> MetaResult<()>;
    async fn get_user(&self, id: &str) -> MetaResult<Option<User>>;
    async fn find_user(&self, domain_id: &str, name: &str) -> MetaResult<Option<User>>;
    async fn list_users(&self) -> MetaResult<Vec<User>>;
    /// Replaces the user's password hash; `NotFound` if absent.
    async fn set_user_password(&self, user_id: &str, password_hash: &str) -> MetaResult<()>;
    /// Idempotent.
    async fn assign_role(&self, user_id: &str, project_id: &str, role: Role) -> MetaResult<()>;
    /// Idempotent.
    async fn unassign_role(&self, user_id: &str, project_id: &str, role: Role) -> MetaResult<()>;
    /// Roles assigned (not implied) to the user on the project.
    async fn assigned_roles(&self, user_id: &str, project_id: &str) -> MetaResult<Vec<Role>>;
    /// Every (user_id, project_id, role) assignment.
    async fn list_role_assignments(&self) -> MetaResult<Vec<(String, String, Role)>>;

    /// A named secret (e.g. the token signing key): stored only if absent; returns the stored
    /// value either way, so concurrent first starts agree on one value.
    async fn get_or_init_secret(&self, name: &str, value: &[u8]) -> MetaResult<Vec<u8>>;
    /// Records a revoked token by its audit id until `expires_at` (Unix seconds).
    async fn revoke_token(&self, audit_id: &str, expires_at: i64) -> MetaResult<()>;
    async fn is_token_revoked(&self, audit_id: &str) -> MetaResult<bool>;
}
