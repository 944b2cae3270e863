//! qcow version 1 header inspection (shares qcow2's magic; version field 1).

use super::source::{Source, lossy_name};
use super::{Detection, FileReference, Probe, ProbeError, ReferenceKind};
use crate::Format;

use crate::qcow::header::{CLUSTER_BITS, HeaderRaw, L2_BITS, MAX_BACKING_NAME, MAX_L1_BYTES};

fn invalid(structure: &'static str, offset: u64, reason: impl Into<String>) -> ProbeError {
    ProbeError::invalid(Format::Qcow, structure, offset, reason)
}

pub(crate) fn detect(src: &Source) -> Detection {
    let Some(head) = src.read_if_present("qcow magic and version", 0, 8)? else {
        return Ok(None);
    };
    if head[..4] != super::qcow2::MAGIC || head[4..8] != 1u32.to_be_bytes() {
        return Ok(None);
    }
    let raw: HeaderRaw = src.read_struct("qcow header", 0)?;
    if !CLUSTER_BITS.contains(&raw.cluster_bits) || !L2_BITS.contains(&raw.l2_bits) {
        return Err(invalid(
            "header",
            32,
            format!(
                "unsupported cluster_bits {} / l2_bits {}",
                raw.cluster_bits, raw.l2_bits
            ),
        ));
    }
    let crypt_method = raw.crypt_method.get();
    if crypt_method > 1 {
        return Err(invalid(
            "header",
            36,
            format!("unknown crypt_method {crypt_method}"),
        ));
    }
    let size = raw.size.get();
    if size <= 1 {
        return Err(invalid(
            "header",
            24,
            format!("virtual size {size} is too small"),
        ));
    }
    let bytes_per_l1_entry = 1u64 << (u32::from(raw.cluster_bits) + u32::from(raw.l2_bits));
    let l1_bytes = size.div_ceil(bytes_per_l1_entry) * 8;
    if l1_bytes > MAX_L1_BYTES {
        return Err(invalid(
            "L1 table",
            40,
            format!("{l1_bytes} bytes exceed {MAX_L1_BYTES}"),
        ));
    }
    let l1_offset = raw.l1_table_offset.get();
    if l1_offset
        .checked_add(l1_bytes)
        .is_none_or(|end| end > src.len())
    {
        return Err(ProbeError::Truncated {
            structure: "qcow L1 table",
            offset: l1_offset,
            length: l1_bytes,
            image_len: src.len(),
        });
    }

    let mut found = Probe::new(Format::Qcow);
    found.virtual_size = Some(size);
    found.encrypted = crypt_method != 0;
    let backing_offset = raw.backing_file_offset.get();
    if backing_offset != 0 {
        let name_len = raw.backing_file_size.get();
        if name_len > MAX_BACKING_NAME {
            return Err(invalid(
                "backing file name",
                16,
                format!("backing_file_size {name_len} exceeds {MAX_BACKING_NAME}"),
            ));
        }
        let name = src.read(
            "qcow backing file name",
            backing_offset,
            u64::from(name_len),
        )?;
        found.references.push(FileReference::new(
            ReferenceKind::BackingFile,
            lossy_name(&name),
        ));
    }
    Ok(Some(found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::probe;

    /// 4 KiB clusters, 512-entry L2 tables, 1 MiB disk, L1 (1 entry) right after the header.
    fn image() -> Vec<u8> {
        let mut b = vec![0u8; 8192];
        b[0..4].copy_from_slice(b"QFI\xfb");
        b[4..8].copy_from_slice(&1u32.to_be_bytes()); // version 1
        b[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes()); // size
        b[32] = 12; // cluster_bits
        b[33] = 9; // l2_bits
        b[40..48].copy_from_slice(&48u64.to_be_bytes()); // l1_table_offset
        b
    }

    #[test]
    fn version_1_header() {
        let found = probe(&image()).unwrap();
        assert_eq!(found.format, Format::Qcow);
        assert_eq!(found.virtual_size, Some(1 << 20));
        assert_eq!(found.check_declared("qcow"), Ok(()));
    }

    #[test]
    fn backing_file_is_reported() {
        let mut b = image();
        b[8..16].copy_from_slice(&1024u64.to_be_bytes());
        b[16..20].copy_from_slice(&4u32.to_be_bytes());
        b[1024..1028].copy_from_slice(b"base");
        let found = probe(&b).unwrap();
        assert_eq!(found.references[0].target, "base");
        assert!(found.check_declared("qcow").is_err());
    }

    #[test]
    fn bad_geometry_is_an_error() {
        let mut b = image();
        b[32] = 30;
        assert_eq!(probe(&b).unwrap_err().format(), Some(Format::Qcow));
    }
}
