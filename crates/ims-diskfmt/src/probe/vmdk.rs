//! VMDK inspection: the hosted sparse header (KDMV), its embedded descriptor, text
//! descriptors, and the streamOptimized footer.

use zerocopy::byteorder::{LittleEndian, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

use super::source::{Source, parse_prefix};
use super::{Detection, FileReference, Probe, ProbeError, ReferenceKind};
use crate::Format;

const MAGIC: [u8; 4] = *b"KDMV";
const SECTOR: u64 = 512;
/// Versions qemu reads (3 = streamOptimized).
const MAX_VERSION: u32 = 3;
/// qemu rejects more than 512 grain table entries per table.
const MAX_GTES_PER_GT: u32 = 512;
/// qemu's largest grain: 0x200000 sectors (1 GiB).
const MAX_GRAIN_SECTORS: u64 = 0x20_0000;
/// qemu caps the grain directory at 32 M entries.
const MAX_GD_ENTRIES: u64 = 32 << 20;
/// Glance and qemu read at most 1 MiB of descriptor text.
const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;
/// qemu's probe looks at the first 2 KiB for a text descriptor's `version=` line.
const TEXT_PROBE_BYTES: u64 = 2048;
/// Bounds the work on hostile descriptors (a real one has a handful of extents).
const MAX_EXTENTS: usize = 4096;
/// Grain directory offset meaning "see the footer" (streamOptimized, VMware layout).
const GD_AT_END: u64 = u64::MAX;
const FLAG_REDUNDANT_GD: u32 = 1 << 1;
/// The footer, the footer marker and the end-of-stream marker: the last three sectors.
const FOOTER_AREA: u64 = 3 * SECTOR;
const MARKER_FOOTER: u32 = 3;
const ALLOWED_CREATE_TYPES: [&str; 2] = ["monolithicSparse", "streamOptimized"];

/// The hosted sparse extent header (little-endian); 79 bytes of the 512-byte sector.
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct SparseHeaderRaw {
    magic: [u8; 4],
    version: U32<LittleEndian>,
    flags: U32<LittleEndian>,
    capacity: U64<LittleEndian>,
    grain_size: U64<LittleEndian>,
    descriptor_offset: U64<LittleEndian>,
    descriptor_size: U64<LittleEndian>,
    num_gtes_per_gt: U32<LittleEndian>,
    rgd_offset: U64<LittleEndian>,
    gd_offset: U64<LittleEndian>,
    over_head: U64<LittleEndian>,
    unclean_shutdown: u8,
    newline_test: [u8; 4],
    compress_algorithm: U16<LittleEndian>,
}

/// A stream marker: `{u64 value, u32 size, u32 type}` at the start of a sector.
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct MarkerRaw {
    value: U64<LittleEndian>,
    size: U32<LittleEndian>,
    kind: U32<LittleEndian>,
}

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
    let descriptor = Descriptor::parse(&text)?;
    let mut found = Probe::new(Format::Vmdk);
    // A separate descriptor file: every extent is another file.
    descriptor.report(&mut found, false);
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
    let version = raw.version.get();
    if version == 0 || version > MAX_VERSION {
        return Err(invalid(
            "sparse header",
            4,
            format!("unsupported version {version}"),
        ));
    }
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
    let descriptor = Descriptor::parse(&text)?;
    descriptor.report(&mut found, true);
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
    let gtes = raw.num_gtes_per_gt.get();
    if gtes == 0 || gtes > MAX_GTES_PER_GT {
        return Err(invalid(
            "sparse header",
            44,
            format!("numGTEsPerGT {gtes} outside 1..={MAX_GTES_PER_GT}"),
        ));
    }
    let grain = raw.grain_size.get();
    if !grain.is_power_of_two() || grain > MAX_GRAIN_SECTORS {
        return Err(invalid(
            "sparse header",
            20,
            format!("grainSize {grain} is not a power of 2 up to {MAX_GRAIN_SECTORS} sectors"),
        ));
    }
    let capacity = raw.capacity.get();
    if capacity.checked_mul(SECTOR).is_none() {
        return Err(invalid(
            "sparse header",
            12,
            format!("capacity {capacity} overflows"),
        ));
    }
    Ok(())
}

/// The grain directories (primary, and redundant when flagged) must fit inside the image.
fn check_grain_directories(src: &Source, header: &SparseHeaderRaw) -> Result<(), ProbeError> {
    let capacity = header.capacity.get();
    let sectors_per_gt = header.grain_size.get() * u64::from(header.num_gtes_per_gt.get());
    let gd_entries = capacity.div_ceil(sectors_per_gt);
    if gd_entries > MAX_GD_ENTRIES {
        return Err(invalid(
            "grain directory",
            12,
            format!("{gd_entries} entries exceed qemu's limit of {MAX_GD_ENTRIES}"),
        ));
    }
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

/// Glance's footer check for `gdOffset == GD_AT_END`: the last three sectors must be a footer
/// marker, a footer header repeating the header's signature, version and descriptor location
/// (and not deferring to yet another footer), and an end-of-stream marker.
fn footer(src: &Source, header: &SparseHeaderRaw) -> Result<SparseHeaderRaw, String> {
    let len = src.len();
    if len < FOOTER_AREA + SECTOR {
        return Err("streamOptimized image too short to hold a footer".into());
    }
    let start = len - FOOTER_AREA;
    let area = src
        .read("vmdk footer", start, FOOTER_AREA)
        .map_err(|e| e.to_string())?;
    let parse_marker = |at: usize| parse_prefix::<MarkerRaw>("vmdk marker", start, &area[at..]);
    let footer_marker = parse_marker(0).map_err(|e| e.to_string())?;
    if footer_marker.size.get() != 0 || footer_marker.kind.get() != MARKER_FOOTER {
        return Err(format!(
            "footer marker at offset {start} has type {} (expected {MARKER_FOOTER})",
            footer_marker.kind.get()
        ));
    }
    let eos = parse_marker(2 * SECTOR as usize).map_err(|e| e.to_string())?;
    if eos.value.get() != 0 || eos.size.get() != 0 || eos.kind.get() != 0 {
        return Err(format!(
            "end-of-stream marker at offset {} is malformed",
            start + 2 * SECTOR
        ));
    }
    let footer: SparseHeaderRaw =
        parse_prefix("vmdk footer", start + SECTOR, &area[SECTOR as usize..])
            .map_err(|e| e.to_string())?;
    if footer.magic != MAGIC
        || footer.version.get() != header.version.get()
        || footer.descriptor_offset.get() != header.descriptor_offset.get()
        || footer.descriptor_size.get() != header.descriptor_size.get()
    {
        return Err("footer does not repeat the header's signature, version and descriptor".into());
    }
    if footer.gd_offset.get() == GD_AT_END {
        return Err("footer defers the grain directory to another footer".into());
    }
    if footer.num_gtes_per_gt.get() != header.num_gtes_per_gt.get()
        || footer.grain_size.get() != header.grain_size.get()
    {
        return Err("footer grain geometry differs from the header".into());
    }
    Ok(footer)
}

/// One extent line: `ACCESS SECTORS TYPE "FILE" [OFFSET]`.
struct Extent {
    access: String,
    sectors: u64,
    kind: String,
    file: String,
}

struct Descriptor {
    create_type: Option<String>,
    parent_hint: Option<String>,
    extents: Vec<Extent>,
    bad_lines: Vec<String>,
}

fn unquote(value: &str) -> &str {
    let value = value.trim();
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

impl Descriptor {
    /// Parses descriptor text (up to the first NUL). Lines that are neither comments, `key=value`
    /// nor extent lines are collected for the safety check rather than rejected outright.
    fn parse(bytes: &[u8]) -> Result<Descriptor, ProbeError> {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let text = String::from_utf8_lossy(&bytes[..end]);
        let mut descriptor = Descriptor {
            create_type: None,
            parent_hint: None,
            extents: Vec::new(),
            bad_lines: Vec::new(),
        };
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if ["RW ", "RDONLY ", "NOACCESS "]
                .iter()
                .any(|a| line.starts_with(a))
            {
                if descriptor.extents.len() >= MAX_EXTENTS {
                    return Err(invalid(
                        "descriptor",
                        0,
                        format!("more than {MAX_EXTENTS} extent lines"),
                    ));
                }
                match parse_extent(line) {
                    Some(extent) => descriptor.extents.push(extent),
                    None => descriptor.bad_lines.push(line.chars().take(80).collect()),
                }
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                descriptor.bad_lines.push(line.chars().take(80).collect());
                continue;
            };
            match key.trim() {
                "createType" => descriptor.create_type = Some(unquote(value).to_owned()),
                "parentFileNameHint" => descriptor.parent_hint = Some(unquote(value).to_owned()),
                _ => {}
            }
        }
        Ok(descriptor)
    }

    /// Records the descriptor's references and Glance's descriptor checks. `embedded`: the
    /// descriptor lives inside a sparse extent, whose single SPARSE extent is that file itself.
    fn report(&self, found: &mut Probe, embedded: bool) {
        let create_type = self.create_type.as_deref().unwrap_or("");
        found.subformat = self.create_type.clone();
        if !ALLOWED_CREATE_TYPES.contains(&create_type) {
            found.fail(
                "descriptor",
                format_args!(
                    "vmdk createType '{create_type}' is not allowed (allowed: {})",
                    ALLOWED_CREATE_TYPES.join(", ")
                ),
            );
        }
        for line in &self.bad_lines {
            found.fail(
                "descriptor",
                format_args!("unrecognised descriptor line '{line}'"),
            );
        }
        if self.extents.is_empty() {
            found.fail("descriptor", "vmdk descriptor has no extents");
        }
        let is_self = embedded
            && self.extents.len() == 1
            && self.extents[0].kind == "SPARSE"
            && ALLOWED_CREATE_TYPES.contains(&create_type);
        for extent in &self.extents {
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
        if let Some(parent) = &self.parent_hint {
            found.references.push(FileReference::new(
                ReferenceKind::VmdkParent,
                parent.clone(),
            ));
        }
    }

    /// Disk size as qemu computes it from extents: RW extents that are not ZERO.
    fn extents_size(&self) -> Option<u64> {
        self.extents
            .iter()
            .filter(|e| e.access == "RW" && e.kind != "ZERO")
            .try_fold(0u64, |sum, e| {
                sum.checked_add(e.sectors.checked_mul(SECTOR)?)
            })
    }
}

fn parse_extent(line: &str) -> Option<Extent> {
    let (access, rest) = line.split_once(' ')?;
    let rest = rest.trim_start();
    let (sectors, rest) = rest.split_once(' ')?;
    let rest = rest.trim_start();
    let (kind, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let rest = rest.trim_start();
    let file = match rest.strip_prefix('"') {
        Some(quoted) => quoted.split_once('"')?.0,
        None => rest.split(' ').next().unwrap_or(""),
    };
    Some(Extent {
        access: access.to_owned(),
        sectors: sectors.parse().ok()?,
        kind: kind.to_owned(),
        file: file.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::probe;

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
