//! Node ids: how the FUSE front names an inode of a layer. The layer slot sits in the high
//! bits, the inode number in the low 40, so every layer's inodes are distinct to the kernel.

use crate::meta::{Ino, Slot};

/// A FUSE node id: layer slot in the high bits, inode number in the low 40.
pub type Node = u64;
pub(crate) const INO_BITS: u32 = 40;
/// The mount root, which lists the layers.
pub const MOUNT_ROOT: Node = 1;

/// The node id of inode `ino` of the layer in `slot`.
pub fn node_of(slot: Slot, ino: Ino) -> Node {
    ((slot as u64) << INO_BITS) | ino
}

/// The layer slot and inode number of a node id.
pub fn split(node: Node) -> (Slot, Ino) {
    ((node >> INO_BITS) as Slot, node & ((1 << INO_BITS) - 1))
}
