//! Root filesystem benchmark (not a test): run as root where device-mapper exists, normally
//! through `tools/bench-rootfs`, which boots the VM and writes bench/rootfs.md.
//!
//! 1. Populate throughput: `rcx-dm populate VOL --from layer.tar` (end to end: scratch
//!    snapshot, private mount, extraction, unmount, swap) against GNU `tar -xpf` of the same
//!    archive into the same kind of fresh volume (an empty ext4 snapshot of the same base,
//!    mounted the same way), timed through its unmount so both include writing back.
//!    Interleaved rounds, medians with min-max.
//! 2. An empty formatted 10G volume: `rcx-dm thin create --fs ext4` (a snapshot of the kept
//!    base) against `rcx-dm thin create` + mkfs.ext4 with the same options every time.
//!
//! Every executable is staged on tmpfs (the VM's root is 9p without page cache). Prints a
//! markdown report between BEGIN-REPORT and END-REPORT.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

mod common;
use common::{fmt_range, median, which, Stage};

const BIN: &str = env!("CARGO_BIN_EXE_rcx-dm");
const POOL: &str = "benchfs";

struct Env {
    rcx: PathBuf,
    tar: PathBuf,
    mkfs: PathBuf,
    lib: PathBuf,
    root: PathBuf,
}

impl Env {
    fn rcx(&self, args: &[&str]) -> Output {
        let out = Command::new(&self.rcx)
            .env("LD_LIBRARY_PATH", &self.lib)
            .env("RCX_DM_ROOT", &self.root)
            .env("RCX_DM_POOL", POOL).env("RCX_DM_OVERCOMMIT", "1")
            .args(args)
            .output()
            .expect("spawn rcx-dm");
        assert!(out.status.success(), "rcx-dm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    fn device(&self, args: &[&str]) -> PathBuf {
        let out = self.rcx(args);
        PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().expect("device line").trim())
    }
}


fn timed(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn main() {
    let reps: usize = std::env::var("RCX_DM_BENCH_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    rcx_dm::dm::Dm::open().expect("device-mapper is required; run through tools/bench-rootfs");
    let scratch = std::env::var_os("RCX_DM_SCRATCH").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let root = scratch.join("bench-fs-root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let s = Stage::new(&scratch.join("bench-fs-bin"));
    let env = Env {
        rcx: s.copy(Path::new(BIN), "rcx-dm"),
        tar: s.copy(&which("tar"), "tar"),
        mkfs: s.copy(&which("mke2fs"), "mke2fs"),
        lib: s.lib_dir.clone(),
        root,
    };
    let tar_path = scratch.join("bench-fs-layer.tar");
    let (data, _) = common::rootfs_tar(&tar_path);
    let tar_len = std::fs::metadata(&tar_path).unwrap().len();
    let tarp = tar_path.to_str().unwrap();
    env.rcx(&["pool", "create", "--data-size", "20G"]);
    let mnt = scratch.join("bench-fs-mnt");
    std::fs::create_dir_all(&mnt).unwrap();

    // The base exists before any timed round (its one mkfs is reported separately).
    let first = timed(|| drop(env.rcx(&["thin", "create", "--fs", "ext4", "--size", "1G", "--name", "warm"])));
    env.rcx(&["delete", "warm", "--force"]);
    let (mut ours, mut gnu) = (Vec::new(), Vec::new());
    for i in 0..reps {
        let v = format!("p{i}");
        env.rcx(&["thin", "create", "--fs", "ext4", "--size", "1G", "--name", &v]);
        env.rcx(&["deactivate", &v]);
        ours.push(timed(|| drop(env.rcx(&["populate", &v, "--from", tarp]))));
        env.rcx(&["delete", &v, "--force"]);

        let t = format!("t{i}");
        let dev = env.device(&["thin", "create", "--fs", "ext4", "--size", "1G", "--name", &t]);
        gnu.push(timed(|| {
            nix::mount::mount(Some(&dev), &mnt, Some("ext4"), nix::mount::MsFlags::MS_NOATIME, Some("noinit_itable")).unwrap();
            let out = Command::new(&env.tar)
                .env("LD_LIBRARY_PATH", &env.lib)
                .args(["-xpf", tarp, "-C"])
                .arg(&mnt)
                .output()
                .unwrap();
            assert!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
            nix::mount::umount(&mnt).unwrap();
        }));
        env.rcx(&["delete", &t, "--force"]);
    }

    let (mut snap10, mut mkfs10) = (Vec::new(), Vec::new());
    let base10 = timed(|| drop(env.rcx(&["thin", "create", "--fs", "ext4", "--size", "10G", "--name", "e-warm"])));
    for i in 0..reps {
        let a = format!("e{i}");
        snap10.push(timed(|| drop(env.rcx(&["thin", "create", "--fs", "ext4", "--size", "10G", "--name", &a]))));
        let b = format!("m{i}");
        mkfs10.push(timed(|| {
            let dev = env.device(&["thin", "create", "--size", "10G", "--name", &b]);
            let mut c = rcx_dm::rootfs::fs::mkfs_command(rcx_dm::rootfs::fs::Fs::Ext4, &dev, 65536);
            let args: Vec<_> = c.get_args().map(|a| a.to_owned()).collect();
            c = Command::new(&env.mkfs);
            c.env("LD_LIBRARY_PATH", &env.lib).args(["-t", "ext4"]).args(args);
            let out = c.output().unwrap();
            assert!(out.status.success(), "mkfs: {}", String::from_utf8_lossy(&out.stderr));
        }));
        env.rcx(&["delete", &a, "--force"]);
        env.rcx(&["delete", &b, "--force"]);
    }

    let mb = |secs: &[f64]| secs.iter().map(|s| tar_len as f64 / 1e6 / s).collect::<Vec<_>>();
    let ms = |v: &[f64]| v.iter().map(|s| s * 1e3).collect::<Vec<_>>();
    let (o, g) = (mb(&ours), mb(&gnu));
    println!("BEGIN-REPORT");
    println!("## Populate throughput ({reps} interleaved rounds)");
    println!();
    println!(
        "Archive: {:.1} MB tar, 2000 files in 40 directories, 80 of them 0.5-1.5 MB ({:.1} MB of file data), symlinks; \
         volumes: 1G ext4 snapshots of one base, pool block 64K.",
        tar_len as f64 / 1e6,
        data as f64 / 1e6
    );
    println!();
    println!("| | median MB/s | min-max MB/s | median s |");
    println!("|---|---|---|---|");
    println!("| `rcx-dm populate VOL --from layer.tar` (end to end) | {:.1} | {} | {:.2} |", median(&o), fmt_range(&o), median(&ours));
    println!("| GNU `tar -xpf` into a mounted fresh volume + umount | {:.1} | {} | {:.2} |", median(&g), fmt_range(&g), median(&gnu));
    let ratio = median(&o) / median(&g);
    let secs = |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ");
    println!();
    println!("Per round (s): rcx-dm {}; GNU tar {}.", secs(&ours), secs(&gnu));
    println!();
    println!("Ratio rcx-dm / GNU tar: **{ratio:.2}x** (target at least 0.9x: {}).", if ratio >= 0.9 { "met" } else { "MISSED" });
    println!();
    println!("## An empty formatted 10G volume ({reps} rounds)");
    println!();
    println!("| | median ms | min-max ms |");
    println!("|---|---|---|");
    let (a, b) = (ms(&snap10), ms(&mkfs10));
    println!("| `rcx-dm thin create --fs ext4 --size 10G` (snapshot of the base) | {:.0} | {} |", median(&a), fmt_range(&a));
    println!("| `rcx-dm thin create --size 10G` + mkfs.ext4 (same options) | {:.0} | {} |", median(&b), fmt_range(&b));
    println!();
    println!(
        "From the base: **{:.1}x** faster. Making the base itself (once per filesystem and size): \
         {:.0} ms for 10G, {:.0} ms for 1G.",
        median(&b) / median(&a),
        base10 * 1e3,
        first * 1e3
    );
    println!("END-REPORT");
}
