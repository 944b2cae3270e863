//! `inspect` against the OS images of `../shared/fixtures/make-os-images.sh`: every row of the
//! expected MANIFEST.tsv must match (OS, distro, version, arch, bits, boot mode, partition table,
//! root filesystem, cloud-init).
//!
//! Needs `IMS_OS_IMAGES_DIR` (the script's OUTDIR; `scripts/test.sh` builds and exports it).
//! Without it the test fails, unless `IMS_SKIP_OS_IMAGES=1` says to skip on purpose.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ims_guest::{GuestError, Inspection};

/// Images the inspector does not read yet, each with the reason. The test checks they are
/// refused with exactly that error, so adding support makes it fail until this list shrinks.
const NOT_YET_SUPPORTED: &[(&str, &str)] = &[];

/// The seed `__os_version` each image must map to (first matching file-name prefix wins):
/// listed releases by their catalogue name, unlisted ones (i386 Debian, Windows 7) by the
/// `Other …` fallback.
const SEED_OS_VERSIONS: &[(&str, &str)] = &[
    ("centos7-", "CentOS 7.9 64bit"),
    ("debian12-i386-", "Other Linux(32 bit)"),
    ("debian12-", "Debian GNU/Linux 12.0.0 64bit"),
    ("openeuler2203-", "openEuler 22.03 64bit"),
    ("ubuntu2204-", "Ubuntu 22.04 server 64bit"),
    ("windows2022-", "Windows Server 2022 Datacenter 64bit"),
    ("windows7-", "Other Windows(32 bit)"),
];

fn expected_manifest(images: &Path) -> PathBuf {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/os-images-expected/MANIFEST.tsv");
    if shared.exists() {
        shared
    } else {
        images.join("MANIFEST.tsv")
    }
}

struct Row {
    file: String,
    cols: std::collections::HashMap<String, String>,
}

fn read_manifest(path: &Path) -> Vec<Row> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("MANIFEST header").split('\t').collect();
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cols: std::collections::HashMap<String, String> = header
                .iter()
                .zip(l.split('\t'))
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect();
            Row {
                file: cols["file"].clone(),
                cols,
            }
        })
        .collect()
}

/// Every mismatch between an inspection and a MANIFEST row, as text.
fn compare(row: &Row, i: &Inspection) -> Vec<String> {
    let mut bad = Vec::new();
    let Some(root) = &i.root else {
        return vec![format!("no OS found (warnings: {:?})", i.warnings)];
    };
    let f = &root.facts;
    let mut check = |what: &str, want: &str, got: &str| {
        if want != got {
            bad.push(format!("{what}: expected {want:?}, got {got:?}"));
        }
    };
    let c = |k: &str| row.cols.get(k).map(String::as_str).unwrap_or("");
    check("os_type", c("os_type"), f.os_type.as_str());
    check("distro", c("distro"), f.distro.as_deref().unwrap_or(""));
    check("arch", c("arch"), f.arch.as_deref().unwrap_or(""));
    check(
        "bits",
        c("bits"),
        &f.bits.map(|b| b.to_string()).unwrap_or_default(),
    );
    check("firmware", c("firmware"), i.firmware.as_str());
    check(
        "partition_table",
        c("partition_table"),
        i.partition_table.kind.as_str(),
    );
    let root_fs = if root.device.starts_with("/dev/sd") {
        root.fs.as_str().to_string()
    } else {
        format!("lvm+{}", root.fs.as_str())
    };
    check("root_fs", c("root_fs"), &root_fs);
    let cloud = match f.cloud_init.as_deref() {
        None => "no",
        Some("cloud-init") => "yes",
        Some(other) => other,
    };
    check("cloud_init", c("cloud_init"), cloud);
    if let Some((_, want)) = SEED_OS_VERSIONS
        .iter()
        .find(|(prefix, _)| row.file.starts_with(prefix))
    {
        check(
            "seed_os_version",
            want,
            &i.seed_os_version().unwrap_or_default(),
        );
    }
    // Windows rows read "10.0 (Server 2022 Datacenter, build 20348)".
    let want_version = c("version");
    let (version, detail) = match want_version.split_once(" (") {
        Some((v, d)) => (v, Some(d.trim_end_matches(')'))),
        None => (want_version, None),
    };
    check("version", version, f.version.as_deref().unwrap_or(""));
    if let Some(detail) = detail {
        let product = f.product_name.as_deref().unwrap_or("");
        let product = product.strip_prefix("Windows ").unwrap_or(product);
        let (name, build) = detail.split_once(", build ").unwrap_or((detail, ""));
        let name_ok = name.starts_with(product)
            && (!name.contains("SP1") || f.service_pack.as_deref() == Some("Service Pack 1"));
        check("build", build, f.build.as_deref().unwrap_or(""));
        if !name_ok {
            bad.push(format!(
                "product: expected {name:?}, got {product:?} {:?}",
                f.service_pack
            ));
        }
    }
    bad
}

#[test]
fn inspect_matches_the_manifest_for_every_os_image() {
    let Some(dir) = std::env::var_os("IMS_OS_IMAGES_DIR") else {
        if std::env::var("IMS_SKIP_OS_IMAGES").as_deref() == Ok("1") {
            eprintln!("IMS_SKIP_OS_IMAGES=1: OS image comparison skipped on purpose");
            return;
        }
        panic!(
            "IMS_OS_IMAGES_DIR is not set: build the images with \
             `bash ../shared/fixtures/make-os-images.sh DIR` (scripts/test.sh does) and export \
             IMS_OS_IMAGES_DIR=DIR, or set IMS_SKIP_OS_IMAGES=1 to skip this test on purpose"
        );
    };
    let dir = PathBuf::from(dir);
    let manifest = expected_manifest(&dir);
    let rows = read_manifest(&manifest);
    assert!(!rows.is_empty(), "{} lists no image", manifest.display());
    let mut failures = Vec::new();
    for row in &rows {
        let path = dir.join(&row.file);
        if !path.exists() {
            failures.push(format!(
                "{}: image missing from {}",
                row.file,
                dir.display()
            ));
            continue;
        }
        let started = Instant::now();
        let result = ims_guest::inspect_path(&path);
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if let Some((_, reason)) = NOT_YET_SUPPORTED.iter().find(|(f, _)| *f == row.file) {
            match result {
                Err(GuestError::UnsupportedDiskFormat { .. }) => {
                    eprintln!("{:<50} not yet supported: {reason}", row.file);
                }
                other => failures.push(format!(
                    "{}: listed as not yet supported ({reason}) but inspect gave {other:?}; \
                     update NOT_YET_SUPPORTED",
                    row.file
                )),
            }
            continue;
        }
        match result {
            Ok(i) => {
                let bad = compare(row, &i);
                eprintln!(
                    "{:<50} {:>8.2} ms  {}",
                    row.file,
                    ms,
                    if bad.is_empty() { "ok" } else { "MISMATCH" }
                );
                failures.extend(bad.into_iter().map(|b| format!("{}: {b}", row.file)));
            }
            Err(e) => failures.push(format!("{}: inspect failed: {e}", row.file)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatch(es) against {}:\n{}",
        failures.len(),
        manifest.display(),
        failures.join("\n")
    );
}
