//! Checks `probe` against qemu-img over the fixture set of `make-fixtures.sh`.
//!
//! Run `bash ../shared/fixtures/make-fixtures.sh DIR` once and point `IMS_FIXTURES_DIR` at DIR.
//! Without it this test FAILS, unless `IMS_SKIP_FIXTURES=1` says skipping is intended.
//!
//! Per fixture class (from `MANIFEST.tsv`):
//! * valid (source, safe, odd, synthetic, and the `chain` bases in unsafe/): `probe` gives the
//!   format and virtual size qemu recorded, and `check_declared` accepts the declared format
//!   (QED excepted: banned for uploads like in Glance, so refused even when well-formed);
//! * unsafe (flag `unsafe`: references to other files, polyglots): refused, by `probe` or by
//!   `check_declared` with the declared format;
//! * corrupt: an error or a rejection, never a panic — except the few listed in
//!   `HEADER_VALID_CORRUPT`, whose damage lies in data or deep tables a header probe does not
//!   read (qemu-img info accepts them too);
//! * every fixture, streamed in 64 KiB chunks through an `InspectionWindow`, probes exactly like
//!   the whole file.
//!
//! Deliberate differences from qemu's probing, asserted below:
//! * ISO 9660 images are `iso` (qemu: raw); virtual size = volume space size × block size;
//! * fixed VHDs are `vhd` (qemu probes raw; its `-f vpc` size is what we compare);
//! * ZVHD/ZVHD2 are detected (qemu cannot open them); virtual size = `curr_size`, the
//!   original size rounded up to 1 GiB, as the Huawei driver reports it;
//! * raw images have no virtual size (the server uses the byte size; qemu rounds up to 512).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

mod common;

use common::{Fixture, fixtures_dir, manifest};

use ims_diskfmt::Format;
use ims_diskfmt::probe::{InspectionWindow, Probe, ProbeError, probe};

/// Corrupt fixtures whose headers are valid: the damage is in refcounts, L2 tables or
/// compressed data (found by a reader or `check`, not by a header probe), or the file is a
/// legitimately empty/tiny raw image.
const HEADER_VALID_CORRUPT: [(&str, &str); 8] = [
    (
        "qcow2-refblock-is-reftable.qcow2",
        "refcount block cycle: refcounts are not read",
    ),
    (
        "qcow2-refcount-zero.qcow2",
        "refcount consistency is qemu-img check's job",
    ),
    (
        "qcow2-cluster-referenced-twice.qcow2",
        "refcount consistency is qemu-img check's job",
    ),
    (
        "qcow2-zlib-bad-stream.qcow2",
        "compressed data is not decompressed by the probe",
    ),
    (
        "qcow2-zstd-bad-stream.qcow2",
        "compressed data is not decompressed by the probe",
    ),
    (
        "vmdk-stream-truncated.vmdk",
        "grains past EOF: grain tables are not walked",
    ),
    (
        "zero-length.img",
        "an empty file is a valid (empty) raw image",
    ),
    ("one-byte.img", "a 1-byte file is a valid raw image"),
];

const GIB: u64 = 1 << 30;

fn probe_file(path: &Path) -> Result<Probe, ProbeError> {
    let file = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    probe(&file)
}

fn probe_streamed(path: &Path) -> Result<Probe, ProbeError> {
    let mut file = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut builder = InspectionWindow::builder();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut chunk).expect("reading fixture");
        if n == 0 {
            break;
        }
        builder.push(&chunk[..n]);
    }
    probe(&builder.finish())
}

/// The format and virtual size we expect for a valid fixture, with the deliberate
/// differences from qemu documented at the top of this file.
fn expected(fixture: &Fixture, file_len: u64) -> (Format, Option<u64>) {
    match fixture.format.as_str() {
        "raw" if fixture.has_flag("iso9660") => (Format::Iso, Some(file_len)),
        "raw" => (Format::Raw, None),
        "zvhd" | "zvhd2" => (
            Format::parse(&fixture.format).unwrap(),
            Some(fixture_orig_size(fixture).div_ceil(GIB) * GIB),
        ),
        other => (
            Format::parse(other).unwrap_or_else(|| panic!("unknown format {other}")),
            fixture.virtual_size,
        ),
    }
}

/// ZVHD fixtures are written from source.raw (64 MiB).
fn fixture_orig_size(_: &Fixture) -> u64 {
    64 << 20
}

#[test]
fn probe_agrees_with_qemu_on_the_fixture_set() {
    let Some(root) = fixtures_dir() else {
        return;
    };
    let fixtures = manifest(&root);
    assert!(
        fixtures.len() > 100,
        "MANIFEST.tsv lists only {} fixtures",
        fixtures.len()
    );
    let mut passed: BTreeMap<&str, usize> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut header_valid_corrupt = Vec::new();

    for fixture in &fixtures {
        let path = fixture.path(&root);
        let name = fixture.name.as_str();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            (probe_file(&path), probe_streamed(&path))
        }));
        let Ok((whole, streamed)) = outcome else {
            failures.push(format!("{name}: probe PANICKED"));
            continue;
        };
        if format!("{whole:?}") != format!("{streamed:?}") {
            failures.push(format!(
                "{name}: streamed probe differs:\n  file:   {whole:?}\n  window: {streamed:?}"
            ));
            continue;
        }
        *passed.entry("streamed == whole file").or_default() += 1;

        let declared = fixture.declared();
        let verdict = whole.as_ref().map(|p| p.check_declared(declared));
        if fixture.category == "corrupt" {
            let refused = !matches!(verdict, Ok(Ok(())));
            if refused {
                *passed.entry("corrupt: refused").or_default() += 1;
            } else if HEADER_VALID_CORRUPT.iter().any(|(n, _)| *n == name) {
                header_valid_corrupt.push(name);
                *passed
                    .entry("corrupt: header-valid, accepted (listed)")
                    .or_default() += 1;
            } else {
                failures.push(format!("{name}: corrupt fixture accepted: {whole:?}"));
            }
        } else if fixture.has_flag("unsafe") {
            match verdict {
                Ok(Ok(())) => failures.push(format!("{name}: unsafe fixture accepted: {whole:?}")),
                Ok(Err(rejection)) => {
                    println!("  unsafe {name}: {rejection}");
                    *passed.entry("unsafe: refused").or_default() += 1;
                }
                Err(error) => {
                    println!("  unsafe {name}: probe error: {error}");
                    *passed.entry("unsafe: refused").or_default() += 1;
                }
            }
        } else {
            let file_len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let (format, size) = expected(fixture, file_len);
            match &whole {
                Ok(found) if found.format == format && found.virtual_size == size => {
                    match (found.check_declared(declared), format) {
                        (Ok(()), _) => {
                            *passed
                                .entry("valid: format+size match, accepted")
                                .or_default() += 1
                        }
                        // QED is banned for uploads (like Glance) even when well-formed.
                        (Err(_), Format::Qed) => {
                            *passed
                                .entry("valid qed: format+size match, banned")
                                .or_default() += 1
                        }
                        (Err(e), _) => failures.push(format!("{name}: valid fixture refused: {e}")),
                    }
                }
                other => failures.push(format!(
                    "{name}: expected {format} with virtual size {size:?}, got {other:?}"
                )),
            }
        }
    }

    println!("fixtures: {} in {}", fixtures.len(), root.display());
    for (class, count) in &passed {
        println!("  {count:3} {class}");
    }
    println!("  header-valid corrupt fixtures accepted: {header_valid_corrupt:?}");
    assert!(
        failures.is_empty(),
        "{} fixture(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
