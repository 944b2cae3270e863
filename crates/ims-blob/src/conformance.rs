//! The behaviour every [`BlobStore`] must show, run against each implementation.

use bytes::Bytes;
use futures::TryStreamExt;

use crate::s3conf::{S3Connection, Secret};
use crate::{BlobError, BlobKey, BlobStore};

async fn read_all(
    store: &dyn BlobStore,
    key: &BlobKey,
    range: Option<std::ops::Range<u64>>,
) -> Vec<u8> {
    let chunks: Vec<Bytes> = store
        .open(key, range)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    chunks.concat()
}

/// Runs every check; panics with a message naming the failed one.
pub async fn run_all(store: &dyn BlobStore) {
    round_trip_and_ranges(store).await;
    uncommitted_write_is_invisible(store).await;
    missing_blobs(store).await;
    delete_and_list(store).await;
    key_validation();
}

async fn round_trip_and_ranges(store: &dyn BlobStore) {
    let key = BlobKey::parse("images/rt/one").unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut w = store.create(&key).await.unwrap();
    for chunk in data.chunks(65_536) {
        w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(
        w.commit().await.unwrap(),
        data.len() as u64,
        "commit returns the size"
    );
    assert_eq!(store.size(&key).await.unwrap(), Some(data.len() as u64));
    assert_eq!(
        read_all(store, &key, None).await,
        data,
        "full read round-trips"
    );
    assert_eq!(
        read_all(store, &key, Some(10..20)).await,
        &data[10..20],
        "inner range"
    );
    assert_eq!(
        read_all(store, &key, Some(2_999_990..3_000_000)).await,
        &data[2_999_990..],
        "tail range"
    );
    assert!(
        read_all(store, &key, Some(5..5)).await.is_empty(),
        "empty range"
    );
    let past_end = store.open(&key, Some(10..3_000_001)).await;
    assert!(
        matches!(past_end, Err(BlobError::RangeNotSatisfiable { .. })),
        "range past the end is refused"
    );
    store.delete(&key).await.unwrap();
}

async fn uncommitted_write_is_invisible(store: &dyn BlobStore) {
    let key = BlobKey::parse("images/uc/one").unwrap();
    let mut w = store.create(&key).await.unwrap();
    w.write(Bytes::from_static(b"half")).await.unwrap();
    assert_eq!(
        store.size(&key).await.unwrap(),
        None,
        "nothing visible before commit"
    );
    drop(w);
    assert_eq!(
        store.size(&key).await.unwrap(),
        None,
        "nothing visible after a dropped writer"
    );
    assert!(store.list().await.unwrap().iter().all(|b| b.key != key));
}

async fn missing_blobs(store: &dyn BlobStore) {
    let key = BlobKey::parse("images/none/x").unwrap();
    assert!(matches!(
        store.open(&key, None).await,
        Err(BlobError::NotFound(_))
    ));
    assert_eq!(store.size(&key).await.unwrap(), None);
    store
        .delete(&key)
        .await
        .expect("deleting a missing blob succeeds");
}

async fn delete_and_list(store: &dyn BlobStore) {
    let a = BlobKey::parse("images/l/a").unwrap();
    let b = BlobKey::parse("images/l/b").unwrap();
    for key in [&a, &b] {
        let mut w = store.create(key).await.unwrap();
        w.write(Bytes::from_static(b"xyz")).await.unwrap();
        w.commit().await.unwrap();
    }
    let listed: Vec<_> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.key, i.size))
        .collect();
    assert!(
        listed.contains(&(a.clone(), 3)) && listed.contains(&(b.clone(), 3)),
        "list shows committed blobs"
    );
    store.delete(&a).await.unwrap();
    let listed: Vec<_> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.key)
        .collect();
    assert!(
        !listed.contains(&a) && listed.contains(&b),
        "delete removes only its blob"
    );
    store.delete(&b).await.unwrap();
}

fn key_validation() {
    for bad in ["", "/abs", "a//b", "a/../b", "..", "a/b c", "a\\b"] {
        assert!(BlobKey::parse(bad).is_err(), "{bad:?} must be refused");
    }
    assert!(BlobKey::parse("images/0b7c/9f-x.y_z").is_ok());
}

/// The S3 server `scripts/test.sh` starts (Garage: `IMS_TEST_S3_ENDPOINT`, `…_REGION`,
/// `…_ACCESS_KEY`, `…_SECRET_KEY`, `…_BUCKET`) and its bucket, or `None` when `IMS_SKIP_S3=1`.
/// Panics when neither is set, so a test run cannot silently skip the S3 suites.
pub fn s3_test_server() -> Option<(S3Connection, String)> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let Some(endpoint) = var("IMS_TEST_S3_ENDPOINT") else {
        if var("IMS_SKIP_S3").as_deref() == Some("1") {
            return None;
        }
        panic!(
            "IMS_TEST_S3_ENDPOINT is not set (scripts/test.sh starts Garage); IMS_SKIP_S3=1 skips"
        );
    };
    let need = |name: &str| var(name).unwrap_or_else(|| panic!("{name} is not set"));
    let connection = S3Connection {
        endpoint: Some(endpoint),
        region: Some(need("IMS_TEST_S3_REGION")),
        access_key_id: Some(need("IMS_TEST_S3_ACCESS_KEY")),
        secret_access_key: Some(Secret::new(need("IMS_TEST_S3_SECRET_KEY"))),
        allow_http: true,
        ..S3Connection::default()
    };
    Some((connection, need("IMS_TEST_S3_BUCKET")))
}
