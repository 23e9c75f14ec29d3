//! `strata scrub` (check every data block against its checksum: offline on an image, or
//! online through the running daemon's admin API) and `strata grow` (take in the space of a
//! device that grew, through the daemon).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use control::admin::{serde_json, Client, ScrubRequest, ScrubStatusBody};
use engine::scrub::{describe_users, ScrubOptions};

use crate::layer_cli::human_bytes;

#[derive(clap::Args, Debug)]
pub struct ScrubArgs {
    /// An unmounted image file or device to scrub offline. Without it, the running daemon
    /// (see --admin-socket) scrubs its file system in the background.
    image: Option<PathBuf>,
    /// Read at most this many bytes per second (e.g. 200M; default: as fast as the device
    /// goes). Online, the daemon's other I/O still gets its fair share of the device.
    #[arg(long)]
    rate: Option<String>,
    /// Online: start the scrub and return (follow it with --status).
    #[arg(long, conflicts_with_all = ["status", "cancel"])]
    no_wait: bool,
    /// Online: show the running or last scrub.
    #[arg(long, conflicts_with = "cancel")]
    status: bool,
    /// Online: stop the running scrub.
    #[arg(long)]
    cancel: bool,
    /// Print the result as JSON (the admin API's `GET /v1/scrub` body).
    #[arg(long)]
    json: bool,
}

/// Exit 0: every block matches; 1: bad blocks found (listed); 2: the scrub could not run.
pub fn scrub(a: ScrubArgs, socket: &Path) -> ExitCode {
    match scrub_inner(a, socket) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("strata: scrub: {e}");
            ExitCode::from(2)
        }
    }
}

fn scrub_inner(a: ScrubArgs, socket: &Path) -> Result<bool, String> {
    let rate = a.rate.as_deref().map(crate::parse_size).transpose()?;
    if rate == Some(0) {
        return Err("--rate must be more than 0".into());
    }
    if let Some(image) = &a.image {
        if a.no_wait || a.status || a.cancel {
            return Err("--no-wait, --status and --cancel are for the running daemon".into());
        }
        return offline(image, rate, a.json);
    }
    let c = Client::new(socket);
    let st = if a.status {
        c.scrub_status()?
    } else if a.cancel {
        c.scrub_cancel()?
    } else {
        let st = c.scrub_start(&ScrubRequest {
            rate_bytes_per_second: rate,
        })?;
        if a.no_wait {
            println!(
                "scrub started{}; `strata scrub --status` shows its progress",
                rate.map(|r| format!(" at up to {}/s", human_bytes(r)))
                    .unwrap_or_default()
            );
            return Ok(true);
        }
        follow(&c, st, a.json)?
    };
    show(&st, a.json)?;
    Ok(st.bad_blocks == 0)
}

/// Print progress once a second until the scrub ends.
fn follow(c: &Client, mut st: ScrubStatusBody, json: bool) -> Result<ScrubStatusBody, String> {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stderr().is_terminal() && !json;
    while st.state == "running" {
        std::thread::sleep(Duration::from_secs(1));
        st = c.scrub_status()?;
        if tty {
            eprint!(
                "\r{:5.1}%  {} of {} checked, {}/s, {} bad   ",
                st.progress * 100.0,
                human_bytes(st.checked_bytes),
                human_bytes(st.total_bytes),
                human_bytes(st.throughput_bytes_per_second as u64),
                st.bad_blocks
            );
            let _ = std::io::stderr().flush();
        }
    }
    if tty {
        eprintln!();
    }
    Ok(st)
}

fn show(st: &ScrubStatusBody, json: bool) -> Result<(), String> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(st).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    println!(
        "scrub {}: {} of {} checked ({:.0}%), {} skipped (changed while it ran), {:.1} s, {}/s{}",
        st.state,
        human_bytes(st.checked_bytes),
        human_bytes(st.total_bytes),
        st.progress * 100.0,
        human_bytes(st.skipped_bytes),
        st.seconds,
        human_bytes(st.throughput_bytes_per_second as u64),
        st.rate_limit_bytes_per_second
            .map(|r| format!(" (limit {}/s)", human_bytes(r)))
            .unwrap_or_default()
    );
    for b in &st.bad {
        let users: Vec<String> = b
            .users
            .iter()
            .map(|u| {
                format!(
                    "{}:{} (inode {}, block {} of the file)",
                    u.layer, u.path, u.inode, u.logical_block
                )
            })
            .collect();
        println!(
            "bad block {}: checksum {}, read {}; used by {}",
            b.block,
            b.expected_crc.as_deref().unwrap_or("none"),
            b.read_crc.as_deref().unwrap_or("(read failed)"),
            if users.is_empty() {
                "no file".into()
            } else {
                users.join(", ")
            }
        );
    }
    if st.bad_blocks as usize > st.bad.len() {
        println!("... and {} more", st.bad_blocks as usize - st.bad.len());
    }
    if st.bad_blocks == 0 && st.state == "done" {
        println!("clean");
    }
    Ok(())
}

fn offline(image: &Path, rate: Option<u64>, json: bool) -> Result<bool, String> {
    let dev = engine::FileDevice::open(image).map_err(|e| e.to_string())?;
    let r = engine::scrub::scrub_offline(Arc::new(dev), ScrubOptions { rate_bytes: rate })
        .map_err(|e| e.to_string())?;
    if json {
        let now = engine::Time::now();
        let st = engine::scrub::ScrubStatus {
            state: engine::scrub::ScrubState::Done,
            started: now,
            finished: Some(now),
            report: r.clone(),
            error: None,
        };
        show(&ScrubStatusBody::from(&st), true)?;
        return Ok(r.is_clean());
    }
    println!(
        "{}: {} data blocks ({}) checked in {:.1} s, {}/s; {} bad",
        image.display(),
        r.checked_blocks,
        human_bytes(r.checked_blocks * engine::BLOCK),
        r.seconds,
        human_bytes(r.throughput() as u64),
        r.bad_count
    );
    for b in &r.bad {
        println!(
            "bad block {}: checksum {}, read {}; used by {}",
            b.pblk,
            b.expected
                .map(|c| format!("{c:08x}"))
                .unwrap_or_else(|| "none".into()),
            b.got
                .map(|c| format!("{c:08x}"))
                .unwrap_or_else(|| "(read failed)".into()),
            describe_users(&b.users)
        );
    }
    if r.bad_count as usize > r.bad.len() {
        println!("... and {} more", r.bad_count as usize - r.bad.len());
    }
    if r.is_clean() {
        println!("clean");
    }
    Ok(r.is_clean())
}

/// `strata grow`: the daemon reads its device's size again and takes in what was added.
pub fn grow(socket: &Path) -> Result<(), String> {
    let r = Client::new(socket).grow()?;
    if r.new_bytes > r.old_bytes {
        println!(
            "grown from {} to {}",
            human_bytes(r.old_bytes),
            human_bytes(r.new_bytes)
        );
    } else {
        println!(
            "the device is no larger than the file system ({}); nothing to do \
             (grow the image file or volume first: `truncate -s`, `lvextend`)",
            human_bytes(r.old_bytes)
        );
    }
    Ok(())
}
