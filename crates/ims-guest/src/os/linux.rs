//! Linux: os-release and the older release files, ELF architecture, hostname, fstab, kernels,
//! package manager and cloud-init.

use super::binary::elf_arch;
use super::{EXECUTABLE_HEAD, OsFacts, OsType, read_text};
use crate::error::Result;
use crate::fs::GuestFs;

/// Executables whose ELF header tells the architecture, in order of preference.
const ARCH_PROBES: &[&str] = &[
    "/usr/bin/bash",
    "/bin/bash",
    "/usr/bin/ls",
    "/bin/ls",
    "/usr/bin/cat",
    "/bin/sh",
    "/sbin/init",
    "/usr/lib/systemd/systemd",
    "/bin/busybox",
];

/// Release files read when there is no os-release, or to refine its version.
const RELEASE_FILES: &[(&str, &str)] = &[
    ("/etc/centos-release", "centos"),
    ("/etc/rocky-release", "rocky"),
    ("/etc/almalinux-release", "almalinux"),
    ("/etc/oracle-release", "ol"),
    ("/etc/openEuler-release", "openeuler"),
    ("/etc/fedora-release", "fedora"),
    ("/etc/redhat-release", "rhel"),
    ("/etc/system-release", ""),
    ("/etc/SuSE-release", "sles"),
];

/// Distributions whose os-release carries only the major version while the release file
/// states major.minor (`CentOS Linux release 7.9.2009`).
const MINOR_FROM_RELEASE_FILE: &[&str] = &["centos", "rhel", "rocky", "almalinux", "ol"];

/// Parses os-release `KEY=value` lines (quotes and backslash escapes removed).
pub fn parse_os_release(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.replace("\\\"", "\"")))
        })
        .collect()
}

fn get<'a>(kv: &'a [(String, String)], key: &str) -> Option<&'a str> {
    kv.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// `7.9.2009` from `CentOS Linux release 7.9.2009 (Core)`.
pub fn release_file_version(text: &str) -> Option<String> {
    let after = text.split("release").nth(1)?.trim_start();
    let v: String = after
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    (!v.is_empty()).then(|| v.trim_end_matches('.').to_string())
}

fn major_minor(v: &str) -> String {
    v.split('.').take(2).collect::<Vec<_>>().join(".")
}

/// The columns of the `/etc/fstab` line that mounts `/`.
fn fstab_root_line(text: &str) -> Option<Vec<&str>> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.len() >= 2 && cols[1] == "/")
}

/// The Btrfs subvolume `/etc/fstab` mounts on `/` (its `subvol=` option), if any.
pub fn fstab_root_subvolume(fs: &dyn GuestFs) -> Result<Option<String>> {
    Ok(read_text(fs, "/etc/fstab")?.and_then(|t| {
        let cols = fstab_root_line(&t)?;
        cols.get(3)?
            .split(',')
            .find_map(|o| o.strip_prefix("subvol="))
            .map(str::to_string)
    }))
}

pub fn detect(fs: &dyn GuestFs) -> Result<Option<OsFacts>> {
    let os_release = match read_text(fs, "/etc/os-release")? {
        Some(t) => Some(t),
        None => read_text(fs, "/usr/lib/os-release")?,
    };
    let kv = os_release
        .as_deref()
        .map(parse_os_release)
        .unwrap_or_default();
    let mut release_file: Option<(String, &str)> = None;
    for (path, id) in RELEASE_FILES {
        if let Some(t) = read_text(fs, path)? {
            release_file = Some((t.trim().to_string(), id));
            break;
        }
    }
    let debian_version = read_text(fs, "/etc/debian_version")?.map(|t| t.trim().to_string());
    if kv.is_empty() && release_file.is_none() && debian_version.is_none() {
        return Ok(None);
    }
    let mut f = OsFacts {
        os_type: OsType::Linux,
        ..OsFacts::default()
    };
    f.distro = get(&kv, "ID")
        .map(str::to_ascii_lowercase)
        .or_else(|| {
            release_file
                .as_ref()
                .map(|(_, id)| id.to_string())
                .filter(|id| !id.is_empty())
        })
        .or_else(|| debian_version.as_ref().map(|_| "debian".to_string()));
    f.product_name = get(&kv, "PRETTY_NAME")
        .map(str::to_string)
        .or_else(|| release_file.as_ref().map(|(t, _)| t.clone()));
    let release_version = release_file
        .as_ref()
        .and_then(|(t, _)| release_file_version(t));
    let distro = f.distro.clone().unwrap_or_default();
    f.version = match get(&kv, "VERSION_ID") {
        Some(v) if !v.contains('.') && MINOR_FROM_RELEASE_FILE.contains(&distro.as_str()) => {
            release_version
                .as_deref()
                .map(major_minor)
                .or_else(|| Some(v.to_string()))
        }
        Some(v) => Some(v.to_string()),
        None => release_version.as_deref().map(major_minor).or_else(|| {
            debian_version
                .as_deref()
                .map(|d| d.split('.').next().unwrap_or(d).to_string())
        }),
    };
    f.full_version = if distro == "debian" {
        debian_version.clone()
    } else {
        release_version.or_else(|| f.version.clone())
    };
    for path in ARCH_PROBES {
        if let Some(head) = fs.read_file(path, EXECUTABLE_HEAD)?
            && let Some((arch, bits)) = elf_arch(&head)
        {
            f.arch = Some(arch.to_string());
            f.bits = Some(bits);
            break;
        }
    }
    f.hostname = read_text(fs, "/etc/hostname")?
        .and_then(|h| h.lines().next().map(|l| l.trim().to_string()))
        .filter(|h| !h.is_empty());
    f.fstab_root = read_text(fs, "/etc/fstab")?
        .and_then(|t| fstab_root_line(&t).map(|cols| cols[0].to_string()));
    let mut kernels = Vec::new();
    for name in fs.list_dir("/boot")?.unwrap_or_default() {
        if let Some(v) = name.strip_prefix("vmlinuz-") {
            kernels.push(v.to_string());
        }
    }
    for dir in ["/lib/modules", "/usr/lib/modules"] {
        kernels.extend(fs.list_dir(dir)?.unwrap_or_default());
    }
    kernels.sort();
    kernels.dedup();
    f.kernels = kernels;
    let dpkg_status = read_text_big(fs, "/var/lib/dpkg/status")?;
    if dpkg_status.is_some() || fs.exists("/usr/bin/dpkg")? {
        f.package_format = Some("deb".into());
        f.package_manager = Some("apt".into());
    } else if fs.exists("/var/lib/rpm")? || fs.exists("/usr/lib/sysimage/rpm")? {
        f.package_format = Some("rpm".into());
        f.package_manager = Some(
            if fs.exists("/usr/bin/zypper")? {
                "zypper"
            } else if fs.exists("/usr/bin/dnf")? || !distro.starts_with("centos") {
                "dnf"
            } else {
                "yum"
            }
            .into(),
        );
    }
    let dpkg_cloud_init = dpkg_status
        .as_deref()
        .is_some_and(|s| dpkg_lists_installed(s, "cloud-init"));
    if dpkg_cloud_init || fs.exists("/usr/bin/cloud-init")? || fs.exists("/etc/cloud/cloud.cfg")? {
        f.cloud_init = Some("cloud-init".into());
    }
    Ok(Some(f))
}

/// Largest dpkg status file read (a full desktop's is ~5 MiB).
const MAX_DPKG_STATUS: usize = 32 << 20;

fn read_text_big(fs: &dyn GuestFs, path: &str) -> Result<Option<String>> {
    Ok(fs
        .read_file(path, MAX_DPKG_STATUS)?
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// Whether the dpkg status database lists `package` as installed.
pub fn dpkg_lists_installed(status: &str, package: &str) -> bool {
    status.split("\n\n").any(|stanza| {
        let mut name = false;
        let mut installed = false;
        for l in stanza.lines() {
            if let Some(p) = l.strip_prefix("Package: ") {
                name = p.trim() == package;
            } else if let Some(s) = l.strip_prefix("Status: ") {
                installed = s.trim().ends_with(" installed");
            }
        }
        name && installed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_parsing() {
        let kv = parse_os_release("# c\nNAME=\"CentOS Linux\"\nVERSION_ID='7'\nID=centos\n\nBAD\n");
        assert_eq!(get(&kv, "NAME"), Some("CentOS Linux"));
        assert_eq!(get(&kv, "VERSION_ID"), Some("7"));
        assert_eq!(get(&kv, "ID"), Some("centos"));
    }

    #[test]
    fn release_file_versions() {
        assert_eq!(
            release_file_version("CentOS Linux release 7.9.2009 (Core)").as_deref(),
            Some("7.9.2009")
        );
        assert_eq!(
            release_file_version("openEuler release 22.03 (LTS-SP1)").as_deref(),
            Some("22.03")
        );
        assert_eq!(release_file_version("nothing here"), None);
        assert_eq!(major_minor("7.9.2009"), "7.9");
    }

    #[test]
    fn dpkg_status() {
        let s = "Package: cloud-init\nStatus: install ok installed\n\nPackage: x\nStatus: deinstall ok config-files\n";
        assert!(dpkg_lists_installed(s, "cloud-init"));
        assert!(!dpkg_lists_installed(s, "x"));
    }
}
