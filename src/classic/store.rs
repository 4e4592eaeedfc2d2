//! Records of classic origins and COW snapshots, beside the pool's own store and written the
//! same durable way (its helpers: temp file, fsync, rename, fsync of the directory).
//!
//! Layout under `<root>/<pool>/classic/`:
//!   origins/<name>.json  OriginRecord (with the merge in progress, if any)
//!   cows/<name>.json     CowRecord
//!   intent.json          the one create/delete in flight (serialised by `lock`)
//!   <name>.img           sparse backing file of an origin made with --size
//!   <name>.cow           sparse backing file of a COW store
//!   lock                 flock around each operation's short critical section

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dm::Persistence;
use crate::error::{IoContext, Result};
use crate::durable::{json, read_json, remove_durable, write_durable};

/// What an origin's `-real` linear device maps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum OriginBacking {
    /// A sparse file made by `origin create --size` (removed with the origin).
    File { path: PathBuf },
    /// A thin volume of the pool (kept when the origin is deleted).
    Volume { id: u32 },
    /// A block device the caller owns (kept).
    Device { path: PathBuf },
}

/// What a snapshot's `-cow` linear device maps; removed with the snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CowBacking {
    /// A sparse file under the classic directory.
    File { path: PathBuf },
    /// A thin volume of the pool, named `<snapshot>.cow`.
    Volume { name: String },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MergePhase {
    /// Decided and (once the snapshot device is gone) running in the kernel.
    Started,
    /// The kernel finished; what is left is swapping back to snapshot-origin and freeing the COW.
    Done,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MergeRecord {
    pub snap: String,
    pub phase: MergePhase,
    /// Data sectors in the COW when the merge started, for progress.
    pub data_sectors_at_start: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OriginRecord {
    pub name: String,
    pub backing: OriginBacking,
    pub size_bytes: u64,
    pub merge: Option<MergeRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CowRecord {
    pub name: String,
    pub origin: String,
    pub backing: CowBacking,
    pub size_bytes: u64,
    pub chunk_sectors: u64,
    pub persistence: Persistence,
}

/// A create or delete that may have touched the kernel but not finished. Creates roll back
/// unless their record was written (the last step); deletes always roll forward.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum ClassicIntent {
    OriginCreate { name: String, backing: OriginBacking },
    OriginDelete { name: String },
    CowCreate { name: String, origin: String, backing: CowBacking },
    CowDelete { name: String },
}

pub struct ClassicStore {
    dir: PathBuf,
}

impl ClassicStore {
    pub fn new(dir: PathBuf) -> ClassicStore {
        ClassicStore { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether any classic device was ever made in this pool (nothing to do otherwise).
    pub fn exists(&self) -> bool {
        self.dir.join("origins").is_dir()
    }

    pub fn init(&self) -> Result<()> {
        for d in [self.dir.clone(), self.dir.join("origins"), self.dir.join("cows")] {
            fs::create_dir_all(&d).ctx(|| format!("creating {}", d.display()))?;
        }
        Ok(())
    }

    fn origin_path(&self, name: &str) -> PathBuf {
        self.dir.join("origins").join(format!("{name}.json"))
    }

    fn cow_path(&self, name: &str) -> PathBuf {
        self.dir.join("cows").join(format!("{name}.json"))
    }

    /// Where a new sparse backing file for `name` goes (`img` for origins, `cow` for COWs).
    pub fn file_for(&self, name: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{name}.{ext}"))
    }

    pub fn origin(&self, name: &str) -> Result<Option<OriginRecord>> {
        read_json(&self.origin_path(name))
    }

    pub fn put_origin(&self, o: &OriginRecord) -> Result<()> {
        write_durable(&self.origin_path(&o.name), &json(o)?)
    }

    pub fn remove_origin(&self, name: &str) -> Result<()> {
        remove_durable(&self.origin_path(name))
    }

    pub fn cow(&self, name: &str) -> Result<Option<CowRecord>> {
        read_json(&self.cow_path(name))
    }

    pub fn put_cow(&self, c: &CowRecord) -> Result<()> {
        write_durable(&self.cow_path(&c.name), &json(c)?)
    }

    pub fn remove_cow(&self, name: &str) -> Result<()> {
        remove_durable(&self.cow_path(name))
    }

    /// Origins and COW snapshots share one name space (their dm names share one too).
    pub fn name_taken(&self, name: &str) -> bool {
        self.origin_path(name).exists() || self.cow_path(name).exists()
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

    pub fn origins(&self) -> Result<Vec<OriginRecord>> {
        self.list("origins")
    }

    pub fn cows(&self) -> Result<Vec<CowRecord>> {
        self.list("cows")
    }

    pub fn cows_of(&self, origin: &str) -> Result<Vec<CowRecord>> {
        Ok(self.cows()?.into_iter().filter(|c| c.origin == origin).collect())
    }

    fn intent_path(&self) -> PathBuf {
        self.dir.join("intent.json")
    }

    pub fn intent(&self) -> Result<Option<ClassicIntent>> {
        read_json(&self.intent_path())
    }

    pub fn put_intent(&self, i: &ClassicIntent) -> Result<()> {
        write_durable(&self.intent_path(), &json(i)?)
    }

    pub fn clear_intent(&self) -> Result<()> {
        remove_durable(&self.intent_path())
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
        let c = CowRecord {
            name: "s1".into(),
            origin: "base".into(),
            backing: CowBacking::Volume { name: "s1.cow".into() },
            size_bytes: 64 << 20,
            chunk_sectors: 8,
            persistence: Persistence::Persistent,
        };
        s.put_cow(&c).unwrap();
        s.put_cow(&CowRecord { name: "s0".into(), origin: "other".into(), ..c.clone() }).unwrap();
        assert_eq!(s.origin("base").unwrap(), Some(o));
        assert_eq!(s.cows_of("base").unwrap(), vec![c]);
        assert_eq!(s.cows().unwrap().len(), 2);
        assert!(s.name_taken("base") && s.name_taken("s1") && !s.name_taken("s2"));
        s.remove_cow("s1").unwrap();
        s.remove_cow("s1").unwrap();
        assert!(!s.name_taken("s1"));
        let i = ClassicIntent::CowCreate { name: "s2".into(), origin: "base".into(), backing: CowBacking::File { path: "/x".into() } };
        s.put_intent(&i).unwrap();
        assert_eq!(s.intent().unwrap(), Some(i));
        s.clear_intent().unwrap();
        assert_eq!(s.intent().unwrap(), None);
    }
}
