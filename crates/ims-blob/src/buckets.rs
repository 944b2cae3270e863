//! Objects in users' own S3 buckets, for importing images from and exporting them to a bucket
//! (the IMS API's `image_url = "bucket:key"`). One configured service ([`S3Connection`]); any
//! bucket on it by name. Reads stream with optional ranges; writes stream as multipart uploads
//! that become visible only when complete and are aborted on failure.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use object_store::aws::AmazonS3;
use object_store::multipart::MultipartStore;
use object_store::path::Path;

use crate::s3::{MultipartWriter, object_size, open_object};
use crate::s3conf::S3Connection;
use crate::{BlobError, BlobResult, BlobStream, BlobWriter};

/// S3's limits on bucket names.
const MIN_BUCKET_LEN: usize = 3;
const MAX_BUCKET_LEN: usize = 63;
/// S3's limit on object keys, in bytes of UTF-8.
const MAX_OBJECT_KEY_LEN: usize = 1024;
/// Buckets whose clients are kept; past this the cache is cleared (clients are cheap to
/// rebuild, and a caller naming endless buckets must not grow memory without bound).
const MAX_CACHED_CLIENTS: usize = 256;

/// Checks a bucket name against S3's rules (3–63 of `a-z0-9.-`, alphanumeric at both ends).
pub fn validate_bucket(bucket: &str) -> BlobResult<()> {
    let bytes = bucket.as_bytes();
    let ok = (MIN_BUCKET_LEN..=MAX_BUCKET_LEN).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && !bucket.contains("..");
    if ok {
        Ok(())
    } else {
        Err(BlobError::InvalidBucket(bucket.to_string()))
    }
}

/// Parses an object key: 1–1024 bytes, `/`-separated segments that are non-empty, not `.` or
/// `..`, without control characters (keys S3 allows but `object_store` cannot address).
fn object_path(key: &str) -> BlobResult<Path> {
    let invalid = || BlobError::InvalidObjectKey(key.to_string());
    if key.is_empty() || key.len() > MAX_OBJECT_KEY_LEN || key.chars().any(char::is_control) {
        return Err(invalid());
    }
    // `Path::parse` quietly drops a leading or trailing '/'; such a key names another object.
    match Path::parse(key) {
        Ok(path) if path.as_ref() == key => Ok(path),
        _ => Err(invalid()),
    }
}

/// Access to the buckets of one S3 service.
#[derive(Debug)]
pub struct Buckets {
    connection: S3Connection,
    clients: Mutex<HashMap<String, Arc<AmazonS3>>>,
}

impl Buckets {
    /// Checks the settings (reading the secret file) without contacting the service.
    pub fn new(connection: S3Connection) -> BlobResult<Buckets> {
        connection.client("probe-bucket")?;
        Ok(Buckets {
            connection,
            clients: Mutex::new(HashMap::new()),
        })
    }

    fn client(&self, bucket: &str) -> BlobResult<Arc<AmazonS3>> {
        validate_bucket(bucket)?;
        let mut clients = self.clients.lock().expect("bucket client cache poisoned");
        if let Some(client) = clients.get(bucket) {
            return Ok(client.clone());
        }
        if clients.len() >= MAX_CACHED_CLIENTS {
            clients.clear();
        }
        let client = self.connection.client(bucket)?;
        clients.insert(bucket.to_string(), client.clone());
        Ok(client)
    }

    /// The object's size, or `None` if it does not exist.
    pub async fn object_size(&self, bucket: &str, key: &str) -> BlobResult<Option<u64>> {
        let path = object_path(key)?;
        object_size(&*self.client(bucket)?, &path).await
    }

    /// Streams the object, or its byte `range` (end exclusive; must lie inside the object).
    /// A missing object is [`BlobError::NotFound`]; a range past its end is
    /// [`BlobError::RangeNotSatisfiable`].
    pub async fn open_object(
        &self,
        bucket: &str,
        key: &str,
        range: Option<Range<u64>>,
    ) -> BlobResult<BlobStream> {
        let path = object_path(key)?;
        let client = self.client(bucket)?;
        let (start, end) = range.as_ref().map_or((0, 0), |r| (r.start, r.end));
        open_object(
            &client,
            &path,
            range,
            || BlobError::ObjectNotFound {
                bucket: bucket.to_string(),
                key: key.to_string(),
            },
            |size| BlobError::RangeNotSatisfiable {
                key: format!("{bucket}:{key}"),
                start,
                end,
                size,
            },
        )
        .await
    }

    /// Starts writing an object; it appears (replacing any object of that key) only when the
    /// writer commits, and a writer dropped without commit aborts the upload.
    pub async fn create_object(&self, bucket: &str, key: &str) -> BlobResult<Box<dyn BlobWriter>> {
        Ok(self.start_upload(bucket, key).await?.1)
    }

    /// Starts writing an object like [`Buckets::create_object`], and also returns the id of its
    /// multipart upload, known before any data is sent. A process killed mid-upload runs no
    /// `Drop`, and S3 keeps (and bills for) an upload nobody completes or aborts; a caller that
    /// records the id can abort what it left with [`Buckets::abort_upload`] when it runs again.
    pub async fn start_upload(
        &self,
        bucket: &str,
        key: &str,
    ) -> BlobResult<(String, Box<dyn BlobWriter>)> {
        let path = object_path(key)?;
        let client = self.client(bucket)?;
        let writer = MultipartWriter::start(client, path, None).await?;
        Ok((writer.upload_id().to_string(), Box::new(writer)))
    }

    /// Aborts the multipart upload `upload_id` of `key`, discarding its parts; the object is
    /// untouched. An upload that no longer exists (completed, aborted or expired) is done.
    pub async fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) -> BlobResult<()> {
        let path = object_path(key)?;
        match self
            .client(bucket)?
            .abort_multipart(&path, &upload_id.to_string())
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(cause) => Err(BlobError::S3 {
                op: "aborting upload of",
                key: format!("{bucket}:{key}"),
                cause,
            }),
        }
    }

    /// Writes the whole `stream` as the object; returns its size. On any error (from the stream
    /// or from S3) the upload is aborted and no object appears.
    pub async fn put_object_stream(
        &self,
        bucket: &str,
        key: &str,
        stream: BlobStream,
    ) -> BlobResult<u64> {
        write_all(self.create_object(bucket, key).await?, stream).await
    }
}

/// Writes the whole `stream` through `writer` and commits; returns the size. On an error the
/// writer is dropped, which aborts its upload.
pub async fn write_all(mut writer: Box<dyn BlobWriter>, mut stream: BlobStream) -> BlobResult<u64> {
    while let Some(chunk) = stream.next().await {
        writer.write(chunk?).await?;
    }
    writer.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures::TryStreamExt;
    use object_store::PutPayload;

    #[test]
    fn bucket_and_key_validation() {
        for good in ["abc", "my-bucket.images", "a1b"] {
            validate_bucket(good).unwrap();
        }
        for bad in ["ab", "-abc", "abc-", "ABC", "a_b", "a..b", &"a".repeat(64)] {
            assert!(validate_bucket(bad).is_err(), "{bad:?} must be refused");
        }
        object_path("images/cirros.qcow2").unwrap();
        for bad in [
            "",
            "/abs",
            "dir/",
            "a//b",
            "a/../b",
            "a\nb",
            &"k".repeat(1025),
        ] {
            assert!(object_path(bad).is_err(), "{bad:?} must be refused");
        }
    }

    /// An upload whose writer never finished (a killed process runs no `Drop`) is aborted by
    /// the id `start_upload` gave; aborting it again, or aborting a completed upload, is done.
    #[tokio::test]
    async fn recorded_uploads_abort_idempotently() {
        let Some((connection, bucket)) = crate::conformance::s3_test_server() else {
            return;
        };
        let buckets = Buckets::new(connection).unwrap();
        let key = format!("export/{}/left-behind.qcow2", uuid::Uuid::new_v4());
        let path = object_path(&key).unwrap();
        let client = buckets.client(&bucket).unwrap();
        let (upload_id, mut writer) = buckets.start_upload(&bucket, &key).await.unwrap();
        writer.write(Bytes::from_static(b"buffered")).await.unwrap();
        let part = || PutPayload::from(vec![5u8; 1000]);
        client.put_part(&path, &upload_id, 0, part()).await.unwrap();
        std::mem::forget(writer);

        buckets
            .abort_upload(&bucket, &key, &upload_id)
            .await
            .unwrap();
        assert!(
            client.put_part(&path, &upload_id, 1, part()).await.is_err(),
            "the aborted upload takes no more parts"
        );
        buckets
            .abort_upload(&bucket, &key, &upload_id)
            .await
            .unwrap();
        assert_eq!(buckets.object_size(&bucket, &key).await.unwrap(), None);

        let (upload_id, mut writer) = buckets.start_upload(&bucket, &key).await.unwrap();
        writer.write(Bytes::from_static(b"whole")).await.unwrap();
        assert_eq!(writer.commit().await.unwrap(), 5);
        buckets
            .abort_upload(&bucket, &key, &upload_id)
            .await
            .unwrap();
        assert_eq!(
            buckets.object_size(&bucket, &key).await.unwrap(),
            Some(5),
            "aborting a completed upload leaves its object"
        );
        assert!(matches!(
            buckets.abort_upload(&bucket, "a//b", &upload_id).await,
            Err(BlobError::InvalidObjectKey(_))
        ));
    }

    #[tokio::test]
    async fn put_stream_open_ranges_and_failures() {
        let Some((connection, bucket)) = crate::conformance::s3_test_server() else {
            return;
        };
        let buckets = Buckets::new(connection).unwrap();
        let key = format!("export/{}/disk.qcow2", uuid::Uuid::new_v4());
        let data: Vec<u8> = (0..(crate::s3::BASE_PART_SIZE + 100_000))
            .map(|i| (i % 241) as u8)
            .collect();
        let chunks: Vec<BlobResult<Bytes>> = data
            .chunks(1 << 20)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let size = buckets
            .put_object_stream(&bucket, &key, futures::stream::iter(chunks).boxed())
            .await
            .unwrap();
        assert_eq!(size, data.len() as u64);
        assert_eq!(
            buckets.object_size(&bucket, &key).await.unwrap(),
            Some(size)
        );
        let read: Vec<Bytes> = buckets
            .open_object(&bucket, &key, Some(5..105))
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(read.concat(), &data[5..105]);
        let read: Vec<Bytes> = buckets
            .open_object(&bucket, &key, None)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert!(read.concat() == data);
        assert!(matches!(
            buckets.open_object(&bucket, &key, Some(0..size + 1)).await,
            Err(BlobError::RangeNotSatisfiable { .. })
        ));

        // A stream that fails half-way leaves no object.
        let failed_key = format!("{key}.failed");
        let failing = futures::stream::iter(vec![
            Ok(Bytes::from(vec![1u8; 1000])),
            Err(BlobError::Config("source went away".into())),
        ])
        .boxed();
        assert!(
            buckets
                .put_object_stream(&bucket, &failed_key, failing)
                .await
                .is_err()
        );
        assert_eq!(
            buckets.object_size(&bucket, &failed_key).await.unwrap(),
            None
        );

        let missing = buckets.open_object(&bucket, "no/such/object", None).await;
        assert!(matches!(missing, Err(BlobError::ObjectNotFound { .. })));
        assert_eq!(
            missing.err().unwrap().kind(),
            ims_domain::ErrorKind::NotFound
        );
        // S3 answers a missing bucket with 404 too: the caller sees "not found", not a 500.
        let no_bucket = buckets
            .open_object("no-such-bucket-ims-test", "x", None)
            .await
            .err()
            .unwrap();
        assert_eq!(
            no_bucket.kind(),
            ims_domain::ErrorKind::NotFound,
            "{no_bucket}"
        );
        assert!(matches!(
            buckets.object_size("Bad_Bucket", "x").await,
            Err(BlobError::InvalidBucket(_))
        ));
    }
}
