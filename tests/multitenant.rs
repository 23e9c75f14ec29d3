//! A host shared by many owners: no user but root reaches a layer's data except through a
//! bind mount of that layer (not through the image, the sockets, the mount root or the
//! metrics), and a layer's space and inode limits hold through the real mount — EDQUOT at
//! write() and create, nothing lost, other layers unaffected, limits kept across restarts.

#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::time::Duration;

use testkit::*;

const NOBODY: u32 = 65534;

fn scrape(addr: &str) -> String {
    http_get_raw(addr, "/metrics").expect("scrape the metrics")
}

/// As `nobody`: the errno of opening `path` read-only (0: it opened).
fn open_as_nobody(path: &std::path::Path) -> i32 {
    let c = cstr(path);
    as_user(NOBODY, NOBODY, || match sys::open(&c, libc::O_RDONLY, 0) {
        Ok(_) => 0,
        Err(e) => e,
    })
}

#[test]
fn other_users_reach_no_layer_data() {
    require_root_and_fuse!();
    let t = TestDir::new("private");
    let img = t.mkfs("256M");
    let mode = fs::metadata(&img).expect("image").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mkfs creates the image 0600, not {mode:o}");
    let mnt = t.mountpoint("mnt");
    let metrics = format!("127.0.0.1:{}", free_port());
    let m = Mount::start_with(&img, &mnt, &["--metrics-addr", &metrics]);
    let secret = "strata-secret-7f3a9c-do-not-leak";
    let p = m.root().join("private.txt");
    fs::write(&p, secret).expect("write");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).expect("chmod");
    File::open(&p).expect("open").sync_all().expect("fsync");
    for (what, path) in [
        ("the image", img.clone()),
        ("the mount root", mnt.clone()),
        ("the layer through the mount root", m.root()),
        ("the file through the mount root", p.clone()),
        ("the admin socket", m.admin_socket()),
        ("the snapshotter socket", m.snapshotter_socket()),
    ] {
        assert_eq!(
            open_as_nobody(&path),
            libc::EACCES,
            "nobody must not open {what} ({})",
            path.display()
        );
    }
    // Root can: the data is in the image in the clear, which is why only root may read it.
    let raw = fs::read(&img).expect("root reads the image");
    assert!(
        raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the secret should be in the image (the test would prove nothing otherwise)"
    );
    // The metrics name layers and count bytes; they never carry file data or paths.
    assert!(!scrape(&metrics).contains(secret));
    m.stop();
    // An image other users can read is refused, unless the operator says otherwise.
    fs::set_permissions(&img, fs::Permissions::from_mode(0o644)).expect("chmod 644");
    let f = Mount::try_start(&img, &mnt, &[])
        .err()
        .expect("a world-readable image is refused");
    assert!(
        f.stderr.contains("chmod 600") && f.stderr.contains("--allow-shared-image"),
        "the refusal says what to do: {}",
        f.stderr
    );
    let m = Mount::start_with(&img, &mnt, &["--allow-shared-image"]);
    assert!(m.stderr().contains("mounting anyway"), "{}", m.stderr());
    m.stop();
    fs::set_permissions(&img, fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

fn write_until_error(path: &std::path::Path, chunk: usize) -> (u64, i32) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open");
    let data = pattern(3, chunk);
    let mut total = 0u64;
    loop {
        match f.write(&data) {
            Ok(0) => panic!("write returned 0"),
            Ok(n) => total += n as u64,
            Err(e) => return (total, e.raw_os_error().unwrap_or(0)),
        }
        assert!(total < 1 << 30, "no limit after 1 GiB");
    }
}

fn owned_and_limit(m: &Mount, id: &str) -> (u64, Option<u64>) {
    let out = m.cli_ok(&["layer", "stat", id, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    (
        v["owned_bytes"].as_u64().expect("owned_bytes"),
        v["limits"]["bytes"].as_u64(),
    )
}

#[test]
fn layer_limits_hold_through_the_mount() {
    require_root_and_fuse!();
    let t = TestDir::new("quota");
    let img = t.mkfs("1G");
    let mnt = t.mountpoint("mnt");
    let metrics = format!("127.0.0.1:{}", free_port());
    let m = Mount::start_with(&img, &mnt, &["--metrics-addr", &metrics]);
    m.cli_ok(&[
        "layer",
        "create",
        "tenant",
        "--limit-bytes",
        "16M",
        "--limit-inodes",
        "50",
    ]);
    m.cli_ok(&["layer", "create", "neighbour"]);
    let stat = m.cli_ok(&["layer", "stat", "tenant"]);
    assert!(
        stat.contains("space 16M") && stat.contains("inodes 50"),
        "{stat}"
    );
    // Space: EDQUOT at write(), within one block of the limit.
    let (written, err) = write_until_error(&mnt.join("tenant/fill"), 1 << 20);
    assert_eq!(err, libc::EDQUOT, "after {written} bytes");
    let (owned, limit) = owned_and_limit(&m, "tenant");
    assert_eq!(limit, Some(16 << 20));
    assert!(
        owned <= 16 << 20 && owned + 4096 >= 16 << 20,
        "owns {owned}"
    );
    assert_eq!(
        fs::metadata(mnt.join("tenant/fill")).expect("stat").len(),
        written,
        "what write() accepted is there"
    );
    // The neighbour is not affected.
    fs::write(mnt.join("neighbour/big"), vec![1u8; 32 << 20]).expect("neighbour writes");
    // Usage and limit in the metrics and in strata stats.
    let s = scrape(&metrics);
    assert!(
        s.contains(&format!(
            r#"strata_layer_limit_bytes{{layer="tenant"}} {}"#,
            16u64 << 20
        )),
        "{s}"
    );
    assert!(!s.contains(r#"strata_layer_limit_bytes{layer="neighbour"}"#));
    assert!(
        s.contains(r#"strata_errors_total{layer="tenant",errno="EDQUOT"}"#),
        "{s}"
    );
    let stats = m.cli_ok(&["stats"]);
    assert!(stats.contains("/16M"), "{stats}");
    // Raised live: writes go on; the limits survive a restart.
    m.cli_ok(&[
        "layer",
        "limit",
        "tenant",
        "--limit-bytes",
        "24M",
        "--limit-inodes",
        "50",
    ]);
    let (more, err) = write_until_error(&mnt.join("tenant/more"), 100_000);
    assert_eq!(err, libc::EDQUOT);
    assert!(
        more >= (8 << 20) - 4096,
        "only {more} more bytes after raising to 24M"
    );
    // Inodes: the 51st new inode is refused.
    let mut made = 2; // fill, more
    let err = loop {
        match File::create(mnt.join(format!("tenant/f{made}"))) {
            Ok(_) => made += 1,
            Err(e) => break e.raw_os_error(),
        }
        assert!(made < 1000);
    };
    assert_eq!(err, Some(libc::EDQUOT));
    assert_eq!(made, 50);
    m.stop();
    let m = Mount::start(&img, &mnt);
    let (owned, limit) = owned_and_limit(&m, "tenant");
    assert_eq!(limit, Some(24 << 20));
    assert!(owned <= 24 << 20);
    assert!(File::create(mnt.join("tenant/after-restart")).is_err());
    // Lowered below what it owns: nothing is lost, new allocations are refused.
    m.cli_ok(&["layer", "limit", "tenant", "--limit-bytes", "1M"]);
    assert_eq!(
        fs::metadata(mnt.join("tenant/fill")).expect("stat").len(),
        written
    );
    let (_, err) = write_until_error(&mnt.join("tenant/fill"), 4096);
    assert_eq!(err, libc::EDQUOT);
    // No limit: unlimited again.
    m.cli_ok(&["layer", "limit", "tenant"]);
    fs::write(mnt.join("tenant/free-again"), vec![5u8; 4 << 20]).expect("unlimited");
    m.stop();
    assert_fsck_clean(&img, "after the quota test");
}

/// One `strata_…{layer="ID"}` sample of a scrape.
fn sample(scrape: &str, name: &str, layer: &str) -> Option<f64> {
    let prefix = format!("{name}{{layer=\"{layer}\"");
    scrape
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn io_limits_hold_a_layer_back_and_show_in_the_metrics() {
    require_root_and_fuse!();
    let t = TestDir::new("iolimit");
    let img = t.mkfs("512M");
    let mnt = t.mountpoint("mnt");
    let metrics = format!("127.0.0.1:{}", free_port());
    // No block cache: every read below reaches the device (and the scheduler).
    let m = Mount::start_with(
        &img,
        &mnt,
        &["--metrics-addr", &metrics, "--cache-size", "0"],
    );
    m.cli_ok(&["layer", "create", "slow", "--limit-iops", "40"]);
    let stat = m.cli_ok(&["layer", "stat", "slow"]);
    assert!(stat.contains("40 IOPS"), "{stat}");
    let path = mnt.join("slow/data");
    fs::write(&path, pattern(5, 4 << 20)).expect("write");
    File::open(&path).expect("open").sync_all().expect("fsync");
    // 80 O_DIRECT reads of 4 KiB under a 40 IOPS limit: at least about two seconds (a lower
    // bound: a busy machine only makes it longer).
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .expect("open O_DIRECT");
    let mut buf = sys::AlignedBuf::new(4096);
    let t0 = std::time::Instant::now();
    for i in 0..80u64 {
        use std::os::unix::fs::FileExt;
        f.read_at(buf.as_mut_slice(), (i * 7919 % 1024) * 4096)
            .expect("read");
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "80 reads under a 40 IOPS limit took only {took:?}"
    );
    let s = scrape(&metrics);
    let throttled = sample(&s, "strata_layer_io_throttled_seconds_total", "slow").unwrap_or(0.0);
    assert!(throttled > 1.0, "throttled {throttled} s:\n{s}");
    assert!(
        sample(&s, "strata_layer_io_queue_seconds_count", "slow").unwrap_or(0.0) >= 80.0,
        "{s}"
    );
    // Lifted live: the same reads go at the device's pace.
    m.cli_ok(&["layer", "limit", "slow"]);
    let t1 = std::time::Instant::now();
    for i in 0..80u64 {
        use std::os::unix::fs::FileExt;
        f.read_at(buf.as_mut_slice(), (i * 104_729 % 1024) * 4096)
            .expect("read");
    }
    let free = t1.elapsed();
    eprintln!("80 reads: {took:?} at 40 IOPS, {free:?} unlimited");
    drop(f);
    m.stop();
}
