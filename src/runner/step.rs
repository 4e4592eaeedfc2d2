//! One step of the container's setup, run in the child between the clone and execve, and how it
//! fails. A leaf module (it uses none of its siblings): the modules with child-side steps (root
//! mount, /dev, network, the child itself) all return `Step`, and the child writes a `Fail` on
//! the report pipe (`report`).

use nix::errno::Errno;

/// A failed step inside the container (before exec): what it was doing, and the error.
#[derive(Debug)]
pub(super) struct Fail {
    /// The step, as rcx-dm's error message shows it ("mounting /proc").
    pub(super) what: String,
    pub(super) errno: Errno,
}

impl Fail {
    pub(super) fn new(what: impl Into<String>, errno: Errno) -> Fail {
        Fail { what: what.into(), errno }
    }
}

/// The result of a child-side step.
pub(super) type Step<T> = std::result::Result<T, Fail>;
