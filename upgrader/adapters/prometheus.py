"""The Prometheus HTTP client: instant queries over the HTTP API, credentials kept out of errors.

The queries, the parsing of their answers and the gate's decisions are in
``upgrader.metrics`` (pure); this adapter only speaks HTTP.
"""

from __future__ import annotations

import base64
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from email.message import Message
from typing import IO, Any

from upgrader.errors import InputError, UpgraderError
from upgrader.metrics import RETRYABLE_STATUS as _RETRYABLE_STATUS
from upgrader.metrics import MetricsQueryError, MetricsUnavailableError, Sample, parse_vector, public_url, queries


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: they would carry the Authorization header to another address."""

    def redirect_request(  # noqa: PLR0917 (the signature is urllib's)
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Message, newurl: str
    ) -> urllib.request.Request | None:
        return None


class PrometheusMetrics:
    """A ``MetricsPort`` over the Prometheus HTTP API (instant queries, one GET each)."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(
                f"Prometheus URL {public_url(url)!r} is not an http:// or https:// URL with a host",
                hint="set gates.prometheusUrl like http://prometheus.linkerd-viz.svc:9090",
            )
        self.url = public_url(url).rstrip("/")
        self._headers: dict[str, str] = {"Accept": "application/json"}
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._timeout = timeout
        self._opener = urllib.request.build_opener(_NoRedirect)

    def sample(self, namespace: str, window_seconds: int) -> Sample:
        """Inbound request rate, success rate and p99 of ``namespace`` over the last window."""
        q = queries(namespace, window_seconds)
        rate = self.query(q["rate"])
        return Sample(
            namespace=namespace,
            success_rate=self.query(q["success"]),
            p99_ms=self.query(q["p99"]),
            requests_per_second=rate or 0.0,
        )

    def query(self, promql: str) -> float | None:
        """One instant query; its single value, or None when there is no data."""
        endpoint = f"{self.url}/api/v1/query"
        address = f"{endpoint}?{urllib.parse.urlencode({'query': promql})}"
        request = urllib.request.Request(address, headers=self._headers)  # noqa: S310 (scheme checked in __init__)
        login = " -u USER:PASSWORD" if "Authorization" in self._headers else ""
        curl = f"curl -sG{login} {endpoint} --data-urlencode 'query={promql}'"
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc, promql, curl) from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise MetricsUnavailableError(
                f"Prometheus at {self.url} did not answer query {promql}: {reason}",
                hint=f"check gates.prometheusUrl is reachable from here, e.g. {curl}",
            ) from exc
        try:
            return parse_vector(body)
        except ValueError as exc:
            raise MetricsQueryError(
                f"Prometheus at {self.url} sent an unreadable answer to query {promql}: {exc}",
                hint=f"check gates.prometheusUrl points at the Prometheus API: {curl}",
            ) from exc

    def _http_error(self, exc: urllib.error.HTTPError, promql: str, curl: str) -> UpgraderError:
        detail = _error_detail(exc)
        message = f"Prometheus at {self.url} answered HTTP {exc.code} to query {promql}{detail}"
        if exc.code >= 500 or exc.code in _RETRYABLE_STATUS:
            return MetricsUnavailableError(message, hint=f"Prometheus is busy or down; retry later, or check: {curl}")
        if 300 <= exc.code < 400:
            return MetricsQueryError(message + " (a redirect)", hint="set gates.prometheusUrl to the final address")
        return MetricsQueryError(message, hint=f"check the query and that gates.prometheusUrl is the API root: {curl}")


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        raw = exc.read(4096)
    except (OSError, http.client.HTTPException):
        return ""
    finally:
        exc.close()
    try:
        doc: Any = json.loads(raw)
    except ValueError:
        return ""
    if isinstance(doc, dict) and doc.get("error"):
        return f" ({doc.get('errorType', 'error')}: {str(doc['error'])[:300]})"
    return ""
