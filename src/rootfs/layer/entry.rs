//! One tar entry written to the tree: its type, numeric owner, mode, times (PAX nanoseconds
//! included), `SCHILY.xattr.*` records and file data, GNU sparse files with their holes kept.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::sys::time::TimeSpec;
use tar::EntryType;

use super::limits::Budget;
use super::{State, MAX_SPARSE_FILE_BYTES, MAX_SPARSE_MAP_BYTES};
use crate::error::{Error, IoContext, Result};
use crate::rootfs::tree::{self, set_fd_meta, EntryKind, Meta, Times};

/// What PAX records say beyond what the tar crate already applies (path, size, uid, gid).
#[derive(Default)]
struct Pax {
    mtime: Option<TimeSpec>,
    atime: Option<TimeSpec>,
    xattrs: Vec<(OsString, Vec<u8>)>,
    sparse: bool,
}

impl<'t> State<'t> {
    /// Writes one entry (a marker is only recorded, see `whiteout`).
    pub(super) fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>, path: &Path) -> Result<()> {
        let ty = entry.header().entry_type();
        if ty == EntryType::XGlobalHeader {
            return Ok(()); // archive-wide comments and defaults: nothing to write
        }
        let rel = tree::relative(path)?;
        if let Some(name) = rel.file_name() {
            if let Some(marker) = self.marker(&rel, name.as_bytes())? {
                self.stats.whiteouts += marker as u64;
                return Ok(());
            }
        }
        let pax = pax(entry)?;
        if pax.sparse {
            return Err(Error::invalid("layer", "PAX sparse files (GNU.sparse.*) are not supported; re-create the archive without --sparse"));
        }
        let h = entry.header();
        let mtime = pax.mtime.unwrap_or_else(|| TimeSpec::new(h.mtime().unwrap_or(0) as i64, 0));
        let times = Times { atime: pax.atime.unwrap_or(mtime), mtime };
        let id = |v: std::io::Result<u64>, what: &str| -> Result<u32> {
            let v = v.ctx(|| format!("reading the {what} from the tar header"))?;
            u32::try_from(v).map_err(|_| Error::invalid("layer", format!("{what} {v} does not fit in 32 bits")))
        };
        let mut meta = Meta {
            mode: h.mode().ctx(|| "reading the mode from the tar header".to_string())? & 0o7777,
            uid: id(h.uid(), "uid")?,
            gid: id(h.gid(), "gid")?,
            times: Some(times),
            xattrs: pax.xattrs,
            exact_xattrs: false,
        };
        let tree = self.tree;
        if rel.as_os_str().is_empty() {
            // The layer's "./": the root directory's own metadata.
            if ty != EntryType::Directory {
                return Err(Error::invalid("layer", "the root of the archive is not a directory"));
            }
            meta.times = None;
            tree.set_meta(&rel, EntryKind::Dir, &meta)?;
            self.dir_times.insert(rel, times);
            return Ok(());
        }
        let kind = match ty {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let want = entry.size();
                let sparse = ty == EntryType::GNUSparse;
                if sparse && self.budget.used.get() > MAX_SPARSE_MAP_BYTES {
                    return Err(Error::LimitExceeded {
                        what: "a GNU sparse file".to_string(),
                        limit: format!("{} KiB of sparse map, about 21,000 segments", MAX_SPARSE_MAP_BYTES >> 10),
                        why: format!("its headers take {} bytes", self.budget.used.get()),
                    });
                }
                if sparse && want > MAX_SPARSE_FILE_BYTES {
                    return Err(Error::LimitExceeded {
                        what: "a GNU sparse file".to_string(),
                        limit: format!("{} TiB of apparent size", MAX_SPARSE_FILE_BYTES >> 40),
                        why: format!("its header says {want} bytes"),
                    });
                }
                let mut file = tree.create_file(&rel)?;
                let (got, data) = if sparse {
                    copy_sparse(entry, &file, &mut self.buf, &self.budget).ctx(|| "writing the sparse file's data".to_string())?
                } else if let Some(src) = &mut self.data {
                    let got = copy_at(&src.file, entry.raw_file_position(), &file, want, &mut self.buf).ctx(|| "writing the file's data".to_string())?;
                    (src.progress)(got);
                    (got, got)
                } else {
                    let got = copy(entry, &mut file, &mut self.buf).ctx(|| "writing the file's data".to_string())?;
                    (got, got)
                };
                if got != want {
                    return Err(Error::invalid("layer", format!("the file's data ends after {got} of {want} bytes: the archive is truncated")));
                }
                self.stats.bytes += data;
                set_fd_meta(file.as_fd(), &meta).ctx(|| "setting the file's metadata".to_string())?;
                self.writeback.hand(file);
                EntryKind::File
            }
            EntryType::Directory => {
                tree.mkdir(&rel)?;
                meta.times = None;
                tree.set_meta(&rel, EntryKind::Dir, &meta)?;
                self.dir_times.insert(rel.clone(), times);
                self.wrote(rel);
                return Ok(());
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| Error::invalid("layer", "symlink without a target"))?;
                tree.symlink(&rel, Path::new(OsStr::from_bytes(&target)))?;
                tree.set_meta(&rel, EntryKind::Symlink, &meta)?;
                EntryKind::Symlink
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().ok_or_else(|| Error::invalid("layer", "hard link without a target"))?;
                let target = Path::new(OsStr::from_bytes(&target));
                let trel = tree::relative(target).map_err(|_| {
                    Error::invalid("layer", format!("hard link target '{}' has a '..' component; link targets must stay inside the root filesystem", target.display()))
                })?;
                // A link shares its target's inode and metadata: nothing more to set.
                tree.hardlink(&rel, &trel)?;
                EntryKind::File
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let kind = match ty {
                    EntryType::Char => EntryKind::CharDev,
                    EntryType::Block => EntryKind::BlockDev,
                    _ => EntryKind::Fifo,
                };
                // GNU tar leaves a FIFO's device fields empty (found by fuzzing): read them only
                // for devices.
                let rdev = if kind == EntryKind::Fifo {
                    0
                } else {
                    let major = h.device_major().ctx(|| "reading the device major".to_string())?.unwrap_or(0);
                    let minor = h.device_minor().ctx(|| "reading the device minor".to_string())?.unwrap_or(0);
                    libc::makedev(major, minor)
                };
                tree.mknod(&rel, kind, rdev)?;
                tree.set_meta(&rel, kind, &meta)?;
                kind
            }
            other => {
                return Err(Error::invalid(
                    "layer",
                    format!("tar entry type {other:?} ('{}') is not supported; re-create the archive with plain files, directories, links and device nodes", ty.as_byte() as char),
                ))
            }
        };
        debug_assert_ne!(kind, EntryKind::Dir);
        // A later non-directory entry replaced any directory of the same name.
        self.dir_times.remove(&rel);
        self.wrote(rel);
        Ok(())
    }
}

/// The PAX records of an entry that the tar crate leaves to us.
fn pax<R: Read>(entry: &mut tar::Entry<R>) -> Result<Pax> {
    let mut out = Pax::default();
    let Some(exts) = entry.pax_extensions().ctx(|| "reading PAX records".to_string())? else { return Ok(out) };
    for ext in exts {
        let ext = ext.ctx(|| "reading a PAX record".to_string())?;
        let key = ext.key_bytes();
        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            out.xattrs.push((OsStr::from_bytes(name).to_os_string(), ext.value_bytes().to_vec()));
        } else if key == b"mtime" {
            out.mtime = Some(pax_time(ext.value_bytes())?);
        } else if key == b"atime" {
            out.atime = Some(pax_time(ext.value_bytes())?);
        } else if key.starts_with(b"GNU.sparse.") {
            out.sparse = true;
        }
    }
    Ok(out)
}

/// A PAX time: decimal seconds with an optional fraction, possibly negative.
fn pax_time(v: &[u8]) -> Result<TimeSpec> {
    let bad = || Error::invalid("layer", format!("PAX time '{}' is not a decimal number of seconds", String::from_utf8_lossy(v)));
    let s = std::str::from_utf8(v).map_err(|_| bad())?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let secs: i64 = secs.parse().map_err(|_| bad())?;
    let mut nsec: i64 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nsec += i64::from(d - b'0') * 10i64.pow(8 - i as u32);
    }
    Ok(if !neg {
        TimeSpec::new(secs, nsec)
    } else if nsec == 0 {
        TimeSpec::new(-secs, 0)
    } else {
        TimeSpec::new(-secs - 1, 1_000_000_000 - nsec)
    })
}

/// Copies a GNU sparse entry until it ends, leaving its holes as holes: the tar crate hands
/// a hole over as zeros of its own, which never pass through the stream's reader (`budget.passed`
/// does not move), so those runs are skipped and only the data is written, where the map puts
/// it. (apparent size, data bytes written)
fn copy_sparse(r: &mut impl Read, file: &File, buf: &mut [u8], budget: &Budget) -> std::io::Result<(u64, u64)> {
    let (mut total, mut data) = (0u64, 0u64);
    loop {
        let before = budget.passed.get();
        let n = match r.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // One read is one piece of the map, all data or all hole.
        if budget.passed.get() != before {
            file.write_all_at(&buf[..n], total)?;
            data += n as u64;
        }
        total += n as u64;
    }
    // Ending in a hole: the size alone makes it.
    file.set_len(total)?;
    Ok((total, data))
}

/// Copies `len` bytes of `src` from offset `off` to `dst`'s position, in the kernel (sendfile
/// from a file: page cache to page cache) or, where it cannot, through `buf`. Fewer bytes than
/// `len` means `src` ended first.
fn copy_at(src: &File, mut off: u64, dst: &File, len: u64, buf: &mut [u8]) -> std::io::Result<u64> {
    let mut done = 0u64;
    let mut kernel = true;
    while done < len {
        let want = (len - done).min(1 << 30);
        let n = if kernel {
            let mut o = off as libc::off_t;
            // SAFETY: valid descriptors and a valid offset pointer.
            let r = unsafe { libc::sendfile(dst.as_raw_fd(), src.as_raw_fd(), &mut o, want as usize) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EINVAL | libc::ENOSYS) if done == 0 => {
                        kernel = false;
                        continue;
                    }
                    _ => return Err(e),
                }
            }
            r as u64
        } else {
            let k = want.min(buf.len() as u64) as usize;
            let n = match src.read_at(&mut buf[..k], off) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => r?,
            };
            (&*dst).write_all(&buf[..n])?;
            n as u64
        };
        if n == 0 {
            break;
        }
        off += n;
        done += n;
    }
    Ok(done)
}

/// Copies until `r` ends; the count tells a truncated entry from a whole one.
fn copy(r: &mut impl Read, w: &mut impl Write, buf: &mut [u8]) -> std::io::Result<u64> {
    let mut total = 0u64;
    loop {
        let n = match r.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use std::ffi::CString;
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    /// Found by fuzzing: GNU tar (`mkfifo f; tar cf x.tar f`) leaves a FIFO's device number
    /// fields all NUL, and the layer was refused reading them.
    #[test]
    fn a_gnu_tar_fifo_with_empty_device_fields_is_made() {
        let (_tmp, root, tree) = scratch();
        let mut h = tar::Header::new_gnu();
        h.set_path("f").unwrap();
        h.set_entry_type(EntryType::Fifo);
        h.set_size(0);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        let g = h.as_gnu_mut().unwrap();
        g.dev_major = [0; 8];
        g.dev_minor = [0; 8];
        h.set_cksum();
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend([0u8; 1024]);
        apply_bytes(&tree, bytes).unwrap();
        assert!(fs::symlink_metadata(root.join("f")).unwrap().file_type().is_fifo());
    }

    #[test]
    fn entries_as_the_tar_says() {
        let (_tmp, root, tree) = scratch();
        let mut t = Tar::new();
        t.dir_with("usr/", 0o755, 1_000_000)
            .dir_with("usr/bin/", 0o750, 2_000_000)
            .file_with("usr/bin/su", b"#!/bin/true\n", 0o4755, 0, 0, 1_500_000_000)
            .file_with("usr/bin/tool", &vec![7u8; 700_000], 0o2711, 1000, 1001, 1_400_000_000)
            .symlink("usr/bin/link", "/usr/bin/tool")
            .link("usr/bin/hard", "usr/bin/tool")
            .node("dev/null", EntryType::Char, 1, 3)
            .node("dev/loop9", EntryType::Block, 7, 9)
            .node("run/fifo", EntryType::Fifo, 0, 0)
            .pax(&[("mtime", b"1234567890.123456789"), ("SCHILY.xattr.user.rcx", b"yes")])
            .file("etc/conf", b"c")
            .dir("tmp/")
            .dir_with("tmp/", 0o1777, 3_000_000);
        let stats = apply_bytes(&tree, t.bytes()).unwrap();
        assert_eq!(stats.bytes, 12 + 700_000 + 1);
        assert_eq!(stats.whiteouts, 0);

        let su = fs::symlink_metadata(root.join("usr/bin/su")).unwrap();
        assert_eq!(su.mode() & 0o7777, 0o4755, "setuid kept (mode set after chown)");
        assert_eq!((su.uid(), su.gid(), su.mtime()), (0, 0, 1_500_000_000));
        let tool = fs::symlink_metadata(root.join("usr/bin/tool")).unwrap();
        assert_eq!((tool.mode() & 0o7777, tool.uid(), tool.gid(), tool.len()), (0o2711, 1000, 1001, 700_000));
        assert_eq!(tool.nlink(), 2);
        assert_eq!(fs::symlink_metadata(root.join("usr/bin/hard")).unwrap().ino(), tool.ino());
        assert_eq!(fs::read_link(root.join("usr/bin/link")).unwrap(), Path::new("/usr/bin/tool"));
        let null = fs::symlink_metadata(root.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!((libc::major(null.rdev()), libc::minor(null.rdev()), null.mode() & 0o7777), (1, 3, 0o620));
        assert!(fs::symlink_metadata(root.join("dev/loop9")).unwrap().file_type().is_block_device());
        assert!(fs::symlink_metadata(root.join("run/fifo")).unwrap().file_type().is_fifo());
        let conf = fs::symlink_metadata(root.join("etc/conf")).unwrap();
        assert_eq!((conf.mtime(), conf.mtime_nsec()), (1_234_567_890, 123_456_789));
        let path = CString::new(root.join("etc/conf").into_os_string().into_encoded_bytes()).unwrap();
        match tree::xattr::get_path(&path, OsStr::new("user.rcx")) {
            Ok(v) => assert_eq!(v, b"yes"),
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => eprintln!("skipping the xattr check: {e} on this filesystem"),
            Err(e) => panic!("xattr: {e}"),
        }
        // Directory times survive the children written after them; a repeated entry updates.
        let usr = fs::symlink_metadata(root.join("usr")).unwrap();
        assert_eq!(usr.mtime(), 1_000_000);
        let bin = fs::symlink_metadata(root.join("usr/bin")).unwrap();
        assert_eq!((bin.mtime(), bin.mode() & 0o7777), (2_000_000, 0o750));
        let tmp = fs::symlink_metadata(root.join("tmp")).unwrap();
        assert_eq!((tmp.mtime(), tmp.mode() & 0o7777), (3_000_000, 0o1777));
        // Parents the tar did not list: made 0755, root-owned.
        let run = fs::symlink_metadata(root.join("run")).unwrap();
        assert_eq!((run.mode() & 0o7777, run.uid()), (0o755, 0));
    }

    fn refused(t: Vec<u8>, needle: &str) {
        let (tmp, _root, tree) = scratch();
        let e = apply_bytes(&tree, t).unwrap_err().to_string();
        assert!(e.contains(needle), "error '{e}' should name '{needle}'");
        assert_eq!(names(tmp.path()), ["root"], "nothing written beside the tree");
    }

    #[test]
    fn parent_components_refused() {
        refused(Tar::new().file("../x", b"bad").bytes(), "../x");
        refused(Tar::new().dir("a/").file("a/../../x", b"bad").bytes(), "a/../../x");
        refused(Tar::new().file("f", b"f").link("l", "../../etc/passwd").bytes(), "../../etc/passwd");
        refused(Tar::new().symlink("s", "x").link("../l", "s").bytes(), "../l");
    }

    fn unique(tag: &str) -> String {
        format!("rcx-dm-layer-test-{tag}-{}", std::process::id())
    }

    #[test]
    fn absolute_names_are_root_relative() {
        let (tmp, root, tree) = scratch();
        let name = unique("abs");
        apply_bytes(&tree, Tar::new().file(&format!("/etc/{name}"), b"in").bytes()).unwrap();
        assert!(!Path::new("/etc").join(&name).exists());
        assert_eq!(fs::read(root.join("etc").join(&name)).unwrap(), b"in");
        assert_eq!(names(tmp.path()), ["root"]);
    }

    #[test]
    fn symlinks_resolve_inside_the_tree() {
        let (tmp, root, tree) = scratch();
        let (n1, n2, n3) = (unique("evil"), unique("up"), unique("chain"));
        let mut t = Tar::new();
        t.symlink("evil", "/").file(&format!("evil/{n1}"), b"1");
        t.symlink("up", "../../..").file(&format!("up/{n2}"), b"2");
        t.symlink("a", "b").symlink("b", "/tmp").file(&format!("a/{n3}"), b"3");
        t.symlink("h", "/etc/passwd").link("hl", "h");
        apply_bytes(&tree, t.bytes()).unwrap();
        for n in [&n1, &n2] {
            assert!(!Path::new("/").join(n).exists(), "{n} written on the host");
            assert!(root.join(n).exists(), "{n} not in the tree");
        }
        assert!(!Path::new("/tmp").join(&n3).exists());
        assert!(root.join("a").join(&n3).exists() || root.join("tmp").join(&n3).exists());
        // A hard link to a symlink links the symlink, never its host target.
        assert_eq!(fs::read_link(root.join("hl")).unwrap(), Path::new("/etc/passwd"));
        assert_eq!(names(tmp.path()), ["root"]);
    }

    #[test]
    fn symlink_parent_followed_within_root() {
        // merged-usr: lib -> usr/lib; a later lib/x lands in usr/lib/x.
        let (_tmp, root, tree) = scratch();
        apply_bytes(&tree, Tar::new().dir("usr/lib/").symlink("lib", "usr/lib").bytes()).unwrap();
        apply_bytes(&tree, Tar::new().file("lib/x", b"x").bytes()).unwrap();
        assert_eq!(fs::read(root.join("usr/lib/x")).unwrap(), b"x");
        assert!(fs::symlink_metadata(root.join("lib")).unwrap().file_type().is_symlink());
    }

    #[test]
    fn replacing_entries() {
        let (_tmp, root, tree) = scratch();
        apply_bytes(&tree, Tar::new().dir("d/").file("d/f", b"f").file("f", b"f").symlink("s", "d").bytes()).unwrap();
        // a file over a dir, a dir over a file, a file over a symlink (not through it)
        apply_bytes(&tree, Tar::new().file("d", b"now a file").dir("f/").file("s", b"plain").bytes()).unwrap();
        assert_eq!(fs::read(root.join("d")).unwrap(), b"now a file");
        assert!(root.join("f").is_dir());
        assert_eq!(fs::read(root.join("s")).unwrap(), b"plain");
    }

    #[test]
    fn truncated_archive_is_an_error() {
        let (_tmp, _root, tree) = scratch();
        let full = Tar::new().file("big", &vec![1u8; 100_000]).bytes();
        let cut = full[..512 + 50_000].to_vec();
        assert!(apply_bytes(&tree, cut).is_err());
    }

    #[test]
    fn unsupported_type_is_an_error() {
        let (_tmp, _root, tree) = scratch();
        let mut t = Tar::new();
        t.raw("vol", EntryType::new(b'V'), 0o644, None, b"", |_| {});
        let e = apply_bytes(&tree, t.bytes()).unwrap_err().to_string();
        assert!(e.contains("not supported") && e.contains("vol"), "{e}");
    }

    /// `apply_file` (data copied from the archive file by the kernel) writes what `apply` of
    /// the same bytes as a stream writes, and still refuses a truncated archive.
    #[test]
    fn a_tar_file_gives_what_the_stream_gives() {
        let mut t = Tar::new();
        t.dir_with("d/", 0o750, 1_000_000)
            .file_with("d/big", &(0..3_000_000u32).map(|i| (i % 253) as u8).collect::<Vec<_>>(), 0o4755, 0, 0, 1_600_000_000)
            .file_with("d/small", b"small", 0o640, 1000, 1001, 1_500_000_000)
            .file("d/empty", b"")
            .symlink("d/l", "small")
            .link("d/h", "d/big")
            .pax(&[("mtime", b"1234567890.5"), ("SCHILY.xattr.user.rcx", b"yes")])
            .file("pax", b"pax data");
        let bytes = t.bytes();
        let (_t1, stream_root, stream_tree) = scratch();
        let want = apply_bytes(&stream_tree, bytes.clone()).unwrap();
        let (tmp, file_root, file_tree) = scratch();
        let archive = tmp.path().join("layer.tar");
        fs::write(&archive, &bytes).unwrap();
        let mut told = 0;
        let got = super::super::apply_file(&file_tree, File::open(&archive).unwrap(), |n| told += n).unwrap();
        assert_eq!(got, want);
        assert_eq!(told, got.bytes, "progress told every data byte");
        for p in ["d", "d/big", "d/small", "d/empty", "d/l", "d/h", "pax"] {
            let (a, b) = (fs::symlink_metadata(stream_root.join(p)).unwrap(), fs::symlink_metadata(file_root.join(p)).unwrap());
            assert_eq!((a.mode(), a.uid(), a.gid(), a.len(), a.mtime(), a.mtime_nsec(), a.nlink()), (b.mode(), b.uid(), b.gid(), b.len(), b.mtime(), b.mtime_nsec(), b.nlink()), "{p}");
            if a.is_file() {
                assert_eq!(fs::read(stream_root.join(p)).unwrap(), fs::read(file_root.join(p)).unwrap(), "{p}");
            }
        }
        // Cut inside d/big's data: its copy comes up short.
        let (tmp, _root, tree) = scratch();
        let cut = tmp.path().join("cut.tar");
        fs::write(&cut, &bytes[..512 * 3 + 1_000_000]).unwrap();
        let e = super::super::apply_file(&tree, File::open(&cut).unwrap(), |_| {}).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("d/big"), "{e}");
    }

    #[test]
    fn pax_times() {
        assert_eq!(pax_time(b"12.5").unwrap(), TimeSpec::new(12, 500_000_000));
        assert_eq!(pax_time(b"7").unwrap(), TimeSpec::new(7, 0));
        assert_eq!(pax_time(b"-1.25").unwrap(), TimeSpec::new(-2, 750_000_000));
        assert!(pax_time(b"1e9").is_err());
    }
}
