//! Compiles the etcd v3 `.proto` files under `proto/` into Rust.
//!
//! Parsing is done in-process by `protox` (no system `protoc` needed); the
//! resulting `FileDescriptorSet` is fed to `tonic-prost-build`, which emits
//! prost messages plus tonic clients and servers, one file per package
//! (`mvccpb.rs`, `authpb.rs`, `etcdserverpb.rs`, `v3lockpb.rs`,
//! `v3electionpb.rs`, and Strata's own peer transport `raftpb.rs`) in
//! `OUT_DIR`, plus the encoded `FileDescriptorSet` (`etcd_descriptor_set.bin`)
//! that `proto::FILE_DESCRIPTOR_SET`
//! exposes for reflection.

use std::path::Path;

const PROTO_ROOT: &str = "proto";

const PROTOS: &[&str] = &[
    "mvccpb/kv.proto",
    "authpb/auth.proto",
    "etcdserverpb/rpc.proto",
    "v3lockpb/v3lock.proto",
    "v3electionpb/v3election.proto",
    "raftpb/raft.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    for file in PROTOS {
        println!("cargo:rerun-if-changed={PROTO_ROOT}/{file}");
    }

    let files: Vec<_> = PROTOS
        .iter()
        .map(|f| Path::new(PROTO_ROOT).join(f))
        .collect();
    let fds = protox::compile(&files, [PROTO_ROOT])?;
    // The descriptor set itself, for reflection (the JSON gateway maps JSON
    // to these messages by field name and type).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("etcd_descriptor_set.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
