//! Power loss, the xfstests way: the state store (RCX_DM_ROOT, an ext4) and with it the pool's
//! metadata and data files sit on one dm-log-writes device, so the log holds every write of a
//! run of operations in the order it reached stable storage. The log is then replayed onto a
//! fresh file, and at every FLUSH/FUA entry (each a moment the power could have gone with all
//! logged writes durable) the replayed disk is checked through a throwaway snapshot: it mounts,
//! thin_check is clean, `pool activate` succeeds, the store and the kernel agree, nothing
//! half-made is left, and every operation that returned before the moment is there with its
//! content. One log device for everything gives one global order; two logs could not be cut
//! at the same instant.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;


use crate::common::*;
use crate::logwrites::Log;
use crate::watchdog::Watchdog;

const STORE_BYTES: u64 = 1 << 30;
const LOG_BYTES: u64 = 3 << 30;
const COW_BYTES: u64 = 1 << 30;
const DATA0_LEN: usize = 4 << 20;

/// What a volume must hold once the operation that gave it that content has returned.
#[derive(Clone, PartialEq, Debug)]
enum Content {
    /// The device starts with these bytes (kept whole: comparing is a memcmp, where a digest
    /// of megabytes in a debug build under emulation costs seconds per check).
    Bytes(Arc<Vec<u8>>),
    /// The volume's filesystem holds `path` with these bytes.
    File { path: &'static str, data: Vec<u8> },
}

fn bytes(data: &[u8]) -> Content {
    Content::Bytes(Arc::new(data.to_vec()))
}

/// The store after an operation returned: volume id -> name, and the contents known.
#[derive(Clone, Debug, Default)]
struct State {
    op: String,
    volumes: BTreeMap<u32, String>,
    contents: BTreeMap<u32, Content>,
    /// Volumes this operation writes as an application would (write + fsync): while it runs
    /// they may hold any mix of old and new blocks (block writes are not atomic), so only once
    /// it has returned is their content checked. Every other operation is all-or-nothing.
    torn: Vec<u32>,
    /// Name prefixes of the pool's own volumes this operation makes on its way (a shared
    /// `base-*`, a `populate-<id>` scratch): a power cut may leave one, by design (the next
    /// populate or delete removes a scratch; a base is kept for reuse).
    leaves: &'static [&'static str],
}

/// Whether a step writes its volumes' contents torn-ably (see `State::torn`).
const WRITES: bool = true;
const ATOMIC: bool = false;

/// Everything the test set up outside a Scenario, torn down in reverse on drop, pass or fail.
struct Rig {
    tag: String,
    files: Vec<PathBuf>,
    dms: Vec<String>,
    mounts: Vec<PathBuf>,
}

impl Rig {
    fn file(&mut self, name: &str, bytes: u64) -> (PathBuf, PathBuf) {
        let file = scratch().join(format!("{}-{name}.img", self.tag));
        let _ = std::fs::remove_file(&file);
        rcx_dm::loopback::create_sparse(&file, bytes).expect("sparse file");
        let dev = rcx_dm::loopback::attach(&file).expect("attach loop");
        self.files.push(file.clone());
        (file, dev)
    }

    /// A one-line table `0 SECTORS TARGET PARAMS`, made by ioctl (a dmsetup spawn per check
    /// point costs more under emulation than the check's own kernel work).
    fn dm_create(&mut self, dm: &rcx_dm::dm::Dm, name: &str, sectors: u64, target: &str, params: &str) -> PathBuf {
        let line = rcx_dm::dm::TargetLine { start: 0, length: sectors, target: target.into(), params: params.into() };
        let info = dm.create(name, None, &[line], false).unwrap_or_else(|e| panic!("creating {name} ({target} {params}): {e}"));
        self.dms.push(name.to_string());
        rcx_dm::dm::node::ensure(name, info.dev).expect("/dev/mapper node")
    }

    /// Remove a device of the rig. Another test's short-lived mount namespace (a populate's,
    /// a container's before its pivot_root) may hold a copy of a mount we just unmounted and so
    /// keep the device open for a moment: EBUSY is retried for a while.
    fn dm_remove(&mut self, dm: &rcx_dm::dm::Dm, name: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match dm.remove(name) {
                Err(e) if e.errno() == Some(nix::errno::Errno::EBUSY) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(100))
                }
                r => break r.unwrap_or_else(|e| panic!("removing {name}: {e}")),
            }
        }
        rcx_dm::dm::node::remove(name);
        self.dms.retain(|d| d != name);
    }

    fn mount(&mut self, dev: &Path, dir: &Path, flags: nix::mount::MsFlags, data: Option<&str>) -> Result<(), String> {
        std::fs::create_dir_all(dir).expect("mount point");
        nix::mount::mount(Some(dev), dir, Some("ext4"), flags, data).map_err(|e| format!("mounting {} on {}: {e}", dev.display(), dir.display()))?;
        self.mounts.push(dir.to_path_buf());
        Ok(())
    }

    fn umount(&mut self, dir: &Path) {
        umount(dir).unwrap_or_else(|e| panic!("umount {}: {e}", dir.display()));
        self.mounts.retain(|m| m != dir);
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for m in self.mounts.drain(..).rev() {
            let _ = umount(&m);
        }
        for d in self.dms.drain(..).rev() {
            let _ = Command::new("dmsetup").args(["remove", &d]).output();
        }
        for f in self.files.drain(..).rev() {
            let _ = rcx_dm::loopback::detach(&f);
            let _ = std::fs::remove_file(&f);
        }
    }
}

/// Run one operation, then record the store's state after it and mark the log.
#[allow(clippy::too_many_arguments)]
fn step(s: &Scenario, lw: &str, states: &mut Vec<State>, op: &str, writes: bool, leaves: &'static [&'static str], contents: &[(u32, Content)], f: &dyn Fn()) {
    f();
    let list = s.json(&["list", "--json"]);
    let volumes = list
        .as_array()
        .expect("list --json gives an array")
        .iter()
        .map(|v| (v["id"].as_u64().expect("id") as u32, v["name"].as_str().unwrap_or("").to_string()))
        .collect::<BTreeMap<_, _>>();
    let mut contents_now = states.last().map(|p| p.contents.clone()).unwrap_or_default();
    contents_now.retain(|id, _| volumes.contains_key(id));
    contents_now.extend(contents.iter().cloned());
    let torn = if writes { contents.iter().map(|(id, _)| *id).collect() } else { Vec::new() };
    states.push(State { op: op.to_string(), volumes, contents: contents_now, torn, leaves });
    mark(lw, &format!("op:{op}"));
}

fn mark(lw: &str, text: &str) {
    sh(&format!("dmsetup message {lw} 0 mark {text}"));
}

/// Write `data` at the start of `dev` and make it durable (a flush through the thin device
/// commits the pool's metadata too), as an application's write + fsync would.
fn write_durably(dev: &Path, data: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(dev).expect("open device for writing");
    f.write_all_at(data, 0).expect("write the device");
    f.sync_all().expect("fsync the device");
}

fn populate_tar(path: &Path, hello: &[u8]) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, mode, data) in [("hello.txt", 0o644, hello.to_vec()), ("big.bin", 0o600, pattern(77, 256 << 10))] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, name, &data[..]).expect("tar entry");
    }
    std::fs::write(path, b.into_inner().expect("tar")).expect("write tar");
}

#[test]
fn powerloss_replay_every_flush_of_a_run_of_operations() {
    let dm = dm();
    let pid = std::process::id();
    let tag = format!("pl{pid}");
    let mut rig = Rig { tag: tag.clone(), files: vec![], dms: vec![], mounts: vec![] };
    let sectors = STORE_BYTES / 512;

    // The logged disk: an ext4 on log-writes over a loop; the log on another loop.
    let (_, base_dev) = rig.file("base", STORE_BYTES);
    let (log_file, log_dev) = rig.file("log", LOG_BYTES);
    // The rig's own dm names stay off the pool's prefix (`<pool>-`).
    let lw = format!("x{tag}-lw");
    let lw_dev = rig.dm_create(&dm, &lw, sectors, "log-writes", &format!("{} {}", base_dev.display(), log_dev.display()));
    // nodiscard: mkfs would log a discard of the whole disk; no lazy init: no background
    // writes from ext4lazyinit in the log.
    sh(&format!("mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 {}", lw_dev.display()));
    let root = scratch().join(format!("{tag}-root"));
    rig.mount(&lw_dev, &root, nix::mount::MsFlags::empty(), None).expect("mount the logged ext4");
    let s = Scenario { root: root.clone(), pool: tag.clone() };

    // The run: every operation, then its state as the store reports it, then a mark.
    let mut states: Vec<State> = vec![State { op: "mkfs".into(), ..Default::default() }];
    mark(&lw, "op:mkfs");
    let hello = b"written before the power went\n".to_vec();
    let tarball = scratch().join(format!("{tag}-pop.tar"));
    populate_tar(&tarball, &hello);
    let data0 = pattern(1, DATA0_LEN);
    let mut data0b = data0.clone();
    data0b[..1 << 20].copy_from_slice(&pattern(2, 1 << 20));
    step(&s, &lw, &mut states, "pool-create", ATOMIC, &[], &[], &|| {
        s.ok(&["pool", "create", "--data-size", "256M"]);
    });
    step(&s, &lw, &mut states, "create-0", WRITES, &[], &[(0, bytes(&data0))], &|| {
        let d = s.device(&["thin", "create", "0", "--size", "16M"]);
        write_durably(&d, &data0);
    });
    step(&s, &lw, &mut states, "snap-1", ATOMIC, &[], &[(1, bytes(&data0))], &|| {
        s.ok(&["snap", "1", "0"]);
    });
    step(&s, &lw, &mut states, "write-0", WRITES, &[], &[(0, bytes(&data0b))], &|| {
        write_durably(&s.device(&["activate", "0"]), &data0b);
    });
    step(&s, &lw, &mut states, "create-web", ATOMIC, &["base-"], &[], &|| {
        s.ok(&["thin", "create", "--fs", "ext4", "--size", "32M", "--name", "web"]);
    });
    let web = lib_pool(&s).resolve(&"web".parse().expect("volref")).expect("web in the store").id;
    step(&s, &lw, &mut states, "populate-web", ATOMIC, &["populate-"], &[(web, Content::File { path: "hello.txt", data: hello.clone() })], &|| {
        s.ok(&["populate", "web", "--from", path_str(&tarball)]);
    });
    step(&s, &lw, &mut states, "snap-10", ATOMIC, &[], &[(10, bytes(&data0b))], &|| {
        s.ok(&["snap", "10", "0"]);
    });
    step(&s, &lw, &mut states, "revert-0", ATOMIC, &[], &[(0, bytes(&data0))], &|| {
        s.ok(&["deactivate", "0"]);
        s.ok(&["revert", "0", "1"]);
    });
    step(&s, &lw, &mut states, "delete-1", ATOMIC, &[], &[], &|| {
        s.ok(&["delete", "--force", "1"]);
    });
    step(&s, &lw, &mut states, "delete-web", ATOMIC, &[], &[], &|| {
        s.ok(&["delete", "--force", "web"]);
    });
    step(&s, &lw, &mut states, "deactivate", ATOMIC, &[], &[], &|| {
        s.ok(&["pool", "deactivate"]);
    });
    rig.umount(&root);
    rig.dm_remove(&dm, &lw);

    // The replay.
    let log = Log::open(&log_file);
    let n = log.entries.len();
    // RCX_DM_POWERLOSS_FROM=OP checks only from OP's mark on (when chasing one violation).
    let from = std::env::var("RCX_DM_POWERLOSS_FROM").unwrap_or_else(|_| "pool-create".into());
    let first = log.mark(&format!("op:{from}")).unwrap_or_else(|| panic!("the log holds no mark op:{from}"));
    let replay_path = scratch().join(format!("{tag}-replay.img"));
    rcx_dm::loopback::create_sparse(&replay_path, STORE_BYTES).expect("replay file");
    rig.files.push(replay_path.clone());
    let replay = std::fs::OpenOptions::new().write(true).open(&replay_path).expect("open replay file");
    let replay_dev = rcx_dm::loopback::attach(&replay_path).expect("loop over the replay file");
    let (_, cow_dev) = rig.file("cow", COW_BYTES);
    let (mut barriers, mut checked, mut identical) = (0usize, 0usize, 0usize);
    let mut violations: Vec<String> = Vec::new();
    let mut done = 0usize; // index into `states` of the last operation whose mark was replayed
    let mut dirty = true;
    let started = std::time::Instant::now();
    let wd = Watchdog::start("powerloss", std::time::Duration::from_secs(240));
    for i in 0..n {
        log.apply(i, &replay);
        let e = &log.entries[i];
        if let Some(m) = &e.mark {
            if let Some(op) = m.strip_prefix("op:") {
                done = states.iter().position(|s| s.op == op).unwrap_or_else(|| panic!("unknown mark {m}"));
            }
        }
        dirty |= e.changes_data();
        if !e.is_barrier() || i < first {
            continue;
        }
        barriers += 1;
        if !dirty {
            identical += 1;
            continue;
        }
        dirty = false;
        checked += 1;
        let chk = format!("x{tag}-chk");
        wd.beat(format!("create the check snapshot at entry {i}"));
        let chk_dev = rig.dm_create(&dm, &chk, sectors, "snapshot", &format!("{} {} N 8", replay_dev.display(), cow_dev.display()));
        let cands: Vec<&State> = states[done..(done + 2).min(states.len())].iter().collect();
        eprintln!("powerloss: point {checked}: entry {i} of {n}, after '{}', {:.0} s", states[done].op, started.elapsed().as_secs_f64());
        if checked % 10 == 0 {
            eprintln!("powerloss: time by step so far:\n{}", wd.report());
        }
        let r = check_point(&mut rig, &wd, &dm, &s, &chk_dev, &cands);
        if let Err(why) = r {
            violations.push(format!("entry {i} of {n} (after '{}'): {why}", states[done].op));
            // Whatever the failed check left behind goes before the next one.
            let _ = s.cli(&["pool", "deactivate"]);
            for m in rig.mounts.clone().iter().rev() {
                rig.umount(m);
            }
        }
        wd.beat(format!("remove the check snapshot at entry {i}"));
        rig.dm_remove(&dm, &chk);
        wd.beat("replay log entries");
    }
    let _ = rcx_dm::loopback::detach(&replay_path);
    eprintln!("powerloss: time by step:\n{}", wd.report());
    eprintln!(
        "powerloss: {n} log entries, {barriers} flush/FUA points after pool create, {checked} distinct states checked \
         ({identical} identical to the one before), {} violations, replay+checks {:.0} s",
        violations.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(from != "pool-create" || checked >= states.len() - 2, "too few points checked ({checked}) for {} operations", states.len());
    assert!(violations.is_empty(), "{} of {checked} power-loss points violated:\n{}", violations.len(), violations.join("\n"));
}

/// One replayed moment, mounted through the snapshot `dev`: `cands` are the state of the last
/// operation that returned before it and, if there is one, that of the operation under way.
fn check_point(rig: &mut Rig, wd: &Watchdog, dm: &rcx_dm::dm::Dm, s: &Scenario, dev: &Path, cands: &[&State]) -> Result<(), String> {
    wd.beat("mount the replayed store");
    rig.mount(dev, &s.root, nix::mount::MsFlags::empty(), None)?;
    let meta = s.pool_dir().join("meta.img");
    wd.beat("thin_check as the power left it");
    thin_check(&meta).map_err(|e| format!("as the power left it: {e}"))?;
    wd.beat("pool activate");
    // What `rcx-dm pool activate` runs, in-process: a spawn of the debug binary costs more
    // than the rest of a check under emulation.
    // The store as the power left it, for the messages.
    let before = format!(
        "intent as the power left it: {}; volume records: {:?}",
        std::fs::read_to_string(s.pool_dir().join("intent.json")).unwrap_or_else(|_| "none".into()),
        dir_names(&s.pool_dir().join("volumes"))
    );
    let pool = lib_pool(s);
    pool.activate().and_then(|a| a.into_result()).map_err(|e| format!("pool activate failed: {e} ({before})"))?;
    for f in ["intent.json", "extend.json"] {
        if s.pool_dir().join(f).exists() {
            return Err(format!("{f} left after pool activate"));
        }
    }
    if let Some(t) = find_temp(&s.pool_dir()) {
        return Err(format!("temporary file left after pool activate: {}", t.display()));
    }
    let vols: BTreeMap<u32, String> = pool
        .volumes()
        .map_err(|e| format!("listing volumes: {e}"))?
        .into_iter()
        .map(|v| (v.id, v.name.unwrap_or_default()))
        .collect();
    // What the operation under way may leave aside, the volumes are one candidate's.
    let leaves = if cands.len() > 1 { cands[cands.len() - 1].leaves } else { &[] };
    let matching: Vec<&&State> = cands
        .iter()
        .filter(|c| {
            let left = |id: &u32, name: &String| !c.volumes.contains_key(id) && leaves.iter().any(|p| name.starts_with(p));
            vols.iter().filter(|(id, n)| !left(id, n)).map(|(id, n)| (*id, n.clone())).collect::<BTreeMap<_, _>>() == c.volumes
        })
        .collect();
    if matching.is_empty() {
        let want: Vec<String> = cands.iter().map(|c| format!("after {}: {:?}", c.op, c.volumes)).collect();
        return Err(format!("volumes {vols:?}, expected {} ({before})", want.join(" or ")));
    }
    // No device of this pool that the store does not know.
    let prefix = s.dm_prefix();
    for d in dm.list().map_err(|e| format!("dm list: {e}"))? {
        if let Some(id) = rcx_dm::pool::names::thin_id_of(&s.pool, &d) {
            if !vols.contains_key(&id) {
                return Err(format!("device {d} of volume {id}, which is not in the store"));
            }
        } else if d.starts_with(&prefix) && d != pool.pool_dm_name() {
            return Err(format!("device {d} of this pool that is neither the pool nor a volume"));
        }
    }
    // Contents: what every candidate that matches the volumes allows.
    for id in vols.keys() {
        // The operation under way (the second candidate) may have torn what it writes.
        if matching.iter().any(|c| std::ptr::eq(**c, cands[cands.len() - 1]) && cands.len() > 1 && c.torn.contains(id)) {
            continue;
        }
        // A candidate that says nothing about this volume's content allows any.
        if matching.iter().any(|c| !c.contents.contains_key(id)) {
            continue;
        }
        let allowed: Vec<&Content> = matching.iter().filter_map(|c| c.contents.get(id)).collect();
        wd.beat(format!("activate volume {id}"));
        let dev = pool.activate_volume(&rcx_dm::VolRef::Id(*id)).map_err(|e| format!("activate volume {id}: {e}"))?;
        let longest = allowed.iter().filter_map(|c| if let Content::Bytes(b) = c { Some(b.len()) } else { None }).max();
        wd.beat(format!("volume {id}: read"));
        let head = longest.map(|n| read_direct_at(&dev, 0, n)).unwrap_or_default();
        let mut ok = false;
        for c in &allowed {
            wd.beat(format!("volume {id}: check {}", if matches!(c, Content::Bytes(_)) { "bytes" } else { "a file" }));
            ok |= holds(rig, &dev, &head, c)?;
        }
        if !ok {
            return Err(format!("volume {id} does not hold its content (allowed: {} candidates)", allowed.len()));
        }
    }
    wd.beat("pool deactivate");
    pool.deactivate().map_err(|e| format!("pool deactivate: {e}"))?;
    wd.beat("thin_check and thin_ls after pool activate");
    thin_check(&meta).map_err(|e| format!("after pool activate: {e}"))?;
    let ids = thin_ls(&meta)?;
    let want: Vec<u32> = vols.keys().copied().collect();
    if ids != want {
        return Err(format!("thin ids in the kernel's metadata {ids:?}, in the store {want:?}"));
    }
    wd.beat("umount the replayed store");
    rig.umount(&s.root);
    Ok(())
}

/// Whether the volume at `dev`, whose first bytes are `head`, holds `c`.
fn holds(rig: &mut Rig, dev: &Path, head: &[u8], c: &Content) -> Result<bool, String> {
    match c {
        Content::Bytes(b) => Ok(head.get(..b.len()) == Some(&b[..])),
        Content::File { path, data } => {
            let dir = scratch().join(format!("{}-look", rig.tag));
            rig.mount(dev, &dir, nix::mount::MsFlags::MS_RDONLY, Some("noload"))?;
            let got = std::fs::read(dir.join(path));
            rig.umount(&dir);
            Ok(got.as_ref().map(|g| g == data).unwrap_or(false))
        }
    }
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn find_temp(dir: &Path) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains(".tmp") {
            return Some(p);
        }
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            if let Some(t) = find_temp(&p) {
                return Some(t);
            }
        }
    }
    None
}

/// Run a thin tool on `meta` through a loop (Debian's thin tools open with O_DIRECT), attached
/// by ioctl rather than a losetup spawn.
fn thin_tool(meta: &Path, args: &[&str]) -> std::process::Output {
    let dev = rcx_dm::loopback::attach(meta).expect("loop over meta.img");
    let out = Command::new(args[0]).args(&args[1..]).arg(&dev).output().expect("spawn a thin tool");
    let _ = rcx_dm::loopback::detach(meta);
    out
}

fn thin_check(meta: &Path) -> Result<(), String> {
    let out = thin_tool(meta, &["thin_check"]);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("thin_check: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

fn thin_ls(meta: &Path) -> Result<Vec<u32>, String> {
    let out = thin_tool(meta, &["thin_ls", "--no-headers", "-o", "DEV"]);
    if !out.status.success() {
        return Err(format!("thin_ls: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let mut ids: Vec<u32> = String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|w| w.parse().ok()).collect();
    ids.sort_unstable();
    Ok(ids)
}
