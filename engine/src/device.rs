//! The block device under the engine: an image file or a raw block device opened with
//! O_DIRECT, behind the [`Device`] trait so tests can substitute a failing or recording
//! backend. All I/O is in whole 4 KiB blocks from [`AlignedBuf`]s.

use std::alloc::{self, Layout};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{BLOCK, BLOCK_SIZE, BOOT_ID_LEN};

/// A heap buffer aligned to 4 KiB whose length is a multiple of 4 KiB, as O_DIRECT needs.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    /// Taken from the pool (contents left by a previous user).
    reused: bool,
    /// Memory the buffer does not own ([`AlignedBuf::external`]): never freed or pooled.
    external: bool,
}

/// Freed buffers kept for reuse, by block count (1..=[`POOL_MAX_BLOCKS`]), at most
/// [`POOL_BYTES`] in all: a read no longer pays an aligned allocation (and, for large ones,
/// an mmap, its page faults and an munmap) per request.
const POOL_MAX_BLOCKS: usize = 256;
/// Bytes the pool may hold.
pub const POOL_BYTES: usize = 16 << 20;

struct FreeBuf(std::ptr::NonNull<u8>);
// SAFETY: a pooled buffer is owned by the pool alone, like a Box<[u8]> in a Vec.
unsafe impl Send for FreeBuf {}

static POOL: [std::sync::Mutex<Vec<FreeBuf>>; POOL_MAX_BLOCKS + 1] =
    [const { std::sync::Mutex::new(Vec::new()) }; POOL_MAX_BLOCKS + 1];
static POOLED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn pool_take(blocks: usize) -> Option<std::ptr::NonNull<u8>> {
    use std::sync::atomic::Ordering;
    if blocks > POOL_MAX_BLOCKS || POOLED.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let f = POOL[blocks]
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop()?;
    POOLED.fetch_sub(blocks * BLOCK_SIZE, Ordering::Relaxed);
    Some(f.0)
}

/// Keep a freed buffer of `blocks` blocks; false when the pool is full (free it then).
fn pool_put(ptr: std::ptr::NonNull<u8>, blocks: usize) -> bool {
    use std::sync::atomic::Ordering;
    let len = blocks * BLOCK_SIZE;
    if blocks > POOL_MAX_BLOCKS {
        return false;
    }
    if POOLED.fetch_add(len, Ordering::Relaxed) + len > POOL_BYTES {
        POOLED.fetch_sub(len, Ordering::Relaxed);
        return false;
    }
    POOL[blocks]
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(FreeBuf(ptr));
    true
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only allow reads of the owned allocation.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `blocks` 4 KiB blocks (at least one).
    pub fn zeroed(blocks: usize) -> Self {
        let mut b = Self::recycled(blocks);
        if b.reused {
            b.fill(0);
            b.reused = false;
        }
        b
    }

    /// A buffer of `blocks` 4 KiB blocks (at least one) whose contents are unspecified: a
    /// freed buffer from the pool ([`POOL_BYTES`]), still holding what its last user put
    /// there (another file's data), or a fresh zeroed one. Only for a caller that overwrites
    /// every byte before anything reads it (a device read's destination, a read reply
    /// assembled block by block with its holes zeroed).
    pub fn recycled(blocks: usize) -> Self {
        let blocks = blocks.max(1);
        if let Some(ptr) = pool_take(blocks) {
            return AlignedBuf {
                ptr,
                len: blocks * BLOCK_SIZE,
                reused: true,
                external: false,
            };
        }
        Self::fresh(blocks)
    }

    fn fresh(blocks: usize) -> Self {
        let len = blocks * BLOCK_SIZE;
        let layout =
            Layout::from_size_align(len, BLOCK_SIZE).expect("4 KiB multiple is a valid layout");
        // SAFETY: layout has non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = std::ptr::NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        AlignedBuf {
            ptr,
            len,
            reused: false,
            external: false,
        }
    }

    /// A buffer over `blocks` 4 KiB blocks of memory it does not own (a read's destination
    /// chosen by the caller: [`ReadDest`]); dropping it leaves the memory alone.
    ///
    /// # Safety
    /// `ptr` is 4 KiB-aligned, valid for reads and writes of `blocks * 4096` initialised
    /// bytes, and nothing else reads or writes that memory until this buffer is dropped.
    pub(crate) unsafe fn external(ptr: std::ptr::NonNull<u8>, blocks: usize) -> Self {
        AlignedBuf {
            ptr,
            len: blocks * BLOCK_SIZE,
            reused: true,
            external: true,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn blocks(&self) -> usize {
        self.len / BLOCK_SIZE
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is a live allocation of len initialised (zeroed) bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.external || pool_put(self.ptr, self.len / BLOCK_SIZE) {
            return;
        }
        let layout =
            Layout::from_size_align(self.len, BLOCK_SIZE).expect("layout was valid at allocation");
        // SAFETY: ptr was allocated with exactly this layout and is freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) }
    }
}

/// Where a read may put its data: memory the caller hands over for the read (the FUSE
/// ring entry's payload buffer, from which the reply then leaves without a copy). See
/// [`crate::Engine::read_local`].
pub struct ReadDest {
    ptr: std::ptr::NonNull<u8>,
    cap: usize,
}

// SAFETY: the memory is handed over to the read (see `ReadDest::new`), like a `&mut [u8]`.
unsafe impl Send for ReadDest {}

impl ReadDest {
    /// # Safety
    /// `ptr` is 4 KiB-aligned and valid for reads and writes of `cap` initialised bytes, and
    /// nothing else reads or writes that memory until the read's callback has run (the
    /// engine writes it only before it calls the callback, which gets a slice of it).
    pub unsafe fn new(ptr: std::ptr::NonNull<u8>, cap: usize) -> ReadDest {
        ReadDest { ptr, cap }
    }

    /// A buffer of `blocks` blocks over the memory, if it holds that many.
    pub(crate) fn buf(self, blocks: usize) -> Option<AlignedBuf> {
        if blocks * BLOCK_SIZE > self.cap || self.ptr.as_ptr() as usize % BLOCK_SIZE != 0 {
            return None;
        }
        // SAFETY: aligned and large enough (checked), and handed over (`ReadDest::new`).
        Some(unsafe { AlignedBuf::external(self.ptr, blocks) })
    }
}

/// What the engine needs from storage. Offsets and lengths are multiples of 4 KiB.
pub trait Device: Send + Sync {
    /// Size in bytes (a multiple of 4 KiB).
    fn size(&self) -> u64;
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Look at the size again (an image file or block device may grow while open: `truncate
    /// -s`, `lvextend`) and return it. Devices that cannot grow return [`Device::size`].
    fn refresh_size(&self) -> io::Result<u64> {
        Ok(self.size())
    }
    /// The O_DIRECT file descriptor, when the io_uring path may use it directly.
    fn raw_fd(&self) -> Option<RawFd> {
        None
    }
    /// Fault injection for tests. The I/O threads ask this before every read or write they
    /// submit (to io_uring, or to `read_at`/`write_at` for devices without a descriptor);
    /// `Some(error)` completes the request with that error instead. `len` is in bytes.
    /// Real devices never inject anything.
    fn inject_fault(&self, _op: FaultOp, _offset: u64, _len: usize) -> Option<io::Error> {
        None
    }
    /// The boot this device's completed writes are guaranteed visible in without a flush:
    /// the machine's boot id for a real device (a daemon that dies loses no completed write;
    /// a reboot may). `None`: no such guarantee, every journal chunk is written after a
    /// flush (see format.md, "Early chunks").
    fn boot_id(&self) -> Option<[u8; BOOT_ID_LEN]> {
        None
    }
    /// A write that must survive the daemon (a crash, kill -9) but not yet a power loss (an
    /// early journal chunk): a real device takes it into the kernel's page cache, a memory
    /// copy instead of a device round trip; the next [`Device::flush`] makes it durable with
    /// everything else, and a direct read or write of the same blocks sees it (the kernel
    /// writes cached pages back before direct I/O to their range).
    fn write_cached(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_at(buf, offset)
    }
}

/// This machine's boot id (`/proc/sys/kernel/random/boot_id`, a UUID), as 16 bytes.
pub fn machine_boot_id() -> Option<[u8; BOOT_ID_LEN]> {
    let s = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let hex: Vec<u8> = s.trim().bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 2 * BOOT_ID_LEN {
        return None;
    }
    let mut out = [0u8; BOOT_ID_LEN];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// The operation [`Device::inject_fault`] is asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOp {
    Read,
    Write,
}

/// An image file or block device opened with O_DIRECT and locked against a second daemon.
pub struct FileDevice {
    file: File,
    size: std::sync::atomic::AtomicU64,
    is_blk: bool,
    boot: Option<[u8; BOOT_ID_LEN]>,
    /// The same file or device opened without O_DIRECT ([`Device::write_cached`]).
    cached: Option<File>,
}

impl FileDevice {
    /// Open for the daemon: O_DIRECT, read-write, exclusive.
    pub fn open(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::Unusable(format!("cannot open {}: {e}", path.display())))?;
        let is_blk = meta.file_type().is_block_device();
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        let mut flags = libc::O_DIRECT | libc::O_CLOEXEC;
        if is_blk {
            flags |= libc::O_EXCL;
        }
        opts.custom_flags(flags);
        let file = match opts.open(path) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                return Err(Error::Unusable(format!(
                    "{} does not support O_DIRECT (is it on tmpfs?); Strata needs a file system or device with direct I/O",
                    path.display()
                )))
            }
            Err(e) if e.raw_os_error() == Some(libc::EROFS) || e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EPERM) => {
                return Err(Error::Unusable(format!(
                    "{} cannot be opened for writing ({e}); Strata needs a writable device",
                    path.display()
                )))
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(Error::Unusable(format!("{} is in use by another program", path.display())))
            }
            Err(e) => return Err(Error::Unusable(format!("cannot open {}: {e}", path.display()))),
        };
        // A daemon killed with SIGKILL keeps the lock until the kernel has torn down its
        // io_uring (asynchronously, a moment after the process is gone): wait a little before
        // deciding that another daemon holds it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            // SAFETY: flock on a valid, owned descriptor has no memory-safety requirements.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::Unusable(format!(
                    "{} is already in use (another strata daemon has it mounted)",
                    path.display()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if is_blk && block_device_read_only(&file) {
            return Err(Error::Unusable(format!(
                "{} is a read-only block device; Strata needs a writable device",
                path.display()
            )));
        }
        let size = if is_blk {
            block_device_size(&file)?
        } else {
            meta.len()
        };
        let size = size / BLOCK_SIZE as u64 * BLOCK_SIZE as u64;
        let dev = FileDevice {
            file,
            size: size.into(),
            is_blk,
            boot: machine_boot_id(),
            cached: OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
                .ok(),
        };
        // Probe that direct I/O really works here (some file systems accept the flag at open
        // and refuse the I/O).
        if size >= BLOCK_SIZE as u64 {
            let mut probe = AlignedBuf::zeroed(1);
            if let Err(e) = dev.read_at(&mut probe, 0) {
                if e.raw_os_error() == Some(libc::EINVAL) {
                    return Err(Error::Unusable(format!(
                        "{} refuses O_DIRECT reads (is it on tmpfs?); Strata needs direct I/O",
                        path.display()
                    )));
                }
                return Err(Error::io("read", 0, e));
            }
        }
        Ok(dev)
    }
}

fn block_device_read_only(file: &File) -> bool {
    let mut ro: libc::c_int = 0;
    // BLKROGET = _IO(0x12, 94)
    const BLKROGET: libc::c_ulong = 0x125e;
    // SAFETY: the ioctl writes one int into `ro`, which outlives the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKROGET, &mut ro as *mut libc::c_int) };
    rc == 0 && ro != 0
}

fn block_device_size(file: &File) -> Result<u64> {
    let mut size: u64 = 0;
    // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    // SAFETY: the ioctl writes one u64 into `size`, which outlives the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc != 0 {
        return Err(Error::Unusable(format!(
            "cannot read block device size: {}",
            io::Error::last_os_error()
        )));
    }
    Ok(size)
}

impl Device for FileDevice {
    fn size(&self) -> u64 {
        self.size.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn refresh_size(&self) -> io::Result<u64> {
        let size = if self.is_blk {
            block_device_size(&self.file).map_err(|e| io::Error::other(e.to_string()))?
        } else {
            self.file.metadata()?.len()
        };
        let size = size / BLOCK_SIZE as u64 * BLOCK_SIZE as u64;
        // Never smaller than what the file system was opened with (shrinking is refused at
        // open, where `read_superblock` compares the superblock with the device).
        Ok(self
            .size
            .fetch_max(size, std::sync::atomic::Ordering::SeqCst)
            .max(size))
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }
    fn boot_id(&self) -> Option<[u8; BOOT_ID_LEN]> {
        self.boot
    }
    fn write_cached(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match &self.cached {
            Some(f) => {
                use std::os::unix::fs::FileExt;
                f.write_all_at(buf, offset)
            }
            None => self.write_at(buf, offset),
        }
    }
}

/// Create (sparse) or size an image file for mkfs. Returns its size.
pub fn prepare_image(path: &Path, size: Option<u64>) -> Result<u64> {
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() => {
            let f = File::open(path)
                .map_err(|e| Error::Unusable(format!("cannot open {}: {e}", path.display())))?;
            block_device_size(&f)
        }
        Ok(m) if m.is_file() => {
            let want = size.unwrap_or(if m.len() == 0 {
                DEFAULT_IMAGE_SIZE
            } else {
                m.len()
            });
            if want != m.len() {
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| Error::Unusable(format!("cannot open {}: {e}", path.display())))?;
                f.set_len(want)
                    .map_err(|e| Error::Unusable(format!("cannot size {}: {e}", path.display())))?;
            }
            Ok(want)
        }
        Ok(_) => Err(Error::Unusable(format!(
            "{} is neither a regular file nor a block device",
            path.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let want = size.unwrap_or(DEFAULT_IMAGE_SIZE);
            // 0600: the image holds every container's data; only root may read it.
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| Error::Unusable(format!("cannot create {}: {e}", path.display())))?;
            f.set_len(want)
                .map_err(|e| Error::Unusable(format!("cannot size {}: {e}", path.display())))?;
            Ok(want)
        }
        Err(e) => Err(Error::Unusable(format!(
            "cannot open {}: {e}",
            path.display()
        ))),
    }
}

/// Default size of a new image file: 8 GiB, sparse.
pub const DEFAULT_IMAGE_SIZE: u64 = 8 << 30;

/// An in-memory device for unit tests.
pub struct MemDevice {
    data: parking_lot::Mutex<Vec<u8>>,
    boot: Option<[u8; BOOT_ID_LEN]>,
}

impl MemDevice {
    pub fn new(size: u64) -> Self {
        MemDevice {
            data: parking_lot::Mutex::new(vec![0; size as usize]),
            boot: None,
        }
    }
    /// Say `boot` is the boot its writes are visible in without a flush (as a real device
    /// does; see [`Device::boot_id`]): the engine may then write early journal chunks.
    pub fn with_boot_id(mut self, boot: [u8; BOOT_ID_LEN]) -> Self {
        self.boot = Some(boot);
        self
    }
    /// A copy of the current contents (what a crash would leave, as nothing is cached).
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.lock().clone()
    }
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        MemDevice {
            data: parking_lot::Mutex::new(bytes),
            boot: None,
        }
    }
    /// Make the device `size` bytes long (zeros added at the end), as `truncate -s` does.
    pub fn grow(&self, size: u64) {
        let mut d = self.data.lock();
        if size as usize > d.len() {
            d.resize(size as usize, 0);
        }
    }
}

impl Device for MemDevice {
    fn size(&self) -> u64 {
        self.data.lock().len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = self.data.lock();
        let o = offset as usize;
        if o + buf.len() > d.len() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        buf.copy_from_slice(&d[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut d = self.data.lock();
        let o = offset as usize;
        if o + buf.len() > d.len() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        d[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn boot_id(&self) -> Option<[u8; BOOT_ID_LEN]> {
        self.boot
    }
}

/// Read `n` whole blocks starting at `block` (synchronous; superblocks, journal, checkpoints).
pub(crate) fn read_blocks(dev: &dyn Device, block: u64, n: u64) -> Result<AlignedBuf> {
    let mut buf = AlignedBuf::zeroed(n as usize);
    dev.read_at(&mut buf, block * BLOCK)
        .map_err(|e| Error::io("read", block * BLOCK, e))?;
    Ok(buf)
}

/// Write `data` (padded with zeros to whole blocks) at `block` (synchronous).
pub(crate) fn write_blocks(dev: &dyn Device, block: u64, data: &[u8]) -> Result<()> {
    let mut buf = AlignedBuf::zeroed(data.len().div_ceil(BLOCK_SIZE));
    buf[..data.len()].copy_from_slice(data);
    dev.write_at(&buf, block * BLOCK)
        .map_err(|e| Error::io("write", block * BLOCK, e))
}
