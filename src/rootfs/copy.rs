//! A tree made equal to a source directory, the way `rsync -aHAX --delete src/ root/` would:
//! types, modes, owners, atime/mtime with nanoseconds, symlinks copied as links (never
//! followed), hard links kept as hard links, every xattr (POSIX ACLs are the
//! `system.posix_acl_*` xattrs), device nodes, fifos and sockets; what the tree has and the
//! source does not is removed.
//!
//! One exception to `--delete`: a top-level `lost+found` directory stays when the source has
//! none, because the filesystem (ext4's mkfs) made it and fsck wants it there. If the source
//! has one, it is copied like any other directory.
//!
//! Like rsync's quick check, a regular file already in the tree with the source's size and
//! mtime keeps its data and only has its metadata made equal.
//! The source is read through ordinary paths: it is the caller's own directory, while the
//! tree, which may hold anything, is written only through `Tree`.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsString};
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::sys::time::TimeSpec;

use crate::error::{Error, IoContext, Result};
use crate::rootfs::tree::{set_fd_meta, xattr, EntryKind, Meta, Times, Tree};
use crate::rootfs::writeback::Writeback;

/// What a copy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Source entries made equal in the tree (the root included).
    pub entries: u64,
    /// Bytes of file data copied.
    pub bytes: u64,
    /// Tree entries removed because the source does not have them (each counted once,
    /// however much a removed directory held).
    pub removed: u64,
    /// Entries made as hard links to an entry copied before.
    pub hardlinks: u64,
}

/// Chunk between progress reports; the kernel copies each chunk (copy_file_range).
const CHUNK: u64 = 8 * 1024 * 1024;
const LOST_FOUND: &str = "lost+found";

/// Makes `tree` equal to directory `src` (see the module comment); `progress` is told the
/// bytes of file data copied as they are.
pub(crate) fn copy_tree(src: &Path, tree: &Tree, progress: &mut dyn FnMut(u64)) -> Result<CopyStats> {
    let md = fs::symlink_metadata(src).ctx(|| format!("reading source directory {}", src.display()))?;
    if !md.is_dir() {
        return Err(Error::invalid("source", format!("{} is not a directory; give the directory whose content the volume should get", src.display())));
    }
    let mut s = TreeCopy { src, tree, progress, links: HashMap::new(), kept: HashSet::new(), stats: CopyStats::default(), writeback: Writeback::start() };
    s.dir(Path::new(""), &md)?;
    let stats = s.stats;
    s.writeback.finish()?;
    Ok(stats)
}

/// One copy under way: the hard links and kept inodes seen so far, and the counts.
struct TreeCopy<'a> {
    src: &'a Path,
    tree: &'a Tree,
    progress: &'a mut dyn FnMut(u64),
    /// (dev, ino) of multiply-linked source entries -> the tree path copied first.
    links: HashMap<(u64, u64), PathBuf>,
    /// Tree inodes with several names kept by the quick check.
    kept: HashSet<u64>,
    stats: CopyStats,
    /// Copied files go here to be written back while the rest is copied.
    writeback: Writeback,
}

fn kind_of(md: &Metadata, path: &Path) -> Result<EntryKind> {
    EntryKind::from_mode(md.mode()).ok_or_else(|| Error::invalid("source", format!("{} has file type {:o}, which cannot be copied", path.display(), md.mode() & libc::S_IFMT)))
}

fn cpath(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::invalid("path", format!("'{}' contains a NUL byte", path.display())))
}

/// All xattrs of `path`, not following it.
fn read_xattrs(path: &Path) -> Result<Vec<(OsString, Vec<u8>)>> {
    let c = cpath(path)?;
    let mut out = Vec::new();
    for name in xattr::list_path(&c).ctx(|| format!("listing xattrs of {}", path.display()))? {
        match xattr::get_path(&c, &name) {
            Ok(v) => out.push((name, v)),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {} // removed meanwhile
            Err(e) => return Err(e).ctx(|| format!("reading xattr {} of {}", name.to_string_lossy(), path.display())),
        }
    }
    Ok(out)
}

fn times(md: &Metadata) -> Times {
    Times { atime: TimeSpec::new(md.atime(), md.atime_nsec()), mtime: TimeSpec::new(md.mtime(), md.mtime_nsec()) }
}

impl TreeCopy<'_> {
    fn meta(&self, md: &Metadata, path: &Path, exact_xattrs: bool) -> Result<Meta> {
        Ok(Meta {
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            times: Some(times(md)),
            xattrs: read_xattrs(path)?,
            exact_xattrs,
        })
    }

    /// Directory `rel`: extra tree entries removed, children copied, then its own metadata
    /// (times last, after every child was written).
    fn dir(&mut self, rel: &Path, md: &Metadata) -> Result<()> {
        let sp = self.src.join(rel);
        let mut names: Vec<OsString> = fs::read_dir(&sp)
            .and_then(|rd| rd.map(|e| e.map(|e| e.file_name())).collect())
            .ctx(|| format!("listing source directory {}", sp.display()))?;
        names.sort();
        let wanted: HashSet<&OsString> = names.iter().collect();
        for name in self.tree.list(rel)? {
            if wanted.contains(&name) {
                continue;
            }
            let child = rel.join(&name);
            if rel.as_os_str().is_empty() && name == LOST_FOUND && self.tree.kind(&child)? == Some(EntryKind::Dir) {
                continue; // the filesystem's own (module comment)
            }
            self.tree.remove(&child)?;
            self.stats.removed += 1;
        }
        for name in &names {
            self.entry(&rel.join(name))?;
        }
        let meta = self.meta(md, &sp, true)?;
        self.tree.set_meta(rel, EntryKind::Dir, &meta)?;
        self.stats.entries += 1;
        Ok(())
    }

    fn entry(&mut self, rel: &Path) -> Result<()> {
        let sp = self.src.join(rel);
        let md = fs::symlink_metadata(&sp).ctx(|| format!("reading source {}", sp.display()))?;
        let kind = kind_of(&md, &sp)?;
        if kind == EntryKind::Dir {
            self.tree.mkdir(rel)?;
            return self.dir(rel, &md);
        }
        self.stats.entries += 1;
        if md.nlink() > 1 {
            let key = (md.dev(), md.ino());
            if let Some(first) = self.links.get(&key) {
                self.tree.hardlink(rel, first)?;
                self.stats.hardlinks += 1;
                return Ok(());
            }
            self.links.insert(key, rel.to_path_buf());
        }
        match kind {
            EntryKind::File => self.file(rel, &sp, &md),
            EntryKind::Symlink => {
                let target = fs::read_link(&sp).ctx(|| format!("reading symlink {}", sp.display()))?;
                let same = self.tree.kind(rel)? == Some(EntryKind::Symlink) && self.tree.read_link(rel)? == target;
                if !same {
                    self.tree.symlink(rel, &target)?;
                }
                let meta = self.meta(&md, &sp, same)?;
                self.tree.set_meta(rel, kind, &meta)
            }
            _ => {
                self.tree.mknod(rel, kind, md.rdev())?;
                let meta = self.meta(&md, &sp, false)?;
                self.tree.set_meta(rel, kind, &meta)
            }
        }
    }

    fn file(&mut self, rel: &Path, sp: &Path, md: &Metadata) -> Result<()> {
        if let Some(st) = self.tree.stat(rel)? {
            let unchanged = st.st_mode & libc::S_IFMT == libc::S_IFREG
                && st.st_size as u64 == md.size()
                && (st.st_mtime, st.st_mtime_nsec) == (md.mtime(), md.mtime_nsec())
                // A tree inode with other names is kept only for one source hard-link group
                // (whose other names are re-linked to it); anything else is copied anew,
                // which breaks links the source does not have.
                && (st.st_nlink == 1 || (md.nlink() > 1 && self.kept.insert(st.st_ino)));
            if unchanged {
                let meta = self.meta(md, sp, true)?;
                return self.tree.set_meta(rel, EntryKind::File, &meta);
            }
        }
        // O_NOFOLLOW: a source swapped for a symlink since the lstat is not followed.
        let mut from = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(sp)
            .ctx(|| format!("opening source file {} (it must be readable)", sp.display()))?;
        let mut to = self.tree.create_file(rel)?;
        let copied = copy_chunks(&mut from, &mut to, self.progress).ctx(|| format!("copying {} into the tree", sp.display()))?;
        self.stats.bytes += copied;
        let meta = self.meta(md, sp, false)?;
        set_fd_meta(to.as_fd(), &meta).ctx(|| format!("setting metadata of {} in {}", rel.display(), self.tree.path().display()))?;
        self.writeback.hand(to);
        Ok(())
    }
}

/// Copies all of `from` in chunks (each done in the kernel where it can), reporting each.
fn copy_chunks(from: &mut File, to: &mut File, progress: &mut dyn FnMut(u64)) -> io::Result<u64> {
    let mut total = 0;
    loop {
        let n = match io::copy(&mut from.by_ref().take(CHUNK), to) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => r?,
        };
        if n == 0 {
            return Ok(total);
        }
        total += n;
        progress(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::{symlink, FileTypeExt, PermissionsExt};

    use nix::fcntl::AT_FDCWD;
    use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
    use nix::unistd::{fchownat, Gid, Uid};
    use nix::fcntl::AtFlags;

    fn set_xattr(path: &Path, name: &str, value: &[u8]) -> bool {
        match xattr::set_path(&cpath(path).unwrap(), name.as_ref(), value) {
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {
                eprintln!("skipping xattr {name} on {}: {e}", path.display());
                false
            }
            Err(e) => panic!("xattr on {}: {e}", path.display()),
        }
    }

    fn own(path: &Path, uid: u32, gid: u32) {
        fchownat(AT_FDCWD, path, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)), AtFlags::AT_SYMLINK_NOFOLLOW).unwrap();
    }

    fn stamp(path: &Path, sec: i64, nsec: i64) {
        let t = TimeSpec::new(sec, nsec);
        utimensat(AT_FDCWD, path, &TimeSpec::new(sec - 100, 7), &t, UtimensatFlags::NoFollowSymlink).unwrap();
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A source with every kind of entry and metadata rsync -aHAX carries.
    fn source(src: &Path) {
        fs::create_dir_all(src.join("usr/bin")).unwrap();
        fs::create_dir_all(src.join("home/user/.cache")).unwrap();
        fs::create_dir_all(src.join("dev")).unwrap();
        fs::write(src.join("usr/bin/su"), b"su").unwrap();
        chmod(&src.join("usr/bin/su"), 0o4755);
        fs::write(src.join("usr/bin/tool"), vec![5u8; 3_000_000]).unwrap();
        fs::hard_link(src.join("usr/bin/tool"), src.join("usr/bin/tool2")).unwrap();
        fs::hard_link(src.join("usr/bin/tool"), src.join("home/user/tool3")).unwrap();
        fs::write(src.join("home/user/notes"), b"notes").unwrap();
        own(&src.join("home/user/notes"), 1000, 1000);
        chmod(&src.join("home/user/notes"), 0o600);
        own(&src.join("home/user"), 1000, 1000);
        chmod(&src.join("home/user"), 0o2750);
        symlink("/etc/passwd", src.join("home/user/abs")).unwrap();
        own(&src.join("home/user/abs"), 1000, 1000);
        symlink("../../usr/bin/tool", src.join("home/user/rel")).unwrap();
        mknod(&src.join("dev/null"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), libc::makedev(1, 3)).unwrap();
        chmod(&src.join("dev/null"), 0o666);
        mknod(&src.join("dev/fifo"), SFlag::S_IFIFO, Mode::from_bits_truncate(0o640), 0).unwrap();
        drop(std::os::unix::net::UnixListener::bind(src.join("dev/sock")).unwrap());
        fs::write(src.join("empty"), b"").unwrap();
        set_xattr(&src.join("home/user/notes"), "user.tag", b"v1");
        set_xattr(&src.join("usr"), "user.dir", b"d");
        chmod(&src.join("usr/bin"), 0o711);
        // times last, deepest first, as a directory's change moves its mtime
        for (i, p) in ["usr/bin/su", "usr/bin/tool", "home/user/notes", "home/user/abs", "dev/null", "dev/fifo", "dev/sock", "empty", "usr/bin", "home/user/.cache", "home/user", "dev", "usr", "home", ""].iter().enumerate() {
            stamp(&src.join(p), 1_500_000_000 + i as i64, 123_456_789 + i as i64);
        }
    }

    #[derive(Debug, PartialEq)]
    struct Seen {
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: (i64, i64),
        rdev: u64,
        link: Option<PathBuf>,
        data: Option<Vec<u8>>,
        xattrs: Vec<(OsString, Vec<u8>)>,
        /// Index of the first path with the same inode: hard-link identity.
        same_as: Option<PathBuf>,
    }

    /// Everything rsync -aHAX would carry, per path (lost+found of the root left out).
    fn snapshot(root: &Path) -> BTreeMap<PathBuf, Seen> {
        let mut out = BTreeMap::new();
        let mut inodes: HashMap<u64, PathBuf> = HashMap::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let p = root.join(&rel);
            let md = fs::symlink_metadata(&p).unwrap();
            let same_as = if !md.is_dir() && md.nlink() > 1 {
                Some(inodes.entry(md.ino()).or_insert_with(|| rel.clone()).clone())
            } else {
                None
            };
            let mut xattrs = read_xattrs(&p).unwrap();
            xattrs.sort();
            let ft = md.file_type();
            out.insert(rel.clone(), Seen {
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                mtime: (md.mtime(), md.mtime_nsec()),
                rdev: if ft.is_char_device() || ft.is_block_device() { md.rdev() } else { 0 },
                link: ft.is_symlink().then(|| fs::read_link(&p).unwrap()),
                data: ft.is_file().then(|| fs::read(&p).unwrap()),
                xattrs,
                same_as,
            });
            if md.is_dir() {
                let mut names: Vec<_> = fs::read_dir(&p).unwrap().map(|e| e.unwrap().file_name()).collect();
                names.sort();
                for n in names.into_iter().rev() {
                    if rel.as_os_str().is_empty() && n == LOST_FOUND {
                        continue;
                    }
                    stack.push(rel.join(n));
                }
            }
        }
        out
    }

    fn assert_same(src: &Path, dst: &Path) {
        let (a, b) = (snapshot(src), snapshot(dst));
        let keys_a: Vec<_> = a.keys().collect();
        let keys_b: Vec<_> = b.keys().collect();
        assert_eq!(keys_a, keys_b, "same paths");
        for (k, v) in &a {
            assert_eq!(Some(v), b.get(k), "entry {}", k.display());
        }
    }

    #[test]
    fn tree_equals_source() {
        let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        fs::create_dir(&src).unwrap();
        fs::create_dir(&dst).unwrap();
        source(&src);
        // Things --delete removes or replaces, and the filesystem's lost+found it keeps.
        fs::create_dir_all(dst.join("lost+found")).unwrap();
        fs::create_dir_all(dst.join("stale/deep/er")).unwrap();
        fs::write(dst.join("stale/deep/er/f"), b"x").unwrap();
        fs::write(dst.join("usr"), b"a file where the source has a directory").unwrap();
        fs::create_dir_all(dst.join("empty/sub")).unwrap();
        fs::create_dir_all(dst.join("home/user/.cache/old")).unwrap();
        symlink("/", dst.join("dev")).unwrap();
        let tree = Tree::open(&dst).unwrap();
        let mut reported = 0;
        let stats = copy_tree(&src, &tree, &mut |n| reported += n).unwrap();
        assert_same(&src, &dst);
        assert!(dst.join("lost+found").is_dir(), "lost+found of the filesystem stays");
        assert_eq!(stats.bytes, 2 + 3_000_000 + 5);
        assert_eq!(reported, stats.bytes);
        assert_eq!(stats.hardlinks, 2);
        assert_eq!(stats.removed, 2, "stale and home/user/.cache/old");
        assert!(fs::symlink_metadata(dst.join("dev/sock")).unwrap().file_type().is_socket());
        assert_eq!(fs::symlink_metadata(dst.join("usr/bin/su")).unwrap().mode() & 0o7777, 0o4755);

        // Again, after changes on both sides: still equal, unchanged data not copied again.
        fs::write(src.join("home/user/notes"), b"notes v2, longer").unwrap();
        stamp(&src.join("home/user/notes"), 1_600_000_000, 5);
        fs::remove_file(src.join("usr/bin/tool2")).unwrap();
        fs::write(dst.join("junk"), b"j").unwrap();
        stamp(&src.join("home/user"), 1_500_000_000, 1);
        stamp(&src.join("usr/bin"), 1_500_000_000, 2);
        let stats = copy_tree(&src, &tree, &mut |_| {}).unwrap();
        assert_same(&src, &dst);
        assert!(stats.bytes < 3_000_000, "quick check skipped unchanged files: {stats:?}");
    }

    #[test]
    fn source_lost_found_is_copied() {
        let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        fs::create_dir_all(src.join("lost+found")).unwrap();
        fs::write(src.join("lost+found/f"), b"f").unwrap();
        fs::create_dir_all(dst.join("lost+found/old")).unwrap();
        let tree = Tree::open(&dst).unwrap();
        copy_tree(&src, &tree, &mut |_| {}).unwrap();
        let names: Vec<_> = fs::read_dir(dst.join("lost+found")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["f"]);
    }

    #[test]
    fn missing_or_unreadable_source_is_named() {
        let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
        let tree = Tree::open(tmp.path()).unwrap();
        let missing = tmp.path().join("no-such-source");
        let e = copy_tree(&missing, &tree, &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("no-such-source"), "{e}");
        let file = tmp.path().join("a-file");
        fs::write(&file, b"").unwrap();
        let e = copy_tree(&file, &tree, &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("a-file") && e.contains("not a directory"), "{e}");
    }
}
