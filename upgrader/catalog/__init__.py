"""The bundled release catalog, validated by a pydantic schema.

Two files, both data:

- ``linkerd.yaml``: what a Helm repository cannot say. Which major an edge release belongs
  to (marker edges), per-major upgrade notes (some blocking until acknowledged), the
  supported Kubernetes range, values keys removed/renamed/newly required per major. Written
  by hand from shared/reference/linkerd-facts.md.
- ``releases.tsv`` (named by ``release_table`` in the yaml): every release the catalog can
  place in a major, with its date, the versions of the charts published for it and the
  chart's Kubernetes floor. Generated from Linkerd's release tags by
  ``python -m upgrader.catalog.regenerate`` (see that module); never edited by hand.

A release's Kubernetes range is its major's range, narrowed by the release's own chart
floor (``kubernetes_for``): within a major the floor can rise (2.19's last edges need 1.31).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterator
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from upgrader.errors import InputError
from upgrader.versions import (
    EdgeMarkers,
    Version,
    edge_from_calendar_chart,
    kubernetes_minors,
    kubernetes_version,
    parse,
    parse_chart_version,
)

# Columns of a release table that are not charts; ``derived`` is provenance in Linkerd's table.
TABLE_COLUMNS = ("release", "date", "kube_min")
IGNORED_COLUMNS = ("derived",)


def _checked(check: Callable[[str], object], value: str) -> str:
    """Run a version parser as a pydantic check (pydantic reports ValueError with the field's place)."""
    try:
        check(value)
    except InputError as exc:
        raise ValueError(exc.message) from None
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KubernetesRange(_Strict):
    min: str
    max: str

    @field_validator("min", "max")
    @classmethod
    def _is_version(cls, value: str) -> str:
        return _checked(kubernetes_version, value)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if kubernetes_version(self.min) > kubernetes_version(self.max):
            raise ValueError(f"Kubernetes range {self.min}-{self.max} is empty")
        return self

    def contains(self, version: str) -> bool:
        """Whether ``v1.28.3`` (or ``1.28``) lies within [min, max] by minor version."""
        return kubernetes_minors(self.min, self.max).contains(kubernetes_version(version))


class Note(_Strict):
    id: str
    text: str
    blocking: bool = False


class ValuesChanges(_Strict):
    removed: list[str] = Field(default_factory=list)
    renamed: dict[str, str] = Field(default_factory=dict)
    new_required: list[str] = Field(default_factory=list)


class GatewayApi(_Strict):
    """What a major's linkerd-crds chart does with the Gateway API route CRDs (``upgrader.gatewayapi``).

    ``crds``: each Gateway API CRD the chart can install -> the value that switches it (``enableHttpRoutes``).
    ``install_value``: the value that switches them all when the per-CRD one is unset (2.18+:
    ``installGatewayAPI``); ``default``: whether the chart installs them without values; ``keep``:
    the templates carry ``helm.sh/resource-policy: keep`` (an upgrade that drops them leaves them
    in the cluster, unmanaged); ``bundle``: the Gateway API bundle version they carry; ``required``:
    the CRDs this major expects in the cluster when it does not install them; ``needs_served``: the API
    versions its policy controller reads each CRD at, which a CRD from elsewhere must serve.
    """

    crds: dict[str, str]
    install_value: str | None = None
    default: bool = True
    keep: bool = False
    bundle: str = ""
    required: list[str] = Field(default_factory=list)
    # CRD -> the API versions this major's policy controller watches it at: a CRD it does not install must serve
    # them (Linkerd's Gateway API compatibility table; the policy controller's source per marker tag)
    needs_served: dict[str, list[str]] = Field(default_factory=dict)


class RemovedExtension(_Strict):
    """An extension a major no longer ships: a hop into that major is refused while it is installed."""

    chart: str  # its Helm chart (linkerd-jaeger)
    extension: str  # its namespace label linkerd.io/extension value (jaeger)
    note: str  # the id of the major's note that explains it


class Major(_Strict):
    major: int
    released: str
    marker_edge: str | None = None
    last_stable: str | None = None
    kubernetes: KubernetesRange
    notes: list[Note] = Field(default_factory=list)
    values: ValuesChanges = Field(default_factory=ValuesChanges)
    gateway_api: GatewayApi | None = None  # None: this major's linkerd-crds installs no Gateway API CRD
    removed_extensions: list[RemovedExtension] = Field(default_factory=list)

    @field_validator("released", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> str:
        return str(value)

    @model_validator(mode="after")
    def _notes_named(self) -> Self:
        ids = {n.id for n in self.notes}
        missing = [r.note for r in self.removed_extensions if r.note not in ids]
        if missing:
            raise ValueError(f"2.{self.major}: removed_extensions name notes it does not have: {', '.join(missing)}")
        return self

    def note(self, note_id: str) -> Note | None:
        return next((n for n in self.notes if n.id == note_id), None)


class Release(_Strict):
    """One release: its chart versions (chart name -> version), date and Kubernetes floor."""

    version: str
    charts: dict[str, str]
    date: dt.date | None = None
    kube_min: str | None = None

    @field_validator("charts")
    @classmethod
    def _chart_versions(cls, charts: dict[str, str]) -> dict[str, str]:
        for version in charts.values():
            _checked(parse_chart_version, version)
        return charts

    @field_validator("kube_min")
    @classmethod
    def _kube_version(cls, value: str | None) -> str | None:
        return None if value is None else _checked(kubernetes_version, value)


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
        # Not cached: a cache would go stale on model_copy(update=...); parsing ~150 names takes a millisecond.
        markers = self.edge_markers()
        return {parse(r.version, markers): r for r in self.releases}

    def release(self, version: Version) -> Release | None:
        """The catalog's record of ``version``, if it knows it."""
        return self.releases_by_version().get(version)

    def release_for_chart(self, chart: str, chart_version: str) -> Version | None:
        """The oldest release that ships ``chart`` at ``chart_version`` (calendar charts need no lookup).

        Stable releases of a major share one linkerd-crds chart (1.8.0 for all of 2.14), so
        that chart names the major's first release.
        """
        if edge := edge_from_calendar_chart(chart_version):
            return self.parse(edge)
        shipping = [v for v, r in self.releases_by_version().items() if r.charts.get(chart) == chart_version]
        return min(shipping, key=lambda v: v.sort_key) if shipping else None

    def kubernetes_for(self, version: Version) -> KubernetesRange | None:
        """The Kubernetes range ``version`` supports: its major's, its floor raised to the release chart's.

        A chart floor below the major's documented minimum (stable-2.11.0's chart says 1.16,
        2.11 needs 1.17) does not widen the range. None when the catalog has no such major.
        """
        info = self.major(version.major)
        if info is None:
            return None
        release = self.release(version)
        if release is None or release.kube_min is None:
            return info.kubernetes
        floor = kubernetes_version(release.kube_min)
        if floor <= kubernetes_version(info.kubernetes.min):
            return info.kubernetes
        return KubernetesRange(min=f"{floor.major}.{floor.minor}", max=info.kubernetes.max)


def read_release_table(text: str) -> Iterator[dict[str, str]]:
    """Rows of a tab-separated release table as ``{column: cell}``; ``#`` lines are comments.

    The first other line names the columns; it must include ``release``.
    """
    lines = (line for line in text.splitlines() if line.strip() and not line.startswith("#"))
    header = next(lines, "").split("\t")
    if "release" not in header:
        raise InputError("a release table must start with a header naming a 'release' column")
    for line in lines:
        cells = line.split("\t")
        if len(cells) != len(header):
            raise InputError(f"the release table row of {cells[0]!r} has {len(cells)} cells, not {len(header)}")
        yield dict(zip(header, cells, strict=True))


def release_from_row(row: dict[str, str]) -> dict[str, Any]:
    """A release table row as ``Release`` data: every non-empty chart column is a chart."""
    skip = (*TABLE_COLUMNS, *IGNORED_COLUMNS)
    return {
        "version": row["release"],
        "charts": {name: cell for name, cell in row.items() if name not in skip and cell},
        "date": row.get("date") or None,
        "kube_min": row.get("kube_min") or None,
    }


def _table_file(table: str, path: Path | None) -> Path | Traversable:
    if Path(table).name != table:
        raise InputError(f"release_table {table!r} must name a file beside the catalog")
    return path.parent / table if path else resources.files(__package__).joinpath(table)


def load(path: Path | None = None) -> Catalog:
    """Load and validate a catalog file (the bundled one by default) and the release table it names."""
    name = str(path or "linkerd.yaml")
    try:
        text = path.read_text() if path else resources.files(__package__).joinpath("linkerd.yaml").read_text()
        data = yaml.safe_load(text)
        if isinstance(data, dict) and (table := data.pop("release_table", None)) is not None:
            name = f"{name} (release_table {table})"
            rows = read_release_table(_table_file(str(table), path).read_text())
            data["releases"] = [*data.get("releases", []), *map(release_from_row, rows)]
        catalog = Catalog.model_validate(data)
        _check_releases(catalog)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise InputError(f"invalid release catalog {name}: {exc}") from exc
    except InputError as exc:
        raise InputError(f"invalid release catalog {name}: {exc.message}", hint=exc.hint) from exc
    return catalog


def _check_releases(catalog: Catalog) -> None:
    """Every release parses, is listed once, belongs to a major the catalog knows and fits its Kubernetes range."""
    seen: set[Version] = set()
    for r in catalog.releases:
        v = catalog.parse(r.version)
        if v in seen:
            raise InputError(f"release {r.version} is listed twice")
        seen.add(v)
        info = catalog.major(v.major)
        if info is None:
            raise InputError(f"release {r.version} belongs to unknown major 2.{v.major}")
        if (
            r.kube_min
            and kubernetes_version(r.kube_min).release[:2] > kubernetes_version(info.kubernetes.max).release[:2]
        ):
            raise InputError(f"release {r.version} needs Kubernetes {r.kube_min}, above 2.{v.major}'s maximum")


@functools.cache
def default_catalog() -> Catalog:
    """The catalog bundled with this version of upgrader."""
    return load()
