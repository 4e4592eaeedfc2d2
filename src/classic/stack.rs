//! Whole stacks: bring every origin with its snapshots up (`pool activate`), take them down
//! (`pool deactivate`), or forget them (`pool destroy`); and the one-device steps every
//! operation is built from (make a device unless it exists, remove one of ours).

use std::path::{Path, PathBuf};

use super::store::{CowBacking, MergePhase, OriginBacking, OriginRecord};
use super::{in_use, Classic};
use crate::dm::{self, DevInfo, Dm, LinearTarget, Persistence, SnapshotOriginTarget, Target, TargetLine};
use crate::error::{Errno, Error, IoContext, Result};
use crate::loopback;
use crate::units::SECTOR;

impl Classic<'_> {
    /// After `Pool::activate` (a reboot or `pool deactivate`): bring back every origin and
    /// snapshot, resume an interrupted merge (snapshot-merge is loaded straight away) and
    /// finish one the kernel completed. Transient snapshots do not survive their device and
    /// are dropped with a warning. Returns the number of origins.
    pub fn activate(&self) -> Result<usize> {
        if !self.store.exists() {
            return Ok(0);
        }
        let dm = Dm::open()?;
        let _l = self.lock()?;
        self.recover_intent(&dm, false)?;
        let origins = self.store.origins()?;
        for o in &origins {
            self.bring_up(&dm, o)?;
        }
        self.settle(&dm)?;
        Ok(origins.len())
    }

    /// Take every classic device down (snapshots, origins, COW and real linears, loops over
    /// their files); records stay, so `activate` brings them back. A running merge stops and
    /// continues on activation. Call before `Pool::deactivate`.
    pub fn deactivate(&self) -> Result<()> {
        if !self.store.exists() {
            return Ok(());
        }
        let dm = Dm::open()?;
        let _l = self.lock()?;
        self.recover_intent(&dm, false)?;
        for o in self.store.origins()? {
            self.take_down(&dm, &o)?;
        }
        Ok(())
    }

    /// `pool destroy`: take everything down and forget it. Refused unless `force` while there
    /// is anything to destroy.
    pub fn destroy(&self, force: bool) -> Result<()> {
        if !self.store.exists() {
            return Ok(());
        }
        let names: Vec<String> = self.store.origins()?.into_iter().map(|o| o.name).collect();
        if !names.is_empty() && !force {
            return Err(Error::Busy {
                what: format!("pool '{}'", self.pool.name()),
                state: "holding classic origins",
                advice: "delete them (`rcx-dm origin delete`) or pass --force",
            });
        }
        self.deactivate()?;
        std::fs::remove_dir_all(self.store.dir()).ctx(|| format!("removing {}", self.store.dir().display()))
    }

    fn take_down(&self, dm: &Dm, o: &OriginRecord) -> Result<()> {
        let snaps = self.store.snapshots_of(&o.name)?;
        for c in &snaps {
            self.remove_snapshot_device(dm, &o.name, &c.name)?;
        }
        self.remove_device(dm, &self.dev_name(&o.name), "origin", &o.name)?;
        for c in &snaps {
            self.remove_device(dm, &self.cow_name(&c.name), "COW device of", &c.name)?;
            if let CowBacking::File { path } = &c.backing {
                detach_if_exists(path)?;
            }
        }
        self.remove_device(dm, &self.real_name(&o.name), "real device of", &o.name)?;
        if let OriginBacking::File { path } = &o.backing {
            detach_if_exists(path)?;
        }
        Ok(())
    }

    /// Make sure the whole stack of origin `o` is up: backing, `-real`, `-cow`s, snapshot
    /// devices (before the origin: nothing to suspend yet), then the origin with
    /// snapshot-origin, or snapshot-merge while a merge is decided but not done.
    pub(super) fn bring_up(&self, dm: &Dm, o: &OriginRecord) -> Result<PathBuf> {
        let sectors = o.size_bytes / SECTOR;
        let backing = self.origin_backing_dev(&o.backing)?;
        let (bdev, _) = loopback::block_device(&backing)?;
        let real = self.ensure(dm, &self.real_name(&o.name), LinearTarget { dev: bdev, offset_sectors: 0 }.line(0, sectors))?.dev;
        let mut merging_snap = None;
        for c in self.store.snapshots_of(&o.name)? {
            let merging = o.merge.as_ref().filter(|m| m.snap == c.name);
            if merging.is_some_and(|m| m.phase == MergePhase::Done) {
                continue; // merged already: `settle` frees it
            }
            if c.persistence == Persistence::Transient && self.info(dm, &self.dev_name(&c.name))?.is_none() {
                tracing::warn!(snapshot = %c.name, "transient snapshot did not survive its device; removing it");
                self.remove_device(dm, &self.cow_name(&c.name), "COW device of", &c.name)?;
                self.free_cow_backing(&c.backing)?;
                self.store.remove_snapshot(&c.name)?;
                continue;
            }
            let cow = self.ensure_cow_device(dm, &c)?;
            if merging.is_some() {
                merging_snap = Some((c, cow));
            } else {
                self.ensure_snapshot_device(dm, o, &c, real, cow, false)?;
            }
        }
        let line = match merging_snap {
            Some((c, cow)) => dm::SnapshotMergeTarget::new(real, cow, c.chunk_sectors)?.line(0, sectors),
            None => SnapshotOriginTarget { real }.line(0, sectors),
        };
        let dev = self.dev_name(&o.name);
        let info = self.ensure(dm, &dev, line)?;
        dm::node::ensure(&dev, info.dev)
    }

    /// Create a one-target device unless it exists; returns its info (and makes its link).
    pub(super) fn ensure(&self, dm: &Dm, name: &str, line: TargetLine) -> Result<DevInfo> {
        let info = match self.live_info(dm, name)? {
            Some(i) => i,
            None => dm.create(name, Some(&self.dm_id(name).uuid), &[line], false)?,
        };
        dm::node::ensure(name, info.dev)?;
        Ok(info)
    }

    /// Remove device `dev` if it is ours and exists (its `/dev/mapper` link either way);
    /// an open device is refused naming `what` `name`.
    pub(super) fn remove_device(&self, dm: &Dm, dev: &str, what: &'static str, name: &str) -> Result<()> {
        // Never remove a device of that name that is not ours.
        if self.info(dm, dev)?.is_none() {
            dm::node::remove(dev);
            return Ok(());
        }
        match dm.remove(dev) {
            Ok(()) => {
                dm::node::remove(dev);
                Ok(())
            }
            Err(e) if e.errno() == Some(Errno::EBUSY) => {
                let open = self.info(dm, dev)?.map_or(0, |i| i.open_count);
                Err(in_use(what, name, open, "unmount it (or stop what holds it open) first"))
            }
            Err(e) => Err(e),
        }
    }
}

fn detach_if_exists(path: &Path) -> Result<()> {
    if path.exists() {
        loopback::detach(path)?;
    }
    Ok(())
}

/// Detach and delete a sparse backing file (an origin's or a COW store's); gone is fine.
pub(super) fn remove_file_backing(path: &Path) -> Result<()> {
    detach_if_exists(path)?;
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).ctx(|| format!("removing {}", path.display())),
    }
}
