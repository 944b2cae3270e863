//! The fixture set of `make-fixtures.sh` as the integration tests see it: `MANIFEST.tsv` rows
//! and where each image lives.
// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// One row of `MANIFEST.tsv`.
pub struct Fixture {
    pub category: String,
    pub name: String,
    /// qemu's format name (`vpc` for VHD).
    pub format: String,
    pub virtual_size: Option<u64>,
    /// SHA-256 of the virtual content as qemu reads it (`None` where qemu was not run).
    pub virtual_sha256: Option<String>,
    /// `qemu-img check`'s exit code (`None` where it was skipped).
    pub check_rc: Option<i32>,
    pub flags: Vec<String>,
    pub note: String,
}

impl Fixture {
    pub fn path(&self, root: &Path) -> PathBuf {
        let dir = if self.category == "malicious" {
            "unsafe"
        } else {
            &self.category
        };
        root.join(dir).join(&self.name)
    }

    /// The Glance disk_format a user would declare.
    pub fn declared(&self) -> &str {
        match self.format.as_str() {
            "vpc" => "vhd",
            other => other,
        }
    }

    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// A readable image that needs nothing but itself: source/safe/odd/synthetic, and the
    /// bottoms of the chains in unsafe/ (flag `chain`, no `unsafe`).
    pub fn is_valid(&self) -> bool {
        match self.category.as_str() {
            "source" | "safe" | "odd" | "synthetic" => true,
            "unsafe" => !self.has_flag("unsafe"),
            _ => false,
        }
    }
}

/// `IMS_FIXTURES_DIR`; `None` (test skipped) only when `IMS_SKIP_FIXTURES=1` says so.
pub fn fixtures_dir() -> Option<PathBuf> {
    match std::env::var_os("IMS_FIXTURES_DIR") {
        Some(dir) => Some(PathBuf::from(dir)),
        None if std::env::var("IMS_SKIP_FIXTURES").as_deref() == Ok("1") => {
            eprintln!("fixtures test skipped: IMS_SKIP_FIXTURES=1");
            None
        }
        None => panic!(
            "IMS_FIXTURES_DIR is not set: run `bash /work/shared/fixtures/make-fixtures.sh DIR` and \
             set IMS_FIXTURES_DIR=DIR (or IMS_SKIP_FIXTURES=1 to skip deliberately)"
        ),
    }
}

pub fn manifest(root: &Path) -> Vec<Fixture> {
    let text = std::fs::read_to_string(root.join("MANIFEST.tsv"))
        .unwrap_or_else(|e| panic!("reading {}/MANIFEST.tsv: {e}", root.display()));
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .expect("MANIFEST.tsv is empty")
        .split('\t')
        .collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("MANIFEST.tsv has no column {name}"))
    };
    let (category, name, format, size, sha, check, flags, note) = (
        column("category"),
        column("name"),
        column("format"),
        column("virtual_size"),
        column("virtual_sha256"),
        column("check"),
        column("flags"),
        column("note"),
    );
    lines
        .filter(|l| !l.is_empty())
        .map(|line| {
            let cells: Vec<&str> = line.split('\t').collect();
            let cell = |i: usize| cells.get(i).copied().unwrap_or("");
            let digest = cell(sha);
            Fixture {
                category: cell(category).into(),
                name: cell(name).into(),
                format: cell(format).into(),
                virtual_size: cell(size).parse().ok(),
                virtual_sha256: (digest.len() == 64).then(|| digest.to_owned()),
                check_rc: cell(check).parse().ok(),
                flags: cell(flags)
                    .split(',')
                    .filter(|f| !f.is_empty())
                    .map(String::from)
                    .collect(),
                note: cell(note).into(),
            }
        })
        .collect()
}
