//! What the default isolation costs a container start (not a test): run as root where
//! device-mapper exists, normally through `tools/bench-isolation`, which boots the VM and writes
//! bench/isolation.md.
//!
//! `rcx-dm run --rm base -- /bin/true` end to end (snapshot, mount, namespaces, pivot_root,
//! exec, teardown) with the default isolation (capabilities, seccomp filter compiled and
//! installed, masked and read-only paths, cgroup namespace, nodev devices) against the same
//! with `--privileged --security-opt seccomp=unconfined`, interleaved in one run on one pool:
//! medians with min-max. Target: at most 10% more. Prints a markdown report between
//! BEGIN-REPORT and END-REPORT.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

mod common;
use common::{fmt_range, median, Stage};

const BIN: &str = env!("CARGO_BIN_EXE_rcx-dm");
const POOL: &str = "benchiso";

fn rcx(rcx: &Path, lib: &Path, root: &Path, args: &[&str]) -> Output {
    let out = Command::new(rcx)
        .env("LD_LIBRARY_PATH", lib)
        .env("RCX_DM_ROOT", root)
        .env("RCX_DM_POOL", POOL)
        .env("RCX_DM_OVERCOMMIT", "1")
        .args(args)
        .output()
        .expect("spawn rcx-dm");
    assert!(out.status.success(), "rcx-dm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn main() {
    let reps: usize = std::env::var("RCX_DM_BENCH_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    rcx_dm::dm::Dm::open().expect("device-mapper is required; run through tools/bench-isolation");
    let scratch = std::env::var_os("RCX_DM_SCRATCH").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let root = scratch.join("bench-iso-root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let s = Stage::new(&scratch.join("bench-iso-bin"));
    let bin = s.copy(Path::new(BIN), "rcx-dm");
    let lib = s.lib_dir.clone();
    let r = |args: &[&str]| rcx(&bin, &lib, &root, args);

    // A busybox base: /bin/true is busybox's applet, as small a command as there is.
    r(&["pool", "create", "--data-size", "4G"]);
    let tree = scratch.join("bench-iso-tree");
    let _ = std::fs::remove_dir_all(&tree);
    for d in ["bin", "dev", "proc", "sys", "etc", "tmp"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).expect("the host's busybox-static");
    std::os::unix::fs::symlink("busybox", tree.join("bin/true")).unwrap();
    r(&["thin", "create", "--fs", "ext4", "--size", "256M", "--name", "base"]);
    r(&["populate", "base", "--from", tree.to_str().unwrap()]);
    r(&["set-readonly", "base"]);

    let default: &[&str] = &["run", "--rm", "base", "--", "/bin/true"];
    let open: &[&str] = &["run", "--rm", "--privileged", "--security-opt", "seccomp=unconfined", "base", "--", "/bin/true"];
    for args in [default, open] {
        r(args); // warm: the page cache, the base's first activation
    }
    let timed = |args: &[&str]| {
        let t = Instant::now();
        r(args);
        t.elapsed().as_secs_f64() * 1000.0
    };
    let (mut iso, mut priv_) = (Vec::new(), Vec::new());
    for i in 0..reps {
        // Interleaved, the order alternating, so drift hits both alike.
        if i % 2 == 0 {
            iso.push(timed(default));
            priv_.push(timed(open));
        } else {
            priv_.push(timed(open));
            iso.push(timed(default));
        }
    }
    let (mi, mp) = (median(&iso), median(&priv_));
    let extra = (mi / mp - 1.0) * 100.0;
    r(&["pool", "destroy", "--force"]);
    let _ = std::fs::remove_dir_all(&tree);
    let _ = std::fs::remove_dir_all(&root);

    println!("BEGIN-REPORT");
    println!("`rcx-dm run --rm base -- /bin/true` end to end, {reps} interleaved rounds, median (min-max), ms:");
    println!();
    println!("| isolation | run, ms |");
    println!("|---|---|");
    println!("| default (caps, seccomp, masked paths, cgroupns, nodev) | {mi:.1} ({}) |", fmt_range(&iso));
    println!("| `--privileged --security-opt seccomp=unconfined` | {mp:.1} ({}) |", fmt_range(&priv_));
    println!();
    let verdict = if extra <= 10.0 { "met" } else { "MISSED" };
    println!("The default isolation costs {extra:+.1}% of the end-to-end time (target: at most +10%: {verdict}).");
    println!("END-REPORT");
}
