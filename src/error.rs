//! The library's error type. Every variant a user can cause says what was wrong and what to do.

use std::path::PathBuf;

pub use nix::errno::Errno;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("device-mapper is not available ({0}); load it with `modprobe dm-mod dm-thin-pool`")]
    DmUnavailable(String),

    #[error("device-mapper {op} on {dev} failed: {msg}")]
    Dm { op: &'static str, dev: String, errno: Option<Errno>, msg: String },

    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },

    #[error("pool '{pool}' does not exist under {root}; create it with `rcx-dm pool create`")]
    NoSuchPool { pool: String, root: PathBuf },

    #[error("pool '{0}' already exists; pick another --pool name or destroy it first")]
    PoolExists(String),

    #[error("pool '{0}' is not active; run `rcx-dm pool activate`")]
    PoolInactive(String),

    #[error("pool '{pool}' cannot be used: {why}")]
    PoolUnhealthy { pool: String, why: String },

    #[error("pool '{pool}' is active; {what} works only on a deactivated pool: run `rcx-dm pool deactivate` first (nothing was changed)")]
    PoolActive { pool: String, what: &'static str },

    #[error("repairing the metadata of pool '{pool}' failed, its metadata is unchanged: {why}")]
    RepairFailed { pool: String, why: String },

    #[error("{0} not found in PATH; `rcx-dm pool check` and `rcx-dm pool repair` need the thin-provisioning tools (Debian/Ubuntu package thin-provisioning-tools, device-mapper-persistent-data on Fedora)")]
    ThinToolMissing(&'static str),

    #[error("no volume '{vol}' in pool '{pool}'; `rcx-dm list` shows the volumes")]
    NoSuchVolume { vol: String, pool: String },

    #[error("{0} already exists in the pool")]
    Exists(String),

    #[error("volume {what} is {state}; {advice}")]
    Busy { what: String, state: &'static str, advice: &'static str },

    #[error("the pool is out of {0} space; delete volumes or grow the pool")]
    NoSpace(&'static str),

    #[error("device-mapper device {name} exists but rcx-dm did not make it under that name (uuid '{found}', rcx-dm's would be '{want}'): it belongs to another tool, or to an rcx-dm from before dm names were unique across pools (deactivate pools before upgrading); rcx-dm neither uses nor removes it. Look at it with `dmsetup info {name}`; deactivate it with the program that made it, or `dmsetup remove {name}` if it is stale")]
    ForeignDevice { name: String, want: String, found: String },

    #[error("pool '{pool}' is active with {activated} volume(s), but {} could not be activated: {}; fix the cause, then `rcx-dm activate ID` (or `pool activate` again) brings them up", failed.len(), failed.join("; "))]
    ActivationIncomplete { pool: String, activated: usize, failed: Vec<String> },

    #[error("volume {vol} is still used by {}; remove those first (nothing was deleted)", holders.join(", "))]
    Referenced { vol: String, holders: Vec<String> },

    #[error("the pool's sparse files would need {need} at full size but the host filesystem under {dir} has {free} free: a pool that outgrows its host gets EIO and the kernel fails it. Ask for less ({hint}; auto-extend grows the pool as it fills), free some space, or pass --overcommit (RCX_DM_OVERCOMMIT=1) to accept the risk and watch the host's free space in `rcx-dm pool status`")]
    HostOvercommit { need: String, free: String, dir: PathBuf, hint: String },

    #[error("state store and kernel disagree: {0}")]
    Inconsistent(String),

    #[error("pool '{0}' already has a monitor (`rcx-dm pool monitor` or `rcx-dm serve`); one is enough: stop the other first")]
    MonitorRunning(String),

    #[error("injected fault at step '{0}' (RCX_DM_FAIL_AT)")]
    InjectedFault(String),

    #[error("{0} must run as root (mounts, namespaces and cgroups need CAP_SYS_ADMIN); try sudo")]
    NotRoot(&'static str),

    #[error("command '{cmd}' not found in the container's root filesystem (looked in {searched}); copy it into the volume or give its full path")]
    CommandNotFound { cmd: String, searched: String },

    #[error("command '{cmd}' cannot be executed in the container: {why}")]
    CommandNotExecutable { cmd: String, why: String },

    #[error("volume {vol} is mounted read-write at {at}; unmount it first, or mark it read-only (`rcx-dm set-readonly {vol}`) so that runs get a snapshot of it")]
    VolumeMounted { vol: String, at: PathBuf },

    #[error("volume {vol} has no filesystem rcx-dm can mount ({found}); make one with `rcx-dm format {vol}`")]
    NoFilesystem { vol: String, found: String },

    // ---- day-2 space operations: trim, thin resize ----
    #[error("volume {vol} is read-only (a base or an image layer that snapshots share), so it cannot be {op}; work on a snapshot of it instead (`rcx-dm snap - {vol}`), or make it writable first with `rcx-dm set-readonly --off {vol}`")]
    VolumeReadOnly { vol: String, op: &'static str },

    #[error("volume {vol} is {have} bytes and thin resize only grows (asked for {want}); to make it smaller, copy its files into a new, smaller volume")]
    ShrinkRefused { vol: String, have: u64, want: u64 },

    #[error("volume {vol} is mounted read-only elsewhere (e.g. a container's view), and the kernel refuses the read-write private mount that {op} needs (EBUSY); unmount it or remount it read-write, then run it again")]
    MountedReadOnly { vol: String, op: &'static str },

    #[error("the kernel refused to {op} the {fs} filesystem on volume {vol}: {msg}")]
    FsResize { vol: String, fs: &'static str, op: &'static str, msg: String },

    #[error("making {fs} on volume {vol} failed: {msg}")]
    Format { vol: String, fs: &'static str, msg: String },

    #[error("cgroup v2: {0}")]
    Cgroup(String),

    #[error("setting up the container failed while {stage}: {msg}")]
    ContainerSetup { stage: String, msg: String },

    // ---- classic snapshots (snapshot-origin / snapshot / snapshot-merge) and revert ----
    #[error("no {kind} '{name}' in pool '{pool}'; `rcx-dm origin list` and `rcx-dm cow status` show them")]
    NoSuchClassic { kind: &'static str, name: String, pool: String },

    #[error("origin '{origin}' is already merging snapshot '{snap}'; a second merge on the same origin is refused until it finishes (`rcx-dm merge {snap} --wait`)")]
    MergeInProgress { origin: String, snap: String },

    #[error("snapshot '{snap}' is being merged into origin '{origin}'; it cannot be {what} until the merge finishes (`rcx-dm merge {snap} --wait`)")]
    SnapshotMerging { snap: String, origin: String, what: &'static str },

    #[error("snapshot '{snap}' is {state}: its copy-on-write store filled up or failed, so its content is lost and it cannot be merged; delete it with `rcx-dm cow delete {snap}` (next time give the COW more --size)")]
    SnapshotUnusable { snap: String, state: &'static str },

    #[error("snapshot '{0}' is transient (--transient); the kernel merges only persistent snapshots")]
    MergeNeedsPersistent(String),

    #[error("refusing to load snapshot-merge into {0} while its snapshot-origin is live; the kernel requires the origin to be suspended first (snapshot-merge must not be loaded while a snapshot-origin for the same origin is live)")]
    OriginLive(String),

    #[error("{what} '{name}' is open ({open} opener(s): mounted or held by a process); {advice}")]
    ClassicInUse { what: &'static str, name: String, open: i32, advice: &'static str },

    #[error("origin '{origin}' still has snapshots ({snaps}); delete them first with `rcx-dm cow delete`")]
    OriginHasSnapshots { origin: String, snaps: String },

    #[error("the kernel stopped merging snapshot '{snap}' into '{origin}' after an I/O error (status \"Merge failed\"); check the devices (dmesg), then `rcx-dm pool deactivate` and `rcx-dm pool activate` restart the merge")]
    MergeFailed { snap: String, origin: String },

    #[error("classic {kind} '{name}' is not active; run `rcx-dm pool activate`")]
    ClassicInactive { kind: &'static str, name: String },

    #[error("{what} is over the limit of {limit} ({why}); refused, and nothing of it is kept")]
    LimitExceeded { what: String, limit: String, why: String },

    #[error("{context}: {source}")]
    Io { context: String, #[source] source: std::io::Error },
}

impl Error {
    pub fn invalid(what: &'static str, why: impl Into<String>) -> Self {
        Error::Invalid { what, why: why.into() }
    }

    /// The kernel's errno behind a dm failure, used for the kernel's idempotency signals.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Dm { errno, .. } => *errno,
            Error::Io { source, .. } => source.raw_os_error().map(Errno::from_raw),
            _ => None,
        }
    }
}

/// Attach a description of what was being done to an io::Error.
pub trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io { context: context(), source })
    }
}
