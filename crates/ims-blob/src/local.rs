//! A [`BlobStore`] in a local directory: `blobs/<key>` for committed data, `tmp/` for writes in
//! progress. Commit is write → fsync → rename → fsync directory, so a crash leaves either the
//! whole blob or only a temp file, which [`LocalBlobStore::open`] sweeps.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use crate::{BlobError, BlobInfo, BlobKey, BlobResult, BlobStore, BlobStream, BlobWriter};

/// Bytes per read when streaming a blob out: large enough to amortise syscalls and channel
/// hops, small enough that a handful in flight stay far below any memory concern.
const READ_CHUNK: usize = 1 << 20;
/// Chunks in flight between the file thread and the async side, in either direction.
const CHANNEL_DEPTH: usize = 4;
/// Written bytes after which the kernel is asked to start writing them back, so the fsync at
/// commit finds little left to flush instead of the whole image.
const WRITEBACK_STEP: u64 = 32 << 20;

#[derive(Debug, Clone)]
pub struct LocalBlobStore {
    root: PathBuf,
}

fn io_err(op: &'static str, key: impl ToString) -> impl FnOnce(std::io::Error) -> BlobError {
    move |source| BlobError::Io {
        op,
        key: key.to_string(),
        source,
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking blob task panicked")
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl LocalBlobStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> BlobResult<LocalBlobStore> {
        let root = root.into();
        let store = LocalBlobStore { root };
        fs::create_dir_all(store.blobs_dir())
            .map_err(io_err("creating store directory", store.root.display()))?;
        fs::create_dir_all(store.tmp_dir())
            .map_err(io_err("creating temp directory", store.root.display()))?;
        Ok(store)
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn path(&self, key: &BlobKey) -> PathBuf {
        self.blobs_dir().join(key.as_str())
    }
}

enum WriteMsg {
    Data(Bytes),
    Commit(oneshot::Sender<BlobResult<u64>>),
}

struct LocalWriter {
    key: BlobKey,
    tx: mpsc::Sender<WriteMsg>,
}

/// Runs on a blocking thread: appends chunks, and on commit makes the file durable and visible.
/// If the channel closes without a commit, the temp file is removed.
fn write_loop(mut rx: mpsc::Receiver<WriteMsg>, tmp: PathBuf, dest: PathBuf, key: BlobKey) {
    let result = (|| -> BlobResult<Option<(oneshot::Sender<BlobResult<u64>>, u64)>> {
        let mut file = File::create_new(&tmp).map_err(io_err("creating temp file for", &key))?;
        let mut size = 0u64;
        let mut flushed = 0u64;
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                WriteMsg::Data(chunk) => {
                    file.write_all(&chunk).map_err(io_err("writing", &key))?;
                    size += chunk.len() as u64;
                    if size - flushed >= WRITEBACK_STEP {
                        start_writeback(&file, flushed, size - flushed);
                        flushed = size;
                    }
                }
                WriteMsg::Commit(done) => {
                    file.sync_all().map_err(io_err("syncing", &key))?;
                    drop(file);
                    let parent = dest.parent().expect("blob path has a parent");
                    fs::create_dir_all(parent).map_err(io_err("creating directory for", &key))?;
                    fs::rename(&tmp, &dest).map_err(io_err("publishing", &key))?;
                    fsync_dir(parent).map_err(io_err("syncing directory of", &key))?;
                    return Ok(Some((done, size)));
                }
            }
        }
        Ok(None)
    })();
    match result {
        Ok(Some((done, size))) => {
            let _ = done.send(Ok(size));
        }
        Ok(None) => {
            let _ = fs::remove_file(&tmp);
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            // Report on the commit call if one comes; otherwise the next write sees a closed channel.
            while let Some(msg) = rx.blocking_recv() {
                if let WriteMsg::Commit(done) = msg {
                    let _ = done.send(Err(e));
                    return;
                }
            }
        }
    }
}

/// Asks the kernel to begin writing `len` bytes at `offset` back to disk without waiting.
/// Purely a performance hint: failures are ignored and the fsync at commit is what counts.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for the duration of the call; the call only reads it.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[async_trait]
impl BlobWriter for LocalWriter {
    async fn write(&mut self, chunk: Bytes) -> BlobResult<()> {
        self.tx
            .send(WriteMsg::Data(chunk))
            .await
            .map_err(|_| BlobError::WriterGone(self.key.clone()))
    }

    async fn commit(self: Box<Self>) -> BlobResult<u64> {
        let (done, result) = oneshot::channel();
        self.tx
            .send(WriteMsg::Commit(done))
            .await
            .map_err(|_| BlobError::WriterGone(self.key.clone()))?;
        result
            .await
            .map_err(|_| BlobError::WriterGone(self.key.clone()))?
    }
}

fn collect_blobs(dir: &Path, prefix: &str, out: &mut Vec<BlobInfo>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let key = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let meta = entry.metadata()?;
        if meta.is_dir() {
            collect_blobs(&entry.path(), &key, out)?;
        } else if let Ok(key) = BlobKey::parse(&key) {
            let modified_unix = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            out.push(BlobInfo {
                key,
                size: meta.len(),
                modified_unix,
            });
        }
    }
    Ok(())
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn create(&self, key: &BlobKey) -> BlobResult<Box<dyn BlobWriter>> {
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let tmp = self.tmp_dir().join(uuid::Uuid::new_v4().to_string());
        let dest = self.path(key);
        let thread_key = key.clone();
        std::thread::Builder::new()
            .name("ims-blob-write".into())
            .spawn(move || write_loop(rx, tmp, dest, thread_key))
            .map_err(io_err("starting writer for", key))?;
        Ok(Box::new(LocalWriter {
            key: key.clone(),
            tx,
        }))
    }

    async fn open(&self, key: &BlobKey, range: Option<Range<u64>>) -> BlobResult<BlobStream> {
        let path = self.path(key);
        let key = key.clone();
        let (file, start, end) = blocking(move || -> BlobResult<(File, u64, u64)> {
            let mut file = match File::open(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(BlobError::NotFound(key));
                }
                other => other.map_err(io_err("opening", &key))?,
            };
            let size = file
                .metadata()
                .map_err(io_err("reading size of", &key))?
                .len();
            let Range { start, end } = range.unwrap_or(0..size);
            if start > end || end > size {
                return Err(BlobError::RangeNotSatisfiable {
                    key: key.to_string(),
                    start,
                    end,
                    size,
                });
            }
            file.seek(SeekFrom::Start(start))
                .map_err(io_err("seeking in", &key))?;
            Ok((file, start, end))
        })
        .await?;
        let (tx, rx) = mpsc::channel::<BlobResult<Bytes>>(CHANNEL_DEPTH);
        tokio::task::spawn_blocking(move || {
            let mut file = file;
            let mut remaining = end - start;
            while remaining > 0 {
                let want = remaining.min(READ_CHUNK as u64) as usize;
                let mut buf = BytesMut::zeroed(want);
                let read = match file.read_exact(&mut buf) {
                    Ok(()) => Ok(buf.freeze()),
                    Err(source) => Err(BlobError::Io {
                        op: "reading",
                        key: "blob".into(),
                        source,
                    }),
                };
                let failed = read.is_err();
                if tx.blocking_send(read).is_err() || failed {
                    return;
                }
                remaining -= want as u64;
            }
        });
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })))
    }

    async fn size(&self, key: &BlobKey) -> BlobResult<Option<u64>> {
        let path = self.path(key);
        let key = key.clone();
        blocking(move || match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("reading size of", &key)(e)),
        })
        .await
    }

    async fn delete(&self, key: &BlobKey) -> BlobResult<()> {
        let path = self.path(key);
        let key = key.clone();
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => {
                // Tidy the now-empty per-image directory; another blob may still live there.
                if let Some(parent) = path.parent() {
                    let _ = fs::remove_dir(parent);
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("deleting", &key)(e)),
        })
        .await
    }

    async fn sweep_incomplete(&self, older_than: Duration) -> BlobResult<usize> {
        let dir = self.tmp_dir();
        blocking(move || {
            let mut removed = 0;
            let entries = fs::read_dir(&dir).map_err(io_err("listing", dir.display()))?;
            for entry in entries.flatten() {
                let age = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .map(|t| SystemTime::now().duration_since(t).unwrap_or_default());
                if age.is_ok_and(|age| age >= older_than) && fs::remove_file(entry.path()).is_ok() {
                    tracing::info!(path = %entry.path().display(), "removed abandoned temp blob");
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
    }

    async fn list(&self) -> BlobResult<Vec<BlobInfo>> {
        let dir = self.blobs_dir();
        blocking(move || {
            let mut out = Vec::new();
            collect_blobs(&dir, "", &mut out).map_err(io_err("listing", dir.display()))?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(dir.path()).unwrap();
        crate::conformance::run_all(&store).await;
    }

    #[tokio::test]
    async fn sweep_removes_only_old_abandoned_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(dir.path()).unwrap();
        fs::write(dir.path().join("tmp/dead-writer"), b"partial").unwrap();
        assert_eq!(
            store
                .sweep_incomplete(Duration::from_secs(3600))
                .await
                .unwrap(),
            0,
            "young temp files stay"
        );
        assert_eq!(store.sweep_incomplete(Duration::ZERO).await.unwrap(), 1);
        assert!(
            fs::read_dir(dir.path().join("tmp"))
                .unwrap()
                .next()
                .is_none()
        );
    }

    #[tokio::test]
    async fn dropped_writer_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(dir.path()).unwrap();
        let key = BlobKey::parse("images/a/b").unwrap();
        let mut w = store.create(&key).await.unwrap();
        w.write(Bytes::from_static(b"partial")).await.unwrap();
        drop(w);
        // The writer thread notices the closed channel and removes its temp file.
        for _ in 0..100 {
            if fs::read_dir(dir.path().join("tmp"))
                .unwrap()
                .next()
                .is_none()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            fs::read_dir(dir.path().join("tmp"))
                .unwrap()
                .next()
                .is_none()
        );
        assert_eq!(store.size(&key).await.unwrap(), None);
    }
}
