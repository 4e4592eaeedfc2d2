//! Fault injection for crash tests: `RCX_DM_FAIL_AT=<op>.<step>` stops an operation at that
//! step. By default the process kills itself with SIGKILL (a crash: nothing runs after it);
//! with `RCX_DM_FAIL_MODE=error` the step returns an error instead, exercising error paths.

use crate::error::{Error, Result};

pub fn point(step: &str) -> Result<()> {
    let Some(at) = std::env::var_os("RCX_DM_FAIL_AT") else { return Ok(()) };
    if at.to_str() != Some(step) {
        return Ok(());
    }
    if std::env::var("RCX_DM_FAIL_MODE").as_deref() == Ok("error") {
        return Err(Error::InjectedFault(step.to_string()));
    }
    tracing::warn!(step, "injected crash");
    // SAFETY: plain syscalls; SIGKILL cannot be caught, which is the point.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    unreachable!("SIGKILL did not stop the process")
}
