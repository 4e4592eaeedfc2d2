//! Durable files: every record rcx-dm keeps (pool, classic, serve, runner and image stores) is
//! written whole under a temp name, fsynced, renamed into place and its directory fsynced, so a
//! crash or power cut leaves the old record or the new one, never a torn one. An intent (the
//! one operation in flight, replayed by the next command) is such a record too: [`IntentFile`].

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, IoContext, Result};

/// Write `v` as JSON to `path` durably ([`write_durable`]).
pub fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    write_durable(path, &json(v)?)
}

/// The file of an operation in flight: put before the operation's first change, cleared after
/// its last, read by whoever recovers. `T` is the operation's own record.
pub struct IntentFile<T> {
    path: PathBuf,
    _record: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> IntentFile<T> {
    /// The intent kept at `path`.
    pub fn new(path: PathBuf) -> Self {
        IntentFile { path, _record: PhantomData }
    }

    /// The operation in flight, if any.
    pub fn get(&self) -> Result<Option<T>> {
        read_json(&self.path)
    }

    /// Record the operation (replacing an earlier step's record of it).
    pub fn put(&self, v: &T) -> Result<()> {
        write_json(&self.path, v)
    }

    /// The operation is done (or undone).
    pub fn clear(&self) -> Result<()> {
        remove_durable(&self.path)
    }
}

/// A record as the stores write it: pretty JSON.
pub fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| Error::Inconsistent(format!("encoding record: {e}")))
}

/// Read a JSON record; None when the file does not exist, `Inconsistent` when it does not parse.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Inconsistent(format!("{} is corrupt: {e}", path.display()))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).ctx(|| format!("reading {}", path.display())),
    }
}

/// Replace `path` atomically: readers see the old or the new content, never a mix.
pub fn write_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = File::create(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes).ctx(|| format!("writing {}", tmp.display()))?;
    f.sync_all().ctx(|| format!("syncing {}", tmp.display()))?;
    fs::rename(&tmp, path).ctx(|| format!("renaming {} into place", tmp.display()))?;
    sync_dir(path.parent().unwrap_or(Path::new("/")))
}

/// Remove the temp files (`*.tmp.<pid>`: `write_durable`, `claim_name`) of writes that a crash
/// or a power cut interrupted, in `dir` and below: those whose process is gone. A live
/// process's temp is a write in progress and stays. Returns how many went.
pub fn remove_stale_temps(dir: &Path) -> Result<usize> {
    use std::os::unix::fs::MetadataExt;
    match fs::metadata(dir) {
        Ok(m) => remove_stale_temps_on(dir, m.dev()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).ctx(|| format!("reading {}", dir.display())),
    }
}

/// The walk stays on `dev`: a filesystem mounted inside the store (a volume being populated
/// or trimmed) is not the store's.
fn remove_stale_temps_on(dir: &Path, dev: u64) -> Result<usize> {
    use std::os::unix::fs::MetadataExt;
    let mut n = 0;
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).ctx(|| format!("reading {}", dir.display())),
    };
    for e in entries {
        let e = e.ctx(|| format!("reading {}", dir.display()))?;
        let p = e.path();
        // file_type does not follow symlinks: a link out of the store is never walked.
        if e.file_type().ctx(|| format!("reading {}", p.display()))?.is_dir() {
            if e.metadata().is_ok_and(|m| m.dev() == dev) {
                n += remove_stale_temps_on(&p, dev)?;
            }
            continue;
        }
        let Some(pid) = e.file_name().to_str().and_then(|n| n.rsplit_once(".tmp.")).map(|(_, pid)| pid.to_string()) else {
            continue;
        };
        let alive = pid.parse::<u32>().is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            match fs::remove_file(&p) {
                Ok(()) => n += 1,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e).ctx(|| format!("removing {}", p.display())),
            }
        }
    }
    if n > 0 {
        sync_dir(dir)?;
    }
    Ok(n)
}

/// Remove `path` durably (the directory is synced); a missing file is already removed.
pub fn remove_durable(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("/"))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).ctx(|| format!("removing {}", path.display())),
    }
}

/// fsync a directory, so the entries created, renamed or removed in it survive a power cut.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).ctx(|| format!("syncing directory {}", dir.display()))
}
