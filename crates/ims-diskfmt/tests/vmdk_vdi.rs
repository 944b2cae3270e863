//! The VMDK and VDI writers checked by qemu-img: every subformat and option converts the
//! fixture sources into images that `qemu-img check` accepts and `qemu-img compare` finds
//! identical to the source; output is sparse and deterministic. Also: lenient reads of corrupt
//! fixtures reproduce qemu's content, and `check()` counts what `qemu-img check` counts.
//!
//! Needs `IMS_FIXTURES_DIR` (see `oracle.rs`) and `qemu-img` on the PATH.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use sha2::{Digest, Sha256};

mod common;

use common::{fixtures_dir, manifest};
use ims_diskfmt::disk::{OpenOptions, open};
use ims_diskfmt::write::{CreateOptions, create};
use ims_diskfmt::{Format, ReadAt};

/// Converts the raw file `source` into `out` the way the converter does: blocks of the
/// writer's size in ascending order, all-zero blocks skipped, the encoder's output handed over.
fn convert(source: &Path, out: &Path, format: Format, options: &[(&str, &str)], compress: bool) {
    let input = File::open(source).unwrap();
    let size = input.metadata().unwrap().len();
    let options = CreateOptions {
        options: options
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        compress,
    };
    let sink = File::create(out).unwrap();
    let mut writer = create(Box::new(sink), format, size, &options).unwrap();
    let block = writer.block_size();
    let encoder = writer.encoder();
    let mut buf = vec![0u8; block as usize];
    let mut offset = 0u64;
    while offset < size {
        let len = (size - offset).min(block) as usize;
        let n = input.read_at(offset, &mut buf[..len]).unwrap();
        assert_eq!(n, len);
        let data = &buf[..len];
        if data.iter().any(|&b| b != 0) {
            let encoded = encoder.as_ref().map(|e| e.encode(offset, data).unwrap());
            writer.write_block(offset, data, encoded).unwrap();
        }
        offset += block;
    }
    writer.finish().unwrap();
}

fn qemu_img(args: &[&str]) -> (i32, String) {
    let output = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img must be installed (apt-get install qemu-utils)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

fn sha256_of_disk(path: &Path, format: Format, lenient: bool) -> String {
    let disk = open(
        Arc::new(File::open(path).unwrap()),
        format,
        &OpenOptions { lenient },
    )
    .unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut offset = 0;
    while offset < disk.virtual_size() {
        let len = (disk.virtual_size() - offset).min(buf.len() as u64) as usize;
        disk.read_at(offset, &mut buf[..len]).unwrap();
        hasher.update(&buf[..len]);
        offset += len as u64;
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct Case {
    format: Format,
    options: &'static [(&'static str, &'static str)],
    compress: bool,
    /// qemu's `create-type` for VMDK.
    create_type: Option<&'static str>,
}

const CASES: [Case; 7] = [
    Case {
        format: Format::Vmdk,
        options: &[],
        compress: false,
        create_type: Some("monolithicSparse"),
    },
    Case {
        format: Format::Vmdk,
        options: &[("zeroed_grain", "on")],
        compress: false,
        create_type: Some("monolithicSparse"),
    },
    Case {
        format: Format::Vmdk,
        options: &[("compat6", "on"), ("adapter_type", "lsilogic")],
        compress: false,
        create_type: Some("monolithicSparse"),
    },
    Case {
        format: Format::Vmdk,
        options: &[("subformat", "streamOptimized"), ("hwversion", "14")],
        compress: false,
        create_type: Some("streamOptimized"),
    },
    Case {
        format: Format::Vmdk,
        options: &[("subformat", "streamOptimized")],
        compress: true,
        create_type: Some("streamOptimized"),
    },
    Case {
        format: Format::Vdi,
        options: &[],
        compress: false,
        create_type: None,
    },
    Case {
        format: Format::Vdi,
        options: &[("static", "on")],
        compress: false,
        create_type: None,
    },
];

#[test]
fn qemu_img_checks_and_compares_every_written_image() {
    let Some(root) = fixtures_dir() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    for source in ["source.raw", "odd.raw"] {
        let source = root.join("source").join(source);
        let source_size = std::fs::metadata(&source).unwrap().len();
        for (i, case) in CASES.iter().enumerate() {
            let out = work.path().join(format!("out-{i}.{}", case.format));
            convert(&source, &out, case.format, case.options, case.compress);
            let fmt = case.format.as_str();
            let path = out.to_str().unwrap();
            let label = format!("{} {fmt} {:?}", source.display(), case.options);

            let (rc, text) = qemu_img(&["check", "-f", fmt, path]);
            assert_eq!(rc, 0, "{label}: qemu-img check: {text}");
            let (rc, text) = qemu_img(&[
                "compare",
                "-f",
                "raw",
                "-F",
                fmt,
                source.to_str().unwrap(),
                path,
            ]);
            assert_eq!(rc, 0, "{label}: qemu-img compare: {text}");
            let (rc, text) = qemu_img(&["info", "--output=json", "-f", fmt, path]);
            assert_eq!(rc, 0, "{label}: qemu-img info: {text}");
            if let Some(create_type) = case.create_type {
                assert!(
                    text.contains(&format!("\"create-type\": \"{create_type}\"")),
                    "{label}: {text}"
                );
            }

            let meta = std::fs::metadata(&out).unwrap();
            let allocated = meta.blocks() * 512;
            assert!(
                allocated < source_size,
                "{label}: {allocated} bytes allocated for a {source_size}-byte source"
            );
            println!("{label}: file {} bytes, {allocated} allocated", meta.len());

            // Deterministic: a second conversion is byte-identical.
            let again = work.path().join("again");
            convert(&source, &again, case.format, case.options, case.compress);
            assert!(
                std::fs::read(&out).unwrap() == std::fs::read(&again).unwrap(),
                "{label}: output differs between two runs"
            );
        }
    }
}

#[test]
fn our_reader_reads_our_images_like_qemu() {
    let Some(root) = fixtures_dir() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let source = root.join("source").join("source.raw");
    let expected = manifest(&root)
        .into_iter()
        .find(|f| f.name == "source.raw")
        .and_then(|f| f.virtual_sha256)
        .unwrap();
    for (i, case) in CASES.iter().enumerate() {
        let out = work.path().join(format!("out-{i}"));
        convert(&source, &out, case.format, case.options, case.compress);
        assert_eq!(
            sha256_of_disk(&out, case.format, false),
            expected,
            "{:?}",
            case.options
        );
    }
}

/// Corrupt fixtures qemu converts (reading missing metadata as zeros): a lenient open must
/// give qemu's content, a strict one refuses (`oracle.rs`).
#[test]
fn lenient_reads_of_corrupt_images_match_qemu() {
    let Some(root) = fixtures_dir() else {
        return;
    };
    let mut seen = 0;
    for fixture in manifest(&root) {
        let Some(format) = Format::parse(fixture.declared()) else {
            continue;
        };
        if fixture.category != "corrupt" || !matches!(format, Format::Vmdk | Format::Vdi) {
            continue;
        }
        let Some(expected) = &fixture.virtual_sha256 else {
            continue;
        };
        let path = fixture.path(&root);
        assert_eq!(
            &sha256_of_disk(&path, format, true),
            expected,
            "{}",
            fixture.name
        );
        if fixture.check_rc == Some(2) {
            let disk = open(
                Arc::new(File::open(&path).unwrap()),
                format,
                &OpenOptions { lenient: true },
            )
            .unwrap();
            let report = disk.check().unwrap();
            assert!(report.corruptions > 0, "{}: {report:?}", fixture.name);
        }
        seen += 1;
    }
    // vmdk-gd-beyond-eof, vdi-bmap-out-of-range, vdi-bmap-duplicate.
    assert_eq!(seen, 3);
}
