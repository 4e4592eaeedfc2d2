//! `origin`, `cow`, `merge` and `revert`: classic snapshots one command per step (make an
//! origin, snapshot it, edit the snapshot, merge it back), and thin revert. `rcx-dm cow`
//! handles classic snapshots (`classic::SnapshotView` and friends); the command keeps its name. Every kernel or store action is a library call
//! (`rcx_dm::classic`, `Pool::revert`); this file only parses and prints.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use rcx_dm::classic::{self, Classic, MergeProgress, OriginSource, OriginView, SnapshotOptions, SnapshotView};
use rcx_dm::dm::Persistence;
use rcx_dm::pool::{Pool, VolRef};
use rcx_dm::units::format_size;

use super::{print_json, size_arg, JsonFlag};

// `rcx-dm origin ...` (no doc comment here: clap would take it for help text).
#[derive(Subcommand)]
#[command(defer = true)]
pub(super) enum OriginCmd {
    /// Make origin NAME: NAME-real (linear over the source) and NAME (snapshot-origin);
    /// prints the origin's device path last. Write through that device from then on.
    #[command(group(clap::ArgGroup::new("source").required(true).args(["from", "size"])))]
    Create {
        #[arg(value_parser = classic_name)]
        name: String,
        /// A pool volume (id or name) or a block device (a path) to put the origin on.
        #[arg(long)]
        from: Option<String>,
        /// Make a new sparse file of this size (under the pool directory) for the origin.
        #[arg(long, value_parser = size_arg)]
        size: Option<u64>,
    },
    /// Remove an origin (refused while it has snapshots or is mounted). A file made by
    /// --size goes with it; a pool volume or device keeps the (merged) content.
    Delete {
        #[arg(value_parser = classic_name)]
        name: String,
    },
    /// Origins, their devices, live target (snapshot-origin / snapshot-merge) and snapshots.
    List(JsonFlag),
}

// `rcx-dm cow ...`: classic snapshots, under the command's historical name.
#[derive(Subcommand)]
#[command(defer = true)]
pub(super) enum CowCmd {
    /// Make copy-on-write snapshot SNAP of origin NAME (the origin is suspended around the
    /// load, as the kernel requires); prints the snapshot's device path last.
    Create {
        #[arg(value_parser = classic_name)]
        snap: String,
        /// The origin to snapshot.
        #[arg(long, value_parser = classic_name)]
        origin: String,
        /// Size of the COW store: when the changes outgrow it the snapshot becomes invalid.
        #[arg(long, value_parser = size_arg)]
        size: u64,
        /// Copy-on-write granularity: a power of two from 512 bytes to 1G (2^21 sectors).
        #[arg(long, default_value = "4K", value_parser = chunk_arg)]
        chunk: u64,
        /// Keep the exception table in kernel memory only (N): faster, gone on deactivation,
        /// cannot be merged.
        #[arg(long)]
        transient: bool,
        /// Put the COW store in a new pool volume named SNAP.cow instead of a sparse file.
        #[arg(long)]
        in_pool: bool,
    },
    /// Allocated / total / metadata sectors, percent used, and state (valid, invalid,
    /// overflow, merging, merge failed) of one snapshot or all.
    Status {
        #[arg(value_parser = classic_name)]
        snap: Option<String>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Remove a snapshot and free its COW store (refused while merging or mounted).
    Delete {
        #[arg(value_parser = classic_name)]
        snap: String,
    },
}

// `rcx-dm merge SNAP [--wait]`.
#[derive(Args)]
pub(super) struct MergeArgs {
    /// The snapshot to merge back into its origin.
    #[arg(value_parser = classic_name)]
    snap: String,
    /// Wait until the merge is done, the origin is snapshot-origin again and the COW is freed
    /// (progress bar on a terminal). Without it the kernel merges in the background and the
    /// next rcx-dm command that looks at classic snapshots finishes the job.
    #[arg(long)]
    wait: bool,
}

// `rcx-dm revert VOLUME SNAPSHOT`.
#[derive(Args)]
pub(super) struct RevertArgs {
    /// The thin volume to revert (id or name); it keeps its id and name.
    volume: VolRef,
    /// The thin volume whose content it gets (typically a snapshot taken earlier).
    snapshot: VolRef,
}

fn classic_name(s: &str) -> std::result::Result<String, String> {
    classic::validate_name(s).map(|_| s.to_string()).map_err(|e| e.to_string())
}

fn chunk_arg(s: &str) -> std::result::Result<u64, String> {
    let bytes = size_arg(s)?;
    classic::chunk_sectors(bytes).map(|_| bytes).map_err(|e| e.to_string())
}

/// `rcx-dm origin create|delete|list`.
pub(super) fn origin(pool: &Pool, cmd: OriginCmd) -> Result<()> {
    let c = Classic::new(pool);
    match cmd {
        OriginCmd::Create { name, from, size } => {
            let source = match (from, size) {
                (Some(f), _) if f.starts_with('/') => OriginSource::Device(PathBuf::from(f)),
                (Some(f), _) => OriginSource::Volume(f.parse::<VolRef>()?),
                (None, Some(s)) => OriginSource::Size(s),
                (None, None) => anyhow::bail!("give --from ID|NAME|DEVICE or --size SIZE"),
            };
            let o = c.create_origin(&name, source)?;
            println!("created origin {name} ({})", format_size(o.size_bytes));
            print_path(o.device.as_ref(), "origin", &name)
        }
        OriginCmd::Delete { name } => Ok(c.delete_origin(&name)?),
        OriginCmd::List(out) => {
            let list = c.origins()?;
            if out.json {
                return print_json(&list);
            }
            println!("{:<16} {:>8} {:<16} {:<12} SNAPSHOTS  DEVICE", "NAME", "SIZE", "TARGET", "MERGING");
            for o in list {
                print_origin(&o);
            }
            Ok(())
        }
    }
}

fn print_origin(o: &OriginView) {
    println!(
        "{:<16} {:>8} {:<16} {:<12} {:<10} {}",
        o.name,
        format_size(o.size_bytes),
        o.target.as_deref().unwrap_or("(inactive)"),
        o.merging.as_deref().unwrap_or("-"),
        if o.snapshots.is_empty() { "-".to_string() } else { o.snapshots.join(",") },
        o.device.as_ref().map_or("-".into(), |d| d.display().to_string())
    );
}

/// `rcx-dm cow create|status|delete`: classic snapshots.
pub(super) fn cow(pool: &Pool, cmd: CowCmd) -> Result<()> {
    let c = Classic::new(pool);
    match cmd {
        CowCmd::Create { snap, origin, size, chunk, transient, in_pool } => {
            let opts = SnapshotOptions {
                size_bytes: size,
                chunk_bytes: chunk,
                persistence: if transient { Persistence::Transient } else { Persistence::Persistent },
                in_pool,
            };
            let v = c.create_snapshot(&snap, &origin, &opts)?;
            println!(
                "created {} snapshot {snap} of {origin} (COW {}, chunk {})",
                if transient { "transient" } else { "persistent" },
                format_size(v.size_bytes),
                format_size(v.chunk_bytes)
            );
            print_path(v.device.as_ref(), "snapshot", &snap)
        }
        CowCmd::Status { snap, out } => {
            let list = match &snap {
                Some(s) => vec![c.snapshot(s)?],
                None => c.snapshots()?,
            };
            if out.json {
                return match snap {
                    Some(_) => print_json(&list[0]),
                    None => print_json(&list),
                };
            }
            println!("{:<16} {:<16} {:<12} {:>22} {:>8} {:>7} {:>6}  DEVICE", "NAME", "ORIGIN", "STATE", "ALLOCATED/TOTAL", "META", "USED", "CHUNK");
            for v in list {
                print_snapshot(&v);
            }
            Ok(())
        }
        CowCmd::Delete { snap } => Ok(c.delete_snapshot(&snap)?),
    }
}

fn print_snapshot(v: &SnapshotView) {
    let opt = |n: Option<u64>| n.map_or("-".to_string(), |n| n.to_string());
    let mut state = v.state.to_string();
    if let Some(p) = v.merge_percent {
        state = format!("{state} {p:.0}%");
    }
    println!(
        "{:<16} {:<16} {:<12} {:>22} {:>8} {:>7} {:>6}  {}",
        v.name,
        v.origin,
        state,
        format!("{}/{}", opt(v.allocated_sectors), opt(v.total_sectors)),
        opt(v.metadata_sectors),
        v.percent_used.map_or("-".into(), |p| format!("{p:.1}%")),
        format_size(v.chunk_bytes),
        v.device.as_ref().map_or("-".into(), |d| d.display().to_string())
    );
}

/// `rcx-dm merge`: start a merge, or with `--wait` see it through with a progress bar.
pub(super) fn merge(pool: &Pool, a: MergeArgs) -> Result<()> {
    let c = Classic::new(pool);
    if !a.wait {
        let p = c.merge(&a.snap)?;
        if p.finished {
            println!("merged {} into {}; {} is snapshot-origin again", a.snap, p.origin, p.origin);
        } else {
            println!(
                "merging {} into {} in the background ({:.0}% done); `rcx-dm merge {} --wait` waits for it, \
                 and the next rcx-dm classic command finishes it",
                a.snap, p.origin, p.percent, a.snap
            );
        }
        return Ok(());
    }
    let tty = std::io::stderr().is_terminal();
    let p = c.wait_merge(&a.snap, |p| {
        if tty {
            progress_bar(p);
        }
    })?;
    if tty {
        eprintln!();
    }
    println!("merged {} into {}; {} is snapshot-origin again", a.snap, p.origin, p.origin);
    Ok(())
}

fn progress_bar(p: &MergeProgress) {
    const WIDTH: usize = 40;
    let done = ((p.percent / 100.0) * WIDTH as f64).round() as usize;
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "\rmerging {} into {} [{}{}] {:>5.1}%",
        p.snap,
        p.origin,
        "#".repeat(done.min(WIDTH)),
        ".".repeat(WIDTH - done.min(WIDTH)),
        p.percent
    );
    let _ = err.flush();
}

/// `rcx-dm revert`: thin revert (a pool operation, next to the classic ones in the CLI).
pub(super) fn revert(pool: &Pool, a: RevertArgs) -> Result<()> {
    let v = pool.revert(&a.volume, &a.snapshot)?;
    println!("reverted volume {} to the content of {}", v.id, a.snapshot);
    if let Some(d) = &v.device {
        println!("{}", d.display());
    }
    Ok(())
}

fn print_path(dev: Option<&PathBuf>, kind: &str, name: &str) -> Result<()> {
    match dev {
        Some(d) => println!("{}", d.display()),
        None => anyhow::bail!("{kind} {name} was created but is not active; run `rcx-dm pool activate`"),
    }
    Ok(())
}
