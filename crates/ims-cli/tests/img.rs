//! `ims img` end to end: the real binary on the fixture set of `make-fixtures.sh`.
//!
//! Needs `IMS_FIXTURES_DIR` (or `IMS_SKIP_FIXTURES=1` to skip deliberately), like the
//! ims-diskfmt fixture tests. The reference test needs `strace` (scripts/test.sh installs it).
//!
//! * `unsafe_images_never_open_referenced_files`: every unsafe/malicious fixture is run through
//!   `info` and `convert` under `strace -f`; apart from the dynamic loader, /proc and /sys,
//!   the process may open only the image itself and the output. Any other path — the
//!   referenced /etc/passwd, /dev/zero, a backing or data file, an extent, even a failed
//!   attempt — fails the test. `convert` must exit 1 and leave no output behind.
//! * `info_reports_format_and_size`: every valid fixture's `info --output json`.
//! * `exit_codes_are_the_documented_ones`: convert/compare/check/create/-f mismatch.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const IMS: &str = env!("CARGO_BIN_EXE_ims");

/// Paths a process opens on its own: the dynamic loader and libraries, the allocator's and
/// the standard library's reads of /proc and /sys.
const SYSTEM_PREFIXES: [&str; 6] = [
    "/etc/ld.so.cache",
    "/lib/",
    "/lib64/",
    "/usr/lib/",
    "/proc/",
    "/sys/",
];

struct Fixture {
    category: String,
    name: String,
    format: String,
    virtual_size: Option<u64>,
    flags: Vec<String>,
}

impl Fixture {
    fn path(&self, root: &Path) -> PathBuf {
        let dir = if self.category == "malicious" {
            "unsafe"
        } else {
            &self.category
        };
        root.join(dir).join(&self.name)
    }

    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

fn fixtures_dir() -> Option<PathBuf> {
    match std::env::var_os("IMS_FIXTURES_DIR") {
        Some(dir) => Some(PathBuf::from(dir)),
        None if std::env::var("IMS_SKIP_FIXTURES").as_deref() == Ok("1") => None,
        None => panic!(
            "IMS_FIXTURES_DIR is not set (or IMS_SKIP_FIXTURES=1 to skip deliberately): run \
             `bash /work/shared/fixtures/make-fixtures.sh DIR`"
        ),
    }
}

fn manifest(root: &Path) -> Vec<Fixture> {
    let text = std::fs::read_to_string(root.join("MANIFEST.tsv")).expect("reading MANIFEST.tsv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("empty manifest").split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let (category, name, format, size, flags) = (
        col("category"),
        col("name"),
        col("format"),
        col("virtual_size"),
        col("flags"),
    );
    lines
        .filter(|l| !l.is_empty())
        .map(|line| {
            let cells: Vec<&str> = line.split('\t').collect();
            let cell = |i: usize| cells.get(i).copied().unwrap_or("");
            Fixture {
                category: cell(category).into(),
                name: cell(name).into(),
                format: cell(format).into(),
                virtual_size: cell(size).parse().ok(),
                flags: cell(flags)
                    .split(',')
                    .filter(|f| !f.is_empty())
                    .map(String::from)
                    .collect(),
            }
        })
        .collect()
}

/// The loader's search for a shared library (`libc.so.6` in some directory).
fn is_shared_library(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("lib") && name.contains(".so")
}

fn ims(args: &[&str], cwd: &Path) -> Output {
    Command::new(IMS)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("running ims")
}

fn code(output: &Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

/// Runs `ims args` under strace and returns (exit code, every path it tried to open).
fn traced(args: &[&str], cwd: &Path, log: &Path) -> (i32, Vec<String>) {
    let status = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=open,openat,openat2,creat", "-o"])
        .arg(log)
        .arg(IMS)
        .args(args)
        .current_dir(cwd)
        // cargo's LD_LIBRARY_PATH makes the loader probe many directories: not our opens.
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("running strace (install it: apt-get install strace)");
    let text = std::fs::read_to_string(log).expect("reading the strace log");
    let paths = text
        .lines()
        .filter_map(|line| {
            let start = line.find('"')? + 1;
            let end = start + line[start..].find('"')?;
            Some(line[start..end].to_owned())
        })
        .collect();
    (status.status.code().unwrap_or(-1), paths)
}

#[test]
fn unsafe_images_never_open_referenced_files() {
    let Some(root) = fixtures_dir() else {
        return;
    };
    let work = tempfile::tempdir().expect("temp dir");
    let mut failures = Vec::new();
    let mut checked = 0;
    for fixture in manifest(&root).iter().filter(|f| f.has_flag("unsafe")) {
        let image = fixture.path(&root);
        let image_text = image.to_str().expect("UTF-8 fixture path").to_owned();
        let output = work.path().join("out.img");
        let output_text = output.to_str().expect("UTF-8 temp path").to_owned();
        let log = work.path().join("strace.log");
        // CWD = the temp dir: qemu resolves relative data-file names against the CWD.
        let runs: [(&str, Vec<&str>); 2] = [
            ("info", vec!["img", "info", "--output", "json", &image_text]),
            (
                "convert",
                vec!["img", "convert", "-O", "raw", &image_text, &output_text],
            ),
        ];
        for (command, args) in runs {
            let (rc, paths) = traced(&args, work.path(), &log);
            let foreign: Vec<&String> = paths
                .iter()
                .filter(|p| **p != image_text && **p != output_text)
                .filter(|p| !SYSTEM_PREFIXES.iter().any(|s| p.starts_with(s)))
                .filter(|p| !is_shared_library(p))
                .collect();
            if !foreign.is_empty() {
                failures.push(format!("{} {command}: opened {foreign:?}", fixture.name));
            }
            if command == "convert" {
                if rc != 1 {
                    failures.push(format!("{} convert: exit {rc}, expected 1", fixture.name));
                }
                if output.exists() {
                    failures.push(format!("{} convert: left {output_text}", fixture.name));
                    let _ = std::fs::remove_file(&output);
                }
            } else if rc != 0 && rc != 1 {
                failures.push(format!("{} info: exit {rc}", fixture.name));
            }
        }
        checked += 1;
    }
    println!("{checked} unsafe fixtures traced (info + convert)");
    assert!(
        checked >= 20,
        "only {checked} unsafe fixtures in the manifest"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn info_reports_format_and_size() {
    let Some(root) = fixtures_dir() else {
        return;
    };
    let work = tempfile::tempdir().expect("temp dir");
    let mut failures = Vec::new();
    let valid = manifest(&root)
        .into_iter()
        .filter(|f| matches!(f.category.as_str(), "source" | "safe" | "odd" | "synthetic"));
    for fixture in valid {
        let image = fixture.path(&root);
        let out = ims(
            &["img", "info", "--output", "json", image.to_str().unwrap()],
            work.path(),
        );
        if code(&out) != 0 {
            failures.push(format!(
                "{}: exit {}: {}",
                fixture.name,
                code(&out),
                String::from_utf8_lossy(&out.stderr)
            ));
            continue;
        }
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("info JSON");
        // Deliberate differences from qemu (see ims-diskfmt's tests/fixtures.rs): ISO 9660
        // is its own format, ZVHD/ZVHD2 are readable, VHD is named vhd.
        let expected = match fixture.format.as_str() {
            "raw" if fixture.has_flag("iso9660") => "iso",
            "vpc" => "vhd",
            other => other,
        };
        if doc["format"] != expected {
            failures.push(format!(
                "{}: format {} != {expected}",
                fixture.name, doc["format"]
            ));
        }
        if let Some(size) = fixture.virtual_size
            && doc["virtual-size"].as_u64() != Some(size)
        {
            failures.push(format!(
                "{}: virtual-size {} != qemu's {size}",
                fixture.name, doc["virtual-size"]
            ));
        }
        if doc["actual-size"].as_u64().is_none() || doc["dirty-flag"].as_bool().is_none() {
            failures.push(format!(
                "{}: missing actual-size/dirty-flag: {doc}",
                fixture.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn exit_codes_are_the_documented_ones() {
    let Some(root) = fixtures_dir() else {
        return;
    };
    let work = tempfile::tempdir().expect("temp dir");
    let dir = work.path();
    let source = root.join("source/source.raw");
    let modified = root.join("source/modified1.raw");
    let (source, modified) = (source.to_str().unwrap(), modified.to_str().unwrap());
    let copy = dir.join("copy.raw");
    let copy = copy.to_str().unwrap();

    let out = ims(&["img", "convert", "-p", "-O", "raw", source, copy], dir);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    // Sparse: the copy allocates no more than the source (holes stay holes).
    let blocks = |p: &str| std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(p).unwrap());
    assert!(
        blocks(copy) <= blocks(source),
        "copy is less sparse than the source"
    );
    assert_eq!(code(&ims(&["img", "compare", source, copy], dir)), 0);
    assert_eq!(code(&ims(&["img", "compare", source, modified], dir)), 1);
    assert_eq!(
        code(&ims(&["img", "compare", source, "/nonexistent"], dir)),
        2
    );
    assert_eq!(code(&ims(&["img", "check", copy], dir)), 63);
    // -f must agree with the content; an unknown format is an error too.
    let mismatch = ims(&["img", "info", "-f", "qcow2", source], dir);
    assert_eq!(code(&mismatch), 1);
    assert!(String::from_utf8_lossy(&mismatch.stderr).contains("not qcow2"));
    assert_eq!(code(&ims(&["img", "info", "-f", "ploop", source], dir)), 1);
    // The output may not be the source.
    assert_eq!(
        code(&ims(&["img", "convert", "-O", "raw", copy, copy], dir)),
        1
    );

    let created = dir.join("new.raw");
    let out = ims(
        &[
            "img",
            "create",
            "-f",
            "raw",
            created.to_str().unwrap(),
            "3M",
        ],
        dir,
    );
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::metadata(&created).unwrap().len(), 3 << 20);

    let map = ims(&["img", "map", "--output", "json", source], dir);
    assert_eq!(code(&map), 0);
    let extents: serde_json::Value = serde_json::from_slice(&map.stdout).unwrap();
    let total: u64 = extents
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 64 << 20);
}
