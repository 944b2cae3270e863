//! L1/L2 mapping: decoding entries into runs of the virtual disk, and a bounded, sharded
//! cache of L2 tables so concurrent readers rarely contend or re-read metadata.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::header::*;
use super::parser::Header;
use super::read_exact;
use crate::disk::DiskError;
use crate::{Format, ReadAt};

/// Memory the L2 cache may hold. 32 MiB maps 256 GiB of disk with 64 KiB clusters.
const L2_CACHE_BYTES: u64 = 32 << 20;
/// Independent cache shards: readers on different L2 tables rarely share a lock.
const L2_CACHE_SHARDS: usize = 16;

/// An L2 table decoded to native-endian words (two per entry with extended L2).
pub(crate) type L2Table = Arc<[u64]>;

/// A bounded map from L2 table offset to table, split into shards with FIFO eviction.
pub(crate) struct L2Cache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    table_bytes: u64,
}

#[derive(Default)]
struct Shard {
    tables: HashMap<u64, L2Table>,
    order: VecDeque<u64>,
}

impl L2Cache {
    /// A cache of tables that are `table_bytes` long each.
    pub(crate) fn new(table_bytes: u64) -> L2Cache {
        let tables = (L2_CACHE_BYTES / table_bytes).max(L2_CACHE_SHARDS as u64) as usize;
        L2Cache {
            shards: (0..L2_CACHE_SHARDS)
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
            per_shard: tables / L2_CACHE_SHARDS,
            table_bytes,
        }
    }

    fn shard(&self, offset: u64) -> std::sync::MutexGuard<'_, Shard> {
        let index = (offset / self.table_bytes) as usize % L2_CACHE_SHARDS;
        // A panic while holding the lock leaves a consistent map behind.
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The table at `offset`, loading it with `load` on a miss (outside the lock).
    pub(crate) fn get(
        &self,
        offset: u64,
        load: impl FnOnce() -> Result<L2Table, DiskError>,
    ) -> Result<L2Table, DiskError> {
        if let Some(table) = self.shard(offset).tables.get(&offset) {
            return Ok(table.clone());
        }
        let table = load()?;
        let mut shard = self.shard(offset);
        if shard.tables.insert(offset, table.clone()).is_none() {
            shard.order.push_back(offset);
            while shard.order.len() > self.per_shard {
                if let Some(old) = shard.order.pop_front() {
                    shard.tables.remove(&old);
                }
            }
        }
        Ok(table)
    }
}

/// What a run of guest bytes maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mapping {
    /// Reads as zeros: unallocated (no backing file), zero flag, or zero subclusters.
    Zero,
    /// Stored uncompressed at this host offset (contiguous for the whole run).
    Data { host: u64 },
    /// One compressed cluster (the run never crosses its end); `entry` is its L2 entry.
    Compressed { entry: u64 },
}

/// A run of the virtual disk with one mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub len: u64,
    pub mapping: Mapping,
}

/// The active L1 table plus everything needed to map guest offsets through L2 tables.
pub(crate) struct Mapper {
    pub header: Header,
    pub l1: Vec<u64>,
    cache: L2Cache,
    lenient: bool,
}

fn corrupt(structure: &'static str, offset: u64, reason: impl Into<String>) -> DiskError {
    DiskError::corrupt(Format::Qcow2, structure, offset, reason)
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < a.1 && b.0 < b.1 && a.0 < b.1 && b.0 < a.1
}

/// Reads `entries` big-endian u64s at `offset`; past the end of the image they read as zero
/// when `lenient` (qemu's behaviour), else the table is corrupt.
pub(crate) fn read_table(
    source: &dyn ReadAt,
    structure: &'static str,
    offset: u64,
    entries: u64,
    lenient: bool,
) -> Result<Vec<u64>, DiskError> {
    let mut bytes = vec![0u8; (entries * 8) as usize];
    if lenient {
        super::read_zero_padded(source, structure, offset, &mut bytes)?;
    } else {
        read_exact(source, Format::Qcow2, structure, offset, &mut bytes)?;
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
        .collect())
}

impl Mapper {
    pub(crate) fn new(
        source: &dyn ReadAt,
        header: Header,
        lenient: bool,
    ) -> Result<Mapper, DiskError> {
        let l1 = read_table(
            source,
            "L1 table",
            header.l1_offset,
            header.l1_entries,
            lenient,
        )?;
        let cache = L2Cache::new(header.cluster_size);
        Ok(Mapper {
            header,
            l1,
            cache,
            lenient,
        })
    }

    /// Validates an L2 table offset taken from L1 entry `index`.
    pub(crate) fn check_l2_offset(&self, index: u64, l2: u64) -> Result<(), DiskError> {
        let h = &self.header;
        let at = h.l1_offset + index * 8;
        if !l2.is_multiple_of(h.cluster_size) {
            return Err(corrupt(
                "L1 table",
                at,
                format!("entry {index} points at unaligned L2 table offset {l2:#x}"),
            ));
        }
        let range = (l2, l2.saturating_add(h.cluster_size));
        for (name, metadata) in [
            ("header", (0, h.cluster_size)),
            ("L1 table", h.l1_range()),
            ("refcount table", h.refcount_table_range()),
        ] {
            if overlaps(range, metadata) {
                return Err(corrupt(
                    "L1 table",
                    at,
                    format!("entry {index} points its L2 table at the {name}"),
                ));
            }
        }
        Ok(())
    }

    /// The L2 table at `l2` (validated by [`Mapper::check_l2_offset`]), from the cache.
    pub(crate) fn l2_table(
        &self,
        source: &dyn ReadAt,
        l2: u64,
    ) -> Result<Option<L2Table>, DiskError> {
        let h = &self.header;
        if l2.saturating_add(h.cluster_size) > h.file_len {
            if self.lenient {
                return Ok(None);
            }
            return Err(corrupt(
                "L2 table",
                l2,
                format!("lies past the end of the {}-byte image", h.file_len),
            ));
        }
        let words = h.cluster_size / 8;
        self.cache
            .get(l2, || {
                Ok(read_table(source, "L2 table", l2, words, false)?.into())
            })
            .map(Some)
    }

    /// The run starting at guest offset `guest` (< virtual size), at most `max_len` bytes, as
    /// long as consecutive clusters (or subclusters) keep the same kind of mapping.
    pub(crate) fn run(
        &self,
        source: &dyn ReadAt,
        guest: u64,
        max_len: u64,
    ) -> Result<Run, DiskError> {
        let h = &self.header;
        let max_len = max_len.min(h.virtual_size - guest);
        let l2_entries = h.l2_entries();
        let cluster_index = guest >> h.cluster_bits;
        let l1_index = cluster_index / l2_entries;
        let first = cluster_index % l2_entries;
        let in_cluster = guest & (h.cluster_size - 1);
        // Bytes from `guest` to the end of the region this L2 table maps.
        let table_span = (l2_entries - first) * h.cluster_size - in_cluster;
        let zero_run = Run {
            len: max_len.min(table_span),
            mapping: Mapping::Zero,
        };
        let l1e = self.l1.get(l1_index as usize).copied().unwrap_or(0);
        let l2 = l1e & TABLE_OFFSET_MASK;
        if l2 == 0 {
            return Ok(zero_run);
        }
        self.check_l2_offset(l1_index, l2)?;
        let Some(table) = self.l2_table(source, l2)? else {
            return Ok(zero_run);
        };
        let stride = (h.l2_entry_bytes() / 8) as usize;
        let entry_at = |i: u64| l2 + i * h.l2_entry_bytes();
        let piece = |i: u64, offset_in: u64| -> Result<(Mapping, u64), DiskError> {
            let word = table[i as usize * stride];
            let bitmap = if h.extended_l2 {
                table[i as usize * stride + 1]
            } else {
                0
            };
            self.decode(word, bitmap, offset_in, entry_at(i))
        };
        let (mapping, len) = piece(first, in_cluster)?;
        let mut total = len;
        if let Mapping::Compressed { .. } = mapping {
            return Ok(Run {
                len: total.min(max_len),
                mapping,
            });
        }
        // Extend over following clusters while the mapping continues seamlessly.
        let mut index = first + 1;
        let mut expected_host = match mapping {
            Mapping::Data { host } => Some(host + len),
            _ => None,
        };
        while total < max_len
            && index < l2_entries
            && (in_cluster + total).is_multiple_of(h.cluster_size)
        {
            let (next, next_len) = piece(index, 0)?;
            let continues = match (mapping, next) {
                (Mapping::Zero, Mapping::Zero) => true,
                (Mapping::Data { .. }, Mapping::Data { host }) => Some(host) == expected_host,
                _ => false,
            };
            if !continues {
                break;
            }
            total += next_len;
            expected_host = expected_host.map(|h| h + next_len);
            if next_len < h.cluster_size {
                break;
            }
            index += 1;
        }
        Ok(Run {
            len: total.min(max_len),
            mapping,
        })
    }

    /// Decodes one L2 entry for the byte `offset_in` of its cluster: the mapping and how many
    /// bytes from there keep it (to the end of the cluster or of a subcluster run).
    fn decode(
        &self,
        word: u64,
        bitmap: u64,
        offset_in: u64,
        at: u64,
    ) -> Result<(Mapping, u64), DiskError> {
        let h = &self.header;
        let to_end = h.cluster_size - offset_in;
        if word & L2_COMPRESSED != 0 {
            let descriptor = CompressedDescriptor::decode(word, h.cluster_bits);
            if descriptor.offset >= h.file_len {
                if self.lenient {
                    return Ok((Mapping::Zero, to_end));
                }
                return Err(corrupt(
                    "L2 table",
                    at,
                    format!(
                        "compressed cluster at {:#x} lies past the end of the image",
                        descriptor.offset
                    ),
                ));
            }
            return Ok((Mapping::Compressed { entry: word }, to_end));
        }
        let host = word & TABLE_OFFSET_MASK;
        let (mapping, len) = if h.extended_l2 {
            let sc_size = h.cluster_size / u64::from(SUBCLUSTERS);
            let sc = (offset_in / sc_size) as u32;
            let alloc = (bitmap as u32) >> sc;
            let zero = ((bitmap >> 32) as u32) >> sc;
            let (mapping, count) = if alloc & 1 != 0 {
                if zero & 1 != 0 {
                    return Err(corrupt(
                        "L2 table",
                        at,
                        format!("subcluster {sc} is both allocated and zero"),
                    ));
                }
                let count = alloc.trailing_ones().min(zero.trailing_zeros());
                (
                    Mapping::Data {
                        host: host + u64::from(sc) * sc_size + offset_in % sc_size,
                    },
                    count,
                )
            } else if zero & 1 != 0 {
                (
                    Mapping::Zero,
                    zero.trailing_ones().min(alloc.trailing_zeros()),
                )
            } else {
                (Mapping::Zero, (alloc | zero).trailing_zeros())
            };
            let count = u64::from(count.min(SUBCLUSTERS - sc));
            let len = count * sc_size - offset_in % sc_size;
            if let Mapping::Data { .. } = mapping {
                if host == 0 {
                    return Err(corrupt(
                        "L2 table",
                        at,
                        "allocated subclusters without a host cluster",
                    ));
                }
            }
            (mapping, len)
        } else if (h.version >= 3 && word & L2_ZERO != 0) || host == 0 {
            (Mapping::Zero, to_end)
        } else {
            (
                Mapping::Data {
                    host: host + offset_in,
                },
                to_end,
            )
        };
        if let Mapping::Data { .. } = mapping {
            if !host.is_multiple_of(h.cluster_size) {
                return Err(corrupt(
                    "L2 table",
                    at,
                    format!("data cluster offset {host:#x} is not cluster aligned"),
                ));
            }
            if host >= h.file_len {
                if self.lenient {
                    return Ok((Mapping::Zero, len));
                }
                return Err(corrupt(
                    "L2 table",
                    at,
                    format!(
                        "data cluster at {host:#x} lies past the end of the {}-byte image",
                        h.file_len
                    ),
                ));
            }
        }
        Ok((mapping, len))
    }
}
