"""Pure parts of the helm adapter."""

from __future__ import annotations

import pytest

from upgrader.adapters.helm import split_chart


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
