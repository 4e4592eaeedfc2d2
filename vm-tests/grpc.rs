//! A small blocking client for `rcx-dm serve`'s containerd snapshots API over its unix socket,
//! for tests: what containerd sends through its proxy plugin, without containerd.
//!
//! ```ignore
//! let mut s = Snapshotter::connect(&socket)?;
//! let mounts = s.prepare("ns/1/a", "")?;          // an active snapshot of the base
//! s.commit("ns/2/layer", "ns/1/a")?;              // committed: a parent for others
//! let view = s.view("ns/3/v", "ns/2/layer")?;     // read-only
//! s.remove("ns/3/v")?;
//! ```
//!
//! Each call runs on the client's own current-thread tokio runtime and has a deadline
//! (`with_timeout`, 120 s by default), so a test never hangs on a wedged server. Errors are
//! `tonic::Status` (the server's answer, or `Unavailable`/`Unknown` for transport failures such as
//! a server killed mid-call); `connect` fails with a message when nothing listens.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_snapshots::api::snapshots::v1 as api;
use containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient;
pub use containerd_snapshots::api::types::Mount;
use containerd_snapshots::tonic::{self, transport::Channel, Code, Status};

/// The snapshotter name sent in requests (serve serves one pool and ignores it).
const SNAPSHOTTER: &str = "rcx-dm";

/// A snapshot's kind as the API reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Unknown,
    View,
    Active,
    Committed,
}

impl Kind {
    fn from_i32(k: i32) -> Kind {
        match k {
            1 => Kind::View,
            2 => Kind::Active,
            3 => Kind::Committed,
            _ => Kind::Unknown,
        }
    }
}

/// What Stat and List report about a snapshot.
#[derive(Clone, Debug)]
pub struct Info {
    pub name: String,
    pub parent: String,
    pub kind: Kind,
    pub labels: HashMap<String, String>,
}

impl From<api::Info> for Info {
    fn from(i: api::Info) -> Info {
        Info { name: i.name, parent: i.parent, kind: Kind::from_i32(i.kind), labels: i.labels }
    }
}

pub struct Snapshotter {
    rt: tokio::runtime::Runtime,
    client: SnapshotsClient<Channel>,
    socket: PathBuf,
    timeout: Duration,
}

pub type Result<T> = std::result::Result<T, Status>;

impl Snapshotter {
    /// Connect to the serve listening on `socket` (no retry: see `connect_within`).
    pub fn connect(socket: &Path) -> std::result::Result<Snapshotter, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let path = socket.to_path_buf();
        let channel = rt
            .block_on(async {
                let endpoint = tonic::transport::Endpoint::try_from("http://[::]:50051").map_err(|e| e.to_string())?;
                let connect = endpoint.connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                        tokio::net::UnixStream::connect(path.clone())
                    }));
                match tokio::time::timeout(Duration::from_secs(30), connect).await {
                    Ok(r) => r.map_err(|e| format!("{e:?}")),
                    Err(_) => Err("timed out after 30 s".to_string()),
                }
            })
            .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
        Ok(Snapshotter { rt, client: SnapshotsClient::new(channel), socket: socket.to_path_buf(), timeout: Duration::from_secs(120) })
    }

    /// Connect, retrying for up to `secs` seconds (a serve that is starting up).
    pub fn connect_within(socket: &Path, secs: u64) -> std::result::Result<Snapshotter, String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            match Snapshotter::connect(socket) {
                Ok(s) => return Ok(s),
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Every later call fails with `DeadlineExceeded` after `t`.
    pub fn with_timeout(mut self, t: Duration) -> Snapshotter {
        self.timeout = t;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn call<T, F>(&mut self, f: impl FnOnce(SnapshotsClient<Channel>) -> F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        let fut = f(self.client.clone());
        let t = self.timeout;
        self.rt.block_on(async move {
            match tokio::time::timeout(t, fut).await {
                Ok(r) => r,
                Err(_) => Err(Status::deadline_exceeded(format!("no answer within {} s", t.as_secs()))),
            }
        })
    }

    /// An active snapshot `key` of `parent` ("" for an empty one); its mounts.
    pub fn prepare(&mut self, key: &str, parent: &str) -> Result<Vec<Mount>> {
        self.prepare_labeled(key, parent, HashMap::new())
    }

    pub fn prepare_labeled(&mut self, key: &str, parent: &str, labels: HashMap<String, String>) -> Result<Vec<Mount>> {
        let req = api::PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.into(),
            parent: parent.into(),
            labels,
        };
        self.call(|mut c| async move { Ok(c.prepare(req).await?.into_inner().mounts) })
    }

    /// A read-only view `key` of committed `parent`; its mounts.
    pub fn view(&mut self, key: &str, parent: &str) -> Result<Vec<Mount>> {
        let req =
            api::ViewSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: key.into(), parent: parent.into(), labels: HashMap::new() };
        self.call(|mut c| async move { Ok(c.view(req).await?.into_inner().mounts) })
    }

    /// The mounts of an active snapshot or view.
    pub fn mounts(&mut self, key: &str) -> Result<Vec<Mount>> {
        let req = api::MountsRequest { snapshotter: SNAPSHOTTER.into(), key: key.into() };
        self.call(|mut c| async move { Ok(c.mounts(req).await?.into_inner().mounts) })
    }

    /// Active snapshot `key` becomes committed snapshot `name`.
    pub fn commit(&mut self, name: &str, key: &str) -> Result<()> {
        let req =
            api::CommitSnapshotRequest { snapshotter: SNAPSHOTTER.into(), name: name.into(), key: key.into(), labels: HashMap::new() };
        self.call(|mut c| async move { c.commit(req).await.map(|_| ()) })
    }

    pub fn remove(&mut self, key: &str) -> Result<()> {
        let req = api::RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: key.into() };
        self.call(|mut c| async move { c.remove(req).await.map(|_| ()) })
    }

    pub fn stat(&mut self, key: &str) -> Result<Info> {
        let req = api::StatSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: key.into() };
        self.call(|mut c| async move {
            let info = c.stat(req).await?.into_inner().info.ok_or_else(|| Status::internal("Stat answered no info"))?;
            Ok(info.into())
        })
    }

    /// Whether `key` exists: Stat, with NotFound as `false`.
    pub fn exists(&mut self, key: &str) -> Result<bool> {
        match self.stat(key) {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(s),
        }
    }

    /// Every snapshot (List's stream, collected).
    pub fn list(&mut self) -> Result<Vec<Info>> {
        let req = api::ListSnapshotsRequest { snapshotter: SNAPSHOTTER.into(), filters: vec![] };
        self.call(|mut c| async move {
            let mut stream = c.list(req).await?.into_inner();
            let mut out = Vec::new();
            while let Some(m) = stream.message().await? {
                out.extend(m.info.into_iter().map(Info::from));
            }
            Ok(out)
        })
    }

    /// (bytes, inodes) in use.
    pub fn usage(&mut self, key: &str) -> Result<(i64, i64)> {
        let req = api::UsageRequest { snapshotter: SNAPSHOTTER.into(), key: key.into() };
        self.call(|mut c| async move {
            let u = c.usage(req).await?.into_inner();
            Ok((u.size, u.inodes))
        })
    }

    /// Cleanup: serve deletes its volumes that no snapshot owns.
    pub fn cleanup(&mut self) -> Result<()> {
        let req = api::CleanupRequest { snapshotter: SNAPSHOTTER.into() };
        self.call(|mut c| async move { c.cleanup(req).await.map(|_| ()) })
    }
}

/// Whether `s` looks like a transport failure (server gone, connection reset) rather than the
/// server's own answer.
pub fn is_transport_error(s: &Status) -> bool {
    match s.code() {
        Code::Unavailable | Code::Cancelled => true,
        Code::Unknown => {
            let m = s.message().to_lowercase();
            m.contains("transport") || m.contains("connection") || m.contains("broken pipe") || m.contains("h2 protocol")
        }
        _ => false,
    }
}
