//! Timing of `list_images` on 100,000 images in SQLite (ignored by default; run with
//! `cargo test -p ims-meta --release --test list_bench -- --ignored --nocapture`).
//! Fails if the median of the default listing exceeds [`BUDGET`].

use std::time::{Duration, Instant};

use ims_domain::image::ImageData;
use ims_domain::query::VisibilityFilter;
use ims_domain::{
    Image, ImageListQuery, ImageStatus, ListScope, SortDir, SortKey, Visibility, from_micros,
};
use ims_meta::MetaStore;
use ims_meta::sql::SqlStore;

const IMAGES: usize = 100_000;
const PROJECTS: usize = 100;
const PAGE: usize = 100;
const RUNS: usize = 200;
/// The listing budget the API benchmark holds us to.
const BUDGET: Duration = Duration::from_micros(1500);

fn bench_image(n: usize) -> Image {
    let id = uuid::Uuid::from_u128(0x1000_0000 + n as u128 * 7_919);
    let owner = format!("project-{}", n % PROJECTS);
    let mut img = Image::new(
        id,
        Some(owner),
        from_micros(1_700_000_000_000_000 + n as i64 * 1000),
    );
    img.visibility = match n % 10 {
        0 => Visibility::Public,
        1 => Visibility::Shared,
        2 => Visibility::Community,
        _ => Visibility::Private,
    };
    img.status = ImageStatus::Active;
    img.name = Some(format!("image-{:06}", (n * 7_919) % IMAGES));
    img.disk_format = Some("qcow2".into());
    img.container_format = Some("bare".into());
    img.data = Some(ImageData {
        blob_key: format!("blob-{n}"),
        stores: vec!["local".into()],
        size: (n as i64 % 1000) * 1_048_576,
        checksum: format!("{n:032x}"),
        os_hash_algo: "sha512".into(),
        os_hash_value: format!("{n:0128x}"),
        virtual_size: Some(10 << 30),
    });
    img.tags = [format!("tag-{}", n % 50), "bench".to_owned()]
        .into_iter()
        .collect();
    img.properties = [
        (
            "os_distro",
            if n.is_multiple_of(3) {
                "ubuntu"
            } else {
                "debian"
            },
        ),
        ("hw_arch", "x86_64"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    img
}

/// Median and minimum time of `RUNS` listings, and the page length. The minimum is the cost
/// without interference from other processes.
async fn timing(store: &SqlStore, query: &ImageListQuery) -> (Duration, Duration, usize) {
    let mut times = Vec::with_capacity(RUNS);
    let mut len = 0;
    for _ in 0..RUNS {
        let start = Instant::now();
        len = store.list_images(query).await.expect("list_images").len();
        times.push(start.elapsed());
    }
    times.sort();
    (times[RUNS / 2], times[0], len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: fills 100,000 images"]
async fn list_100_of_100k_images() {
    // IMS_BENCH_DB keeps the filled database between runs.
    let dir = tempfile::tempdir().unwrap();
    let path = std::env::var("IMS_BENCH_DB")
        .unwrap_or_else(|_| dir.path().join("bench.db").display().to_string());
    let store = SqlStore::connect(&format!("sqlite://{path}?mode=rwc"))
        .await
        .unwrap();
    if store
        .get_image(bench_image(IMAGES - 1).id)
        .await
        .unwrap()
        .is_none()
    {
        let start = Instant::now();
        for n in 0..IMAGES {
            store.create_image(&bench_image(n)).await.unwrap();
        }
        println!("created {IMAGES} images in {:?}", start.elapsed());
    }

    let page = |scope: ListScope| ImageListQuery {
        limit: PAGE,
        ..ImageListQuery::new(scope)
    };
    let admin = page(ListScope::All);
    let (default_admin, fastest, len) = timing(&store, &admin).await;
    assert_eq!(len, PAGE);
    let mut cases = vec![("admin, default order", default_admin, fastest)];
    let project = page(ListScope::Project("project-7".into()));
    let second = store
        .list_images(&project)
        .await
        .unwrap()
        .last()
        .map(|i| i.id);
    let queries = [
        ("project, default order", project.clone()),
        (
            "project, second page",
            ImageListQuery {
                marker: second,
                ..project.clone()
            },
        ),
        (
            "project, visibility=all",
            ImageListQuery {
                visibility: Some(VisibilityFilter::All),
                ..project.clone()
            },
        ),
        (
            "project, tag filter",
            ImageListQuery {
                tags: vec!["tag-7".into()],
                ..project.clone()
            },
        ),
        (
            "project, property filter",
            ImageListQuery {
                properties: vec![("os_distro".into(), "ubuntu".into())],
                ..project.clone()
            },
        ),
        (
            "admin, sort name asc",
            ImageListQuery {
                sort: vec![(SortKey::Name, SortDir::Asc)],
                ..admin.clone()
            },
        ),
    ];
    for (label, query) in queries {
        let (median, fastest, len) = timing(&store, &query).await;
        assert!(len > 0, "{label}: empty page");
        cases.push((label, median, fastest));
    }
    for (label, median, fastest) in &cases {
        println!("{label:<28} median {median:>10.3?}  min {fastest:>10.3?}  ({PAGE} of {IMAGES})");
    }
    assert!(
        default_admin < BUDGET,
        "default listing took {default_admin:?}, budget {BUDGET:?}"
    );
}
