//! FUSE requests counted by the daemon (`strata stats --json`: `daemon.fuse_requests`, the
//! same numbers as the `strata_fuse_requests_total` metric), for tests that report requests
//! per file around a workload.

use std::collections::BTreeMap;

use crate::Mount;

/// Requests per opcode name.
pub type Counts = BTreeMap<String, u64>;

/// The daemon's counts so far.
pub fn fuse_requests(m: &Mount) -> Counts {
    let out = m.cli_ok(&["stats", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("stats JSON");
    v["daemon"]["fuse_requests"]
        .as_object()
        .map(|map| {
            map.iter()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// What was sent between two counts (opcodes sent at least once).
pub fn delta(before: &Counts, after: &Counts) -> Counts {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// A table of `d` per entry, headed `what`.
pub fn table(what: &str, d: &Counts, entries: u64) -> String {
    let total: u64 = d.values().sum();
    let mut s = format!(
        "{what}: {total} requests for {entries} entries = {:.2} per entry\n",
        total as f64 / entries as f64
    );
    for (k, v) in d {
        s.push_str(&format!(
            "  {k:<14} {v:>8}  {:>6.2}/entry\n",
            *v as f64 / entries as f64
        ));
    }
    s
}
