//! Image references (`[registry[:port]/]repository[:tag][@digest]`, as docker and podman take
//! them) and whether a registry is spoken to over plain HTTP.

use std::str::FromStr;

use oci_client::Reference;

use crate::error::{Error, Result};

/// Parse `reference` the way docker does: no registry means Docker Hub, no tag means `latest`.
pub fn parse(reference: &str) -> Result<Reference> {
    if reference.is_empty() || reference.len() > 1024 || reference.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(reference, "it is empty, too long or has spaces".into()));
    }
    let r = Reference::from_str(reference).map_err(|e| bad(reference, e.to_string()))?;
    // The distribution spec's repository grammar: lowercase components.
    if !r.repository().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)) {
        return Err(bad(reference, "a repository name has only lowercase letters, digits, '.', '_', '-' and '/'".into()));
    }
    Ok(r)
}

fn bad(reference: &str, why: String) -> Error {
    let shown: String = reference.chars().take(100).collect();
    Error::invalid(
        "image reference",
        format!("'{shown}' does not parse ({why}); expected [REGISTRY[:PORT]/]REPOSITORY[:TAG][@sha256:DIGEST], e.g. 127.0.0.1:5000/app:1"),
    )
}

/// Registries reached over plain HTTP without `--plain-http`: this host's own, as docker and
/// podman treat them (no certificate can name them).
pub fn is_local(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        // "[::1]:5000" or "host:5000"; a bare "[::1]" has its colon inside the brackets.
        Some((h, port)) if !port.contains(']') => h,
        _ => registry,
    };
    matches!(host, "localhost" | "127.0.0.1" | "[::1]") || host.starts_with("127.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_like_docker() {
        let r = parse("127.0.0.1:5000/app/web:1.2").unwrap();
        assert_eq!((r.registry(), r.repository(), r.tag()), ("127.0.0.1:5000", "app/web", Some("1.2")));
        let r = parse("busybox").unwrap();
        assert_eq!((r.registry(), r.repository(), r.tag()), ("docker.io", "library/busybox", Some("latest")));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse(&format!("localhost:5000/x@{d}")).unwrap();
        assert_eq!((r.tag(), r.digest()), (None, Some(d.as_str())));
        for bad in ["", "UPPER/case", "a b", "x:", "127.0.0.1:5000/x:bad tag", "x@sha256:12", ":tag", "a//b"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("does not parse") && e.contains("REPOSITORY[:TAG]"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn local_registries_are_plain_http() {
        for l in ["localhost", "localhost:5000", "127.0.0.1:5000", "127.0.0.2", "[::1]:5000", "[::1]"] {
            assert!(is_local(l), "{l}");
        }
        for r in ["docker.io", "registry.example:5000", "10.0.0.1:5000", "localhost.example:5000", "128.0.0.1"] {
            assert!(!is_local(r), "{r}");
        }
    }
}
