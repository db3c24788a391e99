"""The e2e binaries: locked per component, keyed by version and lock, checked against the lock."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from e2e.harness import binaries


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("UPGRADER_E2E_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _probe(tmp_path: Path, version: str = "v1.0.0") -> binaries.Component:
    """A component with a lock of its own in tmp_path (go.mod requiring example.com/probe)."""
    locks = tmp_path / "locks" / "probe"
    locks.mkdir(parents=True, exist_ok=True)
    (locks / "go.mod").write_text(
        "module upgrader.local/build/probe\n\ngo 1.26.0\n\ntool example.com/probe/cmd/probe\n\n"
        "require example.com/probe v1.0.0\n"
    )
    (locks / "go.sum").write_text(
        "example.com/probe v1.0.0 h1:AAAA=\nexample.com/probe v1.0.0/go.mod h1:BBBB=\nexample.com/dep v0.2.0 h1:CCCC=\n"
    )
    return binaries.Component("probe", "example.com/probe", version, {"probe": "example.com/probe/cmd/probe"})


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path) -> binaries.Component:
    monkeypatch.setattr(binaries, "LOCKS_DIR", tmp_path / "locks")
    return _probe(tmp_path)


def test_every_component_has_a_committed_lock_of_its_pin() -> None:
    """Each pin is locked: go.mod requires the pinned version, go.sum has its sum, the programs are tools."""
    for component in binaries.COMPONENTS.values():
        binaries.check_lock(component)
        text = (component.lock_dir / "go.mod").read_text()
        assert f"{component.module} {component.version}" in text


def test_a_pin_changed_without_regenerating_the_lock_names_the_command() -> None:
    """Bumping a version without `lock` fails before any build, saying which command to run."""
    bumped = dataclasses.replace(binaries.COMPONENTS["kubernetes"], version="v1.36.4")
    with pytest.raises(binaries.BuildError) as err:
        binaries.check_lock(bumped)
    message = str(err.value)
    assert "pinned to k8s.io/kubernetes v1.36.4" in message
    assert "has v1.36.3" in message
    assert "python -m e2e.harness.binaries lock kubernetes" in message


def test_kubernetes_lock_replaces_every_staging_module_at_the_matching_version() -> None:
    """The staging replaces say v0.36.3 for v1.36.3: the graph cannot float apart (the issue-11 breakage)."""
    text = (binaries.COMPONENTS["kubernetes"].lock_dir / "go.mod").read_text()
    replaces = binaries.lock_directives(text, "replace")
    assert len(replaces) > 20
    assert all(r.endswith(" v0.36.3") for r in replaces), replaces


def test_cache_folders_are_keyed_by_component_version_and_lock(cache: Path) -> None:
    """Each component lives in <cache>/<name>-<version>-<lock digest>/: a new lock never reuses a build."""
    kubernetes = binaries.COMPONENTS["kubernetes"]
    digest = kubernetes.lock_digest()
    assert kubernetes.dir == cache / f"kubernetes-{binaries.KUBERNETES_VERSION}-{digest}"
    assert binaries.program("kubectl").parent == kubernetes.dir
    assert binaries.program("helm", "helm3").parent.name.startswith(f"helm3-{binaries.HELM3_VERSION}-")


def test_a_folder_without_build_info_is_not_built(probe: binaries.Component) -> None:
    """An interrupted build (programs but no BUILD-INFO.json) is built again."""
    probe.dir.mkdir(parents=True)
    (probe.dir / "probe").write_text("")
    assert not probe.is_built()
    (probe.dir / "BUILD-INFO.json").write_text("{}")
    assert probe.is_built()


def test_a_cached_component_is_checked_not_built(probe: binaries.Component) -> None:
    """A complete cache entry is reused without building, but always checked against the lock."""
    probe.dir.mkdir(parents=True)
    (probe.dir / "probe").write_text("")
    (probe.dir / "BUILD-INFO.json").write_text("{}")
    calls: list[str] = []
    spent = binaries.ensure(
        probe, build=lambda *a: calls.append("built"), check=lambda c, folder: calls.append(f"checked {folder.name}")
    )
    assert spent == 0.0
    assert calls == [f"checked {probe.dir.name}"]


def test_ensure_builds_checks_and_records_build_info(probe: binaries.Component, cache: Path) -> None:
    """A missing component is built in a scratch folder, checked, moved into place and marked complete."""
    checked: list[str] = []

    def build(component: binaries.Component, work: Path, out: Path, log: Path) -> None:
        (out / "probe").write_text(component.version)

    binaries.ensure(probe, echo=lambda _m: None, build=build, check=lambda c, f: checked.append(f.name))
    assert (probe.dir / "probe").read_text() == "v1.0.0"
    assert checked == ["out"]
    assert probe.is_built()
    assert [p.name for p in cache.iterdir() if p.name.startswith(".probe-")] == []


def test_a_build_that_yields_no_program_fails_and_leaves_no_entry(probe: binaries.Component) -> None:
    """A build that produced nothing raises BuildError and the component stays unbuilt."""
    with pytest.raises(binaries.BuildError, match="produced no probe"):
        binaries.ensure(probe, echo=lambda _m: None, build=lambda *a: None, check=lambda *a: None)
    assert not probe.is_built()


def _embedded(mod: tuple[str, str, str], deps: dict[str, tuple[str, str]]) -> dict[str, object]:
    return {"path": "example.com/probe/cmd/probe", "mod": mod[0], "deps": {mod[0]: (mod[1], mod[2]), **deps}}


def test_verify_accepts_exactly_the_locked_graph(probe: binaries.Component, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        binaries,
        "embedded_modules",
        lambda _b: _embedded(("example.com/probe", "v1.0.0", "h1:AAAA="), {"example.com/dep": ("v0.2.0", "h1:CCCC=")}),
    )
    binaries.verify(probe, Path("/nowhere"))


@pytest.mark.parametrize(
    ("mod", "deps", "expected"),
    [
        (
            ("example.com/probe", "v1.1.0", "h1:ZZZZ="),
            {},
            "embeds example.com/probe v1.1.0, wanted v1.0.0",
        ),
        (
            ("example.com/probe", "v1.0.0", "h1:AAAA="),
            {"example.com/dep": ("v0.3.0", "h1:DDDD=")},
            "embeds example.com/dep v0.3.0, wanted v0.2.0",
        ),
        (
            ("example.com/probe", "v1.0.0", "h1:AAAA="),
            {"example.com/dep": ("v0.2.0", "h1:XXXX=")},
            "embeds example.com/dep v0.2.0, wanted v0.2.0",
        ),
    ],
    ids=["pinned module moved", "dependency floated", "dependency with another hash"],
)
def test_verify_names_the_component_the_wanted_and_the_found_version(
    probe: binaries.Component,
    monkeypatch: pytest.MonkeyPatch,
    mod: tuple[str, str, str],
    deps: dict[str, tuple[str, str]],
    expected: str,
) -> None:
    monkeypatch.setattr(binaries, "embedded_modules", lambda _b: _embedded(mod, deps))
    with pytest.raises(binaries.BuildError) as err:
        binaries.verify(probe, Path("/nowhere"))
    assert str(err.value).startswith("probe: ")
    assert expected in str(err.value)


def test_prometheus_builds_with_file_discovery_only_and_no_ui_assets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prometheus: `remove_all_sd` (plugins/minimum.go keeps file and HTTP discovery), never
    `builtinassets` (the UI is not compiled in), its release version in build_info."""
    prometheus = binaries.COMPONENTS["prometheus"]
    ran: list[list[str]] = []
    monkeypatch.setattr(binaries, "_run", lambda cmd, cwd, log, env=None: ran.append(cmd))
    (tmp_path / "work").mkdir()
    binaries._build(prometheus, tmp_path / "work", tmp_path / "out", tmp_path / "log")
    [cmd] = ran
    assert cmd[cmd.index("-tags") + 1] == "remove_all_sd"
    assert "builtinassets" not in " ".join(cmd)
    assert cmd[-1] == "github.com/prometheus/prometheus/cmd/prometheus"
    assert "-X 'github.com/prometheus/common/version.Version=3.16.0'" in cmd[cmd.index("-ldflags") + 1]
    assert binaries.program("prometheus") == prometheus.dir / "prometheus"


def test_components_without_tags_build_without_a_tags_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[list[str]] = []
    monkeypatch.setattr(binaries, "_run", lambda cmd, cwd, log, env=None: ran.append(cmd))
    (tmp_path / "work").mkdir()
    binaries._build(binaries.COMPONENTS["kwok"], tmp_path / "work", tmp_path / "out", tmp_path / "log")
    assert "-tags" not in ran[0]


def test_build_tags_are_part_of_the_cache_key(probe: binaries.Component) -> None:
    """The same lock built with other tags is another build: it never reuses the untagged one."""
    tagged = dataclasses.replace(probe, tags=("remove_all_sd",))
    assert tagged.dir != probe.dir
    assert tagged.dir.name.startswith("probe-v1.0.0-")
