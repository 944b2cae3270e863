//! Glance's four per-project limits (unified limits, `use_keystone_limits`) and the rule that
//! decides whether a request goes over one: usage plus the request's delta must not exceed the
//! limit. Sizes are counted in MiB, as Glance counts them.

use crate::error::{DomainError, ErrorKind};

/// Bytes in the unit the two size limits are counted in.
pub const MIB: u64 = 1 << 20;

/// A resource Glance limits per project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QuotaResource {
    /// MiB of image data the project stores (each store holding an image counts).
    ImageSizeTotal,
    /// MiB of data in the staging area (staged uploads, copies in progress).
    ImageStageTotal,
    /// Images the project owns (not deleted or killed).
    ImageCountTotal,
    /// Images being uploaded, staged, imported or copied at once.
    ImageCountUploading,
}

impl QuotaResource {
    /// Every resource, in the order `/v2/info/usage` lists them.
    pub const ALL: [QuotaResource; 4] = [
        QuotaResource::ImageSizeTotal,
        QuotaResource::ImageStageTotal,
        QuotaResource::ImageCountTotal,
        QuotaResource::ImageCountUploading,
    ];

    /// Glance's (and Keystone's registered limit's) name.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaResource::ImageSizeTotal => "image_size_total",
            QuotaResource::ImageStageTotal => "image_stage_total",
            QuotaResource::ImageCountTotal => "image_count_total",
            QuotaResource::ImageCountUploading => "image_count_uploading",
        }
    }

    pub fn parse(name: &str) -> Option<QuotaResource> {
        QuotaResource::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// Whether the resource is a size (counted in MiB) rather than a number of images.
    pub fn is_size(self) -> bool {
        matches!(
            self,
            QuotaResource::ImageSizeTotal | QuotaResource::ImageStageTotal
        )
    }

    /// Usage in the resource's unit: sizes are whole MiB (rounded down, as Glance divides).
    pub fn units(self, raw: u64) -> u64 {
        if self.is_size() { raw / MIB } else { raw }
    }
}

/// A limit: a number of units, or none (Glance's `-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Limit {
    #[default]
    Unlimited,
    At(u64),
}

impl Limit {
    /// From the signed form Keystone and `/v2/info/usage` use: negative is unlimited.
    pub fn from_signed(value: i64) -> Limit {
        u64::try_from(value).map_or(Limit::Unlimited, Limit::At)
    }

    /// The signed form: `-1` for unlimited.
    pub fn to_signed(self) -> i64 {
        match self {
            Limit::Unlimited => -1,
            Limit::At(n) => i64::try_from(n).unwrap_or(i64::MAX),
        }
    }

    /// For a size limit, the bytes it allows (saturating); `None` when unlimited.
    pub fn bytes(self) -> Option<u64> {
        match self {
            Limit::Unlimited => None,
            Limit::At(n) => Some(n.saturating_mul(MIB)),
        }
    }
}

/// Glance's check (oslo.limit's enforcer): refused when `usage + delta > limit`, where usage and
/// delta are in the resource's unit. The error is Glance's 413 and names the limit.
pub fn check(
    project_id: &str,
    resource: QuotaResource,
    limit: Limit,
    usage: u64,
    delta: u64,
) -> Result<(), DomainError> {
    let Limit::At(limit) = limit else {
        return Ok(());
    };
    if usage.saturating_add(delta) <= limit {
        return Ok(());
    }
    Err(over_limit(project_id, resource, limit, usage, delta))
}

/// The error of a request that would take `project_id` over `resource`'s limit.
pub fn over_limit(
    project_id: &str,
    resource: QuotaResource,
    limit: u64,
    usage: u64,
    delta: u64,
) -> DomainError {
    DomainError::new(
        ErrorKind::QuotaExceeded,
        format!(
            "Project {project_id} is over a limit for [Resource {} is over limit of {limit} \
             due to current usage {usage} and delta {delta}]",
            resource.as_str()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for r in QuotaResource::ALL {
            assert_eq!(QuotaResource::parse(r.as_str()), Some(r));
        }
        assert_eq!(QuotaResource::parse("image_size"), None);
    }

    #[test]
    fn check_is_usage_plus_delta_against_limit() {
        let r = QuotaResource::ImageCountTotal;
        assert!(check("p", r, Limit::At(2), 1, 1).is_ok());
        let err = check("p", r, Limit::At(2), 2, 1).unwrap_err();
        assert_eq!(err.kind, ErrorKind::QuotaExceeded);
        assert!(err.message.contains("image_count_total is over limit of 2"));
        assert!(err.message.contains("current usage 2 and delta 1"));
        assert!(check("p", r, Limit::Unlimited, u64::MAX, u64::MAX).is_ok());
        assert!(check("p", r, Limit::At(0), 0, 0).is_ok());
        assert!(check("p", r, Limit::At(0), 0, 1).is_err());
    }

    #[test]
    fn sizes_are_whole_mib() {
        let r = QuotaResource::ImageSizeTotal;
        assert_eq!(r.units(MIB - 1), 0);
        assert_eq!(r.units(3 * MIB + 5), 3);
        assert_eq!(QuotaResource::ImageCountUploading.units(7), 7);
        assert_eq!(Limit::At(2).bytes(), Some(2 * MIB));
        assert_eq!(Limit::from_signed(-1), Limit::Unlimited);
        assert_eq!(Limit::At(5).to_signed(), 5);
    }
}
