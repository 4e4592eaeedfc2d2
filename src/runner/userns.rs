//! `--userns`: the container's root is an unprivileged range of host ids.
//!
//! What a run asks for (`Userns`: `auto` or `HOSTID:COUNT`), the checks on it, the pool's record
//! of the ranges in use (`UsernsLease`), and rcx-dm's side of setting the namespace up once the
//! child exists (`write_maps`, `open_userns`).
//!
//! Ranges in use are lease files `<pool>/runs/userns-<host>-<count>.lease`, next to the run
//! records, each flocked by the rcx-dm whose run uses it: the kernel drops the lock when that
//! rcx-dm dies, however it dies, so a lease whose lock can be taken is a dead run's and is
//! reclaimed. Leases are made, and dead ones removed, only under `runs/userns.lock`, so two runs
//! never take overlapping ranges and a reaper never removes a lease being made.
//!
//! `auto` takes the first free range of [`AUTO_COUNT`] ids from [`AUTO_FIRST`] on, in steps of
//! [`AUTO_COUNT`]: 0x70000000 to 0x7FFDFFFF, above systemd-nspawn's range (0x80000 to 0x6FFFFFFF),
//! below systemd's foreign range (0x7FFE0000) and below 2^31 (some tools take ids as signed).

use std::fs;
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::security::Security;
use super::spec::Net;
use crate::error::{Error, IoContext, Result};
use crate::file_lock::{FileLock, LockMode};

/// The first host id of `--userns auto`'s ranges.
pub const AUTO_FIRST: u32 = 0x7000_0000;
/// How many ids one `--userns auto` range maps (container ids 0 to 65535).
pub const AUTO_COUNT: u32 = 65536;
/// How many `auto` ranges there are: up to systemd's foreign range at 0x7FFE0000.
pub const AUTO_SLOTS: u32 = 4094;
/// The highest valid id: 2^32-1 is `(uid_t)-1`, which no process or file can have.
const MAX_ID: u64 = u32::MAX as u64 - 1;

const ALLOC_LOCK: &str = "userns.lock";
const LEASE_PREFIX: &str = "userns-";
const LEASE_SUFFIX: &str = ".lease";

/// A range of ids: container ids `0..count` are host ids `host..host+count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    /// The host id container id 0 maps to.
    pub host: u32,
    /// How many ids are mapped.
    pub count: u32,
}

impl IdRange {
    /// One past the last host id.
    fn end(self) -> u64 {
        self.host as u64 + self.count as u64
    }

    /// Whether two ranges share a host id.
    pub fn overlaps(self, other: IdRange) -> bool {
        (self.host as u64) < other.end() && (other.host as u64) < self.end()
    }

    /// Refuse a range that maps nothing, includes the host's root or runs past the id space.
    pub fn validate(self) -> Result<()> {
        let bad = |why: String| Err(Error::Userns { value: self.to_string(), why });
        if self.count == 0 {
            return bad("COUNT must be at least 1".into());
        }
        if self.host == 0 {
            return bad("the range includes the host's uid 0 (root); start it above the host's own users, e.g. 200000:65536".into());
        }
        if self.end() - 1 > MAX_ID {
            return bad(format!("the range ends at {}, past the highest id {MAX_ID}", self.end() - 1));
        }
        Ok(())
    }
}

impl std::fmt::Display for IdRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.count)
    }
}

/// `--userns`: which host ids the container's ids map to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Userns {
    /// A free range of [`AUTO_COUNT`] ids, picked from the pool's record of ranges in use.
    Auto,
    /// This range (refused if another live run of the pool uses any of its ids).
    Range(IdRange),
}

impl std::fmt::Display for Userns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Userns::Auto => f.write_str("auto"),
            Userns::Range(r) => r.fmt(f),
        }
    }
}

/// `--userns auto` or `--userns HOSTID:COUNT` (decimal), checked as `IdRange::validate` does.
pub fn parse_userns(text: &str) -> Result<Userns> {
    if text == "auto" {
        return Ok(Userns::Auto);
    }
    let malformed = || Error::Userns {
        value: text.to_string(),
        why: "use auto or HOSTID:COUNT (decimal host id and count, e.g. 200000:65536)".into(),
    };
    let (h, c) = text.split_once(':').ok_or_else(malformed)?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || !digits(c) {
        return Err(malformed());
    }
    let (Ok(host), Ok(count)) = (h.parse::<u32>(), c.parse::<u32>()) else {
        return Err(Error::Userns { value: text.to_string(), why: format!("ids are 32-bit: at most {MAX_ID}") });
    };
    let r = IdRange { host, count };
    r.validate()?;
    Ok(Userns::Range(r))
}

/// Refuse what a user namespace cannot be combined with: `--privileged` (root on the host is
/// what it is for; Docker refuses the pair too) and `--net host` (the host's network namespace
/// is not the new user namespace's: sysfs could not be mounted for it, nor the network
/// configured; Docker refuses sharing the host's network under user namespaces too).
pub fn check_combination(userns: &Userns, security: &Security, net: Net) -> Result<()> {
    let bad = |why: &str| Err(Error::Userns { value: userns.to_string(), why: why.into() });
    if security.privileged {
        return bad("--privileged cannot be combined with --userns (it asks for root on the host); drop one of them");
    }
    if net == Net::Host {
        return bad("--net host cannot be combined with --userns (the host's network namespace is not the container's user namespace's); use --net none or bridge");
    }
    Ok(())
}

/// A range in use by this process's run: its lease file, flocked, removed on drop.
pub struct UsernsLease {
    range: IdRange,
    path: PathBuf,
    _lock: FileLock,
}

impl UsernsLease {
    /// Take a range in `dir` (a pool's `runs/` directory; created if missing): the first free
    /// `auto` range, or the given one unless a live lease overlaps it. Dead runs' leases found
    /// on the way are removed.
    pub fn acquire(dir: &Path, want: &Userns) -> Result<UsernsLease> {
        fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        let _alloc = FileLock::exclusive(&dir.join(ALLOC_LOCK))?;
        let live = live_leases(dir)?;
        let range = match *want {
            Userns::Range(r) => {
                r.validate()?;
                if let Some(o) = live.iter().find(|l| l.overlaps(r)) {
                    return Err(Error::Userns {
                        value: r.to_string(),
                        why: format!("another live run uses the range {o}; pick ids outside it, or --userns auto"),
                    });
                }
                r
            }
            Userns::Auto => (0..AUTO_SLOTS)
                .map(|i| IdRange { host: AUTO_FIRST + i * AUTO_COUNT, count: AUTO_COUNT })
                .find(|r| !live.iter().any(|l| l.overlaps(*r)))
                .ok_or_else(|| Error::Userns {
                    value: "auto".into(),
                    why: format!("all {AUTO_SLOTS} automatic ranges are in use; wait for a run to end, or give HOSTID:COUNT"),
                })?,
        };
        let path = dir.join(lease_name(range));
        let lock = FileLock::try_lock(&path, LockMode::Exclusive)?
            .ok_or_else(|| Error::Inconsistent(format!("{} is locked by another process", path.display())))?;
        Ok(UsernsLease { range, path, _lock: lock })
    }

    /// The range this lease holds.
    pub fn range(&self) -> IdRange {
        self.range
    }
}

impl std::fmt::Debug for UsernsLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsernsLease").field("range", &self.range).field("path", &self.path).finish()
    }
}

impl Drop for UsernsLease {
    /// Released with the run. The file goes first, while still locked: nobody else takes a
    /// lease without the allocation lock, and under it the name is gone.
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn lease_name(r: IdRange) -> String {
    format!("{LEASE_PREFIX}{}-{}{LEASE_SUFFIX}", r.host, r.count)
}

/// The range a lease file's name holds.
fn parse_lease_name(name: &str) -> Option<IdRange> {
    let (h, c) = name.strip_prefix(LEASE_PREFIX)?.strip_suffix(LEASE_SUFFIX)?.split_once('-')?;
    Some(IdRange { host: h.parse().ok()?, count: c.parse().ok()? })
}

/// Whether a directory entry's name is a lease's (`reap_dead_runs` looks for them).
pub(super) fn is_lease(name: &str) -> bool {
    parse_lease_name(name).is_some()
}

/// The ranges of live leases in `dir`; dead ones (lock free) are removed. Call with the
/// allocation lock held.
fn live_leases(dir: &Path) -> Result<Vec<IdRange>> {
    let mut live = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(live),
        Err(e) => return Err(e).ctx(|| format!("reading {}", dir.display())),
    };
    for e in entries.flatten() {
        let Some(range) = e.file_name().to_str().and_then(parse_lease_name) else { continue };
        match FileLock::try_lock_existing(&e.path(), LockMode::Exclusive) {
            Ok(Some(_dead)) => {
                tracing::info!(range = %range, "reclaiming the id range of a run whose rcx-dm died");
                let _ = fs::remove_file(e.path());
            }
            Ok(None) => live.push(range),
            Err(_) => {} // gone meanwhile: released
        }
    }
    Ok(live)
}

/// Remove the leases of dead runs in `dir` (from `reap_dead_runs`).
pub(super) fn reap_leases(dir: &Path) -> Result<()> {
    let _alloc = FileLock::exclusive(&dir.join(ALLOC_LOCK))?;
    live_leases(dir).map(|_| ())
}

/// rcx-dm's side, once the child exists and waits: container ids `0..count` are host ids
/// `host..`, for users and groups. rcx-dm is root in the parent namespace, so the kernel takes
/// the gid map without `setgroups` being denied first, and the container may call setgroups.
pub(super) fn write_maps(pid: Pid, r: IdRange) -> Result<()> {
    let line = format!("0 {} {}\n", r.host, r.count);
    for file in ["uid_map", "gid_map"] {
        let path = format!("/proc/{pid}/{file}");
        // One write(2): the kernel takes a map in a single write only.
        fs::write(&path, &line).ctx(|| format!("writing {path} ({})", line.trim_end()))?;
    }
    Ok(())
}

/// The child's user namespace, for the idmapped mount.
pub(super) fn open_userns(pid: Pid) -> Result<OwnedFd> {
    let path = format!("/proc/{pid}/ns/user");
    Ok(fs::File::open(&path).ctx(|| format!("opening {path}"))?.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        assert_eq!(parse_userns("auto").unwrap(), Userns::Auto);
        assert_eq!(parse_userns("200000:65536").unwrap(), Userns::Range(IdRange { host: 200000, count: 65536 }));
        assert_eq!(parse_userns("1:1").unwrap(), Userns::Range(IdRange { host: 1, count: 1 }));
        assert!(parse_userns("4294967294:1").is_ok());
        for (bad, why) in [
            ("", "use auto or HOSTID:COUNT"),
            ("Auto", "use auto or HOSTID:COUNT"),
            ("200000", "use auto or HOSTID:COUNT"),
            ("200000:", "use auto or HOSTID:COUNT"),
            (":65536", "use auto or HOSTID:COUNT"),
            ("-1:5", "use auto or HOSTID:COUNT"),
            ("1:2:3", "use auto or HOSTID:COUNT"),
            ("0x10:5", "use auto or HOSTID:COUNT"),
            ("200000:0", "at least 1"),
            ("0:65536", "uid 0"),
            ("4294967295:1", "past the highest id"),
            ("4294901760:65536", "past the highest id"),
            ("4294967296:1", "32-bit"),
            ("1:99999999999", "32-bit"),
        ] {
            let e = parse_userns(bad).expect_err(bad);
            assert!(matches!(e, Error::Userns { .. }), "{bad}: {e}");
            assert!(e.to_string().contains(why), "{bad}: expected {why:?} in {e}");
        }
    }

    #[test]
    fn overlaps() {
        let r = |host, count| IdRange { host, count };
        assert!(r(100, 10).overlaps(r(109, 1)));
        assert!(!r(100, 10).overlaps(r(110, 5)));
        assert!(r(100, 10).overlaps(r(50, 51)));
        assert!(!r(100, 10).overlaps(r(50, 50)));
        assert!(r(u32::MAX - 1, 1).overlaps(r(u32::MAX - 5, 10)));
    }

    #[test]
    fn auto_ranges_stay_below_the_foreign_range() {
        let last = AUTO_FIRST as u64 + AUTO_SLOTS as u64 * AUTO_COUNT as u64;
        assert_eq!(last, 0x7FFE_0000);
        assert!(last <= 1 << 31);
    }

    #[test]
    fn combinations() {
        let u = Userns::Auto;
        check_combination(&u, &Security::default(), Net::None).unwrap();
        check_combination(&u, &Security::default(), Net::Bridge).unwrap();
        let p = Security { privileged: true, ..Default::default() };
        assert!(check_combination(&u, &p, Net::None).unwrap_err().to_string().contains("--privileged"));
        assert!(check_combination(&u, &Security::default(), Net::Host).unwrap_err().to_string().contains("--net host"));
    }

    #[test]
    fn leases_are_disjoint_released_and_reclaimed() {
        let d = tempfile::tempdir().unwrap();
        let a = UsernsLease::acquire(d.path(), &Userns::Auto).unwrap();
        let b = UsernsLease::acquire(d.path(), &Userns::Auto).unwrap();
        assert_eq!(a.range(), IdRange { host: AUTO_FIRST, count: AUTO_COUNT });
        assert_eq!(b.range(), IdRange { host: AUTO_FIRST + AUTO_COUNT, count: AUTO_COUNT });
        // A given range overlapping a live one is refused; next to it, taken; auto skips it.
        let e = UsernsLease::acquire(d.path(), &Userns::Range(IdRange { host: AUTO_FIRST + 10, count: 1 })).unwrap_err();
        assert!(e.to_string().contains("another live run"), "{e}");
        let g = UsernsLease::acquire(d.path(), &Userns::Range(IdRange { host: AUTO_FIRST + 2 * AUTO_COUNT, count: 5 })).unwrap();
        let c = UsernsLease::acquire(d.path(), &Userns::Auto).unwrap();
        assert_eq!(c.range().host, AUTO_FIRST + 3 * AUTO_COUNT);
        drop((c, g));
        // Released: the first range is free again.
        drop(a);
        assert_eq!(UsernsLease::acquire(d.path(), &Userns::Auto).unwrap().range().host, AUTO_FIRST);
        // A dead run's lease (file left, lock free) is reclaimed by the reap and by allocation.
        std::mem::forget(b); // keeps its lock: still live
        let dead = d.path().join(lease_name(IdRange { host: 300000, count: 10 }));
        fs::write(&dead, "").unwrap();
        assert!(UsernsLease::acquire(d.path(), &Userns::Range(IdRange { host: 300005, count: 1 })).is_ok());
        assert!(!dead.exists());
        fs::write(&dead, "").unwrap();
        reap_leases(d.path()).unwrap();
        assert!(!dead.exists());
        assert!(d.path().join(lease_name(IdRange { host: AUTO_FIRST + AUTO_COUNT, count: AUTO_COUNT })).exists());
        assert!(is_lease(&lease_name(IdRange { host: 1, count: 2 })) && !is_lease("userns.lock") && !is_lease("vol-3.lock"));
    }
}
