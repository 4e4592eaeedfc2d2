//! Workload 9: filling volumes against the peers, rounds interleaved.
//!
//! - `rcx-dm populate VOL --from layer.tar` (end to end: probe, scratch snapshot, private mount,
//!   extraction, unmount, swap) against GNU `tar -xpf` of the same archive into the same kind of
//!   fresh volume (a 1G ext4 snapshot of the pool's kept base), mounted as populate mounts it,
//!   timed from the mount through the unmount, so both include writing everything back.
//! - `rcx-dm populate VOL --from DIR` against `rsync -aHAX DIR/ MNT/`, the same way.
//! - `rcx-dm image import` of a 200 MiB OCI layout (and, end to end from the archive, `tar -xf`
//!   of it + the import) against `ctr image import --snapshotter overlayfs` of the archive;
//!   every import starts from an empty store (the image and its layers removed and checked
//!   gone between rounds).
//! - Peak RSS (wait4's ru_maxrss of the child) of `populate` and `image import` for single-layer
//!   images of two sizes.
//!
//! Rows: `fill-tar`, `fill-dir`, `import` (ms per system), `rss` (KiB; x = source MiB).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use nix::mount::{mount, umount, MsFlags};

use crate::containerd::Ctrd;
use crate::image::Image;
use crate::{ms_since, row, wait_for, Tools};

const MIB: f64 = (1u64 << 20) as f64;

pub struct Fill<'a> {
    pub tools: &'a Tools,
    pub root: &'a Path,
    pub pool: &'a str,
    pub dir: PathBuf,
}

impl Fill<'_> {
    fn rcx_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.tools.bin("rcx-dm"));
        c.args(args)
            .env("RCX_DM_ROOT", self.root)
            .env("RCX_DM_POOL", self.pool)
            .env("RCX_DM_OVERCOMMIT", "1")
            .env("LD_LIBRARY_PATH", &self.tools.lib_dir);
        c
    }

    /// Untimed rcx-dm call that must succeed: its stdout.
    fn rcx(&self, args: &[&str]) -> String {
        let out = self.rcx_cmd(args).output().expect("spawn rcx-dm");
        assert!(out.status.success(), "rcx-dm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn tool(&self, name: &str) -> Command {
        let mut c = Command::new(self.tools.bin(name));
        c.env("LD_LIBRARY_PATH", &self.tools.lib_dir).env("PATH", self.tools.path());
        c
    }

    /// Runs `cmd` to its end, which must be a success: (ms, peak RSS in KiB of it and the
    /// children it waited for), from wait4.
    fn measured(&self, mut cmd: Command, what: &str) -> (f64, u64) {
        let err = self.dir.join("child.stderr");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(File::create(&err).unwrap());
        let t = Instant::now();
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
        let pid = child.id() as libc::pid_t;
        let mut status = 0;
        // SAFETY: zeroed rusage is a valid out-parameter.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our unwaited child; both pointers are valid.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        let ms = ms_since(t);
        assert_eq!(r, pid, "wait4 for {what}: {}", std::io::Error::last_os_error());
        let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        assert!(ok, "{what} failed ({status:#x}): {}", std::fs::read_to_string(&err).unwrap_or_default());
        drop(child); // reaped above; dropping a Child neither waits nor kills
        (ms, ru.ru_maxrss as u64)
    }

    /// A fresh 1G ext4 volume `name` (a snapshot of the kept base): its device.
    fn fresh(&self, name: &str) -> PathBuf {
        let out = self.rcx(&["thin", "create", "--fs", "ext4", "--size", "1G", "--name", name]);
        PathBuf::from(out.lines().last().expect("device line").trim())
    }

    /// `rcx-dm populate` of a fresh, inactive volume from `src`: (ms, KiB).
    fn populate(&self, vol: &str, src: &Path) -> (f64, u64) {
        self.fresh(vol);
        self.rcx(&["deactivate", vol]);
        let r = self.measured(self.rcx_cmd(&["populate", vol, "--from", src.to_str().unwrap()]), "rcx-dm populate");
        self.rcx(&["delete", vol, "--force"]);
        r
    }

    /// A peer writing into a fresh volume mounted as populate mounts it (noatime,
    /// noinit_itable), timed from the mount through the unmount: (ms, KiB of the peer).
    fn peer(&self, vol: &str, mut cmd: impl FnMut(&Path) -> Command, what: &str) -> (f64, u64) {
        let dev = self.fresh(vol);
        let mnt = self.dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let t = Instant::now();
        mount(Some(&dev), &mnt, Some("ext4"), MsFlags::MS_NOATIME, Some("noinit_itable")).expect("mount");
        let (_, rss) = self.measured(cmd(&mnt), what);
        umount(&mnt).expect("umount");
        let ms = ms_since(t);
        self.rcx(&["delete", vol, "--force"]);
        (ms, rss)
    }
}

fn mib(p: &Path) -> f64 {
    std::fs::metadata(p).unwrap().len() as f64 / MIB
}

/// Populate from a tar and from a directory, `rounds` interleaved rounds after one unmeasured.
pub fn populate(f: &Fill, rounds: usize) {
    let tar = f.dir.join("rootfs.tar");
    let (bytes, entries) = crate::common::rootfs_tar(&tar);
    let src = f.dir.join("rootfs");
    std::fs::create_dir_all(&src).unwrap();
    f.measured(
        {
            let mut c = f.tool("tar");
            c.arg("-xpf").arg(&tar).arg("-C").arg(&src);
            c
        },
        "tar -x of the source directory",
    );
    println!("META,fill_tar_bytes,{}", std::fs::metadata(&tar).unwrap().len());
    println!("META,fill_file_bytes,{bytes}");
    println!("META,fill_entries,{entries}");
    let tar_mib = mib(&tar);
    for i in 0..=rounds {
        let (a, ra) = f.populate(&format!("w9t-{i}"), &tar);
        let (b, rb) = f.peer(&format!("w9g-{i}"), |m| {
            let mut c = f.tool("tar");
            c.arg("-xpf").arg(&tar).arg("-C").arg(m);
            c
        }, "GNU tar -xpf");
        let (c, rc) = f.populate(&format!("w9d-{i}"), &src);
        let (d, rd) = f.peer(&format!("w9r-{i}"), |m| {
            let mut c = f.tool("rsync");
            c.arg("-aHAX").arg(format!("{}/", src.display())).arg(format!("{}/", m.display()));
            c
        }, "rsync -aHAX");
        if i == 0 {
            continue; // warm-up: the ext4 base, page cache of the source and the binaries
        }
        row("fill-tar", "rcx-dm", 0, a);
        row("fill-tar", "gnu-tar", 0, b);
        row("fill-dir", "rcx-dm", 0, c);
        row("fill-dir", "rsync", 0, d);
        let x = format!("{tar_mib:.0}");
        row("rss", "populate-tar", &x, ra as f64);
        row("rss", "gnu-tar", &x, rb as f64);
        row("rss", "populate-dir", &x, rc as f64);
        row("rss", "rsync", &x, rd as f64);
        eprintln!("bench: workload 9: round {i}: populate tar {a:.0} ms, GNU tar {b:.0} ms, populate dir {c:.0} ms, rsync {d:.0} ms");
    }
}

/// Non-empty lines `ctr ARGS` prints, past `skip` header lines.
fn ctr_lines(c: &Ctrd, args: &[&str], skip: usize) -> Vec<String> {
    c.ok(args).1.lines().skip(skip).filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

/// Image import against ctr with overlayfs, `rounds` interleaved rounds after one unmeasured;
/// then peak RSS of import and populate for `small` (and `big`, the timed image).
pub fn import(f: &Fill, c: &Ctrd, big: &Image, small: &Image, rounds: usize) {
    println!("META,import_bytes,{}", big.content_bytes);
    println!("META,import_archive_bytes,{}", std::fs::metadata(&big.archive).unwrap().len());
    let unpacked = f.dir.join("unpacked");
    let layer = big.chain_id.trim_start_matches("sha256:").to_string();
    for i in 0..=rounds {
        let (a, ra) = f.measured(f.rcx_cmd(&["image", "import", big.layout.to_str().unwrap(), "--name", "w9", "--size", "1G"]), "rcx-dm image import");
        f.rcx(&["image", "rm", "w9"]);
        // From the archive: what `ctr image import` is given.
        let t = Instant::now();
        std::fs::create_dir_all(&unpacked).unwrap();
        f.measured(
            {
                let mut t = f.tool("tar");
                t.arg("-xf").arg(&big.archive).arg("-C").arg(&unpacked);
                t
            },
            "tar -xf of the image archive",
        );
        f.measured(f.rcx_cmd(&["image", "import", unpacked.to_str().unwrap(), "--name", "w9", "--size", "1G"]), "rcx-dm image import");
        let b = ms_since(t);
        f.rcx(&["image", "rm", "w9"]);
        std::fs::remove_dir_all(&unpacked).unwrap();
        let (d, _) = c.ok(&["image", "import", "--snapshotter", "overlayfs", big.archive.to_str().unwrap()]);
        // Gone before the next round: the image, its content and its snapshot.
        c.ok(&["image", "rm", "--sync", &big.reference]);
        wait_for("containerd to remove the imported image's snapshot and content", || {
            ctr_lines(c, &["snapshot", "--snapshotter", "overlayfs", "ls"], 1).is_empty()
                && !ctr_lines(c, &["content", "ls", "-q"], 0).iter().any(|l| l.contains(&layer))
        });
        if i == 0 {
            continue;
        }
        row("import", "rcx-dm", 0, a);
        row("import", "rcx-dm-archive", 0, b);
        row("import", "ctr-overlayfs", 0, d);
        row("rss", "import", format!("{:.0}", big.content_bytes as f64 / MIB), ra as f64);
        eprintln!("bench: workload 9: round {i}: rcx-dm import {a:.0} ms, tar -x + import {b:.0} ms, ctr import {d:.0} ms");
    }
    let x = format!("{:.0}", small.content_bytes as f64 / MIB);
    let (_, r) = f.measured(f.rcx_cmd(&["image", "import", small.layout.to_str().unwrap(), "--name", "w9s", "--size", "1G"]), "rcx-dm image import");
    f.rcx(&["image", "rm", "w9s"]);
    row("rss", "import", &x, r as f64);
    for img in [small, big] {
        let (_, r) = f.populate("w9m", &img.layer_tar);
        row("rss", "populate-layer", format!("{:.0}", img.content_bytes as f64 / MIB), r as f64);
    }
}
