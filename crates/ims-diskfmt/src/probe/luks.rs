//! LUKS container detection (a LUKS header at offset 0).

use super::source::Source;
use super::{Detection, Probe};
use crate::Format;

const MAGIC: [u8; 6] = *b"LUKS\xba\xbe";
/// Glance accepts LUKS version 1 only.
const SUPPORTED_VERSION: u16 = 1;

pub(crate) fn detect(src: &Source) -> Detection {
    let Some(head) = src.read_if_present("luks header", 0, 8)? else {
        return Ok(None);
    };
    if head[..6] != MAGIC {
        return Ok(None);
    }
    let version = u16::from_be_bytes([head[6], head[7]]);
    let mut found = Probe::new(Format::Luks);
    found.encrypted = true;
    found.subformat = Some(format!("luks{version}"));
    if version != SUPPORTED_VERSION {
        found.fail(
            "version",
            format_args!("LUKS version {version} is not supported"),
        );
    }
    Ok(Some(found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::probe;

    #[test]
    fn luks_versions() {
        let mut b = b"LUKS\xba\xbe\x00\x01".to_vec();
        b.resize(4096, 0);
        let found = probe(&b).unwrap();
        assert_eq!(found.format, Format::Luks);
        assert!(found.encrypted && found.safety_failures.is_empty());
        b[7] = 2;
        assert!(probe(&b).unwrap().check_declared("luks").is_err());
        assert!(probe(&b).unwrap().check_declared("raw").is_err());
    }
}
