//! The report protocol: what the container process tells rcx-dm, from the clone to execve, over
//! one close-on-exec pipe, and how rcx-dm reads it back.
//!
//! Text, one record per line, each written with a single write (below PIPE_BUF, so atomic):
//! - `T <stage> <ns>`: the child reached a stage (`start`, `mounted`, `ready`, `exec`) at that
//!   CLOCK_MONOTONIC time;
//! - `E <kind> <errno> <what>`: a step failed (`setup`, `notfound` or `noexec`); `what` names the
//!   step, or the program path (`-` when no candidate existed). The child then exits with the
//!   kind's status (`EXIT_*`).
//!
//! The pipe closes when execve succeeds (close-on-exec) or the child exits: end of file after
//! `T start` and no `E` record means the command runs. A leaf module: the writers (child, init)
//! and the reader (fork) all use it, it uses none of them.

use std::os::fd::RawFd;

/// Exit status of a container whose setup failed before the command ran (as docker's 125).
pub const EXIT_SETUP: i32 = 125;
/// Exit status when the command exists but cannot be executed (the shell's 126).
pub const EXIT_NOEXEC: i32 = 126;
/// Exit status when the command was not found (the shell's 127).
pub const EXIT_NOTFOUND: i32 = 127;

/// Why the container never ran its command: the `<kind>` of an `E` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FailureKind {
    /// A setup step (mount, pivot_root, hostname, network, ...) failed: `setup`.
    Setup,
    /// No candidate path for the command exists: `notfound`.
    NotFound,
    /// execve failed on a candidate for another reason than its absence (EACCES, ENOEXEC, ...):
    /// `noexec`.
    NoExec,
}

/// The exit status `run` (and `run -d`, `exec`) gives when the command did not start: 127 not
/// found, 126 not executable, a detached start's own status, else 125.
pub fn start_status(e: &crate::error::Error) -> i32 {
    use crate::error::Error;
    match e {
        Error::DetachedStart { status, .. } => *status,
        Error::CommandNotFound { .. } => EXIT_NOTFOUND,
        Error::CommandNotExecutable { .. } => EXIT_NOEXEC,
        _ => EXIT_SETUP,
    }
}

impl FailureKind {
    /// The word on the pipe.
    pub(super) fn wire(self) -> &'static str {
        match self {
            FailureKind::Setup => "setup",
            FailureKind::NotFound => "notfound",
            FailureKind::NoExec => "noexec",
        }
    }

    /// Read the word back. An unknown word counts as a setup failure, the catch-all.
    pub(super) fn from_wire(word: &str) -> FailureKind {
        match word {
            "notfound" => FailureKind::NotFound,
            "noexec" => FailureKind::NoExec,
            _ => FailureKind::Setup,
        }
    }

    /// The child's exit status after reporting this failure.
    pub(super) fn exit_code(self) -> i32 {
        match self {
            FailureKind::Setup => EXIT_SETUP,
            FailureKind::NotFound => EXIT_NOTFOUND,
            FailureKind::NoExec => EXIT_NOEXEC,
        }
    }
}

/// The stages the child stamps on its way to execve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Running in the new namespaces (right after the clone and the liveness check).
    Start,
    /// The volume is mounted.
    Mounted,
    /// pivot_root done and the container's view built; next: `--init` or exec.
    Ready,
    /// About to execve.
    Exec,
}

impl Stage {
    fn wire(self) -> &'static str {
        match self {
            Stage::Start => "start",
            Stage::Mounted => "mounted",
            Stage::Ready => "ready",
            Stage::Exec => "exec",
        }
    }

    fn from_wire(word: &str) -> Option<Stage> {
        [Stage::Start, Stage::Mounted, Stage::Ready, Stage::Exec].into_iter().find(|s| s.wire() == word)
    }
}

/// CLOCK_MONOTONIC in ns: the clock of the stamps (the parent compares them with its own reads).
pub(super) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes into ts.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Write a whole record to the report pipe in one write.
fn write(fd: RawFd, line: &str) {
    let b = line.as_bytes();
    // SAFETY: writing a byte slice to a descriptor we own.
    unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
}

/// Child side: `T <stage> <now>`.
pub(super) fn stamp(fd: RawFd, stage: Stage) {
    write(fd, &format!("T {} {}\n", stage.wire(), monotonic_ns()));
}

/// Child side: `E <kind> <errno> <what>`. `what` must hold no newline.
pub(super) fn failure(fd: RawFd, kind: FailureKind, errno: i32, what: &str) {
    write(fd, &format!("E {} {errno} {what}\n", kind.wire()));
}

/// Timestamps (CLOCK_MONOTONIC ns) the child reported.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct ChildTimes {
    pub(super) start: u64,
    pub(super) mounted: u64,
    pub(super) ready: u64,
    pub(super) exec: u64,
}

/// What the report pipe said by the time it closed.
pub(super) enum Report {
    /// execve succeeded.
    Running(ChildTimes),
    /// A step failed; the child exits with `kind.exit_code()`. errno 0: nothing was reported.
    Failed { kind: FailureKind, errno: i32, what: String },
}

/// Parent side: everything read from the pipe, up to its end of file.
pub(super) fn parse_report(text: &str) -> Report {
    let mut t = ChildTimes::default();
    let mut failed = None;
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("T"), Some(stage), Some(ns)) => {
                let ns = ns.parse().unwrap_or(0);
                match Stage::from_wire(stage) {
                    Some(Stage::Start) => t.start = ns,
                    Some(Stage::Mounted) => t.mounted = ns,
                    Some(Stage::Ready) => t.ready = ns,
                    Some(Stage::Exec) => t.exec = ns,
                    None => {}
                }
            }
            (Some("E"), Some(kind), Some(errno)) => {
                failed = Some((FailureKind::from_wire(kind), errno.parse().unwrap_or(0), parts.next().unwrap_or("").to_string()));
            }
            _ => {}
        }
    }
    match failed {
        Some((kind, errno, what)) => Report::Failed { kind, errno, what },
        // No record at all: the child died before reporting (killed, or rcx-dm's parent check).
        None if t.start == 0 => Report::Failed {
            kind: FailureKind::Setup,
            errno: 0,
            what: "starting the container process (it died before reporting)".into(),
        },
        None => Report::Running(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_parse() {
        match parse_report("T start 5\nT mounted 7\nT ready 9\nT exec 11\n") {
            Report::Running(t) => assert_eq!((t.start, t.mounted, t.ready, t.exec), (5, 7, 9, 11)),
            Report::Failed { .. } => panic!("not failed"),
        }
        match parse_report("T start 5\nE notfound 2 -\n") {
            Report::Failed { kind, errno, .. } => assert_eq!((kind, errno), (FailureKind::NotFound, 2)),
            Report::Running(_) => panic!("failed"),
        }
        match parse_report("T start 5\nE setup 22 mounting /dev/x (ext4) on /r\n") {
            Report::Failed { what, .. } => assert_eq!(what, "mounting /dev/x (ext4) on /r"),
            Report::Running(_) => panic!("failed"),
        }
        assert!(matches!(parse_report(""), Report::Failed { .. }));
    }

    #[test]
    fn failure_kinds_keep_their_wire_words_and_exit_codes() {
        let all = [
            (FailureKind::Setup, "setup", EXIT_SETUP),
            (FailureKind::NotFound, "notfound", EXIT_NOTFOUND),
            (FailureKind::NoExec, "noexec", EXIT_NOEXEC),
        ];
        for (kind, word, code) in all {
            assert_eq!(kind.wire(), word);
            assert_eq!(FailureKind::from_wire(word), kind);
            assert_eq!(kind.exit_code(), code);
        }
        assert_eq!(FailureKind::from_wire("something-else"), FailureKind::Setup);
        assert_eq!((EXIT_SETUP, EXIT_NOEXEC, EXIT_NOTFOUND), (125, 126, 127));
    }

    #[test]
    fn records_written_on_a_pipe_read_back() {
        let mut fds = [0; 2];
        // SAFETY: plain syscall into a two-int array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        stamp(fds[1], Stage::Start);
        failure(fds[1], FailureKind::NoExec, 13, "/bin/x y");
        // SAFETY: closing the write end we own, then reading into a local buffer.
        let text = unsafe {
            libc::close(fds[1]);
            let mut buf = [0u8; 256];
            let n = libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len());
            libc::close(fds[0]);
            String::from_utf8_lossy(&buf[..n.max(0) as usize]).into_owned()
        };
        let (t, e) = text.split_once('\n').expect("two lines");
        assert!(t.starts_with("T start ") && t["T start ".len()..].parse::<u64>().is_ok(), "{t}");
        assert_eq!(e, "E noexec 13 /bin/x y\n");
        match parse_report(&text) {
            Report::Failed { kind, errno, what } => assert_eq!((kind, errno, what.as_str()), (FailureKind::NoExec, 13, "/bin/x y")),
            Report::Running(_) => panic!("failed"),
        }
    }
}
