//! Who still uses a volume. The pool knows volumes only; images (`rootfs::image`), serve's
//! snapshot records and classic origins/COWs keep volume ids in their own records, so deleting a
//! volume at the pool layer alone can pull a layer out from under an image or a container.
//! Front ends delete through [`delete_volume`], which refuses a volume any of them still holds.
//!
//! Snapshot children do not hold a thin volume here: dm-thin snapshots share blocks, not a
//! dependency, so deleting an origin leaves its snapshots intact (as `lvremove` does). Image
//! layers, whose children are the point, are kept by `image rm` while anything is made from them.

use crate::classic::store::{ClassicStore, CowBacking, OriginBacking};
use crate::error::{Error, Result};
use crate::pool::{Pool, VolRef};
use crate::rootfs::image;
use crate::serve::store::SnapStore;

/// What holds volume `id`, each as a short phrase naming the holder ("image web", ...).
pub fn holders(pool: &Pool, id: u32) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for i in image::images(pool)? {
        if i.top == id || i.layers.iter().any(|l| l.volume == id) {
            out.push(format!("image {} (`rcx-dm image rm {}`)", i.name, i.name));
        }
    }
    // Only read serve's records where serve has made them (opening the store creates them).
    if pool.dir().join("serve/snapshots").is_dir() {
        for r in SnapStore::open(pool.dir())?.all()? {
            if r.volume_id == Some(id) {
                out.push(format!("containerd snapshot {} of rcx-dm serve (`ctr snapshots rm`)", r.key));
            }
        }
    }
    let classic = pool.dir().join("classic");
    if classic.is_dir() {
        let store = ClassicStore::new(classic);
        for o in store.origins()? {
            if o.backing == (OriginBacking::Volume { id }) {
                out.push(format!("classic origin {} (`rcx-dm origin delete {}`)", o.name, o.name));
            }
        }
        for c in store.snapshots()? {
            if let CowBacking::Volume { name } = &c.backing {
                let cow_id = match pool.resolve(&VolRef::Name(name.clone())) {
                    Ok(r) => Some(r.id),
                    Err(Error::NoSuchVolume { .. }) => None,
                    Err(e) => return Err(e),
                };
                if cow_id == Some(id) {
                    out.push(format!("classic snapshot {}'s COW (`rcx-dm cow delete {}`)", c.name, c.name));
                }
            }
        }
    }
    Ok(out)
}

/// `Pool::delete`, refused with nothing changed while [`holders`] finds a holder.
pub fn delete_volume(pool: &Pool, v: &VolRef, force: bool) -> Result<()> {
    let rec = pool.resolve(v)?;
    let held = holders(pool, rec.id)?;
    if !held.is_empty() {
        return Err(Error::Referenced { vol: v.to_string(), holders: held });
    }
    pool.delete(&VolRef::Id(rec.id), force)?;
    // A populate of it that was killed may have left its scratch volume, which only the next
    // populate of this volume would remove: with the volume gone, nothing else ever would.
    let scratch = VolRef::Name(crate::rootfs::populate::scratch_name(rec.id));
    match pool.delete_if_exists(&scratch, true) {
        Ok(true) => tracing::info!(volume = rec.id, "removed the scratch volume an interrupted populate of it left"),
        Ok(false) => {}
        Err(e) => tracing::warn!(volume = rec.id, error = %e, "could not remove the scratch volume an interrupted populate left"),
    }
    Ok(())
}
