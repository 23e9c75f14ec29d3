//! Label keys that mean something to Strata. They live here, apart from the code that sets or
//! reads them (the admin API, the snapshotter, OCI import, statistics), so that none of those
//! modules has to import another one for a name.
//!
//! Every label Strata sets is under [`RESERVED_LABEL_PREFIX`]: clients (the admin API,
//! containerd) may neither set nor see them.

/// Labels under `strata.io/` are Strata's own (the containerd snapshotter's names, the import
/// marker): clients may not set them, and replacing a layer's labels keeps them.
pub const RESERVED_LABEL_PREFIX: &str = "strata.io/";

/// The containerd key (active, view) or name (committed) of a snapshot layer.
pub const NAME_LABEL: &str = "strata.io/snapshotter.name";
/// When the snapshot's info last changed (Unix nanoseconds).
pub const UPDATED_LABEL: &str = "strata.io/snapshotter.updated";
/// `view` on an empty view (a layer with no parent, so no engine view state).
pub const KIND_LABEL: &str = "strata.io/snapshotter.kind";

/// The label a layer carries while an import fills it; removed in the journal commit that
/// commits the layer. A layer still carrying it when the daemon starts was being imported when
/// the previous daemon died: `oci::remove_interrupted_imports` removes it.
pub const IMPORTING_LABEL: &str = "strata.io/importing";

/// The label a snapshot layer carries while the diff service applies a layer blob onto it.
/// A layer still carrying it when the daemon starts was being applied when the previous
/// daemon died: `differ::reset_interrupted_applies` empties it again.
pub const APPLYING_LABEL: &str = "strata.io/applying";

/// The label containerd's snapshotter puts on a snapshot: its key. For an active snapshot the
/// last `/`-separated segment is the container id. containerd's, not Strata's.
pub const CONTAINERD_KEY_LABEL: &str = "containerd.io/snapshot.key";

/// Snapshot labels a containerd client sets to limit a snapshot's layer (space, inodes, I/O):
/// `containerd.io/snapshot/strata.limit.bytes` (a size: `10G`, `512M` or bytes),
/// `….limit.inodes`, `….limit.iops`, `….limit.bps` (a size per second), `….io.weight`
/// (1–10000). containerd passes labels under `containerd.io/snapshot/` on to snapshotters;
/// they stay visible to containerd, and the layer's limits follow them on every update.
pub const CONTAINERD_LIMIT_PREFIX: &str = "containerd.io/snapshot/strata.";

/// The limits the containerd limit labels among `labels` ask for (none: all unset).
pub fn containerd_limits<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<engine::Limits, String> {
    let mut l = engine::Limits::default();
    for (k, v) in labels {
        let Some(what) = k.strip_prefix(CONTAINERD_LIMIT_PREFIX) else {
            continue;
        };
        let bad = |e: String| format!("label {k:?}: {e}");
        match what {
            "limit.bytes" => l.bytes = Some(parse_size(v).map_err(bad)?),
            "limit.bps" => l.bps = Some(parse_size(v).map_err(bad)?),
            "limit.inodes" => l.inodes = Some(v.parse().map_err(|e| bad(format!("{e}")))?),
            "limit.iops" => l.iops = Some(v.parse().map_err(|e| bad(format!("{e}")))?),
            "io.weight" => l.weight = Some(v.parse().map_err(|e| bad(format!("{e}")))?),
            _ => {
                return Err(format!(
                    "label {k:?}: unknown; Strata knows {CONTAINERD_LIMIT_PREFIX}limit.bytes, \
                     limit.inodes, limit.iops, limit.bps and io.weight"
                ))
            }
        }
    }
    l.check().map_err(|e| e.to_string())?;
    Ok(l)
}

/// `10G`, `512M`, `4K` or a number of bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (n, mul) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mul: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s:?} is not a size (use e.g. 512M, 10G)")),
            };
            (&t[..i], mul)
        }
        _ => (t, 1),
    };
    n.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("{s:?} is not a size (use e.g. 512M, 10G)"))
}

/// Whether `key` is one of Strata's own labels (under [`RESERVED_LABEL_PREFIX`]).
pub fn is_reserved(key: &str) -> bool {
    key.starts_with(RESERVED_LABEL_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strata_labels_are_reserved_and_containerds_is_not() {
        for k in [
            NAME_LABEL,
            UPDATED_LABEL,
            KIND_LABEL,
            IMPORTING_LABEL,
            APPLYING_LABEL,
        ] {
            assert!(is_reserved(k), "{k}");
        }
        assert!(!is_reserved(CONTAINERD_KEY_LABEL));
    }

    #[test]
    fn containerd_limit_labels() {
        let labels: std::collections::BTreeMap<String, String> = [
            ("containerd.io/snapshot/strata.limit.bytes", "10G"),
            ("containerd.io/snapshot/strata.limit.inodes", "1000"),
            ("containerd.io/snapshot/strata.io.weight", "500"),
            ("other", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let l = containerd_limits(&labels).unwrap();
        assert_eq!(l.bytes, Some(10 << 30));
        assert_eq!(l.inodes, Some(1000));
        assert_eq!(l.weight, Some(500));
        let bad = |k: &str, v: &str| {
            let m = [(k.to_string(), v.to_string())];
            containerd_limits(m.iter().map(|(k, v)| (k, v))).is_err()
        };
        assert!(bad("containerd.io/snapshot/strata.limit.bytes", "lots"));
        assert!(bad("containerd.io/snapshot/strata.io.weight", "0"));
        assert!(bad("containerd.io/snapshot/strata.nonsense", "1"));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert!(parse_size("99999999999T").is_err());
    }
}
