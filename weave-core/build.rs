//! With the `control` feature: compiles the control API's .proto with
//! protox (no system protoc needed).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/control.proto");
    #[cfg(feature = "control")]
    {
        let fds = protox::compile(["proto/control.proto"], ["proto"])?;
        tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    }
    Ok(())
}
