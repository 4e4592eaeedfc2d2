//! A tar stream applied to a tree as an OCI image layer (image-spec `layer.md`).
//!
//! Entries are written as the tar says: type, numeric owner (names ignored), mode, mtime with
//! PAX nanoseconds, `SCHILY.xattr.*`. Whiteouts apply only to lower layers, never to entries of
//! the same layer, whatever their order in the stream, so markers are collected and applied at
//! the end against the set of paths this layer wrote:
//! - `D/.wh.NAME`: D/NAME is removed unless this layer wrote it; if this layer wrote it as a
//!   directory, only the lower content under it goes (the directory is opaque).
//! - `D/.wh..wh..opq`: every child of D this layer did not write is removed, recursing into
//!   the directories it wrote.
//!
//! Markers are never written. Directory times are set last, deepest first, since writing
//! children and whiteouts changes them. Every write goes through `Tree`, so no entry name, link
//! target or symlink chain reaches outside the root.
//!
//! Paths are matched as the tar names them: a layer entry written through a symlinked parent
//! (`lib/x` with `lib -> usr/lib`) counts as `lib/x`, not `usr/lib/x`, for its own layer's
//! opaque markers.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::time::TimeSpec;
use tar::EntryType;

use crate::error::{Error, IoContext, Result};
use crate::rootfs::tree::{self, set_fd_meta, Kind, Meta, Times, Tree};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
/// aufs' own bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`): not content, skipped as others do.
const AUFS_META: &str = ".wh..wh.";
/// Copy buffer for file data: few large writes.
const BUF: usize = 1024 * 1024;

/// What a layer application did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Tar entries read (markers included).
    pub entries: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    /// Whiteout and opaque markers honoured.
    pub whiteouts: u64,
}

/// Applies the (decompressed) tar stream `tar` to `tree` as an OCI layer. On an empty
/// filesystem this is a plain extraction (what `populate` does with a tar).
pub fn apply(tree: &Tree, tar: impl Read) -> Result<LayerStats> {
    let mut state = State { tree, written: HashSet::new(), whiteouts: Vec::new(), opaque: Vec::new(), dir_times: HashMap::new(), buf: vec![0; BUF], stats: LayerStats::default() };
    let mut archive = tar::Archive::new(tar);
    let entries = archive.entries().ctx(|| "reading the layer's tar stream".to_string())?;
    for entry in entries {
        let mut entry = entry.ctx(|| format!("reading tar entry {} of the layer (the stream is corrupt or truncated)", state.stats.entries + 1))?;
        state.stats.entries += 1;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        state.entry(&mut entry, Path::new(OsStr::from_bytes(&raw))).map_err(|e| in_entry(&name, e))?;
    }
    state.finish()?;
    Ok(state.stats)
}

struct State<'t> {
    tree: &'t Tree,
    /// Paths this layer wrote and all their ancestors.
    written: HashSet<PathBuf>,
    /// Paths named by `.wh.` markers.
    whiteouts: Vec<PathBuf>,
    /// Directories holding an opaque marker.
    opaque: Vec<PathBuf>,
    /// Directories of this layer and the times their headers give.
    dir_times: HashMap<PathBuf, Times>,
    buf: Vec<u8>,
    stats: LayerStats,
}

/// Tells which entry an error is about.
fn in_entry(name: &str, e: Error) -> Error {
    match e {
        Error::Io { context, source } => Error::Io { context: format!("layer entry '{name}': {context}"), source },
        Error::Invalid { what, why } if !why.contains(name) => Error::Invalid { what, why: format!("layer entry '{name}': {why}") },
        e => e,
    }
}

/// What PAX records say beyond what the tar crate already applies (path, size, uid, gid).
#[derive(Default)]
struct Pax {
    mtime: Option<TimeSpec>,
    atime: Option<TimeSpec>,
    xattrs: Vec<(OsString, Vec<u8>)>,
    sparse: bool,
}

impl<'t> State<'t> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>, path: &Path) -> Result<()> {
        let ty = entry.header().entry_type();
        if ty == EntryType::XGlobalHeader {
            return Ok(()); // archive-wide comments and defaults: nothing to write
        }
        let rel = tree::relative(path)?;
        if let Some(name) = rel.file_name().and_then(OsStr::to_str) {
            if let Some(marker) = self.marker(&rel, name)? {
                self.stats.whiteouts += marker as u64;
                return Ok(());
            }
        }
        let pax = pax(entry)?;
        if pax.sparse {
            return Err(Error::invalid("layer", "PAX sparse files (GNU.sparse.*) are not supported; re-create the archive without --sparse"));
        }
        let h = entry.header();
        let mtime = pax.mtime.unwrap_or_else(|| TimeSpec::new(h.mtime().unwrap_or(0) as i64, 0));
        let times = Times { atime: pax.atime.unwrap_or(mtime), mtime };
        let id = |v: std::io::Result<u64>, what: &str| -> Result<u32> {
            let v = v.ctx(|| format!("reading the {what} from the tar header"))?;
            u32::try_from(v).map_err(|_| Error::invalid("layer", format!("{what} {v} does not fit in 32 bits")))
        };
        let mut meta = Meta {
            mode: h.mode().ctx(|| "reading the mode from the tar header".to_string())? & 0o7777,
            uid: id(h.uid(), "uid")?,
            gid: id(h.gid(), "gid")?,
            times: Some(times),
            xattrs: pax.xattrs,
            exact_xattrs: false,
        };
        let tree = self.tree;
        if rel.as_os_str().is_empty() {
            // The layer's "./": the root directory's own metadata.
            if ty != EntryType::Directory {
                return Err(Error::invalid("layer", "the root of the archive is not a directory"));
            }
            meta.times = None;
            tree.set_meta(&rel, Kind::Dir, &meta)?;
            self.dir_times.insert(rel, times);
            return Ok(());
        }
        let kind = match ty {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let mut file = tree.create_file(&rel)?;
                let want = entry.size();
                let got = copy(entry, &mut file, &mut self.buf).ctx(|| "writing the file's data".to_string())?;
                if got != want {
                    return Err(Error::invalid("layer", format!("the file's data ends after {got} of {want} bytes: the archive is truncated")));
                }
                self.stats.bytes += got;
                set_fd_meta(file.as_fd(), &meta).ctx(|| "setting the file's metadata".to_string())?;
                Kind::File
            }
            EntryType::Directory => {
                tree.mkdir(&rel)?;
                meta.times = None;
                tree.set_meta(&rel, Kind::Dir, &meta)?;
                self.dir_times.insert(rel.clone(), times);
                self.wrote(rel);
                return Ok(());
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| Error::invalid("layer", "symlink without a target"))?;
                tree.symlink(&rel, Path::new(OsStr::from_bytes(&target)))?;
                tree.set_meta(&rel, Kind::Symlink, &meta)?;
                Kind::Symlink
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().ok_or_else(|| Error::invalid("layer", "hard link without a target"))?;
                let target = Path::new(OsStr::from_bytes(&target));
                let trel = tree::relative(target).map_err(|_| {
                    Error::invalid("layer", format!("hard link target '{}' has a '..' component; link targets must stay inside the root filesystem", target.display()))
                })?;
                // A link shares its target's inode and metadata: nothing more to set.
                tree.hardlink(&rel, &trel)?;
                Kind::File
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let kind = match ty {
                    EntryType::Char => Kind::CharDev,
                    EntryType::Block => Kind::BlockDev,
                    _ => Kind::Fifo,
                };
                let major = h.device_major().ctx(|| "reading the device major".to_string())?.unwrap_or(0);
                let minor = h.device_minor().ctx(|| "reading the device minor".to_string())?.unwrap_or(0);
                let rdev = if kind == Kind::Fifo { 0 } else { libc::makedev(major, minor) };
                tree.mknod(&rel, kind, rdev)?;
                tree.set_meta(&rel, kind, &meta)?;
                kind
            }
            other => {
                return Err(Error::invalid(
                    "layer",
                    format!("tar entry type {other:?} ('{}') is not supported; re-create the archive with plain files, directories, links and device nodes", ty.as_byte() as char),
                ))
            }
        };
        debug_assert_ne!(kind, Kind::Dir);
        // A later non-directory entry replaced any directory of the same name.
        self.dir_times.remove(&rel);
        self.wrote(rel);
        Ok(())
    }

    /// Records a whiteout or opaque marker; Some(counted) if `name` is a marker.
    fn marker(&mut self, rel: &Path, name: &str) -> Result<Option<bool>> {
        let Some(hidden) = name.strip_prefix(WHITEOUT) else { return Ok(None) };
        let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        if name == OPAQUE {
            self.opaque.push(parent);
            return Ok(Some(true));
        }
        if name.starts_with(AUFS_META) {
            return Ok(Some(false));
        }
        if hidden.is_empty() || hidden == "." {
            return Err(Error::invalid("layer", format!("whiteout '{}' names no entry", rel.display())));
        }
        self.whiteouts.push(parent.join(hidden));
        Ok(Some(true))
    }

    fn wrote(&mut self, rel: PathBuf) {
        let mut p = Some(rel.as_path());
        while let Some(q) = p {
            if !self.written.insert(q.to_path_buf()) && q != rel.as_path() {
                break; // ancestors already recorded
            }
            p = q.parent();
        }
    }

    /// Whiteouts and opaque directories against lower content, then directory times.
    fn finish(&mut self) -> Result<()> {
        let tree = self.tree;
        for path in std::mem::take(&mut self.whiteouts) {
            if !self.written.contains(&path) {
                tree.remove(&path).map_err(|e| in_entry(&format!("whiteout of {}", path.display()), e))?;
            } else if tree.kind(&path)? == Some(Kind::Dir) {
                // Lower D whited out and D made again by this layer: lower content of D goes.
                self.hide_lower(&path)?;
            }
        }
        for dir in std::mem::take(&mut self.opaque) {
            if tree.kind(&dir)? == Some(Kind::Dir) {
                self.hide_lower(&dir)?;
            }
        }
        let mut dirs: Vec<(PathBuf, Times)> = self.dir_times.drain().collect();
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (dir, times) in dirs {
            // Skip a directory a later entry of the layer replaced or removed; set_times would
            // otherwise make its missing parents again.
            if dir.as_os_str().is_empty() || tree.kind(&dir)? == Some(Kind::Dir) {
                tree.set_times(&dir, times)?;
            }
        }
        Ok(())
    }

    /// Removes everything under `dir` this layer did not write.
    fn hide_lower(&self, dir: &Path) -> Result<()> {
        for name in self.tree.list(dir)? {
            let child = dir.join(&name);
            if !self.written.contains(&child) {
                self.tree.remove(&child)?;
            } else if self.tree.kind(&child)? == Some(Kind::Dir) {
                self.hide_lower(&child)?;
            }
        }
        Ok(())
    }
}

/// The PAX records of an entry that the tar crate leaves to us.
fn pax<R: Read>(entry: &mut tar::Entry<R>) -> Result<Pax> {
    let mut out = Pax::default();
    let Some(exts) = entry.pax_extensions().ctx(|| "reading PAX records".to_string())? else { return Ok(out) };
    for ext in exts {
        let ext = ext.ctx(|| "reading a PAX record".to_string())?;
        let key = ext.key_bytes();
        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            out.xattrs.push((OsStr::from_bytes(name).to_os_string(), ext.value_bytes().to_vec()));
        } else if key == b"mtime" {
            out.mtime = Some(pax_time(ext.value_bytes())?);
        } else if key == b"atime" {
            out.atime = Some(pax_time(ext.value_bytes())?);
        } else if key.starts_with(b"GNU.sparse.") {
            out.sparse = true;
        }
    }
    Ok(out)
}

/// A PAX time: decimal seconds with an optional fraction, possibly negative.
fn pax_time(v: &[u8]) -> Result<TimeSpec> {
    let bad = || Error::invalid("layer", format!("PAX time '{}' is not a decimal number of seconds", String::from_utf8_lossy(v)));
    let s = std::str::from_utf8(v).map_err(|_| bad())?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let secs: i64 = secs.parse().map_err(|_| bad())?;
    let mut nsec: i64 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nsec += i64::from(d - b'0') * 10i64.pow(8 - i as u32);
    }
    Ok(if !neg {
        TimeSpec::new(secs, nsec)
    } else if nsec == 0 {
        TimeSpec::new(-secs, 0)
    } else {
        TimeSpec::new(-secs - 1, 1_000_000_000 - nsec)
    })
}

/// Copies until `r` ends; the count tells a truncated entry from a whole one.
fn copy(r: &mut impl Read, w: &mut impl Write, buf: &mut [u8]) -> std::io::Result<u64> {
    let mut total = 0u64;
    loop {
        let n = match r.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use tar::Header;

    /// A tar made entry by entry with raw names, so tests can write what `tar::Builder`'s
    /// checked setters refuse (`..`, absolute paths).
    pub(crate) struct Tar(tar::Builder<Vec<u8>>);

    impl Tar {
        pub(crate) fn new() -> Tar {
            Tar(tar::Builder::new(Vec::new()))
        }

        fn raw(&mut self, path: &str, ty: EntryType, mode: u32, link: Option<&str>, data: &[u8], f: impl FnOnce(&mut Header)) {
            let mut h = Header::new_gnu();
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_entry_type(ty);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_600_000_000);
            h.set_size(data.len() as u64);
            if let Some(l) = link {
                h.set_link_name_literal(l).unwrap();
            }
            f(&mut h);
            h.set_cksum();
            self.0.append(&h, data).unwrap();
        }

        pub(crate) fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
            self.raw(path, EntryType::Regular, 0o644, None, data, |_| {});
            self
        }
        pub(crate) fn file_with(&mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64, mtime: u64) -> &mut Self {
            self.raw(path, EntryType::Regular, mode, None, data, |h| {
                h.set_uid(uid);
                h.set_gid(gid);
                h.set_mtime(mtime);
            });
            self
        }
        pub(crate) fn dir(&mut self, path: &str) -> &mut Self {
            self.raw(path, EntryType::Directory, 0o755, None, b"", |_| {});
            self
        }
        pub(crate) fn dir_with(&mut self, path: &str, mode: u32, mtime: u64) -> &mut Self {
            self.raw(path, EntryType::Directory, mode, None, b"", |h| h.set_mtime(mtime));
            self
        }
        pub(crate) fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
            self.raw(path, EntryType::Symlink, 0o777, Some(target), b"", |_| {});
            self
        }
        pub(crate) fn link(&mut self, path: &str, target: &str) -> &mut Self {
            self.raw(path, EntryType::Link, 0o644, Some(target), b"", |_| {});
            self
        }
        pub(crate) fn node(&mut self, path: &str, ty: EntryType, major: u32, minor: u32) -> &mut Self {
            self.raw(path, ty, 0o620, None, b"", |h| {
                h.set_device_major(major).unwrap();
                h.set_device_minor(minor).unwrap();
            });
            self
        }
        pub(crate) fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
            self.0.append_pax_extensions(records.iter().map(|(k, v)| (*k, *v))).unwrap();
            self
        }
        pub(crate) fn bytes(&mut self) -> Vec<u8> {
            std::mem::replace(&mut self.0, tar::Builder::new(Vec::new())).into_inner().unwrap()
        }
    }

    /// A tempdir on a disk filesystem (xattrs work there, not always on tmpfs) with the tree
    /// at `<tmp>/root`, so writes outside the tree show up as siblings.
    pub(crate) fn scratch() -> (tempfile::TempDir, PathBuf, Tree) {
        let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        let tree = Tree::open(&root).unwrap();
        (tmp, root, tree)
    }

    fn apply_bytes(tree: &Tree, t: Vec<u8>) -> Result<LayerStats> {
        apply(tree, &t[..])
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    fn all_paths(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            out.push(e.path());
            if e.file_type().unwrap().is_dir() {
                all_paths(&e.path(), out);
            }
        }
    }

    fn no_markers(root: &Path) {
        let mut all = Vec::new();
        all_paths(root, &mut all);
        for p in all {
            assert!(!p.file_name().unwrap().to_string_lossy().starts_with(".wh."), "marker written: {}", p.display());
        }
    }

    #[test]
    fn entries_as_the_tar_says() {
        let (_tmp, root, tree) = scratch();
        let mut t = Tar::new();
        t.dir_with("usr/", 0o755, 1_000_000)
            .dir_with("usr/bin/", 0o750, 2_000_000)
            .file_with("usr/bin/su", b"#!/bin/true\n", 0o4755, 0, 0, 1_500_000_000)
            .file_with("usr/bin/tool", &vec![7u8; 700_000], 0o2711, 1000, 1001, 1_400_000_000)
            .symlink("usr/bin/link", "/usr/bin/tool")
            .link("usr/bin/hard", "usr/bin/tool")
            .node("dev/null", EntryType::Char, 1, 3)
            .node("dev/loop9", EntryType::Block, 7, 9)
            .node("run/fifo", EntryType::Fifo, 0, 0)
            .pax(&[("mtime", b"1234567890.123456789"), ("SCHILY.xattr.user.rcx", b"yes")])
            .file("etc/conf", b"c")
            .dir("tmp/")
            .dir_with("tmp/", 0o1777, 3_000_000);
        let stats = apply_bytes(&tree, t.bytes()).unwrap();
        assert_eq!(stats.bytes, 12 + 700_000 + 1);
        assert_eq!(stats.whiteouts, 0);

        let su = fs::symlink_metadata(root.join("usr/bin/su")).unwrap();
        assert_eq!(su.mode() & 0o7777, 0o4755, "setuid kept (mode set after chown)");
        assert_eq!((su.uid(), su.gid(), su.mtime()), (0, 0, 1_500_000_000));
        let tool = fs::symlink_metadata(root.join("usr/bin/tool")).unwrap();
        assert_eq!((tool.mode() & 0o7777, tool.uid(), tool.gid(), tool.len()), (0o2711, 1000, 1001, 700_000));
        assert_eq!(tool.nlink(), 2);
        assert_eq!(fs::symlink_metadata(root.join("usr/bin/hard")).unwrap().ino(), tool.ino());
        assert_eq!(fs::read_link(root.join("usr/bin/link")).unwrap(), Path::new("/usr/bin/tool"));
        let null = fs::symlink_metadata(root.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!((libc::major(null.rdev()), libc::minor(null.rdev()), null.mode() & 0o7777), (1, 3, 0o620));
        assert!(fs::symlink_metadata(root.join("dev/loop9")).unwrap().file_type().is_block_device());
        assert!(fs::symlink_metadata(root.join("run/fifo")).unwrap().file_type().is_fifo());
        let conf = fs::symlink_metadata(root.join("etc/conf")).unwrap();
        assert_eq!((conf.mtime(), conf.mtime_nsec()), (1_234_567_890, 123_456_789));
        let path = CString::new(root.join("etc/conf").into_os_string().into_encoded_bytes()).unwrap();
        match tree::xattr::get_path(&path, OsStr::new("user.rcx")) {
            Ok(v) => assert_eq!(v, b"yes"),
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => eprintln!("skipping the xattr check: {e} on this filesystem"),
            Err(e) => panic!("xattr: {e}"),
        }
        // Directory times survive the children written after them; a repeated entry updates.
        let usr = fs::symlink_metadata(root.join("usr")).unwrap();
        assert_eq!(usr.mtime(), 1_000_000);
        let bin = fs::symlink_metadata(root.join("usr/bin")).unwrap();
        assert_eq!((bin.mtime(), bin.mode() & 0o7777), (2_000_000, 0o750));
        let tmp = fs::symlink_metadata(root.join("tmp")).unwrap();
        assert_eq!((tmp.mtime(), tmp.mode() & 0o7777), (3_000_000, 0o1777));
        // Parents the tar did not list: made 0755, root-owned.
        let run = fs::symlink_metadata(root.join("run")).unwrap();
        assert_eq!((run.mode() & 0o7777, run.uid()), (0o755, 0));
    }

    fn lower(tree: &Tree) {
        let mut t = Tar::new();
        t.dir("a/").file("a/x", b"x").file("a/y", b"y");
        t.dir("b/").file("b/z", b"z").dir("b/deep/").file("b/deep/q", b"q");
        t.file("c", b"c");
        t.dir("d/").file("d/old", b"old");
        t.dir("e/").file("e/old", b"old");
        t.dir("f/").dir("f/sub/").file("f/sub/l", b"l").file("f/keep", b"k");
        apply_bytes(tree, t.bytes()).unwrap();
    }

    /// The upper layer's entries, as (marker?, adder) pairs so tests can order them.
    fn upper(markers_first: bool) -> Vec<u8> {
        let mut t = Tar::new();
        let markers = |t: &mut Tar| {
            t.file("a/.wh.x", b"").file("b/.wh..wh..opq", b"").file(".wh.c", b"").file(".wh.d", b"").file(".wh.e", b"");
            t.file("f/.wh..wh..opq", b"");
        };
        if markers_first {
            markers(&mut t);
        }
        t.file("b/new", b"n").dir("c/").file("c/inside", b"i").dir("e/").file("e/n", b"n").file("f/sub/new", b"n");
        if !markers_first {
            markers(&mut t);
        }
        t.bytes()
    }

    fn check_upper(root: &Path, stats: LayerStats) {
        assert_eq!(stats.whiteouts, 6);
        assert_eq!(names(&root.join("a")), ["y"]);
        assert_eq!(names(&root.join("b")), ["new"], "opaque b hides lower z and deep/");
        assert_eq!(names(&root.join("c")), ["inside"], "file c whited out and replaced by a dir");
        assert!(!root.join("d").exists(), "whiteout of a directory");
        assert_eq!(names(&root.join("e")), ["n"], "dir whited out and made again: lower content gone");
        assert_eq!(names(&root.join("f")), ["sub"]);
        assert_eq!(names(&root.join("f/sub")), ["new"]);
        no_markers(root);
    }

    #[test]
    fn whiteouts_before_entries() {
        let (_tmp, root, tree) = scratch();
        lower(&tree);
        check_upper(&root, apply_bytes(&tree, upper(true)).unwrap());
    }

    #[test]
    fn whiteouts_after_entries() {
        let (_tmp, root, tree) = scratch();
        lower(&tree);
        check_upper(&root, apply_bytes(&tree, upper(false)).unwrap());
    }

    #[test]
    fn whiteout_of_missing_entry_is_harmless() {
        let (_tmp, root, tree) = scratch();
        let mut t = Tar::new();
        t.file("nothing/.wh.here", b"").file(".wh.gone", b"").file("x/.wh..wh..opq", b"").file("x/y", b"y");
        assert_eq!(apply_bytes(&tree, t.bytes()).unwrap().whiteouts, 3);
        assert_eq!(names(&root), ["x"]);
        assert_eq!(names(&root.join("x")), ["y"]);
    }

    fn refused(t: Vec<u8>, needle: &str) {
        let (tmp, _root, tree) = scratch();
        let e = apply_bytes(&tree, t).unwrap_err().to_string();
        assert!(e.contains(needle), "error '{e}' should name '{needle}'");
        assert_eq!(names(tmp.path()), ["root"], "nothing written beside the tree");
    }

    #[test]
    fn parent_components_refused() {
        refused(Tar::new().file("../x", b"bad").bytes(), "../x");
        refused(Tar::new().dir("a/").file("a/../../x", b"bad").bytes(), "a/../../x");
        refused(Tar::new().file("f", b"f").link("l", "../../etc/passwd").bytes(), "../../etc/passwd");
        refused(Tar::new().symlink("s", "x").link("../l", "s").bytes(), "../l");
    }

    fn unique(tag: &str) -> String {
        format!("rcx-dm-layer-test-{tag}-{}", std::process::id())
    }

    #[test]
    fn absolute_names_are_root_relative() {
        let (tmp, root, tree) = scratch();
        let name = unique("abs");
        apply_bytes(&tree, Tar::new().file(&format!("/etc/{name}"), b"in").bytes()).unwrap();
        assert!(!Path::new("/etc").join(&name).exists());
        assert_eq!(fs::read(root.join("etc").join(&name)).unwrap(), b"in");
        assert_eq!(names(tmp.path()), ["root"]);
    }

    #[test]
    fn symlinks_resolve_inside_the_tree() {
        let (tmp, root, tree) = scratch();
        let (n1, n2, n3) = (unique("evil"), unique("up"), unique("chain"));
        let mut t = Tar::new();
        t.symlink("evil", "/").file(&format!("evil/{n1}"), b"1");
        t.symlink("up", "../../..").file(&format!("up/{n2}"), b"2");
        t.symlink("a", "b").symlink("b", "/tmp").file(&format!("a/{n3}"), b"3");
        t.symlink("h", "/etc/passwd").link("hl", "h");
        apply_bytes(&tree, t.bytes()).unwrap();
        for n in [&n1, &n2] {
            assert!(!Path::new("/").join(n).exists(), "{n} written on the host");
            assert!(root.join(n).exists(), "{n} not in the tree");
        }
        assert!(!Path::new("/tmp").join(&n3).exists());
        assert!(root.join("a").join(&n3).exists() || root.join("tmp").join(&n3).exists());
        // A hard link to a symlink links the symlink, never its host target.
        assert_eq!(fs::read_link(root.join("hl")).unwrap(), Path::new("/etc/passwd"));
        assert_eq!(names(tmp.path()), ["root"]);
    }

    #[test]
    fn symlink_parent_followed_within_root() {
        // merged-usr: lib -> usr/lib; a later lib/x lands in usr/lib/x.
        let (_tmp, root, tree) = scratch();
        apply_bytes(&tree, Tar::new().dir("usr/lib/").symlink("lib", "usr/lib").bytes()).unwrap();
        apply_bytes(&tree, Tar::new().file("lib/x", b"x").bytes()).unwrap();
        assert_eq!(fs::read(root.join("usr/lib/x")).unwrap(), b"x");
        assert!(fs::symlink_metadata(root.join("lib")).unwrap().file_type().is_symlink());
    }

    #[test]
    fn replacing_entries() {
        let (_tmp, root, tree) = scratch();
        apply_bytes(&tree, Tar::new().dir("d/").file("d/f", b"f").file("f", b"f").symlink("s", "d").bytes()).unwrap();
        // a file over a dir, a dir over a file, a file over a symlink (not through it)
        apply_bytes(&tree, Tar::new().file("d", b"now a file").dir("f/").file("s", b"plain").bytes()).unwrap();
        assert_eq!(fs::read(root.join("d")).unwrap(), b"now a file");
        assert!(root.join("f").is_dir());
        assert_eq!(fs::read(root.join("s")).unwrap(), b"plain");
    }

    #[test]
    fn truncated_archive_is_an_error() {
        let (_tmp, _root, tree) = scratch();
        let full = Tar::new().file("big", &vec![1u8; 100_000]).bytes();
        let cut = full[..512 + 50_000].to_vec();
        assert!(apply_bytes(&tree, cut).is_err());
    }

    #[test]
    fn unsupported_type_is_an_error() {
        let (_tmp, _root, tree) = scratch();
        let mut t = Tar::new();
        t.raw("vol", EntryType::new(b'V'), 0o644, None, b"", |_| {});
        let e = apply_bytes(&tree, t.bytes()).unwrap_err().to_string();
        assert!(e.contains("not supported") && e.contains("vol"), "{e}");
    }

    #[test]
    fn pax_times() {
        assert_eq!(pax_time(b"12.5").unwrap(), TimeSpec::new(12, 500_000_000));
        assert_eq!(pax_time(b"7").unwrap(), TimeSpec::new(7, 0));
        assert_eq!(pax_time(b"-1.25").unwrap(), TimeSpec::new(-2, 750_000_000));
        assert!(pax_time(b"1e9").is_err());
    }
}
