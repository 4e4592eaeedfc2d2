//! Whiteout and opaque markers: recorded as the stream is read, applied at the end against
//! lower content only (never against what this layer wrote), then directory times set.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{in_entry, State};
use crate::error::{Error, Result};
use crate::rootfs::tree::{EntryKind, Times};

/// The prefix of a whiteout marker: `.wh.NAME` hides NAME of lower layers.
const WHITEOUT: &str = ".wh.";
/// The marker that makes its directory opaque: lower children all hidden.
const OPAQUE: &str = ".wh..wh..opq";
/// aufs' own bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`): not content, skipped as others do.
const AUFS_META: &str = ".wh..wh.";

impl<'t> State<'t> {
    /// Records a whiteout or opaque marker; Some(counted) if `name` is a marker.
    /// `name` is bytes: a whiteout of a name that is not UTF-8 is a whiteout all the same.
    pub(super) fn marker(&mut self, rel: &Path, name: &[u8]) -> Result<Option<bool>> {
        let Some(hidden) = name.strip_prefix(WHITEOUT.as_bytes()) else { return Ok(None) };
        let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        if name == OPAQUE.as_bytes() {
            self.opaque.push(parent);
            return Ok(Some(true));
        }
        if name.starts_with(AUFS_META.as_bytes()) {
            return Ok(Some(false));
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(Error::invalid("layer", format!("whiteout '{}' names no entry", rel.display())));
        }
        self.whiteouts.push(parent.join(OsStr::from_bytes(hidden)));
        Ok(Some(true))
    }

    pub(super) fn wrote(&mut self, rel: PathBuf) {
        let mut p = Some(rel.as_path());
        while let Some(q) = p {
            if !self.written.insert(q.to_path_buf()) && q != rel.as_path() {
                break; // ancestors already recorded
            }
            p = q.parent();
        }
    }

    /// Whiteouts and opaque directories against lower content, then directory times.
    pub(super) fn finish(&mut self) -> Result<()> {
        let tree = self.tree;
        for path in std::mem::take(&mut self.whiteouts) {
            if !self.written.contains(&path) {
                tree.remove(&path).map_err(|e| in_entry(&format!("whiteout of {}", path.display()), e))?;
            } else if tree.kind(&path)? == Some(EntryKind::Dir) {
                // Lower D whited out and D made again by this layer: lower content of D goes.
                self.hide_lower(&path)?;
            }
        }
        for dir in std::mem::take(&mut self.opaque) {
            if tree.kind(&dir)? == Some(EntryKind::Dir) {
                self.hide_lower(&dir)?;
            }
        }
        let mut dirs: Vec<(PathBuf, Times)> = self.dir_times.drain().collect();
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (dir, times) in dirs {
            // Skip a directory a later entry of the layer replaced or removed; set_times would
            // otherwise make its missing parents again.
            if dir.as_os_str().is_empty() || tree.kind(&dir)? == Some(EntryKind::Dir) {
                tree.set_times(&dir, times)?;
            }
        }
        Ok(())
    }

    /// Removes everything under `dir` this layer did not write.
    fn hide_lower(&self, dir: &Path) -> Result<()> {
        for name in self.tree.list(dir)? {
            let child = dir.join(&name);
            if !self.written.contains(&child) {
                self.tree.remove(&child)?;
            } else if self.tree.kind(&child)? == Some(EntryKind::Dir) {
                self.hide_lower(&child)?;
            }
        }
        Ok(())
    }
}


#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::*;
    use crate::rootfs::tree::Tree;
    use std::fs;
    use std::os::unix::ffi::OsStringExt;
    use std::path::Path;
    use tar::{EntryType, Header};

    fn lower(tree: &Tree) {
        let mut t = Tar::new();
        t.dir("a/").file("a/x", b"x").file("a/y", b"y");
        t.dir("b/").file("b/z", b"z").dir("b/deep/").file("b/deep/q", b"q");
        t.file("c", b"c");
        t.dir("d/").file("d/old", b"old");
        t.dir("e/").file("e/old", b"old");
        t.dir("f/").dir("f/sub/").file("f/sub/l", b"l").file("f/keep", b"k");
        apply_bytes(tree, t.bytes()).unwrap();
    }

    /// The upper layer's entries, as (marker?, adder) pairs so tests can order them.
    fn upper(markers_first: bool) -> Vec<u8> {
        let mut t = Tar::new();
        let markers = |t: &mut Tar| {
            t.file("a/.wh.x", b"").file("b/.wh..wh..opq", b"").file(".wh.c", b"").file(".wh.d", b"").file(".wh.e", b"");
            t.file("f/.wh..wh..opq", b"");
        };
        if markers_first {
            markers(&mut t);
        }
        t.file("b/new", b"n").dir("c/").file("c/inside", b"i").dir("e/").file("e/n", b"n").file("f/sub/new", b"n");
        if !markers_first {
            markers(&mut t);
        }
        t.bytes()
    }

    fn check_upper(root: &Path, stats: LayerStats) {
        assert_eq!(stats.whiteouts, 6);
        assert_eq!(names(&root.join("a")), ["y"]);
        assert_eq!(names(&root.join("b")), ["new"], "opaque b hides lower z and deep/");
        assert_eq!(names(&root.join("c")), ["inside"], "file c whited out and replaced by a dir");
        assert!(!root.join("d").exists(), "whiteout of a directory");
        assert_eq!(names(&root.join("e")), ["n"], "dir whited out and made again: lower content gone");
        assert_eq!(names(&root.join("f")), ["sub"]);
        assert_eq!(names(&root.join("f/sub")), ["new"]);
        no_markers(root);
    }

    #[test]
    fn whiteouts_before_entries() {
        let (_tmp, root, tree) = scratch();
        lower(&tree);
        check_upper(&root, apply_bytes(&tree, upper(true)).unwrap());
    }

    #[test]
    fn whiteouts_after_entries() {
        let (_tmp, root, tree) = scratch();
        lower(&tree);
        check_upper(&root, apply_bytes(&tree, upper(false)).unwrap());
    }

    #[test]
    fn whiteout_of_missing_entry_is_harmless() {
        let (_tmp, root, tree) = scratch();
        let mut t = Tar::new();
        t.file("nothing/.wh.here", b"").file(".wh.gone", b"").file("x/.wh..wh..opq", b"").file("x/y", b"y");
        assert_eq!(apply_bytes(&tree, t.bytes()).unwrap().whiteouts, 3);
        assert_eq!(names(&root), ["x"]);
        assert_eq!(names(&root.join("x")), ["y"]);
    }

    /// A file named by raw bytes (not UTF-8).
    fn raw_name_file(t: &mut Tar, name: &[u8]) {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(1);
        h.set_cksum();
        t.0.append(&h, &b"x"[..]).unwrap();
    }

    #[test]
    fn non_utf8_whiteouts_are_honoured() {
        let (_tmp, root, tree) = scratch();
        let mut t = Tar::new();
        raw_name_file(&mut t, b"d/caf\xe9");
        raw_name_file(&mut t, b"d/keep\xff");
        apply_bytes(&tree, t.bytes()).unwrap();
        let mut t = Tar::new();
        raw_name_file(&mut t, b"d/.wh.caf\xe9");
        raw_name_file(&mut t, b".wh.\xfe\xfe");
        let stats = apply_bytes(&tree, t.bytes()).unwrap();
        assert_eq!(stats.whiteouts, 2);
        let left: Vec<Vec<u8>> = fs::read_dir(root.join("d")).unwrap().map(|e| e.unwrap().file_name().into_vec()).collect();
        assert_eq!(left, [b"keep\xff".to_vec()], "the whited-out file goes, no marker is written");
        assert_eq!(names(&root), ["d"]);
    }

    #[test]
    fn whiteouts_under_looping_symlinks_are_no_ops() {
        let (_tmp, root, tree) = scratch();
        apply_bytes(&tree, Tar::new().symlink("self", "self").symlink("a", "b").symlink("b", "a").file("f", b"f").bytes()).unwrap();
        let mut t = Tar::new();
        t.file("self/.wh.x", b"").file("a/sub/.wh.y", b"").file("b/.wh..wh..opq", b"").file("g", b"g");
        let stats = apply_bytes(&tree, t.bytes()).unwrap();
        assert_eq!(stats.whiteouts, 3);
        assert_eq!(names(&root), ["a", "b", "f", "g", "self"]);
        assert_eq!(fs::read_link(root.join("self")).unwrap(), Path::new("self"));
        assert_eq!(fs::read_link(root.join("a")).unwrap(), Path::new("b"));
    }

    #[test]
    fn whiteouts_through_symlinks_stay_inside_the_root() {
        let (tmp, root, tree) = scratch();
        fs::write(tmp.path().join("sibling"), b"host").unwrap();
        let mut t = Tar::new();
        t.symlink("up", "..").symlink("abs", "/").symlink("far", "../../../..").file("sibling", b"in the tree");
        apply_bytes(&tree, t.bytes()).unwrap();
        let mut t = Tar::new();
        t.file("up/.wh.sibling", b"").file("abs/.wh.sibling", b"").file("far/.wh.sibling", b"").file("far/.wh..wh..opq", b"");
        apply_bytes(&tree, t.bytes()).unwrap();
        assert_eq!(fs::read(tmp.path().join("sibling")).unwrap(), b"host", "a host file was whited out");
        // Followed inside the root (as containerd's applier does): the tree's own sibling goes.
        assert!(!root.join("sibling").exists());
        assert_eq!(names(tmp.path()), ["root", "sibling"]);
    }
}
