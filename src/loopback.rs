//! Backing storage for pools: sparse files attached to loop devices, or block devices the
//! caller owns. Loops are found again after a reboot by their backing file (sysfs), so
//! re-activation attaches only what is missing.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use loopdev::{LoopControl, LoopDevice};

use crate::dm::Device;
use crate::error::{Errno, Error, IoContext, Result};

/// Create a sparse file of `bytes`; it must not exist yet.
pub fn create_sparse(path: &Path, bytes: u64) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .ctx(|| format!("creating backing file {}", path.display()))?;
    f.set_len(bytes).ctx(|| format!("sizing {} to {bytes} bytes", path.display()))?;
    f.sync_all().ctx(|| format!("syncing {}", path.display()))
}

/// The loop device currently backed by `file`, if any.
pub fn find(file: &Path) -> Result<Option<PathBuf>> {
    let want = std::fs::canonicalize(file).ctx(|| format!("resolving {}", file.display()))?;
    let dir = match std::fs::read_dir("/sys/block") {
        Ok(d) => d,
        Err(_) => return Ok(None),
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else { continue };
        if Path::new(backing.trim_end()) == want {
            return Ok(Some(PathBuf::from("/dev").join(name)));
        }
    }
    Ok(None)
}

/// Attach `file` to a free loop device unless one already serves it; return the device.
pub fn attach(file: &Path) -> Result<PathBuf> {
    if let Some(dev) = find(file)? {
        return Ok(dev);
    }
    let ctl = LoopControl::open().ctx(|| "opening /dev/loop-control (is the loop module loaded?)".into())?;
    // Another process may grab the free device between GET_FREE and SET_FD: retry on EBUSY.
    for _ in 0..64 {
        let dev = ctl.next_free().ctx(|| "finding a free loop device".into())?;
        match dev.attach_file(file) {
            Ok(()) => return dev.path().ok_or_else(|| Error::Inconsistent("loop device without a path".into())),
            Err(e) if e.raw_os_error() == Some(Errno::EBUSY as i32) => continue,
            Err(e) => return Err(e).ctx(|| format!("attaching {} to {:?}", file.display(), dev.path())),
        }
    }
    Err(Error::Dm { op: "attach", dev: file.display().to_string(), errno: Some(Errno::EBUSY), msg: "no free loop device after 64 tries".into() })
}

/// Make the loop serving `file` (if any) re-read the file's size (LOOP_SET_CAPACITY), after the
/// file grew; returns the device's size in bytes now.
pub fn refresh_capacity(file: &Path) -> Result<Option<u64>> {
    let Some(dev) = find(file)? else { return Ok(None) };
    LoopDevice::open(&dev)
        .and_then(|d| d.set_capacity())
        .ctx(|| format!("telling {} the new size of {}", dev.display(), file.display()))?;
    Ok(Some(block_device(&dev)?.1))
}

/// Grow `file` to `bytes` (never shrinks it) and sync; sparse, so it costs no space.
pub fn grow_sparse(file: &Path, bytes: u64) -> Result<()> {
    let f = OpenOptions::new().write(true).open(file).ctx(|| format!("opening {}", file.display()))?;
    let len = f.metadata().ctx(|| format!("examining {}", file.display()))?.len();
    if len < bytes {
        f.set_len(bytes).ctx(|| format!("growing {} to {bytes} bytes", file.display()))?;
        f.sync_all().ctx(|| format!("syncing {}", file.display()))?;
    }
    Ok(())
}

/// Detach the loop serving `file`, if any.
pub fn detach(file: &Path) -> Result<()> {
    if let Some(dev) = find(file)? {
        LoopDevice::open(&dev)
            .and_then(|d| d.detach())
            .ctx(|| format!("detaching {}", dev.display()))?;
    }
    Ok(())
}

/// major:minor and size in bytes of a block device.
pub fn block_device(path: &Path) -> Result<(Device, u64)> {
    let meta = std::fs::metadata(path).ctx(|| format!("examining {}", path.display()))?;
    if !meta.file_type().is_block_device() {
        return Err(Error::invalid("device", format!("{} is not a block device", path.display())));
    }
    let rdev = meta.rdev();
    let dev = Device { major: nix::sys::stat::major(rdev) as u32, minor: nix::sys::stat::minor(rdev) as u32 };
    let f = File::open(path).ctx(|| format!("opening {}", path.display()))?;
    Ok((dev, device_size(&f).ctx(|| format!("reading the size of {}", path.display()))?))
}

fn device_size(f: &File) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 into `size`.
    unsafe { blkgetsize64(f.as_raw_fd(), &mut size) }.map_err(std::io::Error::from)?;
    Ok(size)
}

/// Zero the first `bytes` of a device so the kernel formats fresh thin metadata there.
pub fn zero_head(path: &Path, bytes: usize) -> Result<()> {
    let mut f = OpenOptions::new().write(true).open(path).ctx(|| format!("opening {}", path.display()))?;
    f.write_all(&vec![0u8; bytes]).ctx(|| format!("zeroing the start of {}", path.display()))?;
    f.sync_all().ctx(|| format!("syncing {}", path.display()))
}
