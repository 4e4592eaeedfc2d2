//! A root directory written only through descriptors resolved inside it.
//!
//! Every parent directory is opened with `openat2(root, path, RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)`, so symlinks met on the way (`evil -> /`, `a -> ../../..`) resolve
//! inside the tree as if it were `/`, never on the host. The final component is then made or
//! changed with an `*at` call that does not follow it (O_NOFOLLOW, AT_SYMLINK_NOFOLLOW, linkat
//! with flags 0). Paths are relative to the root; a leading `/` or `./` is dropped and `..` is
//! refused, so a tar entry can neither name nor reach anything outside.
//!
//! Symlinks in parent directories are followed inside the tree (`lib -> usr/lib`, then
//! `lib/x` lands in `usr/lib/x`), as docker's and containerd's appliers do; a parent that is
//! not a directory at all (a file, a dangling or looping symlink) is replaced by a directory.
//!
//! `meta` holds an entry's metadata and sets it on a descriptor; `xattr` wraps the xattr
//! syscalls.

use std::cell::RefCell;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, mkdirat, mknodat, utimensat, FileStat, Mode, SFlag, UtimensatFlags};
use nix::unistd::{fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use crate::error::{Error, IoContext, Result};

mod meta;
pub(crate) mod xattr;

use meta::{chmod_at, with_proc_hint, xattrs_path};
pub(crate) use meta::{set_fd_meta, Meta, Times};

/// The file type of an entry in a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A character device node.
    CharDev,
    /// A block device node.
    BlockDev,
    /// A named pipe.
    Fifo,
    /// A unix socket.
    Socket,
}

impl EntryKind {
    /// The kind of a `st_mode`; None for a type Linux does not have.
    pub fn from_mode(mode: u32) -> Option<EntryKind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => EntryKind::File,
            libc::S_IFDIR => EntryKind::Dir,
            libc::S_IFLNK => EntryKind::Symlink,
            libc::S_IFCHR => EntryKind::CharDev,
            libc::S_IFBLK => EntryKind::BlockDev,
            libc::S_IFIFO => EntryKind::Fifo,
            libc::S_IFSOCK => EntryKind::Socket,
            _ => return None,
        })
    }

    fn sflag(self) -> SFlag {
        match self {
            EntryKind::File => SFlag::S_IFREG,
            EntryKind::Dir => SFlag::S_IFDIR,
            EntryKind::Symlink => SFlag::S_IFLNK,
            EntryKind::CharDev => SFlag::S_IFCHR,
            EntryKind::BlockDev => SFlag::S_IFBLK,
            EntryKind::Fifo => SFlag::S_IFIFO,
            EntryKind::Socket => SFlag::S_IFSOCK,
        }
    }
}


/// A directory tree written only through descriptors resolved inside it.
pub struct Tree {
    root: OwnedFd,
    path: PathBuf,
    /// The last parent directory resolved: tar entries come grouped by directory. Dropped on
    /// any unlink, since removing a symlink or directory can change what a path resolves to.
    last_parent: RefCell<Option<(PathBuf, Rc<OwnedFd>)>>,
}

/// A path relative to the tree's root: `/` and `.` dropped, `..` refused.
pub(crate) fn relative(path: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                return Err(Error::invalid(
                    "path",
                    format!("'{}' has a '..' component; entries must stay inside the root filesystem", path.display()),
                ))
            }
            Component::Normal(n) => out.push(n),
        }
    }
    Ok(out)
}

/// Retries a syscall interrupted by a signal, and openat2's EAGAIN (a concurrent rename
/// raced an in-root lookup).
pub(crate) fn retry<T>(mut f: impl FnMut() -> nix::Result<T>) -> nix::Result<T> {
    let mut again = 0;
    loop {
        match f() {
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) if again < 16 => again += 1,
            r => return r,
        }
    }
}

fn in_root() -> ResolveFlag {
    ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

fn io(e: Errno) -> std::io::Error {
    std::io::Error::from(e)
}

impl Tree {
    /// Opens `dir` as the root of a tree.
    pub fn open(dir: &Path) -> Result<Tree> {
        let root = retry(|| {
            nix::fcntl::open(dir, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        })
        .map_err(io)
        .ctx(|| format!("opening {} as a root directory (it must exist and be a directory)", dir.display()))?;
        Ok(Tree { root, path: dir.to_path_buf(), last_parent: RefCell::new(None) })
    }

    /// The host path the tree was opened at, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn show(&self, rel: &Path) -> String {
        format!("{} in {}", Path::new("/").join(rel).display(), self.path.display())
    }

    fn forget_parent(&self) {
        self.last_parent.borrow_mut().take();
    }

    /// Opens directory `rel` (followed inside the root) as an O_PATH descriptor.
    fn open_dir(&self, rel: &Path) -> nix::Result<OwnedFd> {
        if rel.as_os_str().is_empty() {
            return self.root.try_clone().map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EBADF)));
        }
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(in_root());
        retry(|| openat2(self.root.as_fd(), rel, how))
    }

    /// The directory `rel`, made (0755, root-owned) where missing; a non-directory in the way
    /// is replaced by a directory.
    fn dir(&self, rel: &Path) -> Result<Rc<OwnedFd>> {
        if let Some((p, fd)) = &*self.last_parent.borrow() {
            if p == rel {
                return Ok(fd.clone());
            }
        }
        let fd = match self.open_dir(rel) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => self.make_dirs(rel)?,
            Err(e) => return Err(io(e)).ctx(|| format!("opening directory {}", self.show(rel))),
        };
        let fd = Rc::new(fd);
        *self.last_parent.borrow_mut() = Some((rel.to_path_buf(), fd.clone()));
        Ok(fd)
    }

    /// Walks `rel` from the root, making each missing directory. Each prefix is looked up from
    /// the root fd: RESOLVE_IN_ROOT on a subdirectory fd would treat that subdirectory as `/`.
    fn make_dirs(&self, rel: &Path) -> Result<OwnedFd> {
        let mut parent = self.open_dir(Path::new("")).map_err(io).ctx(|| format!("opening {}", self.path.display()))?;
        let mut prefix = PathBuf::new();
        for name in rel.iter() {
            prefix.push(name);
            parent = match self.open_dir(&prefix) {
                Ok(fd) => fd,
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => {
                    self.mkdir_in(&parent, name, &prefix)?;
                    self.open_dir(&prefix).map_err(io).ctx(|| format!("opening directory {}", self.show(&prefix)))?
                }
                Err(e) => return Err(io(e)).ctx(|| format!("opening directory {}", self.show(&prefix))),
            };
        }
        Ok(parent)
    }

    /// A missing parent directory: 0755 and root-owned whatever the umask or a setgid parent say.
    fn mkdir_in(&self, parent: &OwnedFd, name: &OsStr, rel: &Path) -> Result<()> {
        match retry(|| mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(0o755))) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                // A file, or a symlink that did not resolve to a directory: in the way.
                self.remove_in(parent.as_fd(), name, rel)?;
                retry(|| mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(0o755)))
                    .map_err(io)
                    .ctx(|| format!("making directory {}", self.show(rel)))?;
            }
            Err(e) => return Err(io(e)).ctx(|| format!("making directory {}", self.show(rel))),
        }
        retry(|| fchownat(parent.as_fd(), name, Some(Uid::from_raw(0)), Some(Gid::from_raw(0)), AtFlags::AT_SYMLINK_NOFOLLOW))
            .map_err(io)
            .ctx(|| format!("chown of new directory {}", self.show(rel)))?;
        chmod_at(parent.as_fd(), name, 0o755).map_err(io).ctx(|| format!("chmod of new directory {}", self.show(rel)))
    }

    /// The parent directory of `path` and the final name; refuses the root itself.
    fn split(&self, path: &Path) -> Result<(PathBuf, Rc<OwnedFd>, OsString)> {
        let rel = relative(path)?;
        let Some(name) = rel.file_name().map(OsStr::to_os_string) else {
            return Err(Error::invalid("path", format!("'{}' names the root directory itself, not an entry in it", path.display())));
        };
        let parent = rel.parent().unwrap_or(Path::new(""));
        let fd = self.dir(parent)?;
        Ok((rel, fd, name))
    }

    /// Runs `make` on (parent, name); if something is already there, removes it (recursively if
    /// a directory) and tries once more.
    fn replacing<T>(&self, path: &Path, what: &str, make: impl Fn(BorrowedFd, &OsStr) -> nix::Result<T>) -> Result<T> {
        let (rel, parent, name) = self.split(path)?;
        match retry(|| make(parent.as_fd(), &name)) {
            Err(Errno::EEXIST) => {
                self.remove_in(parent.as_fd(), &name, &rel)?;
                retry(|| make(parent.as_fd(), &name))
            }
            r => r,
        }
        .map_err(io)
        .ctx(|| format!("making {what} {}", self.show(&rel)))
    }

    /// Makes directory `path`; an existing directory is kept (returns true), anything else
    /// there is replaced. The caller sets mode and owner (`set_meta`).
    pub(crate) fn mkdir(&self, path: &Path) -> Result<bool> {
        let (rel, parent, name) = self.split(path)?;
        match retry(|| mkdirat(parent.as_fd(), name.as_os_str(), Mode::from_bits_truncate(0o700))) {
            Ok(()) => Ok(false),
            Err(Errno::EEXIST) => {
                let st = fstatat(parent.as_fd(), name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(io)
                    .ctx(|| format!("inspecting {}", self.show(&rel)))?;
                if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    return Ok(true);
                }
                self.remove_in(parent.as_fd(), &name, &rel)?;
                retry(|| mkdirat(parent.as_fd(), name.as_os_str(), Mode::from_bits_truncate(0o700)))
                    .map_err(io)
                    .ctx(|| format!("making directory {}", self.show(&rel)))?;
                Ok(false)
            }
            Err(e) => Err(io(e)).ctx(|| format!("making directory {}", self.show(&rel))),
        }
    }

    /// Creates regular file `path` (mode 0600 until `set_file_meta`), replacing whatever was
    /// there, and returns it open for writing.
    pub(crate) fn create_file(&self, path: &Path) -> Result<File> {
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = self.replacing(path, "file", |d, n| openat(d, n, flags, Mode::from_bits_truncate(0o600)))?;
        Ok(File::from(fd))
    }

    /// Creates symlink `path` pointing to `target` (stored as given, never followed here).
    pub(crate) fn symlink(&self, path: &Path, target: &Path) -> Result<()> {
        self.replacing(path, "symlink", |d, n| symlinkat(target, d, n))
    }

    /// Creates `path` as a hard link to the existing entry `target` (both tree paths). A
    /// symlink target is linked itself, not followed.
    pub(crate) fn hardlink(&self, path: &Path, target: &Path) -> Result<()> {
        let trel = relative(target)?;
        let rel = relative(path)?;
        if trel == rel {
            return Ok(()); // a link to itself: already there
        }
        let Some(tname) = trel.file_name().map(OsStr::to_os_string) else {
            return Err(Error::invalid("hard link", format!("'{}' links to the root directory", path.display())));
        };
        // Our own descriptor: `replacing` may resolve a different parent into the cache.
        let tparent = match self.open_dir(trel.parent().unwrap_or(Path::new(""))) {
            Ok(fd) => fd,
            Err(e) => {
                return Err(io(e)).ctx(|| format!("hard link {}: target {}", self.show(&rel), self.show(&trel)))
            }
        };
        self.replacing(path, "hard link", |d, n| linkat(tparent.as_fd(), tname.as_os_str(), d, n, AtFlags::empty()))
            .map_err(|e| match e {
                Error::Io { context, source } if source.raw_os_error() == Some(libc::ENOENT) => Error::Io {
                    context: format!("{context}: the link target {} does not exist", self.show(&trel)),
                    source,
                },
                e => e,
            })
    }

    /// Creates a device node, fifo or socket (mode 0600 until `set_meta`).
    pub(crate) fn mknod(&self, path: &Path, kind: EntryKind, rdev: u64) -> Result<()> {
        if !matches!(kind, EntryKind::CharDev | EntryKind::BlockDev | EntryKind::Fifo | EntryKind::Socket) {
            return Err(Error::invalid("node kind", format!("{kind:?} at '{}' is not a device, fifo or socket", path.display())));
        }
        self.replacing(path, "special file", |d, n| mknodat(d, n, kind.sflag(), Mode::from_bits_truncate(0o600), rdev))
    }

    /// Sets owner, then mode (chown clears setuid/setgid), xattrs and times of `path`, which
    /// is of `kind`. Regular files and directories are changed through a descriptor of their
    /// own; other kinds through their parent (a device node must not be opened).
    pub(crate) fn set_meta(&self, path: &Path, kind: EntryKind, meta: &Meta) -> Result<()> {
        let rel = relative(path)?;
        if matches!(kind, EntryKind::File | EntryKind::Dir) {
            let fd = if rel.as_os_str().is_empty() {
                self.open_dir_rdonly(&rel)?
            } else {
                let (_, parent, name) = self.split(&rel)?;
                let mut flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
                if kind == EntryKind::Dir {
                    flags |= OFlag::O_DIRECTORY;
                }
                retry(|| openat(parent.as_fd(), name.as_os_str(), flags, Mode::empty()))
                    .map_err(io)
                    .ctx(|| format!("opening {} to set its metadata", self.show(&rel)))?
            };
            return set_fd_meta(fd.as_fd(), meta).ctx(|| format!("setting metadata of {}", self.show(&rel)));
        }
        let (rel, parent, name) = self.split(&rel)?;
        let ctx = || format!("setting metadata of {}", self.show(&rel));
        let p = parent.as_fd();
        retry(|| fchownat(p, name.as_os_str(), Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)), AtFlags::AT_SYMLINK_NOFOLLOW))
            .map_err(io)
            .ctx(ctx)?;
        if kind != EntryKind::Symlink {
            chmod_at(p, &name, meta.mode).map_err(io).ctx(ctx)?;
        }
        if !meta.xattrs.is_empty() || meta.exact_xattrs {
            // No *xattrat before Linux 6.13: the parent's descriptor through /proc, final
            // component not followed (lsetxattr).
            let mut bytes = format!("/proc/self/fd/{}/", p.as_raw_fd()).into_bytes();
            bytes.extend_from_slice(name.as_bytes());
            let proc_path = CString::new(bytes)
                .map_err(|_| Error::invalid("path", format!("'{}' contains a NUL byte", rel.display())))?;
            xattrs_path(&proc_path, meta).map_err(with_proc_hint).ctx(ctx)?;
        }
        if let Some(t) = meta.times {
            retry(|| utimensat(p, name.as_os_str(), &t.atime, &t.mtime, UtimensatFlags::NoFollowSymlink)).map_err(io).ctx(ctx)?;
        }
        Ok(())
    }

    /// Sets the times of `path` without following it (directories, after their children).
    pub(crate) fn set_times(&self, path: &Path, times: Times) -> Result<()> {
        let rel = relative(path)?;
        let ctx = || format!("setting times of {}", self.show(&rel));
        if rel.as_os_str().is_empty() {
            let fd = self.open_dir_rdonly(&rel)?;
            return retry(|| nix::sys::stat::futimens(fd.as_fd(), &times.atime, &times.mtime)).map_err(io).ctx(ctx);
        }
        let (_, parent, name) = self.split(&rel)?;
        retry(|| utimensat(parent.as_fd(), name.as_os_str(), &times.atime, &times.mtime, UtimensatFlags::NoFollowSymlink))
            .map_err(io)
            .ctx(ctx)
    }

    /// Removes `path` (recursively if a directory). Returns whether anything was there.
    pub(crate) fn remove(&self, path: &Path) -> Result<bool> {
        let rel = relative(path)?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        let Some(name) = rel.file_name() else {
            return Err(Error::invalid("path", "the root directory itself cannot be removed; remove its entries"));
        };
        // A parent that cannot be resolved (missing, not a directory, a symlink loop) holds
        // nothing: a whiteout under it is a no-op.
        let pfd = match self.open_dir(parent) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => return Ok(false),
            Err(e) => return Err(io(e)).ctx(|| format!("opening directory {}", self.show(parent))),
        };
        match fstatat(pfd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(io(e)).ctx(|| format!("inspecting {}", self.show(&rel))),
            Ok(_) => self.remove_in(pfd.as_fd(), name, &rel).map(|()| true),
        }
    }

    /// Removes `name` in `parent`, recursively; drops the parent cache.
    fn remove_in(&self, parent: BorrowedFd, name: &OsStr, rel: &Path) -> Result<()> {
        self.forget_parent();
        match retry(|| unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)) {
            Ok(()) | Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::EISDIR) => {}
            Err(e) => return Err(io(e)).ctx(|| format!("removing {}", self.show(rel))),
        }
        let dir = retry(|| openat(parent, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty()))
            .map_err(io)
            .ctx(|| format!("opening directory {} to empty it", self.show(rel)))?;
        for child in list_fd(&dir).ctx(|| format!("listing {}", self.show(rel)))? {
            self.remove_in(dir.as_fd(), &child, &rel.join(&child))?;
        }
        retry(|| unlinkat(parent, name, UnlinkatFlags::RemoveDir))
            .map_err(io)
            .ctx(|| format!("removing directory {}", self.show(rel)))
    }

    /// lstat of `path`; None if it (or a parent) does not exist.
    pub(crate) fn stat(&self, path: &Path) -> Result<Option<FileStat>> {
        let rel = relative(path)?;
        let (parent, name) = match rel.file_name() {
            Some(n) => (rel.parent().unwrap_or(Path::new("")), n),
            None => (Path::new(""), OsStr::new(".")),
        };
        let pfd = match self.open_dir(parent) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => return Ok(None),
            Err(e) => return Err(io(e)).ctx(|| format!("opening directory {}", self.show(parent))),
        };
        match fstatat(pfd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(None),
            Err(e) => Err(io(e)).ctx(|| format!("inspecting {}", self.show(&rel))),
        }
    }

    /// What `path` is, not following it; None if nothing is there.
    pub(crate) fn kind(&self, path: &Path) -> Result<Option<EntryKind>> {
        Ok(self.stat(path)?.and_then(|st| EntryKind::from_mode(st.st_mode)))
    }

    /// The target of symlink `path`, read without following anything outside the tree.
    pub(crate) fn read_link(&self, path: &Path) -> Result<PathBuf> {
        let rel = relative(path)?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        let name = rel.file_name().unwrap_or(OsStr::new("."));
        let pfd = self.open_dir(parent).map_err(io).ctx(|| format!("opening directory {}", self.show(parent)))?;
        retry(|| nix::fcntl::readlinkat(pfd.as_fd(), name))
            .map(PathBuf::from)
            .map_err(io)
            .ctx(|| format!("reading symlink {}", self.show(&rel)))
    }

    /// The names in directory `path` (followed inside the root), without `.` and `..`.
    pub(crate) fn list(&self, path: &Path) -> Result<Vec<OsString>> {
        let rel = relative(path)?;
        let fd = self.open_dir_rdonly(&rel)?;
        list_fd(&fd).ctx(|| format!("listing {}", self.show(&rel)))
    }

    fn open_dir_rdonly(&self, rel: &Path) -> Result<OwnedFd> {
        let how = OpenHow::new().flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).resolve(in_root());
        let p: &Path = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
        retry(|| openat2(self.root.as_fd(), p, how)).map_err(io).ctx(|| format!("opening directory {}", self.show(rel)))
    }
}


/// Names in an open directory, without `.` and `..`.
fn list_fd(dir: &OwnedFd) -> std::io::Result<Vec<OsString>> {
    // Dir takes ownership and closes; a duplicate keeps `dir` usable for the caller.
    let mut d = nix::dir::Dir::from_fd(dir.try_clone()?).map_err(io)?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e.map_err(io)?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(out)
}


#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;

    #[test]
    fn relative_paths() {
        assert_eq!(relative(Path::new("/a/./b/")).unwrap(), Path::new("a/b"));
        assert_eq!(relative(Path::new("./")).unwrap(), Path::new(""));
        let e = relative(Path::new("a/../../etc")).unwrap_err().to_string();
        assert!(e.contains("a/../../etc") && e.contains(".."), "{e}");
    }

    #[test]
    fn removal_forgets_the_cached_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = Tree::open(tmp.path()).unwrap();
        tree.create_file(Path::new("a/b/f1")).unwrap().write_all(b"1").unwrap();
        assert!(tree.remove(Path::new("a")).unwrap());
        assert!(!tree.remove(Path::new("a")).unwrap(), "nothing there any more");
        tree.create_file(Path::new("a/b/f2")).unwrap().write_all(b"2").unwrap();
        assert_eq!(fs::read(tmp.path().join("a/b/f2")).unwrap(), b"2");
        assert_eq!(tree.list(Path::new("a/b")).unwrap(), [OsString::from("f2")]);
    }

    #[test]
    fn entries_and_kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = Tree::open(tmp.path()).unwrap();
        assert!(!tree.mkdir(Path::new("d")).unwrap());
        assert!(tree.mkdir(Path::new("/d/")).unwrap(), "an existing directory is kept");
        tree.symlink(Path::new("d/s"), Path::new("/nowhere")).unwrap();
        assert_eq!(tree.kind(Path::new("d/s")).unwrap(), Some(EntryKind::Symlink));
        assert_eq!(tree.read_link(Path::new("d/s")).unwrap(), Path::new("/nowhere"));
        tree.mknod(Path::new("d/p"), EntryKind::Fifo, 0).unwrap();
        tree.set_meta(Path::new("d/p"), EntryKind::Fifo, &Meta { mode: 0o640, uid: 5, gid: 6, ..Meta::default() }).unwrap();
        let st = tree.stat(Path::new("d/p")).unwrap().unwrap();
        assert_eq!((st.st_mode & 0o7777, st.st_uid, st.st_gid), (0o640, 5, 6));
        assert_eq!(tree.kind(Path::new("d/missing/x")).unwrap(), None);
        assert!(tree.mkdir(Path::new("")).is_err(), "the root is not an entry");
        // A file in the way of a parent becomes a directory.
        tree.create_file(Path::new("f")).unwrap();
        tree.create_file(Path::new("f/g")).unwrap();
        assert_eq!(tree.kind(Path::new("f")).unwrap(), Some(EntryKind::Dir));
    }
}
