//! Compiles `dnstap.proto` with protox (a pure-Rust protoc), so building needs no system protoc.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=dnstap.proto");
    let fds = protox::compile(["dnstap.proto"], ["."])?;
    prost_build::Config::new().bytes(["."]).compile_fds(fds)?;
    Ok(())
}
