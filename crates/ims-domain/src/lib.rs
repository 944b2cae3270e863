//! The domain model of `ims`: images and their status machine, members, identity, Glance's
//! default policy, the image list query and the per-project limits. Pure data and rules: no IO,
//! no serde, no HTTP.

pub mod error;
pub mod flavor;
pub mod identity;
pub mod image;
pub mod member;
pub mod os_catalog;
pub mod policy;
pub mod query;
pub mod quota;

pub use error::{DomainError, ErrorKind};
pub use identity::{Caller, Project, Role, User};
pub use image::{Image, ImageStatus, Visibility};
pub use member::{Member, MemberStatus};
pub use query::{ImageListQuery, ListScope, SortDir, SortKey};
pub use quota::{Limit, QuotaResource};

/// Current time truncated to microseconds, the precision every store keeps.
pub fn now() -> time::OffsetDateTime {
    let t = time::OffsetDateTime::now_utc();
    let micros = t.unix_timestamp_nanos() / 1_000;
    from_micros(micros as i64)
}

/// Microseconds since the Unix epoch, the form timestamps are stored in.
pub fn to_micros(t: time::OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000) as i64
}

/// Inverse of [`to_micros`]. Out-of-range values clamp to the epoch.
pub fn from_micros(micros: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}
