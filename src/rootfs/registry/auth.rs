//! Registry credentials from a docker `config.json` (`~/.docker/config.json`, `$DOCKER_CONFIG`)
//! or a podman auth file (`--auth-file`, `$REGISTRY_AUTH_FILE`): the `auths` map, keyed by
//! registry. Credential helpers (`credsStore`, `credHelpers`) are programs rcx-dm does not run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use crate::error::{Error, IoContext, Result};

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    /// base64 of `user:password`.
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    /// A bearer token for the registry itself.
    #[serde(default)]
    registrytoken: Option<String>,
    /// An OAuth refresh token (docker login with a browser); needs a token exchange.
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The file credentials are read from when no `--auth-file` is given: `$REGISTRY_AUTH_FILE`,
/// else `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn default_auth_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        return Some(PathBuf::from(p));
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(Path::new(&d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker/config.json"))
}

/// The credentials for `registry` in the auth file at `path` (Anonymous when the file does not
/// exist and `required` is false, or has nothing for the registry).
pub fn credentials(path: &Path, required: bool, registry: &str) -> Result<RegistryAuth> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(RegistryAuth::Anonymous),
        Err(e) => return Err(e).ctx(|| format!("reading the auth file {}", path.display())),
    };
    from_json(&bytes, registry).map_err(|why| Error::invalid("auth file", format!("{}: {why}", path.display())))
}

/// The credentials for `registry` in a config.json's text.
pub(crate) fn from_json(bytes: &[u8], registry: &str) -> std::result::Result<RegistryAuth, String> {
    let cfg: ConfigFile = serde_json::from_slice(bytes).map_err(|e| format!("not a docker config.json / auth.json ({e})"))?;
    let want = normalize(registry);
    let Some((key, entry)) = cfg.auths.iter().find(|(k, _)| normalize(k) == want) else {
        if let Some(h) = cfg.cred_helpers.get(registry).or(cfg.creds_store.as_ref()) {
            tracing::warn!(helper = %h, registry, "credentials are kept by a credential helper, which rcx-dm does not run; pulling anonymously");
        }
        return Ok(RegistryAuth::Anonymous);
    };
    if let Some(t) = &entry.registrytoken {
        return Ok(RegistryAuth::Bearer(t.clone()));
    }
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(RegistryAuth::Basic(u.clone(), p.clone()));
    }
    if let Some(a) = &entry.auth {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.trim())
            .map_err(|e| format!("auths[\"{key}\"].auth is not base64 ({e})"))?;
        let s = String::from_utf8(raw).map_err(|_| format!("auths[\"{key}\"].auth is not UTF-8 text"))?;
        let (u, p) = s.split_once(':').ok_or_else(|| format!("auths[\"{key}\"].auth is not base64 of user:password"))?;
        return Ok(RegistryAuth::Basic(u.to_string(), p.to_string()));
    }
    if entry.identitytoken.is_some() {
        return Err(format!(
            "auths[\"{key}\"] holds only an identity token (an OAuth login), which rcx-dm cannot exchange; log in with a user and password or token instead"
        ));
    }
    Err(format!("auths[\"{key}\"] has no auth, username/password or registrytoken"))
}

/// Keys may be `host:port`, `https://host/v1/` or a Docker Hub alias.
fn normalize(key: &str) -> String {
    let k = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        h => h.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(r: RegistryAuth) -> (String, String) {
        match r {
            RegistryAuth::Basic(u, p) => (u, p),
            other => panic!("not basic: {other:?}"),
        }
    }

    #[test]
    fn auths_entries_are_read() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("joe:s3cr:et");
        let j = format!(
            r#"{{"auths": {{"127.0.0.1:5000": {{"auth": "{b64}"}},
                "https://index.docker.io/v1/": {{"username": "hub", "password": "pw"}},
                "tok.example": {{"registrytoken": "T"}},
                "oauth.example": {{"identitytoken": "R"}},
                "empty.example": {{}}}}, "credsStore": "desktop"}}"#
        );
        let j = j.as_bytes();
        // The password may hold a colon: split at the first one only.
        assert_eq!(basic(from_json(j, "127.0.0.1:5000").unwrap()), ("joe".into(), "s3cr:et".into()));
        assert_eq!(basic(from_json(j, "docker.io").unwrap()), ("hub".into(), "pw".into()));
        assert_eq!(basic(from_json(j, "index.docker.io").unwrap()), ("hub".into(), "pw".into()));
        assert!(matches!(from_json(j, "tok.example").unwrap(), RegistryAuth::Bearer(t) if t == "T"));
        assert!(matches!(from_json(j, "127.0.0.1:5001").unwrap(), RegistryAuth::Anonymous));
        assert!(from_json(j, "oauth.example").unwrap_err().contains("identity token"));
        assert!(from_json(j, "empty.example").unwrap_err().contains("no auth"));
        assert!(from_json(br#"{"auths": {"r": {"auth": "!!"}}}"#, "r").unwrap_err().contains("not base64"));
        let nocolon = base64::engine::general_purpose::STANDARD.encode("joe");
        assert!(from_json(format!(r#"{{"auths": {{"r": {{"auth": "{nocolon}"}}}}}}"#).as_bytes(), "r").unwrap_err().contains("user:password"));
        assert!(from_json(b"[1]", "r").unwrap_err().contains("not a docker config.json"));
        assert!(matches!(from_json(b"{}", "r").unwrap(), RegistryAuth::Anonymous));
    }

    #[test]
    fn files_missing_or_required() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("none.json");
        assert!(matches!(credentials(&p, false, "r").unwrap(), RegistryAuth::Anonymous));
        let e = credentials(&p, true, "r").unwrap_err().to_string();
        assert!(e.contains("none.json"), "{e}");
        std::fs::write(&p, "{not json").unwrap();
        let e = credentials(&p, false, "r").unwrap_err().to_string();
        assert!(e.contains("auth file") && e.contains("none.json"), "{e}");
    }
}
