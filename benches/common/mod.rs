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
