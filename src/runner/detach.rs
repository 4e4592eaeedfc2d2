//! Detached containers (`rcx-dm run -d`): a run that outlives the command that started it.
//!
//! `<root>/<pool>/containers/<name>/` is the container's record: `container.json` (what was
//! run, written before anything starts), `log` (its stdout and stderr), `started.json` (the
//! host pid of its PID 1, once the command runs) and `exit.json` (its exit status, once it has
//! exited and its run is torn down). The record stays after the exit, so `wait`, `logs` and
//! `ps` still answer, until `rcx-dm rm NAME` (as Docker's).
//!
//! The supervisor is this process, forked twice before anything of the run exists: the first
//! child starts a new session and exits at once, so the supervisor belongs to no terminal and is
//! nobody's child (the caller never has to reap it, and a library caller's wait(-1) never
//! takes it); the second child runs the ordinary `run` (record in `runs/`, snapshot, cgroup,
//! clone, supervision, teardown) with its stdout and stderr in `log`. Forking instead of
//! re-executing rcx-dm keeps the spec as it was parsed (nothing to serialise and re-parse) and
//! lets the starting command report a failed start (status 125/126/127 and the reason) through a
//! pipe before it returns.
//!
//! Liveness is a lock, as for runs: the supervisor holds an exclusive flock on the record's
//! directory from its creation to its exit (the creating command takes it and hands it down
//! through the forks). Observers (`ps`, `wait`, `logs -f`) take it shared: they never disturb
//! each other and tell a live supervisor from a dead one. If the supervisor is killed, its
//! container dies with it (PR_SET_PDEATHSIG), the next command tears the run down from its
//! record (`reap_dead_runs`) and writes the exit record itself (status 137, with the reason).

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use nix::errno::Errno;

use super::cgroup::{self, Cgroup};
use super::container::{OnRunning, RunOutcome};
use super::run::{new_run_id, run_with};
use super::security::Security;
use super::spec::{Net, RunSpec};
use super::{fork, report, state};
use crate::durable::{json, read_json, sync_dir, write_durable};
use crate::error::{Error, IoContext, Result};
use crate::file_lock::{FileLock, LockMode};
use crate::pool::{Pool, VolRef};

/// The directory in a pool's directory that holds the detached containers' records.
pub const CONTAINERS_DIR: &str = "containers";
const RECORD: &str = "container.json";
const STARTED: &str = "started.json";
const EXIT: &str = "exit.json";
/// The file in a container's record that holds its stdout and stderr.
pub const LOG: &str = "log";
/// The status recorded for a container whose supervisor died: its container was SIGKILLed.
pub const EXIT_SUPERVISOR_DIED: i32 = 137;

/// What a detached container runs, written before it starts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerRecord {
    /// `--name`, else `run-<run id>`; also the container snapshot's name.
    pub name: String,
    /// The run's id (its directory in `runs/` while it runs, and its cgroup's suffix).
    pub run_id: String,
    /// The volume as the user named it.
    pub volume: String,
    /// The volume's id.
    pub base: u32,
    /// The snapshot the run makes of a read-only volume (`rm` deletes it); None in place.
    pub snapshot: Option<String>,
    /// The command.
    pub command: Vec<String>,
    /// When it was created (seconds since the epoch).
    pub created: u64,
    /// The container's environment (`exec` gives its commands the same).
    pub env: Vec<(String, String)>,
    /// The command's working directory (`exec`'s default too).
    pub workdir: Option<String>,
    /// Capabilities, seccomp, no_new_privs (`exec` applies the same).
    pub security: Security,
    /// `--net`: "none", "host" or "bridge" (None in records of older rcx-dm).
    #[serde(default)]
    pub net: Option<String>,
    /// `--userns`: it runs in a user namespace of its own.
    #[serde(default)]
    pub userns: bool,
    /// The checkpoint it was restored from (`rcx-dm restore`), if it was.
    #[serde(default)]
    pub restored_from: Option<String>,
}

/// Written by the supervisor once the command runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StartedRecord {
    /// The supervisor's pid.
    pub supervisor_pid: u32,
    /// The container's PID 1 as the host sees it.
    pub pid: i32,
    /// The run's cgroup, if it has one.
    pub cgroup: Option<PathBuf>,
    /// Seconds since the epoch.
    pub started: u64,
}

/// How a detached container ended, kept until `rm`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitRecord {
    /// The command's status, or 128+n if signal n killed it (137 if its supervisor died).
    pub code: i32,
    /// The signal that killed PID 1, if one did.
    pub signal: Option<i32>,
    /// Seconds since the epoch.
    pub finished: u64,
    /// What went wrong besides the command's own status (a failed teardown, a dead supervisor).
    pub error: Option<String>,
}

/// Where a detached container is in its life.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    /// The supervisor lives; the command has not started yet.
    Starting,
    /// The supervisor lives and the command runs.
    Running,
    /// Exited (the exit record says how).
    Exited,
}

/// What `ps` shows of one container.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerStatus {
    /// What it runs.
    #[serde(flatten)]
    pub record: ContainerRecord,
    /// Starting, running or exited.
    pub state: ContainerState,
    /// Pids, once started (kept after the exit, for reading only).
    pub started: Option<StartedRecord>,
    /// How it ended.
    pub exit: Option<ExitRecord>,
}

impl ContainerStatus {
    /// "running", "exited (status 7)", ... for messages and `ps`.
    pub fn describe(&self) -> String {
        match (&self.state, &self.exit) {
            (ContainerState::Exited, Some(x)) => format!("exited (status {})", x.code),
            (ContainerState::Exited, None) => "exited".into(),
            (ContainerState::Running, _) => "running".into(),
            (ContainerState::Starting, _) => "starting".into(),
        }
    }
}

pub(super) fn containers_dir(pool: &Pool) -> PathBuf {
    pool.dir().join(CONTAINERS_DIR)
}

pub(super) fn now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Start `spec` detached; returns the container's name once its command runs (an error, with
/// the status `run` would have exited with, if it did not start). Call from a single-threaded
/// process (it forks). `-t` and `-i` are refused: a detached container has no terminal.
pub fn start(pool: &Pool, spec: &RunSpec) -> Result<String> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot("rcx-dm run -d"));
    }
    spec.validate()?;
    if spec.tty || spec.interactive {
        return Err(Error::invalid(
            "-d",
            "a detached container has no terminal and no stdin: drop -t and -i (its output is in `rcx-dm logs NAME`; `rcx-dm exec NAME -- CMD` runs commands in it)",
        ));
    }
    if let Some(n) = &spec.name {
        crate::pool::validate_user_volume_name(n)?;
    }
    let vref = spec.volume.clone().expect("validated");
    let base = pool.resolve(&vref)?;
    let run_id = new_run_id();
    let name = spec.name.clone().unwrap_or_else(|| format!("run-{run_id}"));
    // As `run` names the host: --hostname, else the name ('_' is not allowed there), else the id.
    let hostname =
        spec.hostname.clone().or_else(|| spec.name.as_ref().map(|n| n.replace('_', "-"))).unwrap_or_else(|| run_id.clone());
    let record = ContainerRecord {
        snapshot: (base.read_only && !spec.read_only).then(|| name.clone()),
        name,
        run_id,
        volume: vref.to_string(),
        base: base.id,
        command: spec.argv.clone(),
        created: now(),
        env: spec.environment(&hostname),
        workdir: spec.workdir.clone(),
        security: spec.security.clone(),
        net: Some(match spec.net {
            Net::None => "none",
            Net::Host => "host",
            Net::Bridge => "bridge",
        }
        .to_string()),
        userns: spec.userns.is_some(),
        restored_from: None,
    };
    let run_id = record.run_id.clone();
    start_supervised(pool, &record, &mut |on_running| run_with(pool, spec, Some(run_id.clone()), on_running))
}

/// What a supervisor runs: a run (`run -d`) or a restore, told when the command runs.
pub(super) type Body<'a> = &'a mut dyn FnMut(OnRunning<'_>) -> Result<RunOutcome>;

/// Create the record of `record` and fork its supervisor, which runs `body`; returns the
/// container's name once `body` reports it running. Call from a single-threaded process.
pub(super) fn start_supervised(pool: &Pool, record: &ContainerRecord, body: Body<'_>) -> Result<String> {
    let (dir, lock) = create(pool, record)?;
    let (r, w) = fork::pipe()?;
    // SAFETY: the caller is single-threaded (documented); the child is a copy of it.
    match unsafe { libc::fork() } {
        -1 => {
            let e = std::io::Error::last_os_error();
            let _ = fs::remove_dir_all(&dir);
            Err(e).ctx(|| "forking the supervisor of a detached container".into())
        }
        0 => {
            drop(r);
            // SAFETY: as above; this intermediate child only forks and exits.
            unsafe {
                libc::setsid();
                match libc::fork() {
                    0 => supervise(pool, record, &dir, lock, w, body),
                    -1 => {
                        let msg = format!("ERR 125\nforking the supervisor: {}", std::io::Error::last_os_error());
                        let _ = fs::remove_dir_all(&dir);
                        libc::write(w.as_raw_fd(), msg.as_ptr().cast(), msg.len());
                        libc::_exit(1)
                    }
                    _ => libc::_exit(0),
                }
            }
        }
        child => {
            drop(w);
            // The supervisor holds the lock now; closing this copy leaves it held.
            lock.close_without_unlock();
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None);
            read_start(r, &record.name)
        }
    }
}

/// Make the record's directory under a dot-name, lock it, write the record and an empty log,
/// then rename it into place: refused (nothing changed) if the name is taken.
fn create(pool: &Pool, rec: &ContainerRecord) -> Result<(PathBuf, FileLock)> {
    let parent = containers_dir(pool);
    fs::create_dir_all(&parent).ctx(|| format!("creating {}", parent.display()))?;
    let tmp = parent.join(format!(".new-{}-{}", rec.name, std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
    let lock = FileLock::try_lock_existing(&tmp, LockMode::Exclusive)?
        .ok_or_else(|| Error::Inconsistent(format!("{} is locked by another process", tmp.display())))?;
    let undo = |e: Error| {
        let _ = fs::remove_dir_all(&tmp);
        e
    };
    write_durable(&tmp.join(RECORD), &json(rec)?).map_err(undo)?;
    File::create(tmp.join(LOG)).ctx(|| format!("creating {}/{LOG}", tmp.display())).map_err(undo)?;
    let dir = parent.join(&rec.name);
    if let Err(e) = rename_noreplace(&tmp, &dir) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(match e.raw_os_error() {
            Some(libc::EEXIST) | Some(libc::ENOTEMPTY) => Error::Exists(format!(
                "container '{}' (`rcx-dm ps` shows it; `rcx-dm rm {}` removes it once exited, or pick another --name)",
                rec.name, rec.name
            )),
            _ => return Err(e).ctx(|| format!("renaming {} into place", tmp.display())),
        });
    }
    sync_dir(&parent)?;
    Ok((dir, lock))
}

pub(super) fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| std::io::Error::from(ErrorKind::InvalidInput));
    let (a, b) = (c(from)?, c(to)?);
    // SAFETY: two NUL-terminated paths.
    let r = unsafe {
        libc::syscall(libc::SYS_renameat2, libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_NOREPLACE)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The starting command's side: "OK" once the command runs, or "ERR <status>\n<message>".
fn read_start(r: OwnedFd, name: &str) -> Result<String> {
    let mut text = String::new();
    let _ = File::from(r).read_to_string(&mut text);
    if text.starts_with("OK") {
        return Ok(name.to_string());
    }
    if let Some(rest) = text.strip_prefix("ERR ") {
        let (status, msg) = rest.split_once('\n').unwrap_or((rest, ""));
        return Err(Error::DetachedStart { status: status.trim().parse().unwrap_or(report::EXIT_SETUP), msg: msg.to_string() });
    }
    Err(Error::DetachedStart {
        status: report::EXIT_SETUP,
        msg: format!("the supervisor of container '{name}' died before its command started; `rcx-dm logs {name}` may say why"),
    })
}

/// The supervisor: output to the log, the ordinary run, then the exit record. Never returns.
fn supervise(pool: &Pool, rec: &ContainerRecord, dir: &Path, lock: FileLock, w: OwnedFd, body: Body<'_>) -> ! {
    let _ = nix::sys::prctl::set_name(c"rcx-supervise");
    // Pins no mount of the caller's.
    let _ = std::env::set_current_dir("/");
    let mut w = Some(w);
    let copier = match redirect_output(&dir.join(LOG)) {
        Ok(pid) => pid,
        Err(e) => {
            tell(&mut w, &format!("ERR {}\n{e}", report::EXIT_SETUP));
            let _ = fs::remove_dir_all(dir);
            std::process::exit(report::EXIT_SETUP);
        }
    };
    let cg = cgroup::mount_point().map(|m| Cgroup::path_for(&m, &format!("{}-{}", pool.name(), rec.run_id)));
    let result = {
        let mut on_running = |pid: nix::unistd::Pid| {
            let st = StartedRecord { supervisor_pid: std::process::id(), pid: pid.as_raw(), cgroup: cg.clone(), started: now() };
            if let Err(e) = json(&st).and_then(|b| write_durable(&dir.join(STARTED), &b)) {
                tracing::warn!(error = %e, "recording the container's pid failed; stop, kill and exec cannot reach it");
            }
            tell(&mut w, "OK\n");
        };
        body(Some(&mut on_running))
    };
    let exit = match result {
        Err(e) if w.is_some() => {
            // Never started: nothing to keep (as a failed `run`).
            let status = report::start_status(&e);
            tell(&mut w, &format!("ERR {status}\n{e}"));
            let _ = fs::remove_dir_all(dir);
            std::process::exit(status);
        }
        Err(e) => ExitRecord { code: report::EXIT_SETUP, signal: None, finished: now(), error: Some(e.to_string()) },
        Ok(out) => {
            // Killed before it could report that it runs: it did run, and says how it ended.
            tell(&mut w, "OK\n");
            ExitRecord { code: out.code, signal: out.signal, finished: now(), error: out.cleanup_error.map(|e| e.to_string()) }
        }
    };
    eprintln!("rcx-dm: container '{}' exited with status {}", rec.name, exit.code);
    // Everything is in the log before the exit record tells `logs -f` and `wait` it is over.
    finish_output(copier);
    if let Err(e) = json(&exit).and_then(|b| write_durable(&dir.join(EXIT), &b)) {
        eprintln!("rcx-dm: recording the exit status failed: {e}");
    }
    drop(lock);
    std::process::exit(0)
}

/// One message to the starting command, then close the pipe.
fn tell(w: &mut Option<OwnedFd>, msg: &str) {
    if let Some(fd) = w.take() {
        let _ = File::from(fd).write_all(msg.as_bytes());
    }
}

/// stdin from /dev/null; stdout and stderr a pipe that a child of the supervisor copies to the
/// log (as containerd's shim does), so the container holds a pipe, which CRIU can dump as an
/// external object and restore onto a new pipe, not a host file outside its mount namespace.
/// Returns the copier's pid.
fn redirect_output(log: &Path) -> Result<libc::pid_t> {
    let null = File::open("/dev/null").ctx(|| "opening /dev/null".into())?;
    let out = OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(log)
        .ctx(|| format!("opening {}", log.display()))?;
    let (r, w) = fork::pipe()?;
    // SAFETY: the supervisor is single-threaded; the copier only reads, writes and exits.
    let copier = unsafe { libc::fork() };
    if copier < 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "forking the log copier".into());
    }
    if copier == 0 {
        // SAFETY: plain descriptor calls in the copier, which never returns.
        unsafe {
            libc::dup2(r.as_raw_fd(), 0);
            libc::dup2(out.as_raw_fd(), 1);
            // Nothing else: the lock, the start pipe and the write end stay the supervisor's.
            libc::syscall(libc::SYS_close_range, 2u32, u32::MAX, 0u32);
            let _ = nix::sys::prctl::set_name(c"rcx-logcopy");
            let mut buf = [0u8; 65536];
            loop {
                let n = libc::read(0, buf.as_mut_ptr().cast(), buf.len());
                if n < 0 && Errno::last() == Errno::EINTR {
                    continue;
                }
                if n <= 0 {
                    libc::_exit(0);
                }
                let mut off = 0usize;
                while off < n as usize {
                    let m = libc::write(1, buf.as_ptr().add(off).cast(), n as usize - off);
                    if m < 0 && Errno::last() == Errno::EINTR {
                        continue;
                    }
                    if m <= 0 {
                        break;
                    }
                    off += m as usize;
                }
            }
        }
    }
    for (from, to) in [(null.as_raw_fd(), 0), (w.as_raw_fd(), 1), (w.as_raw_fd(), 2)] {
        // SAFETY: dup2 onto this process's standard descriptors.
        if unsafe { libc::dup2(from, to) } != to {
            return Err(std::io::Error::last_os_error()).ctx(|| format!("redirecting descriptor {to} to the log pipe"));
        }
    }
    Ok(copier)
}

/// The supervisor's last output is written: close its ends of the pipe and let the copier
/// finish (the container's processes, the other writers, are gone by now). Bounded: a writer
/// that escaped would otherwise hold the supervisor forever.
fn finish_output(copier: libc::pid_t) {
    if let Ok(null) = File::open("/dev/null") {
        // SAFETY: dup2 onto this process's standard descriptors.
        unsafe {
            libc::dup2(null.as_raw_fd(), 1);
            libc::dup2(null.as_raw_fd(), 2);
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        // SAFETY: waits for our own child without blocking.
        match unsafe { libc::waitpid(copier, std::ptr::null_mut(), libc::WNOHANG) } {
            0 => std::thread::sleep(Duration::from_millis(5)),
            _ => return,
        }
    }
}

/// A container's directory and record; NoSuchContainer for a name without one.
fn load(pool: &Pool, name: &str) -> Result<(PathBuf, ContainerRecord)> {
    let missing = || Error::NoSuchContainer { name: name.to_string(), pool: pool.name().to_string() };
    if name.is_empty() || name.starts_with('.') || name.contains('/') {
        return Err(missing());
    }
    let dir = containers_dir(pool).join(name);
    match read_json::<ContainerRecord>(&dir.join(RECORD))? {
        Some(rec) => Ok((dir, rec)),
        None => Err(missing()),
    }
}

/// Whether the supervisor is gone: a shared lock is ours at once (it holds it exclusively).
fn supervisor_gone(dir: &Path) -> Result<Option<FileLock>> {
    FileLock::try_lock_existing(dir, LockMode::Shared)
}

fn status_at(pool: &Pool, dir: &Path, rec: &ContainerRecord) -> Result<ContainerStatus> {
    let started = read_json::<StartedRecord>(&dir.join(STARTED))?;
    let mut exit = read_json::<ExitRecord>(&dir.join(EXIT))?;
    let state = if exit.is_some() {
        ContainerState::Exited
    } else {
        match supervisor_gone(dir)? {
            None if started.is_some() => ContainerState::Running,
            None => ContainerState::Starting,
            Some(_lock) => {
                // The exit record is written before the lock goes: read again now that the
                // supervisor is gone (it may have exited just now); none means it died.
                exit = match read_json::<ExitRecord>(&dir.join(EXIT))? {
                    Some(x) => Some(x),
                    None => Some(record_dead(pool, dir, rec)?),
                };
                ContainerState::Exited
            }
        }
    };
    Ok(ContainerStatus { record: rec.clone(), state, started, exit })
}

/// The exit record of a container whose supervisor died, after its run's teardown.
fn record_dead(pool: &Pool, dir: &Path, rec: &ContainerRecord) -> Result<ExitRecord> {
    if pool.dir().join(state::RUNS_DIR).join(&rec.run_id).exists() {
        if let Err(e) = state::reap_dead_runs(pool) {
            tracing::warn!(container = %rec.name, error = %e, "tearing down the run of a dead supervisor failed; the next command retries");
        }
    }
    tracing::warn!(container = %rec.name, "its supervisor died; the container was killed with it");
    let x = ExitRecord {
        code: EXIT_SUPERVISOR_DIED,
        signal: Some(libc::SIGKILL),
        finished: now(),
        error: Some("its supervisor died (killed?), and the container was killed with it".into()),
    };
    write_durable(&dir.join(EXIT), &json(&x)?)?;
    Ok(x)
}

/// One container's status.
pub fn status(pool: &Pool, name: &str) -> Result<ContainerStatus> {
    let (dir, rec) = load(pool, name)?;
    status_at(pool, &dir, &rec)
}

/// Every detached container of the pool, oldest first.
pub fn list(pool: &Pool) -> Result<Vec<ContainerStatus>> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(containers_dir(pool)) else { return Ok(out) };
    for e in entries.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_string) else { continue };
        if name.starts_with('.') {
            continue;
        }
        match load(pool, &name) {
            Ok((dir, rec)) => out.push(status_at(pool, &dir, &rec)?),
            // Removed meanwhile.
            Err(Error::NoSuchContainer { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_by(|a, b| (a.record.created, &a.record.name).cmp(&(b.record.created, &b.record.name)));
    Ok(out)
}

/// For every command: exit records for containers whose supervisor died, and half-made records
/// of starting commands that died. Returns how many. One directory read when there are none.
pub fn reap_dead_containers(pool: &Pool) -> Result<usize> {
    let Ok(entries) = fs::read_dir(containers_dir(pool)) else { return Ok(0) };
    let mut n = 0;
    for e in entries.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_string) else { continue };
        let dir = e.path();
        if name.starts_with(".new-") {
            if !state::new_dir_creator_alive(&name) && FileLock::try_lock_existing(&dir, LockMode::Exclusive).ok().flatten().is_some() {
                let _ = fs::remove_dir_all(&dir);
                n += 1;
            }
            continue;
        }
        if name.starts_with('.') || dir.join(EXIT).exists() {
            continue;
        }
        if let Ok(Some(_lock)) = supervisor_gone(&dir) {
            if let Some(rec) = read_json::<ContainerRecord>(&dir.join(RECORD))? {
                if !dir.join(EXIT).exists() {
                    record_dead(pool, &dir, &rec)?;
                    n += 1;
                }
            }
        }
    }
    Ok(n)
}

/// A running container's PID 1, as a pidfd checked to be the container's (its supervisor
/// lives, and the process is in the run's cgroup), with its record.
pub(super) fn running(pool: &Pool, name: &str, advice: &'static str) -> Result<(ContainerStatus, StartedRecord, OwnedFd)> {
    let (dir, rec) = load(pool, name)?;
    let st = status_at(pool, &dir, &rec)?;
    let not_running = |st: &ContainerStatus| Error::ContainerState { name: name.to_string(), state: st.describe(), advice };
    let started = match (&st.state, &st.started) {
        (ContainerState::Running, Some(s)) => s.clone(),
        _ => return Err(not_running(&st)),
    };
    // SAFETY: pidfd_open with a pid and no flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, started.pid, 0) };
    if fd < 0 {
        // ESRCH: PID 1 has just exited; its supervisor is tearing down.
        return Err(not_running(&st));
    }
    // SAFETY: a new descriptor owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // The pid is the container's while its supervisor lives and the process is in its cgroup;
    // checked after the pidfd pins the process, so a recycled pid is never signalled.
    let in_cgroup = match (&started.cgroup, cgroup::mount_point()) {
        (Some(cg), Some(mnt)) => fs::read_to_string(format!("/proc/{}/cgroup", started.pid)).is_ok_and(|t| {
            let rel = cg.strip_prefix(&mnt).map(|p| format!("0::/{}", p.display())).unwrap_or_default();
            t.lines().any(|l| l == rel)
        }),
        _ => true,
    };
    if !in_cgroup || supervisor_gone(&dir)?.is_some() {
        return Err(not_running(&st));
    }
    Ok((st, started, pidfd))
}

pub(super) fn send(pidfd: &OwnedFd, sig: i32) -> Result<()> {
    // SAFETY: pidfd_send_signal with no siginfo and no flags.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), sig, std::ptr::null::<libc::siginfo_t>(), 0) };
    if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH) {
        return Err(std::io::Error::last_os_error()).ctx(|| format!("sending signal {sig} to the container"));
    }
    Ok(())
}

/// Send `sig` to a running container's PID 1 (as Docker's `kill`; PID 1 of a pid namespace
/// gets only the signals it has a handler for, except SIGKILL).
pub fn kill(pool: &Pool, name: &str, sig: i32) -> Result<()> {
    let (_, _, pidfd) = running(pool, name, "only a running container takes signals")?;
    send(&pidfd, sig)
}

/// SIGTERM to PID 1, SIGKILL after `grace` if it is still there; returns once the run is torn
/// down, with the exit record. A container that has exited already is left as it is.
pub fn stop(pool: &Pool, name: &str, grace: Duration) -> Result<ExitRecord> {
    let pidfd = match running(pool, name, "") {
        Ok((_, _, fd)) => fd,
        Err(Error::ContainerState { .. }) => return wait(pool, name),
        Err(e) => return Err(e),
    };
    send(&pidfd, libc::SIGTERM)?;
    // A pidfd is readable once its process has exited.
    let mut pfd = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = grace.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one pollfd.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    if r == 0 {
        tracing::info!(container = name, "still running {}s after SIGTERM; sending SIGKILL", grace.as_secs_f64());
        // SIGKILL of a pid namespace's PID 1 kills every process in it.
        send(&pidfd, libc::SIGKILL)?;
    }
    wait(pool, name)
}

/// Block until the container has exited and its run is torn down; its exit record.
pub fn wait(pool: &Pool, name: &str) -> Result<ExitRecord> {
    let (dir, rec) = load(pool, name)?;
    let _lock = FileLock::lock_existing(&dir, LockMode::Shared)?;
    let st = status_at(pool, &dir, &rec)?;
    st.exit.ok_or_else(|| Error::Inconsistent(format!("container '{name}' has no exit record after its supervisor ended")))
}

/// Remove an exited container's record. `delete_snapshot` is given the name of the snapshot
/// the run made, if it is still there (the front end deletes it, or keeps it); the record goes
/// only after it returns Ok.
pub fn remove(pool: &Pool, name: &str, delete_snapshot: impl FnOnce(&str) -> Result<()>) -> Result<()> {
    let (dir, rec) = load(pool, name)?;
    let st = status_at(pool, &dir, &rec)?;
    if st.state != ContainerState::Exited {
        return Err(Error::ContainerState {
            name: name.to_string(),
            state: st.describe(),
            advice: "stop it first (`rcx-dm stop NAME`), then `rcx-dm rm NAME`",
        });
    }
    let _lock = FileLock::try_lock_existing(&dir, LockMode::Exclusive)?.ok_or_else(|| Error::ContainerState {
        name: name.to_string(),
        state: "in use by another rcx-dm command (logs -f, wait)".into(),
        advice: "try again once it is done",
    })?;
    // Only a snapshot of the run's volume is the run's (a name alone could be someone else's).
    if let Some(s) = &rec.snapshot {
        if pool.resolve(&VolRef::Name(s.clone())).is_ok_and(|v| v.parent == Some(rec.base)) {
            delete_snapshot(s)?;
        }
    }
    fs::remove_dir_all(&dir).ctx(|| format!("removing {}", dir.display()))?;
    sync_dir(&containers_dir(pool))
}

/// Copy the container's log to `out`; with `follow`, go on copying until its supervisor has
/// exited (then the rest).
pub fn logs(pool: &Pool, name: &str, follow: bool, out: &mut dyn Write) -> Result<()> {
    let (dir, _) = load(pool, name)?;
    let path = dir.join(LOG);
    let mut f = File::open(&path).ctx(|| format!("opening {}", path.display()))?;
    let mut copy = |f: &mut File| -> Result<u64> {
        let n = std::io::copy(f, out).ctx(|| format!("copying {}", path.display()))?;
        out.flush().ctx(|| "writing the log out".into())?;
        Ok(n)
    };
    copy(&mut f)?;
    if !follow {
        return Ok(());
    }
    loop {
        let gone = supervisor_gone(&dir)?.is_some();
        let n = copy(&mut f)?;
        if gone {
            return Ok(());
        }
        if n == 0 {
            // As `tail -f`: the file has no event to wait for without inotify.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
