//! The systems under test, each behind one small trait: make a writable snapshot of its active
//! 1G base and activate it, delete one, grow the pool's population cheaply, read its pool's
//! space use. rcx-dm (CLI, library), the dmsetup script and LVM live here; the two systems
//! driven through containerd's `ctr` are in containerd.rs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use rcx_dm::dm::{Dm, ThinPoolStatus};
use rcx_dm::{Pool, VolRef};

use crate::{ms_since, sh, Geometry, Tools};

/// Space use of a thin pool, from the kernel's status line.
#[derive(Debug, Clone, Copy)]
pub struct Space {
    pub data_bytes: u64,
    pub meta_bytes: u64,
}

pub trait System: Sync {
    /// Row label in the report.
    fn label(&self) -> &'static str;
    /// Column key in the CSV.
    fn key(&self) -> &'static str;
    /// A new writable snapshot `tag` of the active base, activated; milliseconds.
    fn snap(&self, tag: &str) -> f64;
    /// Delete snapshot `tag` (deactivating it first where needed); milliseconds.
    fn delete(&self, tag: &str) -> f64;
    /// Thin volumes in the pool now (base and snapshots).
    fn population(&self) -> usize;
    /// Grow the population towards `n` by this system's cheapest native means (inactive
    /// snapshots where it has them); stops at `deadline`. Returns the population reached.
    fn populate(&self, n: usize, deadline: Instant) -> usize;
    /// Pool space used.
    fn space(&self) -> Space;
    /// Delete many, untimed, by the cheapest correct means.
    fn delete_many(&self, tags: &[String]) {
        for t in tags {
            self.delete(t);
        }
    }
    /// For systems whose deletes finish later (containerd's collector): the backend's volume
    /// count now, to pass to `reclaimed`.
    fn backend_count(&self) -> usize {
        0
    }
    /// Concurrent clients from now on (`on`) or one at a time again.
    fn concurrent(&self, _on: bool) {}
    /// Make `tags` survive other deletions (containerd's collector).
    fn keep(&self, _tags: &[String]) {}
    /// Wait until the backend holds `before - removed` volumes.
    fn reclaimed(&self, _before: usize, _removed: usize) {}
}

pub fn pool_space(dm: &Dm, pool_dm: &str, g: &Geometry) -> Space {
    let lines = dm.status(pool_dm).expect("thin-pool status");
    let s = ThinPoolStatus::parse(&lines[0].params).expect("thin-pool status line");
    Space { data_bytes: s.data_used_blocks * g.block_bytes, meta_bytes: s.meta_used_blocks * 4096 }
}

/// rcx-dm through its command line: one process per operation.
pub struct RcxCli {
    pub tools: Tools,
    pub root: PathBuf,
    pub pool: String,
    pub lib: RcxLib,
}

impl RcxCli {
    fn run(&self, args: &[&str]) -> f64 {
        let t = Instant::now();
        let out = Command::new(self.tools.bin("rcx-dm"))
            .args(args)
            .env("LD_LIBRARY_PATH", &self.tools.lib_dir)
            .env("RCX_DM_ROOT", &self.root)
            .env("RCX_DM_POOL", &self.pool).env("RCX_DM_OVERCOMMIT", "1")
            .output()
            .expect("spawn rcx-dm");
        let ms = ms_since(t);
        assert!(out.status.success(), "rcx-dm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        ms
    }
}

impl System for RcxCli {
    fn label(&self) -> &'static str {
        "rcx-dm CLI"
    }
    fn key(&self) -> &'static str {
        "rcx-cli"
    }
    fn snap(&self, tag: &str) -> f64 {
        self.run(&["snap", "-", "0", "--name", tag])
    }
    fn delete(&self, tag: &str) -> f64 {
        self.run(&["delete", tag, "--force"])
    }
    fn population(&self) -> usize {
        self.lib.population()
    }
    fn populate(&self, n: usize, deadline: Instant) -> usize {
        self.lib.populate(n, deadline)
    }
    fn space(&self) -> Space {
        self.lib.space()
    }
    fn delete_many(&self, tags: &[String]) {
        for t in tags {
            self.lib.pool.delete(&VolRef::Name(t.clone()), true).expect("Pool::delete");
        }
    }
}

/// The CLI and the library share one pool: the library's volumes get their own names.
fn lib_name(tag: &str) -> String {
    format!("lib-{tag}")
}

/// rcx-dm in-process through the library.
pub struct RcxLib {
    pub pool: Pool,
    pub dm: Dm,
    pub g: Geometry,
}

impl System for RcxLib {
    fn label(&self) -> &'static str {
        "rcx-dm library (in-process)"
    }
    fn key(&self) -> &'static str {
        "rcx-lib"
    }
    fn snap(&self, tag: &str) -> f64 {
        let t = Instant::now();
        self.pool.snapshot(None, &VolRef::Id(0), None, Some(&lib_name(tag))).expect("Pool::snapshot");
        ms_since(t)
    }
    fn delete(&self, tag: &str) -> f64 {
        let t = Instant::now();
        self.pool.delete(&VolRef::Name(lib_name(tag)), true).expect("Pool::delete");
        ms_since(t)
    }
    fn population(&self) -> usize {
        self.pool.volumes().expect("volumes").len()
    }
    fn populate(&self, n: usize, deadline: Instant) -> usize {
        let mut have = self.population();
        while have < n && Instant::now() < deadline {
            let v = self.pool.snapshot(None, &VolRef::Id(0), None, None).expect("populate");
            self.pool.deactivate_volume(&VolRef::Id(v.id)).expect("deactivate");
            have += 1;
        }
        have
    }
    fn space(&self) -> Space {
        pool_space(&self.dm, &self.pool.pool_dm_name(), &self.g)
    }
}

/// The same kernel steps as `rcx-dm snap`, scripted with dmsetup the way a hand-written tool
/// does them (busybox sh, one process per step), on a pool made with dmsetup. Concurrent
/// clients serialise on flock(1), as such a script must (transaction ids, origin suspend).
pub struct Dmsetup {
    pub tools: Tools,
    pub name: String,
    pub pool_dev: String,
    pub g: Geometry,
    pub dm: Dm,
    pub lock: PathBuf,
    pub ids: Mutex<(u32, HashMap<String, u32>)>,
    pub count: Mutex<usize>,
    /// Wrap each script in flock(1): only needed (and only paid) with concurrent clients.
    pub locked: AtomicBool,
}

impl Dmsetup {
    pub fn create(tools: Tools, dir: &Path, g: Geometry, dm: Dm) -> Dmsetup {
        let name = "bdm".to_string();
        let data = sh(&format!("truncate -s {} {d}/dms-data && losetup -f --show {d}/dms-data", g.data_bytes, d = dir.display()));
        let meta = sh(&format!("truncate -s {} {d}/dms-meta && losetup -f --show {d}/dms-meta", g.meta_bytes, d = dir.display()));
        sh(&format!("dd if=/dev/zero of={meta} bs=4096 count=1 conv=notrunc status=none"));
        let sectors = g.block_bytes / 512;
        sh(&format!(
            "dmsetup create {name}-pool --table '0 {} thin-pool {meta} {data} {sectors} {} 1 error_if_no_space'",
            g.data_bytes / 512,
            g.low_water()
        ));
        let pool_dev = sh(&format!("dmsetup info -c --noheadings -o major,minor --separator : {name}-pool"));
        sh(&format!("dmsetup message {name}-pool 0 'create_thin 0' && dmsetup message {name}-pool 0 'set_transaction_id 0 1'"));
        sh(&format!("dmsetup create {name}-0 --table '0 {} thin {pool_dev} 0'", g.base_bytes / 512));
        sh(&format!("dd if=/dev/urandom of=/dev/mapper/{name}-0 bs=1M count=16 oflag=direct status=none"));
        Dmsetup {
            tools,
            name,
            pool_dev,
            g,
            dm,
            lock: dir.join("dmsetup.lock"),
            ids: Mutex::new((1, HashMap::new())),
            count: Mutex::new(1),
            locked: AtomicBool::new(false),
        }
    }

    fn script(&self, body: &str) -> f64 {
        let mut cmd = if self.locked.load(Ordering::SeqCst) {
            let mut c = Command::new(self.tools.bin("flock"));
            c.arg(&self.lock).arg(self.tools.bin("busybox"));
            c
        } else {
            Command::new(self.tools.bin("busybox"))
        };
        let t = Instant::now();
        let out = cmd
            .args(["sh", "-c", body])
            .env("PATH", self.tools.path())
            .env("LD_LIBRARY_PATH", &self.tools.lib_dir)
            .env("DM_DISABLE_UDEV", "1")
            .output()
            .expect("spawn busybox");
        let ms = ms_since(t);
        assert!(out.status.success(), "dmsetup script: {}\n{body}", String::from_utf8_lossy(&out.stderr));
        ms
    }

    pub fn next_id(&self, tag: Option<&str>) -> u32 {
        let mut ids = self.ids.lock().unwrap();
        let id = ids.0;
        ids.0 += 1;
        if let Some(t) = tag {
            ids.1.insert(t.to_string(), id);
        }
        id
    }

    pub fn bump_tid(&self) {
        let lines = self.dm.status(&format!("{}-pool", self.name)).unwrap();
        let t = ThinPoolStatus::parse(&lines[0].params).unwrap().transaction_id;
        self.dm.message(&format!("{}-pool", self.name), &format!("set_transaction_id {t} {}", t + 1)).unwrap();
    }
}

impl System for Dmsetup {
    fn label(&self) -> &'static str {
        "dmsetup script (same kernel steps)"
    }
    fn key(&self) -> &'static str {
        "dmsetup"
    }
    fn snap(&self, tag: &str) -> f64 {
        let id = self.next_id(Some(tag));
        let (n, p) = (&self.name, &self.pool_dev);
        let ms = self.script(&format!(
            "set -e\n\
             T=$(dmsetup status {n}-pool | awk '{{print $4}}')\n\
             dmsetup suspend {n}-0\n\
             dmsetup message {n}-pool 0 \"create_snap {id} 0\"\n\
             dmsetup resume {n}-0\n\
             dmsetup message {n}-pool 0 \"set_transaction_id $T $((T+1))\"\n\
             dmsetup create {n}-{id} --table \"0 {} thin {p} {id}\"\n",
            self.g.base_bytes / 512
        ));
        *self.count.lock().unwrap() += 1;
        ms
    }
    fn delete(&self, tag: &str) -> f64 {
        let id = self.ids.lock().unwrap().1.remove(tag).expect("known tag");
        let n = &self.name;
        let ms = self.script(&format!(
            "set -e\n\
             dmsetup remove {n}-{id}\n\
             T=$(dmsetup status {n}-pool | awk '{{print $4}}')\n\
             dmsetup message {n}-pool 0 \"delete {id}\"\n\
             dmsetup message {n}-pool 0 \"set_transaction_id $T $((T+1))\"\n"
        ));
        *self.count.lock().unwrap() -= 1;
        ms
    }
    fn population(&self) -> usize {
        *self.count.lock().unwrap()
    }
    fn concurrent(&self, on: bool) {
        self.locked.store(on, Ordering::SeqCst);
    }
    /// Inactive snapshots made with the same messages, sent in-process (a script would take
    /// hours to make 10,000 under emulation; the kernel's state is the same).
    fn populate(&self, n: usize, deadline: Instant) -> usize {
        let pool = format!("{}-pool", self.name);
        while self.population() < n && Instant::now() < deadline {
            let id = self.next_id(None);
            // The origin is active: suspended around create_snap, as the kernel requires.
            let origin = format!("{}-0", self.name);
            self.dm.suspend(&origin).unwrap();
            let made = self.dm.message(&pool, &format!("create_snap {id} 0"));
            self.dm.resume(&origin).unwrap();
            made.unwrap();
            self.bump_tid();
            *self.count.lock().unwrap() += 1;
        }
        self.population()
    }
    fn space(&self) -> Space {
        pool_space(&self.dm, &format!("{}-pool", self.name), &self.g)
    }
    fn delete_many(&self, tags: &[String]) {
        let pool = format!("{}-pool", self.name);
        for t in tags {
            let id = self.ids.lock().unwrap().1.remove(t).expect("known tag");
            self.dm.remove(&format!("{}-{id}", self.name)).unwrap();
            self.dm.message(&pool, &format!("delete {id}")).unwrap();
            self.bump_tid();
            *self.count.lock().unwrap() -= 1;
        }
    }
}

/// LVM thin: a VG on a loop device, a thin pool of the same geometry, `lvcreate -s` of a thin
/// LV. LVM runs with its own lvm.conf (no udev, no daemons, no metadata archives, a device
/// filter accepting only its loop device): what an operator tuning LVM for this would use.
pub struct Lvm {
    pub tools: Tools,
    pub env_dir: PathBuf,
    pub g: Geometry,
    pub dm: Dm,
    pub loopdev: String,
    pub count: Mutex<usize>,
    pub next: Mutex<usize>,
}

pub const VG: &str = "benchvg";

impl Lvm {
    pub fn create(tools: Tools, dir: &Path, g: Geometry, dm: Dm) -> Lvm {
        let env_dir = dir.join("lvm-etc");
        std::fs::create_dir_all(&env_dir).unwrap();
        let loopdev = sh(&format!(
            "truncate -s {} {d}/lvm-pv && losetup -f --show {d}/lvm-pv",
            g.data_bytes + g.meta_bytes * 2 + (2 << 30),
            d = dir.display()
        ));
        std::fs::write(env_dir.join("lvm.conf"), crate::lvm_conf(&loopdev, &env_dir)).unwrap();
        let l = Lvm { tools, env_dir, g, dm, loopdev, count: Mutex::new(0), next: Mutex::new(0) };
        let mb = |b: u64| format!("{}m", b >> 20);
        l.lvm(&["pvcreate", "-qq", "--metadatasize", "128m", &l.loopdev]);
        l.lvm(&["vgcreate", "-qq", VG, &l.loopdev]);
        l.lvm(&[
            "lvcreate", "-qq", "--type", "thin-pool", "-L", &mb(g.data_bytes), "--poolmetadatasize", &mb(g.meta_bytes),
            "--chunksize", &format!("{}k", g.block_bytes >> 10), "-Zy", "-n", "pool", VG,
        ]);
        // lvcreate refuses --errorwhenfull for thin pools; lvchange sets it.
        l.lvm(&["lvchange", "-qq", "--errorwhenfull", "y", &format!("{VG}/pool")]);
        l.lvm(&["lvcreate", "-qq", "-V", &mb(g.base_bytes), "-T", &format!("{VG}/pool"), "-n", "base"]);
        sh(&format!("dd if=/dev/urandom of=/dev/mapper/{VG}-base bs=1M count=16 oflag=direct status=none"));
        *l.count.lock().unwrap() = 1;
        l
    }

    pub fn lvm(&self, args: &[&str]) -> f64 {
        let t = Instant::now();
        let out = Command::new(self.tools.bin("lvm"))
            .args(args)
            .env("LVM_SYSTEM_DIR", &self.env_dir)
            .env("LD_LIBRARY_PATH", &self.tools.lib_dir)
            .env("PATH", self.tools.path())
            .env("DM_DISABLE_UDEV", "1")
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .output()
            .expect("spawn lvm");
        let ms = ms_since(t);
        assert!(out.status.success(), "lvm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        ms
    }

    pub fn teardown(&self) {
        let _ = Command::new(self.tools.bin("lvm"))
            .args(["vgremove", "-qq", "-ff", VG])
            .env("LVM_SYSTEM_DIR", &self.env_dir)
            .env("LD_LIBRARY_PATH", &self.tools.lib_dir)
            .env("DM_DISABLE_UDEV", "1")
            .output();
        let _ = Command::new("losetup").args(["-d", &self.loopdev]).status();
    }
}

impl System for Lvm {
    fn label(&self) -> &'static str {
        "LVM thin (`lvcreate -s`)"
    }
    fn key(&self) -> &'static str {
        "lvm"
    }
    fn snap(&self, tag: &str) -> f64 {
        // -kn: no activation skip, so the snapshot is activated like everyone else's.
        let ms = self.lvm(&["lvcreate", "-qq", "-s", "-kn", "-n", tag, &format!("{VG}/base")]);
        *self.count.lock().unwrap() += 1;
        ms
    }
    fn delete(&self, tag: &str) -> f64 {
        let ms = self.lvm(&["lvremove", "-qq", "-f", &format!("{VG}/{tag}")]);
        *self.count.lock().unwrap() -= 1;
        ms
    }
    fn population(&self) -> usize {
        *self.count.lock().unwrap()
    }
    /// Inactive thin snapshots (LVM's default activation skip), one lvcreate each: LVM has no
    /// batch create.
    fn populate(&self, n: usize, deadline: Instant) -> usize {
        while self.population() < n && Instant::now() < deadline {
            let i = {
                let mut x = self.next.lock().unwrap();
                *x += 1;
                *x
            };
            self.lvm(&["lvcreate", "-qq", "-s", "-n", &format!("pop{i}"), &format!("{VG}/base")]);
            *self.count.lock().unwrap() += 1;
        }
        self.population()
    }
    fn space(&self) -> Space {
        pool_space(&self.dm, &format!("{VG}-pool-tpool"), &self.g)
    }
    /// lvremove takes many LVs per call.
    fn delete_many(&self, tags: &[String]) {
        for chunk in tags.chunks(100) {
            let mut a = vec!["lvremove".to_string(), "-qq".into(), "-f".into()];
            a.extend(chunk.iter().map(|t| format!("{VG}/{t}")));
            self.lvm(&a.iter().map(String::as_str).collect::<Vec<_>>());
            *self.count.lock().unwrap() -= chunk.len();
        }
    }
}
