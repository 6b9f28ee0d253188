//! Compiles `lmi/agent/v1/*.proto` with protox (a protobuf compiler written in Rust), so building needs no
//! system `protoc`. The encoded descriptor set is kept for gRPC server reflection.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["lmi/agent/v1/agent.proto", "google/rpc/status.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("lmi_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Payloads as `Bytes`: decoded as a view into the received buffer and encoded from the runtime's
        // answer without another copy (a Vec would be copied once more each way).
        .bytes(".lmi.agent.v1.InvokeRequest.payload")
        .bytes(".lmi.agent.v1.InvokeResponse.payload")
        .bytes(".lmi.agent.v1.InvokeWithResponseStreamResponse.chunk")
        .compile_fds(fds)?;
    Ok(())
}
