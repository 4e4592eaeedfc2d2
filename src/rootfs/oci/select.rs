//! Which entry of an index is the image: by ref name, else the only one, else the one for
//! linux on this host's architecture.

use super::clip;
use super::document::Descriptor;
use crate::error::{Error, Result};

/// The architecture the host runs, in OCI's names, for picking a manifest from a multi-platform
/// index.
pub(super) fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// Pick one descriptor from an index's list. Entries that are neither manifests nor indexes
/// (attestations, signatures, other artifacts) are never picked.
pub(super) fn select(all: &[Descriptor], reference: Option<&str>, arch: &str, what: &str) -> Result<Descriptor> {
    let images: Vec<&Descriptor> = all.iter().filter(|d| d.is_manifest() || d.is_index()).collect();
    let listing = |ds: &[&Descriptor]| ds.iter().map(|d| d.describe()).collect::<Vec<_>>().join(", ");
    if images.is_empty() {
        return Err(Error::invalid(
            "OCI image",
            format!("{what} lists no image manifests; the layout holds no image, export one into it"),
        ));
    }
    let candidates: Vec<&Descriptor> = match reference {
        Some(r) => {
            let c: Vec<&Descriptor> = images.iter().copied().filter(|d| d.matches_ref(r)).collect();
            if c.is_empty() {
                return Err(Error::invalid(
                    "OCI image",
                    format!("{what} has no image named '{}'; it has: {}", clip(r), listing(&images)),
                ));
            }
            c
        }
        None => images.clone(),
    };
    if let [only] = candidates[..] {
        return Ok(only.clone());
    }
    let on_host: Vec<&Descriptor> = candidates
        .iter()
        .copied()
        .filter(|d| d.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch))
        .collect();
    match on_host[..] {
        [only] => Ok(only.clone()),
        [] => Err(Error::invalid(
            "OCI image",
            format!(
                "{what} has {} images and none for linux/{arch}; name one by its ref name: {}",
                candidates.len(),
                listing(&candidates)
            ),
        )),
        _ => Err(Error::invalid(
            "OCI image",
            format!(
                "{what} has {} images for linux/{arch}; name one by its ref name: {}",
                on_host.len(),
                listing(&on_host)
            ),
        )),
    }
}


#[cfg(test)]
mod tests {
    use super::super::*;
    use crate::rootfs::oci::image::LayerCompression;
    use crate::rootfs::oci::open::open_for;
    use crate::rootfs::oci::test_util::*;
    use serde_json::json;

    #[test]
    fn picks_by_ref_name() {
        let dir = tempfile::tempdir().unwrap();
        let a = put_image(
            dir.path(),
            &ImageSpec { layers: vec![(fake_tar(1, 10), LayerCompression::None)], platform: None },
        );
        let b = put_image(
            dir.path(),
            &ImageSpec { layers: vec![(fake_tar(2, 10), LayerCompression::None)], platform: None },
        );
        put_index(dir.path(), vec![named(a.clone(), "one"), named(b.clone(), "two")]);
        let img = open(dir.path(), Some("two")).unwrap();
        assert_eq!(img.manifest_digest.to_string(), b["digest"].as_str().unwrap());
        assert_eq!(img.ref_name.as_deref(), Some("two"));
        let img = open(dir.path(), Some("one")).unwrap();
        assert_eq!(img.manifest_digest.to_string(), a["digest"].as_str().unwrap());

        let e = err_text(open(dir.path(), Some("three")));
        assert!(e.contains("no image named 'three'") && e.contains("'one'") && e.contains("'two'"), "{e}");
        // Two images, no platforms, no reference: ambiguous, and the message lists the names.
        let e = err_text(open_for(dir.path(), None, "amd64"));
        assert!(e.contains("none for linux/amd64") && e.contains("'one'") && e.contains("'two'"), "{e}");
    }

    #[test]
    fn picks_platform_among_several() {
        let dir = tempfile::tempdir().unwrap();
        let amd = put_image(
            dir.path(),
            &ImageSpec {
                layers: vec![(fake_tar(1, 10), LayerCompression::None)],
                platform: Some(("linux", "amd64")),
            },
        );
        let arm = put_image(
            dir.path(),
            &ImageSpec {
                layers: vec![(fake_tar(2, 10), LayerCompression::None)],
                platform: Some(("linux", "arm64")),
            },
        );
        put_index(dir.path(), vec![arm.clone(), amd.clone()]);
        let img = open_for(dir.path(), None, "amd64").unwrap();
        assert_eq!(img.manifest_digest.to_string(), amd["digest"].as_str().unwrap());
        assert_eq!(img.architecture, "amd64");
        let img = open_for(dir.path(), None, "arm64").unwrap();
        assert_eq!(img.manifest_digest.to_string(), arm["digest"].as_str().unwrap());
        let e = err_text(open_for(dir.path(), None, "riscv64"));
        assert!(e.contains("none for linux/riscv64") && e.contains("linux/amd64"), "{e}");

        // Two for the same platform: ambiguous.
        let amd2 = put_image(
            dir.path(),
            &ImageSpec {
                layers: vec![(fake_tar(3, 10), LayerCompression::None)],
                platform: Some(("linux", "amd64")),
            },
        );
        put_index(dir.path(), vec![named(amd, "a"), named(amd2, "b"), arm]);
        let e = err_text(open_for(dir.path(), None, "amd64"));
        assert!(e.contains("2 images for linux/amd64") && e.contains("'a'") && e.contains("'b'"), "{e}");
        assert!(open_for(dir.path(), Some("b"), "amd64").is_ok());
    }

    #[test]
    fn follows_nested_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let amd = put_image(
            dir.path(),
            &ImageSpec {
                layers: vec![(fake_tar(1, 10), LayerCompression::Gzip)],
                platform: Some(("linux", "amd64")),
            },
        );
        let arm = put_image(
            dir.path(),
            &ImageSpec {
                layers: vec![(fake_tar(2, 10), LayerCompression::Gzip)],
                platform: Some(("linux", "arm64")),
            },
        );
        // An attestation-like entry that is not an image must never be picked.
        let mut att = put_blob(dir.path(), MEDIA_TYPE_MANIFEST, b"{}");
        att["mediaType"] = json!("application/vnd.in-toto+json");
        let inner =
            json!({ "schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": [arm, amd, att] });
        let inner_desc = put_blob(dir.path(), MEDIA_TYPE_INDEX, &serde_json::to_vec(&inner).unwrap());
        // Two levels of nesting.
        let outer = json!({ "schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": [inner_desc] });
        let outer_desc = put_blob(dir.path(), MEDIA_TYPE_INDEX, &serde_json::to_vec(&outer).unwrap());
        put_index(dir.path(), vec![named(outer_desc, "multi")]);
        let img = open_for(dir.path(), Some("multi"), "arm64").unwrap();
        assert_eq!(img.manifest_digest.to_string(), arm["digest"].as_str().unwrap());
        assert_eq!(img.ref_name.as_deref(), Some("multi"));
        let img = open_for(dir.path(), None, "amd64").unwrap();
        assert_eq!(img.manifest_digest.to_string(), amd["digest"].as_str().unwrap());
        assert_eq!(read_all(&img.layers[0]).unwrap(), fake_tar(1, 10));
    }
}
