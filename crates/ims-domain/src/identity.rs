//! Projects, users, roles and the authenticated caller (a Keystone v3 subset).

use std::collections::BTreeSet;

/// The one domain this service knows, as Keystone names it.
pub const DEFAULT_DOMAIN_ID: &str = "default";
pub const DEFAULT_DOMAIN_NAME: &str = "Default";

/// Roles, ordered by what they imply: admin ⇒ member ⇒ reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Reader,
    Member,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Reader, Role::Member, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Stable id, so tokens and role listings agree across nodes.
    pub fn id(self) -> &'static str {
        match self {
            Role::Reader => "6b2c5d9a4e1f4d3c9b8a7f6e5d4c3b2a",
            Role::Member => "9fe2ff9ee4384b1894a90878d3e92bab",
            Role::Admin => "4c1b5f0e8d2a4c7e9f3b6a1d0e5c8b7a",
        }
    }

    /// The role and every role it implies.
    pub fn effective(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| *r <= self)
    }
}

/// Expands assigned roles into effective ones (admin ⇒ member ⇒ reader).
pub fn effective_roles(assigned: impl IntoIterator<Item = Role>) -> BTreeSet<Role> {
    assigned.into_iter().flat_map(Role::effective).collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub domain_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub name: String,
    pub domain_id: String,
    /// argon2 PHC string; never leaves the service.
    pub password_hash: String,
}

/// Who is calling: the scope of a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: String,
    pub project_id: String,
    pub roles: BTreeSet<Role>,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.roles.contains(&Role::Admin)
    }
    pub fn is_member(&self) -> bool {
        self.roles.contains(&Role::Member) || self.is_admin()
    }
    pub fn is_reader(&self) -> bool {
        self.roles.contains(&Role::Reader) || self.is_member()
    }
}

/// A fresh Keystone-style id: 32 lowercase hex digits.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_implies_member_and_reader() {
        let roles = effective_roles([Role::Admin]);
        assert_eq!(
            roles.into_iter().collect::<Vec<_>>(),
            vec![Role::Reader, Role::Member, Role::Admin]
        );
        let roles = effective_roles([Role::Member]);
        assert_eq!(
            roles.into_iter().collect::<Vec<_>>(),
            vec![Role::Reader, Role::Member]
        );
    }

    #[test]
    fn role_names_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("service"), None);
    }
}
