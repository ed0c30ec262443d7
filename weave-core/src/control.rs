//! The router's control API (feature `control`): gRPC over a unix socket,
//! generated from `proto/control.proto`. An alternative CLI depends on
//! this and [`connect`], not on the reference router; a router serves
//! [`pb::control_server::Control`].

use std::path::{Path, PathBuf};

/// Generated from `proto/control.proto` (package `weave.control.v1`).
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    tonic::include_proto!("weave.control.v1");
}

pub use pb::control_client::ControlClient;
pub use pb::control_server::ControlServer;

/// The control socket in a router's state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("weave.sock")
}

/// Connect a client to the control socket at `socket`.
pub async fn connect(socket: &Path) -> Result<ControlClient<tonic::transport::Channel>, tonic::transport::Error> {
    let path = socket.to_owned();
    // The URI is required by the API and unused: the connector dials the socket.
    let channel = tonic::transport::Endpoint::from_static("http://weave.sock")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await?;
    Ok(ControlClient::new(channel))
}
