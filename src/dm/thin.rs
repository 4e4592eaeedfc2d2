//! `thin`: one thin volume of a pool, and its status line.

use super::{Device, Target};
pub use devicemapper::ThinStatus;

use crate::error::{Error, Result};

/// `thin <pool dev> <dev id>`: a thin volume whose blocks the pool provisions on first write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinTarget {
    /// The `thin-pool` dm device the volume lives in.
    pub pool: Device,
    /// The volume's device id inside the pool (the kernel's 24-bit id, given to `create_thin`
    /// or `create_snap`).
    pub id: u32,
}

impl Target for ThinTarget {
    const TYPE: &'static str = "thin";
    fn params(&self) -> String {
        format!("{} {}", self.pool, self.id)
    }
}

/// Parse a thin device's status line (`<nr mapped sectors> <highest mapped sector>`, `Fail` or
/// `Error`) with the `devicemapper` crate's parser.
pub fn parse_thin_status(line: &str) -> Result<ThinStatus> {
    line.trim().parse::<ThinStatus>().map_err(|_| Error::Inconsistent(format!("unexpected thin status '{line}'")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_thin_status() {
        let mapped = |s: &str| match parse_thin_status(s).unwrap() {
            ThinStatus::Working(w) => Some((*w.nr_mapped_sectors, w.highest_mapped_sector.map(|s| *s))),
            _ => None,
        };
        assert_eq!(mapped("2048 4095"), Some((2048, Some(4095))));
        assert_eq!(mapped("0 -"), Some((0, None)));
        assert!(matches!(parse_thin_status("Fail").unwrap(), ThinStatus::Fail));
        assert!(matches!(parse_thin_status("Error").unwrap(), ThinStatus::Error));
        assert!(parse_thin_status("x").is_err());
    }

    #[test]
    fn renders_table() {
        let t = ThinTarget { pool: Device { major: 253, minor: 0 }, id: 7 };
        assert_eq!(t.params(), "253:0 7");
    }
}
