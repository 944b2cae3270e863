//! The qcow v1 writer, laid out as qemu-img lays it out: the 48-byte header, the L1 table
//! right after it, then each L2 table (one cluster) followed by the clusters it maps, all
//! appended in ascending guest order. Compressed clusters (raw deflate) are packed byte by
//! byte; clusters that do not shrink are stored as they are.

use std::sync::Arc;

use zerocopy::IntoBytes;

use super::header::*;
use crate::Format;
use crate::disk::DiskError;
use crate::qcow2::{Compression, codec};
use crate::write::qemu_options::{OptionReader, finish_sink, write_at};
use crate::write::{BlockEncoder, CreateOptions, DiskWriter, Sink};

/// The L1 table follows the header (qemu aligns it to 8 bytes; 48 already is).
const L1_OFFSET: u64 = size_of::<HeaderRaw>() as u64;
/// The largest virtual size whose L1 table stays within [`MAX_L1_BYTES`].
const MAX_VIRTUAL_SIZE: u64 = (MAX_L1_BYTES / 8) << (DEFAULT_CLUSTER_BITS + DEFAULT_L2_BITS);

struct QcowEncoder {
    cluster_size: usize,
}

impl BlockEncoder for QcowEncoder {
    /// Raw deflate of the (zero-padded) cluster; empty when it would not be shorter.
    fn encode(&self, _offset: u64, data: &[u8]) -> Result<Vec<u8>, DiskError> {
        let mut padded;
        let input = if data.len() < self.cluster_size {
            padded = data.to_vec();
            padded.resize(self.cluster_size, 0);
            &padded[..]
        } else {
            data
        };
        Ok(codec::compress(Compression::Zlib, input, self.cluster_size).unwrap_or_default())
    }
}

struct QcowWriter {
    sink: Box<dyn Sink>,
    virtual_size: u64,
    encoder: Option<Arc<dyn BlockEncoder>>,
    l1: Vec<u64>,
    /// (L1 index, host offset, entries) of the L2 table being filled.
    current: Option<(u64, u64, Vec<u64>)>,
    cursor: u64,
    next_offset: u64,
}

pub(crate) fn create(
    sink: Box<dyn Sink>,
    virtual_size: u64,
    options: &CreateOptions,
) -> Result<Box<dyn DiskWriter>, DiskError> {
    OptionReader::new(Format::Qcow, &options.options).finish()?;
    if virtual_size > MAX_VIRTUAL_SIZE {
        return Err(DiskError::TooLarge {
            format: Format::Qcow,
            structure: "virtual size",
            value: virtual_size,
            limit: MAX_VIRTUAL_SIZE,
        });
    }
    let l1_entries = virtual_size.div_ceil(1 << (DEFAULT_CLUSTER_BITS + DEFAULT_L2_BITS));
    let cluster_size = 1usize << DEFAULT_CLUSTER_BITS;
    Ok(Box::new(QcowWriter {
        sink,
        virtual_size,
        encoder: options
            .compress
            .then(|| Arc::new(QcowEncoder { cluster_size }) as Arc<dyn BlockEncoder>),
        l1: vec![0; l1_entries as usize],
        current: None,
        cursor: L1_OFFSET + l1_entries * 8,
        next_offset: 0,
    }))
}

impl QcowWriter {
    fn cluster_size(&self) -> u64 {
        1 << DEFAULT_CLUSTER_BITS
    }

    fn allocate_cluster(&mut self) -> u64 {
        let host = self.cursor.next_multiple_of(self.cluster_size());
        self.cursor = host + self.cluster_size();
        host
    }

    fn flush_l2(&mut self) -> Result<(), DiskError> {
        if let Some((index, host, entries)) = self.current.take() {
            let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_be_bytes()).collect();
            write_at(&*self.sink, "L2 table", host, &bytes)?;
            self.l1[index as usize] = host;
        }
        Ok(())
    }
}

impl DiskWriter for QcowWriter {
    fn block_size(&self) -> u64 {
        self.cluster_size()
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
        let cs = self.cluster_size();
        if !offset.is_multiple_of(cs)
            || offset < self.next_offset
            || data.is_empty()
            || data.len() as u64 > cs
            || offset + data.len() as u64 > self.virtual_size
        {
            return Err(DiskError::OutOfRange {
                offset,
                length: data.len() as u64,
                virtual_size: self.virtual_size,
            });
        }
        self.next_offset = offset + cs;
        let cluster = offset >> DEFAULT_CLUSTER_BITS;
        let entries = 1u64 << DEFAULT_L2_BITS;
        let l1_index = cluster / entries;
        if self.current.as_ref().map(|c| c.0) != Some(l1_index) {
            self.flush_l2()?;
            let host = self.allocate_cluster();
            self.current = Some((l1_index, host, vec![0; entries as usize]));
        }
        let entry = match encoded.filter(|packed| !packed.is_empty()) {
            Some(packed) => {
                let host = self.cursor;
                let entry =
                    compressed_entry(host, packed.len() as u64, u32::from(DEFAULT_CLUSTER_BITS))
                        .ok_or_else(|| DiskError::TooLarge {
                            format: Format::Qcow,
                            structure: "compressed cluster offset",
                            value: host,
                            limit: 1 << (63 - DEFAULT_CLUSTER_BITS),
                        })?;
                write_at(&*self.sink, "compressed cluster", host, &packed)?;
                self.cursor += packed.len() as u64;
                entry
            }
            None => {
                let host = self.allocate_cluster();
                write_at(&*self.sink, "data cluster", host, data)?;
                host
            }
        };
        if let Some((_, _, table)) = self.current.as_mut() {
            table[(cluster % entries) as usize] = entry;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<(), DiskError> {
        self.flush_l2()?;
        let l1: Vec<u8> = self.l1.iter().flat_map(|e| e.to_be_bytes()).collect();
        write_at(&*self.sink, "L1 table", L1_OFFSET, &l1)?;
        let mut raw = HeaderRaw {
            magic: crate::qcow2::header::MAGIC,
            cluster_bits: DEFAULT_CLUSTER_BITS,
            l2_bits: DEFAULT_L2_BITS,
            ..HeaderRaw::default()
        };
        raw.version.set(1);
        raw.size.set(self.virtual_size);
        raw.l1_table_offset.set(L1_OFFSET);
        write_at(&*self.sink, "header", 0, raw.as_bytes())?;
        // Uncompressed clusters are whole clusters on disk, even the last, shorter one.
        let end = if self.cursor > L1_OFFSET + l1.len() as u64 {
            self.cursor
        } else {
            L1_OFFSET + l1.len() as u64
        };
        finish_sink(&*self.sink, end)
    }
}
