//! The checker: superblocks, checkpoint and journal checksums, block allocation against
//! references, the directory tree and link counts.

use std::collections::HashMap;

use crate::device::Device;
use crate::error::Result;
use crate::format::ROOT_INO;
use crate::fs;
use crate::meta::Content;

/// What fsck found.
#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<String>,
    pub inodes: u64,
    pub blocks_used: u64,
    pub blocks_total: u64,
    pub chunks_replayed: u64,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Check the file system on `dev` without changing it. Errors mean it cannot be read at all.
pub fn check(dev: &dyn Device) -> Result<Report> {
    let l = fs::load(dev)?;
    let mut r = Report {
        problems: l.problems.clone(),
        chunks_replayed: l.chunks_replayed,
        ..Default::default()
    };
    let t = &l.tree;
    r.inodes = t.inodes.len() as u64;
    r.blocks_total = l.alloc.total();
    r.blocks_used = l.alloc.total() - l.alloc.free();
    // Directory tree: every entry names an existing inode; count links.
    let mut links: HashMap<u64, u32> = HashMap::new();
    let mut subdirs: HashMap<u64, u32> = HashMap::new();
    for (ino, i) in t.inodes.iter() {
        if let Content::Dir(d) = &i.content {
            for (name, (child, _)) in d.entries.iter() {
                match t.get(*child) {
                    None => r.problems.push(format!(
                        "directory {ino}: entry {:?} names missing inode {child}",
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
            if *ino != ROOT_INO && n != 1 {
                r.problems.push(format!("directory {ino} has {n} parents"));
            }
            let want = 2 + subdirs.get(ino).copied().unwrap_or(0);
            if i.attr.nlink != want && !(i.attr.nlink == 0 && n == 0) {
                r.problems.push(format!(
                    "directory {ino}: nlink {} but {} expected",
                    i.attr.nlink, want
                ));
            }
        } else if i.attr.nlink != n && !(i.attr.nlink == 0 && n == 0) {
            r.problems.push(format!(
                "inode {ino}: nlink {} but {n} directory entries",
                i.attr.nlink
            ));
        }
        if n == 0 && *ino != ROOT_INO && i.attr.nlink != 0 {
            r.problems
                .push(format!("inode {ino} is not reachable from the root"));
        }
    }
    Ok(r)
}
