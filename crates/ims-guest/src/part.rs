//! Partition tables: MBR (with extended/logical partitions) and GPT (protective MBR, header and
//! entry-array CRCs, backup header check).

use crate::error::{GuestError, Result};
use crate::volume::{Volume, le};

/// Sector size partition tables are addressed in. 4 KiB-sector disks are not handled:
/// virtual disk images use 512-byte sectors.
pub const SECTOR: u64 = 512;
/// Most logical partitions followed through an extended partition's EBR chain (Linux's own
/// limit is lower in practice; this bounds a looping chain).
pub const MAX_LOGICAL_PARTITIONS: usize = 128;
/// Most GPT entries read: the spec minimum array is 128 entries; allow generous tables but
/// bound the work a hostile header can ask for.
pub const MAX_GPT_ENTRIES: u32 = 1024;
/// Largest GPT entry size accepted (spec: 128 × 2^n).
pub const MAX_GPT_ENTRY_SIZE: u32 = 4096;

/// GPT partition type GUIDs the inspector gives meaning to.
pub mod guid {
    pub const ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
    pub const BIOS_BOOT: &str = "21686148-6449-6e6f-744e-656564454649";
    pub const LINUX_LVM: &str = "e6d6d379-f507-44c2-a23c-238f2a3df928";
    pub const MICROSOFT_RESERVED: &str = "e3c9e316-0b5c-4db8-817d-f92df00215ae";
}

/// MBR partition type bytes the inspector gives meaning to.
pub mod mbr_type {
    pub const EXTENDED_CHS: u8 = 0x05;
    pub const EXTENDED_LBA: u8 = 0x0f;
    pub const EXTENDED_LINUX: u8 = 0x85;
    pub const LINUX_LVM: u8 = 0x8e;
    pub const GPT_PROTECTIVE: u8 = 0xee;
    pub const ESP: u8 = 0xef;
}

/// Which partition table a disk carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableKind {
    /// No table: the disk is one filesystem (or unknown).
    None,
    Mbr,
    Gpt {
        /// The backup header at the disk's last LBA is present and valid.
        backup_ok: bool,
    },
}

impl TableKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            TableKind::None => "none",
            TableKind::Mbr => "mbr",
            TableKind::Gpt { .. } => "gpt",
        }
    }
}

/// The partition's type as written in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartType {
    Mbr(u8),
    Gpt { type_guid: String, name: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based number as Linux names it (`sda5` is the first logical partition).
    pub number: u32,
    /// Byte offset on the disk.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    pub part_type: PartType,
    /// MBR active flag, or GPT attribute bit 2 (legacy BIOS bootable).
    pub bootable: bool,
}

impl Partition {
    pub fn is_esp(&self) -> bool {
        match &self.part_type {
            PartType::Mbr(t) => *t == mbr_type::ESP,
            PartType::Gpt { type_guid, .. } => type_guid == guid::ESP,
        }
    }
    pub fn is_bios_boot(&self) -> bool {
        matches!(&self.part_type, PartType::Gpt { type_guid, .. } if type_guid == guid::BIOS_BOOT)
    }
    pub fn is_lvm(&self) -> bool {
        match &self.part_type {
            PartType::Mbr(t) => *t == mbr_type::LINUX_LVM,
            PartType::Gpt { type_guid, .. } => type_guid == guid::LINUX_LVM,
        }
    }
    /// The type as a short string: `0x83` or the GUID.
    pub fn type_str(&self) -> String {
        match &self.part_type {
            PartType::Mbr(t) => format!("0x{t:02x}"),
            PartType::Gpt { type_guid, .. } => type_guid.clone(),
        }
    }
}

/// The partition table of a disk and the MBR boot-code facts the boot-mode guess needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTable {
    pub kind: TableKind,
    pub partitions: Vec<Partition>,
    /// The first 440 bytes of sector 0 are not all zero (a BIOS boot loader's first stage).
    pub mbr_boot_code: bool,
}

/// Reads the partition table of `disk`; a disk without one gives `TableKind::None`.
pub fn read_partition_table(disk: &Volume) -> Result<PartitionTable> {
    if disk.len() < SECTOR {
        return Ok(PartitionTable {
            kind: TableKind::None,
            partitions: Vec::new(),
            mbr_boot_code: false,
        });
    }
    let mbr = disk.read_vec(0, SECTOR as usize, "MBR")?;
    parse(disk, &mbr)
}

fn parse(disk: &Volume, mbr: &[u8]) -> Result<PartitionTable> {
    let mbr_boot_code = mbr[..440].iter().any(|&b| b != 0);
    let none = PartitionTable {
        kind: TableKind::None,
        partitions: Vec::new(),
        mbr_boot_code,
    };
    if mbr[510] != 0x55 || mbr[511] != 0xaa || looks_like_boot_sector(mbr) {
        return Ok(none);
    }
    let primaries = mbr_entries(mbr, 0)?;
    if primaries.iter().any(|e| e.kind == mbr_type::GPT_PROTECTIVE)
        && let Some(gpt) = read_gpt(disk)?
    {
        return Ok(PartitionTable {
            kind: TableKind::Gpt {
                backup_ok: gpt.backup_ok,
            },
            partitions: gpt.partitions,
            mbr_boot_code,
        });
    }
    let disk_sectors = disk.len() / SECTOR;
    let mut partitions = Vec::new();
    for (i, e) in primaries.iter().enumerate() {
        if e.kind == 0 || e.sectors == 0 {
            continue;
        }
        if e.status != 0 && e.status != 0x80 {
            return Ok(none);
        }
        let end = e.lba.checked_add(e.sectors);
        if e.lba == 0 || end.is_none_or(|end| end > disk_sectors) {
            return Err(GuestError::invalid(
                "MBR partition entry",
                446 + 16 * i as u64,
                format!(
                    "sectors {}+{} outside the disk ({disk_sectors} sectors)",
                    e.lba, e.sectors
                ),
            ));
        }
        partitions.push(e.to_partition(i as u32 + 1));
        if matches!(
            e.kind,
            mbr_type::EXTENDED_CHS | mbr_type::EXTENDED_LBA | mbr_type::EXTENDED_LINUX
        ) {
            read_logical(disk, e.lba, e.sectors, &mut partitions)?;
        }
    }
    Ok(PartitionTable {
        kind: TableKind::Mbr,
        partitions,
        mbr_boot_code,
    })
}

/// A FAT or NTFS volume boot record also ends in 55 AA: a whole-disk filesystem, not a table.
fn looks_like_boot_sector(s: &[u8]) -> bool {
    &s[3..11] == b"NTFS    "
        || &s[54..59] == b"FAT12"
        || &s[54..59] == b"FAT16"
        || &s[82..87] == b"FAT32"
        || &s[3..11] == b"EXFAT   "
}

#[derive(Debug, Clone, Copy)]
struct MbrEntry {
    status: u8,
    kind: u8,
    lba: u64,
    sectors: u64,
}

impl MbrEntry {
    fn to_partition(self, number: u32) -> Partition {
        Partition {
            number,
            start: self.lba * SECTOR,
            size: self.sectors * SECTOR,
            part_type: PartType::Mbr(self.kind),
            bootable: self.status == 0x80,
        }
    }
}

fn mbr_entries(sector: &[u8], _at: u64) -> Result<[MbrEntry; 4]> {
    let mut out = [MbrEntry {
        status: 0,
        kind: 0,
        lba: 0,
        sectors: 0,
    }; 4];
    for (i, e) in out.iter_mut().enumerate() {
        let b = 446 + 16 * i;
        *e = MbrEntry {
            status: sector[b],
            kind: sector[b + 4],
            lba: u64::from(le::u32(sector, b + 8)),
            sectors: u64::from(le::u32(sector, b + 12)),
        };
    }
    Ok(out)
}

/// Follows the EBR chain of the extended partition at `ext_lba` (all EBR links are relative
/// to it; each logical partition is relative to its own EBR).
fn read_logical(
    disk: &Volume,
    ext_lba: u64,
    ext_sectors: u64,
    out: &mut Vec<Partition>,
) -> Result<()> {
    let ext_end = ext_lba + ext_sectors;
    let mut ebr_lba = ext_lba;
    let mut number = 5u32;
    for _ in 0..MAX_LOGICAL_PARTITIONS {
        let at = ebr_lba
            .checked_mul(SECTOR)
            .ok_or(GuestError::LimitExceeded {
                what: "EBR offset",
                limit: u64::MAX,
            })?;
        let ebr = disk.read_vec(at, SECTOR as usize, "EBR")?;
        if ebr[510] != 0x55 || ebr[511] != 0xaa {
            return Err(GuestError::invalid("EBR", at, "missing 55 AA signature"));
        }
        let entries = mbr_entries(&ebr, at)?;
        let logical = entries[0];
        if logical.kind != 0 && logical.sectors != 0 {
            let start = ebr_lba.checked_add(logical.lba);
            let end = start.and_then(|s| s.checked_add(logical.sectors));
            match (start, end) {
                (Some(start), Some(end)) if end <= ext_end => {
                    out.push(
                        MbrEntry {
                            lba: start,
                            ..logical
                        }
                        .to_partition(number),
                    );
                    number += 1;
                }
                _ => {
                    return Err(GuestError::invalid(
                        "logical partition entry",
                        at + 446,
                        "outside its extended partition",
                    ));
                }
            }
        }
        let next = entries[1];
        if next.kind == 0 || next.lba == 0 {
            return Ok(());
        }
        let next_lba = ext_lba.checked_add(next.lba).filter(|&l| l < ext_end);
        match next_lba {
            Some(l) if l > ebr_lba => ebr_lba = l,
            _ => {
                return Err(GuestError::invalid(
                    "EBR link",
                    at + 462,
                    "points outside the extended partition or backwards (loop)",
                ));
            }
        }
    }
    Err(GuestError::LimitExceeded {
        what: "logical partitions",
        limit: MAX_LOGICAL_PARTITIONS as u64,
    })
}

struct Gpt {
    partitions: Vec<Partition>,
    backup_ok: bool,
}

struct GptHeader {
    alternate_lba: u64,
    entries_lba: u64,
    entry_count: u32,
    entry_size: u32,
    entries_crc: u32,
}

fn parse_gpt_header(h: &[u8], lba: u64) -> Result<Option<GptHeader>> {
    let at = lba * SECTOR;
    if &h[0..8] != b"EFI PART" {
        return Ok(None);
    }
    let header_size = le::u32(h, 12) as usize;
    if !(92..=SECTOR as usize).contains(&header_size) {
        return Err(GuestError::invalid(
            "GPT header",
            at,
            format!("header size {header_size}"),
        ));
    }
    let mut copy = h[..header_size].to_vec();
    copy[16..20].fill(0);
    if crc32(&copy) != le::u32(h, 16) {
        return Err(GuestError::invalid("GPT header", at, "CRC32 mismatch"));
    }
    let entry_count = le::u32(h, 80);
    let entry_size = le::u32(h, 84);
    if entry_count > MAX_GPT_ENTRIES
        || !(128..=MAX_GPT_ENTRY_SIZE).contains(&entry_size)
        || !entry_size.is_multiple_of(8)
    {
        return Err(GuestError::invalid(
            "GPT header",
            at,
            format!("{entry_count} entries of {entry_size} bytes"),
        ));
    }
    Ok(Some(GptHeader {
        alternate_lba: le::u64(h, 32),
        entries_lba: le::u64(h, 72),
        entry_count,
        entry_size,
        entries_crc: le::u32(h, 88),
    }))
}

fn read_gpt(disk: &Volume) -> Result<Option<Gpt>> {
    let h = disk.read_vec(SECTOR, SECTOR as usize, "GPT header")?;
    let Some(header) = parse_gpt_header(&h, 1)? else {
        return Ok(None);
    };
    let array_at = header
        .entries_lba
        .checked_mul(SECTOR)
        .ok_or(GuestError::invalid(
            "GPT header",
            SECTOR,
            "entry array LBA overflows",
        ))?;
    let array_len = header.entry_count as usize * header.entry_size as usize;
    let array = disk.read_vec(array_at, array_len, "GPT entry array")?;
    if crc32(&array) != header.entries_crc {
        return Err(GuestError::invalid(
            "GPT entry array",
            array_at,
            "CRC32 mismatch",
        ));
    }
    let disk_sectors = disk.len() / SECTOR;
    let mut partitions = Vec::new();
    for (i, e) in array.chunks_exact(header.entry_size as usize).enumerate() {
        let type_guid = format_guid(&e[0..16]);
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let first = le::u64(e, 32);
        let last = le::u64(e, 40);
        if first == 0 || last < first || last >= disk_sectors {
            return Err(GuestError::invalid(
                "GPT entry",
                array_at + (i * header.entry_size as usize) as u64,
                format!("LBAs {first}..={last} outside the disk ({disk_sectors} sectors)"),
            ));
        }
        let name_units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        partitions.push(Partition {
            number: i as u32 + 1,
            start: first * SECTOR,
            size: (last - first + 1) * SECTOR,
            part_type: PartType::Gpt {
                type_guid,
                name: String::from_utf16_lossy(&name_units),
            },
            bootable: le::u64(e, 48) & (1 << 2) != 0,
        });
    }
    let backup_ok = match header.alternate_lba.checked_mul(SECTOR) {
        Some(at) if header.alternate_lba < disk_sectors => disk
            .read_vec(at, SECTOR as usize, "backup GPT header")
            .ok()
            .and_then(|b| parse_gpt_header(&b, header.alternate_lba).ok().flatten())
            .is_some(),
        _ => false,
    };
    Ok(Some(Gpt {
        partitions,
        backup_ok,
    }))
}

/// A GUID in its mixed-endian on-disk form, printed lower-case as `xxxxxxxx-xxxx-…`.
pub fn format_guid(b: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        le::u32(b, 0),
        le::u16(b, 4),
        le::u16(b, 6),
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

/// CRC-32 (IEEE 802.3, reflected), as GPT uses.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;

    pub(crate) fn mbr_entry(s: &mut [u8], i: usize, status: u8, kind: u8, lba: u32, n: u32) {
        let b = 446 + 16 * i;
        s[b] = status;
        s[b + 4] = kind;
        s[b + 8..b + 12].copy_from_slice(&lba.to_le_bytes());
        s[b + 12..b + 16].copy_from_slice(&n.to_le_bytes());
        s[510] = 0x55;
        s[511] = 0xaa;
    }

    fn disk(bytes: Vec<u8>) -> Volume {
        Volume::whole(Arc::new(bytes))
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn mbr_primary_and_logical_partitions() {
        let mut d = vec![0u8; 4096 * 512];
        mbr_entry(&mut d, 0, 0x80, 0x83, 2048, 100);
        mbr_entry(&mut d, 1, 0, 0x05, 3000, 1000);
        // EBR 1 at 3000: logical at +10, next EBR at ext+200.
        let e1 = 3000 * 512;
        mbr_entry(&mut d[e1..e1 + 512], 0, 0, 0x83, 10, 50);
        mbr_entry(&mut d[e1..e1 + 512], 1, 0, 0x05, 200, 100);
        let e2 = 3200 * 512;
        mbr_entry(&mut d[e2..e2 + 512], 0, 0, 0x82, 10, 20);
        let t = read_partition_table(&disk(d)).unwrap();
        assert_eq!(t.kind, TableKind::Mbr);
        let nums: Vec<_> = t
            .partitions
            .iter()
            .map(|p| (p.number, p.start / 512))
            .collect();
        assert_eq!(nums, vec![(1, 2048), (2, 3000), (5, 3010), (6, 3210)]);
        assert!(t.partitions[0].bootable);
        assert!(!t.mbr_boot_code);
    }

    #[test]
    fn ebr_loop_is_refused() {
        let mut d = vec![0u8; 4096 * 512];
        mbr_entry(&mut d, 0, 0, 0x0f, 3000, 1000);
        let e1 = 3000 * 512;
        mbr_entry(&mut d[e1..e1 + 512], 0, 0, 0x83, 10, 50);
        mbr_entry(&mut d[e1..e1 + 512], 1, 0, 0x05, 0x7fff_ffff, 100);
        assert!(read_partition_table(&disk(d.clone())).is_err());
        // A zero link ends the chain.
        mbr_entry(&mut d[e1..e1 + 512], 1, 0, 0x05, 0, 100);
        d[e1 + 446 + 16 + 8] = 0;
        let t = read_partition_table(&disk(d)).unwrap();
        assert_eq!(t.partitions.len(), 2);
    }

    #[test]
    fn partition_past_the_disk_end_is_an_error() {
        let mut d = vec![0u8; 64 * 512];
        mbr_entry(&mut d, 0, 0, 0x83, 1, 1000);
        let err = read_partition_table(&disk(d)).unwrap_err().to_string();
        assert!(err.contains("outside the disk"), "{err}");
    }

    #[test]
    fn ntfs_boot_sector_is_not_a_table() {
        let mut d = vec![0u8; 64 * 512];
        mbr_entry(&mut d, 0, 0, 0x83, 1, 10);
        d[3..11].copy_from_slice(b"NTFS    ");
        assert_eq!(
            read_partition_table(&disk(d)).unwrap().kind,
            TableKind::None
        );
    }

    pub(crate) fn gpt_disk(sectors: u64, parts: &[(&str, u64, u64)]) -> Vec<u8> {
        let mut d = vec![0u8; (sectors * 512) as usize];
        mbr_entry(&mut d, 0, 0, 0xee, 1, (sectors - 1) as u32);
        let mut array = vec![0u8; 128 * 128];
        for (i, (g, first, last)) in parts.iter().enumerate() {
            let e = &mut array[i * 128..];
            e[0..16].copy_from_slice(&parse_guid(g));
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
        }
        let array_crc = crc32(&array);
        let write_header = |d: &mut Vec<u8>, lba: u64, alt: u64, entries: u64| {
            let mut h = vec![0u8; 92];
            h[0..8].copy_from_slice(b"EFI PART");
            h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
            h[12..16].copy_from_slice(&92u32.to_le_bytes());
            h[24..32].copy_from_slice(&lba.to_le_bytes());
            h[32..40].copy_from_slice(&alt.to_le_bytes());
            h[72..80].copy_from_slice(&entries.to_le_bytes());
            h[80..84].copy_from_slice(&128u32.to_le_bytes());
            h[84..88].copy_from_slice(&128u32.to_le_bytes());
            h[88..92].copy_from_slice(&array_crc.to_le_bytes());
            let c = crc32(&h);
            h[16..20].copy_from_slice(&c.to_le_bytes());
            let at = (lba * 512) as usize;
            d[at..at + 92].copy_from_slice(&h);
            let ea = (entries * 512) as usize;
            d[ea..ea + array.len()].copy_from_slice(&array);
        };
        write_header(&mut d, 1, sectors - 1, 2);
        write_header(&mut d, sectors - 1, 1, sectors - 33);
        d
    }

    pub(crate) fn parse_guid(s: &str) -> [u8; 16] {
        let hex: Vec<u8> = s
            .bytes()
            .filter(|&c| c != b'-')
            .collect::<Vec<_>>()
            .chunks(2)
            .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap())
            .collect();
        let mut g = [0u8; 16];
        g[0..4].copy_from_slice(&[hex[3], hex[2], hex[1], hex[0]]);
        g[4..6].copy_from_slice(&[hex[5], hex[4]]);
        g[6..8].copy_from_slice(&[hex[7], hex[6]]);
        g[8..16].copy_from_slice(&hex[8..16]);
        g
    }

    #[test]
    fn gpt_with_backup() {
        let d = gpt_disk(
            200,
            &[
                (guid::ESP, 34, 99),
                ("0fc63daf-8483-4772-8e79-3d69d8477de4", 100, 160),
            ],
        );
        let t = read_partition_table(&disk(d.clone())).unwrap();
        assert_eq!(t.kind, TableKind::Gpt { backup_ok: true });
        assert_eq!(t.partitions.len(), 2);
        assert!(t.partitions[0].is_esp());
        assert_eq!(t.partitions[1].start, 100 * 512);
        assert_eq!(t.partitions[1].size, 61 * 512);
        // Corrupt the backup: still readable, reported.
        let mut d2 = d.clone();
        d2[199 * 512] = b'X';
        let t = read_partition_table(&disk(d2)).unwrap();
        assert_eq!(t.kind, TableKind::Gpt { backup_ok: false });
        // Corrupt the primary header: CRC error names the structure.
        let mut d3 = d;
        d3[512 + 40] ^= 1;
        let err = read_partition_table(&disk(d3)).unwrap_err().to_string();
        assert!(err.contains("GPT header at byte 512"), "{err}");
    }

    #[test]
    fn guid_round_trip() {
        assert_eq!(format_guid(&parse_guid(guid::ESP)), guid::ESP);
    }
}
