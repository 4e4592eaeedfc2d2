//! `format`, `populate`, `image import|list|rm`, `commit`: argument parsing and reporting for
//! `rcx_dm::rootfs`. Progress bars only when stderr is a terminal.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use rcx_dm::pool::{Pool, VolRef};
use rcx_dm::rootfs::fs::Fs;
use rcx_dm::rootfs::image::{self, ImportOptions};
use rcx_dm::rootfs::oci::Platform;
use rcx_dm::rootfs::registry::{self, Connect, LayerState, PullEvent, PullOptions};
use rcx_dm::rootfs::populate::{self, Progress, Source};
use rcx_dm::units::format_size;

use super::{print_json, size_arg, JsonFlag};

/// Default size of image filesystems (like Docker's devicemapper `dm.basesize`).
pub const DEFAULT_IMAGE_SIZE: &str = "10G";

#[derive(Args)]
pub struct FormatArgs {
    /// The volume, by id or name (not mounted, not read-only).
    pub volume: VolRef,
    /// Filesystem to make.
    #[arg(long, default_value = "ext4")]
    pub fs: Fs,
    #[command(flatten)]
    pub out: JsonFlag,
}

#[derive(Args)]
#[command(after_help = "\
The volume's content becomes exactly the source's: a tar (plain, gzip or zstd), a directory \
(like `rsync -aHAX --delete`: modes, owners, times, symlinks, hard links, xattrs, device nodes) \
or an OCI image layout (its layers applied in order, whiteouts honoured). The source is written \
into a scratch snapshot and swapped in only when complete, so a corrupt archive or an \
interruption leaves the volume as it was. The volume must hold a filesystem (`rcx-dm format`).")]
pub struct PopulateArgs {
    /// The volume, by id or name (not mounted, not read-only).
    pub volume: VolRef,
    /// A tar file, a directory, or an OCI image layout directory.
    #[arg(long)]
    pub from: PathBuf,
    /// For an OCI layout with several images: which one (its ref name annotation).
    #[arg(long)]
    pub reference: Option<String>,
    #[command(flatten)]
    pub out: JsonFlag,
}

#[derive(Subcommand)]
#[command(defer = true)]
pub enum ImageCmd {
    /// Import an OCI image layout: one read-only volume per layer, shared by chain id.
    Import {
        /// The OCI image layout directory (oci-layout, index.json, blobs/).
        path: PathBuf,
        /// Name for the image (`rcx-dm run NAME` runs a snapshot of it).
        #[arg(long, value_parser = image_name_arg)]
        name: String,
        /// Which image of the layout (its org.opencontainers.image.ref.name).
        #[arg(long)]
        reference: Option<String>,
        #[command(flatten)]
        shape: LayerShape,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Pull an image from an OCI distribution registry into layer volumes.
    #[command(after_help = "\
REFERENCE is [REGISTRY[:PORT]/]REPOSITORY[:TAG][@sha256:DIGEST], as docker takes it (no registry: \
Docker Hub; no tag: latest). A manifest list or index is resolved for linux on this host's \
architecture, or --platform. Layers whose volume is already in the pool (same chain id, \
filesystem and size) are not fetched; the others are downloaded several at once into \
<pool>/images/downloads/, each checked against its digest and size as it arrives, and built \
in order, each checked against its diff_id, as soon as its blob is complete.

Credentials: the registry's entry in `auths` of --auth-file, else $REGISTRY_AUTH_FILE, else \
$DOCKER_CONFIG/config.json, else ~/.docker/config.json (`auth`: base64 of user:password, or \
`username`/`password`, or `registrytoken`); anonymous otherwise, with the registry's bearer-token \
exchange. Credential helpers (credsStore, credHelpers) are not run.

A failed pull keeps nothing. A killed pull leaves its finished layer volumes and downloaded blobs, \
and the next pull of the image starts from them; a half-built layer volume is never used (it \
is not read-only) and is removed by the next pull or import.")]
    Pull {
        /// The image reference, e.g. 127.0.0.1:5000/app:1 or docker.io/library/busybox:latest.
        reference: String,
        /// Name for the image in the pool (default: the repository's last part and the tag,
        /// e.g. app-1).
        #[arg(long, value_parser = image_name_arg)]
        name: Option<String>,
        /// Platform of a multi-platform image: os/arch[/variant] (default: linux/<this host's>).
        #[arg(long, value_parser = platform_arg)]
        platform: Option<Platform>,
        /// Speak plain HTTP to the registry (always so for localhost and 127.x).
        #[arg(long)]
        plain_http: bool,
        /// Credentials file (docker config.json or podman auth.json format).
        #[arg(long)]
        auth_file: Option<PathBuf>,
        #[command(flatten)]
        shape: LayerShape,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Push an image of the pool to a registry, as one layer (its top volume's whole tree).
    #[command(after_help = "\
A layer volume holds the whole filesystem up to its layer, and the pool keeps neither the \
blobs an image was imported or pulled from nor a commit's list of changes, so push sends the \
image squashed: one gzip'd tar of its top volume (read-only mount), with a config that names \
the platform, the layer, and the command, environment, working directory and user the image was \
imported or pulled with. \
Credentials and --plain-http as for `image pull`.")]
    Push {
        /// The image in the pool.
        name: String,
        /// Where to push it, e.g. 127.0.0.1:5000/app:2.
        reference: String,
        /// Speak plain HTTP to the registry (always so for localhost and 127.x).
        #[arg(long)]
        plain_http: bool,
        /// Credentials file (docker config.json or podman auth.json format).
        #[arg(long)]
        auth_file: Option<PathBuf>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// The pool's images.
    List(JsonFlag),
    /// Remove an image; its layer volumes go unless another image or a volume uses them.
    Rm {
        name: String,
        #[command(flatten)]
        out: JsonFlag,
    },
}

// The filesystem and size an image's layer volumes get (`image import`, `image pull`). A plain
// comment: with `defer`, clap would take a doc comment of a flattened struct for the about text.
#[derive(Args)]
pub struct LayerShape {
    /// Filesystem of the layer volumes.
    #[arg(long, default_value = "ext4")]
    fs: Fs,
    /// Size of the image's filesystem (and of containers made from it).
    #[arg(long, default_value = DEFAULT_IMAGE_SIZE, value_parser = size_arg)]
    size: u64,
}

#[derive(Args)]
pub struct CommitArgs {
    /// The (stopped) container volume, by id or name.
    pub volume: VolRef,
    /// Name of the new image.
    #[arg(long, value_parser = image_name_arg)]
    pub name: String,
    #[command(flatten)]
    pub out: JsonFlag,
}

fn platform_arg(s: &str) -> std::result::Result<Platform, String> {
    Platform::parse(s).map_err(|e| e.to_string())
}

fn image_name_arg(s: &str) -> std::result::Result<String, String> {
    image::validate_image_name(s).map(|_| s.to_string()).map_err(|e| e.to_string())
}

/// A bar on a terminal counting source bytes; nothing otherwise.
fn progress_bar(total: Option<u64>, what: &str) -> (Progress, Option<ProgressBar>) {
    if !std::io::stderr().is_terminal() {
        return (populate::no_progress(), None);
    }
    let bar = match total {
        Some(t) => ProgressBar::new(t).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_message(what.to_string());
    let b = bar.clone();
    (Arc::new(move |n| b.inc(n)), Some(bar))
}

/// A pull's display: a bar per layer on a terminal, a log line per layer step otherwise.
fn pull_display() -> (registry::Events, Option<MultiProgress>) {
    if !std::io::stderr().is_terminal() {
        let events: registry::Events = Arc::new(|e: PullEvent| {
            let what = match e.state {
                LayerState::Reused => "already in the pool",
                LayerState::Downloading(0) => "downloading",
                LayerState::Downloading(_) => return,
                LayerState::Downloaded => "downloaded",
                LayerState::Applying => "applying",
                LayerState::Applied => "applied",
            };
            eprintln!("layer {} {} ({}): {what}", e.index + 1, e.digest, format_size(e.size));
        });
        return (events, None);
    }
    let multi = MultiProgress::new();
    let bars: Arc<Mutex<BTreeMap<usize, ProgressBar>>> = Default::default();
    let m = multi.clone();
    let style = ProgressStyle::with_template("{prefix} {msg:12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let events: registry::Events = Arc::new(move |e: PullEvent| {
        let Ok(mut bars) = bars.lock() else { return };
        let bar = bars.entry(e.index).or_insert_with(|| {
            let b = m.add(ProgressBar::new(e.size).with_style(style.clone()));
            b.set_prefix(format!("layer {} {}", e.index + 1, e.digest));
            b
        });
        match e.state {
            LayerState::Reused => bar.finish_with_message("in the pool"),
            LayerState::Downloading(n) => {
                bar.set_message("downloading");
                bar.set_position(n);
            }
            LayerState::Downloaded => {
                bar.set_position(e.size);
                bar.set_message("downloaded");
            }
            LayerState::Applying => bar.set_message("applying"),
            LayerState::Applied => bar.finish_with_message("applied"),
        }
    });
    (events, Some(multi))
}

pub fn format(pool: &Pool, a: FormatArgs) -> Result<()> {
    let v = populate::format_volume(pool, &a.volume, a.fs)?;
    if a.out.json {
        return print_json(&v);
    }
    println!("made {} on volume {}", a.fs, v.id);
    Ok(())
}

pub fn populate(pool: &Pool, a: PopulateArgs) -> Result<()> {
    let mut source = Source::detect(&a.from)?;
    if let Source::Oci { reference, .. } = &mut source {
        *reference = a.reference.clone();
    }
    let (progress, bar) = progress_bar(source.size_hint(), "populating");
    let r = populate::populate(pool, &a.volume, &source, progress);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let r = r.with_context(|| format!("populating {} from {}", a.volume, a.from.display()))?;
    if a.out.json {
        return print_json(&r);
    }
    println!("volume {} ({}) now holds {}: {} entries, {} of file data", r.volume, r.fs, a.from.display(), r.entries, format_size(r.bytes));
    Ok(())
}

pub fn image_cmd(pool: &Pool, c: ImageCmd) -> Result<()> {
    match c {
        ImageCmd::Import { path, name, reference, shape: LayerShape { fs, size }, out } => {
            let total = rcx_dm::rootfs::oci::open(&path, reference.as_deref())
                .map(|i| i.layers.iter().map(|l| l.size).sum())
                .ok();
            let (progress, bar) = progress_bar(total, "importing");
            let r = image::import(pool, &path, &name, &ImportOptions { fs, size_bytes: size, reference }, progress);
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            let r = r.with_context(|| format!("importing {}", path.display()))?;
            if out.json {
                return print_json(&r);
            }
            let shared = r.layers.iter().filter(|l| !l.created).count();
            println!("imported image '{}': {} layer(s) ({shared} shared with other images), top volume {}", r.name, r.layers.len(), r.top);
            Ok(())
        }
        ImageCmd::Pull { reference, name, platform, plain_http, auth_file, shape: LayerShape { fs, size }, out } => {
            let opts = PullOptions { name, fs, size_bytes: size, platform, connect: Connect { plain_http, auth_file } };
            let (events, bars) = pull_display();
            let r = registry::pull(pool, &reference, &opts, events, populate::no_progress());
            if let Some(b) = bars {
                let _ = b.clear();
            }
            let r = r.with_context(|| format!("pulling {reference}"))?;
            if out.json {
                return print_json(&r);
            }
            println!(
                "pulled {reference} as image '{}': {} layer(s), {} fetched ({}), {} already in the pool, top volume {}",
                r.image.name,
                r.image.layers.len(),
                r.layers_fetched.len() + r.layers_resumed.len(),
                format_size(r.bytes_fetched),
                r.layers_reused.len(),
                r.image.top
            );
            Ok(())
        }
        ImageCmd::Push { name, reference, plain_http, auth_file, out } => {
            let r = registry::push(pool, &name, &reference, &Connect { plain_http, auth_file })
                .with_context(|| format!("pushing image '{name}' to {reference}"))?;
            if out.json {
                return print_json(&r);
            }
            println!("pushed image '{name}' to {reference}: manifest {}, one layer of {}", r.manifest, format_size(r.layer_bytes));
            Ok(())
        }
        ImageCmd::List(o) => {
            let imgs = image::images(pool)?;
            if o.json {
                return print_json(&imgs);
            }
            println!("{:<24} {:>6} {:>6} {:>5} {:>8}  SOURCE", "NAME", "TOP", "LAYERS", "FS", "SIZE");
            for i in imgs {
                let src = match (&i.manifest, i.committed_from) {
                    (Some(m), _) => m.clone(),
                    (None, Some(v)) => format!("commit of volume {v}"),
                    (None, None) => "-".into(),
                };
                println!("{:<24} {:>6} {:>6} {:>5} {:>8}  {src}", i.name, i.top, i.layers.len(), i.fs, format_size(i.size_bytes));
            }
            Ok(())
        }
        ImageCmd::Rm { name, out } => {
            let r = image::remove(pool, &name)?;
            if out.json {
                return print_json(&r);
            }
            println!(
                "removed image '{}': deleted {} layer volume(s), kept {} still in use",
                r.image,
                r.deleted_volumes.len(),
                r.kept_volumes.len()
            );
            Ok(())
        }
    }
}

pub fn commit(pool: &Pool, a: CommitArgs) -> Result<()> {
    let r = image::commit(pool, &a.volume, &a.name)?;
    if a.out.json {
        return print_json(&r);
    }
    println!("committed volume {} as image '{}' (read-only volume {})", a.volume, r.name, r.top);
    Ok(())
}

/// A volume argument that names no volume but an image means the image's top volume (an image
/// whose top is gone or is another volume now is an error, not a fall-back).
pub fn volume_or_image(pool: &Pool, v: VolRef) -> Result<VolRef> {
    if let VolRef::Name(n) = &v {
        if pool.resolve(&v).is_err() {
            if let Some(top) = image::top_volume(pool, n)? {
                return Ok(VolRef::Id(top));
            }
        }
    }
    Ok(v)
}
