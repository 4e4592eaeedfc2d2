//! What the fuzz targets share: a scratch directory per process (reset per input), resource caps
//! that keep one input from filling the disk, and a reader that bounds decompressed bytes.
//!
//! Caps are the harness's, not rcx-dm's: a 1 KB zstd stream of zeros or a GNU sparse header
//! claiming a terabyte would otherwise make one execution write gigabytes. rcx-dm's own limits
//! (issue 13, defect 8) are tested by its unit tests; here a capped input simply ends in an error.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Largest file the process may write (RLIMIT_FSIZE; past it writes fail with EFBIG).
pub const MAX_FILE_BYTES: u64 = 8 << 20;
/// Decompressed bytes a target reads from one input before giving up.
pub const MAX_STREAM_BYTES: u64 = 16 << 20;

struct Scratch {
    base: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = remove_all(&self.base);
    }
}

static SCRATCH: OnceLock<PathBuf> = OnceLock::new();

/// This process's scratch directory (under $RCX_FUZZ_SCRATCH, else /dev/shm when it exists, else
/// the temp dir), made once, with the caps applied. Removed by `tools/fuzz` after the run (a
/// libFuzzer process ends with exit(), so no destructor runs).
pub fn scratch() -> &'static Path {
    SCRATCH.get_or_init(|| {
        caps();
        let parent = std::env::var_os("RCX_FUZZ_SCRATCH").map(PathBuf::from).unwrap_or_else(|| {
            let shm = Path::new("/dev/shm");
            if shm.is_dir() {
                shm.to_owned()
            } else {
                std::env::temp_dir()
            }
        });
        let base = parent.join(format!("rcx-dm-fuzz.{}", std::process::id()));
        let _ = remove_all(&base);
        fs::create_dir_all(&base).expect("making the fuzz scratch directory");
        // Not dropped: see above. Kept as a type so a test harness could.
        std::mem::forget(Scratch { base: base.clone() });
        base
    })
}

/// `scratch()/name`, emptied (made anew).
pub fn fresh(name: &str) -> PathBuf {
    let d = scratch().join(name);
    if let Err(e) = remove_all(&d) {
        panic!("harness: cannot empty {}: {e}", d.display());
    }
    fs::create_dir(&d).expect("making a scratch directory");
    d
}

/// `rm -rf`, also through directories a layer left without permissions (mode 000 as non-root).
pub fn remove_all(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    if fs::remove_dir_all(p).is_ok() {
        return Ok(());
    }
    open_up(p);
    fs::remove_dir_all(p)
}

fn open_up(p: &Path) {
    let Ok(m) = fs::symlink_metadata(p) else { return };
    if m.is_dir() {
        let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
        if let Ok(rd) = fs::read_dir(p) {
            for e in rd.flatten() {
                open_up(&e.path());
            }
        }
    }
}

/// RLIMIT_FSIZE (and SIGXFSZ ignored, so an oversized write is an EFBIG error, not a kill).
fn caps() {
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let lim = libc::rlimit { rlim_cur: MAX_FILE_BYTES, rlim_max: MAX_FILE_BYTES };
        libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
    }
}

/// A reader that fails (rather than ends) after `left` bytes, so a capped stream is never
/// mistaken for a complete one.
pub struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R> Capped<R> {
    pub fn new(inner: R, max: u64) -> Self {
        Capped { inner, left: max }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::other("fuzz harness: stream longer than the harness's cap"));
        }
        let n = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let got = self.inner.read(&mut buf[..n])?;
        self.left -= got as u64;
        Ok(got)
    }
}

/// Every path under `dir` (relative), recursively, without following symlinks.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    fn go(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = fs::read_dir(root.join(rel)) else { return };
        for e in rd.flatten() {
            let r = rel.join(e.file_name());
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            out.push(r.clone());
            if is_dir {
                go(root, &r, out);
            }
        }
    }
    let mut out = Vec::new();
    go(dir, Path::new(""), &mut out);
    out.sort();
    out
}

/// A lower layer for whiteouts to act on: directories, files, a symlinked directory and a
/// looping symlink, under `root`.
pub fn lower(root: &Path) {
    use std::os::unix::fs::symlink;
    for d in ["a", "a/b", "etc", "usr", "usr/lib", "opq", "opq/sub"] {
        fs::create_dir(root.join(d)).unwrap();
    }
    for f in ["a/f", "a/b/g", "etc/passwd", "usr/lib/libc.so", "opq/x", "opq/sub/y"] {
        fs::write(root.join(f), b"lower").unwrap();
    }
    symlink("usr/lib", root.join("lib")).unwrap();
    symlink("loop", root.join("loop")).unwrap();
    symlink("/etc", root.join("abs")).unwrap();
}

/// A directory beside the tree holding one file: whatever a layer does, it must stay as it is.
pub fn sentinel(base: &Path) {
    let d = base.join("outside");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("keep"), b"keep").unwrap();
}

/// Panics if anything beside the tree changed: the base holds only `root` and `outside`,
/// `outside` only `keep` with its content.
pub fn check_sentinel(base: &Path) {
    let mut names: Vec<_> = fs::read_dir(base).unwrap().flatten().map(|e| e.file_name()).collect();
    names.sort();
    assert_eq!(names, ["outside", "root"], "a layer wrote beside the tree in {}", base.display());
    let od = fs::symlink_metadata(base.join("outside")).unwrap();
    assert!(od.file_type().is_dir(), "the directory beside the tree was replaced");
    let names: Vec<_> = fs::read_dir(base.join("outside")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names, ["keep"], "a layer wrote into the directory beside the tree");
    let m = fs::symlink_metadata(base.join("outside/keep")).unwrap();
    assert!(m.file_type().is_file(), "the file beside the tree was replaced");
    assert_eq!(fs::read(base.join("outside/keep")).unwrap(), b"keep", "a layer wrote beside the tree");
}

/// With RCX_FUZZ_DEBUG set, prints what a target's parser said about the input (to check that
/// seeds get deep: `RCX_FUZZ_DEBUG=1 tools/fuzz --replay TARGET fuzz/seeds/TARGET/*`).
pub fn debug(what: &str, v: &dyn std::fmt::Debug) {
    static ON: OnceLock<bool> = OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("RCX_FUZZ_DEBUG").is_some()) {
        eprintln!("rcx-dm-fuzz: {what}: {v:?}");
    }
}
