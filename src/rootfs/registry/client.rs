//! One registry session: the `oci-client` client on a tokio runtime of its own (made only by
//! `image pull` / `image push`, so nothing else pays for it), the reference, the credentials, and
//! the registry's errors turned into messages that say what to do.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use super::{auth, reference};
use crate::error::{Error, Result};
use crate::rootfs::oci::{Digest, Documents, MAX_JSON_BYTES};

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct Connect {
    /// Speak plain HTTP to it (always so for localhost / 127.x).
    pub plain_http: bool,
    /// Credentials file; None: `$REGISTRY_AUTH_FILE`, `$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json` if one exists.
    pub auth_file: Option<PathBuf>,
}

/// The media types asked for when a manifest is fetched by tag or digest.
const ACCEPT: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

pub(crate) struct Remote {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) client: Arc<Client>,
    pub(crate) reference: Reference,
    /// The reference as the user gave it, for messages.
    pub(crate) given: String,
    pub(crate) auth: RegistryAuth,
    /// Where layer blobs are downloaded to (`<dir>/blobs/sha256/<hex>`), for `Documents`.
    pub(crate) blob_dir: PathBuf,
}

impl Remote {
    pub(crate) fn new(given: &str, c: &Connect, blob_dir: PathBuf, op: RegistryOperation) -> Result<Remote> {
        let reference = reference::parse(given)?;
        let registry = reference.resolve_registry().to_string();
        let auth = match &c.auth_file {
            Some(p) => auth::credentials(p, true, reference.registry())?,
            None => match auth::default_auth_file() {
                Some(p) => auth::credentials(&p, false, reference.registry())?,
                None => RegistryAuth::Anonymous,
            },
        };
        let protocol = if c.plain_http || reference::is_local(&registry) {
            ClientProtocol::HttpsExcept(vec![registry])
        } else {
            ClientProtocol::Https
        };
        let client = Client::new(ClientConfig {
            protocol,
            // Index resolution is rcx-dm's own (oci::select), shared with `image import`.
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(300)),
            ..Default::default()
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::Io { context: "starting the registry client's runtime".into(), source: e })?;
        let r = Remote { rt, client: Arc::new(client), reference, given: given.to_string(), auth, blob_dir };
        // The token dance (or basic credentials) once, up front, so a refusal is said plainly.
        r.rt.block_on(r.client.auth(&r.reference, &r.auth, op)).map_err(|e| r.error("authenticating", e))?;
        Ok(r)
    }

    /// The registry's error, said about the reference, with what to do.
    pub(crate) fn error(&self, doing: &str, e: OciDistributionError) -> Error {
        registry_error(&self.given, self.reference.resolve_registry(), doing, e, !matches!(self.auth, RegistryAuth::Anonymous))
    }

    /// The manifest or index the reference names: (its digest, its bytes).
    pub(crate) fn top(&self) -> Result<(Digest, Vec<u8>)> {
        let (bytes, digest) = self
            .rt
            .block_on(self.client.pull_manifest_raw(&self.reference, &self.auth, ACCEPT))
            .map_err(|e| self.error("fetching the manifest", e))?;
        if bytes.len() as u64 > MAX_JSON_BYTES {
            return Err(self.bad(format!("its manifest is {} bytes, over the {MAX_JSON_BYTES} allowed", bytes.len())));
        }
        // oci-client checked the body against a digest in the reference or the registry's
        // Docker-Content-Digest; ours is computed from the bytes themselves.
        let actual = Digest::of(&bytes);
        if digest != actual.to_string() {
            return Err(self.bad(format!("the registry says the manifest is {digest} but it hashes to {actual}")));
        }
        Ok((actual, bytes.to_vec()))
    }

    fn bad(&self, why: String) -> Error {
        Error::Registry { reference: self.given.clone(), why }
    }

    /// A whole small blob (a config), read with a cap and checked.
    fn small_blob(&self, digest: &Digest, size: u64, what: &str) -> Result<Vec<u8>> {
        check_json_size(size, what).map_err(|w| self.bad(w))?;
        let desc = descriptor(digest, size, "");
        let bytes = self.rt.block_on(async {
            let mut s = self.client.pull_blob_stream(&self.reference, &desc).await.map_err(|e| self.error(&format!("fetching {what}"), e))?;
            let mut out = Vec::with_capacity(size as usize);
            while let Some(chunk) = s.next().await {
                let chunk = chunk.map_err(|e| self.bad(format!("fetching {what}: {e}")))?;
                out.extend_from_slice(&chunk);
                if out.len() as u64 > size {
                    return Err(self.bad(format!("{what}: the registry sent more than the {size} bytes its descriptor says")));
                }
            }
            Ok(out)
        })?;
        verify(&bytes, digest, size, what).map_err(|w| self.bad(w))?;
        Ok(bytes)
    }
}

fn check_json_size(size: u64, what: &str) -> std::result::Result<(), String> {
    if size > MAX_JSON_BYTES {
        return Err(format!("{what}: descriptor says {size} bytes, over the {MAX_JSON_BYTES} allowed"));
    }
    Ok(())
}

fn verify(bytes: &[u8], digest: &Digest, size: u64, what: &str) -> std::result::Result<(), String> {
    if bytes.len() as u64 != size {
        return Err(format!("{what}: the registry sent {} bytes but the descriptor says {size} (truncated?)", bytes.len()));
    }
    let actual = Digest::of(bytes);
    if actual != *digest {
        return Err(format!("{what}: digest mismatch (the registry sent {actual}); the registry's copy is damaged"));
    }
    Ok(())
}

pub(crate) fn descriptor(digest: &Digest, size: u64, media_type: &str) -> OciDescriptor {
    OciDescriptor { digest: digest.to_string(), size: size as i64, media_type: media_type.to_string(), ..Default::default() }
}

impl Documents for Remote {
    fn manifest(&self, digest: &Digest, size: u64, what: &str) -> Result<Vec<u8>> {
        check_json_size(size, what).map_err(|w| self.bad(w))?;
        let r = self.reference.clone_with_digest(digest.to_string());
        let (bytes, _) = self
            .rt
            .block_on(self.client.pull_manifest_raw(&r, &self.auth, ACCEPT))
            .map_err(|e| self.error(&format!("fetching {what}"), e))?;
        verify(&bytes, digest, size, what).map_err(|w| self.bad(w))?;
        Ok(bytes.to_vec())
    }
    fn config(&self, digest: &Digest, size: u64, what: &str) -> Result<Vec<u8>> {
        self.small_blob(digest, size, what)
    }
    fn check_layer(&self, _: &Digest, _: u64, _: &str) -> Result<()> {
        Ok(()) // fetched, and checked as it arrives, later
    }
    fn blob_dir(&self) -> &std::path::Path {
        &self.blob_dir
    }
}

/// A registry error as a message: what failed, the likely cause, and what to do.
pub(crate) fn registry_error(given: &str, registry: &str, doing: &str, e: OciDistributionError, had_creds: bool) -> Error {
    let creds = if had_creds {
        "the credentials given were refused; check them in the auth file".to_string()
    } else {
        format!("no credentials were found for {registry}; put them in ~/.docker/config.json (`auths`) or give --auth-file")
    };
    let why = match &e {
        OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
            format!("{doing}: the registry answered 401 Unauthorized: {creds}")
        }
        OciDistributionError::ServerError { code: 401, .. } => format!("{doing}: the registry answered 401 Unauthorized: {creds}"),
        OciDistributionError::ServerError { code: 403, .. } => format!("{doing}: the registry answered 403 Forbidden: {creds}"),
        OciDistributionError::ServerError { code: 404, .. } => {
            format!("{doing}: not found (404): the registry has no such repository or tag; check the repository name and tag")
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<String> = envelope.errors.iter().map(|x| format!("{:?}: {}", x.code, x.message)).collect();
            let all = codes.join("; ");
            if codes.iter().any(|c| c.contains("Unknown")) {
                format!("{doing}: not found ({all}); check the repository name and tag")
            } else if codes.iter().any(|c| c.contains("Unauthorized") || c.contains("Denied")) {
                format!("{doing}: the registry refused ({all}); {creds}")
            } else {
                format!("{doing}: the registry refused: {all}")
            }
        }
        OciDistributionError::ServerError { code, message, .. } => {
            let m: String = message.chars().take(200).collect();
            format!("{doing}: the registry answered {code} ({}); try again later or check the registry's log", m.trim())
        }
        OciDistributionError::RequestError(r) if r.is_connect() || r.is_timeout() => {
            let detail = source_chain(r);
            let tls = if detail.contains("https://") { " (use --plain-http for a registry without TLS)" } else { "" };
            format!("{doing}: cannot reach the registry {registry} ({detail}); is it running and is the address right?{tls}")
        }
        other => format!("{doing}: {}", source_chain(other)),
    };
    Error::Registry { reference: given.to_string(), why }
}

/// An error and its causes on one line (reqwest hides the useful part in its sources).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
