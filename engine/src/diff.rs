//! What a layer changed relative to its parent, as paths: the input of an OCI layer export.
//!
//! Computed from the engine's own knowledge: `parent.inodes.diff(&layer.inodes)` (a persistent
//! map diff, which skips the subtrees both maps share) gives the inodes the layer added,
//! changed or removed. For each changed directory, its entry map is compared with the
//! parent's version of it (again a persistent map diff), which gives the names added, replaced
//! and removed. Changed inodes are given paths through one walk of the layer's directories
//! that stops as soon as every changed inode has been located (inodes have no parent
//! pointers); the parent's tree is never walked. A base layer (no parent) is all added.

use std::collections::{BTreeMap, HashMap};

use imbl::ordmap::DiffItem;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::format::ROOT_INO;
use crate::meta::{Content, Ino, Inode, Slot, Tree};

/// How a path changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    /// The path is new in the layer, or now names a different inode than in the parent.
    Added,
    /// Same inode as in the parent, different attributes, xattrs or content.
    Modified,
    /// The path exists in the parent, not in the layer.
    Deleted,
    /// A directory that replaced one of the parent's: none of the parent's entries below it
    /// remain (its present entries are listed as added).
    OpaqueDir,
}

/// One changed path. `path` is relative to the layer root, `/`-separated, without a leading
/// `/`; the root itself is the empty path. `ino` is the inode in the layer (none for deletions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub path: Vec<u8>,
    pub kind: ChangeKind,
    pub ino: Option<Ino>,
}

/// The changes of layer `id` against its parent, sorted by path (so a directory comes before
/// what is in it), together with the layer's slot and tree (a snapshot: a pointer copy).
pub fn layer_diff_tree(engine: &Engine, id: &str) -> Result<(Slot, Tree, Vec<Change>)> {
    // An active layer's files may have dirty pages in the kernel.
    engine.flush_kernel_cache();
    let (slot, tree, parent) = engine.with_layers(|ls| {
        let slot = ls
            .slot_of(id.as_bytes())
            .ok_or_else(|| Error::NotFound(format!("layer {id:?} does not exist")))?;
        let l = ls
            .get(slot)
            .ok_or_else(|| Error::NotFound(format!("layer {id:?} does not exist")))?;
        let parent = l.parent.and_then(|p| ls.get(p)).map(|p| p.tree.clone());
        Ok::<_, Error>((slot, l.tree.clone(), parent))
    })?;
    let changes = diff_trees(parent.as_ref(), &tree);
    Ok((slot, tree, changes))
}

/// The changes of layer `id` against its parent, sorted by path.
pub fn layer_diff(engine: &Engine, id: &str) -> Result<Vec<Change>> {
    Ok(layer_diff_tree(engine, id)?.2)
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
        p.extend_from_slice(dir);
        p.push(b'/');
        p.extend_from_slice(name);
        p
    }
}

struct Out(BTreeMap<Vec<u8>, Change>);

impl Out {
    fn put(&mut self, path: Vec<u8>, kind: ChangeKind, ino: Option<Ino>) {
        use ChangeKind::*;
        match self.0.get_mut(&path) {
            Some(c) => {
                // Stronger statements win: opaque > added > modified/deleted.
                let rank = |k: ChangeKind| match k {
                    OpaqueDir => 3,
                    Added => 2,
                    Modified | Deleted => 1,
                };
                if rank(kind) > rank(c.kind) {
                    c.kind = kind;
                    if ino.is_some() {
                        c.ino = ino;
                    }
                }
            }
            None => {
                self.0.insert(path.clone(), Change { path, kind, ino });
            }
        }
    }

    /// `path` (inode `ino`) and, for a directory, everything below it: all added.
    fn add_subtree(&mut self, tree: &Tree, path: Vec<u8>, ino: Ino, kind: ChangeKind) {
        let mut stack = vec![(path, ino, kind)];
        while let Some((p, i, k)) = stack.pop() {
            if let Some(Content::Dir(d)) = tree.get(i).map(|n| &n.content) {
                for (name, (child, _)) in d.entries.iter() {
                    stack.push((join(&p, name), *child, ChangeKind::Added));
                }
            }
            self.put(p, k, Some(i));
        }
    }
}

/// The changes of `tree` against `parent` (all added when there is no parent), sorted by path.
pub fn diff_trees(parent: Option<&Tree>, tree: &Tree) -> Vec<Change> {
    let mut out = Out(BTreeMap::new());
    let Some(parent) = parent else {
        if let Some(Content::Dir(d)) = tree.get(ROOT_INO).map(|n| &n.content) {
            for (name, (child, _)) in d.entries.iter() {
                out.add_subtree(tree, name.to_vec(), *child, ChangeKind::Added);
            }
        }
        return out.0.into_values().collect();
    };
    // Inodes present in both trees whose value differs: they need a path. For a directory we
    // also compare its entries; for anything else all its paths (hard links) are modified.
    let mut changed: HashMap<Ino, u32> = HashMap::new();
    for d in parent.inodes.diff(&tree.inodes) {
        if let DiffItem::Update {
            old: (_, o),
            new: (ino, v),
        } = d
        {
            if only_atime_differs(o, v) {
                continue;
            }
            let want = if v.attr.is_dir() {
                1
            } else {
                v.attr.nlink.max(1)
            };
            changed.insert(*ino, want);
        }
    }
    if changed.is_empty() {
        return Vec::new();
    }
    let paths = locate(tree, &changed);
    for (ino, ps) in &paths {
        let (Some(old), Some(new)) = (parent.get(*ino), tree.get(*ino)) else {
            continue;
        };
        let same_node = old.attr == new.attr && old.xattrs == new.xattrs;
        match (&old.content, &new.content) {
            (Content::Dir(od), Content::Dir(nd)) => {
                let Some(dpath) = ps.first() else { continue };
                if !dpath.is_empty() && !same_node {
                    out.put(dpath.clone(), ChangeKind::Modified, Some(*ino));
                }
                for e in od.entries.diff(&nd.entries) {
                    match e {
                        DiffItem::Add(name, (child, _)) => {
                            out.add_subtree(tree, join(dpath, name), *child, ChangeKind::Added)
                        }
                        DiffItem::Remove(name, _) => {
                            out.put(join(dpath, name), ChangeKind::Deleted, None)
                        }
                        DiffItem::Update {
                            old: (_, (oc, _)),
                            new: (name, (nc, _)),
                        } => {
                            if oc == nc {
                                continue;
                            }
                            let was_dir = parent.get(*oc).is_some_and(|i| i.attr.is_dir());
                            let is_dir = tree.get(*nc).is_some_and(|i| i.attr.is_dir());
                            let kind = if was_dir && is_dir {
                                ChangeKind::OpaqueDir
                            } else {
                                ChangeKind::Added
                            };
                            out.add_subtree(tree, join(dpath, name), *nc, kind);
                        }
                    }
                }
            }
            _ => {
                if old != new {
                    for p in ps {
                        out.put(p.clone(), ChangeKind::Modified, Some(*ino));
                    }
                }
            }
        }
    }
    out.0.into_values().collect()
}

/// Whether two versions of an inode differ in nothing but the access time: a read in the
/// layer, which its diff does not carry (OCI layers have no access times).
fn only_atime_differs(a: &Inode, b: &Inode) -> bool {
    let mut attr = a.attr;
    attr.atime = b.attr.atime;
    attr == b.attr && a.content == b.content && a.xattrs == b.xattrs
}

/// Paths in `tree` of the inodes in `want` (inode → how many paths to find), by one walk of the
/// directories that stops once every inode has all its paths.
fn locate(tree: &Tree, want: &HashMap<Ino, u32>) -> HashMap<Ino, Vec<Vec<u8>>> {
    let mut found: HashMap<Ino, Vec<Vec<u8>>> = HashMap::new();
    let mut missing: u64 = want.values().map(|n| *n as u64).sum();
    if want.contains_key(&ROOT_INO) {
        found.entry(ROOT_INO).or_default().push(Vec::new());
        missing -= 1;
    }
    let mut stack: Vec<(Vec<u8>, Ino)> = vec![(Vec::new(), ROOT_INO)];
    while let Some((p, dir)) = stack.pop() {
        if missing == 0 {
            break;
        }
        let Some(Content::Dir(d)) = tree.get(dir).map(|n| &n.content) else {
            continue;
        };
        for (name, (child, _)) in d.entries.iter() {
            let cp = join(&p, name);
            if let Some(n) = want.get(child) {
                let v = found.entry(*child).or_default();
                if (v.len() as u32) < *n {
                    v.push(cp.clone());
                    missing = missing.saturating_sub(1);
                }
            }
            if tree.get(*child).is_some_and(|i| i.attr.is_dir()) {
                stack.push((cp, *child));
            }
        }
    }
    for v in found.values_mut() {
        v.sort();
    }
    found
}
