//! Mounting the container's root: what is on the volume (ext4 or xfs, read from the
//! superblock), whether it is mounted elsewhere (`/proc/self/mountinfo` plus an exclusive
//! open, which also sees mounts in other mount namespaces), and the mounts made inside the
//! container's mount namespace: the volume itself, a fresh `/proc` and a read-only `/sys`.
//!
//! The volume is mounted only inside the container's own mount namespace, never in the host's:
//! when the container's last process exits the kernel drops the namespace and unmounts it, so a
//! killed rcx-dm can never leave the mount behind.
//!
//! Under `--userns` the child cannot mount ext4 or xfs itself (a user namespace may mount only
//! filesystems marked for it), so rcx-dm mounts the volume as a detached mount before the clone
//! (`mount_detached`: the new mount API, attached nowhere; closing its last descriptor unmounts
//! it), gives it the container's id mapping once the child's user namespace exists (`idmap`),
//! and the child moves it into its own mount namespace (`mount_root`).

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use super::step::{Fail, Step};
use crate::error::{Error, IoContext, Result};

// What is on the volume is the rootfs layer's knowledge; `runner::{detect_filesystem, Fs}`
// re-export it from here.
pub(super) use crate::rootfs::fs::probe;
pub use crate::rootfs::fs::{detect, Fs};

/// (major, minor) of a block device node.
pub(super) fn dev_numbers(dev: &Path) -> Result<(u32, u32)> {
    let m = std::fs::metadata(dev).ctx(|| format!("inspecting {}", dev.display()))?;
    let rdev = m.rdev();
    Ok((nix::sys::stat::major(rdev) as u32, nix::sys::stat::minor(rdev) as u32))
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The mounted device's (major, minor).
    pub dev: (u32, u32),
    /// Where it is mounted (escapes undone).
    pub mount_point: PathBuf,
    /// The filesystem type (`ext4`, `xfs`, ...).
    pub fstype: String,
    /// Writable: both the mount and the superblock are rw.
    pub rw: bool,
}

/// This mount namespace's mounts.
pub(super) fn mountinfo() -> Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ctx(|| "reading /proc/self/mountinfo".into())?;
    Ok(parse_mountinfo(&text))
}

/// Parse /proc/self/mountinfo text, one mount a line: `id parent maj:min root mount-point
/// mount-options [optional fields] - fstype source super-options`.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 6 || r.len() < 3 {
            continue;
        }
        let Some((maj, min)) = l[2].split_once(':') else { continue };
        let (Ok(maj), Ok(min)) = (maj.parse(), min.parse()) else { continue };
        let opt_rw = |o: &str| o.split(',').any(|x| x == "rw");
        out.push(MountEntry {
            dev: (maj, min),
            mount_point: PathBuf::from(unescape(l[4])),
            fstype: r[0].to_string(),
            rw: opt_rw(l[5]) && opt_rw(r[2]),
        });
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Refuse a device mounted read-write in this mount namespace (the host's, for the CLI).
pub(super) fn refuse_if_mounted_rw(vol: &str, dev: (u32, u32), mounts: &[MountEntry]) -> Result<()> {
    match mounts.iter().find(|m| m.dev == dev && m.rw) {
        Some(m) => Err(Error::VolumeMounted { vol: vol.to_string(), at: m.mount_point.clone() }),
        None => Ok(()),
    }
}

/// Everything the container side needs to mount its root, prepared before the clone so the
/// child only makes system calls.
pub(super) struct RootPlan {
    device: CString,
    /// The host directory the volume is mounted on (the child then pivots into it).
    pub(super) target: CString,
    fstype: &'static str,
    data: Option<&'static str>,
    /// Mount it read-only (--read-only).
    pub(super) read_only: bool,
    /// Mount it `nodev` (all but `--privileged`): a device node the container makes on it
    /// (it has CAP_MKNOD, as under Docker) cannot be opened, so no block device of the host
    /// (loop, dm, disks) is reachable through one.
    pub(super) nodev: bool,
}

impl RootPlan {
    /// `read_only_base`: the device is a read-only base, mounted without journal replay.
    pub(super) fn new(device: &Path, target: &Path, fs: Fs, read_only: bool, read_only_base: bool, nodev: bool) -> Result<RootPlan> {
        Ok(RootPlan {
            device: cpath(device)?,
            target: cpath(target)?,
            fstype: fs.kernel_name(),
            data: fs.mount_data(read_only_base),
            read_only,
            nodev,
        })
    }
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::invalid("path", format!("{} contains a NUL byte", p.display())))
}

/// In the container's fresh mount namespace: make every mount a slave (runc's default), so
/// nothing mounted here reaches the host while the host's unmounts still reach the copies this
/// namespace holds until pivot_root drops them (a private copy would keep a host filesystem,
/// and the device under it, busy meanwhile); then mount the volume, or under `--userns` move
/// rcx-dm's idmapped detached mount of it (`detached`) into place.
pub(super) fn mount_root(p: &RootPlan, detached: Option<RawFd>) -> Step<()> {
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(|e| Fail::new("making the mount tree a slave of the host's", e))?;
    if let Some(fd) = detached {
        // SAFETY: move_mount with NUL-terminated paths; `fd` is the detached mount rcx-dm made.
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                fd,
                c"".as_ptr(),
                libc::AT_FDCWD,
                p.target.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        let e = nix::errno::Errno::last();
        // SAFETY: closing our copy; the mount now belongs to this namespace's tree.
        unsafe { libc::close(fd) };
        if r != 0 {
            return Err(Fail::new(format!("moving the idmapped mount of the volume onto {}", p.target.to_string_lossy()), e));
        }
        return Ok(());
    }
    let mut flags = MsFlags::empty();
    if p.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    if p.nodev {
        flags |= MsFlags::MS_NODEV;
    }
    mount(Some(p.device.as_c_str()), p.target.as_c_str(), Some(p.fstype), flags, p.data).map_err(|e| {
        Fail::new(
            format!("mounting {} ({}) on {}", p.device.to_string_lossy(), p.fstype, p.target.to_string_lossy()),
            e,
        )
    })
}

/// rcx-dm's side under `--userns`, before the clone: the volume as a detached mount (fsopen,
/// fsconfig, fsmount), with the same options `mount_root` would use, attached nowhere.
pub(super) fn mount_detached(p: &RootPlan) -> Result<OwnedFd> {
    let stage = || format!("mounting {} ({}) for the container", p.device.to_string_lossy(), p.fstype);
    let fail = |what: &str, e: nix::errno::Errno| Error::ContainerSetup {
        stage: stage(),
        msg: match e {
            nix::errno::Errno::ENOSYS => format!("{what}: this kernel lacks the new mount API (Linux 5.2+; idmapped mounts 5.12+)"),
            _ => format!("{what}: {} ({e})", e.desc()),
        },
    };
    let fstype = CString::new(p.fstype).map_err(|_| fail("fsopen", nix::errno::Errno::EINVAL))?;
    // SAFETY: fsopen with a NUL-terminated name; the descriptor is owned below.
    let fs = unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), libc::FSOPEN_CLOEXEC) };
    if fs < 0 {
        return Err(fail("fsopen", nix::errno::Errno::last()));
    }
    // SAFETY: a descriptor fsopen just returned.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as RawFd) };
    let config = |cmd: libc::c_uint, key: Option<&CStr>, value: Option<&CStr>| {
        // SAFETY: fsconfig on our context with NUL-terminated strings (or null).
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                cmd,
                key.map_or(std::ptr::null(), |k| k.as_ptr()),
                value.map_or(std::ptr::null(), |v| v.as_ptr()),
                0,
            )
        };
        if r != 0 {
            let what = key.map_or("creating the filesystem instance".into(), |k| format!("option {}", k.to_string_lossy()));
            return Err(fail(&format!("fsconfig {what}"), nix::errno::Errno::last()));
        }
        Ok(())
    };
    let cs = |s: &str| CString::new(s).map_err(|_| fail("fsconfig", nix::errno::Errno::EINVAL));
    config(libc::FSCONFIG_SET_STRING, Some(c"source"), Some(p.device.as_c_str()))?;
    for opt in p.data.into_iter().flat_map(|d| d.split(',')).filter(|o| !o.is_empty()) {
        match opt.split_once('=') {
            Some((k, v)) => config(libc::FSCONFIG_SET_STRING, Some(&cs(k)?), Some(&cs(v)?))?,
            None => config(libc::FSCONFIG_SET_FLAG, Some(&cs(opt)?), None)?,
        }
    }
    if p.read_only {
        config(libc::FSCONFIG_SET_FLAG, Some(c"ro"), None)?;
    }
    config(libc::FSCONFIG_CMD_CREATE, None, None)?;
    let mut attrs = 0u64;
    if p.read_only {
        attrs |= libc::MOUNT_ATTR_RDONLY;
    }
    if p.nodev {
        attrs |= libc::MOUNT_ATTR_NODEV;
    }
    // SAFETY: fsmount on the configured context; the descriptor is owned below. The child
    // inherits it through the clone (close-on-exec only keeps it from any later exec).
    let m = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), libc::FSMOUNT_CLOEXEC, attrs) };
    if m < 0 {
        return Err(fail("fsmount", nix::errno::Errno::last()));
    }
    // SAFETY: a descriptor fsmount just returned.
    Ok(unsafe { OwnedFd::from_raw_fd(m as RawFd) })
}

/// rcx-dm's side under `--userns`, once the child's user namespace has its maps: make the
/// detached mount idmapped with that namespace's mapping.
///
/// How ids then travel: the image's files are owned by on-disk uid 0 (as any image). Through
/// this mount, on-disk id N is seen as the host id the container's map gives container id N,
/// i.e. HOSTID+N; inside the container's user namespace HOSTID+N reads as N again. So the
/// image's root-owned files are owned by the container's root, and a file the container's root
/// (host id HOSTID) creates is written to disk as uid 0, the inverse. On-disk ids are never
/// shifted: no chown of the image, and the same base serves every range. Ids outside
/// `0..COUNT` on disk show as the overflow id (65534) and cannot be given to files.
pub(super) fn idmap(mount: BorrowedFd<'_>, userns: BorrowedFd<'_>) -> Result<()> {
    let attr = libc::mount_attr { attr_set: libc::MOUNT_ATTR_IDMAP, attr_clr: 0, propagation: 0, userns_fd: userns.as_raw_fd() as u64 };
    // SAFETY: mount_setattr on our detached mount with a mount_attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r != 0 {
        let e = nix::errno::Errno::last();
        return Err(Error::ContainerSetup {
            stage: "making the volume's mount idmapped for --userns (mount_setattr MOUNT_ATTR_IDMAP)".into(),
            msg: match e {
                nix::errno::Errno::ENOSYS | nix::errno::Errno::EINVAL => format!(
                    "{} ({e}): this kernel or filesystem does not support idmapped mounts (ext4 and xfs do from Linux 5.12); run without --userns",
                    e.desc()
                ),
                _ => format!("{} ({e})", e.desc()),
            },
        });
    }
    Ok(())
}

/// A directory the container needs at the top of its root (`/proc`, `/sys`, `/dev`): made if the
/// volume lacks it and is writable. Paths are the container's (after pivot_root) or relative to
/// the mounted volume (before it).
pub(super) fn ensure_dir(path: &'static str, read_only: bool) -> Step<()> {
    let path = Path::new(path);
    if path.is_dir() {
        return Ok(());
    }
    if read_only {
        return Err(Fail::new(
            format!("looking for {} (the read-only root filesystem lacks it; create it in the volume)", path.display()),
            nix::errno::Errno::ENOENT,
        ));
    }
    nix::unistd::mkdir(path, nix::sys::stat::Mode::from_bits_truncate(0o755))
        .map_err(|e| Fail::new(format!("creating {}", path.display()), e))
}

/// A fresh procfs for the container's pid namespace, and sysfs read-only unless `sys_writable`
/// (`--privileged`; for --net none it shows the container's own network namespace). After
/// pivot_root; under `--userns` before it (`in_volume`: paths relative to the mounted volume),
/// because a user namespace may mount proc and sysfs only while the host's are fully visible in
/// its mount namespace (the kernel's mount_too_revealing), which they stop being once the old
/// root is detached.
pub(super) fn mount_proc_sys(read_only: bool, sys_writable: bool, in_volume: bool) -> Step<()> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let (proc_dir, sys_dir) = if in_volume { ("proc", "sys") } else { ("/proc", "/sys") };
    ensure_dir(proc_dir, read_only)?;
    mount(Some("proc"), proc_dir, Some("proc"), nosuid_nodev_noexec, None::<&str>).map_err(|e| Fail::new("mounting /proc", e))?;
    ensure_dir(sys_dir, read_only)?;
    let ro = if sys_writable { MsFlags::empty() } else { MsFlags::MS_RDONLY };
    mount(Some("sysfs"), sys_dir, Some("sysfs"), nosuid_nodev_noexec | ro, None::<&str>).map_err(|e| Fail::new("mounting /sys", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let text = "\
23 1 0:21 / / ro,relatime - 9p /dev/root ro,sync
71 25 253:3 / /run/x\\040y rw,relatime shared:5 - ext4 /dev/mapper/p-3 rw
72 25 253:4 / /mnt ro,relatime - ext4 /dev/mapper/p-4 rw
73 25 253:5 / /mnt2 rw,relatime - xfs /dev/mapper/p-5 ro,nouuid
garbage line
";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].dev, (253, 3));
        assert_eq!(m[1].mount_point, PathBuf::from("/run/x y"));
        assert_eq!(m[1].fstype, "ext4");
        assert!(m[1].rw);
        assert!(!m[2].rw && !m[3].rw && !m[0].rw);
        assert!(refuse_if_mounted_rw("3", (253, 3), &m).is_err());
        assert!(refuse_if_mounted_rw("4", (253, 4), &m).is_ok());
        assert!(refuse_if_mounted_rw("9", (253, 9), &m).is_ok());
    }

}
