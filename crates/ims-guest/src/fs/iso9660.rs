//! ISO 9660 (installer media), read-only: primary volume descriptor, directory records with
//! Rock Ridge `NM` names, and the El Torito boot catalog's platforms (BIOS / UEFI).

use super::{FsKind, GuestFs, MAX_DIR_ENTRIES};
use crate::error::{GuestError, Result};
use crate::volume::{Volume, le};

/// ISO 9660 logical block size (the standard allows others; every real medium uses 2048).
pub const BLOCK: u64 = 2048;
/// Most volume descriptors scanned before the terminator.
pub const MAX_DESCRIPTORS: u64 = 64;
/// Largest directory read.
pub const MAX_DIR_BYTES: u64 = 16 << 20;
/// Deepest path walked (ISO 9660 allows 8 levels, Rock Ridge more).
pub const MAX_PATH_DEPTH: usize = 64;
/// Most boot catalog entries read.
pub const MAX_CATALOG_ENTRIES: usize = 64;

#[derive(Debug, Clone)]
struct Record {
    name: String,
    is_dir: bool,
    lba: u64,
    size: u64,
}

/// An ISO 9660 volume opened read-only.
pub struct IsoFs {
    vol: Volume,
    root: Record,
    /// El Torito boot entries' platform ids: 0 = x86 BIOS, 0xEF = UEFI.
    pub boot_platforms: Vec<u8>,
}

impl IsoFs {
    pub fn open(vol: Volume) -> Result<IsoFs> {
        let mut root = None;
        let mut boot_platforms = Vec::new();
        for i in 16..16 + MAX_DESCRIPTORS {
            let at = i * BLOCK;
            let d = vol.read_vec(at, BLOCK as usize, "ISO 9660 volume descriptor")?;
            if &d[1..6] != b"CD001" {
                return Err(GuestError::invalid(
                    "ISO 9660 volume descriptor",
                    at,
                    "no CD001",
                ));
            }
            match d[0] {
                0 if d[7..30].starts_with(b"EL TORITO SPECIFICATION") => {
                    boot_platforms =
                        read_boot_catalog(&vol, u64::from(le::u32(&d, 0x47))).unwrap_or_default();
                }
                1 => root = Some(parse_record(&d[156..190], at + 156)?.0),
                255 => break,
                _ => {}
            }
        }
        let root = root.ok_or(GuestError::invalid(
            "ISO 9660",
            16 * BLOCK,
            "no primary volume descriptor",
        ))?;
        Ok(IsoFs {
            vol,
            root,
            boot_platforms,
        })
    }

    fn entries(&self, dir: &Record) -> Result<Vec<Record>> {
        if dir.size > MAX_DIR_BYTES {
            return Err(GuestError::LimitExceeded {
                what: "ISO 9660 directory size",
                limit: MAX_DIR_BYTES,
            });
        }
        let at = dir.lba.checked_mul(BLOCK).ok_or(GuestError::invalid(
            "ISO 9660 directory",
            0,
            "LBA overflows",
        ))?;
        let raw = self
            .vol
            .read_vec(at, dir.size as usize, "ISO 9660 directory")?;
        let mut out = Vec::new();
        let mut pos = 0usize;
        while pos < raw.len() {
            let len = usize::from(raw[pos]);
            if len == 0 {
                // Records do not cross blocks: skip to the next one.
                pos = (pos / BLOCK as usize + 1) * BLOCK as usize;
                continue;
            }
            let Some(rec) = raw.get(pos..pos + len) else {
                break;
            };
            let (r, special) = parse_record(rec, at + pos as u64)?;
            if !special {
                out.push(r);
            }
            if out.len() > MAX_DIR_ENTRIES {
                return Err(GuestError::LimitExceeded {
                    what: "ISO 9660 directory entries",
                    limit: MAX_DIR_ENTRIES as u64,
                });
            }
            pos += len;
        }
        Ok(out)
    }

    fn walk(&self, path: &str) -> Result<Option<Record>> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        if parts.len() > MAX_PATH_DEPTH {
            return Err(GuestError::LimitExceeded {
                what: "ISO 9660 path depth",
                limit: MAX_PATH_DEPTH as u64,
            });
        }
        let mut cur = self.root.clone();
        for part in parts {
            if !cur.is_dir {
                return Ok(None);
            }
            match self
                .entries(&cur)?
                .into_iter()
                .find(|r| r.name.eq_ignore_ascii_case(part))
            {
                Some(r) => cur = r,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }
}

/// Parses one directory record; the bool is true for the `.`/`..` records.
fn parse_record(r: &[u8], at: u64) -> Result<(Record, bool)> {
    if r.len() < 34 {
        return Err(GuestError::invalid(
            "ISO 9660 directory record",
            at,
            "shorter than 34 bytes",
        ));
    }
    let name_len = usize::from(r[32]);
    let raw_name = r.get(33..33 + name_len).ok_or(GuestError::invalid(
        "ISO 9660 directory record",
        at,
        "name past the record",
    ))?;
    let special = name_len == 1 && (raw_name[0] == 0 || raw_name[0] == 1);
    let mut name = String::from_utf8_lossy(raw_name).into_owned();
    if let Some(i) = name.find(';') {
        name.truncate(i);
    }
    if name.ends_with('.') {
        name.pop();
    }
    // Rock Ridge alternate name in the System Use area.
    let mut su = 33 + name_len + (1 - name_len % 2);
    let mut rr = String::new();
    while su + 4 <= r.len() {
        let sig = &r[su..su + 2];
        let len = usize::from(r[su + 2]);
        if len < 4 || su + len > r.len() {
            break;
        }
        if sig == b"NM" && len > 5 {
            rr.push_str(&String::from_utf8_lossy(&r[su + 5..su + len]));
        }
        su += len;
    }
    if !rr.is_empty() {
        name = rr;
    }
    Ok((
        Record {
            name,
            is_dir: r[25] & 0x02 != 0,
            lba: u64::from(le::u32(r, 2)),
            size: u64::from(le::u32(r, 10)),
        },
        special,
    ))
}

/// Platform ids of the boot catalog's validation entry and section headers.
fn read_boot_catalog(vol: &Volume, lba: u64) -> Result<Vec<u8>> {
    let at = lba.checked_mul(BLOCK).ok_or(GuestError::invalid(
        "El Torito boot catalog",
        0,
        "LBA overflows",
    ))?;
    let cat = vol.read_vec(at, BLOCK as usize, "El Torito boot catalog")?;
    if cat[0] != 1 || cat[30] != 0x55 || cat[31] != 0xaa {
        return Err(GuestError::invalid(
            "El Torito boot catalog",
            at,
            "bad validation entry",
        ));
    }
    let mut platforms = vec![cat[1]];
    for e in cat.chunks_exact(32).skip(2).take(MAX_CATALOG_ENTRIES) {
        if e[0] == 0x90 || e[0] == 0x91 {
            platforms.push(e[1]);
        }
    }
    platforms.dedup();
    Ok(platforms)
}

impl GuestFs for IsoFs {
    fn kind(&self) -> FsKind {
        FsKind::Iso9660
    }

    fn read_file(&self, path: &str, max: usize) -> Result<Option<Vec<u8>>> {
        match self.walk(path)? {
            Some(r) if !r.is_dir => {
                let at = r.lba.checked_mul(BLOCK).ok_or(GuestError::invalid(
                    "ISO 9660 file",
                    0,
                    "LBA overflows",
                ))?;
                let len = (r.size as usize).min(max);
                self.vol.read_vec(at, len, "ISO 9660 file").map(Some)
            }
            _ => Ok(None),
        }
    }

    fn list_dir(&self, path: &str) -> Result<Option<Vec<String>>> {
        match self.walk(path)? {
            Some(r) if r.is_dir => Ok(Some(
                self.entries(&r)?.into_iter().map(|r| r.name).collect(),
            )),
            _ => Ok(None),
        }
    }

    fn exists(&self, path: &str) -> Result<bool> {
        Ok(self.walk(path)?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &[u8], lba: u32, size: u32, dir: bool) -> Vec<u8> {
        let len = 33 + name.len() + (1 - name.len() % 2);
        let mut r = vec![0u8; len];
        r[0] = len as u8;
        r[2..6].copy_from_slice(&lba.to_le_bytes());
        r[10..14].copy_from_slice(&size.to_le_bytes());
        r[25] = if dir { 2 } else { 0 };
        r[32] = name.len() as u8;
        r[33..33 + name.len()].copy_from_slice(name);
        r
    }

    #[test]
    fn reads_a_file_from_a_hand_made_image() {
        let mut d = vec![0u8; 24 * 2048];
        let pvd = 16 * 2048;
        d[pvd] = 1;
        d[pvd + 1..pvd + 6].copy_from_slice(b"CD001");
        let root = record(&[0], 20, 2048, true);
        d[pvd + 156..pvd + 156 + root.len()].copy_from_slice(&root);
        let term = 17 * 2048;
        d[term] = 255;
        d[term + 1..term + 6].copy_from_slice(b"CD001");
        let mut pos = 20 * 2048;
        for r in [
            record(&[0], 20, 2048, true),
            record(&[1], 20, 2048, true),
            record(b"README.TXT;1", 21, 5, false),
        ] {
            d[pos..pos + r.len()].copy_from_slice(&r);
            pos += r.len();
        }
        d[21 * 2048..21 * 2048 + 5].copy_from_slice(b"hello");
        let fs = IsoFs::open(Volume::whole(std::sync::Arc::new(d))).unwrap();
        assert_eq!(fs.list_dir("/").unwrap().unwrap(), vec!["README.TXT"]);
        assert_eq!(fs.read_file("/readme.txt", 100).unwrap().unwrap(), b"hello");
    }
}
