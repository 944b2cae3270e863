//! VMDK writer: monolithicSparse in qemu's layout (redundant and primary grain directories and
//! tables preallocated after the descriptor, grains appended) and streamOptimized in VMware's
//! layout (compressed grains with markers, a GT marker + table after each table's grains, GD
//! marker + directory, footer, end-of-stream marker), which VMware/ESXi/AWS importers expect
//! and qemu also reads.
//!
//! Blocks arrive in ascending order, so each grain table is complete when the next one
//! starts: the writer holds one grain table (and, for streams, the grain directory: 4 bytes
//! per 32 MiB of disk) and never buffers data.

use std::cell::RefCell;
use std::sync::Arc;

use flate2::{Compress, Compression, FlushCompress, Status};
use zerocopy::{FromZeros, IntoBytes};

use super::header::{
    COMPRESSION_DEFLATE, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NEWLINE_TEST, FLAG_REDUNDANT_GD,
    FLAG_ZEROED_GRAIN, GD_AT_END, GrainMarkerRaw, MAGIC, MARKER_END_OF_STREAM, MARKER_FOOTER,
    MARKER_GRAIN_DIRECTORY, MARKER_GRAIN_TABLE, MAX_GD_ENTRIES, MarkerRaw, NEWLINE_TEST, SECTOR,
    SparseHeaderRaw,
};
use crate::Format;
use crate::disk::DiskError;
use crate::write::{BlockEncoder, CreateOptions, DiskWriter, Sink};

/// qemu's grain: 128 sectors (64 KiB).
const GRAIN_SECTORS: u64 = 128;
const GRAIN_BYTES: u64 = GRAIN_SECTORS * SECTOR;
/// qemu's grain table: 512 entries (32 MiB of disk per table).
const GTES_PER_GT: u64 = 512;
const GT_SECTORS: u64 = GTES_PER_GT * 4 / SECTOR;
/// Embedded descriptor: sector 1, 20 sectors (qemu's `DESC_SIZE`).
const DESCRIPTOR_OFFSET: u64 = 1;
const DESCRIPTOR_SECTORS: u64 = 20;
/// Where grains start in a stream: after header and descriptor, aligned to a grain like
/// VMware's exports.
const STREAM_OVER_HEAD: u64 = GRAIN_SECTORS;
/// Grain table entries are u32 sector numbers: the image file cannot grow past 2 TiB.
const MAX_FILE_SECTORS: u64 = 1 << 32;
/// Deflate level for streamOptimized grains. qemu uses zlib's default (6); level 1 runs
/// about 3x faster with zlib-rs and still compresses text and zero-padded data well (the
/// ~5–10 % larger output on mixed data is a better trade than 3x slower conversions, and
/// every grain is compressed on all cores in parallel anyway).
const DEFLATE_LEVEL: u32 = 1;
/// qemu's `toolsversion` default.
const DEFAULT_TOOLS_VERSION: &str = "2147483647";
/// The extent name written into the embedded descriptor. Readers of monolithic images (qemu,
/// VMware) use the file that carries the descriptor, whatever it is called.
const EXTENT_NAME: &str = "image.vmdk";

const FORMAT: Format = Format::Vmdk;

fn invalid_option(what: String) -> DiskError {
    DiskError::Unsupported { what }
}

fn write_error(structure: &'static str, offset: u64) -> impl FnOnce(std::io::Error) -> DiskError {
    move |source| DiskError::Writing {
        structure,
        offset,
        source,
    }
}

/// The `-o` options qemu-img accepts for vmdk, validated.
#[derive(Debug, Clone)]
struct Options {
    stream: bool,
    adapter_type: &'static str,
    hw_version: String,
    tools_version: String,
    zeroed_grain: bool,
}

fn on_off(key: &str, value: &str) -> Result<bool, DiskError> {
    match value {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        other => Err(invalid_option(format!(
            "vmdk option {key}={other}: expected on or off"
        ))),
    }
}

impl Options {
    fn parse(options: &CreateOptions) -> Result<Options, DiskError> {
        let mut parsed = Options {
            stream: false,
            adapter_type: "ide",
            hw_version: "4".into(),
            tools_version: DEFAULT_TOOLS_VERSION.into(),
            zeroed_grain: false,
        };
        let mut compat6 = false;
        let mut hw_version = None;
        let mut unknown = Vec::new();
        for (key, value) in &options.options {
            match key.as_str() {
                "subformat" => {
                    parsed.stream = match value.as_str() {
                        "monolithicSparse" => false,
                        "streamOptimized" => true,
                        "monolithicFlat" | "twoGbMaxExtentSparse" | "twoGbMaxExtentFlat" => {
                            return Err(invalid_option(format!(
                                "vmdk subformat {value}: multi-file images are not written \
                                 (use monolithicSparse or streamOptimized)"
                            )));
                        }
                        other => {
                            return Err(invalid_option(format!("vmdk subformat {other}")));
                        }
                    }
                }
                "adapter_type" => {
                    parsed.adapter_type = ["ide", "buslogic", "lsilogic", "legacyESX"]
                        .into_iter()
                        .find(|a| a == value)
                        .ok_or_else(|| invalid_option(format!("vmdk adapter_type {value}")))?;
                }
                "hwversion" if value != "undefined" => hw_version = Some(value.clone()),
                "hwversion" => {}
                "compat6" => compat6 = on_off(key, value)?,
                "zeroed_grain" => parsed.zeroed_grain = on_off(key, value)?,
                "toolsversion" => parsed.tools_version = value.clone(),
                _ => unknown.push(key.as_str()),
            }
        }
        if !unknown.is_empty() {
            return Err(invalid_option(format!(
                "vmdk options {} (known: subformat, adapter_type, hwversion, compat6, \
                 zeroed_grain, toolsversion)",
                unknown.join(", ")
            )));
        }
        for (name, value) in [
            ("hwversion", hw_version.as_deref()),
            ("toolsversion", Some(parsed.tools_version.as_str())),
        ] {
            if value.is_some_and(|v| v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit())) {
                return Err(invalid_option(format!("vmdk {name} must be a number")));
            }
        }
        parsed.hw_version = match (compat6, hw_version) {
            (true, Some(_)) => {
                return Err(invalid_option(
                    "vmdk compat6 cannot be enabled with hwversion set".into(),
                ));
            }
            (true, None) => "6".into(),
            (false, Some(v)) => v,
            (false, None) => "4".into(),
        };
        if options.compress && !parsed.stream {
            return Err(invalid_option(
                "compressed vmdk output needs subformat=streamOptimized".into(),
            ));
        }
        if parsed.stream && parsed.zeroed_grain {
            return Err(invalid_option(
                "vmdk zeroed_grain applies to monolithicSparse only".into(),
            ));
        }
        Ok(parsed)
    }
}

/// A deterministic content ID: FNV-1a over what defines the image (qemu picks a random one;
/// a reproducible conversion must not).
fn derive_cid(capacity: u64, options: &Options) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let text = format!(
        "{capacity} {} {} {} {} {}",
        options.stream,
        options.adapter_type,
        options.hw_version,
        options.tools_version,
        options.zeroed_grain
    );
    for b in text.bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (hash ^ (hash >> 32)) as u32
}

/// qemu's descriptor template, byte for byte (CID aside).
fn descriptor(capacity: u64, options: &Options) -> String {
    let heads: u64 = if options.adapter_type == "ide" {
        16
    } else {
        255
    };
    let cylinders = capacity * SECTOR / (63 * heads * SECTOR);
    let create_type = if options.stream {
        "streamOptimized"
    } else {
        "monolithicSparse"
    };
    format!(
        "# Disk DescriptorFile\nversion=1\nCID={cid:08x}\nparentCID=ffffffff\n\
         createType=\"{create_type}\"\n\n# Extent description\n\
         RW {capacity} SPARSE \"{EXTENT_NAME}\"\n\n# The Disk Data Base\n#DDB\n\n\
         ddb.virtualHWVersion = \"{hw}\"\nddb.geometry.cylinders = \"{cylinders}\"\n\
         ddb.geometry.heads = \"{heads}\"\nddb.geometry.sectors = \"63\"\n\
         ddb.adapterType = \"{adapter}\"\nddb.toolsVersion = \"{tools}\"\n",
        cid = derive_cid(capacity, options),
        hw = options.hw_version,
        adapter = options.adapter_type,
        tools = options.tools_version,
    )
}

fn header(capacity: u64, options: &Options) -> SparseHeaderRaw {
    let mut h = SparseHeaderRaw::new_zeroed();
    h.magic = MAGIC;
    h.capacity.set(capacity);
    h.grain_size.set(GRAIN_SECTORS);
    h.descriptor_offset.set(DESCRIPTOR_OFFSET);
    h.descriptor_size.set(DESCRIPTOR_SECTORS);
    h.num_gtes_per_gt.set(GTES_PER_GT as u32);
    h.newline_test = NEWLINE_TEST;
    if options.stream {
        h.version.set(3);
        h.flags
            .set(FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS);
        h.gd_offset.set(GD_AT_END);
        h.over_head.set(STREAM_OVER_HEAD);
        h.compress_algorithm.set(COMPRESSION_DEFLATE);
    } else {
        let zeroed = if options.zeroed_grain {
            FLAG_ZEROED_GRAIN
        } else {
            0
        };
        h.version.set(if options.zeroed_grain { 2 } else { 1 });
        h.flags.set(FLAG_NEWLINE_TEST | FLAG_REDUNDANT_GD | zeroed);
    }
    h
}

/// One sector holding `header` (with its magic) — the form of both header and footer.
fn header_sector(header: &SparseHeaderRaw) -> Vec<u8> {
    let mut sector = vec![0u8; SECTOR as usize];
    sector[..size_of::<SparseHeaderRaw>()].copy_from_slice(header.as_bytes());
    sector
}

fn marker_sector(value: u64, kind: u32) -> Vec<u8> {
    let mut marker = MarkerRaw::new_zeroed();
    marker.value.set(value);
    marker.kind.set(kind);
    let mut sector = vec![0u8; SECTOR as usize];
    sector[..size_of::<MarkerRaw>()].copy_from_slice(marker.as_bytes());
    sector
}

fn u32s_to_bytes(entries: &[u32], sectors: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; (sectors * SECTOR) as usize];
    for (chunk, entry) in bytes.chunks_exact_mut(4).zip(entries) {
        chunk.copy_from_slice(&entry.to_le_bytes());
    }
    bytes
}

/// Starts a VMDK of `virtual_size` bytes (rounded up to a sector like qemu).
pub(crate) fn create(
    sink: Box<dyn Sink>,
    virtual_size: u64,
    options: &CreateOptions,
) -> Result<Box<dyn DiskWriter>, DiskError> {
    let options = Options::parse(options)?;
    let capacity = virtual_size.div_ceil(SECTOR);
    let grains = capacity.div_ceil(GRAIN_SECTORS);
    let gt_count = grains.div_ceil(GTES_PER_GT);
    if gt_count > MAX_GD_ENTRIES {
        return Err(DiskError::TooLarge {
            format: FORMAT,
            structure: "grain directory",
            value: gt_count,
            limit: MAX_GD_ENTRIES,
        });
    }
    let header = header(capacity, &options);
    let descriptor = descriptor(capacity, &options);
    let descriptor_offset = DESCRIPTOR_OFFSET * SECTOR;
    sink.write_all_at(descriptor_offset, descriptor.as_bytes())
        .map_err(write_error("descriptor", descriptor_offset))?;
    let common = Common {
        sink,
        header,
        capacity,
        gt_count,
        gt: GrainTable::empty(),
    };
    if options.stream {
        sink_write(&*common.sink, 0, &header_sector(&header), "header")?;
        Ok(Box::new(StreamWriter {
            common,
            gd: vec![0; gt_count as usize],
            next_sector: STREAM_OVER_HEAD,
        }))
    } else {
        SparseWriter::start(common).map(|w| Box::new(w) as Box<dyn DiskWriter>)
    }
}

fn sink_write(
    sink: &dyn Sink,
    offset: u64,
    bytes: &[u8],
    structure: &'static str,
) -> Result<(), DiskError> {
    sink.write_all_at(offset, bytes)
        .map_err(write_error(structure, offset))
}

/// The grain table being filled: its index in the directory and its entries.
struct GrainTable {
    index: Option<u64>,
    entries: Vec<u32>,
}

impl GrainTable {
    fn empty() -> GrainTable {
        GrainTable {
            index: None,
            entries: vec![0; GTES_PER_GT as usize],
        }
    }
}

/// What both layouts share.
struct Common {
    sink: Box<dyn Sink>,
    header: SparseHeaderRaw,
    capacity: u64,
    gt_count: u64,
    gt: GrainTable,
}

impl Common {
    /// Checks a block's place and returns its grain number.
    fn grain_of(&self, offset: u64, len: usize) -> Result<u64, DiskError> {
        if offset % GRAIN_BYTES != 0
            || len as u64 > GRAIN_BYTES
            || offset
                .checked_add(len as u64)
                .is_none_or(|end| end > self.capacity * SECTOR)
        {
            return Err(DiskError::OutOfRange {
                offset,
                length: len as u64,
                virtual_size: self.capacity * SECTOR,
            });
        }
        Ok(offset / GRAIN_BYTES)
    }
}

fn file_sector(offset: u64) -> Result<u32, DiskError> {
    let sector = offset / SECTOR;
    if sector >= MAX_FILE_SECTORS {
        return Err(DiskError::TooLarge {
            format: FORMAT,
            structure: "image file",
            value: offset,
            limit: MAX_FILE_SECTORS * SECTOR,
        });
    }
    Ok(sector as u32)
}

/// monolithicSparse, qemu's layout: header, descriptor, RGD + RGTs, GD + GTs, grains.
struct SparseWriter {
    common: Common,
    rgd_sector: u64,
    gd_sector: u64,
    gd_sectors: u64,
    next_sector: u64,
    /// A zero-padded copy of a short last block.
    tail: Vec<u8>,
}

impl SparseWriter {
    fn start(mut common: Common) -> Result<SparseWriter, DiskError> {
        let gd_sectors = (common.gt_count * 4).div_ceil(SECTOR);
        let tables = GT_SECTORS * common.gt_count;
        let rgd_sector = DESCRIPTOR_OFFSET + DESCRIPTOR_SECTORS;
        let gd_sector = rgd_sector + gd_sectors + tables;
        let grain_start = (gd_sector + gd_sectors + tables).next_multiple_of(GRAIN_SECTORS);
        common.header.rgd_offset.set(rgd_sector);
        common.header.gd_offset.set(gd_sector);
        common.header.over_head.set(grain_start);
        let writer = SparseWriter {
            common,
            rgd_sector,
            gd_sector,
            gd_sectors,
            next_sector: grain_start,
            tail: Vec::new(),
        };
        let sink = &*writer.common.sink;
        sink_write(sink, 0, &header_sector(&writer.common.header), "header")?;
        for (structure, directory) in [
            ("redundant grain directory", writer.rgd_sector),
            ("grain directory", writer.gd_sector),
        ] {
            let entries: Vec<u32> = (0..writer.common.gt_count)
                .map(|i| file_sector((directory + gd_sectors + i * GT_SECTORS) * SECTOR))
                .collect::<Result<_, _>>()?;
            let bytes = u32s_to_bytes(&entries, gd_sectors);
            sink_write(sink, directory * SECTOR, &bytes, structure)?;
        }
        sink.set_len(grain_start * SECTOR)
            .map_err(write_error("image file", grain_start * SECTOR))?;
        Ok(writer)
    }

    /// Writes the grain table being filled to both of its places.
    fn flush_table(&mut self) -> Result<(), DiskError> {
        let Some(index) = self.common.gt.index.take() else {
            return Ok(());
        };
        let bytes = u32s_to_bytes(&self.common.gt.entries, GT_SECTORS);
        for directory in [self.rgd_sector, self.gd_sector] {
            let at = (directory + self.gd_sectors + index * GT_SECTORS) * SECTOR;
            sink_write(&*self.common.sink, at, &bytes, "grain table")?;
        }
        self.common.gt.entries.fill(0);
        Ok(())
    }
}

impl DiskWriter for SparseWriter {
    fn block_size(&self) -> u64 {
        GRAIN_BYTES
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
        let grain = self.common.grain_of(offset, data.len())?;
        let table = grain / GTES_PER_GT;
        if self.common.gt.index != Some(table) {
            self.flush_table()?;
            self.common.gt.index = Some(table);
        }
        let host = self.next_sector * SECTOR;
        file_sector(host + GRAIN_BYTES - 1)?;
        let bytes = if data.len() as u64 == GRAIN_BYTES {
            data
        } else {
            self.tail.clear();
            self.tail.extend_from_slice(data);
            self.tail.resize(GRAIN_BYTES as usize, 0);
            &self.tail
        };
        sink_write(&*self.common.sink, host, bytes, "grain")?;
        self.common.gt.entries[(grain % GTES_PER_GT) as usize] = file_sector(host)?;
        self.next_sector += GRAIN_SECTORS;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<(), DiskError> {
        self.flush_table()?;
        let end = self.next_sector * SECTOR;
        self.common
            .sink
            .set_len(end)
            .map_err(write_error("image file", end))?;
        self.common
            .sink
            .sync()
            .map_err(write_error("image file", 0))
    }
}

/// streamOptimized, VMware's layout.
struct StreamWriter {
    common: Common,
    /// The grain directory, filled as grain tables are written.
    gd: Vec<u32>,
    next_sector: u64,
}

impl StreamWriter {
    fn append(&mut self, bytes: &[u8], structure: &'static str) -> Result<u64, DiskError> {
        let at = self.next_sector * SECTOR;
        sink_write(&*self.common.sink, at, bytes, structure)?;
        self.next_sector += (bytes.len() as u64).div_ceil(SECTOR);
        file_sector(self.next_sector * SECTOR - 1)?;
        Ok(at)
    }

    /// A GT marker and the grain table being filled, if it has any grain.
    fn flush_table(&mut self) -> Result<(), DiskError> {
        let Some(index) = self.common.gt.index.take() else {
            return Ok(());
        };
        if self.common.gt.entries.iter().all(|&e| e == 0) {
            return Ok(());
        }
        self.append(
            &marker_sector(GT_SECTORS, MARKER_GRAIN_TABLE),
            "grain table marker",
        )?;
        let bytes = u32s_to_bytes(&self.common.gt.entries, GT_SECTORS);
        let at = self.append(&bytes, "grain table")?;
        self.gd[index as usize] = file_sector(at)?;
        self.common.gt.entries.fill(0);
        Ok(())
    }
}

impl DiskWriter for StreamWriter {
    fn block_size(&self) -> u64 {
        GRAIN_BYTES
    }

    fn encoder(&self) -> Option<Arc<dyn BlockEncoder>> {
        Some(Arc::new(GrainEncoder))
    }

    fn write_block(
        &mut self,
        offset: u64,
        data: &[u8],
        encoded: Option<Vec<u8>>,
    ) -> Result<(), DiskError> {
        let grain = self.common.grain_of(offset, data.len())?;
        let table = grain / GTES_PER_GT;
        if self.common.gt.index != Some(table) {
            self.flush_table()?;
            self.common.gt.index = Some(table);
        }
        let record = match encoded {
            Some(record) => record,
            None => GrainEncoder.encode(offset, data)?,
        };
        let at = self.append(&record, "compressed grain")?;
        self.common.gt.entries[(grain % GTES_PER_GT) as usize] = file_sector(at)?;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<(), DiskError> {
        self.flush_table()?;
        let gd_sectors = (self.common.gt_count * 4).div_ceil(SECTOR);
        self.append(
            &marker_sector(gd_sectors, MARKER_GRAIN_DIRECTORY),
            "grain directory marker",
        )?;
        let gd_bytes = u32s_to_bytes(&self.gd, gd_sectors);
        let gd_at = self.append(&gd_bytes, "grain directory")?;
        let mut footer = self.common.header;
        footer.gd_offset.set(gd_at / SECTOR);
        self.append(&marker_sector(1, MARKER_FOOTER), "footer marker")?;
        self.append(&header_sector(&footer), "footer")?;
        self.append(
            &marker_sector(0, MARKER_END_OF_STREAM),
            "end-of-stream marker",
        )?;
        let end = self.next_sector * SECTOR;
        self.common
            .sink
            .set_len(end)
            .map_err(write_error("image file", end))?;
        self.common
            .sink
            .sync()
            .map_err(write_error("image file", 0))
    }
}

/// Compresses one grain into its stream record: grain marker (LBA, size), zlib data (RFC
/// 1950, with header and Adler-32, as VMware and qemu read it), zero padding to a sector. A
/// short last block is compressed as a whole grain padded with zeros.
struct GrainEncoder;

struct EncoderScratch {
    deflater: Compress,
    padded: Vec<u8>,
    /// Room for the worst case (two grains); the record returned is an exact-size copy, so
    /// batches in flight hold what the grains compress to, not twice a grain each.
    out: Vec<u8>,
}

thread_local! {
    static DEFLATE: RefCell<EncoderScratch> = RefCell::new(EncoderScratch {
        deflater: Compress::new(Compression::new(DEFLATE_LEVEL), true),
        padded: Vec::new(),
        out: Vec::new(),
    });
}

impl BlockEncoder for GrainEncoder {
    fn encode(&self, offset: u64, data: &[u8]) -> Result<Vec<u8>, DiskError> {
        DEFLATE.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let EncoderScratch {
                deflater,
                padded,
                out,
            } = &mut *scratch;
            let input: &[u8] = if data.len() as u64 == GRAIN_BYTES {
                data
            } else {
                padded.clear();
                padded.extend_from_slice(data);
                padded.resize(GRAIN_BYTES as usize, 0);
                padded
            };
            let marker_len = size_of::<GrainMarkerRaw>();
            // Incompressible input grows by a few bytes per 16 KiB block; two grains always fit
            // (and are what qemu accepts).
            out.clear();
            out.reserve(marker_len + 2 * GRAIN_BYTES as usize);
            out.resize(marker_len, 0);
            deflater.reset();
            loop {
                let consumed = deflater.total_in() as usize;
                let status = deflater
                    .compress_vec(&input[consumed..], out, FlushCompress::Finish)
                    .map_err(|e| DiskError::Unsupported {
                        what: format!("deflating grain at {offset}: {e}"),
                    })?;
                if status == Status::StreamEnd {
                    break;
                }
                if out.len() > marker_len + 2 * GRAIN_BYTES as usize {
                    return Err(DiskError::Unsupported {
                        what: format!("deflating grain at {offset}: output exceeds two grains"),
                    });
                }
                out.reserve(GRAIN_BYTES as usize);
            }
            let size = (out.len() - marker_len) as u32;
            let mut marker = GrainMarkerRaw::new_zeroed();
            marker.lba.set(offset / SECTOR);
            marker.size.set(size);
            out[..marker_len].copy_from_slice(marker.as_bytes());
            let padded_len = out.len().next_multiple_of(SECTOR as usize);
            let mut record = Vec::with_capacity(padded_len);
            record.extend_from_slice(out);
            record.resize(padded_len, 0);
            Ok(record)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::disk::{ExtentKind, OpenOptions, open};
    use crate::write::MemorySink;

    /// A MemorySink shared between the writer and the test.
    struct Shared(Arc<MemorySink>);

    impl Sink for Shared {
        fn write_all_at(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
            self.0.write_all_at(offset, buf)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.0.set_len(len)
        }
        fn sync(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn options(pairs: &[(&str, &str)]) -> CreateOptions {
        CreateOptions {
            options: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            compress: false,
        }
    }

    /// 40 MiB + 1 KiB disk (two grain tables, a short last grain) with three data grains.
    fn content() -> Vec<u8> {
        let mut disk = vec![0u8; (40 << 20) + 1024];
        disk[..4096].fill(0x11);
        for (i, b) in disk[(33 << 20)..(33 << 20) + 65536].iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        let len = disk.len();
        disk[len - 10..].fill(0xee);
        disk
    }

    fn write(disk: &[u8], opts: &CreateOptions) -> Vec<u8> {
        let sink = Arc::new(MemorySink::new());
        let mut writer = create(Box::new(Shared(sink.clone())), disk.len() as u64, opts).unwrap();
        let block = writer.block_size() as usize;
        let encoder = writer.encoder();
        for (i, chunk) in disk.chunks(block).enumerate() {
            if chunk.iter().all(|&b| b == 0) {
                continue;
            }
            let offset = (i * block) as u64;
            let encoded = encoder.as_ref().map(|e| e.encode(offset, chunk).unwrap());
            writer.write_block(offset, chunk, encoded).unwrap();
        }
        writer.finish().unwrap();
        sink.contents()
    }

    fn read_back(image: Vec<u8>) -> (Vec<u8>, Box<dyn crate::disk::Disk>) {
        let disk = open(Arc::new(image), FORMAT, &OpenOptions::default()).unwrap();
        let mut back = vec![0u8; disk.virtual_size() as usize];
        disk.read_at(0, &mut back).unwrap();
        (back, disk)
    }

    #[test]
    fn monolithic_sparse_round_trip_in_qemu_layout() {
        let disk = content();
        let image = write(&disk, &options(&[]));
        let (h, _) =
            <SparseHeaderRaw as zerocopy::FromBytes>::read_from_prefix(&image[..]).unwrap();
        assert_eq!((h.rgd_offset.get(), h.gd_offset.get()), (21, 30));
        assert_eq!(h.over_head.get(), 128);
        // header + tables + 3 grains (the first, one in the second table, the short last).
        assert_eq!(image.len() as u64, (128 + 3 * 128) * SECTOR);
        let (back, reader) = read_back(image);
        assert_eq!(back.len(), disk.len());
        assert!(back == disk);
        assert_eq!(reader.info().subformat.as_deref(), Some("monolithicSparse"));
        assert_eq!(reader.check().unwrap().corruptions, 0);
        let hole = reader.extent(65536, 1 << 30).unwrap();
        assert_eq!(
            (hole.kind, hole.length),
            (ExtentKind::Zero, (33 << 20) - 65536)
        );
    }

    #[test]
    fn stream_round_trip_in_vmware_layout() {
        let disk = content();
        let image = write(&disk, &options(&[("subformat", "streamOptimized")]));
        let len = image.len();
        assert_eq!(&image[len - 1024..len - 1020], b"KDMV");
        assert_eq!(image[len - 1536 + 12], MARKER_FOOTER as u8);
        assert!(image[len - 512..].iter().all(|&b| b == 0));
        let (back, reader) = read_back(image);
        assert!(back == disk);
        assert_eq!(reader.info().subformat.as_deref(), Some("streamOptimized"));
        assert_eq!(reader.check().unwrap().allocated_clusters, Some(3));
    }

    #[test]
    fn output_is_deterministic_and_options_are_checked() {
        let disk = content();
        let opts = options(&[
            ("subformat", "streamOptimized"),
            ("adapter_type", "lsilogic"),
        ]);
        assert!(write(&disk, &opts) == write(&disk, &opts));
        let sink = || Box::new(MemorySink::new()) as Box<dyn Sink>;
        let refused = |pairs: &[(&str, &str)]| {
            create(sink(), 1 << 20, &options(pairs))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(refused(&[("cluster_size", "4096")]).contains("cluster_size"));
        assert!(refused(&[("subformat", "monolithicFlat")]).contains("multi-file"));
        assert!(refused(&[("compat6", "on"), ("hwversion", "7")]).contains("compat6"));
        assert!(refused(&[("adapter_type", "scsi")]).contains("adapter_type"));
        let text = descriptor(
            131072,
            &Options::parse(&options(&[("compat6", "on")])).unwrap(),
        );
        assert!(text.contains("ddb.virtualHWVersion = \"6\"\nddb.geometry.cylinders = \"130\""));
    }
}
