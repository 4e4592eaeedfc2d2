//! Thin revert (`rcx-dm revert VOLUME SNAPSHOT`, like `lxc-snapshot -r`): afterwards VOLUME
//! has SNAPSHOT's content and keeps its id and name as users see them.
//!
//! Design. A thin id is fixed in the kernel's metadata and the store keys volumes by it, so
//! the volume must end up as the *same* kernel thin id with new mappings. The kernel cannot
//! swap mappings between ids, and `delete V; create_snap V S` alone has a moment where V's
//! old content is gone and its new content not yet made. So the content goes through a
//! scratch thin id `tmp` that no store record uses:
//!
//! ```text
//!   intent Revert{V, S, tmp, T}  (durable)        V: old content
//!   remove V's dm device (refused while open)
//!   1. create_snap tmp S   (S suspended if active)  set_transaction_id T   -> T+1
//!   2. delete V                                     set_transaction_id T+1 -> T+2
//!   3. create_snap V tmp                            set_transaction_id T+2 -> T+3
//!   4. delete tmp                                   set_transaction_id T+3 -> T+4
//!   record V (parent = S), clear intent, re-activate V if it was active
//! ```
//!
//! Every kernel message is committed by dm-thin before it returns, and the pool's transaction
//! id counts the steps done. At every instant the old content (V) or the new one (tmp or V)
//! exists: after step 1 and before step 3 it is tmp. Recovery (the next command) reads the
//! transaction id: T means nothing was committed, so it rolls back (deletes tmp if step 1 ran
//! without its commit, re-activates V: old content); T+k rolls forward from step k+1 (new
//! content). Each step is idempotent for the redo: create_snap of an existing id answers
//! EEXIST, delete of a missing id ENODATA. Anything outside T..T+4 means the pool was changed
//! behind rcx-dm's back, and recovery stops with a clear error instead of guessing.

use super::store::Intent;
use super::{fault, Pool, VolRef, Volume};
use crate::dm::Dm;
use crate::error::{Errno, Error, Result};

/// Kernel steps of a revert, each committed with its own transaction id.
const STEPS: u64 = 4;

impl Pool {
    /// Give volume `vol` the content of `snapshot`; `vol` keeps its id and name. Refused while
    /// `vol` is open (mounted). Crash-safe: the next command finishes or undoes it.
    pub fn revert(&self, vol: &VolRef, snapshot: &VolRef) -> Result<Volume> {
        let dm = Dm::open()?;
        let id = {
            let _l = self.lock_and_recover(&dm)?;
            let v = self.resolve(vol)?;
            let s = self.resolve(snapshot)?;
            if v.id == s.id {
                return Err(Error::invalid("snapshot", format!("'{snapshot}' is volume '{vol}' itself")));
            }
            let info = self.thin_device(&dm, v.id)?;
            if let Some(i) = &info {
                if i.open_count > 0 {
                    return Err(Error::Busy {
                        what: vol.to_string(),
                        state: "in use",
                        advice: "unmount it (or stop what holds it open) before reverting it",
                    });
                }
            }
            let txid = self.writable_status(&dm)?.transaction_id;
            let tmp = self.allocate_id()?;
            let intent = Intent::Revert { id: v.id, snapshot: s.id, tmp, txid, reactivate: info.is_some() };
            self.store.intent().put(&intent)?;
            let done = fault::point("revert.intent").and_then(|_| self.revert_steps(&dm, &intent, true));
            if let Err(e) = done {
                if e.errno() == Some(Errno::EEXIST) {
                    // The scratch id is taken in the kernel although the store does not know it:
                    // nothing of ours was made, so never "roll back" by deleting it.
                    self.store.intent().clear()?;
                    if info.is_some() {
                        self.activate_thin(&dm, &v)?;
                    }
                    return Err(Error::Inconsistent(format!(
                        "scratch thin id {tmp} exists in the kernel's pool metadata but not in the store; \
                         nothing was changed; inspect the pool with thin_ls"
                    )));
                }
                // An error, not a crash: finish or undo now, as the transaction id says.
                self.recover_locked(&dm)?;
                return Err(e);
            }
            self.store.intent().clear()?;
            v.id
        };
        self.volume(&VolRef::Id(id))
    }

    /// The revert's steps from wherever the kernel's transaction id says it is. `live`: the
    /// revert command itself (fault points fire, nothing committed yet means go on); otherwise
    /// recovery (nothing committed means roll back).
    pub(crate) fn revert_steps(&self, dm: &Dm, intent: &Intent, live: bool) -> Result<()> {
        let Intent::Revert { id, snapshot, tmp, txid, reactivate } = *intent else {
            unreachable!("revert_steps takes a Revert intent")
        };
        let point = |step: &str| if live { fault::point(step) } else { Ok(()) };
        let pool = self.pool_dm_name();
        let sdev = self.thin_dm_name(snapshot);
        // A crash between suspend and resume of the snapshot leaves it suspended.
        if !live && self.thin_device(dm, snapshot)?.is_some_and(|i| i.suspended) {
            dm.resume(&sdev)?;
        }
        let kernel = self.kernel_status(dm)?.transaction_id;
        if kernel < txid || kernel > txid + STEPS {
            return Err(Error::Inconsistent(format!(
                "pool '{}' has transaction id {kernel} but the interrupted revert {intent:?} expected {txid}..{}; \
                 the pool was changed outside rcx-dm; inspect it with thin_ls before continuing",
                self.name,
                txid + STEPS
            )));
        }
        let reactivate_volume = || -> Result<()> {
            if reactivate {
                let rec = self.store.volume(id)?.ok_or_else(|| Error::Inconsistent(format!("volume {id} lost its record during a revert")))?;
                self.activate_thin(dm, &rec)?;
            }
            Ok(())
        };
        if kernel == txid && !live {
            // Not committed: the volume keeps its old content; drop the copy if it was made.
            ignore(dm.message(&pool, &format!("delete {tmp}")), Errno::ENODATA)?;
            return reactivate_volume();
        }
        // The volume's thin cannot be deleted while its device exists.
        self.remove_thin_device(dm, id)?;
        point("revert.deactivated")?;
        for k in (kernel - txid)..STEPS {
            let step = match k {
                0 => {
                    self.thin_device(dm, snapshot)?;
                    dm.with_suspended(&sdev, || {
                        // Live, EEXIST is not "done" but someone else's thin: the caller refuses.
                        let r = dm.message(&pool, &format!("create_snap {tmp} {snapshot}"));
                        if live {
                            r.map(|_| ())
                        } else {
                            ignore(r, Errno::EEXIST)
                        }
                    })?;
                    "revert.snapped"
                }
                1 => {
                    ignore(dm.message(&pool, &format!("delete {id}")), Errno::ENODATA)?;
                    "revert.deleted"
                }
                2 => {
                    ignore(dm.message(&pool, &format!("create_snap {id} {tmp}")), Errno::EEXIST)?;
                    "revert.restored"
                }
                _ => {
                    ignore(dm.message(&pool, &format!("delete {tmp}")), Errno::ENODATA)?;
                    "revert.cleaned"
                }
            };
            dm.message(&pool, &format!("set_transaction_id {} {}", txid + k, txid + k + 1))?;
            point(step)?;
        }
        let mut rec = self
            .store
            .volume(id)?
            .ok_or_else(|| Error::Inconsistent(format!("volume {id} lost its record during a revert")))?;
        rec.parent = Some(snapshot);
        rec.txid = txid + STEPS;
        self.store.put_volume(&rec)?;
        point("revert.recorded")?;
        reactivate_volume()?;
        point("revert.activated")
    }
}

/// The kernel's idempotency signals: EEXIST / ENODATA mean "already done".
fn ignore<T>(r: Result<T>, errno: Errno) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.errno() == Some(errno) => Ok(()),
        Err(e) => Err(e),
    }
}
