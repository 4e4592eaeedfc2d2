//! Device-mapper: typed targets (thin-pool, thin, linear, snapshot-origin, snapshot,
//! snapshot-merge) and status lines over the `devicemapper` crate's ioctls.
//! No dmsetup, no libdevmapper, no udev: device nodes come from devtmpfs (`/dev/dm-N`) and
//! the `/dev/mapper/<name>` links are made here (see `node`).

mod linear;
pub mod node;
pub mod snapshot;
mod thin;
mod thin_pool;

pub use linear::LinearTarget;
pub use snapshot::{
    Persistence, SnapshotMergeTarget, SnapshotOriginTarget, SnapshotStatus, SnapshotTarget, MAX_CHUNK_SECTORS,
};
pub use thin::{parse_thin_status, ThinStatus, ThinTarget};
pub use thin_pool::{PoolMode, ThinPoolState, ThinPoolStatus, ThinPoolTarget};

use devicemapper::{DevId, DmError, DmFlags, DmName, DmOptions, DmUuid, DM};

use crate::error::{Errno, Error, Result};

/// A block device as the kernel's tables name it (`major:minor`): the devicemapper crate's.
pub use devicemapper::Device;

/// One target line of a table: sectors [start, start+length) mapped by `target` with `params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetLine {
    /// First sector of the device this line maps, in 512-byte sectors.
    pub start: u64,
    /// Number of 512-byte sectors the line maps.
    pub length: u64,
    /// The kernel's target type name (`thin-pool`, `thin`, `linear`, `snapshot`, ...).
    pub target: String,
    /// The target's parameters in a table (a load or `table` query), or its status fields in
    /// a `status` query, as one space-separated string.
    pub params: String,
}

/// A target type that can be rendered into a table line.
pub trait Target {
    /// The kernel's name of the target type, as it appears in a table line (`thin-pool`).
    const TYPE: &'static str;
    /// The target's parameters as the kernel parses them from a table line.
    fn params(&self) -> String;
    /// A table line mapping the 512-byte sectors [`start`, `start + length`) with this target.
    fn line(&self, start: u64, length: u64) -> TargetLine {
        TargetLine { start, length, target: Self::TYPE.to_string(), params: self.params() }
    }
}

/// A dm device's state as the kernel's `DM_DEV_STATUS` ioctl reports it (see [`Dm::info`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevInfo {
    /// The device-mapper name (the one under `/dev/mapper`).
    pub name: String,
    /// The block device's `major:minor` (devtmpfs names it `/dev/dm-<minor>`).
    pub dev: Device,
    /// How many holders have the device open: mounts, open file descriptors, and other dm
    /// tables that use it (a thin volume holds its pool, a snapshot its origin and COW).
    pub open_count: i32,
    /// I/O is suspended (`DM_SUSPEND_FLAG`): new bios are held until a resume.
    pub suspended: bool,
    /// The live table was loaded read-only (`DM_READONLY_FLAG`).
    pub read_only: bool,
    /// The device has a live (active) table (`DM_ACTIVE_PRESENT_FLAG`); false for a device
    /// created but never resumed with a table.
    pub live_table: bool,
    /// The uuid the device was created with, if any.
    pub uuid: Option<String>,
}

/// A target type the kernel has loaded (`DM_LIST_VERSIONS`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TargetVersion {
    /// The target type's name, as used in table lines (`thin-pool`, `snapshot-merge`).
    pub name: String,
    /// The target module's version (major, minor, patch).
    pub version: (u32, u32, u32),
}

/// An open handle on `/dev/mapper/control`.
pub struct Dm {
    dm: DM,
}

fn errno_of(err: &DmError) -> Option<Errno> {
    match err {
        DmError::Core(devicemapper::errors::Error::Ioctl(_, _, _, e)) => Some(**e),
        _ => None,
    }
}

fn dm_err(op: &'static str, dev: &str, err: DmError) -> Error {
    let errno = errno_of(&err);
    let msg = match errno {
        Some(e) => format!("{} ({})", e.desc(), e),
        None => err.to_string(),
    };
    Error::Dm { op, dev: dev.to_string(), errno, msg }
}

fn dm_name(name: &str) -> Result<&DmName> {
    DmName::new(name).map_err(|e| Error::invalid("device-mapper name", format!("'{name}': {e}")))
}

impl Dm {
    /// Open `/dev/mapper/control`. `Error::DmUnavailable` when it does not exist (no dm
    /// module, no devtmpfs) or the `devicemapper` crate cannot open it (e.g. not root).
    pub fn open() -> Result<Dm> {
        if !std::path::Path::new("/dev/mapper/control").exists() {
            return Err(Error::DmUnavailable("no /dev/mapper/control".into()));
        }
        let dm = DM::new().map_err(|e| Error::DmUnavailable(e.to_string()))?;
        Ok(Dm { dm })
    }

    /// The dm ioctl interface version (major, minor, patch).
    pub fn version(&self) -> Result<(u32, u32, u32)> {
        self.dm.version().map_err(|e| dm_err("version", "control", e))
    }

    /// The target types the kernel has loaded, with their versions.
    pub fn targets(&self) -> Result<Vec<TargetVersion>> {
        let list = self.dm.list_versions().map_err(|e| dm_err("list_versions", "control", e))?;
        Ok(list
            .into_iter()
            .map(|(name, a, b, c)| TargetVersion { name, version: (a, b, c) })
            .collect())
    }

    /// Names of all dm devices.
    pub fn list(&self) -> Result<Vec<String>> {
        let devs = self.dm.list_devices().map_err(|e| dm_err("list", "control", e))?;
        Ok(devs.into_iter().map(|(n, _, _)| n.to_string()).collect())
    }

    /// The device's state, or None when no device has that name.
    pub fn info(&self, name: &str) -> Result<Option<DevInfo>> {
        match self.dm.device_info(&DevId::Name(dm_name(name)?)) {
            Ok(i) => {
                let flags = i.flags();
                Ok(Some(DevInfo {
                    name: name.to_string(),
                    dev: i.device(),
                    open_count: i.open_count(),
                    suspended: flags.contains(DmFlags::DM_SUSPEND),
                    read_only: flags.contains(DmFlags::DM_READONLY),
                    live_table: flags.contains(DmFlags::DM_ACTIVE_PRESENT),
                    uuid: i.uuid().map(|u| u.to_string()),
                }))
            }
            Err(e) if errno_of(&e) == Some(Errno::ENXIO) => Ok(None),
            Err(e) => Err(dm_err("info", name, e)),
        }
    }

    /// Create a device, load its table and resume it: the usual three ioctls.
    /// If loading or resuming fails the half-made device is removed again.
    pub fn create(&self, name: &str, uuid: Option<&str>, table: &[TargetLine], read_only: bool) -> Result<DevInfo> {
        let id = DevId::Name(dm_name(name)?);
        let uuid = match uuid {
            Some(u) => Some(DmUuid::new(u).map_err(|e| Error::invalid("dm uuid", format!("'{u}': {e}")))?),
            None => None,
        };
        self.dm
            .device_create(dm_name(name)?, uuid, DmOptions::default())
            .map_err(|e| dm_err("create", name, e))?;
        let loaded = self.load(name, table, read_only).and_then(|_| self.resume(name));
        if let Err(e) = loaded {
            let _ = self.dm.device_remove(&id, DmOptions::default());
            return Err(e);
        }
        self.info(name)?.ok_or_else(|| Error::Inconsistent(format!("{name} vanished after creation")))
    }

    /// Load a table into the device's inactive slot; `resume` makes it live.
    pub fn load(&self, name: &str, table: &[TargetLine], read_only: bool) -> Result<()> {
        let lines: Vec<_> = table
            .iter()
            .map(|t| (t.start, t.length, t.target.clone(), t.params.clone()))
            .collect();
        let mut opts = DmOptions::default();
        if read_only {
            opts = opts.set_flags(DmFlags::DM_READONLY);
        }
        self.dm
            .table_load(&DevId::Name(dm_name(name)?), &lines, opts)
            .map(|_| ())
            .map_err(|e| dm_err("load", name, e))
    }

    /// Suspend the device: wait for its in-flight I/O and flush it, then hold new I/O until
    /// `resume`. A suspended device's live table stays in place.
    pub fn suspend(&self, name: &str) -> Result<()> {
        let opts = DmOptions::default().set_flags(DmFlags::DM_SUSPEND);
        self.dm.device_suspend(&DevId::Name(dm_name(name)?), opts).map(|_| ()).map_err(|e| dm_err("suspend", name, e))
    }

    /// Suspend without flushing: I/O the targets hold (a thin pool's bios queued while it is out
    /// of space) stays queued across the table swap instead of being waited for.
    pub fn suspend_noflush(&self, name: &str) -> Result<()> {
        let opts = DmOptions::default().set_flags(DmFlags::DM_SUSPEND | DmFlags::DM_NOFLUSH);
        self.dm.device_suspend(&DevId::Name(dm_name(name)?), opts).map(|_| ()).map_err(|e| dm_err("suspend", name, e))
    }

    /// Arm event polling on this handle: the control file turns readable at the next event of
    /// any dm device (a thin pool's low-water mark, a mode change, a table swap). Arm, then
    /// look at the devices, then `wait_event`, so no event between the look and the wait is lost.
    pub fn arm_poll(&self) -> Result<()> {
        self.dm.arm_poll().map(|_| ()).map_err(|e| dm_err("arm_poll", "control", e))
    }

    /// Wait until an event arrives since the last `arm_poll` (true) or `timeout` passes (false).
    /// A signal ends the wait early (false).
    pub fn wait_event(&self, timeout: std::time::Duration) -> Result<bool> {
        use std::os::fd::AsFd;
        let fd = self.dm.file().as_fd();
        let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX)) {
            Ok(n) => Ok(n > 0),
            Err(Errno::EINTR) => Ok(false),
            Err(e) => Err(Error::Dm { op: "poll", dev: "control".into(), errno: Some(e), msg: e.desc().into() }),
        }
    }

    /// Resume the device: a table loaded into the inactive slot becomes live, and held I/O
    /// proceeds.
    pub fn resume(&self, name: &str) -> Result<()> {
        self.dm
            .device_suspend(&DevId::Name(dm_name(name)?), DmOptions::default())
            .map(|_| ())
            .map_err(|e| dm_err("resume", name, e))
    }

    /// Run `f` with device `name` suspended when it exists, is live and is not suspended
    /// already, and resume it on every path, whatever `f` returned (`f`'s error wins over the
    /// resume's). The kernel needs this around a message that must see all of a device's
    /// writes (a thin snapshot's `create_snap`) and around a table swap; a table `f` loaded goes
    /// live with the resume, and when the load failed the old table stays live. A device
    /// without a live table (a create killed half-way) has no I/O to quiesce and the kernel
    /// refuses its resume (EINVAL): it is left to whoever makes it again.
    pub fn with_suspended<T>(&self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let info = self.info(name)?;
        self.with_suspended_as(name, info.as_ref(), f)
    }

    /// `with_suspended` for a caller that has just read the device's info under the pool lock
    /// (`rcx-dm snap` checks the origin is its own first): one status ioctl less.
    pub fn with_suspended_as<T>(&self, name: &str, info: Option<&DevInfo>, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let suspend = matches!(info, Some(i) if !i.suspended && i.live_table);
        if suspend {
            self.suspend(name)?;
        }
        let r = f();
        if suspend {
            if let Err(e) = self.resume(name) {
                return Err(match r {
                    Err(first) => first,
                    Ok(_) => e,
                });
            }
        }
        r
    }

    /// Remove a device. A device that does not exist is already removed (Ok).
    pub fn remove(&self, name: &str) -> Result<()> {
        match self.dm.device_remove(&DevId::Name(dm_name(name)?), DmOptions::default()) {
            Ok(_) => Ok(()),
            Err(e) if errno_of(&e) == Some(Errno::ENXIO) => Ok(()),
            Err(e) => Err(dm_err("remove", name, e)),
        }
    }

    /// The live table's status lines.
    pub fn status(&self, name: &str) -> Result<Vec<TargetLine>> {
        self.table_query(name, "status", DmOptions::default())
    }

    /// Like `status`, but None when the device is gone (removed since it was listed).
    pub fn status_if_present(&self, name: &str) -> Result<Option<Vec<TargetLine>>> {
        match self.dm.table_status(&DevId::Name(dm_name(name)?), DmOptions::default()) {
            Ok((_, lines)) => Ok(Some(target_lines(lines))),
            Err(e) if errno_of(&e) == Some(Errno::ENXIO) => Ok(None),
            Err(e) => Err(dm_err("status", name, e)),
        }
    }

    /// The live table itself.
    pub fn table(&self, name: &str) -> Result<Vec<TargetLine>> {
        self.table_query(name, "table", DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE))
    }

    fn table_query(&self, name: &str, op: &'static str, opts: DmOptions) -> Result<Vec<TargetLine>> {
        let (_, lines) = self.dm.table_status(&DevId::Name(dm_name(name)?), opts).map_err(|e| dm_err(op, name, e))?;
        Ok(target_lines(lines))
    }

    /// Send a target message (sector 0), e.g. `create_thin 1`.
    pub fn message(&self, name: &str, msg: &str) -> Result<Option<String>> {
        self.dm
            .target_msg(&DevId::Name(dm_name(name)?), None, msg)
            .map(|(_, out)| out)
            .map_err(|e| dm_err("message", name, e))
    }
}

/// The single status line of a one-target device, checked to be of the expected type.
pub fn single_status<'a>(lines: &'a [TargetLine], target: &str, dev: &str) -> Result<&'a str> {
    match lines {
        [l] if l.target == target => Ok(&l.params),
        _ => Err(Error::Inconsistent(format!("{dev} is not a single {target} target: {lines:?}"))),
    }
}

fn target_lines(lines: Vec<(u64, u64, String, String)>) -> Vec<TargetLine> {
    lines.into_iter().map(|(start, length, target, params)| TargetLine { start, length, target, params }).collect()
}
