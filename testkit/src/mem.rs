//! Engines on an in-memory device, the set-up of most engine and control tests, and the reads
//! and path lookups those tests repeat.

use std::sync::Arc;

use engine::mkfs;
use engine::{Device, Engine, MemDevice, Node, Options};

/// A freshly formatted in-memory device of `size` bytes.
pub fn mkfs_mem(size: u64) -> Arc<MemDevice> {
    let dev = Arc::new(MemDevice::new(size));
    mkfs(dev.as_ref(), 0, 0).expect("mkfs");
    dev
}

/// Open (and so recover) the engine on `dev`; panics with the error if that fails.
pub fn open_mem(dev: &Arc<MemDevice>, opts: Options) -> Arc<Engine> {
    let d: Arc<dyn Device> = dev.clone();
    Engine::open(d, opts)
        .unwrap_or_else(|e| panic!("open (recover) the engine on an in-memory device: {e}"))
}

/// A formatted in-memory device of `size` bytes and the engine open on it.
pub fn mem_engine(size: u64, opts: Options) -> (Arc<MemDevice>, Arc<Engine>) {
    let dev = mkfs_mem(size);
    let e = open_mem(&dev, opts);
    (dev, e)
}

/// Default options with a block cache of `bytes`.
pub fn with_cache(bytes: u64) -> Options {
    Options {
        cache_bytes: bytes,
        ..Default::default()
    }
}

/// The whole content of regular file `node`, read in chunks of at most 1 MiB.
pub fn read_all(e: &Engine, node: Node) -> Vec<u8> {
    let size = e.getattr(node).expect("getattr").attr.size;
    let mut out = Vec::with_capacity(size as usize);
    while (out.len() as u64) < size {
        let want = (size - out.len() as u64).min(1 << 20) as u32;
        let d = e.read_sync(node, out.len() as u64, want).expect("read");
        assert!(
            !d.is_empty(),
            "read of node {node} stopped at {} of {size} bytes",
            out.len()
        );
        out.extend_from_slice(&d);
    }
    out
}

/// The node at slash-separated `path` inside `layer` (the layer root for ""); the lookup
/// references are given back.
pub fn resolve(e: &Engine, layer: &str, path: &str) -> engine::Result<Node> {
    let mut n = e.layer_root(layer)?;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let st = e.lookup(n, part.as_bytes())?;
        e.forget(st.ino, 1);
        n = st.ino;
    }
    Ok(n)
}
