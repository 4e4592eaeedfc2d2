//! After an interrupted command (a crash, a kill, a failed step): replay or undo the intent it
//! left, resume origins it left suspended, and carry recorded merges forward. Every operation
//! settles first, under the classic lock.

use super::stack::remove_file_backing;
use super::store::{ClassicIntent, OriginBacking};
use super::Classic;
use crate::dm::Dm;
use crate::error::Result;
use crate::pool::fault;

impl Classic<'_> {
    /// Close out an operation's intent: on success clear it; on failure undo or finish it now
    /// (an error, not a crash) and report the original error.
    pub(super) fn finish_intent(&self, dm: &Dm, r: Result<()>) -> Result<()> {
        match r {
            Ok(()) => self.store.intent().clear(),
            Err(e) => {
                if let Err(re) = self.recover_intent(dm, false) {
                    tracing::warn!("could not clean up after the failed operation: {re}");
                }
                Err(e)
            }
        }
    }

    /// Finish whatever an interrupted command left: its intent, origins it left suspended,
    /// and merges (load a decided one, finish a completed one). Call with the lock held.
    pub(super) fn settle(&self, dm: &Dm) -> Result<()> {
        self.settle_except(dm, None)
    }

    /// `settle`, leaving the merge of origin `except` to the caller (the merge command drives
    /// its own merge, with its fault points).
    pub(super) fn settle_except(&self, dm: &Dm, except: Option<&str>) -> Result<()> {
        self.recover_intent(dm, false)?;
        for o in self.store.origins()? {
            let dev = self.dev_name(&o.name);
            if self.live_info(dm, &dev)?.is_some_and(|i| i.suspended) {
                tracing::warn!(origin = %o.name, "resuming an origin an interrupted command left suspended");
                dm.resume(&dev)?;
            }
            if o.merge.is_some() && except != Some(o.name.as_str()) {
                if let Err(e) = self.advance(dm, &o.name, false) {
                    tracing::warn!(origin = %o.name, "merge cannot go on: {e}");
                }
            }
        }
        Ok(())
    }

    /// For read commands: settle only when there is something to settle (an intent or a
    /// merge), so reading stays cheap.
    pub(super) fn settle_quick(&self, dm: &Dm) -> Result<()> {
        if !self.store.exists() {
            return Ok(());
        }
        let pending = self.store.intent().get()?.is_some() || self.store.origins()?.iter().any(|o| o.merge.is_some());
        if pending {
            let _l = self.lock()?;
            self.settle(dm)?;
        }
        Ok(())
    }

    /// Creates roll back unless their record was written (the last step); deletes roll
    /// forward. Every step is idempotent. `live`: the delete command itself (fault points).
    pub(super) fn recover_intent(&self, dm: &Dm, live: bool) -> Result<()> {
        let point = |s: &str| if live { fault::point(s) } else { Ok(()) };
        let Some(intent) = self.store.intent().get()? else { return Ok(()) };
        if !live {
            tracing::info!(?intent, "finishing an interrupted classic operation");
        }
        match &intent {
            ClassicIntent::OriginCreate { name, backing } => {
                if self.store.origin(name)?.is_none() {
                    self.remove_device(dm, &self.dev_name(name), "origin", name)?;
                    self.remove_device(dm, &self.real_name(name), "real device of", name)?;
                    if let OriginBacking::File { path } = backing {
                        remove_file_backing(path)?;
                    }
                }
            }
            ClassicIntent::SnapshotCreate { name, origin, backing } => {
                if self.store.snapshot(name)?.is_none() {
                    self.remove_snapshot_device(dm, origin, name)?;
                    self.remove_device(dm, &self.cow_name(name), "COW device of", name)?;
                    self.free_cow_backing(backing)?;
                }
            }
            ClassicIntent::SnapshotDelete { name } => {
                if let Some(c) = self.store.snapshot(name)? {
                    self.remove_snapshot_device(dm, &c.origin, name)?;
                    point("cow-delete.removed")?;
                    self.remove_device(dm, &self.cow_name(name), "COW device of", name)?;
                    self.free_cow_backing(&c.backing)?;
                    point("cow-delete.freed")?;
                    self.store.remove_snapshot(name)?;
                }
            }
            ClassicIntent::OriginDelete { name } => {
                if let Some(o) = self.store.origin(name)? {
                    self.remove_device(dm, &self.dev_name(name), "origin", name)?;
                    point("origin-delete.removed")?;
                    self.remove_device(dm, &self.real_name(name), "real device of", name)?;
                    if let OriginBacking::File { path } = &o.backing {
                        remove_file_backing(path)?;
                    }
                    self.store.remove_origin(name)?;
                }
            }
        }
        self.store.intent().clear()
    }
}
