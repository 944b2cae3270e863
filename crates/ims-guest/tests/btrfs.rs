//! Btrfs: `inspect` and the file reader on real filesystems made by btrfs-progs.
//!
//! * `mkfs.btrfs --rootdir` (no root needed) over a small Linux tree built here: a single
//!   device image, multi-level trees (a directory of 3000 entries), a real executable read
//!   back byte for byte. Needs `mkfs.btrfs` (`scripts/test.sh` installs btrfs-progs); without it
//!   the test fails unless `IMS_SKIP_BTRFS=1` says to skip on purpose.
//! * `tests/data/btrfs-subvolumes.img.zst` (made by `tests/data/make-btrfs-fixture.sh`, which
//!   needs root and a loop mount): the OS in subvolume `@`, the default subvolume a snapshot
//!   whose fstab mounts `subvol=@`, zlib/zstd/LZO-compressed regular and inline extents.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use ims_guest::fs::btrfs::BtrfsFs;
use ims_guest::fs::{FsKind, GuestFs};
use ims_guest::{Firmware, OsType, TableKind, Volume};

const FIXTURE: &str = "tests/data/btrfs-subvolumes.img.zst";
/// Entries in the big directory of the mkfs image: enough to need internal tree nodes.
const BIG_DIR_ENTRIES: usize = 3000;

fn mkfs_btrfs() -> Option<PathBuf> {
    ["mkfs.btrfs", "/usr/sbin/mkfs.btrfs", "/sbin/mkfs.btrfs"]
        .iter()
        .map(PathBuf::from)
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// Bytes of a 64-bit x86 ELF executable: the test binary itself.
fn an_executable() -> Vec<u8> {
    std::fs::read(std::env::current_exe().unwrap()).unwrap()
}

#[test]
fn mkfs_rootdir_image_is_inspected_and_read_exactly() {
    let Some(mkfs) = mkfs_btrfs() else {
        if std::env::var("IMS_SKIP_BTRFS").as_deref() == Ok("1") {
            eprintln!("IMS_SKIP_BTRFS=1: Btrfs mkfs test skipped on purpose");
            return;
        }
        panic!("mkfs.btrfs not found: apt-get install btrfs-progs, or IMS_SKIP_BTRFS=1 to skip");
    };
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("root");
    write(
        &tree,
        "usr/lib/os-release",
        b"NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n\
          PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
    );
    std::os::unix::fs::symlink("../usr/lib/os-release", tree.join("etc/os-release"))
        .or_else(|_| {
            std::fs::create_dir_all(tree.join("etc"))?;
            std::os::unix::fs::symlink("../usr/lib/os-release", tree.join("etc/os-release"))
        })
        .unwrap();
    write(&tree, "etc/debian_version", b"12.15\n");
    write(&tree, "etc/hostname", b"btrfs-mkfs\n");
    write(
        &tree,
        "etc/fstab",
        b"# static file system information\nLABEL=root / btrfs defaults 0 1\n",
    );
    write(&tree, "etc/cloud/cloud.cfg", b"users: [default]\n");
    write(&tree, "boot/vmlinuz-6.1.0-28-amd64", b"not a kernel");
    write(&tree, "usr/bin/dpkg", b"#!/bin/sh\n");
    let exe = an_executable();
    write(&tree, "usr/bin/bash", &exe);
    for i in 0..BIG_DIR_ENTRIES {
        write(
            &tree,
            &format!("usr/share/doc/package-{i:05}"),
            format!("{i}\n").as_bytes(),
        );
    }
    let img = tmp.path().join("btrfs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    let out = Command::new(&mkfs)
        .args(["-q", "-f", "--rootdir"])
        .arg(&tree)
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mkfs.btrfs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let i = ims_guest::inspect_path(&img).unwrap();
    assert_eq!(i.partition_table.kind, TableKind::None);
    assert_eq!(i.volumes[0].fs, Some(FsKind::Btrfs));
    let root = i.root.as_ref().expect("an OS on the Btrfs volume");
    assert_eq!((root.fs, root.subvolume.as_deref()), (FsKind::Btrfs, None));
    let f = &root.facts;
    assert_eq!(f.os_type, OsType::Linux);
    assert_eq!(f.distro.as_deref(), Some("debian"));
    assert_eq!(f.version.as_deref(), Some("12"));
    assert_eq!(f.arch.as_deref(), Some(std::env::consts::ARCH));
    assert_eq!(f.bits, Some(64));
    assert_eq!(f.hostname.as_deref(), Some("btrfs-mkfs"));
    assert_eq!(f.fstab_root.as_deref(), Some("LABEL=root"));
    assert_eq!(f.kernels, vec!["6.1.0-28-amd64".to_string()]);
    assert_eq!(f.package_manager.as_deref(), Some("apt"));
    assert_eq!(f.cloud_init.as_deref(), Some("cloud-init"));
    assert_eq!(i.firmware, Firmware::Unknown);
    assert!(i.warnings.is_empty(), "{:?}", i.warnings);

    let fs = BtrfsFs::open(Volume::whole(Arc::new(std::fs::File::open(&img).unwrap()))).unwrap();
    assert_eq!(fs.subvolume(), (5, None));
    assert_eq!(
        fs.read_file("/usr/bin/bash", usize::MAX).unwrap().unwrap(),
        exe
    );
    // A bounded read returns only the head.
    assert_eq!(
        fs.read_file("/usr/bin/bash", 100).unwrap().unwrap(),
        &exe[..100]
    );
    let mut docs = fs.list_dir("/usr/share/doc").unwrap().unwrap();
    docs.sort();
    assert_eq!(docs.len(), BIG_DIR_ENTRIES);
    assert_eq!(docs[1234], "package-01234");
    for n in [0, 1777, BIG_DIR_ENTRIES - 1] {
        assert_eq!(
            fs.read_file(&format!("/usr/share/doc/package-{n:05}"), 64)
                .unwrap()
                .unwrap(),
            format!("{n}\n").into_bytes()
        );
    }
    assert_eq!(
        fs.read_file("/usr/share/doc/package-99999", 64).unwrap(),
        None
    );
    assert!(fs.exists("/etc/os-release").unwrap());
    assert_eq!(fs.read_file("/usr/share/doc", 64).unwrap(), None);
}

fn fixture() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let packed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    zstd::stream::decode_all(&packed[..]).unwrap()
}

/// The text files make-btrfs-fixture.sh writes, regenerated.
fn lines(prefix: &str, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| format!("{prefix} line {i:06}\n"))
        .collect::<String>()
        .into_bytes()
}

#[test]
fn os_in_a_subvolume_named_by_fstab_is_found() {
    let i = ims_guest::inspect(Arc::new(fixture())).unwrap();
    let root = i.root.as_ref().expect("an OS in a subvolume");
    // The default subvolume is the snapshot; its fstab mounts `subvol=@` on `/`.
    assert_eq!(root.subvolume.as_deref(), Some("@"));
    let f = &root.facts;
    assert_eq!(f.hostname.as_deref(), Some("btrfs-guest"));
    assert_eq!(f.distro.as_deref(), Some("fedora"));
    assert_eq!(f.version.as_deref(), Some("40"));
    assert_eq!(f.arch.as_deref(), Some("x86_64"));
    assert_eq!(f.bits, Some(64));
    assert_eq!(f.kernels, vec!["6.8.0-btrfs".to_string()]);
    assert_eq!(f.package_manager.as_deref(), Some("dnf"));
    assert_eq!(f.cloud_init.as_deref(), Some("cloud-init"));
    assert_eq!(
        f.fstab_root.as_deref(),
        Some("UUID=5eed0000-0000-4000-8000-000000000001")
    );
}

#[test]
fn subvolumes_default_and_compressed_extents() {
    let fs = BtrfsFs::open(Volume::whole(Arc::new(fixture()))).unwrap();
    assert_eq!(fs.subvolume().1, Some("@snapshots/1"));
    assert_eq!(
        fs.read_file("/etc/hostname", 64).unwrap().unwrap(),
        b"old-snapshot\n"
    );
    let names: Vec<String> = fs.subvolumes().unwrap().into_iter().map(|s| s.1).collect();
    assert_eq!(names, ["@", "@home", "@snapshots/1"]);

    let at = fs.with_subvolume_path("/@").unwrap().expect("subvolume @");
    // Inline zstd extent, reached through a relative symlink.
    let os_release = at.read_file("/etc/os-release", 1 << 16).unwrap().unwrap();
    assert!(os_release.starts_with(b"NAME=\"Fedora Linux\"\n"));
    assert_eq!(os_release.len(), 1030);
    // Regular zstd extents (128 KiB each), then zlib ones.
    let bash = at.read_file("/usr/bin/bash", usize::MAX).unwrap().unwrap();
    assert_eq!(&bash[..4], b"\x7fELF");
    assert_eq!(
        &bash[64..],
        &(0..7800)
            .map(|i| format!("line {i:06} of a compressible executable\n"))
            .collect::<String>()
            .into_bytes()[..]
    );
    assert_eq!(
        at.read_file("/usr/lib/zlib.txt", usize::MAX)
            .unwrap()
            .unwrap(),
        lines("zlib", 20000)
    );
    // A read that ends inside a compressed extent.
    assert_eq!(
        at.read_file("/usr/lib/zlib.txt", 200_000).unwrap().unwrap(),
        &lines("zlib", 20000)[..200_000]
    );
    // Uncompressed regular extent: checked against the sha256 written beside it.
    let random = at
        .read_file("/usr/lib/random.bin", usize::MAX)
        .unwrap()
        .unwrap();
    assert_eq!(random.len(), 24000);
    let want = at
        .read_file("/usr/lib/random.sha256", 128)
        .unwrap()
        .unwrap();
    assert_eq!(sha256_hex(&random), String::from_utf8_lossy(&want).trim());
    // LZO (compress-force=lzo: many segments per extent, sector padding) reads exactly.
    let lzo = at.read_file("/usr/lib/lzo.txt", 1 << 20).unwrap().unwrap();
    assert!(lzo == lines("lzo", 20000), "lzo.txt differs");
    // The subvolume @home is reachable as a directory of the top level.
    let top = fs.with_subvolume(5).unwrap();
    let mut top_names = top.list_dir("/").unwrap().unwrap();
    top_names.sort();
    assert_eq!(top_names, ["@", "@home", "@snapshots"]);
    assert!(top.exists("/@/etc/fstab").unwrap());
    assert_eq!(
        top.list_dir("/@home").unwrap().unwrap(),
        Vec::<String>::new()
    );
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// The fixture with some bytes replaced, without copying its 114 MiB per round.
struct Patched {
    base: Arc<Vec<u8>>,
    patches: std::collections::BTreeMap<u64, u8>,
}

impl ims_diskfmt::ReadAt for Patched {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.base.read_at(offset, buf)?;
        for (&at, &b) in self.patches.range(offset..offset + n as u64) {
            buf[(at - offset) as usize] = b;
        }
        Ok(n)
    }

    fn len(&self) -> u64 {
        self.base.len() as u64
    }
}

/// Corrupted copies of the fixture's metadata, re-sealed with valid checksums so the damage
/// reaches the parsers, give answers or errors, never a panic (the stable-toolchain stand-in
/// for the guest_filesystems fuzz target's Btrfs input).
#[test]
fn corrupted_btrfs_never_panics() {
    const NODE: usize = 16384;
    let base = Arc::new(fixture());
    // Bytes that matter: the superblock and every tree node (nodes start with the
    // filesystem's checksum of themselves).
    let nodes: Vec<usize> = (0..base.len() / NODE)
        .map(|n| n * NODE)
        .filter(|&at| {
            let n = &base[at..at + NODE];
            u32::from_le_bytes(n[..4].try_into().unwrap()) == crc32c::crc32c(&n[0x20..])
                && n.iter().any(|&b| b != 0)
        })
        .collect();
    assert!(nodes.len() >= 5, "tree nodes found: {}", nodes.len());
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut outcomes = [0usize; 2];
    for round in 0..300 {
        let (start, len) = if round % 5 == 0 {
            (0x10000, 4096)
        } else {
            (nodes[(next() % nodes.len() as u64) as usize], NODE)
        };
        let mut block = base[start..start + len].to_vec();
        for _ in 0..1 + next() % 6 {
            // Header fields and item headers are the interesting part of a node.
            let at = 0x20
                + (next()
                    % if round % 2 == 0 {
                        600
                    } else {
                        len as u64 - 0x20
                    }) as usize;
            block[at] = next() as u8;
        }
        let c = crc32c::crc32c(&block[0x20..]);
        block[..4].copy_from_slice(&c.to_le_bytes());
        let patches = block
            .iter()
            .enumerate()
            .filter(|&(i, b)| base[start + i] != *b)
            .map(|(i, &b)| ((start + i) as u64, b))
            .collect();
        let disk = Patched {
            base: base.clone(),
            patches,
        };
        let ok = ims_guest::inspect(Arc::new(disk)).is_ok_and(|i| i.root.is_some());
        outcomes[usize::from(ok)] += 1;
    }
    eprintln!(
        "corrupted rounds: {} found the OS, {} did not",
        outcomes[1], outcomes[0]
    );
}
