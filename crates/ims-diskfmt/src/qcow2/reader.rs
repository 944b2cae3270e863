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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::disk::DiskErrorKind;

    const CS: usize = 0x10000;

    fn put(b: &mut [u8], at: usize, bytes: &[u8]) {
        b[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// A v3 image with 64 KiB clusters and a 256 KiB disk, laid out by hand:
    /// cluster 0 header, 1 L1 table, 2 L2 table, 3 data (0xAA), 4 a compressed cluster (0x55).
    /// Guest cluster 0 = data, 1 = zero flag, 2 = compressed, 3 = unallocated.
    fn image() -> Vec<u8> {
        let mut b = vec![0u8; 5 * CS];
        put(&mut b, 0, &MAGIC);
        put(&mut b, 4, &3u32.to_be_bytes()); // version
        put(&mut b, 20, &16u32.to_be_bytes()); // cluster_bits
        put(&mut b, 24, &0x40000u64.to_be_bytes()); // size: 4 clusters
        put(&mut b, 36, &1u32.to_be_bytes()); // l1_size
        put(&mut b, 40, &0x10000u64.to_be_bytes()); // l1_table_offset
        put(&mut b, 48, &0x50000u64.to_be_bytes()); // refcount_table_offset
        put(&mut b, 56, &1u32.to_be_bytes()); // refcount_table_clusters
        put(&mut b, 96, &4u32.to_be_bytes()); // refcount_order: 16 bits
        put(&mut b, 100, &112u32.to_be_bytes()); // header_length
        put(&mut b, 0x10000, &(0x20000 | ENTRY_COPIED).to_be_bytes()); // L1[0]
        put(&mut b, 0x20000, &(0x30000 | ENTRY_COPIED).to_be_bytes()); // L2[0]: data
        put(&mut b, 0x20008, &L2_ZERO.to_be_bytes()); // L2[1]: zero flag
        let packed = codec::compress(super::super::Compression::Zlib, &[0x55; CS], CS).unwrap();
        put(&mut b, 0x40000, &packed);
        let entry = CompressedDescriptor::encode(0x40000, packed.len() as u64, 16).unwrap();
        put(&mut b, 0x20010, &entry.to_be_bytes()); // L2[2]: compressed
        b[0x30000..0x40000].fill(0xAA);
        b
    }

    fn open_bytes(b: Vec<u8>, lenient: bool) -> Result<Qcow2Disk, DiskError> {
        Qcow2Disk::open(Arc::new(b), &OpenOptions { lenient })
    }

    #[test]
    fn hand_made_image_reads_data_zero_and_compressed_clusters() {
        let disk = open_bytes(image(), false).unwrap();
        let mut all = vec![1u8; 4 * CS];
        disk.read_at(0, &mut all).unwrap();
        assert!(all[..CS].iter().all(|&b| b == 0xAA));
        assert!(all[CS..2 * CS].iter().all(|&b| b == 0));
        assert!(all[2 * CS..3 * CS].iter().all(|&b| b == 0x55));
        assert!(all[3 * CS..].iter().all(|&b| b == 0));
        let kinds: Vec<_> = (0..4)
            .map(|c| disk.extent(c * CS as u64, CS as u64).unwrap().kind)
            .collect();
        use ExtentKind::{Data, Zero};
        assert_eq!(kinds, [Data, Zero, Data, Zero]);
        // Zero and unallocated clusters merge only with their own kind.
        assert_eq!(
            disk.extent(CS as u64, 3 * CS as u64).unwrap().length,
            CS as u64
        );
        // A read inside the compressed cluster.
        let mut piece = [0u8; 3];
        disk.read_at(2 * CS as u64 + 100, &mut piece).unwrap();
        assert_eq!(piece, [0x55; 3]);
        let info = disk.info();
        assert_eq!(info.subformat.as_deref(), Some("1.1"));
        assert!(
            info.details
                .contains(&("refcount-bits".into(), "16".into()))
        );
    }

    #[test]
    fn references_encryption_and_unknown_bits_are_refused() {
        let mut b = image();
        put(&mut b, 8, &0x200u64.to_be_bytes()); // backing_file_offset
        put(&mut b, 16, &4u32.to_be_bytes()); // backing_file_size
        put(&mut b, 0x200, b"base");
        let err = open_bytes(b, false).err().unwrap();
        assert_eq!(err.kind(), DiskErrorKind::Reference);
        assert!(err.to_string().contains("base"));

        let mut b = image();
        put(&mut b, 32, &2u32.to_be_bytes()); // crypt_method LUKS
        let err = open_bytes(b, false).err().unwrap();
        assert_eq!(err.kind(), DiskErrorKind::Unsupported);
        assert!(err.to_string().contains("LUKS"));

        let mut b = image();
        put(&mut b, 72, &(1u64 << 40).to_be_bytes()); // unknown incompatible bit
        assert_eq!(
            open_bytes(b, false).err().unwrap().kind(),
            DiskErrorKind::Unsupported
        );
    }

    #[test]
    fn corrupt_mappings_name_the_table_and_offset() {
        let mut b = image();
        put(&mut b, 0x20000, &(0x30200 | ENTRY_COPIED).to_be_bytes()); // unaligned data
        let disk = open_bytes(b, false).unwrap();
        let err = disk.read_at(0, &mut [0u8; 16]).unwrap_err();
        assert!(
            matches!(
                err,
                DiskError::Corrupt {
                    structure: "L2 table",
                    offset: 0x20000,
                    ..
                }
            ),
            "{err}"
        );

        let mut b = image();
        put(&mut b, 40, &(1u64 << 40).to_be_bytes()); // L1 past the end
        assert_eq!(
            open_bytes(b.clone(), false).err().unwrap().kind(),
            DiskErrorKind::Corrupt
        );
        // qemu's behaviour on request: the missing metadata reads as zeros.
        let disk = open_bytes(b, true).unwrap();
        let mut buf = [1u8; 16];
        disk.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, [0; 16]);

        let mut b = image();
        b[0x40000..0x40010].fill(0xFF); // garbage compressed stream
        let disk = open_bytes(b, false).unwrap();
        let err = disk.read_at(2 * CS as u64, &mut [0u8; 16]).unwrap_err();
        assert_eq!(err.kind(), DiskErrorKind::Corrupt);
    }

    #[test]
    fn extended_l2_subclusters_map_separately() {
        let mut b = image();
        put(&mut b, 72, &INCOMPAT_EXTENDED_L2.to_be_bytes());
        b[0x20000..0x30000].fill(0);
        // Entry 0 (16 bytes): host cluster 3; subclusters 0..15 allocated, 16..31 zero.
        put(&mut b, 0x20000, &(0x30000 | ENTRY_COPIED).to_be_bytes());
        put(&mut b, 0x20008, &0xFFFF_0000_0000_FFFFu64.to_be_bytes());
        let disk = open_bytes(b, false).unwrap();
        let first = disk.extent(0, CS as u64).unwrap();
        assert_eq!(
            (first.kind, first.length),
            (ExtentKind::Data, CS as u64 / 2)
        );
        let mut buf = vec![1u8; CS];
        disk.read_at(0, &mut buf).unwrap();
        assert!(buf[..CS / 2].iter().all(|&b| b == 0xAA));
        assert!(buf[CS / 2..].iter().all(|&b| b == 0));
    }
}
