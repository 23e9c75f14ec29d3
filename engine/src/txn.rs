//! A metadata transaction in one layer: each record is applied to the in-memory tree as it
//! is added and appended to the pending journal bytes, which the next commit writes.

use crate::api::Stat;
use crate::engine::Meta;
use crate::error::{errno, Result};
use crate::format::{Time, BLOCK};
use crate::journal;
use crate::layer::Layer;
use crate::meta::*;
use crate::node::{node_of, Node};

/// The extended attribute that holds file capabilities.
pub(crate) const CAPS_XATTR: &[u8] = b"security.capability";

pub(crate) fn sectors(attr: &Attr, i: &Inode) -> u64 {
    match i.extents() {
        Some(x) => x.blocks() * (BLOCK / 512),
        None if attr.is_dir() => BLOCK / 512,
        None => 0,
    }
}

/// A metadata transaction in one layer: records are applied as they are added.
pub(crate) struct Txn<'a> {
    pub(crate) m: &'a mut Meta,
    pub(crate) slot: Slot,
    pub(crate) freed: Vec<(u64, u64)>,
}

impl Txn<'_> {
    pub(crate) fn rec(&mut self, r: Record) -> Result<()> {
        if let Record::Map { len, crcs, .. } = &r {
            if crcs.len() as u64 != *len {
                return Err(crate::error::Error::corrupt(
                    format!("block map of {len} blocks with {} checksums", crcs.len()),
                    0,
                ));
            }
        }
        let mut mapped = Vec::new();
        self.m
            .layers
            .apply(self.slot, &r, &mut self.freed, &mut mapped)?;
        journal::encode_record(&mut self.m.pending, self.slot, &r);
        Ok(())
    }
    pub(crate) fn layer(&self) -> Result<&Layer> {
        self.m.layers.get(self.slot).ok_or(errno(libc::ENOENT))
    }
    pub(crate) fn node(&self, ino: Ino) -> Node {
        node_of(self.slot, ino)
    }
    pub(crate) fn inode(&self, ino: Ino) -> Result<&Inode> {
        self.layer()?.tree.get(ino).ok_or(errno(libc::ENOENT))
    }
    pub(crate) fn attr(&self, ino: Ino) -> Result<Attr> {
        Ok(self.inode(ino)?.attr)
    }
    pub(crate) fn set_attr(&mut self, ino: Ino, attr: Attr) -> Result<()> {
        let n = self.node(ino);
        self.m.dirty.remove(&n);
        self.rec(Record::SetAttr { ino, attr })
    }
    pub(crate) fn dir(&self, ino: Ino) -> Result<&Dir> {
        let i = self.inode(ino)?;
        i.dir().ok_or(errno(libc::ENOTDIR))
    }
    pub(crate) fn stat(&self, ino: Ino) -> Result<Stat> {
        let i = self.inode(ino)?;
        Ok(Stat {
            ino: self.node(ino),
            attr: i.attr,
            blocks: sectors(&i.attr, i),
        })
    }
    pub(crate) fn take_ref(&mut self, ino: Ino) {
        let n = self.node(ino);
        *self.m.refs.entry(n).or_insert(0) += 1;
    }
    /// Drop a link to `ino` (the directory entry is already gone).
    pub(crate) fn drop_link(&mut self, ino: Ino, now: Time) -> Result<()> {
        let mut a = self.attr(ino)?;
        if a.is_dir() {
            a.nlink = 0;
        } else {
            a.nlink = a.nlink.saturating_sub(1);
        }
        a.ctime = now;
        let n = self.node(ino);
        if a.nlink == 0 && !self.m.refs.contains_key(&n) && !self.m.refs_unknown {
            self.m.dirty.remove(&n);
            self.rec(Record::DelInode { ino })
        } else {
            self.set_attr(ino, a)
        }
    }
    /// Remove the file capabilities (`security.capability`) a write, truncate or chown
    /// invalidates.
    pub(crate) fn drop_capabilities(&mut self, ino: Ino) -> Result<()> {
        if self.inode(ino)?.xattrs.contains_key(CAPS_XATTR) {
            self.rec(Record::RmXattr {
                ino,
                name: std::sync::Arc::from(CAPS_XATTR),
            })?;
        }
        Ok(())
    }

    /// An inode's metadata changed (ctime only).
    pub(crate) fn touch_ctime(&mut self, ino: Ino, now: Time) -> Result<()> {
        let mut a = self.attr(ino)?;
        a.ctime = now;
        self.set_attr(ino, a)
    }
    pub(crate) fn touch_dir(&mut self, dir: Ino, now: Time, nlink_delta: i32) -> Result<()> {
        let mut a = self.attr(dir)?;
        a.mtime = now;
        a.ctime = now;
        a.nlink = (a.nlink as i64 + nlink_delta as i64).max(0) as u32;
        self.set_attr(dir, a)
    }
}
