//! Bounds on what the tar reader reads on its own for one entry, and on GNU sparse files: a
//! small compressed layer must not make the import allocate gigabytes or run for hours.

use std::cell::Cell;
use std::io::Read;
use std::rc::Rc;

use crate::error::Error;

/// What the tar reader may read on its own for one entry before it hands the entry over: the
/// header blocks, a GNU long name and long link, a PAX extended header, a GNU sparse map, and
/// the data of an entry that is not written anywhere (a marker, a directory, a link). The tar
/// crate reads long names and PAX records whole into memory, so without a cap a compressed
/// layer of a few MiB could make it allocate gigabytes. Real archives need a few KiB; Go's
/// archive/tar, which Docker, containerd and BuildKit write and read layers with, refuses such
/// a record over 1 MiB (`maxSpecialFileSize`). 4 MiB leaves room for all of them at once
/// (and about 170,000 sparse segments).
pub const MAX_ENTRY_HEADER_BYTES: u64 = 4 << 20;

/// The largest apparent size of a GNU sparse file. Holes are not written, but the tar crate
/// still hands them over as zeros to skip, about 20 GB/s: 1 TiB is under a minute, while an
/// unchecked header could claim 16 EiB. Larger than any sparse file seen in images (lastlog of
/// a high UID, a VM disk image).
pub const MAX_SPARSE_FILE_BYTES: u64 = 1 << 40;

/// The largest GNU sparse map, in bytes of tar headers (21 segments per 512-byte block, so
/// about 21,000 segments). The tar crate walks the map with `Vec::remove(0)`, quadratic in the
/// number of segments: at this size that is a few seconds, at the full entry budget minutes.
pub const MAX_SPARSE_MAP_BYTES: u64 = 512 << 10;

/// The error for an entry whose headers went over [`MAX_ENTRY_HEADER_BYTES`].
pub(super) fn header_limit(entry: u64) -> Error {
    Error::LimitExceeded {
        what: format!("the tar stream, at entry {entry},"),
        limit: format!("{} MiB of tar headers for one entry", MAX_ENTRY_HEADER_BYTES >> 20),
        why: "its GNU long name or link, PAX records or GNU sparse map, or the data of an entry that is not a file, go on past it; \
              real archives need a few KiB, and Go's archive/tar (Docker, containerd) refuses such records over 1 MiB"
            .to_string(),
    }
}

/// Shared between [`apply`](super::apply) and the reader under the tar crate: while `counting`, the tar
/// crate is reading on its own (headers and what it skips or keeps in memory), and at most
/// [`MAX_ENTRY_HEADER_BYTES`] of that per entry.
#[derive(Default)]
pub(super) struct Budget {
    /// Set while the tar crate reads on its own; cleared while an entry's data is read.
    pub(super) counting: Cell<bool>,
    /// Bytes read while counting, since the last entry was handed over.
    pub(super) used: Cell<u64>,
    /// Bytes read while not counting: an entry's data from the stream (a sparse file's holes
    /// come from the tar crate itself and never pass here).
    pub(super) passed: Cell<u64>,
    /// The cap was hit: the tar crate's next error is this, not a corrupt stream.
    pub(super) tripped: Cell<bool>,
}

/// The layer's stream as the tar crate reads it, counted against the [`Budget`].
pub(super) struct Guarded<R> {
    pub(super) inner: R,
    pub(super) budget: Rc<Budget>,
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let b = &self.budget;
        if !b.counting.get() {
            let n = self.inner.read(buf)?;
            b.passed.set(b.passed.get() + n as u64);
            return Ok(n);
        }
        let left = MAX_ENTRY_HEADER_BYTES.saturating_sub(b.used.get());
        if left == 0 && !buf.is_empty() {
            b.tripped.set(true);
            return Err(std::io::Error::other(format!("over {MAX_ENTRY_HEADER_BYTES} bytes of tar headers for one entry")));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        b.used.set(b.used.get() + n as u64);
        Ok(n)
    }
}

/// Seeks pass through: the tar crate skips an entry's data it was not asked for this way.
impl<R: std::io::Seek> std::io::Seek for Guarded<R> {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::*;
    use super::*;
    use std::fs;
    use std::os::unix::fs::MetadataExt;
    use tar::{EntryType, Header};

    /// Counts the bytes a consumer took from the reader inside.
    struct Counting<R> {
        inner: R,
        taken: std::rc::Rc<std::cell::Cell<u64>>,
    }
    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.taken.set(self.taken.get() + n as u64);
            Ok(n)
        }
    }

    /// A header block of type `ty` whose size field says `size`.
    fn header_block(name: &str, ty: EntryType, size: u64) -> Vec<u8> {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(ty);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(size);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    /// A stream of `head`, then `size` bytes of `fill` generated as they are read (never in
    /// memory here), padding, then a small plain file and the end of the archive.
    fn lazy_record(head: Vec<u8>, fill: u8, size: u64) -> impl Read {
        let pad = (512 - size % 512) % 512;
        let tail = Tar::new().file("after", b"a").bytes();
        std::io::Cursor::new(head)
            .chain(std::io::repeat(fill).take(size))
            .chain(std::io::repeat(0).take(pad))
            .chain(std::io::Cursor::new(tail))
    }

    /// Applies `r` and returns the error and how many bytes were taken from it.
    fn apply_counted(r: impl Read) -> (String, u64) {
        let (tmp, _root, tree) = scratch();
        let taken = std::rc::Rc::new(std::cell::Cell::new(0));
        let e = apply(&tree, Counting { inner: r, taken: taken.clone() }).expect_err("a bomb must be refused").to_string();
        assert_eq!(names(tmp.path()), ["root"], "nothing written beside the tree");
        (e, taken.get())
    }

    #[test]
    fn long_name_and_pax_records_are_capped() {
        // What a 3 MiB gzip or 100 KiB zstd layer decompresses to: the tar crate reads such a
        // record whole into one Vec before it hands over the entry.
        let big = 256u64 << 20;
        for (what, ty) in [("GNU long name", EntryType::GNULongName), ("GNU long link", EntryType::GNULongLink), ("PAX", EntryType::XHeader)] {
            let (e, taken) = apply_counted(lazy_record(header_block("././@LongLink", ty, big), b'a', big));
            assert!(taken <= MAX_ENTRY_HEADER_BYTES + (1 << 20), "{what}: {taken} bytes read before the entry was refused");
            assert!(e.contains("limit") && e.contains("4 MiB") && e.contains("refused"), "{what}: {e}");
        }
        // Data of an entry that is not written anywhere (a marker, a directory) is skipped by
        // reading it: bounded the same way.
        let (e, taken) = apply_counted(lazy_record(header_block("d/", EntryType::Directory, big), 0, big));
        assert!(taken <= MAX_ENTRY_HEADER_BYTES + (1 << 20), "{taken}");
        assert!(e.contains("limit"), "{e}");
    }

    /// `block` over and over, `total` bytes in all.
    struct Cycle {
        block: Vec<u8>,
        at: usize,
        left: u64,
    }
    impl Read for Cycle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.block.len() - self.at).min(self.left as usize);
            buf[..n].copy_from_slice(&self.block[self.at..self.at + n]);
            self.at = (self.at + n) % self.block.len();
            self.left -= n as u64;
            Ok(n)
        }
    }

    /// A 12-byte numeric field: octal, or GNU base-256 when too large.
    fn num_field(dst: &mut [u8; 12], v: u64) {
        if v < 1 << 33 {
            dst.copy_from_slice(format!("{v:011o}\0").as_bytes());
        } else {
            dst.fill(0);
            dst[0] = 0x80;
            dst[4..].copy_from_slice(&v.to_be_bytes());
        }
    }

    /// A GNU sparse header: `segments` (offset, length) in the header itself, `real` the
    /// apparent size, `extended` if extension blocks follow.
    fn sparse_header(name: &str, segments: &[(u64, u64)], real: u64, extended: bool) -> Header {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(EntryType::GNUSparse);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(segments.iter().map(|s| s.1).sum());
        let g = h.as_gnu_mut().unwrap();
        for (i, (off, len)) in segments.iter().enumerate() {
            num_field(&mut g.sparse[i].offset, *off);
            num_field(&mut g.sparse[i].numbytes, *len);
        }
        g.isextended[0] = extended as u8;
        g.set_real_size(real);
        h.set_cksum();
        h
    }

    #[test]
    fn gnu_sparse_map_is_capped() {
        // A sparse header whose extension blocks never end (each would hold 21 more segments).
        let h = sparse_header("s", &[], 1 << 20, true);
        let mut ext = tar::GnuExtSparseHeader::new();
        ext.isextended[0] = 1;
        let endless = std::io::Cursor::new(h.as_bytes().to_vec()).chain(Cycle { block: ext.as_bytes().to_vec(), at: 0, left: 256 << 20 });
        let (e, taken) = apply_counted(endless);
        assert!(taken <= MAX_ENTRY_HEADER_BYTES + (1 << 20), "{taken} bytes read");
        assert!(e.contains("limit") && e.contains("refused"), "{e}");
    }

    #[test]
    fn gnu_sparse_segment_count_is_capped() {
        // 2000 extension blocks of 21 segments of 512 bytes each: under the entry budget, over
        // the sparse map cap.
        let blocks = 2000u64;
        let per = 21u64;
        let h = sparse_header("many", &[], 2 * 512 * per * blocks - 512, true);
        let mut h = h;
        h.set_size(512 * per * blocks);
        h.set_cksum();
        let mut exts = Vec::new();
        for b in 0..blocks {
            let mut ext = tar::GnuExtSparseHeader::new();
            for i in 0..per {
                let off = 2 * 512 * (b * per + i);
                num_field(&mut ext.sparse[i as usize].offset, off);
                num_field(&mut ext.sparse[i as usize].numbytes, 512);
            }
            ext.isextended[0] = (b + 1 < blocks) as u8;
            exts.extend_from_slice(ext.as_bytes());
        }
        let r = std::io::Cursor::new(h.as_bytes().to_vec()).chain(std::io::Cursor::new(exts)).chain(std::io::repeat(b'd').take(512 * per * blocks));
        let (tmp, root, tree) = scratch();
        let t = std::time::Instant::now();
        let e = apply(&tree, r).unwrap_err().to_string();
        assert!(e.contains("limit") && e.contains("sparse map") && e.contains("many"), "{e}");
        assert!(t.elapsed().as_secs() < 10, "{:?}", t.elapsed());
        assert_eq!(names(tmp.path()), ["root"]);
        assert!(names(&root).is_empty());
    }

    #[test]
    fn gnu_sparse_holes_stay_holes() {
        let (_tmp, root, tree) = scratch();
        let mib = 1u64 << 20;
        // 64 MiB apparent: 4 KiB of data at 32 MiB, 4 KiB at the end.
        let h = sparse_header("sparse", &[(32 * mib, 4096), (64 * mib - 4096, 4096)], 64 * mib, false);
        let mut data = vec![b'x'; 4096];
        data.extend(vec![b'y'; 4096]);
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &data[..]).unwrap();
        let t = b.into_inner().unwrap();
        let stats = apply_bytes(&tree, t).unwrap();
        let p = root.join("sparse");
        let m = fs::metadata(&p).unwrap();
        assert_eq!(m.len(), 64 * mib);
        assert_eq!((m.mode() & 0o7777, m.mtime()), (0o644, 1_600_000_000));
        let all = fs::read(&p).unwrap();
        assert!(all[..32 * mib as usize].iter().all(|&b| b == 0));
        assert_eq!(&all[32 * mib as usize..32 * mib as usize + 4096], &data[..4096]);
        assert_eq!(&all[64 * mib as usize - 4096..], &data[4096..]);
        assert!(m.blocks() * 512 <= mib, "holes were written as zeros: {} bytes allocated", m.blocks() * 512);
        assert_eq!(stats.bytes, 8192, "only the data counts as written");
        // Ending in a hole: GNU tar's final zero-length segment at the apparent size.
        let h = sparse_header("tail", &[(0, 512), (16 * mib, 0)], 16 * mib, false);
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &[b'z'; 512][..]).unwrap();
        apply_bytes(&tree, b.into_inner().unwrap()).unwrap();
        let m = fs::metadata(root.join("tail")).unwrap();
        assert_eq!(m.len(), 16 * mib);
        assert!(m.blocks() * 512 <= mib, "{}", m.blocks());
    }

    #[test]
    fn gnu_sparse_apparent_size_is_capped() {
        // One byte of data, an apparent size past the cap: refused before anything is written
        // (holes or zeros, producing them would take hours).
        let h = sparse_header("huge", &[(MAX_SPARSE_FILE_BYTES, 512)], MAX_SPARSE_FILE_BYTES + 512, false);
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &[b'z'; 512][..]).unwrap();
        let (tmp, root, tree) = scratch();
        let e = apply_bytes(&tree, b.into_inner().unwrap()).unwrap_err().to_string();
        assert!(e.contains("limit") && e.contains("huge") && e.contains("TiB"), "{e}");
        assert_eq!(names(tmp.path()), ["root"]);
        assert!(names(&root).is_empty(), "{:?}", names(&root));
    }
}
