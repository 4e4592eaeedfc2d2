//! The runner's core on any block device, no pool involved: cgroup, clone into the new
//! namespaces, the child's report, then supervision until the container exits (`run` wraps it
//! with snapshots, activation, records and teardown; tests use it on loop devices).

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;

use super::cgroup::{self, Events, Limits};
use super::child::{ChildNet, ChildPlan};
use super::report::{monotonic_ns, ChildTimes, FailureKind, Report};
use super::root_mount::{Fs, RootPlan};
use super::spec::{validate_hostname, Net, RunSpec, DEFAULT_PATH};
use super::userns::{self, IdRange, Userns};
use super::{fork, init, network, root_mount, tty};
use crate::error::{Error, Result};

/// How a run ended.
#[derive(Debug)]
pub struct RunOutcome {
    /// The command's exit status, or 128+n if signal n killed it.
    pub code: i32,
    /// The signal that killed the container's PID 1, if one did.
    pub signal: Option<i32>,
    /// The limits the container ran under.
    pub limits: Limits,
    /// What the cgroup counted (OOM kills, refused forks).
    pub events: Events,
    /// The container snapshot, kept (without --rm): (id, name).
    pub kept: Option<(u32, String)>,
    /// Where the time went: snapshot, activate, cgroup, mount, namespaces+pivot_root, exec,
    /// teardown, total.
    pub timings: Vec<(&'static str, Duration)>,
    /// Teardown failed (the record stays; the next rcx-dm command retries it).
    pub cleanup_error: Option<Error>,
}

/// Where a container runs: an active block device and the host directory its mount namespace
/// mounts it on, plus the cgroup to create (cgroup2 mount, group path).
pub struct ContainerRoot<'a> {
    /// The block device holding the root filesystem.
    pub device: &'a Path,
    /// The filesystem on it.
    pub fs: Fs,
    /// An existing host directory to mount it on (only inside the container's mount namespace).
    pub mount_dir: &'a Path,
    /// (cgroup2 mount, group path) to create the container's cgroup at, if any.
    pub cgroup: Option<(&'a Path, &'a Path)>,
    /// The device is a read-only base mounted as it is: no journal replay.
    pub read_only_base: bool,
    /// `--net bridge`: the container's address and the host end's interface name.
    pub bridge: Option<(std::net::Ipv4Addr, String)>,
    /// `--userns`: the host ids the container's ids map to (a range its caller holds, e.g. with
    /// a `UsernsLease`); the spec's `userns` must then be set too.
    pub userns: Option<IdRange>,
}

/// The runner's core on any block device, no pool involved (`run` wraps it with snapshots,
/// activation, records and teardown; tests use it on loop devices). Creates the cgroup if one
/// is given and leaves removing it to the caller (`remove_cgroup`).
pub fn run_container(
    t: &ContainerRoot<'_>,
    spec: &RunSpec,
    hostname: &str,
    timings: &mut Vec<(&'static str, Duration)>,
) -> Result<RunOutcome> {
    run_container_with(t, spec, hostname, timings, None)
}

/// Called once the command runs, with its PID 1 as the host sees it (`detach` records it).
pub(super) type OnRunning<'a> = Option<&'a mut dyn FnMut(nix::unistd::Pid)>;

/// `run_container`, telling `on_running` when the command has started.
pub(super) fn run_container_with(
    t: &ContainerRoot<'_>,
    spec: &RunSpec,
    hostname: &str,
    timings: &mut Vec<(&'static str, Duration)>,
    on_running: OnRunning<'_>,
) -> Result<RunOutcome> {
    spec.validate()?;
    validate_hostname(hostname)?;
    match (&spec.userns, t.userns) {
        (None, None) => {}
        (Some(Userns::Range(want)), Some(got)) if *want != got => {
            return Err(Error::Userns { value: want.to_string(), why: format!("the run was given the range {got}") });
        }
        (Some(_), Some(got)) => {
            got.validate()?;
            userns::check_combination(&Userns::Range(got), &spec.security, spec.net)?;
        }
        (Some(u), None) => {
            return Err(Error::Userns { value: u.to_string(), why: "no range was taken for it (use runner::run, or a UsernsLease)".into() });
        }
        (None, Some(got)) => {
            return Err(Error::Userns { value: got.to_string(), why: "the spec asks for no user namespace".into() });
        }
    }
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
    let root = RootPlan::new(t.device, t.mount_dir, t.fs, spec.read_only, t.read_only_base, !spec.security.privileged)?;
    let workdir = spec.workdir.as_deref().unwrap_or("/");
    let (net, bridge) = match (spec.net, &t.bridge) {
        (Net::None, _) => (ChildNet::None, None),
        (Net::Host, _) => (ChildNet::Host, None),
        (Net::Bridge, Some((ip, host_if))) => (ChildNet::Bridge(*ip), Some((network::ensure_bridge()?, host_if))),
        (Net::Bridge, None) => return Err(Error::invalid("network", "--net bridge needs an address (use runner::run)")),
    };
    let security = spec.security.plan()?;
    // Under --userns the volume is mounted here, detached (the child may not mount it), and
    // made idmapped once the child's namespace exists (root_mount::idmap says how ids travel).
    let t_mount = Instant::now();
    let detached: Option<OwnedFd> = t.userns.map(|_| root_mount::mount_detached(&root)).transpose()?;
    let parent_mount = t_mount.elapsed();
    let mut plan = ChildPlan::new(root, net, hostname, workdir, spec.init, &spec.argv, &env)?
        .with_security(security, spec.interactive)
        .with_userns(t.userns.is_some());
    // `-t`: the pair is opened before the clone, so the child inherits the slave.
    let pty = if spec.tty { Some(tty::Pty::open()?) } else { None };
    if let Some(p) = &pty {
        plan = plan.with_tty(p.slave(), p.path());
    }
    // With CLONE_NEWUSER in the same clone, the new mount, pid, uts, ipc, net and (unshared
    // by the child) cgroup namespaces are owned by the new user namespace, so the container's
    // root may mount, set the hostname and configure its network in them.
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    if spec.net != Net::Host {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if t.userns.is_some() {
        flags |= CloneFlags::CLONE_NEWUSER;
    }

    let t_clone = monotonic_ns();
    let mut started =
        fork::spawn(&plan, flags.bits() as u64, cg_fd.as_ref().map(|f| f.as_fd()), detached.as_ref().map(|f| f.as_fd()))?;
    // Copying starts at once (a child failing early may still write); dropped on every way
    // out of here, which drains the output and restores the caller's terminal.
    let relay = match pty {
        Some(p) => match tty::Relay::start(p, spec.interactive) {
            Ok(r) => Some(r),
            Err(e) => {
                let _ = nix::sys::signal::kill(started.pid, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(started.pid, None);
                return Err(e);
            }
        },
        None => None,
    };
    if let Some(range) = t.userns {
        // The child waits for this before anything else.
        let ready = userns::write_maps(started.pid, range)
            .and_then(|_| match &detached {
                Some(m) => root_mount::idmap(m.as_fd(), userns::open_userns(started.pid)?.as_fd()),
                None => Ok(()),
            })
            .and_then(|_| started.ids_ready());
        if let Err(e) = ready {
            return Err(abandon(&started, &plan, &env, e));
        }
    }
    // The child holds its own copy until it has moved the mount into place.
    drop(detached);
    if let Some((index, host_if)) = bridge {
        // The child is mounting and pivoting meanwhile; it waits for `go` before using eth0.
        if let Err(e) = network::add_veth(index, host_if, started.pid.as_raw()).and_then(|_| started.go()) {
            return Err(abandon(&started, &plan, &env, e));
        }
    }
    let (times, status) = match fork::collect(&started) {
        Report::Running(t) => {
            if let Some(f) = on_running {
                f(started.pid);
            }
            let winch = relay.as_ref().map(|r| move || r.resize());
            (t, init::supervise(started.pid, winch.as_ref().map(|f| f as &dyn Fn()))?)
        }
        Report::Failed { kind, errno, what } => match (errno, nix::sys::wait::waitpid(started.pid, None)) {
            // Killed before it could say anything (a SIGKILL from outside, the OOM killer): the
            // container was killed, and says so with 128+signal like any killed container
            // rather than as a setup failure.
            (0, Ok(s @ nix::sys::wait::WaitStatus::Signaled(..))) => {
                tracing::warn!(status = ?s, "the container process was killed before its command started");
                (ChildTimes::default(), s)
            }
            _ => return Err(start_error(&plan, &env, kind, errno, &what)),
        },
    };
    // The container has exited: the rest of its output, then the caller's terminal back.
    drop(relay);
    let t_end = monotonic_ns();
    let ms = |a: u64, b: u64| Duration::from_nanos(b.saturating_sub(a));
    timings.push(("mount", parent_mount + ms(times.start, times.mounted)));
    timings.push(("namespaces+pivot_root", ms(t_clone, times.start) + ms(times.mounted, times.ready)));
    timings.push(("exec", ms(times.ready, t_end)));
    let signal = init::killed_by(&status);
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

/// rcx-dm's own step for a started child failed (`e`): kill the child, reap it, and return the
/// error. A child that failed first (and so is gone) explains it better than `e`.
fn abandon(started: &fork::Started, plan: &ChildPlan, env: &[(String, String)], e: Error) -> Error {
    let _ = nix::sys::signal::kill(started.pid, nix::sys::signal::Signal::SIGKILL);
    let report = fork::collect(started);
    let _ = nix::sys::wait::waitpid(started.pid, None);
    match report {
        Report::Failed { kind, errno, what } if errno != 0 => start_error(plan, env, kind, errno, &what),
        _ => e,
    }
}

/// The error for a container that never ran its command, from the child's report.
pub(super) fn start_error(plan: &ChildPlan, env: &[(String, String)], kind: FailureKind, errno: i32, what: &str) -> Error {
    let e = nix::errno::Errno::from_raw(errno);
    let cmd = plan.program();
    match kind {
        FailureKind::NotFound => Error::CommandNotFound {
            searched: if cmd.contains('/') {
                cmd.clone()
            } else {
                let path = env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or(DEFAULT_PATH);
                format!("PATH={path}")
            },
            cmd,
        },
        FailureKind::NoExec => Error::CommandNotExecutable { cmd, why: format!("{what}: {}", e.desc()) },
        FailureKind::Setup if errno == 0 => Error::ContainerSetup { stage: what.to_string(), msg: "no error reported".into() },
        FailureKind::Setup => Error::ContainerSetup { stage: what.to_string(), msg: format!("{} ({e})", e.desc()) },
    }
}
