//! `rcx-dm image push NAME REF`: an image of the pool as a one-layer OCI image in a registry.
//!
//! A layer volume holds the whole filesystem up to that layer, not the layer's own changes, and
//! neither `import` nor `commit` keeps the blobs or a change list, so the layer tars an image was
//! made of cannot be given back. Push therefore sends the honest minimum: the image's top volume,
//! mounted read-only, as one tar (gzip) of its whole tree — a squashed image that any registry
//! client can pull and run. The image's original config (command, environment) is not kept by
//! the pool either; the pushed config has the platform and the layer only.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::client::{Connect, Remote};
use crate::error::{Error, IoContext, Result};
use crate::pool::{Pool, VolRef};
use crate::rootfs::oci::{Digest, Platform};
use crate::rootfs::{image, mount, populate};

/// What a push sent.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    /// The image pushed.
    pub image: String,
    /// The reference it was pushed as.
    pub reference: String,
    /// The manifest's digest (pull `REPO@DIGEST` to get exactly this).
    pub manifest: String,
    /// The one layer's blob digest and size.
    pub layer: String,
    /// Its size, compressed.
    pub layer_bytes: u64,
    /// Its uncompressed tar's digest.
    pub diff_id: String,
}

/// Counts and hashes what is written through it.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The tree at `root` as a gzip'd tar in `out`: (blob digest, blob size, diff_id).
pub(crate) fn write_layer(root: &Path, out: File) -> Result<(Digest, u64, Digest)> {
    let blob = HashWriter { inner: BufWriter::with_capacity(1 << 20, out), hasher: Sha256::new(), count: 0 };
    let gz = flate2::write::GzEncoder::new(blob, flate2::Compression::fast());
    let tar_w = HashWriter { inner: gz, hasher: Sha256::new(), count: 0 };
    let mut b = tar::Builder::new(tar_w);
    // Symlinks are entries, never followed out of the image.
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    for e in std::fs::read_dir(root).ctx(|| format!("listing {}", root.display()))? {
        let e = e.ctx(|| format!("listing {}", root.display()))?;
        let name = e.file_name();
        if name == "lost+found" {
            continue; // the filesystem's, not the image's
        }
        let p = e.path();
        let is_dir = e.file_type().ctx(|| format!("reading {}", p.display()))?.is_dir();
        let r = if is_dir { b.append_dir_all(&name, &p) } else { b.append_path_with_name(&p, &name) };
        r.ctx(|| format!("adding {} to the layer tar", p.display()))?;
    }
    let tar_w = b.into_inner().ctx(|| "finishing the layer tar".into())?;
    let diff_id = Digest::from_hasher(tar_w.hasher);
    let mut blob = tar_w.inner.finish().ctx(|| "finishing the layer's gzip stream".into())?;
    blob.flush().ctx(|| "writing the layer blob".into())?;
    Ok((Digest::from_hasher(blob.hasher), blob.count, diff_id))
}

/// `rcx-dm image push NAME REF`: see the module comment.
pub fn push(pool: &Pool, name: &str, reference: &str, connect: &Connect) -> Result<PushReport> {
    let rec = image::find(pool, name)?
        .ok_or_else(|| Error::invalid("image", format!("no image '{name}' in pool '{}'; `rcx-dm image list` shows them", pool.name())))?;
    let top = image::top_volume(pool, name)?.unwrap_or(rec.top);
    let work = pool.dir().join("images").join("downloads");
    std::fs::create_dir_all(&work).ctx(|| format!("creating {}", work.display()))?;
    let remote = Remote::new(reference, connect, work.clone(), oci_client::RegistryOperation::Push)?;

    // The tar goes to a file first: its digest must be known before the upload is committed,
    // and an image can be far larger than memory.
    let tmp = tempfile::tempfile_in(&work).ctx(|| format!("creating a temporary file in {}", work.display()))?;
    let out = tmp.try_clone().ctx(|| "duplicating the layer file".into())?;
    let v = VolRef::Id(top);
    let was_active = pool.volume(&v)?.active;
    let dev = pool.activate_volume(&v)?;
    let mnt = populate::mountpoint(pool)?;
    let written = mount::with_mounted_ro(&dev, rec.fs, &mnt, |root| write_layer(root, out));
    if !was_active {
        if let Err(e) = pool.deactivate_volume(&v) {
            tracing::warn!(error = %e, volume = top, "could not deactivate the image's top volume again");
        }
    }
    let (digest, size, diff_id) = written?;

    let mut file = tmp;
    // The writer was a dup of this descriptor: they share the offset, now at the end.
    std::io::Seek::rewind(&mut file).ctx(|| "rewinding the layer file".into())?;
    let manifest_digest = upload(&remote, file, &digest, size, &diff_id, rec.config.as_ref())?;
    Ok(PushReport {
        image: name.to_string(),
        reference: reference.to_string(),
        manifest: manifest_digest.to_string(),
        layer: digest.to_string(),
        layer_bytes: size,
        diff_id: diff_id.to_string(),
    })
}

/// Upload one layer blob (`file`, read from its start), a config naming it and a manifest,
/// as the remote's reference. Returns the manifest's digest.
pub(crate) fn upload(
    remote: &Remote,
    mut file: File,
    digest: &Digest,
    size: u64,
    diff_id: &Digest,
    runtime: Option<&crate::rootfs::oci::ImageConfig>,
) -> Result<Digest> {
    let host = Platform::host();
    let config = serde_json::json!({
        "architecture": host.architecture,
        "os": host.os,
        "config": runtime.cloned().unwrap_or_default(),
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
    });
    let config = serde_json::to_vec(&config).map_err(|e| Error::Inconsistent(format!("encoding the config: {e}")))?;
    let config_digest = Digest::of(&config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest.to_string(), "size": size}],
    });
    let manifest = serde_json::to_vec(&manifest).map_err(|e| Error::Inconsistent(format!("encoding the manifest: {e}")))?;
    let manifest_digest = Digest::of(&manifest);

    let c = &remote.client;
    let r = &remote.reference;
    remote.rt.block_on(async {
        let chunks = std::iter::from_fn(move || {
            let mut buf = vec![0u8; 1 << 20];
            match file.read(&mut buf) {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some(Ok(bytes::Bytes::from(buf)))
                }
                Err(e) => Some(Err(oci_client::errors::OciDistributionError::IoError(e))),
            }
        });
        c.push_blob_stream(r, futures_util::stream::iter(chunks), &digest.to_string(), Some(size))
            .await
            .map_err(|e| remote.error("uploading the layer", e))?;
        c.push_blob(r, config.clone(), &config_digest.to_string()).await.map_err(|e| remote.error("uploading the config", e))?;
        let ct = http::HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json");
        c.push_manifest_raw(r, manifest.clone(), ct).await.map_err(|e| remote.error("uploading the manifest", e))?;
        Ok::<_, Error>(())
    })?;
    Ok(manifest_digest)
}
