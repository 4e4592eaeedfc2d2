//! `rcx-dm serve`: a containerd snapshotter (proxy plugin) over gRPC on a unix socket.
//!
//! - `store`: one durable JSON record per containerd key (kind, parent, labels, volume, state).
//! - `service`: the snapshot semantics on the pool API, synchronous; crash reconciliation.
//! - here: the `containerd-snapshots` crate's trait, each call on a blocking thread (pool
//!   operations are ioctls and file syncs), the socket, and the one-serve-per-socket lock.

mod service;
pub(crate) mod store;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::tonic::{self, Status};
use containerd_snapshots::{Info, Snapshotter};

use crate::error::{Error, IoContext, Result};
use crate::file_lock::{FileLock, LockMode};
use crate::pool::{MonitorOptions, MonitorStop, Pool};
pub use service::{Options, Service};
use store::{Kind, Record};

/// The unix socket `serve` listens on unless `--socket` says otherwise; containerd's
/// `proxy_plugins` entry must name the same path.
pub const DEFAULT_SOCKET: &str = "/run/rcx-dm/snapshotter.sock";

/// The gRPC face of a `Service`.
pub struct Snapshots(pub Arc<Service>);

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Status> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(format!("worker failed: {e}")))?
}

fn labels(h: HashMap<String, String>) -> BTreeMap<String, String> {
    h.into_iter().collect()
}

fn info(r: Record) -> Info {
    Info {
        kind: match r.kind {
            Kind::Active => containerd_snapshots::Kind::Active,
            Kind::View => containerd_snapshots::Kind::View,
            Kind::Committed => containerd_snapshots::Kind::Committed,
        },
        name: r.key,
        parent: r.parent,
        labels: r.labels.into_iter().collect(),
        created_at: r.created,
        updated_at: r.updated,
    }
}

/// Log failures the way containerd will see them.
fn logged<T>(op: &str, key: &str, r: Result<T, Status>) -> Result<T, Status> {
    if let Err(s) = &r {
        tracing::info!(op, key, code = ?s.code(), "{}", s.message());
    }
    r
}

#[tonic::async_trait]
impl Snapshotter for Snapshots {
    type Error = Status;

    async fn stat(&self, key: String) -> Result<Info, Status> {
        let s = self.0.clone();
        logged("stat", &key.clone(), blocking(move || s.stat(&key)).await).map(info)
    }

    async fn update(&self, i: Info, fieldpaths: Option<Vec<String>>) -> Result<Info, Status> {
        let s = self.0.clone();
        let key = i.name.clone();
        let new = labels(i.labels);
        logged("update", &key.clone(), blocking(move || s.update(&key, &new, fieldpaths.as_deref())).await).map(info)
    }

    async fn usage(&self, key: String) -> Result<containerd_snapshots::Usage, Status> {
        let s = self.0.clone();
        let u = logged("usage", &key.clone(), blocking(move || s.usage(&key)).await)?;
        Ok(containerd_snapshots::Usage { size: u.bytes as i64, inodes: u.inodes as i64 })
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, Status> {
        let s = self.0.clone();
        logged("mounts", &key.clone(), blocking(move || s.mounts(&key)).await)
    }

    async fn prepare(&self, key: String, parent: String, l: HashMap<String, String>) -> Result<Vec<Mount>, Status> {
        let s = self.0.clone();
        logged("prepare", &key.clone(), blocking(move || s.create(Kind::Active, &key, &parent, labels(l))).await)
    }

    async fn view(&self, key: String, parent: String, l: HashMap<String, String>) -> Result<Vec<Mount>, Status> {
        let s = self.0.clone();
        logged("view", &key.clone(), blocking(move || s.create(Kind::View, &key, &parent, labels(l))).await)
    }

    async fn commit(&self, name: String, key: String, l: HashMap<String, String>) -> Result<(), Status> {
        let s = self.0.clone();
        logged("commit", &key.clone(), blocking(move || s.commit(&name, &key, labels(l))).await)
    }

    async fn remove(&self, key: String) -> Result<(), Status> {
        let s = self.0.clone();
        logged("remove", &key.clone(), blocking(move || s.remove(&key)).await)
    }

    async fn clear(&self) -> Result<(), Status> {
        let s = self.0.clone();
        blocking(move || s.remove_orphans().map(|_| ()).map_err(service::status)).await
    }

    type InfoStream = tokio_stream::Iter<std::vec::IntoIter<Result<Info, Status>>>;

    /// Every snapshot. Filters are not applied here: containerd lists through its own metadata
    /// store, and only its garbage collector walks the backend, without filters.
    async fn list(&self, _snapshotter: String, filters: Vec<String>) -> Result<Self::InfoStream, Status> {
        if filters.iter().any(|f| !f.is_empty()) {
            tracing::debug!(?filters, "list filters ignored: every snapshot is returned");
        }
        let s = self.0.clone();
        let all = blocking(move || s.list()).await?;
        Ok(tokio_stream::iter(all.into_iter().map(|r| Ok(info(r))).collect::<Vec<_>>()))
    }
}

/// How `serve` is started.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Path of the unix socket to listen on (`--socket`); its lock is `<socket>.lock`.
    pub socket: PathBuf,
    /// Permission bits of the socket (0o600 by default: whoever can connect can make, mount
    /// and remove volumes, so root only unless the operator says otherwise).
    pub socket_mode: u32,
    /// The snapshotter's settings: filesystem and size of new snapshots.
    pub snapshots: Options,
    /// Run the pool's auto-extend monitor on a thread of its own (`Pool::monitor`).
    pub monitor: bool,
}

/// Serve until SIGINT/SIGTERM. The pool is activated (idempotent), records reconciled with it,
/// then the socket bound: a stale socket file is replaced, a live serve on it is refused (an
/// flock on `<socket>.lock`), and so is a second serve on the same pool.
pub fn run(pool: Pool, opts: ServeOptions) -> Result<()> {
    if let Some(dir) = opts.socket.parent() {
        std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    }
    let _sock_lock = try_lock(&lock_path(&opts.socket), || {
        format!("another rcx-dm serve is already serving {}", opts.socket.display())
    })?;
    // Refused before anything changes: only a stale socket is ever replaced.
    stale_socket(&opts.socket)?;
    let store = store::SnapStore::open(pool.dir())?;
    let _pool_lock = try_lock(&store.dir().join("serve.lock"), || {
        format!("another rcx-dm serve is already serving pool '{}'", pool.name())
    })?;
    // A volume that cannot come up fails only the snapshots on it, not the whole snapshotter.
    let a = pool.activate()?;
    if let Some(e) = &a.incomplete {
        tracing::error!("{e}");
    }
    let activated = a.volumes;
    tracing::info!(pool = pool.name(), activated, "pool active");
    let monitor = if opts.monitor { Some(start_monitor(&pool)?) } else { None };
    let svc = Service::new(pool, opts.snapshots.clone())?;
    svc.reconcile()?;
    let svc = Arc::new(svc);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(64)
        .build()
        .ctx(|| "starting the async runtime".to_string())?;
    let served = rt.block_on(serve_on(svc, &opts.socket, opts.socket_mode));
    if let Some((stop, thread)) = monitor {
        stop.stop();
        let _ = thread.join();
    }
    served
}

/// The pool's auto-extend monitor on its own thread. Another monitor of the pool (a `pool
/// monitor` unit) already watching it is fine: serve then leaves the pool to that one.
fn start_monitor(pool: &Pool) -> Result<(MonitorStop, std::thread::JoinHandle<()>)> {
    let p = pool.reopen()?;
    let stop = MonitorStop::new();
    let s = stop.clone();
    let thread = std::thread::Builder::new()
        .name("monitor".into())
        .spawn(move || match p.monitor(&MonitorOptions::default(), &s) {
            Ok(()) => {}
            Err(Error::MonitorRunning(pool)) => tracing::info!(%pool, "another monitor watches the pool; serve runs none"),
            Err(e) => tracing::error!("the auto-extend monitor stopped: {e}"),
        })
        .ctx(|| "starting the monitor thread".to_string())?;
    Ok((stop, thread))
}

fn lock_path(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

fn try_lock(path: &Path, busy: impl FnOnce() -> String) -> Result<FileLock> {
    FileLock::try_lock(path, LockMode::Exclusive)?.ok_or_else(|| Error::invalid("serve", busy()))
}

/// Whether a (stale) socket sits at `--socket`; anything else there is refused, never unlinked:
/// a regular file, directory or device there is the operator's mistake, and deleting it would
/// lose their data.
fn stale_socket(socket: &Path) -> Result<bool> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(socket) {
        Ok(m) if m.file_type().is_socket() => Ok(true),
        Ok(_) => Err(Error::invalid(
            "serve",
            format!("{} exists and is not a socket; move it away or choose another --socket", socket.display()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).ctx(|| format!("looking at {}", socket.display())),
    }
}

async fn serve_on(svc: Arc<Service>, socket: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if stale_socket(socket)? {
        match std::fs::remove_file(socket) {
            Ok(()) => tracing::info!(socket = %socket.display(), "removed a stale socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx(|| format!("removing stale socket {}", socket.display())),
        }
    }
    // bind(2) creates the socket with the umask's bits: with a loose umask it would be
    // connectable by anyone until the chmod below. A strict umask around the bind closes that
    // window (the umask is per process: a file another thread creates in that instant comes out
    // stricter, never looser).
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = tokio::net::UnixListener::bind(socket);
    nix::sys::stat::umask(old);
    let listener = bound.ctx(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode))
        .ctx(|| format!("setting the mode of {} to {mode:o}", socket.display()))?;
    tracing::info!(socket = %socket.display(), "serving containerd snapshots");
    eprintln!("rcx-dm serve: listening on {}", socket.display());
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    let r = tonic::transport::Server::builder()
        .add_service(containerd_snapshots::server(Arc::new(Snapshots(svc))))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    let _ = std::fs::remove_file(socket);
    r.map_err(|e| Error::Io { context: "serving gRPC".into(), source: std::io::Error::other(e) })
}
