//! `rcx-dm serve` with the real client: Debian's containerd 1.6 started by the test with its
//! own root, state, socket and config (proxy_plugins.rcx-dm pointing at a `rcx-dm serve` on the
//! scenario's pool), driven with `ctr`: snapshot prepare/commit/view/mounts/usage/ls/rm,
//! `ctr image import` of an OCI archive built here from busybox-static, `ctr run` with runc,
//! and serve killed with SIGKILL during a stream of prepares.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const NS: &str = "rcxtest";
const SNAPSHOTTER: &str = "rcx-dm";

/// containerd, ctr, the runc shim and runc copied to tmpfs once (exec over 9p is slow).
fn ctr_bin_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch().join(format!("ctrbin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for b in ["/usr/bin/containerd", "/usr/bin/ctr", "/usr/bin/containerd-shim-runc-v2", "/usr/sbin/runc"] {
            let name = Path::new(b).file_name().unwrap();
            let tmp = dir.join(name).with_extension("tmp");
            std::fs::copy(b, &tmp).unwrap_or_else(|e| panic!("copying {b} (Debian containerd/runc from tools/setup): {e}"));
            std::fs::rename(&tmp, dir.join(name)).unwrap();
        }
        dir
    })
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A containerd and a `rcx-dm serve` of one scenario; both killed on drop, before the pool.
pub struct Ctrd {
    pub dir: PathBuf,
    pub serve_sock: PathBuf,
    pub sock: PathBuf,
    serve: Option<Child>,
    containerd: Option<Child>,
    pub s: Scenario,
    /// serve's `--size`: of the volumes it makes for first layers.
    serve_size: String,
}

/// The CRI plugin's part of containerd's config as the README gives it to operators (the test
/// asserts the README holds exactly this): pods' snapshots on rcx-dm, runc from the defaults.
pub const CRI_TOML: &str = r#"[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "rcx-dm"
"#;

/// What a test node adds to the CRI plugin's config: the sandbox (pause) image the test pushed
/// and the plain-HTTP registry on 127.0.0.1 it pulls from.
pub struct CriNode {
    /// "127.0.0.1:PORT/pause:1"
    pub sandbox_image: String,
    /// "127.0.0.1:PORT", reached over plain HTTP (a hosts.toml under `config_path`).
    pub registry: String,
    /// The CRI's snapshotter: rcx-dm for the tests, containerd's own for comparisons.
    pub snapshotter: CriSnapshotter,
}

/// The snapshotter the CRI plugin puts pods on.
pub enum CriSnapshotter {
    /// rcx-dm through [`CRI_TOML`].
    RcxDm,
    /// containerd's overlayfs under its root.
    Overlayfs,
    /// containerd's devmapper on the thin-pool `pool_name` (made by the caller with dmsetup),
    /// volumes of `base_bytes`.
    Devmapper { pool_name: String, base_bytes: u64 },
}

impl Ctrd {
    /// `gc_on_delete`: containerd's garbage collector runs after every deletion (it then also
    /// walks serve and removes what containerd does not know); otherwise only its defaults
    /// (which would also collect snapshots `ctr` made without a lease, mid-test).
    pub fn new(tag: &str, gc_on_delete: bool) -> Ctrd {
        Ctrd::start(tag, gc_on_delete, None, "256M")
    }

    /// A Kubernetes node's containerd: the CRI plugin on with [`CRI_TOML`], host-network pods
    /// only (no CNI config), the collector after every deletion.
    pub fn with_cri(tag: &str, node: &CriNode) -> Ctrd {
        Ctrd::start(tag, true, Some(node), "256M")
    }

    /// [`Ctrd::with_cri`] with serve making volumes of `serve_size` (benchmarks give every
    /// snapshotter the same volume size).
    pub fn with_cri_sized(tag: &str, node: &CriNode, serve_size: &str) -> Ctrd {
        Ctrd::start(tag, true, Some(node), serve_size)
    }

    fn start(tag: &str, gc_on_delete: bool, cri: Option<&CriNode>, serve_size: &str) -> Ctrd {
        let s = Scenario::new(tag);
        s.ok(&["pool", "create", "--data-size", "8G", "--meta-size", "64M"]);
        let dir = s.root.join("ctrd");
        std::fs::create_dir_all(&dir).unwrap();
        let serve_sock = dir.join("snap.sock");
        let sock = dir.join("containerd.sock");
        let cri_section = match cri {
            None => String::new(),
            Some(n) => {
                // containerd 1.6 finds registry hosts in config_path/HOST/hosts.toml; the test
                // registry speaks plain HTTP.
                let hosts = dir.join("certs.d").join(&n.registry);
                std::fs::create_dir_all(&hosts).unwrap();
                let r = &n.registry;
                std::fs::write(hosts.join("hosts.toml"), format!("server = \"http://{r}\"\n[host.\"http://{r}\"]\n  capabilities = [\"pull\", \"resolve\"]\n")).unwrap();
                let cni = dir.join("cni");
                std::fs::create_dir_all(&cni).unwrap();
                // stats_collect_period: ImageFsInfo and ContainerStats figures refreshed every
                // second (default 10 s), so the test polls for seconds, not tens.
                let snap = match &n.snapshotter {
                    CriSnapshotter::RcxDm => CRI_TOML.to_string(),
                    CriSnapshotter::Overlayfs => "[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"overlayfs\"\n".to_string(),
                    CriSnapshotter::Devmapper { pool_name, base_bytes } => format!(
                        "[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"devmapper\"\n\
                         [plugins.\"io.containerd.snapshotter.v1.devmapper\"]\n  pool_name = \"{pool_name}\"\n  root_path = \"{}/devmapper\"\n  base_image_size = \"{base_bytes}B\"\n  discard_blocks = false\n",
                        dir.display()
                    ),
                };
                format!(
                    r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox}"
  stats_collect_period = 1
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni}"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
{snap}"#,
                    sandbox = n.sandbox_image,
                    cni = cni.display(),
                    certs = dir.join("certs.d").display()
                )
            }
        };
        let disabled = match cri.map(|n| &n.snapshotter) {
            None => r#""io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.devmapper", "#,
            Some(CriSnapshotter::Devmapper { .. }) => "",
            Some(_) => r#""io.containerd.snapshotter.v1.devmapper", "#,
        };
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [{disabled}"io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.gc.v1.scheduler"]
  deletion_threshold = {gc}
[proxy_plugins.{SNAPSHOTTER}]
  type = "snapshot"
  address = "{serve}"
{cri_section}"#,
            d = dir.display(),
            sock = sock.display(),
            serve = serve_sock.display(),
            gc = u32::from(gc_on_delete)
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let mut c = Ctrd { dir, serve_sock, sock, serve: None, containerd: None, s, serve_size: serve_size.to_string() };
        c.start_serve();
        c.start_containerd();
        c
    }

    pub fn path_env(&self) -> String {
        format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", ctr_bin_dir().display())
    }

    pub fn start_serve(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("serve.log")).unwrap();
        let child = Command::new(bin())
            .args(["serve", "--socket", path_str(&self.serve_sock), "--size", &self.serve_size])
            .env("RCX_DM_ROOT", &self.s.root)
            .env("RCX_DM_POOL", &self.s.pool)
            .env("RUST_LOG", "rcx_dm=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn rcx-dm serve");
        self.serve = Some(child);
        let sock = self.serve_sock.clone();
        let logf = self.dir.join("serve.log");
        wait_for("rcx-dm serve to listen", 60, || {
            if let Some(st) = self.serve.as_mut().unwrap().try_wait().unwrap() {
                panic!("rcx-dm serve exited ({st}):\n{}", std::fs::read_to_string(&logf).unwrap_or_default());
            }
            std::os::unix::net::UnixStream::connect(&sock).ok().map(|_| ())
        });
    }

    /// SIGKILL the serve process.
    pub fn kill_serve(&mut self) {
        if let Some(mut c) = self.serve.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn start_containerd(&mut self) {
        let log = std::fs::File::create(self.dir.join("containerd.log")).unwrap();
        let tmp = self.dir.join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let child = Command::new(ctr_bin_dir().join("containerd"))
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .env("PATH", self.path_env())
            .env("TMPDIR", &tmp)
            // No udev in the VM: libdevmapper (the devmapper snapshotter runs dmsetup) makes its
            // own device nodes.
            .env("DM_DISABLE_UDEV", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        self.containerd = Some(child);
        let logf = self.dir.join("containerd.log");
        wait_for("containerd to answer", 90, || {
            if let Some(st) = self.containerd.as_mut().unwrap().try_wait().unwrap() {
                panic!("containerd exited ({st}):\n{}", std::fs::read_to_string(&logf).unwrap_or_default());
            }
            self.ctr(&["version"]).status.success().then_some(())
        });
    }

    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(ctr_bin_dir().join("ctr"));
        c.arg("--address").arg(&self.sock).args(["--namespace", NS]).args(args).env("PATH", self.path_env());
        c
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        let mut c = self.ctr_cmd(args);
        for _ in 0..50 {
            match c.output() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => std::thread::sleep(Duration::from_millis(20)),
                r => return r.expect("spawn ctr"),
            }
        }
        c.output().expect("spawn ctr")
    }

    /// `ctr ARGS` must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert!(o.status.success(), "ctr {args:?} failed ({}):\n{}{}\n{}", o.status, text(&o.stdout), text(&o.stderr), self.logs());
        text(&o.stdout)
    }

    /// `ctr ARGS` must fail; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert!(!o.status.success(), "ctr {args:?} should have failed:\n{}", text(&o.stdout));
        text(&o.stderr)
    }

    /// `ctr snapshot --snapshotter rcx-dm ARGS`.
    pub fn snap(&self, args: &[&str]) -> String {
        let mut a = vec!["snapshot", "--snapshotter", SNAPSHOTTER];
        a.extend_from_slice(args);
        self.ok(&a)
    }

    /// Make KEY a garbage-collection root in containerd: `ctr snapshot` makes snapshots without
    /// a lease, which containerd's collector (run after every deletion here) would remove.
    pub fn keep(&self, key: &str) {
        self.snap(&["label", key, "containerd.io/gc.root=1"]);
    }

    /// Wait until containerd's collector has removed from serve everything its metadata no longer
    /// has; returns the seconds it took and how many synchronous collections were asked for.
    /// containerd 1.6 drops a deletion's trigger when it lands while a collection runs (the
    /// scheduler skips events older than the collection that just finished), so after a quiet
    /// 10 s ask for one the way `ctr leases rm --sync` does; serve must then be empty.
    pub fn wait_collected(&self, secs: u64) -> (f64, u32) {
        let t0 = std::time::Instant::now();
        let mut nudges = 0;
        let mut last_nudge = t0;
        while !(self.serve_volumes().is_empty() && self.records().is_empty()) {
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "containerd's collector did not remove the snapshots from serve in {secs} s ({nudges} synchronous \
                 collections asked for): volumes {:?}, records {:?}\n{}",
                self.serve_volumes(),
                self.records(),
                self.logs()
            );
            if last_nudge.elapsed() > Duration::from_secs(10) {
                self.collect_now();
                nudges += 1;
                last_nudge = std::time::Instant::now();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        (t0.elapsed().as_secs_f64(), nudges)
    }

    /// A synchronous collection: removing a lease with `--sync` runs the collector and waits.
    pub fn collect_now(&self) {
        let lease = self.ok(&["leases", "create"]);
        self.ok(&["leases", "rm", "--sync", lease.trim()]);
    }

    pub fn snap_fails(&self, args: &[&str]) -> String {
        let mut a = vec!["snapshot", "--snapshotter", SNAPSHOTTER];
        a.extend_from_slice(args);
        self.fails(&a)
    }

    /// The tails of serve's and containerd's logs, for failure messages.
    pub fn logs(&self) -> String {
        let tail = |f: &str| {
            let t = std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        format!("--- serve.log ---\n{}\n--- containerd.log ---\n{}", tail("serve.log"), tail("containerd.log"))
    }

    /// `ctr snapshot ls`: (key, parent, kind) rows.
    pub fn ls(&self) -> Vec<(String, String, String)> {
        self.snap(&["ls"])
            .lines()
            .skip(1)
            .map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                match w.len() {
                    2 => (w[0].to_string(), String::new(), w[1].to_string()),
                    3 => (w[0].to_string(), w[1].to_string(), w[2].to_string()),
                    _ => panic!("unexpected ctr snapshot ls line {l:?}"),
                }
            })
            .collect()
    }

    /// The one mount `ctr snapshot mounts` prints for KEY: (type, source, options).
    pub fn mount_of(&self, key: &str) -> (String, PathBuf, Vec<String>) {
        let out = self.snap(&["mounts", "/target", key]);
        let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "exactly one mount expected: {out}");
        let w: Vec<&str> = lines[0].split_whitespace().collect();
        // mount -t TYPE SOURCE /target [-o OPTS]
        assert_eq!(&w[..2], ["mount", "-t"], "{out}");
        let opts = match w.iter().position(|x| *x == "-o") {
            Some(i) => w[i + 1].split(',').map(str::to_string).collect(),
            None => vec![],
        };
        (w[2].to_string(), PathBuf::from(w[3]), opts)
    }

    /// serve's records, by key (its store under the pool directory).
    pub fn records(&self) -> Vec<serde_json::Value> {
        let dir = self.s.pool_dir().join("serve/snapshots");
        let mut out: Vec<serde_json::Value> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
            .collect();
        out.sort_by_key(|r| r["key"].as_str().unwrap().to_string());
        out
    }

    /// Pool volumes made by serve (`ctrd-*`), by name.
    pub fn serve_volumes(&self) -> BTreeSet<String> {
        volume_list(&self.s)
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["name"].as_str().filter(|n| n.starts_with("ctrd-")).map(str::to_string))
            .collect()
    }
}

impl Drop for Ctrd {
    fn drop(&mut self) {
        if let Some(mut c) = self.containerd.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && c.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.kill_serve();
        // Whatever containerd left mounted under its root (nothing, when tests pass).
        if let Ok(m) = std::fs::read_to_string("/proc/self/mountinfo") {
            for l in m.lines() {
                if let Some(p) = l.split_whitespace().nth(4) {
                    if p.starts_with(path_str(&self.dir)) {
                        let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
                    }
                }
            }
        }
    }
}

fn mount_dev(dev: &Path, fstype: &str, opts: &[String], dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let ro = opts.iter().any(|o| o == "ro");
    let data: Vec<&str> = opts.iter().map(String::as_str).filter(|o| *o != "ro" && *o != "rw").collect();
    let flags = if ro { nix::mount::MsFlags::MS_RDONLY } else { nix::mount::MsFlags::empty() };
    nix::mount::mount(Some(dev), dir, Some(fstype), flags, Some(data.join(",").as_str()))
        .unwrap_or_else(|e| panic!("mount -t {fstype} {} {} -o {opts:?}: {e}", dev.display(), dir.display()));
}

/// The dm name behind /dev/mapper/NAME.
fn dm_name(dev: &Path) -> String {
    dev.file_name().unwrap().to_str().unwrap().to_string()
}

#[test]
fn containerd_snapshots_through_ctr() {
    let c = Ctrd::new("ctrsnap", true);
    let dm = dm();
    // A second serve on the live socket, or on the same pool, is refused; the first keeps it.
    let other = c.dir.join("other.sock");
    for sock in [&c.serve_sock, &other] {
        let e = c.s.cli(&["serve", "--socket", path_str(sock)]);
        assert!(!e.status.success(), "a second serve started on {}", sock.display());
        assert!(text(&e.stderr).contains("already serving"), "{}", text(&e.stderr));
    }
    assert!(std::os::unix::net::UnixStream::connect(&c.serve_sock).is_ok());
    c.snap(&["prepare", "a"]);
    c.keep("a");
    let (ty, dev, opts) = c.mount_of("a");
    assert_eq!(ty, "ext4");
    assert!(opts.contains(&"noinit_itable".to_string()) && !opts.contains(&"ro".to_string()), "{opts:?}");
    assert!(dev.starts_with("/dev/mapper") && dev.exists(), "{}", dev.display());
    let table = dm.table(&dm_name(&dev)).unwrap();
    assert_eq!(table.len(), 1);
    assert_eq!(table[0].target, "thin", "{table:?}");
    // The first layer is a snapshot of the formatted base: one base volume, read-only.
    let vols = volume_list(&c.s);
    let bases: Vec<_> = vols.as_array().unwrap().iter().filter(|v| v["name"].as_str().unwrap_or("").starts_with("base-ext4-")).collect();
    assert_eq!(bases.len(), 1, "{vols}");
    assert_eq!(bases[0]["read_only"], true);

    let mnt = c.dir.join("mnt-a");
    mount_dev(&dev, &ty, &opts, &mnt);
    std::fs::write(mnt.join("layer1"), "one\n").unwrap();
    umount(&mnt).unwrap();

    // Duplicate keys, unknown parents.
    let e = c.snap_fails(&["prepare", "a"]);
    assert!(e.contains("already exists"), "{e}");
    let e = c.snap_fails(&["prepare", "x", "nope"]);
    assert!(e.contains("not found") || e.contains("does not exist"), "{e}");

    // Commit: the same volume, read-only and inactive.
    c.snap(&["commit", "c1", "a"]);
    c.keep("c1");
    let rows = c.ls();
    assert!(rows.iter().any(|r| r.0 == "c1" && r.2 == "Committed"), "{rows:?}");
    assert!(!rows.iter().any(|r| r.0 == "a"), "{rows:?}");
    assert!(dm.info(&dm_name(&dev)).unwrap().is_none(), "a committed layer's device is removed");
    let e = c.snap_fails(&["mounts", "/target", "c1"]);
    assert!(!e.is_empty());
    let u = c.snap(&["usage", "c1"]);
    assert!(u.contains("c1"), "{u}");

    // A child of the committed layer sees its file; writes stay in the child.
    c.snap(&["prepare", "b", "c1"]);
    c.keep("b");
    let (ty_b, dev_b, opts_b) = c.mount_of("b");
    assert_ne!(dev_b, dev);
    let mnt_b = c.dir.join("mnt-b");
    mount_dev(&dev_b, &ty_b, &opts_b, &mnt_b);
    assert_eq!(std::fs::read_to_string(mnt_b.join("layer1")).unwrap(), "one\n");
    std::fs::write(mnt_b.join("only-b"), vec![7u8; 3 << 20]).unwrap();
    nix::unistd::sync();
    umount(&mnt_b).unwrap();

    // A view: mounted ro, without journal replay.
    c.snap(&["view", "v", "c1"]);
    c.keep("v");
    let (ty_v, dev_v, opts_v) = c.mount_of("v");
    assert!(opts_v.contains(&"ro".to_string()) && opts_v.contains(&"noload".to_string()), "{opts_v:?}");
    let mnt_v = c.dir.join("mnt-v");
    mount_dev(&dev_v, &ty_v, &opts_v, &mnt_v);
    assert_eq!(std::fs::read_to_string(mnt_v.join("layer1")).unwrap(), "one\n");
    assert!(!mnt_v.join("only-b").exists());
    assert!(std::fs::write(mnt_v.join("w"), "x").is_err(), "a view is read-only");
    umount(&mnt_v).unwrap();
    let e = c.snap_fails(&["commit", "c2", "v"]);
    assert!(!e.is_empty());

    let rows = c.ls();
    let kinds: BTreeSet<(String, String, String)> = rows.into_iter().collect();
    assert!(kinds.contains(&("b".into(), "c1".into(), "Active".into())), "{kinds:?}");
    assert!(kinds.contains(&("v".into(), "c1".into(), "View".into())), "{kinds:?}");

    // Usage from the thin status: b wrote 3 MiB.
    let u = c.snap(&["usage", "b"]);
    let row = u.lines().find(|l| l.starts_with("b ")).unwrap_or_else(|| panic!("{u}"));
    assert!(row.contains("MiB") || row.contains("GiB"), "usage of b: {u}");

    // Labels reach the backend and persist.
    c.snap(&["label", "b", "containerd.io/snapshot/rcx=yes"]);
    let rec = c.records().into_iter().find(|r| r["key"].as_str().unwrap().ends_with("/b")).unwrap();
    assert_eq!(rec["labels"]["containerd.io/snapshot/rcx"], "yes", "{rec}");

    // A parent with children is not removed.
    let e = c.snap_fails(&["rm", "c1"]);
    assert!(e.contains("children") || e.contains("precondition"), "{e}");
    c.snap(&["rm", "b", "v"]);
    c.snap(&["rm", "c1"]);
    assert!(c.ls().is_empty());
    let e = c.snap_fails(&["rm", "c1"]);
    assert!(e.contains("not found") || e.contains("does not exist"), "{e}");
    let (secs, nudges) = c.wait_collected(180);
    println!("containerd's collector emptied serve {secs:.1} s after the last rm ({nudges} synchronous collection(s) asked for)");
    // The nudge itself works (it is what a dropped trigger relies on) and finds nothing more.
    c.collect_now();
    assert!(c.serve_volumes().is_empty() && c.records().is_empty());
    // Only the base is left in the pool, and no device of a snapshot.
    assert_eq!(volume_list(&c.s).as_array().unwrap().len(), 1);
}

/// An OCI archive of a busybox-static root: oci-layout, index.json, manifest, config, one layer.
fn busybox_oci_archive(dir: &Path, name: &str) -> PathBuf {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "dev", "proc", "sys", "etc", "root", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static");
    for a in ["sh", "cat", "echo", "ls", "test", "mkdir", "touch"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
    }
    std::fs::write(rootfs.join("etc/marker"), "image\n").unwrap();
    let oci = dir.join("oci");
    let blobs = oci.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let layer = dir.join("layer.tar");
    sh(&format!("tar --numeric-owner --owner=0 --group=0 -C '{}' -cf '{}' .", rootfs.display(), layer.display()));
    let put = |bytes: &[u8]| -> (String, usize) {
        let tmp = dir.join("blob.tmp");
        std::fs::write(&tmp, bytes).unwrap();
        let sum = sh(&format!("sha256sum '{}'", tmp.display())).split_whitespace().next().unwrap().to_string();
        std::fs::rename(&tmp, blobs.join(&sum)).unwrap();
        (format!("sha256:{sum}"), bytes.len())
    };
    let (layer_d, layer_n) = put(&std::fs::read(&layer).unwrap());
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_d]},
    });
    let (config_d, config_n) = put(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config_n},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_d, "size": layer_n}],
    });
    let (man_d, man_n) = put(manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": man_d, "size": man_n,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "1"},
        }],
    });
    std::fs::write(oci.join("index.json"), index.to_string()).unwrap();
    std::fs::write(oci.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let archive = dir.join("image.tar");
    sh(&format!("tar -C '{}' -cf '{}' oci-layout index.json blobs", oci.display(), archive.display()));
    archive
}

#[test]
fn containerd_runs_an_imported_image_with_runc() {
    let c = Ctrd::new("ctrrun", false);
    let image = "docker.io/library/rcxbox:1";
    let archive = busybox_oci_archive(&c.dir, image);
    c.ok(&["image", "import", "--snapshotter", SNAPSHOTTER, path_str(&archive)]);
    let imgs = c.ok(&["image", "ls", "-q"]);
    assert!(imgs.lines().any(|l| l == image), "{imgs}");
    // The unpacked layer is a committed snapshot: one volume besides the base, read-only.
    let rows = c.ls();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].2, "Committed");
    assert_eq!(c.serve_volumes().len(), 1);

    let run = |id: &str, script: &str| -> Output {
        c.ctr(&["run", "--snapshotter", SNAPSHOTTER, "--rm", image, id, "/bin/sh", "-c", script])
    };
    let o = run("c1", "echo one > /root/f && cat /root/f /etc/marker && ls /");
    assert!(o.status.success(), "ctr run c1: {}{}\n{}", text(&o.stdout), text(&o.stderr), c.logs());
    let out = text(&o.stdout);
    assert!(out.starts_with("one\nimage\n"), "{out}");
    assert!(out.contains("bin") && out.contains("etc"), "{out}");
    let o = run("c2", "test -e /root/f && echo leaked || echo clean; cat /etc/marker; exit 3");
    assert_eq!(o.status.code(), Some(3), "exit status of the container: {}{}", text(&o.stdout), text(&o.stderr));
    assert_eq!(text(&o.stdout), "clean\nimage\n");
    // --rm removed both containers' snapshots: only the image layer is left.
    wait_for("container snapshots removed", 30, || (c.serve_volumes().len() == 1).then_some(()));
    let rows = c.ls();
    assert_eq!(rows.len(), 1, "{rows:?}");
    c.ok(&["image", "rm", image]);
}

#[test]
fn containerd_serve_killed_during_prepares_then_restarted() {
    let mut c = Ctrd::new("ctrkill", true);
    c.snap(&["prepare", "base-a"]);
    c.snap(&["commit", "layer", "base-a"]);
    // Two streams of prepares, one ctr process per call.
    let streams: Vec<Child> = (0..2)
        .map(|s| {
            let script = format!(
                "for i in $(seq 1 15); do ctr --address '{}' -n {NS} snapshot --snapshotter {SNAPSHOTTER} prepare k{s}-$i layer >/dev/null 2>&1 && echo ok k{s}-$i || echo fail k{s}-$i; done",
                c.sock.display()
            );
            Command::new("sh")
                .args(["-c", &script])
                .env("PATH", c.path_env())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // Kill serve once a few prepares have landed.
    wait_for("prepares to land", 120, || (c.records().len() >= 6).then_some(()));
    c.kill_serve();
    std::thread::sleep(Duration::from_millis(500));
    c.start_serve();
    let mut results = String::new();
    for s in streams {
        let o = s.wait_with_output().unwrap();
        results.push_str(&text(&o.stdout));
    }
    // Serve answers again.
    wait_for("prepares through the restarted serve", 60, || {
        c.ctr(&["snapshot", "--snapshotter", SNAPSHOTTER, "prepare", "after", "layer"]).status.success().then_some(())
    });

    // Every record is settled, every record's volume exists, and serve owns no other volume.
    let recs = c.records();
    for r in &recs {
        assert_eq!(r["state"], "ready", "{r}");
    }
    let rec_vols: BTreeSet<String> = recs.iter().map(|r| r["volume"].as_str().unwrap().to_string()).collect();
    assert_eq!(rec_vols, c.serve_volumes(), "records and pool disagree; prepares: {results}\n{}", c.logs());
    // containerd's view: every snapshot it lists is in serve and mountable (its device live).
    let listed: Vec<String> = c.ls().into_iter().map(|r| r.0).collect();
    assert!(listed.contains(&"after".to_string()) && listed.contains(&"layer".to_string()));
    for k in &listed {
        assert!(recs.iter().any(|r| r["key"].as_str().unwrap().ends_with(&format!("/{k}"))), "{k} not in serve: {recs:?}");
        if k != "layer" {
            let (_, dev, _) = c.mount_of(k);
            assert!(dev.exists(), "{k}: {}", dev.display());
        }
    }
    // Every prepare ctr reported as done is listed by containerd.
    for l in results.lines().filter_map(|l| l.strip_prefix("ok ")) {
        assert!(listed.iter().any(|k| k == l), "{l} succeeded but containerd does not list it");
    }
    // At most the call in flight at the kill is known to serve but not to containerd; removing
    // everything through containerd (whose garbage collector walks serve) leaves the pool empty.
    assert!(recs.len() <= listed.len() + 1, "serve has {} snapshots, containerd {}", recs.len(), listed.len());
    let mut keys: Vec<&str> = listed.iter().filter(|k| *k != "layer").map(String::as_str).collect();
    keys.sort();
    let mut args = vec!["rm"];
    args.extend(keys);
    c.snap(&args);
    c.snap(&["rm", "layer"]);
    c.wait_collected(120);
    assert!(c.ls().is_empty());
    // The pool's own transaction left nothing half-done.
    assert!(!c.s.pool_dir().join("intent.json").exists());
}

/// The snapshotter in-process (no containerd): every crash state a record can be left in is
/// reconciled with the pool, and prepares from 8 threads at once all land.
#[test]
fn containerd_serve_reconciles_every_interrupted_state_and_prepares_in_parallel() {
    use rcx_dm::internals::serve_store::{Kind, State};
    use rcx_dm::serve::{Options, Service};
    use std::collections::BTreeMap;

    let s = Scenario::new("srvrec");
    s.ok(&["pool", "create", "--data-size", "4G", "--meta-size", "32M"]);
    let opts = Options { size_bytes: 64 << 20, ..Options::default() };
    let svc = Service::new(lib_pool(&s), opts.clone()).unwrap();
    svc.create(Kind::Active, "a", "", BTreeMap::new()).unwrap();
    svc.commit("L", "a", BTreeMap::from([("l".to_string(), "1".to_string())])).unwrap();
    assert_eq!(svc.stat("L").unwrap().labels["l"], "1");
    assert_eq!(svc.stat("a").unwrap_err().code(), containerd_snapshots::tonic::Code::NotFound);

    // Eight threads, 24 prepares from L.
    std::thread::scope(|sc| {
        for t in 0..8 {
            let svc = &svc;
            sc.spawn(move || {
                for i in 0..3 {
                    let m = svc.create(Kind::Active, &format!("p{t}-{i}"), "L", BTreeMap::new()).unwrap();
                    assert_eq!(m.len(), 1);
                    assert!(Path::new(&m[0].source).exists());
                }
            });
        }
    });
    let listed = svc.list().unwrap();
    assert_eq!(listed.len(), 25);
    let vols: BTreeSet<String> = listed.iter().map(|r| r.volume.clone()).collect();
    assert_eq!(vols.len(), 25, "every snapshot has its own volume");
    assert_eq!(svc.remove("L").unwrap_err().code(), containerd_snapshots::tonic::Code::FailedPrecondition);
    assert_eq!(svc.create(Kind::Active, "p0-0", "L", BTreeMap::new()).unwrap_err().code(), containerd_snapshots::tonic::Code::AlreadyExists);

    // Forge the states a SIGKILL can leave.
    let pool = lib_pool(&s);
    let store = svc.store();
    let mut r = store.get("p0-0").unwrap().unwrap();
    // A prepare killed after its volume was made: rolled back.
    r.state = State::Preparing;
    store.put(&r).unwrap();
    let preparing_vol = r.volume.clone();
    // A remove killed before the delete: rolled forward.
    let mut r = store.get("p0-1").unwrap().unwrap();
    r.state = State::Removing;
    store.put(&r).unwrap();
    // A commit killed after its record: rolled forward (p1-0's volume becomes C, p1-0 goes).
    let mut c = store.get("p1-0").unwrap().unwrap();
    c.key = "C".into();
    c.kind = Kind::Committed;
    c.state = State::Committing { from: "p1-0".into() };
    store.put(&c).unwrap();
    // A record whose volume vanished: dropped.
    let gone = store.get("p2-0").unwrap().unwrap();
    pool.delete(&rcx_dm::VolRef::Name(gone.volume.clone()), true).unwrap();
    // A volume no record names (killed between the pool's commit and... nothing): deleted.
    let orphan = pool.snapshot_internal(None, &rcx_dm::VolRef::Name(store.get("L").unwrap().unwrap().volume), None, Some("ctrd-orphan")).unwrap();
    drop(svc);

    let svc = Service::new(lib_pool(&s), opts).unwrap();
    svc.reconcile().unwrap();
    let store = svc.store();
    assert!(store.get("p0-0").unwrap().is_none());
    assert!(store.get("p0-1").unwrap().is_none());
    assert!(store.get("p2-0").unwrap().is_none());
    assert!(store.get("p1-0").unwrap().is_none());
    let c = svc.stat("C").unwrap();
    assert_eq!(c.kind, Kind::Committed);
    let cv = lib_pool(&s).volume(&rcx_dm::VolRef::Name(c.volume.clone())).unwrap();
    assert!(cv.read_only && !cv.active, "{cv:?}");
    let names: BTreeSet<String> = lib_pool(&s).volumes().unwrap().into_iter().filter_map(|v| v.name).collect();
    assert!(!names.contains(&preparing_vol) && !names.contains("ctrd-orphan"), "{names:?}");
    assert!(lib_pool(&s).volume(&rcx_dm::VolRef::Id(orphan.id)).is_err());
    let recs: BTreeSet<String> = svc.list().unwrap().into_iter().map(|r| r.volume).collect();
    let ours: BTreeSet<String> = names.into_iter().filter(|n| n.starts_with("ctrd-")).collect();
    assert_eq!(recs, ours);
    assert!(store.all().unwrap().iter().all(|r| r.state == State::Ready));
    // A child of the rolled-forward commit works.
    svc.create(Kind::View, "v", "C", BTreeMap::new()).unwrap();
    assert_eq!(svc.mounts("v").unwrap()[0].options[0], "ro");
}

/// A record serve cannot settle at start-up (here its delete fails: an injected error after the
/// delete's intent) must not keep serve down, which would take every container of containerd
/// with it: serve logs it, serves, hides the record from List, and the next start settles it.
/// The soak found serve exiting 1 at start-up instead.
#[test]
fn containerd_serve_starts_when_a_record_cannot_be_settled_and_settles_it_next_time() {
    use rcx_dm::internals::serve_store::{Kind, State};
    use rcx_dm::serve::{Options, Service};
    use std::collections::BTreeMap;

    let s = Scenario::new("srvfail");
    s.ok(&["pool", "create", "--data-size", "1G"]);
    let opts = Options { size_bytes: 64 << 20, ..Options::default() };
    let svc = Service::new(lib_pool(&s), opts).unwrap();
    svc.create(Kind::Active, "kept", "", BTreeMap::new()).unwrap();
    svc.create(Kind::Active, "dying", "", BTreeMap::new()).unwrap();
    // A remove SIGKILLed before its delete.
    let mut r = svc.store().get("dying").unwrap().unwrap();
    let dying_vol = r.volume.clone();
    r.state = State::Removing;
    svc.store().put(&r).unwrap();
    drop(svc);

    let sock = s.root.join("serve.sock");
    let log = s.root.join("serve.log");
    let spawn = |fault: Option<&str>| {
        let mut c = Command::new(bin());
        c.args(["serve", "--no-monitor", "--size", "64M", "--socket", path_str(&sock)])
            .env("RCX_DM_ROOT", &s.root)
            .env("RCX_DM_POOL", &s.pool)
            .env("RUST_LOG", "rcx_dm=info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap());
        if let Some(f) = fault {
            c.env("RCX_DM_FAIL_AT", f).env("RCX_DM_FAIL_MODE", "error");
        }
        c.spawn().expect("spawn rcx-dm serve")
    };

    let mut serve = spawn(Some("delete.recorded"));
    let mut client = crate::grpc::Snapshotter::connect_within(&sock, 120).unwrap_or_else(|e| {
        panic!("serve did not come up: {e}\n{}", std::fs::read_to_string(&log).unwrap_or_default())
    });
    assert!(serve.try_wait().unwrap().is_none(), "serve exited:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("could not settle this snapshot") && logged.contains("dying"), "serve's log:\n{logged}");
    let names: BTreeSet<String> = client.list().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, BTreeSet::from(["kept".to_string()]), "List while the remove is unsettled");
    client.prepare("fresh", "").expect("a prepare while one record is unsettled");
    let _ = serve.kill();
    let _ = serve.wait();

    let mut serve = spawn(None);
    let mut client = crate::grpc::Snapshotter::connect_within(&sock, 120).unwrap();
    let names: BTreeSet<String> = client.list().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, BTreeSet::from(["kept".to_string(), "fresh".to_string()]));
    let _ = serve.kill();
    let _ = serve.wait();
    let svc = Service::new(lib_pool(&s), Options::default()).unwrap();
    assert!(svc.store().get("dying").unwrap().is_none(), "the unsettled remove was not finished by the next start");
    let vols: BTreeSet<String> = lib_pool(&s).volumes().unwrap().into_iter().filter_map(|v| v.name).collect();
    assert!(!vols.contains(&dying_vol), "the removed snapshot's volume is still there: {vols:?}");
}
