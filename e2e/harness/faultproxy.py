"""A fault-injecting proxy in front of the local kube-apiserver, for the e2e fault tests.

It terminates TLS (a serving certificate for 127.0.0.1 signed by the cluster's CA, so a kubeconfig
with the cluster's CA trusts it) and forwards each HTTP/1.1 request to the real API server over TLS
with the admin client certificate (the identity the test kubeconfig has). Clients are offered
HTTP/1.1 only (ALPN), so Go clients (helm) do not speak HTTP/2 to it.

At ``rate``, a request is not forwarded but answered with a passing failure, drawn in turn from
``kinds``: ``429`` (with Retry-After: 1), ``500``, ``503`` (each with the API server's own Status
body), or ``reset`` (the connection closed with a TCP RST before the request reached the API
server). When ``only`` is given, only requests whose User-Agent starts with one of its prefixes are
candidates (the tests fault the Python client's requests and spare helm's: see e2e/test_faults.py).
Responses, watch streams included (chunked), are relayed as they come. ``injected`` counts what was
injected, by kind. The random draw is seeded: a run is repeatable.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import socketserver
import ssl
import struct
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import yaml

from e2e.harness import certs

KINDS = ("429", "500", "503", "reset")
_REASONS = {"429": "Too Many Requests", "500": "Internal Server Error", "503": "Service Unavailable"}
# What kube-apiserver itself answers (reason, message) for each status.
_STATUS = {
    "429": ("TooManyRequests", "Too many requests, please try again later."),
    "500": ("InternalError", "Internal error occurred: injected by the e2e fault proxy"),
    "503": ("ServiceUnavailable", "the server is currently unable to handle the request"),
}


class _Closed(Exception):
    """The peer closed the connection."""


def _read_line(f: socket.SocketIO | object) -> bytes:
    line: bytes = f.readline(65537)  # type: ignore[attr-defined]
    if not line:
        raise _Closed
    return line


def _read_head(f: object) -> list[bytes]:
    lines = [_read_line(f)]
    while lines[-1] not in (b"\r\n", b"\n"):
        lines.append(_read_line(f))
    return lines


def _header(lines: list[bytes], name: bytes) -> bytes | None:
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def _copy_body(src: object, dst: socket.socket, head: list[bytes], *, no_body: bool = False) -> bool:
    """Relay the body that follows ``head``; False when it ends at the connection's close."""
    if no_body:
        return True
    if (_header(head, b"transfer-encoding") or b"").lower() == b"chunked":
        while True:
            size_line = _read_line(src)
            dst.sendall(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the empty line
                    trailer = _read_line(src)
                    dst.sendall(trailer)
                    if trailer in (b"\r\n", b"\n"):
                        return True
            data = src.read(size + 2)  # type: ignore[attr-defined]
            if len(data) < size + 2:
                raise _Closed
            dst.sendall(data)
    length = _header(head, b"content-length")
    if length is not None:
        left = int(length)
        while left:
            data = src.read(min(left, 65536))  # type: ignore[attr-defined]
            if not data:
                raise _Closed
            dst.sendall(data)
            left -= len(data)
        return True
    if head[0].startswith(b"HTTP/"):  # a response without a length: until the connection closes
        while data := src.read1(65536):  # type: ignore[attr-defined]
            dst.sendall(data)
        return False
    return True  # a request without a body


class FaultProxy:
    """``FaultProxy(pki, upstream_port, rate=0.05).start()``; ``kubeconfig(src, dst)`` points a copy at it."""

    def __init__(
        self,
        pki: Path,
        upstream_port: int,
        *,
        rate: float,
        kinds: Sequence[str] = KINDS,
        only: Sequence[str] = (),
        seed: int = 14,
    ) -> None:
        self.rate, self.kinds, self.only = rate, tuple(kinds), tuple(a.encode() for a in only)
        self.upstream = ("127.0.0.1", upstream_port)
        self.injected: Counter[str] = Counter()
        self.forwarded = 0
        self._random = random.Random(seed)  # noqa: S311 - a repeatable fault draw, not a secret
        self._turn = 0
        self._lock = threading.Lock()
        ca = certs.KeyPair.load(pki, "ca")
        folder = self._folder = pki / "fault-proxy"
        folder.mkdir(exist_ok=True)
        crt, key = certs.issue(ca, "fault-proxy", dns=("localhost",), ips=("127.0.0.1",)).write(folder, "serving")
        self._server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._server_ctx.load_cert_chain(str(crt), str(key))
        self._server_ctx.set_alpn_protocols(["http/1.1"])
        self._client_ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self._client_ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self._client_ctx.set_alpn_protocols(["http/1.1"])
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port: int = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kubeconfig(self, source: Path) -> Path:
        """A copy of ``source`` whose clusters point at this proxy (beside the proxy's key, not in a test's files)."""
        target = self._folder / "kubeconfig"
        doc = yaml.safe_load(source.read_text())
        for cluster in doc["clusters"]:
            cluster["cluster"]["server"] = f"https://127.0.0.1:{self.port}"
        target.touch(mode=0o600)
        target.write_text(yaml.safe_dump(doc))
        return target

    def _draw(self, head: list[bytes]) -> str | None:
        agent = _header(head, b"user-agent") or b""
        with self._lock:
            spared = bool(self.only) and not agent.startswith(self.only)
            if spared or self._random.random() >= self.rate:
                self.forwarded += 1
                return None
            kind = self.kinds[self._turn % len(self.kinds)]
            self._turn += 1
            self.injected[kind] += 1
            return kind

    def _serve(self, raw: socket.socket) -> None:
        upstream: ssl.SSLSocket | None = None
        try:
            conn = self._server_ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            return
        client_in = conn.makefile("rb")
        try:
            while True:
                head = _read_head(client_in)
                body = _BodyBuffer()
                _copy_body(client_in, body, head)  # type: ignore[arg-type]
                kind = self._draw(head)
                if kind == "reset":
                    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if kind is not None:
                    reason, message = _STATUS[kind]
                    text = json.dumps(
                        {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
                        | {"message": message, "reason": reason, "code": int(kind)}
                    ).encode()
                    extra = "Retry-After: 1\r\n" if kind == "429" else ""
                    answer = (
                        f"HTTP/1.1 {kind} {_REASONS[kind]}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(text)}\r\n{extra}\r\n"
                    )
                    conn.sendall(answer.encode() + text)
                    continue
                if upstream is None:
                    upstream = self._client_ctx.wrap_socket(
                        socket.create_connection(self.upstream, timeout=None), server_hostname="127.0.0.1"
                    )
                    upstream_in = upstream.makefile("rb")
                upstream.sendall(b"".join(head) + body.data)
                response = _read_head(upstream_in)
                conn.sendall(b"".join(response))
                status = int(response[0].split()[1])
                method = head[0].split()[0]
                whole = _copy_body(
                    upstream_in, conn, response, no_body=method == b"HEAD" or status in (204, 304) or status < 200
                )
                if not whole:
                    return
        except (_Closed, OSError, ssl.SSLError, ValueError, IndexError):
            return
        finally:
            for sock in (upstream, conn):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()


class _BodyBuffer:
    """Collects a request body (the proxy decides on a fault before anything reaches the API server)."""

    def __init__(self) -> None:
        self.data = b""

    def sendall(self, chunk: bytes) -> None:
        self.data += chunk
