//! The validated qcow2 header model: every field checked against qemu's limits and the image
//! length before a reader allocates or follows anything.

use super::header::*;
use super::{Compression, read_exact};
use crate::disk::DiskError;
use crate::{Format, ReadAt};

/// Snapshot table entries are small; qemu caps the whole table (QCOW_MAX_SNAPSHOTS_SIZE).
const MAX_SNAPSHOT_TABLE_BYTES: u64 = 64 << 20;
/// Fixed part of a snapshot table entry.
const SNAPSHOT_ENTRY_FIXED: usize = 40;
/// Largest virtual size qemu accepts (its `QCOW_MAX_L1_SIZE`-derived limit is lower for small
/// clusters; 2^61 keeps every `offset + length` below u64::MAX).
const MAX_VIRTUAL_SIZE: u64 = 1 << 61;

/// An internal snapshot as `qemu-img info` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub id: String,
    pub name: String,
    pub l1_offset: u64,
    pub l1_size: u64,
    pub disk_size: u64,
    /// Bytes this entry takes in the snapshot table (8-byte aligned).
    pub entry_bytes: u64,
}

/// The bitmaps extension: where the bitmap directory lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BitmapsExtension {
    pub count: u32,
    pub directory_size: u64,
    pub directory_offset: u64,
}

/// A qcow2 header after validation.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub cluster_size: u64,
    pub virtual_size: u64,
    /// L1 entries the virtual size needs (the only ones a reader consults).
    pub l1_entries: u64,
    /// L1 entries as the header records them (the table's allocated length).
    pub l1_table_entries: u64,
    pub l1_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u64,
    pub snapshots_offset: u64,
    pub nb_snapshots: u32,
    pub incompatible: u64,
    pub compatible: u64,
    pub refcount_order: u32,
    pub compression: Compression,
    pub extended_l2: bool,
    pub bitmaps: Option<BitmapsExtension>,
    pub file_len: u64,
}

impl Header {
    /// Bytes per L2 entry (16 with extended L2).
    pub(crate) fn l2_entry_bytes(&self) -> u64 {
        if self.extended_l2 { 16 } else { 8 }
    }

    /// Entries per L2 table (one cluster).
    pub(crate) fn l2_entries(&self) -> u64 {
        self.cluster_size / self.l2_entry_bytes()
    }

    /// Guest clusters of the virtual disk.
    pub(crate) fn guest_clusters(&self) -> u64 {
        self.virtual_size.div_ceil(self.cluster_size)
    }

    /// `[start, end)` of the active L1 table in the file.
    pub(crate) fn l1_range(&self) -> (u64, u64) {
        (self.l1_offset, self.l1_offset + self.l1_entries * 8)
    }

    /// `[start, end)` of the refcount table in the file.
    pub(crate) fn refcount_table_range(&self) -> (u64, u64) {
        (
            self.refcount_table_offset,
            self.refcount_table_offset + self.refcount_table_clusters * self.cluster_size,
        )
    }

    pub(crate) fn lazy_refcounts(&self) -> bool {
        self.compatible & COMPAT_LAZY_REFCOUNTS != 0
    }
}

fn corrupt(structure: &'static str, offset: u64, reason: impl Into<String>) -> DiskError {
    DiskError::corrupt(Format::Qcow2, structure, offset, reason)
}

/// Reads and validates the header, its extensions and the references it makes. `lenient`
/// accepts an L1 table that extends past the end of the file (qemu reads zeros there).
pub(crate) fn parse(source: &dyn ReadAt, lenient: bool) -> Result<Header, DiskError> {
    let file_len = source.len();
    let mut head = [0u8; size_of::<HeaderRaw>()];
    let available = file_len.min(head.len() as u64) as usize;
    read_exact(source, Format::Qcow2, "header", 0, &mut head[..available])?;
    if available < 8 || head[..4] != MAGIC {
        return Err(corrupt("header", 0, "missing the QFI\\xfb magic"));
    }
    let version = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    if version == 1 {
        return Err(corrupt("header", 4, "version 1 is qcow, not qcow2"));
    }
    if version != 2 && version != 3 {
        return Err(DiskError::unsupported(format!("qcow2 version {version}")));
    }
    let raw = HeaderRaw::decode(&head[..available])
        .ok_or_else(|| corrupt("header", 0, format!("truncated at {available} bytes")))?;

    let cluster_bits = raw.cluster_bits.get();
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Err(corrupt(
            "header",
            20,
            format!("unsupported cluster size 2^{cluster_bits} (qemu allows 2^9..2^21)"),
        ));
    }
    let cluster_size = 1u64 << cluster_bits;
    let header_length = if version == 2 {
        V2_HEADER_LEN
    } else {
        raw.header_length.get()
    };
    if version == 3 && (header_length < V3_MIN_HEADER_LEN || header_length % 8 != 0) {
        return Err(corrupt(
            "header",
            100,
            format!("header_length {header_length} is shorter than 104 or not a multiple of 8"),
        ));
    }
    if u64::from(header_length) > cluster_size {
        return Err(corrupt(
            "header",
            100,
            format!("header_length {header_length} exceeds the cluster size {cluster_size}"),
        ));
    }

    // Cluster 0 holds the extensions and the backing file name.
    let mut cluster0 = vec![0u8; cluster_size.min(file_len) as usize];
    read_exact(source, Format::Qcow2, "header cluster", 0, &mut cluster0)?;
    let backing_offset = raw.backing_file_offset.get();
    let extensions_end = if backing_offset != 0 {
        backing_offset.min(cluster_size)
    } else {
        cluster_size
    };
    let extensions = parse_extensions(&cluster0, u64::from(header_length), extensions_end)?;

    if backing_offset != 0 {
        let name_len = raw.backing_file_size.get();
        if name_len > MAX_BACKING_NAME {
            return Err(corrupt(
                "backing file name",
                16,
                format!("backing_file_size {name_len} exceeds {MAX_BACKING_NAME}"),
            ));
        }
        let name = backing_offset
            .checked_add(u64::from(name_len))
            .filter(|&end| end <= cluster0.len() as u64)
            .map(|end| &cluster0[backing_offset as usize..end as usize])
            .ok_or_else(|| {
                corrupt(
                    "backing file name",
                    backing_offset,
                    "lies outside cluster 0 or the image",
                )
            })?;
        return Err(DiskError::Reference {
            format: Format::Qcow2,
            target: format!("backing file {}", String::from_utf8_lossy(name)),
        });
    }
    let incompatible = raw.incompatible_features.get();
    if incompatible & INCOMPAT_DATA_FILE != 0 || extensions.data_file.is_some() {
        let name = extensions
            .data_file
            .unwrap_or_else(|| "(name not recorded)".into());
        return Err(DiskError::Reference {
            format: Format::Qcow2,
            target: format!("external data file {name}"),
        });
    }
    match raw.crypt_method.get() {
        0 => {}
        1 => return Err(DiskError::unsupported("qcow2 encryption (legacy AES-CBC)")),
        2 => return Err(DiskError::unsupported("qcow2 encryption (LUKS)")),
        other => {
            return Err(corrupt(
                "header",
                32,
                format!("unknown crypt_method {other}"),
            ));
        }
    }
    let unknown = incompatible & !INCOMPAT_KNOWN;
    if unknown != 0 {
        return Err(DiskError::unsupported(format!(
            "qcow2 incompatible feature bits {unknown:#x}"
        )));
    }
    let compression = match raw.compression_type {
        0 if incompatible & INCOMPAT_COMPRESSION == 0 => Compression::Zlib,
        1 if incompatible & INCOMPAT_COMPRESSION != 0 => Compression::Zstd,
        other => {
            return Err(corrupt(
                "header",
                104,
                format!("compression_type {other} is unknown or disagrees with incompatible bit 3"),
            ));
        }
    };
    let extended_l2 = incompatible & INCOMPAT_EXTENDED_L2 != 0;
    if extended_l2 && cluster_bits < MIN_CLUSTER_BITS_EXTENDED_L2 {
        return Err(corrupt(
            "header",
            20,
            format!("extended L2 needs clusters of at least 16 KiB, not 2^{cluster_bits}"),
        ));
    }
    let refcount_order = if version == 2 {
        V2_REFCOUNT_ORDER
    } else {
        raw.refcount_order.get()
    };
    if refcount_order > MAX_REFCOUNT_ORDER {
        return Err(corrupt(
            "header",
            96,
            format!("refcount_order {refcount_order} exceeds {MAX_REFCOUNT_ORDER}"),
        ));
    }

    let mut header = Header {
        version,
        cluster_bits,
        cluster_size,
        virtual_size: raw.size.get(),
        l1_entries: u64::from(raw.l1_size.get()),
        l1_table_entries: u64::from(raw.l1_size.get()),
        l1_offset: raw.l1_table_offset.get(),
        refcount_table_offset: raw.refcount_table_offset.get(),
        refcount_table_clusters: u64::from(raw.refcount_table_clusters.get()),
        snapshots_offset: raw.snapshots_offset.get(),
        nb_snapshots: raw.nb_snapshots.get(),
        incompatible,
        compatible: raw.compatible_features.get(),
        refcount_order,
        compression,
        extended_l2,
        bitmaps: extensions.bitmaps,
        file_len,
    };
    check_tables(&mut header, lenient)?;
    Ok(header)
}

/// Checks the L1, refcount and snapshot tables against qemu's limits and the image length.
fn check_tables(header: &mut Header, lenient: bool) -> Result<(), DiskError> {
    let cluster_size = header.cluster_size;
    if header.virtual_size > MAX_VIRTUAL_SIZE {
        return Err(DiskError::TooLarge {
            format: Format::Qcow2,
            structure: "virtual size",
            value: header.virtual_size,
            limit: MAX_VIRTUAL_SIZE,
        });
    }
    let bytes_per_l1_entry = header.l2_entries() * cluster_size;
    let needed = header.virtual_size.div_ceil(bytes_per_l1_entry);
    let l1_bytes = header.l1_entries * 8;
    if l1_bytes > MAX_L1_BYTES {
        return Err(DiskError::TooLarge {
            format: Format::Qcow2,
            structure: "L1 table",
            value: l1_bytes,
            limit: MAX_L1_BYTES,
        });
    }
    if needed > header.l1_entries {
        return Err(corrupt(
            "L1 table",
            36,
            format!(
                "{} entries cannot map a virtual size of {} bytes ({needed} needed)",
                header.l1_entries, header.virtual_size
            ),
        ));
    }
    // Entries beyond what the virtual size needs are never consulted.
    header.l1_entries = needed;
    if needed > 0 {
        if !header.l1_offset.is_multiple_of(cluster_size) || header.l1_offset == 0 {
            return Err(corrupt(
                "L1 table",
                header.l1_offset,
                "offset is zero or not cluster aligned",
            ));
        }
        let end = header.l1_offset.checked_add(needed * 8);
        if !lenient && end.is_none_or(|end| end > header.file_len) {
            return Err(corrupt(
                "L1 table",
                header.l1_offset,
                format!(
                    "{} bytes reach past the end of the {}-byte image",
                    needed * 8,
                    header.file_len
                ),
            ));
        }
        if end.is_none() {
            return Err(corrupt("L1 table", header.l1_offset, "offset overflows"));
        }
    }
    let refcount_bytes = header.refcount_table_clusters.checked_mul(cluster_size);
    if refcount_bytes.is_none_or(|b| b > MAX_REFCOUNT_TABLE_BYTES) {
        return Err(DiskError::TooLarge {
            format: Format::Qcow2,
            structure: "refcount table",
            value: refcount_bytes.unwrap_or(u64::MAX),
            limit: MAX_REFCOUNT_TABLE_BYTES,
        });
    }
    if !header.refcount_table_offset.is_multiple_of(cluster_size)
        || header
            .refcount_table_offset
            .checked_add(refcount_bytes.unwrap_or(0))
            .is_none()
    {
        return Err(corrupt(
            "refcount table",
            header.refcount_table_offset,
            "offset is not cluster aligned",
        ));
    }
    if header.nb_snapshots > MAX_SNAPSHOTS {
        return Err(DiskError::TooLarge {
            format: Format::Qcow2,
            structure: "snapshot table",
            value: u64::from(header.nb_snapshots),
            limit: u64::from(MAX_SNAPSHOTS),
        });
    }
    if header.nb_snapshots > 0
        && (!header.snapshots_offset.is_multiple_of(cluster_size)
            || header.snapshots_offset >= header.file_len)
    {
        return Err(corrupt(
            "snapshot table",
            header.snapshots_offset,
            "unaligned or past the end of the image",
        ));
    }
    Ok(())
}

#[derive(Default)]
struct Extensions {
    data_file: Option<String>,
    bitmaps: Option<BitmapsExtension>,
}

/// Walks `{u32 type, u32 length, data, pad to 8}` records from `start` until type 0 or `end`.
fn parse_extensions(cluster0: &[u8], start: u64, end: u64) -> Result<Extensions, DiskError> {
    let mut found = Extensions::default();
    let end = end.min(cluster0.len() as u64);
    let mut offset = start;
    while offset.checked_add(8).is_some_and(|e| e <= end) {
        let at = offset as usize;
        let kind = u32::from_be_bytes(cluster0[at..at + 4].try_into().unwrap_or_default());
        let len = u32::from_be_bytes(cluster0[at + 4..at + 8].try_into().unwrap_or_default());
        if kind == EXT_END {
            break;
        }
        let data_start = offset + 8;
        let data_end = data_start + u64::from(len);
        if data_end > end {
            return Err(corrupt(
                "header extension",
                offset,
                format!("extension {kind:#x} of {len} bytes runs past cluster 0"),
            ));
        }
        let data = &cluster0[data_start as usize..data_end as usize];
        match kind {
            EXT_DATA_FILE => {
                found.data_file = Some(String::from_utf8_lossy(data).into_owned());
            }
            EXT_BITMAPS if data.len() >= 24 => {
                found.bitmaps = Some(BitmapsExtension {
                    count: u32::from_be_bytes(data[0..4].try_into().unwrap_or_default()),
                    directory_size: u64::from_be_bytes(data[8..16].try_into().unwrap_or_default()),
                    directory_offset: u64::from_be_bytes(
                        data[16..24].try_into().unwrap_or_default(),
                    ),
                });
            }
            _ => {}
        }
        offset = data_start + u64::from(len).next_multiple_of(8);
    }
    Ok(found)
}

/// Reads the snapshot table: ids, names, their L1 tables and disk sizes.
pub(crate) fn read_snapshots(
    source: &dyn ReadAt,
    header: &Header,
) -> Result<Vec<Snapshot>, DiskError> {
    let mut snapshots = Vec::new();
    let mut offset = header.snapshots_offset;
    let table_end = header
        .snapshots_offset
        .saturating_add(MAX_SNAPSHOT_TABLE_BYTES)
        .min(header.file_len);
    for _ in 0..header.nb_snapshots {
        let mut fixed = [0u8; SNAPSHOT_ENTRY_FIXED];
        if offset + SNAPSHOT_ENTRY_FIXED as u64 > table_end {
            return Err(corrupt(
                "snapshot table",
                offset,
                "entry runs past the table",
            ));
        }
        read_exact(source, Format::Qcow2, "snapshot table", offset, &mut fixed)?;
        let be64 = |at: usize| u64::from_be_bytes(fixed[at..at + 8].try_into().unwrap_or_default());
        let be32 = |at: usize| u32::from_be_bytes(fixed[at..at + 4].try_into().unwrap_or_default());
        let be16 = |at: usize| u16::from_be_bytes(fixed[at..at + 2].try_into().unwrap_or_default());
        let l1_offset = be64(0);
        let l1_size = u64::from(be32(8));
        let id_len = u64::from(be16(12));
        let name_len = u64::from(be16(14));
        let extra_len = u64::from(be32(36));
        let variable = extra_len + id_len + name_len;
        let entry_end = offset + SNAPSHOT_ENTRY_FIXED as u64 + variable;
        if entry_end > table_end {
            return Err(corrupt(
                "snapshot table",
                offset,
                "entry runs past the table",
            ));
        }
        let mut rest = vec![0u8; variable as usize];
        read_exact(
            source,
            Format::Qcow2,
            "snapshot table",
            offset + SNAPSHOT_ENTRY_FIXED as u64,
            &mut rest,
        )?;
        let (extra, names) = rest.split_at(extra_len as usize);
        let (id, name) = names.split_at(id_len as usize);
        let disk_size = extra
            .get(8..16)
            .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
            .unwrap_or(header.virtual_size);
        snapshots.push(Snapshot {
            id: String::from_utf8_lossy(id).into_owned(),
            name: String::from_utf8_lossy(name).into_owned(),
            l1_offset,
            l1_size,
            disk_size,
            entry_bytes: entry_end.next_multiple_of(8) - offset,
        });
        offset = entry_end.next_multiple_of(8);
    }
    Ok(snapshots)
}
