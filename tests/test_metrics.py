"""Metric gates: the pure assess/describe rules, the PromQL we send, and how answers are read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from upgrader.adapters.prometheus import PrometheusMetrics
from upgrader.errors import InputError
from upgrader.metrics import Sample, assess, describe, parse_vector, public_url, queries
from upgrader.spec import Gates, load_spec

GATES = Gates(min_success_rate=0.99, max_success_rate_drop=0.01, max_p99_latency_ms=200, max_p99_increase=1.5)


def sample(success: float | None = 0.999, p99: float | None = 100.0, rps: float = 10.0) -> Sample:
    return Sample("shop", success, p99, rps)


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        pytest.param(sample(), sample(), [], id="a steady namespace passes"),
        pytest.param(None, sample(), [], id="a healthy namespace with no sample before passes"),
        pytest.param(sample(None, None, 0.0), sample(None, None, 0.0), [], id="a namespace idle throughout passes"),
        pytest.param(None, sample(None, None, 0.0), [], id="an idle namespace with no sample before passes"),
        pytest.param(
            sample(),
            sample(None, None, 0.0),
            [
                "shop: no inbound traffic after the wave (before: 10.0 rps, success 99.9%): the new proxies are not "
                "serving or not scraped"
            ],
            id="traffic that stops with the wave fails",
        ),
        pytest.param(sample(None, None, 0.0), sample(), [], id="a namespace idle before is judged on absolute gates"),
        pytest.param(
            sample(0.995), sample(0.985), ["shop: success rate 98.5% < 99.0%"], id="success below the minimum fails"
        ),
        pytest.param(
            sample(1.0),
            sample(0.9899),
            [
                "shop: success rate 98.99% < 99.0%",
                "shop: success rate fell from 100.0% to 98.99%, more than the 1.0% allowed",
            ],
            id="a drop past the allowance fails and names both figures",
        ),
        pytest.param(sample(1.0), sample(0.99), [], id="a drop of exactly the allowance passes"),
        pytest.param(
            sample(0.999),
            sample(0.995),
            [],
            id="a drop within the allowance passes",
        ),
        pytest.param(None, sample(p99=250.0), ["shop: p99 latency 250ms > 200ms"], id="p99 over the ceiling fails"),
        pytest.param(
            sample(p99=80.0),
            sample(p99=130.0),
            ["shop: p99 latency 130ms > 1.5x 80ms before (120ms)"],
            id="p99 growing past the factor fails",
        ),
        pytest.param(sample(p99=80.0), sample(p99=120.0), [], id="p99 growing by exactly the factor passes"),
        pytest.param(sample(p99=0.0), sample(p99=5.0), [], id="a zero p99 before is no baseline"),
        pytest.param(sample(p99=None), sample(p99=150.0), [], id="a missing p99 before is no baseline"),
        pytest.param(sample(), sample(p99=None), [], id="a missing p99 after is not judged"),
    ],
)
def test_assess(before: Sample | None, after: Sample, expected: list[str]) -> None:
    """Each gate rule passes or fails with a message naming the namespace and the figures."""
    assert assess(before, after, GATES) == expected


def test_assess_without_a_latency_ceiling_only_compares_with_before() -> None:
    """With maxP99LatencyMs unset, a high but steady p99 passes."""
    assert assess(sample(p99=900.0), sample(p99=1000.0), Gates()) == []


def test_describe_shows_after_and_before() -> None:
    """The log line gives success, p99 and rate, with the figures from before the wave."""
    line = describe(sample(0.999, 110.0), Sample("shop", 0.998, 120.0, 12.0))
    assert line == "shop: success 99.8% (before 99.9%), p99 120ms (before 110ms), 12.0 rps"


def test_describe_without_before_and_idle() -> None:
    """Without a sample before there is no 'before'; an idle namespace says its gates were skipped."""
    assert describe(None, sample(0.95, 4.25)) == "shop: success 95.0%, p99 4.2ms, 10.0 rps"
    assert describe(sample(), Sample("shop", None, None, 0.0)) == (
        "shop: success n/a (before 99.9%), p99 n/a (before 100ms), 0.0 rps (no traffic: metric gates skipped)"
    )


def test_queries_are_inbound_proxy_metrics_of_one_namespace() -> None:
    """The three queries read Linkerd's inbound response metrics over the rendered window, without the
    requests to the proxies' admin port (Prometheus's own scrapes would make an idle namespace look healthy);
    no success series at all is 0% success, not "no answer" (which reads as idle)."""
    selector = 'namespace="shop",direction="inbound",target_port!="4191"'
    rate = f"sum(rate(response_total{{{selector}}}[5m]))"
    assert queries("shop", 300) == {
        "rate": rate,
        "success": f'(sum(rate(response_total{{{selector},classification="success"}}[5m])) or vector(0)) / {rate}',
        "p99": f"histogram_quantile(0.99, sum by (le) (rate(response_latency_ms_bucket{{{selector}}}[5m])))",
    }


@pytest.mark.parametrize(("seconds", "window"), [(90, "90s"), (300, "5m"), (3600, "1h"), (5400, "90m")])
def test_windows_render_as_promql_ranges(seconds: int, window: str) -> None:
    """Windows use the largest whole unit."""
    assert f"[{window}]" in queries("shop", seconds)["rate"]


@pytest.mark.parametrize(
    ("namespace", "seconds"),
    [
        pytest.param('shop"} or vector(1) or {x="', 60, id="a namespace that would inject PromQL"),
        pytest.param("shop", 0, id="an empty window"),
    ],
)
def test_bad_query_inputs_are_refused(namespace: str, seconds: int) -> None:
    """Only DNS-label namespaces and positive windows become queries."""
    with pytest.raises(InputError):
        queries(namespace, seconds)


def _vector(result: list[object], status: str = "success", result_type: str = "vector") -> str:
    return json.dumps({"status": status, "data": {"resultType": result_type, "result": result}})


@pytest.mark.parametrize(
    ("body", "value"),
    [
        pytest.param(_vector([{"metric": {}, "value": [1.5, "0.999"]}]), 0.999, id="one value"),
        pytest.param(_vector([]), None, id="an empty result is no data"),
        pytest.param(_vector([{"metric": {}, "value": [1.5, "NaN"]}]), None, id="NaN is no data"),
        pytest.param(_vector([{"metric": {}, "value": [1.5, "+Inf"]}]), float("inf"), id="+Inf stays infinite"),
    ],
)
def test_parse_vector_reads_values(body: str, value: float | None) -> None:
    """An instant vector gives its single value, or None for no data."""
    assert parse_vector(body) == value


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param("<html>", "not JSON", id="malformed JSON"),
        pytest.param("[]", "not a JSON object", id="a JSON list"),
        pytest.param(
            json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"}),
            "bad_data: parse error",
            id="an error status",
        ),
        pytest.param(_vector([], result_type="matrix"), "expected resultType 'vector'", id="a range vector"),
        pytest.param(
            _vector([{"metric": {"a": "1"}, "value": [1, "1"]}, {"metric": {"a": "2"}, "value": [1, "2"]}]),
            "expected one series, found 2",
            id="two series",
        ),
        pytest.param(_vector([{"metric": {}, "value": [1, 2]}]), "expected value", id="a number not a string"),
        pytest.param(_vector([{"metric": {}, "value": [1, "lots"]}]), "not a number", id="a non-numeric string"),
    ],
)
def test_parse_vector_is_strict(body: str, message: str) -> None:
    """Anything but a well-formed instant vector is a ValueError saying what was wrong."""
    with pytest.raises(ValueError, match=message):
        parse_vector(body)


def test_public_url_strips_userinfo() -> None:
    """Credentials in a URL never reach a message."""
    assert public_url("https://bob:s3cret@prom.example:9090/prom") == "https://prom.example:9090/prom"
    assert public_url("http://prom:9090") == "http://prom:9090"


@pytest.mark.parametrize("url", ["ftp://prom:9090", "prom:9090", "http://"])
def test_prometheus_metrics_refuses_non_http_urls(url: str) -> None:
    """Only http(s) URLs with a host are used."""
    with pytest.raises(InputError, match=r"http:// or https://"):
        PrometheusMetrics(url)


def test_gates_read_the_new_keys_in_camel_case(tmp_path: Path) -> None:
    """maxSuccessRateDrop and maxP99Increase come from the spec, with defaults of 1 point and 1.5x."""
    path = tmp_path / "spec.yaml"
    path.write_text("gates:\n  prometheusUrl: https://prom:9090\n  maxSuccessRateDrop: 0.02\n  maxP99Increase: 2\n")
    gates = load_spec(path).gates
    assert (gates.prometheus_url, gates.max_success_rate_drop, gates.max_p99_increase) == ("https://prom:9090", 0.02, 2)
    assert (Gates().max_success_rate_drop, Gates().max_p99_increase) == (0.01, 1.5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("prometheusUrl: bob:s3cret@prom:9090", "http:// or https:// URL", id="a URL without a scheme"),
        pytest.param("prometheusUrl: 'http://'", "http:// or https:// URL", id="a URL without a host"),
        pytest.param("maxP99Increase: 0.5", "gates.maxP99Increase", id="a p99 factor below 1"),
        pytest.param("maxSuccessRateDrop: 2", "gates.maxSuccessRateDrop", id="a drop above 100%"),
        pytest.param("metricsWindow: 0s", "longer than 0s", id="an empty metrics window"),
    ],
)
def test_bad_gates_are_input_errors(tmp_path: Path, text: str, message: str) -> None:
    """Bad gate settings are InputErrors naming the field, and never echo a URL's credentials."""
    path = tmp_path / "spec.yaml"
    path.write_text(f"gates:\n  {text}\n")
    with pytest.raises(InputError, match=message) as info:
        load_spec(path)
    assert "s3cret" not in info.value.message
