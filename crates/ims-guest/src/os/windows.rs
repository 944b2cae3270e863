//! Windows: the SOFTWARE and SYSTEM registry hives (product, version, build, edition,
//! architecture, hostname, Cloudbase-Init) and the PE header of cmd.exe.

use nt_hive::{Hive, KeyNode};

use super::binary::pe_arch;
use super::{EXECUTABLE_HEAD, OsFacts, OsType};
use crate::error::{GuestError, Result};
use crate::fs::{GuestFs, MAX_FILE_BYTES};

/// Where Windows keeps its system root, tried in order (lookups are case-insensitive).
const SYSTEM_ROOTS: &[&str] = &["/Windows", "/WINNT"];
/// Most Uninstall entries looked at for Cloudbase-Init.
const MAX_UNINSTALL_KEYS: usize = 10_000;

fn hive_error(what: &'static str, e: nt_hive::NtHiveError) -> GuestError {
    GuestError::Filesystem {
        fs: what,
        message: e.to_string(),
    }
}

fn string(key: &KeyNode<&[u8]>, name: &str) -> Option<String> {
    let v = key.value(name)?.ok()?;
    v.string_data().ok().filter(|s| !s.is_empty())
}

fn dword(key: &KeyNode<&[u8]>, name: &str) -> Option<u32> {
    key.value(name)?.ok()?.dword_data().ok()
}

pub fn detect(fs: &dyn GuestFs) -> Result<Option<OsFacts>> {
    let mut root = None;
    for r in SYSTEM_ROOTS {
        if fs.exists(&format!("{r}/System32/config/SOFTWARE"))? {
            root = Some(*r);
            break;
        }
    }
    let Some(root) = root else { return Ok(None) };
    let mut f = OsFacts {
        os_type: OsType::Windows,
        distro: Some("windows".into()),
        ..OsFacts::default()
    };
    let software = fs
        .read_file(&format!("{root}/System32/config/SOFTWARE"), MAX_FILE_BYTES)?
        .unwrap_or_default();
    let hive = Hive::new(software.as_slice()).map_err(|e| hive_error("SOFTWARE hive", e))?;
    let sw = hive
        .root_key_node()
        .map_err(|e| hive_error("SOFTWARE hive", e))?;
    if let Some(Ok(cv)) = sw.subpath("Microsoft\\Windows NT\\CurrentVersion") {
        f.product_name = string(&cv, "ProductName");
        f.edition = string(&cv, "EditionID");
        f.build = string(&cv, "CurrentBuildNumber").or_else(|| string(&cv, "CurrentBuild"));
        f.service_pack = string(&cv, "CSDVersion");
        f.version = match (
            dword(&cv, "CurrentMajorVersionNumber"),
            dword(&cv, "CurrentMinorVersionNumber"),
        ) {
            (Some(maj), Some(min)) => Some(format!("{maj}.{min}")),
            _ => string(&cv, "CurrentVersion"),
        };
        f.full_version = match (&f.version, &f.build) {
            (Some(v), Some(b)) => Some(format!("{v}.{b}")),
            _ => f.version.clone(),
        };
    }
    if let Some(Ok(un)) = sw.subpath("Microsoft\\Windows\\CurrentVersion\\Uninstall")
        && let Some(Ok(keys)) = un.subkeys()
    {
        for key in keys.take(MAX_UNINSTALL_KEYS).flatten() {
            if string(&key, "DisplayName").is_some_and(|n| n.starts_with("Cloudbase-Init")) {
                f.cloud_init = Some("cloudbase-init".into());
            }
        }
    }
    if let Some(system) = fs.read_file(&format!("{root}/System32/config/SYSTEM"), MAX_FILE_BYTES)? {
        read_system_hive(&system, &mut f)?;
    }
    if f.arch.is_none()
        && let Some(head) = fs.read_file(&format!("{root}/System32/cmd.exe"), EXECUTABLE_HEAD)?
        && let Some((arch, bits)) = pe_arch(&head)
    {
        f.arch = Some(arch.into());
        f.bits = Some(bits);
    }
    Ok(Some(f))
}

fn read_system_hive(bytes: &[u8], f: &mut OsFacts) -> Result<()> {
    let hive = Hive::new(bytes).map_err(|e| hive_error("SYSTEM hive", e))?;
    let sys = hive
        .root_key_node()
        .map_err(|e| hive_error("SYSTEM hive", e))?;
    let current = sys
        .subpath("Select")
        .and_then(|k| k.ok())
        .and_then(|k| dword(&k, "Current"))
        .unwrap_or(1);
    let Some(Ok(cs)) = sys.subkey(&format!("ControlSet{current:03}")) else {
        return Ok(());
    };
    if let Some(Ok(env)) = cs.subpath("Control\\Session Manager\\Environment")
        && let Some(pa) = string(&env, "PROCESSOR_ARCHITECTURE")
    {
        let (arch, bits) = match pa.to_ascii_uppercase().as_str() {
            "AMD64" => ("x86_64", 64),
            "X86" => ("i386", 32),
            "ARM64" => ("aarch64", 64),
            _ => ("", 0),
        };
        if bits != 0 {
            f.arch = Some(arch.into());
            f.bits = Some(bits);
        }
    }
    f.hostname = cs
        .subpath("Services\\Tcpip\\Parameters")
        .and_then(|k| k.ok())
        .and_then(|k| string(&k, "Hostname"))
        .or_else(|| {
            cs.subpath("Control\\ComputerName\\ComputerName")
                .and_then(|k| k.ok())
                .and_then(|k| string(&k, "ComputerName"))
        });
    if f.cloud_init.is_none() && matches!(cs.subpath("Services\\cloudbase-init"), Some(Ok(_))) {
        f.cloud_init = Some("cloudbase-init".into());
    }
    Ok(())
}
