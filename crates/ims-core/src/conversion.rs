//! The conversion service: brings a source (a stored image blob, a user's bucket object or a
//! staged import) into a work file, inspects it, and converts it with the `ims-diskfmt` engine
//! (`disk::open` → `write::create` → `convert`) into another work file that the caller streams
//! to its destination (an image blob, or a bucket object as an S3 multipart upload).
//!
//! Format writers patch metadata after data (positional writes), and readers need random
//! access, so both ends go through files in the configured work directory. A [`WorkFile`] is
//! removed when dropped, whatever happened; files a crashed process left behind are removed when
//! the service opens the directory at the next start. The engine refuses references to other
//! files (backing files, extents, parents); the probe here refuses them before any data is read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bytes::Bytes;
use futures::StreamExt;
use ims_blob::{BlobError, BlobStream};
use ims_diskfmt::Format;
use ims_diskfmt::convert::{ConvertError, ConvertOptions, ConvertStats, convert};
use ims_diskfmt::disk::{DiskError, OpenOptions, SharedSource};
use ims_diskfmt::probe::{Probe, ProbeError, Rejection, RejectionKind, probe};
use ims_diskfmt::write::CreateOptions;
use ims_domain::ErrorKind;
use tokio::io::AsyncWriteExt;

use crate::error::ServiceError;

/// Bytes read from a work file per chunk when it is streamed to its destination: the S3
/// multipart writer's parts are larger, so this only bounds the memory of one hop.
pub const STREAM_CHUNK: usize = 4 << 20;
/// Prefix of every work file name; the start-up sweep removes only files carrying it.
const WORK_FILE_PREFIX: &str = "ims-work-";

/// Why a conversion step failed.
#[derive(Debug, thiserror::Error)]
pub enum ConversionError {
    #[error("preparing the work directory {path}: {source}")]
    PreparingWorkDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating the work file {path}: {source}")]
    CreatingWorkFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the work file {path}: {source}")]
    WritingWorkFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the work file {path}: {source}")]
    ReadingWorkFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the source {source_name}: {cause}")]
    ReadingSource {
        source_name: String,
        cause: BlobError,
    },
    #[error("the source {source_name} is larger than the limit of {limit} bytes")]
    SourceTooLarge { source_name: String, limit: u64 },
    #[error("the source is not a disk image this service can read: {0}")]
    Inspecting(#[source] ProbeError),
    #[error("{0}")]
    Refused(#[source] Rejection),
    #[error("{format} images cannot be written")]
    UnsupportedTarget { format: Format },
    #[error("opening the source as {format}: {source}")]
    OpeningSource {
        format: Format,
        #[source]
        source: DiskError,
    },
    #[error("creating the {format} output: {source}")]
    CreatingOutput {
        format: Format,
        #[source]
        source: DiskError,
    },
    #[error("converting to {format}: {source}")]
    Converting {
        format: Format,
        #[source]
        source: ConvertError,
    },
    #[error("a conversion thread stopped: {0}")]
    ThreadGone(String),
}

impl ConversionError {
    /// The stable kind callers branch on.
    pub fn kind(&self) -> ErrorKind {
        use ims_diskfmt::convert::ConvertErrorKind;
        use ims_diskfmt::disk::DiskErrorKind;
        match self {
            ConversionError::ReadingSource { cause, .. } => cause.kind(),
            ConversionError::SourceTooLarge { .. } => ErrorKind::TooLarge,
            ConversionError::Inspecting(_) | ConversionError::Refused(_) => ErrorKind::InvalidInput,
            ConversionError::UnsupportedTarget { .. } => ErrorKind::Unsupported,
            ConversionError::OpeningSource { source, .. } => match source.kind() {
                DiskErrorKind::Unsupported => ErrorKind::Unsupported,
                _ => ErrorKind::InvalidInput,
            },
            ConversionError::Converting { source, .. } => match source.kind() {
                ConvertErrorKind::Source(DiskErrorKind::Unsupported) => ErrorKind::Unsupported,
                ConvertErrorKind::Source(_) => ErrorKind::InvalidInput,
                ConvertErrorKind::Cancelled => ErrorKind::Conflict,
                ConvertErrorKind::Output(_) | ConvertErrorKind::Internal => ErrorKind::Internal,
            },
            ConversionError::PreparingWorkDir { .. }
            | ConversionError::CreatingWorkFile { .. }
            | ConversionError::WritingWorkFile { .. }
            | ConversionError::ReadingWorkFile { .. }
            | ConversionError::CreatingOutput { .. }
            | ConversionError::ThreadGone(_) => ErrorKind::Internal,
        }
    }
}

impl From<ConversionError> for ServiceError {
    fn from(e: ConversionError) -> ServiceError {
        match e.kind() {
            ErrorKind::Internal => ServiceError::internal("converting an image", &e),
            kind => ServiceError::new(kind, e.to_string()),
        }
    }
}

pub type ConversionResult<T> = Result<T, ConversionError>;

/// A file in the work directory, removed when dropped.
#[derive(Debug)]
pub struct WorkFile {
    path: PathBuf,
}

impl WorkFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its length in bytes.
    pub async fn len(&self) -> ConversionResult<u64> {
        tokio::fs::metadata(&self.path)
            .await
            .map(|m| m.len())
            .map_err(|source| ConversionError::ReadingWorkFile {
                path: self.path.clone(),
                source,
            })
    }

    /// Streams the file's bytes in [`STREAM_CHUNK`] pieces.
    pub async fn stream(&self) -> ConversionResult<BlobStream> {
        let path = self.path.clone();
        let file = tokio::fs::File::open(&path).await.map_err(|source| {
            ConversionError::ReadingWorkFile {
                path: path.clone(),
                source,
            }
        })?;
        let key = path.display().to_string();
        let stream = futures::stream::try_unfold(file, move |mut file| {
            let key = key.clone();
            async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; STREAM_CHUNK];
                let mut filled = 0;
                while filled < buf.len() {
                    let n =
                        file.read(&mut buf[filled..])
                            .await
                            .map_err(|source| BlobError::Io {
                                op: "reading work file",
                                key: key.clone(),
                                source,
                            })?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    return Ok(None);
                }
                buf.truncate(filled);
                Ok(Some((Bytes::from(buf), file)))
            }
        });
        Ok(stream.boxed())
    }
}

impl Drop for WorkFile {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "removing a work file; the next start removes it")
            }
        }
    }
}

/// What a finished conversion produced.
#[derive(Debug)]
pub struct Converted {
    pub file: WorkFile,
    pub size: u64,
    pub stats: ConvertStats,
}

/// Conversions in one work directory.
#[derive(Debug)]
pub struct ConversionService {
    work_dir: PathBuf,
    threads: usize,
}

impl ConversionService {
    /// Conversions in `work_dir` (created at first use). `threads` is the engine's worker
    /// threads per conversion (0: one per core).
    pub fn new(work_dir: &Path, threads: usize) -> ConversionService {
        ConversionService {
            work_dir: work_dir.to_path_buf(),
            threads,
        }
    }

    /// Creates the work directory and removes the work files an earlier process left in it
    /// (a node calls it at start, before its workers run).
    pub fn sweep(&self) -> ConversionResult<usize> {
        let work_dir = &self.work_dir;
        let failed = |source| ConversionError::PreparingWorkDir {
            path: work_dir.clone(),
            source,
        };
        std::fs::create_dir_all(work_dir).map_err(failed)?;
        let mut removed = 0usize;
        for entry in std::fs::read_dir(work_dir).map_err(failed)? {
            let entry = entry.map_err(failed)?;
            let leftover = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(WORK_FILE_PREFIX));
            if leftover {
                std::fs::remove_file(entry.path()).map_err(failed)?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, dir = %work_dir.display(), "removed work files of an earlier run");
        }
        Ok(removed)
    }

    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// A fresh, empty work file; `label` shows in its name (a job id, "source", …).
    pub async fn work_file(&self, label: &str) -> ConversionResult<WorkFile> {
        let label: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(64)
            .collect();
        let name = format!(
            "{WORK_FILE_PREFIX}{label}-{}",
            uuid::Uuid::new_v4().simple()
        );
        let path = self.work_dir.join(name);
        tokio::fs::create_dir_all(&self.work_dir)
            .await
            .map_err(|source| ConversionError::PreparingWorkDir {
                path: self.work_dir.clone(),
                source,
            })?;
        tokio::fs::File::create_new(&path).await.map_err(|source| {
            ConversionError::CreatingWorkFile {
                path: path.clone(),
                source,
            }
        })?;
        Ok(WorkFile { path })
    }

    /// Copies `stream` (named `source_name` in errors) into a new work file, refusing more
    /// than `limit` bytes.
    pub async fn download(
        &self,
        source_name: &str,
        mut stream: BlobStream,
        limit: u64,
    ) -> ConversionResult<WorkFile> {
        let file = self.work_file("source").await?;
        let write_failed = |source| ConversionError::WritingWorkFile {
            path: file.path.clone(),
            source,
        };
        let mut out = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&file.path)
            .await
            .map_err(write_failed)?;
        let mut total: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|cause| ConversionError::ReadingSource {
                source_name: source_name.to_string(),
                cause,
            })?;
            total = total.saturating_add(chunk.len() as u64);
            if total > limit {
                return Err(ConversionError::SourceTooLarge {
                    source_name: source_name.to_string(),
                    limit,
                });
            }
            out.write_all(&chunk).await.map_err(write_failed)?;
        }
        out.flush().await.map_err(write_failed)?;
        Ok(file)
    }

    /// Detects the format of a work file by content and refuses what must not be read: other
    /// formats than `declared` (when given), references to other files, failed safety checks.
    pub async fn inspect(
        &self,
        file: &WorkFile,
        declared: Option<Format>,
    ) -> ConversionResult<Probe> {
        let path = file.path.clone();
        blocking(move || {
            let f = open_read(&path)?;
            let found = probe(&f).map_err(ConversionError::Inspecting)?;
            let verdict = match declared {
                Some(format) if format != found.format && !raw_like(format, found.format) => {
                    Err(Rejection {
                        kind: RejectionKind::FormatMismatch,
                        message: format!("The file is {}, not the declared {format}", found.format),
                    })
                }
                _ => found.check_safe(found.format.as_str()),
            };
            verdict.map_err(ConversionError::Refused)?;
            Ok(found)
        })
        .await
    }

    /// Converts the `format` image in `source` to `target`. Dropping the future (a job whose
    /// worker is stopped) cancels the engine's threads too.
    pub async fn convert(
        &self,
        source: &WorkFile,
        format: Format,
        target: Format,
    ) -> ConversionResult<Converted> {
        let output = self.work_file("output").await?;
        let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
        let cancel_flag = Some(cancel.0.clone());
        let (src_path, out_path) = (source.path.clone(), output.path.clone());
        let threads = self.threads;
        let stats = blocking(move || {
            let src: SharedSource = Arc::new(open_read(&src_path)?);
            let disk = ims_diskfmt::disk::open(src, format, &OpenOptions::default())
                .map_err(|source| ConversionError::OpeningSource { format, source })?;
            let sink = std::fs::OpenOptions::new()
                .write(true)
                .open(&out_path)
                .map_err(|source| ConversionError::WritingWorkFile {
                    path: out_path.clone(),
                    source,
                })?;
            let writer = ims_diskfmt::write::create(
                Box::new(sink),
                target,
                disk.virtual_size(),
                &CreateOptions::default(),
            )
            .map_err(|source| match source.kind() {
                ims_diskfmt::disk::DiskErrorKind::Unsupported => {
                    ConversionError::UnsupportedTarget { format: target }
                }
                _ => ConversionError::CreatingOutput {
                    format: target,
                    source,
                },
            })?;
            let options = ConvertOptions {
                threads,
                cancel: cancel_flag,
            };
            convert(&*disk, writer, &options, &mut |_, _| {}).map_err(|source| {
                ConversionError::Converting {
                    format: target,
                    source,
                }
            })
        })
        .await?;
        let size = output.len().await?;
        Ok(Converted {
            file: output,
            size,
            stats,
        })
    }
}

/// Sets its flag when dropped: stops a conversion whose caller went away.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `raw` content declared as raw-like formats (iso, gpt content is raw to a reader).
fn raw_like(declared: Format, found: Format) -> bool {
    declared == Format::Raw && matches!(found, Format::Iso | Format::Gpt)
}

fn open_read(path: &Path) -> ConversionResult<std::fs::File> {
    std::fs::File::open(path).map_err(|source| ConversionError::ReadingWorkFile {
        path: path.to_path_buf(),
        source,
    })
}

/// Runs CPU- and disk-heavy work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> ConversionResult<T> + Send + 'static,
) -> ConversionResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ConversionError::ThreadGone(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use ims_diskfmt::write::MemorySink;

    fn qcow2_of(content: &[u8], virtual_size: u64) -> Vec<u8> {
        let sink = Arc::new(MemorySink::new());
        struct Shared(Arc<MemorySink>);
        impl ims_diskfmt::write::Sink for Shared {
            fn write_all_at(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
                self.0.write_all_at(offset, buf)
            }
            fn set_len(&self, len: u64) -> std::io::Result<()> {
                self.0.set_len(len)
            }
            fn sync(&self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let raw: SharedSource = Arc::new(content.to_vec());
        let disk = ims_diskfmt::disk::open(raw, Format::Raw, &OpenOptions::default()).unwrap();
        let writer = ims_diskfmt::write::create(
            Box::new(Shared(sink.clone())),
            Format::Qcow2,
            virtual_size,
            &CreateOptions::default(),
        )
        .unwrap();
        convert(&*disk, writer, &ConvertOptions::default(), &mut |_, _| {}).unwrap();
        sink.contents()
    }

    async fn file_with(service: &ConversionService, bytes: Vec<u8>) -> WorkFile {
        let stream = futures::stream::iter([Ok(Bytes::from(bytes))]).boxed();
        service.download("test", stream, u64::MAX).await.unwrap()
    }

    #[tokio::test]
    async fn converts_round_trip_and_removes_work_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(format!("{WORK_FILE_PREFIX}stale")), b"x").unwrap();
        std::fs::write(dir.path().join("keep-me"), b"x").unwrap();
        let service = ConversionService::new(dir.path(), 2);
        assert_eq!(service.sweep().unwrap(), 1);
        assert!(!dir.path().join(format!("{WORK_FILE_PREFIX}stale")).exists());
        assert!(dir.path().join("keep-me").exists());

        let mut content = vec![0u8; 3 << 20];
        content[..5].copy_from_slice(b"hello");
        content[(2 << 20) + 7] = 9;
        let source = file_with(&service, qcow2_of(&content, content.len() as u64)).await;
        let found = service.inspect(&source, Some(Format::Qcow2)).await.unwrap();
        assert_eq!(found.format, Format::Qcow2);
        assert_eq!(found.virtual_size, Some(content.len() as u64));
        for target in [
            Format::Vmdk,
            Format::Vhd,
            Format::Zvhd,
            Format::Zvhd2,
            Format::Raw,
        ] {
            let out = service
                .convert(&source, Format::Qcow2, target)
                .await
                .unwrap();
            let back: SharedSource = Arc::new(std::fs::File::open(out.file.path()).unwrap());
            let disk = ims_diskfmt::disk::open(back, target, &OpenOptions::default()).unwrap();
            assert!(disk.virtual_size() >= content.len() as u64, "{target}");
            let mut read = vec![0u8; content.len()];
            disk.read_at(0, &mut read).unwrap();
            assert!(read == content, "{target} round trip");
            assert_eq!(out.size, out.file.len().await.unwrap());
        }
        drop(source);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "only keep-me is left");
    }

    #[tokio::test]
    async fn refuses_mismatches_references_and_oversized_sources() {
        let dir = tempfile::tempdir().unwrap();
        let service = ConversionService::new(dir.path(), 1);
        let qcow2 = qcow2_of(&[1u8; 4096], 1 << 20);
        let plain = file_with(&service, qcow2.clone()).await;
        let err = service
            .inspect(&plain, Some(Format::Vmdk))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("not the declared vmdk"), "{err}");

        // A qcow2 header naming a backing file.
        let mut backed = qcow2;
        let name = b"/etc/passwd";
        let at = 0x200usize;
        backed[at..at + name.len()].copy_from_slice(name);
        backed[8..16].copy_from_slice(&(at as u64).to_be_bytes());
        backed[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        let file = file_with(&service, backed).await;
        let err = service.inspect(&file, None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("backing"), "{err}");
        drop((plain, file));

        let stream = futures::stream::iter([Ok(Bytes::from(vec![0u8; 100]))]).boxed();
        let err = service.download("b:o", stream, 99).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
