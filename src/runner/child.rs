//! The container side, from the clone to execve: with `-t` the pty's slave on 0, 1 and 2, drop
//! every inherited descriptor but the standard ones and its pipes, under `--userns` wait for
//! rcx-dm to write the id maps and become the namespace's root, a new session (with `-t` the
//! pty as its controlling terminal) and cgroup namespace, mount the volume privately,
//! pivot_root into it and detach the old root, fresh /proc, /sys and /dev with runc's masked and
//! read-only paths and cgroup2 read-only, hostname, loopback (and eth0) up, stdin, working
//! directory, then the lock-down (capabilities, no_new_privs, seccomp: `security`) and execve of
//! the command, which is PID 1 of its pid namespace (or PID 2 under `--init`). Each stage is stamped, and a failure reported, on the report pipe (`report`).
//!
//! Everything the child needs is prepared before the clone (`ChildPlan`: C strings, pointer
//! arrays, the command's search list), so the child mostly makes system calls.

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::mount::{umount2, MntFlags};

use super::report::{self, FailureKind, Stage};
use super::root_mount::{self, RootPlan};
use super::security::{self, SecurityPlan};
use super::step::{Fail, Step};
use super::{devices, init, network};
use crate::error::{Error, Result};

/// The container's network, as its own side sets it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChildNet {
    /// A new network namespace: bring `lo` up.
    None,
    /// The host's network namespace: nothing to do.
    Host,
    /// A new network namespace with eth0 (made by rcx-dm once the child exists): `lo` up, then
    /// wait for rcx-dm's go and give eth0 this address and a default route.
    Bridge(std::net::Ipv4Addr),
}

/// Everything the container side needs, prepared before the clone.
pub(super) struct ChildPlan {
    /// Read by `fork::spawn` too: a bridge needs the go pipe.
    pub(super) net: ChildNet,
    root: RootPlan,
    hostname: String,
    workdir: CString,
    init: bool,
    /// `-i`: keep rcx-dm's stdin; otherwise the container's /dev/null (or, with `-t`, the
    /// container's terminal with nothing written to it).
    interactive: bool,
    /// `-t`: the pseudo-terminal's slave (rcx-dm's descriptor, inherited by the clone) and its
    /// path, bound on `/dev/console`.
    tty: Option<(RawFd, CString)>,
    /// `--userns`: the child is in a new user namespace (see `main` and `enter_root`).
    userns: bool,
    /// Capabilities and the rest of the lock-down (`with_security`; none until then: a plan
    /// must get one before it is used).
    security: Option<SecurityPlan>,
    /// Program paths to try in order: `argv[0]` itself if it has a '/', else each PATH entry.
    candidates: Vec<CString>,
    argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
}

impl ChildPlan {
    /// Turn the run's strings into what execve takes; a NUL byte in any of them is refused here.
    pub(super) fn new(
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
        let path =
            env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or(super::spec::DEFAULT_PATH);
        let candidates = search_list(prog.to_bytes(), path);
        let mut plan = ChildPlan {
            net,
            root,
            hostname: hostname.to_string(),
            workdir: cstr(workdir, "working directory")?,
            init,
            interactive: false,
            tty: None,
            userns: false,
            security: None,
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

    /// Add what `security` computed, and whether stdin is kept (`-i`).
    pub(super) fn with_security(mut self, security: SecurityPlan, interactive: bool) -> ChildPlan {
        self.security = Some(security);
        self.interactive = interactive;
        self
    }

    /// `-t`: the container's terminal is this slave (descriptor, path), opened by rcx-dm.
    pub(super) fn with_tty(mut self, slave: RawFd, path: CString) -> ChildPlan {
        self.tty = Some((slave, path));
        self
    }

    /// Mark the plan for a new user namespace (`--userns`).
    pub(super) fn with_userns(mut self, userns: bool) -> ChildPlan {
        self.userns = userns;
        self
    }

    /// `argv[0]`, for error messages.
    pub(super) fn program(&self) -> String {
        self.argv[0].to_string_lossy().into_owned()
    }
}

/// execvp's search, with the container's PATH (glibc's execvpe would use rcx-dm's own).
pub(super) fn search_list(prog: &[u8], path: &str) -> Vec<CString> {
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

/// Report a failed setup step and leave.
fn fail(fd: RawFd, f: Fail) -> ! {
    report::failure(fd, FailureKind::Setup, f.errno as i32, &f.what.replace('\n', " "));
    // SAFETY: leave without running the parent's atexit handlers or destructors.
    unsafe { libc::_exit(FailureKind::Setup.exit_code()) }
}

/// The descriptors the child is given (numbers in its copy of rcx-dm's table).
#[derive(Debug, Clone, Copy)]
pub(super) struct ChildFds {
    /// The report pipe.
    pub(super) rep: RawFd,
    /// Reads end of file once rcx-dm is gone.
    pub(super) alive: RawFd,
    /// `--net bridge`'s go pipe: one byte once eth0 exists.
    pub(super) go: Option<RawFd>,
    /// `--userns`: one byte once the id maps are written and the volume's mount is idmapped.
    pub(super) ids: Option<RawFd>,
    /// `--userns`: rcx-dm's detached mount of the volume, to move into place.
    pub(super) mount: Option<RawFd>,
}

/// The container side, from the clone to execve. Never returns.
pub(super) fn main(plan: &ChildPlan, fds: ChildFds) -> ! {
    let (rep, go) = (fds.rep, fds.go);
    // Die with rcx-dm. If rcx-dm died before this line, the alive pipe already reads EOF.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let mut pfd = libc::pollfd { fd: fds.alive, events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd, zero timeout.
    if unsafe { libc::poll(&mut pfd, 1, 0) } != 0 {
        // SAFETY: as above.
        unsafe { libc::_exit(FailureKind::Setup.exit_code()) }
    }
    // `-t`: the pty's slave becomes 0, 1 and 2 before everything else is closed.
    if let Some((slave, _)) = &plan.tty {
        for fd in 0..3 {
            // SAFETY: dup2 of an inherited descriptor onto a standard one of this process.
            if unsafe { libc::dup2(*slave, fd) } != fd {
                fail(rep, Fail::new("making the terminal the container's stdin, stdout and stderr", Errno::last()));
            }
        }
    }
    // Nothing else of rcx-dm's (the cgroup directory, the run directory and its lock, the pool's
    // files) may stay open in the container: a directory descriptor would lead to the host
    // through /proc/N/fd (runc's CVE-2024-21626). The alive pipe has done its job too.
    close_inherited([rep, go.unwrap_or(-1), fds.ids.unwrap_or(-1), fds.mount.unwrap_or(-1)]);
    let Some(security) = &plan.security else {
        fail(rep, Fail::new("starting the container (no security plan)", Errno::EINVAL));
    };
    if let Some(ids) = fds.ids {
        if let Err(f) = become_namespace_root(ids) {
            fail(rep, f);
        }
    }
    // A session of its own: the caller's session and terminal are not the container's.
    if let Err(e) = nix::unistd::setsid() {
        fail(rep, Fail::new("starting a new session", e));
    }
    // `-t`: the new session's controlling terminal is the container's own pty (never the
    // caller's: without -t the session has none).
    // SAFETY: TIOCSCTTY on descriptor 0 with argument 0 (no stealing).
    if plan.tty.is_some() && unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        fail(rep, Fail::new("making the terminal the container's controlling terminal", Errno::last()));
    }
    // The clone put this process in its cgroup: that group becomes the namespace's root.
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP) {
        fail(rep, Fail::new("creating the cgroup namespace", e));
    }
    report::stamp(rep, Stage::Start);
    if let Err(f) = root_mount::mount_root(&plan.root, fds.mount) {
        fail(rep, f);
    }
    report::stamp(rep, Stage::Mounted);
    if let Err(f) = enter_root(plan, security, go) {
        fail(rep, f);
    }
    report::stamp(rep, Stage::Ready);
    // After the last step that needs CAP_SYS_ADMIN, before --init forks: the init and the
    // command both run with the container's capabilities only.
    if let Err(f) = security::lock_down(security) {
        fail(rep, f);
    }
    if plan.init {
        // Returns only in the command's process (PID 2); PID 1 stays in the init loop.
        init::become_init(rep);
    }
    exec(plan, rep)
}

/// `--userns`: wait until rcx-dm has written the id maps (and made the volume's mount
/// idmapped), then take the namespace's root as this process's ids. Until then the process
/// still has rcx-dm's host ids (unmapped in the namespace); from here on it is host id HOSTID,
/// root only inside. The supplementary groups are rcx-dm's, unmapped here: cleared.
fn become_namespace_root(ids: RawFd) -> Step<()> {
    let mut b = [0u8; 1];
    // SAFETY: reading one byte from our pipe; EOF means rcx-dm gave up (or died).
    let n = unsafe { libc::read(ids, b.as_mut_ptr().cast(), 1) };
    // SAFETY: closing our own descriptor; --init's PID 1 must not keep it.
    unsafe { libc::close(ids) };
    if n != 1 {
        return Err(Fail::new("waiting for rcx-dm to write the user namespace's id maps", Errno::EPIPE));
    }
    let root_gid = nix::unistd::Gid::from_raw(0);
    let root_uid = nix::unistd::Uid::from_raw(0);
    nix::unistd::setresgid(root_gid, root_gid, root_gid).map_err(|e| Fail::new("becoming gid 0 in the user namespace", e))?;
    nix::unistd::setgroups(&[]).map_err(|e| Fail::new("clearing the supplementary groups in the user namespace", e))?;
    nix::unistd::setresuid(root_uid, root_uid, root_uid).map_err(|e| Fail::new("becoming uid 0 in the user namespace", e))
}

/// pivot_root into the mounted volume and build the rest of the container's view.
fn enter_root(plan: &ChildPlan, security: &SecurityPlan, go: Option<RawFd>) -> Step<()> {
    let ro = plan.root.read_only;
    nix::unistd::chdir(plan.root.target.as_c_str()).map_err(|e| Fail::new("entering the mounted volume", e))?;
    // /dev first, while the pty's slave is still reachable by its host path for /dev/console
    // (and, under --userns, the host's nodes for their bind mounts).
    devices::setup(ro, plan.root.nodev, plan.userns, plan.tty.as_ref().map(|(_, p)| p.as_c_str()))?;
    if plan.userns {
        // While the host's /proc and /sys are still visible (see mount_proc_sys).
        root_mount::mount_proc_sys(ro, security.privileged, true)?;
    }
    // pivot_root(".", ".") stacks the old root on top of the new one; unmounting "." then
    // detaches the old root, with no directory made in the volume for it.
    nix::unistd::pivot_root(".", ".").map_err(|e| Fail::new("pivot_root into the volume", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| Fail::new("detaching the old root", e))?;
    nix::unistd::chdir("/").map_err(|e| Fail::new("entering the new root", e))?;
    if !plan.userns {
        root_mount::mount_proc_sys(ro, security.privileged, false)?;
    }
    security::protect_proc_sys(security)?;
    nix::unistd::sethostname(&plan.hostname).map_err(|e| Fail::new("setting the hostname", e))?;
    match plan.net {
        ChildNet::Host => {}
        ChildNet::None => loopback_up()?,
        ChildNet::Bridge(ip) => {
            loopback_up()?;
            let mut b = [0u8; 1];
            // SAFETY: reading one byte from our pipe; EOF means rcx-dm gave up (or died).
            let n = unsafe { libc::read(go.unwrap_or(-1), b.as_mut_ptr().cast(), 1) };
            // Done with it; --init's PID 1, which never execs, must not keep it.
            if let Some(fd) = go {
                // SAFETY: closing our own descriptor.
                unsafe { libc::close(fd) };
            }
            if n != 1 {
                return Err(Fail::new("waiting for rcx-dm to create eth0", Errno::EPIPE));
            }
            network::configure_container(ip)?;
        }
    }
    if !plan.interactive && plan.tty.is_none() {
        stdin_from_dev_null()?;
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

/// Close every descriptor but 0, 1, 2 and `keep` (the report, go and ids pipes and the
/// detached mount; -1 for none).
fn close_inherited(mut keep: [RawFd; 4]) {
    keep.sort_unstable();
    let close = |from: RawFd, to: RawFd| {
        // SAFETY: closing descriptors of this single-threaded process; none is used afterwards.
        let r = unsafe { libc::syscall(libc::SYS_close_range, from as u32, to as u32, 0u32) };
        if r != 0 {
            // Before Linux 5.9: one by one, as far as any descriptor can reasonably be.
            for fd in from..=to.min(1 << 16) {
                // SAFETY: as above.
                unsafe { libc::close(fd) };
            }
        }
    };
    let mut from: RawFd = 3;
    for k in keep {
        if k >= from {
            if k > from {
                close(from, k - 1);
            }
            from = k + 1;
        }
    }
    close(from, RawFd::MAX);
}

/// Without `-i` the container's stdin is its own /dev/null, as Docker's.
fn stdin_from_dev_null() -> Step<()> {
    let fd = nix::fcntl::open("/dev/null", nix::fcntl::OFlag::O_RDONLY, nix::sys::stat::Mode::empty())
        .map_err(|e| Fail::new("opening /dev/null for stdin", e))?;
    use std::os::fd::AsRawFd;
    if fd.as_raw_fd() != 0 {
        // SAFETY: dup2 onto descriptor 0 of this process; `fd` is closed on drop.
        if unsafe { libc::dup2(fd.as_raw_fd(), 0) } != 0 {
            return Err(Fail::new("making /dev/null the container's stdin", Errno::last()));
        }
    } else {
        // It took the free slot 0 already: keep it open there.
        std::mem::forget(fd);
    }
    Ok(())
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

/// What a command must not inherit from rcx-dm: default dispositions for every signal, an
/// empty mask (rcx-dm blocks the ones it forwards; Rust ignores SIGPIPE), and every descriptor
/// above 2 closed at execve. For the single-threaded process about to exec.
pub(super) fn reset_signals_and_descriptors() {
    // SAFETY: dispositions, mask and close-on-exec flags of this single-threaded process.
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
}

/// Last steps before the command: default signal handling and an empty mask (rcx-dm blocks
/// and Rust ignores some), no stray descriptors, then execve along the search list.
fn exec(plan: &ChildPlan, rep: RawFd) -> ! {
    reset_signals_and_descriptors();
    report::stamp(rep, Stage::Exec);
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
    let (kind, found): (FailureKind, Option<(&CStr, Errno)>) = match (other, denied) {
        (Some(o), _) => (FailureKind::NoExec, Some(o)),
        (None, Some(d)) => (FailureKind::NoExec, Some(d)),
        (None, None) => (FailureKind::NotFound, None),
    };
    match found {
        Some((path, e)) => report::failure(rep, kind, e as i32, &path.to_string_lossy()),
        None => report::failure(rep, kind, Errno::ENOENT as i32, "-"),
    }
    // SAFETY: leave without running anything of the parent's.
    unsafe { libc::_exit(kind.exit_code()) }
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
}
