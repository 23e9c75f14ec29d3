//! strata-layer-bench: the costs the layer design promises, measured on the engine itself over
//! an O_DIRECT image file (io_uring): clone time at depth 1 and 100 over an image of many files,
//! lookup+stat time in a layer at depth 1 vs 100, and the first write to a large inherited file
//! (the copy-up that costs overlayfs seconds).
//!
//! `cargo run -p bench --release --bin strata-layer-bench -- --help`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bench::results::summarize;
use clap::builder::RangedU64ValueParser;
use clap::Parser;
use engine::{Caller, Device, Engine, FileDevice, LayerState, Options};

/// The costs the layer design promises, measured on the engine alone (no FUSE) over an
/// O_DIRECT image file: clone time at depth 1 and 100, lookup cost by depth, and the first
/// write to a large inherited file.
#[derive(Parser)]
#[command(name = "strata-layer-bench")]
struct Args {
    /// Files in the image the clones and lookups run over (100 directories)
    #[arg(long, value_name = "N", default_value_t = 100_000,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    files: usize,
    /// Size of the large file whose first inherited write is timed, MiB
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    big_mib: u64,
    /// Scratch directory for the image file (the file is deleted at the end)
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/var/tmp/strata-layer-bench"
    )]
    dir: PathBuf,
}

/// Seconds, in µs below a millisecond, else in ms.
fn fmt(secs: f64) -> String {
    if secs < 1e-3 {
        format!("{:.1} µs", secs * 1e6)
    } else {
        format!("{:.2} ms", secs * 1e3)
    }
}

fn main() {
    let a = Args::parse();
    if let Err(e) = run(&a) {
        eprintln!("strata-layer-bench: {e}");
        std::process::exit(1);
    }
}

fn run(a: &Args) -> Result<(), String> {
    std::fs::create_dir_all(&a.dir).map_err(|e| e.to_string())?;
    let img = a.dir.join("layers.img");
    let _ = std::fs::remove_file(&img);
    engine::prepare_image(&img, Some(16 << 30)).map_err(|e| e.to_string())?;
    let dev = FileDevice::open(&img).map_err(|e| e.to_string())?;
    engine::mkfs(&dev, 0, 0).map_err(|e| e.to_string())?;
    let d: Arc<dyn Device> = Arc::new(dev);
    let e = Engine::open(d, Options::default()).map_err(|e| e.to_string())?;
    let res = measure(&e, a);
    let _ = e.shutdown();
    drop(e);
    let _ = std::fs::remove_file(&img);
    let rows = res?;
    println!("\n| measurement | result |\n|---|---|");
    for (k, v) in &rows {
        println!("| {k} | {v} |");
    }
    Ok(())
}

/// 21 clones of `parent` (named `<prefix>-<i>`, each removed after): "median (min–max)".
fn time_clones(e: &Engine, parent: &str, prefix: &str) -> Result<String, String> {
    let mut times = Vec::new();
    for i in 0..21 {
        let id = format!("{prefix}-{i}");
        let t = Instant::now();
        e.layer_clone(parent, &id, LayerState::Active, BTreeMap::new())
            .map_err(|x| x.to_string())?;
        times.push(t.elapsed().as_secs_f64());
        e.layer_remove(&id).map_err(|x| x.to_string())?;
    }
    let s = summarize(&times).expect("21 clones");
    Ok(format!("{} ({}–{})", fmt(s.median), fmt(s.min), fmt(s.max)))
}

fn measure(e: &Engine, a: &Args) -> Result<Vec<(String, String)>, String> {
    let err = |x: engine::Error| x.to_string();
    let who = Caller::default();
    let none = BTreeMap::new;
    let mut rows = Vec::new();
    // An image of `files` files in 100 directories.
    let t = Instant::now();
    e.layer_create("img", none()).map_err(err)?;
    let root = e.layer_root("img").map_err(err)?;
    let mut dirs = Vec::new();
    for d in 0..100 {
        let st = e
            .mknod(
                root,
                format!("d{d}").as_bytes(),
                libc::S_IFDIR | 0o755,
                0,
                who,
                None,
            )
            .map_err(err)?;
        dirs.push(st.ino);
    }
    for f in 0..a.files {
        e.mknod(
            dirs[f % 100],
            format!("f{f}").as_bytes(),
            libc::S_IFREG | 0o644,
            0,
            who,
            None,
        )
        .map_err(err)?;
    }
    e.layer_commit("img").map_err(err)?;
    rows.push((
        format!("build image of {} files", a.files),
        fmt(t.elapsed().as_secs_f64()),
    ));

    // Clone at depth 1 (clone of the image), 21 times.
    rows.push((
        "clone at depth 1, durable (median, min–max of 21)".into(),
        time_clones(e, "img", "c1")?,
    ));

    // A chain of 100 layers, each changing one file.
    let mut prev = "img".to_string();
    for depth in 1..=100 {
        let id = format!("chain{depth}");
        e.layer_clone(&prev, &id, LayerState::Active, none())
            .map_err(err)?;
        let r = e.layer_root(&id).map_err(err)?;
        let d = e
            .lookup(r, format!("d{}", depth % 100).as_bytes())
            .map_err(err)?;
        let f = e.lookup(d.ino, format!("f{}", depth % 100).as_bytes());
        if let Ok(f) = f {
            e.write_sync(f.ino, 0, b"changed in the chain")
                .map_err(err)?;
        }
        e.mknod(
            r,
            format!("new{depth}").as_bytes(),
            libc::S_IFREG | 0o644,
            0,
            who,
            None,
        )
        .map_err(err)?;
        e.layer_commit(&id).map_err(err)?;
        prev = id;
    }
    rows.push((
        "clone at depth 100, durable (median, min–max of 21)".into(),
        time_clones(e, &prev, "c100")?,
    ));

    // Lookup + stat of 20,000 paths at depth 1 and at depth 100.
    e.layer_clone("img", "top1", LayerState::Active, none())
        .map_err(err)?;
    e.layer_clone(&prev, "top100", LayerState::Active, none())
        .map_err(err)?;
    for layer in ["top1", "top100"] {
        let r = e.layer_root(layer).map_err(err)?;
        let n = 20_000.min(a.files);
        let t = Instant::now();
        for k in 0..n {
            let f = (k * 7919) % a.files;
            let d = e
                .lookup(r, format!("d{}", f % 100).as_bytes())
                .map_err(err)?;
            let st = e.lookup(d.ino, format!("f{f}").as_bytes()).map_err(err)?;
            e.getattr(st.ino).map_err(err)?;
        }
        let per = t.elapsed() / n as u32;
        let depth = if layer == "top1" { 1 } else { 101 };
        rows.push((
            format!("lookup+lookup+stat in a layer at depth {depth} (per path, engine)"),
            fmt(per.as_secs_f64()),
        ));
    }

    // First write to a large inherited file.
    e.layer_create("bigbase", none()).map_err(err)?;
    let r = e.layer_root("bigbase").map_err(err)?;
    let f = e
        .mknod(r, b"big", libc::S_IFREG | 0o644, 0, who, None)
        .map_err(err)?;
    let chunk = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    for i in 0..a.big_mib {
        e.write_sync(f.ino, i << 20, &chunk).map_err(err)?;
    }
    e.fsync_sync().map_err(err)?;
    rows.push((
        format!("write the {} MiB file in the base layer", a.big_mib),
        fmt(t.elapsed().as_secs_f64()),
    ));
    // Baseline: a 4 KiB overwrite + fsync in the file's own layer.
    let t = Instant::now();
    e.write_sync(f.ino, (a.big_mib << 20) / 2, &chunk[..4096])
        .map_err(err)?;
    e.fsync_sync().map_err(err)?;
    rows.push((
        "4 KiB overwrite + fsync in the owning layer (baseline)".into(),
        fmt(t.elapsed().as_secs_f64()),
    ));
    e.layer_commit("bigbase").map_err(err)?;
    e.layer_clone("bigbase", "bigchild", LayerState::Active, none())
        .map_err(err)?;
    let cr = e.layer_root("bigchild").map_err(err)?;
    let t = Instant::now();
    let cf = e.lookup(cr, b"big").map_err(err)?;
    e.write_sync(cf.ino, (a.big_mib << 20) / 2 + 4096, &chunk[..4096])
        .map_err(err)?;
    e.fsync_sync().map_err(err)?;
    rows.push((
        format!(
            "first 4 KiB write + fsync to the inherited {} MiB file (lookup included)",
            a.big_mib
        ),
        fmt(t.elapsed().as_secs_f64()),
    ));
    let info = e.layer_stat("bigchild").map_err(err)?;
    rows.push((
        "space the child owns after that write".into(),
        format!("{} bytes", info.owned_bytes),
    ));
    Ok(rows)
}
