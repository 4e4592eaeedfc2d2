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
    /// The unix socket to serve containerd's snapshots API on (a stale socket is replaced; any
    /// other file there is refused, never deleted).
    #[arg(long, default_value = serve::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Permission bits of the socket, in octal. Whoever can connect can make, mount and remove
    /// volumes: the default lets root alone (containerd runs as root).
    #[arg(long, default_value = "600", value_parser = socket_mode_arg)]
    pub socket_mode: u32,
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
    serve::run(pool, ServeOptions { socket: a.socket, socket_mode: a.socket_mode, snapshots: Options { fs: a.fs, size_bytes: a.size }, monitor: !a.no_monitor })?;
    Ok(())
}

fn socket_mode_arg(s: &str) -> std::result::Result<u32, String> {
    match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("'{s}' is not a permission mode in octal (e.g. 600, 660)")),
    }
}
