//! `pool extend`: grow data and/or metadata, online (volumes active, mounted, written) or not.
//!
//! The kernel's rules (Documentation/admin-guide/device-mapper/thin-provisioning.rst): the data
//! device must already have the new size when the longer thin-pool table is loaded, and the pool
//! picks up a bigger data or metadata device in its preresume, i.e. at the resume after a
//! suspend. A pool that ran out of space goes back to read-write there. So, for sparse files:
//! grow the file, LOOP_SET_CAPACITY, load the longer table, suspend (noflush, so writes queued
//! while out of space stay queued), resume. Block devices were grown by their owner.
//!
//! Crash safety: an `ExtendIntent` (extend.json) records old and new sizes first, and recovery always rolls
//! forward, since every step is idempotent and growing never loses data. pool.json gets the new
//! sizes last; until then the intent's sizes win (`activate` finishes the extend before it loads
//! the table, because the kernel refuses a table shorter than its metadata's data size).

use std::path::Path;

use serde::Serialize;

use super::store::{Backing, ExtendIntent, PoolConfig};
use super::{fault, Pool, MAX_META_BYTES};
use crate::dm::{Dm, PoolMode};
use crate::error::{Error, Result};
use crate::loopback;
use crate::units::format_size;

/// Metadata is used in 4 KiB blocks.
const META_BLOCK: u64 = 4096;

/// A new size, absolute ("10G") or relative ("+1G").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeChange {
    /// Grow to this many bytes.
    To(u64),
    /// Grow by this many bytes.
    By(u64),
}

impl std::str::FromStr for SizeChange {
    type Err = Error;
    fn from_str(s: &str) -> Result<SizeChange> {
        match s.trim().strip_prefix('+') {
            Some(rest) => crate::units::parse_size(rest).map(SizeChange::By),
            None => crate::units::parse_size(s).map(SizeChange::To),
        }
    }
}

/// What `pool extend` is asked to do. None: unchanged (a sparse file), or grown to the block
/// device's current size.
#[derive(Debug, Clone, Default)]
pub struct ExtendRequest {
    /// New data size in bytes; it must stay a whole number of pool blocks.
    pub data: Option<SizeChange>,
    /// New metadata size in bytes; a multiple of 4 KiB, at most `MAX_META_BYTES`.
    pub meta: Option<SizeChange>,
    /// Allow sparse files larger than the host filesystem can back (see `HostOvercommit`).
    pub overcommit: bool,
}

/// Sizes before and after.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ExtendOutcome {
    /// Data size in bytes before.
    pub old_data_bytes: u64,
    /// Data size in bytes after (equal to before when data did not grow).
    pub new_data_bytes: u64,
    /// Metadata size in bytes before.
    pub old_meta_bytes: u64,
    /// Metadata size in bytes after (equal to before when metadata did not grow).
    pub new_meta_bytes: u64,
}

impl Pool {
    /// Grow the pool's data and/or metadata. Online when the pool is active; an inactive pool
    /// gets the new size at its next activation. Shrinking is refused (the kernel cannot).
    pub fn extend(&self, req: &ExtendRequest) -> Result<ExtendOutcome> {
        let dm = Dm::open()?;
        let _l = self.lock()?;
        let live = self.pool_device(&dm)?.is_some();
        if let Some(i) = self.store.extend_intent().get()? {
            self.finish_extend(&dm, &i)?;
        }
        if live {
            if let Err(e) = self.recover_locked(&dm) {
                // A create or delete a full pool could not finish: growing the pool is what lets
                // it finish, so extend first and leave it to the next command.
                let s = self.kernel_status(&dm)?;
                if s.needs_check || !matches!(s.mode, PoolMode::OutOfDataSpace | PoolMode::Ro) {
                    return Err(e);
                }
                tracing::warn!("an interrupted operation cannot finish in a full pool ({e}); extending first");
            }
        }
        let c = self.fresh_config()?;
        if live {
            let s = self.kernel_status(&dm)?;
            if s.needs_check {
                return Err(Error::PoolUnhealthy {
                    pool: self.name.clone(),
                    why: "the kernel flags its metadata as needing a check, and it does not resize such a pool; run `rcx-dm pool deactivate`, `rcx-dm pool check` and `rcx-dm pool repair` first".into(),
                });
            }
        }
        let new_data = target_size(&c.data, c.data_bytes, req.data, req.meta.is_none(), "data", c.block_bytes)?;
        let new_meta = target_size(&c.meta, c.meta_bytes, req.meta, req.data.is_none(), "metadata", META_BLOCK)?;
        let out = ExtendOutcome { old_data_bytes: c.data_bytes, new_data_bytes: new_data, old_meta_bytes: c.meta_bytes, new_meta_bytes: new_meta };
        self.validate_growth(&c, new_data, new_meta)?;
        if new_data == c.data_bytes && new_meta == c.meta_bytes {
            return Ok(out);
        }
        if !req.overcommit {
            self.check_host_room_for(&c, new_data, new_meta)?;
        }
        let intent = ExtendIntent { old_data_bytes: c.data_bytes, new_data_bytes: new_data, old_meta_bytes: c.meta_bytes, new_meta_bytes: new_meta };
        self.store.extend_intent().put(&intent)?;
        if let Err(e) = fault::point("extend.intent").and_then(|_| self.extend_steps(&dm, &intent, true)) {
            // An error, not a crash: whatever ran is a prefix of the roll-forward, so try to
            // finish; if that fails too the intent stays for the next command.
            if self.finish_extend(&dm, &intent).is_err() {
                tracing::warn!("extend stopped half-way; the next rcx-dm command finishes it");
            }
            return Err(e);
        }
        tracing::info!(
            pool = %self.name,
            data = %format!("{} -> {}", format_size(c.data_bytes), format_size(new_data)),
            meta = %format!("{} -> {}", format_size(c.meta_bytes), format_size(new_meta)),
            "pool extended"
        );
        Ok(out)
    }

    fn validate_growth(&self, c: &PoolConfig, new_data: u64, new_meta: u64) -> Result<()> {
        if new_data < c.data_bytes {
            return Err(Error::invalid(
                "data size",
                format!("{} is smaller than the pool's {}; the kernel cannot shrink a pool", format_size(new_data), format_size(c.data_bytes)),
            ));
        }
        if new_data % c.block_bytes != 0 {
            let down = new_data / c.block_bytes * c.block_bytes;
            return Err(Error::invalid(
                "data size",
                format!(
                    "{new_data} bytes is not a whole number of the pool's {} blocks; use {} or {}",
                    format_size(c.block_bytes),
                    format_size(down.max(c.data_bytes)),
                    format_size(down + c.block_bytes)
                ),
            ));
        }
        if new_meta < c.meta_bytes {
            return Err(Error::invalid(
                "metadata size",
                format!("{} is smaller than the pool's {}; metadata cannot shrink", format_size(new_meta), format_size(c.meta_bytes)),
            ));
        }
        if new_meta > MAX_META_BYTES.max(c.meta_bytes) {
            return Err(Error::invalid(
                "metadata size",
                format!("{} is past the kernel's maximum of {} ({MAX_META_BYTES} bytes); the kernel would not use the rest", format_size(new_meta), format_size(MAX_META_BYTES)),
            ));
        }
        if new_meta % META_BLOCK != 0 {
            return Err(Error::invalid("metadata size", format!("{new_meta} bytes is not a multiple of the kernel's 4K metadata blocks")));
        }
        Ok(())
    }

    /// The steps of an extend, each idempotent, so the same code is the forward path and the
    /// roll-forward. With `faults`, the `extend.*` fault points fire.
    fn extend_steps(&self, dm: &Dm, intent: &ExtendIntent, faults: bool) -> Result<()> {
        let point = |step: &str| if faults { fault::point(step) } else { Ok(()) };
        let ExtendIntent { new_data_bytes, new_meta_bytes, .. } = *intent;
        let mut c = self.fresh_config()?;
        c.data_bytes = c.data_bytes.max(new_data_bytes);
        c.meta_bytes = c.meta_bytes.max(new_meta_bytes);
        for (b, bytes) in [(&c.data, c.data_bytes), (&c.meta, c.meta_bytes)] {
            if let Backing::File(p) = b {
                loopback::grow_sparse(p, bytes)?;
            }
        }
        point("extend.grown")?;
        if self.pool_device(dm)?.is_some() {
            for (b, bytes) in [(&c.data, c.data_bytes), (&c.meta, c.meta_bytes)] {
                let have = match b {
                    Backing::File(p) => loopback::refresh_capacity(p)?,
                    Backing::Device(p) => Some(loopback::block_device(p)?.1),
                };
                if let Some(have) = have.filter(|h| *h < bytes) {
                    return Err(Error::Inconsistent(format!("{} has {have} bytes after growing, not {bytes}", b.path().display())));
                }
            }
            point("extend.capacity")?;
            self.swap_pool_table(dm, &c, faults)?;
        }
        self.put_config(&c)?;
        point("extend.recorded")?;
        self.store.extend_intent().clear()
    }

    /// Reload the live pool's table from `c` (length, low-water mark) and make it live:
    /// load, suspend without flush, resume. The pool is resumed on every error path after the
    /// suspend; a crash in between leaves it suspended until recovery resumes it.
    pub(crate) fn swap_pool_table(&self, dm: &Dm, c: &PoolConfig, faults: bool) -> Result<()> {
        let point = |step: &str| if faults { fault::point(step) } else { Ok(()) };
        let name = self.pool_dm_name();
        let line = self.pool_table(c)?;
        dm.load(&name, &[line], false).map_err(|e| self.load_error(e))?;
        point("extend.loaded")?;
        dm.suspend_noflush(&name)?;
        let resumed = point("extend.suspended").and_then(|_| dm.resume(&name));
        if resumed.is_err() {
            // Never leave the pool (and every volume in it) suspended: try once more.
            let _ = dm.resume(&name);
        }
        resumed?;
        point("extend.resumed")
    }

    /// Roll an interrupted extend forward (the pool lock is held).
    pub(crate) fn finish_extend(&self, dm: &Dm, intent: &ExtendIntent) -> Result<()> {
        tracing::info!(?intent, "finishing an interrupted pool extend");
        self.extend_steps(dm, intent, false)
    }

    /// Change auto-extend and discard settings; a live pool's low-water mark follows at once
    /// (one table reload).
    pub fn set(&self, autoextend: Option<&crate::pool::Autoextend>, discard_on_delete: Option<bool>) -> Result<PoolConfig> {
        let dm = Dm::open()?;
        let _l = self.lock()?;
        let live = self.pool_device(&dm)?.is_some();
        if live {
            self.recover_locked(&dm)?;
        }
        let mut c = self.fresh_config()?;
        if let Some(a) = autoextend {
            if a.host_reserve_bytes > (1 << 50) {
                return Err(Error::invalid("host reserve", format!("{} is more than any filesystem holds", format_size(a.host_reserve_bytes))));
            }
            if let Some(m) = a.max_data_bytes {
                if m % c.block_bytes != 0 {
                    return Err(Error::invalid("autoextend max", format!("{m} bytes is not a whole number of the pool's {} blocks", format_size(c.block_bytes))));
                }
            }
            c.autoextend = a.clone();
        }
        if let Some(d) = discard_on_delete {
            c.discard_on_delete = d;
        }
        let old_line = self.pool_table(&self.config())?;
        self.put_config(&c)?;
        if live && self.pool_table(&c)? != old_line {
            self.swap_pool_table(&dm, &c, false)?;
        }
        Ok(c)
    }
}

/// The size a device is asked to grow to. None: a sparse file keeps its size; a block device
/// grows to all it has (in whole `unit`s) when neither size was given (`default_all`).
fn target_size(b: &Backing, current: u64, change: Option<SizeChange>, default_all: bool, what: &'static str, unit: u64) -> Result<u64> {
    let asked = match change {
        Some(SizeChange::To(n)) => Some(n),
        Some(SizeChange::By(n)) => Some(current.checked_add(n).ok_or_else(|| Error::invalid("size", format!("+{n} overflows")))?),
        None => None,
    };
    match b {
        Backing::File(_) => Ok(asked.unwrap_or(current)),
        Backing::Device(p) => {
            let (_, have) = loopback::block_device(p)?;
            match asked {
                Some(n) if n > have => Err(Error::invalid(
                    if what == "data" { "data size" } else { "metadata size" },
                    format!(
                        "{} asked for, but {} has only {}; grow the device first (lvextend, a bigger disk), then run `rcx-dm pool extend` again",
                        format_size(n),
                        p.display(),
                        format_size(have)
                    ),
                )),
                Some(n) => Ok(n),
                None if default_all => Ok((have / unit * unit).min(if what == "metadata" { MAX_META_BYTES } else { u64::MAX }).max(current)),
                None => Ok(current),
            }
        }
    }
}

/// A sparse file promises space the host filesystem must deliver later: say so when it cannot.
impl Pool {
    /// Refuse sizes the host filesystem cannot back: both files (they share the pool's
    /// directory) at full size, less what they already occupy, must fit in its free space.
    fn check_host_room_for(&self, c: &PoolConfig, new_data: u64, new_meta: u64) -> Result<()> {
        let (mut need, mut allocated) = (0, 0);
        for (b, new) in [(&c.data, new_data), (&c.meta, new_meta)] {
            if let Backing::File(p) = b {
                need += new;
                allocated += host_space(p).map_or(0, |h| h.allocated);
            }
        }
        check_host_room(self.dir(), need, allocated, new_data, c.block_bytes)
    }
}

/// `need` bytes of sparse files, `allocated` of which the host already holds, against the free
/// space of the filesystem holding `dir` (or its nearest existing parent).
pub(crate) fn check_host_room(dir: &Path, need: u64, allocated: u64, data_bytes: u64, block: u64) -> Result<()> {
    if need == 0 {
        return Ok(());
    }
    let Some(free) = host_free(dir) else { return Ok(()) };
    if need.saturating_sub(allocated) <= free {
        return Ok(());
    }
    // A data size that would fit, keeping a quarter of the free space for the metadata and
    // everything else on that filesystem.
    let fits = (free.saturating_add(allocated) / 4 * 3).saturating_sub(need - data_bytes) / block * block;
    let hint = if fits >= block { format!("e.g. --data-size {}", format_size(fits)) } else { "no size fits".into() };
    Err(Error::HostOvercommit { need: format_size(need), free: format_size(free), dir: dir.to_path_buf(), hint })
}

/// Free bytes (f_bavail, what df shows) of the filesystem holding `dir` or its nearest
/// existing ancestor.
pub(crate) fn host_free(dir: &Path) -> Option<u64> {
    let mut d = Some(dir);
    while let Some(p) = d {
        if let Ok(v) = nix::sys::statvfs::statvfs(p) {
            return Some(v.blocks_available() as u64 * v.fragment_size() as u64);
        }
        d = p.parent();
    }
    None
}

/// A sparse backing file's host-side figures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HostSpace {
    /// Bytes the file has allocated on the host.
    pub allocated: u64,
    /// Bytes the host filesystem can still give (f_bavail).
    pub available: u64,
}

pub(crate) fn host_space(file: &std::path::Path) -> Option<HostSpace> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(file).ok()?;
    let v = nix::sys::statvfs::statvfs(file).ok()?;
    Some(HostSpace { allocated: m.blocks() * 512, available: v.blocks_available() as u64 * v.fragment_size() as u64 })
}
