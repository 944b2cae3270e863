//! The image list query: Glance's filters, sort keys and keyset pagination, as data.

use time::OffsetDateTime;

use crate::image::Visibility;
use crate::member::MemberStatus;

/// Glance's `limit_param_default`.
pub const DEFAULT_LIST_LIMIT: usize = 25;
/// Glance's `api_limit_max`.
pub const MAX_LIST_LIMIT: usize = 1000;

/// Whose images a listing may return before filters apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListScope {
    /// An admin: every project's images.
    All,
    /// A regular caller: own images, public, community and images shared with this project.
    Project(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisibilityFilter {
    All,
    Only(Visibility),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberStatusFilter {
    All,
    Only(MemberStatus),
}

/// String attributes that can be matched exactly (or against an `in:` list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchField {
    Id,
    Name,
    Status,
    ContainerFormat,
    DiskFormat,
    Owner,
    Checksum,
    OsHashValue,
}

impl MatchField {
    pub fn column(self) -> &'static str {
        match self {
            MatchField::Id => "id",
            MatchField::Name => "name",
            MatchField::Status => "status",
            MatchField::ContainerFormat => "container_format",
            MatchField::DiskFormat => "disk_format",
            MatchField::Owner => "owner",
            MatchField::Checksum => "checksum",
            MatchField::OsHashValue => "os_hash_value",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeField {
    CreatedAt,
    UpdatedAt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
}

impl CmpOp {
    pub fn parse(s: &str) -> Option<CmpOp> {
        Some(match s {
            "eq" => CmpOp::Eq,
            "neq" => CmpOp::Neq,
            "gt" => CmpOp::Gt,
            "gte" => CmpOp::Gte,
            "lt" => CmpOp::Lt,
            "lte" => CmpOp::Lte,
            _ => return None,
        })
    }

    pub fn sql(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Neq => "<>",
            CmpOp::Gt => ">",
            CmpOp::Gte => ">=",
            CmpOp::Lt => "<",
            CmpOp::Lte => "<=",
        }
    }

    pub fn holds<T: Ord>(self, left: T, right: T) -> bool {
        match self {
            CmpOp::Eq => left == right,
            CmpOp::Neq => left != right,
            CmpOp::Gt => left > right,
            CmpOp::Gte => left >= right,
            CmpOp::Lt => left < right,
            CmpOp::Lte => left <= right,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Name,
    Status,
    ContainerFormat,
    DiskFormat,
    Size,
    Id,
    CreatedAt,
    UpdatedAt,
}

impl SortKey {
    pub fn parse(s: &str) -> Option<SortKey> {
        Some(match s {
            "name" => SortKey::Name,
            "status" => SortKey::Status,
            "container_format" => SortKey::ContainerFormat,
            "disk_format" => SortKey::DiskFormat,
            "size" => SortKey::Size,
            "id" => SortKey::Id,
            "created_at" => SortKey::CreatedAt,
            "updated_at" => SortKey::UpdatedAt,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortDir {
    Asc,
    Desc,
}

impl SortDir {
    pub fn parse(s: &str) -> Option<SortDir> {
        match s {
            "asc" => Some(SortDir::Asc),
            "desc" => Some(SortDir::Desc),
            _ => None,
        }
    }
}

/// One page of a listing. Every store must give the same answer for the same query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageListQuery {
    pub scope: ListScope,
    /// `None`: Glance's default (community images of other projects left out).
    pub visibility: Option<VisibilityFilter>,
    /// Applies to images shared with the caller; Glance's default is `accepted`.
    pub member_status: MemberStatusFilter,
    /// Each entry: the attribute must equal one of the values.
    pub matches: Vec<(MatchField, Vec<String>)>,
    pub protected: Option<bool>,
    /// `Some(false)` by default: hidden images are left out unless asked for.
    pub os_hidden: Option<bool>,
    pub times: Vec<(TimeField, CmpOp, OffsetDateTime)>,
    pub size_min: Option<i64>,
    pub size_max: Option<i64>,
    /// The image must carry every one of these tags.
    pub tags: Vec<String>,
    /// The image must carry each property with exactly this value.
    pub properties: Vec<(String, String)>,
    /// Sort order; stores append `created_at` and `id` (desc) as tie-breakers when absent.
    pub sort: Vec<(SortKey, SortDir)>,
    /// Start after this image (which must be visible to the caller).
    pub marker: Option<uuid::Uuid>,
    pub limit: usize,
}

impl ImageListQuery {
    pub fn new(scope: ListScope) -> Self {
        ImageListQuery {
            scope,
            visibility: None,
            member_status: MemberStatusFilter::Only(MemberStatus::Accepted),
            matches: Vec::new(),
            protected: None,
            os_hidden: Some(false),
            times: Vec::new(),
            size_min: None,
            size_max: None,
            tags: Vec::new(),
            properties: Vec::new(),
            sort: Vec::new(),
            marker: None,
            limit: DEFAULT_LIST_LIMIT,
        }
    }

    /// The sort order with Glance's tie-breakers appended.
    pub fn full_sort(&self) -> Vec<(SortKey, SortDir)> {
        let mut sort = self.sort.clone();
        if sort.is_empty() {
            sort.push((SortKey::CreatedAt, SortDir::Desc));
        }
        for key in [SortKey::CreatedAt, SortKey::Id] {
            if !sort.iter().any(|(k, _)| *k == key) {
                sort.push((key, SortDir::Desc));
            }
        }
        sort
    }
}
