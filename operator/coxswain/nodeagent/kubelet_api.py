"""The sliver of the kubelet's HTTPS API that `kubectl logs` needs.

The API server proxies `kubectl logs` to `https://<node InternalIP>:<kubeletEndpoint port>/
containerLogs/<ns>/<pod>/<container>`. It does not check a kubelet's serving certificate
unless started with --kubelet-certificate-authority (the dev cluster is not), so a
self-signed one made at start-up serves. It listens on the bridge address only; like an
unauthenticated kubelet port, any pod of this node could read logs through it (dev only).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coxswain.nodeagent.logs import LogNotFound, find_logs

log = logging.getLogger(__name__)

KUBELET_PORT = 10250


def _self_signed(directory: Path, address: str, name: str) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} kubelet (coxswain node agent)")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address)), x509.DNSName(name)]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "kubelet.crt", directory / "kubelet.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


class KubeletApi:
    def __init__(
        self,
        node_dir: Path,
        address: str,
        node_name: str,
        running: Callable[[str, str, str], bool],
        port: int = KUBELET_PORT,
    ) -> None:
        """`running(namespace, pod, container)`: whether that container runs now (ends a follow)."""
        self.node_dir = node_dir
        self.running = running
        self.address = address
        self.node_name = node_name
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        context = _self_signed(self.node_dir / "pki", self.address, self.node_name)
        self._server = await asyncio.start_server(self._serve, self.address, self.port, ssl=context)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, target, _ = request.split(b"\r\n", 1)[0].decode(errors="replace").split(" ", 2)
            await self._handle(method, target, writer)
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _handle(self, method: str, target: str, writer: asyncio.StreamWriter) -> None:
        url = urlsplit(target)
        parts = [unquote(p) for p in url.path.split("/") if p]
        if method != "GET" or len(parts) != 4 or parts[0] != "containerLogs":
            await _reply(
                writer, 404, b"the coxswain node agent serves only /containerLogs/<ns>/<pod>/<container>\n"
            )
            return
        _, namespace, pod, container = parts
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            found = find_logs(pod, namespace, container, node_dir=self.node_dir)
        except LogNotFound as e:
            await _reply(writer, 404, f"{e}\n".encode())
            return
        files = list(found.files)
        if query.get("previous") in ("true", "1"):
            files = files[-2:-1]
            if not files:
                await _reply(
                    writer,
                    400,
                    f"previous terminated container {container!r} in pod {pod!r} not found\n".encode(),
                )
                return
        else:
            files = files[-1:]
        if not files:
            await _reply(
                writer, 400, f"container {container!r} in pod {pod!r} is waiting to start\n".encode()
            )
            return
        path = files[0]
        data = await asyncio.to_thread(path.read_bytes)
        if "tailLines" in query and query["tailLines"].isdigit():
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[len(lines) - int(query["tailLines"]) :]) if int(query["tailLines"]) else b""
            offset = await asyncio.to_thread(lambda: path.stat().st_size)
        else:
            offset = len(data)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n" + data)
        await writer.drain()
        if query.get("follow") not in ("true", "1"):
            return
        # Follow until this run of the container has ended or the client left, as the kubelet does.
        with open(path, "rb") as f:  # noqa: ASYNC230 - a small local file, read in chunks
            f.seek(offset)
            while True:
                chunk = f.read(65536)
                if chunk:
                    writer.write(chunk)
                    await writer.drain()
                    continue
                if not self.running(namespace, pod, container) or writer.is_closing():
                    rest = f.read()
                    if rest:
                        writer.write(rest)
                        await writer.drain()
                    return
                await asyncio.sleep(0.3)


async def _reply(writer: asyncio.StreamWriter, code: int, body: bytes) -> None:
    reason = {400: "Bad Request", 404: "Not Found"}.get(code, "OK")
    writer.write(
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()
