//! Content digests (`sha256:<hex>`) and the chain ids built from them.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use super::clip;
use crate::error::{Error, Result};

/// A content digest, `sha256:<64 lowercase hex>`; the only algorithm OCI layouts use in practice.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Parse `sha256:<hex>`. The hex must be exactly 64 lowercase digits, which also keeps a
    /// crafted digest from naming a path outside `blobs/sha256/`.
    pub fn parse(s: &str) -> Result<Digest> {
        let Some((alg, hex)) = s.split_once(':') else {
            return Err(Error::invalid(
                "digest",
                format!("'{}' has no algorithm prefix; expected sha256:<64 hex digits>", clip(s)),
            ));
        };
        if alg != "sha256" {
            return Err(Error::invalid(
                "digest",
                format!(
                    "'{}' uses algorithm '{}'; only sha256 is supported, re-export the image with sha256 digests",
                    clip(s),
                    clip(alg)
                ),
            ));
        }
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(Error::invalid(
                "digest",
                format!("'{}' is not sha256: followed by exactly 64 lowercase hex digits", clip(s)),
            ));
        }
        Ok(Digest { hex: hex.to_owned() })
    }

    /// The sha256 digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// The digest a hasher has computed over what it was fed.
    pub(crate) fn from_hasher(h: Sha256) -> Digest {
        Digest { hex: to_hex(&h.finalize()) }
    }

    /// The 64 hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The algorithm; always "sha256".
    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }

    /// `sha256:` and the first 12 hex digits, for messages that name many digests.
    pub fn short(&self) -> String {
        format!("sha256:{}", &self.hex[..12])
    }
}

/// Lowercase hex, two digits a byte.
pub(super) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest(sha256:{})", self.hex)
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Digest> {
        Digest::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Chain ids (image-spec `config.md`): ChainID(L0) = DiffID(L0),
/// ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)). A chain id names a layer together
/// with everything under it, so equal chain ids are equal filesystems and can be shared.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(prev) => Digest::of(format!("{prev} {diff_id}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rootfs::oci::test_util::*;

    #[test]
    fn digest_parse_and_display() {
        let s = format!("sha256:{}", "0123456789abcdef".repeat(4));
        let d = Digest::parse(&s).unwrap();
        assert_eq!(d.to_string(), s);
        assert_eq!(d.hex(), &s[7..]);
        assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{s}\""));
        let back: Digest = serde_json::from_str(&format!("\"{s}\"")).unwrap();
        assert_eq!(back, d);
        assert!(serde_json::from_str::<Digest>("\"sha256:xyz\"").is_err());
    }

    #[test]
    fn digest_refuses_bad_forms() {
        let upper = format!("sha256:{}", "A".repeat(64));
        let short = format!("sha256:{}", "a".repeat(63));
        let traversal = format!("sha256:../../../../etc/passwd{}", "a".repeat(37));
        let slash = format!("sha256:{}/{}", "a".repeat(31), "a".repeat(32));
        for bad in [upper.as_str(), short.as_str(), traversal.as_str(), slash.as_str(), "", "sha256:"] {
            let e = err_text(Digest::parse(bad));
            assert!(e.contains("64 lowercase hex") || e.contains("no algorithm"), "{bad}: {e}");
        }
        let e = err_text(Digest::parse(&format!("sha512:{}", "a".repeat(128))));
        assert!(e.contains("only sha256 is supported"), "{e}");
    }

    #[test]
    fn chain_ids_follow_the_definition() {
        let a = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        let b = Digest::parse(&format!("sha256:{}", "b".repeat(64))).unwrap();
        let c = Digest::of(b"c");
        let ids = chain_ids(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(ids[0], a);
        // The known vector: sha256 of the ASCII string "sha256:aaa... sha256:bbb...".
        let s = format!("sha256:{} sha256:{}", "a".repeat(64), "b".repeat(64));
        assert_eq!(ids[1].to_string(), sha(s.as_bytes()));
        assert_eq!(ids[2].to_string(), sha(format!("{} {}", ids[1], c).as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }
}
