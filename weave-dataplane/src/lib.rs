//! The Dataplane trait, netlink plumbing, sleeve and VXLAN fast path (issue: data plane). Not implemented yet: this crate only reserves its place in the workspace.
