//! The qcow2 writer: streams data clusters (compressed or not) after the header and L1 table
//! in ascending guest order, keeps only the current L2 table and one refcount per host
//! cluster in memory, and writes refcount blocks, refcount table, L1 and header at the end.
//!
//! Layout: cluster 0 header, clusters 1.. the L1 table, then each L2 table followed by the
//! data it maps, then the refcount blocks and the refcount table. Compressed clusters are
//! packed byte by byte as qemu packs them; every output is deterministic.

use std::sync::Arc;

use zerocopy::IntoBytes;

use super::Compression;
use super::codec;
use super::header::*;
use crate::Format;
use crate::disk::DiskError;
use crate::write::qemu_options::{OptionReader, finish_sink, write_at};
use crate::write::{BlockEncoder, CreateOptions, DiskWriter, Sink};

/// qemu-img's default cluster size.
const DEFAULT_CLUSTER_SIZE: u64 = 64 << 10;
/// The only refcount width written (qemu's default): 16 bits.
const REFCOUNT_ORDER: u32 = 4;
const REFCOUNT_BITS: u64 = 1 << REFCOUNT_ORDER;
/// Largest virtual size this writer accepts (qemu: 2^61 minus a little for the tables).
const MAX_VIRTUAL_SIZE: u64 = 1 << 61;

/// The image's shape, fixed by the options.
#[derive(Debug, Clone, Copy)]
struct Layout {
    version: u32,
    cluster_bits: u32,
    cluster_size: u64,
    compression: Compression,
    extended_l2: bool,
    lazy_refcounts: bool,
    compress: bool,
    virtual_size: u64,
    l1_entries: u64,
}

impl Layout {
    fn from_options(virtual_size: u64, options: &CreateOptions) -> Result<Layout, DiskError> {
        let mut reader = OptionReader::new(Format::Qcow2, &options.options);
        let compat = reader.choice("compat", &["0.10", "v2", "1.1", "v3"], "1.1")?;
        let version = if matches!(compat, "0.10" | "v2") {
            2
        } else {
            3
        };
        let cluster_size = reader.size("cluster_size", DEFAULT_CLUSTER_SIZE)?;
        let compression = match reader.choice("compression_type", &["zlib", "zstd"], "zlib")? {
            "zstd" => Compression::Zstd,
            _ => Compression::Zlib,
        };
        let extended_l2 = reader.flag("extended_l2", false)?;
        let lazy_refcounts = reader.flag("lazy_refcounts", false)?;
        let refcount_bits = reader.size("refcount_bits", REFCOUNT_BITS)?;
        reader.choice("preallocation", &["off"], "off")?;
        reader.finish()?;
        let unsupported = |what: String| Err(DiskError::unsupported(what));
        if refcount_bits != REFCOUNT_BITS {
            return unsupported(format!(
                "qcow2 option refcount_bits={refcount_bits} (only 16 is written)"
            ));
        }
        let cluster_bits = cluster_size.trailing_zeros();
        if !cluster_size.is_power_of_two()
            || !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits)
        {
            return unsupported(format!(
                "qcow2 option cluster_size={cluster_size} (a power of two from 512 to 2M)"
            ));
        }
        if version == 2 && (compression == Compression::Zstd || extended_l2 || lazy_refcounts) {
            return unsupported(
                "qcow2 compat=0.10 with compression_type=zstd, extended_l2 or lazy_refcounts"
                    .into(),
            );
        }
        if extended_l2 && cluster_bits < MIN_CLUSTER_BITS_EXTENDED_L2 {
            return unsupported(format!(
                "qcow2 extended_l2 with cluster_size={cluster_size} (needs at least 16k)"
            ));
        }
        if virtual_size > MAX_VIRTUAL_SIZE {
            return Err(DiskError::TooLarge {
                format: Format::Qcow2,
                structure: "virtual size",
                value: virtual_size,
                limit: MAX_VIRTUAL_SIZE,
            });
        }
        let l2_entries = cluster_size / if extended_l2 { 16 } else { 8 };
        let l1_entries = virtual_size.div_ceil(l2_entries * cluster_size);
        if l1_entries * 8 > MAX_L1_BYTES {
            return Err(DiskError::TooLarge {
                format: Format::Qcow2,
                structure: "L1 table",
                value: l1_entries * 8,
                limit: MAX_L1_BYTES,
            });
        }
        Ok(Layout {
            version,
            cluster_bits,
            cluster_size,
            compression,
            extended_l2,
            lazy_refcounts,
            compress: options.compress,
            virtual_size,
            l1_entries,
        })
    }

    fn l2_entries(&self) -> u64 {
        self.cluster_size / if self.extended_l2 { 16 } else { 8 }
    }

    fn l1_clusters(&self) -> u64 {
        (self.l1_entries * 8).div_ceil(self.cluster_size)
    }

    fn header(&self, refcount_table: (u64, u64), l1_offset: u64) -> Vec<u8> {
        let mut raw = HeaderRaw {
            magic: MAGIC,
            ..HeaderRaw::default()
        };
        raw.version.set(self.version);
        raw.cluster_bits.set(self.cluster_bits);
        raw.size.set(self.virtual_size);
        raw.l1_size.set(self.l1_entries as u32);
        raw.l1_table_offset.set(l1_offset);
        raw.refcount_table_offset.set(refcount_table.0);
        raw.refcount_table_clusters.set(refcount_table.1 as u32);
        let mut bytes = raw.as_bytes().to_vec();
        if self.version == 2 {
            bytes.truncate(V2_HEADER_LEN as usize);
        } else {
            let mut incompatible = 0;
            if self.compression == Compression::Zstd {
                incompatible |= INCOMPAT_COMPRESSION;
                raw.compression_type = 1;
            }
            if self.extended_l2 {
                incompatible |= INCOMPAT_EXTENDED_L2;
            }
            raw.incompatible_features.set(incompatible);
            raw.compatible_features.set(if self.lazy_refcounts {
                COMPAT_LAZY_REFCOUNTS
            } else {
                0
            });
            raw.refcount_order.set(REFCOUNT_ORDER);
            raw.header_length.set(V3_HEADER_LEN);
            bytes = raw.as_bytes().to_vec();
        }
        // The extension list ends with an 8-byte end marker right after the header.
        bytes.extend_from_slice(&[0u8; 8]);
        bytes
    }
}

/// Compresses clusters on the converter's worker threads. An empty output means "store this
/// cluster uncompressed" (compression did not shrink it, as qemu decides).
struct Qcow2Encoder {
    compression: Compression,
    cluster_size: usize,
}

impl BlockEncoder for Qcow2Encoder {
    fn encode(&self, _offset: u64, data: &[u8]) -> Result<Vec<u8>, DiskError> {
        let packed = if data.len() < self.cluster_size {
            let mut padded = data.to_vec();
            padded.resize(self.cluster_size, 0);
            codec::compress(self.compression, &padded, self.cluster_size)
        } else {
            codec::compress(self.compression, data, self.cluster_size)
        };
        Ok(packed.unwrap_or_default())
    }
}

/// The L2 table being filled.
struct CurrentL2 {
    l1_index: u64,
    host: u64,
    words: Vec<u64>,
}

struct Qcow2Writer {
    sink: Box<dyn Sink>,
    layout: Layout,
    encoder: Option<Arc<dyn BlockEncoder>>,
    l1: Vec<u64>,
    current: Option<CurrentL2>,
    /// Next free byte of the file.
    cursor: u64,
    /// References per host cluster so far.
    refcounts: Vec<u16>,
    next_offset: u64,
}

pub(crate) fn create(
    sink: Box<dyn Sink>,
    virtual_size: u64,
    options: &CreateOptions,
) -> Result<Box<dyn DiskWriter>, DiskError> {
    let layout = Layout::from_options(virtual_size, options)?;
    let encoder: Option<Arc<dyn BlockEncoder>> = layout.compress.then(|| {
        Arc::new(Qcow2Encoder {
            compression: layout.compression,
            cluster_size: layout.cluster_size as usize,
        }) as Arc<dyn BlockEncoder>
    });
    let metadata_clusters = 1 + layout.l1_clusters();
    Ok(Box::new(Qcow2Writer {
        sink,
        layout,
        encoder,
        l1: vec![0; layout.l1_entries as usize],
        current: None,
        cursor: metadata_clusters * layout.cluster_size,
        refcounts: vec![1; metadata_clusters as usize],
        next_offset: 0,
    }))
}

impl Qcow2Writer {
    fn reference(&mut self, start: u64, len: u64) -> Result<(), DiskError> {
        let cs = self.layout.cluster_size;
        let last = (start + len - 1) / cs;
        if last as usize >= self.refcounts.len() {
            self.refcounts.resize(last as usize + 1, 0);
        }
        for cluster in start / cs..=last {
            let count = &mut self.refcounts[cluster as usize];
            *count = count.checked_add(1).ok_or_else(|| {
                DiskError::corrupt(Format::Qcow2, "refcount", cluster * cs, "overflow")
            })?;
        }
        Ok(())
    }

    /// A fresh cluster at the end of the file.
    fn allocate_cluster(&mut self) -> Result<u64, DiskError> {
        let cs = self.layout.cluster_size;
        let host = self.cursor.next_multiple_of(cs);
        self.cursor = host + cs;
        self.reference(host, cs)?;
        Ok(host)
    }

    fn flush_l2(&mut self) -> Result<(), DiskError> {
        let Some(current) = self.current.take() else {
            return Ok(());
        };
        let bytes: Vec<u8> = current.words.iter().flat_map(|w| w.to_be_bytes()).collect();
        write_at(&*self.sink, "L2 table", current.host, &bytes)?;
        self.l1[current.l1_index as usize] = current.host | ENTRY_COPIED;
        Ok(())
    }

    /// The L2 table for guest cluster `cluster`, allocating it when the converter moves on.
    fn l2_for(&mut self, cluster: u64) -> Result<(), DiskError> {
        let l1_index = cluster / self.layout.l2_entries();
        if self.current.as_ref().map(|c| c.l1_index) == Some(l1_index) {
            return Ok(());
        }
        self.flush_l2()?;
        let host = self.allocate_cluster()?;
        self.current = Some(CurrentL2 {
            l1_index,
            host,
            words: vec![0; (self.layout.cluster_size / 8) as usize],
        });
        Ok(())
    }

    fn set_entry(&mut self, cluster: u64, word: u64, bitmap: u64) {
        let index = (cluster % self.layout.l2_entries()) as usize;
        let extended = self.layout.extended_l2;
        if let Some(current) = self.current.as_mut() {
            if extended {
                current.words[index * 2] = word;
                current.words[index * 2 + 1] = bitmap;
            } else {
                current.words[index] = word;
            }
        }
    }

    fn write_compressed(&mut self, packed: &[u8]) -> Result<u64, DiskError> {
        let cs = self.layout.cluster_size;
        let mut host = self.cursor;
        // Start a new cluster when the open one cannot count another reference.
        let last = (host + packed.len() as u64 - 1) / cs;
        if self
            .refcounts
            .get((host / cs) as usize..=(last as usize).min(self.refcounts.len().saturating_sub(1)))
            .is_some_and(|counts| counts.iter().any(|&c| c == u16::MAX))
        {
            host = host.next_multiple_of(cs);
        }
        let entry =
            CompressedDescriptor::encode(host, packed.len() as u64, self.layout.cluster_bits)
                .ok_or_else(|| DiskError::TooLarge {
                    format: Format::Qcow2,
                    structure: "compressed cluster offset",
                    value: host,
                    limit: 1 << (62 - (self.layout.cluster_bits - 8)),
                })?;
        write_at(&*self.sink, "compressed cluster", host, packed)?;
        let sectors_start = host & !511;
        let sectors_end = (host + packed.len() as u64).next_multiple_of(512);
        self.reference(sectors_start, sectors_end - sectors_start)?;
        self.cursor = host + packed.len() as u64;
        Ok(entry)
    }

    /// Refcount blocks and table for every cluster up to the end of the file, including
    /// themselves; returns (table offset, table clusters) and the file's end.
    fn write_refcounts(&mut self) -> Result<((u64, u64), u64), DiskError> {
        let cs = self.layout.cluster_size;
        let per_block = cs * 8 / REFCOUNT_BITS;
        let data_clusters = self.cursor.div_ceil(cs);
        let (mut blocks, mut table_clusters) = (0u64, 0u64);
        loop {
            let total = data_clusters + blocks + table_clusters;
            let need_blocks = total.div_ceil(per_block);
            let need_table = (need_blocks * 8).div_ceil(cs);
            if (need_blocks, need_table) == (blocks, table_clusters) {
                break;
            }
            (blocks, table_clusters) = (need_blocks, need_table);
        }
        if table_clusters * cs > MAX_REFCOUNT_TABLE_BYTES {
            return Err(DiskError::TooLarge {
                format: Format::Qcow2,
                structure: "refcount table",
                value: table_clusters * cs,
                limit: MAX_REFCOUNT_TABLE_BYTES,
            });
        }
        let blocks_start = data_clusters * cs;
        let table_start = blocks_start + blocks * cs;
        let end = table_start + table_clusters * cs;
        self.refcounts.resize((end / cs) as usize, 0);
        for cluster in data_clusters..end / cs {
            self.refcounts[cluster as usize] = 1;
        }
        let mut table = Vec::with_capacity((table_clusters * cs) as usize);
        let mut block = Vec::with_capacity(cs as usize);
        for index in 0..blocks {
            let first = (index * per_block) as usize;
            let last = (first + per_block as usize).min(self.refcounts.len());
            block.clear();
            for count in &self.refcounts[first..last] {
                block.extend_from_slice(&count.to_be_bytes());
            }
            block.resize(cs as usize, 0);
            let at = blocks_start + index * cs;
            write_at(&*self.sink, "refcount block", at, &block)?;
            table.extend_from_slice(&at.to_be_bytes());
        }
        table.resize((table_clusters * cs) as usize, 0);
        write_at(&*self.sink, "refcount table", table_start, &table)?;
        Ok(((table_start, table_clusters), end))
    }
}

impl DiskWriter for Qcow2Writer {
    fn block_size(&self) -> u64 {
        self.layout.cluster_size
    }

    fn encoder(&self) -> Option<Arc<dyn BlockEncoder>> {
        self.encoder.clone()
    }

    fn write_block(
        &mut self,
        offset: u64,
        data: &[u8],
        encoded: Option<Vec<u8>>,
    ) -> Result<(), DiskError> {
        let cs = self.layout.cluster_size;
        let valid = offset.is_multiple_of(cs)
            && offset >= self.next_offset
            && !data.is_empty()
            && data.len() as u64 <= cs
            && offset + data.len() as u64 <= self.layout.virtual_size;
        if !valid {
            return Err(DiskError::OutOfRange {
                offset,
                length: data.len() as u64,
                virtual_size: self.layout.virtual_size,
            });
        }
        self.next_offset = offset + cs;
        let cluster = offset / cs;
        self.l2_for(cluster)?;
        match encoded.filter(|packed| !packed.is_empty()) {
            Some(packed) => {
                let entry = self.write_compressed(&packed)?;
                self.set_entry(cluster, entry, 0);
            }
            None => {
                let host = self.allocate_cluster()?;
                write_at(&*self.sink, "data cluster", host, data)?;
                self.set_entry(cluster, host | ENTRY_COPIED, u64::from(u32::MAX));
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<(), DiskError> {
        self.flush_l2()?;
        let cs = self.layout.cluster_size;
        let (refcount_table, end) = self.write_refcounts()?;
        let l1_offset = if self.layout.l1_entries > 0 { cs } else { 0 };
        let l1: Vec<u8> = self.l1.iter().flat_map(|e| e.to_be_bytes()).collect();
        write_at(&*self.sink, "L1 table", l1_offset, &l1)?;
        let header = self.layout.header(refcount_table, l1_offset);
        write_at(&*self.sink, "header", 0, &header)?;
        finish_sink(&*self.sink, end)
    }
}
