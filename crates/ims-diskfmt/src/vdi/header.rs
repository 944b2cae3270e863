//! The VDI header (VirtualBox 1.1, little-endian, one 512-byte sector) as a raw zerocopy
//! layout, and the geometry checks the probe, the reader and the writer share.

use zerocopy::byteorder::{LittleEndian, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub(crate) const SIGNATURE: u32 = 0xBEDA_107F;
pub(crate) const SIGNATURE_OFFSET: u64 = 0x40;
/// qemu reads only version 1.1.
pub(crate) const VERSION_1_1: u32 = 0x0001_0001;
/// Bytes of header after the pre-header (text, signature, version, size field).
pub(crate) const HEADER_SIZE_1_1: u32 = 0x180;
pub(crate) const SECTOR: u32 = 512;
/// qemu supports only 1 MiB blocks.
pub(crate) const BLOCK_SIZE: u32 = 1 << 20;
/// qemu's VDI_BLOCKS_IN_IMAGE_MAX: the block map must stay below 4 GiB.
pub(crate) const MAX_BLOCKS: u32 = 0x3fff_ffff;
pub(crate) const TYPE_DYNAMIC: u32 = 1;
pub(crate) const TYPE_STATIC: u32 = 2;
pub(crate) const TYPE_UNDO: u32 = 3;
pub(crate) const TYPE_DIFF: u32 = 4;
/// Block map entry of a never-written block (qemu reads zeros).
pub(crate) const UNALLOCATED: u32 = 0xFFFF_FFFF;
/// Block map entry of a discarded block (reads as zeros).
pub(crate) const DISCARDED: u32 = 0xFFFF_FFFE;

/// The text qemu writes at offset 0 (content is informational only).
pub(crate) const QEMU_TEXT: &[u8] = b"<<< QEMU VM Virtual Disk Image >>>\n";

/// The whole header sector (little-endian).
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct HeaderRaw {
    pub text: [u8; 64],
    pub signature: U32<LittleEndian>,
    pub version: U32<LittleEndian>,
    pub header_size: U32<LittleEndian>,
    pub image_type: U32<LittleEndian>,
    pub image_flags: U32<LittleEndian>,
    pub description: [u8; 256],
    pub offset_bmap: U32<LittleEndian>,
    pub offset_data: U32<LittleEndian>,
    pub cylinders: U32<LittleEndian>,
    pub heads: U32<LittleEndian>,
    pub sectors: U32<LittleEndian>,
    pub sector_size: U32<LittleEndian>,
    pub unused: U32<LittleEndian>,
    pub disk_size: U64<LittleEndian>,
    pub block_size: U32<LittleEndian>,
    pub block_extra: U32<LittleEndian>,
    pub blocks_in_image: U32<LittleEndian>,
    pub blocks_allocated: U32<LittleEndian>,
    pub uuid_image: [u8; 16],
    pub uuid_last_snap: [u8; 16],
    pub uuid_link: [u8; 16],
    pub uuid_parent: [u8; 16],
    pub unused2: [u8; 56],
}

/// Why a header is unusable: the byte offset of the offending field and a reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeaderProblem {
    pub field_offset: u64,
    pub reason: String,
}

fn problem(field_offset: u64, reason: impl Into<String>) -> HeaderProblem {
    HeaderProblem {
        field_offset,
        reason: reason.into(),
    }
}

impl HeaderRaw {
    /// Checks what qemu checks (version, type, sector and block size, block count, disk
    /// size against the block map) plus the block map's placement inside a `file_len`-byte
    /// image.
    pub(crate) fn check(&self, file_len: u64) -> Result<(), HeaderProblem> {
        let version = self.version.get();
        if version != VERSION_1_1 {
            return Err(problem(
                0x44,
                format!("unsupported version {version:#010x}"),
            ));
        }
        let image_type = self.image_type.get();
        if !(TYPE_DYNAMIC..=TYPE_DIFF).contains(&image_type) {
            return Err(problem(0x4c, format!("unknown image type {image_type}")));
        }
        if self.sector_size.get() != SECTOR {
            return Err(problem(
                0x168,
                format!("sector size {} is not 512", self.sector_size.get()),
            ));
        }
        let block_size = self.block_size.get();
        if block_size != BLOCK_SIZE {
            return Err(problem(
                0x178,
                format!("block size {block_size} is not 1 MiB"),
            ));
        }
        let blocks = self.blocks_in_image.get();
        if blocks > MAX_BLOCKS {
            return Err(problem(
                0x180,
                format!("{blocks} blocks exceed {MAX_BLOCKS}"),
            ));
        }
        let disk_size = self.disk_size.get();
        if disk_size > u64::from(blocks) * u64::from(block_size) {
            return Err(problem(
                0x170,
                format!("disk size {disk_size} exceeds {blocks} blocks of {block_size} bytes"),
            ));
        }
        let bmap_offset = u64::from(self.offset_bmap.get());
        let data_offset = u64::from(self.offset_data.get());
        let bmap_end = bmap_offset + self.bmap_bytes();
        if bmap_offset % u64::from(SECTOR) != 0
            || data_offset % u64::from(SECTOR) != 0
            || bmap_offset < size_of::<HeaderRaw>() as u64
            || bmap_end > data_offset
            || bmap_end > file_len
        {
            return Err(problem(
                0x154,
                "block map is unaligned, overlaps the header or the data, or lies past the end \
                 of the image",
            ));
        }
        Ok(())
    }

    /// Bytes of block map: 4 per block (≤ 4 GiB, no overflow).
    pub(crate) fn bmap_bytes(&self) -> u64 {
        u64::from(self.blocks_in_image.get()) * 4
    }

    /// The disk size as qemu presents it: rounded up to a whole sector.
    pub(crate) fn virtual_size(&self) -> u64 {
        self.disk_size.get().div_ceil(u64::from(SECTOR)) * u64::from(SECTOR)
    }
}

/// A UUID as VirtualBox prints it; VDI stores the first three fields little-endian.
pub(crate) fn uuid_text(u: &[u8; 16]) -> String {
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{{{}-{}-{}-{}-{}}}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use zerocopy::FromZeros;

    use super::*;

    #[test]
    fn annotated_qemu_static_header() {
        // The first 0x1a8 bytes of qemu's static 64 MiB VDI (uuids abbreviated).
        let mut b = [0u8; 512];
        b[..35].copy_from_slice(QEMU_TEXT);
        b[0x40..0x44].copy_from_slice(&[0x7f, 0x10, 0xda, 0xbe]); // signature
        b[0x44..0x48].copy_from_slice(&[1, 0, 1, 0]); // version 1.1
        b[0x48..0x4c].copy_from_slice(&[0x80, 1, 0, 0]); // header size 0x180
        b[0x4c..0x50].copy_from_slice(&[2, 0, 0, 0]); // static
        b[0x154..0x158].copy_from_slice(&[0, 2, 0, 0]); // block map at 0x200
        b[0x158..0x15c].copy_from_slice(&[0, 4, 0, 0]); // data at 0x400
        b[0x168..0x16c].copy_from_slice(&[0, 2, 0, 0]); // sector size 512
        b[0x170..0x178].copy_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0]); // 64 MiB
        b[0x178..0x17c].copy_from_slice(&[0, 0, 0x10, 0]); // block size 1 MiB
        b[0x180..0x184].copy_from_slice(&[0x40, 0, 0, 0]); // 64 blocks
        b[0x184..0x188].copy_from_slice(&[0x40, 0, 0, 0]); // 64 allocated
        b[0x188] = 0x2c; // uuid_image
        let (h, _) = HeaderRaw::read_from_prefix(&b[..]).unwrap();
        assert_eq!(size_of::<HeaderRaw>(), 512);
        assert_eq!(h.signature.get(), SIGNATURE);
        assert_eq!(h.header_size.get(), HEADER_SIZE_1_1);
        assert_eq!(h.image_type.get(), TYPE_STATIC);
        assert_eq!((h.offset_bmap.get(), h.offset_data.get()), (0x200, 0x400));
        assert_eq!(h.virtual_size(), 64 << 20);
        assert_eq!(h.bmap_bytes(), 256);
        assert_eq!(h.uuid_image[0], 0x2c);
        assert_eq!(h.check(0x400), Ok(()));
        assert_eq!(h.check(0x2ff).unwrap_err().field_offset, 0x154);
    }

    #[test]
    fn odd_sizes_round_up_like_qemu() {
        let mut h = HeaderRaw::new_zeroed();
        h.disk_size.set(10_487_396);
        assert_eq!(h.virtual_size(), 10_487_808);
    }
}
