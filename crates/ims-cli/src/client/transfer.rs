//! Streaming image data up and down with progress bars and MD5 verification, in bounded memory.
//!
//! File IO and hashing run on a blocking thread connected to the HTTP body by a small channel,
//! so at most `CHANNEL_CHUNKS` chunks are in flight whatever the image size.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use md5::{Digest as _, Md5};
use serde_json::Value;
use tokio::sync::mpsc;

use super::api::ImageClient;
use super::usage;

/// Bytes read from disk per upload chunk.
const UPLOAD_CHUNK: usize = 1 << 20;
/// Chunks buffered between the network and the disk thread (bounds memory to a few MiB).
const CHANNEL_CHUNKS: usize = 4;

fn progress_bar(total: Option<u64>, verb: &str) -> ProgressBar {
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{msg} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} ({binary_bytes_per_sec}, ETA {eta})",
            )
            .expect("static progress template is valid")
            .progress_chars("=> "),
        ),
        None => ProgressBar::no_length().with_style(
            ProgressStyle::with_template(
                "{msg} [{elapsed_precise}] {spinner} {bytes} ({binary_bytes_per_sec})",
            )
            .expect("static progress template is valid"),
        ),
    };
    bar.set_message(verb.to_owned());
    bar
}

/// Fails early, as a usage error, if `path` cannot be read as a regular file.
pub fn check_readable(path: &Path) -> anyhow::Result<u64> {
    let metadata = std::fs::metadata(path)
        .map_err(|err| usage(format!("cannot read {}: {err}", path.display())))?;
    if !metadata.is_file() {
        return Err(usage(format!("{} is not a regular file", path.display())));
    }
    Ok(metadata.len())
}

/// Refuses to write binary data to a terminal, as glanceclient does.
pub fn check_download_target(file: Option<&Path>) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    if output_path(file).is_none() && std::io::stdout().is_terminal() {
        return Err(usage(
            "refusing to write image data to a terminal: give --file PATH or redirect stdout",
        ));
    }
    Ok(())
}

fn output_path(file: Option<&Path>) -> Option<&Path> {
    file.filter(|path| *path != Path::new("-"))
}

/// Streams `path` into `PUT /v2/images/{id}/file`; returns the MD5 (hex) of what was sent.
pub async fn upload(client: &ImageClient, id: &str, path: &Path) -> anyhow::Result<String> {
    let size = check_readable(path)?;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (sender, receiver) = mpsc::channel::<std::io::Result<Bytes>>(CHANNEL_CHUNKS);
    let reader = tokio::task::spawn_blocking(move || -> String {
        let mut hasher = Md5::new();
        loop {
            let mut buffer = vec![0u8; UPLOAD_CHUNK];
            let chunk = match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => {
                    buffer.truncate(read);
                    hasher.update(&buffer);
                    Ok(Bytes::from(buffer))
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => Err(err),
            };
            let failed = chunk.is_err();
            // A closed channel means the request ended early; its error is reported there.
            if sender.blocking_send(chunk).is_err() || failed {
                break;
            }
        }
        hex(&hasher.finalize())
    });
    let bar = progress_bar(Some(size), "Uploading");
    let counted = bar.clone();
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    })
    .inspect(move |chunk| {
        if let Ok(bytes) = chunk {
            counted.inc(bytes.len() as u64);
        }
    });
    let result = client
        .put_file(id, reqwest::Body::wrap_stream(stream), size)
        .await;
    bar.finish_and_clear();
    result.with_context(|| format!("uploading {}", path.display()))?;
    reader.await.context("the file reader stopped unexpectedly")
}

/// Compares the server's `checksum` after an upload with the MD5 of the bytes sent.
pub fn verify_uploaded_checksum(image: &Value, local_md5: &str) -> anyhow::Result<()> {
    match image.get("checksum").and_then(Value::as_str) {
        Some(remote) if !remote.eq_ignore_ascii_case(local_md5) => Err(anyhow::anyhow!(
            "checksum mismatch after upload: sent {local_md5}, server stored {remote}"
        )),
        _ => Ok(()),
    }
}

/// The MD5 (lower-case hex) a download must match: the `Content-MD5` header (Glance sends
/// hex; RFC 1864 base64 is accepted too), else the image's `checksum`.
pub fn expected_md5(content_md5: Option<&str>, image: &Value) -> Option<String> {
    let from_header = content_md5.and_then(|value| {
        let value = value.trim();
        if value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Some(value.to_ascii_lowercase());
        }
        base64::engine::general_purpose::STANDARD
            .decode(value)
            .ok()
            .filter(|digest| digest.len() == 16)
            .map(|digest| hex(&digest))
    });
    from_header.or_else(|| {
        image
            .get("checksum")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
    })
}

/// Streams the image data to `file` (atomically: temp file, fsync, rename) or to stdout,
/// verifying its MD5 on the way.
pub async fn download(
    client: &ImageClient,
    image: &Value,
    file: Option<&Path>,
) -> anyhow::Result<()> {
    let id = super::api::image_id(image)?;
    let response = client.get_file(id).await?;
    if response.status() == reqwest::StatusCode::NO_CONTENT {
        anyhow::bail!("image {id} has no data to download");
    }
    let content_md5 = response
        .headers()
        .get("content-md5")
        .and_then(|value| value.to_str().ok());
    let expected = expected_md5(content_md5, image);
    let length = response.content_length();
    let total = length.or_else(|| image.get("size").and_then(Value::as_u64));

    let sink = match output_path(file) {
        Some(path) => Sink::temp_beside(path)?,
        None => Sink::Stdout,
    };
    let (sender, mut receiver) = mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
    let writer = tokio::task::spawn_blocking(move || sink.write_all_from(&mut receiver));

    let bar = progress_bar(total, "Downloading");
    let mut body = response.bytes_stream();
    let mut received: u64 = 0;
    let mut network_error = None;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => {
                received += chunk.len() as u64;
                bar.inc(chunk.len() as u64);
                if sender.send(chunk).await.is_err() {
                    break;
                }
            }
            Err(err) => {
                network_error = Some(err);
                break;
            }
        }
    }
    drop(sender);
    bar.finish_and_clear();
    let written = writer
        .await
        .context("the file writer stopped unexpectedly")?;
    if let Some(err) = network_error {
        return Err(anyhow::Error::new(err).context(format!("downloading image {id}")));
    }
    let (sink, actual_md5) = written?;
    if let Some(length) = length
        && length != received
    {
        anyhow::bail!("download of image {id} was cut short: got {received} of {length} bytes");
    }
    if let Some(expected) = expected
        && expected != actual_md5
    {
        anyhow::bail!("checksum mismatch for image {id}: expected {expected}, got {actual_md5}");
    }
    sink.commit()
}

/// Where downloaded bytes go.
enum Sink {
    Stdout,
    File {
        temp: tempfile::NamedTempFile,
        destination: PathBuf,
    },
}

impl Sink {
    fn temp_beside(destination: &Path) -> anyhow::Result<Sink> {
        let directory = match destination.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let temp = tempfile::Builder::new()
            .prefix(".ims-download-")
            .tempfile_in(directory)
            .map_err(|err| usage(format!("cannot write into {}: {err}", directory.display())))?;
        Ok(Sink::File {
            temp,
            destination: destination.to_owned(),
        })
    }

    /// Blocking: drains `receiver` into the sink; returns the sink and the MD5 (hex).
    fn write_all_from(
        mut self,
        receiver: &mut mpsc::Receiver<Bytes>,
    ) -> anyhow::Result<(Sink, String)> {
        let mut hasher = Md5::new();
        {
            let stdout = std::io::stdout();
            let mut out: Box<dyn std::io::Write> = match &mut self {
                Sink::Stdout => Box::new(stdout.lock()),
                Sink::File { temp, .. } => Box::new(std::io::BufWriter::new(temp.as_file_mut())),
            };
            while let Some(chunk) = receiver.blocking_recv() {
                hasher.update(&chunk);
                out.write_all(&chunk).context("writing image data")?;
            }
            out.flush().context("writing image data")?;
        }
        if let Sink::File { temp, .. } = &self {
            temp.as_file()
                .sync_all()
                .context("syncing the downloaded file")?;
        }
        Ok((self, hex(&hasher.finalize())))
    }

    /// Moves a finished download into place.
    fn commit(self) -> anyhow::Result<()> {
        let Sink::File { temp, destination } = self else {
            return Ok(());
        };
        set_default_permissions(temp.as_file())?;
        temp.persist(&destination)
            .with_context(|| format!("moving the download into {}", destination.display()))?;
        Ok(())
    }
}

/// Temp files are created 0600; a downloaded image should look like any other new file.
#[cfg(unix)]
fn set_default_permissions(file: &std::fs::File) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .context("setting permissions on the downloaded file")
}

#[cfg(not(unix))]
fn set_default_permissions(_file: &std::fs::File) -> anyhow::Result<()> {
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn md5_expectation_prefers_the_header() {
        let image = json!({"checksum": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"});
        assert_eq!(
            expected_md5(Some("d41d8cd98f00b204e9800998ecf8427e"), &image).as_deref(),
            Some("d41d8cd98f00b204e9800998ecf8427e")
        );
        assert_eq!(
            expected_md5(Some("1B2M2Y8AsgTpgAmY7PhCfg=="), &image).as_deref(),
            Some("d41d8cd98f00b204e9800998ecf8427e")
        );
        assert_eq!(
            expected_md5(None, &image).as_deref(),
            Some("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
        );
        assert_eq!(expected_md5(Some("garbage"), &json!({})), None);
    }

    #[test]
    fn upload_checksum_mismatch_is_reported() {
        let image = json!({"checksum": "d41d8cd98f00b204e9800998ecf8427e"});
        assert!(verify_uploaded_checksum(&image, "d41d8cd98f00b204e9800998ecf8427e").is_ok());
        assert!(verify_uploaded_checksum(&image, "00000000000000000000000000000000").is_err());
        assert!(verify_uploaded_checksum(&json!({"checksum": null}), "x").is_ok());
    }

    #[test]
    fn dash_means_stdout() {
        assert_eq!(output_path(Some(Path::new("-"))), None);
        assert_eq!(output_path(None), None);
        assert_eq!(
            output_path(Some(Path::new("a.img"))),
            Some(Path::new("a.img"))
        );
    }

    #[test]
    fn sink_writes_hashes_and_renames() {
        let dir = tempfile::tempdir().unwrap();
        let destination = dir.path().join("out.img");
        let sink = Sink::temp_beside(&destination).unwrap();
        let (sender, mut receiver) = mpsc::channel(4);
        sender.try_send(Bytes::from_static(b"hello ")).unwrap();
        sender.try_send(Bytes::from_static(b"world")).unwrap();
        drop(sender);
        let (sink, md5) = sink.write_all_from(&mut receiver).unwrap();
        assert_eq!(md5, "5eb63bbbe01eeed093cb22bb8f5acdc3");
        assert!(!destination.exists(), "nothing visible before commit");
        sink.commit().unwrap();
        assert_eq!(std::fs::read(&destination).unwrap(), b"hello world");
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "the temp file was renamed, not copied");
    }

    #[test]
    fn dropped_sink_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let destination = dir.path().join("out.img");
        drop(Sink::temp_beside(&destination).unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
