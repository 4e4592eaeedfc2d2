//! Keeping a pool alive: `pool extend` with a writer running (error and queue modes), extend
//! killed at every step, auto-extend by `pool monitor` for data and metadata, `pool set`, block
//! devices, and the bad input that must change nothing.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use rcx_dm::dm::PoolMode;

use crate::common::*;

const M: u64 = 1 << 20;
/// Writers write in chunks of this size, each with its own pattern seed (its index).
const CHUNK: usize = 1 << 20;

fn open_direct_rw(dev: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .unwrap_or_else(|e| panic!("opening {}: {e}", dev.display()))
}

/// The chunks a writer writes: one random 1 MiB base, every 4 KiB block of chunk `i` stamped
/// with (seed, i, block) so that every chunk differs. Cheap to make and compare (memcpy and
/// memcmp), which matters for a debug build under software emulation.
struct Chunks {
    seed: u64,
    base: Vec<u8>,
}

impl Chunks {
    fn new(seed: u64) -> Chunks {
        Chunks { seed, base: pattern(seed, CHUNK) }
    }

    fn expected(&self, i: u64, out: &mut [u8]) {
        out.copy_from_slice(&self.base);
        for b in 0..CHUNK / 4096 {
            out[b * 4096..b * 4096 + 24].copy_from_slice(&[self.seed.to_le_bytes(), i.to_le_bytes(), (b as u64).to_le_bytes()].concat());
        }
    }

    /// Write chunk `i` at offset i MiB; the kernel's answer, not a panic.
    fn write(&self, f: &File, i: u64) -> std::io::Result<()> {
        let mut buf = vec![0u8; CHUNK + 4096];
        let at = buf.as_ptr().align_offset(4096);
        self.expected(i, &mut buf[at..at + CHUNK]);
        f.write_all_at(&buf[at..at + CHUNK], i * CHUNK as u64)
    }

    /// Every chunk in `range` reads back as written.
    fn verify(&self, dev: &Path, range: std::ops::Range<u64>) {
        let mut want = vec![0u8; CHUNK];
        for i in range {
            let got = read_direct_at(dev, i * CHUNK as u64, CHUNK);
            self.expected(i, &mut want);
            assert!(got == want, "chunk {i} of {} does not read back as written", dev.display());
        }
    }
}

fn data_bytes(s: &Scenario) -> u64 {
    pool_status(s)["data_bytes"].as_u64().expect("data_bytes")
}

#[test]
fn extend_a_full_pool_lets_the_failed_write_succeed() {
    let s = Scenario::new("xfull");
    s.ok(&["pool", "create", "--data-size", "1G", "--autoextend-threshold", "off"]);
    let dev = s.device(&["thin", "create", "0", "--size", "4G"]);
    let f = open_direct_rw(&dev);
    let c = Chunks::new(0x100);
    // Fill until the kernel refuses (error_if_no_space: at once, ENOSPC).
    let mut i = 0;
    let err = loop {
        match c.write(&f, i) {
            Ok(()) => i += 1,
            Err(e) => break e,
        }
        assert!(i < 2048, "2G fitted in a 1G pool");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "a full pool fails writes with ENOSPC, got {err}");
    assert_eq!(i, 1024, "a 1G pool takes exactly 1024 MiB chunks before it is full");
    assert_eq!(kernel_status(&s).mode, PoolMode::OutOfDataSpace);

    let start = Instant::now();
    let out = s.ok(&["pool", "extend", "--data-size", "+1G"]);
    println!("pool extend +1G of a full pool took {:.2} s: {}", start.elapsed().as_secs_f64(), out.trim());
    assert!(out.contains("data: 1G -> 2G"), "{out}");
    let k = kernel_status(&s);
    assert_eq!((k.mode, k.data_total_blocks), (PoolMode::Rw, 2 * 16384), "{k:?}");
    assert_eq!(data_bytes(&s), 2 << 30);
    assert_eq!(std::fs::metadata(s.pool_dir().join("data.img")).unwrap().len(), 2 << 30);

    // The write that failed, retried, succeeds; and 256M more after it.
    c.write(&f, i).expect("the retried write succeeds after extend");
    for j in i + 1..i + 256 {
        c.write(&f, j).unwrap_or_else(|e| panic!("write {j} after extend: {e}"));
    }
    f.sync_all().unwrap();
    drop(f);
    c.verify(&dev, 0..i + 256);

    s.ok(&["pool", "deactivate"]);
    assert_eq!(s.offline_metadata_ids(), vec![0]);
    s.ok(&["pool", "activate"]);
    assert_eq!(kernel_status(&s).data_total_blocks, 2 * 16384, "the new size survives deactivate/activate");
}

#[test]
fn extend_completes_writes_queued_while_the_pool_was_full() {
    let s = Scenario::new("xqueue");
    s.ok(&["pool", "create", "--data-size", "256M", "--queue-if-no-space", "--autoextend-threshold", "off"]);
    let dev = s.device(&["thin", "create", "0", "--size", "1G"]);
    let c = Chunks::new(0x200);
    let chunks = 320u64; // 64M more than fits
    let writer = {
        let dev = dev.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            let c = Chunks::new(0x200);
            let f = open_direct_rw(&dev);
            for i in 0..chunks {
                c.write(&f, i)?;
            }
            f.sync_all()
        })
    };
    // The kernel queues the writer's bios (for up to 60 s) and says so in the pool's mode.
    wait_for("the pool to run out of space and queue writes", 120, || {
        (kernel_status(&s).mode == PoolMode::OutOfDataSpace).then_some(())
    });
    assert!(!writer.is_finished(), "the writer should be blocked on the full pool");
    s.ok(&["pool", "extend", "--data-size", "+256M"]);
    let r = writer.join().expect("writer thread");
    r.expect("queued writes complete without error after extend");
    assert_eq!(kernel_status(&s).mode, PoolMode::Rw);
    c.verify(&dev, 0..chunks);
    s.ok(&["pool", "deactivate"]);
    assert_eq!(s.offline_metadata_ids(), vec![0]);
}

const STEPS: [&str; 7] =
    ["extend.intent", "extend.grown", "extend.capacity", "extend.loaded", "extend.suspended", "extend.resumed", "extend.recorded"];

#[test]
fn extend_killed_at_every_step_is_finished_by_the_next_command() {
    let mut failures = Vec::new();
    for (n, step) in STEPS.iter().enumerate() {
        for mode in ["kill", "error"] {
            let r = std::panic::catch_unwind(|| extend_interrupted(step, mode, n % 2 == 1));
            if r.is_err() {
                failures.push(format!("{step} ({mode})"));
            }
        }
    }
    assert!(failures.is_empty(), "interrupted extends not recovered: {failures:?}");
}

/// Extend a live pool with a mounted-and-written volume, stopped at `step`; then the next
/// command (or, with `via_activate`, a deactivate + activate) must leave the pool at the new
/// size, resumed, consistent, with the data intact.
fn extend_interrupted(step: &str, mode: &str, via_activate: bool) {
    let s = Scenario::new("xkill");
    s.ok(&["pool", "create", "--data-size", "128M", "--meta-size", "4M", "--autoextend-threshold", "off"]);
    let dev = s.device(&["thin", "create", "0", "--size", "512M"]);
    let data = pattern(7, 16 << 20);
    write_direct_at(&dev, 0, &data);
    let mut env = vec![("RCX_DM_FAIL_AT", step)];
    if mode == "error" {
        env.push(("RCX_DM_FAIL_MODE", "error"));
    }
    let out = s.cli_env(&["pool", "extend", "--data-size", "+64M", "--meta-size", "8M"], &env);
    match mode {
        "kill" => assert_eq!(out.status.signal(), Some(9), "{step}: extend should have been killed: {out:?}"),
        _ => assert!(!out.status.success(), "{step}: extend should have failed"),
    }
    if via_activate && mode == "kill" {
        s.ok(&["pool", "deactivate"]);
        s.ok(&["pool", "activate"]);
    }
    let st = pool_status(&s); // the next command
    let pool = dm().info(&rcx_dm::pool::pool_dm_name(&s.pool)).unwrap().expect("pool device");
    assert!(!pool.suspended, "{step}: pool left suspended");
    assert_eq!(st["data_bytes"], 192 * M, "{step}: data size {st}");
    assert_eq!(st["meta_bytes"], 8 * M, "{step}: metadata size {st}");
    assert_eq!(st["data_total_blocks"], 192 * M / (64 << 10), "{step}: kernel data size {st}");
    assert_eq!(st["meta_total_blocks"], 8 * M / 4096, "{step}: kernel metadata size {st}");
    assert_eq!(st["mode"], "rw", "{step}: {st}");
    assert!(!s.pool_dir().join("extend.json").exists(), "{step}: intent left behind");
    let dev = s.device(&["activate", "0"]);
    assert!(read_direct_at(&dev, 0, 16 << 20) == data, "{step}: data lost");
    s.ok(&["pool", "deactivate"]);
    assert_eq!(s.offline_metadata_ids(), vec![0], "{step}");
}

/// `rcx-dm pool monitor` as a child process; killed on drop. Its log goes to a file.
struct Monitor {
    child: Child,
    log: PathBuf,
}

impl Monitor {
    fn start(s: &Scenario) -> Monitor {
        let log = s.root.join("monitor.log");
        let f = File::create(&log).unwrap();
        let child = Command::new(bin())
            .args(["pool", "monitor", "--interval", "1s"])
            .env("RCX_DM_ROOT", &s.root)
            .env("RCX_DM_POOL", &s.pool)
            .env("RUST_LOG", "rcx_dm=info")
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("spawn pool monitor");
        let m = Monitor { child, log };
        wait_for("the monitor to start", 60, || m.log().contains("monitoring the pool").then_some(()));
        m
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(mut self) -> String {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let status = self.child.wait().expect("monitor exit");
        let log = self.log();
        assert!(status.success(), "monitor exited with {status} on SIGTERM:\n{log}");
        log
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn extend_monitor_grows_data_in_steps_and_stops_at_the_max() {
    let s = Scenario::new("xauto");
    s.ok(&[
        "pool", "create", "--data-size", "256M", "--autoextend-threshold", "60", "--autoextend-step", "50%",
        "--autoextend-max", "1G", "--host-reserve", "128M",
    ]);
    let blocks = |b: u64| b / (64 << 10);
    // The threshold sets the kernel's low-water mark: 40% of 4096 blocks free.
    let table = dm().table(&rcx_dm::pool::pool_dm_name(&s.pool)).unwrap();
    assert_eq!(table[0].params.split_whitespace().nth(3), Some("1638"), "{table:?}");
    let m = Monitor::start(&s);
    let second = s.fails(&["pool", "monitor"]);
    assert!(second.contains("already has a monitor"), "{second}");

    let dev = s.device(&["thin", "create", "0", "--size", "2G"]);
    let f = open_direct_rw(&dev);
    let c = Chunks::new(0x300);
    // Three times the initial size, no write may fail.
    let mut sizes = vec![kernel_status(&s).data_total_blocks];
    for i in 0..768u64 {
        c.write(&f, i).unwrap_or_else(|e| panic!("write {i} failed with the monitor running: {e}\n{}", m.log()));
        let t = kernel_status(&s).data_total_blocks;
        if sizes.last() != Some(&t) {
            sizes.push(t);
        }
    }
    println!("pool data sizes seen while writing 768M: {:?} blocks", sizes);
    assert!(sizes.len() >= 3, "the pool should have grown in several steps: {sizes:?}");
    assert!(sizes.windows(2).all(|w| w[1] > w[0]));
    assert!(*sizes.last().unwrap() <= blocks(1 << 30), "never past --autoextend-max: {sizes:?}");
    // Past the max: a clean ENOSPC, and the monitor says why it did not extend.
    let mut i = 768;
    let err = loop {
        match c.write(&f, i) {
            Ok(()) => i += 1,
            Err(e) => break e,
        }
        assert!(i < 2048, "wrote past --autoextend-max");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert_eq!(i, 1024, "the pool stopped at --autoextend-max (1G)");
    assert_eq!(kernel_status(&s).data_total_blocks, blocks(1 << 30));
    wait_for("the monitor's warning about the limit", 30, || m.log().contains("cannot grow beyond").then_some(()));
    drop(f);
    c.verify(&dev, 0..1024);
    let log = m.stop();
    assert!(log.contains("auto-extended"), "{log}");
}

#[test]
fn extend_monitor_grows_metadata_before_it_fills() {
    let s = Scenario::new("xmeta");
    s.ok(&["pool", "create", "--data-size", "1G", "--meta-size", "2M", "--autoextend-threshold", "60", "--autoextend-step", "100%", "--host-reserve", "128M"]);
    let m = Monitor::start(&s);
    let p = lib_pool(&s);
    let base = p.create_thin(Some(0), 256 * M, None).unwrap();
    write_direct_at(base.device.as_ref().unwrap(), 0, &pattern(1, 1 << 20));
    let start_total = kernel_status(&s).meta_total_blocks;
    assert_eq!(start_total, 512);
    // Every snapshot that is written gets its own btree root and leaf.
    let mut n = 0;
    let mut max_used_pct = 0.0f64;
    while kernel_status(&s).meta_total_blocks == start_total {
        n += 1;
        assert!(n <= 600, "600 written snapshots did not make the monitor extend metadata:\n{}", m.log());
        let v = p.snapshot(Some(n), &rcx_dm::VolRef::Id(0), None, None).unwrap_or_else(|e| panic!("snapshot {n}: {e}\n{}", m.log()));
        write_direct_at(v.device.as_ref().unwrap(), (n as u64 % 200) * M, &pattern(n as u64, 4096));
        let k = kernel_status(&s);
        assert_ne!(k.mode, PoolMode::Ro, "metadata filled up:\n{}", m.log());
        max_used_pct = max_used_pct.max(100.0 * k.meta_used_blocks as f64 / k.meta_total_blocks as f64);
    }
    let k = kernel_status(&s);
    println!("metadata grew from {start_total} to {} blocks after {n} written snapshots (peak use {max_used_pct:.0}%)", k.meta_total_blocks);
    assert!(k.meta_total_blocks > start_total);
    assert!(max_used_pct < 100.0);
    assert!(m.stop().contains("auto-extended"));
    s.ok(&["pool", "deactivate"]);
    assert_eq!(s.offline_metadata_ids().len(), n as usize + 1);
}

#[test]
fn extend_pool_set_moves_the_low_water_mark_and_bad_input_changes_nothing() {
    let s = Scenario::new("xbad");
    s.ok(&["pool", "create", "--data-size", "128M", "--meta-size", "4M"]);
    let table = || dm().table(&rcx_dm::pool::pool_dm_name(&s.pool)).unwrap()[0].params.clone();
    let lw = |t: &str| t.split_whitespace().nth(3).unwrap().to_string();
    assert_eq!(lw(&table()), "409", "default threshold 80%: 20% of 2048 blocks"); // 2048*20/100
    let out = s.ok(&["pool", "set", "--autoextend-threshold", "90", "--autoextend-step", "1G", "--autoextend-max", "4G"]);
    assert!(out.contains("at 90% used, by 1G, data up to 4G"), "{out}");
    assert_eq!(lw(&table()), "204");
    let st = pool_status(&s);
    assert_eq!(st["autoextend"]["threshold_percent"], 90, "{st}");
    assert_eq!(st["data_free_percent"], 100.0, "{st}");

    // The host filesystem's free space moves with the tests running beside this one.
    let pool_status_of_pool = |s: &Scenario| {
        let mut st = pool_status(s);
        st.as_object_mut().expect("status object").remove("host_free_bytes");
        st
    };
    let before = (pool_status_of_pool(&s), table(), std::fs::metadata(s.pool_dir().join("data.img")).unwrap().len());
    for (args, needle) in [
        (vec!["pool", "extend", "--data-size", "64M"], "cannot shrink"),
        (vec!["pool", "extend", "--data-size", "+100K"], "whole number"),
        (vec!["pool", "extend", "--meta-size", "32G"], "maximum"),
        (vec!["pool", "extend", "--meta-size", "2M"], "cannot shrink"),
        (vec!["pool", "extend", "--data-size", "+1x"], "unknown suffix"),
        (vec!["pool", "set", "--autoextend-threshold", "20"], "50 to 100"),
        (vec!["pool", "set", "--autoextend-step", "0%"], "percentage"),
        (vec!["pool", "set"], "nothing to set"),
        (vec!["--pool", "nosuch", "pool", "extend", "--data-size", "+1G"], "does not exist"),
    ] {
        let err = s.fails(&args);
        assert!(err.contains(needle), "{args:?}: expected '{needle}' in:\n{err}");
    }
    let after = (pool_status_of_pool(&s), table(), std::fs::metadata(s.pool_dir().join("data.img")).unwrap().len());
    assert_eq!(before, after, "refused commands changed the pool");

    // Equal size: nothing to do, success.
    assert!(s.ok(&["pool", "extend", "--data-size", "128M"]).contains("unchanged"));
    // An inactive pool grows at its next activation.
    s.ok(&["pool", "deactivate"]);
    s.ok(&["pool", "extend", "--data-size", "+64M"]);
    s.ok(&["pool", "activate"]);
    assert_eq!(kernel_status(&s).data_total_blocks, 3072);
}

#[test]
fn extend_block_devices_to_what_the_owner_gave_them() {
    let data = Loop::new("xdev-data", 256 * M);
    let meta = Loop::new("xdev-meta", 8 * M);
    let s = Scenario::new("xdev");
    s.ok(&["pool", "create", "--data-dev", path_str(&data.dev), "--meta-dev", path_str(&meta.dev), "--autoextend-threshold", "off"]);
    let vol = s.device(&["thin", "create", "0", "--size", "1G"]);
    let bytes = pattern(3, 8 << 20);
    write_direct_at(&vol, 0, &bytes);
    // More than the device has: refused, nothing changed.
    let err = s.fails(&["pool", "extend", "--data-size", "512M"]);
    assert!(err.contains("has only 256M") && err.contains("grow the device first"), "{err}");
    // The owner grows the devices (here: the files under the loops, then LOOP_SET_CAPACITY).
    OpenOptions::new().write(true).open(&data.file).unwrap().set_len(512 * M).unwrap();
    OpenOptions::new().write(true).open(&meta.file).unwrap().set_len(16 * M).unwrap();
    sh(&format!("losetup -c {} && losetup -c {}", data.dev.display(), meta.dev.display()));
    let out = s.ok(&["pool", "extend"]);
    assert!(out.contains("data: 256M -> 512M") && out.contains("metadata: 8M -> 16M"), "{out}");
    let k = kernel_status(&s);
    assert_eq!((k.data_total_blocks, k.meta_total_blocks), (8192, 4096));
    assert!(read_direct_at(&vol, 0, 8 << 20) == bytes);
    s.ok(&["pool", "destroy", "--force"]);
}

#[test]
fn extend_serve_runs_the_monitor_in_process() {
    let s = Scenario::new("xserve");
    s.ok(&["pool", "create", "--data-size", "128M", "--autoextend-threshold", "60", "--autoextend-step", "100%", "--host-reserve", "64M"]);
    let sock = s.root.join("serve.sock");
    let log = s.root.join("serve.log");
    let mut serve = Monitor {
        child: Command::new(bin())
            .args(["serve", "--socket", path_str(&sock)])
            .env("RCX_DM_ROOT", &s.root)
            .env("RCX_DM_POOL", &s.pool)
            .env("RUST_LOG", "rcx_dm=info")
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("spawn rcx-dm serve"),
        log,
    };
    wait_for("serve's monitor to start", 60, || serve.log().contains("monitoring the pool").then_some(()));
    // serve's monitor holds the pool: a second one is refused.
    let err = s.fails(&["pool", "monitor"]);
    assert!(err.contains("already has a monitor"), "{err}");
    let dev = s.device(&["thin", "create", "0", "--size", "1G"]);
    let c = Chunks::new(0x400);
    let f = open_direct_rw(&dev);
    for i in 0..96 {
        c.write(&f, i).unwrap_or_else(|e| panic!("write {i}: {e}\n{}", serve.log()));
    }
    wait_for("serve's monitor to extend the pool", 60, || (kernel_status(&s).data_total_blocks > 2048).then_some(()));
    assert!(serve.log().contains("auto-extended"), "{}", serve.log());
    drop(f);
    let _ = serve.child.kill();
    let _ = serve.child.wait();
    c.verify(&dev, 0..96);
}

#[test]
fn extend_metadata_of_a_pool_that_ran_out_of_it() {
    let s = Scenario::new("xmfull");
    s.ok(&["pool", "create", "--data-size", "1G", "--meta-size", "2M", "--autoextend-threshold", "off"]);
    let p = lib_pool(&s);
    let base = p.create_thin(Some(0), 256 * M, None).unwrap();
    write_direct_at(base.device.as_ref().unwrap(), 0, &pattern(1, 1 << 20));
    // Written snapshots until the kernel runs out of metadata and turns the pool read-only.
    let mut made = 0u32;
    let refusal = loop {
        let n = made + 1;
        assert!(n <= 2000, "2000 written snapshots fitted in 2M of metadata");
        match p.snapshot(Some(n), &rcx_dm::VolRef::Id(0), None, None) {
            Ok(v) => {
                made = n;
                let f = open_direct_rw(v.device.as_ref().unwrap());
                let mut buf = vec![0u8; 8192];
                let at = buf.as_ptr().align_offset(4096);
                buf[at..at + 4096].copy_from_slice(&pattern(n as u64, 4096));
                // The write that needs metadata the pool no longer has fails; that is the point.
                let _ = f.write_all_at(&buf[at..at + 4096], (n as u64 % 200) * M);
            }
            Err(e) => break e.to_string(),
        }
        if kernel_status(&s).mode == PoolMode::Ro {
            break String::new();
        }
    };
    let k = kernel_status(&s);
    println!("metadata ran out after {made} snapshots: {k:?}; refusal: {refusal}");
    assert_eq!(k.mode, PoolMode::Ro, "{k:?}");
    assert!(!k.needs_check, "running out of metadata is not damage: {k:?}");
    let err = s.fails(&["thin", "create", "--size", "1G"]);
    assert!(err.contains("pool extend --meta-size"), "{err}");

    s.ok(&["pool", "extend", "--meta-size", "+4M"]);
    let k = kernel_status(&s);
    assert_eq!((k.mode, k.meta_total_blocks), (PoolMode::Rw, 1536), "{k:?}");
    // Usable again: a new snapshot, written and read back.
    let v = s.device(&["snap", "-", "0"]);
    write_direct_at(&v, 0, &pattern(99, 1 << 20));
    assert!(read_direct_at(&v, 0, 1 << 20) == pattern(99, 1 << 20));
    s.ok(&["pool", "deactivate"]);
    assert!(s.offline_metadata_ids().len() >= made as usize);
}
