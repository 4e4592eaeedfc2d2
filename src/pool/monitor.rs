//! `pool monitor`: auto-extend driven by device-mapper events, as dmeventd does for LVM.
//!
//! The kernel raises a dm event when a pool's free data blocks fall below its low-water mark
//! (set from the auto-extend threshold, see `Pool::pool_table`), when free metadata falls below
//! its own fixed mark, and on a mode change (out of space, read-only). The monitor arms event
//! polling on the dm control file, looks at the pool, extends what crossed the threshold, and
//! sleeps in poll(2) until the next event or `interval` (metadata use past the threshold but
//! above the kernel's mark, and the host's free space, raise no event). One monitor per pool:
//! a second one is refused (an flock on `monitor.lock`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::extend::{host_space, ExtendRequest, SizeChange};
use crate::file_lock::{FileLock, LockMode};
use super::store::{Backing, PoolConfig};
use super::{Pool, MAX_META_BYTES};
use crate::dm::{Dm, PoolMode, ThinPoolState};
use crate::error::{Error, Result};
use crate::loopback;
use crate::units::format_size;

const META_BLOCK: u64 = 4096;

/// How the monitor runs.
#[derive(Debug, Clone)]
pub struct MonitorOptions {
    /// Longest wait between two looks at the pool when no event comes.
    pub interval: Duration,
}

impl Default for MonitorOptions {
    fn default() -> Self {
        MonitorOptions { interval: Duration::from_secs(10) }
    }
}

/// Stops a running monitor from another thread.
#[derive(Debug, Clone, Default)]
pub struct MonitorStop(Arc<AtomicBool>);

/// Set by SIGINT/SIGTERM once `stop_on_signals` installed the handler.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

impl MonitorStop {
    /// A handle not yet stopped; give a clone of it to the monitor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask the monitor to stop; it notices within about a second.
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst)
    }

    /// Whether `stop` was called on this handle or a clone of it, or SIGINT/SIGTERM arrived
    /// after `stop_on_signals`.
    pub fn stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst) || SIGNALLED.load(Ordering::SeqCst)
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM stop every monitor of this process (the foreground `pool monitor`).
/// Installed without SA_RESTART, so the monitor's poll(2) returns at once.
pub fn stop_on_signals(_stop: &MonitorStop) -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }
            .map_err(|e| Error::Io { context: format!("installing a {sig} handler"), source: e.into() })?;
    }
    Ok(())
}

/// What one look at the pool decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Below the thresholds (or auto-extend off, or the pool inactive).
    Idle,
    /// Extended to these sizes.
    Extended {
        /// Data size in bytes after the extend.
        data_bytes: u64,
        /// Metadata size in bytes after the extend.
        meta_bytes: u64,
    },
    /// Past the threshold but at a limit; the pool is left to fail fast.
    AtLimit,
}

impl Pool {
    /// Watch the pool and extend it by its auto-extend policy until `stop`. Refused when another
    /// monitor (`pool monitor` or `serve`) already watches this pool.
    pub fn monitor(&self, opts: &MonitorOptions, stop: &MonitorStop) -> Result<()> {
        let path = self.dir().join("monitor.lock");
        let Some(_only) = FileLock::try_lock(&path, LockMode::Exclusive)? else {
            return Err(Error::MonitorRunning(self.name().to_string()));
        };
        let dm = Dm::open()?;
        let mut warned = HashSet::new();
        tracing::info!(pool = %self.name(), interval = ?opts.interval, "monitoring the pool for auto-extend");
        while !stop.stopped() {
            dm.arm_poll()?;
            if let Err(e) = self.autoextend_once(&dm, &mut warned) {
                tracing::warn!(pool = %self.name(), "auto-extend check failed: {e}");
            }
            let deadline = Instant::now() + opts.interval;
            // Wake at least every second to honour `stop`.
            while !stop.stopped() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || dm.wait_event(left.min(Duration::from_secs(1)))? {
                    break;
                }
            }
        }
        tracing::info!(pool = %self.name(), "monitor stopped");
        Ok(())
    }

    /// One look at the pool: extend data and/or metadata past the threshold, as far as the
    /// policy and the host allow. `warned` keeps each "at a limit" warning to once per size.
    pub fn autoextend_once(&self, dm: &Dm, warned: &mut HashSet<(&'static str, u64)>) -> Result<Decision> {
        if self.pool_device(&dm)?.is_none() {
            return Ok(Decision::Idle);
        }
        let s = match self.kernel_state(dm)? {
            ThinPoolState::Working(s) => Some(s),
            ThinPoolState::Failed(_) => None,
        };
        let c = self.fresh_config()?;
        let a = &c.autoextend;
        if !a.enabled() {
            return Ok(Decision::Idle);
        }
        let Some(s) = s.filter(|s| !s.needs_check) else {
            if warned.insert(("health", 0)) {
                tracing::error!(pool = %self.name(), "the kernel failed the pool or flags its metadata; auto-extend stopped: run `rcx-dm pool deactivate`, `rcx-dm pool check`, `rcx-dm pool repair`");
            }
            return Ok(Decision::Idle);
        };
        let data_hot = a.crossed(s.data_used_blocks, s.data_total_blocks) || s.mode == PoolMode::OutOfDataSpace;
        // Out of metadata space shows as `ro` without needs_check.
        let meta_hot = a.crossed(s.meta_used_blocks, s.meta_total_blocks) || s.mode == PoolMode::Ro;
        if !data_hot && !meta_hot {
            return Ok(Decision::Idle);
        }
        let (data_cap, meta_cap) = caps(&c)?;
        // The host-space rule here is `caps` (free space less --host-reserve, past what is
        // promised already), not extend's own check.
        let mut req = ExtendRequest { overcommit: true, ..Default::default() };
        let mut at_limit = false;
        for (hot, what, cur, cap, unit, slot) in [
            (data_hot, "data", c.data_bytes, data_cap, c.block_bytes, &mut req.data),
            (meta_hot, "metadata", c.meta_bytes, meta_cap, META_BLOCK, &mut req.meta),
        ] {
            if !hot {
                continue;
            }
            let want = (cur.saturating_add(a.step.bytes_for(cur))).div_ceil(unit) * unit;
            let new = want.min(cap / unit * unit);
            if new > cur {
                *slot = Some(SizeChange::To(new));
            } else {
                at_limit = true;
                if warned.insert((what, cur)) {
                    tracing::error!(
                        pool = %self.name(),
                        "{what} is past the {}% auto-extend threshold but cannot grow beyond {} (--autoextend-max, the device's size, or the host's free space less the {} reserve); the pool will fail writes when full",
                        a.threshold_percent,
                        format_size(cur),
                        format_size(a.host_reserve_bytes)
                    );
                }
            }
        }
        if req.data.is_none() && req.meta.is_none() {
            return Ok(if at_limit { Decision::AtLimit } else { Decision::Idle });
        }
        tracing::info!(
            pool = %self.name(),
            data_used = %format!("{}/{}", s.data_used_blocks, s.data_total_blocks),
            meta_used = %format!("{}/{}", s.meta_used_blocks, s.meta_total_blocks),
            mode = %s.mode,
            "auto-extend threshold crossed; extending"
        );
        let r = self.extend(&req)?;
        tracing::info!(
            pool = %self.name(),
            "auto-extended: data {} -> {}, metadata {} -> {}",
            format_size(r.old_data_bytes),
            format_size(r.new_data_bytes),
            format_size(r.old_meta_bytes),
            format_size(r.new_meta_bytes)
        );
        Ok(Decision::Extended { data_bytes: r.new_data_bytes, meta_bytes: r.new_meta_bytes })
    }
}

/// How far data and metadata may grow: --autoextend-max and the kernel's metadata maximum; a
/// block device's size; for sparse files, what the host filesystem can still back less the
/// reserve, counting what both files already promise beyond their allocated blocks.
fn caps(c: &PoolConfig) -> Result<(u64, u64)> {
    let a = &c.autoextend;
    let mut data_cap = a.max_data_bytes.unwrap_or(u64::MAX).max(c.data_bytes);
    let mut meta_cap = MAX_META_BYTES.max(c.meta_bytes);
    let mut promised = 0u64;
    let mut avail = None;
    for (b, size, cap) in [(&c.data, c.data_bytes, &mut data_cap), (&c.meta, c.meta_bytes, &mut meta_cap)] {
        match b {
            Backing::Device(p) => *cap = (*cap).min(loopback::block_device(p)?.1),
            Backing::File(p) => {
                if let Some(h) = host_space(p) {
                    promised += size.saturating_sub(h.allocated);
                    avail = Some(h.available);
                }
            }
        }
    }
    if let Some(avail) = avail {
        // Room the host can back beyond what is promised already, less the reserve.
        let room = avail.saturating_sub(a.host_reserve_bytes).saturating_sub(promised);
        if let Backing::File(_) = c.data {
            data_cap = data_cap.min(c.data_bytes.saturating_add(room));
        }
        if let Backing::File(_) = c.meta {
            meta_cap = meta_cap.min(c.meta_bytes.saturating_add(room));
        }
    }
    Ok((data_cap.max(c.data_bytes), meta_cap.max(c.meta_bytes)))
}
