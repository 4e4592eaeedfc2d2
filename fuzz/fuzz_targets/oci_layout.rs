//! OCI image layouts: the `oci-layout` file, `index.json`, nested indexes, manifests and
//! configs, read by `oci::open` (what `image import` and `populate --image` call), then every
//! layer read through its `LayerReader` and verified by `finish`.
//!
//! The input is a small bundle of files separated by "\n=====\n": part 0 is `oci-layout`,
//! part 1 `index.json`, parts 2.. are blobs stored under their real sha256. So that mutated
//! documents can still point at each other, a part may say `@D3@` (the digest of part 3 as
//! `sha256:...`), `@S3@` (its size) or `@U3@` (the digest of part 3 decompressed: a layer's
//! diff_id); references go to later parts only, and are filled in from the last part back.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use rcx_dm::internals::archive;
use rcx_dm::rootfs::oci;
use rcx_dm_fuzz::{fresh, Capped, MAX_STREAM_BYTES};

const SEP: &[u8] = b"\n=====\n";

fn split(data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = data;
    while out.len() < 9 {
        match rest.windows(SEP.len()).position(|w| w == SEP) {
            Some(i) => {
                out.push(rest[..i].to_vec());
                rest = &rest[i + SEP.len()..];
            }
            None => break,
        }
    }
    out.push(rest.to_vec());
    out
}

fn replace(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    if needle.is_empty() || hay.len() < needle.len() {
        return hay.to_vec();
    }
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut parts = split(data);
    // Fill references from the last part back, so a part's digest covers its own filled text.
    for i in (0..parts.len()).rev() {
        let digest = oci::Digest::of(&parts[i]).to_string();
        let size = parts[i].len().to_string();
        let mut unpacked = Vec::new();
        let unpacked_ok = archive::decompressed(&parts[i][..])
            .ok()
            .is_some_and(|r| Capped::new(r, MAX_STREAM_BYTES).read_to_end(&mut unpacked).is_ok());
        let diff_id = if unpacked_ok { oci::Digest::of(&unpacked).to_string() } else { digest.clone() };
        for j in 0..i {
            let p = replace(&parts[j], format!("@D{i}@").as_bytes(), digest.as_bytes());
            let p = replace(&p, format!("@S{i}@").as_bytes(), size.as_bytes());
            parts[j] = replace(&p, format!("@U{i}@").as_bytes(), diff_id.as_bytes());
        }
    }
    let dir = fresh("oci_layout");
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for (i, p) in parts.iter().enumerate() {
        let path = match i {
            0 => dir.join("oci-layout"),
            1 => dir.join("index.json"),
            _ => blobs.join(oci::Digest::of(p).hex()),
        };
        std::fs::write(path, p).unwrap();
    }
    for reference in [None, Some("latest")] {
        let opened = oci::open(&dir, reference);
        rcx_dm_fuzz::debug("oci::open", &opened.as_ref().map(|i| (i.layers.len(), &i.manifest_digest)));
        let Ok(image) = opened else { continue };
        assert_eq!(image.chain_id().is_some(), !image.layers.is_empty());
        let chains = oci::chain_ids(&image.layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>());
        for (l, c) in image.layers.iter().zip(&chains) {
            assert_eq!(&l.chain_id, c, "chain id not as the spec defines it");
            let Ok(mut r) = l.open() else { continue };
            let mut buf = vec![0u8; 64 << 10];
            let mut total = 0u64;
            let mut ok = true;
            while total < MAX_STREAM_BYTES {
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        ok = false;
                        break;
                    }
                }
            }
            if total >= MAX_STREAM_BYTES {
                continue; // capped by the harness: finish would read the rest
            }
            let finished = r.finish();
            rcx_dm_fuzz::debug("LayerReader::finish", &finished);
            // A blob that decodes cleanly and whose digest and diff_id the harness made right
            // must verify; one that failed to decode must not.
            if !ok {
                assert!(finished.is_err(), "finish accepted a layer whose stream failed to decode");
            }
        }
    }
});
