//! ECS flavors as the IMS list filter `flavor_id` needs them: which image an instance of a flavor
//! can boot. A flavor id is `<series>.<size>.<ratio>` (`s6.large.2`, `kc1.xlarge.4`); its series
//! (seed 002 §7.1) fixes the CPU architecture (Kunpeng series start with `k`) and, for some
//! families, an image capability the image must declare with its `__support_*` property.

use crate::os_catalog::CatalogArch;

/// Longest flavor id accepted (Huawei ids are well under this; it bounds the parsing).
pub const MAX_FLAVOR_ID_LEN: usize = 64;

/// The x86 series of seed §7.1 (tables 7-1 to 7-6), without the families below.
const X86_SERIES: &[&str] = &[
    "t6", "s2", "s3", "sn3", "s6", "s7n", "s7", "x1", "c3", "c3ne", "c6", "c6s", "c6h", "c6hne",
    "c7n", "c7e", "c7t", "c7", "c7h", "c7ed", "c7ne", "c9", "c9e", "m2", "m3", "m3ne", "m6", "m6s",
    "m7n", "m7", "m7h", "m7ne", "m9", "d9i", "i9", "ir7n", "i3", "ir3", "i7n", "ir7", "i7", "d7i",
    "ac7", "ac8", "ac8h", "x1e", "x2e", "am7", "am8", "am8h", "ai7", "ac9", "ac9s", "am9",
];
/// Disk-intensive series (磁盘增强型): images must declare `__support_diskintensive`.
const DISK_INTENSIVE_SERIES: &[&str] = &["d2", "d3", "d6", "d7"];
/// High-performance computing series (高性能计算型): `__support_highperformance`.
const HIGH_PERFORMANCE_SERIES: &[&str] = &["hc2", "h3"];
/// Large-memory series (超大内存型): `__support_largememory`.
const LARGE_MEMORY_SERIES: &[&str] = &["e3", "e6", "e7"];
/// Kunpeng (ARM) series of seed §7.1 (tables 7-7, 7-8 and the notes under them).
const KUNPENG_SERIES: &[&str] = &["kc1", "kx1", "km1", "kc2", "km2", "ki1", "ki2"];

/// What an image must be to boot on a flavor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlavorNeeds {
    pub architecture: CatalogArch,
    /// A `__support_*` property that must be `true`, for the families that need one.
    pub capability: Option<&'static str>,
}

impl FlavorNeeds {
    /// Whether an image with these properties boots on the flavor. An image that does not
    /// state its architecture is x86 (the IMS default).
    pub fn admits(&self, property: impl Fn(&str) -> Option<String>) -> bool {
        let arm = property("architecture").as_deref() == Some("arm")
            || property("__support_arm").as_deref() == Some("true");
        let arch = if arm {
            CatalogArch::Arm
        } else {
            CatalogArch::X86
        };
        arch == self.architecture
            && self
                .capability
                .is_none_or(|key| property(key).is_some_and(|v| v.eq_ignore_ascii_case("true")))
    }
}

/// What a flavor id needs, or `None` for an id that names no series of the seed.
pub fn flavor_needs(flavor_id: &str) -> Option<FlavorNeeds> {
    if flavor_id.len() > MAX_FLAVOR_ID_LEN {
        return None;
    }
    let mut parts = flavor_id.split('.');
    let series = parts.next()?;
    let size = parts.next()?;
    let ratio = parts.next()?;
    if parts.next().is_some()
        || size.is_empty()
        || !size.chars().all(|c| c.is_ascii_alphanumeric())
        || ratio.is_empty()
        || !ratio.chars().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let x86 = |capability| {
        Some(FlavorNeeds {
            architecture: CatalogArch::X86,
            capability,
        })
    };
    if X86_SERIES.contains(&series) {
        x86(None)
    } else if DISK_INTENSIVE_SERIES.contains(&series) {
        x86(Some("__support_diskintensive"))
    } else if HIGH_PERFORMANCE_SERIES.contains(&series) {
        x86(Some("__support_highperformance"))
    } else if LARGE_MEMORY_SERIES.contains(&series) {
        x86(Some("__support_largememory"))
    } else if KUNPENG_SERIES.contains(&series) {
        Some(FlavorNeeds {
            architecture: CatalogArch::Arm,
            capability: None,
        })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn series_decide_architecture_and_capability() {
        let s6 = flavor_needs("s6.large.2").unwrap();
        assert_eq!(s6.architecture, CatalogArch::X86);
        assert_eq!(s6.capability, None);
        assert_eq!(
            flavor_needs("kc1.xlarge.4").unwrap().architecture,
            CatalogArch::Arm
        );
        assert_eq!(
            flavor_needs("d6.2xlarge.4").unwrap().capability,
            Some("__support_diskintensive")
        );
        assert_eq!(
            flavor_needs("e3.8xlarge.8").unwrap().capability,
            Some("__support_largememory")
        );
    }

    #[test]
    fn malformed_or_unknown_ids_name_nothing() {
        for id in [
            "",
            "s6",
            "s6.large",
            "s6.large.x",
            "s6.large.2.1",
            "zz9.large.2",
            "s6..2",
            &"s6.large.2".repeat(10),
        ] {
            assert_eq!(flavor_needs(id), None, "{id}");
        }
    }

    #[test]
    fn images_are_admitted_by_architecture_and_capability() {
        let s6 = flavor_needs("s6.large.2").unwrap();
        let kc1 = flavor_needs("kc1.large.2").unwrap();
        let d6 = flavor_needs("d6.large.2").unwrap();
        let plain = props(&[]);
        let arm = props(&[("architecture", "arm")]);
        let disk = props(&[("__support_diskintensive", "true")]);
        assert!(s6.admits(&plain) && !s6.admits(&arm));
        assert!(kc1.admits(&arm) && !kc1.admits(&plain));
        assert!(d6.admits(&disk) && !d6.admits(&plain));
    }
}
