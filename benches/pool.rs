//! Keeping a pool alive (issue 12, performance; not a test): run as root where device-mapper
//! exists, normally through `tools/bench-pool`, which boots the VM and writes bench/pool.md.
//!
//! 1. `rcx-dm pool extend --data-size +1G` (the CLI, staged on tmpfs) on a live 2G pool while a
//!    writer thread writes a thin volume with O_DIRECT, against `lvextend -L +1G` of an LVM
//!    thin pool of the same geometry written by the same writer; rounds interleaved. Per
//!    extend: wall time and the writer's longest write while it ran. The yardstick: one bare
//!    suspend + resume of the rcx-dm thin-pool device, in-process (noflush, as extend does, and
//!    with flush, as `dmsetup suspend` does), with the same writer. Then the same +1G through
//!    `Pool::extend` in-process (auto-extend's path), and `rcx-dm --version` as the CLI's floor.
//! 2. Space given back to the host: the pool's data.img allocated bytes (st_blocks * 512)
//!    before and after `rcx-dm delete` of a volume holding 500 MiB, and `rcx-dm trim` of a
//!    mounted ext4 volume after a 300 MiB file in it was removed; bytes per second of the
//!    command's wall time. Whatever the build gives back is reported, 0 included.
//!
//! Knobs: RCX_DM_BENCH_REPS (extend rounds, default 10), RCX_DM_BENCH_SPACE_REPS (delete and
//! trim rounds, default 3). Prints a markdown report between BEGIN-REPORT and END-REPORT; the
//! part between the summary markers is what tools/bench-report.py copies into REPORT.md.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

use rcx_dm::dm::{Dm, ThinPoolStatus};
use rcx_dm::pool::{ExtendRequest, SizeChange};

mod common;
use common::{fmt_range, median, which, Stage};

const BIN: &str = env!("CARGO_BIN_EXE_rcx-dm");
const M: u64 = 1 << 20;
const G: u64 = 1 << 30;
const BLOCK: u64 = 64 << 10;
const POOL_DATA: u64 = 2 * G;
/// One pool block per write: in a fresh region every write provisions exactly one block, so
/// the writer goes through the pool's worker as a writer filling a pool does.
const WRITE: usize = BLOCK as usize;
/// The writer cycles through the first GiB of its volume, discarded between rounds (the
/// discards reach the sparse file), so each round provisions afresh and tmpfs does not fill.
const REGION: u64 = G;
const VOL_SIZE: &str = "16G";
const EXTEND_POOL: &str = "bpext";
const SPACE_POOL: &str = "bpspace";
const VG: &str = "bpoolvg";

struct Env {
    rcx: PathBuf,
    lvm: PathBuf,
    bin_dir: PathBuf,
    lib: PathBuf,
    root: PathBuf,
    lvm_dir: PathBuf,
}

impl Env {
    fn cmd(&self, exe: &Path) -> Command {
        let mut c = Command::new(exe);
        c.env("LD_LIBRARY_PATH", &self.lib)
            .env("PATH", format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", self.bin_dir.display()))
            .env("RCX_DM_ROOT", &self.root)
            .env("LVM_SYSTEM_DIR", &self.lvm_dir)
            .env("DM_DISABLE_UDEV", "1")
            .env("LVM_SUPPRESS_FD_WARNINGS", "1");
        c
    }

    /// Run; stdout on success, else the command line and its stderr.
    fn run(&self, exe: &Path, pool: &str, args: &[&str]) -> Result<String, String> {
        let out = self.cmd(exe).env("RCX_DM_POOL", pool).env("RCX_DM_OVERCOMMIT", "1").args(args).output().map_err(|e| format!("spawn {}: {e}", exe.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("{} {args:?} ({}): {}", exe.display(), out.status, String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    fn rcx(&self, pool: &str, args: &[&str]) -> String {
        self.run(&self.rcx, pool, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The device path a `thin create` prints last.
    fn device(&self, pool: &str, args: &[&str]) -> PathBuf {
        PathBuf::from(self.rcx(pool, args).lines().last().expect("a device line").trim())
    }

    fn lvm(&self, args: &[&str]) -> String {
        self.run(&self.lvm, "", args).unwrap_or_else(|e| panic!("{e}"))
    }
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("spawn sh");
    assert!(out.status.success(), "`{cmd}`: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn open_direct(dev: &Path) -> File {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .unwrap_or_else(|e| panic!("opening {} O_DIRECT: {e}", dev.display()))
}

/// A 4K-aligned buffer of `len` non-zero bytes (O_DIRECT needs the alignment).
fn aligned(len: usize) -> (Vec<u8>, usize) {
    let buf = vec![0xa5u8; len + 4096];
    let at = buf.as_ptr().align_offset(4096);
    (buf, at)
}

/// One write's start and end, seconds since the bench's epoch.
type Lat = (f64, f64);

/// A thread writing `WRITE`-sized O_DIRECT writes through REGION of a device, in a loop,
/// recording every write's latency.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<std::io::Result<Vec<Lat>>>,
}

impl Writer {
    fn start(dev: &Path, epoch: Instant) -> Writer {
        let f = open_direct(dev);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut buf, at) = aligned(WRITE);
            let buf = &mut buf[at..at + WRITE];
            let (mut lat, mut off) = (Vec::new(), 0u64);
            while !flag.load(Ordering::Relaxed) {
                buf[..8].copy_from_slice(&off.to_le_bytes());
                let t0 = epoch.elapsed().as_secs_f64();
                f.write_all_at(buf, off)?;
                lat.push((t0, epoch.elapsed().as_secs_f64()));
                off = (off + WRITE as u64) % REGION;
            }
            Ok(lat)
        });
        Writer { stop, thread }
    }

    fn stop(self) -> Vec<Lat> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.join() {
            Ok(Ok(lat)) => lat,
            Ok(Err(e)) => panic!("the writer's write failed: {e}"),
            Err(_) => panic!("the writer thread panicked"),
        }
    }
}

/// The writer's longest write that overlapped [a, b], in ms: the stall it saw.
fn stall(lat: &[Lat], (a, b): (f64, f64)) -> f64 {
    lat.iter().filter(|(s, e)| *s < b && *e > a).map(|(s, e)| (e - s) * 1e3).fold(0.0, f64::max)
}

/// Run `f`; its window in epoch seconds.
fn window(epoch: Instant, f: impl FnOnce()) -> (f64, f64) {
    let a = epoch.elapsed().as_secs_f64();
    f();
    (a, epoch.elapsed().as_secs_f64())
}

fn ms((a, b): (f64, f64)) -> f64 {
    (b - a) * 1e3
}

/// BLKDISCARD the writer's region: thin unmaps the blocks and passes the discards down to the
/// loop device, which punches holes in the sparse file.
fn discard(dev: &Path, len: u64) {
    let f = OpenOptions::new().write(true).open(dev).unwrap_or_else(|e| panic!("opening {}: {e}", dev.display()));
    let range = [0u64, len];
    // BLKDISCARD = _IO(0x12, 119)
    let r = unsafe { libc::ioctl(f.as_raw_fd(), 0x1277, range.as_ptr()) };
    assert_eq!(r, 0, "BLKDISCARD {}: {}", dev.display(), std::io::Error::last_os_error());
}

fn status(dm: &Dm, dm_name: &str) -> ThinPoolStatus {
    let lines = dm.status(dm_name).unwrap_or_else(|e| panic!("status of {dm_name}: {e}"));
    ThinPoolStatus::parse(&lines[0].params).unwrap_or_else(|e| panic!("status of {dm_name}: {e}"))
}

/// Bytes the host's filesystem holds for a (sparse) file.
fn host_bytes(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display())).blocks() * 512
}

fn scratch_used(scratch: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(scratch).expect("statvfs scratch");
    (s.blocks() - s.blocks_free()) as u64 * s.fragment_size() as u64
}

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Per-round figures of one system's extend (ms).
#[derive(Default)]
struct Extends {
    wall: Vec<f64>,
    stall: Vec<f64>,
    quiet: Vec<f64>,
}

#[derive(Default)]
struct Yardstick {
    noflush_wall: Vec<f64>,
    noflush_stall: Vec<f64>,
    flush_wall: Vec<f64>,
    flush_stall: Vec<f64>,
}

/// What the writer did in one round: MiB written, median write latency ms.
struct WriterRound(f64, f64);

fn writer_round(lat: &[Lat]) -> WriterRound {
    let l: Vec<f64> = lat.iter().map(|(s, e)| (e - s) * 1e3).collect();
    WriterRound((lat.len() * WRITE) as f64 / M as f64, if l.is_empty() { 0.0 } else { median(&l) })
}

/// One system's round: writer on, 1 s quiet window (the writer's own noise floor), the extend,
/// then `more` (the yardstick) with the writer still on.
fn extend_round(epoch: Instant, dev: &Path, out: &mut Extends, extend: impl FnOnce(), more: impl FnOnce() -> Vec<(f64, f64)>) -> (Vec<Lat>, Vec<(f64, f64)>) {
    let w = Writer::start(dev, epoch);
    sleep(Duration::from_millis(300));
    let quiet = window(epoch, || sleep(Duration::from_secs(1)));
    let ext = window(epoch, extend);
    sleep(Duration::from_millis(500));
    let extra = more();
    sleep(Duration::from_millis(300));
    let lat = w.stop();
    out.wall.push(ms(ext));
    out.stall.push(stall(&lat, ext));
    out.quiet.push(stall(&lat, quiet));
    discard(dev, REGION);
    (lat, extra)
}

fn row(label: &str, v: &[f64]) -> String {
    format!("| {label} | {:.1} | {} |", median(v), fmt_range(v))
}

fn per_round(v: &[f64]) -> String {
    v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ")
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

fn main() {
    let reps = knob("RCX_DM_BENCH_REPS", 10);
    let space_reps = knob("RCX_DM_BENCH_SPACE_REPS", 3);
    let dm = Dm::open().expect("device-mapper is required; run through tools/bench-pool");
    let scratch = std::env::var_os("RCX_DM_SCRATCH").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let root = scratch.join("bench-pool-root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("creating the bench's state folder");
    // Executables on tmpfs: exec over the VM's 9p root would be part of every timing.
    let s = Stage::new(&scratch.join("bench-pool-bin"));
    let lvm_dir = scratch.join("bench-pool-lvm");
    std::fs::create_dir_all(&lvm_dir).expect("creating LVM's folder");
    let env = Env {
        rcx: s.copy(Path::new(BIN), "rcx-dm"),
        lvm: s.copy(&which("lvm"), "lvm"),
        bin_dir: s.bin_dir.clone(),
        lib: s.lib_dir.clone(),
        root: root.clone(),
        lvm_dir: lvm_dir.clone(),
    };
    for p in ["mke2fs", "mkfs.ext4"] {
        s.copy(&which(p), p);
    }
    let mut peak_scratch = 0u64;

    // ---- 1. extend with a writer running -------------------------------------------------
    env.rcx(EXTEND_POOL, &["pool", "create", "--data-size", "2G", "--block-size", "64K", "--autoextend-threshold", "off"]);
    let rcx_pool_dm = rcx_dm::pool::pool_dm_name(EXTEND_POOL);
    let meta_bytes = status(&dm, &rcx_pool_dm).meta_total_blocks * 4096;
    let rcx_dev = env.device(EXTEND_POOL, &["thin", "create", "--size", VOL_SIZE, "--name", "w"]);

    // LVM: a PV big enough for every extend on a sparse file; a thin pool of the same
    // geometry (data, metadata, chunk, zeroing, error when full) and a thin LV.
    let pv_file = scratch.join("bench-pool-pv.img");
    let pv_bytes = POOL_DATA + reps as u64 * G + 2 * meta_bytes + 2 * G;
    let loopdev = sh(&format!("truncate -s {pv_bytes} {p} && losetup -f --show {p}", p = pv_file.display()));
    std::fs::write(lvm_dir.join("lvm.conf"), common::lvm_conf(&loopdev, &lvm_dir)).expect("writing lvm.conf");
    env.lvm(&["pvcreate", "-qq", &loopdev]);
    env.lvm(&["vgcreate", "-qq", VG, &loopdev]);
    let mb = |b: u64| format!("{}m", b.div_ceil(M));
    env.lvm(&[
        "lvcreate", "-qq", "--type", "thin-pool", "-L", &mb(POOL_DATA), "--poolmetadatasize", &mb(meta_bytes), "--chunksize", "64k", "-Zy",
        "-n", "pool", VG,
    ]);
    env.lvm(&["lvchange", "-qq", "--errorwhenfull", "y", &format!("{VG}/pool")]);
    env.lvm(&["lvcreate", "-qq", "-V", VOL_SIZE, "-T", &format!("{VG}/pool"), "-n", "w"]);
    let lvm_dev = PathBuf::from(format!("/dev/mapper/{VG}-w"));
    let lvm_pool_dm = format!("{VG}-pool-tpool");
    let lvm_meta = status(&dm, &lvm_pool_dm).meta_total_blocks * 4096;

    let epoch = Instant::now();
    let (mut rcx, mut lvm, mut yard) = (Extends::default(), Extends::default(), Yardstick::default());
    let (mut lib, mut floor) = (Extends::default(), Vec::new());
    let lib_pool = rcx_dm::Pool::open(&root, EXTEND_POOL).expect("opening the bench pool through the library");
    let mut writer = Vec::new();
    for r in 0..reps {
        let mut rcx_round = |rcx: &mut Extends, yard: &mut Yardstick, writer: &mut Vec<WriterRound>| {
            let (lat, y) = extend_round(
                epoch,
                &rcx_dev,
                rcx,
                || drop(env.rcx(EXTEND_POOL, &["pool", "extend", "--data-size", "+1G"])),
                || {
                    let noflush = window(epoch, || {
                        dm.suspend_noflush(&rcx_pool_dm).expect("suspend (noflush) the pool");
                        dm.resume(&rcx_pool_dm).expect("resume the pool");
                    });
                    sleep(Duration::from_millis(500));
                    let flush = window(epoch, || {
                        dm.suspend(&rcx_pool_dm).expect("suspend the pool");
                        dm.resume(&rcx_pool_dm).expect("resume the pool");
                    });
                    sleep(Duration::from_millis(500));
                    // What auto-extend runs: `pool monitor` and serve call the library in-process.
                    let lib = window(epoch, || {
                        let req = ExtendRequest { data: Some(SizeChange::By(G)), meta: None, overcommit: true };
                        lib_pool.extend(&req).expect("Pool::extend +1G");
                    });
                    vec![noflush, flush, lib]
                },
            );
            yard.noflush_wall.push(ms(y[0]));
            yard.noflush_stall.push(stall(&lat, y[0]));
            yard.flush_wall.push(ms(y[1]));
            yard.flush_stall.push(stall(&lat, y[1]));
            lib.wall.push(ms(y[2]));
            lib.stall.push(stall(&lat, y[2]));
            floor.push(ms(window(epoch, || drop(env.rcx(EXTEND_POOL, &["--version"])))));
            writer.push(writer_round(&lat));
        };
        let lvm_round = |lvm: &mut Extends, writer: &mut Vec<WriterRound>| {
            let (lat, _) =
                extend_round(epoch, &lvm_dev, lvm, || drop(env.lvm(&["lvextend", "-qq", "-L", "+1g", &format!("{VG}/pool")])), Vec::new);
            writer.push(writer_round(&lat));
        };
        // Alternate who goes first, so drift in the host's load touches both alike.
        if r % 2 == 0 {
            rcx_round(&mut rcx, &mut yard, &mut writer);
            lvm_round(&mut lvm, &mut writer);
        } else {
            lvm_round(&mut lvm, &mut writer);
            rcx_round(&mut rcx, &mut yard, &mut writer);
        }
        peak_scratch = peak_scratch.max(scratch_used(&scratch));
        eprintln!("round {r}: rcx-dm extend {:.0} ms, lvextend {:.0} ms", rcx.wall[r], lvm.wall[r]);
    }
    // rcx-dm's pool grows twice a round (CLI, then library).
    let want_blocks = (POOL_DATA + reps as u64 * G) / BLOCK;
    let rcx_want_blocks = (POOL_DATA + 2 * reps as u64 * G) / BLOCK;
    let (rcx_blocks, lvm_blocks) = (status(&dm, &rcx_pool_dm).data_total_blocks, status(&dm, &lvm_pool_dm).data_total_blocks);
    let lvm_version = env.lvm(&["version"]).lines().next().unwrap_or("?").trim().to_string();
    env.rcx(EXTEND_POOL, &["pool", "destroy", "--force"]);
    env.lvm(&["vgremove", "-qq", "-ff", VG]);
    sh(&format!("losetup -d {loopdev}"));
    let _ = std::fs::remove_file(&pv_file);

    // ---- 2. space given back -------------------------------------------------------------
    env.rcx(SPACE_POOL, &["pool", "create", "--data-size", "2G", "--block-size", "64K", "--autoextend-threshold", "off"]);
    let data_img = root.join(SPACE_POOL).join("data.img");
    let space_dm = rcx_dm::pool::pool_dm_name(SPACE_POOL);
    let used = |dm: &Dm| status(dm, &space_dm).data_used_blocks * BLOCK;
    let (mut del_ms, mut del_host, mut del_pool) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..space_reps {
        let v = format!("del{i}");
        let dev = env.device(SPACE_POOL, &["thin", "create", "--size", "1G", "--name", &v]);
        let f = open_direct(&dev);
        let (mut buf, at) = aligned(M as usize);
        for j in 0..500u64 {
            buf[at..at + 8].copy_from_slice(&j.to_le_bytes());
            f.write_all_at(&buf[at..at + M as usize], j * M).unwrap_or_else(|e| panic!("writing {}: {e}", dev.display()));
        }
        f.sync_all().expect("fsync the volume");
        drop(f);
        peak_scratch = peak_scratch.max(scratch_used(&scratch));
        let (h0, p0) = (host_bytes(&data_img), used(&dm));
        del_ms.push(ms(window(epoch, || drop(env.rcx(SPACE_POOL, &["delete", &v, "--force"])))));
        del_host.push(h0.saturating_sub(host_bytes(&data_img)) as f64 / M as f64);
        del_pool.push(p0.saturating_sub(used(&dm)) as f64 / M as f64);
    }

    let mnt = scratch.join("bench-pool-mnt");
    std::fs::create_dir_all(&mnt).expect("creating the mount point");
    let (mut trim_ms, mut trim_host, mut trim_pool, mut trim_fs, mut trim_err) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), None);
    for i in 0..space_reps {
        let v = format!("trim{i}");
        let dev = env.device(SPACE_POOL, &["thin", "create", "--fs", "ext4", "--size", "1G", "--name", &v]);
        nix::mount::mount(Some(&dev), &mnt, Some("ext4"), nix::mount::MsFlags::MS_NOATIME, None::<&str>)
            .unwrap_or_else(|e| panic!("mounting {}: {e}", dev.display()));
        let file = mnt.join("big");
        let mut f = File::create(&file).expect("creating the 300 MiB file");
        let chunk = vec![0x5au8; M as usize];
        for _ in 0..300 {
            f.write_all(&chunk).expect("writing the 300 MiB file");
        }
        f.sync_all().expect("fsync the file");
        drop(f);
        std::fs::remove_file(&file).expect("removing the file");
        // The freed extents reach ext4's bitmaps on disk before FITRIM looks.
        let d = File::open(&mnt).expect("open the mount");
        assert_eq!(unsafe { libc::syncfs(d.as_raw_fd()) }, 0, "syncfs: {}", std::io::Error::last_os_error());
        drop(d); // or the unmount below is EBUSY
        peak_scratch = peak_scratch.max(scratch_used(&scratch));
        let (h0, p0) = (host_bytes(&data_img), used(&dm));
        let mut res = Ok(String::new());
        trim_ms.push(ms(window(epoch, || res = env.run(&env.rcx, SPACE_POOL, &["trim", &v, "--json"]))));
        trim_host.push(h0.saturating_sub(host_bytes(&data_img)) as f64 / M as f64);
        trim_pool.push(p0.saturating_sub(used(&dm)) as f64 / M as f64);
        match res {
            Ok(json) => {
                let r: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("trim --json printed {json:?}: {e}"));
                trim_fs.push(r[0]["trimmed_bytes"].as_u64().unwrap_or(0) as f64 / M as f64);
            }
            Err(e) => {
                trim_fs.push(0.0);
                trim_err = Some(e);
            }
        }
        nix::mount::umount(&mnt).unwrap_or_else(|e| panic!("unmounting {}: {e}", mnt.display()));
        env.rcx(SPACE_POOL, &["delete", &v, "--force"]);
    }
    env.rcx(SPACE_POOL, &["pool", "destroy", "--force"]);

    // ---- report --------------------------------------------------------------------------
    let rate = |mib: &[f64], ms: &[f64]| mib.iter().zip(ms).map(|(b, t)| b / (t / 1e3)).collect::<Vec<_>>();
    let (del_rate, trim_rate) = (rate(&del_host, &del_ms), rate(&trim_host, &trim_ms));
    let speedup = median(&lvm.wall) / median(&rcx.wall);
    let lib_speedup = median(&lvm.wall) / median(&lib.wall);
    let stall_ok = median(&rcx.stall) <= median(&yard.noflush_stall);
    let mem_kb = sh("awk '/MemTotal/ {print $2}' /proc/meminfo").parse::<u64>().unwrap_or(0);
    let tmpfs = nix::sys::statvfs::statvfs(&scratch).map(|s| s.blocks() as u64 * s.fragment_size() as u64).unwrap_or(0);
    let wmib: Vec<f64> = writer.iter().map(|w| w.0).collect();
    let wlat: Vec<f64> = writer.iter().map(|w| w.1).collect();
    let gib = |b: u64| b as f64 / G as f64;

    println!("BEGIN-REPORT");
    println!("<!-- summary:begin -->");
    println!(
        "- `rcx-dm pool extend --data-size +1G` of a live 2G pool with a writer running: **{:.0} ms** median ({} ms); \
         `lvextend -L +1G` of an LVM thin pool of the same geometry: **{:.0} ms** ({} ms): rcx-dm **{speedup:.1}x** faster. \
         In-process (`Pool::extend`, what auto-extend runs): **{:.0} ms** ({} ms), **{lib_speedup:.1}x**. The CLI's \
         process floor (`rcx-dm --version`) is {:.0} ms ({} ms) here.",
        median(&rcx.wall),
        fmt_range(&rcx.wall),
        median(&lvm.wall),
        fmt_range(&lvm.wall),
        median(&lib.wall),
        fmt_range(&lib.wall),
        median(&floor),
        fmt_range(&floor)
    );
    println!(
        "- The writer's longest stall (64 KiB O_DIRECT writes): during rcx-dm's extend {:.1} ms ({}); during one bare \
         suspend+resume of the pool {:.1} ms ({}); during lvextend {:.1} ms ({}); with nothing else running {:.1} ms ({}).",
        median(&rcx.stall),
        fmt_range(&rcx.stall),
        median(&yard.noflush_stall),
        fmt_range(&yard.noflush_stall),
        median(&lvm.stall),
        fmt_range(&lvm.stall),
        median(&rcx.quiet),
        fmt_range(&rcx.quiet)
    );
    println!(
        "- Space given back to the host: `rcx-dm delete` of a volume holding 500 MiB: {:.1} MiB/s ({:.0} of 500 MiB returned); \
         `rcx-dm trim` after removing a 300 MiB file: {:.1} MiB/s ({:.0} of 300 MiB returned).{}",
        median(&del_rate),
        median(&del_host),
        median(&trim_rate),
        median(&trim_host),
        if median(&del_host) < 1.0 || median(&trim_host) < 1.0 {
            " Nothing (or next to nothing) came back in this build: see section 2."
        } else {
            ""
        }
    );
    println!(
        "- Target: rcx-dm extend at least 3x faster than lvextend: CLI {} ({speedup:.1}x); in-process {} ({lib_speedup:.1}x).",
        verdict(speedup >= 3.0),
        verdict(lib_speedup >= 3.0)
    );
    println!(
        "- Target: the writer's stall during extend no longer than during one suspend/resume: {} ({:.1} ms against {:.1} ms, medians).",
        verdict(stall_ok),
        median(&rcx.stall),
        median(&yard.noflush_stall)
    );
    println!("<!-- summary:end -->");
    println!();
    println!("## Setup");
    println!();
    println!(
        "Guest: kernel {}, {} vCPUs, {:.1} GiB memory; scratch tmpfs {:.1} GiB, at most {:.2} GiB used. {lvm_version}.",
        sh("uname -r"),
        sh("nproc"),
        mem_kb as f64 / (1 << 20) as f64,
        gib(tmpfs),
        gib(peak_scratch)
    );
    println!();
    println!(
        "Both pools: sparse files on tmpfs behind loop devices, {} data, {:.0} MiB metadata (rcx-dm's automatic size; \
         LVM: {:.0} MiB after rounding to its extents), 64K blocks, zeroing of new blocks on, error when full, discards \
         passed down. rcx-dm: `pool create --data-size 2G --autoextend-threshold off`, CLI staged on tmpfs. LVM: a VG on a \
         loop device over a {:.0} GiB sparse file, `lvcreate --type thin-pool -L 2g --chunksize 64k -Zy`, \
         `--errorwhenfull y`, LVM's own lvm.conf (no udev, no daemons, no metadata archives, a filter for its loop \
         device, as in the main report).",
        "2G",
        meta_bytes as f64 / M as f64,
        lvm_meta as f64 / M as f64,
        gib(pv_bytes)
    );
    println!();
    println!(
        "Writer: one thread, 64 KiB O_DIRECT writes back to back, sequential through the first GiB of a {VOL_SIZE} thin \
         volume, which is discarded (BLKDISCARD) after every round so that each round's writes provision fresh blocks; \
         {:.0} MiB ({}) per round, median write {:.2} ms ({}). Each round, per system: writer on, 0.3 s, a 1 s quiet \
         window (the writer's own noise floor), the extend, 0.5 s, (rcx-dm only) a bare noflush suspend+resume of the \
         thin-pool device in-process, 0.5 s, a suspend (with flush, as `dmsetup suspend`) + resume, 0.3 s, writer off. \
         {reps} rounds, the order of the two systems alternating.",
        median(&wmib),
        fmt_range(&wmib),
        median(&wlat),
        fmt_range(&wlat)
    );
    println!();
    println!("## 1. Growing a live pool by 1G with a writer running ({reps} rounds)");
    println!();
    println!("| | median ms | min-max ms |");
    println!("|---|---|---|");
    println!("{}", row("`rcx-dm pool extend --data-size +1G`: wall time", &rcx.wall));
    println!("{}", row("`Pool::extend` +1G in-process (what `pool monitor` and serve's auto-extend run): wall time", &lib.wall));
    println!("{}", row("`lvextend -L +1G vg/pool`: wall time", &lvm.wall));
    println!("{}", row("`rcx-dm --version` (the CLI's process floor, writer off)", &floor));
    println!("{}", row("bare suspend (noflush) + resume of the rcx-dm pool: wall time", &yard.noflush_wall));
    println!("{}", row("bare suspend (flush) + resume of the rcx-dm pool: wall time", &yard.flush_wall));
    println!("{}", row("writer's longest write during rcx-dm's extend", &rcx.stall));
    println!("{}", row("writer's longest write during the in-process `Pool::extend`", &lib.stall));
    println!("{}", row("writer's longest write during lvextend", &lvm.stall));
    println!("{}", row("writer's longest write during the bare noflush suspend+resume", &yard.noflush_stall));
    println!("{}", row("writer's longest write during the bare flush suspend+resume", &yard.flush_stall));
    println!("{}", row("writer's longest write in 1 s with nothing else running (rcx-dm volume)", &rcx.quiet));
    println!("{}", row("writer's longest write in 1 s with nothing else running (LVM volume)", &lvm.quiet));
    println!();
    println!(
        "Per round (ms): rcx-dm extend {}; lvextend {}; stall during rcx-dm extend {}; during suspend+resume {}; during lvextend {}.",
        per_round(&rcx.wall),
        per_round(&lvm.wall),
        per_round(&rcx.stall),
        per_round(&yard.noflush_stall),
        per_round(&lvm.stall)
    );
    println!();
    println!(
        "After {reps} rounds the kernel's tables hold {rcx_blocks} (rcx-dm, {rcx_want_blocks} expected: {:.0} GiB) and \
         {lvm_blocks} (LVM, {want_blocks} expected: {:.0} GiB) data blocks{}.",
        gib(rcx_want_blocks * BLOCK),
        gib(want_blocks * BLOCK),
        if rcx_blocks == rcx_want_blocks && lvm_blocks == want_blocks { "" } else { " -- **MISMATCH**" }
    );
    println!();
    println!("## 2. Space given back to the host ({space_reps} rounds each)");
    println!();
    println!(
        "On a fresh rcx-dm pool (2G, 64K blocks): the pool's data.img allocated bytes (st_blocks x 512) right before \
         and right after the command, divided by the command's wall time. \"Pool freed\" is the thin pool's own \
         used-data count from the kernel, before minus after."
    );
    println!();
    println!("| | wall ms | host MiB returned | MiB/s to the host | pool MiB freed |");
    println!("|---|---|---|---|---|");
    let cell = |v: &[f64]| format!("{:.1} ({})", median(v), fmt_range(v));
    println!(
        "| `rcx-dm delete VOL --force`, VOL holding 500 MiB | {} | {} | {} | {} |",
        cell(&del_ms),
        cell(&del_host),
        cell(&del_rate),
        cell(&del_pool)
    );
    println!(
        "| `rcx-dm trim VOL` after `rm` of a 300 MiB file in mounted ext4 | {} | {} | {} | {} |",
        cell(&trim_ms),
        cell(&trim_host),
        cell(&trim_rate),
        cell(&trim_pool)
    );
    println!();
    println!("Filesystem's own trimmed MiB per trim (FITRIM's range): {}.", per_round(&trim_fs));
    println!();
    if median(&del_host) < 1.0 {
        println!(
            "The delete returned nothing to the host although the pool freed its blocks (\"pool MiB freed\"): \
             the discard before the kernel's `delete` message did not reach data.img (is `discard_on_delete` off?)."
        );
        println!();
    }
    if let Some(e) = &trim_err {
        println!("`rcx-dm trim` failed in this build, so it is counted as 0 bytes returned: `{e}`.");
        println!();
    } else if median(&trim_host) < 1.0 {
        println!("`rcx-dm trim` succeeded but the host got nothing back.");
        println!();
    }
    println!("## Targets");
    println!();
    println!("| target | measured | |");
    println!("|---|---|---|");
    println!("| rcx-dm `pool extend` at least 3x faster than `lvextend` (CLI) | {speedup:.2}x | {} |", verdict(speedup >= 3.0));
    println!("| the same, in-process `Pool::extend` (auto-extend's path) | {lib_speedup:.2}x | {} |", verdict(lib_speedup >= 3.0));
    println!(
        "| writer's stall during rcx-dm's extend no longer than during one suspend/resume | {:.1} ms against {:.1} ms (medians) | {} |",
        median(&rcx.stall),
        median(&yard.noflush_stall),
        verdict(stall_ok)
    );
    println!("END-REPORT");
}
