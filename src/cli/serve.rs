//! `rcx-dm serve`: the containerd snapshotter (`rcx_dm::serve`) on a unix socket.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use rcx_dm::pool::Pool;
use rcx_dm::rootfs::fs::Fs;
use rcx_dm::serve::{self, Options, ServeOptions};

#[derive(Args, Debug)]
#[command(after_help = "\
containerd loads it as a proxy plugin (config.toml):

  [proxy_plugins.rcx-dm]
    type = \"snapshot\"
    address = \"/run/rcx-dm/snapshotter.sock\"

then e.g. `ctr run --snapshotter rcx-dm ...`. Every snapshot is a thin volume of --pool: the \
first layer a snapshot of one formatted base (made once), each further layer a snapshot of its \
parent. The pool is activated on start; an interrupted call is rolled forward or back.")]
pub struct ServeArgs {
    /// The unix socket to serve containerd's snapshots API on (a stale file is replaced).
    #[arg(long, default_value = serve::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Filesystem of new snapshots: ext4 or xfs.
    #[arg(long, default_value = "ext4")]
    pub fs: Fs,
    /// Size of each snapshot's volume (thin: only what is written costs pool space).
    #[arg(long, default_value = "10G", value_parser = super::size_arg)]
    pub size: u64,
    /// Do not run the pool's auto-extend monitor in-process (run `rcx-dm pool monitor` instead,
    /// or none). With it on and a `pool monitor` already running, serve leaves the pool to it.
    #[arg(long)]
    pub no_monitor: bool,
}

pub fn serve(pool: Pool, a: ServeArgs) -> Result<()> {
    serve::run(pool, ServeOptions { socket: a.socket, snapshots: Options { fs: a.fs, size_bytes: a.size }, monitor: !a.no_monitor })?;
    Ok(())
}
