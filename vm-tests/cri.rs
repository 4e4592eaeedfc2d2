//! A Kubernetes node's path (issue 16): Debian's containerd 1.6 with the CRI plugin on and
//! `snapshotter = "rcx-dm"` exactly as the README configures it, a real registry holding images
//! the tests build (an app image and the sandbox "pause" image), and the test playing kubelet
//! over the CRI: pull, pods, containers, exec, stats, logs, removal, and serve killed with -9
//! while pods run. Host-network pods: no CNI is needed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::containerd::{CriNode, CriSnapshotter, Ctrd, CRI_TOML};
use crate::cri_client::{container_config, pod_config, ContainerState, Cri};
use crate::grpc::Snapshotter;
use crate::oci_build::{tar_of, write_layout_with, Comp, E};
use crate::registry::Registry;

/// The app image's payload: large enough that a copy per pod would show in the pool's usage.
const PAYLOAD: usize = 32 << 20;
/// What a pod's container runs: a line for its log, then sleep until stopped (SIGTERM kills
/// sleep, which is not the pod's pid 1: exit status 143).
const MAIN: &[&str] = &["/bin/sh", "-c", "echo log-line-from-main; exec sleep 2147483647"];

pub(crate) struct Node {
    // Field order is drop order: containerd and serve, then the pool, then the registry.
    pub(crate) c: Ctrd,
    _reg: Registry,
    _reg_dir: tempfile::TempDir,
    /// "127.0.0.1:PORT/app:1"
    pub(crate) app: String,
    pub(crate) sandbox: String,
    /// `sha256sum` of the payload, as busybox prints it.
    payload_sum: String,
}

/// Build and push the app and pause images, then start serve and a CRI containerd.
pub(crate) fn node(tag: &str, snapshotter: CriSnapshotter) -> Node {
    let reg_dir = tempfile::Builder::new().prefix("cri-reg-").tempdir_in(scratch()).unwrap();
    let reg = Registry::start(&reg_dir.path().join("registry"), false);
    let bb = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static, from tools/setup)");
    let payload = pattern(16, PAYLOAD);
    // The digest by coreutils: a debug build's sha256 of 32 MiB is slow under emulation.
    let payload_file = reg_dir.path().join("payload");
    std::fs::write(&payload_file, &payload).unwrap();
    let sum = sh(&format!("sha256sum {}", payload_file.display())).split_whitespace().next().unwrap().to_string();
    let applets = ["sh", "cat", "echo", "sleep", "dd", "sync", "sha256sum", "test", "ls", "hostname"];
    let links: Vec<String> = applets.iter().map(|a| format!("bin/{a}")).collect();
    let mut app = vec![E::Dir("bin", 0o755), E::File("bin/busybox", 0o755, &bb)];
    app.extend(links.iter().map(|l| E::Symlink(l, "busybox")));
    app.extend([
        E::Dir("etc", 0o755),
        E::File("etc/marker", 0o644, b"image\n"),
        E::Dir("data", 0o755),
        E::File("data/payload", 0o644, &payload),
        E::Dir("root", 0o700),
        E::Dir("tmp", 0o1777),
    ]);
    let layouts = reg_dir.path().join("layouts");
    write_layout_with(&layouts.join("app"), &[(tar_of(&app), Comp::Plain)], serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]}));
    // The sandbox image: whatever kubelet's pause does, sleep until killed (CRI stops a sandbox
    // with SIGKILL).
    let pause = [E::Dir("bin", 0o755), E::File("bin/busybox", 0o755, &bb)];
    write_layout_with(
        &layouts.join("pause"),
        &[(tar_of(&pause), Comp::Gzip)],
        serde_json::json!({"Entrypoint": ["/bin/busybox", "sleep", "2147483647"]}),
    );
    reg.push_layout(&layouts.join("app"), None, "app:1");
    reg.push_layout(&layouts.join("pause"), None, "pause:1");
    let sandbox = reg.reference("pause:1");
    let c = Ctrd::with_cri(tag, &CriNode { sandbox_image: sandbox.clone(), registry: reg.addr.clone(), snapshotter });
    Node { app: reg.reference("app:1"), sandbox, payload_sum: format!("{sum}  /data/payload\n"), c, _reg: reg, _reg_dir: reg_dir }
}

impl Node {
    pub(crate) fn cri(&self) -> Cri {
        Cri::connect_within(&self.c.sock, 120).unwrap_or_else(|e| panic!("the CRI did not answer: {e}\n{}", self.c.logs()))
    }

    fn serve(&self) -> Snapshotter {
        Snapshotter::connect_within(&self.c.serve_sock, 60).unwrap_or_else(|e| panic!("serve: {e}"))
    }

    /// Σ serve's Usage over every snapshot it holds: (bytes, inodes).
    fn serve_usage_total(&self) -> (u64, u64) {
        let mut s = self.serve();
        let mut total = (0, 0);
        for i in s.list().unwrap() {
            let (b, n) = s.usage(&i.name).unwrap_or_else(|e| panic!("Usage {}: {e}", i.name));
            total.0 += b as u64;
            total.1 += n as u64;
        }
        total
    }

    /// serve's key of containerd's snapshot `name` (backend keys are `NAMESPACE/N/NAME`).
    fn serve_key(&self, name: &str) -> String {
        let mut s = self.serve();
        let keys: Vec<String> = s.list().unwrap().into_iter().map(|i| i.name).collect();
        keys.iter().find(|k| k.ends_with(&format!("/{name}"))).cloned().unwrap_or_else(|| panic!("serve has no snapshot {name}: {keys:?}"))
    }

    /// Data the pool has handed out, in bytes (`pool status --json`).
    fn pool_used(&self) -> u64 {
        let st = pool_status(&self.c.s);
        st["data_used_blocks"].as_u64().unwrap_or_else(|| panic!("data_used_blocks in {st}")) * st["block_bytes"].as_u64().unwrap()
    }

    /// RunPodSandbox, then a container of the app image running MAIN: (pod, container, config).
    pub(crate) fn start_pod(&self, cri: &mut Cri, name: &str) -> (String, String, PathBuf) {
        self.start_pod_within(cri, name, 0)
    }

    /// [`Node::start_pod`], RunPodSandbox tried again for up to `secs` seconds while it fails, as
    /// kubelet does (containerd's connection to a restarted serve comes back within its backoff).
    fn start_pod_within(&self, cri: &mut Cri, name: &str, secs: u64) -> (String, String, PathBuf) {
        let logs = self.c.dir.join("pods").join(name);
        let pc = pod_config(name, &logs);
        let deadline = Instant::now() + Duration::from_secs(secs);
        let pod = loop {
            match cri.run_pod(&pc) {
                Ok(p) => break p,
                Err(e) if Instant::now() < deadline => {
                    println!("RunPodSandbox {name} failed, trying again: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => panic!("RunPodSandbox {name}: {e}\n{}", self.c.logs()),
            }
        };
        let cfg = container_config("main", &self.app, MAIN, "main/0.log");
        let id = cri.create_container(&pod, cfg, &pc).unwrap_or_else(|e| panic!("CreateContainer in {name}: {e}\n{}", self.c.logs()));
        cri.start_container(&id).unwrap_or_else(|e| panic!("StartContainer in {name}: {e}\n{}", self.c.logs()));
        cri.wait_state(&id, ContainerState::ContainerRunning, 120);
        (pod, id, logs)
    }

    /// Stop and remove the container and its pod, as kubelet does when a pod is deleted.
    pub(crate) fn end_pod(&self, cri: &mut Cri, pod: &str, id: &str) {
        cri.stop_container(id, 10).unwrap();
        cri.remove_container(id).unwrap();
        cri.stop_pod(pod).unwrap();
        cri.remove_pod(pod).unwrap();
    }

    /// `cmd` in container `id` must exit 0; its stdout.
    fn exec_ok(&self, cri: &mut Cri, id: &str, cmd: &[&str]) -> String {
        let (code, out, err) = cri.exec_sync(id, cmd, 60).unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {e}\n{}", self.c.logs()));
        assert_eq!(code, 0, "ExecSync {cmd:?}: stdout {out:?} stderr {err:?}");
        out
    }

    /// Remove both images, let containerd's collector run: serve and the pool must be empty.
    fn assert_all_collected(&self, cri: &mut Cri) {
        cri.remove_image(&self.app).unwrap();
        cri.remove_image(&self.sandbox).unwrap();
        assert!(cri.list_images().unwrap().is_empty(), "{:?}", cri.list_images());
        assert!(cri.list_pods().unwrap().is_empty() && cri.list_containers().unwrap().is_empty());
        let (secs, nudges) = self.c.wait_collected(180);
        println!("containerd's collector emptied serve {secs:.1} s after the last removal ({nudges} synchronous collection(s) asked for)");
        let vols = volume_list(&self.c.s);
        let names: Vec<&str> = vols.as_array().unwrap().iter().filter_map(|v| v["name"].as_str()).collect();
        assert!(names.iter().all(|n| !n.starts_with("ctrd-")), "serve's volumes left in the pool: {names:?}");
    }
}

/// The mount of `dir` in /proc/self/mountinfo: (source, fstype).
fn mount_at(dir: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (pre.split_whitespace().nth(4)? == path_str(dir)).then(|| {
            let w: Vec<&str> = post.split_whitespace().collect();
            (w[1].to_string(), w[0].to_string())
        })
    })
}

/// The whole kubelet sequence for one pod, in the order the issue gives it.
#[test]
fn cri_kubelet_runs_a_pod_on_rcx_dm() {
    assert!(include_str!("../README.md").contains(CRI_TOML), "the README's CRI snippet is not the one this test runs:\n{CRI_TOML}");
    let n = node("crikube", CriSnapshotter::RcxDm);
    let mut cri = n.cri();

    let v = cri.version().unwrap();
    assert_eq!((v.runtime_name.as_str(), v.runtime_api_version.as_str()), ("containerd", "v1"), "{v:?}");

    // PullImage from the registry: unpacked into rcx-dm (a committed snapshot in serve).
    let t = Instant::now();
    let image_id = cri.pull_image(&n.app, None).unwrap_or_else(|e| panic!("PullImage {}: {e}\n{}", n.app, n.c.logs()));
    println!("PullImage of a {} MiB image: {:.1} s", PAYLOAD >> 20, t.elapsed().as_secs_f64());
    assert!(image_id.starts_with("sha256:"), "{image_id}");
    let recs = n.c.records();
    assert_eq!(recs.len(), 1, "one layer, one committed snapshot: {recs:?}");
    assert_eq!(recs[0]["kind"], "committed", "{}", recs[0]);

    let img = cri.image_status(&n.app).unwrap().expect("ImageStatus: the pulled image is known");
    assert_eq!(img.id, image_id);
    assert!(img.repo_tags.contains(&n.app), "{img:?}");
    assert!(img.size > PAYLOAD as u64, "{img:?}");

    // ImageFsInfo: containerd sums the snapshotter's Usage; it must be serve's figures, which
    // are the layer volume's mapped pool blocks.
    let want = n.serve_usage_total();
    assert!(want.0 >= PAYLOAD as u64 && want.0 <= n.pool_used(), "serve's usage {want:?}, pool {}", n.pool_used());
    let fs = wait_for("ImageFsInfo to report serve's usage", 60, || {
        let fs = cri.image_fs_info().unwrap();
        let got = (fs[0].used_bytes.as_ref()?.value, fs[0].inodes_used.as_ref()?.value);
        (got == want).then_some(fs)
    });
    let mp = &fs[0].fs_id.as_ref().unwrap().mountpoint;
    assert!(mp.ends_with("io.containerd.snapshotter.v1.rcx-dm"), "{mp}");
    println!("ImageFsInfo: {} bytes, {} inodes (serve's Usage summed)", want.0, want.1);

    // RunPodSandbox, CreateContainer, StartContainer: the time kubelet waits for a pod.
    let t = Instant::now();
    let (pod, id, logs) = n.start_pod(&mut cri, "p1");
    println!("RunPodSandbox to a running container: {:.2} s", t.elapsed().as_secs_f64());
    // The container's root is an rcx-dm device, mounted where containerd's runc shim runs it.
    let key = n.serve_key(&id);
    let rootfs = n.c.dir.join("state/io.containerd.runtime.v2.task/k8s.io").join(&id).join("rootfs");
    let (src, fstype) = mount_at(&rootfs).unwrap_or_else(|| panic!("{} is not a mount point", rootfs.display()));
    let mounts = n.serve().mounts(&key).unwrap();
    assert_eq!((src.as_str(), fstype.as_str()), (mounts[0].source.as_str(), "ext4"), "{mounts:?}");

    // ExecSync: reads the image, writes the container's own layer.
    assert_eq!(n.exec_ok(&mut cri, &id, &["cat", "/etc/marker"]), "image\n");
    assert_eq!(n.exec_ok(&mut cri, &id, &["sha256sum", "/data/payload"]), n.payload_sum);
    let out = n.exec_ok(&mut cri, &id, &["sh", "-c", "echo written-by-exec > /root/w && dd if=/dev/zero of=/root/fill bs=1M count=8 2>/dev/null && sync && cat /root/w"]);
    assert_eq!(out, "written-by-exec\n");
    assert_eq!(std::fs::read_to_string(rootfs.join("root/w")).unwrap(), "written-by-exec\n", "the write is on the rcx-dm device");
    let (code, _, _) = cri.exec_sync(&id, &["sh", "-c", "exit 7"], 60).unwrap();
    assert_eq!(code, 7, "ExecSync's exit status");

    let st = cri.container_status(&id).unwrap();
    assert_eq!(st.state, ContainerState::ContainerRunning as i32, "{st:?}");
    assert!(img.repo_digests.contains(&st.image_ref), "ContainerStatus' image_ref {} is not the image's digest {:?}", st.image_ref, img.repo_digests);
    assert_eq!(Path::new(&st.log_path), logs.join("main/0.log"), "{st:?}");

    // ContainerStats: the writable layer is serve's Usage of the container's snapshot (the
    // thin device's mapped bytes: 8 MiB written and more).
    let stats = wait_for("ContainerStats to report serve's Usage of the container's snapshot", 60, || {
        let (b, i) = n.serve().usage(&key).unwrap();
        let s = cri.container_stats(&id).unwrap();
        let w = s.writable_layer.clone()?;
        (w.used_bytes?.value == b as u64 && w.inodes_used?.value == i as u64).then_some((b, i))
    });
    assert!(stats.0 >= 8 << 20, "{stats:?}");
    println!("ContainerStats writable layer: {} bytes, {} inodes", stats.0, stats.1);

    // The container's log, in CRI's format.
    let log = std::fs::read_to_string(logs.join("main/0.log")).unwrap();
    assert!(log.lines().any(|l| l.ends_with(" stdout F log-line-from-main")), "{log}");

    // StopContainer: SIGTERM ends it well inside the grace period.
    let t = Instant::now();
    cri.stop_container(&id, 30).unwrap();
    let st = cri.wait_state(&id, ContainerState::ContainerExited, 60);
    assert_eq!(st.exit_code, 143, "SIGTERM's exit status: {st:?}");
    assert!(t.elapsed() < Duration::from_secs(30), "stopped by SIGKILL after the grace period, not SIGTERM");
    cri.remove_container(&id).unwrap();
    assert!(cri.container_status(&id).is_err(), "a removed container is unknown");
    cri.stop_pod(&pod).unwrap();
    cri.remove_pod(&pod).unwrap();
    n.assert_all_collected(&mut cri);
}

/// Two pods of one image at once share its blocks; serve killed with -9 under them leaves them
/// running, new pods start once it is back, and nothing leaks.
#[test]
fn cri_two_pods_share_an_image_and_outlive_a_serve_kill() {
    let mut n = node("crishare", CriSnapshotter::RcxDm);
    let mut cri = n.cri();
    cri.pull_image(&n.app, None).unwrap_or_else(|e| panic!("PullImage: {e}\n{}", n.c.logs()));
    // The sandbox image first, so the pods' figures below count only the pods.
    cri.pull_image(&n.sandbox, None).unwrap();
    let image_bytes = n.serve_usage_total().0;

    let before = n.pool_used();
    let (pod_a, a, _) = n.start_pod(&mut cri, "pa");
    assert_eq!(n.exec_ok(&mut cri, &a, &["sha256sum", "/data/payload"]), n.payload_sum);
    let one = n.pool_used();
    let (pod_b, b, _) = n.start_pod(&mut cri, "pb");
    assert_eq!(n.exec_ok(&mut cri, &b, &["sha256sum", "/data/payload"]), n.payload_sum);
    let two = n.pool_used();
    println!(
        "pool data used: {} MiB with the images ({} MiB theirs), +{} KiB for the first pod, +{} KiB for the second",
        before >> 20,
        image_bytes >> 20,
        (one - before) >> 10,
        (two - one) >> 10
    );
    assert!(image_bytes >= PAYLOAD as u64, "{image_bytes}");
    // Each pod costs its writable layers' writes (journal, superblocks), not a copy of the image.
    assert!(two - one < PAYLOAD as u64 / 4, "the second pod took {} bytes of pool: not sharing the image's blocks", two - one);
    assert!(one - before < PAYLOAD as u64 / 4, "the first pod took {} bytes of pool", one - before);

    // serve killed with -9: the pods' devices stay, the containers run and write.
    n.c.kill_serve();
    for (id, name) in [(&a, "a"), (&b, "b")] {
        let st = cri.container_status(id).unwrap();
        assert_eq!(st.state, ContainerState::ContainerRunning as i32, "{st:?}");
        let out = n.exec_ok(&mut cri, id, &["sh", "-c", &format!("echo still-{name} > /root/alive && sync && cat /root/alive /etc/marker")]);
        assert_eq!(out, format!("still-{name}\nimage\n"));
    }
    let pods = cri.list_pods().unwrap();
    assert!(pods.iter().all(|p| p.state == 0), "every pod still ready (SANDBOX_READY = 0): {pods:?}");

    // serve back: a new pod starts.
    n.c.start_serve();
    let t = Instant::now();
    let (pod_c, c, _) = n.start_pod_within(&mut cri, "pc", 120);
    println!("a new pod ran {:.1} s after serve was restarted", t.elapsed().as_secs_f64());
    assert_eq!(n.exec_ok(&mut cri, &c, &["cat", "/etc/marker"]), "image\n");
    // serve's records and the pool agree: nothing half-made by the kill.
    let recs = n.c.records();
    assert!(recs.iter().all(|r| r["state"] == "ready"), "{recs:?}");
    let rec_vols: std::collections::BTreeSet<String> = recs.iter().map(|r| r["volume"].as_str().unwrap().to_string()).collect();
    assert_eq!(rec_vols, n.c.serve_volumes(), "serve's records and the pool disagree");

    for (pod, id) in [(&pod_a, &a), (&pod_b, &b), (&pod_c, &c)] {
        n.end_pod(&mut cri, pod, id);
    }
    n.assert_all_collected(&mut cri);
}
