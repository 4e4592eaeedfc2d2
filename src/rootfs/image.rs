//! Images in a pool. `image import` turns an OCI image layout into a chain of read-only
//! volumes: layer N is a thin snapshot of layer N-1 with the layer applied, the first a
//! snapshot of the formatted base. A layer volume is named after its chain id (and the
//! filesystem and size it was built for), so a second image that shares layers finds them
//! and shares their blocks. `commit` makes a stopped container's volume an image.
//!
//! State: `<pool>/images/<name>.json`, one durable file per image. A layer volume is complete
//! once it is marked read-only (the last step of building it); one found unfinished (a crash
//! mid-import) is deleted and built again by the next import that needs it.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::fs::Fs;
use super::populate::{apply_layer, mountpoint, Progress};
use super::{base, mount, oci, tree::Tree};
use crate::error::{Error, IoContext, Result};
use crate::pool::lock::PoolLock;
use crate::pool::store::{read_json, remove_durable, write_durable};
use crate::pool::{Pool, VolRef};

/// One image: its layer volumes bottom to top; `top` is what containers snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: String,
    pub fs: Fs,
    pub size_bytes: u64,
    pub layers: Vec<LayerEntry>,
    pub top: u32,
    /// The manifest digest of an imported image; None for a committed one.
    pub manifest: Option<String>,
    /// For a committed image, the volume it was committed from.
    pub committed_from: Option<u32>,
    pub created_unix: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerEntry {
    /// The OCI chain id; None for a layer made by `commit`.
    pub chain_id: Option<String>,
    pub volume: u32,
    /// False when an identical layer volume already existed and was shared.
    pub created: bool,
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

fn import_lock(pool: &Pool) -> Result<PoolLock> {
    PoolLock::acquire_file(&pool.dir().join("images.lock"))
}

pub fn image(pool: &Pool, name: &str) -> Result<Option<ImageRecord>> {
    validate_image_name(name)?;
    read_json(&image_path(pool, name))
}

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
    write_durable(&image_path(pool, &rec.name), &crate::pool::store::json(rec)?)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The volume name of a layer: chain id (first 16 hex digits), filesystem and size.
pub fn layer_volume_name(chain_id: &oci::Digest, fs: Fs, size_bytes: u64) -> String {
    let hex = chain_id.hex();
    format!("layer-{fs}-{size_bytes}-{}", &hex[..16.min(hex.len())])
}

/// Options of `image import`.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub fs: Fs,
    pub size_bytes: u64,
    /// Which manifest of the layout (its `org.opencontainers.image.ref.name`).
    pub reference: Option<String>,
}

/// `rcx-dm image import`: see the module comment. A layer whose archive or digest is bad is
/// deleted again; layers made before it stay (complete, shared by the next attempt).
pub fn import(pool: &Pool, layout: &Path, name: &str, opts: &ImportOptions, progress: Progress) -> Result<ImageRecord> {
    validate_image_name(name)?;
    let _l = import_lock(pool)?;
    if image(pool, name)?.is_some() {
        return Err(Error::Exists(format!("image '{name}' (remove it with `rcx-dm image rm {name}`)")));
    }
    let img = oci::open(layout, opts.reference.as_deref())?;
    if img.layers.is_empty() {
        return Err(Error::invalid("image", format!("{} has no layers", layout.display())));
    }
    let base = base::ensure_base(pool, opts.fs, opts.size_bytes)?;
    let mut parent = base.id;
    let mut layers = Vec::new();
    for l in &img.layers {
        let vname = layer_volume_name(&l.chain_id, opts.fs, opts.size_bytes);
        let (volume, created) = match existing_layer(pool, &vname, parent)? {
            Some(id) => {
                progress(l.size);
                (id, false)
            }
            None => (build_layer(pool, &vname, parent, opts.fs, l, progress.clone())?, true),
        };
        layers.push(LayerEntry { chain_id: Some(l.chain_id.to_string()), volume, created });
        parent = volume;
    }
    let rec = ImageRecord {
        name: name.to_string(),
        fs: opts.fs,
        size_bytes: opts.size_bytes,
        layers,
        top: parent,
        manifest: Some(img.manifest_digest.to_string()),
        committed_from: None,
        created_unix: now(),
    };
    put_image(pool, &rec)?;
    Ok(rec)
}

/// A complete layer volume of that name on top of `parent`, if there is one. An unfinished
/// one (not read-only: the import building it died) is deleted.
fn existing_layer(pool: &Pool, vname: &str, parent: u32) -> Result<Option<u32>> {
    let r = match pool.resolve(&VolRef::Name(vname.to_string())) {
        Ok(r) => r,
        Err(Error::NoSuchVolume { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    if r.read_only && r.parent == Some(parent) {
        return Ok(Some(r.id));
    }
    tracing::warn!(volume = r.id, name = vname, "deleting an unfinished layer volume left by an interrupted import");
    pool.delete(&VolRef::Id(r.id), true)?;
    Ok(None)
}

fn build_layer(pool: &Pool, vname: &str, parent: u32, fs: Fs, l: &oci::Layer, progress: Progress) -> Result<u32> {
    let v = pool.snapshot_internal(None, &VolRef::Id(parent), None, Some(vname))?;
    let id = VolRef::Id(v.id);
    let built = (|| {
        let dev = v.device.clone().ok_or_else(|| Error::Inconsistent(format!("layer volume {} has no device", v.id)))?;
        let mnt = mountpoint(pool)?;
        mount::with_mounted(&dev, fs, &mnt, |root| apply_layer(&Tree::open(root)?, l, progress))?;
        crate::pool::fault::point("import.layer")?;
        pool.deactivate_volume(&id)?;
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
    if image(pool, name)?.is_some() {
        return Err(Error::Exists(format!("image '{name}' (remove it with `rcx-dm image rm {name}`)")));
    }
    let rec = pool.resolve(v)?;
    let fs = super::populate::volume_fs(pool, &rec)?; // also refuses a volume in use
    let vname = format!("commit-{name}");
    match pool.delete(&VolRef::Name(vname.clone()), true) {
        Ok(()) => tracing::info!(volume = %vname, "removed a commit volume left by an interrupted commit"),
        Err(Error::NoSuchVolume { .. }) => {}
        Err(e) => return Err(e),
    }
    let snap = pool.snapshot_internal(None, &VolRef::Id(rec.id), None, Some(&vname))?;
    let sref = VolRef::Id(snap.id);
    if let Err(e) = pool.deactivate_volume(&sref).and_then(|_| pool.set_read_only(&sref, true)) {
        let _ = pool.delete(&sref, true);
        return Err(e);
    }
    let mut layers = inherited_layers(pool, rec.parent)?;
    layers.push(LayerEntry { chain_id: None, volume: snap.id, created: true });
    let img = ImageRecord {
        name: name.to_string(),
        fs,
        size_bytes: rec.size_bytes,
        layers,
        top: snap.id,
        manifest: None,
        committed_from: Some(rec.id),
        created_unix: now(),
    };
    put_image(pool, &img)?;
    Ok(img)
}

/// The layers below a volume: those of the image whose top is its parent, if any.
fn inherited_layers(pool: &Pool, parent: Option<u32>) -> Result<Vec<LayerEntry>> {
    let Some(p) = parent else { return Ok(Vec::new()) };
    Ok(images(pool)?
        .into_iter()
        .find(|i| i.top == p)
        .map(|i| i.layers.into_iter().map(|l| LayerEntry { created: false, ..l }).collect())
        .unwrap_or_default())
}

/// What `image rm` removed.
#[derive(Debug, Clone, Serialize)]
pub struct Removed {
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
    let rec = image(pool, name)?.ok_or_else(|| {
        Error::invalid("image", format!("no image '{name}' in pool '{}'; `rcx-dm image list` shows them", pool.name()))
    })?;
    remove_durable(&image_path(pool, name))?;
    let others = images(pool)?;
    let used_elsewhere = |id: u32| others.iter().any(|i| i.top == id || i.layers.iter().any(|l| l.volume == id));
    let mut out = Removed { image: name.to_string(), deleted_volumes: Vec::new(), kept_volumes: Vec::new() };
    for l in rec.layers.iter().rev() {
        let has_children = pool.volumes()?.iter().any(|v| v.parent == Some(l.volume));
        if used_elsewhere(l.volume) || has_children {
            out.kept_volumes.push(l.volume);
            continue;
        }
        match pool.delete(&VolRef::Id(l.volume), true) {
            Ok(()) | Err(Error::NoSuchVolume { .. }) => out.deleted_volumes.push(l.volume),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The image's top volume, for `snap`/`run` given an image name.
pub fn top_volume(pool: &Pool, name: &str) -> Result<Option<u32>> {
    if validate_image_name(name).is_err() {
        return Ok(None);
    }
    Ok(image(pool, name)?.map(|i| i.top))
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
            layers: vec![LayerEntry { chain_id: Some(oci::Digest::of(b"x").to_string()), volume: 3, created: true }],
            top: 3,
            manifest: None,
            committed_from: Some(1),
            created_unix: 5,
        };
        let j = serde_json::to_string(&r).unwrap();
        assert!(j.contains("\"fs\":\"xfs\""));
        assert_eq!(serde_json::from_str::<ImageRecord>(&j).unwrap(), r);
    }
}
