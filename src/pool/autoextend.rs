//! Auto-extend policy, with LVM's semantics (`thin_pool_autoextend_threshold` / `_percent`):
//! when data or metadata use crosses `threshold_percent`, grow that device by `step`, never past
//! `max` (data) or the kernel's metadata maximum, and never past what the host filesystem under
//! a sparse file can still back minus `host_reserve_bytes`. `pool monitor` and `serve` apply it.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::units::parse_bytes;

/// How far one auto-extend step grows a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// A percentage of the device's current size (LVM's `thin_pool_autoextend_percent`).
    Percent(u32),
    /// A fixed number of bytes.
    Bytes(u64),
}

impl Step {
    /// Bytes to add to a device of `current` bytes (at least 1).
    pub fn bytes_for(self, current: u64) -> u64 {
        match self {
            Step::Percent(p) => ((current as u128 * p as u128 / 100).min(u64::MAX as u128) as u64).max(1),
            Step::Bytes(b) => b.max(1),
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Percent(p) => write!(f, "{p}%"),
            Step::Bytes(b) => f.write_str(&crate::units::format_size(*b)),
        }
    }
}

impl std::str::FromStr for Step {
    type Err = Error;
    /// "20%" or a size ("1G").
    fn from_str(s: &str) -> Result<Step> {
        if let Some(p) = s.trim().strip_suffix('%') {
            return match p.trim().parse::<u32>() {
                Ok(n) if (1..=1000).contains(&n) => Ok(Step::Percent(n)),
                _ => Err(Error::invalid("autoextend step", format!("'{s}'; use a percentage from 1% to 1000%, or a size such as 1G"))),
            };
        }
        let b = parse_bytes(s, "autoextend step", "20%, 1G")?;
        if b == 0 {
            return Err(Error::invalid("autoextend step", "zero bytes; use e.g. 20% or 1G"));
        }
        Ok(Step::Bytes(b))
    }
}

/// The pool's auto-extend settings (one policy for data and metadata, as LVM has it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Autoextend {
    /// Extend when use reaches this percentage of the device; 100 turns auto-extend off.
    pub threshold_percent: u8,
    /// How much one extend adds to the device that crossed the threshold.
    pub step: Step,
    /// Data never grows past this many bytes; None: only the host's space (or the block
    /// device's size) limits it. Metadata stops at the kernel's maximum.
    pub max_data_bytes: Option<u64>,
    /// Space kept free on the host filesystem that holds sparse backing files.
    pub host_reserve_bytes: u64,
}

/// Default threshold in percent: extend at 80% used. With [`DEFAULT_STEP`] and
/// [`DEFAULT_HOST_RESERVE`], the defaults an operator would expect: on, at 80% used, grow by
/// 20%, unbounded except by the host filesystem, which always keeps 1 GiB free.
pub const DEFAULT_THRESHOLD: u8 = 80;
/// Default step: grow by 20% of the device's current size.
pub const DEFAULT_STEP: Step = Step::Percent(20);
/// Default host reserve in bytes: 1 GiB kept free on the host filesystem.
pub const DEFAULT_HOST_RESERVE: u64 = 1 << 30;

impl Default for Autoextend {
    fn default() -> Self {
        Autoextend { threshold_percent: DEFAULT_THRESHOLD, step: DEFAULT_STEP, max_data_bytes: None, host_reserve_bytes: DEFAULT_HOST_RESERVE }
    }
}

impl Autoextend {
    /// Whether auto-extend is on (threshold below 100%).
    pub fn enabled(&self) -> bool {
        self.threshold_percent < 100
    }

    /// True when `used` of `total` has reached the threshold.
    pub fn crossed(&self, used: u64, total: u64) -> bool {
        self.enabled() && total > 0 && used.saturating_mul(100) >= total.saturating_mul(self.threshold_percent as u64)
    }

    /// The kernel's low-water mark for `total_blocks` data blocks: it raises a dm event when
    /// free blocks fall below it, which is when use crosses the threshold.
    pub fn low_water_blocks(&self, total_blocks: u64) -> u64 {
        let free_pct = 100 - self.threshold_percent.min(100) as u64;
        (total_blocks.saturating_mul(free_pct) / 100).max(1)
    }
}

/// `--autoextend-threshold`: "80", "80%", or "off" (= 100).
pub fn parse_threshold(s: &str) -> Result<u8> {
    let t = s.trim().trim_end_matches('%');
    if t.eq_ignore_ascii_case("off") {
        return Ok(100);
    }
    match t.parse::<u8>() {
        Ok(n) if (50..=100).contains(&n) => Ok(n),
        _ => Err(Error::invalid("autoextend threshold", format!("'{s}'; use a percentage from 50 to 100 (100 or 'off' turns auto-extend off)"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_and_apply() {
        assert_eq!("20%".parse::<Step>().unwrap(), Step::Percent(20));
        assert_eq!("1G".parse::<Step>().unwrap(), Step::Bytes(1 << 30));
        for bad in ["0%", "0", "x", "2000%"] {
            assert!(bad.parse::<Step>().is_err(), "{bad}");
        }
        assert_eq!(Step::Percent(20).bytes_for(10 << 30), 2 << 30);
        assert_eq!(Step::Bytes(64 << 10).bytes_for(1 << 40), 64 << 10);
    }

    #[test]
    fn thresholds_and_low_water() {
        assert_eq!(parse_threshold("80").unwrap(), 80);
        assert_eq!(parse_threshold("75%").unwrap(), 75);
        assert_eq!(parse_threshold("off").unwrap(), 100);
        for bad in ["49", "101", "x", ""] {
            assert!(parse_threshold(bad).is_err(), "{bad}");
        }
        let a = Autoextend::default();
        assert!(a.enabled());
        assert_eq!(a.low_water_blocks(1000), 200);
        assert!(!a.crossed(799, 1000));
        assert!(a.crossed(800, 1000));
        let off = Autoextend { threshold_percent: 100, ..a };
        assert!(!off.crossed(1000, 1000));
        assert_eq!(off.low_water_blocks(1000), 1);
    }
}
