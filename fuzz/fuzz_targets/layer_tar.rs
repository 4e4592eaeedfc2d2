//! Tar layers as they come (plain, gzip or zstd, told apart by their magic, as `populate` and
//! `image import` read them) applied by `layer::apply` to a scratch tree over a small lower
//! layer. Whatever the input: no panic, no hang, and nothing beside the tree is touched; when
//! the layer applies, no whiteout marker is left in the tree (a `.wh.` directory may be, as the
//! parent of a later entry, as other runtimes do).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rcx_dm::internals::{archive, layer, tree::Tree};
use rcx_dm_fuzz::{check_sentinel, fresh, lower, sentinel, walk, Capped, MAX_STREAM_BYTES};

fuzz_target!(|data: &[u8]| {
    let base = fresh("layer_tar");
    let root = base.join("root");
    std::fs::create_dir(&root).unwrap();
    lower(&root);
    sentinel(&base);
    let tree = Tree::open(&root).expect("opening the scratch tree");
    let applied = archive::decompressed(data).and_then(|r| layer::apply(&tree, Capped::new(r, MAX_STREAM_BYTES)));
    rcx_dm_fuzz::debug("layer::apply", &applied);
    drop(tree);
    check_sentinel(&base);
    if applied.is_ok() {
        // A marker is never written; a `.wh.` directory may be, as the parent of a later entry.
        for p in walk(&root) {
            let name = p.file_name().unwrap().as_encoded_bytes();
            let is_dir = std::fs::symlink_metadata(root.join(&p)).is_ok_and(|m| m.is_dir());
            // Non-UTF-8 marker names too (issue 13, defect 11).
            if name.starts_with(b".wh.") && !is_dir {
                panic!("whiteout marker {} written into the tree", p.display());
            }
        }
    }
});
