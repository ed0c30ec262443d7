//! wip
pub mod crypto;
pub mod frame;
pub mod link;
pub mod proto;
