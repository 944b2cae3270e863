//! `ims img …`: offline commands on local image files: `inspect` (the guest OS facts) and the
//! qemu-img-like `info|check|map|compare|convert|create` (in `img/disk.rs`).

mod disk;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use ims_domain::os_catalog::EndOfLife;
use ims_guest::Inspection;
use serde_json::{Value, json};

#[derive(Args, Debug)]
pub struct ImgArgs {
    #[command(subcommand)]
    command: ImgCommand,
}

#[derive(Subcommand, Debug)]
enum ImgCommand {
    /// Show an image's format, sizes and the files it references (never opened).
    Info(disk::InfoArgs),
    /// Check an image's metadata. Exit: 0 clean, 2 corrupt, 3 leaks only, 63 no check for
    /// this format, 1 error.
    Check(disk::CheckArgs),
    /// List the data and zero extents of the virtual disk.
    Map(disk::MapArgs),
    /// Compare two images' virtual content. Exit: 0 identical, 1 different, 2 error.
    Compare(disk::CompareArgs),
    /// Convert an image to another format (all cores; `-c` compresses, `-p` shows progress).
    Convert(disk::ConvertArgs),
    /// Create an empty image.
    Create(disk::CreateArgs),
    /// Read a disk image's partitions, filesystems and operating system without booting it.
    Inspect {
        /// The image file, in any format `ims-diskfmt` reads (images referring to other files are
        /// refused).
        image: PathBuf,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OutputFormat {
    Table,
    Json,
}

pub fn run(args: ImgArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ImgCommand::Info(args) => disk::info(args),
        ImgCommand::Check(args) => disk::check(args),
        ImgCommand::Map(args) => disk::map(args),
        ImgCommand::Compare(args) => disk::compare(args),
        ImgCommand::Convert(args) => disk::convert(args),
        ImgCommand::Create(args) => disk::create(args),
        ImgCommand::Inspect { image, format } => {
            let started = Instant::now();
            let inspection = ims_guest::inspect_path(&image)
                .with_context(|| format!("inspecting {}", image.display()))?;
            let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
            let doc = to_json(&inspection, elapsed_ms);
            match format {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&doc)?),
                OutputFormat::Table => print_table(&doc),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn to_json(i: &Inspection, elapsed_ms: f64) -> Value {
    let f = i.facts();
    let root = i.root.as_ref();
    let seed = i.seed_os();
    json!({
        "os_type": f.map(|f| f.os_type.as_str()),
        "distro": f.and_then(|f| f.distro.clone()),
        "version": f.and_then(|f| f.version.clone()),
        "full_version": f.and_then(|f| f.full_version.clone()),
        "product_name": f.and_then(|f| f.product_name.clone()),
        "edition": f.and_then(|f| f.edition.clone()),
        "build": f.and_then(|f| f.build.clone()),
        "service_pack": f.and_then(|f| f.service_pack.clone()),
        "arch": f.and_then(|f| f.arch.clone()),
        "bits": f.and_then(|f| f.bits),
        "firmware": i.firmware.as_str(),
        "hw_firmware_type": i.firmware.hw_firmware_type(),
        "partition_table": i.partition_table.kind.as_str(),
        "root_device": root.map(|r| r.device.clone()),
        "root_fs": root.map(|r| r.fs.as_str()),
        "root_subvolume": root.and_then(|r| r.subvolume.clone()),
        "cloud_init": f.and_then(|f| f.cloud_init.clone()),
        "hostname": f.and_then(|f| f.hostname.clone()),
        "fstab_root": f.and_then(|f| f.fstab_root.clone()),
        "kernels": f.map(|f| f.kernels.clone()).unwrap_or_default(),
        "package_format": f.and_then(|f| f.package_format.clone()),
        "package_manager": f.and_then(|f| f.package_manager.clone()),
        "seed_os_version": seed.as_ref().map(|s| s.os_version.clone()),
        "seed_platform": seed.as_ref().map(|s| s.platform),
        "seed_supported": seed.as_ref().map(|s| s.listed),
        "seed_uefi_supported": seed.as_ref().map(|s| s.uefi_listed),
        "seed_end_of_life": seed.as_ref().and_then(|s| s.end_of_life).map(|e| match e {
            EndOfLife::On(d) => d.to_string(),
            EndOfLife::Stopped => "stopped".to_string(),
        }),
        "seed_past_end_of_life": seed
            .as_ref()
            .and_then(|s| s.past_end_of_life(ims_domain::now().date())),
        "efi_loaders": i.efi_loaders,
        "disk_format": i.disk_format,
        "virtual_size": i.virtual_size,
        "volumes": i.volumes.iter().map(|v| json!({
            "device": v.device,
            "offset": v.offset,
            "size": v.size,
            "fs": v.fs.map(|k| k.as_str()),
        })).collect::<Vec<_>>(),
        "warnings": i.warnings,
        "elapsed_ms": (elapsed_ms * 1000.0).round() / 1000.0,
    })
}

fn print_table(doc: &Value) {
    let Value::Object(map) = doc else { return };
    for (k, v) in map {
        let text = match v {
            Value::Null => continue,
            Value::String(s) => s.clone(),
            Value::Array(a) if a.is_empty() => continue,
            Value::Array(a) => a
                .iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    Value::Object(o) => o
                        .values()
                        .filter(|v| !v.is_null())
                        .map(|v| v.to_string().trim_matches('"').to_string())
                        .collect::<Vec<_>>()
                        .join(" "),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n                  "),
            other => other.to_string(),
        };
        println!("{k:<17} {text}");
    }
}
