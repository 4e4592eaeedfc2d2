//! The classic snapshot targets: `snapshot-origin`, `snapshot` (persistent `P` or transient `N`
//! copy-on-write store) and `snapshot-merge`, and their status line
//! (`<allocated>/<total> <metadata>` sectors, or `Invalid`, `Overflow`, `Merge failed`).
//!
//! Rules the kernel imposes (Documentation/admin-guide/device-mapper/snapshot.rst, dm-snap.c):
//! - the chunk size is a power of two and at most 2^21 sectors (the kernel refuses anything
//!   above INT_MAX bytes); checked here before a table is ever built;
//! - the origin (`snapshot-origin` or `snapshot-merge`) must be suspended while a `snapshot`
//!   target is loaded or unloaded;
//! - `snapshot-merge` takes the place of `snapshot-origin` and must not be loaded while a
//!   `snapshot-origin` for the same origin is live: [`load_merge`] refuses it;
//! - only persistent stores can be merged;
//! - a merge is complete when the allocated sectors equal the metadata sectors.

use serde::Serialize;

use super::{Dm, Device, Target};
use crate::error::{Error, Result};

/// The kernel refuses chunks larger than INT_MAX bytes: 2^21 sectors (1 GiB) is the largest
/// power of two it takes.
pub const MAX_CHUNK_SECTORS: u64 = 1 << 21;

/// A chunk size in 512-byte sectors the kernel accepts: a power of two, 1..=2^21.
pub fn validate_chunk_sectors(sectors: u64) -> Result<()> {
    if sectors == 0 || !sectors.is_power_of_two() || sectors > MAX_CHUNK_SECTORS {
        return Err(Error::invalid(
            "chunk size",
            format!(
                "{sectors} sectors ({} bytes); the kernel takes a power of two from 512 bytes up to 2^21 sectors (1G), e.g. 4K or 64K",
                sectors.saturating_mul(512)
            ),
        ));
    }
    Ok(())
}

/// `snapshot-origin <origin>`: reads go straight to the origin's real device; each write first
/// copies the old chunk into every snapshot's COW store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotOriginTarget {
    /// The origin's real device, which holds the current data.
    pub real: Device,
}

impl Target for SnapshotOriginTarget {
    const TYPE: &'static str = "snapshot-origin";
    fn params(&self) -> String {
        self.real.to_string()
    }
}

/// How the COW store keeps its exception table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Persistence {
    /// `P`: the table is on the COW device; survives deactivation and reboots; mergeable.
    Persistent,
    /// `N`: kept in kernel memory only; gone when the device is removed.
    Transient,
}

impl Persistence {
    fn letter(self) -> &'static str {
        match self {
            Persistence::Persistent => "P",
            Persistence::Transient => "N",
        }
    }
}

/// `snapshot <origin> <cow> <P|N> <chunk sectors>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotTarget {
    real: Device,
    cow: Device,
    persistence: Persistence,
    chunk_sectors: u64,
}

impl SnapshotTarget {
    /// Refuses a chunk size the kernel would refuse, and a COW that is the origin itself.
    pub fn new(real: Device, cow: Device, persistence: Persistence, chunk_sectors: u64) -> Result<SnapshotTarget> {
        validate_chunk_sectors(chunk_sectors)?;
        if real == cow {
            return Err(Error::invalid("COW device", format!("{cow} is the origin itself")));
        }
        Ok(SnapshotTarget { real, cow, persistence, chunk_sectors })
    }

    /// The COW store's chunk size in 512-byte sectors: the unit copied on a first write.
    pub fn chunk_sectors(&self) -> u64 {
        self.chunk_sectors
    }
}

impl Target for SnapshotTarget {
    const TYPE: &'static str = "snapshot";
    fn params(&self) -> String {
        format!("{} {} {} {}", self.real, self.cow, self.persistence.letter(), self.chunk_sectors)
    }
}

/// `snapshot-merge <origin> <cow> P <chunk sectors>`: loaded in place of the origin's
/// `snapshot-origin`, it copies the COW's chunks back into the origin in the background.
/// Only persistent stores can be merged, so there is no persistence to choose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMergeTarget {
    real: Device,
    cow: Device,
    chunk_sectors: u64,
}

impl SnapshotMergeTarget {
    /// Refuses a chunk size the kernel would refuse, and a COW that is the origin itself.
    /// The chunk size must be the one the snapshot's persistent store was made with.
    pub fn new(real: Device, cow: Device, chunk_sectors: u64) -> Result<SnapshotMergeTarget> {
        validate_chunk_sectors(chunk_sectors)?;
        if real == cow {
            return Err(Error::invalid("COW device", format!("{cow} is the origin itself")));
        }
        Ok(SnapshotMergeTarget { real, cow, chunk_sectors })
    }
}

impl Target for SnapshotMergeTarget {
    const TYPE: &'static str = "snapshot-merge";
    fn params(&self) -> String {
        format!("{} {} P {}", self.real, self.cow, self.chunk_sectors)
    }
}

/// The status line of a `snapshot` or `snapshot-merge` target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum SnapshotStatus {
    /// `<allocated>/<total> <metadata>`, all in sectors; allocated includes the metadata.
    Usage {
        /// 512-byte sectors of the COW store in use, data chunks and metadata together.
        allocated_sectors: u64,
        /// Size of the COW device in 512-byte sectors.
        total_sectors: u64,
        /// 512-byte sectors of the store's metadata (header and exception tables).
        metadata_sectors: u64,
    },
    /// The COW filled up (or failed): the snapshot is unusable and returns errors.
    Invalid,
    /// A write to the snapshot found no room (only with the `PO` store type); reads still work.
    Overflow,
    /// The kernel stopped a merge after an I/O error.
    MergeFailed,
    /// The store reports no usage.
    Unknown,
}

impl SnapshotStatus {
    /// Parse a `snapshot` or `snapshot-merge` status line. `Error::Inconsistent` for anything
    /// else, including figures that contradict each other (metadata above allocated, allocated
    /// above total).
    pub fn parse(line: &str) -> Result<SnapshotStatus> {
        let bad = || Error::Inconsistent(format!("unexpected snapshot status '{line}'"));
        let t = line.trim();
        match t {
            "Invalid" => return Ok(SnapshotStatus::Invalid),
            "Overflow" => return Ok(SnapshotStatus::Overflow),
            "Merge failed" => return Ok(SnapshotStatus::MergeFailed),
            "Unknown" => return Ok(SnapshotStatus::Unknown),
            _ => {}
        }
        let f: Vec<&str> = t.split_whitespace().collect();
        let [ratio, meta] = f.as_slice() else { return Err(bad()) };
        let (a, tot) = ratio.split_once('/').ok_or_else(bad)?;
        let num = |s: &str| s.parse::<u64>().map_err(|_| bad());
        let (allocated_sectors, total_sectors, metadata_sectors) = (num(a)?, num(tot)?, num(meta)?);
        if metadata_sectors > allocated_sectors || allocated_sectors > total_sectors {
            return Err(bad());
        }
        Ok(SnapshotStatus::Usage { allocated_sectors, total_sectors, metadata_sectors })
    }

    /// Sectors holding copied data (not metadata).
    pub fn data_sectors(&self) -> Option<u64> {
        match *self {
            SnapshotStatus::Usage { allocated_sectors, metadata_sectors, .. } => Some(allocated_sectors - metadata_sectors),
            _ => None,
        }
    }

    /// Percent of the COW store in use (data and metadata).
    pub fn percent_used(&self) -> Option<f64> {
        match *self {
            SnapshotStatus::Usage { allocated_sectors, total_sectors, .. } if total_sectors > 0 => {
                Some(100.0 * allocated_sectors as f64 / total_sectors as f64)
            }
            _ => None,
        }
    }

    /// For a `snapshot-merge` target: every data chunk is back in the origin, i.e. the
    /// allocated sectors equal the metadata sectors.
    pub fn is_merge_complete(&self) -> bool {
        self.data_sectors() == Some(0)
    }

    /// Invalid or overflowed: the snapshot's content cannot be trusted or extended.
    pub fn is_unusable(&self) -> bool {
        matches!(self, SnapshotStatus::Invalid | SnapshotStatus::Overflow)
    }
}

/// The status of a one-target snapshot or snapshot-merge device.
pub fn snapshot_status(dm: &Dm, name: &str, target: &str) -> Result<SnapshotStatus> {
    let lines = dm.status(name)?;
    SnapshotStatus::parse(super::single_status(&lines, target, name)?)
}

/// Load `snapshot-merge` into origin device `name` (inactive slot; `resume` starts the merge).
/// Refused while the device's live `snapshot-origin` is not suspended: the kernel requires
/// that snapshot-merge is never loaded while a snapshot-origin for the same origin is live.
pub fn load_merge(dm: &Dm, name: &str, merge: &SnapshotMergeTarget, sectors: u64) -> Result<()> {
    let info = dm.info(name)?.ok_or_else(|| Error::Inconsistent(format!("origin device {name} does not exist")))?;
    if !info.suspended {
        let live = dm.table(name)?;
        if live.iter().any(|l| l.target == SnapshotOriginTarget::TYPE) {
            return Err(Error::OriginLive(name.to_string()));
        }
    }
    dm.load(name, &[merge.line(0, sectors)], false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: Device = Device { major: 253, minor: 1 };
    const COW: Device = Device { major: 253, minor: 2 };

    #[test]
    fn chunk_sizes_follow_the_kernel() {
        for ok in [1, 8, 16, 128, 1 << 20, MAX_CHUNK_SECTORS] {
            validate_chunk_sectors(ok).unwrap();
        }
        for bad in [0, 3, 6, 24, 1000, MAX_CHUNK_SECTORS + 1, MAX_CHUNK_SECTORS * 2, u64::MAX] {
            let e = validate_chunk_sectors(bad).unwrap_err().to_string();
            assert!(e.contains("power of two") && e.contains("2^21"), "{bad}: {e}");
        }
        assert!(SnapshotTarget::new(REAL, COW, Persistence::Persistent, 12).is_err());
        assert!(SnapshotMergeTarget::new(REAL, COW, 1 << 22).is_err());
        assert!(SnapshotTarget::new(REAL, REAL, Persistence::Persistent, 8).is_err());
    }

    #[test]
    fn renders_tables() {
        assert_eq!(SnapshotOriginTarget { real: REAL }.params(), "253:1");
        let s = SnapshotTarget::new(REAL, COW, Persistence::Persistent, 8).unwrap();
        assert_eq!(s.params(), "253:1 253:2 P 8");
        assert_eq!(s.line(0, 1953125).target, "snapshot");
        let s = SnapshotTarget::new(REAL, COW, Persistence::Transient, 128).unwrap();
        assert_eq!(s.params(), "253:1 253:2 N 128");
        let m = SnapshotMergeTarget::new(REAL, COW, 8).unwrap();
        assert_eq!(m.params(), "253:1 253:2 P 8");
        assert_eq!(m.line(0, 8).target, "snapshot-merge");
    }

    #[test]
    fn parses_status_lines() {
        // `dmsetup status` of a fresh persistent snapshot (8-sector chunks) of a 200 MB origin.
        let s = SnapshotStatus::parse("16/390625 16").unwrap();
        assert_eq!(s, SnapshotStatus::Usage { allocated_sectors: 16, total_sectors: 390625, metadata_sectors: 16 });
        assert!(s.is_merge_complete());
        assert_eq!(s.data_sectors(), Some(0));
        let s = SnapshotStatus::parse("397896/2097152 1560").unwrap();
        assert!(!s.is_merge_complete());
        assert_eq!(s.data_sectors(), Some(396336));
        assert!((s.percent_used().unwrap() - 18.97).abs() < 0.01);
        assert_eq!(SnapshotStatus::parse("Invalid").unwrap(), SnapshotStatus::Invalid);
        assert_eq!(SnapshotStatus::parse("Overflow").unwrap(), SnapshotStatus::Overflow);
        assert_eq!(SnapshotStatus::parse("Merge failed").unwrap(), SnapshotStatus::MergeFailed);
        assert_eq!(SnapshotStatus::parse("Unknown").unwrap(), SnapshotStatus::Unknown);
        assert!(SnapshotStatus::Invalid.is_unusable() && SnapshotStatus::Overflow.is_unusable());
        assert!(!SnapshotStatus::Invalid.is_merge_complete());
        assert!(!SnapshotStatus::MergeFailed.is_merge_complete());
        for bad in ["", "16", "16/x 16", "a/1 1", "17/16 1", "8/16 9", "1/2 3 4"] {
            assert!(SnapshotStatus::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
