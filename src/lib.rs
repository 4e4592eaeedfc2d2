//! rcx-dm: a device-mapper thin-provisioning snapshot backend for containers.
//!
//! A [`Pool`] is a thin pool on sparse files (or block devices) with its own state store; its
//! volumes are thin devices and snapshots of them, made and removed with dm ioctls and kept
//! crash-safe by an intent per operation that the next call finishes or undoes. Above the pool:
//! [`classic`] snapshot-origin / snapshot / snapshot-merge stacks, [`rootfs`] (filesystems,
//! populate from tar, directory or OCI layout, images by chain id, commit), [`runner`] (a volume
//! as a container's root in new namespaces) and [`serve`] (containerd's snapshotter API).
//!
//! Layers, each calling only the ones below it:
//! [`dm`] (typed targets over dm ioctls) -> [`loopback`] (sparse files, loop devices) ->
//! [`pool`] (store, lock, intents, recovery) -> [`classic`], [`rootfs`], [`runner`] ->
//! [`serve`] and the `rcx-dm` command line. Rules that span layers (dead runs cleaned up when a
//! pool is opened; classic stacks up after the pool and down before it) live in the library's
//! entry points ([`Pool::open`], [`Pool::activate`], [`Pool::deactivate`], [`Pool::destroy`]),
//! so every front end gets them.
//!
//! Everything needs root and a kernel with device-mapper (thin-provisioning, snapshot targets).
//!
//! ```no_run
//! use std::path::Path;
//! use rcx_dm::{Pool, PoolOptions, VolRef};
//!
//! # fn main() -> rcx_dm::Result<()> {
//! let root = Path::new("/var/lib/rcx-dm");
//! // A pool on sparse files under root: 10 GiB of data, metadata sized for it.
//! let pool = Pool::create(root, "demo", &PoolOptions { data_size: Some(10 << 30), ..Default::default() })?;
//! // An empty 1 GiB thin volume (id chosen by the pool), then a snapshot of it.
//! let base = pool.create_thin(None, 1 << 30, Some("base"))?;
//! let snap = pool.snapshot(None, &VolRef::Id(base.id), None, Some("work"))?;
//! println!("{}", snap.device.expect("a new snapshot is active").display());
//! // Later, or after a reboot: the same pool, its volumes brought back.
//! let pool = Pool::open(root, "demo")?;
//! let up = pool.activate()?.into_result()?;
//! println!("{} volume(s) active", up.volumes);
//! rcx_dm::refs::delete_volume(&pool, &VolRef::Name("work".into()), false)?;
//! pool.destroy(true)?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod dm;
pub mod loopback;
pub mod units;
mod durable;
mod error;
mod file_lock;
pub mod pool;
pub mod classic;
pub mod rootfs;
pub mod runner;
pub mod serve;
pub mod refs;
mod lifecycle;

pub use error::{Errno, Error, Result};
pub use lifecycle::Activation;
pub use pool::{Pool, PoolOptions, PoolStatus, VolRef, Volume};

/// The stores' records and the image-layer internals, for rcx-dm's own fuzz targets and
/// vm-tests, which check what is on disk. Not an API: anything here may change in any release;
/// an embedder goes through [`Pool`] and the public modules, which keep the locks and intents.
#[doc(hidden)]
pub mod internals {
    /// The pool's records (`pool.json`, `volumes/`, `names/`, intents).
    pub mod pool_store {
        pub use crate::pool::store::*;
    }
    /// Classic origins', snapshots' and merges' records.
    pub mod classic_store {
        pub use crate::classic::store::*;
    }
    /// `serve`'s snapshot records.
    pub mod serve_store {
        pub use crate::serve::store::*;
    }
    /// Tar streams and their compression.
    pub mod archive {
        pub use crate::rootfs::archive::*;
    }
    /// Applying an image layer's tar stream to a tree.
    pub mod layer {
        pub use crate::rootfs::layer::*;
    }
    /// A directory tree opened without following links out of it.
    pub mod tree {
        pub use crate::rootfs::tree::*;
    }
}
