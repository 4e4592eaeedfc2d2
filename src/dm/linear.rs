//! `linear`: map a range onto another device at an offset.

use super::{Device, Target};

/// `linear <dev> <offset>`: sector `start + n` of the mapped range is sector `offset + n` of
/// `dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearTarget {
    /// The underlying block device the range maps onto.
    pub dev: Device,
    /// Where on `dev` the range begins, in 512-byte sectors.
    pub offset_sectors: u64,
}

impl Target for LinearTarget {
    const TYPE: &'static str = "linear";
    fn params(&self) -> String {
        format!("{} {}", self.dev, self.offset_sectors)
    }
}
