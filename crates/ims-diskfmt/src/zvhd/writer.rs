//! ZVHD and ZVHD2 writers; compression runs in the parallel [`BlockEncoder`].
//!
//! ZVHD must be one zlib stream, yet blocks are compressed on several threads in any order.
//! Each block is deflated independently as raw deflate ending in a sync flush (byte-aligned,
//! no final block): such pieces concatenate into one valid deflate stream (what `pigz -i`
//! does). The writer puts the 2-byte zlib header in front of the first record's payload once;
//! the stream is never finished, as in the Huawei driver. No dictionary priming: all-zero
//! blocks are skipped by the converter, so an encoder cannot know which block precedes it in
//! the stream; the ratio cost of a fresh 32 KiB window per 2 MiB block is negligible.
//!
//! ZVHD2 blocks are independent zstd frames or zlib streams (header, sync flush, no
//! trailer); `finish` writes the end marker, index, bitmap and final footer (`formats.md`
//! §8.4). Output is deterministic: timestamp 0, uuid derived from the sizes and block map.

use std::cell::RefCell;
use std::sync::Arc;

use flate2::{Compress, Compression, FlushCompress};
use zerocopy::IntoBytes;
use zerocopy::byteorder::{U32, U64};

use super::header::{
    BITMAP_SEG_SIZE, BLOCK_SIZE, BLOCKS_PER_SEGMENT, CHECKSUM_OFFSET, CHECKSUMMED_LEN,
    COMPRESS_ZLIB, COMPRESS_ZSTD, CREATOR_APP, CREATOR_VERSION, DISK_TYPE, FEATURES, FooterRaw,
    HEADER_LEN, INDEX_ENTRY_LEN, INDEX_SEG_SIZE, IndexEntryRaw, RECORD_END, RECORD_HEADER_LEN,
    SIZE_GRANULE, VERSION, ZVHD_COOKIE, ZVHD2_COOKIE, ZVHD2_VERSION, record, record_len,
};
use super::parser::MAX_VIRTUAL_SIZE;
use crate::Format;
use crate::disk::DiskError;
use crate::vhd::header::{geometry, ones_complement_sum};
use crate::write::qemu_options::{OptionReader, finish_sink, write_at as write};
use crate::write::{BlockEncoder, CreateOptions, DiskWriter, Sink, derived_id};

/// The Huawei driver deflates at level 1 (fast; the stream format does not care).
const ZLIB_LEVEL: u32 = 1;
/// zstd level for ZVHD2 (the driver uses the library default, 3).
const ZSTD_LEVEL: i32 = 3;
/// The zlib header for a 32 KiB window at the fastest level (CMF 0x78, FLEVEL 0).
const ZLIB_HEADER: [u8; 2] = [0x78, 0x01];

/// Per-thread encoder state: one deflater per stream kind, a zstd context, and scratch buffers
/// for padding a short last block and for the compressed output. A record handed to the writer
/// is an exact-size copy of the scratch output, so batches in flight hold what their blocks
/// compress to, not a worst-case buffer each.
struct Scratch {
    raw_deflate: Compress,
    zlib_deflate: Compress,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    padded: Vec<u8>,
    out: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        raw_deflate: Compress::new(Compression::new(ZLIB_LEVEL), false),
        zlib_deflate: Compress::new(Compression::new(ZLIB_LEVEL), true),
        zstd: None,
        padded: Vec::new(),
        out: Vec::new(),
    });
}

/// Deflate of `data` into `out` ending with a sync flush (raw or zlib-wrapped, as `deflater`
/// was made).
fn deflate_sync(deflater: &mut Compress, data: &[u8], out: &mut Vec<u8>) -> Result<(), DiskError> {
    deflater.reset();
    out.clear();
    out.reserve(data.len() / 2 + 4096);
    loop {
        let consumed = deflater.total_in() as usize;
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(4096));
        }
        deflater
            .compress_vec(&data[consumed..], out, FlushCompress::Sync)
            .map_err(|e| DiskError::unsupported(format!("deflate failed: {e}")))?;
        // Done once all input is in and the flush fit in the spare capacity.
        if deflater.total_in() as usize == data.len() && out.len() < out.capacity() {
            return Ok(());
        }
    }
}

/// A full block in `padded` unless `data` is one already: the converter hands a short last
/// block; records always hold a whole block.
fn whole_block<'a>(data: &'a [u8], padded: &'a mut Vec<u8>) -> &'a [u8] {
    if data.len() as u64 == BLOCK_SIZE {
        data
    } else {
        padded.clear();
        padded.extend_from_slice(data);
        padded.resize(BLOCK_SIZE as usize, 0);
        padded
    }
}

/// Runs `encode(scratch, whole block, output)` on this thread's scratch.
fn with_scratch<T>(
    data: &[u8],
    encode: impl FnOnce(&mut Scratch, &[u8], &mut Vec<u8>) -> Result<T, DiskError>,
) -> Result<T, DiskError> {
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let mut padded = std::mem::take(&mut scratch.padded);
        let mut out = std::mem::take(&mut scratch.out);
        let result = encode(&mut *scratch, whole_block(data, &mut padded), &mut out);
        scratch.padded = padded;
        scratch.out = out;
        result
    })
}

fn sizes(format: Format, virtual_size: u64) -> Result<(u64, u64), DiskError> {
    let curr = virtual_size.next_multiple_of(SIZE_GRANULE);
    if curr > MAX_VIRTUAL_SIZE {
        return Err(DiskError::too_large(
            format,
            "virtual size",
            virtual_size,
            MAX_VIRTUAL_SIZE,
        ));
    }
    Ok((virtual_size, curr))
}

/// The footer both formats start from.
fn base_footer(cookie: [u8; 8], orig: u64, curr: u64, uuid: [u8; 16]) -> FooterRaw {
    let (c, h, s) = geometry(orig.div_ceil(512));
    FooterRaw {
        cookie,
        features: U32::new(FEATURES),
        version: U32::new(VERSION),
        data_offset: U64::new(u64::MAX),
        timestamp: U32::new(0),
        creator_app: CREATOR_APP,
        creator_version: U32::new(CREATOR_VERSION),
        creator_os: U32::new(0),
        orig_size: U64::new(orig),
        curr_size: U64::new(curr),
        geometry: U32::new(u32::from(c) << 16 | u32::from(h) << 8 | u32::from(s)),
        disk_type: U32::new(DISK_TYPE),
        checksum: U32::new(0),
        uuid,
        saved: 0,
        hidden: 0,
        align_64: 0,
        zvhd2_version: 0,
        block_size: U32::new(0),
        max_blk_num: U32::new(0),
        index_lba: U64::new(0),
        bitmap_lba: U64::new(0),
        index_size: U32::new(0),
        bitmap_size: U32::new(0),
        index_seg_size: U32::new(0),
        bitmap_seg_size: U32::new(0),
        index_seg_num: U32::new(0),
        bitmap_seg_num: U32::new(0),
        non_zero_blk_num: U32::new(0),
        index_contains_zero_blk: 0,
        compress_method: 0,
        reserved: [0; 370],
    }
}

/// The footer's checksum over its 512 bytes.
fn checksum(footer: &FooterRaw) -> u32 {
    ones_complement_sum(&footer.as_bytes()[..CHECKSUMMED_LEN], CHECKSUM_OFFSET)
}

/// The footer padded to its 4 KiB slot, checksum as given.
fn padded(footer: &FooterRaw) -> Vec<u8> {
    let mut out = footer.as_bytes().to_vec();
    out.resize(HEADER_LEN as usize, 0);
    out
}

fn sealed(mut footer: FooterRaw) -> Vec<u8> {
    footer.checksum = U32::new(checksum(&footer));
    padded(&footer)
}

fn no_options(format: Format, options: &CreateOptions) -> Result<(), DiskError> {
    OptionReader::new(format, &options.options).finish()
}

struct ZvhdEncoder;

impl BlockEncoder for ZvhdEncoder {
    fn encode(&self, _offset: u64, data: &[u8]) -> Result<Vec<u8>, DiskError> {
        with_scratch(data, |scratch, block, out| {
            deflate_sync(&mut scratch.raw_deflate, block, out)?;
            Ok(out.as_slice().to_vec())
        })
    }
}

pub(crate) struct ZvhdWriter {
    sink: Box<dyn Sink>,
    orig: u64,
    curr: u64,
    next: u64,
    /// Stored block numbers, for the derived uuid.
    stored: Vec<u32>,
}

impl ZvhdWriter {
    pub(crate) fn create(
        sink: Box<dyn Sink>,
        virtual_size: u64,
        options: &CreateOptions,
    ) -> Result<ZvhdWriter, DiskError> {
        no_options(Format::Zvhd, options)?;
        let (orig, curr) = sizes(Format::Zvhd, virtual_size)?;
        Ok(ZvhdWriter {
            sink,
            orig,
            curr,
            next: HEADER_LEN,
            stored: Vec::new(),
        })
    }
}

impl DiskWriter for ZvhdWriter {
    fn block_size(&self) -> u64 {
        BLOCK_SIZE
    }

    fn encoder(&self) -> Option<Arc<dyn BlockEncoder>> {
        Some(Arc::new(ZvhdEncoder))
    }

    fn write_block(
        &mut self,
        offset: u64,
        data: &[u8],
        encoded: Option<Vec<u8>>,
    ) -> Result<(), DiskError> {
        let deflated = match encoded {
            Some(bytes) => bytes,
            None => ZvhdEncoder.encode(offset, data)?,
        };
        let payload = if self.stored.is_empty() {
            [&ZLIB_HEADER[..], &deflated].concat()
        } else {
            deflated
        };
        let block = u32::try_from(offset / BLOCK_SIZE)
            .map_err(|_| DiskError::too_large(Format::Zvhd, "block number", offset, u64::MAX))?;
        let bytes = record(block, &payload);
        write(self.sink.as_ref(), "record", self.next, &bytes)?;
        self.next += bytes.len() as u64;
        self.stored.push(block);
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<(), DiskError> {
        let uuid = derived_id(&[b"zvhd", &self.orig.to_le_bytes(), self.stored.as_bytes()]);
        let header = sealed(base_footer(ZVHD_COOKIE, self.orig, self.curr, uuid));
        write(self.sink.as_ref(), "header", 0, &header)?;
        write(
            self.sink.as_ref(),
            "trailing header copy",
            self.next,
            &header,
        )?;
        finish_sink(self.sink.as_ref(), self.next + HEADER_LEN)
    }
}

struct Zvhd2Encoder {
    method: u8,
}

impl BlockEncoder for Zvhd2Encoder {
    fn encode(&self, offset: u64, data: &[u8]) -> Result<Vec<u8>, DiskError> {
        let block = u32::try_from(offset / BLOCK_SIZE)
            .map_err(|_| DiskError::too_large(Format::Zvhd2, "block number", offset, u64::MAX))?;
        with_scratch(data, |scratch, data, out| {
            if self.method == COMPRESS_ZSTD {
                let zstd_failed = |e: std::io::Error| {
                    DiskError::unsupported(format!("zstd compression failed: {e}"))
                };
                let compressor = match &mut scratch.zstd {
                    Some(compressor) => compressor,
                    slot => {
                        slot.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(zstd_failed)?)
                    }
                };
                out.clear();
                out.reserve(zstd::zstd_safe::compress_bound(data.len()));
                compressor
                    .compress_to_buffer(data, out)
                    .map_err(zstd_failed)?;
            } else {
                deflate_sync(&mut scratch.zlib_deflate, data, out)?;
            }
            Ok(record(block, out))
        })
    }
}

pub(crate) struct Zvhd2Writer {
    sink: Box<dyn Sink>,
    encoder: Arc<Zvhd2Encoder>,
    orig: u64,
    curr: u64,
    blocks: u64,
    next: u64,
    index: Vec<IndexEntryRaw>,
}

impl Zvhd2Writer {
    pub(crate) fn create(
        sink: Box<dyn Sink>,
        virtual_size: u64,
        options: &CreateOptions,
    ) -> Result<Zvhd2Writer, DiskError> {
        let mut reader = OptionReader::new(Format::Zvhd2, &options.options);
        let methods = ["zlib", "zstd"];
        let method = reader.choice("compress_method", &methods, "zstd")?;
        let method = reader.choice("compression_type", &methods, method)?;
        reader.finish()?;
        let method = if method == "zlib" {
            COMPRESS_ZLIB
        } else {
            COMPRESS_ZSTD
        };
        let (orig, curr) = sizes(Format::Zvhd2, virtual_size)?;
        let blocks = orig.div_ceil(BLOCK_SIZE);
        if blocks > u64::from(u32::MAX) {
            return Err(DiskError::too_large(
                Format::Zvhd2,
                "block count",
                blocks,
                u64::from(u32::MAX),
            ));
        }
        Ok(Zvhd2Writer {
            sink,
            encoder: Arc::new(Zvhd2Encoder { method }),
            orig,
            curr,
            blocks,
            next: HEADER_LEN,
            index: Vec::new(),
        })
    }

    fn footer(&self, uuid: [u8; 16]) -> FooterRaw {
        let mut footer = base_footer(ZVHD2_COOKIE, self.orig, self.curr, uuid);
        footer.zvhd2_version = ZVHD2_VERSION;
        footer.block_size = U32::new(BLOCK_SIZE as u32);
        footer.max_blk_num = U32::new(self.blocks as u32);
        footer.compress_method = self.encoder.method;
        footer
    }
}

impl DiskWriter for Zvhd2Writer {
    fn block_size(&self) -> u64 {
        BLOCK_SIZE
    }

    fn encoder(&self) -> Option<Arc<dyn BlockEncoder>> {
        Some(self.encoder.clone())
    }

    fn write_block(
        &mut self,
        offset: u64,
        data: &[u8],
        encoded: Option<Vec<u8>>,
    ) -> Result<(), DiskError> {
        let bytes = match encoded {
            Some(bytes) => bytes,
            None => self.encoder.encode(offset, data)?,
        };
        let payload = bytes.len() as u64 - RECORD_HEADER_LEN - RECORD_END.len() as u64;
        debug_assert_eq!(record_len(payload), Some(bytes.len() as u64));
        write(self.sink.as_ref(), "record", self.next, &bytes)?;
        self.index.push(IndexEntryRaw {
            blk_offset: U64::new(self.next),
            blk_num: U32::new((offset / BLOCK_SIZE) as u32),
            blk_disk_size: U32::new(bytes.len() as u32),
        });
        self.next += bytes.len() as u64;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<(), DiskError> {
        let block_numbers: Vec<u32> = self.index.iter().map(|e| e.blk_num.get()).collect();
        let uuid = derived_id(&[b"zvhd2", &self.orig.to_le_bytes(), block_numbers.as_bytes()]);
        let sink = self.sink.as_ref();
        // The header as written at creation; the end marker is the same footer with the block
        // count filled in but the creation-time checksum (the driver does not refresh it).
        let initial = self.footer(uuid);
        let stale = checksum(&initial);
        write(sink, "header", 0, &sealed(initial))?;
        let mut marker = self.footer(uuid);
        marker.non_zero_blk_num = U32::new(self.index.len() as u32);
        marker.checksum = U32::new(stale);
        let mut at = self.next;
        write(sink, "end marker", at, &padded(&marker))?;
        at += HEADER_LEN;

        let per_segment = (u64::from(INDEX_SEG_SIZE) / INDEX_ENTRY_LEN) as usize;
        let index_offset = at;
        let index_segments = self.index.len().div_ceil(per_segment);
        for chunk in self.index.chunks(per_segment) {
            let mut segment = vec![0u8; INDEX_SEG_SIZE as usize];
            segment[..chunk.len() * INDEX_ENTRY_LEN as usize].copy_from_slice(chunk.as_bytes());
            write(sink, "index segment", at, &segment)?;
            at += u64::from(INDEX_SEG_SIZE);
        }

        let bitmap_offset = at;
        let bitmap_segments = self.blocks.div_ceil(BLOCKS_PER_SEGMENT);
        let mut bitmap = vec![0u8; (bitmap_segments * u64::from(BITMAP_SEG_SIZE)) as usize];
        for &block in &block_numbers {
            let block = u64::from(block);
            let byte = (block / BLOCKS_PER_SEGMENT) * u64::from(BITMAP_SEG_SIZE)
                + (block % BLOCKS_PER_SEGMENT) / 8;
            bitmap[byte as usize] |= 1 << (block % 8);
        }
        write(sink, "bitmap", at, &bitmap)?;
        at += bitmap.len() as u64;

        let mut last = self.footer(uuid);
        last.non_zero_blk_num = U32::new(self.index.len() as u32);
        last.index_lba = U64::new(index_offset);
        last.bitmap_lba = U64::new(bitmap_offset);
        last.index_size = U32::new((index_segments as u64 * u64::from(INDEX_SEG_SIZE)) as u32);
        last.bitmap_size = U32::new(bitmap.len() as u32);
        last.index_seg_size = U32::new(INDEX_SEG_SIZE);
        last.bitmap_seg_size = U32::new(BITMAP_SEG_SIZE);
        last.index_seg_num = U32::new(index_segments as u32);
        last.bitmap_seg_num = U32::new(bitmap_segments as u32);
        write(sink, "final footer", at, &sealed(last))?;
        finish_sink(sink, at + HEADER_LEN)
    }
}
