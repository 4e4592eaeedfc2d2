//! Grow the ext4 or xfs filesystem on a volume to the volume's size, online (through a private
//! mount that shares the superblock with any existing mount).
//!
//! Both by ioctl on the mounted filesystem, as resize2fs and xfs_growfs do themselves:
//! EXT4_IOC_RESIZE_FS for ext4, XFS_IOC_FSGROWFSDATA (after XFS_IOC_FSGEOMETRY_V1 for the
//! current size and inode percentage) for xfs. No process: the result is the kernel's errno,
//! not a tool's message to parse, and nothing depends on the tools' versions or on them being
//! able to find a mount that exists only in this thread's namespace.

use std::os::fd::AsRawFd;
use std::path::Path;

use super::fs::{self, Fs};
use super::{populate, trim};
use crate::error::{Error, IoContext, Result};
use crate::pool::{Pool, VolRef};

/// Before `thin resize` changes anything: refuse a read-only volume, a smaller size, and a
/// filesystem that cannot be grown now because it is mounted read-only elsewhere (the private
/// read-write mount that growing needs is tried, and undone at once). Returns the filesystem
/// found, None for a volume without one (a raw device: only the volume grows).
pub fn preflight(pool: &Pool, v: &VolRef, size: u64) -> Result<Option<Fs>> {
    let name = v.to_string();
    pool.with_device(
        v,
        |rec| {
            if rec.read_only {
                Err(Error::VolumeReadOnly { vol: name.clone(), op: "resized" })
            } else if size < rec.size_bytes {
                Err(Error::ShrinkRefused { vol: name.clone(), have: rec.size_bytes, want: size })
            } else {
                Ok(())
            }
        },
        |_, dev| match fs::probe(&name, dev, false) {
            Ok(fs) => {
                let mnt = populate::mountpoint(pool)?;
                trim::private_rw(&name, "growing its filesystem", dev, fs, &mnt, |_| Ok(()))?;
                Ok(Some(fs))
            }
            Err(Error::NoFilesystem { .. }) => Ok(None),
            Err(e) => Err(e),
        },
    )
}

/// Grow the filesystem on `v` to fill its device. Returns the filesystem's new size in bytes
/// (statvfs: blocks times fragment size, what df shows). Nothing to do is a success.
pub fn grow_fs(pool: &Pool, v: &VolRef) -> Result<u64> {
    let name = v.to_string();
    pool.with_device(
        v,
        |rec| if rec.read_only { Err(Error::VolumeReadOnly { vol: name.clone(), op: "resized" }) } else { Ok(()) },
        |_, dev| {
            let fs = fs::probe(&name, dev, false)?;
            let dev_bytes = device_bytes(dev)?;
            let mnt = populate::mountpoint(pool)?;
            trim::private_rw(&name, "growing its filesystem", dev, fs, &mnt, |root| {
                let dir = std::fs::File::open(root).ctx(|| format!("opening {}", root.display()))?;
                match fs {
                    Fs::Ext4 => grow_ext4(&name, &dir, root, dev_bytes)?,
                    Fs::Xfs => grow_xfs(&name, &dir, dev_bytes)?,
                }
                fs_bytes(root)
            })
        },
    )
}

fn device_bytes(dev: &Path) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(dev).ctx(|| format!("opening {}", dev.display()))?;
    f.seek(SeekFrom::End(0)).ctx(|| format!("sizing {}", dev.display()))
}

fn fs_bytes(root: &Path) -> Result<u64> {
    let st = nix::sys::statvfs::statvfs(root).map_err(std::io::Error::from).ctx(|| format!("statvfs {}", root.display()))?;
    Ok(st.blocks() as u64 * st.fragment_size() as u64)
}

fn refused(vol: &str, fs: Fs, e: nix::Error) -> Error {
    Error::FsResize { vol: vol.to_string(), fs: fs.kernel_name(), op: "grow", msg: format!("{} ({e}); see dmesg", e.desc()) }
}

fn grow_ext4(vol: &str, dir: &std::fs::File, root: &Path, dev_bytes: u64) -> Result<()> {
    nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);
    let st = nix::sys::statvfs::statvfs(root).map_err(std::io::Error::from).ctx(|| format!("statvfs {}", root.display()))?;
    let block = st.block_size() as u64;
    let blocks = dev_bytes / block;
    // The kernel treats the current block count as nothing to do and refuses fewer.
    // SAFETY: EXT4_IOC_RESIZE_FS reads one u64, the new block count.
    unsafe { ext4_resize_fs(dir.as_raw_fd(), &blocks) }.map_err(|e| refused(vol, Fs::Ext4, e))?;
    Ok(())
}

/// The head of struct xfs_fsop_geom_v1 that this needs, then the rest as opaque bytes
/// (112 bytes in all, as the ioctl number encodes).
#[repr(C)]
struct XfsGeomV1 {
    blocksize: u32,
    _rtextsize: u32,
    _agblocks: u32,
    _agcount: u32,
    _logblocks: u32,
    _sectsize: u32,
    _inodesize: u32,
    imaxpct: u32,
    datablocks: u64,
    _rest: [u64; 9],
}

#[repr(C)]
struct XfsGrowfsData {
    newblocks: u64,
    imaxpct: u32,
}

fn grow_xfs(vol: &str, dir: &std::fs::File, dev_bytes: u64) -> Result<()> {
    const _: () = assert!(std::mem::size_of::<XfsGeomV1>() == 112 && std::mem::size_of::<XfsGrowfsData>() == 16);
    nix::ioctl_read!(xfs_geometry_v1, b'X', 100, XfsGeomV1);
    nix::ioctl_write_ptr!(xfs_growfs_data, b'X', 110, XfsGrowfsData);
    // SAFETY: all-zero is a valid XfsGeomV1 (plain integers); the ioctl fills it.
    let mut g: XfsGeomV1 = unsafe { std::mem::zeroed() };
    // SAFETY: XFS_IOC_FSGEOMETRY_V1 writes one xfs_fsop_geom_v1.
    unsafe { xfs_geometry_v1(dir.as_raw_fd(), &mut g) }.map_err(|e| refused(vol, Fs::Xfs, e))?;
    let newblocks = dev_bytes / g.blocksize.max(1) as u64;
    if newblocks <= g.datablocks {
        return Ok(());
    }
    // The same inode percentage: a different one would change it too.
    let req = XfsGrowfsData { newblocks, imaxpct: g.imaxpct };
    // SAFETY: XFS_IOC_FSGROWFSDATA reads one xfs_growfs_data.
    unsafe { xfs_growfs_data(dir.as_raw_fd(), &req) }.map_err(|e| refused(vol, Fs::Xfs, e))?;
    Ok(())
}
