//! Space given back to the host and volumes grown: a delete discards the volume first, so
//! data.img (a sparse file on the guest's tmpfs) shrinks by what only that volume used; `trim`
//! does the same for files deleted inside a mounted filesystem; serve's Remove and `run --rm`
//! get it through `Pool::delete`. `thin resize` grows ext4 and xfs, mounted or not, keeping
//! their data. Refused input changes nothing. The measure of what came back is the backing
//! file's allocation (st_blocks * 512), never a figure rcx-dm reports about itself.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use rcx_dm::dm::node;
use rcx_dm::{Pool, VolRef};

use crate::common::*;

const M: u64 = 1 << 20;

/// The tests that put hundreds of MiB on the guest's tmpfs take turns (the guest has 2G).
static BIG: Mutex<()> = Mutex::new(());

fn big() -> MutexGuard<'static, ()> {
    BIG.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bytes the host filesystem has allocated for the pool's data file.
fn allocated(s: &Scenario) -> u64 {
    std::fs::metadata(s.pool_dir().join("data.img")).expect("data.img").blocks() * 512
}

fn mib(b: u64) -> f64 {
    b as f64 / M as f64
}

/// Wait until data.img has given back at least `want` bytes from `from`; returns the drop.
fn wait_for_drop(s: &Scenario, what: &str, from: u64, want: u64) -> u64 {
    wait_for(&format!("{what}: data.img to give back {:.0} MiB", mib(want)), 30, || {
        let dropped = from.saturating_sub(allocated(s));
        (dropped >= want).then_some(dropped)
    })
}

/// The pool must pass discards down to its data device, or nothing reaches data.img.
fn assert_discard_passdown(s: &Scenario) {
    let lines = dm().status(&rcx_dm::pool::pool_dm_name(&s.pool)).unwrap();
    assert!(lines[0].params.split_whitespace().any(|w| w == "discard_passdown"), "no discard passdown: {lines:?}");
}

/// `bytes` of incompressible data at `offset` of a block device, O_DIRECT, 8 MiB at a time.
fn fill(dev: &Path, offset: u64, bytes: u64, seed: u64) {
    let chunk = 8 * M;
    let mut off = 0;
    while off < bytes {
        let n = chunk.min(bytes - off);
        write_direct_at(dev, offset + off, &pattern(seed + off / chunk, n as usize));
        off += n;
    }
}

/// A file of `bytes` incompressible bytes, fsynced.
fn write_file(path: &Path, bytes: u64, seed: u64) {
    let mut f = std::fs::File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    let chunk = 4 * M;
    for i in 0..bytes.div_ceil(chunk) {
        f.write_all(&pattern(seed + i, chunk.min(bytes - i * chunk) as usize)).unwrap();
    }
    f.sync_all().unwrap();
}

/// Mount `dev` (ext4 or xfs) on a fresh directory; unmounted on drop.
struct FsMount {
    dir: PathBuf,
}

impl FsMount {
    fn new(dev: &Path, fs: &str, tag: &str, read_only: bool) -> FsMount {
        let dir = scratch().join(format!("mnt-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let flags = if read_only { nix::mount::MsFlags::MS_RDONLY } else { nix::mount::MsFlags::empty() };
        let data = (fs == "xfs").then_some("nouuid");
        nix::mount::mount(Some(dev), &dir, Some(fs), flags, data)
            .unwrap_or_else(|e| panic!("mounting {} ({fs}) on {}: {e}", dev.display(), dir.display()));
        FsMount { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// What df shows: blocks times fragment size.
    fn fs_bytes(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(&self.dir).unwrap();
        st.blocks() as u64 * st.fragment_size() as u64
    }
}

impl Drop for FsMount {
    fn drop(&mut self) {
        if let Err(e) = umount(&self.dir) {
            eprintln!("umount {}: {e}", self.dir.display());
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn mkfs(fs: &str, dev: &Path) {
    match fs {
        "ext4" => mkfs_ext4(dev),
        _ => {
            sh(&format!("mkfs.xfs -q -f -K '{}'", dev.display()));
        }
    }
}

fn dev_bytes(dev: &Path) -> u64 {
    rcx_dm::loopback::block_device(dev).unwrap().1
}

// ---- delete ----

#[test]
fn space_delete_gives_a_volumes_blocks_back_to_the_host_file() {
    let _big = big();
    let s = Scenario::new("sdel");
    s.ok(&["pool", "create", "--data-size", "2G"]);
    assert_discard_passdown(&s);
    let pool = lib_pool(&s);
    let dev = pool.create_thin(Some(0), 600 * M, Some("big")).unwrap().device.expect("active");
    let empty = allocated(&s);
    fill(&dev, 0, 500 * M, 1);
    let full = allocated(&s);
    assert!(full - empty >= 500 * M, "500M written, data.img grew by {:.0} MiB", mib(full - empty));
    assert_eq!(kernel_status(&s).data_used_blocks, 500 * M / (64 << 10));

    // Active: --force discards it through its own device, then takes it down.
    let t = Instant::now();
    pool.delete(&VolRef::Name("big".into()), true).unwrap();
    let returned = t.elapsed();
    let dropped = wait_for_drop(&s, "delete", full, 450 * M);
    let took = t.elapsed();
    println!(
        "delete of a volume with 500M written: data.img {:.0} -> {:.0} MiB; delete returned after {:.2} s, space back after {:.2} s",
        mib(full),
        mib(full - dropped),
        returned.as_secs_f64(),
        took.as_secs_f64()
    );
    println!("BENCH delete_discard_mib_per_s={:.0}", mib(dropped) / took.as_secs_f64());
    assert_eq!(kernel_status(&s).data_used_blocks, 0);
    assert!(dm().info(&s.dm_name(0)).unwrap().is_none(), "the delete's device is gone");
    assert!(!node::mapper_path(&s.dm_name(0)).exists());
    assert!(pool.volumes().unwrap().is_empty());
    assert!(!s.pool_dir().join("intent.json").exists());
}

#[test]
fn space_delete_keeps_what_a_snapshot_shares_and_honours_discard_on_delete() {
    let s = Scenario::new("sdel2");
    s.ok(&["pool", "create", "--data-size", "1G"]);
    let pool = lib_pool(&s);

    // An inactive origin whose blocks a snapshot shares: the snapshot keeps every byte, and
    // the host file keeps the shared blocks; only what the origin alone wrote comes back.
    let origin = pool.create_thin(Some(1), 64 * M, None).unwrap().device.unwrap();
    fill(&origin, 0, 32 * M, 5);
    pool.snapshot(Some(2), &VolRef::Id(1), None, None).unwrap();
    fill(&origin, 32 * M, 16 * M, 6);
    pool.deactivate_volume(&VolRef::Id(1)).unwrap();
    let snap = node::mapper_path(&s.dm_name(2));
    let snap_digest = device_digest(&snap);
    let full = allocated(&s);
    s.ok(&["delete", "1"]);
    let dropped = wait_for_drop(&s, "delete of an origin", full, 16 * M);
    let now = allocated(&s);
    assert!(dropped < 17 * M, "the snapshot's shared 32M went too: data.img dropped {:.1} MiB", mib(dropped));
    assert_eq!(device_digest(&snap), snap_digest, "the snapshot's content changed");
    assert_eq!(read_direct_at(&snap, 0, 8 * M as usize), pattern(5, 8 * M as usize));
    assert!(dm().info(&s.dm_name(1)).unwrap().is_none(), "the temporary device of an inactive volume is gone");

    // The snapshot itself, deleted: now those blocks are no one else's.
    s.ok(&["delete", "--force", "2"]);
    wait_for_drop(&s, "delete of the snapshot", now, 31 * M);

    // discard_on_delete off (pool.json, as `pool set --discard-on-delete off` writes it): the
    // pool frees the blocks, the host file keeps them.
    let cfg_path = s.pool_dir().join("pool.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["discard_on_delete"] = serde_json::Value::Bool(false);
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let dev = pool.create_thin(Some(3), 64 * M, None).unwrap().device.unwrap();
    fill(&dev, 0, 32 * M, 8);
    let full = allocated(&s);
    s.ok(&["delete", "--force", "3"]);
    assert_eq!(kernel_status(&s).data_used_blocks, 0, "the pool freed the blocks");
    assert!(full - allocated(&s) < M, "discard_on_delete=false, yet data.img dropped {:.1} MiB", mib(full - allocated(&s)));

    // What the discard costs a delete of a small active volume (its extra device and ioctls).
    let mut per_delete = |on: bool| {
        cfg["discard_on_delete"] = serde_json::Value::Bool(on);
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        let mut total = std::time::Duration::ZERO;
        for id in 10..20 {
            let dev = pool.create_thin(Some(id), 16 * M, None).unwrap().device.unwrap();
            write_direct_at(&dev, 0, &pattern(id as u64, 64 << 10));
            let t = Instant::now();
            pool.delete(&VolRef::Id(id), true).unwrap();
            total += t.elapsed();
        }
        total.as_secs_f64() * 100.0
    };
    let (off, on) = (per_delete(false), per_delete(true));
    println!("delete --force of a 16M volume with 64K written: {off:.1} ms without the discard, {on:.1} ms with it");
    assert_eq!(kernel_status(&s).data_used_blocks, 0);
}

// ---- trim ----

#[test]
fn space_trim_gives_a_deleted_files_blocks_back() {
    let _big = big();
    let s = Scenario::new("strim");
    s.ok(&["pool", "create", "--data-size", "2G"]);
    assert_discard_passdown(&s);
    let pool = lib_pool(&s);
    let t_id = pool.create_thin(None, 1024 * M, Some("t")).unwrap();
    let dev = t_id.device.clone().unwrap();
    mkfs_ext4(&dev);
    {
        // Mounted here; `rcx-dm trim` trims through its own private mount of the same superblock.
        let m = FsMount::new(&dev, "ext4", &format!("{}-t", s.pool), false);
        write_file(&m.path("big"), 300 * M, 7);
        let full = allocated(&s);
        std::fs::remove_file(m.path("big")).unwrap();
        let t = Instant::now();
        let out = s.json(&["trim", "t", "--json"]);
        let cli = t.elapsed();
        let trimmed = out[0]["trimmed_bytes"].as_u64().unwrap_or_else(|| panic!("{out}"));
        assert_eq!(out[0]["id"], t_id.id, "{out}");
        assert!(trimmed >= 250 * M, "FITRIM reported {:.0} MiB", mib(trimmed));
        let dropped = wait_for_drop(&s, "trim", full, 250 * M);
        println!(
            "trim (CLI, process included) after deleting a 300M file: reported {:.0} MiB, data.img gave back {:.0} MiB in {:.2} s",
            mib(trimmed),
            mib(dropped),
            cli.as_secs_f64()
        );

        // The same in-process, for the figure without a process spawn.
        write_file(&m.path("big2"), 300 * M, 70);
        let full = allocated(&s);
        std::fs::remove_file(m.path("big2")).unwrap();
        let t = Instant::now();
        let r = rcx_dm::rootfs::trim::trim(&pool, &VolRef::Name("t".into())).unwrap();
        let dropped = wait_for_drop(&s, "trim (library)", full, 250 * M);
        let took = t.elapsed();
        assert!(r.trimmed_bytes >= 250 * M, "{r:?}");
        println!("trim (library) of a deleted 300M file: {:.0} MiB back in {:.2} s", mib(dropped), took.as_secs_f64());
        println!("BENCH trim_mib_per_s={:.0}", mib(dropped) / took.as_secs_f64());
        // The file system saw nothing of it but the free space.
        assert!(std::fs::read_dir(&m.dir).unwrap().all(|e| e.unwrap().file_name() == "lost+found"));
        write_file(&m.path("kept"), 8 * M, 71);
        write_file(&m.path("small"), 40 * M, 80);
    }

    // Inactive: activated for the trim, inactive again afterwards.
    {
        let m = FsMount::new(&dev, "ext4", &format!("{}-t3", s.pool), false);
        std::fs::remove_file(m.path("small")).unwrap();
    }
    pool.deactivate_volume(&VolRef::Name("t".into())).unwrap();
    let full = allocated(&s);
    let out = s.ok(&["trim", "t"]);
    assert!(out.contains(&format!("volume {}: trimmed", t_id.id)), "{out}");
    wait_for_drop(&s, "trim of an inactive volume", full, 35 * M);
    assert!(dm().info(&s.dm_name(t_id.id)).unwrap().is_none(), "trim left the volume active");
    assert!(!pool.volume(&VolRef::Name("t".into())).unwrap().active);

    // --all: the writable volumes with a filesystem; read-only bases and raw volumes skipped.
    pool.create_thin(None, 16 * M, Some("raw")).unwrap();
    let b = pool.create_thin(None, 64 * M, Some("base")).unwrap();
    mkfs_ext4(b.device.as_deref().unwrap());
    pool.set_read_only(&VolRef::Name("base".into()), true).unwrap();
    let all = s.json(&["trim", "--all", "--json"]);
    let ids: Vec<u64> = all.as_array().unwrap().iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [t_id.id as u64], "{all}");
    assert!(all[0].get("error").is_none(), "{all}");
    let m = FsMount::new(&dev_of(&s, "t"), "ext4", &format!("{}-t4", s.pool), true);
    assert!(m.path("kept").exists());
    assert_eq!(std::fs::read(m.path("kept")).unwrap(), (0..2).flat_map(|i| pattern(71 + i, 4 * M as usize)).collect::<Vec<u8>>());
}

/// The volume's device, activating it.
fn dev_of(s: &Scenario, vol: &str) -> PathBuf {
    lib_pool(s).activate_volume(&VolRef::Name(vol.into())).unwrap()
}

// ---- serve and run --rm ----

#[test]
fn space_serve_remove_gives_the_space_back() {
    use rcx_dm::internals::serve_store::Kind;
    use rcx_dm::serve::{Options, Service};
    let _big = big();
    let s = Scenario::new("ssrv");
    s.ok(&["pool", "create", "--data-size", "2G", "--meta-size", "32M"]);
    let svc = Service::new(lib_pool(&s), Options { size_bytes: 512 * M, ..Options::default() }).unwrap();
    let mounts = svc.create(Kind::Active, "c1", "", BTreeMap::new()).unwrap();
    let dev = PathBuf::from(&mounts[0].source);
    {
        let m = FsMount::new(&dev, "ext4", &format!("{}-c1", s.pool), false);
        write_file(&m.path("big"), 200 * M, 9);
    }
    let full = allocated(&s);
    svc.remove("c1").unwrap();
    let dropped = wait_for_drop(&s, "serve's Remove", full, 180 * M);
    println!("serve Remove of a snapshot with a 200M file: data.img gave back {:.0} MiB", mib(dropped));
    assert!(svc.stat("c1").is_err());
    assert!(!dev.exists(), "{} is still there", dev.display());
}

const APPLETS: &[&str] = &["sh", "dd", "echo", "true", "cat"];

#[test]
fn space_run_rm_gives_the_containers_writes_back() {
    let _big = big();
    let s = Scenario::new("srun");
    s.ok(&["pool", "create", "--data-size", "2G"]);
    let pool = lib_pool(&s);
    let dev = pool.create_thin(None, 400 * M, Some("base")).unwrap().device.unwrap();
    mkfs_ext4(&dev);
    {
        let m = FsMount::new(&dev, "ext4", &format!("{}-base", s.pool), false);
        for d in ["bin", "dev", "proc", "sys", "etc", "root", "tmp"] {
            std::fs::create_dir_all(m.path(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", m.path("bin/busybox")).expect("copy the host's busybox-static");
        for a in APPLETS {
            std::os::unix::fs::symlink("busybox", m.path(&format!("bin/{a}"))).unwrap();
        }
    }
    s.ok(&["set-readonly", "base"]);
    s.ok(&["deactivate", "base"]);
    let before = allocated(&s);

    // The container writes 200M and says so, then waits on its stdin, which the test holds (-i).
    let script = "if dd if=/dev/zero of=/big bs=1M count=200 conv=fsync 2>/dev/null; then echo written; else echo dd-failed; fi; read x; true";
    let mut c = Command::new(bin())
        .args(["run", "--rm", "-i", "base", "--", "sh", "-c", script])
        .env("RCX_DM_ROOT", &s.root)
        .env("RCX_DM_POOL", &s.pool)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rcx-dm run");
    let mut line = String::new();
    BufReader::new(c.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "written", "the container's dd");
    let peak = allocated(&s);
    assert!(peak - before >= 190 * M, "the container's 200M grew data.img by only {:.0} MiB", mib(peak - before));
    drop(c.stdin.take());
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "run --rm: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let dropped = wait_for_drop(&s, "run --rm", peak, 180 * M);
    println!("run --rm of a container that wrote 200M: data.img gave back {:.0} MiB", mib(dropped));
    let names: Vec<Option<String>> = pool.volumes().unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(names, [Some("base".to_string())], "the run's snapshot is gone");
}

// ---- thin resize ----

#[test]
fn space_resize_grows_ext4_and_xfs_mounted_and_unmounted() {
    let s = Scenario::new("sres");
    s.ok(&["pool", "create", "--data-size", "2G"]);
    let pool = lib_pool(&s);
    for (i, fs) in ["ext4", "xfs"].into_iter().enumerate() {
        let name = format!("v{fs}");
        // mkfs.xfs 6.1 refuses filesystems under 300M.
        let dev = pool.create_thin(None, 320 * M, Some(&name)).unwrap().device.unwrap();
        mkfs(fs, &dev);
        let data = pattern(100 + i as u64, 8 * M as usize);

        // Mounted: grown online, seen at once through the existing mount.
        let at_480 = {
            let m = FsMount::new(&dev, fs, &format!("{}-{name}", s.pool), false);
            std::fs::write(m.path("data"), &data).unwrap();
            let before = m.fs_bytes();
            let out = s.json(&["thin", "resize", &name, "--size", "480M", "--json"]);
            assert_eq!(out["size_bytes"], 480 * M, "{out}");
            let after = m.fs_bytes();
            println!("{fs} mounted: {:.0} MiB -> {:.0} MiB (df through the mount), reported {}", mib(before), mib(after), out["fs_bytes"]);
            assert!(after >= before + 140 * M, "{fs}: df shows {:.0} -> {:.0} MiB after growing 320M -> 480M", mib(before), mib(after));
            assert_eq!(out["fs_bytes"], after, "{out}");
            assert_eq!(dev_bytes(&dev), 480 * M);
            assert_eq!(std::fs::read(m.path("data")).unwrap(), data, "{fs}: data written before the resize");
            // Equal size: nothing to do, success.
            let out = s.json(&["thin", "resize", &name, "--size", "480M", "--json"]);
            assert_eq!((out["size_bytes"].as_u64(), out["fs_bytes"].as_u64()), (Some(480 * M), Some(after)), "{out}");
            after
        };

        // Unmounted and inactive: activated for it, inactive again after.
        pool.deactivate_volume(&VolRef::Name(name.clone())).unwrap();
        let out = s.json(&["thin", "resize", &name, "--size", "640M", "--json"]);
        assert_eq!(out["size_bytes"], 640 * M, "{out}");
        assert_eq!(out["active"], false, "{out}");
        assert!(dm().info(&pool.thin_dm_name(out["id"].as_u64().unwrap() as u32)).unwrap().is_none());
        let dev = dev_of(&s, &name);
        assert_eq!(dev_bytes(&dev), 640 * M);
        let m = FsMount::new(&dev, fs, &format!("{}-{name}-2", s.pool), false);
        let grown = m.fs_bytes();
        println!("{fs} unmounted: now {:.0} MiB (df), reported {}", mib(grown), out["fs_bytes"]);
        assert!(grown >= at_480 + 140 * M, "{fs}: df shows {:.0} -> {:.0} MiB after growing 480M -> 640M", mib(at_480), mib(grown));
        assert_eq!(out["fs_bytes"], grown, "{out}");
        assert_eq!(std::fs::read(m.path("data")).unwrap(), data, "{fs}: data after two resizes");

        // Trim on the grown filesystem, ext4 and xfs alike (xfs frees extents only at its log
        // commit; trim syncs first).
        write_file(&m.path("gone"), 48 * M, 200 + i as u64);
        let full = allocated(&s);
        std::fs::remove_file(m.path("gone")).unwrap();
        let r = rcx_dm::rootfs::trim::trim(&pool, &VolRef::Name(name.clone())).unwrap();
        let dropped = wait_for_drop(&s, &format!("trim of {fs}"), full, 40 * M);
        println!("{fs}: trim reported {:.0} MiB, data.img gave back {:.0} MiB", mib(r.trimmed_bytes), mib(dropped));
    }
    // A raw volume (no filesystem) only grows.
    pool.create_thin(None, 16 * M, Some("raw")).unwrap();
    let out = s.json(&["thin", "resize", "raw", "--size", "32M", "--json"]);
    assert_eq!((out["size_bytes"].as_u64(), out["fs_bytes"].is_null()), (Some(32 * M), true), "{out}");
    assert_eq!(dev_bytes(&node::mapper_path(&pool.thin_dm_name(out["id"].as_u64().unwrap() as u32))), 32 * M);
}

// ---- refusals ----

/// Everything a refused command must leave alone: volumes, the kernel's transaction id, every
/// dm device of the pool with its table, and the store's records (names and contents).
#[derive(Debug, PartialEq)]
struct State {
    volumes: Vec<rcx_dm::Volume>,
    txid: u64,
    tables: Vec<(String, Vec<rcx_dm::dm::TargetLine>)>,
    records: Vec<(String, Vec<u8>)>,
}

fn state(s: &Scenario) -> State {
    let pool = Pool::open(&s.root, &s.pool).unwrap();
    let prefix = s.dm_prefix();
    let dm = dm();
    let mut names: Vec<String> = dm.list().unwrap().into_iter().filter(|n| n.starts_with(&prefix)).collect();
    names.sort();
    let tables = names.into_iter().map(|n| (n.clone(), dm.table(&n).unwrap())).collect();
    let mut records = Vec::new();
    for sub in ["", "volumes", "names"] {
        let dir = s.pool_dir().join(sub);
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let n = e.file_name().into_string().unwrap();
            if e.path().is_file() && !["data.img", "meta.img", "lock", "bases.lock"].contains(&n.as_str()) {
                records.push((format!("{sub}/{n}"), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    records.sort();
    State {
        volumes: pool.volumes().unwrap(),
        txid: pool.status().unwrap().kernel.unwrap().transaction_id,
        tables,
        records,
    }
}

fn refused(s: &Scenario, args: &[&str], needles: &[&str]) -> String {
    let before = state(s);
    let err = s.fails(args);
    for n in needles {
        assert!(err.contains(n), "rcx-dm {args:?}: message lacks '{n}':\n{err}");
    }
    assert!(!err.contains("panicked"), "rcx-dm {args:?} panicked:\n{err}");
    assert_eq!(state(s), before, "rcx-dm {args:?} was refused but changed something");
    println!("rcx-dm {}: {}", args.join(" "), err.trim());
    err
}

#[test]
fn space_refused_resizes_and_trims_change_nothing() {
    let s = Scenario::new("sbad");
    s.ok(&["pool", "create", "--data-size", "1G"]);
    let pool = lib_pool(&s);
    let dev = pool.create_thin(None, 64 * M, Some("v")).unwrap().device.unwrap();
    mkfs_ext4(&dev);
    let b = pool.create_thin(None, 64 * M, Some("b")).unwrap().device.unwrap();
    mkfs_ext4(&b);
    pool.set_read_only(&VolRef::Name("b".into()), true).unwrap();
    // The private mounts' directory exists before the first state is taken.
    std::fs::create_dir_all(s.pool_dir().join("mnt")).unwrap();

    refused(&s, &["thin", "resize", "v", "--size", "32M"], &["only grows", "67108864", "33554432"]);
    refused(&s, &["thin", "resize", "b", "--size", "128M"], &["read-only", "snap", "set-readonly --off b"]);
    refused(&s, &["trim", "b"], &["read-only", "trimmed"]);
    refused(&s, &["thin", "resize", "nosuch", "--size", "128M"], &["no volume 'nosuch'"]);
    refused(&s, &["trim", "nosuch"], &["no volume 'nosuch'"]);
    refused(&s, &["thin", "resize", "v", "--size", "1000"], &["multiple of 512"]);
    // Deactivated read-only base: refused before any activation.
    pool.deactivate_volume(&VolRef::Name("b".into())).unwrap();
    refused(&s, &["trim", "b"], &["read-only"]);

    // In use read-only elsewhere (as a container's view would be): the read-write private mount
    // that trim and grow need is refused by the kernel, and so is the command, before anything.
    {
        let _ro = FsMount::new(&dev, "ext4", &format!("{}-ro", s.pool), true);
        refused(&s, &["trim", "v"], &["mounted read-only elsewhere", "unmount it"]);
        refused(&s, &["thin", "resize", "v", "--size", "128M"], &["mounted read-only elsewhere", "growing its filesystem"]);
        let err = s.fails(&["trim", "--all"]);
        assert!(err.contains("1 volume(s) could not be trimmed"), "{err}");
    }
    // Once it is free, both work.
    s.ok(&["trim", "v"]);
    s.ok(&["thin", "resize", "v", "--size", "128M"]);
    assert_eq!(dev_bytes(&dev), 128 * M);
}

// ---- interruptions ----

#[test]
fn space_interrupted_deletes_and_resizes_leave_a_consistent_pool() {
    use devicemapper::{DevId, DmFlags, DmName, DM};
    use std::os::unix::process::ExitStatusExt;
    let s = Scenario::new("sflt");
    s.ok(&["pool", "create", "--data-size", "1G"]);
    let pool = lib_pool(&s);

    // A delete killed before and after its discard: the next command (list) finishes it, and
    // the host file still gets the space back.
    for (id, step) in [(1u32, "delete.intent"), (2, "delete.discarded")] {
        let dev = pool.create_thin(Some(id), 64 * M, None).unwrap().device.unwrap();
        fill(&dev, 0, 32 * M, id as u64);
        let full = allocated(&s);
        let out = s.cli_env(&["delete", "--force", &id.to_string()], &[("RCX_DM_FAIL_AT", step)]);
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{step}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(s.pool_dir().join("intent.json").exists(), "{step}: no intent left to recover");
        assert!(!s.store_ids().contains(&id), "{step}: volume {id} survived the recovery");
        let dropped = wait_for_drop(&s, step, full, 31 * M);
        println!("delete killed at {step}: recovered by the next command, data.img gave back {:.0} MiB", mib(dropped));
        assert!(dm().info(&s.dm_name(id)).unwrap().is_none());
        assert!(!s.pool_dir().join("intent.json").exists());
    }

    // A resize failing at each of its steps: the record and the live table agree, the device
    // is resumed and holds no table left loaded.
    let dev = pool.create_thin(Some(5), 64 * M, Some("r")).unwrap().device.unwrap();
    fill(&dev, 0, 4 * M, 50);
    let flags = || {
        let dm = DM::new().unwrap();
        dm.device_info(&DevId::Name(DmName::new(&s.dm_name(5)).unwrap())).unwrap().flags()
    };
    for step in ["resize.recorded", "resize.loaded", "resize.suspended"] {
        let have = pool.resolve(&VolRef::Id(5)).unwrap().size_bytes;
        let want = (have + 64 * M).to_string();
        let out = s.cli_env(&["thin", "resize", "r", "--size", &want], &[("RCX_DM_FAIL_AT", step), ("RCX_DM_FAIL_MODE", "error")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(step), "{step}: {err}");
        let rec = pool.resolve(&VolRef::Id(5)).unwrap().size_bytes;
        let table = dm().table(&s.dm_name(5)).unwrap();
        let f = flags();
        println!("resize failing at {step}: {have} -> {rec} bytes (table {} sectors)", table[0].length);
        assert_eq!(table[0].length * 512, rec, "{step}: record and live table disagree");
        assert_eq!(dev_bytes(&dev), rec, "{step}");
        assert!(!f.contains(DmFlags::DM_SUSPEND), "{step}: left suspended");
        assert!(!f.contains(DmFlags::DM_INACTIVE_PRESENT), "{step}: a table is left loaded");
        assert_eq!(read_direct_at(&dev, 0, 4 * M as usize), pattern(50, 4 * M as usize), "{step}");
    }
    s.ok(&["thin", "resize", "r", "--size", "1G"]);
    assert_eq!(dev_bytes(&dev), 1 << 30);
    s.ok(&["pool", "deactivate"]);
    assert_eq!(s.offline_metadata_ids(), [5], "thin_check passes, no id leaked");
}
