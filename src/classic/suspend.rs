//! Suspend a device around an operation that the kernel only allows (or only makes safe) on a
//! suspended device, such as loading a snapshot next to a live origin.

use crate::dm::Dm;
use crate::error::Result;

/// Run `f` with device `name` suspended (when it exists and is live), and resume it on every
/// path, whatever `f` returned. A table loaded by `f` goes live with the resume; when the load
/// failed, the old table stays live.
pub(crate) fn with_suspended<T>(dm: &Dm, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    // A device without a live table (a create killed half-way) has no I/O to quiesce, and the
    // kernel refuses its resume (EINVAL): leave it to whoever makes it again.
    let suspend = matches!(dm.info(name)?, Some(i) if !i.suspended && i.live_table);
    if suspend {
        dm.suspend(name)?;
    }
    let r = f();
    if suspend {
        if let Err(e) = dm.resume(name) {
            return Err(match r {
                Err(first) => first,
                Ok(_) => e,
            });
        }
    }
    r
}
