//! The JSON bodies of the admin API: a layer as the API shows it ([`Layer`], its creation time
//! in RFC 3339), the requests, and the error answer. The server's routes and the [`Client`](super::Client)
//! share them, so both ends encode and parse the same types.

use std::collections::BTreeMap;
use std::path::Path;

use engine::{LayerInfo, LayerState};
use serde::{Deserialize, Serialize};

/// A layer as the API shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub id: String,
    /// Engine slot (the high bits of the layer's FUSE node ids).
    pub slot: u32,
    pub parent: Option<String>,
    /// `active`, `committed` or `view`.
    pub state: String,
    pub labels: BTreeMap<String, String>,
    /// Creation time, RFC 3339 in UTC with nanoseconds.
    pub created: String,
    /// Creation time, seconds since the epoch.
    pub created_unix: i64,
    /// Bytes of blocks this layer allocated (shared blocks count for their owner only).
    pub owned_bytes: u64,
    /// Inodes in this layer's tree (its own and inherited).
    pub inodes: u64,
    /// Inodes it added to what it inherited (what `limits.inodes` counts).
    #[serde(default)]
    pub inodes_added: u64,
    /// Its limits (unset: none).
    #[serde(default)]
    pub limits: LimitsBody,
    /// Ancestors, nearest first.
    pub chain: Vec<String>,
    pub children: Vec<String>,
    /// The layer's directory: `<mountpoint>/<id>`.
    #[serde(default)]
    pub path: String,
}

impl Layer {
    pub fn from_info(i: &LayerInfo, mountpoint: &Path) -> Layer {
        Layer {
            id: i.id.clone(),
            slot: i.slot,
            parent: i.parent.clone(),
            state: i.state.as_str().to_string(),
            labels: i.labels.clone(),
            created: rfc3339(i.created.sec, i.created.nsec),
            created_unix: i.created.sec,
            owned_bytes: i.owned_bytes,
            inodes: i.inodes,
            inodes_added: i.inodes_added,
            limits: i.limits.into(),
            chain: i.chain.clone(),
            children: i.children.clone(),
            path: mountpoint.join(&i.id).to_string_lossy().into_owned(),
        }
    }
}

/// `GET /v1/layers`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LayerList {
    pub layers: Vec<Layer>,
}

/// The state of a new clone.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CloneState {
    Active,
    View,
}

impl From<CloneState> for LayerState {
    fn from(s: CloneState) -> LayerState {
        match s {
            CloneState::Active => LayerState::Active,
            CloneState::View => LayerState::View,
        }
    }
}

/// `POST /v1/layers`: without `parent`, an empty active base layer; with it, a clone of the
/// committed `parent` (`state` active, the default, or view).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<CloneState>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Limits of the new layer (active layers).
    #[serde(default, skip_serializing_if = "LimitsBody::is_empty")]
    pub limits: LimitsBody,
}

/// A layer's limits (`PUT /v1/layers/{id}/limits` replaces them all; a field left out is
/// unlimited).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsBody {
    /// Bytes the layer may own (what it wrote and copied on write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Inodes it may add to what it inherited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inodes: Option<u64>,
    /// Device operations per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<u64>,
    /// Device bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bps: Option<u64>,
    /// Share of the device when layers compete (1–10000; 100 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

impl LimitsBody {
    pub fn is_empty(&self) -> bool {
        *self == LimitsBody::default()
    }
}

impl From<engine::Limits> for LimitsBody {
    fn from(l: engine::Limits) -> LimitsBody {
        LimitsBody {
            bytes: l.bytes,
            inodes: l.inodes,
            iops: l.iops,
            bps: l.bps,
            weight: l.weight,
        }
    }
}

impl From<LimitsBody> for engine::Limits {
    fn from(l: LimitsBody) -> engine::Limits {
        engine::Limits {
            bytes: l.bytes,
            inodes: l.inodes,
            iops: l.iops,
            bps: l.bps,
            weight: l.weight,
        }
    }
}

/// `POST /v1/import`: apply the OCI layer tar the daemon reads from `path` (absolute) as a new
/// committed layer `layer`, a clone of committed `parent` or a base layer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    pub layer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub path: String,
    /// auto (default), none, gzip, zstd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
}

/// `POST /v1/layers/{id}/export`: write the layer's diff against its parent as an OCI layer
/// tar to `path` (absolute).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    pub path: String,
}

/// `POST /v1/layers/{id}/snapshot`: the id of the new committed parent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    pub id: String,
}

/// `PUT /v1/layers/{id}/labels`: the new labels (they replace the old ones).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LabelsRequest {
    pub labels: BTreeMap<String, String>,
}

/// `POST /v1/scrub`: start a scrub of every data block (202 with its [`ScrubStatusBody`]).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScrubRequest {
    /// Read at most this many bytes per second (none: as fast as the device goes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_bytes_per_second: Option<u64>,
}

/// A layer and file that maps a bad block.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct BlockUserBody {
    pub layer: String,
    /// Path in the layer, or `(inode N, not linked)`.
    pub path: String,
    pub inode: u64,
    pub logical_block: u64,
}

/// A data block that does not match its checksum.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct BadBlockBody {
    /// Physical block number (4 KiB blocks from the start of the device).
    pub block: u64,
    /// The recorded CRC-32C (hex; none: the block has none).
    pub expected_crc: Option<String>,
    /// The CRC-32C of what the device returned (none: the read failed).
    pub read_crc: Option<String>,
    /// Every layer and file that maps it.
    pub users: Vec<BlockUserBody>,
}

/// `GET /v1/scrub`: the running or last scrub.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ScrubStatusBody {
    /// `running`, `done`, `cancelled`, `failed`.
    pub state: String,
    pub started: String,
    pub finished: Option<String>,
    /// Bytes of mapped data to check, checked so far, and skipped (freed or rewritten while
    /// the scrub ran).
    pub total_bytes: u64,
    pub checked_bytes: u64,
    pub skipped_bytes: u64,
    /// Bytes read from the device (small gaps between mapped blocks are read through).
    pub read_bytes: u64,
    /// Checked and skipped as a fraction of the total (0 to 1).
    pub progress: f64,
    pub seconds: f64,
    pub throughput_bytes_per_second: f64,
    pub rate_limit_bytes_per_second: Option<u64>,
    /// Bad blocks found (all); `bad` lists the first 1,000, with who maps them once the
    /// scrub has finished.
    pub bad_blocks: u64,
    pub bad: Vec<BadBlockBody>,
    pub error: Option<String>,
}

impl From<&engine::scrub::ScrubStatus> for ScrubStatusBody {
    fn from(s: &engine::scrub::ScrubStatus) -> ScrubStatusBody {
        let r = &s.report;
        let b = engine::BLOCK;
        let done = r.checked_blocks + r.skipped_blocks;
        ScrubStatusBody {
            state: s.state.as_str().to_string(),
            started: rfc3339(s.started.sec, s.started.nsec),
            finished: s.finished.map(|t| rfc3339(t.sec, t.nsec)),
            total_bytes: r.total_blocks * b,
            checked_bytes: r.checked_blocks * b,
            skipped_bytes: r.skipped_blocks * b,
            read_bytes: r.read_bytes,
            progress: if r.total_blocks == 0 {
                if s.state == engine::scrub::ScrubState::Running {
                    0.0
                } else {
                    1.0
                }
            } else {
                done as f64 / r.total_blocks as f64
            },
            seconds: r.seconds,
            throughput_bytes_per_second: r.throughput(),
            rate_limit_bytes_per_second: r.rate_bytes,
            bad_blocks: r.bad_count,
            bad: r.bad.iter().map(BadBlockBody::from).collect(),
            error: s.error.clone(),
        }
    }
}

impl From<&engine::scrub::BadBlock> for BadBlockBody {
    fn from(b: &engine::scrub::BadBlock) -> BadBlockBody {
        BadBlockBody {
            block: b.pblk,
            expected_crc: b.expected.map(|c| format!("{c:08x}")),
            read_crc: b.got.map(|c| format!("{c:08x}")),
            users: b
                .users
                .iter()
                .map(|u| BlockUserBody {
                    layer: u.layer.clone(),
                    path: u.path.clone(),
                    inode: u.ino,
                    logical_block: u.lblk,
                })
                .collect(),
        }
    }
}

/// `POST /v1/grow`: the file system's size before and after, in bytes (equal: the device did
/// not grow).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrowBody {
    pub old_bytes: u64,
    pub new_bytes: u64,
}

/// Every error answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
}

/// A body that must be empty or `{}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Empty {}

/// RFC 3339 in UTC with nanoseconds, e.g. `2025-03-01T12:00:00.000000000Z`.
pub fn rfc3339(sec: i64, nsec: u32) -> String {
    let days = sec.div_euclid(86_400);
    let rem = sec.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        nsec.min(999_999_999)
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32, d as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_700_000_000, 0), "2023-11-14T22:13:20.000000000Z");
        assert_eq!(rfc3339(-1, 0), "1969-12-31T23:59:59.000000000Z");
        let _ = rfc3339(i64::MAX / 2, u32::MAX);
        let _ = rfc3339(i64::MIN / 2, 0);
    }
}
