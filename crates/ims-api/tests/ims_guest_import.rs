//! Guest inspection on import, through the IMS API: an IMS image (made through the IMS service
//! or Huawei's Glance dialect with `__os_version`) starts with placeholders for what the user did
//! not state (`Other Linux(64 bit)`, `x86`, `bios`, listed in `__os_placeholders`); once its data
//! arrives the same guest hook as the Glance upload replaces them with what is inside, in the
//! IMS vocabulary (`architecture` `x86`/`arm`, `__support_arm`), and `GET /v2/cloudimages` shows
//! them. Values the user gave are kept. `CloudImageService::inspect_imported_image` is the hook
//! the IMS import jobs call.
//!
//! The synthetic tests build ext4 filesystems with `mkfs.ext4 -d` (e2fsprogs). The real-image
//! test converts the openEuler aarch64 UEFI image of `IMS_OS_IMAGES_DIR` to qcow2 with `qemu-img`;
//! without `IMS_OS_IMAGES_DIR` it fails unless `IMS_SKIP_OS_IMAGES=1`.

#[allow(dead_code)] // each test file uses a different part of the shared harness
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use ims_core::cloudimages::ImsImageSpec;
use ims_core::guest::OS_PLACEHOLDERS_PROPERTY;
use ims_core::{App, Config};
use ims_domain::Caller;
use serde_json::{Value, json};

use common::{issue_token, send};

struct Env {
    app: Arc<App>,
    router: Router,
    token: String,
    caller: Caller,
}

async fn env() -> Env {
    let app = Arc::new(App::in_memory(Config::default()).await);
    app.identity.bootstrap(Some("adminpw")).await.unwrap();
    let router = ims_api::router(app.clone());
    let token = issue_token(&router, "admin", "adminpw", "admin").await;
    let caller = app.identity.verify(&token).await.unwrap().caller().unwrap();
    Env {
        app,
        router,
        token,
        caller,
    }
}

impl Env {
    async fn glance_create(&self, body: Value) -> String {
        let req = Request::post("/v2/images")
            .header("x-auth-token", &self.token)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let r = send(&self.router, req).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r.json()["id"].as_str().unwrap().to_string()
    }

    async fn upload(&self, id: &str, data: Vec<u8>) {
        let req = Request::put(format!("/v2/images/{id}/file"))
            .header("x-auth-token", &self.token)
            .header("content-type", "application/octet-stream")
            .body(Body::from(data))
            .unwrap();
        let r = send(&self.router, req).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    }

    /// The image as the IMS API lists it.
    async fn ims_show(&self, id: &str) -> Value {
        let req = Request::get(format!("/v2/cloudimages?id={id}"))
            .header("x-auth-token", &self.token)
            .body(Body::empty())
            .unwrap();
        let r = send(&self.router, req).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let images = r.json()["images"].as_array().unwrap().clone();
        assert_eq!(images.len(), 1, "{images:?}");
        images[0].clone()
    }
}

/// A whole-disk ext4 image holding a small CentOS 7.9 root (os-release, release file, an
/// x86-64 ELF header as `/usr/bin/bash`, cloud-init's config).
fn centos_like_ext4(dir: &Path) -> Vec<u8> {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("etc/cloud")).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::write(
        root.join("etc/os-release"),
        "NAME=\"CentOS Linux\"\nID=\"centos\"\nVERSION_ID=\"7\"\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/centos-release"),
        "CentOS Linux release 7.9.2009 (Core)\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/cloud/cloud.cfg"), "users: [default]\n").unwrap();
    let mut elf = vec![0u8; 64];
    elf[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
    elf[16] = 2;
    elf[18] = 0x3e; // x86-64
    elf[20] = 1;
    std::fs::write(root.join("usr/bin/bash"), &elf).unwrap();
    let image = dir.join("disk.raw");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&image)
        .arg("8M")
        .output()
        .expect("mkfs.ext4 (e2fsprogs)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&image).unwrap()
}

fn spec(name: &str) -> ImsImageSpec {
    ImsImageSpec {
        name: name.into(),
        virtual_env_type: "FusionCompute".into(),
        disk_format: "raw".into(),
        min_disk: 40,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ims_image_placeholders_are_replaced_by_what_is_inside() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = centos_like_ext4(tmp.path());
    let env = env().await;

    // An IMS image created without os_version/architecture/boot mode: placeholders.
    let image = env
        .app
        .cloud_images
        .create_image(&env.caller, &spec("c7-ims"))
        .await
        .unwrap();
    let id = image.id.to_string();
    let before = env.ims_show(&id).await;
    assert_eq!(before["__os_version"], "Other Linux(64 bit)");
    assert_eq!(before["architecture"], "x86");
    assert_eq!(
        before[OS_PLACEHOLDERS_PROPERTY],
        "__os_version,architecture,hw_firmware_type"
    );

    env.upload(&id, disk.clone()).await;
    let after = env.ims_show(&id).await;
    assert_eq!(after["status"], "active");
    assert_eq!(after["__os_version"], "CentOS 7.9 64bit", "{after}");
    assert_eq!(after["__platform"], "CentOS");
    assert_eq!(after["__os_type"], "Linux");
    assert_eq!(after["__os_bit"], "64");
    assert_eq!(after["architecture"], "x86");
    assert_eq!(after["__support_arm"], "false");
    assert_eq!(after["__is_config_init"], "true");
    // A whole-disk filesystem says nothing about the boot mode: the placeholder stays.
    assert_eq!(after["hw_firmware_type"], "bios");
    assert!(after.get(OS_PLACEHOLDERS_PROPERTY).is_none(), "{after}");

    // Values the user gave are kept, whatever is inside.
    let mut declared = spec("declared");
    declared.os_version = Some("Debian GNU/Linux 12.0.0 64bit".into());
    declared.hw_firmware_type = Some("uefi".into());
    let image = env
        .app
        .cloud_images
        .create_image(&env.caller, &declared)
        .await
        .unwrap();
    let id = image.id.to_string();
    assert_eq!(
        env.ims_show(&id).await[OS_PLACEHOLDERS_PROPERTY],
        "architecture"
    );
    env.upload(&id, disk).await;
    let after = env.ims_show(&id).await;
    assert_eq!(after["__os_version"], "Debian GNU/Linux 12.0.0 64bit");
    assert_eq!(after["__platform"], "Debian");
    assert_eq!(after["hw_firmware_type"], "uefi");
    assert_eq!(after["architecture"], "x86");
    assert_eq!(after["__is_config_init"], "true");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_imported_image_fills_an_image_whose_upload_was_not_inspected() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = centos_like_ext4(tmp.path());
    let env = env().await;
    // `ovf` is not a disk: the upload path does not inspect it. The import hook reads the
    // durable data all the same (what an IMS import job does once its data is written).
    let id = env
        .glance_create(json!({"name": "ovf", "disk_format": "raw", "container_format": "ovf"}))
        .await;
    env.upload(&id, disk).await;
    let uuid = id.parse().unwrap();
    let images = &env.app.cloud_images;
    let set = images.inspect_imported_image(uuid).await.unwrap();
    assert!(set.contains(&"__os_version"), "{set:?}");
    let shown = env.ims_show(&id).await;
    assert_eq!(shown["__os_version"], "CentOS 7.9 64bit");
    assert_eq!(shown["architecture"], "x86_64");
    // Running it again changes nothing; an image without data is refused.
    assert!(
        images
            .inspect_imported_image(uuid)
            .await
            .unwrap()
            .is_empty()
    );
    let empty = env
        .glance_create(json!({"name": "empty", "disk_format": "raw", "container_format": "bare"}))
        .await;
    assert!(
        images
            .inspect_imported_image(empty.parse().unwrap())
            .await
            .is_err()
    );
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

/// Huawei's Glance dialect: `POST /v2/images` with `__os_version` makes an IMS image whose
/// architecture and boot mode are placeholders; uploading an aarch64 UEFI openEuler disk
/// (qcow2) replaces them, and the IMS API shows `arm`/`uefi`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glance_dialect_ims_image_gets_the_detected_arch_and_boot_mode() {
    let Some(dir) = os_images_dir() else { return };
    let source = dir.join("openeuler2203-aarch64-uefi-gpt-ext4.raw");
    assert!(source.exists(), "{} missing", source.display());
    let tmp = tempfile::tempdir().unwrap();
    let qcow2 = tmp.path().join("oe.qcow2");
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&source)
        .arg(&qcow2)
        .status()
        .expect("qemu-img (scripts/test.sh installs it)");
    assert!(status.success());
    let env = env().await;
    let id = env
        .glance_create(json!({
            "name": "oe2203",
            "disk_format": "qcow2",
            "container_format": "bare",
            "__os_version": "openEuler 22.03 64bit",
        }))
        .await;
    let before = env.ims_show(&id).await;
    assert_eq!(before["architecture"], "x86");
    assert_eq!(
        before[OS_PLACEHOLDERS_PROPERTY],
        "architecture,hw_firmware_type"
    );
    env.upload(&id, std::fs::read(&qcow2).unwrap()).await;
    let after = env.ims_show(&id).await;
    assert_eq!(after["__os_version"], "openEuler 22.03 64bit", "{after}");
    assert_eq!(after["architecture"], "arm");
    assert_eq!(after["__support_arm"], "true");
    assert_eq!(after["hw_firmware_type"], "uefi");
    assert_eq!(after["__is_config_init"], "false");
    assert!(after.get(OS_PLACEHOLDERS_PROPERTY).is_none(), "{after}");
}
