//! Concurrent rcx-dm processes on one pool: the pool lock serialises the short critical
//! sections, every operation succeeds, and the pool ends up consistent (store, kernel,
//! transaction id, metadata).

use std::collections::BTreeSet;
use std::process::Output;
use std::sync::Barrier;
use std::time::Instant;

use crate::common::*;

const MIB: usize = 1 << 20;
const DATA_LEN: usize = 4 * MIB;
const ORIGIN_SEED: u64 = 0xc0c0_0000;

/// Run several workers at once, each a sequence of rcx-dm commands run one after another
/// (so at any time one rcx-dm process per worker is running). Returns each worker's outputs.
fn run_workers(s: &Scenario, workers: Vec<Vec<Vec<String>>>) -> Vec<Vec<(Vec<String>, Output)>> {
    let barrier = Barrier::new(workers.len());
    std::thread::scope(|sc| {
        let handles: Vec<_> = workers
            .into_iter()
            .map(|cmds| {
                let barrier = &barrier;
                sc.spawn(move || {
                    barrier.wait();
                    cmds.into_iter()
                        .map(|c| {
                            let args: Vec<&str> = c.iter().map(String::as_str).collect();
                            let out = s.cli(&args);
                            (c, out)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("worker thread")).collect()
    })
}

fn cmd(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// Every command succeeded; returns the ids of the snapshots they report ("created snapshot N").
fn all_ok(results: &[Vec<(Vec<String>, Output)>]) -> Vec<u32> {
    let mut failures = Vec::new();
    let mut ids = Vec::new();
    for (c, out) in results.iter().flatten() {
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            failures.push(format!(
                "rcx-dm {} -> {}: {}{}",
                c.join(" "),
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            ));
            continue;
        }
        if c[0] == "snap" {
            let id = stdout
                .lines()
                .find_map(|l| l.strip_prefix("created snapshot "))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or_else(|| panic!("no snapshot id in the output of {c:?}: {stdout}"));
            ids.push(id);
        }
    }
    assert!(failures.is_empty(), "{} concurrent commands failed:\n{}", failures.len(), failures.join("\n"));
    ids
}

/// The pool as a whole agrees with `expect`: the store lists exactly those ids, all active and
/// none suspended, the transaction id counts the committed operations, no intent is pending,
/// origin 0 and the snapshots in `sample` read the origin's data; then, torn down, the
/// metadata passes thin_check and thin_ls lists exactly the store's ids.
fn check_pool(s: &Scenario, expect: &BTreeSet<u32>, committed_ops: u64, data0: &[u8], sample: &[u32]) {
    let dm = dm();
    assert!(!s.pool_dir().join("intent.json").exists(), "an intent is left pending");
    let list = s.json(&["list", "--json"]);
    let vols = list.as_array().expect("list is an array");
    let ids: Vec<u32> = vols.iter().map(|v| v["id"].as_u64().unwrap() as u32).collect();
    let distinct: BTreeSet<u32> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), ids.len(), "duplicate ids in list: {ids:?}");
    assert_eq!(&distinct, expect, "store ids");
    for v in vols {
        let id = v["id"].as_u64().unwrap() as u32;
        assert_eq!(v["active"], true, "volume {id} is not active: {v}");
        let i = dm.info(&s.dm_name(id)).unwrap().unwrap_or_else(|| panic!("volume {id} has no dm device"));
        assert!(!i.suspended, "volume {id} is left suspended");
    }
    assert_eq!(s.txid(), committed_ops, "transaction id vs the number of committed operations");
    for &id in std::iter::once(&0).chain(sample) {
        let dev = s.device(&["activate", &id.to_string()]);
        assert!(read_direct(&dev, DATA_LEN) == data0, "volume {id} does not hold origin 0's data");
    }
    s.ok(&["pool", "deactivate"]);
    let meta: BTreeSet<u32> = s.offline_metadata_ids().into_iter().collect();
    assert_eq!(&meta, expect, "thin ids in the kernel's metadata (thin_ls) vs the store");
}

fn pool_with_origin(s: &Scenario) -> Vec<u8> {
    s.ok(&["pool", "create", "--data-size", "1G"]);
    let origin = s.device(&["thin", "create", "0", "--size", "16M"]);
    let data0 = pattern(ORIGIN_SEED, DATA_LEN);
    write_direct(&origin, &data0);
    data0
}

#[test]
fn concurrency_4_processes_make_50_snapshots_each_of_one_active_origin() {
    let s = Scenario::new("c4x50");
    let data0 = pool_with_origin(&s);
    let t = Instant::now();
    let workers = (0..4).map(|_| (0..50).map(|_| cmd(&["snap", "-", "0"])).collect()).collect();
    let results = run_workers(&s, workers);
    let elapsed = t.elapsed();
    let ids = all_ok(&results);
    println!(
        "200 concurrent snapshots (4 workers) in {:.1}s, {:.0} ms each",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / 200.0
    );
    let snaps: BTreeSet<u32> = ids.iter().copied().collect();
    assert_eq!(ids.len(), 200);
    assert_eq!(snaps.len(), 200, "two snapshots were given the same id: {ids:?}");
    assert!(!snaps.contains(&0));
    let mut expect = snaps.clone();
    expect.insert(0);
    // Each snapshot's parent is 0.
    for v in s.json(&["list", "--json"]).as_array().unwrap() {
        if v["id"] != 0 {
            assert_eq!(v["parent"], 0, "{v}");
        }
    }
    let sample = [ids[0], ids[99], ids[199]];
    // 1 create + 200 snapshots.
    check_pool(&s, &expect, 201, &data0, &sample);
}

#[test]
fn concurrency_snapshots_and_deletes_at_once() {
    let s = Scenario::new("cmix");
    let data0 = pool_with_origin(&s);
    // 40 snapshots with given ids, made by 4 workers at once.
    let pre = run_workers(
        &s,
        (0..4).map(|w| (1..=10).map(|i| cmd(&["snap", &(w * 10 + i).to_string(), "0"])).collect()).collect(),
    );
    all_ok(&pre);
    assert_eq!(s.store_ids(), (0..=40).collect::<Vec<u32>>());
    // Now at once: two workers delete 1..=30 (active: --force); one snapshots the origin 25
    // times; one snapshots the surviving snapshots 31..=40 (snapshots of snapshots) 20 times;
    // one keeps reading the pool (`list --json`, `pool status --json`) meanwhile.
    let t = Instant::now();
    let workers = vec![
        (1..=15).map(|i| cmd(&["delete", &i.to_string(), "--force"])).collect(),
        (16..=30).map(|i| cmd(&["delete", &i.to_string(), "--force"])).collect(),
        (0..25).map(|_| cmd(&["snap", "-", "0"])).collect(),
        (0..20).map(|i| cmd(&["snap", "-", &(31 + i % 10).to_string()])).collect(),
        (0..30)
            .map(|i| if i % 2 == 0 { cmd(&["list", "--json"]) } else { cmd(&["pool", "status", "--json"]) })
            .collect(),
    ];
    let results = run_workers(&s, workers);
    println!("30 deletes and 45 snapshots at once in {:.1}s", t.elapsed().as_secs_f64());
    let new = all_ok(&results);
    // Every concurrent listing is a sane view: valid JSON, ids distinct, 0 always there.
    for (c, o) in &results[4] {
        if c[0] == "list" {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("list --json output");
            let ids: Vec<u64> = v.as_array().unwrap().iter().map(|x| x["id"].as_u64().unwrap()).collect();
            let set: BTreeSet<u64> = ids.iter().copied().collect();
            assert_eq!(set.len(), ids.len(), "duplicate ids in a concurrent list: {ids:?}");
            assert!(set.contains(&0));
        }
    }
    let dm = dm();
    for id in 1..=30 {
        assert!(dm.info(&s.dm_name(id)).unwrap().is_none(), "deleted volume {id} still has a device");
    }
    let mut expect: BTreeSet<u32> = (31..=40).collect();
    expect.insert(0);
    for id in &new {
        assert!(expect.insert(*id), "snapshot id {id} given twice or to a live volume");
    }
    assert_eq!(expect.len(), 1 + 10 + 45);
    // Snapshots of snapshots have the right parents.
    let snap_of_snap: Vec<u32> = results[3]
        .iter()
        .map(|(_, o)| {
            let out = String::from_utf8_lossy(&o.stdout);
            out.lines()
                .find_map(|l| l.strip_prefix("created snapshot "))
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    for v in s.json(&["list", "--json"]).as_array().unwrap() {
        let id = v["id"].as_u64().unwrap() as u32;
        if let Some(k) = snap_of_snap.iter().position(|x| *x == id) {
            assert_eq!(v["parent"], 31 + (k as u64 % 10), "{v}");
        }
    }
    // 1 create + 40 snapshots + 30 deletes + 45 snapshots.
    let sample = [31, 40, new[0], *snap_of_snap.last().unwrap()];
    check_pool(&s, &expect, 1 + 40 + 30 + 45, &data0, &sample);
}

/// Reads take no lock: a listing that races a deactivation (the device vanishing between its
/// info and status ioctls) reports the volume inactive instead of failing. One thread toggles a
/// volume's device 300 times while another lists and inspects it; every read succeeds.
#[test]
fn concurrency_reads_race_devices_coming_and_going() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let s = Scenario::new("crace");
    pool_with_origin(&s);
    s.ok(&["snap", "1", "0"]);
    let pool = lib_pool(&s);
    let one = rcx_dm::VolRef::Id(1);
    let done = AtomicBool::new(false);
    let (mut reads, mut seen_active, mut seen_inactive) = (0u32, 0u32, 0u32);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            for i in 0..300 {
                pool.deactivate_volume(&one).unwrap_or_else(|e| panic!("deactivate #{i}: {e}"));
                pool.activate_volume(&one).unwrap_or_else(|e| panic!("activate #{i}: {e}"));
            }
            done.store(true, Ordering::SeqCst);
        });
        while !done.load(Ordering::SeqCst) {
            let all = pool.volumes().unwrap_or_else(|e| panic!("volumes() while devices come and go: {e}"));
            let v = pool.volume(&one).unwrap_or_else(|e| panic!("volume(1) while its device comes and goes: {e}"));
            assert_eq!(all.len(), 2);
            assert_eq!(v.active, v.device.is_some());
            if v.active { seen_active += 1 } else { seen_inactive += 1 }
            reads += 1;
        }
    });
    println!("{reads} reads raced 300 deactivate/activate cycles ({seen_active} saw it active, {seen_inactive} inactive)");
    assert!(reads >= 20, "the reader hardly ran ({reads} reads): the race was not exercised");
    assert!(seen_active > 0 && seen_inactive > 0, "the reads never saw both states");
}
