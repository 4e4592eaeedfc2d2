//! Checkpoint and restore (issue 18) against the real kernel and Debian's CRIU: a counter that
//! keeps its count in memory and appends it to a file in its volume is checkpointed with
//! `--leave-running`, goes on, is stopped; restores continue from the count of the checkpoint
//! (memory) over the file as it was then (the snapshot), twice, independently; the refusals.

use std::path::Path;

use crate::common::*;
use crate::runner::{assert_nothing_left, cg_read, make_base, run_cgroups, volume_names};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `ps --json`'s entry for `name`.
fn ps_entry(s: &Scenario, name: &str) -> serde_json::Value {
    s.json(&["ps", "--json"]).as_array().unwrap().iter().find(|c| c["name"] == name).cloned().unwrap_or_else(|| panic!("ps has no {name}"))
}

/// The numbers the counter printed ("n=K" lines of its log).
fn logged(s: &Scenario, name: &str) -> Vec<u64> {
    s.ok(&["logs", name]).lines().filter_map(|l| l.strip_prefix("n=")?.parse().ok()).collect()
}

/// The lines of /count inside a running container.
fn count_file(s: &Scenario, name: &str) -> Vec<u64> {
    s.ok(&["exec", name, "--", "cat", "/count"]).lines().map(|l| l.parse().unwrap()).collect()
}

/// /count of a volume that is not in use, read through a read-only mount.
fn count_in_volume(s: &Scenario, vol: &str) -> Vec<u64> {
    let dev = s.device(&["activate", vol]);
    let dir = scratch().join(format!("ck-{}-{vol}", s.pool));
    std::fs::create_dir_all(&dir).unwrap();
    nix::mount::mount(Some(&dev), &dir, Some("ext4"), nix::mount::MsFlags::MS_RDONLY, Some("noload")).unwrap();
    let t = std::fs::read_to_string(dir.join("count")).unwrap_or_default();
    umount(&dir).unwrap();
    let _ = std::fs::remove_dir(&dir);
    s.ok(&["deactivate", vol]);
    t.lines().map(|l| l.parse().unwrap()).collect()
}

fn is_1_to(v: &[u64], n: u64) -> bool {
    v.len() as u64 == n && v.iter().enumerate().all(|(i, x)| *x == i as u64 + 1)
}

const COUNTER: &str = "i=0; while :; do i=$((i+1)); echo $i >> /count; echo n=$i; sleep 0.2; done";

#[test]
fn checkpoint_restore_counter_twice_and_refusals() {
    let s = Scenario::new("ckpt");
    s.ok(&["pool", "create", "--data-size", "4G"]);
    make_base(&s, "base");
    assert_eq!(s.ok(&["run", "-d", "--name", "ctr", "--memory", "256M", "--pids", "64", "base", "--", "sh", "-c", COUNTER]), "ctr\n");
    wait_for("the counter to reach 5", 60, || (logged(&s, "ctr").len() >= 5).then_some(()));

    // Checkpoint at N, leaving it running.
    let rec = s.json(&["checkpoint", "ctr", "--leave-running", "--name", "cp1", "--json"]);
    eprintln!("checkpoint: {}", rec["timings"]);
    assert_eq!((rec["name"].as_str(), rec["snapshot"].as_str(), rec["left_running"].as_bool()), (Some("cp1"), Some("ckpt-cp1"), Some(true)));
    assert_eq!(ps_entry(&s, "ctr")["state"], "running");
    // The snapshot holds the file as it was at the checkpoint: 1..N.
    let at_cp = count_in_volume(&s, "ckpt-cp1");
    let n = at_cp.len() as u64;
    assert!(n >= 5 && is_1_to(&at_cp, n), "{at_cp:?}");
    let info = s.json(&["info", "ckpt-cp1", "--json"]);
    assert_eq!((info["read_only"].as_bool(), info["active"].as_bool()), (Some(true), Some(false)), "{info}");

    // The original goes on to M > N, then is stopped; its volume keeps 1..M.
    wait_for("the original to go on", 60, || (count_file(&s, "ctr").len() as u64 >= n + 5).then_some(()));
    s.ok(&["stop", "--time", "1", "ctr"]);
    let m_log = logged(&s, "ctr");
    let m = *m_log.last().unwrap();
    assert!(m >= n + 5 && is_1_to(&m_log, m), "the original counted on in one run: {m_log:?}");

    // Restore: the counter continues from N+1 (its memory) over the file of the checkpoint.
    assert_eq!(s.ok(&["restore", "cp1", "--name", "r1"]), "r1\n");
    let c = ps_entry(&s, "r1");
    assert_eq!((c["state"].as_str(), c["restored_from"].as_str()), (Some("running"), Some("cp1")), "{c}");
    wait_for("the restored counter to count", 60, || (logged(&s, "r1").len() >= 3).then_some(()));
    let r1_log = logged(&s, "r1");
    assert_eq!(r1_log[0], n + 1, "the restored counter starts after the checkpoint's count: {r1_log:?}");
    let r1_file = count_file(&s, "r1");
    let k = r1_file.len() as u64;
    assert!(k > n && is_1_to(&r1_file, k), "the file is the checkpoint's 1..{n}, then the restored count: {r1_file:?}");
    // The original's volume still holds M.
    assert!(is_1_to(&count_in_volume(&s, "ctr"), m), "the original's volume changed");
    // The restored container's cgroup has the limits of the checkpoint.
    let cg = Path::new(c["started"]["cgroup"].as_str().unwrap()).to_path_buf();
    assert_eq!((cg_read(&cg, "memory.max"), cg_read(&cg, "pids.max")), ((256u64 << 20).to_string(), "64".to_string()));
    assert_eq!(cg_read(&cg, "cgroup.procs").lines().next(), Some(c["started"]["pid"].to_string().as_str()), "PID 1 in its cgroup");
    // exec works in it: its pid namespace, its hostname.
    assert_eq!(s.ok(&["exec", "r1", "--", "cat", "/proc/1/cmdline"]).split('\0').next(), Some("sh"));
    assert_eq!(s.ok(&["exec", "r1", "--", "hostname"]), "ctr\n");

    // A second restore (default name) is independent of the first.
    let r2 = s.ok(&["restore", "cp1"]).trim().to_string();
    assert!(r2.starts_with("run-"), "{r2}");
    wait_for("the second restore to count", 60, || (logged(&s, &r2).len() >= 2).then_some(()));
    assert_eq!(logged(&s, &r2)[0], n + 1);
    s.ok(&["exec", "r1", "--", "touch", "/only-r1"]);
    assert!(s.cli(&["exec", r2.as_str(), "--", "cat", "/only-r1"]).status.code() == Some(1), "r2 sees r1's file");
    assert_ne!(ps_entry(&s, "r1")["started"]["pid"], ps_entry(&s, &r2)["started"]["pid"]);
    assert_eq!(run_cgroups(&s).len(), 2);

    // Refusals, each leaving things as they were.
    let err = s.fails(&["restore", "cp1", "--name", "r1"]);
    assert!(err.contains("'r1'") && err.contains("already exists"), "{err}");
    let err = s.fails(&["checkpoint", "r1", "--leave-running", "--name", "cp1"]);
    assert!(err.contains("checkpoint 'cp1'") && err.contains("already exists"), "{err}");
    let err = s.fails(&["restore", "nope"]);
    assert!(err.contains("no checkpoint 'nope'"), "{err}");
    let err = s.fails(&["checkpoint", "ctr"]);
    assert!(err.contains("'ctr' is exited") && err.contains("only a running container"), "{err}");
    let err = s.fails(&["checkpoint", "nope"]);
    assert!(err.contains("no detached container 'nope'"), "{err}");
    // A half-written checkpoint (its command died before the record): listed as incomplete,
    // refused by restore, removed by rm.
    std::fs::create_dir_all(s.pool_dir().join("checkpoints/half/images")).unwrap();
    let ls = s.json(&["checkpoint", "ls", "--json"]);
    let states: Vec<(String, String)> =
        ls.as_array().unwrap().iter().map(|c| (c["name"].as_str().unwrap().into(), c["state"].as_str().unwrap().into())).collect();
    assert_eq!(states, [("cp1".into(), "complete".into()), ("half".into(), "incomplete".into())]);
    let err = s.fails(&["restore", "half"]);
    assert!(err.contains("'half' is incomplete") && err.contains("checkpoint rm"), "{err}");
    s.ok(&["checkpoint", "rm", "half"]);
    // Host namespaces and --privileged: refused, the container untouched.
    s.ok(&["run", "-d", "--name", "hostnet", "--net", "host", "base", "--", "sleep", "600"]);
    let err = s.fails(&["checkpoint", "hostnet"]);
    assert!(err.contains("host's net namespace"), "{err}");
    s.ok(&["run", "-d", "--name", "priv", "--privileged", "base", "--", "sleep", "600"]);
    let err = s.fails(&["checkpoint", "priv"]);
    assert!(err.contains("--privileged"), "{err}");
    for c in ["hostnet", "priv"] {
        assert_eq!(ps_entry(&s, c)["state"], "running", "{c} was disturbed");
        s.ok(&["stop", "--time", "0", c]);
        s.ok(&["rm", c]);
    }
    assert_eq!(s.json(&["checkpoint", "ls", "--json"]).as_array().unwrap().len(), 1);

    // Without --leave-running the container is stopped (137) and its checkpoint restores.
    s.ok(&["checkpoint", r2.as_str(), "--name", "cp2"]);
    assert_eq!(s.ok(&["wait", r2.as_str()]), "137\n");
    let last = *logged(&s, &r2).last().unwrap();
    s.ok(&["restore", "cp2", "--name", "r3"]);
    wait_for("the third restore to count", 60, || (!logged(&s, "r3").is_empty()).then_some(()));
    assert_eq!(logged(&s, "r3")[0], last + 1, "r3 goes on from where r2 was stopped");

    // The restored containers stop, wait, rm like any detached container.
    for c in ["r1", "r3"] {
        s.ok(&["stop", "--time", "0", c]);
        assert_eq!(s.ok(&["wait", c]), "137\n");
    }
    let o = s.cli(&["logs", "r1"]);
    assert!(text(&o.stdout).contains("exited with status 137"), "{}", text(&o.stdout));
    for c in ["ctr", "r1", r2.as_str(), "r3"] {
        s.ok(&["rm", c]);
    }
    s.ok(&["checkpoint", "rm", "cp1"]);
    s.ok(&["checkpoint", "rm", "cp2"]);
    assert!(s.json(&["checkpoint", "ls", "--json"]).as_array().unwrap().is_empty());
    assert_eq!(volume_names(&s), ["base"]);
    assert_nothing_left(&s);
}

/// A `checkpoint` command killed (SIGKILL) while the container's cgroup is frozen: the next
/// rcx-dm command thaws it (once CRIU, left behind, has let go of the tasks), the counter goes
/// on, and the checkpoint is incomplete: refused by restore, removed by `checkpoint rm`.
#[test]
fn checkpoint_killed_while_frozen_is_thawed_by_the_next_command() {
    let s = Scenario::new("ckfz");
    s.ok(&["pool", "create", "--data-size", "4G"]);
    make_base(&s, "base");
    s.ok(&["run", "-d", "--name", "fz", "base", "--", "sh", "-c", COUNTER]);
    wait_for("the counter to reach 3", 60, || (logged(&s, "fz").len() >= 3).then_some(()));
    let cgs = run_cgroups(&s);
    assert_eq!(cgs.len(), 1, "{cgs:?}");
    let cg = &cgs[0];

    let mut cmd = std::process::Command::new(bin());
    cmd.args(["checkpoint", "fz", "--leave-running", "--name", "cpk"])
        .env("RCX_DM_ROOT", &s.root)
        .env("RCX_DM_POOL", &s.pool)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("spawn rcx-dm checkpoint");
    let marker = s.pool_dir().join("checkpoints/cpk/frozen");
    wait_for("the checkpoint to freeze the container", 60, || {
        (marker.exists() && cg_read(cg, "cgroup.events").contains("frozen 1")).then_some(())
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(cg_read(cg, "cgroup.events").contains("frozen 1"), "still frozen after the kill");

    // Any command thaws it, once the criu the dead command started is done with the tasks.
    wait_for("a later command to thaw the container", 180, || {
        s.ok(&["ps"]);
        cg_read(cg, "cgroup.events").contains("frozen 0").then_some(())
    });
    assert!(!marker.exists(), "the marker is gone with the thaw");
    let before = logged(&s, "fz").len();
    wait_for("the thawed counter to go on", 60, || (logged(&s, "fz").len() >= before + 3).then_some(()));
    assert_eq!(ps_entry(&s, "fz")["state"], "running");

    let ls = s.json(&["checkpoint", "ls", "--json"]);
    assert_eq!(ls[0]["name"], "cpk", "{ls}");
    assert_eq!(ls[0]["state"], "incomplete", "{ls}");
    let err = s.fails(&["restore", "cpk"]);
    assert!(err.contains("'cpk' is incomplete"), "{err}");
    s.ok(&["checkpoint", "rm", "cpk"]);
    assert!(!volume_names(&s).iter().any(|v| v == "ckpt-cpk"));
    s.ok(&["stop", "--time", "1", "fz"]);
    s.ok(&["rm", "fz"]);
    assert_nothing_left(&s);
}
