//! OCI image layouts (image-spec v1 `image-layout.md`): `oci-layout`, `index.json`, manifests,
//! configs and layer blobs under `blobs/sha256/`.
//!
//! Everything read here is untrusted: a digest is checked to be exactly 64 lowercase hex digits
//! before it names a file, manifest and config blobs are verified (size, then sha256) before
//! they are parsed, and a layer is verified as it is streamed ([`LayerReader::finish`]), both
//! its compressed bytes against the manifest's digest and its uncompressed tar against the
//! config's diff_id.
//!
//! The layout directory is untrusted too: `oci-layout`, `index.json` and blobs are opened only
//! as regular files ([`open_regular`]: no FIFO that would block the import forever, no device,
//! no symlink out of the layout), an image has at most [`MAX_LAYERS`] layers, and a layer's
//! tar stream may run on past its end-of-archive marker by at most [`MAX_TRAILING_BYTES`].

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, IoContext, Result};

/// Layout files, manifests and configs are small (image-spec suggests 4 MiB for manifests);
/// the cap keeps a crafted layout from making us read a huge file into memory.
const MAX_JSON_BYTES: u64 = 32 << 20;

/// Index -> index -> ... -> manifest: real images use at most two levels; the cap stops a cycle.
const MAX_INDEX_DEPTH: usize = 8;

/// Layers of one image. Docker's overlay2 driver refuses images deeper than 128 layers and the
/// kernel's overlayfs stacks at most 500; every layer here is a thin snapshot volume built with
/// its own mount, so an unchecked manifest could make thousands of them.
pub const MAX_LAYERS: usize = 256;

/// Decompressed bytes a layer may hold after its tar stream's end-of-archive marker. Tar
/// writers pad to a whole record at most (GNU tar's default is 10 KiB, `-b 2048` 1 MiB; Go's
/// archive/tar writes none), and the rest must be read only to check the diff_id: without a
/// cap a small zstd blob could expand to terabytes of zeros, read while `images.lock` is held.
pub const MAX_TRAILING_BYTES: u64 = 16 << 20;

pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_TYPE_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The annotation `index.json` uses for an image's tag.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd and `docker save` also record the full image name here.
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

// ------------------------------------------------------------------------------------------
// Digests

/// A content digest, `sha256:<64 lowercase hex>`; the only algorithm OCI layouts use in practice.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Parse `sha256:<hex>`. The hex must be exactly 64 lowercase digits, which also keeps a
    /// crafted digest from naming a path outside `blobs/sha256/`.
    pub fn parse(s: &str) -> Result<Digest> {
        let Some((alg, hex)) = s.split_once(':') else {
            return Err(Error::invalid(
                "digest",
                format!("'{}' has no algorithm prefix; expected sha256:<64 hex digits>", clip(s)),
            ));
        };
        if alg != "sha256" {
            return Err(Error::invalid(
                "digest",
                format!(
                    "'{}' uses algorithm '{}'; only sha256 is supported, re-export the image with sha256 digests",
                    clip(s),
                    clip(alg)
                ),
            ));
        }
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(Error::invalid(
                "digest",
                format!("'{}' is not sha256: followed by exactly 64 lowercase hex digits", clip(s)),
            ));
        }
        Ok(Digest { hex: hex.to_owned() })
    }

    /// The sha256 digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    fn from_hasher(h: Sha256) -> Digest {
        Digest { hex: to_hex(&h.finalize()) }
    }

    /// The 64 hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The algorithm; always "sha256".
    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }

    /// `sha256:` and the first 12 hex digits, for messages that name many digests.
    pub fn short(&self) -> String {
        format!("sha256:{}", &self.hex[..12])
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Untrusted strings echoed in messages are cut short so a crafted file cannot flood them.
fn clip(s: &str) -> String {
    const MAX: usize = 100;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        format!("{}...", s.chars().take(MAX).collect::<String>())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest(sha256:{})", self.hex)
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Digest> {
        Digest::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Chain ids (image-spec `config.md`): ChainID(L0) = DiffID(L0),
/// ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)). A chain id names a layer together
/// with everything under it, so equal chain ids are equal filesystems and can be shared.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(prev) => Digest::of(format!("{prev} {diff_id}").as_bytes()),
        };
        out.push(next);
    }
    out
}

// ------------------------------------------------------------------------------------------
// The layout's JSON documents (only the fields used here; unknown fields are ignored)

#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    // Kept as a string so a bad digest is reported with where it was found.
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize, Debug, Clone)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

impl Descriptor {
    fn ref_name(&self) -> Option<&str> {
        self.annotations.get(ANNOTATION_REF_NAME).map(String::as_str)
    }

    fn is_index(&self) -> bool {
        self.media_type == MEDIA_TYPE_INDEX || self.media_type == MEDIA_TYPE_DOCKER_LIST
    }

    fn is_manifest(&self) -> bool {
        self.media_type == MEDIA_TYPE_MANIFEST || self.media_type == MEDIA_TYPE_DOCKER_MANIFEST
    }

    fn matches_ref(&self, reference: &str) -> bool {
        self.ref_name() == Some(reference)
            || self.annotations.get(ANNOTATION_CONTAINERD_NAME).map(String::as_str) == Some(reference)
    }

    /// How the descriptor is named in a list of choices: ref name, platform, digest.
    fn describe(&self) -> String {
        let mut s = match self.ref_name() {
            Some(r) => format!("'{}'", clip(r)),
            None => "(no ref name)".to_owned(),
        };
        if let Some(p) = &self.platform {
            s.push_str(&format!(" {}/{}", clip(&p.os), clip(&p.architecture)));
            if let Some(v) = &p.variant {
                s.push_str(&format!("/{}", clip(v)));
            }
        }
        s.push_str(&format!(" {}", clip(&self.digest)));
        s
    }
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct IndexDoc {
    schema_version: u32,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    #[serde(default)]
    media_type: Option<String>,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize, Debug)]
struct ConfigDoc {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<ImageConfig>,
    rootfs: RootFs,
}

#[derive(Deserialize, Debug)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// The part of an image config's `config` object a runtime needs. Docker writes `null` for
/// unset fields, which serde reads as `None`.
#[derive(Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

// ------------------------------------------------------------------------------------------
// Images and layers

/// An image read from a layout: verified manifest and config, and its layers (not yet read).
#[derive(Debug, Clone)]
pub struct Image {
    pub layout: PathBuf,
    /// The `org.opencontainers.image.ref.name` of the descriptor picked in `index.json`.
    pub ref_name: Option<String>,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub architecture: String,
    pub os: String,
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
enum LayerCompression {
    None,
    Gzip,
    Zstd,
}

impl LayerCompression {
    fn from_media_type(mt: &str) -> Option<LayerCompression> {
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
    pub media_type: String,
    /// Size of the blob as stored.
    pub size: u64,
    /// Digest of the uncompressed tar, from the config's `rootfs.diff_ids`.
    pub diff_id: Digest,
    /// This layer and all below it; see [`chain_ids`].
    pub chain_id: Digest,
    path: PathBuf,
    /// The layout directory the blob is in (it is opened beneath it, see [`open_regular`]).
    layout: PathBuf,
    compression: LayerCompression,
    /// "layer 2/5 (sha256:..) of image /x:tag", for messages.
    label: String,
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
        let file = Layout { dir: self.layout.clone() }.open_blob(&self.digest, self.size, &self.label)?;
        let raw = Hashing::new(file);
        let decoder = match self.compression {
            // Tar readers read 512 bytes at a time; the decoders buffer for themselves.
            LayerCompression::None => Decoder::Plain(BufReader::with_capacity(1 << 16, raw)),
            LayerCompression::Gzip => Decoder::Gzip(flate2::read::MultiGzDecoder::new(raw)),
            LayerCompression::Zstd => Decoder::Zstd(
                zstd::stream::read::Decoder::new(raw)
                    .ctx(|| format!("starting zstd decompression of {}", self.label))?,
            ),
        };
        Ok(LayerReader { decoded: Hashing::new(decoder), layer: self.clone(), decode_error: None })
    }
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing { inner, hasher: Sha256::new(), count: 0 }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

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
    decoded: Hashing<Decoder>,
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
        // Bytes after the compressed stream, or all of it when decoding failed part way.
        let raw = self.decoded.inner.raw();
        io::copy(raw, &mut io::sink()).ctx(|| format!("reading {} at {}", l.label, l.path.display()))?;

        // The blob itself first: if it is damaged, that explains any decode or diff_id error.
        let (raw_count, raw_digest) = (raw.count, Digest::from_hasher(std::mem::take(&mut raw.hasher)));
        if raw_count != l.size {
            return Err(corrupt(
                &l.label,
                format!("blob is {raw_count} bytes but the manifest says {}", l.size),
            ));
        }
        if raw_digest != l.digest {
            return Err(corrupt(&l.label, format!("digest mismatch (blob has {raw_digest})")));
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
        let diff_id = Digest::from_hasher(std::mem::take(&mut self.decoded.hasher));
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

fn corrupt(what: &str, why: String) -> Error {
    Error::invalid("OCI image", format!("{what}: {why}; the image layout is corrupt, re-export it"))
}

// ------------------------------------------------------------------------------------------
// Opening a layout

/// The architecture the host runs, in OCI's names, for picking a manifest from a multi-platform
/// index.
fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// Read the image in the OCI layout at `layout_dir`. `reference` picks a manifest by its
/// `org.opencontainers.image.ref.name` (or `io.containerd.image.name`) annotation; without it
/// the layout's only image is taken, or among several the one for linux and this host's
/// architecture.
pub fn open(layout_dir: &Path, reference: Option<&str>) -> Result<Image> {
    open_for(layout_dir, reference, host_architecture())
}

fn open_for(layout_dir: &Path, reference: Option<&str>, arch: &str) -> Result<Image> {
    let l = Layout { dir: layout_dir.to_owned() };
    l.check_version()?;
    let index_path = layout_dir.join("index.json");
    let index_bytes = l.read_json_file("index.json", "the layout's index.json")?;
    let index: IndexDoc = serde_json::from_slice(&index_bytes).map_err(|e| {
        Error::invalid("OCI image layout", format!("{}: {e}; re-export the image", index_path.display()))
    })?;
    check_schema(index.schema_version.into(), &index_path.display().to_string())?;

    let top = select(&index.manifests, reference, arch, &format!("{}", index_path.display()))?;
    let ref_name = top.ref_name().map(str::to_owned);
    let image_name = match reference.or(ref_name.as_deref()) {
        Some(r) => format!("{}:{}", layout_dir.display(), clip(r)),
        None => layout_dir.display().to_string(),
    };

    // Follow nested indexes down to a manifest; below the top level the reference has done its
    // job and only the platform decides.
    let mut desc = top;
    let mut depth = 0;
    let (manifest_digest, manifest) = loop {
        let what = format!("{} {} of image {image_name}", kind_of(&desc), clip(&desc.digest));
        let digest = Digest::parse(&desc.digest).map_err(|e| reword(e, &what))?;
        let bytes = l.read_json_blob(&digest, desc.size, &what)?;
        // The blob's own mediaType wins over the descriptor's when they disagree; Docker
        // manifests may omit it from the descriptor.
        let value: serde_json::Value = parse_json(&bytes, &what)?;
        // Before the typed parse, so a Docker schema 1 manifest gets this message, not a
        // missing-field one.
        check_schema(value.get("schemaVersion").and_then(|v| v.as_u64()).unwrap_or(0), &what)?;
        let media_type = value.get("mediaType").and_then(|m| m.as_str()).unwrap_or(&desc.media_type);
        let is_index = media_type == MEDIA_TYPE_INDEX
            || media_type == MEDIA_TYPE_DOCKER_LIST
            || (media_type.is_empty() && value.get("manifests").is_some());
        if !is_index {
            break (digest, parse_json::<ManifestDoc>(&bytes, &what)?);
        }
        depth += 1;
        if depth > MAX_INDEX_DEPTH {
            return Err(Error::invalid(
                "OCI image",
                format!("{what}: indexes nest more than {MAX_INDEX_DEPTH} deep (a cycle?); the image layout is corrupt, re-export it"),
            ));
        }
        let nested: IndexDoc = parse_json(&bytes, &what)?;
        desc = select(&nested.manifests, None, arch, &what)?;
    };
    let what = format!("manifest {manifest_digest} of image {image_name}");
    if manifest.layers.len() > MAX_LAYERS {
        return Err(Error::LimitExceeded {
            what,
            limit: format!("{MAX_LAYERS} layers"),
            why: format!(
                "it lists {} layers; Docker's overlay2 stops at 128, and each layer here is a volume of its own: squash the image",
                manifest.layers.len()
            ),
        });
    }
    if let Some(mt) = &manifest.media_type {
        if mt != MEDIA_TYPE_MANIFEST && mt != MEDIA_TYPE_DOCKER_MANIFEST {
            return Err(Error::invalid(
                "OCI image",
                format!("{what}: media type '{}' is not an image manifest; re-export the image", clip(mt)),
            ));
        }
    }

    // Config
    let config_what = format!("config {} of image {image_name}", clip(&manifest.config.digest));
    let config_digest = Digest::parse(&manifest.config.digest).map_err(|e| reword(e, &config_what))?;
    let config_bytes = l.read_json_blob(&config_digest, manifest.config.size, &config_what)?;
    let raw_config: serde_json::Value = parse_json(&config_bytes, &config_what)?;
    let config: ConfigDoc = parse_json(&config_bytes, &config_what)?;
    if config.rootfs.kind != "layers" {
        return Err(Error::invalid(
            "OCI image",
            format!(
                "{config_what}: rootfs.type is '{}', not 'layers'; the config is not an OCI image config, re-export the image",
                clip(&config.rootfs.kind)
            ),
        ));
    }
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(Error::invalid(
            "OCI image",
            format!(
                "{what} lists {} layers but its config lists {} diff_ids; the image layout is corrupt, re-export it",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            ),
        ));
    }
    let diff_ids = config
        .rootfs
        .diff_ids
        .iter()
        .enumerate()
        .map(|(i, d)| Digest::parse(d).map_err(|e| reword(e, &format!("{config_what}, diff_id {}", i + 1))))
        .collect::<Result<Vec<_>>>()?;
    let chains = chain_ids(&diff_ids);

    // Layers: refuse unknown types and missing blobs now, before anything is written anywhere.
    let n = manifest.layers.len();
    let mut layers = Vec::with_capacity(n);
    for (i, ((d, diff_id), chain_id)) in manifest.layers.iter().zip(diff_ids).zip(chains).enumerate() {
        let label = format!("layer {}/{n} ({}) of image {image_name}", i + 1, clip(&d.digest));
        let digest = Digest::parse(&d.digest).map_err(|e| reword(e, &label))?;
        let compression = LayerCompression::from_media_type(&d.media_type).ok_or_else(|| {
            Error::invalid(
                "OCI image",
                format!(
                    "{label}: media type '{}' is not a layer type rcx-dm reads (OCI tar, tar+gzip, tar+zstd, Docker tar.gzip); convert the image, e.g. with `skopeo copy --format oci`",
                    clip(&d.media_type)
                ),
            )
        })?;
        let path = l.blob_path(&digest);
        l.open_blob(&digest, d.size, &label)?;
        layers.push(Layer {
            digest,
            media_type: d.media_type.clone(),
            size: d.size,
            diff_id,
            chain_id,
            path,
            layout: layout_dir.to_owned(),
            compression,
            label,
        });
    }

    Ok(Image {
        layout: layout_dir.to_owned(),
        ref_name,
        manifest_digest,
        config_digest,
        architecture: config.architecture,
        os: config.os,
        config: config.config.unwrap_or_default(),
        raw_config,
        layers,
    })
}

struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn check_version(&self) -> Result<()> {
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

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        // Safe to join: Digest holds only 64 hex digits.
        self.dir.join("blobs").join(digest.algorithm()).join(digest.hex())
    }

    /// The blob, opened as a regular file (see [`open_regular`]: a FIFO or device would hang or
    /// never end) of the size its descriptor gives.
    fn open_blob(&self, digest: &Digest, size: u64, what: &str) -> Result<File> {
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
    fn read_json_blob(&self, digest: &Digest, size: u64, what: &str) -> Result<Vec<u8>> {
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
    fn read_json_file(&self, rel: &str, what: &str) -> Result<Vec<u8>> {
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

fn read_json(file: File, path: &Path, what: &str) -> Result<Vec<u8>> {
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
fn open_regular(dir: &Path, rel: &Path, what: &str) -> Result<Option<(File, u64)>> {
    use nix::errno::Errno;
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use nix::sys::stat::{fstat, Mode};
    let full = dir.join(rel);
    let ctx = || format!("opening {what} at {}", full.display());
    use super::tree::retry;
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

fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::invalid(
            "OCI image",
            format!(
                "{what}: {e}; the blob matches its digest, so the image itself is malformed — rebuild it"
            ),
        )
    })
}

fn check_schema(v: u64, what: &str) -> Result<()> {
    if v != 2 {
        return Err(Error::invalid(
            "OCI image",
            format!(
                "{what}: schemaVersion is {v}, rcx-dm reads only 2; re-export the image with a current tool"
            ),
        ));
    }
    Ok(())
}

fn kind_of(d: &Descriptor) -> &'static str {
    if d.is_index() {
        "index"
    } else {
        "manifest"
    }
}

/// A digest error, said about where the digest was found.
fn reword(e: Error, what: &str) -> Error {
    match e {
        Error::Invalid { why, .. } => {
            Error::invalid("OCI image", format!("{what}: {why}; the image layout is corrupt, re-export it"))
        }
        other => other,
    }
}

/// Pick one descriptor from an index's list. Entries that are neither manifests nor indexes
/// (attestations, signatures, other artifacts) are never picked.
fn select(all: &[Descriptor], reference: Option<&str>, arch: &str, what: &str) -> Result<Descriptor> {
    let images: Vec<&Descriptor> = all.iter().filter(|d| d.is_manifest() || d.is_index()).collect();
    let listing = |ds: &[&Descriptor]| ds.iter().map(|d| d.describe()).collect::<Vec<_>>().join(", ");
    if images.is_empty() {
        return Err(Error::invalid(
            "OCI image",
            format!("{what} lists no image manifests; the layout holds no image, export one into it"),
        ));
    }
    let candidates: Vec<&Descriptor> = match reference {
        Some(r) => {
            let c: Vec<&Descriptor> = images.iter().copied().filter(|d| d.matches_ref(r)).collect();
            if c.is_empty() {
                return Err(Error::invalid(
                    "OCI image",
                    format!("{what} has no image named '{}'; it has: {}", clip(r), listing(&images)),
                ));
            }
            c
        }
        None => images.clone(),
    };
    if let [only] = candidates[..] {
        return Ok(only.clone());
    }
    let on_host: Vec<&Descriptor> = candidates
        .iter()
        .copied()
        .filter(|d| d.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch))
        .collect();
    match on_host[..] {
        [only] => Ok(only.clone()),
        [] => Err(Error::invalid(
            "OCI image",
            format!(
                "{what} has {} images and none for linux/{arch}; name one by its ref name: {}",
                candidates.len(),
                listing(&candidates)
            ),
        )),
        _ => Err(Error::invalid(
            "OCI image",
            format!(
                "{what} has {} images for linux/{arch}; name one by its ref name: {}",
                on_host.len(),
                listing(&on_host)
            ),
        )),
    }
}

// ------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Write;

    fn sha(bytes: &[u8]) -> String {
        format!("sha256:{}", to_hex(&Sha256::digest(bytes)))
    }

    /// Store `bytes` as a blob; its descriptor (as JSON, for tests to tamper with).
    fn put_blob(root: &Path, media_type: &str, bytes: &[u8]) -> serde_json::Value {
        let d = sha(bytes);
        let dir = root.join("blobs/sha256");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(&d[7..]), bytes).unwrap();
        json!({ "mediaType": media_type, "digest": d, "size": bytes.len() })
    }

    fn blob_file(root: &Path, desc: &serde_json::Value) -> PathBuf {
        root.join("blobs/sha256").join(&desc["digest"].as_str().unwrap()[7..])
    }

    fn compress(tar: &[u8], c: LayerCompression) -> (Vec<u8>, &'static str) {
        match c {
            LayerCompression::None => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
            LayerCompression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(tar).unwrap();
                (e.finish().unwrap(), "application/vnd.oci.image.layer.v1.tar+gzip")
            }
            LayerCompression::Zstd => {
                (zstd::encode_all(tar, 3).unwrap(), "application/vnd.oci.image.layer.v1.tar+zstd")
            }
        }
    }

    /// Something shaped like a tar: content, then the two zero blocks of the end marker and
    /// more zero padding, which a tar reader leaves unread.
    fn fake_tar(seed: u8, len: usize) -> Vec<u8> {
        let mut v: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        v.extend(std::iter::repeat_n(0u8, 10240 - len % 512));
        v
    }

    struct ImageSpec {
        layers: Vec<(Vec<u8>, LayerCompression)>,
        platform: Option<(&'static str, &'static str)>,
    }

    /// Write layers, config and manifest of one image; the manifest's descriptor.
    fn put_image(root: &Path, spec: &ImageSpec) -> serde_json::Value {
        let mut layer_descs = Vec::new();
        let mut diff_ids = Vec::new();
        for (tar, c) in &spec.layers {
            let (blob, mt) = compress(tar, *c);
            layer_descs.push(put_blob(root, mt, &blob));
            diff_ids.push(sha(tar));
        }
        let config = json!({
            "architecture": spec.platform.map(|p| p.1).unwrap_or("amd64"),
            "os": "linux",
            "config": { "Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "Entrypoint": null, "WorkingDir": "/w", "User": "1:1" },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        });
        put_manifest(root, &config, layer_descs, spec.platform)
    }

    fn put_manifest(
        root: &Path,
        config: &serde_json::Value,
        layers: Vec<serde_json::Value>,
        platform: Option<(&str, &str)>,
    ) -> serde_json::Value {
        let config_desc =
            put_blob(root, "application/vnd.oci.image.config.v1+json", &serde_json::to_vec(config).unwrap());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": config_desc,
            "layers": layers,
        });
        let mut d = put_blob(root, MEDIA_TYPE_MANIFEST, &serde_json::to_vec(&manifest).unwrap());
        if let Some((os, arch)) = platform {
            d["platform"] = json!({ "os": os, "architecture": arch });
        }
        d
    }

    fn put_index(root: &Path, manifests: Vec<serde_json::Value>) {
        std::fs::write(root.join("oci-layout"), br#"{"imageLayoutVersion": "1.0.0"}"#).unwrap();
        let index = json!({ "schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": manifests });
        std::fs::write(root.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }

    fn named(mut d: serde_json::Value, name: &str) -> serde_json::Value {
        d["annotations"] = json!({ ANNOTATION_REF_NAME: name });
        d
    }

    fn one_layer() -> ImageSpec {
        ImageSpec { layers: vec![(fake_tar(1, 3000), LayerCompression::Gzip)], platform: None }
    }

    /// A layout with one image of the given layers; (dir, manifest descriptor).
    fn layout(layers: Vec<(Vec<u8>, LayerCompression)>) -> (tempfile::TempDir, serde_json::Value) {
        let dir = tempfile::tempdir().unwrap();
        let m = put_image(dir.path(), &ImageSpec { layers, platform: None });
        put_index(dir.path(), vec![named(m.clone(), "latest")]);
        (dir, m)
    }

    fn err_text<T: fmt::Debug>(r: Result<T>) -> String {
        r.expect_err("expected an error").to_string()
    }

    fn read_all(layer: &Layer) -> Result<Vec<u8>> {
        let mut r = layer.open()?;
        let mut out = Vec::new();
        r.read_to_end(&mut out).ctx(|| "reading".into())?;
        r.finish()?;
        Ok(out)
    }

    // ---- digests and chain ids

    #[test]
    fn digest_parse_and_display() {
        let s = format!("sha256:{}", "0123456789abcdef".repeat(4));
        let d = Digest::parse(&s).unwrap();
        assert_eq!(d.to_string(), s);
        assert_eq!(d.hex(), &s[7..]);
        assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{s}\""));
        let back: Digest = serde_json::from_str(&format!("\"{s}\"")).unwrap();
        assert_eq!(back, d);
        assert!(serde_json::from_str::<Digest>("\"sha256:xyz\"").is_err());
    }

    #[test]
    fn digest_refuses_bad_forms() {
        let upper = format!("sha256:{}", "A".repeat(64));
        let short = format!("sha256:{}", "a".repeat(63));
        let traversal = format!("sha256:../../../../etc/passwd{}", "a".repeat(37));
        let slash = format!("sha256:{}/{}", "a".repeat(31), "a".repeat(32));
        for bad in [upper.as_str(), short.as_str(), traversal.as_str(), slash.as_str(), "", "sha256:"] {
            let e = err_text(Digest::parse(bad));
            assert!(e.contains("64 lowercase hex") || e.contains("no algorithm"), "{bad}: {e}");
        }
        let e = err_text(Digest::parse(&format!("sha512:{}", "a".repeat(128))));
        assert!(e.contains("only sha256 is supported"), "{e}");
    }

    #[test]
    fn chain_ids_follow_the_definition() {
        let a = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        let b = Digest::parse(&format!("sha256:{}", "b".repeat(64))).unwrap();
        let c = Digest::of(b"c");
        let ids = chain_ids(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(ids[0], a);
        // The known vector: sha256 of the ASCII string "sha256:aaa... sha256:bbb...".
        let s = format!("sha256:{} sha256:{}", "a".repeat(64), "b".repeat(64));
        assert_eq!(ids[1].to_string(), sha(s.as_bytes()));
        assert_eq!(ids[2].to_string(), sha(format!("{} {}", ids[1], c).as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }

    // ---- picking the manifest

    #[test]
    fn opens_single_image() {
        let tars = [fake_tar(1, 700), fake_tar(2, 5000), fake_tar(3, 100)];
        let (dir, m) = layout(vec![
            (tars[0].clone(), LayerCompression::None),
            (tars[1].clone(), LayerCompression::Gzip),
            (tars[2].clone(), LayerCompression::Zstd),
        ]);
        let img = open(dir.path(), None).unwrap();
        assert_eq!(img.manifest_digest.to_string(), m["digest"].as_str().unwrap());
        assert_eq!(img.ref_name.as_deref(), Some("latest"));
        assert_eq!(img.layers.len(), 3);
        let diff_ids: Vec<Digest> = tars.iter().map(|t| Digest::of(t)).collect();
        let chains = chain_ids(&diff_ids);
        for (i, l) in img.layers.iter().enumerate() {
            assert_eq!(l.diff_id, diff_ids[i]);
            assert_eq!(l.chain_id, chains[i]);
        }
        assert_eq!(img.chain_id(), Some(&chains[2]));
        assert_eq!(img.config.cmd, Some(vec!["/bin/sh".to_owned()]));
        assert_eq!(img.config.env, Some(vec!["PATH=/bin".to_owned()]));
        assert_eq!(img.config.entrypoint, None);
        assert_eq!(img.config.working_dir.as_deref(), Some("/w"));
        assert_eq!(img.config.user.as_deref(), Some("1:1"));
        assert_eq!(img.raw_config["rootfs"]["type"], "layers");
        // With a reference too.
        assert_eq!(open(dir.path(), Some("latest")).unwrap().manifest_digest, img.manifest_digest);
    }

    #[test]
    fn picks_by_ref_name() {
        let dir = tempfile::tempdir().unwrap();
        let a = put_image(
            dir.path(),
            &ImageSpec { layers: vec![(fake_tar(1, 10), LayerCompression::None)], platform: None },
        );
        let b = put_image(
            dir.path(),
            &ImageSpec { layers: vec![(fake_tar(2, 10), LayerCompression::None)], platform: None },
        );
        put_index(dir.path(), vec![named(a.clone(), "one"), named(b.clone(), "two")]);
        let img = open(dir.path(), Some("two")).unwrap();
        assert_eq!(img.manifest_digest.to_string(), b["digest"].as_str().unwrap());
        assert_eq!(img.ref_name.as_deref(), Some("two"));
        let img = open(dir.path(), Some("one")).unwrap();
        assert_eq!(img.manifest_digest.to_string(), a["digest"].as_str().unwrap());

        let e = err_text(open(dir.path(), Some("three")));
        assert!(e.contains("no image named 'three'") && e.contains("'one'") && e.contains("'two'"), "{e}");
        // Two images, no platforms, no reference: ambiguous, and the message lists the names.
        let e = err_text(open_for(dir.path(), None, "amd64"));
        assert!(e.contains("none for linux/amd64") && e.contains("'one'") && e.contains("'two'"), "{e}");
    }

    #[test]
    fn picks_platform_among_several() {
        let dir = tempfile::tempdir().unwrap();
        let amd = put_image(
            dir.path(),
            &ImageSpec {
                layers: vec![(fake_tar(1, 10), LayerCompression::None)],
                platform: Some(("linux", "amd64")),
            },
        );
        let arm = put_image(
            dir.path(),
            &ImageSpec {
                layers: vec![(fake_tar(2, 10), LayerCompression::None)],
                platform: Some(("linux", "arm64")),
            },
        );
        put_index(dir.path(), vec![arm.clone(), amd.clone()]);
        let img = open_for(dir.path(), None, "amd64").unwrap();
        assert_eq!(img.manifest_digest.to_string(), amd["digest"].as_str().unwrap());
        assert_eq!(img.architecture, "amd64");
        let img = open_for(dir.path(), None, "arm64").unwrap();
        assert_eq!(img.manifest_digest.to_string(), arm["digest"].as_str().unwrap());
        let e = err_text(open_for(dir.path(), None, "riscv64"));
        assert!(e.contains("none for linux/riscv64") && e.contains("linux/amd64"), "{e}");

        // Two for the same platform: ambiguous.
        let amd2 = put_image(
            dir.path(),
            &ImageSpec {
                layers: vec![(fake_tar(3, 10), LayerCompression::None)],
                platform: Some(("linux", "amd64")),
            },
        );
        put_index(dir.path(), vec![named(amd, "a"), named(amd2, "b"), arm]);
        let e = err_text(open_for(dir.path(), None, "amd64"));
        assert!(e.contains("2 images for linux/amd64") && e.contains("'a'") && e.contains("'b'"), "{e}");
        assert!(open_for(dir.path(), Some("b"), "amd64").is_ok());
    }

    #[test]
    fn follows_nested_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let amd = put_image(
            dir.path(),
            &ImageSpec {
                layers: vec![(fake_tar(1, 10), LayerCompression::Gzip)],
                platform: Some(("linux", "amd64")),
            },
        );
        let arm = put_image(
            dir.path(),
            &ImageSpec {
                layers: vec![(fake_tar(2, 10), LayerCompression::Gzip)],
                platform: Some(("linux", "arm64")),
            },
        );
        // An attestation-like entry that is not an image must never be picked.
        let mut att = put_blob(dir.path(), MEDIA_TYPE_MANIFEST, b"{}");
        att["mediaType"] = json!("application/vnd.in-toto+json");
        let inner =
            json!({ "schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": [arm, amd, att] });
        let inner_desc = put_blob(dir.path(), MEDIA_TYPE_INDEX, &serde_json::to_vec(&inner).unwrap());
        // Two levels of nesting.
        let outer = json!({ "schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": [inner_desc] });
        let outer_desc = put_blob(dir.path(), MEDIA_TYPE_INDEX, &serde_json::to_vec(&outer).unwrap());
        put_index(dir.path(), vec![named(outer_desc, "multi")]);
        let img = open_for(dir.path(), Some("multi"), "arm64").unwrap();
        assert_eq!(img.manifest_digest.to_string(), arm["digest"].as_str().unwrap());
        assert_eq!(img.ref_name.as_deref(), Some("multi"));
        let img = open_for(dir.path(), None, "amd64").unwrap();
        assert_eq!(img.manifest_digest.to_string(), amd["digest"].as_str().unwrap());
        assert_eq!(read_all(&img.layers[0]).unwrap(), fake_tar(1, 10));
    }

    #[test]
    fn schema1_manifest_refused() {
        let dir = tempfile::tempdir().unwrap();
        let m = put_blob(
            dir.path(),
            MEDIA_TYPE_DOCKER_MANIFEST,
            br#"{"schemaVersion": 1, "name": "x", "fsLayers": []}"#,
        );
        put_index(dir.path(), vec![m]);
        let e = err_text(open(dir.path(), None));
        assert!(e.contains("schemaVersion is 1"), "{e}");
    }

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

    // ---- verification of manifest and config

    #[test]
    fn bad_manifest_digest_refused() {
        let (dir, m) = layout(one_layer().layers);
        // Same size, different content: only the digest can tell.
        let path = blob_file(dir.path(), &m);
        let mut bytes = std::fs::read(&path).unwrap();
        let i = bytes.iter().position(|&b| b == b'2').unwrap(); // schemaVersion's digit
        bytes[i] = b'3';
        std::fs::write(&path, &bytes).unwrap();
        let e = err_text(open(dir.path(), None));
        assert!(e.contains("manifest") && e.contains("digest mismatch") && e.contains(&sha(&bytes)), "{e}");
        assert!(e.contains("re-export"), "{e}");
    }

    #[test]
    fn bad_config_digest_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = json!({ "rootfs": { "type": "layers", "diff_ids": [] } });
        let m = put_manifest(dir.path(), &config, vec![], None);
        put_index(dir.path(), vec![m.clone()]);
        assert!(open(dir.path(), None).unwrap().layers.is_empty());
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(blob_file(dir.path(), &m)).unwrap()).unwrap();
        let cpath = blob_file(dir.path(), &manifest["config"]);
        let mut bytes = std::fs::read(&cpath).unwrap();
        bytes.reverse(); // same size, different digest
        std::fs::write(&cpath, &bytes).unwrap();
        let e = err_text(open(dir.path(), None));
        assert!(e.contains("config sha256:") && e.contains("digest mismatch"), "{e}");
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
    fn layer_count_and_rootfs_type_checked() {
        let dir = tempfile::tempdir().unwrap();
        let tar = fake_tar(1, 10);
        let l = put_blob(dir.path(), "application/vnd.oci.image.layer.v1.tar", &tar);
        let config = json!({ "rootfs": { "type": "layers", "diff_ids": [sha(&tar), sha(b"x")] } });
        put_index(dir.path(), vec![put_manifest(dir.path(), &config, vec![l.clone()], None)]);
        let e = err_text(open(dir.path(), None));
        assert!(e.contains("lists 1 layers but its config lists 2 diff_ids"), "{e}");

        let config = json!({ "rootfs": { "type": "snapshot", "diff_ids": [sha(&tar)] } });
        put_index(dir.path(), vec![put_manifest(dir.path(), &config, vec![l], None)]);
        let e = err_text(open(dir.path(), None));
        assert!(e.contains("rootfs.type is 'snapshot'"), "{e}");
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

    // ---- layer streams

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

    // ---- hostile layouts (issue 13, defect 8)

    #[test]
    fn layer_count_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let tar = fake_tar(1, 10);
        let l = put_blob(dir.path(), "application/vnd.oci.image.layer.v1.tar", &tar);
        let n = MAX_LAYERS + 1;
        let config = json!({ "rootfs": { "type": "layers", "diff_ids": vec![sha(&tar); n] } });
        put_index(dir.path(), vec![put_manifest(dir.path(), &config, vec![l.clone(); n], None)]);
        let e = err_text(open(dir.path(), None));
        assert!(e.contains(&format!("{n} layers")) && e.contains(&format!("limit of {MAX_LAYERS}")) && e.contains("refused"), "{e}");
        // At the limit: accepted.
        let config = json!({ "rootfs": { "type": "layers", "diff_ids": vec![sha(&tar); MAX_LAYERS] } });
        put_index(dir.path(), vec![put_manifest(dir.path(), &config, vec![l; MAX_LAYERS], None)]);
        assert_eq!(open(dir.path(), None).unwrap().layers.len(), MAX_LAYERS);
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
