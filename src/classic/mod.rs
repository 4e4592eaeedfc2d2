//! Classic device-mapper snapshots: `snapshot-origin`, `snapshot` (persistent or transient
//! copy-on-write store) and `snapshot-merge`, as in the seed's "Snapshot" walkthrough, with
//! automatic merge completion. Built on the pool layer: an origin can sit on a pool volume and
//! a COW store can be one; the records live in the pool's directory (`classic/`, see `store`).
//!
//! Devices, for origin NAME and snapshot SNAP of pool P (dm names are global: the pool prefix
//! keeps each pool's names apart, as for thin volumes `P-<id>`):
//!
//! ```text
//!   P-NAME-real  linear over the backing (sparse loop file, pool volume, or block device)
//!   P-NAME       snapshot-origin P-NAME-real          (snapshot-merge while merging)
//!   P-SNAP-cow   linear over the COW backing (sparse loop file or pool volume)
//!   P-SNAP       snapshot P-NAME-real P-SNAP-cow P|N <chunk>
//! ```
//!
//! Every operation takes the classic lock (`classic/lock`, separate from the pool lock, which
//! the pool calls made from here take themselves), first finishes whatever an interrupted
//! command left (`settle`: the intent of a create/delete, suspended origins, merges that the
//! kernel has finished), and suspends an origin only inside `with_suspended`, which resumes it
//! on every path.

mod merge;
pub mod store;

use std::path::{Path, PathBuf};

use serde::Serialize;

pub use merge::MergeProgress;
pub use store::{CowBacking, MergePhase, OriginBacking};
use store::{ClassicIntent, ClassicStore, CowRecord, OriginRecord};

use crate::dm::{
    self, snapshot::validate_chunk_sectors, DevInfo, DevNum, Dm, LinearTarget, Persistence, SnapshotOriginTarget,
    SnapshotStatus, SnapshotTarget, Target, TargetLine,
};
use crate::error::{Errno, Error, IoContext, Result};
use crate::loopback;
use crate::pool::fault;
use crate::pool::lock::PoolLock;
use crate::pool::{names, Pool, VolRef};
use crate::units::SECTOR;

/// The seed's chunk size: 8 sectors.
pub const DEFAULT_CHUNK_BYTES: u64 = 4096;
const MAX_NAME: usize = 48;

/// Names of origins and snapshots: like volume names, at most 48 characters (room for the
/// pool prefix and the `-real` / `-cow` suffixes in dm's 127), never `pool`, never ending in
/// `-real` or `-cow` (those are the stack's own devices).
pub fn validate_name(name: &str) -> Result<()> {
    let ok = crate::pool::validate_volume_name(name).is_ok()
        && name.len() <= MAX_NAME
        && name != "pool"
        && !name.ends_with("-real")
        && !name.ends_with("-cow");
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "name",
            format!("'{name}'; use 1-{MAX_NAME} letters, digits, '_', '.', '-', not only digits, not 'pool', not ending in -real or -cow"),
        ))
    }
}

/// A chunk size in bytes as the kernel's sectors: a power of two, 512 bytes to 2^21 sectors.
pub fn chunk_sectors(bytes: u64) -> Result<u64> {
    if bytes == 0 || bytes % SECTOR != 0 {
        return Err(Error::invalid("chunk size", format!("{bytes} bytes is not a whole number of 512-byte sectors")));
    }
    validate_chunk_sectors(bytes / SECTOR)?;
    Ok(bytes / SECTOR)
}

/// Where an origin's data lives.
#[derive(Debug, Clone)]
pub enum OriginSource {
    /// A new sparse file of this many bytes under the pool directory, on a loop device.
    Size(u64),
    /// An existing volume of the pool. Write through the origin from then on, never through
    /// the volume's own device (the pool's device for it is held by the origin stack).
    Volume(VolRef),
    /// A block device the caller owns (not mounted; same rule).
    Device(PathBuf),
}

#[derive(Debug, Clone)]
pub struct CowOptions {
    pub size_bytes: u64,
    pub chunk_bytes: u64,
    pub persistence: Persistence,
    /// Put the COW store in a new pool volume (`<snap>.cow`) instead of a sparse file.
    pub in_pool: bool,
}

impl CowOptions {
    pub fn new(size_bytes: u64) -> CowOptions {
        CowOptions { size_bytes, chunk_bytes: DEFAULT_CHUNK_BYTES, persistence: Persistence::Persistent, in_pool: false }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OriginView {
    pub name: String,
    pub size_bytes: u64,
    pub backing: OriginBacking,
    /// `/dev/mapper/<pool>-<name>` while active.
    pub device: Option<PathBuf>,
    /// The live table's target: `snapshot-origin`, or `snapshot-merge` while merging.
    pub target: Option<String>,
    pub merging: Option<String>,
    pub snapshots: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CowState {
    Valid,
    /// Full (or failed): unusable, cannot be merged.
    Invalid,
    Overflow,
    Merging,
    MergeFailed,
    /// The kernel finished the merge; the next command frees the COW.
    Merged,
    Inactive,
}

impl std::fmt::Display for CowState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CowState::Valid => "valid",
            CowState::Invalid => "invalid",
            CowState::Overflow => "overflow",
            CowState::Merging => "merging",
            CowState::MergeFailed => "merge failed",
            CowState::Merged => "merged",
            CowState::Inactive => "inactive",
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CowView {
    pub name: String,
    pub origin: String,
    pub size_bytes: u64,
    pub chunk_bytes: u64,
    pub persistent: bool,
    pub backing: CowBacking,
    /// `/dev/mapper/<pool>-<name>` while the snapshot device exists (not while merging).
    pub device: Option<PathBuf>,
    pub state: CowState,
    pub allocated_sectors: Option<u64>,
    pub total_sectors: Option<u64>,
    pub metadata_sectors: Option<u64>,
    pub percent_used: Option<f64>,
    /// While merging: percent of the data merged back so far.
    pub merge_percent: Option<f64>,
}

/// The classic snapshots of one pool.
pub struct Classic<'p> {
    pool: &'p Pool,
    store: ClassicStore,
}

impl<'p> Classic<'p> {
    pub fn new(pool: &'p Pool) -> Classic<'p> {
        Classic { pool, store: ClassicStore::new(pool.dir().join("classic")) }
    }

    // ---- names ----

    // Built by `pool::names`, which keeps them apart from every other pool's devices.
    fn dev_name(&self, name: &str) -> String {
        names::classic(self.pool.name(), name).name
    }

    fn real_name(&self, origin: &str) -> String {
        names::classic_real(self.pool.name(), origin).name
    }

    fn cow_name(&self, snap: &str) -> String {
        names::classic_cow(self.pool.name(), snap).name
    }

    /// The name and uuid of one of this pool's classic devices, from its dm name: classic
    /// names never end in `-real` or `-cow`, so the suffix tells the kind.
    fn dm_id(&self, dev: &str) -> names::DmId {
        let pool = self.pool.name();
        let local = dev.strip_prefix(&names::escape_pool(pool)).and_then(|r| r.strip_prefix('-')).unwrap_or(dev);
        if let Some(o) = local.strip_suffix("-real") {
            names::classic_real(pool, o)
        } else if let Some(s) = local.strip_suffix("-cow") {
            names::classic_cow(pool, s)
        } else {
            names::classic(pool, local)
        }
    }

    /// The live device `dev` (one of this pool's classic devices), if any; a device of that
    /// name that rcx-dm did not make for it is an error, never used or removed.
    fn info(&self, dm: &Dm, dev: &str) -> Result<Option<DevInfo>> {
        names::owned(dm, &self.dm_id(dev))
    }

    /// Like `info`, under the lock: a device left without a table is removed and reported
    /// absent (`names::owned_live`), never taken for a live part of the stack.
    fn live_info(&self, dm: &Dm, dev: &str) -> Result<Option<DevInfo>> {
        names::owned_live(dm, &self.dm_id(dev))
    }

    /// The dm device name of origin or snapshot `name` (`<pool>-<name>`).
    pub fn dm_name(&self, name: &str) -> String {
        self.dev_name(name)
    }

    fn no_such(&self, kind: &'static str, name: &str) -> Error {
        Error::NoSuchClassic { kind, name: name.to_string(), pool: self.pool.name().to_string() }
    }

    fn lock(&self) -> Result<PoolLock> {
        self.store.init()?;
        PoolLock::acquire(self.store.dir())
    }

    // ---- origins ----

    /// Create origin `name`: its `-real` linear over the source and the snapshot-origin
    /// device. Returns the origin with its device path.
    pub fn create_origin(&self, name: &str, source: OriginSource) -> Result<OriginView> {
        validate_name(name)?;
        let dm = Dm::open()?;
        {
            let _l = self.lock()?;
            self.settle(&dm)?;
            self.check_free(&dm, name)?;
            let (backing, size) = match &source {
                OriginSource::Size(b) => (OriginBacking::File { path: self.store.file_for(name, "img") }, *b),
                OriginSource::Volume(v) => {
                    let rec = self.pool.resolve(v)?;
                    (OriginBacking::Volume { id: rec.id }, rec.size_bytes)
                }
                OriginSource::Device(p) => (OriginBacking::Device { path: p.clone() }, loopback::block_device(p)?.1),
            };
            if size == 0 || size % SECTOR != 0 {
                return Err(Error::invalid("origin size", format!("{size} bytes; must be a positive multiple of 512")));
            }
            self.store.put_intent(&ClassicIntent::OriginCreate { name: name.to_string(), backing: backing.clone() })?;
            let made = (|| {
                fault::point("origin-create.intent")?;
                if let OriginBacking::File { path } = &backing {
                    loopback::create_sparse(path, size)?;
                }
                let rec = OriginRecord { name: name.to_string(), backing, size_bytes: size, merge: None };
                if !matches!(rec.backing, OriginBacking::File { .. }) {
                    // Writes that go around the origin would corrupt its snapshots: the
                    // device must not be in use (O_EXCL fails on a mounted or claimed device).
                    let dev = self.origin_backing_dev(&rec.backing)?;
                    exclusive_check(&dev, "device", name)?;
                }
                self.bring_up(&dm, &rec)?;
                fault::point("origin-create.loaded")?;
                self.store.put_origin(&rec)
            })();
            self.finish_intent(&dm, made)?;
        }
        self.origin(name)
    }

    /// Delete origin `name` (refused while it has snapshots or is open). Its sparse file goes
    /// with it; a pool volume or device it sat on keeps the merged content.
    pub fn delete_origin(&self, name: &str) -> Result<()> {
        let dm = Dm::open()?;
        let _l = self.lock()?;
        self.settle(&dm)?;
        let o = self.store.origin(name)?.ok_or_else(|| self.no_such("origin", name))?;
        let snaps: Vec<String> = self.store.cows_of(name)?.into_iter().map(|c| c.name).collect();
        if !snaps.is_empty() {
            return Err(Error::OriginHasSnapshots { origin: name.to_string(), snaps: snaps.join(", ") });
        }
        if let Some(i) = self.info(&dm, &self.dev_name(name))? {
            if i.open_count > 0 {
                return Err(in_use("origin", name, i.open_count, "unmount it first"));
            }
        }
        self.store.put_intent(&ClassicIntent::OriginDelete { name: o.name })?;
        let done = fault::point("origin-delete.intent").and_then(|_| self.recover_intent(&dm, true));
        self.finish_intent(&dm, done)
    }

    pub fn origin(&self, name: &str) -> Result<OriginView> {
        let dm = Dm::open()?;
        self.settle_quick(&dm)?;
        let o = self.store.origin(name)?.ok_or_else(|| self.no_such("origin", name))?;
        self.origin_view(&dm, &o)
    }

    pub fn origins(&self) -> Result<Vec<OriginView>> {
        if !self.store.exists() {
            return Ok(Vec::new());
        }
        let dm = Dm::open()?;
        self.settle_quick(&dm)?;
        self.store.origins()?.iter().map(|o| self.origin_view(&dm, o)).collect()
    }

    fn origin_view(&self, dm: &Dm, o: &OriginRecord) -> Result<OriginView> {
        let dev = self.dev_name(&o.name);
        let (device, target) = match self.info(dm, &dev)? {
            Some(i) => (Some(dm::node::existing(&dev, i.dev)), live_target(dm, &dev)?),
            None => (None, None),
        };
        Ok(OriginView {
            name: o.name.clone(),
            size_bytes: o.size_bytes,
            backing: o.backing.clone(),
            device,
            target,
            merging: o.merge.as_ref().map(|m| m.snap.clone()),
            snapshots: self.store.cows_of(&o.name)?.into_iter().map(|c| c.name).collect(),
        })
    }

    // ---- COW snapshots ----

    /// Create snapshot `name` of origin `origin`: a COW store (zeroed header), its `-cow`
    /// linear, and the snapshot device, loaded with the origin suspended (as the kernel
    /// requires) and the origin resumed on every path.
    pub fn create_cow(&self, name: &str, origin: &str, opts: &CowOptions) -> Result<CowView> {
        validate_name(name)?;
        let chunk = chunk_sectors(opts.chunk_bytes)?;
        // Chunk 0 holds the header, chunk 1 the first exception table; data needs one more.
        if opts.size_bytes % SECTOR != 0 || opts.size_bytes < 3 * opts.chunk_bytes {
            return Err(Error::invalid(
                "COW size",
                format!(
                    "{} bytes; a COW store needs at least 3 chunks of {} (header, exception table, data) and whole sectors",
                    opts.size_bytes, opts.chunk_bytes
                ),
            ));
        }
        let dm = Dm::open()?;
        {
            let _l = self.lock()?;
            self.settle(&dm)?;
            self.check_free(&dm, name)?;
            let o = self.store.origin(origin)?.ok_or_else(|| self.no_such("origin", origin))?;
            let oinfo = self.info(&dm, &self.dev_name(origin))?;
            let real = self.info(&dm, &self.real_name(origin))?;
            let (Some(_), Some(real)) = (oinfo, real) else {
                return Err(Error::ClassicInactive { kind: "origin", name: origin.to_string() });
            };
            let backing = if opts.in_pool {
                CowBacking::Volume { name: format!("{name}.cow") }
            } else {
                CowBacking::File { path: self.store.file_for(name, "cow") }
            };
            self.store.put_intent(&ClassicIntent::CowCreate {
                name: name.to_string(),
                origin: origin.to_string(),
                backing: backing.clone(),
            })?;
            let made = (|| {
                fault::point("cow-create.intent")?;
                let path = match &backing {
                    CowBacking::File { path } => {
                        loopback::create_sparse(path, opts.size_bytes)?;
                        loopback::attach(path)?
                    }
                    CowBacking::Volume { name } => {
                        let v = self.pool.create_thin(None, opts.size_bytes, Some(name))?;
                        v.device.ok_or_else(|| Error::Inconsistent(format!("pool volume {} was created inactive", v.id)))?
                    }
                };
                // A persistent store whose header is all zeroes is formatted as new; whatever
                // the backing held before must never be read as exceptions.
                loopback::zero_head(&path, 4096)?;
                let rec = CowRecord {
                    name: name.to_string(),
                    origin: origin.to_string(),
                    backing,
                    size_bytes: opts.size_bytes,
                    chunk_sectors: chunk,
                    persistence: opts.persistence,
                };
                let cow = self.ensure_cow_device(&dm, &rec)?;
                fault::point("cow-create.cow")?;
                self.ensure_snapshot_device(&dm, &o, &rec, real.dev, cow, true)?;
                fault::point("cow-create.loaded")?;
                self.store.put_cow(&rec)
            })();
            self.finish_intent(&dm, made)?;
        }
        self.cow(name)
    }

    /// Delete snapshot `name` and free its COW store. Refused while it is merging or open.
    pub fn delete_cow(&self, name: &str) -> Result<()> {
        let dm = Dm::open()?;
        let _l = self.lock()?;
        self.settle(&dm)?;
        let c = self.store.cow(name)?.ok_or_else(|| self.no_such("snapshot", name))?;
        if let Some(o) = self.store.origin(&c.origin)? {
            if o.merge.as_ref().is_some_and(|m| m.snap == name) {
                return Err(Error::SnapshotMerging { snap: name.to_string(), origin: o.name, what: "deleted" });
            }
        }
        if let Some(i) = self.info(&dm, &self.dev_name(name))? {
            if i.open_count > 0 {
                return Err(in_use("snapshot", name, i.open_count, "unmount it first"));
            }
        }
        self.store.put_intent(&ClassicIntent::CowDelete { name: name.to_string() })?;
        let done = fault::point("cow-delete.intent").and_then(|_| self.recover_intent(&dm, true));
        self.finish_intent(&dm, done)
    }

    pub fn cow(&self, name: &str) -> Result<CowView> {
        let dm = Dm::open()?;
        self.settle_quick(&dm)?;
        let c = self.store.cow(name)?.ok_or_else(|| self.no_such("snapshot", name))?;
        self.cow_view(&dm, &c)
    }

    pub fn cows(&self) -> Result<Vec<CowView>> {
        if !self.store.exists() {
            return Ok(Vec::new());
        }
        let dm = Dm::open()?;
        self.settle_quick(&dm)?;
        self.store.cows()?.iter().map(|c| self.cow_view(&dm, c)).collect()
    }

    fn cow_view(&self, dm: &Dm, c: &CowRecord) -> Result<CowView> {
        let mut v = CowView {
            name: c.name.clone(),
            origin: c.origin.clone(),
            size_bytes: c.size_bytes,
            chunk_bytes: c.chunk_sectors * SECTOR,
            persistent: c.persistence == Persistence::Persistent,
            backing: c.backing.clone(),
            device: None,
            state: CowState::Inactive,
            allocated_sectors: None,
            total_sectors: None,
            metadata_sectors: None,
            percent_used: None,
            merge_percent: None,
        };
        let merge = self.store.origin(&c.origin)?.and_then(|o| o.merge).filter(|m| m.snap == c.name);
        let status = match &merge {
            Some(m) if m.phase == MergePhase::Done => {
                v.state = CowState::Merged;
                v.merge_percent = Some(100.0);
                return Ok(v);
            }
            Some(m) => {
                let odev = self.dev_name(&c.origin);
                if self.info(dm, &odev)?.is_none() || live_target(dm, &odev)?.as_deref() != Some("snapshot-merge") {
                    // Decided but not (yet) loaded: the next command or `pool activate` loads it.
                    v.state = if self.info(dm, &odev)?.is_some() { CowState::Merging } else { CowState::Inactive };
                    return Ok(v);
                }
                let s = dm::snapshot::snapshot_status(dm, &odev, "snapshot-merge")?;
                v.merge_percent = Some(merge::percent(m.data_sectors_at_start, s.data_sectors()));
                v.state = CowState::Merging;
                s
            }
            None => {
                let sdev = self.dev_name(&c.name);
                let Some(i) = self.info(dm, &sdev)? else { return Ok(v) };
                v.device = Some(dm::node::existing(&sdev, i.dev));
                let s = dm::snapshot::snapshot_status(dm, &sdev, "snapshot")?;
                v.state = CowState::Valid;
                s
            }
        };
        match status {
            SnapshotStatus::Usage { allocated_sectors, total_sectors, metadata_sectors } => {
                v.allocated_sectors = Some(allocated_sectors);
                v.total_sectors = Some(total_sectors);
                v.metadata_sectors = Some(metadata_sectors);
                v.percent_used = status.percent_used();
            }
            SnapshotStatus::Invalid => v.state = CowState::Invalid,
            SnapshotStatus::Overflow => v.state = CowState::Overflow,
            SnapshotStatus::MergeFailed => v.state = CowState::MergeFailed,
            SnapshotStatus::Unknown => {}
        }
        Ok(v)
    }

    // ---- activation ----

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
            return Err(Error::Busy(
                format!("pool '{}'", self.pool.name()),
                "holding classic origins",
                "delete them (`rcx-dm origin delete`) or pass --force",
            ));
        }
        self.deactivate()?;
        std::fs::remove_dir_all(self.store.dir()).ctx(|| format!("removing {}", self.store.dir().display()))
    }

    fn take_down(&self, dm: &Dm, o: &OriginRecord) -> Result<()> {
        let cows = self.store.cows_of(&o.name)?;
        for c in &cows {
            self.remove_snapshot_device(dm, &o.name, &c.name)?;
        }
        self.remove_device(dm, &self.dev_name(&o.name), "origin", &o.name)?;
        for c in &cows {
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
    fn bring_up(&self, dm: &Dm, o: &OriginRecord) -> Result<PathBuf> {
        let sectors = o.size_bytes / SECTOR;
        let backing = self.origin_backing_dev(&o.backing)?;
        let (bdev, _) = loopback::block_device(&backing)?;
        let real = self.ensure(dm, &self.real_name(&o.name), LinearTarget { dev: bdev, offset_sectors: 0 }.line(0, sectors))?.dev;
        let mut merge_cow = None;
        for c in self.store.cows_of(&o.name)? {
            let merging = o.merge.as_ref().filter(|m| m.snap == c.name);
            if merging.is_some_and(|m| m.phase == MergePhase::Done) {
                continue; // merged already: `settle` frees it
            }
            if c.persistence == Persistence::Transient && self.info(dm, &self.dev_name(&c.name))?.is_none() {
                tracing::warn!(snapshot = %c.name, "transient snapshot did not survive its device; removing it");
                self.remove_device(dm, &self.cow_name(&c.name), "COW device of", &c.name)?;
                self.free_cow_backing(&c.backing)?;
                self.store.remove_cow(&c.name)?;
                continue;
            }
            let cow = self.ensure_cow_device(dm, &c)?;
            if merging.is_some() {
                merge_cow = Some((c, cow));
            } else {
                self.ensure_snapshot_device(dm, o, &c, real, cow, false)?;
            }
        }
        let line = match merge_cow {
            Some((c, cow)) => dm::SnapshotMergeTarget::new(real, cow, c.chunk_sectors)?.line(0, sectors),
            None => SnapshotOriginTarget { real }.line(0, sectors),
        };
        let dev = self.dev_name(&o.name);
        let info = self.ensure(dm, &dev, line)?;
        dm::node::ensure(&dev, info.dev)
    }

    fn ensure_cow_device(&self, dm: &Dm, c: &CowRecord) -> Result<DevNum> {
        let path = self.cow_backing_dev(&c.backing)?;
        let (dev, _) = loopback::block_device(&path)?;
        Ok(self.ensure(dm, &self.cow_name(&c.name), LinearTarget { dev, offset_sectors: 0 }.line(0, c.size_bytes / SECTOR))?.dev)
    }

    /// The snapshot device of `c`, loaded with its origin suspended (when the origin exists).
    fn ensure_snapshot_device(&self, dm: &Dm, o: &OriginRecord, c: &CowRecord, real: DevNum, cow: DevNum, live: bool) -> Result<()> {
        let sdev = self.dev_name(&c.name);
        if let Some(i) = self.live_info(dm, &sdev)? {
            dm::node::ensure(&sdev, i.dev)?;
            return Ok(());
        }
        let t = SnapshotTarget::new(real, cow, c.persistence, c.chunk_sectors)?;
        with_suspended(dm, &self.dev_name(&o.name), || {
            if live {
                fault::point("cow-create.suspended")?;
            }
            self.ensure(dm, &sdev, t.line(0, o.size_bytes / SECTOR)).map(|_| ())
        })
    }

    /// Remove a snapshot device with its origin suspended, as the kernel requires.
    fn remove_snapshot_device(&self, dm: &Dm, origin: &str, snap: &str) -> Result<()> {
        let sdev = self.dev_name(snap);
        if self.info(dm, &sdev)?.is_none() {
            return Ok(());
        }
        with_suspended(dm, &self.dev_name(origin), || self.remove_device(dm, &sdev, "snapshot", snap))
    }

    /// Create a one-target device unless it exists; returns its info (and makes its link).
    fn ensure(&self, dm: &Dm, name: &str, line: TargetLine) -> Result<DevInfo> {
        let info = match self.live_info(dm, name)? {
            Some(i) => i,
            None => dm.create(name, Some(&self.dm_id(name).uuid), &[line], false)?,
        };
        dm::node::ensure(name, info.dev)?;
        Ok(info)
    }

    fn remove_device(&self, dm: &Dm, dev: &str, what: &'static str, name: &str) -> Result<()> {
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

    fn origin_backing_dev(&self, b: &OriginBacking) -> Result<PathBuf> {
        match b {
            OriginBacking::File { path } => loopback::attach(path),
            OriginBacking::Volume { id } => self.pool.activate_volume(&VolRef::Id(*id)),
            OriginBacking::Device { path } => Ok(path.clone()),
        }
    }

    fn cow_backing_dev(&self, b: &CowBacking) -> Result<PathBuf> {
        match b {
            CowBacking::File { path } => loopback::attach(path),
            CowBacking::Volume { name } => self.pool.activate_volume(&VolRef::Name(name.clone())),
        }
    }

    fn free_cow_backing(&self, b: &CowBacking) -> Result<()> {
        match b {
            CowBacking::File { path } => remove_file_backing(path),
            CowBacking::Volume { name } => match self.pool.delete(&VolRef::Name(name.clone()), true) {
                Err(Error::NoSuchVolume { .. }) => Ok(()),
                r => r,
            },
        }
    }

    /// A name is free when no record and no dm device uses it.
    fn check_free(&self, dm: &Dm, name: &str) -> Result<()> {
        if self.store.name_taken(name) {
            return Err(Error::Exists(format!("a classic origin or snapshot named '{name}'")));
        }
        for dev in [self.dev_name(name), self.real_name(name), self.cow_name(name)] {
            if dm.info(&dev)?.is_some() {
                return Err(Error::invalid("name", format!("'{name}': a device-mapper device '{dev}' already exists")));
            }
        }
        Ok(())
    }

    // ---- recovery ----

    /// Close out an operation's intent: on success clear it; on failure undo or finish it now
    /// (an error, not a crash) and report the original error.
    fn finish_intent(&self, dm: &Dm, r: Result<()>) -> Result<()> {
        match r {
            Ok(()) => self.store.clear_intent(),
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
    fn settle(&self, dm: &Dm) -> Result<()> {
        self.settle_except(dm, None)
    }

    /// `settle`, leaving the merge of origin `except` to the caller (the merge command drives
    /// its own merge, with its fault points).
    fn settle_except(&self, dm: &Dm, except: Option<&str>) -> Result<()> {
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
    fn settle_quick(&self, dm: &Dm) -> Result<()> {
        if !self.store.exists() {
            return Ok(());
        }
        let pending = self.store.intent()?.is_some() || self.store.origins()?.iter().any(|o| o.merge.is_some());
        if pending {
            let _l = self.lock()?;
            self.settle(dm)?;
        }
        Ok(())
    }

    /// Creates roll back unless their record was written (the last step); deletes roll
    /// forward. Every step is idempotent. `live`: the delete command itself (fault points).
    fn recover_intent(&self, dm: &Dm, live: bool) -> Result<()> {
        let point = |s: &str| if live { fault::point(s) } else { Ok(()) };
        let Some(intent) = self.store.intent()? else { return Ok(()) };
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
            ClassicIntent::CowCreate { name, origin, backing } => {
                if self.store.cow(name)?.is_none() {
                    self.remove_snapshot_device(dm, origin, name)?;
                    self.remove_device(dm, &self.cow_name(name), "COW device of", name)?;
                    self.free_cow_backing(backing)?;
                }
            }
            ClassicIntent::CowDelete { name } => {
                if let Some(c) = self.store.cow(name)? {
                    self.remove_snapshot_device(dm, &c.origin, name)?;
                    point("cow-delete.removed")?;
                    self.remove_device(dm, &self.cow_name(name), "COW device of", name)?;
                    self.free_cow_backing(&c.backing)?;
                    point("cow-delete.freed")?;
                    self.store.remove_cow(name)?;
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
        self.store.clear_intent()
    }
}

/// Run `f` with device `name` suspended (when it exists and is live), and resume it on every
/// path, whatever `f` returned. A table loaded by `f` goes live with the resume; when the load
/// failed, the old table stays live.
pub(crate) fn with_suspended<T>(dm: &Dm, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    // A device without a live table (a create killed half-way) has no I/O to quiesce, and the
    // kernel refuses its resume (EINVAL): leave it to whoever makes it again.
    let suspend = matches!(dm.info(name)?, Some(i) if !i.suspended && i.live_table);
    if suspend {
        dm.suspend(name)?;
    }
    let r = f();
    if suspend {
        if let Err(e) = dm.resume(name) {
            return Err(match r {
                Err(first) => first,
                Ok(_) => e,
            });
        }
    }
    r
}

/// The live table's (first) target type.
fn live_target(dm: &Dm, name: &str) -> Result<Option<String>> {
    Ok(dm.table(name)?.into_iter().next().map(|l| l.target))
}

fn in_use(what: &'static str, name: &str, open: i32, advice: &'static str) -> Error {
    Error::ClassicInUse { what, name: name.to_string(), open, advice }
}

/// A device is free for us when it can be opened exclusively (not mounted, not claimed).
fn exclusive_check(dev: &Path, what: &'static str, name: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_EXCL).open(dev) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(in_use(
            what,
            &format!("{} (for origin {name})", dev.display()),
            1,
            "unmount it first; from now on write only through the origin, or its snapshots go wrong",
        )),
        Err(e) => Err(e).ctx(|| format!("opening {}", dev.display())),
    }
}

fn detach_if_exists(path: &Path) -> Result<()> {
    if path.exists() {
        loopback::detach(path)?;
    }
    Ok(())
}

fn remove_file_backing(path: &Path) -> Result<()> {
    detach_if_exists(path)?;
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).ctx(|| format!("removing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["base", "snap1", "web.v2", "a_b-c", &"x".repeat(MAX_NAME)] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "1", "123", "pool", "x-real", "x-cow", "a/b", "-x", ".x", &"x".repeat(MAX_NAME + 1)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn chunk_sizes_in_bytes() {
        assert_eq!(chunk_sectors(4096).unwrap(), 8);
        assert_eq!(chunk_sectors(512).unwrap(), 1);
        assert_eq!(chunk_sectors(1 << 30).unwrap(), 1 << 21);
        for bad in [0, 100, 3 << 10, 12 << 10, 2 << 30, 1 << 40] {
            assert!(chunk_sectors(bad).is_err(), "{bad}");
        }
    }
}
