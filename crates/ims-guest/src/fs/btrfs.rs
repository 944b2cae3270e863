//! Btrfs on one device, read-only and just enough to read OS files: superblock (crc32c
//! checked), chunk map bootstrapped from `sys_chunk_array` then the chunk tree, root tree,
//! FS trees of subvolumes, directory lookup by name hash, inline and regular extents (zlib and
//! zstd compressed ones too), symlinks. Every tree node's checksum, address and level is
//! checked before it is used.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read;
use std::rc::Rc;

use super::resolve::{InodeTree, NodeKind, resolve};
use super::{FsKind, GuestFs, MAX_DIR_ENTRIES};
use crate::error::{GuestError, Result};
use crate::volume::{Volume, le};

/// Where the primary superblock lives.
pub const SUPERBLOCK_OFFSET: u64 = 0x10000;
/// Bytes of the superblock covered by its checksum (from byte 0x20 on).
const SUPERBLOCK_SIZE: usize = 4096;
/// Smallest and largest tree node (Btrfs allows 4 KiB .. 64 KiB).
const MIN_NODE_SIZE: u32 = 4096;
pub const MAX_NODE_SIZE: u32 = 64 << 10;
/// Largest sector size (Btrfs allows 4 KiB .. 64 KiB).
const MAX_SECTOR_SIZE: u32 = 64 << 10;
/// Btrfs' BTRFS_MAX_LEVEL: a tree is at most 8 levels deep (0..=7).
pub const MAX_TREE_LEVEL: u8 = 7;
/// Most chunks mapped (a 16 TiB filesystem of 1 GiB data chunks has ~16k).
pub const MAX_CHUNKS: usize = 1 << 16;
/// Most tree nodes read by one range search (bounds work on a corrupt tree whose internal
/// nodes all point at the same children).
pub const MAX_NODES_PER_SEARCH: usize = 1 << 16;
/// Most items returned by one range search (a directory of MAX_DIR_ENTRIES, a file's extents).
pub const MAX_ITEMS_PER_SEARCH: usize = MAX_DIR_ENTRIES * 2;
/// Btrfs compresses at most 128 KiB of file data into one extent, so neither side of a
/// compressed extent may be larger.
pub const MAX_COMPRESSED_EXTENT: u64 = 128 << 10;
/// Longest symlink target (Linux PATH_MAX).
pub const MAX_SYMLINK: usize = 4096;
/// Most subvolumes examined when looking for the OS root (`@`, `root`, snapshots…).
pub const MAX_SUBVOLUMES: usize = 1024;
/// Deepest subvolume nesting / directory depth followed to name a subvolume's path.
pub const MAX_PATH_DEPTH: usize = 256;
/// Tree nodes kept decoded in memory.
const NODE_CACHE: usize = 1024;
/// Distinct (subvolume, inode) pairs the path resolver may see in one filesystem.
const MAX_HANDLES: usize = 1 << 20;

// Object ids and item types (ctree.h).
const FS_TREE_OBJECTID: u64 = 5;
const ROOT_TREE_DIR_OBJECTID: u64 = 6;
const FIRST_FREE_OBJECTID: u64 = 256;
const FIRST_CHUNK_TREE_OBJECTID: u64 = 256;
const INODE_ITEM: u8 = 1;
const INODE_REF: u8 = 12;
const DIR_ITEM: u8 = 84;
const EXTENT_DATA: u8 = 108;
const ROOT_ITEM: u8 = 132;
const ROOT_REF: u8 = 156;
const CHUNK_ITEM: u8 = 228;

// Chunk profile bits that stripe data over several devices.
const BLOCK_GROUP_STRIPED: u64 = 0x8 | 0x40 | 0x80 | 0x100; // RAID0, RAID10, RAID5, RAID6

const CSUM_CRC32C: u16 = 0;
const INCOMPAT_METADATA_UUID: u64 = 1 << 10;

const HEADER_SIZE: usize = 101;
const ITEM_SIZE: usize = 25;
const KEY_PTR_SIZE: usize = 33;
const CHUNK_FIXED: usize = 48;
const STRIPE_SIZE: usize = 32;
const DIR_ITEM_FIXED: usize = 30;
const FILE_EXTENT_INLINE_DATA: usize = 21;
const FILE_EXTENT_REGULAR: usize = 53;
const INODE_ITEM_SIZE: usize = 160;
const ROOT_ITEM_MIN: usize = 239;

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// A tree key, ordered as Btrfs orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    objectid: u64,
    kind: u8,
    offset: u64,
}

impl Key {
    const fn new(objectid: u64, kind: u8, offset: u64) -> Key {
        Key {
            objectid,
            kind,
            offset,
        }
    }

    fn parse(b: &[u8], at: usize) -> Key {
        Key {
            objectid: le::u64(b, at),
            kind: b.get(at + 8).copied().unwrap_or(0),
            offset: le::u64(b, at + 9),
        }
    }
}

/// The superblock fields the reader needs, validated.
#[derive(Debug, Clone)]
struct Super {
    fsid: [u8; 16],
    root: u64,
    root_level: u8,
    chunk_root: u64,
    chunk_root_level: u8,
    node_size: u32,
    devid: u64,
    sys_chunks: Vec<u8>,
}

fn invalid(what: &'static str, offset: u64, reason: impl Into<String>) -> GuestError {
    GuestError::invalid(what, offset, reason)
}

fn unsupported(message: impl Into<String>) -> GuestError {
    GuestError::Filesystem {
        fs: "btrfs",
        message: message.into(),
    }
}

fn parse_super(sb: &[u8]) -> Result<Super> {
    let at = SUPERBLOCK_OFFSET;
    if sb.len() < SUPERBLOCK_SIZE || &sb[0x40..0x48] != b"_BHRfS_M" {
        return Err(invalid("Btrfs superblock", at, "no _BHRfS_M magic"));
    }
    let csum_type = le::u16(sb, 0xc4);
    if csum_type != CSUM_CRC32C {
        return Err(unsupported(format!(
            "checksum type {csum_type} is not supported (only crc32c)"
        )));
    }
    let want = le::u32(sb, 0);
    let got = crc32c::crc32c(&sb[0x20..SUPERBLOCK_SIZE]);
    if want != got {
        return Err(invalid(
            "Btrfs superblock",
            at,
            format!("checksum {want:#010x}, computed {got:#010x}"),
        ));
    }
    if le::u64(sb, 0x30) != at {
        return Err(invalid("Btrfs superblock", at, "bytenr is not its offset"));
    }
    let num_devices = le::u64(sb, 0x88);
    if num_devices != 1 {
        return Err(unsupported(format!(
            "the filesystem spans {num_devices} devices; only single-device Btrfs is read"
        )));
    }
    let sector_size = le::u32(sb, 0x90);
    let node_size = le::u32(sb, 0x94);
    if !sector_size.is_power_of_two() || !(4096..=MAX_SECTOR_SIZE).contains(&sector_size) {
        return Err(invalid(
            "Btrfs superblock",
            at,
            format!("sector size {sector_size}"),
        ));
    }
    if !node_size.is_power_of_two()
        || !(MIN_NODE_SIZE..=MAX_NODE_SIZE).contains(&node_size)
        || node_size < sector_size
    {
        return Err(invalid(
            "Btrfs superblock",
            at,
            format!("node size {node_size}"),
        ));
    }
    let root_level = sb[0xc6];
    let chunk_root_level = sb[0xc7];
    if root_level > MAX_TREE_LEVEL || chunk_root_level > MAX_TREE_LEVEL {
        return Err(invalid("Btrfs superblock", at, "tree level above 7"));
    }
    let sys_len = le::u32(sb, 0xa0) as usize;
    let sys_chunks = sb
        .get(0x32b..0x32b + sys_len)
        .filter(|_| sys_len <= 2048)
        .ok_or_else(|| {
            invalid(
                "Btrfs superblock",
                at,
                format!("sys_chunk_array size {sys_len}"),
            )
        })?
        .to_vec();
    // Nodes carry the metadata UUID when the filesystem's UUID was changed after mkfs.
    let fsid_at = if le::u64(sb, 0xbc) & INCOMPAT_METADATA_UUID != 0 {
        0x23b
    } else {
        0x20
    };
    let mut fsid = [0u8; 16];
    fsid.copy_from_slice(&sb[fsid_at..fsid_at + 16]);
    Ok(Super {
        fsid,
        root: le::u64(sb, 0x50),
        root_level,
        chunk_root: le::u64(sb, 0x58),
        chunk_root_level,
        node_size,
        devid: le::u64(sb, 0xc9),
        sys_chunks,
    })
}

/// One chunk: `length` logical bytes from `logical` live at `physical` on the device.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    logical: u64,
    length: u64,
    physical: u64,
    striped: bool,
}

/// Parses a `btrfs_chunk` at `b[at..]`; returns it and its size in bytes.
fn parse_chunk(b: &[u8], at: usize, logical: u64, devid: u64) -> Result<(Chunk, usize)> {
    let bad = |reason: String| invalid("Btrfs chunk item", logical, reason);
    let num_stripes = usize::from(le::u16(b, at + 44));
    let size = CHUNK_FIXED + num_stripes * STRIPE_SIZE;
    if num_stripes == 0 || at + size > b.len() {
        return Err(bad(format!("{num_stripes} stripes do not fit")));
    }
    let length = le::u64(b, at);
    let kind = le::u64(b, at + 24);
    // Single, DUP and the RAID1 family keep a whole copy in every stripe: use the one on
    // this device.
    let stripe = (0..num_stripes)
        .map(|i| at + CHUNK_FIXED + i * STRIPE_SIZE)
        .find(|&s| le::u64(b, s) == devid)
        .ok_or_else(|| bad(format!("no stripe on device {devid}")))?;
    if length == 0 || logical.checked_add(length).is_none() {
        return Err(bad(format!("length {length}")));
    }
    Ok((
        Chunk {
            logical,
            length,
            physical: le::u64(b, stripe + 8),
            striped: kind & BLOCK_GROUP_STRIPED != 0,
        },
        size,
    ))
}

/// A checked tree node: its level and either items (leaf) or child pointers (internal).
#[derive(Debug)]
struct Node {
    level: u8,
    bytes: Vec<u8>,
    nritems: usize,
}

impl Node {
    /// Leaf item `i`: its key and data.
    fn item(&self, i: usize) -> (Key, &[u8]) {
        let at = HEADER_SIZE + i * ITEM_SIZE;
        let off = HEADER_SIZE + le::u32(&self.bytes, at + 17) as usize;
        let len = le::u32(&self.bytes, at + 21) as usize;
        (Key::parse(&self.bytes, at), &self.bytes[off..off + len])
    }

    /// Internal node pointer `i`: the first key under it and the child's address.
    fn ptr(&self, i: usize) -> (Key, u64) {
        let at = HEADER_SIZE + i * KEY_PTR_SIZE;
        (Key::parse(&self.bytes, at), le::u64(&self.bytes, at + 17))
    }
}

/// A tree root: address and level of its top node.
#[derive(Debug, Clone, Copy)]
struct TreeRoot {
    bytenr: u64,
    level: u8,
}

/// What every view of one filesystem shares: the volume, superblock, chunk map, node cache.
struct Shared {
    vol: Volume,
    sb: Super,
    chunks: Vec<Chunk>,
    nodes: RefCell<HashMap<u64, Rc<Node>>>,
    trees: RefCell<HashMap<u64, TreeRoot>>,
}

impl Shared {
    fn map(&self, logical: u64, len: u64, what: &'static str) -> Result<u64> {
        let i = self.chunks.partition_point(|c| c.logical <= logical);
        let c = i
            .checked_sub(1)
            .map(|i| self.chunks[i])
            .filter(|c| logical - c.logical < c.length)
            .ok_or_else(|| invalid(what, logical, "logical address is in no chunk"))?;
        if c.striped {
            return Err(unsupported(format!(
                "the chunk at {} is striped (RAID0/10/5/6); only single-device profiles are read",
                c.logical
            )));
        }
        let within = logical - c.logical;
        if len > c.length - within {
            return Err(invalid(what, logical, "runs past the end of its chunk"));
        }
        c.physical
            .checked_add(within)
            .ok_or_else(|| invalid(what, logical, "physical address overflows"))
    }

    /// Reads and checks the node at `bytenr`, which its parent says is at `level`.
    fn node(&self, bytenr: u64, level: u8) -> Result<Rc<Node>> {
        if let Some(n) = self.nodes.borrow().get(&bytenr) {
            if n.level != level {
                return Err(invalid("Btrfs tree node", bytenr, "level mismatch"));
            }
            return Ok(n.clone());
        }
        let size = self.sb.node_size;
        let phys = self.map(bytenr, u64::from(size), "Btrfs tree node")?;
        let bytes = self.vol.read_vec(phys, size as usize, "Btrfs tree node")?;
        let bad = |reason: String| invalid("Btrfs tree node", bytenr, reason);
        let want = le::u32(&bytes, 0);
        let got = crc32c::crc32c(&bytes[0x20..]);
        if want != got {
            return Err(bad(format!("checksum {want:#010x}, computed {got:#010x}")));
        }
        if le::u64(&bytes, 0x30) != bytenr {
            return Err(bad("header bytenr is not its address".into()));
        }
        if bytes[0x20..0x30] != self.sb.fsid {
            return Err(bad("fsid differs from the superblock's".into()));
        }
        let node_level = bytes[0x64];
        if node_level != level {
            return Err(bad(format!("level {node_level}, expected {level}")));
        }
        let nritems = le::u32(&bytes, 0x60) as usize;
        let entry = if level == 0 { ITEM_SIZE } else { KEY_PTR_SIZE };
        let room = (bytes.len() - HEADER_SIZE) / entry;
        if nritems > room {
            return Err(bad(format!("{nritems} items do not fit")));
        }
        if level == 0 {
            let data_len = bytes.len() - HEADER_SIZE;
            for i in 0..nritems {
                let at = HEADER_SIZE + i * ITEM_SIZE;
                let off = le::u32(&bytes, at + 17) as usize;
                let len = le::u32(&bytes, at + 21) as usize;
                if off.checked_add(len).is_none_or(|end| end > data_len)
                    || off < nritems * ITEM_SIZE
                {
                    return Err(bad(format!("item {i} data outside the leaf")));
                }
            }
        }
        let node = Rc::new(Node {
            level,
            bytes,
            nritems,
        });
        let mut cache = self.nodes.borrow_mut();
        if cache.len() >= NODE_CACHE {
            cache.clear();
        }
        cache.insert(bytenr, node.clone());
        Ok(node)
    }

    /// Every item with `min <= key <= max` in the tree at `root`, in key order; calls
    /// `each` until it returns `false`.
    fn search(
        &self,
        root: TreeRoot,
        min: Key,
        max: Key,
        each: &mut dyn FnMut(Key, &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let mut visited = 0usize;
        let mut items = 0usize;
        self.search_node(
            root.bytenr,
            root.level,
            min,
            max,
            &mut visited,
            &mut items,
            each,
        )
        .map(|_| ())
    }

    #[allow(clippy::too_many_arguments)]
    fn search_node(
        &self,
        bytenr: u64,
        level: u8,
        min: Key,
        max: Key,
        visited: &mut usize,
        items: &mut usize,
        each: &mut dyn FnMut(Key, &[u8]) -> Result<bool>,
    ) -> Result<bool> {
        *visited += 1;
        if *visited > MAX_NODES_PER_SEARCH {
            return Err(GuestError::LimitExceeded {
                what: "Btrfs tree nodes read by one search",
                limit: MAX_NODES_PER_SEARCH as u64,
            });
        }
        let node = self.node(bytenr, level)?;
        if level == 0 {
            for i in 0..node.nritems {
                let (key, data) = node.item(i);
                if key < min {
                    continue;
                }
                if key > max {
                    return Ok(false);
                }
                *items += 1;
                if *items > MAX_ITEMS_PER_SEARCH {
                    return Err(GuestError::LimitExceeded {
                        what: "Btrfs items returned by one search",
                        limit: MAX_ITEMS_PER_SEARCH as u64,
                    });
                }
                if !each(key, data)? {
                    return Ok(false);
                }
            }
            return Ok(true);
        }
        for i in 0..node.nritems {
            let (first, child) = node.ptr(i);
            if first > max {
                return Ok(false);
            }
            let next_first = (i + 1 < node.nritems).then(|| node.ptr(i + 1).0);
            if next_first.is_some_and(|n| n <= min) {
                continue;
            }
            if !self.search_node(child, level - 1, min, max, visited, items, each)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The first item with exactly `key`.
    fn find_exact(&self, root: TreeRoot, key: Key) -> Result<Option<Vec<u8>>> {
        let mut found = None;
        self.search(root, key, key, &mut |_, data| {
            found = Some(data.to_vec());
            Ok(false)
        })?;
        Ok(found)
    }

    fn root_tree(&self) -> TreeRoot {
        TreeRoot {
            bytenr: self.sb.root,
            level: self.sb.root_level,
        }
    }

    /// The root of subvolume (or other tree) `id`, from its ROOT_ITEM in the root tree.
    fn tree(&self, id: u64) -> Result<TreeRoot> {
        if let Some(t) = self.trees.borrow().get(&id) {
            return Ok(*t);
        }
        let mut item = None;
        self.search(
            self.root_tree(),
            Key::new(id, ROOT_ITEM, 0),
            Key::new(id, ROOT_ITEM, u64::MAX),
            &mut |_, data| {
                item = Some(data.to_vec());
                Ok(true) // the last one (highest offset) is the newest
            },
        )?;
        let item = item.ok_or_else(|| unsupported(format!("subvolume {id} has no root item")))?;
        if item.len() < ROOT_ITEM_MIN {
            return Err(invalid(
                "Btrfs root item",
                id,
                format!("{} bytes", item.len()),
            ));
        }
        let level = item[238];
        if level > MAX_TREE_LEVEL {
            return Err(invalid("Btrfs root item", id, format!("level {level}")));
        }
        let t = TreeRoot {
            bytenr: le::u64(&item, 176),
            level,
        };
        let mut trees = self.trees.borrow_mut();
        if trees.len() >= MAX_SUBVOLUMES {
            trees.clear();
        }
        trees.insert(id, t);
        Ok(t)
    }
}

/// Builds the chunk map: the superblock's system chunks, then every chunk in the chunk tree.
fn read_chunks(vol: &Volume, sb: &Super) -> Result<Vec<Chunk>> {
    let mut chunks = Vec::new();
    let sys = &sb.sys_chunks;
    let mut at = 0usize;
    while at < sys.len() {
        if at + 17 > sys.len() {
            return Err(invalid(
                "Btrfs sys_chunk_array",
                SUPERBLOCK_OFFSET,
                "truncated key",
            ));
        }
        let key = Key::parse(sys, at);
        if key.kind != CHUNK_ITEM {
            return Err(invalid(
                "Btrfs sys_chunk_array",
                SUPERBLOCK_OFFSET,
                format!("item type {}", key.kind),
            ));
        }
        let (chunk, size) = parse_chunk(sys, at + 17, key.offset, sb.devid)?;
        chunks.push(chunk);
        at += 17 + size;
    }
    chunks.sort_by_key(|c| c.logical);
    let shared = Shared {
        vol: vol.clone(),
        sb: sb.clone(),
        chunks,
        nodes: RefCell::new(HashMap::new()),
        trees: RefCell::new(HashMap::new()),
    };
    let mut all = shared.chunks.clone();
    let chunk_root = TreeRoot {
        bytenr: sb.chunk_root,
        level: sb.chunk_root_level,
    };
    let devid = sb.devid;
    shared.search(
        chunk_root,
        Key::new(FIRST_CHUNK_TREE_OBJECTID, CHUNK_ITEM, 0),
        Key::new(FIRST_CHUNK_TREE_OBJECTID, CHUNK_ITEM, u64::MAX),
        &mut |key, data| {
            if all.len() >= MAX_CHUNKS {
                return Err(GuestError::LimitExceeded {
                    what: "Btrfs chunks",
                    limit: MAX_CHUNKS as u64,
                });
            }
            all.push(parse_chunk(data, 0, key.offset, devid)?.0);
            Ok(true)
        },
    )?;
    all.sort_by_key(|c| c.logical);
    all.dedup_by_key(|c| c.logical);
    if all
        .windows(2)
        .any(|w| w[0].logical + w[0].length > w[1].logical)
    {
        return Err(invalid("Btrfs chunk tree", sb.chunk_root, "chunks overlap"));
    }
    Ok(all)
}

/// A decoded inode item: type and size.
#[derive(Debug, Clone, Copy)]
struct Inode {
    mode: u32,
    size: u64,
}

/// Where a directory entry points: an inode in the same subvolume, or another subvolume.
fn parse_dir_items(data: &[u8], at: u64) -> Result<Vec<(Vec<u8>, Key)>> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        let name_len = usize::from(le::u16(data, pos + 27));
        let data_len = usize::from(le::u16(data, pos + 25));
        let end = pos + DIR_ITEM_FIXED + name_len + data_len;
        if end > data.len() {
            return Err(invalid("Btrfs directory item", at, "name past the item"));
        }
        let name = data[pos + DIR_ITEM_FIXED..pos + DIR_ITEM_FIXED + name_len].to_vec();
        out.push((name, Key::parse(data, pos)));
        pos = end;
    }
    Ok(out)
}

/// Btrfs' directory name hash: crc32c seeded with ~1, without the final inversion.
fn name_hash(name: &[u8]) -> u64 {
    u64::from(!crc32c::crc32c_append(1, name))
}

/// Decompresses one extent's bytes (`compression`: 1 zlib, 2 lzo, 3 zstd) to at most
/// `ram_bytes` bytes.
fn decompress(compression: u8, data: &[u8], ram_bytes: u64, at: u64) -> Result<Vec<u8>> {
    if ram_bytes > MAX_COMPRESSED_EXTENT {
        return Err(invalid(
            "Btrfs compressed extent",
            at,
            format!("{ram_bytes} bytes uncompressed"),
        ));
    }
    let mut out = Vec::with_capacity(ram_bytes as usize);
    let failed = |kind: &str, e: std::io::Error| {
        invalid("Btrfs compressed extent", at, format!("{kind}: {e}"))
    };
    match compression {
        1 => {
            flate2::read::ZlibDecoder::new(data)
                .take(ram_bytes)
                .read_to_end(&mut out)
                .map_err(|e| failed("zlib", e))?;
        }
        3 => {
            zstd::stream::read::Decoder::with_buffer(data)
                .map_err(|e| failed("zstd", e))?
                .single_frame()
                .take(ram_bytes)
                .read_to_end(&mut out)
                .map_err(|e| failed("zstd", e))?;
        }
        2 => out = lzo_extent(data, ram_bytes as usize, at)?,
        c => {
            return Err(unsupported(format!(
                "the extent at {at} uses unknown compression {c}"
            )));
        }
    }
    Ok(out)
}

/// The sector Btrfs' LZO framing aligns segment headers to (4 KiB on x86-64 and most arm64).
const LZO_SECTOR: usize = 4096;

/// Btrfs' LZO framing: a u32 total length, then segments (a u32 length and one LZO1X stream of
/// at most one sector's output) whose headers never straddle a sector boundary (zero padding).
fn lzo_extent(data: &[u8], ram_bytes: usize, at: u64) -> Result<Vec<u8>> {
    let bad = |reason: String| invalid("Btrfs LZO extent", at, reason);
    let u32_at = |i: usize| {
        data.get(i..i.checked_add(4)?)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let total = u32_at(0).ok_or_else(|| bad("no length header".into()))?;
    if total < 4 || total > data.len() {
        return Err(bad(format!("length {total} in {} bytes", data.len())));
    }
    let mut out = Vec::with_capacity(ram_bytes);
    let mut cur = 4usize;
    while cur < total && out.len() < ram_bytes {
        let room = LZO_SECTOR - cur % LZO_SECTOR;
        if room < 4 {
            cur += room;
            if cur >= total {
                break;
            }
        }
        let seg =
            u32_at(cur).ok_or_else(|| bad(format!("segment header at {cur} past the end")))?;
        cur += 4;
        let end = cur
            .checked_add(seg)
            .filter(|&e| e <= total)
            .ok_or_else(|| bad(format!("segment of {seg} bytes at {cur} past the end")))?;
        let want = (ram_bytes - out.len()).min(LZO_SECTOR);
        let piece = super::lzo::decompress(&data[cur..end], want)
            .map_err(|e| bad(format!("segment at {cur}: {e}")))?;
        out.extend_from_slice(&piece);
        cur = end;
    }
    Ok(out)
}

/// Handles given to the path resolver: handle → (subvolume, inode) and back.
type Handles = (Vec<(u64, u64)>, HashMap<(u64, u64), u64>);
/// Subvolume id → (parent subvolume, directory inode in the parent, name), from ROOT_REFs.
type RootRefs = HashMap<u64, (u64, u64, Vec<u8>)>;

/// A Btrfs filesystem opened read-only, seen from one subvolume.
pub struct BtrfsFs {
    shared: Rc<Shared>,
    /// The subvolume whose root directory is `/`.
    subvolume: u64,
    /// Its path from the top-level subvolume (`@`, `root`), `None` for the top level.
    subvolume_path: Option<String>,
    /// Handles given to the path resolver, each naming (subvolume, inode).
    handles: RefCell<Handles>,
}

impl BtrfsFs {
    /// Opens the filesystem on its default subvolume (`btrfs subvolume set-default`), the
    /// top level unless one was set.
    pub fn open(vol: Volume) -> Result<BtrfsFs> {
        let head = vol.read_vec(SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, "Btrfs superblock")?;
        let sb = parse_super(&head)?;
        let chunks = read_chunks(&vol, &sb)?;
        let shared = Rc::new(Shared {
            vol,
            sb,
            chunks,
            nodes: RefCell::new(HashMap::new()),
            trees: RefCell::new(HashMap::new()),
        });
        let top = BtrfsFs::view(shared.clone(), FS_TREE_OBJECTID, None);
        let default = top.default_subvolume()?;
        if default == FS_TREE_OBJECTID {
            return Ok(top);
        }
        let path = top.subvolume_path_of(default)?;
        Ok(BtrfsFs::view(shared, default, Some(path)))
    }

    fn view(shared: Rc<Shared>, subvolume: u64, subvolume_path: Option<String>) -> BtrfsFs {
        // Handle 0 is the subvolume's top directory, always inode 256.
        let root = (subvolume, FIRST_FREE_OBJECTID);
        BtrfsFs {
            shared,
            subvolume,
            subvolume_path,
            handles: RefCell::new((vec![root], HashMap::from([(root, 0)]))),
        }
    }

    /// The subvolume `/` is in, and its path (`None` for the top level).
    pub fn subvolume(&self) -> (u64, Option<&str>) {
        (self.subvolume, self.subvolume_path.as_deref())
    }

    /// The same filesystem seen from subvolume `id`.
    pub fn with_subvolume(&self, id: u64) -> Result<BtrfsFs> {
        self.shared.tree(id)?;
        let path = (id != FS_TREE_OBJECTID)
            .then(|| self.subvolume_path_of(id))
            .transpose()?;
        Ok(BtrfsFs::view(self.shared.clone(), id, path))
    }

    /// The same filesystem seen from the subvolume at `path` (as fstab's `subvol=` names it,
    /// relative to the top level), if there is one.
    pub fn with_subvolume_path(&self, path: &str) -> Result<Option<BtrfsFs>> {
        let want = path.trim_matches('/');
        if want.is_empty() {
            return self.with_subvolume(FS_TREE_OBJECTID).map(Some);
        }
        for (id, p) in self.subvolumes()? {
            if p == want {
                return self.with_subvolume(id).map(Some);
            }
        }
        Ok(None)
    }

    /// The default subvolume's id: the `default` entry of the root tree's directory.
    fn default_subvolume(&self) -> Result<u64> {
        let sh = &self.shared;
        let key = Key::new(ROOT_TREE_DIR_OBJECTID, DIR_ITEM, name_hash(b"default"));
        let Some(data) = sh.find_exact(sh.root_tree(), key)? else {
            return Ok(FS_TREE_OBJECTID);
        };
        Ok(parse_dir_items(&data, ROOT_TREE_DIR_OBJECTID)?
            .into_iter()
            .find(|(n, _)| n == b"default")
            .map(|(_, loc)| loc.objectid)
            .filter(|&id| id == FS_TREE_OBJECTID || id >= FIRST_FREE_OBJECTID)
            .unwrap_or(FS_TREE_OBJECTID))
    }

    /// Every subvolume below the top level with its path (`@`, `@/.snapshots/1/snapshot`),
    /// in id order, at most [`MAX_SUBVOLUMES`].
    pub fn subvolumes(&self) -> Result<Vec<(u64, String)>> {
        let refs = self.root_refs()?;
        let mut out = Vec::new();
        for &child in refs.keys() {
            out.push((child, self.path_from_refs(&refs, child)?));
        }
        out.sort();
        Ok(out)
    }

    /// child id → (parent id, directory inode in the parent, name), from ROOT_REF items.
    fn root_refs(&self) -> Result<RootRefs> {
        let sh = &self.shared;
        let mut refs = HashMap::new();
        sh.search(
            sh.root_tree(),
            Key::new(FS_TREE_OBJECTID, ROOT_REF, 0),
            Key::new(u64::MAX, ROOT_REF, u64::MAX),
            &mut |key, data| {
                if key.kind != ROOT_REF {
                    return Ok(true);
                }
                let name_len = usize::from(le::u16(data, 16));
                let name = data
                    .get(18..18 + name_len)
                    .ok_or_else(|| invalid("Btrfs root ref", key.objectid, "name past the item"))?;
                refs.insert(key.offset, (key.objectid, le::u64(data, 0), name.to_vec()));
                if refs.len() > MAX_SUBVOLUMES {
                    return Err(GuestError::LimitExceeded {
                        what: "Btrfs subvolumes",
                        limit: MAX_SUBVOLUMES as u64,
                    });
                }
                Ok(true)
            },
        )?;
        Ok(refs)
    }

    fn subvolume_path_of(&self, id: u64) -> Result<String> {
        self.path_from_refs(&self.root_refs()?, id)
    }

    /// `parent/dirs/name` of subvolume `id`, walking ROOT_REFs up to the top level and the
    /// INODE_REFs of the directories it sits in.
    fn path_from_refs(&self, refs: &RootRefs, id: u64) -> Result<String> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut cur = id;
        for _ in 0..MAX_PATH_DEPTH {
            if cur == FS_TREE_OBJECTID {
                parts.reverse();
                let joined: Vec<String> = parts
                    .iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect();
                return Ok(joined.join("/"));
            }
            let Some((parent, dir, name)) = refs.get(&cur) else {
                return Err(invalid(
                    "Btrfs subvolume",
                    cur,
                    "not reachable from the top level",
                ));
            };
            parts.push(name.clone());
            let mut dirs = self.dir_path(*parent, *dir)?;
            dirs.reverse();
            parts.extend(dirs);
            cur = *parent;
        }
        Err(GuestError::LimitExceeded {
            what: "Btrfs subvolume nesting",
            limit: MAX_PATH_DEPTH as u64,
        })
    }

    /// Names of the directories from subvolume `tree`'s root down to `ino`, root first.
    fn dir_path(&self, tree: u64, ino: u64) -> Result<Vec<Vec<u8>>> {
        let sh = &self.shared;
        let root = sh.tree(tree)?;
        let mut names = Vec::new();
        let mut cur = ino;
        for _ in 0..MAX_PATH_DEPTH {
            if cur == FIRST_FREE_OBJECTID {
                names.reverse();
                return Ok(names);
            }
            let mut parent = None;
            sh.search(
                root,
                Key::new(cur, INODE_REF, 0),
                Key::new(cur, INODE_REF, u64::MAX),
                &mut |key, data| {
                    let len = usize::from(le::u16(data, 8));
                    let name = data
                        .get(10..10 + len)
                        .ok_or_else(|| invalid("Btrfs inode ref", cur, "name past the item"))?;
                    parent = Some((key.offset, name.to_vec()));
                    Ok(false)
                },
            )?;
            let Some((p, name)) = parent else {
                return Err(invalid("Btrfs inode ref", cur, "directory has no parent"));
            };
            names.push(name);
            cur = p;
        }
        Err(GuestError::LimitExceeded {
            what: "Btrfs directory depth",
            limit: MAX_PATH_DEPTH as u64,
        })
    }

    fn handle(&self, tree: u64, ino: u64) -> Result<u64> {
        let mut h = self.handles.borrow_mut();
        if let Some(&id) = h.1.get(&(tree, ino)) {
            return Ok(id);
        }
        if h.0.len() >= MAX_HANDLES {
            return Err(GuestError::LimitExceeded {
                what: "Btrfs inodes visited",
                limit: MAX_HANDLES as u64,
            });
        }
        let id = h.0.len() as u64;
        h.0.push((tree, ino));
        h.1.insert((tree, ino), id);
        Ok(id)
    }

    fn unhandle(&self, handle: u64) -> Result<(u64, u64)> {
        self.handles
            .borrow()
            .0
            .get(handle as usize)
            .copied()
            .ok_or_else(|| invalid("Btrfs inode handle", handle, "unknown"))
    }

    fn inode(&self, tree: u64, ino: u64) -> Result<Inode> {
        let sh = &self.shared;
        let data = sh
            .find_exact(sh.tree(tree)?, Key::new(ino, INODE_ITEM, 0))?
            .ok_or_else(|| invalid("Btrfs inode", ino, "no inode item"))?;
        if data.len() < INODE_ITEM_SIZE {
            return Err(invalid("Btrfs inode", ino, "item too short"));
        }
        Ok(Inode {
            mode: le::u32(&data, 52),
            size: le::u64(&data, 16),
        })
    }

    /// Looks `name` up in directory `dir` of subvolume `tree` by its name hash.
    fn lookup_in(&self, tree: u64, dir: u64, name: &[u8]) -> Result<Option<(u64, u64)>> {
        let sh = &self.shared;
        let Some(data) = sh.find_exact(sh.tree(tree)?, Key::new(dir, DIR_ITEM, name_hash(name)))?
        else {
            return Ok(None);
        };
        let Some((_, loc)) = parse_dir_items(&data, dir)?
            .into_iter()
            .find(|(n, _)| n == name)
        else {
            return Ok(None);
        };
        Ok(Some(match loc.kind {
            INODE_ITEM => (tree, loc.objectid),
            // A subvolume: its top directory is always inode 256.
            ROOT_ITEM => (loc.objectid, FIRST_FREE_OBJECTID),
            k => {
                return Err(invalid(
                    "Btrfs directory item",
                    dir,
                    format!("location type {k}"),
                ));
            }
        }))
    }

    fn list_in(&self, tree: u64, dir: u64) -> Result<Vec<String>> {
        let sh = &self.shared;
        let mut names = Vec::new();
        sh.search(
            sh.tree(tree)?,
            Key::new(dir, DIR_ITEM, 0),
            Key::new(dir, DIR_ITEM, u64::MAX),
            &mut |_, data| {
                for (n, _) in parse_dir_items(data, dir)? {
                    names.push(String::from_utf8_lossy(&n).into_owned());
                }
                if names.len() > MAX_DIR_ENTRIES {
                    return Err(GuestError::LimitExceeded {
                        what: "Btrfs directory entries",
                        limit: MAX_DIR_ENTRIES as u64,
                    });
                }
                Ok(true)
            },
        )?;
        Ok(names)
    }

    /// The first `max` bytes of file `ino` (holes and preallocated ranges read as zeros).
    fn file_bytes(&self, tree: u64, ino: u64, max: usize) -> Result<Vec<u8>> {
        let inode = self.inode(tree, ino)?;
        let len = usize::try_from(inode.size).unwrap_or(usize::MAX).min(max);
        let mut buf = vec![0u8; len];
        if len == 0 {
            return Ok(buf);
        }
        let sh = &self.shared;
        let end = len as u64;
        let mut failure = None;
        sh.search(
            sh.tree(tree)?,
            Key::new(ino, EXTENT_DATA, 0),
            Key::new(ino, EXTENT_DATA, end - 1),
            &mut |key, data| match self.fill_extent(key.offset, data, &mut buf) {
                Ok(()) => Ok(true),
                Err(e) => {
                    failure = Some(e);
                    Ok(false)
                }
            },
        )?;
        match failure {
            Some(e) => Err(e),
            None => Ok(buf),
        }
    }

    /// Copies the part of one EXTENT_DATA item (file bytes from `file_off`) that falls in `buf`.
    fn fill_extent(&self, file_off: u64, item: &[u8], buf: &mut [u8]) -> Result<()> {
        let at = file_off;
        if item.len() < FILE_EXTENT_INLINE_DATA {
            return Err(invalid("Btrfs file extent", at, "item too short"));
        }
        let ram_bytes = le::u64(item, 8);
        let compression = item[16];
        if item[17] != 0 || le::u16(item, 18) != 0 {
            return Err(unsupported(format!(
                "the extent at file offset {at} is encrypted or encoded"
            )));
        }
        let data = match item[20] {
            // Inline: the data is in the item.
            0 => {
                let raw = &item[FILE_EXTENT_INLINE_DATA..];
                if compression == 0 {
                    raw.to_vec()
                } else {
                    decompress(compression, raw, ram_bytes, at)?
                }
            }
            1 | 2 => {
                if item.len() < FILE_EXTENT_REGULAR {
                    return Err(invalid("Btrfs file extent", at, "item too short"));
                }
                let disk_bytenr = le::u64(item, 21);
                let disk_bytes = le::u64(item, 29);
                let offset = le::u64(item, 37);
                let num_bytes = le::u64(item, 45);
                // A hole, or preallocated space (reads as zeros).
                if disk_bytenr == 0 || item[20] == 2 {
                    return Ok(());
                }
                let wanted = (buf.len() as u64).saturating_sub(file_off).min(num_bytes);
                if wanted == 0 {
                    return Ok(());
                }
                if compression == 0 {
                    let start = disk_bytenr
                        .checked_add(offset)
                        .ok_or_else(|| invalid("Btrfs file extent", at, "offset overflows"))?;
                    let phys = self.shared.map(start, wanted, "Btrfs file data")?;
                    let dst = file_off as usize;
                    self.shared.vol.read_exact_at(
                        phys,
                        &mut buf[dst..dst + wanted as usize],
                        "Btrfs file data",
                    )?;
                    return Ok(());
                }
                if disk_bytes > MAX_COMPRESSED_EXTENT {
                    return Err(invalid(
                        "Btrfs compressed extent",
                        at,
                        format!("{disk_bytes} bytes on disk"),
                    ));
                }
                let phys = self
                    .shared
                    .map(disk_bytenr, disk_bytes, "Btrfs compressed extent")?;
                let raw = self.shared.vol.read_vec(
                    phys,
                    disk_bytes as usize,
                    "Btrfs compressed extent",
                )?;
                let plain = decompress(compression, &raw, ram_bytes, at)?;
                // Only `num_bytes` from `offset` of the decompressed extent belong to this
                // file range.
                let lo = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(plain.len());
                let hi = lo.saturating_add(num_bytes as usize).min(plain.len());
                plain[lo..hi].to_vec()
            }
            t => {
                return Err(invalid("Btrfs file extent", at, format!("extent type {t}")));
            }
        };
        let Ok(dst) = usize::try_from(file_off) else {
            return Ok(());
        };
        if dst >= buf.len() {
            return Ok(());
        }
        let n = data.len().min(buf.len() - dst);
        buf[dst..dst + n].copy_from_slice(&data[..n]);
        Ok(())
    }
}

impl InodeTree for BtrfsFs {
    fn root(&self) -> u64 {
        // See `BtrfsFs::view`.
        0
    }

    fn lookup(&self, dir: u64, name: &[u8]) -> Result<Option<u64>> {
        let (tree, ino) = self.unhandle(dir)?;
        match self.lookup_in(tree, ino, name)? {
            Some((t, i)) => self.handle(t, i).map(Some),
            None => Ok(None),
        }
    }

    fn node_kind(&self, handle: u64) -> Result<NodeKind> {
        let (tree, ino) = self.unhandle(handle)?;
        Ok(match self.inode(tree, ino)?.mode & S_IFMT {
            S_IFDIR => NodeKind::Dir,
            S_IFREG => NodeKind::File,
            S_IFLNK => NodeKind::Symlink,
            _ => NodeKind::Other,
        })
    }

    fn read_link(&self, handle: u64) -> Result<Vec<u8>> {
        let (tree, ino) = self.unhandle(handle)?;
        self.file_bytes(tree, ino, MAX_SYMLINK)
    }
}

impl GuestFs for BtrfsFs {
    fn kind(&self) -> FsKind {
        FsKind::Btrfs
    }

    fn read_file(&self, path: &str, max: usize) -> Result<Option<Vec<u8>>> {
        let Some(h) = resolve(self, path, "btrfs")? else {
            return Ok(None);
        };
        if self.node_kind(h)? != NodeKind::File {
            return Ok(None);
        }
        let (tree, ino) = self.unhandle(h)?;
        self.file_bytes(tree, ino, max).map(Some)
    }

    fn list_dir(&self, path: &str) -> Result<Option<Vec<String>>> {
        let Some(h) = resolve(self, path, "btrfs")? else {
            return Ok(None);
        };
        if self.node_kind(h)? != NodeKind::Dir {
            return Ok(None);
        }
        let (tree, ino) = self.unhandle(h)?;
        self.list_in(tree, ino).map(Some)
    }

    fn exists(&self, path: &str) -> Result<bool> {
        Ok(resolve(self, path, "btrfs")?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_hash_matches_btrfs() {
        // `btrfs inspect-internal dump-tree` of a fresh filesystem: the root tree directory's
        // `default` entry is DIR_ITEM 2378154706.
        assert_eq!(name_hash(b"default"), 2378154706);
    }

    #[test]
    fn keys_order_like_btrfs() {
        assert!(Key::new(256, INODE_ITEM, 0) < Key::new(256, DIR_ITEM, 0));
        assert!(Key::new(256, u8::MAX, u64::MAX) < Key::new(257, 0, 0));
    }

    #[test]
    fn superblock_validation() {
        let mut sb = vec![0u8; SUPERBLOCK_SIZE];
        assert!(parse_super(&sb).is_err());
        sb[0x40..0x48].copy_from_slice(b"_BHRfS_M");
        sb[0x30..0x38].copy_from_slice(&SUPERBLOCK_OFFSET.to_le_bytes());
        sb[0x88] = 1;
        sb[0x90..0x94].copy_from_slice(&4096u32.to_le_bytes());
        sb[0x94..0x98].copy_from_slice(&16384u32.to_le_bytes());
        let seal = |sb: &mut Vec<u8>| {
            let c = crc32c::crc32c(&sb[0x20..]);
            sb[0..4].copy_from_slice(&c.to_le_bytes());
        };
        // A wrong checksum is refused.
        assert!(parse_super(&sb).is_err());
        seal(&mut sb);
        assert!(parse_super(&sb).is_ok());
        // Two devices: refused with a clear reason.
        sb[0x88] = 2;
        seal(&mut sb);
        let e = parse_super(&sb).unwrap_err().to_string();
        assert!(e.contains("2 devices"), "{e}");
        sb[0x88] = 1;
        // A sys_chunk_array larger than its 2048-byte field.
        sb[0xa0..0xa4].copy_from_slice(&4000u32.to_le_bytes());
        seal(&mut sb);
        assert!(parse_super(&sb).is_err());
    }

    #[test]
    fn compressed_extents_decode_and_bad_lzo_is_a_clear_error() {
        use std::io::Write;
        let plain = b"NAME=\"Test\"\n".repeat(50);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&plain).unwrap();
        let mut zl = z.finish().unwrap();
        zl.extend_from_slice(&[0; 100]); // sector padding after the stream
        assert_eq!(decompress(1, &zl, plain.len() as u64, 0).unwrap(), plain);
        let mut zs = zstd::bulk::compress(&plain, 3).unwrap();
        zs.extend_from_slice(&[0; 100]);
        assert_eq!(decompress(3, &zs, plain.len() as u64, 0).unwrap(), plain);
        let e = decompress(2, &zs, 10, 0).unwrap_err().to_string();
        assert!(e.contains("LZO"), "{e}");
        assert!(decompress(1, b"garbage", 10, 0).is_err());
        assert!(decompress(3, &zs, MAX_COMPRESSED_EXTENT + 1, 0).is_err());
    }
}
