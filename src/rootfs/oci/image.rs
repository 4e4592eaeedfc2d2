//! An image read from a layout, its layers, and the reader that streams a layer's tar while
//! verifying it against the manifest's digest and the config's diff_id.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::layout::Layout;
use super::prefetch::Prefetched;
use super::{corrupt, Digest, ImageConfig, MAX_TRAILING_BYTES};
use crate::error::{Error, IoContext, Result};

/// An image read from a layout: verified manifest and config, and its layers (not yet read).
#[derive(Debug, Clone)]
pub struct Image {
    /// The layout directory it was read from.
    pub layout: PathBuf,
    /// The `org.opencontainers.image.ref.name` of the descriptor picked in `index.json`.
    pub ref_name: Option<String>,
    /// Digest of the image manifest picked (below any nested indexes).
    pub manifest_digest: Digest,
    /// Digest of the image config blob.
    pub config_digest: Digest,
    /// The config's `architecture` (OCI names: amd64, arm64, ...).
    pub architecture: String,
    /// The config's `os`.
    pub os: String,
    /// What a runtime needs from the config: env, command, working directory, user.
    pub config: ImageConfig,
    /// The whole config document, for whatever the typed subset leaves out.
    pub raw_config: serde_json::Value,
    /// Bottom layer first.
    pub layers: Vec<Layer>,
}

impl Image {
    /// The chain id of the whole image (its top layer's), `None` for an image with no layers.
    pub fn chain_id(&self) -> Option<&Digest> {
        self.layers.last().map(|l| &l.chain_id)
    }
}

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LayerCompression {
    None,
    Gzip,
    Zstd,
}

impl LayerCompression {
    /// The compression a layer media type says, None for a type that is not a layer.
    pub(super) fn from_media_type(mt: &str) -> Option<LayerCompression> {
        Some(match mt {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar" => LayerCompression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => LayerCompression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => LayerCompression::Zstd,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            LayerCompression::None => "plain tar",
            LayerCompression::Gzip => "gzip",
            LayerCompression::Zstd => "zstd",
        }
    }
}

/// One layer of an image. Its blob has been seen (a regular file of the right size) but not read.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Digest of the blob as stored (compressed).
    pub digest: Digest,
    /// The blob's media type as the manifest gives it; it says the compression.
    pub media_type: String,
    /// Size of the blob as stored.
    pub size: u64,
    /// Digest of the uncompressed tar, from the config's `rootfs.diff_ids`.
    pub diff_id: Digest,
    /// This layer and all below it; see [`chain_ids`](super::chain_ids).
    pub chain_id: Digest,
    pub(super) path: PathBuf,
    /// The layout directory the blob is in (it is opened beneath it, see `layout::open_regular`).
    pub(super) layout: PathBuf,
    pub(super) compression: LayerCompression,
    /// "layer 2/5 (sha256:..) of image /x:tag", for messages.
    pub(super) label: String,
}

impl Layer {
    /// Where the blob is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// "layer 2/5 (sha256:..) of image /x:tag", for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Start reading the layer: the reader yields the uncompressed tar stream. Call
    /// [`LayerReader::finish`] after consuming it; only then is the content known to be right.
    pub fn open(&self) -> Result<LayerReader> {
        self.open_with(true)
    }

    /// [`Layer::open`] for a blob whose digest the caller checked as it wrote the file (a
    /// download of this process): `finish` checks its size, the decompressed stream's diff_id
    /// and the limits, but does not digest the blob a second time.
    pub fn open_digested(&self) -> Result<LayerReader> {
        self.open_with(false)
    }

    fn open_with(&self, digest_blob: bool) -> Result<LayerReader> {
        let file = Layout { dir: self.layout.clone() }.open_blob(&self.digest, self.size, &self.label)?;
        let raw = Hashing::new(file, digest_blob);
        let decoder = match self.compression {
            // Tar readers read 512 bytes at a time; the decoders buffer for themselves.
            LayerCompression::None => Decoder::Plain(BufReader::with_capacity(1 << 16, raw)),
            LayerCompression::Gzip => Decoder::Gzip(flate2::read::MultiGzDecoder::new(raw)),
            LayerCompression::Zstd => Decoder::Zstd(
                zstd::stream::read::Decoder::new(raw)
                    .ctx(|| format!("starting zstd decompression of {}", self.label))?,
            ),
        };
        let decoded = Prefetched::new(Hashing::new(decoder, true))
            .ctx(|| format!("starting a thread to decompress {}", self.label))?;
        Ok(LayerReader { decoded, layer: self.clone(), decode_error: None })
    }
}

/// A reader that hashes and counts what passes through it.
/// (Without a hasher it only counts.)
struct Hashing<R> {
    inner: R,
    hasher: Option<Sha256>,
    count: u64,
}

impl<R> Hashing<R> {
    fn new(inner: R, hash: bool) -> Self {
        Hashing { inner, hasher: hash.then(Sha256::new), count: 0 }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }
}

/// The blob's decompressor, chosen by media type, over the hashing reader of the file.
enum Decoder {
    Plain(BufReader<Hashing<File>>),
    Gzip(flate2::read::MultiGzDecoder<Hashing<File>>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<Hashing<File>>>),
}

impl Decoder {
    /// The hashing reader over the blob file. Bytes a decoder buffered but did not use were
    /// hashed when they were read, so draining this after the decoder covers the whole file.
    fn raw(&mut self) -> &mut Hashing<File> {
        match self {
            Decoder::Plain(r) => r.get_mut(),
            Decoder::Gzip(d) => d.get_mut(),
            Decoder::Zstd(d) => d.get_mut().get_mut(),
        }
    }
}

impl Read for Decoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
        }
    }
}

/// The uncompressed tar stream of a layer, verified by [`LayerReader::finish`].
pub struct LayerReader {
    /// Decompressed and digested on a thread of its own (`prefetch`).
    decoded: Prefetched<Hashing<Decoder>>,
    layer: Layer,
    /// The first decoding error the consumer saw: decoders need not repeat it on the next
    /// read, and finish must not mistake the stop for a clean end.
    decode_error: Option<String>,
}

impl Read for LayerReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = match &self.decode_error {
            Some(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e.clone())),
            None => self.decoded.read(buf),
        };
        result.map_err(|e| {
            if e.kind() == io::ErrorKind::Interrupted {
                return e; // retried by the caller, not a decoding failure
            }
            self.decode_error.get_or_insert_with(|| e.to_string());
            // A decoder error usually means a damaged blob; say which layer, since the
            // consumer (a tar reader) only knows it got a bad stream.
            let c = self.layer.compression.name();
            io::Error::new(
                e.kind(),
                format!(
                    "reading {} ({c}): {e}; the blob is damaged or not {c} — re-export the image",
                    self.layer.label
                ),
            )
        })
    }
}

impl LayerReader {
    /// The layer this reads.
    pub fn layer(&self) -> &Layer {
        &self.layer
    }

    /// Read whatever the consumer left (a tar reader stops at the end-of-archive marker,
    /// before the padding), then check the blob's size and digest and the uncompressed
    /// stream's diff_id. Only when this succeeds may what was read be kept.
    pub fn finish(mut self) -> Result<()> {
        let l = &self.layer;
        let mut over_limit = false;
        let decode_error = match self.decode_error.take() {
            Some(e) => Some(e),
            // Bounded: past the cap the layer is refused without decompressing the rest.
            None => match io::copy(&mut (&mut self.decoded).take(MAX_TRAILING_BYTES + 1), &mut io::sink()) {
                Ok(n) => {
                    over_limit = n > MAX_TRAILING_BYTES;
                    None
                }
                Err(e) => Some(e.to_string()),
            },
        };
        let Some(mut decoded) = self.decoded.into_inner() else {
            return Err(Error::Inconsistent(format!("the thread decompressing {} panicked", l.label)));
        };
        // Bytes after the compressed stream, or all of it when decoding failed part way.
        let raw = decoded.inner.raw();
        io::copy(raw, &mut io::sink()).ctx(|| format!("reading {} at {}", l.label, l.path.display()))?;

        // The blob itself first: if it is damaged, that explains any decode or diff_id error.
        let (raw_count, raw_digest) = (raw.count, raw.hasher.take().map(Digest::from_hasher));
        if raw_count != l.size {
            return Err(corrupt(
                &l.label,
                format!("blob is {raw_count} bytes but the manifest says {}", l.size),
            ));
        }
        if let Some(d) = raw_digest.filter(|d| *d != l.digest) {
            return Err(corrupt(&l.label, format!("digest mismatch (blob has {d})")));
        }
        if over_limit {
            return Err(Error::LimitExceeded {
                what: l.label.clone(),
                limit: format!("{} MiB of data after the end-of-archive marker", MAX_TRAILING_BYTES >> 20),
                why: "its tar stream goes on past its end; tar writers pad to a record at most (10 KiB for GNU tar), \
                      so the blob is a decompression bomb or was built wrong"
                    .to_string(),
            });
        }
        if let Some(e) = decode_error {
            return Err(Error::invalid(
                "OCI image",
                format!(
                    "{}: the blob matches its digest but is not valid {} ({e}); the image was built wrong, rebuild it",
                    l.label,
                    l.compression.name()
                ),
            ));
        }
        let diff_id = Digest::from_hasher(decoded.hasher.take().unwrap_or_default());
        if diff_id != l.diff_id {
            return Err(Error::invalid(
                "OCI image",
                format!(
                    "{}: uncompressed content has {diff_id} but the image config lists diff_id {}; the config does not belong to these layers, rebuild or re-export the image",
                    l.label, l.diff_id
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rootfs::oci::test_util::*;
    use crate::rootfs::oci::open;
    use serde_json::json;

    #[test]
    fn unknown_layer_media_type_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tar = fake_tar(1, 10);
        let l = put_blob(dir.path(), "application/vnd.oci.image.layer.v1.tar+bzip2", &tar);
        let config = json!({ "rootfs": { "type": "layers", "diff_ids": [sha(&tar)] } });
        let m = put_manifest(dir.path(), &config, vec![l], None);
        put_index(dir.path(), vec![m]);
        let e = err_text(open(dir.path(), None));
        assert!(
            e.contains("layer 1/1") && e.contains("'application/vnd.oci.image.layer.v1.tar+bzip2'"),
            "{e}"
        );
    }

    #[test]
    fn docker_and_nondistributable_types_accepted() {
        for (mt, c) in [
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", LayerCompression::Gzip),
            ("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", LayerCompression::Zstd),
            ("application/vnd.oci.image.layer.nondistributable.v1.tar", LayerCompression::None),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let tar = fake_tar(4, 900);
            let l = put_blob(dir.path(), mt, &compress(&tar, c).0);
            let config = json!({ "rootfs": { "type": "layers", "diff_ids": [sha(&tar)] } });
            put_index(dir.path(), vec![put_manifest(dir.path(), &config, vec![l], None)]);
            let img = open(dir.path(), None).unwrap();
            assert_eq!(img.layers[0].media_type, mt);
            assert_eq!(read_all(&img.layers[0]).unwrap(), tar);
        }
    }

    #[test]
    fn layers_round_trip() {
        for c in [LayerCompression::None, LayerCompression::Gzip, LayerCompression::Zstd] {
            let tar = fake_tar(7, 200_000);
            let (dir, _) = layout(vec![(tar.clone(), c)]);
            let img = open(dir.path(), None).unwrap();
            assert_eq!(read_all(&img.layers[0]).unwrap(), tar, "{c:?}");
        }
    }

    #[test]
    fn multi_member_gzip_and_multi_frame_zstd() {
        let tar = fake_tar(9, 50_000);
        let (a, b) = tar.split_at(20_000);
        let mut gz = compress(a, LayerCompression::Gzip).0;
        gz.extend(compress(b, LayerCompression::Gzip).0);
        let mut zs = compress(a, LayerCompression::Zstd).0;
        zs.extend(compress(b, LayerCompression::Zstd).0);
        for (blob, mt) in [
            (gz, "application/vnd.oci.image.layer.v1.tar+gzip"),
            (zs, "application/vnd.oci.image.layer.v1.tar+zstd"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let l = put_blob(dir.path(), mt, &blob);
            let config = json!({ "rootfs": { "type": "layers", "diff_ids": [sha(&tar)] } });
            put_index(dir.path(), vec![put_manifest(dir.path(), &config, vec![l], None)]);
            let img = open(dir.path(), None).unwrap();
            assert_eq!(read_all(&img.layers[0]).unwrap(), tar, "{mt}");
        }
    }

    #[test]
    fn finish_after_partial_read_verifies_everything() {
        for c in [LayerCompression::None, LayerCompression::Gzip, LayerCompression::Zstd] {
            let tar = fake_tar(5, 100_000);
            let (dir, m) = layout(vec![(tar.clone(), c)]);
            let img = open(dir.path(), None).unwrap();
            let mut r = img.layers[0].open().unwrap();
            let mut head = vec![0u8; 1000];
            r.read_exact(&mut head).unwrap();
            assert_eq!(head, tar[..1000]);
            r.finish().unwrap();

            // Damage the blob's last byte: a reader that stops early does not see it, finish does.
            let manifest: serde_json::Value =
                serde_json::from_slice(&std::fs::read(blob_file(dir.path(), &m)).unwrap()).unwrap();
            let path = blob_file(dir.path(), &manifest["layers"][0]);
            let mut blob = std::fs::read(&path).unwrap();
            *blob.last_mut().unwrap() ^= 0x55;
            std::fs::write(&path, &blob).unwrap();
            let mut r = img.layers[0].open().unwrap();
            // A compressed stream's checksum may already catch it here, or not.
            let _ = r.read_exact(&mut head);
            let e = err_text(r.finish());
            assert!(e.contains("digest mismatch") && e.contains(&sha(&blob)), "{c:?}: {e}");
        }
    }

    /// A blob its writer digested is not digested again, and a damaged one is still refused:
    /// by its decoder or its diff_id.
    #[test]
    fn open_digested_skips_the_blob_digest_but_not_the_diff_id() {
        for c in [LayerCompression::None, LayerCompression::Gzip, LayerCompression::Zstd] {
            let tar = fake_tar(4, 80_000);
            let (dir, m) = layout(vec![(tar.clone(), c)]);
            let img = open(dir.path(), None).unwrap();
            let mut r = img.layers[0].open_digested().unwrap();
            let mut all = Vec::new();
            r.read_to_end(&mut all).unwrap();
            assert_eq!(all, tar, "{c:?}");
            r.finish().unwrap();

            let manifest: serde_json::Value =
                serde_json::from_slice(&std::fs::read(blob_file(dir.path(), &m)).unwrap()).unwrap();
            let path = blob_file(dir.path(), &manifest["layers"][0]);
            let mut blob = std::fs::read(&path).unwrap();
            let mid = blob.len() / 2;
            blob[mid] ^= 0x55;
            std::fs::write(&path, &blob).unwrap();
            let mut r = img.layers[0].open_digested().unwrap();
            let read = r.read_to_end(&mut Vec::new());
            let e = read.err().map(|e| e.to_string()).unwrap_or_else(|| err_text(r.finish()));
            assert!(!e.contains("digest mismatch"), "{c:?}: the blob was digested again: {e}");
            assert!(!e.is_empty(), "{c:?}: a damaged blob was accepted");
        }
    }

    #[test]
    fn altered_layer_blob_fails_in_finish() {
        for c in [LayerCompression::None, LayerCompression::Gzip, LayerCompression::Zstd] {
            let tar = fake_tar(3, 30_000);
            let (dir, m) = layout(vec![(tar, c)]);
            let img = open(dir.path(), None).unwrap();
            let manifest: serde_json::Value =
                serde_json::from_slice(&std::fs::read(blob_file(dir.path(), &m)).unwrap()).unwrap();
            let path = blob_file(dir.path(), &manifest["layers"][0]);
            let mut blob = std::fs::read(&path).unwrap();
            let mid = blob.len() / 2;
            blob[mid] ^= 0xff;
            std::fs::write(&path, &blob).unwrap();
            // The consumer may or may not notice (a damaged gzip stream fails to decode); either
            // way finish names the real cause, the blob's digest.
            let mut r = img.layers[0].open().unwrap();
            let _ = r.read_to_end(&mut Vec::new());
            let e = err_text(r.finish());
            assert!(
                e.contains("layer 1/1") && e.contains("digest mismatch") && e.contains("re-export"),
                "{c:?}: {e}"
            );

            // A blob that grew is refused at open, by size.
            blob.push(0);
            std::fs::write(&path, &blob).unwrap();
            let e = err_text(open(dir.path(), None));
            assert!(e.contains("bytes but its descriptor says"), "{c:?}: {e}");
        }
    }

    #[test]
    fn wrong_diff_id_fails_in_finish() {
        for c in [LayerCompression::None, LayerCompression::Gzip, LayerCompression::Zstd] {
            let dir = tempfile::tempdir().unwrap();
            let tar = fake_tar(2, 4000);
            let (blob, mt) = compress(&tar, c);
            let l = put_blob(dir.path(), mt, &blob);
            let wrong = sha(b"another layer");
            let config = json!({ "rootfs": { "type": "layers", "diff_ids": [wrong] } });
            put_index(dir.path(), vec![put_manifest(dir.path(), &config, vec![l], None)]);
            let img = open(dir.path(), None).unwrap();
            let e = err_text(read_all(&img.layers[0]));
            assert!(e.contains("diff_id") && e.contains(&wrong) && e.contains(&sha(&tar)), "{c:?}: {e}");
        }
    }

    #[test]
    fn valid_blob_with_bad_compression_is_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let not_gzip = fake_tar(1, 100);
        let l = put_blob(dir.path(), "application/vnd.oci.image.layer.v1.tar+gzip", &not_gzip);
        let config = json!({ "rootfs": { "type": "layers", "diff_ids": [sha(&not_gzip)] } });
        put_index(dir.path(), vec![put_manifest(dir.path(), &config, vec![l], None)]);
        let img = open(dir.path(), None).unwrap();
        let mut r = img.layers[0].open().unwrap();
        let e = r.read_to_end(&mut Vec::new()).expect_err("not gzip");
        assert!(e.to_string().contains("layer 1/1") && e.to_string().contains("gzip"), "{e}");
        let e = err_text(r.finish());
        assert!(e.contains("not valid gzip"), "{e}");
    }

    #[test]
    fn layer_reader_is_send() {
        fn send<T: Send>() {}
        send::<LayerReader>();
        send::<Image>();
    }

    /// Reads the layer as a tar reader does (up to the end-of-archive marker), then finishes.
    fn read_tar_then_finish(layer: &Layer, tar_len: usize) -> Result<()> {
        let mut r = layer.open()?;
        let mut head = vec![0u8; tar_len];
        r.read_exact(&mut head).ctx(|| "reading".into())?;
        r.finish()
    }

    #[test]
    fn data_after_the_end_of_archive_is_capped() {
        let tar = fake_tar(6, 5000);
        for c in [LayerCompression::Gzip, LayerCompression::Zstd] {
            // What the tar stream holds past its end: some padding is normal, a bomb is not.
            let mut padded = tar.clone();
            padded.extend(vec![0u8; 1 << 20]);
            let (dir, _) = layout(vec![(padded, c)]);
            read_tar_then_finish(&open(dir.path(), None).unwrap().layers[0], tar.len()).unwrap();
            let mut bomb = tar.clone();
            bomb.extend(vec![0u8; MAX_TRAILING_BYTES as usize + (1 << 20)]);
            let (dir, _) = layout(vec![(bomb, c)]);
            let e = err_text(read_tar_then_finish(&open(dir.path(), None).unwrap().layers[0], tar.len()));
            assert!(e.contains("end-of-archive") && e.contains("limit") && e.contains("MiB") && e.contains("refused"), "{c:?}: {e}");
        }
    }
}
