//! `thin resize`: a volume's device grows (its table reloaded with the new length, around a
//! suspend when it is live) and its record with it. The filesystem on it is grown by
//! `rootfs::grow`.

use super::{Pool, VolRef, Volume};
use crate::error::{Error, Result};

impl Pool {
    /// Grow volume `v` to `size` bytes. Shrinking and read-only volumes are refused.
    pub fn resize_volume(&self, v: &VolRef, size: u64) -> Result<Volume> {
        let _ = (v, size);
        Err(Error::invalid("command", "thin resize is not implemented yet"))
    }
}
