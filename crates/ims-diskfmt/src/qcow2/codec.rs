//! Compressed-cluster codecs shared by qcow2 and qcow: raw deflate (4 KiB window, as qemu
//! writes it) and zstd frames. Decoders stop at exactly one cluster of output (decompression
//! bombs cannot grow past it); codec state is reused per thread.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};
use zstd::zstd_safe::{CCtx, DCtx, InBuffer, OutBuffer, ResetDirective};

use super::Compression;
use crate::disk::DiskError;

/// Distinguishes open disks in the per-thread decoded-cluster cache.
static NEXT_DISK_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh id for a disk that uses [`copy_from_cluster`].
pub(crate) fn next_disk_id() -> u64 {
    NEXT_DISK_ID.fetch_add(1, Ordering::Relaxed)
}

/// The last compressed cluster a thread decoded, keyed by (disk id, descriptor): readers that
/// ask for a cluster piece by piece decode it once.
#[derive(Default)]
struct DecodedCluster {
    key: Option<(u64, u64)>,
    input: Vec<u8>,
    output: Vec<u8>,
}

/// qemu deflates with `windowBits = -12`: readers older than qemu 10 need a window this small.
const DEFLATE_WINDOW_BITS: u8 = 12;
/// qemu's zstd level (`ZSTD_CLEVEL_DEFAULT`).
const ZSTD_LEVEL: i32 = 3;

thread_local! {
    static INFLATE: RefCell<Option<Decompress>> = const { RefCell::new(None) };
    static DEFLATE: RefCell<Option<Compress>> = const { RefCell::new(None) };
    static ZSTD_D: RefCell<Option<DCtx<'static>>> = const { RefCell::new(None) };
    static ZSTD_C: RefCell<Option<CCtx<'static>>> = const { RefCell::new(None) };
    static DECODED: RefCell<DecodedCluster> = RefCell::new(DecodedCluster::default());
}

/// Copies bytes `offset_in..offset_in + out.len()` of the `cluster_len`-byte cluster `key`
/// into `out`, running `decode(input scratch, cluster)` first unless this thread decoded that
/// cluster last.
pub(crate) fn copy_from_cluster(
    key: (u64, u64),
    cluster_len: usize,
    decode: impl FnOnce(&mut Vec<u8>, &mut [u8]) -> Result<(), DiskError>,
    offset_in: usize,
    out: &mut [u8],
) -> Result<(), DiskError> {
    DECODED.with(|cell| {
        let mut slot = cell.borrow_mut();
        let cached = &mut *slot;
        if cached.key != Some(key) || cached.output.len() != cluster_len {
            cached.key = None;
            cached.output.resize(cluster_len, 0);
            decode(&mut cached.input, &mut cached.output)?;
            cached.key = Some(key);
        }
        out.copy_from_slice(&cached.output[offset_in..offset_in + out.len()]);
        Ok(())
    })
}

/// Why a compressed stream could not be decoded.
#[derive(Debug)]
pub(crate) struct DecodeError(pub String);

/// Decodes `input` into exactly `output.len()` bytes. Trailing input is ignored (the stream's
/// length is only known to the sector); producing fewer bytes is an error.
pub(crate) fn decompress(
    kind: Compression,
    input: &[u8],
    output: &mut [u8],
) -> Result<(), DecodeError> {
    match kind {
        Compression::Zlib => inflate_raw(input, output),
        Compression::Zstd => unzstd(input, output),
    }
}

fn inflate_raw(input: &[u8], output: &mut [u8]) -> Result<(), DecodeError> {
    INFLATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let inflater = slot.get_or_insert_with(|| Decompress::new(false));
        inflater.reset(false);
        let status = inflater
            .decompress(input, output, FlushDecompress::Finish)
            .map_err(|e| DecodeError(format!("deflate stream: {e}")))?;
        let produced = inflater.total_out() as usize;
        if produced == output.len() {
            return Ok(());
        }
        let why = match status {
            Status::StreamEnd => "ends early",
            _ => "is truncated",
        };
        Err(DecodeError(format!(
            "deflate stream {why}: {produced} of {} bytes",
            output.len()
        )))
    })
}

fn unzstd(input: &[u8], output: &mut [u8]) -> Result<(), DecodeError> {
    ZSTD_D.with(|cell| {
        let mut slot = cell.borrow_mut();
        let dctx = slot.get_or_insert_with(DCtx::create);
        dctx.reset(ResetDirective::SessionOnly).map_err(|code| {
            DecodeError(format!(
                "zstd reset: {}",
                zstd::zstd_safe::get_error_name(code)
            ))
        })?;
        let wanted = output.len();
        let mut out = OutBuffer::around(output);
        let mut inp = InBuffer::around(input);
        while out.pos() < wanted {
            let before = (inp.pos(), out.pos());
            dctx.decompress_stream(&mut out, &mut inp).map_err(|code| {
                DecodeError(format!(
                    "zstd stream: {}",
                    zstd::zstd_safe::get_error_name(code)
                ))
            })?;
            if (inp.pos(), out.pos()) == before {
                return Err(DecodeError(format!(
                    "zstd stream is truncated: {} of {wanted} bytes",
                    out.pos()
                )));
            }
        }
        Ok(())
    })
}

/// Compresses `input`; `None` when the result would not be shorter than `limit` bytes
/// (qemu then stores the cluster uncompressed).
pub(crate) fn compress(kind: Compression, input: &[u8], limit: usize) -> Option<Vec<u8>> {
    match kind {
        Compression::Zlib => deflate_raw(input, limit),
        Compression::Zstd => zstd_frame(input, limit),
    }
}

fn deflate_raw(input: &[u8], limit: usize) -> Option<Vec<u8>> {
    DEFLATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let deflater = slot.get_or_insert_with(|| {
            Compress::new_with_window_bits(
                flate2::Compression::default(),
                false,
                DEFLATE_WINDOW_BITS,
            )
        });
        deflater.reset();
        // Room for the worst case: zlib-rs 0.6 panics ("buf.len() must fit in remaining()")
        // when a stored block meets a nearly full output buffer, so never bound it by `limit`.
        let mut out = Vec::with_capacity(deflate_bound(input.len()));
        match deflater.compress_vec(input, &mut out, FlushCompress::Finish) {
            Ok(Status::StreamEnd) if out.len() < limit => Some(out),
            _ => None,
        }
    })
}

/// zlib's `deflateBound` for raw deflate, rounded up generously.
fn deflate_bound(len: usize) -> usize {
    len + (len >> 3) + (len >> 6) + 64
}

fn zstd_frame(input: &[u8], limit: usize) -> Option<Vec<u8>> {
    ZSTD_C.with(|cell| {
        let mut slot = cell.borrow_mut();
        let cctx = slot.get_or_insert_with(CCtx::create);
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(input.len()));
        match cctx.compress(&mut out, input, ZSTD_LEVEL) {
            Ok(n) if n < limit => Some(out),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..65536u32).map(|i| (i / 100 % 7) as u8).collect()
    }

    #[test]
    fn both_codecs_round_trip_one_cluster() {
        for kind in [Compression::Zlib, Compression::Zstd] {
            let data = sample();
            let packed = compress(kind, &data, data.len()).unwrap();
            assert!(packed.len() < 2000, "{kind:?} {}", packed.len());
            // Garbage after the stream (up to the sector) must be ignored.
            let mut padded = packed.clone();
            padded.extend_from_slice(&[0xAB; 300]);
            let mut out = vec![0u8; data.len()];
            decompress(kind, &padded, &mut out).unwrap();
            assert_eq!(out, data);
        }
    }

    #[test]
    fn incompressible_input_is_refused() {
        let mut x = 0x1234_5678u32;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        assert!(compress(Compression::Zlib, &noise, noise.len()).is_none());
        assert!(compress(Compression::Zstd, &noise, noise.len()).is_none());
    }

    /// zlib-rs 0.6 panicked ("buf.len() must fit in remaining()") when the output buffer was
    /// bounded by the cluster size and the input did not compress; every cluster size qemu
    /// allows must simply report "not shrinking".
    #[test]
    fn incompressible_clusters_of_every_size_do_not_panic() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for bits in 9..=21 {
            let size = 1usize << bits;
            let noise: Vec<u8> = (0..size)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            for kind in [Compression::Zlib, Compression::Zstd] {
                assert!(compress(kind, &noise, size).is_none(), "{kind:?} {size}");
            }
        }
    }

    #[test]
    fn short_or_bad_streams_are_errors() {
        for kind in [Compression::Zlib, Compression::Zstd] {
            let data = sample();
            let packed = compress(kind, &data, data.len()).unwrap();
            let mut out = vec![0u8; data.len()];
            assert!(decompress(kind, &packed[..packed.len() / 2], &mut out).is_err());
            assert!(decompress(kind, &[0xff; 64], &mut out).is_err());
            // A stream of one cluster decoded into a larger buffer ends early.
            let mut big = vec![0u8; data.len() * 2];
            assert!(decompress(kind, &packed, &mut big).is_err());
        }
    }

    #[test]
    fn zstd_reads_several_frames() {
        let data = sample();
        let (a, b) = data.split_at(30000);
        let mut stream = compress(Compression::Zstd, a, a.len()).unwrap();
        stream.extend(compress(Compression::Zstd, b, b.len()).unwrap());
        let mut out = vec![0u8; data.len()];
        decompress(Compression::Zstd, &stream, &mut out).unwrap();
        assert_eq!(out, data);
    }
}
