//! XFS (v4 and v5), read-only and just enough to read OS files: superblock, inodes, extent and
//! B+tree data forks, short-form/block/leaf/node directories (data blocks scanned linearly),
//! inline and remote symlinks.

use std::cell::RefCell;
use std::collections::HashMap;

use super::resolve::{InodeTree, NodeKind, resolve};
use super::{FsKind, GuestFs, MAX_DIR_ENTRIES};
use crate::error::{GuestError, Result};
use crate::volume::{Volume, be};

/// Largest directory read (all its data blocks): /usr/share/doc of a distro is ~100 KiB.
pub const MAX_DIR_BYTES: u64 = 64 << 20;
/// Most extents gathered from one inode's data fork.
pub const MAX_EXTENTS: usize = 1 << 16;
/// Deepest bmap B+tree walked (XFS's own maximum is 9 for 64-bit extent counts).
pub const MAX_BTREE_DEPTH: u16 = 10;
/// Longest symlink target (Linux PATH_MAX).
pub const MAX_SYMLINK: u64 = 4096;
/// Inodes kept decoded in memory while resolving paths.
const INODE_CACHE: usize = 4096;
/// First logical byte of a directory's leaf/free blocks: data blocks live below it.
const DIR2_LEAF_OFFSET: u64 = 32 << 30;

const S_IFMT: u16 = 0o170000;
const S_IFDIR: u16 = 0o040000;
const S_IFREG: u16 = 0o100000;
const S_IFLNK: u16 = 0o120000;

const FMT_LOCAL: u8 = 1;
const FMT_EXTENTS: u8 = 2;
const FMT_BTREE: u8 = 3;

/// The superblock fields the reader needs, validated.
#[derive(Debug, Clone)]
struct Super {
    block_size: u64,
    ag_blocks: u64,
    ag_count: u64,
    root_ino: u64,
    inode_size: u64,
    inopblog: u32,
    agblklog: u32,
    dir_block_size: u64,
    v5: bool,
    ftype: bool,
    nrext64: bool,
}

fn parse_super(sb: &[u8]) -> Result<Super> {
    let bad = |reason: String| GuestError::invalid("XFS superblock", 0, reason);
    if sb.get(0..4) != Some(b"XFSB") {
        return Err(bad("no XFSB magic".into()));
    }
    let block_size = u64::from(be::u32(sb, 4));
    let version = be::u16(sb, 100) & 0xf;
    let inode_size = u64::from(be::u16(sb, 104));
    let blocklog = u32::from(sb[120]);
    let inodelog = u32::from(sb[122]);
    let inopblog = u32::from(sb[123]);
    let agblklog = u32::from(sb[124]);
    let dirblklog = u32::from(sb[192]);
    if !(9..=16).contains(&blocklog) || block_size != 1 << blocklog {
        return Err(bad(format!("block size {block_size} (log {blocklog})")));
    }
    if !(8..=11).contains(&inodelog)
        || inode_size != 1 << inodelog
        || inopblog + inodelog != blocklog
    {
        return Err(bad(format!("inode size {inode_size}")));
    }
    if agblklog == 0 || agblklog > 31 || dirblklog > 8 || blocklog + dirblklog > 16 {
        return Err(bad(format!("agblklog {agblklog} dirblklog {dirblklog}")));
    }
    let v5 = version == 5;
    let ftype = if v5 {
        be::u32(sb, 216) & 1 != 0
    } else {
        be::u32(sb, 200) & 0x200 != 0
    };
    Ok(Super {
        block_size,
        ag_blocks: u64::from(be::u32(sb, 84)),
        ag_count: u64::from(be::u32(sb, 88)),
        root_ino: be::u64(sb, 56),
        inode_size,
        inopblog,
        agblklog,
        dir_block_size: block_size << dirblklog,
        v5,
        ftype,
        nrext64: v5 && be::u32(sb, 216) & 32 != 0,
    })
}

/// A decoded inode: its type, size and data fork (raw bytes, interpreted per format).
#[derive(Debug, Clone)]
struct Inode {
    mode: u16,
    size: u64,
    format: u8,
    nextents: u64,
    fork: Vec<u8>,
}

/// One data-fork mapping: `count` blocks at logical block `logical` are at fs block `start`.
#[derive(Debug, Clone, Copy)]
struct Extent {
    logical: u64,
    start: u64,
    count: u64,
}

/// An XFS filesystem opened read-only.
pub struct XfsFs {
    vol: Volume,
    sb: Super,
    inodes: RefCell<HashMap<u64, std::rc::Rc<Inode>>>,
}

impl XfsFs {
    pub fn open(vol: Volume) -> Result<XfsFs> {
        let sb = parse_super(&vol.read_vec(0, 512, "XFS superblock")?)?;
        Ok(XfsFs {
            vol,
            sb,
            inodes: RefCell::new(HashMap::new()),
        })
    }

    /// Byte offset of filesystem block `fsb` (AG number in the high bits).
    fn fsb_offset(&self, fsb: u64) -> Result<u64> {
        let agno = fsb >> self.sb.agblklog;
        let agbno = fsb & ((1u64 << self.sb.agblklog) - 1);
        if agno >= self.sb.ag_count || agbno >= self.sb.ag_blocks {
            return Err(GuestError::invalid(
                "XFS block number",
                0,
                format!("{fsb} is outside the filesystem"),
            ));
        }
        agno.checked_mul(self.sb.ag_blocks)
            .and_then(|b| b.checked_add(agbno))
            .and_then(|b| b.checked_mul(self.sb.block_size))
            .ok_or(GuestError::invalid(
                "XFS block number",
                0,
                "offset overflows",
            ))
    }

    fn inode(&self, ino: u64) -> Result<std::rc::Rc<Inode>> {
        if let Some(i) = self.inodes.borrow().get(&ino) {
            return Ok(i.clone());
        }
        let per_block_log = self.sb.inopblog;
        let fsb = ino >> per_block_log;
        let index = ino & ((1u64 << per_block_log) - 1);
        let at = self
            .fsb_offset(fsb)?
            .checked_add(index * self.sb.inode_size)
            .ok_or(GuestError::invalid("XFS inode", 0, "offset overflows"))?;
        let raw = self
            .vol
            .read_vec(at, self.sb.inode_size as usize, "XFS inode")?;
        let inode = std::rc::Rc::new(self.parse_inode(&raw, at)?);
        let mut cache = self.inodes.borrow_mut();
        if cache.len() >= INODE_CACHE {
            cache.clear();
        }
        cache.insert(ino, inode.clone());
        Ok(inode)
    }

    fn parse_inode(&self, raw: &[u8], at: u64) -> Result<Inode> {
        if raw.get(0..2) != Some(b"IN") {
            return Err(GuestError::invalid("XFS inode", at, "no IN magic"));
        }
        let version = raw[4];
        let core = if version >= 3 { 176 } else { 100 };
        let forkoff = usize::from(raw[82]) * 8;
        let fork_end = if forkoff == 0 {
            raw.len()
        } else {
            core + forkoff
        };
        if fork_end > raw.len() {
            return Err(GuestError::invalid(
                "XFS inode",
                at,
                format!("attribute fork offset {forkoff}"),
            ));
        }
        let big = self.sb.nrext64 && be::u64(raw, 120) & (1 << 4) != 0;
        let nextents = if big {
            be::u64(raw, 24)
        } else {
            u64::from(be::u32(raw, 76))
        };
        Ok(Inode {
            mode: be::u16(raw, 2),
            size: be::u64(raw, 56),
            format: raw[5],
            nextents,
            fork: raw[core..fork_end].to_vec(),
        })
    }

    /// All extents of an extents- or btree-format data fork, sorted by logical block.
    fn extents(&self, inode: &Inode) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        match inode.format {
            FMT_EXTENTS => {
                let n = usize::try_from(inode.nextents).unwrap_or(usize::MAX);
                if n > inode.fork.len() / 16 {
                    return Err(GuestError::invalid(
                        "XFS extent list",
                        0,
                        format!("{n} extents do not fit the inode fork"),
                    ));
                }
                decode_extents(&inode.fork[..n * 16], &mut out);
            }
            FMT_BTREE => {
                let level = be::u16(&inode.fork, 0);
                let numrecs = usize::from(be::u16(&inode.fork, 2));
                let maxrecs = inode.fork.len().saturating_sub(4) / 16;
                if numrecs > maxrecs || level == 0 || level > MAX_BTREE_DEPTH {
                    return Err(GuestError::invalid(
                        "XFS bmap btree root",
                        0,
                        format!("level {level}, {numrecs} records"),
                    ));
                }
                let ptrs = 4 + maxrecs * 8;
                for i in 0..numrecs {
                    let ptr = be::u64(&inode.fork, ptrs + i * 8);
                    self.walk_bmbt(ptr, level - 1, &mut out)?;
                }
            }
            _ => {}
        }
        out.sort_by_key(|e| e.logical);
        Ok(out)
    }

    fn walk_bmbt(&self, fsb: u64, level: u16, out: &mut Vec<Extent>) -> Result<()> {
        let at = self.fsb_offset(fsb)?;
        let block = self
            .vol
            .read_vec(at, self.sb.block_size as usize, "XFS bmap btree block")?;
        let magic_ok = if self.sb.v5 {
            &block[0..4] == b"BMA3"
        } else {
            &block[0..4] == b"BMAP"
        };
        let hdr = if self.sb.v5 { 72 } else { 24 };
        let blk_level = be::u16(&block, 4);
        let numrecs = usize::from(be::u16(&block, 6));
        if !magic_ok || blk_level != level {
            return Err(GuestError::invalid(
                "XFS bmap btree block",
                at,
                "bad magic or level",
            ));
        }
        if level == 0 {
            if numrecs > (block.len() - hdr) / 16 {
                return Err(GuestError::invalid(
                    "XFS bmap btree leaf",
                    at,
                    "too many records",
                ));
            }
            decode_extents(&block[hdr..hdr + numrecs * 16], out);
            if out.len() > MAX_EXTENTS {
                return Err(GuestError::LimitExceeded {
                    what: "XFS extents in one file",
                    limit: MAX_EXTENTS as u64,
                });
            }
            return Ok(());
        }
        let maxrecs = (block.len() - hdr) / 16;
        if numrecs > maxrecs {
            return Err(GuestError::invalid(
                "XFS bmap btree node",
                at,
                "too many records",
            ));
        }
        let ptrs = hdr + maxrecs * 8;
        for i in 0..numrecs {
            self.walk_bmbt(be::u64(&block, ptrs + i * 8), level - 1, out)?;
        }
        Ok(())
    }

    /// Reads `len` bytes at logical byte `offset` of a file with the given extents; holes
    /// read as zeros.
    fn read_mapped(&self, extents: &[Extent], offset: u64, len: usize) -> Result<Vec<u8>> {
        let bs = self.sb.block_size;
        let mut buf = vec![0u8; len];
        let end = offset + len as u64;
        for e in extents {
            let e_start = e.logical.saturating_mul(bs);
            let e_end = e_start.saturating_add(e.count.saturating_mul(bs));
            let lo = offset.max(e_start);
            let hi = end.min(e_end);
            if lo >= hi {
                continue;
            }
            // Contiguous within an extent only while inside one AG; read block by block when
            // an extent would cross (it cannot on a valid filesystem, so this is rare).
            let mut pos = lo;
            while pos < hi {
                let block = e.start + (pos - e_start) / bs;
                let in_block = pos % bs;
                let n = (bs - in_block).min(hi - pos);
                let phys = self.fsb_offset(block)? + in_block;
                let dst = (pos - offset) as usize;
                self.vol
                    .read_exact_at(phys, &mut buf[dst..dst + n as usize], "XFS file data")?;
                pos += n;
            }
        }
        Ok(buf)
    }

    fn dir_entries(&self, ino: u64) -> Result<Vec<(Vec<u8>, u64)>> {
        let inode = self.inode(ino)?;
        if inode.mode & S_IFMT != S_IFDIR {
            return Err(GuestError::invalid("XFS directory", 0, "not a directory"));
        }
        match inode.format {
            FMT_LOCAL => self.shortform_dir(&inode),
            FMT_EXTENTS | FMT_BTREE => self.block_dir(&inode),
            f => Err(GuestError::invalid(
                "XFS directory",
                0,
                format!("data fork format {f}"),
            )),
        }
    }

    fn shortform_dir(&self, inode: &Inode) -> Result<Vec<(Vec<u8>, u64)>> {
        let f = &inode.fork;
        let bad = || GuestError::invalid("XFS short-form directory", 0, "truncated entry");
        let count = usize::from(*f.first().ok_or_else(bad)?);
        let i8count = usize::from(*f.get(1).ok_or_else(bad)?);
        let ino_len = if i8count > 0 { 8 } else { 4 };
        let mut pos = 2 + ino_len;
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let namelen = usize::from(*f.get(pos).ok_or_else(bad)?);
            let name_at = pos + 3;
            let name = f.get(name_at..name_at + namelen).ok_or_else(bad)?.to_vec();
            let ino_at = name_at + namelen + usize::from(self.sb.ftype);
            let ino_bytes = f.get(ino_at..ino_at + ino_len).ok_or_else(bad)?;
            let ino = if ino_len == 8 {
                be::u64(ino_bytes, 0)
            } else {
                u64::from(be::u32(ino_bytes, 0))
            };
            out.push((name, ino));
            pos = ino_at + ino_len;
        }
        Ok(out)
    }

    fn block_dir(&self, inode: &Inode) -> Result<Vec<(Vec<u8>, u64)>> {
        let extents = self.extents(inode)?;
        let bs = self.sb.block_size;
        let dbs = self.sb.dir_block_size;
        let data_end = inode.size.min(DIR2_LEAF_OFFSET);
        let mut out = Vec::new();
        let mut read = 0u64;
        for e in &extents {
            let start = e.logical.saturating_mul(bs);
            let end = start
                .saturating_add(e.count.saturating_mul(bs))
                .min(data_end);
            let mut at = start;
            while at + dbs <= end {
                read += dbs;
                if read > MAX_DIR_BYTES {
                    return Err(GuestError::LimitExceeded {
                        what: "XFS directory bytes",
                        limit: MAX_DIR_BYTES,
                    });
                }
                let block = self.read_mapped(&extents, at, dbs as usize)?;
                self.parse_dir_data_block(&block, at, &mut out)?;
                if out.len() > MAX_DIR_ENTRIES {
                    return Err(GuestError::LimitExceeded {
                        what: "XFS directory entries",
                        limit: MAX_DIR_ENTRIES as u64,
                    });
                }
                at += dbs;
            }
        }
        Ok(out)
    }

    fn parse_dir_data_block(&self, b: &[u8], at: u64, out: &mut Vec<(Vec<u8>, u64)>) -> Result<()> {
        let magic = &b[0..4];
        let (hdr, single) = match magic {
            b"XDB3" => (64, true),
            b"XDD3" => (64, false),
            b"XD2B" => (16, true),
            b"XD2D" => (16, false),
            _ => {
                return Err(GuestError::invalid(
                    "XFS directory block",
                    at,
                    "unknown magic",
                ));
            }
        };
        let mut end = b.len();
        if single {
            let count = be::u32(b, b.len() - 8) as usize;
            end = count
                .checked_mul(8)
                .and_then(|l| b.len().checked_sub(8 + l))
                .filter(|&e| e >= hdr)
                .ok_or(GuestError::invalid(
                    "XFS directory block tail",
                    at,
                    "leaf count too large",
                ))?;
        }
        let mut pos = hdr;
        while pos + 8 <= end {
            if be::u16(b, pos) == 0xffff {
                let len = usize::from(be::u16(b, pos + 2));
                if len < 8 || len % 8 != 0 {
                    return Err(GuestError::invalid(
                        "XFS directory free entry",
                        at + pos as u64,
                        format!("length {len}"),
                    ));
                }
                pos += len;
                continue;
            }
            let ino = be::u64(b, pos);
            let namelen = usize::from(b[pos + 8]);
            let name = b
                .get(pos + 9..pos + 9 + namelen)
                .ok_or(GuestError::invalid(
                    "XFS directory entry",
                    at + pos as u64,
                    "name past the block",
                ))?;
            let len = (8 + 1 + namelen + usize::from(self.sb.ftype) + 2).div_ceil(8) * 8;
            if name != b"." && name != b".." {
                out.push((name.to_vec(), ino));
            }
            pos += len;
        }
        Ok(())
    }

    fn file_bytes(&self, ino: u64, max: usize) -> Result<Vec<u8>> {
        let inode = self.inode(ino)?;
        let len = usize::try_from(inode.size).unwrap_or(usize::MAX).min(max);
        match inode.format {
            FMT_LOCAL => Ok(inode.fork[..len.min(inode.fork.len())].to_vec()),
            FMT_EXTENTS | FMT_BTREE => {
                let extents = self.extents(&inode)?;
                self.read_mapped(&extents, 0, len)
            }
            f => Err(GuestError::invalid(
                "XFS file",
                0,
                format!("data fork format {f}"),
            )),
        }
    }
}

/// Decodes packed 128-bit big-endian extent records.
fn decode_extents(raw: &[u8], out: &mut Vec<Extent>) {
    for r in raw.chunks_exact(16) {
        let l0 = be::u64(r, 0);
        let l1 = be::u64(r, 8);
        out.push(Extent {
            logical: (l0 >> 9) & ((1 << 54) - 1),
            start: ((l0 & 0x1ff) << 43) | (l1 >> 21),
            count: l1 & ((1 << 21) - 1),
        });
    }
}

impl InodeTree for XfsFs {
    fn root(&self) -> u64 {
        self.sb.root_ino
    }

    fn lookup(&self, dir: u64, name: &[u8]) -> Result<Option<u64>> {
        Ok(self
            .dir_entries(dir)?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, i)| i))
    }

    fn node_kind(&self, ino: u64) -> Result<NodeKind> {
        Ok(match self.inode(ino)?.mode & S_IFMT {
            S_IFDIR => NodeKind::Dir,
            S_IFREG => NodeKind::File,
            S_IFLNK => NodeKind::Symlink,
            _ => NodeKind::Other,
        })
    }

    fn read_link(&self, ino: u64) -> Result<Vec<u8>> {
        let inode = self.inode(ino)?;
        if inode.size > MAX_SYMLINK {
            return Err(GuestError::invalid(
                "XFS symlink",
                0,
                format!("{} bytes", inode.size),
            ));
        }
        if inode.format == FMT_LOCAL {
            return Ok(inode.fork[..(inode.size as usize).min(inode.fork.len())].to_vec());
        }
        // Remote symlink: v5 blocks start with a 56-byte XSLM header.
        let extents = self.extents(&inode)?;
        let bs = self.sb.block_size as usize;
        let block = self.read_mapped(&extents, 0, bs)?;
        let data = if self.sb.v5 && &block[0..4] == b"XSLM" {
            &block[56..]
        } else {
            &block[..]
        };
        Ok(data[..(inode.size as usize).min(data.len())].to_vec())
    }
}

impl GuestFs for XfsFs {
    fn kind(&self) -> FsKind {
        FsKind::Xfs
    }

    fn read_file(&self, path: &str, max: usize) -> Result<Option<Vec<u8>>> {
        let Some(ino) = resolve(self, path, "xfs")? else {
            return Ok(None);
        };
        if self.node_kind(ino)? != NodeKind::File {
            return Ok(None);
        }
        self.file_bytes(ino, max).map(Some)
    }

    fn list_dir(&self, path: &str) -> Result<Option<Vec<String>>> {
        let Some(ino) = resolve(self, path, "xfs")? else {
            return Ok(None);
        };
        if self.node_kind(ino)? != NodeKind::Dir {
            return Ok(None);
        }
        Ok(Some(
            self.dir_entries(ino)?
                .into_iter()
                .map(|(n, _)| String::from_utf8_lossy(&n).into_owned())
                .collect(),
        ))
    }

    fn exists(&self, path: &str) -> Result<bool> {
        Ok(resolve(self, path, "xfs")?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_records_decode() {
        // logical 5, start block 0x1_0000_0001, count 7.
        let logical = 5u64;
        let start = 0x1_0000_0001u64;
        let count = 7u64;
        let l0 = (logical << 9) | (start >> 43);
        let l1 = (start << 21) | count;
        let mut raw = l0.to_be_bytes().to_vec();
        raw.extend_from_slice(&l1.to_be_bytes());
        let mut out = Vec::new();
        decode_extents(&raw, &mut out);
        assert_eq!(
            (out[0].logical, out[0].start, out[0].count),
            (logical, start, count)
        );
    }

    #[test]
    fn superblock_validation() {
        let mut sb = vec![0u8; 512];
        sb[0..4].copy_from_slice(b"XFSB");
        assert!(parse_super(&sb).is_err());
        sb[4..8].copy_from_slice(&4096u32.to_be_bytes());
        sb[100..102].copy_from_slice(&5u16.to_be_bytes());
        sb[104..106].copy_from_slice(&512u16.to_be_bytes());
        sb[120] = 12;
        sb[122] = 9;
        sb[123] = 3;
        sb[124] = 16;
        let s = parse_super(&sb).unwrap();
        assert!(s.v5);
        assert_eq!(s.dir_block_size, 4096);
        sb[123] = 4;
        assert!(parse_super(&sb).is_err());
    }
}
