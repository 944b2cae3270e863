//! ZVHD and ZVHD2 readers.
//!
//! Both report `curr_size` as the virtual size (orig_size rounded up to 1 GiB, as the Huawei
//! driver does, and as `probe` reports); everything past `orig_size` reads as zeros.
//!
//! ZVHD is one zlib stream over all records, so a block can only be inflated after every
//! record before it. Opening scans the record headers (48 bytes per stored block, no
//! decompression) so `extent` is exact; reads go through one inflate cursor behind a mutex
//! plus a small cache of recently inflated blocks. Ascending reads (what converters do, even
//! with a few threads slightly out of order) cost one inflate per block; a read behind the
//! cursor and outside the cache restarts from the first record — O(position) work, so random
//! access to ZVHD is slow by construction.
//!
//! ZVHD2 blocks are independent frames found through the final footer's bitmap and index, all
//! validated at open (record offsets inside the data area, ascending and non-overlapping,
//! index order matching the bitmap).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use flate2::{Decompress, FlushDecompress, Status};
use zerocopy::FromBytes;

use super::header::{
    BLOCK_SIZE, BLOCKS_PER_SEGMENT, COMPRESS_METHODS, COMPRESS_ZLIB, FooterRaw, HEADER_LEN,
    INDEX_ENTRY_LEN, IndexEntryRaw, LEGACY_STREAM_VERSION, RECORD_END, RECORD_HEADER_LEN,
    RECORD_PREFIX, RecordHeaderRaw, ZVHD_COOKIE, ZVHD2_COOKIE, record_len,
};
use super::parser::{Zvhd2Layout, parse_footer, parse_zvhd2_layout};
use crate::Format;
use crate::disk::{
    CheckReport, Disk, DiskError, DiskInfo, Extent, ExtentKind, OpenOptions, SharedSource,
    check_range, read_exact_at, read_vec_at,
};

/// Recently inflated ZVHD blocks kept for reads that arrive slightly out of order (16 MiB).
const STREAM_CACHE_BLOCKS: usize = 8;
/// The ZVHD2 index is held in memory: 256 MiB = 16 Mi stored blocks (32 TiB of 2 MiB blocks).
const MAX_INDEX_BYTES: u64 = 256 << 20;

/// A stored block: where its record is and how much compressed payload it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    block: u64,
    offset: u64,
    payload: u64,
}

/// Reads and checks the 4 KiB header at 0.
fn header(source: &SharedSource, format: Format) -> Result<FooterRaw, DiskError> {
    let bytes = read_vec_at(source.as_ref(), format, "header", 0, HEADER_LEN)?;
    let cookie = if format == Format::Zvhd {
        ZVHD_COOKIE
    } else {
        ZVHD2_COOKIE
    };
    if bytes[..8] != cookie {
        return Err(DiskError::corrupt(format, "header", 0, "wrong cookie"));
    }
    Ok(parse_footer(&bytes, format, 0)?)
}

/// Reads the record header at `offset` and checks prefix, block number and end marker.
fn record_at(
    source: &SharedSource,
    format: Format,
    offset: u64,
    limit: u64,
) -> Result<Record, DiskError> {
    let corrupt = |reason: String| DiskError::corrupt(format, "record", offset, reason);
    let mut bytes = [0u8; RECORD_HEADER_LEN as usize];
    read_exact_at(source.as_ref(), format, "record header", offset, &mut bytes)?;
    let header =
        RecordHeaderRaw::read_from_bytes(&bytes).map_err(|_| corrupt("truncated header".into()))?;
    if header.prefix != RECORD_PREFIX {
        return Err(corrupt("does not start with 'hwstream bg'".into()));
    }
    let payload = u64::from(header.size.get());
    let len = record_len(payload).ok_or_else(|| corrupt("size overflows".into()))?;
    let end = offset
        .checked_add(len)
        .filter(|&end| end <= limit)
        .ok_or_else(|| corrupt(format!("{len}-byte record ends past the data area")))?;
    let mut marker = [0u8; 4];
    read_exact_at(source.as_ref(), format, "record end", end - 4, &mut marker)?;
    if marker != RECORD_END {
        return Err(corrupt("does not end with 'end'".into()));
    }
    Ok(Record {
        block: u64::from(header.curr_blk.get()),
        offset,
        payload,
    })
}

/// Feeds `input` to `inflate` and requires exactly one block of output: a compressed block that
/// inflates to more (a bomb) or less is corrupt.
fn inflate_block(
    inflate: &mut Decompress,
    input: &[u8],
    out: &mut [u8],
    format: Format,
    at: u64,
) -> Result<(), DiskError> {
    let corrupt = |reason: String| DiskError::corrupt(format, "compressed block", at, reason);
    let (mut used, mut made) = (0usize, 0usize);
    let mut spare = [0u8; 1];
    while used < input.len() {
        let (in_before, out_before) = (inflate.total_in(), inflate.total_out());
        let target: &mut [u8] = if made < out.len() {
            &mut out[made..]
        } else {
            &mut spare
        };
        let status = inflate
            .decompress(&input[used..], target, FlushDecompress::Sync)
            .map_err(|e| corrupt(format!("inflate failed: {e}")))?;
        let consumed = (inflate.total_in() - in_before) as usize;
        let produced = (inflate.total_out() - out_before) as usize;
        if made >= out.len() && produced > 0 {
            return Err(corrupt("inflates to more than one block".into()));
        }
        used += consumed;
        made += produced;
        if status == Status::StreamEnd {
            break;
        }
        if consumed == 0 && produced == 0 {
            return Err(corrupt("compressed data ends early".into()));
        }
    }
    if made != out.len() {
        return Err(corrupt(format!(
            "inflates to {made} bytes instead of {}",
            out.len()
        )));
    }
    Ok(())
}

/// The part shared by both readers: sizes and the map of stored blocks.
struct Blocks {
    format: Format,
    source: SharedSource,
    orig_size: u64,
    virtual_size: u64,
    block_size: u64,
    /// Stored blocks in ascending block order.
    records: Vec<Record>,
}

impl Blocks {
    fn find(&self, block: u64) -> Option<usize> {
        self.records.binary_search_by_key(&block, |r| r.block).ok()
    }

    fn extent(&self, offset: u64, max_len: u64) -> Extent {
        let length = max_len.min(self.virtual_size.saturating_sub(offset));
        let block = offset / self.block_size;
        let stored = |b: u64| b * self.block_size < self.orig_size && self.find(b).is_some();
        let kind = if stored(block) {
            ExtentKind::Data
        } else {
            ExtentKind::Zero
        };
        let mut end = (block + 1) * self.block_size;
        while end < offset + length && stored(end / self.block_size) == (kind == ExtentKind::Data) {
            end += self.block_size;
        }
        Extent {
            offset,
            length: (end - offset).min(length),
            kind,
        }
    }

    /// Calls `fill(record index, block offset within, destination)` for stored parts of
    /// `offset..offset+buf.len()` and zero-fills the rest.
    fn read(
        &self,
        offset: u64,
        buf: &mut [u8],
        mut fill: impl FnMut(usize, usize, &mut [u8]) -> Result<(), DiskError>,
    ) -> Result<(), DiskError> {
        check_range(self.virtual_size, offset, buf.len())?;
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let within = (at % self.block_size) as usize;
            let n = (self.block_size as usize - within).min(buf.len() - done);
            let chunk = &mut buf[done..done + n];
            match self.find(at / self.block_size) {
                Some(index) if at < self.orig_size => fill(index, within, chunk)?,
                _ => chunk.fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn payload(&self, record: &Record) -> Result<Vec<u8>, DiskError> {
        read_vec_at(
            self.source.as_ref(),
            self.format,
            "compressed block",
            record.offset + RECORD_HEADER_LEN,
            record.payload,
        )
    }

    fn check(&self) -> CheckReport {
        CheckReport {
            allocated_clusters: Some(self.records.len() as u64),
            total_clusters: Some(self.orig_size.div_ceil(self.block_size)),
            image_end_offset: Some(self.source.len()),
            ..CheckReport::default()
        }
    }
}

/// The inflate cursor of a ZVHD stream.
struct Cursor {
    inflate: Decompress,
    /// Index of the next record the cursor would inflate.
    next: usize,
    /// Recently inflated blocks: (record index, content).
    cache: VecDeque<(usize, Arc<Vec<u8>>)>,
}

impl Cursor {
    fn new() -> Cursor {
        Cursor {
            inflate: Decompress::new(true),
            next: 0,
            cache: VecDeque::with_capacity(STREAM_CACHE_BLOCKS),
        }
    }
}

pub(crate) struct ZvhdDisk {
    blocks: Blocks,
    cursor: Mutex<Cursor>,
}

impl ZvhdDisk {
    pub(crate) fn open(source: SharedSource, options: &OpenOptions) -> Result<ZvhdDisk, DiskError> {
        let format = Format::Zvhd;
        let footer = header(&source, format)?;
        let orig_size = footer.orig_size.get();
        let block_count = orig_size.div_ceil(BLOCK_SIZE);
        let len = source.len();
        let mut records = Vec::new();
        let mut offset = HEADER_LEN;
        let mut terminated = false;
        while offset < len {
            let mut cookie = [0u8; 8];
            read_exact_at(source.as_ref(), format, "record", offset, &mut cookie)?;
            if cookie == ZVHD_COOKIE {
                terminated = true;
                break;
            }
            let record = record_at(&source, format, offset, len)?;
            if record.block >= block_count
                || records
                    .last()
                    .is_some_and(|r: &Record| r.block >= record.block)
            {
                return Err(DiskError::corrupt(
                    format,
                    "record",
                    offset,
                    format!(
                        "block {} is out of order or beyond the {block_count} blocks",
                        record.block
                    ),
                ));
            }
            offset += record_len(record.payload).unwrap_or(u64::MAX);
            records.push(record);
        }
        if !terminated && !options.lenient {
            return Err(DiskError::corrupt(
                format,
                "trailing header copy",
                len,
                "the file ends without the header copy that closes the stream",
            ));
        }
        Ok(ZvhdDisk {
            blocks: Blocks {
                format,
                source,
                orig_size,
                virtual_size: footer.curr_size.get(),
                block_size: BLOCK_SIZE,
                records,
            },
            cursor: Mutex::new(Cursor::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Cursor> {
        // A panic mid-inflate leaves the cursor in an unknown state: start over.
        self.cursor.lock().unwrap_or_else(|poisoned| {
            let mut guard = poisoned.into_inner();
            *guard = Cursor::new();
            guard
        })
    }

    /// The content of stored record `index`, inflating forward (or from the start) as needed.
    fn block(&self, index: usize) -> Result<Arc<Vec<u8>>, DiskError> {
        let mut cursor = self.lock();
        if let Some((_, data)) = cursor.cache.iter().find(|(i, _)| *i == index) {
            return Ok(Arc::clone(data));
        }
        if cursor.next > index {
            *cursor = Cursor::new();
        }
        while cursor.next <= index {
            let record = self.blocks.records[cursor.next];
            let input = self.blocks.payload(&record)?;
            let mut out = vec![0u8; BLOCK_SIZE as usize];
            if let Err(e) = inflate_block(
                &mut cursor.inflate,
                &input,
                &mut out,
                Format::Zvhd,
                record.offset,
            ) {
                *cursor = Cursor::new();
                return Err(e);
            }
            let next = cursor.next;
            if cursor.cache.len() == STREAM_CACHE_BLOCKS {
                cursor.cache.pop_front();
            }
            cursor.cache.push_back((next, Arc::new(out)));
            cursor.next += 1;
        }
        Ok(Arc::clone(&cursor.cache.back().expect("just inserted").1))
    }
}

impl Disk for ZvhdDisk {
    fn format(&self) -> Format {
        Format::Zvhd
    }

    fn virtual_size(&self) -> u64 {
        self.blocks.virtual_size
    }

    fn granularity(&self) -> u64 {
        BLOCK_SIZE
    }

    fn extent(&self, offset: u64, max_len: u64) -> Result<Extent, DiskError> {
        Ok(self.blocks.extent(offset, max_len))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.blocks.read(offset, buf, |index, within, chunk| {
            let data = self.block(index)?;
            chunk.copy_from_slice(&data[within..within + chunk.len()]);
            Ok(())
        })
    }

    fn info(&self) -> DiskInfo {
        DiskInfo {
            cluster_size: Some(BLOCK_SIZE),
            details: vec![("orig-size".into(), self.blocks.orig_size.to_string())],
            ..DiskInfo::default()
        }
    }

    fn check(&self) -> Result<CheckReport, DiskError> {
        Ok(self.blocks.check())
    }
}

pub(crate) struct Zvhd2Disk {
    blocks: Blocks,
    layout: Zvhd2Layout,
}

impl Zvhd2Disk {
    pub(crate) fn open(
        source: SharedSource,
        _options: &OpenOptions,
    ) -> Result<Zvhd2Disk, DiskError> {
        let format = Format::Zvhd2;
        let first = header(&source, format)?;
        if first.zvhd2_version == LEGACY_STREAM_VERSION {
            return Err(DiskError::unsupported(
                "zvhd2 version 0 (the legacy stream-only layout without an index)",
            ));
        }
        let len = source.len();
        if len < 2 * HEADER_LEN {
            return Err(DiskError::corrupt(
                format,
                "final footer",
                len,
                "too short to hold a header and a final footer",
            ));
        }
        let at = len - HEADER_LEN;
        let bytes = read_vec_at(source.as_ref(), format, "final footer", at, HEADER_LEN)?;
        if bytes[..8] != ZVHD2_COOKIE {
            return Err(DiskError::corrupt(
                format,
                "final footer",
                at,
                "missing (no 'z2strm' cookie in the last 4 KiB)",
            ));
        }
        let footer = parse_footer(&bytes, format, at)?;
        let layout = parse_zvhd2_layout(&footer, at)?;
        let index_len = layout.non_zero * INDEX_ENTRY_LEN;
        if index_len > MAX_INDEX_BYTES {
            return Err(DiskError::too_large(
                format,
                "index",
                index_len,
                MAX_INDEX_BYTES,
            ));
        }
        let bitmap = read_vec_at(
            source.as_ref(),
            format,
            "bitmap",
            layout.bitmap_offset,
            layout.bitmap_len,
        )?;
        let index = read_vec_at(
            source.as_ref(),
            format,
            "index",
            layout.index_offset,
            index_len,
        )?;
        let records = records(&source, &layout, &bitmap, &index)?;
        Ok(Zvhd2Disk {
            blocks: Blocks {
                format,
                source,
                orig_size: footer.orig_size.get(),
                virtual_size: footer.curr_size.get(),
                block_size: u64::from(layout.block_size),
                records,
            },
            layout,
        })
    }

    fn inflate(&self, record: &Record, out: &mut [u8]) -> Result<(), DiskError> {
        let input = self.blocks.payload(record)?;
        let at = record.offset;
        if self.layout.compress_method == COMPRESS_ZLIB {
            return inflate_block(&mut Decompress::new(true), &input, out, Format::Zvhd2, at);
        }
        let corrupt =
            |reason: String| DiskError::corrupt(Format::Zvhd2, "compressed block", at, reason);
        let made = zstd::bulk::decompress_to_buffer(&input, out)
            .map_err(|e| corrupt(format!("zstd frame does not decode to one block: {e}")))?;
        if made != out.len() {
            return Err(corrupt(format!(
                "zstd frame decodes to {made} bytes instead of {}",
                out.len()
            )));
        }
        Ok(())
    }
}

/// Joins bitmap and index: the k-th set bit is the k-th index entry; every record is checked.
fn records(
    source: &SharedSource,
    layout: &Zvhd2Layout,
    bitmap: &[u8],
    index: &[u8],
) -> Result<Vec<Record>, DiskError> {
    let format = Format::Zvhd2;
    let mut records = Vec::with_capacity(layout.non_zero as usize);
    let mut entries = index.chunks_exact(INDEX_ENTRY_LEN as usize);
    let segment_bytes = (BLOCKS_PER_SEGMENT / 8) as usize;
    let mut next_free = HEADER_LEN;
    for block in 0..layout.blocks {
        let segment = (block / BLOCKS_PER_SEGMENT) as usize;
        let bit = block % BLOCKS_PER_SEGMENT;
        let byte = segment * segment_bytes + (bit / 8) as usize;
        if bitmap[byte] & (1 << (bit % 8)) == 0 {
            continue;
        }
        let entry_at = layout.index_offset + records.len() as u64 * INDEX_ENTRY_LEN;
        let corrupt = |reason: String| DiskError::corrupt(format, "index", entry_at, reason);
        let Some(raw) = entries.next() else {
            return Err(corrupt(format!(
                "the bitmap marks more than the {} stored blocks",
                layout.non_zero
            )));
        };
        let entry =
            IndexEntryRaw::read_from_bytes(raw).map_err(|_| corrupt("truncated entry".into()))?;
        let (offset, disk_size) = (entry.blk_offset.get(), u64::from(entry.blk_disk_size.get()));
        if u64::from(entry.blk_num.get()) != block {
            return Err(corrupt(format!(
                "entry names block {} where the bitmap says {block}",
                entry.blk_num.get()
            )));
        }
        if offset < next_free
            || offset
                .checked_add(disk_size)
                .is_none_or(|e| e > layout.data_end)
        {
            return Err(corrupt(format!(
                "record of block {block} at {offset} (+{disk_size}) overlaps another or lies \
                 outside the data area"
            )));
        }
        let record = record_at(source, format, offset, layout.data_end)?;
        if record.block != block || record_len(record.payload) != Some(disk_size) {
            return Err(DiskError::corrupt(
                format,
                "record",
                offset,
                format!(
                    "header says block {} with {} payload bytes; the index says block {block} \
                     in {disk_size} bytes",
                    record.block, record.payload
                ),
            ));
        }
        next_free = offset + disk_size;
        records.push(record);
    }
    if (records.len() as u64) != layout.non_zero {
        return Err(DiskError::corrupt(
            format,
            "bitmap",
            layout.bitmap_offset,
            format!(
                "{} blocks marked present, the footer says {}",
                records.len(),
                layout.non_zero
            ),
        ));
    }
    Ok(records)
}

impl Disk for Zvhd2Disk {
    fn format(&self) -> Format {
        Format::Zvhd2
    }

    fn virtual_size(&self) -> u64 {
        self.blocks.virtual_size
    }

    fn granularity(&self) -> u64 {
        self.blocks.block_size
    }

    fn extent(&self, offset: u64, max_len: u64) -> Result<Extent, DiskError> {
        Ok(self.blocks.extent(offset, max_len))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let block_size = self.blocks.block_size as usize;
        let mut scratch = Vec::new();
        self.blocks.read(offset, buf, |index, within, chunk| {
            let record = self.blocks.records[index];
            if within == 0 && chunk.len() == block_size {
                return self.inflate(&record, chunk);
            }
            scratch.resize(block_size, 0);
            self.inflate(&record, &mut scratch)?;
            chunk.copy_from_slice(&scratch[within..within + chunk.len()]);
            Ok(())
        })
    }

    fn info(&self) -> DiskInfo {
        DiskInfo {
            cluster_size: Some(self.blocks.block_size),
            subformat: Some(COMPRESS_METHODS[usize::from(self.layout.compress_method)].into()),
            details: vec![
                ("orig-size".into(), self.blocks.orig_size.to_string()),
                (
                    "compression-type".into(),
                    COMPRESS_METHODS[usize::from(self.layout.compress_method)].into(),
                ),
            ],
            ..DiskInfo::default()
        }
    }

    fn check(&self) -> Result<CheckReport, DiskError> {
        Ok(self.blocks.check())
    }
}
