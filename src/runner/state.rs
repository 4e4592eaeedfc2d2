//! Run state for crash cleanup: `<root>/<pool>/runs/<run id>/run.json`, written durably before
//! the kernel is touched, naming everything the run will create (the container snapshot's
//! name, the cgroup's path, the volume it activates). The live rcx-dm holds an flock on the
//! run's directory; the kernel drops it when the process dies, however it dies. So any later
//! rcx-dm command that can take the lock knows the run is dead, and undoes what it left:
//! kills and removes the cgroup, deactivates (or with --rm deletes) the snapshot, deactivates a
//! volume the run activated, and removes the record. Every step is idempotent.
//!
//! The mount needs no cleanup: it only ever existed in the container's own mount namespace,
//! which the kernel tore down with the container's last process (rcx-dm's death SIGKILLs the
//! container through PR_SET_PDEATHSIG; cleanup also kills what is left in the cgroup).
//!
//! `runs/vol-<id>.lock` serialises runs that mount one volume in place (exclusive for a
//! writable mount, shared for read-only ones). `runs/userns-<host>-<count>.lease` is a
//! `--userns` run's id range (`userns`), reclaimed here too once its rcx-dm is gone.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::cgroup;
use super::network;
use super::userns::{self, IdRange};
use crate::error::{Error, IoContext, Result};
use crate::file_lock::{FileLock, LockMode};
use crate::durable::{read_json, sync_dir, write_durable};
use crate::pool::{Pool, VolRef};

/// The directory in a pool's directory that holds the runs' records and volume locks.
pub const RUNS_DIR: &str = "runs";
const RECORD: &str = "run.json";

/// What a run will create, recorded before it creates anything.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunRecord {
    /// The run id (8 hex digits): the run's directory name and the default hostname.
    pub id: String,
    /// rcx-dm's pid (for people reading the file; liveness is the flock).
    pub pid: u32,
    /// The volume the user named.
    pub volume: u32,
    /// The container snapshot this run creates (by name: known before it exists).
    pub snapshot: Option<String>,
    /// Delete the snapshot afterwards (--rm); otherwise it is kept, deactivated.
    pub rm: bool,
    /// A volume this run activates and must deactivate again (it was inactive before).
    pub deactivate: Option<u32>,
    /// The run's cgroup (None without cgroup v2), killed and removed by cleanup.
    pub cgroup: Option<PathBuf>,
    /// `--net bridge`: the address claimed under /run/rcx-dm/ips.
    #[serde(default)]
    pub ip: Option<String>,
    /// `--userns`: the host ids the container's ids map to (its lease file is the allocation;
    /// this is for people reading the record, and for the run itself).
    #[serde(default)]
    pub userns: Option<IdRange>,
}

/// A live run's directory, locked by this process.
pub(super) struct RunState {
    /// `<pool>/runs/<run id>`.
    pub(super) dir: PathBuf,
    /// What `run.json` in it says.
    pub(super) record: RunRecord,
    _lock: FileLock,
}

/// Where a pool keeps its runs.
pub(super) fn runs_dir(pool: &Pool) -> PathBuf {
    pool.dir().join(RUNS_DIR)
}

impl RunState {
    /// Create, lock and record a run. The directory is made under a dot-name and renamed into
    /// place once locked and recorded, so a concurrent cleanup never sees it unlocked.
    pub(super) fn create(pool: &Pool, record: RunRecord) -> Result<RunState> {
        let runs = runs_dir(pool);
        fs::create_dir_all(&runs).ctx(|| format!("creating {}", runs.display()))?;
        // The creator's pid in the name: mkdir and flock are two calls, and a reaper must not
        // take the directory for a dead run's in between (see `reap_dead_runs`).
        let tmp = runs.join(format!(".new-{}-{}", record.id, std::process::id()));
        fs::create_dir(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
        let lock = lock_dir(&tmp)?.ok_or_else(|| Error::Inconsistent(format!("{} is locked by another process", tmp.display())))?;
        write_durable(&tmp.join(RECORD), &crate::durable::json(&record)?)?;
        fs::create_dir(tmp.join("rootfs")).ctx(|| format!("creating {}/rootfs", tmp.display()))?;
        let dir = runs.join(&record.id);
        fs::rename(&tmp, &dir).ctx(|| format!("renaming {} into place", tmp.display()))?;
        sync_dir(&runs)?;
        Ok(RunState { dir, record, _lock: lock })
    }

    /// Where the container's mount namespace mounts the volume (empty in the host's).
    pub(super) fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Everything is undone: forget the run.
    pub(super) fn finish(self) -> Result<()> {
        remove_run_dir(&self.dir)
    }
}

fn remove_run_dir(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => sync_dir(dir.parent().unwrap_or(Path::new("/"))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).ctx(|| format!("removing {}", dir.display())),
    }
}

/// Try to lock a directory without waiting: None if a live process holds it.
fn lock_dir(dir: &Path) -> Result<Option<FileLock>> {
    FileLock::try_lock_existing(dir, LockMode::Exclusive)
}

/// Lock a volume for a run that mounts it in place: exclusive for a writable mount, shared for
/// read-only ones; Busy if another run holds it. Held until the run ends.
pub(super) fn lock_volume(pool: &Pool, id: u32, exclusive: bool) -> Result<FileLock> {
    let runs = runs_dir(pool);
    fs::create_dir_all(&runs).ctx(|| format!("creating {}", runs.display()))?;
    let mode = if exclusive { LockMode::Exclusive } else { LockMode::Shared };
    FileLock::try_lock(&runs.join(format!("vol-{id}.lock")), mode)?.ok_or_else(|| {
        Error::Busy {
            what: id.to_string(),
            state: "in use by another rcx-dm run",
            advice: "wait for that container to stop, or mark the volume read-only (`rcx-dm set-readonly`) to run snapshots of it",
        }
    })
}

/// Undo what a run created, in reverse order. Idempotent; used after every run and for runs
/// whose rcx-dm died.
pub(super) fn cleanup(pool: &Pool, rec: &RunRecord, dir: &Path) -> Result<()> {
    // Every step is tried whatever the one before returned (a cgroup that cannot go must not
    // keep the snapshot, the volume or the address); the first error is returned, and the
    // record stays for the next command to retry.
    let mut first: Option<Error> = None;
    let mut step = |r: Result<()>| {
        if let Err(e) = r {
            tracing::warn!(run = %rec.id, error = %e, "a teardown step failed; going on with the others");
            first.get_or_insert(e);
        }
    };
    if let Some(cg) = &rec.cgroup {
        step(cgroup::remove(cg));
    }
    // The volume is mounted only in the container's namespace, gone with it. Should a mount of
    // the run's root be visible here anyway, detach it: one umount2, which fails with EINVAL
    // where nothing is mounted (cheaper than reading the mount table to find out).
    let _ = nix::mount::umount2(&dir.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
    // A run killed while its snapshot was being made leaves that snapshot to the pool's
    // pending intent: recover it first, or the snapshot would be recorded after this cleanup
    // (found by name: not yet) and never deleted (the soak found such `run-*` volumes). While
    // the pool is inactive the record waits for `pool activate`.
    if rec.snapshot.is_some() {
        if let Err(e) = crate::dm::Dm::open().and_then(|dm| pool.recover_pending_or_fail(&dm)) {
            // The snapshot's fate is unknown until recovery: nothing more of it now.
            tracing::warn!(run = %rec.id, error = %e, "a teardown step failed; the record stays for the next command");
            return Err(first.unwrap_or(e));
        }
    }
    // Only a snapshot of the run's volume is the run's (a name alone could be someone else's).
    let ours = |name: &str| pool.resolve(&VolRef::Name(name.to_string())).is_ok_and(|v| v.parent == Some(rec.volume));
    if let Some(name) = rec.snapshot.as_deref().filter(|n| ours(n)) {
        let v = VolRef::Name(name.to_string());
        if rec.rm {
            step(retry_busy(|| pool.delete_if_exists(&v, true).map(|_| ())));
        } else if pool.volume(&v).is_ok_and(|x| x.active) {
            step(retry_busy(|| ignore_missing(pool.deactivate_volume(&v))));
        }
    }
    if let Some(id) = rec.deactivate {
        step(retry_busy(|| ignore_missing(pool.deactivate_volume(&VolRef::Id(id)))));
    }
    if let Some(ip) = &rec.ip {
        network::release_address(ip, dir);
    }
    first.map_or(Ok(()), Err)
}

/// Whether the process that made the run directory `.new-<id>-<pid>` is alive. A name without
/// a pid (older rcx-dm) counts as dead, as before.
pub(super) fn new_dir_creator_alive(name: &str) -> bool {
    name.rsplit_once('-')
        .and_then(|(_, pid)| pid.parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

fn ignore_missing(r: Result<()>) -> Result<()> {
    match r {
        Err(Error::NoSuchVolume { .. }) => Ok(()),
        r => r,
    }
}

/// The kernel finishes unmounting a dying namespace's filesystems as its last task exits, a
/// moment after rcx-dm has reaped PID 1: give a busy device a little while.
fn retry_busy(mut f: impl FnMut() -> Result<()>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match f() {
            Err(Error::Busy { .. }) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            r => return r,
        }
    }
}

/// Clean up after runs whose rcx-dm died (killed, crashed, power cut). Returns how many were
/// cleaned. Runs in progress are left alone (their lock is held). Cheap when there are none:
/// one directory read.
pub fn reap_dead_runs(pool: &Pool) -> Result<usize> {
    let runs = runs_dir(pool);
    let Ok(entries) = fs::read_dir(&runs) else { return Ok(0) };
    let mut cleaned = 0;
    let mut first_err = None;
    let mut leases = false;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let dir = e.path();
        leases |= userns::is_lease(name);
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if name.starts_with('.') && new_dir_creator_alive(name) {
            // Made but maybe not locked yet (the soak caught a reaper removing it there).
            continue;
        }
        let lock = match lock_dir(&dir) {
            Ok(Some(l)) => l,
            Ok(None) => continue, // alive
            Err(_) => continue,   // vanished meanwhile: another command cleaned it
        };
        if name.starts_with('.') {
            // Died before its record was complete: nothing was touched yet.
            remove_run_dir(&dir)?;
            continue;
        }
        let done = read_json::<RunRecord>(&dir.join(RECORD)).and_then(|rec| {
            if let Some(rec) = &rec {
                tracing::warn!(run = %rec.id, pid = rec.pid, "cleaning up after a run whose rcx-dm died");
                cleanup(pool, rec, &dir)?;
            }
            remove_run_dir(&dir)
        });
        drop(lock);
        match done {
            Ok(()) => cleaned += 1,
            // Kept for the next command (e.g. the pool is inactive until `pool activate`).
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    // After the runs: a dead run's container is killed with its cgroup before its ids are free.
    if leases {
        if let Err(e) = userns::reap_leases(&runs) {
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(cleaned),
    }
}

#[cfg(test)]
mod tests {
    use super::new_dir_creator_alive;

    #[test]
    fn a_new_run_dir_is_its_living_creators() {
        assert!(new_dir_creator_alive(&format!(".new-22f6651d-{}", std::process::id())));
        // pid_max is at most 2^22: this pid never exists.
        assert!(!new_dir_creator_alive(".new-22f6651d-4294967295"));
        assert!(!new_dir_creator_alive(".new-22f6651d"));
    }
}
