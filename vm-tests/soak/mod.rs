//! The soak (issue 13): a randomized mix of every operation on ONE pool by several clients at
//! once, through the CLI and through `rcx-dm serve`'s gRPC API, while a chaos thread SIGKILLs
//! random in-flight rcx-dm processes (and now and then serve itself) and some operations run
//! with a random `RCX_DM_FAIL_AT` point (kill or error mode).
//!
//! Each client keeps a model of what it made: its volumes (by name, `c<N>-v<M>`) with the
//! content each may hold (a list of alternatives: a known pattern written with O_DIRECT, zeros,
//! or an ext4 whose tracked files have known contents), its images and its serve keys. An
//! operation that succeeded is definite; one killed or failed mid-way is in doubt: the client's
//! next command (`list --json`, which must succeed: recovery) and the store say whether it took
//! effect, and its content becomes "old or new" until a verification reads which. At the end:
//! quiesce, every model volume, image and serve key is there with content it may hold and
//! nothing else of the clients' is; the store's active volumes and the kernel's dm devices agree;
//! no run record, cgroup, mount or stray loop is left; `pool deactivate` leaves no device or loop,
//! thin_check is clean and thin_ls lists exactly the store's ids; `pool activate` brings it all
//! back.
//!
//! Environment: `RCX_DM_SOAK_MINUTES` (default 1), `RCX_DM_SOAK_SEED` (default: from the clock,
//! always printed), `RCX_DM_SOAK_CLIENTS` (3), `RCX_DM_SOAK_REPORT` (a file for the summary as
//! JSON). `tools/soak` runs it in the VM.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::grpc::{self, Snapshotter};
use crate::oci_build::{tar_of, write_layout, Comp, E};

mod client;
mod client_serve;
mod content;
mod final_checks;
mod model;
mod serve;
mod shared;

use client::*;
use content::*;
use final_checks::*;
use model::*;
use serve::*;
use shared::*;

const MIB: usize = 1 << 20;
/// A pattern volume: this many bytes of pattern at offset 0; the check reads twice as much
/// (the rest must be zeros).
const PATTERN_LEN: usize = MIB;
const RAW_SIZE: &str = "16M";
const RAW_BYTES: u64 = 16 << 20;
/// ext4 volumes, images and serve's snapshots: one formatted base for all.
const FS_SIZE: &str = "64M";
const FS_BYTES: u64 = 64 << 20;
const EXTEND_STEP: u64 = 32 << 20;
const EXTEND_MAX: u64 = 2 << 30;
const META_STEP: u64 = 4 << 20;
/// A command that runs longer than this is killed and counted as a violation (a hang).
const CMD_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_VOLS: usize = 12;
const MAX_KEYS: usize = 8;
const MAX_IMAGES: usize = 3;
/// The files an ext4's content is judged by (paths inside the filesystem).
const TRACKED: &[&str] = &["etc/soak-img", "soak-run", "soak-pop", "soak-key"];


// ---- chaos ------------------------------------------------------------------------------------

fn chaos(sh: &Shared, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut last_serve_kill = Instant::now();
    let mut next_serve_kill = Duration::from_secs(20 + rng.below(40));
    while !sh.stopping() {
        std::thread::sleep(Duration::from_millis(20));
        supervise_serve(sh, &mut rng);
        if last_serve_kill.elapsed() > next_serve_kill {
            last_serve_kill = Instant::now();
            next_serve_kill = Duration::from_secs(20 + rng.below(40));
            kill_serve(sh);
            supervise_serve(sh, &mut rng);
            continue;
        }
        // The commands whose moment has come (chosen by their client when it started them).
        let mut procs = sh.procs.lock().unwrap();
        let now = Instant::now();
        for (pid, p) in procs.iter_mut() {
            if !p.killed && p.kill_at.is_some_and(|t| t <= now) {
                p.killed = true;
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), nix::sys::signal::Signal::SIGKILL);
                eprintln!("soak: chaos SIGKILL {} ({})", pid, p.label);
            }
        }
    }
}

// ---- setup ------------------------------------------------------------------------------------

/// A busybox layer with the applets the soak's scripts use, then a layer naming the image.
fn make_layouts(work: &Path) -> Vec<(PathBuf, String)> {
    let bb = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static, from tools/setup)");
    let mut entries = vec![E::Dir("bin", 0o755), E::File("bin/busybox", 0o755, &bb), E::Dir("etc", 0o755), E::Dir("tmp", 0o1777)];
    let applets = ["sh", "cat", "echo", "test", "true", "sleep", "ls"];
    let names: Vec<String> = applets.iter().map(|a| format!("bin/{a}")).collect();
    for n in &names {
        entries.push(E::Symlink(n, "busybox"));
    }
    let base = tar_of(&entries);
    ["alpha", "beta"]
        .iter()
        .map(|m| {
            let dir = work.join(format!("oci-{m}"));
            let top = tar_of(&[E::File("etc/soak-img", 0o644, format!("{m}\n").as_bytes())]);
            write_layout(&dir, &[(base.clone(), Comp::Gzip), (top, Comp::Plain)]);
            (dir, m.to_string())
        })
        .collect()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn sh_out(cmd: &str) -> String {
    Command::new("sh").arg("-c").arg(cmd).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
}

// ---- the test ---------------------------------------------------------------------------------

// Not in the plain vm-test run: its kills still find defects (README "Soak", open findings),
// and a randomized run that fails one CI run in several is not a gate yet. tools/soak runs it.
#[test]
#[ignore = "randomized soak: run by tools/soak"]
fn soak_randomized_operations_with_kills() {
    let minutes = std::env::var("RCX_DM_SOAK_MINUTES").ok().and_then(|m| m.trim().parse::<f64>().ok()).unwrap_or(1.0);
    let seed = env_u64("RCX_DM_SOAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 % 1_000_000_000
    });
    let nclients = env_u64("RCX_DM_SOAK_CLIENTS").unwrap_or(3).clamp(1, 8) as usize;
    println!("soak: seed {seed} (replay with RCX_DM_SOAK_SEED={seed}), {minutes} minutes, {nclients} clients");
    let _ = bin(); // the tmpfs copy, before any thread forks

    let s = Scenario::new("soak");
    let work = s.root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    s.ok(&["pool", "create", "--data-size", "512M", "--meta-size", "16M"]);
    let st0 = s.json(&["pool", "status", "--json"]);
    let (initial_data, initial_meta) = (st0["data_bytes"].as_u64().unwrap(), st0["meta_bytes"].as_u64().unwrap());
    let layouts = make_layouts(&work);
    let socket = work.join("snap.sock");
    let sh = Arc::new(Shared {
        s,
        work,
        socket,
        stop: AtomicBool::new(false),
        procs: Mutex::new(BTreeMap::new()),
        serve: Mutex::new(ServeState { child: None, generation: 0, armed: None, started: Instant::now() }),
        stats: Mutex::new(Stats::default()),
        violations: Mutex::new(Vec::new()),
        journal: Mutex::new(Vec::new()),
        started: Instant::now(),
        layouts,
        seq: AtomicU64::new(0),
        extends: Mutex::new((0, 0, 0, 0)),
        scratch_allowed: Mutex::new(BTreeSet::new()),
    });
    {
        let mut st = sh.serve.lock().unwrap();
        start_serve(&sh, &mut st, None);
    }
    if let Err(e) = Snapshotter::connect_within(&sh.socket, 120) {
        panic!("serve did not come up: {e}\n{}", tail_file(&serve_log(&sh), 30));
    }

    let deadline = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
    let shr: &Shared = &sh;
    let clients: Vec<Client> = std::thread::scope(|scope| {
        let chaos_h = scope.spawn(move || chaos(shr, seed ^ 0xc4a0));
        let handles: Vec<_> = (0..nclients)
            .map(|i| {
                scope.spawn(move || {
                    let mut c = Client::new(shr, i, format!("c{i}"), seed.wrapping_add(1 + i as u64).wrapping_mul(0x9E37_79B9));
                    let mut last_report = Instant::now();
                    while Instant::now() < deadline {
                        // A panic in the soak's own code (e.g. a write the pool refused) is
                        // a violation too, not the end of the run.
                        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.step())) {
                            shr.violation(&c.who.clone(), format!("panic: {}", panic_text(&e)));
                            c.snap = None;
                        }
                        if i == 0 && last_report.elapsed() > Duration::from_secs(60) {
                            last_report = Instant::now();
                            let st = shr.stats.lock().unwrap();
                            let ops: u64 = st.ops.values().map(|c| c.ok + c.doubt + c.failed).sum();
                            println!(
                                "soak: {:.0}s: {ops} operations, {} kills, {} serve kills, {} faults fired, {} violations",
                                shr.started.elapsed().as_secs_f64(),
                                st.kills,
                                st.serve_kills,
                                st.faults_fired_kill + st.faults_fired_error,
                                shr.violations.lock().unwrap().len()
                            );
                        }
                    }
                    c.snap = None;
                    c
                })
            })
            .collect();
        let clients: Vec<Client> = handles.into_iter().map(|h| h.join().expect("client thread panicked")).collect();
        shr.stop.store(true, Ordering::SeqCst);
        chaos_h.join().expect("chaos thread panicked");
        clients
    });
    let soak_secs = sh.started.elapsed().as_secs_f64();
    final_checks(&sh, clients, initial_data, initial_meta);

    // The summary.
    let st = sh.stats.lock().unwrap();
    let viol = sh.violations.lock().unwrap().clone();
    let total: OpCount = st.ops.values().fold(OpCount::default(), |a, c| OpCount { ok: a.ok + c.ok, doubt: a.doubt + c.doubt, failed: a.failed + c.failed });
    println!("\nsoak summary: seed {seed}, {minutes} minutes ({soak_secs:.0} s of operations), {nclients} clients");
    println!("{:<18} {:>7} {:>9} {:>7}", "operation", "ok", "in doubt", "failed");
    for (k, c) in &st.ops {
        println!("{k:<18} {:>7} {:>9} {:>7}", c.ok, c.doubt, c.failed);
    }
    println!("{:<18} {:>7} {:>9} {:>7}", "total", total.ok, total.doubt, total.failed);
    println!(
        "kills (chaos SIGKILL of rcx-dm commands): {}\nserve kills: {}, serve restarts: {}, serve faults armed: {}, serve deaths by fault: {}\n\
         faults armed: {}, fired as kill: {}, fired as error: {}\nrecoveries (next command after a kill/fault succeeded): {}\ncontent verifications: {}\nviolations: {}",
        st.kills, st.serve_kills, st.serve_restarts, st.serve_faults_armed, st.serve_fault_deaths, st.faults_armed, st.faults_fired_kill,
        st.faults_fired_error, st.recoveries, st.verifications, viol.len()
    );
    for n in &st.notes {
        println!("note: {n}");
    }
    for x in &viol {
        println!("VIOLATION {x}");
    }
    {
        let ops: serde_json::Map<String, serde_json::Value> = st
            .ops
            .iter()
            .map(|(k, c)| (k.to_string(), serde_json::json!({"ok": c.ok, "in_doubt": c.doubt, "failed": c.failed})))
            .collect();
        let report = serde_json::json!({
            "seed": seed, "minutes": minutes, "clients": nclients, "seconds": soak_secs,
            "operations": {"total": total.ok + total.doubt + total.failed, "ok": total.ok, "in_doubt": total.doubt, "failed": total.failed, "by_kind": ops},
            "kills": st.kills, "serve_kills": st.serve_kills, "serve_restarts": st.serve_restarts,
            "serve_faults_armed": st.serve_faults_armed, "serve_fault_deaths": st.serve_fault_deaths,
            "faults_armed": st.faults_armed, "faults_fired_kill": st.faults_fired_kill, "faults_fired_error": st.faults_fired_error,
            "recoveries": st.recoveries, "verifications": st.verifications,
            "violations": viol, "notes": st.notes,
        });
        let text = serde_json::to_string_pretty(&report).unwrap() + "\n";
        // tools/soak cuts the report out of the output (the guest cannot write the host's files).
        println!("SOAK-REPORT-JSON-BEGIN\n{text}SOAK-REPORT-JSON-END");
        if let Ok(path) = std::env::var("RCX_DM_SOAK_REPORT") {
            if let Err(e) = std::fs::write(&path, &text) {
                eprintln!("soak: writing the report to {path}: {e} (tools/soak writes it from the output)");
            }
        }
    }
    if !viol.is_empty() {
        println!("serve.log (tail):\n{}", tail_file(&serve_log(&sh), 40));
    }
    assert!(viol.is_empty(), "{} soak violations (seed {seed}):\n{}", viol.len(), viol.join("\n"));
}

/// Each alternative after a run wrote `/soak-run` with `text`.
fn with_soak_run(alts: &Alts, text: &str) -> Alts {
    alts.iter()
        .map(|c| {
            let mut files = c.files().cloned().unwrap_or_default();
            files.insert("soak-run".into(), text.to_string());
            Content::Fs { files, runnable: true }
        })
        .collect()
}
