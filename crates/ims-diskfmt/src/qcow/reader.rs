//! The qcow v1 [`Disk`]: two-level tables (L1 in memory, L2 tables cached), plain clusters
//! and raw-deflate compressed clusters.

use zerocopy::FromBytes;

use super::header::*;
use crate::disk::{
    Disk, DiskError, DiskInfo, Extent, ExtentKind, OpenOptions, SharedSource, check_range,
};
use crate::qcow2::codec;
use crate::qcow2::tables::{L2Cache, L2Table, read_table};
use crate::qcow2::{Compression, read_exact, read_zero_padded};
use crate::{Format, ReadAt};

fn corrupt(structure: &'static str, offset: u64, reason: impl Into<String>) -> DiskError {
    DiskError::corrupt(Format::Qcow, structure, offset, reason)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mapping {
    Zero,
    Data { host: u64 },
    Compressed { entry: u64 },
}

pub(crate) struct QcowDisk {
    source: SharedSource,
    cluster_bits: u32,
    l2_bits: u32,
    virtual_size: u64,
    file_len: u64,
    l1: Vec<u64>,
    cache: L2Cache,
    lenient: bool,
    id: u64,
}

impl QcowDisk {
    pub(crate) fn open(source: SharedSource, options: &OpenOptions) -> Result<Self, DiskError> {
        let file_len = source.len();
        let mut bytes = [0u8; size_of::<HeaderRaw>()];
        if file_len < bytes.len() as u64 {
            return Err(corrupt(
                "header",
                0,
                format!("image is only {file_len} bytes"),
            ));
        }
        read_exact(&*source, Format::Qcow, "header", 0, &mut bytes)?;
        let raw =
            HeaderRaw::read_from_bytes(&bytes).map_err(|_| corrupt("header", 0, "unreadable"))?;
        if raw.magic != crate::qcow2::header::MAGIC || raw.version.get() != 1 {
            return Err(corrupt("header", 0, "not a qcow version 1 header"));
        }
        if !CLUSTER_BITS.contains(&raw.cluster_bits) || !L2_BITS.contains(&raw.l2_bits) {
            return Err(corrupt(
                "header",
                32,
                format!(
                    "unsupported cluster_bits {} / l2_bits {}",
                    raw.cluster_bits, raw.l2_bits
                ),
            ));
        }
        if raw.backing_file_offset.get() != 0 {
            let name_len = raw.backing_file_size.get().min(MAX_BACKING_NAME);
            let mut name = vec![0u8; name_len as usize];
            let offset = raw.backing_file_offset.get();
            read_zero_padded(&*source, "backing file name", offset, &mut name)?;
            return Err(DiskError::Reference {
                format: Format::Qcow,
                target: format!("backing file {}", String::from_utf8_lossy(&name)),
            });
        }
        match raw.crypt_method.get() {
            0 => {}
            1 => return Err(DiskError::unsupported("qcow encryption (AES-CBC)")),
            other => {
                return Err(corrupt(
                    "header",
                    36,
                    format!("unknown crypt_method {other}"),
                ));
            }
        }
        let size = raw.size.get();
        let cluster_bits = u32::from(raw.cluster_bits);
        let l2_bits = u32::from(raw.l2_bits);
        let span = 1u64 << (cluster_bits + l2_bits);
        let l1_entries = size.div_ceil(span);
        if l1_entries * 8 > MAX_L1_BYTES {
            return Err(DiskError::TooLarge {
                format: Format::Qcow,
                structure: "L1 table",
                value: l1_entries * 8,
                limit: MAX_L1_BYTES,
            });
        }
        let l1_offset = raw.l1_table_offset.get();
        if l1_offset
            .checked_add(l1_entries * 8)
            .is_none_or(|end| end > file_len && !options.lenient)
        {
            return Err(corrupt(
                "L1 table",
                l1_offset,
                "reaches past the end of the image",
            ));
        }
        let l1 = read_qcow_table(&*source, "L1 table", l1_offset, l1_entries, options.lenient)?;
        Ok(QcowDisk {
            source,
            cluster_bits,
            l2_bits,
            virtual_size: size,
            file_len,
            l1,
            cache: L2Cache::new(8 << l2_bits),
            lenient: options.lenient,
            id: codec::next_disk_id(),
        })
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn l2_table(&self, l2: u64) -> Result<Option<L2Table>, DiskError> {
        let entries = 1u64 << self.l2_bits;
        if l2.saturating_add(entries * 8) > self.file_len {
            if self.lenient {
                return Ok(None);
            }
            return Err(corrupt("L2 table", l2, "lies past the end of the image"));
        }
        self.cache
            .get(l2, || {
                Ok(read_qcow_table(&*self.source, "L2 table", l2, entries, false)?.into())
            })
            .map(Some)
    }

    /// The run at `guest`: consecutive clusters with the same kind of mapping (and contiguous
    /// host offsets for data), at most `max_len` bytes.
    fn run(&self, guest: u64, max_len: u64) -> Result<(Mapping, u64), DiskError> {
        let cs = self.cluster_size();
        let max_len = max_len.min(self.virtual_size - guest);
        let entries = 1u64 << self.l2_bits;
        let cluster = guest >> self.cluster_bits;
        let first = cluster % entries;
        let in_cluster = guest & (cs - 1);
        let span = (entries - first) * cs - in_cluster;
        let l2 = self
            .l1
            .get((cluster / entries) as usize)
            .copied()
            .unwrap_or(0);
        if l2 == 0 {
            return Ok((Mapping::Zero, span.min(max_len)));
        }
        let Some(table) = self.l2_table(l2)? else {
            return Ok((Mapping::Zero, span.min(max_len)));
        };
        let decode = |i: u64| -> Result<Mapping, DiskError> {
            let entry = table[i as usize];
            let at = l2 + i * 8;
            if entry & L2_COMPRESSED != 0 {
                let (offset, _) = compressed_range(entry, self.cluster_bits);
                if offset >= self.file_len {
                    return self.past_end(at, offset);
                }
                return Ok(Mapping::Compressed { entry });
            }
            if entry == 0 {
                return Ok(Mapping::Zero);
            }
            if entry >= self.file_len {
                return self.past_end(at, entry);
            }
            Ok(Mapping::Data { host: entry })
        };
        let mapping = match decode(first)? {
            Mapping::Data { host } => Mapping::Data {
                host: host + in_cluster,
            },
            other => other,
        };
        let mut len = cs - in_cluster;
        if let Mapping::Compressed { .. } = mapping {
            return Ok((mapping, len.min(max_len)));
        }
        let mut index = first + 1;
        while len < max_len && index < entries {
            let next = decode(index)?;
            let continues = match (mapping, next) {
                (Mapping::Zero, Mapping::Zero) => true,
                (Mapping::Data { host }, Mapping::Data { host: h }) => h == host + len,
                _ => false,
            };
            if !continues {
                break;
            }
            len += cs;
            index += 1;
        }
        Ok((mapping, len.min(max_len)))
    }

    fn past_end(&self, at: u64, offset: u64) -> Result<Mapping, DiskError> {
        if self.lenient {
            return Ok(Mapping::Zero);
        }
        Err(corrupt(
            "L2 table",
            at,
            format!("cluster at {offset:#x} lies past the end of the image"),
        ))
    }

    fn read_compressed(&self, entry: u64, offset_in: u64, out: &mut [u8]) -> Result<(), DiskError> {
        let (offset, length) = compressed_range(entry, self.cluster_bits);
        let decode = |input: &mut Vec<u8>, cluster: &mut [u8]| {
            input.resize(length.min(self.file_len - offset) as usize, 0);
            read_exact(
                &*self.source,
                Format::Qcow,
                "compressed cluster",
                offset,
                input,
            )?;
            codec::decompress(Compression::Zlib, input, cluster)
                .map_err(|e| corrupt("compressed cluster", offset, e.0))
        };
        codec::copy_from_cluster(
            (self.id, entry),
            self.cluster_size() as usize,
            decode,
            offset_in as usize,
            out,
        )
    }
}

/// Reads a table of big-endian u64s (qcow shares qcow2's encoding).
fn read_qcow_table(
    source: &dyn ReadAt,
    structure: &'static str,
    offset: u64,
    entries: u64,
    lenient: bool,
) -> Result<Vec<u64>, DiskError> {
    read_table(source, structure, offset, entries, lenient).map_err(|e| match e {
        DiskError::Corrupt {
            structure,
            offset,
            reason,
            ..
        } => corrupt(structure, offset, reason),
        other => other,
    })
}

impl Disk for QcowDisk {
    fn format(&self) -> Format {
        Format::Qcow
    }

    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    fn granularity(&self) -> u64 {
        self.cluster_size()
    }

    fn extent(&self, offset: u64, max_len: u64) -> Result<Extent, DiskError> {
        if offset >= self.virtual_size || max_len == 0 {
            return Err(DiskError::OutOfRange {
                offset,
                length: max_len,
                virtual_size: self.virtual_size,
            });
        }
        let max_len = max_len.min(self.virtual_size - offset);
        let kind_of = |m: Mapping| match m {
            Mapping::Zero => ExtentKind::Zero,
            _ => ExtentKind::Data,
        };
        let (first, mut length) = self.run(offset, max_len)?;
        let kind = kind_of(first);
        while length < max_len {
            let (next, len) = self.run(offset + length, max_len - length)?;
            if kind_of(next) != kind {
                break;
            }
            length += len;
        }
        Ok(Extent {
            offset,
            length,
            kind,
        })
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        check_range(self.virtual_size, offset, buf.len())?;
        let mask = self.cluster_size() - 1;
        let mut done = 0usize;
        while done < buf.len() {
            let guest = offset + done as u64;
            let (mapping, len) = self.run(guest, (buf.len() - done) as u64)?;
            let out = &mut buf[done..done + len as usize];
            match mapping {
                Mapping::Zero => out.fill(0),
                Mapping::Data { host } => {
                    read_zero_padded(&*self.source, "data cluster", host, out)?;
                }
                Mapping::Compressed { entry } => self.read_compressed(entry, guest & mask, out)?,
            }
            done += len as usize;
        }
        Ok(())
    }

    fn info(&self) -> DiskInfo {
        DiskInfo {
            cluster_size: Some(self.cluster_size()),
            ..DiskInfo::default()
        }
    }
}
