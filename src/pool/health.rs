//! Metadata health: `pool check` (thin_check) and `pool repair` (thin_repair into a new
//! metadata file, swapped in, the old one kept as a backup) on a deactivated pool, and the
//! messages activation gives when the kernel refuses or flags the metadata.
//! The thin-provisioning tools are a dependency of these two commands only.
//!
//! Debian's tools (0.9.0) open their devices with O_DIRECT, which a file on tmpfs refuses, so
//! file-backed metadata is always handed to them through a loop device of our own. Those loops
//! are attached with autoclear: the kernel detaches them when the last descriptor closes, so
//! even a `kill -9` of `pool check` or `pool repair` leaks none.
//!
//! The swap in `repair` is a hard link plus a rename, both in the pool directory:
//!   1. the repaired copy is written to `meta.img.repairing` and checked;
//!   2. `link(meta.img, meta-damaged-<UTC time>.img)`: the old metadata gets its backup name;
//!   3. `rename(meta.img.repairing, meta.img)`: atomically replaces the live name.
//! `meta.img` exists at every instant, holding the old or the new metadata; the scratch file is
//! never the only copy of anything, so a repair that died is simply run again.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use loopdev::{LoopControl, LoopDevice};
use serde::Serialize;

use super::store::Backing;
use crate::durable::{remove_durable, sync_dir};
use super::{fault, Pool};
use crate::dm::Dm;
use crate::error::{Errno, Error, IoContext, Result};
use crate::loopback;

/// Magic number of a thin-pool metadata superblock (dm-thin-metadata.c).
const SUPERBLOCK_MAGIC: u64 = 27_022_010;
/// Superblock flag bit the kernel sets when a metadata operation failed.
const NEEDS_CHECK: u32 = 1;
/// Name of the repaired copy while it is being made (pool directory).
const SCRATCH: &str = "meta.img.repairing";

/// What `pool check` found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// thin_check passed.
    pub clean: bool,
    /// The kernel has set the superblock's needs_check flag (a metadata operation failed while
    /// the pool was live); activation refuses such a pool until `pool repair` rewrites it.
    pub needs_check: bool,
    /// thin_check's own output (its findings), for the operator.
    pub output: String,
}

/// What `pool repair` did.
#[derive(Debug, Clone, Serialize)]
pub struct RepairReport {
    /// Where the damaged metadata was kept.
    pub backup: PathBuf,
    /// The thin device ids in the repaired metadata.
    pub devices: Vec<u32>,
    /// The pool transaction id the repaired metadata carries.
    pub transaction_id: Option<u64>,
}

impl Pool {
    /// Run thin_check on the metadata of a deactivated pool.
    pub fn check(&self) -> Result<CheckReport> {
        let _l = self.lock()?;
        self.require_inactive("pool check")?;
        let thin_check = thin_tool("thin_check")?;
        let c = self.fresh_config()?;
        let (ok, output) = match &c.meta {
            Backing::File(p) => {
                let lo = TempLoop::attach(p, true)?;
                run_tool(&thin_check, &[lo.path.as_os_str()])?
            }
            Backing::Device(p) => run_tool(&thin_check, &[p.as_os_str()])?,
        };
        let needs_check = superblock_flags(c.meta.path())?.is_some_and(|f| f & NEEDS_CHECK != 0);
        Ok(CheckReport { clean: ok, needs_check, output })
    }

    /// Repair the metadata of a deactivated pool: thin_repair into a new file, thin_check it,
    /// swap it in and keep the old metadata as a backup. File-backed metadata only.
    pub fn repair(&self) -> Result<RepairReport> {
        let _l = self.lock()?;
        self.require_inactive("pool repair")?;
        let c = self.fresh_config()?;
        let meta = match &c.meta {
            Backing::File(p) => p.clone(),
            Backing::Device(d) => return Err(self.device_repair_refused(d)),
        };
        let thin_repair = thin_tool("thin_repair")?;
        let thin_check = thin_tool("thin_check")?;
        let thin_dump = thin_tool("thin_dump")?;
        let dir = self.dir().to_path_buf();
        let scratch = dir.join(SCRATCH);
        // A repair that died left its unfinished copy: never the only copy of anything.
        remove_durable(&scratch)?;
        // A read-write loop a crashed teardown left over meta.img would stay on the old inode.
        for _ in 0..8 {
            if loopback::find(&meta)?.is_none() {
                break;
            }
            loopback::detach(&meta)?;
        }
        let bytes = std::fs::metadata(&meta).ctx(|| format!("examining {}", meta.display()))?.len();
        loopback::create_sparse(&scratch, bytes)?;
        let made = self.repair_into(&meta, &scratch, &thin_repair, &thin_check, &thin_dump);
        let (devices, transaction_id) = match made {
            Ok(r) => r,
            Err(e) => {
                let _ = remove_durable(&scratch);
                return Err(e);
            }
        };
        fault::point("repair.repaired")?;

        let backup = backup_name(&dir);
        std::fs::hard_link(&meta, &backup).ctx(|| format!("keeping {} as {}", meta.display(), backup.display()))?;
        sync_dir(&dir)?;
        fault::point("repair.linked")?;
        std::fs::rename(&scratch, &meta).ctx(|| format!("renaming {} to {}", scratch.display(), meta.display()))?;
        sync_dir(&dir)?;
        fault::point("repair.swapped")?;
        tracing::info!(backup = %backup.display(), ?devices, "metadata repaired");
        Ok(RepairReport { backup, devices, transaction_id })
    }

    /// thin_repair `meta` into `scratch` (same size), check the result and make sure it still
    /// has every volume the store knows. Returns the device ids and transaction id it holds.
    fn repair_into(&self, meta: &Path, scratch: &Path, repair: &Path, check: &Path, dump: &Path) -> Result<(Vec<u32>, Option<u64>)> {
        let unchanged = |why: String| Error::RepairFailed { pool: self.name.clone(), why };
        let src = TempLoop::attach(meta, true)?;
        let dst = TempLoop::attach(scratch, false)?;
        let (ok, out) = run_tool(repair, &["-i".as_ref(), src.path.as_os_str(), "-o".as_ref(), dst.path.as_os_str()])?;
        if !ok {
            return Err(unchanged(format!("thin_repair could not rebuild it:\n{}", out.trim_end())));
        }
        let (ok, out) = run_tool(check, &[dst.path.as_os_str()])?;
        if !ok {
            return Err(unchanged(format!("thin_check rejects what thin_repair made:\n{}", out.trim_end())));
        }
        // thin_repair copies the superblock's needs_check flag (0.9.0 does): the kernel would
        // keep refusing the repaired pool. Clear it, as LVM does, now that the copy checks clean.
        let (ok, out) = run_tool(check, &["--clear-needs-check-flag".as_ref(), dst.path.as_os_str()])?;
        if !ok || superblock_flags(&dst.path)?.is_none_or(|f| f & NEEDS_CHECK != 0) {
            return Err(unchanged(format!("clearing needs_check on the repaired copy failed:\n{}", out.trim_end())));
        }
        let (ok, xml) = run_tool(dump, &["--skip-mappings".as_ref(), dst.path.as_os_str()])?;
        if !ok {
            return Err(unchanged(format!("thin_dump cannot read what thin_repair made:\n{}", xml.trim_end())));
        }
        let (devices, txid) = parse_dump(&xml);
        let lost: Vec<u32> = self.store.volumes()?.iter().map(|v| v.id).filter(|id| !devices.contains(id)).collect();
        if !lost.is_empty() {
            return Err(unchanged(format!(
                "thin_repair could not recover volume(s) {lost:?} (their device records are damaged); swapping it in \
                 would lose them. Inspect what survives with `thin_dump --repair` on a read-only loop over {}",
                meta.display()
            )));
        }
        drop(dst);
        File::open(scratch).and_then(|f| f.sync_all()).ctx(|| format!("syncing {}", scratch.display()))?;
        Ok((devices, txid))
    }

    /// Refuse unless the pool's thin-pool device is absent. Without device-mapper at all (a
    /// host whose kernel lacks it) no pool can be live, so the metadata may be examined.
    fn require_inactive(&self, what: &'static str) -> Result<()> {
        let dm = match Dm::open() {
            Ok(dm) => dm,
            Err(Error::DmUnavailable(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if self.pool_device(&dm)?.is_some() {
            return Err(Error::PoolActive { pool: self.name.clone(), what });
        }
        Ok(())
    }

    fn device_repair_refused(&self, dev: &Path) -> Error {
        Error::RepairFailed {
            pool: self.name.clone(),
            why: format!(
                "its metadata is on the block device {d}, and copying repaired metadata back over a device cannot be \
                 made crash-safe (a crash mid-copy leaves neither the old nor the new metadata). Repair it by hand: \
                 `thin_repair -i {d} -o SPARE` onto a spare device of at least the same size, `thin_check SPARE`, \
                 save the damaged metadata with `dd if={d} of=BACKUP`, then `dd if=SPARE of={d} oflag=direct conv=fsync` \
                 and run `rcx-dm pool check`",
                d = dev.display()
            ),
        }
    }

    /// A failed load of the thin-pool table, explained (damaged metadata names `pool repair`).
    /// The kernel's block manager fails a metadata block whose checksum, magic or location is
    /// wrong with EILSEQ (ENOTBLK for a superblock found at the wrong place), and the pool
    /// constructor passes that on. The device was already removed again; the loops that were
    /// attached for it are detached so the pool is left deactivated, as it was.
    pub(crate) fn load_error(&self, e: Error) -> Error {
        if !matches!(e.errno(), Some(Errno::EILSEQ) | Some(Errno::ENOTBLK)) {
            return e;
        }
        self.detach_backing_loops();
        Error::PoolUnhealthy {
            pool: self.name.clone(),
            why: format!(
                "the kernel refused its metadata as damaged ({e}); see the damage with `rcx-dm pool check` and fix it \
                 with `rcx-dm pool repair`"
            ),
        }
    }

    /// Activation found the metadata damaged after the pool loaded: the kernel flags it
    /// (needs_check, read-only or failed mode), or a volume's device record cannot be read
    /// (thin_ctr fails with EILSEQ). If this activation loaded the pool, it is taken down again
    /// so the pool is left deactivated, as it was, and `pool check` / `pool repair` can run.
    pub(crate) fn damaged_on_activate(&self, dm: &Dm, loaded_here: bool, found: String) -> Error {
        let mut why = format!("{found}; its metadata is damaged");
        if loaded_here {
            match self.teardown(dm) {
                Ok(()) => why.push_str(
                    "; the pool was deactivated again: see the damage with `rcx-dm pool check` and fix it with `rcx-dm pool repair`",
                ),
                Err(t) => why.push_str(&format!(
                    "; taking the pool down again failed ({t}): run `rcx-dm pool deactivate`, then `rcx-dm pool check` and `rcx-dm pool repair`"
                )),
            }
        } else {
            why.push_str(
                "; it was already active: run `rcx-dm pool deactivate`, then `rcx-dm pool check` and `rcx-dm pool repair`",
            );
        }
        Error::PoolUnhealthy { pool: self.name.clone(), why }
    }

    /// A volume's thin device failed to load during activation: damage in the metadata's device
    /// records (EILSEQ), or a volume the metadata does not have (ENODATA), is `pool repair`'s.
    pub(crate) fn activate_thin_error(&self, dm: &Dm, loaded_here: bool, id: u32, e: Error) -> Error {
        match e.errno() {
            Some(Errno::EILSEQ) => self.damaged_on_activate(dm, loaded_here, format!("the kernel cannot read volume {id}'s record ({e})")),
            Some(Errno::ENODATA) => self.damaged_on_activate(dm, loaded_here, format!("volume {id} is missing from the pool's metadata ({e})")),
            _ => e,
        }
    }

    fn detach_backing_loops(&self) {
        let c = self.config();
        for b in [&c.data, &c.meta] {
            if let Backing::File(p) = b {
                if let Err(e) = loopback::detach(p) {
                    tracing::warn!("detaching the loop over {}: {e}", p.display());
                }
            }
        }
    }
}

/// A loop device of our own over a file, detached when dropped and, through autoclear, by the
/// kernel when this process dies.
struct TempLoop {
    dev: LoopDevice,
    path: PathBuf,
}

impl TempLoop {
    fn attach(file: &Path, read_only: bool) -> Result<TempLoop> {
        let ctl = LoopControl::open().ctx(|| "opening /dev/loop-control (is the loop module loaded?)".into())?;
        // Another process may take the free device between GET_FREE and SET_FD: retry on EBUSY.
        for _ in 0..64 {
            let dev = ctl.next_free().ctx(|| "finding a free loop device".into())?;
            match dev.with().read_only(read_only).autoclear(true).attach(file) {
                Ok(()) => {
                    let path = dev.path().ok_or_else(|| Error::Inconsistent("loop device without a path".into()))?;
                    return Ok(TempLoop { dev, path });
                }
                Err(e) if e.raw_os_error() == Some(Errno::EBUSY as i32) => continue,
                Err(e) => return Err(e).ctx(|| format!("attaching {} to a loop device", file.display())),
            }
        }
        Err(Error::Dm { op: "attach", dev: file.display().to_string(), errno: Some(Errno::EBUSY), msg: "no free loop device after 64 tries".into() })
    }
}

impl Drop for TempLoop {
    fn drop(&mut self) {
        if let Err(e) = self.dev.detach() {
            tracing::warn!("detaching {}: {e} (autoclear detaches it when it is closed)", self.path.display());
        }
    }
}

/// A thin-provisioning tool from PATH, or a clear error naming the package.
fn thin_tool(name: &'static str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .ok_or(Error::ThinToolMissing(name))
}

/// Run a tool; (exit status success, stdout followed by stderr).
fn run_tool(tool: &Path, args: &[&std::ffi::OsStr]) -> Result<(bool, String)> {
    let out = Command::new(tool).args(args).output().ctx(|| format!("running {}", tool.display()))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    // A tool that dies by a signal (0.9.0's thin_repair can, on some damage) says nothing.
    if !out.status.success() && (out.status.code().is_none() || text.trim().is_empty()) {
        let name = tool.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        text.push_str(&format!("({name} printed nothing and ended with {})\n", out.status));
    }
    Ok((out.status.success(), text))
}

/// The superblock's flags, or None when the first block is not a thin superblock.
fn superblock_flags(meta: &Path) -> Result<Option<u32>> {
    let mut sb = [0u8; 48];
    OpenOptions::new()
        .read(true)
        .open(meta)
        .and_then(|mut f| f.read_exact(&mut sb))
        .ctx(|| format!("reading the superblock of {}", meta.display()))?;
    Ok(parse_superblock_flags(&sb))
}

fn parse_superblock_flags(sb: &[u8; 48]) -> Option<u32> {
    let magic = u64::from_le_bytes(sb[32..40].try_into().ok()?);
    (magic == SUPERBLOCK_MAGIC).then(|| u32::from_le_bytes([sb[4], sb[5], sb[6], sb[7]]))
}

/// Device ids and the superblock's transaction id from `thin_dump --skip-mappings` XML.
fn parse_dump(xml: &str) -> (Vec<u32>, Option<u64>) {
    fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
        let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        tag[at..].split('"').next()
    }
    let mut devices = Vec::new();
    let mut txid = None;
    for line in xml.lines().map(str::trim_start) {
        if line.starts_with("<superblock ") {
            txid = attr(line, "transaction").and_then(|t| t.parse().ok());
        } else if line.starts_with("<device ") {
            if let Some(id) = attr(line, "dev_id").and_then(|t| t.parse().ok()) {
                devices.push(id);
            }
        }
    }
    devices.sort_unstable();
    (devices, txid)
}

/// `meta-damaged-<UTC time>.img` in `dir`, with a counter if that name is taken.
fn backup_name(dir: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let stamp = utc_stamp(secs);
    let mut p = dir.join(format!("meta-damaged-{stamp}.img"));
    let mut n = 1;
    while p.exists() {
        p = dir.join(format!("meta-damaged-{stamp}-{n}.img"));
        n += 1;
    }
    p
}

/// `YYYYMMDDTHHMMSSZ` for seconds since the epoch (civil-from-days, proleptic Gregorian).
fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
        assert_eq!(utc_stamp(1_796_236_496), "20261202T183456Z");
    }

    #[test]
    fn dump_xml_gives_devices_and_transaction() {
        let xml = r#"<superblock uuid="" time="1" transaction="3" flags="0" version="2" data_block_size="128" nr_data_blocks="4096">
  <device dev_id="7" mapped_blocks="2" transaction="0" creation_time="0" snap_time="1">
  </device>
  <device dev_id="1" mapped_blocks="2" transaction="1" creation_time="1" snap_time="1">
  </device>
</superblock>"#;
        assert_eq!(parse_dump(xml), (vec![1, 7], Some(3)));
        assert_eq!(parse_dump(""), (vec![], None));
    }

    #[test]
    fn superblock_flags_need_the_magic() {
        let mut sb = [0u8; 48];
        assert_eq!(parse_superblock_flags(&sb), None);
        sb[32..40].copy_from_slice(&SUPERBLOCK_MAGIC.to_le_bytes());
        sb[4] = 1;
        assert_eq!(parse_superblock_flags(&sb), Some(NEEDS_CHECK));
    }

    #[test]
    fn backup_names_do_not_collide() {
        let d = tempfile::tempdir().unwrap();
        let a = backup_name(d.path());
        std::fs::write(&a, b"x").unwrap();
        let b = backup_name(d.path());
        assert_ne!(a, b);
        assert!(b.file_name().unwrap().to_str().unwrap().starts_with("meta-damaged-"));
    }
}
