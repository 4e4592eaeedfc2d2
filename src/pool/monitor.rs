//! `pool monitor`: auto-extend driven by the pool's device-mapper events.
//! (implementation follows)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::Pool;
use crate::error::{Error, Result};

/// How the monitor runs.
#[derive(Debug, Clone)]
pub struct MonitorOptions {
    /// Longest wait between two looks at the pool when no event comes (metadata use and the
    /// host's free space raise no event of their own).
    pub interval: Duration,
}

impl Default for MonitorOptions {
    fn default() -> Self {
        MonitorOptions { interval: Duration::from_secs(10) }
    }
}

/// Stops a running monitor from another thread (or a signal handler's flag).
#[derive(Debug, Clone, Default)]
pub struct MonitorStop(Arc<AtomicBool>);

impl MonitorStop {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    pub fn stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl Pool {
    /// Watch the pool and extend it by its auto-extend policy until `stop`.
    pub fn monitor(&self, opts: &MonitorOptions, stop: &MonitorStop) -> Result<()> {
        let _ = (opts, stop);
        Err(Error::invalid("command", "pool monitor is not implemented yet"))
    }
}

/// SIGINT and SIGTERM stop `stop`'s monitor (the foreground `pool monitor`).
pub fn stop_on_signals(stop: &MonitorStop) -> Result<()> {
    let _ = stop;
    Ok(())
}
