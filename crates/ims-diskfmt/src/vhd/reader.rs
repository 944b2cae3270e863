//! VHD reader: the footer at the end is authoritative; dynamic disks map blocks through the BAT,
//! which is loaded once and validated (every allocated block inside the file, no overlaps with
//! metadata) before the first read.

use super::header::{DYNAMIC_HEADER_LEN, FOOTER_LEN, NO_DATA_OFFSET, SECTOR, UNALLOCATED};
use super::parser::{DiskType, Dynamic, Footer, dynamic_checksum, parse_dynamic, parse_footer};
use crate::Format;
use crate::disk::{
    CheckReport, Disk, DiskError, DiskInfo, Extent, ExtentKind, OpenOptions, SharedSource,
    check_range, read_exact_at, read_vec_at,
};
use crate::probe::source::utf16_name;

/// A BAT is read into memory: 64 MiB = 16 Mi entries = 32 TiB of 2 MiB blocks, far above VHD's
/// 2040 GiB maximum.
const MAX_BAT_BYTES: u64 = 64 << 20;

const FORMAT: Format = Format::Vhd;

pub(crate) struct VhdDisk {
    source: SharedSource,
    footer: Footer,
    layout: Layout,
}

enum Layout {
    /// Data at 0..virtual_size, footer after it.
    Fixed,
    Dynamic {
        dynamic: Dynamic,
        /// Per block: file offset of the block's data (after its bitmap), or `None`.
        blocks: Vec<Option<u64>>,
        header_checksum_ok: bool,
    },
}

impl VhdDisk {
    pub(crate) fn open(source: SharedSource, options: &OpenOptions) -> Result<VhdDisk, DiskError> {
        let len = source.len();
        if len < FOOTER_LEN {
            return Err(DiskError::corrupt(
                FORMAT,
                "footer",
                0,
                format!("a {len}-byte file cannot hold a 512-byte footer"),
            ));
        }
        let end = len - FOOTER_LEN;
        let mut bytes = [0u8; FOOTER_LEN as usize];
        read_exact_at(source.as_ref(), FORMAT, "footer", end, &mut bytes)?;
        let footer = match parse_footer(&bytes, end) {
            Ok(footer) => footer,
            // A dynamic disk whose trailing footer is damaged still has the copy at 0.
            Err(at_end) => {
                read_exact_at(source.as_ref(), FORMAT, "footer copy", 0, &mut bytes)?;
                match parse_footer(&bytes, 0) {
                    Ok(copy) if copy.disk_type != DiskType::Fixed => copy,
                    _ => return Err(at_end.into()),
                }
            }
        };
        let layout = match footer.disk_type {
            DiskType::Fixed => {
                if footer.virtual_size > end && !options.lenient {
                    return Err(DiskError::corrupt(
                        FORMAT,
                        "footer",
                        end,
                        format!(
                            "fixed disk of {} bytes does not fit in front of the footer",
                            footer.virtual_size
                        ),
                    ));
                }
                Layout::Fixed
            }
            DiskType::Differencing => {
                let offset = footer.raw.data_offset.get();
                let bytes = read_vec_at(
                    source.as_ref(),
                    FORMAT,
                    "dynamic header",
                    offset,
                    DYNAMIC_HEADER_LEN,
                )?;
                let (raw, _) = parse_dynamic(&bytes, offset, footer.virtual_size)?;
                let name = utf16_name(&raw.parent_unicode_name, true);
                return Err(DiskError::Reference {
                    format: FORMAT,
                    target: if name.is_empty() {
                        "differencing disk, parent not named".into()
                    } else {
                        format!("differencing disk, parent {name}")
                    },
                });
            }
            DiskType::Dynamic => dynamic_layout(&source, &footer, options)?,
        };
        Ok(VhdDisk {
            source,
            footer,
            layout,
        })
    }

    fn block_size(&self) -> Option<u64> {
        match &self.layout {
            Layout::Fixed => None,
            Layout::Dynamic { dynamic, .. } => Some(u64::from(dynamic.block_size)),
        }
    }
}

fn dynamic_layout(
    source: &SharedSource,
    footer: &Footer,
    options: &OpenOptions,
) -> Result<Layout, DiskError> {
    let len = source.len();
    let offset = footer.raw.data_offset.get();
    if offset == NO_DATA_OFFSET {
        return Err(DiskError::corrupt(
            FORMAT,
            "footer",
            16,
            "dynamic disk without a dynamic header offset",
        ));
    }
    let bytes = read_vec_at(
        source.as_ref(),
        FORMAT,
        "dynamic header",
        offset,
        DYNAMIC_HEADER_LEN,
    )?;
    let (_, dynamic) = parse_dynamic(&bytes, offset, footer.virtual_size)?;
    let header_checksum_ok = u32::from_be_bytes([bytes[36], bytes[37], bytes[38], bytes[39]])
        == dynamic_checksum(&bytes);
    let bat_len = u64::from(dynamic.entries) * 4;
    if bat_len > MAX_BAT_BYTES {
        return Err(DiskError::too_large(
            FORMAT,
            "block allocation table",
            bat_len,
            MAX_BAT_BYTES,
        ));
    }
    if dynamic
        .table_offset
        .checked_add(bat_len)
        .is_none_or(|end| end > len)
    {
        return Err(DiskError::corrupt(
            FORMAT,
            "block allocation table",
            dynamic.table_offset,
            format!("{bat_len} bytes do not fit in the {len}-byte image"),
        ));
    }
    let bat = read_vec_at(
        source.as_ref(),
        FORMAT,
        "block allocation table",
        dynamic.table_offset,
        bat_len,
    )?;
    let block_size = u64::from(dynamic.block_size);
    let mut blocks = Vec::with_capacity(dynamic.entries as usize);
    for (index, entry) in bat.chunks_exact(4).enumerate() {
        let sector = u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]);
        if sector == UNALLOCATED {
            blocks.push(None);
            continue;
        }
        let bitmap = u64::from(sector) * SECTOR;
        let data = bitmap + dynamic.bitmap_len;
        let entry_at = dynamic.table_offset + index as u64 * 4;
        let bad = if data + block_size > len {
            Some(format!(
                "block {index} at sector {sector} ends past the end of the image"
            ))
        } else if [
            (0, FOOTER_LEN),
            (offset, 1024),
            (dynamic.table_offset, bat_len),
        ]
        .iter()
        .any(|&(start, n)| bitmap < start + n && start < data + block_size)
        {
            Some(format!(
                "block {index} at sector {sector} overlaps the headers or the BAT"
            ))
        } else {
            None
        };
        match bad {
            Some(reason) if !options.lenient => {
                return Err(DiskError::corrupt(
                    FORMAT,
                    "block allocation table",
                    entry_at,
                    reason,
                ));
            }
            // qemu reads what it can: zeros where the block lies past the end.
            _ => blocks.push(Some(data)),
        }
    }
    Ok(Layout::Dynamic {
        dynamic,
        blocks,
        header_checksum_ok,
    })
}

impl Disk for VhdDisk {
    fn format(&self) -> Format {
        FORMAT
    }

    fn virtual_size(&self) -> u64 {
        self.footer.virtual_size
    }

    fn granularity(&self) -> u64 {
        self.block_size().unwrap_or(2 << 20)
    }

    fn extent(&self, offset: u64, max_len: u64) -> Result<Extent, DiskError> {
        let size = self.footer.virtual_size;
        let length = max_len.min(size.saturating_sub(offset));
        let Layout::Dynamic {
            dynamic, blocks, ..
        } = &self.layout
        else {
            return Ok(Extent {
                offset,
                length,
                kind: ExtentKind::Data,
            });
        };
        let block_size = u64::from(dynamic.block_size);
        let kind_of = |block: u64| match blocks.get(block as usize) {
            Some(Some(_)) => ExtentKind::Data,
            _ => ExtentKind::Zero,
        };
        let kind = kind_of(offset / block_size);
        let mut end = (offset / block_size + 1) * block_size;
        while end < offset + length && kind_of(end / block_size) == kind {
            end += block_size;
        }
        Ok(Extent {
            offset,
            length: (end - offset).min(length),
            kind,
        })
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        check_range(self.footer.virtual_size, offset, buf.len())?;
        let Layout::Dynamic {
            dynamic, blocks, ..
        } = &self.layout
        else {
            return self.read_file(offset, buf, "fixed disk data");
        };
        let block_size = u64::from(dynamic.block_size);
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let within = at % block_size;
            let n = ((block_size - within) as usize).min(buf.len() - done);
            let chunk = &mut buf[done..done + n];
            match blocks.get((at / block_size) as usize).copied().flatten() {
                Some(data) => self.read_file(data + within, chunk, "block data")?,
                None => chunk.fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn info(&self) -> DiskInfo {
        DiskInfo {
            cluster_size: self.block_size(),
            subformat: Some(self.footer.disk_type.as_str().into()),
            ..DiskInfo::default()
        }
    }

    fn check(&self) -> Result<CheckReport, DiskError> {
        let mut report = CheckReport::default();
        let Layout::Dynamic {
            dynamic,
            blocks,
            header_checksum_ok,
        } = &self.layout
        else {
            report.image_end_offset = Some(self.source.len());
            return Ok(report);
        };
        if !header_checksum_ok {
            report.messages.push(format!(
                "dynamic header at offset {}: checksum does not match (qemu ignores it)",
                self.footer.raw.data_offset.get()
            ));
        }
        let block_size = u64::from(dynamic.block_size);
        let span = dynamic.bitmap_len + block_size;
        let mut allocated: Vec<(u64, usize)> = blocks
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.map(|data| (data - dynamic.bitmap_len, i)))
            .collect();
        allocated.sort_unstable();
        for pair in allocated.windows(2) {
            if pair[0].0 + span > pair[1].0 {
                report.corruptions += 1;
                report.messages.push(format!(
                    "blocks {} and {} overlap at file offset {}",
                    pair[0].1, pair[1].1, pair[1].0
                ));
            }
        }
        let len = self.source.len();
        for &(start, index) in &allocated {
            if start + span > len {
                report.corruptions += 1;
                report.messages.push(format!(
                    "block {index} at file offset {start} ends past the end of the image"
                ));
            }
        }
        let end = allocated
            .last()
            .map_or(dynamic.table_offset, |b| b.0 + span);
        report.allocated_clusters = Some(allocated.len() as u64);
        report.total_clusters = Some(self.footer.virtual_size.div_ceil(block_size));
        report.image_end_offset = Some(end + FOOTER_LEN);
        Ok(report)
    }
}

impl VhdDisk {
    /// Reads `buf` at file `offset`; in lenient mode bytes past the end read as zeros.
    fn read_file(
        &self,
        offset: u64,
        buf: &mut [u8],
        structure: &'static str,
    ) -> Result<(), DiskError> {
        let len = self.source.len();
        let available = len.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (data, tail) = buf.split_at_mut(available);
        read_exact_at(self.source.as_ref(), FORMAT, structure, offset, data)?;
        tail.fill(0);
        Ok(())
    }
}
