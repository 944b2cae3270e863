//! ISO 9660 / UDF detection: volume descriptors from 32 KiB on (qemu reads these as raw).

use super::source::Source;
use super::{Detection, Probe};
use crate::Format;

/// Volume descriptors start at sector 16 of 2048 bytes; oslo.utils checks the first three.
const DESCRIPTOR_OFFSETS: [u64; 3] = [0x8000, 0x8800, 0x9000];
const DESCRIPTOR_LEN: u64 = 2048;
const ISO_IDENTIFIER: &[u8; 5] = b"CD001";
/// UDF's volume structure descriptors in the same area.
const UDF_IDENTIFIERS: [&[u8; 5]; 2] = [b"NSR02", b"NSR03"];
const TYPE_PRIMARY: u8 = 1;

pub(crate) fn detect(src: &Source) -> Detection {
    let mut matched = false;
    let mut size = None;
    for offset in DESCRIPTOR_OFFSETS {
        let Some(d) = src.read_if_present("iso volume descriptor", offset, DESCRIPTOR_LEN)? else {
            break;
        };
        let id: &[u8] = &d[1..6];
        if id == ISO_IDENTIFIER {
            matched = true;
            if d[0] == TYPE_PRIMARY && size.is_none() {
                // Both-endian fields: volume space size at 80 (LE), logical block size at 128 (LE).
                let blocks = u32::from_le_bytes([d[80], d[81], d[82], d[83]]);
                let block_size = u16::from_le_bytes([d[128], d[129]]);
                size = Some(u64::from(blocks) * u64::from(block_size));
            }
        } else if UDF_IDENTIFIERS.iter().any(|u| id == &u[..]) {
            matched = true;
        }
    }
    if !matched {
        return Ok(None);
    }
    let mut found = Probe::new(Format::Iso);
    found.virtual_size = size;
    Ok(Some(found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::probe;

    #[test]
    fn primary_volume_descriptor_gives_the_size() {
        let mut b = vec![0u8; 22 * 2048];
        b[0x8000] = TYPE_PRIMARY;
        b[0x8001..0x8006].copy_from_slice(b"CD001");
        b[0x8006] = 1;
        b[0x8000 + 80..0x8000 + 84].copy_from_slice(&22u32.to_le_bytes());
        b[0x8000 + 128..0x8000 + 130].copy_from_slice(&2048u16.to_le_bytes());
        let found = probe(&b).unwrap();
        assert_eq!(found.format, Format::Iso);
        assert_eq!(found.virtual_size, Some(22 * 2048));
        assert_eq!(found.check_declared("iso"), Ok(()));
        assert_eq!(found.check_declared("raw"), Ok(()));
    }

    #[test]
    fn iso_with_a_qcow2_header_is_ambiguous() {
        let mut b = crate::probe::qcow2::tests::image();
        b.resize(0x9000, 0);
        b[0x8001..0x8006].copy_from_slice(b"CD001");
        assert!(probe(&b).unwrap_err().is_ambiguous());
    }
}
