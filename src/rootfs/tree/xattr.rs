//! Thin wrappers over the xattr syscalls (libc), l* variants never following the final link.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

fn cname(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name contains a NUL byte"))
}

fn check(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Calls a size-query-then-fill syscall, growing the buffer if the value grew between.
fn sized(mut call: impl FnMut(*mut libc::c_void, usize) -> libc::ssize_t) -> io::Result<Vec<u8>> {
    loop {
        let n = loop {
            match check(call(std::ptr::null_mut(), 0)) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        let mut buf = vec![0u8; n.max(1)];
        match check(call(buf.as_mut_ptr().cast(), buf.len())) {
            Ok(m) => {
                buf.truncate(m);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) || e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn split_names(buf: Vec<u8>) -> Vec<OsString> {
    buf.split(|b| *b == 0).filter(|n| !n.is_empty()).map(|n| OsStr::from_bytes(n).to_os_string()).collect()
}

fn unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOTSUP)
}

/// Names of the xattrs of a path (not followed); empty where the filesystem has none.
pub fn list_path(path: &CString) -> io::Result<Vec<OsString>> {
    // SAFETY: valid C string and a buffer of the given length (or null with 0).
    match sized(|b, n| unsafe { libc::llistxattr(path.as_ptr(), b.cast(), n) }) {
        Err(e) if unsupported(&e) => Ok(Vec::new()),
        r => r.map(split_names),
    }
}

/// The value of xattr `name` of a path (not followed).
pub fn get_path(path: &CString, name: &OsStr) -> io::Result<Vec<u8>> {
    let name = cname(name)?;
    // SAFETY: as above.
    sized(|b, n| unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), b, n) })
}

/// Sets xattr `name` of a path (not followed) to `value`.
pub fn set_path(path: &CString, name: &OsStr, value: &[u8]) -> io::Result<()> {
    let name = cname(name)?;
    // SAFETY: valid C strings, value pointer and length from a slice.
    check(unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) } as libc::ssize_t).map(drop)
}

/// Removes xattr `name` of a path (not followed).
pub fn remove_path(path: &CString, name: &OsStr) -> io::Result<()> {
    let name = cname(name)?;
    // SAFETY: valid C strings.
    check(unsafe { libc::lremovexattr(path.as_ptr(), name.as_ptr()) } as libc::ssize_t).map(drop)
}

/// Names of the xattrs of an open file; empty where the filesystem has none.
pub fn list_fd(fd: BorrowedFd) -> io::Result<Vec<OsString>> {
    // SAFETY: valid fd and buffer.
    match sized(|b, n| unsafe { libc::flistxattr(fd.as_raw_fd(), b.cast(), n) }) {
        Err(e) if unsupported(&e) => Ok(Vec::new()),
        r => r.map(split_names),
    }
}

/// Sets xattr `name` of an open file to `value`.
pub fn set_fd(fd: BorrowedFd, name: &OsStr, value: &[u8]) -> io::Result<()> {
    let name = cname(name)?;
    // SAFETY: valid fd, C string, value pointer and length from a slice.
    check(unsafe { libc::fsetxattr(fd.as_raw_fd(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) } as libc::ssize_t).map(drop)
}

/// Removes xattr `name` of an open file.
pub fn remove_fd(fd: BorrowedFd, name: &OsStr) -> io::Result<()> {
    let name = cname(name)?;
    // SAFETY: valid fd and C string.
    check(unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) } as libc::ssize_t).map(drop)
}
