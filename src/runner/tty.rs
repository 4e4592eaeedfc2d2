//! `-t`: a fresh pseudo-terminal for the container, as Docker's.
//!
//! rcx-dm opens the pair before the clone (`Pty::open`); the child makes the slave its
//! controlling terminal and its 0, 1 and 2, and binds it on `/dev/console` (`child`,
//! `devices`). The caller's terminal never reaches the container: no descriptor of it, no
//! mount of it, so a TIOCSTI inside lands in the container's own pty, whose master only rcx-dm
//! reads.
//!
//! While the container runs (`Relay`), one thread copies the master to rcx-dm's stdout and,
//! with `-i`, another copies rcx-dm's stdin to the master (stdin in raw mode if it is a
//! terminal, restored on every way out but SIGKILL); the window size follows the caller's
//! (`resize`, on SIGWINCH). Threads are fine here: they start after the clone.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::termios::{self, SetArg, SpecialCharacterIndices, Termios};

use crate::error::{IoContext, Result};

/// How long the output copy waits for more once the container has exited.
const DRAIN_IDLE: Duration = Duration::from_millis(100);

/// A pseudo-terminal pair for one container, opened in rcx-dm before the clone.
pub(super) struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
    /// The slave's path (ptsname): the source of the container's `/dev/console`.
    path: CString,
}

impl Pty {
    /// Open a pair (close-on-exec; the child dups the slave onto 0, 1 and 2) with the caller's
    /// window size if the caller has a terminal.
    pub(super) fn open() -> Result<Pty> {
        let ctx = || "opening a pseudo-terminal for -t (/dev/ptmx)".to_string();
        let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
            .map_err(std::io::Error::from)
            .ctx(ctx)?;
        nix::pty::grantpt(&master).map_err(std::io::Error::from).ctx(ctx)?;
        nix::pty::unlockpt(&master).map_err(std::io::Error::from).ctx(ctx)?;
        let name = nix::pty::ptsname_r(&master).map_err(std::io::Error::from).ctx(ctx)?;
        // Opened by this path, so the bind mount of the same path is this very slave.
        let slave = nix::fcntl::open(name.as_str(), OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
            .map_err(std::io::Error::from)
            .ctx(|| format!("opening the pseudo-terminal's slave {name}"))?;
        let master = OwnedFd::from(master);
        let path = CString::new(name).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData)).ctx(ctx)?;
        let pty = Pty { master, slave, path };
        resize(pty.master.as_fd());
        Ok(pty)
    }

    /// The slave, for the child to dup onto 0, 1 and 2.
    pub(super) fn slave(&self) -> RawFd {
        self.slave.as_raw_fd()
    }

    /// The slave's path, for the child's `/dev/console`.
    pub(super) fn path(&self) -> CString {
        self.path.clone()
    }
}

/// The first of rcx-dm's stdout, stdin, stderr that is a terminal (Docker takes the size from
/// its output).
fn caller_terminal() -> Option<RawFd> {
    // SAFETY: isatty only inspects the descriptor.
    [1, 0, 2].into_iter().find(|fd| unsafe { libc::isatty(*fd) } == 1)
}

/// Give the container's terminal the caller's window size (nothing if the caller has no
/// terminal). The kernel sends SIGWINCH to the pty's foreground process group on a change.
fn resize(master: BorrowedFd<'_>) {
    let Some(fd) = caller_terminal() else { return };
    // SAFETY: TIOCGWINSZ/TIOCSWINSZ with a local winsize.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        }
    }
}

/// The caller's stdin, in raw mode while it is set (keys go to the container's terminal as they
/// are typed, ^C included); restored on drop.
struct RawStdin {
    saved: Termios,
}

impl RawStdin {
    /// Raw mode for stdin, if it is a terminal.
    fn set() -> Option<RawStdin> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        // TCSANOW, not TCSAFLUSH: what was typed ahead is the container's input.
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawStdin { saved })
    }
}

impl Drop for RawStdin {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}

/// The copying between the caller and the container's terminal while the container runs.
/// Dropping it stops the copies (the output drained first) and restores the caller's terminal.
pub(super) struct Relay {
    master: OwnedFd,
    /// Dropped to tell the threads the container has exited (their poll sees the hang-up).
    stop: Option<OwnedFd>,
    threads: Vec<JoinHandle<()>>,
    raw: Option<RawStdin>,
}

impl Relay {
    /// Start copying, once the container process exists. The parent's slave is closed here
    /// (the master then reads end of file once the container's last holder is gone). With
    /// `interactive`, stdin is copied too (raw mode if it is a terminal); without, the
    /// container's terminal gets no input, as Docker's `-t` alone.
    pub(super) fn start(pty: Pty, interactive: bool) -> Result<Relay> {
        let Pty { master, slave, .. } = pty;
        drop(slave);
        nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
            .map_err(std::io::Error::from)
            .ctx(|| "making the pseudo-terminal's master non-blocking".into())?;
        let (stop_r, stop_w) = super::fork::pipe()?;
        let dup = |fd: &OwnedFd| fd.try_clone().ctx(|| "duplicating a descriptor for the terminal relay".into());
        let mut relay = Relay { master, stop: Some(stop_w), threads: Vec::new(), raw: None };
        let (m, s) = (dup(&relay.master)?, dup(&stop_r)?);
        relay.threads.push(std::thread::spawn(move || copy_output(&m, &s)));
        if interactive {
            relay.raw = RawStdin::set();
            let (m, s) = (dup(&relay.master)?, stop_r);
            relay.threads.push(std::thread::spawn(move || copy_input(&m, &s)));
        }
        Ok(relay)
    }

    /// The caller's window changed (SIGWINCH): pass the new size on.
    pub(super) fn resize(&self) {
        resize(self.master.as_fd());
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.raw.take();
    }
}

/// Wait for `fd` to be readable, or for the stop pipe's hang-up. `None`: stopped or timed out.
fn wait_readable(fd: BorrowedFd<'_>, stop: Option<BorrowedFd<'_>>, timeout_ms: i32) -> Option<()> {
    let mut fds = [
        libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: stop.map_or(-1, |s| s.as_raw_fd()), events: libc::POLLIN, revents: 0 },
    ];
    loop {
        // SAFETY: two pollfds on the stack (a negative fd is ignored).
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        if r < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        if r <= 0 || (fds[1].revents != 0 && fds[0].revents == 0) {
            return None;
        }
        return Some(());
    }
}

/// Read what is there; `Ok(None)` when nothing is (EAGAIN), `Ok(Some(0))` at the end (EOF, or
/// EIO: the pty's slave side is closed everywhere).
fn read_some(fd: BorrowedFd<'_>, buf: &mut [u8]) -> std::result::Result<Option<usize>, Errno> {
    match nix::unistd::read(fd, buf) {
        Ok(n) => Ok(Some(n)),
        Err(Errno::EAGAIN | Errno::EINTR) => Ok(None),
        Err(Errno::EIO) => Ok(Some(0)),
        Err(e) => Err(e),
    }
}

/// Write all of `buf`, waiting while `fd` is full (a non-blocking master).
fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> std::result::Result<(), Errno> {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
                // SAFETY: one pollfd on the stack.
                unsafe { libc::poll(&mut p, 1, 100) };
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The container's terminal to rcx-dm's stdout, until the slave side is closed everywhere or,
/// once the container has exited, until nothing more arrives for a moment (a process that
/// escaped the pid namespace's end would otherwise hold it open).
fn copy_output(master: &OwnedFd, stop: &OwnedFd) {
    let stdout = std::io::stdout();
    let mut out_ok = true;
    let mut buf = [0u8; 8192];
    let mut stopped = false;
    loop {
        let ready = if stopped {
            wait_readable(master.as_fd(), None, DRAIN_IDLE.as_millis() as i32)
        } else {
            wait_readable(master.as_fd(), Some(stop.as_fd()), -1)
        };
        if ready.is_none() {
            if stopped {
                return;
            }
            stopped = true;
            continue;
        }
        match read_some(master.as_fd(), &mut buf) {
            Ok(Some(0)) | Err(_) => return,
            Ok(None) => {}
            // A caller that stopped reading (EPIPE) does not stop the container: the rest is
            // read and dropped.
            Ok(Some(n)) => out_ok = out_ok && write_all(stdout.as_fd(), &buf[..n]).is_ok(),
        }
    }
}

/// rcx-dm's stdin to the container's terminal, until the container exits. At the end of stdin
/// (not a terminal) the terminal's end-of-file character goes in, so a reader inside sees EOF.
fn copy_input(master: &OwnedFd, stop: &OwnedFd) {
    let stdin = std::io::stdin();
    let mut buf = [0u8; 8192];
    let mut last = b'\n';
    loop {
        if wait_readable(stdin.as_fd(), Some(stop.as_fd()), -1).is_none() {
            return;
        }
        match read_some(stdin.as_fd(), &mut buf) {
            Ok(None) => {}
            Ok(Some(0)) | Err(_) => {
                let eof = termios::tcgetattr(master.as_fd())
                    .map(|t| t.control_chars[SpecialCharacterIndices::VEOF as usize])
                    .unwrap_or(4);
                // In canonical mode the first ends an unfinished line, the second is the EOF.
                let n = if last == b'\n' { 1 } else { 2 };
                let _ = write_all(master.as_fd(), &[eof, eof][..n]);
                return;
            }
            Ok(Some(n)) => {
                last = buf[n - 1];
                if write_all(master.as_fd(), &buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}
