//! VHD, VHDX, ZVHD and ZVHD2 writers checked by independent readers: images converted from the
//! fixture set's `source.raw` must pass `qemu-img check` (VHDX) and `qemu-img compare` against
//! the source (VHD, VHDX), read back identically through `disk::open`, stay sparse and be
//! byte-for-byte deterministic; ZVHD/ZVHD2 output is also decoded by `tests/zvhd_check.py`
//! (stdlib zlib + the `zstd` tool), which feeds all ZVHD records to ONE zlib decompressor.
//! Also: the corrupt VHD-family fixtures fail with errors naming the structure, and lenient
//! mode reproduces qemu's content for the VHDX whose BAT points into the header.
//!
//! Needs `IMS_FIXTURES_DIR` (see `oracle.rs`), `qemu-img`, `python3` and `zstd`.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use sha2::{Digest, Sha256};

mod common;

use ims_diskfmt::Format;
use ims_diskfmt::disk::{Disk, DiskErrorKind, ExtentKind, OpenOptions, open};
use ims_diskfmt::write::{CreateOptions, create};

const SOURCE_SHA256: &str = "9e9121964e400679b597a0ad35fe6ca75d468da376adaaf5f5e9fc0669336adb";

fn source() -> Option<PathBuf> {
    common::fixtures_dir().map(|dir| dir.join("source").join("source.raw"))
}

fn work_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("vhd-family")
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn options(pairs: &[(&str, &str)]) -> CreateOptions {
    CreateOptions {
        options: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        compress: false,
    }
}

/// A minimal converter: blocks in ascending order, all-zero blocks skipped, the encoder run
/// on two threads in any order before the in-order writes.
fn convert(src: &Path, dst: &Path, format: Format, opts: &CreateOptions) {
    let disk = open(
        Arc::new(File::open(src).unwrap()),
        Format::Raw,
        &OpenOptions::default(),
    )
    .unwrap();
    let size = disk.virtual_size();
    let out = File::create(dst).unwrap();
    let mut writer = create(Box::new(out), format, size, opts).unwrap();
    let block = writer.block_size();
    let encoder = writer.encoder();
    let offsets: Vec<u64> = (0..size.div_ceil(block)).map(|i| i * block).collect();
    for batch in offsets.chunks(2) {
        let blocks: Vec<(u64, Vec<u8>, Option<Vec<u8>>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .iter()
                .map(|&offset| {
                    let (disk, encoder) = (&disk, encoder.clone());
                    scope.spawn(move || {
                        let mut data = vec![0u8; block.min(size - offset) as usize];
                        disk.read_at(offset, &mut data).unwrap();
                        let encoded = match (&encoder, data.iter().all(|&b| b == 0)) {
                            (Some(e), false) => Some(e.encode(offset, &data).unwrap()),
                            _ => None,
                        };
                        (offset, data, encoded)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (offset, data, encoded) in blocks {
            if data.iter().any(|&b| b != 0) {
                writer.write_block(offset, &data, encoded).unwrap();
            }
        }
    }
    writer.finish().unwrap();
}

fn open_as(path: &Path, format: Format) -> Box<dyn Disk> {
    open(
        Arc::new(File::open(path).unwrap()),
        format,
        &OpenOptions::default(),
    )
    .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

/// SHA-256 of the first `len` bytes of the virtual content; asserts the rest is zeros.
fn content_sha256(disk: &dyn Disk, len: u64) -> String {
    let size = disk.virtual_size();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 8 << 20];
    let mut offset = 0;
    while offset < size {
        let want = (size - offset).min(buf.len() as u64);
        let extent = disk.extent(offset, want).unwrap();
        let chunk = &mut buf[..extent.length as usize];
        match extent.kind {
            ExtentKind::Zero => chunk.fill(0),
            ExtentKind::Data => disk.read_at(offset, chunk).unwrap(),
        }
        let hashed = len.saturating_sub(offset).min(extent.length) as usize;
        hasher.update(&chunk[..hashed]);
        assert!(
            chunk[hashed..].iter().all(|&b| b == 0),
            "non-zero past {len}"
        );
        offset += extent.length;
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn qemu_img(args: &[&str]) -> (bool, String) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img must be installed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn assert_compare(src: &Path, image: &Path, qemu_format: &str) {
    let (ok, text) = qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        qemu_format,
        src.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert!(ok, "qemu-img compare {}: {text}", image.display());
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn vhd_writer_matches_qemu() {
    let Some(src) = source() else { return };
    let dir = work_dir("vhd");
    let cases: [(&str, &[(&str, &str)], u64); 3] = [
        ("dynamic.vhd", &[], 67_125_248),
        ("fixed.vhd", &[("subformat", "fixed")], 67_125_248),
        ("forced.vhd", &[("force_size", "on")], 64 << 20),
    ];
    for (name, pairs, size) in cases {
        let out = dir.join(name);
        convert(&src, &out, Format::Vhd, &options(pairs));
        assert_compare(&src, &out, "vpc");
        let (ok, info) = qemu_img(&["info", "-f", "vpc", "--output=json", out.to_str().unwrap()]);
        assert!(
            ok && info.contains(&format!("\"virtual-size\": {size}")),
            "{info}"
        );
        let disk = open_as(&out, Format::Vhd);
        assert_eq!(disk.virtual_size(), size, "{name}");
        assert_eq!(
            content_sha256(disk.as_ref(), 64 << 20),
            SOURCE_SHA256,
            "{name}"
        );
        let report = disk.check().unwrap();
        assert_eq!(report.corruptions, 0, "{name}: {:?}", report.messages);
        // Sparse: the source's holes and zero blocks are not stored.
        assert!(allocated(&out) < 60 << 20, "{name} is not sparse");
    }
    // Deterministic output.
    let again = dir.join("dynamic-again.vhd");
    convert(&src, &again, Format::Vhd, &options(&[]));
    assert_eq!(
        std::fs::read(dir.join("dynamic.vhd")).unwrap(),
        std::fs::read(&again).unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn vhdx_writer_passes_qemu_check_and_compare() {
    let Some(src) = source() else { return };
    let dir = work_dir("vhdx");
    let cases: [(&str, &[(&str, &str)], u64); 4] = [
        ("dynamic.vhdx", &[], 8 << 20),
        ("fixed.vhdx", &[("subformat", "fixed")], 8 << 20),
        ("bs1m.vhdx", &[("block_size", "1M")], 1 << 20),
        (
            "log4m.vhdx",
            &[("log_size", "4M"), ("block_size", "32M")],
            32 << 20,
        ),
    ];
    for (name, pairs, block_size) in cases {
        let out = dir.join(name);
        convert(&src, &out, Format::Vhdx, &options(pairs));
        let (ok, text) = qemu_img(&["check", "-f", "vhdx", out.to_str().unwrap()]);
        assert!(ok, "qemu-img check {name}: {text}");
        assert_compare(&src, &out, "vhdx");
        let disk = open_as(&out, Format::Vhdx);
        assert_eq!(disk.info().cluster_size, Some(block_size), "{name}");
        assert_eq!(
            content_sha256(disk.as_ref(), 64 << 20),
            SOURCE_SHA256,
            "{name}"
        );
        assert_eq!(disk.check().unwrap().corruptions, 0, "{name}");
        // With 32 MiB blocks every block of the source holds data; smaller ones leave holes.
        if block_size <= 8 << 20 {
            assert!(allocated(&out) < 60 << 20, "{name} is not sparse");
        }
    }
    let again = dir.join("dynamic-again.vhdx");
    convert(&src, &again, Format::Vhdx, &options(&[]));
    assert_eq!(
        std::fs::read(dir.join("dynamic.vhdx")).unwrap(),
        std::fs::read(&again).unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn python_check(image: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/zvhd_check.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(image)
        .output()
        .expect("python3 must be installed");
    assert!(
        out.status.success(),
        "zvhd_check.py {}: {}",
        image.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn zvhd_writers_read_back_here_and_in_python() {
    let Some(src) = source() else { return };
    let dir = work_dir("zvhd");
    let cases: [(&str, Format, &[(&str, &str)]); 3] = [
        ("stream.zvhd", Format::Zvhd, &[]),
        ("zstd.zvhd2", Format::Zvhd2, &[]),
        ("zlib.zvhd2", Format::Zvhd2, &[("compress_method", "zlib")]),
    ];
    for (name, format, pairs) in cases {
        let out = dir.join(name);
        convert(&src, &out, format, &options(pairs));
        assert_eq!(
            python_check(&out).trim(),
            format!("{SOURCE_SHA256} {} {}", 64 << 20, 1u64 << 30),
            "{name}"
        );
        let disk = open_as(&out, format);
        assert_eq!(disk.virtual_size(), 1 << 30);
        assert_eq!(
            content_sha256(disk.as_ref(), 64 << 20),
            SOURCE_SHA256,
            "{name}"
        );
        // Compressed well below the 64 MiB source (40 MiB of it is random).
        assert!(std::fs::metadata(&out).unwrap().len() < 30 << 20, "{name}");
    }
    let again = dir.join("zstd-again.zvhd2");
    convert(&src, &again, Format::Zvhd2, &options(&[]));
    assert_eq!(
        std::fs::read(dir.join("zstd.zvhd2")).unwrap(),
        std::fs::read(&again).unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn zvhd_backward_reads_restart_the_stream() {
    let Some(dir) = common::fixtures_dir() else {
        return;
    };
    let disk = open_as(&dir.join("synthetic/zvhd-zlib.zvhd"), Format::Zvhd);
    let raw = std::fs::read(dir.join("source/source.raw")).unwrap();
    // Far ahead, then far behind (outside the cache), then unaligned across a block edge.
    for offset in [60 << 20, 1 << 20, (4 << 20) - 100, 0] {
        let mut buf = vec![0u8; 4096];
        disk.read_at(offset, &mut buf).unwrap();
        assert_eq!(
            buf,
            raw[offset as usize..offset as usize + 4096],
            "{offset}"
        );
    }
}

#[test]
fn unknown_options_are_named() {
    for format in [Format::Vhd, Format::Vhdx, Format::Zvhd, Format::Zvhd2] {
        let sink = Box::new(ims_diskfmt::write::MemorySink::new());
        let e = create(sink, format, 1 << 20, &options(&[("cluster_size", "64k")]))
            .err()
            .unwrap();
        assert!(e.to_string().contains("cluster_size"), "{format}: {e}");
    }
}

#[test]
fn corrupt_fixtures_fail_cleanly_and_lenient_mode_matches_qemu() {
    let Some(dir) = common::fixtures_dir() else {
        return;
    };
    let cases = [
        ("vpc-bad-checksum.vhd", Format::Vhd, "footer"),
        (
            "vpc-bat-beyond-eof.vhd",
            Format::Vhd,
            "block allocation table",
        ),
        ("vpc-block-size-3m.vhd", Format::Vhd, "dynamic header"),
        (
            "vpc-max-table-entries-huge.vhd",
            Format::Vhd,
            "dynamic header",
        ),
        ("vhdx-both-headers-bad-crc.vhdx", Format::Vhdx, "header"),
        ("vhdx-bat-points-into-header.vhdx", Format::Vhdx, "BAT"),
        ("vhdx-block-size-3m.vhdx", Format::Vhdx, "File Parameters"),
    ];
    for (name, format, structure) in cases {
        let file = File::open(dir.join("corrupt").join(name)).unwrap();
        let e = open(Arc::new(file), format, &OpenOptions::default())
            .err()
            .unwrap_or_else(|| panic!("{name} opened"));
        assert_eq!(e.kind(), DiskErrorKind::Corrupt, "{name}: {e}");
        assert!(e.to_string().contains(structure), "{name}: {e}");
    }
    // qemu returns the header bytes as disk data; lenient mode does the same.
    let file = File::open(dir.join("corrupt/vhdx-bat-points-into-header.vhdx")).unwrap();
    let disk = open(Arc::new(file), Format::Vhdx, &OpenOptions { lenient: true }).unwrap();
    assert_eq!(
        content_sha256(disk.as_ref(), disk.virtual_size()),
        "564348e343f77c7f84d6974e1d422b385857d95a48efa220a67f3e08e785e5fc"
    );
    for name in [
        "vpc-differencing-parent-locators.vhd",
        "vhdx-differencing-parent-locator.vhdx",
    ] {
        let format = if name.ends_with("vhdx") {
            Format::Vhdx
        } else {
            Format::Vhd
        };
        let file = File::open(dir.join("unsafe").join(name)).unwrap();
        let e = open(Arc::new(file), format, &OpenOptions::default())
            .err()
            .unwrap();
        assert_eq!(e.kind(), DiskErrorKind::Reference, "{name}: {e}");
    }
}
