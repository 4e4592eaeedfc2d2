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
