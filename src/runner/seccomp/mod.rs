//! seccomp for `rcx-dm run`: Docker's default profile unless told otherwise, Docker-format
//! profiles from a file (`--security-opt seccomp=FILE`), or none (`seccomp=unconfined`).
//!
//! The parent reads and resolves the profile for the container's capabilities and compiles it
//! to BPF ([`SeccompFilter::compile`]); the child only hands the finished programs to the kernel
//! ([`SeccompFilter::install`]), which allocates nothing.
//!
//! seccompiler builds a filter with one action on a match and one on a mismatch, while a
//! profile can give different syscalls different actions. So a profile becomes a small stack of
//! filters, combined by the kernel (the most restrictive result wins, ALLOW the least):
//! - the base filter: every syscall any entry names (under that entry's conditions) is ALLOW,
//!   the rest gets the default action;
//! - one filter per other action X (e.g. ERRNO(ENOSYS) for clone3): its syscalls get X, the
//!   rest ALLOW.
//!
//! A syscall an entry matches thus gets that entry's action, any other the default. The
//! kernel's per-filter cache makes syscalls a filter always allows cost nothing at run time.
//!
//! What this does not do as Docker does: only x86_64 is filtered. A 32-bit (x86) syscall is
//! killed by the architecture check; x32 syscalls get ENOSYS even under a permissive default
//! (the x32 guard below), since they could otherwise slip past rules keyed on x86_64 numbers.

// Until the runner calls compile (parent) and install (child), only the tests use this module;
// drop this line with that wiring.

mod profile;
mod syscalls;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::path::PathBuf;

use seccompiler::{BpfProgram, SeccompAction, TargetArch};

use self::profile::{add, DockerProfile, Resolved, Rules, Target};
use crate::error::{Errno, Error, Result};

/// Docker's default profile semantics, in Docker's format.
const DEFAULT_PROFILE: &str = include_str!("default.json");

/// Set on x32 syscall numbers; x32 numbers run from 0 to 547 with it.
const X32_SYSCALL_BIT: i64 = 0x4000_0000;
const X32_LAST: i64 = 547;

/// Which seccomp filter a container gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SeccompProfile {
    /// The embedded default: Docker's default profile semantics (an allowlist; kexec, module
    /// loading, bpf, perf_event_open, keyctl, open_by_handle_at, userfaultfd, mount and new
    /// namespaces without CAP_SYS_ADMIN, ... refused with EPERM).
    #[default]
    Default,
    /// No filter (`--security-opt seccomp=unconfined`).
    Unconfined,
    /// A profile in Docker's JSON format (`--security-opt seccomp=FILE`).
    File(PathBuf),
}

impl SeccompProfile {
    /// The profile a `--security-opt seccomp=VALUE` names: `unconfined`, or a profile's path.
    pub fn from_option(value: &str) -> Result<Self> {
        match value {
            "" => Err(Error::invalid("--security-opt seccomp", "give a profile's path or 'unconfined'")),
            "unconfined" => Ok(Self::Unconfined),
            path => Ok(Self::File(PathBuf::from(path))),
        }
    }
}

/// A profile compiled for one container: BPF programs ready for `seccomp(2)`.
#[derive(Debug)]
pub(crate) struct SeccompFilter {
    /// Installed in this order; the one that may refuse `seccomp(2)` itself is last.
    programs: Vec<BpfProgram>,
    /// `SECCOMP_FILTER_FLAG_*` the profile asks for.
    flags: libc::c_ulong,
}

impl SeccompFilter {
    /// Read, resolve and compile `profile` for a container whose effective capabilities are
    /// `effective_caps` (`CAP_*` names; the prefix and case do not matter). `None` for
    /// [`SeccompProfile::Unconfined`]. Runs in the parent, before the clone.
    pub(crate) fn compile(profile: &SeccompProfile, effective_caps: &[&str]) -> Result<Option<SeccompFilter>> {
        let (name, text) = match profile {
            SeccompProfile::Unconfined => return Ok(None),
            SeccompProfile::Default => ("built-in default".to_string(), Cow::Borrowed(DEFAULT_PROFILE)),
            SeccompProfile::File(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::SeccompProfile { profile: name.clone(), why: format!("cannot read it: {e}") })?;
                (name, Cow::Owned(text))
            }
        };
        let err = |why: String| Error::SeccompProfile { profile: name.clone(), why };
        if !cfg!(target_arch = "x86_64") {
            return Err(err(format!(
                "rcx-dm enforces seccomp profiles on x86_64 hosts only, and this one is {}",
                std::env::consts::ARCH
            )));
        }
        let parsed: DockerProfile = serde_json::from_str(&text)
            .map_err(|e| err(format!("not a Docker seccomp profile (JSON): {e}")))?;
        let kernel = running_kernel().map_err(&err)?;
        let resolved = parsed.resolve(&Target { caps: effective_caps, kernel }).map_err(&err)?;
        let flags = resolved.flags;
        let programs = build(resolved).map_err(err)?;
        Ok(Some(SeccompFilter { programs, flags }))
    }

    /// Install the filter on the calling thread (the container's process, last before execve).
    /// Async-signal-safe: no allocation, only `seccomp(2)` calls with the compiled programs.
    ///
    /// The kernel accepts a filter only from a task that has `no_new_privs` set or
    /// CAP_SYS_ADMIN in its user namespace: without no-new-privileges, install before the
    /// capabilities are dropped (as runc does; the filter then applies to the steps after it,
    /// which the default profile allows: capset, prctl, setgroups, setresuid, execve).
    pub(crate) fn install(&self) -> Result<(), Errno> {
        for prog in &self.programs {
            let fprog = libc::sock_fprog {
                len: prog.len() as libc::c_ushort,
                // seccompiler's sock_filter is repr(C) with libc's layout; the kernel only reads it.
                filter: prog.as_ptr() as *mut libc::sock_filter,
            };
            // SAFETY: `fprog` points at a live program for the duration of the call; the kernel
            // copies it.
            let rc = unsafe {
                libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, self.flags, &fprog as *const _)
            };
            if rc < 0 {
                return Err(Errno::last());
            }
            if rc > 0 {
                // TSYNC names a thread that could not be synchronised; the child has no others.
                return Err(Errno::EBUSY);
            }
        }
        Ok(())
    }
}

/// The running kernel's (major, minor), for `minKernel`.
fn running_kernel() -> std::result::Result<(u32, u32), String> {
    // SAFETY: utsname is plain data; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut uts) } != 0 {
        return Err(format!("cannot read the kernel version: {}", Errno::last()));
    }
    // SAFETY: the kernel NUL-terminates release.
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) };
    profile::kernel_version(&release.to_string_lossy())
}

/// The filters for a resolved profile, in installation order.
fn build(r: Resolved) -> std::result::Result<Vec<BpfProgram>, String> {
    let filter = |rules: Rules, mismatch: SeccompAction, on_match: SeccompAction| {
        seccompiler::SeccompFilter::new(rules, mismatch, on_match, TargetArch::x86_64)
            .and_then(BpfProgram::try_from)
            .map_err(|e| format!("cannot compile it: {e}"))
    };
    let seccomp_nr = libc::SYS_seccomp;
    // (whether the filter always lets seccomp(2) through, its program)
    let mut filters: Vec<(bool, BpfProgram)> = Vec::new();
    if r.default != SeccompAction::Allow {
        let mut all = Rules::new();
        for (nr, rules) in r.groups.iter().flat_map(|(_, rules)| rules) {
            add(&mut all, *nr, rules);
        }
        let free = all.get(&seccomp_nr).is_some_and(Vec::is_empty);
        filters.push((free, filter(all, r.default.clone(), SeccompAction::Allow)?));
    }
    if matches!(r.default, SeccompAction::Allow | SeccompAction::Log) {
        let x32: Rules = (0..=X32_LAST).map(|n| (X32_SYSCALL_BIT | n, Vec::new())).collect();
        filters.push((true, filter(x32, SeccompAction::Allow, SeccompAction::Errno(libc::ENOSYS as u32))?));
    }
    for (action, rules) in r.groups {
        if action != SeccompAction::Allow {
            let free = !rules.contains_key(&seccomp_nr);
            filters.push((free, filter(rules, SeccompAction::Allow, action)?));
        }
    }
    // Each filter installed restricts the seccomp(2) calls that install the next ones.
    if filters.iter().filter(|(free, _)| !free).count() > 1 {
        return Err("it restricts seccomp(2) itself under more than one action, and rcx-dm installs a profile \
                    as one filter per action; give seccomp one action"
            .into());
    }
    filters.sort_by_key(|(free, _)| !free);
    Ok(filters.into_iter().map(|(_, p)| p).collect())
}
