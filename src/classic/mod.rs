//! Classic device-mapper snapshots: `snapshot-origin`, `snapshot` (persistent or transient
//! copy-on-write store) and `snapshot-merge`, the kernel's pre-thin way to snapshot a block
//! device (an origin over a base device, a copy-on-write snapshot of it, edits, a merge back,
//! snapshot-origin again), with automatic merge completion. Built on the pool layer: an origin
//! can sit on a pool volume and a COW store can be one; the records live in the pool's
//! directory (`classic/`, see `store`).
//!
//! Vocabulary: a *snapshot* (a classic snapshot; types `Snapshot*`, methods `*_snapshot`) is
//! what the user creates, lists and deletes, the `SNAP` below. *COW* names only the part that
//! holds its changes: the COW store (a sparse file or pool volume, [`CowBacking`]) and the
//! `-cow` linear device over it, which the kernel's `snapshot` target uses as its exception
//! store. The CLI command for snapshots is `rcx-dm cow` and the on-disk names (`cows/`,
//! `cow_create` in the intent) predate this rule; both stay as they are.
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
//! kernel has finished), and suspends an origin inside `Dm::with_suspended`, which resumes it
//! on every path; only the merge protocol (`merge`) suspends by hand, because whether it
//! resumes depends on how far the merge got.
//!
//! Files: `origin` (origins), `snapshot` (snapshots and their COW devices), `merge`, `stack`
//! (whole stacks up and down, and the one-device steps they are made of), `recover` (intents
//! and settling after an interrupted command), `store` (the records).

mod merge;
mod origin;
mod recover;
mod snapshot;
mod stack;
// Public only for the fuzz target that feeds torn records to its readers
// (fuzz/fuzz_targets/pool_records.rs); everything else goes through `Classic`.
pub(crate) mod store;

use std::path::PathBuf;

use serde::Serialize;

pub use merge::MergeProgress;
pub use store::{CowBacking, OriginBacking};

use store::ClassicStore;

use crate::dm::{snapshot::validate_chunk_sectors, DevInfo, Dm, Persistence};
use crate::error::{Error, Result};
use crate::file_lock::FileLock;
use crate::pool::{names, Pool, VolRef};
use crate::units::SECTOR;

/// The default chunk size (copy-on-write granularity): 4 KiB, 8 sectors, a filesystem block.
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

/// How to make a snapshot: the size and layout of its COW store.
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    /// Size of the COW store; when the changes outgrow it the snapshot becomes invalid.
    pub size_bytes: u64,
    /// Copy-on-write granularity, a power of two from 512 bytes to 1 GiB (see `chunk_sectors`).
    pub chunk_bytes: u64,
    /// Persistent (on-disk exception table, survives deactivation, can be merged) or
    /// transient (kernel memory only).
    pub persistence: Persistence,
    /// Put the COW store in a new pool volume (`<snap>.cow`) instead of a sparse file.
    pub in_pool: bool,
}

impl SnapshotOptions {
    /// A persistent snapshot with a sparse-file COW store of `size_bytes` and the default chunk.
    pub fn new(size_bytes: u64) -> SnapshotOptions {
        SnapshotOptions { size_bytes, chunk_bytes: DEFAULT_CHUNK_BYTES, persistence: Persistence::Persistent, in_pool: false }
    }
}

/// An origin as `origin list` shows it: its record joined with the kernel's view.
#[derive(Debug, Clone, Serialize)]
pub struct OriginView {
    /// The origin's name (unique among the pool's origins and snapshots).
    pub name: String,
    /// Size of the origin device.
    pub size_bytes: u64,
    /// What its `-real` device maps.
    pub backing: OriginBacking,
    /// `/dev/mapper/<pool>-<name>` while active.
    pub device: Option<PathBuf>,
    /// The live table's target: `snapshot-origin`, or `snapshot-merge` while merging.
    pub target: Option<String>,
    /// The snapshot being merged into it, if any.
    pub merging: Option<String>,
    /// Names of its snapshots.
    pub snapshots: Vec<String>,
}

/// A snapshot's state as `cow status` shows it, from its record and the kernel's status.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotState {
    /// In use and readable.
    Valid,
    /// Full (or failed): unusable, cannot be merged.
    Invalid,
    /// A write to the snapshot found no room in its COW store; reads still work.
    Overflow,
    /// Being merged into its origin.
    Merging,
    /// The kernel stopped merging it after an I/O error.
    MergeFailed,
    /// The kernel finished the merge; the next command frees the COW.
    Merged,
    /// No snapshot device (the pool or the classic stack is deactivated).
    Inactive,
}

impl std::fmt::Display for SnapshotState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SnapshotState::Valid => "valid",
            SnapshotState::Invalid => "invalid",
            SnapshotState::Overflow => "overflow",
            SnapshotState::Merging => "merging",
            SnapshotState::MergeFailed => "merge failed",
            SnapshotState::Merged => "merged",
            SnapshotState::Inactive => "inactive",
        })
    }
}

/// A snapshot as `cow status` shows it: its record joined with the kernel's view.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotView {
    /// The snapshot's name (unique among the pool's origins and snapshots).
    pub name: String,
    /// The origin it is a snapshot of.
    pub origin: String,
    /// Size of its COW store.
    pub size_bytes: u64,
    /// Copy-on-write granularity.
    pub chunk_bytes: u64,
    /// Whether its exception table is on disk (mergeable, survives deactivation).
    pub persistent: bool,
    /// What its `-cow` device maps.
    pub backing: CowBacking,
    /// `/dev/mapper/<pool>-<name>` while the snapshot device exists (not while merging).
    pub device: Option<PathBuf>,
    /// Its state (see [`SnapshotState`]).
    pub state: SnapshotState,
    /// Sectors of the COW store in use (data and metadata), from the kernel's status.
    pub allocated_sectors: Option<u64>,
    /// Sectors of the COW store in all.
    pub total_sectors: Option<u64>,
    /// Sectors of the COW store holding exception tables.
    pub metadata_sectors: Option<u64>,
    /// Percent of the COW store in use.
    pub percent_used: Option<f64>,
    /// While merging: percent of the data merged back so far.
    pub merge_percent: Option<f64>,
}

/// The classic snapshots of one pool: the entry point for origins, snapshots, merges, and
/// bringing the pool's classic stacks up and down.
pub struct Classic<'p> {
    pool: &'p Pool,
    store: ClassicStore,
}

impl<'p> Classic<'p> {
    /// The classic snapshots of `pool` (nothing is read or touched until a call).
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

    fn no_such(&self, kind: &'static str, name: &str) -> Error {
        Error::NoSuchClassic { kind, name: name.to_string(), pool: self.pool.name().to_string() }
    }

    fn lock(&self) -> Result<FileLock> {
        self.store.init()?;
        FileLock::exclusive(&self.store.dir().join("lock"))
    }
}

/// The live table's (first) target type.
fn live_target(dm: &Dm, name: &str) -> Result<Option<String>> {
    Ok(dm.table(name)?.into_iter().next().map(|l| l.target))
}

fn in_use(what: &'static str, name: &str, open: i32, advice: &'static str) -> Error {
    Error::ClassicInUse { what, name: name.to_string(), open, advice }
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
