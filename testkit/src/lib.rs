//! Strata's test support, shared by the integration tests of the root package (`tests/`), the
//! engine (`engine/tests/`) and the control plane (`control/tests/`). It exists so that set-up
//! is written once: the `strata mount` fixture that always unmounts, per-test directories,
//! in-memory engines, write-log crash replay, the stable fuzz corpus driver, one seeded random
//! number generator, mount-table parsing, a process runner with a timeout, and the system
//! calls tests make directly.
//!
//! All the unsafe code the tests need lives here (`sys`, `uring`, `sdnotify`), each block with a
//! `// SAFETY:` comment; the test crates themselves are `#![forbid(unsafe_code)]`.
//!
//! | module | what |
//! |---|---|
//! | [`rng`] | [`Rng`] (splitmix64), [`pattern`] bytes, [`hash`] (FNV-1a) |
//! | [`mem`] | in-memory engines: [`mkfs_mem`], [`open_mem`], [`mem_engine`], [`read_all`], [`resolve`] |
//! | [`replay`] | write-log crash replay (engine and OCI import replay tests) |
//! | [`fuzz`] | the fuzz targets' corpus and seeded mutations on the stable toolchain |
//! | [`process`] | [`run_with_timeout`], [`wait_child`], [`on_path`] |
//! | [`mountinfo`] | /proc/self/mountinfo: [`mount_info`], [`is_mounted`], [`mounts_below`], [`umount`] |
//! | [`strata`] | the binary under test: [`TestDir`], [`Mount`], [`MountGuard`], mkfs, fsck |
//! | [`live`] | live restart: Strata with the keeper as fd holder, the workload that runs in the mount (or a container) across restarts, pauses |
//! | [`containerd`] | a private containerd (1.6 or 1.7) with Strata as its proxy snapshotter and diff service |
//! | [`requests`] | FUSE requests per opcode from the daemon's statistics: [`requests::fuse_requests`], [`requests::delta`], [`requests::table`] |
//! | [`tree`] | snapshots of a directory tree and their comparison |
//! | [`sdnotify`] | a stand-in systemd's system calls: notify socket credentials and descriptors, `kcmp`, starting a process with `LISTEN_FDS` |
//! | [`sys`] | libc calls returning `Result<_, errno>`, [`as_user`], [`sys::Mapping`], [`sys::AlignedBuf`] |
//! | [`uring`] | an io_uring ring that reads and writes [`sys::AlignedBuf`]s |

#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod containerd;
pub mod docker;
pub mod fuzz;
pub mod http;
pub mod live;
pub mod mem;
pub mod mountinfo;
pub mod process;
pub mod replay;
pub mod requests;
pub mod rng;
pub mod sdnotify;
pub mod strata;
pub mod sys;
pub mod tree;
pub mod uring;

pub use http::{free_port, http_get, http_get_raw};
pub use mem::{mem_engine, mkfs_mem, open_mem, read_all, resolve, with_cache};
pub use mountinfo::{is_mounted, mount_entries, mount_info, mounts_below, umount, unescape};
pub use process::{on_path, run_with_timeout, status_code, wait_child, Output};
pub use rng::{hash, pattern, Rng};
pub use strata::{
    assert_fsck_clean, assert_no_panic, fsck, fuse_transport, mkfs_at, skip_reason, strata,
    strata_bin, Mount, MountFailure, MountGuard, TestDir, MOUNT_TIMEOUT, STOP_TIMEOUT,
};
pub use sys::{as_user, code, cstr, errno, errno_name, errno_of, geteuid};
pub use tree::{
    assert_snapshots_equal, entry_of, first_difference, snapshot, user_xattrs, Entry, Snapshot,
};
