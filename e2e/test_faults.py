"""Faults during a run: the tool SIGKILLed at every state transition of a two-hop upgrade, the API
server stopped, etcd restarted, helm failing, the state store turning read-only, and passing API
failures from a fault proxy. Each run ends ``Done``, ridden out by retries or resumed after a
clear stop (message, hint, resume command; never a traceback, never a half-written checkpoint).

Each scenario's outcome is appended as one JSON line to ``$UPGRADER_RELIABILITY_LOG`` when set
(``make reliability`` sums them up).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.fixtures import mesh
from e2e.fixtures.world import World
from e2e.harness import reliability
from e2e.harness.backends import ClusterHandle
from e2e.harness.cluster import LocalCluster
from e2e.harness.faultproxy import KINDS, FaultProxy
from e2e.harness.leaks import OUTPUTS, run_upgrader
from upgrader.adapters.kube import USER_AGENT  # upgrader/<version>: only the tool's requests are faulted
from upgrader.states import HOP_SEQUENCE, ROUTES, RunState, route_of

SPEC = "name: e2e\nwaivers: [kubernetes-version, disruption.pdb-allows-restart]\n"
TARGET = "stable-2.14.10"
TARGET_CONTROL_PLANE = "linkerd-control-plane-1.16.11"
BROKEN = ("Traceback", "internal error")


@contextlib.contextmanager
def recorded(case: str) -> Iterator[list[str]]:
    """Record ``case`` in the reliability log (e2e/harness/reliability.py): survived when the block passes,
    failed (with the assertion) otherwise."""
    details: list[str] = []
    try:
        yield details
    except BaseException as exc:
        reliability.record("fault", case, "failed", f"{type(exc).__name__}: {exc}")
        raise
    reliability.record("fault", case, "survived", "; ".join(details) or "ended Done")


@pytest.fixture
def env(clean_world: World, tmp_path: Path) -> dict[str, str]:
    """Isolated helm configuration with the fixture repository; a file state store in tmp_path/state."""
    return clean_world.helm_env(tmp_path)


@pytest.fixture
def local(cluster: ClusterHandle) -> LocalCluster:
    """The local control plane, whose components these tests stop and start."""
    assert cluster.local is not None, "fault tests stop cluster components: they need the local backend"
    return cluster.local


def _args(world: World, *args: str, helm: Path | None = None, kubeconfig: Path | None = None) -> list[str]:
    return [*args, "--kubeconfig", str(kubeconfig or world.kubeconfig), "--helm", str(helm or world.helm)]


def _checkpoint(tmp_path: Path) -> dict[str, Any] | None:
    """The run's checkpoint; a file that does not parse fails the test (writes are atomic)."""
    found = [p for p in (tmp_path / "state").glob("*.json")] if (tmp_path / "state").is_dir() else []
    assert len(found) <= 1, found
    if not found:
        return None
    text = found[0].read_text()
    try:
        loaded: dict[str, Any] = json.loads(text)
    except ValueError as exc:
        raise AssertionError(f"checkpoint {found[0]} is half-written: {exc}: {text[-200:]!r}") from exc
    assert loaded["run_id"], loaded
    assert loaded["state"] in set(RunState), loaded.get("state")
    return loaded


@dataclass
class Run:
    """``upgrader ARGS --log-format json`` in the background; its stderr events read as they come."""

    proc: subprocess.Popen[str]
    events: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None
    keep: Path | None = None
    last_state: str | None = None  # the last state event read by until()

    @classmethod
    def start(cls, args: list[str], env: dict[str, str]) -> Run:
        proc = subprocess.Popen(
            [sys.executable, "-m", "upgrader", "--log-format", "json", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        run = cls(proc, keep=Path(env["UPGRADER_STATE_STORE"].removeprefix("file:")).parent / "runs.log")
        run.reader = threading.Thread(target=run._read, daemon=True)
        run.reader.start()
        return run

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    self.events.put(event)
        self.events.put({"event": "<exit>"})

    def until(self, want: Callable[[dict[str, Any]], bool], timeout: float = 240) -> dict[str, Any] | None:
        """The first event that ``want``s, or None when the program ended first."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no awaited event within {timeout}s; output:\n{self.output[-3000:]}"
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if event.get("event") == "<exit>":
                return None
            if event.get("event") == "state":
                self.last_state = event.get("state")
            if want(event):
                return event

    def kill(self) -> None:
        self.proc.kill()
        self.wait()

    def wait(self, timeout: float = 420) -> int:
        code = self.proc.wait(timeout=timeout)
        if self.reader is not None:
            self.reader.join(30)
        OUTPUTS.append(("faults run", self.output))
        if self.keep is not None:  # for the failure report: every program's whole output
            with self.keep.open("a") as fh:
                fh.write(f"===== {' '.join(self.proc.args[3:6])}... exit {code}\n{self.output}")
        return code

    @property
    def output(self) -> str:
        return "".join(self.lines)


def _state_event(state: str, hop: int | None = None) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("event") == "state" and e.get("state") == state and (hop is None or e.get("hop") == hop)


def _charts(world: World, release: str) -> list[str]:
    return [r["chart"] for r in world.helm_history(release)]


def _meshed(world: World) -> dict[str, Any]:
    apps = client.AppsV1Api(world.api)
    return {
        f"{d.metadata.namespace}/{d.metadata.name}": d
        for ns in ("shop", "payments")
        for d in apps.list_namespaced_deployment(ns).items
        if (d.spec.template.metadata.annotations or {}).get("linkerd.io/inject") != "disabled"
    }


def _prepare(world: World, tmp_path: Path, start: str, spec_extra: str = "") -> tuple[Path, dict[str, int]]:
    world.install(start)
    docs = mesh.sample_mesh()
    world.apply(docs)
    world.wait_ready(mesh.namespaces(docs))
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC + spec_extra)
    return spec, {k: d.metadata.generation for k, d in _meshed(world).items()}


def _assert_clean_stop(code: int, output: str) -> None:
    """A run that stopped says why and how to go on: exit 1 or 3, the resume command, no traceback."""
    assert code in (1, 3), (code, output[-3000:])
    for word in BROKEN:
        assert word not in output, output[-3000:]
    assert "upgrader resume" in output, output[-3000:]


def _assert_finished(world: World, tmp_path: Path, before: dict[str, int]) -> None:
    """What an uninterrupted run leaves: Done, each chart upgraded once per hop, each meshed workload
    restarted once per hop and marked by this run, every meshed pod on the target proxy."""
    final = _checkpoint(tmp_path)
    assert final is not None
    assert final["state"] == "Done", final["state"]
    hops = len(final["plan"]["hops"])
    crds, cp = _charts(world, "linkerd-crds"), _charts(world, "linkerd-control-plane")
    assert len(crds) == len(cp) == hops + 1, (crds, cp)  # install + one upgrade per hop, none twice
    assert cp[-1] == TARGET_CONTROL_PLANE
    after = _meshed(world)
    for name, generation in before.items():
        d = after[name]
        restarts = d.metadata.generation - generation
        assert restarts == hops, f"{name} restarted {restarts} times in {hops} hop(s)"
        marker = (d.spec.template.metadata.annotations or {}).get("upgrader.io/restarted-by", "")
        assert final["run_id"] in marker, (name, marker)
    proxies = {
        c.image
        for ns in ("shop", "payments")
        for p in client.CoreV1Api(world.api).list_namespaced_pod(ns).items
        if p.metadata.deletion_timestamp is None
        for c in p.spec.containers
        if c.name == "linkerd-proxy"
    }
    assert proxies == {f"cr.l5d.io/linkerd/proxy:{TARGET}"}


def _resume_to_done(world: World, env: dict[str, str], tmp_path: Path, **kw: Any) -> None:
    out = run_upgrader(*_args(world, "resume", "--take-over-lock", **kw), env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    for word in BROKEN:
        assert word not in out.stderr, out.stderr[-3000:]


# ---- SIGKILL at every transition ---------------------------------------------------------------------------


def test_sigkill_at_every_state_transition_of_a_two_hop_upgrade_then_resume_ends_as_an_uninterrupted_run(
    clean_world: World, env: dict[str, str], tmp_path: Path
) -> None:
    """One two-hop upgrade killed (SIGKILL) at the first entry into each state of each hop's route, in turn,
    each kill followed by `resume`: the checkpoint parses after every kill and the end is an uninterrupted
    run's (charts at the target once per hop, each meshed workload restarted once per hop)."""
    world = clean_world
    with recorded("sigkill at every transition of a two-hop upgrade") as notes:
        spec, before = _prepare(world, tmp_path, "stable-2.12.6")
        run = Run.start(_args(world, "apply", "--to", TARGET, "--spec", str(spec), "--yes"), env)
        first = run.until(_state_event("Preflight", 0))
        assert first is not None, run.output[-3000:]
        run.kill()
        checkpoint = _checkpoint(tmp_path)
        assert checkpoint is not None
        # The kill points come from the state machine: each hop's route (the run states of its steps).
        routes = [route_of(RunState(s["state"]) for s in hop["steps"]) for hop in checkpoint["plan"]["hops"]]
        assert len(routes) == 2, routes
        assert all(r in ROUTES for r in routes), routes
        points = [(hop, str(state)) for hop, route in enumerate(routes) for state in route][1:]
        killed = ["Preflight@1"]
        for hop, state in points:
            run = Run.start(_args(world, "resume", "--take-over-lock"), env)
            seen = run.until(_state_event(state, hop))
            assert seen is not None, f"resume ended before {state} of hop {hop + 1}:\n{run.output[-3000:]}"
            run.kill()
            time.sleep(0.5)  # a helm child started before the kill may still be writing its release
            checkpoint = _checkpoint(tmp_path)
            assert checkpoint is not None
            assert checkpoint["state"] not in ("Done", "Failed"), checkpoint
            killed.append(f"{state}@{hop + 1}")
        _resume_to_done(world, env, tmp_path)
        _assert_finished(world, tmp_path, before)
        notes.append(f"{len(killed)} kills ({', '.join(killed)}), then Done")


# ---- the cluster's own control plane failing ---------------------------------------------------------------


def test_api_server_stopped_and_etcd_restarted_during_an_upgrade_end_done_or_resumable(
    clean_world: World, env: dict[str, str], tmp_path: Path, local: LocalCluster
) -> None:
    """kube-apiserver stopped for 20 s mid-control-plane step, etcd restarted while verifying the control
    plane, kube-apiserver stopped for 20 s mid-wave: each is ridden out, or stops the run with the resume
    command (never a traceback); resumed, the run ends as an uninterrupted one."""
    world = clean_world
    spec, before = _prepare(world, tmp_path, "stable-2.13.7")
    # (case, the state whose entry triggers the fault, seconds into it, the fault)
    faults: list[tuple[str, str, float, Callable[[], None]]] = [
        ("etcd restarted mid-run", "Preflight", 0.5, lambda: _restart(local, "etcd")),
        ("kube-apiserver stopped 20s mid-control-plane step", "UpgradingControlPlane", 1, lambda: _outage(local, 20)),
        ("kube-apiserver stopped 20s mid-wave", "RestartingDataPlane", 1, lambda: _outage(local, 20)),
    ]
    run: Run | None = Run.start(_args(world, "apply", "--to", TARGET, "--spec", str(spec), "--yes"), env)
    for case, state, delay, fault in faults:
        with recorded(case) as notes:
            if run is None:
                run = Run.start(_args(world, "resume", "--take-over-lock"), env)
            passed = run.last_state in HOP_SEQUENCE and HOP_SEQUENCE.index(run.last_state) > HOP_SEQUENCE.index(state)
            assert not passed, f"the run went past {state} (to {run.last_state}) during the previous fault"
            if run.last_state != state and run.until(_state_event(state)) is None:
                _assert_clean_stop(run.wait(), run.output)  # an earlier fault's retries ran out meanwhile
                run = Run.start(_args(world, "resume", "--take-over-lock"), env)
                assert run.until(_state_event(state)) is not None, run.output[-3000:]
            time.sleep(delay)
            fault()
            over = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # as the JSON log writes times
            assert _checkpoint(tmp_path) is not None
            # Ridden out: the run enters another state after the fault is over (events logged before are old news).
            nxt = run.until(lambda e, over=over: e.get("event") == "state" and e.get("timestamp", "") > over)
            if nxt is not None:
                notes.append(f"ridden out: went on to {nxt['state']}")
                continue
            code = run.wait()
            if code == 0:
                notes.append("ridden out: ended Done")
            else:
                _assert_clean_stop(code, run.output)
                notes.append(f"stopped resumable (exit {code})")
            run = None
    if run is not None:
        code = run.wait()
        if code != 0:
            _assert_clean_stop(code, run.output)
            _resume_to_done(world, env, tmp_path)
    else:
        _resume_to_done(world, env, tmp_path)
    _assert_finished(world, tmp_path, before)


def _outage(local: LocalCluster, seconds: float) -> None:
    """kube-apiserver down for ``seconds`` (connections refused), then up again on the same port.

    The cluster's own clients are restarted afterwards: their client-go backoff would otherwise keep
    rollouts waiting a minute or more after the API is back, which costs test time and tests nothing
    of upgrader's.
    """
    local.stop_component("kube-apiserver")
    time.sleep(seconds)
    local.start_component("kube-apiserver")
    for component in ("kube-controller-manager", "kube-scheduler", "kwok"):
        _restart(local, component, down=0)


def _restart(local: LocalCluster, component: str, down: float = 2) -> None:
    local.stop_component(component)
    time.sleep(down)
    local.start_component(component)


# ---- helm and the state store failing ----------------------------------------------------------------------


def test_helm_failing_on_the_control_plane_step_stops_resumable_and_resume_with_a_working_helm_ends_done(
    clean_world: World, env: dict[str, str], tmp_path: Path
) -> None:
    """A helm that fails `upgrade linkerd-control-plane` stops the run (exit 1, the resume command, no
    traceback); resumed with a working helm the run ends as an uninterrupted one."""
    world = clean_world
    with recorded("helm failing on the control-plane step") as notes:
        spec, before = _prepare(world, tmp_path, "stable-2.13.7")
        failing = tmp_path / "helm-failing"
        failing.write_text(
            "#!/bin/sh\n"
            'case " $* " in *" upgrade linkerd-control-plane "*)\n'
            '  echo "Error: UPGRADE FAILED: injected fault: helm failed" >&2; exit 1;;\n'
            "esac\n"
            f'exec {world.helm} "$@"\n'
        )
        failing.chmod(0o755)
        out = run_upgrader(
            *_args(world, "apply", "--to", TARGET, "--spec", str(spec), "--yes", helm=failing), env=env, timeout=600
        )
        _assert_clean_stop(out.returncode, out.stdout + out.stderr)
        assert "injected fault" in out.stderr, out.stderr[-3000:]
        stopped = _checkpoint(tmp_path)
        assert stopped is not None
        assert stopped["state"] in ("Failed", "Paused"), stopped
        assert stopped["stopped_in"] == "UpgradingControlPlane", stopped
        notes.append(f"stopped {stopped['state']} in {stopped['stopped_in']} (exit {out.returncode})")
        _resume_to_done(world, env, tmp_path)
        _assert_finished(world, tmp_path, before)


def _make_read_only(folder: Path) -> tuple[str, Callable[[], None]]:
    """Make ``folder`` refuse writes; returns the undo. As root chmod changes nothing, so root sets the
    immutable attribute (chattr +i) instead; where that is not allowed either, the folder is swapped for
    a regular file of the same name (every write into it fails). Returns how, and the undo."""
    if os.getuid() != 0:
        folder.chmod(0o500)
        return "chmod 0500", lambda: folder.chmod(0o700)
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False).returncode == 0:
        return "chattr +i (running as root)", lambda: subprocess.run(["chattr", "-i", str(folder)], check=True) and None
    aside = folder.with_name(folder.name + ".aside")
    folder.rename(aside)
    folder.write_text("not a folder\n")

    def undo() -> None:
        folder.unlink()
        aside.rename(folder)

    return "the folder swapped for a file (root without chattr)", undo


def test_state_store_turning_read_only_mid_run_stops_resumable_and_keeps_the_last_checkpoint(
    clean_world: World, env: dict[str, str], tmp_path: Path
) -> None:
    """The state-store folder refusing writes mid-run stops the run with a message naming the checkpoint and
    the resume command (no traceback); the last checkpoint stays whole; writable again, resume ends Done."""
    world = clean_world
    with recorded("state-store folder turning read-only") as notes:
        spec, before = _prepare(world, tmp_path, "stable-2.13.7")
        run = Run.start(_args(world, "apply", "--to", TARGET, "--spec", str(spec), "--yes"), env)
        assert run.until(_state_event("UpgradingControlPlane")) is not None, run.output[-3000:]
        how, undo = _make_read_only(tmp_path / "state")
        try:
            code = run.wait()
        finally:
            undo()
        _assert_clean_stop(code, run.output)
        assert "checkpoint" in run.output, run.output[-3000:]
        kept = _checkpoint(tmp_path)
        assert kept is not None
        assert kept["state"] != "Done", kept
        notes.append(f"read-only by {how}: stopped (exit {code}) with the checkpoint kept in {kept['state']}")
        _resume_to_done(world, env, tmp_path)
        _assert_finished(world, tmp_path, before)
        assert not list((tmp_path / "state").glob(".*")), "no temporary checkpoint file left behind"


# ---- passing API failures ----------------------------------------------------------------------------------


def test_passing_api_failures_injected_at_five_percent_during_a_whole_upgrade_end_done(
    clean_world: World, env: dict[str, str], tmp_path: Path, local: LocalCluster
) -> None:
    """upgrader's API requests go through a proxy that answers 5% of them with 429, 500 or 503 (the API
    server's Status bodies), or resets the connection before forwarding: the run ends Done, as an
    uninterrupted one. helm's requests pass the same proxy unharmed: helm is a program we call, not ours
    to retry inside (a failing helm is its own scenario above), and one faulted request in a chart's
    hundred would fail the whole helm upgrade."""
    world = clean_world
    with recorded("passing API failures (429, 500, 503, reset) at 5%") as notes:
        spec, before = _prepare(world, tmp_path, "stable-2.13.7")
        faulty = FaultProxy(local.root / "pki", local.ports["apiserver"], rate=0.05, only=(USER_AGENT,))
        with faulty as proxy:
            kubeconfig = proxy.kubeconfig(world.kubeconfig)
            out = run_upgrader(
                *_args(world, "apply", "--to", TARGET, "--spec", str(spec), "--yes", kubeconfig=kubeconfig),
                env=env,
                timeout=600,
            )
        injected = dict(proxy.injected)
        (tmp_path / "faulty-apply.log").write_text(out.stdout + out.stderr)
        assert out.returncode == 0, f"{injected}\n{out.stderr[-3000:]}"
        for word in BROKEN:
            assert word not in out.stderr, out.stderr[-3000:]
        assert set(injected) == set(KINDS), f"each kind of fault at least once: {injected} of {proxy.forwarded}"
        _assert_finished(world, tmp_path, before)
        notes.append(f"ended Done; {sum(injected.values())} faults ({injected}) in {proxy.forwarded} requests")
