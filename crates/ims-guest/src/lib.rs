//! Guest inspection: what is inside a disk image (partitions, LVM, filesystems, OS, version,
//! architecture, boot mode, cloud-init) read straight from its bytes, without booting it.
//!
//! Sync, no serde, no HTTP. The image's format is detected with `ims_diskfmt::probe` and its
//! virtual disk read through `ims_diskfmt::disk::open` (any format that crate has a reader for;
//! the others are refused with [`GuestError::UnsupportedDiskFormat`]); images that refer to other
//! files (backing files, extents, parents) are refused, never followed. Everything then reads
//! through [`Volume`] (bounded, checked positional reads); every limit is a named constant.

pub mod error;
pub mod fs;
pub mod lvm;
pub mod os;
pub mod part;
pub mod volume;

use std::sync::Arc;

use ims_diskfmt::disk::{Disk, DiskErrorKind, OpenOptions};
use ims_diskfmt::{Format, ReadAt};
use ims_domain::os_catalog::{self, CatalogArch, CatalogOsType, EndOfLife};

pub use error::{GuestError, Result};
pub use fs::FsKind;
pub use os::{OsFacts, OsType};
pub use part::{Partition, PartitionTable, TableKind};
pub use volume::Volume;

/// Most volumes (partitions + logical volumes) examined on one disk.
pub const MAX_VOLUMES: usize = 256;
/// Most EFI loader files listed from an ESP.
pub const MAX_ESP_LOADERS: usize = 64;
/// Most Btrfs subvolumes searched for an OS when the default subvolume holds none (each
/// search reads a few dozen files).
pub const MAX_BTRFS_SUBVOLUMES_TRIED: usize = 32;
/// Btrfs subvolume names installers put the root filesystem in, tried first.
const BTRFS_ROOT_SUBVOLUMES: &[&str] = &["@", "root", "@root", "rootfs", "@rootfs"];

/// How the guest expects to be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
    /// Both paths are set up (e.g. Ubuntu cloud images: BIOS boot partition + ESP).
    UefiAndBios,
    Unknown,
}

impl Firmware {
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
            Firmware::UefiAndBios => "uefi+bios",
            Firmware::Unknown => "unknown",
        }
    }

    /// The Glance `hw_firmware_type` to set: UEFI only when the guest cannot boot from BIOS.
    pub fn hw_firmware_type(self) -> Option<&'static str> {
        match self {
            Firmware::Uefi => Some("uefi"),
            Firmware::Bios | Firmware::UefiAndBios => Some("bios"),
            Firmware::Unknown => None,
        }
    }
}

/// A filesystem (or LVM PV / swap) found on a volume.
#[derive(Debug, Clone)]
pub struct FoundVolume {
    /// Linux-style name: `/dev/sda2`, `/dev/centos/root`, `/dev/sda` for a whole disk.
    pub device: String,
    pub offset: Option<u64>,
    pub size: u64,
    pub fs: Option<FsKind>,
}

/// The operating system found, and where.
#[derive(Debug, Clone)]
pub struct Root {
    pub device: String,
    pub fs: FsKind,
    /// The Btrfs subvolume holding the OS (`@`, `root`), `None` for the top level or other
    /// filesystems.
    pub subvolume: Option<String>,
    pub facts: OsFacts,
}

/// Everything inspection learned about a disk.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub disk_format: &'static str,
    pub virtual_size: u64,
    pub partition_table: PartitionTable,
    pub volumes: Vec<FoundVolume>,
    pub root: Option<Root>,
    pub firmware: Firmware,
    /// `.efi` files under `/EFI` on the ESP(s), e.g. `/EFI/BOOT/BOOTX64.EFI`.
    pub efi_loaders: Vec<String>,
    /// Volumes that could not be read, with the reason; inspection goes on without them.
    pub warnings: Vec<String>,
}

impl Inspection {
    pub fn facts(&self) -> Option<&OsFacts> {
        self.root.as_ref().map(|r| &r.facts)
    }

    /// What the seed's OS catalogue (`ims_domain::os_catalog`) says about the OS found:
    /// its `__os_version` (or the `Other Linux(64 bit)`-style fallback), whether it is on the
    /// import list for its architecture, on the UEFI list, and its end of support.
    pub fn seed_os(&self) -> Option<SeedOs> {
        let f = self.facts()?;
        let bits = f.bits.unwrap_or(64);
        let arch = f
            .arch
            .as_deref()
            .and_then(CatalogArch::from_arch)
            .unwrap_or(CatalogArch::X86);
        let found = match (f.os_type, f.distro.as_deref()) {
            (OsType::Windows, _) => f
                .product_name
                .as_deref()
                .and_then(|p| os_catalog::find_windows(p, bits)),
            (_, Some(distro)) => f
                .version
                .as_deref()
                .and_then(|v| os_catalog::find(distro, v, bits, arch)),
            (_, None) => None,
        };
        let os_type = match f.os_type {
            OsType::Linux => CatalogOsType::Linux,
            OsType::Windows => CatalogOsType::Windows,
            OsType::Other => CatalogOsType::Other,
        };
        Some(match found {
            Some(m) => SeedOs {
                os_version: m.entry.name.clone(),
                os_type: m.entry.os_type,
                platform: m.entry.platform,
                bits,
                listed: true,
                exact: m.exact,
                uefi_listed: m.entry.uefi,
                end_of_life: m.entry.end_of_life(),
            },
            None => SeedOs {
                os_version: os_catalog::other_name(os_type, bits),
                os_type,
                platform: match os_type {
                    CatalogOsType::Windows => "Windows",
                    _ => "Other",
                },
                bits,
                listed: false,
                exact: false,
                uefi_listed: false,
                end_of_life: None,
            },
        })
    }

    /// The `__os_version` to register the image with (see [`Inspection::seed_os`]).
    pub fn seed_os_version(&self) -> Option<String> {
        self.seed_os().map(|s| s.os_version)
    }
}

/// The inspected OS as the seed's catalogue names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedOs {
    /// `__os_version`: `CentOS 7.9 64bit`, or `Other Linux(64 bit)` when not listed.
    pub os_version: String,
    /// `__os_type`.
    pub os_type: CatalogOsType,
    /// `__platform`.
    pub platform: &'static str,
    /// `__os_bit`.
    pub bits: u8,
    /// On the seed's import list for the guest's architecture (tables 7-9 / 7-10).
    pub listed: bool,
    /// The detected version is exactly the listed one (not another point release of it).
    pub exact: bool,
    /// On the seed's UEFI list (table 7-11).
    pub uefi_listed: bool,
    /// The seed's end of support for this release, when it gives one.
    pub end_of_life: Option<EndOfLife>,
}

impl SeedOs {
    /// Whether `today` is past the end of support; `None` when the seed gives no date.
    pub fn past_end_of_life(&self, today: time::Date) -> Option<bool> {
        self.end_of_life.map(|e| e.is_past(today))
    }
}

/// Opens and inspects the image file at `path`.
pub fn inspect_path(path: &std::path::Path) -> Result<Inspection> {
    let file = std::fs::File::open(path).map_err(|source| GuestError::Opening {
        path: path.display().to_string(),
        source,
    })?;
    inspect(Arc::new(file))
}

/// The virtual disk of an image of any format, as the [`ReadAt`] [`Volume`] reads.
struct VirtualDisk(Box<dyn Disk>);

impl ReadAt for VirtualDisk {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let size = self.0.virtual_size();
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let n = usize::try_from(size - offset).map_or(buf.len(), |left| left.min(buf.len()));
        self.0
            .read_at(offset, &mut buf[..n])
            .map_err(std::io::Error::other)?;
        Ok(n)
    }

    fn len(&self) -> u64 {
        self.0.virtual_size()
    }
}

/// Opens the virtual disk inside an image file's bytes: detects the format, refuses images
/// that refer to other files or are encrypted, and decodes the rest through `ims-diskfmt`.
pub fn open_disk(image: Arc<dyn ReadAt + Send + Sync>) -> Result<(Format, Box<dyn Disk>)> {
    let probe =
        ims_diskfmt::probe::probe(&*image).map_err(|e| GuestError::Probing(e.to_string()))?;
    let format = probe.format;
    if !probe.references.is_empty() {
        let targets: Vec<&str> = probe.references.iter().map(|r| r.target.as_str()).collect();
        return Err(GuestError::ReferencesOtherFiles {
            format: format.as_str(),
            targets: targets.join(", "),
        });
    }
    if probe.encrypted || format == Format::Luks {
        return Err(GuestError::Encrypted {
            format: format.as_str(),
        });
    }
    let disk =
        ims_diskfmt::disk::open(image, format, &OpenOptions::default()).map_err(|source| {
            match source.kind() {
                DiskErrorKind::Unsupported => GuestError::UnsupportedDiskFormat {
                    format: format.as_str(),
                    reason: source.to_string(),
                },
                _ => GuestError::OpeningDisk {
                    format: format.as_str(),
                    source,
                },
            }
        })?;
    Ok((format, disk))
}

/// Inspects a disk image of any format `ims-diskfmt` reads (see [`open_disk`]).
pub fn inspect(image: Arc<dyn ReadAt + Send + Sync>) -> Result<Inspection> {
    let (format, disk) = open_disk(image)?;
    inspect_disk(format, disk)
}

/// Inspects an opened virtual disk.
pub fn inspect_disk(format: Format, disk: Box<dyn Disk>) -> Result<Inspection> {
    let disk_format = format.as_str();
    let whole = Volume::whole(Arc::new(VirtualDisk(disk)));
    let table = part::read_partition_table(&whole)?;
    let mut warnings = Vec::new();
    let mut candidates: Vec<(String, Option<u64>, Volume)> = Vec::new();
    if table.kind == TableKind::None {
        candidates.push(("/dev/sda".into(), Some(0), whole.clone()));
    }
    for p in table.partitions.iter().take(MAX_VOLUMES) {
        if matches!(
            p.part_type,
            part::PartType::Mbr(
                part::mbr_type::EXTENDED_CHS
                    | part::mbr_type::EXTENDED_LBA
                    | part::mbr_type::EXTENDED_LINUX
            )
        ) {
            continue;
        }
        let vol = whole.slice(p.start, p.size, "partition")?;
        candidates.push((format!("/dev/sda{}", p.number), Some(p.start), vol));
    }
    let mut volumes = Vec::new();
    let mut pvs = Vec::new();
    let mut opened: Vec<(String, FsKind, Volume)> = Vec::new();
    for (device, offset, vol) in candidates {
        let kind = match fs::detect(&vol) {
            Ok(k) => k,
            Err(e) => {
                warnings.push(format!("{device}: {e}"));
                None
            }
        };
        if kind == Some(FsKind::LvmPv) {
            match lvm::read_pv(&vol) {
                Ok(Some(pv)) => pvs.push(pv),
                Ok(None) => {}
                Err(e) => warnings.push(format!("{device}: {e}")),
            }
        }
        volumes.push(FoundVolume {
            device: device.clone(),
            offset,
            size: vol.len(),
            fs: kind,
        });
        if let Some(k) = kind {
            opened.push((device, k, vol));
        }
    }
    match lvm::map_logical_volumes(&pvs) {
        Ok(lvs) => {
            for lv in lvs.into_iter().take(MAX_VOLUMES) {
                let device = format!("/dev/{}/{}", lv.vg, lv.name);
                let kind = fs::detect(&lv.volume).unwrap_or_else(|e| {
                    warnings.push(format!("{device}: {e}"));
                    None
                });
                volumes.push(FoundVolume {
                    device: device.clone(),
                    offset: None,
                    size: lv.volume.len(),
                    fs: kind,
                });
                if let Some(k) = kind {
                    opened.push((device, k, lv.volume));
                }
            }
        }
        Err(e) => warnings.push(format!("LVM: {e}")),
    }
    let mut root = None;
    let mut efi_loaders = Vec::new();
    let mut iso_platforms = Vec::new();
    for (device, kind, vol) in &opened {
        if *kind == FsKind::Iso9660
            && let Ok(iso) = fs::iso9660::IsoFs::open(vol.clone())
        {
            iso_platforms.extend(iso.boot_platforms.iter().copied());
        }
        let gfs = match fs::open(*kind, vol) {
            Ok(Some(g)) => g,
            Ok(None) => continue,
            Err(e) => {
                warnings.push(format!("{device}: {e}"));
                continue;
            }
        };
        if *kind == FsKind::Fat {
            match list_efi_loaders(&*gfs) {
                Ok(l) => efi_loaders.extend(l),
                Err(e) => warnings.push(format!("{device}: {e}")),
            }
        }
        if root.is_some() {
            continue;
        }
        let found = if *kind == FsKind::Btrfs {
            drop(gfs);
            detect_on_btrfs(vol)
        } else {
            os::detect(&*gfs).map(|f| f.map(|f| (None, f)))
        };
        match found {
            Ok(Some((subvolume, facts))) => {
                root = Some(Root {
                    device: device.clone(),
                    fs: *kind,
                    subvolume,
                    facts,
                })
            }
            Ok(None) => {}
            Err(e) => warnings.push(format!("{device}: {e}")),
        }
    }
    efi_loaders.truncate(MAX_ESP_LOADERS);
    let firmware = firmware(&table, &iso_platforms);
    Ok(Inspection {
        disk_format,
        virtual_size: whole.len(),
        partition_table: table,
        volumes,
        root,
        firmware,
        efi_loaders,
        warnings,
    })
}

/// The OS on a Btrfs volume and the subvolume it is in: the default subvolume's, moved to
/// the subvolume its fstab mounts on `/` when that is another one; else the first subvolume
/// holding an OS, the usual root names (`@`, `root`) first.
fn detect_on_btrfs(vol: &Volume) -> Result<Option<(Option<String>, OsFacts)>> {
    let top = fs::btrfs::BtrfsFs::open(vol.clone())?;
    let found = |b: &fs::btrfs::BtrfsFs| -> Result<Option<(Option<String>, OsFacts)>> {
        Ok(os::detect(b)?.map(|f| (b.subvolume().1.map(str::to_string), f)))
    };
    if let Some(hit) = found(&top)? {
        // fstab may mount another subvolume on `/` (the default is a snapshot, say).
        let wanted = os::linux::fstab_root_subvolume(&top)?;
        if let Some(path) = wanted.filter(|p| Some(p.trim_matches('/')) != hit.0.as_deref())
            && let Some(other) = top.with_subvolume_path(&path)?
            && let Some(better) = found(&other)?
        {
            return Ok(Some(better));
        }
        return Ok(Some(hit));
    }
    let mut subvolumes = top.subvolumes()?;
    subvolumes.sort_by_key(|(id, path)| {
        let rank = BTRFS_ROOT_SUBVOLUMES
            .iter()
            .position(|n| n == path)
            .unwrap_or(BTRFS_ROOT_SUBVOLUMES.len());
        (rank, *id)
    });
    for (id, _) in subvolumes.into_iter().take(MAX_BTRFS_SUBVOLUMES_TRIED) {
        if let Some(hit) = found(&top.with_subvolume(id)?)? {
            return Ok(Some(hit));
        }
    }
    Ok(None)
}

/// `.efi` files one and two levels under `/EFI`.
fn list_efi_loaders(fs: &dyn fs::GuestFs) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for vendor in fs.list_dir("/EFI")?.unwrap_or_default() {
        let dir = format!("/EFI/{vendor}");
        for name in fs.list_dir(&dir)?.unwrap_or_default() {
            if name.to_ascii_lowercase().ends_with(".efi") && out.len() < MAX_ESP_LOADERS {
                out.push(format!("{dir}/{name}"));
            }
        }
    }
    Ok(out)
}

/// The boot mode the disk is set up for: an ESP means UEFI; boot code or an active partition
/// on an MBR disk, or a BIOS boot partition on a GPT disk, means BIOS.
fn firmware(table: &PartitionTable, iso_platforms: &[u8]) -> Firmware {
    let esp = table.partitions.iter().any(Partition::is_esp) || iso_platforms.contains(&0xef);
    let bios = match table.kind {
        TableKind::Mbr => table.mbr_boot_code || table.partitions.iter().any(|p| p.bootable),
        TableKind::Gpt { .. } => table
            .partitions
            .iter()
            .any(|p| p.is_bios_boot() || p.bootable),
        TableKind::None => iso_platforms.contains(&0) || table.mbr_boot_code,
    };
    match (esp, bios) {
        (true, true) => Firmware::UefiAndBios,
        (true, false) => Firmware::Uefi,
        (false, true) => Firmware::Bios,
        (false, false) => Firmware::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::part::guid;
    use crate::part::tests::gpt_disk;

    #[test]
    fn firmware_from_partition_layout() {
        let d = gpt_disk(400, &[(guid::BIOS_BOOT, 34, 40), (guid::ESP, 41, 99)]);
        let t = part::read_partition_table(&Volume::whole(Arc::new(d))).unwrap();
        assert_eq!(firmware(&t, &[]), Firmware::UefiAndBios);
        let d = gpt_disk(400, &[(guid::ESP, 41, 99)]);
        let t = part::read_partition_table(&Volume::whole(Arc::new(d))).unwrap();
        assert_eq!(firmware(&t, &[]), Firmware::Uefi);
        assert_eq!(Firmware::UefiAndBios.hw_firmware_type(), Some("bios"));
    }

    /// A GPT disk whose ESP holds a small FAT12 with `/EFI/BOOT/BOOTX64.EFI`.
    fn gpt_with_esp() -> Vec<u8> {
        let mut d = gpt_disk(200, &[(guid::ESP, 34, 99)]);
        let fat = crate::fs::fat::tests::tiny_fat12();
        d[34 * 512..34 * 512 + fat.len()].copy_from_slice(&fat);
        d
    }

    #[test]
    fn finds_the_efi_loader_on_the_esp() {
        let i = inspect(Arc::new(gpt_with_esp())).unwrap();
        assert_eq!(i.firmware, Firmware::Uefi);
        assert_eq!(i.efi_loaders, vec!["/EFI/BOOT/BOOTX64.EFI"]);
        assert!(i.root.is_none());
    }

    /// Stable-toolchain stand-in for the cargo-fuzz targets: thousands of corrupted copies of a
    /// valid disk must give answers or errors, never a panic.
    #[test]
    fn corrupted_disks_never_panic() {
        let base = gpt_with_esp();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // Bytes that matter: MBR, GPT header and entries, the FAT boot sector, FAT and dirs.
        let hot: Vec<usize> = (0..3 * 512).chain(34 * 512..40 * 512).collect();
        for _ in 0..500 {
            let mut d = base.clone();
            for _ in 0..1 + next() % 8 {
                let at = hot[(next() % hot.len() as u64) as usize];
                d[at] = next() as u8;
            }
            let _ = inspect(Arc::new(d));
        }
    }

    #[test]
    fn empty_and_garbage_disks_do_not_panic() {
        for d in [vec![], vec![0u8; 1000], vec![0xffu8; 70000]] {
            let _ = inspect(Arc::new(d));
        }
    }
}
