"""The e2e binary cache: keyed by component and version, complete only with BUILD-INFO.json."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.harness import binaries


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("UPGRADER_E2E_CACHE", str(tmp_path))
    return tmp_path


def test_cache_folders_are_keyed_by_component_and_version(cache: Path) -> None:
    """Each component lives in <cache>/<name>-<version>/."""
    assert binaries.COMPONENTS["kubernetes"].dir == cache / f"kubernetes-{binaries.KUBERNETES_VERSION}"
    assert binaries.program("helm", "helm3") == cache / f"helm3-{binaries.HELM3_VERSION}" / "helm"
    assert binaries.program("kubectl").parent.name == f"kubernetes-{binaries.KUBERNETES_VERSION}"


def test_a_folder_without_build_info_is_not_built(cache: Path) -> None:
    """An interrupted build (programs but no BUILD-INFO.json) is built again."""
    kwok = binaries.COMPONENTS["kwok"]
    kwok.dir.mkdir()
    (kwok.dir / "kwok").write_text("")
    assert not kwok.is_built()
    (kwok.dir / "BUILD-INFO.json").write_text("{}")
    assert kwok.is_built()


def test_ensure_skips_a_cached_component(cache: Path) -> None:
    """A complete cache entry is reused without invoking its builder."""
    calls: list[str] = []
    component = binaries.Component("probe", "v1", ("probe",), lambda *a: calls.append("built"))
    component.dir.mkdir()
    (component.dir / "probe").write_text("")
    (component.dir / "BUILD-INFO.json").write_text("{}")
    assert binaries.ensure(component) == 0.0
    assert calls == []


def test_ensure_builds_into_place_and_records_build_info(cache: Path) -> None:
    """A missing component is built in a scratch folder, moved into place and marked complete."""

    def build(version: str, work: Path, out: Path, log: Path) -> None:
        (out / "probe").write_text(version)

    component = binaries.Component("probe", "v2", ("probe",), build)
    binaries.ensure(component, echo=lambda _m: None)
    assert (component.dir / "probe").read_text() == "v2"
    assert component.is_built()
    assert [p.name for p in cache.iterdir() if p.name.startswith(".probe-")] == []


def test_a_build_that_yields_no_program_fails_and_leaves_no_entry(cache: Path) -> None:
    """A builder that produced nothing raises BuildError and the component stays unbuilt."""
    component = binaries.Component("probe", "v3", ("probe",), lambda *a: None)
    with pytest.raises(binaries.BuildError, match="produced no probe"):
        binaries.ensure(component, echo=lambda _m: None)
    assert not component.is_built()
