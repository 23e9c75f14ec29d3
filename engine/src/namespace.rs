//! Names and attributes: lookup, create (every node type), link, unlink, rmdir, rename,
//! readdir, getattr/setattr, extended attributes, statfs, and the kernel's references
//! (lookup counts and forget: an unlinked inode lives until the kernel forgets it).

use std::sync::Arc;

use crate::api::{Caller, DirEntry, SetAttr, Stat, StatFs};
use crate::data::MAX_FILE_SIZE;
use crate::engine::{tree_of, Engine, Meta};
use crate::error::{errno, Result};
use crate::format::*;
use crate::limits::{inodes_added, Limits};
use crate::meta::*;
use crate::node::{node_of, split, Node, MOUNT_ROOT};
use crate::txn::{sectors, Txn};

fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > MAX_NAME {
        return Err(errno(libc::ENAMETOOLONG));
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(errno(libc::EINVAL));
    }
    Ok(())
}

impl Engine {
    pub(crate) fn root_stat(&self, m: &Meta) -> Stat {
        let t = self.inner.started;
        // Root only: other users reach a layer only through a bind mount of it (as a
        // container does), never by walking into other containers' layers from here.
        let attr = Attr {
            mode: S_IFDIR | 0o700,
            nlink: 2 + m.layers.map.len() as u32,
            atime: t,
            mtime: t,
            ctime: t,
            btime: t,
            ..Default::default()
        };
        Stat {
            ino: MOUNT_ROOT,
            attr,
            blocks: 0,
        }
    }

    pub fn getattr(&self, node: Node) -> Result<Stat> {
        let (slot, ino) = split(node);
        let m = self.inner.meta.lock();
        if slot == 0 {
            return if ino == ROOT_INO {
                Ok(self.root_stat(&m))
            } else {
                Err(errno(libc::ENOENT))
            };
        }
        let i = tree_of(&m, slot)?.get(ino).ok_or(errno(libc::ENOENT))?;
        Ok(Stat {
            ino: node,
            attr: i.attr,
            blocks: sectors(&i.attr, i),
        })
    }

    /// Look up `name` in `parent`. A successful lookup counts as one kernel reference to the
    /// inode (see [`Engine::forget`]). In the mount root, names are layer ids.
    pub fn lookup(&self, parent: Node, name: &[u8]) -> Result<Stat> {
        if name.len() > MAX_NAME {
            return Err(errno(libc::ENAMETOOLONG));
        }
        let (slot, pino) = split(parent);
        let mut m = self.inner.meta.lock();
        let node = if slot == 0 {
            let ls = m.layers.slot_of(name).ok_or(errno(libc::ENOENT))?;
            node_of(ls, ROOT_INO)
        } else {
            let t = tree_of(&m, slot)?;
            let d = t
                .get(pino)
                .ok_or(errno(libc::ENOENT))?
                .dir()
                .ok_or(errno(libc::ENOTDIR))?;
            match name {
                b"." => parent,
                _ => node_of(slot, d.get(name).ok_or(errno(libc::ENOENT))?),
            }
        };
        let (s2, ino) = split(node);
        let i = tree_of(&m, s2)?.get(ino).ok_or(errno(libc::ENOENT))?;
        let st = Stat {
            ino: node,
            attr: i.attr,
            blocks: sectors(&i.attr, i),
        };
        *m.refs.entry(node).or_insert(0) += 1;
        Ok(st)
    }

    pub fn readlink(&self, node: Node) -> Result<Name> {
        self.with_tree(node, |t, ino| {
            match &t.get(ino).ok_or(errno(libc::ENOENT))?.content {
                Content::Symlink(s) => Ok(s.clone()),
                _ => Err(errno(libc::EINVAL)),
            }
        })
    }

    /// Create a node of any type (regular, dir, symlink, device, fifo, socket). The new entry
    /// counts as one kernel reference, like a lookup.
    pub fn mknod(
        &self,
        parent: Node,
        name: &[u8],
        mode: u32,
        rdev: u32,
        who: Caller,
        symlink: Option<&[u8]>,
    ) -> Result<Stat> {
        let _op = self.inner.stats.meta_op(
            parent,
            crate::stats::MetaOp::of_mode(mode, symlink.is_some()),
        );
        check_name(name)?;
        if let Some(t) = symlink {
            if t.len() > MAX_SYMLINK || t.is_empty() {
                return Err(errno(if t.is_empty() {
                    libc::ENOENT
                } else {
                    libc::ENAMETOOLONG
                }));
            }
        }
        self.change(parent, |t, parent| {
            let pattr = t.attr(parent)?;
            let d = t.dir(parent)?;
            if pattr.nlink == 0 {
                return Err(errno(libc::ENOENT));
            }
            if d.get(name).is_some() {
                return Err(errno(libc::EEXIST));
            }
            let layer = t.layer()?;
            if let Some(max) = Limits::of(&layer.labels).inodes {
                if inodes_added(&t.m.layers, layer) >= max {
                    return Err(errno(libc::EDQUOT));
                }
            }
            let now = Time::now();
            let mut mode = mode;
            let mut gid = who.gid;
            if pattr.mode & libc::S_ISGID != 0 {
                gid = pattr.gid;
                if mode & S_IFMT == S_IFDIR {
                    mode |= libc::S_ISGID;
                }
            }
            let is_dir = mode & S_IFMT == S_IFDIR;
            let attr = Attr {
                mode,
                uid: who.uid,
                gid,
                nlink: if is_dir { 2 } else { 1 },
                size: symlink.map(|s| s.len() as u64).unwrap_or(0),
                atime: now,
                mtime: now,
                ctime: now,
                btime: now,
                rdev,
                flags: 0,
            };
            let ino = t.layer()?.tree.next_ino;
            t.rec(Record::NewInode {
                ino,
                attr,
                symlink: symlink.map(Arc::from),
            })?;
            t.rec(Record::Link {
                dir: parent,
                name: Arc::from(name),
                ino,
            })?;
            t.touch_dir(parent, now, if is_dir { 1 } else { 0 })?;
            t.take_ref(ino);
            t.stat(ino)
        })
    }

    pub fn link(&self, node: Node, parent: Node, name: &[u8]) -> Result<Stat> {
        let _op = self.inner.stats.meta_op(parent, crate::stats::MetaOp::Link);
        check_name(name)?;
        if split(node).0 != split(parent).0 {
            return Err(errno(libc::EXDEV));
        }
        let ino = split(node).1;
        self.change(parent, |t, parent| {
            let mut a = t.attr(ino)?;
            if a.is_dir() {
                return Err(errno(libc::EPERM));
            }
            if a.nlink == 0 {
                return Err(errno(libc::ENOENT));
            }
            if t.dir(parent)?.get(name).is_some() {
                return Err(errno(libc::EEXIST));
            }
            if a.nlink >= 65000 {
                return Err(errno(libc::EMLINK));
            }
            let now = Time::now();
            t.rec(Record::Link {
                dir: parent,
                name: Arc::from(name),
                ino,
            })?;
            a.nlink += 1;
            a.ctime = now;
            t.set_attr(ino, a)?;
            t.touch_dir(parent, now, 0)?;
            t.take_ref(ino);
            t.stat(ino)
        })
    }

    pub fn unlink(&self, parent: Node, name: &[u8]) -> Result<()> {
        let _op = self
            .inner
            .stats
            .meta_op(parent, crate::stats::MetaOp::Unlink);
        if name.len() > MAX_NAME {
            return Err(errno(libc::ENAMETOOLONG));
        }
        self.change(parent, |t, parent| {
            let ino = t.dir(parent)?.get(name).ok_or(errno(libc::ENOENT))?;
            if t.attr(ino)?.is_dir() {
                return Err(errno(libc::EISDIR));
            }
            let now = Time::now();
            t.rec(Record::Unlink {
                dir: parent,
                name: Arc::from(name),
            })?;
            t.drop_link(ino, now)?;
            t.touch_dir(parent, now, 0)
        })
    }

    pub fn rmdir(&self, parent: Node, name: &[u8]) -> Result<()> {
        let _op = self
            .inner
            .stats
            .meta_op(parent, crate::stats::MetaOp::Rmdir);
        if name.len() > MAX_NAME {
            return Err(errno(libc::ENAMETOOLONG));
        }
        if name == b"." {
            return Err(errno(libc::EINVAL));
        }
        if name == b".." {
            return Err(errno(libc::ENOTEMPTY));
        }
        self.change(parent, |t, parent| {
            let ino = t.dir(parent)?.get(name).ok_or(errno(libc::ENOENT))?;
            let d = t.dir(ino)?;
            if !d.is_empty() {
                return Err(errno(libc::ENOTEMPTY));
            }
            let now = Time::now();
            t.rec(Record::Unlink {
                dir: parent,
                name: Arc::from(name),
            })?;
            t.drop_link(ino, now)?;
            t.touch_dir(parent, now, -1)
        })
    }

    /// rename(2) with RENAME_NOREPLACE / RENAME_EXCHANGE. Across layers: EXDEV.
    pub fn rename(
        &self,
        opn: Node,
        oname: &[u8],
        npn: Node,
        nname: &[u8],
        flags: u32,
    ) -> Result<()> {
        let _op = self.inner.stats.meta_op(opn, crate::stats::MetaOp::Rename);
        check_name(nname)?;
        if oname.len() > MAX_NAME {
            return Err(errno(libc::ENAMETOOLONG));
        }
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 || (noreplace && exchange)
        {
            return Err(errno(libc::EINVAL));
        }
        if split(opn).0 != split(npn).0 {
            return Err(errno(libc::EXDEV));
        }
        let np = split(npn).1;
        self.change(opn, |t, op| {
            let src = t.dir(op)?.get(oname).ok_or(errno(libc::ENOENT))?;
            let dst = t.dir(np)?.get(nname);
            let sattr = t.attr(src)?;
            let now = Time::now();
            let (oname_a, nname_a): (Name, Name) = (Arc::from(oname), Arc::from(nname));
            // A directory may not move below itself.
            if sattr.is_dir() && op != np && Self::is_ancestor(t, src, np)? {
                return Err(errno(libc::EINVAL));
            }
            if exchange {
                let dst = dst.ok_or(errno(libc::ENOENT))?;
                let dattr = t.attr(dst)?;
                if dattr.is_dir() && op != np && Self::is_ancestor(t, dst, op)? {
                    return Err(errno(libc::EINVAL));
                }
                t.rec(Record::Link {
                    dir: op,
                    name: oname_a,
                    ino: dst,
                })?;
                t.rec(Record::Link {
                    dir: np,
                    name: nname_a,
                    ino: src,
                })?;
                if op != np && sattr.is_dir() != dattr.is_dir() {
                    let d = if sattr.is_dir() { 1 } else { -1 };
                    t.touch_dir(op, now, -d)?;
                    t.touch_dir(np, now, d)?;
                } else {
                    t.touch_dir(op, now, 0)?;
                    if op != np {
                        t.touch_dir(np, now, 0)?;
                    }
                }
                for i in [src, dst] {
                    t.touch_ctime(i, now)?;
                }
                return Ok(());
            }
            if let Some(dst) = dst {
                if noreplace {
                    return Err(errno(libc::EEXIST));
                }
                if dst == src {
                    return Ok(());
                }
                let dattr = t.attr(dst)?;
                match (sattr.is_dir(), dattr.is_dir()) {
                    (true, false) => return Err(errno(libc::ENOTDIR)),
                    (false, true) => return Err(errno(libc::EISDIR)),
                    (true, true) if !t.dir(dst)?.is_empty() => return Err(errno(libc::ENOTEMPTY)),
                    _ => {}
                }
                t.rec(Record::Unlink {
                    dir: np,
                    name: nname_a.clone(),
                })?;
                t.drop_link(dst, now)?;
                if dattr.is_dir() {
                    t.touch_dir(np, now, -1)?;
                }
            }
            t.rec(Record::Unlink {
                dir: op,
                name: oname_a,
            })?;
            t.rec(Record::Link {
                dir: np,
                name: nname_a,
                ino: src,
            })?;
            let d = if sattr.is_dir() { 1 } else { 0 };
            t.touch_dir(op, now, -d)?;
            t.touch_dir(np, now, d)?;
            t.touch_ctime(src, now)
        })
    }

    fn is_ancestor(t: &Txn, a: Ino, mut b: Ino) -> Result<bool> {
        // Walk from b up to the layer root by searching parents (directories have one parent).
        let tree = &t.layer()?.tree;
        let mut guard = 0;
        while b != ROOT_INO && guard < 100_000 {
            if b == a {
                return Ok(true);
            }
            let parent = tree.inodes.iter().find_map(|(pino, i)| match i.dir() {
                Some(d) if d.entries.values().any(|(c, _)| *c == b) => Some(*pino),
                _ => None,
            });
            match parent {
                Some(p) => b = p,
                None => return Ok(false),
            }
            guard += 1;
        }
        Ok(b == a)
    }

    pub fn readdir(&self, node: Node, offset: u64, max: usize) -> Result<Vec<DirEntry>> {
        let (slot, ino) = split(node);
        let m = self.inner.meta.lock();
        let mut out = Vec::new();
        if offset < 1 {
            out.push(DirEntry {
                name: Arc::from(&b"."[..]),
                ino: node,
                kind: S_IFDIR,
                offset: 1,
            });
        }
        if offset < 2 {
            out.push(DirEntry {
                name: Arc::from(&b".."[..]),
                ino: node,
                kind: S_IFDIR,
                offset: 2,
            });
        }
        if slot == 0 {
            if ino != ROOT_INO {
                return Err(errno(libc::ENOENT));
            }
            // The mount root: one directory per layer, resumable by slot.
            for (s, l) in m.layers.map.range(offset.saturating_sub(2) as Slot..) {
                if out.len() >= max {
                    break;
                }
                out.push(DirEntry {
                    name: l.id.clone(),
                    ino: node_of(*s, ROOT_INO),
                    kind: S_IFDIR,
                    offset: *s as u64 + 3,
                });
            }
            return Ok(out);
        }
        let tree = tree_of(&m, slot)?;
        let i = tree.get(ino).ok_or(errno(libc::ENOENT))?;
        let d = i.dir().ok_or(errno(libc::ENOTDIR))?;
        for (c, name) in d.by_cookie.range(offset.max(2) + 1..) {
            if out.len() >= max {
                break;
            }
            let Some(&(child, _)) = d.entries.get(name) else {
                continue;
            };
            let kind = tree.get(child).map(|c| c.attr.kind()).unwrap_or(S_IFREG);
            out.push(DirEntry {
                name: name.clone(),
                ino: node_of(slot, child),
                kind,
                offset: *c,
            });
        }
        Ok(out)
    }

    pub fn setattr(&self, node: Node, s: SetAttr) -> Result<Stat> {
        let _op = self
            .inner
            .stats
            .meta_op(node, crate::stats::MetaOp::Setattr);
        let _fl = s.size.map(|_| self.file_lock(node));
        let _g = _fl.as_ref().map(|l| l.lock());
        if let Some(size) = s.size {
            // Bytes past EOF in the last block are kept zero on disk: zero the tail of the new
            // last block first (through the write path, so an inherited block is copied).
            let cur = self.getattr(node)?;
            if cur.attr.is_reg() && size < cur.attr.size && size % BLOCK != 0 {
                let end = (size / BLOCK + 1) * BLOCK;
                let end = end.min(cur.attr.size);
                if self.is_mapped(node, size / BLOCK)? && end > size {
                    self.write_locked(node, size, &vec![0u8; (end - size) as usize])?;
                }
            }
        }
        self.change(node, |t, ino| {
            let mut a = t.attr(ino)?;
            let now = Time::now();
            if let Some(mode) = s.mode {
                a.mode = (a.mode & S_IFMT) | (mode & 0o7777);
            }
            if let Some(uid) = s.uid {
                a.uid = uid;
            }
            if let Some(gid) = s.gid {
                a.gid = gid;
            }
            if !a.is_dir() {
                if s.kill.suid_sgid {
                    a.mode &= !libc::S_ISUID;
                    if a.mode & 0o010 != 0 {
                        a.mode &= !libc::S_ISGID;
                    }
                }
                if s.kill.caps {
                    t.drop_capabilities(ino)?;
                }
            }
            if let Some(size) = s.size {
                if a.is_dir() {
                    return Err(errno(libc::EISDIR));
                }
                if !a.is_reg() {
                    return Err(errno(libc::EINVAL));
                }
                if size > MAX_FILE_SIZE {
                    return Err(errno(libc::EFBIG));
                }
                if size < a.size {
                    let first_gone = size.div_ceil(BLOCK);
                    t.rec(Record::Unmap {
                        ino,
                        lblk: first_gone,
                        len: u64::MAX - first_gone,
                    })?;
                }
                a.size = size;
                a.mtime = now;
            }
            if let Some(x) = s.atime {
                a.atime = x;
            }
            if let Some(x) = s.mtime {
                a.mtime = x;
            }
            a.ctime = s.ctime.unwrap_or(now);
            t.set_attr(ino, a)?;
            t.stat(ino)
        })
    }

    /// The kernel took `n` more references to `node` (a lookup, create or readdirplus entry).
    pub fn inc_ref(&self, node: Node, n: u64) {
        *self.inner.meta.lock().refs.entry(node).or_insert(0) += n;
    }

    /// The kernel dropped `n` references (FUSE forget). An unlinked inode with no references
    /// left is deleted.
    pub fn forget(&self, node: Node, n: u64) {
        let delete = {
            let mut m = self.inner.meta.lock();
            let Some(c) = m.refs.get_mut(&node) else {
                return;
            };
            *c = c.saturating_sub(n);
            if *c > 0 {
                return;
            }
            m.refs.remove(&node);
            let (slot, ino) = split(node);
            matches!(m.layers.get(slot), Some(l) if l.state == LayerState::Active
                && matches!(l.tree.get(ino), Some(i) if i.attr.nlink == 0 && ino != ROOT_INO))
        };
        if delete {
            let r = self.change(node, |t, ino| {
                let n = t.node(ino);
                if matches!(t.inode(ino), Ok(i) if i.attr.nlink == 0) && !t.m.refs.contains_key(&n)
                {
                    t.m.dirty.remove(&n);
                    t.rec(Record::DelInode { ino })?;
                }
                Ok(())
            });
            if let Err(e) = r {
                log::warn!("could not delete unlinked inode {node}: {e}");
            }
            self.inner.file_locks.lock().remove(&node);
        }
    }

    pub fn statfs(&self) -> StatFs {
        let m = self.inner.meta.lock();
        let files: u64 = m
            .layers
            .map
            .values()
            .map(|l| l.tree.inodes.len() as u64)
            .sum();
        StatFs {
            blocks: m.alloc.total(),
            bfree: m.alloc.free(),
            bavail: m.alloc.available(),
            files: files + m.alloc.available(),
            ffree: m.alloc.available(),
            bsize: BLOCK_SIZE as u32,
            namelen: MAX_NAME as u32,
        }
    }

    pub fn getxattr(&self, node: Node, name: &[u8]) -> Result<Name> {
        if split(node).0 == 0 {
            return Err(errno(libc::ENODATA));
        }
        self.with_tree(node, |t, ino| {
            let i = t.get(ino).ok_or(errno(libc::ENOENT))?;
            i.xattrs.get(name).cloned().ok_or(errno(libc::ENODATA))
        })
    }

    pub fn listxattr(&self, node: Node) -> Result<Vec<u8>> {
        if split(node).0 == 0 {
            return Ok(Vec::new());
        }
        self.with_tree(node, |t, ino| {
            let i = t.get(ino).ok_or(errno(libc::ENOENT))?;
            let mut out = Vec::new();
            for k in i.xattrs.keys() {
                out.extend_from_slice(k);
                out.push(0);
            }
            Ok(out)
        })
    }

    pub fn setxattr(&self, node: Node, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        let _op = self
            .inner
            .stats
            .meta_op(node, crate::stats::MetaOp::Setxattr);
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(errno(libc::ERANGE));
        }
        if value.len() > MAX_XATTR_VALUE {
            return Err(errno(libc::E2BIG));
        }
        if name.starts_with(b"system.") {
            return Err(errno(libc::EOPNOTSUPP));
        }
        self.change(node, |t, ino| {
            let exists = t.inode(ino)?.xattrs.contains_key(name);
            if flags & libc::XATTR_CREATE != 0 && exists {
                return Err(errno(libc::EEXIST));
            }
            if flags & libc::XATTR_REPLACE != 0 && !exists {
                return Err(errno(libc::ENODATA));
            }
            t.rec(Record::SetXattr {
                ino,
                name: Arc::from(name),
                value: Arc::from(value),
            })?;
            t.touch_ctime(ino, Time::now())
        })
    }

    pub fn removexattr(&self, node: Node, name: &[u8]) -> Result<()> {
        let _op = self
            .inner
            .stats
            .meta_op(node, crate::stats::MetaOp::Removexattr);
        self.change(node, |t, ino| {
            if !t.inode(ino)?.xattrs.contains_key(name) {
                return Err(errno(libc::ENODATA));
            }
            t.rec(Record::RmXattr {
                ino,
                name: Arc::from(name),
            })?;
            t.touch_ctime(ino, Time::now())
        })
    }
}
