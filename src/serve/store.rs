//! The snapshotter's own records: one small JSON file per containerd key under
//! `<root>/<pool>/serve/snapshots/`, written durably (temp file, fsync, rename) like the pool's
//! store. A record is written *before* the pool is touched (state `preparing`, `committing` or
//! `removing`), so a serve killed at any instant finds on restart what it was doing and rolls it
//! forward or back (`Service::reconcile`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::durable::{read_json, remove_durable, remove_stale_temps, write_durable};
use crate::rootfs::fs::Fs;

/// Pool volume names made by serve start with this; a volume with it and no record is an orphan.
pub const VOLUME_PREFIX: &str = "ctrd-";

/// containerd's snapshot kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A writable snapshot (Prepare): a thin snapshot of its parent's volume, active.
    Active,
    /// A read-only snapshot (View): a thin snapshot of its parent's volume, mounted `ro`.
    View,
    /// A committed layer (Commit): the former active snapshot's volume, read-only, inactive.
    Committed,
}

/// Where a record is in its life; anything but `Ready` is an operation in flight (or one a
/// crash interrupted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum State {
    /// The key is reserved and the volume may or may not exist yet: rolled back on restart.
    Preparing,
    /// Made and usable: the only state containerd's calls see.
    Ready,
    /// This committed record takes over the volume of active snapshot `from`: rolled forward.
    Committing {
        /// The key of the active snapshot being committed.
        from: String,
    },
    /// The volume is being deleted: rolled forward.
    Removing,
}

/// A snapshot's usage as containerd's Usage call reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    /// Bytes the snapshot's thin volume has mapped (provisioned pool blocks, from the thin
    /// target's mapped sectors), not the filesystem's used space.
    pub bytes: u64,
    /// Inodes in use, from the filesystem's superblock (0 when it could not be read).
    pub inodes: u64,
}

/// One snapshot as serve keeps it, a JSON file per key in the [`SnapStore`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// containerd's key (for committed snapshots, the name given to Commit).
    pub key: String,
    /// Active, view or committed.
    pub kind: Kind,
    /// The parent's key; empty for a snapshot of the empty base.
    pub parent: String,
    /// The pool volume's name (`ctrd-...`).
    pub volume: String,
    /// The pool volume's id, once it exists.
    #[serde(default)]
    pub volume_id: Option<u32>,
    /// The volume's filesystem: the parent's, or the configured one for a snapshot of the base.
    pub fs: Fs,
    /// Where the record is in its life (stored flattened as a `state` field).
    #[serde(flatten)]
    pub state: State,
    /// containerd's labels on the snapshot, as given to Prepare, View, Commit or Update.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When the record was made by Prepare, View or Commit.
    pub created: SystemTime,
    /// When the record was made or its labels last changed.
    pub updated: SystemTime,
    /// Committed snapshots: usage measured at commit, while the volume was still active.
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// A key as a file name: bytes outside `[A-Za-z0-9._-]` percent-encoded (containerd keys hold
/// `/`, `:` and spaces), so names map one to one and never escape the directory.
pub fn encode_key(key: &str) -> Result<String> {
    if key.is_empty() {
        return Err(Error::invalid("snapshot key", String::from("empty")));
    }
    let mut out = String::with_capacity(key.len() + 8);
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && !out.is_empty()) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() > 240 {
        return Err(Error::invalid("snapshot key", format!("'{key}' is too long (at most ~200 bytes)")));
    }
    Ok(out)
}

/// The directory of serve's records, `<pool dir>/serve/snapshots/`, one `<encoded key>.json`
/// per snapshot (see [`encode_key`]).
pub struct SnapStore {
    dir: PathBuf,
}

impl SnapStore {
    /// The store under a pool's directory (`<pool dir>/serve`).
    pub fn open(pool_dir: &Path) -> Result<SnapStore> {
        let dir = pool_dir.join("serve");
        let snaps = dir.join("snapshots");
        std::fs::create_dir_all(&snaps).ctx(|| format!("creating {}", snaps.display()))?;
        Ok(SnapStore { dir })
    }

    /// `<pool dir>/serve`: the records' directory's parent, also home of `serve.lock`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        Ok(self.dir.join("snapshots").join(format!("{}.json", encode_key(key)?)))
    }

    /// The record of `key` in any state; None when there is none, `Inconsistent` when its
    /// file does not parse, `Invalid` for an empty or overlong key.
    pub fn get(&self, key: &str) -> Result<Option<Record>> {
        read_json(&self.path(key)?)
    }

    /// Write `r` under its key, replacing any record there, atomically and durably (temp file,
    /// fsync, rename, directory fsync).
    pub fn put(&self, r: &Record) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(r).map_err(|e| Error::Inconsistent(format!("encoding record: {e}")))?;
        write_durable(&self.path(&r.key)?, &bytes)
    }

    /// Remove the record of `key` durably; a key without a record is already removed (Ok).
    pub fn remove(&self, key: &str) -> Result<()> {
        remove_durable(&self.path(key)?)
    }

    /// Remove the temp files of writes a crash interrupted: those of processes that are gone
    /// (`write_durable` names them `*.tmp.<pid>`). Called by serve at start-up, under its lock.
    pub fn remove_stale_temps(&self) -> Result<usize> {
        remove_stale_temps(&self.dir.join("snapshots"))
    }

    /// Every record (reads the whole directory: List, Remove's child check, reconcile).
    pub fn all(&self) -> Result<Vec<Record>> {
        let dir = self.dir.join("snapshots");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).ctx(|| format!("reading {}", dir.display()))? {
            let e = e.ctx(|| format!("reading {}", dir.display()))?;
            let p = e.path();
            // Temp files are writes in progress (this process's) or interrupted by a crash
            // (`remove_stale_temps`, at start-up): never removed here, since List and Remove run
            // while other requests write.
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            if let Some(r) = read_json::<Record>(&p)? {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

/// containerd's Update rules: only labels change. With no field paths all labels are replaced;
/// `labels` replaces all, `labels.K` sets (or, when absent from `new`, removes) one label.
pub fn update_labels(
    cur: &mut BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    paths: Option<&[String]>,
) -> std::result::Result<(), String> {
    match paths {
        None | Some([]) => *cur = new.clone(),
        Some(paths) => {
            for p in paths {
                if let Some(k) = p.strip_prefix("labels.") {
                    match new.get(k) {
                        Some(v) => {
                            cur.insert(k.to_string(), v.clone());
                        }
                        None => {
                            cur.remove(k);
                        }
                    }
                } else if p == "labels" {
                    *cur = new.clone();
                } else {
                    return Err(format!("cannot update field '{p}': only labels are mutable"));
                }
            }
        }
    }
    Ok(())
}

/// Inodes in use from a filesystem's superblock (first 4 KiB of the device): ext4
/// `s_inodes_count - s_free_inodes_count`, xfs `sb_icount - sb_ifree`. The counters are those
/// last written to the superblock (exact for an unmounted filesystem).
pub fn inodes_in_use(sb: &[u8], fs: Fs) -> Option<u64> {
    match fs {
        Fs::Ext4 => {
            let u = |o: usize| sb.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as u64);
            Some(u(1024)?.saturating_sub(u(1040)?))
        }
        Fs::Xfs => {
            let u = |o: usize| sb.get(o..o + 8).map(|b| u64::from_be_bytes(b.try_into().unwrap()));
            Some(u(128)?.saturating_sub(u(136)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A List (`all`) once removed `*.tmp.<pid>` files, including the one a concurrent Prepare
    /// was about to rename into place.
    #[test]
    fn listing_never_removes_a_write_in_progress_and_start_up_removes_only_dead_ones() {
        let d = tempfile::tempdir().unwrap();
        let s = SnapStore::open(d.path()).unwrap();
        s.put(&rec("a", "")).unwrap();
        let snaps = d.path().join("serve/snapshots");
        let mine = snaps.join(format!("b.tmp.{}", std::process::id()));
        let dead = snaps.join("c.tmp.4294967295");
        std::fs::write(&mine, b"{").unwrap();
        std::fs::write(&dead, b"{").unwrap();
        assert_eq!(s.all().unwrap().len(), 1);
        assert!(mine.exists() && dead.exists(), "a listing removed temp files");
        assert_eq!(s.remove_stale_temps().unwrap(), 1);
        assert!(mine.exists() && !dead.exists());
    }

    fn rec(key: &str, parent: &str) -> Record {
        Record {
            key: key.into(),
            kind: Kind::Active,
            parent: parent.into(),
            volume: "ctrd-1".into(),
            volume_id: Some(3),
            fs: Fs::Ext4,
            state: State::Ready,
            labels: BTreeMap::from([("containerd.io/snapshot/x".into(), "1".into())]),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::now(),
            usage: None,
        }
    }

    #[test]
    fn keys_encode_one_to_one_and_stay_in_the_directory() {
        assert_eq!(encode_key("default/3/sha256:ab").unwrap(), "default%2F3%2Fsha256%3Aab");
        assert_eq!(encode_key("..").unwrap(), "%2E.");
        assert_eq!(encode_key("a b%").unwrap(), "a%20b%25");
        assert_ne!(encode_key("a/b").unwrap(), encode_key("a%2Fb").unwrap());
        assert!(encode_key("").is_err());
        assert!(encode_key(&"x".repeat(300)).is_err());
    }

    #[test]
    fn records_round_trip_with_their_state() {
        let d = tempfile::tempdir().unwrap();
        let s = SnapStore::open(d.path()).unwrap();
        let mut r = rec("default/1/a", "");
        s.put(&r).unwrap();
        assert_eq!(s.get("default/1/a").unwrap(), Some(r.clone()));
        r.state = State::Committing { from: "default/2/b".into() };
        s.put(&r).unwrap();
        let back = s.get("default/1/a").unwrap().unwrap();
        assert_eq!(back.state, State::Committing { from: "default/2/b".into() });
        s.put(&rec("k2", "default/1/a")).unwrap();
        std::fs::write(s.dir().join("snapshots").join("junk.tmp.77"), b"x").unwrap();
        let all = s.all().unwrap();
        assert_eq!(all.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["default/1/a", "k2"]);
        // Skipped, not removed: it may be a write in progress (start-up removes dead ones).
        assert!(s.dir().join("snapshots").join("junk.tmp.77").exists());
        s.remove("k2").unwrap();
        s.remove("k2").unwrap();
        assert_eq!(s.get("k2").unwrap(), None);
    }

    #[test]
    fn update_follows_containerd() {
        let mut cur = BTreeMap::from([("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string())]);
        let new = BTreeMap::from([("a".to_string(), "9".to_string()), ("c".to_string(), "3".to_string())]);
        let mut x = cur.clone();
        update_labels(&mut x, &new, Some(&["labels.a".into(), "labels.b".into()])).unwrap();
        assert_eq!(x, BTreeMap::from([("a".to_string(), "9".to_string())]));
        let mut y = cur.clone();
        update_labels(&mut y, &new, Some(&["labels".into()])).unwrap();
        assert_eq!(y, new);
        assert!(update_labels(&mut cur, &new, Some(&["parent".into()])).is_err());
        update_labels(&mut cur, &new, None).unwrap();
        assert_eq!(cur, new);
    }

    #[test]
    fn inodes_from_superblocks() {
        let mut ext = vec![0u8; 4096];
        ext[1024..1028].copy_from_slice(&1000u32.to_le_bytes());
        ext[1040..1044].copy_from_slice(&989u32.to_le_bytes());
        assert_eq!(inodes_in_use(&ext, Fs::Ext4), Some(11));
        let mut xfs = vec![0u8; 4096];
        xfs[128..136].copy_from_slice(&64u64.to_be_bytes());
        xfs[136..144].copy_from_slice(&61u64.to_be_bytes());
        assert_eq!(inodes_in_use(&xfs, Fs::Xfs), Some(3));
        assert_eq!(inodes_in_use(&[0u8; 100], Fs::Ext4), None);
    }
}
