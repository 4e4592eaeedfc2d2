//! Advisory file locks (flock(2)): the pool lock, the classic lock, serve's socket and pool
//! locks, the monitor's, image imports', and a run's directory and in-place volume locks. The
//! kernel drops a lock when its holder dies, however it dies, which is what lets the next
//! command tell a dead holder from a live one.
//!
//! flock locks belong to an open file description, so two opens in one process exclude each
//! other too: a thread (or a nested call) that opens the same lock file again waits.

use std::fs::{File, OpenOptions};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{IoContext, Result};

/// A held flock, released on drop or when the process dies.
pub struct FileLock {
    _lock: Flock<File>,
}

/// Who else may hold the lock at the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Nobody else.
    Exclusive,
    /// Other shared holders (readers), no exclusive one.
    Shared,
}

impl FileLock {
    /// Lock `path` exclusively (created if missing), waiting for the holder to let go.
    pub fn exclusive(path: &Path) -> Result<FileLock> {
        let lock = Flock::lock(open_lock_file(path)?, FlockArg::LockExclusive)
            .map_err(|(_, e)| std::io::Error::from(e))
            .ctx(|| format!("locking {}", path.display()))?;
        Ok(FileLock { _lock: lock })
    }

    /// Lock `path` (created if missing) without waiting: None at once when another holder has
    /// it in a conflicting mode.
    pub fn try_lock(path: &Path, mode: LockMode) -> Result<Option<FileLock>> {
        Self::try_lock_open(open_lock_file(path)?, path, mode)
    }

    /// Lock an existing file or directory (opened read-only, never created) without waiting.
    pub fn try_lock_existing(path: &Path, mode: LockMode) -> Result<Option<FileLock>> {
        let f = File::open(path).ctx(|| format!("opening {}", path.display()))?;
        Self::try_lock_open(f, path, mode)
    }

    /// Lock an existing file or directory (opened read-only, never created), waiting for a
    /// conflicting holder to let go.
    pub fn lock_existing(path: &Path, mode: LockMode) -> Result<FileLock> {
        let f = File::open(path).ctx(|| format!("opening {}", path.display()))?;
        let arg = match mode {
            LockMode::Exclusive => FlockArg::LockExclusive,
            LockMode::Shared => FlockArg::LockShared,
        };
        let lock = Flock::lock(f, arg)
            .map_err(|(_, e)| std::io::Error::from(e))
            .ctx(|| format!("locking {}", path.display()))?;
        Ok(FileLock { _lock: lock })
    }

    /// Close this descriptor without unlocking: a forked process that holds a copy of it keeps
    /// the lock (flock locks belong to the open file description, shared across fork).
    pub fn close_without_unlock(self) {
        use std::os::fd::AsRawFd;
        let fd = self._lock.as_raw_fd();
        std::mem::forget(self);
        // SAFETY: closing the descriptor this (forgotten) lock owned; nothing uses it again.
        unsafe { libc::close(fd) };
    }

    fn try_lock_open(f: File, path: &Path, mode: LockMode) -> Result<Option<FileLock>> {
        let arg = match mode {
            LockMode::Exclusive => FlockArg::LockExclusiveNonblock,
            LockMode::Shared => FlockArg::LockSharedNonblock,
        };
        match Flock::lock(f, arg) {
            Ok(lock) => Ok(Some(FileLock { _lock: lock })),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_and_shared_locks_exclude_as_flock_does() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l");
        let held = FileLock::exclusive(&p).unwrap();
        assert!(FileLock::try_lock(&p, LockMode::Shared).unwrap().is_none());
        drop(held);
        let r1 = FileLock::try_lock(&p, LockMode::Shared).unwrap();
        let r2 = FileLock::try_lock_existing(&p, LockMode::Shared).unwrap();
        assert!(r1.is_some() && r2.is_some());
        assert!(FileLock::try_lock(&p, LockMode::Exclusive).unwrap().is_none());
        drop((r1, r2));
        assert!(FileLock::try_lock_existing(d.path(), LockMode::Exclusive).unwrap().is_some());
        assert!(FileLock::try_lock_existing(&d.path().join("missing"), LockMode::Exclusive).is_err());
    }
}
