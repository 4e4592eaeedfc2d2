//! Origins: create (a `-real` linear over the backing, the snapshot-origin device over that),
//! delete, and the read side (`origin list`).

use std::path::{Path, PathBuf};

use super::store::{ClassicIntent, OriginBacking, OriginRecord};
use super::{in_use, live_target, validate_name, Classic, OriginSource, OriginView};
use crate::dm::{self, Dm};
use crate::error::{Error, IoContext, Result};
use crate::loopback;
use crate::pool::fault;
use crate::pool::VolRef;
use crate::units::SECTOR;

impl Classic<'_> {
    /// Create origin `name`: its `-real` linear over the source and the snapshot-origin
    /// device. Returns the origin with its device path.
    pub fn create_origin(&self, name: &str, source: OriginSource) -> Result<OriginView> {
        validate_name(name)?;
        let dm = Dm::open()?;
        {
            let _l = self.lock()?;
            self.settle(&dm)?;
            self.check_free(&dm, name)?;
            let (backing, size) = match &source {
                OriginSource::Size(b) => (OriginBacking::File { path: self.store.file_for(name, "img") }, *b),
                OriginSource::Volume(v) => {
                    let rec = self.pool.resolve(v)?;
                    (OriginBacking::Volume { id: rec.id }, rec.size_bytes)
                }
                OriginSource::Device(p) => (OriginBacking::Device { path: p.clone() }, loopback::block_device(p)?.1),
            };
            if size == 0 || size % SECTOR != 0 {
                return Err(Error::invalid("origin size", format!("{size} bytes; must be a positive multiple of 512")));
            }
            self.store.intent().put(&ClassicIntent::OriginCreate { name: name.to_string(), backing: backing.clone() })?;
            let made = (|| {
                fault::point("origin-create.intent")?;
                if let OriginBacking::File { path } = &backing {
                    loopback::create_sparse(path, size)?;
                }
                let rec = OriginRecord { name: name.to_string(), backing, size_bytes: size, merge: None };
                if !matches!(rec.backing, OriginBacking::File { .. }) {
                    // Writes that go around the origin would corrupt its snapshots: the
                    // device must not be in use (O_EXCL fails on a mounted or claimed device).
                    let dev = self.origin_backing_dev(&rec.backing)?;
                    exclusive_check(&dev, "device", name)?;
                }
                self.bring_up(&dm, &rec)?;
                fault::point("origin-create.loaded")?;
                self.store.put_origin(&rec)
            })();
            self.finish_intent(&dm, made)?;
        }
        self.origin(name)
    }

    /// Delete origin `name` (refused while it has snapshots or is open). Its sparse file goes
    /// with it; a pool volume or device it sat on keeps the merged content.
    pub fn delete_origin(&self, name: &str) -> Result<()> {
        let dm = Dm::open()?;
        let _l = self.lock()?;
        self.settle(&dm)?;
        let o = self.store.origin(name)?.ok_or_else(|| self.no_such("origin", name))?;
        let snaps: Vec<String> = self.store.snapshots_of(name)?.into_iter().map(|c| c.name).collect();
        if !snaps.is_empty() {
            return Err(Error::OriginHasSnapshots { origin: name.to_string(), snaps: snaps.join(", ") });
        }
        if let Some(i) = self.info(&dm, &self.dev_name(name))? {
            if i.open_count > 0 {
                return Err(in_use("origin", name, i.open_count, "unmount it first"));
            }
        }
        self.store.intent().put(&ClassicIntent::OriginDelete { name: o.name })?;
        let done = fault::point("origin-delete.intent").and_then(|_| self.recover_intent(&dm, true));
        self.finish_intent(&dm, done)
    }

    /// Origin `name` with its device and live target (after finishing what an interrupted
    /// command left, if anything).
    pub fn origin(&self, name: &str) -> Result<OriginView> {
        let dm = Dm::open()?;
        self.settle_quick(&dm)?;
        let o = self.store.origin(name)?.ok_or_else(|| self.no_such("origin", name))?;
        self.origin_view(&dm, &o)
    }

    /// Every origin of the pool, by name (empty when the pool never had one).
    pub fn origins(&self) -> Result<Vec<OriginView>> {
        if !self.store.exists() {
            return Ok(Vec::new());
        }
        let dm = Dm::open()?;
        self.settle_quick(&dm)?;
        self.store.origins()?.iter().map(|o| self.origin_view(&dm, o)).collect()
    }

    fn origin_view(&self, dm: &Dm, o: &OriginRecord) -> Result<OriginView> {
        let dev = self.dev_name(&o.name);
        let (device, target) = match self.info(dm, &dev)? {
            Some(i) => (Some(dm::node::existing(&dev, i.dev)), live_target(dm, &dev)?),
            None => (None, None),
        };
        Ok(OriginView {
            name: o.name.clone(),
            size_bytes: o.size_bytes,
            backing: o.backing.clone(),
            device,
            target,
            merging: o.merge.as_ref().map(|m| m.snap.clone()),
            snapshots: self.store.snapshots_of(&o.name)?.into_iter().map(|c| c.name).collect(),
        })
    }

    /// The block device under an origin's `-real` linear, made ready (loop attached, pool
    /// volume activated).
    pub(super) fn origin_backing_dev(&self, b: &OriginBacking) -> Result<PathBuf> {
        match b {
            OriginBacking::File { path } => loopback::attach(path),
            OriginBacking::Volume { id } => self.pool.activate_volume(&VolRef::Id(*id)),
            OriginBacking::Device { path } => Ok(path.clone()),
        }
    }
}

/// A device is free for us when it can be opened exclusively (not mounted, not claimed).
fn exclusive_check(dev: &Path, what: &'static str, name: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_EXCL).open(dev) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(in_use(
            what,
            &format!("{} (for origin {name})", dev.display()),
            1,
            "unmount it first; from now on write only through the origin, or its snapshots go wrong",
        )),
        Err(e) => Err(e).ctx(|| format!("opening {}", dev.display())),
    }
}
