//! `rcx-dm exec NAME -- CMD`: a command in a running detached container, as isolated as the
//! container's own processes.
//!
//! rcx-dm takes a pidfd of the container's PID 1 (checked to be the container's: `detach`),
//! opens the run's cgroup, and joins all of PID 1's namespaces in one setns(2) on the pidfd
//! (mount, uts, ipc, net, pid for its children, cgroup, and the user namespace under
//! `--userns`). The command is then cloned straight into the container's cgroup
//! (CLONE_INTO_CGROUP: counted by its limits from its first instruction) and, being born after
//! the setns, in its pid namespace. It takes the container's environment (then `-e`), its
//! working directory unless `-w`, and locks itself down as the container did: the same
//! capability sets and bounding set, no_new_privs if the container had it, the same seccomp
//! filter (`security::lock_down` with the container's recorded settings). No descriptor of
//! rcx-dm's survives the execve. rcx-dm forwards signals to it and exits with its status;
//! the command dies with rcx-dm (PR_SET_PDEATHSIG), and with the container.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;

use nix::errno::Errno;

use super::child::{self, search_list};
use super::detach;
use super::report::{self, parse_report, FailureKind, Report};
use super::security::{lock_down, SecurityPlan};
use super::spec::DEFAULT_PATH;
use super::{fork, init};
use crate::error::{Error, IoContext, Result};
use crate::pool::Pool;


/// What to run in the container.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    /// The command and its arguments (`argv[0]` searched in the container's PATH).
    pub argv: Vec<String>,
    /// Set over the container's environment, in order.
    pub env: Vec<(String, String)>,
    /// The working directory (default: the container's).
    pub workdir: Option<String>,
    /// Keep rcx-dm's stdin (otherwise /dev/null, as Docker's exec without -i).
    pub interactive: bool,
}

/// Everything the command's process needs, prepared before the clone.
struct Plan {
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    workdir: CString,
    userns: bool,
    interactive: bool,
    security: SecurityPlan,
}

/// Run `spec` in the running container `name`; returns the command's exit status (128+n if
/// signal n killed it). Call from a single-threaded process (it joins namespaces and clones).
pub fn exec(pool: &Pool, name: &str, spec: &ExecSpec) -> Result<i32> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot("rcx-dm exec"));
    }
    if spec.argv.first().is_none_or(|a| a.is_empty()) {
        return Err(Error::invalid("command", "none given; put it after --, e.g. `rcx-dm exec web -- /bin/sh`"));
    }
    let (st, started, pidfd) =
        detach::running(pool, name, "exec needs a running container (`rcx-dm ps` shows them; `rcx-dm run -d` starts one)")?;
    let rec = st.record;
    let mut env = rec.env.clone();
    for (k, v) in &spec.env {
        match env.iter_mut().find(|(ek, _)| ek == k) {
            Some(e) => e.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    let workdir = spec.workdir.clone().or(rec.workdir.clone()).unwrap_or_else(|| "/".into());
    let cstr = |s: &str, what: &'static str| {
        CString::new(s).map_err(|_| Error::invalid(what, format!("'{}' contains a NUL byte", s.escape_debug())))
    };
    let argv: Vec<CString> = spec.argv.iter().map(|a| cstr(a, "command argument")).collect::<Result<_>>()?;
    let envp: Vec<CString> = env.iter().map(|(k, v)| cstr(&format!("{k}={v}"), "environment variable")).collect::<Result<_>>()?;
    let path = env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or(DEFAULT_PATH);
    let ns = |p: &str| std::fs::metadata(p).map(|m| m.ino()).ctx(|| format!("reading {p}"));
    let plan = Plan {
        candidates: search_list(argv[0].to_bytes(), path),
        argv,
        envp,
        workdir: cstr(&workdir, "working directory")?,
        // Joining one's own user namespace is an error (EINVAL): only a --userns container's.
        userns: ns(&format!("/proc/{}/ns/user", started.pid))? != ns("/proc/self/ns/user")?,
        interactive: spec.interactive,
        security: rec.security.plan()?,
    };
    // Opened on the host's cgroup mount, before the setns hides it.
    let cg_fd = started
        .cgroup
        .as_ref()
        .map(|p| {
            nix::fcntl::open(p, nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
                .map_err(std::io::Error::from)
                .ctx(|| format!("opening cgroup {}", p.display()))
        })
        .transpose()?;
    let _signals = init::Signals::block()?;
    let mut flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWCGROUP;
    if plan.userns {
        flags |= libc::CLONE_NEWUSER;
    }
    // SAFETY: setns on our pidfd with namespace flags.
    if unsafe { libc::setns(pidfd.as_raw_fd(), flags) } != 0 {
        let e = Errno::last();
        return Err(Error::ContainerSetup {
            stage: "entering the container's namespaces (setns on its PID 1, Linux 5.8+)".into(),
            msg: format!("{} ({e})", e.desc()),
        });
    }
    let (rep_r, rep_w) = fork::pipe()?;
    let pid = clone_into(cg_fd.as_ref().map(|f| f.as_raw_fd()))?;
    if pid == 0 {
        drop(rep_r);
        command(&plan, rep_w.as_raw_fd());
    }
    drop(rep_w);
    let pid = nix::unistd::Pid::from_raw(pid);
    let mut text = String::new();
    let _ = std::fs::File::from(rep_r).read_to_string(&mut text);
    match parse_report(&text) {
        Report::Running(_) => Ok(init::exit_code(&init::supervise(pid, None)?)),
        Report::Failed { kind, errno, what } => {
            let _ = nix::sys::wait::waitpid(pid, None);
            let e = Errno::from_raw(errno);
            let cmd = spec.argv[0].clone();
            Err(match kind {
                FailureKind::NotFound => Error::CommandNotFound {
                    searched: if cmd.contains('/') { cmd.clone() } else { format!("PATH={path}") },
                    cmd,
                },
                FailureKind::NoExec => Error::CommandNotExecutable { cmd, why: format!("{what}: {}", e.desc()) },
                FailureKind::Setup => Error::ContainerSetup { stage: what, msg: format!("{} ({e})", e.desc()) },
            })
        }
    }
}

/// clone3 like fork, into the cgroup `cg` if given: 0 in the child, its pid in the parent.
fn clone_into(cg: Option<RawFd>) -> Result<i32> {
    // SAFETY: this process (the exec'ing rcx-dm) is single-threaded here.
    let r = unsafe { fork::clone3_fork(0, cg) };
    if r < 0 {
        let e = Errno::last();
        return Err(Error::ContainerSetup {
            stage: "creating the command's process in the container's cgroup (clone3)".into(),
            msg: format!("{} ({e})", e.desc()),
        });
    }
    Ok(r as i32)
}

/// The command's process, inside the namespaces: ids, stdin, working directory, lock-down, then
/// execve. Failures go on the report pipe. Never returns.
fn command(plan: &Plan, rep: RawFd) -> ! {
    let fail = |what: &str, e: Errno| -> ! {
        report::failure(rep, FailureKind::Setup, e as i32, what);
        // SAFETY: leave without running the parent's destructors.
        unsafe { libc::_exit(FailureKind::Setup.exit_code()) }
    };
    report::stamp(rep, report::Stage::Start);
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if plan.userns {
        let (u, g) = (nix::unistd::Uid::from_raw(0), nix::unistd::Gid::from_raw(0));
        if let Err(e) = nix::unistd::setresgid(g, g, g).and_then(|_| nix::unistd::setgroups(&[])).and_then(|_| nix::unistd::setresuid(u, u, u)) {
            fail("becoming root of the container's user namespace", e);
        }
    }
    if !plan.interactive {
        match nix::fcntl::open("/dev/null", nix::fcntl::OFlag::O_RDONLY, nix::sys::stat::Mode::empty()) {
            // SAFETY: dup2 onto this process's stdin.
            Ok(fd) => unsafe {
                libc::dup2(fd.as_raw_fd(), 0);
            },
            Err(e) => fail("opening the container's /dev/null for stdin", e),
        }
    }
    if let Err(e) = nix::unistd::chdir(plan.workdir.as_c_str()) {
        fail(&format!("entering the working directory {}", plan.workdir.to_string_lossy()), e);
    }
    if let Err(f) = lock_down(&plan.security) {
        report::failure(rep, FailureKind::Setup, f.errno as i32, &f.what);
        // SAFETY: as above.
        unsafe { libc::_exit(FailureKind::Setup.exit_code()) }
    }
    let argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
    let envp: Vec<*const libc::c_char> = plan.envp.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
    // The report pipe is closed at execve too: its end of file says the command runs.
    child::reset_signals_and_descriptors();
    let mut failed: Option<(FailureKind, Errno, &CString)> = None;
    for c in &plan.candidates {
        // SAFETY: NUL-terminated strings and NULL-terminated pointer arrays.
        unsafe { libc::execve(c.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        match Errno::last() {
            Errno::ENOENT | Errno::ENOTDIR => {}
            Errno::EACCES => failed = Some((FailureKind::NoExec, Errno::EACCES, c)),
            e => {
                failed = Some((FailureKind::NoExec, e, c));
                break;
            }
        }
    }
    let kind = match failed {
        Some((kind, e, path)) => {
            report::failure(rep, kind, e as i32, &path.to_string_lossy());
            kind
        }
        None => {
            report::failure(rep, FailureKind::NotFound, Errno::ENOENT as i32, "-");
            FailureKind::NotFound
        }
    };
    // SAFETY: as above.
    unsafe { libc::_exit(kind.exit_code()) }
}
