//! qemu-img as an oracle for the readers: every fixture of `make-fixtures.sh` opened with
//! `disk::open` and read end to end.
//!
//! Run `bash ../shared/fixtures/make-fixtures.sh DIR` once and point `IMS_FIXTURES_DIR` at DIR.
//! Without it this test FAILS, unless `IMS_SKIP_FIXTURES=1` says skipping is intended.
//!
//! Per fixture class (from `MANIFEST.tsv`):
//! * valid (source, safe, odd, synthetic, and the chain bottoms in unsafe/): opens with the
//!   declared format; the virtual size equals qemu's; the SHA-256 of the virtual content
//!   (holes hashed as zeros from `extent()`, without reading them) equals qemu's; `info()`
//!   reports qemu's cluster size, and qcow2's compat / VMDK's create type as the subformat.
//!   Encrypted images (flag `encrypted`) are refused with `Unsupported` (no key handling here).
//! * corrupt: fails at open or while reading, with a clean error, never a panic — except those
//!   in [`CORRUPT_READABLE`], whose damage does not touch the data a reader needs.
//! * unsafe (flag `unsafe`, including the malicious ones): refused with
//!   `DiskErrorKind::Reference` — except those in [`UNSAFE_READABLE`].
//!
//! Formats whose reader has not landed yet are listed in [`PENDING_FORMATS`]: for them
//! `Unsupported("... not implemented yet")` is counted as pending, not failed. Anywhere else
//! that error is a failure.
//!
//! Deliberate differences from qemu: ZVHD/ZVHD2 (qemu cannot read them) must contain
//! source.raw followed by zeros, whatever virtual size the reader reports (the Huawei driver
//! rounds it up to 1 GiB).

use std::collections::BTreeMap;
use std::fs::File;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

mod common;

use common::{Fixture, fixtures_dir, manifest};
use ims_diskfmt::Format;
use ims_diskfmt::disk::{
    CheckReport, Disk, DiskError, DiskErrorKind, ExtentKind, OpenOptions, open,
};

/// Formats whose reader is still being written. Each format helper removes its formats from
/// this list in the commit that lands its reader; from then on every fixture of the format
/// must pass. (Names as `Format::as_str`.)
const PENDING_FORMATS: &[&str] = &[];

/// Whether a listed corrupt fixture must be readable or merely may be.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Readable {
    /// Refusing it would be a bug: the data a reader needs is intact.
    Must,
    /// Either a clean refusal or a successful read (which must then match qemu's content).
    May,
}

/// Corrupt fixtures a reader may legitimately read, and why. A successful read must return
/// qemu's content.
const CORRUPT_READABLE: [(&str, Readable, &str); 9] = [
    (
        "qcow2-dirty-bit.qcow2",
        Readable::Must,
        "the dirty bit only means refcounts may be stale; mappings are intact",
    ),
    (
        "qcow2-refcount-zero.qcow2",
        Readable::Must,
        "refcounts are not used for reading; check() must report it",
    ),
    (
        "qcow2-cluster-referenced-twice.qcow2",
        Readable::Must,
        "refcounts are not used for reading; check() must report it",
    ),
    (
        "qcow2-refblock-is-reftable.qcow2",
        Readable::May,
        "refcount cycle: harmless for reading, a strict reader may refuse it",
    ),
    (
        "qcow2-refcount-table-overlaps-l1.qcow2",
        Readable::May,
        "overlapping metadata: the L1 table itself is intact, a strict reader may refuse it",
    ),
    (
        "qcow2-corrupt-bit.qcow2",
        Readable::May,
        "qemu allows read-only opens of images marked corrupt",
    ),
    (
        "vhdx-dirty-log.vhdx",
        Readable::May,
        "non-zero LogGuid but no valid log entry: nothing to replay; refusing is also fine",
    ),
    (
        "zero-length.img",
        Readable::Must,
        "an empty file is a valid (empty) raw image",
    ),
    (
        "one-byte.img",
        Readable::Must,
        "a 1-byte file is a valid raw image of one sector",
    ),
];

/// Unsafe fixtures that a reader opens without any reference, and why.
const UNSAFE_READABLE: [(&str, &str); 1] = [(
    "polyglot-iso9660-qcow2.qcow2",
    "the danger is ambiguous detection (probe refuses it); read as the declared qcow2 it \
     references nothing",
)];

/// Fixtures whose content is source.raw (ZVHD/ZVHD2: qemu has no reader, so no virtual size).
const SOURCE_RAW_SIZE: u64 = 64 << 20;

/// Bytes read (and hashed) per call: large reads keep the readers' per-call overhead low.
const READ_CHUNK: usize = 8 << 20;

#[derive(Default)]
struct Tally {
    passed: usize,
    pending: usize,
    failed: usize,
}

/// What reading a fixture end to end produced.
struct Content {
    virtual_size: u64,
    /// SHA-256 of the first `hashed` bytes.
    sha256: String,
    hashed: u64,
    /// First non-zero byte after `hashed`, if any.
    tail_nonzero_at: Option<u64>,
    info: ims_diskfmt::disk::DiskInfo,
    /// `check()`'s report; `None` when the format has no check (yet).
    check: Option<Result<CheckReport, DiskError>>,
}

fn is_not_implemented(error: &DiskError) -> bool {
    matches!(error, DiskError::Unsupported { what } if what.contains("not implemented yet"))
}

fn open_fixture(path: &Path, format: Format) -> Result<Box<dyn Disk>, DiskError> {
    let file = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    open(Arc::new(file), format, &OpenOptions::default())
}

/// Reads the whole disk through `extent()` + `read_at()`, hashing the first `hash_len` bytes
/// and checking that the rest reads as zeros.
fn read_content(disk: &dyn Disk, hash_len: u64) -> Result<Content, String> {
    let size = disk.virtual_size();
    let hash_len = hash_len.min(size);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let zeros = vec![0u8; READ_CHUNK];
    let mut tail_nonzero_at = None;
    let mut offset = 0u64;
    while offset < size {
        let want = (size - offset).min(READ_CHUNK as u64);
        let extent = disk
            .extent(offset, want)
            .map_err(|e| format!("extent at {offset}: {e}"))?;
        if extent.offset != offset || extent.length == 0 || extent.length > want {
            return Err(format!(
                "extent({offset}, {want}) broke the contract: {extent:?}"
            ));
        }
        let len = extent.length as usize;
        let chunk = match extent.kind {
            ExtentKind::Zero => &zeros[..len],
            ExtentKind::Data => {
                disk.read_at(offset, &mut buf[..len])
                    .map_err(|e| format!("read at {offset}: {e} [{:?}]", e.kind()))?;
                &buf[..len]
            }
        };
        let hashed_here = hash_len.saturating_sub(offset).min(len as u64) as usize;
        hasher.update(&chunk[..hashed_here]);
        if tail_nonzero_at.is_none()
            && let Some(i) = chunk[hashed_here..].iter().position(|&b| b != 0)
        {
            tail_nonzero_at = Some(offset + (hashed_here + i) as u64);
        }
        offset += extent.length;
    }
    Ok(Content {
        virtual_size: size,
        sha256: hex(&hasher.finalize()),
        hashed: hash_len,
        tail_nonzero_at,
        info: disk.info(),
        check: match disk.check() {
            Err(DiskError::Unsupported { .. }) => None,
            other => Some(other),
        },
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// qemu's `info --output=json` for the fixture, where recorded.
fn qemu_info(root: &Path, fixture: &Fixture) -> Option<serde_json::Value> {
    let mut path = fixture.path(root).into_os_string();
    path.push(".info.json");
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Compares our content and info with qemu's answers; returns the mismatches.
fn compare_with_qemu(
    root: &Path,
    fixture: &Fixture,
    format: Format,
    content: &Content,
) -> Vec<String> {
    let mut problems = Vec::new();
    let compressed_huawei = matches!(format, Format::Zvhd | Format::Zvhd2);
    let expected_size = if compressed_huawei {
        Some(SOURCE_RAW_SIZE)
    } else {
        fixture.virtual_size
    };
    match expected_size {
        Some(size) if compressed_huawei && content.virtual_size < size => problems.push(format!(
            "virtual size {} is smaller than the {size}-byte original",
            content.virtual_size
        )),
        Some(size) if !compressed_huawei && content.virtual_size != size => problems.push(format!(
            "virtual size {} != qemu's {size}",
            content.virtual_size
        )),
        _ => {}
    }
    if let Some(expected) = &fixture.virtual_sha256
        && content.sha256 != *expected
    {
        problems.push(format!(
            "SHA-256 of the first {} bytes {} != qemu's {expected}",
            content.hashed, content.sha256
        ));
    }
    if let Some(at) = content.tail_nonzero_at {
        problems.push(format!("non-zero byte at {at}, past the original content"));
    }
    match (&content.check, fixture.check_rc) {
        // qemu found corruptions (rc 2) or none (rc 0, 3 = leaks only): so must we.
        (Some(Ok(report)), Some(2)) if report.corruptions == 0 => {
            problems.push("check() found no corruption where qemu-img check did".into())
        }
        (Some(Ok(report)), Some(0 | 3)) if report.corruptions > 0 => problems.push(format!(
            "check() reports corruptions qemu-img check does not: {:?}",
            report.messages
        )),
        (Some(Err(error)), Some(0 | 3)) => problems.push(format!("check() failed: {error}")),
        _ => {}
    }
    if let Some(qemu) = qemu_info(root, fixture) {
        let qemu_cluster = qemu.get("cluster-size").and_then(|v| v.as_u64());
        if format != Format::Raw && content.info.cluster_size != qemu_cluster {
            problems.push(format!(
                "info cluster size {:?} != qemu's {qemu_cluster:?}",
                content.info.cluster_size
            ));
        }
        let data = &qemu["format-specific"]["data"];
        let qemu_subformat = match format {
            Format::Qcow2 => data["compat"].as_str(),
            Format::Vmdk => data["create-type"].as_str(),
            _ => None,
        };
        if let Some(sub) = qemu_subformat
            && content.info.subformat.as_deref() != Some(sub)
        {
            problems.push(format!(
                "info subformat {:?} != qemu's {sub:?}",
                content.info.subformat
            ));
        }
    }
    problems
}

/// The verdict on one fixture: `Ok(Some(note))` passed, `Ok(None)` pending, `Err` failed.
fn judge(root: &Path, fixture: &Fixture) -> Result<Option<String>, String> {
    let format = Format::parse(fixture.declared())
        .ok_or_else(|| format!("unknown format {:?}", fixture.format))?;
    let pending = PENDING_FORMATS.contains(&format.as_str());
    let hash_len = fixture.virtual_size.unwrap_or(SOURCE_RAW_SIZE);
    let result = open_fixture(&fixture.path(root), format).map_err(|e| (true, e));
    let result = result.and_then(|disk| {
        read_content(disk.as_ref(), hash_len).map_err(|message| {
            // Keep the read error's text; the kind only matters for open errors.
            (
                false,
                DiskError::Unsupported {
                    what: format!("while reading: {message}"),
                },
            )
        })
    });
    if let Err((_, error)) = &result
        && is_not_implemented(error)
    {
        return if pending {
            Ok(None)
        } else {
            Err(format!("{format} is not in PENDING_FORMATS: {error}"))
        };
    }

    if fixture.category == "corrupt" {
        let listed = CORRUPT_READABLE.iter().find(|(n, ..)| *n == fixture.name);
        return match (result, listed) {
            (Ok(content), Some(_)) => {
                let problems = compare_with_qemu(root, fixture, format, &content);
                if problems.is_empty() {
                    Ok(Some("corrupt: readable (listed), content = qemu's".into()))
                } else {
                    Err(problems.join("; "))
                }
            }
            (Ok(_), None) => Err("corrupt fixture read without any error".into()),
            (Err((_, error)), Some((_, Readable::Must, why))) => {
                Err(format!("must be readable ({why}) but: {error}"))
            }
            (Err((at_open, error)), _) => {
                println!("    corrupt {}: {error}", fixture.name);
                Ok(Some(if at_open {
                    "corrupt: refused at open".into()
                } else {
                    "corrupt: failed while reading".into()
                }))
            }
        };
    }

    if fixture.has_flag("unsafe") {
        let listed = UNSAFE_READABLE.iter().any(|(n, _)| *n == fixture.name);
        return match result {
            Ok(_) if listed => Ok(Some("unsafe: readable (listed)".into())),
            Ok(_) => Err("unsafe fixture opened and read: references not refused".into()),
            Err((true, error)) if error.kind() == DiskErrorKind::Reference => {
                println!("    unsafe {}: {error}", fixture.name);
                Ok(Some("unsafe: refused as Reference".into()))
            }
            Err((_, error)) => Err(format!(
                "unsafe fixture refused, but not as Reference at open: {error} [{:?}]",
                error.kind()
            )),
        };
    }

    if fixture.has_flag("encrypted") {
        return match result {
            Err((true, error)) if error.kind() == DiskErrorKind::Unsupported => {
                Ok(Some("encrypted: refused as Unsupported".into()))
            }
            Err((_, error)) => Err(format!("encrypted image: unexpected error {error}")),
            Ok(_) => Err("encrypted image read without a key".into()),
        };
    }

    match result {
        Ok(content) => {
            let problems = compare_with_qemu(root, fixture, format, &content);
            if problems.is_empty() {
                Ok(Some("valid: size + SHA-256 + info = qemu's".into()))
            } else {
                Err(problems.join("; "))
            }
        }
        Err((_, error)) => Err(format!(
            "valid fixture failed: {error} [{:?}]",
            error.kind()
        )),
    }
}

#[test]
fn readers_agree_with_qemu_on_the_fixture_set() {
    let Some(root) = fixtures_dir() else {
        return;
    };
    let fixtures = manifest(&root);
    assert!(
        fixtures.len() > 100,
        "MANIFEST.tsv lists only {} fixtures",
        fixtures.len()
    );
    let mut per_format: BTreeMap<String, Tally> = BTreeMap::new();
    let mut per_class: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();

    for fixture in &fixtures {
        let verdict = catch_unwind(AssertUnwindSafe(|| judge(&root, fixture)))
            .unwrap_or_else(|_| Err("PANICKED".into()));
        let tally = per_format.entry(fixture.declared().to_owned()).or_default();
        match verdict {
            Ok(Some(class)) => {
                tally.passed += 1;
                *per_class.entry(class).or_default() += 1;
            }
            Ok(None) => tally.pending += 1,
            Err(problem) => {
                tally.failed += 1;
                failures.push(format!("{}/{}: {problem}", fixture.category, fixture.name));
            }
        }
    }

    println!(
        "reader oracle: {} fixtures in {}",
        fixtures.len(),
        root.display()
    );
    println!(
        "  {:8} {:>6} {:>7} {:>6}",
        "format", "passed", "pending", "failed"
    );
    for (format, t) in &per_format {
        println!("  {format:8} {:6} {:7} {:6}", t.passed, t.pending, t.failed);
    }
    for (class, count) in &per_class {
        println!("  {count:3} {class}");
    }
    assert!(
        failures.is_empty(),
        "{} fixture(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn listed_exceptions_name_real_fixtures() {
    let Some(root) = fixtures_dir() else {
        return;
    };
    let fixtures = manifest(&root);
    let exists = |name: &str| fixtures.iter().any(|f| f.name == name);
    for (name, ..) in CORRUPT_READABLE {
        assert!(
            exists(name),
            "CORRUPT_READABLE names unknown fixture {name}"
        );
    }
    for (name, _) in UNSAFE_READABLE {
        assert!(exists(name), "UNSAFE_READABLE names unknown fixture {name}");
    }
    for format in PENDING_FORMATS {
        assert!(
            Format::parse(format).is_some(),
            "PENDING_FORMATS names unknown format {format}"
        );
    }
}
