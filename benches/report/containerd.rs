//! One containerd (Debian's 1.6) with two snapshotters on identical pools: its built-in
//! `devmapper` on a thin-pool made with dmsetup (as its documentation says), and `rcx-dm`, the
//! proxy plugin served by `rcx-dm serve` on rcx-dm's pool. Both are driven with `ctr`, one
//! process per call.
//!
//! containerd removes a snapshot from the snapshotter in its garbage collector, not in the
//! `rm` call. The collector runs after every deletion here (deletion_threshold = 1) and never
//! because of mutations, so the population made with `ctr snapshot prepare` (no lease) stays
//! until the bench deletes it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rcx_dm::dm::Dm;
use rcx_dm::Pool;

use crate::systems::{pool_space, Space, System};
use crate::{ms_since, sh, wait_for, Geometry, Tools};

pub const NS: &str = "bench";
pub const DM_POOL: &str = "bctrd-pool";

pub struct Ctrd {
    pub tools: Tools,
    pub dir: PathBuf,
    pub sock: PathBuf,
    containerd: Mutex<Option<Child>>,
    serve: Mutex<Option<Child>>,
    loops: Vec<String>,
}

impl Ctrd {
    /// Starts `rcx-dm serve` on the rcx-dm pool (`root`, `pool`) and containerd with both
    /// snapshotters; the devmapper pool gets the same geometry.
    pub fn start(tools: Tools, dir: &Path, g: &Geometry, root: &Path, pool: &str) -> Ctrd {
        std::fs::create_dir_all(dir).unwrap();
        let serve_sock = dir.join("rcx.sock");
        let serve = Command::new(tools.bin("rcx-dm"))
            .args(["serve", "--socket", serve_sock.to_str().unwrap(), "--size", &g.base_bytes.to_string()])
            .env("RCX_DM_ROOT", root)
            .env("RCX_DM_POOL", pool).env("RCX_DM_OVERCOMMIT", "1")
            .env("LD_LIBRARY_PATH", &tools.lib_dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("serve.log")).unwrap())
            .spawn()
            .expect("spawn rcx-dm serve");
        wait_for("rcx-dm serve", || std::os::unix::net::UnixStream::connect(&serve_sock).is_ok());

        let data = sh(&format!("truncate -s {} {d}/ctrd-data && losetup -f --show {d}/ctrd-data", g.data_bytes, d = dir.display()));
        let meta = sh(&format!("truncate -s {} {d}/ctrd-meta && losetup -f --show {d}/ctrd-meta", g.meta_bytes, d = dir.display()));
        sh(&format!("dd if=/dev/zero of={meta} bs=4096 count=1 conv=notrunc status=none"));
        sh(&format!(
            "DM_DISABLE_UDEV=1 dmsetup create {DM_POOL} --table '0 {} thin-pool {meta} {data} {} {} 1 error_if_no_space'",
            g.data_bytes / 512,
            g.block_bytes / 512,
            g.low_water()
        ));
        let sock = dir.join("containerd.sock");
        std::fs::write(
            dir.join("config.toml"),
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{s}"
[ttrpc]
  address = "{s}.ttrpc"
[plugins."io.containerd.gc.v1.scheduler"]
  deletion_threshold = 1
  mutation_threshold = 1000000000
[plugins."io.containerd.snapshotter.v1.devmapper"]
  pool_name = "{DM_POOL}"
  root_path = "{d}/devmapper"
  base_image_size = "{base}B"
  discard_blocks = false
[proxy_plugins.rcx-dm]
  type = "snapshot"
  address = "{serve}"
"#,
                d = dir.display(),
                s = sock.display(),
                base = g.base_bytes,
                serve = serve_sock.display()
            ),
        )
        .unwrap();
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let containerd = Command::new(tools.bin("containerd"))
            .arg("--config")
            .arg(dir.join("config.toml"))
            .env("PATH", tools.path())
            .env("LD_LIBRARY_PATH", &tools.lib_dir)
            .env("TMPDIR", &tmp)
            // No udev in the VM: libdevmapper (containerd runs dmsetup) makes its own nodes.
            .env("DM_DISABLE_UDEV", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log")).unwrap())
            .spawn()
            .expect("spawn containerd");
        let c = Ctrd {
            tools,
            dir: dir.to_path_buf(),
            sock,
            containerd: Mutex::new(Some(containerd)),
            serve: Mutex::new(Some(serve)),
            loops: vec![data, meta],
        };
        wait_for("containerd", || c.ctr(&["version"]).status.success());
        let plugins = String::from_utf8_lossy(&c.ctr(&["plugins", "ls"]).stdout).into_owned();
        if !plugins.lines().any(|l| l.contains("devmapper") && l.trim_end().ends_with("ok")) {
            panic!("containerd's devmapper snapshotter did not load:\n{plugins}\n{}", c.log_tail());
        }
        c
    }

    pub fn log_tail(&self) -> String {
        let t = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let l: Vec<&str> = t.lines().collect();
        l[l.len().saturating_sub(20)..].join("\n")
    }

    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.tools.bin("ctr"));
        c.arg("--address").arg(&self.sock).args(["-n", NS]).args(args);
        c.env("PATH", self.tools.path()).env("LD_LIBRARY_PATH", &self.tools.lib_dir);
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_cmd(args).output().expect("spawn ctr")
    }

    /// `ctr ARGS`, which must succeed: (milliseconds, stdout).
    pub fn ok(&self, args: &[&str]) -> (f64, String) {
        let t = Instant::now();
        let o = self.ctr(args);
        let ms = ms_since(t);
        assert!(o.status.success(), "ctr {args:?}: {}\n{}", String::from_utf8_lossy(&o.stderr), self.log_tail());
        (ms, String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Run `ctr` with each argument list, `width` processes at a time.
    pub fn many(&self, calls: &[Vec<String>], width: usize) {
        let mut next = 0;
        let mut running: Vec<Child> = Vec::new();
        while next < calls.len() || !running.is_empty() {
            while running.len() < width && next < calls.len() {
                let a: Vec<&str> = calls[next].iter().map(String::as_str).collect();
                running.push(self.ctr_cmd(&a).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn ctr"));
                next += 1;
            }
            let mut i = 0;
            while i < running.len() {
                if let Some(st) = running[i].try_wait().unwrap() {
                    assert!(st.success(), "a ctr call failed:\n{}", self.log_tail());
                    running.swap_remove(i);
                } else {
                    i += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The device `ctr snapshot mounts` gives for KEY.
    pub fn device_of(&self, sn: &str, key: &str) -> PathBuf {
        let (_, out) = self.ok(&["snapshot", "--snapshotter", sn, "mounts", "/mnt", key]);
        // mount -t TYPE SOURCE /mnt [-o OPTS]
        let w: Vec<&str> = out.split_whitespace().collect();
        assert!(w.len() >= 4 && w[0] == "mount", "unexpected mounts line: {out}");
        PathBuf::from(w[3])
    }

    pub fn stop(&self) {
        if let Some(mut c) = self.containerd.lock().unwrap().take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
        if let Some(mut s) = self.serve.lock().unwrap().take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = Command::new("sh")
            .args(["-c", &format!("dmsetup ls | awk '/^{DM_POOL}-/ {{print $1}}' | xargs -r -n1 dmsetup remove; dmsetup remove {DM_POOL}")])
            .env("DM_DISABLE_UDEV", "1")
            .status();
        for l in &self.loops {
            let _ = Command::new("losetup").args(["-d", l]).status();
        }
    }
}

/// A snapshotter of that containerd, driven with `ctr snapshot`.
pub struct CtrSystem<'a> {
    pub c: &'a Ctrd,
    pub snapshotter: &'static str,
    pub label: &'static str,
    pub key: &'static str,
    pub dm: Dm,
    pub g: Geometry,
    /// rcx-dm's pool (for the rcx-dm snapshotter's backend count and space).
    pub rcx: Option<Pool>,
    pub count: Mutex<usize>,
    pub next: Mutex<usize>,
}

impl CtrSystem<'_> {
    pub fn snapshot(&self, args: &[&str]) -> (f64, String) {
        let mut a = vec!["snapshot", "--snapshotter", self.snapshotter];
        a.extend_from_slice(args);
        self.c.ok(&a)
    }

    /// Volumes the backend holds (devmapper: its active snapshot devices; rcx-dm: the pool's
    /// volumes).
    pub fn backend_volumes(&self) -> usize {
        match &self.rcx {
            Some(p) => p.volumes().expect("volumes").len(),
            None => self.dm.list().expect("dm list").iter().filter(|n| n.starts_with(&format!("{DM_POOL}-snap-"))).count(),
        }
    }

    /// Remove `keys` from containerd (untimed) and wait until the backend has them gone. The
    /// first removal sets the collector off, which takes every unprotected snapshot with it,
    /// so later `rm` calls may find their key gone already: that is expected here.
    pub fn remove_all(&self, keys: &[String]) {
        let before = self.backend_volumes();
        for chunk in keys.chunks(50) {
            let mut a = vec!["snapshot", "--snapshotter", self.snapshotter, "rm"];
            a.extend(chunk.iter().map(String::as_str));
            let o = self.c.ctr(&a);
            if !o.status.success() {
                eprintln!("bench: {}: ctr {a:?}: {}", self.key, String::from_utf8_lossy(&o.stderr).trim());
            }
        }
        *self.count.lock().unwrap() -= keys.len();
        self.drained(before - keys.len());
    }

    /// Make `keys` garbage-collection roots, so a collection set off by another deletion
    /// leaves them alone (`ctr snapshot prepare` makes snapshots without a lease).
    pub fn protect(&self, keys: &[String]) {
        let calls: Vec<Vec<String>> = keys
            .iter()
            .map(|k| ["snapshot", "--snapshotter", self.snapshotter, "label", k, "containerd.io/gc.root=1"].iter().map(|x| x.to_string()).collect())
            .collect();
        self.c.many(&calls, 4);
    }

    /// Wait until the backend holds at most `n` volumes (containerd's collector at work).
    pub fn drained(&self, n: usize) {
        let start = Instant::now();
        let (mut last, mut moved) = (usize::MAX, Instant::now());
        let mut kicks = 0;
        loop {
            let have = self.backend_volumes();
            if have <= n {
                break;
            }
            if have != last {
                (last, moved) = (have, Instant::now());
            }
            assert!(start.elapsed() < Duration::from_secs(600), "{}: containerd's collector did not remove the snapshots ({have} > {n})\n{}", self.key, self.c.log_tail());
            // containerd's scheduler forgets deletions made while a collection runs (it resets
            // its counters when the collection ends), so the last snapshots can wait for the
            // next deletion forever: after 2 s without progress make one (scratch key).
            if moved.elapsed() > Duration::from_secs(2) {
                kicks += 1;
                let key = format!("kick-{kicks}");
                self.snapshot(&["prepare", &key, "parent"]);
                self.snapshot(&["rm", &key]);
                moved = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if kicks > 0 {
            println!("META,collector-kicks,{},{kicks}", self.key);
        }
    }
}

impl System for CtrSystem<'_> {
    fn label(&self) -> &'static str {
        self.label
    }
    fn key(&self) -> &'static str {
        self.key
    }
    fn snap(&self, tag: &str) -> f64 {
        let ms = self.snapshot(&["prepare", tag, "parent"]).0;
        *self.count.lock().unwrap() += 1;
        ms
    }
    fn delete(&self, tag: &str) -> f64 {
        let ms = self.snapshot(&["rm", tag]).0;
        *self.count.lock().unwrap() -= 1;
        ms
    }
    /// The rcx-dm snapshotter's pool is rcx-dm's, grown by the library; devmapper's pool holds
    /// what this containerd made.
    fn population(&self) -> usize {
        match &self.rcx {
            Some(p) => p.volumes().expect("volumes").len(),
            None => *self.count.lock().unwrap(),
        }
    }
    /// `ctr snapshot prepare`, four processes at a time: containerd has no cheaper way in.
    fn populate(&self, n: usize, deadline: Instant) -> usize {
        while self.population() < n && Instant::now() < deadline {
            let batch = (n - self.population()).min(20);
            let calls: Vec<Vec<String>> = (0..batch)
                .map(|_| {
                    let mut x = self.next.lock().unwrap();
                    *x += 1;
                    ["snapshot", "--snapshotter", self.snapshotter, "prepare", &format!("pop{}", *x), "parent"]
                        .iter()
                        .map(|s| s.to_string())
                        .collect()
                })
                .collect();
            self.c.many(&calls, 4);
            *self.count.lock().unwrap() += batch;
        }
        self.population()
    }
    fn delete_many(&self, tags: &[String]) {
        self.remove_all(tags)
    }
    fn keep(&self, tags: &[String]) {
        self.protect(tags)
    }
    fn backend_count(&self) -> usize {
        self.backend_volumes()
    }
    fn reclaimed(&self, before: usize, removed: usize) {
        self.drained(before - removed)
    }
    fn space(&self) -> Space {
        match &self.rcx {
            Some(p) => pool_space(&self.dm, &p.pool_dm_name(), &self.g),
            None => pool_space(&self.dm, DM_POOL, &self.g),
        }
    }
}
