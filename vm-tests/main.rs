//! Tests against the real kernel: run as root inside the VM by `tools/test` (or on a host
//! with device-mapper). They never skip: without device-mapper they fail.

mod common;
mod classic;
mod foundation;
mod concurrency;
mod crash;
mod thin_edges;
mod thin_walkthrough;
mod runner;
mod detached;
mod checkpoint;
mod oci_build;
mod rootfs;
mod containerd;
mod extend;
mod space;
mod health;
mod integrity;
mod hostile;
mod logwrites;
mod powerloss;
mod grpc;
mod soak;
mod watchdog;
mod registry;
mod cri_client;
mod cri;
mod cri_bench;
mod pull;
mod pull_bench;
