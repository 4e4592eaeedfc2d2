//! A minimal `/dev` for the container, made just before pivot_root (paths relative to the
//! mounted volume, the working directory then): a small tmpfs with the character
//! devices every program expects (null, zero, full, random, urandom, tty), a private devpts
//! instance (so the container's ptys are its own), a tmpfs on `/dev/shm`, and the usual links
//! (`fd`, `stdin`, `stdout`, `stderr`, `ptmx`, `core`), and with `-t` the container's terminal
//! on `/dev/console`. Nothing else of the host's /dev is visible.
//!
//! Under `--userns` the kernel refuses mknod of devices (it needs CAP_MKNOD in the host's user
//! namespace), and the tmpfs a user namespace mounts is nodev anyway: each standard node is then
//! an empty file with the host's node bind-mounted on it, as runc does under user namespaces
//! (the host's /dev is still reachable here, before pivot_root, and its mount is not nodev).

use std::ffi::CStr;

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use super::root_mount::ensure_dir;
use super::step::{Fail, Step};

/// (host path, major, minor): the devices docker and runc give every container too; without the
/// leading '/', the path in the mounted volume.
const DEVICES: [(&str, u64, u64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// (target, link): the usual links into /proc and devpts.
const LINKS: [(&str, &str); 6] = [
    ("/proc/self/fd", "dev/fd"),
    ("/proc/self/fd/0", "dev/stdin"),
    ("/proc/self/fd/1", "dev/stdout"),
    ("/proc/self/fd/2", "dev/stderr"),
    ("pts/ptmx", "dev/ptmx"),
    ("/proc/kcore", "dev/core"),
];

/// Build /dev in `dev` under the current directory (the mounted volume, before pivot_root).
/// `nodev`: only the standard nodes open; a node the container makes in /dev later does not
/// (each standard node is bind-mounted onto itself, a mount of its own, and the tmpfs under
/// them is remounted `nodev`). `userns`: bind-mount the host's nodes instead of making them.
/// `console_from`: `-t`'s pty slave, bound on `/dev/console`.
pub(super) fn setup(read_only_root: bool, nodev: bool, userns: bool, console_from: Option<&CStr>) -> Step<()> {
    ensure_dir("dev", read_only_root)?;
    mount(Some("tmpfs"), "dev", Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME, Some("mode=755,size=64k"))
        .map_err(|e| Fail::new("mounting a tmpfs on /dev", e))?;
    for (host, major, minor) in DEVICES {
        let path = &host[1..];
        if userns {
            // Never chmod here: the node is the host's own.
            let f = nix::fcntl::open(path, nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC, Mode::from_bits_truncate(0o644))
                .map_err(|e| Fail::new(format!("creating {host} to bind the host's node on"), e))?;
            drop(f);
            mount(Some(host), path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(|e| Fail::new(format!("bind-mounting the host's {host}"), e))?;
            continue;
        }
        mknod(path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(major, minor))
            .map_err(|e| Fail::new(format!("creating {host}"), e))?;
        // mknod applies the umask; the nodes must be usable by everyone, as on a host.
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            path,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| Fail::new(format!("setting the mode of {host}"), e))?;
    }
    if nodev {
        // (Under --userns each node is a bind mount already.)
        for (host, _, _) in DEVICES.iter().filter(|_| !userns) {
            let path = &host[1..];
            mount(Some(path), path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(|e| Fail::new(format!("bind-mounting {host} onto itself"), e))?;
        }
        mount(
            None::<&str>,
            "dev",
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME,
            Some("mode=755,size=64k"),
        )
        .map_err(|e| Fail::new("remounting /dev nodev", e))?;
    }
    for (dir, mode) in [("dev/pts", 0o755), ("dev/shm", 0o1777)] {
        nix::unistd::mkdir(dir, Mode::from_bits_truncate(mode)).map_err(|e| Fail::new(format!("creating /{dir}"), e))?;
    }
    mount(
        Some("devpts"),
        "dev/pts",
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(|e| Fail::new("mounting a private devpts on /dev/pts", e))?;
    mount(
        Some("shm"),
        "dev/shm",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
    .map_err(|e| Fail::new("mounting a tmpfs on /dev/shm", e))?;
    for (target, link) in LINKS {
        std::os::unix::fs::symlink(target, link).map_err(|e| {
            Fail::new(format!("linking /{link} to {target}"), nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)))
        })?;
    }
    if let Some(slave) = console_from {
        console(slave)?;
    }
    Ok(())
}

/// `-t`: the container's pty slave (rcx-dm's, at `slave`, its host path) on `/dev/console`,
/// as runc does for a terminal: the container's own devpts does not hold it, and `tty` inside
/// finds it there. Without `-t` there is no /dev/console: the caller's terminal is never bound.
fn console(slave: &CStr) -> Step<()> {
    let target = nix::fcntl::open(
        "dev/console",
        nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| Fail::new("creating /dev/console", e))?;
    drop(target);
    mount(Some(slave), "dev/console", None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| Fail::new("bind-mounting the terminal on /dev/console", e))
}
