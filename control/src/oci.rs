//! OCI layer tars: [`import`] applies one (plain, gzip or zstd) onto a new layer, streaming,
//! and [`export`] writes a layer's diff against its parent as one.
//!
//! Import creates the layer (a clone of a committed parent, or a new base layer), applies the
//! entries in order and commits it. Whiteouts (`.wh.NAME`) remove `NAME` (recursively);
//! `.wh..wh..opq` removes every entry the directory inherited. Tar paths are resolved one
//! component at a time with `lookup`, never following a symlink: an absolute path, a `..`
//! that climbs out of the layer, a path through a symlink, a hard link to something outside
//! or missing, a name over 255 bytes, a truncated or corrupt archive: each is refused with an
//! error naming the entry, and the half-built layer is removed. Zero 4 KiB blocks of regular
//! files are not written, so they stay holes. Memory stays bounded: data goes through a 1 MiB
//! buffer and at most 16 MiB of writes are in flight at once (the engine takes the data and
//! updates the metadata when `write` returns; the device I/O overlaps the next entries), and
//! only directory mtimes (set last, since adding entries changes them) are kept per entry.
//! An opaque marker removes the directory's entries whose inodes predate this import, so it
//! is expected right after its directory's entry, as tools write it.
//!
//! Export takes the changes from [`engine::diff`] (computed from the layer's own tree and its
//! parent's, not by walking both) and writes whiteouts for deletions, an opaque marker for
//! replaced directories, xattrs as `SCHILY.xattr.*` PAX records, and the second and further
//! paths of a hard-linked file as link entries.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use engine::diff::ChangeKind;
use engine::{node_of, split, Caller, Engine, Error, LayerState, Node, Result, SetAttr, Time};

/// Compression of an imported tar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Recognised by its magic bytes (gzip, zstd, else plain).
    Auto,
    None,
    Gzip,
    Zstd,
}

impl std::str::FromStr for Compression {
    type Err = crate::Error;
    fn from_str(s: &str) -> std::result::Result<Self, crate::Error> {
        match s {
            "auto" => Ok(Compression::Auto),
            "none" => Ok(Compression::None),
            "gzip" | "gz" => Ok(Compression::Gzip),
            "zstd" | "zst" => Ok(Compression::Zstd),
            _ => Err(crate::Error::Invalid(format!(
                "unknown compression {s:?} (auto, none, gzip, zstd)"
            ))),
        }
    }
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportReport {
    pub layer: String,
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// Devices and fifos.
    pub specials: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    /// File bytes written.
    pub bytes_written: u64,
    /// Zero bytes left as holes.
    pub bytes_sparse: u64,
}

const CHUNK: usize = 1 << 20;
const BLOCK: usize = 4096;
const MAX_NAME: usize = 255;
const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
const ROOT: Caller = Caller { uid: 0, gid: 0 };

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

fn bad(path: &[u8], why: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("tar entry {:?}: {why}", show(path)))
}

fn tar_err(e: io::Error) -> Error {
    Error::Invalid(format!("corrupt or truncated tar: {e}"))
}

/// A kernel-style reference taken by lookup/mknod/link, given back when dropped.
struct Held<'a> {
    e: &'a Engine,
    node: Node,
    counted: bool,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.e.forget(self.node, 1);
        }
    }
}

/// A reader that remembers whether its source ran dry (a tar without its end-of-archive
/// blocks is truncated).
struct EofWatch<R> {
    inner: R,
    hit_eof: bool,
}

impl<R: Read> Read for EofWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.hit_eof = true;
        }
        Ok(n)
    }
}

/// Normalise a tar path into components: `.` and empty components dropped, `..` allowed only
/// while it stays inside the layer, absolute paths and over-long names refused.
fn components(raw: &[u8]) -> Result<Vec<Vec<u8>>> {
    if raw.first() == Some(&b'/') {
        return Err(bad(raw, "absolute paths are not allowed in a layer tar"));
    }
    if raw.contains(&0) {
        return Err(bad(raw, "NUL byte in path"));
    }
    let mut out: Vec<Vec<u8>> = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(bad(raw, "path escapes the layer through \"..\""));
                }
            }
            _ => {
                if c.len() > MAX_NAME {
                    return Err(bad(raw, "a name is longer than 255 bytes"));
                }
                out.push(c.to_vec());
            }
        }
    }
    Ok(out)
}

fn new_encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

fn decode_dev(rdev: u32) -> (u32, u32) {
    (
        (rdev >> 8) & 0xfff,
        (rdev & 0xff) | ((rdev >> 12) & 0xfff00),
    )
}

/// Data writes in flight (the engine copies the data and updates the metadata before
/// `write` returns; the device I/O completes later): bounded in bytes, first error kept.
#[derive(Default)]
struct Inflight {
    state: std::sync::Mutex<(u64, Option<Error>)>,
    cv: std::sync::Condvar,
}

const MAX_INFLIGHT: u64 = 16 << 20;

impl Inflight {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Option<Error>)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until every write completed; the first error, if any.
    fn drain(&self) -> Result<()> {
        let mut g = self.lock();
        while g.0 > 0 {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        match g.1.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Start writing `data` at `off` without waiting for the device.
    fn write(self: &Arc<Self>, e: &Engine, node: Node, off: u64, data: &[u8]) -> Result<()> {
        let len = data.len() as u64;
        {
            let mut g = self.lock();
            while g.0 > 0 && g.0 + len > MAX_INFLIGHT {
                g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            if g.1.is_some() {
                drop(g);
                return self.drain();
            }
            g.0 += len;
        }
        let me = self.clone();
        e.write(
            node,
            off,
            data,
            engine::KillPriv::NONE,
            engine::WriteTimes::Set,
            Box::new(move |r| {
                let mut g = me.lock();
                g.0 -= len;
                let err = match r {
                    Ok(n) if n as u64 == len => None,
                    // The engine cuts a write short only at the layer's space limit; the
                    // rest would get EDQUOT.
                    Ok(n) if n as u64 <= len => Some(Error::Errno(libc::EDQUOT)),
                    Ok(n) => Some(Error::Invalid(format!(
                        "write of {len} bytes at offset {off} reported {n}"
                    ))),
                    Err(e) => Some(e),
                };
                if g.1.is_none() {
                    g.1 = err;
                }
                me.cv.notify_all();
            }),
        );
        Ok(())
    }
}

struct Importer<'a> {
    inflight: Arc<Inflight>,
    e: &'a Engine,
    root: Node,
    /// Inodes below this number were inherited from the parent.
    first_new_ino: u64,
    report: ImportReport,
    /// Directories whose mtime is set at the end (creating entries in them changes it).
    dir_times: Vec<(Vec<Vec<u8>>, Time)>,
}

enum Found<'a> {
    Missing,
    Node(Held<'a>, engine::Stat),
}

impl<'a> Importer<'a> {
    fn child(&self, dir: Node, name: &[u8]) -> Result<Found<'a>> {
        match self.e.lookup(dir, name) {
            Ok(st) => Ok(Found::Node(
                Held {
                    e: self.e,
                    node: st.ino,
                    counted: true,
                },
                st,
            )),
            Err(Error::Errno(libc::ENOENT)) => Ok(Found::Missing),
            Err(e) => Err(e),
        }
    }

    /// The directory `comps` (relative to the layer root), created (0755, root) where missing
    /// when `create`. A symlink or non-directory on the way is refused.
    fn dir(&self, raw: &[u8], comps: &[Vec<u8>], create: bool) -> Result<Held<'a>> {
        self.dir_opt(raw, comps, create)?
            .ok_or_else(|| bad(raw, "a directory on its path does not exist"))
    }

    /// Like [`Importer::dir`], but `None` when a component is missing (and not `create`).
    fn dir_opt(&self, raw: &[u8], comps: &[Vec<u8>], create: bool) -> Result<Option<Held<'a>>> {
        let mut cur = Held {
            e: self.e,
            node: self.root,
            counted: false,
        };
        for c in comps {
            let next = match self.child(cur.node, c)? {
                Found::Node(h, st) => {
                    let k = st.attr.mode & libc::S_IFMT;
                    if k == libc::S_IFLNK {
                        return Err(bad(
                            raw,
                            format!(
                                "path goes through the symlink {:?}; symlinks are never followed",
                                show(c)
                            ),
                        ));
                    }
                    if k != libc::S_IFDIR {
                        return Err(bad(raw, format!("{:?} is not a directory", show(c))));
                    }
                    h
                }
                Found::Missing if create => {
                    let st = self
                        .e
                        .mknod(cur.node, c, libc::S_IFDIR | 0o755, 0, ROOT, None)?;
                    Held {
                        e: self.e,
                        node: st.ino,
                        counted: true,
                    }
                }
                Found::Missing => return Ok(None),
            };
            cur = next;
        }
        Ok(Some(cur))
    }

    /// Remove `name` from `dir`, recursively for a directory. Missing is fine.
    fn remove_all(&self, dir: Node, name: &[u8]) -> Result<()> {
        let Found::Node(h, st) = self.child(dir, name)? else {
            return Ok(());
        };
        if st.attr.mode & libc::S_IFMT == libc::S_IFDIR {
            self.empty_dir(h.node, false)?;
            drop(h);
            self.e.rmdir(dir, name)
        } else {
            drop(h);
            self.e.unlink(dir, name)
        }
    }

    /// Remove the entries of `dir` (only the inherited ones when `inherited_only`).
    fn empty_dir(&self, dir: Node, inherited_only: bool) -> Result<()> {
        let mut offset = 2;
        loop {
            let ents = self.e.readdir(dir, offset, 256)?;
            if ents.is_empty() {
                return Ok(());
            }
            for d in ents {
                offset = d.offset;
                if &*d.name == b"." || &*d.name == b".." {
                    continue;
                }
                if inherited_only && split(d.ino).1 >= self.first_new_ino {
                    continue;
                }
                self.remove_all(dir, &d.name)?;
            }
        }
    }

    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        use tar::EntryType as T;
        let raw = entry.path_bytes().into_owned();
        let ty = entry.header().entry_type();
        if matches!(ty, T::XGlobalHeader) {
            return Ok(());
        }
        self.report.entries += 1;
        let comps = components(&raw)?;
        // PAX records: xattrs, and numeric fields too large for the header.
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut pax_uid = None;
        let mut pax_gid = None;
        let mut pax_mtime = None;
        if let Some(px) = entry.pax_extensions().map_err(tar_err)? {
            for r in px {
                let r = r.map_err(tar_err)?;
                let k = r.key_bytes();
                if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((name.to_vec(), r.value_bytes().to_vec()));
                } else if k == b"uid" {
                    pax_uid = r.value().ok().and_then(|v| v.parse::<u32>().ok());
                } else if k == b"gid" {
                    pax_gid = r.value().ok().and_then(|v| v.parse::<u32>().ok());
                } else if k == b"mtime" {
                    pax_mtime = r.value().ok().and_then(parse_pax_time);
                }
            }
        }
        let h = entry.header();
        let field = |r: io::Result<u64>, what: &str| -> Result<u64> {
            r.map_err(|e| bad(&raw, format!("bad {what} field: {e}")))
        };
        let mode = field(h.mode().map(u64::from), "mode")? as u32 & 0o7777;
        let uid = match pax_uid {
            Some(u) => u,
            None => {
                u32::try_from(field(h.uid(), "uid")?).map_err(|_| bad(&raw, "uid out of range"))?
            }
        };
        let gid = match pax_gid {
            Some(g) => g,
            None => {
                u32::try_from(field(h.gid(), "gid")?).map_err(|_| bad(&raw, "gid out of range"))?
            }
        };
        let mtime = match pax_mtime {
            Some(t) => t,
            None => Time {
                sec: i64::try_from(field(h.mtime(), "mtime")?).unwrap_or(i64::MAX),
                nsec: 0,
            },
        };
        let who = Caller { uid, gid };

        let Some((name, parent)) = comps.split_last() else {
            // The root itself ("./"): only a directory may describe it.
            if ty.is_dir() {
                self.set_meta(self.root, mode, who, &xattrs, None)?;
                self.dir_times.push((Vec::new(), mtime));
                self.report.dirs += 1;
                return Ok(());
            }
            return Err(bad(&raw, "names the layer root but is not a directory"));
        };
        // Whiteouts (in a directory that does not exist: nothing to hide).
        let whiteout = name.starts_with(WHITEOUT);
        let Some(dir) = self.dir_opt(&raw, parent, !whiteout)? else {
            if name.as_slice() == OPAQUE {
                self.report.opaque_dirs += 1;
            } else {
                self.report.whiteouts += 1;
            }
            return Ok(());
        };
        if name.as_slice() == OPAQUE {
            self.empty_dir(dir.node, true)?;
            self.report.opaque_dirs += 1;
            return Ok(());
        }
        if let Some(target) = name.strip_prefix(WHITEOUT) {
            if target.is_empty() || target == b"." || target == b".." {
                return Err(bad(&raw, "malformed whiteout"));
            }
            self.remove_all(dir.node, target)?;
            self.report.whiteouts += 1;
            return Ok(());
        }

        // Whatever is there is replaced, except that a directory entry over a directory keeps
        // its contents.
        let existing = self.child(dir.node, name)?;
        let kind = match ty {
            T::Regular | T::Continuous | T::GNUSparse => libc::S_IFREG,
            T::Directory => libc::S_IFDIR,
            T::Symlink => libc::S_IFLNK,
            T::Char => libc::S_IFCHR,
            T::Block => libc::S_IFBLK,
            T::Fifo => libc::S_IFIFO,
            T::Link => 0,
            other => return Err(bad(&raw, format!("unsupported entry type {other:?}"))),
        };
        if let Found::Node(h, st) = existing {
            let is_dir = st.attr.mode & libc::S_IFMT == libc::S_IFDIR;
            if is_dir && kind == libc::S_IFDIR {
                self.set_meta(h.node, mode, who, &xattrs, None)?;
                self.dir_times.push((comps.clone(), mtime));
                self.report.dirs += 1;
                return Ok(());
            }
            drop(h);
            self.remove_all(dir.node, name)?;
        }

        if ty == T::Link {
            let target_raw = entry
                .link_name_bytes()
                .ok_or_else(|| bad(&raw, "hard link without a target"))?
                .into_owned();
            let tcomps =
                components(&target_raw).map_err(|e| bad(&raw, format!("hard link target: {e}")))?;
            let Some((tname, tparent)) = tcomps.split_last() else {
                return Err(bad(&raw, "hard link to the layer root"));
            };
            let tdir = self
                .dir(&target_raw, tparent, false)
                .map_err(|e| bad(&raw, format!("hard link target: {e}")))?;
            let Found::Node(th, tst) = self.child(tdir.node, tname)? else {
                return Err(bad(
                    &raw,
                    format!("hard link target {:?} does not exist", show(&target_raw)),
                ));
            };
            if tst.attr.mode & libc::S_IFMT == libc::S_IFDIR {
                return Err(bad(&raw, "hard link to a directory"));
            }
            let st = self.e.link(th.node, dir.node, name)?;
            self.e.forget(st.ino, 1);
            self.report.hardlinks += 1;
            return Ok(());
        }

        let mut rdev = 0;
        if matches!(ty, T::Char | T::Block) {
            let major = h
                .device_major()
                .map_err(|e| bad(&raw, format!("bad device major: {e}")))?
                .unwrap_or(0);
            let minor = h
                .device_minor()
                .map_err(|e| bad(&raw, format!("bad device minor: {e}")))?
                .unwrap_or(0);
            rdev = new_encode_dev(major, minor);
        }
        let target = if ty == T::Symlink {
            Some(
                entry
                    .link_name_bytes()
                    .ok_or_else(|| bad(&raw, "symlink without a target"))?
                    .into_owned(),
            )
        } else {
            None
        };
        let perm = if kind == libc::S_IFLNK { 0o777 } else { mode };
        let st = self
            .e
            .mknod(dir.node, name, kind | perm, rdev, who, target.as_deref())
            .map_err(|e| match e {
                // Out of space or over the layer's limits, or the device failed: not the
                // entry's fault, and the caller needs to know which (EDQUOT, ENOSPC, EIO).
                Error::Errno(libc::EDQUOT | libc::ENOSPC)
                | Error::NoSpace
                | Error::Poisoned
                | Error::Io { .. }
                | Error::Corrupt { .. } => e,
                e => bad(&raw, format!("cannot create: {e}")),
            })?;
        let node = Held {
            e: self.e,
            node: st.ino,
            counted: true,
        };
        drop(dir);
        match kind {
            libc::S_IFREG => {
                self.write_data(&raw, node.node, entry)?;
                self.report.files += 1;
            }
            libc::S_IFDIR => {
                self.dir_times.push((comps.clone(), mtime));
                self.report.dirs += 1;
            }
            libc::S_IFLNK => self.report.symlinks += 1,
            _ => self.report.specials += 1,
        }
        // Directories get their times at the end (their entries change until then).
        let t = (kind != libc::S_IFDIR).then_some(mtime);
        self.set_meta(node.node, perm, who, &xattrs, t)
    }

    fn set_meta(
        &self,
        node: Node,
        mode: u32,
        who: Caller,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        mtime: Option<Time>,
    ) -> Result<()> {
        for (k, v) in xattrs {
            if k.starts_with(b"system.") {
                log::warn!("xattr {:?} not stored (system.* is not supported)", show(k));
                continue;
            }
            self.e
                .setxattr(node, k, v, 0)
                .map_err(|e| Error::Invalid(format!("xattr {:?}: {e}", show(k))))?;
        }
        self.e.setattr(
            node,
            SetAttr {
                mode: Some(mode),
                uid: Some(who.uid),
                gid: Some(who.gid),
                atime: mtime,
                mtime,
                ..Default::default()
            },
        )?;
        Ok(())
    }

    /// Copy the file data in chunks of at most 1 MiB, leaving zero 4 KiB blocks as holes.
    fn write_data<R: Read>(
        &mut self,
        raw: &[u8],
        node: Node,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<()> {
        let size = entry.size();
        let mut buf = vec![0u8; CHUNK];
        let mut off: u64 = 0;
        // End of the last byte written: a file ending in holes gets its size by setattr.
        let mut written_end: u64 = 0;
        loop {
            let mut n = 0;
            while n < buf.len() {
                let k = match entry.read(&mut buf[n..]) {
                    Ok(k) => k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(bad(raw, format!("reading the data: {e}"))),
                };
                if k == 0 {
                    break;
                }
                n += k;
            }
            if n == 0 {
                break;
            }
            let data = &buf[..n];
            let mut i = 0;
            while i < n {
                let end = (i + BLOCK).min(n);
                if data[i..end].iter().all(|b| *b == 0) {
                    self.report.bytes_sparse += (end - i) as u64;
                    i = end;
                    continue;
                }
                let mut j = end;
                while j < n {
                    let e2 = (j + BLOCK).min(n);
                    if data[j..e2].iter().all(|b| *b == 0) {
                        break;
                    }
                    j = e2;
                }
                self.inflight
                    .write(self.e, node, off + i as u64, &data[i..j])?;
                self.report.bytes_written += (j - i) as u64;
                written_end = off + j as u64;
                i = j;
            }
            off += n as u64;
        }
        if off != size {
            return Err(bad(
                raw,
                format!("truncated tar: {off} of {size} data bytes present"),
            ));
        }
        if written_end < size {
            self.e.setattr(
                node,
                SetAttr {
                    size: Some(size),
                    ..Default::default()
                },
            )?;
        }
        Ok(())
    }

    /// Directory mtimes, last (deepest first, so setting one does not disturb another).
    fn finish_dir_times(&mut self) -> Result<()> {
        let mut v = std::mem::take(&mut self.dir_times);
        v.sort_by_key(|(c, _)| std::cmp::Reverse(c.len()));
        for (comps, t) in v {
            let d = self.dir(b"", &comps, false)?;
            self.e.setattr(
                d.node,
                SetAttr {
                    atime: Some(t),
                    mtime: Some(t),
                    ..Default::default()
                },
            )?;
        }
        Ok(())
    }
}

fn parse_pax_time(v: &str) -> Option<Time> {
    let (s, f) = v.split_once('.').unwrap_or((v, ""));
    let sec: i64 = s.parse().ok()?;
    let mut nsec: u32 = 0;
    if !f.is_empty() {
        let digits: String = f.chars().take(9).collect();
        let n: u32 = digits.parse().ok()?;
        nsec = n * 10u32.pow(9 - digits.len() as u32);
    }
    if sec < 0 && nsec > 0 {
        return Some(Time {
            sec: sec - 1,
            nsec: 1_000_000_000 - nsec,
        });
    }
    Some(Time { sec, nsec })
}

/// `reader` decompressed as `c` says ([`Compression::Auto`]: by its magic bytes).
pub fn decompress<'r>(reader: impl Read + 'r, c: Compression) -> Result<Box<dyn Read + 'r>> {
    let mut br = BufReader::with_capacity(64 << 10, reader);
    let c = match c {
        Compression::Auto => {
            let head = br
                .fill_buf()
                .map_err(|e| Error::Invalid(format!("reading the tar: {e}")))?;
            if head.starts_with(&[0x1f, 0x8b]) {
                Compression::Gzip
            } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                Compression::Zstd
            } else {
                Compression::None
            }
        }
        c => c,
    };
    Ok(match c {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(br)),
        Compression::Zstd => Box::new(
            ruzstd::StreamingDecoder::new(br)
                .map_err(|e| Error::Invalid(format!("not a zstd stream: {e}")))?,
        ),
        _ => Box::new(br),
    })
}

pub use crate::labels::IMPORTING_LABEL;

/// Apply the OCI layer tar from `reader` onto a new layer `layer` (a clone of committed layer
/// `parent`, or a new base layer), then commit it. On any error the new layer is removed; after
/// a crash, [`remove_interrupted_imports`] removes it.
pub fn import(
    engine: &Engine,
    layer: &str,
    parent: Option<&str>,
    reader: impl Read,
    compression: Compression,
) -> Result<ImportReport> {
    let marker = BTreeMap::from([(IMPORTING_LABEL.to_string(), "1".to_string())]);
    match parent {
        Some(p) => engine.layer_clone(p, layer, LayerState::Active, marker)?,
        None => engine.layer_create(layer, marker)?,
    };
    match import_into(engine, layer, reader, compression) {
        Ok(r) => Ok(r),
        Err(e) => {
            if let Err(e2) = engine.layer_remove(layer) {
                log::error!("import of {layer:?} failed ({e}) and removing it failed: {e2}");
            }
            Err(e)
        }
    }
}

fn import_into(
    engine: &Engine,
    layer: &str,
    reader: impl Read,
    compression: Compression,
) -> Result<ImportReport> {
    let input = decompress(reader, compression)?;
    let report = apply_into(engine, layer, input)?;
    // Committed and unmarked in one journal commit.
    engine.layer_commit_labeled(layer, Some(BTreeMap::new()))?;
    Ok(report)
}

/// Apply the (uncompressed) OCI layer tar `tar` onto active layer `layer` as it is now: what
/// [`import`] does between creating and committing its layer, and what containerd's diff
/// service asks for (Apply into a prepared snapshot). The layer is left active. On error the
/// layer holds part of the tar; the caller removes or resets it. Reads `tar` up to the
/// end-of-archive blocks, not beyond.
pub fn apply_into(engine: &Engine, layer: &str, tar: impl Read) -> Result<ImportReport> {
    let root = engine.layer_root(layer)?;
    let first_new_ino = engine.with_layers(|ls| {
        ls.slot_of(layer.as_bytes())
            .and_then(|s| ls.get(s))
            .map(|l| l.tree.next_ino)
            .unwrap_or(0)
    });
    let mut imp = Importer {
        inflight: Arc::new(Inflight::default()),
        e: engine,
        root,
        first_new_ino,
        report: ImportReport {
            layer: layer.to_string(),
            ..Default::default()
        },
        dir_times: Vec::new(),
    };
    let mut watch = EofWatch {
        inner: tar,
        hit_eof: false,
    };
    let applied = (|| {
        let mut ar = tar::Archive::new(&mut watch);
        for entry in ar.entries().map_err(tar_err)? {
            let mut entry = entry.map_err(tar_err)?;
            imp.apply(&mut entry)?;
        }
        Ok(())
    })();
    // Every data write is finished (or failed) before the layer is committed or removed.
    let drained = imp.inflight.drain();
    applied?;
    drained?;
    if watch.hit_eof {
        return Err(Error::Invalid(
            "truncated tar: the archive ends without its end-of-archive blocks".into(),
        ));
    }
    imp.finish_dir_times()?;
    Ok(imp.report)
}

/// Remove the layers that imports were filling when the daemon stopped without finishing
/// them (active, still marked with [`IMPORTING_LABEL`]): the daemon calls this at start, so a
/// crashed import leaves nothing behind and can be retried with the same id. Returns the ids
/// removed.
pub fn remove_interrupted_imports(engine: &Engine) -> Vec<String> {
    let stale: Vec<String> = engine
        .layer_list()
        .into_iter()
        .filter(|l| {
            l.state == LayerState::Active
                && l.children.is_empty()
                && l.labels.contains_key(IMPORTING_LABEL)
        })
        .map(|l| l.id)
        .collect();
    let mut removed = Vec::new();
    for id in stale {
        match engine.layer_remove(&id) {
            Ok(()) => {
                log::warn!("removed layer {id:?}: its import was interrupted (retry the import)");
                removed.push(id);
            }
            Err(e) => log::error!("cannot remove the interrupted import {id:?}: {e}"),
        }
    }
    removed
}

/// Files read ahead at most at once by [`export_changes`].
const PREFETCH: usize = 256;
/// Files up to this size are read ahead whole; larger ones stream through [`FileReader`].
const PREFETCH_MAX: u64 = 256 << 10;

/// Reads of the small regular files an export will write, issued ahead in change order.
struct Prefetch<'a> {
    e: &'a Engine,
    slot: engine::meta::Slot,
    /// (change index, inode, size) of every file to read ahead, in order.
    plan: Vec<(usize, u64, u64)>,
    next: usize,
    pending: std::collections::VecDeque<(usize, std::sync::mpsc::Receiver<Result<Vec<u8>>>)>,
}

impl<'a> Prefetch<'a> {
    fn new(
        e: &'a Engine,
        slot: engine::meta::Slot,
        tree: &engine::meta::Tree,
        changes: &[engine::diff::Change],
    ) -> Prefetch<'a> {
        let mut seen = std::collections::HashSet::new();
        let mut plan = Vec::new();
        for (i, c) in changes.iter().enumerate() {
            if c.path.is_empty() || c.kind == ChangeKind::Deleted {
                continue;
            }
            let Some(ino) = c.ino else { continue };
            let Some(inode) = tree.get(ino) else { continue };
            let a = inode.attr;
            if a.mode & libc::S_IFMT != libc::S_IFREG {
                continue;
            }
            // The second and further paths of a hard-linked file are link entries.
            if a.nlink > 1 && !seen.insert(ino) {
                continue;
            }
            if a.size > 0 && a.size <= PREFETCH_MAX {
                plan.push((i, ino, a.size));
            }
        }
        let mut p = Prefetch {
            e,
            slot,
            plan,
            next: 0,
            pending: Default::default(),
        };
        p.fill();
        p
    }

    fn fill(&mut self) {
        while self.pending.len() < PREFETCH && self.next < self.plan.len() {
            let (i, ino, size) = self.plan[self.next];
            self.next += 1;
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            self.e.read(
                node_of(self.slot, ino),
                0,
                size as u32,
                Box::new(move |r| {
                    let _ = tx.send(r.map(|d| d.to_vec()));
                }),
            );
            self.pending.push_back((i, rx));
        }
    }

    /// The contents of change `i`'s file, when it was read ahead.
    fn take(&mut self, i: usize) -> Result<Option<Vec<u8>>> {
        match self.pending.front() {
            Some((j, _)) if *j == i => {}
            _ => return Ok(None),
        }
        let (_, rx) = self.pending.pop_front().expect("front");
        let data = rx.recv().unwrap_or(Err(Error::Poisoned))?;
        self.fill();
        Ok(Some(data))
    }
}

impl Drop for Prefetch<'_> {
    fn drop(&mut self) {
        // Reads still in flight finish on their own; wait for them so none outlives the export.
        for (_, rx) in self.pending.drain(..) {
            let _ = rx.recv();
        }
    }
}

/// A reader over a file's bytes in the engine, 1 MiB at a time.
struct FileReader<'a> {
    e: &'a Engine,
    node: Node,
    off: u64,
    size: u64,
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.off >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let want = (self.size - self.off)
            .min(buf.len() as u64)
            .min(CHUNK as u64) as u32;
        let d = self
            .e
            .read_sync(self.node, self.off, want)
            .map_err(|e| io::Error::other(e.to_string()))?;
        if d.is_empty() {
            // A file shorter than its size says: pad with zeros rather than loop.
            let n = want as usize;
            buf[..n].fill(0);
            self.off += n as u64;
            return Ok(n);
        }
        buf[..d.len()].copy_from_slice(&d);
        self.off += d.len() as u64;
        Ok(d.len())
    }
}

fn io_err(e: io::Error) -> Error {
    Error::Io {
        op: "write the tar",
        offset: 0,
        source: e,
    }
}

fn os(p: &[u8]) -> &std::path::Path {
    std::path::Path::new(std::ffi::OsStr::from_bytes(p))
}

/// Write layer `layer`'s diff against its parent (everything, for a base layer) to `out` as an
/// OCI layer tar.
pub fn export(engine: &Engine, layer: &str, out: impl Write) -> Result<()> {
    let (slot, tree, changes) = engine::diff::layer_diff_tree(engine, layer)?;
    export_changes(engine, layer, slot, &tree, &changes, out)
}

/// Write `changes` (of `tree`, the tree of the layer in `slot`, named `layer` in messages) as
/// an OCI layer tar to `out`: what [`export`] writes, for changes computed against any
/// ancestor (containerd's diff service compares a layer with a view of one).
pub fn export_changes(
    engine: &Engine,
    layer: &str,
    slot: engine::meta::Slot,
    tree: &engine::meta::Tree,
    changes: &[engine::diff::Change],
    out: impl Write,
) -> Result<()> {
    let mut b = tar::Builder::new(out);
    // Small files are read ahead, up to PREFETCH at once: one device read at a time would
    // cost a round trip per file.
    let mut ahead = Prefetch::new(engine, slot, tree, changes);
    // Hard links: the first path of an inode written in this tar.
    let mut first: HashMap<u64, Vec<u8>> = HashMap::new();
    for (ci, c) in changes.iter().enumerate() {
        if c.path.is_empty() {
            continue;
        }
        if c.kind == ChangeKind::Deleted {
            let (dir, name) = match c.path.iter().rposition(|b| *b == b'/') {
                Some(i) => (&c.path[..=i], &c.path[i + 1..]),
                None => (&b""[..], &c.path[..]),
            };
            let mut p = dir.to_vec();
            p.extend_from_slice(WHITEOUT);
            p.extend_from_slice(name);
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(0);
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            b.append_data(&mut h, os(&p), io::empty()).map_err(io_err)?;
            continue;
        }
        let Some(ino) = c.ino else { continue };
        let Some(inode) = tree.get(ino) else { continue };
        let a = inode.attr;
        let node = node_of(slot, ino);
        let mut h = tar::Header::new_ustar();
        h.set_mode(a.mode & 0o7777);
        h.set_uid(a.uid as u64);
        h.set_gid(a.gid as u64);
        h.set_mtime(a.mtime.sec.max(0) as u64);
        h.set_size(0);
        // xattrs and sub-second mtime as PAX records.
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        for (k, v) in inode.xattrs.iter() {
            pax.push((format!("SCHILY.xattr.{}", show(k)), v.to_vec()));
        }
        if a.mtime.nsec != 0 {
            pax.push((
                "mtime".into(),
                format!("{}.{:09}", a.mtime.sec, a.mtime.nsec).into_bytes(),
            ));
        }
        let kind = a.mode & libc::S_IFMT;
        if kind != libc::S_IFDIR && a.nlink > 1 {
            if let Some(p0) = first.get(&ino) {
                h.set_entry_type(tar::EntryType::Link);
                b.append_link(&mut h, os(&c.path), os(p0)).map_err(io_err)?;
                continue;
            }
            first.insert(ino, c.path.clone());
        }
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(io_err)?;
        }
        match kind {
            libc::S_IFREG => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(a.size);
                if let Some(data) = ahead.take(ci)? {
                    // A file shorter than its size says is padded with zeros, as FileReader does.
                    let pad = io::repeat(0).take(a.size.saturating_sub(data.len() as u64));
                    let r = io::Cursor::new(data).chain(pad).take(a.size);
                    b.append_data(&mut h, os(&c.path), r).map_err(io_err)?;
                } else {
                    let r = FileReader {
                        e: engine,
                        node,
                        off: 0,
                        size: a.size,
                    };
                    b.append_data(&mut h, os(&c.path), r).map_err(io_err)?;
                }
            }
            libc::S_IFDIR => {
                h.set_entry_type(tar::EntryType::Directory);
                b.append_data(&mut h, os(&c.path), io::empty())
                    .map_err(io_err)?;
                if c.kind == ChangeKind::OpaqueDir {
                    let mut p = c.path.clone();
                    p.push(b'/');
                    p.extend_from_slice(OPAQUE);
                    let mut w = tar::Header::new_ustar();
                    w.set_entry_type(tar::EntryType::Regular);
                    w.set_mode(0o644);
                    w.set_size(0);
                    w.set_mtime(0);
                    w.set_uid(0);
                    w.set_gid(0);
                    b.append_data(&mut w, os(&p), io::empty()).map_err(io_err)?;
                }
            }
            libc::S_IFLNK => {
                h.set_entry_type(tar::EntryType::Symlink);
                let t = match &inode.content {
                    engine::meta::Content::Symlink(t) => t.to_vec(),
                    _ => engine.readlink(node)?.to_vec(),
                };
                b.append_link(&mut h, os(&c.path), os(&t)).map_err(io_err)?;
            }
            libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO => {
                h.set_entry_type(match kind {
                    libc::S_IFCHR => tar::EntryType::Char,
                    libc::S_IFBLK => tar::EntryType::Block,
                    _ => tar::EntryType::Fifo,
                });
                let (maj, min) = decode_dev(a.rdev);
                h.set_device_major(maj).map_err(io_err)?;
                h.set_device_minor(min).map_err(io_err)?;
                b.append_data(&mut h, os(&c.path), io::empty())
                    .map_err(io_err)?;
            }
            _ => {
                log::warn!(
                    "export of {layer:?}: {:?} is a socket; sockets have no tar form, skipped",
                    show(&c.path)
                );
            }
        }
    }
    b.into_inner().map_err(io_err)?.flush().map_err(io_err)?;
    Ok(())
}
