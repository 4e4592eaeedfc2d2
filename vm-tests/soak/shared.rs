//! What the clients and the chaos thread share, and running one rcx-dm command under it.

use super::*;

// ---- shared state -----------------------------------------------------------------------------

pub(crate) struct ServeState {
    pub(crate) child: Option<Child>,
    /// Bumped whenever serve goes away (killed, died); a call that failed in another generation
    /// than it started in is in doubt, not wrong.
    pub(crate) generation: u64,
    /// The fault serve was started with in this generation, and whether its mode is `error`.
    pub(crate) armed: Option<(String, bool)>,
    pub(crate) started: Instant,
}

pub(crate) struct Proc {
    pub(crate) label: String,
    pub(crate) killed: bool,
    /// The chaos thread SIGKILLs it at this moment if it still runs.
    pub(crate) kill_at: Option<Instant>,
}

pub(crate) struct Shared {
    pub(crate) s: Scenario,
    pub(crate) work: PathBuf,
    pub(crate) socket: PathBuf,
    pub(crate) stop: AtomicBool,
    pub(crate) procs: Mutex<BTreeMap<u32, Proc>>,
    pub(crate) serve: Mutex<ServeState>,
    pub(crate) stats: Mutex<Stats>,
    pub(crate) violations: Mutex<Vec<String>>,
    /// Every command's start and end, in the order they happened, for explaining a violation.
    pub(crate) journal: Mutex<Vec<String>>,
    pub(crate) started: Instant,
    /// OCI layouts to import (and populate from) and the soak-img each holds.
    pub(crate) layouts: Vec<(PathBuf, String)>,
    pub(crate) seq: AtomicU64,
    /// Successful / in-doubt `pool extend --data-size` and `--meta-size` steps.
    pub(crate) extends: Mutex<(u64, u64, u64, u64)>,
    /// Ids of volumes whose populate was interrupted: a `populate-<id>` may be left (until the
    /// volume's next populate or its delete removes it).
    pub(crate) scratch_allowed: Mutex<BTreeSet<u32>>,
}

impl Shared {
    pub(crate) fn violation(&self, who: &str, what: String) {
        let at = self.started.elapsed().as_secs_f64();
        let msg = format!("[{at:7.1}s {who}] {what}");
        eprintln!("SOAK VIOLATION {msg}");
        eprintln!("{}", self.history_of(&what));
        self.violations.lock().unwrap().push(msg);
    }

    pub(crate) fn journal(&self, line: String) {
        let at = self.started.elapsed().as_secs_f64();
        self.journal.lock().unwrap().push(format!("{at:7.1}s {line}"));
    }

    /// The journal's lines that name a soak object (`c1-v275`, `c0-img12`) named in `what`.
    pub(crate) fn history_of(&self, what: &str) -> String {
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

    pub(crate) fn note(&self, what: String) {
        eprintln!("soak note: {what}");
        self.stats.lock().unwrap().notes.push(what);
    }

    pub(crate) fn count(&self, op: &'static str, f: impl FnOnce(&mut OpCount)) {
        let mut st = self.stats.lock().unwrap();
        f(st.ops.entry(op).or_default());
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst)
    }
}

// ---- running the CLI --------------------------------------------------------------------------

pub(crate) struct Out {
    pub(crate) status: Option<ExitStatus>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    /// SIGKILLed by the chaos thread.
    pub(crate) chaos: bool,
    pub(crate) timed_out: bool,
}

impl Out {
    pub(crate) fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
    pub(crate) fn sigkill(&self) -> bool {
        self.status.is_some_and(|s| s.signal() == Some(libc::SIGKILL))
    }
    pub(crate) fn describe(&self) -> String {
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
    pub(crate) fn last_line(&self) -> String {
        self.stdout.lines().last().unwrap_or("").trim().to_string()
    }
}

/// Run rcx-dm on the soak's pool; the child is registered for the chaos thread while it runs;
/// stdout and stderr go through files (no pipe can fill up).
pub(crate) fn cli(sh: &Shared, who: &str, args: &[&str], env: &[(&str, &str)], kill_after: Option<Duration>) -> Out {
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
pub(crate) enum Outcome {
    Ok,
    /// Killed or failed by a fault: either outcome allowed; resolve from the store.
    Doubt,
    /// Failed without a reason: a violation (already recorded); resolve from the store too.
    Failed,
}

/// Judge a command's result, counting kills, faults and violations.
pub(crate) fn judge(sh: &Shared, who: &str, op: &'static str, args: &[&str], fault: &Option<(String, bool)>, out: &Out) -> Outcome {
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
