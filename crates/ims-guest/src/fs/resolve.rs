//! Path resolution over an inode tree with symlinks, shared by the filesystems written here:
//! bounded symlink hops and components, `..` never climbs above the root.

use std::collections::VecDeque;

use crate::error::{GuestError, Result};

/// Most symlinks followed while resolving one path (Linux's MAXSYMLINKS).
pub const MAX_SYMLINK_HOPS: usize = 40;
/// Most path components handled while resolving one path (bounds symlink expansion).
pub const MAX_COMPONENTS: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    File,
    Symlink,
    Other,
}

/// The primitives a filesystem gives the resolver.
pub trait InodeTree {
    fn root(&self) -> u64;
    fn lookup(&self, dir: u64, name: &[u8]) -> Result<Option<u64>>;
    fn node_kind(&self, ino: u64) -> Result<NodeKind>;
    fn read_link(&self, ino: u64) -> Result<Vec<u8>>;
}

fn components(path: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    path.split(|&c| c == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
}

/// The inode `path` names, following symlinks (the last one too), or `None`.
pub fn resolve(tree: &dyn InodeTree, path: &str, fs: &'static str) -> Result<Option<u64>> {
    let mut queue: VecDeque<Vec<u8>> = components(path.as_bytes()).collect();
    let mut stack = vec![tree.root()];
    let mut hops = 0usize;
    let mut handled = 0usize;
    while let Some(name) = queue.pop_front() {
        handled += 1;
        if handled > MAX_COMPONENTS || queue.len() > MAX_COMPONENTS {
            return Err(GuestError::LimitExceeded {
                what: "path components while resolving",
                limit: MAX_COMPONENTS as u64,
            });
        }
        if name == b".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let dir = *stack.last().unwrap_or(&tree.root());
        if tree.node_kind(dir)? != NodeKind::Dir {
            return Ok(None);
        }
        let Some(ino) = tree.lookup(dir, &name)? else {
            return Ok(None);
        };
        if tree.node_kind(ino)? == NodeKind::Symlink {
            hops += 1;
            if hops > MAX_SYMLINK_HOPS {
                return Err(GuestError::Filesystem {
                    fs,
                    message: format!("too many symlinks resolving {path}"),
                });
            }
            let target = tree.read_link(ino)?;
            if target.first() == Some(&b'/') {
                stack.truncate(1);
            }
            for c in components(&target).collect::<Vec<_>>().into_iter().rev() {
                queue.push_front(c);
            }
            continue;
        }
        stack.push(ino);
    }
    Ok(stack.last().copied())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// ino 1 = /, 2 = /etc (dir), 3 = /usr, 4 = /usr/lib, 5 = os-release, 6 = /etc/os-release
    /// -> ../usr/lib/os-release, 7 = /loop -> /loop.
    struct Tree(HashMap<(u64, &'static [u8]), u64>);
    impl InodeTree for Tree {
        fn root(&self) -> u64 {
            1
        }
        fn lookup(&self, dir: u64, name: &[u8]) -> Result<Option<u64>> {
            Ok(self
                .0
                .iter()
                .find(|((d, n), _)| *d == dir && *n == name)
                .map(|(_, i)| *i))
        }
        fn node_kind(&self, ino: u64) -> Result<NodeKind> {
            Ok(match ino {
                1..=4 => NodeKind::Dir,
                6 | 7 => NodeKind::Symlink,
                _ => NodeKind::File,
            })
        }
        fn read_link(&self, ino: u64) -> Result<Vec<u8>> {
            Ok(if ino == 6 {
                b"../usr/lib/os-release".to_vec()
            } else {
                b"/loop".to_vec()
            })
        }
    }

    fn tree() -> Tree {
        let mut m: HashMap<(u64, &'static [u8]), u64> = HashMap::new();
        m.insert((1, b"etc"), 2);
        m.insert((1, b"usr"), 3);
        m.insert((3, b"lib"), 4);
        m.insert((4, b"os-release"), 5);
        m.insert((2, b"os-release"), 6);
        m.insert((1, b"loop"), 7);
        Tree(m)
    }

    #[test]
    fn follows_relative_symlinks_and_dotdot() {
        let t = tree();
        assert_eq!(resolve(&t, "/etc/os-release", "t").unwrap(), Some(5));
        assert_eq!(
            resolve(&t, "/../../etc/./os-release", "t").unwrap(),
            Some(5)
        );
        assert_eq!(resolve(&t, "/etc/missing", "t").unwrap(), None);
        assert_eq!(resolve(&t, "/usr/lib/os-release/x", "t").unwrap(), None);
    }

    #[test]
    fn symlink_loop_is_an_error() {
        assert!(resolve(&tree(), "/loop", "t").is_err());
    }
}
