//! `--net bridge`: a private network between containers and the host, made with rtnetlink
//! messages rather than the `ip` tool: a bridge `rcx0` with 10.77.0.1/16 on the host (made
//! once, kept, like docker0), and per container a veth pair whose host end (`rcx<run id>`) is
//! enslaved to the bridge and whose other end is created directly inside the container's
//! network namespace as `eth0`. The container gives eth0 its address and a default route via
//! 10.77.0.1 itself, before exec.
//!
//! Addresses are claimed as files under /run/rcx-dm/ips/ (a tmpfs: gone at reboot), created with
//! O_EXCL and naming the run that owns them; the run record keeps the address so crash cleanup
//! releases it. The veth pair needs no cleanup: the kernel deletes it with the container's
//! network namespace. No NAT: containers reach each other and the host, not the outside.

use std::fs;
use std::io::{ErrorKind, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;

use super::step::{Fail, Step};
use crate::error::{Error, IoContext, Result};

/// The host bridge every `--net bridge` container is attached to.
pub const BRIDGE: &str = "rcx0";
/// The bridge's own address: the containers' default route.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The containers' network is 10.77.0.0/16.
const PREFIX: u8 = 16;
/// One file per claimed address (a tmpfs: claims vanish at reboot with the containers).
const IP_DIR: &str = "/run/rcx-dm/ips";
/// The container side of the pair.
const CONTAINER_IF: &str = "eth0";

const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_PID: u16 = 19;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_GATEWAY: u16 = 5;
const IFF_UP: u32 = 1;

/// One rtnetlink request under construction: header, fixed part, attributes.
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    fn new(ty: u16, flags: u16) -> Msg {
        let mut buf = vec![0u8; 16];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        Msg { buf, nests: Vec::new() }
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Msg {
        self.buf.extend_from_slice(b);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
        self
    }

    /// struct ifinfomsg: family, pad, type, index, flags, change.
    fn ifinfo(&mut self, index: i32, flags: u32, change: u32) -> &mut Msg {
        let mut b = [0u8; 16];
        b[4..8].copy_from_slice(&index.to_ne_bytes());
        b[8..12].copy_from_slice(&flags.to_ne_bytes());
        b[12..16].copy_from_slice(&change.to_ne_bytes());
        self.bytes(&b)
    }

    fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Msg {
        self.buf.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.bytes(data)
    }

    fn str_attr(&mut self, ty: u16, s: &str) -> &mut Msg {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(ty, &v)
    }

    fn begin(&mut self, ty: u16) -> &mut Msg {
        self.nests.push(self.buf.len());
        self.attr(ty, &[])
    }

    fn end(&mut self) -> &mut Msg {
        let at = self.nests.pop().expect("balanced nesting");
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    fn finish(&mut self, seq: u32) -> &[u8] {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        &self.buf
    }
}

/// A NETLINK_ROUTE socket in the caller's network namespace.
struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    fn open() -> std::result::Result<Netlink, Errno> {
        // SAFETY: plain socket call; the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(Errno::last());
        }
        // SAFETY: just created, owned by nobody else.
        Ok(Netlink { fd: unsafe { OwnedFd::from_raw_fd(fd) }, seq: 0 })
    }

    /// Send one request and wait for its acknowledgement; the kernel's error as an Errno.
    fn request(&mut self, msg: &mut Msg) -> std::result::Result<(), Errno> {
        self.seq += 1;
        let seq = self.seq;
        let b = msg.finish(seq);
        // SAFETY: sending a byte buffer on our socket (to the kernel: no address needed).
        if unsafe { libc::send(self.fd.as_raw_fd(), b.as_ptr().cast(), b.len(), 0) } < 0 {
            return Err(Errno::last());
        }
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: receiving into a local buffer.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                if Errno::last() == Errno::EINTR {
                    continue;
                }
                return Err(Errno::last());
            }
            let mut off = 0;
            while off + 16 <= n as usize {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
                let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
                let rseq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap());
                if ty == NLMSG_ERROR && rseq == seq && off + 20 <= n as usize {
                    let err = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap());
                    return if err == 0 { Ok(()) } else { Err(Errno::from_raw(-err)) };
                }
                if len < 16 {
                    break;
                }
                off += (len + 3) & !3;
            }
        }
    }
}

fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

fn net_err(what: &str, e: Errno) -> Error {
    Error::ContainerSetup { stage: what.to_string(), msg: format!("{} ({e})", e.desc()) }
}

/// The bridge, up, with the gateway address. Idempotent: an existing bridge is reused.
pub(super) fn ensure_bridge() -> Result<u32> {
    let mut nl = Netlink::open().map_err(|e| net_err("opening a netlink socket", e))?;
    if ifindex(BRIDGE).is_none() {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
        m.ifinfo(0, IFF_UP, IFF_UP).str_attr(IFLA_IFNAME, BRIDGE).begin(IFLA_LINKINFO).str_attr(IFLA_INFO_KIND, "bridge").end();
        match nl.request(&mut m) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(net_err(&format!("creating the bridge {BRIDGE} (is the bridge module available?)"), e)),
        }
    }
    let index = ifindex(BRIDGE).ok_or_else(|| net_err(&format!("finding the bridge {BRIDGE}"), Errno::ENODEV))?;
    let mut up = Msg::new(RTM_NEWLINK, 0);
    up.ifinfo(index as i32, IFF_UP, IFF_UP);
    nl.request(&mut up).map_err(|e| net_err(&format!("bringing {BRIDGE} up"), e))?;
    let mut addr = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
    addr.bytes(&[libc::AF_INET as u8, PREFIX, 0, 0])
        .bytes(&index.to_ne_bytes())
        .attr(IFA_LOCAL, &GATEWAY.octets())
        .attr(IFA_ADDRESS, &GATEWAY.octets());
    match nl.request(&mut addr) {
        Ok(()) | Err(Errno::EEXIST) => Ok(index),
        Err(e) => Err(net_err(&format!("giving {BRIDGE} the address {GATEWAY}/{PREFIX}"), e)),
    }
}

/// The host end's name for a run.
pub(super) fn host_if(run_id: &str) -> String {
    format!("rcx{run_id}")
}

/// Create the veth pair: `host` on the bridge (up), its peer as eth0 in `pid`'s network
/// namespace.
pub(super) fn add_veth(bridge: u32, host: &str, pid: i32) -> Result<()> {
    let mut nl = Netlink::open().map_err(|e| net_err("opening a netlink socket", e))?;
    let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
    m.ifinfo(0, IFF_UP, IFF_UP)
        .str_attr(IFLA_IFNAME, host)
        .attr(IFLA_MASTER, &bridge.to_ne_bytes())
        .begin(IFLA_LINKINFO)
        .str_attr(IFLA_INFO_KIND, "veth")
        .begin(IFLA_INFO_DATA)
        .begin(VETH_INFO_PEER)
        .ifinfo(0, 0, 0)
        .str_attr(IFLA_IFNAME, CONTAINER_IF)
        .attr(IFLA_NET_NS_PID, &(pid as u32).to_ne_bytes())
        .end()
        .end()
        .end();
    nl.request(&mut m).map_err(|e| net_err(&format!("creating the veth pair {host} / {CONTAINER_IF}"), e))
}

/// In the container (its own network namespace): eth0 gets `ip`, comes up, and the default
/// route goes through the bridge.
pub(super) fn configure_container(ip: Ipv4Addr) -> Step<()> {
    let mut nl = Netlink::open().map_err(|e| Fail::new("opening a netlink socket in the container", e))?;
    let index = ifindex(CONTAINER_IF).ok_or_else(|| Fail::new("finding eth0 in the container", Errno::ENODEV))?;
    let mut addr = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
    addr.bytes(&[libc::AF_INET as u8, PREFIX, 0, 0]).bytes(&index.to_ne_bytes()).attr(IFA_LOCAL, &ip.octets()).attr(IFA_ADDRESS, &ip.octets());
    nl.request(&mut addr).map_err(|e| Fail::new(format!("giving eth0 the address {ip}/{PREFIX}"), e))?;
    let mut up = Msg::new(RTM_NEWLINK, 0);
    up.ifinfo(index as i32, IFF_UP, IFF_UP);
    nl.request(&mut up).map_err(|e| Fail::new("bringing eth0 up", e))?;
    // struct rtmsg: family, dst_len, src_len, tos, table main, protocol boot, scope universe,
    // type unicast, flags.
    let mut route = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
    route.bytes(&[libc::AF_INET as u8, 0, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0]).attr(RTA_GATEWAY, &GATEWAY.octets());
    nl.request(&mut route).map_err(|e| Fail::new(format!("adding the default route via {GATEWAY}"), e))
}

/// Claim a free address in 10.77.0.0/16 for the run whose directory will be `owner`. Claims
/// whose owner is gone (and older than a minute, so not one being made) are taken over.
pub(super) fn claim_address(owner: &Path, seed: u32) -> Result<Ipv4Addr> {
    let dir = Path::new(IP_DIR);
    fs::create_dir_all(dir).ctx(|| format!("creating {IP_DIR}"))?;
    const HOSTS: u32 = 65533; // 10.77.0.2 ..= 10.77.255.254
    for i in 0..HOSTS {
        let host = 2 + (seed.wrapping_add(i) % HOSTS);
        let ip = Ipv4Addr::from(u32::from(GATEWAY) - 1 + host);
        let path = dir.join(ip.to_string());
        for _ in 0..2 {
            match fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    f.write_all(owner.as_os_str().as_encoded_bytes()).ctx(|| format!("writing {}", path.display()))?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    if !stale(&path) {
                        break;
                    }
                    let _ = fs::remove_file(&path);
                }
                Err(e) => return Err(e).ctx(|| format!("creating {}", path.display())),
            }
        }
    }
    Err(Error::ContainerSetup {
        stage: "claiming an address for --net bridge".into(),
        msg: format!("all of 10.77.0.0/16 is claimed (see {IP_DIR})"),
    })
}

fn stale(claim: &Path) -> bool {
    let Ok(owner) = fs::read_to_string(claim) else { return false };
    let old = fs::metadata(claim)
        .and_then(|m| m.modified())
        .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() > Duration::from_secs(60));
    old && !PathBuf::from(owner).exists()
}

/// Give an address back, if `owner` still holds it.
pub(super) fn release_address(ip: &str, owner: &Path) {
    let path = Path::new(IP_DIR).join(ip);
    if fs::read(&path).is_ok_and(|o| o == owner.as_os_str().as_encoded_bytes()) {
        let _ = fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_laid_out_as_the_kernel_reads_them() {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE);
        m.ifinfo(7, IFF_UP, IFF_UP).str_attr(IFLA_IFNAME, "ab").begin(IFLA_LINKINFO).str_attr(IFLA_INFO_KIND, "veth").end();
        let b = m.finish(9).to_vec();
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize, b.len());
        assert_eq!(u16::from_ne_bytes(b[4..6].try_into().unwrap()), RTM_NEWLINK);
        assert_eq!(u16::from_ne_bytes(b[6..8].try_into().unwrap()), NLM_F_CREATE | NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 9);
        assert_eq!(i32::from_ne_bytes(b[20..24].try_into().unwrap()), 7);
        // IFLA_IFNAME "ab\0": length 7, padded to 8.
        assert_eq!(&b[32..40], &[7, 0, 3, 0, b'a', b'b', 0, 0]);
        // The nest's length covers its attribute: 4 + (4 + "veth\0" padded to 8) = 16.
        assert_eq!(u16::from_ne_bytes(b[40..42].try_into().unwrap()), 16);
        assert_eq!(b.len() % 4, 0);
    }

    #[test]
    fn host_interface_names_fit_ifnamsiz() {
        assert!(host_if("0123abcd").len() < libc::IFNAMSIZ);
    }
}
