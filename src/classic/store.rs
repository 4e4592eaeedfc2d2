//! Records of classic origins and snapshots, beside the pool's own store and written the
//! same durable way (its helpers: temp file, fsync, rename, fsync of the directory).
//!
//! Layout under `<root>/<pool>/classic/` (`cows/` and the intent's `cow_*` ops are the names
//! snapshots had on disk before the code called them snapshots; they stay for existing pools):
//!
//! ```text
//!   origins/<name>.json  OriginRecord (with the merge in progress, if any)
//!   cows/<name>.json     SnapshotRecord
//!   intent.json          the one create/delete in flight (serialised by `lock`)
//!   <name>.img           sparse backing file of an origin made with --size
//!   <name>.cow           sparse backing file of a COW store
//!   lock                 flock around each operation's short critical section
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dm::Persistence;
use crate::error::{IoContext, Result};
use crate::durable::{json, read_json, remove_durable, write_durable, IntentFile};

/// What an origin's `-real` linear device maps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum OriginBacking {
    /// A sparse file made by `origin create --size` (removed with the origin).
    File {
        /// The file, under the classic directory.
        path: PathBuf,
    },
    /// A thin volume of the pool (kept when the origin is deleted).
    Volume {
        /// The volume's thin id.
        id: u32,
    },
    /// A block device the caller owns (kept).
    Device {
        /// The device node.
        path: PathBuf,
    },
}

/// What a snapshot's `-cow` linear device maps; removed with the snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CowBacking {
    /// A sparse file under the classic directory.
    File {
        /// The file (`<snapshot>.cow`).
        path: PathBuf,
    },
    /// A thin volume of the pool, named `<snapshot>.cow`.
    Volume {
        /// The volume's name.
        name: String,
    },
}

/// How far a recorded merge has gone.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MergePhase {
    /// Decided and (once the snapshot device is gone) running in the kernel.
    Started,
    /// The kernel finished; what is left is swapping back to snapshot-origin and freeing the COW.
    Done,
}

/// A merge in progress, kept in its origin's record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MergeRecord {
    /// The snapshot being merged.
    pub snap: String,
    /// How far it has gone.
    pub phase: MergePhase,
    /// Data sectors in the COW when the merge started, for progress.
    pub data_sectors_at_start: u64,
}

/// An origin (`origins/<name>.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OriginRecord {
    /// Its name.
    pub name: String,
    /// What its `-real` device maps.
    pub backing: OriginBacking,
    /// Its size.
    pub size_bytes: u64,
    /// The merge in progress into it, if any.
    pub merge: Option<MergeRecord>,
}

/// A snapshot (`cows/<name>.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// Its name.
    pub name: String,
    /// The origin it is a snapshot of.
    pub origin: String,
    /// Its COW store.
    pub backing: CowBacking,
    /// Size of the COW store.
    pub size_bytes: u64,
    /// Chunk size in sectors.
    pub chunk_sectors: u64,
    /// Persistent or transient exception table.
    pub persistence: Persistence,
}

/// A create or delete that may have touched the kernel but not finished. Creates roll back
/// unless their record was written (the last step); deletes always roll forward.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum ClassicIntent {
    /// Creating an origin.
    OriginCreate {
        /// The origin.
        name: String,
        /// Its backing (a sparse file here is removed on roll-back).
        backing: OriginBacking,
    },
    /// Deleting an origin.
    OriginDelete {
        /// The origin.
        name: String,
    },
    /// Creating a snapshot.
    #[serde(rename = "cow_create")]
    SnapshotCreate {
        /// The snapshot.
        name: String,
        /// Its origin (suspended while its snapshot device is removed on roll-back).
        origin: String,
        /// Its COW store (freed on roll-back).
        backing: CowBacking,
    },
    /// Deleting a snapshot.
    #[serde(rename = "cow_delete")]
    SnapshotDelete {
        /// The snapshot.
        name: String,
    },
}

/// The classic records of one pool, in `<pool dir>/classic`.
pub struct ClassicStore {
    dir: PathBuf,
}

impl ClassicStore {
    /// The store in `dir` (nothing is read or made until a call).
    pub fn new(dir: PathBuf) -> ClassicStore {
        ClassicStore { dir }
    }

    /// The classic directory (also where the lock and sparse files live).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether any classic device was ever made in this pool (nothing to do otherwise).
    pub fn exists(&self) -> bool {
        self.dir.join("origins").is_dir()
    }

    /// Make the directories (before the first lock).
    pub fn init(&self) -> Result<()> {
        for d in [self.dir.clone(), self.dir.join("origins"), self.dir.join("cows")] {
            fs::create_dir_all(&d).ctx(|| format!("creating {}", d.display()))?;
        }
        Ok(())
    }

    fn origin_path(&self, name: &str) -> PathBuf {
        self.dir.join("origins").join(format!("{name}.json"))
    }

    fn snapshot_path(&self, name: &str) -> PathBuf {
        self.dir.join("cows").join(format!("{name}.json"))
    }

    /// Where a new sparse backing file for `name` goes (`img` for origins, `cow` for COW stores).
    pub fn file_for(&self, name: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{name}.{ext}"))
    }

    /// The record of origin `name`, if any.
    pub fn origin(&self, name: &str) -> Result<Option<OriginRecord>> {
        read_json(&self.origin_path(name))
    }

    /// Write an origin's record durably.
    pub fn put_origin(&self, o: &OriginRecord) -> Result<()> {
        write_durable(&self.origin_path(&o.name), &json(o)?)
    }

    /// Forget origin `name` (gone already is fine).
    pub fn remove_origin(&self, name: &str) -> Result<()> {
        remove_durable(&self.origin_path(name))
    }

    /// The record of snapshot `name`, if any.
    pub fn snapshot(&self, name: &str) -> Result<Option<SnapshotRecord>> {
        read_json(&self.snapshot_path(name))
    }

    /// Write a snapshot's record durably.
    pub fn put_snapshot(&self, c: &SnapshotRecord) -> Result<()> {
        write_durable(&self.snapshot_path(&c.name), &json(c)?)
    }

    /// Forget snapshot `name` (gone already is fine).
    pub fn remove_snapshot(&self, name: &str) -> Result<()> {
        remove_durable(&self.snapshot_path(name))
    }

    /// Origins and snapshots share one name space (their dm names share one too).
    pub fn name_taken(&self, name: &str) -> bool {
        self.origin_path(name).exists() || self.snapshot_path(name).exists()
    }

    fn list<T: serde::de::DeserializeOwned>(&self, sub: &str) -> Result<Vec<T>> {
        let dir = self.dir.join(sub);
        let mut names = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).ctx(|| format!("listing {}", dir.display())),
        };
        for e in entries {
            let e = e.ctx(|| format!("listing {}", dir.display()))?;
            if let Some(n) = e.file_name().to_str().and_then(|n| n.strip_suffix(".json")) {
                names.push(n.to_string());
            }
        }
        names.sort();
        let mut out = Vec::new();
        for n in names {
            if let Some(r) = read_json(&dir.join(format!("{n}.json")))? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Every origin's record, by name.
    pub fn origins(&self) -> Result<Vec<OriginRecord>> {
        self.list("origins")
    }

    /// Every snapshot's record, by name.
    pub fn snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        self.list("cows")
    }

    /// The records of `origin`'s snapshots, by name.
    pub fn snapshots_of(&self, origin: &str) -> Result<Vec<SnapshotRecord>> {
        Ok(self.snapshots()?.into_iter().filter(|c| c.origin == origin).collect())
    }

    /// The classic operation in flight (`intent.json`): put durably before it touches
    /// anything, cleared when it finished or was recovered.
    pub fn intent(&self) -> IntentFile<ClassicIntent> {
        IntentFile::new(self.dir.join("intent.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_share_one_name_space() {
        let d = tempfile::tempdir().unwrap();
        let s = ClassicStore::new(d.path().join("classic"));
        assert!(!s.exists());
        assert_eq!(s.origins().unwrap(), vec![]);
        s.init().unwrap();
        assert!(s.exists());
        let o = OriginRecord {
            name: "base".into(),
            backing: OriginBacking::File { path: s.file_for("base", "img") },
            size_bytes: 1 << 30,
            merge: Some(MergeRecord { snap: "s1".into(), phase: MergePhase::Started, data_sectors_at_start: 80 }),
        };
        s.put_origin(&o).unwrap();
        let c = SnapshotRecord {
            name: "s1".into(),
            origin: "base".into(),
            backing: CowBacking::Volume { name: "s1.cow".into() },
            size_bytes: 64 << 20,
            chunk_sectors: 8,
            persistence: Persistence::Persistent,
        };
        s.put_snapshot(&c).unwrap();
        s.put_snapshot(&SnapshotRecord { name: "s0".into(), origin: "other".into(), ..c.clone() }).unwrap();
        assert_eq!(s.origin("base").unwrap(), Some(o));
        assert_eq!(s.snapshots_of("base").unwrap(), vec![c]);
        assert_eq!(s.snapshots().unwrap().len(), 2);
        assert!(s.name_taken("base") && s.name_taken("s1") && !s.name_taken("s2"));
        s.remove_snapshot("s1").unwrap();
        s.remove_snapshot("s1").unwrap();
        assert!(!s.name_taken("s1"));
        let i = ClassicIntent::SnapshotCreate { name: "s2".into(), origin: "base".into(), backing: CowBacking::File { path: "/x".into() } };
        s.intent().put(&i).unwrap();
        assert_eq!(s.intent().get().unwrap(), Some(i));
        s.intent().clear().unwrap();
        assert_eq!(s.intent().get().unwrap(), None);
    }

    #[test]
    fn snapshot_intents_keep_their_on_disk_op_names() {
        let create = ClassicIntent::SnapshotCreate { name: "s".into(), origin: "o".into(), backing: CowBacking::File { path: "/x".into() } };
        let delete = ClassicIntent::SnapshotDelete { name: "s".into() };
        assert_eq!(serde_json::to_value(&create).unwrap()["op"], "cow_create");
        assert_eq!(serde_json::to_value(&delete).unwrap()["op"], "cow_delete");
        let old: ClassicIntent = serde_json::from_str(r#"{"op":"cow_delete","name":"s"}"#).unwrap();
        assert_eq!(old, delete);
    }
}
