"""Hand-written nasty inputs, one per class the reliability issue found, and a few more.

Each case is a sentence, the command it runs (files from ``corpus/`` or made on the spot:
FIFOs, /dev/zero, symlink loops), the exit codes that are right for it, and what the message
must show. The ones that could hang or eat memory run in a subprocess with a timeout and an
address-space limit; the rest run in-process like the generated cases.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.reliability.harness import judge, run_inprocess, run_subprocess
from tests.reliability.test_generated import OFFLINE, real_checkpoint, real_plan

CORPUS = Path(__file__).parent / "corpus"
Args = Callable[[Path], list[str]]


@dataclass(frozen=True)
class Case:
    args: Args
    exits: frozenset[int] = frozenset({2})
    shows: tuple[str, ...] = ()  # text the output must contain (the value echoed verbatim, the file named)
    isolated: bool = False  # could hang or eat memory: run in a subprocess
    hides: tuple[str, ...] = field(default=())  # text the output must not contain


def spec(name: str, *extra: str) -> Args:
    return lambda d: [*OFFLINE, "--spec", str(CORPUS / name), *extra]


def spec_at(make: Callable[[Path], Path]) -> Args:
    return lambda d: [*OFFLINE, "--spec", str(make(d))]


def plan_at(make: Callable[[Path], Path]) -> Args:
    return lambda d: ["apply", "--plan", str(make(d)), "--yes", "--kubeconfig", str(d / "none"), "--helm", "/no/helm"]


def plan_file(name: str) -> Args:
    return plan_at(lambda _d: CORPUS / name)


def store_with(make: Callable[[Path], None], *command: str) -> Args:
    """``command`` over a file store folder that ``make`` fills (run-1 damaged, run-good intact)."""

    def args(d: Path) -> list[str]:
        store = d / "runs"
        store.mkdir()
        good = dict(real_checkpoint(), run_id="run-good", started_at="2025-01-01T00:00:00Z")
        (store / "run-good.json").write_text(json.dumps(good))
        make(store)
        cluster = ["--kubeconfig", str(d / "none"), "--helm", "/no/helm"] if command[0] == "status" else []
        return [*command, "--state-store", f"file:{store}", *cluster]

    return args


def checkpoint_text(text: str | bytes) -> Callable[[Path], None]:
    def make(store: Path) -> None:
        target = store / "run-1.json"
        target.write_bytes(text if isinstance(text, bytes) else text.encode())

    return make


def checkpoint_edit(**changes: object) -> Callable[[Path], None]:
    return lambda store: (store / "run-1.json").write_text(json.dumps({**real_checkpoint(), **changes}))


def fifo(d: Path, name: str = "fifo") -> Path:
    path = d / name
    os.mkfifo(path)
    return path


def symlink_loop(d: Path) -> Path:
    (d / "a.yaml").symlink_to(d / "b.yaml")
    (d / "b.yaml").symlink_to(d / "a.yaml")
    return d / "a.yaml"


def values_file_spec(target: Callable[[Path], Path]) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        values = target(d)
        (d / "spec.yaml").write_text(f"values:\n  file: {values}\n")
        return d / "spec.yaml"

    return make


def big_word(d: Path) -> Path:
    (d / "spec.yaml").write_text("name: " + "w" * 50_000 + "\n")
    return d / "spec.yaml"


def deep_yaml(d: Path) -> Path:
    (d / "spec.yaml").write_text("name: " + "[" * 100_000 + "]" * 100_000 + "\n")
    return d / "spec.yaml"


def deep_plan(d: Path) -> Path:
    (d / "plan.json").write_text("[" * 100_000 + "]" * 100_000)
    return d / "plan.json"


def edited_plan(d: Path) -> Path:
    plan = real_plan()
    (d / "plan.json").write_text(json.dumps({**plan, "hops": plan["hops"][:1]}))
    return d / "plan.json"


def _write(d: Path, name: str, doc: object) -> Path:
    (d / name).write_text(json.dumps(doc))
    return d / name


def ok_versions(to: str, *extra: str) -> Args:
    return lambda _d: ["plan", "--from", "stable-2.12.6", "--offline", "--to", to, *extra]


CASES: dict[str, Case] = {
    # 1. markup and escapes echoed back
    "markup in --to is echoed verbatim": Case(ok_versions("[bold]oops"), shows=("[bold]oops",)),
    "a closing tag in --to does not crash the error handler": Case(ok_versions("[/]"), shows=("[/]",)),
    "an escape sequence in --to is not printed raw": Case(ok_versions("\x1b[2Jstable-2.14.10")),
    "markup in the spec name": Case(spec("spec-markup-name.yaml"), exits=frozenset({0, 2})),
    "markup in a wave name": Case(spec("spec-markup-wave.yaml"), exits=frozenset({0, 2})),
    "markup in a wave name, markdown output": Case(
        spec("spec-markup-wave.yaml", "-o", "markdown"), exits=frozenset({0, 2})
    ),
    "escape sequences in the spec name": Case(spec("spec-escape-name.yaml"), exits=frozenset({0, 2})),
    "markup and escapes in a checkpoint's run id (history)": Case(
        store_with(checkpoint_edit(run_id="[bold]x\x1b[31m"), "history"), exits=frozenset({0, 2})
    ),
    "markup in the run id asked for": Case(store_with(lambda s: None, "status", "[bold]run"), shows=("[bold]run",)),
    "markup in a plan file's target": Case(plan_file("plan-to-markup.json")),
    "markup in a reviewed plan's target": Case(
        plan_at(lambda d: _write(d, "plan.json", {**real_plan(), "to": "[bold]x"}))
    ),
    # 2. one bad checkpoint
    "an empty checkpoint: history names it": Case(
        store_with(checkpoint_text(""), "history"), exits=frozenset({0, 2}), shows=("run-1.json",)
    ),
    "a truncated checkpoint: status names it": Case(
        store_with(checkpoint_text((CORPUS / "checkpoint-truncated.json").read_text()), "status", "run-1"),
        shows=("run-1.json",),
    ),
    "a checkpoint of the wrong schema: history": Case(
        store_with(checkpoint_text((CORPUS / "checkpoint-wrong-schema.json").read_text()), "history"),
        exits=frozenset({0, 2}),
        shows=("run-1.json",),
    ),
    "a checkpoint that is a JSON list: history": Case(
        store_with(checkpoint_text((CORPUS / "checkpoint-list.json").read_text()), "history"),
        exits=frozenset({0, 2}),
        shows=("run-1.json",),
    ),
    "a checkpoint that is not UTF-8: history": Case(
        store_with(checkpoint_text(b'{"run_id": "caf\xe9"}'), "history"), exits=frozenset({0, 2}), shows=("run-1.json",)
    ),
    "a checkpoint with an unknown state: status": Case(
        store_with(checkpoint_edit(state="Exploded"), "status", "run-1"), shows=("run-1.json",)
    ),
    "naive and aware timestamps mixed: history": Case(
        store_with(checkpoint_edit(started_at="2026-01-01T00:00:00"), "history"), exits=frozenset({0, 2})
    ),
    "a dangling symlink as a checkpoint: history": Case(
        store_with(lambda s: (s / "run-1.json").symlink_to(s / "gone.json"), "history"), exits=frozenset({0, 2})
    ),
    "a directory where a checkpoint should be: history": Case(
        store_with(lambda s: (s / "run-1.json").mkdir(), "history"), exits=frozenset({0, 2})
    ),
    "a directory where a checkpoint should be: status": Case(
        store_with(lambda s: (s / "run-1.json").mkdir(), "status", "run-1")
    ),
    "a FIFO as a checkpoint: history": Case(
        store_with(lambda s: os.mkfifo(s / "run-1.json"), "history"), exits=frozenset({0, 2}), isolated=True
    ),
    "a FIFO as a checkpoint: status": Case(
        store_with(lambda s: os.mkfifo(s / "run-1.json"), "status", "run-1"), isolated=True
    ),
    "/dev/zero as a checkpoint: status": Case(
        store_with(lambda s: (s / "run-1.json").symlink_to("/dev/zero"), "status", "run-1"), isolated=True
    ),
    "a damaged checkpoint leaves status of another run working": Case(
        store_with(checkpoint_text("{"), "status", "run-good"), exits=frozenset({0})
    ),
    "--state-store file: naming a regular file": Case(
        lambda d: ["history", "--state-store", f"file:{CORPUS / 'plan-list.json'}"]
    ),
    "--state-store with no kind": Case(
        lambda d: ["history", "--state-store", "[bold]nowhere"], shows=("[bold]nowhere",)
    ),
    # 3. resource exhaustion
    "an alias bomb as a spec": Case(spec("spec-alias-bomb.yaml"), isolated=True),
    "an alias bomb as a values file": Case(spec("spec-values-file-bomb.yaml"), isolated=True),
    "a recursive anchor": Case(spec("spec-recursive-anchor.yaml"), isolated=True),
    "a recursive merge key": Case(spec("spec-recursive-merge.yaml"), isolated=True),
    "100,000 levels of nesting in a spec": Case(spec_at(deep_yaml), isolated=True),
    "100,000 levels of nesting in a plan file": Case(plan_at(deep_plan), isolated=True),
    "a 50,000-character word in a spec": Case(spec_at(big_word), exits=frozenset({0, 2}), isolated=True),
    "/dev/zero as a spec": Case(lambda d: [*OFFLINE, "--spec", "/dev/zero"], isolated=True),
    "a FIFO as a spec": Case(spec_at(fifo), isolated=True),
    "/dev/zero as a values file": Case(spec_at(values_file_spec(lambda _d: Path("/dev/zero"))), isolated=True),
    "a FIFO as a values file": Case(spec_at(values_file_spec(fifo)), isolated=True),
    "/dev/zero as a plan file": Case(plan_at(lambda _d: Path("/dev/zero")), isolated=True),
    "a FIFO as a plan file": Case(plan_at(fifo), isolated=True),
    "a directory as a spec": Case(spec_at(lambda d: d)),
    "a symlink loop as a spec": Case(spec_at(symlink_loop)),
    "a missing spec": Case(spec_at(lambda d: d / "missing.yaml")),
    # 4. numbers and parsing
    "a 5,000-digit version component": Case(ok_versions("stable-2." + "9" * 5000 + ".1")),
    "a 5,000-digit --from": Case(
        lambda d: ["plan", "--from", "stable-2.1" + "2" * 5000 + ".6", "--offline", "--to", "stable-2.14.10"]
    ),
    "a 400-digit bakeTime": Case(spec("spec-bake-400-digits.yaml")),
    "bakeTime 1e50h": Case(spec("spec-bake-1e50h.yaml")),
    "non-ASCII digits in a bakeTime": Case(spec("spec-bake-nonascii-digits.yaml")),
    "a 400-digit rolloutTimeout": Case(spec("spec-rollout-timeout-huge.yaml")),
    "a 5,000-digit maxNamespaces": Case(spec("spec-huge-throttle.yaml")),
    "a negative throttle": Case(spec("spec-negative-throttle.yaml")),
    "non-ASCII digits in a version": Case(ok_versions("stable-2.\u0661\u0664.10")),
    "full-width digits in a version": Case(ok_versions("stable-\uff12.14.10")),
    "window.start read as a number by YAML": Case(spec("spec-window-number.yaml")),
    "a --kubernetes version of 5,000 digits": Case(ok_versions("stable-2.14.10", "--kubernetes", "v1." + "9" * 5000)),
    # 5. wrong shapes
    "a spec that is 0": Case(spec("spec-zero.yaml")),
    "a spec that is false": Case(spec("spec-false.yaml")),
    "a spec that is an empty list": Case(spec("spec-list.yaml")),
    "an empty spec file": Case(spec("spec-empty.yaml")),
    "a spec of comments only": Case(spec("spec-only-comment.yaml")),
    "duplicate keys in a spec": Case(spec("spec-duplicate-keys.yaml"), shows=("onFailure",)),
    "a python tag in a spec": Case(spec("spec-python-tag.yaml")),
    "a spec that is not UTF-8": Case(spec("spec-non-utf8.yaml")),
    "a Prometheus URL that is not a URL": Case(spec("spec-prometheus-not-url.yaml")),
    "a Prometheus URL without a host": Case(spec("spec-prometheus-no-host.yaml")),
    "a values.file that is missing": Case(spec("spec-values-missing.yaml")),
    "a values.file that is a list": Case(spec("spec-values-list.yaml")),
    "a values.file pointing outside, to a file that is not values": Case(spec("spec-values-outside.yaml")),
    "a plan file that is a JSON list": Case(plan_file("plan-list.json")),
    "a plan file that is a string": Case(plan_file("plan-string.json")),
    "a plan file that is a number": Case(plan_file("plan-number.json")),
    "a plan file that is null": Case(plan_file("plan-null.json")),
    "a plan file missing 'to'": Case(plan_file("plan-missing-to.json")),
    "a plan file whose hops are a map": Case(plan_file("plan-hops-wrong-type.json")),
    "a truncated plan file": Case(plan_file("plan-truncated.json")),
    "a plan file edited after review": Case(plan_at(edited_plan)),
    # 6. the debug switch
    "--ack debug prints no traceback": Case(ok_versions("stable-2.14.10", "--ack", "debug"), exits=frozenset({0, 3})),
    "a spec path named debug prints no traceback": Case(lambda d: [*OFFLINE, "--spec", "debug"], hides=("Traceback",)),
    # others
    "an argument of 100,000 characters": Case(ok_versions("x" * 100_000), isolated=True),
    "4,000 arguments": Case(lambda d: [*OFFLINE, *(["--ack", "x"] * 2000)], exits=frozenset({0, 3})),
    "--log-level with markup": Case(
        lambda d: ["--log-level", "[bold]debug", "plan", "--to", "x"], shows=("[bold]debug",)
    ),
    "an --out path that is a directory": Case(lambda d: [*OFFLINE, "--out", str(d)]),
    "an --out path in a missing folder": Case(lambda d: [*OFFLINE, "--out", str(d / "no" / "plan.md")]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_nasty_input_is_handled(name: str, tmp_path: Path) -> None:
    """Each corpus case exits with its right code, shows what it must, and is handled (no traceback, no hang)."""
    case = CASES[name]
    folder = tmp_path / "case"
    folder.mkdir()
    args = case.args(folder)  # what the case leaves in tmp_path (stores, --out files) is scanned for keys after
    result = run_subprocess(args) if case.isolated else run_inprocess(args)
    judge(f"corpus: {name}", result)
    assert result.code in case.exits, (
        f"{name}: exit {result.code}, expected {sorted(case.exits)}\n{result.output[-2000:]}"
    )
    for text in case.shows:
        assert text in result.output, f"{name}: {text!r} not in the output:\n{result.output[-2000:]}"
    for text in case.hides:
        assert text not in result.output, f"{name}: {text!r} in the output:\n{result.output[-2000:]}"
