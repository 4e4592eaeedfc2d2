//! The minimal container runner behind `rcx-dm run`: a volume becomes a container root.
//!
//! One run, in order:
//! 1. resolve the volume; refuse it if mounted read-write elsewhere;
//! 2. record the run durably (`state`), naming everything it will create;
//! 3. a read-only base gets a fresh writable thin snapshot (`Pool::snapshot`); a writable
//!    volume is activated and used in place;
//! 4. a cgroup v2 group with the limits (`cgroup`);
//! 5. clone3 into new mount, pid, uts, ipc (and net) namespaces, inside that cgroup; the child
//!    mounts the volume privately, pivot_roots into it, detaches the old root, mounts /proc,
//!    /sys (read-only) and a minimal /dev, sets the hostname, locks itself down (a new session
//!    and cgroup namespace, masked and read-only paths, capabilities: `security`) and execs the
//!    command as PID 1 (`fork` clones, `child` runs the steps in the container, `root_mount`,
//!    `devices`; the child reports each stage, or its failure, on a pipe: `report`);
//! 6. rcx-dm forwards signals and waits (`init`); the exit status is the command's, or 128+n
//!    if signal n killed it;
//! 7. teardown: cgroup removed, snapshot deactivated (or deleted with --rm), record removed.
//!
//! Files: `spec` (what a run asks for), `security` (capabilities, security options, and the
//! child's lock-down), `run` (steps 1-3 and 7), `container` (steps 4-6 on any
//! block device), `state` (the record and crash cleanup), `step` (how a child-side step fails).
//! `seccomp`: the container's seccomp profile, compiled to BPF in the parent, installed by the
//! child. `tty`: `-t`'s pseudo-terminal and the copying to and from it. `userns`: `--userns`
//! (the id range, its lease in the pool's `runs/`, the id maps); the volume is then mounted by
//! rcx-dm as an idmapped detached mount the child moves into place (`root_mount`).
//!
//! `detach`: `run -d`, a run under a supervisor of its own (a double fork of rcx-dm) with a
//! record in the pool's `containers/` (log, pids, exit status) for `ps`, `stop`, `kill`, `logs`,
//! `wait` and `rm`; `exec`: a command in a running one's namespaces and cgroup.
//! `checkpoint`: checkpoint (CRIU dump + a thin snapshot while frozen) and restore of those.
//!
//! No process is spawned besides the container itself. If rcx-dm dies, the container dies
//! with it (PR_SET_PDEATHSIG), the kernel drops the mount with the container's mount
//! namespace, and the next rcx-dm command finishes the teardown from the record
//! (`reap_dead_runs`).

mod cgroup;
mod checkpoint;
mod child;
mod container;
mod detach;
mod devices;
mod exec;
mod fork;
mod init;
mod network;
mod report;
mod root_mount;
mod run;
mod seccomp;
mod security;
mod spec;
mod state;
mod tty;
mod step;
mod userns;

use std::path::Path;

pub use cgroup::{cpu_max, parse_cpus, parse_memory, parse_pids, Events, Limits};
pub use checkpoint::{
    checkpoint, list as list_checkpoints, remove as remove_checkpoint, restore, restore_timings, thaw_abandoned as thaw_abandoned_checkpoints, CheckpointOptions,
    CheckpointRecord, CheckpointStatus, CheckpointTimings, RestoreTimings, CHECKPOINTS_DIR, CHECKPOINT_SNAPSHOT_PREFIX,
};
pub use container::{run_container, ContainerRoot, RunOutcome};
pub use detach::{
    kill, list as list_containers, logs, reap_dead_containers, remove as remove_container, start as start_detached,
    status as container_status, stop, wait, ContainerRecord, ContainerState, ContainerStatus, ExitRecord, StartedRecord,
    CONTAINERS_DIR, EXIT_SUPERVISOR_DIED, LOG,
};
pub use exec::{exec, ExecSpec};
pub use init::STOP_GRACE;
pub use network::{BRIDGE, GATEWAY};
pub use report::{start_status, EXIT_NOEXEC, EXIT_NOTFOUND, EXIT_SETUP};
pub use root_mount::{detect as detect_filesystem, parse_mountinfo, Fs, MountEntry};
pub use run::run;
pub use seccomp::SeccompProfile;
pub use security::{capability_set, parse_capability, parse_security_opt, CapSet, Capability, Security, SecurityOpt};
pub use spec::{parse_env, validate_hostname, Net, RunSpec, DEFAULT_PATH};
pub use state::{reap_dead_runs, RunRecord, RUNS_DIR};
pub use userns::{parse_userns, IdRange, Userns, UsernsLease, AUTO_COUNT, AUTO_FIRST, AUTO_SLOTS};

use crate::error::Result;

/// Kill what is left in a run's cgroup and remove it (idempotent).
pub fn remove_cgroup(path: &Path) -> Result<()> {
    cgroup::remove(path)
}

/// Where cgroup v2 is mounted, if it is.
pub fn cgroup_mount() -> Option<std::path::PathBuf> {
    cgroup::mount_point()
}

/// What filesystem a device holds (`exclusive`: refuse one mounted anywhere).
pub fn probe_filesystem(label: &str, dev: &Path, exclusive: bool) -> Result<Fs> {
    root_mount::probe(label, dev, exclusive)
}
