//! containerd snapshotter benchmark (not a test): run as root where device-mapper exists,
//! normally through `tools/bench-serve`, which boots the VM and writes bench/serve.md.
//!
//! One containerd (Debian's 1.6) with two snapshotters on identical pools (sparse 8G data,
//! 64M metadata, 64K blocks, zeroing on, error_if_no_space): `rcx-dm` (the proxy plugin, a
//! `rcx-dm serve`) and containerd's built-in `devmapper` on a thin-pool made here with dmsetup.
//! Each gets one committed parent; then, interleaved per round, `ctr snapshot prepare KEY parent`
//! and `ctr snapshot rm KEY` are timed (one ctr process per call, as the issue asks), and
//! finally 100 prepares issued 8 at a time against each. Every executable (containerd, ctr, the
//! shim, dmsetup, mkfs, rcx-dm) is staged on tmpfs with its libraries.
//! Prints a markdown report between BEGIN-REPORT and END-REPORT.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{fmt_range, median, which, Stage};

const BIN: &str = env!("CARGO_BIN_EXE_rcx-dm");
const POOL: &str = "benchserve";
const DM_POOL: &str = "benchdm-pool";
const DATA: u64 = 8 << 30;
const META: u64 = 64 << 20;
const NS: &str = "bench";

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(out.status.success(), "`{cmd}`: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct Env {
    dir: PathBuf,
    stage: Stage,
    sock: PathBuf,
    path: String,
}

impl Env {
    fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.stage.bin_dir.join("ctr"));
        c.arg("--address").arg(&self.sock).args(["-n", NS]).args(args);
        c.env("PATH", &self.path).env("LD_LIBRARY_PATH", &self.stage.lib_dir);
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        c
    }

    /// Run one ctr call; milliseconds.
    fn timed(&self, args: &[&str]) -> f64 {
        let t = Instant::now();
        let out = self.ctr(args).output().unwrap();
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        assert!(out.status.success(), "ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        ms
    }

    fn snap(&self, sn: &str, args: &[&str]) -> f64 {
        let mut a = vec!["snapshot", "--snapshotter", sn];
        a.extend_from_slice(args);
        self.timed(&a)
    }

    /// `n` prepares of `prefix-i` from `parent`, `width` ctr processes at a time; wall ms.
    fn parallel_prepares(&self, sn: &str, prefix: &str, n: usize, width: usize) -> f64 {
        let t = Instant::now();
        let mut next = 0;
        let mut running: Vec<Child> = Vec::new();
        while next < n || !running.is_empty() {
            while running.len() < width && next < n {
                let key = format!("{prefix}-{next}");
                running.push(self.ctr(&["snapshot", "--snapshotter", sn, "prepare", &key, "parent"]).spawn().unwrap());
                next += 1;
            }
            let mut i = 0;
            while i < running.len() {
                if let Some(st) = running[i].try_wait().unwrap() {
                    assert!(st.success(), "parallel prepare failed on {sn}");
                    running.swap_remove(i);
                } else {
                    i += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        t.elapsed().as_secs_f64() * 1000.0
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(120);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() {
    let reps: usize = std::env::var("RCX_DM_BENCH_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(100);
    let scratch = PathBuf::from(std::env::var("RCX_DM_SCRATCH").unwrap_or_else(|_| "/tmp".into()));
    let dir = scratch.join("bench-serve");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let stage = Stage::new(&dir.join("stage"));
    let rcx = stage.copy(Path::new(BIN), "rcx-dm");
    for (p, n) in [
        ("containerd", "containerd"),
        ("ctr", "ctr"),
        ("containerd-shim-runc-v2", "containerd-shim-runc-v2"),
        ("dmsetup", "dmsetup"),
        ("mkfs.ext4", "mkfs.ext4"),
        ("blkid", "blkid"),
    ] {
        stage.copy(&which(p), n);
    }
    let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", stage.bin_dir.display());
    let root = dir.join("rcx-root");

    // rcx-dm's pool and serve.
    let rcx_cmd = |args: &[&str]| {
        let out = Command::new(&rcx).args(args).env("RCX_DM_ROOT", &root).env("RCX_DM_POOL", POOL).output().unwrap();
        assert!(out.status.success(), "rcx-dm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    rcx_cmd(&["pool", "create", "--data-size", &DATA.to_string(), "--meta-size", &META.to_string(), "--block-size", "64K"]);
    let serve_sock = dir.join("rcx.sock");
    let mut serve = Command::new(&rcx)
        .args(["serve", "--socket", serve_sock.to_str().unwrap(), "--size", "1G"])
        .env("RCX_DM_ROOT", &root)
        .env("RCX_DM_POOL", POOL)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("serve.log")).unwrap())
        .spawn()
        .unwrap();
    wait_for("rcx-dm serve", || std::os::unix::net::UnixStream::connect(&serve_sock).is_ok());

    // The built-in devmapper snapshotter's pool, made the way its documentation says: dmsetup.
    for f in ["dm-data.img", "dm-meta.img"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    sh(&format!("truncate -s {DATA} {0}/dm-data.img && truncate -s {META} {0}/dm-meta.img", dir.display()));
    let data_dev = sh(&format!("losetup -f --show {}/dm-data.img", dir.display()));
    let meta_dev = sh(&format!("losetup -f --show {}/dm-meta.img", dir.display()));
    let blocks = DATA / (64 << 10);
    let low = (blocks / 100).max(1);
    // No udev in the VM: libdevmapper makes the /dev/mapper nodes itself (for containerd's
    // dmsetup calls too, through its environment).
    std::env::set_var("DM_DISABLE_UDEV", "1");
    sh(&format!("dmsetup create {DM_POOL} --table '0 {} thin-pool {meta_dev} {data_dev} 128 {low} 1 error_if_no_space'", DATA / 512));

    let sock = dir.join("containerd.sock");
    std::fs::write(
        dir.join("config.toml"),
        format!(
            r#"version = 2
root = "{d}/ctrd-root"
state = "{d}/ctrd-state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{s}"
[ttrpc]
  address = "{s}.ttrpc"
[plugins."io.containerd.snapshotter.v1.devmapper"]
  pool_name = "{DM_POOL}"
  root_path = "{d}/devmapper"
  base_image_size = "1GB"
  discard_blocks = false
[proxy_plugins.rcx-dm]
  type = "snapshot"
  address = "{serve}"
"#,
            d = dir.display(),
            s = sock.display(),
            serve = serve_sock.display()
        ),
    )
    .unwrap();
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut containerd = Command::new(stage.bin_dir.join("containerd"))
        .arg("--config")
        .arg(dir.join("config.toml"))
        .env("PATH", &path)
        .env("LD_LIBRARY_PATH", &stage.lib_dir)
        .env("TMPDIR", &tmp)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("containerd.log")).unwrap())
        .spawn()
        .unwrap();
    let env = Env { dir: dir.clone(), stage, sock, path };
    wait_for("containerd", || env.ctr(&["version"]).status().map(|s| s.success()).unwrap_or(false));

    let plugins = {
        let mut c = env.ctr(&["plugins", "ls"]);
        c.stdout(Stdio::piped());
        String::from_utf8_lossy(&c.output().unwrap().stdout).into_owned()
    };
    if !plugins.lines().any(|l| l.contains("devmapper") && l.trim_end().ends_with("ok")) {
        let log = std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default();
        let dm: Vec<&str> = log.lines().filter(|l| l.contains("devmapper") || l.contains("level=error") || l.contains("level=warn")).collect();
        panic!("containerd's devmapper snapshotter did not load:\n{plugins}\n{}\n{}", dm.join("\n"), sh("ls -l /dev/mapper; dmsetup ls"));
    }
    let sns = ["rcx-dm", "devmapper"];
    for sn in sns {
        env.snap(sn, &["prepare", "first", ""]);
        env.snap(sn, &["commit", "parent", "first"]);
    }
    // Warm-up (page cache of the staged binaries, first connections).
    for sn in sns {
        env.snap(sn, &["prepare", "warm", "parent"]);
        env.snap(sn, &["rm", "warm"]);
    }
    let mut floor = Vec::new();
    let mut prep = [Vec::new(), Vec::new()];
    let mut rm = [Vec::new(), Vec::new()];
    for i in 0..reps {
        floor.push(env.timed(&["version"]));
        for (j, sn) in sns.iter().enumerate() {
            let key = format!("k{i}");
            prep[j].push(env.snap(sn, &["prepare", &key, "parent"]));
            rm[j].push(env.snap(sn, &["rm", &key]));
        }
    }
    // 100 prepares (RCX_DM_BENCH_REPS) issued 8 at a time, then the same one at a time.
    let mut par = [0.0; 2];
    let mut ser = [0.0; 2];
    for (j, sn) in sns.iter().enumerate() {
        par[j] = env.parallel_prepares(sn, "p", reps, 8);
        ser[j] = env.parallel_prepares(sn, "s", reps, 1);
        for prefix in ["p", "s"] {
            let keys: Vec<String> = (0..reps).map(|i| format!("{prefix}-{i}")).collect();
            for chunk in keys.chunks(25) {
                let mut a = vec!["snapshot", "--snapshotter", sn, "rm"];
                a.extend(chunk.iter().map(String::as_str));
                env.timed(&a);
            }
        }
    }

    let total = |j: usize| -> Vec<f64> { prep[j].iter().zip(&rm[j]).map(|(a, b)| a + b).collect() };
    let speed = median(&total(1)) / median(&total(0));
    println!("BEGIN-REPORT");
    println!("{reps} rounds; one round = `ctr snapshot prepare kN parent` then `ctr snapshot rm kN` on each");
    println!("snapshotter in turn (one ctr process per call, timed from spawn to exit).\n");
    println!("| per call (ms) | rcx-dm median | min-max | devmapper median | min-max | devmapper / rcx-dm |");
    println!("|---|---|---|---|---|---|");
    for (name, v) in [("prepare", &prep), ("remove", &rm)] {
        println!(
            "| {name} | {:.1} | {} | {:.1} | {} | {:.2}x |",
            median(&v[0]),
            fmt_range(&v[0]),
            median(&v[1]),
            fmt_range(&v[1]),
            median(&v[1]) / median(&v[0])
        );
    }
    println!(
        "| prepare + remove | {:.1} | {} | {:.1} | {} | {speed:.2}x |",
        median(&total(0)),
        fmt_range(&total(0)),
        median(&total(1)),
        fmt_range(&total(1))
    );
    println!("| `ctr version` (process floor) | {:.1} | {} | | | |", median(&floor), fmt_range(&floor));
    let f = median(&floor);
    println!(
        "| prepare minus the floor (derived) | {:.1} | | {:.1} | | {:.2}x |",
        median(&prep[0]) - f,
        median(&prep[1]) - f,
        (median(&prep[1]) - f) / (median(&prep[0]) - f).max(1.0)
    );
    println!();
    println!("`ctr snapshot rm` removes the key from containerd's metadata and returns; containerd's");
    println!("garbage collector calls the snapshotter's Remove afterwards, for both snapshotters alike,");
    println!("so the remove row is containerd's own cost plus the ctr process.");
    println!();
    println!("| {reps} prepares from one parent | rcx-dm wall s | per prepare ms | devmapper wall s | per prepare ms |");
    println!("|---|---|---|---|---|");
    for (name, v) in [("one at a time", &ser), ("8 at a time", &par)] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
            v[0] / 1000.0,
            v[0] / reps as f64,
            v[1] / 1000.0,
            v[1] / reps as f64
        );
    }
    println!();
    println!(
        "Target 3x the built-in's throughput per call: **{}** ({speed:.2}x on prepare + remove). \
Parallel faster than serial: rcx-dm **{}** ({:.2}x), devmapper {:.2}x.",
        if speed >= 3.0 { "met" } else { "missed" },
        if par[0] < ser[0] { "met" } else { "missed" },
        ser[0] / par[0],
        ser[1] / par[1]
    );
    println!("END-REPORT");

    // Teardown.
    let _ = Command::new("kill").arg(containerd.id().to_string()).status();
    let _ = containerd.wait();
    let _ = serve.kill();
    let _ = serve.wait();
    let _ = env.dir;
    let _ = Command::new("sh")
        .args(["-c", &format!("dmsetup ls | awk '/^{DM_POOL}-snap|^{DM_POOL}/ {{print $1}}' | sort -r | xargs -r -n1 dmsetup remove")])
        .status();
    let _ = Command::new("dmsetup").args(["remove", DM_POOL]).status();
    let _ = Command::new("losetup").args(["-d", &data_dev, &meta_dev]).status();
    let _ = Command::new(&rcx).args(["pool", "destroy", "--force"]).env("RCX_DM_ROOT", &root).env("RCX_DM_POOL", POOL).status();
}
