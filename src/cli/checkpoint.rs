//! `rcx-dm checkpoint NAME`, `checkpoint ls`, `checkpoint rm` and `rcx-dm restore`: over
//! `rcx_dm::runner`'s checkpoint API.

use anyhow::Result;
use clap::{Args, Subcommand};

use rcx_dm::pool::Pool;
use rcx_dm::runner::{self, CheckpointOptions};

use super::{print_json, JsonFlag};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct CheckpointArgs {
    #[command(subcommand)]
    cmd: Option<CheckpointCmd>,
    /// The running detached container to checkpoint.
    #[arg(value_name = "NAME", required = true)]
    container: Option<String>,
    /// Let the container go on running afterwards (default: it is stopped, status 137).
    #[arg(long)]
    leave_running: bool,
    /// The checkpoint's name (default: NAME-<8 hex digits>).
    #[arg(long = "name", value_name = "CP")]
    checkpoint: Option<String>,
    /// Print the checkpoint's record as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum CheckpointCmd {
    /// List the pool's checkpoints (complete, incomplete, being written).
    Ls(JsonFlag),
    /// Delete a checkpoint: its snapshot volume and its CRIU images (also an incomplete one).
    Rm {
        /// The checkpoint's name.
        name: String,
    },
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The checkpoint to restore (`rcx-dm checkpoint ls`).
    checkpoint: String,
    /// The new container's name (default: run-<8 hex digits>).
    #[arg(long)]
    name: Option<String>,
}

pub fn checkpoint(pool: &Pool, a: CheckpointArgs) -> Result<()> {
    match a.cmd {
        Some(CheckpointCmd::Ls(o)) => {
            let all = runner::list_checkpoints(pool)?;
            if o.json {
                return print_json(&all);
            }
            println!("{:<24} {:<11} {:<16} {:>9} {:>8}  SNAPSHOT", "NAME", "STATE", "CONTAINER", "IMAGES", "DUMP_S");
            for c in all {
                match &c.record {
                    Some(r) => println!(
                        "{:<24} {:<11} {:<16} {:>8}K {:>8.2}  {}",
                        c.name,
                        c.state,
                        r.container,
                        r.images_bytes / 1024,
                        r.timings.criu_ms / 1000.0,
                        r.snapshot
                    ),
                    None => println!("{:<24} {:<11} {:<16} {:>9} {:>8}  -", c.name, c.state, "-", "-", "-"),
                }
            }
            Ok(())
        }
        Some(CheckpointCmd::Rm { name }) => {
            runner::remove_checkpoint(pool, &name)?;
            println!("{name}");
            Ok(())
        }
        None => {
            let container = a.container.expect("required by clap");
            let opts = CheckpointOptions { leave_running: a.leave_running, name: a.checkpoint };
            let rec = runner::checkpoint(pool, &container, &opts)?;
            if a.json {
                return print_json(&rec);
            }
            println!("{}", rec.name);
            Ok(())
        }
    }
}

pub fn restore(pool: &Pool, a: RestoreArgs) -> Result<()> {
    let name = runner::restore(pool, &a.checkpoint, a.name.as_deref())?;
    println!("{name}");
    Ok(())
}
