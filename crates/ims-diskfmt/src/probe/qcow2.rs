//! qcow2 (versions 2 and 3) header inspection; version 1 is dispatched to `qcow`.

use super::source::{Source, lossy_name, parse_prefix, slice};
use super::{Detection, FileReference, Probe, ProbeError, ReferenceKind};
use crate::Format;

pub(crate) use crate::qcow2::header::MAGIC;
use crate::qcow2::header::{
    COMPAT_LAZY_REFCOUNTS, EXT_DATA_FILE, EXT_END, HeaderRaw, INCOMPAT_COMPRESSION,
    INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_DIRTY, INCOMPAT_EXTENDED_L2, INCOMPAT_KNOWN,
    L2_COMPRESSED, MAX_BACKING_NAME, MAX_CLUSTER_BITS, MAX_L1_BYTES, MAX_REFCOUNT_TABLE_BYTES,
    MAX_SNAPSHOTS, MIN_CLUSTER_BITS, MIN_CLUSTER_BITS_EXTENDED_L2, TABLE_OFFSET_MASK,
    V2_HEADER_LEN, V3_MIN_HEADER_LEN,
};

pub(crate) fn detect(src: &Source) -> Detection {
    let Some(head) = src.read_if_present("qcow2 magic and version", 0, 8)? else {
        return Ok(None);
    };
    if head[..4] != MAGIC {
        return Ok(None);
    }
    let version = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    match version {
        1 => Ok(None), // qcow v1: claimed by the `qcow` detector
        2 | 3 => inspect(src, version).map(Some),
        other => Err(ProbeError::invalid(
            Format::Qcow2,
            "header",
            4,
            format!("unsupported version {other}"),
        )),
    }
}

fn invalid(structure: &'static str, offset: u64, reason: impl Into<String>) -> ProbeError {
    ProbeError::invalid(Format::Qcow2, structure, offset, reason)
}

fn inspect(src: &Source, version: u32) -> Result<Probe, ProbeError> {
    let fixed_len = if version == 2 {
        V2_HEADER_LEN
    } else {
        V3_MIN_HEADER_LEN
    };
    src.read("qcow2 header", 0, u64::from(fixed_len))?;
    // Fields at or beyond header_length are absent, i.e. zero: pad what is there.
    let available = src.len().min(size_of::<HeaderRaw>() as u64);
    let mut bytes = src.read("qcow2 header", 0, available)?;
    bytes.resize(size_of::<HeaderRaw>(), 0);
    let mut raw: HeaderRaw = parse_prefix("qcow2 header", 0, &bytes)?;
    if version == 2 {
        bytes[V2_HEADER_LEN as usize..].fill(0);
        raw = parse_prefix("qcow2 header", 0, &bytes)?;
    }
    let header_length = if version == 2 {
        V2_HEADER_LEN
    } else {
        raw.header_length.get()
    };
    if version == 3 && (header_length < V3_MIN_HEADER_LEN || header_length % 8 != 0) {
        return Err(invalid(
            "header",
            100,
            format!("header_length {header_length} is shorter than 104 or not a multiple of 8"),
        ));
    }
    if header_length < 105 {
        raw.compression_type = 0;
    }

    let cluster_bits = raw.cluster_bits.get();
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Err(invalid(
            "header",
            20,
            format!("unsupported cluster size 2^{cluster_bits} (qemu allows 2^9..2^21)"),
        ));
    }
    let cluster_size = 1u64 << cluster_bits;
    if u64::from(header_length) > cluster_size {
        return Err(invalid(
            "header",
            100,
            format!("header_length {header_length} exceeds the cluster size {cluster_size}"),
        ));
    }

    let mut found = Probe::new(Format::Qcow2);
    found.subformat = Some(format!("v{version}"));
    found.virtual_size = Some(raw.size.get());

    let crypt_method = raw.crypt_method.get();
    if crypt_method > 2 {
        return Err(invalid(
            "header",
            32,
            format!("unknown crypt_method {crypt_method}"),
        ));
    }
    found.encrypted = crypt_method != 0;

    let incompatible = raw.incompatible_features.get();
    check_features(&mut found, &raw, version, cluster_bits)?;
    let tables = check_tables(src, &raw, cluster_size, incompatible)?;
    check_mappings(src, &tables, cluster_bits, incompatible)?;

    // Cluster 0 holds the extensions and the backing file name.
    let cluster0 = src.read("qcow2 header cluster", 0, cluster_size.min(src.len()))?;
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
            return Err(invalid(
                "backing file name",
                16,
                format!("backing_file_size {name_len} exceeds {MAX_BACKING_NAME}"),
            ));
        }
        let fits = backing_offset
            .checked_add(u64::from(name_len))
            .is_some_and(|end| end <= cluster_size);
        let name = slice(&cluster0, backing_offset, u64::from(name_len)).filter(|_| fits);
        let Some(name) = name else {
            return Err(invalid(
                "backing file name",
                backing_offset,
                "backing file name lies outside cluster 0 or the image",
            ));
        };
        found.references.push(FileReference::new(
            ReferenceKind::BackingFile,
            lossy_name(name),
        ));
    }
    if incompatible & INCOMPAT_DATA_FILE != 0 || extensions.data_file.is_some() {
        let target = extensions
            .data_file
            .unwrap_or_else(|| "(name not recorded)".into());
        found
            .references
            .push(FileReference::new(ReferenceKind::DataFile, target));
    }
    Ok(found)
}

fn check_features(
    found: &mut Probe,
    raw: &HeaderRaw,
    version: u32,
    cluster_bits: u32,
) -> Result<(), ProbeError> {
    if version == 2 {
        return Ok(());
    }
    let incompatible = raw.incompatible_features.get();
    let unknown = incompatible & !INCOMPAT_KNOWN;
    if unknown != 0 {
        found.fail(
            "unknown_features",
            format_args!("qcow2 incompatible feature bits {unknown:#x} are not supported"),
        );
    }
    if incompatible & INCOMPAT_CORRUPT != 0 {
        found.fail("corrupt", "qcow2 image is marked corrupt");
    }
    if incompatible & INCOMPAT_DIRTY != 0
        && raw.compatible_features.get() & COMPAT_LAZY_REFCOUNTS == 0
    {
        found.fail(
            "dirty",
            "qcow2 image is marked dirty without lazy refcounts (inconsistent refcounts)",
        );
    }
    let compression = raw.compression_type;
    if compression > 1 || (compression != 0) != (incompatible & INCOMPAT_COMPRESSION != 0) {
        return Err(invalid(
            "header",
            104,
            format!(
                "compression_type {compression} disagrees with incompatible feature bit 3 or is unknown"
            ),
        ));
    }
    if incompatible & INCOMPAT_EXTENDED_L2 != 0 && cluster_bits < MIN_CLUSTER_BITS_EXTENDED_L2 {
        return Err(invalid(
            "header",
            20,
            format!("extended L2 needs clusters of at least 16 KiB, not 2^{cluster_bits}"),
        ));
    }
    let refcount_order = raw.refcount_order.get();
    if refcount_order > 6 {
        return Err(invalid(
            "header",
            96,
            format!("refcount_order {refcount_order} exceeds 6"),
        ));
    }
    Ok(())
}

/// Checks the L1, refcount and snapshot tables' placement against the image: aligned, inside
/// the image, within qemu's limits, large enough for the virtual size, not overlapping.
fn check_tables(
    src: &Source,
    raw: &HeaderRaw,
    cluster_size: u64,
    incompatible: u64,
) -> Result<Tables, ProbeError> {
    let len = src.len();
    let l2_entry_bytes = if incompatible & INCOMPAT_EXTENDED_L2 != 0 {
        16
    } else {
        8
    };
    let bytes_per_l1_entry = (cluster_size / l2_entry_bytes) * cluster_size;
    let size = raw.size.get();
    let needed_l1 = size.div_ceil(bytes_per_l1_entry);
    let l1_size = u64::from(raw.l1_size.get());
    let l1_bytes = l1_size * 8;
    if l1_bytes > MAX_L1_BYTES {
        return Err(invalid(
            "L1 table",
            36,
            format!("{l1_size} entries exceed qemu's {MAX_L1_BYTES}-byte limit"),
        ));
    }
    if needed_l1 > l1_size {
        return Err(invalid(
            "L1 table",
            36,
            format!(
                "{l1_size} entries cannot map a virtual size of {size} bytes ({needed_l1} needed)"
            ),
        ));
    }
    let l1_offset = raw.l1_table_offset.get();
    let l1 = table_range("L1 table", l1_offset, l1_bytes, cluster_size, len)?;

    let refcount_offset = raw.refcount_table_offset.get();
    let refcount_bytes = u64::from(raw.refcount_table_clusters.get())
        .checked_mul(cluster_size)
        .filter(|&b| b <= MAX_REFCOUNT_TABLE_BYTES)
        .ok_or_else(|| {
            invalid(
                "refcount table",
                56,
                format!("refcount table exceeds qemu's {MAX_REFCOUNT_TABLE_BYTES}-byte limit"),
            )
        })?;
    let refcount = table_range(
        "refcount table",
        refcount_offset,
        refcount_bytes,
        cluster_size,
        len,
    )?;
    let header = (0, cluster_size);
    for (name, range) in [("L1 table", l1), ("refcount table", refcount)] {
        if overlaps(range, header) {
            return Err(invalid(name, range.0, "overlaps the header cluster"));
        }
    }
    if overlaps(l1, refcount) {
        return Err(invalid(
            "refcount table",
            refcount_offset,
            format!("overlaps the L1 table at {l1_offset}"),
        ));
    }

    let nb_snapshots = raw.nb_snapshots.get();
    if nb_snapshots > MAX_SNAPSHOTS {
        return Err(invalid(
            "snapshot table",
            60,
            format!("{nb_snapshots} snapshots exceed qemu's limit of {MAX_SNAPSHOTS}"),
        ));
    }
    let snapshots_offset = raw.snapshots_offset.get();
    if nb_snapshots > 0
        && (!snapshots_offset.is_multiple_of(cluster_size) || snapshots_offset >= len)
    {
        return Err(invalid(
            "snapshot table",
            snapshots_offset,
            "unaligned or past the end of the image",
        ));
    }
    Ok(Tables {
        l1,
        refcount,
        header,
    })
}

/// Metadata ranges `[start, end)` of the image.
struct Tables {
    l1: (u64, u64),
    refcount: (u64, u64),
    header: (u64, u64),
}

/// Walks the L1 table and the L2 tables it names, as far as they lie inside the inspection
/// prefix: L2 tables must be cluster aligned and not overlap the header, L1 or refcount table;
/// data clusters must be aligned and start inside the image (qemu reads zeros past EOF and
/// marks unaligned entries corrupt).
fn check_mappings(
    src: &Source,
    tables: &Tables,
    cluster_bits: u32,
    incompatible: u64,
) -> Result<(), ProbeError> {
    let cluster_size = 1u64 << cluster_bits;
    let prefix_end = src.readable_prefix_end();
    let (l1_start, l1_end) = tables.l1;
    let readable_l1 = l1_end.min(prefix_end).saturating_sub(l1_start) / 8 * 8;
    if readable_l1 == 0 {
        return Ok(());
    }
    let l1 = src.read("qcow2 L1 table", l1_start, readable_l1)?;
    let mut l2_tables = Vec::new();
    for (index, raw) in l1.chunks_exact(8).enumerate() {
        let entry = u64::from_be_bytes(raw.try_into().unwrap_or_default());
        let l2 = entry & TABLE_OFFSET_MASK;
        if l2 == 0 {
            continue;
        }
        let at = l1_start + index as u64 * 8;
        let range = (l2, l2.saturating_add(cluster_size));
        if !l2.is_multiple_of(cluster_size) || range.1 > src.len() {
            return Err(invalid(
                "L1 table",
                at,
                format!("entry {index} points at {l2:#x}: unaligned or past the end of the image"),
            ));
        }
        for (name, metadata) in [
            ("header", tables.header),
            ("L1 table", tables.l1),
            ("refcount table", tables.refcount),
        ] {
            if overlaps(range, metadata) {
                return Err(invalid(
                    "L1 table",
                    at,
                    format!("entry {index} points its L2 table at the {name}"),
                ));
            }
        }
        if range.1 <= prefix_end {
            l2_tables.push(l2);
        }
    }
    l2_tables.sort_unstable();
    l2_tables.dedup();
    let entry_len = if incompatible & INCOMPAT_EXTENDED_L2 != 0 {
        16
    } else {
        8
    };
    let external_data = incompatible & INCOMPAT_DATA_FILE != 0;
    let compressed_offset_mask = (1u64 << (62 - (cluster_bits - 8))) - 1;
    for l2 in l2_tables {
        let table = src.read("qcow2 L2 table", l2, cluster_size)?;
        for (index, raw) in table.chunks_exact(entry_len).enumerate() {
            let entry = u64::from_be_bytes(raw[..8].try_into().unwrap_or_default());
            let at = l2 + (index * entry_len) as u64;
            let (host, aligned) = if entry & L2_COMPRESSED != 0 {
                (entry & compressed_offset_mask, true)
            } else {
                let host = entry & TABLE_OFFSET_MASK;
                (host, host.is_multiple_of(cluster_size))
            };
            if !aligned {
                return Err(invalid(
                    "L2 table",
                    at,
                    format!("entry {index} points at unaligned host offset {host:#x}"),
                ));
            }
            if host != 0 && !external_data && host >= src.len() {
                return Err(invalid(
                    "L2 table",
                    at,
                    format!("entry {index} points at {host:#x}, past the end of the image"),
                ));
            }
        }
    }
    Ok(())
}

/// `[offset, offset + bytes)` after checking alignment and that it lies inside the image; an
/// empty table is `(0, 0)`.
fn table_range(
    structure: &'static str,
    offset: u64,
    bytes: u64,
    cluster_size: u64,
    len: u64,
) -> Result<(u64, u64), ProbeError> {
    if bytes == 0 {
        return Ok((0, 0));
    }
    if !offset.is_multiple_of(cluster_size) {
        return Err(invalid(structure, offset, "offset is not cluster aligned"));
    }
    match offset.checked_add(bytes) {
        Some(end) if end <= len => Ok((offset, end)),
        _ => Err(ProbeError::Truncated {
            structure,
            offset,
            length: bytes,
            image_len: len,
        }),
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < a.1 && b.0 < b.1 && a.0 < b.1 && b.0 < a.1
}

#[derive(Default)]
struct Extensions {
    data_file: Option<String>,
}

/// Walks `{u32 type, u32 length, data, pad to 8}` records from `start` until type 0 or `end`.
fn parse_extensions(cluster0: &[u8], start: u64, end: u64) -> Result<Extensions, ProbeError> {
    let mut found = Extensions::default();
    let mut offset = start;
    while offset.checked_add(8).is_some_and(|e| e <= end) {
        let Some(record) = slice(cluster0, offset, 8) else {
            return Err(ProbeError::Truncated {
                structure: "qcow2 header extension",
                offset,
                length: 8,
                image_len: cluster0.len() as u64,
            });
        };
        let kind = u32::from_be_bytes([record[0], record[1], record[2], record[3]]);
        let length = u64::from(u32::from_be_bytes([
            record[4], record[5], record[6], record[7],
        ]));
        if kind == EXT_END {
            return Ok(found);
        }
        let data_start = offset + 8;
        let data = slice(cluster0, data_start, length)
            .filter(|_| data_start + length <= end)
            .ok_or_else(|| {
                invalid(
                    "header extension",
                    offset,
                    format!("extension {kind:#010x} of {length} bytes is too large"),
                )
            })?;
        if kind == EXT_DATA_FILE {
            found.data_file = Some(lossy_name(data))
        }
        offset = data_start + length.next_multiple_of(8);
    }
    Ok(found)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::probe::probe;

    /// A minimal v3 image: 64 KiB clusters, 1 MiB disk, refcount table at cluster 1, L1 at
    /// cluster 3, 4 clusters long.
    pub(crate) fn image() -> Vec<u8> {
        let mut b = vec![0u8; 4 << 16];
        b[0..4].copy_from_slice(b"QFI\xfb"); // magic
        b[4..8].copy_from_slice(&3u32.to_be_bytes()); // version
        b[20..24].copy_from_slice(&16u32.to_be_bytes()); // cluster_bits: 64 KiB
        b[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes()); // size: 1 MiB
        b[36..40].copy_from_slice(&1u32.to_be_bytes()); // l1_size
        b[40..48].copy_from_slice(&0x30000u64.to_be_bytes()); // l1_table_offset
        b[48..56].copy_from_slice(&0x10000u64.to_be_bytes()); // refcount_table_offset
        b[56..60].copy_from_slice(&1u32.to_be_bytes()); // refcount_table_clusters
        b[96..100].copy_from_slice(&4u32.to_be_bytes()); // refcount_order
        b[100..104].copy_from_slice(&112u32.to_be_bytes()); // header_length
        b
    }

    fn with_backing(mut b: Vec<u8>, name: &[u8]) -> Vec<u8> {
        b[8..16].copy_from_slice(&0x200u64.to_be_bytes()); // backing_file_offset
        b[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        b[0x200..0x200 + name.len()].copy_from_slice(name);
        b
    }

    #[test]
    fn plain_v3_image() {
        let found = probe(&image()).unwrap();
        assert_eq!(found.format, Format::Qcow2);
        assert_eq!(found.virtual_size, Some(1 << 20));
        assert_eq!(found.subformat.as_deref(), Some("v3"));
        assert!(found.references.is_empty() && found.safety_failures.is_empty());
        assert_eq!(found.check_declared("qcow2"), Ok(()));
    }

    #[test]
    fn backing_file_is_reported() {
        let mut b = with_backing(image(), b"/etc/passwd");
        // extension 0xE2792ACA (backing format) "raw" at header_length 112: ignored
        b[112..116].copy_from_slice(&0xE279_2ACAu32.to_be_bytes());
        b[116..120].copy_from_slice(&3u32.to_be_bytes());
        b[120..123].copy_from_slice(b"raw");
        let found = probe(&b).unwrap();
        assert_eq!(
            found.references,
            vec![FileReference::new(
                ReferenceKind::BackingFile,
                "/etc/passwd"
            )]
        );
        let err = found.check_declared("qcow2").unwrap_err();
        assert!(err.message.contains("backing file '/etc/passwd'"), "{err}");
    }

    #[test]
    fn data_file_bit_is_a_reference() {
        let mut b = image();
        b[72..80].copy_from_slice(&INCOMPAT_DATA_FILE.to_be_bytes());
        b[112..116].copy_from_slice(&EXT_DATA_FILE.to_be_bytes());
        b[116..120].copy_from_slice(&4u32.to_be_bytes());
        b[120..124].copy_from_slice(b"disk");
        let found = probe(&b).unwrap();
        assert_eq!(
            found.references,
            vec![FileReference::new(ReferenceKind::DataFile, "disk")]
        );
    }

    #[test]
    fn unknown_and_corrupt_bits_fail_safety_checks() {
        let mut b = image();
        b[72..80].copy_from_slice(&((1u64 << 63) | INCOMPAT_CORRUPT).to_be_bytes());
        let found = probe(&b).unwrap();
        assert_eq!(
            found.safety_failures.len(),
            2,
            "{:?}",
            found.safety_failures
        );
        assert!(found.safety_failures[0].starts_with("unknown_features: "));
        assert!(found.safety_failures[1].starts_with("corrupt: "));
    }

    #[test]
    fn malformed_headers_are_errors() {
        let mut b = image();
        b[20..24].copy_from_slice(&8u32.to_be_bytes()); // cluster_bits 8
        assert_eq!(probe(&b).unwrap_err().format(), Some(Format::Qcow2));

        let mut b = image();
        b[40..48].copy_from_slice(&(1u64 << 40).to_be_bytes()); // L1 past the end
        assert!(probe(&b).unwrap_err().is_truncated());

        let mut b = image();
        b[48..56].copy_from_slice(&0x30000u64.to_be_bytes()); // refcount table == L1
        assert!(probe(&b).is_err());

        let mut b = image();
        b[24..32].copy_from_slice(&(1u64 << 62).to_be_bytes()); // L1 too small for size
        assert!(probe(&b).is_err());

        let mut b = image();
        b[112..116].copy_from_slice(&0x1234u32.to_be_bytes());
        b[116..120].copy_from_slice(&0xffff_fff0u32.to_be_bytes()); // extension overflow
        assert!(probe(&b).is_err());

        let b = with_backing(image(), &[b'a'; 1024]);
        assert!(probe(&b).is_err());

        assert!(probe(&image()[..48].to_vec()).unwrap_err().is_truncated());
    }

    #[test]
    fn l1_and_l2_entries_are_checked_inside_the_prefix() {
        let mut b = image();
        b[0x30000..0x30008].copy_from_slice(&0x30000u64.to_be_bytes()); // L1[0] -> L1 itself
        assert!(probe(&b).is_err());

        let mut b = image();
        b[0x30000..0x30008].copy_from_slice(&(0x20000u64 | 1 << 63).to_be_bytes()); // L2 at 2
        assert!(probe(&b).is_ok());
        b[0x20000..0x20008].copy_from_slice(&0x30200u64.to_be_bytes()); // unaligned data
        assert!(probe(&b).is_err());
        b[0x20000..0x20008].copy_from_slice(&(1u64 << 40).to_be_bytes()); // past the end
        assert!(probe(&b).is_err());
    }
}
