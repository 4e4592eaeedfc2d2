//! A measurement, not a test (ignored unless asked for; `tools/bench` runs it in its VM run with
//! RCX_DM_BIN set to the release binary, workload 8 of bench/REPORT.md): the time kubelet waits
//! for a pod, from RunPodSandbox to a running container through containerd's CRI, with rcx-dm
//! against containerd's own devmapper (on a thin-pool of the same geometry made with dmsetup, as
//! its documentation says) and overlayfs. Prints `CSV,podstart,SNAPSHOTTER,0,MS` rows.
//! By hand: `RCX_DM_BIN=$PWD/target/release/rcx-dm tools/test --vm-only -- cri_pod_start --ignored --nocapture`;
//! RCX_DM_BENCH_PODS pods per snapshotter (default 5), one at a time, after one unmeasured pod;
//! RCX_DM_BENCH_ONLY: runs if it names 8.

use std::time::Instant;

use crate::common::*;
use crate::containerd::CriSnapshotter;
use crate::cri::node;

/// A benchmark knob from the environment (tools/bench passes RCX_DM_* into the VM).
pub fn bench_knob(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Whether RCX_DM_BENCH_ONLY (a comma list of workload numbers), if set, names `workload`.
pub fn bench_wants(workload: u32) -> bool {
    std::env::var("RCX_DM_BENCH_ONLY").map_or(true, |o| o.split(',').any(|w| w.trim().parse() == Ok(workload)))
}

/// A thin-pool for containerd's devmapper: sparse files on the scratch tmpfs behind loops,
/// 8G data, 64M metadata, 64K blocks, zeroing on (rcx-dm's pool in these tests). Removed on
/// drop with the thin devices devmapper left in it.
pub struct DmThinPool {
    pub name: String,
    loops: Vec<String>,
    _dir: tempfile::TempDir,
}

impl DmThinPool {
    pub fn new(name: &str) -> DmThinPool {
        let dir = tempfile::Builder::new().prefix("cri-dmpool-").tempdir_in(scratch()).unwrap();
        let data_bytes: u64 = 8 << 30;
        let block_sectors = (64 << 10) / 512;
        let lw = data_bytes / (64 << 10) / 100;
        let data = sh(&format!("truncate -s {data_bytes} {d}/data && losetup -f --show {d}/data", d = dir.path().display())).trim().to_string();
        let meta = sh(&format!("truncate -s 64M {d}/meta && losetup -f --show {d}/meta", d = dir.path().display())).trim().to_string();
        sh(&format!("dd if=/dev/zero of={meta} bs=4096 count=1 conv=notrunc status=none"));
        sh(&format!(
            "DM_DISABLE_UDEV=1 dmsetup create {name} --table '0 {} thin-pool {meta} {data} {block_sectors} {lw} 1 error_if_no_space'",
            data_bytes / 512
        ));
        DmThinPool { name: name.to_string(), loops: vec![data, meta], _dir: dir }
    }
}

impl Drop for DmThinPool {
    fn drop(&mut self) {
        let dm = dm();
        for n in dm.list().unwrap_or_default() {
            if n.starts_with(&format!("{}-", self.name)) {
                let _ = dm.remove(&n);
                rcx_dm::dm::node::remove(&n);
            }
        }
        let _ = dm.remove(&self.name);
        rcx_dm::dm::node::remove(&self.name);
        for l in &self.loops {
            let _ = std::process::Command::new("losetup").args(["-d", l]).status();
        }
    }
}

#[test]
#[ignore = "a measurement: tools/test --vm-only -- cri_pod_start --ignored --nocapture"]
fn cri_pod_start_time_rcx_dm_devmapper_overlayfs() {
    if !bench_wants(8) {
        return;
    }
    let rounds = bench_knob("RCX_DM_BENCH_PODS", 5);
    let mut lines = Vec::new();
    for (i, kind) in ["rcx-dm", "devmapper", "overlayfs"].into_iter().enumerate() {
        println!("META,podstart-label,{kind},containerd CRI with snapshotter = \"{kind}\"");
        let dmpool = (kind == "devmapper").then(|| DmThinPool::new(&format!("crib{}-pool", std::process::id())));
        let snap = match kind {
            "rcx-dm" => CriSnapshotter::RcxDm,
            "devmapper" => CriSnapshotter::Devmapper { pool_name: dmpool.as_ref().unwrap().name.clone(), base_bytes: 256 << 20 },
            _ => CriSnapshotter::Overlayfs,
        };
        let n = node(&format!("crib{i}"), snap);
        let mut cri = n.cri();
        cri.pull_image(&n.app, None).unwrap_or_else(|e| panic!("PullImage with {kind}: {e}\n{}", n.c.logs()));
        cri.pull_image(&n.sandbox, None).unwrap();
        let mut ms = Vec::new();
        for r in 0..=rounds {
            let t = Instant::now();
            let (pod, id, _) = n.start_pod(&mut cri, &format!("b{r}"));
            let took = t.elapsed().as_secs_f64() * 1000.0;
            n.end_pod(&mut cri, &pod, &id);
            // The first pod pays one-time costs (devmapper's base mkfs, runc's first exec).
            if r > 0 {
                println!("CSV,podstart,{kind},0,{took:.3}");
                ms.push(took);
            }
        }
        ms.sort_by(f64::total_cmp);
        let line = format!(
            "CRI RunPodSandbox to a running container, {kind}: median {:.0} ms, min {:.0}, max {:.0} ({rounds} pods, one at a time)",
            ms[ms.len() / 2],
            ms[0],
            ms[ms.len() - 1]
        );
        println!("{line}");
        lines.push(line);
        drop(cri);
        drop(n);
        drop(dmpool);
    }
    println!("{}", lines.join("\n"));
}
