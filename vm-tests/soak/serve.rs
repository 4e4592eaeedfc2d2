//! `rcx-dm serve` under the soak: started, killed, restarted (now and then with a fault armed).

use super::*;

// ---- serve ------------------------------------------------------------------------------------

pub(crate) fn serve_log(sh: &Shared) -> PathBuf {
    sh.work.join("serve.log")
}

pub(crate) fn tail_file(p: &Path, n: usize) -> String {
    let t = std::fs::read_to_string(p).unwrap_or_default();
    let l: Vec<&str> = t.lines().collect();
    l[l.len().saturating_sub(n)..].join("\n")
}

/// Start serve (under the serve lock), optionally with a fault armed.
pub(crate) fn start_serve(sh: &Shared, st: &mut ServeState, fault: Option<(String, bool)>) {
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
pub(crate) const SERVE_FAULTS: &[&str] = &[
    "snap.intent", "snap.created", "snap.committed", "snap.recorded", "snap.activated",
    "delete.intent", "delete.discarded", "delete.deleted", "delete.committed", "delete.recorded",
];

/// Kill serve now (chaos); the supervisor restarts it.
pub(crate) fn kill_serve(sh: &Shared) {
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
pub(crate) fn supervise_serve(sh: &Shared, rng: &mut Rng) {
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
pub(crate) fn serve_gen(sh: &Shared) -> u64 {
    sh.serve.lock().unwrap().generation
}

/// After a failed call: whether serve went away (or an armed error fault may explain it) since
/// generation `g`. Waits a moment for the process to be seen dead.
pub(crate) fn serve_disturbed(sh: &Shared, g: u64) -> bool {
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
