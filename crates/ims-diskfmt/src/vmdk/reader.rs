//! Random-access reader for hosted sparse VMDK extents: monolithicSparse (with or without
//! zeroed-grain entries) and streamOptimized in qemu's layout (grain directory in the header)
//! and VMware's (`GD_AT_END`, the footer's directory wins). Descriptor files and every other
//! extent kind name other files and are refused with [`DiskError::Reference`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use flate2::{Decompress, FlushDecompress, Status};
use zerocopy::FromBytes;

use super::descriptor::{Descriptor, MAX_DESCRIPTOR_BYTES};
use super::header::{
    COMPRESSION_DEFLATE, COWD_MAGIC, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_ZEROED_GRAIN, FOOTER_AREA,
    GD_AT_END, GrainMarkerRaw, MAGIC, SECTOR, SparseHeaderRaw, parse_footer,
};
use crate::disk::{
    CheckReport, Disk, DiskError, DiskInfo, Extent, ExtentKind, OpenOptions, SharedSource,
    check_range, read_exact_at,
};
use crate::{Format, ReadAt};

/// Grain tables kept in memory at once: 4096 × 512 entries × 4 bytes = 8 MiB, covering
/// 128 GiB of a disk with qemu's 64 KiB grains. Past that the cache starts over.
const MAX_CACHED_GTS: usize = 4096;
/// qemu reads at most two grains' worth of compressed data per grain (a compressed grain may
/// be larger than the grain when its data does not compress).
const MAX_COMPRESSED_GRAIN_FACTOR: u64 = 2;
/// Grain table entry meaning "reads as zeros" when the header sets the zeroed-grain flag.
const GTE_ZEROED: u32 = 1;
/// `check` lists at most this many problems (it still counts all of them).
const MAX_CHECK_MESSAGES: usize = 100;

const FORMAT: Format = Format::Vmdk;

fn corrupt(structure: &'static str, offset: u64, reason: impl Into<String>) -> DiskError {
    DiskError::corrupt(FORMAT, structure, offset, reason)
}

/// Where a grain's content comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grain {
    /// GTE 0 or no grain table: zeros (there is no parent).
    Unallocated,
    /// GTE 1 with the zeroed-grain flag.
    Zeroed,
    /// The grain (or its compressed marker) starts at this byte offset; `entry_offset` is
    /// where the grain table entry lives, for error messages.
    Stored { host: u64, entry_offset: u64 },
}

/// Uncompressed grains stored back to back, read with one call: `len` bytes for
/// `buf[start..]` from `host`.
struct Run {
    start: usize,
    host: u64,
    entry_offset: u64,
    len: usize,
}

/// An opened hosted sparse extent.
pub(crate) struct VmdkDisk {
    source: SharedSource,
    file_len: u64,
    virtual_size: u64,
    grain_bytes: u64,
    gtes_per_gt: u64,
    /// Grain directory: sector offsets of the grain tables (0 = no table).
    gd: Vec<u32>,
    /// Sectors before the first grain: a grain table entry pointing below is corrupt.
    over_head: u64,
    compressed: bool,
    markers: bool,
    zeroed_grain: bool,
    lenient: bool,
    cid: Option<u32>,
    parent_cid: Option<u32>,
    gt_cache: RwLock<HashMap<usize, Arc<[u32]>>>,
}

/// Per-thread buffers for compressed grains, reused across reads.
struct Scratch {
    compressed: Vec<u8>,
    grain: Vec<u8>,
    inflater: Decompress,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        compressed: Vec::new(),
        grain: Vec::new(),
        inflater: Decompress::new(true),
    });
}

impl VmdkDisk {
    pub(crate) fn open(source: SharedSource, options: &OpenOptions) -> Result<VmdkDisk, DiskError> {
        let file_len = source.len();
        let mut magic = [0u8; 4];
        if file_len < magic.len() as u64 {
            return Err(corrupt(
                "header",
                0,
                "the image is shorter than a magic number",
            ));
        }
        read_exact_at(&*source, FORMAT, "header", 0, &mut magic)?;
        if magic == COWD_MAGIC {
            return Err(DiskError::unsupported(
                "vmfsSparse (COWD) VMDK extents are not supported",
            ));
        }
        if magic != MAGIC {
            return Err(text_descriptor(&*source, file_len));
        }
        let mut sector = [0u8; SECTOR as usize];
        read_exact_at(&*source, FORMAT, "sparse header", 0, &mut sector)?;
        let (mut header, _) = SparseHeaderRaw::read_from_prefix(&sector[..])
            .map_err(|_| corrupt("sparse header", 0, "too short"))?;
        if header.capacity.get() == 0 && header.descriptor_offset.get() != 0 {
            // qemu re-reads the embedded descriptor as a descriptor file: a redirect.
            return Err(embedded_redirect(&*source, &header, file_len));
        }
        check_geometry(&header, 0)?;
        if header.gd_offset.get() == GD_AT_END {
            header = footer(&*source, &header, file_len)?;
            check_geometry(&header, file_len - FOOTER_AREA + SECTOR)?;
        }
        let descriptor = embedded_descriptor(&*source, &header, file_len)?;
        if let Some(parent) = &descriptor.parent_hint {
            return Err(DiskError::Reference {
                format: FORMAT,
                target: parent.clone(),
            });
        }
        let compression = header.compress_algorithm.get();
        if compression > COMPRESSION_DEFLATE {
            return Err(DiskError::unsupported(format!(
                "VMDK compression algorithm {compression}"
            )));
        }
        let flags = header.flags();
        let over_head = header.over_head.get();
        if over_head
            .checked_mul(SECTOR)
            .is_none_or(|end| end > file_len)
        {
            return Err(corrupt(
                "sparse header",
                64,
                format!("overHead of {over_head} sectors lies past the end of the image"),
            ));
        }
        let mut disk = VmdkDisk {
            virtual_size: header.capacity.get() * SECTOR,
            grain_bytes: header.grain_size.get() * SECTOR,
            gtes_per_gt: u64::from(header.num_gtes_per_gt.get()),
            gd: Vec::new(),
            over_head,
            compressed: compression == COMPRESSION_DEFLATE || flags & FLAG_COMPRESSED != 0,
            markers: flags & FLAG_MARKERS != 0,
            zeroed_grain: flags & FLAG_ZEROED_GRAIN != 0,
            lenient: options.lenient,
            cid: descriptor.cid,
            parent_cid: descriptor.parent_cid,
            gt_cache: RwLock::new(HashMap::new()),
            source,
            file_len,
        };
        disk.load_grain_directory(&header)?;
        Ok(disk)
    }

    fn load_grain_directory(&mut self, header: &SparseHeaderRaw) -> Result<(), DiskError> {
        // Both bounded by check_geometry: ≤ 32 M entries.
        let entries = header.gd_entries() as usize;
        let gd_offset = header
            .gd_offset
            .get()
            .checked_mul(SECTOR)
            .ok_or_else(|| corrupt("sparse header", 56, "grain directory offset overflows"))?;
        let gd_bytes = entries as u64 * 4;
        if gd_offset
            .checked_add(gd_bytes)
            .is_none_or(|end| end > self.file_len)
        {
            if self.lenient {
                // qemu reads a directory past the end as zeros: an empty disk (kept as an
                // empty directory, so a hostile header costs no memory).
                self.gd = Vec::new();
                return Ok(());
            }
            return Err(corrupt(
                "grain directory",
                gd_offset,
                format!(
                    "{entries} entries ({gd_bytes} bytes) extend past the end of the \
                     {}-byte image",
                    self.file_len
                ),
            ));
        }
        let mut raw = vec![0u8; entries * 4];
        read_exact_at(
            &*self.source,
            FORMAT,
            "grain directory",
            gd_offset,
            &mut raw,
        )?;
        let gt_bytes = self.gtes_per_gt * 4;
        self.gd = raw
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        for (index, entry) in self.gd.iter_mut().enumerate() {
            if *entry == 0 {
                continue;
            }
            let gt_end = u64::from(*entry) * SECTOR + gt_bytes;
            if gt_end > self.file_len {
                if self.lenient {
                    *entry = 0;
                    continue;
                }
                return Err(corrupt(
                    "grain directory",
                    gd_offset + index as u64 * 4,
                    format!(
                        "entry {index}: grain table at sector {entry} extends past the end of \
                         the image"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn grains(&self) -> u64 {
        self.virtual_size.div_ceil(self.grain_bytes)
    }

    /// The grain table `index` (its GD entry is non-zero and inside the image).
    fn grain_table(&self, index: usize) -> Result<Arc<[u32]>, DiskError> {
        let cache = self.gt_cache.read().unwrap_or_else(|e| e.into_inner());
        if let Some(gt) = cache.get(&index) {
            return Ok(Arc::clone(gt));
        }
        drop(cache);
        let offset = u64::from(self.gd[index]) * SECTOR;
        let mut raw = vec![0u8; self.gtes_per_gt as usize * 4];
        read_exact_at(&*self.source, FORMAT, "grain table", offset, &mut raw)?;
        let gt: Arc<[u32]> = raw
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let mut cache = self.gt_cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED_GTS {
            cache.clear();
        }
        cache.insert(index, Arc::clone(&gt));
        Ok(gt)
    }

    /// Looks up grain `grain` (< `self.grains()`).
    fn grain(&self, grain: u64) -> Result<Grain, DiskError> {
        let gd_index = (grain / self.gtes_per_gt) as usize;
        let gt_index = (grain % self.gtes_per_gt) as usize;
        // The directory covers every grain, except the empty one of a lenient open.
        let gt_sector = self.gd.get(gd_index).copied().unwrap_or(0);
        if gt_sector == 0 {
            return Ok(Grain::Unallocated);
        }
        let entry = self.grain_table(gd_index)?[gt_index];
        let entry_offset = u64::from(gt_sector) * SECTOR + gt_index as u64 * 4;
        match entry {
            0 => Ok(Grain::Unallocated),
            GTE_ZEROED if self.zeroed_grain => Ok(Grain::Zeroed),
            sector if u64::from(sector) < self.over_head => {
                if self.lenient {
                    return Ok(Grain::Stored {
                        host: u64::from(sector) * SECTOR,
                        entry_offset,
                    });
                }
                Err(corrupt(
                    "grain table",
                    entry_offset,
                    format!(
                        "grain {grain} at sector {sector} lies inside the metadata area \
                         (the first {} sectors)",
                        self.over_head
                    ),
                ))
            }
            sector => Ok(Grain::Stored {
                host: u64::from(sector) * SECTOR,
                entry_offset,
            }),
        }
    }

    /// Reads `buf.len()` stored bytes at `host`; past the end of the image that is corruption,
    /// or zeros when lenient (qemu's behaviour).
    fn read_stored(&self, host: u64, entry_offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let end = host.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.file_len) {
            if !self.lenient {
                return Err(corrupt(
                    "grain table",
                    entry_offset,
                    format!(
                        "grain data at offset {host} (+{} bytes) extends past the end of the \
                         {}-byte image",
                        buf.len(),
                        self.file_len
                    ),
                ));
            }
            let available = self.file_len.saturating_sub(host).min(buf.len() as u64) as usize;
            buf[available..].fill(0);
            return read_exact_at(&*self.source, FORMAT, "grain", host, &mut buf[..available]);
        }
        read_exact_at(&*self.source, FORMAT, "grain", host, buf)
    }

    fn read_run(&self, run: &Run, buf: &mut [u8]) -> Result<(), DiskError> {
        let dst = &mut buf[run.start..run.start + run.len];
        self.read_stored(run.host, run.entry_offset, dst)
    }

    /// Decompresses the grain stored at `host` into `out` (one grain long). The stream must
    /// cover at least the part of the grain inside the disk; the rest is zero-filled.
    fn inflate_grain(
        &self,
        grain: u64,
        host: u64,
        entry_offset: u64,
        out: &mut [u8],
        scratch_in: &mut Vec<u8>,
        inflater: &mut Decompress,
    ) -> Result<(), DiskError> {
        let max_compressed = self.grain_bytes * MAX_COMPRESSED_GRAIN_FACTOR;
        let (data_offset, data_len) = if self.markers {
            let mut marker = [0u8; size_of::<GrainMarkerRaw>()];
            self.read_stored(host, entry_offset, &mut marker)?;
            let (marker, _) = GrainMarkerRaw::read_from_prefix(&marker[..])
                .map_err(|_| corrupt("grain marker", host, "too short"))?;
            let size = u64::from(marker.size.get());
            if size == 0 || size > max_compressed {
                return Err(corrupt(
                    "grain marker",
                    host,
                    format!("compressed size {size} outside 1..={max_compressed}"),
                ));
            }
            (host + size_of::<GrainMarkerRaw>() as u64, size)
        } else {
            // Without markers the stream length is unknown: read what fits (qemu: two grains).
            let available = self.file_len.saturating_sub(host);
            (host, max_compressed.min(available))
        };
        scratch_in.resize(data_len as usize, 0);
        self.read_stored(data_offset, entry_offset, scratch_in)?;
        inflater.reset(true);
        let status = inflater
            .decompress(scratch_in, out, FlushDecompress::Finish)
            .map_err(|e| corrupt("compressed grain", host, format!("zlib: {e}")))?;
        let produced = inflater.total_out() as usize;
        if status != Status::StreamEnd {
            let consumed = inflater.total_in() as usize;
            let mut probe = [0u8; 1];
            let more = inflater
                .decompress(&scratch_in[consumed..], &mut probe, FlushDecompress::Finish)
                .map_err(|e| corrupt("compressed grain", host, format!("zlib: {e}")))?;
            if inflater.total_out() as usize > produced {
                return Err(corrupt(
                    "compressed grain",
                    host,
                    format!("decompresses to more than one grain ({} bytes)", out.len()),
                ));
            }
            if more != Status::StreamEnd && produced < out.len() {
                return Err(corrupt(
                    "compressed grain",
                    host,
                    "zlib stream is truncated",
                ));
            }
        }
        let needed = (self.virtual_size - grain * self.grain_bytes).min(self.grain_bytes) as usize;
        if produced < needed {
            return Err(corrupt(
                "compressed grain",
                host,
                format!("decompresses to {produced} bytes, {needed} needed"),
            ));
        }
        out[produced..].fill(0);
        Ok(())
    }

    /// Copies `len` bytes of compressed grain `grain` from `in_grain` into `dst`.
    fn read_compressed(
        &self,
        grain: u64,
        host: u64,
        entry_offset: u64,
        in_grain: usize,
        dst: &mut [u8],
    ) -> Result<(), DiskError> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let Scratch {
                compressed,
                grain: grain_buf,
                inflater,
            } = &mut *scratch;
            if in_grain == 0 && dst.len() as u64 == self.grain_bytes {
                return self.inflate_grain(grain, host, entry_offset, dst, compressed, inflater);
            }
            grain_buf.resize(self.grain_bytes as usize, 0);
            self.inflate_grain(grain, host, entry_offset, grain_buf, compressed, inflater)?;
            dst.copy_from_slice(&grain_buf[in_grain..in_grain + dst.len()]);
            Ok(())
        })
    }
}

/// A file that is not a sparse extent: a text descriptor, whose extents are other files.
fn text_descriptor(source: &dyn ReadAt, file_len: u64) -> DiskError {
    let mut text = vec![0u8; file_len.min(MAX_DESCRIPTOR_BYTES) as usize];
    if let Err(e) = read_exact_at(source, FORMAT, "descriptor", 0, &mut text) {
        return e;
    }
    match Descriptor::parse(&text) {
        Ok(descriptor) => match descriptor.first_reference() {
            Some(target) => DiskError::Reference {
                format: FORMAT,
                target: target.to_owned(),
            },
            None => corrupt(
                "descriptor",
                0,
                "neither a sparse extent (KDMV) nor a descriptor naming an extent",
            ),
        },
        Err(e) => corrupt("descriptor", 0, e.to_string()),
    }
}

/// The descriptor embedded in a sparse extent, or an empty one when there is none.
fn embedded_descriptor(
    source: &dyn ReadAt,
    header: &SparseHeaderRaw,
    file_len: u64,
) -> Result<Descriptor, DiskError> {
    let sectors = header.descriptor_size.get();
    let start = header.descriptor_offset.get();
    if start == 0 || sectors == 0 {
        return Ok(Descriptor::default());
    }
    let offset = start
        .checked_mul(SECTOR)
        .filter(|&o| o < file_len)
        .ok_or_else(|| {
            corrupt(
                "sparse header",
                28,
                format!("descriptor at sector {start} lies past the end of the image"),
            )
        })?;
    let len = sectors
        .saturating_mul(SECTOR)
        .min(MAX_DESCRIPTOR_BYTES)
        .min(file_len - offset);
    let mut text = vec![0u8; len as usize];
    read_exact_at(source, FORMAT, "embedded descriptor", offset, &mut text)?;
    Descriptor::parse(&text).map_err(|e| corrupt("embedded descriptor", offset, e.to_string()))
}

/// A sparse header with capacity 0 whose embedded descriptor qemu would follow.
fn embedded_redirect(source: &dyn ReadAt, header: &SparseHeaderRaw, file_len: u64) -> DiskError {
    match embedded_descriptor(source, header, file_len) {
        Ok(descriptor) => match descriptor.first_reference() {
            Some(target) => DiskError::Reference {
                format: FORMAT,
                target: target.to_owned(),
            },
            None => corrupt(
                "sparse header",
                12,
                "capacity 0 defers to an embedded descriptor that names no extent",
            ),
        },
        Err(e) => e,
    }
}

fn check_geometry(header: &SparseHeaderRaw, base: u64) -> Result<(), DiskError> {
    header
        .check_geometry()
        .map_err(|p| corrupt("sparse header", base + p.field_offset, p.reason))
}

/// The footer of a VMware-layout stream (the last three sectors).
fn footer(
    source: &dyn ReadAt,
    header: &SparseHeaderRaw,
    file_len: u64,
) -> Result<SparseHeaderRaw, DiskError> {
    if file_len < FOOTER_AREA + SECTOR {
        return Err(corrupt(
            "footer",
            0,
            "grain directory is at the end but the image is too short for a footer",
        ));
    }
    let start = file_len - FOOTER_AREA;
    let mut area = [0u8; FOOTER_AREA as usize];
    read_exact_at(source, FORMAT, "footer", start, &mut area)?;
    parse_footer(&area, start, header).map_err(|reason| corrupt("footer", start, reason))
}

impl Disk for VmdkDisk {
    fn format(&self) -> Format {
        FORMAT
    }

    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    fn granularity(&self) -> u64 {
        self.grain_bytes
    }

    fn extent(&self, offset: u64, max_len: u64) -> Result<Extent, DiskError> {
        let end = offset.saturating_add(max_len).min(self.virtual_size);
        let sectors_per_gt_bytes = self.grain_bytes * self.gtes_per_gt;
        let mut kind = None;
        let mut pos = offset;
        while pos < end {
            let grain = pos / self.grain_bytes;
            let gd_index = (grain / self.gtes_per_gt) as usize;
            let (this, next) = if self.gd.get(gd_index).copied().unwrap_or(0) == 0 {
                (
                    ExtentKind::Zero,
                    (gd_index as u64 + 1) * sectors_per_gt_bytes,
                )
            } else {
                let this = match self.grain(grain)? {
                    Grain::Unallocated | Grain::Zeroed => ExtentKind::Zero,
                    Grain::Stored { .. } => ExtentKind::Data,
                };
                (this, (grain + 1) * self.grain_bytes)
            };
            match kind {
                None => kind = Some(this),
                Some(k) if k != this => break,
                Some(_) => {}
            }
            pos = next;
        }
        Ok(Extent {
            offset,
            length: pos.min(end) - offset,
            kind: kind.unwrap_or(ExtentKind::Zero),
        })
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        check_range(self.virtual_size, offset, buf.len())?;
        let mut run: Option<Run> = None;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let grain = pos / self.grain_bytes;
            let in_grain = (pos % self.grain_bytes) as usize;
            let n = (self.grain_bytes as usize - in_grain).min(buf.len() - done);
            let looked_up = self.grain(grain)?;
            if let Grain::Stored { host, entry_offset } = looked_up
                && !self.compressed
            {
                let host = host + in_grain as u64;
                match &mut run {
                    Some(r) if r.host + r.len as u64 == host => r.len += n,
                    _ => {
                        if let Some(r) = run.take() {
                            self.read_run(&r, buf)?;
                        }
                        run = Some(Run {
                            start: done,
                            host,
                            entry_offset,
                            len: n,
                        });
                    }
                }
                done += n;
                continue;
            }
            if let Some(r) = run.take() {
                self.read_run(&r, buf)?;
            }
            let dst = &mut buf[done..done + n];
            match looked_up {
                Grain::Unallocated | Grain::Zeroed => dst.fill(0),
                Grain::Stored { host, entry_offset } => {
                    self.read_compressed(grain, host, entry_offset, in_grain, dst)?
                }
            }
            done += n;
        }
        if let Some(r) = run {
            self.read_run(&r, buf)?;
        }
        Ok(())
    }

    fn info(&self) -> DiskInfo {
        let create_type = if self.compressed {
            "streamOptimized"
        } else {
            "monolithicSparse"
        };
        let mut details = Vec::new();
        if let Some(cid) = self.cid {
            details.push(("cid".to_owned(), cid.to_string()));
        }
        if let Some(parent_cid) = self.parent_cid {
            details.push(("parent-cid".to_owned(), parent_cid.to_string()));
        }
        details.push(("create-type".to_owned(), create_type.to_owned()));
        let compressed = if self.compressed {
            "\"compressed\":true,"
        } else {
            ""
        };
        details.push((
            "extents".to_owned(),
            format!(
                "[{{{compressed}\"virtual-size\":{},\"cluster-size\":{},\"format\":\"\"}}]",
                self.virtual_size, self.grain_bytes
            ),
        ));
        DiskInfo {
            cluster_size: Some(self.grain_bytes),
            subformat: Some(create_type.to_owned()),
            details,
            ..DiskInfo::default()
        }
    }

    fn check(&self) -> Result<CheckReport, DiskError> {
        let mut report = CheckReport {
            total_clusters: Some(self.grains()),
            ..CheckReport::default()
        };
        let mut allocated = 0u64;
        let problem = |report: &mut CheckReport, message: String| {
            report.corruptions += 1;
            if report.messages.len() < MAX_CHECK_MESSAGES {
                report.messages.push(message);
            }
        };
        let mut grain = 0u64;
        while grain < self.grains() {
            let sector = grain * self.grain_bytes / SECTOR;
            let looked_up = match self.grain(grain) {
                Ok(g) => g,
                Err(e) => {
                    problem(
                        &mut report,
                        format!("could not get cluster_offset for sector {sector}: {e}"),
                    );
                    grain += 1;
                    continue;
                }
            };
            if let Grain::Stored { host, entry_offset } = looked_up {
                allocated += 1;
                if let Err(e) = self.check_grain(grain, host, entry_offset) {
                    problem(
                        &mut report,
                        format!("cluster offset for sector {sector} points after EOF: {e}"),
                    );
                }
            }
            grain += 1;
        }
        report.allocated_clusters = Some(allocated);
        Ok(report)
    }
}

impl VmdkDisk {
    /// The stored bytes of a grain lie inside the image (what `qemu-img check` verifies,
    /// extended to the whole grain or compressed record).
    fn check_grain(&self, grain: u64, host: u64, entry_offset: u64) -> Result<(), DiskError> {
        let len = if self.compressed && self.markers {
            let mut marker = [0u8; size_of::<GrainMarkerRaw>()];
            if host + marker.len() as u64 > self.file_len {
                return Err(corrupt("grain marker", host, "past the end of the image"));
            }
            read_exact_at(&*self.source, FORMAT, "grain marker", host, &mut marker)?;
            let (marker, _) = GrainMarkerRaw::read_from_prefix(&marker[..])
                .map_err(|_| corrupt("grain marker", host, "too short"))?;
            size_of::<GrainMarkerRaw>() as u64 + u64::from(marker.size.get())
        } else if self.compressed {
            1
        } else {
            (self.virtual_size - grain * self.grain_bytes).min(self.grain_bytes)
        };
        match host.checked_add(len) {
            Some(end) if end <= self.file_len => Ok(()),
            _ => Err(corrupt(
                "grain table",
                entry_offset,
                format!(
                    "grain data at offset {host} (+{len} bytes) extends past the end of the image"
                ),
            )),
        }
    }
}
