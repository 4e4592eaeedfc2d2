//! Every device-mapper name and uuid rcx-dm makes, built in one place so that no two pools (or
//! a pool and some other tool) can ever mean the same device.
//!
//! Name: the pool name with each `-` doubled (LVM's escaping), a single `-`, then the part
//! local to the pool:
//!
//! | device                 | name                  | uuid                          |
//! |------------------------|-----------------------|-------------------------------|
//! | thin-pool              | `<pool>-pool`         | `RCXDM-pool-<pool>-pool`      |
//! | thin volume N          | `<pool>-N`            | `RCXDM-thin-<pool>-N`         |
//! | classic origin/snapshot| `<pool>-NAME`         | `RCXDM-clas-<pool>-NAME`      |
//! | origin's real device   | `<pool>-NAME-real`    | `RCXDM-real-<pool>-NAME`      |
//! | snapshot's COW device  | `<pool>-NAME-cow`     | `RCXDM-cow-<pool>-NAME`       |
//!
//! (`<pool>` escaped everywhere.) An escaped pool name never holds a lone `-` and local parts
//! never start with one, so the first lone `-` ends the pool name: pool `a`'s origin `x-1` is
//! `a-x-1`, pool `a-x`'s volume 1 is `a--x-1`. Within a pool the local parts cannot collide:
//! classic names are never all digits, never `pool`, never end in `-real` or `-cow`.
//!
//! Budget: dm takes names of at most 127 bytes and uuids of at most 128. An escaped pool name is
//! at most [`MAX_ESCAPED_POOL`] (checked at `pool create`), a classic name at most 48, so the
//! longest name is 64 + 1 + 48 + 5 = 118 and the longest uuid 6 + 4 + 1 + 64 + 1 + 48 = 124.
//!
//! User-given names (pools, volumes) are checked here too: one rule of characters for all,
//! each kind's extra limits on top.
//!
//! A device is reused or removed only when its uuid is exactly the one rcx-dm gives that name:
//! a device of another tool, or of an rcx-dm before this scheme, is refused
//! ([`Error::ForeignDevice`]), never adopted.

use crate::dm::{DevInfo, Dm};
use crate::error::{Error, Result};

/// The rule every name a user gives shares (pools, volumes; classic stacks and images add
/// their own limits on top): 1 to 64 ASCII letters, digits, `_`, `.`, `-`, not starting with
/// `.` or `-` (never a hidden file, never an option).
fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && !s.starts_with(['.', '-'])
}

/// A pool name: plain, and short enough once escaped for every dm name built from it.
pub fn validate_pool_name(name: &str) -> Result<()> {
    if is_plain_name(name) && escape_pool(name).len() <= MAX_ESCAPED_POOL {
        Ok(())
    } else {
        Err(Error::invalid(
            "pool name",
            format!("'{name}'; use 1-64 letters, digits, '_', '.', '-', not starting with '.' or '-' (each '-' counts twice: dm names double it)"),
        ))
    }
}

/// A volume name: plain and not all digits (it would read as an id).
pub fn validate_volume_name(s: &str) -> Result<()> {
    if is_plain_name(s) && !s.chars().all(|c| c.is_ascii_digit()) {
        Ok(())
    } else {
        Err(Error::invalid("volume name", format!("'{s}'; use 1-64 letters, digits, '_', '.', '-', not only digits")))
    }
}

/// Prefixes of the names rcx-dm gives its own volumes (populate's scratch, commits, formatted
/// bases, image layers, serve's snapshots, runs' snapshots). Its cleanup deletes volumes by these
/// names, so users may not create them.
pub const RESERVED_PREFIXES: &[&str] = &["populate-", "commit-", "base-", "layer-", "ctrd-", "run-", "ckpt-"];

/// A volume name a user chose: [`validate_volume_name`], and not one of rcx-dm's own names
/// ([`RESERVED_PREFIXES`]).
pub fn validate_user_volume_name(s: &str) -> Result<()> {
    validate_volume_name(s)?;
    match RESERVED_PREFIXES.iter().find(|p| s.starts_with(**p)) {
        Some(p) => Err(Error::invalid(
            "volume name",
            format!(
                "'{s}' starts with '{p}', which rcx-dm reserves for its own volumes ({}); pick another name",
                RESERVED_PREFIXES.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

/// The longest pool name once its hyphens are doubled.
pub const MAX_ESCAPED_POOL: usize = 64;

/// A device's name and the uuid rcx-dm gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmId {
    /// The dm device name, `<escaped pool>-<local part>` (at most 118 bytes).
    pub name: String,
    /// The dm uuid, `RCXDM-<kind>-<escaped pool>-<local part>`: what marks the device as
    /// rcx-dm's under that name.
    pub uuid: String,
}

/// `pool` with each `-` doubled.
pub fn escape_pool(pool: &str) -> String {
    pool.replace('-', "--")
}

fn id(kind: &str, pool: &str, local: &str, suffix: &str) -> DmId {
    let p = escape_pool(pool);
    DmId { name: format!("{p}-{local}{suffix}"), uuid: format!("RCXDM-{kind}-{p}-{local}") }
}

/// The thin-pool device.
pub fn thin_pool(pool: &str) -> DmId {
    id("pool", pool, "pool", "")
}

/// Thin volume `vol`.
pub fn thin(pool: &str, vol: u32) -> DmId {
    id("thin", pool, &vol.to_string(), "")
}

/// A classic origin or snapshot.
pub fn classic(pool: &str, name: &str) -> DmId {
    id("clas", pool, name, "")
}

/// The linear device holding a classic origin's data.
pub fn classic_real(pool: &str, origin: &str) -> DmId {
    id("real", pool, origin, "-real")
}

/// The linear device over a classic snapshot's COW file.
pub fn classic_cow(pool: &str, snap: &str) -> DmId {
    id("cow", pool, snap, "-cow")
}

/// The thin volume id of `dm_name` if it is one of `pool`'s thin volume names.
pub fn thin_id_of(pool: &str, dm_name: &str) -> Option<u32> {
    let rest = dm_name.strip_prefix(&escape_pool(pool))?.strip_prefix('-')?;
    // `-` after the pool would make this another pool's name (`a` vs `a--x`).
    if rest.starts_with('-') || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

/// The live device called `want.name`, if rcx-dm made it under that name. A device with the
/// name and any other uuid is an error: neither used nor removed.
pub fn owned(dm: &Dm, want: &DmId) -> Result<Option<DevInfo>> {
    match dm.info(&want.name)? {
        Some(i) if i.uuid.as_deref() != Some(want.uuid.as_str()) => Err(Error::ForeignDevice {
            name: want.name.clone(),
            want: want.uuid.clone(),
            found: i.uuid.unwrap_or_default(),
        }),
        other => Ok(other),
    }
}

/// Like `owned`, for callers holding their pool's lock (every create runs under it, so none is
/// under way): a device of ours without a live table is what a create killed between its
/// DM_DEV_CREATE and its resume left. It is removed and reported absent; kept, it would pass for
/// live (opens fail with ENXIO), and a resume of it is EINVAL for ever.
pub fn owned_live(dm: &Dm, want: &DmId) -> Result<Option<DevInfo>> {
    match owned(dm, want)? {
        Some(i) if !i.live_table => {
            tracing::warn!(device = %want.name, "removing a device an interrupted command left without a table");
            dm.remove(&want.name)?;
            crate::dm::node::remove(&want.name);
            Ok(None)
        }
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_different_pools_never_meet() {
        // The example: pool `a`'s origin `x-1` and pool `a-x`'s volume 1.
        assert_eq!(classic("a", "x-1").name, "a-x-1");
        assert_eq!(thin("a-x", 1).name, "a--x-1");
        assert_ne!(classic("a", "x-pool").name, thin_pool("a-x").name);
        assert_eq!(thin_pool("a-x").name, "a--x-pool");
        assert_eq!(classic_real("a-b", "o").name, "a--b-o-real");
        assert_eq!(classic_cow("a", "s").uuid, "RCXDM-cow-a-s");
        // Hyphen-free pools keep the names they always had.
        assert_eq!(thin("web", 7).name, "web-7");
        assert_eq!(thin_pool("web").name, "web-pool");
    }

    #[test]
    fn thin_ids_are_parsed_back_only_for_their_own_pool() {
        assert_eq!(thin_id_of("a", "a-12"), Some(12));
        assert_eq!(thin_id_of("a-x", "a--x-1"), Some(1));
        assert_eq!(thin_id_of("a", "a--x-1"), None);
        assert_eq!(thin_id_of("a", "a-x-1"), None);
        assert_eq!(thin_id_of("a", "a-pool"), None);
        assert_eq!(thin_id_of("a", "ab-1"), None);
        assert_eq!(thin_id_of("a", "a-1-real"), None);
        assert_eq!(thin_id_of("a", "a-+1"), None);
    }

    #[test]
    fn the_longest_names_fit_dm() {
        let pool = "p".repeat(MAX_ESCAPED_POOL);
        let name = "n".repeat(48);
        for d in [classic_real(&pool, &name), classic_cow(&pool, &name), classic(&pool, &name), thin(&pool, 16_777_215)] {
            assert!(d.name.len() <= 127, "{}", d.name);
            assert!(d.uuid.len() <= 128, "{}", d.uuid);
        }
    }
}
