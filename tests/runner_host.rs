//! Host test of the runner's core (`rcx_dm::runner::run_container`) on a loop device: the
//! namespaces, pivot_root, /proc, /dev, /sys, hostname, exec and exit-status paths, and the
//! isolation (capabilities, masked and read-only paths, cgroup namespace, descriptors, session,
//! stdin, `--userns` with its idmapped mount and id ranges) need no device-mapper, so they are checked here on every `cargo test`. (Snapshots, activation,
//! cgroup limits and crash cleanup need dm and cgroup v2 controllers: vm-tests/runner.rs.)
//!
//! harness = false: the runner clones the calling process, which must be single-threaded, so
//! this is a plain main() running the cases one after another. It needs root, loop devices,
//! mkfs.ext4 and a static /bin/busybox (tools/setup installs them); without them it says so
//! and passes.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use rcx_dm::runner::{self, ContainerRoot, Fs, IdRange, Net, RunOutcome, RunSpec, Userns, UsernsLease};

struct Env {
    dev: PathBuf,
    image: PathBuf,
    mnt: PathBuf,
}

fn main() {
    let missing: Vec<&str> = [
        (!nix::unistd::geteuid().is_root(), "root"),
        (!Path::new("/dev/loop-control").exists(), "/dev/loop-control"),
        (Command::new("mkfs.ext4").arg("-V").output().is_err(), "mkfs.ext4"),
        (!Path::new("/bin/busybox").exists(), "/bin/busybox"),
        // For the TIOCSTI case (busybox has no tool for the ioctl); perl-base is essential on Debian.
        (Command::new("ldd").arg("/usr/bin/perl").output().is_err(), "perl and ldd"),
    ]
    .into_iter()
    .filter_map(|(m, what)| m.then_some(what))
    .collect();
    // A test that cannot run fails: a silent skip would look like a pass. Where these are
    // unavailable on purpose, filter it out (`cargo test --test cli ...`).
    if !missing.is_empty() {
        eprintln!("runner_host: FAILED: this host lacks {}; run as root after tools/setup", missing.join(", "));
        std::process::exit(1);
    }
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("root.img");
    rcx_dm::loopback::create_sparse(&image, 64 << 20).unwrap();
    let out = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image).output().unwrap();
    assert!(out.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
    let dev = rcx_dm::loopback::attach(&image).unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let env = Env { dev, image, mnt };
    populate(&env);

    type Case = (&'static str, fn(&Env));
    let cases: &[Case] = &[
        ("command_is_pid_1_and_ps_sees_only_the_container", pid_1),
        ("hostname_mounts_and_root_listing_are_the_containers", hostname_mounts_ls),
        ("dev_has_the_usual_nodes_and_links", dev_nodes),
        ("net_none_has_only_lo_and_it_is_up", net_none),
        ("exit_statuses_and_missing_commands", exit_statuses),
        ("env_workdir_and_read_only_root", env_workdir_ro),
        ("init_is_pid_1_reaps_and_passes_the_signal_status", init_mode),
        ("capabilities_default_add_drop_and_privileged", capabilities),
        ("proc_and_sys_are_masked_and_read_only", proc_sys_protected),
        ("cgroup_namespace_and_read_only_cgroup2", cgroup_namespace),
        ("only_0_1_2_are_open_and_nothing_leads_to_the_host", descriptors),
        ("new_session_and_stdin_is_dev_null_without_i", session_and_stdin),
        ("chown_low_ports_and_setuid_still_work", ordinary_things),
        ("seccomp_default_unconfined_privileged_and_a_docker_profile", seccomp),
        ("device_nodes_made_inside_do_not_open_but_the_standard_ones_do", devices),
        ("child_cgroups_made_inside_are_removed_at_once", nested_cgroups),
        ("tty_gives_a_fresh_pty_its_size_output_and_exit_status", tty_basics),
        ("tty_input_with_i_none_without_and_the_callers_modes_restored", tty_input),
        ("tty_follows_the_callers_window_size", tty_resize),
        ("tty_raw_mode_is_restored_after_a_forwarded_signal_and_an_error", tty_restored),
        ("tiocsti_inside_never_reaches_the_callers_terminal", tiocsti),
        ("userns_root_inside_is_the_ranges_first_id_outside_and_files_stay_0_on_disk", userns),
        ("userns_auto_ranges_of_concurrent_runs_are_disjoint_and_released", userns_concurrent),
        ("userns_bad_combinations_are_refused_before_anything_runs", userns_refused),
    ];
    let mut failed = 0;
    for (name, f) in cases {
        let r = std::panic::catch_unwind(|| f(&env));
        println!("test runner_host::{name} ... {}", if r.is_ok() { "ok" } else { "FAILED" });
        failed += r.is_err() as usize;
    }
    // Nothing left behind: no mount of the device anywhere here, and the loop detaches.
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let (maj, min) = devnum(&env.dev);
    assert!(!mi.contains(&format!(" {maj}:{min} ")), "the volume is still mounted:\n{mi}");
    rcx_dm::loopback::detach(&env.image).unwrap();
    assert_eq!(failed, 0, "{failed} runner_host case(s) failed");
    println!("runner_host: {} passed", cases.len());
}

fn devnum(dev: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let r = std::fs::metadata(dev).unwrap().rdev();
    (nix::sys::stat::major(r), nix::sys::stat::minor(r))
}

const APPLETS: &[&str] = &[
    "sh", "ps", "hostname", "cat", "ls", "mkdir", "echo", "sleep", "true", "false", "env", "pwd", "touch", "kill", "wc",
    "id", "grep", "dd", "seq", "readlink", "stat", "mount", "cp", "chmod", "chown", "su", "ping", "nc", "ln", "printf", "rm",
    "mknod", "head", "stty", "tty", "test",
];

/// A busybox root: /bin/busybox and applet links, the usual top directories, a marker file.
fn populate(env: &Env) {
    mount(env, false);
    let r = &env.mnt;
    for d in ["bin", "dev", "proc", "sys", "etc", "root", "tmp"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", r.join("bin").join(a)).unwrap();
    }
    std::fs::write(r.join("etc/marker"), "rootfs\n").unwrap();
    copy_perl(r);
    umount(env);
}

fn mount(env: &Env, ro: bool) {
    let flags = if ro { nix::mount::MsFlags::MS_RDONLY } else { nix::mount::MsFlags::empty() };
    nix::mount::mount(Some(&env.dev), &env.mnt, Some("ext4"), flags, None::<&str>).unwrap();
}

fn umount(env: &Env) {
    nix::mount::umount(&env.mnt).unwrap();
}

/// Run argv in the container with stdout and stderr captured; returns (outcome, stdout, stderr).
fn run_spec(env: &Env, spec: RunSpec) -> (rcx_dm::Result<RunOutcome>, String, String) {
    run_in(env, spec, None)
}

/// A run's scratch directory (removed on drop), its mount point, and the files for stdout and
/// stderr (created; rcx-dm's stdout flushed before they take its place).
fn scratch() -> (tempfile::TempDir, PathBuf, (PathBuf, std::fs::File), (PathBuf, std::fs::File)) {
    let dir = tempfile::tempdir().unwrap();
    let mount_dir = dir.path().join("rootfs");
    std::fs::create_dir(&mount_dir).unwrap();
    let (o, e) = (dir.path().join("out"), dir.path().join("err"));
    let (of, ef) = (std::fs::File::create(&o).unwrap(), std::fs::File::create(&e).unwrap());
    std::io::stdout().flush().unwrap();
    (dir, mount_dir, (o, of), (e, ef))
}

/// `run_spec`, born in the cgroup (cgroup2 mount, group) if one is given.
fn run_in(env: &Env, spec: RunSpec, cgroup: Option<(&Path, &Path)>) -> (rcx_dm::Result<RunOutcome>, String, String) {
    run_with(env, spec, cgroup, None)
}

/// `run_in`, with the container's ids mapped to `userns` (a range the caller holds).
fn run_with(
    env: &Env,
    spec: RunSpec,
    cgroup: Option<(&Path, &Path)>,
    userns: Option<IdRange>,
) -> (rcx_dm::Result<RunOutcome>, String, String) {
    let (_dir, mount_dir, (o, of), (e, ef)) = scratch();
    let saved = (nix::unistd::dup(std::io::stdout()).unwrap(), nix::unistd::dup(std::io::stderr()).unwrap());
    // SAFETY: swapping fds 1 and 2 of this single-threaded test process and back.
    unsafe {
        libc::dup2(of.as_raw_fd(), 1);
        libc::dup2(ef.as_raw_fd(), 2);
    }
    let t = ContainerRoot { device: &env.dev, fs: Fs::Ext4, mount_dir: &mount_dir, cgroup, read_only_base: false, bridge: None, userns };
    let mut timings = Vec::new();
    let hostname = spec.hostname.clone().unwrap_or_else(|| "host-test".into());
    let r = runner::run_container(&t, &spec, &hostname, &mut timings);
    // SAFETY: as above.
    unsafe {
        libc::dup2(saved.0.as_raw_fd(), 1);
        libc::dup2(saved.1.as_raw_fd(), 2);
    }
    (r, std::fs::read_to_string(o).unwrap(), std::fs::read_to_string(e).unwrap())
}

fn spec(argv: &[&str]) -> RunSpec {
    RunSpec {
        volume: Some(rcx_dm::VolRef::Id(0)),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Run and require exit status 0; returns stdout.
fn ok(env: &Env, s: RunSpec) -> String {
    let argv = s.argv.clone();
    let (r, out, err) = run_spec(env, s);
    let r = r.unwrap_or_else(|e| panic!("{argv:?}: {e}\nstderr: {err}"));
    assert_eq!(r.code, 0, "{argv:?} exited {}:\n{out}{err}", r.code);
    out
}

fn pid_1(env: &Env) {
    let out = ok(env, spec(&["ps"]));
    let procs: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(procs.len(), 1, "ps sees more than itself:\n{out}");
    let f: Vec<&str> = procs[0].split_whitespace().collect();
    assert_eq!((f[0], f.last().copied()), ("1", Some("ps")), "{out}");

    let out = ok(env, spec(&["sh", "-c", "sleep 5 & ps; kill $!"]));
    let pids: Vec<(u32, String)> = out
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].parse().unwrap(), f[2..].join(" "))
        })
        .collect();
    assert_eq!(pids.len(), 3, "{out}");
    assert_eq!(pids[0], (1, "sh -c sleep 5 & ps; kill $!".to_string()), "{out}");
    assert!(pids.iter().all(|(p, _)| *p < 10), "{out}");
}

fn hostname_mounts_ls(env: &Env) {
    assert_eq!(ok(env, RunSpec { hostname: Some("box1".into()), ..spec(&["hostname"]) }), "box1\n");
    assert_eq!(ok(env, spec(&["hostname"])), "host-test\n");
    let mounts = ok(env, spec(&["cat", "/proc/mounts"]));
    // (No /dev/console without -t, even when this test runs on a terminal.) (Below /proc and /sys: the masked and read-only paths and cgroup2, checked in
    // proc_sys_protected and cgroup_namespace.)
    let mut points: Vec<&str> = mounts
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap())
        .filter(|p| !p.starts_with("/proc/") && !p.starts_with("/sys/"))
        .collect();
    points.sort_unstable();
    // The standard device nodes are bind mounts of their own: /dev under them is nodev.
    assert_eq!(
        points,
        vec!["/", "/dev", "/dev/full", "/dev/null", "/dev/pts", "/dev/random", "/dev/shm", "/dev/tty", "/dev/urandom", "/dev/zero", "/proc", "/sys"],
        "{mounts}"
    );
    let dev = env.dev.display().to_string();
    assert!(mounts.lines().next().unwrap().starts_with(&format!("{dev} / ext4 rw,nodev,")), "{mounts}");
    assert!(mounts.contains("sysfs /sys sysfs ro,"), "{mounts}");
    let ls = ok(env, spec(&["ls", "/"]));
    let mut got: Vec<&str> = ls.split_whitespace().collect();
    got.sort_unstable();
    // (lib, lib64 and usr: the perl of the TIOCSTI case.)
    assert_eq!(got, vec!["bin", "dev", "etc", "lib", "lib64", "lost+found", "proc", "root", "sys", "tmp", "usr"], "{ls}");
    assert_eq!(ok(env, spec(&["cat", "/etc/marker"])), "rootfs\n");
}

fn dev_nodes(env: &Env) {
    let out = ok(env, spec(&["sh", "-c", "ls /dev; stat -c '%n %t:%T %a' /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty; readlink /dev/fd; readlink /dev/ptmx; echo x > /dev/null; dd if=/dev/zero bs=4 count=1 2>/dev/null | wc -c"]));
    for want in ["core", "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty", "urandom", "zero"] {
        assert!(out.split_whitespace().any(|w| w == want), "/dev lacks {want}:\n{out}");
    }
    for want in ["/dev/null 1:3 666", "/dev/zero 1:5 666", "/dev/full 1:7 666", "/dev/urandom 1:9 666", "/dev/tty 5:0 666"] {
        assert!(out.contains(want), "missing {want}:\n{out}");
    }
    assert!(out.contains("/proc/self/fd\npts/ptmx\n"), "{out}");
    assert!(out.trim_end().ends_with('4'), "{out}");
}

fn net_none(env: &Env) {
    let out = ok(env, spec(&["sh", "-c", "ls /sys/class/net; cat /sys/class/net/lo/flags"]));
    assert_eq!(out, "lo\n0x9\n", "expected only lo, up (IFF_UP|IFF_LOOPBACK)");
    let host = ok(env, RunSpec { net: Net::Host, ..spec(&["ls", "/sys/class/net"]) });
    let host_ifs = std::fs::read_dir("/sys/class/net").unwrap().count();
    assert_eq!(host.split_whitespace().count(), host_ifs, "--net host shows the host's interfaces: {host}");
}

fn exit_statuses(env: &Env) {
    for (argv, code) in [(vec!["true"], 0), (vec!["false"], 1), (vec!["sh", "-c", "exit 3"], 3)] {
        let (r, _, err) = run_spec(env, spec(&argv));
        assert_eq!(r.unwrap_or_else(|e| panic!("{argv:?}: {e} {err}")).code, code, "{argv:?}");
    }
    let (r, _, _) = run_spec(env, spec(&["no-such-command", "x"]));
    match r {
        Err(rcx_dm::Error::CommandNotFound { cmd, searched }) => {
            assert_eq!(cmd, "no-such-command");
            assert!(searched.starts_with("PATH=/usr/local/sbin"), "{searched}");
        }
        other => panic!("expected CommandNotFound, got {other:?}"),
    }
    let (r, _, _) = run_spec(env, spec(&["/bin/nope"]));
    assert!(matches!(r, Err(rcx_dm::Error::CommandNotFound { ref searched, .. }) if searched == "/bin/nope"), "{r:?}");
    let (r, _, _) = run_spec(env, spec(&["/etc/marker"]));
    let e = r.expect_err("a data file is not executable");
    assert!(matches!(e, rcx_dm::Error::CommandNotExecutable { .. }), "{e}");
    assert!(e.to_string().contains("Permission denied"), "{e}");
}

fn env_workdir_ro(env: &Env) {
    let s = RunSpec {
        env: vec![("GREETING".into(), "hello world".into())],
        workdir: Some("/work/dir".into()),
        ..spec(&["sh", "-c", "pwd; echo \"$GREETING\"; echo $HOME $HOSTNAME; env | wc -l"])
    };
    let out = ok(env, s);
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(&l[..3], &["/work/dir", "hello world", "/root host-test"], "{out}");
    let (r, _, err) = run_spec(env, RunSpec { read_only: true, ..spec(&["touch", "/etc/new"]) });
    assert_ne!(r.unwrap().code, 0, "wrote to a read-only root");
    assert!(err.contains("Read-only file system"), "{err}");
    // /dev is still writable under --read-only.
    ok(env, RunSpec { read_only: true, ..spec(&["sh", "-c", "echo x > /dev/shm/f && cat /dev/shm/f"]) });
    mount(env, true);
    assert!(env.mnt.join("work/dir").is_dir(), "--workdir is created in a writable root");
    assert!(!env.mnt.join("etc/new").exists());
    umount(env);
}

fn init_mode(env: &Env) {
    let out = ok(env, RunSpec { init: true, ..spec(&["ps"]) });
    let procs: Vec<Vec<&str>> = out.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(procs.len(), 2, "{out}");
    assert_eq!(procs[0][0], "1", "{out}");
    assert_eq!((procs[1][0], *procs[1].last().unwrap()), ("2", "ps"), "{out}");
    // The command killed by a signal: the init reports 128+n.
    let (r, _, _) = run_spec(env, RunSpec { init: true, ..spec(&["sh", "-c", "kill -9 $$"]) });
    assert_eq!(r.unwrap().code, 137);
    // Orphans are reaped: a grandchild left behind does not stay a zombie.
    let out = ok(env, RunSpec { init: true, ..spec(&["sh", "-c", "(sleep 0 &); sleep 1; ps -o stat,comm | grep -c Z || true"]) });
    assert_eq!(out.trim(), "0", "zombies left: {out}");
}

/// A spec with the given flags applied (`--privileged`, `--cap-add X`, `--cap-drop X`,
/// `--security-opt X`, `-i`, `--init`), as the CLI would build it.
fn with(flags: &[&str], argv: &[&str]) -> RunSpec {
    let mut s = spec(argv);
    let mut it = flags.iter();
    let mut opts = Vec::new();
    while let Some(f) = it.next() {
        match *f {
            "--privileged" => s.security.privileged = true,
            "--cap-add" => s.security.cap_add.push(runner::parse_capability(it.next().unwrap()).unwrap()),
            "--cap-drop" => s.security.cap_drop.push(runner::parse_capability(it.next().unwrap()).unwrap()),
            "--security-opt" => opts.push(runner::parse_security_opt(it.next().unwrap()).unwrap()),
            "-i" => s.interactive = true,
            "--init" => s.init = true,
            "-t" => s.tty = true,
            "-it" => (s.interactive, s.tty) = (true, true),
            other => panic!("unknown flag {other}"),
        }
    }
    s.security.apply_opts(&opts);
    s
}

/// The Cap* lines of /proc/PID/status inside the container: (Inh, Prm, Eff, Bnd, Amb).
fn caps_of(env: &Env, flags: &[&str], pid: &str) -> [u64; 5] {
    let out = ok(env, with(flags, &["grep", "^Cap", &format!("/proc/{pid}/status")]));
    let mut v = [0u64; 5];
    for (i, key) in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"].iter().enumerate() {
        let line = out.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in {out}"));
        v[i] = u64::from_str_radix(line[key.len()..].trim(), 16).unwrap();
    }
    v
}

fn capabilities(env: &Env) {
    let default = 0xa804_25fb; // Docker's and runc's set
    assert_eq!(runner::CapSet::default_set().0, default);
    assert_eq!(caps_of(env, &[], "self"), [default, default, default, default, 0]);
    let sys_admin = 1 << 21;
    let d = default | sys_admin;
    assert_eq!(caps_of(env, &["--cap-add", "SYS_ADMIN"], "self"), [d, d, d, d, 0]);
    let d = default & !1;
    assert_eq!(caps_of(env, &["--cap-drop", "chown"], "self"), [d, d, d, d, 0]);
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").unwrap().trim().parse().unwrap();
    // Everything this kernel has, as far as the test process has it (a sandboxed host may lack
    // some): no more than rcx-dm holds.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let own = status.lines().find_map(|l| l.strip_prefix("CapPrm:")).map(|v| u64::from_str_radix(v.trim(), 16).unwrap()).unwrap();
    let all = runner::CapSet::all(last).0 & own;
    assert_eq!(caps_of(env, &["--privileged"], "self"), [all, all, all, all, 0]);
    // Under --init, PID 1 (the init) has no more than the command.
    assert_eq!(caps_of(env, &["--init"], "1"), [default, default, default, default, 0]);
    assert_eq!(caps_of(env, &["--init"], "self"), [default, default, default, default, 0]);
    // Without CAP_SYS_ADMIN no mount; with it, one works.
    let (r, _, err) = run_spec(env, spec(&["mount", "-t", "tmpfs", "none", "/tmp"]));
    assert_ne!(r.unwrap().code, 0, "mounted without CAP_SYS_ADMIN");
    assert!(err.contains("Operation not permitted") || err.contains("permission denied"), "{err}");
    ok(env, with(&["--cap-add", "SYS_ADMIN"], &["mount", "-t", "tmpfs", "none", "/tmp"]));
}

fn proc_sys_protected(env: &Env) {
    // core_pattern (and the rest of /proc/sys) cannot be written.
    let (r, _, err) = run_spec(env, spec(&["sh", "-c", "echo '|/bin/evil' > /proc/sys/kernel/core_pattern"]));
    assert_ne!(r.unwrap().code, 0, "wrote core_pattern");
    assert!(err.contains("Read-only file system"), "{err}");
    let (r, _, _) = run_spec(env, spec(&["sh", "-c", "echo 1 > /proc/sysrq-trigger"]));
    assert_ne!(r.unwrap().code, 0, "wrote sysrq-trigger");
    // Still readable.
    assert!(!ok(env, spec(&["cat", "/proc/sys/kernel/ostype"])).is_empty());
    // /proc/kcore and /proc/keys are /dev/null: nothing to read.
    // (A kernel without one of them, like /proc/kcore on some sandboxes, is skipped.)
    for f in ["/proc/kcore", "/proc/keys", "/proc/timer_list"].into_iter().filter(|f| Path::new(f).exists()) {
        assert_eq!(ok(env, spec(&["sh", "-c", &format!("cat {f} | wc -c")])).trim(), "0", "{f}");
        assert_eq!(ok(env, spec(&["stat", "-c", "%t:%T", f])).trim(), "1:3", "{f} is /dev/null");
    }
    let mounts = ok(env, spec(&["cat", "/proc/mounts"]));
    for (path, how) in [("/proc/sys", "proc ro,"), ("/proc/sysrq-trigger", "proc ro,"), ("/sys/firmware", "tmpfs ro,")] {
        if !Path::new(path).exists() {
            continue;
        }
        let line = mounts.lines().find(|l| l.split(' ').nth(1) == Some(path)).unwrap_or_else(|| panic!("{path} not mounted:\n{mounts}"));
        assert!(line.contains(how), "{path}: {line}");
    }
    if Path::new("/sys/firmware").exists() {
        assert_eq!(ok(env, spec(&["ls", "-A", "/sys/firmware"])), "");
    }
    // --privileged: nothing masked, /proc/sys and /sys writable (not written to: they are the
    // host's).
    let mounts = ok(env, with(&["--privileged"], &["cat", "/proc/mounts"]));
    assert!(!mounts.lines().any(|l| l.contains(" /proc/kcore ") || l.contains(" /proc/sys ")), "{mounts}");
    assert!(mounts.contains("sysfs /sys sysfs rw,"), "{mounts}");
}

fn cgroup_namespace(env: &Env) {
    let mnt = runner::cgroup_mount().expect("cgroup v2 on this host");
    let group = mnt.join(format!("rcx-dm-host-test-{}", std::process::id()));
    let r = std::panic::catch_unwind(|| {
        let (r, out, err) = run_in(env, spec(&["cat", "/proc/self/cgroup"]), Some((&mnt, &group)));
        runner::remove_cgroup(&group).unwrap();
        assert_eq!(r.unwrap_or_else(|e| panic!("{e}: {err}")).code, 0, "{err}");
        assert!(out.lines().any(|l| l == "0::/"), "the container's own group is its root:\n{out}");
        // cgroup2 is mounted read-only: no moving out, no changing the limits, no new mount.
        let script = "grep ' /sys/fs/cgroup ' /proc/mounts; mkdir /sys/fs/cgroup/x && echo made; \
                      echo 1 > /sys/fs/cgroup/cgroup.procs && echo moved; \
                      mkdir -p /tmp/cg && mount -t cgroup2 none /tmp/cg && echo mounted; true";
        let (r, out, _) = run_in(env, spec(&["sh", "-c", script]), Some((&mnt, &group)));
        assert_eq!(r.unwrap().code, 0);
        assert!(out.contains("cgroup2 ro,") || out.contains(" cgroup2 ro"), "{out}");
        for bad in ["made", "moved", "mounted"] {
            assert!(!out.lines().any(|l| l == bad), "{bad}:\n{out}");
        }
    });
    runner::remove_cgroup(&group).unwrap();
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

/// The descriptors of `pid` inside the container, as "N -> target" lines, and whether any is a
/// directory.
/// (`ls` in a subshell to a file, not a glob, `$(...)` or a redirection in sh: those would open
/// a descriptor in sh, PID 1, itself.)
const FD_SCRIPT: &str = "for p in $PIDS; do (ls /proc/$p/fd > /tmp/fds); for n in $(cat /tmp/fds); do f=/proc/$p/fd/$n; \
    if [ -d $f ]; then echo \"$p $n DIR $(readlink $f)\"; else echo \"$p $n\"; fi; done; \
    echo \"$p cwd $(readlink /proc/$p/cwd) root $(readlink /proc/$p/root)\"; done";

fn descriptors(env: &Env) {
    // A directory descriptor in rcx-dm (not close-on-exec) must not reach the container, nor
    // a cgroup directory.
    let leak = nix::fcntl::open("/tmp", nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY, nix::sys::stat::Mode::empty()).unwrap();
    let mnt = runner::cgroup_mount().expect("cgroup v2 on this host");
    let group = mnt.join(format!("rcx-dm-host-test-fd-{}", std::process::id()));
    let r = std::panic::catch_unwind(|| {
        for (flags, pids) in [(&[][..], "1"), (&["--init"][..], "1 2")] {
            let s = with(flags, &["sh", "-c", &format!("PIDS='{pids}'; {FD_SCRIPT}")]);
            let (r, out, err) = run_in(env, s, Some((&mnt, &group)));
            runner::remove_cgroup(&group).unwrap();
            assert_eq!(r.unwrap_or_else(|e| panic!("{e}: {err}")).code, 0, "{err}");
            for p in pids.split(' ') {
                let fds: Vec<&str> = out.lines().filter(|l| l.starts_with(&format!("{p} ")) && !l.contains(" cwd ")).collect();
                let nums: Vec<&str> = fds.iter().map(|l| l.split(' ').nth(1).unwrap()).collect();
                assert_eq!(nums, ["0", "1", "2"], "{flags:?} PID {p} holds more than 0, 1, 2:\n{out}");
                assert!(!out.contains("DIR"), "a directory descriptor in the container:\n{out}");
                assert!(out.contains(&format!("{p} cwd / root /")), "{out}");
            }
        }
    });
    drop(leak);
    runner::remove_cgroup(&group).unwrap();
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

/// Field `n` (0-based) of /proc/self/stat printed by the container.
fn stat_field(out: &str, n: usize) -> String {
    let after = &out[out.rfind(')').unwrap() + 2..];
    after.split(' ').nth(n - 2).unwrap().to_string()
}

fn session_and_stdin(env: &Env) {
    // The session leader is the container's PID 1 (outside the pid namespace it would show 0).
    let out = ok(env, spec(&["cat", "/proc/self/stat"]));
    assert_eq!(stat_field(&out, 5), "1", "session id:\n{out}");
    let out = ok(env, with(&["--init"], &["cat", "/proc/self/stat"]));
    assert_eq!(stat_field(&out, 5), "1", "session id under --init:\n{out}");
    // And it is not rcx-dm's session.
    assert_ne!(nix::unistd::getsid(None).unwrap().as_raw(), 1);
    // stdin: /dev/null without -i, rcx-dm's with it (here the test's own stdin).
    assert_eq!(ok(env, spec(&["readlink", "/proc/self/fd/0"])).trim(), "/dev/null");
    let ours = std::fs::read_link("/proc/self/fd/0").map(|p| p.display().to_string()).unwrap_or_default();
    let theirs = ok(env, with(&["-i"], &["readlink", "/proc/self/fd/0"]));
    if ours != "/dev/null" {
        assert_ne!(theirs.trim(), "/dev/null", "-i keeps stdin ({ours})");
    }
}

fn ordinary_things(env: &Env) {
    // chown under the default set.
    let out = ok(env, spec(&["sh", "-c", "touch /tmp/f && chown 65534:65534 /tmp/f && stat -c %u:%g /tmp/f; rm -f /tmp/f"]));
    assert_eq!(out.trim(), "65534:65534");
    let (r, _, err) = run_spec(env, with(&["--cap-drop", "CHOWN"], &["chown", "65534", "/etc/marker"]));
    assert_ne!(r.unwrap().code, 0, "chown without CAP_CHOWN");
    assert!(err.contains("Operation not permitted"), "{err}");
    // A port below 1024 with --net none (the default): listening on 80 (0x0050).
    let listen = "nc -l -p 80 </dev/null >/dev/null 2>&1 & p=$!; i=0; \
                  while [ $i -lt 50 ] && ! grep -qE ':0050 0+:0000 0A' /proc/net/tcp /proc/net/tcp6; do sleep 0.1; i=$((i+1)); done; \
                  grep -qE ':0050 0+:0000 0A' /proc/net/tcp /proc/net/tcp6 && echo listening; kill $p 2>/dev/null; true";
    assert_eq!(ok(env, spec(&["sh", "-c", listen])).trim(), "listening");
    assert_eq!(ok(env, with(&["--cap-drop", "NET_BIND_SERVICE"], &["sh", "-c", listen])).trim(), "");
    // A setuid-root binary run by nobody gains root: busybox ping needs a raw socket (the new
    // network namespace allows no unprivileged ICMP socket), which only root with CAP_NET_RAW
    // gets. The same copy without the setuid bit fails: the control.
    // (busybox su, as root, needs no password; nobody comes from an /etc/passwd made here.)
    let setuid = "printf 'root:x:0:0::/root:/bin/sh\\nnobody:x:65534:65534::/:/bin/sh\\n' > /etc/passwd && \
                  mkdir -p /tmp/su /tmp/plain && cp /bin/busybox /tmp/su/busybox && cp /bin/busybox /tmp/plain/busybox && \
                  chmod u+s /tmp/su/busybox && \
                  su -s /bin/sh -c '/tmp/su/busybox ping -c 1 -W 2 127.0.0.1' nobody >/dev/null 2>&1 && echo suid-ok; \
                  su -s /bin/sh -c '/tmp/plain/busybox ping -c 1 -W 2 127.0.0.1' nobody >/dev/null 2>&1 && echo plain-ok; \
                  rm -rf /tmp/su /tmp/plain /etc/passwd; true";
    assert_eq!(ok(env, spec(&["sh", "-c", setuid])), "suid-ok\n");
    // no-new-privileges: the setuid bit grants nothing.
    assert_eq!(ok(env, with(&["--security-opt", "no-new-privileges"], &["sh", "-c", setuid])), "");
}

/// The `Seccomp:` line of /proc/self/status inside the container (0 none, 2 filter).
fn seccomp_mode(env: &Env, flags: &[&str]) -> String {
    let out = ok(env, with(flags, &["grep", "^Seccomp:", "/proc/self/status"]));
    out.split_whitespace().nth(1).unwrap_or_default().to_string()
}

fn seccomp(env: &Env) {
    assert_eq!(seccomp_mode(env, &[]), "2", "no filter by default");
    assert_eq!(seccomp_mode(env, &["--init"]), "2", "no filter on the command under --init");
    assert_eq!(seccomp_mode(env, &["--security-opt", "seccomp=unconfined"]), "0");
    assert_eq!(seccomp_mode(env, &["--privileged"]), "0", "--privileged is unconfined, as Docker's");
    // The default filter lets mount through only with CAP_SYS_ADMIN (`capabilities` shows
    // --cap-add SYS_ADMIN mounting under it); without, EPERM.
    let (r, _, err) = run_spec(env, spec(&["mount", "-t", "tmpfs", "none", "/tmp"]));
    assert_ne!(r.unwrap().code, 0);
    assert!(err.contains("Operation not permitted") || err.contains("permission denied"), "{err}");
    // A Docker-format profile that allows everything but mkdir/mkdirat: mkdir is refused, the
    // rest of the container runs.
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],
            "syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", profile.display());
    let (r, _, err) = run_spec(env, with(&["--security-opt", &opt], &["mkdir", "/tmp/x"]));
    assert_ne!(r.unwrap().code, 0, "mkdir worked under a profile that denies it");
    assert!(err.contains("Operation not permitted"), "{err}");
    assert_eq!(ok(env, with(&["--security-opt", &opt], &["echo", "runs"])), "runs\n");
    ok(env, spec(&["sh", "-c", "mkdir /tmp/y && rmdir /tmp/y"]));
}

fn devices(env: &Env) {
    // The host's block device under the container (its own volume's loop device): a node the
    // container makes for it, on the root or in /dev, does not open; nor does a character device
    // outside the standard set (/dev/mem is 1:1).
    let (maj, min) = devnum(&env.dev);
    for path in ["/tmp/blk", "/dev/blk"] {
        let cmd = format!("rm -f {path}; mknod {path} b {maj} {min} && head -c 512 {path} | wc -c");
        let (r, out, err) = run_spec(env, spec(&["sh", "-c", &cmd]));
        let r = r.unwrap();
        assert!(err.contains("Permission denied"), "{path}: read the host's block device: {out} {err} {r:?}");
        assert_eq!(out.trim(), "0", "{path}: {out}");
    }
    let (_, out, err) = run_spec(env, spec(&["sh", "-c", "rm -f /tmp/mem; mknod /tmp/mem c 1 1 && head -c 1 /tmp/mem | wc -c"]));
    assert!(err.contains("Permission denied") && out.trim() == "0", "/dev/mem opened: {out} {err}");
    // The standard nodes work.
    let out = ok(env, spec(&["sh", "-c", "echo x > /dev/null && head -c 4 /dev/zero | wc -c && head -c 4 /dev/urandom | wc -c"]));
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["4", "4"], "{out}");
    // --privileged lifts it (as Docker's does): the same node reads.
    let cmd = format!("rm -f /tmp/blk; mknod /tmp/blk b {maj} {min} && head -c 512 /tmp/blk | wc -c");
    assert_eq!(ok(env, with(&["--privileged"], &["sh", "-c", &cmd])).trim(), "512");
    ok(env, spec(&["rm", "-f", "/tmp/blk", "/tmp/mem"]));
}

fn nested_cgroups(env: &Env) {
    // A container with a writable cgroup2 (--privileged) that makes groups below its own and
    // leaves a process in the deepest: the teardown kills it and removes them all, at once
    // (removal was EBUSY for 10 s, then failed, while a child group existed).
    let mnt = runner::cgroup_mount().expect("cgroup v2 on this host");
    let group = mnt.join(format!("rcx-dm-host-nested-{}", std::process::id()));
    let script = "mkdir -p /sys/fs/cgroup/a/b && echo $$ > /sys/fs/cgroup/a/b/cgroup.procs && sleep 100 & sleep 0.2; \
                  cat /sys/fs/cgroup/a/b/cgroup.procs | wc -l";
    let (r, out, err) = run_in(env, with(&["--privileged"], &["sh", "-c", script]), Some((&mnt, &group)));
    assert_eq!(r.unwrap_or_else(|e| panic!("{e}: {err}")).code, 0, "{err}");
    assert!(out.trim().parse::<u32>().is_ok_and(|n| n > 0), "no process in the child group: {out} {err}");
    assert!(group.join("a/b").is_dir(), "the child group was not made");
    let t = std::time::Instant::now();
    runner::remove_cgroup(&group).unwrap();
    assert!(!group.exists(), "{} left", group.display());
    assert!(t.elapsed() < std::time::Duration::from_secs(2), "removal took {:?}", t.elapsed());
}

/// The host's perl and the libraries it loads (ldd), at the same paths in the image: busybox
/// has no tool for an arbitrary ioctl, a perl one-liner does TIOCSTI.
fn copy_perl(root: &Path) {
    let out = Command::new("ldd").arg("/usr/bin/perl").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut files = vec!["/usr/bin/perl".to_string()];
    files.extend(text.split_whitespace().filter(|w| w.starts_with('/')).map(str::to_string));
    for f in files {
        let to = root.join(f.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&f, &to).unwrap_or_else(|e| panic!("copying {f}: {e}"));
    }
}

/// The library directories of the copied perl (no ld.so.cache in the image).
const PERL_ENV: (&str, &str) = ("LD_LIBRARY_PATH", "/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu:/lib64:/lib");

/// What the user at the caller's terminal does when `trigger` first shows in the output.
#[derive(Clone, Copy)]
enum Act {
    Nothing,
    /// Resize the terminal (rows, cols) and send rcx-dm SIGWINCH, as a terminal emulator does.
    Resize(u16, u16),
    /// Send rcx-dm this signal.
    Signal(nix::sys::signal::Signal),
}

/// A run under a terminal of the test's making.
struct TtyRun {
    r: rcx_dm::Result<RunOutcome>,
    /// Everything written to the terminal, without the "\r"s of both terminals' ONLCR.
    out: String,
    err: String,
    /// The caller's terminal modes before and after the run.
    before: nix::sys::termios::Termios,
    after: nix::sys::termios::Termios,
    /// What is left in the caller's terminal's input queue afterwards (a complete line).
    left: String,
    /// The caller's terminal's device number, as stat prints it (%t:%T).
    rdev: String,
}

/// Run with the test's stdin and stdout on a fresh pty (the "caller's terminal", `rows` x
/// `cols`, `typed` already typed into it) and stderr to a file. A forked process plays the
/// terminal: it reads everything the run writes (so large outputs do not block) and does `act`
/// once `trigger` appears. (A process, not a thread: the runner clones this one, which must be
/// single-threaded.)
fn run_tty(env: &Env, spec: RunSpec, typed: &[u8], (rows, cols): (u16, u16), trigger: &str, act: Act) -> TtyRun {
    use nix::sys::termios::tcgetattr;
    use std::os::fd::AsFd;
    let ws = nix::pty::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    let pty = nix::pty::openpty(Some(&ws), None).unwrap();
    nix::unistd::write(&pty.master, typed).unwrap();
    let before = tcgetattr(&pty.slave).unwrap();
    let rdev = {
        let st = nix::sys::stat::fstat(&pty.slave).unwrap();
        format!("{:x}:{:x}", nix::sys::stat::major(st.st_rdev), nix::sys::stat::minor(st.st_rdev))
    };
    let (_dir, mount_dir, (o, of), (e, ef)) = scratch();
    let trig = trigger.as_bytes().to_vec();
    // SAFETY: this process is single-threaded; the child only reads, writes, signals and exits.
    let term = match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            // SAFETY: closing the slave in this child, so its master reads EOF once the test closes it.
            unsafe { libc::close(pty.slave.as_raw_fd()) };
            let (m, out) = (pty.master.as_raw_fd(), of.as_raw_fd());
            let mut seen: Vec<u8> = Vec::new();
            let mut done = trig.is_empty();
            let mut buf = [0u8; 4096];
            loop {
                // SAFETY: plain reads and writes on descriptors this child owns.
                let n = unsafe { libc::read(m, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    unsafe { libc::_exit(0) };
                }
                let chunk = &buf[..n as usize];
                unsafe { libc::write(out, chunk.as_ptr().cast(), chunk.len()) };
                seen.extend_from_slice(chunk);
                if !done && seen.windows(trig.len()).any(|w| w == trig.as_slice()) {
                    done = true;
                    let parent = nix::unistd::getppid();
                    match act {
                        Act::Nothing => {}
                        Act::Resize(r, c) => {
                            let ws = libc::winsize { ws_row: r, ws_col: c, ws_xpixel: 0, ws_ypixel: 0 };
                            unsafe { libc::ioctl(m, libc::TIOCSWINSZ, &ws) };
                            let _ = nix::sys::signal::kill(parent, nix::sys::signal::Signal::SIGWINCH);
                        }
                        Act::Signal(s) => {
                            let _ = nix::sys::signal::kill(parent, s);
                        }
                    }
                }
            }
        }
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop(of);
    let saved: Vec<_> = (0..3).map(|fd| nix::unistd::dup(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }).unwrap()).collect();
    // SAFETY: swapping fds 0, 1 and 2 of this single-threaded test process and back.
    unsafe {
        libc::dup2(pty.slave.as_raw_fd(), 0);
        libc::dup2(pty.slave.as_raw_fd(), 1);
        libc::dup2(ef.as_raw_fd(), 2);
    }
    let t = ContainerRoot { device: &env.dev, fs: Fs::Ext4, mount_dir: &mount_dir, cgroup: None, read_only_base: false, bridge: None, userns: None };
    let r = runner::run_container(&t, &spec, "host-test", &mut Vec::new());
    // SAFETY: as above.
    unsafe {
        for (fd, s) in saved.iter().enumerate() {
            libc::dup2(s.as_raw_fd(), fd as i32);
        }
    }
    let after = tcgetattr(&pty.slave).unwrap();
    // A complete line left unread on the caller's terminal (it is in canonical mode again).
    nix::fcntl::fcntl(&pty.slave, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).unwrap();
    let mut buf = [0u8; 4096];
    let left = match nix::unistd::read(pty.slave.as_fd(), &mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(_) => String::new(),
    };
    // Closing the last slave: the terminal process reads the rest, then EOF, and exits.
    drop(pty.slave);
    nix::sys::wait::waitpid(term, None).unwrap();
    TtyRun {
        r,
        out: std::fs::read_to_string(o).unwrap().replace('\r', ""),
        err: std::fs::read_to_string(e).unwrap(),
        before,
        after,
        left,
        rdev,
    }
}

fn tty_basics(env: &Env) {
    let script = "test -t 0 && test -t 1 && test -t 2 && echo all-tty; tty; stty size; \
                  echo console $(stat -c %t:%T /dev/console); for f in 0 1 2; do echo fd$f $(stat -L -c %t:%T /proc/$$/fd/$f); done; \
                  echo TERM=$TERM; cat /proc/self/stat; exit 7";
    let t = run_tty(env, with(&["-t"], &["sh", "-c", script]), b"", (33, 101), "", Act::Nothing);
    let r = t.r.unwrap_or_else(|e| panic!("{e}: {}", t.err));
    assert_eq!(r.code, 7, "{}{}", t.out, t.err);
    let lines: Vec<&str> = t.out.lines().collect();
    assert_eq!(lines[0], "all-tty", "{}", t.out);
    assert!(lines[1] == "/dev/console" || lines[1].starts_with("/dev/pts/"), "tty says {}", lines[1]);
    assert_eq!(lines[2], "33 101", "the caller's window size");
    // /dev/console and 0, 1, 2 are the container's pty, not the caller's terminal.
    let console = lines[3].strip_prefix("console ").unwrap();
    assert_ne!(console, t.rdev, "/dev/console is the caller's terminal");
    for l in &lines[4..7] {
        assert_eq!(l.split(' ').nth(1), Some(console), "{}", t.out);
    }
    assert!(t.out.contains("\nTERM="), "{}", t.out);
    // The pty is the session's controlling terminal (tty_nr, field 7, is not 0).
    assert_ne!(stat_field(lines[8], 6), "0", "no controlling terminal:\n{}", t.out);
    assert!(t.before == t.after, "the caller's terminal modes changed");

    // Output larger than any pty buffer arrives whole, and in order.
    let t = run_tty(env, with(&["-t"], &["seq", "1", "20000"]), b"", (24, 80), "", Act::Nothing);
    assert_eq!(t.r.unwrap().code, 0, "{}", t.err);
    let nums: Vec<&str> = t.out.lines().collect();
    assert_eq!(nums.len(), 20000, "lines lost");
    assert_eq!((nums[0], nums[19999]), ("1", "20000"));

    // Without -t: no /dev/console, no controlling terminal, though 1 is the caller's terminal.
    let script = "test -e /dev/console && echo console; echo fd1 $(stat -L -c %t:%T /proc/$$/fd/1); cat /proc/self/stat";
    let t = run_tty(env, spec(&["sh", "-c", script]), b"", (24, 80), "", Act::Nothing);
    assert_eq!(t.r.unwrap().code, 0, "{}", t.err);
    let lines: Vec<&str> = t.out.lines().collect();
    assert_eq!(lines[0], format!("fd1 {}", t.rdev), "{}", t.out);
    assert_eq!(stat_field(lines[1], 6), "0", "a controlling terminal without -t:\n{}", t.out);
}

fn tty_input(env: &Env) {
    // -it: what the caller types reaches the container; the caller's modes come back.
    let t = run_tty(env, with(&["-it"], &["sh", "-c", "read x; echo got $x"]), b"hello\n", (24, 80), "", Act::Nothing);
    assert_eq!(t.r.unwrap_or_else(|e| panic!("{e}: {}", t.err)).code, 0);
    assert!(t.out.lines().any(|l| l == "got hello"), "{}", t.out);
    assert!(t.before == t.after, "the caller's terminal modes were not restored");
    assert_eq!(t.left, "", "input left on the caller's terminal");
    // -t alone: the container's terminal gets nothing; what was typed stays with the caller.
    let script = "read -t 1 x && echo got $x || echo no-input";
    let t = run_tty(env, with(&["-t"], &["sh", "-c", script]), b"typed\n", (24, 80), "", Act::Nothing);
    assert_eq!(t.r.unwrap().code, 0, "{}", t.err);
    assert!(t.out.lines().any(|l| l == "no-input"), "{}", t.out);
    assert_eq!(t.left, "typed\n");
}

fn tty_resize(env: &Env) {
    let script = "stty size; echo READY; i=0; while [ \"$(stty size)\" = '33 101' ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; stty size";
    let t = run_tty(env, with(&["-t"], &["sh", "-c", script]), b"", (33, 101), "READY", Act::Resize(40, 120));
    assert_eq!(t.r.unwrap().code, 0, "{}", t.err);
    let lines: Vec<&str> = t.out.lines().collect();
    assert_eq!(lines.first(), Some(&"33 101"), "{}", t.out);
    assert_eq!(lines.last(), Some(&"40 120"), "the new size did not reach the container:\n{}", t.out);
}

fn tty_restored(env: &Env) {
    // SIGTERM to rcx-dm while in raw mode: forwarded (the init passes it to sh), the modes back.
    let s = with(&["-it", "--init"], &["sh", "-c", "echo READY; sleep 30"]);
    let t = run_tty(env, s, b"", (24, 80), "READY", Act::Signal(nix::sys::signal::Signal::SIGTERM));
    assert_eq!(t.r.unwrap().code, 143, "{}{}", t.out, t.err);
    assert!(t.before == t.after, "modes not restored after a forwarded signal");
    // A command that is not there: an error, the modes back.
    let t = run_tty(env, with(&["-it"], &["no-such-command"]), b"", (24, 80), "", Act::Nothing);
    assert!(matches!(t.r, Err(rcx_dm::Error::CommandNotFound { .. })), "{:?}", t.r.map(|r| r.code));
    assert!(t.before == t.after, "modes not restored after an error");
}

/// TIOCSTI of "echo INJECTED\n" on `fh` (STDIN or STDOUT), one character at a time.
fn tiocsti_script(fh: &str) -> String {
    format!(
        "perl -e 'for (split //, \"echo INJECTED\\n\") {{ ioctl({fh}, 0x5412, $_) or die \"TIOCSTI: $!\\n\" }} print \"injected\\n\"'; \
         read -t 1 x && echo \"container read: $x\"; true"
    )
}

fn tiocsti(env: &Env) {
    let perl = |mut s: RunSpec| {
        s.env.push((PERL_ENV.0.into(), PERL_ENV.1.into()));
        s
    };
    // -t: the container's own terminal takes the characters, and the container reads them back;
    // nothing reaches the caller's terminal. (A kernel with dev.tty.legacy_tiocsti=0 refuses
    // TIOCSTI outright: then only the second half holds.)
    let t = run_tty(env, perl(with(&["-t"], &["sh", "-c", &tiocsti_script("STDIN")])), b"", (24, 80), "", Act::Nothing);
    assert_eq!(t.r.unwrap_or_else(|e| panic!("{e}: {}", t.err)).code, 0, "{}", t.err);
    let legacy = std::fs::read_to_string("/proc/sys/dev/tty/legacy_tiocsti").map_or(true, |v| v.trim() == "1");
    if legacy {
        assert!(t.out.contains("injected\n") && t.out.contains("container read: echo INJECTED"), "{:?} {}", t.out, t.err);
    }
    assert_eq!(t.left, "", "TIOCSTI reached the caller's terminal");
    // Without -t the caller's terminal is the container's stdout, but not its controlling
    // terminal: TIOCSTI on it is refused (it would need CAP_SYS_ADMIN).
    let t = run_tty(env, perl(spec(&["sh", "-c", &tiocsti_script("STDOUT")])), b"", (24, 80), "", Act::Nothing);
    assert_eq!(t.r.unwrap().code, 0, "{}", t.err);
    assert!(t.err.contains("TIOCSTI: ") && !t.out.contains("injected"), "{}{}", t.out, t.err);
    assert_eq!(t.left, "", "TIOCSTI reached the caller's terminal");
}

/// `--userns` as the CLI asks for it, with a range taken from `runs` (standing for a pool's
/// `runs/` directory); run and require status 0. Returns (range, stdout).
fn ok_userns(env: &Env, runs: &Path, want: Userns, argv: &[&str]) -> (IdRange, String) {
    let lease = UsernsLease::acquire(runs, &want).unwrap();
    let s = RunSpec { userns: Some(want), ..spec(argv) };
    let (r, out, err) = run_with(env, s, None, Some(lease.range()));
    let r = r.unwrap_or_else(|e| panic!("{want} {argv:?}: {e}\nstderr: {err}"));
    assert_eq!(r.code, 0, "{want} {argv:?} exited {}:\n{out}{err}", r.code);
    (lease.range(), out)
}

fn owner(p: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid())
}

fn userns(env: &Env) {
    let runs = tempfile::tempdir().unwrap();
    // An image file owned by an on-disk id inside every range (1000), and one outside a small
    // range (5000).
    mount(env, false);
    for (f, id) in [("etc/u1000", 1000), ("etc/u5000", 5000)] {
        std::fs::write(env.mnt.join(f), "x").unwrap();
        nix::unistd::chown(&env.mnt.join(f), Some(nix::unistd::Uid::from_raw(id)), Some(nix::unistd::Gid::from_raw(id))).unwrap();
    }
    umount(env);
    let script = "id -u; id -g; stat -c %u:%g /etc/marker /etc/u1000; cat /proc/self/uid_map /proc/self/gid_map; \
                  rm -f /tmp/made /tmp/made1000; touch /tmp/made /tmp/made1000; chown 1000:1000 /tmp/made1000; \
                  stat -c %u:%g /tmp/made /tmp/made1000; head -1 /proc/mounts; grep ^CapEff /proc/self/status; \
                  echo x > /dev/null && head -c 4 /dev/zero | wc -c";
    for want in [Userns::Auto, Userns::Range(IdRange { host: 200000, count: 65536 })] {
        let (range, out) = ok_userns(env, runs.path(), want, &["sh", "-c", script]);
        if want == Userns::Auto {
            assert_eq!(range, IdRange { host: runner::AUTO_FIRST, count: runner::AUTO_COUNT });
        }
        let l: Vec<&str> = out.lines().collect();
        assert_eq!(&l[..4], &["0", "0", "0:0", "1000:1000"], "{want}: root inside, the image's owners as they are on disk:\n{out}");
        let map = format!("0 {} {}", range.host, range.count);
        assert_eq!(l[4].split_whitespace().collect::<Vec<_>>().join(" "), map, "{out}");
        assert_eq!(l[5].split_whitespace().collect::<Vec<_>>().join(" "), map, "{out}");
        assert_eq!(&l[6..8], &["0:0", "1000:1000"], "{out}");
        assert!(l[8].starts_with(&format!("{} / ext4 ", env.dev.display())) && l[8].contains("idmapped") && l[8].contains("nodev"), "{out}");
        // Capabilities are the default set, relative to the user namespace.
        assert_eq!(l[9].split_whitespace().nth(1), Some("00000000a80425fb"), "{out}");
        assert_eq!(l[10], "4", "the standard nodes work:\n{out}");
        // On disk (the volume mounted normally): what container root made is uid 0, the
        // idmapped mount's inverse; what it gave 1000 is 1000.
        mount(env, true);
        assert_eq!(owner(&env.mnt.join("tmp/made")), (0, 0), "{want}");
        assert_eq!(owner(&env.mnt.join("tmp/made1000")), (1000, 1000), "{want}");
        umount(env);
    }
    // A range of 1000 ids: on-disk 5000 is outside it and shows as the overflow id.
    let (_, out) = ok_userns(env, runs.path(), Userns::Range(IdRange { host: 300000, count: 1000 }), &["stat", "-c", "%u:%g", "/etc/marker", "/etc/u5000"]);
    assert_eq!(out, "0:0\n65534:65534\n");
    // The rest of the isolation holds under --userns too: --init, only 0, 1, 2 open and no host
    // directory (the ids pipe and the detached mount are closed), masked /proc, the cgroup
    // namespace, --read-only.
    let mnt = runner::cgroup_mount().expect("cgroup v2 on this host");
    let group = mnt.join(format!("rcx-dm-host-test-userns-{}", std::process::id()));
    // (--init's PID 1 never execs, so it stays non-dumpable after becoming the namespace's root:
    // its /proc entries are the host root's, and nothing in the container reads its descriptors.)
    let checks = format!("PIDS=2; {FD_SCRIPT}; ls /proc/1/fd >/dev/null 2>&1 || echo pid1-closed; cat /proc/kcore | wc -c; \
                          cat /proc/self/cgroup; echo x > /proc/sys/kernel/core_pattern || echo refused; grep ' /sys/fs/cgroup ' /proc/mounts");
    let lease = UsernsLease::acquire(runs.path(), &Userns::Auto).unwrap();
    let s = RunSpec { userns: Some(Userns::Auto), ..with(&["--init"], &["sh", "-c", &checks]) };
    let (r, out, err) = run_with(env, s, Some((&mnt, &group)), Some(lease.range()));
    runner::remove_cgroup(&group).unwrap();
    assert_eq!(r.unwrap_or_else(|e| panic!("{e}: {err}")).code, 0, "{out}{err}");
    let nums: Vec<&str> = out.lines().filter(|l| l.starts_with("2 ") && !l.contains(" cwd ")).map(|l| l.split(' ').nth(1).unwrap()).collect();
    assert_eq!(nums, ["0", "1", "2"], "PID 2:\n{out}");
    assert!(!out.contains("DIR") && out.contains("2 cwd / root /") && out.contains("pid1-closed"), "{out}");
    assert!(out.lines().any(|l| l == "0") && out.lines().any(|l| l == "0::/") && out.contains("refused"), "{out}");
    assert!(out.contains("cgroup2 ro,") || out.contains(" cgroup2 ro"), "{out}");
    let (r, _, err) = run_with(env, RunSpec { userns: Some(Userns::Auto), read_only: true, ..spec(&["touch", "/etc/new"]) }, None, Some(lease.range()));
    assert_ne!(r.unwrap().code, 0, "wrote to a read-only root");
    assert!(err.contains("Read-only file system"), "{err}");
    drop(lease);
    // Released after each run: nothing left in the lease directory but the allocation lock.
    let left: Vec<String> = std::fs::read_dir(runs.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, ["userns.lock"], "{left:?}");
    ok(env, spec(&["rm", "-f", "/tmp/made", "/tmp/made1000", "/etc/u1000", "/etc/u5000"]));
}

/// A container started in a forked copy of this process, holding its own lease from `runs`,
/// in cgroup `group` (killed by the caller through it). Returns the fork's pid.
fn spawn_userns(env: &Env, runs: &Path, want: Userns, mnt: &Path, group: &Path) -> nix::unistd::Pid {
    std::io::stdout().flush().unwrap();
    // SAFETY: this test process is single-threaded; the fork only runs the container and exits.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Parent { child } => child,
        nix::unistd::ForkResult::Child => {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let lease = UsernsLease::acquire(runs, &want).unwrap();
                let s = RunSpec { userns: Some(want), ..spec(&["sleep", "60"]) };
                let (r, _, _) = run_with(env, s, Some((mnt, group)), Some(lease.range()));
                r.unwrap();
            }));
            // SAFETY: leave the forked copy without running the test's destructors.
            unsafe { libc::_exit(r.is_err() as i32) }
        }
    }
}

/// The container process in `group` once it is there: (pid, host uid, host gid).
fn container_ids(group: &Path) -> (u32, u32, u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let procs = std::fs::read_to_string(group.join("cgroup.procs")).unwrap_or_default();
        if let Some(pid) = procs.lines().next().and_then(|p| p.parse::<u32>().ok()) {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.split_whitespace().next()?.parse().ok());
            // The command itself (not the child before its exec, which still has rcx-dm's ids).
            if status.contains("Name:\tsleep") {
                if let (Some(u), Some(g)) = (field("Uid:"), field("Gid:")) {
                    return (pid, u, g);
                }
            }
        }
        assert!(std::time::Instant::now() < deadline, "no container in {}", group.display());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn userns_concurrent(env: &Env) {
    let runs = tempfile::tempdir().unwrap();
    let mnt = runner::cgroup_mount().expect("cgroup v2 on this host");
    let groups: Vec<PathBuf> = (0..2).map(|i| mnt.join(format!("rcx-dm-host-test-userns-{}-{i}", std::process::id()))).collect();
    let r = std::panic::catch_unwind(|| {
        let kids: Vec<_> = groups.iter().map(|g| spawn_userns(env, runs.path(), Userns::Auto, &mnt, g)).collect();
        let ids: Vec<(u32, u32, u32)> = groups.iter().map(|g| container_ids(g)).collect();
        let mut hosts: Vec<u32> = ids.iter().map(|(_, u, g)| {
            assert_eq!(u, g, "uid and gid map alike");
            *u
        }).collect();
        hosts.sort_unstable();
        // Disjoint ranges: the first two automatic ones, whichever run took which.
        let first = runner::AUTO_FIRST;
        assert_eq!(hosts, [first, first + runner::AUTO_COUNT], "{ids:?}");
        // Seen from the host through the container's idmapped mount, the image's root-owned
        // file belongs to the container's first host id.
        for (pid, uid, _) in &ids {
            assert_eq!(owner(Path::new(&format!("/proc/{pid}/root/etc/marker"))), (*uid, *uid));
        }
        // While they live, a range overlapping one of theirs is refused.
        let e = UsernsLease::acquire(runs.path(), &Userns::Range(IdRange { host: first + 5, count: 1 })).unwrap_err();
        assert!(e.to_string().contains("another live run uses the range"), "{e}");
        for g in &groups {
            std::fs::write(g.join("cgroup.kill"), "1").unwrap();
        }
        for k in kids {
            // Killed by SIGKILL: the run itself returned normally (status 137), so the fork exits 0.
            assert_eq!(nix::sys::wait::waitpid(k, None).unwrap(), nix::sys::wait::WaitStatus::Exited(k, 0));
        }
        // Released with the runs: the next run gets the first range again.
        assert_eq!(UsernsLease::acquire(runs.path(), &Userns::Auto).unwrap().range().host, first);
    });
    for g in &groups {
        runner::remove_cgroup(g).unwrap();
    }
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

fn userns_refused(env: &Env) {
    let range = IdRange { host: 200000, count: 65536 };
    let u = Some(Userns::Range(range));
    let mut privileged = RunSpec { userns: u, ..spec(&["true"]) };
    privileged.security.privileged = true;
    for (s, given, needle) in [
        (privileged, Some(range), "--privileged"),
        (RunSpec { userns: u, net: Net::Host, ..spec(&["true"]) }, Some(range), "--net host"),
        (RunSpec { userns: u, ..spec(&["true"]) }, None, "no range was taken"),
        (spec(&["true"]), Some(range), "asks for no user namespace"),
        (RunSpec { userns: Some(Userns::Range(IdRange { host: 0, count: 10 })), ..spec(&["true"]) }, Some(IdRange { host: 0, count: 10 }), "uid 0"),
    ] {
        let (r, out, err) = run_with(env, s, None, given);
        let e = r.expect_err(needle);
        assert!(matches!(e, rcx_dm::Error::Userns { .. }) && e.to_string().contains(needle), "{needle}: {e}");
        assert!(out.is_empty() && err.is_empty(), "nothing ran: {out}{err}");
    }
}
