"""Linkerd version forms, their majors and their order.

Accepted forms (canonical spelling in brackets):

- ``stable-2.X.Y``                (open-source stable; major X)
- ``edge-YY.M.N``                 (weekly edge; its major comes from the marker table:
                                   an edge belongs to the newest major whose marker is <= it)
- ``enterprise-2.X.Y[-N]``        (vendor; major X, hotpatch N)
- chart versions, via ``Catalog.release_for_chart``: semver (``1.16.11``), old edge charts
  (``1.18.10-edge``, a semver pre-release) and calendar charts (``2024.8.2`` = ``edge-24.8.2``).
- Kubernetes versions (``v1.28.3-eks-1a2b``): compared as ``packaging`` versions of their
  numbers, ranges of minor versions as ``packaging`` specifier sets.

Order: first by major; within a major every edge release sorts before every stable or
enterprise release (stable releases are cut from the edge line), edges by date,
stable/enterprise by (minor, hotpatch); stable before enterprise on a tie. The order is
total, so any two versions compare.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from packaging.specifiers import SpecifierSet
from packaging.version import Version as _Pep440

from upgrader.errors import InputError

ACCEPTED_FORMS = "stable-2.X.Y, edge-YY.M.N or enterprise-2.X.Y[-N] (e.g. stable-2.14.10, edge-24.8.2)"

# ASCII digits only (``\d`` and ``int()`` accept any Unicode digit), at most 6 per component
_N = "([0-9]{1,6})"
_STABLE = re.compile(rf"stable-2\.{_N}\.{_N}", re.ASCII)
_EDGE = re.compile(rf"edge-([0-9]{{2}})\.([0-9]{{1,2}})\.{_N}", re.ASCII)
_ENTERPRISE = re.compile(rf"enterprise-2\.{_N}\.{_N}(?:-{_N})?", re.ASCII)
_CALENDAR_CHART = re.compile(rf"(20[0-9]{{2}})\.([0-9]{{1,2}})\.{_N}", re.ASCII)


def _shown(text: str) -> str:
    """``text`` quoted for a message, cut when long (a 5,000-digit version is not worth printing)."""
    return repr(text) if len(text) <= 60 else f"{text[:60]!r}... ({len(text)} characters)"


class Channel(StrEnum):
    STABLE = "stable"
    EDGE = "edge"
    ENTERPRISE = "enterprise"


_CHANNEL_RANK = {Channel.EDGE: 0, Channel.STABLE: 1, Channel.ENTERPRISE: 1}


@dataclass(frozen=True)
class Version:
    """A parsed Linkerd release version with its major (the X of 2.X)."""

    channel: Channel
    numbers: tuple[int, ...]  # stable/enterprise: (patch, hotpatch), edge: (YY, M, N)
    major: int
    text: str = field(compare=False)

    def __str__(self) -> str:
        return self.text

    @property
    def sort_key(self) -> tuple[int, int, tuple[int, ...], int]:
        tie = 1 if self.channel is Channel.ENTERPRISE else 0
        return (self.major, _CHANNEL_RANK[self.channel], self.numbers, tie)

    def __lt__(self, other: Version) -> bool:
        return self.sort_key < other.sort_key

    def __le__(self, other: Version) -> bool:
        return self.sort_key <= other.sort_key

    def __gt__(self, other: Version) -> bool:
        return self.sort_key > other.sort_key

    def __ge__(self, other: Version) -> bool:
        return self.sort_key >= other.sort_key

    @property
    def major_name(self) -> str:
        return f"2.{self.major}"


EdgeMarkers = Mapping[int, tuple[int, int, int]]  # major -> (YY, M, N) of its marker edge


def _edge_major(numbers: tuple[int, int, int], markers: EdgeMarkers, text: str) -> int:
    owners = [major for major, marker in markers.items() if marker <= numbers]
    if not owners:
        first = min(markers.values()) if markers else None
        since = f" (known from edge-{first[0]}.{first[1]}.{first[2]} on)" if first else ""
        raise InputError(
            f"cannot tell which Linkerd major {text} belongs to{since}",
            hint="name a stable or enterprise version, or a newer edge release",
        )
    return max(owners)


def parse(text: str, markers: EdgeMarkers | None = None) -> Version:
    """Parse a release version; InputError names the accepted forms."""
    raw = text.strip()
    if m := _STABLE.fullmatch(raw):
        minor, patch = int(m[1]), int(m[2])
        return Version(Channel.STABLE, (patch, 0), minor, f"stable-2.{minor}.{patch}")
    if m := _ENTERPRISE.fullmatch(raw):
        minor, patch, hot = int(m[1]), int(m[2]), int(m[3] or 0)
        suffix = f"-{hot}" if hot else ""  # a -0 hotpatch is the release itself
        return Version(Channel.ENTERPRISE, (patch, hot), minor, f"enterprise-2.{minor}.{patch}{suffix}")
    if m := _EDGE.fullmatch(raw):
        numbers = (int(m[1]), int(m[2]), int(m[3]))
        if not 1 <= numbers[1] <= 12:
            raise InputError(f"{_shown(text)} has no month {numbers[1]}", hint=f"use {ACCEPTED_FORMS}")
        if markers is None:
            from upgrader.catalog import default_catalog  # noqa: PLC0415 - catalog imports this module

            markers = default_catalog().edge_markers()
        canonical = f"edge-{numbers[0]:02d}.{numbers[1]}.{numbers[2]}"
        return Version(Channel.EDGE, numbers, _edge_major(numbers, markers, canonical), canonical)
    raise InputError(f"{_shown(text)} is not a Linkerd version", hint=f"use {ACCEPTED_FORMS}")


_SEMVER_CHART = re.compile(rf"v?{_N}\.{_N}\.{_N}(-edge)?", re.ASCII)


class ChartKind(StrEnum):
    SEMVER = "semver"  # stable charts: 1.16.11
    EDGE = "edge"  # edge charts before March 2024: 1.18.10-edge
    CALENDAR = "calendar"  # from edge-24.3.1 on: 2024.8.2 (= edge-24.8.2)


@dataclass(frozen=True, order=True)
class ChartVersion:
    """A Linkerd chart version, ordered as Helm orders them (semver), calendar charts after all 1.x/30.x ones.

    ``-edge`` is a semver pre-release, so ``1.9.3-edge`` (edge-22.9.2) sorts before ``1.9.3``
    (stable-2.12.1): the two are different charts, never equal. Not PEP 440 versions, so the
    key is a plain tuple: (calendar?, major, minor, patch, final?).
    """

    sort_key: tuple[int, int, int, int, int]
    kind: ChartKind = field(compare=False)
    text: str = field(compare=False)

    def __str__(self) -> str:
        return self.text


def parse_chart_version(text: str) -> ChartVersion:
    """Parse ``1.16.11``, ``1.18.10-edge`` or ``2024.8.2``; InputError otherwise."""
    raw = text.strip()
    if m := _CALENDAR_CHART.fullmatch(raw):
        return ChartVersion((1, int(m[1]), int(m[2]), int(m[3]), 1), ChartKind.CALENDAR, raw)
    if m := _SEMVER_CHART.fullmatch(raw):
        kind = ChartKind.EDGE if m[4] else ChartKind.SEMVER
        final = 0 if kind is ChartKind.EDGE else 1
        return ChartVersion((0, int(m[1]), int(m[2]), int(m[3]), final), kind, raw.lstrip("v"))
    raise InputError(
        f"{_shown(text)} is not a Linkerd chart version", hint="use e.g. 1.16.11, 1.18.10-edge or 2024.8.2"
    )


def edge_from_calendar_chart(chart_version: str) -> str | None:
    """``2024.8.2`` -> ``edge-24.8.2`` (charts from edge-24.3.1 on); None for other forms."""
    m = _CALENDAR_CHART.fullmatch(chart_version.strip())
    return f"edge-{int(m[1]) - 2000:02d}.{int(m[2])}.{int(m[3])}" if m else None


_KUBERNETES = re.compile(rf"v?{_N}\.{_N}(?:\.{_N})?(?:[-+].*)?", re.ASCII)


def kubernetes_version(text: str) -> _Pep440:
    """``v1.28.3-eks-1a2b`` or ``1.28.3+k3s1`` -> 1.28.3 (vendor suffixes dropped; ``1.28`` = 1.28.0)."""
    m = _KUBERNETES.fullmatch(text.strip())
    if m is None:
        raise InputError(f"{_shown(text)} is not a Kubernetes version", hint="use e.g. v1.28.3")
    return _Pep440(f"{int(m[1])}.{int(m[2])}.{int(m[3] or 0)}")


def kubernetes_minors(lowest: str, highest: str) -> SpecifierSet:
    """Every patch of the minor versions ``lowest`` to ``highest`` (``1.21``, ``1.28``) -> ``>=1.21,<1.29``."""
    low, high = kubernetes_version(lowest), kubernetes_version(highest)
    return SpecifierSet(f">={low.major}.{low.minor},<{high.major}.{high.minor + 1}")


def major_distance(a: Version, b: Version) -> int:
    """How many majors lie between ``a`` and ``b`` (negative when ``b`` is older)."""
    return b.major - a.major
