//! The parser on Docker's format and its edge cases, and the filters on this host's kernel:
//! each probe runs in a forked child that installs the filter, makes one syscall and exits with
//! its errno (the child makes raw syscalls only, so forking from the threaded test harness is
//! safe).

use std::ffi::CString;
use std::path::Path;
use std::time::Instant;

use seccompiler::SeccompAction;

use super::profile::{DockerProfile, Resolved, Target};
use super::*;

const NO_CAPS: &[&str] = &[];
/// Docker's default capability set.
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

fn resolve(json: &str, caps: &[&str]) -> std::result::Result<Resolved, String> {
    let p: DockerProfile = serde_json::from_str(json).map_err(|e| e.to_string())?;
    p.resolve(&Target { caps, kernel: (6, 1) })
}

/// The rules an action has for a syscall: None if it has none, Some(0) if unconditional.
fn rules_of(r: &Resolved, action: SeccompAction, name: &str) -> Option<usize> {
    let nr = syscalls::number(name).unwrap_or_else(|| panic!("no syscall {name}"));
    r.groups.iter().find(|(a, _)| *a == action)?.1.get(&nr).map(Vec::len)
}

fn allowed(r: &Resolved, name: &str) -> Option<usize> {
    rules_of(r, SeccompAction::Allow, name)
}

fn write_profile(dir: &Path, name: &str, json: &str) -> SeccompProfile {
    let path = dir.join(name);
    std::fs::write(&path, json).unwrap();
    SeccompProfile::File(path)
}

fn compile_err(dir: &Path, json: &str) -> String {
    let profile = write_profile(dir, "p.json", json);
    let e = SeccompFilter::compile(&profile, NO_CAPS).expect_err(json).to_string();
    assert!(e.contains(&dir.join("p.json").display().to_string()), "the error names the file: {e}");
    e
}

#[test]
fn syscall_table_is_sorted_and_resolves() {
    assert!(syscalls::X86_64.windows(2).all(|w| w[0].0 < w[1].0), "sorted, no duplicates");
    assert_eq!(syscalls::number("read"), Some(0));
    assert_eq!(syscalls::number("mkdir"), Some(83));
    assert_eq!(syscalls::number("clone3"), Some(435));
    assert_eq!(syscalls::number("_sysctl"), Some(156));
    assert_eq!(syscalls::number("cachestat"), Some(451));
    assert_eq!(syscalls::number("socketcall"), None, "an i386-only call");
}

#[test]
fn default_profile_names_only_x86_64_calls() {
    let v: serde_json::Value = serde_json::from_str(DEFAULT_PROFILE).unwrap();
    for entry in v["syscalls"].as_array().unwrap() {
        for name in entry["names"].as_array().unwrap() {
            let name = name.as_str().unwrap();
            assert!(syscalls::number(name).is_some(), "default.json names {name}, unknown on x86_64");
        }
    }
}

#[test]
fn default_profile_without_caps_refuses_dockers_list() {
    let r = resolve(DEFAULT_PROFILE, DEFAULT_CAPS).unwrap();
    assert_eq!(r.default, SeccompAction::Errno(1));
    for name in ["read", "write", "openat", "execve", "getpid", "chroot", "socket", "fork", "arch_prctl"] {
        assert_eq!(allowed(&r, name), Some(0), "{name} is allowed");
    }
    for name in [
        "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "bpf", "perf_event_open",
        "keyctl", "add_key", "request_key", "open_by_handle_at", "userfaultfd", "mount", "umount2", "unshare",
        "setns", "pivot_root", "reboot", "acct", "iopl", "settimeofday", "clock_settime", "syslog", "kcmp",
        "io_uring_setup", "swapon", "mbind", "vhangup",
    ] {
        assert_eq!(allowed(&r, name), None, "{name} is refused");
    }
    assert_eq!(allowed(&r, "clone"), Some(1), "clone only without namespace flags");
    assert_eq!(allowed(&r, "personality"), Some(5));
    assert_eq!(allowed(&r, "ptrace"), Some(0), "ptrace from 4.8 on");
    assert_eq!(rules_of(&r, SeccompAction::Errno(38), "clone3"), Some(0), "clone3 gets ENOSYS");
}

#[test]
fn default_profile_with_caps_allows_what_they_make_legitimate() {
    let r = resolve(DEFAULT_PROFILE, &["CAP_SYS_ADMIN"]).unwrap();
    for name in ["mount", "unshare", "setns", "bpf", "perf_event_open", "clone", "clone3", "syslog"] {
        assert_eq!(allowed(&r, name), Some(0), "{name} with CAP_SYS_ADMIN");
    }
    assert!(r.groups.iter().all(|(a, _)| *a == SeccompAction::Allow), "no ENOSYS for clone3: {:?}", r.groups.len());
    assert_eq!(allowed(&r, "kexec_load"), None, "not even with CAP_SYS_ADMIN");
    // Spelled without the prefix, in any case.
    let r = resolve(DEFAULT_PROFILE, &["sys_module", "SYS_PTRACE", "cap_sys_time"]).unwrap();
    for name in ["init_module", "finit_module", "delete_module", "kcmp", "pidfd_getfd", "settimeofday"] {
        assert_eq!(allowed(&r, name), Some(0), "{name}");
    }
    assert_eq!(allowed(&r, "mount"), None);
    let r = resolve(DEFAULT_PROFILE, &["CAP_BPF", "CAP_PERFMON"]).unwrap();
    assert_eq!(allowed(&r, "bpf"), Some(0));
    assert_eq!(allowed(&r, "perf_event_open"), Some(0));
    assert_eq!(allowed(&r, "mount"), None);
}

#[test]
fn includes_need_every_cap_and_excludes_any() {
    let json = r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
        {"names":["mkdir"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_A","CAP_B"]}},
        {"names":["rmdir"],"action":"SCMP_ACT_ALLOW","excludes":{"caps":["CAP_A","CAP_C"]}},
        {"names":["getpid"],"action":"SCMP_ACT_ALLOW"}]}"#;
    let r = resolve(json, &["CAP_A"]).unwrap();
    assert_eq!(allowed(&r, "mkdir"), None, "needs both");
    assert_eq!(allowed(&r, "rmdir"), None, "CAP_A excludes it");
    let r = resolve(json, &["CAP_A", "CAP_B"]).unwrap();
    assert_eq!(allowed(&r, "mkdir"), Some(0));
    let r = resolve(json, &["CAP_B"]).unwrap();
    assert_eq!(allowed(&r, "rmdir"), Some(0));
    assert_eq!(allowed(&r, "getpid"), Some(0));
}

#[test]
fn arches_and_min_kernel() {
    let json = r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
        {"names":["mkdir"],"action":"SCMP_ACT_ALLOW","includes":{"arches":["arm64","s390x"]}},
        {"names":["rmdir"],"action":"SCMP_ACT_ALLOW","includes":{"arches":["arm64","amd64"]}},
        {"names":["link"],"action":"SCMP_ACT_ALLOW","excludes":{"arches":["amd64"]}},
        {"names":["unlink"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"6.2"}},
        {"names":["rename"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"5.19"}},
        {"names":["chmod"],"action":"SCMP_ACT_ALLOW","excludes":{"minKernel":"6.1"}},
        {"names":["chown"],"action":"SCMP_ACT_ALLOW","excludes":{"minKernel":"6.2"}}]}"#;
    let r = resolve(json, NO_CAPS).unwrap(); // kernel 6.1
    assert_eq!(allowed(&r, "mkdir"), None);
    assert_eq!(allowed(&r, "rmdir"), Some(0));
    assert_eq!(allowed(&r, "link"), None);
    assert_eq!(allowed(&r, "unlink"), None);
    assert_eq!(allowed(&r, "rename"), Some(0));
    assert_eq!(allowed(&r, "chmod"), None);
    assert_eq!(allowed(&r, "chown"), Some(0));
    assert_eq!(profile::kernel_version("6.18.44-fc-v1272"), Ok((6, 18)));
    assert_eq!(profile::kernel_version("4.8"), Ok((4, 8)));
    assert!(profile::kernel_version("4").is_err());
    assert!(profile::kernel_version("four.8").is_err());
}

#[test]
fn nulls_unknown_fields_legacy_name_and_unknown_syscalls() {
    let json = r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":null,"architectures":null,
        "archMap":null,"listenerPath":"","future":{"x":1},"syscalls":[
        {"names":null,"name":"mkdir","action":"SCMP_ACT_ALLOW","args":null,"includes":null,
         "excludes":{},"comment":"old style","errnoRet":null},
        {"names":["socketcall","no_such_call","rmdir"],"action":"SCMP_ACT_ALLOW","args":[]}]}"#;
    let r = resolve(json, NO_CAPS).unwrap();
    assert_eq!(r.default, SeccompAction::Errno(1), "EPERM when no errno is given");
    assert_eq!(allowed(&r, "mkdir"), Some(0));
    assert_eq!(allowed(&r, "rmdir"), Some(0), "unknown names are skipped, not fatal");
}

#[test]
fn args_and_ops() {
    let json = r#"{"defaultAction":"SCMP_ACT_ALLOW","defaultErrnoRet":38,"syscalls":[
        {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":13,"args":[
            {"index":1,"value":1,"op":"SCMP_CMP_GT"},{"index":0,"value":5,"op":"SCMP_CMP_NE"}]},
        {"names":["rmdir"],"action":"SCMP_ACT_ERRNO","args":[
            {"index":0,"value":1,"op":"SCMP_CMP_EQ"},{"index":0,"value":2,"op":"SCMP_CMP_EQ"}]},
        {"names":["rmdir"],"action":"SCMP_ACT_ERRNO","args":[
            {"index":2,"value":255,"valueTwo":4,"op":"SCMP_CMP_MASKED_EQ"}]},
        {"names":["link"],"action":"SCMP_ACT_ERRNO","args":[{"index":5,"value":1,"op":"SCMP_CMP_LE"}]},
        {"names":["link"],"action":"SCMP_ACT_ERRNO"},
        {"names":["getpid"],"action":"SCMP_ACT_ALLOW"},
        {"names":["unlink"],"action":"SCMP_ACT_KILL"},
        {"names":["chmod"],"action":"SCMP_ACT_TRACE","errnoRet":7}]}"#;
    let r = resolve(json, NO_CAPS).unwrap();
    assert_eq!(r.default, SeccompAction::Allow);
    assert_eq!(rules_of(&r, SeccompAction::Errno(13), "mkdir"), Some(1), "distinct indexes: one ANDed rule");
    assert_eq!(rules_of(&r, SeccompAction::Errno(1), "rmdir"), Some(3), "a repeated index: ORed rules, plus one");
    assert_eq!(rules_of(&r, SeccompAction::Errno(1), "link"), Some(0), "unconditional absorbs the conditional");
    assert_eq!(allowed(&r, "getpid"), None, "the default action adds nothing");
    assert_eq!(rules_of(&r, SeccompAction::KillThread, "unlink"), Some(0));
    assert_eq!(rules_of(&r, SeccompAction::Trace(7), "chmod"), Some(0));
}

#[test]
fn bad_profiles_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = SeccompProfile::File(dir.path().join("absent.json"));
    let e = SeccompFilter::compile(&missing, NO_CAPS).unwrap_err().to_string();
    assert!(e.contains("absent.json") && e.contains("cannot read"), "{e}");
    let cases: &[(&str, &str)] = &[
        ("{", "not a Docker seccomp profile"),
        (r#"{"syscalls":[]}"#, "defaultAction"),
        (r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":{"names":[]}}"#, "not a Docker seccomp profile"),
        (r#"{"defaultAction":"SCMP_ACT_MAYBE"}"#, "unknown action 'SCMP_ACT_MAYBE'"),
        (r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_NOTIFY"}]}"#, "seccomp agent"),
        (
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":1,"op":"SCMP_CMP_LIKE"}]}]}"#,
            "unsupported op 'SCMP_CMP_LIKE'",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
            "index 6",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":-1,"op":"SCMP_CMP_EQ"}]}]}"#,
            "not a Docker seccomp profile",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","excludes":{"minKernel":"new"}}]}"#,
            "minKernel 'new'",
        ),
        (r#"{"defaultAction":"SCMP_ACT_ERRNO","flags":["SECCOMP_FILTER_FLAG_FAST"]}"#, "unknown flag"),
        (r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_AARCH64"]}"#, "not SCMP_ARCH_X86_64"),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["seccomp"],"action":"SCMP_ACT_ERRNO"},{"names":["seccomp"],"action":"SCMP_ACT_KILL"}]}"#,
            "seccomp(2) itself",
        ),
    ];
    for (json, want) in cases {
        let e = compile_err(dir.path(), json);
        assert!(e.contains(want), "{json}: {e}");
        assert!(e.contains("seccomp=unconfined"), "says what to do: {e}");
    }
    // Accepted: an archMap naming this host, flags, and every action.
    let ok = r#"{"defaultAction":"SCMP_ACT_LOG","archMap":[{"architecture":"SCMP_ARCH_X86_64","subArchitectures":["SCMP_ARCH_X86"]},
        {"architecture":"SCMP_ARCH_AARCH64"}],"flags":["SECCOMP_FILTER_FLAG_SPEC_ALLOW"],"syscalls":[
        {"names":["read"],"action":"SCMP_ACT_ALLOW"},{"names":["a"],"action":"SCMP_ACT_KILL_PROCESS"},
        {"names":["b"],"action":"SCMP_ACT_KILL_THREAD"},{"names":["c"],"action":"SCMP_ACT_TRAP"}]}"#;
    let f = SeccompFilter::compile(&write_profile(dir.path(), "ok.json", ok), NO_CAPS).unwrap().unwrap();
    assert_eq!(f.flags, libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW);
    assert_eq!(SeccompProfile::from_option("unconfined").unwrap(), SeccompProfile::Unconfined);
    assert_eq!(SeccompProfile::from_option("/p.json").unwrap(), SeccompProfile::File("/p.json".into()));
    assert!(SeccompProfile::from_option("").is_err());
    assert!(SeccompFilter::compile(&SeccompProfile::Unconfined, NO_CAPS).unwrap().is_none());
}

#[test]
fn compiling_the_default_profile_is_fast() {
    let n = 200;
    let start = Instant::now();
    for _ in 0..n {
        SeccompFilter::compile(&SeccompProfile::Default, DEFAULT_CAPS).unwrap().unwrap();
    }
    let each = start.elapsed() / n;
    let start = Instant::now();
    for _ in 0..n {
        let p: DockerProfile = serde_json::from_str(DEFAULT_PROFILE).unwrap();
        p.resolve(&Target { caps: DEFAULT_CAPS, kernel: (6, 1) }).unwrap();
    }
    let resolve = start.elapsed() / n;
    let f = SeccompFilter::compile(&SeccompProfile::Default, DEFAULT_CAPS).unwrap().unwrap();
    let sizes: Vec<usize> = f.programs.iter().map(Vec::len).collect();
    eprintln!(
        "seccomp: the default profile compiles in {each:?}, of which JSON and resolution {resolve:?} \
         (BPF programs of {sizes:?} instructions)"
    );
    // A debug build on a busy machine; a release build takes a fraction of this.
    assert!(each.as_millis() < 20, "compile took {each:?}");
}

/// What a syscall did in a child: its result, or the errno, or the signal that killed it.
#[derive(Debug, PartialEq)]
enum Outcome {
    Ok,
    Err(Errno),
    Killed(i32),
}

/// Fork; the child installs `filter` (if any), runs `probe` and reports.
fn in_child(filter: Option<&SeccompFilter>, probe: &dyn Fn() -> libc::c_long) -> Outcome {
    const INSTALL_FAILED: i32 = 250;
    // SAFETY: the child makes raw syscalls only and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", Errno::last());
    if pid == 0 {
        if let Some(f) = filter {
            if f.install().is_err() {
                unsafe { libc::_exit(INSTALL_FAILED) };
            }
        }
        let rc = probe();
        let code = if rc < 0 { Errno::last() as i32 } else { 0 };
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    if libc::WIFSIGNALED(status) {
        return Outcome::Killed(libc::WTERMSIG(status));
    }
    match libc::WEXITSTATUS(status) {
        0 => Outcome::Ok,
        INSTALL_FAILED => panic!("the child could not install the filter"),
        e => Outcome::Err(Errno::from_raw(e)),
    }
}

fn sys(nr: libc::c_long, a: [libc::c_long; 5]) -> libc::c_long {
    // SAFETY: every probe passes arguments the kernel validates (null or bogus pointers fault
    // with EFAULT, nothing is written through them).
    unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4]) }
}

fn fork_and_reap() -> libc::c_long {
    let pid = sys(libc::SYS_clone, [libc::SIGCHLD as libc::c_long, 0, 0, 0, 0]);
    if pid == 0 {
        unsafe { libc::_exit(0) };
    }
    if pid < 0 {
        return pid;
    }
    let mut status = 0;
    unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) as libc::c_long }
}

#[test]
fn the_default_filter_refuses_dockers_list_and_allows_a_normal_process() {
    let f = SeccompFilter::compile(&SeccompProfile::Default, DEFAULT_CAPS).unwrap().unwrap();
    let nowhere = CString::new("/nonexistent-seccomp-test").unwrap();
    let root = CString::new("/").unwrap();
    type Probe<'a> = (&'a str, Box<dyn Fn() -> libc::c_long + 'a>);
    let refused: Vec<Probe> = vec![
        // KEYCTL_GET_KEYRING_ID of the session keyring
        ("keyctl", Box::new(|| sys(libc::SYS_keyctl, [0, -3, 0, 0, 0]))),
        ("add_key", Box::new(|| sys(libc::SYS_add_key, [0, 0, 0, 0, 0]))),
        ("unshare(CLONE_NEWUSER)", Box::new(|| sys(libc::SYS_unshare, [libc::CLONE_NEWUSER as _, 0, 0, 0, 0]))),
        ("clone(CLONE_NEWUSER)", Box::new(|| sys(libc::SYS_clone, [(libc::CLONE_NEWUSER | libc::SIGCHLD) as _, 0, 0, 0, 0]))),
        ("bpf", Box::new(|| sys(libc::SYS_bpf, [0xffff, 0, 0, 0, 0]))),
        ("kexec_load", Box::new(|| sys(libc::SYS_kexec_load, [0, 0, 0, 0xffff, 0]))),
        ("init_module", Box::new(|| sys(libc::SYS_init_module, [0, 0, 0, 0, 0]))),
        ("perf_event_open", Box::new(|| sys(libc::SYS_perf_event_open, [0, 0, -1, -1, 0]))),
        ("open_by_handle_at", Box::new(|| sys(libc::SYS_open_by_handle_at, [-1, 0, 0, 0, 0]))),
        ("userfaultfd", Box::new(|| sys(libc::SYS_userfaultfd, [0xffff, 0, 0, 0, 0]))),
        ("mount", Box::new(|| sys(libc::SYS_mount, [0, nowhere.as_ptr() as _, 0, libc::MS_REMOUNT as _, 0]))),
        ("umount2", Box::new(|| sys(libc::SYS_umount2, [nowhere.as_ptr() as _, 0, 0, 0, 0]))),
        ("personality(PER_BSD)", Box::new(|| sys(libc::SYS_personality, [6, 0, 0, 0, 0]))),
    ];
    for (name, probe) in &refused {
        assert_eq!(in_child(Some(&f), probe), Outcome::Err(Errno::EPERM), "{name} under the default profile");
        // The refusal is the filter's: the kernel alone says something else here (we are root).
        let bare = in_child(None, probe);
        assert_ne!(bare, Outcome::Err(Errno::EPERM), "{name} unconfined (the probe must not fail by itself)");
    }
    assert_eq!(
        in_child(Some(&f), &|| sys(libc::SYS_clone3, [0, 0, 0, 0, 0])),
        Outcome::Err(Errno::ENOSYS),
        "clone3 gets ENOSYS, so libcs fall back to clone"
    );
    let allowed: Vec<Probe> = vec![
        ("getpid", Box::new(|| sys(libc::SYS_getpid, [0; 5]))),
        ("openat", Box::new(|| sys(libc::SYS_openat, [libc::AT_FDCWD as _, root.as_ptr() as _, libc::O_RDONLY as _, 0, 0]))),
        ("fork (clone)", Box::new(fork_and_reap)),
        ("personality(query)", Box::new(|| sys(libc::SYS_personality, [0xffff_ffff, 0, 0, 0, 0]))),
        ("chroot(/)", Box::new(|| sys(libc::SYS_chroot, [root.as_ptr() as _, 0, 0, 0, 0]))),
    ];
    for (name, probe) in &allowed {
        assert_eq!(in_child(Some(&f), probe), Outcome::Ok, "{name} under the default profile");
    }
}

#[test]
fn cap_sys_admin_lets_new_namespaces_and_mount_through() {
    let caps: Vec<&str> = DEFAULT_CAPS.iter().copied().chain(["CAP_SYS_ADMIN"]).collect();
    let f = SeccompFilter::compile(&SeccompProfile::Default, &caps).unwrap().unwrap();
    let unshare = || sys(libc::SYS_unshare, [libc::CLONE_NEWUSER as _, 0, 0, 0, 0]);
    assert_eq!(in_child(Some(&f), &unshare), Outcome::Ok);
    let nowhere = CString::new("/nonexistent-seccomp-test").unwrap();
    let mount = || sys(libc::SYS_mount, [0, nowhere.as_ptr() as _, 0, libc::MS_REMOUNT as _, 0]);
    assert_eq!(in_child(Some(&f), &mount), Outcome::Err(Errno::ENOENT), "the kernel's answer, not the filter's");
    assert_eq!(in_child(Some(&f), &|| sys(libc::SYS_keyctl, [0, -3, 0, 0, 0])), Outcome::Err(Errno::EPERM));
}

#[test]
fn a_docker_profile_denying_mkdir_denies_it() {
    let dir = tempfile::tempdir().unwrap();
    let profile = write_profile(
        dir.path(),
        "no-mkdir.json",
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"},
            {"names":["getppid"],"action":"SCMP_ACT_KILL_PROCESS"},
            {"names":["rmdir"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
    );
    let deny = SeccompFilter::compile(&profile, NO_CAPS).unwrap().unwrap();
    let default = SeccompFilter::compile(&SeccompProfile::Default, DEFAULT_CAPS).unwrap().unwrap();
    let target = CString::new(dir.path().join("d").to_str().unwrap()).unwrap();
    let mkdir = || sys(libc::SYS_mkdir, [target.as_ptr() as _, 0o755, 0, 0, 0]);
    let mkdirat = || sys(libc::SYS_mkdirat, [libc::AT_FDCWD as _, target.as_ptr() as _, 0o755, 0, 0]);
    assert_eq!(in_child(Some(&deny), &mkdir), Outcome::Err(Errno::EPERM));
    assert_eq!(in_child(Some(&deny), &mkdirat), Outcome::Err(Errno::EPERM));
    assert!(!dir.path().join("d").exists());
    assert_eq!(in_child(Some(&deny), &|| sys(libc::SYS_getppid, [0; 5])), Outcome::Killed(libc::SIGSYS));
    let rmdir = || sys(libc::SYS_rmdir, [target.as_ptr() as _, 0, 0, 0, 0]);
    assert_eq!(in_child(Some(&deny), &rmdir), Outcome::Err(Errno::EACCES), "its own errnoRet");
    assert_eq!(in_child(Some(&deny), &|| sys(libc::SYS_getpid, [0; 5])), Outcome::Ok, "the rest is allowed");
    // An x32 mkdir does not slip past rules keyed on x86_64 numbers.
    let x32_mkdir = || sys(X32_SYSCALL_BIT | libc::SYS_mkdir, [target.as_ptr() as _, 0o755, 0, 0, 0]);
    assert_eq!(in_child(Some(&deny), &x32_mkdir), Outcome::Err(Errno::ENOSYS));
    assert!(!dir.path().join("d").exists());
    // The default profile allows it.
    assert_eq!(in_child(Some(&default), &mkdir), Outcome::Ok);
    assert!(dir.path().join("d").is_dir());
    assert_eq!(in_child(Some(&default), &rmdir), Outcome::Ok);
}

#[test]
fn ordinary_programs_run_under_the_default_filter() {
    use std::os::unix::process::CommandExt;
    let f = std::sync::Arc::new(SeccompFilter::compile(&SeccompProfile::Default, DEFAULT_CAPS).unwrap().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let run = |argv: &[&str]| {
        let f = f.clone();
        let mut cmd = std::process::Command::new(argv[0]);
        cmd.args(&argv[1..]).current_dir(dir.path());
        // SAFETY: install is async-signal-safe (no allocation).
        unsafe { cmd.pre_exec(move || f.install().map_err(|e| std::io::Error::from_raw_os_error(e as i32))) };
        let out = cmd.output().unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        assert!(out.status.success(), "{argv:?}: {:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let script = "mkdir -p a/b && echo hi > a/b/f && cp a/b/f g && chmod 600 g && ln -s g h && cat h && \
                  ls -la a | wc -l && (sleep 0 &) && wait && id -u && rm -r a g h && grep Seccomp: /proc/self/status";
    let out = run(&["/bin/sh", "-c", script]);
    assert!(out.starts_with("hi\n") && out.contains("Seccomp:\t2"), "{out}");
    if Path::new("/bin/busybox").exists() {
        run(&["/bin/busybox", "sh", "-c", "mkdir x && touch x/y && ls x && rm -r x && ps >/dev/null"]);
    }
    // Threads (glibc's clone3 gets ENOSYS and falls back to clone), subprocesses, sockets.
    if Path::new("/usr/bin/python3").exists() {
        let py = "import threading, subprocess, socket, os, tempfile\n\
                  t = threading.Thread(target=lambda: None); t.start(); t.join()\n\
                  assert subprocess.run(['true']).returncode == 0\n\
                  a, b = socket.socketpair(); a.send(b'x'); assert b.recv(1) == b'x'\n\
                  s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n\
                  with tempfile.TemporaryDirectory() as d: open(os.path.join(d, 'f'), 'w').write('x')\n\
                  print('ok')";
        assert_eq!(run(&["/usr/bin/python3", "-c", py]), "ok\n");
    }
}
