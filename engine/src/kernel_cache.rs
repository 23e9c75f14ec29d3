//! What the kernel may cache of a file's data, and getting its dirty pages back.
//!
//! Data only one layer can see — the blocks an active layer owns: files it created or
//! rewrote — may live in the kernel page cache like any file system's, with write-back, so
//! small reads and writes cost no round trip ([`CacheMode::Kernel`]). Data that other layers
//! share stays out of it: every container would keep its own copy there. It is read through
//! the engine, whose block cache holds one copy for every layer ([`CacheMode::Engine`]).
//!
//! A file opened for writing is cached by the kernel (its writes, mmap and read() then share
//! one page cache, as on ext4), except when the device is nearly full: the kernel cannot
//! reserve space for dirty pages, so below [`WRITEBACK_RESERVE`] of free space (or of room
//! under the layer's space limit) writes go straight to the engine and a full device answers
//! write() with ENOSPC (a full layer with EDQUOT).
//!
//! The kernel holds dirty pages the engine has not seen yet. Before anything freezes a layer
//! (commit, snapshot) or reads it from inside the engine (export, diff), the daemon's
//! flusher ([`Engine::set_kernel_flush`], a `syncfs` of the mount) writes them back.

use crate::engine::{tree_of, Engine};
use crate::error::{errno, Result};
use crate::format::BLOCK;
use crate::limits::Limits;
use crate::meta::LayerState;
use crate::node::{split, Node};

/// How an open file's data is cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    /// The kernel page cache, with write-back: data only this layer can see.
    Kernel,
    /// Every read and write reaches the engine (its block cache is shared by every layer).
    Engine,
}

/// Free space below which files are opened for writing without the kernel's write-back cache.
/// Above the most the kernel lets a FUSE mount hold dirty (a strict per-device limit of about
/// 1% of the system's dirty memory).
pub const WRITEBACK_RESERVE: u64 = 256 << 20;

/// Writes the kernel's dirty pages of the whole mount back to the engine (`syncfs`). Called
/// from admin and snapshotter threads, never from a FUSE request.
pub type KernelFlush = Box<dyn Fn() + Send + Sync>;

impl Engine {
    /// How `node`, a regular file being opened (`write`: for writing or truncation), is cached.
    pub fn cache_mode(&self, node: Node, write: bool) -> Result<CacheMode> {
        let (slot, ino) = split(node);
        let m = self.inner.meta.lock();
        let layer = m.layers.get(slot).ok_or(errno(libc::ENOENT))?;
        let inode = tree_of(&m, slot)?.get(ino).ok_or(errno(libc::ENOENT))?;
        if layer.state != LayerState::Active || !inode.attr.is_reg() {
            return Ok(CacheMode::Engine);
        }
        if write {
            // Near the device's end, or the layer's space limit, writes must fail at write().
            let room = Limits::of(&layer.labels)
                .bytes
                .map(|b| b.saturating_sub(layer.owned * BLOCK))
                .unwrap_or(u64::MAX)
                .min(m.alloc.available() * BLOCK);
            return Ok(if room > WRITEBACK_RESERVE {
                CacheMode::Kernel
            } else {
                CacheMode::Engine
            });
        }
        let owner = layer.owner;
        let own = inode
            .extents()
            .is_none_or(|x| x.0.values().all(|e| e.owner == owner));
        Ok(if own {
            CacheMode::Kernel
        } else {
            CacheMode::Engine
        })
    }

    /// Set the function that writes the kernel's dirty pages back (the FUSE front's `syncfs`).
    pub fn set_kernel_flush(&self, f: KernelFlush) {
        *self.inner.kernel_flush.lock() = Some(f);
    }

    /// Write the kernel's dirty pages back to the engine, so what the engine holds is what
    /// the files hold (before a layer is frozen or read out). Without a mount, nothing to do.
    pub fn flush_kernel_cache(&self) {
        if let Some(f) = self.inner.kernel_flush.lock().as_ref() {
            f();
        }
    }
}
