//! The harness itself: device-mapper is really there and does real work.

use rcx_dm::dm::{node, LinearTarget, Target};

use crate::common::*;

#[test]
fn control_device_answers_and_lists_the_targets_rcx_dm_needs() {
    let dm = dm();
    let (major, minor, _) = dm.version().expect("DM_VERSION ioctl");
    assert_eq!(major, 4, "dm ioctl interface major version");
    println!("dm ioctl interface {major}.{minor}");
    let targets = dm.targets().expect("DM_LIST_VERSIONS ioctl");
    for want in ["thin-pool", "thin", "snapshot-origin", "snapshot", "snapshot-merge", "linear"] {
        let t = targets.iter().find(|t| t.name == want);
        let t = t.unwrap_or_else(|| panic!("target {want} not loaded; have {targets:?}"));
        println!("target {:<16} v{}.{}.{}", t.name, t.version.0, t.version.1, t.version.2);
    }
}

#[test]
fn linear_device_over_a_sparse_loop_is_created_read_and_removed() {
    let dm = dm();
    let lo = Loop::new("linear", 64 << 20);
    let (lodev, size) = rcx_dm::loopback::block_device(&lo.dev).unwrap();
    assert_eq!(size, 64 << 20);
    let name = format!("t{}-linear", std::process::id());
    let table = [LinearTarget { dev: lodev, offset_sectors: 2048 }.line(0, 8192)];
    let info = dm.create(&name, None, &table, false).expect("create linear device");
    assert!(!info.suspended && info.live_table);
    let live = dm.table(&name).unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!((live[0].start, live[0].length, live[0].target.as_str()), (0, 8192, "linear"));
    assert_eq!(live[0].params, format!("{lodev} 2048"));
    // The kernel really maps it: bytes written through dm land 1 MiB into the file.
    let path = node::ensure(&name, info.dev).unwrap();
    std::fs::write(&path, vec![0xabu8; 4096]).unwrap();
    let file = std::fs::read(&lo.file).unwrap();
    assert!(file[(1 << 20)..(1 << 20) + 4096].iter().all(|b| *b == 0xab));
    assert!(file[..(1 << 20)].iter().all(|b| *b == 0));
    dm.remove(&name).expect("remove");
    node::remove(&name);
    assert!(dm.info(&name).unwrap().is_none());
    assert!(!path.exists());
}
