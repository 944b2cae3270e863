//! GUID partition table detection and Glance's `mbr` check of the protective MBR.

use super::source::Source;
use super::{Detection, Probe};
use crate::Format;

const MBR_LEN: u64 = 512;
const BOOT_SIGNATURE: [u8; 2] = [0x55, 0xAA];
const PARTITION_TABLE: usize = 446;
const PARTITION_ENTRY_LEN: usize = 16;
const PROTECTIVE_TYPE: u8 = 0xEE;
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
/// The GPT header is at LBA 1: byte 512 with 512-byte sectors, 4096 with 4 KiB sectors.
const GPT_HEADER_OFFSETS: [u64; 2] = [512, 4096];

/// `true` when sector 0 ends with the 0x55AA boot signature.
pub(crate) fn has_mbr_signature(src: &Source) -> Result<bool, super::ProbeError> {
    Ok(src
        .read_if_present("mbr", 0, MBR_LEN)?
        .is_some_and(|mbr| mbr[510..512] == BOOT_SIGNATURE))
}

pub(crate) fn detect(src: &Source) -> Detection {
    let Some(mbr) = src.read_if_present("mbr", 0, MBR_LEN)? else {
        return Ok(None);
    };
    if mbr[510..512] != BOOT_SIGNATURE {
        return Ok(None);
    }
    let entries: Vec<&[u8]> = mbr[PARTITION_TABLE..PARTITION_TABLE + 4 * PARTITION_ENTRY_LEN]
        .chunks_exact(PARTITION_ENTRY_LEN)
        .collect();
    if !entries.iter().any(|e| e[4] == PROTECTIVE_TYPE) {
        return Ok(None);
    }
    let mut has_gpt_header = false;
    for offset in GPT_HEADER_OFFSETS {
        if let Some(sig) = src.read_if_present("gpt header", offset, 8)? {
            has_gpt_header |= sig == GPT_SIGNATURE;
        }
    }
    if !has_gpt_header {
        return Ok(None);
    }
    let mut found = Probe::new(Format::Gpt);
    check_mbr(&entries, &mut found);
    Ok(Some(found))
}

/// oslo.utils' `mbr` check: boot flags 0x00/0x80; a protective entry is the only entry, starts
/// at CHS 0/2/0 and LBA 1.
fn check_mbr(entries: &[&[u8]], found: &mut Probe) {
    for (i, e) in entries.iter().enumerate() {
        if e[0] != 0x00 && e[0] != 0x80 {
            found.fail(
                "mbr",
                format_args!("partition {} has boot flag {:#04x}", i + 1, e[0]),
            );
        }
    }
    let used = entries.iter().filter(|e| e[4] != 0).count();
    for e in entries.iter().filter(|e| e[4] == PROTECTIVE_TYPE) {
        let start_lba = u32::from_le_bytes([e[8], e[9], e[10], e[11]]);
        if used != 1 || e[1..4] != [0x00, 0x02, 0x00] || start_lba != 1 {
            found.fail(
                "mbr",
                "protective MBR entry is not the only partition or does not start at LBA 1",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::probe;

    fn image() -> Vec<u8> {
        let mut b = vec![0u8; 8192];
        // entry 1: protective, CHS 0/2/0, type 0xEE, LBA 1
        b[446..462].copy_from_slice(&[
            0, 0, 2, 0, 0xEE, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0xff, 0x3f, 0, 0,
        ]);
        b[510..512].copy_from_slice(&BOOT_SIGNATURE);
        b[512..520].copy_from_slice(GPT_SIGNATURE);
        b
    }

    #[test]
    fn gpt_disk_is_raw_declarable() {
        let found = probe(&image()).unwrap();
        assert_eq!(found.format, Format::Gpt);
        assert_eq!(found.check_declared("raw"), Ok(()));
    }

    #[test]
    fn bad_protective_mbr_fails_the_mbr_check() {
        let mut b = image();
        b[462 + 4] = 0x83; // a second partition next to the protective one
        b[462] = 0x12; // with a bad boot flag
        let found = probe(&b).unwrap();
        assert_eq!(found.safety_failures.len(), 2);
        assert!(found.check_declared("raw").is_err());
        assert_eq!(found.check_declared("aki"), Ok(()));
    }

    #[test]
    fn plain_mbr_is_raw() {
        let mut b = vec![0u8; 1024];
        b[510..512].copy_from_slice(&BOOT_SIGNATURE);
        let found = probe(&b).unwrap();
        assert_eq!(found.format, Format::Raw);
        assert_eq!(found.subformat.as_deref(), Some("mbr"));
    }
}
