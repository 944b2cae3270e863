//! md5 (Glance's `checksum`) and sha512 (`os_hash_value`) computed in one pass, each on its own
//! thread, so hashing runs at the speed of the slower of the two rather than their sum.

use std::thread::JoinHandle;

use tokio::sync::mpsc::{Sender, channel};

use bytes::Bytes;
use md5::{Digest, Md5};
use sha2::Sha512;

/// Chunks queued per hashing thread before the producer waits; bounds memory.
const QUEUE_DEPTH: usize = 4;

/// The hashes of a complete stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHashes {
    /// md5, lowercase hex.
    pub md5: String,
    /// sha512, lowercase hex.
    pub sha512: String,
}

struct Worker {
    tx: Sender<Bytes>,
    handle: JoinHandle<String>,
}

impl Worker {
    fn spawn<D: Digest + Send + 'static>(name: &str) -> Worker {
        let (tx, mut rx) = channel::<Bytes>(QUEUE_DEPTH);
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let mut digest = D::new();
                while let Some(chunk) = rx.blocking_recv() {
                    digest.update(&chunk);
                }
                hex::encode(digest.finalize())
            })
            .expect("spawning a hashing thread");
        Worker { tx, handle }
    }
}

/// Feeds every chunk to an md5 thread and a sha512 thread.
pub struct StreamHasher {
    md5: Worker,
    sha512: Worker,
}

impl Default for StreamHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamHasher {
    pub fn new() -> StreamHasher {
        StreamHasher {
            md5: Worker::spawn::<Md5>("ims-md5"),
            sha512: Worker::spawn::<Sha512>("ims-sha512"),
        }
    }

    /// Queues a chunk for both hashes; waits when the hashers fall behind.
    pub async fn update(&self, chunk: Bytes) {
        // A send fails only if a hashing thread died, which `finish` reports.
        let _ = self.md5.tx.send(chunk.clone()).await;
        let _ = self.sha512.tx.send(chunk).await;
    }

    /// Waits for both threads and returns the hashes.
    pub async fn finish(self) -> StreamHashes {
        drop(self.md5.tx);
        drop(self.sha512.tx);
        let (md5, sha512) = (self.md5.handle, self.sha512.handle);
        tokio::task::spawn_blocking(move || StreamHashes {
            md5: md5.join().expect("md5 thread panicked"),
            sha512: sha512.join().expect("sha512 thread panicked"),
        })
        .await
        .expect("joining hashing threads")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn known_vectors() {
        let h = StreamHasher::new();
        h.update(Bytes::from_static(b"ab")).await;
        h.update(Bytes::from_static(b"c")).await;
        let out = h.finish().await;
        assert_eq!(out.md5, "900150983cd24fb0d6963f7d28e17f72");
        assert!(out.sha512.starts_with("ddaf35a193617aba"));
        assert_eq!(out.sha512.len(), 128);
    }

    #[tokio::test]
    async fn empty_stream() {
        let out = StreamHasher::new().finish().await;
        assert_eq!(out.md5, "d41d8cd98f00b204e9800998ecf8427e");
    }
}
