//! Images from and to OCI distribution (v2) registries: `rcx-dm image pull` and `image push`.
//!
//! A pull resolves the reference to a manifest (indexes followed for the platform by the same
//! code `image import` uses, `oci::resolve`), then hands the image to `image::install`, which
//! shares the layers already in the pool (by full chain id) and builds the others in order as
//! read-only layer volumes. The blobs of the layers to build are fetched meanwhile, several at
//! once, into the pool's download area (`download`), each verified as it arrives.
//!
//! The registry protocol (token dance, basic auth, manifests, blobs, uploads) is `oci-client`'s;
//! it runs on a tokio runtime made only for the command (`client`). Credentials come from a
//! docker `config.json` or podman auth file (`auth`).

mod auth;
mod client;
mod download;
pub(crate) mod push;

mod reference;

use std::sync::Arc;

use serde::Serialize;

pub use auth::default_auth_file;
pub use client::Connect;
pub use download::CONCURRENT_DOWNLOADS;
pub use push::{push, PushReport};

pub use reference::{is_local, parse as parse_reference};

use super::fs::Fs;
use super::image::{self, ImageRecord};
use super::oci::{self, Platform};
use super::populate::Progress;
use crate::error::{Error, Result};
use crate::pool::Pool;

/// What a layer of a pull is doing, for a progress display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerState {
    /// Its volume is in the pool already: nothing is fetched.
    Reused,
    /// Bytes of its blob received so far.
    Downloading(u64),
    /// Its blob is complete and verified.
    Downloaded,
    /// Its layer volume is being built.
    Applying,
    /// Its layer volume is built.
    Applied,
}

/// One layer's progress.
#[derive(Debug, Clone)]
pub struct PullEvent {
    /// The layer's index, bottom first.
    pub index: usize,
    /// Layers in the image (0 when not known at the call).
    pub total: usize,
    /// The blob's short digest.
    pub digest: String,
    /// The blob's size.
    pub size: u64,
    /// What it is doing.
    pub state: LayerState,
}

/// Called from the downloading threads too.
pub type Events = Arc<dyn Fn(PullEvent) + Send + Sync>;

/// Options of `image pull`.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The image's name in the pool; None: derived from the reference ([`default_name`]).
    pub name: Option<String>,
    /// The filesystem of the layer volumes.
    pub fs: Fs,
    /// The size of every layer volume.
    pub size_bytes: u64,
    /// Which platform of a multi-platform image; None: linux on this host's architecture.
    pub platform: Option<Platform>,
    /// How to reach the registry.
    pub connect: Connect,
}

/// What a pull did.
#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    /// The reference as given.
    pub reference: String,
    /// The image record made.
    pub image: ImageRecord,
    /// The platform pulled.
    pub platform: String,
    /// Digests of the layer blobs downloaded by this pull.
    pub layers_fetched: Vec<String>,
    /// Digests of the layers whose volumes were in the pool already (nothing fetched).
    pub layers_reused: Vec<String>,
    /// Digests of the layers built from blobs an interrupted pull had downloaded.
    pub layers_resumed: Vec<String>,
    /// Bytes downloaded.
    pub bytes_fetched: u64,
}

/// The image name a reference gets without `--name`: the repository's last part and the tag
/// (`127.0.0.1:5000/app/web:1.2` -> `web-1.2`), or the digest's first 12 hex digits.
pub fn default_name(reference: &str) -> Result<String> {
    let r = parse_reference(reference)?;
    let last = r.repository().rsplit('/').next().unwrap_or(r.repository());
    let suffix = match (r.tag(), r.digest()) {
        (Some(t), _) => t.to_string(),
        (None, Some(d)) => d.split_once(':').map_or(d, |x| x.1).chars().take(12).collect(),
        (None, None) => "latest".into(),
    };
    let mut name: String = format!("{last}-{suffix}").chars().take(48).collect();
    // An image name may not be all digits; repository and tag characters are all allowed.
    if name.chars().all(|c| c.is_ascii_digit()) {
        name.insert(0, 'i');
    }
    image::validate_image_name(&name)?;
    Ok(name)
}

/// `rcx-dm image pull`: see the module comment. On failure nothing of the pull is kept (its
/// layer volumes and blobs are removed again); a killed pull leaves complete layer volumes and
/// complete blobs, which the next pull of the image uses.
pub fn pull(pool: &Pool, reference: &str, opts: &PullOptions, events: Events, progress: Progress) -> Result<PullReport> {
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => default_name(reference)?,
    };
    image::validate_image_name(&name)?;
    if image::find(pool, &name)?.is_some() {
        return Err(Error::Exists(format!("image '{name}' (remove it with `rcx-dm image rm {name}`, or give another --name)")));
    }
    let platform = opts.platform.clone().unwrap_or_else(Platform::host);
    let blob_dir = pool.dir().join("images").join("downloads");
    let t = std::time::Instant::now();
    let ms = |t: std::time::Instant| t.elapsed().as_millis() as u64;
    let remote = client::Remote::new(reference, &opts.connect, blob_dir, oci_client::RegistryOperation::Pull)?;
    let client_ms = ms(t);
    let (digest, bytes) = remote.top()?;
    let img = oci::resolve(&remote, digest, bytes, "", &platform, reference).map_err(|e| about(reference, e))?;
    // Where a pull's time goes, with the layers' own lines: RUST_LOG=rcx_dm=info.
    tracing::info!(client_ms, resolve_ms = ms(t) - client_ms, layers = img.layers.len(), "pull: image resolved");
    if img.layers.is_empty() {
        return Err(Error::Registry { reference: reference.into(), why: "the image has no layers".into() });
    }
    // A single manifest has no index to pick from: its config says which platform it is for.
    let (os, arch) = (img.os.as_str(), img.architecture.as_str());
    if !os.is_empty() && !arch.is_empty() && (os != platform.os || arch != platform.architecture) {
        return Err(Error::Registry {
            reference: reference.into(),
            why: format!("the image is for {os}/{arch} only, not {platform}; give --platform {os}/{arch} to pull it anyway"),
        });
    }
    let mut downloads = download::Downloads::new(&remote, events);
    let (rec, built) = image::install(pool, &img, &name, opts.fs, opts.size_bytes, &mut downloads, progress).map_err(|e| about(reference, e))?;
    tracing::info!(total_ms = ms(t), "pull: image installed");
    let fetched: Vec<usize> = downloads.fetched.clone();
    let bytes_fetched = downloads.bytes_fetched.load(std::sync::atomic::Ordering::Relaxed);
    drop(downloads);
    let digest_of = |i: &usize| img.layers[*i].digest.to_string();
    Ok(PullReport {
        reference: reference.to_string(),
        platform: platform.to_string(),
        layers_fetched: fetched.iter().map(digest_of).collect(),
        layers_reused: (0..img.layers.len()).filter(|i| !built.contains(i)).map(|i| digest_of(&i)).collect(),
        layers_resumed: built.iter().filter(|i| !fetched.contains(i)).map(digest_of).collect(),
        bytes_fetched,
        image: rec,
    })
}

/// An error of the image's content, said about the reference (registry errors name it already).
fn about(reference: &str, e: Error) -> Error {
    match e {
        e @ Error::Registry { .. } => e,
        Error::Invalid { what, why } => Error::Registry { reference: reference.into(), why: format!("invalid {what}: {why}") },
        Error::LimitExceeded { what, limit, why } => {
            Error::LimitExceeded { what: if what.contains(reference) { what } else { format!("{reference}: {what}") }, limit, why }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_come_from_the_reference() {
        assert_eq!(default_name("127.0.0.1:5000/app/web:1.2").unwrap(), "web-1.2");
        assert_eq!(default_name("busybox").unwrap(), "busybox-latest");
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(default_name(&format!("localhost:5000/x@{d}")).unwrap(), "x-abababababab");
        assert!(default_name("NOPE!").is_err());
    }
}
