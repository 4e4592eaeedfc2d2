//! From a layout's `index.json` down to a verified image: the manifest picked, nested indexes
//! followed, manifest and config checked, every layer's blob seen before anything is written.

use std::path::Path;

use serde::Deserialize;

use super::document::{ConfigDoc, Descriptor, IndexDoc, ManifestDoc};
use super::image::{Image, Layer, LayerCompression};
use super::layout::Layout;
use super::select::{select, Platform};
use super::{chain_ids, clip, Digest, MAX_INDEX_DEPTH, MAX_LAYERS, MEDIA_TYPE_DOCKER_LIST, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};
use crate::error::{Error, Result};

/// Read the image in the OCI layout at `layout_dir`. `reference` picks a manifest by its
/// `org.opencontainers.image.ref.name` (or `io.containerd.image.name`) annotation; without it
/// the layout's only image is taken, or among several the one for linux and this host's
/// architecture.
pub fn open(layout_dir: &Path, reference: Option<&str>) -> Result<Image> {
    open_for(layout_dir, reference, &Platform::host())
}

/// Where an image's documents come from: an OCI layout's blobs, or a registry. Every method
/// returns bytes already checked against the descriptor (size, then digest).
pub(crate) trait Documents {
    /// A manifest or index named by a descriptor.
    fn manifest(&self, digest: &Digest, size: u64, what: &str) -> Result<Vec<u8>>;
    /// The image config blob.
    fn config(&self, digest: &Digest, size: u64, what: &str) -> Result<Vec<u8>>;
    /// Check a layer's blob before anything is written (a layout: it is there, of its size).
    fn check_layer(&self, digest: &Digest, size: u64, what: &str) -> Result<()>;
    /// The directory whose `blobs/sha256/` holds (or will hold) the layer blobs.
    fn blob_dir(&self) -> &Path;
}

impl Documents for Layout {
    fn manifest(&self, digest: &Digest, size: u64, what: &str) -> Result<Vec<u8>> {
        self.read_json_blob(digest, size, what)
    }
    fn config(&self, digest: &Digest, size: u64, what: &str) -> Result<Vec<u8>> {
        self.read_json_blob(digest, size, what)
    }
    fn check_layer(&self, digest: &Digest, size: u64, what: &str) -> Result<()> {
        self.open_blob(digest, size, what).map(drop)
    }
    fn blob_dir(&self) -> &Path {
        &self.dir
    }
}

pub(super) fn open_for(layout_dir: &Path, reference: Option<&str>, platform: &Platform) -> Result<Image> {
    let l = Layout { dir: layout_dir.to_owned() };
    l.check_version()?;
    let index_path = layout_dir.join("index.json");
    let index_bytes = l.read_json_file("index.json", "the layout's index.json")?;
    let index: IndexDoc = serde_json::from_slice(&index_bytes).map_err(|e| {
        Error::invalid("OCI image layout", format!("{}: {e}; re-export the image", index_path.display()))
    })?;
    check_schema(index.schema_version.into(), &index_path.display().to_string())?;

    let top = select(&index.manifests, reference, platform, &format!("{}", index_path.display()))?;
    let ref_name = top.ref_name().map(str::to_owned);
    let image_name = match reference.or(ref_name.as_deref()) {
        Some(r) => format!("{}:{}", layout_dir.display(), clip(r)),
        None => layout_dir.display().to_string(),
    };
    let what = format!("{} {} of image {image_name}", kind_of(&top), clip(&top.digest));
    let digest = Digest::parse(&top.digest).map_err(|e| reword(e, &what))?;
    let bytes = l.manifest(&digest, top.size, &what)?;
    let mut img = resolve(&l, digest, bytes, &top.media_type, platform, &image_name)?;
    img.ref_name = ref_name;
    Ok(img)
}

/// From a manifest or index (`bytes`, already verified as `digest`) down to the image for
/// `platform`: nested indexes followed through `docs`, manifest and config checked, every
/// layer's blob checked by `docs`. `media_type` is what the descriptor or the registry said.
pub(crate) fn resolve(
    docs: &dyn Documents,
    digest: Digest,
    bytes: Vec<u8>,
    media_type: &str,
    platform: &Platform,
    image_name: &str,
) -> Result<Image> {
    // Follow nested indexes down to a manifest; below the top level only the platform decides.
    let (mut digest, mut bytes, mut desc_type, mut kind) = (digest, bytes, media_type.to_owned(), "manifest");
    let mut depth = 0;
    let (manifest_digest, manifest) = loop {
        let what = format!("{kind} {digest} of image {image_name}");
        // The blob's own mediaType wins over the descriptor's when they disagree; Docker
        // manifests may omit it from the descriptor.
        let value: serde_json::Value = parse_json(&bytes, &what)?;
        // Before the typed parse, so a Docker schema 1 manifest gets this message, not a
        // missing-field one.
        check_schema(value.get("schemaVersion").and_then(|v| v.as_u64()).unwrap_or(0), &what)?;
        let media_type = value.get("mediaType").and_then(|m| m.as_str()).unwrap_or(&desc_type);
        let is_index = media_type == MEDIA_TYPE_INDEX
            || media_type == MEDIA_TYPE_DOCKER_LIST
            || (media_type.is_empty() && value.get("manifests").is_some());
        if !is_index {
            break (digest, parse_json::<ManifestDoc>(&bytes, &what)?);
        }
        depth += 1;
        if depth > MAX_INDEX_DEPTH {
            return Err(Error::invalid(
                "OCI image",
                format!("{what}: indexes nest more than {MAX_INDEX_DEPTH} deep (a cycle?); the image is malformed"),
            ));
        }
        let nested: IndexDoc = parse_json(&bytes, &what)?;
        let desc = select(&nested.manifests, None, platform, &what)?;
        kind = kind_of(&desc);
        let what = format!("{kind} {} of image {image_name}", clip(&desc.digest));
        digest = Digest::parse(&desc.digest).map_err(|e| reword(e, &what))?;
        bytes = docs.manifest(&digest, desc.size, &what)?;
        desc_type = desc.media_type;
    };
    let what = format!("manifest {manifest_digest} of image {image_name}");
    if manifest.layers.len() > MAX_LAYERS {
        return Err(Error::LimitExceeded {
            what,
            limit: format!("{MAX_LAYERS} layers"),
            why: format!(
                "it lists {} layers; Docker's overlay2 stops at 128, and each layer here is a volume of its own: squash the image",
                manifest.layers.len()
            ),
        });
    }
    if let Some(mt) = &manifest.media_type {
        if mt != MEDIA_TYPE_MANIFEST && mt != MEDIA_TYPE_DOCKER_MANIFEST {
            return Err(Error::invalid(
                "OCI image",
                format!("{what}: media type '{}' is not an image manifest; re-export the image", clip(mt)),
            ));
        }
    }

    // Config
    let config_what = format!("config {} of image {image_name}", clip(&manifest.config.digest));
    let config_digest = Digest::parse(&manifest.config.digest).map_err(|e| reword(e, &config_what))?;
    let config_bytes = docs.config(&config_digest, manifest.config.size, &config_what)?;
    let raw_config: serde_json::Value = parse_json(&config_bytes, &config_what)?;
    let config: ConfigDoc = parse_json(&config_bytes, &config_what)?;
    if config.rootfs.kind != "layers" {
        return Err(Error::invalid(
            "OCI image",
            format!(
                "{config_what}: rootfs.type is '{}', not 'layers'; the config is not an OCI image config, re-export the image",
                clip(&config.rootfs.kind)
            ),
        ));
    }
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(Error::invalid(
            "OCI image",
            format!(
                "{what} lists {} layers but its config lists {} diff_ids; the image layout is corrupt, re-export it",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            ),
        ));
    }
    let diff_ids = config
        .rootfs
        .diff_ids
        .iter()
        .enumerate()
        .map(|(i, d)| Digest::parse(d).map_err(|e| reword(e, &format!("{config_what}, diff_id {}", i + 1))))
        .collect::<Result<Vec<_>>>()?;
    let chains = chain_ids(&diff_ids);

    // Layers: refuse unknown types and missing blobs now, before anything is written anywhere.
    let n = manifest.layers.len();
    let mut layers = Vec::with_capacity(n);
    for (i, ((d, diff_id), chain_id)) in manifest.layers.iter().zip(diff_ids).zip(chains).enumerate() {
        let label = format!("layer {}/{n} ({}) of image {image_name}", i + 1, clip(&d.digest));
        let digest = Digest::parse(&d.digest).map_err(|e| reword(e, &label))?;
        let compression = LayerCompression::from_media_type(&d.media_type).ok_or_else(|| {
            Error::invalid(
                "OCI image",
                format!(
                    "{label}: media type '{}' is not a layer type rcx-dm reads (OCI tar, tar+gzip, tar+zstd, Docker tar.gzip); convert the image, e.g. with `skopeo copy --format oci`",
                    clip(&d.media_type)
                ),
            )
        })?;
        docs.check_layer(&digest, d.size, &label)?;
        let path = docs.blob_dir().join("blobs").join(digest.algorithm()).join(digest.hex());
        layers.push(Layer {
            digest,
            media_type: d.media_type.clone(),
            size: d.size,
            diff_id,
            chain_id,
            path,
            layout: docs.blob_dir().to_owned(),
            compression,
            label,
        });
    }

    Ok(Image {
        layout: docs.blob_dir().to_owned(),
        ref_name: None,
        manifest_digest,
        config_digest,
        architecture: config.architecture,
        os: config.os,
        config: config.config.unwrap_or_default(),
        raw_config,
        layers,
    })
}

fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::invalid(
            "OCI image",
            format!(
                "{what}: {e}; the blob matches its digest, so the image itself is malformed — rebuild it"
            ),
        )
    })
}

fn check_schema(v: u64, what: &str) -> Result<()> {
    if v != 2 {
        return Err(Error::invalid(
            "OCI image",
            format!(
                "{what}: schemaVersion is {v}, rcx-dm reads only 2; re-export the image with a current tool"
            ),
        ));
    }
    Ok(())
}

fn kind_of(d: &Descriptor) -> &'static str {
    if d.is_index() {
        "index"
    } else {
        "manifest"
    }
}

/// A digest error, said about where the digest was found.
fn reword(e: Error, what: &str) -> Error {
    match e {
        Error::Invalid { why, .. } => {
            Error::invalid("OCI image", format!("{what}: {why}; the image layout is corrupt, re-export it"))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;
    use crate::rootfs::oci::test_util::*;
    use serde_json::json;

    #[test]
    fn opens_single_image() {
        let tars = [fake_tar(1, 700), fake_tar(2, 5000), fake_tar(3, 100)];
        let (dir, m) = layout(vec![
            (tars[0].clone(), LayerCompression::None),
            (tars[1].clone(), LayerCompression::Gzip),
            (tars[2].clone(), LayerCompression::Zstd),
        ]);
        let img = open(dir.path(), None).unwrap();
        assert_eq!(img.manifest_digest.to_string(), m["digest"].as_str().unwrap());
        assert_eq!(img.ref_name.as_deref(), Some("latest"));
        assert_eq!(img.layers.len(), 3);
        let diff_ids: Vec<Digest> = tars.iter().map(|t| Digest::of(t)).collect();
        let chains = chain_ids(&diff_ids);
        for (i, l) in img.layers.iter().enumerate() {
            assert_eq!(l.diff_id, diff_ids[i]);
            assert_eq!(l.chain_id, chains[i]);
        }
        assert_eq!(img.chain_id(), Some(&chains[2]));
        assert_eq!(img.config.cmd, Some(vec!["/bin/sh".to_owned()]));
        assert_eq!(img.config.env, Some(vec!["PATH=/bin".to_owned()]));
        assert_eq!(img.config.entrypoint, None);
        assert_eq!(img.config.working_dir.as_deref(), Some("/w"));
        assert_eq!(img.config.user.as_deref(), Some("1:1"));
        assert_eq!(img.raw_config["rootfs"]["type"], "layers");
        // With a reference too.
        assert_eq!(open(dir.path(), Some("latest")).unwrap().manifest_digest, img.manifest_digest);
    }

    #[test]
    fn schema1_manifest_refused() {
        let dir = tempfile::tempdir().unwrap();
        let m = put_blob(
            dir.path(),
            MEDIA_TYPE_DOCKER_MANIFEST,
            br#"{"schemaVersion": 1, "name": "x", "fsLayers": []}"#,
        );
        put_index(dir.path(), vec![m]);
        let e = err_text(open(dir.path(), None));
        assert!(e.contains("schemaVersion is 1"), "{e}");
    }

    #[test]
    fn bad_manifest_digest_refused() {
        let (dir, m) = layout(one_layer().layers);
        // Same size, different content: only the digest can tell.
        let path = blob_file(dir.path(), &m);
        let mut bytes = std::fs::read(&path).unwrap();
        let i = bytes.iter().position(|&b| b == b'2').unwrap(); // schemaVersion's digit
        bytes[i] = b'3';
        std::fs::write(&path, &bytes).unwrap();
        let e = err_text(open(dir.path(), None));
        assert!(e.contains("manifest") && e.contains("digest mismatch") && e.contains(&sha(&bytes)), "{e}");
        assert!(e.contains("re-export"), "{e}");
    }

    #[test]
    fn bad_config_digest_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = json!({ "rootfs": { "type": "layers", "diff_ids": [] } });
        let m = put_manifest(dir.path(), &config, vec![], None);
        put_index(dir.path(), vec![m.clone()]);
        assert!(open(dir.path(), None).unwrap().layers.is_empty());
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(blob_file(dir.path(), &m)).unwrap()).unwrap();
        let cpath = blob_file(dir.path(), &manifest["config"]);
        let mut bytes = std::fs::read(&cpath).unwrap();
        bytes.reverse(); // same size, different digest
        std::fs::write(&cpath, &bytes).unwrap();
        let e = err_text(open(dir.path(), None));
        assert!(e.contains("config sha256:") && e.contains("digest mismatch"), "{e}");
    }

    #[test]
    fn layer_count_and_rootfs_type_checked() {
        let dir = tempfile::tempdir().unwrap();
        let tar = fake_tar(1, 10);
        let l = put_blob(dir.path(), "application/vnd.oci.image.layer.v1.tar", &tar);
        let config = json!({ "rootfs": { "type": "layers", "diff_ids": [sha(&tar), sha(b"x")] } });
        put_index(dir.path(), vec![put_manifest(dir.path(), &config, vec![l.clone()], None)]);
        let e = err_text(open(dir.path(), None));
        assert!(e.contains("lists 1 layers but its config lists 2 diff_ids"), "{e}");

        let config = json!({ "rootfs": { "type": "snapshot", "diff_ids": [sha(&tar)] } });
        put_index(dir.path(), vec![put_manifest(dir.path(), &config, vec![l], None)]);
        let e = err_text(open(dir.path(), None));
        assert!(e.contains("rootfs.type is 'snapshot'"), "{e}");
    }

    #[test]
    fn layer_count_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let tar = fake_tar(1, 10);
        let l = put_blob(dir.path(), "application/vnd.oci.image.layer.v1.tar", &tar);
        let n = MAX_LAYERS + 1;
        let config = json!({ "rootfs": { "type": "layers", "diff_ids": vec![sha(&tar); n] } });
        put_index(dir.path(), vec![put_manifest(dir.path(), &config, vec![l.clone(); n], None)]);
        let e = err_text(open(dir.path(), None));
        assert!(e.contains(&format!("{n} layers")) && e.contains(&format!("limit of {MAX_LAYERS}")) && e.contains("refused"), "{e}");
        // At the limit: accepted.
        let config = json!({ "rootfs": { "type": "layers", "diff_ids": vec![sha(&tar); MAX_LAYERS] } });
        put_index(dir.path(), vec![put_manifest(dir.path(), &config, vec![l; MAX_LAYERS], None)]);
        assert_eq!(open(dir.path(), None).unwrap().layers.len(), MAX_LAYERS);
    }
}

/// `resolve` over documents that are not a layout (what a registry serves): nesting, platforms
/// and verification are the same whatever the source.
#[cfg(test)]
mod resolve_tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use serde_json::json;

    use super::super::*;
    use super::*;
    use crate::rootfs::oci::test_util::*;

    /// Blobs in memory, checked like a registry client checks them.
    struct Mem(BTreeMap<String, Vec<u8>>, PathBuf);

    impl Mem {
        fn put(&mut self, v: &serde_json::Value) -> serde_json::Value {
            let b = serde_json::to_vec(v).unwrap();
            let d = sha(&b);
            let size = b.len();
            self.0.insert(d.clone(), b);
            json!({ "mediaType": v.get("mediaType").cloned().unwrap_or(json!(MEDIA_TYPE_MANIFEST)), "digest": d, "size": size })
        }
    }

    impl Documents for Mem {
        fn manifest(&self, digest: &Digest, size: u64, what: &str) -> Result<Vec<u8>> {
            let b = self.0.get(&digest.to_string()).cloned().ok_or_else(|| Error::invalid("test", format!("{what}: missing")))?;
            if b.len() as u64 != size || Digest::of(&b) != *digest {
                return Err(Error::invalid("test", format!("{what}: digest mismatch")));
            }
            Ok(b)
        }
        fn config(&self, digest: &Digest, size: u64, what: &str) -> Result<Vec<u8>> {
            self.manifest(digest, size, what)
        }
        fn check_layer(&self, _: &Digest, _: u64, _: &str) -> Result<()> {
            Ok(())
        }
        fn blob_dir(&self) -> &Path {
            &self.1
        }
    }

    fn image(m: &mut Mem, arch: &str) -> serde_json::Value {
        let tar = fake_tar(1, 10);
        let config = m.put(&json!({ "architecture": arch, "os": "linux", "rootfs": { "type": "layers", "diff_ids": [sha(&tar)] } }));
        let layer = json!({ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(&tar), "size": tar.len() });
        let mut d = m.put(&json!({ "schemaVersion": 2, "mediaType": MEDIA_TYPE_MANIFEST, "config": config, "layers": [layer] }));
        d["platform"] = json!({ "os": "linux", "architecture": arch });
        d
    }

    fn top(m: &Mem, d: &serde_json::Value) -> (Digest, Vec<u8>) {
        let digest = Digest::parse(d["digest"].as_str().unwrap()).unwrap();
        (digest.clone(), m.0[&digest.to_string()].clone())
    }

    #[test]
    fn nesting_platforms_and_digests_over_any_source() {
        let mut m = Mem(BTreeMap::new(), PathBuf::from("/dl"));
        let amd = image(&mut m, "amd64");
        let arm = image(&mut m, "arm64");
        let index = m.put(&json!({ "schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": [arm, amd.clone()] }));
        let (d, b) = top(&m, &index);
        let img = resolve(&m, d.clone(), b.clone(), "", &Platform::linux("amd64"), "reg/x:1").unwrap();
        assert_eq!(img.manifest_digest.to_string(), amd["digest"].as_str().unwrap());
        assert_eq!(img.layers[0].path(), Path::new("/dl/blobs/sha256").join(&sha(&fake_tar(1, 10))[7..]));
        assert!(img.layers[0].label().contains("of image reg/x:1"));
        let e = err_text(resolve(&m, d, b, "", &Platform::linux("s390x"), "reg/x:1"));
        assert!(e.contains("none for linux/s390x") && e.contains("linux/amd64"), "{e}");

        // An index nested past the cap: refused, however the documents are served.
        let mut d = index.clone();
        for _ in 0..MAX_INDEX_DEPTH + 1 {
            d = m.put(&json!({ "schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": [d] }));
        }
        let (dd, b) = top(&m, &d);
        let e = err_text(resolve(&m, dd, b, "", &Platform::linux("amd64"), "reg/x:1"));
        assert!(e.contains(&format!("nest more than {MAX_INDEX_DEPTH} deep")) && e.contains("reg/x:1"), "{e}");

        // A nested manifest whose bytes do not match its descriptor.
        let key = amd["digest"].as_str().unwrap().to_string();
        m.0.get_mut(&key).unwrap().push(b' ');
        let (d, b) = top(&m, &index);
        let e = err_text(resolve(&m, d, b, "", &Platform::linux("amd64"), "reg/x:1"));
        assert!(e.contains("digest mismatch"), "{e}");
    }
}
