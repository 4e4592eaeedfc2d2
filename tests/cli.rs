//! Host tests of the CLI: argument validation and clear errors, no device-mapper needed.
//! Everything here must fail before the kernel is touched, and change nothing.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_rcx-dm");

fn run(root: &Path, args: &[&str]) -> Output {
    Command::new(BIN).args(args).env("RCX_DM_ROOT", root).env_remove("RCX_DM_POOL").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_refused(args: &[&str], needle: &str) {
    let root = tempfile::tempdir().unwrap();
    let o = run(root.path(), args);
    assert!(!o.status.success(), "{args:?} succeeded");
    let e = stderr(&o);
    assert!(e.contains(needle), "{args:?}: expected {needle:?} in:\n{e}");
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0, "{args:?} wrote under the root");
}

#[test]
fn sizes_that_do_not_parse_or_are_not_sector_multiples_are_refused() {
    assert_refused(&["thin", "create", "0", "--size", "1000"], "multiple of 512");
    assert_refused(&["thin", "create", "0", "--size", "1.5G"], "invalid size");
    assert_refused(&["thin", "create", "0", "--size", "12Q"], "unknown suffix");
    assert_refused(&["pool", "create", "--data-size", "abc"], "invalid size");
    assert_refused(&["snap", "1", "0", "--size", "0"], "is zero");
}

#[test]
fn ids_outside_24_bits_are_refused() {
    assert_refused(&["thin", "create", "16777216", "--size", "1G"], "ids are 0 to 16777215");
    assert_refused(&["snap", "16777216", "0"], "ids are 0 to 16777215");
    assert_refused(&["snap", "1", "16777216"], "ids are 0 to 16777215");
    assert_refused(&["delete", "99999999999"], "ids are 0 to 16777215");
}

#[test]
fn block_sizes_the_kernel_refuses_are_refused_before_touching_it() {
    assert_refused(&["pool", "create", "--block-size", "96K"], "multiples of 64K from 64K to 1G");
    assert_refused(&["pool", "create", "--block-size", "2G"], "multiples of 64K from 64K to 1G");
    assert_refused(&["pool", "create", "--block-size", "32K"], "multiples of 64K from 64K to 1G");
}

#[test]
fn bad_names_are_refused() {
    assert_refused(&["--pool", "a/b", "pool", "create"], "invalid pool name");
    assert_refused(&["thin", "create", "--size", "1G", "--name", "bad name"], "invalid volume name");
    assert_refused(&["info", "../x"], "invalid volume name");
    // Issue 13, defect 2: rcx-dm's own names (its cleanup deletes volumes by them) are reserved.
    for n in ["populate-1", "commit-web", "base-ext4-1", "layer-x", "ctrd-9", "run-1"] {
        assert_refused(&["thin", "create", "--size", "1G", "--name", n], "reserves for its own volumes");
        assert_refused(&["snap", "0", "--name", n], "reserves for its own volumes");
        assert_refused(&["run", "--name", n, "img", "--", "/bin/true"], "reserves for its own volumes");
    }
}

#[test]
fn a_pool_that_was_never_created_is_named_in_the_error() {
    assert_refused(&["list"], "pool 'rcx' does not exist");
    assert_refused(&["--pool", "other", "pool", "status"], "pool 'other' does not exist");
}

#[test]
fn missing_device_mapper_is_reported_clearly() {
    // Only meaningful on a kernel without dm (the CI host; the VM covers the rest). The kernel
    // says so in /proc/misc: a /dev/mapper/control node alone exists wherever dmsetup or lvm2
    // was installed, and rcx-dm must still say clearly that dm is missing then.
    if std::fs::read_to_string("/proc/misc").unwrap_or_default().contains("device-mapper") {
        return;
    }
    assert_refused(&["pool", "create", "--data-size", "1G"], "device-mapper is not available");
}

#[test]
fn not_root_is_refused_with_advice() {
    let root = tempfile::tempdir().unwrap();
    let mut c = Command::new(BIN);
    c.args(["pool", "list"]).env("RCX_DM_ROOT", root.path());
    if nix::unistd::geteuid().is_root() {
        // SAFETY: setuid in the child between fork and exec; no allocation.
        unsafe {
            c.pre_exec(|| nix::unistd::setuid(nix::unistd::Uid::from_raw(65534)).map_err(Into::into));
        }
    }
    let o = c.output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("must run as root"), "{}", stderr(&o));
}

#[test]
fn help_explains_the_commands() {
    let root = tempfile::tempdir().unwrap();
    let o = run(root.path(), &["--help"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    for cmd in ["pool", "thin", "snap", "activate", "deactivate", "delete", "list", "info"] {
        assert!(out.contains(cmd), "--help lacks {cmd}:\n{out}");
    }
    let o = run(root.path(), &["pool", "create", "--help"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("--meta-size") && out.contains("--block-size") && out.contains("--data-dev"), "{out}");
}

#[test]
fn usage_errors_exit_2() {
    let root = tempfile::tempdir().unwrap();
    assert_eq!(run(root.path(), &["frobnicate"]).status.code(), Some(2));
    assert_eq!(run(root.path(), &["thin", "create", "0"]).status.code(), Some(2)); // --size missing
    assert_eq!(run(root.path(), &["pool", "create", "--data-dev", "/dev/null"]).status.code(), Some(2));
}

#[test]
fn serve_refuses_a_missing_pool_and_bad_options_before_binding() {
    let root = tempfile::tempdir().unwrap();
    let sock = root.path().join("run/snap.sock");
    let o = run(root.path(), &["--pool", "nopool", "serve", "--socket", sock.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("does not exist") || e.contains("must run as root"), "{e}");
    assert!(!sock.exists() && !root.path().join("run").exists(), "nothing bound or created");
    assert_refused(&["serve", "--fs", "btrfs"], "use ext4 or xfs");
    assert_refused(&["serve", "--size", "1000"], "multiple of 512");
    let help = Command::new(BIN).args(["serve", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("proxy_plugins.rcx-dm"));
}

#[test]
fn day2_arguments_that_make_no_sense_are_refused_before_touching_anything() {
    assert_refused(&["pool", "extend", "--data-size", "+1x"], "unknown suffix");
    assert_refused(&["pool", "extend", "--meta-size", "+0"], "is zero");
    assert_refused(&["pool", "create", "--autoextend-threshold", "30"], "50 to 100");
    assert_refused(&["pool", "create", "--autoextend-step", "0%"], "percentage");
    assert_refused(&["pool", "set", "--autoextend-max", "lots"], "invalid size");
    assert_refused(&["pool", "set", "--discard-on-delete", "maybe"], "use on or off");
    assert_refused(&["pool", "monitor", "--interval", "0s"], "use e.g. 10s");
    assert_refused(&["trim"], "required");
    assert_refused(&["trim", "0", "--all"], "cannot be used with");
    assert_refused(&["thin", "resize", "0", "--size", "1000"], "multiple of 512");
}

/// `RCX_DM_OVERCOMMIT` takes what scripts write (1/0, true/false), like the flag itself; a
/// value clap refuses would be a usage error (exit 2) before anything else is looked at.
#[test]
fn overcommit_from_the_environment_parses_like_the_flag() {
    let root = tempfile::tempdir().unwrap();
    for v in ["1", "0", "true", "false", "yes", "no"] {
        let o = Command::new(BIN)
            // A block size the kernel refuses: stopped before device-mapper is touched.
            .args(["pool", "create", "--data-size", "1G", "--block-size", "96K"])
            .env("RCX_DM_ROOT", root.path())
            .env("RCX_DM_OVERCOMMIT", v)
            .output()
            .unwrap();
        assert_ne!(o.status.code(), Some(2), "RCX_DM_OVERCOMMIT={v}: {}", stderr(&o));
        assert!(stderr(&o).contains("block size"), "RCX_DM_OVERCOMMIT={v}: {}", stderr(&o));
    }
}
