//! Identity: bootstrap, password authentication, signed tokens and role administration.
//!
//! Tokens are `ims1.<payload>.<mac>`: the claims in base64url JSON and an HMAC-SHA256 over them
//! with a key every node reads from the shared metadata store, so any node verifies any token
//! without a lookup (revocation is the one check that asks the store).

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use ims_domain::identity::{DEFAULT_DOMAIN_ID, DEFAULT_DOMAIN_NAME, effective_roles, new_id};
use ims_domain::{Caller, Project, Role, User};
use ims_meta::{MetaError, MetaStore};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::{ServiceError, ServiceResult};

const TOKEN_PREFIX: &str = "ims1.";
const SIGNING_KEY_NAME: &str = "token-signing-key";
/// Longest token we try to parse; real ones are a few hundred bytes.
const MAX_TOKEN_LEN: usize = 4096;
/// Length of generated admin passwords.
const GENERATED_PASSWORD_LEN: usize = 24;

/// What a token asserts. Roles are the effective (implied) ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    pub user_id: String,
    pub user_name: String,
    pub project_id: Option<String>,
    pub project_name: Option<String>,
    pub roles: Vec<String>,
    /// Unix microseconds.
    pub issued_at: i64,
    pub expires_at: i64,
    pub audit_id: String,
}

impl TokenClaims {
    /// The caller a project-scoped token stands for; unscoped tokens have none.
    pub fn caller(&self) -> Option<Caller> {
        Some(Caller {
            user_id: self.user_id.clone(),
            project_id: self.project_id.clone()?,
            roles: self.roles.iter().filter_map(|r| Role::parse(r)).collect(),
        })
    }
}

/// Names a user or project by id, or by name within a domain (by id or name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    Id(String),
    Name { name: String, domain: DomainRef },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainRef {
    Id(String),
    Name(String),
}

pub struct PasswordAuth {
    pub user: Named,
    pub password: String,
    pub project: Option<Named>,
}

#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub claims: TokenClaims,
}

type HmacSha256 = Hmac<Sha256>;

pub struct IdentityService {
    meta: Arc<dyn MetaStore>,
    signing_key: Vec<u8>,
    ttl_secs: u64,
}

fn resolve_domain(domain: &DomainRef) -> ServiceResult<&'static str> {
    let known = match domain {
        DomainRef::Id(id) => id.eq_ignore_ascii_case(DEFAULT_DOMAIN_ID),
        DomainRef::Name(name) => name == DEFAULT_DOMAIN_NAME,
    };
    if known {
        Ok(DEFAULT_DOMAIN_ID)
    } else {
        Err(ServiceError::unauthorized(
            "The request you have made requires authentication.",
        ))
    }
}

pub fn hash_password(password: &str) -> ServiceResult<String> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| {
            ServiceError::internal("hashing password", &std::io::Error::other(e.to_string()))
        })
}

fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

pub fn generate_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..GENERATED_PASSWORD_LEN)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

impl IdentityService {
    /// Loads (or creates, on first start) the shared signing key.
    pub async fn open(meta: Arc<dyn MetaStore>, ttl_secs: u64) -> ServiceResult<IdentityService> {
        let fresh: [u8; 32] = rand::random();
        let signing_key = meta.get_or_init_secret(SIGNING_KEY_NAME, &fresh).await?;
        Ok(IdentityService {
            meta,
            signing_key,
            ttl_secs,
        })
    }

    /// First start: creates project `admin` and user `admin` with the admin role. Returns the
    /// password if one was generated (the caller prints it once).
    pub async fn bootstrap(&self, admin_password: Option<&str>) -> ServiceResult<Option<String>> {
        if self
            .meta
            .find_user(DEFAULT_DOMAIN_ID, "admin")
            .await?
            .is_some()
        {
            return Ok(None);
        }
        let generated = admin_password.is_none().then(generate_password);
        let password = admin_password
            .map(str::to_string)
            .or_else(|| generated.clone())
            .unwrap_or_default();
        let project = match self.create_project("admin").await {
            Ok(p) => p,
            Err(e) if e.kind == ims_domain::ErrorKind::AlreadyExists => self
                .meta
                .find_project(DEFAULT_DOMAIN_ID, "admin")
                .await?
                .ok_or_else(|| ServiceError::conflict("admin project vanished"))?,
            Err(e) => return Err(e),
        };
        match self.create_user("admin", &password).await {
            Ok(user) => {
                self.meta
                    .assign_role(&user.id, &project.id, Role::Admin)
                    .await?;
                Ok(generated)
            }
            // Another node bootstrapped concurrently; its password stands.
            Err(e) if e.kind == ims_domain::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn create_project(&self, name: &str) -> ServiceResult<Project> {
        let project = Project {
            id: new_id(),
            name: name.to_string(),
            domain_id: DEFAULT_DOMAIN_ID.into(),
        };
        self.meta
            .create_project(&project)
            .await
            .map_err(|e| match e {
                MetaError::AlreadyExists(_) => ServiceError::new(
                    ims_domain::ErrorKind::AlreadyExists,
                    format!("Project {name} already exists"),
                ),
                e => e.into(),
            })?;
        Ok(project)
    }

    pub async fn create_user(&self, name: &str, password: &str) -> ServiceResult<User> {
        let user = User {
            id: new_id(),
            name: name.to_string(),
            domain_id: DEFAULT_DOMAIN_ID.into(),
            password_hash: hash_password(password)?,
        };
        self.meta.create_user(&user).await.map_err(|e| match e {
            MetaError::AlreadyExists(_) => ServiceError::new(
                ims_domain::ErrorKind::AlreadyExists,
                format!("User {name} already exists"),
            ),
            e => e.into(),
        })?;
        Ok(user)
    }

    pub async fn set_password(&self, user: &Named, password: &str) -> ServiceResult<()> {
        let user = self
            .find_user(user)
            .await?
            .ok_or_else(|| ServiceError::not_found("No such user"))?;
        self.meta
            .set_user_password(&user.id, &hash_password(password)?)
            .await?;
        Ok(())
    }

    pub async fn find_user(&self, named: &Named) -> ServiceResult<Option<User>> {
        Ok(match named {
            Named::Id(id) => self.meta.get_user(id).await?,
            Named::Name { name, domain } => {
                self.meta.find_user(resolve_domain(domain)?, name).await?
            }
        })
    }

    pub async fn find_project(&self, named: &Named) -> ServiceResult<Option<Project>> {
        Ok(match named {
            Named::Id(id) => self.meta.get_project(id).await?,
            Named::Name { name, domain } => {
                self.meta
                    .find_project(resolve_domain(domain)?, name)
                    .await?
            }
        })
    }

    pub async fn assign_role(
        &self,
        user: &Named,
        project: &Named,
        role: Role,
        grant: bool,
    ) -> ServiceResult<()> {
        let user = self
            .find_user(user)
            .await?
            .ok_or_else(|| ServiceError::not_found("No such user"))?;
        let project = self
            .find_project(project)
            .await?
            .ok_or_else(|| ServiceError::not_found("No such project"))?;
        if grant {
            self.meta.assign_role(&user.id, &project.id, role).await?;
        } else {
            self.meta.unassign_role(&user.id, &project.id, role).await?;
        }
        Ok(())
    }

    pub fn meta(&self) -> &Arc<dyn MetaStore> {
        &self.meta
    }

    /// Checks the password and issues a token, scoped to the project if one is named.
    pub async fn authenticate(&self, auth: PasswordAuth) -> ServiceResult<IssuedToken> {
        let denied =
            || ServiceError::unauthorized("The request you have made requires authentication.");
        let user = self.find_user(&auth.user).await?.ok_or_else(denied)?;
        let hash = user.password_hash.clone();
        let password = auth.password;
        let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .map_err(|e| ServiceError::internal("verifying password", &e))?;
        if !ok {
            return Err(denied());
        }
        let (project, roles) = match &auth.project {
            None => (None, Vec::new()),
            Some(named) => {
                let project = self.find_project(named).await?.ok_or_else(denied)?;
                let assigned = self.meta.assigned_roles(&user.id, &project.id).await?;
                if assigned.is_empty() {
                    return Err(denied());
                }
                let roles = effective_roles(assigned)
                    .into_iter()
                    .map(|r| r.as_str().to_string())
                    .collect();
                (Some(project), roles)
            }
        };
        let now = ims_domain::now();
        let issued_at = ims_domain::to_micros(now);
        let claims = TokenClaims {
            user_id: user.id,
            user_name: user.name,
            project_id: project.as_ref().map(|p| p.id.clone()),
            project_name: project.map(|p| p.name),
            roles,
            issued_at,
            expires_at: issued_at.saturating_add((self.ttl_secs as i64).saturating_mul(1_000_000)),
            audit_id: URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>()),
        };
        Ok(IssuedToken {
            token: self.sign(&claims),
            claims,
        })
    }

    /// A token for `user_id` on `project_id` with the roles the user holds there now, valid
    /// for `ttl_secs`: what a job running for the user presents to an API of this deployment
    /// (`glance-download` reads the source image as the user who asked for the import).
    pub async fn issue_for(
        &self,
        user_id: &str,
        project_id: &str,
        ttl_secs: u64,
    ) -> ServiceResult<String> {
        let denied =
            || ServiceError::unauthorized("The user no longer holds a role on the project.");
        let user = self.meta.get_user(user_id).await?.ok_or_else(denied)?;
        let project = self
            .meta
            .get_project(project_id)
            .await?
            .ok_or_else(denied)?;
        let assigned = self.meta.assigned_roles(&user.id, &project.id).await?;
        if assigned.is_empty() {
            return Err(denied());
        }
        let issued_at = ims_domain::to_micros(ims_domain::now());
        let claims = TokenClaims {
            user_id: user.id,
            user_name: user.name,
            project_id: Some(project.id),
            project_name: Some(project.name),
            roles: effective_roles(assigned)
                .into_iter()
                .map(|r| r.as_str().to_string())
                .collect(),
            issued_at,
            expires_at: issued_at
                .saturating_add((ttl_secs.min(self.ttl_secs) as i64).saturating_mul(1_000_000)),
            audit_id: URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>()),
        };
        Ok(self.sign(&claims))
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.signing_key).expect("HMAC accepts any key length")
    }

    fn sign(&self, claims: &TokenClaims) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        format!(
            "{TOKEN_PREFIX}{payload}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    /// Verifies signature, expiry and revocation.
    pub async fn verify(&self, token: &str) -> ServiceResult<TokenClaims> {
        let invalid =
            || ServiceError::unauthorized("The request you have made requires authentication.");
        if token.len() > MAX_TOKEN_LEN {
            return Err(invalid());
        }
        let rest = token.strip_prefix(TOKEN_PREFIX).ok_or_else(invalid)?;
        let (payload, sig) = rest.split_once('.').ok_or_else(invalid)?;
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| invalid())?;
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        mac.verify_slice(&sig).map_err(|_| invalid())?;
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| invalid())?;
        let claims: TokenClaims = serde_json::from_slice(&json).map_err(|_| invalid())?;
        if claims.expires_at <= ims_domain::to_micros(ims_domain::now()) {
            return Err(invalid());
        }
        if self.meta.is_token_revoked(&claims.audit_id).await? {
            return Err(invalid());
        }
        Ok(claims)
    }

    pub async fn revoke(&self, claims: &TokenClaims) -> ServiceResult<()> {
        self.meta
            .revoke_token(&claims.audit_id, claims.expires_at / 1_000_000)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ims_meta::memory::MemoryStore;

    async fn service() -> IdentityService {
        let meta: Arc<dyn MetaStore> = Arc::new(MemoryStore::default());
        IdentityService::open(meta, 60).await.unwrap()
    }

    fn by_name(name: &str) -> Named {
        Named::Name {
            name: name.into(),
            domain: DomainRef::Name("Default".into()),
        }
    }

    #[tokio::test]
    async fn bootstrap_then_authenticate_admin() {
        let ids = service().await;
        assert_eq!(ids.bootstrap(Some("pw")).await.unwrap(), None);
        assert_eq!(
            ids.bootstrap(Some("other")).await.unwrap(),
            None,
            "second bootstrap is a no-op"
        );
        let issued = ids
            .authenticate(PasswordAuth {
                user: by_name("admin"),
                password: "pw".into(),
                project: Some(by_name("admin")),
            })
            .await
            .unwrap();
        assert_eq!(issued.claims.roles, vec!["reader", "member", "admin"]);
        let claims = ids.verify(&issued.token).await.unwrap();
        assert!(claims.caller().unwrap().is_admin());
    }

    #[tokio::test]
    async fn any_node_sharing_the_store_verifies_a_token() {
        let meta: Arc<dyn MetaStore> = Arc::new(MemoryStore::default());
        let node_a = IdentityService::open(meta.clone(), 60).await.unwrap();
        let node_b = IdentityService::open(meta, 60).await.unwrap();
        node_a.bootstrap(Some("pw")).await.unwrap();
        let auth = PasswordAuth {
            user: by_name("admin"),
            password: "pw".into(),
            project: Some(by_name("admin")),
        };
        let issued = node_a.authenticate(auth).await.unwrap();
        assert_eq!(node_b.verify(&issued.token).await.unwrap(), issued.claims);
        node_b.revoke(&issued.claims).await.unwrap();
        assert!(
            node_a.verify(&issued.token).await.is_err(),
            "a revocation on one node holds on all"
        );
    }

    #[tokio::test]
    async fn generated_password_is_returned_once() {
        let ids = service().await;
        let pw = ids.bootstrap(None).await.unwrap().expect("generated");
        assert_eq!(pw.len(), GENERATED_PASSWORD_LEN);
        let auth = PasswordAuth {
            user: by_name("admin"),
            password: pw,
            project: None,
        };
        assert!(ids.authenticate(auth).await.is_ok());
    }

    #[tokio::test]
    async fn wrong_password_unknown_user_and_unassigned_project_are_refused() {
        let ids = service().await;
        ids.bootstrap(Some("pw")).await.unwrap();
        ids.create_project("p2").await.unwrap();
        for (user, pw, project) in [
            ("admin", "bad", "admin"),
            ("ghost", "pw", "admin"),
            ("admin", "pw", "p2"),
        ] {
            let auth = PasswordAuth {
                user: by_name(user),
                password: pw.into(),
                project: Some(by_name(project)),
            };
            let err = ids.authenticate(auth).await.unwrap_err();
            assert_eq!(
                err.kind,
                ims_domain::ErrorKind::Unauthorized,
                "{user}/{pw}/{project}"
            );
        }
    }

    #[tokio::test]
    async fn tampered_expired_and_revoked_tokens_fail() {
        let ids = service().await;
        ids.bootstrap(Some("pw")).await.unwrap();
        let issued = ids
            .authenticate(PasswordAuth {
                user: by_name("admin"),
                password: "pw".into(),
                project: Some(by_name("admin")),
            })
            .await
            .unwrap();
        let mut forged = issued.claims.clone();
        forged.project_id = Some("other".into());
        let (_, sig) = issued.token.rsplit_once('.').unwrap();
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert!(
            ids.verify(&format!("{TOKEN_PREFIX}{payload}.{sig}"))
                .await
                .is_err(),
            "forged payload"
        );
        let mut expired = issued.claims.clone();
        expired.expires_at = 0;
        assert!(ids.verify(&ids.sign(&expired)).await.is_err(), "expired");
        assert!(ids.verify("garbage").await.is_err());
        ids.revoke(&issued.claims).await.unwrap();
        assert!(ids.verify(&issued.token).await.is_err(), "revoked");
    }
}
