//! Requests: a kernel message parsed into an [`Op`] that borrows names and data from the
//! buffer it arrived in. Parsing never panics: every length is checked, and a message that
//! does not hold what its opcode needs is an [`BadRequest`] (answered with EINVAL, or
//! dropped when the opcode has no reply).
//!
//! A message has three parts: the `fuse_in_header`, the opcode's fixed-size first argument
//! (`arg0`) and the rest (names, data), followed by extensions (`total_extlen`). /dev/fuse
//! delivers them back to back ([`Request::parse_dev`]); io_uring puts the header, `arg0` and
//! the rest into three separate areas ([`Request::parse_parts`]).

use crate::abi::{self, op, InHeader, Le};

/// A message that does not hold what its opcode needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadRequest(pub &'static str);

/// One request.
#[derive(Debug)]
pub struct Request<'a> {
    pub header: InHeader,
    pub op: Op<'a>,
    /// Extensions (`fuse_ext_header` records), e.g. the caller's supplementary groups.
    pub ext: &'a [u8],
}

/// `fuse_setattr_in`, with only the fields the `valid` bits name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetattrIn {
    pub valid: u32,
    pub fh: u64,
    pub size: u64,
    pub atime: (u64, u32),
    pub mtime: (u64, u32),
    pub ctime: (u64, u32),
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// What a request asks.
#[derive(Debug)]
pub enum Op<'a> {
    Init {
        major: u32,
        minor: u32,
        max_readahead: u32,
        flags: u64,
    },
    Destroy,
    Lookup {
        name: &'a [u8],
    },
    Forget {
        nlookup: u64,
    },
    /// `count` (node id, nlookup) pairs in `items`.
    BatchForget {
        items: &'a [u8],
    },
    Getattr {
        fh: Option<u64>,
    },
    Setattr(SetattrIn),
    Readlink,
    Symlink {
        name: &'a [u8],
        target: &'a [u8],
    },
    Mknod {
        mode: u32,
        rdev: u32,
        umask: u32,
        name: &'a [u8],
    },
    Mkdir {
        mode: u32,
        umask: u32,
        name: &'a [u8],
    },
    Unlink {
        name: &'a [u8],
    },
    Rmdir {
        name: &'a [u8],
    },
    Rename {
        newdir: u64,
        flags: u32,
        name: &'a [u8],
        newname: &'a [u8],
    },
    Link {
        oldnodeid: u64,
        name: &'a [u8],
    },
    Open {
        flags: u32,
        open_flags: u32,
    },
    Read {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Write {
        fh: u64,
        offset: u64,
        write_flags: u32,
        data: &'a [u8],
    },
    Statfs,
    Release {
        fh: u64,
    },
    Fsync {
        fh: u64,
        datasync: bool,
    },
    Setxattr {
        flags: u32,
        name: &'a [u8],
        value: &'a [u8],
    },
    Getxattr {
        size: u32,
        name: &'a [u8],
    },
    Listxattr {
        size: u32,
    },
    Removexattr {
        name: &'a [u8],
    },
    Flush,
    Opendir {
        flags: u32,
    },
    Readdir {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Readdirplus {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Releasedir,
    Fsyncdir {
        datasync: bool,
    },
    Access {
        mask: u32,
    },
    Create {
        flags: u32,
        mode: u32,
        umask: u32,
        open_flags: u32,
        name: &'a [u8],
    },
    Tmpfile {
        flags: u32,
        mode: u32,
        umask: u32,
        open_flags: u32,
    },
    Interrupt {
        unique: u64,
    },
    Fallocate {
        fh: u64,
        offset: u64,
        length: u64,
        mode: u32,
    },
    Lseek {
        offset: u64,
        whence: u32,
    },
    CopyFileRange {
        off_in: u64,
        nodeid_out: u64,
        off_out: u64,
        len: u64,
        wide: bool,
    },
    Syncfs,
    /// Anything we do not implement (answered with ENOSYS).
    Other,
}

impl Op<'_> {
    /// Whether the request refers to bytes of the buffer it arrived in (names, data).
    pub fn borrows_buffer(&self) -> bool {
        matches!(
            self,
            Op::Lookup { .. }
                | Op::BatchForget { .. }
                | Op::Symlink { .. }
                | Op::Mknod { .. }
                | Op::Mkdir { .. }
                | Op::Unlink { .. }
                | Op::Rmdir { .. }
                | Op::Rename { .. }
                | Op::Link { .. }
                | Op::Write { .. }
                | Op::Setxattr { .. }
                | Op::Getxattr { .. }
                | Op::Removexattr { .. }
                | Op::Create { .. }
        )
    }
}

const SHORT: BadRequest = BadRequest("message shorter than its opcode needs");

/// A NUL-terminated name: the bytes before the first NUL, and what follows it.
fn cstr(b: &[u8]) -> Result<(&[u8], &[u8]), BadRequest> {
    let n = b
        .iter()
        .position(|&c| c == 0)
        .ok_or(BadRequest("name without its terminating NUL"))?;
    Ok((&b[..n], &b[n + 1..]))
}

fn name(b: &[u8]) -> Result<&[u8], BadRequest> {
    cstr(b).map(|(n, _)| n)
}

impl<'a> Request<'a> {
    /// A message as read from /dev/fuse (header, first argument and the rest back to back).
    pub fn parse_dev(buf: &'a [u8]) -> Result<Request<'a>, BadRequest> {
        let header = InHeader::decode(buf).ok_or(SHORT)?;
        let len = header.len as usize;
        if len < abi::IN_HEADER_SIZE || len > buf.len() {
            return Err(BadRequest("header length outside the message"));
        }
        let body = &buf[abi::IN_HEADER_SIZE..len];
        let (body, ext) = split_ext(body, header.total_extlen)?;
        let n = if header.opcode == op::INIT {
            body.len()
        } else {
            abi::arg0_size(header.opcode, abi::KERNEL_MINOR_VERSION).min(body.len())
        };
        let (arg0, rest) = body.split_at(n);
        Self::parse_body(header, arg0, rest, ext)
    }

    /// A message from an io_uring entry: the header area, the per-opcode header area (its
    /// first `arg0_size` bytes are the first argument) and `payload_sz` bytes of payload.
    pub fn parse_parts(
        header: &'a [u8],
        op_in: &'a [u8],
        payload: &'a [u8],
    ) -> Result<Request<'a>, BadRequest> {
        let header = InHeader::decode(header).ok_or(SHORT)?;
        let (payload, ext) = split_ext(payload, header.total_extlen)?;
        let n = abi::arg0_size(header.opcode, abi::KERNEL_MINOR_VERSION);
        let arg0 = op_in.get(..n).ok_or(SHORT)?;
        Self::parse_body(header, arg0, payload, ext)
    }

    fn parse_body(
        header: InHeader,
        arg0: &'a [u8],
        rest: &'a [u8],
        ext: &'a [u8],
    ) -> Result<Request<'a>, BadRequest> {
        let mut a = Le::new(arg0);
        let op = match header.opcode {
            op::INIT => {
                let major = a.u32().ok_or(SHORT)?;
                let minor = a.u32().ok_or(SHORT)?;
                let max_readahead = a.u32().ok_or(SHORT)?;
                let flags = a.u32().ok_or(SHORT)? as u64;
                // flags2 exists from 7.36 (FUSE_INIT_EXT); older kernels send 16 bytes.
                let flags2 = a.u32().unwrap_or(0) as u64;
                let flags = if flags & abi::init::INIT_EXT != 0 {
                    flags | flags2 << 32
                } else {
                    flags
                };
                Op::Init {
                    major,
                    minor,
                    max_readahead,
                    flags,
                }
            }
            op::DESTROY => Op::Destroy,
            op::LOOKUP => Op::Lookup { name: name(rest)? },
            op::FORGET => Op::Forget {
                nlookup: a.u64().ok_or(SHORT)?,
            },
            op::BATCH_FORGET => {
                let count = a.u32().ok_or(SHORT)? as usize;
                let bytes = count.checked_mul(16).ok_or(SHORT)?;
                Op::BatchForget {
                    items: rest.get(..bytes).ok_or(SHORT)?,
                }
            }
            op::GETATTR => {
                let flags = a.u32().ok_or(SHORT)?;
                a.u32().ok_or(SHORT)?;
                let fh = a.u64().ok_or(SHORT)?;
                Op::Getattr {
                    fh: (flags & 1 != 0).then_some(fh),
                }
            }
            op::SETATTR => {
                let valid = a.u32().ok_or(SHORT)?;
                a.u32().ok_or(SHORT)?;
                let fh = a.u64().ok_or(SHORT)?;
                let size = a.u64().ok_or(SHORT)?;
                let _lock_owner = a.u64().ok_or(SHORT)?;
                let atime = a.u64().ok_or(SHORT)?;
                let mtime = a.u64().ok_or(SHORT)?;
                let ctime = a.u64().ok_or(SHORT)?;
                let atimensec = a.u32().ok_or(SHORT)?;
                let mtimensec = a.u32().ok_or(SHORT)?;
                let ctimensec = a.u32().ok_or(SHORT)?;
                let mode = a.u32().ok_or(SHORT)?;
                a.u32().ok_or(SHORT)?;
                let uid = a.u32().ok_or(SHORT)?;
                let gid = a.u32().ok_or(SHORT)?;
                Op::Setattr(SetattrIn {
                    valid,
                    fh,
                    size,
                    atime: (atime, atimensec),
                    mtime: (mtime, mtimensec),
                    ctime: (ctime, ctimensec),
                    mode,
                    uid,
                    gid,
                })
            }
            op::READLINK => Op::Readlink,
            op::SYMLINK => {
                let (name, rest) = cstr(rest)?;
                Op::Symlink {
                    name,
                    target: self::name(rest)?,
                }
            }
            op::MKNOD => {
                let mode = a.u32().ok_or(SHORT)?;
                let rdev = a.u32().ok_or(SHORT)?;
                let umask = a.u32().ok_or(SHORT)?;
                Op::Mknod {
                    mode,
                    rdev,
                    umask,
                    name: name(rest)?,
                }
            }
            op::MKDIR => {
                let mode = a.u32().ok_or(SHORT)?;
                let umask = a.u32().ok_or(SHORT)?;
                Op::Mkdir {
                    mode,
                    umask,
                    name: name(rest)?,
                }
            }
            op::UNLINK => Op::Unlink { name: name(rest)? },
            op::RMDIR => Op::Rmdir { name: name(rest)? },
            op::RENAME | op::RENAME2 => {
                let newdir = a.u64().ok_or(SHORT)?;
                let flags = if header.opcode == op::RENAME2 {
                    a.u32().ok_or(SHORT)?
                } else {
                    0
                };
                let (name, rest) = cstr(rest)?;
                Op::Rename {
                    newdir,
                    flags,
                    name,
                    newname: self::name(rest)?,
                }
            }
            op::LINK => Op::Link {
                oldnodeid: a.u64().ok_or(SHORT)?,
                name: name(rest)?,
            },
            op::OPEN => Op::Open {
                flags: a.u32().ok_or(SHORT)?,
                open_flags: a.u32().ok_or(SHORT)?,
            },
            op::OPENDIR => Op::Opendir {
                flags: a.u32().ok_or(SHORT)?,
            },
            op::READ | op::READDIR | op::READDIRPLUS => {
                let fh = a.u64().ok_or(SHORT)?;
                let offset = a.u64().ok_or(SHORT)?;
                let size = a.u32().ok_or(SHORT)?;
                match header.opcode {
                    op::READ => Op::Read { fh, offset, size },
                    op::READDIR => Op::Readdir { fh, offset, size },
                    _ => Op::Readdirplus { fh, offset, size },
                }
            }
            op::WRITE => {
                let fh = a.u64().ok_or(SHORT)?;
                let offset = a.u64().ok_or(SHORT)?;
                let size = a.u32().ok_or(SHORT)? as usize;
                let write_flags = a.u32().ok_or(SHORT)?;
                Op::Write {
                    fh,
                    offset,
                    write_flags,
                    data: rest.get(..size).ok_or(SHORT)?,
                }
            }
            op::STATFS => Op::Statfs,
            op::RELEASE => Op::Release {
                fh: a.u64().ok_or(SHORT)?,
            },
            op::RELEASEDIR => Op::Releasedir,
            op::FSYNC | op::FSYNCDIR => {
                let fh = a.u64().ok_or(SHORT)?;
                let datasync = a.u32().ok_or(SHORT)? & abi::FSYNC_FDATASYNC != 0;
                if header.opcode == op::FSYNC {
                    Op::Fsync { fh, datasync }
                } else {
                    Op::Fsyncdir { datasync }
                }
            }
            op::SETXATTR => {
                let size = a.u32().ok_or(SHORT)? as usize;
                let flags = a.u32().ok_or(SHORT)?;
                let (name, rest) = cstr(rest)?;
                Op::Setxattr {
                    flags,
                    name,
                    value: rest.get(..size).ok_or(SHORT)?,
                }
            }
            op::GETXATTR => Op::Getxattr {
                size: a.u32().ok_or(SHORT)?,
                name: name(rest)?,
            },
            op::LISTXATTR => Op::Listxattr {
                size: a.u32().ok_or(SHORT)?,
            },
            op::REMOVEXATTR => Op::Removexattr { name: name(rest)? },
            op::FLUSH => Op::Flush,
            op::ACCESS => Op::Access {
                mask: a.u32().ok_or(SHORT)?,
            },
            op::CREATE | op::TMPFILE => {
                let flags = a.u32().ok_or(SHORT)?;
                let mode = a.u32().ok_or(SHORT)?;
                let umask = a.u32().ok_or(SHORT)?;
                let open_flags = a.u32().ok_or(SHORT)?;
                if header.opcode == op::CREATE {
                    Op::Create {
                        flags,
                        mode,
                        umask,
                        open_flags,
                        name: name(rest)?,
                    }
                } else {
                    Op::Tmpfile {
                        flags,
                        mode,
                        umask,
                        open_flags,
                    }
                }
            }
            op::INTERRUPT => Op::Interrupt {
                unique: a.u64().ok_or(SHORT)?,
            },
            op::FALLOCATE => Op::Fallocate {
                fh: a.u64().ok_or(SHORT)?,
                offset: a.u64().ok_or(SHORT)?,
                length: a.u64().ok_or(SHORT)?,
                mode: a.u32().ok_or(SHORT)?,
            },
            op::LSEEK => {
                a.u64().ok_or(SHORT)?;
                Op::Lseek {
                    offset: a.u64().ok_or(SHORT)?,
                    whence: a.u32().ok_or(SHORT)?,
                }
            }
            op::COPY_FILE_RANGE | op::COPY_FILE_RANGE_64 => {
                a.u64().ok_or(SHORT)?;
                let off_in = a.u64().ok_or(SHORT)?;
                let nodeid_out = a.u64().ok_or(SHORT)?;
                a.u64().ok_or(SHORT)?;
                let off_out = a.u64().ok_or(SHORT)?;
                let len = a.u64().ok_or(SHORT)?;
                Op::CopyFileRange {
                    off_in,
                    nodeid_out,
                    off_out,
                    len,
                    wide: header.opcode == op::COPY_FILE_RANGE_64,
                }
            }
            op::SYNCFS => Op::Syncfs,
            _ => Op::Other,
        };
        Ok(Request { header, op, ext })
    }

    /// The caller's supplementary groups, when the kernel sent them (FUSE_CREATE_SUPP_GROUP:
    /// on creates, the one group of the caller that owns the parent).
    pub fn supp_groups(&self) -> impl Iterator<Item = u32> + 'a {
        let mut ext = Le::new(self.ext);
        let mut groups: &'a [u8] = &[];
        while let (Some(size), Some(kind)) = (ext.u32(), ext.u32()) {
            let Some(body) = (size as usize)
                .checked_sub(8)
                .and_then(|n| ext.bytes(n.next_multiple_of(8)))
            else {
                break;
            };
            if kind == abi::EXT_GROUPS {
                let mut g = Le::new(body);
                let n = g.u32().unwrap_or(0) as usize;
                groups = g.rest().get(..n.saturating_mul(4)).unwrap_or(&[]);
                break;
            }
        }
        groups
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// The (node id, nlookup) pairs of a BATCH_FORGET.
pub fn forget_items(items: &[u8]) -> impl Iterator<Item = (u64, u64)> + '_ {
    items.chunks_exact(16).map(|c| {
        let mut r = Le::new(c);
        (r.u64().unwrap_or(0), r.u64().unwrap_or(0))
    })
}

fn split_ext(body: &[u8], extlen: u16) -> Result<(&[u8], &[u8]), BadRequest> {
    let n = extlen as usize * 8;
    if n > body.len() {
        return Err(BadRequest("extensions longer than the message"));
    }
    Ok(body.split_at(body.len() - n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::Put;

    fn msg(opcode: u32, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        InHeader {
            len: (abi::IN_HEADER_SIZE + body.len()) as u32,
            opcode,
            unique: 9,
            nodeid: 1,
            ..Default::default()
        }
        .encode(&mut v);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn lookup_and_rename_names() {
        let m = msg(op::LOOKUP, b"abc\0");
        let r = Request::parse_dev(&m).unwrap();
        assert!(matches!(r.op, Op::Lookup { name: b"abc" }));
        let mut b = Vec::new();
        b.put_u64(7);
        b.put_u32(1);
        b.put_u32(0);
        b.extend_from_slice(b"old\0new\0");
        let m = msg(op::RENAME2, &b);
        match Request::parse_dev(&m).unwrap().op {
            Op::Rename {
                newdir: 7,
                flags: 1,
                name,
                newname,
            } => assert_eq!((name, newname), (&b"old"[..], &b"new"[..])),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn write_data_is_bounded_by_the_message() {
        let mut b = Vec::new();
        b.put_u64(0);
        b.put_u64(4096);
        b.put_u32(10);
        b.put_u32(abi::WRITE_CACHE);
        b.put_u64(0);
        b.put_u32(0);
        b.put_u32(0);
        b.extend_from_slice(b"0123456789");
        let m = msg(op::WRITE, &b);
        match Request::parse_dev(&m).unwrap().op {
            Op::Write { data, offset, .. } => {
                assert_eq!((data, offset), (&b"0123456789"[..], 4096))
            }
            o => panic!("{o:?}"),
        }
        let m = msg(op::WRITE, &b[..b.len() - 1]);
        assert!(Request::parse_dev(&m).is_err());
    }

    #[test]
    fn every_truncation_of_every_opcode_is_an_error_or_a_request() {
        // Arbitrary bytes after a valid header: parsing returns, never panics.
        let mut seed = 0x1234_5678_u64;
        for opcode in 0..70u32 {
            for len in 0..200usize {
                let body: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed as u8
                    })
                    .collect();
                let m = msg(opcode, &body);
                let _ = Request::parse_dev(&m);
                for cut in 0..m.len() {
                    let _ = Request::parse_dev(&m[..cut]);
                }
                let _ = Request::parse_parts(&m, &body, &body);
            }
        }
    }

    #[test]
    fn supplementary_groups_extension() {
        let mut b = Vec::new();
        b.put_u32(0o100644); // flags
        b.put_u32(0o644);
        b.put_u32(0o22);
        b.put_u32(0);
        b.extend_from_slice(b"f\0");
        b.resize(24, 0); // 8-byte aligned before the extension
        b.put_u32(16); // ext size
        b.put_u32(abi::EXT_GROUPS);
        b.put_u32(1);
        b.put_u32(4242);
        let mut m = msg(op::CREATE, &b);
        m[36..38].copy_from_slice(&2u16.to_le_bytes()); // total_extlen: 16 bytes
        let r = Request::parse_dev(&m).unwrap();
        assert!(matches!(r.op, Op::Create { name: b"f", .. }));
        assert_eq!(r.supp_groups().collect::<Vec<_>>(), vec![4242]);
    }
}
