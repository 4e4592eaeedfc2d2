//! The `rcx-dm` command: a thin layer over the library.
//!
//! `no_main`: Rust's runtime start-up reads and parses /proc/self/maps to find the main thread's
//! stack guard (for the "has overflowed its stack" message), a seventh of the instructions a
//! short call ran before its own work (README, issue 17). What else that start-up does, this
//! `main` does itself: standard descriptors 0-2 are made valid and SIGPIPE is ignored.
//! `std::env::args` still works (glibc hands argv to Rust's initialiser), and
//! `std::process::exit` still flushes stdout. A stack overflow is a plain SIGSEGV.
// Unit tests keep the test harness's own main.
#![cfg_attr(not(test), no_main)]

mod cli;

// Under test the harness has its own main; this keeps the CLI reachable (no dead-code warnings).
#[cfg(test)]
const _: fn() -> i32 = cli::main;

#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(_argc: std::ffi::c_int, _argv: *const *const std::ffi::c_char) -> std::ffi::c_int {
    sanitize_std_fds();
    // As Rust's runtime does: a closed pipe is an EPIPE error to handle, not a silent death.
    // SAFETY: setting a signal's disposition to SIG_IGN, before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // A panic must not unwind into the C caller: report it (the hook has printed it) as 101.
    let code = std::panic::catch_unwind(cli::main).unwrap_or(101);
    std::process::exit(code)
}

#[cfg(not(test))]
/// A closed 0, 1 or 2 is opened on /dev/null, so that no file rcx-dm opens (a pool's intent,
/// a volume record) can become stdout or stderr and receive its output.
fn sanitize_std_fds() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd { fd, events: 0, revents: 0 });
    // SAFETY: poll on a local array of three pollfd.
    if unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) } < 0 {
        return;
    }
    for p in fds {
        if p.revents & libc::POLLNVAL != 0 {
            // SAFETY: open of a constant path; the descriptor becomes the lowest free one, p.fd.
            if unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) } < 0 {
                std::process::abort();
            }
        }
    }
}
