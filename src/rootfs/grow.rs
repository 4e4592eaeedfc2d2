//! Grow the ext4 or xfs filesystem on a volume to the volume's size, online (through a private
//! mount that shares the superblock with any existing mount).

use crate::error::{Error, Result};
use crate::pool::{Pool, VolRef};

/// Grow the filesystem on `v` to fill its device. Returns the filesystem's new size in bytes.
pub fn grow_fs(pool: &Pool, v: &VolRef) -> Result<u64> {
    let _ = (pool, v);
    Err(Error::invalid("command", "growing a filesystem is not implemented yet"))
}
