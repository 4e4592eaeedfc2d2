//! Host tests of the classic snapshot and revert commands: what the kernel would refuse is
//! refused before anything is touched (no device-mapper needed), with a clear message.

mod common;
use common::{assert_refused, run};

#[test]
fn chunk_sizes_must_be_a_power_of_two_of_at_most_2_pow_21_sectors() {
    let cow = |chunk: &str| vec!["cow", "create", "s", "--origin", "o", "--size", "1G", "--chunk", chunk.to_string().leak()];
    for bad in ["3K", "12K", "96K", "2G", "4G"] {
        assert_refused(&cow(bad), "power of two from 512 bytes up to 2^21 sectors");
    }
    assert_refused(&cow("1000"), "multiple of 512");
    assert_refused(&cow("0"), "is zero");
    // The largest the kernel takes parses (and only then fails for want of a pool).
    for ok in ["512", "4K", "64K", "1G"] {
        assert_refused(&cow(ok), "pool 'rcx' does not exist");
    }
}

#[test]
fn classic_names_are_checked() {
    for bad in ["pool", "123", "a/b", "x-real", "x-cow", &"n".repeat(49)] {
        assert_refused(&["origin", "create", bad, "--size", "1G"], "invalid name");
    }
    assert_refused(&["cow", "create", "s", "--origin", "x-real", "--size", "1G"], "invalid name");
    assert_refused(&["merge", "7"], "invalid name");
    assert_refused(&["cow", "delete", "../x"], "invalid name");
}

#[test]
fn origin_create_needs_exactly_one_source() {
    let root = tempfile::tempdir().unwrap();
    assert_eq!(run(root.path(), &["origin", "create", "o"]).status.code(), Some(2));
    assert_eq!(run(root.path(), &["origin", "create", "o", "--size", "1G", "--from", "0"]).status.code(), Some(2));
    assert_refused(&["origin", "create", "o", "--size", "1000"], "multiple of 512");
    assert_refused(&["cow", "create", "s", "--origin", "o"], "--size");
}

#[test]
fn revert_takes_volume_ids_or_names() {
    assert_refused(&["revert", "0", "16777216"], "ids are 0 to 16777215");
    assert_refused(&["revert", "a b", "1"], "invalid volume name");
    assert_refused(&["revert", "0", "1"], "pool 'rcx' does not exist");
}

#[test]
fn help_lists_the_classic_commands() {
    let root = tempfile::tempdir().unwrap();
    let out = String::from_utf8_lossy(&run(root.path(), &["--help"]).stdout).into_owned();
    for cmd in ["origin", "cow", "merge", "revert"] {
        assert!(out.contains(cmd), "--help lacks {cmd}:\n{out}");
    }
    let out = String::from_utf8_lossy(&run(root.path(), &["cow", "create", "--help"]).stdout).into_owned();
    for flag in ["--origin", "--size", "--chunk", "--transient", "--in-pool"] {
        assert!(out.contains(flag), "cow create --help lacks {flag}:\n{out}");
    }
    let out = String::from_utf8_lossy(&run(root.path(), &["merge", "--help"]).stdout).into_owned();
    assert!(out.contains("--wait"), "{out}");
}
