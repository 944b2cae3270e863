//! The image record, its status machine and the limits Glance puts on its attributes.

use std::collections::{BTreeMap, BTreeSet};

use time::OffsetDateTime;

use crate::error::DomainError;

/// Longest name, owner, tag, property key or property value Glance accepts.
pub const MAX_STRING_LEN: usize = 255;
/// Glance's `image_property_quota`.
pub const MAX_PROPERTIES: usize = 128;
/// Glance's `image_tag_quota`.
pub const MAX_TAGS: usize = 128;
/// Glance's `image_member_quota`.
pub const MAX_MEMBERS: usize = 128;

/// Disk formats Glance 33 accepts by default, plus `gpt`.
pub const DISK_FORMATS: &[&str] = &[
    "ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop", "gpt",
];
/// Container formats Glance 33 accepts by default.
pub const CONTAINER_FORMATS: &[&str] = &[
    "ami",
    "ari",
    "aki",
    "bare",
    "ovf",
    "ova",
    "docker",
    "compressed",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageStatus {
    Queued,
    Saving,
    Uploading,
    Importing,
    Active,
    Deactivated,
    Killed,
    PendingDelete,
    Deleted,
}

impl ImageStatus {
    pub const ALL: [ImageStatus; 9] = [
        ImageStatus::Queued,
        ImageStatus::Saving,
        ImageStatus::Uploading,
        ImageStatus::Importing,
        ImageStatus::Active,
        ImageStatus::Deactivated,
        ImageStatus::Killed,
        ImageStatus::PendingDelete,
        ImageStatus::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ImageStatus::Queued => "queued",
            ImageStatus::Saving => "saving",
            ImageStatus::Uploading => "uploading",
            ImageStatus::Importing => "importing",
            ImageStatus::Active => "active",
            ImageStatus::Deactivated => "deactivated",
            ImageStatus::Killed => "killed",
            ImageStatus::PendingDelete => "pending_delete",
            ImageStatus::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<ImageStatus> {
        ImageStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Glance's `valid_state_targets`.
    pub fn can_become(self, to: ImageStatus) -> bool {
        use ImageStatus::*;
        matches!(
            (self, to),
            (Queued, Saving | Uploading | Importing | Active | Deleted)
                | (Saving, Active | Killed | Deleted | Queued)
                | (Uploading, Importing | Queued | Deleted)
                | (Importing, Active | Deleted | Queued)
                | (Active, PendingDelete | Deleted | Deactivated)
                | (Killed, Deleted)
                | (PendingDelete, Deleted | Active)
                | (Deactivated, Active | Deleted)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Visibility {
    Public,
    Private,
    Shared,
    Community,
}

impl Visibility {
    pub const ALL: [Visibility; 4] = [
        Visibility::Public,
        Visibility::Private,
        Visibility::Shared,
        Visibility::Community,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Private => "private",
            Visibility::Shared => "shared",
            Visibility::Community => "community",
        }
    }

    pub fn parse(s: &str) -> Option<Visibility> {
        Visibility::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Where an image's bytes live and what they hash to; all set together when data lands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageData {
    /// Key of the blob; every store holding the data holds it under this key.
    pub blob_key: String,
    /// Ids of the stores holding the data, never empty, highest weight first (the order
    /// downloads try them in and Glance's `stores` property shows).
    pub stores: Vec<String>,
    pub size: i64,
    pub checksum: String,
    pub os_hash_algo: String,
    pub os_hash_value: String,
    pub virtual_size: Option<i64>,
}

/// A place outside this service's stores where an image's data can be read (an entry of
/// Glance's `locations` in the read-only `http` store): the URL and its metadata, a JSON
/// object kept as its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLocation {
    pub url: String,
    /// A JSON object, serialized (`{}` when none).
    pub metadata: String,
}

/// Size and hashes of data that lives only at [`Image::locations`] (no blob here): the size
/// read from the location, and the hashes that are known — computed while reading it, or given
/// by the caller as validation data — `None` otherwise (Glance shows them `null`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocationData {
    pub size: i64,
    pub checksum: Option<String>,
    pub os_hash_algo: Option<String>,
    pub os_hash_value: Option<String>,
    pub virtual_size: Option<i64>,
}

impl ImageData {
    /// Whether the store `id` holds the data.
    pub fn in_store(&self, id: &str) -> bool {
        self.stores.iter().any(|s| s == id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub id: uuid::Uuid,
    pub name: Option<String>,
    pub status: ImageStatus,
    pub visibility: Visibility,
    pub protected: bool,
    pub os_hidden: bool,
    pub owner: Option<String>,
    pub container_format: Option<String>,
    pub disk_format: Option<String>,
    pub min_ram: i64,
    pub min_disk: i64,
    pub data: Option<ImageData>,
    /// External locations of the data, in order (see [`ImageLocation`]); an image with such
    /// locations and no blob keeps its size and hashes in `location_data`.
    pub locations: Vec<ImageLocation>,
    /// Size and hashes of an image whose data is only at `locations`; `None` while the data
    /// has not been read (or failed verification), and for images with a blob.
    pub location_data: Option<LocationData>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub deleted_at: Option<OffsetDateTime>,
    pub tags: BTreeSet<String>,
    /// Free-form properties (Glance's "extra properties"), flattened into the API object.
    pub properties: BTreeMap<String, String>,
    /// Optimistic-concurrency counter: a store accepts an update only against the revision it holds.
    pub revision: i64,
}

impl Image {
    /// A new queued image owned by `owner`, with Glance's defaults.
    pub fn new(id: uuid::Uuid, owner: Option<String>, now: OffsetDateTime) -> Image {
        Image {
            id,
            name: None,
            status: ImageStatus::Queued,
            visibility: Visibility::Shared,
            protected: false,
            os_hidden: false,
            owner,
            container_format: None,
            disk_format: None,
            min_ram: 0,
            min_disk: 0,
            data: None,
            locations: Vec::new(),
            location_data: None,
            created_at: now,
            updated_at: now,
            deleted_at: None,
            tags: BTreeSet::new(),
            properties: BTreeMap::new(),
            revision: 0,
        }
    }

    pub fn size(&self) -> Option<i64> {
        self.data
            .as_ref()
            .map(|d| d.size)
            .or(self.location_data.as_ref().map(|d| d.size))
    }

    /// Moves to `to` if Glance's status machine allows it.
    pub fn transition(&mut self, to: ImageStatus) -> Result<(), DomainError> {
        if !self.status.can_become(to) {
            return Err(DomainError::conflict(format!(
                "Image status transition from {} to {} is not allowed",
                self.status.as_str(),
                to.as_str()
            )));
        }
        self.status = to;
        Ok(())
    }

    /// Both formats must be set before data may be saved, staged or imported.
    pub fn require_formats(&self) -> Result<(), DomainError> {
        if self.disk_format.is_none() || self.container_format.is_none() {
            return Err(DomainError::invalid(
                "Properties disk_format, container_format must be set prior to saving data.",
            ));
        }
        Ok(())
    }
}

/// Checks a tag against Glance's rules.
pub fn validate_tag(tag: &str) -> Result<(), DomainError> {
    if tag.chars().count() > MAX_STRING_LEN {
        return Err(DomainError::invalid(format!(
            "Tag is longer than {MAX_STRING_LEN} characters"
        )));
    }
    if tag.is_empty() {
        return Err(DomainError::invalid("Tag may not be empty"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_machine_matches_glance() {
        use ImageStatus::*;
        assert!(Queued.can_become(Saving));
        assert!(Saving.can_become(Queued));
        assert!(Active.can_become(Deactivated));
        assert!(Deactivated.can_become(Active));
        assert!(!Active.can_become(Saving));
        assert!(!Deleted.can_become(Active));
        assert!(!Killed.can_become(Active));
        for s in ImageStatus::ALL {
            assert!(!Deleted.can_become(s));
            assert_eq!(ImageStatus::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn transition_reports_both_states() {
        let mut img = Image::new(uuid::Uuid::nil(), None, crate::now());
        img.status = ImageStatus::Active;
        let err = img.transition(ImageStatus::Saving).unwrap_err();
        assert_eq!(
            err.message,
            "Image status transition from active to saving is not allowed"
        );
    }

    #[test]
    fn formats_required_before_data() {
        let mut img = Image::new(uuid::Uuid::nil(), None, crate::now());
        assert!(img.require_formats().is_err());
        img.disk_format = Some("raw".into());
        img.container_format = Some("bare".into());
        assert!(img.require_formats().is_ok());
    }

    #[test]
    fn tags_are_bounded() {
        assert!(validate_tag(&"x".repeat(255)).is_ok());
        assert!(validate_tag(&"x".repeat(256)).is_err());
    }
}
