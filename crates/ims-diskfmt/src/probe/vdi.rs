//! VDI (VirtualBox) header inspection: geometry qemu supports, block map placement and
//! entries, and the parent UUIDs of differencing images.

use super::source::Source;
use super::{Detection, FileReference, Probe, ProbeError, ReferenceKind};
use crate::Format;
use crate::vdi::header::{
    DISCARDED, HeaderRaw, SIGNATURE, SIGNATURE_OFFSET, TYPE_DIFF, TYPE_DYNAMIC, TYPE_STATIC,
    TYPE_UNDO, UNALLOCATED, uuid_text,
};

fn invalid(structure: &'static str, offset: u64, reason: impl Into<String>) -> ProbeError {
    ProbeError::invalid(Format::Vdi, structure, offset, reason)
}

pub(crate) fn detect(src: &Source) -> Detection {
    let Some(sig) = src.read_if_present("vdi signature", SIGNATURE_OFFSET, 4)? else {
        return Ok(None);
    };
    if sig != SIGNATURE.to_le_bytes() {
        return Ok(None);
    }
    let raw: HeaderRaw = src.read_struct("vdi header", 0)?;
    raw.check(src.len()).map_err(|p| {
        let structure = if p.field_offset == 0x154 {
            "block map"
        } else {
            "header"
        };
        invalid(structure, p.field_offset, p.reason)
    })?;
    let blocks = raw.blocks_in_image.get();
    if raw.blocks_allocated.get() > blocks {
        return Err(invalid(
            "header",
            0x184,
            "more blocks allocated than the image has",
        ));
    }
    let image_type = raw.image_type.get();
    let disk_size = raw.disk_size.get();
    let bmap_offset = u64::from(raw.offset_bmap.get());
    check_block_map(src, bmap_offset, blocks)?;

    let mut found = Probe::new(Format::Vdi);
    found.virtual_size = Some(disk_size);
    found.subformat = Some(
        match image_type {
            TYPE_DYNAMIC => "dynamic",
            TYPE_STATIC => "static",
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
    use crate::vdi::header::{BLOCK_SIZE, VERSION_1_1};

    /// qemu layout: header, block map at 0x200 (4 blocks, block 0 allocated), data at 0x400.
    fn image() -> Vec<u8> {
        let mut b = vec![0u8; 0x400 + (1 << 20)];
        b[0..35].copy_from_slice(b"<<< QEMU VM Virtual Disk Image >>>\n");
        b[0x40..0x44].copy_from_slice(&SIGNATURE.to_le_bytes());
        b[0x44..0x48].copy_from_slice(&VERSION_1_1.to_le_bytes());
        b[0x48..0x4c].copy_from_slice(&0x180u32.to_le_bytes()); // header size
        b[0x4c..0x50].copy_from_slice(&TYPE_DYNAMIC.to_le_bytes());
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
