//! QED header inspection. QED is banned for uploads (like Glance), but still identified.

use super::source::{Source, lossy_name};
use super::{Detection, FileReference, Probe, ProbeError, ReferenceKind};
use crate::Format;

use crate::qed::header::{
    FEATURE_BACKING_FILE, FEATURES_KNOWN, HeaderRaw, MAGIC, MAX_BACKING_NAME, MAX_CLUSTER_SIZE,
    MAX_TABLE_SIZE, MIN_CLUSTER_SIZE, max_image_size,
};

fn invalid(structure: &'static str, offset: u64, reason: impl Into<String>) -> ProbeError {
    ProbeError::invalid(Format::Qed, structure, offset, reason)
}

pub(crate) fn detect(src: &Source) -> Detection {
    let Some(magic) = src.read_if_present("qed magic", 0, 4)? else {
        return Ok(None);
    };
    if magic != MAGIC {
        return Ok(None);
    }
    let raw: HeaderRaw = src.read_struct("qed header", 0)?;
    let cluster_size = raw.cluster_size.get();
    if !cluster_size.is_power_of_two()
        || !(MIN_CLUSTER_SIZE..=MAX_CLUSTER_SIZE).contains(&cluster_size)
    {
        return Err(invalid(
            "header",
            4,
            format!("invalid cluster size {cluster_size}"),
        ));
    }
    let table_size = raw.table_size.get();
    if !table_size.is_power_of_two() || table_size > MAX_TABLE_SIZE {
        return Err(invalid(
            "header",
            8,
            format!("invalid table size {table_size}"),
        ));
    }
    let features = raw.features.get();
    if features & !FEATURES_KNOWN != 0 {
        return Err(invalid(
            "header",
            16,
            format!("unknown feature bits {features:#x}"),
        ));
    }
    let cluster_size = u64::from(cluster_size);
    let table_bytes = u64::from(table_size) * cluster_size;
    let max_image_size = max_image_size(cluster_size, u64::from(table_size));
    let image_size = raw.image_size.get();
    if !image_size.is_multiple_of(512) || max_image_size.is_some_and(|max| image_size > max) {
        return Err(invalid(
            "header",
            48,
            format!("image size {image_size} is unaligned or too large for the tables"),
        ));
    }
    let header_bytes = u64::from(raw.header_size.get())
        .checked_mul(cluster_size)
        .filter(|&b| b > 0)
        .ok_or_else(|| invalid("header", 12, "invalid header size"))?;
    let l1_offset = raw.l1_table_offset.get();
    let l1_fits = l1_offset
        .checked_add(table_bytes)
        .is_some_and(|end| end <= src.len());
    if !l1_offset.is_multiple_of(cluster_size) || l1_offset < header_bytes || !l1_fits {
        return Err(invalid(
            "L1 table",
            l1_offset,
            "table offset is unaligned, inside the header or past the end of the image",
        ));
    }

    let mut found = Probe::new(Format::Qed);
    found.virtual_size = Some(image_size);
    found.fail("qed", "QED images are not accepted");
    if features & FEATURE_BACKING_FILE != 0 {
        let name_offset = u64::from(raw.backing_filename_offset.get());
        let name_len = raw.backing_filename_size.get();
        if name_len > MAX_BACKING_NAME || name_offset + u64::from(name_len) > header_bytes {
            return Err(invalid(
                "backing file name",
                name_offset,
                format!("{name_len}-byte name is too long or outside the header"),
            ));
        }
        let name = src.read("qed backing file name", name_offset, u64::from(name_len))?;
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

    /// 64 KiB clusters, 4-cluster tables, header 1 cluster, L1 at 64 KiB, 1 MiB disk.
    fn image() -> Vec<u8> {
        let mut b = vec![0u8; 5 << 16];
        b[0..4].copy_from_slice(b"QED\0");
        b[4..8].copy_from_slice(&65536u32.to_le_bytes()); // cluster_size
        b[8..12].copy_from_slice(&4u32.to_le_bytes()); // table_size
        b[12..16].copy_from_slice(&1u32.to_le_bytes()); // header_size
        b[40..48].copy_from_slice(&65536u64.to_le_bytes()); // l1_table_offset
        b[48..56].copy_from_slice(&(1u64 << 20).to_le_bytes()); // image_size
        b
    }

    #[test]
    fn qed_is_identified_and_banned() {
        let found = probe(&image()).unwrap();
        assert_eq!(found.format, Format::Qed);
        assert_eq!(found.virtual_size, Some(1 << 20));
        assert!(found.check_declared("qed").is_err());
    }

    #[test]
    fn backing_file_is_reported() {
        let mut b = image();
        b[16..24].copy_from_slice(&FEATURE_BACKING_FILE.to_le_bytes());
        b[56..60].copy_from_slice(&64u32.to_le_bytes());
        b[60..64].copy_from_slice(&11u32.to_le_bytes());
        b[64..75].copy_from_slice(b"/etc/passwd");
        let found = probe(&b).unwrap();
        assert_eq!(found.references[0].target, "/etc/passwd");
    }

    #[test]
    fn bad_geometry_is_an_error() {
        let mut b = image();
        b[4..8].copy_from_slice(&3000u32.to_le_bytes());
        assert!(probe(&b).is_err());
        let mut b = image();
        b[8..12].copy_from_slice(&64u32.to_le_bytes());
        assert!(probe(&b).is_err());
    }
}
