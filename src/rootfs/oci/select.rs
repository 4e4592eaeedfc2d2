//! Which entry of an index is the image: by ref name, else the only one, else the one for
//! linux on this host's architecture.

use super::clip;
use super::document::Descriptor;
use crate::error::{Error, Result};

/// The platform an image is wanted for: `os/architecture[/variant]` in OCI's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`, ...
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v7`, `v8`, ...; None matches any variant.
    pub variant: Option<String>,
}

impl Platform {
    /// linux on the architecture this host runs.
    pub fn host() -> Platform {
        Platform::linux(host_architecture())
    }

    /// linux on `architecture`.
    pub fn linux(architecture: &str) -> Platform {
        Platform { os: "linux".into(), architecture: architecture.into(), variant: None }
    }

    /// Parse `os/arch` or `os/arch/variant` (`--platform`, as docker and podman take it).
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        match parts[..] {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform { os: os.into(), architecture: arch.into(), variant: None }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => {
                Ok(Platform { os: os.into(), architecture: arch.into(), variant: Some(v.into()) })
            }
            _ => Err(Error::invalid(
                "platform",
                format!("'{}' is not os/architecture[/variant], e.g. linux/amd64 or linux/arm/v7", clip(s)),
            )),
        }
    }

    fn matches(&self, p: &super::document::Platform) -> bool {
        p.os == self.os && p.architecture == self.architecture && self.variant.as_ref().is_none_or(|v| p.variant.as_ref() == Some(v))
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

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
pub(super) fn select(all: &[Descriptor], reference: Option<&str>, platform: &Platform, what: &str) -> Result<Descriptor> {
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
        .filter(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
        .collect();
    match on_host[..] {
        [only] => Ok(only.clone()),
        [] => Err(Error::invalid(
            "OCI image",
            format!(
                "{what} has {} images and none for {platform}; name one by its ref name: {}",
                candidates.len(),
                listing(&candidates)
            ),
        )),
        _ => Err(Error::invalid(
            "OCI image",
            format!(
                "{what} has {} images for {platform}; name one by its ref name: {}",
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
    use super::Platform;
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
        let e = err_text(open_for(dir.path(), None, &Platform::linux("amd64")));
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
        let img = open_for(dir.path(), None, &Platform::linux("amd64")).unwrap();
        assert_eq!(img.manifest_digest.to_string(), amd["digest"].as_str().unwrap());
        assert_eq!(img.architecture, "amd64");
        let img = open_for(dir.path(), None, &Platform::linux("arm64")).unwrap();
        assert_eq!(img.manifest_digest.to_string(), arm["digest"].as_str().unwrap());
        let e = err_text(open_for(dir.path(), None, &Platform::linux("riscv64")));
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
        let e = err_text(open_for(dir.path(), None, &Platform::linux("amd64")));
        assert!(e.contains("2 images for linux/amd64") && e.contains("'a'") && e.contains("'b'"), "{e}");
        assert!(open_for(dir.path(), Some("b"), &Platform::linux("amd64")).is_ok());
    }

    #[test]
    fn platforms_parse_and_variants_match() {
        assert_eq!(Platform::parse("linux/arm64").unwrap(), Platform::linux("arm64"));
        let v7 = Platform::parse("linux/arm/v7").unwrap();
        assert_eq!(v7.variant.as_deref(), Some("v7"));
        assert_eq!(v7.to_string(), "linux/arm/v7");
        for bad in ["", "linux", "linux/", "/amd64", "linux/amd64/v1/x", "linux/am d64"] {
            let e = Platform::parse(bad).unwrap_err().to_string();
            assert!(e.contains("os/architecture"), "{bad}: {e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let img = |seed, variant: &str| {
            let mut d = put_image(
                dir.path(),
                &ImageSpec { layers: vec![(fake_tar(seed, 10), LayerCompression::None)], platform: Some(("linux", "arm")) },
            );
            d["platform"]["variant"] = json!(variant);
            d
        };
        let (v6, v7d) = (img(1, "v6"), img(2, "v7"));
        put_index(dir.path(), vec![v6, v7d.clone()]);
        let got = open_for(dir.path(), None, &v7).unwrap();
        assert_eq!(got.manifest_digest.to_string(), v7d["digest"].as_str().unwrap());
        // Without a variant both match: ambiguous, said so.
        let e = err_text(open_for(dir.path(), None, &Platform::linux("arm")));
        assert!(e.contains("2 images for linux/arm"), "{e}");
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
        let img = open_for(dir.path(), Some("multi"), &Platform::linux("arm64")).unwrap();
        assert_eq!(img.manifest_digest.to_string(), arm["digest"].as_str().unwrap());
        assert_eq!(img.ref_name.as_deref(), Some("multi"));
        let img = open_for(dir.path(), None, &Platform::linux("amd64")).unwrap();
        assert_eq!(img.manifest_digest.to_string(), amd["digest"].as_str().unwrap());
        assert_eq!(read_all(&img.layers[0]).unwrap(), fake_tar(1, 10));
    }
}
