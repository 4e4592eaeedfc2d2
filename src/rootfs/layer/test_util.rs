//! A tar builder that writes raw names, and scratch trees, for the layer unit tests.

use std::fs;
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::{apply, LayerStats};
use crate::error::Result;
use crate::rootfs::tree::Tree;

/// A tar made entry by entry with raw names, so tests can write what `tar::Builder`'s
/// checked setters refuse (`..`, absolute paths).
pub(super) struct Tar(pub(super) tar::Builder<Vec<u8>>);

impl Tar {
    pub(super) fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }

    /// One entry with every header field given; `f` may change the header before the checksum.
    pub(super) fn raw(&mut self, path: &str, ty: EntryType, mode: u32, link: Option<&str>, data: &[u8], f: impl FnOnce(&mut Header)) {
        let mut h = Header::new_gnu();
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        if let Some(l) = link {
            h.set_link_name_literal(l).unwrap();
        }
        f(&mut h);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
    }

    pub(super) fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.raw(path, EntryType::Regular, 0o644, None, data, |_| {});
        self
    }
    pub(super) fn file_with(&mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64, mtime: u64) -> &mut Self {
        self.raw(path, EntryType::Regular, mode, None, data, |h| {
            h.set_uid(uid);
            h.set_gid(gid);
            h.set_mtime(mtime);
        });
        self
    }
    pub(super) fn dir(&mut self, path: &str) -> &mut Self {
        self.raw(path, EntryType::Directory, 0o755, None, b"", |_| {});
        self
    }
    pub(super) fn dir_with(&mut self, path: &str, mode: u32, mtime: u64) -> &mut Self {
        self.raw(path, EntryType::Directory, mode, None, b"", |h| h.set_mtime(mtime));
        self
    }
    pub(super) fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(path, EntryType::Symlink, 0o777, Some(target), b"", |_| {});
        self
    }
    pub(super) fn link(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(path, EntryType::Link, 0o644, Some(target), b"", |_| {});
        self
    }
    pub(super) fn node(&mut self, path: &str, ty: EntryType, major: u32, minor: u32) -> &mut Self {
        self.raw(path, ty, 0o620, None, b"", |h| {
            h.set_device_major(major).unwrap();
            h.set_device_minor(minor).unwrap();
        });
        self
    }
    pub(super) fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.0.append_pax_extensions(records.iter().map(|(k, v)| (*k, *v))).unwrap();
        self
    }
    pub(super) fn bytes(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.0, tar::Builder::new(Vec::new())).into_inner().unwrap()
    }
}

/// A tempdir on a disk filesystem (xattrs work there, not always on tmpfs) with the tree
/// at `<tmp>/root`, so writes outside the tree show up as siblings.
pub(super) fn scratch() -> (tempfile::TempDir, PathBuf, Tree) {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    let tree = Tree::open(&root).unwrap();
    (tmp, root, tree)
}

pub(super) fn apply_bytes(tree: &Tree, t: Vec<u8>) -> Result<LayerStats> {
    apply(tree, &t[..])
}

pub(super) fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

pub(super) fn all_paths(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        out.push(e.path());
        if e.file_type().unwrap().is_dir() {
            all_paths(&e.path(), out);
        }
    }
}

pub(super) fn no_markers(root: &Path) {
    let mut all = Vec::new();
    all_paths(root, &mut all);
    for p in all {
        assert!(!p.file_name().unwrap().to_string_lossy().starts_with(".wh."), "marker written: {}", p.display());
    }
}
