//! Empty filesystems without mkfs per container: the first time a (filesystem, size) is
//! needed, one volume is formatted and kept as a read-only base named `base-<fs>-<bytes>`;
//! every empty filesystem after that is a thin snapshot of it (one metadata message).

use std::path::Path;

use super::fs::{self, Fs};
use crate::file_lock::FileLock;
use crate::pool::store::VolumeRecord;
use crate::pool::{Pool, VolRef, Volume};
use crate::error::{Error, Result};

/// The store name of the base for `fs` and `size_bytes`.
pub(crate) fn base_name(fs: Fs, size_bytes: u64) -> String {
    format!("base-{fs}-{size_bytes}")
}

/// The formatted, read-only, inactive base for (`fs`, `size_bytes`), made now if missing.
/// Serialised by a lock file of its own (mkfs is slow, the pool lock is never held across it);
/// a base left unfinished by a crash (present but not yet marked read-only) is made again.
pub(crate) fn ensure_base(pool: &Pool, fs: Fs, size_bytes: u64) -> Result<VolumeRecord> {
    let name = base_name(fs, size_bytes);
    let by_name = VolRef::Name(name.clone());
    let _l = FileLock::exclusive(&pool.dir().join("bases.lock"))?;
    match pool.resolve(&by_name) {
        Ok(b) if b.read_only => return Ok(b),
        Ok(_) => {
            tracing::warn!(base = %name, "removing a base left unfinished by an interrupted format");
            pool.delete(&by_name, true)?;
        }
        Err(Error::NoSuchVolume { .. }) => {}
        Err(e) => return Err(e),
    }
    let v = pool.create_thin_internal(None, size_bytes, Some(&name))?;
    let made = v
        .device
        .as_deref()
        .ok_or_else(|| Error::Inconsistent(format!("new base volume {} has no device", v.id)))
        .and_then(|dev| format_fresh(pool, &name, dev, fs))
        .and_then(|_| pool.set_read_only(&VolRef::Id(v.id), true))
        .and_then(|_| pool.deactivate_volume(&VolRef::Id(v.id)));
    if let Err(e) = made {
        if let Err(d) = pool.delete(&VolRef::Id(v.id), true) {
            tracing::warn!(error = %d, id = v.id, "could not remove the unfinished base; the next use removes it");
        }
        return Err(e);
    }
    pool.resolve(&VolRef::Id(v.id))
}

fn format_fresh(pool: &Pool, name: &str, dev: &Path, fs: Fs) -> Result<()> {
    crate::pool::fault::point("base.format")?;
    fs::format(name, dev, fs, pool.config().block_bytes)
}

/// A new volume holding an empty `fs` of `size_bytes`: a snapshot of the base (made the first
/// time). Active, like every new volume.
/// The name may not use a reserved prefix (see `Pool::create_thin`).
pub fn empty_volume(pool: &Pool, fs: Fs, size_bytes: u64, id: Option<u32>, name: Option<&str>) -> Result<Volume> {
    name.map(crate::pool::validate_user_volume_name).transpose()?;
    empty_volume_internal(pool, fs, size_bytes, id, name)
}

/// `empty_volume` for rcx-dm's own volumes (serve's `ctrd-*`).
pub(crate) fn empty_volume_internal(pool: &Pool, fs: Fs, size_bytes: u64, id: Option<u32>, name: Option<&str>) -> Result<Volume> {
    let base = ensure_base(pool, fs, size_bytes)?;
    pool.snapshot_internal(id, &VolRef::Id(base.id), None, name)
}
