//! LVM2 without device-mapper: the PV label and header, the metadata area's text (parsed into a
//! small tree), and linear logical volumes mapped onto their physical volumes.

use std::collections::HashMap;

use crate::error::{GuestError, Result};
use crate::volume::{Volume, le};

/// Largest metadata text read (LVM's default metadata area is 1 MiB).
pub const MAX_METADATA_BYTES: u64 = 4 << 20;
/// Deepest section nesting accepted in metadata text (real metadata nests 5 deep).
pub const MAX_NESTING: usize = 16;
/// Most tokens parsed from one metadata text.
pub const MAX_TOKENS: usize = 1 << 20;
/// Most data/metadata area descriptors read from a PV header.
pub const MAX_AREAS: usize = 16;
/// Most segments mapped for one logical volume.
pub const MAX_SEGMENTS: usize = 4096;

const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";

/// A physical volume found on a partition (or whole disk).
#[derive(Debug, Clone)]
pub struct PhysicalVolume {
    /// PV UUID without dashes.
    pub uuid: String,
    pub volume: Volume,
    /// Metadata text of the volume group, when this PV carries a metadata area.
    pub metadata: Option<String>,
}

/// A logical volume mapped onto bytes.
#[derive(Debug, Clone)]
pub struct LogicalVolume {
    pub vg: String,
    pub name: String,
    pub volume: Volume,
}

/// Reads the PV label (in one of the first four sectors) and the newest metadata text.
pub fn read_pv(vol: &Volume) -> Result<Option<PhysicalVolume>> {
    for sector in 0..4u64 {
        let at = sector * 512;
        if at + 512 > vol.len() {
            break;
        }
        let label = vol.read_vec(at, 512, "LVM label")?;
        if &label[0..8] != b"LABELONE" || &label[24..32] != b"LVM2 001" {
            continue;
        }
        let hdr_at = at + u64::from(le::u32(&label, 20));
        let hdr_len = vol.len().saturating_sub(hdr_at).min(512) as usize;
        let hdr = vol.read_vec(hdr_at, hdr_len, "LVM PV header")?;
        let uuid = String::from_utf8_lossy(&hdr[0..32]).into_owned();
        // Disk areas: data areas, a zero pair, metadata areas, a zero pair.
        let mut pos = 40usize;
        let mut lists: [Vec<(u64, u64)>; 2] = [Vec::new(), Vec::new()];
        for list in lists.iter_mut() {
            loop {
                if list.len() > MAX_AREAS || pos + 16 > hdr.len() {
                    return Err(GuestError::invalid(
                        "LVM PV header",
                        hdr_at,
                        "area list not terminated",
                    ));
                }
                let (off, size) = (le::u64(&hdr, pos), le::u64(&hdr, pos + 8));
                pos += 16;
                if off == 0 && size == 0 {
                    break;
                }
                list.push((off, size));
            }
        }
        let mut metadata = None;
        for &(off, size) in &lists[1] {
            if let Some(text) = read_metadata_area(vol, off, size)? {
                metadata = Some(text);
                break;
            }
        }
        return Ok(Some(PhysicalVolume {
            uuid,
            volume: vol.clone(),
            metadata,
        }));
    }
    Ok(None)
}

fn read_metadata_area(vol: &Volume, off: u64, size: u64) -> Result<Option<String>> {
    let h = vol.read_vec(off, 512, "LVM metadata area header")?;
    if &h[4..20] != MDA_MAGIC {
        return Err(GuestError::invalid(
            "LVM metadata area header",
            off,
            "bad magic",
        ));
    }
    // First raw location descriptor: the committed metadata.
    let (text_off, text_size) = (le::u64(&h, 40), le::u64(&h, 48));
    if text_size == 0 {
        return Ok(None);
    }
    if text_size > MAX_METADATA_BYTES || text_off >= size || text_size > size {
        return Err(GuestError::invalid(
            "LVM raw location",
            off + 40,
            format!("{text_size} bytes at {text_off} in a {size} byte area"),
        ));
    }
    // The area is a ring after its 512-byte header: text may wrap to its start.
    let overflow = || GuestError::invalid("LVM raw location", off + 40, "offset overflows");
    let first = text_size.min(size - text_off);
    let text_at = off.checked_add(text_off).ok_or_else(overflow)?;
    let mut text = vol.read_vec(text_at, first as usize, "LVM metadata text")?;
    if first < text_size {
        let ring_at = off.checked_add(512).ok_or_else(overflow)?;
        let rest = vol.read_vec(ring_at, (text_size - first) as usize, "LVM metadata text")?;
        text.extend_from_slice(&rest);
    }
    while text.last() == Some(&0) {
        text.pop();
    }
    Ok(Some(String::from_utf8_lossy(&text).into_owned()))
}

/// A value in LVM metadata text.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Str(String),
    List(Vec<Value>),
    Section(Vec<(String, Value)>),
}

impl Value {
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Section(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn sections(&self) -> impl Iterator<Item = (&str, &Value)> {
        let items: &[(String, Value)] = match self {
            Value::Section(items) => items,
            _ => &[],
        };
        items
            .iter()
            .filter(|(_, v)| matches!(v, Value::Section(_)))
            .map(|(k, v)| (k.as_str(), v))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Int(i64),
    Sym(u8),
}

fn tokenize(text: &str) -> Result<Vec<Token>> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |i: usize, r: &str| GuestError::invalid("LVM metadata text", i as u64, r);
    while i < b.len() {
        if out.len() > MAX_TOKENS {
            return Err(GuestError::LimitExceeded {
                what: "LVM metadata tokens",
                limit: MAX_TOKENS as u64,
            });
        }
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'{' | b'}' | b'[' | b']' | b'=' | b',' => {
                out.push(Token::Sym(c));
                i += 1;
            }
            b'"' => {
                let mut s = Vec::new();
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err(err(i, "unterminated string")),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            s.push(*b.get(i + 1).ok_or_else(|| err(i, "dangling escape"))?);
                            i += 2;
                        }
                        Some(&ch) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                i += 1;
                out.push(Token::Str(String::from_utf8_lossy(&s).into_owned()));
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                let s = &text[start..i];
                out.push(Token::Int(
                    s.parse().map_err(|_| err(start, "bad integer"))?,
                ));
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b'.' => {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'_' | b'.' | b'-' | b'+'))
                {
                    i += 1;
                }
                out.push(Token::Ident(text[start..i].to_string()));
            }
            _ => return Err(err(i, "unexpected character")),
        }
    }
    Ok(out)
}

/// Parses LVM metadata text into a root section.
pub fn parse_metadata(text: &str) -> Result<Value> {
    let tokens = tokenize(text)?;
    let mut pos = 0;
    let items = parse_items(&tokens, &mut pos, 0)?;
    Ok(Value::Section(items))
}

fn parse_items(t: &[Token], pos: &mut usize, depth: usize) -> Result<Vec<(String, Value)>> {
    if depth > MAX_NESTING {
        return Err(GuestError::LimitExceeded {
            what: "LVM metadata nesting",
            limit: MAX_NESTING as u64,
        });
    }
    let err = |p: usize, r: &str| GuestError::invalid("LVM metadata text", p as u64, r);
    let mut items = Vec::new();
    while let Some(tok) = t.get(*pos) {
        match tok {
            Token::Sym(b'}') => break,
            Token::Ident(key) => {
                *pos += 1;
                match t.get(*pos) {
                    Some(Token::Sym(b'{')) => {
                        *pos += 1;
                        let inner = parse_items(t, pos, depth + 1)?;
                        if t.get(*pos) != Some(&Token::Sym(b'}')) {
                            return Err(err(*pos, "section not closed"));
                        }
                        *pos += 1;
                        items.push((key.clone(), Value::Section(inner)));
                    }
                    Some(Token::Sym(b'=')) => {
                        *pos += 1;
                        let v = parse_value(t, pos)?;
                        items.push((key.clone(), v));
                    }
                    _ => return Err(err(*pos, "expected '{' or '='")),
                }
            }
            _ => return Err(err(*pos, "expected a key")),
        }
    }
    Ok(items)
}

fn parse_value(t: &[Token], pos: &mut usize) -> Result<Value> {
    let err = |p: usize, r: &str| GuestError::invalid("LVM metadata text", p as u64, r);
    let v = match t.get(*pos) {
        Some(Token::Int(i)) => Value::Int(*i),
        Some(Token::Str(s)) => Value::Str(s.clone()),
        Some(Token::Sym(b'[')) => {
            *pos += 1;
            let mut list = Vec::new();
            loop {
                match t.get(*pos) {
                    Some(Token::Sym(b']')) => break,
                    Some(Token::Sym(b',')) => *pos += 1,
                    Some(Token::Int(i)) => {
                        list.push(Value::Int(*i));
                        *pos += 1;
                    }
                    Some(Token::Str(s)) => {
                        list.push(Value::Str(s.clone()));
                        *pos += 1;
                    }
                    _ => return Err(err(*pos, "bad list")),
                }
            }
            Value::List(list)
        }
        _ => return Err(err(*pos, "expected a value")),
    };
    *pos += 1;
    Ok(v)
}

/// Maps every linear (single-stripe) LV of every VG described by `pvs`' metadata.
/// LVs with other segment types, or on PVs not found, are skipped.
pub fn map_logical_volumes(pvs: &[PhysicalVolume]) -> Result<Vec<LogicalVolume>> {
    let by_uuid: HashMap<String, &PhysicalVolume> =
        pvs.iter().map(|p| (p.uuid.replace('-', ""), p)).collect();
    let mut seen_vgs = Vec::new();
    let mut out = Vec::new();
    for pv in pvs {
        let Some(text) = &pv.metadata else { continue };
        let root = parse_metadata(text)?;
        for (vg_name, vg) in root.sections() {
            if seen_vgs.iter().any(|v: &String| v == vg_name) {
                continue;
            }
            seen_vgs.push(vg_name.to_string());
            out.extend(map_vg(vg_name, vg, &by_uuid)?);
        }
    }
    Ok(out)
}

fn map_vg(
    vg_name: &str,
    vg: &Value,
    by_uuid: &HashMap<String, &PhysicalVolume>,
) -> Result<Vec<LogicalVolume>> {
    let bad = |r: String| GuestError::invalid("LVM volume group metadata", 0, r);
    let extent_bytes = vg
        .int("extent_size")
        .and_then(|s| u64::try_from(s).ok())
        .and_then(|s| s.checked_mul(512))
        .filter(|&b| b > 0)
        .ok_or_else(|| bad(format!("{vg_name}: extent_size")))?;
    // pv name ("pv0") -> (volume, pe_start in bytes)
    let mut pv_map: HashMap<&str, (&Volume, u64)> = HashMap::new();
    if let Some(pvs) = vg.get("physical_volumes") {
        for (name, pv) in pvs.sections() {
            let Some(id) = pv.str("id") else { continue };
            let Some(found) = by_uuid.get(&id.replace('-', "")) else {
                continue;
            };
            let pe_start = pv
                .int("pe_start")
                .and_then(|s| u64::try_from(s).ok())
                .and_then(|s| s.checked_mul(512))
                .ok_or_else(|| bad(format!("{name}: pe_start")))?;
            pv_map.insert(name, (&found.volume, pe_start));
        }
    }
    let mut out = Vec::new();
    let Some(lvs) = vg.get("logical_volumes") else {
        return Ok(out);
    };
    'lv: for (lv_name, lv) in lvs.sections() {
        let mut segments: Vec<(u64, &Value)> = Vec::new();
        for (_, seg) in lv.sections() {
            let start = seg.int("start_extent").and_then(|s| u64::try_from(s).ok());
            let Some(start) = start else { continue 'lv };
            segments.push((start, seg));
            if segments.len() > MAX_SEGMENTS {
                return Err(GuestError::LimitExceeded {
                    what: "LVM segments per logical volume",
                    limit: MAX_SEGMENTS as u64,
                });
            }
        }
        segments.sort_by_key(|(s, _)| *s);
        let mut pieces: Vec<(Volume, u64, u64)> = Vec::new();
        let mut next_extent = 0u64;
        for (start, seg) in segments {
            let count = seg.int("extent_count").and_then(|c| u64::try_from(c).ok());
            let linear = seg.str("type") == Some("striped") && seg.int("stripe_count") == Some(1);
            let stripes = match seg.get("stripes") {
                Some(Value::List(l)) => l.as_slice(),
                _ => &[],
            };
            let (Some(count), true, [Value::Str(pv), Value::Int(pe)]) = (count, linear, stripes)
            else {
                continue 'lv;
            };
            if start != next_extent {
                continue 'lv;
            }
            let Some(&(vol, pe_start)) = pv_map.get(pv.as_str()) else {
                continue 'lv;
            };
            let pe = u64::try_from(*pe).map_err(|_| bad(format!("{lv_name}: negative PE")))?;
            let off = pe
                .checked_mul(extent_bytes)
                .and_then(|o| o.checked_add(pe_start));
            let len = count.checked_mul(extent_bytes);
            let (Some(off), Some(len)) = (off, len) else {
                return Err(bad(format!("{lv_name}: segment overflows")));
            };
            pieces.push((vol.clone(), off, len));
            next_extent = start.saturating_add(count);
        }
        if pieces.is_empty() {
            continue;
        }
        // All pieces on one PV can be one concatenated volume; several PVs are left for later.
        let first = pieces[0].0.clone();
        if pieces.iter().any(|(v, _, _)| v.len() != first.len()) && pieces.len() > 1 {
            continue;
        }
        let ranges: Vec<(u64, u64)> = pieces.iter().map(|(_, o, l)| (*o, *l)).collect();
        out.push(LogicalVolume {
            vg: vg_name.to_string(),
            name: lv_name.to_string(),
            volume: first.concat(&ranges, "LVM logical volume")?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const META: &str = r#"centos {
id = "abc"
seqno = 3
extent_size = 8    # 4 KiB
physical_volumes {
pv0 {
id = "AAAAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAAAA"
pe_start = 16
pe_count = 10
}
}
logical_volumes {
root {
segment_count = 2
segment1 {
start_extent = 0
extent_count = 1
type = "striped"
stripe_count = 1
stripes = [
"pv0", 2
]
}
segment2 {
start_extent = 1
extent_count = 1
type = "striped"
stripe_count = 1
stripes = ["pv0", 0]
}
}
thin {
segment1 {
start_extent = 0
extent_count = 1
type = "thin"
}
}
}
}
"#;

    #[test]
    fn parses_metadata_and_maps_linear_segments() {
        let root = parse_metadata(META).unwrap();
        let vg = root.get("centos").unwrap();
        assert_eq!(vg.int("extent_size"), Some(8));
        let mut disk = vec![0u8; 16 * 512 + 10 * 4096];
        disk[16 * 512 + 2 * 4096] = 0xaa;
        disk[16 * 512] = 0xbb;
        let pv = PhysicalVolume {
            uuid: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
            volume: Volume::whole(Arc::new(disk)),
            metadata: Some(META.into()),
        };
        let lvs = map_logical_volumes(&[pv]).unwrap();
        assert_eq!(lvs.len(), 1, "the thin LV is skipped");
        assert_eq!(lvs[0].name, "root");
        assert_eq!(lvs[0].volume.len(), 8192);
        assert_eq!(lvs[0].volume.read_vec(0, 1, "t").unwrap(), vec![0xaa]);
        assert_eq!(lvs[0].volume.read_vec(4096, 1, "t").unwrap(), vec![0xbb]);
    }

    #[test]
    fn hostile_metadata_is_an_error_not_a_panic() {
        for bad in ["a {", "a = [", "a = \"x", "{{{", "a = [1, {]", "\u{1}"] {
            assert!(parse_metadata(bad).is_err(), "{bad:?}");
        }
        let deep = "a {".repeat(100) + &"}".repeat(100);
        assert!(parse_metadata(&deep).is_err());
    }
}
