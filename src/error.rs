//! The library's error type. Every variant a user can cause says what was wrong and what to do.

use std::path::PathBuf;

pub use nix::errno::Errno;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("device-mapper is not available ({0}); load it with `modprobe dm-mod dm-thin-pool`")]
    DmUnavailable(String),

    #[error("device-mapper {op} on {dev} failed: {msg}")]
    Dm { op: &'static str, dev: String, errno: Option<Errno>, msg: String },

    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },

    #[error("pool '{pool}' does not exist under {root}; create it with `rcx-dm pool create`")]
    NoSuchPool { pool: String, root: PathBuf },

    #[error("pool '{0}' already exists; pick another --pool name or destroy it first")]
    PoolExists(String),

    #[error("pool '{0}' is not active; run `rcx-dm pool activate`")]
    PoolInactive(String),

    #[error("pool '{pool}' cannot be used: {why}")]
    PoolUnhealthy { pool: String, why: String },

    #[error("no volume '{vol}' in pool '{pool}'; `rcx-dm list` shows the volumes")]
    NoSuchVolume { vol: String, pool: String },

    #[error("{0} already exists in the pool")]
    Exists(String),

    #[error("volume {0} is {1}; {2}")]
    Busy(String, &'static str, &'static str),

    #[error("the pool is out of {0} space; delete volumes or grow the pool")]
    NoSpace(&'static str),

    #[error("state store and kernel disagree: {0}")]
    Inconsistent(String),

    #[error("injected fault at step '{0}' (RCX_DM_FAIL_AT)")]
    InjectedFault(String),

    #[error("{context}: {source}")]
    Io { context: String, #[source] source: std::io::Error },
}

impl Error {
    pub fn invalid(what: &'static str, why: impl Into<String>) -> Self {
        Error::Invalid { what, why: why.into() }
    }

    /// The kernel's errno behind a dm failure, used for the kernel's idempotency signals.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Dm { errno, .. } => *errno,
            Error::Io { source, .. } => source.raw_os_error().map(Errno::from_raw),
            _ => None,
        }
    }
}

/// Attach a description of what was being done to an io::Error.
pub trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io { context: context(), source })
    }
}
