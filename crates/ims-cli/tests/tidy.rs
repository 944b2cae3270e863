//! Tidy checks over the whole workspace: every source module says what it is for in a `//!`
//! line, and only `ims-api` (and the `ims` binary that serves it) names axum or HTTP status codes.

use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn crate_sources() -> Vec<(String, PathBuf)> {
    let crates = workspace_root().join("crates");
    let mut all = Vec::new();
    for entry in std::fs::read_dir(&crates).expect("crates/") {
        let dir = entry.expect("crate dir").path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut files = Vec::new();
        if dir.join("src").is_dir() {
            rust_sources(&dir.join("src"), &mut files);
        }
        all.extend(files.into_iter().map(|f| (name.clone(), f)));
    }
    assert!(
        all.len() > 20,
        "found only {} source files; is the layout unchanged?",
        all.len()
    );
    all
}

#[test]
fn every_module_starts_with_a_doc_line() {
    let missing: Vec<String> = crate_sources()
        .into_iter()
        .filter(|(_, path)| {
            !std::fs::read_to_string(path)
                .expect("readable source")
                .starts_with("//!")
        })
        .map(|(_, path)| path.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a leading `//!` line:\n{}",
        missing.join("\n")
    );
}

#[test]
fn only_the_http_layer_knows_http() {
    let offenders: Vec<String> = crate_sources()
        .into_iter()
        .filter(|(krate, _)| krate != "ims-api" && krate != "ims-cli")
        .filter(|(_, path)| {
            let text = std::fs::read_to_string(path).expect("readable source");
            text.contains("axum::") || text.contains("StatusCode")
        })
        .map(|(_, path)| path.display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "HTTP types outside ims-api:\n{}",
        offenders.join("\n")
    );
}
