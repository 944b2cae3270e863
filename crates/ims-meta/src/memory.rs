//! `MemoryStore`: the in-memory fake of [`MetaStore`], for service tests and as the reference the
//! SQL backends are compared against.
//!
//! Everything lives in `BTreeMap`s behind one `std::sync::Mutex`; no lock is held across an
//! `.await`. Timestamps are truncated to microseconds on write, as the SQL backends store them,
//! so both give identical answers.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use ims_domain::member::MemberStatus;
use ims_domain::query::{MatchField, MemberStatusFilter, TimeField, VisibilityFilter};
use ims_domain::{
    Image, ImageListQuery, ImageStatus, Limit, ListScope, Member, Project, QuotaResource, Role,
    SortDir, SortKey, User, Visibility, from_micros, to_micros,
};
use time::OffsetDateTime;

use crate::{IMPORTING_TO_STORES_PROPERTY, MetaError, MetaResult, MetaStore, ProjectUsage};

/// The in-memory [`MetaStore`].
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    images: BTreeMap<uuid::Uuid, Image>,
    members: BTreeMap<(uuid::Uuid, String), Member>,
    projects: BTreeMap<String, Project>,
    users: BTreeMap<String, User>,
    role_assignments: BTreeSet<(String, String, Role)>,
    secrets: BTreeMap<String, Vec<u8>>,
    /// audit id → expiry (Unix seconds).
    revoked_tokens: BTreeMap<String, i64>,
    /// (project id, resource) → the project's own limit.
    project_limits: BTreeMap<(String, QuotaResource), Limit>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a map half-written (every mutation is one
        // insert or remove), so a poisoned lock is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Drops sub-microsecond precision, which the SQL backends cannot keep.
fn truncate(t: OffsetDateTime) -> OffsetDateTime {
    from_micros(to_micros(t))
}

/// `image` as every store returns it: timestamps truncated to microseconds, in UTC.
pub(crate) fn normalized_image(image: &Image) -> Image {
    let mut image = image.clone();
    image.created_at = truncate(image.created_at);
    image.updated_at = truncate(image.updated_at);
    image.deleted_at = image.deleted_at.map(truncate);
    image
}

fn normalized_member(member: &Member) -> Member {
    let mut member = member.clone();
    member.created_at = truncate(member.created_at);
    member.updated_at = truncate(member.updated_at);
    member
}

/// Deleted images are kept (ids are never reused) but count for nothing.
pub(crate) fn is_deleted(image: &Image) -> bool {
    image.status == ImageStatus::Deleted || image.deleted_at.is_some()
}

fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// One sort key of `image`, with the NULL convention every store shares: a missing name or
/// format sorts as `""`, a missing size as `-1`.
fn cmp_key(key: SortKey, a: &Image, b: &Image) -> Ordering {
    fn text(v: &Option<String>) -> &str {
        v.as_deref().unwrap_or("")
    }
    match key {
        SortKey::Name => text(&a.name).cmp(text(&b.name)),
        SortKey::Status => a.status.as_str().cmp(b.status.as_str()),
        SortKey::ContainerFormat => text(&a.container_format).cmp(text(&b.container_format)),
        SortKey::DiskFormat => text(&a.disk_format).cmp(text(&b.disk_format)),
        SortKey::Size => a.size().unwrap_or(-1).cmp(&b.size().unwrap_or(-1)),
        // Byte order of a UUID is the order of its lowercase hyphenated text, as SQL stores it.
        SortKey::Id => a.id.cmp(&b.id),
        SortKey::CreatedAt => to_micros(a.created_at).cmp(&to_micros(b.created_at)),
        SortKey::UpdatedAt => to_micros(a.updated_at).cmp(&to_micros(b.updated_at)),
    }
}

/// Compares two images in the order of `sort` (a full sort, ending in a unique key).
pub(crate) fn cmp_images(sort: &[(SortKey, SortDir)], a: &Image, b: &Image) -> Ordering {
    for &(key, dir) in sort {
        let ord = match dir {
            SortDir::Asc => cmp_key(key, a, b),
            SortDir::Desc => cmp_key(key, a, b).reverse(),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

fn match_value(field: MatchField, image: &Image) -> Option<String> {
    let data = image.data.as_ref();
    match field {
        MatchField::Id => Some(image.id.to_string()),
        MatchField::Name => image.name.clone(),
        MatchField::Status => Some(image.status.as_str().to_owned()),
        MatchField::ContainerFormat => image.container_format.clone(),
        MatchField::DiskFormat => image.disk_format.clone(),
        MatchField::Owner => image.owner.clone(),
        MatchField::Checksum => data
            .map(|d| d.checksum.clone())
            .or_else(|| (image.location_data.as_ref()).and_then(|l| l.checksum.clone())),
        MatchField::OsHashValue => data
            .map(|d| d.os_hash_value.clone())
            .or_else(|| (image.location_data.as_ref()).and_then(|l| l.os_hash_value.clone())),
    }
}

fn member_status_matches(filter: MemberStatusFilter, status: MemberStatus) -> bool {
    match filter {
        MemberStatusFilter::All => true,
        MemberStatusFilter::Only(wanted) => wanted == status,
    }
}

impl State {
    fn member_of(&self, image_id: uuid::Uuid, project: &str) -> Option<&Member> {
        self.members.get(&(image_id, project.to_owned()))
    }

    /// Whether `image` may serve as a marker for `scope`: not deleted, and visible as
    /// `get_image` would show it (shared images need a membership of any status).
    fn marker_visible(&self, scope: &ListScope, image: &Image) -> bool {
        if is_deleted(image) {
            return false;
        }
        match scope {
            ListScope::All => true,
            ListScope::Project(p) => {
                image.owner.as_deref() == Some(p.as_str())
                    || matches!(image.visibility, Visibility::Public | Visibility::Community)
                    || (image.visibility == Visibility::Shared
                        && self.member_of(image.id, p).is_some())
            }
        }
    }

    fn in_scope(&self, query: &ImageListQuery, image: &Image) -> bool {
        let owned_by = |p: &str| image.owner.as_deref() == Some(p);
        let scoped = match &query.scope {
            ListScope::All => true,
            ListScope::Project(p) => {
                owned_by(p)
                    || matches!(image.visibility, Visibility::Public | Visibility::Community)
                    || (image.visibility == Visibility::Shared
                        && self
                            .member_of(image.id, p)
                            .is_some_and(|m| member_status_matches(query.member_status, m.status)))
            }
        };
        let visibility = match (query.visibility, &query.scope) {
            (None, ListScope::All) => image.visibility != Visibility::Community,
            (None, ListScope::Project(p)) => {
                owned_by(p) || image.visibility != Visibility::Community
            }
            (Some(VisibilityFilter::All), _) => true,
            (Some(VisibilityFilter::Only(v)), _) => image.visibility == v,
        };
        scoped && visibility
    }

    fn listable(&self, query: &ImageListQuery, image: &Image) -> bool {
        if is_deleted(image) || image.status == ImageStatus::Killed || !self.in_scope(query, image)
        {
            return false;
        }
        let matches = query
            .matches
            .iter()
            .all(|(field, values)| match_value(*field, image).is_some_and(|v| values.contains(&v)));
        let times = query.times.iter().all(|(field, op, t)| {
            let value = match field {
                TimeField::CreatedAt => image.created_at,
                TimeField::UpdatedAt => image.updated_at,
            };
            op.holds(to_micros(value), to_micros(*t))
        });
        matches
            && times
            && query.protected.is_none_or(|p| image.protected == p)
            && query.os_hidden.is_none_or(|h| image.os_hidden == h)
            && query
                .size_min
                .is_none_or(|min| image.size().is_some_and(|s| s >= min))
            && query
                .size_max
                .is_none_or(|max| image.size().is_some_and(|s| s <= max))
            && query.tags.iter().all(|t| image.tags.contains(t))
            && query
                .properties
                .iter()
                .all(|(k, v)| image.properties.get(k) == Some(v))
    }
}

fn image_label(id: uuid::Uuid) -> String {
    format!("image {id}")
}

fn member_label(image_id: uuid::Uuid, member_id: &str) -> String {
    format!("member {member_id} of image {image_id}")
}

#[async_trait]
impl MetaStore for MemoryStore {
    async fn create_image(&self, image: &Image) -> MetaResult<()> {
        let mut st = self.state();
        if st.images.contains_key(&image.id) {
            return Err(MetaError::AlreadyExists(image_label(image.id)));
        }
        st.images.insert(image.id, normalized_image(image));
        Ok(())
    }

    async fn get_image(&self, id: uuid::Uuid) -> MetaResult<Option<Image>> {
        Ok(self.state().images.get(&id).cloned())
    }

    async fn update_image(&self, image: &Image) -> MetaResult<Image> {
        let mut st = self.state();
        let stored = st
            .images
            .get_mut(&image.id)
            .ok_or_else(|| MetaError::NotFound(image_label(image.id)))?;
        if stored.revision != image.revision {
            return Err(MetaError::Conflict(image_label(image.id)));
        }
        let mut updated = normalized_image(image);
        updated.revision = image.revision + 1;
        *stored = updated.clone();
        Ok(updated)
    }

    async fn list_images(&self, query: &ImageListQuery) -> MetaResult<Vec<Image>> {
        let st = self.state();
        let sort = query.full_sort();
        let marker = match query.marker {
            None => None,
            Some(id) => Some(
                st.images
                    .get(&id)
                    .filter(|m| st.marker_visible(&query.scope, m))
                    .ok_or(MetaError::MarkerNotFound(id))?,
            ),
        };
        let mut page: Vec<&Image> = st
            .images
            .values()
            .filter(|img| st.listable(query, img))
            .filter(|img| marker.is_none_or(|m| cmp_images(&sort, img, m) == Ordering::Greater))
            .collect();
        page.sort_by(|a, b| cmp_images(&sort, a, b));
        page.truncate(query.limit);
        Ok(page.into_iter().cloned().collect())
    }

    async fn project_usage(&self, owner: &str) -> MetaResult<ProjectUsage> {
        let st = self.state();
        let mut usage = ProjectUsage::default();
        for image in st.images.values().filter(|i| {
            i.owner.as_deref() == Some(owner) && !is_deleted(i) && i.status != ImageStatus::Killed
        }) {
            usage.image_count_total += 1;
            if let Some(data) = &image.data {
                usage.image_size_total += data.size * data.stores.len() as i64;
            }
            let in_flight = matches!(
                image.status,
                ImageStatus::Saving | ImageStatus::Uploading | ImageStatus::Importing
            );
            let copying = image
                .properties
                .get(IMPORTING_TO_STORES_PROPERTY)
                .is_some_and(|v| !v.is_empty());
            if in_flight || copying {
                usage.image_count_uploading += 1;
            }
            if matches!(
                image.status,
                ImageStatus::Uploading | ImageStatus::Importing
            ) {
                usage.staged_images.push(image.id);
            } else if copying {
                usage.copying_size += image.size().unwrap_or(0);
            }
        }
        Ok(usage)
    }

    async fn set_project_limit(
        &self,
        project_id: &str,
        resource: QuotaResource,
        limit: Option<Limit>,
    ) -> MetaResult<()> {
        let mut st = self.state();
        let key = (project_id.to_owned(), resource);
        match limit {
            Some(limit) => {
                st.project_limits.insert(key, limit);
            }
            None => {
                st.project_limits.remove(&key);
            }
        }
        Ok(())
    }

    async fn project_limits(&self, project_id: &str) -> MetaResult<Vec<(QuotaResource, Limit)>> {
        let st = self.state();
        Ok(QuotaResource::ALL
            .into_iter()
            .filter_map(|r| {
                st.project_limits
                    .get(&(project_id.to_owned(), r))
                    .map(|l| (r, *l))
            })
            .collect())
    }

    async fn referenced_blob_keys(&self) -> MetaResult<Vec<String>> {
        let st = self.state();
        let keys: BTreeSet<String> = st
            .images
            .values()
            .filter_map(|i| i.data.as_ref().map(|d| d.blob_key.clone()))
            .collect();
        Ok(keys.into_iter().collect())
    }

    async fn blob_reference_count(&self, blob_key: &str, store: &str) -> MetaResult<u64> {
        let st = self.state();
        let count = st
            .images
            .values()
            .filter(|i| {
                i.data
                    .as_ref()
                    .is_some_and(|d| d.blob_key == blob_key && d.in_store(store))
            })
            .count();
        Ok(count as u64)
    }

    async fn referenced_blob_keys_in(&self, store: &str) -> MetaResult<Vec<String>> {
        let st = self.state();
        let keys: BTreeSet<String> = st
            .images
            .values()
            .filter_map(|i| i.data.as_ref())
            .filter(|d| d.in_store(store))
            .map(|d| d.blob_key.clone())
            .collect();
        Ok(keys.into_iter().collect())
    }

    async fn add_member(&self, member: &Member) -> MetaResult<()> {
        let mut st = self.state();
        if !st.images.contains_key(&member.image_id) {
            return Err(MetaError::NotFound(image_label(member.image_id)));
        }
        let key = (member.image_id, member.member_id.clone());
        if st.members.contains_key(&key) {
            return Err(MetaError::AlreadyExists(member_label(
                member.image_id,
                &member.member_id,
            )));
        }
        st.members.insert(key, normalized_member(member));
        Ok(())
    }

    async fn get_member(
        &self,
        image_id: uuid::Uuid,
        member_id: &str,
    ) -> MetaResult<Option<Member>> {
        Ok(self.state().member_of(image_id, member_id).cloned())
    }

    async fn list_members(&self, image_id: uuid::Uuid) -> MetaResult<Vec<Member>> {
        let st = self.state();
        let mut members: Vec<Member> = st
            .members
            .values()
            .filter(|m| m.image_id == image_id)
            .cloned()
            .collect();
        members.sort_by(|a, b| (a.created_at, &a.member_id).cmp(&(b.created_at, &b.member_id)));
        Ok(members)
    }

    async fn update_member(&self, member: &Member) -> MetaResult<()> {
        let mut st = self.state();
        let stored = st
            .members
            .get_mut(&(member.image_id, member.member_id.clone()))
            .ok_or_else(|| MetaError::NotFound(member_label(member.image_id, &member.member_id)))?;
        stored.status = member.status;
        stored.updated_at = truncate(member.updated_at);
        Ok(())
    }

    async fn delete_member(&self, image_id: uuid::Uuid, member_id: &str) -> MetaResult<()> {
        let mut st = self.state();
        match st.members.remove(&(image_id, member_id.to_owned())) {
            Some(_) => Ok(()),
            None => Err(MetaError::NotFound(member_label(image_id, member_id))),
        }
    }

    async fn create_project(&self, project: &Project) -> MetaResult<()> {
        let mut st = self.state();
        let duplicate = st.projects.contains_key(&project.id)
            || st
                .projects
                .values()
                .any(|p| p.domain_id == project.domain_id && p.name == project.name);
        if duplicate {
            return Err(MetaError::AlreadyExists(format!(
                "project {}",
                project.name
            )));
        }
        st.projects.insert(project.id.clone(), project.clone());
        Ok(())
    }

    async fn get_project(&self, id: &str) -> MetaResult<Option<Project>> {
        Ok(self.state().projects.get(id).cloned())
    }

    async fn find_project(&self, domain_id: &str, name: &str) -> MetaResult<Option<Project>> {
        let st = self.state();
        Ok(st
            .projects
            .values()
            .find(|p| p.domain_id == domain_id && p.name == name)
            .cloned())
    }

    async fn list_projects(&self) -> MetaResult<Vec<Project>> {
        let mut projects: Vec<Project> = self.state().projects.values().cloned().collect();
        projects.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        Ok(projects)
    }

    async fn create_user(&self, user: &User) -> MetaResult<()> {
        let mut st = self.state();
        let duplicate = st.users.contains_key(&user.id)
            || st
                .users
                .values()
                .any(|u| u.domain_id == user.domain_id && u.name == user.name);
        if duplicate {
            return Err(MetaError::AlreadyExists(format!("user {}", user.name)));
        }
        st.users.insert(user.id.clone(), user.clone());
        Ok(())
    }

    async fn get_user(&self, id: &str) -> MetaResult<Option<User>> {
        Ok(self.state().users.get(id).cloned())
    }

    async fn find_user(&self, domain_id: &str, name: &str) -> MetaResult<Option<User>> {
        let st = self.state();
        Ok(st
            .users
            .values()
            .find(|u| u.domain_id == domain_id && u.name == name)
            .cloned())
    }

    async fn list_users(&self) -> MetaResult<Vec<User>> {
        let mut users: Vec<User> = self.state().users.values().cloned().collect();
        users.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        Ok(users)
    }

    async fn set_user_password(&self, user_id: &str, password_hash: &str) -> MetaResult<()> {
        let mut st = self.state();
        let user = st
            .users
            .get_mut(user_id)
            .ok_or_else(|| MetaError::NotFound(format!("user {user_id}")))?;
        user.password_hash = password_hash.to_owned();
        Ok(())
    }

    async fn assign_role(&self, user_id: &str, project_id: &str, role: Role) -> MetaResult<()> {
        self.state()
            .role_assignments
            .insert((user_id.to_owned(), project_id.to_owned(), role));
        Ok(())
    }

    async fn unassign_role(&self, user_id: &str, project_id: &str, role: Role) -> MetaResult<()> {
        self.state()
            .role_assignments
            .remove(&(user_id.to_owned(), project_id.to_owned(), role));
        Ok(())
    }

    async fn assigned_roles(&self, user_id: &str, project_id: &str) -> MetaResult<Vec<Role>> {
        let st = self.state();
        Ok(st
            .role_assignments
            .iter()
            .filter(|(u, p, _)| u == user_id && p == project_id)
            .map(|(_, _, r)| *r)
            .collect())
    }

    async fn list_role_assignments(&self) -> MetaResult<Vec<(String, String, Role)>> {
        Ok(self.state().role_assignments.iter().cloned().collect())
    }

    async fn get_or_init_secret(&self, name: &str, value: &[u8]) -> MetaResult<Vec<u8>> {
        let mut st = self.state();
        Ok(st
            .secrets
            .entry(name.to_owned())
            .or_insert_with(|| value.to_vec())
            .clone())
    }

    async fn revoke_token(&self, audit_id: &str, expires_at: i64) -> MetaResult<()> {
        let mut st = self.state();
        let now = unix_now();
        // Expired tokens are rejected anyway; forgetting them keeps the table small.
        st.revoked_tokens.retain(|_, exp| *exp >= now);
        st.revoked_tokens.insert(audit_id.to_owned(), expires_at);
        Ok(())
    }

    async fn is_token_revoked(&self, audit_id: &str) -> MetaResult<bool> {
        Ok(self.state().revoked_tokens.contains_key(audit_id))
    }
}
