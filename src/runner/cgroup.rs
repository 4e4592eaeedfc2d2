//! cgroup v2: one group per run, `<cgroup2 mount>/rcx-dm/<pool>-<run id>`, with `memory.max`
//! (and `memory.swap.max` 0, so a memory limit means an OOM kill, not swapping), `pids.max` and
//! `cpu.max`. The container is born inside it (clone3 with CLONE_INTO_CGROUP), so every process
//! it ever forks is counted. Afterwards the group is emptied (`cgroup.kill`) and removed.

use std::fs;
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};

/// CGROUP2_SUPER_MAGIC from linux/magic.h.
const CGROUP2_MAGIC: i64 = 0x6367_7270;
const PERIOD_US: u64 = 100_000;

/// Resource limits; None means unlimited.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// `memory.max` in bytes (swap is then off too: `memory.swap.max` 0).
    pub memory_bytes: Option<u64>,
    /// `pids.max`: how many processes and threads the container may have at once.
    pub pids: Option<u64>,
    /// `cpu.max` as a number of CPUs (1.5 = one and a half CPUs' time per period).
    pub cpus: Option<f64>,
}

impl Limits {
    fn controllers(&self) -> Vec<&'static str> {
        let mut c = Vec::new();
        if self.memory_bytes.is_some() {
            c.push("memory");
        }
        if self.pids.is_some() {
            c.push("pids");
        }
        if self.cpus.is_some() {
            c.push("cpu");
        }
        c
    }
}

/// `--memory`: bytes with an optional b/k/m/g/t suffix (powers of 1024), at least 4M.
pub fn parse_memory(text: &str) -> Result<u64> {
    let bytes = crate::units::parse_bytes(text, "memory limit", "32M, 512M, 2G")?;
    if bytes < 4 << 20 {
        return Err(Error::invalid("memory limit", format!("'{text}' is below 4M, too little to start a program")));
    }
    Ok(bytes)
}

/// `--pids`: the most processes (and threads) the container may have at once, 1 to 4194304.
pub fn parse_pids(text: &str) -> Result<u64> {
    match text.trim().parse::<u64>() {
        Ok(n) if (1..=4_194_304).contains(&n) => Ok(n),
        _ => Err(Error::invalid("pids limit", format!("'{text}'; use a whole number from 1 to 4194304, e.g. 64"))),
    }
}

/// `--cpus`: CPUs worth of time per period, 0.01 to 1024 (`1.5` = one and a half CPUs).
pub fn parse_cpus(text: &str) -> Result<f64> {
    match text.trim().parse::<f64>() {
        Ok(f) if f.is_finite() && (0.01..=1024.0).contains(&f) => Ok(f),
        _ => Err(Error::invalid("cpus", format!("'{text}'; use a number from 0.01 to 1024, e.g. 0.5 or 2"))),
    }
}

/// The `cpu.max` line for `cpus` CPUs: quota and period in microseconds.
pub fn cpu_max(cpus: f64) -> String {
    let quota = ((cpus * PERIOD_US as f64).round() as u64).max(1000);
    format!("{quota} {PERIOD_US}")
}

/// Where cgroup v2 is mounted: /sys/fs/cgroup (unified) or /sys/fs/cgroup/unified (hybrid).
pub(super) fn mount_point() -> Option<PathBuf> {
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"].into_iter().map(PathBuf::from).find(|p| {
        nix::sys::statfs::statfs(p.as_path()).is_ok_and(|s| s.filesystem_type().0 as i64 == CGROUP2_MAGIC)
    })
}

/// A run's cgroup.
pub(super) struct Cgroup {
    path: PathBuf,
}

/// What the kernel counted while the container ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Events {
    /// Processes the OOM killer killed (memory.events oom_kill).
    pub oom_kills: u64,
    /// Forks refused because pids.max was reached (pids.events max).
    pub pids_refused: u64,
}

impl Cgroup {
    /// The path a run's group will have (recorded before it is made).
    pub(super) fn path_for(mnt: &Path, name: &str) -> PathBuf {
        mnt.join("rcx-dm").join(name)
    }

    /// Make the group with its limits. Controllers the limits need are enabled on the way down
    /// from the root (only those not enabled yet: normally two reads, no writes).
    pub(super) fn create(mnt: &Path, path: &Path, limits: &Limits) -> Result<Cgroup> {
        let parent = path.parent().unwrap_or(mnt);
        let needed = limits.controllers();
        if !needed.is_empty() {
            let have = read(&mnt.join("cgroup.controllers"))?;
            for c in &needed {
                if !have.split_whitespace().any(|h| h == *c) {
                    return Err(Error::Cgroup(format!(
                        "the {c} controller is not available in {} (it offers: '{}'); on a hybrid cgroup \
                         host boot with systemd.unified_cgroup_hierarchy=1, or run without --memory/--pids/--cpus",
                        mnt.display(),
                        have.trim()
                    )));
                }
            }
            enable(mnt, &needed)?;
        }
        match fs::create_dir(parent) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).ctx(|| format!("creating cgroup {}", parent.display())),
        }
        if !needed.is_empty() {
            enable(parent, &needed)?;
        }
        fs::create_dir(path).ctx(|| format!("creating cgroup {}", path.display()))?;
        let cg = Cgroup { path: path.to_path_buf() };
        if let Err(e) = cg.apply(limits) {
            let _ = fs::remove_dir(path);
            return Err(e);
        }
        Ok(cg)
    }

    fn apply(&self, limits: &Limits) -> Result<()> {
        if let Some(m) = limits.memory_bytes {
            self.write("memory.max", &m.to_string())?;
            // No swap: a memory limit is a limit (and the OOM report is deterministic).
            if self.path.join("memory.swap.max").exists() {
                self.write("memory.swap.max", "0")?;
            }
        }
        if let Some(p) = limits.pids {
            self.write("pids.max", &p.to_string())?;
        }
        if let Some(c) = limits.cpus {
            self.write("cpu.max", &cpu_max(c))?;
        }
        Ok(())
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        let p = self.path.join(file);
        fs::write(&p, value).ctx(|| format!("writing '{value}' to {}", p.display()))
    }

    /// An O_PATH descriptor of the group for clone3(CLONE_INTO_CGROUP).
    pub(super) fn dir_fd(&self) -> Result<OwnedFd> {
        let fd = nix::fcntl::open(
            &self.path,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(std::io::Error::from)
        .ctx(|| format!("opening cgroup {}", self.path.display()))?;
        Ok(fd)
    }

    /// What the kernel counted in the group so far (0 for a counter it does not keep).
    pub(super) fn events(&self) -> Events {
        Events {
            oom_kills: key(&self.path.join("memory.events"), "oom_kill"),
            pids_refused: key(&self.path.join("pids.events"), "max"),
        }
    }
}

/// The limits a group has now (what `Cgroup::create` wrote, or a container's at checkpoint).
pub(super) fn read_limits(path: &Path) -> Limits {
    let num = |f: &str| fs::read_to_string(path.join(f)).ok().and_then(|t| t.trim().parse::<u64>().ok());
    let cpus = fs::read_to_string(path.join("cpu.max")).ok().and_then(|t| {
        let mut it = t.split_whitespace();
        let quota = it.next()?.parse::<u64>().ok()?;
        let period = it.next()?.parse::<u64>().ok()?;
        (period > 0).then(|| quota as f64 / period as f64)
    });
    Limits { memory_bytes: num("memory.max"), pids: num("pids.max"), cpus }
}

/// Kill whatever is left in a group, wait until it is empty and remove it. A group that is
/// already gone is fine. Used after every run and by crash cleanup.
pub(super) fn remove(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    // cgroup.kill (5.14+) SIGKILLs every process of the group and of the groups below it.
    if populated(path) && fs::write(path.join("cgroup.kill"), "1").is_err() {
        kill_procs(path);
    }
    remove_tree(path, Instant::now() + Duration::from_secs(10))
}

/// Remove a group and the groups a container made below it (a nested runtime, systemd, anyone
/// with a writable cgroup2 mount), deepest first: rmdir of a group with children is EBUSY for
/// as long as they exist, which no wait cures. EBUSY then means processes still exiting.
fn remove_tree(path: &Path, deadline: Instant) -> Result<()> {
    let children: Vec<std::path::PathBuf> = match fs::read_dir(path) {
        Ok(d) => d.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect(),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).ctx(|| format!("listing cgroup {}", path.display())),
    };
    for child in &children {
        remove_tree(child, deadline)?;
    }
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                if populated(path) {
                    // Without cgroup.kill: a process forked after the first round.
                    kill_procs(path);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).ctx(|| format!("removing cgroup {}", path.display())),
        }
    }
}

fn populated(path: &Path) -> bool {
    key(&path.join("cgroup.events"), "populated") != 0
}

/// Without cgroup.kill: SIGKILL every pid listed (the group's own, not its children's).
fn kill_procs(path: &Path) {
    if let Ok(text) = fs::read_to_string(path.join("cgroup.procs")) {
        for pid in text.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

fn read(p: &Path) -> Result<String> {
    fs::read_to_string(p).ctx(|| format!("reading {}", p.display()))
}

/// Add `+c` to `<dir>/cgroup.subtree_control` for each controller not already there.
fn enable(dir: &Path, controllers: &[&str]) -> Result<()> {
    let f = dir.join("cgroup.subtree_control");
    let have = read(&f)?;
    let missing: Vec<String> =
        controllers.iter().filter(|c| !have.split_whitespace().any(|h| h == **c)).map(|c| format!("+{c}")).collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs::write(&f, missing.join(" ")).map_err(|e| {
        Error::Cgroup(format!(
            "cannot enable {} in {}: {e}; another manager may own this cgroup tree",
            missing.join(" "),
            f.display()
        ))
    })
}

/// The value of `key` in a flat-keyed cgroup file ("key value" lines); 0 when absent.
fn key(file: &Path, key: &str) -> u64 {
    fs::read_to_string(file)
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok()).flatten()
            })
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_values() {
        assert_eq!(parse_memory("32M").unwrap(), 32 << 20);
        assert_eq!(parse_memory("32m").unwrap(), 32 << 20);
        assert_eq!(parse_memory("1g").unwrap(), 1 << 30);
        assert_eq!(parse_memory("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_memory("4194304").unwrap(), 4 << 20);
        assert_eq!(parse_memory("5000k").unwrap(), 5000 << 10);
        for bad in ["", "M", "abc", "-1M", "1.5G", "32Q", "1M", "0", "99999999999999999999", "16777216T"] {
            assert!(parse_memory(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_memory("1M").unwrap_err().to_string().contains("below 4M"));
        assert!(parse_memory("lots").unwrap_err().to_string().contains("invalid memory limit"));
    }

    #[test]
    fn pids_values() {
        assert_eq!(parse_pids("16").unwrap(), 16);
        assert_eq!(parse_pids("1").unwrap(), 1);
        for bad in ["0", "-1", "", "x", "1.5", "4194305", "16k"] {
            assert!(parse_pids(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_pids("many").unwrap_err().to_string().contains("invalid pids limit"));
    }

    #[test]
    fn cpus_values_and_cpu_max() {
        assert_eq!(parse_cpus("0.5").unwrap(), 0.5);
        assert_eq!(parse_cpus("2").unwrap(), 2.0);
        for bad in ["0", "0.001", "-1", "nan", "inf", "x", "", "2000"] {
            assert!(parse_cpus(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(cpu_max(0.5), "50000 100000");
        assert_eq!(cpu_max(1.5), "150000 100000");
        assert_eq!(cpu_max(0.01), "1000 100000");
    }

    #[test]
    fn controllers_follow_limits() {
        assert!(Limits::default().controllers().is_empty());
        let l = Limits { memory_bytes: Some(1), pids: Some(2), cpus: Some(1.0) };
        assert_eq!(l.controllers(), vec!["memory", "pids", "cpu"]);
    }

    #[test]
    fn flat_keyed_files() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("memory.events");
        fs::write(&f, "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n").unwrap();
        assert_eq!(key(&f, "oom_kill"), 1);
        assert_eq!(key(&f, "max"), 5);
        assert_eq!(key(&f, "nope"), 0);
        assert_eq!(key(&d.path().join("missing"), "max"), 0);
    }
}
