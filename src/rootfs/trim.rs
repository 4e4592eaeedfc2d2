//! `rcx-dm trim`: give the blocks of files deleted inside a volume's filesystem back to the
//! pool and, through discard passdown, to the host (FITRIM on a private mount).

use serde::Serialize;

use crate::error::{Error, Result};
use crate::pool::{Pool, VolRef};

/// What one volume's trim did.
#[derive(Debug, Clone, Serialize)]
pub struct TrimReport {
    pub id: u32,
    /// Bytes the filesystem reported as trimmed (FITRIM's range length).
    pub trimmed_bytes: u64,
}

/// Trim one volume.
pub fn trim(pool: &Pool, v: &VolRef) -> Result<TrimReport> {
    let _ = (pool, v);
    Err(Error::invalid("command", "trim is not implemented yet"))
}

/// Trim every writable volume that holds a filesystem.
pub fn trim_all(pool: &Pool) -> Result<Vec<TrimReport>> {
    let _ = pool;
    Err(Error::invalid("command", "trim is not implemented yet"))
}
