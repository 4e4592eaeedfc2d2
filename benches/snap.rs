//! Snapshot latency benchmark (not a test): run as root where device-mapper exists, normally
//! through `tools/bench-snap`, which boots the VM and writes bench/snap.md.
//!
//! Measures one operation = "snapshot an active origin and activate the snapshot", done
//!   - by the rcx-dm CLI (one process per operation, like a user or a shell script),
//!   - in-process through the library (`Pool::snapshot`),
//!   - by the same kernel steps scripted with dmsetup (status, suspend, message, resume,
//!     message, create: what a hand-written tool does, one process per step),
//! in interleaved rounds on the same pool, then the CLI's latency with 10, 100 and 1000
//! volumes already in the pool. Prints a markdown report between BEGIN/END markers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rcx_dm::dm::{Dm, ThinPoolStatus};
use rcx_dm::{Pool, PoolOptions, VolRef};

mod common;
use common::{fmt_range, median, which, Stage};

const BIN: &str = env!("CARGO_BIN_EXE_rcx-dm");
const POOL: &str = "bench";

fn main() {
    let reps: usize = std::env::var("RCX_DM_BENCH_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let dm = Dm::open().expect("device-mapper is required; run through tools/bench-snap");
    let scratch = std::env::var_os("RCX_DM_SCRATCH").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let root = scratch.join("bench-root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();

    let opts = PoolOptions { data_size: Some(100 << 30), meta_size: Some(1 << 30), ..Default::default() };
    let pool = Pool::create(&root, POOL, &opts).expect("pool create");
    let origin = pool.create_thin(Some(0), 1 << 30, None).expect("origin");
    // Give the origin mappings so create_snap has real metadata to share.
    let dev = origin.device.clone().expect("origin active");
    std::fs::write(&dev, vec![0x5au8; 16 << 20]).expect("write origin");

    let stage = Stage::new(&scratch.join("bench-bin"));
    let rcx_dm = stage.copy(Path::new(BIN), "rcx-dm");
    stage.copy(&which("dmsetup"), "dmsetup");
    let busybox = stage.copy(&which("busybox"), "busybox");
    for applet in ["sh", "awk"] {
        std::os::unix::fs::symlink("busybox", stage.bin_dir.join(applet)).unwrap();
    }
    let cli = |root: &Path| {
        let t = Instant::now();
        let out = Command::new(&rcx_dm)
            .env("LD_LIBRARY_PATH", &stage.lib_dir)
            .args(["snap", "-", "0"])
            .env("RCX_DM_ROOT", root)
            .env("RCX_DM_POOL", POOL)
            .output()
            .expect("spawn rcx-dm");
        assert!(out.status.success(), "rcx-dm snap: {}", String::from_utf8_lossy(&out.stderr));
        t.elapsed().as_secs_f64() * 1e3
    };
    let pool_dev = dm.info(&format!("{POOL}-pool")).unwrap().expect("pool device").dev;
    let mut next_script_id = 8_000_000u32;
    let mut script = || {
        let id = next_script_id;
        next_script_id += 1;
        let body = format!(
            "set -e\n\
             T=$(dmsetup status {POOL}-pool | awk '{{print $4}}')\n\
             dmsetup suspend {POOL}-0\n\
             dmsetup message {POOL}-pool 0 \"create_snap {id} 0\"\n\
             dmsetup resume {POOL}-0\n\
             dmsetup message {POOL}-pool 0 \"set_transaction_id $T $((T+1))\"\n\
             dmsetup create {POOL}-s{id} --table \"0 2097152 thin {pool_dev} {id}\"\n",
        );
        let t = Instant::now();
        // busybox sh and awk, dmsetup from the staged copies: every exec is local.
        let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", stage.bin_dir.display());
        let out = Command::new(&busybox)
            .args(["sh", "-c", &body])
            .env("PATH", path)
            .env("LD_LIBRARY_PATH", &stage.lib_dir)
            .env("DM_DISABLE_UDEV", "1")
            .output()
            .expect("sh");
        assert!(out.status.success(), "dmsetup script: {}", String::from_utf8_lossy(&out.stderr));
        (id, t.elapsed().as_secs_f64() * 1e3)
    };

    // Warm caches (binary, libraries) once each, unmeasured.
    cli(&root);
    pool.snapshot(None, &VolRef::Id(0), None, None).unwrap();
    let mut script_ids = vec![script().0];

    let (mut c, mut l, mut s) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        c.push(cli(&root));
        let t = Instant::now();
        pool.snapshot(None, &VolRef::Id(0), None, None).unwrap();
        l.push(t.elapsed().as_secs_f64() * 1e3);
        let (id, ms) = script();
        script_ids.push(id);
        s.push(ms);
    }
    // Take the dmsetup-made volumes out again so the population below is rcx-dm's alone.
    for id in &script_ids {
        dm.remove(&format!("{POOL}-s{id}")).unwrap();
        let st = status(&dm);
        dm.message(&format!("{POOL}-pool"), &format!("delete {id}")).unwrap();
        dm.message(&format!("{POOL}-pool"), &format!("set_transaction_id {0} {1}", st.transaction_id, st.transaction_id + 1))
            .unwrap();
    }

    let mut report = String::new();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    report += &format!(
        "Kernel {}, {} repetitions per row, pool: 100G sparse data, 1G metadata, 64K blocks, loop devices on tmpfs.\n\n",
        kernel.trim(),
        reps
    );
    report += "| snapshot of an active origin + activation | median ms | min-max ms | vs CLI |\n|---|---|---|---|\n";
    let cm = median(&c);
    for (name, v) in [("rcx-dm CLI (one process per op)", &c), ("rcx-dm library, in-process", &l), ("dmsetup script (same kernel steps)", &s)] {
        report += &format!("| {name} | {:.1} | {} | {:.2}x |\n", median(v), fmt_range(v), median(v) / cm);
    }

    report += "\n| volumes in the pool | CLI median ms | min-max ms | vs 10 |\n|---|---|---|---|\n";
    let mut base = None;
    for target in [10usize, 100, 1000] {
        // Fill with inactive snapshots (most volumes of a real pool are inactive layers).
        let mut have = pool.volumes().unwrap().len();
        while have < target {
            let v = pool.snapshot(None, &VolRef::Id(0), None, None).unwrap();
            pool.deactivate_volume(&VolRef::Id(v.id)).unwrap();
            have += 1;
        }
        let mut made = Vec::new();
        let mut t = Vec::new();
        for _ in 0..reps {
            t.push(cli(&root));
        }
        // Drop what was measured to keep the population exact for the next row.
        for v in pool.volumes().unwrap().iter().rev().take(reps) {
            made.push(v.id);
        }
        for id in made {
            pool.delete(&VolRef::Id(id), true).unwrap();
        }
        let m = median(&t);
        let b = *base.get_or_insert(m);
        report += &format!("| {target} | {m:.1} | {} | {:.2}x |\n", fmt_range(&t), m / b);
    }
    println!("BEGIN-REPORT\n{report}END-REPORT");
    drop(pool);
    Pool::open(&root, POOL).unwrap().destroy(true).expect("teardown");
}

fn status(dm: &Dm) -> ThinPoolStatus {
    let lines = dm.status(&format!("{POOL}-pool")).unwrap();
    ThinPoolStatus::parse(&lines[0].params).unwrap()
}
