//! The same disk inspected in every container format `ims-diskfmt` reads (raw, qcow2, VMDK,
//! VHD, VHDX, VDI; converted with `qemu-img`) gives identical answers: OS facts, boot mode,
//! partition table, volumes, root device and subvolume, seed `__os_version`.
//!
//! Disks: the committed Btrfs fixture (always), and the Ubuntu UEFI+BIOS and Windows 2022 images
//! of `IMS_OS_IMAGES_DIR` (without it that part fails unless `IMS_SKIP_OS_IMAGES=1`). Needs
//! `qemu-img` (`scripts/test.sh` installs qemu-utils).

use std::path::{Path, PathBuf};
use std::process::Command;

use ims_guest::Inspection;

/// qemu-img output format names, and the name inspection reports for each.
const FORMATS: &[(&str, &str)] = &[
    ("qcow2", "qcow2"),
    ("vmdk", "vmdk"),
    ("vpc", "vhd"),
    ("vhdx", "vhdx"),
    ("vdi", "vdi"),
];

const OS_IMAGES: &[&str] = &[
    "ubuntu2204-amd64-uefi-gpt-ext4-cloudinit.raw",
    "windows2022-x64-uefi-gpt-ntfs.raw",
];

/// Everything inspection answers except the container format itself.
fn answers(i: &Inspection) -> String {
    let volumes: Vec<String> = i
        .volumes
        .iter()
        .map(|v| format!("{} {:?} {} {:?}", v.device, v.offset, v.size, v.fs))
        .collect();
    let root = i
        .root
        .as_ref()
        .map(|r| format!("{} {:?} {:?} {:?}", r.device, r.fs, r.subvolume, r.facts));
    format!(
        "size {}\ntable {:?}\nvolumes {volumes:?}\nroot {root:?}\nfirmware {:?}\nefi {:?}\nseed {:?}\nwarnings {:?}",
        i.virtual_size,
        i.partition_table.kind,
        i.firmware,
        i.efi_loaders,
        i.seed_os(),
        i.warnings
    )
}

/// Inspects `raw` and its conversion to every format; all must agree and find an OS.
fn check_all_formats(raw: &Path, tmp: &Path) {
    let base = ims_guest::inspect_path(raw).unwrap_or_else(|e| panic!("{}: {e}", raw.display()));
    assert!(base.root.is_some(), "{}: no OS found", raw.display());
    let want = answers(&base);
    let stem = raw.file_stem().unwrap().to_string_lossy();
    for (qemu_name, reported) in FORMATS {
        let out = tmp.join(format!("{stem}.{qemu_name}"));
        let mut cmd = Command::new("qemu-img");
        cmd.args(["convert", "-f", "raw", "-O", qemu_name]);
        if *qemu_name == "vpc" {
            // Keep the exact size instead of rounding it up to a CHS geometry.
            cmd.args(["-o", "force_size=on"]);
        }
        let status = cmd
            .arg(raw)
            .arg(&out)
            .status()
            .expect("qemu-img (scripts/test.sh installs qemu-utils)");
        assert!(status.success(), "qemu-img convert to {qemu_name}");
        let i =
            ims_guest::inspect_path(&out).unwrap_or_else(|e| panic!("{stem} as {qemu_name}: {e}"));
        assert_eq!(i.disk_format, *reported);
        let got = answers(&i);
        assert_eq!(got, want, "{stem} as {qemu_name} differs from raw");
        eprintln!("{stem:<48} {qemu_name:<6} same answers");
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn btrfs_fixture_gives_the_same_answers_in_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    let packed = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/btrfs-subvolumes.img.zst"),
    )
    .unwrap();
    let raw = tmp.path().join("btrfs.raw");
    std::fs::write(&raw, zstd::stream::decode_all(&packed[..]).unwrap()).unwrap();
    check_all_formats(&raw, tmp.path());
}

#[test]
fn os_images_give_the_same_answers_in_every_format() {
    let Some(dir) = std::env::var_os("IMS_OS_IMAGES_DIR").map(PathBuf::from) else {
        if std::env::var("IMS_SKIP_OS_IMAGES").as_deref() == Ok("1") {
            eprintln!("IMS_SKIP_OS_IMAGES=1: OS image format comparison skipped on purpose");
            return;
        }
        panic!("IMS_OS_IMAGES_DIR is not set (or set IMS_SKIP_OS_IMAGES=1 to skip on purpose)");
    };
    let tmp = tempfile::tempdir().unwrap();
    for name in OS_IMAGES {
        check_all_formats(&dir.join(name), tmp.path());
    }
}
