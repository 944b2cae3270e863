//! The raw writer: the virtual content as the file, sparse (holes for zero blocks, never
//! written), data stored with one large positional write per run of blocks.

use super::{BlockEncoder, CreateOptions, DiskWriter, Sink};
use crate::disk::DiskError;
use std::sync::Arc;

/// Zero detection granularity: a 4 KiB block of zeros becomes a hole, as with qemu-img's
/// default `-S 4k`, so outputs are as sparse as qemu's.
const RAW_BLOCK: u64 = 4096;

pub(crate) struct RawWriter {
    sink: Box<dyn Sink>,
    virtual_size: u64,
}

impl RawWriter {
    pub(crate) fn new(
        sink: Box<dyn Sink>,
        virtual_size: u64,
        options: &CreateOptions,
    ) -> Result<RawWriter, DiskError> {
        if let Some(key) = options.options.keys().next() {
            return Err(DiskError::unsupported(format!(
                "raw images take no option (got {key:?})"
            )));
        }
        if options.compress {
            return Err(DiskError::unsupported("raw images cannot be compressed"));
        }
        // The whole disk starts as one hole: blocks never written read as zeros.
        sink.set_len(virtual_size)
            .map_err(|source| writing(0, source))?;
        Ok(RawWriter { sink, virtual_size })
    }

    fn store(&self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        let end = offset.checked_add(data.len() as u64);
        if end.is_none_or(|end| end > self.virtual_size) {
            return Err(DiskError::OutOfRange {
                offset,
                length: data.len() as u64,
                virtual_size: self.virtual_size,
            });
        }
        self.sink
            .write_all_at(offset, data)
            .map_err(|source| writing(offset, source))
    }
}

fn writing(offset: u64, source: std::io::Error) -> DiskError {
    DiskError::Writing {
        structure: "raw data",
        offset,
        source,
    }
}

impl DiskWriter for RawWriter {
    fn block_size(&self) -> u64 {
        RAW_BLOCK
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
        self.store(offset, data)
    }

    fn write_blocks(&mut self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        self.store(offset, data)
    }

    fn finish(self: Box<Self>) -> Result<(), DiskError> {
        self.sink
            .sync()
            .map_err(|source| writing(self.virtual_size, source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::MemorySink;

    #[test]
    fn raw_writer_refuses_options_and_writes_in_place() {
        let mut options = CreateOptions::default();
        options.options.insert("compat".into(), "1.1".into());
        assert!(RawWriter::new(Box::new(MemorySink::new()), 8192, &options).is_err());

        let mut writer =
            RawWriter::new(Box::new(MemorySink::new()), 8192, &CreateOptions::default()).unwrap();
        writer.write_blocks(4096, &[7u8; 4096]).unwrap();
        assert!(writer.write_block(8192, &[1u8; 512], None).is_err());
    }
}
