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
}
