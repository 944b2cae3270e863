//! Guest inspection on import, through the Glance API: uploading an OS image fills the OS
//! properties the user did not set (`__os_type`, `__os_version`, `__os_bit`, `__platform`,
//! `hw_firmware_type`, `architecture`, `__is_config_init`); values the user gave are kept; an
//! image without an OS still uploads.
//!
//! The synthetic test builds an ext4 filesystem with `mkfs.ext4 -d` (e2fsprogs). The real-image
//! test converts an OS image of `IMS_OS_IMAGES_DIR` to VMDK with `qemu-img` (sparse: a few MiB)
//! and uploads that; without `IMS_OS_IMAGES_DIR` it fails unless `IMS_SKIP_OS_IMAGES=1`.

#[allow(dead_code)] // each test file uses a different part of the shared harness
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use ims_core::{App, Config};
use serde_json::{Value, json};

use common::{issue_token, send};

async fn app() -> (Router, String) {
    let app = Arc::new(App::in_memory(Config::default()).await);
    app.identity.bootstrap(Some("adminpw")).await.unwrap();
    let router = ims_api::router(app);
    let token = issue_token(&router, "admin", "adminpw", "admin").await;
    (router, token)
}

async fn create(router: &Router, token: &str, body: Value) -> String {
    let req = Request::post("/v2/images")
        .header("x-auth-token", token)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let r = send(router, req).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.json()["id"].as_str().unwrap().to_string()
}

async fn upload_and_show(router: &Router, token: &str, id: &str, data: Vec<u8>) -> Value {
    let req = Request::put(format!("/v2/images/{id}/file"))
        .header("x-auth-token", token)
        .header("content-type", "application/octet-stream")
        .body(Body::from(data))
        .unwrap();
    let r = send(router, req).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    let req = Request::get(format!("/v2/images/{id}"))
        .header("x-auth-token", token)
        .body(Body::empty())
        .unwrap();
    let shown = send(router, req).await.json();
    assert_eq!(shown["status"], "active");
    shown
}

/// A whole-disk ext4 image holding a small CentOS 7.9 root: os-release, an x86-64 ELF header
/// as `/usr/bin/bash`, cloud-init's config.
fn centos_like_ext4(dir: &Path) -> Option<Vec<u8>> {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("etc/cloud")).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::write(
        root.join("etc/os-release"),
        "NAME=\"CentOS Linux\"\nVERSION=\"7 (Core)\"\nID=\"centos\"\nVERSION_ID=\"7\"\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/centos-release"),
        "CentOS Linux release 7.9.2009 (Core)\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/cloud/cloud.cfg"), "users: [default]\n").unwrap();
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // 64-bit
    elf[5] = 1; // little-endian
    elf[6] = 1;
    elf[16] = 2; // ET_EXEC
    elf[18] = 0x3e; // x86-64
    elf[20] = 1;
    std::fs::write(root.join("usr/bin/bash"), &elf).unwrap();
    let image = dir.join("disk.raw");
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&image)
        .arg("8M")
        .status();
    match status {
        Ok(s) if s.success() => Some(std::fs::read(&image).unwrap()),
        other => {
            eprintln!("mkfs.ext4 unavailable ({other:?}): synthetic guest import skipped");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_fills_os_properties_the_user_did_not_set() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(disk) = centos_like_ext4(tmp.path()) else {
        return;
    };
    let (router, token) = app().await;

    let id = create(
        &router,
        &token,
        json!({"name": "c7", "disk_format": "raw", "container_format": "bare"}),
    )
    .await;
    let shown = upload_and_show(&router, &token, &id, disk.clone()).await;
    assert_eq!(shown["__os_version"], "CentOS 7.9 64bit");
    assert_eq!(shown["__os_type"], "Linux");
    assert_eq!(shown["__os_bit"], "64");
    assert_eq!(shown["__platform"], "CentOS");
    assert_eq!(shown["architecture"], "x86_64");
    assert_eq!(shown["__is_config_init"], "true");
    // No partition table, no boot loader: the boot mode is unknown and left unset.
    assert!(shown.get("hw_firmware_type").is_none(), "{shown}");

    // What the user set wins.
    let id = create(
        &router,
        &token,
        json!({"name": "mine", "disk_format": "raw", "container_format": "bare",
               "__os_version": "Other Linux(64 bit)", "architecture": "aarch64"}),
    )
    .await;
    let shown = upload_and_show(&router, &token, &id, disk).await;
    assert_eq!(shown["__os_version"], "Other Linux(64 bit)");
    assert_eq!(shown["architecture"], "aarch64");
    assert_eq!(shown["__os_type"], "Linux", "unset ones are still filled");

    // No OS inside: the upload succeeds and nothing is filled.
    let id = create(
        &router,
        &token,
        json!({"name": "zeros", "disk_format": "raw", "container_format": "bare"}),
    )
    .await;
    let shown = upload_and_show(&router, &token, &id, vec![0u8; 1 << 20]).await;
    assert!(shown.get("__os_version").is_none(), "{shown}");
}

fn os_images_dir() -> Option<PathBuf> {
    match std::env::var_os("IMS_OS_IMAGES_DIR") {
        Some(d) => Some(PathBuf::from(d)),
        None if std::env::var("IMS_SKIP_OS_IMAGES").as_deref() == Ok("1") => {
            eprintln!("IMS_SKIP_OS_IMAGES=1: real OS image import skipped on purpose");
            None
        }
        None => panic!(
            "IMS_OS_IMAGES_DIR is not set: build the images with \
             `bash ../shared/fixtures/make-os-images.sh DIR` (scripts/test.sh does) and export \
             IMS_OS_IMAGES_DIR=DIR, or set IMS_SKIP_OS_IMAGES=1 to skip this test on purpose"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_of_a_real_os_image_fills_its_os_properties() {
    let Some(dir) = os_images_dir() else { return };
    let source = dir.join("ubuntu2204-amd64-uefi-gpt-ext4-cloudinit.raw");
    assert!(source.exists(), "{} missing", source.display());
    let tmp = tempfile::tempdir().unwrap();
    let vmdk = tmp.path().join("ubuntu.vmdk");
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vmdk"])
        .arg(&source)
        .arg(&vmdk)
        .status()
        .expect("qemu-img (scripts/test.sh installs it)");
    assert!(status.success());
    let data = std::fs::read(&vmdk).unwrap();
    let (router, token) = app().await;
    let id = create(
        &router,
        &token,
        json!({"name": "u2204", "disk_format": "vmdk", "container_format": "bare"}),
    )
    .await;
    let shown = upload_and_show(&router, &token, &id, data).await;
    assert_eq!(
        shown["__os_version"], "Ubuntu 22.04 server 64bit",
        "{shown}"
    );
    assert_eq!(shown["__os_type"], "Linux");
    assert_eq!(shown["__os_bit"], "64");
    assert_eq!(shown["__platform"], "Ubuntu");
    assert_eq!(shown["architecture"], "x86_64");
    // BIOS boot partition + ESP: boots both ways, so `bios` (UEFI only when it must be).
    assert_eq!(shown["hw_firmware_type"], "bios");
    assert_eq!(shown["__is_config_init"], "true");
}
