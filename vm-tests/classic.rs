//! Classic snapshots (snapshot-origin / snapshot / snapshot-merge) and thin revert against the
//! real kernel: the seed's walkthrough end to end, isolation between origin and snapshots,
//! overflow, the kernel's rules, interrupted merges, merging a mounted origin, and revert with
//! a crash at every step.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use rcx_dm::dm::{
    self, Device, LinearTarget, Persistence, SnapshotMergeTarget, SnapshotOriginTarget, SnapshotStatus, SnapshotTarget, Target,
    TargetLine,
};

use crate::common::*;

const MIB: usize = 1 << 20;

fn mapper(s: &Scenario, name: &str) -> PathBuf {
    dm::node::mapper_path(&dmname(s, name))
}

fn dmname(s: &Scenario, name: &str) -> String {
    format!("{}{name}", s.dm_prefix())
}

fn live_target(name: &str) -> String {
    let t = dm().table(name).unwrap_or_else(|e| panic!("table of {name}: {e}"));
    assert_eq!(t.len(), 1, "{name}: {t:?}");
    t[0].target.clone()
}

fn cow_json(s: &Scenario, snap: &str) -> serde_json::Value {
    s.json(&["cow", "status", snap, "--json"])
}

fn origin_json(s: &Scenario, name: &str) -> serde_json::Value {
    let list = s.json(&["origin", "list", "--json"]);
    list.as_array().unwrap().iter().find(|o| o["name"] == name).cloned().unwrap_or_else(|| panic!("no origin {name} in {list}"))
}

fn open_direct(dev: &Path, write: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(!write).write(write).custom_flags(libc::O_DIRECT).open(dev)
}

/// O_DIRECT read that reports errors instead of panicking (snapshots can turn invalid).
fn try_read(dev: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len + 4096];
    let at = buf.as_ptr().align_offset(4096);
    open_direct(dev, false)?.read_exact_at(&mut buf[at..at + len], offset)?;
    Ok(buf[at..at + len].to_vec())
}

/// O_DIRECT write + fsync that reports errors instead of panicking.
fn try_write(dev: &Path, offset: u64, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; data.len() + 4096];
    let at = buf.as_ptr().align_offset(4096);
    buf[at..at + data.len()].copy_from_slice(data);
    let f = open_direct(dev, true)?;
    f.write_all_at(&buf[at..at + data.len()], offset)?;
    f.sync_all()
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a == b
}

/// `merge` and friends finish in the background on the next command: poll `cow status` (a
/// command) until the snapshot is gone.
fn wait_merged(s: &Scenario, snap: &str) {
    wait_for(&format!("merge of {snap} to finish"), 120, || {
        let all = s.json(&["cow", "status", "--json"]);
        (!all.as_array().unwrap().iter().any(|c| c["name"] == snap)).then_some(())
    });
}

// ---- the seed's walkthrough ----

/// Files of a small root filesystem, written into `dir`; returns (relative path, content).
fn rootfs_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let files: Vec<(String, Vec<u8>)> = vec![
        ("etc/os-release".into(), b"NAME=\"rcx test\"\nID=rcx\n".to_vec()),
        ("etc/passwd".into(), b"root:x:0:0:root:/root:/bin/sh\n".to_vec()),
        ("etc/hostname".into(), b"base\n".to_vec()),
        ("bin/sh".into(), pattern(0xb1, 200 << 10)),
        ("usr/lib/libc.so.6".into(), pattern(0x11bc, 2 * MIB)),
        ("usr/share/doc/README".into(), b"a rootfs made by the test\n".to_vec()),
        ("var/log/.keep".into(), Vec::new()),
        ("root/.profile".into(), b"PS1='# '\n".to_vec()),
    ];
    for d in ["bin", "etc", "usr/lib", "usr/share/doc", "var/log", "root", "tmp", "rootfs"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    for (p, c) in &files {
        std::fs::write(dir.join(p), c).unwrap();
    }
    files
}

fn assert_tree(dir: &Path, files: &[(String, Vec<u8>)], what: &str) {
    for (p, c) in files {
        let got = std::fs::read(dir.join(p)).unwrap_or_else(|e| panic!("{what}: reading {p}: {e}"));
        assert!(same(&got, c), "{what}: {p} changed");
    }
}

#[test]
fn classic_seed_walkthrough_origin_snapshot_edit_merge_and_the_backing_file() {
    let s = Scenario::new("cwalk");
    let dm = dm();
    s.ok(&["pool", "create", "--data-size", "64M"]);
    // Origin over a new sparse file: base-real (linear) and base (snapshot-origin).
    let origin = s.device(&["origin", "create", "base", "--size", "128M"]);
    assert_eq!(origin, mapper(&s, "base"));
    assert_eq!(live_target(&dmname(&s, "base")), "snapshot-origin");
    assert_eq!(live_target(&dmname(&s, "base-real")), "linear");
    let real = dm.info(&dmname(&s, "base-real")).unwrap().unwrap().dev;
    assert_eq!(dm.table(&dmname(&s, "base")).unwrap()[0].params, real.to_string());
    let backing = s.pool_dir().join("classic/base.img");
    assert_eq!(std::fs::metadata(&backing).unwrap().len(), 128 << 20);

    // Populate the origin with a rootfs-like tree.
    mkfs_ext4(&origin);
    let files = {
        let m = Mount::new(&origin, "cw-fill");
        rootfs_tree(&m.dir)
    };

    // A persistent snapshot with the seed's chunk size (8 sectors): status "16/<total> 16".
    let snap = s.device(&["cow", "create", "edit", "--origin", "base", "--size", "32M"]);
    assert_eq!(snap, mapper(&s, "edit"));
    let t = dm.table(&dmname(&s, "edit")).unwrap();
    let cow = dm.info(&dmname(&s, "edit-cow")).unwrap().unwrap().dev;
    assert_eq!((t[0].target.as_str(), t[0].params.clone()), ("snapshot", format!("{real} {cow} P 8")));
    let st = cow_json(&s, "edit");
    assert_eq!(st["state"], "valid", "{st}");
    assert_eq!(st["chunk_bytes"], 4096);
    assert_eq!(st["total_sectors"], 65536, "{st}");
    assert_eq!(st["allocated_sectors"], st["metadata_sectors"], "a fresh snapshot holds only metadata: {st}");

    // Edit in the snapshot, as the seed does: mkdir + a file.
    {
        let m = Mount::new(&snap, "cw-snap");
        assert_tree(&m.dir, &files, "snapshot before the edit");
        std::fs::create_dir_all(m.path("rootfs/vigith_test")).unwrap();
        std::fs::write(m.path("rootfs/vigith_test/foo"), "bar\n").unwrap();
    }
    let st = cow_json(&s, "edit");
    assert!(st["allocated_sectors"].as_u64() > st["metadata_sectors"].as_u64(), "the edit is in the COW: {st}");
    // The origin does not have it.
    {
        let m = Mount::new(&origin, "cw-orig");
        assert!(!m.path("rootfs/vigith_test").exists(), "the snapshot's edit leaked into the origin");
        assert_tree(&m.dir, &files, "origin while the snapshot is edited");
    }

    // Merge and wait: the origin gets the edit and is snapshot-origin again; the COW is freed.
    let out = s.ok(&["merge", "edit", "--wait"]);
    assert!(out.contains("merged edit into base"), "{out}");
    assert_eq!(live_target(&dmname(&s, "base")), "snapshot-origin");
    for gone in ["edit", "edit-cow"] {
        assert!(dm.info(&dmname(&s, gone)).unwrap().is_none(), "{gone} still exists after the merge");
    }
    assert!(!s.pool_dir().join("classic/edit.cow").exists(), "COW file not freed");
    let err = s.fails(&["cow", "status", "edit"]);
    assert!(err.contains("no snapshot 'edit'"), "{err}");
    let o = origin_json(&s, "base");
    assert!(o["merging"].is_null() && o["snapshots"].as_array().unwrap().is_empty(), "{o}");
    {
        let m = Mount::new(&origin, "cw-merged");
        assert_eq!(std::fs::read_to_string(m.path("rootfs/vigith_test/foo")).unwrap(), "bar\n");
        assert_tree(&m.dir, &files, "origin after the merge");
    }

    // The backing file itself, mounted directly with -o loop (the stack torn down first, as at
    // a reboot), shows the edit.
    s.ok(&["pool", "deactivate"]);
    assert!(dm.info(&dmname(&s, "base")).unwrap().is_none() && dm.info(&dmname(&s, "base-real")).unwrap().is_none());
    let dir = scratch().join(format!("mnt-{}-cw-file", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    sh(&format!("mount -o loop,ro '{}' '{}'", backing.display(), dir.display()));
    let foo = std::fs::read_to_string(dir.join("rootfs/vigith_test/foo"));
    let tree_ok = files.iter().all(|(p, c)| std::fs::read(dir.join(p)).is_ok_and(|g| same(&g, c)));
    umount(&dir).unwrap(); // the loop `mount -o loop` made has autoclear: it goes with the mount
    assert_eq!(foo.unwrap(), "bar\n", "the backing file lacks the merged edit");
    assert!(tree_ok, "the backing file's tree differs");

    // And everything comes back with `pool activate`.
    let out = s.ok(&["pool", "activate"]);
    assert!(out.contains("1 classic origin(s) activated"), "{out}");
    assert_eq!(live_target(&dmname(&s, "base")), "snapshot-origin");
    let m = Mount::new(&origin, "cw-back");
    assert_eq!(std::fs::read_to_string(m.path("rootfs/vigith_test/foo")).unwrap(), "bar\n");
}

// ---- isolation ----

#[test]
fn classic_origin_and_snapshot_writes_stay_apart_with_several_snapshots() {
    let s = Scenario::new("ciso");
    s.ok(&["pool", "create", "--data-size", "64M"]);
    let o = s.device(&["origin", "create", "o", "--size", "32M"]);
    let p0 = pattern(1, 4 * MIB);
    write_direct_at(&o, 0, &p0);
    let snaps: Vec<PathBuf> = ["s1", "s2", "s3"]
        .iter()
        .map(|n| s.device(&["cow", "create", n, "--origin", "o", "--size", "16M"]))
        .collect();
    let zeros = vec![0u8; MIB];

    // Origin writes never show in a snapshot.
    let p1 = pattern(2, MIB);
    write_direct_at(&o, 0, &p1);
    assert!(same(&read_direct_at(&o, 0, MIB), &p1));
    for (i, d) in snaps.iter().enumerate() {
        assert!(same(&read_direct_at(d, 0, 4 * MIB), &p0), "s{} sees the origin's later write", i + 1);
    }
    // Snapshot writes never show in the origin or another snapshot.
    let q = pattern(3, MIB);
    write_direct_at(&snaps[1], 8 << 20, &q);
    let r = pattern(4, MIB);
    write_direct_at(&snaps[0], 2 << 20, &r);
    assert!(same(&read_direct_at(&o, 8 << 20, MIB), &zeros), "s2's write leaked into the origin");
    assert!(same(&read_direct_at(&o, 2 << 20, MIB), &p0[2 * MIB..3 * MIB]), "s1's write leaked into the origin");
    assert!(same(&read_direct_at(&snaps[0], 8 << 20, MIB), &zeros), "s2's write leaked into s1");
    assert!(same(&read_direct_at(&snaps[2], 8 << 20, MIB), &zeros), "s2's write leaked into s3");
    assert!(same(&read_direct_at(&snaps[1], 2 << 20, MIB), &p0[2 * MIB..3 * MIB]), "s1's write leaked into s2");
    assert!(same(&read_direct_at(&snaps[1], 8 << 20, MIB), &q));
    for n in ["s1", "s2", "s3"] {
        assert_eq!(cow_json(&s, n)["state"], "valid");
    }

    // Merging s2 gives the origin s2's view (its old content at 0, its write at 8M); s1 and s3
    // keep theirs.
    s.ok(&["merge", "s2", "--wait"]);
    assert!(same(&read_direct_at(&o, 0, 4 * MIB), &p0), "origin after merging s2 at 0");
    assert!(same(&read_direct_at(&o, 8 << 20, MIB), &q), "origin after merging s2 at 8M");
    for (d, n) in [(&snaps[0], "s1"), (&snaps[2], "s3")] {
        assert!(same(&read_direct_at(d, 8 << 20, MIB), &zeros), "{n} changed by the merge of s2");
    }
    assert!(same(&read_direct_at(&snaps[0], 0, 2 * MIB), &p0[..2 * MIB]), "s1 at 0 after the merge");
    assert!(same(&read_direct_at(&snaps[0], 2 << 20, MIB), &r), "s1's own write after the merge");
    assert!(same(&read_direct_at(&snaps[2], 0, 4 * MIB), &p0), "s3 after the merge");
    assert_eq!(origin_json(&s, "o")["snapshots"], serde_json::json!(["s1", "s3"]));
    // The remaining snapshots still copy on the origin's writes.
    write_direct_at(&o, 0, &pattern(5, MIB));
    assert!(same(&read_direct_at(&snaps[2], 0, MIB), &p0[..MIB]), "s3 after an origin write following the merge");
    s.ok(&["cow", "delete", "s1"]);
    s.ok(&["cow", "delete", "s3"]);
    assert_eq!(s.json(&["cow", "status", "--json"]), serde_json::json!([]));
    s.ok(&["origin", "delete", "o"]);
    assert!(!s.pool_dir().join("classic/o.img").exists(), "origin file left behind");
}

// ---- overflow ----

#[test]
fn classic_a_full_cow_turns_the_snapshot_invalid_and_its_merge_is_refused() {
    let s = Scenario::new("cfull");
    s.ok(&["pool", "create", "--data-size", "64M"]);
    let o = s.device(&["origin", "create", "o", "--size", "16M"]);
    let p0 = pattern(7, 4 * MIB);
    write_direct_at(&o, 0, &p0);

    // Filled by writes to the snapshot: 64K holds a header, one exception table and 14 chunks.
    let small = s.device(&["cow", "create", "small", "--origin", "o", "--size", "64K"]);
    let st = cow_json(&s, "small");
    assert_eq!((st["total_sectors"].as_u64(), st["state"].as_str()), (Some(128), Some("valid")), "{st}");
    let w = try_write(&small, 0, &pattern(8, MIB));
    assert!(w.is_err(), "writing 1M into a 64K COW succeeded");
    let st = cow_json(&s, "small");
    assert_eq!(st["state"], "invalid", "{st}");
    let human = s.ok(&["cow", "status", "small"]);
    assert!(human.contains("invalid"), "{human}");
    assert!(try_read(&small, 0, 4096).is_err(), "an invalid snapshot still reads");
    let err = s.fails(&["merge", "small"]);
    assert!(err.contains("snapshot 'small' is invalid") && err.contains("cannot be merged"), "{err}");
    assert_eq!(live_target(&dmname(&s, "o")), "snapshot-origin", "a refused merge changed the origin");
    assert!(same(&read_direct_at(&o, 0, 4 * MIB), &p0), "the origin lost data");
    s.ok(&["cow", "delete", "small"]);

    // Filled by writes to the origin (each copies the old chunk into the COW): the origin's
    // writes go on, the snapshot turns invalid.
    s.ok(&["cow", "create", "small2", "--origin", "o", "--size", "64K"]);
    let p1 = pattern(9, MIB);
    write_direct_at(&o, 0, &p1);
    assert!(same(&read_direct_at(&o, 0, MIB), &p1), "origin writes must go on when a snapshot fills");
    assert_eq!(cow_json(&s, "small2")["state"], "invalid");
    let err = s.fails(&["merge", "small2", "--wait"]);
    assert!(err.contains("is invalid"), "{err}");
    s.ok(&["cow", "delete", "small2"]);
}

// ---- merging a mounted origin ----

#[test]
fn classic_merge_is_refused_while_the_origin_or_the_snapshot_is_mounted() {
    let s = Scenario::new("cmnt");
    let dm = dm();
    s.ok(&["pool", "create", "--data-size", "64M"]);
    let o = s.device(&["origin", "create", "o", "--size", "64M"]);
    mkfs_ext4(&o);
    let snap = s.device(&["cow", "create", "s", "--origin", "o", "--size", "16M"]);
    {
        let m = Mount::new(&snap, "cm-s");
        std::fs::write(m.path("edited"), "yes").unwrap();
    }
    let unchanged = |why: &str| {
        assert_eq!(live_target(&dmname(&s, "o")), "snapshot-origin", "{why}");
        assert!(!dm.info(&dmname(&s, "o")).unwrap().unwrap().suspended, "{why}: origin left suspended");
        assert!(dm.info(&dmname(&s, "s")).unwrap().is_some(), "{why}: snapshot device gone");
        let st = cow_json(&s, "s");
        assert_eq!(st["state"], "valid", "{why}: {st}");
        assert!(origin_json(&s, "o")["merging"].is_null(), "{why}");
    };
    {
        let m = Mount::new(&o, "cm-o");
        let err = s.fails(&["merge", "s", "--wait"]);
        assert!(err.contains("origin 'o' is open") && err.contains("unmount it first"), "{err}");
        unchanged("merge of a mounted origin");
        assert!(!m.path("edited").exists());
    }
    {
        let _m = Mount::new(&snap, "cm-s2");
        let err = s.fails(&["merge", "s"]);
        assert!(err.contains("snapshot 's' is open") && err.contains("unmount it first"), "{err}");
        unchanged("merge of a mounted snapshot");
        let err = s.fails(&["cow", "delete", "s"]);
        assert!(err.contains("snapshot 's' is open"), "{err}");
    }
    s.ok(&["merge", "s", "--wait"]);
    let m = Mount::new(&o, "cm-done");
    assert_eq!(std::fs::read_to_string(m.path("edited")).unwrap(), "yes");
}

// ---- the kernel's rules, by hand with rcx-dm's typed targets ----

/// A classic stack made directly with the dm layer (no rcx-dm state): real + cow linears
/// over two loops, origin, snapshot. Removed in dependency order on drop.
struct HandStack {
    names: Vec<String>,
    _loops: (Loop, Loop),
    real: Device,
    cow: Device,
    sectors: u64,
}

impl HandStack {
    fn new(tag: &str, origin_bytes: u64, cow_bytes: u64) -> HandStack {
        let dm = dm();
        let base = format!("t{}-{tag}", std::process::id());
        let lo = Loop::new(&format!("{tag}-o"), origin_bytes);
        let lc = Loop::new(&format!("{tag}-c"), cow_bytes);
        let sectors = origin_bytes / 512;
        let mk = |name: &str, line: TargetLine| {
            let i = dm.create(name, None, &[line], false).unwrap_or_else(|e| panic!("create {name}: {e}"));
            dm::node::ensure(name, i.dev).unwrap();
            i.dev
        };
        let (lod, _) = rcx_dm::loopback::block_device(&lo.dev).unwrap();
        let (lcd, _) = rcx_dm::loopback::block_device(&lc.dev).unwrap();
        let real = mk(&format!("{base}-real"), LinearTarget { dev: lod, offset_sectors: 0 }.line(0, sectors));
        let cow = mk(&format!("{base}-cow"), LinearTarget { dev: lcd, offset_sectors: 0 }.line(0, cow_bytes / 512));
        mk(&format!("{base}-origin"), SnapshotOriginTarget { real }.line(0, sectors));
        let names = ["snap", "origin", "cow", "real"].iter().map(|n| format!("{base}-{n}")).collect();
        HandStack { names, _loops: (lo, lc), real, cow, sectors }
    }
    fn name(&self, which: &str) -> String {
        self.names.iter().find(|n| n.ends_with(&format!("-{which}"))).unwrap().clone()
    }
    fn path(&self, which: &str) -> PathBuf {
        dm::node::mapper_path(&self.name(which))
    }
}

impl Drop for HandStack {
    fn drop(&mut self) {
        let dm = dm();
        for n in &self.names {
            let _ = dm.resume(n);
        }
        for n in &self.names {
            let _ = dm.remove(n);
            dm::node::remove(n);
        }
    }
}

#[test]
fn classic_kernel_rules_chunk_size_merge_exclusion_old_snapshot_errors_and_merge_completion() {
    let dm = dm();
    let h = HandStack::new("krule", 32 << 20, 16 << 20);
    let (origin, snap) = (h.name("origin"), h.name("snap"));
    let raw = |chunk: &str| TargetLine {
        start: 0,
        length: h.sectors,
        target: "snapshot".into(),
        params: format!("{} {} P {chunk}", h.real, h.cow),
    };

    // Chunk size: the typed target refuses what the kernel refuses, and the kernel does refuse
    // it (a table load with a non-power-of-two or over 2^21 sectors is EINVAL).
    for bad in [24u64, 1 << 22] {
        assert!(SnapshotTarget::new(h.real, h.cow, Persistence::Persistent, bad).is_err());
        dm.suspend(&origin).unwrap();
        let r = dm.create(&snap, None, &[raw(&bad.to_string())], false);
        dm.resume(&origin).unwrap();
        let e = r.expect_err(&format!("the kernel took chunk size {bad}"));
        assert_eq!(e.errno(), Some(rcx_dm::Errno::EINVAL), "chunk {bad}: {e}");
    }
    // The largest the kernel takes, 2^21 sectors, loads (transient: nothing is written).
    let t = SnapshotTarget::new(h.real, h.cow, Persistence::Transient, dm::MAX_CHUNK_SECTORS).unwrap();
    dm.suspend(&origin).unwrap();
    let big = dm.create(&snap, None, &[t.line(0, h.sectors)], false);
    dm.resume(&origin).unwrap();
    big.expect("chunk of 2^21 sectors refused");
    dm.suspend(&origin).unwrap();
    dm.remove(&snap).unwrap();
    dm.resume(&origin).unwrap();

    // A persistent snapshot with data: the origin has A, the snapshot B at 0..1M.
    let a = pattern(21, 2 * MIB);
    write_direct_at(&h.path("origin"), 0, &a);
    let t = SnapshotTarget::new(h.real, h.cow, Persistence::Persistent, 8).unwrap();
    dm.suspend(&origin).unwrap();
    let i = dm.create(&snap, None, &[t.line(0, h.sectors)], false).unwrap();
    dm.resume(&origin).unwrap();
    dm::node::ensure(&snap, i.dev).unwrap();
    let b = pattern(22, MIB);
    write_direct_at(&h.path("snap"), 0, &b);

    // snapshot-merge must not be loaded while the snapshot-origin is live: refused, nothing
    // changed.
    let m = SnapshotMergeTarget::new(h.real, h.cow, 8).unwrap();
    let e = dm::snapshot::load_merge(&dm, &origin, &m, h.sectors).expect_err("merge loaded over a live snapshot-origin");
    assert!(e.to_string().contains("while its snapshot-origin is live"), "{e}");
    assert_eq!(live_target(&origin), "snapshot-origin");
    assert!(!dm.info(&origin).unwrap().unwrap().suspended);

    // Start the merge the way the kernel allows with the old snapshot device left in place
    // (suspended for the hand-over): once it starts, the old snapshot device errors.
    let before = dm::snapshot::snapshot_status(&dm, &snap, "snapshot").unwrap();
    assert_eq!(before.data_sectors(), Some(2048), "1M of data in the COW: {before:?}");
    dm.suspend(&snap).unwrap();
    dm.suspend(&origin).unwrap();
    dm::snapshot::load_merge(&dm, &origin, &m, h.sectors).expect("merge over a suspended origin");
    dm.resume(&origin).unwrap();
    dm.resume(&snap).unwrap();
    assert_eq!(live_target(&origin), "snapshot-merge");
    let r = try_read(&h.path("snap"), 0, 4096);
    assert_eq!(r.err().and_then(|e| e.raw_os_error()), Some(libc::EIO), "the old snapshot device still reads after the merge started");
    assert_eq!(dm::snapshot::snapshot_status(&dm, &snap, "snapshot").unwrap(), SnapshotStatus::Invalid);

    // Complete when allocated == metadata sectors; then the origin has the snapshot's content.
    let done = wait_for("merge to complete", 60, || {
        let st = dm::snapshot::snapshot_status(&dm, &origin, "snapshot-merge").unwrap();
        st.is_merge_complete().then_some(st)
    });
    let SnapshotStatus::Usage { allocated_sectors, metadata_sectors, .. } = done else { panic!("{done:?}") };
    assert_eq!(allocated_sectors, metadata_sectors);
    assert!(same(&read_direct_at(&h.path("origin"), 0, MIB), &b), "merged origin at 0");
    assert!(same(&read_direct_at(&h.path("origin"), MIB as u64, MIB), &a[MIB..]), "merged origin at 1M");
    // Back to snapshot-origin, as rcx-dm does.
    dm.remove(&snap).unwrap();
    dm.suspend(&origin).unwrap();
    dm.load(&origin, &[SnapshotOriginTarget { real: h.real }.line(0, h.sectors)], false).unwrap();
    dm.resume(&origin).unwrap();
    assert_eq!(live_target(&origin), "snapshot-origin");
    assert!(same(&read_direct_at(&h.path("origin"), 0, MIB), &b));
}

// ---- merge rules through rcx-dm, on a slow origin so a merge is really in progress ----

/// A dm-delay device over a loop: writes wait `ms`, so merges take a while.
struct SlowDisk {
    name: String,
    _lo: Loop,
}

impl SlowDisk {
    fn new(tag: &str, bytes: u64, ms: u32) -> SlowDisk {
        sh("modprobe dm-delay");
        let lo = Loop::new(tag, bytes);
        let (d, _) = rcx_dm::loopback::block_device(&lo.dev).unwrap();
        let name = format!("t{}-{tag}", std::process::id());
        let line = TargetLine { start: 0, length: bytes / 512, target: "delay".into(), params: format!("{d} 0 0 {d} 0 {ms}") };
        let i = dm().create(&name, None, &[line], false).expect("dm-delay device");
        dm::node::ensure(&name, i.dev).unwrap();
        SlowDisk { name, _lo: lo }
    }
    fn path(&self) -> PathBuf {
        dm::node::mapper_path(&self.name)
    }
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        let _ = dm().remove(&self.name);
        dm::node::remove(&self.name);
    }
}

/// Writes `n` 4K chunks 64K apart (one merge I/O each) into `dev`; returns the expected
/// content of the first `n * 64K` bytes given the previous content `base`.
fn scatter(dev: &Path, seed: u64, n: usize, base: &[u8]) -> Vec<u8> {
    let mut want = base.to_vec();
    for i in 0..n {
        let off = i * (64 << 10);
        let c = pattern(seed + i as u64, 4096);
        write_direct_at(dev, off as u64, &c);
        want[off..off + 4096].copy_from_slice(&c);
    }
    want
}

#[test]
fn classic_merge_rules_second_merge_delete_and_teardown_while_merging() {
    let s = Scenario::new("cslow");
    let dm = dm();
    let disk = SlowDisk::new("cslow-disk", 64 << 20, 100);
    s.ok(&["pool", "create", "--data-size", "64M"]);
    let o = s.device(&["origin", "create", "o", "--from", path_str(&disk.path())]);
    assert_eq!(origin_json(&s, "o")["backing"]["kind"], "device");
    let len = 64 * (64 << 10);
    let base = pattern(30, len);
    write_direct_at(&o, 0, &base);
    let a = s.device(&["cow", "create", "a", "--origin", "o", "--size", "16M"]);
    let b = s.device(&["cow", "create", "b", "--origin", "o", "--size", "16M", "--in-pool"]);
    assert_eq!(cow_json(&s, "b")["backing"], serde_json::json!({"kind": "volume", "name": "b.cow"}));
    let want_a = scatter(&a, 100, 64, &base);
    let want_b = scatter(&b, 200, 64, &base);

    // A transient snapshot cannot be merged.
    s.ok(&["cow", "create", "t", "--origin", "o", "--size", "1M", "--transient"]);
    let err = s.fails(&["merge", "t"]);
    assert!(err.contains("transient") && err.contains("only persistent"), "{err}");

    let out = s.ok(&["merge", "a"]);
    assert!(out.contains("merging a into o in the background"), "{out}");
    assert_eq!(live_target(&dmname(&s, "o")), "snapshot-merge");
    assert!(dm.info(&dmname(&s, "a")).unwrap().is_none(), "the merging snapshot's device must be gone");
    assert_eq!(cow_json(&s, "a")["state"], "merging");
    // A second merge on the same origin, and deleting the merging snapshot, are refused.
    let err = s.fails(&["merge", "b"]);
    assert!(err.contains("origin 'o' is already merging snapshot 'a'"), "{err}");
    let err = s.fails(&["cow", "delete", "a"]);
    assert!(err.contains("snapshot 'a' is being merged into origin 'o'") && err.contains("cannot be deleted"), "{err}");
    let err = s.fails(&["origin", "delete", "o"]);
    assert!(err.contains("still has snapshots"), "{err}");
    // `merge a` again joins the running merge.
    s.ok(&["merge", "a", "--wait"]);
    assert!(same(&read_direct_at(&o, 0, len), &want_a), "origin after merging a");
    assert!(same(&read_direct_at(&b, 0, len), &want_b), "b changed by the merge of a");

    // Teardown in the middle of a merge (as at a reboot): it resumes on `pool activate`.
    s.ok(&["merge", "b"]);
    assert_eq!(cow_json(&s, "b")["state"], "merging");
    s.ok(&["pool", "deactivate"]);
    assert!(dm.info(&dmname(&s, "o")).unwrap().is_none());
    s.ok(&["pool", "activate"]);
    // The transient snapshot did not survive its device.
    assert!(origin_json(&s, "o")["snapshots"].as_array().unwrap().iter().all(|n| n != "t"));
    let t = live_target(&dmname(&s, "o"));
    assert!(t == "snapshot-merge" || t == "snapshot-origin", "{t}");
    s.ok(&["merge", "b", "--wait"]);
    assert_eq!(live_target(&dmname(&s, "o")), "snapshot-origin");
    assert!(same(&read_direct_at(&o, 0, len), &want_b), "origin after the interrupted merge of b");
    let vols = s.json(&["list", "--json"]);
    assert!(vols.as_array().unwrap().iter().all(|v| v["name"] != "b.cow"), "the COW volume was not freed: {vols}");
    s.ok(&["origin", "delete", "o"]);
    drop(s); // before the disk under it
}

// ---- interrupted merges ----

#[test]
fn classic_merge_killed_at_every_step_completes_or_is_undone_and_data_is_intact() {
    let s = Scenario::new("ckill");
    let dm = dm();
    s.ok(&["pool", "create", "--data-size", "64M"]);
    let o = s.device(&["origin", "create", "o", "--size", "32M"]);
    let mut want = pattern(40, 16 * MIB);
    write_direct_at(&o, 0, &want);
    // Before the snapshot device is removed a kill undoes the merge; after, it completes.
    let steps = [
        ("merge.recorded", false),
        ("merge.suspended", false),
        ("merge.removed", true),
        ("merge.loaded", true),
        ("merge.resumed", true),
        ("merge.done", true),
        ("merge.swapped", true),
        ("merge.freed", true),
    ];
    for (i, (step, forward)) in steps.iter().enumerate() {
        let snap = format!("k{i}");
        let d = s.device(&["cow", "create", &snap, "--origin", "o", "--size", "8M"]);
        let data = pattern(50 + i as u64, MIB);
        write_direct_at(&d, (i * MIB) as u64, &data);
        let out = s.cli_env(&["merge", &snap, "--wait"], &[("RCX_DM_FAIL_AT", step)]);
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{step}: {}", String::from_utf8_lossy(&out.stderr));
        s.ok(&["pool", "activate"]);
        let info = dm.info(&dmname(&s, "o")).unwrap().expect("origin active");
        assert!(!info.suspended, "{step}: origin left suspended");
        if *forward {
            wait_merged(&s, &snap);
            want[i * MIB..(i + 1) * MIB].copy_from_slice(&data);
        } else {
            let st = cow_json(&s, &snap);
            assert_eq!(st["state"], "valid", "{step}: the undone merge's snapshot: {st}");
            assert!(same(&read_direct_at(&d, (i * MIB) as u64, MIB), &data), "{step}: snapshot data");
            assert!(origin_json(&s, "o")["merging"].is_null());
            s.ok(&["cow", "delete", &snap]);
        }
        assert_eq!(live_target(&dmname(&s, "o")), "snapshot-origin", "{step}");
        assert!(same(&read_direct_at(&o, 0, 16 * MIB), &want), "{step}: origin content");
        assert!(!s.pool_dir().join("classic/intent.json").exists(), "{step}: intent left");
        assert!(!s.pool_dir().join(format!("classic/{snap}.cow")).exists(), "{step}: COW file left");
    }
}

// ---- revert ----

#[test]
fn revert_gives_a_volume_its_snapshots_content_and_keeps_its_id_and_name() {
    let s = Scenario::new("rev");
    s.ok(&["pool", "create", "--data-size", "128M"]);
    let d0 = s.device(&["thin", "create", "0", "--size", "16M", "--name", "web"]);
    let a = pattern(60, 4 * MIB);
    write_direct_at(&d0, 0, &a);
    s.ok(&["snap", "1", "web", "--name", "web-good"]);
    let b = pattern(61, 4 * MIB);
    write_direct_at(&d0, 0, &b);
    let out = s.ok(&["revert", "web", "web-good"]);
    assert_eq!(out.lines().last().unwrap(), path_str(&d0), "{out}");
    assert!(same(&read_direct_at(&d0, 0, 4 * MIB), &a), "revert did not bring back the snapshot's content");
    let v = s.json(&["info", "web", "--json"]);
    assert_eq!((v["id"].as_u64(), v["name"].as_str(), v["parent"].as_u64(), v["active"].as_bool()), (Some(0), Some("web"), Some(1), Some(true)), "{v}");
    // They are independent afterwards.
    write_direct_at(&d0, 0, &b);
    let d1 = mapper_thin(&s, 1);
    assert!(same(&read_direct_at(&d1, 0, 4 * MIB), &a), "writing the reverted volume changed the snapshot");
    assert_eq!(s.store_ids(), vec![0, 1]);

    // Refused while open; nothing changes.
    {
        let _held = std::fs::File::open(&d0).unwrap();
        let err = s.fails(&["revert", "0", "1"]);
        assert!(err.contains("in use") && err.contains("before reverting"), "{err}");
    }
    assert!(same(&read_direct_at(&d0, 0, 4 * MIB), &b));
    let err = s.fails(&["revert", "0", "0"]);
    assert!(err.contains("itself"), "{err}");
    // A volume under a classic origin is held by it: refused too.
    s.ok(&["origin", "create", "o", "--from", "1"]);
    let err = s.fails(&["revert", "1", "0"]);
    assert!(err.contains("in use"), "{err}");
    s.ok(&["origin", "delete", "o"]);
    // Revert of an inactive volume leaves it inactive.
    s.ok(&["deactivate", "0"]);
    s.ok(&["revert", "0", "1"]);
    assert_eq!(s.json(&["info", "0", "--json"])["active"], false);
    let d0 = s.device(&["activate", "0"]);
    assert!(same(&read_direct_at(&d0, 0, 4 * MIB), &a));
    s.ok(&["pool", "deactivate"]);
    assert_eq!(s.offline_metadata_ids(), vec![0, 1], "a scratch thin id leaked");
}

fn mapper_thin(s: &Scenario, id: u32) -> PathBuf {
    dm::node::mapper_path(&s.dm_name(id))
}

#[test]
fn revert_killed_at_every_step_leaves_the_old_or_the_new_content_never_neither() {
    let steps = [
        ("intent", false),
        ("deactivated", false),
        ("snapped", true),
        ("deleted", true),
        ("restored", true),
        ("cleaned", true),
        ("recorded", true),
        ("activated", true),
    ];
    let mut failures = Vec::new();
    for (step, forward) in steps {
        // "kill-activate": the next command is `pool activate` (what a reboot runs), whose own
        // recovery moves the transaction id on where the kill left it mid-way (a power-loss
        // replay found it then dropped the reverted volume's record).
        for mode in ["kill", "kill-activate", "error"] {
            if mode == "error" && !matches!(step, "snapped" | "restored") {
                continue;
            }
            if mode == "kill-activate" && !matches!(step, "snapped" | "deleted" | "restored") {
                continue;
            }
            let r = std::panic::catch_unwind(|| revert_crash_case(step, forward, mode));
            if r.is_err() {
                failures.push(format!("{step}/{mode}"));
            }
        }
    }
    assert!(failures.is_empty(), "revert crash cases failed: {failures:?}");
}

fn revert_crash_case(step: &str, forward: bool, mode: &str) {
    let s = Scenario::new(&format!("rk{}", &step[..3]));
    let dm = dm();
    s.ok(&["pool", "create", "--data-size", "128M"]);
    let d0 = s.device(&["thin", "create", "0", "--size", "16M"]);
    let new = pattern(70, 2 * MIB);
    write_direct_at(&d0, 0, &new);
    s.ok(&["snap", "1", "0"]);
    let old = pattern(71, 2 * MIB);
    write_direct_at(&d0, 0, &old);
    let tx0 = s.txid();
    let fail_at = format!("revert.{step}");
    let mut env = vec![("RCX_DM_FAIL_AT", fail_at.as_str())];
    if mode == "error" {
        env.push(("RCX_DM_FAIL_MODE", "error"));
    }
    let out = s.cli_env(&["revert", "0", "1"], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if mode == "kill" {
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{fail_at}: {stderr}");
        s.ok(&["list", "--json"]); // the next command recovers
    } else if mode == "kill-activate" {
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{fail_at}: {stderr}");
        s.ok(&["pool", "activate"]);
    } else {
        assert_eq!(out.status.code(), Some(1), "{fail_at}: {stderr}");
        assert!(stderr.contains(&format!("injected fault at step '{fail_at}'")), "{stderr}");
    }
    assert!(!s.pool_dir().join("intent.json").exists(), "{fail_at}/{mode}: intent left");
    let i = dm.info(&s.dm_name(0)).unwrap().unwrap_or_else(|| panic!("{fail_at}/{mode}: volume 0 not active"));
    assert!(!i.suspended);
    assert!(!dm.info(&s.dm_name(1)).unwrap().unwrap().suspended, "{fail_at}/{mode}: snapshot left suspended");
    let got = read_direct_at(&d0, 0, 2 * MIB);
    let want = if forward { &new } else { &old };
    assert!(same(&got, want), "{fail_at}/{mode}: volume 0 has neither the expected {} content", if forward { "new" } else { "old" });
    assert_eq!(s.txid(), tx0 + if forward { 4 } else { 0 }, "{fail_at}/{mode}: transaction id");
    assert_eq!(s.store_ids(), vec![0, 1]);
    assert!(same(&read_direct_at(&mapper_thin(&s, 1), 0, 2 * MIB), &new), "{fail_at}/{mode}: the snapshot changed");
    s.ok(&["pool", "deactivate"]);
    assert_eq!(s.offline_metadata_ids(), vec![0, 1], "{fail_at}/{mode}: thin ids in the kernel's metadata");
}

// ---- creates and deletes killed half-way ----

#[test]
fn classic_create_and_delete_killed_or_failing_midway_leave_nothing_half_done() {
    let s = Scenario::new("ccrash");
    let dm = dm();
    s.ok(&["pool", "create", "--data-size", "64M"]);
    let o = s.device(&["origin", "create", "o", "--size", "16M"]);
    let data = pattern(80, 2 * MIB);
    write_direct_at(&o, 0, &data);
    let exists = |name: &str| {
        let file = ["img", "cow"].iter().any(|x| s.pool_dir().join(format!("classic/{name}.{x}")).exists());
        let dev = ["", "-real", "-cow"].iter().any(|x| dm.info(&dmname(&s, &format!("{name}{x}"))).unwrap().is_some());
        let rec = ["origins", "cows"].iter().any(|d| s.pool_dir().join(format!("classic/{d}/{name}.json")).exists());
        (file, dev, rec)
    };
    let check = |what: &str| {
        assert!(!s.pool_dir().join("classic/intent.json").exists(), "{what}: intent left");
        let i = dm.info(&dmname(&s, "o")).unwrap().expect("origin o");
        assert!(!i.suspended, "{what}: origin left suspended");
        assert!(same(&read_direct_at(&o, 0, 2 * MIB), &data), "{what}: origin data");
    };
    let run = |args: &[&str], step: &str, mode: &str| {
        let mut env = vec![("RCX_DM_FAIL_AT", step)];
        if mode == "error" {
            env.push(("RCX_DM_FAIL_MODE", "error"));
        }
        let out = s.cli_env(args, &env);
        if mode == "kill" {
            assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{step}: {}", String::from_utf8_lossy(&out.stderr));
            s.ok(&["cow", "status", "--json"]); // the next command finishes or undoes it
        } else {
            assert_eq!(out.status.code(), Some(1), "{step}/error: {}", String::from_utf8_lossy(&out.stderr));
        }
    };
    let mut n = 0;
    for mode in ["kill", "error"] {
        // A create stopped anywhere before its record is written is undone completely.
        for step in ["cow-create.intent", "cow-create.cow", "cow-create.suspended", "cow-create.loaded"] {
            n += 1;
            let name = format!("c{n}");
            run(&["cow", "create", &name, "--origin", "o", "--size", "4M"], step, mode);
            check(step);
            assert_eq!(exists(&name), (false, false, false), "{step}/{mode}: (file, device, record) of {name}");
        }
        for step in ["origin-create.intent", "origin-create.loaded"] {
            n += 1;
            let name = format!("o{n}");
            run(&["origin", "create", &name, "--size", "4M"], step, mode);
            check(step);
            assert_eq!(exists(&name), (false, false, false), "{step}/{mode}: (file, device, record) of {name}");
        }
        // A delete, once its intent is written, always completes.
        for step in ["cow-delete.intent", "cow-delete.removed", "cow-delete.freed"] {
            n += 1;
            let name = format!("d{n}");
            let d = s.device(&["cow", "create", &name, "--origin", "o", "--size", "4M"]);
            write_direct_at(&d, 0, &pattern(90, MIB));
            run(&["cow", "delete", &name], step, mode);
            if mode == "error" {
                s.ok(&["cow", "status", "--json"]);
            }
            check(step);
            assert_eq!(exists(&name), (false, false, false), "{step}/{mode}: (file, device, record) of {name}");
        }
        for step in ["origin-delete.intent", "origin-delete.removed"] {
            n += 1;
            let name = format!("e{n}");
            s.ok(&["origin", "create", &name, "--size", "4M"]);
            run(&["origin", "delete", &name], step, mode);
            if mode == "error" {
                s.ok(&["cow", "status", "--json"]);
            }
            check(step);
            assert_eq!(exists(&name), (false, false, false), "{step}/{mode}: (file, device, record) of {name}");
        }
    }
    // Still fully usable.
    let d = s.device(&["cow", "create", "last", "--origin", "o", "--size", "4M"]);
    assert!(same(&read_direct_at(&d, 0, 2 * MIB), &data));
}

// ---- devices left without a table ----

/// A command killed between a device's create and the resume of its table leaves a device of
/// ours with no table (as on the thin side: see the crash vm-test). `pool activate` must make
/// every such part of a classic stack again, not take it for live (an origin shell would also
/// send the next command's settle into a resume the kernel refuses).
#[test]
fn classic_stack_devices_left_without_a_table_are_made_again() {
    use rcx_dm::pool::names;
    let s = Scenario::new("cshell");
    s.ok(&["pool", "create", "--data-size", "64M"]);
    let o = s.device(&["origin", "create", "o", "--size", "16M"]);
    let p0 = pattern(17, 4 * MIB);
    write_direct_at(&o, 0, &p0);
    s.ok(&["cow", "create", "s", "--origin", "o", "--size", "8M"]);
    let p1 = pattern(18, MIB);
    write_direct_at(&o, 0, &p1);
    let mut now = p0.clone();
    now[..MIB].copy_from_slice(&p1);
    s.ok(&["pool", "deactivate"]);
    for d in [names::classic(&s.pool, "o"), names::classic_real(&s.pool, "o"), names::classic(&s.pool, "s"), names::classic_cow(&s.pool, "s")] {
        sh(&format!("dmsetup create {} --notable -u {}", d.name, d.uuid));
        assert!(!dm().info(&d.name).unwrap().expect("the shell exists").live_table);
    }
    s.ok(&["pool", "activate"]);
    assert_eq!(live_target(&dmname(&s, "o")), "snapshot-origin");
    assert_eq!(live_target(&dmname(&s, "s")), "snapshot");
    assert!(same(&read_direct_at(&mapper(&s, "o"), 0, 4 * MIB), &now), "the origin after pool activate");
    assert!(same(&read_direct_at(&mapper(&s, "s"), 0, 4 * MIB), &p0), "the snapshot after pool activate");
    s.ok(&["cow", "delete", "s"]);
    s.ok(&["origin", "delete", "o"]);
}

/// The rules across layers are the library's own (lifecycle.rs), not the CLI's: an embedder
/// calling `Pool::deactivate`, `activate` and `destroy` gets the classic stacks taken down before
/// the pool, brought up after it, and refused (then removed with force) like the CLI does.
#[test]
fn library_entry_points_order_classic_stacks_around_the_pool() {
    let s = Scenario::new("clife");
    s.ok(&["pool", "create", "--data-size", "64M"]);
    let o = s.device(&["origin", "create", "o", "--size", "16M"]);
    let p0 = pattern(21, MIB);
    write_direct_at(&o, 0, &p0);
    s.ok(&["cow", "create", "s", "--origin", "o", "--size", "8M"]);
    let pool = lib_pool(&s);

    pool.deactivate().expect("library deactivate");
    for gone in ["o", "o-real", "s", "s-cow"] {
        assert!(dm().info(&dmname(&s, gone)).unwrap().is_none(), "{gone} left by the library's deactivate");
    }
    assert!(dm().info(&rcx_dm::pool::pool_dm_name(&s.pool)).unwrap().is_none(), "the pool left live");

    let up = pool.activate().expect("library activate").into_result().expect("complete activation");
    assert_eq!(up.classic_origins, 1, "{up:?}");
    assert_eq!(live_target(&dmname(&s, "o")), "snapshot-origin");
    assert_eq!(live_target(&dmname(&s, "s")), "snapshot");
    assert!(same(&read_direct_at(&mapper(&s, "s"), 0, MIB), &p0), "the snapshot after the library's activate");

    let e = lib_pool(&s).destroy(false).expect_err("destroy with a classic origin must be refused");
    assert!(e.to_string().contains("holding classic origins"), "{e}");
    assert_eq!(live_target(&dmname(&s, "o")), "snapshot-origin", "a refused destroy changed the stack");
    lib_pool(&s).destroy(true).expect("forced destroy");
    for gone in ["o", "o-real", "s", "s-cow"] {
        assert!(dm().info(&dmname(&s, gone)).unwrap().is_none(), "{gone} left by the library's destroy");
    }
    assert!(!s.pool_dir().exists(), "the pool's directory is left");
}
