//! `rcx-dm pool ...`: create, activate, extend, set, monitor, check, repair, status, destroy.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use rcx_dm::pool::autoextend::{parse_threshold, Autoextend};
use rcx_dm::pool::{ExtendRequest, MonitorOptions, MonitorStop, Pool, PoolOptions, SizeChange, Step};
use rcx_dm::units::{format_size, parse_bytes, parse_size};

use super::{print_json, size_arg, JsonFlag};

#[derive(Subcommand)]
#[command(defer = true)]
pub(crate) enum PoolCmd {
    /// Create a pool: backing storage, zeroed metadata, the thin-pool device.
    Create {
        /// Data size (default 100G for a sparse file, the whole device with --data-dev).
        #[arg(long, value_parser = size_arg)]
        data_size: Option<u64>,
        /// Metadata size, or "auto" to size it from data and block size.
        #[arg(long, default_value = "auto")]
        meta_size: String,
        /// Data block size: a multiple of 64K from 64K to 1G.
        #[arg(long, default_value = "64K", value_parser = size_arg)]
        block_size: u64,
        /// Free blocks below which the kernel raises an event, when auto-extend is off
        /// (default 1% of the pool; with auto-extend on, the threshold sets it).
        #[arg(long)]
        low_water: Option<u64>,
        /// Use this block device for data instead of a sparse file.
        #[arg(long, requires = "meta_dev")]
        data_dev: Option<PathBuf>,
        /// Use this block device for metadata instead of a sparse file (its start is zeroed).
        #[arg(long, requires = "data_dev")]
        meta_dev: Option<PathBuf>,
        /// Do not zero newly provisioned blocks (faster first writes; old data may show).
        #[arg(long)]
        no_zero: bool,
        /// Queue writes for up to 60 s when the pool is full instead of failing them at once.
        #[arg(long)]
        queue_if_no_space: bool,
        /// Allow sparse files larger than the host filesystem's free space (writes past it fail
        /// and the kernel fails the pool).
        #[arg(long, env = "RCX_DM_OVERCOMMIT", value_parser = clap::builder::FalseyValueParser::new())]
        overcommit: bool,
        #[command(flatten)]
        auto: AutoextendArgs,
    },
    /// Attach loops, load the pool and re-activate its volumes (e.g. after a reboot).
    Activate,
    /// Take down the pool's volumes, the pool and its loops; nothing is lost.
    Deactivate,
    /// Grow data and/or metadata, online: volumes stay active, mounted and writable. Sparse
    /// files grow and their loops learn the new size; with block devices, grow the device first
    /// (lvextend, a bigger disk), then run this with no size to use all of it. A pool that ran
    /// out of space returns to read-write. Shrinking is not possible (the kernel cannot).
    Extend {
        /// New data size, or +SIZE to add (a whole number of pool blocks).
        #[arg(long, value_parser = change_arg)]
        data_size: Option<SizeChange>,
        /// New metadata size, or +SIZE to add (a multiple of 4K, at most the kernel's ~16G).
        #[arg(long, value_parser = change_arg)]
        meta_size: Option<SizeChange>,
        /// Allow sparse files larger than the host filesystem's free space.
        #[arg(long, env = "RCX_DM_OVERCOMMIT", value_parser = clap::builder::FalseyValueParser::new())]
        overcommit: bool,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Change the pool's auto-extend and discard settings (applied at once to a live pool).
    Set {
        #[command(flatten)]
        auto: AutoextendArgs,
        /// Discard a volume's blocks when it is deleted, giving the space back to the host.
        #[arg(long, value_parser = on_off)]
        discard_on_delete: Option<bool>,
    },
    /// Watch the pool in the foreground and extend it by its auto-extend settings before it
    /// fills, woken by the kernel's device-mapper events (`rcx-dm serve` runs the same monitor).
    Monitor {
        /// Longest time between two looks at the pool without an event (metadata use and the
        /// host's free space raise none of their own), e.g. 10s, 500ms.
        #[arg(long, default_value = "10s", value_parser = duration_arg)]
        interval: std::time::Duration,
    },
    /// Check the metadata of a deactivated pool with thin_check.
    Check(JsonFlag),
    /// Repair the metadata of a deactivated pool with thin_repair; the old metadata is kept.
    Repair(JsonFlag),
    /// Transaction id, space used and free, mode, health, auto-extend settings.
    Status(JsonFlag),
    /// Pools under --root.
    List(JsonFlag),
    /// Remove the pool and its backing files.
    Destroy {
        /// Deactivate active volumes instead of refusing.
        #[arg(long)]
        force: bool,
    },
}

// LVM's auto-extend knobs (thin_pool_autoextend_threshold / _percent) plus a ceiling. A plain
// comment: with `defer`, clap would take a doc comment of a flattened struct for the about text.
#[derive(Args)]
pub(crate) struct AutoextendArgs {
    /// Extend data or metadata when its use reaches PCT percent (50-100; 100 or "off" turns
    /// auto-extend off). Default 80.
    #[arg(long, value_name = "PCT", value_parser = threshold_arg)]
    autoextend_threshold: Option<u8>,
    /// Grow by this much each time: a percentage of the current size or a size. Default 20%.
    #[arg(long, value_name = "PCT|SIZE", value_parser = step_arg)]
    autoextend_step: Option<Step>,
    /// Never grow data past SIZE ("none": only the host's free space or the device limits it).
    #[arg(long, value_name = "SIZE|none", value_parser = max_arg)]
    autoextend_max: Option<MaxArg>,
    /// Space auto-extend always leaves free on the host filesystem under sparse files. Default 1G.
    #[arg(long, value_name = "SIZE", value_parser = reserve_arg)]
    host_reserve: Option<u64>,
}

#[derive(Clone, Copy)]
pub(crate) struct MaxArg(Option<u64>);

impl AutoextendArgs {
    fn any(&self) -> bool {
        self.autoextend_threshold.is_some() || self.autoextend_step.is_some() || self.autoextend_max.is_some() || self.host_reserve.is_some()
    }

    fn apply(&self, mut a: Autoextend) -> Autoextend {
        if let Some(t) = self.autoextend_threshold {
            a.threshold_percent = t;
        }
        if let Some(s) = self.autoextend_step {
            a.step = s;
        }
        if let Some(MaxArg(m)) = self.autoextend_max {
            a.max_data_bytes = m;
        }
        if let Some(r) = self.host_reserve {
            a.host_reserve_bytes = r;
        }
        a
    }
}

fn change_arg(s: &str) -> std::result::Result<SizeChange, String> {
    s.parse().map_err(|e: rcx_dm::Error| e.to_string())
}

fn threshold_arg(s: &str) -> std::result::Result<u8, String> {
    parse_threshold(s).map_err(|e| e.to_string())
}

fn step_arg(s: &str) -> std::result::Result<Step, String> {
    s.parse().map_err(|e: rcx_dm::Error| e.to_string())
}

fn max_arg(s: &str) -> std::result::Result<MaxArg, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(MaxArg(None));
    }
    parse_size(s).map(|b| MaxArg(Some(b))).map_err(|e| e.to_string())
}

fn reserve_arg(s: &str) -> std::result::Result<u64, String> {
    parse_bytes(s, "host reserve", "1G, 512M").map_err(|e| e.to_string())
}

fn on_off(s: &str) -> std::result::Result<bool, String> {
    match s {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("'{s}'; use on or off")),
    }
}

fn duration_arg(s: &str) -> std::result::Result<std::time::Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000)
    } else {
        (t, 1000)
    };
    match num.trim().parse::<u64>() {
        Ok(n) if n > 0 => n.checked_mul(scale).map(std::time::Duration::from_millis).ok_or_else(|| format!("'{s}' is too long")),
        _ => Err(format!("'{s}'; use e.g. 10s, 500ms, 1m")),
    }
}

pub(crate) fn run(root: &Path, name: &str, cmd: PoolCmd) -> Result<()> {
    match cmd {
        PoolCmd::Create { data_size, meta_size, block_size, low_water, data_dev, meta_dev, no_zero, queue_if_no_space, overcommit, auto } => {
            let meta_size = match meta_size.as_str() {
                "auto" => None,
                s => Some(parse_size(s).context("--meta-size")?),
            };
            let opts = PoolOptions {
                data_size,
                meta_size,
                block_size,
                low_water_blocks: low_water,
                data_dev,
                meta_dev,
                zero_new_blocks: !no_zero,
                error_if_no_space: !queue_if_no_space,
                autoextend: auto.apply(Autoextend::default()),
                overcommit,
            };
            let p = Pool::create(root, name, &opts)?;
            let c = p.config();
            println!(
                "created pool '{name}': data {} ({}), metadata {} ({}), block {}",
                format_size(c.data_bytes),
                c.data.path().display(),
                format_size(c.meta_bytes),
                c.meta.path().display(),
                format_size(c.block_bytes)
            );
            println!("{}", rcx_dm::dm::node::mapper_path(&p.pool_dm_name()).display());
            Ok(())
        }
        PoolCmd::Activate => {
            let a = Pool::open(root, name)?.activate()?;
            println!("pool '{name}' active, {} volume(s) activated", a.volumes);
            if a.classic_origins > 0 {
                println!("{} classic origin(s) activated", a.classic_origins);
            }
            // Volumes that failed are reported after everything else is up (exit non-zero).
            a.incomplete.map_or(Ok(()), |e| Err(e.into()))
        }
        PoolCmd::Deactivate => {
            Ok(Pool::open(root, name)?.deactivate()?)
        }
        PoolCmd::Extend { data_size, meta_size, overcommit, out } => {
            let p = Pool::open(root, name)?;
            let r = p.extend(&ExtendRequest { data: data_size, meta: meta_size, overcommit })?;
            if out.json {
                return print_json(&r);
            }
            let line = |what: &str, old: u64, new: u64| {
                if old == new {
                    println!("{what}: {} (unchanged)", format_size(old));
                } else {
                    println!("{what}: {} -> {}", format_size(old), format_size(new));
                }
            };
            line("data", r.old_data_bytes, r.new_data_bytes);
            line("metadata", r.old_meta_bytes, r.new_meta_bytes);
            Ok(())
        }
        PoolCmd::Set { auto, discard_on_delete } => {
            if !auto.any() && discard_on_delete.is_none() {
                bail!("nothing to set; give --autoextend-threshold, --autoextend-step, --autoextend-max, --host-reserve or --discard-on-delete");
            }
            let p = Pool::open(root, name)?;
            let a = auto.apply(p.config().autoextend);
            let c = p.set(Some(&a), discard_on_delete)?;
            print_autoextend(&c.autoextend);
            println!("discard on delete: {}", if c.discard_on_delete { "on" } else { "off" });
            Ok(())
        }
        PoolCmd::Monitor { interval } => {
            let p = Pool::open(root, name)?;
            let stop = MonitorStop::new();
            rcx_dm::pool::monitor::stop_on_signals(&stop)?;
            p.monitor(&MonitorOptions { interval }, &stop)?;
            Ok(())
        }
        PoolCmd::Check(o) => {
            let r = Pool::open(root, name)?.check()?;
            if o.json {
                print_json(&r)?;
            } else if r.clean && !r.needs_check {
                println!("pool '{name}': metadata is clean");
            } else {
                print!("{}", r.output);
            }
            if !r.clean {
                bail!("pool '{name}' has damaged metadata; repair it with `rcx-dm pool repair`");
            }
            if r.needs_check {
                bail!(
                    "pool '{name}': thin_check finds no damage, but the kernel flagged the metadata needs_check (a metadata \
                     operation failed while it was live) and will not activate it read-write; `rcx-dm pool repair` rewrites it and clears the flag"
                );
            }
            Ok(())
        }
        PoolCmd::Repair(o) => {
            let r = Pool::open(root, name)?.repair()?;
            if o.json {
                return print_json(&r);
            }
            let ids: Vec<String> = r.devices.iter().map(u32::to_string).collect();
            println!("pool '{name}': metadata repaired and checked clean: thin devices [{}]", ids.join(", "));
            println!("the damaged copy is kept at {}", r.backup.display());
            println!("activate it with `rcx-dm pool activate`");
            Ok(())
        }
        PoolCmd::Status(o) => status(root, name, o),
        PoolCmd::List(o) => {
            let pools = Pool::list(root)?;
            if o.json {
                return print_json(&pools);
            }
            for p in pools {
                println!("{p}");
            }
            Ok(())
        }
        PoolCmd::Destroy { force } => {
            Ok(Pool::open(root, name)?.destroy(force)?)
        }
    }
}

fn status(root: &Path, name: &str, o: JsonFlag) -> Result<()> {
    let s = Pool::open(root, name)?.status()?;
    if o.json {
        return print_json(&s);
    }
    println!("pool:        {}", s.name);
    println!("active:      {}", s.active);
    println!("volumes:     {}", s.volumes);
    println!("block size:  {}", format_size(s.block_bytes));
    if let (Some(free), Some(used)) = (s.host_free_bytes, s.host_allocated_bytes) {
        let full = s.data_bytes + s.meta_bytes;
        let short = if full.saturating_sub(used) > free { " (overcommitted: the files cannot reach full size)" } else { "" };
        println!("host:        {} free; the sparse files use {} of their {}{short}", format_size(free), format_size(used), format_size(full));
    }
    if let Some(w) = &s.kernel_failed {
        println!("mode:        FAILED (the kernel reports '{w}'): fix the device, then `rcx-dm pool deactivate`, `pool check`, `pool repair`");
    }
    if let Some(k) = &s.kernel {
        let pct = |u: u64, t: u64| if t == 0 { 0.0 } else { 100.0 * u as f64 / t as f64 };
        println!("transaction: {}", k.transaction_id);
        println!("mode:        {}", k.mode);
        println!(
            "data:        {}/{} blocks ({:.1}%) of {}",
            k.data_used_blocks,
            k.data_total_blocks,
            pct(k.data_used_blocks, k.data_total_blocks),
            format_size(s.data_bytes)
        );
        println!(
            "metadata:    {}/{} blocks ({:.1}%) of {}",
            k.meta_used_blocks,
            k.meta_total_blocks,
            pct(k.meta_used_blocks, k.meta_total_blocks),
            format_size(s.meta_bytes)
        );
        println!("needs_check: {}", k.needs_check);
    } else {
        println!("data:        {}", format_size(s.data_bytes));
        println!("metadata:    {}", format_size(s.meta_bytes));
    }
    print_autoextend(&s.autoextend);
    println!("discard on delete: {}", if s.discard_on_delete { "on" } else { "off" });
    Ok(())
}

fn print_autoextend(a: &Autoextend) {
    if !a.enabled() {
        println!("autoextend:  off");
        return;
    }
    println!(
        "autoextend:  at {}% used, by {}, data up to {}, host reserve {}",
        a.threshold_percent,
        a.step,
        a.max_data_bytes.map_or("no limit".into(), format_size),
        format_size(a.host_reserve_bytes)
    );
}
