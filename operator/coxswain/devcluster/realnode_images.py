"""The real nodes' own small images, and importing image archives into a node's containerd.

No registry is reachable, so the two images every node needs are written here as OCI
archives from Debian's static busybox (package busybox-static):
- `coxswain.dev/pause:dev`, the pod sandbox: busybox `sleep` until killed;
- `coxswain.dev/busybox:dev`, for local-path-provisioner's helper pods and for tests.
Both share one layer. Archives of other images (`make images`) are imported the same way.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
PAUSE_IMAGE = "coxswain.dev/pause:dev"
BUSYBOX_IMAGE = "coxswain.dev/busybox:dev"
# The applets tests and the storage helper use, linked into /bin.
APPLETS = (
    "sh", "sleep", "cat", "echo", "id", "ls", "mkdir", "rm", "touch", "nslookup", "wget",
    "nc", "env", "test", "true", "false", "hostname", "grep", "head", "date", "ps", "httpd", "stat", "seq",
)  # fmt: skip
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ImageError(RuntimeError):
    """An image could not be built or imported; the message says what to install or check."""


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(busybox: Path) -> bytes:
    """A deterministic tar: /bin/busybox, its applet links, and writable-by-all /tmp."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(info: tarfile.TarInfo, data: bytes | None = None) -> None:
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            tar.addfile(info, io.BytesIO(data) if data is not None else None)

        for directory, mode in (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777)):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, mode
            add(info)
        binary = busybox.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(binary), 0o755
        add(info, binary)
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname, link.mode = tarfile.SYMTYPE, "busybox", 0o777
            add(link)
        passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size, info.mode = len(passwd), 0o644
        add(info, passwd)
    return out.getvalue()


def write_oci_archive(path: Path, images: dict[str, dict[str, list[str]]], busybox: Path = BUSYBOX) -> Path:
    """An OCI image-layout tar holding one manifest per name in `images`, all on the busybox
    layer; each value is the image config's `Entrypoint`/`Cmd`."""
    if not busybox.is_file():
        raise ImageError(
            f"{busybox} is missing: install Debian's busybox-static (dev/install-system-deps.sh)"
        )
    layer = _layer(busybox)
    blobs: dict[str, bytes] = {_sha(layer): layer}
    manifests = []
    for name, process in images.items():
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Env": [PATH_ENV], "WorkingDir": "/", **process},
                "rootfs": {"type": "layers", "diff_ids": [_sha(layer)]},
            },
            sort_keys=True,
        ).encode()
        blobs[_sha(config)] = config
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": _sha(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": _sha(layer),
                        "size": len(layer),
                    }
                ],
            },
            sort_keys=True,
        ).encode()
        blobs[_sha(manifest)] = manifest
        manifests.append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": _sha(manifest),
                "size": len(manifest),
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                },
            }
        )
    index = json.dumps({"schemaVersion": 2, "manifests": manifests}, sort_keys=True).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": index}
        files.update({f"blobs/sha256/{d.split(':', 1)[1]}": b for d, b in blobs.items()})
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def node_images_archive(directory: Path) -> Path:
    """The pause and busybox images as one archive (rewritten each time: it takes milliseconds)."""
    return write_oci_archive(
        directory / "node-images.tar",
        {
            PAUSE_IMAGE: {"Entrypoint": ["/bin/sleep", "2147483647"]},
            BUSYBOX_IMAGE: {"Cmd": ["/bin/sh"]},
        },
    )


def link_layout_blobs(layout: Path, content_blobs: Path) -> int:
    """Hard-link an OCI layout's blobs into a containerd content store before importing it.

    The trainer image is ~6 GB; copied into every node's store it filled the disk. containerd's
    default `shared` content policy adopts a blob already in its backing store instead of
    writing it again, and blobs are immutable, so a link costs nothing. Returns how many were
    linked; a store on another filesystem just gets copies from the import as before.
    """
    source = layout / "blobs" / "sha256"
    if not source.is_dir():
        return 0
    content_blobs.mkdir(parents=True, exist_ok=True)
    linked = 0
    for blob in source.iterdir():
        target = content_blobs / blob.name
        if target.exists():
            continue
        try:
            target.hardlink_to(blob)
        except OSError:
            return linked
        linked += 1
    return linked


def import_archive(socket: Path, archive: Path, content_blobs: Path | None = None) -> str:
    """Import an image archive (OCI or docker tar) or an OCI layout directory (streamed as a
    tar, nothing written) into the node's containerd, in the CRI's namespace. A layout's blobs
    are first linked into `content_blobs` (the node's content store) when it is given."""
    ctr = ["ctr", "--address", str(socket), "-n", "k8s.io", "images", "import"]
    if archive.is_dir():
        if not (archive / "index.json").is_file():
            raise ImageError(f"{archive} is not an OCI image layout (no index.json)")
        if content_blobs is not None:
            link_layout_blobs(archive, content_blobs)
        tar = subprocess.Popen(["tar", "-C", str(archive), "-cf", "-", "."], stdout=subprocess.PIPE)
        result = subprocess.run([*ctr, "-"], stdin=tar.stdout, capture_output=True, text=True, check=False)
        tar.wait()
    else:
        result = subprocess.run([*ctr, str(archive)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ImageError(f"importing {archive} into {socket} failed: {result.stderr.strip()}")
    return result.stdout


def _ctr(socket: Path) -> list[str]:
    return ["ctr", "--address", str(socket), "-n", "k8s.io"]


def _ctr_lines(socket: Path, *args: str) -> list[str]:
    result = subprocess.run([*_ctr(socket), *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ImageError(f"`ctr {' '.join(args)}` on {socket} failed: {result.stderr.strip()}")
    return result.stdout.splitlines()


def node_image_digests(socket: Path) -> dict[str, str]:
    """Image name -> manifest digest, as the node's containerd has them."""
    digests: dict[str, str] = {}
    for line in _ctr_lines(socket, "images", "ls")[1:]:  # REF TYPE DIGEST SIZE PLATFORMS LABELS
        fields = line.split()
        if len(fields) >= 3:
            digests[fields[0]] = fields[2]
    return digests


def _layout_manifests(layout: Path) -> list[dict[str, object]]:
    if not (layout / "index.json").is_file():
        raise ImageError(f"{layout} is not an OCI image layout (no index.json)")
    manifests: list[dict[str, object]] = json.loads((layout / "index.json").read_text()).get("manifests", [])
    return manifests


def _name(entry: dict[str, object]) -> str:
    annotations = entry.get("annotations")
    return str(annotations.get("io.containerd.image.name", "")) if isinstance(annotations, dict) else ""


def _blob_path(layout: Path, digest: str) -> Path:
    algorithm, hexdigest = digest.split(":", 1)
    return layout / "blobs" / algorithm / hexdigest


def missing_images(socket: Path, layout: Path, names: set[str] | None = None) -> list[str]:
    """The layout's images (those in `names`, or all) the node lacks or has at another digest."""
    present = node_image_digests(socket)
    return [
        _name(entry)
        for entry in _layout_manifests(layout)
        if (names is None or _name(entry) in names) and present.get(_name(entry)) != entry.get("digest")
    ]


def import_layout(socket: Path, layout: Path, names: set[str] | None = None) -> list[str]:
    """Import the images of an OCI layout directory (those in `names`, or all), sending only the
    layers the node's containerd does not already hold: an unchanged image costs a second, a
    rebuilt one only its changed layers (the trainer's torch layer, gigabytes, travels once).
    Every image is imported even when present, because the import also unpacks it into the
    snapshotter, which an import that was cut short may not have done (the kubelet would then
    unpack gigabytes inside its 2-minute CreateContainer deadline). Returns the images that
    were missing or at another digest."""
    changed = missing_images(socket, layout, names)
    entries = [entry for entry in _layout_manifests(layout) if names is None or _name(entry) in names]
    if not entries:
        return []
    held = {line.strip() for line in _ctr_lines(socket, "content", "ls", "-q")}
    blobs: list[str] = []
    for entry in entries:
        manifest = json.loads(_blob_path(layout, str(entry["digest"])).read_text())
        # Manifest and config always travel (small; the importer reads them from the archive).
        blobs += [str(entry["digest"]), manifest["config"]["digest"]]
        blobs += [layer["digest"] for layer in manifest["layers"] if layer["digest"] not in held]
    ctr = subprocess.Popen(
        [*_ctr(socket), "images", "import", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert ctr.stdin is not None and ctr.stderr is not None
    try:
        with tarfile.open(fileobj=ctr.stdin, mode="w|") as tar:
            index = json.dumps({"schemaVersion": 2, "manifests": entries}).encode()
            for name, data in (("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            for digest in dict.fromkeys(blobs):
                tar.add(_blob_path(layout, digest), arcname=f"blobs/{digest.replace(':', '/', 1)}")
    except BrokenPipeError:
        pass  # ctr stopped reading: its exit status and stderr say why
    finally:
        ctr.stdin.close()
    stderr = ctr.stderr.read().decode(errors="replace")
    if ctr.wait() != 0:
        names_sent = ", ".join(_name(entry) for entry in entries)
        raise ImageError(f"importing {names_sent} from {layout} into {socket} failed: {stderr.strip()}")
    return sorted(changed)
