//! A stall detector for long vm-tests: when the test has not called `beat` for `stall`, it
//! prints what the guest's kernel is waiting on (blocked tasks' stacks, dm tables and status,
//! memory, the scratch filesystem) and then aborts the test binary, so a hang ends as a failure
//! with evidence instead of as the VM's timeout with none.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Watchdog {
    last: Arc<Mutex<(Instant, String)>>,
    stop: Arc<AtomicBool>,
    /// Time spent per step (the label without its digits): count, total.
    spent: Mutex<BTreeMap<String, (u32, Duration)>>,
}

impl Watchdog {
    pub fn start(what: &str, stall: Duration) -> Watchdog {
        let last = Arc::new(Mutex::new((Instant::now(), "start".to_string())));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, st, what) = (last.clone(), stop.clone(), what.to_string());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            if st.load(Ordering::Relaxed) {
                return;
            }
            let (since, doing) = {
                let g = l.lock().unwrap_or_else(|p| p.into_inner());
                (g.0.elapsed(), g.1.clone())
            };
            if since > stall {
                eprintln!("WATCHDOG {what}: no progress for {:.0} s, last step: {doing}", since.as_secs_f64());
                eprintln!("{}", diagnose());
                std::process::abort();
            }
        });
        Watchdog { last, stop, spent: Mutex::new(BTreeMap::new()) }
    }

    /// Progress: `doing` is what the test starts now (shown if it stalls there).
    pub fn beat(&self, doing: impl Into<String>) {
        let now = Instant::now();
        let (then, prev) = std::mem::replace(&mut *self.last.lock().unwrap_or_else(|p| p.into_inner()), (now, doing.into()));
        let key: String = prev.chars().filter(|c| !c.is_ascii_digit()).collect();
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        let e = spent.entry(key).or_default();
        e.0 += 1;
        e.1 += now - then;
    }

    /// Where the time went, the costliest step first.
    pub fn report(&self) -> String {
        let spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<_> = spent.iter().collect();
        rows.sort_by(|a, b| b.1 .1.cmp(&a.1 .1));
        rows.iter()
            .map(|(k, (n, d))| format!("  {:8.1} s {n:6}x {:7.3} s each  {k}\n", d.as_secs_f64(), d.as_secs_f64() / f64::from(*n)))
            .collect()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What the kernel is doing: every task in D state with its kernel stack, dm, memory, mounts.
pub fn diagnose() -> String {
    let mut out = String::new();
    let sh = |c: &str| {
        std::process::Command::new("sh")
            .args(["-c", c])
            .output()
            .map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
            .unwrap_or_else(|e| format!("({c}: {e})"))
    };
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state is the field after the parenthesised command name.
        let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
        if state == Some('D') {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let stack = std::fs::read_to_string(format!("/proc/{pid}/stack")).unwrap_or_default();
            out += &format!("--- D-state task {pid} {}:\n{stack}", comm.trim());
        }
    }
    for c in ["dmsetup table", "dmsetup status", "dmsetup info -c", "losetup -a", "grep -E 'MemFree|MemAvail|Dirty|Writeback|Shmem' /proc/meminfo", "df -h /run/rcx-dm-scratch", "dmesg | tail -n 60", "tail -n 40 /proc/self/mountinfo"] {
        out += &format!("--- {c}:\n{}", sh(c));
    }
    out
}
