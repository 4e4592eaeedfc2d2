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
}
