//! Roll-forward / roll-back of an interrupted operation. The kernel's pool transaction id
//! decides: each intent records the id before the operation, and the operation's last kernel
//! step is `set_transaction_id txid txid+1`. So after a crash:
//!   kernel == txid+1: the kernel committed; finish the store side (roll forward);
//!   kernel == txid:   the kernel did not commit; undo whatever kernel step may have run.
//! Deletes are always rolled forward once their intent is written.

use super::store::{Intent, VolumeRecord};
use super::{fault, Pool};
use crate::dm::Dm;
use crate::error::{Errno, Error, Result};

impl Pool {
    /// Finish or undo an interrupted operation. Call with the pool lock held.
    pub(crate) fn recover_locked(&self, dm: &Dm) -> Result<()> {
        self.recover_steps(dm, false, false)
    }

    /// A delete's forward path is its recovery: run it with the `delete.*` fault points, which
    /// must not fire when some later command recovers (that recovery has to finish the job).
    /// `discarded`: the caller discarded the volume through its live device already.
    pub(crate) fn delete_forward_locked(&self, dm: &Dm, discarded: bool) -> Result<()> {
        self.recover_steps(dm, true, discarded)
    }

    /// For read commands (`list`, `info`): they are "the next command" too, so they finish an
    /// interrupted operation before reporting. Only where there is one, and only on a live pool
    /// (an inactive pool is recovered by `pool activate`).
    pub(crate) fn recover_if_pending(&self, dm: &Dm) -> Result<()> {
        if self.store.intent().get()?.is_none() && self.store.extend_intent().get()?.is_none() {
            return Ok(());
        }
        let _l = self.lock()?;
        if self.pool_device(&dm)?.is_none() {
            return Ok(());
        }
        self.recover_locked(dm)
    }

    /// Like `recover_if_pending`, but an interrupted volume operation that cannot be recovered
    /// now (the pool is inactive) is an error (PoolInactive): for callers that must see its
    /// outcome before they look volumes up by name.
    pub(crate) fn recover_pending_or_fail(&self, dm: &Dm) -> Result<()> {
        if self.store.intent().get()?.is_none() {
            return Ok(());
        }
        let _l = self.lock()?;
        if self.pool_device(dm)?.is_none() {
            return match self.store.intent().get()? {
                Some(_) => Err(Error::PoolInactive(self.name.clone())),
                None => Ok(()),
            };
        }
        self.recover_locked(dm)
    }

    fn recover_steps(&self, dm: &Dm, faults: bool, discarded: bool) -> Result<()> {
        let point = |step: &str| if faults { fault::point(step) } else { Ok(()) };
        if let Some(e) = self.store.extend_intent().get()? {
            self.finish_extend(dm, &e)?;
        }
        let Some(intent) = self.store.intent().get()? else { return Ok(()) };
        tracing::info!(?intent, "recovering interrupted operation");
        let kernel = self.kernel_status(dm)?.transaction_id;
        match &intent {
            Intent::Create { id, name, parent, size_bytes, txid } => {
                if let Some(p) = parent {
                    // A crash between suspend and resume leaves the origin suspended.
                    let origin = self.thin_dm_name(*p);
                    if self.thin_device(dm, *p)?.is_some_and(|i| i.suspended) {
                        dm.resume(&origin)?;
                    }
                }
                if kernel == txid + 1 {
                    let rec = VolumeRecord {
                        id: *id,
                        name: name.clone(),
                        parent: *parent,
                        size_bytes: *size_bytes,
                        txid: kernel,
                        autoactivate: true,
                        read_only: false,
                    };
                    if let Some(n) = name {
                        self.store.claim_name(n, *id)?;
                    }
                    if self.store.volume(*id)?.is_none() {
                        self.store.put_volume(&rec)?;
                    }
                } else if kernel == *txid {
                    self.remove_thin_device(dm, *id)?;
                    ignore(dm.message(&self.pool_dm_name(), &format!("delete {id}")), Errno::ENODATA)?;
                    self.store.remove_volume(*id)?;
                    if let Some(n) = name {
                        self.store.release_name(n, *id)?;
                    }
                } else {
                    return Err(self.mismatch(&intent, kernel));
                }
            }
            Intent::Revert { .. } => self.revert_steps(dm, &intent, false)?,
            Intent::Delete { id, name, txid } => {
                if kernel != *txid && kernel != txid + 1 {
                    return Err(self.mismatch(&intent, kernel));
                }
                // Not committed yet, so the volume may still be in the kernel's metadata: give
                // its blocks back to the host first. Here rather than in `delete` alone, so a
                // crash anywhere before the kernel's delete still ends with the space returned.
                if kernel == *txid && self.fresh_config()?.discard_on_delete {
                    if !discarded {
                        self.discard_before_delete(dm, *id);
                    }
                    point("delete.discarded")?;
                }
                self.remove_thin_device(dm, *id)?;
                ignore(dm.message(&self.pool_dm_name(), &format!("delete {id}")), Errno::ENODATA)?;
                point("delete.deleted")?;
                if kernel == *txid {
                    dm.message(&self.pool_dm_name(), &format!("set_transaction_id {txid} {}", txid + 1))?;
                }
                point("delete.committed")?;
                self.store.remove_volume(*id)?;
                if let Some(n) = name {
                    self.store.release_name(n, *id)?;
                }
                point("delete.recorded")?;
            }
        }
        self.store.intent().clear()
    }

    fn mismatch(&self, intent: &Intent, kernel: u64) -> Error {
        Error::Inconsistent(format!(
            "pool '{}' has transaction id {kernel} but the interrupted operation {intent:?} expected its own; \
             the pool was changed outside rcx-dm; inspect it with thin_ls before continuing",
            self.name
        ))
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
