//! Access keys (AK/SK) for the IMS API: created, listed and deleted per user, the secret shown
//! once and stored sealed with AES-256-GCM under a key kept outside the database (a file in the
//! data dir by default), and the check that turns an SDK-signed request into a [`Caller`].

use std::path::Path;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use ims_domain::identity::effective_roles;
use ims_domain::{Caller, ErrorKind};
use ims_meta::cloudimages::{AccessKeyRecord, CloudImageStore};
use ims_meta::{MetaError, MetaStore};
use time::OffsetDateTime;

use crate::error::{ServiceError, ServiceResult};
use crate::sdk_signature::{self, ReplayGuard, SignatureError, SignedRequest};

/// AES-256 key length.
const SEAL_KEY_LEN: usize = 32;
/// AES-GCM nonce length; a fresh random nonce per sealed secret.
const NONCE_LEN: usize = 12;
/// Length of a generated AK (Huawei's are 20 upper-case alphanumerics).
const ACCESS_KEY_LEN: usize = 20;
/// Length of a generated SK (Huawei's are 40 alphanumerics).
const SECRET_KEY_LEN: usize = 40;
/// Most access keys one user may hold (IAM allows two; we allow a few more for rotation).
pub const MAX_ACCESS_KEYS_PER_USER: usize = 5;
/// Longest description kept with a key.
const MAX_DESCRIPTION_LEN: usize = 255;

/// An access key as listed: never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKey {
    pub access_key: String,
    pub user_id: String,
    pub description: Option<String>,
    pub created_at: OffsetDateTime,
}

/// A key just created: the only time its secret is returned.
#[derive(Debug, Clone)]
pub struct NewAccessKey {
    pub key: AccessKey,
    pub secret: String,
}

/// Why a signed request was refused: the stable kind is always `Unauthorized`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Signature(#[from] SignatureError),
    #[error("the access key is unknown")]
    UnknownAccessKey,
    #[error("X-Project-Id is required with an access key")]
    MissingProject,
    #[error("the access key's user has no role on project {0}")]
    NoRoleOnProject(String),
    #[error("looking up the access key failed")]
    Store,
}

pub struct AccessKeyService {
    store: Arc<dyn CloudImageStore>,
    meta: Arc<dyn MetaStore>,
    cipher: Aes256Gcm,
    replays: ReplayGuard,
    max_skew_secs: u64,
}

fn random_string(alphabet: &[u8], len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
        .collect()
}

/// Reads the sealing key from `path`, creating it (32 random bytes, mode 0600) on first use.
pub fn load_or_create_seal_key(path: &Path) -> ServiceResult<[u8; SEAL_KEY_LEN]> {
    let context = |what: &str| format!("{what} access-key sealing key {}", path.display());
    match std::fs::read(path) {
        Ok(bytes) => bytes.as_slice().try_into().map_err(|_| {
            ServiceError::internal(
                &context("checking"),
                &std::io::Error::other(format!("expected {SEAL_KEY_LEN} bytes")),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; SEAL_KEY_LEN] = rand::random();
            write_new_key(path, &key)
                .map_err(|e| ServiceError::internal(&context("creating"), &e))?;
            // Another process may have won the race to create it: use whatever is stored.
            let stored =
                std::fs::read(path).map_err(|e| ServiceError::internal(&context("reading"), &e))?;
            stored.as_slice().try_into().map_err(|_| {
                ServiceError::internal(&context("checking"), &std::io::Error::other("bad length"))
            })
        }
        Err(e) => Err(ServiceError::internal(&context("reading"), &e)),
    }
}

fn write_new_key(path: &Path, key: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(key)?;
            file.sync_all()
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn listed(record: AccessKeyRecord) -> AccessKey {
    AccessKey {
        access_key: record.access_key,
        user_id: record.user_id,
        description: record.description,
        created_at: record.created_at,
    }
}

impl AccessKeyService {
    pub fn new(
        store: Arc<dyn CloudImageStore>,
        meta: Arc<dyn MetaStore>,
        seal_key: [u8; SEAL_KEY_LEN],
        max_skew_secs: u64,
    ) -> AccessKeyService {
        AccessKeyService {
            store,
            meta,
            cipher: Aes256Gcm::new(&seal_key.into()),
            replays: ReplayGuard::default(),
            max_skew_secs,
        }
    }

    fn seal(&self, access_key: &str, secret: &str) -> ServiceResult<Vec<u8>> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        // The AK is the associated data: a sealed secret cannot be moved to another key's row.
        let payload = aes_gcm::aead::Payload {
            msg: secret.as_bytes(),
            aad: access_key.as_bytes(),
        };
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), payload)
            .map_err(|_| ServiceError::internal("sealing", &std::io::Error::other("AES-GCM")))?;
        Ok([nonce.as_slice(), &sealed].concat())
    }

    fn unseal(&self, record: &AccessKeyRecord) -> Option<Vec<u8>> {
        let (nonce, sealed) = record.sealed_secret.split_at_checked(NONCE_LEN)?;
        let payload = aes_gcm::aead::Payload {
            msg: sealed,
            aad: record.access_key.as_bytes(),
        };
        self.cipher.decrypt(Nonce::from_slice(nonce), payload).ok()
    }

    /// Creates a key for `user_id`; the secret is in the answer and nowhere else in clear.
    pub async fn create(
        &self,
        user_id: &str,
        description: Option<&str>,
    ) -> ServiceResult<NewAccessKey> {
        if self.meta.get_user(user_id).await?.is_none() {
            return Err(ServiceError::not_found(format!("User {user_id} not found")));
        }
        if description.is_some_and(|d| d.chars().count() > MAX_DESCRIPTION_LEN) {
            return Err(ServiceError::invalid(format!(
                "The description is longer than {MAX_DESCRIPTION_LEN} characters"
            )));
        }
        if self.store.list_access_keys(user_id).await?.len() >= MAX_ACCESS_KEYS_PER_USER {
            return Err(ServiceError::new(
                ErrorKind::QuotaExceeded,
                format!("A user may hold at most {MAX_ACCESS_KEYS_PER_USER} access keys"),
            ));
        }
        let access_key = random_string(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", ACCESS_KEY_LEN);
        let secret = random_string(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            SECRET_KEY_LEN,
        );
        let record = AccessKeyRecord {
            sealed_secret: self.seal(&access_key, &secret)?,
            access_key,
            user_id: user_id.to_string(),
            description: description.map(str::to_string),
            created_at: ims_domain::now(),
        };
        self.store.create_access_key(&record).await?;
        Ok(NewAccessKey {
            key: listed(record),
            secret,
        })
    }

    pub async fn list(&self, user_id: &str) -> ServiceResult<Vec<AccessKey>> {
        let keys = self.store.list_access_keys(user_id).await?;
        Ok(keys.into_iter().map(listed).collect())
    }

    /// Deletes `access_key` if it belongs to `user_id` (any user's when `None`: admins).
    pub async fn delete(&self, user_id: Option<&str>, access_key: &str) -> ServiceResult<()> {
        let not_found = || ServiceError::not_found(format!("Access key {access_key} not found"));
        let record = self
            .store
            .get_access_key(access_key)
            .await?
            .ok_or_else(not_found)?;
        if user_id.is_some_and(|u| u != record.user_id) {
            return Err(not_found());
        }
        self.store
            .delete_access_key(access_key)
            .await
            .map_err(|e| match e {
                MetaError::NotFound(_) => not_found(),
                e => e.into(),
            })
    }

    /// Verifies an SDK-signed request and returns who made it, scoped to `X-Project-Id`.
    pub async fn authenticate(
        &self,
        authorization: &str,
        request: &SignedRequest<'_>,
    ) -> Result<Caller, AuthError> {
        let auth = sdk_signature::parse_authorization(authorization)?;
        let record = self
            .store
            .get_access_key(&auth.access_key)
            .await
            .map_err(|_| AuthError::Store)?
            .ok_or(AuthError::UnknownAccessKey)?;
        let secret = self.unseal(&record).ok_or(AuthError::UnknownAccessKey)?;
        let now = OffsetDateTime::now_utc();
        let signed_at = sdk_signature::verify(request, &auth, &secret, now, self.max_skew_secs)?;
        let project_id = (request.header)("x-project-id")
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .ok_or(AuthError::MissingProject)?;
        let roles = self
            .meta
            .assigned_roles(&record.user_id, &project_id)
            .await
            .map_err(|_| AuthError::Store)?;
        if roles.is_empty() {
            return Err(AuthError::NoRoleOnProject(project_id));
        }
        // Replaying a read returns what the original returned; replaying a change would repeat
        // it. So changes are accepted once, reads (GET, HEAD) as often as signed: the SDK signs
        // at one-second resolution and legitimately repeats identical reads (polling a job).
        if !matches!(request.method, "GET" | "HEAD") {
            self.replays
                .check(&auth.signature, signed_at, now, self.max_skew_secs)?;
        }
        Ok(Caller {
            user_id: record.user_id,
            project_id,
            roles: effective_roles(roles),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ims_domain::{Project, Role, User};
    use ims_meta::cloudimages::MemoryCloudImageStore;
    use ims_meta::memory::MemoryStore;

    async fn service() -> (AccessKeyService, Arc<MemoryCloudImageStore>) {
        let meta = Arc::new(MemoryStore::default());
        meta.create_user(&User {
            id: "u1".into(),
            name: "alice".into(),
            domain_id: "default".into(),
            password_hash: String::new(),
        })
        .await
        .unwrap();
        meta.create_project(&Project {
            id: "p1".into(),
            name: "team".into(),
            domain_id: "default".into(),
        })
        .await
        .unwrap();
        meta.assign_role("u1", "p1", Role::Member).await.unwrap();
        let store = Arc::new(MemoryCloudImageStore::new());
        let svc = AccessKeyService::new(store.clone(), meta, [7; 32], 900);
        (svc, store)
    }

    fn signed(
        method: &str,
        ak: &str,
        sk: &str,
        project: &str,
        body: &[u8],
    ) -> (String, Vec<(String, String)>) {
        let date = OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .unwrap();
        let headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("host".to_string(), "127.0.0.1:1".to_string()),
            ("x-project-id".to_string(), project.to_string()),
            ("x-sdk-date".to_string(), date.clone()),
        ];
        let lookup = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let request = SignedRequest {
            method,
            raw_path: "/v2/cloudimages",
            raw_query: "limit=1",
            header: &lookup,
            body,
        };
        let names: Vec<String> = headers.iter().map(|(k, _)| k.clone()).collect();
        let canonical = sdk_signature::canonical_request(&request, &names).unwrap();
        let signature = sdk_signature::sign(&canonical, &date, sk.as_bytes());
        let auth = format!(
            "SDK-HMAC-SHA256 Access={ak}, SignedHeaders={}, Signature={signature}",
            names.join(";")
        );
        (auth, headers)
    }

    #[tokio::test]
    async fn a_created_key_signs_changes_once_and_is_sealed_at_rest() {
        let (svc, store) = service().await;
        let new = svc.create("u1", Some("ci")).await.unwrap();
        let record = store
            .get_access_key(&new.key.access_key)
            .await
            .unwrap()
            .unwrap();
        assert!(
            !record
                .sealed_secret
                .windows(new.secret.len())
                .any(|w| w == new.secret.as_bytes()),
            "the secret must not be stored in clear"
        );
        let (auth, headers) = signed("PUT", &new.key.access_key, &new.secret, "p1", b"{}");
        let lookup = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let request = SignedRequest {
            method: "PUT",
            raw_path: "/v2/cloudimages",
            raw_query: "limit=1",
            header: &lookup,
            body: b"{}",
        };
        let caller = svc.authenticate(&auth, &request).await.unwrap();
        assert_eq!(caller.project_id, "p1");
        assert!(caller.is_member() && !caller.is_admin());
        assert!(matches!(
            svc.authenticate(&auth, &request).await,
            Err(AuthError::Signature(SignatureError::Replayed))
        ));
        // Reads may repeat.
        let (auth, headers) = signed("GET", &new.key.access_key, &new.secret, "p1", b"");
        let lookup = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let read = SignedRequest {
            method: "GET",
            header: &lookup,
            body: b"",
            ..request
        };
        svc.authenticate(&auth, &read).await.unwrap();
        svc.authenticate(&auth, &read).await.unwrap();
        let (auth, headers) = signed("PUT", &new.key.access_key, "wrong", "p1", b"{}");
        let lookup = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let request = SignedRequest {
            header: &lookup,
            ..request
        };
        assert!(matches!(
            svc.authenticate(&auth, &request).await,
            Err(AuthError::Signature(SignatureError::Mismatch))
        ));
    }

    #[tokio::test]
    async fn keys_are_per_user_and_scoped_to_projects_with_a_role() {
        let (svc, _) = service().await;
        let new = svc.create("u1", None).await.unwrap();
        assert_eq!(svc.list("u1").await.unwrap(), vec![new.key.clone()]);
        assert!(svc.list("u2").await.unwrap().is_empty());
        let (auth, headers) = signed("GET", &new.key.access_key, &new.secret, "p2", b"");
        let lookup = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let request = SignedRequest {
            method: "GET",
            raw_path: "/v2/cloudimages",
            raw_query: "limit=1",
            header: &lookup,
            body: b"",
        };
        assert!(matches!(
            svc.authenticate(&auth, &request).await,
            Err(AuthError::NoRoleOnProject(_))
        ));
        assert_eq!(
            svc.delete(Some("u2"), &new.key.access_key)
                .await
                .unwrap_err()
                .kind,
            ErrorKind::NotFound
        );
        svc.delete(Some("u1"), &new.key.access_key).await.unwrap();
        assert!(matches!(
            svc.authenticate(&auth, &request).await,
            Err(AuthError::UnknownAccessKey)
        ));
        for _ in 0..MAX_ACCESS_KEYS_PER_USER {
            svc.create("u1", None).await.unwrap();
        }
        assert_eq!(
            svc.create("u1", None).await.unwrap_err().kind,
            ErrorKind::QuotaExceeded
        );
        assert_eq!(
            svc.create("nobody", None).await.unwrap_err().kind,
            ErrorKind::NotFound
        );
    }

    #[test]
    fn the_seal_key_file_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seal.key");
        let first = load_or_create_seal_key(&path).unwrap();
        assert_eq!(load_or_create_seal_key(&path).unwrap(), first);
        std::fs::write(&path, b"short").unwrap();
        assert!(load_or_create_seal_key(&path).is_err());
    }
}
