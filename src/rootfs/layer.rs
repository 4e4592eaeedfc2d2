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
//! Whiteout names are matched as bytes, like every other name: `.wh.` followed by a name that
//! is not UTF-8 hides that name. A whiteout whose parent cannot be resolved (a symlink loop)
//! names nothing that can exist and is a no-op.
//!
//! Hostile archives are bounded (issue 13): what the tar reader reads on its own for one entry
//! (headers, GNU long name and link, PAX records, GNU sparse map, the data of entries that are
//! not files) is capped at [`MAX_ENTRY_HEADER_BYTES`], and GNU sparse files keep their holes
//! (never written as zeros) up to an apparent size of [`MAX_SPARSE_FILE_BYTES`].
//!
//! Paths are matched as the tar names them: a layer entry written through a symlinked parent
//! (`lib/x` with `lib -> usr/lib`) counts as `lib/x`, not `usr/lib/x`, for its own layer's
//! opaque markers.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

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

/// What the tar reader may read on its own for one entry before it hands the entry over: the
/// header blocks, a GNU long name and long link, a PAX extended header, a GNU sparse map, and
/// the data of an entry that is not written anywhere (a marker, a directory, a link). The tar
/// crate reads long names and PAX records whole into memory, so without a cap a compressed
/// layer of a few MiB could make it allocate gigabytes. Real archives need a few KiB; Go's
/// archive/tar, which Docker, containerd and BuildKit write and read layers with, refuses such
/// a record over 1 MiB (`maxSpecialFileSize`). 4 MiB leaves room for all of them at once
/// (and about 170,000 sparse segments).
pub const MAX_ENTRY_HEADER_BYTES: u64 = 4 << 20;

/// The largest apparent size of a GNU sparse file. Holes are not written, but the tar crate
/// still hands them over as zeros to skip, about 20 GB/s: 1 TiB is under a minute, while an
/// unchecked header could claim 16 EiB. Larger than any sparse file seen in images (lastlog of
/// a high UID, a VM disk image).
pub const MAX_SPARSE_FILE_BYTES: u64 = 1 << 40;

/// The largest GNU sparse map, in bytes of tar headers (21 segments per 512-byte block, so
/// about 21,000 segments). The tar crate walks the map with `Vec::remove(0)`, quadratic in the
/// number of segments: at this size that is a few seconds, at the full entry budget minutes.
pub const MAX_SPARSE_MAP_BYTES: u64 = 512 << 10;

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
    let budget = Rc::new(Budget { counting: Cell::new(true), ..Budget::default() });
    let mut state = State { tree, written: HashSet::new(), whiteouts: Vec::new(), opaque: Vec::new(), dir_times: HashMap::new(), buf: vec![0; BUF], stats: LayerStats::default(), budget: budget.clone() };
    let mut archive = tar::Archive::new(Guarded { inner: tar, budget: budget.clone() });
    let entries = archive.entries().ctx(|| "reading the layer's tar stream".to_string())?;
    for entry in entries {
        let n = state.stats.entries + 1;
        let mut entry = match entry {
            Ok(e) => e,
            Err(_) if budget.tripped.get() => return Err(header_limit(n)),
            Err(e) => return Err(e).ctx(|| format!("reading tar entry {n} of the layer (the stream is corrupt or truncated)")),
        };
        // The entry's own data is read by us, through it, and is not the reader's overhead.
        budget.counting.set(false);
        state.stats.entries = n;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        state.entry(&mut entry, Path::new(OsStr::from_bytes(&raw))).map_err(|e| in_entry(&name, e))?;
        budget.used.set(0);
        budget.counting.set(true);
    }
    state.finish()?;
    Ok(state.stats)
}

fn header_limit(entry: u64) -> Error {
    Error::LimitExceeded {
        what: format!("the tar stream, at entry {entry},"),
        limit: format!("{} MiB of tar headers for one entry", MAX_ENTRY_HEADER_BYTES >> 20),
        why: "its GNU long name or link, PAX records or GNU sparse map, or the data of an entry that is not a file, go on past it; \
              real archives need a few KiB, and Go's archive/tar (Docker, containerd) refuses such records over 1 MiB"
            .to_string(),
    }
}

/// Shared between [`apply`] and the reader under the tar crate: while `counting`, the tar
/// crate is reading on its own (headers and what it skips or keeps in memory), and at most
/// [`MAX_ENTRY_HEADER_BYTES`] of that per entry.
#[derive(Default)]
struct Budget {
    counting: Cell<bool>,
    /// Bytes read while counting, since the last entry was handed over.
    used: Cell<u64>,
    /// Bytes read while not counting: an entry's data from the stream (a sparse file's holes
    /// come from the tar crate itself and never pass here).
    passed: Cell<u64>,
    tripped: Cell<bool>,
}

struct Guarded<R> {
    inner: R,
    budget: Rc<Budget>,
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let b = &self.budget;
        if !b.counting.get() {
            let n = self.inner.read(buf)?;
            b.passed.set(b.passed.get() + n as u64);
            return Ok(n);
        }
        let left = MAX_ENTRY_HEADER_BYTES.saturating_sub(b.used.get());
        if left == 0 && !buf.is_empty() {
            b.tripped.set(true);
            return Err(std::io::Error::other(format!("over {MAX_ENTRY_HEADER_BYTES} bytes of tar headers for one entry")));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        b.used.set(b.used.get() + n as u64);
        Ok(n)
    }
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
    budget: Rc<Budget>,
}

/// Tells which entry an error is about.
fn in_entry(name: &str, e: Error) -> Error {
    match e {
        Error::Io { context, source } => Error::Io { context: format!("layer entry '{name}': {context}"), source },
        Error::Invalid { what, why } if !why.contains(name) => Error::Invalid { what, why: format!("layer entry '{name}': {why}") },
        Error::LimitExceeded { what, limit, why } if !what.contains(name) => Error::LimitExceeded { what: format!("layer entry '{name}': {what}"), limit, why },
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
        if let Some(name) = rel.file_name() {
            if let Some(marker) = self.marker(&rel, name.as_bytes())? {
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
                let want = entry.size();
                let sparse = ty == EntryType::GNUSparse;
                if sparse && self.budget.used.get() > MAX_SPARSE_MAP_BYTES {
                    return Err(Error::LimitExceeded {
                        what: "a GNU sparse file".to_string(),
                        limit: format!("{} KiB of sparse map, about 21,000 segments", MAX_SPARSE_MAP_BYTES >> 10),
                        why: format!("its headers take {} bytes", self.budget.used.get()),
                    });
                }
                if sparse && want > MAX_SPARSE_FILE_BYTES {
                    return Err(Error::LimitExceeded {
                        what: "a GNU sparse file".to_string(),
                        limit: format!("{} TiB of apparent size", MAX_SPARSE_FILE_BYTES >> 40),
                        why: format!("its header says {want} bytes"),
                    });
                }
                let mut file = tree.create_file(&rel)?;
                let (got, data) = if sparse {
                    copy_sparse(entry, &file, &mut self.buf, &self.budget).ctx(|| "writing the sparse file's data".to_string())?
                } else {
                    let got = copy(entry, &mut file, &mut self.buf).ctx(|| "writing the file's data".to_string())?;
                    (got, got)
                };
                if got != want {
                    return Err(Error::invalid("layer", format!("the file's data ends after {got} of {want} bytes: the archive is truncated")));
                }
                self.stats.bytes += data;
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
                // GNU tar leaves a FIFO's device fields empty (found by fuzzing): read them only
                // for devices.
                let rdev = if kind == Kind::Fifo {
                    0
                } else {
                    let major = h.device_major().ctx(|| "reading the device major".to_string())?.unwrap_or(0);
                    let minor = h.device_minor().ctx(|| "reading the device minor".to_string())?.unwrap_or(0);
                    libc::makedev(major, minor)
                };
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
    /// `name` is bytes: a whiteout of a name that is not UTF-8 is a whiteout all the same.
    fn marker(&mut self, rel: &Path, name: &[u8]) -> Result<Option<bool>> {
        let Some(hidden) = name.strip_prefix(WHITEOUT.as_bytes()) else { return Ok(None) };
        let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        if name == OPAQUE.as_bytes() {
            self.opaque.push(parent);
            return Ok(Some(true));
        }
        if name.starts_with(AUFS_META.as_bytes()) {
            return Ok(Some(false));
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(Error::invalid("layer", format!("whiteout '{}' names no entry", rel.display())));
        }
        self.whiteouts.push(parent.join(OsStr::from_bytes(hidden)));
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

/// Copies a GNU sparse entry until it ends, leaving its holes as holes: the tar crate hands
/// a hole over as zeros of its own, which never pass through the stream's reader (`budget.passed`
/// does not move), so those runs are skipped and only the data is written, where the map puts
/// it. (apparent size, data bytes written)
fn copy_sparse(r: &mut impl Read, file: &File, buf: &mut [u8], budget: &Budget) -> std::io::Result<(u64, u64)> {
    let (mut total, mut data) = (0u64, 0u64);
    loop {
        let before = budget.passed.get();
        let n = match r.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // One read is one piece of the map, all data or all hole.
        if budget.passed.get() != before {
            file.write_all_at(&buf[..n], total)?;
            data += n as u64;
        }
        total += n as u64;
    }
    // Ending in a hole: the size alone makes it.
    file.set_len(total)?;
    Ok((total, data))
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
    use std::os::unix::ffi::OsStringExt;
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

    /// Found by fuzzing: GNU tar (`mkfifo f; tar cf x.tar f`) leaves a FIFO's device number
    /// fields all NUL, and the layer was refused reading them.
    #[test]
    fn a_gnu_tar_fifo_with_empty_device_fields_is_made() {
        let (_tmp, root, tree) = scratch();
        let mut h = tar::Header::new_gnu();
        h.set_path("f").unwrap();
        h.set_entry_type(EntryType::Fifo);
        h.set_size(0);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        let g = h.as_gnu_mut().unwrap();
        g.dev_major = [0; 8];
        g.dev_minor = [0; 8];
        h.set_cksum();
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend([0u8; 1024]);
        apply_bytes(&tree, bytes).unwrap();
        assert!(fs::symlink_metadata(root.join("f")).unwrap().file_type().is_fifo());
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

    // ---- hostile archives (issue 13, defects 8 and 11)

    /// Counts the bytes a consumer took from the reader inside.
    struct Counting<R> {
        inner: R,
        taken: std::rc::Rc<std::cell::Cell<u64>>,
    }
    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.taken.set(self.taken.get() + n as u64);
            Ok(n)
        }
    }

    /// A header block of type `ty` whose size field says `size`.
    fn header_block(name: &str, ty: EntryType, size: u64) -> Vec<u8> {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(ty);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(size);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    /// A stream of `head`, then `size` bytes of `fill` generated as they are read (never in
    /// memory here), padding, then a small plain file and the end of the archive.
    fn lazy_record(head: Vec<u8>, fill: u8, size: u64) -> impl Read {
        let pad = (512 - size % 512) % 512;
        let tail = Tar::new().file("after", b"a").bytes();
        std::io::Cursor::new(head)
            .chain(std::io::repeat(fill).take(size))
            .chain(std::io::repeat(0).take(pad))
            .chain(std::io::Cursor::new(tail))
    }

    /// Applies `r` and returns the error and how many bytes were taken from it.
    fn apply_counted(r: impl Read) -> (String, u64) {
        let (tmp, _root, tree) = scratch();
        let taken = std::rc::Rc::new(std::cell::Cell::new(0));
        let e = apply(&tree, Counting { inner: r, taken: taken.clone() }).expect_err("a bomb must be refused").to_string();
        assert_eq!(names(tmp.path()), ["root"], "nothing written beside the tree");
        (e, taken.get())
    }

    #[test]
    fn long_name_and_pax_records_are_capped() {
        // What a 3 MiB gzip or 100 KiB zstd layer decompresses to: the tar crate reads such a
        // record whole into one Vec before it hands over the entry.
        let big = 256u64 << 20;
        for (what, ty) in [("GNU long name", EntryType::GNULongName), ("GNU long link", EntryType::GNULongLink), ("PAX", EntryType::XHeader)] {
            let (e, taken) = apply_counted(lazy_record(header_block("././@LongLink", ty, big), b'a', big));
            assert!(taken <= MAX_ENTRY_HEADER_BYTES + (1 << 20), "{what}: {taken} bytes read before the entry was refused");
            assert!(e.contains("limit") && e.contains("4 MiB") && e.contains("refused"), "{what}: {e}");
        }
        // Data of an entry that is not written anywhere (a marker, a directory) is skipped by
        // reading it: bounded the same way.
        let (e, taken) = apply_counted(lazy_record(header_block("d/", EntryType::Directory, big), 0, big));
        assert!(taken <= MAX_ENTRY_HEADER_BYTES + (1 << 20), "{taken}");
        assert!(e.contains("limit"), "{e}");
    }

    /// `block` over and over, `total` bytes in all.
    struct Cycle {
        block: Vec<u8>,
        at: usize,
        left: u64,
    }
    impl Read for Cycle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.block.len() - self.at).min(self.left as usize);
            buf[..n].copy_from_slice(&self.block[self.at..self.at + n]);
            self.at = (self.at + n) % self.block.len();
            self.left -= n as u64;
            Ok(n)
        }
    }

    /// A 12-byte numeric field: octal, or GNU base-256 when too large.
    fn num_field(dst: &mut [u8; 12], v: u64) {
        if v < 1 << 33 {
            dst.copy_from_slice(format!("{v:011o}\0").as_bytes());
        } else {
            dst.fill(0);
            dst[0] = 0x80;
            dst[4..].copy_from_slice(&v.to_be_bytes());
        }
    }

    /// A GNU sparse header: `segments` (offset, length) in the header itself, `real` the
    /// apparent size, `extended` if extension blocks follow.
    fn sparse_header(name: &str, segments: &[(u64, u64)], real: u64, extended: bool) -> Header {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(EntryType::GNUSparse);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(segments.iter().map(|s| s.1).sum());
        let g = h.as_gnu_mut().unwrap();
        for (i, (off, len)) in segments.iter().enumerate() {
            num_field(&mut g.sparse[i].offset, *off);
            num_field(&mut g.sparse[i].numbytes, *len);
        }
        g.isextended[0] = extended as u8;
        g.set_real_size(real);
        h.set_cksum();
        h
    }

    #[test]
    fn gnu_sparse_map_is_capped() {
        // A sparse header whose extension blocks never end (each would hold 21 more segments).
        let h = sparse_header("s", &[], 1 << 20, true);
        let mut ext = tar::GnuExtSparseHeader::new();
        ext.isextended[0] = 1;
        let endless = std::io::Cursor::new(h.as_bytes().to_vec()).chain(Cycle { block: ext.as_bytes().to_vec(), at: 0, left: 256 << 20 });
        let (e, taken) = apply_counted(endless);
        assert!(taken <= MAX_ENTRY_HEADER_BYTES + (1 << 20), "{taken} bytes read");
        assert!(e.contains("limit") && e.contains("refused"), "{e}");
    }

    #[test]
    fn gnu_sparse_segment_count_is_capped() {
        // 2000 extension blocks of 21 segments of 512 bytes each: under the entry budget, over
        // the sparse map cap.
        let blocks = 2000u64;
        let per = 21u64;
        let h = sparse_header("many", &[], 2 * 512 * per * blocks - 512, true);
        let mut h = h;
        h.set_size(512 * per * blocks);
        h.set_cksum();
        let mut exts = Vec::new();
        for b in 0..blocks {
            let mut ext = tar::GnuExtSparseHeader::new();
            for i in 0..per {
                let off = 2 * 512 * (b * per + i);
                num_field(&mut ext.sparse[i as usize].offset, off);
                num_field(&mut ext.sparse[i as usize].numbytes, 512);
            }
            ext.isextended[0] = (b + 1 < blocks) as u8;
            exts.extend_from_slice(ext.as_bytes());
        }
        let r = std::io::Cursor::new(h.as_bytes().to_vec()).chain(std::io::Cursor::new(exts)).chain(std::io::repeat(b'd').take(512 * per * blocks));
        let (tmp, root, tree) = scratch();
        let t = std::time::Instant::now();
        let e = apply(&tree, r).unwrap_err().to_string();
        assert!(e.contains("limit") && e.contains("sparse map") && e.contains("many"), "{e}");
        assert!(t.elapsed().as_secs() < 10, "{:?}", t.elapsed());
        assert_eq!(names(tmp.path()), ["root"]);
        assert!(names(&root).is_empty());
    }

    #[test]
    fn gnu_sparse_holes_stay_holes() {
        let (_tmp, root, tree) = scratch();
        let mib = 1u64 << 20;
        // 64 MiB apparent: 4 KiB of data at 32 MiB, 4 KiB at the end.
        let h = sparse_header("sparse", &[(32 * mib, 4096), (64 * mib - 4096, 4096)], 64 * mib, false);
        let mut data = vec![b'x'; 4096];
        data.extend(vec![b'y'; 4096]);
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &data[..]).unwrap();
        let t = b.into_inner().unwrap();
        let stats = apply_bytes(&tree, t).unwrap();
        let p = root.join("sparse");
        let m = fs::metadata(&p).unwrap();
        assert_eq!(m.len(), 64 * mib);
        assert_eq!((m.mode() & 0o7777, m.mtime()), (0o644, 1_600_000_000));
        let all = fs::read(&p).unwrap();
        assert!(all[..32 * mib as usize].iter().all(|&b| b == 0));
        assert_eq!(&all[32 * mib as usize..32 * mib as usize + 4096], &data[..4096]);
        assert_eq!(&all[64 * mib as usize - 4096..], &data[4096..]);
        assert!(m.blocks() * 512 <= mib, "holes were written as zeros: {} bytes allocated", m.blocks() * 512);
        assert_eq!(stats.bytes, 8192, "only the data counts as written");
        // Ending in a hole: GNU tar's final zero-length segment at the apparent size.
        let h = sparse_header("tail", &[(0, 512), (16 * mib, 0)], 16 * mib, false);
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &[b'z'; 512][..]).unwrap();
        apply_bytes(&tree, b.into_inner().unwrap()).unwrap();
        let m = fs::metadata(root.join("tail")).unwrap();
        assert_eq!(m.len(), 16 * mib);
        assert!(m.blocks() * 512 <= mib, "{}", m.blocks());
    }

    #[test]
    fn gnu_sparse_apparent_size_is_capped() {
        // One byte of data, an apparent size past the cap: refused before anything is written
        // (holes or zeros, producing them would take hours).
        let h = sparse_header("huge", &[(MAX_SPARSE_FILE_BYTES, 512)], MAX_SPARSE_FILE_BYTES + 512, false);
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &[b'z'; 512][..]).unwrap();
        let (tmp, root, tree) = scratch();
        let e = apply_bytes(&tree, b.into_inner().unwrap()).unwrap_err().to_string();
        assert!(e.contains("limit") && e.contains("huge") && e.contains("TiB"), "{e}");
        assert_eq!(names(tmp.path()), ["root"]);
        assert!(names(&root).is_empty(), "{:?}", names(&root));
    }

    /// A file named by raw bytes (not UTF-8).
    fn raw_name_file(t: &mut Tar, name: &[u8]) {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(1);
        h.set_cksum();
        t.0.append(&h, &b"x"[..]).unwrap();
    }

    #[test]
    fn non_utf8_whiteouts_are_honoured() {
        let (_tmp, root, tree) = scratch();
        let mut t = Tar::new();
        raw_name_file(&mut t, b"d/caf\xe9");
        raw_name_file(&mut t, b"d/keep\xff");
        apply_bytes(&tree, t.bytes()).unwrap();
        let mut t = Tar::new();
        raw_name_file(&mut t, b"d/.wh.caf\xe9");
        raw_name_file(&mut t, b".wh.\xfe\xfe");
        let stats = apply_bytes(&tree, t.bytes()).unwrap();
        assert_eq!(stats.whiteouts, 2);
        let left: Vec<Vec<u8>> = fs::read_dir(root.join("d")).unwrap().map(|e| e.unwrap().file_name().into_vec()).collect();
        assert_eq!(left, [b"keep\xff".to_vec()], "the whited-out file goes, no marker is written");
        assert_eq!(names(&root), ["d"]);
    }

    #[test]
    fn whiteouts_under_looping_symlinks_are_no_ops() {
        let (_tmp, root, tree) = scratch();
        apply_bytes(&tree, Tar::new().symlink("self", "self").symlink("a", "b").symlink("b", "a").file("f", b"f").bytes()).unwrap();
        let mut t = Tar::new();
        t.file("self/.wh.x", b"").file("a/sub/.wh.y", b"").file("b/.wh..wh..opq", b"").file("g", b"g");
        let stats = apply_bytes(&tree, t.bytes()).unwrap();
        assert_eq!(stats.whiteouts, 3);
        assert_eq!(names(&root), ["a", "b", "f", "g", "self"]);
        assert_eq!(fs::read_link(root.join("self")).unwrap(), Path::new("self"));
        assert_eq!(fs::read_link(root.join("a")).unwrap(), Path::new("b"));
    }

    #[test]
    fn whiteouts_through_symlinks_stay_inside_the_root() {
        let (tmp, root, tree) = scratch();
        fs::write(tmp.path().join("sibling"), b"host").unwrap();
        let mut t = Tar::new();
        t.symlink("up", "..").symlink("abs", "/").symlink("far", "../../../..").file("sibling", b"in the tree");
        apply_bytes(&tree, t.bytes()).unwrap();
        let mut t = Tar::new();
        t.file("up/.wh.sibling", b"").file("abs/.wh.sibling", b"").file("far/.wh.sibling", b"").file("far/.wh..wh..opq", b"");
        apply_bytes(&tree, t.bytes()).unwrap();
        assert_eq!(fs::read(tmp.path().join("sibling")).unwrap(), b"host", "a host file was whited out");
        // Followed inside the root (as containerd's applier does): the tree's own sibling goes.
        assert!(!root.join("sibling").exists());
        assert_eq!(names(tmp.path()), ["root", "sibling"]);
    }
}
