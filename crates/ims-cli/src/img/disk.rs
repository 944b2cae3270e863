//! `ims img info|check|map|compare|convert|create`: qemu-img's offline commands on local
//! files, on the safe engine of `ims-diskfmt` (formats detected by content; references to
//! other files reported, never opened).
//!
//! Exit codes (stable, like qemu-img's):
//! * every command: 0 success, 1 error (unreadable, corrupt, refused, bad arguments);
//! * `check`: 0 clean, 2 corruptions found (including an image too corrupt to open),
//!   3 leaks only, 63 the format has no consistency check, 1 other errors;
//! * `compare`: 0 identical, 1 different, 2 error.

use std::fs::{File, OpenOptions as FsOpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, ValueEnum};
use ims_diskfmt::convert::{self, Comparison, ConvertOptions};
use ims_diskfmt::disk::{self, Disk, DiskError, DiskErrorKind, ExtentKind, OpenOptions};
use ims_diskfmt::probe::{Probe, ProbeError, ReferenceKind, probe};
use ims_diskfmt::write::{self, CreateOptions, Sink};
use ims_diskfmt::{Format, convert::ConvertError};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value, json};

/// `check` exit codes (qemu-img's).
const EXIT_CHECK_CORRUPT: u8 = 2;
const EXIT_CHECK_LEAKS: u8 = 3;
const EXIT_CHECK_UNSUPPORTED: u8 = 63;
/// `compare` exit codes (qemu-img's).
const EXIT_COMPARE_DIFFERENT: u8 = 1;
const EXIT_COMPARE_ERROR: u8 = 2;

#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq)]
pub enum Output {
    #[default]
    Human,
    Json,
}

/// Options shared by the commands that read one image.
#[derive(Args, Debug)]
pub struct SourceArgs {
    /// The image's format (qemu names accepted, e.g. vpc). Detected from the content when
    /// omitted; when given it must match the content.
    #[arg(short = 'f', long = "format")]
    format: Option<String>,
    /// Read corrupt images like qemu does (metadata past the end of the file reads as zeros).
    #[arg(long)]
    lenient: bool,
    /// The image file.
    filename: PathBuf,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Args, Debug)]
pub struct MapArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Format of the first image (detected when omitted).
    #[arg(short = 'f')]
    format_a: Option<String>,
    /// Format of the second image (detected when omitted).
    #[arg(short = 'F')]
    format_b: Option<String>,
    /// Strict: images of different sizes are different even if the extra part is zeros.
    #[arg(short = 's', long)]
    strict: bool,
    #[arg(long)]
    lenient: bool,
    first: PathBuf,
    second: PathBuf,
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Source format (detected when omitted; must match the content when given).
    #[arg(short = 'f')]
    format: Option<String>,
    /// Output format.
    #[arg(short = 'O', default_value = "raw")]
    output_format: String,
    /// Output format options, `key=value,key=value` (e.g. `compat=1.1,compression_type=zstd`,
    /// `subformat=streamOptimized`).
    #[arg(short = 'o')]
    options: Vec<String>,
    /// Compress every block the output format can compress.
    #[arg(short = 'c')]
    compress: bool,
    /// Show a progress bar on stderr.
    #[arg(short = 'p')]
    progress: bool,
    /// Worker threads (default: one per core).
    #[arg(short = 'm', default_value_t = 0)]
    threads: usize,
    /// fsync the output before exiting (qemu-img does not by default, nor do we).
    #[arg(long)]
    sync: bool,
    #[arg(long)]
    lenient: bool,
    source: PathBuf,
    destination: PathBuf,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Format of the new image.
    #[arg(short = 'f', default_value = "raw")]
    format: String,
    /// Format options, `key=value,...`.
    #[arg(short = 'o')]
    options: Vec<String>,
    filename: PathBuf,
    /// Virtual size in bytes, or with a K/M/G/T suffix (powers of 1024).
    size: String,
}

/// An image opened for reading, with what the content probe found.
struct Opened {
    path: PathBuf,
    file: Arc<File>,
    format: Format,
    probe: Option<Probe>,
}

impl Opened {
    fn open(&self, lenient: bool) -> Result<Box<dyn Disk>, DiskError> {
        disk::open(self.file.clone(), self.format, &OpenOptions { lenient })
    }
}

fn parse_format(name: &str) -> anyhow::Result<Format> {
    Format::parse(name).ok_or_else(|| anyhow!("unknown image format {name:?}"))
}

/// Opens `path` and decides its format by content. A declared format must agree with the
/// content (raw accepts raw-like content: ISO 9660, GPT, LUKS); it may settle an ambiguous
/// probe among the candidates, never override a different detected format.
fn detect(path: &Path, declared: Option<&str>) -> anyhow::Result<Opened> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let declared = declared.map(parse_format).transpose()?;
    let found = probe(&file);
    let format = match (&found, declared) {
        (Ok(p), None) => p.format,
        (Ok(p), Some(want)) => {
            let raw_like = matches!(
                p.format,
                Format::Raw | Format::Iso | Format::Gpt | Format::Luks
            );
            if want == p.format || (want == Format::Raw && raw_like) {
                want
            } else {
                bail!(
                    "{}: the content is a {} image, not {want} as given with -f",
                    path.display(),
                    p.format
                );
            }
        }
        (Err(ProbeError::Ambiguous { formats }), Some(want)) if formats.contains(&want) => want,
        (Err(error), declared) => match (error.format(), declared) {
            // A malformed header of the declared (or detected) format: the reader reports
            // the damage precisely.
            (Some(bad), None) => bad,
            (Some(bad), Some(want)) if bad == want => want,
            _ => return Err(anyhow!("{error}")).context(format!("probing {}", path.display())),
        },
    };
    Ok(Opened {
        path: path.to_owned(),
        file: Arc::new(file),
        format,
        probe: found.ok(),
    })
}

fn describe_open_error(opened: &Opened, error: &DiskError) -> anyhow::Error {
    anyhow!("{error}").context(format!(
        "opening {} as {}",
        opened.path.display(),
        opened.format
    ))
}

pub fn info(args: InfoArgs) -> anyhow::Result<ExitCode> {
    let opened = detect(&args.source.filename, args.source.format.as_deref())?;
    // A reader refuses images with references and encrypted ones (no key handling); info
    // still reports them, from the probe, like qemu-img info does.
    let disk = match opened.open(args.source.lenient) {
        Ok(disk) => Some(disk),
        Err(e)
            if matches!(
                e.kind(),
                DiskErrorKind::Reference | DiskErrorKind::Unsupported
            ) && opened.probe.is_some() =>
        {
            None
        }
        Err(e) => return Err(describe_open_error(&opened, &e)),
    };
    let doc = info_json(&opened, disk.as_deref())?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&doc)?),
        Output::Human => print_info_human(&doc),
    }
    Ok(ExitCode::SUCCESS)
}

/// qemu-img's `info --output=json` keys, plus `references` (every file the image names).
fn info_json(opened: &Opened, disk: Option<&dyn Disk>) -> anyhow::Result<Value> {
    let metadata = opened
        .file
        .metadata()
        .context("reading the file's metadata")?;
    let mut doc = Map::new();
    let virtual_size = match (disk, &opened.probe) {
        (Some(d), _) => Some(d.virtual_size()),
        (None, Some(p)) => p.virtual_size,
        (None, None) => None,
    };
    doc.insert("virtual-size".into(), json!(virtual_size));
    doc.insert("filename".into(), json!(opened.path.display().to_string()));
    doc.insert("format".into(), json!(opened.format.as_str()));
    doc.insert("actual-size".into(), json!(metadata.blocks() * 512));
    let info = disk.map(|d| d.info()).unwrap_or_default();
    if let Some(cluster) = info.cluster_size {
        doc.insert("cluster-size".into(), json!(cluster));
    }
    let encrypted = info.encrypted || opened.probe.as_ref().is_some_and(|p| p.encrypted);
    if encrypted {
        doc.insert("encrypted".into(), json!(true));
    }
    let references = opened
        .probe
        .as_ref()
        .map(|p| p.references.clone())
        .unwrap_or_default();
    if let Some(backing) = references.iter().find(|r| {
        matches!(
            r.kind,
            ReferenceKind::BackingFile | ReferenceKind::VmdkParent | ReferenceKind::VhdParent
        )
    }) {
        // Reported as stored; never resolved or opened.
        doc.insert("backing-filename".into(), json!(backing.target));
    }
    if !references.is_empty() {
        doc.insert(
            "references".into(),
            Value::Array(
                references
                    .iter()
                    .map(|r| json!({"kind": format!("{:?}", r.kind), "target": r.target}))
                    .collect(),
            ),
        );
    }
    let subformat = info
        .subformat
        .clone()
        .or_else(|| opened.probe.as_ref().and_then(|p| p.subformat.clone()));
    let mut data = Map::new();
    if let Some(sub) = subformat {
        data.insert("subformat".into(), json!(sub));
    }
    for (key, value) in &info.details {
        // Values are JSON literals' text: integers, booleans, lists and objects stay JSON;
        // anything else (including "1.1", a version, not a number) is a string.
        let parsed = match serde_json::from_str::<Value>(value) {
            Ok(Value::Number(n)) if n.is_u64() || n.is_i64() => Value::Number(n),
            Ok(v @ (Value::Bool(_) | Value::Array(_) | Value::Object(_))) => v,
            _ => json!(value),
        };
        data.insert(key.clone(), parsed);
    }
    if !info.snapshots.is_empty() {
        data.insert(
            "snapshots".into(),
            Value::Array(
                info.snapshots
                    .iter()
                    .map(|(id, name, size)| json!({"id": id, "name": name, "vm-state-size": 0, "virtual-size": size}))
                    .collect(),
            ),
        );
    }
    if !data.is_empty() {
        doc.insert(
            "format-specific".into(),
            json!({"type": opened.format.as_str(), "data": data}),
        );
    }
    doc.insert("dirty-flag".into(), json!(info.dirty));
    Ok(Value::Object(doc))
}

fn print_info_human(doc: &Value) {
    let text = |k: &str| doc[k].as_str().unwrap_or_default().to_owned();
    println!("image: {}", text("filename"));
    println!("file format: {}", text("format"));
    if let Some(size) = doc["virtual-size"].as_u64() {
        println!("virtual size: {} ({size} bytes)", human_size(size));
    }
    if let Some(size) = doc["actual-size"].as_u64() {
        println!("disk size: {}", human_size(size));
    }
    if let Some(cluster) = doc["cluster-size"].as_u64() {
        println!("cluster_size: {cluster}");
    }
    if let Some(backing) = doc["backing-filename"].as_str() {
        println!("backing file: {backing} (not opened)");
    }
    if let Some(refs) = doc["references"].as_array() {
        for r in refs {
            println!(
                "references: {} {} (not opened)",
                r["kind"].as_str().unwrap_or_default(),
                r["target"].as_str().unwrap_or_default()
            );
        }
    }
    if doc["encrypted"].as_bool() == Some(true) {
        println!("encrypted: yes");
    }
    if let Some(data) = doc["format-specific"]["data"].as_object() {
        println!("Format specific information:");
        for (k, v) in data {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("    {k}: {v}");
        }
    }
}

/// `1.5 GiB`-style sizes, like qemu-img's human output.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.3} {}", UNITS[unit])
            .replace(".000 ", " ")
            .to_string()
    }
}

pub fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let opened = detect(&args.source.filename, args.source.format.as_deref())?;
    let disk = match opened.open(args.source.lenient) {
        Ok(disk) => disk,
        // Too damaged to open is a check result, not a tool failure.
        Err(e) if matches!(e.kind(), DiskErrorKind::Corrupt | DiskErrorKind::TooLarge) => {
            print_check(args.output, &opened, 1, 0, &[e.to_string()], None);
            return Ok(ExitCode::from(EXIT_CHECK_CORRUPT));
        }
        Err(e) => return Err(describe_open_error(&opened, &e)),
    };
    let report = match disk.check() {
        Ok(report) => report,
        Err(DiskError::Unsupported { what }) => {
            eprintln!("ims img: {}: {what}", opened.path.display());
            return Ok(ExitCode::from(EXIT_CHECK_UNSUPPORTED));
        }
        Err(e) if matches!(e.kind(), DiskErrorKind::Corrupt | DiskErrorKind::TooLarge) => {
            print_check(args.output, &opened, 1, 0, &[e.to_string()], None);
            return Ok(ExitCode::from(EXIT_CHECK_CORRUPT));
        }
        Err(e) => return Err(anyhow!("{e}").context("checking the image")),
    };
    print_check(
        args.output,
        &opened,
        report.corruptions,
        report.leaks,
        &report.messages,
        Some(&report),
    );
    Ok(if report.corruptions > 0 {
        ExitCode::from(EXIT_CHECK_CORRUPT)
    } else if report.leaks > 0 {
        ExitCode::from(EXIT_CHECK_LEAKS)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_check(
    output: Output,
    opened: &Opened,
    corruptions: u64,
    leaks: u64,
    messages: &[String],
    report: Option<&disk::CheckReport>,
) {
    match output {
        Output::Json => {
            let mut doc = Map::new();
            doc.insert("filename".into(), json!(opened.path.display().to_string()));
            doc.insert("format".into(), json!(opened.format.as_str()));
            doc.insert("check-errors".into(), json!(0));
            doc.insert("corruptions".into(), json!(corruptions));
            doc.insert("leaks".into(), json!(leaks));
            if let Some(r) = report {
                if let Some(v) = r.image_end_offset {
                    doc.insert("image-end-offset".into(), json!(v));
                }
                if let Some(v) = r.total_clusters {
                    doc.insert("total-clusters".into(), json!(v));
                }
                if let Some(v) = r.allocated_clusters {
                    doc.insert("allocated-clusters".into(), json!(v));
                }
            }
            doc.insert("messages".into(), json!(messages));
            println!(
                "{}",
                serde_json::to_string_pretty(&Value::Object(doc)).unwrap_or_default()
            );
        }
        Output::Human => {
            for m in messages {
                println!("ERROR {m}");
            }
            if corruptions == 0 && leaks == 0 {
                println!("No errors were found on the image.");
            } else {
                println!("{corruptions} errors were found on the image.");
                println!("{leaks} leaked clusters were found on the image.");
            }
            if let Some(r) = report
                && let (Some(a), Some(t)) = (r.allocated_clusters, r.total_clusters)
            {
                println!("{a}/{t} clusters allocated");
            }
        }
    }
}

pub fn map(args: MapArgs) -> anyhow::Result<ExitCode> {
    let opened = detect(&args.source.filename, args.source.format.as_deref())?;
    let disk = opened
        .open(args.source.lenient)
        .map_err(|e| describe_open_error(&opened, &e))?;
    let extents = convert::map(disk.as_ref()).map_err(|e| anyhow!("{e}"))?;
    match args.output {
        Output::Json => {
            let list: Vec<Value> = extents
                .iter()
                .map(|e| {
                    let data = e.kind == ExtentKind::Data;
                    json!({"start": e.offset, "length": e.length, "depth": 0,
                           "present": data, "zero": !data, "data": data})
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        Output::Human => {
            println!("{:<20}{:<20}Kind", "Offset", "Length");
            for e in &extents {
                let kind = match e.kind {
                    ExtentKind::Data => "data",
                    ExtentKind::Zero => "zero",
                };
                println!("{:<#20x}{:<#20x}{kind}", e.offset, e.length);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn compare(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let run = || -> anyhow::Result<Comparison> {
        let a = detect(&args.first, args.format_a.as_deref())?;
        let b = detect(&args.second, args.format_b.as_deref())?;
        let disk_a = a
            .open(args.lenient)
            .map_err(|e| describe_open_error(&a, &e))?;
        let disk_b = b
            .open(args.lenient)
            .map_err(|e| describe_open_error(&b, &e))?;
        convert::compare(disk_a.as_ref(), disk_b.as_ref(), args.strict)
            .map_err(|e| anyhow!("{e}").context("comparing"))
    };
    match run() {
        Ok(Comparison::Identical) => {
            println!("Images are identical.");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Comparison::DiffersAt(offset)) => {
            println!("Content mismatch at offset {offset}!");
            Ok(ExitCode::from(EXIT_COMPARE_DIFFERENT))
        }
        Ok(Comparison::SizeDiffers { a, b }) => {
            println!("Strict mode: Image size mismatch ({a} != {b})!");
            Ok(ExitCode::from(EXIT_COMPARE_DIFFERENT))
        }
        Err(e) => {
            eprintln!("ims img compare: {e:#}");
            Ok(ExitCode::from(EXIT_COMPARE_ERROR))
        }
    }
}

/// `-o a=b,c=d` (repeatable) into create options.
fn create_options(options: &[String], compress: bool) -> anyhow::Result<CreateOptions> {
    let mut out = CreateOptions {
        compress,
        ..CreateOptions::default()
    };
    for item in options
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|s| !s.is_empty())
    {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| anyhow!("option {item:?} is not key=value"))?;
        out.options
            .insert(key.trim().to_owned(), value.trim().to_owned());
    }
    Ok(out)
}

/// The output file as a [`Sink`]; `sync` is a no-op unless durability was asked for.
struct OutputFile {
    file: File,
    durable: bool,
}

impl Sink for OutputFile {
    fn write_all_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.file, buf, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn sync(&self) -> io::Result<()> {
        if self.durable {
            self.file.sync_all()
        } else {
            Ok(())
        }
    }
}

/// Creates (truncating) the output file; refuses to write over the source.
fn create_output(path: &Path, source: Option<&File>, durable: bool) -> anyhow::Result<OutputFile> {
    if let (Some(source), Ok(existing)) = (source, std::fs::metadata(path)) {
        let src = source.metadata()?;
        if src.dev() == existing.dev() && src.ino() == existing.ino() {
            bail!("{}: the output is the source image", path.display());
        }
    }
    let file = FsOpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    Ok(OutputFile { file, durable })
}

pub fn convert(args: ConvertArgs) -> anyhow::Result<ExitCode> {
    let opened = detect(&args.source, args.format.as_deref())?;
    let disk = opened
        .open(args.lenient)
        .map_err(|e| describe_open_error(&opened, &e))?;
    let target = parse_format(&args.output_format)?;
    let options = create_options(&args.options, args.compress)?;
    let sink = create_output(&args.destination, Some(&opened.file), args.sync)?;
    let outcome = (|| -> anyhow::Result<()> {
        let writer = write::create(Box::new(sink), target, disk.virtual_size(), &options)
            .map_err(|e| anyhow!("{e}").context(format!("creating a {target} image")))?;
        let bar = progress_bar(args.progress, disk.virtual_size());
        let result = convert::convert(
            disk.as_ref(),
            writer,
            &ConvertOptions {
                threads: args.threads,
                cancel: None,
            },
            &mut |done, _| bar.set_position(done),
        );
        bar.finish_and_clear();
        result.map_err(|e: ConvertError| {
            anyhow!("{e}").context(format!("converting {} to {target}", opened.path.display()))
        })?;
        Ok(())
    })();
    if outcome.is_err() {
        // Leave no half-written image behind; the error is what matters.
        let _ = std::fs::remove_file(&args.destination);
    }
    outcome.map(|()| ExitCode::SUCCESS)
}

fn progress_bar(enabled: bool, total: u64) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{wide_bar} {percent:>3}% {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// `64M`, `1G`, `512`, `1.5G` → bytes.
fn parse_size(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let (number, shift) = match text.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&text[..text.len() - 1], 10),
        Some('M') => (&text[..text.len() - 1], 20),
        Some('G') => (&text[..text.len() - 1], 30),
        Some('T') => (&text[..text.len() - 1], 40),
        Some('B') => (&text[..text.len() - 1], 0),
        _ => (text, 0),
    };
    if let Ok(n) = number.parse::<u64>() {
        return n
            .checked_mul(1u64 << shift)
            .ok_or_else(|| anyhow!("size {text} is too large"));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| anyhow!("size {text:?} is not a number with an optional K/M/G/T suffix"))?;
    let bytes = value * (1u64 << shift) as f64;
    if !(0.0..=(u64::MAX as f64)).contains(&bytes) {
        bail!("size {text} is out of range");
    }
    Ok(bytes as u64)
}

pub fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    let format = parse_format(&args.format)?;
    let size = parse_size(&args.size)?;
    let options = create_options(&args.options, false)?;
    let sink = create_output(&args.filename, None, false)?;
    let writer = write::create(Box::new(sink), format, size, &options)
        .map_err(|e| anyhow!("{e}").context(format!("creating a {format} image")))?;
    writer
        .finish()
        .map_err(|e| anyhow!("{e}").context("writing the image metadata"))?;
    println!(
        "Formatting '{}', fmt={format} size={size}",
        args.filename.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_qemu_img() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("2t").unwrap(), 2 << 40);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn options_split_on_commas_and_repeat() {
        let o =
            create_options(&["compat=1.1,cluster_size=4096".into(), "a=b".into()], true).unwrap();
        assert_eq!(o.options.len(), 3);
        assert_eq!(o.options["cluster_size"], "4096");
        assert!(o.compress);
        assert!(create_options(&["nonsense".into()], false).is_err());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(64 << 20), "64 MiB");
        assert_eq!(human_size(1536), "1.500 KiB");
    }
}
