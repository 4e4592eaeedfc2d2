//! Whiteout names, structured: the input picks a list of entries (files, directories, symlinks,
//! hard links, fifos) whose names come from a small alphabet rich in `.wh.` markers, opaque
//! markers, aufs metadata, `..`, `.`, empty components, lower-layer symlinks and non-UTF-8
//! bytes. The entries are written as a raw tar (names as given, no checks) and applied by
//! `layer::apply` over a lower layer. Checked beyond "no panic, nothing beside the tree touched":
//! when the layer applies, no marker is left in the tree, and (for layers of plain files and
//! directories under plain directories) every whiteout and opaque marker removed what the
//! image-spec says it removes.
#![no_main]

use std::collections::BTreeSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rcx_dm::internals::{layer, tree::Tree};
use rcx_dm_fuzz::{check_sentinel, fresh, lower, sentinel, walk};
use tar::{EntryType, Header};

const PARTS: &[&[u8]] = &[
    b"a", b"b", b"f", b"g", b"c", b"etc", b"passwd", b"usr", b"lib", b"opq", b"sub", b"x", b"y",
    b".wh.a", b".wh.b", b".wh.f", b".wh.g", b".wh.c", b".wh.x", b".wh.sub", b".wh.opq", b".wh.etc",
    b".wh..wh..opq", b".wh..wh.plnk", b".wh..wh.aufs", b".wh.", b".wh..", b".wh...", b".wh.lib",
    b".wh.loop", b".wh.abs", b"loop", b"abs", b"..", b".", b"", b"\xff", b".wh.\xff", b"libc.so",
];
/// Lower-layer names that are symlinks (`lower()`): paths through them are not checked.
const LOWER_LINKS: &[&[u8]] = &[b"lib", b"loop", b"abs"];
/// Lower-layer paths (`lower()`), for the opaque check.
const LOWER: &[&str] = &[
    "a", "a/b", "a/f", "a/b/g", "etc", "etc/passwd", "usr", "usr/lib", "usr/lib/libc.so", "opq",
    "opq/x", "opq/sub", "opq/sub/y", "lib", "loop", "abs",
];

struct Entry {
    kind: u8,
    parts: Vec<&'static [u8]>,
    lead: bool,
    trail: bool,
    target: Vec<&'static [u8]>,
    mode: u32,
    data: Vec<u8>,
}

fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(&b'/')
}

fn decode(data: &[u8]) -> Vec<Entry> {
    let mut it = data.iter().copied();
    let mut out = Vec::new();
    while out.len() < 24 {
        let Some(k) = it.next() else { break };
        let n = 1 + (k >> 5) as usize % 4;
        let mut parts = Vec::new();
        for _ in 0..n {
            parts.push(PARTS[it.next().unwrap_or(0) as usize % PARTS.len()]);
        }
        let flags = it.next().unwrap_or(0);
        let mut target = Vec::new();
        if matches!(k % 6, 2 | 3) {
            for _ in 0..1 + (flags >> 4) as usize % 3 {
                target.push(PARTS[it.next().unwrap_or(0) as usize % PARTS.len()]);
            }
        }
        let len = (flags >> 2) as usize % 4 * 3;
        let data = (0..len).map(|i| it.next().unwrap_or(i as u8)).collect();
        out.push(Entry { kind: k % 6, parts, lead: flags & 1 != 0, trail: flags & 2 != 0, target, mode: if k & 8 != 0 { 0o000 } else { 0o755 }, data });
    }
    out
}

fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut name = join(&e.parts);
        if e.lead {
            name.insert(0, b'/');
        }
        if e.trail {
            name.push(b'/');
        }
        let ty = match e.kind {
            0 | 5 => EntryType::Regular,
            1 => EntryType::Directory,
            2 => EntryType::Symlink,
            3 => EntryType::Link,
            _ => EntryType::Fifo,
        };
        let mut h = Header::new_gnu();
        let n = name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        h.set_entry_type(ty);
        h.set_mode(if ty == EntryType::Directory { e.mode } else { 0o644 });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        let data: &[u8] = if ty == EntryType::Regular { &e.data } else { b"" };
        h.set_size(data.len() as u64);
        if matches!(ty, EntryType::Symlink | EntryType::Link) {
            let t = join(&e.target);
            let n = t.len().min(100);
            h.as_old_mut().linkname[..n].copy_from_slice(&t[..n]);
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Entries simple enough to predict: plain files and directories, relative names of real
/// components, none through a lower symlink, none non-UTF-8.
fn predictable(entries: &[Entry]) -> bool {
    entries.iter().all(|e| {
        matches!(e.kind, 0 | 1 | 5)
            && e.parts.iter().all(|p| !matches!(*p, b"" | b"." | b".." | b"\xff" | b".wh.\xff") && !LOWER_LINKS.contains(p))
            && e.parts.iter().rev().skip(1).all(|p| !p.starts_with(b".wh."))
    })
}

fuzz_target!(|data: &[u8]| {
    let entries = decode(data);
    let tar = tar_of(&entries);
    let base = fresh("layer_entries");
    let root = base.join("root");
    std::fs::create_dir(&root).unwrap();
    lower(&root);
    sentinel(&base);
    let tree = Tree::open(&root).expect("opening the scratch tree");
    let applied = layer::apply(&tree, &tar[..]);
    rcx_dm_fuzz::debug("layer::apply", &applied);
    drop(tree);
    check_sentinel(&base);
    let Ok(_) = applied else { return };
    for p in walk(&root) {
        let name = p.file_name().unwrap().as_encoded_bytes();
        if std::fs::symlink_metadata(root.join(&p)).is_ok_and(|m| m.is_dir()) {
            continue; // a `.wh.` directory may be written, as the parent of a later entry
        }
        // Non-UTF-8 marker names too (issue 13, defect 11).
        if name.starts_with(b".wh.") {
            panic!("whiteout marker {} written into the tree", p.display());
        }
    }
    if !predictable(&entries) {
        return;
    }
    // Paths the layer itself wrote (entries that are not markers).
    let written: BTreeSet<String> = entries
        .iter()
        .filter(|e| !e.parts.last().unwrap().starts_with(b".wh."))
        .map(|e| String::from_utf8(join(&e.parts)).unwrap())
        .collect();
    let touched = |p: &str| written.iter().any(|w| w == p || w.starts_with(&format!("{p}/")) || p.starts_with(&format!("{w}/")));
    for e in &entries {
        let last = *e.parts.last().unwrap();
        let dir = String::from_utf8(join(&e.parts[..e.parts.len() - 1])).unwrap();
        let under = |n: &str| if dir.is_empty() { n.to_string() } else { format!("{dir}/{n}") };
        if last == b".wh..wh..opq" {
            for l in LOWER {
                let Some(rest) = (if dir.is_empty() { Some(*l) } else { l.strip_prefix(&format!("{dir}/")) }) else { continue };
                if rest.contains('/') {
                    continue; // only direct children
                }
                let child = under(rest);
                if !touched(&child) {
                    assert!(
                        std::fs::symlink_metadata(root.join(&child)).is_err(),
                        "opaque marker in '{dir}' left lower entry {child}"
                    );
                }
            }
        } else if let Some(n) = last.strip_prefix(b".wh.") {
            if n.is_empty() || n.starts_with(b".wh.") || n == b"." || n == b".." {
                continue;
            }
            let target = under(std::str::from_utf8(n).unwrap());
            if !touched(&target) {
                assert!(
                    std::fs::symlink_metadata(root.join(Path::new(&target))).is_err(),
                    "whiteout {} left {target}",
                    String::from_utf8_lossy(&join(&e.parts))
                );
            }
        }
    }
});
