"""The helm adapter: its pure parts, and helm's errors as the adapter raises them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from pyhelm3 import errors as helm_errors

from upgrader.adapters.helm import HelmAdapter
from upgrader.discovery import split_chart
from upgrader.errors import ChartNotFoundError, ClusterUnreachableError, TransientError


@pytest.mark.parametrize(
    ("chart", "expected"),
    [
        pytest.param("linkerd-control-plane-1.16.11", ("linkerd-control-plane", "1.16.11"), id="stable semver"),
        pytest.param(
            "linkerd-control-plane-1.18.10-edge",
            ("linkerd-control-plane", "1.18.10-edge"),
            id="old edge chart with -edge suffix",
        ),
        pytest.param("linkerd-crds-2024.8.2", ("linkerd-crds", "2024.8.2"), id="calendar edge chart"),
        pytest.param("linkerd2-2.11.5", ("linkerd2", "2.11.5"), id="pre-2.12 linkerd2 chart"),
        pytest.param("smoke", ("smoke", ""), id="no version"),
    ],
)
def test_split_chart(chart: str, expected: tuple[str, str]) -> None:
    """`helm list` joins chart name and version with a dash; we split them apart again."""
    assert split_chart(chart) == expected


class _Command:
    """pyhelm3's runner answering every ``helm ...`` with ``stderr`` and exit code 1."""

    def __init__(self, stderr: str) -> None:
        self.stderr = stderr.encode()
        self.runs: list[list[str]] = []

    async def run(self, command: list[str], input: bytes | None = None) -> bytes:
        self.runs.append(command)
        raise helm_errors.Error(1, b"", self.stderr)


@pytest.mark.parametrize(
    "stderr",
    [
        pytest.param("Error: no repositories configured", id="no repositories at all"),
        pytest.param('Error: no repo named "linkerd" found', id="another repository only"),
    ],
)
def test_searching_a_repository_that_is_not_added_finds_none(stderr: str) -> None:
    """helm's missing-repository error is ChartNotFoundError at the edge; search_repo answers None."""
    command = _Command(stderr)
    assert HelmAdapter(command=command, sleep=lambda _s: None).search_repo("linkerd", "linkerd-control-plane") is None
    assert len(command.runs) == 1


def test_a_chart_version_missing_from_the_index_is_chart_not_found() -> None:
    """`helm template` of a version the index lacks is ChartNotFoundError (preflight: cannot check the render)."""
    stderr = (
        "Error: chart \"linkerd-control-plane\" matching 9.9.9 not found in linkerd index. (try 'helm repo update')"
    )
    with pytest.raises(ChartNotFoundError, match=r"9\.9\.9"):
        HelmAdapter(command=_Command(stderr), sleep=lambda _s: None).template(
            "linkerd/linkerd-control-plane", "9.9.9", "linkerd", {}
        )


class _Pull:
    """pyhelm3's runner answering ``helm pull --untar`` by unpacking a chart with ``files`` into --untardir."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files
        self.runs: list[list[str]] = []

    async def run(self, command: list[str], input: bytes | None = None) -> bytes:
        self.runs.append(command)
        folder = Path(command[command.index("--untardir") + 1]) / "linkerd-control-plane"
        folder.mkdir()
        for name, text in self.files.items():
            (folder / name).write_text(text)
        return b""


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param({"values-ha.yaml": "highAvailability: true\n"}, "highAvailability: true\n", id="file shipped"),
        pytest.param({"values.yaml": "a: 1\n"}, None, id="file absent is None"),
    ],
)
def test_chart_file_reads_a_file_shipped_inside_the_chart(files: dict[str, str], expected: str | None) -> None:
    """chart_file pulls and unpacks the chart at the version and reads the named file from it."""
    command = _Pull({"Chart.yaml": "name: linkerd-control-plane\n", **files})
    helm = HelmAdapter(command=command, sleep=lambda _s: None)
    assert helm.chart_file("linkerd/linkerd-control-plane", "1.16.11", "values-ha.yaml") == expected
    (run,) = command.runs
    assert run[:4] == ["pull", "linkerd/linkerd-control-plane", "--version", "1.16.11"]
    assert "--untar" in run


class _History:
    """pyhelm3's ``history``: unreachable (a dial error) or hanging for ``hang`` seconds."""

    def __init__(self, *, hang: float = 0.0) -> None:
        self.hang = hang
        self.calls = 0

    async def history(self, release: str, **_kw: Any) -> list[dict[str, Any]]:
        self.calls += 1
        if self.hang:
            await asyncio.sleep(self.hang)
        raise helm_errors.Error(1, b"", b"Error: Kubernetes cluster unreachable: dial tcp 10.0.0.1:6443: i/o timeout")


def test_history_once_tries_once_where_history_retries() -> None:
    """status's live look is one attempt: an unreachable cluster is not asked five times."""
    command = _History()
    with pytest.raises(TransientError):
        HelmAdapter(command=command, sleep=lambda _s: None).history_once("linkerd-crds", "linkerd")
    assert command.calls == 1
    with pytest.raises(TransientError):
        HelmAdapter(command=command, sleep=lambda _s: None).history("linkerd-crds", "linkerd")
    assert command.calls == 1 + 5


def test_history_once_gives_up_after_its_timeout() -> None:
    """A helm that hangs (a 30 s dial) is abandoned after the timeout, as unreachable."""
    started = time.monotonic()
    with pytest.raises(ClusterUnreachableError, match=r"did not answer within 0\.05 s"):
        HelmAdapter(command=_History(hang=5), sleep=lambda _s: None).history_once("x", "linkerd", timeout=0.05)
    assert time.monotonic() - started < 2
