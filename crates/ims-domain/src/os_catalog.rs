//! The seed's operating-system catalogue: the `__os_version` names an image may be registered
//! with (tables 7-9 x86 and 7-10 ARM of the IMS user guide, seed 002 §7.2), which of them boot
//! with UEFI (table 7-11), the bare-metal list (table 7-6) and the end-of-support dates (§6).
//!
//! Pure data and lookups: no IO, no clock (callers pass today's date). Used by guest
//! inspection (`ims img inspect`, import) to name what it found, and by the IMS API's
//! `list_os_versions` and registration rules.

use std::sync::LazyLock;

use time::{Date, Month};

/// `__os_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CatalogOsType {
    Linux,
    Windows,
    Other,
}

impl CatalogOsType {
    /// The `__os_type` value: `Linux`, `Windows`, `Other`.
    pub fn as_str(self) -> &'static str {
        match self {
            CatalogOsType::Linux => "Linux",
            CatalogOsType::Windows => "Windows",
            CatalogOsType::Other => "Other",
        }
    }
}

/// The two architectures the seed's lists are split by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CatalogArch {
    /// x86_64 and i386 (table 7-9).
    X86,
    /// aarch64 (table 7-10).
    Arm,
}

impl CatalogArch {
    /// From an architecture name as inspection or Glance's `architecture` states it.
    pub fn from_arch(arch: &str) -> Option<CatalogArch> {
        match arch.to_ascii_lowercase().as_str() {
            "x86_64" | "amd64" | "x86" | "i386" | "i486" | "i586" | "i686" | "x64" => {
                Some(CatalogArch::X86)
            }
            "aarch64" | "arm64" | "arm" => Some(CatalogArch::Arm),
            _ => None,
        }
    }
}

/// A distribution as the seed names it.
#[derive(Debug)]
pub struct Family {
    /// Stable key used in this module (`centos`, `ubuntu`, `windows`).
    pub key: &'static str,
    /// What `__os_version` names start with (`CentOS`, `Debian GNU/Linux`).
    pub prefix: &'static str,
    /// What follows the version, before the bits (`" server"` for Ubuntu).
    pub suffix: &'static str,
    /// `__platform`. Distributions outside the spec's `__platform` enumeration map to `Other`.
    pub platform: &'static str,
    pub os_type: CatalogOsType,
    /// os-release `ID`s (lower case) that name this family; `windows` for Windows.
    pub distro_ids: &'static [&'static str],
}

/// One `__os_version` the seed accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsVersion {
    /// The `__os_version` value, e.g. `CentOS 7.9 64bit`, `Ubuntu 22.04 server 64bit`.
    pub name: String,
    pub family: &'static str,
    /// The version part of the name (`7.9`, `15 SP5`, `Server 2022 Datacenter`).
    pub version: String,
    pub platform: &'static str,
    pub os_type: CatalogOsType,
    /// 32 or 64.
    pub bits: u8,
    /// On the x86 import list (table 7-9).
    pub x86: bool,
    /// On the ARM import list (table 7-10).
    pub arm: bool,
    /// On the UEFI list (table 7-11).
    pub uefi: bool,
    /// On the bare-metal list (table 7-6, and the Kunpeng bare-metal note).
    pub bms: bool,
}

impl OsVersion {
    /// `os_version_key` of `list_os_versions`: the name itself.
    pub fn key(&self) -> &str {
        &self.name
    }

    /// The end of support (§6) that covers this version, if the seed gives one.
    pub fn end_of_life(&self) -> Option<EndOfLife> {
        end_of_life(self.family, &self.version)
    }

    /// Whether `today` is after the end of support; `None` when the seed gives no date.
    pub fn past_end_of_life(&self, today: Date) -> Option<bool> {
        self.end_of_life().map(|e| e.is_past(today))
    }
}

/// An end-of-support date as §6 states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndOfLife {
    /// Support ended on this day (for dates given as a month: its last day).
    On(Date),
    /// The seed says "stopped" (已停止) without a date.
    Stopped,
}

impl EndOfLife {
    /// `true` when `today` is after the last supported day.
    pub fn is_past(self, today: Date) -> bool {
        match self {
            EndOfLife::On(d) => today > d,
            EndOfLife::Stopped => true,
        }
    }
}

/// The outcome of matching what inspection found against the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogMatch {
    pub entry: &'static OsVersion,
    /// The detected version is exactly the listed one; `false` when a listed version of the
    /// same major release was chosen (e.g. Debian 12.15 → `Debian GNU/Linux 12.11.0 64bit`).
    pub exact: bool,
}

use CatalogOsType::{Linux, Other, Windows};

/// Every family of tables 7-9, 7-10 and 7-11.
pub static FAMILIES: &[Family] = &[
    fam("windows", "Windows", "", "Windows", Windows, &["windows"]),
    fam("centos", "CentOS", "", "CentOS", Linux, &["centos"]),
    fam(
        "centos-stream",
        "CentOS Stream",
        "",
        "CentOS",
        Linux,
        &["centos"],
    ),
    fam("almalinux", "AlmaLinux", "", "Other", Linux, &["almalinux"]),
    fam(
        "debian",
        "Debian GNU/Linux",
        "",
        "Debian",
        Linux,
        &["debian"],
    ),
    fam("euleros", "EulerOS", "", "EulerOS", Linux, &["euleros"]),
    fam("fedora", "Fedora", "", "Fedora", Linux, &["fedora"]),
    fam("freebsd", "FreeBSD", "", "Other", Other, &["freebsd"]),
    fam("hce-os", "HCE OS", "", "Huawei Cloud EulerOS", Linux, &[]),
    fam(
        "hce-enterprise",
        "HCE Enterprise",
        "",
        "Huawei Cloud EulerOS",
        Linux,
        &[],
    ),
    fam(
        "hce",
        "Huawei Cloud EulerOS",
        "",
        "Huawei Cloud EulerOS",
        Linux,
        &["hce"],
    ),
    fam("isoft", "iSoft", "", "Other", Linux, &["isoft"]),
    fam("kali", "Kali Linux", "", "Other", Linux, &["kali"]),
    fam("kylin", "KylinOS", "", "Other", Linux, &["kylin"]),
    fam("kylinsec", "KylinSec", "", "Other", Linux, &["kylinsec"]),
    fam("liberty", "Liberty", "", "Other", Linux, &[]),
    // Table 7-9 spells it `LinxOS.0.99 el20.03 sp3`, table 7-10 `LinuxOS.0.99 ...`; the names
    // here put a space after the prefix like every other entry.
    fam("linxos", "LinxOS", "", "Other", Linux, &["linxos"]),
    fam("linuxos", "LinuxOS", "", "Other", Linux, &[]),
    fam("neokylin", "NeoKylin", "", "Other", Linux, &["neokylin"]),
    fam("openeuler", "openEuler", "", "Other", Linux, &["openeuler"]),
    fam(
        "opensuse",
        "openSUSE",
        "",
        "OpenSUSE",
        Linux,
        &["opensuse-leap", "opensuse"],
    ),
    fam(
        "oracle",
        "Oracle Linux Server release",
        "",
        "Oracle Linux",
        Linux,
        &["ol"],
    ),
    fam(
        "redflag",
        "RedFlag Asianux",
        "",
        "Other",
        Linux,
        &["asianux"],
    ),
    fam(
        "rhel",
        "Red Hat Linux Enterprise",
        "",
        "RedHat",
        Linux,
        &["rhel"],
    ),
    fam("rocky", "Rocky Linux", "", "Other", Linux, &["rocky"]),
    fam(
        "sles",
        "SUSE Linux Enterprise Server",
        "",
        "SUSE",
        Linux,
        &["sles", "sled"],
    ),
    fam("ubuntu", "Ubuntu", " server", "Ubuntu", Linux, &["ubuntu"]),
    fam(
        "uniontech",
        "UnionTechOS Server",
        "",
        "Other",
        Linux,
        &["uos", "uniontech"],
    ),
];

const fn fam(
    key: &'static str,
    prefix: &'static str,
    suffix: &'static str,
    platform: &'static str,
    os_type: CatalogOsType,
    distro_ids: &'static [&'static str],
) -> Family {
    Family {
        key,
        prefix,
        suffix,
        platform,
        os_type,
        distro_ids,
    }
}

/// A row of a seed table: a family, the bits, and its versions separated by `/`.
type Row = (&'static str, u8, &'static str);

/// Table 7-9: the import list for x86.
const X86: &[Row] = &[
    (
        "windows",
        64,
        "Server 2025 Standard/Server 2025 Datacenter/Server 2022 Standard/Server 2022 Datacenter/\
         Server 2019 Standard/Server 2019 Datacenter/Server 2016 Standard/Server 2016 Datacenter/\
         Server 2012 R2 Standard/Server 2012 R2 Datacenter/Server 2012 Essentials R2/\
         Server 2012 Standard/Server 2012 Datacenter/Server 2008 WEB R2/Server 2008 R2 Standard/\
         Server 2008 R2 Enterprise/Server 2008 R2 Datacenter/10/11",
    ),
    (
        "centos",
        64,
        "8.5/8.4/8.3/8.2/8.1/8.0/7.9/7.8/7.7/7.6/7.5/7.4/7.3/7.2/7.1/7.0/\
         6.10/6.9/6.8/6.7/6.6/6.5/6.4/6.3",
    ),
    ("centos", 32, "7.0/6.10/6.7/6.6/6.5/6.4/6.3"),
    (
        "almalinux",
        64,
        "10.0/9.6/9.5/9.4/9.3/9.2/9.1/9.0/8.10/8.9/8.8/8.7/8.6/8.5/8.4/8.3",
    ),
    ("centos-stream", 64, "10/9/8"),
    (
        "debian",
        64,
        "13.0.0/12.11.0/12.10.0/12.9.0/12.8.0/12.7.0/12.6.0/12.5.0/12.4.0/12.3.0/12.2.0/12.1.0/\
         12.0.0/11.11.0/11.10.0/11.9.0/11.8.0/11.7.0/11.6.0/11.5.0/11.4.0/11.3.0/11.2.0/11.1.0/\
         11.0.0/10.13.0/10.12.0/10.11.0/10.10.0/10.9.0/10.8.0/10.7.0/10.6.0/10.5.0/10.4.0/\
         10.3.0/10.2.0/10.1.0/10.0.0/9.13.0/9.3.0/9.0.0/8.8.0/8.7.0/8.6.0/8.5.0/8.4.0/8.2.0",
    ),
    ("euleros", 64, "2.12/2.11/2.10/2.9/2.8/2.7/2.5/2.3/2.2/2.1"),
    (
        "fedora",
        64,
        "42/41/40/39/38/37/36/35/34/33/32/31/30/29/28/27/26/25/24/23/22",
    ),
    (
        "freebsd",
        64,
        "14.3/14.2/14.1/14.0/13.2/13.1/13.0/12.4/12.3/12.2/12.1/12.0/11.4/11.3/11.2/11.1/11.0",
    ),
    ("hce-os", 64, "2.0"),
    ("hce-enterprise", 64, "2.0"),
    ("hce", 64, "2.0/1.1/1.0"),
    ("kali", 64, ""),
    ("kylin", 64, "V10 SP3/V10 SP2/V10 SP1/V10"),
    ("kylinsec", 64, "3.5/3.3"),
    ("liberty", 64, "Basic"),
    ("linxos", 64, "0.99 el20.03 sp3"),
    (
        "neokylin",
        64,
        "7.4/Server release 5.0 U2/Linux Advanced Server release 7.0 U5",
    ),
    (
        "openeuler",
        64,
        "25.03/24.03 SP2/24.03 SP1/24.03/22.03 SP4/22.03 SP3/22.03 SP2/22.03 SP1/22.03/\
         20.03 SP3/20.03 SP2/20.03 SP1/20.03",
    ),
    (
        "opensuse",
        64,
        "42.3/42.2/42.1/15.7/15.6/15.5/15.4/15.3/15.2/15.1/15.0/13.2/11.3",
    ),
    (
        "oracle",
        64,
        "10.0/9.6/9.5/9.4/9.3/9.2/9.1/9.0/8.10/8.9/8.8/8.7/8.6/8.5/8.4/8.3/8.2/8.1/8.0/\
         7.9/7.8/7.7/7.6/7.5/7.4/7.3/7.2/7.1/7.0/6.10/6.9/6.8/6.7/6.5",
    ),
    ("redflag", 64, "Linux V7.5/Linux V7.0/Server Linux V8"),
    (
        "rhel",
        64,
        "10.0/9.6/9.5/9.4/9.3/9.2/9.1/9.0/8.10/8.9/8.8/8.7/8.6/8.5/8.4/8.3/8.2/8.1/8.0/\
         7.9/7.8/7.7/7.6/7.5/7.4/7.3/7.2/7.1/7.0/6.10/6.9/6.8/6.7/6.6/6.5/6.4",
    ),
    ("rhel", 32, "6.6/6.4"),
    (
        "rocky",
        64,
        "10.0/9.6/9.5/9.4/9.3/9.2/9.1/9.0/8.10/8.9/8.8/8.7/8.6/8.5/8.4/8.3",
    ),
    (
        "sles",
        64,
        "15 SP7/15 SP6/15 SP5/15 SP4/15 SP3/15 SP2/15 SP1/15/12 SP5/12 SP4/12 SP3/12 SP2/12 SP1/\
         11 SP4/11 SP3",
    ),
    ("sles", 32, "11 SP3"),
    (
        "ubuntu",
        64,
        "24.04/22.04/20.04/19.04/18.04.2/18.04.1/18.04/16.04.6/16.04.5/16.04.4/16.04.3/16.04.2/\
         16.04/14.04.5/14.04.4/14.04.3/14.04.1/14.04",
    ),
    // The seed's last 32-bit entry reads `14.0`, a cut-off `14.04`.
    ("ubuntu", 32, "14.04.4/14.04.3/14.04.1/14.04"),
    (
        "uniontech",
        64,
        "20 (1070e) Euler/20 (1060e) Euler/20 (1050u2e) Euler/20 (1050e) Euler/20 (1020e) Euler/\
         20 Euler",
    ),
];

/// Table 7-10: the import list for ARM.
const ARM: &[Row] = &[
    (
        "centos",
        64,
        "8.5/8.4/8.3/8.2/8.1/8.0/7.9/7.8/7.7/7.6/7.5/7.4/7.3/7.2/7.1",
    ),
    (
        "almalinux",
        64,
        "10.0/9.6/9.5/9.4/9.3/9.2/9.1/9.0/8.10/8.9/8.8/8.7/8.6/8.5/8.4/8.3",
    ),
    ("centos-stream", 64, "10/9/8"),
    (
        "debian",
        64,
        "13.0.0/12.11.0/12.10.0/12.9.0/12.8.0/12.7.0/12.6.0/12.5.0/12.4.0/12.3.0/12.2.0/12.1.0/\
         12.0.0/11.11.0/11.10.0/11.9.0/11.8.0/11.7.0/11.6.0/11.5.0/11.4.0/11.3.0/11.2.0/11.1.0/\
         11.0.0/10.13.0/10.12.0/10.11.0/10.10.0/10.9.0/10.8.0/10.7.0/10.6.0/10.5.0/10.4.0/\
         10.3.0/10.2.0/10.1.0/10.0.0",
    ),
    ("euleros", 64, "2.12/2.11/2.10/2.9/2.8/2.7"),
    (
        "fedora",
        64,
        "42/41/40/39/38/37/36/35/34/33/32/31/30/29/28/27",
    ),
    (
        "freebsd",
        64,
        "14.3/14.2/14.1/14.0/13.2/13.1/13.0/12.4/12.3/12.2/12.1/12.0/11.4/11.3/11.2/11.1/11.0",
    ),
    ("hce-os", 64, "2.0"),
    ("hce-enterprise", 64, "2.0"),
    ("hce", 64, "2.0/1.1/1.0"),
    ("isoft", 64, "V5.1"),
    ("kali", 64, ""),
    ("kylin", 64, "V10 SP3/V10 SP2/V10 SP1/V10/Desktop V10"),
    ("kylinsec", 64, "3.5/3.3"),
    ("liberty", 64, "Basic"),
    ("linuxos", 64, "0.99 el20.03 sp3"),
    ("neokylin", 64, "V7/7.7"),
    (
        "openeuler",
        64,
        "25.03/24.03 SP2/24.03 SP1/24.03/22.03 SP4/22.03 SP3/22.03 SP2/22.03 SP1/22.03/\
         20.03 SP3/20.03 SP2/20.03 SP1/20.03",
    ),
    (
        "opensuse",
        64,
        "42.3/42.2/42.1/15.7/15.6/15.5/15.4/15.3/15.2/15.1/15.0",
    ),
    ("redflag", 64, "Linux V7.5/Linux V7.0/Server Linux V8"),
    (
        "rhel",
        64,
        "10.0/9.6/9.5/9.4/9.3/9.2/9.1/9.0/8.10/8.9/8.8/8.7/8.6/8.5/8.4/8.3/8.2/8.1/8.0/\
         7.9/7.8/7.7/7.6/7.5/7.4/7.3/7.2/7.1",
    ),
    (
        "rocky",
        64,
        "10.0/9.6/9.5/9.4/9.3/9.2/9.1/9.0/8.10/8.9/8.8/8.7/8.6",
    ),
    (
        "sles",
        64,
        "15 SP7/15 SP6/15 SP5/15 SP4/15 SP3/15 SP2/15 SP1/12 SP5",
    ),
    ("ubuntu", 64, "24.04/22.04/20.04/19.04/18.04/16.04/14.04"),
    (
        "uniontech",
        64,
        "20 (1070e) Euler/20 (1060e) Euler/20 (1050u2e) Euler/20 (1050e) Euler/20 (1020e) Euler/\
         20 Euler",
    ),
];

/// Table 7-11: versions that boot with UEFI.
const UEFI: &[Row] = &[
    (
        "windows",
        64,
        "Server 2025 Standard/Server 2025 Datacenter/Server 2022 Standard/Server 2022 Datacenter/\
         Server 2019 Standard/Server 2019 Datacenter/Server 2016 Standard/Server 2016 Datacenter/\
         Server 2012 R2 Standard/Server 2012 R2 Datacenter/Server 2012 Essentials R2/\
         Server 2012 Standard/Server 2012 Datacenter/10/11",
    ),
    ("centos", 64, "7.4/7.0/6.9/6.6"),
    ("almalinux", 64, "10.0/9.6/9.5/9.4/9.3/9.2/9.1/9.0/8.10"),
    ("debian", 64, "8.8.0"),
    ("euleros", 64, "2.3/2.2"),
    ("fedora", 64, "24"),
    ("opensuse", 64, "15.7/15.6/15.5/15.4/42.1"),
    (
        "oracle",
        64,
        "10.0/9.6/9.5/9.4/9.3/9.2/9.1/9.0/8.10/8.9/8.8/8.7/8.6/8.5/8.4/8.3/8.2/8.1/8.0/7.4/6.9",
    ),
    (
        "rhel",
        64,
        "10.0/9.6/9.5/9.4/9.3/9.2/9.1/9.0/8.10/8.9/8.8/8.7/8.6/8.5/8.4/8.3/8.2/8.1/8.0/\
         7.9/7.8/7.7/7.6/7.5/7.4/7.3/7.2/7.1/7.0/6.9/6.5",
    ),
    ("rhel", 32, "6.6"),
    ("rocky", 64, "9.6/9.5/9.4/9.3/9.2/9.1/9.0/8.10"),
    (
        "sles",
        64,
        "15 SP7/15 SP6/15 SP5/15 SP4/15 SP3/15 SP2/15 SP1/15/12 SP5/12 SP4/12 SP3/12 SP2/12 SP1/\
         11 SP3",
    ),
    ("ubuntu", 64, "24.04/22.04/20.04/18.04/16.04/14.04"),
];

/// Table 7-6 (bare-metal ECS) and the Kunpeng bare-metal note (kc2/ki2: HCE 2.0).
const BMS: &[Row] = &[("centos", 64, "7.9"), ("hce", 64, "2.0")];

/// §6: end of support per family and version. A version covers its point releases
/// (`7` covers `7.9`; Windows `Server 2019` covers `Server 2019 Datacenter`). Where §6 gives a
/// main and an extended end, the extended one. `(year, month, day)`; day 0 means "the end of
/// that month"; year 0 means "stopped" (已停止).
const EOL: &[(&str, &str, (i32, u8, u8))] = &[
    ("hce", "2.0", (2028, 6, 30)),
    ("hce", "1.1", (2026, 6, 30)),
    ("openeuler", "22.03 SP2", (2024, 3, 0)),
    ("openeuler", "22.03 SP1", (2024, 12, 0)),
    ("openeuler", "22.03", (2024, 3, 0)),
    ("openeuler", "20.03 SP3", (2023, 12, 0)),
    ("openeuler", "20.03 SP2", (2022, 4, 0)),
    ("openeuler", "20.03 SP1", (2022, 12, 0)),
    ("openeuler", "20.03", (2021, 3, 0)),
    // §6 names EulerOS releases `2.0SP12`; the import list calls the same release `2.12`.
    ("euleros", "2.12", (2028, 12, 31)),
    ("euleros", "2.11", (2027, 12, 31)),
    ("euleros", "2.10", (2026, 12, 31)),
    ("euleros", "2.9", (2025, 12, 31)),
    ("euleros", "2.8", (2024, 12, 31)),
    ("euleros", "2.5", (2024, 6, 30)),
    ("euleros", "2.3", (2022, 12, 31)),
    ("euleros", "2.2", (2021, 12, 31)),
    ("euleros", "2.1", (2019, 9, 30)),
    ("centos", "8", (2021, 12, 31)),
    ("centos", "7", (2024, 6, 30)),
    ("centos", "6", (2020, 11, 30)),
    ("centos-stream", "8", (2024, 5, 31)),
    ("debian", "13", (2028, 8, 9)),
    ("debian", "12", (2026, 6, 10)),
    ("debian", "11", (2024, 8, 14)),
    ("debian", "10", (2022, 9, 10)),
    ("debian", "9", (2020, 7, 18)),
    ("debian", "8", (2018, 6, 17)),
    ("debian", "7", (2016, 4, 25)),
    ("ubuntu", "22.04", (2027, 4, 0)),
    ("ubuntu", "20.04", (2025, 4, 0)),
    ("ubuntu", "18.04", (2023, 6, 0)),
    ("ubuntu", "16.04", (2021, 4, 0)),
    ("ubuntu", "14.04", (2019, 4, 0)),
    ("rhel", "9", (2027, 5, 31)),
    ("rhel", "8", (2024, 5, 31)),
    ("rhel", "7", (2019, 8, 6)),
    ("rhel", "6", (2016, 5, 10)),
    ("freebsd", "14.2", (2025, 9, 30)),
    ("freebsd", "14.1", (2025, 3, 31)),
    ("freebsd", "14.0", (2024, 9, 30)),
    ("freebsd", "13.2", (2024, 6, 30)),
    ("freebsd", "13.1", (2023, 7, 31)),
    ("freebsd", "13.0", (2022, 8, 31)),
    ("freebsd", "12.4", (2023, 12, 31)),
    ("freebsd", "12.3", (2022, 8, 21)),
    ("freebsd", "12.2", (2022, 3, 31)),
    ("freebsd", "12.1", (2021, 1, 31)),
    ("freebsd", "12.0", (2020, 2, 4)),
    ("freebsd", "11.4", (2021, 9, 30)),
    ("freebsd", "11.3", (2020, 9, 30)),
    ("freebsd", "11.2", (2019, 10, 31)),
    ("freebsd", "11.1", (2018, 9, 30)),
    ("freebsd", "11.0", (2017, 11, 30)),
    ("opensuse", "15.3", (2022, 11, 30)),
    ("opensuse", "15.2", (2022, 1, 4)),
    ("opensuse", "15.1", (2021, 2, 2)),
    ("opensuse", "15.0", (2019, 12, 3)),
    ("opensuse", "42.3", (2019, 7, 1)),
    ("opensuse", "42.2", (2018, 1, 26)),
    ("opensuse", "42.1", (2017, 5, 17)),
    ("sles", "15 SP6", (2025, 12, 31)),
    ("sles", "15 SP5", (2024, 12, 31)),
    ("sles", "15 SP4", (2023, 12, 31)),
    ("sles", "15 SP3", (2022, 12, 31)),
    ("sles", "15 SP2", (2021, 12, 31)),
    ("sles", "15 SP1", (2021, 1, 31)),
    ("sles", "15", (2019, 12, 31)),
    ("sles", "12 SP5", (2024, 10, 31)),
    ("sles", "12 SP4", (2020, 6, 30)),
    ("sles", "12 SP3", (2019, 6, 30)),
    ("sles", "12 SP2", (2018, 3, 31)),
    ("sles", "12 SP1", (2017, 5, 31)),
    ("sles", "12", (2016, 6, 30)),
    ("fedora", "38", (2024, 5, 21)),
    ("fedora", "37", (2023, 12, 5)),
    ("fedora", "36", (2023, 5, 16)),
    ("fedora", "35", (2022, 12, 13)),
    ("fedora", "34", (2022, 6, 7)),
    ("fedora", "33", (2021, 11, 30)),
    ("fedora", "32", (2021, 5, 25)),
    ("fedora", "31", (2020, 11, 24)),
    ("fedora", "30", (2020, 5, 26)),
    ("fedora", "29", (2019, 11, 26)),
    ("fedora", "28", (2019, 5, 28)),
    ("fedora", "27", (2018, 11, 30)),
    ("oracle", "7", (2024, 12, 0)),
    ("oracle", "6", (2021, 3, 0)),
    ("oracle", "5", (2017, 6, 0)),
    ("rocky", "8.5", (2022, 5, 15)),
    ("almalinux", "8.5", (2031, 11, 0)),
    ("windows", "Server 2019", (2029, 1, 9)),
    ("windows", "Server 2016", (2027, 1, 12)),
    ("windows", "Server 2012 R2", (2023, 10, 10)),
    ("windows", "Server 2012", (2023, 10, 10)),
    ("windows", "Server 2008", (0, 0, 0)),
    ("windows", "Server 2003", (0, 0, 0)),
];

/// Every `__os_version` of tables 7-9 and 7-10 (x86 entries first, in the seed's order), with
/// the UEFI and bare-metal flags set.
pub fn entries() -> &'static [OsVersion] {
    &ENTRIES
}

static ENTRIES: LazyLock<Vec<OsVersion>> = LazyLock::new(build_entries);

fn build_entries() -> Vec<OsVersion> {
    let mut out: Vec<OsVersion> = Vec::new();
    for (rows, arm) in [(X86, false), (ARM, true)] {
        for (family, bits, version) in expand(rows) {
            let existing = out
                .iter_mut()
                .find(|e| e.family == family.key && e.bits == bits && e.version == version);
            let e = match existing {
                Some(e) => e,
                None => {
                    out.push(OsVersion {
                        name: name_of(family, &version, bits),
                        family: family.key,
                        version,
                        platform: family.platform,
                        os_type: family.os_type,
                        bits,
                        x86: false,
                        arm: false,
                        uefi: false,
                        bms: false,
                    });
                    out.last_mut().expect("just pushed")
                }
            };
            if arm {
                e.arm = true;
            } else {
                e.x86 = true;
            }
        }
    }
    for (rows, uefi) in [(UEFI, true), (BMS, false)] {
        for (family, bits, version) in expand(rows) {
            if let Some(e) = out
                .iter_mut()
                .find(|e| e.family == family.key && e.bits == bits && e.version == version)
            {
                if uefi {
                    e.uefi = true;
                } else {
                    e.bms = true;
                }
            }
        }
    }
    out
}

fn expand(rows: &'static [Row]) -> impl Iterator<Item = (&'static Family, u8, String)> {
    rows.iter().flat_map(|&(key, bits, versions)| {
        let family = family(key).expect("every table row names a family of FAMILIES");
        versions
            .split('/')
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .map(move |v| (family, bits, v))
    })
}

fn name_of(family: &Family, version: &str, bits: u8) -> String {
    let mut name = family.prefix.to_string();
    if !version.is_empty() {
        name.push(' ');
        name.push_str(version);
    }
    name.push_str(family.suffix);
    name.push_str(&format!(" {bits}bit"));
    name
}

/// The family with this key.
pub fn family(key: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.key == key)
}

/// The catalogue entry with exactly this `__os_version` name (case-insensitive).
pub fn find_by_name(name: &str) -> Option<&'static OsVersion> {
    let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
    entries()
        .iter()
        .find(|e| e.name.eq_ignore_ascii_case(&name))
}

/// The `__os_version` for an OS outside the lists: `Other Linux(64 bit)`,
/// `Other Windows(32 bit)` (the spec's default is `Other Linux(64 bit)`).
pub fn other_name(os_type: CatalogOsType, bits: u8) -> String {
    let what = match os_type {
        CatalogOsType::Windows => "Windows",
        CatalogOsType::Linux | CatalogOsType::Other => "Linux",
    };
    format!("Other {what}({bits} bit)")
}

/// The entry for a Linux (or BSD) distribution: `distro` is the os-release `ID`, `version`
/// its `VERSION_ID` or the release file's version (`7.9`, `22.04`, `12`, `15 SP5`).
/// An exact version wins; otherwise the newest listed release of the same major version that
/// is not newer than `version` (the oldest one when all are newer).
pub fn find(distro: &str, version: &str, bits: u8, arch: CatalogArch) -> Option<CatalogMatch> {
    let distro = distro.to_ascii_lowercase();
    let wanted = Version::parse(version);
    let on_arch = |e: &&OsVersion| match arch {
        CatalogArch::X86 => e.x86,
        CatalogArch::Arm => e.arm,
    };
    let candidates: Vec<&'static OsVersion> = entries()
        .iter()
        .filter(|e| e.bits == bits)
        .filter(on_arch)
        .filter(|e| family(e.family).is_some_and(|f| f.distro_ids.contains(&distro.as_str())))
        .collect();
    if let Some(entry) = candidates
        .iter()
        .find(|e| Version::parse(&e.version) == wanted)
    {
        return Some(CatalogMatch { entry, exact: true });
    }
    let major = wanted.numbers()?.first().copied()?;
    let mut same_major: Vec<(&'static OsVersion, Vec<u64>)> = candidates
        .iter()
        .filter_map(|e| {
            let n = Version::parse(&e.version).numbers()?.to_vec();
            (n.first() == Some(&major)).then_some((*e, n))
        })
        .collect();
    same_major.sort_by(|a, b| a.1.cmp(&b.1));
    let want = wanted.numbers()?;
    let best = same_major
        .iter()
        .rev()
        .find(|(_, n)| n.as_slice() <= want)
        .or_else(|| same_major.first())?;
    Some(CatalogMatch {
        entry: best.0,
        exact: false,
    })
}

/// The entry for a Windows product name as the registry states it (`Windows Server 2022
/// Datacenter`, `Windows 10 Pro`): the longest listed version the product name starts with.
pub fn find_windows(product_name: &str, bits: u8) -> Option<CatalogMatch> {
    let product = product_name
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let product = product.strip_prefix("Microsoft ").unwrap_or(&product);
    let product = product.strip_prefix("Windows ").unwrap_or(product);
    let mut best: Option<&'static OsVersion> = None;
    for e in entries()
        .iter()
        .filter(|e| e.family == "windows" && e.bits == bits)
    {
        let v = e.version.as_str();
        let matches = product.eq_ignore_ascii_case(v)
            || (product.len() > v.len()
                && product.is_char_boundary(v.len())
                && product[..v.len()].eq_ignore_ascii_case(v)
                && product[v.len()..].starts_with(' '));
        if matches && best.is_none_or(|b| v.len() > b.version.len()) {
            best = Some(e);
        }
    }
    best.map(|entry| CatalogMatch {
        exact: entry.version.eq_ignore_ascii_case(product),
        entry,
    })
}

/// The end of support §6 gives for `version` of `family` (a [`Family::key`]): the exact
/// version, else the longest listed version it is a point release of (`7` for `7.9`,
/// `Server 2019` for `Server 2019 Datacenter`).
pub fn end_of_life(family: &str, version: &str) -> Option<EndOfLife> {
    let covers = |listed: &str| {
        version == listed
            || version.strip_prefix(listed).is_some_and(|rest| {
                rest.starts_with('.') || (family == "windows" && rest.starts_with(' '))
            })
    };
    let (_, _, (y, m, d)) = EOL
        .iter()
        .filter(|(f, v, _)| *f == family && covers(v))
        .max_by_key(|(_, v, _)| v.len())?;
    if *y == 0 {
        return Some(EndOfLife::Stopped);
    }
    let month = Month::try_from(*m).ok()?;
    let day = if *d == 0 { month.length(*y) } else { *d };
    Date::from_calendar_date(*y, month, day)
        .ok()
        .map(EndOfLife::On)
}

/// A version as a list of numbers when it is one (`12.0.0` = `12` = `12.0`), else its text.
#[derive(Debug, PartialEq, Eq)]
enum Version {
    Numbers(Vec<u64>),
    Text(String),
}

impl Version {
    fn parse(s: &str) -> Version {
        let parts: Option<Vec<u64>> = s.trim().split('.').map(|p| p.parse().ok()).collect();
        match parts {
            Some(mut n) if !n.is_empty() => {
                while n.len() > 1 && n.last() == Some(&0) {
                    n.pop();
                }
                Version::Numbers(n)
            }
            _ => Version::Text(
                s.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_ascii_lowercase(),
            ),
        }
    }

    fn numbers(&self) -> Option<&[u64]> {
        match self {
            Version::Numbers(n) => Some(n),
            Version::Text(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn names_follow_the_seed() {
        for name in [
            "CentOS 7.9 64bit",
            "Ubuntu 22.04 server 64bit",
            "Debian GNU/Linux 12.0.0 64bit",
            "Windows Server 2022 Datacenter 64bit",
            "openEuler 22.03 SP1 64bit",
            "SUSE Linux Enterprise Server 15 SP5 64bit",
            "Oracle Linux Server release 9.6 64bit",
            "Red Hat Linux Enterprise 6.6 32bit",
            "Kali Linux 64bit",
        ] {
            assert!(find_by_name(name).is_some(), "{name} missing");
        }
        let c = find_by_name("centos 7.9 64BIT").unwrap();
        assert_eq!(
            (c.platform, c.os_type.as_str(), c.bits),
            ("CentOS", "Linux", 64)
        );
        assert!(c.x86 && c.arm && !c.uefi && c.bms);
        let names: std::collections::HashSet<_> = entries().iter().map(|e| &e.name).collect();
        assert_eq!(names.len(), entries().len(), "names are unique");
    }

    #[test]
    fn every_uefi_and_bms_row_names_an_import_list_entry() {
        for (family, bits, version) in expand(UEFI).chain(expand(BMS)) {
            assert!(
                entries()
                    .iter()
                    .any(|e| e.family == family.key && e.bits == bits && e.version == version),
                "{} {version} {bits}bit",
                family.key
            );
        }
        for (f, v, _) in EOL {
            assert!(family(f).is_some(), "EOL row names unknown family {f} {v}");
        }
    }

    #[test]
    fn finds_detected_linux_versions() {
        let m = find("centos", "7.9", 64, CatalogArch::X86).unwrap();
        assert_eq!((m.entry.name.as_str(), m.exact), ("CentOS 7.9 64bit", true));
        let m = find("debian", "12", 64, CatalogArch::X86).unwrap();
        assert_eq!(m.entry.name, "Debian GNU/Linux 12.0.0 64bit");
        assert!(m.exact);
        let m = find("debian", "12.15", 64, CatalogArch::Arm).unwrap();
        assert_eq!(
            (m.entry.name.as_str(), m.exact),
            ("Debian GNU/Linux 12.11.0 64bit", false)
        );
        let m = find("ubuntu", "22.04", 64, CatalogArch::X86).unwrap();
        assert!(m.entry.uefi && m.exact);
        let m = find("openEuler", "22.03", 64, CatalogArch::Arm).unwrap();
        assert_eq!(m.entry.name, "openEuler 22.03 64bit");
        let m = find("sles", "15 SP5", 64, CatalogArch::X86).unwrap();
        assert_eq!(m.entry.name, "SUSE Linux Enterprise Server 15 SP5 64bit");
        // i386 Debian is not on the lists; nor is Debian 8 on ARM.
        assert!(find("debian", "12", 32, CatalogArch::X86).is_none());
        assert!(find("debian", "8.8", 64, CatalogArch::Arm).is_none());
        assert!(find("gentoo", "2.15", 64, CatalogArch::X86).is_none());
        // CentOS Stream shares the os-release ID `centos`.
        let m = find("centos", "9", 64, CatalogArch::X86).unwrap();
        assert_eq!(m.entry.name, "CentOS Stream 9 64bit");
    }

    #[test]
    fn finds_windows_products() {
        let m = find_windows("Windows Server 2022 Datacenter", 64).unwrap();
        assert_eq!(
            (m.entry.name.as_str(), m.exact),
            ("Windows Server 2022 Datacenter 64bit", true)
        );
        assert!(m.entry.uefi);
        let m = find_windows("Windows Server 2012 R2 Standard Evaluation", 64).unwrap();
        assert_eq!(
            (m.entry.name.as_str(), m.exact),
            ("Windows Server 2012 R2 Standard 64bit", false)
        );
        let m = find_windows("Windows 10 Pro", 64).unwrap();
        assert_eq!(m.entry.name, "Windows 10 64bit");
        assert!(find_windows("Windows 7 Professional", 32).is_none());
        assert_eq!(
            other_name(CatalogOsType::Windows, 32),
            "Other Windows(32 bit)"
        );
        assert_eq!(other_name(CatalogOsType::Linux, 64), "Other Linux(64 bit)");
    }

    #[test]
    fn end_of_life_dates() {
        let today = date!(2026 - 11 - 23);
        let debian = find_by_name("Debian GNU/Linux 12.0.0 64bit").unwrap();
        assert_eq!(
            debian.end_of_life(),
            Some(EndOfLife::On(date!(2026 - 06 - 10)))
        );
        assert_eq!(debian.past_end_of_life(today), Some(true));
        assert_eq!(debian.past_end_of_life(date!(2026 - 06 - 10)), Some(false));
        let ubuntu = find_by_name("Ubuntu 22.04 server 64bit").unwrap();
        assert_eq!(
            ubuntu.end_of_life(),
            Some(EndOfLife::On(date!(2027 - 04 - 30)))
        );
        assert_eq!(ubuntu.past_end_of_life(today), Some(false));
        let centos = find_by_name("CentOS 7.9 64bit").unwrap();
        assert_eq!(centos.past_end_of_life(today), Some(true));
        let w = find_by_name("Windows Server 2019 Datacenter 64bit").unwrap();
        assert_eq!(w.end_of_life(), Some(EndOfLife::On(date!(2029 - 01 - 09))));
        let w = find_by_name("Windows Server 2012 R2 Standard 64bit").unwrap();
        assert_eq!(w.end_of_life(), Some(EndOfLife::On(date!(2023 - 10 - 10))));
        let w = find_by_name("Windows Server 2008 R2 Enterprise 64bit").unwrap();
        assert_eq!(w.end_of_life(), Some(EndOfLife::Stopped));
        let s = find_by_name("SUSE Linux Enterprise Server 15 SP7 64bit").unwrap();
        assert_eq!(s.end_of_life(), None, "15 is not a point release of 15 SP7");
        let o = find_by_name("openEuler 22.03 SP1 64bit").unwrap();
        assert_eq!(o.end_of_life(), Some(EndOfLife::On(date!(2024 - 12 - 31))));
    }
}
