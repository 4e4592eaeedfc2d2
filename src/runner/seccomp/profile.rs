//! Docker's seccomp profile format, and its resolution against one container: which entries
//! apply (`includes` / `excludes` by capability, architecture and kernel), what number each
//! name is on this architecture, and which rule each action gets.
//!
//! The semantics are those of moby's profile loader and runc's filter setup: a capability
//! `includes` needs every cap listed, an `excludes` drops the entry if any listed cap is held;
//! names the architecture does not have are skipped; an entry whose action is the default one
//! adds nothing; args on distinct indexes are ANDed into one rule, args that repeat an index
//! are separate rules (ORed), as runc does because libseccomp cannot AND two conditions on one
//! argument.

use std::collections::BTreeMap;

use seccompiler::{SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
use serde::{Deserialize, Deserializer};

use super::syscalls;

/// A profile as Docker writes it. Unknown fields (`comment`, `listenerPath`, ...) are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DockerProfile {
    default_action: String,
    #[serde(default, deserialize_with = "nullable")]
    default_errno_ret: Option<u32>,
    #[serde(default, deserialize_with = "nullable")]
    architectures: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    arch_map: Vec<ArchMap>,
    #[serde(default, deserialize_with = "nullable")]
    flags: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    syscalls: Vec<Syscall>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
    #[serde(default, deserialize_with = "nullable")]
    sub_architectures: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Syscall {
    #[serde(default, deserialize_with = "nullable")]
    names: Vec<String>,
    /// The single-name form of Docker's older profiles.
    #[serde(default, deserialize_with = "nullable")]
    name: Option<String>,
    action: String,
    #[serde(default, deserialize_with = "nullable")]
    errno_ret: Option<u32>,
    #[serde(default, deserialize_with = "nullable")]
    args: Vec<Arg>,
    #[serde(default, deserialize_with = "nullable")]
    includes: Filter,
    #[serde(default, deserialize_with = "nullable")]
    excludes: Filter,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Arg {
    index: u32,
    value: u64,
    #[serde(default, deserialize_with = "nullable")]
    value_two: u64,
    op: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default, deserialize_with = "nullable")]
    caps: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    arches: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    min_kernel: Option<String>,
}

/// Generated profiles write `null` for an empty list or object; read it as the default.
fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Who the filter is for: the container's effective capabilities and the host kernel.
pub(super) struct Target<'a> {
    /// Capability names as given (`CAP_SYS_ADMIN` or `SYS_ADMIN`, any case).
    pub caps: &'a [&'a str],
    /// The running kernel's (major, minor), for `minKernel`.
    pub kernel: (u32, u32),
}

/// Per syscall number, the rules under which an action applies; an empty list means always.
pub(super) type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// A profile resolved for one target: what each syscall gets.
#[derive(Debug)]
pub(super) struct Resolved {
    /// What a syscall no entry matches gets.
    pub default: SeccompAction,
    /// Every action other than the default, with the syscalls (and conditions) that get it;
    /// in the profile's order of first use.
    pub groups: Vec<(SeccompAction, Rules)>,
    /// The `SECCOMP_FILTER_FLAG_*` bits the profile asks for.
    pub flags: libc::c_ulong,
}

/// The seccomp architecture token and Go architecture name of this host, as profiles spell
/// them. Only x86_64 has a syscall table here; elsewhere `compile` refuses before this is used.
const NATIVE_ARCH: &str = "SCMP_ARCH_X86_64";
const NATIVE_GOARCH: &[&str] = &["amd64", "x86_64"];

impl DockerProfile {
    /// Resolve for `target`. `Err` is the reason, without the profile's name (the caller adds it).
    pub(super) fn resolve(&self, target: &Target) -> Result<Resolved, String> {
        self.check_architectures()?;
        let default = action(&self.default_action, self.default_errno_ret)
            .map_err(|e| format!("defaultAction: {e}"))?;
        let flags = self.flags.iter().try_fold(0, |acc, f| Ok::<_, String>(acc | flag(f)?))?;
        let mut groups: Vec<(SeccompAction, Rules)> = Vec::new();
        for (i, sc) in self.syscalls.iter().enumerate() {
            let names: Vec<&str> = sc.names.iter().chain(sc.name.as_ref()).map(String::as_str).collect();
            let entry = || format!("syscalls[{i}] ({})", names.join(", "));
            let act = action(&sc.action, sc.errno_ret).map_err(|e| format!("{}: {e}", entry()))?;
            let rules = rules(&sc.args).map_err(|e| format!("{}: {e}", entry()))?;
            if !applies(sc, target).map_err(|e| format!("{}: {e}", entry()))? {
                continue;
            }
            // runc skips these too: they cannot change what the default already does.
            if act == default {
                tracing::debug!("seccomp: {} has the default action; nothing to add", entry());
                continue;
            }
            let pos = match groups.iter().position(|(a, _)| *a == act) {
                Some(p) => p,
                None => {
                    groups.push((act, Rules::new()));
                    groups.len() - 1
                }
            };
            for name in &names {
                match syscalls::number(name) {
                    Some(nr) => add(&mut groups[pos].1, nr, &rules),
                    // Docker skips names the architecture lacks (32-bit or other-arch calls).
                    None => tracing::debug!("seccomp: no syscall '{name}' on x86_64; {} skips it", entry()),
                }
            }
        }
        groups.retain(|(_, r)| !r.is_empty());
        Ok(Resolved { default, groups, flags })
    }

    /// The profile must cover this host's architecture: listed in `architectures`, or as an
    /// `archMap` entry; neither list means native only, as with libseccomp.
    fn check_architectures(&self) -> Result<(), String> {
        let mut listed: Vec<&str> = self.architectures.iter().map(String::as_str).collect();
        if listed.is_empty() {
            listed = self.arch_map.iter().map(|m| m.architecture.as_str()).collect();
        }
        if !listed.is_empty() && !listed.contains(&NATIVE_ARCH) {
            return Err(format!(
                "it is for architectures {} but not {NATIVE_ARCH}, which this host is",
                listed.join(", ")
            ));
        }
        // The 32-bit ABIs (x86, x32) cannot be given their own rules here; their syscalls are
        // refused whatever the profile says (see SeccompFilter).
        let subs = self.arch_map.iter().filter(|m| m.architecture == NATIVE_ARCH);
        if subs.flat_map(|m| &m.sub_architectures).next().is_some() {
            tracing::debug!("seccomp: 32-bit sub-architectures of x86_64 are refused, not filtered");
        }
        Ok(())
    }
}

/// Whether an entry's `includes` and `excludes` let it apply to `target`.
fn applies(sc: &Syscall, target: &Target) -> Result<bool, String> {
    let has = |cap: &String| target.caps.iter().any(|c| cap_eq(c, cap));
    let native = |arch: &String| NATIVE_GOARCH.contains(&arch.as_str());
    let (inc, exc) = (&sc.includes, &sc.excludes);
    // Parsed first so that a bad version is an error even where the entry does not apply.
    let exc_kernel = exc.min_kernel.as_deref().map(kernel_version).transpose()?;
    let inc_kernel = inc.min_kernel.as_deref().map(kernel_version).transpose()?;
    if exc.arches.iter().any(native) || (!inc.arches.is_empty() && !inc.arches.iter().any(native)) {
        return Ok(false);
    }
    if exc.caps.iter().any(has) || !inc.caps.iter().all(has) {
        return Ok(false);
    }
    if exc_kernel.is_some_and(|k| target.kernel >= k) || inc_kernel.is_some_and(|k| target.kernel < k) {
        return Ok(false);
    }
    Ok(true)
}

/// Capability names compared as Docker spells them, with or without the `CAP_` prefix.
fn cap_eq(a: &str, b: &str) -> bool {
    let strip = |s: &str| {
        let s = s.trim();
        if s.len() >= 4 && s[..4].eq_ignore_ascii_case("CAP_") { s[4..].to_string() } else { s.to_string() }
    };
    strip(a).eq_ignore_ascii_case(&strip(b))
}

/// `"4.8"` (or a full release such as `"5.15.0-91-generic"`) as (major, minor).
pub(super) fn kernel_version(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("minKernel '{s}' is not a kernel version such as \"4.8\"");
    let mut parts = s.trim().splitn(3, '.');
    let major = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let minor_part = parts.next().ok_or_else(bad)?;
    let digits: String = minor_part.chars().take_while(|c| c.is_ascii_digit()).collect();
    let minor = digits.parse().map_err(|_| bad())?;
    Ok((major, minor))
}

/// A Docker action name with its errno (EPERM when none is given, as in Docker).
fn action(name: &str, errno: Option<u32>) -> Result<SeccompAction, String> {
    let errno = errno.unwrap_or(libc::EPERM as u32);
    Ok(match name {
        "SCMP_ACT_ALLOW" => SeccompAction::Allow,
        "SCMP_ACT_ERRNO" => SeccompAction::Errno(errno),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => SeccompAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompAction::KillProcess,
        "SCMP_ACT_TRAP" => SeccompAction::Trap,
        "SCMP_ACT_TRACE" => SeccompAction::Trace(errno),
        "SCMP_ACT_LOG" => SeccompAction::Log,
        "SCMP_ACT_NOTIFY" => {
            return Err("SCMP_ACT_NOTIFY needs a seccomp agent, which rcx-dm does not run".into())
        }
        other => {
            return Err(format!(
                "unknown action '{other}' (known: SCMP_ACT_ALLOW, SCMP_ACT_ERRNO, SCMP_ACT_KILL, \
                 SCMP_ACT_KILL_THREAD, SCMP_ACT_KILL_PROCESS, SCMP_ACT_TRAP, SCMP_ACT_TRACE, SCMP_ACT_LOG)"
            ))
        }
    })
}

/// A profile's `flags` entry as a `seccomp(2)` flag.
fn flag(name: &str) -> Result<libc::c_ulong, String> {
    match name {
        "SECCOMP_FILTER_FLAG_TSYNC" => Ok(libc::SECCOMP_FILTER_FLAG_TSYNC),
        "SECCOMP_FILTER_FLAG_LOG" => Ok(libc::SECCOMP_FILTER_FLAG_LOG),
        "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => Ok(libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW),
        other => Err(format!(
            "unknown flag '{other}' (known: SECCOMP_FILTER_FLAG_TSYNC, SECCOMP_FILTER_FLAG_LOG, \
             SECCOMP_FILTER_FLAG_SPEC_ALLOW)"
        )),
    }
}

/// An entry's `args` as seccompiler rules: none = unconditional (an empty list).
fn rules(args: &[Arg]) -> Result<Vec<SeccompRule>, String> {
    let conds = args.iter().map(condition).collect::<Result<Vec<_>, _>>()?;
    if conds.is_empty() {
        return Ok(Vec::new());
    }
    let repeats = args.iter().enumerate().any(|(i, a)| args[..i].iter().any(|b| b.index == a.index));
    let rule = |c: Vec<SeccompCondition>| SeccompRule::new(c).map_err(|e| e.to_string());
    if repeats {
        conds.into_iter().map(|c| rule(vec![c])).collect()
    } else {
        Ok(vec![rule(conds)?])
    }
}

/// One Docker arg as a 64-bit comparison. MASKED_EQ is `(arg & value) == valueTwo`.
fn condition(a: &Arg) -> Result<SeccompCondition, String> {
    let index = u8::try_from(a.index)
        .ok()
        .filter(|i| *i <= 5)
        .ok_or_else(|| format!("args index {} is out of range (a syscall has arguments 0 to 5)", a.index))?;
    let (op, value) = match a.op.as_str() {
        "SCMP_CMP_NE" => (SeccompCmpOp::Ne, a.value),
        "SCMP_CMP_LT" => (SeccompCmpOp::Lt, a.value),
        "SCMP_CMP_LE" => (SeccompCmpOp::Le, a.value),
        "SCMP_CMP_EQ" => (SeccompCmpOp::Eq, a.value),
        "SCMP_CMP_GE" => (SeccompCmpOp::Ge, a.value),
        "SCMP_CMP_GT" => (SeccompCmpOp::Gt, a.value),
        "SCMP_CMP_MASKED_EQ" => (SeccompCmpOp::MaskedEq(a.value), a.value_two),
        other => {
            return Err(format!(
                "unsupported op '{other}' (known: SCMP_CMP_NE, SCMP_CMP_LT, SCMP_CMP_LE, SCMP_CMP_EQ, \
                 SCMP_CMP_GE, SCMP_CMP_GT, SCMP_CMP_MASKED_EQ)"
            ))
        }
    };
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value).map_err(|e| e.to_string())
}

/// Add `new` (empty: unconditional) to what `nr` already has; unconditional absorbs the rest.
pub(super) fn add(rules: &mut Rules, nr: i64, new: &[SeccompRule]) {
    match rules.get_mut(&nr) {
        None => {
            rules.insert(nr, new.to_vec());
        }
        Some(have) if have.is_empty() => {}
        Some(have) if new.is_empty() => have.clear(),
        Some(have) => have.extend_from_slice(new),
    }
}
