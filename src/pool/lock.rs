//! The pool lock: an exclusive flock held only around the short store-plus-ioctl section of an
//! operation (never around mkfs, population or a running container).

use std::fs::{File, OpenOptions};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{IoContext, Result};

pub struct PoolLock {
    _lock: Flock<File>,
}

impl PoolLock {
    pub fn acquire(dir: &Path) -> Result<PoolLock> {
        Self::acquire_file(&dir.join("lock"))
    }

    /// An exclusive flock on any file (created if missing); released on drop or process death.
    pub fn acquire_file(path: &Path) -> Result<PoolLock> {
        let lock = Flock::lock(open_lock_file(path)?, FlockArg::LockExclusive)
            .map_err(|(_, e)| std::io::Error::from(e))
            .ctx(|| format!("locking {}", path.display()))?;
        Ok(PoolLock { _lock: lock })
    }

    /// Like `acquire_file`, but None at once when another holder has it (LOCK_NB).
    pub fn try_acquire_file(path: &Path) -> Result<Option<PoolLock>> {
        match Flock::lock(open_lock_file(path)?, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(PoolLock { _lock: lock })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(std::io::Error::from(e)).ctx(|| format!("locking {}", path.display())),
        }
    }
}

fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ctx(|| format!("opening {}", path.display()))
}
