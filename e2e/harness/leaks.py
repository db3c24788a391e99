"""The issuer private key must never leave its two homes: Linkerd's issuer Secret and helm's release.

Every e2e test runs under a guard (``e2e/conftest.py``) that, after the test, looks for
private-key material in everything the test made upgrader write or print:

- the output of every ``upgrader`` command run through :func:`run_upgrader`;
- every file under the test's ``tmp_path`` (checkpoints, plans, reports), except inputs the
  test wrote on purpose under an ``inputs/`` folder, and except the description texts of the OpenAPI
  documents helm's Kubernetes client caches under ``.kube/cache/http`` (a pod's ``HOME``);
- every notification payload an e2e webhook receiver captured (``PAYLOADS``), and any string a
  test declared a credential (``CREDENTIALS``: a webhook URL's password or token) in the
  payloads, the outputs and the test's files;
- every Secret in the cluster, except helm's release records (``helm.sh/release.v1``, where
  helm keeps the values it was given) and the Secrets the identity itself lives in.

"Key material" is a PEM private-key header, in clear or base64-encoded (as Secret data and
some log encoders would carry it).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from kubernetes import client

# Where the issuer key belongs: Linkerd's identity Secrets (and the fixture webhook's own TLS).
KEY_HOMES = frozenset({"linkerd-identity-issuer", "linkerd-identity-token", "linkerd-policy-validator-k8s-tls"})
_HEADER = "PRIVATE KEY-----"


def _needles() -> tuple[str, ...]:
    """The header in clear and in its three base64 alignments."""
    out = ["PRIVATE KEY"]
    for pad in range(3):
        encoded = base64.b64encode(b"x" * pad + _HEADER.encode()).decode()
        skip = (pad * 4 + 2) // 3 + 1  # drop characters that depend on the padding bytes
        out.append(encoded[skip : skip + 12])
    return tuple(out)


NEEDLES = _needles()


def leaks_in(text: str) -> bool:
    return any(n in text for n in NEEDLES)


OUTPUTS: list[tuple[str, str]] = []  # (command, stdout+stderr) since the last guard check


def run_upgrader(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m upgrader ARGS``; its output is kept for the leak guard."""
    out = subprocess.run(
        [sys.executable, "-m", "upgrader", *args],
        env=env if env is not None else dict(os.environ),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    OUTPUTS.append((" ".join(args[:3]), out.stdout + out.stderr))
    return out


# client-go's (helm's, kubectl's) disk cache of API server responses: $HOME/.kube/cache/http. It holds the
# OpenAPI documents, whose descriptions say "a PRIVATE KEY block" (CertificateSigningRequest): documentation.
KUBE_HTTP_CACHE = (".kube", "cache", "http")
_STATUS_LINE = re.compile(r"HTTP/[0-9.]+ [0-9]{3} ")  # HTTP/1.1 or HTTP/2.0, as client-go dumps the response


def file_leaks(folder: Path) -> list[str]:
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "inputs" not in p.relative_to(folder).parts):
        if path.stat().st_size > 20_000_000:
            continue
        text = path.read_bytes().decode(errors="replace")
        if _in_kube_http_cache(path.relative_to(folder).parts):
            text = _without_openapi_descriptions(text)
        if leaks_in(text):
            found.append(str(path))
    return found


def _in_kube_http_cache(parts: tuple[str, ...]) -> bool:
    n = len(KUBE_HTTP_CACHE)
    return any(parts[i : i + n] == KUBE_HTTP_CACHE for i in range(len(parts) - n))


def _without_openapi_descriptions(text: str) -> str:
    """A cached response whose body is an OpenAPI document, with the documents' description texts left out
    (everything else still scanned); any other text as it is."""
    status = _STATUS_LINE.search(text, 0, 200)  # the entry's own header (a checksum) comes before the response
    if status is None:
        return text
    start = status.start()
    head, sep, body = text[start:].partition("\r\n\r\n")
    try:
        doc = json.loads(body) if sep else None
    except ValueError:
        return text
    if not (isinstance(doc, dict) and "openapi" in doc and "paths" in doc):
        return text
    return text[:start] + head + sep + json.dumps(_undocumented(doc))


def _undocumented(node: object) -> object:
    if isinstance(node, dict):
        return {k: _undocumented(v) for k, v in node.items() if not (k == "description" and isinstance(v, str))}
    if isinstance(node, list):
        return [_undocumented(v) for v in node]
    return node


def secret_leaks(api: client.ApiClient) -> list[str]:
    found = []
    for secret in client.CoreV1Api(api).list_secret_for_all_namespaces().items:
        if secret.type == "helm.sh/release.v1" or secret.metadata.name in KEY_HOMES:
            continue
        texts: Iterable[str] = (base64.b64decode(v).decode(errors="replace") for v in (secret.data or {}).values() if v)
        if any(leaks_in(t) for t in [*texts, *(secret.metadata.annotations or {}).values()]):
            found.append(f"{secret.metadata.namespace}/{secret.metadata.name}")
    return found


def output_leaks() -> list[str]:
    found = [command for command, text in OUTPUTS if leaks_in(text)]
    OUTPUTS.clear()
    return found


# Notification payloads an e2e receiver captured (see e2e/test_notify_audit.py), and strings a test declares
# must never leave upgrader (a webhook URL's password or token): both checked after every test.
PAYLOADS: list[str] = []
CREDENTIALS: set[str] = set()


def payload_leaks() -> list[str]:
    """Each captured payload carrying key material or a declared credential; each upgrader output or file
    text carrying a declared credential (checked before ``output_leaks`` clears the outputs)."""
    found = [f"notification payload {n + 1}" for n, text in enumerate(PAYLOADS) if _carries(text)]
    found += [f"output of `upgrader {command}` (a credential)" for command, text in OUTPUTS if _secret(text)]
    PAYLOADS.clear()
    return found


def credential_files(folder: Path) -> list[str]:
    """Files under ``folder`` (outside ``inputs/``) that carry a declared credential."""
    if not CREDENTIALS:
        return []
    return [
        str(path)
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and "inputs" not in p.relative_to(folder).parts)
        if path.stat().st_size <= 20_000_000 and _secret(path.read_bytes().decode(errors="replace"))
    ]


def _carries(text: str) -> bool:
    return leaks_in(text) or _secret(text)


def _secret(text: str) -> bool:
    return any(c in text for c in CREDENTIALS)
