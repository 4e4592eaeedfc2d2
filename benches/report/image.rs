//! The image of workloads 5 and 6: busybox-static plus `mb` MiB of data in 1 MiB files, one
//! uncompressed layer. Written as a directory (for unshare + chroot and for the hand-made
//! systems to copy from), its layer tar, an OCI layout (rcx-dm image import) and an OCI
//! archive (ctr image import).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::sh;

pub struct Image {
    pub rootfs: PathBuf,
    pub layer_tar: PathBuf,
    pub layout: PathBuf,
    pub archive: PathBuf,
    /// containerd's image name.
    pub reference: String,
    /// Its one layer's chain id (= diff id), the parent of containerd's container snapshots.
    pub chain_id: String,
    /// Bytes of file content in the image.
    pub content_bytes: u64,
}

/// `name` is containerd's repository name for it (`docker.io/library/NAME:1`).
pub fn build(dir: &Path, mb: usize, name: &str) -> Image {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "dev", "proc", "sys", "etc", "root", "tmp", "data"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static");
    for a in ["sh", "true", "ls", "cat"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
    }
    std::fs::write(rootfs.join("etc/marker"), "image\n").unwrap();
    // Incompressible content, so no layer of the stack can shrink it.
    let mut chunk = vec![0u8; 1 << 20];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut chunk)).unwrap();
    for i in 0..mb {
        chunk[..8].copy_from_slice(&(i as u64).to_le_bytes());
        std::fs::File::create(rootfs.join(format!("data/f{i:04}"))).and_then(|mut f| f.write_all(&chunk)).unwrap();
    }
    let content_bytes = sh(&format!("du -sb --apparent-size {}", rootfs.display()))
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap();
    let layer_tar = dir.join("layer.tar");
    sh(&format!("tar --numeric-owner --owner=0 --group=0 -C '{}' -cf '{}' .", rootfs.display(), layer_tar.display()));

    let layout = dir.join("oci");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |path: &Path| -> (String, u64) {
        let sum = sh(&format!("sha256sum '{}'", path.display())).split_whitespace().next().unwrap().to_string();
        let size = std::fs::metadata(path).unwrap().len();
        std::fs::copy(path, blobs.join(&sum)).unwrap();
        (format!("sha256:{sum}"), size)
    };
    let put_bytes = |b: &[u8]| {
        let tmp = dir.join("blob.tmp");
        std::fs::write(&tmp, b).unwrap();
        put(&tmp)
    };
    let (layer_d, layer_n) = put(&layer_tar);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_d]},
    });
    let (config_d, config_n) = put_bytes(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config_n},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_d, "size": layer_n}],
    });
    let (man_d, man_n) = put_bytes(manifest.to_string().as_bytes());
    let reference = format!("docker.io/library/{name}:1");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": man_d, "size": man_n,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": reference, "org.opencontainers.image.ref.name": "1"},
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let archive = dir.join("image.tar");
    sh(&format!("tar -C '{}' -cf '{}' oci-layout index.json blobs", layout.display(), archive.display()));
    Image { rootfs, layer_tar, layout, archive, reference, chain_id: layer_d, content_bytes }
}
