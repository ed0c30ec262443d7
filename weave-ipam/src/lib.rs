//! The IPAM ring CRDT (issue: IPAM). Not implemented yet: this crate only reserves its place in the workspace.
