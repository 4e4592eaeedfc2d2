//! The snapshotter itself: containerd's snapshot semantics on the pool API, synchronous (the
//! gRPC adapter runs each call on a blocking thread). One mutex guards the record store's
//! check-and-write steps only; the pool calls (ioctls, and mkfs once per base) run outside it,
//! so Prepare calls for different keys proceed in parallel (the pool's own flock serialises
//! only their short metadata+ioctl sections).

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::tonic::Status;

use super::store::{inodes_in_use, update_labels, Kind, Record, SnapStore, State, Usage, VOLUME_PREFIX};
use crate::error::Error;
use crate::pool::{Pool, VolRef};
use crate::rootfs::{base, fs::Fs};

/// What a snapshotter is configured with.
#[derive(Debug, Clone)]
pub struct Options {
    /// Filesystem of new snapshots (the base is formatted once with it).
    pub fs: Fs,
    /// Size of every snapshot's volume (thin: costs only what is written).
    pub size_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options { fs: Fs::Ext4, size_bytes: 10 << 30 }
    }
}

/// The containerd snapshotter on one pool: the record store plus the pool, each call
/// synchronous; failures come back as gRPC statuses containerd understands (`status`).
pub struct Service {
    pool: Pool,
    store: SnapStore,
    opts: Options,
    /// Held only around record checks and writes, never around a pool call.
    meta: Mutex<()>,
    seq: AtomicU64,
}

pub type Result<T> = std::result::Result<T, Status>;

/// Library errors as gRPC statuses containerd's errdefs understand.
pub fn status(e: Error) -> Status {
    let msg = e.to_string();
    match e {
        Error::NoSuchVolume { .. } => Status::not_found(msg),
        Error::Exists(_) => Status::already_exists(msg),
        Error::Invalid { .. } => Status::invalid_argument(msg),
        Error::Busy { .. } | Error::VolumeMounted { .. } => Status::failed_precondition(msg),
        Error::NoSpace(_) => Status::resource_exhausted(msg),
        Error::PoolInactive(_) | Error::PoolUnhealthy { .. } => Status::unavailable(msg),
        _ => Status::internal(msg),
    }
}

fn not_found(key: &str) -> Status {
    Status::not_found(format!("snapshot {key:?} does not exist"))
}

impl Service {
    /// A snapshotter on `pool`; records live under the pool's directory. Call `reconcile`
    /// before serving.
    pub fn new(pool: Pool, opts: Options) -> crate::Result<Service> {
        let store = SnapStore::open(pool.dir())?;
        Ok(Service { pool, store, opts, meta: Mutex::new(()), seq: AtomicU64::new(0) })
    }

    /// The pool the snapshots' volumes live in.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The snapshotter's records (`<pool dir>/serve/snapshots/`).
    pub fn store(&self) -> &SnapStore {
        &self.store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new_volume_name(&self) -> String {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        format!("{VOLUME_PREFIX}{now:x}-{:x}", self.seq.fetch_add(1, Ordering::Relaxed))
    }

    fn device(&self, id: u32) -> PathBuf {
        crate::dm::node::mapper_path(&self.pool.thin_dm_name(id))
    }

    fn ready(&self, key: &str) -> Result<Record> {
        match self.store.get(key).map_err(status)? {
            Some(r) if r.state == State::Ready => Ok(r),
            _ => Err(not_found(key)),
        }
    }

    /// The one mount of a snapshot: its block device, `ro` and no journal replay for views,
    /// the filesystem's snapshot options (ext4 `noinit_itable`, xfs `nouuid`).
    fn mount_of(&self, r: &Record, device: PathBuf) -> Mount {
        let view = r.kind == Kind::View;
        let mut options = Vec::new();
        if view {
            options.push("ro".to_string());
        }
        if let Some(data) = r.fs.mount_data(view) {
            options.extend(data.split(',').map(str::to_string));
        }
        Mount {
            r#type: r.fs.kernel_name().to_string(),
            source: device.to_string_lossy().into_owned(),
            target: String::new(),
            options,
        }
    }

    /// Prepare (`kind` Active) or View: a thin snapshot of the parent's volume, or of the
    /// formatted base when there is no parent.
    pub fn create(&self, kind: Kind, key: &str, parent: &str, labels: BTreeMap<String, String>) -> Result<Vec<Mount>> {
        let now = SystemTime::now();
        let (rec, origin) = {
            let _g = self.lock();
            if self.store.get(key).map_err(status)?.is_some() {
                return Err(Status::already_exists(format!("snapshot {key:?} already exists")));
            }
            let origin = if parent.is_empty() {
                None
            } else {
                let p = self.ready(parent).map_err(|_| Status::not_found(format!("parent snapshot {parent:?} does not exist")))?;
                if p.kind != Kind::Committed {
                    return Err(Status::invalid_argument(format!("parent {parent:?} is not a committed snapshot")));
                }
                Some(p)
            };
            let rec = Record {
                key: key.to_string(),
                kind,
                parent: parent.to_string(),
                volume: self.new_volume_name(),
                volume_id: None,
                fs: origin.as_ref().map_or(self.opts.fs, |p| p.fs),
                state: State::Preparing,
                labels,
                created: now,
                updated: now,
                usage: None,
            };
            self.store.put(&rec).map_err(status)?;
            (rec, origin)
        };
        let made = match &origin {
            None => base::empty_volume_internal(&self.pool, rec.fs, self.opts.size_bytes, None, Some(&rec.volume)),
            Some(p) => self.pool.snapshot_internal(None, &VolRef::Name(p.volume.clone()), None, Some(&rec.volume)),
        };
        let vol = match made {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(key, error = %e, "prepare failed");
                // The volume may exist (e.g. made but not activated): delete it before the
                // record; if that fails too the record stays `preparing` and the next start
                // rolls it back.
                if let Err(d) = self.delete_volume(&rec.volume) {
                    tracing::warn!(key, error = %d, "could not delete the volume of a failed prepare");
                    return Err(status(e));
                }
                let _g = self.lock();
                if let Err(e) = self.store.remove(key) {
                    tracing::warn!(key, error = %e, "could not drop the record of a failed prepare; the next start does");
                }
                return Err(status(e));
            }
        };
        let rec = {
            let _g = self.lock();
            let rec = Record { volume_id: Some(vol.id), state: State::Ready, ..rec };
            self.store.put(&rec).map_err(status)?;
            rec
        };
        tracing::debug!(key, volume = vol.id, ?kind, "prepared");
        let dev = vol.device.unwrap_or_else(|| self.device(vol.id));
        Ok(vec![self.mount_of(&rec, dev)])
    }

    /// Mounts of an active snapshot or view; activates its volume when it is not live (after a
    /// reboot, before the pools unit ran).
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let r = self.ready(key)?;
        if r.kind == Kind::Committed {
            return Err(Status::failed_precondition(format!("snapshot {key:?} is committed; mounts are for active snapshots and views")));
        }
        let id = r.volume_id.ok_or_else(|| Status::internal(format!("snapshot {key:?} has no volume")))?;
        // The record names its volume too: never mount a volume that later got the id.
        let vol = self.pool.resolve(&VolRef::Id(id)).map_err(status)?;
        if vol.name.as_deref() != Some(r.volume.as_str()) {
            return Err(Status::internal(format!(
                "snapshot {key:?} records volume {id} named {:?}, but volume {id} is now {:?}: the record is stale; remove the snapshot",
                r.volume, vol.name
            )));
        }
        let mut dev = self.device(id);
        if !dev.exists() {
            dev = self.pool.activate_volume(&VolRef::Id(id)).map_err(status)?;
        }
        Ok(vec![self.mount_of(&r, dev)])
    }

    /// The active snapshot `key` becomes committed snapshot `name`: the same volume, marked
    /// read-only and deactivated (its usage measured first).
    pub fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<()> {
        let now = SystemTime::now();
        let rec = {
            let _g = self.lock();
            let active = self.ready(key)?;
            if active.kind != Kind::Active {
                return Err(Status::failed_precondition(format!("snapshot {key:?} is not active (a {:?} cannot be committed)", active.kind)));
            }
            if self.store.get(name).map_err(status)?.is_some() {
                return Err(Status::already_exists(format!("snapshot {name:?} already exists")));
            }
            let rec = Record {
                key: name.to_string(),
                kind: Kind::Committed,
                state: State::Committing { from: key.to_string() },
                labels,
                created: now,
                updated: now,
                ..active
            };
            self.store.put(&rec).map_err(status)?;
            rec
        };
        match self.finish_commit(rec.clone()) {
            Ok(()) => Ok(()),
            Err(e) => {
                // Still active (e.g. mounted): undo the reservation, the active one is unchanged.
                let _g = self.lock();
                let _ = self.store.remove(name);
                let _ = self.pool.activate_volume(&VolRef::Name(rec.volume.clone()));
                Err(e)
            }
        }
    }

    /// The pool side of a commit and the records' switch; also the roll-forward on restart.
    fn finish_commit(&self, mut rec: Record) -> Result<()> {
        let State::Committing { from } = rec.state.clone() else { return Ok(()) };
        let vol = VolRef::Name(rec.volume.clone());
        let v = self.pool.volume(&vol).map_err(status)?;
        if rec.usage.is_none() {
            if let Some(dev) = &v.device {
                rec.usage = Some(Usage { bytes: v.mapped_bytes.unwrap_or(0), inodes: read_inodes(dev, rec.fs).unwrap_or(0) });
            }
        }
        if v.active {
            self.pool.deactivate_volume(&vol).map_err(status)?;
        }
        self.pool.set_read_only(&vol, true).map_err(status)?;
        let _g = self.lock();
        rec.state = State::Ready;
        rec.volume_id = Some(v.id);
        self.store.put(&rec).map_err(status)?;
        if self.store.get(&from).map_err(status)?.is_some_and(|a| a.volume == rec.volume) {
            self.store.remove(&from).map_err(status)?;
        }
        tracing::debug!(name = rec.key, from, volume = v.id, "committed");
        Ok(())
    }

    /// Remove a snapshot and delete its volume; refused while it has children.
    pub fn remove(&self, key: &str) -> Result<()> {
        let rec = {
            let _g = self.lock();
            let mut rec = self.ready(key)?;
            let all = self.store.all().map_err(status)?;
            if let Some(c) = all.iter().find(|c| c.parent == key) {
                return Err(Status::failed_precondition(format!("snapshot {key:?} has children (e.g. {:?}); remove them first", c.key)));
            }
            rec.state = State::Removing;
            self.store.put(&rec).map_err(status)?;
            rec
        };
        match self.pool.delete_if_exists(&VolRef::Name(rec.volume.clone()), true) {
            Ok(_) => {}
            Err(e) => {
                // A delete that fails after its intent was recorded is still finished (rolled
                // forward before the error returns): then the snapshot is gone, and a record put
                // back to ready would name a volume that no longer exists.
                match self.pool.resolve(&VolRef::Name(rec.volume.clone())) {
                    Err(Error::NoSuchVolume { .. }) => {
                        tracing::warn!(key, error = %e, "the volume's delete reported an error but went through; the snapshot is removed");
                    }
                    _ => {
                        let _g = self.lock();
                        let _ = self.store.put(&Record { state: State::Ready, ..rec });
                        return Err(status(e));
                    }
                }
            }
        }
        let _g = self.lock();
        self.store.remove(key).map_err(status)?;
        tracing::debug!(key, "removed");
        Ok(())
    }

    /// The record of snapshot `key`; NotFound unless it exists and no operation on it is in
    /// flight (state ready).
    pub fn stat(&self, key: &str) -> Result<Record> {
        self.ready(key)
    }

    /// Change snapshot `key`'s labels by containerd's Update rules (`update_labels`) and
    /// return the new record; NotFound for a key not ready, InvalidArgument for a field path
    /// other than `labels` or `labels.<key>`.
    pub fn update(&self, key: &str, labels: &BTreeMap<String, String>, paths: Option<&[String]>) -> Result<Record> {
        let _g = self.lock();
        let mut r = self.ready(key)?;
        update_labels(&mut r.labels, labels, paths).map_err(Status::invalid_argument)?;
        r.updated = SystemTime::now();
        self.store.put(&r).map_err(status)?;
        Ok(r)
    }

    /// Bytes mapped by the snapshot's thin device (the thin target's status) and inodes in use
    /// (its superblock); committed snapshots report what was measured at commit.
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let r = self.ready(key)?;
        if let Some(u) = &r.usage {
            return Ok(u.clone());
        }
        let v = self.pool.volume(&VolRef::Name(r.volume.clone())).map_err(status)?;
        let inodes = v.device.as_deref().and_then(|d| read_inodes(d, r.fs)).unwrap_or(0);
        Ok(Usage { bytes: v.mapped_bytes.unwrap_or(0), inodes })
    }

    /// Every ready snapshot, sorted by key; records of operations in flight are left out.
    pub fn list(&self) -> Result<Vec<Record>> {
        Ok(self.store.all().map_err(status)?.into_iter().filter(|r| r.state == State::Ready).collect())
    }

    /// Make records and pool agree after a crash or kill: prepares in flight are rolled back
    /// (their volume deleted), commits and removes rolled forward, records whose volume is gone
    /// dropped, and serve's volumes that no record names deleted. A record that cannot be
    /// settled now is logged and left for the next start: one failing delete must not keep
    /// serve (and so every container of containerd) down. Only a store that cannot be read
    /// fails the start.
    pub fn reconcile(&self) -> crate::Result<()> {
        let stale = self.store.remove_stale_temps()?;
        if stale > 0 {
            tracing::info!(stale, "removed temp files of record writes a crash interrupted");
        }
        for r in self.store.all()? {
            if let Err(e) = self.reconcile_record(&r) {
                tracing::error!(key = r.key, volume = r.volume, error = %e, "could not settle this snapshot; it is left as it is (List shows only ready ones) and the next start tries again");
            }
        }
        if let Err(e) = self.remove_orphans() {
            tracing::error!(error = %e, "could not delete every volume no snapshot owns; the next start tries again");
        }
        Ok(())
    }

    fn reconcile_record(&self, r: &Record) -> crate::Result<()> {
        match r.state.clone() {
            State::Ready => {}
            State::Preparing => {
                tracing::warn!(key = r.key, volume = r.volume, "rolling back a prepare that did not finish");
                self.delete_volume(&r.volume)?;
                return self.store.remove(&r.key);
            }
            State::Removing => {
                tracing::warn!(key = r.key, "finishing a remove that did not finish");
                self.delete_volume(&r.volume)?;
                return self.store.remove(&r.key);
            }
            State::Committing { from } => {
                tracing::warn!(key = r.key, from, "finishing a commit that did not finish");
                return match self.pool.resolve(&VolRef::Name(r.volume.clone())) {
                    Ok(_) => self.finish_commit(r.clone()).map_err(|s| Error::Inconsistent(s.message().to_string())),
                    Err(Error::NoSuchVolume { .. }) => {
                        self.store.remove(&r.key)?;
                        self.store.remove(&from)
                    }
                    Err(e) => Err(e),
                };
            }
        }
        if let Err(Error::NoSuchVolume { .. }) = self.pool.resolve(&VolRef::Name(r.volume.clone())) {
            tracing::warn!(key = r.key, volume = r.volume, "dropping a snapshot whose volume is gone");
            self.store.remove(&r.key)?;
        }
        Ok(())
    }

    /// Delete serve's volumes that no record names (Cleanup, and the end of reconcile).
    /// Volumes are listed before records: a volume is only made after its record is written.
    pub fn remove_orphans(&self) -> crate::Result<usize> {
        let vols = self.pool.volumes()?;
        let named: HashSet<String> = {
            let _g = self.lock();
            self.store.all()?.into_iter().map(|r| r.volume).collect()
        };
        let mut n = 0;
        for v in vols {
            let Some(name) = v.name else { continue };
            if name.starts_with(VOLUME_PREFIX) && !named.contains(&name) {
                tracing::warn!(volume = v.id, name, "deleting a volume no snapshot owns");
                self.delete_volume(&name)?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn delete_volume(&self, name: &str) -> crate::Result<()> {
        self.pool.delete_if_exists(&VolRef::Name(name.to_string()), true).map(|_| ())
    }
}

fn read_inodes(dev: &std::path::Path, fs: Fs) -> Option<u64> {
    let f = std::fs::File::open(dev).ok()?;
    let mut sb = vec![0u8; 4096];
    f.read_exact_at(&mut sb, 0).ok()?;
    inodes_in_use(&sb, fs)
}
