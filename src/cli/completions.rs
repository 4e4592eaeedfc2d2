//! `rcx-dm completions SHELL` and `rcx-dm man [--dir DIR]`: shell completion scripts and man
//! pages generated from the clap definitions, so they never drift from `--help`. Neither needs
//! root or a pool: `run` answers them before its root check.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Command, CommandFactory};
use clap_complete::Shell;

use super::Cli;

/// The name completions and man pages are written for: the installed binary's.
const BIN: &str = "rcx-dm";

#[derive(Args)]
#[command(after_long_help = "Install (as root; each shell loads the file on its next start):\n  \
rcx-dm completions bash > /etc/bash_completion.d/rcx-dm\n  \
rcx-dm completions zsh  > /usr/local/share/zsh/site-functions/_rcx-dm\n  \
rcx-dm completions fish > /etc/fish/completions/rcx-dm.fish\n\n\
Or for the current bash session only:\n  source <(rcx-dm completions bash)")]
pub(crate) struct CompletionsArgs {
    /// The shell to write the script for.
    #[arg(value_enum)]
    shell: Shell,
}

#[derive(Args)]
#[command(after_long_help = "Install (as root):\n  \
rcx-dm man --dir /usr/local/share/man/man1 && mandb\n\nRead one page without installing:\n  \
rcx-dm man | man -l -")]
pub(crate) struct ManArgs {
    /// Write rcx-dm.1 and one page per subcommand (rcx-dm-pool.1, rcx-dm-pool-create.1, ...)
    /// into DIR, creating it if needed. Without it, rcx-dm.1 is printed to stdout.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Prints the completion script for `a.shell` to stdout.
pub(crate) fn completions(a: &CompletionsArgs) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut Cli::command(), BIN, &mut script);
    if a.shell == Shell::Bash {
        script = bash_hyphen_fix(&script);
    }
    to_stdout(&script, "the completion script")
}

/// clap_complete (up to 4.6.12 at least, clap-rs/clap#6421) spells the state of a subcommand of a
/// hyphenated binary `rcx__subcmd__dm__subcmd__pool` in its case arms but `rcx__dm__subcmd__pool`
/// where it computes it, so nothing after the first word ever completed. One spelling for both;
/// a no-op once the generator agrees with itself.
fn bash_hyphen_fix(script: &[u8]) -> Vec<u8> {
    let (arm, state) = (BIN.replace('-', "__subcmd__"), BIN.replace('-', "__"));
    String::from_utf8_lossy(script).replace(&arm, &state).into_bytes()
}

/// Writes the man pages into `a.dir`, or prints rcx-dm.1 to stdout without it.
pub(crate) fn man(a: &ManArgs) -> Result<()> {
    // Built once, so every subcommand knows its full name (rcx-dm-pool-create) and usage line.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let Some(dir) = &a.dir else {
        let mut page = Vec::new();
        page_of(&cmd).render(&mut page).context("cannot render the man page")?;
        return to_stdout(&page, "the man page");
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create man page directory {}", dir.display()))?;
    let n = write_pages(&cmd, dir)?;
    println!("wrote {n} man pages to {}", dir.display());
    Ok(())
}

/// The page of one (built) command, with the package's name and version as its source.
fn page_of(cmd: &Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd.clone()).source(format!("{BIN} {}", env!("CARGO_PKG_VERSION")))
}

/// Writes `cmd`'s page and those of all its visible subcommands into `dir`; returns how many.
fn write_pages(cmd: &Command, dir: &Path) -> Result<usize> {
    let page = page_of(cmd);
    let path = dir.join(page.get_filename());
    let write = || -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        page.render(&mut f)?;
        f.flush()
    };
    write().with_context(|| format!("cannot write man page {}", path.display()))?;
    let mut n = 1;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        n += write_pages(sub, dir)?;
    }
    Ok(n)
}

/// Writes `bytes` to stdout; a reader that went away (`| head`) is not an error.
fn to_stdout(bytes: &[u8], what: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).with_context(|| format!("cannot write {what} to stdout")),
        _ => Ok(()),
    }
}
