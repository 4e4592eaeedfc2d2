//! Creating the container process: clone3 into new mount, pid, uts, ipc (and net) namespaces,
//! born inside the run's cgroup, and rcx-dm's ends of the pipes it shares with the child.
//!
//! Close-on-exec pipes: the report pipe (the child's stamps and failure, `report`), the alive
//! pipe (held by rcx-dm only so that the child sees end of file if rcx-dm died before the child
//! asked to die with it), for `--net bridge` the go pipe (one byte: eth0 exists), and for
//! `--userns` the ids pipe (one byte: the id maps are written and the volume's detached mount,
//! which the child inherits, is idmapped; the child waits for it before anything else).
//!
//! The caller must be single-threaded (the CLI is): the clone copies the calling process.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::unistd::Pid;

use super::child::{self, ChildFds, ChildNet, ChildPlan};
use super::init;
use super::report::{parse_report, Report};
use crate::error::{Error, IoContext, Result};

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The container as seen from rcx-dm.
pub(super) struct Started {
    /// The container's PID 1, as seen from the host.
    pub(super) pid: Pid,
    /// Read end of the report pipe (see `collect`).
    report: OwnedFd,
    /// Held open while the container lives: its end of file tells the child rcx-dm died.
    _alive: OwnedFd,
    /// `--net bridge`: one byte here tells the child its eth0 exists (`go`).
    go: Option<OwnedFd>,
    /// `--userns`: one byte here tells the child its id maps are written (`ids_ready`).
    ids: Option<OwnedFd>,
}

impl Started {
    /// Let the child configure its network (after rcx-dm made its veth pair).
    pub(super) fn go(&mut self) -> Result<()> {
        signal(self.go.take())
    }

    /// Let the child go on as root of its user namespace (after rcx-dm wrote its id maps).
    pub(super) fn ids_ready(&mut self) -> Result<()> {
        signal(self.ids.take())
    }
}

/// One byte on a pipe to the child, then close it.
fn signal(fd: Option<OwnedFd>) -> Result<()> {
    if let Some(fd) = fd {
        // SAFETY: writing one byte to our pipe.
        if unsafe { libc::write(fd.as_raw_fd(), b"g".as_ptr().cast(), 1) } != 1 {
            return Err(std::io::Error::last_os_error()).ctx(|| "signalling the container".into());
        }
    }
    Ok(())
}

/// Clone the container process. `ns_flags` are CLONE_NEW* flags; with CLONE_NEWUSER the child
/// waits on the ids pipe (`Started::ids_ready`). `mount`: the volume's detached mount
/// (`--userns`), which the child keeps to move into place.
pub(super) fn spawn(
    plan: &ChildPlan,
    ns_flags: u64,
    cgroup: Option<BorrowedFd<'_>>,
    mount: Option<BorrowedFd<'_>>,
) -> Result<Started> {
    let (report_r, report_w) = pipe()?;
    let (alive_r, alive_w) = pipe()?;
    let go = match plan.net {
        ChildNet::Bridge(_) => Some(pipe()?),
        _ => None,
    };
    let ids = if ns_flags & libc::CLONE_NEWUSER as u64 != 0 { Some(pipe()?) } else { None };
    // SAFETY: the runner's process is single-threaded (run's precondition), as clone3_fork needs.
    let ret = unsafe { clone3_fork(ns_flags, cgroup.map(|fd| fd.as_raw_fd())) };
    match ret {
        -1 => {
            let e = Errno::last();
            Err(Error::ContainerSetup {
                stage: "creating the container process (clone3 with new namespaces)".into(),
                msg: match e {
                    Errno::ENOSYS => "this kernel has no clone3 (Linux 5.3+, CLONE_INTO_CGROUP 5.7+)".into(),
                    Errno::EPERM => "permission denied: rcx-dm needs root (CAP_SYS_ADMIN)".into(),
                    Errno::ENOSPC | Errno::EUSERS => {
                        format!("{} ({e}): a namespace limit is reached (/proc/sys/user/max_*_namespaces)", e.desc())
                    }
                    Errno::EBUSY | Errno::EOPNOTSUPP => {
                        format!("{} ({e}): the cgroup cannot take processes", e.desc())
                    }
                    _ => format!("{} ({e})", e.desc()),
                },
            })
        }
        0 => {
            drop(report_r);
            drop(alive_w);
            let read_end = |p: Option<(OwnedFd, OwnedFd)>| {
                p.map(|(r, w)| {
                    drop(w);
                    r
                })
            };
            let (go_r, ids_r) = (read_end(go), read_end(ids));
            child::main(
                plan,
                ChildFds {
                    rep: report_w.as_raw_fd(),
                    alive: alive_r.as_raw_fd(),
                    go: go_r.as_ref().map(|r| r.as_raw_fd()),
                    ids: ids_r.as_ref().map(|r| r.as_raw_fd()),
                    mount: mount.map(|m| m.as_raw_fd()),
                },
            )
        }
        pid => Ok(Started {
            pid: Pid::from_raw(pid as i32),
            report: report_r,
            _alive: alive_w,
            go: go.map(|(_, w)| w),
            ids: ids.map(|(_, w)| w),
        }),
    }
}

/// clone3 as fork (no CLONE_VM, no stack): the child gets a copy of this process and returns 0
/// on its own copy of the stack; the parent gets the child's pid, or -1 with errno set. `flags`
/// adds namespaces; `cgroup` (a descriptor of a cgroup v2 directory) makes the child born in it
/// (CLONE_INTO_CGROUP).
///
/// # Safety
/// The calling process must be single-threaded: the child has only the calling thread.
pub(super) unsafe fn clone3_fork(flags: u64, cgroup: Option<std::os::fd::RawFd>) -> libc::c_long {
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let mut args = CloneArgs { flags, exit_signal: libc::SIGCHLD as u64, ..Default::default() };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd as u64;
    }
    libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>())
}

/// A close-on-exec pipe: (read end, write end).
pub(super) fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: plain syscall into a two-int array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "creating a pipe".into());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Read the report pipe to its end. While waiting, a pending SIGINT/SIGTERM/SIGHUP/SIGQUIT for
/// rcx-dm (they are blocked) kills a container that has not started yet.
pub(super) fn collect(started: &Started) -> Report {
    let fd = started.report.as_raw_fd();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, 200) };
        if r == 0 {
            if init::terminating_signal_pending().is_some() {
                let _ = nix::sys::signal::kill(started.pid, nix::sys::signal::Signal::SIGKILL);
            }
            continue;
        }
        // SAFETY: reading into a local buffer.
        let n = unsafe { libc::read(fd, chunk.as_mut_ptr().cast(), chunk.len()) };
        if n < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        if n <= 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n as usize]);
    }
    parse_report(&String::from_utf8_lossy(&buf))
}
