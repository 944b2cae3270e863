//! Operating-system facts read from a root filesystem: what it is, which version, which
//! architecture, and how it is set up to start in a cloud.

pub mod binary;
pub mod linux;
pub mod windows;

use crate::error::Result;
use crate::fs::GuestFs;

/// Largest small text file read (release files, hostname, fstab).
pub const MAX_TEXT_FILE: usize = 64 << 10;
/// Bytes of an executable read to learn its architecture.
pub const EXECUTABLE_HEAD: usize = 4096;

/// The OS family, as `__os_type` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OsType {
    Linux,
    Windows,
    #[default]
    Other,
}

impl OsType {
    pub fn as_str(self) -> &'static str {
        match self {
            OsType::Linux => "linux",
            OsType::Windows => "windows",
            OsType::Other => "other",
        }
    }
}

/// What an OS root filesystem says about itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OsFacts {
    pub os_type: OsType,
    /// Lower-case distribution id (`debian`, `centos`, `openeuler`, `windows`).
    pub distro: Option<String>,
    /// Major.minor as the seed's OS lists name it (`12`, `7.9`, `22.04`, `10.0`).
    pub version: Option<String>,
    /// The full product name (`Debian GNU/Linux 12 (bookworm)`, `Windows Server 2022 Datacenter`).
    pub product_name: Option<String>,
    /// The most precise version the guest states (`12.15`, `7.9.2009`, `10.0.20348`).
    pub full_version: Option<String>,
    /// Windows edition (`ServerDatacenter`) or variant (`Server`/`Client`).
    pub edition: Option<String>,
    /// Windows build number, service pack.
    pub build: Option<String>,
    pub service_pack: Option<String>,
    pub arch: Option<String>,
    pub bits: Option<u8>,
    pub hostname: Option<String>,
    /// The device spec mounted on `/` in `/etc/fstab`.
    pub fstab_root: Option<String>,
    /// Kernel versions found in `/boot` and `/lib/modules`.
    pub kernels: Vec<String>,
    /// `deb`, `rpm`.
    pub package_format: Option<String>,
    /// `apt`, `dnf`, `yum`, `zypper`.
    pub package_manager: Option<String>,
    /// `cloud-init` or `cloudbase-init` when installed.
    pub cloud_init: Option<String>,
}

/// Reads OS facts from `fs` if it looks like the root of a Linux or Windows system.
pub fn detect(fs: &dyn GuestFs) -> Result<Option<OsFacts>> {
    if let Some(f) = windows::detect(fs)? {
        return Ok(Some(f));
    }
    linux::detect(fs)
}

/// Reads a small text file, lossily decoded; `None` when absent.
pub(crate) fn read_text(fs: &dyn GuestFs, path: &str) -> Result<Option<String>> {
    Ok(fs
        .read_file(path, MAX_TEXT_FILE)?
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}
