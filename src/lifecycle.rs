//! A pool's life with everything built on it. The rules of order between the layers live here,
//! in the library's own entry points, so every front end (the CLI, `serve`, an embedder) gets
//! them:
//! - opening a pool first cleans up after runs whose rcx-dm died (their snapshots, mounts and
//!   cgroups), as the next command after a crash finishes an interrupted operation;
//! - activating brings the thin pool and its volumes up before the classic stacks, which may
//!   sit on pool volumes;
//! - deactivating and destroying take the classic stacks down before the pool, for the same
//!   reason.
//!
//! These are methods of [`Pool`] written above the pool layer (an inherent impl may live in any
//! module of the crate), so the pool module itself never calls upward.

use std::path::Path;

use crate::classic::Classic;
use crate::error::{Error, Result};
use crate::pool::Pool;
use crate::runner;

/// What [`Pool::activate`] brought up.
#[derive(Debug)]
pub struct Activation {
    /// Thin volumes activated.
    pub volumes: usize,
    /// Classic origins (with their snapshots) activated.
    pub classic_origins: usize,
    /// Volumes that could not come up ([`Error::ActivationIncomplete`]); everything else is up.
    pub incomplete: Option<Error>,
}

impl Activation {
    /// The activation as a `Result`: an error when some volume could not come up.
    pub fn into_result(self) -> Result<Activation> {
        match self.incomplete {
            Some(e) => Err(e),
            None => Ok(self),
        }
    }
}

impl Pool {
    /// Open an existing pool (the kernel side may or may not be active) and clean up after runs
    /// whose rcx-dm died. A clean-up that fails is logged and retried by the next open: it
    /// never keeps the pool from opening (an inactive pool's runs wait for `activate`).
    pub fn open(root: &Path, name: &str) -> Result<Pool> {
        let pool = Pool::open_store(root, name)?;
        match runner::reap_dead_runs(&pool) {
            Ok(0) | Err(Error::PoolInactive(_)) => {}
            Ok(n) => tracing::info!("cleaned up after {n} run(s) whose rcx-dm died"),
            Err(e) => tracing::warn!("cleaning up after a dead run failed: {e}; will retry"),
        }
        // After the runs: a detached container whose supervisor died gets its exit record.
        if let Err(e) = runner::reap_dead_containers(&pool) {
            tracing::warn!("recording the end of a detached container whose supervisor died failed: {e}; will retry");
        }
        // A container left frozen by a `checkpoint` that died is thawed.
        if let Err(e) = runner::thaw_abandoned_checkpoints(&pool) {
            tracing::warn!("thawing a container left frozen by a dead checkpoint command failed: {e}; will retry");
        }
        Ok(pool)
    }

    /// After a reboot or `deactivate`: re-attach the loops, load the pool, finish any
    /// interrupted operation, bring back the volumes that were active, then the classic stacks.
    #[must_use = "an activation can be incomplete: look at `incomplete`, or call `into_result`"]
    pub fn activate(&self) -> Result<Activation> {
        let (volumes, incomplete) = match self.activate_thin_pool() {
            Ok(n) => (n, None),
            Err(e @ Error::ActivationIncomplete { activated, .. }) => (activated, Some(e)),
            Err(e) => return Err(e),
        };
        let classic_origins = Classic::new(self).activate()?;
        Ok(Activation { volumes, classic_origins, incomplete })
    }

    /// Take down the classic stacks, then every volume, the pool and its loops. Nothing is
    /// lost: what was active comes back with [`Pool::activate`].
    pub fn deactivate(&self) -> Result<()> {
        Classic::new(self).deactivate()?;
        self.deactivate_thin_pool()
    }

    /// Remove the classic stacks and their files, then the pool and its backing files. Refused
    /// while a volume is active or a classic origin exists, unless `force`.
    pub fn destroy(self, force: bool) -> Result<()> {
        Classic::new(&self).destroy(force)?;
        self.destroy_thin_pool(force)
    }
}
