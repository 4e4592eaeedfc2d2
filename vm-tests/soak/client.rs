//! A client: its model, the CLI operations it makes at random, and its loop.

use super::*;

// ---- a client ---------------------------------------------------------------------------------

pub(crate) struct Client<'a> {
    pub(crate) sh: &'a Shared,
    pub(crate) id: usize,
    pub(crate) who: String,
    pub(crate) rng: Rng,
    pub(crate) vols: BTreeMap<String, Vol>,
    pub(crate) images: BTreeMap<String, Img>,
    pub(crate) keys: BTreeMap<String, Key>,
    pub(crate) n: u64,
    pub(crate) snap: Option<Snapshotter>,
    /// The serve generation `snap` was connected in: a connection to an earlier serve is dropped.
    pub(crate) snap_gen: u64,
    /// The last command was killed or failed: the next one is the recovery check.
    pub(crate) must_recover: bool,
}

pub(crate) const CREATE_FAULTS: &[&str] = &["create.intent", "create.created", "create.committed", "create.recorded", "create.activated"];
pub(crate) const SNAP_FAULTS: &[&str] = &["snap.intent", "snap.suspended", "snap.created", "snap.resumed", "snap.committed", "snap.recorded", "snap.activated"];
pub(crate) const DELETE_FAULTS: &[&str] = &["delete.intent", "delete.discarded", "delete.deleted", "delete.committed", "delete.recorded"];
pub(crate) const REVERT_FAULTS: &[&str] = &[
    "revert.intent", "revert.deactivated", "revert.snapped", "revert.deleted", "revert.restored", "revert.cleaned", "revert.recorded",
    "revert.activated",
];
pub(crate) const EXTEND_FAULTS: &[&str] = &["extend.intent", "extend.grown", "extend.capacity", "extend.loaded", "extend.suspended", "extend.resumed", "extend.recorded"];

impl<'a> Client<'a> {
    pub(crate) fn new(sh: &'a Shared, id: usize, who: String, seed: u64) -> Client<'a> {
        Client {
            sh,
            id,
            who,
            rng: Rng::new(seed),
            vols: BTreeMap::new(),
            images: BTreeMap::new(),
            keys: BTreeMap::new(),
            n: 0,
            snap: None,
            snap_gen: 0,
            must_recover: false,
        }
    }

    pub(crate) fn name(&mut self, what: &str) -> String {
        self.n += 1;
        format!("c{}-{what}{}", self.id, self.n)
    }

    /// A random fault from `points` for about one operation in five: (point, error mode).
    pub(crate) fn maybe_fault(&mut self, points: &[&[&str]]) -> Option<(String, bool)> {
        if !self.rng.chance(0.2) {
            return None;
        }
        let all: Vec<&str> = points.iter().flat_map(|p| p.iter().copied()).collect();
        self.sh.stats.lock().unwrap().faults_armed += 1;
        Some((self.rng.pick(&all).to_string(), self.rng.chance(0.25)))
    }

    /// Run a command (with a fault, if given) and judge it.
    pub(crate) fn run(&mut self, op: &'static str, args: &[&str], fault: Option<(String, bool)>) -> (Outcome, Out) {
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
    pub(crate) fn must(&mut self, op: &'static str, args: &[&str]) -> Option<Out> {
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

    pub(crate) fn recovered(&mut self) {
        if self.must_recover {
            self.must_recover = false;
            self.sh.stats.lock().unwrap().recoveries += 1;
        }
    }

    /// The store's volumes (`list --json`): the recovery check after a kill, and how doubts
    /// are resolved. name -> (id, active).
    pub(crate) fn list(&mut self) -> Option<BTreeMap<String, (u32, bool)>> {
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

    pub(crate) fn image_names(&mut self) -> Option<BTreeSet<String>> {
        let out = self.must("image-list", &["image", "list", "--json"])?;
        let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        Some(v.as_array().into_iter().flatten().filter_map(|i| i["name"].as_str().map(str::to_string)).collect())
    }

    /// Whether `name` exists now (after a doubtful operation); None if the store cannot say.
    pub(crate) fn exists(&mut self, name: &str) -> Option<bool> {
        self.list().map(|l| l.contains_key(name))
    }

    pub(crate) fn activate(&mut self, name: &str) -> Option<PathBuf> {
        let out = self.must("activate", &["activate", name])?;
        Some(PathBuf::from(out.last_line()))
    }

    pub(crate) fn pick_vol(&mut self, f: impl Fn(&Vol) -> bool) -> Option<String> {
        let c: Vec<String> = self.vols.iter().filter(|(_, v)| f(v)).map(|(k, _)| k.clone()).collect();
        if c.is_empty() {
            None
        } else {
            Some(self.rng.pick(&c).clone())
        }
    }

    // ---- CLI operations ----

    pub(crate) fn op_create_raw(&mut self) {
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

    pub(crate) fn op_create_fs(&mut self) {
        let name = self.name("v");
        let f = self.maybe_fault(&[SNAP_FAULTS, &["base.format"]]);
        let (o, _) = self.run("thin-create-fs", &["thin", "create", "--fs", "ext4", "--size", FS_SIZE, "--name", &name], f);
        let empty = Content::Fs { files: BTreeMap::new(), runnable: false };
        if o == Outcome::Ok || self.exists(&name) == Some(true) {
            self.vols.insert(name, Vol { id: None, size: FS_BYTES, alts: vec![empty], scratch_may_remain: false });
        }
    }

    pub(crate) fn op_write(&mut self) {
        let Some(name) = self.pick_vol(|_| true) else { return };
        let Some(dev) = self.activate(&name) else { return };
        let seed = self.rng.next();
        write_direct_at(&dev, 0, &pattern(seed, PATTERN_LEN));
        // The rest of the first 2 MiB must read as zeros: the check compares it.
        write_direct_at(&dev, PATTERN_LEN as u64, &vec![0; PATTERN_LEN]);
        self.sh.count("write", |c| c.ok += 1);
        self.vols.get_mut(&name).unwrap().alts = vec![Content::Raw(Some(seed))];
    }

    pub(crate) fn op_snap(&mut self) {
        let Some(origin) = self.pick_vol(|_| true) else { return };
        let name = self.name("v");
        let f = self.maybe_fault(&[SNAP_FAULTS]);
        let (o, _) = self.run("snap", &["snap", "-", &origin, "--name", &name], f);
        if o == Outcome::Ok || self.exists(&name) == Some(true) {
            let v = Vol { scratch_may_remain: false, ..self.vols[&origin].clone() };
            self.vols.insert(name, v);
        }
    }

    pub(crate) fn op_delete(&mut self) {
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

    pub(crate) fn op_activate(&mut self) {
        let Some(name) = self.pick_vol(|_| true) else { return };
        if self.rng.chance(0.5) {
            self.must("activate", &["activate", &name]);
        } else {
            self.must("deactivate", &["deactivate", &name]);
        }
    }

    pub(crate) fn op_revert(&mut self) {
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
            self.still_there(&v, "revert");
        }
    }

    /// After an interrupted revert or populate (which reverts): the volume must still be there,
    /// with its old or its new content. Said here, a loss names its cause; otherwise it shows
    /// later as "no such volume" on an unrelated operation.
    pub(crate) fn still_there(&mut self, v: &str, op: &str) {
        if self.list().is_some_and(|l| !l.contains_key(v)) {
            self.sh.violation(&self.who, format!("volume {v} is gone after an interrupted {op}"));
            self.vols.remove(v);
        }
    }

    pub(crate) fn op_populate(&mut self) {
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
        // The sources made for this populate (not the shared OCI layouts).
        if src.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("pop-")) {
            if src.is_dir() {
                let _ = std::fs::remove_dir_all(&src);
            } else {
                let _ = std::fs::remove_file(&src);
            }
        }
        if o != Outcome::Ok {
            self.still_there(&v, "populate");
        }
        let Some(vol) = self.vols.get_mut(&v) else { return };
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
    }

    pub(crate) fn op_import(&mut self) {
        let name = self.name("img");
        let (layout, img) = self.rng.pick(&self.sh.layouts).clone();
        let f = self.maybe_fault(&[&["import.layer"], SNAP_FAULTS]);
        let (o, _) = self.run("image-import", &["image", "import", path_str(&layout), "--name", &name, "--size", FS_SIZE], f);
        let content = Content::Fs { files: [("etc/soak-img".to_string(), img)].into(), runnable: true };
        if o == Outcome::Ok || self.image_names().is_some_and(|n| n.contains(&name)) {
            self.images.insert(name, Img { alts: vec![content] });
        }
    }

    pub(crate) fn op_image_rm(&mut self) {
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

    pub(crate) fn op_commit(&mut self) {
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
    pub(crate) fn print_tracked() -> String {
        TRACKED.iter().map(|f| format!("test -e /{f} && echo \"{f}=$(cat /{f})\"; ")).collect::<String>() + "true"
    }

    pub(crate) fn parse_tracked(out: &str) -> BTreeMap<String, String> {
        out.lines().filter_map(|l| l.split_once('=')).map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    pub(crate) fn judge_files(&mut self, what: &str, out: &str, alts: &Alts) -> Option<usize> {
        let seen = Self::parse_tracked(out);
        let i = alts.iter().position(|a| a.files() == Some(&seen));
        self.sh.stats.lock().unwrap().verifications += 1;
        if i.is_none() {
            self.sh.violation(&self.who, format!("{what}: the container sees tracked files {seen:?}, expected one of {alts:?}"));
        }
        i
    }

    pub(crate) fn op_run_rm(&mut self) {
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

    pub(crate) fn op_run_name(&mut self) {
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

    pub(crate) fn op_run_in_place(&mut self) {
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

    pub(crate) fn op_extend(&mut self) {
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

    pub(crate) fn op_verify(&mut self) {
        let Some(name) = self.pick_vol(|_| true) else { return };
        let Some(dev) = self.activate(&name) else { return };
        self.verify_dev(&name, &dev);
    }

    pub(crate) fn verify_dev(&mut self, name: &str, dev: &Path) {
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

}

impl<'a> Client<'a> {
    // ---- the loop ----

    pub(crate) fn step(&mut self) {
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
