//! Issue 13's defects, each with the test that showed it on the old main.

use crate::common::*;

/// Defect 5: an id the kernel's metadata has but the store does not (a device made behind
/// rcx-dm's back) made every later automatic id fail with EEXIST, since the hint never moved.
#[test]
fn integrity_automatic_ids_skip_ids_only_the_kernel_has() {
    let s = Scenario::new("iid");
    s.ok(&["pool", "create", "--data-size", "1G"]);
    let pool_dm = rcx_dm::pool::pool_dm_name(&s.pool);
    for id in [0, 1] {
        dm().message(&pool_dm, &format!("create_thin {id}")).unwrap();
    }
    let pool = lib_pool(&s);
    let v = pool.create_thin(None, 16 << 20, Some("first")).expect("an automatic id past the kernel's own");
    assert_eq!(v.id, 2, "{v:?}");
    // A named id the kernel has is still refused, and changes nothing.
    let err = s.fails(&["thin", "create", "1", "--size", "16M", "--name", "taken"]);
    assert!(err.contains("thin id 1 exists in the kernel"), "{err}");
    assert!(s.fails(&["info", "taken"]).contains("taken"), "the refused name stays free");
    // A snapshot gets the next free id too, and the origin is resumed.
    let snap = pool.snapshot(None, &rcx_dm::VolRef::Id(2), None, Some("snap")).unwrap();
    assert_eq!(snap.id, 3, "{snap:?}");
    assert!(!dm().info(&s.dm_name(2)).unwrap().unwrap().suspended);
    let ids: Vec<u32> = pool.volumes().unwrap().iter().map(|v| v.id).collect();
    assert_eq!(ids, [2, 3]);
    // The kernel's own ids were never touched: they can still be deleted by hand.
    for id in [0, 1] {
        dm().message(&pool_dm, &format!("delete {id}")).unwrap();
    }
    s.ok(&["pool", "destroy", "--force"]);
}
