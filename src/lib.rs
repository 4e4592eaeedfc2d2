//! rcx-dm: a device-mapper thin-provisioning snapshot backend for containers.
//!
//! Layers, each calling only the one below:
//! `dm` (typed targets over dm ioctls) -> `loopback` (sparse files, loop devices) ->
//! `pool` (store, lock, transactions, recovery: the API front ends use).

pub mod dm;
pub mod error;
pub mod loopback;
pub mod pool;
pub mod units;

pub use error::{Error, Result};
pub use pool::{Pool, PoolOptions, PoolStatus, VolRef, Volume};
