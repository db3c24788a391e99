"""The input boundary: each reader refuses nasty files with one InputError (exit 2) naming the file; none hangs."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from upgrader import inputs
from upgrader.catalog import default_catalog
from upgrader.checkpoints import Checkpoint, FileStore, read_checkpoint
from upgrader.errors import EXIT_BAD_INPUT, InputError
from upgrader.planning import Observed, Plan, build_offering, make_plan
from upgrader.rendering import render
from upgrader.runs import load_plan_file
from upgrader.spec import Spec, load_spec, parse_duration
from upgrader.values import ValuesError, values_file
from upgrader.versions import kubernetes_version, parse, parse_chart_version

CAT = default_catalog()
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

ALIAS_BOMB = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
)


@pytest.fixture(autouse=True)
def _deadline() -> Iterator[None]:
    """A safety limit: a reader that blocks (a FIFO, /dev/zero) fails the test instead of hanging the suite."""

    def hung(_signum: int, _frame: object) -> None:
        raise TimeoutError("the reader blocked for 20 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _plan() -> Plan:
    offering, notes = build_offering(CAT, None)
    observed = Observed(CAT.parse("stable-2.13.7"), {"shop": {"stable-2.13.7": 2}}, "v1.22.1")
    return make_plan(observed, CAT.parse("stable-2.14.10"), offering, CAT, Spec(), offering_notes=notes)


def _plan_text() -> str:
    return render(_plan(), "json")


# Each nasty file: how to make it in a folder (returns its path) and what the error must say.
Maker = Callable[[Path], Path]


def _write(name: str, content: str | bytes) -> Maker:
    def make(folder: Path) -> Path:
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path

    return make


def _fifo(folder: Path) -> Path:
    path = folder / "pipe"
    os.mkfifo(path)
    return path


def _directory(folder: Path) -> Path:
    path = folder / "folder.json"
    path.mkdir()
    return path


def _dangling(folder: Path) -> Path:
    path = folder / "link.json"
    path.symlink_to(folder / "gone")
    return path


def _dev_zero(_folder: Path) -> Path:
    return Path("/dev/zero")


def _too_big(cap: int) -> Maker:
    def make(folder: Path) -> Path:
        path = folder / "big"
        with path.open("wb") as fh:
            fh.truncate(cap + 1)
        return path

    return make


NOT_A_FILE = [
    pytest.param(_fifo, "is a named pipe", id="a named pipe is refused without blocking"),
    pytest.param(_dev_zero, "is a character device", id="/dev/zero is refused without reading"),
    pytest.param(_directory, "is a directory", id="a directory is refused"),
    pytest.param(_dangling, "dangling symlink", id="a dangling symlink is refused"),
]

NASTY_YAML = [
    *NOT_A_FILE,
    pytest.param(_too_big(inputs.SPEC_CAP), "larger than 1 MiB", id="a file over the cap is refused"),
    pytest.param(_write("bomb.yaml", ALIAS_BOMB), "alias", id="an alias bomb of under 600 bytes is refused"),
    pytest.param(_write("rec.yaml", "a: &a [*a]\n"), "alias", id="a recursive anchor is refused"),
    pytest.param(_write("deep.yaml", "a: " + "[" * 10_000), "deeper than 50", id="10,000-deep nesting is refused"),
    pytest.param(_write("dup.yaml", "name: a\nname: b\n"), "line 2, column 1: duplicate key 'name'", id="dup keys"),
    pytest.param(_write("bin.yaml", b"name: \xff\xfe\n"), "not UTF-8 text: byte 6 (line 1)", id="non-UTF-8 bytes"),
    pytest.param(_write("broken.yaml", "a: [unclosed\n"), "not valid YAML: line 2", id="broken YAML names the line"),
    pytest.param(_write("tag.yaml", "a: !!python/name:os.system\n"), "line 1", id="a python tag is refused"),
    pytest.param(_write("two.yaml", "a: 1\n---\nb: 2\n"), "single document", id="two documents are refused"),
    pytest.param(_write("ctl.yaml", "a: 1\nb: \x07\n"), "line 2: character #x0007", id="a control character"),
    pytest.param(_write("nul.yaml", "\x00a: 1\n"), "line 1: character #x0000", id="a NUL byte"),
]


SPEC_SHAPES = [
    pytest.param("", "found empty", id="an empty spec is refused"),
    pytest.param("0\n", "found a number", id="a spec that is 0 is refused"),
    pytest.param("false\n", "found a boolean", id="a spec that is false is refused"),
    pytest.param("[]\n", "found a list", id="a spec that is a list is refused"),
    pytest.param("just words\n", "found a string", id="a spec that is a string is refused"),
    pytest.param(
        "dataPlane:\n  waves:\n    - name: a\n      namespaces: [x]\n      bakeTime: " + "9" * 400 + "s\n",
        "line 5, column 7: dataPlane.waves[0].bakeTime: '9999",
        id="a 400-digit bakeTime is refused naming the field",
    ),
    pytest.param(
        "dataPlane:\n  waves:\n    - name: a\n      namespaces: [x]\n      bakeTime: 1e50h\n",
        "dataPlane.waves[0].bakeTime: '1e50h' is not a duration",
        id="1e50h is not a duration",
    ),
    pytest.param("gates:\n  rolloutTimeout: 169h\n", "gates.rolloutTimeout: '169h' is longer than 7 days", id="8 days"),
    pytest.param("gates:\n  rolloutTimeout: \uff12m\n", "gates.rolloutTimeout", id="non-ASCII digits in a duration"),
    pytest.param(
        "window:\n  start: 1:00\n  end: '05:00'\n", "window.start: read as the number 60", id="window 1:00 unquoted"
    ),
    pytest.param("window: {start: '01:00'}\n", "window.end", id="flow window without an end"),
    pytest.param(
        "window: {start: '01:00', end: '05:00', timezone: Mars/Olympus_Mons}\n",
        "window.timezone: 'Mars/Olympus_Mons' is not an IANA time zone",
        id="an unknown time zone",
    ),
    pytest.param("gates:\n  prometheusUrl: prometheus:9090\n", "gates.prometheusUrl: must be an http", id="no scheme"),
    pytest.param("gates:\n  prometheusUrl: http://\n", "gates.prometheusUrl: must be an http", id="no host"),
    pytest.param(
        "gates:\n  prometheusUrl: 'http://u:secret@host:99999'\n", "gates.prometheusUrl", id="a bad port is refused"
    ),
    pytest.param("gates:\n  prometheusUrl: 'http://[::1'\n", "gates.prometheusUrl", id="a broken IPv6 host"),
    pytest.param("dataPlane:\n  maxNamespaces: " + "9" * 5000 + "\n", "a number of 5000 digits", id="5,000 digits"),
    pytest.param("dataPlane:\n  maxNamespaces: 0x" + "f" * 5000 + "\n", "a number of 5002", id="5,000 hex digits"),
    pytest.param("name: 2024-01-01\nnotAField: 1\n", "line 2, column 1: notAField: not a known field", id="unknown"),
]


@pytest.mark.parametrize(("make", "expected"), NASTY_YAML)
def test_a_nasty_spec_file_is_bad_input_naming_the_file(tmp_path: Path, make: Maker, expected: str) -> None:
    """Whatever the spec file is, load_spec raises one InputError (exit 2) naming it and what is wrong."""
    path = make(tmp_path)
    with pytest.raises(InputError) as info:
        load_spec(path)
    assert info.value.exit_code == EXIT_BAD_INPUT
    assert f"spec {path}" in info.value.message
    assert expected in info.value.message


@pytest.mark.parametrize(("text", "expected"), SPEC_SHAPES)
def test_a_spec_of_the_wrong_shape_is_bad_input_naming_the_field(tmp_path: Path, text: str, expected: str) -> None:
    """A spec must be a map of known fields with sane values; the error names the file, line and field path."""
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_spec(path)
    assert info.value.exit_code == EXIT_BAD_INPUT
    assert str(path) in info.value.message
    assert expected in info.value.message
    assert "secret" not in info.value.message, "a Prometheus URL is never echoed"


@pytest.mark.parametrize(("make", "expected"), NASTY_YAML)  # aliases: refused differently, tested below
def test_a_nasty_values_file_is_bad_input_naming_it(tmp_path: Path, make: Maker, expected: str) -> None:
    """values.file goes through the same reader: the error names the spec and the values file."""
    target = make(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"values:\n  file: {json.dumps(str(target))}\n")
    with pytest.raises(InputError) as info:
        load_spec(spec)
    assert info.value.exit_code == EXIT_BAD_INPUT
    assert f"values.file {target}" in info.value.message
    assert str(spec) in info.value.message
    if "alias" not in expected:
        assert expected in info.value.message


def test_a_values_file_alias_bomb_is_refused_but_anchors_are_read(tmp_path: Path) -> None:
    """values.file may use anchors like values-ha.yaml, but an alias bomb or a recursive anchor is refused."""
    (tmp_path / "ok.yaml").write_text("base: &r {cpu: 100m}\nproxy:\n  resources: *r\n")
    (tmp_path / "bomb.yaml").write_text(ALIAS_BOMB)
    (tmp_path / "rec.yaml").write_text("a: &a [*a]\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("values:\n  file: ok.yaml\n")
    assert load_spec(spec).values.overrides["proxy"] == {"resources": {"cpu": "100m"}}
    for name, expected in [("bomb.yaml", "expand to more than"), ("rec.yaml", "refers to itself")]:
        spec.write_text(f"values:\n  file: {name}\n")
        with pytest.raises(InputError, match=expected) as info:
            load_spec(spec)
        assert str(tmp_path / name) in info.value.message


def test_the_bomb_is_small() -> None:
    """The alias bomb used here is under 600 bytes (and would expand to 9**9 values)."""
    assert len(ALIAS_BOMB) < 600


def test_a_charts_values_ha_file_keeps_its_anchors_but_not_a_bomb() -> None:
    """values_file (a chart's values-ha.yaml) accepts anchors, refuses a bomb and duplicate keys."""
    assert values_file("a: &x {b: 1}\nc: *x\n", "values-ha.yaml") == {"a": {"b": 1}, "c": {"b": 1}}
    for text in (ALIAS_BOMB, "a: 1\na: 2\n", "a: &a [*a]\n"):
        with pytest.raises(ValuesError, match=r"values-ha\.yaml"):
            values_file(text, "values-ha.yaml")


# ---- plans ----------------------------------------------------------------------------------


def _edited(folder: Path) -> Path:
    data = json.loads(_plan_text())
    data["hops"][0]["to"] = "stable-2.14.9"
    return _write("edited.json", json.dumps(data))(folder)


def _no_digest(folder: Path) -> Path:
    data = json.loads(_plan_text())
    del data["digest"]
    return _write("old.json", json.dumps(data))(folder)


def _missing(field: str) -> Maker:
    def make(folder: Path) -> Path:
        data = json.loads(_plan_text())
        del data[field]
        return _write("missing.json", json.dumps(data))(folder)

    return make


NASTY_PLANS = [
    *NOT_A_FILE,
    pytest.param(_too_big(inputs.DOCUMENT_CAP), "larger than 16 MiB", id="a plan over 16 MiB is refused"),
    pytest.param(_write("list.json", "[]"), "expected a JSON object, found a list", id="a JSON list is not a plan"),
    pytest.param(_write("str.json", '"plan"'), "found a string", id="a JSON string is not a plan"),
    pytest.param(_write("num.json", "3"), "found a number", id="a JSON number is not a plan"),
    pytest.param(_write("null.json", "null"), "found null", id="null is not a plan"),
    pytest.param(_write("empty.json", ""), "line 1, column 1", id="an empty file is not a plan"),
    pytest.param(_write("bin.json", b'{"to": "\xff"}'), "byte 8 (line 1)", id="non-UTF-8 bytes"),
    pytest.param(_write("dup.json", '{"to": "a", "to": "b"}'), "duplicate key 'to'", id="duplicate keys"),
    pytest.param(_write("nan.json", '{"to": NaN}'), "NaN is not a JSON number", id="NaN is refused"),
    pytest.param(_write("inf.json", '{"to": 1e999}'), "to: expected a finite number", id="1e999 is refused"),
    pytest.param(_write("int.json", '{"to": ' + "1" * 5000 + "}"), "5000 digits", id="a 5,000-digit number"),
    pytest.param(_write("deep.json", "[" * 10_000 + "]" * 10_000), "deeper than 100", id="10,000-deep nesting"),
    pytest.param(_missing("to"), "to: missing", id="a plan missing 'to' names the field"),
    pytest.param(_write("hops.json", '{"from": null, "to": "x", "spec": "s", "hops": [1]}'), "hops[0]", id="a bad hop"),
    pytest.param(_edited, "does not match its digest: it was edited", id="an edited plan is refused"),
    pytest.param(_no_digest, "has no digest", id="a plan without a digest is refused"),
]


@pytest.mark.parametrize(("make", "expected"), NASTY_PLANS)
def test_a_nasty_plan_file_is_bad_input_naming_the_file(tmp_path: Path, make: Maker, expected: str) -> None:
    """apply --plan's reader refuses anything but an unedited plan written by `plan -o json`, naming the file."""
    path = make(tmp_path)
    with pytest.raises(InputError) as info:
        load_plan_file(path)
    assert info.value.exit_code == EXIT_BAD_INPUT
    assert f"plan {path}" in info.value.message
    assert expected in info.value.message
    assert "Traceback" not in info.value.message


def test_a_written_plan_round_trips_through_its_digest(tmp_path: Path) -> None:
    """`plan -o json` output carries a sha256 digest that load_plan_file accepts, and reads back the same plan."""
    path = tmp_path / "plan.json"
    path.write_text(_plan_text())
    saved = load_plan_file(path)
    assert json.loads(path.read_text())["digest"] == f"sha256:{inputs.json_digest(saved)}"
    assert Plan.from_json(saved) == _plan()


def test_the_yaml_plan_carries_the_same_digest() -> None:
    """-o yaml shows the same digest as -o json."""
    digest = json.loads(_plan_text())["digest"]
    assert f"digest: {digest}" in render(_plan(), "yaml")


# ---- checkpoints ----------------------------------------------------------------------------


def _checkpoint_text() -> str:
    return Checkpoint.new("run-1", _plan().as_json(), NOW).model_dump_json()


NASTY_CHECKPOINTS = [
    pytest.param(_write("run-1.json", ""), "line 1, column 1", id="an empty checkpoint"),
    pytest.param(_write("run-1.json", '{"run_id": "run-1"'), "line 1", id="a truncated checkpoint"),
    pytest.param(_write("run-1.json", b"\x80"), "not UTF-8 text: byte 0", id="non-UTF-8 bytes"),
    pytest.param(_write("run-1.json", "[]"), "not a JSON object", id="a list"),
    pytest.param(_write("run-1.json", '{"run_id": "run-1"}'), "plan: missing", id="a wrong schema names the field"),
    pytest.param(_write("run-1.json", "[" * 10_000), "deeper than 100", id="10,000-deep nesting"),
]


def _as_run_1(make: Maker) -> Maker:
    def make_named(folder: Path) -> Path:
        made = make(folder)
        if made.name != "run-1.json" and made != Path("/dev/zero"):
            made.rename(folder / "run-1.json")
        elif made == Path("/dev/zero"):
            (folder / "run-1.json").symlink_to("/dev/zero")
        return folder / "run-1.json"

    return make_named


@pytest.mark.parametrize(("make", "expected"), NASTY_CHECKPOINTS + NOT_A_FILE)
def test_a_nasty_checkpoint_is_bad_input_naming_the_file(tmp_path: Path, make: Maker, expected: str) -> None:
    """FileStore.fetch raises one InputError naming the checkpoint file; a survey lists it; nothing blocks."""
    path = _as_run_1(make)(tmp_path)
    store = FileStore(tmp_path)
    for read in (lambda: store.fetch(run_id="run-1"), lambda: read_checkpoint(path)):
        with pytest.raises(InputError) as info:
            read()
        assert info.value.exit_code == EXIT_BAD_INPUT
        assert f"checkpoint {path}" in info.value.message
        assert expected in info.value.message
    survey = store.survey()
    assert survey.runs == []
    assert [(u.where, expected in u.problem) for u in survey.unreadable] == [(str(path), True)]


def test_a_good_checkpoint_reads_back(tmp_path: Path) -> None:
    """A checkpoint written by the store reads back equal through the boundary."""
    store = FileStore(tmp_path)
    checkpoint = Checkpoint.model_validate_json(_checkpoint_text())
    store.store(checkpoint=checkpoint)
    assert store.fetch(run_id="run-1") == checkpoint
    assert store.runs() == [checkpoint]


# ---- kubeconfig and the CLI ----------------------------------------------------------------


@pytest.mark.parametrize(("make", "expected"), NOT_A_FILE)
def test_a_kubeconfig_that_is_not_a_regular_file_is_bad_input(tmp_path: Path, make: Maker, expected: str) -> None:
    """--kubeconfig must be a regular file (the kubernetes client reads it; a pipe must never reach it)."""
    path = make(tmp_path)
    with pytest.raises(InputError) as info:
        inputs.check_regular_file(path, what="kubeconfig")
    assert (info.value.exit_code, expected in info.value.message) == (EXIT_BAD_INPUT, True)
    assert f"kubeconfig {path}" in info.value.message


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "upgrader", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(("make", "expected"), NOT_A_FILE)
def test_the_cli_refuses_a_spec_that_is_not_a_file_with_exit_2(tmp_path: Path, make: Maker, expected: str) -> None:
    """`plan --spec <a pipe, /dev/zero, a folder>` exits 2 naming the file, without hanging or a traceback."""
    path = make(tmp_path)
    out = _cli("plan", "--offline", "--from", "stable-2.13.7", "--to", "stable-2.14.10", "--spec", str(path))
    assert out.returncode == EXIT_BAD_INPUT, out.stderr
    assert expected in out.stderr
    assert "Traceback" not in out.stderr


def test_apply_refuses_an_edited_plan_with_exit_2_before_touching_a_cluster(tmp_path: Path) -> None:
    """apply --plan of a plan edited after `plan -o json` exits 2 with a hint to plan again."""
    path = _edited(tmp_path)
    out = _cli("apply", "--plan", str(path), "--yes", "--kubeconfig", str(tmp_path / "none"), "--helm", "/no/helm")
    assert out.returncode == EXIT_BAD_INPUT, out.stderr
    assert "edited after it was written" in out.stderr
    assert "upgrader plan" in out.stderr
    assert "Traceback" not in out.stderr


def test_the_cli_refuses_a_kubeconfig_pipe_with_exit_2(tmp_path: Path) -> None:
    """`discover --kubeconfig <a named pipe>` exits 2 naming it instead of blocking in the kubernetes client."""
    pipe = _fifo(tmp_path)
    out = _cli("discover", "--kubeconfig", str(pipe), "--helm", sys.executable)
    assert out.returncode == EXIT_BAD_INPUT, out.stderr
    assert "is a named pipe" in out.stderr


# ---- numbers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parser", "text"),
    [
        pytest.param(parse, "stable-2.14." + "1" * 5000, id="a 5,000-digit version component is refused"),
        pytest.param(parse, "stable-\uff12.14.10", id="non-ASCII digits in a version are refused"),
        pytest.param(parse, "stable-2.\u0661\u0664.10", id="Arabic-Indic digits in a version are refused"),
        pytest.param(parse, "edge-24.8.1234567", id="a 7-digit edge number is refused"),
        pytest.param(parse, "stable-2.14.10\n", id="a trailing newline inside is still a version after strip"),
        pytest.param(parse_chart_version, "1.16." + "9" * 5000, id="a 5,000-digit chart version is refused"),
        pytest.param(parse_chart_version, "2024.\uff18.2", id="non-ASCII digits in a chart version are refused"),
        pytest.param(kubernetes_version, "v1." + "2" * 5000, id="a 5,000-digit Kubernetes minor is refused"),
    ],
)
def test_versions_accept_only_short_ascii_numbers(parser: Callable[[str], Any], text: str) -> None:
    """Version components are 1 to 6 ASCII digits; anything else is an InputError that does not echo 5,000 digits."""
    if text.endswith("\n"):
        assert str(parser(text)) == "stable-2.14.10"
        return
    with pytest.raises(InputError) as info:
        parser(text)
    assert info.value.exit_code == EXIT_BAD_INPUT
    assert len(info.value.message) < 200


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("9" * 400 + "s", id="400 digits"),
        pytest.param("1e50h", id="an exponent"),
        pytest.param("\uff12m", id="full-width digits"),
        pytest.param("169h", id="more than 7 days"),
        pytest.param("1h 30m", id="spaces inside"),
    ],
)
def test_durations_are_short_ascii_and_at_most_a_week(text: str) -> None:
    """parse_duration takes ASCII h/m/s durations up to 7 days; the rest is a ValueError, never an OverflowError."""
    with pytest.raises(ValueError, match=r"duration|7 days"):
        parse_duration(text)
    assert parse_duration("168h") == 7 * 24 * 3600
