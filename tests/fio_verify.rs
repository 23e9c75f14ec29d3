//! fio with CRC32C verification through a Strata mount: random writes with O_DIRECT via
//! io_uring and via libaio, then read everything back and check every block's checksum.
//! Skipped (with a message) when `fio` is not installed or lacks the engine.

#![forbid(unsafe_code)]

use std::process::Command;
use std::time::Duration;

use testkit::*;

fn has_engine(engine: &str) -> bool {
    let out = Command::new("fio").arg("--enghelp").output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .any(|w| w == engine),
        Err(_) => false,
    }
}

/// Every `"error" : N` in fio's JSON output must be 0; returns the offending snippets.
fn json_errors(json: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let mut rest = json;
    while let Some(i) = rest.find("\"error\"") {
        let tail = &rest[i + 7..];
        let val: String = tail
            .trim_start_matches([' ', ':'])
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '-')
            .collect();
        if val != "0" {
            bad.push(rest[i..(i + 40).min(rest.len())].to_string());
        }
        rest = tail;
    }
    bad
}

fn run_fio(engine: &str) {
    if on_path("fio").is_none() {
        eprintln!("SKIP: fio is not installed");
        return;
    }
    if !has_engine(engine) {
        eprintln!("SKIP: this fio has no {engine} engine");
        return;
    }
    let td = TestDir::new(&format!("fio-{engine}"));
    let (img, m) = td.mkfs_and_mount("512M");
    let mnt = m.mnt.clone();
    let file = m.root().join(format!("fio-{engine}.dat"));
    let mut cmd = Command::new("fio");
    cmd.arg("--name=strata-verify")
        .arg(format!("--filename={}", file.display()))
        .arg("--size=64M")
        .arg("--rw=randwrite")
        .arg("--bsrange=4k-128k")
        .arg("--direct=1")
        .arg(format!("--ioengine={engine}"))
        .arg("--iodepth=16")
        .arg("--verify=crc32c")
        .arg("--do_verify=1")
        .arg("--verify_fatal=1")
        .arg("--verify_dump=0")
        .arg("--randrepeat=1")
        .arg("--output-format=json")
        .current_dir(&td.path);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(900));
    let errs = json_errors(&out.stdout);
    assert!(
        out.code == 0 && errs.is_empty() && !out.stderr.contains("verify:"),
        "fio {engine} (direct=1, crc32c verify) through strata: exit {}, JSON errors {:?}\nstderr:\n{}\nstdout (head):\n{}",
        out.code,
        errs,
        out.stderr,
        &out.stdout[..out.stdout.len().min(3000)]
    );
    assert!(
        out.stdout.contains("\"jobs\""),
        "fio printed no JSON result:\n{}",
        out.stdout
    );
    // The verified file also survives a remount intact: re-run fio in verify-only mode.
    m.stop();
    let m = Mount::start(&img, &mnt);
    let mut cmd = Command::new("fio");
    cmd.arg("--name=strata-verify")
        .arg(format!("--filename={}", file.display()))
        .arg("--size=64M")
        .arg("--bsrange=4k-128k")
        .arg("--direct=1")
        .arg(format!("--ioengine={engine}"))
        .arg("--iodepth=16")
        .arg("--verify=crc32c")
        .arg("--verify_only=1")
        .arg("--verify_fatal=1")
        .arg("--randrepeat=1")
        .arg("--rw=randwrite")
        .arg("--output-format=json")
        .current_dir(&td.path);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(900));
    let errs = json_errors(&out.stdout);
    assert!(
        out.code == 0 && errs.is_empty() && !out.stderr.contains("verify:"),
        "fio {engine} verify_only after remount: exit {}, JSON errors {:?}\nstderr:\n{}",
        out.code,
        errs,
        out.stderr
    );
    m.stop();
    assert_fsck_clean(&img, &format!("after fio {engine}"));
}

#[test]
fn fio_verify_io_uring_direct() {
    require_root_and_fuse!();
    run_fio("io_uring");
}

#[test]
fn fio_verify_libaio_direct() {
    require_root_and_fuse!();
    run_fio("libaio");
}
