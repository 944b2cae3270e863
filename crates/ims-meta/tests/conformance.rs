//! Runs the conformance suite against every backend: the in-memory fake, SQLite on a temp file,
//! and PostgreSQL at `IMS_TEST_PG_URL` (required unless `IMS_SKIP_PG=1`).

mod memory {
    use ims_meta::conformance::TestStore;
    use ims_meta::memory::MemoryStore;

    ims_meta::conformance_tests!(async { TestStore::new(MemoryStore::new(), ()) });
}
