//! Test images built by the tests themselves: tar layers entry by entry (owners, modes,
//! xattrs, devices, hard links, whiteouts, hostile names) and OCI image layouts around them.

use std::io::Write;
use std::path::{Path, PathBuf};


/// One tar entry. Paths are written exactly as given (no normalisation), so tests can build
/// hostile archives.
pub enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a [u8]),
    /// A file with owner and xattrs.
    Owned(&'a str, u32, u32, u32, &'a [u8], &'a [(&'a str, &'a [u8])]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    CharDev(&'a str, u32, u32, u32),
    /// `.wh.NAME` in the entry's directory: NAME's lower content goes.
    Whiteout(&'a str),
    /// `.wh..wh..opq` in this directory: its lower content goes.
    Opaque(&'a str),
}

const MTIME: u64 = 1_700_000_000;

fn header(kind: tar::EntryType, mode: u32, uid: u32, gid: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid as u64);
    h.set_gid(gid as u64);
    h.set_size(size);
    h.set_mtime(MTIME);
    h
}

fn append(b: &mut tar::Builder<Vec<u8>>, h: &mut tar::Header, path: &str, data: &[u8]) {
    // set_path refuses "..": write the raw name so hostile archives can be built.
    let name = path.as_bytes();
    assert!(name.len() < 100, "test paths stay short: {path}");
    let raw = h.as_old_mut();
    raw.name = [0; 100];
    raw.name[..name.len()].copy_from_slice(name);
    h.set_cksum();
    b.append(h, data).expect("append tar entry");
}

fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, target: &str) {
    let mut h = header(kind, 0o777, 0, 0, 0);
    let t = target.as_bytes();
    let raw = h.as_old_mut();
    raw.linkname = [0; 100];
    raw.linkname[..t.len()].copy_from_slice(t);
    append(b, &mut h, path, &[]);
}

pub fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::Dir(p, mode) => append(&mut b, &mut header(tar::EntryType::Directory, *mode, 0, 0, 0), p, &[]),
            E::File(p, mode, data) => {
                append(&mut b, &mut header(tar::EntryType::Regular, *mode, 0, 0, data.len() as u64), p, data)
            }
            E::Owned(p, mode, uid, gid, data, xattrs) => {
                if !xattrs.is_empty() {
                    let keys: Vec<(String, &[u8])> =
                        xattrs.iter().map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v)).collect();
                    b.append_pax_extensions(keys.iter().map(|(k, v)| (k.as_str(), *v))).expect("pax");
                }
                append(&mut b, &mut header(tar::EntryType::Regular, *mode, *uid, *gid, data.len() as u64), p, data)
            }
            E::Symlink(p, t) => link(&mut b, tar::EntryType::Symlink, p, t),
            E::Hardlink(p, t) => link(&mut b, tar::EntryType::Link, p, t),
            E::CharDev(p, mode, major, minor) => {
                let mut h = header(tar::EntryType::Char, *mode, 0, 0, 0);
                h.set_device_major(*major).expect("major");
                h.set_device_minor(*minor).expect("minor");
                append(&mut b, &mut h, p, &[]);
            }
            E::Whiteout(p) => {
                let (dir, name) = p.rsplit_once('/').map_or(("", *p), |(d, n)| (d, n));
                let wh = if dir.is_empty() { format!(".wh.{name}") } else { format!("{dir}/.wh.{name}") };
                append(&mut b, &mut header(tar::EntryType::Regular, 0o644, 0, 0, 0), &wh, &[]);
            }
            E::Opaque(d) => {
                append(&mut b, &mut header(tar::EntryType::Regular, 0o644, 0, 0, 0), &format!("{d}/.wh..wh..opq"), &[])
            }
        }
    }
    b.into_inner().expect("finish tar")
}

/// The busybox-static binary with the applet links a shell script needs, as layer entries.
pub fn busybox_base() -> Vec<u8> {
    let bb = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static, from tools/setup)");
    let mut entries = vec![E::Dir("bin", 0o755), E::File("bin/busybox", 0o755, &bb)];
    let applets = ["sh", "cat", "ls", "echo", "stat", "test", "rm", "mkdir", "touch", "true", "id"];
    let names: Vec<String> = applets.iter().map(|a| format!("bin/{a}")).collect();
    for n in &names {
        entries.push(E::Symlink(n, "busybox"));
    }
    tar_of(&entries)
}

#[derive(Clone, Copy)]
pub enum Comp {
    Plain,
    Gzip,
    Zstd,
}

fn sha(b: &[u8]) -> String {
    rcx_dm::rootfs::oci::Digest::of(b).to_string()
}

fn put_blob(dir: &Path, bytes: &[u8]) -> (String, u64) {
    let d = sha(bytes);
    let p = dir.join("blobs/sha256").join(&d["sha256:".len()..]);
    std::fs::create_dir_all(p.parent().unwrap()).expect("blobs dir");
    std::fs::write(&p, bytes).expect("write blob");
    (d, bytes.len() as u64)
}

pub fn compress(tar: &[u8], c: Comp) -> (Vec<u8>, &'static str) {
    match c {
        Comp::Plain => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).expect("gzip");
            (e.finish().expect("gzip"), "application/vnd.oci.image.layer.v1.tar+gzip")
        }
        Comp::Zstd => (zstd::encode_all(tar, 3).expect("zstd"), "application/vnd.oci.image.layer.v1.tar+zstd"),
    }
}

/// Write an OCI image layout holding one image made of `layers` (bottom first). Returns the
/// chain ids of the layers.
pub fn write_layout(dir: &Path, layers: &[(Vec<u8>, Comp)]) -> Vec<String> {
    write_layout_with(dir, layers, serde_json::json!({"Cmd": ["/bin/sh"]}))
}

/// [`write_layout`] with the image config's `config` object (Entrypoint, Cmd, Env) given.
pub fn write_layout_with(dir: &Path, layers: &[(Vec<u8>, Comp)], run_config: serde_json::Value) -> Vec<String> {
    std::fs::create_dir_all(dir).expect("layout dir");
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (tar, c) in layers {
        diff_ids.push(sha(tar));
        let (blob, media) = compress(tar, *c);
        let (d, size) = put_blob(dir, &blob);
        descs.push(serde_json::json!({"mediaType": media, "digest": d, "size": size}));
    }
    finish_layout(dir, descs, diff_ids, run_config)
}

/// [`write_layout_with`] for layers too large to hold or hash in a debug build: each a tar file
/// on disk, compressed with `gzip -6` and hashed with `sha256sum` (coreutils) into the layout.
pub fn write_layout_from_tars(dir: &Path, tars: &[PathBuf], run_config: serde_json::Value) -> Vec<String> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs dir");
    let sum = |p: &Path| format!("sha256:{}", crate::common::sh(&format!("sha256sum '{}'", p.display())).split_whitespace().next().unwrap());
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in tars {
        diff_ids.push(sum(tar));
        let gz = dir.join("layer.gz.tmp");
        crate::common::sh(&format!("gzip -6 -c '{}' > '{}'", tar.display(), gz.display()));
        let d = sum(&gz);
        let size = std::fs::metadata(&gz).unwrap().len();
        std::fs::rename(&gz, blobs.join(&d["sha256:".len()..])).unwrap();
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": size}));
    }
    finish_layout(dir, descs, diff_ids, run_config)
}

/// The config, manifest and index of a layout whose layer blobs are in place; the chain ids.
fn finish_layout(dir: &Path, descs: Vec<serde_json::Value>, diff_ids: Vec<String>, run_config: serde_json::Value) -> Vec<String> {
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": run_config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let (cd, cs) = put_blob(dir, config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": descs,
    });
    let (md, ms) = put_blob(dir, manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
                       "annotations": {"org.opencontainers.image.ref.name": "latest"}}],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).expect("index.json");
    let mut chain = Vec::new();
    for d in &diff_ids {
        let next = match chain.last() {
            None => d.clone(),
            Some(prev) => sha(format!("{prev} {d}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}
