//! Root filesystems in the VM: bases, populate (directory, tar, all or nothing), OCI image
//! import with whiteouts and shared layers, hostile archives, commit. Content is checked on
//! the mounted result; filesystems with e2fsck.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::common::*;
use crate::oci_build::{busybox_base, tar_of, write_layout, Comp, E};

const MIB: usize = 1 << 20;

fn vol_id(v: &serde_json::Value) -> u32 {
    v["id"].as_u64().expect("volume id") as u32
}

fn volume_named(s: &Scenario, name: &str) -> Option<serde_json::Value> {
    s.json(&["list", "--json"]).as_array().unwrap().iter().find(|v| v["name"] == name).cloned()
}

fn lgetxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let cp = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let cn = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

fn lsetxattr(p: &Path, name: &str, v: &[u8]) {
    let cp = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let cn = CString::new(name).unwrap();
    // SAFETY: valid C strings and buffer.
    let r = unsafe { libc::lsetxattr(cp.as_ptr(), cn.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    assert_eq!(r, 0, "setxattr {name} on {}: {}", p.display(), std::io::Error::last_os_error());
}

/// Mount a volume read-only (ext4 without journal replay, or xfs nouuid).
fn mount_ro(dev: &Path, tag: &str, fs: &str) -> Mount {
    let dir = scratch().join(format!("mnt-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data = if fs == "xfs" { "nouuid,norecovery" } else { "noload" };
    nix::mount::mount(Some(dev), &dir, Some(fs), nix::mount::MsFlags::MS_RDONLY, Some(data))
        .unwrap_or_else(|e| panic!("mounting {} read-only: {e}", dev.display()));
    Mount { dir }
}

fn fsck_clean(dev: &Path) {
    let out = Command::new("e2fsck").arg("-fn").arg(dev).output().expect("spawn e2fsck");
    assert!(
        out.status.success(),
        "e2fsck -fn {}: {}\n{}{}",
        dev.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Everything under `dir` (but lost+found) as comparable text: type, mode, owner, mtime,
/// size+content hash or link target, hard-link group, xattrs.
fn tree_view(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<String, String>, inodes: &mut BTreeMap<u64, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == "lost+found" {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let what = if ft.is_symlink() {
                format!("link->{}", std::fs::read_link(&p).unwrap().display())
            } else if ft.is_dir() {
                "dir".to_string()
            } else if ft.is_file() {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(&p).unwrap().hash(&mut h);
                let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone()).clone();
                format!("file {} {:x} links:{first}", m.len(), h.finish())
            } else if ft.is_char_device() || ft.is_block_device() {
                format!("dev {:x}", m.rdev())
            } else if ft.is_fifo() {
                "fifo".to_string()
            } else {
                "other".to_string()
            };
            let mtime = if ft.is_symlink() { String::new() } else { m.mtime().to_string() };
            let x = lgetxattr(&p, "user.rcx").map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
            out.insert(rel, format!("{what} mode:{:o} {}:{} t:{mtime} x:{x}", m.mode(), m.uid(), m.gid()));
            if ft.is_dir() {
                walk(root, &p, out, inodes);
            }
        }
    }
    walk(dir, dir, &mut out, &mut inodes);
    out
}

/// A source directory exercising what `rsync -aHAX` keeps.
fn make_source(dir: &Path, variant: &str) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("etc/deep/er")).unwrap();
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    std::fs::write(dir.join("etc/hostname"), format!("{variant}\n")).unwrap();
    std::fs::write(dir.join("etc/deep/er/data"), pattern(7, 300_000)).unwrap();
    std::fs::hard_link(dir.join("etc/deep/er/data"), dir.join("etc/data-link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", dir.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("deep/er", dir.join("etc/rel-link")).unwrap();
    let secret = dir.join("etc/secret");
    std::fs::write(&secret, b"s").unwrap();
    std::os::unix::fs::chown(&secret, Some(1000), Some(1001)).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o2750)).unwrap();
    lsetxattr(&secret, "user.rcx", variant.as_bytes());
    nix::unistd::mkfifo(&dir.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    nix::sys::stat::mknod(
        &dir.join("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    std::fs::write(dir.join(format!("only-in-{variant}")), b"x").unwrap();
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    for p in ["etc/hostname", "etc/deep/er/data", "etc/secret", "etc/deep", "empty", "etc"] {
        let f = std::fs::File::open(dir.join(p)).unwrap();
        f.set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t)).unwrap();
    }
}

#[test]
fn rootfs_empty_volumes_share_one_formatted_base() {
    let s = Scenario::new("base");
    s.ok(&["pool", "create", "--data-size", "1G"]);
    let a = s.device(&["thin", "create", "--fs", "ext4", "--size", "64M", "--name", "a"]);
    let b = s.device(&["thin", "create", "--fs", "ext4", "--size", "64M"]);
    let base = volume_named(&s, "base-ext4-67108864").expect("a kept base volume");
    assert_eq!(base["read_only"], true);
    assert_eq!(base["active"], false, "the base is kept inactive");
    let vols = s.json(&["list", "--json"]);
    let bases = vols.as_array().unwrap().iter().filter(|v| v["name"].as_str().is_some_and(|n| n.starts_with("base-"))).count();
    assert_eq!(bases, 1, "one base for one (fs, size): {vols}");
    for v in vols.as_array().unwrap().iter().filter(|v| v["read_only"] == false) {
        assert_eq!(v["parent"], base["id"], "empty volumes are snapshots of the base: {v}");
    }
    for dev in [&a, &b] {
        fsck_clean(dev);
        let m = Mount::new(dev, &format!("base-{}", dev.display().to_string().replace('/', "_")));
        assert!(m.path("lost+found").is_dir());
    }
    // xfs: its own base; two snapshots mounted at once need nouuid, which `run` uses.
    // (mkfs.xfs wants at least 300M; thin volumes cost nothing until written.)
    s.ok(&["thin", "create", "--fs", "xfs", "--size", "320M", "--name", "x"]);
    assert!(volume_named(&s, "base-xfs-335544320").is_some());
    let err = s.fails(&["thin", "create", "--fs", "btrfs", "--size", "64M"]);
    assert!(err.contains("ext4 or xfs"), "{err}");
}

#[test]
fn rootfs_populate_from_directory_and_tar_all_or_nothing() {
    let s = Scenario::new("pop");
    s.ok(&["pool", "create", "--data-size", "1G"]);
    s.ok(&["thin", "create", "--fs", "ext4", "--size", "64M", "--name", "v"]);
    // Sources live on an ext4 volume: this kernel's tmpfs (the scratch) has no user xattrs.
    let srcdev = s.device(&["thin", "create", "--fs", "ext4", "--size", "64M", "--name", "sources"]);
    let srcfs = Mount::new(&srcdev, "sources");
    let src = srcfs.path("one");
    make_source(&src, "one");
    s.ok(&["populate", "v", "--from", path_str(&src)]);
    let dev = s.device(&["activate", "v"]);
    fsck_clean(&dev);
    {
        let m = Mount::new(&dev, "pop1");
        assert_eq!(tree_view(&m.dir), tree_view(&src), "populate from a directory equals the source");
    }
    // A gzip tar of another tree (GNU tar keeps owners, modes, xattrs): files of the first
    // populate that are not in it are gone.
    let src2 = srcfs.path("two");
    make_source(&src2, "two");
    let tgz = scratch().join(format!("two-{}.tar.gz", std::process::id()));
    let t = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-czf"])
        .arg(&tgz)
        .arg("-C")
        .arg(&src2)
        .arg(".")
        .output()
        .unwrap();
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
    s.ok(&["deactivate", "v"]);
    s.ok(&["populate", "v", "--from", path_str(&tgz)]);
    let dev = s.device(&["activate", "v"]);
    fsck_clean(&dev);
    let populated = {
        let m = Mount::new(&dev, "pop2");
        let v = tree_view(&m.dir);
        let mut want = tree_view(&src2);
        want.remove("."); // the tar's "./" entry is the root itself
        assert_eq!(v, want, "populate from a tar.gz equals its source; the first content is gone");
        v
    };
    assert!(!populated.contains_key("only-in-one"));
    s.ok(&["deactivate", "v"]);
    // The first tree as a plain tar file: its files' data is copied by the kernel from the
    // archive (sendfile) instead of read through the stream; the result is the same, and a
    // truncated one is refused with the volume unchanged.
    let plain = scratch().join(format!("one-{}.tar", std::process::id()));
    let t = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-cf"])
        .arg(&plain)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .output()
        .unwrap();
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
    s.ok(&["populate", "v", "--from", path_str(&plain)]);
    let dev = s.device(&["activate", "v"]);
    fsck_clean(&dev);
    let plain_digest = {
        let m = Mount::new(&dev, "pop3");
        let mut want = tree_view(&src);
        want.remove(".");
        assert_eq!(tree_view(&m.dir), want, "populate from a plain tar file equals its source");
        drop(m);
        device_digest(&dev)
    };
    s.ok(&["deactivate", "v"]);
    let bytes = std::fs::read(&plain).unwrap();
    let cut_plain = scratch().join(format!("cut-{}.tar", std::process::id()));
    std::fs::write(&cut_plain, &bytes[..bytes.len() / 2]).unwrap();
    let err = s.fails(&["populate", "v", "--from", path_str(&cut_plain)]);
    assert!(err.contains("truncated"), "{err}");
    assert_eq!(device_digest(&s.device(&["activate", "v"])), plain_digest, "a truncated plain tar changed the volume");
    s.ok(&["deactivate", "v"]);
    // A truncated archive: refused, volume unchanged, no scratch left.
    let bytes = std::fs::read(&tgz).unwrap();
    let cut = scratch().join(format!("cut-{}.tar.gz", std::process::id()));
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let dev = s.device(&["activate", "v"]);
    let before = device_digest(&dev);
    s.ok(&["deactivate", "v"]);
    let ids_before = s.store_ids();
    let err = s.fails(&["populate", "v", "--from", path_str(&cut)]);
    assert!(!err.is_empty());
    let dev = s.device(&["activate", "v"]);
    assert_eq!(device_digest(&dev), before, "a corrupt archive changed the volume");
    assert_eq!(s.store_ids(), ids_before, "the scratch volume was not removed");
    // Killed after the scratch was filled, before the swap: volume unchanged; the next
    // populate removes the scratch and succeeds.
    s.ok(&["deactivate", "v"]);
    let out = s.cli_env(&["populate", "v", "--from", path_str(&src)], &[("RCX_DM_FAIL_AT", "populate.filled")]);
    assert!(!out.status.success());
    let vid = vol_id(&volume_named(&s, "v").unwrap());
    assert!(volume_named(&s, &format!("populate-{vid}")).is_some(), "the killed populate left its scratch");
    let dev = s.device(&["activate", "v"]);
    assert_eq!(device_digest(&dev), before, "a killed populate changed the volume");
    s.ok(&["deactivate", "v"]);
    s.ok(&["populate", "v", "--from", path_str(&src)]);
    assert!(volume_named(&s, &format!("populate-{vid}")).is_none());
    assert_eq!(s.store_ids(), ids_before);
    // Bad inputs.
    let err = s.fails(&["populate", "v", "--from", "/nonexistent/x.tar"]);
    assert!(err.contains("/nonexistent/x.tar"), "{err}");
    let base = volume_named(&s, "base-ext4-67108864").unwrap();
    let err = s.fails(&["populate", &vol_id(&base).to_string(), "--from", path_str(&src)]);
    assert!(err.contains("read-only"), "{err}");
    s.ok(&["thin", "create", "--size", "64M", "--name", "raw"]);
    let err = s.fails(&["populate", "raw", "--from", path_str(&src)]);
    assert!(err.contains("rcx-dm format"), "{err}");
    let dev = s.device(&["activate", "v"]);
    let _m = Mount::new(&dev, "busy");
    let err = s.fails(&["populate", "v", "--from", path_str(&src)]);
    assert!(err.contains("in use"), "{err}");
    let err = s.fails(&["format", "v"]);
    assert!(err.contains("in use"), "{err}");
}

#[test]
fn rootfs_hostile_archives_write_nothing_outside() {
    let s = Scenario::new("evil");
    s.ok(&["pool", "create", "--data-size", "1G"]);
    s.ok(&["thin", "create", "--fs", "ext4", "--size", "64M", "--name", "v"]);
    let outside = scratch().join(format!("outside-{}", std::process::id()));
    std::fs::create_dir_all(&outside).unwrap();
    let out = path_str(&outside).to_string();
    let escape = s.pool_dir().join("escape");
    let dir = scratch().join(format!("evil-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, entries: &[E]| {
        let p = dir.join(name);
        std::fs::write(&p, tar_of(entries)).unwrap();
        p
    };
    let digest = |s: &Scenario| {
        let d = device_digest(&s.device(&["activate", "v"]));
        s.ok(&["deactivate", "v"]);
        d
    };
    let before = digest(&s);
    // Refused outright: ".." in a name, a hard link leaving the root.
    for (name, entries) in [
        ("dotdot", vec![E::File("../escape", 0o644, b"x")]),
        ("inner-dotdot", vec![E::Dir("a", 0o755), E::File("a/../../escape", 0o644, b"x")]),
        ("hardlink-out", vec![E::File("ok", 0o644, b"x"), E::Hardlink("h", "../../etc/passwd")]),
    ] {
        let tar = write(name, &entries);
        let err = s.fails(&["populate", "v", "--from", path_str(&tar)]);
        assert!(err.contains(".."), "{name}: the error names the bad path: {err}");
        assert_eq!(digest(&s), before, "{name}: the volume changed");
    }
    // Resolved inside the root: absolute names and symlinks (absolute or climbing).
    let tar = write(
        "links",
        &[
            E::Symlink("abs", &out),
            E::File(&format!("abs/pwned"), 0o644, b"in"),
            E::Symlink("up", "../../../../.."),
            E::File("up/climbed", 0o644, b"in"),
            E::File("/absolute-name", 0o644, b"in"),
            E::Symlink("chain1", "chain2"),
            E::Symlink("chain2", "/"),
            E::File("chain1/via-chain", 0o644, b"in"),
        ],
    );
    s.ok(&["populate", "v", "--from", path_str(&tar)]);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "something was written outside the volume");
    assert!(!escape.exists() && !Path::new("/climbed").exists() && !Path::new("/absolute-name").exists());
    assert!(!Path::new("/via-chain").exists());
    let dev = s.device(&["activate", "v"]);
    let m = Mount::new(&dev, "evil");
    // Through a dangling absolute symlink: inside the root, at the link's target resolved in
    // the root, or at the link's own path if the writer replaced the dangling link by a dir.
    let at_target = m.path(&format!("{}/pwned", out.trim_start_matches('/')));
    assert!(at_target.exists() || m.path("abs/pwned").exists(), "abs/pwned is nowhere in the volume");
    for f in ["climbed", "absolute-name", "via-chain"] {
        assert_eq!(std::fs::read(m.path(f)).unwrap(), b"in", "{f} resolved inside the root");
    }
}

/// Layer 1: busybox, files with owners/modes/xattrs, a hard link, a device, a 4 MiB file, an
/// absolute symlink, dirs to whiteout and make opaque.
fn layer1() -> Vec<u8> {
    let base = busybox_base();
    let big = pattern(11, 4 * MIB);
    let extra = tar_of(&[
        E::Dir("etc", 0o755),
        E::File("etc/motd", 0o644, b"old motd\n"),
        E::File("etc/old", 0o644, b"to be deleted\n"),
        E::Dir("home", 0o755),
        E::Owned("home/secret", 0o640, 1000, 1000, b"s3cret", &[("user.rcx", b"yes")]),
        E::Dir("data", 0o755),
        E::File("data/big", 0o644, &big),
        E::Hardlink("data/big-link", "data/big"),
        E::File("bin/suid", 0o4755, b"#!/bin/sh\n"),
        E::Dir("opq", 0o755),
        E::File("opq/lower1", 0o644, b"l"),
        E::Dir("opq/sub", 0o755),
        E::File("opq/sub/lower2", 0o644, b"l"),
        E::Dir("gone-dir", 0o755),
        E::File("gone-dir/f", 0o644, b"l"),
        E::Dir("dev", 0o755),
        E::CharDev("dev/null", 0o666, 1, 3),
        E::Symlink("lib", "/bin"),
    ]);
    concat_tars(&[base, extra])
}

/// Two archives as one (the first's end-of-archive blocks dropped).
fn concat_tars(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let mut a = tar::Archive::new(&p[..]);
        let mut end = 0u64;
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            end = e.raw_file_position() + e.size().div_ceil(512) * 512;
        }
        if i + 1 < parts.len() {
            out.extend_from_slice(&p[..end as usize]);
        } else {
            out.extend_from_slice(p);
        }
    }
    out
}

#[test]
fn rootfs_image_import_whiteouts_sharing_and_rm() {
    let s = Scenario::new("img");
    s.ok(&["pool", "create", "--data-size", "2G"]);
    let l1 = layer1();
    // Layer 2 (gzip): the opaque marker comes after the entry it must keep.
    let l2 = tar_of(&[
        E::Whiteout("etc/old"),
        E::File("etc/motd", 0o644, b"new motd\n"),
        E::File("opq/new", 0o644, b"n"),
        E::Opaque("opq"),
        E::Whiteout("gone-dir"),
    ]);
    let l3 = tar_of(&[E::File("etc/l3", 0o600, b"three")]);
    let a_dir = scratch().join(format!("oci-a-{}", std::process::id()));
    let chain_a = write_layout(&a_dir, &[(l1.clone(), Comp::Plain), (l2, Comp::Gzip), (l3, Comp::Zstd)]);
    let a = s.json(&["image", "import", path_str(&a_dir), "--name", "a", "--size", "128M", "--json"]);
    let layers = a["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    for (l, c) in layers.iter().zip(&chain_a) {
        assert_eq!(l["chain_id"], c.as_str(), "layer chain id");
        assert_eq!(l["created"], true);
    }
    let vols = s.json(&["list", "--json"]);
    for l in layers {
        let v = vols.as_array().unwrap().iter().find(|v| v["id"] == l["volume"]).unwrap();
        assert_eq!(v["read_only"], true, "layer volumes are read-only: {v}");
        assert_eq!(v["active"], false);
    }
    // Each layer volume is a snapshot of the one below; every one passes e2fsck.
    assert_eq!(
        vols.as_array().unwrap().iter().find(|v| v["id"] == layers[2]["volume"]).unwrap()["parent"],
        layers[1]["volume"]
    );
    for l in layers {
        let dev = s.device(&["activate", &l["volume"].to_string()]);
        fsck_clean(&dev);
        s.ok(&["deactivate", &l["volume"].to_string()]);
    }
    let top = a["top"].to_string();
    let dev = s.device(&["activate", &top]);
    {
        let m = mount_ro(&dev, "img", "ext4");
        assert_eq!(std::fs::read(m.path("etc/motd")).unwrap(), b"new motd\n");
        assert!(!m.path("etc/old").exists(), "whiteout of a lower file");
        assert!(!m.path("gone-dir").exists(), "whiteout of a lower directory");
        let opq: Vec<String> =
            std::fs::read_dir(m.path("opq")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(opq, vec!["new".to_string()], "opaque dir keeps only this layer's entries");
        let view = tree_view(&m.dir);
        assert!(view.keys().all(|k| !k.contains(".wh.")), "a whiteout marker was written: {view:?}");
        let secret = std::fs::metadata(m.path("home/secret")).unwrap();
        assert_eq!((secret.uid(), secret.gid(), secret.mode() & 0o7777), (1000, 1000, 0o640));
        assert_eq!(lgetxattr(&m.path("home/secret"), "user.rcx").as_deref(), Some(&b"yes"[..]));
        assert_eq!(std::fs::metadata(m.path("bin/suid")).unwrap().mode() & 0o7777, 0o4755);
        let big = std::fs::metadata(m.path("data/big")).unwrap();
        let link = std::fs::metadata(m.path("data/big-link")).unwrap();
        assert_eq!((big.ino(), big.nlink()), (link.ino(), 2), "hard link");
        assert!(std::fs::read(m.path("data/big")).unwrap() == pattern(11, 4 * MIB));
        let null = std::fs::metadata(m.path("dev/null")).unwrap();
        assert!(null.file_type().is_char_device() && null.rdev() == nix::sys::stat::makedev(1, 3));
        assert_eq!(std::fs::read_link(m.path("lib")).unwrap(), Path::new("/bin"));
        assert_eq!(std::fs::read_link(m.path("bin/sh")).unwrap(), Path::new("busybox"));
        assert_eq!(std::fs::metadata(m.path("etc/motd")).unwrap().mtime(), 1_700_000_000);
        assert_eq!(std::fs::metadata(m.path("etc/l3")).unwrap().mode() & 0o777, 0o600);
    }
    s.ok(&["deactivate", &top]);
    // A container from the image by name.
    let out = s.ok(&["run", "--rm", "a", "--", "/bin/sh", "-c", "cat /etc/motd; ls /opq; id -u"]);
    assert_eq!(out, "new motd\nnew\n0\n");
    // Image b shares layer 1: no new data blocks for it.
    let l2b = tar_of(&[E::File("etc/b", 0o644, &pattern(12, MIB))]);
    let b_dir = scratch().join(format!("oci-b-{}", std::process::id()));
    write_layout(&b_dir, &[(l1, Comp::Plain), (l2b, Comp::Gzip)]);
    let used = |s: &Scenario| kernel_status(s).data_used_blocks * 65536;
    let before = used(&s);
    let b = s.json(&["image", "import", path_str(&b_dir), "--name", "b", "--size", "128M", "--json"]);
    let grew = used(&s) - before;
    assert_eq!(b["layers"][0]["created"], false, "layer 1 was not shared");
    assert_eq!(b["layers"][0]["volume"], layers[0]["volume"]);
    println!("image b (1 MiB own layer, 6 MiB shared) grew the pool by {} KiB", grew / 1024);
    assert!(grew >= MIB as u64 && grew < 4 * MIB as u64, "pool grew by {grew} bytes for b's 1 MiB layer");
    let err = s.fails(&["image", "import", path_str(&b_dir), "--name", "b"]);
    assert!(err.contains("exists"), "{err}");
    let out = s.ok(&["run", "--rm", "b", "--", "/bin/sh", "-c", "cat /etc/motd; test -e /etc/b && echo b"]);
    assert_eq!(out, "old motd\nb\n");
    // rm a: its own layers go, the shared one stays for b; rm b: everything but the base.
    let r = s.json(&["image", "rm", "a", "--json"]);
    assert_eq!(r["deleted_volumes"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["kept_volumes"], serde_json::json!([layers[0]["volume"]]));
    s.ok(&["image", "rm", "b"]);
    let left: Vec<String> =
        s.json(&["list", "--json"]).as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap_or("-").to_string()).collect();
    assert_eq!(left, vec!["base-ext4-134217728".to_string()]);
    assert_eq!(s.json(&["image", "list", "--json"]), serde_json::json!([]));
    let err = s.fails(&["image", "rm", "a"]);
    assert!(err.contains("no image 'a'"), "{err}");
    // A layout with a corrupted layer blob: refused, nothing added.
    let ids = s.store_ids();
    let blob = std::fs::read_dir(b_dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let out = s.cli_env(&["image", "import", path_str(&b_dir), "--name", "bad", "--size", "128M"], &[("RUST_LOG", "info")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("digest"), "{err}");
    assert_eq!(s.store_ids(), ids, "a failed import left volumes: {err}");
}

#[test]
fn rootfs_commit_makes_an_image_new_containers_see() {
    let s = Scenario::new("commit");
    s.ok(&["pool", "create", "--data-size", "1G"]);
    let dir = scratch().join(format!("oci-bb-{}", std::process::id()));
    write_layout(&dir, &[(busybox_base(), Comp::Gzip)]);
    s.ok(&["image", "import", path_str(&dir), "--name", "bb", "--size", "64M"]);
    s.ok(&["run", "--name", "c1", "bb", "--", "/bin/sh", "-c", "echo committed > /hello"]);
    let img = s.json(&["commit", "c1", "--name", "bb2", "--json"]);
    assert_eq!(img["layers"].as_array().unwrap().len(), 2, "the commit sits on bb's layer: {img}");
    assert_eq!(s.ok(&["run", "--rm", "bb2", "--", "/bin/cat", "/hello"]), "committed\n");
    assert_eq!(s.ok(&["run", "--rm", "bb", "--", "/bin/sh", "-c", "test -e /hello || echo absent"]), "absent\n");
    // The container keeps changing; the image does not.
    s.ok(&["run", "c1", "--", "/bin/sh", "-c", "echo later > /hello"]);
    assert_eq!(s.ok(&["run", "--rm", "bb2", "--", "/bin/cat", "/hello"]), "committed\n");
    // bb's layer stays while bb2 and c1 use it.
    let r = s.json(&["image", "rm", "bb", "--json"]);
    assert_eq!(r["deleted_volumes"], serde_json::json!([]), "{r}");
    // The same layout flattened into a writable volume by populate.
    s.ok(&["thin", "create", "--fs", "ext4", "--size", "64M", "--name", "flat"]);
    s.ok(&["populate", "flat", "--from", path_str(&dir)]);
    assert_eq!(s.ok(&["run", "flat", "--", "/bin/sh", "-c", "echo flat; test -e /hello || echo clean"]), "flat\nclean\n");
    let err = s.fails(&["commit", "c1", "--name", "bb2"]);
    assert!(err.contains("exists"), "{err}");
    let err = s.fails(&["commit", "c1", "--name", "../x"]);
    assert!(err.contains("name"), "{err}");
}
