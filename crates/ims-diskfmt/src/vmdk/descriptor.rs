//! The VMDK descriptor: hostile text (`key=value` lines, quoted values, extent lines, CRLF,
//! NUL padding) parsed into a bounded model. Nothing here opens the files it names.

/// Glance and qemu read at most 1 MiB of descriptor text.
pub(crate) const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;
/// Bounds the work on hostile descriptors (a real one has a handful of extents).
pub(crate) const MAX_EXTENTS: usize = 4096;
/// Longest line kept verbatim in a report; longer lines are cut (they are never valid).
const MAX_REPORTED_LINE: usize = 80;
/// qemu reads extent file names into a 512-byte buffer.
pub(crate) const MAX_EXTENT_NAME: usize = 511;

/// One extent line: `ACCESS SECTORS TYPE "FILE" [OFFSET]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExtentLine {
    pub access: String,
    pub sectors: u64,
    pub kind: String,
    pub file: String,
}

/// What a descriptor says, as far as readers and the probe care.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Descriptor {
    pub create_type: Option<String>,
    pub cid: Option<u32>,
    pub parent_cid: Option<u32>,
    pub parent_hint: Option<String>,
    pub extents: Vec<ExtentLine>,
    /// Lines that are neither comments, `key=value` nor extent lines (cut to 80 characters).
    pub bad_lines: Vec<String>,
}

/// Why a descriptor is refused outright.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DescriptorError {
    TooManyExtents,
}

impl std::fmt::Display for DescriptorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DescriptorError::TooManyExtents => write!(f, "more than {MAX_EXTENTS} extent lines"),
        }
    }
}

fn unquote(value: &str) -> &str {
    let value = value.trim();
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

/// A CID as qemu reads it (`%x`: up to 8 hex digits, no padding required).
fn parse_cid(value: &str) -> Option<u32> {
    u32::from_str_radix(unquote(value), 16).ok()
}

fn cut(line: &str) -> String {
    line.chars().take(MAX_REPORTED_LINE).collect()
}

impl Descriptor {
    /// Parses descriptor text up to the first NUL (at most [`MAX_DESCRIPTOR_BYTES`] are
    /// looked at). Lines end in LF or CRLF; invalid UTF-8 is replaced.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Descriptor, DescriptorError> {
        let bytes = &bytes[..bytes.len().min(MAX_DESCRIPTOR_BYTES as usize)];
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let text = String::from_utf8_lossy(&bytes[..end]);
        let mut descriptor = Descriptor::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if ["RW ", "RDONLY ", "NOACCESS "]
                .iter()
                .any(|a| line.starts_with(a))
            {
                if descriptor.extents.len() >= MAX_EXTENTS {
                    return Err(DescriptorError::TooManyExtents);
                }
                match parse_extent(line) {
                    Some(extent) => descriptor.extents.push(extent),
                    None => descriptor.bad_lines.push(cut(line)),
                }
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                descriptor.bad_lines.push(cut(line));
                continue;
            };
            match key.trim() {
                "createType" => descriptor.create_type = Some(unquote(value).to_owned()),
                "parentFileNameHint" => descriptor.parent_hint = Some(unquote(value).to_owned()),
                "CID" => descriptor.cid = parse_cid(value),
                "parentCID" => descriptor.parent_cid = parse_cid(value),
                _ => {}
            }
        }
        Ok(descriptor)
    }

    /// Disk size as qemu computes it from extents: RW extents that are not ZERO.
    pub(crate) fn extents_size(&self) -> Option<u64> {
        self.extents
            .iter()
            .filter(|e| e.access == "RW" && e.kind != "ZERO")
            .try_fold(0u64, |sum, e| sum.checked_add(e.sectors.checked_mul(512)?))
    }

    /// The first file this descriptor would make a reader open: an extent, else the parent.
    pub(crate) fn first_reference(&self) -> Option<&str> {
        self.extents
            .iter()
            .map(|e| e.file.as_str())
            .chain(self.parent_hint.as_deref())
            .next()
    }
}

fn parse_extent(line: &str) -> Option<ExtentLine> {
    let (access, rest) = line.split_once(' ')?;
    let rest = rest.trim_start();
    let (sectors, rest) = rest.split_once(' ')?;
    let rest = rest.trim_start();
    let (kind, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let rest = rest.trim_start();
    let file = match rest.strip_prefix('"') {
        Some(quoted) => quoted.split_once('"')?.0,
        None => rest.split(' ').next().unwrap_or(""),
    };
    if file.len() > MAX_EXTENT_NAME {
        return None;
    }
    Some(ExtentLine {
        access: access.to_owned(),
        sectors: sectors.parse().ok()?,
        kind: kind.to_owned(),
        file: file.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_descriptor_with_crlf_and_nul_padding() {
        let text = b"# Disk DescriptorFile\r\nversion=1\r\nCID=bf0ef6af\r\nparentCID=ffffffff\r\n\
            createType=\"monolithicSparse\"\r\n\r\nRW 131072 SPARSE \"a b.vmdk\"\r\n\
            ddb.adapterType = \"ide\"\r\n\0\0garbage after NUL";
        let d = Descriptor::parse(text).unwrap();
        assert_eq!(d.create_type.as_deref(), Some("monolithicSparse"));
        assert_eq!(d.cid, Some(0xbf0e_f6af));
        assert_eq!(d.parent_cid, Some(0xffff_ffff));
        assert_eq!(
            d.extents,
            vec![ExtentLine {
                access: "RW".into(),
                sectors: 131072,
                kind: "SPARSE".into(),
                file: "a b.vmdk".into()
            }]
        );
        assert_eq!(d.bad_lines, Vec::<String>::new());
        assert_eq!(d.extents_size(), Some(64 << 20));
    }

    #[test]
    fn short_cids_and_hostile_lines() {
        let long_name = "x".repeat(600);
        let text = format!(
            "CID=7abc\nparentCID=zz\nRW 99999999999999999999 FLAT \"f\" 0\n\
             RW 8 FLAT \"{long_name}\" 0\nnonsense\nparentFileNameHint=\"../p.vmdk\"\n"
        );
        let d = Descriptor::parse(text.as_bytes()).unwrap();
        assert_eq!(d.cid, Some(0x7abc));
        assert_eq!(d.parent_cid, None);
        assert!(d.extents.is_empty());
        assert_eq!(d.bad_lines.len(), 3);
        assert!(d.bad_lines.iter().all(|l| l.len() <= MAX_REPORTED_LINE));
        assert_eq!(d.first_reference(), Some("../p.vmdk"));
    }

    #[test]
    fn extent_count_is_bounded() {
        let text = "RW 1 ZERO\n".repeat(MAX_EXTENTS + 1);
        assert_eq!(
            Descriptor::parse(text.as_bytes()),
            Err(DescriptorError::TooManyExtents)
        );
    }
}
