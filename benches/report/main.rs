//! The benchmark report against the peers (not a test): run as root where device-mapper
//! exists, normally through `tools/bench`, which boots the VM once and turns what this prints
//! (CSV rows between BEGIN-CSV and END-CSV) into bench/REPORT.md, bench/report.csv and plots.
//!
//! Systems, each on its own fresh pool of the same geometry (sparse files on tmpfs behind loop
//! devices, 100G data, 1G metadata, 64K blocks, zeroing on, error_if_no_space; a 1G base):
//! rcx-dm through its CLI, its library and `rcx-dm serve` under containerd; containerd's
//! built-in devmapper snapshotter; the same kernel steps scripted with dmsetup; LVM thin.
//! Workloads, in this order (the order keeps containerd's collector, which removes snapshots
//! only after deletions, from touching what a later workload measures):
//!   1. snapshot of the base, made and activated, N times (rounds interleaved across systems)
//!   3. 8 clients at once, 50 snapshots each, against one client doing 50
//!   4. delete of those snapshots
//!   5. 100 containers from one image of 200 MB: pool space against the image
//!   6. `run --rm IMAGE /bin/true` end to end
//!   9. populate (from a tar, from a directory) and image import against GNU tar, rsync and
//!      `ctr image import` with overlayfs; peak RSS of populate and import
//!   2. snapshot latency with 10, 100, 1000 and 10000 volumes in the pool
//!
//! Knobs (environment): RCX_DM_BENCH_OPS (workload 1, default 200), RCX_DM_BENCH_REPS (samples
//! per cell of workload 2 and process floors, default 10), RCX_DM_BENCH_CLIENTS /
//! RCX_DM_BENCH_PER_CLIENT (8 / 50), RCX_DM_BENCH_IMAGE_MB (200), RCX_DM_BENCH_CONTAINERS (100),
//! RCX_DM_BENCH_RUNS (workload 6, 20), RCX_DM_BENCH_POPULATIONS (10,100,1000,10000),
//! RCX_DM_BENCH_POP_BUDGET (seconds a system may spend growing its pool for one level of
//! workload 2, default 1500; a level its growth rate so far says it cannot reach in time is
//! skipped), RCX_DM_BENCH_FILL_ROUNDS (workload 9's populate rounds, default 5),
//! RCX_DM_BENCH_IMPORT_ROUNDS (its import rounds, default 3), RCX_DM_BENCH_ONLY (comma list of
//! workload numbers).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rcx_dm::dm::Dm;
use rcx_dm::{Pool, PoolOptions};

#[path = "../common/mod.rs"]
mod common;
mod containerd;
mod fill;
mod image;
mod space;
mod systems;

use containerd::{Ctrd, CtrSystem};
use systems::{Dmsetup, Lvm, RcxCli, RcxLib, System};

const BIN: &str = env!("CARGO_BIN_EXE_rcx-dm");
const POOL: &str = "bench";

#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub data_bytes: u64,
    pub meta_bytes: u64,
    pub block_bytes: u64,
    pub base_bytes: u64,
}

impl Geometry {
    /// The low-water mark rcx-dm uses by default: 1% of the data blocks.
    pub fn low_water(&self) -> u64 {
        (self.data_bytes / self.block_bytes / 100).max(1)
    }
}

/// Executables staged on tmpfs with their libraries (exec over the VM's 9p root is slow).
#[derive(Clone)]
pub struct Tools {
    pub bin_dir: PathBuf,
    pub lib_dir: PathBuf,
}

impl Tools {
    fn stage(dir: &Path) -> Tools {
        let s = common::Stage::new(dir);
        s.copy(Path::new(BIN), "rcx-dm");
        for p in ["dmsetup", "busybox", "lvm", "containerd", "ctr", "containerd-shim-runc-v2", "runc", "mkfs.ext4", "blkid", "unshare", "chroot", "flock", "tar", "rsync"] {
            s.copy(&common::which(p), p);
        }
        for applet in ["sh", "awk"] {
            std::os::unix::fs::symlink("busybox", s.bin_dir.join(applet)).unwrap();
        }
        Tools { bin_dir: s.bin_dir, lib_dir: s.lib_dir }
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    pub fn path(&self) -> String {
        format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", self.bin_dir.display())
    }
}

pub fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).env("DM_DISABLE_UDEV", "1").output().unwrap();
    assert!(out.status.success(), "`{cmd}`: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(180);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub use common::lvm_conf;

/// One CSV row: workload, system, x (population, client count, ...), value.
pub fn row(w: &str, sys: &str, x: impl std::fmt::Display, v: f64) {
    println!("CSV,{w},{sys},{x},{v:.3}");
}

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn main() {
    let ops = knob("RCX_DM_BENCH_OPS", 200);
    let reps = knob("RCX_DM_BENCH_REPS", 10);
    let clients = knob("RCX_DM_BENCH_CLIENTS", 8);
    let per_client = knob("RCX_DM_BENCH_PER_CLIENT", 50);
    let budget = Duration::from_secs(knob("RCX_DM_BENCH_POP_BUDGET", 1500) as u64);
    let pops: Vec<usize> = std::env::var("RCX_DM_BENCH_POPULATIONS")
        .unwrap_or_else(|_| "10,100,1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let only: Option<Vec<u32>> = std::env::var("RCX_DM_BENCH_ONLY").ok().map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect());
    let want = |w: u32| only.as_ref().is_none_or(|o| o.contains(&w));

    Dm::open().expect("device-mapper is required; run through tools/bench");
    let scratch = std::env::var_os("RCX_DM_SCRATCH").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = scratch.join("bench-report");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tools = Tools::stage(&dir.join("stage"));
    let g = Geometry { data_bytes: 100 << 30, meta_bytes: 1 << 30, block_bytes: 64 << 10, base_bytes: 1 << 30 };

    println!("BEGIN-CSV");
    println!("META,kernel,{}", std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim());
    println!("META,cpus,{}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    for (k, v) in [("ops", ops), ("reps", reps), ("clients", clients), ("per_client", per_client), ("budget_s", budget.as_secs() as usize)] {
        println!("META,{k},{v}");
    }
    for (name, cmd) in [
        ("containerd", "containerd --version"),
        ("lvm", "lvm version | head -n1"),
        ("dmsetup", "dmsetup --version | head -n1"),
    ] {
        println!("META,{name},{}", sh(cmd).replace(',', ";").replace('\n', " "));
    }

    // rcx-dm's pool, shared by its CLI, library and serve (one system, three front ends).
    let root = dir.join("rcx-root");
    let opts = PoolOptions {
        data_size: Some(g.data_bytes),
        meta_size: Some(g.meta_bytes),
        block_size: g.block_bytes,
        overcommit: true,
        ..Default::default()
    };
    let pool = Pool::create(&root, POOL, &opts).expect("pool create");
    let base = pool.create_thin(Some(0), g.base_bytes, Some("base")).expect("base");
    sh(&format!("dd if=/dev/urandom of={} bs=1M count=16 oflag=direct status=none", base.device.unwrap().display()));
    let lib = RcxLib { pool: Pool::open(&root, POOL).unwrap(), dm: Dm::open().unwrap(), g };
    let cli = RcxCli { tools: tools.clone(), root: root.clone(), pool: POOL.into(), lib: RcxLib { pool: Pool::open(&root, POOL).unwrap(), dm: Dm::open().unwrap(), g } };
    let dms = Dmsetup::create(tools.clone(), &dir, g, Dm::open().unwrap());
    let lvm = Lvm::create(tools.clone(), &dir, g, Dm::open().unwrap());
    let ctrd = Ctrd::start(tools.clone(), &dir.join("ctrd"), &g, &root, POOL);
    let ctr_sys = |snapshotter: &'static str, label: &'static str, key: &'static str, rcx: Option<Pool>| CtrSystem {
        c: &ctrd,
        snapshotter,
        label,
        key,
        dm: Dm::open().unwrap(),
        g,
        rcx,
        count: std::sync::Mutex::new(2),
        next: std::sync::Mutex::new(0),
    };
    let serve = ctr_sys("rcx-dm", "rcx-dm serve via ctr", "rcx-serve", Some(Pool::open(&root, POOL).unwrap()));
    let devmapper = ctr_sys("devmapper", "containerd devmapper via ctr", "ctr-devmapper", None);
    // A committed parent for each snapshotter: containerd's snapshots descend from one.
    for s in [&serve, &devmapper] {
        s.snapshot(&["prepare", "first", ""]);
        s.snapshot(&["commit", "parent", "first"]);
        s.protect(&["parent".to_string()]);
    }
    let all: Vec<&dyn System> = vec![&cli, &lib, &serve, &devmapper, &dms, &lvm];
    for s in &all {
        println!("META,label,{},{}", s.key(), s.label());
    }

    // Warm-up: page cache of every staged binary, first connections.
    for s in &all {
        s.snap("warm");
        s.delete("warm");
    }
    let floor = |name: &str, cmd: &[&str]| {
        for _ in 0..reps {
            let t = Instant::now();
            let st = Command::new(tools.bin(cmd[0])).args(&cmd[1..]).env("LD_LIBRARY_PATH", &tools.lib_dir).output().unwrap();
            assert!(st.status.success(), "{cmd:?}");
            row("floor", name, 0, ms_since(t));
        }
    };
    floor("rcx-dm --version", &["rcx-dm", "--version"]);
    floor("dmsetup version", &["dmsetup", "version"]);
    floor("lvm version", &["lvm", "version"]);
    floor("ctr --version", &["ctr", "--version"]);
    floor("busybox true", &["busybox", "true"]);

    if want(1) {
        eprintln!("bench: workload 1: {ops} snapshots per system");
        let mut tags = Vec::new();
        for i in 0..ops {
            let tag = format!("w1-{i}");
            for s in &all {
                row("snap", s.key(), 0, s.snap(&tag));
            }
            tags.push(tag);
        }
        for s in &all {
            eprintln!("bench: cleaning up {}", s.key());
            s.delete_many(&tags);
        }
    }

    if want(3) {
        eprintln!("bench: workloads 3+4: {clients} clients x {per_client} snapshots, then deletes");
        for s in &all {
            s.concurrent(true);
            // One client alone, then `clients` at once.
            let serial: Vec<String> = (0..per_client).map(|i| format!("w3s-{i}")).collect();
            let t = Instant::now();
            for tag in &serial {
                s.snap(tag);
            }
            row("serial", s.key(), per_client, ms_since(t));
            s.delete_many(&serial);
            let t = Instant::now();
            std::thread::scope(|sc| {
                for c in 0..clients {
                    sc.spawn(move || {
                        for i in 0..per_client {
                            row("parallel-op", s.key(), clients, s.snap(&format!("w3-{c}-{i}")));
                        }
                    });
                }
            });
            row("parallel", s.key(), clients * per_client, ms_since(t));
            s.concurrent(false);
            let made: Vec<String> = (0..clients).flat_map(|c| (0..per_client).map(move |i| format!("w3-{c}-{i}"))).collect();
            s.keep(&made);
            // Workload 4: delete them, one call at a time; for the containerd systems the wall
            // time runs until the collector has the backend rid of them.
            let before = s.backend_count();
            let t = Instant::now();
            for c in 0..clients {
                for i in 0..per_client {
                    row("delete-op", s.key(), 0, s.delete(&format!("w3-{c}-{i}")));
                }
            }
            s.reclaimed(before, clients * per_client);
            row("delete-all", s.key(), clients * per_client, ms_since(t));
        }
    }

    let img = if want(5) || want(6) { Some(image::build(&dir.join("image"), knob("RCX_DM_BENCH_IMAGE_MB", 200), "rcxbench")) } else { None };
    if let (true, Some(img)) = (want(5), &img) {
        eprintln!("bench: workload 5: containers from one image, pool space");
        let n = knob("RCX_DM_BENCH_CONTAINERS", 100);
        println!("META,image_bytes,{}", img.content_bytes);
        println!("META,containers,{n}");
        space::rcx(&cli, &tools, &root, POOL, img, n);
        for s in [&serve, &devmapper] {
            space::ctr(s, img, n);
        }
        space::dmsetup(&dms, img, n);
        space::lvm(&lvm, img, n);
    }
    if let (true, Some(img)) = (want(6), &img) {
        eprintln!("bench: workload 6: run --rm IMAGE /bin/true");
        space::run(&tools, &root, POOL, &ctrd, &[&serve, &devmapper], img, knob("RCX_DM_BENCH_RUNS", 20));
    }

    if want(9) {
        eprintln!("bench: workload 9: populate and import against their peers");
        let f = fill::Fill { tools: &tools, root: &root, pool: POOL, dir: dir.join("fill") };
        std::fs::create_dir_all(&f.dir).unwrap();
        fill::populate(&f, knob("RCX_DM_BENCH_FILL_ROUNDS", 5));
        // Images of their own (other chain ids than workloads 5 and 6's, so nothing is shared).
        let big = image::build(&f.dir.join("image-big"), knob("RCX_DM_BENCH_IMAGE_MB", 200), "rcxfill");
        let small = image::build(&f.dir.join("image-small"), 50, "rcxfillsmall");
        fill::import(&f, &ctrd, &big, &small, knob("RCX_DM_BENCH_IMPORT_ROUNDS", 3));
        let _ = std::fs::remove_dir_all(&f.dir);
    }

    if want(2) {
        // Volumes per second each system grew its pool at, to skip a level it cannot reach
        // within the budget instead of spending the budget to find out.
        let mut rate: std::collections::HashMap<&str, f64> = Default::default();
        for &n in &pops {
            eprintln!("bench: workload 2: population {n}");
            for s in &all {
                let have = s.population();
                if let Some(r) = rate.get(s.key()) {
                    let eta = n.saturating_sub(have) as f64 / r;
                    if eta > budget.as_secs_f64() {
                        println!("META,population-cut,{},{n},{have},{eta:.0}", s.key());
                        continue;
                    }
                }
                // The rcx-dm front ends share one pool, grown once.
                let t = Instant::now();
                let got = s.populate(n, t + budget);
                if got - have >= 20 {
                    rate.insert(s.key(), (got - have) as f64 / t.elapsed().as_secs_f64());
                }
                if got < n {
                    println!("META,population-cut,{},{n},{got},", s.key());
                    continue;
                }
                let mut tags = Vec::new();
                for i in 0..reps {
                    let tag = format!("w2-{n}-{i}");
                    row("population", s.key(), n, s.snap(&tag));
                    tags.push(tag);
                }
                // containerd removes in its collector: keep those (the population grows by
                // `reps`) rather than measure the next level during a collection.
                if s.backend_count() == 0 {
                    s.delete_many(&tags);
                }
            }
        }
    }
    println!("END-CSV");

    ctrd.stop();
    lvm.teardown();
    drop(all);
    drop(cli);
    drop(lib);
    let _ = Pool::open(&root, POOL).and_then(|p| p.destroy(true));
    let _ = Command::new("sh").args(["-c", "dmsetup ls | awk '/^bdm-/ {print $1}' | sort -r | xargs -r -n1 dmsetup remove"]).status();
}
