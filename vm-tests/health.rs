//! `pool check`, `pool repair` and what activation says about damaged metadata, against real
//! damage: a metadata block of a deactivated pool whose checksum no longer matches, found
//! through the superblock (the kernel's on-disk format, dm-thin-metadata.c), so it is the same
//! block every run. Space-map blocks are what thin_repair rebuilds in full (they are derived
//! from the mapping trees), so after a repair every volume must hold exactly its old data.
//! A damaged device-details node is what thin_repair cannot recover: repair must refuse it.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use crate::common::*;

const MIB: usize = 1 << 20;

/// Blocks of the metadata a test can damage, by the superblock's pointers.
#[derive(Clone, Copy, Debug)]
enum Block {
    /// The metadata space map's index block: read when the pool is loaded.
    MetaSpaceMapIndex,
    /// The root of the data space map's index btree: read when a block is first allocated.
    DataSpaceMapIndex,
    /// The root of the device-details btree: read by thin_ctr (volume activation).
    DeviceDetails,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Break one metadata block's checksum (and some of its content) in meta.img of a deactivated
/// pool; returns the block number.
fn damage(meta: &Path, which: Block) -> u64 {
    let mut img = std::fs::read(meta).expect("read meta.img");
    assert_eq!(u64_at(&img, 32), 27_022_010, "meta.img starts with a thin superblock");
    // data_space_map_root at 64, metadata_space_map_root at 192 (nr_blocks, nr_allocated,
    // bitmap_root, ref_count_root); device_details_root at 328.
    let block = match which {
        Block::DataSpaceMapIndex => u64_at(&img, 64 + 16),
        Block::MetaSpaceMapIndex => u64_at(&img, 192 + 16),
        Block::DeviceDetails => u64_at(&img, 328),
    };
    assert!(block > 0 && (block as usize + 1) * 4096 <= img.len(), "{which:?} at block {block}");
    let at = block as usize * 4096;
    img[at..at + 4].copy_from_slice(&[0; 4]);
    img[at + 100..at + 108].copy_from_slice(b"DAMAGED!");
    std::fs::write(meta, &img).expect("write meta.img");
    println!("damaged {which:?}: metadata block {block}");
    block
}

fn file_digest(p: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display())).hash(&mut h);
    h.finish()
}

/// A pool with three volumes holding known data: 0 (written), 1 (a snapshot of 0 that has
/// diverged), 2 (written). Returns each volume's digest.
fn populated(s: &Scenario) -> Vec<(u32, (u64, u64))> {
    s.ok(&["pool", "create", "--data-size", "256M"]);
    let d0 = s.device(&["thin", "create", "0", "--size", "16M"]);
    write_direct_at(&d0, 0, &pattern(0x4ea1_0000, 4 * MIB));
    let d1 = s.device(&["snap", "1", "0"]);
    write_direct_at(&d1, MIB as u64, &pattern(0x4ea1_0001, MIB));
    let d2 = s.device(&["thin", "create", "2", "--size", "8M"]);
    write_direct_at(&d2, 2 * MIB as u64, &pattern(0x4ea1_0002, 2 * MIB));
    [(0, d0), (1, d1), (2, d2)].into_iter().map(|(id, d)| (id, device_digest(&d))).collect()
}

fn assert_volumes_intact(s: &Scenario, want: &[(u32, (u64, u64))]) {
    for (id, digest) in want {
        let dev = rcx_dm::dm::node::mapper_path(&s.dm_name(*id));
        assert!(dev.exists(), "volume {id} active after repair ({})", dev.display());
        assert_eq!(device_digest(&dev), *digest, "volume {id}'s data after repair");
    }
}

/// No loop device is left over any file in the pool directory.
fn assert_no_loops(s: &Scenario, when: &str) {
    let dir = std::fs::canonicalize(s.pool_dir()).unwrap();
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
            assert!(!Path::new(b.trim_end()).starts_with(&dir), "{when}: {:?} still backs {}", e.file_name(), b.trim_end());
        }
    }
}

fn pool_live(s: &Scenario) -> bool {
    dm().info(&rcx_dm::pool::pool_dm_name(&s.pool)).unwrap().is_some()
}

fn backups(s: &Scenario) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(s.pool_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("meta-damaged-"))
        .collect();
    v.sort();
    v
}

fn out_text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The kernel refuses to load a pool whose metadata space map is damaged: check finds it,
/// activate names repair (and leaves the pool deactivated), repair fixes it with nothing lost.
#[test]
fn health_damaged_metadata_is_refused_checked_repaired_and_comes_back_intact() {
    let s = Scenario::new("hmsm");
    let want = populated(&s);
    s.ok(&["pool", "deactivate"]);
    let meta = s.pool_dir().join("meta.img");
    damage(&meta, Block::MetaSpaceMapIndex);
    let damaged = file_digest(&meta);

    let out = s.cli(&["pool", "check"]);
    println!("pool check (damaged):\n{}", out_text(&out));
    assert_eq!(out.status.code(), Some(1), "pool check of damaged metadata exits 1");
    assert!(String::from_utf8_lossy(&out.stdout).contains("bad checksum"), "thin_check's findings are shown");
    assert!(String::from_utf8_lossy(&out.stderr).contains("rcx-dm pool repair"));
    let j: serde_json::Value = serde_json::from_slice(&s.cli(&["pool", "check", "--json"]).stdout).unwrap();
    assert_eq!(j["clean"], false);
    assert_no_loops(&s, "after pool check");

    let err = s.fails(&["pool", "activate"]);
    println!("pool activate (damaged): {err}");
    assert!(err.contains("rcx-dm pool repair"), "activation names pool repair: {err}");
    assert!(!pool_live(&s), "a refused activation leaves the pool deactivated");
    assert_no_loops(&s, "after the refused activation");
    assert_eq!(file_digest(&meta), damaged, "the refused activation changed nothing");

    let out = s.ok(&["pool", "repair"]);
    println!("pool repair: {out}");
    let b = backups(&s);
    assert_eq!(b.len(), 1, "one backup: {b:?}");
    assert!(out.contains(b[0].to_str().unwrap()), "repair names its backup");
    assert_eq!(file_digest(&b[0]), damaged, "the backup is the damaged metadata");
    assert!(!s.pool_dir().join("meta.img.repairing").exists());
    assert_no_loops(&s, "after pool repair");

    assert!(s.ok(&["pool", "check"]).contains("clean"));
    assert!(s.ok(&["pool", "activate"]).contains("3 volume(s) activated"));
    let k = kernel_status(&s);
    assert_eq!((k.mode, k.needs_check), (rcx_dm::dm::PoolMode::Rw, false), "{k:?}");
    assert_volumes_intact(&s, &want);
    // The repaired space maps are right: new blocks are allocated without touching old ones.
    let d2 = rcx_dm::dm::node::mapper_path(&s.dm_name(2));
    write_direct_at(&d2, 6 * MIB as u64, &pattern(7, MIB));
    assert_eq!(device_digest(&rcx_dm::dm::node::mapper_path(&s.dm_name(0))), want[0].1);
    s.ok(&["pool", "deactivate"]);
    assert_eq!(s.offline_metadata_ids(), vec![0, 1, 2]);
}

/// Damage the kernel only meets at the first allocation: activation succeeds, the first write
/// to a new block fails and the kernel sets needs_check and drops the pool to read-only; from
/// then on activation refuses naming repair, and repair brings back all committed data.
#[test]
fn health_damage_met_on_first_write_sets_needs_check_and_repair_clears_it() {
    let s = Scenario::new("hdsm");
    let want = populated(&s);
    s.ok(&["pool", "deactivate"]);
    damage(&s.pool_dir().join("meta.img"), Block::DataSpaceMapIndex);

    let out = s.cli(&["pool", "activate"]);
    println!("pool activate (data space map damaged): {}", out_text(&out));
    assert!(out.status.success(), "the kernel loads the pool: the data space map is read on allocation");
    // Mapped blocks read fine; allocating one fails.
    let d0 = rcx_dm::dm::node::mapper_path(&s.dm_name(0));
    assert_eq!(device_digest(&d0), want[0].1);
    let werr = try_write_direct(&d0, 8 * MIB as u64, &pattern(9, MIB));
    println!("first write to a new block: {werr:?}");
    assert!(werr.is_err(), "a write that needs a new block fails");
    let k = kernel_status(&s);
    println!("kernel after the failed allocation: {k:?}");
    assert!(k.needs_check, "the kernel sets needs_check: {k:?}");
    assert_ne!(k.mode, rcx_dm::dm::PoolMode::Rw, "the kernel takes the pool out of rw: {k:?}");

    // The pool is live: activate refuses naming deactivate first; check and repair refuse.
    let err = s.fails(&["pool", "activate"]);
    println!("pool activate (live, needs_check): {err}");
    assert!(err.contains("rcx-dm pool deactivate") && err.contains("rcx-dm pool repair"), "{err}");
    assert!(pool_live(&s), "an already live pool is not taken down under its users");

    s.ok(&["pool", "deactivate"]);
    let c: serde_json::Value = serde_json::from_slice(&s.cli(&["pool", "check", "--json"]).stdout).unwrap();
    println!("pool check --json: {c}");
    assert_eq!(c["clean"], false);
    let err = s.fails(&["pool", "activate"]);
    println!("pool activate (needs_check in the superblock): {err}");
    assert!(err.contains("rcx-dm pool repair"), "{err}");
    assert!(!pool_live(&s));
    assert_no_loops(&s, "after the refused activation");

    s.ok(&["pool", "repair"]);
    let c: serde_json::Value = serde_json::from_str(&s.ok(&["pool", "check", "--json"])).unwrap();
    assert_eq!((c["clean"].as_bool(), c["needs_check"].as_bool()), (Some(true), Some(false)), "{c}");
    s.ok(&["pool", "activate"]);
    let k = kernel_status(&s);
    assert_eq!((k.mode, k.needs_check), (rcx_dm::dm::PoolMode::Rw, false), "{k:?}");
    assert_volumes_intact(&s, &want);
    write_direct_at(&d0, 8 * MIB as u64, &pattern(9, MIB));
    assert_eq!(read_direct_at(&d0, 8 * MIB as u64, MIB), pattern(9, MIB));
}

/// Damage in the device-details btree: the pool loads, thin_ctr fails with EILSEQ. Activation
/// names repair and leaves the pool deactivated. thin_repair (0.9.0) then looks for the best
/// roots among all metadata blocks: repair must either refuse (changing nothing) or produce
/// exactly the metadata the kernel last committed.
#[test]
fn health_damaged_device_records_fail_activation_and_repair_recovers_or_refuses() {
    let s = Scenario::new("hdet");
    let want = populated(&s);
    s.ok(&["pool", "deactivate"]);
    let meta = s.pool_dir().join("meta.img");
    let before = offline_dump(&meta);
    damage(&meta, Block::DeviceDetails);
    let damaged = file_digest(&meta);

    let err = s.fails(&["pool", "activate"]);
    println!("pool activate (device details damaged): {err}");
    assert!(err.contains("rcx-dm pool repair") && err.contains("EILSEQ"), "{err}");
    assert!(!pool_live(&s) && dm().info(&s.dm_name(0)).unwrap().is_none(), "left deactivated");
    assert_no_loops(&s, "after the refused activation");

    let out = s.cli(&["pool", "repair"]);
    println!("pool repair (device details damaged): {}", out_text(&out));
    if !out.status.success() {
        assert!(out_text(&out).contains("unchanged"));
        assert_eq!(file_digest(&meta), damaged, "metadata unchanged");
        assert!(backups(&s).is_empty() && !s.pool_dir().join("meta.img.repairing").exists());
        return;
    }
    let after = offline_dump(&meta);
    if after != before {
        println!("before damage:\n{before}\nafter repair:\n{after}");
    }
    assert_eq!(after, before, "the repaired metadata is what the kernel last committed");
    s.ok(&["pool", "activate"]);
    assert_volumes_intact(&s, &want);
    // Sharing survived: a write to the origin's shared block leaves the snapshot alone.
    let d0 = rcx_dm::dm::node::mapper_path(&s.dm_name(0));
    write_direct_at(&d0, 0, &pattern(11, MIB));
    assert_eq!(device_digest(&rcx_dm::dm::node::mapper_path(&s.dm_name(1))), want[1].1);
}

/// thin_dump of a deactivated pool's metadata, through a read-only loop (O_DIRECT on tmpfs).
fn offline_dump(meta: &Path) -> String {
    let dev = sh(&format!("losetup -r -f --show '{}'", meta.display())).trim().to_string();
    let out = std::process::Command::new("thin_dump").arg(&dev).output().expect("spawn thin_dump");
    let _ = std::process::Command::new("losetup").args(["-d", &dev]).status();
    assert!(out.status.success(), "thin_dump: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `pool repair` killed at each of its steps: meta.img is always there (old or new), no loop
/// is leaked, and running repair again finishes the job.
#[test]
fn health_repair_killed_at_any_step_keeps_metadata_and_can_be_run_again() {
    let s = Scenario::new("hkil");
    let want = populated(&s);
    s.ok(&["pool", "deactivate"]);
    let meta = s.pool_dir().join("meta.img");
    damage(&meta, Block::MetaSpaceMapIndex);
    let damaged = file_digest(&meta);
    for (step, swapped) in [("repaired", false), ("linked", false), ("swapped", true)] {
        let out = s.cli_env(&["pool", "repair"], &[("RCX_DM_FAIL_AT", &format!("repair.{step}"))]);
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "repair.{step}: {}", out_text(&out));
        assert!(meta.exists(), "repair.{step}: meta.img exists");
        assert_no_loops(&s, &format!("killed at repair.{step}"));
        assert_eq!(file_digest(&meta) == damaged, !swapped, "repair.{step}: meta.img old until the rename");
        let check = s.cli(&["pool", "check"]);
        assert_eq!(check.status.success(), swapped, "repair.{step}: {}", out_text(&check));
        if swapped {
            // The last kill came after the swap: its backup is the damaged metadata.
            assert!(backups(&s).iter().any(|b| file_digest(b) == damaged));
        }
    }
    s.ok(&["pool", "repair"]);
    assert!(!s.pool_dir().join("meta.img.repairing").exists());
    s.ok(&["pool", "check"]);
    s.ok(&["pool", "activate"]);
    assert_volumes_intact(&s, &want);
}

/// Check and repair of a live pool are refused naming `pool deactivate`, changing nothing;
/// repair of a pool that does not exist and a missing thin_check say what to do.
#[test]
fn health_bad_input_live_pool_missing_pool_missing_tools() {
    let s = Scenario::new("hbad");
    s.ok(&["pool", "create", "--data-size", "64M"]);
    let d0 = s.device(&["thin", "create", "0", "--size", "8M"]);
    write_direct_at(&d0, 0, &pattern(0xbad, MIB));
    let before = kernel_status(&s);
    for cmd in ["check", "repair"] {
        let err = s.fails(&["pool", cmd]);
        println!("pool {cmd} (live): {err}");
        assert!(err.contains("is active") && err.contains("rcx-dm pool deactivate"), "{err}");
    }
    assert_eq!(kernel_status(&s), before, "nothing changed in the kernel");
    assert!(backups(&s).is_empty() && !s.pool_dir().join("meta.img.repairing").exists());
    assert_eq!(read_direct_at(&d0, 0, MIB), pattern(0xbad, MIB));

    let missing = s.cli_env(&["pool", "repair"], &[("RCX_DM_POOL", "nosuchpool")]);
    let err = String::from_utf8_lossy(&missing.stderr);
    println!("pool repair (missing pool): {err}");
    assert!(!missing.status.success() && err.contains("'nosuchpool' does not exist"), "{err}");

    s.ok(&["pool", "deactivate"]);
    let out = s.cli_env(&["pool", "check"], &[("PATH", "/nonexistent")]);
    let err = String::from_utf8_lossy(&out.stderr);
    println!("pool check (no thin_check): {err}");
    assert!(!out.status.success() && err.contains("thin-provisioning-tools"), "{err}");
    assert_no_loops(&s, "after check without thin_check");
    assert!(s.ok(&["pool", "check"]).contains("clean"));
}

/// An O_DIRECT write that may fail (the pool refuses it), unlike common's write_direct_at.
fn try_write_direct(dev: &Path, offset: u64, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let mut buf = vec![0u8; data.len() + 4096];
    let at = buf.as_ptr().align_offset(4096);
    buf[at..at + data.len()].copy_from_slice(data);
    let f = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(dev)?;
    f.write_all_at(&buf[at..at + data.len()], offset)?;
    f.sync_all()
}

/// Metadata on a block device: check runs thin_check on the device itself (no loop of its own);
/// repair refuses, explaining the manual steps, and changes nothing.
#[test]
fn health_block_device_metadata_is_checked_in_place_and_repair_explains_the_manual_steps() {
    let s = Scenario::new("hdev");
    let data = Loop::new(&format!("{}-data", s.pool), 64 << 20);
    let meta = Loop::new(&format!("{}-meta", s.pool), 8 << 20);
    s.ok(&["pool", "create", "--data-dev", path_str(&data.dev), "--meta-dev", path_str(&meta.dev)]);
    let d0 = s.device(&["thin", "create", "0", "--size", "8M"]);
    write_direct_at(&d0, 0, &pattern(0xde7, MIB));
    s.ok(&["pool", "deactivate"]);
    assert!(s.ok(&["pool", "check"]).contains("clean"));

    damage(&meta.file, Block::MetaSpaceMapIndex);
    let damaged = file_digest(&meta.file);
    let out = s.cli(&["pool", "check"]);
    println!("pool check (device, damaged): {}", out_text(&out));
    assert_eq!(out.status.code(), Some(1));
    let err = s.fails(&["pool", "repair"]);
    println!("pool repair (device): {err}");
    assert!(err.contains("block device") && err.contains("thin_repair -i") && err.contains("unchanged"), "{err}");
    assert_eq!(file_digest(&meta.file), damaged, "repair changed nothing");
    assert!(backups(&s).is_empty());
    let err = s.fails(&["pool", "activate"]);
    assert!(err.contains("rcx-dm pool repair"), "{err}");
    drop(s);
}
