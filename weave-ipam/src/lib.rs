//! IPAM for the weave overlay: every container gets an address no other
//! container anywhere has, with no central allocator.
//!
//! * [`ring`]: the CRDT dividing the range among peers.

pub mod ring;
