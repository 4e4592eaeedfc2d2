//! The seed's "Thin Provisioning" walkthrough, one rcx-dm command per step, and a reboot:
//! every dm device and loop torn down behind rcx-dm's back, then `pool activate`.

use std::path::PathBuf;

use rcx_dm::dm::{node, Dm};

use crate::common::*;

fn txid(s: &Scenario) -> u64 {
    pool_status(s)["transaction_id"].as_u64().expect("transaction_id is a number")
}

/// The kernel's live table of volume `id`: one `thin <pool maj:min> <id>` line of `sectors`.
fn assert_thin_table(s: &Scenario, id: u32, sectors: u64) {
    let dm = dm();
    let pool = dm.info(&rcx_dm::pool::pool_dm_name(&s.pool)).unwrap().expect("pool device is live");
    let table = dm.table(&s.dm_name(id)).unwrap();
    assert_eq!(table.len(), 1, "{table:?}");
    assert_eq!(table[0].target, "thin");
    assert_eq!((table[0].start, table[0].length), (0, sectors));
    assert_eq!(table[0].params, format!("{}:{} {id}", pool.dev.major, pool.dev.minor));
}

#[test]
fn seed_walkthrough_snapshots_of_snapshots_keep_each_layer() {
    let s = Scenario::new("seed");
    s.ok(&["pool", "create", "--data-size", "100G", "--meta-size", "1G"]);
    let st = pool_status(&s);
    for key in ["transaction_id", "data_used_blocks", "data_total_blocks", "meta_used_blocks", "meta_total_blocks", "mode"] {
        assert!(st.get(key).is_some(), "pool status --json lacks '{key}': {st}");
    }
    assert_eq!(st["mode"], "rw");
    assert_eq!(st["data_used_blocks"], 0);
    // 100G in 64K blocks; 1G of metadata in 4K blocks (the kernel uses at most ~16G of it).
    assert_eq!(st["data_total_blocks"], (100u64 << 30) / (64 << 10));
    assert_eq!(st["meta_total_blocks"], (1u64 << 30) / 4096);
    let mut tx = txid(&s);

    // thin create 0 --size 1G
    let dev0 = s.device(&["thin", "create", "0", "--size", "1G"]);
    assert_eq!(dev0, node::mapper_path(&s.dm_name(0)));
    assert_eq!(txid(&s), tx + 1, "create_thin advances the transaction id");
    tx += 1;
    assert_thin_table(&s, 0, 2 << 20);

    // mkfs.ext4, mount, write a file, unmount (as in the seed)
    mkfs_ext4(&dev0);
    {
        let m = Mount::new(&dev0, &format!("{}-0", s.pool));
        std::fs::write(m.path("first.txt"), "written in volume 0\n").unwrap();
    }

    // snap 1 0
    let dev1 = s.device(&["snap", "1", "0"]);
    assert_eq!(dev1, node::mapper_path(&s.dm_name(1)));
    assert_eq!(txid(&s), tx + 1, "create_snap advances the transaction id");
    tx += 1;
    assert_thin_table(&s, 1, 2 << 20);

    // A file in 1, then `snap 2 1` while 1 is still mounted and the file not synced: suspending
    // the origin freezes its filesystem, so the snapshot must see the file anyway.
    let m1 = Mount::new(&dev1, &format!("{}-1", s.pool));
    assert_eq!(std::fs::read_to_string(m1.path("first.txt")).unwrap(), "written in volume 0\n");
    std::fs::write(m1.path("second.txt"), "written in volume 1\n").unwrap();
    let dev2 = s.device(&["snap", "2", "1"]);
    assert_eq!(txid(&s), tx + 1, "create_snap of a snapshot advances the transaction id");
    tx += 1;
    assert_thin_table(&s, 2, 2 << 20);
    // 1 is still usable after the suspend/resume around create_snap.
    std::fs::write(m1.path("third.txt"), "written in volume 1 after snap 2\n").unwrap();
    drop(m1);

    // 2 shows both files (and not what 1 got after the snapshot).
    {
        let m2 = Mount::new(&dev2, &format!("{}-2", s.pool));
        assert_eq!(std::fs::read_to_string(m2.path("first.txt")).unwrap(), "written in volume 0\n");
        assert_eq!(std::fs::read_to_string(m2.path("second.txt")).unwrap(), "written in volume 1\n");
        assert!(!m2.path("third.txt").exists(), "a write to the origin after the snapshot shows in it");
    }
    // 0 is unchanged: only the first file.
    {
        let m0 = Mount::new(&dev0, &format!("{}-0b", s.pool));
        let mut names: Vec<String> = std::fs::read_dir(&m0.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "lost+found")
            .collect();
        names.sort();
        assert_eq!(names, ["first.txt"]);
        assert_eq!(std::fs::read_to_string(m0.path("first.txt")).unwrap(), "written in volume 0\n");
    }
    // 1 kept its own files.
    {
        let m1 = Mount::new(&dev1, &format!("{}-1b", s.pool));
        assert!(m1.path("second.txt").exists() && m1.path("third.txt").exists());
    }

    // list --json: every key, parents, sizes, devices.
    let list = volume_list(&s);
    let vols = list.as_array().expect("list --json is an array");
    assert_eq!(vols.len(), 3, "{list}");
    for (v, (id, parent, dev)) in vols.iter().zip([(0u64, None, &dev0), (1, Some(0u64), &dev1), (2, Some(1), &dev2)]) {
        for key in ["id", "name", "parent", "size_bytes", "active", "device", "mapped_bytes"] {
            assert!(v.get(key).is_some(), "list --json entry lacks '{key}': {v}");
        }
        assert_eq!(v["id"], id);
        assert_eq!(v["parent"].as_u64(), parent);
        assert_eq!(v["size_bytes"], 1u64 << 30);
        assert_eq!(v["active"], true);
        assert_eq!(v["device"].as_str().map(PathBuf::from).as_ref(), Some(dev));
        let mapped = v["mapped_bytes"].as_u64().expect("mapped_bytes of an active volume");
        assert!(mapped > 0, "volume {id} maps no blocks after mkfs: {v}");
    }
    let info = s.json(&["info", "2", "--json"]);
    assert_eq!((info["id"].as_u64(), info["parent"].as_u64()), (Some(2), Some(1)));

    let st = pool_status(&s);
    assert_eq!(st["transaction_id"], tx);
    assert!(st["data_used_blocks"].as_u64().unwrap() > 0);
    assert!(st["meta_used_blocks"].as_u64().unwrap() > 0);
    assert_eq!(st["mode"], "rw");
}

#[test]
fn reboot_behind_rcx_dms_back_then_pool_activate_restores_every_active_volume() {
    let s = Scenario::new("reboot");
    s.ok(&["pool", "create", "--data-size", "2G"]);
    // 0: ext4 with a file; 1: snapshot of 0 with another file; 2: raw data;
    // 3: raw data, then deactivated (it must stay down after the reboot).
    let dev0 = s.device(&["thin", "create", "0", "--size", "64M", "--name", "base"]);
    mkfs_ext4(&dev0);
    {
        let m = Mount::new(&dev0, &format!("{}-0", s.pool));
        std::fs::write(m.path("base.txt"), "base layer\n").unwrap();
    }
    let dev1 = s.device(&["snap", "1", "base", "--name", "child"]);
    {
        let m = Mount::new(&dev1, &format!("{}-1", s.pool));
        std::fs::write(m.path("child.txt"), pattern(1, 300_000)).unwrap();
    }
    let dev2 = s.device(&["thin", "create", "2", "--size", "32M"]);
    write_direct_at(&dev2, 0, &pattern(2, 3 << 20));
    write_direct_at(&dev2, 20 << 20, &pattern(22, 1 << 20));
    let dev3 = s.device(&["thin", "create", "3", "--size", "16M"]);
    write_direct_at(&dev3, 4 << 20, &pattern(3, 2 << 20));

    let sums: Vec<(u32, (u64, u64))> = [(0, &dev0), (1, &dev1), (2, &dev2), (3, &dev3)]
        .into_iter()
        .map(|(id, d)| (id, device_digest(d)))
        .collect();
    s.ok(&["deactivate", "3"]);
    let tx = txid(&s);
    let used = pool_status(&s)["data_used_blocks"].as_u64().unwrap();

    // "Reboot": every dm device of the pool and both loops gone, /dev/mapper links too, without
    // rcx-dm knowing.
    let dm = dm();
    let prefix = s.dm_prefix();
    for id in [0, 1, 2] {
        dm.remove(&s.dm_name(id)).unwrap();
        node::remove(&s.dm_name(id));
    }
    let pool_dm = rcx_dm::pool::pool_dm_name(&s.pool);
    dm.remove(&pool_dm).unwrap();
    node::remove(&pool_dm);
    let pool_dir = s.root.join(&s.pool);
    for f in ["data.img", "meta.img"] {
        let file = pool_dir.join(f);
        assert!(rcx_dm::loopback::find(&file).unwrap().is_some(), "{f} was on a loop device");
        rcx_dm::loopback::detach(&file).unwrap();
        assert_eq!(rcx_dm::loopback::find(&file).unwrap(), None, "{f} still on a loop device");
    }
    let left: Vec<String> = Dm::open().unwrap().list().unwrap().into_iter().filter(|n| n.starts_with(&prefix)).collect();
    assert!(left.is_empty(), "dm devices left: {left:?}");
    let links: Vec<String> = std::fs::read_dir(node::MAPPER_DIR)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(links.is_empty(), "/dev/mapper links left: {links:?}");
    // Nothing is active now, and rcx-dm says so rather than failing.
    let list = volume_list(&s);
    assert!(list.as_array().unwrap().iter().all(|v| v["active"] == false), "{list}");

    let out = s.ok(&["pool", "activate"]);
    assert!(out.contains("3 volume(s) activated"), "{out}");
    let st = pool_status(&s);
    assert_eq!(st["transaction_id"], tx, "activation changes no transaction");
    assert_eq!(st["data_used_blocks"], used);
    assert_eq!(st["mode"], "rw");
    let list = volume_list(&s);
    let active: Vec<(u64, bool)> =
        list.as_array().unwrap().iter().map(|v| (v["id"].as_u64().unwrap(), v["active"].as_bool().unwrap())).collect();
    assert_eq!(active, [(0, true), (1, true), (2, true), (3, false)], "{list}");
    assert!(dm.info(&s.dm_name(3)).unwrap().is_none(), "the deactivated volume came back");
    for (id, dev) in [(0u64, &dev0), (1, &dev1), (2, &dev2)] {
        assert!(dev.exists(), "{} missing after pool activate", dev.display());
        assert_thin_table(&s, id as u32, sectors_of(&list, id));
    }
    for (id, sum) in &sums[..3] {
        let dev = node::mapper_path(&s.dm_name(*id));
        assert_eq!(&device_digest(&dev), sum, "volume {id} changed across the reboot");
    }
    {
        let m = Mount::new(&dev1, &format!("{}-1b", s.pool));
        assert_eq!(std::fs::read_to_string(m.path("base.txt")).unwrap(), "base layer\n");
        assert_eq!(std::fs::read(m.path("child.txt")).unwrap(), pattern(1, 300_000));
    }
    {
        let m = Mount::new(&dev0, &format!("{}-0b", s.pool));
        assert_eq!(std::fs::read_to_string(m.path("base.txt")).unwrap(), "base layer\n");
        assert!(!m.path("child.txt").exists());
    }
    // The deactivated one kept its data too.
    assert_eq!(s.device(&["activate", "3"]), dev3);
    assert_eq!(device_digest(&dev3), sums[3].1, "volume 3 changed across the reboot");
}

fn sectors_of(list: &serde_json::Value, id: u64) -> u64 {
    let v = list.as_array().unwrap().iter().find(|v| v["id"] == id).expect("volume listed");
    v["size_bytes"].as_u64().unwrap() / 512
}
