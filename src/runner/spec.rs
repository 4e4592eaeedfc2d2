//! What a run asks for (`RunSpec`, `Net`) and the checks on it, done before anything is touched.

use super::cgroup::Limits;
use super::security::Security;
use super::userns::{self, Userns};
use crate::error::{Error, Result};
use crate::pool::VolRef;

/// PATH inside the container unless --env sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The container's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Net {
    /// A new network namespace with only `lo` (up).
    #[default]
    None,
    /// The host's network namespace.
    Host,
    /// A new network namespace with eth0 on the host bridge `rcx0` (10.77.0.0/16).
    Bridge,
}

/// What to run and how.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    /// The volume that becomes the container's root (required).
    pub volume: Option<VolRef>,
    /// Delete the container snapshot afterwards.
    pub rm: bool,
    /// Name of the container snapshot (and default hostname).
    pub name: Option<String>,
    /// The container's hostname; defaults to the name, else the run id.
    pub hostname: Option<String>,
    /// cgroup v2 limits (none by default).
    pub limits: Limits,
    /// The container's network.
    pub net: Net,
    /// Extra environment, applied over the defaults in order.
    pub env: Vec<(String, String)>,
    /// The command's working directory (absolute, inside the container); defaults to `/`.
    pub workdir: Option<String>,
    /// Mount the root filesystem read-only.
    pub read_only: bool,
    /// A tiny init as PID 1 (signal forwarding, reaping); the command is then PID 2.
    pub init: bool,
    /// `-i`: the container's stdin is rcx-dm's; otherwise it is /dev/null.
    pub interactive: bool,
    /// `-t`: a fresh pseudo-terminal for the container (its controlling terminal, 0, 1, 2 and
    /// `/dev/console`), copied to and from rcx-dm's stdout and (with `-i`) stdin.
    pub tty: bool,
    /// Capabilities, `--privileged`, no-new-privileges and seccomp.
    pub security: Security,
    /// `--userns`: the container's ids map to an unprivileged range of host ids (none: the
    /// host's ids, as runc's default).
    pub userns: Option<Userns>,
    /// The command and its arguments (`argv[0]` is searched in the container's PATH).
    pub argv: Vec<String>,
}

/// `--env K=V` (or `K`, which takes rcx-dm's own value of K, and is skipped if unset).
pub fn parse_env(text: &str) -> Result<Option<(String, String)>> {
    let (k, v) = match text.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (text, None),
    };
    if k.is_empty() || k.contains('\0') || v.is_some_and(|v| v.contains('\0')) {
        return Err(Error::invalid("environment variable", format!("'{}'; use NAME=VALUE", text.escape_debug())));
    }
    Ok(match v {
        Some(v) => Some((k.to_string(), v.to_string())),
        None => std::env::var(k).ok().map(|v| (k.to_string(), v)),
    })
}

/// Hostnames: 1-64 of letters, digits, '-' and '.', not starting with '-' or '.'.
pub fn validate_hostname(h: &str) -> Result<()> {
    let ok = !h.is_empty()
        && h.len() <= 64
        && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !h.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(Error::invalid("hostname", format!("'{h}'; use 1-64 letters, digits, '-' and '.'")))
    }
}

impl RunSpec {
    /// Refuse a spec that cannot run, before anything is created.
    pub(super) fn validate(&self) -> Result<()> {
        if self.volume.is_none() {
            return Err(Error::invalid("volume", "none given"));
        }
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err(Error::invalid("command", "none given; put it after --, e.g. `rcx-dm run 1 -- /bin/sh`"));
        }
        if let Some(h) = &self.hostname {
            validate_hostname(h)?;
        }
        if let Some(n) = &self.name {
            crate::pool::validate_volume_name(n)?;
        }
        if let Some(w) = &self.workdir {
            if !w.starts_with('/') {
                return Err(Error::invalid("working directory", format!("'{w}'; give an absolute path like /root")));
            }
        }
        self.security.validate()?;
        self.check_userns()
    }

    /// Refuse a `--userns` range that is malformed, or combined with `--privileged` or
    /// `--net host` (the CLI calls this before opening the pool).
    pub fn check_userns(&self) -> Result<()> {
        match &self.userns {
            None => Ok(()),
            Some(u) => {
                if let Userns::Range(r) = u {
                    r.validate()?;
                }
                userns::check_combination(u, &self.security, self.net)
            }
        }
    }

    /// The container's environment: PATH, HOME, HOSTNAME, TERM (rcx-dm's; with `-t` and none
    /// set, xterm as Docker's), then --env in order.
    pub fn environment(&self, hostname: &str) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), DEFAULT_PATH.into()),
            ("HOME".into(), "/root".into()),
            ("HOSTNAME".into(), hostname.into()),
        ];
        if let Some(t) = std::env::var("TERM").ok().or_else(|| self.tty.then(|| "xterm".to_string())) {
            env.push(("TERM".into(), t));
        }
        for (k, v) in &self.env {
            match env.iter_mut().find(|(ek, _)| ek == k) {
                Some(e) => e.1 = v.clone(),
                None => env.push((k.clone(), v.clone())),
            }
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values() {
        assert_eq!(parse_env("A=1").unwrap(), Some(("A".into(), "1".into())));
        assert_eq!(parse_env("A=").unwrap(), Some(("A".into(), "".into())));
        assert_eq!(parse_env("A=b=c").unwrap(), Some(("A".into(), "b=c".into())));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("").is_err());
        assert_eq!(parse_env("RCX_DM_SURELY_UNSET_VARIABLE").unwrap(), None);
        std::env::set_var("RCX_DM_TEST_ENV_PASS", "v");
        assert_eq!(parse_env("RCX_DM_TEST_ENV_PASS").unwrap(), Some(("RCX_DM_TEST_ENV_PASS".into(), "v".into())));
    }

    #[test]
    fn environment_defaults_and_overrides() {
        let spec = RunSpec {
            env: vec![("PATH".into(), "/bin".into()), ("X".into(), "1".into()), ("X".into(), "2".into())],
            ..Default::default()
        };
        let env = spec.environment("box");
        let get = |k: &str| env.iter().filter(|(ek, _)| ek == k).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
        assert_eq!(get("PATH"), vec!["/bin"]);
        assert_eq!(get("X"), vec!["2"]);
        assert_eq!(get("HOSTNAME"), vec!["box"]);
        assert_eq!(get("HOME"), vec!["/root"]);
    }

    #[test]
    fn hostnames() {
        validate_hostname("box1").unwrap();
        validate_hostname("a.b-c").unwrap();
        for bad in ["", "-x", ".x", "a b", "a_b", &"x".repeat(65)] {
            assert!(validate_hostname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn specs_are_checked_before_anything_happens() {
        let ok = RunSpec { volume: Some(VolRef::Id(1)), argv: vec!["true".into()], ..Default::default() };
        ok.validate().unwrap();
        assert!(RunSpec { argv: vec![], ..ok.clone() }.validate().is_err());
        assert!(RunSpec { workdir: Some("rel".into()), ..ok.clone() }.validate().is_err());
        assert!(RunSpec { hostname: Some("a b".into()), ..ok.clone() }.validate().is_err());
        assert!(RunSpec { name: Some("123".into()), ..ok.clone() }.validate().is_err());
        let auto = RunSpec { userns: Some(Userns::Auto), ..ok.clone() };
        auto.validate().unwrap();
        assert!(RunSpec { net: Net::Host, ..auto.clone() }.validate().is_err());
        let mut p = auto.clone();
        p.security.privileged = true;
        assert!(p.validate().is_err());
        let empty = userns::IdRange { host: 5, count: 0 };
        assert!(RunSpec { userns: Some(Userns::Range(empty)), ..ok.clone() }.validate().is_err());
    }
}
