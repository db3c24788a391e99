"""The metric gate against a real HTTP Prometheus API serving canned series (no cluster needed)."""

from __future__ import annotations

import json
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest

from e2e.fixtures.prometheus import CannedPrometheus
from upgrader.adapters.prometheus import PrometheusMetrics
from upgrader.errors import UpgraderError
from upgrader.metrics import MetricsQueryError, MetricsUnavailableError, assess, queries
from upgrader.spec import Gates

pytestmark = pytest.mark.e2e

GATES = Gates(min_success_rate=0.99, max_p99_latency_ms=500, max_p99_increase=1.5)


@pytest.fixture
def prom() -> Iterator[CannedPrometheus]:
    """A canned Prometheus on a free loopback port."""
    with CannedPrometheus() as server:
        yield server


def test_healthy_namespace_passes_the_gate(prom: CannedPrometheus) -> None:
    """Healthy before and after: the gate passes, having asked the three queries each time."""
    metrics = PrometheusMetrics(prom.url)
    prom.set("shop", success_rate=0.999, p99_ms=80.0, rps=10.0)
    before = metrics.sample("shop", 300)
    prom.set("shop", success_rate=0.998, p99_ms=90.0, rps=12.0)
    after = metrics.sample("shop", 300)
    assert (after.success_rate, after.p99_ms, after.requests_per_second) == (0.998, 90.0, 12.0)
    assert assess(before, after, GATES) == []
    assert prom.queries == [*queries("shop", 300).values()] * 2


def test_degraded_namespace_fails_naming_the_figures(prom: CannedPrometheus) -> None:
    """A success-rate drop and a p99 jump after the wave are reported with their numbers."""
    metrics = PrometheusMetrics(prom.url)
    prom.set("shop", success_rate=0.999, p99_ms=80.0, rps=10.0)
    before = metrics.sample("shop", 90)
    prom.set("shop", success_rate=0.91, p99_ms=400.0, rps=10.0)
    after = metrics.sample("shop", 90)
    assert assess(before, after, GATES) == [
        "shop: success rate 91.0% < 99.0%",
        "shop: success rate fell from 99.9% to 91.0%, more than the 1.0% allowed",
        "shop: p99 latency 400ms > 1.5x 80ms before (120ms)",
    ]
    assert all("[90s]" in q for q in prom.queries)


def test_namespace_without_series_is_idle_and_passes(prom: CannedPrometheus) -> None:
    """Empty results and NaN read as no traffic; the gate cannot judge and passes."""
    metrics = PrometheusMetrics(prom.url)
    prom.set("quiet", success_rate=float("nan"), p99_ms=float("nan"), rps=0.0)
    for namespace in ("quiet", "never-set"):
        idle = metrics.sample(namespace, 300)
        assert (idle.success_rate, idle.p99_ms, idle.requests_per_second) == (None, None, 0.0)
        assert assess(None, idle, GATES) == []


def test_unreachable_prometheus_is_retryable() -> None:
    """A closed port is a retryable MetricsUnavailableError naming the URL and the query."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(MetricsUnavailableError) as info:
        PrometheusMetrics(f"http://127.0.0.1:{port}", timeout=2).sample("shop", 300)
    assert info.value.retryable
    assert f"http://127.0.0.1:{port}" in info.value.message
    assert 'namespace="shop"' in info.value.message


def test_prometheus_that_never_answers_times_out_retryably() -> None:
    """A listener that never answers hits the per-request timeout: retryable."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(MetricsUnavailableError, match="did not answer") as info:
            PrometheusMetrics(url, timeout=0.3).sample("shop", 300)
    assert info.value.retryable


@pytest.mark.parametrize("status", [503, 500, 429])
def test_busy_prometheus_is_retryable(prom: CannedPrometheus, status: int) -> None:
    """5xx and 429 answers are retryable, and the next try succeeds."""
    prom.set("shop")
    metrics = PrometheusMetrics(prom.url)
    prom.fail_next(1, status=status)
    with pytest.raises(MetricsUnavailableError, match=f"HTTP {status}") as info:
        metrics.sample("shop", 300)
    assert info.value.retryable
    assert metrics.sample("shop", 300).success_rate == 1.0


def test_rejected_query_is_not_retryable(prom: CannedPrometheus) -> None:
    """A 400 is a MetricsQueryError that is not retryable and carries Prometheus's own error."""
    metrics = PrometheusMetrics(prom.url)
    with pytest.raises(MetricsQueryError) as info:
        metrics.query("up{")
    assert not info.value.retryable
    assert "HTTP 400" in info.value.message
    assert "bad_data" in info.value.message
    assert "up{" in info.value.message
    assert prom.url in info.value.message


def test_malformed_answer_is_not_retryable(prom: CannedPrometheus) -> None:
    """A 200 whose body is not Prometheus JSON is a non-retryable error naming URL and query."""
    metrics = PrometheusMetrics(prom.url)
    prom.fail_next(1, status=200, body=b"<html>login</html>")
    with pytest.raises(MetricsQueryError, match="not JSON") as info:
        metrics.sample("shop", 300)
    assert not info.value.retryable
    assert prom.url in info.value.message
    assert "response_total" in info.value.message


@pytest.mark.parametrize("status", [503, 400])
def test_credentials_go_in_the_header_never_in_messages(prom: CannedPrometheus, status: int) -> None:
    """user:pass@ in the URL becomes Basic auth; errors name the URL without it."""
    metrics = PrometheusMetrics(prom.url.replace("http://", "http://bob:s3cret@"))
    prom.fail_next(1, status=status)
    with pytest.raises(UpgraderError) as info:
        metrics.sample("shop", 300)
    shown = f"{info.value.message} {info.value.hint} {info.value!s} {info.value.__cause__!s}"
    assert "s3cret" not in shown
    assert "bob" not in shown
    assert prom.url in shown
    assert prom.authorizations == ["Basic Ym9iOnMzY3JldA=="]  # base64("bob:s3cret")


def test_unreachable_with_credentials_hides_them() -> None:
    """Even a connection failure names the URL without its credentials."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(MetricsUnavailableError) as info:
        PrometheusMetrics(f"http://bob:s3cret@127.0.0.1:{port}", timeout=2).sample("shop", 300)
    assert "s3cret" not in f"{info.value.message} {info.value.hint} {info.value.__cause__!s}"


def test_canned_prometheus_answers_post_form_queries(prom: CannedPrometheus) -> None:
    """Like real Prometheus, the fixture takes the query as a POSTed form too."""
    prom.set("shop", p99_ms=42.5)
    form = urllib.parse.urlencode({"query": queries("shop", 300)["p99"]}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{prom.url}/api/v1/query", data=form)) as response:  # noqa: S310
        answer = json.loads(response.read())
    assert answer["status"] == "success"
    assert answer["data"]["resultType"] == "vector"
    assert answer["data"]["result"][0]["value"][1] == "42.5"
