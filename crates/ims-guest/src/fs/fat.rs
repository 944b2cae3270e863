//! FAT12/16/32 (the EFI system partition), read-only: BPB validation, cluster chains bounded by
//! the cluster count, long file names, case-insensitive lookup.

use super::{FsKind, GuestFs, MAX_DIR_ENTRIES};
use crate::error::{GuestError, Result};
use crate::volume::{Volume, le};

/// Largest FAT table loaded (a 2 TiB FAT32 volume with 32 KiB clusters needs 256 MiB; ESPs
/// are 100–600 MiB and need under 1 MiB).
pub const MAX_FAT_BYTES: u64 = 64 << 20;
/// Largest directory read (entries × 32 bytes).
pub const MAX_DIR_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

/// A FAT volume opened read-only.
pub struct FatFs {
    vol: Volume,
    fat_type: FatType,
    fat: Vec<u8>,
    cluster_bytes: u64,
    data_start: u64,
    clusters: u32,
    /// FAT12/16 fixed root directory (offset, length); FAT32 uses `root_cluster`.
    root_fixed: Option<(u64, u64)>,
    root_cluster: u32,
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    is_dir: bool,
    cluster: u32,
    size: u32,
}

impl FatFs {
    pub fn open(vol: Volume) -> Result<FatFs> {
        let b = vol.read_vec(0, 512, "FAT boot sector")?;
        let bad = |r: String| GuestError::invalid("FAT boot sector", 0, r);
        let bps = u64::from(le::u16(&b, 11));
        let spc = u64::from(b[13]);
        let reserved = u64::from(le::u16(&b, 14));
        let nfats = u64::from(b[16]);
        let root_entries = u64::from(le::u16(&b, 17));
        let total = match le::u16(&b, 19) {
            0 => u64::from(le::u32(&b, 32)),
            n => u64::from(n),
        };
        let fat_sectors = match le::u16(&b, 22) {
            0 => u64::from(le::u32(&b, 36)),
            n => u64::from(n),
        };
        if !bps.is_power_of_two() || !(512..=4096).contains(&bps) {
            return Err(bad(format!("bytes per sector {bps}")));
        }
        if !spc.is_power_of_two() || reserved == 0 || nfats == 0 || fat_sectors == 0 {
            return Err(bad(format!(
                "sectors/cluster {spc}, reserved {reserved}, FATs {nfats}, FAT size {fat_sectors}"
            )));
        }
        let root_sectors = (root_entries * 32).div_ceil(bps);
        let data_sector = reserved + nfats * fat_sectors + root_sectors;
        if data_sector >= total || total * bps > vol.len() {
            return Err(bad(format!(
                "{total} sectors do not fit the {} byte volume",
                vol.len()
            )));
        }
        let clusters = (total - data_sector) / spc;
        let fat_type = if clusters < 4085 {
            FatType::Fat12
        } else if clusters < 65525 {
            FatType::Fat16
        } else {
            FatType::Fat32
        };
        let fat_bytes = fat_sectors * bps;
        if fat_bytes > MAX_FAT_BYTES {
            return Err(GuestError::LimitExceeded {
                what: "FAT table size",
                limit: MAX_FAT_BYTES,
            });
        }
        let fat = vol.read_vec(reserved * bps, fat_bytes as usize, "FAT table")?;
        let root_fixed = (fat_type != FatType::Fat32)
            .then(|| ((reserved + nfats * fat_sectors) * bps, root_entries * 32));
        Ok(FatFs {
            vol,
            fat_type,
            fat,
            cluster_bytes: spc * bps,
            data_start: data_sector * bps,
            clusters: u32::try_from(clusters).unwrap_or(u32::MAX),
            root_fixed,
            root_cluster: le::u32(&b, 44),
        })
    }

    fn next_cluster(&self, c: u32) -> Option<u32> {
        let c = c as usize;
        let (next, eoc) = match self.fat_type {
            FatType::Fat12 => {
                let v = u32::from(le::u16(&self.fat, c + c / 2));
                (if c % 2 == 1 { v >> 4 } else { v & 0xfff }, 0xff8)
            }
            FatType::Fat16 => (u32::from(le::u16(&self.fat, c * 2)), 0xfff8),
            FatType::Fat32 => (le::u32(&self.fat, c * 4) & 0x0fff_ffff, 0x0fff_fff8),
        };
        (next >= 2 && next < eoc).then_some(next)
    }

    /// Reads up to `max` bytes of the cluster chain starting at `first`.
    fn read_chain(&self, first: u32, max: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut c = first;
        let mut steps = 0u32;
        while (out.len() as u64) < max {
            if c < 2 || c - 2 >= self.clusters {
                return Err(GuestError::invalid(
                    "FAT cluster chain",
                    0,
                    format!("cluster {c} outside the volume"),
                ));
            }
            let at = self.data_start + u64::from(c - 2) * self.cluster_bytes;
            let n = self.cluster_bytes.min(max - out.len() as u64) as usize;
            let start = out.len();
            out.resize(start + n, 0);
            self.vol
                .read_exact_at(at, &mut out[start..], "FAT cluster")?;
            steps += 1;
            if steps > self.clusters {
                return Err(GuestError::invalid("FAT cluster chain", 0, "loop"));
            }
            match self.next_cluster(c) {
                Some(n) => c = n,
                None => break,
            }
        }
        Ok(out)
    }

    fn dir_bytes(&self, dir: Option<&Entry>) -> Result<Vec<u8>> {
        match (dir, self.root_fixed) {
            (Some(d), _) => self.read_chain(d.cluster, MAX_DIR_BYTES),
            (None, Some((at, len))) => {
                self.vol
                    .read_vec(at, len.min(MAX_DIR_BYTES) as usize, "FAT root directory")
            }
            (None, None) => self.read_chain(self.root_cluster, MAX_DIR_BYTES),
        }
    }

    fn entries(&self, dir: Option<&Entry>) -> Result<Vec<Entry>> {
        let raw = self.dir_bytes(dir)?;
        let mut out = Vec::new();
        let mut lfn: Vec<(u8, [u16; 13])> = Vec::new();
        for e in raw.chunks_exact(32) {
            match e[0] {
                0 => break,
                0xe5 => {
                    lfn.clear();
                    continue;
                }
                _ => {}
            }
            let attr = e[11];
            if attr == 0x0f {
                let mut units = [0u16; 13];
                for (i, off) in [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30]
                    .iter()
                    .enumerate()
                {
                    units[i] = le::u16(e, *off);
                }
                lfn.push((e[0] & 0x1f, units));
                continue;
            }
            if attr & 0x08 != 0 {
                lfn.clear();
                continue;
            }
            let name = if lfn.is_empty() {
                short_name(e)
            } else {
                lfn.sort_by_key(|(seq, _)| *seq);
                let units: Vec<u16> = lfn
                    .iter()
                    .flat_map(|(_, u)| u.iter().copied())
                    .take_while(|&u| u != 0 && u != 0xffff)
                    .collect();
                String::from_utf16_lossy(&units)
            };
            lfn.clear();
            if name == "." || name == ".." {
                continue;
            }
            let cluster = (u32::from(le::u16(e, 20)) << 16) | u32::from(le::u16(e, 26));
            out.push(Entry {
                name,
                is_dir: attr & 0x10 != 0,
                cluster,
                size: le::u32(e, 28),
            });
            if out.len() > MAX_DIR_ENTRIES {
                return Err(GuestError::LimitExceeded {
                    what: "FAT directory entries",
                    limit: MAX_DIR_ENTRIES as u64,
                });
            }
        }
        Ok(out)
    }

    /// The entry at `path`; `Ok(Some(None))` is the root directory.
    fn walk(&self, path: &str) -> Result<Option<Option<Entry>>> {
        let mut cur: Option<Entry> = None;
        for part in path.split(['/', '\\']).filter(|p| !p.is_empty()) {
            if cur.as_ref().is_some_and(|e| !e.is_dir) {
                return Ok(None);
            }
            let found = self
                .entries(cur.as_ref())?
                .into_iter()
                .find(|e| e.name.eq_ignore_ascii_case(part));
            match found {
                Some(e) => cur = Some(e),
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }
}

fn short_name(e: &[u8]) -> String {
    let base = String::from_utf8_lossy(&e[0..8]).trim_end().to_string();
    let ext = String::from_utf8_lossy(&e[8..11]).trim_end().to_string();
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

impl GuestFs for FatFs {
    fn kind(&self) -> FsKind {
        FsKind::Fat
    }

    fn read_file(&self, path: &str, max: usize) -> Result<Option<Vec<u8>>> {
        match self.walk(path)? {
            Some(Some(e)) if !e.is_dir => {
                if e.size == 0 {
                    return Ok(Some(Vec::new()));
                }
                let want = u64::from(e.size).min(max as u64);
                self.read_chain(e.cluster, want).map(Some)
            }
            _ => Ok(None),
        }
    }

    fn list_dir(&self, path: &str) -> Result<Option<Vec<String>>> {
        match self.walk(path)? {
            Some(None) => Ok(Some(
                self.entries(None)?.into_iter().map(|e| e.name).collect(),
            )),
            Some(Some(e)) if e.is_dir => Ok(Some(
                self.entries(Some(&e))?
                    .into_iter()
                    .map(|e| e.name)
                    .collect(),
            )),
            _ => Ok(None),
        }
    }

    fn exists(&self, path: &str) -> Result<bool> {
        Ok(self.walk(path)?.is_some())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;

    /// A tiny FAT12 volume: 512-byte sectors, 1 sector/cluster, 1 reserved, 1 FAT of 1 sector,
    /// 16 root entries (1 sector), 64 sectors; root holds EFI/ with BOOT/ with BOOTX64.EFI.
    pub(crate) fn tiny_fat12() -> Vec<u8> {
        let mut d = vec![0u8; 64 * 512];
        d[11..13].copy_from_slice(&512u16.to_le_bytes());
        d[13] = 1;
        d[14..16].copy_from_slice(&1u16.to_le_bytes());
        d[16] = 1;
        d[17..19].copy_from_slice(&16u16.to_le_bytes());
        d[19..21].copy_from_slice(&64u16.to_le_bytes());
        d[22..24].copy_from_slice(&1u16.to_le_bytes());
        d[54..59].copy_from_slice(b"FAT12");
        d[510] = 0x55;
        d[511] = 0xaa;
        // FAT: clusters 2,3 end-of-chain, cluster 4 -> 5 -> EOC.
        let fat = 512;
        let set = |d: &mut Vec<u8>, c: usize, v: u16| {
            let at = fat + c + c / 2;
            let cur = u16::from_le_bytes([d[at], d[at + 1]]);
            let new = if c % 2 == 1 {
                (cur & 0x000f) | (v << 4)
            } else {
                (cur & 0xf000) | v
            };
            d[at..at + 2].copy_from_slice(&new.to_le_bytes());
        };
        set(&mut d, 2, 0xfff);
        set(&mut d, 3, 0xfff);
        set(&mut d, 4, 5);
        set(&mut d, 5, 0xfff);
        let entry = |d: &mut Vec<u8>, at: usize, name: &[u8; 11], attr: u8, c: u16, size: u32| {
            d[at..at + 11].copy_from_slice(name);
            d[at + 11] = attr;
            d[at + 26..at + 28].copy_from_slice(&c.to_le_bytes());
            d[at + 28..at + 32].copy_from_slice(&size.to_le_bytes());
        };
        let root = 2 * 512;
        let data = 3 * 512; // cluster 2
        entry(&mut d, root, b"EFI        ", 0x10, 2, 0);
        entry(&mut d, data, b"BOOT       ", 0x10, 3, 0);
        entry(&mut d, data + 512, b"BOOTX64 EFI", 0x20, 4, 600);
        d[data + 2 * 512..data + 2 * 512 + 2].copy_from_slice(b"MZ");
        d
    }

    #[test]
    fn reads_a_file_through_two_clusters() {
        let fs = FatFs::open(Volume::whole(Arc::new(tiny_fat12()))).unwrap();
        assert_eq!(fs.list_dir("/").unwrap().unwrap(), vec!["EFI"]);
        assert_eq!(
            fs.list_dir("/efi/boot").unwrap().unwrap(),
            vec!["BOOTX64.EFI"]
        );
        let f = fs
            .read_file("/EFI/BOOT/bootx64.efi", 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(f.len(), 600);
        assert_eq!(&f[..2], b"MZ");
        assert!(fs.read_file("/EFI/missing", 10).unwrap().is_none());
    }

    #[test]
    fn cluster_loop_is_an_error() {
        let mut d = tiny_fat12();
        // cluster 5 -> 4: a loop.
        let at = 512 + 5 + 2;
        let cur = u16::from_le_bytes([d[at], d[at + 1]]);
        d[at..at + 2].copy_from_slice(&((cur & 0x000f) | (4 << 4)).to_le_bytes());
        let fs = FatFs::open(Volume::whole(Arc::new(d))).unwrap();
        // The size bounds the read, so the loop shows only when the size asks for more.
        assert!(fs.read_file("/EFI/BOOT/BOOTX64.EFI", 1 << 20).is_ok());
        assert!(fs.read_chain(4, 1 << 20).is_err());
    }
}
