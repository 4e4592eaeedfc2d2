//! `rcx-dm run` on a pool: resolve the volume, record the run, snapshot or activate, run the
//! container (`run_container`) and tear down whatever the run created.

use std::path::Path;
use std::time::{Duration, Instant};

use super::cgroup::{self, Limits};
use super::container::{run_container_with, ContainerRoot, OnRunning, RunOutcome};
use super::report::monotonic_ns;
use super::spec::{Net, RunSpec};
use super::state::{self, RunState};
use super::userns::UsernsLease;
use super::{init, network, root_mount};
use crate::error::{Error, Result};
use crate::pool::{Pool, VolRef};

/// How the volume is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A read-only base: run in a fresh writable snapshot of it.
    Snapshot,
    /// A writable volume, used as it is.
    InPlace,
    /// A read-only base with --read-only: mounted read-only itself (no journal replay), shared.
    SharedReadOnly,
}

/// Run a container and wait for it. Call from a single-threaded process (it clones the
/// calling process, and blocks the forwarded signals while it runs).
pub fn run(pool: &Pool, spec: &RunSpec) -> Result<RunOutcome> {
    run_with(pool, spec, None, None)
}

/// `run` with a run id chosen by the caller (`detach` names the container after it before the
/// run starts) and a hook called once the command runs.
pub(super) fn run_with(pool: &Pool, spec: &RunSpec, run_id: Option<String>, on_running: OnRunning<'_>) -> Result<RunOutcome> {
    let t0 = Instant::now();
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot("rcx-dm run"));
    }
    spec.validate()?;
    let vref = spec.volume.clone().expect("validated");
    let _signals = init::Signals::block()?;
    let base = pool.resolve(&vref)?;
    let label = vref.to_string();
    let mode = match (base.read_only, spec.read_only) {
        (true, false) => Mode::Snapshot,
        (true, true) => Mode::SharedReadOnly,
        (false, _) => Mode::InPlace,
    };
    let view = pool.volume(&VolRef::Id(base.id))?;
    if let Some(dev) = &view.device {
        root_mount::refuse_if_mounted_rw(&label, root_mount::dev_numbers(dev)?, &root_mount::mountinfo()?)?;
    }
    let _vol_lock = match mode {
        Mode::Snapshot => None,
        Mode::InPlace => Some(state::lock_volume(pool, base.id, !spec.read_only)?),
        Mode::SharedReadOnly => Some(state::lock_volume(pool, base.id, false)?),
    };
    let cg_mnt = cgroup::mount_point();
    if cg_mnt.is_none() && spec.limits != Limits::default() {
        return Err(Error::Cgroup(
            "no cgroup v2 filesystem at /sys/fs/cgroup or /sys/fs/cgroup/unified; mount one \
             (`mount -t cgroup2 none /sys/fs/cgroup`) or run without --memory/--pids/--cpus"
                .into(),
        ));
    }
    if let Some(n) = &spec.name {
        crate::pool::validate_user_volume_name(n)?;
    }
    let run_id = run_id.unwrap_or_else(new_run_id);
    let snapshot = (mode == Mode::Snapshot).then(|| spec.name.clone().unwrap_or_else(|| format!("run-{run_id}")));
    if let Some(n) = &snapshot {
        if pool.resolve(&VolRef::Name(n.clone())).is_ok() {
            return Err(Error::Exists(format!("a volume named '{n}' (pick another --name)")));
        }
    }
    // The id range is taken before the record exists (refused here if it overlaps another live
    // run's) and held until the run is torn down; the lease file is released on drop.
    let lease = spec.userns.as_ref().map(|u| UsernsLease::acquire(&state::runs_dir(pool), u)).transpose()?;
    // The address is claimed before the record exists, in the name of the run's directory: a
    // claim whose directory never appeared is stale and taken over (network::claim_address).
    let ip = match spec.net {
        Net::Bridge => {
            let seed = u32::from_str_radix(&run_id, 16).unwrap_or(0);
            Some(network::claim_address(&state::runs_dir(pool).join(&run_id), seed)?)
        }
        _ => None,
    };
    let record = state::RunRecord {
        id: run_id.clone(),
        pid: std::process::id(),
        volume: base.id,
        snapshot: snapshot.clone(),
        rm: spec.rm,
        deactivate: (mode != Mode::Snapshot && !view.active).then_some(base.id),
        cgroup: cg_mnt.as_ref().map(|m| cgroup::Cgroup::path_for(m, &format!("{}-{run_id}", pool.name()))),
        ip: ip.map(|i| i.to_string()),
        userns: lease.as_ref().map(|l| l.range()),
    };
    let st = match RunState::create(pool, record) {
        Ok(st) => st,
        Err(e) => {
            if let Some(ip) = ip {
                network::release_address(&ip.to_string(), &state::runs_dir(pool).join(&run_id));
            }
            return Err(e);
        }
    };
    let mut timings = Vec::new();
    let result = run_recorded(pool, spec, &st, mode, &label, base.id, cg_mnt.as_deref(), &mut timings, on_running);

    let t_teardown = Instant::now();
    let mut rec = st.record.clone();
    match &result {
        // The name was taken meanwhile: that volume is not this run's.
        Err(Error::Exists(_)) => rec.snapshot = None,
        // Nothing ran in a snapshot whose container never started: do not keep it.
        Err(_) => rec.rm = true,
        Ok(_) => {}
    }
    let kept = match (&snapshot, rec.rm) {
        (Some(n), false) => pool.resolve(&VolRef::Name(n.clone())).ok().map(|r| (r.id, n.clone())),
        _ => None,
    };
    let cleanup_error = match state::cleanup(pool, &rec, &st.dir) {
        Ok(()) => st.finish().err(),
        Err(e) => Some(e),
    };
    // Released only now: the container's processes are gone (its cgroup was killed).
    drop(lease);
    timings.push(("teardown", t_teardown.elapsed()));
    timings.push(("total", t0.elapsed()));
    match result {
        Ok(mut out) => {
            out.timings = timings;
            out.kept = kept;
            out.cleanup_error = cleanup_error;
            Ok(out)
        }
        Err(e) => {
            if let Some(ce) = cleanup_error {
                tracing::warn!("cleaning up after the failed run failed too: {ce}; the next rcx-dm command retries");
            }
            Err(e)
        }
    }
}

/// The part of a run between writing its record and tearing down: snapshot or activate the
/// volume, then run the container on it.
#[allow(clippy::too_many_arguments)]
fn run_recorded(
    pool: &Pool,
    spec: &RunSpec,
    st: &RunState,
    mode: Mode,
    label: &str,
    base: u32,
    cg_mnt: Option<&Path>,
    timings: &mut Vec<(&'static str, Duration)>,
    on_running: OnRunning<'_>,
) -> Result<RunOutcome> {
    let t = Instant::now();
    let device = match (&st.record.snapshot, mode) {
        (Some(name), Mode::Snapshot) => {
            // The name was checked against the reserved prefixes in `run` (or is `run-N`).
            let v = pool.snapshot_internal(None, &VolRef::Id(base), None, Some(name))?;
            timings.push(("snapshot", t.elapsed()));
            let t = Instant::now();
            let dev = match v.device {
                Some(d) => d,
                None => pool.activate_volume(&VolRef::Id(v.id))?,
            };
            let fs = root_mount::probe(name, &dev, true)?;
            timings.push(("activate", t.elapsed()));
            (dev, fs)
        }
        _ => {
            let dev = pool.activate_volume(&VolRef::Id(base))?;
            let fs = root_mount::probe(label, &dev, mode == Mode::InPlace)?;
            timings.push(("activate", t.elapsed()));
            (dev, fs)
        }
    };
    let (device, fs) = device;
    // Volume names may hold '_', hostnames may not.
    let hostname =
        spec.hostname.clone().or_else(|| spec.name.as_ref().map(|n| n.replace('_', "-"))).unwrap_or_else(|| st.record.id.clone());
    let target = ContainerRoot {
        device: &device,
        fs,
        mount_dir: &st.rootfs(),
        cgroup: cg_mnt.zip(st.record.cgroup.as_deref()),
        read_only_base: mode == Mode::SharedReadOnly,
        bridge: st.record.ip.as_ref().and_then(|ip| ip.parse().ok()).map(|ip| (ip, network::host_if(&st.record.id))),
        userns: st.record.userns,
    };
    run_container_with(&target, spec, &hostname, timings, on_running)
}

/// 8 hex digits from the kernel's random pool.
pub(super) fn new_run_id() -> String {
    let mut b = [0u8; 4];
    // SAFETY: fills a local buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 4 {
        let t = monotonic_ns() ^ (std::process::id() as u64) << 32;
        b = (t as u32).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_8_hex_digits() {
        let a = new_run_id();
        assert_eq!(a.len(), 8);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_run_id());
    }
}
