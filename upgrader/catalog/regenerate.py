"""Regenerate the catalog's ``releases.tsv`` from Linkerd's release table.

The source is ``shared/reference/linkerd-releases.tsv``: every Linkerd release tag with the
chart versions published for it (its header comments say how each version was obtained).
From the repository root, with the steering checkout's ``shared/`` beside it::

    .venv/bin/python -m upgrader.catalog.regenerate ../shared/reference/linkerd-releases.tsv
    .venv/bin/python -m upgrader.catalog.regenerate --check ../shared/reference/linkerd-releases.tsv

The first writes ``upgrader/catalog/releases.tsv``; ``--check`` only says whether it is up to
date (exit 1 if not). Kept: every stable release of a major that ``linkerd.yaml`` knows, and
every edge release from the first marker edge on. Older edges are left out because no
marker edge places them in a major (Linkerd tagged ``version-2.X`` only from 2.15), and the
planner cannot plan what it cannot place. The output keeps the source's columns except
``derived`` (provenance, explained in the output's header), rows in release order.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml
from pydantic import ValidationError

from upgrader.catalog import Catalog, Release, read_release_table, release_from_row
from upgrader.errors import InputError
from upgrader.versions import Channel, Version, parse

HERE = Path(__file__).parent
OUTPUT = HERE / "releases.tsv"
DROPPED_COLUMNS = ("derived",)
SPLIT_CHARTS = ("linkerd-crds", "linkerd-control-plane")  # the core charts from 2.12 on
LEGACY_CHARTS = ("linkerd2",)  # the core chart before the 2.12 split


def majors_catalog(text: str | None = None) -> Catalog:
    """``linkerd.yaml``'s majors (and marker edges) without any releases: what placing a row needs."""
    data = yaml.safe_load(text if text is not None else (HERE / "linkerd.yaml").read_text())
    data.pop("release_table", None)
    return Catalog.model_validate({**data, "releases": []})


def _place(catalog: Catalog, text: str) -> tuple[Version | None, str]:
    """The row's version, or None and why it is left out."""
    try:
        parse(text, {0: (0, 1, 1)})  # the form alone: a marker before every edge places them all
    except InputError:
        return None, "tags in no release form upgrader accepts"
    try:
        version = catalog.parse(text)
    except InputError:
        first = min(catalog.edge_markers().values())
        return None, f"edge releases before edge-{first[0]}.{first[1]}.{first[2]} (no marker edge places them)"
    if catalog.major(version.major) is None:
        return None, f"{version.channel} releases of majors linkerd.yaml does not list"
    return version, ""


def _first(catalog: Catalog) -> int:
    return min(m.major for m in catalog.majors)


def _check_row(version: Version, row: Mapping[str, str]) -> None:
    """A kept row must name the core charts of its era and valid versions (the source's format held)."""
    own, other = (SPLIT_CHARTS, LEGACY_CHARTS) if version.major >= 12 else (LEGACY_CHARTS, SPLIT_CHARTS)
    if missing := [c for c in own if not row.get(c)]:
        raise InputError(f"{version} has no {', '.join(missing)} chart version in the source")
    if extra := [c for c in other if row.get(c)]:
        raise InputError(f"{version} (2.{version.major}) unexpectedly has a {', '.join(extra)} chart")
    try:
        Release.model_validate(release_from_row(dict(row)))
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise InputError(f"{version}: {problems}") from None


def regenerate(source: str, catalog: Catalog | None = None) -> str:
    """The text of ``releases.tsv`` for the release table ``source`` (pure; validates every kept row)."""
    catalog = catalog or majors_catalog()
    rows = list(read_release_table(source))
    columns = [c for c in (rows[0] if rows else {"release": ""}) if c not in DROPPED_COLUMNS]
    kept: list[tuple[Version, dict[str, str]]] = []
    left_out: Counter[str] = Counter()
    for row in rows:
        version, why = _place(catalog, row["release"])
        if version is None:
            left_out[why] += 1
            continue
        _check_row(version, row)
        kept.append((version, row))
    kept.sort(key=lambda item: item[0].sort_key)
    versions = {str(v) for v, _ in kept}
    for m in catalog.majors:
        for named in (m.marker_edge, m.last_stable):
            if named and named not in versions:
                raise InputError(f"linkerd.yaml names {named} for 2.{m.major}, but the source has no such release")
    return _render(columns, kept, left_out, catalog)


def _render(
    columns: list[str], kept: Iterable[tuple[Version, dict[str, str]]], left_out: Counter[str], catalog: Catalog
) -> str:
    kept = list(kept)
    edges = sum(1 for v, _ in kept if v.channel is Channel.EDGE)
    skipped = [f"#   {n} {why}" for why, n in sorted(left_out.items())] or ["#   nothing"]
    header = [
        "# Linkerd releases the catalog knows, with the chart versions published for each (upgrader.catalog).",
        "# GENERATED by `python -m upgrader.catalog.regenerate linkerd-releases.tsv`: do not edit by hand.",
        "# Source: Linkerd's release tags (shared/reference/linkerd-releases.tsv). Where a tag's Chart.yaml",
        "# held a placeholder (0.1.0 before 2.12, 0.0.0-undefined on edges from edge-24.3.1), the version",
        "# is the one Linkerd's release tooling published: the tag's number or its calendar form.",
        f"# {len(kept) - edges} stable releases of 2.{_first(catalog)} on and {edges} edge releases. Left out:",
        *skipped,
        "# Empty cell: the chart did not exist at that release. kube_min: the chart's kubeVersion floor.",
        "\t".join(columns),
    ]
    body = ["\t".join(row[c] for c in columns) for _, row in kept]
    return "\n".join([*header, *body]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m upgrader.catalog.regenerate", description="Regenerate upgrader/catalog/releases.tsv."
    )
    parser.add_argument("source", type=Path, help="Linkerd's release table (shared/reference/linkerd-releases.tsv)")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where to write (default: the bundled table)")
    parser.add_argument("--check", action="store_true", help="only say whether the output is up to date")
    args = parser.parse_args(argv)
    try:
        text = regenerate(args.source.read_text())
    except (OSError, InputError) as exc:
        print(f"cannot regenerate the release table: {exc}", file=sys.stderr)
        return 2
    current = args.output.read_text() if args.output.exists() else ""
    if args.check:
        if current != text:
            print(f"{args.output} is out of date; run without --check to regenerate it", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output} ({sum(1 for _ in read_release_table(text))} releases)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
