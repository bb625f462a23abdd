//! Compiles the .proto files with protox (pure Rust), so building Prism
//! needs no system `protoc`.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] =
    &["prism/control/v1/control.proto", "prism/kv/v1/kv.proto", "prism/timeseries/v1/timeseries.proto"];

/// Services gateways call on each other, not part of the public API.
const INTERNAL: &[&str] = &["prism/peer/v1/peer.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile(PROTOS, ["."])?;
    // Served by gRPC reflection.
    std::fs::write(out_dir.join("prism_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // RPCs a server does not implement answer UNIMPLEMENTED.
        .generate_default_stubs(true)
        // A namespace spec's optional parts are boxed: prost stores an
        // unset message inline at its full size, and a gateway holds every
        // namespace's spec (a typical one sets only its quotas). Measured
        // in docs/benchmarks.md, "Gateway: memory per namespace".
        .boxed(".prism.control.v1.NamespaceSpec.backend_config")
        .boxed(".prism.control.v1.NamespaceSpec.capacity")
        .boxed(".prism.control.v1.NamespaceSpec.policies")
        .boxed(".prism.control.v1.NamespaceSpec.access")
        .boxed(".prism.control.v1.NamespaceSpec.placement")
        // Most namespaces have no schema, and no migration running.
        .boxed(".prism.control.v1.Namespace.schema")
        .boxed(".prism.control.v1.Namespace.migration")
        .server_mod_attribute(".", "#[cfg(feature = \"grpc\")]")
        .client_mod_attribute(".", "#[cfg(feature = \"grpc\")]")
        .compile_fds(fds)?;
    // Between gateways only: compiled apart, so reflection never
    // describes it.
    tonic_prost_build::configure()
        .server_mod_attribute(".", "#[cfg(feature = \"grpc\")]")
        .client_mod_attribute(".", "#[cfg(feature = \"grpc\")]")
        .compile_fds(protox::compile(INTERNAL, ["."])?)?;
    for proto in PROTOS.iter().chain(INTERNAL) {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
