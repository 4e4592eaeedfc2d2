//! Shared by the benchmarks: statistics and staging executables onto local storage.
//! (Each bench is its own crate; they include this with `mod common;`.)

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// (min, max)
pub fn range(v: &[f64]) -> (f64, f64) {
    (v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(f64::NEG_INFINITY, f64::max))
}

/// "min-max" with one decimal.
pub fn fmt_range(v: &[f64]) -> String {
    let (a, b) = range(v);
    format!("{a:.1}-{b:.1}")
}

pub fn which(prog: &str) -> PathBuf {
    let out = Command::new("sh").args(["-c", &format!("command -v {prog}")]).output().expect("sh");
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!p.is_empty(), "{prog} not found");
    PathBuf::from(p)
}

/// A directory of executables copied with the shared libraries they load (run them with
/// `LD_LIBRARY_PATH = lib_dir`). In the VM the host's root arrives over 9p without page cache,
/// so every exec from there re-reads the binary through the emulated transport, which would
/// swamp what is measured; on a real host staging changes nothing.
pub struct Stage {
    pub bin_dir: PathBuf,
    pub lib_dir: PathBuf,
}

impl Stage {
    pub fn new(dir: &Path) -> Stage {
        let _ = std::fs::remove_dir_all(dir);
        let s = Stage { bin_dir: dir.join("bin"), lib_dir: dir.join("lib") };
        std::fs::create_dir_all(&s.bin_dir).unwrap();
        std::fs::create_dir_all(&s.lib_dir).unwrap();
        s
    }

    /// Copy `src` as `name` with its libraries; returns the staged path.
    pub fn copy(&self, src: &Path, name: &str) -> PathBuf {
        let dst = self.bin_dir.join(name);
        std::fs::copy(src, &dst).unwrap_or_else(|e| panic!("staging {}: {e}", src.display()));
        let ldd = Command::new("ldd").arg(src).output().expect("ldd");
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            // "libfoo.so.1 => /lib/x86_64-linux-gnu/libfoo.so.1 (0x...)"
            if let Some(path) = line.split("=>").nth(1).and_then(|r| r.split_whitespace().next()) {
                let p = Path::new(path);
                if let (true, Some(file)) = (p.is_absolute(), p.file_name()) {
                    let _ = std::fs::copy(p, self.lib_dir.join(file));
                }
            }
        }
        dst
    }
}

/// LVM's configuration for the bench: no udev, no daemons, no device hints or component
/// scans, no metadata archive on every change, only our loop device scanned; locks and
/// (disabled) backups under `dir`, since the guest's /etc is read-only. What an operator tuning
/// LVM for many thin snapshots would use. `zero_metadata = 0`: LVM wipes only the start of the
/// pool's metadata LV, as rcx-dm and the dmsetup script do (zeroing all 1G costs seconds and
/// tmpfs space, and dm-thin needs only the superblock cleared).
pub fn lvm_conf(loopdev: &str, dir: &Path) -> String {
    format!(
        r#"config {{ checks = 1 }}
devices {{
  filter = [ "a|^{loopdev}$|", "r|.*|" ]
  global_filter = [ "a|^{loopdev}$|", "r|.*|" ]
  obtain_device_list_from_udev = 0
  external_device_info_source = "none"
  use_devicesfile = 0
  scan_lvs = 0
  hints = "none"
  multipath_component_detection = 0
  md_component_detection = 0
}}
activation {{
  udev_sync = 0
  udev_rules = 0
  monitoring = 0
  verify_udev_operations = 0
}}
global {{
  event_activation = 0
  use_lvmpolld = 0
  notify_dbus = 0
  locking_dir = "{d}/lock"
}}
allocation {{
  zero_metadata = 0
}}
backup {{
  backup = 0
  archive = 0
  backup_dir = "{d}/backup"
  archive_dir = "{d}/archive"
}}
"#,
        d = dir.display()
    )
}

/// A root-filesystem-like archive: 40 directories of 50 files, mostly small (0.5-24 KiB, as
/// configs, scripts and modules), two of each directory 0.5-1.5 MB (as shared libraries), a
/// symlink and a hard link per directory. (archive path, files' bytes, entries)
pub fn rootfs_tar(path: &Path) -> (u64, u64) {
    let mut b = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(path).unwrap()));
    let mut seed = 0x1234_5678u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h
    };
    let (mut bytes, mut entries) = (0u64, 0u64);
    for d in 0..40u64 {
        let dir = format!("usr/lib/pkg{d}");
        b.append_data(&mut header(tar::EntryType::Directory, 0o755, 0), &dir, std::io::empty()).unwrap();
        for f in 0..50 {
            let size = if f % 25 == 0 { 500_000 + next() % 1_000_000 } else { 512 + next() % 24_000 };
            let body: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_mul(31) ^ (d as u8) ^ (f as u8)).collect();
            let mode = if f % 10 == 0 { 0o755 } else { 0o644 };
            b.append_data(&mut header(tar::EntryType::Regular, mode, size), format!("{dir}/file{f}"), &body[..]).unwrap();
            bytes += size;
        }
        b.append_link(&mut header(tar::EntryType::Symlink, 0o777, 0), format!("{dir}/current"), "file0").unwrap();
        b.append_link(&mut header(tar::EntryType::Link, 0o644, 0), format!("{dir}/file1.hard"), format!("{dir}/file1")).unwrap();
        entries += 53;
    }
    b.into_inner().unwrap();
    (bytes, entries)
}
