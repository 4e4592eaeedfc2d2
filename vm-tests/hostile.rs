//! Hostile images against a real pool (issue 13, defects 8 and 11): tar and decompression
//! bombs refused with the limit they hit and nothing of them kept, GNU sparse holes kept as
//! holes in the layer volume, whiteouts of non-UTF-8 names and under symlink loops, and a FIFO
//! where a layout file should be.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::oci_build::{tar_of, write_layout, Comp, E};

const MIB: u64 = 1 << 20;

fn raw_header(name: &[u8], ty: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(ty);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h.set_cksum();
    h
}

/// A tar of `entries`, each (raw name, type, data), in order.
fn raw_tar(entries: &[(&[u8], tar::EntryType, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, ty, data) in entries {
        b.append(&raw_header(name, *ty, data.len() as u64), &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn num_field(dst: &mut [u8; 12], v: u64) {
    if v < 1 << 33 {
        dst.copy_from_slice(format!("{v:011o}\0").as_bytes());
    } else {
        dst.fill(0);
        dst[0] = 0x80;
        dst[4..].copy_from_slice(&v.to_be_bytes());
    }
}

/// A tar holding one GNU sparse file: `segments` of data (offset, bytes), `real` apparent size.
fn sparse_tar(name: &str, segments: &[(u64, Vec<u8>)], real: u64) -> Vec<u8> {
    let data: Vec<u8> = segments.iter().flat_map(|s| s.1.clone()).collect();
    let mut h = raw_header(name.as_bytes(), tar::EntryType::GNUSparse, data.len() as u64);
    let g = h.as_gnu_mut().unwrap();
    for (i, (off, bytes)) in segments.iter().enumerate() {
        num_field(&mut g.sparse[i].offset, *off);
        num_field(&mut g.sparse[i].numbytes, bytes.len() as u64);
    }
    g.set_real_size(real);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &data[..]).unwrap();
    b.into_inner().unwrap()
}

/// Runs the CLI with a deadline: a FIFO in the layout must not hang it.
fn cli_within(s: &Scenario, args: &[&str], secs: u64) -> std::process::Output {
    let mut child = Command::new(bin())
        .args(args)
        .env("RCX_DM_ROOT", &s.root)
        .env("RCX_DM_POOL", &s.pool)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rcx-dm");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("rcx-dm {args:?} hung for {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn layout_dir(tag: &str) -> PathBuf {
    let d = scratch().join(format!("hostile-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn mount_ro(dev: &Path, tag: &str) -> Mount {
    let dir = scratch().join(format!("mnt-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    nix::mount::mount(Some(dev), &dir, Some("ext4"), nix::mount::MsFlags::MS_RDONLY, Some("noload"))
        .unwrap_or_else(|e| panic!("mounting {} read-only: {e}", dev.display()));
    Mount { dir }
}

fn image_names(s: &Scenario) -> Vec<String> {
    s.json(&["image", "list", "--json"]).as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn hostile_images_refused_whole_and_sparse_holes_kept() {
    let s = Scenario::new("hostile");
    s.ok(&["pool", "create", "--data-size", "2G"]);
    // Layer 1: a file with a name that is not UTF-8, a symlink loop, a plain file.
    let l1 = {
        let mut t = raw_tar(&[(b"caf\xe9", tar::EntryType::Regular, b"lower".to_vec()), (b"keep", tar::EntryType::Regular, b"k".to_vec())]);
        t.truncate(t.len() - 1024); // drop the end marker, append more
        t.extend(tar_of(&[E::Symlink("loop", "loop"), E::Symlink("a", "b"), E::Symlink("b", "a")]));
        t
    };
    // Layer 2: whiteouts of the non-UTF-8 name and under the loops, and a 1 GiB sparse file
    // holding 8 KiB.
    let l2 = {
        let mut t = raw_tar(&[
            (b".wh.caf\xe9", tar::EntryType::Regular, Vec::new()),
            (b"loop/.wh.x", tar::EntryType::Regular, Vec::new()),
            (b"a/deep/.wh..wh..opq", tar::EntryType::Regular, Vec::new()),
        ]);
        t.truncate(t.len() - 1024);
        t.extend(sparse_tar("sparse.img", &[(0, vec![b's'; 4096]), ((1 << 30) - 4096, vec![b'e'; 4096])], 1 << 30));
        t
    };
    let good = layout_dir("good");
    write_layout(&good, &[(l1.clone(), Comp::Gzip), (l2, Comp::Zstd)]);
    let img = s.json(&["image", "import", path_str(&good), "--name", "good", "--size", "128M", "--json"]);
    let top = img["top"].to_string();
    let dev = s.device(&["activate", &top]);
    {
        let m = mount_ro(&dev, "hostile-top");
        let names: Vec<Vec<u8>> = std::fs::read_dir(&m.dir).unwrap().map(|e| e.unwrap().file_name().as_bytes().to_vec()).collect();
        assert!(!names.contains(&b"caf\xe9".to_vec()), "the non-UTF-8 whiteout was not honoured: {names:?}");
        assert!(!names.iter().any(|n| n.starts_with(b".wh.")), "a marker was written: {names:?}");
        for n in ["keep", "loop", "a", "b", "sparse.img"] {
            assert!(names.contains(&n.as_bytes().to_vec()), "{n} missing: {names:?}");
        }
        let meta = std::fs::metadata(m.path("sparse.img")).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        assert!(meta.blocks() * 512 <= MIB, "the sparse file's holes were written: {} bytes allocated", meta.blocks() * 512);
        let mut head = vec![0u8; 4096];
        std::io::Read::read_exact(&mut std::fs::File::open(m.path("sparse.img")).unwrap(), &mut head).unwrap();
        assert!(head.iter().all(|&b| b == b's'));
    }
    s.ok(&["deactivate", &top]);

    // Bombs on top of the shared layer 1: each refused naming its limit, no volume or image
    // left (layer 1 is shared with `good`, so the volume list does not change at all). The
    // 64M ext4 base the populate checks below snapshot is made first: it stays, by design.
    s.ok(&["thin", "create", "--fs", "ext4", "--size", "64M", "--name", "p-warm"]);
    s.ok(&["delete", "p-warm", "--force"]);
    let ids = s.store_ids();
    // Past every cap (4 MiB of headers, 16 MiB of trailing data), small enough for a slow VM.
    let big = 24 * MIB;
    let pad = |v: &mut Vec<u8>| v.resize(v.len().div_ceil(512) * 512, 0);
    let long_record = |ty: tar::EntryType| {
        let mut t = raw_header(b"././@LongLink", ty, big).as_bytes().to_vec();
        t.extend(std::iter::repeat_n(b'a', big as usize));
        pad(&mut t);
        t.extend(tar_of(&[E::File("after", 0o644, b"x")]));
        t
    };
    let mut trailing = tar_of(&[E::File("f", 0o644, b"x")]);
    trailing.extend(std::iter::repeat_n(0u8, big as usize));
    let bombs: Vec<(&str, Vec<u8>, &str)> = vec![
        ("longname", long_record(tar::EntryType::GNULongName), "MiB of tar headers"),
        ("pax", long_record(tar::EntryType::XHeader), "MiB of tar headers"),
        ("trailing", trailing, "after the end-of-archive marker"),
        ("sparse-huge", sparse_tar("huge", &[(2 << 40, vec![b'x'; 512])], (2 << 40) + 512), "TiB of apparent size"),
    ];
    for (name, tar, needle) in bombs {
        let dir = layout_dir(name);
        write_layout(&dir, &[(l1.clone(), Comp::Gzip), (tar.clone(), Comp::Zstd)]);
        let start = Instant::now();
        let err = s.fails(&["image", "import", path_str(&dir), "--name", name, "--size", "128M"]);
        assert!(err.contains("limit") && err.contains(needle) && err.contains("layer 2/2"), "{name}: {err}");
        assert!(start.elapsed() < Duration::from_secs(60), "{name}: took {:?}", start.elapsed());
        assert_eq!(s.store_ids(), ids, "{name}: a refused import left volumes: {err}");
        assert_eq!(image_names(&s), ["good"], "{name}");
        // populate from the same archive: refused, the volume untouched.
        if name != "trailing" {
            let f = dir.join("layer.tar.zst");
            std::fs::File::create(&f).unwrap().write_all(&zstd::encode_all(&tar[..], 3).unwrap()).unwrap();
            let vname = format!("p-{name}");
            s.ok(&["thin", "create", "--fs", "ext4", "--size", "64M", "--name", &vname]);
            let before = device_digest(&s.device(&["activate", &vname]));
            s.ok(&["deactivate", &vname]);
            let err = s.fails(&["populate", &vname, "--from", path_str(&f)]);
            assert!(err.contains("limit") && err.contains(needle), "populate {name}: {err}");
            assert_eq!(device_digest(&s.device(&["activate", &vname])), before, "populate {name} changed the volume");
            s.ok(&["deactivate", &vname]);
            s.ok(&["delete", &vname]);
        }
    }

    // More layers than the cap: refused before any volume is made.
    let many = layout_dir("many");
    let one = tar_of(&[E::File("x", 0o644, b"x")]);
    write_layout(&many, &vec![(one, Comp::Plain); 257]);
    let err = s.fails(&["image", "import", path_str(&many), "--name", "many", "--size", "128M"]);
    assert!(err.contains("257 layers") && err.contains("limit of 256"), "{err}");
    assert_eq!(s.store_ids(), ids);

    // A FIFO at index.json or oci-layout: refused at once, not waited on.
    for file in ["index.json", "oci-layout"] {
        let dir = layout_dir(&format!("fifo-{file}"));
        write_layout(&dir, &[(l1.clone(), Comp::Plain)]);
        std::fs::remove_file(dir.join(file)).unwrap();
        nix::unistd::mkfifo(&dir.join(file), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let out = cli_within(&s, &["image", "import", path_str(&dir), "--name", "fifo", "--size", "128M"], 30);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("FIFO") && err.contains(file), "{file}: {err}");
        assert_eq!(s.store_ids(), ids);
    }
    assert_eq!(image_names(&s), ["good"]);
}
