//! Files of the untrusted layout directory: `oci-layout`, `index.json` and blobs, opened only
//! as regular files beneath it and read with a size cap.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{clip, corrupt, Digest, MAX_JSON_BYTES};
use crate::error::{Error, IoContext, Result};

/// An image layout directory, every file of it opened beneath it.
pub(super) struct Layout {
    pub(super) dir: PathBuf,
}

impl Layout {
    pub(super) fn check_version(&self) -> Result<()> {
        let path = self.dir.join("oci-layout");
        let Some((file, _)) = open_regular(&self.dir, Path::new("oci-layout"), "the layout's oci-layout file")? else {
            return Err(Error::invalid(
                "OCI image layout",
                format!(
                    "{} is not an OCI image layout (no oci-layout file); export the image as one, e.g. `skopeo copy docker://IMAGE oci:DIR:TAG`",
                    self.dir.display()
                ),
            ));
        };
        let bytes = read_json(file, &path, "the layout's oci-layout file")?;
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct OciLayout {
            image_layout_version: String,
        }
        let v: OciLayout = serde_json::from_slice(&bytes).map_err(|e| {
            Error::invalid("OCI image layout", format!("{}: {e}; re-export the image", path.display()))
        })?;
        if v.image_layout_version != "1.0.0" {
            return Err(Error::invalid(
                "OCI image layout",
                format!(
                    "{}: imageLayoutVersion is '{}', rcx-dm reads only 1.0.0; re-export the image with a current tool",
                    path.display(),
                    clip(&v.image_layout_version)
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn blob_path(&self, digest: &Digest) -> PathBuf {
        // Safe to join: Digest holds only 64 hex digits.
        self.dir.join("blobs").join(digest.algorithm()).join(digest.hex())
    }

    /// The blob, opened as a regular file (see [`open_regular`]: a FIFO or device would hang or
    /// never end) of the size its descriptor gives.
    pub(super) fn open_blob(&self, digest: &Digest, size: u64, what: &str) -> Result<File> {
        let path = self.blob_path(digest);
        let rel = Path::new("blobs").join(digest.algorithm()).join(digest.hex());
        let Some((file, len)) = open_regular(&self.dir, &rel, what)? else {
            return Err(Error::invalid(
                "OCI image",
                format!(
                    "{what}: blob {} is missing; the layout is incomplete (a non-distributable layer is not copied by default), re-export it",
                    path.display()
                ),
            ));
        };
        if len != size {
            return Err(corrupt(what, format!("blob {} is {len} bytes but its descriptor says {size}", path.display())));
        }
        Ok(file)
    }

    /// A manifest, index or config blob: size and digest are checked before the caller
    /// parses a byte of it.
    pub(super) fn read_json_blob(&self, digest: &Digest, size: u64, what: &str) -> Result<Vec<u8>> {
        if size > MAX_JSON_BYTES {
            return Err(corrupt(
                what,
                format!("descriptor says {size} bytes, over the {MAX_JSON_BYTES} allowed"),
            ));
        }
        let path = self.blob_path(digest);
        let file = self.open_blob(digest, size, what)?;
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(size + 1).read_to_end(&mut bytes).ctx(|| format!("reading {what} at {}", path.display()))?;
        // The file may have changed since it was stat'ed.
        if bytes.len() as u64 != size {
            return Err(corrupt(
                what,
                format!("blob is {} bytes but its descriptor says {size}", bytes.len()),
            ));
        }
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(corrupt(what, format!("digest mismatch (blob has {actual})")));
        }
        Ok(bytes)
    }

    /// A layout file at `rel` (oci-layout, index.json), at most MAX_JSON_BYTES.
    pub(super) fn read_json_file(&self, rel: &str, what: &str) -> Result<Vec<u8>> {
        let path = self.dir.join(rel);
        let Some((file, _)) = open_regular(&self.dir, Path::new(rel), what)? else {
            return Err(Error::invalid(
                "OCI image layout",
                format!("{} has no {rel}; the layout is incomplete, re-export the image", self.dir.display()),
            ));
        };
        read_json(file, &path, what)
    }
}

pub(super) fn read_json(file: File, path: &Path, what: &str) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(MAX_JSON_BYTES + 1).read_to_end(&mut bytes).ctx(|| format!("reading {what} {}", path.display()))?;
    if bytes.len() as u64 > MAX_JSON_BYTES {
        return Err(Error::invalid(
            "OCI image layout",
            format!(
                "{} is over {MAX_JSON_BYTES} bytes; it is not a layout file, re-export the image",
                path.display()
            ),
        ));
    }
    Ok(bytes)
}

/// Opens `rel` under the layout directory `dir` for reading, only as a regular file, and
/// gives it with its size; None if there is nothing there. The directory is untrusted input:
/// the final component is never followed (O_NOFOLLOW), parents are resolved beneath `dir`
/// (RESOLVE_BENEATH, no magic links), the type is checked on a descriptor that cannot read
/// (O_PATH: opening a device can have effects of its own) and again, with the same inode, on the
/// one that reads, which is opened O_NONBLOCK (a FIFO would wait for a writer forever).
pub(super) fn open_regular(dir: &Path, rel: &Path, what: &str) -> Result<Option<(File, u64)>> {
    use nix::errno::Errno;
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use nix::sys::stat::{fstat, Mode};
    let full = dir.join(rel);
    let ctx = || format!("opening {what} at {}", full.display());
    use crate::rootfs::tree::retry;
    let dirfd = retry(|| nix::fcntl::open(dir, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()))
        .map_err(io::Error::from)
        .ctx(|| format!("opening the image layout directory {}", dir.display()))?;
    let resolve = ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS;
    let how = |flags: OFlag| OpenHow::new().flags(flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).resolve(resolve);
    let kind = |mode: u32| match mode & libc::S_IFMT {
        libc::S_IFREG => None,
        libc::S_IFLNK => Some("a symbolic link"),
        libc::S_IFIFO => Some("a FIFO"),
        libc::S_IFCHR => Some("a character device"),
        libc::S_IFBLK => Some("a block device"),
        libc::S_IFDIR => Some("a directory"),
        libc::S_IFSOCK => Some("a socket"),
        _ => Some("of an unknown type"),
    };
    let refuse = |k: &str| {
        Error::invalid(
            "OCI image layout",
            format!(
                "{what} {} is {k}, not a regular file; an image layout holds only regular files (copy it with `cp -rL`, or re-export the image)",
                full.display()
            ),
        )
    };
    let probe = match retry(|| openat2(dirfd.as_fd(), rel, how(OFlag::O_PATH))) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::EXDEV) => {
            return Err(Error::invalid(
                "OCI image layout",
                format!("{what} {} resolves outside the layout directory (a symlinked parent); re-export the image", full.display()),
            ))
        }
        Err(e) => return Err(io::Error::from(e)).ctx(ctx),
    };
    let st = fstat(probe.as_fd()).map_err(io::Error::from).ctx(ctx)?;
    if let Some(k) = kind(st.st_mode) {
        return Err(refuse(k));
    }
    let fd = retry(|| openat2(dirfd.as_fd(), rel, how(OFlag::O_RDONLY | OFlag::O_NONBLOCK)))
        .map_err(io::Error::from)
        .ctx(ctx)?;
    let st2 = fstat(fd.as_fd()).map_err(io::Error::from).ctx(ctx)?;
    if let Some(k) = kind(st2.st_mode) {
        return Err(refuse(k));
    }
    if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino) {
        return Err(Error::invalid(
            "OCI image layout",
            format!("{what} {} was replaced while it was being opened; import the layout when nothing writes to it", full.display()),
        ));
    }
    Ok(Some((File::from(fd), st2.st_size as u64)))
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use crate::error::Result;
    use crate::rootfs::oci::test_util::*;
    use serde_json::json;
    use std::path::Path;

    #[test]
    fn layout_files_checked() {
        let dir = tempfile::tempdir().unwrap();
        let e = err_text(open(dir.path(), None));
        assert!(e.contains("no oci-layout file"), "{e}");
        std::fs::write(dir.path().join("oci-layout"), br#"{"imageLayoutVersion": "2.0.0"}"#).unwrap();
        let e = err_text(open(dir.path(), None));
        assert!(e.contains("imageLayoutVersion is '2.0.0'"), "{e}");
        std::fs::write(dir.path().join("oci-layout"), br#"{"imageLayoutVersion": "1.0.0"}"#).unwrap();
        let e = err_text(open(dir.path(), None));
        assert!(e.contains("index.json"), "{e}");
        put_index(dir.path(), vec![]);
        let e = err_text(open(dir.path(), None));
        assert!(e.contains("lists no image manifests"), "{e}");
    }

    #[test]
    fn bad_size_refused() {
        let (dir, mut m) = layout(one_layer().layers);
        m["size"] = json!(m["size"].as_u64().unwrap() + 1);
        put_index(dir.path(), vec![m.clone()]);
        let e = err_text(open(dir.path(), None));
        assert!(e.contains("manifest") && e.contains("bytes but its descriptor says"), "{e}");
        m["size"] = json!(1u64 << 40);
        put_index(dir.path(), vec![m]);
        let e = err_text(open(dir.path(), None));
        assert!(e.contains("over the"), "{e}");
    }

    #[test]
    fn digest_with_path_characters_refused() {
        let dir = tempfile::tempdir().unwrap();
        // A file the crafted digest would reach if it were joined as a path.
        std::fs::write(dir.path().join("evil"), b"{}").unwrap();
        let d = json!({ "mediaType": MEDIA_TYPE_MANIFEST, "digest": "sha256:../../evil", "size": 2 });
        put_index(dir.path(), vec![d]);
        let e = err_text(open(dir.path(), None));
        assert!(e.contains("64 lowercase hex") && e.contains("manifest sha256:../../evil"), "{e}");
    }

    #[test]
    fn missing_layer_blob_refused_at_open() {
        let (dir, m) = layout(one_layer().layers);
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(blob_file(dir.path(), &m)).unwrap()).unwrap();
        std::fs::remove_file(blob_file(dir.path(), &manifest["layers"][0])).unwrap();
        let e = err_text(open(dir.path(), None));
        assert!(e.contains("layer 1/1") && e.contains("is missing"), "{e}");
    }

    /// `open` on another thread: a FIFO would block it forever.
    fn open_within(dir: &Path, secs: u64) -> Result<Image> {
        let (tx, rx) = std::sync::mpsc::channel();
        let d = dir.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(open(&d, None));
        });
        rx.recv_timeout(std::time::Duration::from_secs(secs)).expect("oci::open hung (a FIFO opened for reading)")
    }

    fn mkfifo(p: &Path) {
        let _ = std::fs::remove_file(p);
        nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }

    #[test]
    fn layout_files_must_be_regular_files() {
        for name in ["oci-layout", "index.json"] {
            let (dir, _) = layout(one_layer().layers);
            mkfifo(&dir.path().join(name));
            let e = err_text(open_within(dir.path(), 10));
            assert!(e.contains(name) && e.contains("FIFO") && e.contains("not a regular file"), "{name}: {e}");

            let (dir, _) = layout(one_layer().layers);
            let outside = tempfile::NamedTempFile::new().unwrap();
            std::fs::copy(dir.path().join(name), outside.path()).unwrap();
            std::fs::remove_file(dir.path().join(name)).unwrap();
            std::os::unix::fs::symlink(outside.path(), dir.path().join(name)).unwrap();
            let e = err_text(open_within(dir.path(), 10));
            assert!(e.contains(name) && e.contains("symbolic link"), "{name}: {e}");
        }
        // A layer blob that is a symlink (to a copy of itself outside the layout) or a FIFO.
        let (dir, m) = layout(one_layer().layers);
        let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(blob_file(dir.path(), &m)).unwrap()).unwrap();
        let blob = blob_file(dir.path(), &manifest["layers"][0]);
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::copy(&blob, outside.path()).unwrap();
        std::fs::remove_file(&blob).unwrap();
        std::os::unix::fs::symlink(outside.path(), &blob).unwrap();
        let e = err_text(open_within(dir.path(), 10));
        assert!(e.contains("layer 1/1") && e.contains("symbolic link"), "{e}");
        mkfifo(&blob);
        let e = err_text(open_within(dir.path(), 10));
        assert!(e.contains("layer 1/1") && e.contains("FIFO"), "{e}");
        // The manifest blob too.
        let (dir, m) = layout(one_layer().layers);
        mkfifo(&blob_file(dir.path(), &m));
        let e = err_text(open_within(dir.path(), 10));
        assert!(e.contains("manifest") && e.contains("FIFO"), "{e}");
    }
}
