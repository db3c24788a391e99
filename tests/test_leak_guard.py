"""The e2e leak guard (e2e/harness/leaks.py) reads every file a test leaves, helm's Kubernetes client cache
included: only the description texts of cached OpenAPI documents are left out, nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2e.harness.leaks import file_leaks

DOCS = "a PRIVATE KEY block of the requester (CertificateSigningRequest)"
KEY = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----"


def _cached(folder: Path, where: tuple[str, ...], body: object) -> None:
    """Entries as client-go's disk cache writes them: a checksum, then the HTTP/1.1 or HTTP/2.0 response."""
    for n, protocol in enumerate(("HTTP/1.1", "HTTP/2.0")):
        path = folder.joinpath(*where, f"0e488a8e{n}")
        path.parent.mkdir(parents=True, exist_ok=True)
        response = f"{protocol} 200 OK\r\nContent-Type: application/json\r\n\r\n" + json.dumps(body)
        path.write_bytes(b"\x84\xdc\x1b[\xe007" + response.encode())


def _openapi(**schema: object) -> dict[str, object]:
    return {"openapi": "3.0.0", "paths": {}, "components": {"schemas": {"csr": {"description": DOCS, **schema}}}}


@pytest.mark.parametrize(
    ("where", "body", "leaks"),
    [
        pytest.param((".kube", "cache", "http"), _openapi(), False, id="an OpenAPI document's descriptions"),
        pytest.param((".kube", "cache", "http"), _openapi(example=KEY), True, id="a key elsewhere in the document"),
        pytest.param((".kube", "cache", "http"), {"kind": "Secret", "description": KEY}, True, id="not OpenAPI"),
        pytest.param(("home", "cache", "http"), _openapi(), True, id="an OpenAPI document elsewhere"),
    ],
)
def test_only_openapi_descriptions_in_the_kube_http_cache_are_left_out(
    tmp_path: Path, where: tuple[str, ...], body: object, leaks: bool
) -> None:
    """Key material anywhere but the description of a cached OpenAPI document is found."""
    _cached(tmp_path / "pod-work", where, body)
    assert len(file_leaks(tmp_path)) == (2 if leaks else 0)
