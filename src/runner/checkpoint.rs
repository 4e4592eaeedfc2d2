//! Checkpoint and restore of detached containers: CRIU for the processes, a thin snapshot for
//! the files (issue 18; seed 000's CRANE copied or diffed the files instead).
//!
//! `<root>/<pool>/checkpoints/<CP>/` holds `images/` (CRIU's images and its `dump.log`) and
//! `checkpoint.json`, written durably **last**: a directory without it is a checkpoint whose
//! command died or failed, which `restore` refuses and `checkpoint rm` removes. The directory
//! is made under a dot-name, locked, and renamed into place (RENAME_NOREPLACE: two checkpoints
//! with one name cannot both win); its `checkpoint` command holds the flock exclusively until
//! the record is written, `restore` takes it shared while it snapshots.
//!
//! Checkpoint: the container's cgroup is frozen (`cgroup.freeze`), `criu dump --leave-running
//! --freeze-cgroup` dumps the frozen tree (CRIU leaves a group that was frozen before it came
//! frozen), then `Pool::snapshot` of the container's volume while it is still frozen (the
//! files and the memory images are of one instant), then thaw, or SIGKILL and thaw without
//! `--leave-running`. The snapshot is the volume `ckpt-<CP>` (read-only, inactive).
//!
//! Restore: a supervisor of its own, as for `run -d` (`detach::start_supervised`), which makes
//! a run record (crash cleanup as for any run), a thin snapshot of `ckpt-<CP>`, the cgroup with
//! the limits of the checkpoint, and runs `criu restore --restore-sibling --restore-detached`
//! as its child, in a mount namespace of the child's own where the snapshot is mounted for
//! `--root`. The restored PID 1 is then the supervisor's child (its PDEATHSIG points at the
//! supervisor, as the original's did), and the supervisor waits for it like any detached
//! container's. The container's stdout and stderr are the supervisor's log pipe
//! (`--external pipe:[INODE]` at dump, `--inherit-fd` at restore).

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::cgroup::{self, Cgroup, Limits};
use super::container::{OnRunning, RunOutcome};
use super::detach::{self, ContainerRecord, ContainerStatus};
use super::root_mount::{self, RootPlan};
use super::run::new_run_id;
use super::state::{self, RunState};
use super::init;
use crate::durable::{json, read_json, sync_dir, write_durable};
use crate::error::{Error, IoContext, Result};
use crate::file_lock::{FileLock, LockMode};
use crate::pool::{Pool, VolRef};

/// The directory in a pool's directory that holds the checkpoints.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// The prefix of a checkpoint's snapshot volume (reserved: users cannot name volumes so).
pub const CHECKPOINT_SNAPSHOT_PREFIX: &str = "ckpt-";
const RECORD: &str = "checkpoint.json";
/// Present while the container's cgroup may be frozen by this checkpoint: the group's path.
const FROZEN: &str = "frozen";
const IMAGES: &str = "images";
/// Written by a restored container's supervisor beside its record: where its restore's time went.
pub const RESTORE_TIMINGS: &str = "restore.json";

/// Where the time of a checkpoint went (milliseconds).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CheckpointTimings {
    /// Freezing the cgroup.
    pub freeze_ms: f64,
    /// `criu dump` (the processes).
    pub criu_ms: f64,
    /// The thin snapshot of the volume (the files), taken while frozen.
    pub snapshot_ms: f64,
    /// From the call to the record written (thawed or stopped after).
    pub total_ms: f64,
}

/// A complete checkpoint, as `checkpoint.json` records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointRecord {
    /// Its name.
    pub name: String,
    /// The container it was taken of.
    pub container: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// The snapshot of the container's volume (`ckpt-<name>`).
    pub snapshot: String,
    /// Its thin id.
    pub snapshot_id: u32,
    /// Inodes of the pipes that were the container's stdin/stdout/stderr (its supervisor's log
    /// pipe), external to the dump; a restore hands its own log pipe in for them.
    pub pipes: Vec<u64>,
    /// The container's cgroup limits at the checkpoint (a restore's cgroup gets them).
    pub limits: Limits,
    /// Whether the container went on running (`--leave-running`) or was stopped.
    pub left_running: bool,
    /// The container's record (command, environment, security) as it was.
    pub record: ContainerRecord,
    /// Bytes of CRIU images.
    pub images_bytes: u64,
    /// Where the time went.
    pub timings: CheckpointTimings,
}

/// What `checkpoint ls` shows of one checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointStatus {
    /// Its name.
    pub name: String,
    /// "complete", "incomplete" (its command died or failed: `checkpoint rm` it) or "writing".
    pub state: &'static str,
    /// The record, once complete.
    pub record: Option<CheckpointRecord>,
}

/// Where a restored container's restore spent its time (milliseconds), in `restore.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RestoreTimings {
    /// The thin snapshot of the checkpoint's snapshot, activated (the files).
    pub snapshot_ms: f64,
    /// `criu restore` (the processes), the mount of the new root included.
    pub criu_ms: f64,
    /// From the supervisor's start to the restored tree running.
    pub total_ms: f64,
}

/// `checkpoint` options.
#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    /// Thaw the container afterwards (otherwise it is stopped: SIGKILL, exit status 137).
    pub leave_running: bool,
    /// The checkpoint's name (default: `<container>-<8 hex digits>`).
    pub name: Option<String>,
}

fn checkpoints_dir(pool: &Pool) -> PathBuf {
    pool.dir().join(CHECKPOINTS_DIR)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Checkpoint a running detached container. Refused, with the container untouched, if it is
/// not running, is `--privileged`, shares a namespace with the host, is on the bridge or in a
/// user namespace, or the name is taken. On any failure after the freeze the container is
/// thawed and the half-made checkpoint removed.
pub fn checkpoint(pool: &Pool, container: &str, opts: &CheckpointOptions) -> Result<CheckpointRecord> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot("rcx-dm checkpoint"));
    }
    let t0 = Instant::now();
    let cp = match &opts.name {
        Some(n) => {
            crate::pool::validate_volume_name(n)?;
            n.clone()
        }
        None => format!("{container}-{}", new_run_id()),
    };
    let (st, started, pidfd) =
        detach::running(pool, container, "only a running container can be checkpointed (`rcx-dm ps` shows its state)")?;
    refuse_uncheckpointable(&st, started.pid)?;
    let cg = started.cgroup.clone().ok_or_else(|| Error::CheckpointRefused {
        name: container.into(),
        why: "it has no cgroup (no cgroup v2 on this host), and the dump freezes one".into(),
    })?;
    if checkpoints_dir(pool).join(&cp).exists() {
        return Err(taken(&cp));
    }
    let snap_name = format!("{CHECKPOINT_SNAPSHOT_PREFIX}{cp}");
    if pool.resolve(&VolRef::Name(snap_name.clone())).is_ok() {
        return Err(Error::Exists(format!("a volume named '{snap_name}' (pick another checkpoint --name)")));
    }
    let (dir, lock) = reserve(pool, &cp)?;
    let pipes = stdio_pipes(started.pid);
    let limits = cgroup::read_limits(&cg);
    let vol = match &st.record.snapshot {
        Some(s) => VolRef::Name(s.clone()),
        None => VolRef::Id(st.record.base),
    };
    let mut timings = CheckpointTimings::default();

    let t = Instant::now();
    // Should this command die while the group is frozen, the next rcx-dm command thaws it
    // (`thaw_abandoned`): the marker says which group, the directory's lock that we are gone.
    if let Err(e) = write_durable(&dir.join(FROZEN), cg.to_string_lossy().as_bytes()) {
        let _ = fs::remove_dir_all(&dir);
        return Err(e);
    }
    if let Err(e) = set_frozen(&cg, true) {
        let _ = set_frozen(&cg, false);
        let _ = fs::remove_dir_all(&dir);
        return Err(e);
    }
    timings.freeze_ms = ms(t.elapsed());
    let dumped = (|| {
        let t = Instant::now();
        criu_dump(started.pid, &dir.join(IMAGES), &cg, &pipes)?;
        timings.criu_ms = ms(t.elapsed());
        let t = Instant::now();
        let v = pool.snapshot_internal(None, &vol, None, Some(&snap_name))?;
        timings.snapshot_ms = ms(t.elapsed());
        Ok::<_, Error>(v)
    })();
    let v = match dumped {
        Ok(v) => v,
        Err(e) => {
            let _ = set_frozen(&cg, false);
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    // Files and memory are of one instant now; the rest may happen after the thaw.
    let stopped = if opts.leave_running {
        set_frozen(&cg, false)
    } else {
        // A frozen task still dies of SIGKILL; PID 1's death takes its pid namespace with it.
        let killed = detach::send(&pidfd, libc::SIGKILL);
        let thawed = set_frozen(&cg, false);
        killed.and(thawed).and_then(|_| detach::wait(pool, container).map(|_| ()))
    };
    if stopped.is_ok() {
        let _ = fs::remove_file(dir.join(FROZEN));
    }
    let finish = (|| {
        // A base for restores: never written in place, no device left active.
        pool.set_read_only(&VolRef::Id(v.id), true)?;
        if pool.volume(&VolRef::Id(v.id)).is_ok_and(|x| x.active) {
            pool.deactivate_volume(&VolRef::Id(v.id))?;
        }
        timings.total_ms = ms(t0.elapsed());
        let rec = CheckpointRecord {
            name: cp.clone(),
            container: container.to_string(),
            created: detach::now(),
            snapshot: snap_name.clone(),
            snapshot_id: v.id,
            pipes,
            limits,
            left_running: opts.leave_running,
            record: st.record.clone(),
            images_bytes: dir_bytes(&dir.join(IMAGES)),
            timings,
        };
        write_durable(&dir.join(RECORD), &json(&rec)?)?;
        Ok::<_, Error>(rec)
    })();
    drop(lock);
    let rec = match finish {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_dir_all(&dir);
            let _ = pool.delete_if_exists(&VolRef::Id(v.id), true);
            return Err(e);
        }
    };
    stopped.map_err(|e| {
        Error::Inconsistent(format!(
            "checkpoint '{cp}' is complete, but {} container '{container}' failed: {e}",
            if opts.leave_running { "thawing" } else { "stopping" }
        ))
    })?;
    Ok(rec)
}

/// What CRIU (or rcx-dm's use of it) cannot take: said before anything is touched.
fn refuse_uncheckpointable(st: &ContainerStatus, pid: i32) -> Result<()> {
    let refuse = |why: String| Err(Error::CheckpointRefused { name: st.record.name.clone(), why });
    if st.record.security.privileged {
        return refuse("it runs --privileged (all capabilities, the host's /sys and cgroups writable), which rcx-dm does not checkpoint; run it without --privileged".into());
    }
    for ns in ["mnt", "pid", "net", "ipc", "uts", "cgroup"] {
        let ino = |p: String| fs::metadata(p).map(|m| m.ino()).ok();
        let (theirs, ours) = (ino(format!("/proc/{pid}/ns/{ns}")), ino(format!("/proc/self/ns/{ns}")));
        if theirs.is_some() && theirs == ours {
            return refuse(format!(
                "it shares the host's {ns} namespace{}, which a dump cannot take away from the host; run it with its own (the default)",
                if ns == "net" { " (--net host)" } else { "" }
            ));
        }
    }
    if st.record.net.as_deref() == Some("bridge") {
        return refuse("it is on the host bridge (--net bridge): its veth pair's host end is outside the container; checkpoint containers with --net none (the default)".into());
    }
    if st.record.userns {
        return refuse("it runs in a user namespace (--userns) on an idmapped mount, which CRIU 3.17 cannot dump; run it without --userns".into());
    }
    Ok(())
}

fn taken(cp: &str) -> Error {
    Error::Exists(format!("checkpoint '{cp}' (`rcx-dm checkpoint ls` lists them; pick another --name, or `rcx-dm checkpoint rm {cp}`)"))
}

/// Make `checkpoints/<cp>/images`, locked, under a dot-name renamed into place.
fn reserve(pool: &Pool, cp: &str) -> Result<(PathBuf, FileLock)> {
    let parent = checkpoints_dir(pool);
    fs::create_dir_all(&parent).ctx(|| format!("creating {}", parent.display()))?;
    let tmp = parent.join(format!(".new-{cp}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
    let lock = FileLock::try_lock_existing(&tmp, LockMode::Exclusive)?
        .ok_or_else(|| Error::Inconsistent(format!("{} is locked by another process", tmp.display())))?;
    fs::create_dir(tmp.join(IMAGES)).ctx(|| format!("creating {}/{IMAGES}", tmp.display()))?;
    let dir = parent.join(cp);
    if let Err(e) = detach::rename_noreplace(&tmp, &dir) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(match e.raw_os_error() {
            Some(libc::EEXIST) | Some(libc::ENOTEMPTY) => taken(cp),
            _ => return Err(e).ctx(|| format!("renaming {} into place", tmp.display())),
        });
    }
    sync_dir(&parent)?;
    Ok((dir, lock))
}

/// The inodes of the pipes among PID 1's descriptors 0, 1 and 2.
fn stdio_pipes(pid: i32) -> Vec<u64> {
    let mut out = Vec::new();
    for fd in 0..3 {
        if let Ok(l) = fs::read_link(format!("/proc/{pid}/fd/{fd}")) {
            let l = l.to_string_lossy();
            if let Some(ino) = l.strip_prefix("pipe:[").and_then(|r| r.strip_suffix(']')).and_then(|n| n.parse().ok()) {
                if !out.contains(&ino) {
                    out.push(ino);
                }
            }
        }
    }
    out
}

/// cgroup v2's freezer: write the wish, then wait for `cgroup.events` to report it.
fn set_frozen(cg: &Path, frozen: bool) -> Result<()> {
    let want = if frozen { "frozen 1" } else { "frozen 0" };
    fs::write(cg.join("cgroup.freeze"), if frozen { "1" } else { "0" })
        .ctx(|| format!("writing {}/cgroup.freeze", cg.display()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ev = fs::read_to_string(cg.join("cgroup.events")).ctx(|| format!("reading {}/cgroup.events", cg.display()))?;
        // An empty group reports itself frozen at once; a group gone means its container exited.
        if ev.lines().any(|l| l == want) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Cgroup(format!(
                "{} did not become {} within 10 s; the container is left as it is",
                cg.display(),
                if frozen { "frozen" } else { "thawed" }
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn criu_missing(op: &'static str, e: std::io::Error) -> Error {
    if e.kind() == ErrorKind::NotFound {
        Error::Criu { op, msg: "the criu command is not installed; install it (Debian: `apt-get install criu`)".into(), log: None }
    } else {
        Error::Criu { op, msg: format!("starting criu: {e}"), log: None }
    }
}

/// The error lines of a CRIU log (the last few), for a message.
fn criu_errors(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let errs: Vec<&str> = text.lines().filter(|l| l.contains("Error") || l.contains("error")).collect();
    let tail = &errs[errs.len().saturating_sub(4)..];
    if tail.is_empty() {
        "no error line in its log".into()
    } else {
        tail.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" | ")
    }
}

/// `criu dump` of the frozen tree. `--leave-running`: the container's fate is decided after the
/// snapshot (CRIU leaves a group that was frozen before it came frozen).
fn criu_dump(pid: i32, images: &Path, cg: &Path, pipes: &[u64]) -> Result<()> {
    let mut cmd = Command::new("criu");
    cmd.arg("dump").arg("-t").arg(pid.to_string()).arg("-D").arg(images).args(["-o", "dump.log", "-v2"]);
    cmd.args(["--manage-cgroups", "--leave-running", "--freeze-cgroup"]).arg(cg);
    for ino in pipes {
        cmd.arg("--external").arg(format!("pipe:[{ino}]"));
    }
    let status = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().map_err(|e| criu_missing("dump", e))?;
    if !status.success() {
        let log = images.join("dump.log");
        return Err(Error::Criu { op: "dump", msg: format!("{status}: {}", criu_errors(&log)), log: Some(log) });
    }
    Ok(())
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir).map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

/// A checkpoint's directory and record, checked complete, with a shared lock on it (held
/// while a restore snapshots it, so `checkpoint rm` waits).
fn open_complete(pool: &Pool, cp: &str) -> Result<(PathBuf, FileLock, CheckpointRecord)> {
    let dir = checkpoint_dir(pool, cp)?;
    let lock = FileLock::try_lock_existing(&dir, LockMode::Shared)?.ok_or_else(|| Error::CheckpointUnusable {
        name: cp.into(),
        state: "being written by a running `rcx-dm checkpoint`".into(),
        advice: "wait for it to finish",
    })?;
    match read_json::<CheckpointRecord>(&dir.join(RECORD)) {
        Ok(Some(rec)) => Ok((dir, lock, rec)),
        Ok(None) => Err(Error::CheckpointUnusable {
            name: cp.into(),
            state: "incomplete (the command that wrote it died or failed)".into(),
            advice: "remove it with `rcx-dm checkpoint rm NAME` and checkpoint the container again",
        }),
        Err(e) => Err(Error::CheckpointUnusable {
            name: cp.into(),
            state: format!("unreadable ({e})"),
            advice: "remove it with `rcx-dm checkpoint rm NAME`",
        }),
    }
}

fn checkpoint_dir(pool: &Pool, cp: &str) -> Result<PathBuf> {
    let missing = || Error::NoSuchCheckpoint { name: cp.into(), pool: pool.name().into() };
    if cp.is_empty() || cp.starts_with('.') || cp.contains('/') {
        return Err(missing());
    }
    let dir = checkpoints_dir(pool).join(cp);
    if !dir.is_dir() {
        return Err(missing());
    }
    Ok(dir)
}

/// Every checkpoint of the pool, oldest first (incomplete ones last).
pub fn list(pool: &Pool) -> Result<Vec<CheckpointStatus>> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(checkpoints_dir(pool)) else { return Ok(out) };
    for e in entries.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_string) else { continue };
        let dir = e.path();
        if name.starts_with('.') {
            // A `checkpoint` that died before its directory was renamed into place: nothing
            // refers to it (its snapshot is made after the rename).
            if !state::new_dir_creator_alive(&name) && FileLock::try_lock_existing(&dir, LockMode::Exclusive).ok().flatten().is_some() {
                let _ = fs::remove_dir_all(&dir);
            }
            continue;
        }
        let record = read_json::<CheckpointRecord>(&dir.join(RECORD)).ok().flatten();
        let state = match (&record, FileLock::try_lock_existing(&dir, LockMode::Shared)) {
            (Some(_), _) => "complete",
            (None, Ok(None)) => "writing",
            (None, _) => "incomplete",
        };
        out.push(CheckpointStatus { name, state, record });
    }
    out.sort_by(|a, b| {
        let key = |c: &CheckpointStatus| (c.record.is_none(), c.record.as_ref().map_or(0, |r| r.created), c.name.clone());
        key(a).cmp(&key(b))
    });
    Ok(out)
}

/// Thaw the containers whose `checkpoint` command died while their cgroup was frozen (its
/// directory still has the `frozen` marker, and nobody holds its lock). Not while CRIU, which
/// the dead command started, still has the tasks seized (their TracerPid): it finishes on its
/// own, and a later command thaws. Returns how many were thawed. Cheap when there are no
/// checkpoints: one directory read.
pub fn thaw_abandoned(pool: &Pool) -> Result<usize> {
    let Ok(entries) = fs::read_dir(checkpoints_dir(pool)) else { return Ok(0) };
    let mut n = 0;
    for e in entries.flatten() {
        let dir = e.path();
        let marker = dir.join(FROZEN);
        if e.file_name().to_string_lossy().starts_with('.') || !marker.exists() {
            continue;
        }
        let Ok(Some(_lock)) = FileLock::try_lock_existing(&dir, LockMode::Exclusive) else { continue };
        let cg = PathBuf::from(fs::read_to_string(&marker).ctx(|| format!("reading {}", marker.display()))?);
        if cg.join("cgroup.freeze").exists() {
            if seized_by_a_tracer(&cg) {
                continue;
            }
            tracing::warn!(checkpoint = %dir.display(), cgroup = %cg.display(), "thawing a container whose checkpoint command died while it was frozen");
            set_frozen(&cg, false)?;
            n += 1;
        }
        fs::remove_file(&marker).ctx(|| format!("removing {}", marker.display()))?;
    }
    Ok(n)
}

/// Whether a task of the group is traced (CRIU attaches to every task it dumps).
fn seized_by_a_tracer(cg: &Path) -> bool {
    let procs = fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
    procs.lines().any(|pid| {
        fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|st| st.lines().find_map(|l| l.strip_prefix("TracerPid:").map(|v| v.trim() != "0")))
            .unwrap_or(false)
    })
}

/// Delete a checkpoint: its snapshot volume and its directory (a complete or a half-written
/// one). Refused while it is being written or restored from.
pub fn remove(pool: &Pool, cp: &str) -> Result<()> {
    let dir = checkpoint_dir(pool, cp)?;
    let _lock = FileLock::try_lock_existing(&dir, LockMode::Exclusive)?.ok_or_else(|| Error::CheckpointUnusable {
        name: cp.into(),
        state: "in use (being written, or restored from)".into(),
        advice: "try again once that command is done",
    })?;
    let rec = read_json::<CheckpointRecord>(&dir.join(RECORD)).ok().flatten();
    let snap = rec.map(|r| r.snapshot).unwrap_or_else(|| format!("{CHECKPOINT_SNAPSHOT_PREFIX}{cp}"));
    match crate::refs::delete_volume(pool, &VolRef::Name(snap), true) {
        Ok(()) | Err(Error::NoSuchVolume { .. }) => {}
        Err(e) => return Err(e),
    }
    fs::remove_dir_all(&dir).ctx(|| format!("removing {}", dir.display()))?;
    sync_dir(&checkpoints_dir(pool))
}

/// Restore a checkpoint as a new detached container `name` (default `run-<run id>`); returns
/// its name once its processes run again. Call from a single-threaded process (it forks).
pub fn restore(pool: &Pool, cp: &str, name: Option<&str>) -> Result<String> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot("rcx-dm restore"));
    }
    if let Some(n) = name {
        crate::pool::validate_user_volume_name(n)?;
    }
    let (dir, lock, ck) = open_complete(pool, cp)?;
    if pool.resolve(&VolRef::Id(ck.snapshot_id)).is_err() {
        return Err(Error::CheckpointUnusable {
            name: cp.into(),
            state: format!("missing its snapshot volume '{}'", ck.snapshot),
            advice: "remove it with `rcx-dm checkpoint rm NAME`",
        });
    }
    let run_id = new_run_id();
    let name = name.map(str::to_string).unwrap_or_else(|| format!("run-{run_id}"));
    if pool.resolve(&VolRef::Name(name.clone())).is_ok() {
        return Err(Error::Exists(format!("a volume named '{name}' (pick another --name)")));
    }
    let record = ContainerRecord {
        name: name.clone(),
        run_id,
        volume: ck.snapshot.clone(),
        base: ck.snapshot_id,
        snapshot: Some(name.clone()),
        created: detach::now(),
        restored_from: Some(cp.to_string()),
        ..ck.record.clone()
    };
    let images = dir.join(IMAGES);
    let started = detach::start_supervised(pool, &record, &mut |on_running| restore_run(pool, &ck, &record, &images, on_running));
    // Restored (or failed): the snapshot of the checkpoint exists or never will.
    drop(lock);
    started
}

/// The supervisor's side of a restore: as `run_with`, with CRIU instead of a clone.
fn restore_run(pool: &Pool, ck: &CheckpointRecord, rec: &ContainerRecord, images: &Path, on_running: OnRunning<'_>) -> Result<RunOutcome> {
    let t0 = Instant::now();
    let _signals = init::Signals::block()?;
    let mnt = cgroup::mount_point()
        .ok_or_else(|| Error::Cgroup("no cgroup v2 filesystem at /sys/fs/cgroup; a restore needs one for the container's cgroup".into()))?;
    let cg_path = Cgroup::path_for(&mnt, &format!("{}-{}", pool.name(), rec.run_id));
    let record = state::RunRecord {
        id: rec.run_id.clone(),
        pid: std::process::id(),
        volume: ck.snapshot_id,
        snapshot: rec.snapshot.clone(),
        rm: false,
        deactivate: None,
        cgroup: Some(cg_path.clone()),
        ip: None,
        userns: None,
    };
    let st = RunState::create(pool, record)?;
    let result = restore_recorded(pool, ck, rec, images, &st, &mnt, &cg_path, t0, on_running);
    let mut r = st.record.clone();
    match &result {
        Err(Error::Exists(_)) => r.snapshot = None,
        Err(_) => r.rm = true,
        Ok(_) => {}
    }
    let cleanup_error = match state::cleanup(pool, &r, &st.dir) {
        Ok(()) => st.finish().err(),
        Err(e) => Some(e),
    };
    match result {
        Ok(mut out) => {
            out.cleanup_error = cleanup_error;
            Ok(out)
        }
        Err(e) => {
            if let Some(ce) = cleanup_error {
                tracing::warn!("cleaning up after the failed restore failed too: {ce}; the next rcx-dm command retries");
            }
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn restore_recorded(
    pool: &Pool,
    ck: &CheckpointRecord,
    rec: &ContainerRecord,
    images: &Path,
    st: &RunState,
    mnt: &Path,
    cg_path: &Path,
    t0: Instant,
    on_running: OnRunning<'_>,
) -> Result<RunOutcome> {
    let t = Instant::now();
    let name = rec.snapshot.as_deref().unwrap_or(&rec.name);
    let v = pool.snapshot_internal(None, &VolRef::Id(ck.snapshot_id), None, Some(name))?;
    let dev = match v.device {
        Some(d) => d,
        None => pool.activate_volume(&VolRef::Id(v.id))?,
    };
    let fs = root_mount::probe(name, &dev, true)?;
    let snapshot_ms = ms(t.elapsed());
    let t = Instant::now();
    let cg = Cgroup::create(mnt, cg_path, &ck.limits)?;
    let rootfs = st.rootfs();
    let plan = RootPlan::new(&dev, &rootfs, fs, false, false, !rec.security.privileged)?;
    let pidfile = st.dir.join("restore.pid");
    let dir = detach::containers_dir(pool).join(&rec.name);
    let log = dir.join("restore.log");
    let cg_rel = Path::new("/").join(cg_path.strip_prefix(mnt).unwrap_or(cg_path));
    let procs = std::ffi::CString::new(cg_path.join("cgroup.procs").to_string_lossy().as_bytes())
        .map_err(|_| Error::invalid("cgroup path", "contains a NUL byte"))?;
    let mut cmd = Command::new("criu");
    cmd.arg("restore").arg("-D").arg(images).arg("-o").arg(&log).arg("-v2").arg("--root").arg(&rootfs);
    cmd.args(["--manage-cgroups", "--cgroup-root"]).arg(&cg_rel);
    cmd.args(["--restore-sibling", "--restore-detached", "--pidfile"]).arg(&pidfile);
    let n_pipes = ck.pipes.len() as i32;
    for (i, ino) in ck.pipes.iter().enumerate() {
        cmd.arg("--inherit-fd").arg(format!("fd[{}]:pipe:[{ino}]", 3 + i));
    }
    // stdout stays the supervisor's log pipe: the hook below hands it on (Stdio::null would
    // have replaced it before the hook runs); criu writes nothing there itself with -o.
    cmd.stdin(Stdio::null());
    // SAFETY: the supervisor is single-threaded; the hook only makes syscalls before exec.
    unsafe {
        cmd.pre_exec(move || {
            // CRIU's own mount namespace, where the new root is mounted for --root; the restored
            // tree gets a mount namespace of its own from the images, and this one goes with
            // criu, so the host never sees the mount.
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            root_mount::mount_root(&plan, None).map_err(|f| std::io::Error::other(format!("{}: {}", f.what, f.errno.desc())))?;
            // The supervisor's log pipe (its stdout) for each of the dump's external pipes.
            for i in 0..n_pipes {
                if libc::dup2(1, 3 + i) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // CRIU and what it forks start in the container's cgroup (as runc's restore).
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            Ok(())
        });
    }
    let status = cmd.status().map_err(|e| criu_missing("restore", e))?;
    if !status.success() {
        return Err(Error::Criu { op: "restore", msg: format!("{status}: {}", criu_errors(&log)), log: Some(log) });
    }
    let criu_ms = ms(t.elapsed());
    let pid: i32 = fs::read_to_string(&pidfile)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| Error::Criu { op: "restore", msg: "it wrote no pid file".into(), log: Some(log.clone()) })?;
    let pid = nix::unistd::Pid::from_raw(pid);
    // --restore-sibling makes the restored PID 1 our child: waitable, and its PDEATHSIG ours.
    if let Err(e) = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
        return Err(Error::Criu { op: "restore", msg: format!("the restored process {pid} is not the supervisor's child ({e})"), log: Some(log) });
    }
    let timings = RestoreTimings { snapshot_ms, criu_ms, total_ms: ms(t0.elapsed()) };
    if let Err(e) = json(&timings).and_then(|b| write_durable(&dir.join(RESTORE_TIMINGS), &b)) {
        tracing::warn!(error = %e, "recording the restore's timings failed");
    }
    if let Some(f) = on_running {
        f(pid);
    }
    let status = init::supervise(pid, None)?;
    let signal = init::killed_by(&status);
    Ok(RunOutcome {
        code: init::exit_code(&status),
        signal,
        limits: ck.limits.clone(),
        events: cg.events(),
        kept: None,
        timings: Vec::new(),
        cleanup_error: None,
    })
}

/// The restore timings a restored container's supervisor recorded, if any.
pub fn restore_timings(pool: &Pool, container: &str) -> Option<RestoreTimings> {
    read_json(&detach::containers_dir(pool).join(container).join(RESTORE_TIMINGS)).ok().flatten()
}
