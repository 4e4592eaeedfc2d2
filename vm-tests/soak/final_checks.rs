//! After quiescing: everything modelled is there, nothing else is, and the pool comes back.

use super::*;

// ---- the final checks -------------------------------------------------------------------------

pub(crate) fn final_checks(sh: &Shared, clients: Vec<Client>, initial_data: u64, initial_meta: u64) {
    let who = "final";
    let v = |what: String| sh.violation(who, what);
    let mut c = Client::new(sh, 99, who.into(), 1);
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
        // What comes back is what the records ask for (`autoactivate`); that is what was active
        // unless a deactivate was killed between its record and its device step, which leaves
        // the device up and the record inactive (the request is honoured at the next activate).
        let records = rcx_dm::internals::pool_store::Store::new(sh.s.pool_dir()).volumes().unwrap_or_default();
        let wanted: BTreeSet<u32> = records.iter().filter(|r| r.autoactivate).map(|r| r.id).collect();
        let expected: BTreeSet<String> = after.iter().filter(|(_, (id, _))| wanted.contains(id)).map(|(n, _)| n.clone()).collect();
        let interrupted: Vec<&String> = active_before.symmetric_difference(&expected).collect();
        if !interrupted.is_empty() {
            sh.note(format!("{interrupted:?}: a deactivate killed between its record and its device step (the record decides)"));
        }
        if active2 != expected {
            v(format!("pool activate brought back other volumes than the records ask for: {expected:?} -> {active2:?} (active before: {active_before:?})"));
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
