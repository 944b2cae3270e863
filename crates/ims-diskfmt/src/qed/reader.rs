//! The QED [`Disk`]: L1 in memory, L2 tables cached, entry 1 meaning a zero cluster.

use zerocopy::FromBytes;

use super::header::*;
use crate::Format;
use crate::disk::{
    CheckReport, Disk, DiskError, DiskInfo, Extent, ExtentKind, OpenOptions, SharedSource,
    check_range,
};
use crate::qcow2::tables::{L2Cache, L2Table};
use crate::qcow2::{read_exact, read_zero_padded};

fn corrupt(structure: &'static str, offset: u64, reason: impl Into<String>) -> DiskError {
    DiskError::corrupt(Format::Qed, structure, offset, reason)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mapping {
    Zero,
    Data { host: u64 },
}

pub(crate) struct QedDisk {
    pub(super) source: SharedSource,
    pub(super) cluster_size: u64,
    pub(super) table_size: u64,
    pub(super) header_bytes: u64,
    pub(super) virtual_size: u64,
    /// The file length rounded down to a cluster, as qemu validates offsets against it.
    pub(super) file_clusters_end: u64,
    pub(super) l1_offset: u64,
    pub(super) l1: Vec<u64>,
    cache: L2Cache,
    lenient: bool,
    /// The NEED_CHECK feature bit: the image was not closed cleanly.
    need_check: bool,
}

impl QedDisk {
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
        read_exact(&*source, Format::Qed, "header", 0, &mut bytes)?;
        let raw =
            HeaderRaw::read_from_bytes(&bytes).map_err(|_| corrupt("header", 0, "unreadable"))?;
        if raw.magic != MAGIC {
            return Err(corrupt("header", 0, "missing the QED magic"));
        }
        let features = raw.features.get();
        if features & !FEATURES_KNOWN != 0 {
            return Err(DiskError::unsupported(format!(
                "QED feature bits {:#x}",
                features & !FEATURES_KNOWN
            )));
        }
        let cluster_size = raw.cluster_size.get();
        if !cluster_size.is_power_of_two()
            || !(MIN_CLUSTER_SIZE..=MAX_CLUSTER_SIZE).contains(&cluster_size)
        {
            return Err(corrupt(
                "header",
                4,
                format!("invalid cluster size {cluster_size}"),
            ));
        }
        let table_size = raw.table_size.get();
        if !table_size.is_power_of_two() || !(MIN_TABLE_SIZE..=MAX_TABLE_SIZE).contains(&table_size)
        {
            return Err(corrupt(
                "header",
                8,
                format!("table size {table_size} (qemu opens 2..=16 clusters, a power of 2)"),
            ));
        }
        let cluster_size = u64::from(cluster_size);
        let table_size = u64::from(table_size);
        let virtual_size = raw.image_size.get();
        if !virtual_size.is_multiple_of(512)
            || max_image_size(cluster_size, table_size).is_none_or(|max| virtual_size > max)
        {
            return Err(corrupt(
                "header",
                48,
                format!("image size {virtual_size} is unaligned or too large for the tables"),
            ));
        }
        let header_bytes = u64::from(raw.header_size.get()) * cluster_size;
        if header_bytes == 0 || header_bytes > u64::from(u32::MAX) {
            return Err(corrupt("header", 12, "invalid header size"));
        }
        if features & FEATURE_BACKING_FILE != 0 {
            let offset = u64::from(raw.backing_filename_offset.get());
            let len = raw.backing_filename_size.get().min(MAX_BACKING_NAME);
            let mut name = vec![0u8; len as usize];
            read_zero_padded(&*source, "backing file name", offset, &mut name)?;
            return Err(DiskError::Reference {
                format: Format::Qed,
                target: format!("backing file {}", String::from_utf8_lossy(&name)),
            });
        }
        let mut disk = QedDisk {
            source,
            cluster_size,
            table_size,
            header_bytes,
            virtual_size,
            file_clusters_end: file_len / cluster_size * cluster_size,
            l1_offset: raw.l1_table_offset.get(),
            l1: Vec::new(),
            cache: L2Cache::new(table_size * cluster_size),
            lenient: options.lenient,
            need_check: features & FEATURE_NEED_CHECK != 0,
        };
        if !disk.table_offset_valid(disk.l1_offset) {
            return Err(corrupt(
                "L1 table",
                disk.l1_offset,
                "offset is unaligned, inside the header or past the end of the image",
            ));
        }
        disk.l1 = disk.read_table("L1 table", disk.l1_offset)?;
        Ok(disk)
    }

    pub(super) fn entries_per_table(&self) -> u64 {
        self.table_size * self.cluster_size / 8
    }

    /// qemu's `qed_check_cluster_offset`: aligned, after the header, inside the file.
    pub(super) fn cluster_offset_valid(&self, offset: u64) -> bool {
        offset.is_multiple_of(self.cluster_size)
            && offset >= self.header_bytes
            && offset < self.file_clusters_end
    }

    /// qemu's `qed_check_table_offset`: first and last cluster of the table valid.
    pub(super) fn table_offset_valid(&self, offset: u64) -> bool {
        offset
            .checked_add((self.table_size - 1) * self.cluster_size)
            .is_some_and(|last| {
                last > offset
                    && self.cluster_offset_valid(offset)
                    && self.cluster_offset_valid(last)
            })
    }

    pub(super) fn read_table(
        &self,
        structure: &'static str,
        offset: u64,
    ) -> Result<Vec<u64>, DiskError> {
        let mut bytes = vec![0u8; (self.table_size * self.cluster_size) as usize];
        read_zero_padded(&*self.source, structure, offset, &mut bytes)?;
        Ok(bytes
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
            .collect())
    }

    fn l2_table(&self, index: u64, l2: u64) -> Result<Option<L2Table>, DiskError> {
        if !self.table_offset_valid(l2) {
            if self.lenient {
                return Ok(None);
            }
            return Err(corrupt(
                "L1 table",
                self.l1_offset + index * 8,
                format!("entry {index} points at an invalid L2 table offset {l2:#x}"),
            ));
        }
        self.cache
            .get(l2, || Ok(self.read_table("L2 table", l2)?.into()))
            .map(Some)
    }

    fn run(&self, guest: u64, max_len: u64) -> Result<(Mapping, u64), DiskError> {
        let cs = self.cluster_size;
        let max_len = max_len.min(self.virtual_size - guest);
        let entries = self.entries_per_table();
        let cluster = guest / cs;
        let l1_index = cluster / entries;
        let first = cluster % entries;
        let in_cluster = guest % cs;
        let span = (entries - first) * cs - in_cluster;
        let l2 = self.l1.get(l1_index as usize).copied().unwrap_or(0);
        if l2 == 0 {
            return Ok((Mapping::Zero, span.min(max_len)));
        }
        let Some(table) = self.l2_table(l1_index, l2)? else {
            return Ok((Mapping::Zero, span.min(max_len)));
        };
        let decode = |i: u64| -> Result<Mapping, DiskError> {
            let entry = table[i as usize];
            if entry == 0 || entry == ZERO_CLUSTER {
                return Ok(Mapping::Zero);
            }
            if !self.cluster_offset_valid(entry) {
                if self.lenient {
                    return Ok(Mapping::Zero);
                }
                return Err(corrupt(
                    "L2 table",
                    l2 + i * 8,
                    format!("invalid data cluster offset {entry:#x}"),
                ));
            }
            Ok(Mapping::Data { host: entry })
        };
        let mapping = match decode(first)? {
            Mapping::Data { host } => Mapping::Data {
                host: host + in_cluster,
            },
            Mapping::Zero => Mapping::Zero,
        };
        let mut len = cs - in_cluster;
        let mut index = first + 1;
        while len < max_len && index < entries {
            let continues = match (mapping, decode(index)?) {
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
}

impl Disk for QedDisk {
    fn format(&self) -> Format {
        Format::Qed
    }

    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    fn granularity(&self) -> u64 {
        self.cluster_size
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
        let (first, mut length) = self.run(offset, max_len)?;
        let zero = first == Mapping::Zero;
        while length < max_len {
            let (next, len) = self.run(offset + length, max_len - length)?;
            if (next == Mapping::Zero) != zero {
                break;
            }
            length += len;
        }
        Ok(Extent {
            offset,
            length,
            kind: if zero {
                ExtentKind::Zero
            } else {
                ExtentKind::Data
            },
        })
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        check_range(self.virtual_size, offset, buf.len())?;
        let mut done = 0usize;
        while done < buf.len() {
            let (mapping, len) = self.run(offset + done as u64, (buf.len() - done) as u64)?;
            let out = &mut buf[done..done + len as usize];
            match mapping {
                Mapping::Zero => out.fill(0),
                Mapping::Data { host } => {
                    read_zero_padded(&*self.source, "data cluster", host, out)?;
                }
            }
            done += len as usize;
        }
        Ok(())
    }

    fn info(&self) -> DiskInfo {
        DiskInfo {
            cluster_size: Some(self.cluster_size),
            dirty: self.need_check,
            ..DiskInfo::default()
        }
    }

    fn check(&self) -> Result<CheckReport, DiskError> {
        super::check::check(self)
    }
}
