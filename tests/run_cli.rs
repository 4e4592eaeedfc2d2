//! Host tests of `rcx-dm run` / `set-readonly` arguments: bad values are refused with the
//! reason before anything is touched (no device-mapper needed). The runs themselves are in
//! vm-tests/runner.rs and tests/runner_host.rs.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_rcx-dm");

fn run(root: &Path, args: &[&str]) -> Output {
    Command::new(BIN).args(args).env("RCX_DM_ROOT", root).env_remove("RCX_DM_POOL").output().unwrap()
}

fn refused(args: &[&str], code: i32, needle: &str) {
    let root = tempfile::tempdir().unwrap();
    let o = run(root.path(), args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: expected {needle:?} in:\n{err}");
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0, "{args:?} wrote under the root");
}

#[test]
fn memory_pids_and_cpus_values_that_do_not_parse_are_refused() {
    refused(&["run", "--memory", "lots", "1", "--", "true"], 2, "invalid memory limit: 'lots' does not start with a number");
    refused(&["run", "--memory", "1M", "1", "--", "true"], 2, "below 4M");
    refused(&["run", "--memory", "32X", "1", "--", "true"], 2, "unknown suffix");
    refused(&["run", "--pids", "0", "1", "--", "true"], 2, "invalid pids limit");
    refused(&["run", "--pids=-5", "1", "--", "true"], 2, "invalid pids limit");
    refused(&["run", "--cpus", "0", "1", "--", "true"], 2, "invalid cpus");
    refused(&["run", "--cpus", "half", "1", "--", "true"], 2, "invalid cpus");
}

#[test]
fn other_bad_arguments_are_refused() {
    refused(&["run", "--env", "=x", "1", "--", "true"], 2, "invalid environment variable");
    refused(&["run", "--net", "bridge0", "1", "--", "true"], 2, "invalid value 'bridge0' for '--net <NET>'");
    refused(&["run", "--hostname", "bad_host", "1", "--", "true"], 2, "invalid hostname");
    refused(&["run", "--name", "bad name", "1", "--", "true"], 2, "invalid volume name");
    refused(&["run", "1"], 2, "<CMD>");
    refused(&["run", "16777216", "--", "true"], 2, "ids are 0 to 16777215");
    refused(&["set-readonly"], 2, "<VOLUME>");
}

#[test]
fn bad_capabilities_and_security_options_are_refused() {
    refused(&["run", "--cap-add", "SYS_ADMINS", "1", "--", "true"], 2, "unknown capability 'SYS_ADMINS'");
    refused(&["run", "--cap-drop", "CAP_NOPE", "1", "--", "true"], 2, "unknown capability 'CAP_NOPE'");
    refused(&["run", "--security-opt", "seccomp", "1", "--", "true"], 2, "invalid --security-opt 'seccomp'");
    refused(&["run", "--security-opt", "seccomp=", "1", "--", "true"], 2, "seccomp=unconfined or seccomp=PROFILE.json");
    refused(&["run", "--security-opt", "no-new-privileges=yes", "1", "--", "true"], 2, "true or false");
    refused(&["run", "--security-opt", "apparmor=unconfined", "1", "--", "true"], 2, "does not support");
    refused(&["run", "--security-opt", "bogus", "1", "--", "true"], 2, "unknown option");
}

#[test]
fn bad_userns_values_and_combinations_are_refused() {
    refused(&["run", "--userns", "yes", "1", "--", "true"], 2, "invalid --userns 'yes': use auto or HOSTID:COUNT");
    refused(&["run", "--userns", "200000", "1", "--", "true"], 2, "use auto or HOSTID:COUNT");
    refused(&["run", "--userns", "200000:0", "1", "--", "true"], 2, "COUNT must be at least 1");
    refused(&["run", "--userns", "0:65536", "1", "--", "true"], 2, "includes the host's uid 0");
    refused(&["run", "--userns", "4294967290:65536", "1", "--", "true"], 2, "past the highest id 4294967294");
    refused(&["run", "--userns", "4294967296:1", "1", "--", "true"], 2, "ids are 32-bit");
    refused(&["run", "--userns", "auto", "--privileged", "1", "--", "true"], 2, "--privileged cannot be combined with --userns");
    refused(&["run", "--userns", "200000:65536", "--net", "host", "1", "--", "true"], 2, "--net host cannot be combined with --userns");
}

#[test]
fn a_missing_seccomp_profile_is_refused() {
    refused(&["run", "--security-opt", "seccomp=/nonexistent/profile.json", "1", "--", "true"], 2, "no such file");
}

#[test]
fn a_missing_pool_is_named() {
    refused(&["run", "1", "--", "true"], 125, "pool 'rcx' does not exist");
    refused(&["set-readonly", "1"], 1, "pool 'rcx' does not exist");
}

#[test]
fn run_without_root_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let mut c = Command::new(BIN);
    c.args(["run", "1", "--", "true"]).env("RCX_DM_ROOT", root.path());
    if nix::unistd::geteuid().is_root() {
        // SAFETY: setuid in the child between fork and exec; no allocation.
        unsafe {
            c.pre_exec(|| nix::unistd::setuid(nix::unistd::Uid::from_raw(65534)).map_err(Into::into));
        }
    }
    let o = c.output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("must run as root"));
}

#[test]
fn help_describes_run() {
    let root = tempfile::tempdir().unwrap();
    let out = String::from_utf8_lossy(&run(root.path(), &["run", "--help"]).stdout).into_owned();
    for want in [
        "--rm", "--memory", "--pids", "--cpus", "--net", "--env", "--workdir", "--read-only", "--init", "127", "--cap-add",
        "--cap-drop", "--privileged", "--security-opt", "--interactive", "--userns",
    ] {
        assert!(out.contains(want), "run --help lacks {want}:\n{out}");
    }
}
