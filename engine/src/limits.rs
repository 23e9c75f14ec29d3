//! Per-layer limits: space (the bytes a layer owns: files it wrote, blocks it copied on
//! write), inodes (the inodes it added to what it inherited), and device I/O (a weight for
//! the fair queue, optional caps on operations and bytes per second).
//!
//! They are kept as reserved labels of the layer (`strata.io/limit.*`, `strata.io/io.weight`),
//! so they are journaled and checkpointed with it — they survive restarts and crashes — and
//! need no change of the on-disk format. The admin API, the CLI and the containerd
//! snapshotter set them through [`Limits`]; a write past the space limit gets EDQUOT, as does
//! a create past the inode limit, and nothing already written is lost.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::layer::{Layer, Layers};
use crate::meta::Name;

/// Label keys (reserved: the admin API refuses them as plain labels).
pub const LIMIT_BYTES: &str = "strata.io/limit.bytes";
pub const LIMIT_INODES: &str = "strata.io/limit.inodes";
pub const LIMIT_IOPS: &str = "strata.io/limit.iops";
pub const LIMIT_BPS: &str = "strata.io/limit.bps";
pub const IO_WEIGHT: &str = "strata.io/io.weight";

/// Weight of a layer that sets none (like cgroup io.weight's default).
pub const DEFAULT_WEIGHT: u32 = 100;

/// A layer's limits; `None` is unlimited (weight: the default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes the layer may own.
    pub bytes: Option<u64>,
    /// Inodes the layer may add to what it inherited.
    pub inodes: Option<u64>,
    /// Device operations per second.
    pub iops: Option<u64>,
    /// Device bytes per second.
    pub bps: Option<u64>,
    /// Share of the device when layers compete (1 to 10,000).
    pub weight: Option<u32>,
}

const KEYS: [&str; 5] = [LIMIT_BYTES, LIMIT_INODES, LIMIT_IOPS, LIMIT_BPS, IO_WEIGHT];

fn get(labels: &BTreeMap<Name, Name>, key: &str) -> Option<u64> {
    let v = labels.get(key.as_bytes())?;
    std::str::from_utf8(v).ok()?.parse().ok()
}

impl Limits {
    /// The limits a layer's labels hold (a malformed value counts as unset).
    pub fn of(labels: &BTreeMap<Name, Name>) -> Limits {
        Limits {
            bytes: get(labels, LIMIT_BYTES),
            inodes: get(labels, LIMIT_INODES),
            iops: get(labels, LIMIT_IOPS).filter(|&v| v > 0),
            bps: get(labels, LIMIT_BPS).filter(|&v| v > 0),
            weight: get(labels, IO_WEIGHT).map(|w| w.clamp(1, 10_000) as u32),
        }
    }

    /// The effective fair-queue weight.
    pub fn weight(&self) -> u32 {
        self.weight.unwrap_or(DEFAULT_WEIGHT)
    }

    pub fn check(&self) -> Result<()> {
        if let Some(w) = self.weight {
            if !(1..=10_000).contains(&w) {
                return Err(Error::Invalid("io weight must be 1 to 10000".into()));
            }
        }
        if self.iops == Some(0) || self.bps == Some(0) {
            return Err(Error::Invalid(
                "an I/O limit of 0 would stop the layer; leave it unset for none".into(),
            ));
        }
        Ok(())
    }

    /// `labels` with the limit labels replaced by these.
    pub fn apply_to(&self, labels: &BTreeMap<Name, Name>) -> BTreeMap<Name, Name> {
        let mut out: BTreeMap<Name, Name> = labels
            .iter()
            .filter(|(k, _)| !KEYS.iter().any(|key| key.as_bytes() == &k[..]))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let vals = [
            self.bytes,
            self.inodes,
            self.iops,
            self.bps,
            self.weight.map(u64::from),
        ];
        for (key, v) in KEYS.iter().zip(vals) {
            if let Some(v) = v {
                out.insert(
                    Arc::from(key.as_bytes()),
                    Arc::from(v.to_string().as_bytes()),
                );
            }
        }
        out
    }
}

/// Inodes `l` added to what it inherited (its tree's size less its parent's: the parent is
/// frozen, so its size is what the layer started from; a base layer starts with its root).
pub fn inodes_added(ls: &Layers, l: &Layer) -> u64 {
    let inherited = l
        .parent
        .and_then(|p| ls.get(p))
        .map(|p| p.tree.inodes.len() as u64)
        .unwrap_or(1);
    (l.tree.inodes.len() as u64).saturating_sub(inherited)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_round_trip_through_labels_and_keep_other_labels() {
        let mut labels: BTreeMap<Name, Name> = BTreeMap::new();
        labels.insert(Arc::from(&b"team"[..]), Arc::from(&b"a"[..]));
        labels.insert(Arc::from(LIMIT_IOPS.as_bytes()), Arc::from(&b"5"[..]));
        let l = Limits {
            bytes: Some(10 << 20),
            inodes: Some(100),
            weight: Some(500),
            ..Default::default()
        };
        let out = l.apply_to(&labels);
        assert_eq!(Limits::of(&out), l, "iops replaced (unset), the rest set");
        assert_eq!(&out[&b"team"[..]][..], b"a");
        assert_eq!(Limits::of(&BTreeMap::new()).weight(), DEFAULT_WEIGHT);
        assert!(Limits {
            iops: Some(0),
            ..Default::default()
        }
        .check()
        .is_err());
    }
}
