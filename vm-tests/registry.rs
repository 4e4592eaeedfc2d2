#![allow(dead_code)] // helpers used by the pull and CRI tests as they land
//! A real OCI distribution registry for the tests: Debian's `docker-registry` (distribution 2.8,
//! installed by tools/setup) started on 127.0.0.1 with a config of the test's own, storage in
//! the test's directory, optionally behind htpasswd basic auth; images are pushed into it from
//! OCI layouts with Debian's `skopeo`. Killed on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// The registry's and skopeo's binaries copied to tmpfs once (exec over 9p is slow).
fn tool(name: &str) -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = scratch().join(format!("regbin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for b in ["/usr/bin/docker-registry", "/usr/bin/skopeo"] {
            let file = Path::new(b).file_name().unwrap();
            let tmp = dir.join(file).with_extension("tmp");
            std::fs::copy(b, &tmp).unwrap_or_else(|e| panic!("copying {b} (Debian's docker-registry / skopeo from tools/setup): {e}"));
            std::fs::rename(&tmp, dir.join(file)).unwrap();
        }
        dir
    });
    dir.join(name)
}

/// A user the htpasswd registry accepts.
pub const USER: &str = "rcxuser";
pub const PASSWORD: &str = "rcx-secret-pw";

pub struct Registry {
    /// "127.0.0.1:PORT"
    pub addr: String,
    pub dir: PathBuf,
    /// Whether it asks for basic credentials ([`USER`], [`PASSWORD`]).
    pub auth: bool,
    child: Option<Child>,
}

impl Registry {
    /// Start a registry storing under `dir` (created). `auth`: htpasswd basic auth with
    /// [`USER`] / [`PASSWORD`] (bcrypt file written with `htpasswd -B`, apache2-utils).
    pub fn start(dir: &Path, auth: bool) -> Registry {
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let auth_section = if auth {
            let htpasswd = dir.join("htpasswd");
            sh(&format!("htpasswd -Bbn {USER} {PASSWORD} > {}", htpasswd.display()));
            format!("auth:\n  htpasswd:\n    realm: rcx-test\n    path: {}\n", htpasswd.display())
        } else {
            String::new()
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth_section}",
            dir.join("storage").display()
        );
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new(tool("docker-registry"))
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        let mut r = Registry { addr, dir: dir.to_path_buf(), auth, child: Some(child) };
        // Ready when /v2/ answers: 200 without auth, 401 with.
        let want = if auth { 401 } else { 200 };
        wait_for("the registry to answer /v2/", 60, || {
            if let Some(st) = r.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("docker-registry exited ({st}): {}", std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default());
            }
            (r.get_status("/v2/") == Some(want)).then_some(())
        });
        r
    }

    /// The HTTP status of a GET of `path` without credentials, None if nothing answers.
    pub fn get_status(&self, path: &str) -> Option<u16> {
        let mut c = TcpStream::connect(&self.addr).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(c, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr).ok()?;
        let mut head = [0u8; 12];
        c.read_exact(&mut head).ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    }

    /// Push the image `reference` (a ref name in `index.json`, or None for the only one) of the
    /// OCI layout `layout` as `repo:tag` with skopeo (plain HTTP).
    pub fn push_layout(&self, layout: &Path, reference: Option<&str>, repo_tag: &str) {
        let src = match reference {
            Some(r) => format!("oci:{}:{r}", layout.display()),
            None => format!("oci:{}", layout.display()),
        };
        let mut cmd = Command::new(tool("skopeo"));
        cmd.args(["copy", "--insecure-policy", "--dest-tls-verify=false"]);
        if self.auth {
            cmd.arg(format!("--dest-creds={USER}:{PASSWORD}"));
        }
        let out = cmd.arg(&src).arg(format!("docker://{}/{repo_tag}", self.addr)).output().expect("running skopeo");
        assert!(
            out.status.success(),
            "skopeo copy {src} -> {repo_tag} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// "127.0.0.1:PORT/repo:tag"
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A port nothing listens on now (the registry binds it a moment later; nothing else in the VM
/// races for ports).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
