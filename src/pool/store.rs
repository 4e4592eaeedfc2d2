//! The pool's state store: one small JSON file per record, written durably (temp file, fsync,
//! rename, fsync of the directory). Every lookup is one file by key, so an operation costs the
//! same with 10 or 10,000 volumes; only listing reads the whole directory.
//!
//! Layout under `<root>/<pool>/`:
//!   pool.json          PoolConfig
//!   volumes/<id>.json  VolumeRecord
//!   names/<name>       the id that name refers to (created with O_EXCL: names are unique)
//!   intent.json        the one volume operation in flight (serialised by the lock)
//!   extend.json        a `pool extend` in flight (see `ExtendIntent`)
//!   next-id            allocation hint, not authoritative

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::durable::{read_json, remove_durable, sync_dir, write_json, IntentFile};
use crate::error::{Error, IoContext, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "kind", content = "path")]
pub enum Backing {
    /// A sparse file under the pool directory, attached to a loop device on activation.
    File(PathBuf),
    /// A block device the caller owns.
    Device(PathBuf),
}

impl Backing {
    pub fn path(&self) -> &Path {
        match self {
            Backing::File(p) | Backing::Device(p) => p,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolConfig {
    pub name: String,
    pub data: Backing,
    pub meta: Backing,
    pub data_bytes: u64,
    pub meta_bytes: u64,
    pub block_bytes: u64,
    pub low_water_blocks: u64,
    pub zero_new_blocks: bool,
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeRecord {
    pub id: u32,
    pub name: Option<String>,
    pub parent: Option<u32>,
    pub size_bytes: u64,
    /// The pool transaction id that committed this volume.
    pub txid: u64,
    /// Bring the volume back when the pool is activated (it was active when last used).
    pub autoactivate: bool,
    /// A base (image) volume: `rcx-dm run` never writes to it, it runs a fresh snapshot of it.
    #[serde(default)]
    pub read_only: bool,
}

/// An operation that may have touched the kernel but not finished: rolled forward or back
/// by `Pool::recover`, decided by the pool's transaction id (`txid` is the id before it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Intent {
    Create { id: u32, name: Option<String>, parent: Option<u32>, size_bytes: u64, txid: u64 },
    Delete { id: u32, name: Option<String>, txid: u64 },
    /// `revert`: volume `id` gets `snapshot`'s content, keeping its id and name. `tmp` is a
    /// scratch thin id; the kernel's transaction id counts the steps done (see `revert.rs`).
    Revert { id: u32, snapshot: u32, tmp: u32, txid: u64, reactivate: bool },
}

/// A `pool extend` in flight: backing storage and the pool's table grow from the `old_*` to the
/// `new_*` sizes; always rolled forward (see `extend.rs`). Kept in its own file, apart from the
/// volume operation in `intent.json`: a full pool may hold a create or delete that can only finish
/// once the pool has grown, and the extend must neither wait for it nor overwrite it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExtendIntent {
    pub old_data_bytes: u64,
    pub new_data_bytes: u64,
    pub old_meta_bytes: u64,
    pub new_meta_bytes: u64,
}

pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: PathBuf) -> Store {
        Store { dir }
    }

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

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("pool.json")
    }

    pub fn config(&self) -> Result<Option<PoolConfig>> {
        read_json(&self.config_path())
    }

    pub fn put_config(&self, c: &PoolConfig) -> Result<()> {
        write_json(&self.config_path(), c)
    }

    fn volume_path(&self, id: u32) -> PathBuf {
        self.dir.join("volumes").join(format!("{id}.json"))
    }

    pub fn volume(&self, id: u32) -> Result<Option<VolumeRecord>> {
        read_json(&self.volume_path(id))
    }

    pub fn has_volume(&self, id: u32) -> bool {
        self.volume_path(id).exists()
    }

    pub fn put_volume(&self, v: &VolumeRecord) -> Result<()> {
        write_json(&self.volume_path(v.id), v)
    }

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

    /// Issue 13, defect 4: an older rcx-dm created the name file before writing it, so a kill
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
