//! `rcx-dm image pull` against a real registry (Debian's docker-registry, vm-tests/registry.rs)
//! fed by skopeo from layouts the tests build: multi-layer images run, shared layers not
//! fetched twice, credentials, bad input that leaves nothing behind, a killed pull resumed.

use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::common::*;
use crate::oci_build::*;
use crate::registry::{Registry, PASSWORD, USER};

fn layout(tag: &str, layers: &[(Vec<u8>, Comp)]) -> PathBuf {
    let dir = scratch().join(format!("pull-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write_layout(&dir, layers);
    dir
}

fn regdir(tag: &str) -> PathBuf {
    let d = scratch().join(format!("reg-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn file_layer(path: &str, body: &[u8]) -> Vec<u8> {
    let (dir, _) = path.rsplit_once('/').unwrap();
    tar_of(&[E::Dir(dir, 0o755), E::File(path, 0o644, body)])
}

/// What a failed pull must not change: volumes (id, name, parent), images, the download area.
fn snapshot(s: &Scenario) -> (Vec<(u64, String, Option<u64>)>, serde_json::Value, Vec<String>) {
    let dl = s.pool_dir().join("images/downloads/blobs/sha256");
    let mut files: Vec<String> = std::fs::read_dir(&dl)
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    files.sort();
    let vols = s.json(&["list", "--json"]);
    let vols = vols
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["id"].as_u64().unwrap(), v["name"].as_str().unwrap_or("-").to_string(), v["parent"].as_u64()))
        .collect();
    (vols, s.json(&["image", "list", "--json"]), files)
}

fn pull_fails(s: &Scenario, args: &[&str], want: &[&str]) -> String {
    let before = snapshot(s);
    let mut a = vec!["image", "pull"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--size", "64M"]);
    let err = s.fails(&a);
    for w in want {
        assert!(err.contains(w), "pull {args:?}: the error should say '{w}':\n{err}");
    }
    assert_eq!(snapshot(s), before, "pull {args:?} failed but changed the pool:\n{err}");
    err
}

/// The registry's stored copy of a blob.
fn stored_blob(reg: &Registry, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    reg.dir.join("storage/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
}

/// The blob digests of a layout's only manifest's layers.
fn layer_digests(dir: &Path) -> Vec<String> {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("blobs/sha256").join(&m[7..])).unwrap()).unwrap();
    manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect()
}

#[test]
fn pull_multi_layer_image_runs_and_shares_its_layers() {
    let s = Scenario::new("pull");
    s.ok(&["pool", "create", "--data-size", "2G"]);
    let reg = Registry::start(&regdir("share"), false);
    let base = busybox_base();
    let a = layout("a", &[(base.clone(), Comp::Gzip), (file_layer("etc/a", b"from a\n"), Comp::Plain), (file_layer("opt/b", b"from b\n"), Comp::Gzip)]);
    reg.push_layout(&a, None, "app:1");
    let t = std::time::Instant::now();
    let r = s.json(&["image", "pull", &reg.reference("app:1"), "--size", "64M", "--json"]);
    println!("pull of 3 layers ({} bytes fetched): {:?}", r["bytes_fetched"], t.elapsed());
    assert_eq!(r["image"]["name"], "app-1", "{r}");
    assert_eq!(r["layers_fetched"].as_array().unwrap().len(), 3, "{r}");
    assert_eq!(r["layers_reused"].as_array().unwrap().len(), 0, "{r}");
    assert!(r["bytes_fetched"].as_u64().unwrap() > 100_000, "{r}");
    let out = s.ok(&["run", "--rm", "app-1", "--", "/bin/sh", "-c", "cat /etc/a /opt/b; test -x /bin/busybox && echo bb"]);
    assert_eq!(out, "from a\nfrom b\nbb\n");
    // Every layer a read-only volume named by its chain id; the download area is empty again.
    let vols = s.json(&["list", "--json"]);
    let layers = vols.as_array().unwrap().iter().filter(|v| v["name"].as_str().unwrap_or("").starts_with("layer-")).count();
    assert_eq!(layers, 3, "{vols}");
    assert_eq!(snapshot(&s).2, Vec::<String>::new());

    // A second image on the same two lower layers: only its own layer is fetched.
    let b = layout("b", &[(base, Comp::Gzip), (file_layer("etc/a", b"from a\n"), Comp::Plain), (file_layer("srv/c", b"from c\n"), Comp::Gzip)]);
    reg.push_layout(&b, None, "app:2");
    let t = std::time::Instant::now();
    let r2 = s.json(&["image", "pull", &reg.reference("app:2"), "--size", "64M", "--json"]);
    println!("pull sharing 2 of 3 layers ({} bytes fetched): {:?}", r2["bytes_fetched"], t.elapsed());
    let own = layer_digests(&b)[2].clone();
    assert_eq!(r2["layers_fetched"], serde_json::json!([own]), "{r2}");
    assert_eq!(r2["layers_reused"].as_array().unwrap().len(), 2, "{r2}");
    assert_eq!(r2["image"]["layers"][1]["volume"], r["image"]["layers"][1]["volume"], "layer 2 shared");
    assert_eq!(s.ok(&["run", "--rm", "app-2", "--", "/bin/cat", "/srv/c", "/etc/a"]), "from c\nfrom a\n");
    // Pulled under an existing name: refused before anything is fetched.
    let err = s.fails(&["image", "pull", &reg.reference("app:2"), "--size", "64M"]);
    assert!(err.contains("exists"), "{err}");
    // Plain log lines (stderr is not a terminal): one per layer step.
    let out = s.cli(&["image", "pull", &reg.reference("app:2"), "--name", "again", "--size", "64M"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert_eq!(log.matches("already in the pool").count(), 3, "{log}");
}

#[test]
fn pull_bad_input_is_refused_and_leaves_nothing() {
    let s = Scenario::new("pullbad");
    s.ok(&["pool", "create", "--data-size", "2G"]);
    let reg = Registry::start(&regdir("bad"), false);
    let good = layout("good", &[(busybox_base(), Comp::Gzip)]);
    reg.push_layout(&good, None, "good:1");
    s.ok(&["image", "pull", &reg.reference("good:1"), "--size", "64M"]);

    pull_fails(&s, &["127.0.0.1:5000/UPPER//x:1"], &["does not parse"]);
    let missing = reg.reference("good:nope");
    pull_fails(&s, &[&missing], &[&missing, "check the repository name and tag"]);
    pull_fails(&s, &[&reg.reference("nosuchrepo:1")], &["nosuchrepo:1", "check the repository name and tag"]);
    // Nothing listens on this port once the listener is dropped.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let down = format!("127.0.0.1:{port}/good:1");
    pull_fails(&s, &[&down, "--name", "down"], &[&down, "cannot reach the registry"]);
    let r = reg.reference("good:1");
    pull_fails(&s, &[&r, "--name", "arm", "--platform", "linux/arm64"], &[&r, "linux/amd64 only", "--platform"]);
    pull_fails(&s, &[&r, "--name", "p", "--platform", "linux"], &["os/architecture"]);

    // Damaged copies in the registry's storage: a flipped byte and a truncated blob, each in a
    // layer above a good one (which is built first, then removed again with the failure).
    let mk = |tag: &str, body: &[u8]| {
        let big: Vec<u8> = (0..400_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let mut data = body.to_vec();
        data.extend_from_slice(&big);
        // gzip: skopeo would compress a plain layer on the way, changing its digest.
        let l = layout(tag, &[(busybox_base(), Comp::Gzip), (file_layer("x/data", &data), Comp::Gzip)]);
        reg.push_layout(&l, None, &format!("{tag}:1"));
        stored_blob(&reg, &layer_digests(&l)[1])
    };
    let flipped = mk("flip", b"flip");
    let mut bytes = std::fs::read(&flipped).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&flipped, &bytes).unwrap();
    let fr = reg.reference("flip:1");
    pull_fails(&s, &[&fr], &[&fr, "layer 2/2", "digest"]);
    let short = mk("short", b"short");
    let len = std::fs::metadata(&short).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&short).unwrap().set_len(len / 2).unwrap();
    let sr = reg.reference("short:1");
    let err = pull_fails(&s, &[&sr], &[&sr, "layer 2/2"]);
    assert!(err.contains("truncated") || err.contains("broke off"), "{err}");
    // A layer that is a decompression bomb: refused by the import's cap, nothing kept.
    let tar = file_layer("y/z", b"z");
    let mut bomb = tar.clone();
    bomb.extend(vec![0u8; 40 << 20]);
    let l = layout("bomb", &[(busybox_base(), Comp::Gzip), (bomb, Comp::Gzip)]);
    reg.push_layout(&l, None, "bomb:1");
    let br = reg.reference("bomb:1");
    pull_fails(&s, &[&br], &[&br, "end-of-archive", "refused"]);
}

fn auth_file(dir: &Path, registry: &str, user: &str, password: &str) -> PathBuf {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let p = dir.join(format!("auth-{user}.json"));
    std::fs::write(&p, serde_json::json!({"auths": {registry: {"auth": b64}}}).to_string()).unwrap();
    p
}

#[test]
fn pull_with_credentials_from_an_auth_file() {
    let s = Scenario::new("pullauth");
    s.ok(&["pool", "create", "--data-size", "1G"]);
    let dir = regdir("auth");
    let reg = Registry::start(&dir, true);
    let l = layout("auth", &[(busybox_base(), Comp::Gzip), (file_layer("etc/secret", b"s\n"), Comp::Gzip)]);
    reg.push_layout(&l, None, "priv:1");
    let r = reg.reference("priv:1");
    // No credentials anywhere (HOME has no docker config in the VM; say so explicitly).
    let none = dir.join("none");
    std::fs::create_dir_all(&none).unwrap();
    let out = s.cli_env(&["image", "pull", &r, "--size", "64M"], &[("DOCKER_CONFIG", path_str(&none))]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&r) && err.contains("401") && err.contains("--auth-file"), "{err}");
    let wrong = auth_file(&dir, &reg.addr, USER, "wrong-password");
    pull_fails(&s, &[&r, "--auth-file", path_str(&wrong)], &[&r, "401", "refused"]);
    let missing = dir.join("nope.json");
    pull_fails(&s, &[&r, "--auth-file", path_str(&missing)], &["nope.json"]);
    let good = auth_file(&dir, &reg.addr, USER, PASSWORD);
    s.ok(&["image", "pull", &r, "--auth-file", path_str(&good), "--size", "64M"]);
    assert_eq!(s.ok(&["run", "--rm", "priv-1", "--", "/bin/cat", "/etc/secret"]), "s\n");
    // The same credentials found through $DOCKER_CONFIG/config.json.
    std::fs::copy(&good, none.join("config.json")).unwrap();
    let out = s.cli_env(&["image", "pull", &r, "--name", "viaenv", "--size", "64M"], &[("DOCKER_CONFIG", path_str(&none))]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn pull_killed_midway_resumes_and_shows_no_half_made_layer() {
    let s = Scenario::new("pullkill");
    s.ok(&["pool", "create", "--data-size", "2G"]);
    let reg = Registry::start(&regdir("kill"), false);
    let l = layout("kill", &[
        (busybox_base(), Comp::Gzip),
        (file_layer("k/one", b"1\n"), Comp::Gzip),
        (file_layer("k/two", b"2\n"), Comp::Gzip),
    ]);
    reg.push_layout(&l, None, "k:1");
    let r = reg.reference("k:1");
    let layer_vols = |s: &Scenario| -> Vec<serde_json::Value> {
        s.json(&["list", "--json"]).as_array().unwrap().iter().filter(|v| v["name"].as_str().unwrap_or("").starts_with("layer-")).cloned().collect()
    };
    // Killed (SIGKILL) right after its first layer volume was complete.
    let out = s.cli_env(&["image", "pull", &r, "--size", "64M"], &[("RCX_DM_FAIL_AT", "install.layer_built")]);
    assert!(!out.status.success());
    assert_eq!(s.json(&["image", "list", "--json"]), serde_json::json!([]));
    assert_eq!(layer_vols(&s).len(), 1, "one complete layer volume is left");
    let again = s.json(&["image", "pull", &r, "--size", "64M", "--json"]);
    assert_eq!(again["layers_reused"].as_array().unwrap().len(), 1, "{again}");
    assert_eq!(again["layers_fetched"].as_array().unwrap().len() + again["layers_resumed"].as_array().unwrap().len(), 2, "{again}");
    assert_eq!(s.ok(&["run", "--rm", "k-1", "--", "/bin/cat", "/k/one", "/k/two"]), "1\n2\n");
    assert_eq!(layer_vols(&s).len(), 3);
    assert_eq!(snapshot(&s).2, Vec::<String>::new(), "no blob left in the download area");

    // Killed in the middle of building a layer: the half-made volume is not read-only, no image
    // uses it, and the next pull removes it and builds the layer again.
    s.ok(&["image", "rm", "k-1"]);
    let out = s.cli_env(&["image", "pull", &r, "--size", "64M"], &[("RCX_DM_FAIL_AT", "import.layer")]);
    assert!(!out.status.success());
    let half = layer_vols(&s);
    assert_eq!(half.len(), 1, "{half:?}");
    assert_eq!(s.json(&["image", "list", "--json"]), serde_json::json!([]));
    let again = s.json(&["image", "pull", &r, "--size", "64M", "--json"]);
    assert_eq!(again["layers_reused"].as_array().unwrap().len(), 0, "the half-made layer was not reused: {again}");
    assert_eq!(layer_vols(&s).len(), 3);
    assert_eq!(s.ok(&["run", "--rm", "k-1", "--", "/bin/cat", "/k/two"]), "2\n");
}

#[test]
fn pull_continues_a_partial_blob_and_restarts_a_damaged_one() {
    let s = Scenario::new("pullpart");
    s.ok(&["pool", "create", "--data-size", "2G"]);
    let reg = Registry::start(&regdir("part"), false);
    let l = layout("part", &[
        (busybox_base(), Comp::Gzip),
        // (skopeo would compress plain layers on the way, under other digests)
        (file_layer("p/big", &pattern(7, 3 << 20)), Comp::Gzip),
        (file_layer("p/other", &pattern(8, 2 << 20)), Comp::Gzip),
    ]);
    reg.push_layout(&l, None, "p:1");
    let r = reg.reference("p:1");
    let digests = layer_digests(&l);
    let blob = |i: usize| std::fs::read(stored_blob(&reg, &digests[i])).unwrap();
    // What a pull killed mid-download leaves: the first half of layer 1's blob, and a "half"
    // of layer 2's whose kept bytes are damaged (a crash before they reached the disk).
    let dl = s.pool_dir().join("images/downloads/blobs/sha256");
    std::fs::create_dir_all(&dl).unwrap();
    let (b1, b2) = (blob(1), blob(2));
    std::fs::write(dl.join(format!("{}.partial", &digests[1][7..])), &b1[..b1.len() / 2]).unwrap();
    let mut bad = b2[..b2.len() / 2].to_vec();
    bad[100] ^= 0xff;
    std::fs::write(dl.join(format!("{}.partial", &digests[2][7..])), &bad).unwrap();
    // And one of a blob this image does not have.
    std::fs::write(dl.join(format!("{}.partial", "ab".repeat(32))), b"stale").unwrap();
    let out = s.json(&["image", "pull", &r, "--size", "64M", "--json"]);
    let total: u64 = (0..3).map(|i| blob(i).len() as u64).sum();
    let fetched = out["bytes_fetched"].as_u64().unwrap();
    // Layer 1's kept half is not fetched again; layer 2 is fetched whole once its resumed
    // digest fails (its half, then all of it).
    let want = total - (b1.len() / 2) as u64 + (b2.len() - b2.len() / 2) as u64;
    assert_eq!(fetched, want, "bytes fetched: {out}");
    let sum = |data: &[u8]| {
        let f = scratch().join(format!("pullpart-{}", std::process::id()));
        std::fs::write(&f, data).unwrap();
        let out = sh(&format!("sha256sum {}", f.display()));
        std::fs::remove_file(&f).unwrap();
        out.split_whitespace().next().unwrap().to_string()
    };
    assert_eq!(
        s.ok(&["run", "--rm", "p-1", "--", "/bin/busybox", "sha256sum", "/p/big", "/p/other"]),
        format!("{}  /p/big\n{}  /p/other\n", sum(&pattern(7, 3 << 20)), sum(&pattern(8, 2 << 20)))
    );
    assert_eq!(snapshot(&s).2, Vec::<String>::new(), "nothing left in the download area, the stale partial included");
}

#[test]
fn push_an_imported_image_then_pull_it_back() {
    let s = Scenario::new("push");
    s.ok(&["pool", "create", "--data-size", "2G"]);
    let reg = Registry::start(&regdir("push"), false);
    let l = layout("push", &[
        (busybox_base(), Comp::Gzip),
        (tar_of(&[E::Dir("etc", 0o755), E::File("etc/motd", 0o600, b"pushed\n"), E::Symlink("etc/link", "motd")]), Comp::Gzip),
    ]);
    s.ok(&["image", "import", path_str(&l), "--name", "local", "--size", "64M"]);
    s.ok(&["run", "--name", "c", "local", "--", "/bin/sh", "-c", "echo changed > /etc/new"]);
    s.ok(&["commit", "c", "--name", "committed"]);
    for (img, tag) in [("local", "pushed:1"), ("committed", "pushed:2")] {
        let r = s.json(&["image", "push", img, &reg.reference(tag), "--json"]);
        assert!(r["manifest"].as_str().unwrap().starts_with("sha256:"), "{r}");
    }
    let r = s.json(&["image", "pull", &reg.reference("pushed:1"), "--name", "back", "--size", "64M", "--json"]);
    assert_eq!(r["image"]["layers"].as_array().unwrap().len(), 1, "pushed squashed: {r}");
    assert_eq!(r["image"]["config"]["Cmd"], serde_json::json!(["/bin/sh"]), "the command went along: {r}");
    let out = s.ok(&["run", "--rm", "back", "--", "/bin/sh", "-c", "cat /etc/link; stat -c '%a %h' /etc/motd; test -e /etc/new || echo no-new"]);
    assert_eq!(out, "pushed\n600 1\nno-new\n");
    let digest = |img: &str| s.ok(&["run", "--rm", img, "--", "/bin/sh", "-c", "cat /etc/motd /etc/new 2>&1; ls -la /bin | wc -l"]);
    s.ok(&["image", "pull", &reg.reference("pushed:2"), "--name", "back2", "--size", "64M"]);
    assert_eq!(digest("back2"), digest("committed"));
    let err = s.fails(&["image", "push", "nosuch", &reg.reference("x:1")]);
    assert!(err.contains("no image 'nosuch'"), "{err}");
}
