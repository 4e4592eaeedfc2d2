//! A measurement, not a test (ignored unless asked for; `tools/bench` runs it in its VM run with
//! RCX_DM_BIN set to the release binary, workload 7 of bench/REPORT.md): pulling a multi-layer
//! image from a local registry (Debian's docker-registry) with `rcx-dm image pull` against
//! `ctr image pull` into containerd's snapshotters: rcx-dm (`rcx-dm serve`), devmapper (on a
//! thin-pool of the same geometry made with dmsetup) and overlayfs. Every pull starts from
//! nothing: the image, its layers and containerd's content are removed between pulls and the
//! pools checked empty. Rounds interleave the systems. Prints `CSV,pull,SYSTEM,MB,MS` rows.
//!
//! Knobs: RCX_DM_BENCH_PULL_MB (image size, 200), RCX_DM_BENCH_PULL_LAYERS (4),
//! RCX_DM_BENCH_PULL_REPS (pulls per system, 3), RCX_DM_BENCH_ONLY (runs if it names 7),
//! RCX_DM_BENCH_PULL_TRACE (print rcx-dm's info log of each pull), RCX_DM_BENCH_PULL_SYSTEMS
//! (a comma list of the systems' keys to run, e.g. rcx-pull).
//! By hand: `RCX_DM_BIN=$PWD/target/release/rcx-dm tools/test --vm-only -- pull_bench --ignored --nocapture`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::common::*;
use crate::containerd::{CriNode, CriSnapshotter, Ctrd};
use crate::cri_bench::{bench_knob, bench_wants, DmThinPool};
use crate::oci_build::write_layout_from_tars;
use crate::registry::Registry;

/// Volume size of every system's layers (rcx-dm's `--size`, serve's, devmapper's base).
const SIZE: &str = "1G";

/// Layer `i` of `n`, `mb` MiB of files of 1 MiB: half random bytes, half text (`seq`), so gzip
/// has real work on one half and none on the other; layer 0 also holds busybox.
fn make_layer(dir: &Path, i: usize, mb: usize) -> PathBuf {
    let root = dir.join(format!("layer{i}"));
    let data = root.join(format!("data{i}"));
    std::fs::create_dir_all(&data).unwrap();
    if i == 0 {
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
        for a in ["sh", "true", "cat"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
        }
    }
    let half = mb / 2;
    sh(&format!(
        "cd {d} && head -c {r}M /dev/urandom | split -a 4 -b 1M - r. && seq {start} 999999999 | head -c {t}M | split -a 4 -b 1M - t.",
        d = data.display(),
        r = half,
        t = mb - half,
        start = i * 100_000_000,
    ));
    let tar = dir.join(format!("layer{i}.tar"));
    sh(&format!("tar --numeric-owner --owner=0 --group=0 -C {} -cf {} .", root.display(), tar.display()));
    std::fs::remove_dir_all(&root).unwrap();
    tar
}

/// One way of pulling the image, with its clean-up back to an empty store.
#[derive(Clone, Copy)]
enum Puller {
    RcxDm,
    Ctr(&'static str),
}

impl Puller {
    fn key(self) -> &'static str {
        match self {
            Puller::RcxDm => "rcx-pull",
            Puller::Ctr("rcx-dm") => "ctr-rcx-serve",
            Puller::Ctr("devmapper") => "ctr-devmapper",
            Puller::Ctr(_) => "ctr-overlayfs",
        }
    }
    fn label(self) -> String {
        match self {
            Puller::RcxDm => "`rcx-dm image pull`".into(),
            Puller::Ctr(sn) => format!("`ctr image pull --snapshotter {sn}`"),
        }
    }
}

fn content_count(c: &Ctrd) -> usize {
    c.ok(&["content", "ls", "-q"]).lines().filter(|l| !l.trim().is_empty()).count()
}

fn snapshot_count(c: &Ctrd, sn: &str) -> usize {
    c.ok(&["snapshot", "--snapshotter", sn, "ls"]).lines().skip(1).filter(|l| !l.trim().is_empty()).count()
}

#[test]
#[ignore = "a measurement: RCX_DM_BIN=target/release/rcx-dm tools/test --vm-only -- pull_bench --ignored --nocapture"]
fn pull_bench_rcx_dm_against_ctr_pull() {
    if !bench_wants(7) {
        return;
    }
    let mb = bench_knob("RCX_DM_BENCH_PULL_MB", 200);
    let n_layers = bench_knob("RCX_DM_BENCH_PULL_LAYERS", 4);
    let reps = bench_knob("RCX_DM_BENCH_PULL_REPS", 3);

    let work = tempfile::Builder::new().prefix("pullb-").tempdir_in(scratch()).unwrap();
    let t = Instant::now();
    let tars: Vec<PathBuf> = (0..n_layers).map(|i| make_layer(work.path(), i, mb / n_layers)).collect();
    let layout = work.path().join("layout");
    write_layout_from_tars(&layout, &tars, serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]}));
    let gz_bytes: u64 = sh(&format!("du -b -c {}/blobs/sha256/* | tail -n1", layout.display())).split_whitespace().next().unwrap().parse().unwrap();
    for t in &tars {
        std::fs::remove_file(t).unwrap();
    }
    let reg = Registry::start(&work.path().join("registry"), false);
    reg.push_layout(&layout, None, "big:1");
    let reference = reg.reference("big:1");
    eprintln!("pull bench: image of {mb} MiB in {n_layers} layers ({gz_bytes} bytes compressed) pushed in {:.0} s", t.elapsed().as_secs_f64());
    println!("META,pull_mb,{mb}");
    println!("META,pull_layers,{n_layers}");
    println!("META,pull_blob_bytes,{gz_bytes}");

    let dmpool = DmThinPool::new(&format!("pullb{}-pool", std::process::id()));
    let node = CriNode {
        sandbox_image: reference.clone(),
        registry: reg.addr.clone(),
        snapshotter: CriSnapshotter::Devmapper { pool_name: dmpool.name.clone(), base_bytes: 1 << 30 },
    };
    let c = Ctrd::with_cri_sized("pullb", &node, SIZE);
    let pullers: Vec<Puller> = [Puller::RcxDm, Puller::Ctr("rcx-dm"), Puller::Ctr("devmapper"), Puller::Ctr("overlayfs")]
        .into_iter()
        .filter(|p| std::env::var("RCX_DM_BENCH_PULL_SYSTEMS").map_or(true, |v| v.split(',').any(|k| k == p.key())))
        .collect();
    for &p in &pullers {
        println!("META,pull-label,{},{}", p.key(), p.label());
    }
    // rcx-dm keeps the empty formatted base its first layer volumes are snapshots of (made by
    // the first pull, as devmapper makes its base device when containerd starts): not counted.
    let volumes = |s: &Scenario| {
        let list = volume_list(s);
        list.as_array().unwrap().iter().filter(|v| !v["name"].as_str().unwrap_or("").starts_with("base-")).count()
    };
    let base_volumes = volumes(&c.s);
    for round in 0..reps {
        for &p in &pullers {
            assert_eq!(volumes(&c.s), base_volumes, "rcx-dm's pool is not back to empty before a pull: {}", volume_list(&c.s));
            assert_eq!(content_count(&c), 0, "containerd's content store is not empty before a pull");
            let t = Instant::now();
            match p {
                Puller::RcxDm => {
                    // RCX_DM_BENCH_PULL_TRACE=1: rcx-dm's own log of where the time goes.
                    let args = ["image", "pull", &reference, "--name", "big", "--size", SIZE];
                    if std::env::var_os("RCX_DM_BENCH_PULL_TRACE").is_some() {
                        let o = c.s.cli_env(&args, &[("RUST_LOG", "rcx_dm=info")]);
                        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                        eprintln!("{}", String::from_utf8_lossy(&o.stderr));
                    } else {
                        c.s.ok(&args);
                    }
                }
                Puller::Ctr(sn) => {
                    c.ok(&["image", "pull", "--plain-http", "--snapshotter", sn, &reference]);
                }
            }
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            println!("CSV,pull,{},{mb},{ms:.3}", p.key());
            eprintln!("pull bench: round {round}: {} {ms:.0} ms", p.key());
            // What was made, then removed again (untimed).
            match p {
                Puller::RcxDm => {
                    let img = c.s.json(&["image", "list", "--json"]);
                    let layers = img[0]["layers"].as_array().map(|l| l.len()).unwrap_or(0);
                    assert_eq!(layers, n_layers, "rcx-dm's image record: {img}");
                    c.s.ok(&["image", "rm", "big"]);
                }
                Puller::Ctr(sn) => {
                    assert_eq!(snapshot_count(&c, sn), n_layers, "{sn}: one committed snapshot per layer");
                    c.ok(&["image", "rm", "--sync", &reference]);
                    wait_for("containerd's collector to remove the image's content and snapshots", 300, || {
                        (content_count(&c) == 0 && snapshot_count(&c, sn) == 0).then_some(()).or_else(|| {
                            c.collect_now();
                            None
                        })
                    });
                }
            }
        }
    }
    drop(c);
    drop(dmpool);
}
