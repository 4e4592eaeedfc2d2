//! Root filesystems on pool volumes, the way container image stores do it: one formatted base
//! per (filesystem, size), every empty filesystem and every image layer a thin snapshot of its
//! parent, content written through a private mount.
//!
//! - `fs`: ext4/xfs: recognise, format with options right for thin volumes, mount options.
//! - `mount`: a volume mounted in a private mount namespace of one thread, never in the host's.
//! - `tree`: a mounted root written only through descriptors resolved inside it (openat2
//!   RESOLVE_IN_ROOT), so no tar entry or symlink chain can reach the host.
//! - `archive`: plain, gzip or zstd tar streams, told apart by their magic.
//! - `layer`: a tar stream applied as an OCI layer: whiteouts and opaque directories honoured.
//! - `copy`: a directory made equal to another (`rsync -aHAX --delete`).
//! - `oci`: OCI image layouts: index, manifest, config, layers, digests, chain ids.
//! - `base`: empty filesystems as snapshots of a kept formatted base.
//! - `populate`: a volume's content replaced by a tar, directory or image, all or nothing.
//! - `image`: images imported into the pool, layers shared by chain id; commit.
//! - `registry`: images pulled from and pushed to OCI distribution registries.
//! - `trim`: deleted files' blocks given back to the pool and the host (FITRIM).
//! - `grow`: a filesystem grown to its volume's new size (`thin resize`).
//! - `writeback`: finished files' write-back started on a thread while the rest is written.

pub(crate) mod archive;
pub mod base;
mod copy;
pub mod fs;
pub mod grow;
pub mod image;
pub(crate) mod layer;
pub(crate) mod mount;
pub mod oci;
pub mod populate;
pub mod registry;
pub(crate) mod tree;
pub mod trim;
pub(crate) mod writeback;
