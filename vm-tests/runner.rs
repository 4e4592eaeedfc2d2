//! `rcx-dm run` against the real kernel: a busybox-static root filesystem on a thin volume
//! (made by the test: mkfs.ext4, /bin/busybox and applet links), marked read-only as a base.
//! Isolation (ps, hostname, /proc/mounts, ls /), file isolation between snapshot and base,
//! in-place runs of writable volumes and their refusals, cgroup v2 limits (memory, pids, cpu),
//! exit statuses, `-t` under a terminal of the test's making (TIOCSTI inside included),
//! teardown (nothing left behind, even when rcx-dm is SIGKILLed), the escapes refused by the
//! default isolation, and `--userns auto` (root inside is an unprivileged range outside, files
//! stay uid 0 on disk).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const APPLETS: &[&str] = &[
    "sh", "ps", "hostname", "cat", "ls", "mkdir", "echo", "sleep", "true", "false", "touch", "dd", "kill", "wc", "seq",
    "env", "pwd", "grep", "ip", "ping", "nc", "mknod", "head", "unshare", "mount", "chown", "readlink", "rm", "stty",
    "stat",
];
/// What `ls /` shows in the base.
const ROOT_ENTRIES: &[&str] = &["bin", "dev", "etc", "lost+found", "proc", "root", "sys", "tmp"];

/// A read-only busybox base volume named `name`; returns its id and device.
pub(crate) fn make_base(s: &Scenario, name: &str) -> (u32, PathBuf) {
    let dev = s.device(&["thin", "create", "--size", "64M", "--name", name]);
    mkfs_ext4(&dev);
    {
        let m = Mount::new(&dev, &format!("{}-{name}", s.pool));
        for d in ["bin", "dev", "proc", "sys", "etc", "root", "tmp"] {
            std::fs::create_dir_all(m.path(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", m.path("bin/busybox")).expect("copy the host's busybox-static");
        for a in APPLETS {
            std::os::unix::fs::symlink("busybox", m.path(&format!("bin/{a}"))).unwrap();
        }
        std::fs::write(m.path("etc/marker"), "base\n").unwrap();
    }
    let out = s.ok(&["set-readonly", name]);
    assert!(out.contains("read-only"), "{out}");
    let info = s.json(&["info", name, "--json"]);
    assert_eq!(info["read_only"], true, "{info}");
    (info["id"].as_u64().unwrap() as u32, dev)
}

/// Look at a volume without writing to it (a read-write mount would touch the superblock).
fn with_read_only_mount(dev: &Path, tag: &str, f: impl FnOnce(&Path)) {
    let dir = scratch().join(format!("ro-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    nix::mount::mount(Some(dev), &dir, Some("ext4"), nix::mount::MsFlags::MS_RDONLY, Some("noload")).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&dir)));
    umount(&dir).unwrap();
    let _ = std::fs::remove_dir(&dir);
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

fn run(s: &Scenario, args: &[&str]) -> Output {
    let mut a = vec!["run"];
    a.extend_from_slice(args);
    s.cli(&a)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run and require `code`; returns stdout.
fn run_code(s: &Scenario, args: &[&str], code: i32) -> String {
    let o = run(s, args);
    assert_eq!(o.status.code(), Some(code), "run {args:?}:\nstdout: {}\nstderr: {}", text(&o.stdout), text(&o.stderr));
    text(&o.stdout)
}

fn spawn_run(s: &Scenario, args: &[&str], stdin: Stdio) -> Child {
    Command::new(bin())
        .arg("run")
        .args(args)
        .env("RCX_DM_ROOT", &s.root)
        .env("RCX_DM_POOL", &s.pool)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rcx-dm run")
}

fn finish(mut c: Child) -> (Option<i32>, String) {
    let status = c.wait().unwrap();
    let mut err = String::new();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status.code(), err)
}

/// The cgroups of this scenario's runs.
pub(crate) fn run_cgroups(s: &Scenario) -> Vec<PathBuf> {
    let prefix = format!("{}-", s.pool);
    match std::fs::read_dir("/sys/fs/cgroup/rcx-dm") {
        Ok(d) => d
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)))
            .map(|e| e.path())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Wait for the (single) running container of this scenario; returns its cgroup.
fn wait_for_container(s: &Scenario) -> PathBuf {
    wait_for("the container's cgroup to hold a process", 60, || {
        let cg = run_cgroups(s).into_iter().next()?;
        let procs = std::fs::read_to_string(cg.join("cgroup.procs")).ok()?;
        (!procs.trim().is_empty()).then_some(cg)
    })
}

pub(crate) fn cg_read(cg: &Path, file: &str) -> String {
    std::fs::read_to_string(cg.join(file)).unwrap_or_default().trim().to_string()
}

pub(crate) fn volume_names(s: &Scenario) -> Vec<String> {
    let mut v: Vec<String> = volume_list(s)
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().map_or_else(|| v["id"].to_string(), str::to_string))
        .collect();
    v.sort();
    v
}

/// After the runs: no cgroup, no run record, no mount of any of the pool's devices anywhere
/// (every live thin device has open count 0, so nothing holds it), and the only live devices
/// are the pool and the volumes `list` calls active.
pub(crate) fn assert_nothing_left(s: &Scenario) {
    assert_eq!(run_cgroups(s), Vec::<PathBuf>::new(), "cgroups left behind");
    let runs = s.pool_dir().join("runs");
    let left: Vec<String> = std::fs::read_dir(&runs)
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "run records left in {}: {left:?}", runs.display());
    let dm = dm();
    let active: Vec<String> = volume_list(s)
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["active"] == true)
        .map(|v| s.dm_name(v["id"].as_u64().unwrap() as u32))
        .collect();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for name in dm.list().unwrap().into_iter().filter(|n| n.starts_with(&s.dm_prefix())) {
        if name.ends_with("-pool") {
            continue;
        }
        assert!(active.contains(&name), "dm device {name} is live but its volume is not active (leaked)");
        let info = dm.info(&name).unwrap().unwrap();
        assert_eq!(info.open_count, 0, "{name} is still open (mounted in some namespace?)");
        let devnum = format!(" {}:{} ", info.dev.major, info.dev.minor);
        assert!(!mountinfo.contains(&devnum), "{name} is still mounted:\n{mountinfo}");
    }
    assert!(!mountinfo.contains(path_str(&runs)), "a run's root is mounted on the host:\n{mountinfo}");
}

#[test]
fn runner_isolation_pid1_hostname_mounts_and_exit_statuses() {
    let s = Scenario::new("runiso");
    s.ok(&["pool", "create", "--data-size", "4G"]);
    let (_, base_dev) = make_base(&s, "base");

    // ps: only the container's processes, the command being PID 1.
    let ps = run_code(&s, &["--rm", "base", "--", "sh", "-c", "sleep 10 & ps; kill $!"], 0);
    let procs: Vec<Vec<&str>> = ps.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(procs.len(), 3, "ps lists more than sh, sleep and itself:\n{ps}");
    assert_eq!(procs[0][0], "1", "{ps}");
    assert_eq!(procs[0][2..].join(" "), "sh -c sleep 10 & ps; kill $!", "the command is PID 1:\n{ps}");
    assert!(procs.iter().all(|p| p[0].parse::<u32>().unwrap() < 10), "host pids visible:\n{ps}");

    assert_eq!(run_code(&s, &["--rm", "--hostname", "box1", "base", "--", "hostname"], 0), "box1\n");
    assert_eq!(run_code(&s, &["--rm", "--name", "named1", "base", "--", "hostname"], 0), "named1\n");

    // /proc/mounts: the volume as /, fresh proc, sysfs read-only, the minimal /dev; nothing of
    // the host (9p root, tmpfs scratch, the pool's files) and no old root.
    let mounts = run_code(&s, &["--rm", "base", "--", "cat", "/proc/mounts"], 0);
    // (Below /proc and /sys: runc's masked and read-only paths and cgroup2 read-only. The
    // standard device nodes are bind mounts of their own: /dev under them is nodev.)
    let mut points: Vec<&str> = mounts
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap())
        .filter(|p| !p.starts_with("/proc/") && !p.starts_with("/sys/"))
        .collect();
    points.sort_unstable();
    assert_eq!(
        points,
        ["/", "/dev", "/dev/full", "/dev/null", "/dev/pts", "/dev/random", "/dev/shm", "/dev/tty", "/dev/urandom", "/dev/zero", "/proc", "/sys"],
        "{mounts}"
    );
    assert!(mounts.lines().any(|l| l.starts_with("tmpfs /dev tmpfs rw,nosuid,nodev,")), "{mounts}");
    assert!(first_is_nodev(&mounts), "the root is not nodev:\n{mounts}");
    assert!(mounts.lines().any(|l| l.starts_with("cgroup /sys/fs/cgroup cgroup2 ro,")), "{mounts}");
    assert!(mounts.lines().any(|l| l.starts_with("proc /proc/sys proc ro,")), "{mounts}");
    let first: Vec<&str> = mounts.lines().next().unwrap().split(' ').collect();
    assert!(first[0].starts_with(&format!("/dev/mapper/{}", s.dm_prefix())), "{mounts}");
    assert_ne!(Path::new(first[0]), base_dev, "the root is a snapshot, not the base:\n{mounts}");
    assert_eq!((first[2], first[3].split(',').next()), ("ext4", Some("rw")), "{mounts}");
    for host in ["9p", "rcx-dm-scratch", "virtme", "overlay", "oldroot", path_str(&s.root)] {
        assert!(!mounts.contains(host), "/proc/mounts shows '{host}':\n{mounts}");
    }

    // ls / is the volume's.
    let ls = run_code(&s, &["--rm", "base", "--", "ls", "/"], 0);
    let mut got: Vec<&str> = ls.split_whitespace().collect();
    got.sort_unstable();
    assert_eq!(got, ROOT_ENTRIES, "{ls}");

    // Exit statuses come back: 0, 3, and 137 for a command killed with SIGKILL (from the host).
    run_code(&s, &["--rm", "base", "--", "true"], 0);
    run_code(&s, &["--rm", "base", "--", "sh", "-c", "exit 3"], 3);
    let c = spawn_run(&s, &["--rm", "base", "--", "sleep", "60"], Stdio::null());
    let cg = wait_for_container(&s);
    let pid: i32 = cg_read(&cg, "cgroup.procs").lines().next().unwrap().parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let (code, err) = finish(c);
    assert_eq!(code, Some(137), "{err}");
    assert!(err.contains("killed by signal 9 (SIGKILL)"), "{err}");

    // A command the root filesystem lacks: 127 and a clear message; nothing is kept.
    let o = run(&s, &["base", "--", "no-such-command", "arg"]);
    assert_eq!(o.status.code(), Some(127), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("command 'no-such-command' not found in the container's root filesystem"), "{err}");

    // Every run above had --rm (or failed): only the base is left.
    assert_eq!(volume_names(&s), ["base"]);
    assert_nothing_left(&s);
}

#[test]
fn runner_snapshot_isolation_in_place_runs_and_refusals() {
    let s = Scenario::new("runsnap");
    s.ok(&["pool", "create", "--data-size", "4G"]);
    let (base_id, base_dev) = make_base(&s, "base");
    let before = device_digest(&base_dev);

    // A file written inside lands in the container's snapshot only.
    let o = run(&s, &["--name", "c1", "base", "--", "sh", "-c", "echo hi > /root/file && mkdir /newdir"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("(c1) kept"), "{}", text(&o.stderr));
    let c1 = s.json(&["info", "c1", "--json"]);
    assert_eq!(c1["parent"], base_id, "{c1}");
    assert_eq!((c1["active"].as_bool(), c1["read_only"].as_bool()), (Some(false), Some(false)), "{c1}");
    assert_eq!(device_digest(&base_dev), before, "the base changed");
    with_read_only_mount(&base_dev, &format!("{}-base-ro", s.pool), |dir| {
        assert!(!dir.join("root/file").exists() && !dir.join("newdir").exists(), "the write reached the base");
    });
    let c1_dev = s.device(&["activate", "c1"]);
    {
        let m = Mount::new(&c1_dev, &format!("{}-c1", s.pool));
        assert_eq!(std::fs::read_to_string(m.path("root/file")).unwrap(), "hi\n");
        // Mounted read-write elsewhere: refused.
        let o = run(&s, &["c1", "--", "true"]);
        assert_eq!(o.status.code(), Some(125));
        let err = text(&o.stderr);
        assert!(err.contains("is mounted read-write at") && err.contains(path_str(&m.dir)), "{err}");
    }
    s.ok(&["deactivate", "c1"]);

    // A writable volume runs in place: no new volume, the file is there, and it is inactive
    // again afterwards (it was before).
    assert_eq!(run_code(&s, &["c1", "--", "cat", "/root/file"], 0), "hi\n");
    assert_eq!(volume_names(&s), ["base", "c1"]);
    assert_eq!(s.json(&["info", "c1", "--json"])["active"], false);

    // Two runs of one writable volume at once: the second is refused.
    let c = spawn_run(&s, &["c1", "--", "sleep", "5"], Stdio::null());
    wait_for_container(&s);
    let o = run(&s, &["c1", "--", "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("in use by another rcx-dm run"), "{}", text(&o.stderr));
    assert_eq!(finish(c).0, Some(0));

    // --read-only on a base mounts the base itself read-only: no snapshot, no write.
    let o = run(&s, &["--read-only", "base", "--", "touch", "/etc/x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("Read-only file system"), "{}", text(&o.stderr));
    assert_eq!(run_code(&s, &["--read-only", "base", "--", "cat", "/etc/marker"], 0), "base\n");
    assert_eq!(volume_names(&s), ["base", "c1"]);
    assert_eq!(device_digest(&base_dev), before, "a read-only run changed the base");

    // --rm deletes the snapshot; a duplicate --name is refused before anything happens.
    run_code(&s, &["--rm", "--name", "tmp1", "base", "--", "true"], 0);
    let o = run(&s, &["--name", "c1", "base", "--", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(text(&o.stderr).contains("'c1'"), "{}", text(&o.stderr));

    // A volume that does not exist.
    let o = run(&s, &["nosuch", "--", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(text(&o.stderr).contains("no volume 'nosuch'"), "{}", text(&o.stderr));

    assert_eq!(volume_names(&s), ["base", "c1"]);
    assert_nothing_left(&s);
}

#[test]
fn runner_cgroup_limits_memory_pids_and_cpu() {
    assert_eq!(
        nix::sys::statfs::statfs("/sys/fs/cgroup").unwrap().filesystem_type().0 as i64,
        0x6367_7270,
        "the guest must have cgroup v2 at /sys/fs/cgroup"
    );
    let s = Scenario::new("runcg");
    s.ok(&["pool", "create", "--data-size", "4G"]);
    make_base(&s, "base");

    // --memory 32M with a hog (dd's 64M buffer): the OOM killer kills it, reported, 137.
    let o = run(&s, &["--rm", "--memory", "32M", "base", "--", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(137), "{err}");
    assert!(err.contains("ran out of memory (--memory 32M)") && err.contains("OOM killer"), "{err}");
    // The same with room to spare succeeds.
    run_code(&s, &["--rm", "--memory", "256M", "base", "--", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"], 0);

    // --pids 16: 64 background sleeps cannot all start; the shell fails to fork, exits, and
    // the sleeps it did start die with it (well before their 60 s).
    let t = Instant::now();
    let o = run(&s, &["--rm", "--pids", "16", "base", "--", "sh", "-c", "i=0; while [ $i -lt 64 ]; do sleep 60 & i=$((i+1)); done"]);
    let err = text(&o.stderr);
    assert!(!o.status.success(), "64 processes started under --pids 16:\n{err}");
    assert!(err.contains("can't fork"), "{err}");
    assert!(err.contains("the process limit (--pids 16) refused"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(50), "the contained processes outlived the container");

    // The group's files while a container runs.
    let c = spawn_run(&s, &["--rm", "--cpus", "0.5", "--memory", "64M", "--pids", "32", "base", "--", "sleep", "3"], Stdio::null());
    let cg = wait_for_container(&s);
    assert_eq!(cg_read(&cg, "cpu.max"), "50000 100000");
    assert_eq!(cg_read(&cg, "memory.max"), (64u64 << 20).to_string());
    assert_eq!(cg_read(&cg, "pids.max"), "32");
    assert_eq!(cg_read(&cg, "memory.swap.max"), "0");
    assert_eq!(finish(c).0, Some(0));

    assert_eq!(volume_names(&s), ["base"]);
    assert_nothing_left(&s);
}

#[test]
fn runner_sigkill_of_rcx_dm_mid_run_is_cleaned_by_the_next_command() {
    let s = Scenario::new("runkill");
    s.ok(&["pool", "create", "--data-size", "4G"]);
    make_base(&s, "base");

    // A fork bomb under --pids 16 (PID 1 waits on its stdin, which the test holds open: -i).
    let c = spawn_run(&s, &["--rm", "-i", "--pids", "16", "base", "--", "sh", "-c", "bomb() { bomb | bomb & }; bomb; read x"], Stdio::piped());
    let cg = wait_for_container(&s);
    wait_for("the fork bomb to hit pids.max", 60, || {
        let n: u64 = cg_read(&cg, "pids.current").parse().ok()?;
        assert!(n <= 16, "pids.current {n} > pids.max 16");
        cg_read(&cg, "pids.events").strip_prefix("max ")?.parse::<u64>().ok().filter(|m| *m > 0)
    });
    for _ in 0..10 {
        let n: u64 = cg_read(&cg, "pids.current").parse().unwrap_or(0);
        assert!(n <= 16, "pids.current {n} > 16");
        std::thread::sleep(Duration::from_millis(100));
    }
    let names = volume_names(&s);
    assert_eq!(names.len(), 2, "{names:?}");
    let snap = names.iter().find(|n| n.starts_with("run-")).expect("the run's snapshot").clone();

    // A second run, without --rm and on the bridge, killed the same way: its snapshot is kept,
    // deactivated, and its address released.
    let c2 = spawn_run(&s, &["--name", "keep", "--net", "bridge", "base", "--", "sleep", "600"], Stdio::null());
    wait_for("the second container", 60, || (run_cgroups(&s).len() == 2).then_some(()));

    for mut child in [c, c2] {
        child.kill().unwrap(); // SIGKILL: rcx-dm runs no code after this
        child.wait().unwrap();
    }
    let runs = s.pool_dir().join("runs");
    let recorded = std::fs::read_dir(&runs).unwrap().flatten().filter(|e| e.path().is_dir()).count();
    assert_eq!(recorded, 2, "both runs' records survive rcx-dm's death");
    // The containers die with rcx-dm (PR_SET_PDEATHSIG).
    wait_for("the containers to die with rcx-dm", 30, || {
        run_cgroups(&s).iter().all(|cg| cg_read(cg, "cgroup.events").contains("populated 0")).then_some(())
    });

    // The next command, whatever it is, cleans up.
    let names = volume_names(&s);
    assert_eq!(names, ["base", "keep"], "the --rm snapshot {snap} must be deleted, 'keep' kept");
    assert_eq!(s.json(&["info", "keep", "--json"])["active"], false, "the kept snapshot is deactivated");
    let claims: Vec<String> = std::fs::read_dir("/run/rcx-dm/ips")
        .map(|d| d.flatten().filter_map(|e| std::fs::read_to_string(e.path()).ok()).collect())
        .unwrap_or_default();
    assert!(!claims.iter().any(|c| c.contains(path_str(&s.pool_dir()))), "address claims left: {claims:?}");
    assert_nothing_left(&s);
    // And the pool is fine: the kept volume runs again (in place).
    assert_eq!(run_code(&s, &["keep", "--", "cat", "/etc/marker"], 0), "base\n");
    assert_nothing_left(&s);
}

#[test]
fn runner_net_bridge_connects_two_containers() {
    let s = Scenario::new("runnet");
    s.ok(&["pool", "create", "--data-size", "4G"]);
    make_base(&s, "base");

    // A tells its address, then serves one message.
    let mut a = spawn_run(
        &s,
        &["--rm", "--net", "bridge", "base", "--", "sh", "-c", "ip -o -4 addr show dev eth0; ip route; nc -l -p 7000 </dev/null"],
        Stdio::null(),
    );
    let mut out = a.stdout.take().unwrap();
    let mut seen = String::new();
    let addr = wait_for("container A to print its address", 60, || {
        let mut b = [0u8; 256];
        let n = out.read(&mut b).ok()?;
        seen.push_str(&String::from_utf8_lossy(&b[..n]));
        let inet = seen.lines().find_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1))?;
        seen.contains("default via").then(|| inet.to_string())
    });
    let ip = addr.strip_suffix("/16").unwrap_or_else(|| panic!("A's address {addr} is not in a /16:\n{seen}"));
    assert!(ip.starts_with("10.77."), "{seen}");
    assert!(seen.contains("default via 10.77.0.1 dev eth0"), "{seen}");
    let host_end = format!("/sys/class/net/rcx{}", s.pool_dir().join("runs").read_dir().unwrap().flatten()
        .find(|e| e.path().is_dir()).expect("A's run record").file_name().to_string_lossy());
    assert!(Path::new(&host_end).exists(), "the host end {host_end} of A's veth pair");
    assert_eq!(std::fs::read_to_string("/sys/class/net/rcx0/bridge/bridge_id").is_ok(), true, "the bridge rcx0");

    // B reaches A: ping, then a TCP message.
    let b = run_code(
        &s,
        &["--rm", "--net", "bridge", "base", "--", "sh", "-c", &format!("ping -c 1 -W 10 {ip} >/dev/null && echo ping-ok; echo hello-from-b | nc {ip} 7000")],
        0,
    );
    assert!(b.contains("ping-ok"), "{b}");
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let (code, err) = finish(a);
    assert_eq!(code, Some(0), "{err}");
    assert!(rest.contains("hello-from-b"), "A got: {rest}");

    // The pairs went with the containers' network namespaces; the addresses are released.
    assert!(!Path::new(&host_end).exists(), "{host_end} is left");
    let claims: Vec<String> = std::fs::read_dir("/run/rcx-dm/ips")
        .map(|d| d.flatten().filter_map(|e| std::fs::read_to_string(e.path()).ok()).collect())
        .unwrap_or_default();
    assert!(!claims.iter().any(|c| c.contains(path_str(&s.pool_dir()))), "address claims left: {claims:?}");
    assert_nothing_left(&s);
}

/// The container's root (the first line of its /proc/mounts) is mounted nodev.
fn first_is_nodev(mounts: &str) -> bool {
    mounts.lines().next().and_then(|l| l.split(' ').nth(3)).is_some_and(|o| o.split(',').any(|f| f == "nodev"))
}

/// The escapes a new user would try from inside a container on a pool, each refused by the
/// default isolation; then what `--cap-add`, `--privileged` and a Docker-format seccomp
/// profile change. (tests/runner_host.rs covers the same on a plain loop device, with more
/// detail; here the kernel is the VM's and the devices are the pool's.)
#[test]
fn runner_escapes_from_inside_are_refused_by_default() {
    let s = Scenario::new("runesc");
    s.ok(&["pool", "create", "--data-size", "4G"]);
    let (_, base_dev) = make_base(&s, "base");
    use std::os::unix::fs::MetadataExt;
    let st = |p: &Path| std::fs::metadata(p).unwrap().rdev();
    let (dm_maj, dm_min) = (nix::sys::stat::major(st(&base_dev)), nix::sys::stat::minor(st(&base_dev)));
    let data = rcx_dm::loopback::find(&s.pool_dir().join("data.img")).unwrap().expect("the pool's loop device");
    let (lo_maj, lo_min) = (nix::sys::stat::major(st(&data)), nix::sys::stat::minor(st(&data)));
    let script = format!(
        "echo '|/tmp/x' > /proc/sys/kernel/core_pattern && echo ESCAPE-core_pattern; \
         mknod /tmp/dm b {dm_maj} {dm_min} && head -c 512 /tmp/dm > /tmp/got && [ -s /tmp/got ] && echo ESCAPE-dm; \
         mknod /dev/lo b {lo_maj} {lo_min} && head -c 512 /dev/lo > /tmp/got && [ -s /tmp/got ] && echo ESCAPE-loop; \
         head -c 16 /proc/kcore > /tmp/got; [ -s /tmp/got ] && echo ESCAPE-kcore; \
         mkdir -p /tmp/cg && mount -t cgroup2 none /tmp/cg && echo ESCAPE-cgroup-mount; \
         echo $$ > /sys/fs/cgroup/cgroup.procs && echo ESCAPE-cgroup-move; \
         unshare -U -r true && echo ESCAPE-userns; \
         unshare -m mount -t tmpfs none /tmp && echo ESCAPE-mount; \
         (ls /proc/1/fd > /tmp/fds); for n in $(cat /tmp/fds); do [ -d /proc/1/fd/$n ] && echo ESCAPE-fd-$n; done; \
         grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; echo done"
    );
    for init in [false, true] {
        let mut args = vec!["--rm"];
        if init {
            args.push("--init");
        }
        args.extend(["base", "--", "sh", "-c", &script]);
        let out = run_code(&s, &args, 0);
        assert!(!out.contains("ESCAPE"), "--init {init}: an escape worked:\n{out}");
        assert!(out.contains("Seccomp:\t2") && out.ends_with("done\n"), "--init {init}:\n{out}");
    }
    // The pool's devices are untouched and still readable from the host.
    assert_eq!(read_direct(&base_dev, 1 << 20).len(), 1 << 20);

    // Ordinary work under the default set: chown, a low port.
    run_code(&s, &["--rm", "base", "--", "sh", "-c", "touch /tmp/f && chown 1:1 /tmp/f && nc -l -p 80 -w 1 </dev/null & sleep 0.3; true"], 0);
    // --cap-add SYS_ADMIN: mount works (the default filter follows the capability).
    run_code(&s, &["--rm", "--cap-add", "SYS_ADMIN", "base", "--", "mount", "-t", "tmpfs", "none", "/tmp"], 0);
    // --privileged: every capability, no filter.
    let st = run_code(&s, &["--rm", "--privileged", "base", "--", "grep", "-E", "^(CapBnd|Seccomp):", "/proc/self/status"], 0);
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").unwrap().trim().parse().unwrap();
    assert!(st.contains(&format!("CapBnd:\t{:016x}", (1u64 << (last + 1)) - 1)) && st.contains("Seccomp:\t0"), "{st}");
    // A Docker-format profile denying mkdir.
    let profile = scratch().join(format!("no-mkdir-{}.json", std::process::id()));
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", profile.display());
    let o = run(&s, &["--rm", "--security-opt", &opt, "base", "--", "mkdir", "/tmp/d"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(text(&o.stderr).contains("Operation not permitted"), "{}", text(&o.stderr));
    let _ = std::fs::remove_file(&profile);
    assert_nothing_left(&s);
}

/// A container that made groups below its own (a writable cgroup2 with --privileged, as a
/// nested runtime or systemd would) and whose rcx-dm was killed: the next command removes
/// them deepest first and deletes the run's snapshot at once, instead of retrying an EBUSY
/// rmdir for 10 s and then keeping the snapshot.
#[test]
fn runner_child_cgroups_of_a_dead_run_do_not_wedge_the_next_command() {
    let s = Scenario::new("runcg");
    s.ok(&["pool", "create", "--data-size", "4G"]);
    make_base(&s, "base");
    let script = "mkdir -p /sys/fs/cgroup/a/b && echo $$ > /sys/fs/cgroup/a/b/cgroup.procs && exec sleep 600";
    let mut c = spawn_run(&s, &["--rm", "--privileged", "base", "--", "sh", "-c", script], Stdio::null());
    let cg = wait_for_container(&s);
    wait_for("the container's process to move into its child group", 60, || {
        (!cg_read(&cg.join("a/b"), "cgroup.procs").is_empty()).then_some(())
    });
    c.kill().unwrap(); // SIGKILL: rcx-dm runs no code after this
    c.wait().unwrap();
    let t = Instant::now();
    let names = volume_names(&s); // the next command cleans up
    let first = t.elapsed();
    assert_eq!(names, ["base"], "the --rm snapshot of the dead run is left");
    assert!(!cg.exists(), "{} is left", cg.display());
    assert!(first < Duration::from_secs(5), "the first command after took {first:?}");
    let t = Instant::now();
    s.ok(&["list"]);
    assert!(t.elapsed() < Duration::from_secs(1), "list took {:?}", t.elapsed());
    assert_nothing_left(&s);
}

/// `rcx-dm run -t` under a pty the test opens (its slave is rcx-dm's stdin and stdout, the
/// "caller's terminal"): the container gets a terminal of its own with the caller's window size,
/// output and exit status come back, the caller's modes are as before, and a TIOCSTI inside
/// (perl, copied with its libraries from the VM's root, as busybox has no tool for it) types
/// into the container's own terminal only. `-it` with stdin a pipe copies it in, EOF included.
#[test]
fn runner_tty_gives_the_container_its_own_terminal() {
    use std::os::fd::AsRawFd;
    let s = Scenario::new("runtty");
    s.ok(&["pool", "create", "--data-size", "4G"]);
    let (_, dev) = make_base(&s, "base");
    s.ok(&["set-readonly", "base", "--off"]);
    {
        let m = Mount::new(&dev, &format!("{}-perl", s.pool));
        let ldd = sh("ldd /usr/bin/perl");
        let files = std::iter::once("/usr/bin/perl").chain(ldd.split_whitespace().filter(|w| w.starts_with('/')));
        for f in files {
            let to = m.path(f.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(f, &to).unwrap_or_else(|e| panic!("copying {f}: {e}"));
        }
    }
    s.ok(&["set-readonly", "base"]);

    // Runs `rcx-dm run ARGS` with stdout on a fresh 33x101 pty (`typed` already typed into
    // it) and stdin on it too, or on a pipe fed `input`; returns (exit code, terminal output
    // without "\r", stderr, modes unchanged, a line left unread on the caller's terminal).
    let tty_run = |args: &[&str], typed: &[u8], input: Option<&[u8]>| {
        let ws = nix::pty::Winsize { ws_row: 33, ws_col: 101, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = nix::pty::openpty(Some(&ws), None).unwrap();
        // Close-on-exec: a process another test thread spawns must not keep a slave open (the
        // master would never read its end).
        for fd in [&pty.master, &pty.slave] {
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC)).unwrap();
        }
        nix::unistd::write(&pty.master, typed).unwrap();
        let before = nix::sys::termios::tcgetattr(&pty.slave).unwrap();
        let stdin = match input {
            Some(_) => Stdio::piped(),
            None => Stdio::from(pty.slave.try_clone().unwrap()),
        };
        let mut c = Command::new(bin())
            .arg("run")
            .args(args)
            .env("RCX_DM_ROOT", &s.root)
            .env("RCX_DM_POOL", &s.pool)
            .stdin(stdin)
            .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rcx-dm run -t");
        if let (Some(data), Some(mut w)) = (input, c.stdin.take()) {
            std::io::Write::write_all(&mut w, data).unwrap();
        }
        // The master is read until every slave is closed (EIO): rcx-dm's, then the test's.
        let master = std::fs::File::from(std::os::fd::OwnedFd::from(pty.master));
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut m = master;
            let _ = m.read_to_end(&mut out);
            out
        });
        let (code, err) = finish(c);
        let after = nix::sys::termios::tcgetattr(&pty.slave).unwrap();
        nix::fcntl::fcntl(&pty.slave, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).unwrap();
        let mut b = [0u8; 1024];
        // SAFETY: a read into a local buffer.
        let n = unsafe { libc::read(pty.slave.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) };
        let left = if n > 0 { text(&b[..n as usize]) } else { String::new() };
        drop(pty.slave);
        let out = text(&reader.join().unwrap()).replace('\r', "");
        (code, out, err, before == after, left)
    };

    let script = "test -t 0 && test -t 1 && test -t 2 && echo all-tty; stty size; \
                  echo console $(stat -c %t:%T /dev/console) fd0 $(stat -L -c %t:%T /proc/$$/fd/0); exit 3";
    let (code, out, err, same, _) = tty_run(&["--rm", "-t", "base", "--", "sh", "-c", script], b"", None);
    assert_eq!(code, Some(3), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"all-tty"), "{out}{err}");
    assert_eq!(lines.get(1), Some(&"33 101"), "{out}");
    let f: Vec<&str> = lines.get(2).unwrap_or(&"").split(' ').collect();
    assert!(f.len() == 4 && f[1] == f[3], "/dev/console is not the container's terminal: {out}");
    assert!(same, "the caller's terminal modes changed");

    // TIOCSTI inside: the characters go to the container's terminal (it reads them back), none
    // to the caller's. (The copied perl's libraries: the image has no ld.so.cache.)
    const LIBS: &str = "LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu:/lib64:/lib";
    let sti = "perl -e 'for (split //, \"echo INJECTED\\n\") { ioctl(STDIN, 0x5412, $_) or die \"TIOCSTI: $!\\n\" }'; \
               read -t 2 x && echo \"container read: $x\"";
    let (code, out, err, same, left) = tty_run(&["--rm", "-t", "--env", LIBS, "base", "--", "sh", "-c", sti], b"", None);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("container read: echo INJECTED"), "{out}{err}");
    assert_eq!(left, "", "TIOCSTI typed into the caller's terminal");
    assert!(same);

    // -it under the terminal: raw mode while it runs (typed ahead is kept), what is typed
    // arrives, the modes are back after.
    let (code, out, err, same, left) = tty_run(&["--rm", "-it", "base", "--", "sh", "-c", "read x; echo got $x"], b"hello\n", None);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.lines().any(|l| l == "got hello"), "{out}{err}");
    assert!(same, "the caller's terminal modes were not restored");
    assert_eq!(left, "");

    // -it with stdin a pipe: copied in, and its end is the container's EOF.
    let (code, out, err, _, _) =
        tty_run(&["--rm", "-it", "base", "--", "sh", "-c", "read x; echo got $x; cat >/dev/null; echo eof"], b"", Some(b"hello\nworld\n"));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.lines().any(|l| l == "got hello") && out.lines().last() == Some("eof"), "{out}{err}");
    assert_nothing_left(&s);
}

#[test]
fn runner_userns_auto_maps_root_to_an_unprivileged_range() {
    let s = Scenario::new("runuserns");
    s.ok(&["pool", "create", "--data-size", "4G"]);
    make_base(&s, "base");
    let first = rcx_dm::runner::AUTO_FIRST;
    let count = rcx_dm::runner::AUTO_COUNT;

    // A container that stays up: root inside, the range's first id outside.
    let mut c = spawn_run(&s, &["--name", "u1", "--userns", "auto", "base", "--", "sh", "-c", "id -u; touch /made; exec sleep 600"], Stdio::null());
    let mut stdout = c.stdout.take().unwrap();
    let cg = wait_for_container(&s);
    let (pid, uid) = wait_for("the container's command to run", 60, || {
        let pid: u32 = cg_read(&cg, "cgroup.procs").lines().next()?.parse().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        if !status.contains("Name:\tsleep") {
            return None;
        }
        let uid: u32 = status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()?;
        Some((pid, uid))
    });
    assert_eq!(uid, first, "the container's root is the first automatic host id");
    let lease = s.pool_dir().join("runs").join(format!("userns-{first}-{count}.lease"));
    assert!(lease.exists(), "the range is recorded in the pool's runs/");
    // Through the container's idmapped mount the host sees the image's root-owned files as the
    // range's; on disk they stay 0 (below).
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(format!("/proc/{pid}/root/etc/marker")).unwrap().uid(), first);
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mounts")).unwrap();
    assert!(mounts.lines().next().is_some_and(|l| l.contains("idmapped")), "{mounts}");
    std::fs::write(cg.join("cgroup.kill"), "1").unwrap();
    let (code, err) = finish(c);
    assert_eq!(code, Some(137), "{err}");
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    assert_eq!(out, "0\n", "id -u inside");
    assert!(!lease.exists(), "the range is released with the run");

    // On disk (the kept snapshot mounted normally): what the container's root made is uid 0.
    let dev = s.device(&["activate", "u1"]);
    with_read_only_mount(&dev, "u1", |dir| {
        assert_eq!(std::fs::metadata(dir.join("made")).unwrap().uid(), 0);
        assert_eq!(std::fs::metadata(dir.join("etc/marker")).unwrap().uid(), 0);
    });
    s.ok(&["deactivate", "u1"]);

    // Released: the next run gets the first range again; bad ranges are refused.
    let map = run_code(&s, &["--rm", "--userns", "auto", "base", "--", "cat", "/proc/self/uid_map"], 0);
    assert_eq!(map.split_whitespace().collect::<Vec<_>>(), ["0", &first.to_string(), &count.to_string()], "{map}");
    let o = run(&s, &["--rm", "--userns", "auto", "--privileged", "base", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert_eq!(volume_names(&s), ["base", "u1"]);
    assert_nothing_left(&s);
}
