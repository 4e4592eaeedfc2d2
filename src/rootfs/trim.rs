//! `rcx-dm trim`: give the blocks of files deleted inside a volume's filesystem back to the
//! pool and, through discard passdown, to the host (FITRIM on a private mount).
//!
//! The private mount (`mount::with_mounted`) of a device that is already mounted elsewhere,
//! even in a container's namespace, shares that mount's superblock, so trimming a volume in
//! use works and sees its latest frees. An inactive volume is activated for the trim only.

use std::os::fd::AsRawFd;
use std::path::Path;

use serde::Serialize;

use super::fs::{self, Fs};
use super::{mount, populate};
use crate::error::{Errno, Error, IoContext, Result};
use crate::pool::{Pool, VolRef};

/// What one volume's trim did.
#[derive(Debug, Clone, Serialize)]
pub struct TrimReport {
    /// The volume's id.
    pub id: u32,
    /// Bytes the filesystem reported as trimmed (FITRIM's range length).
    pub trimmed_bytes: u64,
    /// `trim --all`: why this volume could not be trimmed (the others still were).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Trim one volume.
pub fn trim(pool: &Pool, v: &VolRef) -> Result<TrimReport> {
    trim_checked(pool, v).map(|(r, _)| r)
}

/// Trim every writable volume that holds a filesystem. Read-only bases and layers (snapshots
/// share their blocks, and nothing deletes files in them) and volumes without a filesystem are
/// skipped; a volume that fails is reported with its error and the others are still trimmed.
pub fn trim_all(pool: &Pool) -> Result<Vec<TrimReport>> {
    let mut out = Vec::new();
    for vol in pool.volumes()? {
        if vol.read_only {
            continue;
        }
        match trim_checked(pool, &VolRef::Id(vol.id)) {
            Ok((r, _)) => out.push(r),
            Err(Error::NoFilesystem { .. }) => {}
            // Deleted meanwhile by another command.
            Err(Error::NoSuchVolume { .. }) => {}
            Err(e) => out.push(TrimReport { id: vol.id, trimmed_bytes: 0, error: Some(e.to_string()) }),
        }
    }
    Ok(out)
}

fn trim_checked(pool: &Pool, v: &VolRef) -> Result<(TrimReport, Fs)> {
    let name = v.to_string();
    pool.with_device(
        v,
        |rec| if rec.read_only { Err(Error::VolumeReadOnly { vol: name.clone(), op: "trimmed" }) } else { Ok(()) },
        |rec, dev| {
            let fs = fs::probe(&name, dev, false)?;
            let mnt = populate::mountpoint(pool)?;
            let trimmed = private_rw(&name, "trim", dev, fs, &mnt, fitrim)?;
            Ok((TrimReport { id: rec.id, trimmed_bytes: trimmed, error: None }, fs))
        },
    )
}

/// `mount::with_mounted`, with the kernel's refusal of a read-write mount of a device that is
/// mounted read-only elsewhere (EBUSY) turned into an error that says so.
pub(crate) fn private_rw<T: Send>(
    vol: &str,
    op: &'static str,
    dev: &Path,
    fs: Fs,
    mnt: &Path,
    work: impl FnOnce(&Path) -> Result<T> + Send,
) -> Result<T> {
    let mut mounted = false;
    let r = mount::with_mounted(dev, fs, mnt, |root| {
        mounted = true;
        work(root)
    });
    match r {
        Err(e) if !mounted && e.errno() == Some(Errno::EBUSY) => Err(Error::MountedReadOnly { vol: vol.to_string(), op }),
        r => r,
    }
}

/// syncfs, then FITRIM over the whole filesystem; the bytes the kernel trimmed.
fn fitrim(root: &Path) -> Result<u64> {
    #[repr(C)]
    struct FstrimRange {
        start: u64,
        len: u64,
        minlen: u64,
    }
    nix::ioctl_readwrite!(fitrim_ioctl, b'X', 121, FstrimRange);
    let dir = std::fs::File::open(root).ctx(|| format!("opening {}", root.display()))?;
    xfs_free_deferred(&dir);
    // Blocks freed by a delete that is not yet committed to the journal still count as used:
    // commit first so that a file deleted just now is trimmed too.
    nix::unistd::syncfs(&dir)
        .map_err(std::io::Error::from)
        .ctx(|| format!("syncing the filesystem at {}", root.display()))?;
    let mut range = FstrimRange { start: 0, len: u64::MAX, minlen: 0 };
    // SAFETY: FITRIM reads and writes one fstrim_range.
    unsafe { fitrim_ioctl(dir.as_raw_fd(), &mut range) }
        .map_err(std::io::Error::from)
        .ctx(|| format!("FITRIM on {}", root.display()))?;
    Ok(range.len)
}

/// xfs frees an unlinked file's blocks in a background worker (inodegc, Linux 5.15+), and those
/// blocks stay busy until the next log commit: a file deleted just before a trim would be freed
/// after syncfs and missed by FITRIM (seen as a flaky vm-test). XFS_IOC_FREE_EOFBLOCKS flushes
/// that worker (and drops speculative preallocation, which a trim wants gone too). Other
/// filesystems answer ENOTTY, which is fine: best effort.
fn xfs_free_deferred(dir: &std::fs::File) {
    #[repr(C)]
    struct XfsFsEofblocks {
        version: u32,
        flags: u32,
        uid: u32,
        gid: u32,
        prid: u32,
        pad32: u32,
        min_file_size: u64,
        pad64: [u64; 12],
    }
    const _: () = assert!(std::mem::size_of::<XfsFsEofblocks>() == 128);
    const XFS_EOFBLOCKS_VERSION: u32 = 1;
    const XFS_EOF_FLAGS_SYNC: u32 = 1;
    nix::ioctl_read!(xfs_free_eofblocks, b'X', 58, XfsFsEofblocks);
    let mut req = XfsFsEofblocks {
        version: XFS_EOFBLOCKS_VERSION,
        flags: XFS_EOF_FLAGS_SYNC,
        uid: 0,
        gid: 0,
        prid: 0,
        pad32: 0,
        min_file_size: 0,
        pad64: [0; 12],
    };
    // SAFETY: the kernel reads one xfs_fs_eofblocks (128 bytes, the layout above).
    if let Err(e) = unsafe { xfs_free_eofblocks(dir.as_raw_fd(), &mut req) } {
        tracing::debug!("XFS_IOC_FREE_EOFBLOCKS: {e} (not xfs, or an old kernel)");
    }
}
