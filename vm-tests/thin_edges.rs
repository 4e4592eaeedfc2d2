//! The kernel's edge cases and bad input: 24-bit ids, 1000 snapshots of one volume, a chain of
//! 100 snapshots of snapshots, blocks given back on delete, block-size limits, copy-on-write
//! isolation both ways, refused input that changes nothing, and a pool that runs out of space.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rcx_dm::dm::{node, PoolMode};
use rcx_dm::{Pool, VolRef};

use crate::common::*;

const K: u64 = 1 << 10;
const M: u64 = 1 << 20;

fn txid(s: &Scenario) -> u64 {
    kernel_status(s).transaction_id
}

fn data_used(s: &Scenario) -> u64 {
    kernel_status(s).data_used_blocks
}

/// Volume ids through the library.
fn ids(s: &Scenario) -> Vec<u32> {
    lib_pool(s).volumes().unwrap().iter().map(|v| v.id).collect()
}

/// Everything a refused command must leave alone: the volumes (with active flags), the
/// kernel's transaction id, the pool's dm devices and /dev/mapper links, the store's files.
/// Read in-process through the library: a process spawn costs ~0.5 s under emulation.
#[derive(Debug, PartialEq)]
struct State {
    volumes: Option<Vec<rcx_dm::Volume>>,
    txid: Option<u64>,
    devices: Vec<String>,
    links: Vec<String>,
    files: Vec<String>,
}

fn state(s: &Scenario) -> State {
    let prefix = s.dm_prefix();
    let mut devices: Vec<String> = dm().list().unwrap().into_iter().filter(|n| n.starts_with(&prefix)).collect();
    devices.sort();
    let mut links: Vec<String> = std::fs::read_dir(node::MAPPER_DIR)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    links.sort();
    let mut files = Vec::new();
    walk(&s.root, &s.root, &mut files);
    files.sort();
    let pool = Pool::open(&s.root, &s.pool).ok();
    State {
        volumes: pool.as_ref().map(|p| p.volumes().unwrap()),
        txid: pool.and_then(|p| p.status().unwrap().kernel).map(|k| k.transaction_id),
        devices,
        links,
        files,
    }
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(base, &p, out);
        } else if e.file_name() != "lock" {
            out.push(p.strip_prefix(base).unwrap().display().to_string());
        }
    }
}

/// Run a command that must be refused; its message must contain every one of `needles`, and
/// nothing may change.
fn refused(s: &Scenario, args: &[&str], needles: &[&str]) -> String {
    let before = state(s);
    let err = s.fails(args);
    for n in needles {
        assert!(err.contains(n), "rcx-dm {args:?}: message lacks '{n}':\n{err}");
    }
    assert!(!err.contains("panicked"), "rcx-dm {args:?} panicked:\n{err}");
    assert_eq!(state(s), before, "rcx-dm {args:?} was refused but changed something");
    err
}

fn assert_thin_table(s: &Scenario, id: u32, sectors: u64) {
    let dm = dm();
    let pool = dm.info(&rcx_dm::pool::pool_dm_name(&s.pool)).unwrap().expect("pool device is live");
    let table = dm.table(&s.dm_name(id)).unwrap();
    assert_eq!(table.len(), 1, "{table:?}");
    assert_eq!(
        (table[0].start, table[0].length, table[0].target.as_str(), table[0].params.clone()),
        (0, sectors, "thin", format!("{}:{} {id}", pool.dev.major, pool.dev.minor))
    );
}

fn mapper(s: &Scenario, id: u32) -> PathBuf {
    node::mapper_path(&s.dm_name(id))
}

/// 4 KiB pages filled with `who@offset;` so any page read back says where it came from.
fn tagged(who: &str, offset: u64, len: usize) -> Vec<u8> {
    format!("{who}@{offset};").into_bytes().into_iter().cycle().take(len).collect()
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(40)]).into_owned()
}

#[test]
fn ids_at_the_24_bit_limit() {
    let s = Scenario::new("ids");
    s.ok(&["pool", "create", "--data-size", "1G"]);
    let dev = s.device(&["thin", "create", "16777215", "--size", "16M"]);
    assert_eq!(dev, mapper(&s, 16_777_215));
    assert_thin_table(&s, 16_777_215, (16 * M) / 512);
    write_direct_at(&dev, 0, &tagged("max", 0, 8192));
    assert_eq!(read_direct_at(&dev, 0, 8192), tagged("max", 0, 8192));
    // A snapshot of it, and the greatest id as a snapshot's id.
    s.ok(&["snap", "16777214", "16777215"]);
    assert_eq!(read_direct_at(&mapper(&s, 16_777_214), 0, 8192), tagged("max", 0, 8192));
    s.ok(&["delete", "--force", "16777214"]);
    s.ok(&["snap", "1", "16777215"]);
    s.ok(&["delete", "--force", "16777215"]);
    s.ok(&["snap", "16777215", "1"]);
    assert_eq!(read_direct_at(&mapper(&s, 16_777_215), 0, 8192), tagged("max", 0, 8192));
    assert_thin_table(&s, 16_777_215, (16 * M) / 512);

    for args in [
        &["thin", "create", "16777216", "--size", "16M"][..],
        &["snap", "16777216", "1"],
        &["thin", "create", "4294967296", "--size", "16M"],
        &["thin", "create", "99999999999999999999999", "--size", "16M"],
    ] {
        refused(&s, args, &["16777215", "24 bits"]);
    }
    refused(&s, &["activate", "16777216"], &["16777215"]);
    refused(&s, &["delete", "16777216"], &["16777215"]);
    assert_eq!(ids(&s), [1, 16_777_215]);
}

#[test]
fn a_thousand_snapshots_of_one_volume() {
    let s = Scenario::new("k1000");
    s.ok(&["pool", "create", "--data-size", "1G"]);
    let dev0 = s.device(&["thin", "create", "0", "--size", "16M"]);
    write_direct_at(&dev0, 0, &tagged("origin", 0, 64 * K as usize));
    let used = data_used(&s);
    let tx = txid(&s);
    let meta_before = kernel_status(&s).meta_used_blocks;

    let pool = Pool::open(&s.root, &s.pool).unwrap();
    let start = Instant::now();
    let mut lap = start;
    for i in 1..=1000u32 {
        let v = pool.snapshot(None, &VolRef::Id(0), None, None).unwrap_or_else(|e| panic!("snapshot #{i}: {e}"));
        assert_eq!((v.id, v.parent, v.active), (i, Some(0), true));
        if i % 250 == 0 {
            println!("snapshots {}..{i}: {:.1} ms each", i - 249, lap.elapsed().as_secs_f64() * 1000.0 / 250.0);
            lap = Instant::now();
        }
    }
    let took = start.elapsed();
    println!("1000 snapshots of an active origin, each activated: {:.1} s", took.as_secs_f64());

    let st = kernel_status(&s);
    assert_eq!(st.transaction_id, tx + 1000, "one transaction per snapshot");
    assert_eq!(st.data_used_blocks, used, "snapshots share the origin's blocks");
    assert_eq!(st.mode, PoolMode::Rw);
    println!("metadata blocks: {meta_before} before, {} after", st.meta_used_blocks);
    let vols = pool.volumes().unwrap();
    assert_eq!(vols.len(), 1001);
    assert!(vols.iter().enumerate().all(|(i, v)| v.id == i as u32 && v.active && v.parent == (i > 0).then_some(0)));
    let live = dm().list().unwrap().into_iter().filter(|n| n.starts_with(&s.dm_prefix())).count();
    assert_eq!(live, 1002, "1001 thin devices and the pool");
    for id in [1, 500, 1000] {
        assert_eq!(read_direct_at(&mapper(&s, id), 0, 4096), tagged("origin", 0, 4096), "snapshot {id}");
    }
    // Every snapshot is its own device: a write to one is seen by no other.
    write_direct_at(&mapper(&s, 777), 0, &tagged("s777", 0, 4096));
    write_direct_at(&dev0, 0, &tagged("origin2", 0, 4096));
    for (id, who) in [(0, "origin2"), (776, "origin"), (777, "s777"), (778, "origin"), (1000, "origin")] {
        assert_eq!(show(&read_direct_at(&mapper(&s, id), 0, 4096)), show(&tagged(who, 0, 4096)), "volume {id}");
    }
}

#[test]
fn a_chain_of_100_snapshots_of_snapshots() {
    let s = Scenario::new("chain");
    s.ok(&["pool", "create", "--data-size", "1G"]);
    s.ok(&["thin", "create", "0", "--size", "8M"]);
    let pool = Pool::open(&s.root, &s.pool).unwrap();
    // Link i gets its own marker in 64K block i, then is snapshotted as link i+1.
    let start = Instant::now();
    for i in 0..100u32 {
        write_direct_at(&mapper(&s, i), i as u64 * 64 * K, &tagged("link", i as u64, 4096));
        let v = pool.snapshot(Some(i + 1), &VolRef::Id(i), None, None).unwrap_or_else(|e| panic!("snap {} {i}: {e}", i + 1));
        assert_eq!((v.id, v.parent), (i + 1, Some(i)));
    }
    println!("100 chained snapshots (with a marker write each): {:.1} s", start.elapsed().as_secs_f64());
    let markers = |id: u32| -> Vec<bool> {
        let all = read_direct_at(&mapper(&s, id), 0, 8 * M as usize);
        (0..100u64)
            .map(|i| {
                let page = &all[(i * 64 * K) as usize..][..4096];
                if page == tagged("link", i, 4096).as_slice() {
                    true
                } else {
                    assert!(page.iter().all(|b| *b == 0), "link {id}, block {i}: {}", show(page));
                    false
                }
            })
            .collect()
    };
    // The last link sees every marker; link k sees exactly the markers of links 0..=k.
    for k in [100u32, 99, 50, 1, 0] {
        let want: Vec<bool> = (0..100u32).map(|i| i <= k).collect();
        assert_eq!(markers(k), want, "markers seen by link {k}");
    }
    let vols = pool.volumes().unwrap();
    assert_eq!(vols.len(), 101);
    assert!(vols.iter().all(|v| v.parent == v.id.checked_sub(1)));
    assert_eq!(txid(&s), 101);
}

#[test]
fn delete_gives_the_blocks_back_and_refuses_an_active_volume() {
    let s = Scenario::new("del");
    s.ok(&["pool", "create", "--data-size", "1G"]);
    let dev0 = s.device(&["thin", "create", "0", "--size", "64M", "--name", "big"]);
    let dev1 = s.device(&["thin", "create", "1", "--size", "64M"]);
    let empty = data_used(&s);
    write_direct_at(&dev0, 0, &vec![0u8; 16 << 20]);
    write_direct_at(&dev1, 0, &vec![0u8; 8 << 20]);
    let used = data_used(&s);
    assert_eq!(used, empty + 256 + 128, "16M + 8M in 64K blocks");

    // Active: refused, with the way out in the message; nothing changed.
    let err = refused(&s, &["delete", "0"], &["--force", "active"]);
    println!("delete of an active volume: {}", err.trim());
    refused(&s, &["delete", "big"], &["--force"]);
    assert!(dev0.exists());

    let tx = txid(&s);
    s.ok(&["deactivate", "big"]);
    s.ok(&["delete", "big"]);
    let now = wait_for("the pool to give 16M back", 30, || {
        let u = data_used(&s);
        (u <= used - 256).then_some(u)
    });
    assert_eq!(now, empty + 128);
    assert_eq!(txid(&s), tx + 1);
    assert_eq!(ids(&s), [1]);
    // The name is free again.
    s.ok(&["thin", "create", "5", "--size", "16M", "--name", "big"]);
    s.ok(&["delete", "--force", "big"]);

    // --force refuses a volume that something holds: a plain descriptor (the device's open
    // count), or an exclusive claim such as a mount's (O_EXCL): refused before anything is
    // recorded or discarded, the blocks still the volume's.
    for exclusive in [false, true] {
        use std::os::unix::fs::OpenOptionsExt;
        let flags = if exclusive { libc::O_EXCL } else { 0 };
        let _held = std::fs::OpenOptions::new().read(true).custom_flags(flags).open(&dev1).unwrap();
        let before = data_used(&s);
        let err = refused(&s, &["delete", "--force", "1"], &["volume 1", "in use"]);
        println!("delete --force of a held volume (O_EXCL {exclusive}): {}", err.trim());
        assert_eq!(data_used(&s), before, "nothing discarded");
        assert!(!s.pool_dir().join("intent.json").exists());
        assert!(dev1.exists());
    }

    // --force takes an active volume down first.
    s.ok(&["delete", "--force", "1"]);
    assert!(!dev1.exists(), "{} still there", dev1.display());
    assert!(dm().info(&s.dm_name(1)).unwrap().is_none());
    wait_for("the pool to give 8M back", 30, || (data_used(&s) == empty).then_some(()));
    assert_eq!(volume_list(&s), serde_json::json!([]));
    assert_eq!(txid(&s), tx + 4);
}

#[test]
fn block_sizes_64k_and_1g_accepted_96k_and_2g_refused() {
    for (bs, bytes, data) in [("64K", 64 * K, "1G"), ("1G", 1 << 30, "4G")] {
        let s = Scenario::new("bs-ok");
        s.ok(&["pool", "create", "--block-size", bs, "--data-size", data]);
        let st = pool_status(&s);
        assert_eq!(st["block_bytes"], bytes);
        let data_bytes = rcx_dm::units::parse_size(data).unwrap();
        assert_eq!(st["data_total_blocks"], data_bytes / bytes);
        let table = dm().table(&rcx_dm::pool::pool_dm_name(&s.pool)).unwrap();
        let fields: Vec<&str> = table[0].params.split_whitespace().collect();
        assert_eq!((table[0].target.as_str(), fields[2]), ("thin-pool", (bytes / 512).to_string().as_str()), "{table:?}");
        s.ok(&["thin", "create", "0", "--size", "2G"]);
        assert_thin_table(&s, 0, (2u64 << 30) / 512);
    }
    for bs in ["96K", "2G", "32K", "1000K"] {
        let s = Scenario::new("bs-bad");
        let before = state(&s);
        let err = s.fails(&["pool", "create", "--block-size", bs, "--data-size", "4G"]);
        assert!(err.contains("block size") || err.contains("block-size"), "--block-size {bs}: {err}");
        assert!(!s.root.join(&s.pool).exists(), "--block-size {bs} left a pool directory");
        assert!(dm().info(&rcx_dm::pool::pool_dm_name(&s.pool)).unwrap().is_none());
        assert_eq!(state(&s), before);
        assert_eq!(s.json(&["pool", "list", "--json"]), serde_json::json!([]));
    }
}

#[test]
fn writes_to_an_origin_never_show_in_its_snapshot_and_the_other_way_round() {
    let s = Scenario::new("cow");
    s.ok(&["pool", "create", "--data-size", "1G"]);
    let origin = s.device(&["thin", "create", "0", "--size", "64M"]);
    // 8K at each offset (two pages of one 64K block), several blocks, first and last included.
    let offs = [0, 68 * K, M, 32 * M + 8 * K, 64 * M - 8 * K];
    for &o in &offs {
        write_direct_at(&origin, o, &[tagged("base", o, 4096), tagged("base", o + 4096, 4096)].concat());
    }
    let snap = s.device(&["snap", "1", "0"]);
    let (f1, f2) = (10 * M, 20 * M);
    // Both overwrite the first page at offs[0]; each then writes where the other does not, and
    // each writes one block that was never mapped.
    for &o in &[offs[0], offs[2], offs[4], f1] {
        write_direct_at(&origin, o, &tagged("origin", o, 4096));
    }
    for &o in &[offs[0], offs[1], offs[3], f2] {
        write_direct_at(&snap, o, &tagged("snap", o, 4096));
    }
    let check = |when: &str| {
        for (dev, own, mine) in [(&origin, "origin", [0, 2, 4]), (&snap, "snap", [0, 1, 3])] {
            for (k, &o) in offs.iter().enumerate() {
                let want = if mine.contains(&k) { tagged(own, o, 4096) } else { tagged("base", o, 4096) };
                let got = read_direct_at(dev, o, 4096);
                assert!(got == want, "{when}: {own} at {o}: want {}, got {}", show(&want), show(&got));
                // The other page of the block was copied, not lost, when the block was split.
                let got = read_direct_at(dev, o + 4096, 4096);
                assert!(got == tagged("base", o + 4096, 4096), "{when}: {own} at {}: got {}", o + 4096, show(&got));
            }
            let zero = vec![0u8; 4096];
            let (own_fresh, other_fresh) = if own == "origin" { (f1, f2) } else { (f2, f1) };
            assert_eq!(read_direct_at(dev, own_fresh, 4096), tagged(own, own_fresh, 4096), "{when}: {own} fresh block");
            assert!(read_direct_at(dev, other_fresh, 4096) == zero, "{when}: the other's fresh write shows in {own}");
        }
    };
    check("live");
    // Not a page-cache effect: the same after both devices are taken down and brought back.
    s.ok(&["deactivate", "0"]);
    s.ok(&["deactivate", "1"]);
    assert_eq!(s.device(&["activate", "0"]), origin);
    assert_eq!(s.device(&["activate", "1"]), snap);
    check("reactivated");
}

#[test]
fn duplicate_ids_and_names_unknown_origins_and_bad_sizes_are_refused() {
    let s = Scenario::new("bad");
    s.ok(&["pool", "create", "--data-size", "1G"]);
    s.ok(&["thin", "create", "0", "--size", "16M", "--name", "base"]);
    s.ok(&["snap", "1", "base", "--name", "child"]);

    refused(&s, &["pool", "create", "--data-size", "1G"], &["already exists"]);
    refused(&s, &["thin", "create", "0", "--size", "16M"], &["volume 0", "already exists"]);
    refused(&s, &["snap", "1", "0"], &["volume 1", "already exists"]);
    refused(&s, &["thin", "create", "5", "--size", "16M", "--name", "base"], &["'base'", "already exists"]);
    refused(&s, &["snap", "6", "0", "--name", "child"], &["'child'", "already exists"]);
    refused(&s, &["snap", "7", "77"], &["no volume '77'"]);
    refused(&s, &["snap", "7", "nosuch"], &["no volume 'nosuch'"]);
    refused(&s, &["snap", "-", "nosuch"], &["no volume 'nosuch'"]);
    refused(&s, &["thin", "create", "8", "--size", "1000"], &["multiple of 512"]);
    refused(&s, &["thin", "create", "8", "--size", "1.5G"], &["'1.5G'"]);
    refused(&s, &["thin", "create", "8", "--size", "12Q"], &["unknown suffix"]);
    refused(&s, &["thin", "create", "8", "--size", "lots"], &["does not start with a number"]);
    refused(&s, &["thin", "create", "8", "--size", "0"], &["zero"]);
    refused(&s, &["snap", "8", "0", "--size", "100000"], &["multiple of 512"]);
    refused(&s, &["thin", "create", "8", "--size", "16M", "--name", "a/b"], &["volume name"]);
    refused(&s, &["thin", "create", "8", "--size", "16M", "--name", "123"], &["volume name"]);
    refused(&s, &["delete", "nosuch"], &["no volume 'nosuch'"]);
    refused(&s, &["activate", "9"], &["no volume '9'"]);

    // Nothing leaked into the kernel either: the refused ids and names are free.
    s.ok(&["thin", "create", "5", "--size", "16M", "--name", "five"]);
    s.ok(&["snap", "7", "five", "--name", "seven"]);
    assert_eq!(txid(&s), 4);
    let names: Vec<(u64, String)> = volume_list(&s)
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["id"].as_u64().unwrap(), v["name"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(names, [(0, "base".into()), (1, "child".into()), (5, "five".into()), (7, "seven".into())]);
}

#[test]
fn a_pool_that_was_never_created_or_is_not_active_is_refused() {
    let s = Scenario::new("nopool");
    for args in [
        &["thin", "create", "0", "--size", "16M"][..],
        &["snap", "1", "0"],
        &["list"],
        &["pool", "status"],
        &["pool", "activate"],
        &["delete", "0"],
    ] {
        refused(&s, args, &["does not exist", "pool create"]);
    }
    assert_eq!(std::fs::read_dir(&s.root).unwrap().count(), 0, "a refused command wrote under --root");

    s.ok(&["pool", "create", "--data-size", "1G"]);
    let dev0 = s.device(&["thin", "create", "0", "--size", "16M"]);
    write_direct_at(&dev0, 0, &tagged("kept", 0, 4096));
    s.ok(&["pool", "deactivate"]);
    let st = pool_status(&s);
    assert_eq!(st["active"], false, "{st}");
    for args in [
        &["thin", "create", "1", "--size", "16M"][..],
        &["thin", "create", "--size", "16M"],
        &["snap", "2", "0"],
        &["activate", "0"],
        &["delete", "0"],
        &["delete", "--force", "0"],
    ] {
        refused(&s, args, &["not active", "pool activate"]);
    }
    let st = state(&s);
    assert!(st.devices.is_empty() && st.links.is_empty(), "{st:?}");

    let out = s.ok(&["pool", "activate"]);
    assert!(out.contains("1 volume(s) activated"), "{out}");
    assert_eq!(txid(&s), 1);
    assert_eq!(read_direct_at(&dev0, 0, 4096), tagged("kept", 0, 4096));
    s.ok(&["thin", "create", "1", "--size", "16M"]);
    assert_eq!(txid(&s), 2);
}

#[test]
fn a_data_device_smaller_than_asked_is_refused() {
    let data = Loop::new("small-data", 64 * M);
    let meta = Loop::new("small-meta", 16 * M);
    let s = Scenario::new("smalldev");
    // Markers at the start of both devices: a refused create must not zero them.
    write_direct_at(&data.dev, 0, &tagged("data", 0, 4096));
    write_direct_at(&meta.dev, 0, &tagged("meta", 0, 4096));
    let (d, m) = (path_str(&data.dev), path_str(&meta.dev));
    let before = state(&s);
    let err = s.fails(&["pool", "create", "--data-dev", d, "--meta-dev", m, "--data-size", "1G"]);
    assert!(err.contains(d) && err.contains("fewer than"), "{err}");
    let err = s.fails(&["pool", "create", "--data-dev", d, "--meta-dev", m, "--data-size", "32M", "--meta-size", "32M"]);
    assert!(err.contains(m) && err.contains("fewer than"), "{err}");
    assert_eq!(state(&s), before);
    assert!(!s.root.join(&s.pool).exists());
    assert!(dm().info(&rcx_dm::pool::pool_dm_name(&s.pool)).unwrap().is_none());
    assert_eq!(read_direct_at(&data.dev, 0, 4096), tagged("data", 0, 4096));
    assert_eq!(read_direct_at(&meta.dev, 0, 4096), tagged("meta", 0, 4096));

    // What fits is accepted, on the caller's devices.
    s.ok(&["pool", "create", "--data-dev", d, "--meta-dev", m, "--data-size", "32M"]);
    assert_eq!(kernel_status(&s).data_total_blocks, 32 * M / (64 * K));
    let dev = s.device(&["thin", "create", "0", "--size", "16M"]);
    write_direct_at(&dev, 0, &tagged("vol", 0, 4096));
    assert_eq!(read_direct_at(&dev, 0, 4096), tagged("vol", 0, 4096));
}

#[test]
fn out_of_space_fails_fast_and_delete_brings_the_pool_back() {
    let s = Scenario::new("nospace");
    s.ok(&["pool", "create", "--data-size", "32M"]);
    let table = dm().table(&rcx_dm::pool::pool_dm_name(&s.pool)).unwrap();
    assert!(table[0].params.contains("error_if_no_space"), "{table:?}");
    let total = kernel_status(&s).data_total_blocks;
    assert_eq!(total, 512);
    let dev = s.device(&["thin", "create", "0", "--size", "256M"]);

    let start = Instant::now();
    let out = std::process::Command::new("timeout")
        .args(["120", "dd", "if=/dev/zero", "bs=1M", "count=64", "oflag=direct"])
        .arg(format!("of={}", dev.display()))
        .output()
        .unwrap();
    let took = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    println!("dd into a full pool failed after {:.2} s: {}", took.as_secs_f64(), err.trim().replace('\n', " | "));
    assert_ne!(out.status.code(), Some(124), "dd hung on a full pool (timeout killed it):\n{err}");
    assert!(!out.status.success(), "64M fitted in a 32M pool:\n{err}");
    assert!(err.contains("No space left on device"), "dd did not see ENOSPC:\n{err}");
    assert!(took < Duration::from_secs(30), "ENOSPC took {took:?}");

    let st = pool_status(&s);
    assert_eq!(st["mode"], "out_of_data_space", "{st}");
    assert_eq!(st["data_used_blocks"], total);
    let info = s.json(&["info", "0", "--json"]);
    assert_eq!(info["mapped_bytes"], 32 * M, "{info}");

    let start = Instant::now();
    s.ok(&["delete", "--force", "0"]);
    let at_once = kernel_status(&s).mode == PoolMode::Rw;
    wait_for("the pool to leave out_of_data_space", 30, || (kernel_status(&s).mode == PoolMode::Rw).then_some(()));
    println!(
        "mode back to rw {:.2} s after the delete was started ({})",
        start.elapsed().as_secs_f64(),
        if at_once { "already when the delete returned" } else { "some time after the delete returned" }
    );
    assert_eq!(data_used(&s), 0);

    let dev = s.device(&["thin", "create", "1", "--size", "64M"]);
    let data = pattern(11, 24 << 20);
    write_direct_at(&dev, 0, &data);
    assert!(read_direct_at(&dev, 0, 24 << 20) == data, "written data reads back");
    let st = kernel_status(&s);
    assert_eq!((st.mode, st.data_used_blocks), (PoolMode::Rw, 384));
}
