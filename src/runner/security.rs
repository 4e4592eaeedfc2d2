//! What a container may do: its capabilities (runc's and Docker's default set, `--cap-add`,
//! `--cap-drop`, `--privileged`), `--security-opt` (`no-new-privileges`, `seccomp=...`), and the
//! child-side steps that enforce them: runc's masked and read-only paths under /proc and /sys,
//! cgroup2 mounted read-only at /sys/fs/cgroup, and the final lock-down before the command
//! (bounding set, ambient set, no_new_privs, seccomp, capset).
//!
//! Names are parsed and sets computed in the parent (`Security::plan`); the child only makes
//! system calls with what the plan holds.

use std::path::PathBuf;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

use super::seccomp::{SeccompFilter, SeccompProfile};
use super::step::{Fail, Step};
use crate::error::{Error, IoContext, Result};

/// The capabilities by number, as the kernel's `linux/capability.h` numbers them.
const CAP_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The same names with the `CAP_` prefix, as seccomp profiles' `includes.caps` spell them.
const CAP_FULL_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// runc's and Docker's default set.
const DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// One `--cap-add` / `--cap-drop` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Capability {
    /// `ALL`.
    All,
    /// One capability, by its kernel number.
    Cap(u8),
}

/// A capability name as Docker takes it: `NET_ADMIN`, `CAP_NET_ADMIN`, any case, or `ALL`.
pub fn parse_capability(text: &str) -> Result<Capability> {
    let up = text.trim().to_ascii_uppercase();
    let bare = up.strip_prefix("CAP_").unwrap_or(&up);
    if bare == "ALL" {
        return Ok(Capability::All);
    }
    CAP_NAMES
        .iter()
        .position(|n| *n == bare)
        .map(|i| Capability::Cap(i as u8))
        .ok_or_else(|| Error::UnknownCapability { name: text.to_string() })
}

/// A set of capabilities, bit n for capability n.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapSet(pub u64);

impl CapSet {
    /// runc's and Docker's default set.
    pub fn default_set() -> CapSet {
        let mut s = CapSet(0);
        for n in DEFAULT_CAPS {
            if let Ok(Capability::Cap(c)) = parse_capability(n) {
                s.0 |= 1 << c;
            }
        }
        s
    }

    /// Every capability up to `last_cap` (the kernel's `/proc/sys/kernel/cap_last_cap`).
    pub fn all(last_cap: u32) -> CapSet {
        CapSet(if last_cap >= 63 { u64::MAX } else { (1u64 << (last_cap + 1)) - 1 })
    }

    /// Whether capability `cap` is in the set.
    pub fn contains(self, cap: u8) -> bool {
        cap < 64 && self.0 & (1 << cap) != 0
    }

    /// The names (`CAP_CHOWN`, ...) of the capabilities in the set that this build knows.
    pub fn names(self) -> Vec<&'static str> {
        (0..CAP_FULL_NAMES.len()).filter(|c| self.contains(*c as u8)).map(|c| CAP_FULL_NAMES[c]).collect()
    }

    /// The set as capset(2)'s two 32-bit words.
    fn words(self) -> [u32; 2] {
        [self.0 as u32, (self.0 >> 32) as u32]
    }
}

/// The container's capabilities, as Docker computes them: everything with `privileged`;
/// otherwise `--cap-add ALL` gives all but the dropped ones, `--cap-drop ALL` only the added
/// ones, and else the default set without the dropped, plus the added. Limited to what the
/// kernel has (`last_cap`).
pub fn capability_set(privileged: bool, add: &[Capability], drop: &[Capability], last_cap: u32) -> CapSet {
    let all = CapSet::all(last_cap);
    let bits = |l: &[Capability]| l.iter().fold(0u64, |a, c| a | if let Capability::Cap(n) = c { 1 << n } else { 0 });
    let set = if privileged {
        all.0
    } else if add.contains(&Capability::All) {
        all.0 & !bits(drop)
    } else if drop.contains(&Capability::All) {
        bits(add)
    } else {
        (CapSet::default_set().0 & !bits(drop)) | bits(add)
    };
    CapSet(set & all.0)
}

/// The kernel's highest capability number, from `/proc/sys/kernel/cap_last_cap`.
pub(super) fn last_cap() -> Result<u32> {
    let p = "/proc/sys/kernel/cap_last_cap";
    let t = std::fs::read_to_string(p).ctx(|| format!("reading {p}"))?;
    t.trim().parse().map_err(|_| Error::invalid("kernel capability count", format!("{p} holds '{}'", t.trim())))
}

/// rcx-dm's own permitted set (capget).
fn own_permitted() -> Result<CapSet> {
    let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: capget writes one header and two data structs, the v3 layout.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "reading rcx-dm's own capabilities (capget)".into());
    }
    Ok(CapSet(data[0].permitted as u64 | (data[1].permitted as u64) << 32))
}

/// One `--security-opt` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityOpt {
    /// `no-new-privileges` (or `=true` / `=false`).
    NoNewPrivileges(bool),
    /// `seccomp=unconfined` or `seccomp=PROFILE.json`.
    Seccomp(SeccompProfile),
}

/// `--security-opt` as Docker takes it: `no-new-privileges[=true|false]`, `seccomp=unconfined`,
/// `seccomp=PROFILE.json` (the older `KEY:VALUE` form too).
pub fn parse_security_opt(text: &str) -> Result<SecurityOpt> {
    let bad = |why: &str| Error::SecurityOpt { opt: text.to_string(), why: why.to_string() };
    let (key, value) = match text.split_once('=').or_else(|| text.split_once(':')) {
        Some((k, v)) => (k, Some(v)),
        None => (text, None),
    };
    match (key, value) {
        ("no-new-privileges", None) => Ok(SecurityOpt::NoNewPrivileges(true)),
        ("no-new-privileges", Some(v)) => match v {
            "true" => Ok(SecurityOpt::NoNewPrivileges(true)),
            "false" => Ok(SecurityOpt::NoNewPrivileges(false)),
            _ => Err(bad("no-new-privileges takes true or false (or no value)")),
        },
        ("seccomp", Some("unconfined")) => Ok(SecurityOpt::Seccomp(SeccompProfile::Unconfined)),
        ("seccomp", Some(v)) if !v.is_empty() && !v.contains('\0') => {
            Ok(SecurityOpt::Seccomp(SeccompProfile::File(PathBuf::from(v))))
        }
        ("seccomp", _) => Err(bad("use seccomp=unconfined or seccomp=PROFILE.json (a profile in Docker's format)")),
        ("apparmor" | "label" | "systempaths" | "mask" | "unmask", _) => {
            Err(bad("rcx-dm does not support this option; it supports no-new-privileges and seccomp=..."))
        }
        _ => Err(bad("unknown option; rcx-dm supports no-new-privileges[=true|false] and seccomp=unconfined|PROFILE.json")),
    }
}

/// The container's security settings, as a run asks for them (kept in a detached container's
/// record, for `exec`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Security {
    /// `--privileged`: every capability, no seccomp, no masked paths, /proc/sys and /sys
    /// writable.
    pub privileged: bool,
    /// `--cap-add`, in order.
    pub cap_add: Vec<Capability>,
    /// `--cap-drop`, in order.
    pub cap_drop: Vec<Capability>,
    /// `--security-opt no-new-privileges`: setuid and file capabilities grant nothing.
    pub no_new_privileges: bool,
    /// `--security-opt seccomp=...` (Docker's default profile unless given).
    pub seccomp: SeccompProfile,
}

impl Security {
    /// Fold `--security-opt` values in, later ones winning.
    pub fn apply_opts(&mut self, opts: &[SecurityOpt]) {
        for o in opts {
            match o {
                SecurityOpt::NoNewPrivileges(b) => self.no_new_privileges = *b,
                SecurityOpt::Seccomp(p) => self.seccomp = p.clone(),
            }
        }
    }

    /// The seccomp profile in force: none under `--privileged` unless one was given explicitly
    /// (as Docker).
    pub fn effective_seccomp(&self) -> SeccompProfile {
        match (&self.seccomp, self.privileged) {
            (SeccompProfile::Default, true) => SeccompProfile::Unconfined,
            (p, _) => p.clone(),
        }
    }

    /// Refuse settings that cannot work, before anything is created: a seccomp profile that is
    /// not a file.
    pub fn validate(&self) -> Result<()> {
        if let SeccompProfile::File(p) = &self.seccomp {
            if !p.is_file() {
                return Err(Error::SecurityOpt {
                    opt: format!("seccomp={}", p.display()),
                    why: "no such file; give the path of a seccomp profile in Docker's JSON format".into(),
                });
            }
        }
        Ok(())
    }

    /// What the child needs (computed here, in the parent). The container gets no capability
    /// rcx-dm itself lacks (capset would refuse it): `--privileged` under a restricted rcx-dm
    /// is as much as rcx-dm has.
    pub(super) fn plan(&self) -> Result<SecurityPlan> {
        let last_cap = last_cap()?;
        let caps = CapSet(capability_set(self.privileged, &self.cap_add, &self.cap_drop, last_cap).0 & own_permitted()?.0);
        // Compiled here, in the parent: the profile's capability conditions are judged against
        // the set the container will hold.
        let seccomp = SeccompFilter::compile(&self.effective_seccomp(), &caps.names())?;
        Ok(SecurityPlan {
            caps,
            seccomp,
            last_cap,
            no_new_privileges: self.no_new_privileges,
            privileged: self.privileged,
        })
    }
}

/// The child's share of `Security`, computed before the clone.
#[derive(Debug)]
pub(super) struct SecurityPlan {
    /// Kept in the bounding, permitted, effective and inheritable sets.
    pub(super) caps: CapSet,
    /// The compiled seccomp filter; None when unconfined.
    seccomp: Option<SeccompFilter>,
    /// The kernel's highest capability number: the bounding set is dropped up to it.
    last_cap: u32,
    no_new_privileges: bool,
    /// No masked paths, /proc/sys, /sys and /sys/fs/cgroup writable.
    pub(super) privileged: bool,
}

/// runc's masked paths: nothing to read in them.
const MASKED: [&str; 10] = [
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// runc's read-only paths: readable, not writable.
const READ_ONLY: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// After /proc and /sys are mounted in the container: mask and write-protect runc's paths
/// (not under `--privileged`), and mount cgroup2 at /sys/fs/cgroup, read-only unless privileged.
/// Paths the kernel lacks are skipped.
pub(super) fn protect_proc_sys(plan: &SecurityPlan) -> Step<()> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if !plan.privileged {
        for path in MASKED {
            // /dev/null over a file; over a directory that fails with ENOTDIR, and an empty
            // read-only tmpfs goes there instead.
            match mount(Some("/dev/null"), path, None::<&str>, MsFlags::MS_BIND, None::<&str>) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(Errno::ENOTDIR) => mount(Some("tmpfs"), path, Some("tmpfs"), MsFlags::MS_RDONLY | nosuid_nodev_noexec, None::<&str>)
                    .map_err(|e| Fail::new(format!("masking {path}"), e))?,
                Err(e) => return Err(Fail::new(format!("masking {path}"), e)),
            }
        }
        for path in READ_ONLY {
            match mount(Some(path), path, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>) {
                Ok(()) => {}
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(Fail::new(format!("bind-mounting {path} to make it read-only"), e)),
            }
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nosuid_nodev_noexec;
            mount(None::<&str>, path, None::<&str>, flags, None::<&str>)
                .map_err(|e| Fail::new(format!("making {path} read-only"), e))?;
        }
    }
    let mut flags = nosuid_nodev_noexec | MsFlags::MS_RELATIME;
    if !plan.privileged {
        flags |= MsFlags::MS_RDONLY;
    }
    // The container's cgroup namespace makes its own group the root of this mount; read-only,
    // so it can neither move out of it nor change its limits.
    match mount(Some("cgroup"), "/sys/fs/cgroup", Some("cgroup2"), flags, None::<&str>) {
        // A host without cgroup v2 (or a sysfs without the directory): nothing to show.
        Ok(()) | Err(Errno::ENODEV) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(Fail::new("mounting cgroup2 on /sys/fs/cgroup", e)),
    }
}

/// The kernel's capset(2) header and data (version 3: two 32-bit words per set).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The last steps of the container's setup, after the last one that needs CAP_SYS_ADMIN (mounts,
/// pivot_root, hostname, network) and before `--init` forks: drop the bounding set to the kept
/// capabilities, clear the ambient set, set no_new_privs if asked, install the seccomp filter,
/// then set the effective, permitted and inheritable sets. System calls only, no allocation.
pub(super) fn lock_down(plan: &SecurityPlan) -> Step<()> {
    for cap in 0..=plan.last_cap.min(63) {
        if plan.caps.contains(cap as u8) {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            let e = Errno::last();
            // EINVAL: a capability this kernel does not have.
            if e != Errno::EINVAL {
                return Err(Fail::new("dropping capabilities from the bounding set", e));
            }
        }
    }
    // SAFETY: as above.
    if unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) } != 0 {
        let e = Errno::last();
        // EINVAL: a kernel without ambient capabilities (before 4.3) has none to clear.
        if e != Errno::EINVAL {
            return Err(Fail::new("clearing the ambient capabilities", e));
        }
    }
    if plan.no_new_privileges {
        // SAFETY: as above.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) } != 0 {
            return Err(Fail::new("setting no_new_privs", Errno::last()));
        }
    }
    // Before capset: once CAP_SYS_ADMIN is gone, installing a filter needs no_new_privs, which
    // is off by default (runc orders it the same way). What runs after it (capset, --init's
    // fork/sigwaitinfo/kill/wait4, the signal resets, close_range, execve) the default profile
    // allows.
    if let Some(f) = &plan.seccomp {
        f.install().map_err(|e| Fail::new("installing the seccomp filter", e))?;
    }
    let words = plan.caps.words();
    let data = [0, 1].map(|i| CapData { effective: words[i], permitted: words[i], inheritable: words[i] });
    let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    // SAFETY: capset reads one header and two data structs, the v3 layout.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) } != 0 {
        return Err(Fail::new("setting the container's capabilities (capset)", Errno::last()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names() {
        assert_eq!(parse_capability("CHOWN").unwrap(), Capability::Cap(0));
        assert_eq!(parse_capability("cap_sys_admin").unwrap(), Capability::Cap(21));
        assert_eq!(parse_capability("Net_Admin").unwrap(), Capability::Cap(12));
        assert_eq!(parse_capability("CAP_CHECKPOINT_RESTORE").unwrap(), Capability::Cap(40));
        assert_eq!(parse_capability("all").unwrap(), Capability::All);
        assert_eq!(parse_capability("CAP_ALL").unwrap(), Capability::All);
        for bad in ["", "CAP_", "SYS_ADMINS", "NET ADMIN", "21"] {
            let e = parse_capability(bad).expect_err(bad);
            assert!(matches!(e, Error::UnknownCapability { .. }), "{e}");
        }
        assert!(parse_capability("FOO").unwrap_err().to_string().contains("unknown capability 'FOO'"));
        for (i, n) in CAP_NAMES.iter().enumerate() {
            assert_eq!(CAP_FULL_NAMES[i], format!("CAP_{n}"));
        }
    }

    #[test]
    fn default_set_is_dockers() {
        // Docker's and runc's CapBnd in /proc/self/status.
        assert_eq!(CapSet::default_set().0, 0xa804_25fb);
        assert_eq!(CapSet::default_set().names().len(), 14);
        assert!(CapSet::default_set().names().contains(&"CAP_NET_BIND_SERVICE"));
        assert_eq!(CapSet::all(40).0, 0x1ff_ffff_ffff);
        assert_eq!(CapSet::all(63).0, u64::MAX);
    }

    #[test]
    fn sets_follow_dockers_rules() {
        let c = |s: &str| parse_capability(s).unwrap();
        let d = CapSet::default_set().0;
        assert_eq!(capability_set(false, &[], &[], 40).0, d);
        assert_eq!(capability_set(false, &[c("SYS_ADMIN")], &[], 40).0, d | 1 << 21);
        assert_eq!(capability_set(false, &[], &[c("CHOWN")], 40).0, d & !1);
        assert_eq!(capability_set(true, &[], &[c("CHOWN")], 40), CapSet::all(40));
        assert_eq!(capability_set(false, &[c("ALL")], &[c("SYS_ADMIN")], 40).0, CapSet::all(40).0 & !(1 << 21));
        assert_eq!(capability_set(false, &[c("NET_RAW")], &[c("ALL")], 40).0, 1 << 13);
        // Added and dropped: the add wins, as Docker's.
        assert_eq!(capability_set(false, &[c("SYS_ADMIN")], &[c("SYS_ADMIN")], 40).0, d | 1 << 21);
        // A capability the kernel lacks is left out.
        assert_eq!(capability_set(false, &[c("CHECKPOINT_RESTORE")], &[], 39).0, d);
    }

    #[test]
    fn security_opts() {
        assert_eq!(parse_security_opt("no-new-privileges").unwrap(), SecurityOpt::NoNewPrivileges(true));
        assert_eq!(parse_security_opt("no-new-privileges=false").unwrap(), SecurityOpt::NoNewPrivileges(false));
        assert_eq!(parse_security_opt("no-new-privileges:true").unwrap(), SecurityOpt::NoNewPrivileges(true));
        assert_eq!(parse_security_opt("seccomp=unconfined").unwrap(), SecurityOpt::Seccomp(SeccompProfile::Unconfined));
        assert_eq!(
            parse_security_opt("seccomp=/etc/p.json").unwrap(),
            SecurityOpt::Seccomp(SeccompProfile::File("/etc/p.json".into()))
        );
        for bad in ["seccomp", "seccomp=", "no-new-privileges=yes", "apparmor=unconfined", "label=disable", "foo", "", "=x"] {
            let e = parse_security_opt(bad).expect_err(bad);
            assert!(matches!(e, Error::SecurityOpt { .. }), "{bad}: {e}");
        }
        let mut s = Security::default();
        s.apply_opts(&[SecurityOpt::NoNewPrivileges(true), SecurityOpt::Seccomp(SeccompProfile::Unconfined)]);
        assert!(s.no_new_privileges);
        assert_eq!(s.effective_seccomp(), SeccompProfile::Unconfined);
        assert_eq!(Security { privileged: true, ..Default::default() }.effective_seccomp(), SeccompProfile::Unconfined);
        assert_eq!(Security::default().effective_seccomp(), SeccompProfile::Default);
        let missing = Security { seccomp: SeccompProfile::File("/nonexistent/p.json".into()), ..Default::default() };
        assert!(missing.validate().unwrap_err().to_string().contains("no such file"));
    }
}
