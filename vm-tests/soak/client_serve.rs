//! A client's operations through serve's gRPC API (the containerd snapshots service).

use super::*;

impl<'a> Client<'a> {
    // ---- serve operations ----

    pub(crate) fn snapshotter(&mut self) -> Option<&mut Snapshotter> {
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
    pub(crate) fn grpc<T>(&mut self, op: &'static str, what: &str, f: impl FnOnce(&mut Snapshotter) -> grpc::Result<T>) -> Result<T, Outcome> {
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
    pub(crate) fn key_exists(&mut self, key: &str) -> Option<bool> {
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

    pub(crate) fn new_key(&mut self) -> String {
        self.n += 1;
        format!("soak/c{}-k{}", self.id, self.n)
    }

    pub(crate) fn key_alts_as_content(alts: &[Option<String>]) -> Alts {
        alts.iter()
            .map(|a| Content::Fs { files: a.iter().map(|k| ("soak-key".to_string(), k.clone())).collect(), runnable: false })
            .collect()
    }

    pub(crate) fn op_prepare(&mut self) {
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

    pub(crate) fn one_mount(&mut self, key: &str, mounts: &[grpc::Mount]) -> Option<grpc::Mount> {
        if mounts.len() != 1 || mounts[0].r#type != "ext4" || !Path::new(&mounts[0].source).exists() {
            self.sh.violation(&self.who, format!("serve {key}: expected one ext4 mount of an existing device, got {mounts:?}"));
            return None;
        }
        Some(mounts[0].clone())
    }

    pub(crate) fn op_commit_key(&mut self) {
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

    pub(crate) fn op_remove_key(&mut self) {
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
    pub(crate) fn op_mounts(&mut self) {
        let live: Vec<String> = self.keys.iter().filter(|(_, k)| k.kind != KeyKind::Committed).map(|(n, _)| n.clone()).collect();
        if live.is_empty() {
            return;
        }
        let key = self.rng.pick(&live).clone();
        self.verify_key(&key);
    }

    pub(crate) fn verify_key(&mut self, key: &str) {
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
    pub(crate) fn verify_committed(&mut self, key: &str) {
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

}
