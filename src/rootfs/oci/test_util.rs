//! Builders of OCI layouts for the unit tests: blobs, manifests, indexes, and layouts of one
//! image, written to a temporary directory for tests to read or tamper with.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::digest::to_hex;
use super::image::{Layer, LayerCompression};
use super::{ANNOTATION_REF_NAME, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};
use crate::error::{IoContext, Result};

pub(super) fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", to_hex(&Sha256::digest(bytes)))
}

/// Store `bytes` as a blob; its descriptor (as JSON, for tests to tamper with).
pub(super) fn put_blob(root: &Path, media_type: &str, bytes: &[u8]) -> serde_json::Value {
    let d = sha(bytes);
    let dir = root.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&d[7..]), bytes).unwrap();
    json!({ "mediaType": media_type, "digest": d, "size": bytes.len() })
}

pub(super) fn blob_file(root: &Path, desc: &serde_json::Value) -> PathBuf {
    root.join("blobs/sha256").join(&desc["digest"].as_str().unwrap()[7..])
}

pub(super) fn compress(tar: &[u8], c: LayerCompression) -> (Vec<u8>, &'static str) {
    match c {
        LayerCompression::None => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
        LayerCompression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(tar).unwrap();
            (e.finish().unwrap(), "application/vnd.oci.image.layer.v1.tar+gzip")
        }
        LayerCompression::Zstd => {
            (zstd::encode_all(tar, 3).unwrap(), "application/vnd.oci.image.layer.v1.tar+zstd")
        }
    }
}

/// Something shaped like a tar: content, then the two zero blocks of the end marker and
/// more zero padding, which a tar reader leaves unread.
pub(super) fn fake_tar(seed: u8, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    v.extend(std::iter::repeat_n(0u8, 10240 - len % 512));
    v
}

/// One image to write: its layers (tar, compression) and the platform its descriptor names.
pub(super) struct ImageSpec {
    pub(super) layers: Vec<(Vec<u8>, LayerCompression)>,
    pub(super) platform: Option<(&'static str, &'static str)>,
}

/// Write layers, config and manifest of one image; the manifest's descriptor.
pub(super) fn put_image(root: &Path, spec: &ImageSpec) -> serde_json::Value {
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (tar, c) in &spec.layers {
        let (blob, mt) = compress(tar, *c);
        layer_descs.push(put_blob(root, mt, &blob));
        diff_ids.push(sha(tar));
    }
    let config = json!({
        "architecture": spec.platform.map(|p| p.1).unwrap_or("amd64"),
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "Entrypoint": null, "WorkingDir": "/w", "User": "1:1" },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    put_manifest(root, &config, layer_descs, spec.platform)
}

pub(super) fn put_manifest(
    root: &Path,
    config: &serde_json::Value,
    layers: Vec<serde_json::Value>,
    platform: Option<(&str, &str)>,
) -> serde_json::Value {
    let config_desc =
        put_blob(root, "application/vnd.oci.image.config.v1+json", &serde_json::to_vec(config).unwrap());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": config_desc,
        "layers": layers,
    });
    let mut d = put_blob(root, MEDIA_TYPE_MANIFEST, &serde_json::to_vec(&manifest).unwrap());
    if let Some((os, arch)) = platform {
        d["platform"] = json!({ "os": os, "architecture": arch });
    }
    d
}

pub(super) fn put_index(root: &Path, manifests: Vec<serde_json::Value>) {
    std::fs::write(root.join("oci-layout"), br#"{"imageLayoutVersion": "1.0.0"}"#).unwrap();
    let index = json!({ "schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": manifests });
    std::fs::write(root.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

pub(super) fn named(mut d: serde_json::Value, name: &str) -> serde_json::Value {
    d["annotations"] = json!({ ANNOTATION_REF_NAME: name });
    d
}

pub(super) fn one_layer() -> ImageSpec {
    ImageSpec { layers: vec![(fake_tar(1, 3000), LayerCompression::Gzip)], platform: None }
}

/// A layout with one image of the given layers; (dir, manifest descriptor).
pub(super) fn layout(layers: Vec<(Vec<u8>, LayerCompression)>) -> (tempfile::TempDir, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let m = put_image(dir.path(), &ImageSpec { layers, platform: None });
    put_index(dir.path(), vec![named(m.clone(), "latest")]);
    (dir, m)
}

pub(super) fn err_text<T: fmt::Debug>(r: Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

pub(super) fn read_all(layer: &Layer) -> Result<Vec<u8>> {
    let mut r = layer.open()?;
    let mut out = Vec::new();
    r.read_to_end(&mut out).ctx(|| "reading".into())?;
    r.finish()?;
    Ok(out)
}
