//! Statistics end to end: a real mount with its Prometheus endpoint on a free loopback port,
//! two layers written with known byte counts, a real Prometheus (the Debian package
//! `prometheus`) scraping it every second, and its HTTP API asked for each layer's counters.
//! Also: `promtool check metrics` on a scrape, `promtool check rules deploy/alerts.yml`, every
//! metric the Grafana dashboard queries exists, a removed layer's series disappear, and
//! `strata stats --json` shows the same numbers.
//!
//! Without `prometheus`/`promtool` on PATH the Prometheus parts print `SKIP:` and the rest runs.

#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use control::admin::serde_json::{self, Value};
use testkit::*;

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server, killed when dropped (also when the test fails).
struct Prom {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Drop for Prom {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "---- prometheus log (last 30 lines) ----\n{}\n----",
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
    }
}

fn start_prometheus(td: &TestDir, target: &str) -> Prom {
    let cfg = td.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: strata\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .expect("write prometheus.yml");
    let data = td.join("tsdb");
    std::fs::create_dir_all(&data).expect("tsdb dir");
    let addr = format!("127.0.0.1:{}", free_port());
    let log = td.join("prometheus.log");
    let logf = std::fs::File::create(&log).expect("prometheus log");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(Stdio::from(logf.try_clone().expect("dup log")))
        .stderr(Stdio::from(logf))
        .spawn()
        .expect("spawn prometheus");
    let p = Prom { child, addr, log };
    let start = Instant::now();
    loop {
        if let Ok((200, _)) = http_get(&p.addr, "/-/ready") {
            return p;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "prometheus did not become ready on {} within 60 s",
            p.addr
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Instant query: (labels, value) of every series in the result.
fn prom_query(p: &Prom, q: &str) -> Vec<(serde_json::Map<String, Value>, f64)> {
    let (status, body) = http_get(&p.addr, &format!("/api/v1/query?query={}", url_encode(q)))
        .unwrap_or_else(|e| panic!("query {q}: {e}"));
    assert_eq!(status, 200, "query {q}: {body}");
    let v: Value = serde_json::from_str(&body).expect("prometheus JSON");
    v["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            let labels = r["metric"].as_object().cloned().unwrap_or_default();
            let val = r["value"][1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(f64::NAN);
            (labels, val)
        })
        .collect()
}

/// The value of the sample `name{labels}` exactly as written in a scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == series).then(|| v.parse().ok())?
    })
}

/// Family names (from TYPE lines) and sample names in a scrape.
fn names(scrape: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for l in scrape.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            if let Some(n) = rest.split_whitespace().next() {
                out.insert(n.to_string());
                if rest.ends_with(" histogram") {
                    for s in ["_bucket", "_sum", "_count"] {
                        out.insert(format!("{n}{s}"));
                    }
                }
            }
        } else if !l.starts_with('#') && !l.is_empty() {
            let end = l.find(['{', ' ']).unwrap_or(l.len());
            out.insert(l[..end].to_string());
        }
    }
    out
}

fn metric_names_in(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = expr[i..].find("strata_") {
        let s = i + at;
        let before_ok = s == 0 || !(b[s - 1].is_ascii_alphanumeric() || b[s - 1] == b'_');
        let mut e = s;
        while e < b.len() && (b[e].is_ascii_alphanumeric() || b[e] == b'_' || b[e] == b':') {
            e += 1;
        }
        if before_ok {
            out.push(expr[s..e].to_string());
        }
        i = e;
    }
    out
}

fn collect_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "query" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => collect_queries(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_queries(x, out)),
        _ => {}
    }
}

fn write_file(path: &Path, len: usize, seed: u64) {
    std::fs::write(path, pattern(seed, len)).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
}

#[test]
fn per_layer_counters_reach_prometheus() {
    require_root_and_fuse!();
    let td = TestDir::new("prometheus");
    let img = td.mkfs("1G");
    let mnt = td.mountpoint("mnt");
    let metrics = format!("127.0.0.1:{}", free_port());
    let m = Mount::start_with(&img, &mnt, &["--metrics-addr", &metrics]);

    m.cli_ok(&[
        "layer",
        "create",
        "alpha",
        "--label",
        "containerd.io/snapshot.key=k8s.io/12/ctr-alpha",
    ]);
    m.cli_ok(&["layer", "create", "beta"]);

    // Known workloads: sizes that FUSE splits differently (large, unaligned, tiny).
    let alpha_sizes = [3 << 20, 12_345, 1];
    let beta_sizes = [4096 * 5, 777, 2 << 20, 65_537];
    let a: usize = alpha_sizes.iter().sum();
    let b: usize = beta_sizes.iter().sum();
    for (i, n) in alpha_sizes.iter().enumerate() {
        write_file(&mnt.join(format!("alpha/f{i}")), *n, i as u64);
    }
    for (i, n) in beta_sizes.iter().enumerate() {
        write_file(&mnt.join(format!("beta/g{i}")), *n, 100 + i as u64);
    }
    // Reads in alpha only, and a metadata error in beta (rmdir of a non-empty directory).
    // Read back with O_DIRECT: a buffered read of a file the layer owns is served by the
    // kernel page cache and never reaches the daemon, whose reads the metric counts.
    {
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(mnt.join("alpha/f0"))
            .expect("open alpha/f0");
        let mut buf = testkit::sys::AlignedBuf::new(alpha_sizes[0]);
        let mut got = 0;
        while got < alpha_sizes[0] {
            let n = f
                .read_at(&mut buf.as_mut_slice()[got..], got as u64)
                .expect("read back");
            assert!(n > 0, "short file");
            got += n;
        }
    }
    std::fs::create_dir(mnt.join("beta/d")).expect("mkdir");
    std::fs::write(mnt.join("beta/d/x"), b"").expect("create");
    assert!(std::fs::remove_dir(mnt.join("beta/d")).is_err());

    // Copy-on-write and shared space: a clone of a committed layer rewrites one block.
    m.cli_ok(&["layer", "create", "base"]);
    write_file(&mnt.join("base/big"), 1 << 20, 7);
    m.cli_ok(&["layer", "commit", "base"]);
    m.cli_ok(&["layer", "clone", "base", "kid"]);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("kid/big"))
            .expect("open kid/big");
        f.write_all_at(&[1u8; 4096], 8192).expect("overwrite");
    }

    // The endpoint itself.
    let (status, scrape) = http_get(&metrics, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    let alpha = r#"layer="alpha",container="ctr-alpha""#;
    assert_eq!(
        sample(&scrape, &format!("strata_write_bytes_total{{{alpha}}}")),
        Some(a as f64),
        "alpha's bytes written in:\n{scrape}"
    );
    assert_eq!(
        sample(&scrape, r#"strata_write_bytes_total{layer="beta"}"#),
        Some(b as f64)
    );
    assert_eq!(
        sample(&scrape, &format!("strata_read_bytes_total{{{alpha}}}")),
        Some(alpha_sizes[0] as f64)
    );
    assert_eq!(
        sample(&scrape, r#"strata_read_bytes_total{layer="beta"}"#),
        Some(0.0)
    );
    // FUSE requests per opcode, and the transport they travel on.
    for op in ["INIT", "LOOKUP", "CREATE", "WRITE", "RMDIR"] {
        assert!(
            sample(
                &scrape,
                &format!("strata_fuse_requests_total{{opcode=\"{op}\"}}")
            )
            .is_some_and(|n| n >= 1.0),
            "strata_fuse_requests_total for {op} in:\n{scrape}"
        );
    }
    let transports: Vec<&str> = scrape
        .lines()
        .filter(|l| l.starts_with("strata_fuse_transport_info{") && l.ends_with(" 1"))
        .collect();
    assert_eq!(transports.len(), 1, "one transport in:\n{scrape}");
    if let Some(t) = testkit::fuse_transport().filter(|t| t != "auto") {
        assert!(
            transports[0].contains(&format!("transport=\"{t}\"")),
            "{transports:?}"
        );
    }
    assert_eq!(
        sample(
            &scrape,
            r#"strata_errors_total{layer="beta",errno="ENOTEMPTY"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &scrape,
            r#"strata_metadata_ops_total{layer="beta",op="mkdir"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &scrape,
            r#"strata_metadata_ops_total{layer="beta",op="create"}"#
        ),
        Some(beta_sizes.len() as f64 + 1.0)
    );
    let count = sample(
        &scrape,
        &format!("strata_op_duration_seconds_count{{{alpha},op=\"write\"}}"),
    )
    .expect("write latency histogram");
    assert_eq!(
        sample(&scrape, &format!("strata_write_ops_total{{{alpha}}}")),
        Some(count)
    );
    assert_eq!(
        sample(
            &scrape,
            &format!("strata_op_duration_seconds_bucket{{{alpha},op=\"write\",le=\"+Inf\"}}")
        ),
        Some(count)
    );
    let owned = sample(&scrape, &format!("strata_layer_owned_bytes{{{alpha}}}")).unwrap();
    assert!(owned >= a as f64, "alpha owns {owned} bytes, wrote {a}");
    assert!(scrape.contains("# TYPE strata_op_duration_seconds histogram"));
    assert_eq!(
        sample(&scrape, r#"strata_cow_blocks_total{layer="kid"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&scrape, r#"strata_layer_owned_bytes{layer="kid"}"#),
        Some(4096.0)
    );
    assert_eq!(
        sample(&scrape, r#"strata_layer_shared_bytes{layer="kid"}"#),
        Some(((1 << 20) - 4096) as f64)
    );
    assert_eq!(
        sample(&scrape, r#"strata_layers{state="committed"}"#),
        Some(1.0)
    );
    for l in scrape.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !l.contains("ino=") && !l.contains("path="),
            "per-inode or per-path label: {l}"
        );
    }

    // `strata stats --json` has the same numbers (plus rates).
    let js: Value = serde_json::from_str(&m.cli_ok(&["stats", "--json"])).expect("json");
    let layers = js["layers"].as_array().expect("layers");
    let find = |id: &str| layers.iter().find(|l| l["id"] == id).cloned().expect(id);
    assert_eq!(find("alpha")["write_bytes"].as_u64(), Some(a as u64));
    assert_eq!(find("alpha")["container"].as_str(), Some("ctr-alpha"));
    assert_eq!(find("beta")["write_bytes"].as_u64(), Some(b as u64));
    assert!(find("beta")["rates"]["write_bytes_per_second"].is_number());
    let table = m.cli_ok(&["stats"]);
    assert!(
        table.contains("alpha") && table.contains("ctr-alpha"),
        "{table}"
    );

    // promtool on the scrape and on the alert rules.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if on_path("promtool").is_some() {
        let mut c = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool");
        c.stdin
            .take()
            .unwrap()
            .write_all(scrape.as_bytes())
            .unwrap();
        let out = c.wait_with_output().expect("promtool");
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("promtool")
            .args(["check", "rules"])
            .arg(root.join("deploy/alerts.yml"))
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool check rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("SKIP: promtool is not installed (apt-get install prometheus); not checking the scrape and the alert rules");
    }

    // Every metric the dashboard and the alerts use exists.
    let have = names(&scrape);
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana-dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut queries = Vec::new();
    collect_queries(&dash, &mut queries);
    assert!(
        queries.len() > 10,
        "dashboard has {} queries",
        queries.len()
    );
    let alerts = std::fs::read_to_string(root.join("deploy/alerts.yml")).expect("alerts");
    queries.push(alerts);
    let mut used = BTreeSet::new();
    for q in &queries {
        used.extend(metric_names_in(q));
    }
    let missing: Vec<&String> = used.iter().filter(|n| !have.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "dashboard/alerts use metrics the daemon does not export: {missing:?}"
    );

    // A real Prometheus scraping the daemon every second.
    if on_path("prometheus").is_some() {
        let p = start_prometheus(&td, &metrics);
        let want = [("alpha", a as f64), ("beta", b as f64)];
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got: Vec<Option<f64>> = want
                .iter()
                .map(|(l, _)| {
                    let r = prom_query(&p, &format!("strata_write_bytes_total{{layer=\"{l}\"}}"));
                    r.first().map(|x| x.1)
                })
                .collect();
            if got.iter().zip(&want).all(|(g, (_, w))| *g == Some(*w)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never showed the bytes written: got {got:?}, want {want:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let r = prom_query(&p, r#"strata_write_bytes_total{layer="alpha"}"#);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0["container"], "ctr-alpha");
        assert_eq!(r[0].0["job"], "strata");
        let r = prom_query(&p, r#"strata_read_bytes_total{layer="alpha"}"#);
        assert_eq!(r[0].1, alpha_sizes[0] as f64);
        let r = prom_query(
            &p,
            r#"histogram_quantile(0.5, sum by (le) (strata_op_duration_seconds_bucket{layer="beta",op="write"}))"#,
        );
        assert!(r.len() == 1 && r[0].1 > 0.0, "median write latency: {r:?}");
        drop(p);
    } else {
        eprintln!("SKIP: prometheus is not installed (apt-get install prometheus); not checking through a real Prometheus");
    }

    // A removed layer's series disappear.
    m.cli_ok(&["layer", "rm", "beta"]);
    let (_, scrape) = http_get(&metrics, "/metrics").expect("scrape");
    assert!(
        !scrape.contains(r#"layer="beta""#),
        "series of removed layer beta remain"
    );
    assert!(scrape.contains(r#"layer="alpha""#));
    m.stop();
}
