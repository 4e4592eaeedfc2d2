//! The library's error type. Every variant a user can cause says what was wrong and what to do.

use std::path::PathBuf;

pub use nix::errno::Errno;

/// `std::result::Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in rcx-dm: pools, thin volumes, classic snapshots, image
/// layers and container runs. Its `Display` text is the message a user sees, with what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/mapper/control` is missing or cannot be opened (the dm-mod module is not loaded,
    /// or no permission); returned by `Dm::open`.
    #[error("device-mapper is not available ({0}); load it with `modprobe dm-mod dm-thin-pool`")]
    DmUnavailable(String),

    /// A device-mapper ioctl failed (create, load, suspend, resume, remove, message, status,
    /// ...), or no free loop device could be attached for a pool's file.
    #[error("device-mapper {op} on {dev} failed: {msg}")]
    Dm {
        /// The operation that failed, e.g. `"create"`, `"load"`, `"suspend"`, `"message"`, or
        /// `"attach"` for a loop device.
        op: &'static str,
        /// The dm device name it was done on, or the backing file's path for `"attach"`
        /// (`"control"` for a poll of the control device).
        dev: String,
        /// The kernel's errno from the ioctl, when there was one; [`Error::errno`] reads it.
        errno: Option<Errno>,
        /// The errno's description, or the devicemapper library's message when there is no errno.
        msg: String,
    },

    /// An argument, name, size, record or input (e.g. an OCI image or layer) is not valid;
    /// made with [`Error::invalid`].
    #[error("invalid {what}: {why}")]
    Invalid {
        /// What was invalid, e.g. `"name"`, `"chunk size"`, `"OCI image"`.
        what: &'static str,
        /// Why: the offending value and the rule it breaks, often with what to do instead.
        why: String,
    },

    /// Opening a pool whose directory under the state root has no pool config.
    #[error("pool '{pool}' does not exist under {root}; create it with `rcx-dm pool create`")]
    NoSuchPool {
        /// The pool's name as asked for.
        pool: String,
        /// The state root directory that was searched.
        root: PathBuf,
    },

    /// Creating a pool whose name is already taken (its config exists). Holds the pool's name.
    #[error("pool '{0}' already exists; pick another --pool name or destroy it first")]
    PoolExists(String),

    /// The operation needs the live thin-pool device, but the pool is not activated (or an
    /// interrupted operation cannot be finished while it is inactive). Holds the pool's name.
    #[error("pool '{0}' is not active; run `rcx-dm pool activate`")]
    PoolInactive(String),

    /// The kernel reports the pool failed, read-only (metadata full or damaged), or refused its
    /// metadata as damaged when activating it.
    #[error("pool '{pool}' cannot be used: {why}")]
    PoolUnhealthy {
        /// The pool's name.
        pool: String,
        /// What the kernel reported and the commands that fix it.
        why: String,
    },

    /// `pool check` or `pool repair` asked for while the pool's thin-pool device is live; the
    /// metadata is examined only on a deactivated pool. Nothing was changed.
    #[error("pool '{pool}' is active; {what} works only on a deactivated pool: run `rcx-dm pool deactivate` first (nothing was changed)")]
    PoolActive {
        /// The pool's name.
        pool: String,
        /// The refused operation: `"pool check"` or `"pool repair"`.
        what: &'static str,
    },

    /// `pool repair` could not produce or install repaired metadata (thin_repair or the check
    /// of its output failed, or the metadata is on a block device); the old metadata is kept.
    #[error("repairing the metadata of pool '{pool}' failed, its metadata is unchanged: {why}")]
    RepairFailed {
        /// The pool's name.
        pool: String,
        /// What failed, with the tool's output where there was one.
        why: String,
    },

    /// A thin-provisioning tool that `pool check`/`pool repair` runs is not found (as an
    /// executable file) in `PATH`. Holds the tool's name: `"thin_check"`, `"thin_repair"` or
    /// `"thin_dump"`.
    #[error("{0} not found in PATH; `rcx-dm pool check` and `rcx-dm pool repair` need the thin-provisioning tools (Debian/Ubuntu package thin-provisioning-tools, device-mapper-persistent-data on Fedora)")]
    ThinToolMissing(&'static str),

    /// Resolving a volume by id or name that the pool's state store does not hold.
    #[error("no volume '{vol}' in pool '{pool}'; `rcx-dm list` shows the volumes")]
    NoSuchVolume {
        /// The volume as asked for: its numeric thin id or its name.
        vol: String,
        /// The pool's name.
        pool: String,
    },

    /// A name or id that must be new is taken: a volume name or thin id, a classic origin or
    /// snapshot name, an image name, or every candidate name of an image layer volume.
    #[error("{0} already exists in the pool")]
    Exists(String),

    /// A volume or pool is in use and the operation would disturb it: mounted or held open
    /// elsewhere (EBUSY), locked by another `rcx-dm run`, or a pool still holding classic
    /// origins.
    #[error("volume {what} is {state}; {advice}")]
    Busy {
        /// What is busy: a volume's id or name (with its device path when known), or
        /// `pool '<name>'`.
        what: String,
        /// How it is in use, e.g. `"in use by another rcx-dm run"`.
        state: &'static str,
        /// What the user can do about it.
        advice: &'static str,
    },

    /// The pool has run out of something it allocates; today only thin volume ids (all
    /// 2^24 are taken). Holds what ran out, e.g. `"volume id"`.
    #[error("the pool is out of {0} space; delete volumes or grow the pool")]
    NoSpace(&'static str),

    /// A device-mapper device with the name rcx-dm would use exists but carries another uuid:
    /// it belongs to another tool (or an older rcx-dm), and rcx-dm neither uses nor removes it.
    #[error("device-mapper device {name} exists but rcx-dm did not make it under that name (uuid '{found}', rcx-dm's would be '{want}'): it belongs to another tool, or to an rcx-dm from before dm names were unique across pools (deactivate pools before upgrading); rcx-dm neither uses nor removes it. Look at it with `dmsetup info {name}`; deactivate it with the program that made it, or `dmsetup remove {name}` if it is stale")]
    ForeignDevice {
        /// The dm device name.
        name: String,
        /// The dm uuid rcx-dm gives a device of that name.
        want: String,
        /// The dm uuid the existing device has (empty if it has none).
        found: String,
    },

    /// Pool activation brought up the thin-pool but some of its volumes failed to activate;
    /// the rest are up.
    #[error("pool '{pool}' is active with {activated} volume(s), but {} could not be activated: {}; fix the cause, then `rcx-dm activate ID` (or `pool activate` again) brings them up", failed.len(), failed.join("; "))]
    ActivationIncomplete {
        /// The pool's name.
        pool: String,
        /// How many volumes were activated.
        activated: usize,
        /// One entry per volume that failed, `volume <id>: <error>`.
        failed: Vec<String>,
    },

    /// Deleting a volume that something still depends on: an image (as a layer or its top),
    /// a containerd snapshot of `rcx-dm serve`, or a classic origin or COW store. Nothing was
    /// deleted.
    #[error("volume {vol} is still used by {}; remove those first (nothing was deleted)", holders.join(", "))]
    Referenced {
        /// The volume asked to be deleted, by id or name.
        vol: String,
        /// One description per holder, with the command that removes it.
        holders: Vec<String>,
    },

    /// Creating or extending a pool would make its sparse backing files larger than the host
    /// filesystem's free space, and overcommit was not allowed.
    #[error("the pool's sparse files would need {need} at full size but the host filesystem under {dir} has {free} free: a pool that outgrows its host gets EIO and the kernel fails it. Ask for less ({hint}; auto-extend grows the pool as it fills), free some space, or pass --overcommit (RCX_DM_OVERCOMMIT=1) to accept the risk and watch the host's free space in `rcx-dm pool status`")]
    HostOvercommit {
        /// The full size of the pool's sparse files, as `units::format_size` writes it
        /// (e.g. `"12G"`).
        need: String,
        /// The host filesystem's free space (f_bavail, what df shows), formatted the same way.
        free: String,
        /// The pool directory (or its nearest existing ancestor) whose filesystem was measured.
        dir: PathBuf,
        /// A smaller `--data-size` that would fit, or `"no size fits"`.
        hint: String,
    },

    /// rcx-dm's state records and the kernel's devices (or two records) contradict each other,
    /// e.g. an active origin without its `-real` device or an image whose top volume is gone.
    /// Holds what disagrees.
    #[error("state store and kernel disagree: {0}")]
    Inconsistent(String),

    /// Starting a pool monitor while another process holds the pool's monitor lock. Holds the
    /// pool's name.
    #[error("pool '{0}' already has a monitor (`rcx-dm pool monitor` or `rcx-dm serve`); one is enough: stop the other first")]
    MonitorRunning(String),

    /// Crash tests only: the step named by `RCX_DM_FAIL_AT` was reached with
    /// `RCX_DM_FAIL_MODE=error`. Holds the step's name (`<op>.<step>`).
    #[error("injected fault at step '{0}' (RCX_DM_FAIL_AT)")]
    InjectedFault(String),

    /// A command that needs root was run without an effective uid of 0. Holds the command,
    /// e.g. `"rcx-dm run"`.
    #[error("{0} must run as root (mounts, namespaces and cgroups need CAP_SYS_ADMIN); try sudo")]
    NotRoot(&'static str),

    /// No detached container by that name (`rcx-dm ps` lists them).
    #[error("no detached container '{name}' in pool '{pool}'; `rcx-dm ps` lists them")]
    NoSuchContainer {
        /// The name as given.
        name: String,
        /// The pool looked in.
        pool: String,
    },

    /// A detached container is not in the state an operation needs (running for stop, kill,
    /// exec; exited for rm).
    #[error("container '{name}' is {state}; {advice}")]
    ContainerState {
        /// The container's name.
        name: String,
        /// What it is: "running", "exited (status 7)", ...
        state: String,
        /// What to do instead.
        advice: &'static str,
    },

    /// No checkpoint by that name (`rcx-dm checkpoint ls` lists them).
    #[error("no checkpoint '{name}' in pool '{pool}'; `rcx-dm checkpoint ls` lists them")]
    NoSuchCheckpoint {
        /// The name as given.
        name: String,
        /// The pool looked in.
        pool: String,
    },

    /// A checkpoint that cannot be restored: its `checkpoint` command died or failed before
    /// it was complete, or it is being written right now.
    #[error("checkpoint '{name}' is {state}, so it cannot be restored; {advice}")]
    CheckpointUnusable {
        /// The checkpoint's name.
        name: String,
        /// "incomplete (...)", "being written by a running `rcx-dm checkpoint`".
        state: String,
        /// What to do.
        advice: &'static str,
    },

    /// A container that rcx-dm does not checkpoint (it is left running as it was).
    #[error("container '{name}' cannot be checkpointed: {why}; it was left running, untouched")]
    CheckpointRefused {
        /// The container's name.
        name: String,
        /// What it holds or shares that CRIU cannot dump, and what to do.
        why: String,
    },

    /// CRIU failed (or is missing). `log` is its log file, whose error lines `msg` quotes.
    #[error("criu {op} failed: {msg}{}", log.as_ref().map(|l| format!(" (its log: {})", l.display())).unwrap_or_default())]
    Criu {
        /// "dump" or "restore".
        op: &'static str,
        /// Why: its exit status and the error lines of its log, or that it is not installed.
        msg: String,
        /// Its log file.
        log: Option<std::path::PathBuf>,
    },

    /// A detached container did not start (`run -d`); its supervisor said why. `status` is
    /// what `rcx-dm run` would have exited with (125, 126 or 127).
    #[error("{msg}")]
    DetachedStart {
        /// 125 (setup), 126 (not executable) or 127 (not found).
        status: i32,
        /// The supervisor's error message.
        msg: String,
    },

    /// The container's command was not found in its root filesystem (exec gave ENOENT);
    /// `rcx-dm run` exits with `runner::EXIT_NOTFOUND` (127).
    #[error("command '{cmd}' not found in the container's root filesystem (looked in {searched}); copy it into the volume or give its full path")]
    CommandNotFound {
        /// The program as given.
        cmd: String,
        /// Where it was looked for: the container's `PATH`, or the path itself if it has a `/`.
        searched: String,
    },

    /// The container's command exists but exec refused it (not executable, wrong format, a
    /// missing interpreter, ...); `rcx-dm run` exits with `runner::EXIT_NOEXEC` (126).
    #[error("command '{cmd}' cannot be executed in the container: {why}")]
    CommandNotExecutable {
        /// The program as given.
        cmd: String,
        /// The step that failed and the errno's description.
        why: String,
    },

    /// A run would mount a writable volume that is already mounted read-write on the host.
    #[error("volume {vol} is mounted read-write at {at}; unmount it first, or mark it read-only (`rcx-dm set-readonly {vol}`) so that runs get a snapshot of it")]
    VolumeMounted {
        /// The volume, by id or name.
        vol: String,
        /// Where it is mounted read-write.
        at: PathBuf,
    },

    /// The volume's superblock is not one of the filesystems rcx-dm mounts (ext4, xfs).
    #[error("volume {vol} has no filesystem rcx-dm can mount ({found}); make one with `rcx-dm format {vol}`")]
    NoFilesystem {
        /// The volume, by id or name.
        vol: String,
        /// What was found instead: `"it is empty"` (all zeroes) or `"unknown superblock"`.
        found: String,
    },

    // ---- day-2 space operations: trim, thin resize ----
    /// Trimming or resizing a volume marked read-only (a base or an image layer).
    #[error("volume {vol} is read-only (a base or an image layer that snapshots share), so it cannot be {op}; work on a snapshot of it instead (`rcx-dm snap - {vol}`), or make it writable first with `rcx-dm set-readonly --off {vol}`")]
    VolumeReadOnly {
        /// The volume, by id or name.
        vol: String,
        /// The refused operation as a past participle: `"trimmed"` or `"resized"`.
        op: &'static str,
    },

    /// A thin resize asked for a size smaller than the volume's; volumes only grow.
    #[error("volume {vol} is {have} bytes and thin resize only grows (asked for {want}); to make it smaller, copy its files into a new, smaller volume")]
    ShrinkRefused {
        /// The volume, by id or name.
        vol: String,
        /// Its current size in bytes.
        have: u64,
        /// The size asked for, in bytes.
        want: u64,
    },

    /// A trim or filesystem grow needs a private read-write mount, and the kernel refused it
    /// (EBUSY) because the volume is mounted read-only elsewhere.
    #[error("volume {vol} is mounted read-only elsewhere (e.g. a container's view), and the kernel refuses the read-write private mount that {op} needs (EBUSY); unmount it or remount it read-write, then run it again")]
    MountedReadOnly {
        /// The volume, by id or name.
        vol: String,
        /// The operation: `"trim"` or `"growing its filesystem"`.
        op: &'static str,
    },

    /// The kernel refused to grow a volume's filesystem (the ext4 or xfs grow ioctl failed).
    #[error("the kernel refused to {op} the {fs} filesystem on volume {vol}: {msg}")]
    FsResize {
        /// The volume, by id or name.
        vol: String,
        /// The filesystem's kernel name, `"ext4"` or `"xfs"`.
        fs: &'static str,
        /// The operation, `"grow"`.
        op: &'static str,
        /// The errno's description and value.
        msg: String,
    },

    /// mkfs (mkfs.ext4 or mkfs.xfs) exited with failure on a volume.
    #[error("making {fs} on volume {vol} failed: {msg}")]
    Format {
        /// The volume, by id or name.
        vol: String,
        /// The filesystem's kernel name, `"ext4"` or `"xfs"`.
        fs: &'static str,
        /// mkfs's exit status and its stderr.
        msg: String,
    },

    /// A run's resource limits cannot be set up: no cgroup v2 filesystem, a controller that is
    /// unavailable or cannot be enabled, or limits without a cgroup. Holds what is wrong.
    #[error("cgroup v2: {0}")]
    Cgroup(String),

    /// Setting up a container failed before its command ran (namespaces, clone3, mounts,
    /// networking, a signal before it started, ...).
    #[error("setting up the container failed while {stage}: {msg}")]
    ContainerSetup {
        /// The setup step that failed, e.g. `"starting the container"`.
        stage: String,
        /// Why, usually the errno's description and value.
        msg: String,
    },

    /// `--cap-add` / `--cap-drop` named a capability that does not exist.
    #[error("unknown capability '{name}'; use a name as Docker spells it (e.g. NET_ADMIN or CAP_NET_ADMIN, any case), or ALL")]
    UnknownCapability {
        /// The name as given.
        name: String,
    },

    /// A `--userns` value that cannot be used: malformed, an empty range, one that includes the
    /// host's uid 0 or runs past the 32-bit id space, one that overlaps another live run's
    /// range, no free automatic range, or a combination with `--privileged` / `--net host`.
    /// Found before anything of the run is created.
    #[error("invalid --userns '{value}': {why}")]
    Userns {
        /// The value as given (`auto` or `HOSTID:COUNT`).
        value: String,
        /// What is wrong with it and what to do.
        why: String,
    },

    /// A `--security-opt` value that is not understood or is malformed.
    #[error("invalid --security-opt '{opt}': {why}")]
    SecurityOpt {
        /// The option as given.
        opt: String,
        /// What is wrong with it and what is accepted.
        why: String,
    },

    /// A seccomp profile for `run` cannot be used: the file is missing or unreadable, it is not
    /// Docker's profile format, or it asks for something rcx-dm cannot enforce (an unknown
    /// action or operator, SCMP_ACT_NOTIFY, a host architecture other than x86_64). Found
    /// before anything of the run is created.
    #[error("seccomp profile {profile}: {why}; fix the profile, or pass `--security-opt seccomp=unconfined` to run without a filter")]
    SeccompProfile {
        /// The profile's path, or `built-in default` for the embedded one.
        profile: String,
        /// What is wrong, naming the offending entry or value.
        why: String,
    },

    // ---- classic snapshots (snapshot-origin / snapshot / snapshot-merge) and revert ----
    /// A classic origin or snapshot with that name is not in the pool's classic records.
    #[error("no {kind} '{name}' in pool '{pool}'; `rcx-dm origin list` and `rcx-dm cow status` show them")]
    NoSuchClassic {
        /// `"origin"` or `"snapshot"`.
        kind: &'static str,
        /// The name asked for.
        name: String,
        /// The pool's name.
        pool: String,
    },

    /// Starting a merge into an origin that is already merging another snapshot.
    #[error("origin '{origin}' is already merging snapshot '{snap}'; a second merge on the same origin is refused until it finishes (`rcx-dm merge {snap} --wait`)")]
    MergeInProgress {
        /// The origin's name.
        origin: String,
        /// The snapshot it is merging now.
        snap: String,
    },

    /// An operation on a snapshot (e.g. deleting it) while it is being merged into its origin.
    #[error("snapshot '{snap}' is being merged into origin '{origin}'; it cannot be {what} until the merge finishes (`rcx-dm merge {snap} --wait`)")]
    SnapshotMerging {
        /// The snapshot's name.
        snap: String,
        /// The origin it is merging into.
        origin: String,
        /// The refused operation as a past participle, e.g. `"deleted"`.
        what: &'static str,
    },

    /// Merging a snapshot the kernel reports as invalid or overflowed (its COW store filled up
    /// or failed), so its content is lost.
    #[error("snapshot '{snap}' is {state}: its copy-on-write store filled up or failed, so its content is lost and it cannot be merged; delete it with `rcx-dm cow delete {snap}` (next time give the COW more --size)")]
    SnapshotUnusable {
        /// The snapshot's name.
        snap: String,
        /// The kernel's state of it: `"invalid"` or `"overflowed"`.
        state: &'static str,
    },

    /// Merging a transient (non-persistent) snapshot, which the kernel cannot merge. Holds the
    /// snapshot's name.
    #[error("snapshot '{0}' is transient (--transient); the kernel merges only persistent snapshots")]
    MergeNeedsPersistent(String),

    /// Loading snapshot-merge into an origin device whose live table is a snapshot-origin that
    /// is not suspended (a guard for a kernel rule). Holds the origin's dm device name.
    #[error("refusing to load snapshot-merge into {0} while its snapshot-origin is live; the kernel requires the origin to be suspended first (snapshot-merge must not be loaded while a snapshot-origin for the same origin is live)")]
    OriginLive(String),

    /// A classic origin, snapshot or backing device is open (mounted or held by a process)
    /// when deleting, merging, deactivating or creating an origin needs it closed.
    #[error("{what} '{name}' is open ({open} opener(s): mounted or held by a process); {advice}")]
    ClassicInUse {
        /// What is open: `"origin"`, `"snapshot"` or `"device"` (an origin's backing device).
        what: &'static str,
        /// Its name (for a backing device: its path and the origin it is for).
        name: String,
        /// The device's open count from the kernel (1 for a device that refused O_EXCL).
        open: i32,
        /// What the user can do about it.
        advice: &'static str,
    },

    /// Deleting a classic origin that still has snapshots.
    #[error("origin '{origin}' still has snapshots ({snaps}); delete them first with `rcx-dm cow delete`")]
    OriginHasSnapshots {
        /// The origin's name.
        origin: String,
        /// Its snapshots' names, comma-separated.
        snaps: String,
    },

    /// The kernel reports "Merge failed" for a merging snapshot: it stopped after an I/O error.
    #[error("the kernel stopped merging snapshot '{snap}' into '{origin}' after an I/O error (status \"Merge failed\"); check the devices (dmesg), then `rcx-dm pool deactivate` and `rcx-dm pool activate` restart the merge")]
    MergeFailed {
        /// The snapshot's name.
        snap: String,
        /// The origin's name.
        origin: String,
    },

    /// A classic origin or snapshot exists in the records but its device is not active, and
    /// the operation (snapshot, merge, merge progress) needs it live.
    #[error("classic {kind} '{name}' is not active; run `rcx-dm pool activate`")]
    ClassicInactive {
        /// `"origin"` or `"snapshot"`.
        kind: &'static str,
        /// Its name.
        name: String,
    },

    /// An input (e.g. an OCI image's layer count, a layer's tar stream, a GNU sparse file in a
    /// layer) exceeds one of rcx-dm's safety limits; it was refused and nothing of it is kept.
    #[error("{what} is over the limit of {limit} ({why}); refused, and nothing of it is kept")]
    LimitExceeded {
        /// What exceeded the limit, e.g. a manifest, a layer, or `layer entry '<path>': ...`.
        what: String,
        /// The limit, with its unit, e.g. `"128 layers"`.
        limit: String,
        /// Why it is over: what the input has or claims.
        why: String,
    },

    /// A registry could not be reached, refused the request (401, 403, 404, 5xx), or sent
    /// something that is not what was asked for (`image pull`, `image push`).
    #[error("{reference}: {why}")]
    Registry {
        /// The image reference as given, e.g. `127.0.0.1:5000/app:1`.
        reference: String,
        /// What went wrong, with what to do.
        why: String,
    },

    /// An I/O or system call failed; made by the crate's internal `.ctx(...)` helper and
    /// similar wrappers.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. `opening /path/to/file`.
        context: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An [`Error::Invalid`]: `what` names the invalid thing, `why` says what is wrong with it.
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
    /// Turn an `io::Error` into an [`Error::Io`] whose context is `context()` (called only on
    /// error), e.g. `.ctx(|| format!("opening {}", path.display()))`.
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io { context: context(), source })
    }
}
