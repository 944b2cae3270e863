//! The hosted sparse extent header ("KDMV", 512 bytes, little-endian) and the stream markers,
//! as raw zerocopy layouts, plus the geometry checks every VMDK reader shares.

use zerocopy::byteorder::{LittleEndian, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub(crate) const MAGIC: [u8; 4] = *b"KDMV";
/// ESX 3 "COWD" sparse extents (vmfsSparse); qemu reads them only as descriptor extents.
pub(crate) const COWD_MAGIC: [u8; 4] = *b"COWD";
pub(crate) const SECTOR: u64 = 512;
/// Versions qemu reads (2 = zeroed grains, 3 = streamOptimized or changed-block tracking).
pub(crate) const MAX_VERSION: u32 = 3;
/// qemu rejects more than 512 grain table entries per table.
pub(crate) const MAX_GTES_PER_GT: u32 = 512;
/// qemu's largest grain: 0x200000 sectors (1 GiB).
pub(crate) const MAX_GRAIN_SECTORS: u64 = 0x20_0000;
/// qemu caps the grain directory at 32 M entries (8 TiB with 512-byte grains).
pub(crate) const MAX_GD_ENTRIES: u64 = 32 << 20;
/// Grain directory offset meaning "see the footer" (streamOptimized, VMware layout).
pub(crate) const GD_AT_END: u64 = u64::MAX;

pub(crate) const FLAG_NEWLINE_TEST: u32 = 1 << 0;
pub(crate) const FLAG_REDUNDANT_GD: u32 = 1 << 1;
/// Grain table entry 1 means "this grain reads as zeros".
pub(crate) const FLAG_ZEROED_GRAIN: u32 = 1 << 2;
pub(crate) const FLAG_COMPRESSED: u32 = 1 << 16;
pub(crate) const FLAG_MARKERS: u32 = 1 << 17;
pub(crate) const COMPRESSION_DEFLATE: u16 = 1;
/// The bytes at offset 73 that detect text-mode (CRLF-mangling) transfers.
pub(crate) const NEWLINE_TEST: [u8; 4] = *b"\n \r\n";

/// Stream marker types (`MarkerRaw::kind`).
pub(crate) const MARKER_END_OF_STREAM: u32 = 0;
pub(crate) const MARKER_GRAIN_TABLE: u32 = 1;
pub(crate) const MARKER_GRAIN_DIRECTORY: u32 = 2;
pub(crate) const MARKER_FOOTER: u32 = 3;

/// The footer, the footer marker and the end-of-stream marker: the last three sectors of a
/// VMware-layout stream.
pub(crate) const FOOTER_AREA: u64 = 3 * SECTOR;

/// The hosted sparse extent header; 79 meaningful bytes of the 512-byte sector 0.
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct SparseHeaderRaw {
    pub magic: [u8; 4],
    pub version: U32<LittleEndian>,
    pub flags: U32<LittleEndian>,
    /// Disk size in sectors.
    pub capacity: U64<LittleEndian>,
    /// Grain size in sectors.
    pub grain_size: U64<LittleEndian>,
    pub descriptor_offset: U64<LittleEndian>,
    pub descriptor_size: U64<LittleEndian>,
    pub num_gtes_per_gt: U32<LittleEndian>,
    pub rgd_offset: U64<LittleEndian>,
    pub gd_offset: U64<LittleEndian>,
    /// Sectors before the first grain (header, descriptor, and qemu's preallocated tables).
    pub over_head: U64<LittleEndian>,
    pub unclean_shutdown: u8,
    pub newline_test: [u8; 4],
    pub compress_algorithm: U16<LittleEndian>,
}

/// A metadata marker: `{u64 value, u32 size = 0, u32 type}` at the start of a sector.
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct MarkerRaw {
    pub value: U64<LittleEndian>,
    pub size: U32<LittleEndian>,
    pub kind: U32<LittleEndian>,
}

/// The 12 bytes in front of a compressed grain: its first sector and the compressed length.
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct GrainMarkerRaw {
    pub lba: U64<LittleEndian>,
    pub size: U32<LittleEndian>,
}

/// Why a header is unusable: the byte offset of the offending field and a reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeaderProblem {
    pub field_offset: u64,
    pub reason: String,
}

fn problem(field_offset: u64, reason: String) -> HeaderProblem {
    HeaderProblem {
        field_offset,
        reason,
    }
}

impl SparseHeaderRaw {
    pub(crate) fn flags(&self) -> u32 {
        self.flags.get()
    }

    /// Checks version, grain geometry and capacity: what every reader needs before any
    /// table arithmetic.
    pub(crate) fn check_geometry(&self) -> Result<(), HeaderProblem> {
        let version = self.version.get();
        if version == 0 || version > MAX_VERSION {
            return Err(problem(4, format!("unsupported version {version}")));
        }
        let gtes = self.num_gtes_per_gt.get();
        if gtes == 0 || gtes > MAX_GTES_PER_GT {
            return Err(problem(
                44,
                format!("numGTEsPerGT {gtes} outside 1..={MAX_GTES_PER_GT}"),
            ));
        }
        let grain = self.grain_size.get();
        if !grain.is_power_of_two() || grain > MAX_GRAIN_SECTORS {
            return Err(problem(
                20,
                format!("grainSize {grain} is not a power of 2 up to {MAX_GRAIN_SECTORS} sectors"),
            ));
        }
        let capacity = self.capacity.get();
        if capacity.checked_mul(SECTOR).is_none() {
            return Err(problem(12, format!("capacity {capacity} overflows")));
        }
        let entries = self.gd_entries();
        if entries > MAX_GD_ENTRIES {
            return Err(problem(
                12,
                format!(
                    "capacity {capacity} needs {entries} grain directory entries, more than \
                     the limit of {MAX_GD_ENTRIES}"
                ),
            ));
        }
        Ok(())
    }

    /// Entries in the grain directory (qemu's L1 size).
    pub(crate) fn gd_entries(&self) -> u64 {
        let per_gt = self
            .grain_size
            .get()
            .saturating_mul(u64::from(self.num_gtes_per_gt.get()));
        if per_gt == 0 {
            return 0;
        }
        self.capacity.get().div_ceil(per_gt)
    }
}

/// Checks the last three sectors of a VMware-layout stream (`area`, read at file offset
/// `start`): a footer marker, a footer header repeating the header's signature, version,
/// descriptor location and grain geometry with a real grain directory offset, and an
/// end-of-stream marker. Returns the footer header, which takes precedence over the header.
pub(crate) fn parse_footer(
    area: &[u8],
    start: u64,
    header: &SparseHeaderRaw,
) -> Result<SparseHeaderRaw, String> {
    let sector = SECTOR as usize;
    let marker_at = |at: usize| {
        area.get(at..)
            .and_then(|b| MarkerRaw::read_from_prefix(b).ok())
            .map(|(m, _)| m)
            .ok_or_else(|| format!("footer area at offset {start} is too short"))
    };
    let footer_marker = marker_at(0)?;
    if footer_marker.size.get() != 0 || footer_marker.kind.get() != MARKER_FOOTER {
        return Err(format!(
            "footer marker at offset {start} has type {} (expected {MARKER_FOOTER})",
            footer_marker.kind.get()
        ));
    }
    let eos = marker_at(2 * sector)?;
    if eos.value.get() != 0 || eos.size.get() != 0 || eos.kind.get() != MARKER_END_OF_STREAM {
        return Err(format!(
            "end-of-stream marker at offset {} is malformed",
            start + 2 * SECTOR
        ));
    }
    let footer = area
        .get(sector..)
        .and_then(|b| SparseHeaderRaw::read_from_prefix(b).ok())
        .map(|(h, _)| h)
        .ok_or_else(|| format!("footer area at offset {start} is too short"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Sector 0 of qemu's 64 MiB monolithicSparse image, annotated.
    fn qemu_header() -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..4].copy_from_slice(b"KDMV"); // magic
        b[4..8].copy_from_slice(&[1, 0, 0, 0]); // version 1
        b[8..12].copy_from_slice(&[3, 0, 0, 0]); // flags: newline test | redundant GD
        b[12..20].copy_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]); // capacity 0x20000 sectors
        b[20..28].copy_from_slice(&[128, 0, 0, 0, 0, 0, 0, 0]); // grainSize 128 sectors
        b[28..36].copy_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]); // descriptorOffset 1
        b[36..44].copy_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0]); // descriptorSize 20
        b[44..48].copy_from_slice(&[0, 2, 0, 0]); // numGTEsPerGT 512
        b[48..56].copy_from_slice(&[21, 0, 0, 0, 0, 0, 0, 0]); // rgdOffset 21
        b[56..64].copy_from_slice(&[30, 0, 0, 0, 0, 0, 0, 0]); // gdOffset 30
        b[64..72].copy_from_slice(&[128, 0, 0, 0, 0, 0, 0, 0]); // overHead 128
        b[73..77].copy_from_slice(b"\n \r\n"); // newline test
        b
    }

    #[test]
    fn annotated_header_fields() {
        let (h, _) = SparseHeaderRaw::read_from_prefix(&qemu_header()[..]).unwrap();
        assert_eq!(h.magic, MAGIC);
        assert_eq!(h.version.get(), 1);
        assert_eq!(h.flags(), FLAG_NEWLINE_TEST | FLAG_REDUNDANT_GD);
        assert_eq!(h.capacity.get() * SECTOR, 64 << 20);
        assert_eq!(h.grain_size.get(), 128);
        assert_eq!(h.num_gtes_per_gt.get(), 512);
        assert_eq!((h.rgd_offset.get(), h.gd_offset.get()), (21, 30));
        assert_eq!(h.over_head.get(), 128);
        assert_eq!(h.newline_test, NEWLINE_TEST);
        assert_eq!(h.gd_entries(), 2);
        assert_eq!(h.check_geometry(), Ok(()));
        assert_eq!(size_of::<SparseHeaderRaw>(), 79);
        assert_eq!(size_of::<MarkerRaw>(), 16);
        assert_eq!(size_of::<GrainMarkerRaw>(), 12);
    }

    #[test]
    fn geometry_problems_name_the_field() {
        let bad = |at: usize, bytes: &[u8]| {
            let mut b = qemu_header();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            let (h, _) = SparseHeaderRaw::read_from_prefix(&b[..]).unwrap();
            h.check_geometry().unwrap_err().field_offset
        };
        assert_eq!(bad(4, &4u32.to_le_bytes()), 4);
        assert_eq!(bad(44, &65536u32.to_le_bytes()), 44);
        assert_eq!(bad(20, &0u64.to_le_bytes()), 20);
        assert_eq!(bad(20, &(1u64 << 22).to_le_bytes()), 20);
        assert_eq!(bad(12, &u64::MAX.to_le_bytes()), 12);
        // 2^60 sectors with 64 KiB grains: 2^44 GD entries.
        assert_eq!(bad(12, &(1u64 << 54).to_le_bytes()), 12);
    }
}
