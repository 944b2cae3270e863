//! The qcow2, qcow and QED writers: every option combination round-trips through our reader
//! (in memory and on disk), passes our own check, and — when qemu-img is installed — passes
//! `qemu-img check` and `qemu-img compare` against the source.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use ims_diskfmt::Format;
use ims_diskfmt::disk::{Disk, ExtentKind, OpenOptions, open};
use ims_diskfmt::write::{CreateOptions, MemorySink, Sink, create};

/// A 10 MiB + 1.5 KiB disk: random and text clusters, holes (6..8 MiB is one), isolated
/// bytes, data at the very end.
fn source() -> Vec<u8> {
    let size = (10 << 20) + 3 * 512;
    let mut disk = vec![0u8; size];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for chunk in disk[..1 << 20].chunks_mut(8) {
        chunk.copy_from_slice(&next().to_le_bytes()[..chunk.len()]);
    }
    let text = b"The quick brown fox jumps over the lazy dog. ";
    for (i, b) in disk[(2 << 20)..(3 << 20)].iter_mut().enumerate() {
        *b = text[i % text.len()];
    }
    for i in 0..64u64 {
        let at = (3 << 20) + i * 16411;
        disk[at as usize] = (i + 1) as u8;
    }
    disk[(5 << 20) + 4096..(5 << 20) + 4096 + 512].fill(0xff);
    let len = disk.len();
    disk[len - 7..].copy_from_slice(b"the end");
    disk
}

/// Drives a writer like the converter: blocks in order, zero blocks skipped, encoder applied.
fn write_image(sink: Box<dyn Sink>, format: Format, data: &[u8], options: &CreateOptions) {
    let mut writer = create(sink, format, data.len() as u64, options).expect("create");
    let block = writer.block_size() as usize;
    let encoder = writer.encoder();
    for (index, chunk) in data.chunks(block).enumerate() {
        if chunk.iter().all(|&b| b == 0) {
            continue;
        }
        let offset = (index * block) as u64;
        let encoded = encoder
            .as_ref()
            .map(|e| e.encode(offset, chunk).expect("encode"));
        writer
            .write_block(offset, chunk, encoded)
            .expect("write_block");
    }
    writer.finish().expect("finish");
}

/// Reads the whole disk back and checks extents: holes of the source stay Zero extents.
fn assert_same(disk: &dyn Disk, data: &[u8], what: &str) {
    assert!(disk.virtual_size() >= data.len() as u64, "{what}: size");
    let mut back = vec![0u8; disk.virtual_size() as usize];
    disk.read_at(0, &mut back).expect("read back");
    assert!(back[..data.len()] == *data, "{what}: content differs");
    assert!(back[data.len()..].iter().all(|&b| b == 0), "{what}: tail");
    let extent = disk.extent(6 << 20, 2 << 20).expect("extent");
    assert_eq!(extent.kind, ExtentKind::Zero, "{what}: hole not sparse");
    assert_eq!(extent.length, 2 << 20, "{what}: hole extent");
}

struct SharedSink(Arc<MemorySink>);

impl Sink for SharedSink {
    fn write_all_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.0.write_all_at(offset, buf)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        self.0.sync()
    }
}

fn options(pairs: &[(&str, &str)], compress: bool) -> CreateOptions {
    CreateOptions {
        options: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        compress,
    }
}

/// Every combination written, with the format it is written in.
fn cases() -> Vec<(Format, CreateOptions)> {
    let q2 = |pairs: &[(&str, &str)], compress| (Format::Qcow2, options(pairs, compress));
    vec![
        q2(&[], false),
        q2(&[("compat", "0.10")], false),
        q2(&[("compat", "0.10")], true),
        q2(&[("cluster_size", "512")], false),
        q2(&[("cluster_size", "4k")], false),
        q2(&[("cluster_size", "2M")], false),
        q2(&[("cluster_size", "512")], true),
        q2(&[("cluster_size", "2M")], true),
        q2(&[("compression_type", "zlib")], true),
        q2(&[("compression_type", "zstd")], true),
        q2(
            &[("compression_type", "zstd"), ("cluster_size", "4k")],
            true,
        ),
        q2(&[("extended_l2", "on")], false),
        q2(&[("extended_l2", "on"), ("cluster_size", "2M")], false),
        q2(&[("extended_l2", "on")], true),
        q2(&[("extended_l2", "on"), ("compression_type", "zstd")], true),
        q2(&[("lazy_refcounts", "on"), ("refcount_bits", "16")], false),
        (Format::Qcow, options(&[], false)),
        (Format::Qcow, options(&[], true)),
        (Format::Qed, options(&[], false)),
        (Format::Qed, options(&[("cluster_size", "4k")], false)),
        (Format::Qed, options(&[("table_size", "2")], false)),
        (
            Format::Qed,
            options(&[("table_size", "16"), ("cluster_size", "1M")], false),
        ),
    ]
}

fn describe(format: Format, options: &CreateOptions) -> String {
    format!(
        "{format} {:?} compress={}",
        options.options, options.compress
    )
}

#[test]
fn writers_round_trip_in_memory_and_pass_our_check() {
    let data = source();
    for (format, options) in cases() {
        let what = describe(format, &options);
        let sink = Arc::new(MemorySink::new());
        write_image(Box::new(SharedSink(sink.clone())), format, &data, &options);
        let image = sink.contents();
        let disk = open(Arc::new(image.clone()), format, &OpenOptions::default())
            .unwrap_or_else(|e| panic!("{what}: open: {e}"));
        assert_same(&*disk, &data, &what);
        if format != Format::Qcow {
            let report = disk
                .check()
                .unwrap_or_else(|e| panic!("{what}: check: {e}"));
            assert_eq!(
                (report.corruptions, report.leaks),
                (0, 0),
                "{what}: {:?}",
                report.messages
            );
        }
        // Deterministic: the same input gives the same bytes.
        let again = Arc::new(MemorySink::new());
        write_image(Box::new(SharedSink(again.clone())), format, &data, &options);
        assert!(again.contents() == image, "{what}: not deterministic");
        if options.compress {
            let plain = Arc::new(MemorySink::new());
            let uncompressed = CreateOptions {
                compress: false,
                ..options.clone()
            };
            write_image(
                Box::new(SharedSink(plain.clone())),
                format,
                &data,
                &uncompressed,
            );
            assert!(
                image.len() < plain.contents().len(),
                "{what}: compression did not shrink the image"
            );
        }
    }
}

#[test]
fn unknown_and_conflicting_options_are_refused() {
    let bad = [
        (Format::Qcow2, options(&[("bogus", "1")], false), "bogus"),
        (
            Format::Qcow2,
            options(&[("compat", "0.10"), ("compression_type", "zstd")], true),
            "0.10",
        ),
        (
            Format::Qcow2,
            options(&[("cluster_size", "3000")], false),
            "cluster_size",
        ),
        (
            Format::Qcow2,
            options(&[("extended_l2", "on"), ("cluster_size", "4k")], false),
            "extended_l2",
        ),
        (
            Format::Qcow2,
            options(&[("refcount_bits", "8")], false),
            "refcount_bits",
        ),
        (
            Format::Qcow,
            options(&[("cluster_size", "4k")], false),
            "cluster_size",
        ),
        (
            Format::Qed,
            options(&[("table_size", "1")], false),
            "table_size",
        ),
        (Format::Qed, options(&[], true), "compression"),
    ];
    for (format, options, needle) in bad {
        let result = create(Box::new(MemorySink::new()), format, 1 << 20, &options);
        let message = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains(needle),
            "{format}: {message:?} lacks {needle}"
        );
    }
}

fn qemu_img() -> bool {
    Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn qemu_img_checks_and_compares_every_written_image() {
    if !qemu_img() {
        eprintln!("qemu-img not installed: skipping");
        return;
    }
    let data = source();
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("source.raw");
    std::fs::write(&raw, &data).expect("write source");
    let raw = raw.to_str().expect("utf-8 path");
    for (index, (format, options)) in cases().into_iter().enumerate() {
        let what = describe(format, &options);
        let path = dir.path().join(format!("out-{index}.{format}"));
        let file = File::create(&path).expect("create output");
        write_image(Box::new(file), format, &data, &options);
        let out = path.to_str().expect("utf-8 path");
        let file = File::open(Path::new(out)).expect("reopen");
        let disk = open(Arc::new(file), format, &OpenOptions::default()).expect("open");
        assert_same(&*disk, &data, &what);
        if format != Format::Qcow {
            let (code, text) = run(&["check", "-f", format.as_str(), out]);
            assert_eq!(code, 0, "{what}: qemu-img check: {text}");
        }
        let (code, text) = run(&["compare", "-f", "raw", "-F", format.as_str(), raw, out]);
        assert_eq!(code, 0, "{what}: qemu-img compare: {text}");
        let (code, text) = run(&["info", "--output=json", "-f", format.as_str(), out]);
        assert_eq!(code, 0, "{what}: qemu-img info: {text}");
    }
}
