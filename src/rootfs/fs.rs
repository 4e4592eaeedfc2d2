//! The filesystems rcx-dm puts on volumes: recognised from the superblock, made with options
//! right for thin volumes, mounted with options right for snapshots of one base.
//!
//! Thin volumes read unprovisioned blocks as zeros. So zeroing at mkfs time buys nothing and
//! costs pool space: no discard pass (nothing is mapped yet), lazy inode-table and journal init
//! (the tables already read as zeros), and ext4 is always mounted `noinit_itable` so the
//! kernel's lazyinit thread does not later write those zeros into every container's snapshot.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// Filesystems rcx-dm formats and mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fs {
    /// ext4, made lazily (`lazy_itable_init`, `lazy_journal_init`, no discard).
    Ext4,
    /// XFS, made without a discard pass; mounted `nouuid` since snapshots share the base's UUID.
    Xfs,
}

impl Fs {
    /// The kernel's name of the filesystem, the type given to mount(2) (`ext4`, `xfs`).
    pub fn kernel_name(self) -> &'static str {
        match self {
            Fs::Ext4 => "ext4",
            Fs::Xfs => "xfs",
        }
    }

    /// Mount data. xfs refuses a second filesystem with the same UUID, and every snapshot of a
    /// base has the base's UUID: always `nouuid`. A read-only base is mounted without journal
    /// replay, so not even recovery writes to it. ext4 never runs lazy inode-table zeroing
    /// (see the module comment).
    pub fn mount_data(self, read_only_base: bool) -> Option<&'static str> {
        match (self, read_only_base) {
            (Fs::Ext4, false) => Some("noinit_itable"),
            (Fs::Ext4, true) => Some("noload"),
            (Fs::Xfs, false) => Some("nouuid"),
            (Fs::Xfs, true) => Some("nouuid,norecovery"),
        }
    }
}

impl std::fmt::Display for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kernel_name())
    }
}

impl std::str::FromStr for Fs {
    type Err = Error;
    fn from_str(s: &str) -> Result<Fs> {
        match s {
            "ext4" => Ok(Fs::Ext4),
            "xfs" => Ok(Fs::Xfs),
            _ => Err(Error::invalid("filesystem", format!("'{s}'; use ext4 or xfs"))),
        }
    }
}

/// Recognise the filesystem from its superblock: ext2/3/4 magic 0xEF53 at byte 1080, xfs
/// "XFSB" at byte 0.
pub fn detect(sb: &[u8]) -> Option<Fs> {
    if sb.len() >= 4 && &sb[..4] == b"XFSB" {
        return Some(Fs::Xfs);
    }
    if sb.len() >= 1082 && sb[1080] == 0x53 && sb[1081] == 0xEF {
        return Some(Fs::Ext4);
    }
    None
}

/// Read the superblock of `dev` and say what filesystem it holds. With `exclusive`, the device
/// is opened O_EXCL, which the kernel refuses (EBUSY) while any mount namespace has it mounted.
pub fn probe(vol: &str, dev: &Path, exclusive: bool) -> Result<Fs> {
    let f = open_checked(vol, dev, exclusive)?;
    let mut sb = vec![0u8; 4096];
    let n = read_at_most(&f, &mut sb).ctx(|| format!("reading the superblock of {}", dev.display()))?;
    detect(&sb[..n]).ok_or_else(|| Error::NoFilesystem {
        vol: vol.to_string(),
        found: if sb[..n].iter().all(|b| *b == 0) { "it is empty".into() } else { "unknown superblock".into() },
    })
}

/// Open a volume's device for reading; with `exclusive`, refused with a clear error while it
/// is mounted anywhere or held open.
fn open_checked(vol: &str, dev: &Path, exclusive: bool) -> Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    if exclusive {
        opts.custom_flags(libc::O_EXCL);
    }
    match opts.open(dev) {
        Ok(f) => Ok(f),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(Error::Busy {
            what: format!("{vol} ({})", dev.display()),
            state: "in use (mounted in another mount namespace, e.g. another container, or held open)",
            advice: "stop what uses it, or mark it read-only (`rcx-dm set-readonly`) and run snapshots of it",
        }),
        Err(e) => Err(e).ctx(|| format!("opening {}", dev.display())),
    }
}

fn read_at_most(f: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The mkfs command line for `fs` on `dev`. For ext4, `alloc_unit` (the pool's block size) is
/// passed as the RAID stripe so the filesystem allocates in whole pool blocks where it can.
pub fn mkfs_command(fs: Fs, dev: &Path, alloc_unit: u64) -> Command {
    let stripe_blocks = (alloc_unit / 4096).max(1);
    let mut c = match fs {
        Fs::Ext4 => {
            let mut c = Command::new("mkfs.ext4");
            c.args(["-q", "-F", "-b", "4096", "-E"]).arg(format!(
                "nodiscard,lazy_itable_init=1,lazy_journal_init=1,stride={stripe_blocks},stripe_width={stripe_blocks}"
            ));
            c
        }
        Fs::Xfs => {
            // No stripe unit for xfs: with one, mkfs.xfs 6.1 sizes the log below its own 64 MiB
            // minimum on small filesystems and refuses.
            let mut c = Command::new("mkfs.xfs");
            c.args(["-q", "-f", "-K"]);
            c
        }
    };
    c.arg(dev);
    c
}

/// Make a filesystem on `dev` (which must not be in use). Spawns mkfs: formatting is done once
/// per base, never on the per-container path.
pub fn format(vol: &str, dev: &Path, fs: Fs, alloc_unit: u64) -> Result<()> {
    // Exclusive open first: mkfs -F would happily format a mounted device.
    drop(open_checked(vol, dev, true)?);
    let mut cmd = mkfs_command(fs, dev, alloc_unit);
    let out = cmd.output().map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            Error::invalid("filesystem", format!("{:?} is not installed (e2fsprogs / xfsprogs); run tools/setup", cmd.get_program()))
        } else {
            Error::Io { context: format!("running {:?}", cmd.get_program()), source: e }
        }
    })?;
    if !out.status.success() {
        return Err(Error::Format {
            vol: vol.to_string(),
            fs: fs.kernel_name(),
            msg: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblocks() {
        let mut ext = vec![0u8; 4096];
        ext[1080] = 0x53;
        ext[1081] = 0xEF;
        assert_eq!(detect(&ext), Some(Fs::Ext4));
        let mut xfs = vec![0u8; 4096];
        xfs[..4].copy_from_slice(b"XFSB");
        assert_eq!(detect(&xfs), Some(Fs::Xfs));
        assert_eq!(detect(&[0u8; 4096]), None);
        assert_eq!(detect(&ext[..1000]), None);
    }

    #[test]
    fn xfs_is_always_nouuid() {
        assert_eq!(Fs::Xfs.mount_data(false), Some("nouuid"));
        assert!(Fs::Xfs.mount_data(true).unwrap().contains("nouuid"));
    }

    #[test]
    fn ext4_never_zeroes_inode_tables_on_mount() {
        assert_eq!(Fs::Ext4.mount_data(false), Some("noinit_itable"));
        let c = mkfs_command(Fs::Ext4, Path::new("/dev/x"), 65536);
        let args: Vec<_> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert!(args.iter().any(|a| a.contains("nodiscard") && a.contains("lazy_itable_init=1") && a.contains("stride=16")), "{args:?}");
        let x = mkfs_command(Fs::Xfs, Path::new("/dev/x"), 65536);
        let args: Vec<_> = x.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert!(args.contains(&"-K".to_string()), "{args:?}");
    }

    #[test]
    fn fs_names() {
        assert_eq!("xfs".parse::<Fs>().unwrap(), Fs::Xfs);
        assert!("btrfs".parse::<Fs>().is_err());
        assert_eq!(serde_json::to_string(&Fs::Ext4).unwrap(), "\"ext4\"");
    }
}
