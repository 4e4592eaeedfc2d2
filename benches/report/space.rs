//! Workload 5 (N containers from one image: pool space against the image) and workload 6
//! (`run --rm IMAGE /bin/true` end to end).
//!
//! Space: each system puts the image into its pool its own way (rcx-dm `image import`,
//! containerd's `ctr image import` unpacking into its snapshotter, the hand-made systems
//! mkfs.ext4 + GNU tar into a thin volume), then makes N writable snapshots of it, then each
//! container writes 1 MiB. Rows give the pool's data and metadata growth at each step.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use rcx_dm::VolRef;

use crate::containerd::{CtrSystem, Ctrd};
use crate::image::Image;
use crate::systems::{Dmsetup, Lvm, RcxCli, Space, System, VG};
use crate::{ms_since, row, sh, Tools};

/// What one container writes.
const WRITE: usize = 1 << 20;

fn write_mib(dev: &Path) {
    let f = std::fs::OpenOptions::new().write(true).open(dev).unwrap_or_else(|e| panic!("{}: {e}", dev.display()));
    // Past the image's data, inside the 1G filesystem: a container's new blocks.
    f.write_all_at(&vec![0xc5u8; WRITE], 768 << 20).unwrap();
    f.sync_all().unwrap();
}

struct Steps {
    key: &'static str,
    start: Space,
}

impl Steps {
    fn new(s: &dyn System) -> Steps {
        Steps { key: s.key(), start: s.space() }
    }
    fn at(&self, s: &dyn System, step: &str) {
        let now = s.space();
        row("space-data", self.key, step, (now.data_bytes - self.start.data_bytes) as f64);
        row("space-meta", self.key, step, now.meta_bytes.saturating_sub(self.start.meta_bytes) as f64);
    }
}

fn fill_from_tar(dev: &Path, img: &Image, mnt: &Path) {
    std::fs::create_dir_all(mnt).unwrap();
    sh(&format!(
        "mkfs.ext4 -q {d} && mount {d} {m} && tar -xpf {t} -C {m} && umount {m}",
        d = dev.display(),
        m = mnt.display(),
        t = img.layer_tar.display()
    ));
}

/// `rcx-dm image import` of the image's OCI layout as `rcxbench`.
fn import(tools: &Tools, root: &Path, pool: &str, img: &Image) {
    let out = Command::new(tools.bin("rcx-dm"))
        .args(["image", "import", img.layout.to_str().unwrap(), "--name", "rcxbench", "--size", "1G"])
        .env("RCX_DM_ROOT", root)
        .env("RCX_DM_POOL", pool)
        .env("RCX_DM_OVERCOMMIT", "1")
        .env("LD_LIBRARY_PATH", &tools.lib_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "rcx-dm image import: {}", String::from_utf8_lossy(&out.stderr));
}

/// rcx-dm: `rcx-dm image import` of the OCI layout, containers as library snapshots of its top.
pub fn rcx(cli: &RcxCli, tools: &Tools, root: &Path, pool: &str, img: &Image, n: usize) {
    let lib = &cli.lib;
    let st = Steps::new(cli);
    import(tools, root, pool, img);
    st.at(cli, "image");
    let top = rcx_dm::rootfs::image::top_volume(&lib.pool, "rcxbench").unwrap().expect("image top volume");
    let tags: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let mut devs = Vec::new();
    for t in &tags {
        devs.push(lib.pool.snapshot(None, &VolRef::Id(top), None, Some(t)).unwrap().device.expect("active"));
    }
    st.at(cli, "containers");
    devs.iter().for_each(|d| write_mib(d));
    st.at(cli, "writes");
    for t in &tags {
        lib.pool.delete(&VolRef::Name(t.clone()), true).unwrap();
    }
}

pub fn ctr(s: &CtrSystem, img: &Image, n: usize) {
    let st = Steps::new(s);
    s.c.ok(&["image", "import", "--snapshotter", s.snapshotter, img.archive.to_str().unwrap()]);
    st.at(s, "image");
    let keys: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let calls: Vec<Vec<String>> = keys
        .iter()
        .map(|k| ["snapshot", "--snapshotter", s.snapshotter, "prepare", k, &img.chain_id].iter().map(|x| x.to_string()).collect())
        .collect();
    s.c.many(&calls, 4);
    *s.count.lock().unwrap() += n;
    st.at(s, "containers");
    for k in &keys {
        let dev = s.c.device_of(s.snapshotter, k);
        // containerd's devmapper keeps prepared snapshots active; rcx-dm serve too.
        write_mib(&dev);
    }
    st.at(s, "writes");
    s.remove_all(&keys);
}

pub fn dmsetup(d: &Dmsetup, img: &Image, n: usize) {
    let st = Steps::new(d);
    let id = d.next_id(None);
    let pool = format!("{}-pool", d.name);
    d.dm.message(&pool, &format!("create_thin {id}")).unwrap();
    d.bump_tid();
    let table = |id: u32| format!("0 {} thin {} {id}", d.g.base_bytes / 512, d.pool_dev);
    sh(&format!("dmsetup create {}-{id} --table '{}'", d.name, table(id)));
    let img_dev = format!("/dev/mapper/{}-{id}", d.name);
    fill_from_tar(Path::new(&img_dev), img, &d.lock.with_file_name("mnt-dmsetup"));
    st.at(d, "image");
    let mut ids = Vec::new();
    for _ in 0..n {
        let c = d.next_id(None);
        sh(&format!("dmsetup suspend {n}-{id} && dmsetup message {pool} 0 'create_snap {c} {id}' && dmsetup resume {n}-{id}", n = d.name));
        d.bump_tid();
        sh(&format!("dmsetup create {}-{c} --table '{}'", d.name, table(c)));
        ids.push(c);
    }
    st.at(d, "containers");
    for c in &ids {
        write_mib(Path::new(&format!("/dev/mapper/{}-{c}", d.name)));
    }
    st.at(d, "writes");
    for c in ids.iter().chain([&id]) {
        d.dm.remove(&format!("{}-{c}", d.name)).unwrap();
        d.dm.message(&pool, &format!("delete {c}")).unwrap();
        d.bump_tid();
    }
}

pub fn lvm(l: &Lvm, img: &Image, n: usize) {
    let st = Steps::new(l);
    l.lvm(&["lvcreate", "-qq", "-V", &format!("{}m", l.g.base_bytes >> 20), "-T", &format!("{VG}/pool"), "-n", "img"]);
    fill_from_tar(Path::new(&format!("/dev/mapper/{VG}-img")), img, &l.env_dir.with_file_name("mnt-lvm"));
    st.at(l, "image");
    let tags: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    for t in &tags {
        l.lvm(&["lvcreate", "-qq", "-s", "-kn", "-n", t, &format!("{VG}/img")]);
    }
    st.at(l, "containers");
    for t in &tags {
        write_mib(Path::new(&format!("/dev/mapper/{VG}-{t}")));
    }
    st.at(l, "writes");
    *l.count.lock().unwrap() += n;
    l.delete_many(&tags);
    l.lvm(&["lvremove", "-qq", "-f", &format!("{VG}/img")]);
}

/// "rcx-dm: timings: snapshot=1.2ms ..." -> stage -> ms
fn parse_timings(stderr: &str) -> BTreeMap<String, f64> {
    let line = stderr.lines().find_map(|l| l.strip_prefix("rcx-dm: timings: ")).unwrap_or_else(|| panic!("no timings in:\n{stderr}"));
    line.split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.strip_suffix("ms")?.parse().ok()?))
        })
        .collect()
}

/// Workload 6, rounds interleaved: rcx-dm run, ctr run with each snapshotter (runc), and
/// unshare + chroot on the extracted directory as the floor.
pub fn run(tools: &Tools, root: &Path, pool: &str, c: &Ctrd, ctrs: &[&CtrSystem], img: &Image, reps: usize) {
    for s in ctrs {
        // The image is unpacked for both snapshotters by workload 5; make sure either way.
        c.ok(&["image", "import", "--snapshotter", s.snapshotter, img.archive.to_str().unwrap()]);
    }
    // And for rcx-dm, when workload 5 did not run (RCX_DM_BENCH_ONLY=6).
    let have = rcx_dm::Pool::open(root, pool).ok().and_then(|p| rcx_dm::rootfs::image::top_volume(&p, "rcxbench").ok().flatten());
    if have.is_none() {
        import(tools, root, pool, img);
    }
    let rcx = || {
        let t = Instant::now();
        let out = Command::new(tools.bin("rcx-dm"))
            .args(["run", "--rm", "--timings", "rcxbench", "--", "/bin/true"])
            .env("RCX_DM_ROOT", root)
            .env("RCX_DM_POOL", pool).env("RCX_DM_OVERCOMMIT", "1")
            .env("LD_LIBRARY_PATH", &tools.lib_dir)
            .output()
            .unwrap();
        let ms = ms_since(t);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "rcx-dm run: {err}");
        (ms, parse_timings(&err))
    };
    let unshare = || {
        let t = Instant::now();
        let out = Command::new(tools.bin("unshare"))
            .env("LD_LIBRARY_PATH", &tools.lib_dir)
            .args(["--fork", "--pid", "--mount", "--uts", "--ipc"])
            .arg(tools.bin("chroot"))
            .arg(&img.rootfs)
            .arg("/bin/true")
            .output()
            .unwrap();
        assert!(out.status.success(), "unshare: {}", String::from_utf8_lossy(&out.stderr));
        ms_since(t)
    };
    rcx();
    unshare();
    for i in 0..=reps {
        let (ms, stages) = rcx();
        if i == 0 {
            continue; // warm-up round
        }
        row("run", "rcx-cli", 0, ms);
        let inside = stages.get("total").copied().unwrap_or(0.0);
        for (k, v) in stages {
            row("run-stage", &k, 0, v);
        }
        row("run-stage", "process", 0, ms - inside);
        for s in ctrs {
            let before = s.backend_volumes();
            let (ms, _) = c.ok(&["run", "--rm", "--snapshotter", s.snapshotter, &img.reference, &format!("{}-{i}", s.key), "/bin/true"]);
            row("run", s.key, 0, ms);
            // Its snapshot goes in the collector: let it finish before the next measurement.
            s.drained(before);
        }
        row("run", "unshare-chroot", 0, unshare());
    }
}
