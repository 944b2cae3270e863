//! The conformance suite every [`JobStore`] must pass, instantiated per backend with
//! [`job_store_tests!`](crate::job_store_tests). Each test takes a fresh, empty store and
//! panics on the first divergence from the semantics documented on [`JobStore`].

use std::any::Any;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;
use time::macros::datetime;
use uuid::Uuid;

use crate::{ClaimRequest, JobError, JobFilter, JobStatus, JobStore, NewJob};

/// A store under test plus whatever must live as long as it (a temp dir, a schema to drop).
pub struct TestJobStore {
    pub store: Arc<dyn JobStore>,
    _guard: Box<dyn Any + Send + Sync>,
}

impl TestJobStore {
    pub fn new(store: impl JobStore, guard: impl Any + Send + Sync) -> TestJobStore {
        TestJobStore {
            store: Arc::new(store),
            _guard: Box::new(guard),
        }
    }
}

/// Generates one `#[tokio::test]` per conformance test; `$make` is an async expression that
/// yields a fresh, empty [`TestJobStore`] each time, or `None` to skip the test.
#[macro_export]
macro_rules! job_store_tests {
    ($make:expr) => {
        $crate::job_store_tests!(@tests $make;
            submit_and_get, submit_duplicate, submit_invalid, list_filters_and_order,
            claim_order_and_kinds, claim_takes_lease, expired_lease_is_reclaimable,
            heartbeat_extends_lease_and_saves_state, lease_holder_only, succeed_and_fail,
            retry_requeues_until_exhausted, reap_exhausted, delete_expired,
            concurrent_claims_are_exclusive
        );
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let fixture: Option<$crate::conformance::TestJobStore> = $make.await;
                let Some(fixture) = fixture else {
                    eprintln!("skipped: backend not configured");
                    return;
                };
                $crate::conformance::$name(fixture.store.clone()).await;
            }
        )*
    };
}

const T0: OffsetDateTime = datetime!(2026-03-01 12:00:00 UTC);
const LEASE: Duration = Duration::from_secs(30);
const KEEP: Duration = Duration::from_secs(3600);

fn at(seconds: i64) -> OffsetDateTime {
    T0 + time::Duration::seconds(seconds)
}

fn claim_of(kinds: &[&str], owner: &str) -> ClaimRequest {
    ClaimRequest {
        kinds: kinds.iter().map(|k| k.to_string()).collect(),
        owner: owner.to_owned(),
        lease: LEASE,
    }
}

fn new_job(kind: &str, project: &str) -> NewJob {
    NewJob::new(kind, project, json!({"kind": kind}))
}

pub async fn submit_and_get(store: Arc<dyn JobStore>) {
    let mut new = new_job("import", "p1");
    new.user_id = Some("u1".into());
    new.image_id = Some(Uuid::new_v4());
    new.parent_id = Some(Uuid::new_v4());
    new.request_id = Some("req-abc".into());
    new.payload = json!({"method": "web-download", "uri": "http://x/", "n": [1, 2]});
    new.max_attempts = 5;
    let submitted = store.submit(new.clone(), at(0)).await.unwrap();
    assert_eq!(submitted.status, JobStatus::Queued);
    assert_eq!(submitted.attempts, 0);
    let got = store.get(new.id).await.unwrap().expect("stored");
    assert_eq!(got, submitted);
    assert_eq!(got.payload, new.payload);
    assert_eq!(got.image_id, new.image_id);
    assert_eq!(got.parent_id, new.parent_id);
    assert_eq!(got.request_id.as_deref(), Some("req-abc"));
    assert_eq!(got.user_id.as_deref(), Some("u1"));
    assert_eq!(got.max_attempts, 5);
    assert_eq!(
        (got.created_at, got.updated_at, got.not_before),
        (at(0), at(0), at(0))
    );
    assert_eq!(got.lease_owner, None);
    assert!(store.get(Uuid::new_v4()).await.unwrap().is_none());
}

pub async fn submit_duplicate(store: Arc<dyn JobStore>) {
    let new = new_job("import", "p1");
    store.submit(new.clone(), at(0)).await.unwrap();
    let err = store.submit(new.clone(), at(1)).await.unwrap_err();
    assert!(
        matches!(err, JobError::AlreadyExists(id) if id == new.id),
        "{err}"
    );
}

pub async fn submit_invalid(store: Arc<dyn JobStore>) {
    let mut empty_kind = new_job("", "p1");
    empty_kind.kind.clear();
    assert!(matches!(
        store.submit(empty_kind, at(0)).await,
        Err(JobError::Invalid(_))
    ));
    let mut no_attempts = new_job("import", "p1");
    no_attempts.max_attempts = 0;
    assert!(matches!(
        store.submit(no_attempts, at(0)).await,
        Err(JobError::Invalid(_))
    ));
    let long_project = new_job("import", &"p".repeat(crate::MAX_LABEL_LEN + 1));
    assert!(matches!(
        store.submit(long_project, at(0)).await,
        Err(JobError::Invalid(_))
    ));
}

pub async fn list_filters_and_order(store: Arc<dyn JobStore>) {
    let image = Uuid::new_v4();
    let parent = Uuid::new_v4();
    let mut ids = Vec::new();
    for i in 0..6 {
        let mut new = new_job(
            if i % 2 == 0 { "a" } else { "b" },
            if i < 4 { "p1" } else { "p2" },
        );
        if i == 3 {
            new.image_id = Some(image);
            new.parent_id = Some(parent);
        }
        ids.push(new.id);
        store.submit(new, at(i)).await.unwrap();
    }
    let all = store.list(&JobFilter::default()).await.unwrap();
    let listed: Vec<Uuid> = all.iter().map(|j| j.id).collect();
    let newest_first: Vec<Uuid> = ids.iter().rev().copied().collect();
    assert_eq!(listed, newest_first);
    let p1 = JobFilter {
        project: Some("p1".into()),
        ..JobFilter::default()
    };
    assert_eq!(store.list(&p1).await.unwrap().len(), 4);
    let p1_a = JobFilter {
        kind: Some("a".into()),
        ..p1.clone()
    };
    let got: Vec<Uuid> = store
        .list(&p1_a)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(got, vec![ids[2], ids[0]]);
    for filter in [
        JobFilter {
            image_id: Some(image),
            ..JobFilter::default()
        },
        JobFilter {
            parent_id: Some(parent),
            ..JobFilter::default()
        },
    ] {
        let got: Vec<Uuid> = store
            .list(&filter)
            .await
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(got, vec![ids[3]]);
    }
    let limited = JobFilter {
        limit: Some(2),
        ..JobFilter::default()
    };
    assert_eq!(store.list(&limited).await.unwrap().len(), 2);
    let running = JobFilter {
        status: Some(JobStatus::Running),
        ..JobFilter::default()
    };
    assert!(store.list(&running).await.unwrap().is_empty());
    store
        .claim(&claim_of(&["a", "b"], "w"), at(10))
        .await
        .unwrap()
        .unwrap();
    let got: Vec<Uuid> = store
        .list(&running)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(got, vec![ids[0]]);
}

pub async fn claim_order_and_kinds(store: Arc<dyn JobStore>) {
    assert!(
        store
            .claim(&claim_of(&["a"], "w"), at(0))
            .await
            .unwrap()
            .is_none()
    );
    let first_b = new_job("b", "p");
    let first_a = new_job("a", "p");
    let second_a = new_job("a", "p");
    store.submit(first_b.clone(), at(0)).await.unwrap();
    store.submit(first_a.clone(), at(1)).await.unwrap();
    store.submit(second_a.clone(), at(2)).await.unwrap();
    assert!(
        store
            .claim(&claim_of(&[], "w"), at(3))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .claim(&claim_of(&["c"], "w"), at(3))
            .await
            .unwrap()
            .is_none()
    );
    let got = store
        .claim(&claim_of(&["a"], "w"), at(3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.id, first_a.id);
    let got = store
        .claim(&claim_of(&["a", "b"], "w"), at(3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.id, first_b.id);
    let got = store
        .claim(&claim_of(&["a", "b"], "w"), at(3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.id, second_a.id);
    assert!(
        store
            .claim(&claim_of(&["a", "b"], "w"), at(3))
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn claim_takes_lease(store: Arc<dyn JobStore>) {
    let new = new_job("a", "p");
    store.submit(new.clone(), at(0)).await.unwrap();
    let job = store
        .claim(&claim_of(&["a"], "w1"), at(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.status, JobStatus::Running);
    assert_eq!(job.lease_owner.as_deref(), Some("w1"));
    assert_eq!(job.lease_expires_at, Some(at(35)));
    assert_eq!(job.attempts, 1);
    assert_eq!(job.updated_at, at(5));
    assert_eq!(store.get(new.id).await.unwrap().unwrap(), job);
}

pub async fn expired_lease_is_reclaimable(store: Arc<dyn JobStore>) {
    let new = new_job("a", "p");
    store.submit(new.clone(), at(0)).await.unwrap();
    store
        .claim(&claim_of(&["a"], "w1"), at(0))
        .await
        .unwrap()
        .unwrap();
    let state = json!({"step": "downloaded", "bytes": 1024});
    store
        .heartbeat(new.id, "w1", LEASE, Some(&state), at(10))
        .await
        .unwrap();
    // Lease now ends at 40: not claimable before, claimable from then.
    assert!(
        store
            .claim(&claim_of(&["a"], "w2"), at(39))
            .await
            .unwrap()
            .is_none()
    );
    let job = store
        .claim(&claim_of(&["a"], "w2"), at(40))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.id, new.id);
    assert_eq!(job.lease_owner.as_deref(), Some("w2"));
    assert_eq!(job.attempts, 2);
    assert_eq!(
        job.state,
        Some(state),
        "a resumed job keeps its saved state"
    );
    // The first worker lost its lease: its writes are refused.
    let err = store
        .heartbeat(new.id, "w1", LEASE, None, at(41))
        .await
        .unwrap_err();
    assert!(matches!(err, JobError::LeaseLost(_)), "{err}");
    let err = store
        .succeed(new.id, "w1", &json!({}), KEEP, at(41))
        .await
        .unwrap_err();
    assert!(matches!(err, JobError::LeaseLost(_)), "{err}");
}

pub async fn heartbeat_extends_lease_and_saves_state(store: Arc<dyn JobStore>) {
    let new = new_job("a", "p");
    store.submit(new.clone(), at(0)).await.unwrap();
    store
        .claim(&claim_of(&["a"], "w"), at(0))
        .await
        .unwrap()
        .unwrap();
    let job = store
        .heartbeat(new.id, "w", LEASE, None, at(20))
        .await
        .unwrap();
    assert_eq!(job.lease_expires_at, Some(at(50)));
    assert_eq!(job.state, None);
    let state = json!({"copied": ["s1"]});
    let job = store
        .heartbeat(new.id, "w", LEASE, Some(&state), at(21))
        .await
        .unwrap();
    assert_eq!(job.state.as_ref(), Some(&state));
    let job = store
        .heartbeat(new.id, "w", LEASE, None, at(22))
        .await
        .unwrap();
    assert_eq!(
        job.state.as_ref(),
        Some(&state),
        "no state keeps the saved one"
    );
    assert_eq!(store.get(new.id).await.unwrap().unwrap(), job);
}

pub async fn lease_holder_only(store: Arc<dyn JobStore>) {
    let missing = Uuid::new_v4();
    let err = store
        .heartbeat(missing, "w", LEASE, None, at(0))
        .await
        .unwrap_err();
    assert!(
        matches!(err, JobError::NotFound(id) if id == missing),
        "{err}"
    );
    let new = new_job("a", "p");
    store.submit(new.clone(), at(0)).await.unwrap();
    let err = store
        .heartbeat(new.id, "w", LEASE, None, at(0))
        .await
        .unwrap_err();
    assert!(matches!(err, JobError::LeaseLost(_)), "queued job: {err}");
    store
        .claim(&claim_of(&["a"], "w"), at(0))
        .await
        .unwrap()
        .unwrap();
    let err = store
        .fail(new.id, "other", "x", KEEP, at(1))
        .await
        .unwrap_err();
    assert!(matches!(err, JobError::LeaseLost(_)), "other owner: {err}");
    let err = store
        .heartbeat(new.id, "w", LEASE, None, at(30))
        .await
        .unwrap_err();
    assert!(
        matches!(err, JobError::LeaseLost(_)),
        "expired lease: {err}"
    );
    assert_eq!(err.kind(), ims_domain::ErrorKind::Conflict);
}

pub async fn succeed_and_fail(store: Arc<dyn JobStore>) {
    let ok = new_job("a", "p");
    let bad = new_job("a", "p");
    store.submit(ok.clone(), at(0)).await.unwrap();
    store.submit(bad.clone(), at(1)).await.unwrap();
    store
        .claim(&claim_of(&["a"], "w"), at(2))
        .await
        .unwrap()
        .unwrap();
    store
        .claim(&claim_of(&["a"], "w"), at(2))
        .await
        .unwrap()
        .unwrap();
    let result = json!({"image_id": "x"});
    let job = store
        .succeed(ok.id, "w", &result, KEEP, at(3))
        .await
        .unwrap();
    assert_eq!(job.status, JobStatus::Succeeded);
    assert_eq!(job.result, Some(result));
    assert_eq!(
        (job.lease_owner.clone(), job.lease_expires_at),
        (None, None)
    );
    assert_eq!(job.expires_at, Some(at(3603)));
    assert_eq!(store.get(ok.id).await.unwrap().unwrap(), job);
    let job = store
        .fail(bad.id, "w", "checksum mismatch", KEEP, at(4))
        .await
        .unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.fail_reason.as_deref(), Some("checksum mismatch"));
    assert_eq!(job.result, None);
    assert_eq!(store.get(bad.id).await.unwrap().unwrap(), job);
    let err = store
        .succeed(ok.id, "w", &json!({}), KEEP, at(5))
        .await
        .unwrap_err();
    assert!(matches!(err, JobError::LeaseLost(_)), "finished job: {err}");
    assert!(
        store
            .claim(&claim_of(&["a"], "w"), at(100_000))
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn retry_requeues_until_exhausted(store: Arc<dyn JobStore>) {
    let mut new = new_job("a", "p");
    new.max_attempts = 2;
    store.submit(new.clone(), at(0)).await.unwrap();
    store
        .claim(&claim_of(&["a"], "w"), at(0))
        .await
        .unwrap()
        .unwrap();
    let delay = Duration::from_secs(60);
    let job = store
        .retry(new.id, "w", "timeout", delay, KEEP, at(1))
        .await
        .unwrap();
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(job.fail_reason.as_deref(), Some("timeout"));
    assert_eq!(job.not_before, at(61));
    assert_eq!(job.lease_owner, None);
    assert!(
        store
            .claim(&claim_of(&["a"], "w"), at(60))
            .await
            .unwrap()
            .is_none()
    );
    let job = store
        .claim(&claim_of(&["a"], "w"), at(61))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.attempts, 2);
    let job = store
        .retry(new.id, "w", "timeout again", delay, KEEP, at(62))
        .await
        .unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    let reason = job.fail_reason.clone().unwrap();
    assert!(
        reason.contains("2 attempts") && reason.contains("timeout again"),
        "{reason}"
    );
    assert_eq!(store.get(new.id).await.unwrap().unwrap(), job);
}

pub async fn reap_exhausted(store: Arc<dyn JobStore>) {
    let mut once = new_job("a", "p");
    once.max_attempts = 1;
    let twice = new_job("a", "p");
    store.submit(once.clone(), at(0)).await.unwrap();
    store.submit(twice.clone(), at(1)).await.unwrap();
    store
        .claim(&claim_of(&["a"], "w"), at(2))
        .await
        .unwrap()
        .unwrap();
    store
        .claim(&claim_of(&["a"], "w"), at(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.reap_exhausted(KEEP, at(10)).await.unwrap(),
        0,
        "leases live"
    );
    assert_eq!(store.reap_exhausted(KEEP, at(40)).await.unwrap(), 1);
    let job = store.get(once.id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert!(job.fail_reason.unwrap().contains("1 attempts"));
    // The other has attempts left: a claim resumes it instead.
    assert_eq!(
        store.get(twice.id).await.unwrap().unwrap().status,
        JobStatus::Running
    );
    let job = store
        .claim(&claim_of(&["a"], "w2"), at(40))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.id, twice.id);
}

pub async fn delete_expired(store: Arc<dyn JobStore>) {
    let done = new_job("a", "p");
    let pending = new_job("a", "p");
    store.submit(done.clone(), at(0)).await.unwrap();
    store
        .claim(&claim_of(&["a"], "w"), at(0))
        .await
        .unwrap()
        .unwrap();
    store
        .succeed(done.id, "w", &json!(1), KEEP, at(1))
        .await
        .unwrap();
    store.submit(pending.clone(), at(2)).await.unwrap();
    assert_eq!(store.delete_expired(at(3600)).await.unwrap(), 0);
    assert_eq!(store.delete_expired(at(3602)).await.unwrap(), 1);
    assert!(store.get(done.id).await.unwrap().is_none());
    assert!(store.get(pending.id).await.unwrap().is_some());
}

pub async fn concurrent_claims_are_exclusive(store: Arc<dyn JobStore>) {
    const JOBS: usize = 40;
    const CLAIMERS: usize = 8;
    for i in 0..JOBS {
        store.submit(new_job("a", "p"), at(i as i64)).await.unwrap();
    }
    let mut tasks = Vec::new();
    for c in 0..CLAIMERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let request = claim_of(&["a"], &format!("w{c}"));
            while let Some(job) = store.claim(&request, at(100)).await.unwrap() {
                mine.push(job.id);
            }
            mine
        }));
    }
    let mut seen = BTreeSet::new();
    let mut total = 0;
    for task in tasks {
        for id in task.await.unwrap() {
            total += 1;
            seen.insert(id);
        }
    }
    assert_eq!(total, JOBS, "every job claimed exactly once");
    assert_eq!(seen.len(), JOBS);
}
