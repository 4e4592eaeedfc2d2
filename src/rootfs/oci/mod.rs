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
//! as regular files (`layout::open_regular`: no FIFO that would block the import forever, no device,
//! no symlink out of the layout), an image has at most [`MAX_LAYERS`] layers, and a layer's
//! tar stream may run on past its end-of-archive marker by at most [`MAX_TRAILING_BYTES`].
//!
//! The module is split along the way an image is read: `digest` (content digests and chain
//! ids), `document` (the layout's JSON documents), `layout` (files opened beneath the
//! untrusted layout directory), `select` (which manifest of an index to take), `open` (the walk
//! from `index.json` to a verified [`Image`]) and `image` (the image, its layers and the
//! verifying [`LayerReader`]).

mod digest;
pub(crate) mod prefetch;
mod document;
mod image;
mod layout;
mod open;
mod select;
#[cfg(test)]
mod test_util;

pub use digest::{chain_ids, Digest};
pub use document::ImageConfig;
pub use image::{Image, Layer, LayerReader};
pub use open::open;
pub use select::Platform;
pub(crate) use open::{resolve, Documents};

use crate::error::Error;

/// Layout files, manifests and configs are small (image-spec suggests 4 MiB for manifests);
/// the cap keeps a crafted layout from making us read a huge file into memory.
pub(crate) const MAX_JSON_BYTES: u64 = 32 << 20;

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

/// An OCI image index (a list of manifests, or of further indexes).
const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// An OCI image manifest (one image: config and layers).
const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker's equivalents of the two, which `docker save` and older registries write.
const MEDIA_TYPE_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The annotation `index.json` uses for an image's tag.
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd and `docker save` also record the full image name here.
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Untrusted strings echoed in messages are cut short so a crafted file cannot flood them.
fn clip(s: &str) -> String {
    const MAX: usize = 100;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        format!("{}...", s.chars().take(MAX).collect::<String>())
    }
}

/// A verification failure of the layout's content, said about `what`.
fn corrupt(what: &str, why: String) -> Error {
    Error::invalid("OCI image", format!("{what}: {why}; the image layout is corrupt, re-export it"))
}
