//! The qcow2 [`Disk`]: guest reads through the active L1/L2 tables, coalescing contiguous host
//! clusters into one read and decoding compressed clusters into a per-thread buffer.

use super::codec;
use super::header::*;
use super::parser::{self, Snapshot};
use super::tables::{Mapper, Mapping};
use crate::disk::{
    CheckReport, Disk, DiskError, DiskInfo, Extent, ExtentKind, OpenOptions, SharedSource,
    check_range,
};
use crate::{Format, ReadAt};

pub(crate) struct Qcow2Disk {
    source: SharedSource,
    pub(super) mapper: Mapper,
    snapshots: Vec<Snapshot>,
    id: u64,
}

impl Qcow2Disk {
    pub(crate) fn open(source: SharedSource, options: &OpenOptions) -> Result<Self, DiskError> {
        let header = parser::parse(&*source, options.lenient)?;
        let snapshots = parser::read_snapshots(&*source, &header)?;
        let mapper = Mapper::new(&*source, header, options.lenient)?;
        Ok(Qcow2Disk {
            source,
            mapper,
            snapshots,
            id: codec::next_disk_id(),
        })
    }

    pub(super) fn source(&self) -> &dyn ReadAt {
        &*self.source
    }

    pub(super) fn snapshots(&self) -> &[Snapshot] {
        &self.snapshots
    }

    fn read_data(&self, host: u64, out: &mut [u8]) -> Result<(), DiskError> {
        // The last cluster of an image may be shorter than a cluster: the rest reads as zeros.
        super::read_zero_padded(&*self.source, "data cluster", host, out)?;
        Ok(())
    }

    /// Copies bytes `offset_in..` of the compressed cluster `entry` into `out`.
    fn read_compressed(&self, entry: u64, offset_in: u64, out: &mut [u8]) -> Result<(), DiskError> {
        let h = &self.mapper.header;
        let decode = |input: &mut Vec<u8>, cluster: &mut [u8]| {
            let descriptor = CompressedDescriptor::decode(entry, h.cluster_bits);
            let length = descriptor
                .length
                .min(h.file_len.saturating_sub(descriptor.offset));
            input.resize(length as usize, 0);
            super::read_exact(
                &*self.source,
                Format::Qcow2,
                "compressed cluster",
                descriptor.offset,
                input,
            )?;
            codec::decompress(h.compression, input, cluster).map_err(|e| {
                DiskError::corrupt(Format::Qcow2, "compressed cluster", descriptor.offset, e.0)
            })
        };
        codec::copy_from_cluster(
            (self.id, entry),
            h.cluster_size as usize,
            decode,
            offset_in as usize,
            out,
        )
    }
}

impl Disk for Qcow2Disk {
    fn format(&self) -> Format {
        Format::Qcow2
    }

    fn virtual_size(&self) -> u64 {
        self.mapper.header.virtual_size
    }

    fn granularity(&self) -> u64 {
        self.mapper.header.cluster_size
    }

    fn extent(&self, offset: u64, max_len: u64) -> Result<Extent, DiskError> {
        let size = self.virtual_size();
        if offset >= size || max_len == 0 {
            return Err(DiskError::OutOfRange {
                offset,
                length: max_len,
                virtual_size: size,
            });
        }
        let max_len = max_len.min(size - offset);
        let first = self.mapper.run(&*self.source, offset, max_len)?;
        let kind = kind_of(first.mapping);
        let mut length = first.len;
        while length < max_len {
            let next = self
                .mapper
                .run(&*self.source, offset + length, max_len - length)?;
            if kind_of(next.mapping) != kind {
                break;
            }
            length += next.len;
        }
        Ok(Extent {
            offset,
            length,
            kind,
        })
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        check_range(self.virtual_size(), offset, buf.len())?;
        let cluster_mask = self.mapper.header.cluster_size - 1;
        let mut done = 0usize;
        while done < buf.len() {
            let guest = offset + done as u64;
            let run = self
                .mapper
                .run(&*self.source, guest, (buf.len() - done) as u64)?;
            let out = &mut buf[done..done + run.len as usize];
            match run.mapping {
                Mapping::Zero => out.fill(0),
                Mapping::Data { host } => self.read_data(host, out)?,
                Mapping::Compressed { entry } => {
                    self.read_compressed(entry, guest & cluster_mask, out)?
                }
            }
            done += run.len as usize;
        }
        Ok(())
    }

    fn info(&self) -> DiskInfo {
        let h = &self.mapper.header;
        let v3 = h.version >= 3;
        let mut details = vec![
            (
                "compat".to_string(),
                if v3 { "1.1" } else { "0.10" }.to_string(),
            ),
            (
                "compression-type".to_string(),
                h.compression.as_str().to_string(),
            ),
        ];
        if v3 {
            details.push(("lazy-refcounts".into(), h.lazy_refcounts().to_string()));
        }
        details.push((
            "refcount-bits".into(),
            (1u32 << h.refcount_order).to_string(),
        ));
        if v3 {
            details.push((
                "corrupt".into(),
                (h.incompatible & INCOMPAT_CORRUPT != 0).to_string(),
            ));
            details.push(("extended-l2".into(), h.extended_l2.to_string()));
        }
        DiskInfo {
            cluster_size: Some(h.cluster_size),
            subformat: Some(if v3 { "1.1" } else { "0.10" }.to_string()),
            dirty: h.incompatible & INCOMPAT_DIRTY != 0,
            encrypted: false,
            details,
            snapshots: self
                .snapshots
                .iter()
                .map(|s| (s.id.clone(), s.name.clone(), s.disk_size))
                .collect(),
        }
    }

    fn check(&self) -> Result<CheckReport, DiskError> {
        super::check::check(self)
    }
}

fn kind_of(mapping: Mapping) -> ExtentKind {
    match mapping {
        Mapping::Zero => ExtentKind::Zero,
        _ => ExtentKind::Data,
    }
}
