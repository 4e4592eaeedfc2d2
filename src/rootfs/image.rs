//! Images in a pool. `image import` turns an OCI image layout into a chain of read-only
//! volumes: layer N is a thin snapshot of layer N-1 with the layer applied, the first a
//! snapshot of the formatted base. A layer volume is named after its chain id (and the
//! filesystem and size it was built for), so a second image that shares layers finds them
//! and shares their blocks. `commit` makes a stopped container's volume an image.
//!
//! State: `<pool>/images/<name>.json`, one durable file per image, and
//! `<pool>/images/layers/<volume id>.json`, the full chain id a layer volume was built for. A
//! layer volume is complete once it is marked read-only (the last step of building it); one
//! found unfinished (a crash mid-import) is deleted and built again by the next import that
//! needs it, unless something holds it.
//!
//! Identity: a volume name keeps only 16 hex digits of the chain id, and a volume id is a bare
//! number, so neither is trusted alone. A layer is reused only when its record holds the full
//! chain id and it sits on the expected parent; a volume of that name that is another layer
//! (the base was re-created, or a prefix collides) is left alone and the layer is built under the
//! next free name (`...-2`, `...-3`). Image records keep each layer's volume name, and
//! `image rm` / `run IMAGE` act on a layer's id only while the volume there still has that name.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::fs::Fs;
use super::populate::{apply_layer, mountpoint, Progress};
use super::{base, mount, oci, tree::Tree};
use crate::error::{Error, IoContext, Result};
use crate::file_lock::FileLock;
use crate::durable::{read_json, remove_durable, write_durable};
use crate::pool::{Pool, VolRef};

/// One image: its layer volumes bottom to top; `top` is what containers snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The image's name in the pool.
    pub name: String,
    /// The filesystem every layer volume holds.
    pub fs: Fs,
    /// The size of every layer volume.
    pub size_bytes: u64,
    /// The layers, bottom first.
    pub layers: Vec<LayerEntry>,
    /// The top layer's volume id: what containers snapshot.
    pub top: u32,
    /// The manifest digest of an imported image; None for a committed one.
    pub manifest: Option<String>,
    /// For a committed image, the volume it was committed from.
    pub committed_from: Option<u32>,
    /// When the record was written, in seconds since the epoch.
    pub created_unix: u64,
    /// What a runtime needs from the image's config (command, environment, ...), kept so
    /// `image push` can send it on; a commit inherits its image's. None in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<oci::ImageConfig>,
}

/// One layer of an image record: the volume that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerEntry {
    /// The OCI chain id; None for a layer made by `commit`.
    pub chain_id: Option<String>,
    /// The layer volume's id.
    pub volume: u32,
    /// False when an identical layer volume already existed and was shared.
    pub created: bool,
    /// The layer volume's name when it was recorded (None in records made before names were
    /// kept): an id whose volume no longer has it is not this layer any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_name: Option<String>,
}

/// Which layer a layer volume was built as (`images/layers/<id>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LayerRecord {
    volume_name: String,
    chain_id: String,
    parent: u32,
}

/// How many names one chain id may take (`-2` ... when other layers hold the first).
const LAYER_NAME_TRIES: u32 = 16;

fn layer_record_path(pool: &Pool, id: u32) -> PathBuf {
    images_dir(pool).join("layers").join(format!("{id}.json"))
}

/// Is volume `id` still the one `entry` recorded? Old records (no name) are taken as they are.
fn still_layer(pool: &Pool, id: u32, volume_name: Option<&str>) -> Result<bool> {
    let Some(want) = volume_name else { return Ok(true) };
    match pool.resolve(&VolRef::Id(id)) {
        Ok(r) => Ok(r.name.as_deref() == Some(want)),
        Err(Error::NoSuchVolume { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Image names follow volume names, shorter: layer and commit volumes derive theirs from them.
pub fn validate_image_name(name: &str) -> Result<()> {
    crate::pool::validate_volume_name(name)?;
    if name.len() > 48 {
        return Err(Error::invalid("image name", format!("'{name}' is longer than 48 characters")));
    }
    Ok(())
}

fn images_dir(pool: &Pool) -> PathBuf {
    pool.dir().join("images")
}

fn image_path(pool: &Pool, name: &str) -> PathBuf {
    images_dir(pool).join(format!("{name}.json"))
}

fn import_lock(pool: &Pool) -> Result<FileLock> {
    FileLock::exclusive(&pool.dir().join("images.lock"))
}

/// The record of image `name`; None if there is no such image.
pub fn find(pool: &Pool, name: &str) -> Result<Option<ImageRecord>> {
    validate_image_name(name)?;
    read_json(&image_path(pool, name))
}

/// Every image record in the pool.
pub fn images(pool: &Pool) -> Result<Vec<ImageRecord>> {
    let dir = images_dir(pool);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).ctx(|| format!("listing {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.ctx(|| format!("listing {}", dir.display()))?;
        if e.path().extension().is_some_and(|x| x == "json") {
            if let Some(r) = read_json::<ImageRecord>(&e.path())? {
                out.push(r);
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn put_image(pool: &Pool, rec: &ImageRecord) -> Result<()> {
    let dir = images_dir(pool);
    std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
    write_durable(&image_path(pool, &rec.name), &crate::durable::json(rec)?)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The volume name of a layer: chain id (first 16 hex digits), filesystem and size.
fn layer_volume_name(chain_id: &oci::Digest, fs: Fs, size_bytes: u64) -> String {
    let hex = chain_id.hex();
    format!("layer-{fs}-{size_bytes}-{}", &hex[..16.min(hex.len())])
}

/// Options of `image import`.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The filesystem the layer volumes get.
    pub fs: Fs,
    /// The size of every layer volume.
    pub size_bytes: u64,
    /// Which manifest of the layout (its `org.opencontainers.image.ref.name`).
    pub reference: Option<String>,
}

/// `rcx-dm image import`: see the module comment. A layer whose archive or digest is bad fails
/// the import, and the layer volumes it made are deleted again (see `install`).
pub fn import(pool: &Pool, layout: &Path, name: &str, opts: &ImportOptions, progress: Progress) -> Result<ImageRecord> {
    validate_image_name(name)?;
    let img = oci::open(layout, opts.reference.as_deref())?;
    if img.layers.is_empty() {
        return Err(Error::invalid("image", format!("{} has no layers", layout.display())));
    }
    install(pool, &img, name, opts.fs, opts.size_bytes, &mut LocalBlobs, progress).map(|(rec, _)| rec)
}

/// Where the blobs of layers to build come from. `install` says which layers it must build
/// (the others are in the pool already), then asks for each blob in order just before it
/// builds that layer, and says when it is done with it.
pub(crate) trait Blobs {
    /// The layers (indexes, bottom first) that will be built; called once, under the images
    /// lock, before any `ready`.
    fn planned(&mut self, img: &oci::Image, missing: &[usize]) -> Result<()>;
    /// Block until layer `i`'s blob is where `img.layers[i]` says. True when this process
    /// wrote it and checked its digest as it did (the layer is then built without digesting
    /// the blob again).
    fn ready(&mut self, i: usize) -> Result<bool>;
    /// Layer `i` is built (or failed): its blob is no longer needed.
    fn done(&mut self, i: usize, built: bool);
}

/// An OCI layout's blobs are there already.
struct LocalBlobs;

impl Blobs for LocalBlobs {
    fn planned(&mut self, _: &oci::Image, _: &[usize]) -> Result<()> {
        Ok(())
    }
    fn ready(&mut self, _: usize) -> Result<bool> {
        Ok(false)
    }
    fn done(&mut self, _: usize, _: bool) {}
}

/// The chain of existing layer volumes: the volume of each layer found complete in the pool,
/// bottom first, up to the first missing one (a layer above a missing one cannot exist).
fn existing_chain(pool: &Pool, img: &oci::Image, fs: Fs, size_bytes: u64) -> Result<Vec<(u32, String)>> {
    let mut parent = match pool.resolve(&VolRef::Name(base::base_name(fs, size_bytes))) {
        Ok(b) if b.read_only => b.id,
        Ok(_) | Err(Error::NoSuchVolume { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for l in &img.layers {
        let base_name = layer_volume_name(&l.chain_id, fs, size_bytes);
        match existing_layer(pool, &base_name, &l.chain_id.to_string(), parent)? {
            Found::Layer(id, vname) => {
                out.push((id, vname));
                parent = id;
            }
            Found::FreeName(_) => break,
        }
    }
    Ok(out)
}

/// Make `img` image `name` in the pool: layers found complete in the pool (by full chain id)
/// are shared, the others built in order from the blobs `blobs` provides. On failure the
/// layer volumes this call made are deleted again; only a killed process leaves them (each
/// complete, found by the next attempt). Returns the record and which layers were built.
pub(crate) fn install(
    pool: &Pool,
    img: &oci::Image,
    name: &str,
    fs: Fs,
    size_bytes: u64,
    blobs: &mut dyn Blobs,
    progress: Progress,
) -> Result<(ImageRecord, Vec<usize>)> {
    validate_image_name(name)?;
    let _l = import_lock(pool)?;
    if find(pool, name)?.is_some() {
        return Err(Error::Exists(format!("image '{name}' (remove it with `rcx-dm image rm {name}`)")));
    }
    let have = existing_chain(pool, img, fs, size_bytes)?;
    let missing: Vec<usize> = (have.len()..img.layers.len()).collect();
    blobs.planned(img, &missing)?;
    let mut layers = Vec::new();
    let mut built = Vec::new();
    let result = (|| {
        let mut parent = None;
        for (i, l) in img.layers.iter().enumerate() {
            let chain = l.chain_id.to_string();
            if let Some((id, vname)) = have.get(i) {
                progress(l.size);
                layers.push(LayerEntry { chain_id: Some(chain), volume: *id, created: false, volume_name: Some(vname.clone()) });
                parent = Some(*id);
                continue;
            }
            let waited = std::time::Instant::now();
            let digested = blobs.ready(i)?;
            tracing::info!(layer = i, waited_ms = waited.elapsed().as_millis() as u64, "layer's blob ready");
            // The base is made only once a blob is here: a pull refused early leaves no volume.
            let below = match parent {
                Some(p) => p,
                None => base::ensure_base(pool, fs, size_bytes)?.id,
            };
            let base_name = layer_volume_name(&l.chain_id, fs, size_bytes);
            let (volume, vname) = match existing_layer(pool, &base_name, &chain, below)? {
                // Made by someone else since the plan: cannot happen under the lock, but harmless.
                Found::Layer(id, vname) => (id, vname),
                Found::FreeName(vname) => {
                    let r = build_layer(pool, &vname, &chain, below, fs, l, digested, progress.clone());
                    blobs.done(i, r.is_ok());
                    let id = r?;
                    built.push(i);
                    layers.push(LayerEntry { chain_id: Some(chain), volume: id, created: true, volume_name: Some(vname) });
                    parent = Some(id);
                    crate::pool::fault::point("install.layer_built")?;
                    continue;
                }
            };
            layers.push(LayerEntry { chain_id: Some(chain), volume, created: false, volume_name: Some(vname) });
            parent = Some(volume);
        }
        parent.ok_or_else(|| Error::invalid("image", format!("{} has no layers", img.layout.display())))
    })();
    let top = match result {
        Ok(t) => t,
        Err(e) => {
            // Top down: each is a child of the one before.
            for l in layers.iter().rev().filter(|l| l.created) {
                if let Err(d) = pool.delete(&VolRef::Id(l.volume), true).and_then(|_| remove_durable(&layer_record_path(pool, l.volume))) {
                    tracing::warn!(error = %d, volume = l.volume, "could not delete a layer volume of the failed image; the next import of it reuses it");
                }
            }
            return Err(e);
        }
    };
    let rec = ImageRecord {
        name: name.to_string(),
        fs,
        size_bytes,
        layers,
        top,
        manifest: Some(img.manifest_digest.to_string()),
        committed_from: None,
        created_unix: now(),
        config: Some(img.config.clone()),
    };
    put_image(pool, &rec)?;
    Ok((rec, built))
}

enum Found {
    /// The complete layer volume (id, name) for this chain id on this parent.
    Layer(u32, String),
    /// No such volume: build it under this name.
    FreeName(String),
}

/// The complete layer volume for `chain` on top of `parent`, or a free name to build it under.
/// Under each candidate name: the layer itself is reused; an unfinished volume (not read-only:
/// the import building it died) that nothing holds is deleted and its name taken; anything else
/// (another layer, something held) is left alone and the next name is tried.
fn existing_layer(pool: &Pool, base_name: &str, chain: &str, parent: u32) -> Result<Found> {
    for n in 1..=LAYER_NAME_TRIES {
        let vname = if n == 1 { base_name.to_string() } else { format!("{base_name}-{n}") };
        let r = match pool.resolve(&VolRef::Name(vname.clone())) {
            Ok(r) => r,
            Err(Error::NoSuchVolume { .. }) => return Ok(Found::FreeName(vname)),
            Err(e) => return Err(e),
        };
        let built_as: Option<LayerRecord> = read_json(&layer_record_path(pool, r.id))?;
        let same = match &built_as {
            Some(b) => b.chain_id == chain && b.volume_name == vname && b.parent == parent,
            // Built before layer records were kept: the images that use it say what it is.
            None => {
                let uses: Vec<Option<String>> =
                    images(pool)?.into_iter().flat_map(|i| i.layers).filter(|l| l.volume == r.id).map(|l| l.chain_id).collect();
                !uses.is_empty() && uses.iter().all(|c| c.as_deref() == Some(chain))
            }
        };
        if r.read_only && r.parent == Some(parent) && same {
            return Ok(Found::Layer(r.id, vname));
        }
        let held = !crate::refs::holders(pool, r.id)?.is_empty() || pool.volumes()?.iter().any(|v| v.parent == Some(r.id));
        if !r.read_only && !held {
            tracing::warn!(volume = r.id, name = vname, "deleting an unfinished layer volume left by an interrupted import");
            pool.delete(&VolRef::Id(r.id), true)?;
            remove_durable(&layer_record_path(pool, r.id))?;
            return Ok(Found::FreeName(vname));
        }
        tracing::info!(volume = r.id, name = vname, "a layer volume of this name is another layer; trying the next name");
    }
    Err(Error::Exists(format!(
        "{LAYER_NAME_TRIES} layer volumes named {base_name}[-N], none of them this layer ({chain}); remove unused images (`rcx-dm image rm`)"
    )))
}

#[allow(clippy::too_many_arguments)]
fn build_layer(pool: &Pool, vname: &str, chain: &str, parent: u32, fs: Fs, l: &oci::Layer, digested: bool, progress: Progress) -> Result<u32> {
    let t = std::time::Instant::now();
    let ms = |t: std::time::Instant| t.elapsed().as_millis() as u64;
    let v = pool.snapshot_internal(None, &VolRef::Id(parent), None, Some(vname))?;
    let snapshot_ms = ms(t);
    let id = VolRef::Id(v.id);
    let built = (|| {
        let dev = v.device.clone().ok_or_else(|| Error::Inconsistent(format!("layer volume {} has no device", v.id)))?;
        let mnt = mountpoint(pool)?;
        let t = std::time::Instant::now();
        let mut apply_ms = 0;
        mount::with_mounted(&dev, fs, &mnt, |root| {
            let a = std::time::Instant::now();
            let r = apply_layer(&Tree::open(root)?, l, digested, progress);
            apply_ms = ms(a);
            r
        })?;
        // Where a layer's time goes: RUST_LOG=rcx_dm=info.
        tracing::info!(volume = vname, snapshot_ms, apply_ms, mount_and_unmount_ms = ms(t) - apply_ms, "layer applied");
        crate::pool::fault::point("import.layer")?;
        pool.deactivate_volume(&id)?;
        // What it was built as, before the read-only mark that makes it complete.
        let dir = images_dir(pool).join("layers");
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let rec = LayerRecord { volume_name: vname.to_string(), chain_id: chain.to_string(), parent };
        write_durable(&layer_record_path(pool, v.id), &crate::durable::json(&rec)?)?;
        pool.set_read_only(&id, true)
    })();
    if let Err(e) = built {
        if let Err(d) = pool.delete(&id, true) {
            tracing::warn!(error = %d, volume = v.id, "could not delete the failed layer volume; the next import removes it");
        }
        return Err(e);
    }
    Ok(v.id)
}

/// `rcx-dm commit`: the volume (not in use) becomes image `name`: a new read-only snapshot of
/// it, on top of the layers of the image it came from (found through its parents).
pub fn commit(pool: &Pool, v: &VolRef, name: &str) -> Result<ImageRecord> {
    validate_image_name(name)?;
    let _l = import_lock(pool)?;
    if find(pool, name)?.is_some() {
        return Err(Error::Exists(format!("image '{name}' (remove it with `rcx-dm image rm {name}`)")));
    }
    let rec = pool.resolve(v)?;
    let fs = super::populate::volume_fs(pool, &rec)?; // also refuses a volume in use
    let vname = format!("commit-{name}");
    match pool.resolve(&VolRef::Name(vname.clone())) {
        Ok(left) => {
            // Left by an interrupted commit, or kept by `image rm` because something was made
            // from it: only the first may go.
            let mut held = crate::refs::holders(pool, left.id)?;
            if pool.volumes()?.iter().any(|v| v.parent == Some(left.id)) {
                held.push("volumes made from it".into());
            }
            if !held.is_empty() {
                return Err(Error::Referenced { vol: vname, holders: held });
            }
            pool.delete(&VolRef::Id(left.id), true)?;
            tracing::info!(volume = %vname, "removed a commit volume left by an interrupted commit");
        }
        Err(Error::NoSuchVolume { .. }) => {}
        Err(e) => return Err(e),
    }
    let snap = pool.snapshot_internal(None, &VolRef::Id(rec.id), None, Some(&vname))?;
    let sref = VolRef::Id(snap.id);
    if let Err(e) = pool.deactivate_volume(&sref).and_then(|_| pool.set_read_only(&sref, true)) {
        let _ = pool.delete(&sref, true);
        return Err(e);
    }
    let (mut layers, config) = inherited(pool, rec.parent)?;
    layers.push(LayerEntry { chain_id: None, volume: snap.id, created: true, volume_name: Some(vname) });
    let img = ImageRecord {
        name: name.to_string(),
        fs,
        size_bytes: rec.size_bytes,
        layers,
        top: snap.id,
        manifest: None,
        committed_from: Some(rec.id),
        created_unix: now(),
        config,
    };
    put_image(pool, &img)?;
    Ok(img)
}

/// The layers below a volume, and the config: those of the image whose top is its parent, if any.
fn inherited(pool: &Pool, parent: Option<u32>) -> Result<(Vec<LayerEntry>, Option<oci::ImageConfig>)> {
    let Some(p) = parent else { return Ok((Vec::new(), None)) };
    Ok(images(pool)?
        .into_iter()
        .find(|i| i.top == p)
        .map(|i| (i.layers.into_iter().map(|l| LayerEntry { created: false, ..l }).collect(), i.config))
        .unwrap_or_default())
}

/// What `image rm` removed.
#[derive(Debug, Clone, Serialize)]
pub struct Removed {
    /// The image's name.
    pub image: String,
    /// Layer volumes deleted (no other image and no volume used them).
    pub deleted_volumes: Vec<u32>,
    /// Layer volumes kept because another image or a volume still uses them.
    pub kept_volumes: Vec<u32>,
}

/// `rcx-dm image rm`: forget the image, then delete its layer volumes from the top down while
/// nothing else uses them (another image's layers, or any volume made from them).
pub fn remove(pool: &Pool, name: &str) -> Result<Removed> {
    let _l = import_lock(pool)?;
    let rec = find(pool, name)?.ok_or_else(|| {
        Error::invalid("image", format!("no image '{name}' in pool '{}'; `rcx-dm image list` shows them", pool.name()))
    })?;
    remove_durable(&image_path(pool, name))?;
    let mut out = Removed { image: name.to_string(), deleted_volumes: Vec::new(), kept_volumes: Vec::new() };
    for l in rec.layers.iter().rev() {
        if !still_layer(pool, l.volume, l.volume_name.as_deref())? {
            // Deleted behind the image's back, and the id perhaps given to another volume.
            tracing::warn!(volume = l.volume, name = ?l.volume_name, "image layer volume is gone or is another volume now; left alone");
            continue;
        }
        let has_children = pool.volumes()?.iter().any(|v| v.parent == Some(l.volume));
        if has_children || !crate::refs::holders(pool, l.volume)?.is_empty() {
            out.kept_volumes.push(l.volume);
            continue;
        }
        pool.delete_if_exists(&VolRef::Id(l.volume), true)?;
        out.deleted_volumes.push(l.volume);
        remove_durable(&layer_record_path(pool, l.volume))?;
    }
    Ok(out)
}

/// The image's top volume, for `snap`/`run` given an image name.
pub fn top_volume(pool: &Pool, name: &str) -> Result<Option<u32>> {
    if validate_image_name(name).is_err() {
        return Ok(None);
    }
    let Some(i) = find(pool, name)? else { return Ok(None) };
    let top_name = i.layers.last().and_then(|l| l.volume_name.as_deref());
    if !still_layer(pool, i.top, top_name)? {
        return Err(Error::Inconsistent(format!(
            "image '{name}' records volume {} ({}) as its top, but that volume is gone or is another one now; \
             remove the image (`rcx-dm image rm {name}`) and import it again",
            i.top,
            top_name.unwrap_or("?")
        )));
    }
    Ok(Some(i.top))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_volume_names_are_valid_volume_names() {
        let c = oci::Digest::of(b"layer");
        let n = layer_volume_name(&c, Fs::Ext4, u64::MAX);
        assert!(n.starts_with("layer-ext4-18446744073709551615-"), "{n}");
        crate::pool::validate_volume_name(&n).unwrap();
        let longest = "a".repeat(48);
        validate_image_name(&longest).unwrap();
        crate::pool::validate_volume_name(&format!("commit-{longest}")).unwrap();
        assert!(validate_image_name(&"a".repeat(49)).is_err());
        assert!(validate_image_name("../x").is_err());
    }

    #[test]
    fn image_records_round_trip() {
        let r = ImageRecord {
            name: "a".into(),
            fs: Fs::Xfs,
            size_bytes: 1 << 30,
            layers: vec![LayerEntry { chain_id: Some(oci::Digest::of(b"x").to_string()), volume: 3, created: true, volume_name: Some("layer-x".into()) }],
            top: 3,
            manifest: None,
            committed_from: Some(1),
            created_unix: 5,
            config: Some(oci::ImageConfig { cmd: Some(vec!["/bin/sh".into()]), ..Default::default() }),
        };
        let j = serde_json::to_string(&r).unwrap();
        assert!(j.contains("\"fs\":\"xfs\""));
        assert_eq!(serde_json::from_str::<ImageRecord>(&j).unwrap(), r);
    }
}
