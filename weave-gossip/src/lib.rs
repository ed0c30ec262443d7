//! wip
pub mod connmaker;
pub mod crypto;
pub mod frame;
pub mod link;
pub mod mesh;
pub mod proto;
pub mod routes;
#[cfg(feature = "testing")]
pub mod sim;
pub mod topology;
