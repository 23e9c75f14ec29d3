//! The checker: superblocks, checkpoint and journal checksums, block allocation against
//! references, the directory tree and link counts.

use std::collections::HashMap;

use crate::device::Device;
use crate::error::Result;
use crate::format::ROOT_INO;
use crate::meta::Content;
use crate::recovery;

/// What fsck found.
#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<String>,
    pub inodes: u64,
    pub blocks_used: u64,
    pub blocks_total: u64,
    pub chunks_replayed: u64,
    /// The image's format version (1: no data checksums; `strata migrate` converts it).
    pub version: u32,
    /// Space nothing can free, which is not damage: inodes unlinked while open and then
    /// frozen by a commit or snapshot of their layer (an active layer drops its own at every
    /// open; a committed layer never changes). `fsck --repair` removes them.
    pub leaks: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Check the file system on `dev` without changing it. Errors mean it cannot be read at all.
pub fn check(dev: &dyn Device) -> Result<Report> {
    let l = recovery::load_salvage(dev)?;
    let mut r = Report {
        problems: l.problems.clone(),
        chunks_replayed: l.chunks_replayed,
        version: l.sb.version,
        ..Default::default()
    };
    // Layers no base layer reaches: a parent slot that names no layer, or a loop of parents.
    let reached: std::collections::HashSet<_> = l.layers.topo_order().into_iter().collect();
    for (slot, layer) in &l.layers.map {
        if reached.contains(slot) {
            continue;
        }
        let name = String::from_utf8_lossy(&layer.id);
        match layer.parent {
            Some(p) if !l.layers.map.contains_key(&p) => r.problems.push(format!(
                "layer {name} (slot {slot}): parent slot {p} is missing; only what it changed \
                 itself is readable"
            )),
            _ => r.problems.push(format!(
                "layer {name} (slot {slot}): not reached from a base layer (its parent chain \
                 is broken or loops)"
            )),
        }
    }
    r.blocks_total = l.alloc.total();
    r.blocks_used = l.alloc.total() - l.alloc.free();
    // Checksums are kept only for blocks some layer owns (a freed block's goes with it).
    let mut owned: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    for slot in l.layers.topo_order() {
        owned.extend(l.layers.owned_extents(slot));
    }
    let stale: Vec<u64> = l
        .layers
        .crcs
        .runs()
        .into_iter()
        .flat_map(|(b, v)| b..b + v.len() as u64)
        .filter(|x| {
            owned
                .range(..=*x)
                .next_back()
                .is_none_or(|(s, n)| *x >= s + n)
        })
        .collect();
    if let Some(first) = stale.first() {
        r.problems.push(format!(
            "{} checksum(s) kept for blocks no layer owns (the first: block {first})",
            stale.len()
        ));
    }
    for slot in l.layers.topo_order() {
        let Some(layer) = l.layers.get(slot) else {
            continue;
        };
        let name = String::from_utf8_lossy(&layer.id).into_owned();
        check_tree(&layer.tree, &format!("layer {name}: "), &mut r.problems);
        if layer.state != crate::meta::LayerState::Active {
            // Only the layer's own copies (a child shares its parent's).
            let own = |ino: &u64, i: &crate::meta::Inode| {
                *ino != ROOT_INO
                    && i.attr.nlink == 0
                    && layer
                        .parent
                        .and_then(|p| l.layers.get(p))
                        .is_none_or(|p| p.tree.get(*ino) != Some(i))
            };
            for (ino, i) in layer.tree.inodes.iter().filter(|(k, v)| own(k, v)) {
                let blocks = i.extents().map_or(0, |x| x.blocks());
                r.leaks.push(format!(
                    "layer {name}: inode {ino} is unlinked (link count 0) in a committed \
                     layer and holds {blocks} block(s) nothing can free"
                ));
            }
        }
        // Every block the layer owns has a checksum (version 2).
        if l.sb.version >= 2 {
            for (b, n) in l.layers.owned_extents(slot) {
                let mut got = Vec::new();
                l.layers.crcs.get_run(b, n, &mut got);
                let missing = got.iter().filter(|c| c.is_none()).count();
                if missing > 0 {
                    r.problems.push(format!(
                        "layer {name}: {missing} of the {n} block(s) from block {b} have no checksum"
                    ));
                }
            }
        }
        r.inodes += layer.tree.inodes.len() as u64;
        // Every block a layer can see is allocated and owned by it or one of its ancestors.
        let mut owners = vec![layer.owner];
        let mut p = layer.parent;
        while let Some(ps) = p {
            let Some(pl) = l.layers.get(ps) else {
                r.problems
                    .push(format!("layer {name}: parent slot {ps} is missing"));
                break;
            };
            owners.push(pl.owner);
            p = pl.parent;
            if owners.len() > l.layers.map.len() + 1 {
                r.problems
                    .push(format!("layer {name}: parent chain has a cycle"));
                break;
            }
        }
        let parent_tree = layer.parent.and_then(|p| l.layers.get(p)).map(|p| &p.tree);
        let mut visit = |ino: u64, i: &crate::meta::Inode| {
            if let Some(x) = i.extents() {
                for (lb, e) in x.iter() {
                    if !owners.contains(&e.owner) {
                        r.problems.push(format!("layer {name}: inode {ino} block {lb} is owned by tag {} outside its chain", e.owner));
                    }
                    if (0..e.len).any(|k| !l.alloc.is_used(e.pblk + k)) {
                        r.problems.push(format!(
                            "layer {name}: inode {ino} maps block {} which is free",
                            e.pblk
                        ));
                    }
                }
            }
        };
        match parent_tree {
            Some(pt) => {
                for d in pt.inodes.diff(&layer.tree.inodes) {
                    match d {
                        imbl::ordmap::DiffItem::Add(k, v)
                        | imbl::ordmap::DiffItem::Update { new: (k, v), .. } => visit(*k, v),
                        imbl::ordmap::DiffItem::Remove(..) => {}
                    }
                }
            }
            None => layer.tree.inodes.iter().for_each(|(k, v)| visit(*k, v)),
        }
    }
    Ok(r)
}

/// Directory tree and link counts of one layer.
fn check_tree(t: &crate::meta::Tree, prefix: &str, problems: &mut Vec<String>) {
    let mut links: HashMap<u64, u32> = HashMap::new();
    let mut subdirs: HashMap<u64, u32> = HashMap::new();
    for (ino, i) in t.inodes.iter() {
        if let Content::Dir(d) = &i.content {
            for (name, (child, _)) in d.entries.iter() {
                match t.get(*child) {
                    None => problems.push(format!(
                        "{prefix}directory {ino}: entry {:?} names missing inode {child}",
                        String::from_utf8_lossy(name)
                    )),
                    Some(c) => {
                        *links.entry(*child).or_default() += 1;
                        if c.attr.is_dir() {
                            *subdirs.entry(*ino).or_default() += 1;
                        }
                    }
                }
            }
        }
    }
    for (ino, i) in t.inodes.iter() {
        let n = links.get(ino).copied().unwrap_or(0);
        if i.attr.is_dir() {
            if *ino != ROOT_INO && n != 1 && !(i.attr.nlink == 0 && n == 0) {
                problems.push(format!("{prefix}directory {ino} has {n} parents"));
            }
            let want = 2 + subdirs.get(ino).copied().unwrap_or(0);
            if i.attr.nlink != want && !(i.attr.nlink == 0 && n == 0) {
                problems.push(format!(
                    "{prefix}directory {ino}: nlink {} but {} expected",
                    i.attr.nlink, want
                ));
            }
        } else if i.attr.nlink != n && !(i.attr.nlink == 0 && n == 0) {
            problems.push(format!(
                "{prefix}inode {ino}: nlink {} but {n} directory entries",
                i.attr.nlink
            ));
        }
        if n == 0 && *ino != ROOT_INO && i.attr.nlink != 0 {
            problems.push(format!(
                "{prefix}inode {ino} is not reachable from the root"
            ));
        }
    }
}
