"""Generated bad inputs (hypothesis): versions, spec files, plan files and checkpoints, all offline.

Every case runs the real CLI in this process and must be handled (see ``harness.problems``):
exit 0, 2 or 3, no traceback, no "internal error", no raw escape sequence, within the time and
memory bounds. Runs are derandomized and keep no example database, so CI sees the same
1,000+ cases every time.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability import strategies as nasty
from tests.reliability.harness import REPO, judge, run_inprocess
from upgrader.checkpoints import Checkpoint, serialise

SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,  # the harness's alarm bounds each case instead (hypothesis deadlines are flaky on busy CI)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=False,
)
SPECS = sorted((REPO / "plans").glob("*.yaml"))
OFFLINE = ["plan", "--from", "stable-2.12.6", "--offline", "--to", "stable-2.14.10"]


@contextmanager
def scratch() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="upgrader-reliability-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@functools.cache
def real_plan() -> dict[str, Any]:
    """A real offline plan (two hops, staged waves) as ``plan -o json`` writes it."""
    result = run_inprocess([*OFFLINE, "--spec", str(REPO / "plans" / "staged-rollout.yaml"), "-o", "json"])
    assert result.code == 0, result.stderr
    plan: dict[str, Any] = json.loads(result.stdout)
    return plan


@functools.cache
def real_checkpoint() -> dict[str, Any]:
    """A checkpoint of that plan, serialised as the file store writes it."""
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cp = Checkpoint.new("run-1", real_plan(), now)
    cp.mark(now, cp.state)
    data: dict[str, Any] = json.loads(serialise(cp))
    return data


version = st.one_of(st.sampled_from(nasty.GOOD_VERSIONS), nasty.nasty_text)


@settings(SETTINGS, max_examples=300)
@given(
    from_=version,
    to=version,
    extra=st.lists(
        st.one_of(
            st.tuples(st.just("--kubernetes"), st.one_of(st.sampled_from(["v1.28.4", "1.30", "v1"]), nasty.nasty_text)),
            st.tuples(st.just("--ack"), st.one_of(st.just("chart-split-2.12"), nasty.nasty_text)),
            st.tuples(st.just("-o"), st.sampled_from(["table", "json", "markdown", "[bold]x"])),
        ),
        max_size=2,
    ),
)
def test_any_version_pair_is_handled(from_: str, to: str, extra: list[tuple[str, str]]) -> None:
    """`plan --from X --offline --to Y` with any X and Y (and odd --kubernetes/--ack/-o) is handled."""
    args = ["plan", "--from", from_, "--offline", "--to", to, *(a for pair in extra for a in pair)]
    args = [a.replace("\x00", "") for a in args]  # a real argv cannot carry NUL
    judge(f"version {args!r}", run_inprocess(args))


@settings(SETTINGS, max_examples=330)
@given(
    spec=st.sampled_from(SPECS),
    data=st.data(),
    output=st.sampled_from(["table", "json", "markdown"]),
)
def test_any_mutated_spec_is_handled(spec: Path, data: st.DataObject, output: str) -> None:
    """Each example spec with dropped, duplicated, retyped or nasty keys, or damaged text, is handled."""
    text = spec.read_text()
    if data.draw(st.booleans(), label="structural"):
        doc = data.draw(nasty.mutated(yaml.safe_load(text)), label="mutated")
        content = nasty.yaml_dump(doc)
    else:
        content = data.draw(nasty.text_mutated(text), label="damaged")
    with scratch() as folder:
        path = folder / "spec.yaml"
        path.write_bytes(content)
        result = run_inprocess([*OFFLINE, "--spec", str(path), "-o", output])
    judge(f"spec {spec.name} -o {output}: {content[:200]!r}", result)


@settings(SETTINGS, max_examples=250)
@given(data=st.data())
def test_any_mutated_plan_file_is_handled(data: st.DataObject) -> None:
    """`apply --plan FILE` with a damaged real plan is handled before anything reaches a cluster."""
    if data.draw(st.booleans(), label="structural"):
        content = json.dumps(data.draw(nasty.mutated(real_plan()), label="mutated")).encode()
    else:
        content = data.draw(nasty.text_mutated(json.dumps(real_plan(), indent=2)), label="damaged")
    with scratch() as folder:
        path = folder / "plan.json"
        path.write_bytes(content)
        result = run_inprocess(
            [
                "apply",
                "--plan",
                str(path),
                "--yes",
                "--kubeconfig",
                str(folder / "no-kubeconfig"),
                "--helm",
                "/nonexistent/helm",
            ]
        )
    judge(f"plan file: {content[:200]!r}", result)


@settings(SETTINGS, max_examples=250)
@given(data=st.data(), command=st.sampled_from(["history", "status", "status-json", "history-json", "status-good"]))
def test_any_mutated_checkpoint_is_handled(data: st.DataObject, command: str) -> None:
    """`history` and `status` over a file store holding a damaged checkpoint beside a good one are handled."""
    if data.draw(st.booleans(), label="structural"):
        content = json.dumps(data.draw(nasty.mutated(real_checkpoint()), label="mutated")).encode()
    else:
        content = data.draw(nasty.text_mutated(json.dumps(real_checkpoint(), indent=2)), label="damaged")
    with scratch() as folder:
        store = folder / "runs"
        store.mkdir()
        (store / "run-1.json").write_bytes(content)
        good = dict(real_checkpoint(), run_id="run-good", started_at="2025-01-01T00:00:00Z")
        (store / "run-good.json").write_text(json.dumps(good))
        offline = ["--state-store", f"file:{store}"]
        cluster = ["--kubeconfig", str(folder / "no-kubeconfig"), "--helm", "/nonexistent/helm"]
        args = {
            "history": ["history", *offline],
            "history-json": ["history", "-o", "json", *offline],
            "status": ["status", "run-1", *offline, *cluster],
            "status-json": ["status", "run-1", "-o", "json", *offline, *cluster],
            "status-good": ["status", "run-good", *offline, *cluster],
        }[command]
        result = run_inprocess(args)
    judge(f"checkpoint {command}: {content[:200]!r}", result)
    if command == "status-good":
        assert result.code == 0, f"a damaged run-1 broke status of run-good: {result.stderr[-2000:]}"
