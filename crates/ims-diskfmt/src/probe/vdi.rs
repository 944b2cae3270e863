//! VDI (VirtualBox) header inspection: geometry qemu supports, block map placement and
//! entries, and the parent UUIDs of differencing images.

use zerocopy::byteorder::{LittleEndian, U32, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

use super::source::Source;
use super::{Detection, FileReference, Probe, ProbeError, ReferenceKind};
use crate::Format;

const SIGNATURE: u32 = 0xBEDA_107F;
const SIGNATURE_OFFSET: u64 = 0x40;
/// qemu reads only version 1.1.
const VERSION_1_1: u32 = 0x0001_0001;
const SECTOR: u32 = 512;
/// qemu supports only 1 MiB blocks.
const BLOCK_SIZE: u32 = 1 << 20;
/// qemu's VDI_BLOCKS_IN_IMAGE_MAX: the block map must stay below 4 GiB.
const MAX_BLOCKS: u32 = 0x3fff_ffff;
const TYPE_NORMAL: u32 = 1;
const TYPE_FIXED: u32 = 2;
const TYPE_UNDO: u32 = 3;
const TYPE_DIFF: u32 = 4;
const UNALLOCATED: u32 = 0xFFFF_FFFF;
const DISCARDED: u32 = 0xFFFF_FFFE;

/// The header (little-endian) from the start of the file to the parent UUID.
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct HeaderRaw {
    text: [u8; 64],
    signature: U32<LittleEndian>,
    version: U32<LittleEndian>,
    header_size: U32<LittleEndian>,
    image_type: U32<LittleEndian>,
    image_flags: U32<LittleEndian>,
    description: [u8; 256],
    offset_bmap: U32<LittleEndian>,
    offset_data: U32<LittleEndian>,
    cylinders: U32<LittleEndian>,
    heads: U32<LittleEndian>,
    sectors: U32<LittleEndian>,
    sector_size: U32<LittleEndian>,
    unused: U32<LittleEndian>,
    disk_size: U64<LittleEndian>,
    block_size: U32<LittleEndian>,
    block_extra: U32<LittleEndian>,
    blocks_in_image: U32<LittleEndian>,
    blocks_allocated: U32<LittleEndian>,
    uuid_image: [u8; 16],
    uuid_last_snap: [u8; 16],
    uuid_link: [u8; 16],
    uuid_parent: [u8; 16],
}

fn invalid(structure: &'static str, offset: u64, reason: impl Into<String>) -> ProbeError {
    ProbeError::invalid(Format::Vdi, structure, offset, reason)
}

fn uuid_text(u: &[u8; 16]) -> String {
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

pub(crate) fn detect(src: &Source) -> Detection {
    let Some(sig) = src.read_if_present("vdi signature", SIGNATURE_OFFSET, 4)? else {
        return Ok(None);
    };
    if sig != SIGNATURE.to_le_bytes() {
        return Ok(None);
    }
    let raw: HeaderRaw = src.read_struct("vdi header", 0)?;
    let version = raw.version.get();
    if version != VERSION_1_1 {
        return Err(invalid(
            "header",
            0x44,
            format!("unsupported version {version:#010x}"),
        ));
    }
    let image_type = raw.image_type.get();
    if !(TYPE_NORMAL..=TYPE_DIFF).contains(&image_type) {
        return Err(invalid(
            "header",
            0x4c,
            format!("unknown image type {image_type}"),
        ));
    }
    if raw.sector_size.get() != SECTOR {
        return Err(invalid(
            "header",
            0x168,
            format!("sector size {} is not 512", raw.sector_size.get()),
        ));
    }
    let block_size = raw.block_size.get();
    if block_size != BLOCK_SIZE {
        return Err(invalid(
            "header",
            0x178,
            format!("block size {block_size} is not 1 MiB"),
        ));
    }
    let blocks = raw.blocks_in_image.get();
    if blocks > MAX_BLOCKS {
        return Err(invalid(
            "header",
            0x180,
            format!("{blocks} blocks exceed {MAX_BLOCKS}"),
        ));
    }
    let disk_size = raw.disk_size.get();
    if disk_size > u64::from(blocks) * u64::from(block_size) {
        return Err(invalid(
            "header",
            0x170,
            format!("disk size {disk_size} exceeds {blocks} blocks of {block_size} bytes"),
        ));
    }
    if raw.blocks_allocated.get() > blocks {
        return Err(invalid(
            "header",
            0x184,
            "more blocks allocated than the image has",
        ));
    }
    let bmap_offset = u64::from(raw.offset_bmap.get());
    let data_offset = u64::from(raw.offset_data.get());
    let bmap_bytes = u64::from(blocks) * 4;
    if bmap_offset % u64::from(SECTOR) != 0
        || data_offset % u64::from(SECTOR) != 0
        || bmap_offset < size_of::<HeaderRaw>() as u64
        || bmap_offset + bmap_bytes > data_offset
        || bmap_offset + bmap_bytes > src.len()
    {
        return Err(invalid(
            "block map",
            bmap_offset,
            "unaligned, overlapping the header or past the end of the image",
        ));
    }
    check_block_map(src, bmap_offset, blocks)?;

    let mut found = Probe::new(Format::Vdi);
    found.virtual_size = Some(disk_size);
    found.subformat = Some(
        match image_type {
            TYPE_NORMAL => "dynamic",
            TYPE_FIXED => "static",
            TYPE_UNDO => "undo",
            _ => "differencing",
        }
        .into(),
    );
    for uuid in [raw.uuid_link, raw.uuid_parent] {
        if uuid != [0; 16] {
            found.references.push(FileReference::new(
                ReferenceKind::VdiParent,
                uuid_text(&uuid),
            ));
        }
    }
    if matches!(image_type, TYPE_UNDO | TYPE_DIFF) && found.references.is_empty() {
        found.fail("image_type", "undo/differencing VDI needs a parent image");
    }
    Ok(Some(found))
}

/// Entries inside the inspection prefix must be unallocated, discarded, or distinct block
/// indexes below `blocks_in_image`.
fn check_block_map(src: &Source, offset: u64, blocks: u32) -> Result<(), ProbeError> {
    let readable = src
        .readable_prefix_end()
        .saturating_sub(offset)
        .min(u64::from(blocks) * 4)
        / 4
        * 4;
    if readable == 0 {
        return Ok(());
    }
    let bmap = src.read("vdi block map", offset, readable)?;
    let mut used: Vec<u32> = Vec::new();
    for (index, raw) in bmap.chunks_exact(4).enumerate() {
        let entry = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        if entry == UNALLOCATED || entry == DISCARDED {
            continue;
        }
        if entry >= blocks {
            return Err(invalid(
                "block map",
                offset + index as u64 * 4,
                format!("entry {index} = {entry} is beyond the {blocks} blocks of the image"),
            ));
        }
        used.push(entry);
    }
    used.sort_unstable();
    if let Some(pair) = used.windows(2).find(|w| w[0] == w[1]) {
        return Err(invalid(
            "block map",
            offset,
            format!("block {} is mapped twice", pair[0]),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::probe;

    /// qemu layout: header, block map at 0x200 (4 blocks, block 0 allocated), data at 0x400.
    fn image() -> Vec<u8> {
        let mut b = vec![0u8; 0x400 + (1 << 20)];
        b[0..35].copy_from_slice(b"<<< QEMU VM Virtual Disk Image >>>\n");
        b[0x40..0x44].copy_from_slice(&SIGNATURE.to_le_bytes());
        b[0x44..0x48].copy_from_slice(&VERSION_1_1.to_le_bytes());
        b[0x48..0x4c].copy_from_slice(&0x180u32.to_le_bytes()); // header size
        b[0x4c..0x50].copy_from_slice(&TYPE_NORMAL.to_le_bytes());
        b[0x154..0x158].copy_from_slice(&0x200u32.to_le_bytes()); // offset_bmap
        b[0x158..0x15c].copy_from_slice(&0x400u32.to_le_bytes()); // offset_data
        b[0x168..0x16c].copy_from_slice(&512u32.to_le_bytes()); // sector size
        b[0x170..0x178].copy_from_slice(&(4u64 << 20).to_le_bytes()); // disk size
        b[0x178..0x17c].copy_from_slice(&BLOCK_SIZE.to_le_bytes());
        b[0x180..0x184].copy_from_slice(&4u32.to_le_bytes()); // blocks in image
        b[0x184..0x188].copy_from_slice(&1u32.to_le_bytes()); // blocks allocated
        for i in 0..4 {
            let entry = if i == 0 { 0 } else { UNALLOCATED };
            b[0x200 + 4 * i..0x204 + 4 * i].copy_from_slice(&entry.to_le_bytes());
        }
        b
    }

    #[test]
    fn dynamic_vdi() {
        let found = probe(&image()).unwrap();
        assert_eq!(found.format, Format::Vdi);
        assert_eq!(found.virtual_size, Some(4 << 20));
        assert_eq!(found.check_declared("vdi"), Ok(()));
    }

    #[test]
    fn parent_uuid_is_a_reference() {
        let mut b = image();
        b[0x4c..0x50].copy_from_slice(&TYPE_DIFF.to_le_bytes());
        b[0x1b8] = 0xab;
        let found = probe(&b).unwrap();
        assert_eq!(found.references[0].kind, ReferenceKind::VdiParent);
        assert!(found.check_declared("vdi").is_err());
    }

    #[test]
    fn bad_block_maps_are_errors() {
        let mut b = image();
        b[0x204..0x208].copy_from_slice(&9u32.to_le_bytes());
        assert!(probe(&b).is_err());
        let mut b = image();
        b[0x204..0x208].copy_from_slice(&0u32.to_le_bytes());
        assert!(probe(&b).is_err());
        let mut b = image();
        b[0x178..0x17c].copy_from_slice(&(2u32 << 20).to_le_bytes());
        assert!(probe(&b).is_err());
    }
}
