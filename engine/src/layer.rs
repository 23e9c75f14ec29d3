//! Layers: each one a complete file tree (a persistent map, so a clone is one pointer copy),
//! a parent, a state, labels, and an ownership tag. A block belongs to the layer whose tag it
//! carries; a layer frees only blocks it owns, and only a leaf may be removed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::codec::{Dec, Enc};
use crate::crc::Crcs;
use crate::error::{Error, Result};
use crate::format::Time;
use crate::meta::{Content, Freed, LayerState, Name, Owner, Record, Slot, Tree};

#[derive(Clone, Debug)]
pub struct Layer {
    pub id: Name,
    pub parent: Option<Slot>,
    pub state: LayerState,
    pub owner: Owner,
    pub created: Time,
    pub labels: BTreeMap<Name, Name>,
    pub tree: Tree,
    /// Blocks this layer owns.
    pub owned: u64,
}

/// Every layer of the file system.
#[derive(Clone, Debug, Default)]
pub struct Layers {
    pub map: BTreeMap<Slot, Layer>,
    pub by_id: HashMap<Name, Slot>,
    pub next_slot: Slot,
    pub next_owner: Owner,
    /// The checksum of every mapped data block (shared by every layer that maps it).
    pub crcs: Crcs,
}

/// Layer ids: printable, no `/`, not `.` or `..`, 1 to 255 bytes.
pub fn check_id(id: &[u8]) -> Result<()> {
    if id.is_empty() || id.len() > crate::format::MAX_NAME {
        return Err(Error::Invalid(format!(
            "layer id must be 1 to 255 bytes long (got {})",
            id.len()
        )));
    }
    if id == b"." || id == b".." {
        return Err(Error::Invalid("layer id may not be \".\" or \"..\"".into()));
    }
    match std::str::from_utf8(id) {
        Ok(s) if !s.chars().any(|c| c == '/' || c.is_control()) => Ok(()),
        _ => Err(Error::Invalid(
            "layer id must be printable UTF-8 without '/'".into(),
        )),
    }
}

impl Layers {
    pub fn get(&self, slot: Slot) -> Option<&Layer> {
        self.map.get(&slot)
    }

    pub fn slot_of(&self, id: &[u8]) -> Option<Slot> {
        self.by_id.get(id).copied()
    }

    pub fn children(&self, slot: Slot) -> Vec<Slot> {
        self.map
            .iter()
            .filter(|(_, l)| l.parent == Some(slot))
            .map(|(s, _)| *s)
            .collect()
    }

    /// Parents before children.
    pub fn topo_order(&self) -> Vec<Slot> {
        let mut kids: HashMap<Option<Slot>, Vec<Slot>> = HashMap::new();
        for (s, l) in &self.map {
            kids.entry(l.parent).or_default().push(*s);
        }
        let mut out = Vec::with_capacity(self.map.len());
        let mut stack: Vec<Slot> = kids.get(&None).cloned().unwrap_or_default();
        stack.reverse();
        while let Some(s) = stack.pop() {
            out.push(s);
            if let Some(k) = kids.get(&Some(s)) {
                stack.extend(k.iter().rev());
            }
        }
        out
    }

    /// Physical extents owned by `slot`: found among the inodes that differ from its parent's
    /// tree (a parent's inodes can never hold a child's blocks), so the cost follows what the
    /// layer changed, not the size of the image.
    pub fn owned_extents(&self, slot: Slot) -> Vec<(u64, u64)> {
        let Some(l) = self.map.get(&slot) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut take = |i: &crate::meta::Inode| {
            if let Content::File(x) = &i.content {
                out.extend(
                    x.iter()
                        .filter(|(_, e)| e.owner == l.owner)
                        .map(|(_, e)| (e.pblk, e.len)),
                );
            }
        };
        match l.parent.and_then(|p| self.map.get(&p)) {
            Some(p) => {
                for d in p.tree.inodes.diff(&l.tree.inodes) {
                    match d {
                        imbl::ordmap::DiffItem::Add(_, v)
                        | imbl::ordmap::DiffItem::Update { new: (_, v), .. } => take(v),
                        imbl::ordmap::DiffItem::Remove(..) => {}
                    }
                }
            }
            None => l.tree.inodes.values().for_each(&mut take),
        }
        out
    }

    fn layer_mut(&mut self, slot: Slot) -> Result<&mut Layer> {
        self.map
            .get_mut(&slot)
            .ok_or_else(|| Error::corrupt(format!("record names missing layer slot {slot}"), 0))
    }

    /// Apply one record (an inode record in layer `slot`, or a layer record with slot 0).
    pub fn apply(
        &mut self,
        slot: Slot,
        rec: &Record,
        freed: &mut Freed,
        mapped: &mut Freed,
    ) -> Result<()> {
        match rec {
            Record::LayerNew {
                slot,
                id,
                parent,
                state,
                owner,
                created,
                uid,
                gid,
            } => {
                if *slot == 0 || self.map.contains_key(slot) || self.by_id.contains_key(id) {
                    return Err(Error::corrupt(
                        format!("layer slot {slot} created twice"),
                        0,
                    ));
                }
                let tree = match parent {
                    Some(p) => self
                        .map
                        .get(p)
                        .ok_or_else(|| Error::corrupt(format!("clone of missing layer {p}"), 0))?
                        .tree
                        .clone(),
                    None => Tree::new_root(*uid, *gid, *created),
                };
                self.map.insert(
                    *slot,
                    Layer {
                        id: id.clone(),
                        parent: *parent,
                        state: *state,
                        owner: *owner,
                        created: *created,
                        labels: BTreeMap::new(),
                        tree,
                        owned: 0,
                    },
                );
                self.by_id.insert(id.clone(), *slot);
                self.next_slot = self.next_slot.max(slot + 1);
                self.next_owner = self.next_owner.max(owner + 1);
            }
            Record::LayerState { slot, state } => self.layer_mut(*slot)?.state = *state,
            Record::LayerSnapshot {
                slot,
                new_slot,
                new_id,
                new_owner,
                created,
            } => {
                if *new_slot == 0
                    || self.map.contains_key(new_slot)
                    || self.by_id.contains_key(new_id)
                {
                    return Err(Error::corrupt(
                        format!("snapshot into existing layer slot {new_slot}"),
                        0,
                    ));
                }
                let a = self.layer_mut(*slot)?;
                let frozen = Layer {
                    id: new_id.clone(),
                    parent: a.parent,
                    state: LayerState::Committed,
                    owner: a.owner,
                    created: *created,
                    labels: BTreeMap::new(),
                    tree: a.tree.clone(),
                    owned: a.owned,
                };
                a.parent = Some(*new_slot);
                a.owner = *new_owner;
                a.owned = 0;
                self.map.insert(*new_slot, frozen);
                self.by_id.insert(new_id.clone(), *new_slot);
                self.next_slot = self.next_slot.max(new_slot + 1);
                self.next_owner = self.next_owner.max(new_owner + 1);
            }
            Record::LayerRemove { slot } => {
                if !self.children(*slot).is_empty() {
                    return Err(Error::corrupt(
                        format!("removal of layer {slot} that has children"),
                        0,
                    ));
                }
                let owned = self.owned_extents(*slot);
                let l = self
                    .map
                    .remove(slot)
                    .ok_or_else(|| Error::corrupt(format!("removal of missing layer {slot}"), 0))?;
                self.by_id.remove(&l.id);
                for (b, n) in &owned {
                    self.crcs.clear(*b, *n);
                }
                freed.extend(owned);
            }
            Record::LayerLabels { slot, labels } => {
                self.layer_mut(*slot)?.labels = labels.iter().cloned().collect();
            }
            _ => {
                let l = self.layer_mut(slot)?;
                let (f0, m0) = (freed.len(), mapped.len());
                l.tree.apply(rec, l.owner, freed, mapped)?;
                let plus: u64 = mapped[m0..].iter().map(|x| x.1).sum();
                let minus: u64 = freed[f0..].iter().map(|x| x.1).sum();
                l.owned = (l.owned + plus).saturating_sub(minus);
                // A freed block's checksum goes with it; a mapped block gets the record's.
                for (b, n) in &freed[f0..] {
                    self.crcs.clear(*b, *n);
                }
                if let Record::Map { pblk, crcs, .. } = rec {
                    self.crcs.set(*pblk, crcs);
                }
            }
        }
        Ok(())
    }

    /// Serialise every layer (the checkpoint payload): children as differences from their
    /// parents, so shared structure is written once.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u32(self.next_slot);
        e.u32(self.next_owner);
        let order = self.topo_order();
        e.u32(order.len() as u32);
        for s in order {
            let Some(l) = self.map.get(&s) else { continue };
            e.u32(s);
            e.bytes(&l.id);
            e.u32(l.parent.unwrap_or(0));
            e.u8(l.state.code());
            e.u32(l.owner);
            e.i64(l.created.sec);
            e.u32(l.created.nsec);
            e.u32(l.labels.len() as u32);
            for (k, v) in &l.labels {
                e.bytes(k);
                e.bytes(v);
            }
            let base = l.parent.and_then(|p| self.map.get(&p)).map(|p| &p.tree);
            l.tree.encode(base, &mut e);
        }
        self.crcs.encode(&mut e);
        e.buf
    }

    /// Decode a checkpoint payload written by this version of the format.
    pub fn decode(buf: &[u8], block: u64) -> Result<Layers> {
        Layers::decode_version(buf, block, crate::format::FORMAT_VERSION)
    }

    /// Decode a checkpoint payload written by format `version` (1: no checksum section).
    pub fn decode_version(buf: &[u8], block: u64, version: u32) -> Result<Layers> {
        Layers::decode_inner(buf, block, version, false)
    }

    /// [`Layers::decode_version`] for `fsck` and `fsck --repair`: a layer whose parent is not
    /// listed before it (a parent slot that names no layer) is kept, with its parent slot as
    /// written, and with the tree it lists (its difference from the lost parent: what it
    /// changed itself) as a whole tree; inodes it says it removed from the parent are ignored,
    /// and a missing root directory is replaced by an empty one. Such a layer is not reached
    /// by [`Layers::topo_order`]; `repair` makes it a base layer.
    pub fn decode_salvage(buf: &[u8], block: u64, version: u32) -> Result<Layers> {
        Layers::decode_inner(buf, block, version, true)
    }

    fn decode_inner(buf: &[u8], block: u64, version: u32, salvage: bool) -> Result<Layers> {
        let mut d = Dec::new(buf, block);
        let mut ls = Layers {
            next_slot: d.u32()?,
            next_owner: d.u32()?,
            ..Default::default()
        };
        let n = d.u32()?;
        for _ in 0..n {
            let slot = d.u32()?;
            let id: Name = Arc::from(d.bytes(crate::format::MAX_NAME)?);
            let parent = match d.u32()? {
                0 => None,
                p => Some(p),
            };
            let state = LayerState::from_code(d.u8()?, block)?;
            let owner = d.u32()?;
            let created = Time {
                sec: d.i64()?,
                nsec: d.u32()?,
            };
            let nl = d.u32()? as usize;
            if nl > crate::meta::MAX_LABELS {
                return Err(Error::corrupt(
                    format!("{nl} labels on layer {slot}"),
                    block,
                ));
            }
            let mut labels = BTreeMap::new();
            for _ in 0..nl {
                let k: Name = Arc::from(d.bytes(crate::meta::MAX_LABEL)?);
                let v: Name = Arc::from(d.bytes(crate::meta::MAX_LABEL)?);
                labels.insert(k, v);
            }
            let orphan = salvage && parent.is_some_and(|p| !ls.map.contains_key(&p));
            let base = match parent {
                Some(_) if orphan => None,
                Some(p) => Some(
                    &ls.map
                        .get(&p)
                        .ok_or_else(|| {
                            Error::corrupt(
                                format!("layer {slot} listed before its parent {p}"),
                                block,
                            )
                        })?
                        .tree,
                ),
                None => None,
            };
            let tree = if orphan {
                Tree::decode_salvage(&mut d, created)?
            } else {
                Tree::decode(&mut d, base)?
            };
            if slot == 0 || ls.map.contains_key(&slot) || ls.by_id.contains_key(&id) {
                return Err(Error::corrupt(
                    format!("checkpoint lists layer slot {slot} twice"),
                    block,
                ));
            }
            ls.by_id.insert(id.clone(), slot);
            ls.map.insert(
                slot,
                Layer {
                    id,
                    parent,
                    state,
                    owner,
                    created,
                    labels,
                    tree,
                    owned: 0,
                },
            );
            ls.next_slot = ls.next_slot.max(slot + 1);
            ls.next_owner = ls.next_owner.max(owner + 1);
        }
        if version >= 2 {
            ls.crcs = Crcs::decode(&mut d)?;
        }
        if !d.is_empty() {
            return Err(Error::corrupt("trailing bytes after checkpoint", block));
        }
        let slots: Vec<Slot> = ls.map.keys().copied().collect();
        for s in slots {
            let owned: u64 = ls.owned_extents(s).iter().map(|x| x.1).sum();
            if let Some(l) = ls.map.get_mut(&s) {
                l.owned = owned;
            }
        }
        Ok(ls)
    }
}
