//! Host tests of the root filesystem commands' arguments: refused before the kernel or the
//! pool is touched, with errors that say what is wrong.

mod common;
use common::{assert_refused as refused, run};

#[test]
fn unknown_filesystems_are_refused() {
    refused(&["format", "0", "--fs", "btrfs"], "use ext4 or xfs");
    refused(&["thin", "create", "--size", "1G", "--fs", "zfs"], "use ext4 or xfs");
    refused(&["image", "import", "/x", "--name", "a", "--fs", "vfat"], "use ext4 or xfs");
}

#[test]
fn image_names_are_checked_first() {
    refused(&["image", "import", "/x", "--name", "../evil"], "invalid volume name");
    refused(&["image", "import", "/x", "--name", &"a".repeat(49)], "longer than 48");
    refused(&["commit", "0", "--name", "a/b"], "invalid volume name");
    refused(&["image", "import", "/x"], "--name");
    refused(&["populate", "0"], "--from");
}

#[test]
fn a_missing_pool_is_named() {
    refused(&["populate", "0", "--from", "/"], "does not exist");
    refused(&["image", "list"], "does not exist");
}

#[test]
fn help_covers_the_rootfs_commands() {
    let root = tempfile::tempdir().unwrap();
    let out = String::from_utf8_lossy(&run(root.path(), &["--help"]).stdout).into_owned();
    for c in ["format", "populate", "image", "commit"] {
        assert!(out.contains(c), "--help lacks {c}");
    }
    let out = String::from_utf8_lossy(&run(root.path(), &["populate", "--help"]).stdout).into_owned();
    assert!(out.contains("rsync") && out.contains("OCI"), "{out}");
}

#[test]
fn pull_and_push_arguments_are_checked_first() {
    refused(&["image", "pull", "127.0.0.1:5000/a:1", "--platform", "linux"], "os/architecture");
    refused(&["image", "pull", "127.0.0.1:5000/a:1", "--name", "../x"], "invalid volume name");
    refused(&["image", "pull", "127.0.0.1:5000/a:1", "--size", "lots"], "lots");
    refused(&["image", "pull"], "<REFERENCE>");
    refused(&["image", "push", "a"], "<REFERENCE>");
    let root = tempfile::tempdir().unwrap();
    let out = String::from_utf8_lossy(&run(root.path(), &["image", "pull", "--help"]).stdout).into_owned();
    for w in ["--platform", "--plain-http", "--auth-file", "config.json", "killed pull", "chain id"] {
        assert!(out.contains(w), "image pull --help lacks {w}:\n{out}");
    }
    let out = String::from_utf8_lossy(&run(root.path(), &["image", "push", "--help"]).stdout).into_owned();
    assert!(out.contains("squashed"), "{out}");
}
