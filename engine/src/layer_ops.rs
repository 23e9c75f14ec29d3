//! Layer operations: create, clone (O(1): the new layer shares its parent's tree), commit,
//! snapshot, remove, labels, and what the admin API and the CLI see of a layer. Each is one
//! journal commit, durable when the call returns.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::engine::{Engine, LayerListener, Meta};
use crate::error::{Error, Result};
use crate::format::*;
use crate::journal;
use crate::layer::Layers;
use crate::limits::{inodes_added, Limits};
use crate::meta::*;
use crate::node::{node_of, Node, INO_BITS};
use crate::sched::ClassConf;

/// What the admin API and the CLI see of a layer.
#[derive(Clone, Debug)]
pub struct LayerInfo {
    pub id: String,
    pub slot: u32,
    pub parent: Option<String>,
    pub state: LayerState,
    pub labels: BTreeMap<String, String>,
    pub created: Time,
    pub owned_bytes: u64,
    pub inodes: u64,
    /// Inodes added to what the layer inherited (what its inode limit counts).
    pub inodes_added: u64,
    pub limits: Limits,
    /// Parent ids, nearest first.
    pub chain: Vec<String>,
    pub children: Vec<String>,
}

fn lossy(n: &[u8]) -> String {
    String::from_utf8_lossy(n).into_owned()
}

fn layer_info(ls: &Layers, slot: Slot) -> Result<LayerInfo> {
    let l = ls
        .get(slot)
        .ok_or_else(|| Error::NotFound(format!("no layer in slot {slot}")))?;
    let mut chain = Vec::new();
    let mut p = l.parent;
    while let Some(ps) = p {
        let Some(pl) = ls.get(ps) else { break };
        chain.push(lossy(&pl.id));
        p = pl.parent;
        if chain.len() > ls.map.len() {
            break;
        }
    }
    Ok(LayerInfo {
        id: lossy(&l.id),
        slot,
        parent: l.parent.and_then(|p| ls.get(p)).map(|p| lossy(&p.id)),
        state: l.state,
        labels: l.labels.iter().map(|(k, v)| (lossy(k), lossy(v))).collect(),
        created: l.created,
        owned_bytes: l.owned * BLOCK,
        inodes: l.tree.inodes.len() as u64,
        inodes_added: inodes_added(ls, l),
        limits: Limits::of(&l.labels),
        chain,
        children: ls
            .children(slot)
            .into_iter()
            .filter_map(|c| ls.get(c))
            .map(|c| lossy(&c.id))
            .collect(),
    })
}

fn label_list(labels: &BTreeMap<String, String>) -> Result<Vec<(Name, Name)>> {
    if labels.len() > crate::meta::MAX_LABELS {
        return Err(Error::Invalid(format!(
            "at most {} labels",
            crate::meta::MAX_LABELS
        )));
    }
    labels
        .iter()
        .map(|(k, v)| {
            if k.is_empty() || k.len() > crate::meta::MAX_LABEL || v.len() > crate::meta::MAX_LABEL
            {
                return Err(Error::Invalid(format!(
                    "label keys must be 1 to {0} bytes, values at most {0}",
                    crate::meta::MAX_LABEL
                )));
            }
            Ok((Arc::from(k.as_bytes()), Arc::from(v.as_bytes())))
        })
        .collect()
}

impl Engine {
    /// Apply layer records built by `f` (under the metadata lock), then make them durable.
    fn layer_change<T>(&self, f: impl FnOnce(&Meta) -> Result<(Vec<Record>, T)>) -> Result<T> {
        self.inner.poison.check()?;
        let out = {
            let mut m = self.inner.meta.lock();
            let (recs, out) = f(&m)?;
            let mut freed = Vec::new();
            for r in &recs {
                let mut mapped = Vec::new();
                m.layers.apply(0, r, &mut freed, &mut mapped)?;
                journal::encode_record(&mut m.pending, 0, r);
            }
            self.inner.stats.sync(m.layers.map.keys().copied());
            self.release_later(&mut m, freed);
            self.configure_io(&m.layers);
            out
        };
        self.fsync_sync()?;
        Ok(out)
    }

    fn slot_named(m: &Meta, id: &str) -> Result<Slot> {
        m.layers
            .slot_of(id.as_bytes())
            .ok_or_else(|| Error::NotFound(format!("layer {id:?} does not exist")))
    }

    fn check_new_id(m: &Meta, id: &str) -> Result<()> {
        crate::layer::check_id(id.as_bytes())?;
        if m.layers.slot_of(id.as_bytes()).is_some() {
            return Err(Error::Exists(format!("layer {id:?} already exists")));
        }
        if m.layers.next_slot as u64 >= (1 << (64 - INO_BITS)) - 1 {
            return Err(Error::Busy("no free layer slots".into()));
        }
        Ok(())
    }

    /// A new, empty, active base layer.
    pub fn layer_create(&self, id: &str, labels: BTreeMap<String, String>) -> Result<LayerInfo> {
        let labels = label_list(&labels)?;
        let (uid, gid) = process_ids();
        let slot = self.layer_change(|m| {
            Self::check_new_id(m, id)?;
            let slot = m.layers.next_slot.max(1);
            let owner = m.layers.next_owner.max(1);
            let created = Time::now();
            let id: Name = Arc::from(id.as_bytes());
            let mut recs = vec![Record::LayerNew {
                slot,
                id,
                parent: None,
                state: LayerState::Active,
                owner,
                created,
                uid,
                gid,
            }];
            if !labels.is_empty() {
                recs.push(Record::LayerLabels { slot, labels });
            }
            Ok((recs, slot))
        })?;
        self.layer_info_slot(slot)
    }

    /// A new active or view layer sharing the whole tree of committed layer `parent`: O(1).
    pub fn layer_clone(
        &self,
        parent: &str,
        id: &str,
        state: LayerState,
        labels: BTreeMap<String, String>,
    ) -> Result<LayerInfo> {
        if state == LayerState::Committed {
            return Err(Error::Invalid("a clone is active or a view".into()));
        }
        let labels = label_list(&labels)?;
        let slot = self.layer_change(|m| {
            let p = Self::slot_named(m, parent)?;
            if m.layers.get(p).map(|l| l.state) != Some(LayerState::Committed) {
                return Err(Error::Busy(format!(
                    "layer {parent:?} is not committed; only committed layers can be cloned"
                )));
            }
            Self::check_new_id(m, id)?;
            let slot = m.layers.next_slot.max(1);
            let owner = m.layers.next_owner.max(1);
            let id: Name = Arc::from(id.as_bytes());
            let mut recs = vec![Record::LayerNew {
                slot,
                id,
                parent: Some(p),
                state,
                owner,
                created: Time::now(),
                uid: 0,
                gid: 0,
            }];
            if !labels.is_empty() {
                recs.push(Record::LayerLabels { slot, labels });
            }
            Ok((recs, slot))
        })?;
        self.layer_info_slot(slot)
    }

    /// Freeze an active layer: it becomes committed and may have children.
    pub fn layer_commit(&self, id: &str) -> Result<LayerInfo> {
        self.layer_commit_labeled(id, None)
    }

    /// [`Engine::layer_commit`], replacing the layer's labels in the same journal commit when
    /// `labels` is given (the containerd snapshotter renames a key to its committed name this
    /// way: a crash leaves either the active key or the committed name, never a mix).
    pub fn layer_commit_labeled(
        &self,
        id: &str,
        labels: Option<BTreeMap<String, String>>,
    ) -> Result<LayerInfo> {
        let labels = labels.as_ref().map(label_list).transpose()?;
        // What the layer's files hold includes the kernel's dirty pages.
        self.flush_kernel_cache();
        let slot = self.layer_change(|m| {
            let s = Self::slot_named(m, id)?;
            match m.layers.get(s).map(|l| l.state) {
                Some(LayerState::Active) => {}
                Some(st) => {
                    return Err(Error::Busy(format!(
                        "layer {id:?} is {}, not active",
                        st.as_str()
                    )))
                }
                None => return Err(Error::NotFound(format!("layer {id:?} does not exist"))),
            }
            let mut recs = vec![Record::LayerState {
                slot: s,
                state: LayerState::Committed,
            }];
            if let Some(labels) = labels {
                recs.push(Record::LayerLabels { slot: s, labels });
            }
            Ok((recs, s))
        })?;
        self.layer_info_slot(slot)
    }

    /// Freeze the current state of active layer `id` into a new committed layer `new_parent`
    /// (which takes its place in the chain), in O(1); `id` stays active on top of it.
    pub fn layer_snapshot(&self, id: &str, new_parent: &str) -> Result<LayerInfo> {
        self.flush_kernel_cache();
        let slot = self.layer_change(|m| {
            let s = Self::slot_named(m, id)?;
            if m.layers.get(s).map(|l| l.state) != Some(LayerState::Active) {
                return Err(Error::Busy(format!("layer {id:?} is not active")));
            }
            Self::check_new_id(m, new_parent)?;
            let new_slot = m.layers.next_slot.max(1);
            let new_owner = m.layers.next_owner.max(1);
            let rec = Record::LayerSnapshot {
                slot: s,
                new_slot,
                new_id: Arc::from(new_parent.as_bytes()),
                new_owner,
                created: Time::now(),
            };
            Ok((vec![rec], new_slot))
        })?;
        self.layer_info_slot(slot)
    }

    /// Be told when a layer is removed (at most one listener).
    pub fn set_layer_listener(&self, f: LayerListener) {
        *self.inner.layer_listener.lock() = Some(f);
    }

    /// Remove a leaf layer; the blocks it owns return to the free pool.
    pub fn layer_remove(&self, id: &str) -> Result<()> {
        self.layer_change(|m| {
            let s = Self::slot_named(m, id)?;
            let kids = m.layers.children(s);
            if !kids.is_empty() {
                let names: Vec<String> = kids
                    .iter()
                    .filter_map(|k| m.layers.get(*k))
                    .map(|l| lossy(&l.id))
                    .collect();
                return Err(Error::Busy(format!(
                    "layer {id:?} has children: {}",
                    names.join(", ")
                )));
            }
            Ok((vec![Record::LayerRemove { slot: s }], ()))
        })?;
        if let Some(f) = self.inner.layer_listener.lock().as_ref() {
            f(id);
        }
        Ok(())
    }

    pub fn layer_set_labels(
        &self,
        id: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<LayerInfo> {
        let labels = label_list(&labels)?;
        let slot = self.layer_change(|m| {
            let s = Self::slot_named(m, id)?;
            Ok((vec![Record::LayerLabels { slot: s, labels }], s))
        })?;
        self.layer_info_slot(slot)
    }

    /// Give the I/O scheduler every layer's weight and I/O limits (the ones that are not the
    /// default).
    pub(crate) fn configure_io(&self, layers: &Layers) {
        let conf = layers
            .map
            .iter()
            .filter_map(|(slot, l)| {
                let lim = Limits::of(&l.labels);
                let c = ClassConf {
                    weight: lim.weight(),
                    iops: lim.iops,
                    bps: lim.bps,
                };
                (c != ClassConf::default()).then_some((*slot, c))
            })
            .collect();
        self.inner.ring.sched().configure(conf);
    }

    /// How device I/O is shared between layers.
    pub fn io_policy(&self) -> crate::sched::Policy {
        self.inner.ring.sched().policy()
    }

    /// Set a layer's limits (space, inodes, I/O), replacing the ones it had; durable when
    /// this returns. Lowering a limit below what the layer uses refuses its next allocation,
    /// nothing already written goes.
    pub fn layer_set_limits(&self, id: &str, limits: Limits) -> Result<LayerInfo> {
        limits.check()?;
        let slot = self.layer_change(|m| {
            let s = Self::slot_named(m, id)?;
            let l = m
                .layers
                .get(s)
                .ok_or_else(|| Error::NotFound(format!("layer {id:?}")))?;
            let labels: Vec<(Name, Name)> = limits.apply_to(&l.labels).into_iter().collect();
            Ok((vec![Record::LayerLabels { slot: s, labels }], s))
        })?;
        self.layer_info_slot(slot)
    }

    pub fn layer_list(&self) -> Vec<LayerInfo> {
        let m = self.inner.meta.lock();
        m.layers
            .map
            .keys()
            .filter_map(|s| layer_info(&m.layers, *s).ok())
            .collect()
    }

    pub fn layer_stat(&self, id: &str) -> Result<LayerInfo> {
        let m = self.inner.meta.lock();
        layer_info(&m.layers, Self::slot_named(&m, id)?)
    }

    fn layer_info_slot(&self, slot: Slot) -> Result<LayerInfo> {
        let m = self.inner.meta.lock();
        layer_info(&m.layers, slot)
    }

    /// Read-only access to every layer (under the metadata lock: keep `f` short; clone the
    /// trees, which costs a pointer copy, to work on them outside).
    pub fn with_layers<R>(&self, f: impl FnOnce(&Layers) -> R) -> R {
        f(&self.inner.meta.lock().layers)
    }

    /// The node of a layer's root directory.
    pub fn layer_root(&self, id: &str) -> Result<Node> {
        let m = self.inner.meta.lock();
        Ok(node_of(Self::slot_named(&m, id)?, ROOT_INO))
    }
}

/// Real user and group of this process.
fn process_ids() -> (u32, u32) {
    // SAFETY: getuid/getgid cannot fail and take no pointers.
    unsafe { (libc::getuid(), libc::getgid()) }
}
