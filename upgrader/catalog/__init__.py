"""The bundled release catalog (``linkerd.yaml``), validated by a pydantic schema.

The catalog answers what a Helm repository cannot: which major an edge release belongs to
(marker edges), per-major upgrade notes (some blocking until acknowledged), the supported
Kubernetes range, values keys removed/renamed/newly required per major, and the chart
versions of known releases for offline planning.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from upgrader.errors import InputError
from upgrader.versions import EdgeMarkers, Version, edge_from_calendar_chart, parse


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KubernetesRange(_Strict):
    min: str
    max: str

    def contains(self, version: str) -> bool:
        """Whether ``v1.28.3`` (or ``1.28``) lies within [min, max] by minor version."""
        return _minor(self.min) <= _minor(version) <= _minor(self.max)


def _minor(version: str) -> tuple[int, int]:
    parts = version.lstrip("v").split("-")[0].split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise InputError(f"{version!r} is not a Kubernetes version", hint="use e.g. v1.28.3") from None


class Note(_Strict):
    id: str
    text: str
    blocking: bool = False


class ValuesChanges(_Strict):
    removed: list[str] = Field(default_factory=list)
    renamed: dict[str, str] = Field(default_factory=dict)
    new_required: list[str] = Field(default_factory=list)


class Major(_Strict):
    major: int
    released: str
    marker_edge: str | None = None
    last_stable: str | None = None
    kubernetes: KubernetesRange
    notes: list[Note] = Field(default_factory=list)
    values: ValuesChanges = Field(default_factory=ValuesChanges)

    @field_validator("released", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> str:
        return str(value)


class Release(_Strict):
    version: str
    charts: dict[str, str]


class Catalog(_Strict):
    catalog_version: int
    majors: list[Major]
    releases: list[Release]

    def edge_markers(self) -> EdgeMarkers:
        out: dict[int, tuple[int, int, int]] = {}
        for m in self.majors:
            if m.marker_edge:
                yy, month, n = m.marker_edge.removeprefix("edge-").split(".")
                out[m.major] = (int(yy), int(month), int(n))
        return out

    def parse(self, text: str) -> Version:
        """Parse a release version using this catalog's marker edges."""
        return parse(text, self.edge_markers())

    def major(self, number: int) -> Major | None:
        return next((m for m in self.majors if m.major == number), None)

    def releases_by_version(self) -> dict[Version, Release]:
        return {self.parse(r.version): r for r in self.releases}

    def release_for_chart(self, chart: str, chart_version: str) -> Version | None:
        """The release that ships ``chart`` at ``chart_version`` (calendar charts need no lookup)."""
        if edge := edge_from_calendar_chart(chart_version):
            return self.parse(edge)
        for r in self.releases:
            if r.charts.get(chart) == chart_version:
                return self.parse(r.version)
        return None


def load(path: Path | None = None) -> Catalog:
    """Load and validate a catalog file (the bundled one by default)."""
    try:
        text = path.read_text() if path else resources.files(__package__).joinpath("linkerd.yaml").read_text()
        data = yaml.safe_load(text)
        catalog = Catalog.model_validate(data)
        for r in catalog.releases:  # every release must parse and belong to a known major
            v = catalog.parse(r.version)
            if catalog.major(v.major) is None:
                raise InputError(f"catalog release {r.version} belongs to unknown major 2.{v.major}")
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise InputError(f"invalid release catalog {path or 'linkerd.yaml'}: {exc}") from exc
    return catalog


@functools.cache
def default_catalog() -> Catalog:
    """The catalog bundled with this version of upgrader."""
    return load()
