//! VMDK inspection: the hosted sparse header (KDMV), its embedded descriptor, text
//! descriptors, and the streamOptimized footer.

use super::source::Source;
use super::{Detection, FileReference, Probe, ProbeError, ReferenceKind};
use crate::Format;
use crate::vmdk::descriptor::{Descriptor, MAX_DESCRIPTOR_BYTES};
use crate::vmdk::header::{
    FLAG_REDUNDANT_GD, FOOTER_AREA, GD_AT_END, MAGIC, SECTOR, SparseHeaderRaw, parse_footer,
};

/// qemu's probe looks at the first 2 KiB for a text descriptor's `version=` line.
const TEXT_PROBE_BYTES: u64 = 2048;
const ALLOWED_CREATE_TYPES: [&str; 2] = ["monolithicSparse", "streamOptimized"];

fn invalid(structure: &'static str, offset: u64, reason: impl Into<String>) -> ProbeError {
    ProbeError::invalid(Format::Vmdk, structure, offset, reason)
}

pub(crate) fn detect(src: &Source) -> Detection {
    let Some(magic) = src.read_if_present("vmdk magic", 0, 4)? else {
        return Ok(None);
    };
    if magic == MAGIC {
        return sparse(src).map(Some);
    }
    let probe_len = src.len().min(TEXT_PROBE_BYTES);
    let head = src.read("vmdk descriptor probe", 0, probe_len)?;
    if !looks_like_text_descriptor(&head) {
        return Ok(None);
    }
    let text = src.read("vmdk descriptor", 0, src.len().min(MAX_DESCRIPTOR_BYTES))?;
    let descriptor = parse_descriptor(&text)?;
    let mut found = Probe::new(Format::Vmdk);
    // A separate descriptor file: every extent is another file.
    report(&descriptor, &mut found, false);
    found.virtual_size = descriptor.extents_size();
    Ok(Some(found))
}

/// qemu's `vmdk_probe` for text: `#` comment lines and blank lines, then `version=1|2|3`.
fn looks_like_text_descriptor(head: &[u8]) -> bool {
    let mut rest = head;
    while let Some(&first) = rest.first() {
        if first == b'#' {
            let skip = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |i| i + 1);
            rest = &rest[skip..];
            continue;
        }
        if first == b' ' || first == b'\r' || first == b'\n' {
            let blank = rest.iter().take_while(|&&b| b == b' ').count();
            let mut after = &rest[blank..];
            if after.first() == Some(&b'\r') {
                after = &after[1..];
            }
            match after.first() {
                Some(b'\n') => {
                    rest = &after[1..];
                    continue;
                }
                _ => return false,
            }
        }
        return [b'1', b'2', b'3'].iter().any(|v| {
            let line = [b"version=".as_slice(), &[*v]].concat();
            rest.starts_with(&[line.as_slice(), b"\n"].concat())
                || rest.starts_with(&[line.as_slice(), b"\r\n"].concat())
        });
    }
    false
}

fn sparse(src: &Source) -> Result<Probe, ProbeError> {
    let raw: SparseHeaderRaw = src.read_struct("vmdk sparse header", 0)?;
    let mut found = Probe::new(Format::Vmdk);
    check_geometry(&raw)?;
    let mut header = raw;
    if header.gd_offset.get() == GD_AT_END {
        match footer(src, &header) {
            Ok(footer) => header = footer,
            Err(reason) => found.fail("footer", reason),
        }
    }
    check_grain_directories(src, &header)?;

    let descriptor_offset = header.descriptor_offset.get();
    let descriptor_sectors = header.descriptor_size.get();
    if descriptor_offset == 0 || descriptor_sectors == 0 {
        found.fail(
            "descriptor",
            "sparse extent has no embedded descriptor (part of a multi-file VMDK)",
        );
        found.virtual_size = header.capacity.get().checked_mul(SECTOR);
        return Ok(found);
    }
    let text_offset = descriptor_offset
        .checked_mul(SECTOR)
        .ok_or_else(|| invalid("sparse header", 28, "descriptor offset overflows"))?;
    let text_len = descriptor_sectors
        .saturating_mul(SECTOR)
        .min(MAX_DESCRIPTOR_BYTES);
    let text = src.read("vmdk embedded descriptor", text_offset, text_len)?;
    let descriptor = parse_descriptor(&text)?;
    report(&descriptor, &mut found, true);
    let capacity = header.capacity.get();
    if capacity == 0 {
        // qemu then reads the embedded descriptor instead: a redirect to arbitrary extents.
        found.fail(
            "descriptor",
            "sparse header has capacity 0 and defers to its embedded descriptor",
        );
        found.virtual_size = descriptor.extents_size();
    } else {
        found.virtual_size = Some(capacity * SECTOR);
    }
    Ok(found)
}

fn check_geometry(raw: &SparseHeaderRaw) -> Result<(), ProbeError> {
    raw.check_geometry()
        .map_err(|p| invalid("sparse header", p.field_offset, p.reason))
}

/// The grain directories (primary, and redundant when flagged) must fit inside the image.
fn check_grain_directories(src: &Source, header: &SparseHeaderRaw) -> Result<(), ProbeError> {
    header
        .check_geometry()
        .map_err(|p| invalid("grain directory", p.field_offset, p.reason))?;
    let gd_entries = header.gd_entries();
    let mut directories = vec![("grain directory", header.gd_offset.get())];
    if header.flags.get() & FLAG_REDUNDANT_GD != 0 {
        directories.push(("redundant grain directory", header.rgd_offset.get()));
    }
    for (structure, sector) in directories {
        if sector == GD_AT_END || gd_entries == 0 {
            continue;
        }
        let offset = sector.checked_mul(SECTOR);
        let end = offset.and_then(|o| o.checked_add(gd_entries * 4));
        if end.is_none_or(|end| end > src.len()) {
            return Err(ProbeError::Truncated {
                structure,
                offset: offset.unwrap_or(u64::MAX),
                length: gd_entries * 4,
                image_len: src.len(),
            });
        }
    }
    Ok(())
}

/// Glance's footer check for `gdOffset == GD_AT_END` (see [`parse_footer`]).
fn footer(src: &Source, header: &SparseHeaderRaw) -> Result<SparseHeaderRaw, String> {
    let len = src.len();
    if len < FOOTER_AREA + SECTOR {
        return Err("streamOptimized image too short to hold a footer".into());
    }
    let start = len - FOOTER_AREA;
    let area = src
        .read("vmdk footer", start, FOOTER_AREA)
        .map_err(|e| e.to_string())?;
    parse_footer(&area, start, header)
}

fn parse_descriptor(text: &[u8]) -> Result<Descriptor, ProbeError> {
    Descriptor::parse(text).map_err(|e| invalid("descriptor", 0, e.to_string()))
}

/// Records the descriptor's references and Glance's descriptor checks. `embedded`: the
/// descriptor lives inside a sparse extent, whose single SPARSE extent is that file itself.
fn report(descriptor: &Descriptor, found: &mut Probe, embedded: bool) {
    let create_type = descriptor.create_type.as_deref().unwrap_or("");
    found.subformat = descriptor.create_type.clone();
    if !ALLOWED_CREATE_TYPES.contains(&create_type) {
        found.fail(
            "descriptor",
            format_args!(
                "vmdk createType '{create_type}' is not allowed (allowed: {})",
                ALLOWED_CREATE_TYPES.join(", ")
            ),
        );
    }
    for line in &descriptor.bad_lines {
        found.fail(
            "descriptor",
            format_args!("unrecognised descriptor line '{line}'"),
        );
    }
    if descriptor.extents.is_empty() {
        found.fail("descriptor", "vmdk descriptor has no extents");
    }
    let is_self = embedded
        && descriptor.extents.len() == 1
        && descriptor.extents[0].kind == "SPARSE"
        && ALLOWED_CREATE_TYPES.contains(&create_type);
    for extent in &descriptor.extents {
        if extent.file.contains('/') {
            found.fail(
                "descriptor",
                format_args!("extent file name '{}' contains '/'", extent.file),
            );
        }
        if !is_self {
            found.references.push(FileReference::new(
                ReferenceKind::VmdkExtent,
                extent.file.clone(),
            ));
        }
    }
    if let Some(parent) = &descriptor.parent_hint {
        found.references.push(FileReference::new(
            ReferenceKind::VmdkParent,
            parent.clone(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::probe;
    use crate::vmdk::header::MARKER_FOOTER;

    const MONOLITHIC: &str = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
        createType=\"monolithicSparse\"\n\n# Extent description\nRW 2048 SPARSE \"disk.vmdk\"\n\n\
        ddb.virtualHWVersion = \"4\"\n";

    /// KDMV header: version 1, flags 0x3, 1 MiB capacity, 64 KiB grains, descriptor at sector 1
    /// (20 sectors), 512 GTEs per GT, RGD at sector 21, GD at sector 22.
    fn image(descriptor: &str) -> Vec<u8> {
        let mut b = vec![0u8; 64 << 10];
        b[0..4].copy_from_slice(b"KDMV");
        b[4..8].copy_from_slice(&1u32.to_le_bytes()); // version
        b[8..12].copy_from_slice(&3u32.to_le_bytes()); // flags: newline test, redundant GD
        b[12..20].copy_from_slice(&2048u64.to_le_bytes()); // capacity (sectors)
        b[20..28].copy_from_slice(&128u64.to_le_bytes()); // grainSize
        b[28..36].copy_from_slice(&1u64.to_le_bytes()); // descriptorOffset
        b[36..44].copy_from_slice(&20u64.to_le_bytes()); // descriptorSize
        b[44..48].copy_from_slice(&512u32.to_le_bytes()); // numGTEsPerGT
        b[48..56].copy_from_slice(&21u64.to_le_bytes()); // rgdOffset
        b[56..64].copy_from_slice(&22u64.to_le_bytes()); // gdOffset
        b[64..72].copy_from_slice(&128u64.to_le_bytes()); // overHead
        b[73..77].copy_from_slice(b"\n \r\n");
        b[512..512 + descriptor.len()].copy_from_slice(descriptor.as_bytes());
        b
    }

    #[test]
    fn monolithic_sparse_is_self_contained() {
        let found = probe(&image(MONOLITHIC)).unwrap();
        assert_eq!(found.format, Format::Vmdk);
        assert_eq!(found.virtual_size, Some(1 << 20));
        assert_eq!(found.subformat.as_deref(), Some("monolithicSparse"));
        assert_eq!(found.check_declared("vmdk"), Ok(()));
    }

    #[test]
    fn flat_text_descriptor_is_refused() {
        let text = "# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\n\
            RW 16 FLAT \"/etc/passwd\" 0\n";
        let found = probe(&text.as_bytes().to_vec()).unwrap();
        assert_eq!(found.format, Format::Vmdk);
        assert_eq!(found.virtual_size, Some(8192));
        assert_eq!(found.references[0].target, "/etc/passwd");
        let err = found.check_declared("vmdk").unwrap_err();
        assert!(err.message.contains("createType 'monolithicFlat'"), "{err}");
        assert!(
            probe(&text.as_bytes().to_vec())
                .unwrap()
                .check_declared("raw")
                .is_err()
        );
    }

    #[test]
    fn capacity_zero_redirect_is_refused() {
        let text = "version=1\ncreateType=\"monolithicFlat\"\nRW 16 FLAT \"/etc/passwd\" 0\n";
        let mut b = image(text);
        b[12..20].copy_from_slice(&0u64.to_le_bytes());
        let found = probe(&b).unwrap();
        assert_eq!(found.virtual_size, Some(8192));
        assert!(
            found
                .safety_failures
                .iter()
                .any(|f| f.contains("capacity 0"))
        );
        assert!(found.check_declared("vmdk").is_err());
    }

    #[test]
    fn parent_hint_is_a_reference() {
        let text = MONOLITHIC.replace(
            "parentCID=ffffffff",
            "parentCID=1\nparentFileNameHint=\"p.vmdk\"",
        );
        let found = probe(&image(&text)).unwrap();
        assert_eq!(
            found.references,
            vec![FileReference::new(ReferenceKind::VmdkParent, "p.vmdk")]
        );
    }

    #[test]
    fn text_probe_follows_qemu() {
        assert!(looks_like_text_descriptor(b"# c\n\n  \r\nversion=2\r\n"));
        assert!(!looks_like_text_descriptor(b"version=4\n"));
        assert!(!looks_like_text_descriptor(b"hello\nversion=1\n"));
        assert!(!looks_like_text_descriptor(b""));
    }

    #[test]
    fn bad_geometry_and_gd_past_the_end_are_errors() {
        let mut b = image(MONOLITHIC);
        b[4..8].copy_from_slice(&4u32.to_le_bytes());
        assert!(probe(&b).is_err());
        let mut b = image(MONOLITHIC);
        b[20..28].copy_from_slice(&0u64.to_le_bytes());
        assert!(probe(&b).is_err());
        let mut b = image(MONOLITHIC);
        b[44..48].copy_from_slice(&65536u32.to_le_bytes());
        assert!(probe(&b).is_err());
        let mut b = image(MONOLITHIC);
        b[56..64].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(probe(&b).unwrap_err().is_truncated());
        let mut b = image(MONOLITHIC);
        b[12..20].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(probe(&b).is_err());
    }

    #[test]
    fn stream_footer_is_checked() {
        let text = MONOLITHIC.replace("monolithicSparse", "streamOptimized");
        let mut b = image(&text);
        b[4..8].copy_from_slice(&3u32.to_le_bytes());
        b[56..64].copy_from_slice(&GD_AT_END.to_le_bytes());
        let found = probe(&b).unwrap();
        assert!(
            found
                .safety_failures
                .iter()
                .any(|f| f.starts_with("footer: "))
        );

        // footer marker, footer (GD at sector 22), EOS marker
        let len = b.len();
        let header: Vec<u8> = b[..512].to_vec();
        b[len - 1536 + 12..len - 1536 + 16].copy_from_slice(&MARKER_FOOTER.to_le_bytes());
        b[len - 1024..len - 512].copy_from_slice(&header);
        b[len - 1024 + 56..len - 1024 + 64].copy_from_slice(&22u64.to_le_bytes());
        let found = probe(&b).unwrap();
        assert_eq!(found.safety_failures, Vec::<String>::new());
        assert_eq!(found.check_declared("vmdk"), Ok(()));
    }
}
