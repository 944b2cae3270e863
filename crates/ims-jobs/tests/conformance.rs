//! Runs the job-store conformance suite against the in-memory fake, SQLite on a temp file, and
//! PostgreSQL at `IMS_TEST_PG_URL` (required unless `IMS_SKIP_PG=1`), each test in a fresh store.

use ims_jobs::conformance::TestJobStore;

mod memory {
    use ims_jobs::conformance::TestJobStore;
    use ims_jobs::memory::MemoryJobStore;

    ims_jobs::job_store_tests!(async { Some(TestJobStore::new(MemoryJobStore::new(), ())) });
}

mod sqlite {
    ims_jobs::job_store_tests!(super::sqlite_store());
}

mod postgres {
    ims_jobs::job_store_tests!(super::postgres_store());
}

async fn sqlite_store() -> Option<TestJobStore> {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("meta.db").display());
    let meta = ims_meta::sql::SqlStore::connect(&url)
        .await
        .expect("connect to SQLite");
    Some(TestJobStore::new(
        ims_jobs::sql::SqlJobStore::new(&meta),
        dir,
    ))
}

/// A fresh schema in the database at `IMS_TEST_PG_URL`, dropped when the test ends.
async fn postgres_store() -> Option<TestJobStore> {
    let base = pg_url()?;
    let schema = format!("ims_jobs_test_{}", uuid::Uuid::new_v4().simple());
    run_admin_sql(&base, &format!("CREATE SCHEMA {schema}")).await;
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
    let meta = ims_meta::sql::SqlStore::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect to PostgreSQL schema {schema}: {e}"));
    let store = ims_jobs::sql::SqlJobStore::new(&meta);
    Some(TestJobStore::new(store, DropSchema { base, schema }))
}

/// `IMS_TEST_PG_URL`, or `None` (skip) when `IMS_SKIP_PG=1`; unset without the opt-out fails.
fn pg_url() -> Option<String> {
    match std::env::var("IMS_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("IMS_SKIP_PG").as_deref() == Ok("1") => None,
        _ => panic!(
            "IMS_TEST_PG_URL is not set: start a server with `scripts/pg-test-server.sh start` \
             and export its URL, or set IMS_SKIP_PG=1 to skip the PostgreSQL job-store tests"
        ),
    }
}

async fn run_admin_sql(url: &str, sql: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
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
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(run_admin_sql(&base, &sql));
        })
        .join();
        if dropped.is_err() && !std::thread::panicking() {
            panic!("dropping schema {} failed", self.schema);
        }
    }
}
