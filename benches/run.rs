//! `rcx-dm run` latency benchmark (not a test): run as root where device-mapper exists,
//! normally through `tools/bench-run`, which boots the VM and writes bench/run.md.
//!
//! One operation is `rcx-dm run --rm base -- /bin/true` end to end (process spawn to exit),
//! on a busybox-static ext4 base volume marked read-only: snapshot, activate, mount,
//! namespaces and pivot_root, exec, teardown (the run's own `--timings` give the breakdown).
//! Beside it, in the same interleaved rounds: the same with `--net host` (the namespace set
//! of the comparison below), `--read-only` (no snapshot: the base itself mounted read-only),
//! and `unshare --fork --pid --mount --uts --ipc chroot DIR
//! /bin/true` on the same files extracted into a directory on tmpfs. Every binary is staged on
//! tmpfs first, so no exec pages anything in over the VM's 9p root.
//! Prints a markdown report between BEGIN-REPORT and END-REPORT.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rcx_dm::{Pool, PoolOptions, VolRef};

mod common;
use common::{fmt_range, median, which, Stage};

const BIN: &str = env!("CARGO_BIN_EXE_rcx-dm");
const POOL: &str = "benchrun";
const APPLETS: &[&str] = &["sh", "true", "ls", "cat", "ps"];

/// rcx-dm, unshare and chroot copied to tmpfs with the shared libraries they load.
struct Staged {
    rcx_dm: PathBuf,
    unshare: PathBuf,
    chroot: PathBuf,
    lib_dir: PathBuf,
}

fn stage(dir: &Path) -> Staged {
    let s = Stage::new(dir);
    Staged {
        rcx_dm: s.copy(Path::new(BIN), "rcx-dm"),
        unshare: s.copy(&which("unshare"), "unshare"),
        chroot: s.copy(&which("chroot"), "chroot"),
        lib_dir: s.lib_dir,
    }
}

/// The busybox root: the same files in the base volume and in the extracted directory.
fn populate(root: &Path) {
    for d in ["bin", "dev", "proc", "sys", "etc", "root", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy /bin/busybox (busybox-static)");
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
}

fn sh(cmd: &str) {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(out.status.success(), "`{cmd}`: {}", String::from_utf8_lossy(&out.stderr));
}

/// "rcx-dm: timings: snapshot=1.2ms ..." -> stage -> ms
fn parse_timings(stderr: &str) -> BTreeMap<String, f64> {
    let line = stderr.lines().find_map(|l| l.strip_prefix("rcx-dm: timings: ")).unwrap_or_else(|| panic!("no timings in:\n{stderr}"));
    line.split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.strip_suffix("ms")?.parse().ok()?))
        })
        .collect()
}

fn main() {
    let reps: usize = std::env::var("RCX_DM_BENCH_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    rcx_dm::dm::Dm::open().expect("device-mapper is required; run through tools/bench-run");
    let scratch = std::env::var_os("RCX_DM_SCRATCH").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let root = scratch.join("bench-run-root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();

    // The base: a 256M thin volume, ext4, busybox; marked read-only.
    let pool = Pool::create(&root, POOL, &PoolOptions { data_size: Some(20 << 30), ..Default::default() }).expect("pool create");
    let base = pool.create_thin(None, 256 << 20, Some("base")).expect("base volume");
    let dev = base.device.clone().expect("base active");
    sh(&format!("mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 {}", dev.display()));
    let mnt = scratch.join("bench-run-mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    nix::mount::mount(Some(&dev), &mnt, Some("ext4"), nix::mount::MsFlags::empty(), None::<&str>).unwrap();
    populate(&mnt);
    nix::mount::umount(&mnt).unwrap();
    pool.set_read_only(&VolRef::Name("base".into()), true).unwrap();
    // The extracted directory for unshare + chroot, on tmpfs.
    let dir = scratch.join("bench-run-dir");
    let _ = std::fs::remove_dir_all(&dir);
    populate(&dir);

    let staged = stage(&scratch.join("bench-run-bin"));
    let rcx = |opts: &[&str]| {
        let t = Instant::now();
        let out = Command::new(&staged.rcx_dm)
            .env("LD_LIBRARY_PATH", &staged.lib_dir)
            .env("RCX_DM_ROOT", &root)
            .env("RCX_DM_POOL", POOL)
            .args(["run", "--timings"])
            .args(opts)
            .args(["base", "--", "/bin/true"])
            .output()
            .expect("spawn rcx-dm");
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "rcx-dm run: {err}");
        (ms, parse_timings(&err))
    };
    let unshare = || {
        let t = Instant::now();
        let out = Command::new(&staged.unshare)
            .env("LD_LIBRARY_PATH", &staged.lib_dir)
            .args(["--fork", "--pid", "--mount", "--uts", "--ipc"])
            .arg(&staged.chroot)
            .arg(&dir)
            .arg("/bin/true")
            .output()
            .expect("spawn unshare");
        assert!(out.status.success(), "unshare: {}", String::from_utf8_lossy(&out.stderr));
        t.elapsed().as_secs_f64() * 1e3
    };

    // Warm caches once each, unmeasured.
    const DEFAULT: &[&str] = &["--rm"];
    const HOST_NET: &[&str] = &["--rm", "--net", "host"];
    const READ_ONLY: &[&str] = &["--read-only"];
    rcx(DEFAULT);
    rcx(HOST_NET);
    rcx(READ_ONLY);
    unshare();

    let (mut e2e, mut e2e_host, mut e2e_ro, mut uns) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut stages: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for _ in 0..reps {
        let (ms, t) = rcx(DEFAULT);
        e2e.push(ms);
        let in_process = t.get("total").copied().unwrap_or(0.0);
        for (k, v) in t {
            stages.entry(k).or_default().push(v);
        }
        stages.entry("process".into()).or_default().push(ms - in_process);
        e2e_host.push(rcx(HOST_NET).0);
        e2e_ro.push(rcx(READ_ONLY).0);
        uns.push(unshare());
    }
    let left = pool.volumes().unwrap();
    assert_eq!(left.len(), 1, "--rm left volumes behind: {left:?}");

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut r = String::new();
    r += &format!(
        "Kernel {}, {reps} interleaved rounds, medians. Base: 256M thin volume, ext4, busybox-static; pool on loop devices on tmpfs; \
         release build; every binary staged on tmpfs.\n\n",
        kernel.trim()
    );
    r += "| one container running /bin/true | median ms | min-max ms | vs unshare |\n|---|---|---|---|\n";
    let base_ms = median(&uns);
    for (what, v) in [
        ("`rcx-dm run --rm base -- /bin/true` (default `--net none`)", &e2e),
        ("`rcx-dm run --rm --net host base -- /bin/true`", &e2e_host),
        ("`rcx-dm run --read-only base -- /bin/true` (no snapshot: the base mounted read-only)", &e2e_ro),
        ("`unshare --fork --pid --mount --uts --ipc chroot DIR /bin/true`", &uns),
    ] {
        r += &format!("| {what} | {:.1} | {} | {:.2}x |\n", median(v), fmt_range(v), median(v) / base_ms);
    }
    r += "\nWhere the time of `rcx-dm run --rm base -- /bin/true` goes (its `--timings`, medians):\n\n";
    r += "| stage | median ms | min-max ms | what it is |\n|---|---|---|---|\n";
    for (k, what) in [
        ("snapshot", "Pool::snapshot: lock, intent, create_snap, set_transaction_id, record, thin device loaded"),
        ("activate", "device check and filesystem probe (superblock read with O_EXCL)"),
        ("cgroup", "mkdir of the run's cgroup v2 group (no limits asked here)"),
        ("mount", "in the child: mount tree private, mount the volume (ext4)"),
        ("namespaces+pivot_root", "clone3 into 5 new namespaces, /dev, pivot_root, old root detached, /proc, /sys, hostname, lo up"),
        ("exec", "execve of /bin/true, its run and exit, the kernel tearing its namespaces down (ext4 unmount: journal commit, superblock write into the snapshot), reaped"),
        ("teardown", "cgroup removed, snapshot deleted (--rm: remove device, delete, commit), record removed"),
        ("total", "everything inside `rcx-dm run` (sum of the above and small steps)"),
        ("process", "the rest of the end-to-end time: rcx-dm exec and start, pool open, dead-run check"),
    ] {
        if let Some(v) = stages.get(k) {
            r += &format!("| {k} | {:.1} | {} | {what} |\n", median(v), fmt_range(v));
        }
    }
    println!("BEGIN-REPORT\n{r}END-REPORT");
    drop(pool);
    let _ = Pool::open(&root, POOL).and_then(|p| p.destroy(true));
}
