//! The IMS jobs that read from and write to users' buckets: importing an object into an image
//! (`create_image` / `import_image_quick` / `create_data_image` with `image_url`,
//! `register_image`) and exporting an image to an object (`export_image`), with the seed's
//! limits (table 5-1 for imports, table 5-5 for exports).
//!
//! Import: the object is copied into a work file, its format detected by content and checked
//! against the declared one (the object name's extension), references refused, the size limits
//! enforced; then the image takes the detected `disk_format` and the data goes through the same
//! ingest path as an upload (hashes, inspection, guest inspection, publication). Export: the
//! image's data is copied into a work file, converted with the format engine, and streamed to
//! the bucket as a multipart upload that appears only when complete. Both are idempotent: a
//! resumed job starts over, and a published image or a re-written object is the same result.
//!
//! An export records its multipart upload (`bucket`, `object`, `upload_id`) in the job's state
//! before it sends a part, and removes the record once the upload is completed or aborted. A
//! process killed mid-upload aborts nothing, so a resumed run first aborts the upload the state
//! names: a crash never leaves an incomplete upload (invisible, but billed) in the user's
//! bucket.

use futures::StreamExt;
use ims_blob::buckets::Buckets;
use ims_blob::{BlobError, BlobKey, BlobStream};
use ims_diskfmt::Format;
use ims_domain::{Caller, ErrorKind, Image, ImageStatus};
use ims_jobs::runner::JobContext;
use serde_json::{Map, Value, json};

use crate::cloudimages::CloudImageService;
use crate::error::{ServiceError, ServiceResult};

/// Seed table 5-1: an image file imported normally is at most 128 GB.
pub const MAX_IMPORT_BYTES: u64 = 128 << 30;
/// Seed table 5-1: a quick import (raw or ZVHD2) is at most 1 TB.
pub const MAX_QUICK_IMPORT_BYTES: u64 = 1 << 40;
/// Seed table 5-5: exported images are at most 1 TB…
pub const MAX_EXPORT_BYTES: u64 = 1 << 40;
/// …and those above 128 GB only by quick export.
pub const MAX_CONVERTED_EXPORT_BYTES: u64 = 128 << 30;
/// Formats a quick import accepts (seed: RAW or ZVHD2).
pub const QUICK_IMPORT_FORMATS: [Format; 2] = [Format::Raw, Format::Zvhd2];
/// Formats `export_image` writes (seed table 5-5).
pub const EXPORT_FORMATS: [Format; 5] = [
    Format::Vmdk,
    Format::Vhd,
    Format::Qcow2,
    Format::Zvhd,
    Format::Zvhd2,
];
/// Public-image platforms whose private copies may not be exported (table 5-5).
const UNEXPORTABLE_PLATFORMS: [&str; 4] = ["Windows", "SUSE", "RedHat", "OracleLinux"];
const GIB: u64 = 1 << 30;
/// The key of an export's job state that names the multipart upload it has in progress.
const UPLOAD_STATE_KEY: &str = "upload";

/// A `bucket:object` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketObject {
    pub bucket: String,
    pub object: String,
}

impl BucketObject {
    /// Parses IMS's `"bucket:object"` (`image_url`, `bucket_url`).
    pub fn parse(url: &str) -> ServiceResult<BucketObject> {
        match url.split_once(':') {
            Some((b, o)) if !b.is_empty() && !o.is_empty() => Ok(BucketObject {
                bucket: b.to_string(),
                object: o.to_string(),
            }),
            _ => Err(ServiceError::invalid(format!(
                "'{url}' is not of the form bucket:object."
            ))),
        }
    }

    /// The format the object's name declares by its extension, if it names one.
    pub fn declared_format(&self) -> Option<Format> {
        let (_, extension) = self.object.rsplit_once('.')?;
        match extension.to_ascii_lowercase().as_str() {
            "vpc" => None,
            "img" => Some(Format::Raw),
            other => Format::parse(other),
        }
    }

    fn url(&self) -> String {
        format!("{}:{}", self.bucket, self.object)
    }
}

/// What an import job was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportParams {
    pub source: BucketObject,
    /// `import_image_quick`: raw/ZVHD2 up to 1 TB.
    pub quick: bool,
    /// A data-disk image: its disk must fit `min_disk`.
    pub data_disk: bool,
    /// The job created the image (it is deleted if the import fails); `register_image` fills an
    /// image the user created (it goes back to `queued`).
    pub owns_image: bool,
}

impl ImportParams {
    pub fn to_json(&self) -> Value {
        json!({
            "bucket": self.source.bucket,
            "object": self.source.object,
            "quick": self.quick,
            "data_disk": self.data_disk,
            "owns_image": self.owns_image,
        })
    }

    fn from_json(v: &Value) -> ServiceResult<ImportParams> {
        let text = |k: &str| {
            v[k].as_str()
                .map(str::to_owned)
                .ok_or_else(|| ServiceError::invalid(format!("import job has no {k}")))
        };
        Ok(ImportParams {
            source: BucketObject {
                bucket: text("bucket")?,
                object: text("object")?,
            },
            quick: v["quick"].as_bool().unwrap_or(false),
            data_disk: v["data_disk"].as_bool().unwrap_or(false),
            owns_image: v["owns_image"].as_bool().unwrap_or(true),
        })
    }
}

/// What an export job was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportParams {
    pub image_id: uuid::Uuid,
    pub target: BucketObject,
    /// The output format; `None` is a quick export (the stored data as it is).
    pub format: Option<Format>,
}

impl ExportParams {
    pub fn to_json(&self) -> Value {
        json!({
            "image_id": self.image_id.to_string(),
            "bucket": self.target.bucket,
            "object": self.target.object,
            "file_format": self.format.map(Format::as_str),
        })
    }

    fn from_json(v: &Value) -> ServiceResult<ExportParams> {
        let text = |k: &str| {
            v[k].as_str()
                .map(str::to_owned)
                .ok_or_else(|| ServiceError::invalid(format!("export job has no {k}")))
        };
        let image_id = uuid::Uuid::parse_str(&text("image_id")?)
            .map_err(|_| ServiceError::invalid("export job names no image"))?;
        let format = match v["file_format"].as_str() {
            Some(f) => Some(
                Format::parse(f)
                    .ok_or_else(|| ServiceError::invalid(format!("unknown format {f}")))?,
            ),
            None => None,
        };
        Ok(ExportParams {
            image_id,
            target: BucketObject {
                bucket: text("bucket")?,
                object: text("object")?,
            },
            format,
        })
    }
}

/// Parses an `export_image` `file_format` (seed table 5-5: vmdk, vhd, qcow2, zvhd, zvhd2).
pub fn export_format(name: &str) -> ServiceResult<Format> {
    Format::parse(&name.to_ascii_lowercase())
        .filter(|f| EXPORT_FORMATS.contains(f))
        .ok_or_else(|| ServiceError::invalid(format!("The file format {name} cannot be exported.")))
}

/// Seed table 5-5: which images may be exported, and how. `quick` is a quick export.
pub fn check_exportable(image: &Image, quick: bool) -> ServiceResult<()> {
    let refuse = |why: &str| Err(ServiceError::invalid(why.to_string()));
    let property = |k: &str| image.properties.get(k).map(String::as_str);
    if image.status != ImageStatus::Active || image.data.is_none() {
        return refuse("Only active images can be exported.");
    }
    if property("__system__cmkid").is_some() {
        return refuse("Encrypted images cannot be exported.");
    }
    if property("__imagetype") == Some("market") {
        return refuse("Market images cannot be exported.");
    }
    if property("__backup_id").is_some() || property("__whole_image") == Some("true") {
        return refuse("Whole-machine images cannot be exported.");
    }
    if image.disk_format.as_deref() == Some("iso")
        || property("virtual_env_type") == Some("IsoImage")
    {
        return refuse("ISO images cannot be exported.");
    }
    if property("__originalimagename").is_some()
        && property("__platform").is_some_and(|p| UNEXPORTABLE_PLATFORMS.contains(&p))
    {
        return refuse(
            "Images created from Windows, SUSE, Red Hat or Oracle Linux public images cannot be exported.",
        );
    }
    let size = image.data.as_ref().map_or(0, |d| d.size.max(0) as u64);
    if size > MAX_EXPORT_BYTES {
        return Err(ServiceError::too_large(format!(
            "Images larger than {} GB cannot be exported.",
            MAX_EXPORT_BYTES / GIB
        )));
    }
    if size > MAX_CONVERTED_EXPORT_BYTES && !quick {
        return refuse("Images larger than 128 GB can only be exported with a quick export.");
    }
    Ok(())
}

/// A bucket failure as the job reports it: the kind kept (a missing object is `NotFound`).
fn bucket_error(what: &str, e: BlobError) -> ServiceError {
    match e.kind() {
        ErrorKind::Internal => ServiceError::internal(what, &e),
        kind => ServiceError::new(kind, format!("{what}: {e}")),
    }
}

/// Saves the job's state with `change` applied to what was saved last, so an export's upload
/// record and its progress do not overwrite each other.
async fn update_state(
    ctx: &JobContext,
    change: impl FnOnce(&mut Map<String, Value>),
) -> ServiceResult<()> {
    let mut state = match ctx.state() {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    change(&mut state);
    ctx.save_state(Value::Object(state))
        .await
        .map_err(|e| ServiceError::new(ErrorKind::Conflict, e.to_string()))
}

async fn save_percent(ctx: &JobContext, percent: f64) -> ServiceResult<()> {
    update_state(ctx, |state| {
        state.insert("percent".into(), percent.into());
    })
    .await
}

/// A multipart upload an export started, as its job state records it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RecordedUpload {
    target: BucketObject,
    upload_id: String,
}

impl RecordedUpload {
    fn to_json(&self) -> Value {
        json!({
            "bucket": self.target.bucket,
            "object": self.target.object,
            "upload_id": self.upload_id,
        })
    }

    /// The upload a job's state names, if it names one.
    fn from_state(state: Option<&Value>) -> Option<RecordedUpload> {
        let upload = state?.get(UPLOAD_STATE_KEY)?;
        let text = |k: &str| upload[k].as_str().map(str::to_owned);
        Some(RecordedUpload {
            target: BucketObject {
                bucket: text("bucket")?,
                object: text("object")?,
            },
            upload_id: text("upload_id")?,
        })
    }

    async fn abort(&self, buckets: &Buckets) -> ServiceResult<()> {
        buckets
            .abort_upload(&self.target.bucket, &self.target.object, &self.upload_id)
            .await
            .map_err(|e| bucket_error("aborting the unfinished upload", e))
    }
}

/// Passes `stream` on, failing it if it gives more or fewer than `expected` bytes: stored data
/// that reads short (or long) must never become a complete object.
fn exactly(stream: BlobStream, expected: u64, key: &BlobKey) -> BlobStream {
    let key = key.to_string();
    let wrong_size = move |total: u64| BlobError::Io {
        op: "reading",
        key: key.clone(),
        source: std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the stored data gave {total} bytes; the image has {expected}"),
        ),
    };
    futures::stream::unfold((stream, 0u64, false), move |(mut stream, total, failed)| {
        let wrong_size = wrong_size.clone();
        async move {
            if failed {
                return None;
            }
            let item = match stream.next().await {
                Some(Ok(chunk)) => {
                    let total = total + chunk.len() as u64;
                    let item = if total > expected {
                        Err(wrong_size(total))
                    } else {
                        Ok(chunk)
                    };
                    let failed = item.is_err();
                    return Some((item, (stream, total, failed)));
                }
                Some(Err(e)) => Err(e),
                None if total == expected => return None,
                None => Err(wrong_size(total)),
            };
            Some((item, (stream, total, true)))
        }
    })
    .boxed()
}

impl CloudImageService {
    /// Runs an import job (see the module docs). A failure removes the image the job created,
    /// or puts a registered image back to `queued`.
    pub(crate) async fn run_bucket_import(
        &self,
        ctx: &JobContext,
        caller: &Caller,
        params: &Value,
    ) -> ServiceResult<Value> {
        let params = ImportParams::from_json(params)?;
        let id = ctx
            .job()
            .image_id
            .ok_or_else(|| ServiceError::invalid("import job names no image"))?;
        let image = self
            .images()
            .meta
            .get_image(id)
            .await?
            .filter(|i| i.status != ImageStatus::Deleted)
            .ok_or_else(|| ServiceError::not_found(format!("Image {id} was deleted.")))?;
        if image.status == ImageStatus::Active && image.data.is_some() {
            // An earlier attempt published it and stopped before recording success.
            return Ok(json!({ "image_id": id.to_string() }));
        }
        match self.import_into(ctx, &image, &params).await {
            Ok(image) => Ok(import_result(&image)),
            Err(err) => {
                self.undo_import(caller, id, params.owns_image).await;
                Err(err)
            }
        }
    }

    async fn import_into(
        &self,
        ctx: &JobContext,
        image: &Image,
        params: &ImportParams,
    ) -> ServiceResult<Image> {
        let source = &params.source;
        let buckets = self.buckets(&format!("read {}", source.url()))?;
        let limit = if params.quick {
            MAX_QUICK_IMPORT_BYTES
        } else {
            MAX_IMPORT_BYTES
        };
        let size = buckets
            .object_size(&source.bucket, &source.object)
            .await
            .map_err(|e| bucket_error("reading the object", e))?
            .ok_or_else(|| {
                ServiceError::not_found(format!("The object {} does not exist.", source.url()))
            })?;
        if size > limit {
            return Err(ServiceError::too_large(format!(
                "The file {} has {size} bytes; the limit is {} GB{}.",
                source.url(),
                limit / GIB,
                if params.quick {
                    ""
                } else {
                    " (larger files need a quick import of RAW or ZVHD2)"
                }
            )));
        }
        let stream = buckets
            .open_object(&source.bucket, &source.object, None)
            .await
            .map_err(|e| bucket_error("reading the object", e))?;
        let conversion = self.conversion();
        let file = conversion.download(&source.url(), stream, limit).await?;
        let found = conversion.inspect(&file, source.declared_format()).await?;
        if params.quick && !QUICK_IMPORT_FORMATS.contains(&found.format) {
            return Err(ServiceError::invalid(format!(
                "A quick import takes RAW or ZVHD2 files, not {}.",
                found.format
            )));
        }
        if found.encrypted {
            return Err(ServiceError::new(
                ErrorKind::Unsupported,
                "Encrypted image files need KMS, and no KMS is configured for this deployment.",
            ));
        }
        let virtual_size = found.virtual_size.unwrap_or(size);
        let needed_gb = i64::try_from(virtual_size.div_ceil(GIB)).unwrap_or(i64::MAX);
        if params.data_disk && needed_gb > image.min_disk {
            return Err(ServiceError::invalid(format!(
                "The data disk of {needed_gb} GB does not fit min_disk {} GB.",
                image.min_disk
            )));
        }
        save_percent(ctx, 40.0).await?;
        let disk_format = found.format.as_str().to_string();
        let id = image.id;
        let prepared = self
            .images()
            .mutate(id, |img| {
                img.disk_format = Some(disk_format.clone());
                img.min_disk = img.min_disk.max(needed_gb);
                if img.status == ImageStatus::Queued {
                    img.transition(ImageStatus::Importing)?;
                }
                if img.status != ImageStatus::Importing {
                    return Err(ServiceError::conflict(format!(
                        "Image {id} is {}; only a queued image can take a file.",
                        img.status.as_str()
                    )));
                }
                Ok(())
            })
            .await?;
        let stream = file.stream().await?;
        let store = self.images().stores().default_store();
        self.images()
            .ingest(
                &prepared,
                stream,
                Some(size),
                ImageStatus::Importing,
                store,
                &Default::default(),
            )
            .await
    }

    /// Undoes a failed import: deletes the image the job created (IMS leaves no half-made
    /// image), or puts a registered image back to `queued`.
    async fn undo_import(&self, caller: &Caller, id: uuid::Uuid, owns_image: bool) {
        let undone = if owns_image {
            self.images().delete(caller, id).await
        } else {
            self.images()
                .restore_queued_from(id, ImageStatus::Importing)
                .await;
            Ok(())
        };
        if let Err(e) = undone {
            tracing::warn!(image_id = %id, error = %e.message, "removing a failed import's image");
        }
    }

    /// Runs an export job (see the module docs).
    pub(crate) async fn run_bucket_export(
        &self,
        ctx: &JobContext,
        caller: &Caller,
        params: &Value,
    ) -> ServiceResult<Value> {
        let params = ExportParams::from_json(params)?;
        let target = &params.target;
        let action = match params.format {
            Some(format) => format!("write {} as {format}", target.url()),
            None => format!("write {}", target.url()),
        };
        let buckets = self.buckets(&action)?;
        // An earlier attempt killed mid-upload aborted nothing: abort what it recorded.
        if let Some(left) = RecordedUpload::from_state(ctx.state().as_ref()) {
            left.abort(buckets).await?;
            update_state(ctx, |state| {
                state.remove(UPLOAD_STATE_KEY);
            })
            .await?;
            tracing::info!(object = %left.target.url(), upload_id = %left.upload_id, "aborted the upload an earlier attempt left");
        }
        let image = self.owned_image(caller, params.image_id).await?;
        check_exportable(&image, params.format.is_none())?;
        let data = image
            .data
            .clone()
            .ok_or_else(|| ServiceError::invalid("Only active images can be exported."))?;
        let key = BlobKey::parse(&data.blob_key)
            .map_err(|e| ServiceError::internal("reading the image's blob key", &e))?;
        let blob = self.images().open_stores(&data.stores, &key, None).await?;
        let (written, format) = match params.format {
            None => {
                let blob = exactly(blob, data.size.max(0) as u64, &key);
                let size = upload_recorded(ctx, buckets, target, blob).await?;
                (size, image.disk_format.clone().unwrap_or_default())
            }
            Some(format) => {
                let stored = image
                    .disk_format
                    .as_deref()
                    .and_then(Format::parse)
                    .ok_or_else(|| {
                        ServiceError::invalid("The image's disk_format cannot be converted.")
                    })?;
                let conversion = self.conversion();
                let source = conversion
                    .download(&data.blob_key, blob, MAX_EXPORT_BYTES)
                    .await?;
                let found = conversion.inspect(&source, Some(stored)).await?;
                save_percent(ctx, 20.0).await?;
                let converted = conversion.convert(&source, found.format, format).await?;
                drop(source);
                save_percent(ctx, 70.0).await?;
                let stream = converted.file.stream().await?;
                let size = upload_recorded(ctx, buckets, target, stream.boxed()).await?;
                (size, format.as_str().to_string())
            }
        };
        tracing::info!(image_id = %params.image_id, object = %target.url(), bytes = written, "image exported");
        Ok(json!({
            "image_id": params.image_id.to_string(),
            "bucket_url": target.url(),
            "file_format": format,
            "size": written,
        }))
    }
}

/// Writes `stream` to `target` as a multipart upload that the job's state names while it is
/// in progress (see the module docs); returns the object's size. On failure the upload is
/// aborted before the error is returned.
async fn upload_recorded(
    ctx: &JobContext,
    buckets: &Buckets,
    target: &BucketObject,
    stream: BlobStream,
) -> ServiceResult<u64> {
    let (upload_id, writer) = buckets
        .start_upload(&target.bucket, &target.object)
        .await
        .map_err(|e| bucket_error("writing the object", e))?;
    let upload = RecordedUpload {
        target: target.clone(),
        upload_id,
    };
    // Recorded before any part is sent; if that fails, the writer drops here and aborts.
    update_state(ctx, |state| {
        state.insert(UPLOAD_STATE_KEY.into(), upload.to_json());
    })
    .await?;
    let written = ims_blob::buckets::write_all(writer, stream)
        .await
        .map_err(|e| bucket_error("writing the object", e));
    if written.is_err() {
        // The dropped writer aborts too, on a task nobody waits for; this abort is awaited, and
        // if it fails the record stays for whoever looks at the job.
        if let Err(e) = upload.abort(buckets).await {
            tracing::warn!(object = %target.url(), upload_id = %upload.upload_id, error = %e.message, "aborting a failed export's upload");
            return written;
        }
    }
    update_state(ctx, |state| {
        state.remove(UPLOAD_STATE_KEY);
    })
    .await?;
    written
}

fn import_result(image: &Image) -> Value {
    json!({
        "image_id": image.id.to_string(),
        "disk_format": image.disk_format,
        "size": image.data.as_ref().map(|d| d.size),
        "virtual_size": image.data.as_ref().and_then(|d| d.virtual_size),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ims_domain::image::ImageData;

    fn active(size: i64) -> Image {
        let mut image = Image::new(uuid::Uuid::nil(), Some("p".into()), ims_domain::now());
        image.status = ImageStatus::Active;
        image.disk_format = Some("qcow2".into());
        image.data = Some(ImageData {
            blob_key: "images/x".into(),
            stores: vec!["local".into()],
            size,
            checksum: String::new(),
            os_hash_algo: "sha512".into(),
            os_hash_value: String::new(),
            virtual_size: None,
        });
        image
    }

    #[test]
    fn urls_and_declared_formats() {
        let o = BucketObject::parse("bkt:dir/disk.QCOW2").unwrap();
        assert_eq!(
            (o.bucket.as_str(), o.object.as_str()),
            ("bkt", "dir/disk.QCOW2")
        );
        assert_eq!(o.declared_format(), Some(Format::Qcow2));
        assert_eq!(
            BucketObject::parse("b:x.zvhd2").unwrap().declared_format(),
            Some(Format::Zvhd2)
        );
        assert_eq!(
            BucketObject::parse("b:noext").unwrap().declared_format(),
            None
        );
        assert!(BucketObject::parse("nocolon").is_err());
        assert!(BucketObject::parse(":o").is_err());
        assert_eq!(export_format("VMDK").unwrap(), Format::Vmdk);
        assert!(export_format("raw").is_err());
        assert!(export_format("vhdx").is_err());
    }

    #[test]
    fn recorded_uploads_round_trip_through_the_state() {
        let upload = RecordedUpload {
            target: BucketObject::parse("bkt:out/disk.vmdk").unwrap(),
            upload_id: "mpu-1".into(),
        };
        let state = json!({"percent": 70.0, UPLOAD_STATE_KEY: upload.to_json()});
        assert_eq!(RecordedUpload::from_state(Some(&state)), Some(upload));
        assert_eq!(
            RecordedUpload::from_state(Some(&json!({"percent": 70.0}))),
            None
        );
        assert_eq!(RecordedUpload::from_state(None), None);
        let partial = json!({UPLOAD_STATE_KEY: {"bucket": "bkt", "object": "o"}});
        assert_eq!(RecordedUpload::from_state(Some(&partial)), None);
    }

    #[tokio::test]
    async fn exactly_fails_a_stream_of_the_wrong_size() {
        use futures::TryStreamExt;
        let key = BlobKey::parse("images/x").unwrap();
        let chunks = |sizes: &[usize]| -> BlobStream {
            let chunks: Vec<ims_blob::BlobResult<bytes::Bytes>> = sizes
                .iter()
                .map(|&n| Ok(bytes::Bytes::from(vec![1u8; n])))
                .collect();
            futures::stream::iter(chunks).boxed()
        };
        let whole: Vec<bytes::Bytes> = exactly(chunks(&[3, 4]), 7, &key)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(whole.concat().len(), 7);
        for (sizes, expected) in [(&[3, 3][..], 7), (&[3, 5][..], 7), (&[][..], 1)] {
            let got: Result<Vec<_>, _> = exactly(chunks(sizes), expected, &key).try_collect().await;
            assert!(
                matches!(got, Err(BlobError::Io { .. })),
                "{sizes:?} for {expected}: {got:?}"
            );
        }
        let empty: Vec<bytes::Bytes> = exactly(chunks(&[]), 0, &key).try_collect().await.unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn table_5_5_refusals() {
        check_exportable(&active(1 << 20), false).unwrap();
        let cases: [(&str, &str); 5] = [
            ("__system__cmkid", "k"),
            ("__imagetype", "market"),
            ("__backup_id", "b"),
            ("virtual_env_type", "IsoImage"),
            ("__whole_image", "true"),
        ];
        for (k, v) in cases {
            let mut image = active(1);
            image.properties.insert(k.into(), v.into());
            assert!(check_exportable(&image, false).is_err(), "{k}={v}");
        }
        let mut image = active(1);
        image
            .properties
            .insert("__originalimagename".into(), "pub".into());
        image
            .properties
            .insert("__platform".into(), "Windows".into());
        assert!(check_exportable(&image, false).is_err());
        image
            .properties
            .insert("__platform".into(), "Ubuntu".into());
        check_exportable(&image, false).unwrap();
        let big = active((MAX_CONVERTED_EXPORT_BYTES + 1) as i64);
        assert!(check_exportable(&big, false).is_err());
        check_exportable(&big, true).unwrap();
        let huge = active((MAX_EXPORT_BYTES + 1) as i64);
        assert_eq!(
            check_exportable(&huge, true).unwrap_err().kind,
            ErrorKind::TooLarge
        );
        let mut queued = active(1);
        queued.status = ImageStatus::Queued;
        assert!(check_exportable(&queued, false).is_err());
    }
}
