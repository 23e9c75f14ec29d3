//! `strata import` and `strata export`: OCI layer tars in and out of the running daemon
//! (through its admin API; the daemon opens the files) or of an image that is not mounted
//! (`--image`).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use control::oci::{self, Compression};
use engine::{Engine, FileDevice, Options};

#[derive(clap::Args)]
pub struct ImportArgs {
    /// Id of the new layer (created, filled from the tar, then committed).
    #[arg(long)]
    layer: String,
    /// Committed layer to clone; without it the new layer is a base layer.
    #[arg(long)]
    parent: Option<String>,
    /// The layer tar (plain, .gz or .zst: recognised by content); `-` reads standard input.
    file: PathBuf,
    /// Compression: auto, none, gzip, zstd.
    #[arg(long, default_value = "auto")]
    compression: String,
    /// Work on this image file or device directly; it must not be mounted.
    #[arg(long)]
    image: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The layer whose diff against its parent is written.
    id: String,
    /// Output file (default: standard output).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Work on this image file or device directly; it must not be mounted.
    #[arg(long)]
    image: Option<PathBuf>,
}

fn open_image(path: &Path) -> Result<Arc<Engine>, String> {
    let dev = FileDevice::open(path).map_err(|e| e.to_string())?;
    let eng = Engine::open(Arc::new(dev), Options::default())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // As the daemon does at start: an import cut short by a crash leaves no layer behind.
    oci::remove_interrupted_imports(&eng);
    Ok(eng)
}

/// The daemon opens files itself: give it an absolute path.
fn absolute(p: &Path) -> Result<String, String> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| e.to_string())?.join(p)
    };
    abs.to_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{}: the path is not UTF-8", p.display()))
}

fn print_report(r: &oci::ImportReport) {
    println!(
        "imported layer {:?}: {} entries ({} files, {} dirs, {} symlinks, {} hard links, \
         {} devices/fifos, {} whiteouts, {} opaque dirs), {} bytes written, {} bytes left as holes",
        r.layer,
        r.entries,
        r.files,
        r.dirs,
        r.symlinks,
        r.hardlinks,
        r.specials,
        r.whiteouts,
        r.opaque_dirs,
        r.bytes_written,
        r.bytes_sparse
    );
}

pub fn import(a: ImportArgs, admin_socket: &Path) -> Result<(), String> {
    let compression: Compression = a.compression.parse()?;
    let Some(image) = a.image else {
        // Through the running daemon.
        if a.file.as_os_str() == "-" {
            return Err(
                "reading the tar from standard input needs --image (the daemon opens files itself)"
                    .into(),
            );
        }
        let req = control::admin::ImportRequest {
            layer: a.layer.clone(),
            parent: a.parent.clone(),
            path: absolute(&a.file)?,
            compression: Some(a.compression.clone()),
        };
        let r = control::admin::Client::new(admin_socket)
            .import(&req)
            .map_err(|e| format!("import of {} failed: {e}", a.file.display()))?;
        print_report(&r);
        return Ok(());
    };
    let input: Box<dyn Read> = if a.file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(File::open(&a.file).map_err(|e| format!("{}: {e}", a.file.display()))?)
    };
    let eng = open_image(&image)?;
    let r = oci::import(&eng, &a.layer, a.parent.as_deref(), input, compression);
    let shut = eng.shutdown();
    let r = r.map_err(|e| format!("import of {} failed: {e}", a.file.display()))?;
    shut.map_err(|e| e.to_string())?;
    print_report(&r);
    Ok(())
}

pub fn export(a: ExportArgs, admin_socket: &Path) -> Result<(), String> {
    let Some(image) = a.image else {
        // Through the running daemon, which writes the file.
        let out = a.output.ok_or(
            "with a running daemon, give the output file with -o FILE (the daemon writes it)",
        )?;
        control::admin::Client::new(admin_socket)
            .export(&a.id, &absolute(&out)?)
            .map_err(|e| format!("export of {:?} failed: {e}", a.id))?;
        return Ok(());
    };
    let eng = open_image(&image)?;
    let r = match &a.output {
        Some(p) => match File::create(p) {
            Ok(f) => oci::export(&eng, &a.id, BufWriter::with_capacity(1 << 20, f))
                .map_err(|e| format!("export of {:?} failed: {e}", a.id)),
            Err(e) => Err(format!("{}: {e}", p.display())),
        },
        None => {
            let out = std::io::stdout().lock();
            oci::export(&eng, &a.id, BufWriter::with_capacity(1 << 20, out))
                .map_err(|e| format!("export of {:?} failed: {e}", a.id))
        }
    };
    let shut = eng.shutdown();
    r?;
    shut.map_err(|e| e.to_string())?;
    let _ = std::io::stderr().flush();
    Ok(())
}
