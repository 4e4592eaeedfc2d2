//! `linear`: map a range onto another device at an offset.

use super::{Device, Target};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearTarget {
    pub dev: Device,
    pub offset_sectors: u64,
}

impl Target for LinearTarget {
    const TYPE: &'static str = "linear";
    fn params(&self) -> String {
        format!("{} {}", self.dev, self.offset_sectors)
    }
}
