//! `rcx-dm ps`, `stop`, `kill`, `logs`, `exec`, `wait` and `rm`: detached containers
//! (`run -d`), over `rcx_dm::runner`'s detached-container API.

use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use rcx_dm::pool::Pool;
use rcx_dm::runner::{self, ContainerState, ExecSpec};

use super::{print_json, JsonFlag};

#[derive(Subcommand)]
pub enum ContainerCmd {
    /// List detached containers (`run -d`): running, starting, and exited ones until `rm`.
    Ps(JsonFlag),
    /// Stop a detached container: SIGTERM to its PID 1, SIGKILL after --time; returns once it
    /// is torn down (prints its name). A container that exited already is left as it is.
    Stop {
        name: String,
        /// Seconds between SIGTERM and SIGKILL.
        #[arg(long, short = 't', default_value_t = 10.0, value_parser = seconds_arg)]
        time: f64,
    },
    /// Send a signal to a detached container's PID 1 (which gets only the signals it handles,
    /// and SIGKILL).
    Kill {
        name: String,
        /// A signal name (KILL, SIGTERM, hup, ...) or number.
        #[arg(long, short = 's', default_value = "KILL", value_parser = signal_arg)]
        signal: i32,
    },
    /// Print a detached container's stdout and stderr (kept in its record until `rm`).
    Logs {
        name: String,
        /// Keep printing as it writes, until it exits.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Run a command in a running detached container: its namespaces, its cgroup, its
    /// capabilities, seccomp filter and no_new_privs. Exits with the command's status.
    Exec(ExecArgs),
    /// Wait until a detached container has exited and print its exit status (128+n if signal
    /// n killed it; 137 if its supervisor died). Exits 0, as `docker wait`.
    Wait { name: String },
    /// Remove an exited detached container's record (log, exit status) and the snapshot its
    /// run made (unless --keep-volume). A volume it ran in place is never deleted.
    Rm {
        name: String,
        /// Keep the container's snapshot volume (e.g. to `rcx-dm commit` it later).
        #[arg(long)]
        keep_volume: bool,
    },
}

#[derive(Args)]
pub struct ExecArgs {
    /// The container's name.
    pub name: String,
    /// Set an environment variable over the container's (NAME=VALUE).
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE", value_parser = env_arg)]
    pub env: Vec<(String, String)>,
    /// Working directory inside the container (default: the container's).
    #[arg(long, short = 'w')]
    pub workdir: Option<String>,
    /// Keep stdin attached (otherwise /dev/null).
    #[arg(long, short = 'i')]
    pub interactive: bool,
    /// The command and its arguments, after --.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

fn seconds_arg(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && (0.0..=86400.0).contains(&f) => Ok(f),
        _ => Err(format!("'{s}'; give seconds from 0 to 86400, e.g. 10 or 0.5")),
    }
}

/// `KILL`, `SIGKILL`, `kill` or `9`.
pub(crate) fn signal_arg(s: &str) -> std::result::Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=64).contains(&n) { Ok(n) } else { Err(format!("'{s}'; signal numbers are 1 to 64")) };
    }
    let up = s.to_ascii_uppercase();
    let full = if up.starts_with("SIG") { up } else { format!("SIG{up}") };
    full.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| format!("unknown signal '{s}'; use a name such as TERM, KILL, HUP, USR1, or a number"))
}

fn env_arg(s: &str) -> std::result::Result<(String, String), String> {
    match runner::parse_env(s) {
        Ok(Some(kv)) => Ok(kv),
        Ok(None) => Err(format!("'{s}' is not set in rcx-dm's environment; use NAME=VALUE")),
        Err(e) => Err(e.to_string()),
    }
}

pub fn run(pool: &Pool, cmd: ContainerCmd) -> Result<()> {
    match cmd {
        ContainerCmd::Ps(o) => {
            let all = runner::list_containers(pool)?;
            if o.json {
                return print_json(&all);
            }
            println!("{:<20} {:<18} {:>8} {:>8}  {:<12} COMMAND", "NAME", "STATUS", "PID", "SUPERV", "VOLUME");
            for c in all {
                let (pid, sup) = match (&c.state, &c.started) {
                    (ContainerState::Running, Some(s)) => (s.pid.to_string(), s.supervisor_pid.to_string()),
                    _ => ("-".into(), "-".into()),
                };
                println!(
                    "{:<20} {:<18} {:>8} {:>8}  {:<12} {}",
                    c.record.name,
                    c.describe(),
                    pid,
                    sup,
                    c.record.volume,
                    c.record.command.join(" ")
                );
            }
            Ok(())
        }
        ContainerCmd::Stop { name, time } => {
            let x = runner::stop(pool, &name, Duration::from_secs_f64(time))?;
            println!("{name}");
            if let Some(e) = x.error {
                eprintln!("rcx-dm: warning: {e}");
            }
            Ok(())
        }
        ContainerCmd::Kill { name, signal } => Ok(runner::kill(pool, &name, signal)?),
        ContainerCmd::Logs { name, follow } => Ok(runner::logs(pool, &name, follow, &mut std::io::stdout().lock())?),
        ContainerCmd::Exec(a) => {
            let spec =
                ExecSpec { argv: a.command, env: a.env, workdir: a.workdir, interactive: a.interactive };
            match runner::exec(pool, &a.name, &spec) {
                Ok(0) => Ok(()),
                Ok(code) => std::process::exit(code),
                Err(e) => {
                    eprintln!("rcx-dm: error: {e}");
                    std::process::exit(runner::start_status(&e));
                }
            }
        }
        ContainerCmd::Wait { name } => {
            let x = runner::wait(pool, &name)?;
            println!("{}", x.code);
            if let Some(e) = x.error {
                eprintln!("rcx-dm: {name}: {e}");
            }
            Ok(())
        }
        ContainerCmd::Rm { name, keep_volume } => {
            let mut deleted = None;
            runner::remove_container(pool, &name, |snap| {
                if !keep_volume {
                    rcx_dm::refs::delete_volume(pool, &rcx_dm::pool::VolRef::Name(snap.to_string()), true)?;
                    deleted = Some(snap.to_string());
                }
                Ok(())
            })?;
            match deleted {
                Some(v) => println!("{name} (and its volume {v})"),
                None => println!("{name}"),
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::signal_arg;

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(signal_arg("KILL"), Ok(9));
        assert_eq!(signal_arg("sigterm"), Ok(15));
        assert_eq!(signal_arg("hup"), Ok(1));
        assert_eq!(signal_arg("10"), Ok(10));
        for bad in ["0", "65", "NOPE", "", "-9"] {
            assert!(signal_arg(bad).is_err(), "{bad:?} accepted");
        }
    }
}
