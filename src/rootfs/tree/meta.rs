//! An entry's metadata (owner, mode, xattrs, times) and how it is set on an open descriptor or
//! through a path whose final component is not followed.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::sys::stat::Mode;
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use super::{io, retry, xattr};

/// Access and modification times, with nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Times {
    /// Last access.
    pub atime: TimeSpec,
    /// Last modification.
    pub mtime: TimeSpec,
}

/// An entry's metadata as a tar header or a source directory states it.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky (07777); ignored on symlinks.
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// None leaves the times alone (directories get theirs after their children).
    pub times: Option<Times>,
    /// Extended attributes (name, value), set after the owner because chown drops
    /// `security.capability`.
    pub xattrs: Vec<(OsString, Vec<u8>)>,
    /// Also remove xattrs the entry has that `xattrs` does not list (an entry kept from before).
    pub exact_xattrs: bool,
}

/// chmod of a name that is not a symlink, never following one (glibc emulates the flag).
pub(super) fn chmod_at(dir: BorrowedFd, name: &OsStr, mode: u32) -> nix::Result<()> {
    let name = CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)?;
    retry(|| {
        // SAFETY: valid fd and NUL-terminated name.
        Errno::result(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode & 0o7777, libc::AT_SYMLINK_NOFOLLOW) }).map(drop)
    })
}

/// Owner, mode, xattrs, times of an open file or directory, in that order.
pub fn set_fd_meta(fd: BorrowedFd, meta: &Meta) -> std::io::Result<()> {
    retry(|| nix::unistd::fchown(fd, Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)))).map_err(io)?;
    retry(|| nix::sys::stat::fchmod(fd, Mode::from_bits_retain(meta.mode & 0o7777))).map_err(io)?;
    if meta.exact_xattrs {
        for name in xattr::list_fd(fd)? {
            if !meta.xattrs.iter().any(|(n, _)| *n == name) {
                xattr::remove_fd(fd, &name)?;
            }
        }
    }
    for (name, value) in &meta.xattrs {
        xattr::set_fd(fd, name, value)?;
    }
    if let Some(t) = meta.times {
        retry(|| nix::sys::stat::futimens(fd, &t.atime, &t.mtime)).map_err(io)?;
    }
    Ok(())
}

/// Sets (and with `exact_xattrs` prunes) xattrs through a path whose final component is not
/// followed.
pub(super) fn xattrs_path(path: &CString, meta: &Meta) -> std::io::Result<()> {
    if meta.exact_xattrs {
        for name in xattr::list_path(path)? {
            if !meta.xattrs.iter().any(|(n, _)| *n == name) {
                xattr::remove_path(path, &name)?;
            }
        }
    }
    for (name, value) in &meta.xattrs {
        xattr::set_path(path, name, value)?;
    }
    Ok(())
}

/// Says why an xattr set through /proc/self/fd may have found nothing: /proc not mounted.
pub(super) fn with_proc_hint(e: std::io::Error) -> std::io::Error {
    if e.raw_os_error() == Some(libc::ENOENT) {
        std::io::Error::new(e.kind(), format!("{e} (xattrs of special files are set through /proc/self/fd: mount /proc)"))
    } else {
        e
    }
}
