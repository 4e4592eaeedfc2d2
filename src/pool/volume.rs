//! Thin volumes and snapshots: create, snapshot, activate, deactivate, delete, inspect.
//! Each mutating operation records its intent before touching the kernel and commits with
//! the pool's transaction id (see `recover`).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::store::{Intent, VolumeRecord};
use super::{busy_or, fault, Pool, MAX_THIN_ID};
use crate::dm::{self, DevInfo, Dm, Target, ThinStatus, ThinTarget};
use super::names;
use crate::error::{Errno, Error, IoContext, Result};
use crate::units::SECTOR;

/// A volume as users name it: by id or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolRef {
    /// The volume's thin id.
    Id(u32),
    /// The volume's user-given name.
    Name(String),
}

impl std::str::FromStr for VolRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<VolRef> {
        if s.chars().all(|c| c.is_ascii_digit()) && !s.is_empty() {
            return parse_id(s).map(VolRef::Id);
        }
        names::validate_volume_name(s)?;
        Ok(VolRef::Name(s.to_string()))
    }
}

impl std::fmt::Display for VolRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VolRef::Id(i) => write!(f, "{i}"),
            VolRef::Name(n) => f.write_str(n),
        }
    }
}

/// Parse a thin volume id: decimal, 0 to `MAX_THIN_ID` (24 bits); anything else is
/// `Error::Invalid`.
pub fn parse_id(s: &str) -> Result<u32> {
    // The 24-bit limit is the devicemapper crate's ThinDevId rule (the kernel's metadata format).
    match s.parse::<u64>().ok().and_then(|n| devicemapper::ThinDevId::new_u64(n).ok()) {
        Some(id) => Ok(u32::from(id)),
        None => Err(Error::invalid("volume id", format!("'{s}'; ids are 0 to {MAX_THIN_ID} (24 bits)"))),
    }
}

/// A volume as reported to users: the store's record and the kernel's state.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Volume {
    /// The thin device id in the pool's metadata.
    pub id: u32,
    /// The user's name for the volume, if it has one.
    pub name: Option<String>,
    /// The id of the volume it was snapshotted from (or took its content from); None for a
    /// volume created empty.
    pub parent: Option<u32>,
    /// Virtual size in bytes (what the device reports; blocks are allocated in the pool only
    /// as they are written).
    pub size_bytes: u64,
    /// Whether its dm device is live (exists with a loaded table).
    pub active: bool,
    /// Where to open the device: `/dev/mapper/<dm name>`, or `/dev/dm-<minor>` while that link
    /// is missing; None when inactive.
    pub device: Option<PathBuf>,
    /// Bytes the volume has mapped in the pool (only known while active).
    pub mapped_bytes: Option<u64>,
    /// A read-only base: `rcx-dm run` runs snapshots of it, never the volume itself.
    pub read_only: bool,
}

impl Pool {
    /// Look a volume up by id or name.
    pub fn resolve(&self, v: &VolRef) -> Result<VolumeRecord> {
        let missing = || Error::NoSuchVolume { vol: v.to_string(), pool: self.name.clone() };
        let id = match v {
            VolRef::Id(i) => *i,
            VolRef::Name(n) => self.store.lookup_name(n)?.ok_or_else(missing)?,
        };
        self.store.volume(id)?.ok_or_else(missing)
    }

    /// Create an empty thin volume of `size` bytes and activate it. A name may not use one of
    /// rcx-dm's reserved prefixes (`RESERVED_PREFIXES`).
    pub fn create_thin(&self, id: Option<u32>, size: u64, name: Option<&str>) -> Result<Volume> {
        name.map(names::validate_user_volume_name).transpose()?;
        self.create_volume(id, None, size, name)
    }

    /// `create_thin` for rcx-dm's own volumes: the name may use a reserved prefix.
    #[doc(hidden)]
    pub fn create_thin_internal(&self, id: Option<u32>, size: u64, name: Option<&str>) -> Result<Volume> {
        self.create_volume(id, None, size, name)
    }

    /// Snapshot `origin` as a new volume (suspending an active origin around `create_snap`)
    /// and activate it. `size` defaults to the origin's size.
    pub fn snapshot(&self, id: Option<u32>, origin: &VolRef, size: Option<u64>, name: Option<&str>) -> Result<Volume> {
        name.map(names::validate_user_volume_name).transpose()?;
        self.snapshot_internal(id, origin, size, name)
    }

    /// `snapshot` for rcx-dm's own volumes: the name may use a reserved prefix.
    #[doc(hidden)]
    pub fn snapshot_internal(&self, id: Option<u32>, origin: &VolRef, size: Option<u64>, name: Option<&str>) -> Result<Volume> {
        // Resolved again under the lock in create_volume; this only gets the default size.
        let size = match size {
            Some(s) => s,
            None => self.resolve(origin)?.size_bytes,
        };
        self.create_volume(id, Some(origin), size, name)
    }

    fn create_volume(&self, id: Option<u32>, origin: Option<&VolRef>, size: u64, name: Option<&str>) -> Result<Volume> {
        if size == 0 || size % SECTOR != 0 {
            return Err(Error::invalid("size", format!("{size} bytes; must be a positive multiple of 512")));
        }
        if let Some(n) = name {
            names::validate_volume_name(n)?;
        }
        let dm = Dm::open()?;
        let op = if origin.is_some() { "snap" } else { "create" };
        let record = {
            let _l = self.lock_and_recover(&dm)?;
            let parent = origin.map(|o| self.resolve(o)).transpose()?;
            if let Some(n) = name {
                if self.store.lookup_name(n)?.is_some() {
                    return Err(Error::Exists(format!("a volume named '{n}'")));
                }
            }
            let chosen = id;
            // An automatic id the kernel already has (a device made behind rcx-dm's back, or a
            // store restored from an old backup) is skipped: the hint moves past it and the
            // next free id is tried, at most once round the id space.
            let mut skipped = 0u32;
            loop {
                let id = match chosen {
                    Some(i) if i > MAX_THIN_ID => return Err(parse_id(&i.to_string()).unwrap_err()),
                    Some(i) if self.store.has_volume(i) => return Err(Error::Exists(format!("volume {i}"))),
                    Some(i) => i,
                    None => self.allocate_id()?,
                };
                // A device at the id's name that is not rcx-dm's would refuse the activation
                // after the commit: refuse (or, automatic, skip the id) before anything changes.
                match self.thin_device(&dm, id) {
                    Err(e @ Error::ForeignDevice { .. }) if chosen.is_none() && skipped < MAX_THIN_ID => {
                        tracing::warn!(id, "skipping an id whose device name is taken: {e}");
                        self.advance_id_hint(id, false);
                        skipped += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                    Ok(_) => {}
                }
                let txid = self.writable_status(&dm)?.transaction_id;
                let intent = Intent::Create {
                    id,
                    name: name.map(str::to_string),
                    parent: parent.as_ref().map(|p| p.id),
                    size_bytes: size,
                    txid,
                };
                self.store.intent().put(&intent)?;
                let result = fault::point(&format!("{op}.intent"))
                    .and_then(|_| self.create_steps(&dm, op, &intent, parent.as_ref()));
                match result {
                    Ok(rec) => {
                        self.store.intent().clear()?;
                        self.advance_id_hint(id, chosen.is_some());
                        break rec;
                    }
                    Err(e) => {
                        if e.errno() == Some(Errno::EEXIST) {
                            // The kernel already has this id although the store does not: never roll
                            // back by deleting what we did not create.
                            self.store.intent().clear()?;
                            if let Some(n) = name {
                                self.store.release_name(n, id)?;
                            }
                            self.advance_id_hint(id, chosen.is_some());
                            if chosen.is_none() && skipped < MAX_THIN_ID {
                                tracing::warn!(id, "thin id exists in the kernel's pool metadata but not in the store; skipping it");
                                skipped += 1;
                                continue;
                            }
                            return Err(Error::Inconsistent(format!(
                                "thin id {id} exists in the kernel's pool metadata but not in the store; pick another id"
                            )));
                        }
                        self.recover_locked(&dm)?;
                        return Err(e);
                    }
                }
            }
        };
        // Activation is idempotent and outside the transaction: a failure leaves a committed,
        // inactive volume that `rcx-dm activate` brings up.
        self.activate_thin(&dm, &record)?;
        fault::point(&format!("{op}.activated"))?;
        self.volume_view(&dm, &record)
    }

    fn create_steps(&self, dm: &Dm, op: &str, intent: &Intent, parent: Option<&VolumeRecord>) -> Result<VolumeRecord> {
        let Intent::Create { id, name, size_bytes, txid, .. } = intent.clone() else {
            unreachable!("create_steps takes a Create intent")
        };
        if let Some(n) = &name {
            self.store.claim_name(n, id)?;
        }
        let pool = self.pool_dm_name();
        match parent {
            None => {
                dm.message(&pool, &format!("create_thin {id}"))?;
                fault::point("create.created")?;
            }
            Some(origin) => {
                // The kernel requires an active origin to be suspended around create_snap so
                // that the snapshot sees all of its writes (thin_device first: it checks the
                // device is ours and removes one left without a table; its answer decides the suspend).
                let info = self.thin_device(dm, origin.id)?;
                dm.with_suspended_as(&self.thin_dm_name(origin.id), info.as_ref(), || {
                    fault::point("snap.suspended")?;
                    dm.message(&pool, &format!("create_snap {id} {}", origin.id))?;
                    fault::point("snap.created")
                })?;
                fault::point("snap.resumed")?;
            }
        }
        dm.message(&pool, &format!("set_transaction_id {txid} {}", txid + 1))?;
        fault::point(&format!("{op}.committed"))?;
        let rec = VolumeRecord { id, name, parent: parent.map(|p| p.id), size_bytes, txid: txid + 1, autoactivate: true, read_only: false };
        self.store.put_volume(&rec)?;
        fault::point(&format!("{op}.recorded"))?;
        Ok(rec)
    }

    /// Automatic ids only move forward (wrapping at 2^24): a freed id is not handed out again
    /// until the id space wraps, so a stale reference to a deleted volume (a script's saved id,
    /// a log line) does not silently name a new one. An explicit id below the hint leaves it.
    fn advance_id_hint(&self, used: u32, explicit: bool) {
        let next = used.saturating_add(1) % (MAX_THIN_ID + 1);
        if !explicit || next > self.store.next_id_hint() {
            self.store.set_next_id_hint(next);
        }
    }

    /// The first free id at or after the allocation hint (wrapping). O(1) in the common case.
    pub(crate) fn allocate_id(&self) -> Result<u32> {
        let start = self.store.next_id_hint().min(MAX_THIN_ID);
        let mut id = start;
        loop {
            if !self.store.has_volume(id) {
                return Ok(id);
            }
            id = if id == MAX_THIN_ID { 0 } else { id + 1 };
            if id == start {
                return Err(Error::NoSpace("volume id"));
            }
        }
    }

    /// Load the thin device for a committed volume if it is not live; return its path.
    pub(crate) fn activate_thin(&self, dm: &Dm, v: &VolumeRecord) -> Result<PathBuf> {
        let dmid = names::thin(&self.name, v.id);
        let info = match self.thin_device(dm, v.id)? {
            Some(i) => i,
            None => {
                let pool = self.pool_device(dm)?.ok_or_else(|| Error::PoolInactive(self.name.clone()))?;
                let t = ThinTarget { pool: pool.dev, id: v.id };
                dm.create(&dmid.name, Some(&dmid.uuid), &[t.line(0, v.size_bytes / SECTOR)], false)?
            }
        };
        dm::node::ensure(&dmid.name, info.dev)
    }

    pub(crate) fn remove_thin_device(&self, dm: &Dm, id: u32) -> Result<()> {
        let name = self.thin_dm_name(id);
        if self.thin_device(dm, id)?.is_none() {
            dm::node::remove(&name); // a stale link, if any
            return Ok(());
        }
        dm.remove(&name).map_err(|e| busy_or(e, &format!("{id} ({})", dm::node::mapper_path(&name).display())))?;
        dm::node::remove(&name);
        Ok(())
    }

    /// Activate a volume; returns its device path.
    pub fn activate_volume(&self, v: &VolRef) -> Result<PathBuf> {
        let dm = Dm::open()?;
        let _l = self.lock_and_recover(&dm)?;
        let mut rec = self.resolve(v)?;
        let path = self.activate_thin(&dm, &rec)?;
        if !rec.autoactivate {
            rec.autoactivate = true;
            self.store.put_volume(&rec)?;
        }
        Ok(path)
    }

    /// Remove a volume's device; its data stays in the pool.
    pub fn deactivate_volume(&self, v: &VolRef) -> Result<()> {
        let dm = Dm::open()?;
        let _l = self.lock_and_recover(&dm)?;
        let rec = self.resolve(v)?;
        // The record first, the device second, as every change here: a kill in between leaves
        // the device up and the record saying "inactive", so the next `pool activate` honours
        // the request (the other order brought back, after a reboot, a volume the user had
        // deactivated, with `list` calling it inactive until then: the soak's final check).
        if rec.autoactivate {
            self.store.put_volume(&VolumeRecord { autoactivate: false, ..rec.clone() })?;
        }
        if let Err(e) = self.remove_thin_device(&dm, rec.id) {
            // Not deactivated (busy, most often): the record says so again.
            if rec.autoactivate {
                self.store.put_volume(&rec)?;
            }
            return Err(e);
        }
        Ok(())
    }

    /// [`Pool::delete`], where a volume that does not exist is already deleted: true when this
    /// call deleted it, false when it was not there (rcx-dm's own clean-ups of volumes a crash
    /// may or may not have left).
    pub fn delete_if_exists(&self, v: &VolRef, force: bool) -> Result<bool> {
        match self.delete(v, force) {
            Ok(()) => Ok(true),
            Err(Error::NoSuchVolume { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Delete a volume and give its blocks back to the pool and, with the pool's
    /// `discard_on_delete` (the default), those only it used back to the host filesystem that
    /// holds a sparse data file (see `discard_before_delete`). An active volume is refused
    /// unless `force`, which deactivates it first.
    pub fn delete(&self, v: &VolRef, force: bool) -> Result<()> {
        let dm = Dm::open()?;
        let _l = self.lock_and_recover(&dm)?;
        let rec = self.resolve(v)?;
        // An active volume (`run --rm`'s snapshot) is discarded through its own device below,
        // not removed here and loaded again for the discard: a device removal and a load less.
        let mut live = None;
        if let Some(info) = self.thin_device(&dm, rec.id)? {
            if !force {
                return Err(Error::Busy { what: format!("{v}"), state: "active", advice: "deactivate it first or pass --force" });
            }
            live = Some(self.open_idle(&dm, rec.id, &info).map_err(|e| busy_or(e, &format!("{v}")))?);
        }
        let txid = self.writable_status(&dm)?.transaction_id;
        let intent = Intent::Delete { id: rec.id, name: rec.name.clone(), txid };
        self.store.intent().put(&intent)?;
        // From here the delete is decided: recovery always rolls it forward.
        let discarded = match live {
            Some((f, path)) => {
                if self.fresh_config()?.discard_on_delete {
                    if let Err(e) = discard_file(&f, &path) {
                        tracing::warn!(id = rec.id, error = %e, "could not discard the volume before deleting it; the pool frees its blocks, the host file keeps them");
                    }
                }
                drop(f);
                true
            }
            None => false,
        };
        let done = fault::point("delete.intent")
            .and_then(|_| if discarded { self.remove_thin_device(&dm, rec.id) } else { Ok(()) })
            .and_then(|_| self.delete_forward_locked(&dm, discarded));
        if let Err(e) = done {
            // Failed half-way (an error, not a crash): finish it now instead of leaving the
            // intent for the next command.
            self.recover_locked(&dm)?;
            return Err(e);
        }
        Ok(())
    }

    /// Discard the whole of volume `id` (a delete's intent is recorded, the kernel not yet
    /// told): dm-thin unmaps its blocks and passes down to the data device the discards of
    /// those no other volume shares (snapshots keep theirs), and a loop device punches them out
    /// of the sparse file. The kernel's `delete` message alone frees blocks in the pool's
    /// metadata only, never in the file. An inactive volume gets a temporary device, which the
    /// delete removes next. Best effort: the delete is decided and goes on whatever happens
    /// here (the pool gets the blocks back either way).
    pub(crate) fn discard_before_delete(&self, dm: &Dm, id: u32) {
        if let Err(e) = self.discard_whole(dm, id) {
            tracing::warn!(id, error = %e, "could not discard the volume before deleting it; the pool frees its blocks, the host file keeps them");
        }
    }

    fn discard_whole(&self, dm: &Dm, id: u32) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        // No record: a crash after the kernel's delete and the record's removal; nothing to do.
        let Some(rec) = self.store.volume(id)? else { return Ok(()) };
        // Fails when the kernel already deleted the id (a crash before its commit): nothing left.
        let path = self.activate_thin(dm, &rec)?;
        // O_EXCL: never discard under a mount; a mounted device is refused (and the delete's
        // removal of the device then reports it busy).
        let f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_EXCL)
            .open(&path)
            .ctx(|| format!("opening {} to discard it", path.display()))?;
        discard_file(&f, &path)
    }

    /// Open a live volume's device for writing, exclusively, and make sure nothing else holds
    /// it (open count 1: this descriptor): what a removal of the device would check, checked
    /// without removing it. O_EXCL refuses a mounted device.
    fn open_idle(&self, dm: &Dm, id: u32, info: &DevInfo) -> Result<(std::fs::File, PathBuf)> {
        use std::os::unix::fs::OpenOptionsExt;
        let name = self.thin_dm_name(id);
        let path = dm::node::ensure(&name, info.dev)?;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_EXCL)
            .open(&path)
            .ctx(|| format!("opening {}", path.display()))?;
        match dm.info(&name)? {
            Some(i) if i.open_count <= 1 => Ok((f, path)),
            _ => Err(Error::Busy { what: format!("{id} ({})", path.display()), state: "in use", advice: "unmount it or close what holds it open" }),
        }
    }

    /// Record a volume's lineage (e.g. after its content was replaced from another volume
    /// that is then deleted). Only the store changes.
    pub fn set_parent(&self, v: &VolRef, parent: Option<u32>) -> Result<()> {
        let dm = Dm::open()?;
        let _l = self.lock_and_recover(&dm)?;
        let mut rec = self.resolve(v)?;
        if rec.parent != parent {
            rec.parent = parent;
            self.store.put_volume(&rec)?;
        }
        Ok(())
    }

    /// Mark a volume as a read-only base (or clear the mark). `rcx-dm run` never mounts a
    /// read-only volume writable: it runs a fresh thin snapshot of it. Only the store changes.
    pub fn set_read_only(&self, v: &VolRef, read_only: bool) -> Result<Volume> {
        let dm = Dm::open()?;
        let rec = {
            let _l = self.lock_and_recover(&dm)?;
            let mut rec = self.resolve(v)?;
            if rec.read_only != read_only {
                rec.read_only = read_only;
                self.store.put_volume(&rec)?;
            }
            rec
        };
        self.volume_view(&dm, &rec)
    }

    /// One volume with the kernel's view (active, device, mapped bytes).
    pub fn volume(&self, v: &VolRef) -> Result<Volume> {
        let dm = Dm::open()?;
        self.recover_if_pending(&dm)?;
        let rec = self.resolve(v)?;
        self.volume_view(&dm, &rec)
    }

    /// All volumes, by id.
    pub fn volumes(&self) -> Result<Vec<Volume>> {
        let dm = Dm::open()?;
        self.recover_if_pending(&dm)?;
        let live: std::collections::HashSet<String> = dm.list()?.into_iter().collect();
        self.store
            .volumes()?
            .iter()
            .map(|r| {
                if live.contains(&self.thin_dm_name(r.id)) {
                    self.volume_view(&dm, r)
                } else {
                    Ok(inactive_view(r))
                }
            })
            .collect()
    }

    /// The kernel's view of a volume. Reads take no lock, so a concurrent delete may remove the
    /// device between any two queries, or catch it created but not yet loaded: a device that
    /// vanishes or has no live table is reported inactive, and no /dev link is made here
    /// (activation makes it).
    fn volume_view(&self, dm: &Dm, r: &VolumeRecord) -> Result<Volume> {
        let name = self.thin_dm_name(r.id);
        // Not thin_device: that one repairs under the lock, and reads take none.
        let info = match names::owned(dm, &names::thin(&self.name, r.id)) {
            Ok(Some(i)) => i,
            Ok(None) => return Ok(inactive_view(r)),
            // Listing still works: the volume is not active; `activate` says why.
            Err(e @ Error::ForeignDevice { .. }) => {
                tracing::warn!(id = r.id, "{e}");
                return Ok(inactive_view(r));
            }
            Err(e) => return Err(e),
        };
        let lines = match dm.status_if_present(&name)? {
            Some(l) if info.live_table && !l.is_empty() => l,
            _ => return Ok(inactive_view(r)),
        };
        let mapped = match dm::parse_thin_status(dm::single_status(&lines, "thin", &name)?)? {
            ThinStatus::Working(w) => Some(*w.nr_mapped_sectors * SECTOR),
            ThinStatus::Fail | ThinStatus::Error => None,
        };
        Ok(Volume {
            active: true,
            device: Some(dm::node::existing(&name, info.dev)),
            mapped_bytes: mapped,
            ..inactive_view(r)
        })
    }
}

fn inactive_view(r: &VolumeRecord) -> Volume {
    Volume {
        id: r.id,
        name: r.name.clone(),
        parent: r.parent,
        size_bytes: r.size_bytes,
        active: false,
        device: None,
        mapped_bytes: None,
        read_only: r.read_only,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_refs() {
        assert_eq!("0".parse::<VolRef>().unwrap(), VolRef::Id(0));
        assert_eq!("16777215".parse::<VolRef>().unwrap(), VolRef::Id(MAX_THIN_ID));
        assert!("16777216".parse::<VolRef>().is_err());
        assert!("99999999999999999999999".parse::<VolRef>().is_err());
        assert_eq!("web".parse::<VolRef>().unwrap(), VolRef::Name("web".into()));
        assert!("a/b".parse::<VolRef>().is_err());
        assert!("-x".parse::<VolRef>().is_err());
    }

    #[test]
    fn names_are_never_all_digits() {
        assert!(names::validate_volume_name("123").is_err());
        names::validate_volume_name("v1").unwrap();
    }
}

/// Discard the whole of an open block device.
fn discard_file(f: &std::fs::File, path: &Path) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    use std::os::fd::AsRawFd;
    // BLKDISCARD is _IO(0x12, 119) but takes a pointer to [start, length] in bytes.
    nix::ioctl_write_ptr_bad!(blkdiscard, nix::request_code_none!(0x12, 119), [u64; 2]);
    // The live length, which is the record's unless a resize was interrupted.
    let len = (&*f).seek(SeekFrom::End(0)).ctx(|| format!("sizing {}", path.display()))?;
    // SAFETY: BLKDISCARD reads two u64s from the pointer.
    unsafe { blkdiscard(f.as_raw_fd(), &[0, len]) }
        .map_err(std::io::Error::from)
        .ctx(|| format!("discarding {} ({len} bytes)", path.display()))?;
    Ok(())
}
