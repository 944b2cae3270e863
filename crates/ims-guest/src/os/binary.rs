//! Executable headers: the architecture and word size of ELF and PE files.

/// An architecture in the names libguestfs and Glance's `architecture` use.
pub fn elf_arch(head: &[u8]) -> Option<(&'static str, u8)> {
    if head.get(0..4) != Some(b"\x7fELF") || head.len() < 20 {
        return None;
    }
    let bits = match head[4] {
        1 => 32,
        2 => 64,
        _ => return None,
    };
    let machine = match head[5] {
        1 => u16::from_le_bytes([head[18], head[19]]),
        2 => u16::from_be_bytes([head[18], head[19]]),
        _ => return None,
    };
    let arch = match (machine, bits) {
        (3, _) => "i386",
        (0x3e, _) => "x86_64",
        (0xb7, _) => "aarch64",
        (0x28, _) => "armv7l",
        (0xf3, 64) => "riscv64",
        (0x15, 64) => "ppc64le",
        (0x16, _) => "s390x",
        (0x102, _) => "loongarch64",
        _ => return None,
    };
    Some((arch, bits))
}

/// Architecture of a PE (Windows/EFI) executable from its COFF machine field.
pub fn pe_arch(head: &[u8]) -> Option<(&'static str, u8)> {
    if head.get(0..2) != Some(b"MZ") {
        return None;
    }
    let pe = u32::from_le_bytes(head.get(0x3c..0x40)?.try_into().ok()?) as usize;
    if head.get(pe..pe.checked_add(4)?) != Some(b"PE\0\0") {
        return None;
    }
    let machine = u16::from_le_bytes(head.get(pe + 4..pe + 6)?.try_into().ok()?);
    Some(match machine {
        0x014c => ("i386", 32),
        0x8664 => ("x86_64", 64),
        0xaa64 => ("aarch64", 64),
        0x01c4 => ("armv7l", 32),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_and_pe_headers() {
        let mut elf = vec![0u8; 64];
        elf[0..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[18] = 0xb7;
        assert_eq!(elf_arch(&elf), Some(("aarch64", 64)));
        elf[4] = 1;
        elf[18] = 3;
        assert_eq!(elf_arch(&elf), Some(("i386", 32)));
        assert_eq!(elf_arch(&elf[..10]), None);
        let mut pe = vec![0u8; 0x100];
        pe[0..2].copy_from_slice(b"MZ");
        pe[0x3c] = 0x80;
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        pe[0x84..0x86].copy_from_slice(&0x8664u16.to_le_bytes());
        assert_eq!(pe_arch(&pe), Some(("x86_64", 64)));
        pe[0x3c] = 0xff;
        pe[0x3d] = 0xff;
        pe[0x3e] = 0xff;
        pe[0x3f] = 0xff;
        assert_eq!(pe_arch(&pe), None);
    }
}
