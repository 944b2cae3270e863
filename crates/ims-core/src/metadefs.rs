//! `MetadefService`: Glance's metadata definitions catalog (namespaces with their properties,
//! objects, tags and resource-type associations), with Glance's default policy: reads for
//! admins, readers of the owning project and anyone on public namespaces; writes for admins.
//!
//! A namespace's contents live in one JSON document on its record ([`Contents`]); every change
//! is a read-modify-write retried when a concurrent writer wins the optimistic revision check.

use std::collections::BTreeMap;
use std::sync::Arc;

use ims_domain::{Caller, ErrorKind, SortDir};
use ims_meta::MetaError;
use ims_meta::metadefs::{MetadefStore, NamespaceRecord, ResourceTypeRecord};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

pub use ims_meta::metadefs::NamespaceVisibility;

use crate::error::{ServiceError, ServiceResult};

/// How often a write re-reads and re-applies itself after losing a revision race.
const MAX_UPDATE_ATTEMPTS: usize = 8;
/// Glance's `limit_param_default` and `api_limit_max`.
pub const DEFAULT_LIST_LIMIT: usize = 25;
pub const MAX_LIST_LIMIT: usize = 1000;
/// Glance's schema limits.
const MAX_NAMESPACE_LEN: usize = 80;
const MAX_DISPLAY_NAME_LEN: usize = 80;
const MAX_DESCRIPTION_LEN: usize = 500;
const MAX_OWNER_LEN: usize = 255;
const MAX_PROPERTY_NAME_LEN: usize = 80;
const MAX_TAG_LEN: usize = 255;

/// The keys of a property definition Glance keeps (its `PropertyType` model); others are dropped.
const PROPERTY_KEYS: &[&str] = &[
    "title",
    "type",
    "description",
    "operators",
    "default",
    "readonly",
    "minimum",
    "maximum",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "confidential",
    "items",
    "uniqueItems",
    "minItems",
    "maxItems",
    "additionalItems",
];
const PROPERTY_TYPES: &[&str] = &["array", "boolean", "integer", "number", "object", "string"];

/// Resource types Glance ships; seeded as protected system types.
pub const STANDARD_RESOURCE_TYPES: [&str; 6] = [
    "OS::Glance::Image",
    "OS::Cinder::Volume",
    "OS::Nova::Flavor",
    "OS::Nova::Aggregate",
    "OS::Nova::Server",
    "OS::Trove::Instance",
];
/// Names the built-in seed set in the store, so it loads once per database.
const SEED_NAME: &str = "ims-standard-metadefs-v1";

/// Timestamps inside the contents document: microseconds since the epoch.
mod micros {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(ims_domain::to_micros(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        i64::deserialize(d).map(ims_domain::from_micros)
    }
}

/// A property definition: a JSON-Schema fragment (`title`, `type`, `enum`, …), without its name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PropertyDef(pub Map<String, Value>);

impl PropertyDef {
    /// Validates a definition as Glance's schema does (`title` and `type` required) and keeps
    /// only the keys Glance keeps.
    pub fn from_json(name: &str, json: &Map<String, Value>) -> ServiceResult<PropertyDef> {
        if name.is_empty() || name.chars().count() > MAX_PROPERTY_NAME_LEN {
            return Err(ServiceError::invalid(format!(
                "Property name must be 1 to {MAX_PROPERTY_NAME_LEN} characters: {name:?}"
            )));
        }
        if !json.get("title").is_some_and(Value::is_string) {
            return Err(ServiceError::invalid(format!(
                "'title' is a required property of property {name}"
            )));
        }
        match json.get("type") {
            Some(Value::String(t)) if PROPERTY_TYPES.contains(&t.as_str()) => {}
            Some(Value::Null) => {}
            Some(other) => {
                return Err(ServiceError::invalid(format!(
                    "{other} is not one of {PROPERTY_TYPES:?} (property {name})"
                )));
            }
            None => {
                return Err(ServiceError::invalid(format!(
                    "'type' is a required property of property {name}"
                )));
            }
        }
        let kept = json
            .iter()
            .filter(|(k, _)| PROPERTY_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(PropertyDef(kept))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetadefObject {
    pub name: String,
    pub description: Option<String>,
    #[serde(default)]
    pub required: Vec<String>,
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyDef>,
    #[serde(with = "micros")]
    pub created_at: OffsetDateTime,
    #[serde(with = "micros")]
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetadefTag {
    pub name: String,
    #[serde(with = "micros")]
    pub created_at: OffsetDateTime,
    #[serde(with = "micros")]
    pub updated_at: OffsetDateTime,
}

/// A namespace applying to a resource type, optionally with a prefix for its property names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Association {
    pub name: String,
    pub prefix: Option<String>,
    pub properties_target: Option<String>,
    #[serde(with = "micros")]
    pub created_at: OffsetDateTime,
    #[serde(with = "micros")]
    pub updated_at: OffsetDateTime,
}

/// Everything inside a namespace; stored as one JSON document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Contents {
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyDef>,
    #[serde(default)]
    pub objects: Vec<MetadefObject>,
    #[serde(default)]
    pub tags: Vec<MetadefTag>,
    #[serde(default)]
    pub resource_type_associations: Vec<Association>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Namespace {
    pub namespace: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub visibility: NamespaceVisibility,
    pub protected: bool,
    pub owner: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub contents: Contents,
    id: uuid::Uuid,
    revision: i64,
}

impl Namespace {
    fn from_record(record: NamespaceRecord) -> ServiceResult<Namespace> {
        let contents = serde_json::from_str(&record.contents)
            .map_err(|e| ServiceError::internal("parsing metadef namespace contents", &e))?;
        Ok(Namespace {
            namespace: record.namespace,
            display_name: record.display_name,
            description: record.description,
            visibility: record.visibility,
            protected: record.protected,
            owner: record.owner,
            created_at: record.created_at,
            updated_at: record.updated_at,
            contents,
            id: record.id,
            revision: record.revision,
        })
    }

    fn to_record(&self) -> ServiceResult<NamespaceRecord> {
        let contents = serde_json::to_string(&self.contents)
            .map_err(|e| ServiceError::internal("serialising metadef namespace contents", &e))?;
        Ok(NamespaceRecord {
            id: self.id,
            namespace: self.namespace.clone(),
            display_name: self.display_name.clone(),
            description: self.description.clone(),
            visibility: self.visibility,
            protected: self.protected,
            owner: self.owner.clone(),
            contents,
            created_at: self.created_at,
            updated_at: self.updated_at,
            revision: self.revision,
        })
    }

    fn protected_error(&self, what: &str) -> ServiceError {
        ServiceError::forbidden(format!(
            "Metadata definition namespace {} is protected and its {what} cannot be deleted.",
            self.namespace
        ))
    }

    fn require_unprotected(&self, what: &str) -> ServiceResult<()> {
        if self.protected {
            return Err(self.protected_error(what));
        }
        Ok(())
    }
}

/// An association as a client asks for it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewAssociation {
    pub name: String,
    pub prefix: Option<String>,
    pub properties_target: Option<String>,
}

/// An object as a client writes it (create, or the whole of an update).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewObject {
    pub name: String,
    pub description: Option<String>,
    pub required: Vec<String>,
    pub properties: BTreeMap<String, PropertyDef>,
}

/// `POST /v2/metadefs/namespaces`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewNamespace {
    pub namespace: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    /// Default `private`.
    pub visibility: Option<NamespaceVisibility>,
    pub protected: Option<bool>,
    /// Default: the caller's project.
    pub owner: Option<String>,
    pub associations: Vec<NewAssociation>,
    pub properties: BTreeMap<String, PropertyDef>,
    pub objects: Vec<NewObject>,
    pub tags: Vec<String>,
}

/// `PUT /v2/metadefs/namespaces/{ns}`: replaces every field; absent optional ones take the
/// create defaults, as in Glance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NamespaceUpdate {
    pub namespace: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub visibility: Option<NamespaceVisibility>,
    pub protected: Option<bool>,
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NamespaceSortKey {
    #[default]
    CreatedAt,
    UpdatedAt,
    Namespace,
    DisplayName,
}

impl NamespaceSortKey {
    pub fn parse(s: &str) -> Option<NamespaceSortKey> {
        match s {
            "created_at" => Some(NamespaceSortKey::CreatedAt),
            "updated_at" => Some(NamespaceSortKey::UpdatedAt),
            "namespace" => Some(NamespaceSortKey::Namespace),
            "display_name" => Some(NamespaceSortKey::DisplayName),
            _ => None,
        }
    }
}

/// `GET /v2/metadefs/namespaces` filters and paging.
#[derive(Debug, Clone, PartialEq)]
pub struct NamespaceQuery {
    pub visibility: Option<NamespaceVisibility>,
    /// Namespaces associated with any of these.
    pub resource_types: Vec<String>,
    /// Name of the last namespace of the previous page.
    pub marker: Option<String>,
    pub limit: usize,
    pub sort_key: NamespaceSortKey,
    pub sort_dir: SortDir,
}

impl Default for NamespaceQuery {
    fn default() -> Self {
        NamespaceQuery {
            visibility: None,
            resource_types: Vec::new(),
            marker: None,
            limit: DEFAULT_LIST_LIMIT,
            sort_key: NamespaceSortKey::CreatedAt,
            sort_dir: SortDir::Desc,
        }
    }
}

/// One page of namespaces; `next_marker` is set when the page is full.
#[derive(Debug, Clone, PartialEq)]
pub struct NamespacePage {
    pub namespaces: Vec<Namespace>,
    pub next_marker: Option<String>,
}

fn not_found(name: &str) -> ServiceError {
    ServiceError::not_found(format!("Namespace {name} not found"))
}

fn forbidden(action: &str) -> ServiceError {
    ServiceError::forbidden(format!(
        "You are not authorized to complete {action} action."
    ))
}

fn duplicate(what: &str, name: &str, namespace: &str) -> ServiceError {
    ServiceError::new(
        ErrorKind::Conflict,
        format!(
            "A metadata definition {what} with name={name} already exists in namespace={namespace}."
        ),
    )
}

fn check_len(field: &str, value: Option<&str>, max: usize) -> ServiceResult<()> {
    match value {
        Some(v) if v.chars().count() > max => Err(ServiceError::invalid(format!(
            "'{field}' is too long (at most {max} characters)"
        ))),
        _ => Ok(()),
    }
}

fn check_namespace_name(name: &str) -> ServiceResult<()> {
    if name.is_empty() {
        return Err(ServiceError::invalid("'namespace' must not be empty"));
    }
    check_len("namespace", Some(name), MAX_NAMESPACE_LEN)
}

fn check_tag_name(name: &str) -> ServiceResult<()> {
    if name.is_empty() {
        return Err(ServiceError::invalid("Tag name must not be empty"));
    }
    check_len("name", Some(name), MAX_TAG_LEN)
}

/// `get_metadef_namespace` (and every read below a namespace): admin, or a reader of the
/// owning project, or a reader when the namespace is public (or has no owner).
pub fn can_read(caller: &Caller, ns: &Namespace) -> bool {
    caller.is_admin()
        || (caller.is_reader()
            && (ns.visibility == NamespaceVisibility::Public
                || ns.owner.is_none()
                || ns.owner.as_deref() == Some(caller.project_id.as_str())))
}

/// Every metadef write is `metadef_admin`.
fn require_admin(caller: &Caller, action: &str) -> ServiceResult<()> {
    if caller.is_admin() {
        Ok(())
    } else {
        Err(forbidden(action))
    }
}

fn require_reader(caller: &Caller, action: &str) -> ServiceResult<()> {
    if caller.is_admin() || caller.is_reader() {
        Ok(())
    } else {
        Err(forbidden(action))
    }
}

fn new_object(input: NewObject, now: OffsetDateTime) -> MetadefObject {
    MetadefObject {
        name: input.name,
        description: input.description,
        required: input.required,
        properties: input.properties,
        created_at: now,
        updated_at: now,
    }
}

fn new_association(input: NewAssociation, now: OffsetDateTime) -> Association {
    Association {
        name: input.name,
        prefix: input.prefix,
        properties_target: input.properties_target,
        created_at: now,
        updated_at: now,
    }
}

fn new_tag(name: String, now: OffsetDateTime) -> MetadefTag {
    MetadefTag {
        name,
        created_at: now,
        updated_at: now,
    }
}

fn sort_namespaces(list: &mut [Namespace], key: NamespaceSortKey, dir: SortDir) {
    list.sort_by(|a, b| {
        let primary = match key {
            NamespaceSortKey::CreatedAt => std::cmp::Ordering::Equal,
            NamespaceSortKey::UpdatedAt => a.updated_at.cmp(&b.updated_at),
            NamespaceSortKey::Namespace => a.namespace.cmp(&b.namespace),
            NamespaceSortKey::DisplayName => a.display_name.cmp(&b.display_name),
        };
        let order = primary
            .then(a.created_at.cmp(&b.created_at))
            .then(a.id.cmp(&b.id));
        match dir {
            SortDir::Asc => order,
            SortDir::Desc => order.reverse(),
        }
    });
}

/// Newest first, like Glance's default `created_at desc`; ties keep the reverse of insertion.
fn newest_first<T>(items: &[T], created: impl Fn(&T) -> OffsetDateTime) -> Vec<&T> {
    let mut indexed: Vec<(usize, &T)> = items.iter().enumerate().collect();
    indexed.sort_by(|(ia, a), (ib, b)| (created(b), ib).cmp(&(created(a), ia)));
    indexed.into_iter().map(|(_, t)| t).collect()
}

pub struct MetadefService {
    store: Arc<dyn MetadefStore>,
}

impl MetadefService {
    pub fn new(store: Arc<dyn MetadefStore>) -> MetadefService {
        MetadefService { store }
    }

    /// Loads the standard resource types and the built-in namespaces, once per database: a
    /// seeded namespace an admin deleted stays deleted.
    pub async fn seed(&self) -> ServiceResult<()> {
        if self.store.seed_applied(SEED_NAME).await? {
            return Ok(());
        }
        let now = ims_domain::now();
        for name in STANDARD_RESOURCE_TYPES {
            self.store
                .add_resource_type(&ResourceTypeRecord {
                    name: name.into(),
                    protected: true,
                    created_at: now,
                    updated_at: now,
                })
                .await?;
        }
        for new in seed::namespaces() {
            let ns = self.build_namespace(new, None, now)?;
            match self.store.create_namespace(&ns.to_record()?).await {
                Ok(()) | Err(MetaError::AlreadyExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.store.record_seed(SEED_NAME).await?;
        Ok(())
    }

    async fn find(&self, name: &str) -> ServiceResult<Option<Namespace>> {
        self.store
            .get_namespace(name)
            .await?
            .map(Namespace::from_record)
            .transpose()
    }

    /// The namespace if the caller may read it, else `NotFound` (no existence leak).
    async fn load_visible(&self, caller: &Caller, name: &str) -> ServiceResult<Namespace> {
        match self.find(name).await? {
            Some(ns) if can_read(caller, &ns) => Ok(ns),
            _ => Err(not_found(name)),
        }
    }

    /// Read-modify-write of one namespace by an admin, retried on lost revision races.
    async fn modify<T>(
        &self,
        caller: &Caller,
        name: &str,
        action: &str,
        mut apply: impl FnMut(&mut Namespace, OffsetDateTime) -> ServiceResult<T>,
    ) -> ServiceResult<(Namespace, T)> {
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            let mut ns = self.load_visible(caller, name).await?;
            require_admin(caller, action)?;
            let out = apply(&mut ns, ims_domain::now())?;
            match self.store.update_namespace(&ns.to_record()?).await {
                Ok(stored) => return Ok((Namespace::from_record(stored)?, out)),
                Err(MetaError::Conflict(_)) => continue,
                Err(MetaError::AlreadyExists(_)) => {
                    return Err(ServiceError::conflict(format!(
                        "Invalid update. It would result in a duplicate metadata definition \
                         namespace with the same name of {}",
                        ns.namespace
                    )));
                }
                Err(MetaError::NotFound(_)) => return Err(not_found(name)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::conflict(format!(
            "Metadata definition namespace {name} is being changed concurrently; retry."
        )))
    }

    async fn ensure_resource_type(&self, name: &str, now: OffsetDateTime) -> ServiceResult<()> {
        self.store
            .add_resource_type(&ResourceTypeRecord {
                name: name.into(),
                protected: false,
                created_at: now,
                updated_at: now,
            })
            .await?;
        Ok(())
    }

    fn build_namespace(
        &self,
        new: NewNamespace,
        default_owner: Option<&str>,
        now: OffsetDateTime,
    ) -> ServiceResult<Namespace> {
        check_namespace_name(&new.namespace)?;
        check_len(
            "display_name",
            new.display_name.as_deref(),
            MAX_DISPLAY_NAME_LEN,
        )?;
        check_len(
            "description",
            new.description.as_deref(),
            MAX_DESCRIPTION_LEN,
        )?;
        check_len("owner", new.owner.as_deref(), MAX_OWNER_LEN)?;
        let mut contents = Contents {
            properties: new.properties,
            ..Contents::default()
        };
        for a in new.associations {
            if contents
                .resource_type_associations
                .iter()
                .any(|x| x.name == a.name)
            {
                return Err(duplicate(
                    "resource-type association",
                    &a.name,
                    &new.namespace,
                ));
            }
            contents
                .resource_type_associations
                .push(new_association(a, now));
        }
        for o in new.objects {
            if contents.objects.iter().any(|x| x.name == o.name) {
                return Err(duplicate("object", &o.name, &new.namespace));
            }
            contents.objects.push(new_object(o, now));
        }
        for t in new.tags {
            check_tag_name(&t)?;
            if contents.tags.iter().any(|x| x.name == t) {
                return Err(duplicate("tag", &t, &new.namespace));
            }
            contents.tags.push(new_tag(t, now));
        }
        Ok(Namespace {
            namespace: new.namespace,
            display_name: new.display_name,
            description: new.description,
            visibility: new.visibility.unwrap_or(NamespaceVisibility::Private),
            protected: new.protected.unwrap_or(false),
            owner: new.owner.or(default_owner.map(str::to_owned)),
            created_at: now,
            updated_at: now,
            contents,
            id: uuid::Uuid::new_v4(),
            revision: 0,
        })
    }

    // Namespaces.

    pub async fn list_namespaces(
        &self,
        caller: &Caller,
        query: &NamespaceQuery,
    ) -> ServiceResult<NamespacePage> {
        require_reader(caller, "get_metadef_namespaces")?;
        let mut all = Vec::new();
        for record in self.store.list_namespaces().await? {
            let ns = Namespace::from_record(record)?;
            if !can_read(caller, &ns) {
                continue;
            }
            if query.visibility.is_some_and(|v| v != ns.visibility) {
                continue;
            }
            let associated = |rt: &String| {
                ns.contents
                    .resource_type_associations
                    .iter()
                    .any(|a| &a.name == rt)
            };
            if !query.resource_types.is_empty() && !query.resource_types.iter().any(associated) {
                continue;
            }
            all.push(ns);
        }
        sort_namespaces(&mut all, query.sort_key, query.sort_dir);
        let start = match &query.marker {
            None => 0,
            Some(marker) => {
                let marker_ns = self.find(marker).await?.ok_or_else(|| not_found(marker))?;
                if !can_read(caller, &marker_ns) {
                    return Err(ServiceError::forbidden(format!(
                        "Forbidding request, metadata definition namespace={marker} is not visible."
                    )));
                }
                all.iter()
                    .position(|n| &n.namespace == marker)
                    .map_or(all.len(), |i| i + 1)
            }
        };
        let namespaces: Vec<Namespace> = all.into_iter().skip(start).take(query.limit).collect();
        let next_marker = (!namespaces.is_empty() && namespaces.len() == query.limit)
            .then(|| namespaces.last().map(|n| n.namespace.clone()))
            .flatten();
        Ok(NamespacePage {
            namespaces,
            next_marker,
        })
    }

    pub async fn create_namespace(
        &self,
        caller: &Caller,
        new: NewNamespace,
    ) -> ServiceResult<Namespace> {
        require_admin(caller, "add_metadef_namespace")?;
        let now = ims_domain::now();
        let associations: Vec<String> = new.associations.iter().map(|a| a.name.clone()).collect();
        let ns = self.build_namespace(new, Some(&caller.project_id), now)?;
        match self.store.create_namespace(&ns.to_record()?).await {
            Ok(()) => {}
            Err(MetaError::AlreadyExists(_)) => {
                return Err(ServiceError::conflict(format!(
                    "Metadata definition namespace={} already exists.",
                    ns.namespace
                )));
            }
            Err(e) => return Err(e.into()),
        }
        for rt in associations {
            self.ensure_resource_type(&rt, now).await?;
        }
        Ok(ns)
    }

    pub async fn get_namespace(&self, caller: &Caller, name: &str) -> ServiceResult<Namespace> {
        self.load_visible(caller, name).await
    }

    pub async fn update_namespace(
        &self,
        caller: &Caller,
        name: &str,
        update: NamespaceUpdate,
    ) -> ServiceResult<Namespace> {
        check_namespace_name(&update.namespace)?;
        check_len(
            "display_name",
            update.display_name.as_deref(),
            MAX_DISPLAY_NAME_LEN,
        )?;
        check_len(
            "description",
            update.description.as_deref(),
            MAX_DESCRIPTION_LEN,
        )?;
        check_len("owner", update.owner.as_deref(), MAX_OWNER_LEN)?;
        let (ns, ()) = self
            .modify(caller, name, "modify_metadef_namespace", |ns, now| {
                ns.namespace = update.namespace.clone();
                ns.display_name = update.display_name.clone();
                ns.description = update.description.clone();
                ns.visibility = update.visibility.unwrap_or(NamespaceVisibility::Private);
                ns.protected = update.protected.unwrap_or(false);
                ns.owner = Some(
                    update
                        .owner
                        .clone()
                        .unwrap_or_else(|| caller.project_id.clone()),
                );
                ns.updated_at = now;
                Ok(())
            })
            .await?;
        Ok(ns)
    }

    pub async fn delete_namespace(&self, caller: &Caller, name: &str) -> ServiceResult<()> {
        let ns = self.load_visible(caller, name).await?;
        require_admin(caller, "delete_metadef_namespace")?;
        if ns.protected {
            return Err(ServiceError::forbidden(format!(
                "Metadata definition namespace {name} is protected and cannot be deleted."
            )));
        }
        match self.store.delete_namespace(name).await {
            Ok(()) => Ok(()),
            Err(MetaError::NotFound(_)) => Err(not_found(name)),
            Err(e) => Err(e.into()),
        }
    }

    // Properties.

    pub async fn list_properties(
        &self,
        caller: &Caller,
        ns: &str,
    ) -> ServiceResult<BTreeMap<String, PropertyDef>> {
        Ok(self.load_visible(caller, ns).await?.contents.properties)
    }

    pub async fn get_property(
        &self,
        caller: &Caller,
        ns: &str,
        name: &str,
    ) -> ServiceResult<PropertyDef> {
        let namespace = self.load_visible(caller, ns).await?;
        namespace
            .contents
            .properties
            .get(name)
            .cloned()
            .ok_or_else(|| property_not_found(name, ns))
    }

    pub async fn create_property(
        &self,
        caller: &Caller,
        ns: &str,
        name: &str,
        def: PropertyDef,
    ) -> ServiceResult<PropertyDef> {
        self.modify(caller, ns, "add_metadef_property", |n, _| {
            if n.contents.properties.contains_key(name) {
                return Err(duplicate("property", name, ns));
            }
            n.contents.properties.insert(name.into(), def.clone());
            Ok(())
        })
        .await?;
        Ok(def)
    }

    /// Replaces a property's definition, renaming it to `new_name`.
    pub async fn update_property(
        &self,
        caller: &Caller,
        ns: &str,
        name: &str,
        new_name: &str,
        def: PropertyDef,
    ) -> ServiceResult<PropertyDef> {
        self.modify(caller, ns, "modify_metadef_property", |n, _| {
            if !n.contents.properties.contains_key(name) {
                return Err(property_not_found(name, ns));
            }
            if new_name != name && n.contents.properties.contains_key(new_name) {
                return Err(duplicate("property", new_name, ns));
            }
            n.contents.properties.remove(name);
            n.contents.properties.insert(new_name.into(), def.clone());
            Ok(())
        })
        .await?;
        Ok(def)
    }

    pub async fn delete_property(
        &self,
        caller: &Caller,
        ns: &str,
        name: &str,
    ) -> ServiceResult<()> {
        self.modify(caller, ns, "remove_metadef_property", |n, _| {
            n.require_unprotected("properties")?;
            n.contents
                .properties
                .remove(name)
                .map(|_| ())
                .ok_or_else(|| property_not_found(name, ns))
        })
        .await?;
        Ok(())
    }

    pub async fn delete_all_properties(&self, caller: &Caller, ns: &str) -> ServiceResult<()> {
        self.modify(caller, ns, "delete_metadef_namespace", |n, _| {
            n.require_unprotected("properties")?;
            n.contents.properties.clear();
            Ok(())
        })
        .await?;
        Ok(())
    }

    // Objects.

    /// Newest first.
    pub async fn list_objects(
        &self,
        caller: &Caller,
        ns: &str,
    ) -> ServiceResult<Vec<MetadefObject>> {
        let namespace = self.load_visible(caller, ns).await?;
        let objects = &namespace.contents.objects;
        Ok(newest_first(objects, |o| o.created_at)
            .into_iter()
            .cloned()
            .collect())
    }

    pub async fn get_object(
        &self,
        caller: &Caller,
        ns: &str,
        name: &str,
    ) -> ServiceResult<MetadefObject> {
        let namespace = self.load_visible(caller, ns).await?;
        namespace
            .contents
            .objects
            .into_iter()
            .find(|o| o.name == name)
            .ok_or_else(|| object_not_found(name, ns))
    }

    pub async fn create_object(
        &self,
        caller: &Caller,
        ns: &str,
        input: NewObject,
    ) -> ServiceResult<MetadefObject> {
        let (_, created) = self
            .modify(caller, ns, "add_metadef_object", |n, now| {
                if n.contents.objects.iter().any(|o| o.name == input.name) {
                    return Err(duplicate("object", &input.name, ns));
                }
                let object = new_object(input.clone(), now);
                n.contents.objects.push(object.clone());
                Ok(object)
            })
            .await?;
        Ok(created)
    }

    /// Replaces an object (renaming it to `input.name`).
    pub async fn update_object(
        &self,
        caller: &Caller,
        ns: &str,
        name: &str,
        input: NewObject,
    ) -> ServiceResult<MetadefObject> {
        let (_, updated) = self
            .modify(caller, ns, "modify_metadef_object", |n, now| {
                if input.name != name && n.contents.objects.iter().any(|o| o.name == input.name) {
                    return Err(duplicate("object", &input.name, ns));
                }
                let object = n
                    .contents
                    .objects
                    .iter_mut()
                    .find(|o| o.name == name)
                    .ok_or_else(|| object_not_found(name, ns))?;
                object.name = input.name.clone();
                object.description = input.description.clone();
                object.required = input.required.clone();
                object.properties = input.properties.clone();
                object.updated_at = now;
                Ok(object.clone())
            })
            .await?;
        Ok(updated)
    }

    pub async fn delete_object(&self, caller: &Caller, ns: &str, name: &str) -> ServiceResult<()> {
        self.modify(caller, ns, "delete_metadef_object", |n, _| {
            n.require_unprotected("objects")?;
            let before = n.contents.objects.len();
            n.contents.objects.retain(|o| o.name != name);
            if n.contents.objects.len() == before {
                return Err(object_not_found(name, ns));
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    pub async fn delete_all_objects(&self, caller: &Caller, ns: &str) -> ServiceResult<()> {
        self.modify(caller, ns, "delete_metadef_namespace", |n, _| {
            n.require_unprotected("objects")?;
            n.contents.objects.clear();
            Ok(())
        })
        .await?;
        Ok(())
    }

    // Tags.

    /// Newest first.
    pub async fn list_tags(&self, caller: &Caller, ns: &str) -> ServiceResult<Vec<MetadefTag>> {
        let namespace = self.load_visible(caller, ns).await?;
        let tags = &namespace.contents.tags;
        Ok(newest_first(tags, |t| t.created_at)
            .into_iter()
            .cloned()
            .collect())
    }

    pub async fn get_tag(
        &self,
        caller: &Caller,
        ns: &str,
        name: &str,
    ) -> ServiceResult<MetadefTag> {
        let namespace = self.load_visible(caller, ns).await?;
        namespace
            .contents
            .tags
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| tag_not_found(name, ns))
    }

    pub async fn create_tag(
        &self,
        caller: &Caller,
        ns: &str,
        name: &str,
    ) -> ServiceResult<MetadefTag> {
        check_tag_name(name)?;
        let (_, tag) = self
            .modify(caller, ns, "add_metadef_tag", |n, now| {
                if n.contents.tags.iter().any(|t| t.name == name) {
                    return Err(duplicate("tag", name, ns));
                }
                let tag = new_tag(name.into(), now);
                n.contents.tags.push(tag.clone());
                Ok(tag)
            })
            .await?;
        Ok(tag)
    }

    /// Creates `names` at once; without `append` they replace every existing tag (Glance's
    /// behaviour unless the client sends `X-Openstack-Append: true`).
    pub async fn create_tags(
        &self,
        caller: &Caller,
        ns: &str,
        names: Vec<String>,
        append: bool,
    ) -> ServiceResult<Vec<MetadefTag>> {
        for name in &names {
            check_tag_name(name)?;
        }
        let (_, created) = self
            .modify(caller, ns, "add_metadef_tags", |n, now| {
                if !append {
                    n.contents.tags.clear();
                }
                let mut created = Vec::new();
                for name in &names {
                    if n.contents.tags.iter().any(|t| &t.name == name) {
                        return Err(duplicate("tag", name, ns));
                    }
                    let tag = new_tag(name.clone(), now);
                    n.contents.tags.push(tag.clone());
                    created.push(tag);
                }
                Ok(created)
            })
            .await?;
        Ok(created)
    }

    pub async fn rename_tag(
        &self,
        caller: &Caller,
        ns: &str,
        name: &str,
        new_name: &str,
    ) -> ServiceResult<MetadefTag> {
        check_tag_name(new_name)?;
        let (_, tag) = self
            .modify(caller, ns, "modify_metadef_tag", |n, now| {
                if new_name != name && n.contents.tags.iter().any(|t| t.name == new_name) {
                    return Err(duplicate("tag", new_name, ns));
                }
                let tag = n
                    .contents
                    .tags
                    .iter_mut()
                    .find(|t| t.name == name)
                    .ok_or_else(|| tag_not_found(name, ns))?;
                tag.name = new_name.into();
                tag.updated_at = now;
                Ok(tag.clone())
            })
            .await?;
        Ok(tag)
    }

    pub async fn delete_tag(&self, caller: &Caller, ns: &str, name: &str) -> ServiceResult<()> {
        self.modify(caller, ns, "delete_metadef_tag", |n, _| {
            n.require_unprotected("tags")?;
            let before = n.contents.tags.len();
            n.contents.tags.retain(|t| t.name != name);
            if n.contents.tags.len() == before {
                return Err(tag_not_found(name, ns));
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    pub async fn delete_all_tags(&self, caller: &Caller, ns: &str) -> ServiceResult<()> {
        self.modify(caller, ns, "delete_metadef_tags", |n, _| {
            n.require_unprotected("tags")?;
            n.contents.tags.clear();
            Ok(())
        })
        .await?;
        Ok(())
    }

    // Resource types and associations.

    pub async fn list_resource_types(
        &self,
        caller: &Caller,
    ) -> ServiceResult<Vec<ResourceTypeRecord>> {
        require_reader(caller, "list_metadef_resource_types")?;
        Ok(self.store.list_resource_types().await?)
    }

    pub async fn list_associations(
        &self,
        caller: &Caller,
        ns: &str,
    ) -> ServiceResult<Vec<Association>> {
        Ok(self
            .load_visible(caller, ns)
            .await?
            .contents
            .resource_type_associations)
    }

    /// Associates the namespace with a resource type, creating the type if it is new (as
    /// Glance does).
    pub async fn associate(
        &self,
        caller: &Caller,
        ns: &str,
        input: NewAssociation,
    ) -> ServiceResult<Association> {
        if input.name.is_empty() {
            return Err(ServiceError::invalid(
                "Resource type name must not be empty",
            ));
        }
        let (_, association) = self
            .modify(
                caller,
                ns,
                "add_metadef_resource_type_association",
                |n, now| {
                    let associations = &mut n.contents.resource_type_associations;
                    if associations.iter().any(|a| a.name == input.name) {
                        return Err(ServiceError::conflict(format!(
                            "The metadata definition resource-type association of \
                         resource-type={} to namespace={ns}, already exists.",
                            input.name
                        )));
                    }
                    let association = new_association(input.clone(), now);
                    associations.push(association.clone());
                    Ok(association)
                },
            )
            .await?;
        self.ensure_resource_type(&association.name, association.created_at)
            .await?;
        Ok(association)
    }

    pub async fn dissociate(
        &self,
        caller: &Caller,
        ns: &str,
        resource_type: &str,
    ) -> ServiceResult<()> {
        self.modify(
            caller,
            ns,
            "remove_metadef_resource_type_association",
            |n, _| {
                n.require_unprotected("resource-type associations")?;
                let associations = &mut n.contents.resource_type_associations;
                let before = associations.len();
                associations.retain(|a| a.name != resource_type);
                if associations.len() == before {
                    return Err(ServiceError::not_found(format!(
                        "The metadata definition resource-type association of \
                         resource-type={resource_type} to namespace={ns}, was not found."
                    )));
                }
                Ok(())
            },
        )
        .await?;
        Ok(())
    }
}

fn property_not_found(name: &str, ns: &str) -> ServiceError {
    ServiceError::not_found(format!(
        "The metadata definition property with name={name} was not found in namespace={ns}."
    ))
}

fn object_not_found(name: &str, ns: &str) -> ServiceError {
    ServiceError::not_found(format!(
        "The metadata definition object with name={name} was not found in namespace={ns}."
    ))
}

fn tag_not_found(name: &str, ns: &str) -> ServiceError {
    ServiceError::not_found(format!(
        "The metadata definition tag with name={name} was not found in namespace={ns}."
    ))
}

/// The namespaces every new database starts with. Written for `ims` (not copied from Glance's
/// catalog): a few common compute, operating-system and hardware hints for images.
mod seed {
    use std::collections::BTreeMap;

    use serde_json::{Value, json};

    use super::{NamespaceVisibility, NewAssociation, NewNamespace, NewObject, PropertyDef};

    fn props(defs: Value) -> BTreeMap<String, PropertyDef> {
        match defs {
            Value::Object(map) => map
                .into_iter()
                .filter_map(|(k, v)| match v {
                    Value::Object(def) => Some((k, PropertyDef(def))),
                    _ => None,
                })
                .collect(),
            _ => BTreeMap::new(),
        }
    }

    fn association(name: &str, prefix: Option<&str>, target: Option<&str>) -> NewAssociation {
        NewAssociation {
            name: name.into(),
            prefix: prefix.map(str::to_owned),
            properties_target: target.map(str::to_owned),
        }
    }

    fn public(namespace: &str, display_name: &str, description: &str) -> NewNamespace {
        NewNamespace {
            namespace: namespace.into(),
            display_name: Some(display_name.into()),
            description: Some(description.into()),
            visibility: Some(NamespaceVisibility::Public),
            protected: Some(true),
            ..NewNamespace::default()
        }
    }

    pub fn namespaces() -> Vec<NewNamespace> {
        let mut hypervisor = public(
            "OS::Compute::Hypervisor",
            "Hypervisor Selection",
            "Ask the scheduler for hosts running a particular hypervisor or guest execution mode.",
        );
        hypervisor.associations = vec![association("OS::Glance::Image", None, None)];
        hypervisor.properties = props(json!({
            "hypervisor_type": {
                "title": "Hypervisor Type",
                "description": "The hypervisor a host must run to boot this image.",
                "type": "string",
                "enum": ["qemu", "kvm", "xen", "lxc", "vmware", "hyperv"]
            },
            "vm_mode": {
                "title": "VM Mode",
                "description": "How the guest executes: full hardware virtualisation, \
                                paravirtualised, or as a container.",
                "type": "string",
                "enum": ["hvm", "xen", "exe"]
            }
        }));

        let mut os = public(
            "OS::OperatingSystem",
            "Operating System",
            "Describe the operating system inside a disk so tools can pick drivers and settings.",
        );
        os.associations = vec![
            association("OS::Glance::Image", None, None),
            association("OS::Cinder::Volume", None, Some("image")),
        ];
        os.properties = props(json!({
            "os_type": {
                "title": "OS Type",
                "description": "The family of the guest operating system.",
                "type": "string",
                "enum": ["linux", "windows"]
            },
            "os_distro": {
                "title": "OS Distribution",
                "description": "Lower-case short name of the distribution, e.g. ubuntu, debian, \
                                fedora, centos, rhel, windows.",
                "type": "string"
            },
            "os_version": {
                "title": "OS Version",
                "description": "Version of the distribution, e.g. 24.04 or 2022.",
                "type": "string"
            },
            "os_admin_user": {
                "title": "Admin User",
                "description": "Name of the administrative account in the guest.",
                "type": "string"
            }
        }));

        let mut hardware = public(
            "OS::Compute::VirtualHardware",
            "Virtual Hardware",
            "Choose the virtual devices and CPU layout a guest is given.",
        );
        hardware.associations = vec![
            association("OS::Glance::Image", Some("hw_"), None),
            association("OS::Cinder::Volume", Some("hw_"), Some("image")),
            association("OS::Nova::Flavor", Some("hw:"), None),
        ];
        hardware.properties = props(json!({
            "disk_bus": {
                "title": "Disk Bus",
                "description": "The bus the root disk is attached to.",
                "type": "string",
                "enum": ["virtio", "scsi", "ide", "sata", "usb"]
            },
            "vif_model": {
                "title": "Network Card Model",
                "description": "The emulated network interface model.",
                "type": "string",
                "enum": ["virtio", "e1000", "e1000e", "rtl8139", "vmxnet3"]
            },
            "firmware_type": {
                "title": "Firmware",
                "description": "Boot the guest with legacy BIOS or UEFI firmware.",
                "type": "string",
                "enum": ["bios", "uefi"]
            },
            "qemu_guest_agent": {
                "title": "QEMU Guest Agent",
                "description": "Whether the image runs the QEMU guest agent.",
                "type": "string",
                "enum": ["yes", "no"]
            }
        }));
        hardware.objects = vec![NewObject {
            name: "CPU Topology".into(),
            description: Some(
                "Preferred sockets, cores and threads for the guest's virtual CPUs.".into(),
            ),
            required: Vec::new(),
            properties: props(json!({
                "cpu_sockets": {"title": "Sockets", "type": "integer", "minimum": 1,
                                "description": "Preferred number of CPU sockets."},
                "cpu_cores": {"title": "Cores", "type": "integer", "minimum": 1,
                              "description": "Preferred number of cores per socket."},
                "cpu_threads": {"title": "Threads", "type": "integer", "minimum": 1,
                                "description": "Preferred number of threads per core."}
            })),
        }];
        hardware.tags = vec!["virtio".into(), "uefi".into()];

        vec![hypervisor, os, hardware]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use ims_domain::Role;
    use ims_meta::metadefs::MemoryMetadefStore;

    fn caller(project: &str, role: Role) -> Caller {
        Caller {
            user_id: "u".into(),
            project_id: project.into(),
            roles: ims_domain::identity::effective_roles([role]),
        }
    }

    fn admin() -> Caller {
        caller("admin-project", Role::Admin)
    }

    async fn service() -> MetadefService {
        let svc = MetadefService::new(Arc::new(MemoryMetadefStore::new()));
        svc.seed().await.unwrap();
        svc
    }

    fn new_ns(name: &str, visibility: NamespaceVisibility, owner: &str) -> NewNamespace {
        NewNamespace {
            namespace: name.into(),
            visibility: Some(visibility),
            owner: Some(owner.into()),
            ..NewNamespace::default()
        }
    }

    fn prop(title: &str) -> PropertyDef {
        let json = serde_json::json!({"title": title, "type": "string", "bogus": 1});
        PropertyDef::from_json("p", json.as_object().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn seed_loads_once_and_deleted_seeds_stay_deleted() {
        let store = Arc::new(MemoryMetadefStore::new());
        let svc = MetadefService::new(store.clone());
        svc.seed().await.unwrap();
        let types = svc.list_resource_types(&admin()).await.unwrap();
        assert_eq!(types.len(), STANDARD_RESOURCE_TYPES.len());
        let page = svc
            .list_namespaces(&admin(), &NamespaceQuery::default())
            .await
            .unwrap();
        assert_eq!(page.namespaces.len(), 3);
        let hv = svc
            .update_namespace(
                &admin(),
                "OS::Compute::Hypervisor",
                NamespaceUpdate {
                    namespace: "OS::Compute::Hypervisor".into(),
                    ..NamespaceUpdate::default()
                },
            )
            .await
            .unwrap();
        assert!(!hv.protected);
        svc.delete_namespace(&admin(), &hv.namespace).await.unwrap();
        MetadefService::new(store).seed().await.unwrap();
        let err = svc
            .get_namespace(&admin(), "OS::Compute::Hypervisor")
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn reads_follow_visibility_and_writes_need_admin() {
        let svc = service().await;
        let reader = caller("p1", Role::Reader);
        let other = caller("p2", Role::Member);
        svc.create_namespace(&admin(), new_ns("priv", NamespaceVisibility::Private, "p1"))
            .await
            .unwrap();
        svc.get_namespace(&reader, "priv").await.unwrap();
        let err = svc.get_namespace(&other, "priv").await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        let err = svc.create_tag(&reader, "priv", "t").await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Forbidden);
        let err = svc.create_tag(&other, "priv", "t").await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        let err = svc
            .create_namespace(&other, new_ns("x", NamespaceVisibility::Public, "p2"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Forbidden);

        let seen: BTreeSet<String> = svc
            .list_namespaces(&other, &NamespaceQuery::default())
            .await
            .unwrap()
            .namespaces
            .into_iter()
            .map(|n| n.namespace)
            .collect();
        assert!(!seen.contains("priv"));
        assert!(seen.contains("OS::OperatingSystem"));
    }

    #[tokio::test]
    async fn protected_namespaces_refuse_deletes() {
        let svc = service().await;
        let mut new = new_ns("prot", NamespaceVisibility::Public, "p1");
        new.protected = Some(true);
        new.tags = vec!["a".into()];
        svc.create_namespace(&admin(), new).await.unwrap();
        for err in [
            svc.delete_namespace(&admin(), "prot").await.unwrap_err(),
            svc.delete_tag(&admin(), "prot", "a").await.unwrap_err(),
            svc.delete_all_tags(&admin(), "prot").await.unwrap_err(),
        ] {
            assert_eq!(err.kind, ErrorKind::Forbidden);
        }
        let dup = svc
            .create_namespace(&admin(), new_ns("prot", NamespaceVisibility::Public, "p1"))
            .await
            .unwrap_err();
        assert_eq!(dup.kind, ErrorKind::Conflict);
    }

    #[tokio::test]
    async fn properties_objects_tags_and_associations() {
        let svc = service().await;
        let a = admin();
        svc.create_namespace(&a, new_ns("ns", NamespaceVisibility::Public, "p1"))
            .await
            .unwrap();

        svc.create_property(&a, "ns", "p", prop("P")).await.unwrap();
        assert!(
            !svc.get_property(&a, "ns", "p")
                .await
                .unwrap()
                .0
                .contains_key("bogus")
        );
        let err = svc
            .create_property(&a, "ns", "p", prop("P"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conflict);
        svc.update_property(&a, "ns", "p", "q", prop("Q"))
            .await
            .unwrap();
        assert_eq!(
            svc.list_properties(&a, "ns")
                .await
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["q"]
        );
        svc.delete_property(&a, "ns", "q").await.unwrap();

        let object = NewObject {
            name: "o".into(),
            ..NewObject::default()
        };
        svc.create_object(&a, "ns", object.clone()).await.unwrap();
        let renamed = NewObject {
            name: "o2".into(),
            ..object
        };
        svc.update_object(&a, "ns", "o", renamed).await.unwrap();
        assert_eq!(svc.get_object(&a, "ns", "o2").await.unwrap().name, "o2");
        svc.delete_object(&a, "ns", "o2").await.unwrap();
        assert!(svc.list_objects(&a, "ns").await.unwrap().is_empty());

        svc.create_tags(&a, "ns", vec!["t1".into(), "t2".into()], false)
            .await
            .unwrap();
        svc.create_tags(&a, "ns", vec!["t3".into()], false)
            .await
            .unwrap();
        assert_eq!(svc.list_tags(&a, "ns").await.unwrap().len(), 1);
        svc.create_tags(&a, "ns", vec!["t4".into()], true)
            .await
            .unwrap();
        svc.rename_tag(&a, "ns", "t4", "t5").await.unwrap();
        assert_eq!(svc.get_tag(&a, "ns", "t5").await.unwrap().name, "t5");
        svc.delete_all_tags(&a, "ns").await.unwrap();
        assert!(svc.list_tags(&a, "ns").await.unwrap().is_empty());

        let assoc = NewAssociation {
            name: "OS::New::Thing".into(),
            ..NewAssociation::default()
        };
        svc.associate(&a, "ns", assoc.clone()).await.unwrap();
        let err = svc.associate(&a, "ns", assoc).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conflict);
        assert!(
            svc.list_resource_types(&a)
                .await
                .unwrap()
                .iter()
                .any(|r| r.name == "OS::New::Thing")
        );
        let filtered = svc
            .list_namespaces(
                &a,
                &NamespaceQuery {
                    resource_types: vec!["OS::New::Thing".into()],
                    ..NamespaceQuery::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(filtered.namespaces.len(), 1);
        svc.dissociate(&a, "ns", "OS::New::Thing").await.unwrap();
        let err = svc
            .dissociate(&a, "ns", "OS::New::Thing")
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn listing_pages_with_marker_and_sort() {
        let svc = service().await;
        for name in ["b", "a", "c"] {
            svc.create_namespace(&admin(), new_ns(name, NamespaceVisibility::Private, "p9"))
                .await
                .unwrap();
        }
        let query = NamespaceQuery {
            visibility: Some(NamespaceVisibility::Private),
            sort_key: NamespaceSortKey::Namespace,
            sort_dir: SortDir::Asc,
            limit: 2,
            ..NamespaceQuery::default()
        };
        let page = svc.list_namespaces(&admin(), &query).await.unwrap();
        let names: Vec<_> = page
            .namespaces
            .iter()
            .map(|n| n.namespace.as_str())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(page.next_marker.as_deref(), Some("b"));
        let next = NamespaceQuery {
            marker: page.next_marker,
            ..query
        };
        let page = svc.list_namespaces(&admin(), &next).await.unwrap();
        let names: Vec<_> = page
            .namespaces
            .iter()
            .map(|n| n.namespace.as_str())
            .collect();
        assert_eq!(names, ["c"]);
        assert_eq!(page.next_marker, None);
    }

    #[test]
    fn property_definitions_need_title_and_type() {
        let bad = serde_json::json!({"type": "string"});
        assert!(PropertyDef::from_json("p", bad.as_object().unwrap()).is_err());
        let bad = serde_json::json!({"title": "t", "type": "text"});
        assert!(PropertyDef::from_json("p", bad.as_object().unwrap()).is_err());
        let ok = serde_json::json!({"title": "t", "type": null});
        assert!(PropertyDef::from_json("p", ok.as_object().unwrap()).is_ok());
    }
}
