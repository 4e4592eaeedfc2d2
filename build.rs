//! How the `rcx-dm` binary is linked (issue 17, README "Start-up of a CLI call").
//!
//! As a PIE (the default, as every binary of the distributions it runs on), the dynamic loader
//! applies ~34,000 relative relocations (every vtable, string slice and panic location in
//! .data.rel.ro) at each start: ~0.44 M instructions, ~12 ms of a call under the test VM's
//! emulation. RCX_DM_NO_PIE=1 links it position-dependent instead (`-no-pie`: resolved at link
//! time) for whoever wants those milliseconds more than address randomisation of the image of
//! a root program that parses untrusted images. Tests and benches are left as they are.
fn main() {
    println!("cargo:rerun-if-env-changed=RCX_DM_NO_PIE");
    println!("cargo:rerun-if-changed=build.rs");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if linux && std::env::var("RCX_DM_NO_PIE").is_ok_and(|v| v == "1") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
