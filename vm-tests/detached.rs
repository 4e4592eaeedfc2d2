//! Detached containers against the real kernel: `run -d`, `ps`, `exec` (same namespaces, same
//! cgroup, same lock-down as PID 1), `logs`, `stop` (SIGTERM then SIGKILL), `kill --signal`,
//! `wait` (exit statuses kept after the exit), `rm`, the refusals, and a supervisor killed with
//! SIGKILL: the next command leaves nothing behind and `ps` says what happened.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::runner::{assert_nothing_left, cg_read, make_base, run_cgroups, volume_names};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `rcx-dm ARGS` must exit with `code`; returns (stdout, stderr).
fn code(s: &Scenario, args: &[&str], code: i32) -> (String, String) {
    let o = s.cli(args);
    assert_eq!(o.status.code(), Some(code), "rcx-dm {args:?}:\nstdout: {}\nstderr: {}", text(&o.stdout), text(&o.stderr));
    (text(&o.stdout), text(&o.stderr))
}

/// `ps --json`'s entry for `name`.
fn ps_entry(s: &Scenario, name: &str) -> Option<serde_json::Value> {
    s.json(&["ps", "--json"]).as_array().unwrap().iter().find(|c| c["name"] == name).cloned()
}

/// A line of /proc/PID/status ("CapBnd:\t...").
fn status_line(status: &str, key: &str) -> String {
    status.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in {status}")).to_string()
}

#[test]
fn detached_run_ps_exec_logs_stop_wait_rm() {
    let s = Scenario::new("detach");
    s.ok(&["pool", "create", "--data-size", "4G"]);
    make_base(&s, "base");

    // run -d returns once the command runs, with the caller's pipes closed (output() returns).
    let t = Instant::now();
    let out = s.ok(&["run", "-d", "--name", "web", "base", "--", "sh", "-c", "echo hello-out; echo hello-err >&2; exec sleep 600"]);
    eprintln!("run -d took {:?}", t.elapsed());
    assert_eq!(out, "web\n");
    let c = ps_entry(&s, "web").expect("ps lists it");
    assert_eq!(c["state"], "running", "{c}");
    let pid = c["started"]["pid"].as_i64().unwrap();
    let sup = c["started"]["supervisor_pid"].as_i64().unwrap();
    assert!(std::path::Path::new(&format!("/proc/{sup}")).exists());
    let cgs = run_cgroups(&s);
    assert_eq!(cgs.len(), 1, "{cgs:?}");
    assert_eq!(cg_read(&cgs[0], "cgroup.procs"), pid.to_string(), "PID 1 is in the run's cgroup");
    let table = s.ok(&["ps"]);
    assert!(table.lines().any(|l| l.starts_with("web ") && l.contains("running") && l.contains(&pid.to_string())), "{table}");

    // exec: the container's pid namespace (its PID 1 is the command), its files, its cgroup
    // (the namespace's root), its capability bounding set, seccomp and no_new_privs.
    let (cmdline, _) = code(&s, &["exec", "web", "--", "cat", "/proc/1/cmdline"], 0);
    assert_eq!(cmdline, "sleep\u{0}600\u{0}");
    assert_eq!(code(&s, &["exec", "web", "--", "cat", "/etc/marker"], 0).0, "base\n");
    assert_eq!(code(&s, &["exec", "web", "--", "cat", "/proc/self/cgroup"], 0).0, "0::/\n");
    assert_eq!(code(&s, &["exec", "web", "--", "hostname"], 0).0, "web\n");
    let inside = code(&s, &["exec", "web", "--", "cat", "/proc/self/status"], 0).0;
    let pid1 = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for key in ["CapBnd:", "CapEff:", "CapPrm:", "NoNewPrivs:", "Seccomp:"] {
        assert_eq!(status_line(&inside, key), status_line(&pid1, key), "exec's {key} differs from PID 1's");
    }
    assert_eq!(status_line(&inside, "Seccomp:"), "Seccomp:\t2", "the seccomp filter is on");
    // While it runs, exec's command is counted in the container's cgroup.
    let (procs, _) = code(&s, &["exec", "web", "--", "sh", "-c", "cat /proc/self/cgroup; echo $$"], 0);
    assert!(procs.starts_with("0::/\n"), "{procs}");
    code(&s, &["exec", "web", "--", "sh", "-c", "exit 3"], 3);
    let (_, err) = code(&s, &["exec", "web", "--", "/no/such"], 127);
    assert!(err.contains("not found"), "{err}");
    assert_eq!(code(&s, &["exec", "-e", "X=1", "-w", "/tmp", "web", "--", "sh", "-c", "echo $X $(pwd) $HOSTNAME"], 0).0, "1 /tmp web\n");

    // logs: stdout and stderr.
    let logs = s.ok(&["logs", "web"]);
    assert!(logs.contains("hello-out") && logs.contains("hello-err"), "{logs}");

    // The name is taken, by the container and its snapshot.
    let err = s.fails(&["run", "-d", "--name", "web", "base", "--", "true"]);
    assert!(err.contains("'web'") && err.contains("already exists"), "{err}");

    // stop: sleep as PID 1 has no SIGTERM handler, so SIGKILL after --time: 137.
    let t = Instant::now();
    assert_eq!(s.ok(&["stop", "--time", "1", "web"]), "web\n");
    assert!(t.elapsed() >= Duration::from_secs(1), "SIGKILL came before --time");
    assert_eq!(s.ok(&["wait", "web"]), "137\n");
    let c = ps_entry(&s, "web").unwrap();
    assert_eq!((c["state"].as_str(), c["exit"]["code"].as_i64()), (Some("exited"), Some(137)), "{c}");
    assert!(run_cgroups(&s).is_empty(), "the cgroup goes with the container");
    // Still readable after the exit; stop again is a no-op.
    assert!(s.ok(&["logs", "web"]).contains("hello-out"));
    assert_eq!(s.ok(&["stop", "web"]), "web\n");
    // Not running: exec and kill are refused, saying so.
    let (_, err) = code(&s, &["exec", "web", "--", "true"], 125);
    assert!(err.contains("'web' is exited (status 137)"), "{err}");
    let err = s.fails(&["kill", "web"]);
    assert!(err.contains("is exited"), "{err}");

    // With --init, SIGTERM reaches the command (the init forwards it): 143, before --time.
    assert_eq!(s.ok(&["run", "-d", "--init", "--name", "t2", "base", "--", "sleep", "600"]), "t2\n");
    let t = Instant::now();
    s.ok(&["stop", "--time", "30", "t2"]);
    assert!(t.elapsed() < Duration::from_secs(20), "SIGTERM was not enough: {:?}", t.elapsed());
    assert_eq!(s.ok(&["wait", "t2"]), "143\n");

    // rm: the records and the snapshots the runs made.
    assert_eq!(s.ok(&["rm", "web"]), "web (and its volume web)\n");
    s.ok(&["rm", "--keep-volume", "t2"]);
    assert!(s.json(&["ps", "--json"]).as_array().unwrap().is_empty());
    assert_eq!(volume_names(&s), ["base", "t2"]);
    assert!(s.fails(&["wait", "web"]).contains("no detached container 'web'"));
    assert_nothing_left(&s);
}

#[test]
fn detached_exit_codes_signals_and_bad_input() {
    let s = Scenario::new("detach2");
    s.ok(&["pool", "create", "--data-size", "4G"]);
    make_base(&s, "base");

    // A container that exits by itself: its status is kept for wait and ps.
    assert_eq!(s.ok(&["run", "-d", "--rm", "--name", "seven", "base", "--", "sh", "-c", "exit 7"]), "seven\n");
    assert_eq!(s.ok(&["wait", "seven"]), "7\n");
    assert_eq!(s.ok(&["wait", "seven"]), "7\n", "wait again: the status stays until rm");
    assert_eq!(ps_entry(&s, "seven").unwrap()["exit"]["code"], 7);
    assert!(!volume_names(&s).contains(&"seven".to_string()), "--rm deletes the snapshot at the exit");

    // kill --signal: a handler in PID 1 gets it.
    s.ok(&["run", "-d", "--name", "sig", "base", "--", "sh", "-c", "trap 'exit 42' USR1; echo ready; while :; do sleep 1; done"]);
    wait_for("the trap to be set", 30, || s.ok(&["logs", "sig"]).contains("ready").then_some(()));
    s.ok(&["kill", "--signal", "usr1", "sig"]);
    assert_eq!(s.ok(&["wait", "sig"]), "42\n");
    // Without a handler only SIGKILL gets through (the default): 137.
    s.ok(&["run", "-d", "--name", "k", "base", "--", "sleep", "600"]);
    s.ok(&["kill", "k"]);
    assert_eq!(s.ok(&["wait", "k"]), "137\n");

    // Unknown names, for every command.
    for args in [
        vec!["stop", "nope"],
        vec!["kill", "nope"],
        vec!["logs", "nope"],
        vec!["wait", "nope"],
        vec!["rm", "nope"],
        vec!["exec", "nope", "--", "true"],
        vec!["logs", "../runs"],
    ] {
        let o = s.cli(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(text(&o.stderr).contains("no detached container"), "{args:?}: {}", text(&o.stderr));
    }
    // Bad arguments: status 2, nothing started.
    code(&s, &["kill", "--signal", "NOPE", "k"], 2);
    code(&s, &["run", "-d", "-t", "base", "--", "true"], 2);
    code(&s, &["stop", "--time", "-1", "k"], 2);
    // A command that is not there: the start fails as `run` would (127), nothing is kept.
    let (_, err) = code(&s, &["run", "-d", "--name", "nf", "base", "--", "/no/such"], 127);
    assert!(err.contains("not found"), "{err}");
    assert!(ps_entry(&s, "nf").is_none());
    assert!(!volume_names(&s).contains(&"nf".to_string()));
    // rm of a running one is refused, and it keeps running.
    s.ok(&["run", "-d", "--name", "busy", "base", "--", "sleep", "600"]);
    let err = s.fails(&["rm", "busy"]);
    assert!(err.contains("'busy' is running") && err.contains("stop it first"), "{err}");
    assert_eq!(ps_entry(&s, "busy").unwrap()["state"], "running");
    s.ok(&["stop", "--time", "0", "busy"]);

    // exec into a --userns container: its user namespace too, as its root (an unprivileged
    // range outside), with the container's capabilities.
    s.ok(&["run", "-d", "--userns", "auto", "--name", "u", "base", "--", "sleep", "600"]);
    let map = code(&s, &["exec", "u", "--", "cat", "/proc/self/uid_map"], 0).0;
    let f: Vec<&str> = map.split_whitespace().collect();
    assert_eq!((f[0], f[2]), ("0", "65536"), "{map}");
    assert_ne!(f[1], "0", "root inside must not be root outside: {map}");
    let st = code(&s, &["exec", "u", "--", "cat", "/proc/self/status"], 0).0;
    assert_eq!(status_line(&st, "Uid:"), "Uid:\t0\t0\t0\t0", "{st}");
    s.ok(&["stop", "--time", "0", "u"]);

    for n in ["seven", "sig", "k", "busy", "u"] {
        s.ok(&["rm", n]);
    }
    assert_eq!(volume_names(&s), ["base"]);
    assert_nothing_left(&s);
}

#[test]
fn detached_supervisor_killed_leaves_nothing_after_the_next_command() {
    let s = Scenario::new("detach3");
    s.ok(&["pool", "create", "--data-size", "4G"]);
    make_base(&s, "base");
    s.ok(&["run", "-d", "--name", "victim", "--net", "bridge", "base", "--", "sleep", "600"]);
    let c = ps_entry(&s, "victim").unwrap();
    let sup = c["started"]["supervisor_pid"].as_i64().unwrap() as i32;
    let pid = c["started"]["pid"].as_i64().unwrap() as i32;
    let cg = run_cgroups(&s).pop().expect("its cgroup");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(sup), nix::sys::signal::Signal::SIGKILL).unwrap();
    // The container dies with its supervisor (PR_SET_PDEATHSIG).
    // (Both were reparented to the VM's init, which may leave them zombies: dead all the same.)
    let dead = |p: i32| {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .map_or(true, |st| st.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
    };
    wait_for("the container to die with its supervisor", 30, || {
        (cg_read(&cg, "cgroup.events").contains("populated 0") && dead(pid) && dead(sup)).then_some(())
    });
    let runs = s.pool_dir().join("runs");
    let recorded = std::fs::read_dir(&runs).unwrap().flatten().filter(|e| e.path().is_dir()).count();
    assert_eq!(recorded, 1, "the run's record survives its supervisor");

    // The next command (ps) tears the run down and says what happened.
    let c = ps_entry(&s, "victim").unwrap();
    assert_eq!(c["state"], "exited", "{c}");
    assert_eq!(c["exit"]["code"], 137, "{c}");
    assert!(c["exit"]["error"].as_str().unwrap().contains("supervisor died"), "{c}");
    assert_nothing_left(&s);
    assert_eq!(s.json(&["info", "victim", "--json"])["active"], false, "the snapshot is kept, inactive");
    let claims: Vec<String> = std::fs::read_dir("/run/rcx-dm/ips")
        .map(|d| d.flatten().filter_map(|e| std::fs::read_to_string(e.path()).ok()).collect())
        .unwrap_or_default();
    assert!(!claims.iter().any(|c| c.contains(path_str(&s.pool_dir()))), "address claims left: {claims:?}");
    assert_eq!(s.ok(&["wait", "victim"]), "137\n");
    let err = s.fails(&["exec", "victim", "--", "true"]);
    assert!(err.contains("is exited"), "{err}");
    s.ok(&["rm", "victim"]);
    assert_eq!(volume_names(&s), ["base"]);
    assert_nothing_left(&s);
}
