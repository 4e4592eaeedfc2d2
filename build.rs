//! Link the `rcx-dm` binary as a position-dependent executable (issue 17, README "Start-up").
//!
//! As a PIE, the dynamic loader applies ~34,000 relative relocations (every vtable, string
//! slice and panic location in .data.rel.ro) at each start, touching ~140 pages: 30% of the
//! instructions of `rcx-dm --version`. Linked with -no-pie they are resolved at link time. The
//! objects stay position-independent (only the final link changes), libraries, heap and stack
//! keep their address randomisation; RCX_DM_PIE=1 links a PIE again. Tests and benches are
//! left as they are (`-bins` only).
fn main() {
    println!("cargo:rerun-if-env-changed=RCX_DM_PIE");
    println!("cargo:rerun-if-changed=build.rs");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if linux && std::env::var("RCX_DM_PIE").map_or(true, |v| v != "1") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
