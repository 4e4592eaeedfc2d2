//! `/dev/mapper/<name>` without udev. devtmpfs makes `/dev/dm-<minor>` when the kernel
//! creates a dm device; we add the friendly link udev would have made. Where udev runs and has
//! already made it, it is left alone.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use super::Device;
use crate::error::{IoContext, Result};

/// The directory of the dm devices' friendly names.
pub const MAPPER_DIR: &str = "/dev/mapper";

/// `/dev/mapper/<name>`: the path of dm device `name`, whether or not it exists yet.
pub fn mapper_path(name: &str) -> PathBuf {
    Path::new(MAPPER_DIR).join(name)
}

/// Where the device can be opened, without touching /dev: the mapper link if it already
/// reaches `dev`, else devtmpfs's `/dev/dm-<minor>`. For read-only views, which must not
/// create links for a device a concurrent command may be removing.
pub fn existing(name: &str, dev: Device) -> PathBuf {
    let link = mapper_path(name);
    if refers_to(&link, dev) {
        link
    } else {
        PathBuf::from(format!("/dev/dm-{}", dev.minor))
    }
}

/// Make sure `/dev/mapper/<name>` reaches the device `dev`; return that path.
pub fn ensure(name: &str, dev: Device) -> Result<PathBuf> {
    let link = mapper_path(name);
    if refers_to(&link, dev) {
        return Ok(link);
    }
    let _ = std::fs::remove_file(&link); // stale: a previous device of that name
    let devnode = PathBuf::from(format!("/dev/dm-{}", dev.minor));
    if refers_to(&devnode, dev) {
        std::os::unix::fs::symlink(format!("../dm-{}", dev.minor), &link)
            .ctx(|| format!("linking {} to {}", link.display(), devnode.display()))?;
    } else {
        // No devtmpfs node (unusual /dev): make the block node ourselves.
        let devt = nix::sys::stat::makedev(dev.major.into(), dev.minor.into());
        nix::sys::stat::mknod(&link, nix::sys::stat::SFlag::S_IFBLK, nix::sys::stat::Mode::from_bits_truncate(0o600), devt)
            .map_err(std::io::Error::from)
            .ctx(|| format!("creating device node {}", link.display()))?;
    }
    Ok(link)
}

/// Remove the link for a device that is gone; a missing link is fine.
pub fn remove(name: &str) {
    let _ = std::fs::remove_file(mapper_path(name));
}

fn refers_to(path: &Path, dev: Device) -> bool {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() => {
            let rdev = m.rdev();
            nix::sys::stat::major(rdev) as u32 == dev.major && nix::sys::stat::minor(rdev) as u32 == dev.minor
        }
        _ => false,
    }
}
