//! Argument parsing and output. Everything that touches the kernel or the store is a library
//! call; this file only turns arguments into calls and results into text or JSON.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::Serialize;

use rcx_dm::dm::Dm;
use rcx_dm::pool::{self, Pool, VolRef};
use rcx_dm::units::{format_size, parse_size};

mod checkpoint;
mod classic;
mod completions;
mod containers;
mod logging;
mod pool_cmd;
mod rootfs;
mod run;
mod serve;

#[derive(Parser)]
#[command(
    name = "rcx-dm",
    version,
    about = "Device-mapper thin-provisioning snapshot backend for containers",
    long_about = "Creates loop-backed (or block-device-backed) thin pools, thin volumes and \
snapshots with device-mapper ioctls.\n\nTypical use:\n  rcx-dm pool create --data-size 100G\n  \
rcx-dm thin create 0 --size 1G\n  rcx-dm snap 1 0\n\nSizes take K, M, G, T suffixes (powers of 1024) \
and must be multiples of 512 bytes. Set RUST_LOG=debug to see every ioctl."
)]
struct Cli {
    /// Directory holding pool state and backing files.
    #[arg(long, global = true, env = "RCX_DM_ROOT", default_value = pool::DEFAULT_ROOT)]
    root: PathBuf,
    /// Pool to operate on.
    #[arg(long, global = true, env = "RCX_DM_POOL", default_value = "rcx")]
    pool: String,
    #[command(subcommand)]
    cmd: Cmd,
}

// `defer` on every subcommand enum: a call builds the arguments of the one subcommand it names,
// not the whole tree (the tree was a fifth of `rcx-dm snap`'s own cost; README, issue 17).
#[derive(Subcommand)]
#[command(defer = true)]
enum Cmd {
    /// Create, activate, inspect and destroy pools.
    #[command(subcommand)]
    Pool(pool_cmd::PoolCmd),
    /// Thin volumes.
    #[command(subcommand)]
    Thin(ThinCmd),
    /// Snapshot ORIGIN as a new thin volume NEW (an active origin is suspended around it).
    Snap {
        /// Id for the snapshot (0..16777215); omit or pass "-" to allocate one.
        new: String,
        /// The volume to snapshot, by id or name.
        origin: VolRef,
        /// A unique name for the volume (letters, digits, '_', '.', '-').
        #[arg(long, value_parser = name_arg)]
        name: Option<String>,
        /// Size of the snapshot device (default: the origin's).
        #[arg(long, value_parser = size_arg)]
        size: Option<u64>,
    },
    /// Activate a volume and print its device path.
    Activate { volume: VolRef },
    /// Remove a volume's device; its data stays in the pool.
    Deactivate { volume: VolRef },
    /// Delete a volume and free its blocks.
    Delete {
        volume: VolRef,
        /// Deactivate an active volume first instead of refusing.
        #[arg(long)]
        force: bool,
    },
    /// List the pool's volumes.
    List(JsonFlag),
    /// Show one volume.
    Info {
        volume: VolRef,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Show the kernel's device-mapper version and loaded targets.
    DmInfo(JsonFlag),
    /// Run a command in a container on a volume (a snapshot of a read-only one): private mount,
    /// new mount/pid/uts/ipc/net namespaces, pivot_root, cgroup v2 limits.
    Run(run::RunArgs),
    /// Mark a volume read-only (a base: `run` uses snapshots of it), or writable with --off.
    SetReadonly(run::SetReadonlyArgs),
    #[command(flatten)]
    Container(containers::ContainerCmd),
    /// Checkpoint a running detached container (CRIU dump of its processes and a thin
    /// snapshot of its volume while its cgroup is frozen); `checkpoint ls`, `checkpoint rm CP`.
    Checkpoint(checkpoint::CheckpointArgs),
    /// Restore a checkpoint as a new detached container (a new thin snapshot of its volume, its
    /// processes by CRIU); prints the container's name.
    Restore(checkpoint::RestoreArgs),
    /// Classic origins: NAME-real (linear) and NAME (snapshot-origin) over a file, volume or device.
    #[command(subcommand)]
    Origin(classic::OriginCmd),
    /// Classic copy-on-write snapshots of an origin (persistent or transient).
    #[command(subcommand)]
    Cow(classic::CowCmd),
    /// Merge a classic snapshot back into its origin (snapshot-merge), then snapshot-origin again.
    Merge(classic::MergeArgs),
    /// Give thin volume VOLUME the content of SNAPSHOT again; it keeps its id and name.
    Revert(classic::RevertArgs),
    /// Make a filesystem (ext4 or xfs) on a volume, with options right for thin volumes.
    Format(rootfs::FormatArgs),
    /// Make a volume's content equal to a tar, a directory or an OCI image layout.
    Populate(rootfs::PopulateArgs),
    /// OCI images: import or pull (one read-only volume per layer, shared by chain id), push, list, rm.
    #[command(subcommand)]
    Image(rootfs::ImageCmd),
    /// Make a stopped container's volume a new read-only image (like `docker commit`).
    Commit(rootfs::CommitArgs),
    /// Give the blocks of files deleted inside a volume's filesystem back to the pool and the
    /// host (fstrim through a private mount).
    Trim {
        /// The volume, by id or name.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        volume: Option<VolRef>,
        /// Every writable volume that holds a filesystem.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Serve containerd's snapshots API (a proxy snapshotter plugin) on a unix socket.
    Serve(serve::ServeArgs),
    /// Print a shell completion script (bash, zsh, fish, ...) to stdout; needs no root.
    Completions(completions::CompletionsArgs),
    /// Write the man pages (rcx-dm.1, rcx-dm-pool.1, ...) to a directory, or print rcx-dm.1;
    /// needs no root.
    Man(completions::ManArgs),
}

#[derive(Subcommand)]
#[command(defer = true)]
enum ThinCmd {
    /// Create an empty thin volume and activate it; prints the device path last.
    Create {
        /// Id (0..16777215); allocated when omitted.
        id: Option<String>,
        #[arg(long, value_parser = size_arg)]
        size: u64,
        /// A unique name for the volume (letters, digits, '_', '.', '-').
        #[arg(long, value_parser = name_arg)]
        name: Option<String>,
        /// Give it an empty filesystem: a snapshot of a kept formatted base of this size and
        /// filesystem (made by mkfs the first time only).
        #[arg(long)]
        fs: Option<rcx_dm::rootfs::fs::Fs>,
    },
    /// Grow a volume and the ext4 or xfs filesystem on it (online when mounted). Shrinking,
    /// and read-only volumes (bases, image layers), are refused.
    Resize {
        volume: VolRef,
        /// The new size (at least the current one).
        #[arg(long, value_parser = size_arg)]
        size: u64,
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Args)]
pub(crate) struct JsonFlag {
    /// Print JSON for scripts.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn size_arg(s: &str) -> std::result::Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn name_arg(s: &str) -> std::result::Result<String, String> {
    pool::validate_user_volume_name(s).map(|_| s.to_string()).map_err(|e| e.to_string())
}

fn id_arg(s: Option<&str>) -> Result<Option<u32>> {
    match s {
        None | Some("-") => Ok(None),
        Some(s) => Ok(Some(pool::parse_thin_id(s)?)),
    }
}

pub fn main() -> i32 {
    let cli = match parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    // A monitor's log is its output: each extend is worth a line by default.
    let monitor = matches!(cli.cmd, Cmd::Pool(pool_cmd::PoolCmd::Monitor { .. }));
    logging::init(monitor || matches!(cli.cmd, Cmd::Serve(_)), if monitor { "warn,rcx_dm=info" } else { "warn" });
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("rcx-dm: error: {e:#}");
            1
        }
    }
}

/// `Cli::try_parse`, without freeing clap's command tree: the process exits soon after, and
/// dropping the tree cost as much as building it.
fn parse() -> std::result::Result<Cli, clap::Error> {
    let mut cmd = Cli::command();
    let parsed = cmd
        .try_get_matches_from_mut(std::env::args_os())
        .and_then(|mut m| Cli::from_arg_matches_mut(&mut m).map_err(|e| e.format(&mut cmd)));
    std::mem::forget(cmd);
    parsed
}

fn run(cli: Cli) -> Result<()> {
    // Completions and man pages come from the definitions alone: no root, no pool.
    let generated = matches!(cli.cmd, Cmd::Completions(_) | Cmd::Man(_));
    if !generated && !nix::unistd::geteuid().is_root() {
        bail!("rcx-dm must run as root (device-mapper and loop devices need CAP_SYS_ADMIN); try sudo");
    }
    let root = cli.root.as_path();
    let open = || Pool::open(root, &cli.pool);
    match cli.cmd {
        Cmd::Pool(p) => pool_cmd::run(root, &cli.pool, p),
        Cmd::Thin(ThinCmd::Create { id, size, name, fs }) => {
            let id = id_arg(id.as_deref())?;
            let v = match fs {
                Some(fs) => rcx_dm::rootfs::base::empty_volume(&open()?, fs, size, id, name.as_deref())?,
                None => open()?.create_thin(id, size, name.as_deref())?,
            };
            let with_fs = fs.map_or(String::new(), |f| format!(", empty {f}"));
            println!("created thin volume {} ({}{with_fs})", v.id, format_size(v.size_bytes));
            print_device(&v)
        }
        Cmd::Thin(ThinCmd::Resize { volume, size, out }) => {
            let p = open()?;
            // Everything that would be refused is refused before the volume changes.
            let fs = rcx_dm::rootfs::grow::preflight(&p, &volume, size)?;
            let v = p.resize_volume(&volume, size)?;
            // A volume without a filesystem (a raw block device for a VM) only grows.
            let fs_bytes = match fs.map(|_| rcx_dm::rootfs::grow::grow_fs(&p, &volume)).transpose() {
                Ok(b) => b,
                Err(e) => bail!("volume {} is now {}, but its filesystem was not grown: {e}; run `rcx-dm thin resize {volume} --size {size}` again", v.id, format_size(v.size_bytes)),
            };
            if out.json {
                #[derive(Serialize)]
                struct Out {
                    #[serde(flatten)]
                    volume: rcx_dm::Volume,
                    fs_bytes: Option<u64>,
                }
                return print_json(&Out { volume: v, fs_bytes });
            }
            match fs_bytes {
                Some(b) => println!("volume {} is now {}, its filesystem {}", v.id, format_size(v.size_bytes), human(b)),
                None => println!("volume {} is now {} (no filesystem on it to grow)", v.id, format_size(v.size_bytes)),
            }
            Ok(())
        }
        Cmd::Trim { volume, all, out } => {
            let p = open()?;
            let reports = match volume {
                Some(v) if !all => vec![rcx_dm::rootfs::trim::trim(&p, &v)?],
                _ => rcx_dm::rootfs::trim::trim_all(&p)?,
            };
            let failed = reports.iter().filter(|r| r.error.is_some()).count();
            if out.json {
                print_json(&reports)?;
            } else {
                for r in &reports {
                    match &r.error {
                        None => println!("volume {}: trimmed {}", r.id, human(r.trimmed_bytes)),
                        Some(e) => println!("volume {}: not trimmed: {e}", r.id),
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} volume(s) could not be trimmed (see above); the others were");
            }
            Ok(())
        }
        Cmd::Snap { new, origin, name, size } => {
            let id = id_arg(Some(&new))?;
            let p = open()?;
            let origin = rootfs::volume_or_image(&p, origin)?;
            let v = p.snapshot(id, &origin, size, name.as_deref())?;
            println!("created snapshot {} of {origin}", v.id);
            print_device(&v)
        }
        Cmd::Activate { volume } => {
            println!("{}", open()?.activate_volume(&volume)?.display());
            Ok(())
        }
        Cmd::Deactivate { volume } => Ok(open()?.deactivate_volume(&volume)?),
        Cmd::Delete { volume, force } => Ok(rcx_dm::refs::delete_volume(&open()?, &volume, force)?),
        Cmd::Run(mut a) => {
            run::refuse_conflicts(&a);
            let p = open();
            if let Ok(p) = &p {
                a.volume = rootfs::volume_or_image(p, a.volume)?;
            }
            run::run(p, a)
        }
        Cmd::Format(a) => rootfs::format(&open()?, a),
        Cmd::Populate(a) => rootfs::populate(&open()?, a),
        Cmd::Image(c) => rootfs::image_cmd(&open()?, c),
        Cmd::Commit(a) => rootfs::commit(&open()?, a),
        Cmd::SetReadonly(a) => run::set_readonly(&open()?, a),
        Cmd::Container(c) => containers::run(&open()?, c),
        Cmd::Checkpoint(a) => checkpoint::checkpoint(&open()?, a),
        Cmd::Restore(a) => checkpoint::restore(&open()?, a),
        Cmd::Origin(c) => classic::origin(&open()?, c),
        Cmd::Cow(c) => classic::cow(&open()?, c),
        Cmd::Merge(a) => classic::merge(&open()?, a),
        Cmd::Revert(a) => classic::revert(&open()?, a),
        Cmd::Serve(a) => serve::serve(open()?, a),
        Cmd::Completions(a) => completions::completions(&a),
        Cmd::Man(a) => completions::man(&a),
        Cmd::List(o) => {
            let vols = open()?.volumes()?;
            if o.json {
                return print_json(&vols);
            }
            println!("{:>8}  {:<16} {:>8} {:>8} {:>10}  DEVICE", "ID", "NAME", "PARENT", "SIZE", "MAPPED");
            for v in vols {
                println!(
                    "{:>8}  {:<16} {:>8} {:>8} {:>10}  {}",
                    v.id,
                    v.name.as_deref().unwrap_or("-"),
                    v.parent.map_or("-".into(), |p| p.to_string()),
                    format_size(v.size_bytes),
                    v.mapped_bytes.map_or("-".into(), human),
                    v.device.map_or("(inactive)".into(), |d| d.display().to_string())
                );
            }
            Ok(())
        }
        Cmd::Info { volume, out } => {
            let v = open()?.volume(&volume)?;
            if out.json {
                return print_json(&v);
            }
            println!("id:      {}", v.id);
            println!("name:    {}", v.name.as_deref().unwrap_or("-"));
            println!("parent:  {}", v.parent.map_or("-".into(), |p| p.to_string()));
            println!("size:    {} ({} bytes)", format_size(v.size_bytes), v.size_bytes);
            println!("active:  {}", v.active);
            println!("device:  {}", v.device.map_or("-".into(), |d| d.display().to_string()));
            println!("mapped:  {}", v.mapped_bytes.map_or("-".into(), human));
            Ok(())
        }
        Cmd::DmInfo(o) => {
            let dm = Dm::open()?;
            let (a, b, c) = dm.version()?;
            let targets = dm.targets()?;
            if o.json {
                #[derive(Serialize)]
                struct Out {
                    ioctl_version: String,
                    targets: Vec<rcx_dm::dm::TargetVersion>,
                }
                return print_json(&Out { ioctl_version: format!("{a}.{b}.{c}"), targets });
            }
            println!("device-mapper ioctl interface {a}.{b}.{c}");
            for t in targets {
                let (x, y, z) = t.version;
                println!("  {:<18} v{x}.{y}.{z}", t.name);
            }
            Ok(())
        }
    }
}

fn print_device(v: &rcx_dm::Volume) -> Result<()> {
    match &v.device {
        Some(d) => println!("{}", d.display()),
        None => bail!("volume {} was created but is not active; run `rcx-dm activate {}`", v.id, v.id),
    }
    Ok(())
}

pub(crate) fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With `defer`, a call checks only the subcommand it names: clap's consistency checks of the
    /// whole tree run here instead.
    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    fn abouts(cmd: &clap::Command, path: String, out: &mut Vec<(String, String)>) {
        // clap adds its `help` subcommands when it builds the tree.
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let path = format!("{path} {}", sub.get_name());
            out.push((path.clone(), sub.get_about().map(|a| a.to_string()).unwrap_or_default()));
            abouts(sub, path, out);
        }
    }

    /// A deferred subcommand's arguments are added after its about text: a flattened struct with
    /// a doc comment would replace it (in `--help` and the man pages, not in the parent's list).
    #[test]
    fn deferred_arguments_keep_each_subcommands_about() {
        let (mut before, mut after) = (Vec::new(), Vec::new());
        abouts(&Cli::command(), String::new(), &mut before);
        let mut built = Cli::command();
        built.build();
        abouts(&built, String::new(), &mut after);
        assert!(before.len() > 40, "{before:?}");
        // An Args struct with subcommands of its own (`checkpoint ls|rm`) adds them only when
        // built: every subcommand known before keeps its about text, and nothing else changes.
        let kept: Vec<_> = after.iter().filter(|(p, _)| before.iter().any(|(b, _)| b == p)).cloned().collect();
        assert_eq!(before, kept);
        let added: Vec<_> = after.iter().filter(|e| !before.contains(e)).map(|(p, _)| p.as_str()).collect();
        assert_eq!(added, [" checkpoint ls", " checkpoint rm"]);
    }
}
