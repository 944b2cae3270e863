//! Writers for every writable format: a [`DiskWriter`] turns blocks of virtual content into an
//! image on a [`Sink`].
//!
//! The converter (`convert`) drives a writer: it reads the source in blocks of the writer's
//! [`DiskWriter::block_size`], skips blocks that are all zeros, runs the writer's optional
//! [`BlockEncoder`] (compression) on worker threads in any order, and hands the results to
//! [`DiskWriter::write_block`] strictly in ascending offset order. That keeps compressed output
//! deterministic while using every core. Blocks never handed over read back as zeros.
//!
//! Format writers live in one module each and are reached through [`create`].

mod derive;
pub(crate) mod qemu_options;
mod raw;
mod sink;

use std::collections::BTreeMap;
use std::sync::Arc;

pub(crate) use derive::derived_id;
pub use sink::{MemorySink, Sink};

use crate::Format;
use crate::disk::DiskError;

/// Format options in qemu-img's `-o key=value` form (`compat=1.1`, `subformat=streamOptimized`,
/// `compression_type=zstd`, ...). Each writer rejects keys it does not know.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub options: BTreeMap<String, String>,
    /// Compress every block the format can compress (qemu-img `convert -c`).
    pub compress: bool,
}

/// The CPU-heavy, order-independent part of writing a block (compression). Runs on worker
/// threads; its output goes to [`DiskWriter::write_block`] in order.
pub trait BlockEncoder: Send + Sync {
    /// Encodes the block at `offset` (`data` is the block's virtual content, never all zeros).
    fn encode(&self, offset: u64, data: &[u8]) -> Result<Vec<u8>, DiskError>;
}

/// An image being written.
pub trait DiskWriter: Send {
    /// Size of the blocks the converter hands over (the cluster/grain/block size). Every block
    /// starts at a multiple of it; only the last block of the disk may be shorter.
    fn block_size(&self) -> u64;

    /// The encoder to run on every block before [`DiskWriter::write_block`], if any.
    fn encoder(&self) -> Option<Arc<dyn BlockEncoder>>;

    /// Writes one block. Calls come in strictly ascending `offset` order; `encoded` is the
    /// encoder's output for this block when [`DiskWriter::encoder`] returned one.
    fn write_block(
        &mut self,
        offset: u64,
        data: &[u8],
        encoded: Option<Vec<u8>>,
    ) -> Result<(), DiskError>;

    /// Writes a run of consecutive blocks (`data.len()` a multiple of the block size, except
    /// for a run that ends the disk) starting at `offset`. Called instead of `write_block`
    /// only when the writer has no encoder; the default hands each block to `write_block`.
    /// Writers that can store a run with one large write (raw) override it.
    fn write_blocks(&mut self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        let block = usize::try_from(self.block_size())
            .unwrap_or(usize::MAX)
            .max(1);
        let mut at = offset;
        for chunk in data.chunks(block) {
            self.write_block(at, chunk, None)?;
            at += chunk.len() as u64;
        }
        Ok(())
    }

    /// Writes the remaining metadata (tables, footers) and flushes the sink.
    fn finish(self: Box<Self>) -> Result<(), DiskError>;
}

/// Starts a `format` image of `virtual_size` bytes on `sink`.
pub fn create(
    sink: Box<dyn Sink>,
    format: Format,
    virtual_size: u64,
    options: &CreateOptions,
) -> Result<Box<dyn DiskWriter>, DiskError> {
    match format {
        Format::Qcow2 => crate::qcow2::create(sink, virtual_size, options),
        Format::Qcow => crate::qcow::create(sink, virtual_size, options),
        Format::Qed => crate::qed::create(sink, virtual_size, options),
        Format::Vmdk => crate::vmdk::writer::create(sink, virtual_size, options),
        Format::Vdi => crate::vdi::writer::create(sink, virtual_size, options),
        Format::Vhd => Ok(Box::new(crate::vhd::writer::VhdWriter::create(
            sink,
            virtual_size,
            options,
        )?)),
        Format::Vhdx => Ok(Box::new(crate::vhdx::writer::VhdxWriter::create(
            sink,
            virtual_size,
            options,
        )?)),
        Format::Zvhd => Ok(Box::new(crate::zvhd::writer::ZvhdWriter::create(
            sink,
            virtual_size,
            options,
        )?)),
        Format::Zvhd2 => Ok(Box::new(crate::zvhd::writer::Zvhd2Writer::create(
            sink,
            virtual_size,
            options,
        )?)),
        Format::Raw => Ok(Box::new(raw::RawWriter::new(sink, virtual_size, options)?)),
        other => Err(DiskError::Unsupported {
            what: format!("writing {other} images is not implemented yet"),
        }),
    }
}
