#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs into fuzz/seeds/<target>/ (checked in; run again after
changing it: `python3 fuzz/make-seeds.py`). Small valid inputs of every kind the parsers read,
so the fuzzers start from deep inside the formats. Deterministic: same files every run."""
import gzip, hashlib, io, json, os, random, shutil, subprocess, tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")


def out(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def tar(entries, fmt=tarfile.GNU_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for e in entries:
            name, kind = e[0], e[1]
            ti = tarfile.TarInfo(name)
            ti.mtime = 1600000000
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            data = b""
            if kind == "f":
                data = e[2] if len(e) > 2 else b"data\n"
                ti.size = len(data)
                ti.mode = 0o644
            elif kind == "d":
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
            elif kind == "s":
                ti.type = tarfile.SYMTYPE
                ti.linkname = e[2]
                ti.mode = 0o777
            elif kind == "h":
                ti.type = tarfile.LNKTYPE
                ti.linkname = e[2]
            elif kind == "p":
                ti.type = tarfile.FIFOTYPE
                ti.mode = 0o644
            elif kind == "c":
                ti.type = tarfile.CHRTYPE
                ti.devmajor, ti.devminor = 1, 3
                ti.mode = 0o666
            if len(e) > 3:
                ti.pax_headers = e[3]
            t.addfile(ti, io.BytesIO(data) if kind == "f" else None)
        end = t.offset + 2 * tarfile.BLOCKSIZE
    # The end-of-archive blocks, without tarfile's padding to 10 KB records.
    return buf.getvalue()[:end]


def gz(b):
    return gzip.compress(b, mtime=0)


def zst(b):
    if not shutil.which("zstd"):
        return None
    return subprocess.run(["zstd", "-q", "-c", "-3"], input=b, stdout=subprocess.PIPE, check=True).stdout


def digest(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


# ---- layer_tar: what populate and image import read
plain = tar([("etc", "d"), ("etc/hostname", "f", b"box\n"), ("bin", "d"), ("bin/sh", "f", b"#!\n"),
             ("bin/ash", "h", "bin/sh"), ("lib", "s", "usr/lib"), ("usr/lib/x", "f"), ("dev/null", "c")])
out("layer_tar", "plain.tar", plain)
out("layer_tar", "plain.tar.gz", gz(plain))
z = zst(plain)
if z:
    out("layer_tar", "plain.tar.zst", z)
whiteouts = tar([("a/.wh.f", "f", b""), ("opq", "d"), ("opq/.wh..wh..opq", "f", b""), ("opq/new", "f"),
                 (".wh.lib", "f", b""), ("etc/.wh.passwd", "f", b""), ("a/b", "d"), ("a/b/.wh.g", "f", b""),
                 (".wh..wh.plnk", "d"), (".wh.loop/x", "f", b"")])
out("layer_tar", "whiteouts.tar", whiteouts)
out("layer_tar", "whiteouts-last.tar", tar([("usr", "d"), ("usr/lib", "d"), ("usr/lib/new", "f"),
                                            ("usr/.wh..wh..opq", "f", b""), ("usr/lib/.wh.libc.so", "f", b"")]))
longname = "d" * 60 + "/" + "e" * 80 + "/" + "f" * 90
out("layer_tar", "gnu-longname.tar", tar([(longname, "f"), ("long-link", "s", "t" * 150),
                                          ("hl", "h", longname)], tarfile.GNU_FORMAT))
out("layer_tar", "pax.tar", tar([("p" * 120 + "/x", "f", b"pax\n", {"mtime": "1600000000.123456789",
                                  "atime": "1600000001.5", "SCHILY.xattr.user.k": "v",
                                  "SCHILY.xattr.trusted.t": "w"}),
                                 ("dir", "d", None, {"mtime": "1.000000001"}),
                                 ("dir/.wh.x", "f", b"", {"path": "dir/.wh.y"})], tarfile.PAX_FORMAT))
out("layer_tar", "ustar.tar", tar([("u" * 90 + "/" + "v" * 90, "f"), ("./", "d"), ("./x", "f")], tarfile.USTAR_FORMAT))
out("layer_tar", "root-and-dots.tar", tar([("./", "d"), ("/abs", "f"), ("a/../b", "f"), ("c/./d", "f")]))

# ---- layer_entries: byte strings that decode into entry lists (see the target's decode)
rnd = random.Random(13)
for i in range(8):
    out("layer_entries", f"random-{i}", bytes(rnd.randrange(256) for _ in range(48)))
# kind byte: k % 6 (0 file, 1 dir, 5 file); parts count 1 + (k >> 5) % 4; then part indexes, flags
# PARTS: 0 a, 1 b, 2 f, 9 opq, 15 .wh.f, 22 .wh..wh..opq, 13 .wh.a, 10 sub
# (0x24: a file of 2 parts, 0x25: a directory of 2 parts, 0x00: a file of 1 part)
out("layer_entries", "whiteout-f", bytes([0x24, 0, 15, 0]))                 # a/.wh.f
out("layer_entries", "opaque-opq", bytes([0x24, 9, 22, 0, 0x25, 9, 10, 0]))  # opq/.wh..wh..opq, opq/sub
out("layer_entries", "whiteout-a-and-write", bytes([0x00, 13, 0, 0x24, 0, 2, 4, 1, 2, 3]))  # .wh.a, a/f
out("layer_entries", "whiteout-non-utf8", bytes([0x00, 37, 0]))  # .wh.\xff (issue 13, defect 11)
out("layer_entries", "opaque-root-and-dir", bytes([0x00, 22, 0, 0x25, 0, 1, 0, 0x24, 7, 30, 0]))  # .wh..wh..opq, a/b, usr/.wh.abs

# ---- oci_layout: bundles (see the target: parts split by SEP, @Dn@ @Sn@ @Un@ filled in)
SEP = b"\n=====\n"
LAYOUT = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
M = "application/vnd.oci.image.manifest.v1+json"
I = "application/vnd.oci.image.index.v1+json"
L = "application/vnd.oci.image.layer.v1.tar"


def desc(mt, n, **kw):
    d = {"mediaType": mt, "digest": f"@D{n}@", "size": f"@S{n}@"}
    d.update(kw)
    return d


def js(v):
    # Sizes are placeholders inside strings; unquote them so they become numbers.
    s = json.dumps(v)
    for n in range(10):
        s = s.replace(f'"@S{n}@"', f"@S{n}@")
    return s.encode()


def bundle(*parts):
    return SEP.join(parts)


small = tar([("hello", "f", b"hi\n")])
cfg = lambda n_layers, first: js({"architecture": "amd64", "os": "linux",
                                  "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/", "User": "0"},
                                  "rootfs": {"type": "layers", "diff_ids": [f"@U{first + i}@" for i in range(n_layers)]}})
out("oci_layout", "one-layer", bundle(
    LAYOUT,
    js({"schemaVersion": 2, "manifests": [desc(M, 2, annotations={"org.opencontainers.image.ref.name": "latest"})]}),
    js({"schemaVersion": 2, "mediaType": M, "config": desc("application/vnd.oci.image.config.v1+json", 3),
        "layers": [desc(L, 4)]}),
    cfg(1, 4), small))
out("oci_layout", "gzip-two-layers", bundle(
    LAYOUT,
    js({"schemaVersion": 2, "manifests": [desc(M, 2)]}),
    js({"schemaVersion": 2, "config": desc("application/vnd.oci.image.config.v1+json", 3),
        "layers": [desc(L + "+gzip", 4), desc(L, 5)]}),
    cfg(2, 4), gz(small), whiteouts))
out("oci_layout", "nested-index-platforms", bundle(
    LAYOUT,
    js({"schemaVersion": 2, "manifests": [desc(I, 2)]}),
    js({"schemaVersion": 2, "mediaType": I, "manifests": [
        desc(M, 3, platform={"architecture": "amd64", "os": "linux"}),
        desc(M, 3, platform={"architecture": "arm64", "os": "linux", "variant": "v8"})]}),
    js({"schemaVersion": 2, "config": desc("application/vnd.oci.image.config.v1+json", 4), "layers": []}),
    js({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})))
out("oci_layout", "docker-types", bundle(
    LAYOUT,
    js({"schemaVersion": 2, "manifests": [desc("application/vnd.docker.distribution.manifest.v2+json", 2,
                                               annotations={"io.containerd.image.name": "latest"})]}),
    js({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": desc("application/vnd.docker.container.image.v1+json", 3),
        "layers": [desc("application/vnd.docker.image.rootfs.diff.tar.gzip", 4)]}),
    cfg(1, 4), gz(small)))
if z:
    out("oci_layout", "zstd-layer", bundle(
        LAYOUT, js({"schemaVersion": 2, "manifests": [desc(M, 2)]}),
        js({"schemaVersion": 2, "config": desc("application/vnd.oci.image.config.v1+json", 3),
            "layers": [desc(L + "+zstd", 4)]}),
        cfg(1, 4), zst(small)))

# ---- pool_records: selector byte (see the target), then the file
backing = lambda p: {"kind": "file", "path": p}
recs = {
    0: {"name": "p", "data": backing("/var/lib/rcx-dm/p/data"), "meta": {"kind": "device", "path": "/dev/vdb"},
        "data_bytes": 1 << 30, "meta_bytes": 8 << 20, "block_bytes": 65536, "low_water_blocks": 163,
        "zero_new_blocks": True, "error_if_no_space": True,
        "autoextend": {"threshold_percent": 80, "step": {"percent": 20}, "max_data_bytes": None,
                       "host_reserve_bytes": 1 << 30}, "discard_on_delete": True},
    1: {"id": 7, "name": "web", "parent": 3, "size_bytes": 1 << 30, "txid": 12, "autoactivate": True, "read_only": False},
    3: {"op": "create", "id": 7, "name": "web", "parent": None, "size_bytes": 1 << 30, "txid": 11},
    4: {"old_data_bytes": 1 << 30, "new_data_bytes": 2 << 30, "old_meta_bytes": 8 << 20, "new_meta_bytes": 8 << 20},
    6: {"name": "o", "backing": {"kind": "volume", "id": 3}, "size_bytes": 1 << 30,
        "merge": {"snap": "s", "phase": "started", "data_sectors_at_start": 100}},
    7: {"name": "c", "origin": "o", "backing": {"kind": "file", "path": "/var/lib/rcx-dm/p/classic/c.cow"},
        "size_bytes": 1 << 28, "chunk_sectors": 8, "persistence": "persistent"},
    8: {"op": "cow_create", "name": "c", "origin": "o", "backing": {"kind": "volume", "name": "c.cow"}},
    9: {"key": "default/1/x", "kind": "active", "parent": "", "volume": "ctrd-1", "volume_id": 4, "fs": "ext4",
        "state": "committing", "from": "default/0/y", "labels": {"containerd.io/gc.root": "1"},
        "created": {"secs_since_epoch": 1600000000, "nanos_since_epoch": 5},
        "updated": {"secs_since_epoch": 1600000001, "nanos_since_epoch": 0}, "usage": {"bytes": 4096, "inodes": 3}},
    10: {"name": "i", "fs": "ext4", "size_bytes": 1 << 30, "layers": [
        {"chain_id": "sha256:" + "a" * 64, "volume": 5, "created": True}, {"chain_id": None, "volume": 6, "created": False}],
        "top": 6, "manifest": None, "committed_from": 2, "created_unix": 1600000000},
}
for sel, v in recs.items():
    out("pool_records", f"{sel:02d}-record.json", bytes([sel]) + json.dumps(v, indent=2).encode())
out("pool_records", "01-torn.json", bytes([1]) + json.dumps(recs[1]).encode()[:40])
out("pool_records", "02-name", bytes([2]) + b"7\n")
out("pool_records", "02-name-empty", bytes([2]))
out("pool_records", "03-revert.json", bytes([3]) + json.dumps({"op": "revert", "id": 1, "snapshot": 2, "tmp": 9, "txid": 4, "reactivate": True}).encode())
out("pool_records", "05-next-id", bytes([5]) + b"42\n")

# ---- cli_args: arguments as typed (a NUL separates a second size)
for i, a in enumerate([b"100G", b"64K", b"1536", b"3MiB", b" 512 ", b"+10G", b"20%", b"1000%", b"80", b"web",
                       b"populate-1", b"-", b"0", b"16777215", b"a.b_c-d", b"ext4", b"PATH=/bin",
                       b"default/1/x y", b"sha256:" + b"0" * 64, b"64K\x00100G", b"1G\x00512T"]):
    out("cli_args", f"arg-{i:02d}", a)
