//! What a snapshot costs a writer (not a test): run as root where device-mapper exists,
//! normally through `tools/bench-classic`, which boots the VM and writes bench/classic.md.
//!
//! Measures, with O_DIRECT writes (each block written for the first time since the snapshots
//! were taken, so every write pays the copy-on-write or the block allocation):
//!   - write throughput to a classic origin with 0, 1 and 4 classic snapshots (chunk 4K and 64K),
//!   - write throughput to a thin volume with 0, 1 and 4 thin snapshots (64K pool blocks),
//!     both in 1 MiB and in 4 KiB writes;
//!   - merge throughput: a snapshot with 32 MiB of changes merged back into its origin.
//!
//! Prints a markdown report between BEGIN/END markers.

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rcx_dm::classic::{Classic, OriginSource, SnapshotOptions};
use rcx_dm::{Pool, PoolOptions, VolRef};

mod common;
use common::{median, range};

const POOL: &str = "cbench";
const MIB: usize = 1 << 20;
/// Bytes written per measurement: 1 MiB writes / 4 KiB writes.
const BIG_TOTAL: usize = 32 * MIB;
const SMALL_TOTAL: usize = 4 * MIB;
const DEV_BYTES: u64 = 64 << 20;

/// Writes `total` bytes in `bs` writes at the start of `dev` with O_DIRECT, then fsync;
/// returns MB/s (10^6 bytes per second).
fn write_mb_s(dev: &Path, total: usize, bs: usize, fill: u8) -> f64 {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .unwrap_or_else(|e| panic!("opening {}: {e}", dev.display()));
    let mut buf = vec![fill; bs + 4096];
    let at = buf.as_ptr().align_offset(4096);
    let chunk = &mut buf[at..at + bs];
    let t = Instant::now();
    for (i, off) in (0..total).step_by(bs).enumerate() {
        chunk[0] = i as u8; // not all identical
        f.write_all_at(chunk, off as u64).unwrap_or_else(|e| panic!("writing {}: {e}", dev.display()));
    }
    f.sync_all().unwrap();
    total as f64 / 1e6 / t.elapsed().as_secs_f64()
}

struct Row {
    what: String,
    snaps: usize,
    big: f64,
    big_range: (f64, f64),
    small: f64,
}

fn classic_case(c: &Classic, chunk: u64, snaps: usize, bs: usize, total: usize) -> f64 {
    let o = c.create_origin("o", OriginSource::Size(DEV_BYTES)).expect("origin");
    let dev = o.device.expect("origin active");
    // Blocks exist before the snapshots, so the 0-snapshot case is a plain overwrite.
    write_mb_s(&dev, total, MIB.min(total), 0x11);
    for i in 0..snaps {
        let opts = SnapshotOptions { chunk_bytes: chunk, ..SnapshotOptions::new(48 << 20) };
        c.create_snapshot(&format!("s{i}"), "o", &opts).expect("cow");
    }
    let r = write_mb_s(&dev, total, bs, 0x22);
    for i in 0..snaps {
        c.delete_snapshot(&format!("s{i}")).expect("cow delete");
    }
    c.delete_origin("o").expect("origin delete");
    r
}

fn thin_case(pool: &Pool, snaps: usize, bs: usize, total: usize) -> f64 {
    let v = pool.create_thin(Some(0), DEV_BYTES, None).expect("thin");
    let dev = v.device.expect("thin active");
    write_mb_s(&dev, total, MIB.min(total), 0x11);
    let mut ids = Vec::new();
    for _ in 0..snaps {
        ids.push(pool.snapshot(None, &VolRef::Id(0), None, None).expect("snap").id);
    }
    let r = write_mb_s(&dev, total, bs, 0x22);
    for id in ids.into_iter().chain([0]) {
        pool.delete(&VolRef::Id(id), true).expect("delete");
    }
    r
}

/// Seconds to merge `BIG_TOTAL` bytes of changes, and MB/s.
fn merge_case(c: &Classic, chunk: u64) -> (f64, f64) {
    let o = c.create_origin("m", OriginSource::Size(DEV_BYTES)).expect("origin");
    write_mb_s(o.device.as_ref().unwrap(), BIG_TOTAL, MIB, 0x11);
    let opts = SnapshotOptions { chunk_bytes: chunk, ..SnapshotOptions::new(48 << 20) };
    let s = c.create_snapshot("ms", "m", &opts).expect("cow");
    write_mb_s(s.device.as_ref().unwrap(), BIG_TOTAL, MIB, 0x33);
    let t = Instant::now();
    c.wait_merge("ms", |_| {}).expect("merge");
    let secs = t.elapsed().as_secs_f64();
    c.delete_origin("m").expect("origin delete");
    (secs, BIG_TOTAL as f64 / 1e6 / secs)
}

fn main() {
    let reps: usize = std::env::var("RCX_DM_BENCH_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    rcx_dm::dm::Dm::open().expect("device-mapper is required; run through tools/bench-classic");
    let scratch = std::env::var_os("RCX_DM_SCRATCH").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let root = scratch.join("cbench-root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let pool = Pool::create(&root, POOL, &PoolOptions { data_size: Some(4 << 30), overcommit: true, ..Default::default() }).expect("pool");
    let c = Classic::new(&pool);

    // Every configuration once per round, rounds repeated: a slow spell on a shared machine
    // spreads over all configurations instead of skewing one.
    #[derive(Clone, Copy)]
    enum Kind {
        Classic(u64),
        Thin,
    }
    let configs: Vec<(Kind, usize)> = [Kind::Classic(4096), Kind::Classic(64 << 10), Kind::Thin]
        .into_iter()
        .flat_map(|k| [0, 1, 4].map(|n| (k, n)))
        .collect();
    let mut big = vec![Vec::new(); configs.len()];
    let mut small = vec![Vec::new(); configs.len()];
    let mut merges = vec![Vec::new(); 2];
    for round in 0..reps {
        for (i, (kind, snaps)) in configs.iter().enumerate() {
            for (bs, total, out) in [(MIB, BIG_TOTAL, &mut big[i]), (4096, SMALL_TOTAL, &mut small[i])] {
                let r = match kind {
                    Kind::Classic(chunk) => classic_case(&c, *chunk, *snaps, bs, total),
                    Kind::Thin => thin_case(&pool, *snaps, bs, total),
                };
                out.push(r);
            }
        }
        for (i, chunk) in [4096u64, 64 << 10].into_iter().enumerate() {
            merges[i].push(merge_case(&c, chunk));
        }
        eprintln!("round {} of {reps} done", round + 1);
    }
    let mut rows = Vec::new();
    for (i, (kind, snaps)) in configs.iter().enumerate() {
        let what = match kind {
            Kind::Classic(chunk) => format!("classic origin, chunk {}K", chunk >> 10),
            Kind::Thin => "thin volume, 64K blocks".to_string(),
        };
        rows.push(Row { what, snaps: *snaps, big: median(&big[i]), big_range: range(&big[i]), small: median(&small[i]) });
    }
    let merges: Vec<(u64, f64, f64)> = [4096u64, 64 << 10]
        .into_iter()
        .zip(&merges)
        .map(|(chunk, runs)| {
            let secs = median(&runs.iter().map(|r| r.0).collect::<Vec<_>>());
            let mbs = median(&runs.iter().map(|r| r.1).collect::<Vec<_>>());
            (chunk, secs, mbs)
        })
        .collect();

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut r = format!(
        "Kernel {}, median of {reps} runs per cell. Backing: sparse files on tmpfs behind loop devices; thin pool with \
         64K blocks, block zeroing on. Each cell writes {} MiB in 1 MiB writes or {} MiB in 4 KiB writes with O_DIRECT \
         (then fsync) to blocks written once before the snapshots were taken, so every write is the first since the \
         snapshots.\n\n",
        kernel.trim(),
        BIG_TOTAL / MIB,
        SMALL_TOTAL / MIB
    );
    r += "| writes to | snapshots | MB/s, 1 MiB writes | (min-max) | vs none | MB/s, 4 KiB writes | vs none |\n|---|---|---|---|---|---|---|\n";
    let mut base = (0.0, 0.0);
    for row in &rows {
        if row.snaps == 0 {
            base = (row.big, row.small);
        }
        r += &format!(
            "| {} | {} | {:.1} | {:.1}-{:.1} | {:.2}x | {:.1} | {:.2}x |\n",
            row.what,
            row.snaps,
            row.big,
            row.big_range.0,
            row.big_range.1,
            row.big / base.0,
            row.small,
            row.small / base.1
        );
    }
    r += "\n| merge (snapshot-merge, `merge --wait`) | data merged | seconds | MB/s |\n|---|---|---|---|\n";
    for (chunk, secs, mbs) in merges {
        r += &format!("| chunk {}K | {} MiB | {secs:.2} | {mbs:.1} |\n", chunk >> 10, BIG_TOTAL / MIB);
    }
    println!("BEGIN-REPORT\n{r}END-REPORT");
    drop(c);
    pool.destroy(true).expect("teardown");
}
