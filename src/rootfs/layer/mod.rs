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
//! Hostile archives are bounded: what the tar reader reads on its own for one entry
//! (headers, GNU long name and link, PAX records, GNU sparse map, the data of entries that are
//! not files) is capped at [`MAX_ENTRY_HEADER_BYTES`], and GNU sparse files keep their holes
//! (never written as zeros) up to an apparent size of [`MAX_SPARSE_FILE_BYTES`].
//!
//! Paths are matched as the tar names them: a layer entry written through a symlinked parent
//! (`lib/x` with `lib -> usr/lib`) counts as `lib/x`, not `usr/lib/x`, for its own layer's
//! opaque markers.
//!
//! The work is split by concern: `entry` writes one tar entry (type, owner, mode, times, PAX
//! records, file data), `whiteout` collects markers and applies them at the end, `limits`
//! bounds what the tar reader may read on its own; this file runs the stream through them.

mod entry;
mod limits;
#[cfg(test)]
mod test_util;
mod whiteout;

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::error::{Error, IoContext, Result};
use crate::rootfs::tree::{Times, Tree};
use crate::rootfs::writeback::Writeback;

use limits::{header_limit, Budget, Guarded};
pub use limits::{MAX_ENTRY_HEADER_BYTES, MAX_SPARSE_FILE_BYTES, MAX_SPARSE_MAP_BYTES};

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
    let budget = Rc::new(Budget { counting: Cell::new(true), ..Budget::default() });
    let state = State::new(tree, budget.clone(), None);
    let mut archive = tar::Archive::new(Guarded { inner: tar, budget: budget.clone() });
    let entries = archive.entries().ctx(|| "reading the layer's tar stream".to_string())?;
    state.run(entries)
}

/// [`apply`] for a plain (uncompressed) tar in a regular file: the headers are read from it,
/// and each file's data is copied by the kernel from where it lies in the archive (sendfile:
/// page cache to page cache, never through this process's memory) and skipped with a seek.
/// That saves two copies of every byte against reading the stream (into a buffer, then out of
/// it). `progress` is told the file data bytes as they are copied.
pub fn apply_file<'t>(tree: &'t Tree, file: File, progress: impl FnMut(u64) + 't) -> Result<LayerStats> {
    // A second descriptor of the same file: sendfile with an offset neither uses nor moves
    // the file position the header reader seeks.
    let data = file.try_clone().ctx(|| "duplicating the archive's descriptor".to_string())?;
    let budget = Rc::new(Budget { counting: Cell::new(true), ..Budget::default() });
    let state = State::new(tree, budget.clone(), Some(DataFile { file: data, progress: Box::new(progress) }));
    let mut archive = tar::Archive::new(Guarded { inner: file, budget: budget.clone() });
    let entries = archive.entries_with_seek().ctx(|| "reading the layer's tar stream".to_string())?;
    state.run(entries)
}

/// The archive file a plain tar is applied from, for its files' data (see [`apply_file`]).
struct DataFile<'t> {
    file: File,
    progress: Box<dyn FnMut(u64) + 't>,
}

impl<'t> State<'t> {
    fn new(tree: &'t Tree, budget: Rc<Budget>, data: Option<DataFile<'t>>) -> State<'t> {
        State { tree, written: HashSet::new(), whiteouts: Vec::new(), opaque: Vec::new(), dir_times: HashMap::new(), buf: vec![0; BUF], stats: LayerStats::default(), budget, writeback: Writeback::start(), data }
    }

    fn run<R: Read>(mut self, entries: tar::Entries<'_, R>) -> Result<LayerStats> {
        let budget = self.budget.clone();
        for entry in entries {
            let n = self.stats.entries + 1;
            let mut entry = match entry {
                Ok(e) => e,
                Err(_) if budget.tripped.get() => return Err(header_limit(n)),
                Err(e) => return Err(e).ctx(|| format!("reading tar entry {n} of the layer (the stream is corrupt or truncated)")),
            };
            // The entry's own data is read by us, through it, and is not the reader's overhead.
            budget.counting.set(false);
            self.stats.entries = n;
            let raw = entry.path_bytes().into_owned();
            let name = String::from_utf8_lossy(&raw).into_owned();
            self.entry(&mut entry, Path::new(OsStr::from_bytes(&raw))).map_err(|e| in_entry(&name, e))?;
            budget.used.set(0);
            budget.counting.set(true);
        }
        self.finish()?;
        let stats = self.stats;
        self.writeback.finish()?;
        Ok(stats)
    }
}

/// One layer being applied: what it wrote so far and what it leaves for the end.
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
    /// Finished files go here to be written back while the rest of the layer is applied.
    writeback: Writeback,
    /// The archive file, when file data is copied from it rather than read from the stream.
    data: Option<DataFile<'t>>,
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
