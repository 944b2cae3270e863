//! Conversion between formats ([`convert`]), content comparison ([`compare`]) and the extent
//! map ([`map`]): the engine behind `ims img convert|compare|map`.
//!
//! [`convert`] is a three-stage pipeline inside one `std::thread::scope`:
//! 1. a *planner* walks the source's [`Disk::extent`]s in batches of whole writer blocks,
//!    skips batches that are entirely holes, and queues the rest (with their extents);
//! 2. *workers* (one per core by default) read a batch's data extents (holes are zero-filled,
//!    not read), drop all-zero blocks, and run the writer's [`BlockEncoder`] on the others;
//! 3. the calling thread hands the blocks to [`DiskWriter::write_block`] strictly in
//!    ascending order, reordering finished batches as needed.
//!
//! A fixed number of batch tokens bounds the memory in flight ([`MAX_IN_FLIGHT_BYTES`]):
//! the planner takes a token per batch and the writer returns it once the batch is written,
//! so RSS stays flat whatever the disk size. Batch buffers are recycled.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};

use crate::disk::{Disk, DiskError, DiskErrorKind, Extent, ExtentKind};
use crate::write::{BlockEncoder, DiskWriter};

/// Bytes one batch covers (rounded to whole writer blocks, at least one block): large enough
/// that per-batch costs (extent walk, channel hops, a syscall or two) vanish next to the copy,
/// small enough that a few batches per thread stay within [`MAX_IN_FLIGHT_BYTES`].
pub const BATCH_BYTES: u64 = 2 << 20;

/// Upper bound on batch buffers alive at once (read data plus encoded output, ~2× a batch
/// each): the converter's share of peak RSS. It is exceeded only when a writer's block size
/// is so large that `threads + 1` batches do not fit; then `threads + 1` batches are used.
pub const MAX_IN_FLIGHT_BYTES: u64 = 40 << 20;

/// Largest extent a single `extent()` query asks about in [`map`] and [`compare`].
const MAP_QUERY_BYTES: u64 = 1 << 30;

/// Bytes compared per read in [`compare`].
const COMPARE_CHUNK: usize = 4 << 20;

/// How to run a conversion.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// Worker threads; 0 = one per available core.
    pub threads: usize,
    /// Set from another thread to stop the conversion (it then fails with `Cancelled`).
    pub cancel: Option<Arc<AtomicBool>>,
}

/// What a conversion did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConvertStats {
    pub virtual_size: u64,
    /// Bytes read from the source's data extents.
    pub bytes_read: u64,
    /// Blocks handed to the writer (non-zero blocks).
    pub blocks_written: u64,
    /// Virtual bytes of the blocks handed to the writer.
    pub data_bytes: u64,
    /// Sum of the encoder's output sizes (0 without an encoder).
    pub encoded_bytes: u64,
}

/// Why a conversion, comparison or map failed.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("reading the source: {0}")]
    ReadingSource(#[source] DiskError),
    #[error("encoding the block at offset {offset}: {source}")]
    EncodingBlock {
        offset: u64,
        #[source]
        source: DiskError,
    },
    #[error("writing the block at offset {offset}: {source}")]
    WritingBlock {
        offset: u64,
        #[source]
        source: DiskError,
    },
    #[error("finishing the output image: {0}")]
    Finishing(#[source] DiskError),
    #[error("the source's extent map is inconsistent at offset {offset}: {reason}")]
    BadExtent { offset: u64, reason: String },
    #[error("the writer's block size {0} is not usable (must be a positive multiple of 512)")]
    BadBlockSize(u64),
    #[error("a conversion worker thread panicked")]
    WorkerPanicked,
    #[error("cancelled")]
    Cancelled,
}

/// The small stable kind callers branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConvertErrorKind {
    /// The source could not be read (see the inner [`DiskErrorKind`] for details).
    Source(DiskErrorKind),
    /// The output could not be encoded, written or finished.
    Output(DiskErrorKind),
    Cancelled,
    Internal,
}

impl ConvertError {
    pub fn kind(&self) -> ConvertErrorKind {
        match self {
            ConvertError::ReadingSource(e) => ConvertErrorKind::Source(e.kind()),
            ConvertError::BadExtent { .. } => ConvertErrorKind::Source(DiskErrorKind::Corrupt),
            ConvertError::EncodingBlock { source, .. }
            | ConvertError::WritingBlock { source, .. } => ConvertErrorKind::Output(source.kind()),
            ConvertError::Finishing(e) => ConvertErrorKind::Output(e.kind()),
            ConvertError::Cancelled => ConvertErrorKind::Cancelled,
            ConvertError::BadBlockSize(_) | ConvertError::WorkerPanicked => {
                ConvertErrorKind::Internal
            }
        }
    }
}

/// `true` when every byte of `buf` is zero. Scans 256-byte chunks with a branch-free OR that
/// the compiler vectorises, exiting at the first non-zero chunk.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(256);
    for chunk in &mut chunks {
        if chunk.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

/// One batch of consecutive writer blocks, as the planner queues it.
struct Job {
    seq: u64,
    offset: u64,
    length: u64,
    /// The source's extents covering `offset..offset+length`, in order.
    extents: Vec<Extent>,
}

/// A non-zero block inside a finished batch (or, without an encoder, a run of them).
struct Block {
    offset: u64,
    /// Range of the block inside the batch buffer.
    start: usize,
    len: usize,
    encoded: Option<Vec<u8>>,
}

/// A batch ready for the writer.
struct Done {
    end: u64,
    buffer: Vec<u8>,
    blocks: Vec<Block>,
    bytes_read: u64,
}

type Outcome = Result<Done, ConvertError>;

/// Converts `source` into `writer`'s format. `progress(done, total)` is called on the calling
/// thread after each written batch (and once at the end), in virtual bytes.
pub fn convert(
    source: &dyn Disk,
    mut writer: Box<dyn DiskWriter>,
    options: &ConvertOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ConvertStats, ConvertError> {
    let block = writer.block_size();
    if block == 0 || !block.is_multiple_of(512) {
        return Err(ConvertError::BadBlockSize(block));
    }
    let total = source.virtual_size();
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
        n => n,
    };
    let batch = BATCH_BYTES.div_ceil(block).max(1).saturating_mul(block);
    let tokens = in_flight_batches(batch, threads);
    let encoder = writer.encoder();
    let cancel = options.cancel.clone().unwrap_or_default();
    let abort = AtomicBool::new(false);
    let pool = Mutex::new(Vec::<Vec<u8>>::new());

    let (job_tx, job_rx) = sync_channel::<Job>(tokens);
    let job_rx = Mutex::new(job_rx);
    let (done_tx, done_rx) = channel::<(u64, Outcome)>();
    let (token_tx, token_rx) = sync_channel::<()>(tokens);
    for _ in 0..tokens {
        // Cannot fail: the channel holds exactly `tokens` items and the receiver is alive.
        let _ = token_tx.send(());
    }

    let mut stats = ConvertStats {
        virtual_size: total,
        ..ConvertStats::default()
    };
    let result = std::thread::scope(|scope| {
        let planner_done = done_tx.clone();
        let (abort, cancel) = (&abort, &cancel);
        scope.spawn(move || {
            plan(
                source,
                total,
                batch,
                &token_rx,
                &job_tx,
                &planner_done,
                abort,
                cancel,
            )
        });
        for _ in 0..threads {
            let (job_rx, done_tx, pool, encoder) = (&job_rx, done_tx.clone(), &pool, &encoder);
            scope.spawn(move || {
                work(
                    source,
                    block,
                    job_rx,
                    &done_tx,
                    pool,
                    encoder.as_deref(),
                    abort,
                )
            });
        }
        drop(done_tx);
        let written = write_in_order(
            writer.as_mut(),
            done_rx,
            token_tx,
            &pool,
            cancel,
            &mut stats,
            &mut |done| progress(done, total),
        );
        if written.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        written
    });
    result?;
    writer.finish().map_err(ConvertError::Finishing)?;
    progress(total, total);
    Ok(stats)
}

/// How many batches may be in flight: enough to keep every worker busy while the writer
/// drains one, capped by [`MAX_IN_FLIGHT_BYTES`] (a batch costs up to ~2× its size).
fn in_flight_batches(batch: u64, threads: usize) -> usize {
    let by_memory = (MAX_IN_FLIGHT_BYTES / batch.saturating_mul(2).max(1)) as usize;
    by_memory.min(threads * 2 + 2).max(threads + 1)
}

/// The planner: queues every batch that is not entirely a hole, numbering them in order.
/// Stops on the first error (queued as the next outcome), on abort, or at the end.
#[allow(clippy::too_many_arguments)]
fn plan(
    source: &dyn Disk,
    total: u64,
    batch: u64,
    tokens: &Receiver<()>,
    jobs: &SyncSender<Job>,
    done: &std::sync::mpsc::Sender<(u64, Outcome)>,
    abort: &AtomicBool,
    cancel: &AtomicBool,
) {
    let mut seq = 0u64;
    let mut offset = 0u64;
    while offset < total {
        if abort.load(Ordering::Relaxed) || cancel.load(Ordering::Relaxed) {
            return;
        }
        let length = batch.min(total - offset);
        let extents = match batch_extents(source, offset, length) {
            Ok(extents) => extents,
            Err(error) => {
                let _ = done.send((seq, Err(error)));
                return;
            }
        };
        let all_hole = extents.iter().all(|e| e.kind == ExtentKind::Zero);
        if !all_hole {
            // The writer returns a token per written batch; none left = wait for it. A
            // closed channel means the writer stopped: nothing more to do.
            if tokens.recv().is_err() {
                return;
            }
            let job = Job {
                seq,
                offset,
                length,
                extents,
            };
            if jobs.send(job).is_err() {
                return;
            }
            seq += 1;
        }
        offset += length;
    }
}

/// The source's extents covering `offset..offset+length`, validated against the contract.
fn batch_extents(source: &dyn Disk, offset: u64, length: u64) -> Result<Vec<Extent>, ConvertError> {
    let end = offset + length;
    let mut extents: Vec<Extent> = Vec::new();
    let mut at = offset;
    while at < end {
        let extent = source
            .extent(at, end - at)
            .map_err(ConvertError::ReadingSource)?;
        if extent.offset != at || extent.length == 0 || extent.length > end - at {
            return Err(ConvertError::BadExtent {
                offset: at,
                reason: format!("asked for {} bytes, got {extent:?}", end - at),
            });
        }
        at += extent.length;
        match extents.last_mut() {
            Some(last) if last.kind == extent.kind => last.length += extent.length,
            _ => extents.push(extent),
        }
    }
    Ok(extents)
}

/// A worker: reads, zero-detects and encodes batches until the planner is done. After an
/// abort it keeps draining (and dropping) queued jobs so the planner never blocks on a full
/// queue; a panic in a reader or encoder becomes an error outcome instead of a lost batch.
fn work(
    source: &dyn Disk,
    block: u64,
    jobs: &Mutex<Receiver<Job>>,
    done: &std::sync::mpsc::Sender<(u64, Outcome)>,
    pool: &Mutex<Vec<Vec<u8>>>,
    encoder: Option<&dyn BlockEncoder>,
    abort: &AtomicBool,
) {
    loop {
        // A poisoned lock only means another thread panicked; the receiver is still sound.
        let job = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(job) = job else {
            return;
        };
        if abort.load(Ordering::Relaxed) {
            continue;
        }
        let seq = job.seq;
        let buffer = pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            run_job(source, block, job, buffer, encoder)
        }))
        .unwrap_or(Err(ConvertError::WorkerPanicked));
        // The writer stopped: keep draining until the planner notices.
        let _ = done.send((seq, outcome));
    }
}

fn run_job(
    source: &dyn Disk,
    block: u64,
    job: Job,
    mut buffer: Vec<u8>,
    encoder: Option<&dyn BlockEncoder>,
) -> Outcome {
    // `length` ≤ the batch size, which fits in memory by construction.
    let len = job.length as usize;
    buffer.resize(len, 0);
    let mut bytes_read = 0u64;
    for extent in &job.extents {
        let start = (extent.offset - job.offset) as usize;
        let slice = &mut buffer[start..start + extent.length as usize];
        match extent.kind {
            ExtentKind::Zero => slice.fill(0),
            ExtentKind::Data => {
                source
                    .read_at(extent.offset, slice)
                    .map_err(ConvertError::ReadingSource)?;
                bytes_read += extent.length;
            }
        }
    }
    let mut blocks: Vec<Block> = Vec::new();
    let mut start = 0usize;
    while start < len {
        let end = (start + block as usize).min(len);
        let offset = job.offset + start as u64;
        let data = &buffer[start..end];
        if !is_zero(data) {
            match encoder {
                Some(encoder) => {
                    let encoded = encoder
                        .encode(offset, data)
                        .map_err(|source| ConvertError::EncodingBlock { offset, source })?;
                    blocks.push(Block {
                        offset,
                        start,
                        len: end - start,
                        encoded: Some(encoded),
                    });
                }
                // Without an encoder, consecutive blocks form one run (one write_blocks call).
                None => match blocks.last_mut() {
                    Some(run) if run.start + run.len == start => run.len += end - start,
                    _ => blocks.push(Block {
                        offset,
                        start,
                        len: end - start,
                        encoded: None,
                    }),
                },
            }
        }
        start = end;
    }
    Ok(Done {
        end: job.offset + job.length,
        buffer,
        blocks,
        bytes_read,
    })
}

/// The calling thread's part: writes finished batches in sequence order.
fn write_in_order(
    writer: &mut dyn DiskWriter,
    done: Receiver<(u64, Outcome)>,
    tokens: SyncSender<()>,
    pool: &Mutex<Vec<Vec<u8>>>,
    cancel: &AtomicBool,
    stats: &mut ConvertStats,
    progress: &mut dyn FnMut(u64),
) -> Result<(), ConvertError> {
    let block_size = writer.block_size();
    let mut waiting: BTreeMap<u64, Outcome> = BTreeMap::new();
    let mut next = 0u64;
    // Ends when every sender (planner and workers) is gone and the queue is drained.
    for (seq, outcome) in done.iter() {
        if cancel.load(Ordering::Relaxed) {
            return Err(ConvertError::Cancelled);
        }
        waiting.insert(seq, outcome);
        while let Some(outcome) = waiting.remove(&next) {
            let batch = outcome?;
            for block in batch.blocks {
                let data = &batch.buffer[block.start..block.start + block.len];
                stats.blocks_written += (block.len as u64).div_ceil(block_size);
                stats.data_bytes += block.len as u64;
                let offset = block.offset;
                let written = match block.encoded {
                    Some(encoded) => {
                        stats.encoded_bytes += encoded.len() as u64;
                        writer.write_block(offset, data, Some(encoded))
                    }
                    None => writer.write_blocks(offset, data),
                };
                written.map_err(|source| ConvertError::WritingBlock { offset, source })?;
            }
            stats.bytes_read += batch.bytes_read;
            pool.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(batch.buffer);
            // The planner may have finished already: a closed token channel is fine.
            let _ = tokens.try_send(());
            progress(batch.end);
            next += 1;
        }
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(ConvertError::Cancelled);
    }
    // Outcomes left over mean a batch never arrived: a worker died without reporting.
    match waiting.into_values().next() {
        Some(Err(error)) => Err(error),
        Some(Ok(_)) => Err(ConvertError::WorkerPanicked),
        None => Ok(()),
    }
}

/// The result of [`compare`], as `qemu-img compare` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// Same content (a larger disk's extra tail reads as zeros, unless strict).
    Identical,
    /// Content differs first at this virtual offset.
    DiffersAt(u64),
    /// Strict mode: the virtual sizes differ.
    SizeDiffers { a: u64, b: u64 },
}

/// Compares the virtual content of two disks. Like `qemu-img compare`, a size difference is
/// only a difference when the larger disk's tail is not all zeros, unless `strict`.
pub fn compare(a: &dyn Disk, b: &dyn Disk, strict: bool) -> Result<Comparison, ConvertError> {
    let (size_a, size_b) = (a.virtual_size(), b.virtual_size());
    if strict && size_a != size_b {
        return Ok(Comparison::SizeDiffers {
            a: size_a,
            b: size_b,
        });
    }
    let common = size_a.min(size_b);
    let mut buf_a = vec![0u8; COMPARE_CHUNK];
    let mut buf_b = vec![0u8; COMPARE_CHUNK];
    let mut offset = 0u64;
    while offset < common {
        let want = (common - offset).min(COMPARE_CHUNK as u64);
        let ea = a
            .extent(offset, want)
            .map_err(ConvertError::ReadingSource)?;
        let eb = b
            .extent(offset, want)
            .map_err(ConvertError::ReadingSource)?;
        let len = checked_extent(ea, offset, want)?.min(checked_extent(eb, offset, want)?);
        if ea.kind == ExtentKind::Zero && eb.kind == ExtentKind::Zero {
            offset += len;
            continue;
        }
        let n = len as usize;
        fill(a, ea.kind, offset, &mut buf_a[..n])?;
        fill(b, eb.kind, offset, &mut buf_b[..n])?;
        if buf_a[..n] != buf_b[..n] {
            let at = buf_a[..n]
                .iter()
                .zip(&buf_b[..n])
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            return Ok(Comparison::DiffersAt(offset + at as u64));
        }
        offset += len;
    }
    let longer = if size_a > size_b { a } else { b };
    match first_nonzero(longer, common, &mut buf_a)? {
        Some(at) => Ok(Comparison::DiffersAt(at)),
        None => Ok(Comparison::Identical),
    }
}

fn checked_extent(extent: Extent, offset: u64, want: u64) -> Result<u64, ConvertError> {
    if extent.offset != offset || extent.length == 0 || extent.length > want {
        return Err(ConvertError::BadExtent {
            offset,
            reason: format!("asked for {want} bytes, got {extent:?}"),
        });
    }
    Ok(extent.length)
}

fn fill(
    disk: &dyn Disk,
    kind: ExtentKind,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), ConvertError> {
    match kind {
        ExtentKind::Zero => {
            buf.fill(0);
            Ok(())
        }
        ExtentKind::Data => disk
            .read_at(offset, buf)
            .map_err(ConvertError::ReadingSource),
    }
}

/// The first non-zero byte of `disk` at or after `from`.
fn first_nonzero(disk: &dyn Disk, from: u64, buf: &mut [u8]) -> Result<Option<u64>, ConvertError> {
    let size = disk.virtual_size();
    let mut offset = from;
    while offset < size {
        let want = (size - offset).min(buf.len() as u64);
        let extent = disk
            .extent(offset, want)
            .map_err(ConvertError::ReadingSource)?;
        let len = checked_extent(extent, offset, want)?;
        if extent.kind == ExtentKind::Data {
            let chunk = &mut buf[..len as usize];
            disk.read_at(offset, chunk)
                .map_err(ConvertError::ReadingSource)?;
            if let Some(i) = chunk.iter().position(|&b| b != 0) {
                return Ok(Some(offset + i as u64));
            }
        }
        offset += len;
    }
    Ok(None)
}

/// The disk's extents, adjacent runs of one kind merged (`qemu-img map`).
pub fn map(disk: &dyn Disk) -> Result<Vec<Extent>, ConvertError> {
    let size = disk.virtual_size();
    let mut extents: Vec<Extent> = Vec::new();
    let mut offset = 0u64;
    while offset < size {
        let want = (size - offset).min(MAP_QUERY_BYTES);
        let extent = disk
            .extent(offset, want)
            .map_err(ConvertError::ReadingSource)?;
        let len = checked_extent(extent, offset, want)?;
        match extents.last_mut() {
            Some(last) if last.kind == extent.kind => last.length += len,
            _ => extents.push(extent),
        }
        offset += len;
    }
    Ok(extents)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::Format;
    use crate::disk::{OpenOptions, open};
    use crate::write::{CreateOptions, MemorySink, Sink, create};

    fn raw_disk(bytes: Vec<u8>) -> Box<dyn Disk> {
        open(Arc::new(bytes), Format::Raw, &OpenOptions::default()).unwrap()
    }

    /// Content with data, zero runs and a non-aligned tail.
    fn sample(len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        for (i, b) in bytes.iter_mut().enumerate() {
            let block = i / 65536;
            if block % 3 != 1 {
                *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] | 1;
            }
        }
        bytes
    }

    /// A writer that records blocks in memory and an encoder that reverses bytes, to check
    /// ordering and encoder plumbing.
    struct Recorder {
        block: u64,
        seen: Arc<Mutex<Vec<Seen>>>,
        fail_at: Option<u64>,
    }

    /// (offset, data, encoded) of one write_block call.
    type Seen = (u64, Vec<u8>, Option<Vec<u8>>);

    struct Reverse;

    impl BlockEncoder for Reverse {
        fn encode(&self, _offset: u64, data: &[u8]) -> Result<Vec<u8>, DiskError> {
            Ok(data.iter().rev().copied().collect())
        }
    }

    impl DiskWriter for Recorder {
        fn block_size(&self) -> u64 {
            self.block
        }
        fn encoder(&self) -> Option<Arc<dyn BlockEncoder>> {
            Some(Arc::new(Reverse))
        }
        fn write_block(
            &mut self,
            offset: u64,
            data: &[u8],
            encoded: Option<Vec<u8>>,
        ) -> Result<(), DiskError> {
            if self.fail_at == Some(offset) {
                return Err(DiskError::Unsupported {
                    what: "test failure".into(),
                });
            }
            self.seen
                .lock()
                .unwrap()
                .push((offset, data.to_vec(), encoded));
            Ok(())
        }
        fn finish(self: Box<Self>) -> Result<(), DiskError> {
            Ok(())
        }
    }

    #[test]
    fn blocks_arrive_in_order_encoded_and_zero_blocks_are_skipped() {
        let bytes = sample(11 * 65536 + 1000);
        let disk = raw_disk(bytes.clone());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let writer = Recorder {
            block: 65536,
            seen: seen.clone(),
            fail_at: None,
        };
        let options = ConvertOptions {
            threads: 3,
            cancel: None,
        };
        let mut calls = Vec::new();
        let stats = convert(disk.as_ref(), Box::new(writer), &options, &mut |d, t| {
            calls.push((d, t))
        })
        .unwrap();
        let seen = seen.lock().unwrap();
        let offsets: Vec<u64> = seen.iter().map(|(o, ..)| *o).collect();
        // Blocks 1, 4, 7, 10 are zeros; the tail block 11 is partial (1000 bytes + zeros up
        // to the 512-byte virtual size).
        assert_eq!(offsets, [0, 2, 3, 5, 6, 8, 9, 11].map(|b| b * 65536));
        for (offset, data, encoded) in seen.iter() {
            let start = *offset as usize;
            let end = (start + 65536).min(disk.virtual_size() as usize);
            let mut expected = bytes[start..end.min(bytes.len())].to_vec();
            expected.resize(end - start, 0);
            assert_eq!(data, &expected);
            let reversed: Vec<u8> = expected.iter().rev().copied().collect();
            assert_eq!(encoded.as_deref(), Some(reversed.as_slice()));
        }
        assert_eq!(stats.blocks_written, 8);
        assert_eq!(
            calls.last(),
            Some(&(disk.virtual_size(), disk.virtual_size()))
        );
    }

    #[test]
    fn a_writer_error_stops_the_conversion_and_names_the_block() {
        let disk = raw_disk(sample(40 << 20));
        let writer = Recorder {
            block: 65536,
            seen: Arc::default(),
            fail_at: Some(3 * 65536),
        };
        let error = convert(
            disk.as_ref(),
            Box::new(writer),
            &ConvertOptions::default(),
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(
            matches!(error, ConvertError::WritingBlock { offset, .. } if offset == 3 * 65536),
            "{error}"
        );
    }

    #[test]
    fn a_cancelled_conversion_fails_with_cancelled() {
        let disk = raw_disk(sample(40 << 20));
        let cancel = Arc::new(AtomicBool::new(false));
        let options = ConvertOptions {
            threads: 2,
            cancel: Some(cancel.clone()),
        };
        let writer = Recorder {
            block: 65536,
            seen: Arc::default(),
            fail_at: None,
        };
        let error = convert(disk.as_ref(), Box::new(writer), &options, &mut |done, _| {
            if done >= 4 << 20 {
                cancel.store(true, Ordering::Relaxed);
            }
        })
        .unwrap_err();
        assert_eq!(error.kind(), ConvertErrorKind::Cancelled);
    }

    #[test]
    fn raw_to_raw_round_trips_and_compare_agrees() {
        let bytes = sample(3 * 1024 * 1024 + 512);
        let disk = raw_disk(bytes.clone());
        let sink = Arc::new(MemorySink::new());
        let writer = create(
            Box::new(SharedSink(sink.clone())),
            Format::Raw,
            disk.virtual_size(),
            &CreateOptions::default(),
        )
        .unwrap();
        convert(
            disk.as_ref(),
            writer,
            &ConvertOptions::default(),
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(sink.contents(), bytes);
        let copy = raw_disk(sink.contents());
        assert_eq!(
            compare(disk.as_ref(), copy.as_ref(), false).unwrap(),
            Comparison::Identical
        );
        let mut changed = bytes.clone();
        changed[2_000_001] ^= 0x40;
        let changed = raw_disk(changed);
        assert_eq!(
            compare(disk.as_ref(), changed.as_ref(), false).unwrap(),
            Comparison::DiffersAt(2_000_001)
        );
    }

    #[test]
    fn compare_treats_a_zero_tail_as_equal_unless_strict() {
        let short = raw_disk(vec![5u8; 1024]);
        let mut longer = vec![5u8; 1024];
        longer.resize(4096, 0);
        let long = raw_disk(longer.clone());
        assert_eq!(
            compare(short.as_ref(), long.as_ref(), false).unwrap(),
            Comparison::Identical
        );
        assert_eq!(
            compare(short.as_ref(), long.as_ref(), true).unwrap(),
            Comparison::SizeDiffers { a: 1024, b: 4096 }
        );
        longer[3000] = 1;
        let long = raw_disk(longer);
        assert_eq!(
            compare(short.as_ref(), long.as_ref(), false).unwrap(),
            Comparison::DiffersAt(3000)
        );
    }

    #[test]
    fn map_merges_runs() {
        let disk = raw_disk(vec![1u8; 1000]);
        let extents = map(disk.as_ref()).unwrap();
        assert_eq!(
            extents
                .iter()
                .map(|e| (e.offset, e.length, e.kind))
                .collect::<Vec<_>>(),
            [(0, 1000, ExtentKind::Data), (1000, 24, ExtentKind::Zero)]
        );
    }

    #[test]
    fn zero_detection_finds_a_single_bit_anywhere() {
        let mut buf = vec![0u8; 4096 + 7];
        assert!(is_zero(&buf));
        for at in [0, 255, 256, 4095, 4096 + 6] {
            buf[at] = 0x80;
            assert!(!is_zero(&buf), "bit at {at}");
            buf[at] = 0;
        }
    }

    /// Lets a test keep a handle on the sink it hands to a writer.
    struct SharedSink(Arc<MemorySink>);

    impl Sink for SharedSink {
        fn write_all_at(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
            self.0.write_all_at(offset, buf)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.0.set_len(len)
        }
        fn sync(&self) -> std::io::Result<()> {
            self.0.sync()
        }
    }
}
