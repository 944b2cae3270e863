//! Glance's default (secure RBAC) policy: who may see, change, share and download an image.
//!
//! A caller who may not even see an image gets `NotFound`, never `Forbidden`, so ids do not leak.

use crate::error::DomainError;
use crate::identity::Caller;
use crate::image::{Image, Visibility};
use crate::member::Member;

fn owns(caller: &Caller, image: &Image) -> bool {
    image.owner.as_deref() == Some(caller.project_id.as_str())
}

/// `get_image`: admin, or a reader who owns it, is a member of it (any status), or it is
/// public/community.
pub fn can_see(caller: &Caller, image: &Image, membership: Option<&Member>) -> bool {
    if caller.is_admin() {
        return true;
    }
    if !caller.is_reader() {
        return false;
    }
    owns(caller, image)
        || matches!(image.visibility, Visibility::Public | Visibility::Community)
        || (image.visibility == Visibility::Shared && membership.is_some())
}

fn not_found(image: &Image) -> DomainError {
    DomainError::not_found(format!("No image found with ID {}", image.id))
}

/// Visible or `NotFound`.
pub fn require_visible(
    caller: &Caller,
    image: &Image,
    membership: Option<&Member>,
) -> Result<(), DomainError> {
    if can_see(caller, image, membership) {
        Ok(())
    } else {
        Err(not_found(image))
    }
}

/// `modify_image`, `delete_image`, `upload_image`, `add_member`, …: admin or a member of the
/// owning project.
pub fn require_owner_member(
    caller: &Caller,
    image: &Image,
    membership: Option<&Member>,
    action: &str,
) -> Result<(), DomainError> {
    require_visible(caller, image, membership)?;
    if caller.is_admin() || (caller.is_member() && owns(caller, image)) {
        return Ok(());
    }
    Err(DomainError::forbidden(format!(
        "You are not authorized to complete {action} action."
    )))
}

/// `download_image`: admin, or a member who may see the image.
pub fn require_download(
    caller: &Caller,
    image: &Image,
    membership: Option<&Member>,
) -> Result<(), DomainError> {
    require_visible(caller, image, membership)?;
    if caller.is_admin() || caller.is_member() {
        return Ok(());
    }
    Err(DomainError::forbidden(
        "You are not authorized to complete download_image action.",
    ))
}

/// Setting `visibility` to `to`: public needs admin; the rest follow `modify_image`.
pub fn require_visibility_change(caller: &Caller, to: Visibility) -> Result<(), DomainError> {
    if to == Visibility::Public && !caller.is_admin() {
        return Err(DomainError::forbidden(
            "You are not authorized to complete publicize_image action.",
        ));
    }
    Ok(())
}

/// `add_image`: admin, or a member creating an image for its own project.
pub fn require_create(caller: &Caller, owner: Option<&str>) -> Result<(), DomainError> {
    if caller.is_admin() {
        return Ok(());
    }
    if !caller.is_member() {
        return Err(DomainError::forbidden(
            "You are not authorized to complete add_image action.",
        ));
    }
    match owner {
        Some(o) if o != caller.project_id => Err(DomainError::forbidden(
            "You are not permitted to create images owned by another project.",
        )),
        _ => Ok(()),
    }
}

/// `get_members` / `get_member`: admin, or a reader of the owning project, or the member itself.
pub fn can_see_member(caller: &Caller, image: &Image, member_id: &str) -> bool {
    caller.is_admin()
        || (caller.is_reader() && (owns(caller, image) || caller.project_id == member_id))
}

/// `modify_member` (accept/reject): only the member project (owner gets 403).
pub fn require_member_answer(caller: &Caller, member_id: &str) -> Result<(), DomainError> {
    if caller.is_admin() || (caller.is_member() && caller.project_id == member_id) {
        return Ok(());
    }
    Err(DomainError::forbidden(
        "You are not permitted to modify the membership of another project.",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Role, effective_roles};
    use crate::member::MemberStatus;

    fn caller(project: &str, role: Role) -> Caller {
        Caller {
            user_id: "u".into(),
            project_id: project.into(),
            roles: effective_roles([role]),
        }
    }

    fn image(owner: &str, visibility: Visibility) -> Image {
        let mut img = Image::new(uuid::Uuid::new_v4(), Some(owner.into()), crate::now());
        img.visibility = visibility;
        img
    }

    #[test]
    fn private_image_of_another_project_is_invisible() {
        let img = image("p1", Visibility::Private);
        let err = require_owner_member(&caller("p2", Role::Member), &img, None, "modify_image")
            .unwrap_err();
        assert_eq!(err.kind, crate::ErrorKind::NotFound);
        assert!(
            require_owner_member(&caller("p1", Role::Member), &img, None, "modify_image").is_ok()
        );
        assert!(
            require_owner_member(&caller("p9", Role::Admin), &img, None, "modify_image").is_ok()
        );
    }

    #[test]
    fn public_image_is_visible_but_not_modifiable() {
        let img = image("p1", Visibility::Public);
        let err = require_owner_member(&caller("p2", Role::Member), &img, None, "modify_image")
            .unwrap_err();
        assert_eq!(err.kind, crate::ErrorKind::Forbidden);
    }

    #[test]
    fn reader_cannot_modify_own_image() {
        let img = image("p1", Visibility::Private);
        let err = require_owner_member(&caller("p1", Role::Reader), &img, None, "modify_image")
            .unwrap_err();
        assert_eq!(err.kind, crate::ErrorKind::Forbidden);
        assert!(require_download(&caller("p1", Role::Reader), &img, None).is_err());
    }

    #[test]
    fn shared_image_is_visible_to_members_of_any_status() {
        let img = image("p1", Visibility::Shared);
        let m = Member {
            image_id: img.id,
            member_id: "p2".into(),
            status: MemberStatus::Pending,
            created_at: crate::now(),
            updated_at: crate::now(),
        };
        assert!(can_see(&caller("p2", Role::Reader), &img, Some(&m)));
        assert!(!can_see(&caller("p3", Role::Reader), &img, None));
    }

    #[test]
    fn only_admin_publicizes_and_only_member_answers() {
        assert!(
            require_visibility_change(&caller("p1", Role::Member), Visibility::Public).is_err()
        );
        assert!(
            require_visibility_change(&caller("p1", Role::Member), Visibility::Community).is_ok()
        );
        assert!(require_member_answer(&caller("p1", Role::Member), "p2").is_err());
        assert!(require_member_answer(&caller("p2", Role::Member), "p2").is_ok());
    }

    #[test]
    fn create_for_another_project_needs_admin() {
        assert!(require_create(&caller("p1", Role::Member), Some("p2")).is_err());
        assert!(require_create(&caller("p1", Role::Member), Some("p1")).is_ok());
        assert!(require_create(&caller("p1", Role::Reader), None).is_err());
        assert!(require_create(&caller("p1", Role::Admin), Some("p2")).is_ok());
    }
}
