//! Snapshots of an origin: create (a COW store, the `-cow` linear over it, the snapshot device
//! loaded with the origin suspended), delete, the read side (`cow status`), and the one-device
//! steps for a snapshot's COW device and snapshot device that stacks and merges reuse.

use std::path::PathBuf;

use super::store::{ClassicIntent, CowBacking, MergePhase, OriginRecord, SnapshotRecord};
use super::{chunk_sectors, in_use, live_target, merge, validate_name, Classic, SnapshotOptions, SnapshotState, SnapshotView};
use crate::dm::{self, Device, Dm, LinearTarget, Persistence, SnapshotStatus, SnapshotTarget, Target};
use crate::error::{Error, Result};
use crate::loopback;
use crate::pool::fault;
use crate::pool::VolRef;
use crate::units::SECTOR;

impl Classic<'_> {
    /// Create snapshot `name` of origin `origin`: a COW store (zeroed header), its `-cow`
    /// linear, and the snapshot device, loaded with the origin suspended (as the kernel
    /// requires) and the origin resumed on every path.
    pub fn create_snapshot(&self, name: &str, origin: &str, opts: &SnapshotOptions) -> Result<SnapshotView> {
        validate_name(name)?;
        let chunk = chunk_sectors(opts.chunk_bytes)?;
        // Chunk 0 holds the header, chunk 1 the first exception table; data needs one more.
        if opts.size_bytes % SECTOR != 0 || opts.size_bytes < 3 * opts.chunk_bytes {
            return Err(Error::invalid(
                "COW size",
                format!(
                    "{} bytes; a COW store needs at least 3 chunks of {} (header, exception table, data) and whole sectors",
                    opts.size_bytes, opts.chunk_bytes
                ),
            ));
        }
        let dm = Dm::open()?;
        {
            let _l = self.lock()?;
            self.settle(&dm)?;
            self.check_free(&dm, name)?;
            let o = self.store.origin(origin)?.ok_or_else(|| self.no_such("origin", origin))?;
            let oinfo = self.info(&dm, &self.dev_name(origin))?;
            let real = self.info(&dm, &self.real_name(origin))?;
            let (Some(_), Some(real)) = (oinfo, real) else {
                return Err(Error::ClassicInactive { kind: "origin", name: origin.to_string() });
            };
            let backing = if opts.in_pool {
                CowBacking::Volume { name: format!("{name}.cow") }
            } else {
                CowBacking::File { path: self.store.file_for(name, "cow") }
            };
            self.store.intent().put(&ClassicIntent::SnapshotCreate {
                name: name.to_string(),
                origin: origin.to_string(),
                backing: backing.clone(),
            })?;
            let made = (|| {
                fault::point("cow-create.intent")?;
                let path = match &backing {
                    CowBacking::File { path } => {
                        loopback::create_sparse(path, opts.size_bytes)?;
                        loopback::attach(path)?
                    }
                    CowBacking::Volume { name } => {
                        let v = self.pool.create_thin(None, opts.size_bytes, Some(name))?;
                        v.device.ok_or_else(|| Error::Inconsistent(format!("pool volume {} was created inactive", v.id)))?
                    }
                };
                // A persistent store whose header is all zeroes is formatted as new; whatever
                // the backing held before must never be read as exceptions.
                loopback::zero_head(&path, 4096)?;
                let rec = SnapshotRecord {
                    name: name.to_string(),
                    origin: origin.to_string(),
                    backing,
                    size_bytes: opts.size_bytes,
                    chunk_sectors: chunk,
                    persistence: opts.persistence,
                };
                let cow = self.ensure_cow_device(&dm, &rec)?;
                fault::point("cow-create.cow")?;
                self.ensure_snapshot_device(&dm, &o, &rec, real.dev, cow, true)?;
                fault::point("cow-create.loaded")?;
                self.store.put_snapshot(&rec)
            })();
            self.finish_intent(&dm, made)?;
        }
        self.snapshot(name)
    }

    /// Delete snapshot `name` and free its COW store. Refused while it is merging or open.
    pub fn delete_snapshot(&self, name: &str) -> Result<()> {
        let dm = Dm::open()?;
        let _l = self.lock()?;
        self.settle(&dm)?;
        let c = self.store.snapshot(name)?.ok_or_else(|| self.no_such("snapshot", name))?;
        if let Some(o) = self.store.origin(&c.origin)? {
            if o.merge.as_ref().is_some_and(|m| m.snap == name) {
                return Err(Error::SnapshotMerging { snap: name.to_string(), origin: o.name, what: "deleted" });
            }
        }
        if let Some(i) = self.info(&dm, &self.dev_name(name))? {
            if i.open_count > 0 {
                return Err(in_use("snapshot", name, i.open_count, "unmount it first"));
            }
        }
        self.store.intent().put(&ClassicIntent::SnapshotDelete { name: name.to_string() })?;
        let done = fault::point("cow-delete.intent").and_then(|_| self.recover_intent(&dm, true));
        self.finish_intent(&dm, done)
    }

    /// Snapshot `name` with its state and COW usage (after finishing what an interrupted
    /// command left, if anything).
    pub fn snapshot(&self, name: &str) -> Result<SnapshotView> {
        let dm = Dm::open()?;
        self.settle_quick(&dm)?;
        let c = self.store.snapshot(name)?.ok_or_else(|| self.no_such("snapshot", name))?;
        self.snapshot_view(&dm, &c)
    }

    /// Every snapshot of the pool, by name (empty when the pool never had one).
    pub fn snapshots(&self) -> Result<Vec<SnapshotView>> {
        if !self.store.exists() {
            return Ok(Vec::new());
        }
        let dm = Dm::open()?;
        self.settle_quick(&dm)?;
        self.store.snapshots()?.iter().map(|c| self.snapshot_view(&dm, c)).collect()
    }

    fn snapshot_view(&self, dm: &Dm, c: &SnapshotRecord) -> Result<SnapshotView> {
        let mut v = SnapshotView {
            name: c.name.clone(),
            origin: c.origin.clone(),
            size_bytes: c.size_bytes,
            chunk_bytes: c.chunk_sectors * SECTOR,
            persistent: c.persistence == Persistence::Persistent,
            backing: c.backing.clone(),
            device: None,
            state: SnapshotState::Inactive,
            allocated_sectors: None,
            total_sectors: None,
            metadata_sectors: None,
            percent_used: None,
            merge_percent: None,
        };
        let merge = self.store.origin(&c.origin)?.and_then(|o| o.merge).filter(|m| m.snap == c.name);
        let status = match &merge {
            Some(m) if m.phase == MergePhase::Done => {
                v.state = SnapshotState::Merged;
                v.merge_percent = Some(100.0);
                return Ok(v);
            }
            Some(m) => {
                let odev = self.dev_name(&c.origin);
                if self.info(dm, &odev)?.is_none() || live_target(dm, &odev)?.as_deref() != Some("snapshot-merge") {
                    // Decided but not (yet) loaded: the next command or `pool activate` loads it.
                    v.state = if self.info(dm, &odev)?.is_some() { SnapshotState::Merging } else { SnapshotState::Inactive };
                    return Ok(v);
                }
                let s = dm::snapshot::snapshot_status(dm, &odev, "snapshot-merge")?;
                v.merge_percent = Some(merge::percent(m.data_sectors_at_start, s.data_sectors()));
                v.state = SnapshotState::Merging;
                s
            }
            None => {
                let sdev = self.dev_name(&c.name);
                let Some(i) = self.info(dm, &sdev)? else { return Ok(v) };
                v.device = Some(dm::node::existing(&sdev, i.dev));
                let s = dm::snapshot::snapshot_status(dm, &sdev, "snapshot")?;
                v.state = SnapshotState::Valid;
                s
            }
        };
        match status {
            SnapshotStatus::Usage { allocated_sectors, total_sectors, metadata_sectors } => {
                v.allocated_sectors = Some(allocated_sectors);
                v.total_sectors = Some(total_sectors);
                v.metadata_sectors = Some(metadata_sectors);
                v.percent_used = status.percent_used();
            }
            SnapshotStatus::Invalid => v.state = SnapshotState::Invalid,
            SnapshotStatus::Overflow => v.state = SnapshotState::Overflow,
            SnapshotStatus::MergeFailed => v.state = SnapshotState::MergeFailed,
            SnapshotStatus::Unknown => {}
        }
        Ok(v)
    }

    /// The `-cow` linear of snapshot `c` over its COW store, made unless it exists.
    pub(super) fn ensure_cow_device(&self, dm: &Dm, c: &SnapshotRecord) -> Result<Device> {
        let path = self.cow_backing_dev(&c.backing)?;
        let (dev, _) = loopback::block_device(&path)?;
        Ok(self.ensure(dm, &self.cow_name(&c.name), LinearTarget { dev, offset_sectors: 0 }.line(0, c.size_bytes / SECTOR))?.dev)
    }

    /// The snapshot device of `c`, loaded with its origin suspended (when the origin exists).
    pub(super) fn ensure_snapshot_device(
        &self,
        dm: &Dm,
        o: &OriginRecord,
        c: &SnapshotRecord,
        real: Device,
        cow: Device,
        live: bool,
    ) -> Result<()> {
        let sdev = self.dev_name(&c.name);
        if let Some(i) = self.live_info(dm, &sdev)? {
            dm::node::ensure(&sdev, i.dev)?;
            return Ok(());
        }
        let t = SnapshotTarget::new(real, cow, c.persistence, c.chunk_sectors)?;
        dm.with_suspended(&self.dev_name(&o.name), || {
            if live {
                fault::point("cow-create.suspended")?;
            }
            self.ensure(dm, &sdev, t.line(0, o.size_bytes / SECTOR)).map(|_| ())
        })
    }

    /// Remove a snapshot device with its origin suspended, as the kernel requires.
    pub(super) fn remove_snapshot_device(&self, dm: &Dm, origin: &str, snap: &str) -> Result<()> {
        let sdev = self.dev_name(snap);
        if self.info(dm, &sdev)?.is_none() {
            return Ok(());
        }
        dm.with_suspended(&self.dev_name(origin), || self.remove_device(dm, &sdev, "snapshot", snap))
    }

    /// The block device under a `-cow` linear, made ready (loop attached, pool volume
    /// activated).
    fn cow_backing_dev(&self, b: &CowBacking) -> Result<PathBuf> {
        match b {
            CowBacking::File { path } => loopback::attach(path),
            CowBacking::Volume { name } => self.pool.activate_volume(&VolRef::Name(name.clone())),
        }
    }

    /// Delete a snapshot's COW store (file or pool volume); one already gone is fine.
    pub(super) fn free_cow_backing(&self, b: &CowBacking) -> Result<()> {
        match b {
            CowBacking::File { path } => super::stack::remove_file_backing(path),
            CowBacking::Volume { name } => self.pool.delete_if_exists(&VolRef::Name(name.clone()), true).map(|_| ()),
        }
    }
}
