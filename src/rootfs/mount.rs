//! A volume mounted privately: in a mount namespace of one short-lived thread, never in the
//! host's. Other processes never see the mount, and if rcx-dm dies the kernel drops the
//! namespace and the mount with it: nothing to clean up after a crash.

use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use super::fs::Fs;
use crate::error::{IoContext, Result};

/// Mount `dev` (holding `fs`) on `mountpoint` in a new mount namespace private to a worker
/// thread, run `work` there with the mount's path, then sync and unmount. `mountpoint` is an
/// existing directory; several threads may use the same one at once (each namespace has its
/// own mount on it).
pub(crate) fn with_mounted<T: Send>(
    dev: &Path,
    fs: Fs,
    mountpoint: &Path,
    work: impl FnOnce(&Path) -> Result<T> + Send,
) -> Result<T> {
    with_mounted_flags(dev, fs, mountpoint, MsFlags::MS_NOATIME, work)
}

/// [`with_mounted`], read-only: for reading an image layer, which must not change.
pub(crate) fn with_mounted_ro<T: Send>(
    dev: &Path,
    fs: Fs,
    mountpoint: &Path,
    work: impl FnOnce(&Path) -> Result<T> + Send,
) -> Result<T> {
    with_mounted_flags(dev, fs, mountpoint, MsFlags::MS_NOATIME | MsFlags::MS_RDONLY, work)
}

fn with_mounted_flags<T: Send>(
    dev: &Path,
    fs: Fs,
    mountpoint: &Path,
    flags: MsFlags,
    work: impl FnOnce(&Path) -> Result<T> + Send,
) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // CLONE_NEWNS implies CLONE_FS: this thread alone gets the new namespace.
            unshare(CloneFlags::CLONE_NEWNS)
                .map_err(std::io::Error::from)
                .ctx(|| "creating a private mount namespace (needs root)".to_string())?;
            // Slave, not private: our mount never propagates back to the host, while the host's
            // unmounts still reach the copies this namespace holds. A private copy would pin
            // every filesystem mounted at this moment until the work ends, and another
            // process's umount + dm remove would meet EBUSY meanwhile (as runc uses rslave).
            mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
                .map_err(std::io::Error::from)
                .ctx(|| "making the private mount namespace a slave of the host's".to_string())?;
            mount(Some(dev), mountpoint, Some(fs.kernel_name()), flags, fs.mount_data(flags.contains(MsFlags::MS_RDONLY)))
                .map_err(std::io::Error::from)
                .ctx(|| format!("mounting {} ({fs}) on {}", dev.display(), mountpoint.display()))?;
            let mut result = work(mountpoint);
            // umount writes everything back but reports no write-back error (a full pool's
            // EIO would be lost); syncfs does report them (Linux 5.8+), and leaves the umount
            // nothing to write.
            if result.is_ok() && !flags.contains(MsFlags::MS_RDONLY) {
                result = sync_fs(mountpoint).and(result);
            }
            // umount writes everything back (and the journal commit flushes), so the data is on
            // the thin device before any metadata commit that publishes it.
            let unmounted = umount2(mountpoint, MntFlags::empty())
                .map_err(std::io::Error::from)
                .ctx(|| format!("unmounting {} from {}", dev.display(), mountpoint.display()));
            let value = result?;
            unmounted?;
            Ok(value)
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// syncfs of the filesystem mounted on `dir`: its write-back done, errors reported.
fn sync_fs(dir: &Path) -> Result<()> {
    let fd = nix::fcntl::open(dir, nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
        .map_err(std::io::Error::from)
        .ctx(|| format!("opening {} to write it back", dir.display()))?;
    nix::unistd::syncfs(&fd).map_err(std::io::Error::from).ctx(|| {
        format!("writing back the filesystem on {} (is the pool out of space? `rcx-dm pool status` says)", dir.display())
    })
}
