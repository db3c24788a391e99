"""Metric gates for data-plane waves: Linkerd proxy metrics read from Prometheus, judged purely.

Before and after each wave the caller takes a ``Sample`` per namespace through a
``MetricsPort`` (``PrometheusMetrics`` in real runs) and hands both to ``assess``, which
returns the problems found ([] = passed) and never does I/O. A namespace with no inbound
traffic in the window cannot be judged by metrics and passes; ``describe`` says so in the
one-line summary the caller logs.

``PrometheusMetrics`` sorts failures by whether a retry helps: an unreachable, overloaded
or rate-limiting Prometheus raises ``MetricsUnavailableError`` (retryable); a query it
rejects or an answer we cannot read raises ``MetricsQueryError`` (not retryable). Messages
name the URL with any ``user:pass@`` removed; credentials only travel in the request header.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from typing import IO, Any, Protocol

from upgrader.errors import InputError, UpgraderError
from upgrader.spec import Gates

_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_RETRYABLE_STATUS = frozenset({408, 429})
_EPSILON = 1e-9  # float slack so a drop of exactly the allowed amount passes


class MetricsUnavailableError(UpgraderError):
    """Prometheus did not answer usefully (refused, timed out, 5xx, 429); retrying later may help."""

    retryable = True


class MetricsQueryError(UpgraderError):
    """Prometheus rejected a query or sent an answer we cannot read; retrying will not help."""


@dataclass(frozen=True)
class Sample:
    """Inbound proxy metrics of one namespace over a window."""

    namespace: str
    success_rate: float | None  # None = no traffic in the window
    p99_ms: float | None
    requests_per_second: float  # 0.0 when none

    @property
    def idle(self) -> bool:
        """No inbound traffic in the window, so metric gates cannot judge this namespace."""
        return self.success_rate is None


class MetricsPort(Protocol):
    def sample(self, namespace: str, window_seconds: int) -> Sample: ...


def render_window(window_seconds: int) -> str:
    """Seconds as a PromQL range: ``1h``, ``5m`` or ``90s``."""
    if window_seconds <= 0:
        raise InputError(
            f"a metrics window must be longer than 0s, got {window_seconds}s", hint="set gates.metricsWindow"
        )
    if window_seconds % 3600 == 0:
        return f"{window_seconds // 3600}h"
    if window_seconds % 60 == 0:
        return f"{window_seconds // 60}m"
    return f"{window_seconds}s"


def queries(namespace: str, window_seconds: int) -> dict[str, str]:
    """The PromQL for a namespace's inbound request rate, success rate and p99 latency."""
    if not _NAMESPACE.match(namespace):
        raise InputError(f"{namespace!r} is not a Kubernetes namespace name", hint="namespaces are DNS labels")
    window = render_window(window_seconds)
    selector = f'namespace="{namespace}",direction="inbound"'
    rate = f"sum(rate(response_total{{{selector}}}[{window}]))"
    return {
        "rate": rate,
        "success": f'sum(rate(response_total{{{selector},classification="success"}}[{window}])) / {rate}',
        "p99": f"histogram_quantile(0.99, sum by (le) (rate(response_latency_ms_bucket{{{selector}}}[{window}])))",
    }


def public_url(url: str) -> str:
    """``url`` without ``user:pass@``, safe to show and log."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def parse_vector(body: bytes | str) -> float | None:
    """The single value of an instant-vector answer; None when empty or NaN. ValueError if malformed."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"the answer is not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise ValueError("the answer is not a JSON object")
    if doc.get("status") != "success":
        raise ValueError(f"status is {doc.get('status')!r} ({doc.get('errorType')}: {doc.get('error')})")
    data = doc.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        found = data.get("resultType") if isinstance(data, dict) else data
        raise ValueError(f"expected resultType 'vector', found {found!r}")
    result = data.get("result")
    if not isinstance(result, list):
        raise ValueError("data.result is not a list")
    if not result:
        return None
    if len(result) > 1:
        raise ValueError(f"expected one series, found {len(result)}")
    value = result[0].get("value") if isinstance(result[0], dict) else None
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], str)):
        raise ValueError(f'expected value [timestamp, "number"], found {value!r}')
    try:
        number = float(value[1])
    except ValueError as exc:
        raise ValueError(f"value {value[1]!r} is not a number") from exc
    return None if math.isnan(number) else number


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


def _pct(rate: float) -> str:
    text = f"{rate * 100:.2f}"
    return (text[:-1] if text.endswith("0") else text) + "%"


def _ms(value: float) -> str:
    if math.isinf(value):
        return "+Inf ms"
    return f"{value:.0f}ms" if value >= 10 else f"{value:.1f}ms"


def assess(before: Sample | None, after: Sample, gates: Gates) -> list[str]:
    """Problems with a namespace after a wave, compared with before it ([] = passed; idle passes)."""
    if after.success_rate is None:  # idle: metrics cannot judge it
        return []
    ns, rate, problems = after.namespace, after.success_rate, []
    if rate < gates.min_success_rate:
        problems.append(f"{ns}: success rate {_pct(rate)} < {_pct(gates.min_success_rate)}")
    if before is not None and before.success_rate is not None:
        drop = before.success_rate - rate
        if drop > gates.max_success_rate_drop + _EPSILON:
            problems.append(
                f"{ns}: success rate fell from {_pct(before.success_rate)} to {_pct(rate)}, "
                f"more than the {_pct(gates.max_success_rate_drop)} allowed"
            )
    p99 = after.p99_ms
    if p99 is not None and gates.max_p99_latency_ms is not None and p99 > gates.max_p99_latency_ms:
        problems.append(f"{ns}: p99 latency {_ms(p99)} > {_ms(gates.max_p99_latency_ms)}")
    if p99 is not None and before is not None and before.p99_ms is not None and before.p99_ms > 0:
        limit = before.p99_ms * gates.max_p99_increase
        if p99 > limit * (1 + _EPSILON):
            problems.append(
                f"{ns}: p99 latency {_ms(p99)} > {gates.max_p99_increase:g}x {_ms(before.p99_ms)} before ({_ms(limit)})"
            )
    return problems


def describe(before: Sample | None, after: Sample) -> str:
    """One line for the log, e.g. ``shop: success 99.8% (before 99.9%), p99 120ms (before 110ms), 12.0 rps``."""

    def figure(label: str, now: float | None, then: float | None, fmt: Callable[[float], str]) -> str:
        text = f"{label} {fmt(now) if now is not None else 'n/a'}"
        if before is not None:
            text += f" (before {fmt(then) if then is not None else 'n/a'})"
        return text

    parts = [
        figure("success", after.success_rate, before.success_rate if before else None, _pct),
        figure("p99", after.p99_ms, before.p99_ms if before else None, _ms),
        f"{after.requests_per_second:.1f} rps",
    ]
    line = f"{after.namespace}: " + ", ".join(parts)
    return line + " (no traffic: metric gates skipped)" if after.idle else line
