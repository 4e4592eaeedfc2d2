//! `thin`: one thin volume of a pool, and its status line.

use super::{DevNum, Target};
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinTarget {
    pub pool: DevNum,
    pub id: u32,
}

impl Target for ThinTarget {
    const TYPE: &'static str = "thin";
    fn params(&self) -> String {
        format!("{} {}", self.pool, self.id)
    }
}

/// `<nr mapped sectors> <highest mapped sector>`, or `Fail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThinStatus {
    Ok { mapped_sectors: u64, highest_mapped: Option<u64> },
    Fail,
}

impl ThinStatus {
    pub fn parse(line: &str) -> Result<ThinStatus> {
        let bad = || Error::Inconsistent(format!("unexpected thin status '{line}'"));
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["Fail", ..] => Ok(ThinStatus::Fail),
            [mapped, highest, ..] => Ok(ThinStatus::Ok {
                mapped_sectors: mapped.parse().map_err(|_| bad())?,
                highest_mapped: if *highest == "-" { None } else { Some(highest.parse().map_err(|_| bad())?) },
            }),
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_thin_status() {
        assert_eq!(
            ThinStatus::parse("2048 4095").unwrap(),
            ThinStatus::Ok { mapped_sectors: 2048, highest_mapped: Some(4095) }
        );
        assert_eq!(ThinStatus::parse("0 -").unwrap(), ThinStatus::Ok { mapped_sectors: 0, highest_mapped: None });
        assert_eq!(ThinStatus::parse("Fail").unwrap(), ThinStatus::Fail);
        assert!(ThinStatus::parse("x").is_err());
    }

    #[test]
    fn renders_table() {
        let t = ThinTarget { pool: DevNum { major: 253, minor: 0 }, id: 7 };
        assert_eq!(t.params(), "253:0 7");
    }
}
