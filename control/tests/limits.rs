//! containerd's snapshot labels `containerd.io/snapshot/strata.limit.*` and `….io.weight`
//! become the limits of the snapshot's layer on Prepare and follow every Update; bad values
//! are InvalidArgument and change nothing.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use control::snapshotter::api;
use control::snapshotter::Snapshotter;
use testkit::{mem_engine, with_cache};
use tonic::Code;

fn labels(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn containerd_labels_set_and_change_a_snapshots_limits() {
    let (_, e) = mem_engine(64 << 20, with_cache(1 << 20));
    let s = Snapshotter::new(e.clone(), PathBuf::from("/mnt/strata"));
    s.prepare(api::PrepareSnapshotRequest {
        key: "k8s.io/1/ctr".into(),
        labels: labels(&[
            ("containerd.io/snapshot/strata.limit.bytes", "10M"),
            ("containerd.io/snapshot/strata.limit.inodes", "1000"),
            ("containerd.io/snapshot/strata.io.weight", "300"),
        ]),
        ..Default::default()
    })
    .expect("prepare");
    let layer = e
        .layer_list()
        .into_iter()
        .find(|l| l.id.starts_with("snap-"))
        .expect("the snapshot's layer");
    assert_eq!(layer.limits.bytes, Some(10 << 20));
    assert_eq!(layer.limits.inodes, Some(1000));
    assert_eq!(layer.limits.weight, Some(300));
    // The labels stay visible to containerd; Strata's own are hidden.
    let info = s
        .stat(api::StatSnapshotRequest {
            key: "k8s.io/1/ctr".into(),
            ..Default::default()
        })
        .expect("stat")
        .info
        .expect("info");
    assert_eq!(
        info.labels.get("containerd.io/snapshot/strata.limit.bytes"),
        Some(&"10M".to_string())
    );
    assert!(info.labels.keys().all(|k| !k.starts_with("strata.io/")));
    // An update replaces them; removing the label removes the limit.
    s.update(api::UpdateSnapshotRequest {
        info: Some(api::Info {
            name: "k8s.io/1/ctr".into(),
            labels: labels(&[("containerd.io/snapshot/strata.limit.bytes", "20M")]),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["labels".into()],
        }),
        ..Default::default()
    })
    .expect("update");
    let l = e.layer_stat(&layer.id).expect("stat");
    assert_eq!(l.limits.bytes, Some(20 << 20));
    assert_eq!(l.limits.inodes, None);
    // Bad values are refused, and nothing changes.
    for (k, v) in [
        ("containerd.io/snapshot/strata.limit.bytes", "a lot"),
        ("containerd.io/snapshot/strata.io.weight", "0"),
        ("containerd.io/snapshot/strata.limit.iops", "0"),
        ("containerd.io/snapshot/strata.unknown", "1"),
    ] {
        let r = s.update(api::UpdateSnapshotRequest {
            info: Some(api::Info {
                name: "k8s.io/1/ctr".into(),
                labels: labels(&[(k, v)]),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["labels".into()],
            }),
            ..Default::default()
        });
        let code = tonic::Status::from(r.expect_err("bad limit label")).code();
        assert_eq!(code, Code::InvalidArgument, "{k}={v}");
        assert_eq!(
            e.layer_stat(&layer.id).expect("stat").limits.bytes,
            Some(20 << 20)
        );
    }
}
