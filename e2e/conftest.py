"""Fixtures for the e2e suite: one real cluster per session, a fresh namespace per test."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from e2e.fixtures.proxy_metrics import ProxyMetrics
from e2e.fixtures.world import World
from e2e.harness import binaries, leaks, reliability
from e2e.harness.backends import ClusterHandle, open_cluster
from e2e.harness.processes import Processes
from e2e.harness.prometheus import Prometheus
from e2e.harness.waits import wait_for

_ACTIVE: dict[str, ClusterHandle] = {}
_WORLD_PROCESSES: list[Processes] = []
_FIGURES: dict[str, str] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterHandle]:
    """The session's cluster (local control plane by default)."""
    started = time.monotonic()
    with open_cluster() as handle:
        _FIGURES["cluster start"] = f"{time.monotonic() - started:.1f}s ({handle.backend} backend)"
        _ACTIVE["cluster"] = handle
        try:
            yield handle
        finally:
            if handle.local is not None:
                _FIGURES["cluster peak RSS (sum of components)"] = f"{handle.local.peak_rss_kib() / 1024:.0f} MiB"
            _ACTIVE.pop("cluster", None)


@pytest.fixture(scope="session")
def figures() -> dict[str, str]:
    """Measured figures a test wants shown in the run's summary."""
    return _FIGURES


@pytest.fixture(scope="session")
def api(cluster: ClusterHandle) -> Iterator[client.ApiClient]:
    """A Kubernetes API client bound to the session's cluster."""
    api_client = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield api_client
    api_client.close()


@pytest.fixture
def namespace(request: pytest.FixtureRequest, api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace for one test (with its default ServiceAccount), deleted afterwards."""
    core = client.CoreV1Api(api)
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].rstrip("-")
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"upgrader-e2e/test": "true"}}})
    wait_for(
        f"default ServiceAccount in {name}",
        lambda: core.read_namespaced_service_account("default", name) is not None,
        timeout=60,
    )
    yield name
    core.delete_namespace(name)

    def gone() -> bool:
        try:
            core.read_namespace(name)
        except client.ApiException as exc:
            return exc.status == 404
        return False

    # Wait: what a test left (a Helm release, a linkerd-config) must not be seen by the next test.
    wait_for(f"namespace {name} deleted", gone, timeout=120)


@pytest.fixture(scope="session")
def world(cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The Linkerd-like world (chart repository and injector) beside the session's cluster."""
    folder = tmp_path_factory.mktemp("world")
    processes = Processes(folder / "logs")
    _WORLD_PROCESSES.append(processes)
    try:
        yield World.start(cluster.kubeconfig, folder, processes.spawn)
    finally:
        processes.stop()
        _WORLD_PROCESSES.remove(processes)


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """A real Prometheus on 127.0.0.1 (1 s scrapes of file-discovered targets), started for the tests that ask."""
    folder = tmp_path_factory.mktemp("prometheus")
    processes = Processes(folder / "logs")
    _WORLD_PROCESSES.append(processes)
    try:
        yield Prometheus.start(folder, processes)
    finally:
        processes.stop()
        _WORLD_PROCESSES.remove(processes)


@pytest.fixture(scope="session")
def proxy_metrics(world: World, prometheus: Prometheus) -> Iterator[ProxyMetrics]:
    """Linkerd proxy metrics of every meshed pod of the world, scraped by ``prometheus``."""
    with ProxyMetrics(world.api, prometheus) as metrics:
        yield metrics


@pytest.fixture
def clean_world(world: World) -> Iterator[World]:
    """The world, with Linkerd and the sample mesh removed again after the test."""
    yield world
    world.reset()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """After every test body (before its fixtures clean up): no private key in upgrader's output,
    the test's files, or the cluster's Secrets (see ``e2e/harness/leaks.py``)."""
    leaks.OUTPUTS.clear()
    leaks.PAYLOADS.clear()
    result = yield
    found = leaks.payload_leaks()  # notification payloads, and declared credentials in outputs
    found += [f"output of `upgrader {c}`" for c in leaks.output_leaks()]
    funcargs = getattr(item, "funcargs", {})
    if isinstance(funcargs.get("tmp_path"), Path):
        found += [f"file {f}" for f in leaks.file_leaks(funcargs["tmp_path"])]
        found += [f"file {f} (a credential)" for f in leaks.credential_files(funcargs["tmp_path"])]
    leaks.CREDENTIALS.clear()
    handle = _ACTIVE.get("cluster")
    if handle is not None and {"api", "world", "clean_world", "namespace"} & set(funcargs):
        api = config.new_client_from_config(config_file=str(handle.kubeconfig))
        try:
            found += [f"Secret {s}" for s in leaks.secret_leaks(api)]
        finally:
            api.close()
    reliability.record("secret-scan", item.nodeid, "failed" if found else "clean", "; ".join(found))
    assert not found, f"private-key material outside its homes: {found}"
    return result


@pytest.fixture(params=["helm", "helm3"], ids=["helm4", "helm3"])
def helm_binary(request: pytest.FixtureRequest) -> Path:
    """Each real helm binary in turn (helm 4, then helm 3)."""
    component = binaries.COMPONENTS[request.param]
    binaries.ensure(component)
    return component.path("helm")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report: pytest.TestReport = yield
    if call.when == "call":  # what pytest captured (stdout, stderr, log records) is scanned as well
        captured = [name for name, text in report.sections if leaks.leaks_in(text)]
        if captured:
            reliability.record("secret-scan", f"{item.nodeid} (captured)", "failed", ", ".join(captured))
            report.outcome = "failed"
            report.longrepr = f"private-key material in captured output: {captured}"
    handle = _ACTIVE.get("cluster")
    if report.failed and handle is not None:
        report.sections.append(("cluster component logs (last lines)", handle.log_tails()))
    if report.failed:
        for processes in _WORLD_PROCESSES:
            report.sections.append(("world program logs (last lines)", processes.log_tails()))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("e2e cluster figures")
        for k, v in _FIGURES.items():
            terminalreporter.write_line(f"{k}: {v}")
