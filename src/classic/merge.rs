//! Merging a snapshot back into its origin, the kernel's snapshot-merge sequence that is
//! otherwise done by hand with dmsetup, with completion:
//!
//! ```text
//!   record merge{snap, Started}        (durable; undecided while the snapshot device exists)
//!   suspend origin; refuse if the origin is open (mounted)
//!   remove the snapshot device          <- decided from here: the merge will happen
//!   load snapshot-merge into the origin; resume   (the kernel merges in the background)
//!   ... poll the origin's status until allocated == metadata sectors ...
//!   flush the origin; record merge{Done}
//!   suspend; load snapshot-origin; resume; remove the -cow device; free the COW; forget the merge
//! ```
//!
//! `advance` drives a recorded merge one step from whatever state the kernel shows, so the
//! same code finishes an interrupted merge on the next command (`settle`) or after a reboot
//! (`activate` loads snapshot-merge straight away and the kernel resumes from the COW's
//! on-disk exception table). Merging an open origin is refused: the kernel would change the
//! origin's blocks under a filesystem that has them cached.

use std::time::Duration;

use serde::Serialize;

use super::store::{MergePhase, MergeRecord};
use super::{in_use, live_target, Classic};
use crate::dm::{self, snapshot::load_merge, Dm, SnapshotMergeTarget, SnapshotOriginTarget, SnapshotStatus, Target};
use crate::error::{Error, IoContext, Result};
use crate::pool::fault;
use crate::units::SECTOR;

/// Where a merge stands.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MergeProgress {
    /// The snapshot being merged.
    pub snap: String,
    /// The origin it merges into.
    pub origin: String,
    /// The merge is over: the origin is snapshot-origin again and the COW is freed.
    pub finished: bool,
    /// Data sectors in the COW when the merge started.
    pub data_sectors_at_start: u64,
    /// Data sectors still in the COW (while the kernel merges).
    pub data_sectors_left: Option<u64>,
    /// Percent merged so far.
    pub percent: f64,
}

/// Percent merged, from the data sectors at the start and those left.
pub(super) fn percent(at_start: u64, left: Option<u64>) -> f64 {
    match left {
        Some(l) if at_start > 0 => (100.0 * (1.0 - l as f64 / at_start as f64)).clamp(0.0, 100.0),
        Some(_) => 100.0,
        None => 0.0,
    }
}

impl Classic<'_> {
    /// Start merging snapshot `snap` into its origin and return at once (the kernel merges in
    /// the background; `wait_merge` or any later classic command finishes it). Starting a merge
    /// that is already running is fine; a second merge on the same origin, an invalid or
    /// overflowed snapshot, a transient one, and an open origin or snapshot are refused.
    pub fn merge(&self, snap: &str) -> Result<MergeProgress> {
        let dm = Dm::open()?;
        let _l = self.lock()?;
        self.settle(&dm)?;
        let c = self.store.snapshot(snap)?.ok_or_else(|| self.no_such("snapshot", snap))?;
        let mut o = self
            .store
            .origin(&c.origin)?
            .ok_or_else(|| Error::Inconsistent(format!("snapshot {snap} has no origin record '{}'", c.origin)))?;
        if let Some(m) = &o.merge {
            if m.snap == snap {
                return self.progress_locked(&dm, snap, &c.origin);
            }
            return Err(Error::MergeInProgress { origin: o.name.clone(), snap: m.snap.clone() });
        }
        if c.persistence != dm::Persistence::Persistent {
            return Err(Error::MergeNeedsPersistent(snap.to_string()));
        }
        let sdev = self.dev_name(snap);
        let sinfo = self.info(&dm, &sdev)?.ok_or_else(|| Error::ClassicInactive { kind: "snapshot", name: snap.to_string() })?;
        let status = dm::snapshot::snapshot_status(&dm, &sdev, "snapshot")?;
        match status {
            SnapshotStatus::Invalid => return Err(Error::SnapshotUnusable { snap: snap.to_string(), state: "invalid" }),
            SnapshotStatus::Overflow => return Err(Error::SnapshotUnusable { snap: snap.to_string(), state: "overflowed" }),
            _ => {}
        }
        if sinfo.open_count > 0 {
            return Err(in_use("snapshot", snap, sinfo.open_count, "unmount it first: its device goes away when the merge starts"));
        }
        let odev = self.dev_name(&o.name);
        let oinfo = self.info(&dm, &odev)?.ok_or_else(|| Error::ClassicInactive { kind: "origin", name: o.name.clone() })?;
        if oinfo.open_count > 0 {
            return Err(origin_open(&o.name, oinfo.open_count));
        }
        o.merge = Some(MergeRecord {
            snap: snap.to_string(),
            phase: MergePhase::Started,
            data_sectors_at_start: status.data_sectors().unwrap_or(0),
        });
        self.store.put_origin(&o)?;
        // Undecided until the snapshot device is gone: a failure before that undoes the merge.
        let decided = (|| {
            fault::point("merge.recorded")?;
            dm.suspend(&odev)?;
            fault::point("merge.suspended")?;
            // Again while suspended: an open that raced the first check shows now.
            let open = self.info(&dm, &odev)?.map_or(0, |i| i.open_count);
            if open > 0 {
                return Err(origin_open(&o.name, open));
            }
            self.remove_device(&dm, &sdev, "snapshot", snap)
        })();
        if let Err(e) = decided {
            if self.info(&dm, &sdev)?.is_some() {
                if self.info(&dm, &odev)?.is_some_and(|i| i.suspended) {
                    dm.resume(&odev)?;
                }
                o.merge = None;
                self.store.put_origin(&o)?;
                return Err(e);
            }
            tracing::warn!("{e}; the snapshot device is gone, so the merge goes on");
        }
        fault::point("merge.removed")?;
        self.advance(&dm, &o.name, true)?;
        self.progress_locked(&dm, snap, &o.name)
    }

    /// Where the merge of `snap` (into `origin`) stands; finishes it when the kernel is done.
    pub fn poll_merge(&self, snap: &str, origin: &str) -> Result<MergeProgress> {
        let dm = Dm::open()?;
        let _l = self.lock()?;
        self.settle_except(&dm, Some(origin))?;
        self.advance(&dm, origin, true)?;
        self.progress_locked(&dm, snap, origin)
    }

    /// Start (or join) the merge of `snap` and wait until it is finished: the origin is
    /// snapshot-origin again with the snapshot's content, and the COW store is freed.
    /// `on_progress` sees each poll (for a progress bar).
    pub fn wait_merge(&self, snap: &str, mut on_progress: impl FnMut(&MergeProgress)) -> Result<MergeProgress> {
        let mut p = self.merge(snap)?;
        loop {
            on_progress(&p);
            if p.finished {
                return Ok(p);
            }
            std::thread::sleep(Duration::from_millis(100));
            p = self.poll_merge(snap, &p.origin)?;
        }
    }

    fn progress_locked(&self, dm: &Dm, snap: &str, origin: &str) -> Result<MergeProgress> {
        let o = self.store.origin(origin)?;
        let m = o.as_ref().and_then(|o| o.merge.clone()).filter(|m| m.snap == snap);
        let Some(m) = m else {
            if self.store.snapshot(snap)?.is_some() {
                return Err(Error::invalid("merge", format!("snapshot '{snap}' is not merging; start it with `rcx-dm merge {snap}`")));
            }
            return Ok(MergeProgress {
                snap: snap.into(),
                origin: origin.into(),
                finished: true,
                data_sectors_at_start: 0,
                data_sectors_left: Some(0),
                percent: 100.0,
            });
        };
        let odev = self.dev_name(origin);
        let mut left = None;
        if m.phase == MergePhase::Done {
            left = Some(0);
        } else if self.info(dm, &odev)?.is_some() && live_target(dm, &odev)?.as_deref() == Some("snapshot-merge") {
            match dm::snapshot::snapshot_status(dm, &odev, "snapshot-merge")? {
                SnapshotStatus::MergeFailed => {
                    return Err(Error::MergeFailed { snap: snap.into(), origin: origin.into() });
                }
                SnapshotStatus::Invalid => {
                    return Err(Error::SnapshotUnusable { snap: snap.into(), state: "invalid" });
                }
                s => left = s.data_sectors(),
            }
        } else if self.info(dm, &odev)?.is_none() {
            return Err(Error::ClassicInactive { kind: "origin", name: origin.into() });
        }
        Ok(MergeProgress {
            snap: snap.into(),
            origin: origin.into(),
            finished: false,
            data_sectors_at_start: m.data_sectors_at_start,
            data_sectors_left: left,
            percent: percent(m.data_sectors_at_start, left),
        })
    }

    /// Drive the recorded merge of origin `name` as far as the kernel's state allows, without
    /// waiting. Call with the lock held. `live`: the merge command itself (fault points fire).
    pub(super) fn advance(&self, dm: &Dm, name: &str, live: bool) -> Result<()> {
        let point = |s: &str| if live { fault::point(s) } else { Ok(()) };
        let Some(mut o) = self.store.origin(name)? else { return Ok(()) };
        let Some(m) = o.merge.clone() else { return Ok(()) };
        let odev = self.dev_name(name);
        let Some(info) = self.info(dm, &odev)? else { return Ok(()) }; // inactive: `activate` loads it
        if info.suspended && !live {
            dm.resume(&odev)?; // left by an interrupted command (we hold the lock)
        }
        let sectors = o.size_bytes / SECTOR;
        let real = self
            .info(dm, &self.real_name(name))?
            .ok_or_else(|| Error::Inconsistent(format!("origin {name} is active without its -real device")))?
            .dev;
        if m.phase == MergePhase::Started {
            if live_target(dm, &odev)?.as_deref() == Some(SnapshotOriginTarget::TYPE) {
                if self.info(dm, &self.dev_name(&m.snap))?.is_some() {
                    // Not decided (the snapshot device still exists): undo the merge.
                    tracing::warn!(origin = name, snapshot = %m.snap, "undoing a merge that was interrupted before it started");
                    o.merge = None;
                    return self.store.put_origin(&o);
                }
                let Some(c) = self.store.snapshot(&m.snap)? else {
                    tracing::warn!(origin = name, snapshot = %m.snap, "merging snapshot has no record; forgetting the merge");
                    o.merge = None;
                    return self.store.put_origin(&o);
                };
                let cow = self.ensure_cow_device(dm, &c)?;
                let t = SnapshotMergeTarget::new(real, cow, c.chunk_sectors)?;
                // The merge command comes here with the origin already suspended; either way it
                // is resumed on every path: with snapshot-merge if the load worked, else as it was.
                if !self.info(dm, &odev)?.is_some_and(|i| i.suspended) {
                    dm.suspend(&odev)?;
                }
                let loaded = load_merge(dm, &odev, &t, sectors);
                let faulted = if loaded.is_ok() { point("merge.loaded") } else { Ok(()) };
                dm.resume(&odev)?;
                faulted?;
                if let Err(e) = loaded {
                    // The kernel refused snapshot-merge: give the snapshot back as it was.
                    tracing::warn!(origin = name, snapshot = %m.snap, "kernel refused the merge: {e}");
                    self.ensure_snapshot_device(dm, &o, &c, real, cow, false)?;
                    o.merge = None;
                    self.store.put_origin(&o)?;
                    return Err(e);
                }
                point("merge.resumed")?;
            }
            match dm::snapshot::snapshot_status(dm, &odev, "snapshot-merge")? {
                SnapshotStatus::MergeFailed => return Err(Error::MergeFailed { snap: m.snap, origin: name.into() }),
                SnapshotStatus::Invalid => return Err(Error::SnapshotUnusable { snap: m.snap, state: "invalid" }),
                s if s.is_merge_complete() => {
                    // Everything is back in the origin: make it durable before the COW goes.
                    let path = dm::node::ensure(&odev, info.dev)?;
                    std::fs::File::open(&path)
                        .and_then(|f| f.sync_all())
                        .ctx(|| format!("flushing {}", path.display()))?;
                    o.merge = Some(MergeRecord { phase: MergePhase::Done, ..m.clone() });
                    self.store.put_origin(&o)?;
                    point("merge.done")?;
                }
                _ => return Ok(()),
            }
        }
        // Done: snapshot-origin again, then free the COW and forget the merge.
        if live_target(dm, &odev)?.as_deref() == Some("snapshot-merge") {
            let line = SnapshotOriginTarget { real }.line(0, sectors);
            dm.with_suspended(&odev, || dm.load(&odev, &[line], false))?;
        }
        point("merge.swapped")?;
        if let Some(c) = self.store.snapshot(&m.snap)? {
            self.remove_device(dm, &self.cow_name(&c.name), "COW device of", &c.name)?;
            self.free_cow_backing(&c.backing)?;
            point("merge.freed")?;
            self.store.remove_snapshot(&c.name)?;
        }
        o.merge = None;
        self.store.put_origin(&o)
    }
}

fn origin_open(name: &str, open: i32) -> Error {
    in_use(
        "origin",
        name,
        open,
        "unmount it first: a merge changes the origin's blocks under an open filesystem, which has the old ones cached",
    )
}

#[cfg(test)]
mod tests {
    use super::percent;

    #[test]
    fn merge_percent() {
        assert_eq!(percent(0, Some(0)), 100.0);
        assert_eq!(percent(100, Some(100)), 0.0);
        assert_eq!(percent(100, Some(25)), 75.0);
        assert_eq!(percent(100, Some(0)), 100.0);
        assert_eq!(percent(100, None), 0.0);
        assert_eq!(percent(100, Some(200)), 0.0);
    }
}
