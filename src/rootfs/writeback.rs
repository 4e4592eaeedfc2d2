//! Starting the write-back of files as soon as they are complete, on a thread of its own, so
//! that the filesystem's block allocation and the device's writes overlap with the rest of an
//! extraction or copy instead of all waiting for the unmount at the end.
//!
//! Without this the page cache holds a whole layer until the unmount (the kernel's flushers
//! start only past `dirty_background_ratio`, 10% of memory), and the unmount then writes it all
//! back on one CPU while the extraction is over. dpkg starts write-back per file for the same
//! reason (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). The extracting thread only passes the
//! finished file's descriptor on; this thread starts its write-back (which does not wait for
//! the I/O) and closes it. At most [`QUEUE`] files wait, so open descriptors stay bounded.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

use crate::error::{IoContext, Result};

/// Files waiting for the thread at most.
const QUEUE: usize = 256;

/// The thread that starts write-back of finished files.
pub(crate) struct Writeback {
    tx: Option<SyncSender<File>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Writeback {
    /// Starts the thread; if none can be started, files are simply closed (the unmount writes
    /// them back, as before).
    pub(crate) fn start() -> Writeback {
        let (tx, rx) = sync_channel::<File>(QUEUE);
        let thread = std::thread::Builder::new().name("writeback".into()).spawn(move || {
            let mut first_err = None;
            for f in rx {
                // SAFETY: a valid open descriptor; offset 0, length 0 = to the end of the file.
                let r = unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
                if r != 0 && first_err.is_none() {
                    let e = std::io::Error::last_os_error();
                    // A filesystem without it (EINVAL, ENOSYS): the unmount writes back.
                    if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS | libc::ESPIPE)) {
                        first_err = Some(e);
                    }
                }
            }
            first_err.map_or(Ok(()), Err)
        });
        match thread {
            Ok(t) => Writeback { tx: Some(tx), thread: Some(t) },
            Err(e) => {
                tracing::debug!(error = %e, "no write-back thread; files are written back at the unmount");
                Writeback { tx: None, thread: None }
            }
        }
    }

    /// `f` is complete (data and metadata): start its write-back and close it.
    pub(crate) fn hand(&self, f: File) {
        if let Some(tx) = &self.tx {
            // Fails only if the thread is gone; the file is then closed here.
            let _ = tx.send(f);
        }
    }

    /// Waits for the thread; an error starting a write-back (EIO, ENOSPC) is the caller's.
    pub(crate) fn finish(mut self) -> Result<()> {
        self.stop().ctx(|| "starting the write-back of the files written".to_string())
    }

    fn stop(&mut self) -> std::io::Result<()> {
        drop(self.tx.take());
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(std::io::Error::other("the write-back thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Writeback {
    /// On an early return the thread drains what it holds and ends.
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn files_handed_over_keep_their_data() {
        let dir = tempfile::tempdir().unwrap();
        let w = Writeback::start();
        for i in 0..(QUEUE * 2) {
            let mut f = File::create(dir.path().join(format!("f{i}"))).unwrap();
            f.write_all(&[i as u8; 5000]).unwrap();
            w.hand(f);
        }
        w.finish().unwrap();
        for i in [0, QUEUE * 2 - 1] {
            assert_eq!(std::fs::read(dir.path().join(format!("f{i}"))).unwrap(), vec![i as u8; 5000]);
        }
    }
}
