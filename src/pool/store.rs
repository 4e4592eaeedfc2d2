//! The pool's state store: one small JSON file per record, written durably (temp file, fsync,
//! rename, fsync of the directory). Every lookup is one file by key, so an operation costs the
//! same with 10 or 10,000 volumes; only listing reads the whole directory.
//!
//! Layout under `<root>/<pool>/`:
//!
//! ```text
//!   pool.json          PoolConfig
//!   volumes/<id>.json  VolumeRecord
//!   names/<name>       the id that name refers to (linked into place with link(2), which
//!                      fails if the name exists: names are unique)
//!   intent.json        the one volume operation in flight (serialised by the lock)
//!   extend.json        a `pool extend` in flight (see `ExtendIntent`)
//!   next-id            allocation hint, not authoritative
//! ```

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::durable::{read_json, remove_durable, sync_dir, write_json, IntentFile};
use crate::error::{Error, IoContext, Result};

/// Where a pool's data or metadata lives; in pool.json as `{"kind": "file" or "device",
/// "path": ...}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "kind", content = "path")]
pub enum Backing {
    /// A sparse file under the pool directory, attached to a loop device on activation.
    File(PathBuf),
    /// A block device the caller owns.
    Device(PathBuf),
}

impl Backing {
    /// The sparse file's or the block device's path.
    pub fn path(&self) -> &Path {
        match self {
            Backing::File(p) | Backing::Device(p) => p,
        }
    }
}

/// A pool's configuration (`pool.json`): backing, sizes (in bytes), the thin-pool table's
/// options and the pool's policies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolConfig {
    /// The pool's name (its directory under the root; not the escaped dm name).
    pub name: String,
    /// Where the data lives: `data.img` in the pool directory, or the caller's block device.
    pub data: Backing,
    /// Where the metadata lives: `meta.img` in the pool directory, or the caller's block device.
    pub meta: Backing,
    /// Data size in bytes, a whole number of pool blocks: the thin-pool table's length. While an
    /// `ExtendIntent` is pending its new size wins; this is updated last.
    pub data_bytes: u64,
    /// Metadata size in bytes; the kernel uses it in 4 KiB metadata blocks, and no more than
    /// `MAX_META_BYTES` of it.
    pub meta_bytes: u64,
    /// Pool block size in bytes (64 KiB to 1 GiB, a multiple of 64 KiB); the table takes it in
    /// 512-byte sectors.
    pub block_bytes: u64,
    /// The kernel's low-water mark in pool blocks, used while auto-extend is off (with it on, the
    /// mark comes from the threshold: `Autoextend::low_water_blocks`).
    pub low_water_blocks: u64,
    /// The kernel zeroes newly provisioned blocks (false: `skip_block_zeroing` in the table).
    pub zero_new_blocks: bool,
    /// Writes to a full pool fail at once instead of queueing (`error_if_no_space` in the table).
    pub error_if_no_space: bool,
    /// When and how far `pool monitor` (and `serve`) grow the pool. Pools made before
    /// auto-extend existed read the defaults.
    #[serde(default)]
    pub autoextend: super::autoextend::Autoextend,
    /// Discard a volume's blocks before deleting it, so the kernel passes the discards down to
    /// the backing file and the host gets the space back.
    #[serde(default = "yes")]
    pub discard_on_delete: bool,
}

fn yes() -> bool {
    true
}

/// One volume's record (`volumes/<id>.json`), written once the kernel has committed the volume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeRecord {
    /// The thin device id in the kernel's pool metadata (24 bits: 0 to `MAX_THIN_ID`); the
    /// record's key.
    pub id: u32,
    /// The user's name for the volume, claimed in `names/<name>`; None for an unnamed volume.
    pub name: Option<String>,
    /// The id of the volume this one was snapshotted from (or, after a revert or `set_parent`,
    /// took its content from); None for a volume created empty.
    pub parent: Option<u32>,
    /// Virtual size in bytes, a multiple of 512 (the thin table's length in sectors times 512).
    pub size_bytes: u64,
    /// The pool transaction id that committed this volume.
    pub txid: u64,
    /// Bring the volume back when the pool is activated (it was active when last used).
    pub autoactivate: bool,
    /// A base (image) volume: `rcx-dm run` never writes to it, it runs a fresh snapshot of it.
    #[serde(default)]
    pub read_only: bool,
}

/// The one volume operation in flight (`intent.json`), recorded before the kernel is touched.
/// If it does not finish, the next command, under the pool lock, rolls it forward or back as
/// the kernel's transaction id says (`txid` is the id before the operation; see `recover.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Intent {
    /// `create_thin` or `snapshot`: committed when the kernel's transaction id is `txid + 1`
    /// (the record and name are written), undone when it is still `txid` (the thin id deleted,
    /// the record and name dropped).
    Create {
        /// The new volume's thin id.
        id: u32,
        /// The name it claims, if any.
        name: Option<String>,
        /// The origin's thin id for a snapshot; None for an empty volume.
        parent: Option<u32>,
        /// Its virtual size in bytes.
        size_bytes: u64,
        /// The pool's transaction id before the operation.
        txid: u64,
    },
    /// `delete`: once recorded, always rolled forward (discard when `discard_on_delete`, the
    /// kernel's delete, commit to `txid + 1`, record and name removed).
    Delete {
        /// The thin id of the volume being deleted.
        id: u32,
        /// Its name, released at the end; None for an unnamed volume.
        name: Option<String>,
        /// The pool's transaction id before the delete.
        txid: u64,
    },
    /// `revert`: volume `id` gets `snapshot`'s content, keeping its id and name. `tmp` is a
    /// scratch thin id; the kernel's transaction id counts the steps done (see `revert.rs`).
    Revert {
        /// The volume that gets the snapshot's content (and keeps this thin id).
        id: u32,
        /// The thin id of the snapshot whose content it gets.
        snapshot: u32,
        /// The scratch thin id holding the content between steps 1 and 3; no record uses it.
        tmp: u32,
        /// The pool's transaction id before step 1; the kernel's id less this counts the steps
        /// done (0 to 4).
        txid: u64,
        /// Whether the volume was active, so its device is loaded again at the end.
        reactivate: bool,
    },
}

/// A `pool extend` in flight: backing storage and the pool's table grow from the `old_*` to the
/// `new_*` sizes; always rolled forward (see `extend.rs`). Kept in its own file, apart from the
/// volume operation in `intent.json`: a full pool may hold a create or delete that can only finish
/// once the pool has grown, and the extend must neither wait for it nor overwrite it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExtendIntent {
    /// Data size in bytes before the extend.
    pub old_data_bytes: u64,
    /// Data size in bytes to grow to (a whole number of pool blocks).
    pub new_data_bytes: u64,
    /// Metadata size in bytes before the extend.
    pub old_meta_bytes: u64,
    /// Metadata size in bytes to grow to (a multiple of the 4 KiB metadata block).
    pub new_meta_bytes: u64,
}

/// A pool's state directory (`<root>/<pool>/`) and the records in it. It takes no lock itself:
/// callers that change records hold the pool lock.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store in `dir` (`<root>/<pool>`); nothing is read or created until used (see `init`).
    pub fn new(dir: PathBuf) -> Store {
        Store { dir }
    }

    /// The pool's state directory, `<root>/<pool>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Make the directory skeleton for a new pool.
    pub fn init(&self) -> Result<()> {
        for d in [self.dir.clone(), self.dir.join("volumes"), self.dir.join("names")] {
            fs::create_dir_all(&d).ctx(|| format!("creating {}", d.display()))?;
        }
        Ok(())
    }

    /// Path of the pool's configuration, `<dir>/pool.json`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("pool.json")
    }

    /// The pool's configuration; None when pool.json does not exist (no such pool, or a
    /// `pool create` that never finished).
    pub fn config(&self) -> Result<Option<PoolConfig>> {
        read_json(&self.config_path())
    }

    /// Write pool.json durably (temp file, fsync, rename, fsync of the directory).
    pub fn put_config(&self, c: &PoolConfig) -> Result<()> {
        write_json(&self.config_path(), c)
    }

    fn volume_path(&self, id: u32) -> PathBuf {
        self.dir.join("volumes").join(format!("{id}.json"))
    }

    /// Volume `id`'s record; None when it has none.
    pub fn volume(&self, id: u32) -> Result<Option<VolumeRecord>> {
        read_json(&self.volume_path(id))
    }

    /// Whether volume `id` has a record (the file exists; nothing is parsed).
    pub fn has_volume(&self, id: u32) -> bool {
        self.volume_path(id).exists()
    }

    /// Write a volume's record durably, replacing any earlier one for its id.
    pub fn put_volume(&self, v: &VolumeRecord) -> Result<()> {
        write_json(&self.volume_path(v.id), v)
    }

    /// Remove volume `id`'s record durably; a missing record is not an error.
    pub fn remove_volume(&self, id: u32) -> Result<()> {
        remove_durable(&self.volume_path(id))
    }

    /// All volume records, by id.
    pub fn volumes(&self) -> Result<Vec<VolumeRecord>> {
        let dir = self.dir.join("volumes");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
            let e = e.ctx(|| format!("listing {}", dir.display()))?;
            let name = e.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")).and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(v) = self.volume(id)? {
                out.push(v);
            }
        }
        out.sort_by_key(|v| v.id);
        Ok(out)
    }

    /// Number of volume records, counted without reading them.
    pub fn volume_count(&self) -> Result<usize> {
        let dir = self.dir.join("volumes");
        Ok(fs::read_dir(&dir)
            .ctx(|| format!("listing {}", dir.display()))?
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".json")))
            .count())
    }

    fn name_path(&self, name: &str) -> PathBuf {
        self.dir.join("names").join(name)
    }

    /// The id that volume name `name` refers to; None when it is unclaimed (or its claim was torn
    /// by a crash). A name file holding anything but an id is `Error::Inconsistent`.
    pub fn lookup_name(&self, name: &str) -> Result<Option<u32>> {
        match fs::read_to_string(self.name_path(name)) {
            // Empty: a claim torn by a crash of an older rcx-dm, which created the file before
            // writing it. The claim never completed (it precedes the volume's record), so the
            // name is free.
            Ok(s) if s.trim().is_empty() => Ok(None),
            Ok(s) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| Error::Inconsistent(format!("name file for '{name}' holds '{s}'"))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx(|| format!("reading name '{name}'")),
        }
    }

    /// Reserve `name` for `id`; refused if the name is taken by another id.
    pub fn claim_name(&self, name: &str, id: u32) -> Result<()> {
        let path = self.name_path(name);
        // Written whole under a scratch name, then linked into place: link(2) fails if the
        // name exists, and a crash leaves either no claim or a complete one. Callers hold the
        // pool lock (an flock per call, so threads of one process too): one scratch name a
        // process is enough.
        let tmp = self.dir.join(format!("name-claim.tmp.{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let mut f = File::create(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
        f.write_all(id.to_string().as_bytes()).ctx(|| format!("writing {}", tmp.display()))?;
        f.sync_all().ctx(|| format!("syncing {}", tmp.display()))?;
        drop(f);
        let mut linked = fs::hard_link(&tmp, &path);
        if matches!(&linked, Err(e) if e.kind() == ErrorKind::AlreadyExists) && self.lookup_name(name)?.is_none() {
            // A torn claim (see lookup_name): replace it.
            remove_durable(&path)?;
            linked = fs::hard_link(&tmp, &path);
        }
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => sync_dir(path.parent().unwrap_or(&self.dir)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => match self.lookup_name(name)? {
                Some(other) if other == id => Ok(()),
                _ => Err(Error::Exists(format!("a volume named '{name}'"))),
            },
            Err(e) => Err(e).ctx(|| format!("claiming the name {}", path.display())),
        }
    }

    /// Drop `name` if it still refers to `id`.
    pub fn release_name(&self, name: &str, id: u32) -> Result<()> {
        if self.lookup_name(name)? == Some(id) {
            remove_durable(&self.name_path(name))?;
        }
        Ok(())
    }

    /// The volume operation in flight (`intent.json`).
    pub fn intent(&self) -> IntentFile<Intent> {
        IntentFile::new(self.dir.join("intent.json"))
    }

    /// The `pool extend` in flight (`extend.json`).
    pub fn extend_intent(&self) -> IntentFile<ExtendIntent> {
        IntentFile::new(self.dir.join("extend.json"))
    }

    /// Where automatic id allocation starts looking (`next-id`); 0 when the file is missing or
    /// unreadable.
    pub fn next_id_hint(&self) -> u32 {
        fs::read_to_string(self.dir.join("next-id")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
    }

    /// Only a hint for where allocation starts looking, so no fsync.
    pub fn set_next_id_hint(&self, id: u32) {
        let _ = fs::write(self.dir.join("next-id"), id.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::remove_stale_temps;

    fn rec(id: u32) -> VolumeRecord {
        VolumeRecord { id, name: None, parent: None, size_bytes: 1 << 30, txid: 1, autoactivate: true, read_only: false }
    }

    /// A power cut between a temp file's fsync and its rename leaves `*.tmp.<pid>` files that,
    /// before `remove_stale_temps`, no later command removed.
    #[test]
    fn stale_temps_of_dead_processes_go_at_any_depth_and_live_ones_stay() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path().join("p"));
        s.init().unwrap();
        s.put_volume(&rec(1)).unwrap();
        let dead_top = d.path().join("p/intent.tmp.4294967295");
        let dead_deep = d.path().join("p/volumes/2.tmp.4294967295");
        let live = d.path().join(format!("p/volumes/3.tmp.{}", std::process::id()));
        for f in [&dead_top, &dead_deep, &live] {
            fs::write(f, b"{").unwrap();
        }
        // A link out of the store is not walked.
        let outside = tempfile::tempdir().unwrap();
        let foreign = outside.path().join("x.tmp.4294967295");
        fs::write(&foreign, b"").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("p/elsewhere")).unwrap();
        assert_eq!(remove_stale_temps(&d.path().join("p")).unwrap(), 2);
        assert!(!dead_top.exists() && !dead_deep.exists());
        assert!(live.exists() && foreign.exists());
        assert_eq!(s.volumes().unwrap(), vec![rec(1)]);
        assert_eq!(remove_stale_temps(&d.path().join("missing")).unwrap(), 0);
    }

    #[test]
    fn volumes_round_trip_and_list_in_id_order() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path().join("p"));
        s.init().unwrap();
        for id in [5, 1, 16_777_215] {
            s.put_volume(&rec(id)).unwrap();
        }
        assert_eq!(s.volume(5).unwrap(), Some(rec(5)));
        let ids: Vec<u32> = s.volumes().unwrap().iter().map(|v| v.id).collect();
        assert_eq!(ids, vec![1, 5, 16_777_215]);
        s.remove_volume(5).unwrap();
        s.remove_volume(5).unwrap(); // idempotent
        assert_eq!(s.volume_count().unwrap(), 2);
    }

    #[test]
    fn names_are_unique_and_released_only_by_their_owner() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path().join("p"));
        s.init().unwrap();
        s.claim_name("web", 1).unwrap();
        s.claim_name("web", 1).unwrap(); // same owner: fine
        assert!(matches!(s.claim_name("web", 2), Err(Error::Exists(_))));
        // The claim leaves no scratch file behind.
        let left: Vec<_> = fs::read_dir(&s.dir).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains(".tmp.")).collect();
        assert!(left.is_empty(), "{left:?}");
        s.release_name("web", 2).unwrap();
        assert_eq!(s.lookup_name("web").unwrap(), Some(1));
        s.release_name("web", 1).unwrap();
        assert_eq!(s.lookup_name("web").unwrap(), None);
    }

    #[test]
    fn intent_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path().join("p"));
        s.init().unwrap();
        assert_eq!(s.intent().get().unwrap(), None);
        let i = Intent::Create { id: 3, name: Some("a".into()), parent: Some(1), size_bytes: 512, txid: 9 };
        s.intent().put(&i).unwrap();
        assert_eq!(s.intent().get().unwrap(), Some(i));
        s.intent().clear().unwrap();
        assert_eq!(s.intent().get().unwrap(), None);
    }

    /// An older rcx-dm created the name file before writing it, so a kill
    /// in between left an empty file that made every later command fail.
    #[test]
    fn a_torn_name_claim_is_free_and_can_be_claimed_again() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path().join("p"));
        s.init().unwrap();
        std::fs::write(s.name_path("web"), "").unwrap();
        assert_eq!(s.lookup_name("web").unwrap(), None);
        s.claim_name("web", 7).unwrap();
        assert_eq!(s.lookup_name("web").unwrap(), Some(7));
        assert!(matches!(s.claim_name("web", 8), Err(Error::Exists(_))));
    }
}
