//! Host tests of `rcx-dm completions` and `rcx-dm man`: what a CLI user expects of the
//! ecosystem's conventions. Both are generated from the clap definitions and must work without
//! root and without a pool, so every run here is also made as nobody when the tests run as root.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_rcx-dm");

/// Runs rcx-dm with a state root that does not exist, so a command that needed a pool (or
/// reaped runs) would fail or create it; as uid/gid 65534 without groups when `nobody`.
fn rcx(args: &[&str], nobody: bool) -> Output {
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("never-made");
    let mut c = Command::new(BIN);
    c.args(args).env("RCX_DM_ROOT", &root).env_remove("RCX_DM_POOL").stdin(Stdio::null());
    if nobody {
        // SAFETY: plain syscalls in the child between fork and exec; no allocation.
        unsafe {
            c.pre_exec(|| {
                nix::unistd::setgroups(&[])?;
                nix::unistd::setgid(nix::unistd::Gid::from_raw(65534))?;
                nix::unistd::setuid(nix::unistd::Uid::from_raw(65534))?;
                Ok(())
            });
        }
    }
    let o = c.output().unwrap();
    assert!(!root.exists(), "{args:?} created the state root");
    o
}

/// Who to run as: ourselves, and nobody too when we are root.
fn users() -> Vec<bool> {
    if nix::unistd::geteuid().is_root() {
        vec![false, true]
    } else {
        vec![false]
    }
}

fn ok(args: &[&str], nobody: bool) -> String {
    let o = rcx(args, nobody);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{args:?} (nobody: {nobody}): {err}");
    String::from_utf8(o.stdout).unwrap()
}

fn have(tool: &str) -> bool {
    Command::new("which").arg(tool).stdout(Stdio::null()).status().is_ok_and(|s| s.success())
}

#[test]
fn bash_completion_is_valid_bash_and_completes_subcommands_and_their_options() {
    for nobody in users() {
        let script = ok(&["completions", "bash"], nobody);
        for word in ["pool", "snap", "thin", "completions", "man", "--root", "complete -F _rcx__dm "] {
            assert!(script.contains(word), "bash completion lacks {word:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rcx-dm");
        std::fs::write(&file, &script).unwrap();
        let syntax = Command::new("bash").arg("-n").arg(&file).output().unwrap();
        assert!(syntax.status.success(), "bash -n: {}", String::from_utf8_lossy(&syntax.stderr));
        // What <TAB> offers, as bash-completion would ask: the function gets the command, the
        // current word and the previous one. Beyond the first word this needs the workaround
        // for the hyphenated binary name (clap-rs/clap#6421).
        let probe = r#"source "$1"
            tab() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMPREPLY=()
                    _rcx__dm rcx-dm "${COMP_WORDS[-1]}" "${COMP_WORDS[-2]}"; echo "${COMPREPLY[*]}"; }
            tab rcx-dm sn; tab rcx-dm pool c; tab rcx-dm pool create --data-s; tab rcx-dm completions f"#;
        let o = Command::new("bash").arg("-c").arg(probe).arg("probe").arg(&file).output().unwrap();
        let got = String::from_utf8_lossy(&o.stdout);
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(lines, ["snap", "create check", "--data-size", "fish"], "{}", String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn zsh_and_fish_completions_name_the_binary_and_its_subcommands() {
    for nobody in users() {
        let zsh = ok(&["completions", "zsh"], nobody);
        assert!(zsh.starts_with("#compdef rcx-dm"), "{}", &zsh[..zsh.len().min(200)]);
        let fish = ok(&["completions", "fish"], nobody);
        assert!(fish.contains("complete -c rcx-dm"), "{}", &fish[..fish.len().min(200)]);
        for script in [&zsh, &fish] {
            assert!(script.contains("pool") && script.contains("snap") && script.contains("set-readonly"));
        }
        // Syntax checks where the shells are installed (neither is needed to build rcx-dm).
        for (shell, check, script) in [("zsh", "-n", &zsh), ("fish", "--no-execute", &fish)] {
            if !have(shell) {
                continue;
            }
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("script");
            std::fs::write(&file, script).unwrap();
            let o = Command::new(shell).arg(check).arg(&file).output().unwrap();
            assert!(o.status.success(), "{shell} {check}: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
}

#[test]
fn an_unknown_shell_is_a_usage_error_listing_the_valid_ones() {
    let o = rcx(&["completions", "tcsh"], false);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("invalid value 'tcsh'"), "{err}");
    assert!(err.contains("[possible values: bash, elvish, fish, powershell, zsh]"), "{err}");
    assert!(o.stdout.is_empty());
}

/// Renders a page with groff (when installed) and returns its words, one space apart (plain
/// text without bold or underline); warnings are failures.
fn render(page: &Path) -> Option<String> {
    if !have("groff") {
        return None;
    }
    let o = Command::new("groff").args(["-man", "-Tascii", "-ww", "-P-cbou"]).arg(page).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.is_empty(), "groff {}: {err}", page.display());
    Some(String::from_utf8_lossy(&o.stdout).split_whitespace().collect::<Vec<_>>().join(" "))
}

#[test]
fn man_writes_one_page_per_command_into_a_directory_it_creates() {
    for nobody in users() {
        let tmp = tempfile::tempdir().unwrap();
        // nobody may write here; the directory below it does not exist yet.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let dir = tmp.path().join("share/man/man1");
        let out = ok(&["man", "--dir", dir.to_str().unwrap()], nobody);
        let mut pages: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        pages.sort();
        assert_eq!(out, format!("wrote {} man pages to {}\n", pages.len(), dir.display()));
        for want in ["rcx-dm.1", "rcx-dm-pool.1", "rcx-dm-pool-create.1", "rcx-dm-snap.1", "rcx-dm-set-readonly.1", "rcx-dm-man.1"] {
            assert!(pages.iter().any(|p| p == want), "no {want} in {pages:?}");
        }
        assert!(!pages.iter().any(|p| p.contains("help")), "a page for the help subcommand: {pages:?}");
        let create = dir.join("rcx-dm-pool-create.1");
        let src = std::fs::read_to_string(&create).unwrap();
        assert!(src.lines().any(|l| l.starts_with(".TH rcx-dm-pool-create 1 ")), "{src}");
        if let Some(text) = render(&create) {
            for word in ["NAME", "SYNOPSIS", "rcx-dm pool create", "--data-size", "--root"] {
                assert!(text.contains(word), "rendered page lacks {word:?}:\n{text}");
            }
        }
    }
}

#[test]
fn man_without_a_directory_prints_the_top_page() {
    let page = ok(&["man"], false);
    assert!(page.lines().any(|l| l.starts_with(".TH rcx-dm 1 ")), "{page}");
    // The SUBCOMMANDS section points at the other pages by their names (roff escapes '-').
    assert!(page.contains(r"rcx\-dm\-pool(1)") && page.contains(r"rcx\-dm\-completions(1)"), "{page}");
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("rcx-dm.1");
    std::fs::write(&file, &page).unwrap();
    if let Some(text) = render(&file) {
        assert!(text.contains("Device-mapper thin-provisioning snapshot backend"), "{text}");
    }
}

#[test]
fn an_unwritable_man_directory_is_an_error_naming_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    // Not a directory, for root as for anyone.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let under_file = file.join("man1");
    let o = rcx(&["man", "--dir", under_file.to_str().unwrap()], false);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("cannot create man page directory {}", under_file.display())), "{err}");
    // A directory nobody may not write to.
    if nix::unistd::geteuid().is_root() {
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let ro = tmp.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        let o = rcx(&["man", "--dir", ro.to_str().unwrap()], true);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(&format!("cannot write man page {}", ro.join("rcx-dm.1").display())), "{err}");
        assert!(err.contains("Permission denied"), "{err}");
    }
}
