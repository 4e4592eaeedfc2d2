//! `thin-pool`: the pool target's table and its status line.

use serde::Serialize;

use super::{Device, Target};
use crate::error::{Error, Result};

/// `thin-pool <metadata dev> <data dev> <data block size> <low water mark> [<#features>
/// <feature>...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinPoolTarget {
    /// The metadata device (its space is counted in 4 KiB metadata blocks).
    pub meta: Device,
    /// The data device the thin volumes' blocks are provisioned from.
    pub data: Device,
    /// The pool's data block size in 512-byte sectors: the unit of provisioning, a multiple
    /// of 128 (64 KiB) from 128 to 2097152 (1 GiB).
    pub block_sectors: u64,
    /// Free data blocks below which the kernel raises a dm event (once) so the pool can be
    /// extended before it fills; in data blocks, not sectors.
    pub low_water_blocks: u64,
    /// Zero newly provisioned blocks (the kernel's default); off = `skip_block_zeroing`.
    pub zero_new_blocks: bool,
    /// Fail writes at once when the pool fills instead of queueing them for 60 s.
    pub error_if_no_space: bool,
}

impl Target for ThinPoolTarget {
    const TYPE: &'static str = "thin-pool";
    fn params(&self) -> String {
        let mut features = Vec::new();
        if !self.zero_new_blocks {
            features.push("skip_block_zeroing");
        }
        if self.error_if_no_space {
            features.push("error_if_no_space");
        }
        let mut p = format!("{} {} {} {} {}", self.meta, self.data, self.block_sectors, self.low_water_blocks, features.len());
        for f in features {
            p.push(' ');
            p.push_str(f);
        }
        p
    }
}

/// A working pool's mode, the status line's `rw`, `ro` or `out_of_data_space` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    /// `rw`: normal operation.
    Rw,
    /// `ro`: the kernel switched the pool to read-only after a metadata error (or its metadata
    /// space ran out): no provisioning, no metadata changes; usually `needs_check` follows.
    Ro,
    /// `out_of_data_space`: no free data blocks; writes needing a new block are queued (or
    /// failed with `error_if_no_space`) until the data device is extended.
    OutOfDataSpace,
}

impl std::fmt::Display for PoolMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PoolMode::Rw => "rw",
            PoolMode::Ro => "ro",
            PoolMode::OutOfDataSpace => "out_of_data_space",
        })
    }
}

/// `<transaction id> <used meta>/<total meta> <used data>/<total data> <held root> <mode>
/// <discard> <no-space policy> <needs_check|-> [<meta low watermark>]`. Meta blocks are 4 KiB,
/// data blocks are the pool's block size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ThinPoolStatus {
    /// The metadata's transaction id: a number userspace sets (`set_transaction_id`) to tie
    /// its own records to the pool's committed metadata.
    pub transaction_id: u64,
    /// Metadata blocks (4 KiB each) in use.
    pub meta_used_blocks: u64,
    /// Metadata blocks (4 KiB each) on the metadata device.
    pub meta_total_blocks: u64,
    /// Data blocks (of the pool's block size) provisioned to thin volumes.
    pub data_used_blocks: u64,
    /// Data blocks (of the pool's block size) on the data device.
    pub data_total_blocks: u64,
    /// Root of a reserved metadata snapshot (for checking live metadata), if any.
    pub held_metadata_root: Option<u64>,
    /// The pool's mode (`rw`, `ro`, `out_of_data_space`).
    pub mode: PoolMode,
    /// The kernel flagged the metadata as needing `thin_check`/`thin_repair` (`needs_check`):
    /// the pool stays read-only until the metadata is repaired.
    pub needs_check: bool,
}

/// What the kernel says of a thin-pool: a working pool's figures, or that it failed. A failed
/// pool has no transaction id, no usage, no mode: nothing may be judged against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThinPoolState {
    /// The pool is running; its status figures.
    Working(ThinPoolStatus),
    /// `Fail` (the metadata or data device failed: the pool is in fail mode) or `Error`
    /// (the kernel could not even produce a status); the kernel's word.
    Failed(String),
}

impl ThinPoolState {
    /// Parse a thin-pool status line with the `devicemapper` crate's parser, into rcx-dm's
    /// serializable view (the figures `pool status --json` reports).
    pub fn parse(line: &str) -> Result<ThinPoolState> {
        use devicemapper::{ThinPoolStatus as Dm, ThinPoolStatusSummary as Summary};
        let bad = || Error::Inconsistent(format!("unexpected thin-pool status '{line}'"));
        let line = line.trim();
        // The crate indexes the used/total pairs without checking them: a line whose pairs
        // lack the '/' is refused here rather than panicking there.
        let f: Vec<&str> = line.split_whitespace().collect();
        let pairs_ok = f.len() >= 3 && f[1].contains('/') && f[2].contains('/');
        if !matches!(f.first(), Some(&("Fail" | "Error"))) && !pairs_ok {
            return Err(bad());
        }
        Ok(match line.parse::<Dm>().map_err(|_| bad())? {
            Dm::Fail => ThinPoolState::Failed("Fail".into()),
            Dm::Error => ThinPoolState::Failed("Error".into()),
            Dm::Working(w) => ThinPoolState::Working(ThinPoolStatus {
                transaction_id: w.transaction_id,
                meta_used_blocks: *w.usage.used_meta,
                meta_total_blocks: *w.usage.total_meta,
                data_used_blocks: *w.usage.used_data,
                data_total_blocks: *w.usage.total_data,
                held_metadata_root: w.held_metadata_root.map(|b| *b),
                mode: match w.summary {
                    Summary::Good => PoolMode::Rw,
                    Summary::ReadOnly => PoolMode::Ro,
                    Summary::OutOfSpace => PoolMode::OutOfDataSpace,
                },
                needs_check: w.needs_check,
            }),
        })
    }
}

impl ThinPoolStatus {
    /// A working pool's status line; `Fail` and `Error` are refused (see [`ThinPoolState`]).
    pub fn parse(line: &str) -> Result<ThinPoolStatus> {
        match ThinPoolState::parse(line)? {
            ThinPoolState::Working(s) => Ok(s),
            ThinPoolState::Failed(_) => Err(Error::Inconsistent(format!("unexpected thin-pool status '{line}'"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pool_status_lines() {
        let s = ThinPoolStatus::parse("7 345/262144 12/1638400 - rw discard_passdown error_if_no_space - 3080192").unwrap();
        assert_eq!(s.transaction_id, 7);
        assert_eq!((s.meta_used_blocks, s.meta_total_blocks), (345, 262144));
        assert_eq!((s.data_used_blocks, s.data_total_blocks), (12, 1638400));
        assert_eq!(s.mode, PoolMode::Rw);
        assert!(!s.needs_check);
        assert_eq!(s.held_metadata_root, None);
        let s = ThinPoolStatus::parse("3 10/100 100/100 42 out_of_data_space no_discard_passdown error_if_no_space needs_check 80").unwrap();
        assert_eq!(s.mode, PoolMode::OutOfDataSpace);
        assert_eq!(s.held_metadata_root, Some(42));
        assert!(s.needs_check);
        // `Fail` was once read as a pool with transaction id 0.
        assert_eq!(ThinPoolState::parse("Fail").unwrap(), ThinPoolState::Failed("Fail".into()));
        assert_eq!(ThinPoolState::parse("Error").unwrap(), ThinPoolState::Failed("Error".into()));
        assert!(ThinPoolStatus::parse("Fail").is_err());
        assert!(matches!(ThinPoolState::parse("7 1/2 3/4 - rw discard_passdown queue_if_no_space -").unwrap(), ThinPoolState::Working(s) if s.transaction_id == 7));
        assert!(ThinPoolStatus::parse("1 2/3").is_err());
        // No panic on pairs without their slash (the crate indexes them unchecked).
        assert!(ThinPoolStatus::parse("1 2 3 - rw discard_passdown queue_if_no_space -").is_err());
        assert!(ThinPoolStatus::parse("1 2/3 4/x - rw discard_passdown queue_if_no_space -").is_err());
    }

    #[test]
    fn renders_features() {
        let t = ThinPoolTarget {
            meta: Device { major: 7, minor: 1 },
            data: Device { major: 7, minor: 0 },
            block_sectors: 128,
            low_water_blocks: 16,
            zero_new_blocks: true,
            error_if_no_space: true,
        };
        assert_eq!(t.params(), "7:1 7:0 128 16 1 error_if_no_space");
        let t = ThinPoolTarget { zero_new_blocks: false, error_if_no_space: false, ..t };
        assert_eq!(t.params(), "7:1 7:0 128 16 1 skip_block_zeroing");
    }
}
