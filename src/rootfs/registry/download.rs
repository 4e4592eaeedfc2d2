//! Layer blobs fetched into the pool's download area, `<pool>/images/downloads/blobs/sha256/`,
//! several at once (bounded), each checked as it arrives (never more than its descriptor's
//! size, then size and digest) and fsynced before it takes its final name; a blob is in
//! `<hex>.partial` until then. `image::install` builds the layers in order from these files
//! with the same reader `image import` uses, so the diff_id and the tar limits are checked
//! there, and removes each blob once its layer volume is built.
//!
//! A killed pull leaves complete blobs (reused by the next pull once their size is right; the
//! digest is checked again as the layer is built) and `.partial` files: the next pull of the
//! image asks the registry for the rest (an HTTP range from the kept length), digests the kept
//! part and goes on; if the whole then does not match, it downloads the blob once more from the
//! start. `.partial` files of blobs the pulling image does not need are removed (the images
//! lock is held by whoever pulls: no other pull is writing them).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio::task::JoinHandle;

use super::client::{descriptor, Remote};
use super::{Events, LayerState, PullEvent};
use crate::error::{Error, IoContext, Result};
use crate::rootfs::image::Blobs;
use crate::rootfs::oci::{self, Digest};

/// Blob downloads running at once: enough to keep a link busy while layers are applied, few
/// enough not to fill the pool's disk with blobs waiting their turn.
pub const CONCURRENT_DOWNLOADS: usize = 3;

pub(crate) struct Downloads<'a> {
    remote: &'a Remote,
    dir: PathBuf,
    events: Events,
    tasks: BTreeMap<usize, JoinHandle<Result<()>>>,
    /// Per planned layer: digest hex, size, label.
    layers: BTreeMap<usize, (Digest, u64, String)>,
    /// Layers whose blob was downloaded now (not found complete from an earlier pull).
    pub(crate) fetched: Vec<usize>,
    pub(crate) bytes_fetched: Arc<std::sync::atomic::AtomicU64>,
}

impl<'a> Downloads<'a> {
    pub(crate) fn new(remote: &'a Remote, events: Events) -> Downloads<'a> {
        let dir = remote.blob_dir.join("blobs").join("sha256");
        Downloads {
            remote,
            dir,
            events,
            tasks: BTreeMap::new(),
            layers: BTreeMap::new(),
            fetched: Vec::new(),
            bytes_fetched: Default::default(),
        }
    }

    fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    /// Layers after `i` that still need the same blob (an image may repeat a layer).
    fn needed_later(&self, i: usize, d: &Digest) -> bool {
        self.layers.range(i + 1..).any(|(_, (x, ..))| x == d)
    }
}

impl Blobs for Downloads<'_> {
    fn planned(&mut self, img: &oci::Image, missing: &[usize]) -> Result<()> {
        std::fs::create_dir_all(&self.dir).ctx(|| format!("creating {}", self.dir.display()))?;
        // `.partial` files left by a killed pull are continued by the downloads of their blobs
        // (the images lock says nobody else is writing them); those this image does not need
        // are removed.
        let wanted: std::collections::BTreeSet<String> = missing.iter().map(|&i| img.layers[i].digest.hex().to_string()).collect();
        for e in std::fs::read_dir(&self.dir).ctx(|| format!("listing {}", self.dir.display()))? {
            let p = e.ctx(|| format!("listing {}", self.dir.display()))?.path();
            let stem = p.file_stem().map(|x| x.to_string_lossy().into_owned()).unwrap_or_default();
            if p.extension().is_some_and(|x| x == "partial") && !wanted.contains(&stem) {
                std::fs::remove_file(&p).ctx(|| format!("removing {}", p.display()))?;
            }
        }
        let total = img.layers.len();
        let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_DOWNLOADS));
        let mut scheduled = std::collections::BTreeSet::new();
        for (i, l) in img.layers.iter().enumerate() {
            if !missing.contains(&i) {
                (self.events)(PullEvent { index: i, total, digest: l.digest.short(), size: l.size, state: LayerState::Reused });
                continue;
            }
            self.layers.insert(i, (l.digest.clone(), l.size, l.label().to_string()));
            let path = self.path(&l.digest);
            let have = std::fs::metadata(&path).map(|m| m.len() == l.size).unwrap_or(false);
            if have || !scheduled.insert(l.digest.clone()) {
                (self.events)(PullEvent { index: i, total, digest: l.digest.short(), size: l.size, state: LayerState::Downloaded });
                continue;
            }
            self.fetched.push(i);
            let job = Job {
                remote_client: self.remote.client.clone(),
                reference: self.remote.reference.clone(),
                given: self.remote.given.clone(),
                registry: self.remote.reference.resolve_registry().to_string(),
                had_creds: !matches!(self.remote.auth, oci_client::secrets::RegistryAuth::Anonymous),
                digest: l.digest.clone(),
                media_type: l.media_type.clone(),
                size: l.size,
                label: l.label().to_string(),
                path,
                events: self.events.clone(),
                index: i,
                total,
                bytes: self.bytes_fetched.clone(),
            };
            let permits = permits.clone();
            // Spawned in layer order and the semaphore is fair: lower layers start first.
            self.tasks.insert(
                i,
                self.remote.rt.spawn(async move {
                    let _p = permits.acquire_owned().await.map_err(|_| Error::Inconsistent("download semaphore closed".into()))?;
                    job.run().await
                }),
            );
        }
        Ok(())
    }

    fn ready(&mut self, i: usize) -> Result<bool> {
        // Digested by its task as it was written; a blob found complete from an earlier pull
        // (or shared with another layer) is digested again as the layer is built.
        let mut digested = false;
        if let Some(t) = self.tasks.remove(&i) {
            self.remote.rt.block_on(t).map_err(|e| Error::Inconsistent(format!("a download task failed: {e}")))??;
            digested = true;
        }
        if let Some((d, size, label)) = self.layers.get(&i) {
            let ok = std::fs::metadata(self.path(d)).map(|m| m.len() == *size).unwrap_or(false);
            if !ok {
                return Err(Error::Inconsistent(format!("{label}: its downloaded blob is gone from {}", self.dir.display())));
            }
            (self.events)(PullEvent { index: i, total: 0, digest: d.short(), size: *size, state: LayerState::Applying });
        }
        Ok(digested)
    }

    fn done(&mut self, i: usize, built: bool) {
        if let Some((d, size, _)) = self.layers.get(&i).cloned() {
            if !self.needed_later(i, &d) {
                let _ = std::fs::remove_file(self.path(&d));
            }
            if built {
                (self.events)(PullEvent { index: i, total: 0, digest: d.short(), size, state: LayerState::Applied });
            }
        }
    }
}

impl Drop for Downloads<'_> {
    /// A pull that failed (or finished) stops its downloads and leaves no blob behind; only a
    /// killed one leaves blobs for the next to reuse.
    fn drop(&mut self) {
        for (_, t) in std::mem::take(&mut self.tasks) {
            t.abort();
            let _ = self.remote.rt.block_on(t);
        }
        for (d, ..) in self.layers.values() {
            let p = self.path(d);
            let _ = std::fs::remove_file(p.with_extension("partial"));
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// How a download ended, short of an error.
enum Fetched {
    /// Complete, digest checked, in place.
    Whole,
    /// Continued from a kept `.partial` whose whole then did not match its digest (removed).
    ResumedMismatch,
}

/// Feed the first `len` bytes of `f` to `hasher`; the bytes read.
fn hash_prefix(f: &mut std::fs::File, hasher: &mut Sha256, len: u64) -> std::io::Result<u64> {
    use std::io::Read;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0;
    let mut r = (&*f).take(len);
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            return Ok(n);
        }
        hasher.update(&buf[..k]);
        n += k as u64;
    }
}

/// One blob download, owned by its task.
struct Job {
    remote_client: Arc<oci_client::Client>,
    reference: oci_client::Reference,
    given: String,
    registry: String,
    had_creds: bool,
    digest: Digest,
    media_type: String,
    size: u64,
    label: String,
    path: PathBuf,
    events: Events,
    index: usize,
    total: usize,
    bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl Job {
    fn bad(&self, why: String) -> Error {
        Error::Registry { reference: self.given.clone(), why: format!("{}: {why}", self.label) }
    }

    async fn run(self) -> Result<()> {
        // A resumed blob whose digest is wrong: its kept part may be what a crash left
        // half-written; once more from the start (which is never "resumed") before blaming the
        // registry.
        if let Fetched::ResumedMismatch = self.fetch(true).await? {
            self.fetch(false).await?;
        }
        Ok(())
    }

    /// Download into `<hex>.partial` (continuing one a killed pull left when `resume`), check
    /// size and digest, fsync, and give it its final name.
    async fn fetch(&self, resume: bool) -> Result<Fetched> {
        let ev = |state| (self.events)(PullEvent { index: self.index, total: self.total, digest: self.digest.short(), size: self.size, state });
        let started = std::time::Instant::now();
        let partial = self.path.with_extension("partial");
        let kept = if resume { std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) } else { 0 };
        let kept = if kept >= self.size { 0 } else { kept };
        ev(LayerState::Downloading(kept));
        let desc = descriptor(&self.digest, self.size, &self.media_type);
        let fail = |e| super::client::registry_error(&self.given, &self.registry, &format!("fetching {}", self.label), e, self.had_creds);
        // A range request even from 0: the registry's 206 answer is not digested by the client
        // a second time (this loop digests every byte anyway, and says more when it is wrong).
        let (mut s, from) = if self.size == 0 {
            // No range of nothing to ask for.
            (self.remote_client.pull_blob_stream(&self.reference, &desc).await.map_err(fail)?, 0)
        } else {
            match self.remote_client.pull_blob_stream_partial(&self.reference, &desc, kept, None).await.map_err(fail)? {
                oci_client::client::BlobResponse::Partial(s) => (s, kept),
                // A registry without range support sends the whole blob.
                oci_client::client::BlobResponse::Full(s) => (s, 0),
            }
        };
        let (mut hasher, mut n) = (Sha256::new(), 0u64);
        let mut f = if from > 0 {
            let mut f = std::fs::OpenOptions::new().read(true).append(true).open(&partial).ctx(|| format!("opening {}", partial.display()))?;
            n = hash_prefix(&mut f, &mut hasher, from).ctx(|| format!("reading {}", partial.display()))?;
            tracing::info!(layer = self.index, bytes = n, "resuming a blob download");
            f
        } else {
            std::fs::File::create(&partial).ctx(|| format!("creating {}", partial.display()))?
        };
        while let Some(chunk) = s.stream.next().await {
            // A full answer's digest is checked by the client too: its error on the last read
            // is ours to give below, with more to say.
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) if n == self.size => {
                    tracing::debug!(error = %e, "the client's own check failed; checking the digest here");
                    break;
                }
                Err(e) => {
                    return Err(self.bad(format!(
                        "the download ended after {n} of {} bytes (a truncated blob, or the connection broke): {e}",
                        self.size
                    )))
                }
            };
            n += chunk.len() as u64;
            if n > self.size {
                return Err(self.bad(format!("the registry sent more than the {} bytes the manifest says", self.size)));
            }
            hasher.update(&chunk);
            f.write_all(&chunk).ctx(|| format!("writing {}", partial.display()))?;
            self.bytes.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            ev(LayerState::Downloading(n));
        }
        if n != self.size {
            return Err(self.bad(format!("the registry sent {n} bytes but the manifest says {} (a truncated blob)", self.size)));
        }
        let got = Digest::from_hasher(hasher);
        if got != self.digest {
            let _ = std::fs::remove_file(&partial);
            if from > 0 {
                tracing::info!(layer = self.index, got = %got, "a resumed download's digest does not match; fetching it whole");
                return Ok(Fetched::ResumedMismatch);
            }
            return Err(self.bad(format!("digest mismatch: the registry sent {got}; its copy of the blob is damaged")));
        }
        f.sync_all().ctx(|| format!("syncing {}", partial.display()))?;
        std::fs::rename(&partial, &self.path).ctx(|| format!("renaming {}", partial.display()))?;
        crate::durable::sync_dir(self.path.parent().unwrap_or(Path::new(".")))?;
        tracing::info!(layer = self.index, bytes = n, ms = started.elapsed().as_millis() as u64, "blob downloaded");
        ev(LayerState::Downloaded);
        Ok(Fetched::Whole)
    }
}
