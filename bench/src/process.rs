//! Child processes with deadlines: run a command capturing its output, wait for or stop a
//! child (its whole process group), run a closure on a worker thread with a timeout, poll
//! until something is ready. Every wait notices Ctrl-C (see [`crate::interrupt`]) unless it
//! is teardown, which must finish.

use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::interrupt::interrupted;
use crate::Res;

/// Send `sig` to `child` alone.
pub fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: plain kill(2) on a child of ours (not yet waited for, so its pid is not reused).
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

/// Send `sig` to `child`'s process group (children started with `process_group(0)`).
pub fn signal_group(child: &Child, sig: libc::c_int) {
    // Children are spawned with process_group(0): their pgid is their pid.
    // SAFETY: plain kill(2) on a process group we created.
    unsafe {
        libc::kill(-(child.id() as libc::pid_t), sig);
    }
}

/// Wait for `child` until `deadline`, polling so that a signal to us is noticed.
/// Returns None on timeout or interruption (the child is still running then).
pub fn wait_until(
    child: &mut Child,
    deadline: Instant,
    watch_interrupt: bool,
) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= deadline || (watch_interrupt && interrupted()) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stop a child (its whole process group): `first` signal, then SIGKILL after `grace`.
pub fn stop_child(child: &mut Child, first: libc::c_int, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    signal_group(child, first);
    if let Some(st) = wait_until(child, Instant::now() + grace, false) {
        return Some(st);
    }
    signal_group(child, libc::SIGKILL);
    wait_until(child, Instant::now() + Duration::from_secs(10), false)
}

#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run a command to completion with a deadline, capturing its output. On timeout or
/// interruption the child's process group gets SIGINT, then SIGKILL, and an error is returned.
pub fn run_captured(cmd: &mut Command, timeout: Duration) -> Res<Output> {
    run_captured_opts(cmd, timeout, true)
}

/// Like `run_captured`, but a signal to us does not cut it short: for the teardown, which
/// must finish after a Ctrl-C.
pub fn run_to_end(cmd: &mut Command, timeout: Duration) -> Res<Output> {
    run_captured_opts(cmd, timeout, false)
}

fn run_captured_opts(cmd: &mut Command, timeout: Duration, watch_interrupt: bool) -> Res<Output> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    // Drain the pipes in threads so a chatty child cannot block on a full pipe.
    let out_t = drain(child.stdout.take());
    let err_t = drain(child.stderr.take());
    let status = wait_until(&mut child, Instant::now() + timeout, watch_interrupt);
    let status = match status {
        Some(st) => st,
        None => {
            stop_child(&mut child, libc::SIGINT, Duration::from_secs(5));
            let why = if interrupted() {
                "interrupted"
            } else {
                "timed out"
            };
            return Err(format!(
                "{what}: {why} after {:.0} s",
                timeout.as_secs_f64()
            ));
        }
    };
    Ok(Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut r) = r {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            s = String::from_utf8_lossy(&buf).into_owned();
        }
        s
    })
}

/// Run a command to completion, capturing its output, and time it from just before it is
/// started to its exit, to the microsecond: a worker thread blocks in wait(2) rather than
/// polling (as [`run_captured`] does, every 20 ms). After `timeout` (or Ctrl-C) its process
/// group gets SIGKILL and an error is returned.
pub fn run_timed(cmd: &mut Command, timeout: Duration) -> Res<(Output, Duration)> {
    let what = format!("{cmd:?}");
    let t = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let pgid = child.id() as libc::pid_t;
    let r = with_timeout(&what, timeout, move || {
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for the child: {e}"))?;
        Ok((out, t.elapsed()))
    });
    match r {
        Ok((out, took)) => Ok((
            Output {
                status: out.status,
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            },
            took,
        )),
        Err(e) => {
            // SAFETY: kill(2) has no memory-safety preconditions. The group is the one we
            // created: its leader is not reaped while the worker still waits on it.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
            Err(e)
        }
    }
}

/// Start `cmd` in its own process group (a Ctrl-C in the terminal reaches only us), stdin
/// from /dev/null, stdout and stderr appended to `log`.
pub fn spawn_logged(cmd: &mut Command, log: &Path) -> Res<Child> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| format!("dup log: {e}"))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))
}

/// Run `f` on a worker thread and wait at most `timeout` for it. A file system that hangs
/// leaves the worker blocked; it is abandoned (tearing the mount down unblocks it).
pub fn with_timeout<T: Send + 'static>(
    what: &str,
    timeout: Duration,
    f: impl FnOnce() -> Res<T> + Send + 'static,
) -> Res<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(what.to_string())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| format!("{what}: cannot spawn a thread: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(r) => return r,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!("{what}: worker panicked"))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if interrupted() {
                    return Err(format!("{what}: interrupted"));
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "{what}: timed out after {:.0} s",
                        timeout.as_secs_f64()
                    ));
                }
            }
        }
    }
}

/// Poll `ready` every `poll` until it is true; an error naming `what` after `timeout`.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut ready: impl FnMut() -> bool,
) -> Res<()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() >= deadline {
            return Err(format!(
                "{what}: not ready after {:.0} s",
                timeout.as_secs_f64()
            ));
        }
        std::thread::sleep(poll);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_timed_times_and_times_out() {
        let (out, took) = run_timed(
            Command::new("sh").args(["-c", "sleep 0.1; echo hi"]),
            Duration::from_secs(30),
        )
        .unwrap();
        assert!(out.status.success() && out.stdout.trim() == "hi");
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_secs(5),
            "{took:?}"
        );
        let e = run_timed(Command::new("sleep").arg("5"), Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("timed out"), "{e}");
    }
}
