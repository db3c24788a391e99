"""The Prometheus client against a loopback HTTP API serving canned answers: errors, timeouts, credentials."""

from __future__ import annotations

import json
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest

from tests.canned_prometheus import CannedPrometheus
from upgrader.adapters.prometheus import PrometheusMetrics
from upgrader.errors import UpgraderError
from upgrader.metrics import MetricsQueryError, MetricsUnavailableError, queries


@pytest.fixture
def prom() -> Iterator[CannedPrometheus]:
    """A canned Prometheus on a free loopback port."""
    with CannedPrometheus() as server:
        yield server


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
