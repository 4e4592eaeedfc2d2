//! The container process: clone3 into new mount, pid, uts, ipc (and net) namespaces, born
//! inside the run's cgroup; then, in the child, mount the volume privately, pivot_root into it
//! and detach the old root, fresh /proc, /sys and /dev, hostname, loopback up, working
//! directory, and exec of the command, which is PID 1 of its pid namespace (or PID 2 under
//! `--init`).
//!
//! Parent and child talk over one close-on-exec pipe: the child writes timestamps of its
//! stages and, if a step fails, one error record, then exits. End of file with no error means
//! execve succeeded. A second pipe only tells the child whether rcx-dm is still alive.
//!
//! Everything the child needs is prepared before the clone (C strings, pointer arrays); the
//! child then mostly makes system calls. The caller must be single-threaded (the CLI is).

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::mount::{umount2, MntFlags};
use nix::unistd::Pid;

use super::rootfs::{self, RootPlan};
use super::{devices, init, network};
use crate::error::{Error, IoContext, Result};

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// A failed step inside the container (before exec).
#[derive(Debug)]
pub struct Fail {
    pub what: String,
    pub errno: Errno,
}

impl Fail {
    pub fn new(what: impl Into<String>, errno: Errno) -> Fail {
        Fail { what: what.into(), errno }
    }
}

pub type Step<T> = std::result::Result<T, Fail>;

/// The container's network, as its own side sets it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildNet {
    /// A new network namespace: bring `lo` up.
    None,
    /// The host's network namespace: nothing to do.
    Host,
    /// A new network namespace with eth0 (made by rcx-dm once the child exists): `lo` up, then
    /// wait for rcx-dm's go and give eth0 this address and a default route.
    Bridge(std::net::Ipv4Addr),
}

/// Everything the container side needs, prepared before the clone.
pub struct ChildPlan {
    pub net: ChildNet,
    pub root: RootPlan,
    pub hostname: String,
    pub workdir: CString,
    pub init: bool,
    /// Program paths to try in order: argv[0] itself if it has a '/', else each PATH entry.
    pub candidates: Vec<CString>,
    argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
}

impl ChildPlan {
    pub fn new(
        root: RootPlan,
        net: ChildNet,
        hostname: &str,
        workdir: &str,
        init: bool,
        argv: &[String],
        env: &[(String, String)],
    ) -> Result<ChildPlan> {
        let cstr = |s: &str, what: &'static str| {
            CString::new(s).map_err(|_| Error::invalid(what, format!("'{}' contains a NUL byte", s.escape_debug())))
        };
        let argv: Vec<CString> = argv.iter().map(|a| cstr(a, "command argument")).collect::<Result<_>>()?;
        let envp: Vec<CString> =
            env.iter().map(|(k, v)| cstr(&format!("{k}={v}"), "environment variable")).collect::<Result<_>>()?;
        let prog = argv.first().ok_or_else(|| Error::invalid("command", "none given; put it after --"))?;
        let path = env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or(super::DEFAULT_PATH);
        let candidates = search_list(prog.to_bytes(), path);
        let mut plan = ChildPlan {
            net,
            root,
            hostname: hostname.to_string(),
            workdir: cstr(workdir, "working directory")?,
            init,
            candidates,
            argv,
            argv_ptrs: Vec::new(),
            envp,
            envp_ptrs: Vec::new(),
        };
        plan.argv_ptrs = plan.argv.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
        plan.envp_ptrs = plan.envp.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
        Ok(plan)
    }

    pub fn program(&self) -> String {
        self.argv[0].to_string_lossy().into_owned()
    }
}

/// execvp's search, with the container's PATH (glibc's execvpe would use rcx-dm's own).
pub fn search_list(prog: &[u8], path: &str) -> Vec<CString> {
    if prog.contains(&b'/') {
        return vec![CString::new(prog).expect("no NUL")];
    }
    path.split(':')
        .map(|d| if d.is_empty() { "." } else { d })
        .map(|d| {
            let mut p = d.as_bytes().to_vec();
            p.push(b'/');
            p.extend_from_slice(prog);
            CString::new(p).expect("no NUL")
        })
        .collect()
}

/// The container as seen from rcx-dm.
pub struct Started {
    pub pid: Pid,
    /// Read end of the report pipe (see `collect`).
    pub report: OwnedFd,
    /// Held open while the container lives: its end of file tells the child rcx-dm died.
    pub _alive: OwnedFd,
    /// `--net bridge`: one byte here tells the child its eth0 exists (`go`).
    go: Option<OwnedFd>,
}

impl Started {
    /// Let the child configure its network (after rcx-dm made its veth pair).
    pub fn go(&mut self) -> Result<()> {
        if let Some(fd) = self.go.take() {
            // SAFETY: writing one byte to our pipe.
            if unsafe { libc::write(fd.as_raw_fd(), b"g".as_ptr().cast(), 1) } != 1 {
                return Err(std::io::Error::last_os_error()).ctx(|| "signalling the container".into());
            }
        }
        Ok(())
    }
}

/// Clone the container process. `ns_flags` are CLONE_NEW* flags.
pub fn spawn(plan: &ChildPlan, ns_flags: u64, cgroup: Option<BorrowedFd<'_>>) -> Result<Started> {
    let (report_r, report_w) = pipe()?;
    let (alive_r, alive_w) = pipe()?;
    let go = match plan.net {
        ChildNet::Bridge(_) => Some(pipe()?),
        _ => None,
    };
    #[repr(C)]
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
    let mut args = CloneArgs {
        flags: ns_flags,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: 0,
    };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd.as_raw_fd() as u64;
    }
    // SAFETY: clone3 without CLONE_VM and without a stack behaves like fork: the child gets a
    // copy of this (single-threaded) process and returns 0 here on its own copy of the stack.
    let ret = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
    match ret {
        -1 => {
            let e = Errno::last();
            Err(Error::ContainerSetup {
                stage: "creating the container process (clone3 with new namespaces)".into(),
                msg: match e {
                    Errno::ENOSYS => "this kernel has no clone3 (Linux 5.3+, CLONE_INTO_CGROUP 5.7+)".into(),
                    Errno::EPERM => "permission denied: rcx-dm needs root (CAP_SYS_ADMIN)".into(),
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
            let go_r = go.map(|(r, w)| {
                drop(w);
                r
            });
            child_main(plan, report_w.as_raw_fd(), alive_r.as_raw_fd(), go_r.as_ref().map(|r| r.as_raw_fd()))
        }
        pid => Ok(Started {
            pid: Pid::from_raw(pid as i32),
            report: report_r,
            _alive: alive_w,
            go: go.map(|(_, w)| w),
        }),
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: plain syscall into a two-int array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "creating a pipe".into());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes into ts.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Write a whole record to the report pipe (a pipe write below PIPE_BUF is atomic).
pub(super) fn report(fd: RawFd, line: &str) {
    let b = line.as_bytes();
    // SAFETY: writing a byte slice to a descriptor we own.
    unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
}

fn stamp(fd: RawFd, stage: &str) {
    report(fd, &format!("T {stage} {}\n", monotonic_ns()));
}

pub const EXIT_SETUP: i32 = 125;
pub const EXIT_NOEXEC: i32 = 126;
pub const EXIT_NOTFOUND: i32 = 127;

fn fail(fd: RawFd, f: Fail) -> ! {
    report(fd, &format!("E setup {} {}\n", f.errno as i32, f.what.replace('\n', " ")));
    // SAFETY: leave without running the parent's atexit handlers or destructors.
    unsafe { libc::_exit(EXIT_SETUP) }
}

/// The container side, from the clone to execve. Never returns.
fn child_main(plan: &ChildPlan, rep: RawFd, alive: RawFd, go: Option<RawFd>) -> ! {
    // Die with rcx-dm. If rcx-dm died before this line, the alive pipe already reads EOF.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let mut pfd = libc::pollfd { fd: alive, events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd, zero timeout.
    if unsafe { libc::poll(&mut pfd, 1, 0) } != 0 {
        // SAFETY: as above.
        unsafe { libc::_exit(EXIT_SETUP) }
    }
    stamp(rep, "start");
    if let Err(f) = rootfs::mount_root(&plan.root) {
        fail(rep, f);
    }
    stamp(rep, "mounted");
    if let Err(f) = enter_root(plan, go) {
        fail(rep, f);
    }
    stamp(rep, "ready");
    if plan.init {
        // Returns only in the command's process (PID 2); PID 1 stays in the init loop.
        init::become_init(rep);
    }
    exec(plan, rep)
}

/// pivot_root into the mounted volume and build the rest of the container's view.
fn enter_root(plan: &ChildPlan, go: Option<RawFd>) -> Step<()> {
    let ro = plan.root.read_only;
    nix::unistd::chdir(plan.root.target.as_c_str()).map_err(|e| Fail::new("entering the mounted volume", e))?;
    // /dev first, while the host's terminal is still reachable for /dev/console.
    devices::setup(ro)?;
    // pivot_root(".", ".") stacks the old root on top of the new one; unmounting "." then
    // detaches the old root (pivot_root(2)), with no directory made in the volume for it.
    nix::unistd::pivot_root(".", ".").map_err(|e| Fail::new("pivot_root into the volume", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| Fail::new("detaching the old root", e))?;
    nix::unistd::chdir("/").map_err(|e| Fail::new("entering the new root", e))?;
    rootfs::mount_proc_sys(ro)?;
    nix::unistd::sethostname(&plan.hostname).map_err(|e| Fail::new("setting the hostname", e))?;
    match plan.net {
        ChildNet::Host => {}
        ChildNet::None => loopback_up()?,
        ChildNet::Bridge(ip) => {
            loopback_up()?;
            let mut b = [0u8; 1];
            // SAFETY: reading one byte from our pipe; EOF means rcx-dm gave up (or died).
            let n = unsafe { libc::read(go.unwrap_or(-1), b.as_mut_ptr().cast(), 1) };
            if n != 1 {
                return Err(Fail::new("waiting for rcx-dm to create eth0", Errno::EPIPE));
            }
            network::configure_container(ip)?;
        }
    }
    let wd = std::path::Path::new(std::ffi::OsStr::from_bytes(plan.workdir.as_bytes()));
    if !wd.is_dir() && !ro {
        std::fs::create_dir_all(wd).map_err(|e| {
            Fail::new(format!("creating the working directory {}", wd.display()), Errno::from_raw(e.raw_os_error().unwrap_or(0)))
        })?;
    }
    nix::unistd::chdir(plan.workdir.as_c_str())
        .map_err(|e| Fail::new(format!("entering the working directory {}", wd.display()), e))
}

/// A new network namespace has only `lo`, and it is down: bring it up, as docker's none.
fn loopback_up() -> Step<()> {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq whose name is "lo".
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err(Fail::new("opening a socket to bring up lo", Errno::last()));
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, c) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *c as libc::c_char;
        }
        let mut r = libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr);
        if r == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            r = libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr);
        }
        let e = Errno::last();
        libc::close(s);
        if r != 0 {
            return Err(Fail::new("bringing up the loopback interface", e));
        }
    }
    Ok(())
}

/// Last steps before the command: default signal handling and an empty mask (rcx-dm blocks
/// and Rust ignores some), no stray descriptors, then execve along the search list.
pub(super) fn exec(plan: &ChildPlan, rep: RawFd) -> ! {
    // SAFETY: resetting dispositions and the mask of this single-threaded process.
    unsafe {
        for sig in 1..libc::SIGRTMIN() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
    }
    stamp(rep, "exec");
    let mut denied = None;
    let mut other = None;
    for c in &plan.candidates {
        // SAFETY: NUL-terminated strings and NULL-terminated pointer arrays built in ChildPlan.
        unsafe { libc::execve(c.as_ptr(), plan.argv_ptrs.as_ptr(), plan.envp_ptrs.as_ptr()) };
        match Errno::last() {
            Errno::ENOENT | Errno::ENOTDIR => {}
            Errno::EACCES => denied = Some((c.as_c_str(), Errno::EACCES)),
            e => {
                other = Some((c.as_c_str(), e));
                break;
            }
        }
    }
    let (kind, code, found): (&str, i32, Option<(&CStr, Errno)>) = match (other, denied) {
        (Some(o), _) => ("noexec", EXIT_NOEXEC, Some(o)),
        (None, Some(d)) => ("noexec", EXIT_NOEXEC, Some(d)),
        (None, None) => ("notfound", EXIT_NOTFOUND, None),
    };
    match found {
        Some((path, e)) => report(rep, &format!("E {kind} {} {}\n", e as i32, path.to_string_lossy())),
        None => report(rep, &format!("E {kind} {} -\n", Errno::ENOENT as i32)),
    }
    // SAFETY: leave without running anything of the parent's.
    unsafe { libc::_exit(code) }
}

/// Timestamps (CLOCK_MONOTONIC ns) the child reported.
#[derive(Debug, Default, Clone, Copy)]
pub struct ChildTimes {
    pub start: u64,
    pub mounted: u64,
    pub ready: u64,
    pub exec: u64,
}

/// What the report pipe said by the time it closed.
pub enum Report {
    /// execve succeeded.
    Running(ChildTimes),
    /// A step failed; the child exits with `EXIT_*`.
    Failed { kind: String, errno: i32, what: String },
}

/// Read the report pipe to its end. While waiting, a pending SIGINT/SIGTERM/SIGHUP/SIGQUIT for
/// rcx-dm (they are blocked) kills a container that has not started yet.
pub fn collect(started: &Started) -> Report {
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

pub fn parse_report(text: &str) -> Report {
    let mut t = ChildTimes::default();
    let mut failed = None;
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("T"), Some(stage), Some(ns)) => {
                let ns = ns.parse().unwrap_or(0);
                match stage {
                    "start" => t.start = ns,
                    "mounted" => t.mounted = ns,
                    "ready" => t.ready = ns,
                    "exec" => t.exec = ns,
                    _ => {}
                }
            }
            (Some("E"), Some(kind), Some(errno)) => {
                failed = Some((kind.to_string(), errno.parse().unwrap_or(0), parts.next().unwrap_or("").to_string()));
            }
            _ => {}
        }
    }
    match failed {
        Some((kind, errno, what)) => Report::Failed { kind, errno, what },
        // No record at all: the child died before reporting (killed, or rcx-dm's parent check).
        None if t.start == 0 => Report::Failed {
            kind: "setup".into(),
            errno: 0,
            what: "starting the container process (it died before reporting)".into(),
        },
        None => Report::Running(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_search_uses_the_containers_path() {
        let l = search_list(b"sh", "/usr/bin:/bin");
        assert_eq!(l, vec![CString::new("/usr/bin/sh").unwrap(), CString::new("/bin/sh").unwrap()]);
        assert_eq!(search_list(b"/bin/true", "/x"), vec![CString::new("/bin/true").unwrap()]);
        assert_eq!(search_list(b"./run", "/x"), vec![CString::new("./run").unwrap()]);
        assert_eq!(search_list(b"a", "::/b")[0], CString::new("./a").unwrap());
    }

    #[test]
    fn reports_parse() {
        match parse_report("T start 5\nT mounted 7\nT ready 9\nT exec 11\n") {
            Report::Running(t) => assert_eq!((t.start, t.mounted, t.ready, t.exec), (5, 7, 9, 11)),
            Report::Failed { .. } => panic!("not failed"),
        }
        match parse_report("T start 5\nE notfound 2 -\n") {
            Report::Failed { kind, errno, .. } => assert_eq!((kind.as_str(), errno), ("notfound", 2)),
            Report::Running(_) => panic!("failed"),
        }
        match parse_report("T start 5\nE setup 22 mounting /dev/x (ext4) on /r\n") {
            Report::Failed { what, .. } => assert_eq!(what, "mounting /dev/x (ext4) on /r"),
            Report::Running(_) => panic!("failed"),
        }
        assert!(matches!(parse_report(""), Report::Failed { .. }));
    }
}
