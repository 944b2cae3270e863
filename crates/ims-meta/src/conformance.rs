//! The conformance suite every [`MetaStore`] must pass, instantiated per backend with
//! [`conformance_tests!`](crate::conformance_tests), plus a randomized differential check
//! ([`compare_random`]) between two stores.
//!
//! Each test takes a fresh, empty store and panics on the first divergence from the semantics
//! documented on [`MetaStore`] and [`ImageListQuery`].

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};

use ims_domain::image::ImageData;
use ims_domain::member::MemberStatus;
use ims_domain::query::{CmpOp, MatchField, MemberStatusFilter, TimeField, VisibilityFilter};
use ims_domain::{
    ErrorKind, Image, ImageListQuery, ImageStatus, ListScope, Member, Project, Role, SortDir,
    SortKey, User, Visibility, from_micros, to_micros,
};
use time::OffsetDateTime;

use crate::{IMPORTING_TO_STORES_PROPERTY, MetaError, MetaResult, MetaStore, ProjectUsage};

/// A store under test plus whatever must live as long as it (a temp dir, a schema to drop).
pub struct TestStore {
    pub store: Box<dyn MetaStore>,
    _guard: Box<dyn Any + Send + Sync>,
}

impl TestStore {
    pub fn new(store: impl MetaStore, guard: impl Any + Send + Sync) -> TestStore {
        TestStore {
            store: Box::new(store),
            _guard: Box::new(guard),
        }
    }
}

/// Generates one `#[tokio::test]` per conformance test; `$make` is an async expression that
/// yields a fresh, empty [`TestStore`] each time it is evaluated, or `None` to skip the test
/// (e.g. a backend the environment explicitly opted out of).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@tests $make;
            image_round_trip, image_duplicate_id, image_update_revision, image_update_conflict,
            image_update_missing, project_usage, project_limits, referenced_blob_keys,
            blob_reference_count, image_stores, image_locations, members, projects, users,
            role_assignments, secrets, token_revocation, list_visibility_for_project,
            list_visibility_for_admin, list_member_status, list_excludes_deleted_and_killed,
            list_match_filters, list_protected_and_hidden, list_time_filters, list_size_filters,
            list_tags_and_properties, list_sort_keys, list_pagination_walks_every_image,
            list_marker_rules, list_limit, random_queries_agree_with_memory
        );
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let fixture: Option<$crate::conformance::TestStore> = $make.await;
                let Some(fixture) = fixture else {
                    eprintln!("skipped: backend not configured");
                    return;
                };
                $crate::conformance::$name(&*fixture.store).await;
            }
        )*
    };
}

const P1: &str = "p1";
const P2: &str = "p2";
const P3: &str = "p3";

fn t(micros: i64) -> OffsetDateTime {
    from_micros(1_700_000_000_000_000 + micros)
}

fn id(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(n)
}

/// An active image with data, created at `t(n)`.
fn image(n: u128, owner: &str, visibility: Visibility) -> Image {
    let mut img = Image::new(id(n), Some(owner.to_owned()), t(n as i64));
    img.visibility = visibility;
    img.status = ImageStatus::Active;
    img.name = Some(format!("image-{n}"));
    img.disk_format = Some("raw".into());
    img.container_format = Some("bare".into());
    img.data = Some(data(n, 1000 + n as i64));
    img
}

fn data(n: u128, size: i64) -> ImageData {
    ImageData {
        blob_key: format!("blob-{n}"),
        stores: vec!["local".into()],
        size,
        checksum: format!("md5-{n}"),
        os_hash_algo: "sha512".into(),
        os_hash_value: format!("sha512-{n}"),
        virtual_size: Some(size * 2),
    }
}

fn member(image_id: uuid::Uuid, member_id: &str, status: MemberStatus, at: i64) -> Member {
    Member {
        image_id,
        member_id: member_id.into(),
        status,
        created_at: t(at),
        updated_at: t(at),
    }
}

async fn create_all(store: &dyn MetaStore, images: &[Image]) {
    for img in images {
        store.create_image(img).await.expect("create_image");
    }
}

async fn list_ids(store: &dyn MetaStore, query: &ImageListQuery) -> Vec<uuid::Uuid> {
    let page = store
        .list_images(query)
        .await
        .unwrap_or_else(|e| panic!("list_images {query:?}: {e}"));
    page.iter().map(|i| i.id).collect()
}

/// Ids of a listing, as a set (for tests where the order is not the point).
async fn list_set(store: &dyn MetaStore, query: &ImageListQuery) -> BTreeSet<u128> {
    let mut query = query.clone();
    query.limit = 10_000;
    list_ids(store, &query)
        .await
        .into_iter()
        .map(|i| i.as_u128())
        .collect()
}

fn set(ns: &[u128]) -> BTreeSet<u128> {
    ns.iter().copied().collect()
}

fn project_query(p: &str) -> ImageListQuery {
    ImageListQuery::new(ListScope::Project(p.into()))
}

fn admin_query() -> ImageListQuery {
    ImageListQuery::new(ListScope::All)
}

fn kind<T: std::fmt::Debug>(result: MetaResult<T>) -> ErrorKind {
    result.expect_err("expected an error").kind()
}

pub async fn image_round_trip(store: &dyn MetaStore) {
    assert_eq!(store.get_image(id(1)).await.unwrap(), None);
    let mut img = image(1, P1, Visibility::Private);
    img.protected = true;
    img.os_hidden = true;
    img.min_ram = 512;
    img.min_disk = 10;
    img.tags = ["a", "b c", "ünïcode"]
        .into_iter()
        .map(String::from)
        .collect();
    img.properties = [("hw_x", "1"), ("os_distro", "debian"), ("empty", "")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    img.revision = 3;
    // Sub-microsecond precision is dropped by every store.
    img.created_at = t(5) + time::Duration::nanoseconds(789);
    img.updated_at = t(6);
    img.deleted_at = Some(t(7));
    store.create_image(&img).await.unwrap();

    let mut expected = img.clone();
    expected.created_at = t(5);
    assert_eq!(store.get_image(id(1)).await.unwrap(), Some(expected));

    let mut bare = Image::new(id(2), None, t(1));
    bare.data = Some(ImageData {
        virtual_size: None,
        ..data(2, 0)
    });
    store.create_image(&bare).await.unwrap();
    assert_eq!(store.get_image(id(2)).await.unwrap(), Some(bare));
    let bare = Image::new(id(3), None, t(1));
    store.create_image(&bare).await.unwrap();
    assert_eq!(store.get_image(id(3)).await.unwrap(), Some(bare));
}

pub async fn image_duplicate_id(store: &dyn MetaStore) {
    let img = image(1, P1, Visibility::Private);
    store.create_image(&img).await.unwrap();
    assert_eq!(
        kind(store.create_image(&img).await),
        ErrorKind::AlreadyExists
    );

    let mut deleted = image(2, P1, Visibility::Private);
    deleted.status = ImageStatus::Deleted;
    deleted.deleted_at = Some(t(9));
    store.create_image(&deleted).await.unwrap();
    let again = image(2, P2, Visibility::Public);
    let err = store.create_image(&again).await.unwrap_err();
    assert!(matches!(err, MetaError::AlreadyExists(_)), "{err:?}");
    assert_eq!(
        store.get_image(id(2)).await.unwrap(),
        Some(deleted),
        "deleted images stay readable"
    );
}

pub async fn image_update_revision(store: &dyn MetaStore) {
    let mut img = image(1, P1, Visibility::Private);
    img.tags = set_of(&["old", "kept"]);
    img.properties = map_of(&[("a", "1"), ("b", "2")]);
    store.create_image(&img).await.unwrap();

    let mut changed = img.clone();
    changed.name = None;
    changed.status = ImageStatus::Deactivated;
    changed.visibility = Visibility::Community;
    changed.protected = true;
    changed.os_hidden = true;
    changed.owner = Some(P2.into());
    changed.disk_format = None;
    changed.container_format = None;
    changed.min_ram = 1;
    changed.min_disk = 2;
    changed.data = None;
    changed.updated_at = t(100);
    changed.deleted_at = Some(t(101));
    changed.tags = set_of(&["kept", "new"]);
    changed.properties = map_of(&[("b", "3"), ("c", "4")]);
    let stored = store.update_image(&changed).await.unwrap();
    let mut expected = changed.clone();
    expected.revision = 1;
    assert_eq!(stored, expected);
    assert_eq!(
        store.get_image(id(1)).await.unwrap(),
        Some(expected.clone())
    );

    let mut emptied = expected.clone();
    emptied.tags.clear();
    emptied.properties.clear();
    emptied.data = Some(data(7, 77));
    let stored = store.update_image(&emptied).await.unwrap();
    assert_eq!(stored.revision, 2);
    assert_eq!(store.get_image(id(1)).await.unwrap(), Some(stored));
}

pub async fn image_update_conflict(store: &dyn MetaStore) {
    let img = image(1, P1, Visibility::Private);
    store.create_image(&img).await.unwrap();
    let mut first = img.clone();
    first.name = Some("first".into());
    let stored = store.update_image(&first).await.unwrap();

    let mut stale = img.clone();
    stale.name = Some("stale".into());
    assert_eq!(kind(store.update_image(&stale).await), ErrorKind::Conflict);
    let mut ahead = stored.clone();
    ahead.revision += 5;
    assert_eq!(kind(store.update_image(&ahead).await), ErrorKind::Conflict);
    assert_eq!(store.get_image(id(1)).await.unwrap(), Some(stored.clone()));

    let mut fresh = stored;
    fresh.name = Some("second".into());
    assert_eq!(store.update_image(&fresh).await.unwrap().revision, 2);
}

pub async fn image_update_missing(store: &dyn MetaStore) {
    let img = image(1, P1, Visibility::Private);
    assert_eq!(kind(store.update_image(&img).await), ErrorKind::NotFound);
    assert_eq!(store.get_image(id(1)).await.unwrap(), None);
}

pub async fn project_usage(store: &dyn MetaStore) {
    assert_eq!(
        store.project_usage(P1).await.unwrap(),
        ProjectUsage::default()
    );
    let a = image(1, P1, Visibility::Private); // size 1001
    let mut b = image(2, P1, Visibility::Public); // size 1002, held by two stores
    if let Some(d) = b.data.as_mut() {
        d.stores.push("second".into());
    }
    let mut queued = image(3, P1, Visibility::Private);
    queued.status = ImageStatus::Queued;
    queued.data = None;
    let mut deleted = image(4, P1, Visibility::Private);
    deleted.status = ImageStatus::Deleted;
    deleted.deleted_at = Some(t(40));
    let other = image(5, P2, Visibility::Private);
    let mut killed = image(6, P1, Visibility::Private);
    killed.status = ImageStatus::Killed;
    let mut saving = image(7, P1, Visibility::Private);
    saving.status = ImageStatus::Saving;
    saving.data = None;
    let mut staged = image(8, P1, Visibility::Private);
    staged.status = ImageStatus::Uploading;
    staged.data = None;
    let mut importing = image(9, P1, Visibility::Private);
    importing.status = ImageStatus::Importing;
    importing.data = None;
    importing
        .properties
        .insert(IMPORTING_TO_STORES_PROPERTY.into(), "local".into());
    // An active image being copied to another store (size 1010).
    let mut copying = image(10, P1, Visibility::Private);
    copying
        .properties
        .insert(IMPORTING_TO_STORES_PROPERTY.into(), "second".into());
    // A finished import leaves the property empty.
    let mut copied = image(11, P1, Visibility::Private);
    copied
        .properties
        .insert(IMPORTING_TO_STORES_PROPERTY.into(), String::new());
    let mut deleted_copying = image(12, P1, Visibility::Private);
    deleted_copying.status = ImageStatus::Deleted;
    deleted_copying.deleted_at = Some(t(41));
    deleted_copying
        .properties
        .insert(IMPORTING_TO_STORES_PROPERTY.into(), "second".into());
    create_all(
        store,
        &[
            a,
            b,
            queued,
            deleted,
            other,
            killed,
            saving,
            staged,
            importing,
            copying,
            copied,
            deleted_copying,
        ],
    )
    .await;
    assert_eq!(
        store.project_usage(P1).await.unwrap(),
        ProjectUsage {
            image_size_total: 1001 + 2 * 1002 + 1010 + 1011,
            image_count_total: 8,
            image_count_uploading: 4,
            copying_size: 1010,
            staged_images: vec![id(8), id(9)],
        }
    );
    assert_eq!(
        store.project_usage(P2).await.unwrap(),
        ProjectUsage {
            image_size_total: 1005,
            image_count_total: 1,
            ..ProjectUsage::default()
        }
    );
    assert_eq!(
        store.project_usage(P3).await.unwrap(),
        ProjectUsage::default()
    );
}

pub async fn project_limits(store: &dyn MetaStore) {
    use ims_domain::{Limit, QuotaResource as R};
    assert!(store.project_limits(P1).await.unwrap().is_empty());
    store
        .set_project_limit(P1, R::ImageCountUploading, Some(Limit::At(3)))
        .await
        .unwrap();
    store
        .set_project_limit(P1, R::ImageSizeTotal, Some(Limit::At(1024)))
        .await
        .unwrap();
    store
        .set_project_limit(P2, R::ImageSizeTotal, Some(Limit::Unlimited))
        .await
        .unwrap();
    assert_eq!(
        store.project_limits(P1).await.unwrap(),
        vec![
            (R::ImageSizeTotal, Limit::At(1024)),
            (R::ImageCountUploading, Limit::At(3)),
        ]
    );
    assert_eq!(
        store.project_limits(P2).await.unwrap(),
        vec![(R::ImageSizeTotal, Limit::Unlimited)]
    );
    // Setting again replaces; a huge limit survives the signed column.
    store
        .set_project_limit(P1, R::ImageSizeTotal, Some(Limit::At(i64::MAX as u64)))
        .await
        .unwrap();
    store
        .set_project_limit(P1, R::ImageCountUploading, None)
        .await
        .unwrap();
    // Removing what is not there is not an error.
    store
        .set_project_limit(P1, R::ImageStageTotal, None)
        .await
        .unwrap();
    assert_eq!(
        store.project_limits(P1).await.unwrap(),
        vec![(R::ImageSizeTotal, Limit::At(i64::MAX as u64))]
    );
    assert!(store.project_limits(P3).await.unwrap().is_empty());
}

pub async fn referenced_blob_keys(store: &dyn MetaStore) {
    assert!(store.referenced_blob_keys().await.unwrap().is_empty());
    let a = image(1, P1, Visibility::Private);
    let mut b = image(2, P2, Visibility::Private);
    b.data = Some(data(1, 5)); // same blob as `a`
    let mut c = image(3, P1, Visibility::Private);
    c.data = None;
    let mut d = image(4, P1, Visibility::Private);
    d.status = ImageStatus::Deleted;
    create_all(store, &[a, b, c, d]).await;
    assert_eq!(
        store.referenced_blob_keys().await.unwrap(),
        vec!["blob-1".to_owned(), "blob-4".to_owned()]
    );
}

pub async fn blob_reference_count(store: &dyn MetaStore) {
    assert_eq!(
        store.blob_reference_count("blob-1", "local").await.unwrap(),
        0
    );
    let a = image(1, P1, Visibility::Private);
    let mut b = image(2, P2, Visibility::Private);
    b.data = Some(data(1, 5)); // same blob as `a`
    let mut c = image(3, P1, Visibility::Private);
    c.data = None;
    create_all(store, &[a.clone(), b, c]).await;
    assert_eq!(
        store.blob_reference_count("blob-1", "local").await.unwrap(),
        2
    );
    assert_eq!(
        store.blob_reference_count("blob-3", "local").await.unwrap(),
        0
    );
    assert_eq!(
        store.blob_reference_count("blob-", "local").await.unwrap(),
        0
    );
    // Deleting drops the record's key (the service takes `data` away): one reference left.
    let mut gone = store.get_image(a.id).await.unwrap().unwrap();
    gone.status = ImageStatus::Deleted;
    gone.data = None;
    store.update_image(&gone).await.unwrap();
    assert_eq!(
        store.blob_reference_count("blob-1", "local").await.unwrap(),
        1
    );
    assert_eq!(
        store.blob_reference_count("blob-1", "fs").await.unwrap(),
        0,
        "counted per store"
    );
}

/// An image's data held by several stores: the order of the stores survives, changing the
/// set is an ordinary update, and each store's collector sees exactly its keys.
pub async fn image_stores(store: &dyn MetaStore) {
    let mut a = image(1, P1, Visibility::Private);
    a.data = Some(ImageData {
        stores: vec!["fs2".into(), "fs".into()],
        ..data(1, 5)
    });
    let mut b = image(2, P1, Visibility::Private);
    b.data = Some(ImageData {
        stores: vec!["fs".into()],
        ..data(2, 5)
    });
    create_all(store, &[a.clone(), b]).await;
    assert_eq!(store.get_image(a.id).await.unwrap().as_ref(), Some(&a));
    let keys = |s: &'static str| async move { store.referenced_blob_keys_in(s).await.unwrap() };
    assert_eq!(keys("fs").await, ["blob-1", "blob-2"]);
    assert_eq!(keys("fs2").await, ["blob-1"]);
    assert!(keys("f").await.is_empty(), "store ids match whole");

    let mut a = store.get_image(a.id).await.unwrap().unwrap();
    if let Some(d) = a.data.as_mut() {
        d.stores = vec!["fs2".into(), "s3".into()];
    }
    let a = store.update_image(&a).await.unwrap();
    assert_eq!(store.get_image(a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(keys("fs").await, ["blob-2"]);
    assert_eq!(keys("s3").await, ["blob-1"]);
    let listed = store
        .list_images(&ImageListQuery::new(ListScope::All))
        .await
        .unwrap();
    let listed = listed.iter().find(|i| i.id == a.id).unwrap();
    assert_eq!(listed.data.as_ref().unwrap().stores, ["fs2", "s3"]);
}

pub async fn image_locations(store: &dyn MetaStore) {
    use ims_domain::image::{ImageLocation, LocationData};
    // Data only at external locations: a size, some hashes unknown, no blob.
    let mut a = image(1, P1, Visibility::Private);
    a.data = None;
    a.locations = vec![
        ImageLocation {
            url: "http://example.net/a.raw".into(),
            metadata: r#"{"foo":"bar","store":"web"}"#.into(),
        },
        ImageLocation {
            url: "http://example.net/a.raw#2".into(),
            metadata: "{}".into(),
        },
    ];
    a.location_data = Some(LocationData {
        size: 77,
        checksum: None,
        os_hash_algo: Some("sha512".into()),
        os_hash_value: None,
        virtual_size: Some(77),
    });
    // A queued image that kept a location (a failed location import).
    let mut b = image(2, P1, Visibility::Private);
    b.status = ImageStatus::Queued;
    b.data = None;
    b.locations = vec![ImageLocation {
        url: "http://example.net/b.raw".into(),
        metadata: r#"{"store":"web"}"#.into(),
    }];
    create_all(store, &[a.clone(), b.clone()]).await;
    assert_eq!(store.get_image(a.id).await.unwrap().as_ref(), Some(&a));
    assert_eq!(store.get_image(b.id).await.unwrap().as_ref(), Some(&b));
    assert!(store.referenced_blob_keys().await.unwrap().is_empty());

    let mut a = store.get_image(a.id).await.unwrap().unwrap();
    a.locations.truncate(1);
    if let Some(d) = a.location_data.as_mut() {
        d.checksum = Some("md5".into());
        d.os_hash_value = Some("h".into());
    }
    let a = store.update_image(&a).await.unwrap();
    assert_eq!(store.get_image(a.id).await.unwrap(), Some(a.clone()));
    let query = ImageListQuery {
        size_min: Some(70),
        size_max: Some(80),
        ..ImageListQuery::new(ListScope::All)
    };
    assert_eq!(list_ids(store, &query).await, [a.id]);
}

pub async fn members(store: &dyn MetaStore) {
    let img = image(1, P1, Visibility::Shared);
    store.create_image(&img).await.unwrap();
    let m2 = member(img.id, P2, MemberStatus::Pending, 20);
    let m3 = member(img.id, P3, MemberStatus::Accepted, 10);
    assert_eq!(
        kind(
            store
                .add_member(&member(id(99), P2, MemberStatus::Pending, 1))
                .await
        ),
        ErrorKind::NotFound
    );
    store.add_member(&m2).await.unwrap();
    store.add_member(&m3).await.unwrap();
    assert_eq!(kind(store.add_member(&m2).await), ErrorKind::AlreadyExists);

    assert_eq!(
        store.get_member(img.id, P2).await.unwrap(),
        Some(m2.clone())
    );
    assert_eq!(store.get_member(img.id, P1).await.unwrap(), None);
    assert_eq!(store.get_member(id(99), P2).await.unwrap(), None);
    assert_eq!(
        store.list_members(img.id).await.unwrap(),
        vec![m3.clone(), m2.clone()],
        "ordered by created_at"
    );
    assert!(store.list_members(id(99)).await.unwrap().is_empty());

    let mut answered = m2.clone();
    answered.status = MemberStatus::Rejected;
    answered.updated_at = t(30) + time::Duration::nanoseconds(5);
    answered.created_at = t(999); // not written: only status and updated_at change
    store.update_member(&answered).await.unwrap();
    let expected = Member {
        status: MemberStatus::Rejected,
        updated_at: t(30),
        ..m2.clone()
    };
    assert_eq!(store.get_member(img.id, P2).await.unwrap(), Some(expected));
    assert_eq!(
        kind(
            store
                .update_member(&member(img.id, "p9", MemberStatus::Accepted, 1))
                .await
        ),
        ErrorKind::NotFound
    );

    store.delete_member(img.id, P3).await.unwrap();
    assert_eq!(
        kind(store.delete_member(img.id, P3).await),
        ErrorKind::NotFound
    );
    assert_eq!(store.get_member(img.id, P3).await.unwrap(), None);
    assert_eq!(store.list_members(img.id).await.unwrap().len(), 1);
    store.add_member(&m3).await.unwrap();
    assert_eq!(store.list_members(img.id).await.unwrap().len(), 2);
}

fn project(id: &str, name: &str, domain: &str) -> Project {
    Project {
        id: id.into(),
        name: name.into(),
        domain_id: domain.into(),
    }
}

fn user(id: &str, name: &str, domain: &str) -> User {
    User {
        id: id.into(),
        name: name.into(),
        domain_id: domain.into(),
        password_hash: format!("$argon2id${id}"),
    }
}

pub async fn projects(store: &dyn MetaStore) {
    assert!(store.list_projects().await.unwrap().is_empty());
    let b = project("id-b", "beta", "default");
    let a = project("id-a", "alpha", "default");
    let a_other = project("id-c", "alpha", "other");
    store.create_project(&b).await.unwrap();
    store.create_project(&a).await.unwrap();
    store.create_project(&a_other).await.unwrap();
    assert_eq!(
        kind(
            store
                .create_project(&project("id-a", "gamma", "default"))
                .await
        ),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        kind(
            store
                .create_project(&project("id-d", "alpha", "default"))
                .await
        ),
        ErrorKind::AlreadyExists
    );
    store
        .create_project(&project("id-d", "Alpha", "default"))
        .await
        .expect("names are case-sensitive");

    assert_eq!(store.get_project("id-a").await.unwrap(), Some(a.clone()));
    assert_eq!(store.get_project("nope").await.unwrap(), None);
    assert_eq!(
        store.find_project("default", "alpha").await.unwrap(),
        Some(a.clone())
    );
    assert_eq!(
        store.find_project("other", "alpha").await.unwrap(),
        Some(a_other.clone())
    );
    assert_eq!(
        store.find_project("default", "ALPHA").await.unwrap(),
        None,
        "names are case-sensitive"
    );
    assert_eq!(store.find_project("nowhere", "alpha").await.unwrap(), None);
    let names: Vec<(String, String)> = store
        .list_projects()
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.name, p.id))
        .collect();
    assert_eq!(
        names,
        vec![
            ("Alpha".into(), "id-d".into()),
            ("alpha".into(), "id-a".into()),
            ("alpha".into(), "id-c".into()),
            ("beta".into(), "id-b".into())
        ],
        "ordered by name, then id"
    );
}

pub async fn users(store: &dyn MetaStore) {
    assert!(store.list_users().await.unwrap().is_empty());
    let bob = user("u-2", "bob", "default");
    let alice = user("u-1", "alice", "default");
    store.create_user(&bob).await.unwrap();
    store.create_user(&alice).await.unwrap();
    assert_eq!(
        kind(store.create_user(&user("u-1", "carol", "default")).await),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        kind(store.create_user(&user("u-3", "bob", "default")).await),
        ErrorKind::AlreadyExists
    );
    let bob_elsewhere = user("u-3", "bob", "other");
    store.create_user(&bob_elsewhere).await.unwrap();

    assert_eq!(store.get_user("u-1").await.unwrap(), Some(alice.clone()));
    assert_eq!(store.get_user("u-9").await.unwrap(), None);
    assert_eq!(
        store.find_user("default", "bob").await.unwrap(),
        Some(bob.clone())
    );
    assert_eq!(
        store.find_user("other", "bob").await.unwrap(),
        Some(bob_elsewhere.clone())
    );
    assert_eq!(store.find_user("default", "carol").await.unwrap(), None);
    assert_eq!(
        store.list_users().await.unwrap(),
        vec![alice.clone(), bob.clone(), bob_elsewhere]
    );

    store
        .set_user_password("u-1", "$argon2id$new")
        .await
        .unwrap();
    let alice = User {
        password_hash: "$argon2id$new".into(),
        ..alice
    };
    assert_eq!(store.get_user("u-1").await.unwrap(), Some(alice.clone()));
    assert_eq!(
        store.find_user("default", "alice").await.unwrap(),
        Some(alice)
    );
    assert_eq!(
        kind(store.set_user_password("u-9", "x").await),
        ErrorKind::NotFound
    );
}

pub async fn role_assignments(store: &dyn MetaStore) {
    assert!(store.list_role_assignments().await.unwrap().is_empty());
    assert!(store.assigned_roles("u1", P1).await.unwrap().is_empty());
    store.assign_role("u1", P1, Role::Admin).await.unwrap();
    store.assign_role("u1", P1, Role::Reader).await.unwrap();
    store.assign_role("u1", P1, Role::Reader).await.unwrap();
    store.assign_role("u1", P2, Role::Member).await.unwrap();
    store.assign_role("u0", P2, Role::Member).await.unwrap();
    assert_eq!(
        store.assigned_roles("u1", P1).await.unwrap(),
        vec![Role::Reader, Role::Admin]
    );
    assert_eq!(
        store.assigned_roles("u1", P2).await.unwrap(),
        vec![Role::Member]
    );
    assert!(store.assigned_roles("u2", P1).await.unwrap().is_empty());
    let all = store.list_role_assignments().await.unwrap();
    let expected = vec![
        ("u0".to_owned(), P2.to_owned(), Role::Member),
        ("u1".to_owned(), P1.to_owned(), Role::Reader),
        ("u1".to_owned(), P1.to_owned(), Role::Admin),
        ("u1".to_owned(), P2.to_owned(), Role::Member),
    ];
    assert_eq!(all, expected);

    store.unassign_role("u1", P1, Role::Admin).await.unwrap();
    store.unassign_role("u1", P1, Role::Admin).await.unwrap();
    store.unassign_role("u7", P3, Role::Admin).await.unwrap();
    assert_eq!(
        store.assigned_roles("u1", P1).await.unwrap(),
        vec![Role::Reader]
    );
    assert_eq!(store.list_role_assignments().await.unwrap().len(), 3);
}

pub async fn secrets(store: &dyn MetaStore) {
    let first = store
        .get_or_init_secret("signing-key", b"\x00first\xff")
        .await
        .unwrap();
    assert_eq!(first, b"\x00first\xff");
    let second = store
        .get_or_init_secret("signing-key", b"second")
        .await
        .unwrap();
    assert_eq!(second, b"\x00first\xff", "the first value is kept");
    let other = store.get_or_init_secret("other", b"").await.unwrap();
    assert_eq!(other, b"");
    assert_eq!(store.get_or_init_secret("other", b"x").await.unwrap(), b"");
}

pub async fn token_revocation(store: &dyn MetaStore) {
    let later = OffsetDateTime::now_utc().unix_timestamp() + 3600;
    assert!(!store.is_token_revoked("a1").await.unwrap());
    store.revoke_token("a1", later).await.unwrap();
    store.revoke_token("a1", later + 1).await.unwrap();
    assert!(store.is_token_revoked("a1").await.unwrap());
    assert!(!store.is_token_revoked("a2").await.unwrap());
    store.revoke_token("a2", later).await.unwrap();
    assert!(store.is_token_revoked("a2").await.unwrap());
    assert!(store.is_token_revoked("a1").await.unwrap());
}

/// Images 1–12 in every (owner, visibility) combination; members of P2 on the shared ones.
async fn visibility_fixture(store: &dyn MetaStore) {
    let mut n = 0;
    for owner in [P1, P2, P3] {
        for vis in Visibility::ALL {
            n += 1;
            store.create_image(&image(n, owner, vis)).await.unwrap();
        }
    }
    // Shared images: 3 (P1), 7 (P2), 11 (P3). P2 is a member of 3 (accepted) and 11 (pending);
    // P3 of 3 (rejected). P2 is also a "member" of private image 2, which grants nothing.
    for (img, project, status) in [
        (3, P2, MemberStatus::Accepted),
        (11, P2, MemberStatus::Pending),
        (3, P3, MemberStatus::Rejected),
        (2, P2, MemberStatus::Accepted),
    ] {
        store
            .add_member(&member(id(img), project, status, 1))
            .await
            .unwrap();
    }
}

// Image numbers in `visibility_fixture`: public, private, shared, community per owner.
const PUBLIC: [u128; 3] = [1, 5, 9];
const COMMUNITY: [u128; 3] = [4, 8, 12];

pub async fn list_visibility_for_project(store: &dyn MetaStore) {
    visibility_fixture(store).await;
    let q = |vis: Option<VisibilityFilter>| ImageListQuery {
        visibility: vis,
        ..project_query(P2)
    };
    use Visibility::*;
    use VisibilityFilter::{All, Only};
    // Default: own images, public, and shared-with-me (accepted); others' community left out.
    assert_eq!(list_set(store, &q(None)).await, set(&[1, 3, 5, 6, 7, 8, 9]));
    assert_eq!(
        list_set(store, &q(Some(All))).await,
        set(&[1, 3, 4, 5, 6, 7, 8, 9, 12])
    );
    assert_eq!(list_set(store, &q(Some(Only(Public)))).await, set(&PUBLIC));
    assert_eq!(
        list_set(store, &q(Some(Only(Community)))).await,
        set(&COMMUNITY)
    );
    assert_eq!(list_set(store, &q(Some(Only(Private)))).await, set(&[6]));
    assert_eq!(list_set(store, &q(Some(Only(Shared)))).await, set(&[3, 7]));
    // P1 sees its own shared image regardless of members; no one shares with P1.
    let p1 = project_query(P1);
    assert_eq!(list_set(store, &p1).await, set(&[1, 2, 3, 4, 5, 9]));
    // A project owning nothing sees public images only, community on request.
    let stranger = project_query("p-none");
    assert_eq!(list_set(store, &stranger).await, set(&PUBLIC));
    let stranger_all = ImageListQuery {
        visibility: Some(All),
        ..stranger
    };
    assert_eq!(
        list_set(store, &stranger_all).await,
        set(&[1, 4, 5, 8, 9, 12])
    );
}

pub async fn list_visibility_for_admin(store: &dyn MetaStore) {
    visibility_fixture(store).await;
    let q = |vis: Option<VisibilityFilter>| ImageListQuery {
        visibility: vis,
        ..admin_query()
    };
    use Visibility::*;
    use VisibilityFilter::{All, Only};
    // Without a filter, community images are left out (ListScope::All carries no project).
    assert_eq!(
        list_set(store, &q(None)).await,
        set(&[1, 2, 3, 5, 6, 7, 9, 10, 11])
    );
    assert_eq!(list_set(store, &q(Some(All))).await, (1..=12).collect());
    assert_eq!(
        list_set(store, &q(Some(Only(Private)))).await,
        set(&[2, 6, 10])
    );
    assert_eq!(
        list_set(store, &q(Some(Only(Shared)))).await,
        set(&[3, 7, 11])
    );
    assert_eq!(
        list_set(store, &q(Some(Only(Community)))).await,
        set(&COMMUNITY)
    );
    // Member status does not narrow an admin's listing.
    let pending = ImageListQuery {
        member_status: MemberStatusFilter::Only(MemberStatus::Pending),
        ..q(None)
    };
    assert_eq!(
        list_set(store, &pending).await,
        set(&[1, 2, 3, 5, 6, 7, 9, 10, 11])
    );
}

pub async fn list_member_status(store: &dyn MetaStore) {
    visibility_fixture(store).await;
    let shared = |p: &str, status: MemberStatusFilter| ImageListQuery {
        visibility: Some(VisibilityFilter::Only(Visibility::Shared)),
        member_status: status,
        ..project_query(p)
    };
    use MemberStatus::*;
    use MemberStatusFilter::{All, Only};
    assert_eq!(
        list_set(store, &shared(P2, Only(Accepted))).await,
        set(&[3, 7])
    );
    assert_eq!(
        list_set(store, &shared(P2, Only(Pending))).await,
        set(&[7, 11])
    );
    assert_eq!(
        list_set(store, &shared(P2, Only(Rejected))).await,
        set(&[7])
    );
    assert_eq!(list_set(store, &shared(P2, All)).await, set(&[3, 7, 11]));
    assert_eq!(
        list_set(store, &shared(P3, Only(Rejected))).await,
        set(&[3, 11])
    );
    assert_eq!(
        list_set(store, &shared(P3, Only(Accepted))).await,
        set(&[11])
    );
    // Without a visibility filter the member status still decides which shared images appear.
    let default_pending = ImageListQuery {
        member_status: Only(Pending),
        ..project_query(P2)
    };
    assert_eq!(
        list_set(store, &default_pending).await,
        set(&[1, 5, 6, 7, 8, 9, 11])
    );
    // Un-sharing an image hides it from its members.
    let mut img = store.get_image(id(3)).await.unwrap().unwrap();
    img.visibility = Visibility::Private;
    store.update_image(&img).await.unwrap();
    assert_eq!(list_set(store, &shared(P2, All)).await, set(&[7, 11]));
    assert_eq!(
        list_set(store, &project_query(P2)).await,
        set(&[1, 5, 6, 7, 8, 9])
    );
}

pub async fn list_excludes_deleted_and_killed(store: &dyn MetaStore) {
    let mut n = 0;
    for status in ImageStatus::ALL {
        n += 1;
        let mut img = image(n, P1, Visibility::Public);
        img.status = status;
        store.create_image(&img).await.unwrap();
    }
    let mut soft_deleted = image(100, P1, Visibility::Public);
    soft_deleted.deleted_at = Some(t(5));
    store.create_image(&soft_deleted).await.unwrap();
    let listed: BTreeSet<&str> = {
        let mut q = admin_query();
        q.visibility = Some(VisibilityFilter::All);
        q.limit = 100;
        store
            .list_images(&q)
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.status.as_str())
            .collect()
    };
    let expected: BTreeSet<&str> = ImageStatus::ALL
        .into_iter()
        .filter(|s| !matches!(s, ImageStatus::Deleted | ImageStatus::Killed))
        .map(ImageStatus::as_str)
        .collect();
    assert_eq!(listed, expected);
    for scope in [
        ListScope::All,
        ListScope::Project(P1.into()),
        ListScope::Project(P2.into()),
    ] {
        let q = ImageListQuery::new(scope);
        assert_eq!(list_set(store, &q).await.len(), 7);
        let killed = ImageListQuery {
            matches: vec![(MatchField::Status, vec!["killed".into()])],
            ..q.clone()
        };
        assert!(list_set(store, &killed).await.is_empty());
    }
}

pub async fn list_match_filters(store: &dyn MetaStore) {
    let mut a = image(1, P1, Visibility::Public);
    a.name = Some("alpha".into());
    let mut b = image(2, P2, Visibility::Public);
    b.name = Some("beta".into());
    b.status = ImageStatus::Queued;
    b.disk_format = Some("qcow2".into());
    b.container_format = Some("ova".into());
    b.data = None;
    let mut c = image(3, P1, Visibility::Public);
    c.name = None;
    c.owner = None;
    c.disk_format = None;
    c.container_format = None;
    let mut d = image(4, P3, Visibility::Public);
    d.name = Some("alpha".into());
    d.status = ImageStatus::Deactivated;
    create_all(store, &[a, b, c, d]).await;
    let q = |field: MatchField, values: &[&str]| ImageListQuery {
        matches: vec![(field, values.iter().map(|v| v.to_string()).collect())],
        ..admin_query()
    };
    use MatchField::*;
    assert_eq!(list_set(store, &q(Name, &["alpha"])).await, set(&[1, 4]));
    assert_eq!(
        list_set(store, &q(Name, &["alpha", "beta"])).await,
        set(&[1, 2, 4])
    );
    assert_eq!(list_set(store, &q(Name, &["Alpha"])).await, set(&[]));
    assert_eq!(
        list_set(store, &q(Name, &[""])).await,
        set(&[]),
        "a missing name matches nothing"
    );
    assert_eq!(
        list_set(store, &q(Name, &[])).await,
        set(&[]),
        "an empty list matches nothing"
    );
    assert_eq!(
        list_set(store, &q(Id, &[&id(2).to_string(), &id(3).to_string()])).await,
        set(&[2, 3])
    );
    assert_eq!(
        list_set(store, &q(Id, &[&id(0xab).to_string()])).await,
        set(&[])
    );
    assert_eq!(
        list_set(store, &q(Status, &["queued", "deactivated"])).await,
        set(&[2, 4])
    );
    assert_eq!(
        list_set(store, &q(ContainerFormat, &["bare"])).await,
        set(&[1, 4])
    );
    assert_eq!(
        list_set(store, &q(DiskFormat, &["qcow2", "raw"])).await,
        set(&[1, 2, 4])
    );
    assert_eq!(list_set(store, &q(Owner, &[P1, P2])).await, set(&[1, 2]));
    assert_eq!(list_set(store, &q(Checksum, &["md5-3"])).await, set(&[3]));
    assert_eq!(
        list_set(
            store,
            &q(OsHashValue, &["sha512-1", "sha512-2", "sha512-4"])
        )
        .await,
        set(&[1, 4])
    );
    // Several filters must all hold.
    let both = ImageListQuery {
        matches: vec![(Name, vec!["alpha".into()]), (Owner, vec![P3.into()])],
        ..admin_query()
    };
    assert_eq!(list_set(store, &both).await, set(&[4]));
    // Filters narrow what the scope allows, never widen it.
    let scoped = ImageListQuery {
        matches: vec![(Owner, vec![P1.into()])],
        ..project_query(P2)
    };
    assert_eq!(list_set(store, &scoped).await, set(&[1]));
}

pub async fn list_protected_and_hidden(store: &dyn MetaStore) {
    let mut n = 0;
    for protected in [false, true] {
        for hidden in [false, true] {
            n += 1;
            let mut img = image(n, P1, Visibility::Private);
            img.protected = protected;
            img.os_hidden = hidden;
            store.create_image(&img).await.unwrap();
        }
    }
    let q = |protected: Option<bool>, hidden: Option<bool>| ImageListQuery {
        protected,
        os_hidden: hidden,
        ..project_query(P1)
    };
    assert_eq!(
        list_set(store, &project_query(P1)).await,
        set(&[1, 3]),
        "hidden images are left out by default"
    );
    assert_eq!(list_set(store, &q(None, None)).await, set(&[1, 2, 3, 4]));
    assert_eq!(list_set(store, &q(None, Some(true))).await, set(&[2, 4]));
    assert_eq!(list_set(store, &q(Some(true), None)).await, set(&[3, 4]));
    assert_eq!(
        list_set(store, &q(Some(false), Some(false))).await,
        set(&[1])
    );
}

pub async fn list_time_filters(store: &dyn MetaStore) {
    for n in 1..=5u128 {
        let mut img = image(n, P1, Visibility::Private);
        img.created_at = t(n as i64 * 10);
        img.updated_at = t(100 - n as i64 * 10);
        store.create_image(&img).await.unwrap();
    }
    let q = |field: TimeField, op: CmpOp, at: OffsetDateTime| ImageListQuery {
        times: vec![(field, op, at)],
        ..project_query(P1)
    };
    use CmpOp::*;
    use TimeField::*;
    assert_eq!(list_set(store, &q(CreatedAt, Eq, t(30))).await, set(&[3]));
    assert_eq!(
        list_set(store, &q(CreatedAt, Neq, t(30))).await,
        set(&[1, 2, 4, 5])
    );
    assert_eq!(
        list_set(store, &q(CreatedAt, Gt, t(30))).await,
        set(&[4, 5])
    );
    assert_eq!(
        list_set(store, &q(CreatedAt, Gte, t(30))).await,
        set(&[3, 4, 5])
    );
    assert_eq!(
        list_set(store, &q(CreatedAt, Lt, t(30))).await,
        set(&[1, 2])
    );
    assert_eq!(
        list_set(store, &q(CreatedAt, Lte, t(30))).await,
        set(&[1, 2, 3])
    );
    assert_eq!(
        list_set(store, &q(UpdatedAt, Gt, t(60))).await,
        set(&[1, 2, 3])
    );
    assert_eq!(
        list_set(store, &q(UpdatedAt, Lte, t(60))).await,
        set(&[4, 5])
    );
    // Comparison is on microseconds: the nanoseconds of the query are dropped too.
    let nanos = t(30) + time::Duration::nanoseconds(999);
    assert_eq!(list_set(store, &q(CreatedAt, Eq, nanos)).await, set(&[3]));
    let range = ImageListQuery {
        times: vec![
            (CreatedAt, Gt, t(10)),
            (CreatedAt, Lt, t(50)),
            (UpdatedAt, Neq, t(70)),
        ],
        ..project_query(P1)
    };
    assert_eq!(list_set(store, &range).await, set(&[2, 4]));
}

pub async fn list_size_filters(store: &dyn MetaStore) {
    for (n, size) in [(1u128, 0i64), (2, 10), (3, 20), (4, 30)] {
        let mut img = image(n, P1, Visibility::Private);
        img.data = Some(data(n, size));
        store.create_image(&img).await.unwrap();
    }
    let mut no_data = image(5, P1, Visibility::Private);
    no_data.data = None;
    no_data.status = ImageStatus::Queued;
    store.create_image(&no_data).await.unwrap();
    let q = |min: Option<i64>, max: Option<i64>| ImageListQuery {
        size_min: min,
        size_max: max,
        ..project_query(P1)
    };
    assert_eq!(list_set(store, &q(None, None)).await, set(&[1, 2, 3, 4, 5]));
    assert_eq!(list_set(store, &q(Some(10), None)).await, set(&[2, 3, 4]));
    assert_eq!(
        list_set(store, &q(None, Some(10))).await,
        set(&[1, 2]),
        "images without data are left out"
    );
    assert_eq!(list_set(store, &q(Some(10), Some(20))).await, set(&[2, 3]));
    assert_eq!(list_set(store, &q(Some(0), None)).await, set(&[1, 2, 3, 4]));
    assert_eq!(list_set(store, &q(Some(21), Some(20))).await, set(&[]));
}

fn set_of(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn map_of(items: &[(&str, &str)]) -> BTreeMap<String, String> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub async fn list_tags_and_properties(store: &dyn MetaStore) {
    type Spec<'a> = (u128, &'a [&'a str], &'a [(&'a str, &'a str)]);
    let specs: [Spec; 4] = [
        (1, &["a", "b"], &[("os", "linux"), ("arch", "x86_64")]),
        (2, &["a"], &[("os", "linux")]),
        (3, &["b", "c"], &[("os", "windows"), ("arch", "x86_64")]),
        (4, &[], &[]),
    ];
    for (n, tags, props) in specs {
        let mut img = image(n, P1, Visibility::Private);
        img.tags = set_of(tags);
        img.properties = map_of(props);
        store.create_image(&img).await.unwrap();
    }
    let q = |tags: &[&str], props: &[(&str, &str)]| ImageListQuery {
        tags: tags.iter().map(|s| s.to_string()).collect(),
        properties: props
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..project_query(P1)
    };
    assert_eq!(list_set(store, &q(&["a"], &[])).await, set(&[1, 2]));
    assert_eq!(list_set(store, &q(&["a", "b"], &[])).await, set(&[1]));
    assert_eq!(list_set(store, &q(&["b", "b"], &[])).await, set(&[1, 3]));
    assert_eq!(list_set(store, &q(&["z"], &[])).await, set(&[]));
    assert_eq!(
        list_set(store, &q(&["A"], &[])).await,
        set(&[]),
        "tags are case-sensitive"
    );
    assert_eq!(
        list_set(store, &q(&[], &[("os", "linux")])).await,
        set(&[1, 2])
    );
    assert_eq!(
        list_set(store, &q(&[], &[("os", "linux"), ("arch", "x86_64")])).await,
        set(&[1])
    );
    assert_eq!(
        list_set(store, &q(&[], &[("arch", "x86_64")])).await,
        set(&[1, 3])
    );
    assert_eq!(list_set(store, &q(&[], &[("os", "Linux")])).await, set(&[]));
    assert_eq!(list_set(store, &q(&[], &[("linux", "os")])).await, set(&[]));
    assert_eq!(
        list_set(store, &q(&["c"], &[("arch", "x86_64")])).await,
        set(&[3])
    );
    assert_eq!(
        list_set(store, &q(&["a"], &[("os", "windows")])).await,
        set(&[])
    );
    // Listings carry the tags and properties of each image.
    let page = store.list_images(&q(&["a", "b"], &[])).await.unwrap();
    assert_eq!(page[0].tags, set_of(&["a", "b"]));
    assert_eq!(
        page[0].properties,
        map_of(&[("os", "linux"), ("arch", "x86_64")])
    );
}

/// Images with deliberately colliding and missing sort values.
async fn sort_fixture(store: &dyn MetaStore) -> Vec<Image> {
    let names = [
        Some("b"),
        None,
        Some("a"),
        Some("b"),
        Some(""),
        Some("B"),
        None,
        Some("a"),
    ];
    let statuses = [
        ImageStatus::Active,
        ImageStatus::Queued,
        ImageStatus::Saving,
        ImageStatus::Active,
    ];
    let disks = [Some("raw"), Some("qcow2"), None, Some("raw")];
    let containers = [Some("bare"), None, Some("ova")];
    let sizes = [Some(10), None, Some(0), Some(10), Some(5)];
    let mut images = Vec::new();
    for i in 0..16usize {
        let n = 100 + (i as u128 * 7919) % 97; // ids not in creation order
        let mut img = image(n, P1, Visibility::Private);
        img.name = names[i % names.len()].map(String::from);
        img.status = statuses[i % statuses.len()];
        img.disk_format = disks[i % disks.len()].map(String::from);
        img.container_format = containers[i % containers.len()].map(String::from);
        img.data = sizes[i % sizes.len()].map(|s| data(n, s));
        img.created_at = t((i as i64 % 5) * 10); // ties on created_at
        img.updated_at = t(100 - (i as i64 % 3));
        store.create_image(&img).await.unwrap();
        images.push(store.get_image(img.id).await.unwrap().unwrap());
    }
    images
}

/// A sort value as every store orders it: missing text as "", missing size as -1.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SortValue {
    Int(i64),
    Text(String),
}

fn sort_value(key: SortKey, img: &Image) -> SortValue {
    let text = |v: &Option<String>| SortValue::Text(v.clone().unwrap_or_default());
    match key {
        SortKey::Name => text(&img.name),
        SortKey::Status => SortValue::Text(img.status.as_str().into()),
        SortKey::ContainerFormat => text(&img.container_format),
        SortKey::DiskFormat => text(&img.disk_format),
        SortKey::Size => SortValue::Int(img.size().unwrap_or(-1)),
        SortKey::Id => SortValue::Text(img.id.to_string()),
        SortKey::CreatedAt => SortValue::Int(to_micros(img.created_at)),
        SortKey::UpdatedAt => SortValue::Int(to_micros(img.updated_at)),
    }
}

fn expected_order(images: &[Image], sort: &[(SortKey, SortDir)]) -> Vec<uuid::Uuid> {
    let mut sorted: Vec<&Image> = images.iter().collect();
    sorted.sort_by(|a, b| {
        sort.iter()
            .map(|&(key, dir)| {
                let ord = sort_value(key, a).cmp(&sort_value(key, b));
                if dir == SortDir::Desc {
                    ord.reverse()
                } else {
                    ord
                }
            })
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    sorted.into_iter().map(|i| i.id).collect()
}

const SORT_KEYS: [SortKey; 8] = [
    SortKey::Name,
    SortKey::Status,
    SortKey::ContainerFormat,
    SortKey::DiskFormat,
    SortKey::Size,
    SortKey::Id,
    SortKey::CreatedAt,
    SortKey::UpdatedAt,
];

fn sample_sorts() -> Vec<Vec<(SortKey, SortDir)>> {
    let mut sorts = vec![Vec::new()];
    for key in SORT_KEYS {
        for dir in [SortDir::Asc, SortDir::Desc] {
            sorts.push(vec![(key, dir)]);
        }
    }
    sorts.push(vec![
        (SortKey::Name, SortDir::Asc),
        (SortKey::Size, SortDir::Desc),
    ]);
    sorts.push(vec![
        (SortKey::Status, SortDir::Desc),
        (SortKey::Name, SortDir::Asc),
        (SortKey::Id, SortDir::Asc),
    ]);
    sorts.push(vec![
        (SortKey::DiskFormat, SortDir::Asc),
        (SortKey::CreatedAt, SortDir::Asc),
    ]);
    sorts.push(vec![
        (SortKey::UpdatedAt, SortDir::Asc),
        (SortKey::ContainerFormat, SortDir::Desc),
    ]);
    sorts
}

pub async fn list_sort_keys(store: &dyn MetaStore) {
    let images = sort_fixture(store).await;
    for sort in sample_sorts() {
        let q = ImageListQuery {
            sort: sort.clone(),
            limit: 100,
            ..project_query(P1)
        };
        let expected = expected_order(&images, &q.full_sort());
        assert_eq!(list_ids(store, &q).await, expected, "sort {sort:?}");
    }
    // The default order is newest first, then id descending.
    let q = ImageListQuery {
        limit: 100,
        ..project_query(P1)
    };
    let newest = list_ids(store, &q).await;
    let expected = expected_order(
        &images,
        &[
            (SortKey::CreatedAt, SortDir::Desc),
            (SortKey::Id, SortDir::Desc),
        ],
    );
    assert_eq!(newest, expected);
}

async fn walk_pages(store: &dyn MetaStore, query: &ImageListQuery) -> Vec<uuid::Uuid> {
    let mut query = query.clone();
    let mut seen = Vec::new();
    loop {
        let page = list_ids(store, &query).await;
        assert!(page.len() <= query.limit);
        seen.extend(&page);
        if page.len() < query.limit {
            return seen;
        }
        query.marker = page.last().copied();
    }
}

pub async fn list_pagination_walks_every_image(store: &dyn MetaStore) {
    let images = sort_fixture(store).await;
    for sort in sample_sorts() {
        for limit in [1, 3, 16] {
            let q = ImageListQuery {
                sort: sort.clone(),
                limit,
                ..project_query(P1)
            };
            let expected = expected_order(&images, &q.full_sort());
            assert_eq!(
                walk_pages(store, &q).await,
                expected,
                "sort {sort:?}, limit {limit}"
            );
        }
    }
    // With a filter, pages walk only the matching images.
    let q = ImageListQuery {
        sort: vec![(SortKey::Name, SortDir::Asc)],
        size_min: Some(5),
        limit: 2,
        ..project_query(P1)
    };
    let matching: Vec<Image> = images
        .iter()
        .filter(|i| i.size().is_some_and(|s| s >= 5))
        .cloned()
        .collect();
    assert_eq!(
        walk_pages(store, &q).await,
        expected_order(&matching, &q.full_sort())
    );
}

pub async fn list_marker_rules(store: &dyn MetaStore) {
    visibility_fixture(store).await;
    let mut deleted = image(20, P2, Visibility::Public);
    deleted.status = ImageStatus::Deleted;
    deleted.deleted_at = Some(t(20));
    let mut killed = image(21, P2, Visibility::Public);
    killed.status = ImageStatus::Killed;
    create_all(store, &[deleted, killed]).await;
    let with_marker = |q: ImageListQuery, marker: u128| ImageListQuery {
        marker: Some(id(marker)),
        ..q
    };
    let marker_err = |r: MetaResult<Vec<Image>>, m: u128| match r {
        Err(MetaError::MarkerNotFound(got)) => assert_eq!(got, id(m)),
        other => panic!("marker {m}: expected MarkerNotFound, got {other:?}"),
    };
    // Unknown, deleted, or invisible to the caller (a member row on a private image grants nothing).
    for m in [99, 20, 2, 10] {
        marker_err(
            store.list_images(&with_marker(project_query(P2), m)).await,
            m,
        );
    }
    marker_err(store.list_images(&with_marker(admin_query(), 99)).await, 99);
    marker_err(store.list_images(&with_marker(admin_query(), 20)).await, 20);
    // Community images are visible to everyone, even where the listing leaves them out.
    let q = ImageListQuery {
        sort: vec![(SortKey::Id, SortDir::Asc)],
        ..with_marker(project_query(P2), 4)
    };
    assert_eq!(list_ids(store, &q).await, [5, 6, 7, 8, 9].map(id));
    // Shared with P3 as rejected: visible as a marker (any member status), though not listed.
    assert!(
        store
            .list_images(&with_marker(project_query(P3), 3))
            .await
            .is_ok()
    );
    // Shared with P2 as pending (not listed by default) still works as a marker.
    let q = ImageListQuery {
        sort: vec![(SortKey::Id, SortDir::Desc)],
        ..with_marker(project_query(P2), 11)
    };
    assert_eq!(list_ids(store, &q).await, [9, 8, 7, 6, 5, 3, 1].map(id));
    // A marker that fails the filters still positions the page.
    let q = ImageListQuery {
        sort: vec![(SortKey::Id, SortDir::Asc)],
        visibility: Some(VisibilityFilter::Only(Visibility::Public)),
        ..with_marker(project_query(P2), 6)
    };
    assert_eq!(list_ids(store, &q).await, vec![id(9)]);
    // A killed image is visible, so it may be a marker although it is never listed.
    let q = ImageListQuery {
        sort: vec![(SortKey::Id, SortDir::Asc)],
        ..with_marker(admin_query(), 21)
    };
    assert_eq!(list_ids(store, &q).await, Vec::<uuid::Uuid>::new());
    let q = ImageListQuery {
        sort: vec![(SortKey::Id, SortDir::Desc)],
        limit: 2,
        ..with_marker(admin_query(), 21)
    };
    assert_eq!(list_ids(store, &q).await, vec![id(11), id(10)]);
    // Admin may use any live image as a marker.
    let q = ImageListQuery {
        sort: vec![(SortKey::Id, SortDir::Asc)],
        ..with_marker(admin_query(), 10)
    };
    assert_eq!(list_ids(store, &q).await, vec![id(11)]);
}

pub async fn list_limit(store: &dyn MetaStore) {
    for n in 1..=30 {
        store
            .create_image(&image(n, P1, Visibility::Private))
            .await
            .unwrap();
    }
    let q = |limit: usize| ImageListQuery {
        limit,
        ..project_query(P1)
    };
    assert_eq!(list_ids(store, &q(0)).await, Vec::<uuid::Uuid>::new());
    assert_eq!(list_ids(store, &q(1)).await, vec![id(30)]);
    assert_eq!(
        list_ids(store, &project_query(P1)).await.len(),
        ims_domain::query::DEFAULT_LIST_LIMIT
    );
    assert_eq!(
        list_ids(store, &q(30)).await,
        (1..=30).rev().map(id).collect::<Vec<_>>()
    );
    assert_eq!(list_ids(store, &q(1000)).await.len(), 30);
}

/// Differential check against [`crate::memory::MemoryStore`] on random data and queries.
pub async fn random_queries_agree_with_memory(store: &dyn MetaStore) {
    let reference = crate::memory::MemoryStore::new();
    compare_random(&reference, store, 0x1d_5eed, 400).await;
}

/// A small deterministic PRNG (xorshift64*), so failures reproduce from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const OWNERS: [&str; 4] = [P1, P2, P3, "p4"];
const NAMES: [Option<&str>; 6] = [None, Some(""), Some("a"), Some("b"), Some("B"), Some("ü")];
const TAGS: [&str; 4] = ["t1", "t2", "t3", "T1"];
const PROP_KEYS: [&str; 3] = ["os", "arch", "hw"];
const PROP_VALUES: [&str; 3] = ["x", "y", ""];

fn random_image(rng: &mut Rng, n: u128) -> Image {
    let owner = if rng.chance(5) {
        None
    } else {
        Some(rng.pick(&OWNERS).to_string())
    };
    let mut img = Image::new(
        uuid::Uuid::from_u128(rng.next() as u128 * 1000 + n),
        owner,
        t(rng.below(8) as i64),
    );
    img.updated_at = t(rng.below(4) as i64 * 1000 + rng.below(999) as i64);
    img.visibility = *rng.pick(&Visibility::ALL);
    img.status = *rng.pick(&ImageStatus::ALL);
    if img.status == ImageStatus::Deleted || rng.chance(3) {
        img.deleted_at = Some(t(50));
    }
    img.name = rng.pick(&NAMES).map(String::from);
    img.protected = rng.chance(30);
    img.os_hidden = rng.chance(15);
    img.disk_format = rng
        .pick(&[None, Some("raw"), Some("qcow2")])
        .map(String::from);
    img.container_format = rng
        .pick(&[None, Some("bare"), Some("ova")])
        .map(String::from);
    if rng.chance(70) {
        img.data = Some(data(rng.below(6) as u128, rng.below(5) as i64 * 10));
    }
    for tag in TAGS {
        if rng.chance(30) {
            img.tags.insert(tag.into());
        }
    }
    for key in PROP_KEYS {
        if rng.chance(40) {
            img.properties
                .insert(key.into(), rng.pick(&PROP_VALUES).to_string());
        }
    }
    img
}

fn random_query(rng: &mut Rng, ids: &[uuid::Uuid]) -> ImageListQuery {
    let scope = if rng.chance(25) {
        ListScope::All
    } else {
        ListScope::Project(rng.pick(&OWNERS).to_string())
    };
    let mut q = ImageListQuery::new(scope);
    q.visibility = match rng.below(4) {
        0 | 1 => None,
        2 => Some(VisibilityFilter::All),
        _ => Some(VisibilityFilter::Only(*rng.pick(&Visibility::ALL))),
    };
    if rng.chance(40) {
        q.member_status = match rng.below(4) {
            0 => MemberStatusFilter::All,
            _ => MemberStatusFilter::Only(*rng.pick(&MemberStatus::ALL)),
        };
    }
    if rng.chance(25) {
        let field = *rng.pick(&[
            MatchField::Name,
            MatchField::Status,
            MatchField::DiskFormat,
            MatchField::Owner,
        ]);
        let pool: Vec<String> = match field {
            MatchField::Name => NAMES.iter().flatten().map(|s| s.to_string()).collect(),
            MatchField::Status => ImageStatus::ALL
                .iter()
                .map(|s| s.as_str().to_string())
                .collect(),
            MatchField::DiskFormat => vec!["raw".into(), "qcow2".into()],
            _ => OWNERS.iter().map(|s| s.to_string()).collect(),
        };
        let values = (0..rng.below(3) + 1)
            .map(|_| rng.pick(&pool).clone())
            .collect();
        q.matches.push((field, values));
    }
    if rng.chance(10) {
        q.matches
            .push((MatchField::Checksum, vec![format!("md5-{}", rng.below(6))]));
    }
    if rng.chance(15) {
        q.protected = Some(rng.chance(50));
    }
    if rng.chance(20) {
        q.os_hidden = *rng.pick(&[None, Some(true), Some(false)]);
    }
    if rng.chance(15) {
        let field = *rng.pick(&[TimeField::CreatedAt, TimeField::UpdatedAt]);
        let op = *rng.pick(&[
            CmpOp::Eq,
            CmpOp::Neq,
            CmpOp::Gt,
            CmpOp::Gte,
            CmpOp::Lt,
            CmpOp::Lte,
        ]);
        q.times.push((
            field,
            op,
            t(rng.below(8) as i64
                * if field == TimeField::CreatedAt {
                    1
                } else {
                    500
                }),
        ));
    }
    if rng.chance(15) {
        q.size_min = Some(rng.below(5) as i64 * 10);
    }
    if rng.chance(15) {
        q.size_max = Some(rng.below(5) as i64 * 10);
    }
    if rng.chance(20) {
        q.tags = (0..rng.below(2) + 1)
            .map(|_| rng.pick(&TAGS).to_string())
            .collect();
    }
    if rng.chance(20) {
        q.properties.push((
            rng.pick(&PROP_KEYS).to_string(),
            rng.pick(&PROP_VALUES).to_string(),
        ));
    }
    for _ in 0..rng.below(3) {
        let key = *rng.pick(&SORT_KEYS);
        if !q.sort.iter().any(|(k, _)| *k == key) {
            q.sort
                .push((key, *rng.pick(&[SortDir::Asc, SortDir::Desc])));
        }
    }
    if rng.chance(40) {
        q.marker = Some(if rng.chance(90) {
            *rng.pick(ids)
        } else {
            uuid::Uuid::from_u128(7)
        });
    }
    q.limit = *rng.pick(&[0, 1, 2, 5, 10, 1000]);
    q
}

fn outcome(result: MetaResult<Vec<Image>>) -> Result<Vec<Image>, String> {
    result.map_err(|e| match e {
        MetaError::MarkerNotFound(id) => format!("MarkerNotFound({id})"),
        other => panic!("list_images failed: {other}"),
    })
}

/// Fills two empty stores with the same random images and members, then checks that `queries`
/// random listings (and full page walks) give identical answers.
pub async fn compare_random(a: &dyn MetaStore, b: &dyn MetaStore, seed: u64, queries: usize) {
    let mut rng = Rng(seed | 1);
    let mut ids = Vec::new();
    for n in 0..120 {
        let img = random_image(&mut rng, n);
        ids.push(img.id);
        a.create_image(&img).await.unwrap();
        b.create_image(&img).await.unwrap();
        for project in OWNERS {
            if rng.chance(20) {
                let m = member(
                    img.id,
                    project,
                    *rng.pick(&MemberStatus::ALL),
                    rng.below(3) as i64,
                );
                a.add_member(&m).await.unwrap();
                b.add_member(&m).await.unwrap();
            }
        }
    }
    let (mut non_empty, mut marker_errors) = (0, 0);
    for i in 0..queries {
        let q = random_query(&mut rng, &ids);
        let (left, right) = (
            outcome(a.list_images(&q).await),
            outcome(b.list_images(&q).await),
        );
        assert_eq!(left, right, "query #{i} {q:?}");
        match &left {
            Ok(page) if !page.is_empty() => non_empty += 1,
            Ok(_) => {}
            Err(_) => marker_errors += 1,
        }
        if i % 10 == 0 && q.limit > 0 {
            let walk = ImageListQuery {
                marker: None,
                limit: q.limit.min(7),
                ..q.clone()
            };
            assert_eq!(
                walk_pages(a, &walk).await,
                walk_pages(b, &walk).await,
                "walk #{i} {walk:?}"
            );
        }
    }
    // Guard against a generator so strict that it compares only empty pages.
    assert!(
        non_empty * 2 > queries,
        "only {non_empty} of {queries} random queries returned images"
    );
    assert!(
        marker_errors > 0,
        "no random query exercised MarkerNotFound"
    );
}
