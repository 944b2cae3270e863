//! Runs the metadef conformance suite against SQLite on a temp file and PostgreSQL at
//! `IMS_TEST_PG_URL` (required unless `IMS_SKIP_PG=1`), each check in a fresh store.

use ims_meta::metadefs::conformance;
use ims_meta::sql::SqlStore;

/// A store plus whatever must live as long as it (temp dir, PostgreSQL schema).
struct Fresh {
    store: SqlStore,
    _guard: Box<dyn std::any::Any>,
}

async fn sqlite() -> Fresh {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("meta.db").display());
    let store = SqlStore::connect(&url).await.expect("connect to SQLite");
    Fresh {
        store,
        _guard: Box::new(dir),
    }
}

async fn postgres() -> Option<Fresh> {
    let base = match std::env::var("IMS_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var("IMS_SKIP_PG").as_deref() == Ok("1") => return None,
        _ => panic!(
            "IMS_TEST_PG_URL is not set: start a server with `scripts/pg-test-server.sh start` \
             or set IMS_SKIP_PG=1 to skip the PostgreSQL metadef tests"
        ),
    };
    let schema = format!("ims_md_test_{}", uuid::Uuid::new_v4().simple());
    admin_sql(&base, &format!("CREATE SCHEMA {schema}")).await;
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
    let store = SqlStore::connect(&url)
        .await
        .expect("connect to PostgreSQL");
    Some(Fresh {
        store,
        _guard: Box::new(DropSchema { base, schema }),
    })
}

async fn admin_sql(url: &str, sql: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .expect("connect to PostgreSQL");
    sqlx::raw_sql(sql)
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = conn.close().await;
}

struct DropSchema {
    base: String,
    schema: String,
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        let (base, sql) = (
            self.base.clone(),
            format!("DROP SCHEMA {} CASCADE", self.schema),
        );
        // Drop runs inside the test's runtime, which cannot be blocked on; use a thread of our own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(admin_sql(&base, &sql));
        })
        .join();
    }
}

#[tokio::test]
async fn sqlite_namespace_lifecycle() {
    conformance::namespace_lifecycle(&sqlite().await.store).await;
}

#[tokio::test]
async fn sqlite_namespace_updates() {
    conformance::namespace_updates(&sqlite().await.store).await;
}

#[tokio::test]
async fn sqlite_resource_types_and_seeds() {
    conformance::resource_types_and_seeds(&sqlite().await.store).await;
}

#[tokio::test]
async fn sqlite_survives_reopening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("meta.db").display());
    let ns = conformance::namespace("OS::Test::Kept", 1);
    {
        let store = SqlStore::connect(&url).await.unwrap();
        ims_meta::metadefs::MetadefStore::create_namespace(&store, &ns)
            .await
            .unwrap();
        store.close().await;
    }
    let store = SqlStore::connect(&url).await.unwrap();
    let got = ims_meta::metadefs::MetadefStore::get_namespace(&store, "OS::Test::Kept").await;
    assert_eq!(got.unwrap(), Some(ns));
}

#[tokio::test]
async fn postgres_namespace_lifecycle() {
    if let Some(fresh) = postgres().await {
        conformance::namespace_lifecycle(&fresh.store).await;
    }
}

#[tokio::test]
async fn postgres_namespace_updates() {
    if let Some(fresh) = postgres().await {
        conformance::namespace_updates(&fresh.store).await;
    }
}

#[tokio::test]
async fn postgres_resource_types_and_seeds() {
    if let Some(fresh) = postgres().await {
        conformance::resource_types_and_seeds(&fresh.store).await;
    }
}
