//! Formatting a volume, and replacing its content with a tar, a directory or an OCI image,
//! all or nothing.
//!
//! Populate never writes to the target volume itself. It fills a scratch volume (an empty
//! filesystem: a snapshot of the base of the target's size and filesystem), and only when the
//! source was applied completely (archive intact, digests right, unmount clean) gives the
//! target that content with the pool's crash-safe revert and deletes the scratch. A corrupt
//! archive, a killed rcx-dm or a full pool leaves the target exactly as it was; at worst a
//! scratch volume named `populate-<id>` is left, which the next populate of that id removes.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::fs::{self, Fs};
use super::{archive, base, copy, layer, mount, oci, tree::Tree};
use crate::error::{Error, IoContext, Result};
use crate::pool::store::VolumeRecord;
use crate::pool::{Pool, VolRef, Volume};

/// Called with the number of source bytes just consumed (for a progress bar).
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// A progress callback that ignores what it is told, for callers that show none.
pub fn no_progress() -> Progress {
    Arc::new(|_| {})
}

/// What to populate from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A tar archive: plain, gzip or zstd (told apart by its first bytes).
    Tar(PathBuf),
    /// A directory, copied like `rsync -aHAX --delete`.
    Dir(PathBuf),
    /// An OCI image layout (a directory with `oci-layout`): its layers applied in order.
    Oci {
        /// The layout directory.
        dir: PathBuf,
        /// Which image of the layout (its ref name); None for the only one or this host's.
        reference: Option<String>,
    },
}

impl Source {
    /// A tar file, a directory, or an OCI layout (a directory holding `oci-layout`).
    pub fn detect(path: &Path) -> Result<Source> {
        let meta = std::fs::metadata(path).ctx(|| format!("reading the source {}", path.display()))?;
        let path = path.canonicalize().ctx(|| format!("resolving {}", path.display()))?;
        Ok(if meta.is_dir() {
            if path.join("oci-layout").exists() {
                Source::Oci { dir: path, reference: None }
            } else {
                Source::Dir(path)
            }
        } else {
            Source::Tar(path)
        })
    }

    /// Bytes the progress callback will count up to, when known up front.
    pub fn size_hint(&self) -> Option<u64> {
        match self {
            Source::Tar(p) => std::fs::metadata(p).ok().map(|m| m.len()),
            Source::Dir(_) => None,
            Source::Oci { dir, reference } => {
                oci::open(dir, reference.as_deref()).ok().map(|i| i.layers.iter().map(|l| l.size).sum())
            }
        }
    }
}

/// What populate did.
#[derive(Debug, Clone, Serialize)]
pub struct PopulateReport {
    /// The volume's id.
    pub volume: u32,
    /// The filesystem on it.
    pub fs: Fs,
    /// Tar entries or directory entries written.
    pub entries: u64,
    /// File data bytes written.
    pub bytes: u64,
}

/// Refuse writing to read-only volumes: they are bases and image layers other volumes are
/// snapshots of.
fn writable(rec: &VolumeRecord, v: &VolRef) -> Result<()> {
    if rec.read_only {
        return Err(Error::invalid(
            "volume",
            format!("{v} is read-only (a base or image layer); snapshot it, or `rcx-dm set-readonly {v} --off` first"),
        ));
    }
    Ok(())
}

/// Run `f` with the volume's device, activating it for the call if it was inactive.
fn with_device<T>(pool: &Pool, rec: &VolumeRecord, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let v = VolRef::Id(rec.id);
    let was_active = pool.volume(&v)?.active;
    let dev = pool.activate_volume(&v)?;
    let r = f(&dev);
    if !was_active {
        if let Err(e) = pool.deactivate_volume(&v) {
            tracing::warn!(error = %e, id = rec.id, "could not deactivate the volume again");
        }
    }
    r
}

/// `rcx-dm format`: make `fs` on the volume (refused while it is mounted or open).
pub fn format_volume(pool: &Pool, v: &VolRef, fs: Fs) -> Result<Volume> {
    let rec = pool.resolve(v)?;
    writable(&rec, v)?;
    with_device(pool, &rec, |dev| fs::format(&v.to_string(), dev, fs, pool.config().block_bytes))?;
    pool.volume(&VolRef::Id(rec.id))
}

/// The filesystem on a volume (refused while it is mounted or open).
pub(crate) fn volume_fs(pool: &Pool, rec: &VolumeRecord) -> Result<Fs> {
    with_device(pool, rec, |dev| fs::probe(&rec.id.to_string(), dev, true))
}

/// Where private mounts are made (each in its own namespace, so one directory serves all).
pub(crate) fn mountpoint(pool: &Pool) -> Result<PathBuf> {
    let p = pool.dir().join("mnt");
    std::fs::create_dir_all(&p).ctx(|| format!("creating {}", p.display()))?;
    Ok(p)
}

/// The scratch volume a populate of volume `id` fills (left behind if it is killed; the next
/// populate of the volume, or its delete, removes it).
pub fn scratch_name(id: u32) -> String {
    format!("populate-{id}")
}

/// `rcx-dm populate`: make the volume's content equal to `source`, all or nothing (see the
/// module comment). The volume must hold a filesystem and not be in use.
pub fn populate(pool: &Pool, v: &VolRef, source: &Source, progress: Progress) -> Result<PopulateReport> {
    let t = std::time::Instant::now();
    let phase = |what: &str| tracing::info!(phase = what, ms = t.elapsed().as_millis() as u64, "populate");
    let rec = pool.resolve(v)?;
    writable(&rec, v)?;
    let fs = volume_fs(pool, &rec)?;
    phase("probed");
    let scratch_name = scratch_name(rec.id);
    if pool.delete_if_exists(&VolRef::Name(scratch_name.clone()), true)? {
        tracing::info!(scratch = %scratch_name, "removed a scratch volume left by an interrupted populate");
    }
    let base = base::ensure_base(pool, fs, rec.size_bytes)?;
    let scratch = pool.snapshot_internal(None, &VolRef::Id(base.id), None, Some(&scratch_name))?;
    let sref = VolRef::Id(scratch.id);
    phase("scratch made");
    let filled = scratch
        .device
        .clone()
        .ok_or_else(|| Error::Inconsistent(format!("scratch volume {} has no device", scratch.id)))
        .and_then(|dev| fill(pool, &dev, fs, source, progress))
        .and_then(|r| crate::pool::fault::point("populate.filled").map(|_| r))
        .and_then(|r| pool.deactivate_volume(&sref).map(|_| r));
    let stats = match filled {
        Ok(s) => s,
        Err(e) => {
            if let Err(d) = pool.delete(&sref, true) {
                tracing::warn!(error = %d, "could not delete the scratch volume; the next populate removes it");
            }
            return Err(e);
        }
    };
    phase("filled and unmounted");
    // From here the content exists in full; revert is crash-safe on its own.
    if let Err(e) = pool.revert(&VolRef::Id(rec.id), &sref) {
        let _ = pool.delete(&sref, true);
        return Err(e);
    }
    pool.set_parent(&VolRef::Id(rec.id), Some(base.id))?;
    pool.delete(&sref, true)?;
    phase("swapped");
    Ok(PopulateReport { volume: rec.id, fs, entries: stats.0, bytes: stats.1 })
}

/// Counts the bytes read through it for the progress callback.
struct Counted<R> {
    inner: R,
    progress: Progress,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.progress)(n as u64);
        Ok(n)
    }
}

/// Write `source` into the (empty) filesystem on `dev`, privately mounted. (entries, bytes)
pub(crate) fn fill(pool: &Pool, dev: &Path, fs: Fs, source: &Source, progress: Progress) -> Result<(u64, u64)> {
    let mnt = mountpoint(pool)?;
    mount::with_mounted(dev, fs, &mnt, |root| {
        let tree = Tree::open(root)?;
        match source {
            Source::Tar(path) => {
                let f = File::open(path).ctx(|| format!("opening {}", path.display()))?;
                if plain_file(&f)? {
                    let s = layer::apply_file(&tree, f, move |n| progress(n))?;
                    return Ok((s.entries, s.bytes));
                }
                let r = archive::decompressed(Counted { inner: std::io::BufReader::with_capacity(1 << 20, f), progress })?;
                // Read (and decompressed) on a thread of its own, as image layers are.
                let r = oci::prefetch::Prefetched::new(r).ctx(|| format!("starting a thread to read {}", path.display()))?;
                let s = layer::apply(&tree, r)?;
                Ok((s.entries, s.bytes))
            }
            Source::Dir(path) => {
                let mut p = |n: u64| progress(n);
                let s = copy::copy_tree(path, &tree, &mut p)?;
                Ok((s.entries, s.bytes))
            }
            Source::Oci { dir, reference } => {
                let image = oci::open(dir, reference.as_deref())?;
                let mut total = (0, 0);
                for l in &image.layers {
                    let s = apply_layer(&tree, l, false, progress.clone())?;
                    total = (total.0 + s.entries, total.1 + s.bytes);
                }
                Ok(total)
            }
        }
    })
}

/// Whether `f` is a regular file holding a plain (uncompressed) tar, which
/// [`layer::apply_file`] extracts without reading the file data through this process.
fn plain_file(f: &File) -> Result<bool> {
    use std::os::unix::fs::FileExt;
    let regular = f.metadata().map(|m| m.is_file()).unwrap_or(false);
    if !regular {
        return Ok(false); // a pipe or device: read as a stream
    }
    let mut head = [0u8; 4];
    let n = f.read_at(&mut head, 0).ctx(|| "reading the start of the archive".to_string())?;
    Ok(archive::Compression::detect(&head[..n]) == archive::Compression::None)
}

/// Apply one OCI layer, then check its digests: a layer that does not match its manifest
/// fails here, before anything is published.
/// `blob_digested`: the caller checked the blob's digest as it wrote it (see
/// [`oci::Layer::open_digested`]).
pub(crate) fn apply_layer(tree: &Tree, l: &oci::Layer, blob_digested: bool, progress: Progress) -> Result<layer::LayerStats> {
    let mut r = if blob_digested { l.open_digested()? } else { l.open()? };
    let s = layer::apply(tree, Counted { inner: &mut r, progress }).map_err(|e| match e {
        // Which layer of which image: the tar reader only knows its entry.
        Error::LimitExceeded { what, limit, why } => Error::LimitExceeded { what: format!("{}: {what}", l.label()), limit, why },
        e => e,
    })?;
    r.finish()?;
    Ok(s)
}
