//! Generates the Rust types of `proto/capsule/agent/v1/agent.proto` with prost, parsing the
//! schema with protox (pure Rust), so no system `protoc` is needed.

fn main() {
    let proto = "proto/capsule/agent/v1/agent.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = match protox::compile([proto], ["proto"]) {
        Ok(fds) => fds,
        Err(e) => {
            eprintln!("{e:?}");
            std::process::exit(1);
        }
    };
    if let Err(e) = prost_build::Config::new().compile_fds(fds) {
        eprintln!("prost-build: {e}");
        std::process::exit(1);
    }
}
