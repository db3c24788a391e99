"""An admission webhook served from the test process over TLS on 127.0.0.1.

With no kube-proxy and fake pod IPs, the API server cannot reach a webhook through a
Service, so test webhooks are registered by URL (``clientConfig.url``) with a ``caBundle``.
``WebhookServer`` serves ``POST /mutate``: it hands each AdmissionReview request to a
``mutate`` callback returning JSONPatch operations (or None to allow unchanged) and records
every request it saw.
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from e2e.harness import certs

Mutate = Callable[[dict[str, Any]], list[dict[str, Any]] | None]


def webhook_tls() -> tuple[certs.KeyPair, certs.KeyPair]:
    """A CA and a serving certificate for 127.0.0.1 signed by it."""
    ca = certs.new_ca("upgrader-e2e-webhook-ca")
    return ca, certs.issue(ca, "127.0.0.1", ips=("127.0.0.1",), dns=("localhost",))


def ca_bundle(ca: certs.KeyPair) -> str:
    """Base64 PEM of a CA, as ``clientConfig.caBundle`` wants it."""
    return base64.b64encode(ca.cert_pem).decode()


class WebhookServer:
    """A TLS webhook on a loopback port (free unless given). Use as a context manager.

    Every POSTed AdmissionReview goes to ``mutate`` whatever the path (the request's own
    ``kind`` tells pods from services or policy objects); ``records`` keeps the requests.
    """

    def __init__(
        self,
        mutate: Mutate,
        *,
        port: int = 0,
        tls: tuple[certs.KeyPair, certs.KeyPair] | None = None,
        records: bool = True,
    ) -> None:
        self.mutate = mutate
        self.requests: list[dict[str, Any]] = []
        self._records = records
        self._port = port
        self._ca, self._serving = tls or webhook_tls()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def ca_bundle(self) -> str:
        """Base64 PEM of the CA that signed the serving certificate (for ``caBundle``)."""
        return ca_bundle(self._ca)

    @property
    def url(self) -> str:
        assert self._server is not None, "webhook not started"
        return f"https://127.0.0.1:{self._server.server_address[1]}/mutate"

    def __enter__(self) -> WebhookServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                request = review["request"]
                if owner._records:
                    owner.requests.append(request)
                response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
                patch = owner.mutate(request)
                if patch:
                    response["patchType"] = "JSONPatch"
                    response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
                body = json.dumps(
                    {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as tmp:
            crt, key = self._serving.write(Path(tmp), "serving")
            ctx.load_cert_chain(str(crt), str(key))
        server = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="e2e-webhook", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Block until interrupted (for a webhook run as its own process)."""
        assert self._thread is not None, "enter the context first"
        self._thread.join()

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
