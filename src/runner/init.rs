//! Signals and process lifetimes.
//!
//! rcx-dm side: while a run is set up and while the container runs, the signals a user or a
//! supervisor sends (INT, TERM, HUP, QUIT, USR1, USR2, WINCH) are blocked and taken with
//! sigtimedwait, so setup and teardown are never torn in half. Once the container runs they
//! are forwarded to it; after a terminating one, the container gets 10 s before SIGKILL (a
//! command running as PID 1 ignores signals it has no handler for).
//!
//! Container side (`--init` only): a tiny init as PID 1 that forwards every signal to the
//! command (PID 2), reaps every zombie reparented to it, and exits with the command's status.
//! Without `--init` the command itself is PID 1 and reaps its own children.

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::report::{self, FailureKind};
use crate::error::{IoContext, Result};

/// The signals rcx-dm passes on to the container.
const FORWARDED: [libc::c_int; 7] =
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2, libc::SIGWINCH];
const TERMINATING: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];
/// How long a container may take to stop after a forwarded terminating signal.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

fn set_of(sigs: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: initialising a local sigset_t.
    unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        for sig in sigs {
            libc::sigaddset(&mut s, *sig);
        }
        s
    }
}

fn watched() -> libc::sigset_t {
    let mut v = FORWARDED.to_vec();
    v.push(libc::SIGCHLD);
    set_of(&v)
}

/// Blocks the watched signals for the life of a run; on drop, discards those still pending
/// (they were meant for the container) and restores the previous mask.
pub(super) struct Signals {
    old: libc::sigset_t,
}

impl Signals {
    /// Block the watched signals (and take SIGCHLD back from an inherited SIG_IGN).
    pub(super) fn block() -> Result<Signals> {
        let set = watched();
        // SAFETY: plain signal-mask and disposition calls on local data.
        unsafe {
            // An inherited SIG_IGN for SIGCHLD would make the kernel reap the container for us.
            libc::signal(libc::SIGCHLD, libc::SIG_DFL);
            let mut old: libc::sigset_t = std::mem::zeroed();
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) != 0 {
                return Err(std::io::Error::last_os_error()).ctx(|| "blocking signals".into());
            }
            Ok(Signals { old })
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        let set = watched();
        let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: draining pending signals without waiting, then restoring the saved mask.
        unsafe {
            while libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) > 0 {}
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut());
        }
    }
}

/// Is a terminating signal waiting for rcx-dm (blocked, so not yet acted on)?
pub(super) fn terminating_signal_pending() -> Option<i32> {
    // SAFETY: reading the pending set into a local.
    unsafe {
        let mut p: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut p);
        TERMINATING.into_iter().find(|s| libc::sigismember(&p, *s) == 1)
    }
}

/// Wait for the container's PID 1, forwarding signals to it meanwhile. `on_winch`: with `-t`,
/// SIGWINCH resizes the container's terminal (whose kernel side signals its foreground process
/// group) instead of being forwarded to PID 1.
pub(super) fn supervise(pid: Pid, on_winch: Option<&dyn Fn()>) -> Result<WaitStatus> {
    let set = watched();
    let mut deadline: Option<Instant> = None;
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(s @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => return Ok(s),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(std::io::Error::from(e)).ctx(|| format!("waiting for the container (pid {pid})")),
        }
        let sig = match deadline {
            None => {
                // SAFETY: waits for one of the blocked signals.
                unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) }
            }
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                let ts = libc::timespec { tv_sec: left.as_secs() as _, tv_nsec: left.subsec_nanos() as _ };
                // SAFETY: as above, with a timeout.
                unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) }
            }
        };
        if sig < 0 {
            if Errno::last() == Errno::EAGAIN && deadline.is_some_and(|d| Instant::now() >= d) {
                tracing::warn!(%pid, "the container did not stop within {}s of the signal; killing it", STOP_GRACE.as_secs());
                // SIGKILL of a pid namespace's init kills every process in it.
                let _ = kill(pid, Signal::SIGKILL);
                deadline = None;
            }
            continue;
        }
        if sig == libc::SIGCHLD {
            continue;
        }
        if let (libc::SIGWINCH, Some(f)) = (sig, on_winch) {
            f();
            continue;
        }
        if let Ok(s) = Signal::try_from(sig) {
            let _ = kill(pid, s);
        }
        if TERMINATING.contains(&sig) && deadline.is_none() {
            deadline = Some(Instant::now() + STOP_GRACE);
        }
    }
}

/// The shell's convention: a status, or 128 + the signal that killed it.
pub(super) fn exit_code(s: &WaitStatus) -> i32 {
    match s {
        WaitStatus::Exited(_, c) => *c,
        WaitStatus::Signaled(_, sig, _) => 128 + *sig as i32,
        _ => 128,
    }
}

/// The signal that killed it, if one did.
pub(super) fn killed_by(s: &WaitStatus) -> Option<i32> {
    match s {
        WaitStatus::Signaled(_, sig, _) => Some(*sig as i32),
        _ => None,
    }
}

/// In the container, after setup (`--init`): fork; the child returns (and execs the command,
/// as PID 2); this process stays PID 1, forwarding signals and reaping, and never returns.
pub(super) fn become_init(rep: std::os::fd::RawFd) {
    // SAFETY: signal mask, fork, waits and _exit in the container's single-threaded process.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        let child = libc::fork();
        if child < 0 {
            let e = Errno::last();
            report::failure(rep, FailureKind::Setup, e as i32, "forking the command under --init");
            libc::_exit(FailureKind::Setup.exit_code());
        }
        if child == 0 {
            return; // the command's process: exec() resets the mask
        }
        // Only the command reports to rcx-dm from now on: its exec closes the pipe.
        libc::close(rep);
        let _ = nix::sys::prctl::set_name(c"rcx-init");
        loop {
            let sig = libc::sigwaitinfo(&all, std::ptr::null_mut());
            if sig < 0 {
                continue;
            }
            if sig != libc::SIGCHLD {
                libc::kill(child, sig);
                continue;
            }
            loop {
                let mut status = 0;
                let p = libc::waitpid(-1, &mut status, libc::WNOHANG);
                if p <= 0 {
                    break;
                }
                if p == child {
                    if libc::WIFEXITED(status) {
                        libc::_exit(libc::WEXITSTATUS(status));
                    }
                    if libc::WIFSIGNALED(status) {
                        libc::_exit(128 + libc::WTERMSIG(status));
                    }
                }
            }
        }
    }
}
