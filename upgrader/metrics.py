"""Metric gates for data-plane waves: Linkerd proxy metrics read from Prometheus, judged purely.

Before and after each wave the caller takes a ``Sample`` per namespace through a
``MetricsPort`` (``PrometheusMetrics`` in real runs) and hands both to ``assess``, which
returns the problems found ([] = passed) and never does I/O. A namespace with no inbound
traffic in the window (the proxies' admin port, scraped by Prometheus itself, does not count)
cannot be judged by metrics and passes; ``describe`` says so in the one-line summary the
caller logs.

``PrometheusMetrics`` sorts failures by whether a retry helps: an unreachable, overloaded
or rate-limiting Prometheus raises ``MetricsUnavailableError`` (retryable); a query it
rejects or an answer we cannot read raises ``MetricsQueryError`` (not retryable). Messages
name the URL with any ``user:pass@`` removed; credentials only travel in the request header.
"""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from upgrader.errors import InputError, TransientError, UpgraderError
from upgrader.spec import Gates

_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
RETRYABLE_STATUS = frozenset({408, 429})  # besides 5xx: the server may answer later
# The proxy counts the requests to its own admin server (Prometheus's scrapes of /metrics, the
# kubelet's probes of the proxy) as inbound responses with target_port="4191" (Linkerd's
# proxy.ports.admin default): left in, a namespace serving nothing looks busy and 100% healthy.
PROXY_ADMIN_PORT = 4191
_EPSILON = 1e-9  # float slack so a drop of exactly the allowed amount passes


class MetricsUnavailableError(TransientError):
    """Prometheus did not answer usefully (refused, timed out, 5xx, 429); retrying later may help."""


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
    """The PromQL for a namespace's inbound request rate, success rate and p99 latency (the proxies' own
    admin traffic left out)."""
    if not _NAMESPACE.match(namespace):
        raise InputError(f"{namespace!r} is not a Kubernetes namespace name", hint="namespaces are DNS labels")
    window = render_window(window_seconds)
    selector = f'namespace="{namespace}",direction="inbound",target_port!="{PROXY_ADMIN_PORT}"'
    rate = f"sum(rate(response_total{{{selector}}}[{window}]))"
    success = f'sum(rate(response_total{{{selector},classification="success"}}[{window}]))'
    return {
        "rate": rate,
        # A pod that never succeeded has no success series at all: "or vector(0)" makes that 0% rather
        # than an empty answer, which would read as "no traffic" and pass a workload failing every request.
        "success": f"({success} or vector(0)) / {rate}",
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


def _pct(rate: float) -> str:
    text = f"{rate * 100:.2f}"
    return (text[:-1] if text.endswith("0") else text) + "%"


def _ms(value: float) -> str:
    if math.isinf(value):
        return "+Inf ms"
    return f"{value:.0f}ms" if value >= 10 else f"{value:.1f}ms"


def assess(before: Sample | None, after: Sample, gates: Gates) -> list[str]:
    """Problems with a namespace after a wave, compared with before it ([] = passed). A namespace idle after
    the wave passes only if it was idle before too: traffic that stops with the wave (new proxies not serving,
    or not scraped) is a problem, never a silent pass."""
    if after.success_rate is None:  # idle: metrics cannot judge it
        if before is not None and before.success_rate is not None:
            return [
                f"{after.namespace}: no inbound traffic after the wave (before: {before.requests_per_second:.1f} rps, "
                f"success {_pct(before.success_rate)}): the new proxies are not serving or not scraped"
            ]
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
