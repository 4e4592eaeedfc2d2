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

// ---- randomness -------------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x2545_f491_4f6c_dd1d)
    }
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

// ---- the model --------------------------------------------------------------------------------

/// What a volume may hold.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Content {
    /// PATTERN_LEN bytes of `pattern(seed)` then zeros; None: all zeros.
    Raw(Option<u64>),
    /// An ext4 whose TRACKED files are exactly these; `runnable`: it holds busybox (from an image
    /// or an OCI layout), so `rcx-dm run` can run in it.
    Fs { files: BTreeMap<String, String>, runnable: bool },
}

impl Content {
    fn is_fs(&self) -> bool {
        matches!(self, Content::Fs { .. })
    }
    fn runnable(&self) -> bool {
        matches!(self, Content::Fs { runnable: true, .. })
    }
    fn files(&self) -> Option<&BTreeMap<String, String>> {
        match self {
            Content::Fs { files, .. } => Some(files),
            _ => None,
        }
    }
}

/// Alternatives: the content is one of these (more than one after an operation in doubt).
type Alts = Vec<Content>;

fn union(a: &Alts, b: &Alts) -> Alts {
    let mut s: BTreeSet<Content> = a.iter().cloned().collect();
    s.extend(b.iter().cloned());
    s.into_iter().collect()
}

#[derive(Clone, Debug)]
struct Vol {
    /// Its id, once a listing showed it.
    id: Option<u32>,
    size: u64,
    alts: Alts,
    /// A populate of it was interrupted: a `populate-<id>` scratch may be left (the next
    /// populate of this volume removes it).
    scratch_may_remain: bool,
}

#[derive(Clone, Debug)]
struct Img {
    alts: Alts,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    Active,
    View,
    Committed,
}

#[derive(Clone, Debug)]
struct Key {
    kind: KeyKind,
    parent: String,
    /// Possible values of the file soak-key (None: absent).
    alts: Vec<Option<String>>,
}

// ---- statistics and violations ----------------------------------------------------------------

#[derive(Default, Clone, Copy)]
struct OpCount {
    ok: u64,
    /// Killed (by chaos or an injected fault) or failed by an injected error: in doubt.
    doubt: u64,
    /// Failed when it should not have (each one is also a violation).
    failed: u64,
}

#[derive(Default)]
struct Stats {
    ops: BTreeMap<&'static str, OpCount>,
    kills: u64,
    serve_kills: u64,
    faults_armed: u64,
    faults_fired_kill: u64,
    faults_fired_error: u64,
    serve_faults_armed: u64,
    serve_fault_deaths: u64,
    serve_restarts: u64,
    recoveries: u64,
    verifications: u64,
    notes: Vec<String>,
}

// ---- shared state -----------------------------------------------------------------------------

struct ServeState {
    child: Option<Child>,
    /// Bumped whenever serve goes away (killed, died); a call that failed in another generation
    /// than it started in is in doubt, not wrong.
    generation: u64,
    /// The fault serve was started with in this generation, and whether its mode is `error`.
    armed: Option<(String, bool)>,
    started: Instant,
}

struct Proc {
    label: String,
    killed: bool,
    /// The chaos thread SIGKILLs it at this moment if it still runs.
    kill_at: Option<Instant>,
}

struct Shared {
    s: Scenario,
    work: PathBuf,
    socket: PathBuf,
    stop: AtomicBool,
    procs: Mutex<BTreeMap<u32, Proc>>,
    serve: Mutex<ServeState>,
    stats: Mutex<Stats>,
    violations: Mutex<Vec<String>>,
    /// Every command's start and end, in the order they happened, for explaining a violation.
    journal: Mutex<Vec<String>>,
    started: Instant,
    /// OCI layouts to import (and populate from) and the soak-img each holds.
    layouts: Vec<(PathBuf, String)>,
    seq: AtomicU64,
    /// Successful / in-doubt `pool extend --data-size` and `--meta-size` steps.
    extends: Mutex<(u64, u64, u64, u64)>,
    /// Ids of volumes whose populate was interrupted: a `populate-<id>` may be left (until the
    /// volume's next populate or its delete removes it).
    scratch_allowed: Mutex<BTreeSet<u32>>,
}

impl Shared {
    fn violation(&self, who: &str, what: String) {
        let at = self.started.elapsed().as_secs_f64();
        let msg = format!("[{at:7.1}s {who}] {what}");
        eprintln!("SOAK VIOLATION {msg}");
        eprintln!("{}", self.history_of(&what));
        self.violations.lock().unwrap().push(msg);
    }

    fn journal(&self, line: String) {
        let at = self.started.elapsed().as_secs_f64();
        self.journal.lock().unwrap().push(format!("{at:7.1}s {line}"));
    }

    /// The journal's lines that name a soak object (`c1-v275`, `c0-img12`) named in `what`.
    fn history_of(&self, what: &str) -> String {
        let names: BTreeSet<&str> = what
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.len() > 3 && w.starts_with('c') && w[1..].split_once('-').is_some_and(|(n, r)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !r.is_empty()))
            .collect();
        let j = self.journal.lock().unwrap();
        let lines: Vec<&str> = j
            .iter()
            .filter(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).any(|w| names.contains(w)))
            .map(String::as_str)
            .collect();
        format!("history of {names:?}:\n  {}", lines[lines.len().saturating_sub(40)..].join("\n  "))
    }

    fn note(&self, what: String) {
        eprintln!("soak note: {what}");
        self.stats.lock().unwrap().notes.push(what);
    }

    fn count(&self, op: &'static str, f: impl FnOnce(&mut OpCount)) {
        let mut st = self.stats.lock().unwrap();
        f(st.ops.entry(op).or_default());
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst)
    }
}

// ---- running the CLI --------------------------------------------------------------------------

struct Out {
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    /// SIGKILLed by the chaos thread.
    chaos: bool,
    timed_out: bool,
}

impl Out {
    fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
    fn sigkill(&self) -> bool {
        self.status.is_some_and(|s| s.signal() == Some(libc::SIGKILL))
    }
    fn describe(&self) -> String {
        let st = match self.status {
            Some(s) => s.to_string(),
            None => "no status".into(),
        };
        let tail = |t: &str| {
            let l: Vec<&str> = t.lines().collect();
            l[l.len().saturating_sub(8)..].join("\n")
        };
        format!("{st}{}{}\nstdout: {}\nstderr: {}", if self.chaos { " (chaos kill)" } else { "" }, if self.timed_out { " (TIMED OUT)" } else { "" }, tail(&self.stdout), tail(&self.stderr))
    }
    fn last_line(&self) -> String {
        self.stdout.lines().last().unwrap_or("").trim().to_string()
    }
}

/// Run rcx-dm on the soak's pool; the child is registered for the chaos thread while it runs;
/// stdout and stderr go through files (no pipe can fill up).
fn cli(sh: &Shared, who: &str, args: &[&str], env: &[(&str, &str)], kill_after: Option<Duration>) -> Out {
    let n = sh.next_seq();
    let of = sh.work.join(format!("out-{who}-{n}"));
    let ef = sh.work.join(format!("err-{who}-{n}"));
    let mut c = Command::new(bin());
    c.args(args)
        .env("RCX_DM_ROOT", &sh.s.root)
        .env("RCX_DM_POOL", &sh.s.pool)
        .env("RCX_DM_OVERCOMMIT", "1")
        .env_remove("RCX_DM_FAIL_AT")
        .env_remove("RCX_DM_FAIL_MODE")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = None;
    for _ in 0..100 {
        c.stdout(std::fs::File::create(&of).unwrap()).stderr(std::fs::File::create(&ef).unwrap());
        // Spawn under the registry's lock: the chaos thread never sees a pid that is not ours.
        let mut procs = sh.procs.lock().unwrap();
        match c.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                drop(procs);
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("spawn rcx-dm: {e}"),
            Ok(ch) => {
                let kill_at = kill_after.map(|d| Instant::now() + d);
                let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
                sh.journal(format!("{who} #{n} start: {}rcx-dm {}", env.concat(), args.join(" ")));
                procs.insert(ch.id(), Proc { label: format!("{who}: {}", args.join(" ")), killed: false, kill_at });
                child = Some(ch);
                break;
            }
        }
    }
    let mut child = child.expect("rcx-dm kept failing with ETXTBSY");
    let pid = child.id();
    let t0 = Instant::now();
    let mut timed_out = false;
    let (status, chaos) = loop {
        {
            // Reap under the lock too, so a kill can never hit a reaped (reusable) pid.
            let mut procs = sh.procs.lock().unwrap();
            if let Some(st) = child.try_wait().expect("wait for rcx-dm") {
                let p = procs.remove(&pid).expect("registered child");
                break (Some(st), p.killed);
            }
            if !timed_out && t0.elapsed() > CMD_TIMEOUT {
                timed_out = true;
                let _ = child.kill();
            }
        }
        std::thread::sleep(Duration::from_millis(15));
    };
    let out = Out {
        status,
        stdout: std::fs::read_to_string(&of).unwrap_or_default(),
        stderr: std::fs::read_to_string(&ef).unwrap_or_default(),
        chaos,
        timed_out,
    };
    let _ = std::fs::remove_file(&of);
    let _ = std::fs::remove_file(&ef);
    let last_err = out.stderr.lines().last().unwrap_or("");
    sh.journal(format!("{who} #{n} end: {}{} {last_err}", out.status.map_or("no status".into(), |s| s.to_string()), if chaos { " (chaos kill)" } else { "" }));
    if timed_out {
        sh.violation(who, format!("rcx-dm {} hung for more than {} s and was killed: {}", args.join(" "), CMD_TIMEOUT.as_secs(), out.describe()));
    }
    out
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// Killed or failed by a fault: either outcome allowed; resolve from the store.
    Doubt,
    /// Failed without a reason: a violation (already recorded); resolve from the store too.
    Failed,
}

/// Judge a command's result, counting kills, faults and violations.
fn judge(sh: &Shared, who: &str, op: &'static str, args: &[&str], fault: &Option<(String, bool)>, out: &Out) -> Outcome {
    let o = if out.ok() {
        Outcome::Ok
    } else if out.chaos {
        sh.stats.lock().unwrap().kills += 1;
        Outcome::Doubt
    } else if out.timed_out {
        Outcome::Failed
    } else if let Some((point, error_mode)) = fault {
        if !error_mode && out.sigkill() {
            sh.stats.lock().unwrap().faults_fired_kill += 1;
            Outcome::Doubt
        } else if *error_mode && out.stderr.contains(&format!("injected fault at step '{point}'")) {
            sh.stats.lock().unwrap().faults_fired_error += 1;
            Outcome::Doubt
        } else {
            sh.violation(who, format!("rcx-dm {} (RCX_DM_FAIL_AT={point}{}) failed otherwise than by the fault: {}", args.join(" "), if *error_mode { ", error mode" } else { "" }, out.describe()));
            Outcome::Failed
        }
    } else {
        sh.violation(who, format!("rcx-dm {} failed: {}", args.join(" "), out.describe()));
        Outcome::Failed
    };
    sh.count(op, |c| match o {
        Outcome::Ok => c.ok += 1,
        Outcome::Doubt => c.doubt += 1,
        Outcome::Failed => c.failed += 1,
    });
    o
}

// ---- serve ------------------------------------------------------------------------------------

fn serve_log(sh: &Shared) -> PathBuf {
    sh.work.join("serve.log")
}

fn tail_file(p: &Path, n: usize) -> String {
    let t = std::fs::read_to_string(p).unwrap_or_default();
    let l: Vec<&str> = t.lines().collect();
    l[l.len().saturating_sub(n)..].join("\n")
}

/// Start serve (under the serve lock), optionally with a fault armed.
fn start_serve(sh: &Shared, st: &mut ServeState, fault: Option<(String, bool)>) {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(serve_log(sh)).unwrap();
    let mut c = Command::new(bin());
    c.args(["serve", "--socket", path_str(&sh.socket), "--size", FS_SIZE, "--no-monitor"])
        .env("RCX_DM_ROOT", &sh.s.root)
        .env("RCX_DM_POOL", &sh.s.pool)
        .env("RCX_DM_OVERCOMMIT", "1")
        .env("RUST_LOG", "rcx_dm=info")
        .env_remove("RCX_DM_FAIL_AT")
        .env_remove("RCX_DM_FAIL_MODE")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    if let Some((p, err)) = &fault {
        c.env("RCX_DM_FAIL_AT", p);
        if *err {
            c.env("RCX_DM_FAIL_MODE", "error");
        }
    }
    let child = loop {
        match c.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => std::thread::sleep(Duration::from_millis(20)),
            r => break r.expect("spawn rcx-dm serve"),
        }
    };
    st.child = Some(child);
    st.armed = fault;
    st.started = Instant::now();
}

/// Points serve passes: prepares are snapshots, removes deletes, commits deactivate.
const SERVE_FAULTS: &[&str] = &[
    "snap.intent", "snap.created", "snap.committed", "snap.recorded", "snap.activated",
    "delete.intent", "delete.discarded", "delete.deleted", "delete.committed", "delete.recorded",
];

/// Kill serve now (chaos); the supervisor restarts it.
fn kill_serve(sh: &Shared) {
    let mut st = sh.serve.lock().unwrap();
    if let Some(mut c) = st.child.take() {
        let _ = c.kill();
        let _ = c.wait();
        st.generation += 1;
        st.armed = None;
        sh.stats.lock().unwrap().serve_kills += 1;
    }
}

/// Restart serve if it is gone; a death that is not an armed fault's is a violation.
fn supervise_serve(sh: &Shared, rng: &mut Rng) {
    let mut st = sh.serve.lock().unwrap();
    let exited = match st.child.as_mut() {
        None => true,
        Some(c) => match c.try_wait().unwrap() {
            None => false,
            Some(status) => {
                let by_fault = st.armed.as_ref().is_some_and(|(_, err)| !err) && status.signal() == Some(libc::SIGKILL);
                if by_fault {
                    sh.stats.lock().unwrap().serve_fault_deaths += 1;
                } else {
                    sh.violation("serve", format!("rcx-dm serve exited by itself ({status}); log:\n{}", tail_file(&serve_log(sh), 20)));
                }
                st.child = None;
                st.generation += 1;
                true
            }
        },
    };
    if exited {
        let fault = if !sh.stopping() && rng.chance(0.35) {
            sh.stats.lock().unwrap().serve_faults_armed += 1;
            Some((rng.pick(SERVE_FAULTS).to_string(), rng.chance(0.25)))
        } else {
            None
        };
        sh.stats.lock().unwrap().serve_restarts += 1;
        start_serve(sh, &mut st, fault);
    }
}

/// The serve generation now, and whether an error-mode fault is armed in it.
fn serve_gen(sh: &Shared) -> u64 {
    sh.serve.lock().unwrap().generation
}

/// After a failed call: whether serve went away (or an armed error fault may explain it) since
/// generation `g`. Waits a moment for the process to be seen dead.
fn serve_disturbed(sh: &Shared, g: u64) -> bool {
    for _ in 0..20 {
        {
            let mut st = sh.serve.lock().unwrap();
            if st.generation != g || st.armed.as_ref().is_some_and(|(_, err)| *err) {
                return true;
            }
            if let Some(c) = st.child.as_mut() {
                if c.try_wait().ok().flatten().is_some() {
                    return true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

// ---- content checks ---------------------------------------------------------------------------

fn raw_expected(seed: Option<u64>) -> Vec<u8> {
    let mut v = match seed {
        Some(s) => pattern(s, PATTERN_LEN),
        None => vec![0; PATTERN_LEN],
    };
    v.resize(2 * PATTERN_LEN, 0);
    v
}

/// TRACKED files under a root directory.
fn tracked_files(root: &Path) -> BTreeMap<String, String> {
    TRACKED
        .iter()
        .filter_map(|f| std::fs::read_to_string(root.join(f)).ok().map(|c| (f.to_string(), c.trim_end().to_string())))
        .collect()
}

/// Mount `dev` (ext4) at a fresh directory, run `f` on its root, unmount.
fn with_mount<T>(sh: &Shared, dev: &Path, ro: bool, f: impl FnOnce(&Path) -> T) -> Result<T, String> {
    let dir = sh.work.join(format!("mnt-{}", sh.next_seq()));
    std::fs::create_dir_all(&dir).unwrap();
    let flags = if ro { nix::mount::MsFlags::MS_RDONLY } else { nix::mount::MsFlags::empty() };
    if let Err(e) = nix::mount::mount(Some(dev), &dir, Some("ext4"), flags, Some("noinit_itable")) {
        let _ = std::fs::remove_dir(&dir);
        return Err(format!("mounting {} (ext4{}): {e}", dev.display(), if ro { ", ro" } else { "" }));
    }
    let r = f(&dir);
    let u = umount(&dir);
    let _ = std::fs::remove_dir(&dir);
    u.map_err(|e| format!("unmounting {}: {e}", dir.display()))?;
    Ok(r)
}

/// What the device holds, judged against the alternatives; Ok(index of the match).
fn check_content(sh: &Shared, dev: &Path, alts: &Alts) -> Result<usize, String> {
    let head = read_direct_at(dev, 0, 2 * PATTERN_LEN);
    let ext4_magic = {
        let sb = read_direct_at(dev, 0, 4096);
        sb[1024 + 0x38] == 0x53 && sb[1024 + 0x39] == 0xEF
    };
    let mut files = None;
    for (i, a) in alts.iter().enumerate() {
        match a {
            Content::Raw(seed) => {
                if head == raw_expected(*seed) {
                    return Ok(i);
                }
            }
            Content::Fs { files: want, .. } => {
                if !ext4_magic {
                    continue;
                }
                if files.is_none() {
                    files = Some(with_mount(sh, dev, true, tracked_files)?);
                }
                if files.as_ref() == Some(want) {
                    return Ok(i);
                }
            }
        }
    }
    let seen = if let Some(f) = files {
        format!("an ext4 with tracked files {f:?}")
    } else if ext4_magic {
        "an ext4 (files not read)".to_string()
    } else {
        let nonzero = head.iter().position(|b| *b != 0);
        format!("raw bytes (first non-zero at {nonzero:?})")
    };
    Err(format!("holds {seen}, expected one of {alts:?}"))
}

// ---- a client ---------------------------------------------------------------------------------

struct Client<'a> {
    sh: &'a Shared,
    id: usize,
    who: String,
    rng: Rng,
    vols: BTreeMap<String, Vol>,
    images: BTreeMap<String, Img>,
    keys: BTreeMap<String, Key>,
    n: u64,
    snap: Option<Snapshotter>,
    /// The serve generation `snap` was connected in: a connection to an earlier serve is dropped.
    snap_gen: u64,
    /// The last command was killed or failed: the next one is the recovery check.
    must_recover: bool,
}

const CREATE_FAULTS: &[&str] = &["create.intent", "create.created", "create.committed", "create.recorded", "create.activated"];
const SNAP_FAULTS: &[&str] = &["snap.intent", "snap.suspended", "snap.created", "snap.resumed", "snap.committed", "snap.recorded", "snap.activated"];
const DELETE_FAULTS: &[&str] = &["delete.intent", "delete.discarded", "delete.deleted", "delete.committed", "delete.recorded"];
const REVERT_FAULTS: &[&str] = &[
    "revert.intent", "revert.deactivated", "revert.snapped", "revert.deleted", "revert.restored", "revert.cleaned", "revert.recorded",
    "revert.activated",
];
const EXTEND_FAULTS: &[&str] = &["extend.intent", "extend.grown", "extend.capacity", "extend.loaded", "extend.suspended", "extend.resumed", "extend.recorded"];

impl<'a> Client<'a> {
    fn name(&mut self, what: &str) -> String {
        self.n += 1;
        format!("c{}-{what}{}", self.id, self.n)
    }

    /// A random fault from `points` for about one operation in five: (point, error mode).
    fn maybe_fault(&mut self, points: &[&[&str]]) -> Option<(String, bool)> {
        if !self.rng.chance(0.2) {
            return None;
        }
        let all: Vec<&str> = points.iter().flat_map(|p| p.iter().copied()).collect();
        self.sh.stats.lock().unwrap().faults_armed += 1;
        Some((self.rng.pick(&all).to_string(), self.rng.chance(0.25)))
    }

    /// Run a command (with a fault, if given) and judge it.
    fn run(&mut self, op: &'static str, args: &[&str], fault: Option<(String, bool)>) -> (Outcome, Out) {
        let mut env: Vec<(&str, &str)> = Vec::new();
        if let Some((p, err)) = &fault {
            env.push(("RCX_DM_FAIL_AT", p.as_str()));
            if *err {
                env.push(("RCX_DM_FAIL_MODE", "error"));
            }
        }
        // About one command in seven is SIGKILLed at a random moment of its life.
        let kill_after = if self.rng.chance(0.15) {
            let span = *self.rng.pick(&[800u64, 2500, 8000]);
            Some(Duration::from_millis(self.rng.below(span)))
        } else {
            None
        };
        let out = cli(self.sh, &self.who, args, &env, kill_after);
        let o = judge(self.sh, &self.who, op, args, &fault, &out);
        if o != Outcome::Ok {
            self.must_recover = true;
        }
        (o, out)
    }

    /// A command that must succeed (no fault); a chaos kill is retried. None when it failed
    /// otherwise (a violation) or the soak is stopping.
    fn must(&mut self, op: &'static str, args: &[&str]) -> Option<Out> {
        for _ in 0..20 {
            let (o, out) = self.run(op, args, None);
            match o {
                Outcome::Ok => {
                    self.recovered();
                    return Some(out);
                }
                Outcome::Doubt => continue, // killed by chaos: again
                Outcome::Failed => return None,
            }
        }
        self.sh.violation(&self.who, format!("rcx-dm {} was killed 20 times in a row", args.join(" ")));
        None
    }

    fn recovered(&mut self) {
        if self.must_recover {
            self.must_recover = false;
            self.sh.stats.lock().unwrap().recoveries += 1;
        }
    }

    /// The store's volumes (`list --json`): the recovery check after a kill, and how doubts
    /// are resolved. name -> (id, active).
    fn list(&mut self) -> Option<BTreeMap<String, (u32, bool)>> {
        let out = self.must("list", &["list", "--json"])?;
        let v: serde_json::Value = match serde_json::from_str(&out.stdout) {
            Ok(v) => v,
            Err(e) => {
                self.sh.violation(&self.who, format!("list --json printed no JSON ({e}): {}", out.stdout));
                return None;
            }
        };
        let mut m = BTreeMap::new();
        for x in v.as_array().into_iter().flatten() {
            let id = x["id"].as_u64().unwrap_or(u64::MAX) as u32;
            let name = x["name"].as_str().map_or_else(|| id.to_string(), str::to_string);
            m.insert(name, (id, x["active"] == true));
        }
        for (name, v) in self.vols.iter_mut() {
            if let Some((id, _)) = m.get(name) {
                v.id = Some(*id);
            }
        }
        Some(m)
    }

    fn image_names(&mut self) -> Option<BTreeSet<String>> {
        let out = self.must("image-list", &["image", "list", "--json"])?;
        let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        Some(v.as_array().into_iter().flatten().filter_map(|i| i["name"].as_str().map(str::to_string)).collect())
    }

    /// Whether `name` exists now (after a doubtful operation); None if the store cannot say.
    fn exists(&mut self, name: &str) -> Option<bool> {
        self.list().map(|l| l.contains_key(name))
    }

    fn activate(&mut self, name: &str) -> Option<PathBuf> {
        let out = self.must("activate", &["activate", name])?;
        Some(PathBuf::from(out.last_line()))
    }

    fn pick_vol(&mut self, f: impl Fn(&Vol) -> bool) -> Option<String> {
        let c: Vec<String> = self.vols.iter().filter(|(_, v)| f(v)).map(|(k, _)| k.clone()).collect();
        if c.is_empty() {
            None
        } else {
            Some(self.rng.pick(&c).clone())
        }
    }

    // ---- CLI operations ----

    fn op_create_raw(&mut self) {
        let name = self.name("v");
        let f = self.maybe_fault(&[CREATE_FAULTS]);
        let (o, out) = self.run("thin-create", &["thin", "create", "--size", RAW_SIZE, "--name", &name], f);
        if o == Outcome::Ok {
            let dev = PathBuf::from(out.last_line());
            let seed = self.rng.next();
            write_direct_at(&dev, 0, &pattern(seed, PATTERN_LEN));
            self.vols.insert(name, Vol { id: None, size: RAW_BYTES, alts: vec![Content::Raw(Some(seed))], scratch_may_remain: false });
        } else if self.exists(&name) == Some(true) {
            self.vols.insert(name, Vol { id: None, size: RAW_BYTES, alts: vec![Content::Raw(None)], scratch_may_remain: false });
        }
    }

    fn op_create_fs(&mut self) {
        let name = self.name("v");
        let f = self.maybe_fault(&[SNAP_FAULTS, &["base.format"]]);
        let (o, _) = self.run("thin-create-fs", &["thin", "create", "--fs", "ext4", "--size", FS_SIZE, "--name", &name], f);
        let empty = Content::Fs { files: BTreeMap::new(), runnable: false };
        if o == Outcome::Ok || self.exists(&name) == Some(true) {
            self.vols.insert(name, Vol { id: None, size: FS_BYTES, alts: vec![empty], scratch_may_remain: false });
        }
    }

    fn op_write(&mut self) {
        let Some(name) = self.pick_vol(|_| true) else { return };
        let Some(dev) = self.activate(&name) else { return };
        let seed = self.rng.next();
        write_direct_at(&dev, 0, &pattern(seed, PATTERN_LEN));
        // The rest of the first 2 MiB must read as zeros: the check compares it.
        write_direct_at(&dev, PATTERN_LEN as u64, &vec![0; PATTERN_LEN]);
        self.sh.count("write", |c| c.ok += 1);
        self.vols.get_mut(&name).unwrap().alts = vec![Content::Raw(Some(seed))];
    }

    fn op_snap(&mut self) {
        let Some(origin) = self.pick_vol(|_| true) else { return };
        let name = self.name("v");
        let f = self.maybe_fault(&[SNAP_FAULTS]);
        let (o, _) = self.run("snap", &["snap", "-", &origin, "--name", &name], f);
        if o == Outcome::Ok || self.exists(&name) == Some(true) {
            let v = Vol { scratch_may_remain: false, ..self.vols[&origin].clone() };
            self.vols.insert(name, v);
        }
    }

    fn op_delete(&mut self) {
        let Some(name) = self.pick_vol(|_| true) else { return };
        let f = self.maybe_fault(&[DELETE_FAULTS]);
        let (o, _) = self.run("delete", &["delete", &name, "--force"], f);
        if o == Outcome::Ok {
            // delete also removes what an interrupted populate of it left.
            if let Some(id) = self.vols[&name].id {
                self.sh.scratch_allowed.lock().unwrap().remove(&id);
            }
        }
        if o == Outcome::Ok || self.exists(&name) == Some(false) {
            self.vols.remove(&name);
        }
    }

    fn op_activate(&mut self) {
        let Some(name) = self.pick_vol(|_| true) else { return };
        if self.rng.chance(0.5) {
            self.must("activate", &["activate", &name]);
        } else {
            self.must("deactivate", &["deactivate", &name]);
        }
    }

    fn op_revert(&mut self) {
        let Some(v) = self.pick_vol(|_| true) else { return };
        let size = self.vols[&v].size;
        let Some(s) = self.pick_vol(|x| x.size == size) else { return };
        if s == v {
            return;
        }
        let f = self.maybe_fault(&[REVERT_FAULTS]);
        let (o, _) = self.run("revert", &["revert", &v, &s], f);
        let new = self.vols[&s].alts.clone();
        let vol = self.vols.get_mut(&v).unwrap();
        vol.alts = if o == Outcome::Ok { new } else { union(&vol.alts, &new) };
        if o != Outcome::Ok {
            self.list();
        }
    }

    fn op_populate(&mut self) {
        let Some(v) = self.pick_vol(|x| x.alts.iter().all(Content::is_fs)) else { return };
        let tag = format!("{}-{}", v, self.sh.next_seq());
        let (src, content) = match self.rng.below(3) {
            0 => {
                let p = self.sh.work.join(format!("pop-{tag}.tar"));
                std::fs::write(&p, tar_of(&[E::File("soak-pop", 0o644, format!("{tag}\n").as_bytes())])).unwrap();
                (p, Content::Fs { files: [("soak-pop".to_string(), tag.clone())].into(), runnable: false })
            }
            1 => {
                let p = self.sh.work.join(format!("pop-{tag}"));
                std::fs::create_dir_all(&p).unwrap();
                std::fs::write(p.join("soak-pop"), format!("{tag}\n")).unwrap();
                (p, Content::Fs { files: [("soak-pop".to_string(), tag.clone())].into(), runnable: false })
            }
            _ => {
                let (l, img) = self.rng.pick(&self.sh.layouts).clone();
                (l, Content::Fs { files: [("etc/soak-img".to_string(), img)].into(), runnable: true })
            }
        };
        let f = self.maybe_fault(&[&["populate.filled"], SNAP_FAULTS, REVERT_FAULTS, DELETE_FAULTS]);
        let (o, _) = self.run("populate", &["populate", &v, "--from", path_str(&src)], f);
        if o != Outcome::Ok {
            self.list();
        }
        let vol = self.vols.get_mut(&v).unwrap();
        if o == Outcome::Ok {
            vol.alts = vec![content];
            vol.scratch_may_remain = false;
            if let Some(id) = vol.id {
                self.sh.scratch_allowed.lock().unwrap().remove(&id);
            }
        } else {
            vol.alts = union(&vol.alts, &vec![content]);
            vol.scratch_may_remain = true;
            match vol.id {
                Some(id) => {
                    self.sh.scratch_allowed.lock().unwrap().insert(id);
                }
                None => self.sh.violation(&self.who, format!("volume {v}: no id known after an interrupted populate")),
            }
        }
        // The sources made for this populate (not the shared OCI layouts).
        if src.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("pop-")) {
            if src.is_dir() {
                let _ = std::fs::remove_dir_all(&src);
            } else {
                let _ = std::fs::remove_file(&src);
            }
        }
    }

    fn op_import(&mut self) {
        let name = self.name("img");
        let (layout, img) = self.rng.pick(&self.sh.layouts).clone();
        let f = self.maybe_fault(&[&["import.layer"], SNAP_FAULTS]);
        let (o, _) = self.run("image-import", &["image", "import", path_str(&layout), "--name", &name, "--size", FS_SIZE], f);
        let content = Content::Fs { files: [("etc/soak-img".to_string(), img)].into(), runnable: true };
        if o == Outcome::Ok || self.image_names().is_some_and(|n| n.contains(&name)) {
            self.images.insert(name, Img { alts: vec![content] });
        }
    }

    fn op_image_rm(&mut self) {
        let names: Vec<String> = self.images.keys().cloned().collect();
        if names.is_empty() {
            return;
        }
        let name = self.rng.pick(&names).clone();
        let f = self.maybe_fault(&[DELETE_FAULTS]);
        let (o, _) = self.run("image-rm", &["image", "rm", &name], f);
        if o == Outcome::Ok || self.image_names().is_some_and(|n| !n.contains(&name)) {
            self.images.remove(&name);
        }
    }

    fn op_commit(&mut self) {
        let Some(v) = self.pick_vol(|x| x.alts.iter().all(Content::runnable)) else { return };
        let name = self.name("cimg");
        let f = self.maybe_fault(&[SNAP_FAULTS]);
        let (o, _) = self.run("commit", &["commit", &v, "--name", &name], f);
        if o == Outcome::Ok || self.image_names().is_some_and(|n| n.contains(&name)) {
            let alts = self.vols[&v].alts.clone();
            self.images.insert(name, Img { alts });
        }
    }

    /// The shell line that prints the tracked files of a container's root as `path=content`.
    fn print_tracked() -> String {
        TRACKED.iter().map(|f| format!("test -e /{f} && echo \"{f}=$(cat /{f})\"; ")).collect::<String>() + "true"
    }

    fn parse_tracked(out: &str) -> BTreeMap<String, String> {
        out.lines().filter_map(|l| l.split_once('=')).map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    fn judge_files(&mut self, what: &str, out: &str, alts: &Alts) -> Option<usize> {
        let seen = Self::parse_tracked(out);
        let i = alts.iter().position(|a| a.files() == Some(&seen));
        self.sh.stats.lock().unwrap().verifications += 1;
        if i.is_none() {
            self.sh.violation(&self.who, format!("{what}: the container sees tracked files {seen:?}, expected one of {alts:?}"));
        }
        i
    }

    fn op_run_rm(&mut self) {
        let names: Vec<String> = self.images.keys().cloned().collect();
        if names.is_empty() {
            return;
        }
        let img = self.rng.pick(&names).clone();
        let f = self.maybe_fault(&[SNAP_FAULTS, DELETE_FAULTS]);
        let script = Self::print_tracked();
        let (o, out) = self.run("run-rm", &["run", "--rm", &img, "--", "/bin/sh", "-c", &script], f);
        if o == Outcome::Ok {
            let alts = self.images[&img].alts.clone();
            if let Some(i) = self.judge_files(&format!("run --rm {img}"), &out.stdout, &alts) {
                self.images.get_mut(&img).unwrap().alts = vec![alts[i].clone()];
            }
        } else {
            self.list();
        }
    }

    fn op_run_name(&mut self) {
        let names: Vec<String> = self.images.keys().cloned().collect();
        if names.is_empty() {
            return;
        }
        let img = self.rng.pick(&names).clone();
        let name = self.name("v");
        let f = self.maybe_fault(&[SNAP_FAULTS]);
        let script = format!("echo {name} > /soak-run");
        let (o, _) = self.run("run-name", &["run", "--name", &name, &img, "--", "/bin/sh", "-c", &script], f);
        let base = self.images[&img].alts.clone();
        let with_run = with_soak_run(&base, &name);
        if o == Outcome::Ok {
            self.vols.insert(name, Vol { id: None, size: FS_BYTES, alts: with_run, scratch_may_remain: false });
        } else if self.exists(&name) == Some(true) {
            self.vols.insert(name, Vol { id: None, size: FS_BYTES, alts: union(&base, &with_run), scratch_may_remain: false });
        }
    }

    fn op_run_in_place(&mut self) {
        let Some(v) = self.pick_vol(|x| x.alts.iter().all(Content::runnable)) else { return };
        let gen = format!("{v}-{}", self.sh.next_seq());
        let script = format!("{} ; echo {gen} > /soak-run", Self::print_tracked());
        let (o, out) = self.run("run-in-place", &["run", &v, "--", "/bin/sh", "-c", &script], None);
        let old = self.vols[&v].alts.clone();
        let new = with_soak_run(&old, &gen);
        if o == Outcome::Ok {
            if let Some(i) = self.judge_files(&format!("run {v}"), &out.stdout, &old) {
                self.vols.get_mut(&v).unwrap().alts = vec![new[i].clone()];
            }
        } else {
            self.vols.get_mut(&v).unwrap().alts = union(&old, &new);
            self.list();
        }
    }

    fn op_extend(&mut self) {
        let meta = self.rng.chance(0.2);
        {
            let e = self.sh.extends.lock().unwrap();
            if (e.0 + e.1) * EXTEND_STEP >= EXTEND_MAX {
                return;
            }
        }
        let f = self.maybe_fault(&[EXTEND_FAULTS]);
        let step = if meta { format!("+{}M", META_STEP >> 20) } else { format!("+{}M", EXTEND_STEP >> 20) };
        let flag = if meta { "--meta-size" } else { "--data-size" };
        let (o, _) = self.run("pool-extend", &["pool", "extend", flag, &step], f);
        let mut e = self.sh.extends.lock().unwrap();
        match (meta, o) {
            (false, Outcome::Ok) => e.0 += 1,
            (false, _) => e.1 += 1,
            (true, Outcome::Ok) => e.2 += 1,
            (true, _) => e.3 += 1,
        }
        drop(e);
        if o != Outcome::Ok {
            self.list();
        }
    }

    fn op_verify(&mut self) {
        let Some(name) = self.pick_vol(|_| true) else { return };
        let Some(dev) = self.activate(&name) else { return };
        self.verify_dev(&name, &dev);
    }

    fn verify_dev(&mut self, name: &str, dev: &Path) {
        let alts = self.vols[name].alts.clone();
        self.sh.stats.lock().unwrap().verifications += 1;
        match check_content(self.sh, dev, &alts) {
            Ok(i) => self.vols.get_mut(name).unwrap().alts = vec![alts[i].clone()],
            Err(e) => {
                self.sh.violation(&self.who, format!("volume {name}: {e}"));
                // Go on from what it holds: drop the volume from the checks.
                self.vols.remove(name);
            }
        }
    }

    // ---- serve operations ----

    fn snapshotter(&mut self) -> Option<&mut Snapshotter> {
        let g = serve_gen(self.sh);
        if self.snap_gen != g {
            self.snap = None;
        }
        if self.snap.is_none() {
            self.snap_gen = g;
            match Snapshotter::connect_within(&self.sh.socket, 120) {
                Ok(s) => self.snap = Some(s),
                Err(e) => {
                    if !self.sh.stopping() {
                        self.sh.violation(&self.who, format!("cannot reach serve for 120 s: {e}"));
                    }
                    return None;
                }
            }
        }
        self.snap.as_mut()
    }

    /// A gRPC call: Ok, or the failure judged (in doubt if serve went away meanwhile).
    fn grpc<T>(&mut self, op: &'static str, what: &str, f: impl FnOnce(&mut Snapshotter) -> grpc::Result<T>) -> Result<T, Outcome> {
        let g = serve_gen(self.sh);
        let s = self.snapshotter().ok_or(Outcome::Failed)?;
        let r = f(s);
        match r {
            Ok(v) => {
                self.sh.count(op, |c| c.ok += 1);
                Ok(v)
            }
            Err(st) => {
                self.snap = None; // reconnect next time
                let o = if serve_disturbed(self.sh, g) {
                    Outcome::Doubt
                } else {
                    self.sh.violation(&self.who, format!("serve {what}: {:?} {} (serve was up all along)", st.code(), st.message()));
                    Outcome::Failed
                };
                self.sh.count(op, |c| if o == Outcome::Doubt { c.doubt += 1 } else { c.failed += 1 });
                Err(o)
            }
        }
    }

    /// Stat after a doubt, retried until serve answers.
    fn key_exists(&mut self, key: &str) -> Option<bool> {
        for _ in 0..10 {
            let s = self.snapshotter()?;
            match s.exists(key) {
                Ok(b) => return Some(b),
                Err(e) if grpc::is_transport_error(&e) => {
                    self.snap = None;
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => {
                    self.sh.violation(&self.who, format!("serve stat {key}: {:?} {}", e.code(), e.message()));
                    return None;
                }
            }
        }
        None
    }

    fn new_key(&mut self) -> String {
        self.n += 1;
        format!("soak/c{}-k{}", self.id, self.n)
    }

    fn key_alts_as_content(alts: &[Option<String>]) -> Alts {
        alts.iter()
            .map(|a| Content::Fs { files: a.iter().map(|k| ("soak-key".to_string(), k.clone())).collect(), runnable: false })
            .collect()
    }

    fn op_prepare(&mut self) {
        let committed: Vec<String> = self.keys.iter().filter(|(_, k)| k.kind == KeyKind::Committed).map(|(n, _)| n.clone()).collect();
        let parent = if !committed.is_empty() && self.rng.chance(0.7) { self.rng.pick(&committed).clone() } else { String::new() };
        let view = !parent.is_empty() && self.rng.chance(0.25);
        let key = self.new_key();
        let parent_alts = if parent.is_empty() { vec![None] } else { self.keys[&parent].alts.clone() };
        let (op, kind) = if view { ("serve-view", KeyKind::View) } else { ("serve-prepare", KeyKind::Active) };
        let r = self.grpc(op, &format!("{op} {key} {parent:?}"), |s| if view { s.view(&key, &parent) } else { s.prepare(&key, &parent) });
        match r {
            Ok(mounts) => {
                let Some(m) = self.one_mount(&key, &mounts) else { return };
                // Check the inherited file, and (active) extend it.
                let src = PathBuf::from(&m.source);
                let want = Self::key_alts_as_content(&parent_alts);
                let ro = view;
                let newv = format!("{}/{}", parent_alts.first().cloned().flatten().unwrap_or_default(), key);
                let res = with_mount(self.sh, &src, ro, |root| {
                    let seen = tracked_files(root);
                    let old = seen.get("soak-key").cloned();
                    if !ro {
                        let v = format!("{}/{}", old.clone().unwrap_or_default(), key);
                        std::fs::write(root.join("soak-key"), format!("{v}\n")).unwrap();
                        let f = std::fs::File::open(root.join("soak-key")).unwrap();
                        f.sync_all().unwrap();
                        (seen, Some(v))
                    } else {
                        (seen, None)
                    }
                });
                self.sh.stats.lock().unwrap().verifications += 1;
                match res {
                    Err(e) => {
                        self.sh.violation(&self.who, format!("serve {op} {key}: {e}"));
                        self.keys.insert(key, Key { kind, parent, alts: parent_alts });
                    }
                    Ok((seen, written)) => {
                        let seen_c = Content::Fs { files: seen.clone(), runnable: false };
                        if !want.contains(&seen_c) {
                            self.sh.violation(&self.who, format!("serve {op} {key} of {parent:?}: holds {seen:?}, its parent one of {want:?}"));
                        }
                        let _ = newv;
                        let alts = match written {
                            Some(v) => vec![Some(v)],
                            None => vec![seen.get("soak-key").cloned()],
                        };
                        self.keys.insert(key, Key { kind, parent, alts });
                    }
                }
            }
            Err(_) => {
                if self.key_exists(&key) == Some(true) {
                    self.keys.insert(key, Key { kind, parent, alts: parent_alts });
                }
            }
        }
    }

    fn one_mount(&mut self, key: &str, mounts: &[grpc::Mount]) -> Option<grpc::Mount> {
        if mounts.len() != 1 || mounts[0].r#type != "ext4" || !Path::new(&mounts[0].source).exists() {
            self.sh.violation(&self.who, format!("serve {key}: expected one ext4 mount of an existing device, got {mounts:?}"));
            return None;
        }
        Some(mounts[0].clone())
    }

    fn op_commit_key(&mut self) {
        let active: Vec<String> = self.keys.iter().filter(|(_, k)| k.kind == KeyKind::Active).map(|(n, _)| n.clone()).collect();
        if active.is_empty() {
            return;
        }
        let key = self.rng.pick(&active).clone();
        let name = self.new_key();
        let r = self.grpc("serve-commit", &format!("commit {name} {key}"), |s| s.commit(&name, &key));
        let done = match r {
            Ok(()) => true,
            Err(_) => {
                let (a, b) = (self.key_exists(&name), self.key_exists(&key));
                match (a, b) {
                    (Some(true), Some(false)) => true,
                    (Some(false), Some(true)) => false,
                    (a, b) => {
                        self.sh.violation(&self.who, format!("serve commit {name} {key} in doubt: after recovery committed exists={a:?}, active exists={b:?}"));
                        if b == Some(false) {
                            self.keys.remove(&key);
                        }
                        return;
                    }
                }
            }
        };
        if done {
            let k = self.keys.remove(&key).unwrap();
            self.keys.insert(name, Key { kind: KeyKind::Committed, ..k });
        }
    }

    fn op_remove_key(&mut self) {
        let leaves: Vec<String> =
            self.keys.keys().filter(|k| !self.keys.values().any(|c| &c.parent == *k)).cloned().collect();
        if leaves.is_empty() {
            return;
        }
        let key = self.rng.pick(&leaves).clone();
        let r = self.grpc("serve-remove", &format!("remove {key}"), |s| s.remove(&key));
        if r.is_ok() || self.key_exists(&key) == Some(false) {
            self.keys.remove(&key);
        }
    }

    /// Mounts of an active snapshot or view: its file as expected.
    fn op_mounts(&mut self) {
        let live: Vec<String> = self.keys.iter().filter(|(_, k)| k.kind != KeyKind::Committed).map(|(n, _)| n.clone()).collect();
        if live.is_empty() {
            return;
        }
        let key = self.rng.pick(&live).clone();
        self.verify_key(&key);
    }

    fn verify_key(&mut self, key: &str) {
        let Ok(mounts) = self.grpc("serve-mounts", &format!("mounts {key}"), |s| s.mounts(key)) else { return };
        let Some(m) = self.one_mount(key, &mounts) else { return };
        let alts = self.keys[key].alts.clone();
        self.sh.stats.lock().unwrap().verifications += 1;
        match with_mount(self.sh, Path::new(&m.source), true, tracked_files) {
            Err(e) => self.sh.violation(&self.who, format!("serve {key}: {e}")),
            Ok(seen) => {
                let v = seen.get("soak-key").cloned();
                if !alts.contains(&v) || seen.len() != v.is_some() as usize {
                    self.sh.violation(&self.who, format!("serve {key}: holds {seen:?}, expected soak-key one of {alts:?}"));
                } else {
                    self.keys.get_mut(key).unwrap().alts = vec![v];
                }
            }
        }
    }

    /// A committed key checked through a view of it (removed again).
    fn verify_committed(&mut self, key: &str) {
        let view = self.new_key();
        let Ok(mounts) = self.grpc("serve-view", &format!("view {view} {key}"), |s| s.view(&view, key)) else {
            if self.key_exists(&view) == Some(true) {
                let _ = self.grpc("serve-remove", &format!("remove {view}"), |s| s.remove(&view));
            }
            return;
        };
        let alts = self.keys[key].alts.clone();
        if let Some(m) = self.one_mount(&view, &mounts) {
            self.sh.stats.lock().unwrap().verifications += 1;
            match with_mount(self.sh, Path::new(&m.source), true, tracked_files) {
                Err(e) => self.sh.violation(&self.who, format!("serve view of {key}: {e}")),
                Ok(seen) => {
                    let v = seen.get("soak-key").cloned();
                    if !alts.contains(&v) {
                        self.sh.violation(&self.who, format!("serve committed {key}: holds {seen:?}, expected soak-key one of {alts:?}"));
                    }
                }
            }
        }
        if self.grpc("serve-remove", &format!("remove {view}"), |s| s.remove(&view)).is_err() && self.key_exists(&view) == Some(true) {
            self.keys.insert(view, Key { kind: KeyKind::View, parent: key.to_string(), alts });
        }
    }

    // ---- the loop ----

    fn step(&mut self) {
        let nv = self.vols.len();
        let full = nv >= MAX_VOLS;
        let nk = self.keys.len();
        let ni = self.images.len();
        // (weight, op)
        let table: [(u64, fn(&mut Client<'a>)); 22] = [
            (if full { 0 } else { 6 }, Client::op_create_raw),
            (if full { 0 } else { 3 }, Client::op_create_fs),
            (4, Client::op_write),
            (if full { 0 } else { 6 }, Client::op_snap),
            (if full { 12 } else { 5 }, Client::op_delete),
            (4, Client::op_activate),
            (4, Client::op_revert),
            (3, Client::op_populate),
            (if ni >= MAX_IMAGES { 0 } else { 2 }, Client::op_import),
            (if ni >= MAX_IMAGES { 3 } else { 1 }, Client::op_image_rm),
            (1, Client::op_commit),
            (3, Client::op_run_rm),
            (if full { 0 } else { 2 }, Client::op_run_name),
            (2, Client::op_run_in_place),
            (1, Client::op_extend),
            (3, Client::op_verify),
            (if nk >= MAX_KEYS { 0 } else { 5 }, Client::op_prepare),
            (3, Client::op_commit_key),
            (if nk >= MAX_KEYS { 8 } else { 3 }, Client::op_remove_key),
            (2, Client::op_mounts),
            (0, Client::op_verify),
            (0, Client::op_verify),
        ];
        let total: u64 = table.iter().map(|t| t.0).sum();
        let mut r = self.rng.below(total);
        for (w, op) in table {
            if r < w {
                op(self);
                break;
            }
            r -= w;
        }
        if self.must_recover {
            // The recovery check: the next command after a kill or fault must succeed.
            self.list();
        }
    }
}

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

// ---- the final checks -------------------------------------------------------------------------

fn final_checks(sh: &Shared, clients: Vec<Client>, initial_data: u64, initial_meta: u64) {
    let who = "final";
    let v = |what: String| sh.violation(who, what);
    let mut c = Client {
        sh,
        id: 99,
        who: who.into(),
        rng: Rng::new(1),
        vols: BTreeMap::new(),
        images: BTreeMap::new(),
        keys: BTreeMap::new(),
        n: 0,
        snap: None,
        snap_gen: 0,
        must_recover: false,
    };
    let mut vols = BTreeMap::new();
    let mut images = BTreeMap::new();
    let mut keys = BTreeMap::new();
    for cl in clients {
        vols.extend(cl.vols);
        images.extend(cl.images);
        keys.extend(cl.keys);
    }
    // serve up (no fault) for its checks.
    {
        let mut st = sh.serve.lock().unwrap();
        let alive = st.child.as_mut().is_some_and(|ch| ch.try_wait().ok().flatten().is_none());
        if !alive || st.armed.is_some() {
            if let Some(mut ch) = st.child.take() {
                let _ = ch.kill();
                let _ = ch.wait();
            }
            st.generation += 1;
            start_serve(sh, &mut st, None);
        }
    }
    let Some(store) = c.list() else {
        v("list --json fails after the soak: no final checks possible".into());
        return;
    };
    println!("soak: final checks: {} volumes in the store, {} modelled, {} images, {} serve keys", store.len(), vols.len(), images.len(), keys.len());

    // serve: the keys, and their contents.
    c.keys = keys.clone();
    match Snapshotter::connect_within(&sh.socket, 120) {
        Err(e) => v(format!("serve unreachable at the end: {e}")),
        Ok(mut s) => {
            match s.list() {
                Err(e) => v(format!("serve List: {e:?}")),
                Ok(infos) => {
                    let got: BTreeSet<String> = infos.iter().map(|i| i.name.clone()).filter(|n| n.starts_with("soak/")).collect();
                    let want: BTreeSet<String> = keys.keys().cloned().collect();
                    if got != want {
                        v(format!(
                            "serve's snapshots differ from the model: only in serve {:?}, only in the model {:?}",
                            got.difference(&want).collect::<Vec<_>>(),
                            want.difference(&got).collect::<Vec<_>>()
                        ));
                    }
                    for i in &infos {
                        if let Some(k) = keys.get(&i.name) {
                            let kind = match k.kind {
                                KeyKind::Active => grpc::Kind::Active,
                                KeyKind::View => grpc::Kind::View,
                                KeyKind::Committed => grpc::Kind::Committed,
                            };
                            if i.kind != kind || i.parent != k.parent {
                                v(format!("serve {}: kind {:?} parent {:?}, the model says {:?} {:?}", i.name, i.kind, i.parent, k.kind, k.parent));
                            }
                        }
                    }
                }
            }
            c.snap = Some(s);
            for (k, kk) in &keys {
                if !c.keys.contains_key(k) {
                    continue;
                }
                if kk.kind == KeyKind::Committed {
                    c.verify_committed(k);
                } else {
                    c.verify_key(k);
                }
            }
        }
    }
    c.snap = None;
    // Stop serve cleanly.
    {
        let mut st = sh.serve.lock().unwrap();
        if let Some(mut ch) = st.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(ch.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let t = Instant::now();
            while ch.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(100));
            }
            if ch.try_wait().ok().flatten().is_none() {
                v("serve did not stop within 30 s of SIGTERM".into());
                let _ = ch.kill();
            }
            let _ = ch.wait();
        }
    }
    // serve's records against its volumes.
    let records: Vec<serde_json::Value> = std::fs::read_dir(sh.s.pool_dir().join("serve/snapshots"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
                .collect()
        })
        .unwrap_or_default();
    let rec_vols: BTreeSet<String> = records.iter().filter_map(|r| r["volume"].as_str().map(str::to_string)).collect();
    let Some(store) = c.list() else { return };
    let ctrd: BTreeSet<String> = store.keys().filter(|n| n.starts_with("ctrd-")).cloned().collect();
    if ctrd != rec_vols {
        v(format!("serve's records and ctrd-* volumes differ: records {rec_vols:?}, volumes {ctrd:?}"));
    }
    for r in &records {
        if r["state"] != "ready" && r["state"]["state"] != "ready" {
            v(format!("serve record not ready after a clean stop: {r}"));
        }
    }

    // Volumes: exactly the modelled ones, with what they may hold.
    let ours: BTreeSet<String> = store.keys().filter(|n| n.starts_with('c') && n.as_bytes().get(1).is_some_and(u8::is_ascii_digit)).cloned().collect();
    let want: BTreeSet<String> = vols.keys().cloned().collect();
    if ours != want {
        v(format!(
            "the clients' volumes differ from the model: only in the store {:?}, only in the model {:?}",
            ours.difference(&want).collect::<Vec<_>>(),
            want.difference(&ours).collect::<Vec<_>>()
        ));
    }
    c.vols = vols.clone();
    for name in vols.keys() {
        if !store.contains_key(name) {
            continue;
        }
        if let Some(dev) = c.activate(name) {
            c.verify_dev(name, &dev);
        }
    }
    // Internal volumes: what may be there.
    let scratch_ok: BTreeSet<String> = sh.scratch_allowed.lock().unwrap().iter().map(|id| format!("populate-{id}")).collect();
    for n in store.keys() {
        if ours.contains(n) || ctrd.contains(n) || n.starts_with("base-") {
            continue;
        }
        if n.starts_with("populate-") {
            if scratch_ok.contains(n) {
                c.sh.note(format!("{n} left by an interrupted populate (the next populate of that volume removes it)"));
            } else {
                v(format!("populate scratch {n} left, but no populate of its volume was interrupted (or the volume's delete did not remove it)"));
            }
        } else if n.starts_with("run-") {
            v(format!("run snapshot {n} left behind (every run was --rm or --name)"));
        } else if n.starts_with("layer-") || n.starts_with("commit-") {
            // Judged against the images below.
        } else {
            v(format!("unexpected volume {n} in the store"));
        }
    }
    // Images: exactly the modelled ones; each runs and shows its files.
    match c.image_names() {
        None => v("image list --json failed".into()),
        Some(names) => {
            let got: BTreeSet<String> = names.iter().filter(|n| n.starts_with('c')).cloned().collect();
            let want: BTreeSet<String> = images.keys().cloned().collect();
            if got != want {
                v(format!("images differ from the model: only in the pool {:?}, only in the model {:?}", got.difference(&want).collect::<Vec<_>>(), want.difference(&got).collect::<Vec<_>>()));
            }
        }
    }
    c.images = images.clone();
    for img in images.keys() {
        let script = Client::print_tracked();
        if let Some(out) = c.must("run-rm", &["run", "--rm", img, "--", "/bin/sh", "-c", &script]) {
            let alts = images[img].alts.clone();
            c.judge_files(&format!("final run --rm {img}"), &out.stdout, &alts);
        }
    }
    // Layer and commit volumes no image uses: left by interrupted imports, rm's or commits.
    if let Some(out) = c.must("image-list", &["image", "list", "--json"]) {
        let imgs: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
        let used: BTreeSet<u64> = imgs
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|i| i["layers"].as_array().cloned().unwrap_or_default())
            .filter_map(|l| l["volume"].as_u64())
            .collect();
        let orphans: Vec<&String> = store
            .iter()
            .filter(|(n, (id, _))| (n.starts_with("layer-") || n.starts_with("commit-")) && !used.contains(&(*id as u64)))
            .map(|(n, _)| n)
            .collect();
        if !orphans.is_empty() {
            c.sh.note(format!("{} layer/commit volumes no image uses (left by interrupted imports, image rm's or commits; reused or removed by the next import/commit of the same name): {orphans:?}", orphans.len()));
        }
    }

    // Runs: no record, no cgroup.
    let runs = sh.s.pool_dir().join("runs");
    let left: Vec<String> = std::fs::read_dir(&runs)
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    if !left.is_empty() {
        v(format!("run records left in {}: {left:?}", runs.display()));
    }
    let cg_prefix = format!("{}-", sh.s.pool);
    let cgs: Vec<String> = std::fs::read_dir("/sys/fs/cgroup/rcx-dm")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).filter(|n| n.starts_with(&cg_prefix)).collect())
        .unwrap_or_default();
    if !cgs.is_empty() {
        v(format!("cgroups left: {cgs:?}"));
    }

    // dm devices against the store; nothing mounted or open.
    let Some(store) = c.list() else { return };
    let dm = dm();
    let prefix = sh.s.dm_prefix();
    let pool_dev = rcx_dm::pool::pool_dm_name(&sh.s.pool);
    let by_dm: BTreeMap<String, (String, bool)> =
        store.iter().map(|(n, (id, active))| (sh.s.dm_name(*id), (n.clone(), *active))).collect();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let names = dm.list().unwrap_or_default();
    for name in names.iter().filter(|n| n.starts_with(&prefix)) {
        if *name == pool_dev {
            continue;
        }
        match by_dm.get(name) {
            None => v(format!("dm device {name} has no volume in the store (leaked)")),
            Some((vol, false)) => v(format!("dm device {name} is live but volume {vol} is recorded inactive")),
            Some(_) => {}
        }
        if let Ok(Some(i)) = dm.info(name) {
            if i.open_count != 0 {
                v(format!("dm device {name} is still open ({} holders)", i.open_count));
            }
            if i.suspended {
                v(format!("dm device {name} is left suspended"));
            }
            let devnum = format!(" {}:{} ", i.dev.major, i.dev.minor);
            if mountinfo.contains(&devnum) {
                v(format!("dm device {name} is mounted:\n{mountinfo}"));
            }
        }
    }
    for (dmn, (vol, active)) in &by_dm {
        if *active && !names.contains(dmn) {
            v(format!("volume {vol} is recorded active but {dmn} is not live"));
        }
    }
    for l in mountinfo.lines() {
        if l.contains(path_str(&sh.s.root)) || l.contains(path_str(&sh.work)) {
            v(format!("a mount under the soak's directories is left: {l}"));
        }
    }
    if sh.s.pool_dir().join("intent.json").exists() || sh.s.pool_dir().join("extend.json").exists() {
        v("an intent is left after the soak".into());
    }

    // Pool size: initial + the extends that happened.
    let status = c.must("pool-status", &["pool", "status", "--json"]).and_then(|o| serde_json::from_str::<serde_json::Value>(&o.stdout).ok());
    if let Some(st) = status {
        let (dok, ddoubt, mok, mdoubt) = *sh.extends.lock().unwrap();
        let data = st["data_bytes"].as_u64().unwrap_or(0);
        let meta = st["meta_bytes"].as_u64().unwrap_or(0);
        let dsteps = data.saturating_sub(initial_data);
        if data < initial_data || dsteps % EXTEND_STEP != 0 || dsteps / EXTEND_STEP < dok || dsteps / EXTEND_STEP > dok + ddoubt {
            v(format!("pool data size {data}: started at {initial_data}, {dok} extends of {EXTEND_STEP} succeeded, {ddoubt} in doubt"));
        }
        let msteps = meta.saturating_sub(initial_meta);
        if meta < initial_meta || msteps % META_STEP != 0 || msteps / META_STEP < mok || msteps / META_STEP > mok + mdoubt {
            v(format!("pool metadata size {meta}: started at {initial_meta}, {mok} extends of {META_STEP} succeeded, {mdoubt} in doubt"));
        }
        if st["mode"].as_str().is_some_and(|m| m != "rw") || st["needs_check"] == true {
            v(format!("pool not healthy at the end: {st}"));
        }
    }

    // Offline: deactivate, no device or loop left, thin_check, thin_ls ids == store ids.
    let ids: BTreeSet<u32> = store.values().map(|(id, _)| *id).collect();
    let active_before: BTreeSet<String> = store.iter().filter(|(_, (_, a))| *a).map(|(n, _)| n.clone()).collect();
    if c.must("pool-deactivate", &["pool", "deactivate"]).is_none() {
        return;
    }
    let left: Vec<String> = dm.list().unwrap_or_default().into_iter().filter(|n| n.starts_with(&prefix)).collect();
    if !left.is_empty() {
        v(format!("dm devices left after pool deactivate: {left:?}"));
    }
    let loops = sh_out("losetup -a");
    let ours: Vec<&str> = loops.lines().filter(|l| l.contains(path_str(&sh.s.root))).collect();
    if !ours.is_empty() {
        v(format!("loop devices left after pool deactivate: {ours:?}"));
    }
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sh.s.offline_metadata_ids())) {
        Err(e) => v(format!("offline metadata check: {}", panic_text(&e))),
        Ok(meta) => {
            let meta: BTreeSet<u32> = meta.into_iter().collect();
            if meta != ids {
                v(format!(
                    "thin ids in the metadata (thin_ls) vs the store: only in the metadata {:?}, only in the store {:?}",
                    meta.difference(&ids).collect::<Vec<_>>(),
                    ids.difference(&meta).collect::<Vec<_>>()
                ));
            }
        }
    }
    if c.must("pool-activate", &["pool", "activate"]).is_none() {
        return;
    }
    if let Some(after) = c.list() {
        let ids2: BTreeSet<u32> = after.values().map(|(id, _)| *id).collect();
        let active2: BTreeSet<String> = after.iter().filter(|(_, (_, a))| *a).map(|(n, _)| n.clone()).collect();
        if ids2 != ids {
            v(format!("pool activate changed the volumes: {ids:?} -> {ids2:?}"));
        }
        if active2 != active_before {
            v(format!("pool activate brought back other volumes than were active: {active_before:?} -> {active2:?}"));
        }
    }
    let loops = sh_out("losetup -a");
    let n = loops.lines().filter(|l| l.contains(path_str(&sh.s.root))).count();
    if n != 2 {
        v(format!("{n} loop devices over the pool's files after pool activate (expected 2):\n{loops}"));
    }
    // Content survives deactivate/activate: a sample.
    let sample: Vec<String> = c.vols.keys().take(6).cloned().collect();
    for name in sample {
        if let Some(dev) = c.activate(&name) {
            c.verify_dev(&name, &dev);
        }
    }
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
                    let mut c = Client {
                        sh: shr,
                        id: i,
                        who: format!("c{i}"),
                        rng: Rng::new(seed.wrapping_add(1 + i as u64).wrapping_mul(0x9E37_79B9)),
                        vols: BTreeMap::new(),
                        images: BTreeMap::new(),
                        keys: BTreeMap::new(),
                        n: 0,
                        snap: None,
                        snap_gen: 0,
                        must_recover: false,
                    };
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
