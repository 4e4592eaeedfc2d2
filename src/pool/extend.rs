//! `pool extend`: grow data and/or metadata online.
//! (implementation follows)

use serde::Serialize;

use super::Pool;
use crate::error::{Error, Result};

/// A new size, absolute ("10G") or relative ("+1G").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeChange {
    To(u64),
    By(u64),
}

impl std::str::FromStr for SizeChange {
    type Err = Error;
    fn from_str(s: &str) -> Result<SizeChange> {
        match s.trim().strip_prefix('+') {
            Some(rest) => crate::units::parse_size(rest).map(SizeChange::By),
            None => crate::units::parse_size(s).map(SizeChange::To),
        }
    }
}

/// What `pool extend` is asked to do. None: unchanged (a sparse file), or grown to the block
/// device's current size.
#[derive(Debug, Clone, Default)]
pub struct ExtendRequest {
    pub data: Option<SizeChange>,
    pub meta: Option<SizeChange>,
}

/// Sizes before and after.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ExtendOutcome {
    pub old_data_bytes: u64,
    pub new_data_bytes: u64,
    pub old_meta_bytes: u64,
    pub new_meta_bytes: u64,
}

impl Pool {
    /// Grow the pool's data and/or metadata, online or offline.
    pub fn extend(&self, req: &ExtendRequest) -> Result<ExtendOutcome> {
        let _ = req;
        Err(Error::invalid("command", "pool extend is not implemented yet"))
    }
}

impl Pool {
    /// Roll an interrupted extend forward (the pool lock is held).
    pub(crate) fn finish_extend(&self, dm: &crate::dm::Dm, intent: &crate::pool::store::Intent) -> Result<()> {
        let _ = (dm, intent);
        Ok(())
    }
}

impl Pool {
    /// Change auto-extend and discard settings; a live pool's low-water mark follows at once.
    pub fn set(&self, autoextend: Option<&crate::pool::Autoextend>, discard_on_delete: Option<bool>) -> Result<crate::pool::store::PoolConfig> {
        let _ = (autoextend, discard_on_delete);
        Err(Error::invalid("command", "pool set is not implemented yet"))
    }
}
