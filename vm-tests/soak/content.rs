//! Reading what a volume holds and judging it against the model's alternatives.

use super::*;

// ---- content checks ---------------------------------------------------------------------------

pub(crate) fn raw_expected(seed: Option<u64>) -> Vec<u8> {
    let mut v = match seed {
        Some(s) => pattern(s, PATTERN_LEN),
        None => vec![0; PATTERN_LEN],
    };
    v.resize(2 * PATTERN_LEN, 0);
    v
}

/// TRACKED files under a root directory.
pub(crate) fn tracked_files(root: &Path) -> BTreeMap<String, String> {
    TRACKED
        .iter()
        .filter_map(|f| std::fs::read_to_string(root.join(f)).ok().map(|c| (f.to_string(), c.trim_end().to_string())))
        .collect()
}

/// Mount `dev` (ext4) at a fresh directory, run `f` on its root, unmount.
pub(crate) fn with_mount<T>(sh: &Shared, dev: &Path, ro: bool, f: impl FnOnce(&Path) -> T) -> Result<T, String> {
    let dir = sh.work.join(format!("mnt-{}", sh.next_seq()));
    std::fs::create_dir_all(&dir).unwrap();
    let flags = if ro { nix::mount::MsFlags::MS_RDONLY } else { nix::mount::MsFlags::empty() };
    if let Err(e) = nix::mount::mount(Some(dev), &dir, Some("ext4"), flags, Some("noinit_itable")) {
        let _ = std::fs::remove_dir(&dir);
        return Err(format!("mounting {} (ext4{}): {e}", dev.display(), if ro { ", ro" } else { "" }));
    }
    let r = f(&dir);
    let u = umount(&dir);
    let _ = std::fs::remove_dir(&dir);
    u.map_err(|e| format!("unmounting {}: {e}", dir.display()))?;
    Ok(r)
}

/// What the device holds, judged against the alternatives; Ok(index of the match).
pub(crate) fn check_content(sh: &Shared, dev: &Path, alts: &Alts) -> Result<usize, String> {
    let head = read_direct_at(dev, 0, 2 * PATTERN_LEN);
    let ext4_magic = {
        let sb = read_direct_at(dev, 0, 4096);
        sb[1024 + 0x38] == 0x53 && sb[1024 + 0x39] == 0xEF
    };
    let mut files = None;
    for (i, a) in alts.iter().enumerate() {
        match a {
            Content::Raw(seed) => {
                if head == raw_expected(*seed) {
                    return Ok(i);
                }
            }
            Content::Fs { files: want, .. } => {
                if !ext4_magic {
                    continue;
                }
                if files.is_none() {
                    files = Some(with_mount(sh, dev, true, tracked_files)?);
                }
                if files.as_ref() == Some(want) {
                    return Ok(i);
                }
            }
        }
    }
    let seen = if let Some(f) = files {
        format!("an ext4 with tracked files {f:?}")
    } else if ext4_magic {
        "an ext4 (files not read)".to_string()
    } else {
        let nonzero = head.iter().position(|b| *b != 0);
        format!("raw bytes (first non-zero at {nonzero:?})")
    };
    Err(format!("holds {seen}, expected one of {alts:?}"))
}
