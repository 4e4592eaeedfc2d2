//! The minimal container runner behind `rcx-dm run`: a volume becomes a container root.
//!
//! One run, in order:
//! 1. resolve the volume; refuse it if mounted read-write elsewhere;
//! 2. record the run durably (`state`), naming everything it will create;
//! 3. a read-only base gets a fresh writable thin snapshot (`Pool::snapshot`); a writable
//!    volume is activated and used in place;
//! 4. a cgroup v2 group with the limits (`cgroup`);
//! 5. clone3 into new mount, pid, uts, ipc (and net) namespaces, inside that cgroup; the child
//!    mounts the volume privately, pivot_roots into it, detaches the old root, mounts /proc,
//!    /sys (read-only) and a minimal /dev, sets the hostname and execs the command as PID 1
//!    (`namespaces`, `rootfs`, `devices`);
//! 6. rcx-dm forwards signals and waits (`init`); the exit status is the command's, or 128+n
//!    if signal n killed it;
//! 7. teardown: cgroup removed, snapshot deactivated (or deleted with --rm), record removed.
//!
//! No process is spawned besides the container itself. If rcx-dm dies, the container dies
//! with it (PR_SET_PDEATHSIG), the kernel drops the mount with the container's mount
//! namespace, and the next rcx-dm command finishes the teardown from the record
//! (`reap_dead_runs`).

mod cgroup;
mod devices;
mod init;
mod namespaces;
mod network;
mod rootfs;
mod state;

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;

pub use cgroup::{cpu_max, parse_cpus, parse_memory, parse_pids, Events, Limits};
pub use init::STOP_GRACE;
pub use network::{BRIDGE, GATEWAY};
pub use namespaces::{EXIT_NOEXEC, EXIT_NOTFOUND, EXIT_SETUP};
pub use rootfs::{detect as detect_filesystem, parse_mountinfo, Fs, MountEntry};
pub use state::{reap_dead_runs, RunRecord, RUNS_DIR};

use crate::error::{Error, Result};
use crate::pool::{Pool, VolRef};
use namespaces::{ChildNet, ChildPlan, Report};
use rootfs::RootPlan;
use state::RunState;

/// PATH inside the container unless --env sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The container's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Net {
    /// A new network namespace with only `lo` (up).
    #[default]
    None,
    /// The host's network namespace.
    Host,
    /// A new network namespace with eth0 on the host bridge `rcx0` (10.77.0.0/16).
    Bridge,
}

/// What to run and how.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    pub volume: Option<VolRef>,
    /// Delete the container snapshot afterwards.
    pub rm: bool,
    /// Name of the container snapshot (and default hostname).
    pub name: Option<String>,
    pub hostname: Option<String>,
    pub limits: Limits,
    pub net: Net,
    /// Extra environment, applied over the defaults in order.
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    /// Mount the root filesystem read-only.
    pub read_only: bool,
    /// A tiny init as PID 1 (signal forwarding, reaping); the command is then PID 2.
    pub init: bool,
    pub argv: Vec<String>,
}

/// How the volume is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A read-only base: run in a fresh writable snapshot of it.
    Snapshot,
    /// A writable volume, used as it is.
    InPlace,
    /// A read-only base with --read-only: mounted read-only itself (no journal replay), shared.
    SharedReadOnly,
}

/// How a run ended.
#[derive(Debug)]
pub struct RunOutcome {
    /// The command's exit status, or 128+n if signal n killed it.
    pub code: i32,
    pub signal: Option<i32>,
    pub limits: Limits,
    pub events: Events,
    /// The container snapshot, kept (without --rm): (id, name).
    pub kept: Option<(u32, String)>,
    /// Where the time went: snapshot, activate, cgroup, mount, namespaces+pivot_root, exec,
    /// teardown, total.
    pub timings: Vec<(&'static str, Duration)>,
    /// Teardown failed (the record stays; the next rcx-dm command retries it).
    pub cleanup_error: Option<Error>,
}

/// `--env K=V` (or `K`, which takes rcx-dm's own value of K, and is skipped if unset).
pub fn parse_env(text: &str) -> Result<Option<(String, String)>> {
    let (k, v) = match text.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (text, None),
    };
    if k.is_empty() || k.contains('\0') || v.is_some_and(|v| v.contains('\0')) {
        return Err(Error::invalid("environment variable", format!("'{}'; use NAME=VALUE", text.escape_debug())));
    }
    Ok(match v {
        Some(v) => Some((k.to_string(), v.to_string())),
        None => std::env::var(k).ok().map(|v| (k.to_string(), v)),
    })
}

/// Hostnames: 1-64 of letters, digits, '-' and '.', not starting with '-' or '.'.
pub fn validate_hostname(h: &str) -> Result<()> {
    let ok = !h.is_empty()
        && h.len() <= 64
        && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !h.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(Error::invalid("hostname", format!("'{h}'; use 1-64 letters, digits, '-' and '.'")))
    }
}

impl RunSpec {
    fn validate(&self) -> Result<()> {
        if self.volume.is_none() {
            return Err(Error::invalid("volume", "none given"));
        }
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err(Error::invalid("command", "none given; put it after --, e.g. `rcx-dm run 1 -- /bin/sh`"));
        }
        if let Some(h) = &self.hostname {
            validate_hostname(h)?;
        }
        if let Some(n) = &self.name {
            crate::pool::validate_volume_name(n)?;
        }
        if let Some(w) = &self.workdir {
            if !w.starts_with('/') {
                return Err(Error::invalid("working directory", format!("'{w}'; give an absolute path like /root")));
            }
        }
        Ok(())
    }

    /// The container's environment: PATH, HOME, HOSTNAME, TERM (from rcx-dm's, for the
    /// terminal passed through), then --env in order.
    pub fn environment(&self, hostname: &str) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), DEFAULT_PATH.into()),
            ("HOME".into(), "/root".into()),
            ("HOSTNAME".into(), hostname.into()),
        ];
        if let Ok(t) = std::env::var("TERM") {
            env.push(("TERM".into(), t));
        }
        for (k, v) in &self.env {
            match env.iter_mut().find(|(ek, _)| ek == k) {
                Some(e) => e.1 = v.clone(),
                None => env.push((k.clone(), v.clone())),
            }
        }
        env
    }
}

/// Run a container and wait for it. Call from a single-threaded process (it clones the
/// calling process, and blocks the forwarded signals while it runs).
pub fn run(pool: &Pool, spec: &RunSpec) -> Result<RunOutcome> {
    let t0 = Instant::now();
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot("rcx-dm run"));
    }
    spec.validate()?;
    let vref = spec.volume.clone().expect("validated");
    let _signals = init::Signals::block()?;
    let base = pool.resolve(&vref)?;
    let label = vref.to_string();
    let mode = match (base.read_only, spec.read_only) {
        (true, false) => Mode::Snapshot,
        (true, true) => Mode::SharedReadOnly,
        (false, _) => Mode::InPlace,
    };
    let view = pool.volume(&VolRef::Id(base.id))?;
    if let Some(dev) = &view.device {
        rootfs::refuse_if_mounted_rw(&label, rootfs::dev_numbers(dev)?, &rootfs::mountinfo()?)?;
    }
    let _vol_lock = match mode {
        Mode::Snapshot => None,
        Mode::InPlace => Some(state::lock_volume(pool, base.id, !spec.read_only)?),
        Mode::SharedReadOnly => Some(state::lock_volume(pool, base.id, false)?),
    };
    let cg_mnt = cgroup::mount_point();
    if cg_mnt.is_none() && spec.limits != Limits::default() {
        return Err(Error::Cgroup(
            "no cgroup v2 filesystem at /sys/fs/cgroup or /sys/fs/cgroup/unified; mount one \
             (`mount -t cgroup2 none /sys/fs/cgroup`) or run without --memory/--pids/--cpus"
                .into(),
        ));
    }
    if let Some(n) = &spec.name {
        crate::pool::validate_user_volume_name(n)?;
    }
    let run_id = new_run_id();
    let snapshot = (mode == Mode::Snapshot).then(|| spec.name.clone().unwrap_or_else(|| format!("run-{run_id}")));
    if let Some(n) = &snapshot {
        if pool.resolve(&VolRef::Name(n.clone())).is_ok() {
            return Err(Error::Exists(format!("a volume named '{n}' (pick another --name)")));
        }
    }
    // The address is claimed before the record exists, in the name of the run's directory: a
    // claim whose directory never appeared is stale and taken over (network::claim_address).
    let ip = match spec.net {
        Net::Bridge => {
            let seed = u32::from_str_radix(&run_id, 16).unwrap_or(0);
            Some(network::claim_address(&state::runs_dir(pool).join(&run_id), seed)?)
        }
        _ => None,
    };
    let record = state::RunRecord {
        id: run_id.clone(),
        pid: std::process::id(),
        volume: base.id,
        snapshot: snapshot.clone(),
        rm: spec.rm,
        deactivate: (mode != Mode::Snapshot && !view.active).then_some(base.id),
        cgroup: cg_mnt.as_ref().map(|m| cgroup::Cgroup::path_for(m, &format!("{}-{run_id}", pool.name()))),
        ip: ip.map(|i| i.to_string()),
    };
    let st = match RunState::create(pool, record) {
        Ok(st) => st,
        Err(e) => {
            if let Some(ip) = ip {
                network::release_address(&ip.to_string(), &state::runs_dir(pool).join(&run_id));
            }
            return Err(e);
        }
    };
    let mut timings = Vec::new();
    let result = run_recorded(pool, spec, &st, mode, &label, base.id, cg_mnt.as_deref(), &mut timings);

    let t_teardown = Instant::now();
    let mut rec = st.record.clone();
    match &result {
        // The name was taken meanwhile: that volume is not this run's.
        Err(Error::Exists(_)) => rec.snapshot = None,
        // Nothing ran in a snapshot whose container never started: do not keep it.
        Err(_) => rec.rm = true,
        Ok(_) => {}
    }
    let kept = match (&snapshot, rec.rm) {
        (Some(n), false) => pool.resolve(&VolRef::Name(n.clone())).ok().map(|r| (r.id, n.clone())),
        _ => None,
    };
    let cleanup_error = match state::cleanup(pool, &rec, &st.dir) {
        Ok(()) => st.finish().err(),
        Err(e) => Some(e),
    };
    timings.push(("teardown", t_teardown.elapsed()));
    timings.push(("total", t0.elapsed()));
    match result {
        Ok(mut out) => {
            out.timings = timings;
            out.kept = kept;
            out.cleanup_error = cleanup_error;
            Ok(out)
        }
        Err(e) => {
            if let Some(ce) = cleanup_error {
                tracing::warn!("cleaning up after the failed run failed too: {ce}; the next rcx-dm command retries");
            }
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_recorded(
    pool: &Pool,
    spec: &RunSpec,
    st: &RunState,
    mode: Mode,
    label: &str,
    base: u32,
    cg_mnt: Option<&Path>,
    timings: &mut Vec<(&'static str, Duration)>,
) -> Result<RunOutcome> {
    let t = Instant::now();
    let device = match (&st.record.snapshot, mode) {
        (Some(name), Mode::Snapshot) => {
            // The name was checked against the reserved prefixes in `run` (or is `run-N`).
            let v = pool.snapshot_internal(None, &VolRef::Id(base), None, Some(name))?;
            timings.push(("snapshot", t.elapsed()));
            let t = Instant::now();
            let dev = match v.device {
                Some(d) => d,
                None => pool.activate_volume(&VolRef::Id(v.id))?,
            };
            let fs = rootfs::probe(name, &dev, true)?;
            timings.push(("activate", t.elapsed()));
            (dev, fs)
        }
        _ => {
            let dev = pool.activate_volume(&VolRef::Id(base))?;
            let fs = rootfs::probe(label, &dev, mode == Mode::InPlace)?;
            timings.push(("activate", t.elapsed()));
            (dev, fs)
        }
    };
    let (device, fs) = device;
    // Volume names may hold '_', hostnames may not.
    let hostname =
        spec.hostname.clone().or_else(|| spec.name.as_ref().map(|n| n.replace('_', "-"))).unwrap_or_else(|| st.record.id.clone());
    let target = Target {
        device: &device,
        fs,
        mount_dir: &st.rootfs(),
        cgroup: cg_mnt.zip(st.record.cgroup.as_deref()),
        read_only_base: mode == Mode::SharedReadOnly,
        bridge: st.record.ip.as_ref().and_then(|ip| ip.parse().ok()).map(|ip| (ip, network::host_if(&st.record.id))),
    };
    run_container(&target, spec, &hostname, timings)
}

/// Where a container runs: an active block device and the host directory its mount namespace
/// mounts it on, plus the cgroup to create (cgroup2 mount, group path).
pub struct Target<'a> {
    pub device: &'a Path,
    pub fs: Fs,
    pub mount_dir: &'a Path,
    pub cgroup: Option<(&'a Path, &'a Path)>,
    /// The device is a read-only base mounted as it is: no journal replay.
    pub read_only_base: bool,
    /// `--net bridge`: the container's address and the host end's interface name.
    pub bridge: Option<(std::net::Ipv4Addr, String)>,
}

/// The runner's core on any block device, no pool involved (`run` wraps it with snapshots,
/// activation, records and teardown; tests use it on loop devices). Creates the cgroup if one
/// is given and leaves removing it to the caller (`remove_cgroup`).
pub fn run_container(
    t: &Target<'_>,
    spec: &RunSpec,
    hostname: &str,
    timings: &mut Vec<(&'static str, Duration)>,
) -> Result<RunOutcome> {
    spec.validate()?;
    validate_hostname(hostname)?;
    let _signals = init::Signals::block()?;
    if let Some(sig) = init::terminating_signal_pending() {
        return Err(Error::ContainerSetup {
            stage: "starting the container".into(),
            msg: format!("interrupted by signal {sig} before it started"),
        });
    }
    let t_cg = Instant::now();
    let cg = match t.cgroup {
        Some((mnt, path)) => Some(cgroup::Cgroup::create(mnt, path, &spec.limits)?),
        None if spec.limits != Limits::default() => {
            return Err(Error::Cgroup("limits need a cgroup, and none was given".into()));
        }
        None => None,
    };
    let cg_fd = cg.as_ref().map(|c| c.dir_fd()).transpose()?;
    timings.push(("cgroup", t_cg.elapsed()));
    let env = spec.environment(hostname);
    let root = RootPlan::new(t.device, t.mount_dir, t.fs, spec.read_only, t.read_only_base)?;
    let workdir = spec.workdir.as_deref().unwrap_or("/");
    let (net, bridge) = match (spec.net, &t.bridge) {
        (Net::None, _) => (ChildNet::None, None),
        (Net::Host, _) => (ChildNet::Host, None),
        (Net::Bridge, Some((ip, host_if))) => (ChildNet::Bridge(*ip), Some((network::ensure_bridge()?, host_if))),
        (Net::Bridge, None) => return Err(Error::invalid("network", "--net bridge needs an address (use runner::run)")),
    };
    let plan = ChildPlan::new(root, net, hostname, workdir, spec.init, &spec.argv, &env)?;
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    if spec.net != Net::Host {
        flags |= CloneFlags::CLONE_NEWNET;
    }

    let t_clone = namespaces::monotonic_ns();
    let mut started = namespaces::spawn(&plan, flags.bits() as u64, cg_fd.as_ref().map(|f| f.as_fd()))?;
    if let Some((index, host_if)) = bridge {
        // The child is mounting and pivoting meanwhile; it waits for `go` before using eth0.
        if let Err(e) = network::add_veth(index, host_if, started.pid.as_raw()).and_then(|_| started.go()) {
            // A child that failed first (and so is gone) explains it better than the veth error.
            let _ = nix::sys::signal::kill(started.pid, nix::sys::signal::Signal::SIGKILL);
            let report = namespaces::collect(&started);
            let _ = nix::sys::wait::waitpid(started.pid, None);
            return Err(match report {
                Report::Failed { kind, errno, what } if errno != 0 => start_error(&plan, &env, &kind, errno, &what),
                _ => e,
            });
        }
    }
    let (times, status) = match namespaces::collect(&started) {
        Report::Running(t) => (t, init::supervise(started.pid)?),
        Report::Failed { kind, errno, what } => match (errno, nix::sys::wait::waitpid(started.pid, None)) {
            // Killed before it could say anything (a SIGKILL from outside, the OOM killer): the
            // container was killed, and says so with 128+signal like any killed container
            // rather than as a setup failure.
            (0, Ok(s @ nix::sys::wait::WaitStatus::Signaled(..))) => {
                tracing::warn!(status = ?s, "the container process was killed before its command started");
                (namespaces::ChildTimes::default(), s)
            }
            _ => return Err(start_error(&plan, &env, &kind, errno, &what)),
        },
    };
    let t_end = namespaces::monotonic_ns();
    let ms = |a: u64, b: u64| Duration::from_nanos(b.saturating_sub(a));
    timings.push(("mount", ms(times.start, times.mounted)));
    timings.push(("namespaces+pivot_root", ms(t_clone, times.start) + ms(times.mounted, times.ready)));
    timings.push(("exec", ms(times.ready, t_end)));
    let signal = match status {
        nix::sys::wait::WaitStatus::Signaled(_, s, _) => Some(s as i32),
        _ => None,
    };
    Ok(RunOutcome {
        code: init::exit_code(&status),
        signal,
        limits: spec.limits.clone(),
        events: cg.as_ref().map(|c| c.events()).unwrap_or_default(),
        kept: None,
        timings: Vec::new(),
        cleanup_error: None,
    })
}

/// Kill what is left in a run's cgroup and remove it (idempotent).
pub fn remove_cgroup(path: &Path) -> Result<()> {
    cgroup::remove(path)
}

/// Where cgroup v2 is mounted, if it is.
pub fn cgroup_mount() -> Option<std::path::PathBuf> {
    cgroup::mount_point()
}

/// What filesystem a device holds (`exclusive`: refuse one mounted anywhere).
pub fn probe_filesystem(label: &str, dev: &Path, exclusive: bool) -> Result<Fs> {
    rootfs::probe(label, dev, exclusive)
}

fn start_error(plan: &ChildPlan, env: &[(String, String)], kind: &str, errno: i32, what: &str) -> Error {
    let e = nix::errno::Errno::from_raw(errno);
    let cmd = plan.program();
    match kind {
        "notfound" => Error::CommandNotFound {
            searched: if cmd.contains('/') {
                cmd.clone()
            } else {
                let path = env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or(DEFAULT_PATH);
                format!("PATH={path}")
            },
            cmd,
        },
        "noexec" => Error::CommandNotExecutable { cmd, why: format!("{what}: {}", e.desc()) },
        _ if errno == 0 => Error::ContainerSetup { stage: what.to_string(), msg: "no error reported".into() },
        _ => Error::ContainerSetup { stage: what.to_string(), msg: format!("{} ({e})", e.desc()) },
    }
}

/// 8 hex digits from the kernel's random pool.
fn new_run_id() -> String {
    let mut b = [0u8; 4];
    // SAFETY: fills a local buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 4 {
        let t = namespaces::monotonic_ns() ^ (std::process::id() as u64) << 32;
        b = (t as u32).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values() {
        assert_eq!(parse_env("A=1").unwrap(), Some(("A".into(), "1".into())));
        assert_eq!(parse_env("A=").unwrap(), Some(("A".into(), "".into())));
        assert_eq!(parse_env("A=b=c").unwrap(), Some(("A".into(), "b=c".into())));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("").is_err());
        assert_eq!(parse_env("RCX_DM_SURELY_UNSET_VARIABLE").unwrap(), None);
        std::env::set_var("RCX_DM_TEST_ENV_PASS", "v");
        assert_eq!(parse_env("RCX_DM_TEST_ENV_PASS").unwrap(), Some(("RCX_DM_TEST_ENV_PASS".into(), "v".into())));
    }

    #[test]
    fn environment_defaults_and_overrides() {
        let spec = RunSpec {
            env: vec![("PATH".into(), "/bin".into()), ("X".into(), "1".into()), ("X".into(), "2".into())],
            ..Default::default()
        };
        let env = spec.environment("box");
        let get = |k: &str| env.iter().filter(|(ek, _)| ek == k).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
        assert_eq!(get("PATH"), vec!["/bin"]);
        assert_eq!(get("X"), vec!["2"]);
        assert_eq!(get("HOSTNAME"), vec!["box"]);
        assert_eq!(get("HOME"), vec!["/root"]);
    }

    #[test]
    fn hostnames() {
        validate_hostname("box1").unwrap();
        validate_hostname("a.b-c").unwrap();
        for bad in ["", "-x", ".x", "a b", "a_b", &"x".repeat(65)] {
            assert!(validate_hostname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn specs_are_checked_before_anything_happens() {
        let ok = RunSpec { volume: Some(VolRef::Id(1)), argv: vec!["true".into()], ..Default::default() };
        ok.validate().unwrap();
        assert!(RunSpec { argv: vec![], ..ok.clone() }.validate().is_err());
        assert!(RunSpec { workdir: Some("rel".into()), ..ok.clone() }.validate().is_err());
        assert!(RunSpec { hostname: Some("a b".into()), ..ok.clone() }.validate().is_err());
        assert!(RunSpec { name: Some("123".into()), ..ok.clone() }.validate().is_err());
    }

    #[test]
    fn run_ids_are_8_hex_digits() {
        let a = new_run_id();
        assert_eq!(a.len(), 8);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_run_id());
    }
}
