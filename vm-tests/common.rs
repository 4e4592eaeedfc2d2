//! Shared scaffolding: each scenario gets its own root directory and pool name (so dm names
//! never collide when tests run in parallel) and tears everything down on drop, pass or fail.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use rcx_dm::dm::Dm;

pub const BIN: &str = env!("CARGO_BIN_EXE_rcx-dm");

/// Scratch space: the VM harness exports a tmpfs as RCX_DM_SCRATCH.
pub fn scratch() -> PathBuf {
    let dir = std::env::var_os("RCX_DM_SCRATCH").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Device-mapper must be there: a test that needs it fails rather than skips.
pub fn dm() -> Dm {
    assert!(nix::unistd::geteuid().is_root(), "vm-tests must run as root (inside tools/vm)");
    Dm::open().expect("device-mapper must be available to vm-tests (run them through tools/test)")
}

pub struct Scenario {
    pub root: PathBuf,
    pub pool: String,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Scenario {
    pub fn new(tag: &str) -> Scenario {
        dm();
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let pool = format!("t{}{n}-{tag}", std::process::id());
        let root = scratch().join(format!("root-{pool}"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("root dir");
        Scenario { root, pool }
    }

    /// Run the rcx-dm CLI against this scenario's root and pool.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_env(args, &[])
    }

    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(BIN);
        c.args(args).env("RCX_DM_ROOT", &self.root).env("RCX_DM_POOL", &self.pool);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("spawn rcx-dm")
    }

    /// Run the CLI and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "rcx-dm {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run the CLI and require failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            !out.status.success(),
            "rcx-dm {args:?} should have failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).expect("valid JSON")
    }

    /// The last line of a command's output: the device path by contract.
    pub fn device(&self, args: &[&str]) -> PathBuf {
        let out = self.ok(args);
        PathBuf::from(out.lines().last().expect("output has a last line").trim())
    }

    pub fn dm_name(&self, id: u32) -> String {
        format!("{}-{id}", self.pool)
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        // Through rcx-dm first; then whatever is left by name, so a broken build cannot leak.
        let _ = self.cli(&["pool", "destroy", "--force"]);
        if let Ok(dm) = Dm::open() {
            let prefix = format!("{}-", self.pool);
            if let Ok(names) = dm.list() {
                let (pools, thins): (Vec<_>, Vec<_>) =
                    names.into_iter().filter(|n| n.starts_with(&prefix)).partition(|n| n.ends_with("-pool"));
                for n in thins.iter().chain(pools.iter()) {
                    let _ = dm.remove(n);
                    rcx_dm::dm::node::remove(n);
                }
            }
        }
        for f in ["data.img", "meta.img"] {
            let _ = rcx_dm::loopback::detach(&self.root.join(&self.pool).join(f));
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Run a shell command; panics with its output on failure.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("spawn sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop device over a fresh sparse file; detached on drop.
pub struct Loop {
    pub file: PathBuf,
    pub dev: PathBuf,
}

impl Loop {
    pub fn new(name: &str, bytes: u64) -> Loop {
        let file = scratch().join(format!("{}-{name}.img", std::process::id()));
        let _ = std::fs::remove_file(&file);
        rcx_dm::loopback::create_sparse(&file, bytes).expect("sparse file");
        let dev = rcx_dm::loopback::attach(&file).expect("attach loop");
        Loop { file, dev }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = rcx_dm::loopback::detach(&self.file);
        let _ = std::fs::remove_file(&self.file);
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
