//! rcx-dm: a device-mapper thin-provisioning snapshot backend for containers.
//!
//! Layers, each calling only the one below:
//! `dm` (typed targets over dm ioctls) -> `loopback` (sparse files, loop devices) ->
//! `pool` (store, lock, transactions, recovery: the API front ends use) ->
//! `classic` (snapshot-origin / snapshot / snapshot-merge stacks over loop files or pool volumes),
//! `rootfs` (formatted bases, populate from tar/directory/OCI image, images by chain id, commit),
//! `runner` (a volume as a container root: mount, namespaces, pivot_root, cgroup v2, exec) and
//! `serve` (a containerd snapshotter over gRPC: snapshots as pool volumes); `refs` (who holds a
//! volume: images, serve records, classic stacks) sits over all three for front ends' deletes.

pub mod dm;
pub mod durable;
pub mod file_lock;
pub mod error;
pub mod loopback;
pub mod pool;
pub mod classic;
pub mod rootfs;
pub mod runner;
pub mod serve;
pub mod refs;
pub mod lifecycle;
pub mod units;

pub use error::{Error, Result};
pub use pool::{Pool, PoolOptions, PoolStatus, VolRef, Volume};
