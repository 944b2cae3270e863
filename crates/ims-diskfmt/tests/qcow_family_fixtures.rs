//! The qcow2, qcow and QED readers against qemu's view of the fixture set: same virtual
//! content (SHA-256) for every readable image, clean errors for corrupt ones, `Reference` for
//! images that need another file. Skipped (with a note) when `IMS_FIXTURES_DIR` is unset.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use ims_diskfmt::Format;
use ims_diskfmt::disk::{DiskErrorKind, OpenOptions, open};
use sha2::{Digest, Sha256};

struct Row {
    category: String,
    name: String,
    format: Format,
    sha: String,
}

fn fixtures() -> Option<(PathBuf, Vec<Row>)> {
    let Some(dir) = std::env::var_os("IMS_FIXTURES_DIR").map(PathBuf::from) else {
        eprintln!("IMS_FIXTURES_DIR is unset: skipping the fixture test");
        return None;
    };
    let manifest = std::fs::read_to_string(dir.join("MANIFEST.tsv")).expect("MANIFEST.tsv");
    let mut lines = manifest.lines();
    let header: Vec<&str> = lines.next().expect("header").split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let (c_cat, c_name, c_fmt, c_sha) = (
        col("category"),
        col("name"),
        col("format"),
        col("virtual_sha256"),
    );
    let rows = lines
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let format = Format::parse(f[c_fmt])?;
            matches!(format, Format::Qcow2 | Format::Qcow | Format::Qed).then(|| Row {
                category: f[c_cat].to_string(),
                name: f[c_name].to_string(),
                format,
                sha: f[c_sha].to_string(),
            })
        })
        .collect();
    Some((dir, rows))
}

fn path_of(dir: &PathBuf, row: &Row) -> PathBuf {
    let sub = match row.category.as_str() {
        "malicious" => "unsafe",
        other => other,
    };
    dir.join(sub).join(&row.name)
}

/// SHA-256 of the whole virtual disk read in 1 MiB pieces, also checking that `extent`
/// tiles the disk and that Zero extents read as zeros.
fn virtual_sha256(
    disk: &dyn ims_diskfmt::disk::Disk,
) -> Result<String, ims_diskfmt::disk::DiskError> {
    let size = disk.virtual_size();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < size {
        let n = (size - offset).min(buf.len() as u64) as usize;
        disk.read_at(offset, &mut buf[..n])?;
        let mut at = 0u64;
        while at < n as u64 {
            let extent = disk.extent(offset + at, n as u64 - at)?;
            assert!(extent.length > 0 && extent.offset == offset + at);
            if extent.kind == ims_diskfmt::disk::ExtentKind::Zero {
                let piece = &buf[at as usize..(at + extent.length) as usize];
                assert!(
                    piece.iter().all(|&b| b == 0),
                    "zero extent at {} has data",
                    extent.offset
                );
            }
            at += extent.length;
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// What we expect where qemu's answer is not ours to copy.
fn expected_failure(name: &str) -> Option<DiskErrorKind> {
    Some(match name {
        "qcow2-v3-luks.qcow2" | "qcow2-v3-aes.qcow2" => DiskErrorKind::Unsupported,
        "qcow2-unknown-incompatible-bit.qcow2" => DiskErrorKind::Unsupported,
        "qcow2-huge-size.qcow2" | "qcow2-huge-l1.qcow2" => return None,
        "qcow2-truncated-half.qcow2"
        | "qcow2-l1-beyond-eof.qcow2"
        | "qcow2-l2-beyond-eof.qcow2"
        | "qcow2-l2-unaligned.qcow2"
        | "qcow2-l1-points-to-itself.qcow2"
        | "qcow2-zlib-bad-stream.qcow2"
        | "qcow2-zstd-bad-stream.qcow2" => DiskErrorKind::Corrupt,
        _ => return None,
    })
}

#[test]
fn readers_match_qemu_on_every_fixture() {
    let Some((dir, rows)) = fixtures() else {
        return;
    };
    let mut checked = 0;
    let mut failures = Vec::new();
    for row in &rows {
        let path = path_of(&dir, row);
        let file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let result = open(Arc::new(file), row.format, &OpenOptions::default())
            .and_then(|disk| virtual_sha256(&*disk));
        let unsafe_ref = row.category == "malicious"
            || (row.category == "unsafe" && !row.name.starts_with("chain-base"));
        let outcome = match (&result, expected_failure(&row.name)) {
            (Err(e), _) if unsafe_ref => {
                e.kind() == DiskErrorKind::Reference || row.name == "polyglot-iso9660-qcow2.qcow2"
            }
            (Ok(_), _) if row.name == "polyglot-iso9660-qcow2.qcow2" => true,
            (Err(e), Some(kind)) => e.kind() == kind,
            (Err(e), None) => {
                row.category == "corrupt" && row.sha == "None" && {
                    eprintln!("{}: {e}", row.name);
                    true
                }
            }
            (Ok(sha), None) => *sha == row.sha,
            (Ok(_), Some(_)) => false,
        };
        if !outcome {
            failures.push(format!(
                "{} ({}): {:?} (qemu: {})",
                row.name, row.category, result, row.sha
            ));
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 60, "only {checked} fixtures");
    eprintln!("{checked} qcow2/qcow/qed fixtures match");
}
