//! `thin resize`: a volume's device grows (its table reloaded with the new length, around a
//! suspend when it is live) and its record with it. The filesystem on it is grown by
//! `rootfs::grow`.
//!
//! A thin device's length lives only in its table (the pool's metadata maps blocks, not sizes),
//! so no kernel transaction is involved: the record is written first, then the live table
//! follows. A crash in between leaves a live device with the old length, which the next
//! activation gives the new one, and which a rerun of the same resize (an equal size) reloads.
//!
//! Also here: the short-lived activation that `trim` and `grow` use for inactive volumes.

use std::path::{Path, PathBuf};

use super::store::VolumeRecord;
use super::{fault, Pool, VolRef, Volume};
use crate::dm::{Dm, Target, ThinTarget};
use crate::error::{Error, Result};
use crate::units::SECTOR;

impl Pool {
    /// Grow volume `v` to `size` bytes. Shrinking and read-only volumes are refused; the same
    /// size is a no-op (that also finishes a resize a crash interrupted).
    pub fn resize_volume(&self, v: &VolRef, size: u64) -> Result<Volume> {
        if size == 0 || !size.is_multiple_of(SECTOR) {
            return Err(Error::invalid("size", format!("{size} bytes; must be a positive multiple of 512")));
        }
        let dm = Dm::open()?;
        let rec = {
            let _l = self.lock_and_recover(&dm)?;
            let old = self.resolve(v)?;
            if old.read_only {
                return Err(Error::VolumeReadOnly { vol: v.to_string(), op: "resized" });
            }
            if size < old.size_bytes {
                return Err(Error::ShrinkRefused { vol: v.to_string(), have: old.size_bytes, want: size });
            }
            let new = VolumeRecord { size_bytes: size, ..old.clone() };
            if new != old {
                self.store.put_volume(&new)?;
            }
            if let Err(e) = fault::point("resize.recorded").and_then(|_| self.reload_length(&dm, &new)) {
                // The record follows what is live: back to the old size unless the new table
                // went live anyway (a resume after a failed step swaps in a loaded table).
                let live = self.live_sectors(&dm, new.id).unwrap_or(None);
                if live != Some(size / SECTOR) && new != old {
                    self.store.put_volume(&old)?;
                }
                return Err(e);
            }
            new
        };
        self.volume(&VolRef::Id(rec.id))
    }

    /// The live table's length in sectors, None when the device is not live.
    fn live_sectors(&self, dm: &Dm, id: u32) -> Result<Option<u64>> {
        let name = self.thin_dm_name(id);
        if self.thin_device(dm, id)?.is_none() {
            return Ok(None);
        }
        Ok(dm.table(&name)?.iter().map(|l| l.start + l.length).max())
    }

    /// Give a live thin device the record's length: load, suspend, resume. Resumed on every
    /// path (a suspended device hangs every reader and writer); a table left loaded but not
    /// live is cleared, so no later resume (e.g. around a snapshot) swaps it in unannounced.
    fn reload_length(&self, dm: &Dm, rec: &VolumeRecord) -> Result<()> {
        let name = self.thin_dm_name(rec.id);
        let Some(info) = self.thin_device(dm, rec.id)? else { return Ok(()) };
        let want = rec.size_bytes / SECTOR;
        if self.live_sectors(dm, rec.id)? == Some(want) {
            return Ok(());
        }
        let pool = self.pool_device(&dm)?.ok_or_else(|| Error::PoolInactive(self.name.clone()))?;
        dm.load(&name, &[ThinTarget { pool: pool.dev, id: rec.id }.line(0, want)], info.read_only)?;
        let swapped = fault::point("resize.loaded")
            .and_then(|_| dm.suspend(&name))
            .and_then(|_| fault::point("resize.suspended"));
        let resumed = dm.resume(&name);
        if (resumed.is_err() || swapped.is_err()) && self.live_sectors(dm, rec.id).unwrap_or(None) != Some(want) {
            clear_inactive_table(&name);
        }
        swapped?;
        resumed
    }

    /// Run `work` on volume `v`'s device: the live one, or one activated for `work` alone and
    /// removed afterwards (its record untouched: it stays inactive after a reboot). `check`
    /// vets the record before anything is activated. The pool lock is held for the activation
    /// and the removal only, never around `work` (a trim or a grow may take a while).
    pub(crate) fn with_device<T>(
        &self,
        v: &VolRef,
        check: impl FnOnce(&VolumeRecord) -> Result<()>,
        work: impl FnOnce(&VolumeRecord, &Path) -> Result<T>,
    ) -> Result<T> {
        let dm = Dm::open()?;
        let (rec, path, temporary): (VolumeRecord, PathBuf, bool) = {
            let _l = self.lock_and_recover(&dm)?;
            let rec = self.resolve(v)?;
            check(&rec)?;
            let live = self.thin_device(&dm, rec.id)?.is_some();
            let path = self.activate_thin(&dm, &rec)?;
            (rec, path, !live)
        };
        let out = work(&rec, &path);
        if temporary {
            let removed = self.lock().and_then(|_l| self.remove_thin_device(&dm, rec.id));
            if let Err(e) = removed {
                // Another command took the device up meanwhile (it is busy): it stays live,
                // which is consistent; `rcx-dm deactivate` takes it down.
                tracing::warn!(id = rec.id, error = %e, "could not take down the temporarily activated volume");
            }
        }
        out
    }
}

/// Drop a device's inactive (loaded, not live) table. The `Dm` wrapper has no table_clear, and
/// this runs only on a failed resize, so it uses a handle of its own. Best effort.
fn clear_inactive_table(name: &str) {
    use devicemapper::{DevId, DmName, DM};
    let cleared = DM::new().map_err(|e| e.to_string()).and_then(|dm| {
        let n = DmName::new(name).map_err(|e| e.to_string())?;
        dm.table_clear(&DevId::Name(n)).map(|_| ()).map_err(|e| e.to_string())
    });
    if let Err(e) = cleared {
        tracing::warn!(dev = name, error = %e, "could not clear the inactive table of a failed resize");
    }
}
