//! wip
pub mod crypto;
pub mod frame;
pub mod link;
pub mod proto;
pub mod routes;
pub mod topology;
