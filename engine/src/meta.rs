//! In-memory metadata: inodes, directories, extent maps, xattrs, held in persistent
//! (structurally shared) maps so a snapshot of the whole tree is one pointer copy. Every
//! change is a [`Record`]; [`Tree::apply`] is the only code that changes a tree, both live
//! and during journal replay, so replay rebuilds exactly what was there.

use imbl::OrdMap;
use std::sync::Arc;

use crate::codec::{Dec, Enc};
use crate::error::{Error, Result};
use crate::format::{Time, ROOT_INO};

pub type Ino = u64;
pub type Name = Arc<[u8]>;

pub const S_IFMT: u32 = libc::S_IFMT;
pub const S_IFREG: u32 = libc::S_IFREG;
pub const S_IFDIR: u32 = libc::S_IFDIR;
pub const S_IFLNK: u32 = libc::S_IFLNK;

/// Inode attributes, as stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attr {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub btime: Time,
    pub rdev: u32,
    pub flags: u32,
}

impl Attr {
    pub fn kind(&self) -> u32 {
        self.mode & S_IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.kind() == S_IFDIR
    }
    pub fn is_reg(&self) -> bool {
        self.kind() == S_IFREG
    }

    fn encode(&self, e: &mut Enc) {
        e.u32(self.mode);
        e.u32(self.uid);
        e.u32(self.gid);
        e.u32(self.nlink);
        e.u64(self.size);
        for t in [self.atime, self.mtime, self.ctime, self.btime] {
            e.i64(t.sec);
            e.u32(t.nsec);
        }
        e.u32(self.rdev);
        e.u32(self.flags);
    }

    fn decode(d: &mut Dec) -> Result<Attr> {
        let mut a = Attr {
            mode: d.u32()?,
            uid: d.u32()?,
            gid: d.u32()?,
            nlink: d.u32()?,
            size: d.u64()?,
            ..Default::default()
        };
        let mut ts = [Time::default(); 4];
        for t in ts.iter_mut() {
            t.sec = d.i64()?;
            t.nsec = d.u32()?;
            if t.nsec >= 1_000_000_000 {
                return Err(Error::corrupt(
                    "timestamp nanoseconds out of range",
                    d.block,
                ));
            }
        }
        [a.atime, a.mtime, a.ctime, a.btime] = ts;
        a.rdev = d.u32()?;
        a.flags = d.u32()?;
        Ok(a)
    }
}

/// Ownership tag of the layer that allocated a block (see `engine/docs/format.md`).
pub type Owner = u32;

/// A run of physical blocks mapped at a logical block, and which layer owns them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub pblk: u64,
    pub len: u64,
    pub owner: Owner,
}

/// A piece of a file's logical range: where it is and who owns it (holes have no block).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub lblk: u64,
    pub pblk: Option<u64>,
    pub len: u64,
    pub owner: Owner,
}

/// A file's block map: logical block -> extent, non-overlapping.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extents(pub OrdMap<u64, Extent>);

impl Extents {
    /// The physical block behind logical block `l`, if mapped.
    pub fn lookup(&self, l: u64) -> Option<u64> {
        let (k, e) = self.0.get_prev(&l)?;
        (l < k + e.len).then(|| e.pblk + (l - k))
    }

    /// The physical block behind logical block `l` and its owner, if mapped.
    pub fn lookup_owned(&self, l: u64) -> Option<(u64, Owner)> {
        let (k, e) = self.0.get_prev(&l)?;
        (l < k + e.len).then(|| (e.pblk + (l - k), e.owner))
    }

    /// Runs covering logical `[l, l+n)`, holes included.
    pub fn runs(&self, l: u64, n: u64) -> Vec<Run> {
        let mut out = Vec::new();
        let end = l + n;
        let mut pos = l;
        let hole = |lblk, len| Run {
            lblk,
            pblk: None,
            len,
            owner: 0,
        };
        if let Some((k, e)) = self.0.get_prev(&l) {
            if l < k + e.len {
                let len = (k + e.len).min(end) - l;
                out.push(Run {
                    lblk: l,
                    pblk: Some(e.pblk + (l - k)),
                    len,
                    owner: e.owner,
                });
                pos = l + len;
            }
        }
        for (k, e) in self.0.range(pos..end) {
            if *k > pos {
                out.push(hole(pos, k - pos));
            }
            let len = (k + e.len).min(end) - k;
            out.push(Run {
                lblk: *k,
                pblk: Some(e.pblk),
                len,
                owner: e.owner,
            });
            pos = k + len;
        }
        if pos < end {
            out.push(hole(pos, end - pos));
        }
        out
    }

    /// Remove the mapping of `[l, l+n)`, returning the extents it held.
    pub fn unmap(&mut self, l: u64, n: u64) -> Vec<Extent> {
        let end = l.saturating_add(n);
        let mut freed = Vec::new();
        // An extent starting before l that reaches into the range.
        if let Some((&k, &e)) = self.0.get_prev(&l) {
            if k < l && k + e.len > l {
                let keep = l - k;
                self.0.insert(k, Extent { len: keep, ..e });
                let cut_end = (k + e.len).min(end);
                freed.push(Extent {
                    pblk: e.pblk + keep,
                    len: cut_end - l,
                    owner: e.owner,
                });
                if k + e.len > end {
                    self.0.insert(
                        end,
                        Extent {
                            pblk: e.pblk + (end - k),
                            len: k + e.len - end,
                            owner: e.owner,
                        },
                    );
                }
            }
        }
        let inside: Vec<(u64, Extent)> = self.0.range(l..end).map(|(k, e)| (*k, *e)).collect();
        for (k, e) in inside {
            self.0.remove(&k);
            if k + e.len > end {
                let cut = end - k;
                freed.push(Extent {
                    pblk: e.pblk,
                    len: cut,
                    owner: e.owner,
                });
                self.0.insert(
                    end,
                    Extent {
                        pblk: e.pblk + cut,
                        len: e.len - cut,
                        owner: e.owner,
                    },
                );
            } else {
                freed.push(e);
            }
        }
        freed
    }

    /// Map `[l, l+n)` to `[p, p+n)` owned by `owner`, returning what was mapped there before.
    pub fn map(&mut self, l: u64, p: u64, n: u64, owner: Owner) -> Vec<Extent> {
        let old = self.unmap(l, n);
        // Merge with a physically and logically adjacent predecessor of the same owner.
        if let Some((&k, &e)) = self.0.get_prev(&l) {
            if k + e.len == l && e.pblk + e.len == p && e.owner == owner {
                self.0.insert(
                    k,
                    Extent {
                        len: e.len + n,
                        ..e
                    },
                );
                return old;
            }
        }
        self.0.insert(
            l,
            Extent {
                pblk: p,
                len: n,
                owner,
            },
        );
        old
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, Extent)> + '_ {
        self.0.iter().map(|(k, e)| (*k, *e))
    }

    pub fn blocks(&self) -> u64 {
        self.0.values().map(|e| e.len).sum()
    }
}

/// A directory: entries by name, and a stable cookie per entry for readdir offsets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dir {
    pub entries: OrdMap<Name, (Ino, u64)>,
    pub by_cookie: OrdMap<u64, Name>,
    pub next_cookie: u64,
}

/// First cookie handed out; 1 and 2 are "." and "..".
pub const FIRST_COOKIE: u64 = 3;

impl Dir {
    pub(crate) fn insert(&mut self, name: Name, ino: Ino) {
        if self.next_cookie < FIRST_COOKIE {
            self.next_cookie = FIRST_COOKIE;
        }
        if let Some((_, c)) = self.entries.remove(&name) {
            self.by_cookie.remove(&c);
        }
        let c = self.next_cookie;
        self.next_cookie += 1;
        self.entries.insert(name.clone(), (ino, c));
        self.by_cookie.insert(c, name);
    }
    pub(crate) fn remove(&mut self, name: &[u8]) -> Option<Ino> {
        let (ino, c) = self.entries.remove(name)?;
        self.by_cookie.remove(&c);
        Some(ino)
    }
    pub fn get(&self, name: &[u8]) -> Option<Ino> {
        self.entries.get(name).map(|e| e.0)
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Content {
    File(Extents),
    Dir(Dir),
    Symlink(Name),
    /// Devices, fifos, sockets: attributes only.
    Special,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Inode {
    pub attr: Attr,
    pub content: Content,
    pub xattrs: OrdMap<Name, Name>,
}

impl Inode {
    pub fn new(attr: Attr, symlink: Option<Name>) -> Inode {
        let content = match attr.kind() {
            S_IFREG => Content::File(Extents::default()),
            S_IFDIR => Content::Dir(Dir::default()),
            S_IFLNK => Content::Symlink(symlink.unwrap_or_else(|| Arc::from(&b""[..]))),
            _ => Content::Special,
        };
        Inode {
            attr,
            content,
            xattrs: OrdMap::new(),
        }
    }
    pub fn extents(&self) -> Option<&Extents> {
        match &self.content {
            Content::File(x) => Some(x),
            _ => None,
        }
    }
    pub fn dir(&self) -> Option<&Dir> {
        match &self.content {
            Content::Dir(d) => Some(d),
            _ => None,
        }
    }
}

/// Layer states: an active layer is writable; committed and view layers are frozen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerState {
    Active,
    Committed,
    View,
}

impl LayerState {
    pub fn as_str(self) -> &'static str {
        match self {
            LayerState::Active => "active",
            LayerState::Committed => "committed",
            LayerState::View => "view",
        }
    }
    pub fn code(self) -> u8 {
        match self {
            LayerState::Active => 1,
            LayerState::Committed => 2,
            LayerState::View => 3,
        }
    }
    pub fn from_code(c: u8, block: u64) -> Result<Self> {
        Ok(match c {
            1 => LayerState::Active,
            2 => LayerState::Committed,
            3 => LayerState::View,
            _ => return Err(Error::corrupt(format!("unknown layer state {c}"), block)),
        })
    }
}

/// Layer slot: a small number naming a layer for as long as it exists (FUSE node ids carry
/// it in their high bits). Slot 0 is the mount root.
pub type Slot = u32;

/// One metadata change. Encoded into the journal (after the slot of the layer it changes;
/// slot 0 for layer records); applied by [`crate::layer::Layers::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    NewInode {
        ino: Ino,
        attr: Attr,
        symlink: Option<Name>,
    },
    SetAttr {
        ino: Ino,
        attr: Attr,
    },
    DelInode {
        ino: Ino,
    },
    Link {
        dir: Ino,
        name: Name,
        ino: Ino,
    },
    Unlink {
        dir: Ino,
        name: Name,
    },
    /// Map `len` blocks at `lblk` to `pblk..`, owned by `owner`; `crcs` holds the CRC-32C
    /// of each block's contents (format version 2; empty in records read from version 1).
    Map {
        ino: Ino,
        lblk: u64,
        pblk: u64,
        len: u64,
        owner: Owner,
        crcs: Vec<u32>,
    },
    Unmap {
        ino: Ino,
        lblk: u64,
        len: u64,
    },
    SetXattr {
        ino: Ino,
        name: Name,
        value: Name,
    },
    RmXattr {
        ino: Ino,
        name: Name,
    },
    /// A new layer: an empty base (no parent; its root directory is owned by uid/gid) or a
    /// clone of `parent` sharing its whole tree.
    LayerNew {
        slot: Slot,
        id: Name,
        parent: Option<Slot>,
        state: LayerState,
        owner: Owner,
        created: Time,
        uid: u32,
        gid: u32,
    },
    LayerState {
        slot: Slot,
        state: LayerState,
    },
    /// Freeze active layer `slot` into a new committed parent `new_slot` that takes its tree,
    /// its parent and its ownership tag; `slot` continues on top with tag `new_owner`.
    LayerSnapshot {
        slot: Slot,
        new_slot: Slot,
        new_id: Name,
        new_owner: Owner,
        created: Time,
    },
    LayerRemove {
        slot: Slot,
    },
    LayerLabels {
        slot: Slot,
        labels: Vec<(Name, Name)>,
    },
}

/// Longest xattr value and symlink target accepted.
pub const MAX_XATTR_VALUE: usize = 64 * 1024;
pub const MAX_SYMLINK: usize = 4096;
/// Longest label key or value, and most labels on a layer.
pub const MAX_LABEL: usize = 4096;
pub const MAX_LABELS: usize = 256;

impl Record {
    pub fn encode(&self, e: &mut Enc) {
        match self {
            Record::NewInode { ino, attr, symlink } => {
                e.u8(1);
                e.u64(*ino);
                attr.encode(e);
                match symlink {
                    Some(s) => {
                        e.u8(1);
                        e.bytes(s)
                    }
                    None => e.u8(0),
                }
            }
            Record::SetAttr { ino, attr } => {
                e.u8(2);
                e.u64(*ino);
                attr.encode(e);
            }
            Record::DelInode { ino } => {
                e.u8(3);
                e.u64(*ino);
            }
            Record::Link { dir, name, ino } => {
                e.u8(4);
                e.u64(*dir);
                e.bytes(name);
                e.u64(*ino);
            }
            Record::Unlink { dir, name } => {
                e.u8(5);
                e.u64(*dir);
                e.bytes(name);
            }
            Record::Map {
                ino,
                lblk,
                pblk,
                len,
                owner,
                crcs,
            } => {
                e.u8(6);
                e.u64(*ino);
                e.u64(*lblk);
                e.u64(*pblk);
                e.u64(*len);
                e.u32(*owner);
                // One checksum per block (`Txn::rec` refuses a record with another count).
                for c in crcs {
                    e.u32(*c);
                }
            }
            Record::Unmap { ino, lblk, len } => {
                e.u8(7);
                e.u64(*ino);
                e.u64(*lblk);
                e.u64(*len);
            }
            Record::SetXattr { ino, name, value } => {
                e.u8(8);
                e.u64(*ino);
                e.bytes(name);
                e.bytes(value);
            }
            Record::RmXattr { ino, name } => {
                e.u8(9);
                e.u64(*ino);
                e.bytes(name);
            }
            Record::LayerNew {
                slot,
                id,
                parent,
                state,
                owner,
                created,
                uid,
                gid,
            } => {
                e.u8(20);
                e.u32(*slot);
                e.bytes(id);
                e.u32(parent.unwrap_or(0));
                e.u8(state.code());
                e.u32(*owner);
                e.i64(created.sec);
                e.u32(created.nsec);
                e.u32(*uid);
                e.u32(*gid);
            }
            Record::LayerState { slot, state } => {
                e.u8(21);
                e.u32(*slot);
                e.u8(state.code());
            }
            Record::LayerSnapshot {
                slot,
                new_slot,
                new_id,
                new_owner,
                created,
            } => {
                e.u8(22);
                e.u32(*slot);
                e.u32(*new_slot);
                e.bytes(new_id);
                e.u32(*new_owner);
                e.i64(created.sec);
                e.u32(created.nsec);
            }
            Record::LayerRemove { slot } => {
                e.u8(23);
                e.u32(*slot);
            }
            Record::LayerLabels { slot, labels } => {
                e.u8(24);
                e.u32(*slot);
                e.u32(labels.len() as u32);
                for (k, v) in labels {
                    e.bytes(k);
                    e.bytes(v);
                }
            }
        }
    }

    /// Decode one record written by this version of the format.
    pub fn decode(d: &mut Dec) -> Result<Record> {
        Record::decode_version(d, crate::format::FORMAT_VERSION)
    }

    /// Decode one record written by format `version` (1: `Map` records carry no checksums).
    pub fn decode_version(d: &mut Dec, version: u32) -> Result<Record> {
        let tag = d.u8()?;
        let name =
            |d: &mut Dec| -> Result<Name> { Ok(Arc::from(d.bytes(crate::format::MAX_NAME)?)) };
        let time = |d: &mut Dec| -> Result<Time> {
            let t = Time {
                sec: d.i64()?,
                nsec: d.u32()?,
            };
            if t.nsec >= 1_000_000_000 {
                return Err(Error::corrupt(
                    "timestamp nanoseconds out of range",
                    d.block,
                ));
            }
            Ok(t)
        };
        Ok(match tag {
            1 => {
                let ino = d.u64()?;
                let attr = Attr::decode(d)?;
                let symlink = match d.u8()? {
                    0 => None,
                    _ => Some(Arc::from(d.bytes(MAX_SYMLINK)?)),
                };
                Record::NewInode { ino, attr, symlink }
            }
            2 => Record::SetAttr {
                ino: d.u64()?,
                attr: Attr::decode(d)?,
            },
            3 => Record::DelInode { ino: d.u64()? },
            4 => Record::Link {
                dir: d.u64()?,
                name: name(d)?,
                ino: d.u64()?,
            },
            5 => Record::Unlink {
                dir: d.u64()?,
                name: name(d)?,
            },
            6 => {
                let (ino, lblk, pblk, len, owner) =
                    (d.u64()?, d.u64()?, d.u64()?, d.u64()?, d.u32()?);
                let crcs = if version >= 2 {
                    if len > d.remaining() as u64 / 4 {
                        return Err(Error::corrupt(
                            format!("block map of {len} blocks without their checksums"),
                            d.block,
                        ));
                    }
                    (0..len).map(|_| d.u32()).collect::<Result<Vec<u32>>>()?
                } else {
                    Vec::new()
                };
                Record::Map {
                    ino,
                    lblk,
                    pblk,
                    len,
                    owner,
                    crcs,
                }
            }
            7 => Record::Unmap {
                ino: d.u64()?,
                lblk: d.u64()?,
                len: d.u64()?,
            },
            8 => Record::SetXattr {
                ino: d.u64()?,
                name: name(d)?,
                value: Arc::from(d.bytes(MAX_XATTR_VALUE)?),
            },
            9 => Record::RmXattr {
                ino: d.u64()?,
                name: name(d)?,
            },
            20 => {
                let slot = d.u32()?;
                let id = name(d)?;
                let parent = match d.u32()? {
                    0 => None,
                    p => Some(p),
                };
                let state = LayerState::from_code(d.u8()?, d.block)?;
                Record::LayerNew {
                    slot,
                    id,
                    parent,
                    state,
                    owner: d.u32()?,
                    created: time(d)?,
                    uid: d.u32()?,
                    gid: d.u32()?,
                }
            }
            21 => Record::LayerState {
                slot: d.u32()?,
                state: LayerState::from_code(d.u8()?, d.block)?,
            },
            22 => Record::LayerSnapshot {
                slot: d.u32()?,
                new_slot: d.u32()?,
                new_id: name(d)?,
                new_owner: d.u32()?,
                created: time(d)?,
            },
            23 => Record::LayerRemove { slot: d.u32()? },
            24 => {
                let slot = d.u32()?;
                let n = d.u32()? as usize;
                if n > MAX_LABELS {
                    return Err(Error::corrupt(format!("{n} labels on a layer"), d.block));
                }
                let mut labels = Vec::with_capacity(n);
                for _ in 0..n {
                    labels.push((
                        Arc::from(d.bytes(MAX_LABEL)?),
                        Arc::from(d.bytes(MAX_LABEL)?),
                    ));
                }
                Record::LayerLabels { slot, labels }
            }
            t => {
                return Err(Error::corrupt(
                    format!("unknown journal record type {t}"),
                    d.block,
                ))
            }
        })
    }
}

/// The file tree of one file system.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    pub inodes: OrdMap<Ino, Inode>,
    pub next_ino: Ino,
}

/// Block ranges a change released (to be freed by the caller).
pub type Freed = Vec<(u64, u64)>;

impl Tree {
    pub fn get(&self, ino: Ino) -> Option<&Inode> {
        self.inodes.get(&ino)
    }

    fn get_mut(&mut self, ino: Ino, block: u64) -> Result<&mut Inode> {
        self.inodes
            .get_mut(&ino)
            .ok_or_else(|| Error::corrupt(format!("record names missing inode {ino}"), block))
    }

    /// Apply one inode record in a layer whose ownership tag is `owner`. Blocks this layer
    /// owns that the record unmaps go to `freed`; blocks it maps go to `mapped`. Blocks owned
    /// by other layers are never freed here.
    pub fn apply(
        &mut self,
        rec: &Record,
        owner: Owner,
        freed: &mut Freed,
        mapped: &mut Freed,
    ) -> Result<()> {
        let b = 0;
        let release = |exts: Vec<Extent>, freed: &mut Freed| {
            freed.extend(
                exts.into_iter()
                    .filter(|e| e.owner == owner)
                    .map(|e| (e.pblk, e.len)),
            );
        };
        match rec {
            Record::NewInode { ino, attr, symlink } => {
                if self.inodes.contains_key(ino) {
                    return Err(Error::corrupt(format!("inode {ino} created twice"), b));
                }
                self.inodes.insert(*ino, Inode::new(*attr, symlink.clone()));
                self.next_ino = self.next_ino.max(ino + 1);
            }
            Record::SetAttr { ino, attr } => {
                let i = self.get_mut(*ino, b)?;
                if i.attr.kind() != attr.kind() {
                    return Err(Error::corrupt(format!("inode {ino} changes type"), b));
                }
                i.attr = *attr;
            }
            Record::DelInode { ino } => {
                let i = self
                    .inodes
                    .remove(ino)
                    .ok_or_else(|| Error::corrupt(format!("delete of missing inode {ino}"), b))?;
                if let Content::File(x) = &i.content {
                    release(x.iter().map(|(_, e)| e).collect(), freed);
                }
            }
            Record::Link { dir, name, ino } => {
                let i = self.get_mut(*dir, b)?;
                match &mut i.content {
                    Content::Dir(d) => d.insert(name.clone(), *ino),
                    _ => return Err(Error::corrupt(format!("link into non-directory {dir}"), b)),
                }
            }
            Record::Unlink { dir, name } => {
                let i = self.get_mut(*dir, b)?;
                match &mut i.content {
                    Content::Dir(d) => {
                        d.remove(name);
                    }
                    _ => return Err(Error::corrupt(format!("unlink in non-directory {dir}"), b)),
                }
            }
            Record::Map {
                ino,
                lblk,
                pblk,
                len,
                owner: o,
                ..
            } => {
                let i = self.get_mut(*ino, b)?;
                match &mut i.content {
                    Content::File(x) => {
                        let old = x.map(*lblk, *pblk, *len, *o);
                        release(old, freed);
                        if *o == owner {
                            mapped.push((*pblk, *len));
                        }
                    }
                    _ => return Err(Error::corrupt(format!("block map on non-file {ino}"), b)),
                }
            }
            Record::Unmap { ino, lblk, len } => {
                let i = self.get_mut(*ino, b)?;
                if let Content::File(x) = &mut i.content {
                    let old = x.unmap(*lblk, *len);
                    release(old, freed);
                }
            }
            Record::SetXattr { ino, name, value } => {
                self.get_mut(*ino, b)?
                    .xattrs
                    .insert(name.clone(), value.clone());
            }
            Record::RmXattr { ino, name } => {
                self.get_mut(*ino, b)?.xattrs.remove(name);
            }
            _ => return Err(Error::corrupt("layer record applied to an inode tree", b)),
        }
        Ok(())
    }

    /// A new file system: just the root directory.
    pub fn new_root(uid: u32, gid: u32, now: Time) -> Tree {
        let attr = Attr {
            mode: S_IFDIR | 0o755,
            uid,
            gid,
            nlink: 2,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            btime: now,
            rdev: 0,
            flags: 0,
        };
        let mut t = Tree {
            inodes: OrdMap::new(),
            next_ino: ROOT_INO + 1,
        };
        t.inodes.insert(ROOT_INO, Inode::new(attr, None));
        t
    }

    /// Serialise the tree into a checkpoint: in full, or as its difference from `base` (the
    /// parent layer's tree) — inodes added or changed, then inodes removed.
    pub fn encode(&self, base: Option<&Tree>, e: &mut Enc) {
        e.u64(self.next_ino);
        match base {
            None => {
                e.u64(self.inodes.len() as u64);
                for (ino, i) in self.inodes.iter() {
                    encode_inode(e, *ino, i);
                }
                e.u64(0);
            }
            Some(b) => {
                let mut upserts = Vec::new();
                let mut removed = Vec::new();
                for d in b.inodes.diff(&self.inodes) {
                    match d {
                        imbl::ordmap::DiffItem::Add(k, v) => upserts.push((*k, v)),
                        imbl::ordmap::DiffItem::Update { new: (k, v), .. } => upserts.push((*k, v)),
                        imbl::ordmap::DiffItem::Remove(k, _) => removed.push(*k),
                    }
                }
                e.u64(upserts.len() as u64);
                for (ino, i) in upserts {
                    encode_inode(e, ino, i);
                }
                e.u64(removed.len() as u64);
                for ino in removed {
                    e.u64(ino);
                }
            }
        }
    }

    /// Read a tree written by [`Tree::encode`] with the same `base`.
    pub fn decode(d: &mut Dec, base: Option<&Tree>) -> Result<Tree> {
        Tree::decode_inner(d, base, None)
    }

    /// Decode the tree of a layer whose parent is lost (see [`crate::layer::Layers::decode_salvage`]):
    /// the inodes it lists, without the removals, and an empty root directory (created at
    /// `now`, owned by root) if it lists none.
    pub fn decode_salvage(d: &mut Dec, now: Time) -> Result<Tree> {
        Tree::decode_inner(d, None, Some(now))
    }

    fn decode_inner(d: &mut Dec, base: Option<&Tree>, salvage: Option<Time>) -> Result<Tree> {
        let block = d.block;
        let next_ino = d.u64()?;
        let mut t = match base {
            Some(b) => b.clone(),
            None => Tree::default(),
        };
        t.next_ino = next_ino;
        let n = d.u64()?;
        for _ in 0..n {
            let (ino, inode) = decode_inode(d)?;
            if base.is_none() && t.inodes.contains_key(&ino) {
                return Err(Error::corrupt(
                    format!("checkpoint lists inode {ino} twice"),
                    block,
                ));
            }
            t.inodes.insert(ino, inode);
            t.next_ino = t.next_ino.max(ino + 1);
        }
        let r = d.u64()?;
        for _ in 0..r {
            let ino = d.u64()?;
            if t.inodes.remove(&ino).is_none() && salvage.is_none() {
                return Err(Error::corrupt(
                    format!("checkpoint removes missing inode {ino}"),
                    block,
                ));
            }
        }
        if let (Some(now), None) = (salvage, t.inodes.get(&ROOT_INO)) {
            if let Some(root) = Tree::new_root(0, 0, now).inodes.get(&ROOT_INO) {
                t.inodes.insert(ROOT_INO, root.clone());
                t.next_ino = t.next_ino.max(ROOT_INO + 1);
            }
        }
        if t.inodes.get(&ROOT_INO).map(|r| r.attr.is_dir()) != Some(true) {
            return Err(Error::corrupt("layer tree has no root directory", block));
        }
        Ok(t)
    }
}

fn encode_inode(e: &mut Enc, ino: Ino, i: &Inode) {
    e.u64(ino);
    i.attr.encode(e);
    e.u32(i.xattrs.len() as u32);
    for (k, v) in i.xattrs.iter() {
        e.bytes(k);
        e.bytes(v);
    }
    match &i.content {
        Content::File(x) => {
            e.u64(x.0.len() as u64);
            for (l, ext) in x.iter() {
                e.u64(l);
                e.u64(ext.pblk);
                e.u64(ext.len);
                e.u32(ext.owner);
            }
        }
        Content::Dir(d) => {
            e.u64(d.entries.len() as u64);
            for (name, (ino, _)) in d.entries.iter() {
                e.bytes(name);
                e.u64(*ino);
            }
        }
        Content::Symlink(s) => e.bytes(s),
        Content::Special => {}
    }
}

fn decode_inode(d: &mut Dec) -> Result<(Ino, Inode)> {
    let ino = d.u64()?;
    let attr = Attr::decode(d)?;
    let nx = d.u32()?;
    let mut xattrs = OrdMap::new();
    for _ in 0..nx {
        let k: Name = Arc::from(d.bytes(crate::format::MAX_NAME)?);
        let v: Name = Arc::from(d.bytes(MAX_XATTR_VALUE)?);
        xattrs.insert(k, v);
    }
    let content = match attr.kind() {
        S_IFREG => {
            let ne = d.u64()?;
            let mut x = Extents::default();
            for _ in 0..ne {
                let (l, p, len, owner) = (d.u64()?, d.u64()?, d.u64()?, d.u32()?);
                x.0.insert(
                    l,
                    Extent {
                        pblk: p,
                        len,
                        owner,
                    },
                );
            }
            Content::File(x)
        }
        S_IFDIR => {
            let ne = d.u64()?;
            let mut dir = Dir::default();
            for _ in 0..ne {
                let name: Name = Arc::from(d.bytes(crate::format::MAX_NAME)?);
                let child = d.u64()?;
                dir.insert(name, child);
            }
            Content::Dir(dir)
        }
        S_IFLNK => Content::Symlink(Arc::from(d.bytes(MAX_SYMLINK)?)),
        _ => Content::Special,
    };
    Ok((
        ino,
        Inode {
            attr,
            content,
            xattrs,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(pblk: u64, len: u64, owner: Owner) -> Extent {
        Extent { pblk, len, owner }
    }

    #[test]
    fn extent_map_unmap_split_and_merge() {
        let mut x = Extents::default();
        x.map(0, 100, 10, 1);
        x.map(10, 110, 5, 1); // merges
        assert_eq!(x.0.len(), 1);
        x.map(15, 115, 1, 2); // other owner: no merge
        assert_eq!(x.0.len(), 2);
        assert_eq!(x.lookup(14), Some(114));
        assert_eq!(x.lookup_owned(15), Some((115, 2)));
        let freed = x.unmap(3, 4);
        assert_eq!(freed, vec![ext(103, 4, 1)]);
        assert_eq!(x.lookup(3), None);
        assert_eq!(x.lookup(7), Some(107));
        let old = x.map(2, 500, 3, 1);
        assert_eq!(old, vec![ext(102, 1, 1)]);
        let runs: Vec<(u64, Option<u64>, u64)> = x
            .runs(0, 17)
            .iter()
            .map(|r| (r.lblk, r.pblk, r.len))
            .collect();
        assert_eq!(
            runs,
            vec![
                (0, Some(100), 2),
                (2, Some(500), 3),
                (5, None, 2),
                (7, Some(107), 8),
                (15, Some(115), 1),
                (16, None, 1)
            ]
        );
        assert_eq!(x.blocks(), 14);
    }

    fn sample_tree() -> Tree {
        let mut t = Tree::new_root(0, 0, Time::default());
        let attr = Attr {
            mode: S_IFREG | 0o644,
            nlink: 1,
            size: 8192,
            ..Default::default()
        };
        let (mut f, mut m) = (vec![], vec![]);
        for r in [
            Record::NewInode {
                ino: 2,
                attr,
                symlink: None,
            },
            Record::Link {
                dir: 1,
                name: Arc::from(&b"a"[..]),
                ino: 2,
            },
            Record::Map {
                ino: 2,
                lblk: 0,
                pblk: 77,
                len: 2,
                owner: 1,
                crcs: vec![7, 8],
            },
            Record::SetXattr {
                ino: 2,
                name: Arc::from(&b"user.x"[..]),
                value: Arc::from(&b"v"[..]),
            },
        ] {
            t.apply(&r, 1, &mut f, &mut m).expect("apply");
        }
        assert_eq!(m, vec![(77, 2)]);
        t
    }

    #[test]
    fn tree_round_trips_through_checkpoint_encoding() {
        let t = sample_tree();
        let mut e = Enc::new();
        t.encode(None, &mut e);
        let t2 = Tree::decode(&mut Dec::new(&e.buf, 0), None).expect("decode");
        let mut e2 = Enc::new();
        t2.encode(None, &mut e2);
        assert_eq!(e.buf, e2.buf);
        assert_eq!(
            t2.get(2)
                .and_then(|i| i.extents())
                .and_then(|x| x.lookup(1)),
            Some(78)
        );
    }

    #[test]
    fn child_tree_is_encoded_as_a_difference() {
        let parent = sample_tree();
        let mut child = parent.clone();
        let (mut f, mut m) = (vec![], vec![]);
        // Inherited blocks are not freed by the child.
        child
            .apply(
                &Record::Unmap {
                    ino: 2,
                    lblk: 0,
                    len: 1,
                },
                2,
                &mut f,
                &mut m,
            )
            .expect("unmap");
        assert!(f.is_empty());
        child
            .apply(
                &Record::Map {
                    ino: 2,
                    lblk: 0,
                    pblk: 90,
                    len: 1,
                    owner: 2,
                    crcs: vec![9],
                },
                2,
                &mut f,
                &mut m,
            )
            .expect("map");
        let mut e = Enc::new();
        child.encode(Some(&parent), &mut e);
        let mut full = Enc::new();
        child.encode(None, &mut full);
        assert!(e.buf.len() < full.buf.len());
        let back = Tree::decode(&mut Dec::new(&e.buf, 0), Some(&parent)).expect("decode");
        assert_eq!(
            back.get(2)
                .and_then(|i| i.extents())
                .and_then(|x| x.lookup_owned(0)),
            Some((90, 2))
        );
        assert_eq!(
            back.get(2)
                .and_then(|i| i.extents())
                .and_then(|x| x.lookup_owned(1)),
            Some((78, 1))
        );
    }

    #[test]
    fn decoding_garbage_is_an_error_not_a_panic() {
        let mut seed = 12345u64;
        let base = sample_tree();
        for len in 0..300 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = Tree::decode(&mut Dec::new(&buf, 0), None);
            let _ = Tree::decode(&mut Dec::new(&buf, 0), Some(&base));
            let _ = Record::decode(&mut Dec::new(&buf, 0));
        }
    }
}
