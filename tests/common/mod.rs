//! Shared by the host CLI tests (each test file is its own crate; they include this with
//! `mod common;`).

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_rcx-dm");

/// rcx-dm with `root` as --root and the default pool.
pub fn run(root: &Path, args: &[&str]) -> Output {
    Command::new(BIN).args(args).env("RCX_DM_ROOT", root).env_remove("RCX_DM_POOL").output().unwrap()
}

/// The command fails, its error contains `needle`, and nothing was written under the root.
pub fn assert_refused(args: &[&str], needle: &str) {
    let root = tempfile::tempdir().unwrap();
    let o = run(root.path(), args);
    assert!(!o.status.success(), "{args:?} succeeded");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains(needle), "{args:?}: expected {needle:?} in:\n{e}");
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0, "{args:?} wrote under the root");
}
