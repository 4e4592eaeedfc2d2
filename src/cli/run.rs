//! `rcx-dm run` and `rcx-dm set-readonly`: argument parsing and reporting for the runner
//! (`rcx_dm::runner`). Also the crash cleanup every command does first (`reap`).


use anyhow::Result;
use clap::{Args, ValueEnum};

use rcx_dm::pool::{self, Pool, VolRef};
use rcx_dm::runner::{self, Capability, Limits, Net, RunSpec, Security, SecurityOpt, Userns};
use rcx_dm::units::format_size;

#[derive(Args, Debug)]
#[command(after_help = "\
A read-only volume (an image, or a base marked with `rcx-dm set-readonly`) runs in a fresh \
writable thin snapshot, kept afterwards as a container volume (named by --name, else run-<id>) \
or deleted with --rm. A writable volume runs in place. The command is PID 1 of the container; \
its exit status is rcx-dm's (128+n if signal n killed it; 125 if rcx-dm could not start it, \
126 if it cannot be executed, 127 if it is not in the volume).

Examples:
  rcx-dm set-readonly base
  rcx-dm run --rm base -- /bin/sh
  rcx-dm run --name web --memory 256M --pids 64 --cpus 0.5 base -- /bin/httpd -f")]
pub struct RunArgs {
    /// The volume to run in, by id or name.
    pub volume: VolRef,
    /// Delete the container snapshot when the command exits.
    #[arg(long)]
    pub rm: bool,
    /// Name for the container snapshot (default run-<id>); also the default hostname.
    #[arg(long, value_parser = name_arg)]
    pub name: Option<String>,
    /// Hostname inside the container (default: --name, else the run id).
    #[arg(long, value_parser = hostname_arg)]
    pub hostname: Option<String>,
    /// Memory limit (cgroup memory.max, no swap), e.g. 32M or 1G.
    #[arg(long, value_parser = memory_arg)]
    pub memory: Option<u64>,
    /// Most processes/threads at once (cgroup pids.max).
    #[arg(long, value_parser = pids_arg)]
    pub pids: Option<u64>,
    /// CPU time limit in CPUs, e.g. 0.5 (cgroup cpu.max).
    #[arg(long, value_parser = cpus_arg)]
    pub cpus: Option<f64>,
    /// Network: none (own namespace, lo only), host, or bridge (eth0 on the host bridge rcx0,
    /// an address in 10.77.0.0/16, default route via 10.77.0.1; containers reach each other).
    #[arg(long, value_enum, default_value_t = NetArg::None)]
    pub net: NetArg,
    /// Set an environment variable (NAME=VALUE; NAME alone passes rcx-dm's own value).
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE", value_parser = env_arg)]
    pub env: Vec<EnvArg>,
    /// Working directory inside the container (created if missing; default /).
    #[arg(long, short = 'w')]
    pub workdir: Option<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Run a tiny init as PID 1 that forwards signals and reaps zombies (the command is PID 2).
    #[arg(long)]
    pub init: bool,
    /// Keep stdin attached (otherwise the container's stdin is /dev/null, or with -t its
    /// terminal with nothing typed into it).
    #[arg(long, short = 'i')]
    pub interactive: bool,
    /// A fresh pseudo-terminal for the container (its controlling terminal, stdin, stdout,
    /// stderr and /dev/console), copied to rcx-dm's stdout; with -i rcx-dm's stdin is copied in
    /// too (raw mode if it is a terminal). The caller's terminal never reaches the container.
    #[arg(long, short = 't')]
    pub tty: bool,
    /// Add a capability to the default set (Docker's names, with or without CAP_, any case;
    /// ALL for every one). Repeatable.
    #[arg(long = "cap-add", value_name = "CAP", value_parser = cap_arg)]
    pub cap_add: Vec<Capability>,
    /// Drop a capability from the default set (ALL for every one). Repeatable.
    #[arg(long = "cap-drop", value_name = "CAP", value_parser = cap_arg)]
    pub cap_drop: Vec<Capability>,
    /// Every capability, no seccomp filter, no masked paths, /proc/sys and /sys writable: the
    /// container can do what root on the host can.
    #[arg(long)]
    pub privileged: bool,
    /// no-new-privileges[=true|false], seccomp=unconfined or seccomp=PROFILE.json (Docker's
    /// profile format). Repeatable.
    #[arg(long = "security-opt", value_name = "OPT", value_parser = security_opt_arg)]
    pub security_opt: Vec<SecurityOpt>,
    /// Map the container's ids to an unprivileged range of host ids: `auto` (a free range of
    /// 65536 from 1879048192 = 0x70000000 on, recorded in the pool) or HOSTID:COUNT (container
    /// ids 0..COUNT are host ids HOSTID..HOSTID+COUNT). Root inside is not root on the host; the
    /// volume is mounted idmapped, so the image needs no chown. Not with --privileged or --net host.
    #[arg(long, value_name = "auto|HOSTID:COUNT", value_parser = userns_arg)]
    pub userns: Option<Userns>,
    /// Print where the time went (snapshot, activate, mount, namespaces, exec, teardown) to stderr.
    #[arg(long)]
    pub timings: bool,
    /// Detached: print the container's name once its command runs and return; the container
    /// goes on under a supervisor process, its output in `rcx-dm logs NAME` (see `rcx-dm ps`,
    /// `stop`, `kill`, `exec`, `wait`, `rm`).
    #[arg(long, short = 'd', conflicts_with_all = ["tty", "interactive", "timings"])]
    pub detach: bool,
    /// The command and its arguments, after --.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetArg {
    None,
    Host,
    Bridge,
}

/// A parsed --env (None: NAME alone, unset in rcx-dm's environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvArg(Option<(String, String)>);

#[derive(Args, Debug)]
pub struct SetReadonlyArgs {
    /// The volume, by id or name.
    pub volume: VolRef,
    /// Clear the mark: the volume is writable again and `run` uses it in place.
    #[arg(long)]
    pub off: bool,
}

fn name_arg(s: &str) -> std::result::Result<String, String> {
    pool::validate_user_volume_name(s).map(|_| s.to_string()).map_err(|e| e.to_string())
}
fn hostname_arg(s: &str) -> std::result::Result<String, String> {
    runner::validate_hostname(s).map(|_| s.to_string()).map_err(|e| e.to_string())
}
fn memory_arg(s: &str) -> std::result::Result<u64, String> {
    runner::parse_memory(s).map_err(|e| e.to_string())
}
fn pids_arg(s: &str) -> std::result::Result<u64, String> {
    runner::parse_pids(s).map_err(|e| e.to_string())
}
fn cpus_arg(s: &str) -> std::result::Result<f64, String> {
    runner::parse_cpus(s).map_err(|e| e.to_string())
}
fn cap_arg(s: &str) -> std::result::Result<Capability, String> {
    runner::parse_capability(s).map_err(|e| e.to_string())
}
fn security_opt_arg(s: &str) -> std::result::Result<SecurityOpt, String> {
    let opt = runner::parse_security_opt(s).map_err(|e| e.to_string())?;
    // A profile that is not there is refused with the other argument errors (as Docker's
    // client, which reads it at once); the library checks it again before a run.
    if let SecurityOpt::Seccomp(p) = &opt {
        Security { seccomp: p.clone(), ..Default::default() }.validate().map_err(|e| e.to_string())?;
    }
    Ok(opt)
}
fn userns_arg(s: &str) -> std::result::Result<Userns, String> {
    runner::parse_userns(s).map_err(|e| e.to_string())
}
fn env_arg(s: &str) -> std::result::Result<EnvArg, String> {
    runner::parse_env(s).map(EnvArg).map_err(|e| e.to_string())
}

impl RunArgs {
    pub fn spec(&self) -> RunSpec {
        RunSpec {
            volume: Some(self.volume.clone()),
            rm: self.rm,
            name: self.name.clone(),
            hostname: self.hostname.clone(),
            limits: Limits { memory_bytes: self.memory, pids: self.pids, cpus: self.cpus },
            net: match self.net {
                NetArg::None => Net::None,
                NetArg::Host => Net::Host,
                NetArg::Bridge => Net::Bridge,
            },
            env: self.env.iter().filter_map(|e| e.0.clone()).collect(),
            workdir: self.workdir.clone(),
            read_only: self.read_only,
            init: self.init,
            interactive: self.interactive,
            tty: self.tty,
            security: self.security(),
            userns: self.userns,
            argv: self.command.clone(),
        }
    }

    fn security(&self) -> Security {
        let mut s = Security {
            privileged: self.privileged,
            cap_add: self.cap_add.clone(),
            cap_drop: self.cap_drop.clone(),
            ..Default::default()
        };
        s.apply_opts(&self.security_opt);
        s
    }
}

/// Options that cannot be combined (`--userns` with `--privileged` or `--net host`): refused as
/// an argument error (status 2) before the pool is opened.
pub fn refuse_conflicts(args: &RunArgs) {
    if let Err(e) = args.spec().check_userns() {
        eprintln!("rcx-dm: error: {e}");
        std::process::exit(2);
    }
}

/// `rcx-dm run`: exits the process with the container's status (or 125/126/127).
pub fn run(pool: rcx_dm::Result<Pool>, args: RunArgs) -> Result<()> {
    if args.detach {
        return match pool.and_then(|p| runner::start_detached(&p, &args.spec())) {
            Ok(name) => {
                println!("{name}");
                Ok(())
            }
            Err(e) => {
                eprintln!("rcx-dm: error: {e}");
                std::process::exit(runner::start_status(&e));
            }
        };
    }
    let out = match pool.and_then(|p| runner::run(&p, &args.spec())) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("rcx-dm: error: {e}");
            std::process::exit(runner::start_status(&e));
        }
    };
    if out.events.oom_kills > 0 {
        let limit = out.limits.memory_bytes.map_or("its memory limit".to_string(), |m| format!("--memory {}", format_size(m)));
        eprintln!(
            "rcx-dm: the container ran out of memory ({limit}): the kernel's OOM killer killed {} process(es)",
            out.events.oom_kills
        );
    }
    if out.events.pids_refused > 0 {
        eprintln!(
            "rcx-dm: the process limit (--pids {}) refused {} fork(s)",
            out.limits.pids.unwrap_or(0),
            out.events.pids_refused
        );
    }
    if let Some(sig) = out.signal {
        let name = nix::sys::signal::Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("?");
        eprintln!("rcx-dm: the command was killed by signal {sig} ({name}); exit status {}", out.code);
    }
    if let Some((id, name)) = &out.kept {
        eprintln!("rcx-dm: container volume {id} ({name}) kept; `rcx-dm delete {name}` removes it");
    }
    if let Some(e) = &out.cleanup_error {
        eprintln!("rcx-dm: warning: teardown incomplete ({e}); the next rcx-dm command finishes it");
    }
    if args.timings {
        let parts: Vec<String> =
            out.timings.iter().map(|(k, d)| format!("{k}={:.3}ms", d.as_secs_f64() * 1e3)).collect();
        eprintln!("rcx-dm: timings: {}", parts.join(" "));
    }
    if out.code != 0 {
        std::process::exit(out.code);
    }
    Ok(())
}

/// `rcx-dm set-readonly`.
pub fn set_readonly(pool: &Pool, args: SetReadonlyArgs) -> Result<()> {
    let v = pool.set_read_only(&args.volume, !args.off)?;
    let what = if v.read_only { "read-only: runs use snapshots of it" } else { "writable: runs use it in place" };
    println!("volume {} is {what}", v.id);
    Ok(())
}

/// Before any command: finish the teardown of runs whose rcx-dm died. Never fails the command.
#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> std::result::Result<RunArgs, String> {
        T::try_parse_from(std::iter::once("run").chain(args.iter().copied())).map(|t| t.run).map_err(|e| e.to_string())
    }

    #[test]
    fn full_command_line() {
        let a = parse(&[
            "--rm", "--name", "c1", "--hostname", "box", "--memory", "32M", "--pids", "16", "--cpus", "0.5",
            "--net", "host", "--env", "A=1", "-e", "B=x=y", "--workdir", "/tmp", "--read-only", "base", "--", "sh",
            "-c", "echo hi",
        ])
        .unwrap();
        assert_eq!(a.volume, VolRef::Name("base".into()));
        assert_eq!(a.command, vec!["sh", "-c", "echo hi"]);
        let s = a.spec();
        assert!(s.rm && s.read_only);
        assert_eq!(s.limits, Limits { memory_bytes: Some(32 << 20), pids: Some(16), cpus: Some(0.5) });
        assert_eq!(s.net, Net::Host);
        assert_eq!(s.env, vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]);
        assert_eq!(s.hostname.as_deref(), Some("box"));
        assert_eq!(s.workdir.as_deref(), Some("/tmp"));
    }

    #[test]
    fn defaults() {
        let s = parse(&["7", "--", "true"]).unwrap().spec();
        assert_eq!(s.volume, Some(VolRef::Id(7)));
        assert_eq!(s.net, Net::None);
        assert_eq!(s.limits, Limits::default());
        assert!(!s.rm && !s.read_only && !s.init);
    }

    #[test]
    fn security_flags() {
        use rcx_dm::runner::SeccompProfile;
        let s = parse(&["-it", "--cap-add", "sys_admin", "--cap-add", "CAP_NET_ADMIN", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--security-opt", "seccomp=unconfined", "1", "--", "true"])
        .unwrap()
        .spec();
        assert!(s.interactive && s.tty);
        assert_eq!(s.security.cap_add, vec![Capability::Cap(21), Capability::Cap(12)]);
        assert_eq!(s.security.cap_drop, vec![Capability::All]);
        assert!(s.security.no_new_privileges && !s.security.privileged);
        assert_eq!(s.security.seccomp, SeccompProfile::Unconfined);
        let d = parse(&["1", "--", "true"]).unwrap().spec();
        assert_eq!(d.security, Security::default());
        assert!(!d.interactive && !d.tty);
        assert!(parse(&["--privileged", "1", "--", "true"]).unwrap().spec().security.privileged);
        assert_eq!(d.userns, None);
        assert_eq!(parse(&["--userns", "auto", "1", "--", "true"]).unwrap().spec().userns, Some(Userns::Auto));
        assert_eq!(
            parse(&["--userns", "200000:65536", "1", "--", "true"]).unwrap().spec().userns,
            Some(Userns::Range(runner::IdRange { host: 200000, count: 65536 }))
        );
        assert!(parse(&["--userns", "auto", "--privileged", "1", "--", "true"]).unwrap().spec().check_userns().is_err());
    }

    #[test]
    fn options_after_the_command_belong_to_it() {
        let a = parse(&["1", "--", "ls", "--rm", "-e", "x"]).unwrap();
        assert_eq!(a.command, vec!["ls", "--rm", "-e", "x"]);
        assert!(!a.rm);
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        for (args, needle) in [
            (vec!["--memory", "lots", "1", "--", "true"], "invalid memory limit"),
            (vec!["--memory", "1M", "1", "--", "true"], "below 4M"),
            (vec!["--memory", "32Q", "1", "--", "true"], "unknown suffix"),
            (vec!["--pids", "0", "1", "--", "true"], "invalid pids limit"),
            (vec!["--pids", "ten", "1", "--", "true"], "invalid pids limit"),
            (vec!["--cpus", "0", "1", "--", "true"], "invalid cpus"),
            (vec!["--cpus", "x", "1", "--", "true"], "invalid cpus"),
            (vec!["--env", "=v", "1", "--", "true"], "invalid environment variable"),
            (vec!["--net", "bridge0", "1", "--", "true"], "invalid value"),
            (vec!["--net", "nat", "1", "--", "true"], "possible values: none, host, bridge"),
            (vec!["--hostname", "a b", "1", "--", "true"], "invalid hostname"),
            (vec!["--name", "123", "1", "--", "true"], "invalid volume name"),
            (vec!["1"], "required"),
            (vec!["16777216", "--", "true"], "ids are 0 to 16777215"),
            (vec!["--cap-add", "SYS_ADMINS", "1", "--", "true"], "unknown capability 'SYS_ADMINS'"),
            (vec!["--cap-drop", "", "1", "--", "true"], "unknown capability"),
            (vec!["--security-opt", "seccomp", "1", "--", "true"], "invalid --security-opt 'seccomp'"),
            (vec!["--security-opt", "apparmor=x", "1", "--", "true"], "does not support"),
            (vec!["--security-opt", "no-new-privileges=maybe", "1", "--", "true"], "true or false"),
            (vec!["--userns", "yes", "1", "--", "true"], "use auto or HOSTID:COUNT"),
            (vec!["--userns", "0:65536", "1", "--", "true"], "uid 0"),
            (vec!["--userns", "100:0", "1", "--", "true"], "at least 1"),
            (vec!["--userns", "4294967200:1000", "1", "--", "true"], "past the highest id"),
        ] {
            let e = parse(&args).expect_err(&format!("{args:?} accepted"));
            assert!(e.contains(needle), "{args:?}: expected {needle:?} in {e}");
        }
    }
}
