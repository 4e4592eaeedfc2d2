//! A pool as a whole: backing storage, the kernel's thin-pool device, the state store, the
//! lock, and recovery. This is the API every front end calls.

pub mod autoextend;
mod extend;
pub(crate) mod fault;
mod health;
pub mod monitor;
pub mod names;
mod recover;
mod resize;
mod revert;
pub(crate) mod store;
mod volume;

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::Serialize;

pub use autoextend::{Autoextend, Step};
pub use extend::{ExtendOutcome, ExtendRequest, SizeChange};
pub use health::{CheckReport, RepairReport};
pub use monitor::{MonitorOptions, MonitorStop};
pub use names::{validate_pool_name, validate_user_volume_name, validate_volume_name, RESERVED_PREFIXES};
pub use volume::{parse_id as parse_thin_id, VolRef, Volume};

use crate::dm::{self, DevInfo, Dm, PoolMode, Target, ThinPoolState, ThinPoolStatus, ThinPoolTarget};
use crate::error::{Error, IoContext, Result};
use crate::loopback;
use crate::units::SECTOR;
use crate::file_lock::FileLock;
use store::{Backing, PoolConfig, Store};

/// The root under which pools keep their state directories (`<root>/<pool>/`) unless the
/// caller names another (`--root`, `RCX_DM_ROOT`).
pub const DEFAULT_ROOT: &str = "/var/lib/rcx-dm";
/// Thin device ids are 24 bits in the kernel's metadata.
pub const MAX_THIN_ID: u32 = (1 << 24) - 1;
/// Smallest pool block size in bytes (64 KiB, the kernel's minimum); every block size is a
/// multiple of it.
pub const MIN_BLOCK: u64 = 64 << 10;
/// Largest pool block size in bytes (1 GiB, the kernel's maximum).
pub const MAX_BLOCK: u64 = 1 << 30;
/// The kernel uses at most this much of a metadata device (dm-thin THIN_METADATA_MAX_SECTORS).
pub const MAX_META_BYTES: u64 = 255 * (1 << 14) * 8 * SECTOR;
const MIN_META_BYTES: u64 = 8 << 20;

/// How `pool create` lays out a new pool.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Data size; defaults to 100 GiB for a sparse file, to the whole device for `data_dev`.
    pub data_size: Option<u64>,
    /// Metadata size; None computes it from data size and block size.
    pub meta_size: Option<u64>,
    /// Pool block size in bytes, the unit the pool allocates data in: a multiple of 64 KiB from
    /// 64 KiB to 1 GiB (`validate_block_size`). Default 64 KiB.
    pub block_size: u64,
    /// The kernel's low-water mark in pool blocks (it raises a dm event when fewer data blocks
    /// are free), used while auto-extend is off; None: 1% of the data blocks, at least 1. With
    /// auto-extend on, the mark follows its threshold instead.
    pub low_water_blocks: Option<u64>,
    /// A block device (owned by the caller) for the data, instead of a sparse `data.img` in the
    /// pool directory.
    pub data_dev: Option<PathBuf>,
    /// A block device (owned by the caller) for the metadata, instead of a sparse `meta.img` in
    /// the pool directory; its first MiB is zeroed so the kernel formats it.
    pub meta_dev: Option<PathBuf>,
    /// The kernel zeroes a newly provisioned block before a volume uses it (off:
    /// `skip_block_zeroing`, faster, but a volume may read data a deleted volume left). Default on.
    pub zero_new_blocks: bool,
    /// Writes to a pool whose data is full fail at once (the kernel's `error_if_no_space`); off:
    /// they queue until the pool grows or the kernel's timeout. Default on.
    pub error_if_no_space: bool,
    /// The auto-extend policy stored with the pool (applied by `pool monitor` and `serve`).
    pub autoextend: Autoextend,
    /// Allow sparse files larger than the host filesystem's free space (see `HostOvercommit`).
    pub overcommit: bool,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            data_size: None,
            meta_size: None,
            block_size: MIN_BLOCK,
            low_water_blocks: None,
            data_dev: None,
            meta_dev: None,
            zero_new_blocks: true,
            error_if_no_space: true,
            autoextend: Autoextend::default(),
            overcommit: false,
        }
    }
}

/// Metadata for `data_bytes` in blocks of `block_bytes`: 128 bytes per block (twice what LVM
/// reserves, as snapshots multiply mappings; a sparse file costs nothing until used).
pub fn auto_meta_size(data_bytes: u64, block_bytes: u64) -> u64 {
    let blocks = data_bytes.div_ceil(block_bytes);
    let bytes = blocks.saturating_mul(128).div_ceil(4096) * 4096;
    bytes.clamp(MIN_META_BYTES, MAX_META_BYTES)
}

/// Check a pool block size in bytes: a multiple of 64 KiB from 64 KiB to 1 GiB, as the kernel
/// takes it; anything else is `Error::Invalid`.
pub fn validate_block_size(bytes: u64) -> Result<()> {
    if !(MIN_BLOCK..=MAX_BLOCK).contains(&bytes) || bytes % MIN_BLOCK != 0 {
        return Err(Error::invalid(
            "block size",
            format!("{bytes} bytes; the kernel takes multiples of 64K from 64K to 1G"),
        ));
    }
    Ok(())
}


/// `pool status`: the store's view plus the kernel's status line when the pool is live.
#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    /// The pool's name as given at `pool create` (not the escaped dm name).
    pub name: String,
    /// Whether the thin-pool device is loaded in the kernel.
    pub active: bool,
    /// `/dev/mapper/<dm name>` of the thin-pool device; None when inactive.
    pub device: Option<PathBuf>,
    /// Data size in bytes as recorded in pool.json (the length of the thin-pool table).
    pub data_bytes: u64,
    /// Metadata size in bytes as recorded in pool.json.
    pub meta_bytes: u64,
    /// Pool block size in bytes (the unit of the kernel's data block counts).
    pub block_bytes: u64,
    /// Number of volume records in the store, active or not.
    pub volumes: usize,
    /// Free data space in percent of the pool's data size (kernel figures; None when inactive).
    pub data_free_percent: Option<f64>,
    /// Free metadata space in percent (kernel figures; None when inactive).
    pub meta_free_percent: Option<f64>,
    /// The pool's auto-extend policy.
    pub autoextend: Autoextend,
    /// Whether deleting a volume first discards its blocks, so the host gets the space back.
    pub discard_on_delete: bool,
    /// The kernel's status of the live, working pool, flattened into the JSON: transaction id,
    /// data use in pool blocks, metadata use in 4 KiB metadata blocks, mode, needs_check. None
    /// when inactive or failed.
    #[serde(flatten)]
    pub kernel: Option<ThinPoolStatus>,
    /// Set when the kernel failed the live pool (`Fail` or `Error`); `kernel` is then None.
    pub kernel_failed: Option<String>,
    /// Free space of the host filesystem holding the sparse files (None for block devices).
    pub host_free_bytes: Option<u64>,
    /// What the sparse files occupy on the host now (they grow up to data + metadata size).
    pub host_allocated_bytes: Option<u64>,
}

/// An open pool: its name, its state store (`<root>/<pool>/`) and the configuration last read
/// from it. Every change takes the pool lock (an flock on `<root>/<pool>/lock`) and first
/// finishes or undoes the operation a crash interrupted (the intent in the store), so each
/// command starts from a consistent pool.
pub struct Pool {
    name: String,
    store: Store,
    /// The store's pool.json as last read. Sizes change under a live `Pool` (another process's
    /// `pool extend`, the monitor), so whatever builds a table reads it again: `fresh_config`.
    config: RwLock<PoolConfig>,
}

impl Pool {
    /// Open an existing pool's store (the kernel side may or may not be active), without the
    /// clean-up of dead runs that the public `Pool::open` (crate::lifecycle) adds.
    pub(crate) fn open_store(root: &Path, name: &str) -> Result<Pool> {
        validate_pool_name(name)?;
        let store = Store::new(root.join(name));
        let config = store.config()?.ok_or_else(|| Error::NoSuchPool { pool: name.into(), root: root.into() })?;
        Ok(Pool { name: name.to_string(), store, config: RwLock::new(config) })
    }

    /// Pools under `root`.
    pub fn list(root: &Path) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir(root) else { return Ok(out) };
        for e in dir.flatten() {
            if e.path().join("pool.json").exists() {
                if let Some(n) = e.file_name().to_str() {
                    out.push(n.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The pool's name as given at `pool create` (see `pool_dm_name` for its dm name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pool's configuration as last read from the store.
    pub fn config(&self) -> PoolConfig {
        self.config.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The pool's configuration read again from the store (sizes may have grown since open).
    pub(crate) fn fresh_config(&self) -> Result<PoolConfig> {
        let c = self.store.config()?.ok_or_else(|| Error::Inconsistent(format!("{} vanished", self.store.config_path().display())))?;
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = c.clone();
        Ok(c)
    }

    /// Store a new configuration durably and cache it.
    pub(crate) fn put_config(&self, c: &PoolConfig) -> Result<()> {
        self.store.put_config(c)?;
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = c.clone();
        Ok(())
    }

    /// The same pool opened again (for a thread of its own, such as serve's monitor).
    pub fn reopen(&self) -> Result<Pool> {
        let root = self.store.dir().parent().unwrap_or(Path::new("/"));
        Pool::open_store(root, &self.name)
    }

    /// `<root>/<pool>`: the pool's state directory (front ends keep their own records under it).
    pub fn dir(&self) -> &Path {
        self.store.dir()
    }

    /// The dm name of the thin-pool device.
    pub fn pool_dm_name(&self) -> String {
        pool_dm_name(&self.name)
    }

    /// The dm name of volume `id`.
    pub fn thin_dm_name(&self, id: u32) -> String {
        names::thin(&self.name, id).name
    }

    /// The live thin-pool device, if any; a foreign device of its name is an error.
    pub(crate) fn pool_device(&self, dm: &Dm) -> Result<Option<DevInfo>> {
        names::owned(dm, &names::thin_pool(&self.name))
    }

    /// The live device of volume `id`, if any; a foreign device of its name is an error.
    /// Call with the pool lock held: a device left without a table is removed
    /// (`names::owned_live`; the soak found one wedging the pool in a resume loop).
    pub(crate) fn thin_device(&self, dm: &Dm, id: u32) -> Result<Option<DevInfo>> {
        names::owned_live(dm, &names::thin(&self.name, id))
    }

    /// Create backing storage, zeroed metadata and the thin-pool device.
    pub fn create(root: &Path, name: &str, opts: &PoolOptions) -> Result<Pool> {
        validate_pool_name(name)?;
        validate_block_size(opts.block_size)?;
        let dm = Dm::open()?;
        let store = Store::new(root.join(name));
        if store.config()?.is_some() {
            return Err(Error::PoolExists(name.into()));
        }
        if store.dir().exists() {
            // A `pool create` that died half-way: nothing was committed, start over, including
            // the thin-pool device it may already have loaded.
            remove_partial_pool(&dm, name, store.dir(), opts)?;
            cleanup_partial(store.dir())?;
        }
        if dm.info(&pool_dm_name(name))?.is_some() {
            return Err(Error::invalid(
                "pool name",
                format!("a device-mapper device '{}' already exists; pick another --pool", pool_dm_name(name)),
            ));
        }
        let config = plan(name, store.dir(), opts)?;
        store.init()?;
        let pool = Pool { name: name.into(), store, config: RwLock::new(config) };
        match pool.build(&dm, opts) {
            Ok(()) => Ok(pool),
            Err(e) => {
                let _ = dm.remove(&pool.pool_dm_name());
                let _ = cleanup_partial(pool.store.dir());
                Err(e)
            }
        }
    }

    fn build(&self, dm: &Dm, opts: &PoolOptions) -> Result<()> {
        let config = self.config();
        for (b, bytes, given) in [
            (&config.data, config.data_bytes, &opts.data_dev),
            (&config.meta, config.meta_bytes, &opts.meta_dev),
        ] {
            match b {
                Backing::File(p) => loopback::create_sparse(p, bytes)?,
                Backing::Device(p) => {
                    let (_, have) = loopback::block_device(p)?;
                    if have < bytes {
                        return Err(Error::invalid(
                            "device",
                            format!("{} has {have} bytes, fewer than the {bytes} asked for", p.display()),
                        ));
                    }
                    debug_assert!(given.is_some());
                }
            }
        }
        // The kernel formats new metadata only where the superblock is all zeroes.
        if let Backing::Device(p) = &config.meta {
            loopback::zero_head(p, 1 << 20)?;
        }
        self.load_pool_with(dm, &config)?;
        fault::point("pool-create.loaded")?;
        self.store.put_config(&config)
    }

    /// Attach backing loops and load the thin-pool table unless the device already exists.
    fn load_pool(&self, dm: &Dm) -> Result<PathBuf> {
        let c = self.fresh_config()?;
        self.load_pool_with(dm, &c)
    }

    fn load_pool_with(&self, dm: &Dm, c: &PoolConfig) -> Result<PathBuf> {
        let dmid = names::thin_pool(&self.name);
        let name = &dmid.name;
        let info = match names::owned_live(dm, &dmid)? {
            Some(i) => i,
            None => {
                let line = self.pool_table(c)?;
                dm.create(name, Some(&dmid.uuid), &[line], false).map_err(|e| self.load_error(e))?
            }
        };
        dm::node::ensure(&name, info.dev)
    }

    /// The thin-pool table line for `c`: backing devices attached, low-water mark from the
    /// auto-extend threshold when auto-extend is on.
    pub(crate) fn pool_table(&self, c: &PoolConfig) -> Result<dm::TargetLine> {
        let meta = self.backing_dev(&c.meta)?;
        let data = self.backing_dev(&c.data)?;
        let blocks = c.data_bytes / c.block_bytes;
        let table = ThinPoolTarget {
            meta,
            data,
            block_sectors: c.block_bytes / SECTOR,
            low_water_blocks: if c.autoextend.enabled() { c.autoextend.low_water_blocks(blocks) } else { c.low_water_blocks },
            zero_new_blocks: c.zero_new_blocks,
            error_if_no_space: c.error_if_no_space,
        };
        Ok(table.line(0, blocks * (c.block_bytes / SECTOR)))
    }

    fn backing_dev(&self, b: &Backing) -> Result<dm::Device> {
        let dev = match b {
            Backing::File(p) => loopback::attach(p)?,
            Backing::Device(p) => p.clone(),
        };
        Ok(loopback::block_device(&dev)?.0)
    }

    fn lock(&self) -> Result<FileLock> {
        FileLock::exclusive(&self.store.dir().join("lock"))
    }

    /// The prologue of every change to volumes: the pool lock, then whatever operation a crash
    /// interrupted finished or undone, so the change starts from a consistent pool.
    fn lock_and_recover(&self, dm: &Dm) -> Result<FileLock> {
        let lock = self.lock()?;
        self.recover_locked(dm)?;
        Ok(lock)
    }

    /// What the kernel says of the live pool, or PoolInactive.
    fn kernel_state(&self, dm: &Dm) -> Result<ThinPoolState> {
        let name = self.pool_dm_name();
        if self.pool_device(dm)?.is_none() {
            return Err(Error::PoolInactive(self.name.clone()));
        }
        let lines = dm.status(&name)?;
        ThinPoolState::parse(dm::single_status(&lines, "thin-pool", &name)?)
    }

    /// The live, working pool's status. A failed pool is an error: recovery, which judges an
    /// interrupted operation by the transaction id, refuses to roll anything forward or back.
    fn kernel_status(&self, dm: &Dm) -> Result<ThinPoolStatus> {
        match self.kernel_state(dm)? {
            ThinPoolState::Working(s) => Ok(s),
            ThinPoolState::Failed(word) => Err(self.failed(&word)),
        }
    }

    fn failed(&self, word: &str) -> Error {
        Error::PoolUnhealthy {
            pool: self.name.clone(),
            why: format!(
                "the kernel failed the pool (status '{word}'): its metadata or data device returned errors, so \
                 nothing was changed and no interrupted operation was rolled forward or back; fix the device, \
                 then `rcx-dm pool deactivate`, `rcx-dm pool check` and `rcx-dm pool repair`"
            ),
        }
    }

    /// Status usable for changing the pool's metadata: fails clearly when the kernel has
    /// put the pool in a mode that refuses it.
    fn writable_status(&self, dm: &Dm) -> Result<ThinPoolStatus> {
        let s = self.kernel_status(dm)?;
        match s.mode {
            PoolMode::Ro if s.needs_check => Err(Error::PoolUnhealthy {
                pool: self.name.clone(),
                why: "the kernel switched the pool to read-only and flags its metadata as damaged; run `rcx-dm pool deactivate`, `rcx-dm pool check` and `rcx-dm pool repair`".into(),
            }),
            PoolMode::Ro => Err(Error::PoolUnhealthy {
                pool: self.name.clone(),
                why: "the kernel switched the pool to read-only because its metadata is full; grow it with `rcx-dm pool extend --meta-size +SIZE` (or run `rcx-dm pool monitor` to do it automatically)".into(),
            }),
            _ => Ok(s),
        }
    }

    /// After a reboot or `pool deactivate`: re-attach loops, load the pool, finish any
    /// interrupted operation, and bring back the volumes that were active.
    /// Returns the number of volumes activated. Classic stacks come after (crate::lifecycle).
    pub(crate) fn activate_thin_pool(&self) -> Result<usize> {
        let dm = Dm::open()?;
        let _l = self.lock()?;
        if let Some(i) = self.store.extend_intent().get()? {
            // Before the load: the kernel refuses a table shorter than the data size its
            // metadata may already record.
            self.finish_extend(&dm, &i)?;
        }
        let loaded_here = self.pool_device(&dm)?.is_none();
        self.load_pool(&dm)?;
        match self.kernel_state(&dm)? {
            ThinPoolState::Working(s) if !s.needs_check => {}
            ThinPoolState::Working(s) => {
                let found = format!("the kernel put the pool in {} mode with needs_check", s.mode);
                return Err(self.damaged_on_activate(&dm, loaded_here, found));
            }
            ThinPoolState::Failed(w) => {
                return Err(self.damaged_on_activate(&dm, loaded_here, format!("the kernel failed the pool (status '{w}')")));
            }
        };
        self.recover_locked(&dm)?;
        // Recovery may move the transaction id on (a revert rolled forward commits up to four
        // steps and records the volume at the new id): judge the records against the kernel's
        // id after it, or the volume just recovered looks uncommitted and is dropped (found by
        // the power-loss replay: a cut during revert or populate lost the volume).
        let kernel_txid = self.kernel_status(&dm)?.transaction_id;
        // A crash or power cut between a temp file's write and its rename leaves the temp.
        let stale = crate::durable::remove_stale_temps(self.dir())?;
        if stale > 0 {
            tracing::info!(stale, "removed the temp files of interrupted writes");
        }
        let mut n = 0;
        // One volume that cannot come up (a foreign device at its name, a bad table) does not
        // keep the others down; damaged metadata does (`activate_thin_error` tears down).
        let mut failed = Vec::new();
        for v in self.store.volumes()? {
            if v.txid > kernel_txid {
                // Committed in the store but not in the kernel's metadata (lost with a power cut
                // before the kernel's commit): the volume never durably existed.
                tracing::warn!(id = v.id, txid = v.txid, kernel = kernel_txid, "dropping volume the kernel never committed");
                self.store.remove_volume(v.id)?;
                if let Some(name) = &v.name {
                    self.store.release_name(name, v.id)?;
                }
                continue;
            }
            if v.autoactivate {
                match self.activate_thin(&dm, &v).map_err(|e| self.activate_thin_error(&dm, loaded_here, v.id, e)) {
                    Ok(_) => n += 1,
                    Err(e @ Error::PoolUnhealthy { .. }) => return Err(e),
                    Err(e) => {
                        tracing::warn!(id = v.id, "volume not activated: {e}");
                        failed.push(format!("volume {}: {e}", v.id));
                    }
                }
            }
        }
        if failed.is_empty() {
            Ok(n)
        } else {
            Err(Error::ActivationIncomplete { pool: self.name.clone(), activated: n, failed })
        }
    }

    /// Take down every volume, the pool and its loops. Nothing is lost: volumes that were
    /// active come back with `activate`. Classic stacks go first (crate::lifecycle).
    pub(crate) fn deactivate_thin_pool(&self) -> Result<()> {
        let dm = Dm::open()?;
        let _l = self.lock()?;
        self.teardown(&dm)
    }

    fn teardown(&self, dm: &Dm) -> Result<()> {
        // Every live device of this pool, including any the store lost track of. A foreign
        // device under one of the pool's names is not the pool's: left alone (`names::owned`).
        for dev in dm.list()? {
            let Some(id) = names::thin_id_of(&self.name, &dev) else { continue };
            match self.remove_thin_device(dm, id) {
                Err(e @ Error::ForeignDevice { .. }) => tracing::warn!("{e}"),
                r => r?,
            }
        }
        let name = self.pool_dm_name();
        if self.pool_device(dm)?.is_some() {
            dm.remove(&name).map_err(|e| busy_or(e, &name))?;
        }
        dm::node::remove(&name);
        let c = self.config();
        for b in [&c.data, &c.meta] {
            if let Backing::File(p) = b {
                loopback::detach(p)?;
            }
        }
        Ok(())
    }

    /// Remove the pool and its backing files. Refused while a volume is active unless `force`.
    /// Classic stacks go first (crate::lifecycle).
    pub(crate) fn destroy_thin_pool(self, force: bool) -> Result<()> {
        let dm = Dm::open()?;
        let _l = self.lock()?;
        if !force {
            for v in self.store.volumes()? {
                if self.thin_device(&dm, v.id)?.is_some() {
                    return Err(Error::Busy { what: format!("{} in pool '{}'", v.id, self.name), state: "active", advice: "deactivate it first or pass --force" });
                }
            }
        }
        self.teardown(&dm)?;
        std::fs::remove_dir_all(self.store.dir()).ctx(|| format!("removing {}", self.store.dir().display()))
    }

    /// The pool's sizes and settings and, when it is live, the kernel's figures. Takes the pool
    /// lock; on a live pool it first finishes an interrupted operation (a failure there is logged,
    /// not returned, since status is for diagnosis).
    pub fn status(&self) -> Result<PoolStatus> {
        let dm = Dm::open()?;
        let _l = self.lock()?;
        let name = self.pool_dm_name();
        let info = self.pool_device(&dm)?;
        if info.is_some() {
            // The next command after a crash finishes the interrupted operation; status is a
            // diagnosis tool, so a failed recovery is reported but does not hide the status.
            if let Err(e) = self.recover_locked(&dm) {
                tracing::warn!("could not finish an interrupted operation: {e}");
            }
        }
        let (kernel, kernel_failed) = match info {
            Some(_) => match self.kernel_state(&dm)? {
                ThinPoolState::Working(s) => (Some(s), None),
                ThinPoolState::Failed(w) => (None, Some(w)),
            },
            None => (None, None),
        };
        let c = &self.fresh_config()?;
        let files: Vec<&Path> = [&c.data, &c.meta].into_iter().filter_map(|b| if let Backing::File(p) = b { Some(p.as_path()) } else { None }).collect();
        let host_free_bytes = files.first().and_then(|p| extend::host_free(p));
        let host_allocated_bytes =
            (!files.is_empty()).then(|| files.iter().map(|p| extend::host_space(p).map_or(0, |h| h.allocated)).sum());
        let free = |used: u64, total: u64| if total == 0 { 0.0 } else { ((total - used.min(total)) as f64 * 1000.0 / total as f64).round() / 10.0 };
        Ok(PoolStatus {
            name: self.name.clone(),
            active: info.is_some(),
            device: info.map(|_| dm::node::mapper_path(&name)),
            data_bytes: c.data_bytes,
            meta_bytes: c.meta_bytes,
            block_bytes: c.block_bytes,
            volumes: self.store.volume_count()?,
            data_free_percent: kernel.as_ref().map(|k| free(k.data_used_blocks, k.data_total_blocks)),
            meta_free_percent: kernel.as_ref().map(|k| free(k.meta_used_blocks, k.meta_total_blocks)),
            autoextend: c.autoextend.clone(),
            discard_on_delete: c.discard_on_delete,
            kernel,
            kernel_failed,
            host_free_bytes,
            host_allocated_bytes,
        })
    }
}

pub(crate) fn busy_or(e: Error, what: &str) -> Error {
    if e.errno() == Some(crate::error::Errno::EBUSY) {
        Error::Busy { what: what.to_string(), state: "in use", advice: "unmount it or close what holds it open" }
    } else {
        e
    }
}

/// The dm name of a pool's thin-pool device (see `names` for all of them).
pub fn pool_dm_name(pool: &str) -> String {
    names::thin_pool(pool).name
}

/// Decide sizes and backing for a new pool from the options.
fn plan(name: &str, dir: &Path, opts: &PoolOptions) -> Result<PoolConfig> {
    let size_of = |dev: &Option<PathBuf>, asked: Option<u64>, default: u64| -> Result<(Backing, u64)> {
        Ok(match dev {
            Some(d) => {
                let (_, have) = loopback::block_device(d)?;
                (Backing::Device(d.clone()), asked.unwrap_or(have))
            }
            None => (Backing::File(PathBuf::new()), asked.unwrap_or(default)),
        })
    };
    let (data, data_bytes) = size_of(&opts.data_dev, opts.data_size, 100 << 30)?;
    if data_bytes < opts.block_size {
        return Err(Error::invalid("data size", format!("{data_bytes} bytes is smaller than one block")));
    }
    let auto = auto_meta_size(data_bytes, opts.block_size);
    let (meta, meta_bytes) = size_of(&opts.meta_dev, opts.meta_size, auto)?;
    if meta_bytes < (2 << 20) {
        return Err(Error::invalid("metadata size", format!("{meta_bytes} bytes; the kernel needs at least 2M")));
    }
    let data = match data {
        Backing::File(_) => Backing::File(dir.join("data.img")),
        d => d,
    };
    let meta = match meta {
        Backing::File(_) => Backing::File(dir.join("meta.img")),
        m => m,
    };
    if !opts.overcommit {
        let files = [(&data, data_bytes), (&meta, meta_bytes)];
        let need: u64 = files.iter().filter(|(b, _)| matches!(b, Backing::File(_))).map(|(_, n)| *n).sum();
        extend::check_host_room(dir, need, 0, data_bytes, opts.block_size)?;
    }
    let blocks = data_bytes / opts.block_size;
    Ok(PoolConfig {
        name: name.into(),
        data,
        meta,
        data_bytes,
        meta_bytes,
        block_bytes: opts.block_size,
        low_water_blocks: opts.low_water_blocks.unwrap_or((blocks / 100).max(1)),
        zero_new_blocks: opts.zero_new_blocks,
        error_if_no_space: opts.error_if_no_space,
        autoextend: opts.autoextend.clone(),
        discard_on_delete: true,
    })
}

/// The thin-pool device of a `pool create` that died after loading it (before recording the
/// pool), recognised as ours by its metadata device: the loop over the pool directory's
/// meta.img, or the caller's --meta-dev. Another device of that name is left alone.
fn remove_partial_pool(dm: &Dm, name: &str, dir: &Path, opts: &PoolOptions) -> Result<()> {
    let dev = pool_dm_name(name);
    if dm.info(&dev)?.is_none() {
        return Ok(());
    }
    let meta = match &opts.meta_dev {
        Some(d) => Some(d.clone()),
        None => loopback::find(&dir.join("meta.img"))?,
    };
    let Some(meta) = meta else { return Ok(()) };
    let meta = loopback::block_device(&meta)?.0.to_string();
    let ours = dm.table(&dev)?.first().is_some_and(|t| t.target == "thin-pool" && t.params.split_whitespace().next() == Some(meta.as_str()));
    if ours {
        tracing::warn!(device = %dev, "removing the thin-pool device of a pool create that did not finish");
        dm.remove(&dev)?;
        dm::node::remove(&dev);
    }
    Ok(())
}

/// Undo a half-made pool directory: detach loops over its files, then remove it.
fn cleanup_partial(dir: &Path) -> Result<()> {
    for f in ["data.img", "meta.img"] {
        let p = dir.join(f);
        if p.exists() {
            loopback::detach(&p)?;
        }
    }
    std::fs::remove_dir_all(dir).ctx(|| format!("removing half-created pool {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_follow_the_kernel() {
        for ok in [64 << 10, 128 << 10, 1 << 20, 1 << 30] {
            validate_block_size(ok).unwrap();
        }
        for bad in [0, 512, 32 << 10, 96 << 10, 2 << 30, (1 << 30) + (64 << 10)] {
            assert!(validate_block_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn auto_metadata_scales_and_is_clamped() {
        assert_eq!(auto_meta_size(1 << 20, 64 << 10), MIN_META_BYTES);
        assert_eq!(auto_meta_size(100 << 30, 64 << 10), 200 << 20);
        assert_eq!(auto_meta_size(1 << 50, 64 << 10), MAX_META_BYTES);
    }

    #[test]
    fn pool_names() {
        validate_pool_name("rcx").unwrap();
        validate_pool_name("t-1.a_b").unwrap();
        for bad in ["", "-x", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_pool_name(bad).is_err(), "{bad}");
        }
    }
}
