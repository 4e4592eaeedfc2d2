//! The dm-log-writes log, read and replayed (for the power-loss tests).
//!
//! Format (kernel `drivers/md/dm-log-writes.c`, Documentation/admin-guide/device-mapper/
//! log-writes.rst): block 0 of the log device holds the super (`magic`, `version`,
//! `nr_entries` as le64, `sectorsize` as le32); entries follow from block 1, each one block
//! holding (`sector`, `nr_sectors`, `flags`, `data_len`, all le64) and, for a mark, the mark's
//! text; a write's data follows its entry in `nr_sectors` blocks. Sectors count in the logged
//! device's logical block size (`sectorsize`). Writes are logged when they are known to be on
//! stable storage (after the flush that covers them, or at once for FUA), so replaying up to a
//! FLUSH or FUA entry gives a state the disk could have been in when the power went.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const FLUSH: u64 = 1 << 0;
pub const FUA: u64 = 1 << 1;
pub const DISCARD: u64 = 1 << 2;
pub const MARK: u64 = 1 << 3;

const MAGIC: u64 = 0x6a73_6677_7368_72;
const VERSION: u64 = 1;

#[derive(Debug, Clone)]
pub struct Entry {
    /// First sector written (in `sectorsize` units).
    pub sector: u64,
    pub nr_sectors: u64,
    pub flags: u64,
    /// Where the written data starts in the log (writes only).
    pub data_at: u64,
    /// A mark's text.
    pub mark: Option<String>,
}

impl Entry {
    /// A point the power can go at with everything before it durable.
    pub fn is_barrier(&self) -> bool {
        self.flags & (FLUSH | FUA) != 0
    }

    /// Changes the device's content.
    pub fn changes_data(&self) -> bool {
        self.nr_sectors > 0 && self.flags & MARK == 0
    }
}

pub struct Log {
    file: File,
    pub sectorsize: u64,
    pub entries: Vec<Entry>,
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Log {
    /// Read the whole index of the log on `path` (a file or the log device), checking every
    /// field that the replay depends on.
    pub fn open(path: &Path) -> Log {
        let file = File::open(path).unwrap_or_else(|e| panic!("open log {}: {e}", path.display()));
        let len = file.metadata().expect("log metadata").len();
        let mut sup = [0u8; 28];
        file.read_exact_at(&mut sup, 0).expect("read the log's super");
        assert_eq!(le64(&sup, 0), MAGIC, "{}: not a dm-log-writes log (magic)", path.display());
        assert_eq!(le64(&sup, 8), VERSION, "{}: log version", path.display());
        let nr = le64(&sup, 16);
        let sectorsize = u32::from_le_bytes(sup[24..28].try_into().expect("4 bytes")) as u64;
        assert!(sectorsize >= 512 && sectorsize.is_power_of_two(), "log sector size {sectorsize}");
        let mut entries = Vec::with_capacity(nr as usize);
        let mut at = sectorsize;
        let mut block = vec![0u8; sectorsize as usize];
        for i in 0..nr {
            assert!(at + sectorsize <= len, "log entry {i} of {nr} lies past the log's end");
            file.read_exact_at(&mut block, at).expect("read a log entry");
            let (sector, nr_sectors, flags, data_len) = (le64(&block, 0), le64(&block, 8), le64(&block, 16), le64(&block, 24));
            at += sectorsize;
            let mark = (flags & MARK != 0).then(|| {
                let end = (32 + data_len as usize).min(block.len());
                String::from_utf8_lossy(&block[32..end]).into_owned()
            });
            let data_at = at;
            if flags & (DISCARD | MARK) == 0 {
                at += nr_sectors * sectorsize;
            }
            entries.push(Entry { sector, nr_sectors, flags, data_at, mark });
        }
        Log { file, sectorsize, entries }
    }

    /// Apply entry `i` to `target` (a regular file standing for the device).
    pub fn apply(&self, i: usize, target: &File) {
        let e = &self.entries[i];
        if e.flags & MARK != 0 || e.nr_sectors == 0 {
            return;
        }
        let (off, len) = (e.sector * self.sectorsize, e.nr_sectors * self.sectorsize);
        if e.flags & DISCARD != 0 {
            // The logged device reads zeros after a discard (a loop over a file punches a
            // hole): do the same, so that a replayed state never shows data the disk lost.
            // SAFETY: plain syscall on an open descriptor.
            let r = unsafe {
                libc::fallocate(
                    std::os::fd::AsRawFd::as_raw_fd(target),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off as i64,
                    len as i64,
                )
            };
            assert_eq!(r, 0, "punching a hole for discard entry {i}: {}", std::io::Error::last_os_error());
            return;
        }
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, e.data_at).expect("read logged data");
        target.write_all_at(&buf, off).expect("replay a write");
    }

    /// Index of the mark named `name`.
    pub fn mark(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.mark.as_deref() == Some(name))
    }
}
