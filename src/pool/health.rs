//! Metadata health: `pool check` (thin_check) and `pool repair` (thin_repair into a new
//! metadata file, swapped in, the old one kept as a backup) on a deactivated pool, and the
//! messages activation gives when the kernel refuses or flags the metadata.
//! The thin-provisioning tools are a dependency of these two commands only.

use std::path::PathBuf;

use serde::Serialize;

use super::Pool;
use crate::error::{Error, Result};

/// What `pool check` found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// thin_check passed.
    pub clean: bool,
    /// thin_check's own output (its findings), for the operator.
    pub output: String,
}

/// What `pool repair` did.
#[derive(Debug, Clone, Serialize)]
pub struct RepairReport {
    /// Where the damaged metadata was kept.
    pub backup: PathBuf,
}

impl Pool {
    /// Run thin_check on the metadata of a deactivated pool.
    pub fn check(&self) -> Result<CheckReport> {
        Err(Error::invalid("command", "pool check is not implemented yet"))
    }

    /// Repair the metadata of a deactivated pool.
    pub fn repair(&self) -> Result<RepairReport> {
        Err(Error::invalid("command", "pool repair is not implemented yet"))
    }

    /// A failed load of the thin-pool table, explained (damaged metadata names `pool repair`).
    pub(crate) fn load_error(&self, e: Error) -> Error {
        e
    }
}
