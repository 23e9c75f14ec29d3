//! `strata fsck --repair`: fix, offline, everything [`crate::fsck::check`] can find, or say
//! precisely what could not be fixed.
//!
//! The image is recovered (journal replayed) into memory, each layer's tree is repaired,
//! parents before children, and the result is written as a new checkpoint and superblock
//! (the superblock flip is the commit point: a crash leaves the old image, and the repair can
//! run again). What is repaired, in this order:
//!
//! - a layer whose parent is missing, or whose parent chain loops, becomes a base layer (a
//!   checkpoint stores a child as its difference from its parent, so a layer whose parent
//!   slot names no layer keeps only what it changed itself, see
//!   [`crate::layer::Layers::decode_salvage`]; entries naming inherited inodes are then
//!   dangling and removed below, and the layer's blocks are claimed once it is reachable);
//! - a directory entry naming a missing inode is removed; a directory named by more than one
//!   entry keeps the first one met walking from the root;
//! - an inode no entry reaches (link count not 0) is linked into the layer's root as
//!   `lost+found.<inode>`; an inode with link count 0 that nothing reaches in a committed
//!   layer (a file unlinked while open when the daemon died, frozen by a commit) is removed
//!   (active layers lose theirs at every open);
//! - link counts are set to the entries that name the inode (directories: 2 + subdirectories);
//! - a mapping whose blocks are owned by a layer outside the inode's parent chain, or are not
//!   allocated to anyone: blocks nobody owns are adopted by the layer (the data is kept);
//!   blocks another layer owns are unmapped (a hole: that part of the file is lost, and
//!   reported);
//! - an owned block without a checksum gets the checksum of what it holds now (there is
//!   nothing to check it against; reported);
//! - checksums kept for blocks no layer maps any more are dropped.
//!
//! A fix in a committed layer is carried to every descendant that still shares the inode
//! unchanged, so a child never holds the broken copy. Blocks owned by two layers cannot be
//! repaired automatically (which layer's data is right is not known): they are reported, and
//! so is anything a check after the repair still finds.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use imbl::ordmap::DiffItem;

use crate::checkpoint::write_offline;
use crate::crc::block_crcs;
use crate::device::{read_blocks, Device};
use crate::error::{Error, Result};
use crate::format::{FORMAT_VERSION, ROOT_INO};
use crate::layer::Layers;
use crate::meta::{Content, Ino, Inode, Name, Owner, Slot, Tree};
use crate::recovery::{load, load_salvage};

/// What a repair did.
#[derive(Debug, Default)]
pub struct RepairReport {
    /// Every change made, in fsck's words.
    pub repaired: Vec<String>,
    /// What a check of the repaired image still finds (empty: clean).
    pub unrepaired: Vec<String>,
    /// Journal chunks replayed into the new checkpoint.
    pub chunks_replayed: u64,
    /// Whether a new checkpoint was written.
    pub written: bool,
}

/// Repair the unmounted file system on `dev` (see the module comment).
pub fn repair(dev: &dyn Device) -> Result<RepairReport> {
    let mut l = load_salvage(dev)?;
    if l.sb.version < FORMAT_VERSION {
        return Err(Error::Unusable(format!(
            "format version {} has no data checksums; run `strata migrate` first",
            l.sb.version
        )));
    }
    let mut r = RepairReport {
        chunks_replayed: l.chunks_replayed,
        ..Default::default()
    };
    let reached: HashSet<Slot> = l.layers.topo_order().into_iter().collect();
    fix_parents(&mut l.layers, &mut r.repaired);
    // Layers reached only now own their blocks (recovery could not claim them).
    for slot in l.layers.topo_order() {
        if reached.contains(&slot) {
            continue;
        }
        for (b, n) in l.layers.owned_extents(slot) {
            let (lo, hi) = l.alloc.range();
            if b < lo || b.saturating_add(n) > hi {
                continue; // fix_extents unmaps it
            }
            let dup = l.alloc.mark_used(b, n);
            if dup > 0 {
                r.unrepaired.push(format!(
                    "layer slot {slot}: {dup} block(s) at {b} are owned by another layer too"
                ));
            }
        }
    }
    for slot in l.layers.topo_order() {
        let Some(layer) = l.layers.get(slot) else {
            continue;
        };
        let name = String::from_utf8_lossy(&layer.id).into_owned();
        let committed = layer.state != crate::meta::LayerState::Active;
        let old = layer.tree.clone();
        let mut t = old.clone();
        let before = r.repaired.len();
        fix_tree(
            &mut t,
            committed,
            &format!("layer {name}: "),
            &mut r.repaired,
        );
        fix_extents(
            &l.layers,
            &mut l.alloc,
            slot,
            &mut t,
            &name,
            &mut r.repaired,
        );
        if r.repaired.len() > before {
            carry_to_descendants(&mut l.layers, slot, &old, &t);
            if let Some(layer) = l.layers.map.get_mut(&slot) {
                layer.tree = t;
            }
        }
    }
    fix_checksums(dev, &mut l.layers, &mut r.repaired)?;
    if !r.repaired.is_empty() || r.chunks_replayed > 0 {
        // Owned counts follow the trees.
        for slot in l.layers.topo_order() {
            let owned = l.layers.owned_extents(slot).iter().map(|e| e.1).sum();
            if let Some(layer) = l.layers.map.get_mut(&slot) {
                layer.owned = owned;
            }
        }
        let sb = l.sb.clone();
        write_offline(dev, &sb, &l.layers, &mut l.alloc, (l.pos, l.seq))?;
        r.written = true;
    }
    let after = crate::fsck::check(dev)?;
    r.unrepaired.extend(after.problems);
    r.unrepaired.extend(after.leaks);
    Ok(r)
}

/// A layer whose parent is missing becomes a base layer; a loop of parents is cut at the
/// first of its layers met (by slot).
fn fix_parents(ls: &mut Layers, out: &mut Vec<String>) {
    let slots: Vec<Slot> = ls.map.keys().copied().collect();
    for s in slots {
        let Some(parent) = ls.map.get(&s).and_then(|l| l.parent) else {
            continue;
        };
        let why = if !ls.map.contains_key(&parent) {
            Some(format!("parent slot {parent} is missing"))
        } else {
            // Does the chain from `parent` come back to `s`?
            let mut seen = HashSet::from([s]);
            let mut p = Some(parent);
            let mut looped = false;
            while let Some(ps) = p {
                if ps == s {
                    looped = true;
                    break;
                }
                if !seen.insert(ps) {
                    break;
                }
                p = ls.map.get(&ps).and_then(|l| l.parent);
            }
            looped.then(|| format!("its parent chain loops back to it through slot {parent}"))
        };
        if let (Some(why), Some(l)) = (why, ls.map.get_mut(&s)) {
            l.parent = None;
            out.push(format!(
                "layer {}: {why}; it is now a base layer",
                String::from_utf8_lossy(&l.id)
            ));
        }
    }
}

/// Directory entries, reachability and link counts of one tree.
fn fix_tree(t: &mut Tree, committed: bool, prefix: &str, out: &mut Vec<String>) {
    // Entries naming missing inodes.
    let mut dangling: Vec<(Ino, Name, Ino)> = Vec::new();
    for (ino, i) in t.inodes.iter() {
        if let Content::Dir(d) = &i.content {
            for (name, (child, _)) in d.entries.iter() {
                if t.get(*child).is_none() {
                    dangling.push((*ino, name.clone(), *child));
                }
            }
        }
    }
    for (dir, name, child) in dangling {
        remove_entry(t, dir, &name);
        out.push(format!(
            "{prefix}directory {dir}: entry {:?} named missing inode {child}; removed",
            String::from_utf8_lossy(&name)
        ));
    }
    // Walk from the root: a directory met a second time loses that entry.
    let mut reached = walk(t, ROOT_INO, &mut BTreeSet::new(), prefix, out);
    // Unreached inodes: the tops of unreached subtrees (no entry names them) first, so a
    // subtree is linked once, by its top.
    let named: HashSet<Ino> = t
        .inodes
        .values()
        .filter_map(|i| i.dir())
        .flat_map(|d| d.entries.values().map(|e| e.0))
        .collect();
    let mut lost: Vec<Ino> = t
        .inodes
        .iter()
        .filter(|(ino, i)| !reached.contains(*ino) && i.attr.nlink != 0)
        .map(|(ino, _)| *ino)
        .collect();
    lost.sort_by_key(|ino| (named.contains(ino), *ino));
    for ino in lost {
        if reached.contains(&ino) {
            continue;
        }
        let name: Name = format!("lost+found.{ino}").into_bytes().into();
        insert_entry(t, ROOT_INO, name.clone(), ino);
        out.push(format!(
            "{prefix}inode {ino} was not reachable from the root; linked as /{}",
            String::from_utf8_lossy(&name)
        ));
        reached.extend(walk(t, ino, &mut reached.clone(), prefix, out));
    }
    // Orphans (link count 0, unreached) frozen in a committed layer.
    if committed {
        let orphans: Vec<Ino> = t
            .inodes
            .iter()
            .filter(|(ino, i)| **ino != ROOT_INO && !reached.contains(*ino) && i.attr.nlink == 0)
            .map(|(ino, _)| *ino)
            .collect();
        for ino in orphans {
            t.inodes.remove(&ino);
            out.push(format!(
                "{prefix}inode {ino} (unlinked, committed while open) removed"
            ));
        }
    }
    // Link counts.
    let mut links: HashMap<Ino, u32> = HashMap::new();
    let mut subdirs: HashMap<Ino, u32> = HashMap::new();
    for (ino, i) in t.inodes.iter() {
        if let Content::Dir(d) = &i.content {
            for (child, _) in d.entries.values() {
                *links.entry(*child).or_default() += 1;
                if t.get(*child).is_some_and(|c| c.attr.is_dir()) {
                    *subdirs.entry(*ino).or_default() += 1;
                }
            }
        }
    }
    let mut fixes = Vec::new();
    for (ino, i) in t.inodes.iter() {
        let n = links.get(ino).copied().unwrap_or(0);
        if i.attr.nlink == 0 && n == 0 {
            continue;
        }
        let want = if i.attr.is_dir() {
            2 + subdirs.get(ino).copied().unwrap_or(0)
        } else {
            n
        };
        if i.attr.nlink != want {
            fixes.push((*ino, i.attr.nlink, want));
        }
    }
    for (ino, was, want) in fixes {
        if let Some(i) = t.inodes.get_mut(&ino) {
            i.attr.nlink = want;
        }
        out.push(format!(
            "{prefix}inode {ino}: link count {was} set to {want}"
        ));
    }
}

/// Inodes reached from `from` (which is added); a directory reached twice loses the second
/// entry.
fn walk(
    t: &mut Tree,
    from: Ino,
    seen: &mut BTreeSet<Ino>,
    prefix: &str,
    out: &mut Vec<String>,
) -> BTreeSet<Ino> {
    let mut reached = BTreeSet::from([from]);
    seen.insert(from);
    let mut stack = vec![from];
    while let Some(dir) = stack.pop() {
        let Some(d) = t.get(dir).and_then(|i| i.dir()) else {
            continue;
        };
        let entries: Vec<(Name, Ino)> = d.entries.iter().map(|(n, e)| (n.clone(), e.0)).collect();
        for (name, child) in entries {
            let is_dir = t.get(child).is_some_and(|c| c.attr.is_dir());
            if is_dir && (seen.contains(&child) || child == ROOT_INO) {
                remove_entry(t, dir, &name);
                out.push(format!(
                    "{prefix}directory {dir}: entry {:?} named directory {child}, which has \
                     another parent; removed",
                    String::from_utf8_lossy(&name)
                ));
                continue;
            }
            seen.insert(child);
            reached.insert(child);
            if is_dir {
                stack.push(child);
            }
        }
    }
    reached
}

fn remove_entry(t: &mut Tree, dir: Ino, name: &[u8]) {
    if let Some(Inode {
        content: Content::Dir(d),
        ..
    }) = t.inodes.get_mut(&dir)
    {
        d.remove(name);
    }
}

fn insert_entry(t: &mut Tree, dir: Ino, name: Name, ino: Ino) {
    if let Some(Inode {
        content: Content::Dir(d),
        ..
    }) = t.inodes.get_mut(&dir)
    {
        d.insert(name, ino);
    }
}

/// Mappings of the layer's own inodes (those that differ from its parent's) to blocks
/// outside its parent chain or not allocated.
fn fix_extents(
    ls: &Layers,
    alloc: &mut crate::alloc::Allocator,
    slot: Slot,
    t: &mut Tree,
    name: &str,
    out: &mut Vec<String>,
) {
    let Some(layer) = ls.get(slot) else { return };
    let me = layer.owner;
    let mut chain: Vec<Owner> = vec![me];
    let mut p = layer.parent;
    while let Some(ps) = p {
        let Some(pl) = ls.get(ps) else { break };
        chain.push(pl.owner);
        p = pl.parent;
        if chain.len() > ls.map.len() + 1 {
            break;
        }
    }
    let own: Vec<Ino> = match layer.parent.and_then(|p| ls.get(p)) {
        Some(pl) => pl
            .tree
            .inodes
            .diff(&t.inodes)
            .filter_map(|d| match d {
                DiffItem::Add(k, _) | DiffItem::Update { new: (k, _), .. } => Some(*k),
                DiffItem::Remove(..) => None,
            })
            .collect(),
        None => t.inodes.keys().copied().collect(),
    };
    for ino in own {
        let Some(Inode {
            content: Content::File(x),
            ..
        }) = t.inodes.get_mut(&ino)
        else {
            continue;
        };
        let bad: Vec<(u64, crate::meta::Extent)> = x
            .iter()
            .filter(|(_, e)| {
                !chain.contains(&e.owner) || (0..e.len).any(|k| !alloc.is_used(e.pblk + k))
            })
            .collect();
        for (lb, e) in bad {
            let free = (0..e.len).all(|k| !alloc.is_used(e.pblk + k));
            let (lo, hi) = alloc.range();
            if free && e.pblk >= lo && e.pblk + e.len <= hi {
                alloc.mark_used(e.pblk, e.len);
                let _ = x.map(lb, e.pblk, e.len, me);
                out.push(format!(
                    "layer {name}: inode {ino} blocks {lb}..{} mapped {} block(s) from {} \
                     that no layer owned (tag {}); the layer owns them now",
                    lb + e.len,
                    e.len,
                    e.pblk,
                    e.owner
                ));
            } else {
                let _ = x.unmap(lb, e.len);
                out.push(format!(
                    "layer {name}: inode {ino} blocks {lb}..{} mapped {} block(s) from {} \
                     owned by tag {} outside its chain (or outside the data region); \
                     unmapped: that part of the file now reads as zeros",
                    lb + e.len,
                    e.len,
                    e.pblk,
                    e.owner
                ));
            }
        }
    }
}

/// Carry the changes from `old` to `new` (one layer's tree before and after its repair) to
/// every descendant that still holds the old inode unchanged.
fn carry_to_descendants(ls: &mut Layers, slot: Slot, old: &Tree, new: &Tree) {
    let changes: Vec<(Ino, Inode, Option<Inode>)> = old
        .inodes
        .diff(&new.inodes)
        .filter_map(|d| match d {
            DiffItem::Update {
                old: (k, o),
                new: (_, n),
            } => Some((*k, o.clone(), Some(n.clone()))),
            DiffItem::Remove(k, o) => Some((*k, o.clone(), None)),
            DiffItem::Add(..) => None,
        })
        .collect();
    if changes.is_empty() {
        return;
    }
    let mut stack = ls.children(slot);
    while let Some(c) = stack.pop() {
        stack.extend(ls.children(c));
        let Some(l) = ls.map.get_mut(&c) else {
            continue;
        };
        for (ino, o, n) in &changes {
            if l.tree.inodes.get(ino) == Some(o) {
                match n {
                    Some(n) => {
                        l.tree.inodes.insert(*ino, n.clone());
                    }
                    None => {
                        l.tree.inodes.remove(ino);
                    }
                }
            }
        }
    }
}

/// Owned blocks without a checksum get one; checksums of blocks nobody maps are dropped.
fn fix_checksums(dev: &dyn Device, ls: &mut Layers, out: &mut Vec<String>) -> Result<()> {
    let mut owned: BTreeMap<u64, u64> = BTreeMap::new();
    for slot in ls.topo_order() {
        for (b, n) in ls.owned_extents(slot) {
            owned.insert(b, n);
        }
    }
    let mut missing = 0u64;
    for (&b, &n) in &owned {
        let mut got = Vec::new();
        ls.crcs.get_run(b, n, &mut got);
        for (k, c) in got.iter().enumerate() {
            if c.is_none() {
                let buf = read_blocks(dev, b + k as u64, 1)?;
                ls.crcs.set(b + k as u64, &block_crcs(&buf));
                missing += 1;
            }
        }
    }
    if missing > 0 {
        out.push(format!(
            "{missing} owned data block(s) had no checksum; each now has the checksum of \
             what it holds (nothing to check that data against)"
        ));
    }
    let mut stale = Vec::new();
    for (b, v) in ls.crcs.runs() {
        for k in 0..v.len() as u64 {
            let x = b + k;
            let mapped = owned
                .range(..=x)
                .next_back()
                .is_some_and(|(s, n)| x < s + n);
            if !mapped {
                stale.push(x);
            }
        }
    }
    if !stale.is_empty() {
        for x in &stale {
            ls.crcs.clear(*x, 1);
        }
        out.push(format!(
            "{} checksum(s) kept for blocks no layer maps; dropped",
            stale.len()
        ));
    }
    Ok(())
}

/// Tests only: recover the image, let `f` change the layers (to corrupt them as a bug or a
/// bad disk could), and write them as a new checkpoint.
#[doc(hidden)]
pub fn rewrite_for_tests(dev: &dyn Device, f: impl FnOnce(&mut Layers)) -> Result<()> {
    let mut l = load(dev)?;
    f(&mut l.layers);
    let sb = l.sb.clone();
    write_offline(dev, &sb, &l.layers, &mut l.alloc, (l.pos, l.seq))?;
    Ok(())
}

/// Tests only: recover the image, let `f` change the encoded checkpoint payload (to corrupt it
/// as a bug could, below the layer structures: a parent slot that names no layer), and write
/// it as a new checkpoint with valid checksums.
#[doc(hidden)]
pub fn rewrite_payload_for_tests(dev: &dyn Device, f: impl FnOnce(&mut Vec<u8>)) -> Result<()> {
    let mut l = load(dev)?;
    let mut bytes = l.layers.encode();
    f(&mut bytes);
    let sb = l.sb.clone();
    crate::checkpoint::write_offline_bytes(dev, &sb, &bytes, &mut l.alloc, (l.pos, l.seq))?;
    Ok(())
}
