//! An io_uring ring for tests that drive reads and writes through io_uring themselves
//! (tests/fsx_direct.rs): every submitted buffer stays alive until its completion is reaped.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use io_uring::{opcode, types, IoUring};

use crate::sys::AlignedBuf;

/// One read or write of `buf` at file offset `off`.
pub struct RingOp {
    pub write: bool,
    pub off: u64,
    pub buf: AlignedBuf,
}

pub struct Ring(IoUring);

impl Ring {
    /// A ring of `entries` submission entries (io_uring_setup's errors as they are, e.g.
    /// ENOSYS or EPERM where io_uring is not available).
    pub fn new(entries: u32) -> io::Result<Ring> {
        Ok(Ring(IoUring::new(entries)?))
    }

    /// Submit every op at once on `fd` and wait for all of them; each op's completion result
    /// (bytes done, or -errno), in the order of `ops`. If waiting fails, the buffers are
    /// leaked (the kernel may still be using them) and left empty in `ops`.
    pub fn run(&mut self, fd: impl AsFd, ops: &mut [RingOp]) -> io::Result<Vec<i32>> {
        let fd = types::Fd(fd.as_fd().as_raw_fd());
        if ops.len() > self.0.params().sq_entries() as usize {
            return Err(io::Error::other(format!(
                "{} operations for a ring of {}",
                ops.len(),
                self.0.params().sq_entries()
            )));
        }
        {
            let mut sq = self.0.submission();
            for (i, op) in ops.iter_mut().enumerate() {
                let len = op.buf.len() as u32;
                let e = if op.write {
                    opcode::Write::new(fd, op.buf.as_mut_ptr() as *const u8, len)
                        .offset(op.off)
                        .build()
                } else {
                    opcode::Read::new(fd, op.buf.as_mut_ptr(), len)
                        .offset(op.off)
                        .build()
                };
                // SAFETY: each entry points at its op's buffer, which `ops` (borrowed for this
                // whole call) keeps alive and unmoved until every completion is reaped below,
                // or leaks if waiting fails. The ring has room (checked above).
                unsafe { sq.push(&e.user_data(i as u64)) }.expect("submission queue full");
            }
        }
        let mut res: Vec<Option<i32>> = vec![None; ops.len()];
        let mut left = ops.len();
        let fatal = |ops: &mut [RingOp], e: io::Error| {
            for op in ops.iter_mut() {
                std::mem::forget(std::mem::replace(&mut op.buf, AlignedBuf::new(0)));
            }
            Err(e)
        };
        while left > 0 {
            if let Err(e) = self.0.submit_and_wait(left) {
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return fatal(
                    ops,
                    io::Error::other(format!("io_uring submit_and_wait: {e}")),
                );
            }
            for cqe in self.0.completion() {
                let i = cqe.user_data() as usize;
                if i >= res.len() || res[i].is_some() {
                    return fatal(
                        ops,
                        io::Error::other(format!("unexpected or duplicate completion for {i}")),
                    );
                }
                res[i] = Some(cqe.result());
                left -= 1;
            }
        }
        Ok(res.into_iter().map(|r| r.expect("completion")).collect())
    }
}
