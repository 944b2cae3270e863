//! The QED writer: header cluster, L1 table, then each L2 table followed by the data clusters
//! it maps, appended in ascending guest order; the file ends at the last cluster so
//! `qemu-img check` finds no leaks.

use std::sync::Arc;

use zerocopy::IntoBytes;

use super::header::*;
use crate::Format;
use crate::disk::DiskError;
use crate::write::qemu_options::{OptionReader, finish_sink, write_at};
use crate::write::{BlockEncoder, CreateOptions, DiskWriter, Sink};

/// The header takes one cluster, as qemu writes it.
const HEADER_CLUSTERS: u32 = 1;
/// QED stores sizes in whole sectors.
const SECTOR: u64 = 512;

struct QedWriter {
    sink: Box<dyn Sink>,
    cluster_size: u64,
    table_size: u64,
    virtual_size: u64,
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
    let mut reader = OptionReader::new(Format::Qed, &options.options);
    let cluster_size = reader.size("cluster_size", u64::from(DEFAULT_CLUSTER_SIZE))?;
    let table_size = reader.size("table_size", u64::from(DEFAULT_TABLE_SIZE))?;
    reader.finish()?;
    if options.compress {
        return Err(DiskError::unsupported("compression in QED images"));
    }
    if !cluster_size.is_power_of_two()
        || !(u64::from(MIN_CLUSTER_SIZE)..=u64::from(MAX_CLUSTER_SIZE)).contains(&cluster_size)
    {
        return Err(DiskError::unsupported(format!(
            "qed option cluster_size={cluster_size} (a power of two from 4k to 64M)"
        )));
    }
    if !table_size.is_power_of_two()
        || !(u64::from(MIN_TABLE_SIZE)..=u64::from(MAX_TABLE_SIZE)).contains(&table_size)
    {
        return Err(DiskError::unsupported(format!(
            "qed option table_size={table_size} (a power of two from 2 to 16; qemu cannot open 1)"
        )));
    }
    let virtual_size = virtual_size.next_multiple_of(SECTOR);
    let max = max_image_size(cluster_size, table_size).unwrap_or(u64::MAX);
    if virtual_size > max {
        return Err(DiskError::TooLarge {
            format: Format::Qed,
            structure: "virtual size",
            value: virtual_size,
            limit: max,
        });
    }
    let entries = table_size * cluster_size / 8;
    let l1_entries = entries as usize;
    Ok(Box::new(QedWriter {
        sink,
        cluster_size,
        table_size,
        virtual_size,
        l1: vec![0; l1_entries],
        current: None,
        cursor: (u64::from(HEADER_CLUSTERS) + table_size) * cluster_size,
        next_offset: 0,
    }))
}

impl QedWriter {
    fn entries(&self) -> u64 {
        self.table_size * self.cluster_size / 8
    }

    fn flush_l2(&mut self) -> Result<(), DiskError> {
        if let Some((index, host, entries)) = self.current.take() {
            let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
            write_at(&*self.sink, "L2 table", host, &bytes)?;
            self.l1[index as usize] = host;
        }
        Ok(())
    }
}

impl DiskWriter for QedWriter {
    fn block_size(&self) -> u64 {
        self.cluster_size
    }

    fn encoder(&self) -> Option<Arc<dyn BlockEncoder>> {
        None
    }

    fn write_block(
        &mut self,
        offset: u64,
        data: &[u8],
        _encoded: Option<Vec<u8>>,
    ) -> Result<(), DiskError> {
        let cs = self.cluster_size;
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
        let cluster = offset / cs;
        let entries = self.entries();
        let l1_index = cluster / entries;
        if self.current.as_ref().map(|c| c.0) != Some(l1_index) {
            self.flush_l2()?;
            let host = self.cursor;
            self.cursor += self.table_size * cs;
            self.current = Some((l1_index, host, vec![0; entries as usize]));
        }
        let host = self.cursor;
        self.cursor += cs;
        write_at(&*self.sink, "data cluster", host, data)?;
        if let Some((_, _, table)) = self.current.as_mut() {
            table[(cluster % entries) as usize] = host;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<(), DiskError> {
        self.flush_l2()?;
        let cs = self.cluster_size;
        let l1: Vec<u8> = self.l1.iter().flat_map(|e| e.to_le_bytes()).collect();
        write_at(
            &*self.sink,
            "L1 table",
            u64::from(HEADER_CLUSTERS) * cs,
            &l1,
        )?;
        let mut raw = HeaderRaw {
            magic: MAGIC,
            ..HeaderRaw::default()
        };
        raw.cluster_size.set(cs as u32);
        raw.table_size.set(self.table_size as u32);
        raw.header_size.set(HEADER_CLUSTERS);
        raw.l1_table_offset.set(u64::from(HEADER_CLUSTERS) * cs);
        raw.image_size.set(self.virtual_size);
        write_at(&*self.sink, "header", 0, raw.as_bytes())?;
        finish_sink(&*self.sink, self.cursor)
    }
}
