//! Shared scaffolding: each scenario gets its own root directory and pool name (so dm names
//! never collide when tests run in parallel) and tears everything down on drop, pass or fail.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use rcx_dm::dm::Dm;

pub const BIN: &str = env!("CARGO_BIN_EXE_rcx-dm");

/// The rcx-dm binary to run: a copy of BIN on the scratch tmpfs, made once per test process.
/// In the VM, BIN sits on the host's root shared over 9p, and every exec of the 45 MB debug
/// binary pages it in over 9p again: measured ~5 s per command from 9p vs ~0.5 s from tmpfs.
/// RCX_DM_BIN replaces BIN (tools/bench runs the measurements here with the release binary).
pub fn bin() -> &'static Path {
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let src = std::env::var_os("RCX_DM_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(BIN));
        let copy = scratch().join(format!("rcx-dm-{}", std::process::id()));
        let tmp = copy.with_extension("tmp");
        match std::fs::copy(&src, &tmp).and_then(|_| std::fs::rename(&tmp, &copy)) {
            Ok(()) => copy,
            Err(_) => src,
        }
    })
}

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

    /// A scenario whose pool has exactly the name `pool` (tests of dm names themselves).
    pub fn named(pool: &str) -> Scenario {
        dm();
        let root = scratch().join(format!("root-{pool}"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("root dir");
        Scenario { root, pool: pool.to_string() }
    }

    /// Run the rcx-dm CLI against this scenario's root and pool.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_env(args, &[])
    }

    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(bin());
        // Test pools are sparse files far larger than the VM's small scratch tmpfs, on purpose.
        c.args(args).env("RCX_DM_ROOT", &self.root).env("RCX_DM_POOL", &self.pool).env("RCX_DM_OVERCOMMIT", "1");
        for (k, v) in env {
            c.env(k, v);
        }
        // ETXTBSY: right after the copy, a child forked meanwhile by another test thread may
        // still hold the copy's write descriptor until it execs; try again shortly.
        for _ in 0..50 {
            match c.output() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => std::thread::sleep(std::time::Duration::from_millis(20)),
                r => return r.expect("spawn rcx-dm"),
            }
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
        rcx_dm::pool::names::thin(&self.pool, id).name
    }

    /// What every dm name of this scenario's pool starts with (its `-`s doubled).
    pub fn dm_prefix(&self) -> String {
        format!("{}-", rcx_dm::pool::names::escape_pool(&self.pool))
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        // Through rcx-dm first; then whatever is left by name, so a broken build cannot leak.
        let _ = self.cli(&["pool", "destroy", "--force"]);
        if let Ok(dm) = Dm::open() {
            let prefix = self.dm_prefix();
            if let Ok(names) = dm.list() {
                let (pools, thins): (Vec<_>, Vec<_>) =
                    names.into_iter().filter(|n| n.starts_with(&prefix)).partition(|n| n.ends_with("-pool"));
                // Several passes: classic stacks (snapshot -> origin -> -real/-cow -> thin) free
                // one level per pass.
                for _ in 0..4 {
                    for n in thins.iter().chain(pools.iter()) {
                        let _ = dm.remove(n);
                        rcx_dm::dm::node::remove(n);
                    }
                }
            }
        }
        for f in ["data.img", "meta.img"] {
            let _ = rcx_dm::loopback::detach(&self.root.join(&self.pool).join(f));
        }
        // Loops over classic origin and COW files.
        if let Ok(dir) = std::fs::read_dir(self.root.join(&self.pool).join("classic")) {
            for e in dir.flatten() {
                if e.path().extension().is_some_and(|x| x == "img" || x == "cow") {
                    let _ = rcx_dm::loopback::detach(&e.path());
                }
            }
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

// ---- helpers for crash and concurrency tests (pool state, patterns, offline metadata checks) ----

impl Scenario {
    /// `<root>/<pool>`: the pool's state directory.
    pub fn pool_dir(&self) -> PathBuf {
        self.root.join(&self.pool)
    }

    /// The pool's kernel transaction id (`pool status --json`).
    pub fn txid(&self) -> u64 {
        let s = self.json(&["pool", "status", "--json"]);
        s["transaction_id"].as_u64().unwrap_or_else(|| panic!("no transaction_id in {s}"))
    }

    /// Volume ids in the store, as `list --json` reports them (sorted).
    pub fn store_ids(&self) -> Vec<u32> {
        let list = self.json(&["list", "--json"]);
        let mut ids: Vec<u32> = list
            .as_array()
            .expect("list --json gives an array")
            .iter()
            .map(|v| v["id"].as_u64().expect("volume id") as u32)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Offline checks of a torn-down pool's metadata (`pool deactivate` first): thin_check must
    /// pass; returns the thin ids thin_ls lists (sorted). Debian's thin tools open with O_DIRECT,
    /// which tmpfs refuses, so they read through a read-only loop device over meta.img.
    pub fn offline_metadata_ids(&self) -> Vec<u32> {
        let meta = self.pool_dir().join("meta.img");
        let dev = sh(&format!("losetup -r -f --show '{}'", meta.display())).trim().to_string();
        let check = Command::new("thin_check").arg(&dev).output().expect("spawn thin_check");
        let ls = Command::new("thin_ls").args(["--no-headers", "-o", "DEV", &dev]).output().expect("spawn thin_ls");
        let _ = Command::new("losetup").args(["-d", &dev]).status();
        assert!(
            check.status.success(),
            "thin_check failed on {} ({}):\n{}{}",
            meta.display(),
            check.status,
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        assert!(ls.status.success(), "thin_ls failed: {}", String::from_utf8_lossy(&ls.stderr));
        let mut ids: Vec<u32> = String::from_utf8_lossy(&ls.stdout)
            .split_whitespace()
            .map(|w| w.parse().unwrap_or_else(|_| panic!("thin_ls printed '{w}'")))
            .collect();
        ids.sort_unstable();
        ids
    }
}

/// Deterministic pseudo-random bytes (xorshift), different for each seed.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Write `data` at the start of a block device with O_DIRECT (through dd), so it is in the
/// pool, not in a page cache, when the test goes on.
pub fn write_direct(dev: &Path, data: &[u8]) {
    let src = scratch().join(format!("pat-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst)));
    std::fs::write(&src, data).expect("write pattern file");
    sh(&format!("dd if='{}' of='{}' bs=1M oflag=direct conv=fsync status=none", src.display(), dev.display()));
    let _ = std::fs::remove_file(&src);
}

/// The first `len` bytes of a block device, read with O_DIRECT (through dd).
pub fn read_direct(dev: &Path, len: usize) -> Vec<u8> {
    assert_eq!(len % (1 << 20), 0, "read_direct reads whole MiB");
    let out = Command::new("dd")
        .arg(format!("if={}", dev.display()))
        .args(["bs=1M", "iflag=direct", "status=none", &format!("count={}", len >> 20)])
        .output()
        .expect("spawn dd");
    assert!(out.status.success(), "reading {}: {}", dev.display(), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout.len(), len, "short read from {}", dev.display());
    out.stdout
}

// ---- helpers for the thin walkthrough and edge-case tests ----
//
// Under software emulation every process spawn costs about half a second, so these stay
// in-process: O_DIRECT reads and writes, mount(2), the library for state snapshots.

/// `pool status --json` of a scenario's pool (through the CLI).
pub fn pool_status(s: &Scenario) -> serde_json::Value {
    s.json(&["pool", "status", "--json"])
}

/// `list --json` of a scenario's pool (through the CLI).
pub fn volume_list(s: &Scenario) -> serde_json::Value {
    s.json(&["list", "--json"])
}

/// The scenario's pool opened in-process through the library.
pub fn lib_pool(s: &Scenario) -> rcx_dm::Pool {
    rcx_dm::Pool::open(&s.root, &s.pool).expect("open the pool through the library")
}

/// The kernel's status of the scenario's (active) pool, through the library.
pub fn kernel_status(s: &Scenario) -> rcx_dm::dm::ThinPoolStatus {
    lib_pool(s).status().expect("pool status").kernel.expect("the pool is active")
}

/// Poll `f` until it gives Some, for at most `secs` seconds (the kernel works asynchronously
/// in places); panics with `what` when the deadline passes.
pub fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out after {secs}s waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn open_direct(dev: &Path, write: bool) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .unwrap_or_else(|e| panic!("opening {} with O_DIRECT: {e}", dev.display()))
}

/// A zeroed buffer of `len` bytes whose start (at the returned index) is 4 KiB aligned.
fn aligned_buf(len: usize) -> (Vec<u8>, usize) {
    let buf = vec![0u8; len + 4096];
    let at = buf.as_ptr().align_offset(4096);
    (buf, at)
}

/// Write `data` (a multiple of 4 KiB) at byte `offset` of a block device with O_DIRECT, so it
/// is in the pool, not in a page cache, when the test goes on.
pub fn write_direct_at(dev: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    assert!(offset.is_multiple_of(4096) && data.len().is_multiple_of(4096), "4 KiB aligned writes only");
    let (mut buf, at) = aligned_buf(data.len());
    buf[at..at + data.len()].copy_from_slice(data);
    let f = open_direct(dev, true);
    f.write_all_at(&buf[at..at + data.len()], offset)
        .unwrap_or_else(|e| panic!("writing {} bytes to {} at {offset}: {e}", data.len(), dev.display()));
    f.sync_all().unwrap_or_else(|e| panic!("syncing {}: {e}", dev.display()));
}

/// `len` bytes (a multiple of 4 KiB) at byte `offset` of a block device, read with O_DIRECT.
pub fn read_direct_at(dev: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    assert!(offset.is_multiple_of(4096) && len.is_multiple_of(4096), "4 KiB aligned reads only");
    let (mut buf, at) = aligned_buf(len);
    open_direct(dev, false)
        .read_exact_at(&mut buf[at..at + len], offset)
        .unwrap_or_else(|e| panic!("reading {len} bytes of {} at {offset}: {e}", dev.display()));
    buf[at..at + len].to_vec()
}

/// A digest of a whole block device's contents, read with O_DIRECT (from the pool, not a cache).
pub fn device_digest(dev: &Path) -> (u64, u64) {
    use std::hash::Hasher;
    use std::os::unix::fs::FileExt;
    let (_, size) = rcx_dm::loopback::block_device(dev).expect("block device size");
    let f = open_direct(dev, false);
    let chunk = 1 << 20;
    let (mut buf, at) = aligned_buf(chunk);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut off = 0;
    while off < size {
        let n = chunk.min((size - off) as usize);
        f.read_exact_at(&mut buf[at..at + n], off).unwrap_or_else(|e| panic!("reading {}: {e}", dev.display()));
        h.write(&buf[at..at + n]);
        off += n as u64;
    }
    (size, h.finish())
}

/// mkfs.ext4 on a device (lazy init: quick under emulation).
pub fn mkfs_ext4(dev: &Path) {
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1"])
        .arg(dev)
        .output()
        .expect("spawn mkfs.ext4");
    assert!(out.status.success(), "mkfs.ext4 {}: {}", dev.display(), String::from_utf8_lossy(&out.stderr));
}

/// A mounted ext4 filesystem under scratch; unmounted (and its folder removed) on drop.
pub struct Mount {
    pub dir: PathBuf,
}

impl Mount {
    pub fn new(dev: &Path, tag: &str) -> Mount {
        let dir = scratch().join(format!("mnt-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mount point");
        nix::mount::mount(Some(dev), &dir, Some("ext4"), nix::mount::MsFlags::empty(), None::<&str>)
            .unwrap_or_else(|e| panic!("mounting {} on {}: {e}", dev.display(), dir.display()));
        Mount { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = umount(&self.dir) {
            eprintln!("umount {}: {e}", self.dir.display());
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Unmount, retrying EBUSY for up to 10 s: when another test thread forks a child while a file
/// in this mount is open, the child holds a copy of that descriptor until it execs (O_CLOEXEC
/// closes it only then), and the mount is briefly busy.
pub fn umount(dir: &Path) -> nix::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match nix::mount::umount(dir) {
            Err(nix::errno::Errno::EBUSY) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            r => return r,
        }
    }
}
