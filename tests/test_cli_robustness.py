"""The CLI's output and error paths under hostile values: echoed values stay plain text, one bad
checkpoint hides no run, state stores are checked, a refusal is exit 3, never a traceback."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from upgrader import runs
from upgrader.checkpoints import Checkpoint, FileStore
from upgrader.cli import main
from upgrader.cli.common import Bars, plain_console
from upgrader.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_REFUSED
from upgrader.execution import NothingToRollBackError
from upgrader.logs import bounded, configure, markup_safe, printable

OFFLINE = ("plan", "--offline", "--from", "stable-2.12.6")
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, str]:
    """Run ``upgrader ARGS`` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["upgrader", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    out = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else EXIT_OK if code is None else EXIT_FAILED), out.out, out.err


def good_checkpoint(run_id: str = "run-good", started: dt.datetime = NOW) -> Checkpoint:
    plan = {"from": "stable-2.12.6", "to": "stable-2.13.7", "hops": [{"from": "stable-2.12.6", "to": "stable-2.13.7"}]}
    return Checkpoint.new(run_id, plan, started)


# ---- markup and control characters ------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["[bold]oops", "[/]", "x[/bold]", "[link=file:///etc]x", "[red]a[/red]", ":smile:"],
    ids=["an opening tag", "a bare closing tag", "an unmatched closing tag", "a link tag", "a whole tag", "an emoji"],
)
def test_a_version_with_markup_is_echoed_verbatim(
    value: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad --to is named exactly as given (markup neither read nor crashing), exit 2."""
    code, _out, err = cli(capsys, monkeypatch, *OFFLINE, "--to", value)
    assert code == EXIT_BAD_INPUT, err
    assert f"error: {value!r} is not a Linkerd version" in err
    assert "internal error" not in err
    assert "Traceback" not in err


def test_escape_sequences_in_an_error_are_shown_not_sent(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value carrying ESC, CR or a bidi override reaches the terminal as visible escapes."""
    code, _out, err = cli(capsys, monkeypatch, "history", "--state-store", "kubernetes:a\x1b[31m\r\u202e")
    assert code == EXIT_BAD_INPUT, err
    assert "\x1b" not in err
    assert "\r" not in err
    assert "\u202e" not in err
    assert "\\x1b[31m" in err


def _explode(message: str) -> Callable[..., object]:
    def boom(*_a: object, **_k: object) -> object:
        raise RuntimeError(message)

    return boom


def test_an_internal_error_with_markup_and_escapes_is_one_safe_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An unexpected exception prints `internal error: Type: message` (markup kept, ESC made visible), exit 1."""
    monkeypatch.setattr(FileStore, "survey", _explode("[/] broke [bold]\x1b[2J"))
    code, _out, err = cli(capsys, monkeypatch, "history", "--state-store", f"file:{tmp_path}")
    assert code == EXIT_FAILED
    assert "internal error: RuntimeError: [/] broke [bold]\\x1b[2J" in err
    assert "hint: rerun with --log-level debug for the traceback and report it" in err
    assert "\x1b" not in err
    assert "Traceback" not in err


def test_the_error_handler_falls_back_to_a_plain_write_when_printing_fails(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """If rich itself fails while reporting, the error still reaches stderr as a plain line, exit 1."""
    import upgrader.cli as cli_module  # noqa: PLC0415

    monkeypatch.setattr(FileStore, "survey", _explode("boom\x07"))
    monkeypatch.setattr(cli_module, "print_error", _explode("rich is broken"))
    code, _out, err = cli(capsys, monkeypatch, "history", "--state-store", f"file:{tmp_path}")
    assert code == EXIT_FAILED
    assert "internal error: 'RuntimeError: boom\\\\x07'" in err
    assert "\x07" not in err


@pytest.mark.parametrize(
    "args",
    [("--log-level", "debug"), ("--log-level=debug",), ("--log-level", "DEBUG")],
    ids=["--log-level debug", "--log-level=debug", "--log-level DEBUG"],
)
def test_log_level_debug_in_any_spelling_shows_the_traceback(
    args: tuple[str, ...], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--log-level debug (either spelling) lets an internal error's traceback through."""
    monkeypatch.setattr(FileStore, "survey", _explode("debug me"))
    monkeypatch.setattr(sys, "argv", ["upgrader", *args, "history", "--state-store", f"file:{tmp_path}"])
    with pytest.raises(RuntimeError, match="debug me"):
        main()


def test_an_argument_that_says_debug_does_not_turn_on_tracebacks(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`--log-level info` with some other argument equal to `debug` still gives the one-line internal error."""
    monkeypatch.setattr(FileStore, "survey", _explode("no traceback"))
    code, _out, err = cli(
        capsys, monkeypatch, "--log-level", "info", "history", "--state-store", f"file:{tmp_path}/debug"
    )
    assert code == EXIT_FAILED
    assert "internal error: RuntimeError: no traceback" in err


def test_console_log_lines_show_control_characters_as_escapes(capsys: pytest.CaptureFixture[str]) -> None:
    """A logged value with ESC is printed as \\x1b by the console renderer."""
    configure("console", "info")
    try:
        structlog.get_logger("t").warning("event\x1b[1m", run_id="r\x1b[31m")
        logging.getLogger("pyhelm3.x").warning("helm says \x1b]0;title\x07")
    finally:
        configure("console", "info")
    err = capsys.readouterr().err
    assert "\x1b" not in err
    assert "\x07" not in err
    assert "event\\x1b[1m" in err
    assert "r\\x1b[31m" in err


def test_progress_bars_take_any_wave_name() -> None:
    """A wave name with markup is a progress bar label, not markup (no MarkupError)."""
    bars = Bars(plain_console(width=80))
    bars("[/]wave [bold]", 1, 2)
    bars.close()


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain\ttext\n", "plain\ttext\n"),
        ("\x1b[31m", "\\x1b[31m"),
        ("\x00\x7f\x9b", "\\x00\\x7f\\x9b"),
        ("a\u202eb\u2066", "a\\u202eb\\u2066"),
        ("caf\u00e9 \u4e2d", "caf\u00e9 \u4e2d"),
    ],
    ids=["newline and tab kept", "ESC shown", "NUL, DEL and C1 shown", "bidi overrides shown", "letters kept"],
)
def test_printable(text: str, shown: str) -> None:
    """printable keeps text and newlines, shows control characters as escapes."""
    assert printable(text) == shown


def test_markup_safe_and_bounded() -> None:
    """markup_safe escapes tags; bounded cuts long values with an ellipsis."""
    assert markup_safe("[bold]x\x1b") == "\\[bold]x\\x1b"
    assert bounded("x" * 300, 10) == "x" * 9 + "…"
    assert bounded("short", 10) == "short"


# ---- a 50,000-character word ------------------------------------------------------------------


def test_a_50000_character_spec_name_and_wave_render_as_a_bounded_table(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A huge unbreakable word in a spec renders (linear: no highlighter) and is cut with an ellipsis in tables."""
    word = "w" * 50_000
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"apiVersion: upgrader.io/v1alpha1\nkind: UpgradeSpec\nname: {word}\n"
        f"dataPlane:\n  waves:\n    - name: {word}\n      namespaces: [shop]\n"
    )
    code, table, err = cli(capsys, monkeypatch, *OFFLINE, "--to", "stable-2.14.10", "--spec", str(spec))
    assert code == EXIT_OK, err
    assert "w" * 100 in table
    assert "…" in table
    assert len(table) < 20_000, "the table holds a bounded piece of the word"
    code, out, err = cli(capsys, monkeypatch, *OFFLINE, "--to", "stable-2.14.10", "--spec", str(spec), "-o", "json")
    assert code == EXIT_OK, err
    assert json.loads(out)["spec"] == word, "JSON is never cut"


def test_a_50000_character_run_id_column_stays_bounded(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A checkpoint whose plan carries a 50,000-character version prints a bounded history table, exit 0."""
    cp = good_checkpoint()
    cp.plan["to"] = "v" * 50_000
    FileStore(tmp_path).store(checkpoint=cp)
    code, out, err = cli(capsys, monkeypatch, "history", "--state-store", f"file:{tmp_path}")
    assert code == EXIT_OK, err
    assert "run-good" in out
    assert "v" * 50 in out
    assert len(out) < 20_000


# ---- one bad checkpoint -----------------------------------------------------------------------


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda store: (store / name).write_bytes(data)


def _edited(**changes: object) -> Callable[[Path], None]:
    def make(store: Path) -> None:
        doc = json.loads(good_checkpoint("run-bad").model_dump_json())
        (store / "run-bad.json").write_text(json.dumps({**doc, **changes}))

    return make


def _dangling(store: Path) -> None:
    (store / "run-bad.json").symlink_to(store / "nowhere.json")


def _directory(store: Path) -> None:
    (store / "run-bad.json").mkdir()


BAD_CHECKPOINTS: dict[str, Callable[[Path], None]] = {
    "truncated JSON": lambda store: (store / "run-bad.json").write_text(
        good_checkpoint("run-bad").model_dump_json()[:50]
    ),
    "an empty file": _write("run-bad.json", b""),
    "a JSON list": _write("run-bad.json", b"[1, 2]"),
    "a wrong schema": _write("run-bad.json", b'{"run_id": 5, "plan": "x"}'),
    "non-UTF-8 bytes": _write("run-bad.json", b'{"run_id": "caf\xe9"}'),
    "an unknown state": _edited(state="Exploded"),
    "a dangling symlink": _dangling,
    "a directory": _directory,
}


@pytest.mark.parametrize("damage", list(BAD_CHECKPOINTS.values()), ids=list(BAD_CHECKPOINTS))
def test_history_lists_the_good_runs_and_names_a_bad_checkpoint(
    damage: Callable[[Path], None], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """history next to a damaged checkpoint: the good run listed, one warning naming the bad file, exit 0."""
    FileStore(tmp_path).store(checkpoint=good_checkpoint())
    damage(tmp_path)
    code, out, err = cli(capsys, monkeypatch, "history", "--state-store", f"file:{tmp_path}", "-o", "json")
    assert code == EXIT_OK, err
    assert [r["run_id"] for r in json.loads(out)] == ["run-good"]
    warnings = [line for line in err.splitlines() if line.startswith("warning: cannot read")]
    assert len(warnings) == 1, err
    assert str(tmp_path / "run-bad.json") in warnings[0]
    assert "internal error" not in err


@pytest.mark.parametrize("damage", list(BAD_CHECKPOINTS.values()), ids=list(BAD_CHECKPOINTS))
def test_status_of_a_bad_checkpoint_is_bad_input_naming_the_file(
    damage: Callable[[Path], None], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """status of the damaged run is exit 2 naming its file; status of the good run still works."""
    FileStore(tmp_path).store(checkpoint=good_checkpoint())
    damage(tmp_path)
    code, _out, err = cli(capsys, monkeypatch, "status", "run-bad", "--state-store", f"file:{tmp_path}")
    assert code == EXIT_BAD_INPUT, err
    assert str(tmp_path / "run-bad.json") in err
    code, out, err = cli(capsys, monkeypatch, "status", "run-good", "--state-store", f"file:{tmp_path}")
    assert code == EXIT_OK, err
    assert out.startswith("run run-good: Planned")


def test_status_without_a_run_skips_a_bad_checkpoint_and_names_it_when_nothing_else_is_left(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """status (the latest run) reads past a damaged checkpoint; with only damaged ones it names the file, exit 2."""
    (tmp_path / "run-bad.json").write_text("{")
    code, _out, err = cli(capsys, monkeypatch, "status", "--state-store", f"file:{tmp_path}")
    assert code == EXIT_BAD_INPUT
    assert f"cannot read {tmp_path / 'run-bad.json'}" in err
    FileStore(tmp_path).store(checkpoint=good_checkpoint())
    code, out, err = cli(capsys, monkeypatch, "status", "--state-store", f"file:{tmp_path}")
    assert code == EXIT_OK, err
    assert out.startswith("run run-good:")


def test_naive_and_aware_timestamps_sort_together(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A hand-edited checkpoint with a naive time is read as UTC and sorted with the others."""
    FileStore(tmp_path).store(checkpoint=good_checkpoint("run-late", NOW))
    doc = json.loads(good_checkpoint("run-early").model_dump_json())
    doc["started_at"] = doc["updated_at"] = "2026-01-01T00:00:00"  # no zone
    (tmp_path / "run-early.json").write_text(json.dumps(doc))
    code, out, err = cli(capsys, monkeypatch, "history", "--state-store", f"file:{tmp_path}", "-o", "json")
    assert code == EXIT_OK, err
    listed = json.loads(out)
    assert [r["run_id"] for r in listed] == ["run-early", "run-late"]
    assert listed[0]["started_at"] == "2026-01-01T00:00:00+00:00"


def test_a_run_id_with_markup_and_escapes_prints_as_text(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A checkpoint whose run id holds markup and ESC: history and status show it as visible text."""
    doc = json.loads(good_checkpoint("run-odd").model_dump_json())
    doc["run_id"] = "[bold]x[/]\x1b[31m"
    (tmp_path / "run-odd.json").write_text(json.dumps(doc))
    code, out, err = cli(capsys, monkeypatch, "history", "--state-store", f"file:{tmp_path}")
    assert code == EXIT_OK, err
    assert "\x1b" not in out
    assert "[bold]x[/]\\x1b[31m" in out
    code, out, err = cli(capsys, monkeypatch, "status", "run-odd", "--state-store", f"file:{tmp_path}", "-o", "json")
    assert code == EXIT_OK, err
    assert "\x1b" not in out
    assert json.loads(out)["run_id"] == "[bold]x[/]\x1b[31m", "JSON keeps the value, escaped"


# ---- state stores -----------------------------------------------------------------------------


def test_a_file_as_the_state_store_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--state-store file:<a regular file> is exit 2 'is a file, not a folder', not an empty history."""
    plain = tmp_path / "plain"
    plain.write_text("")
    code, out, err = cli(capsys, monkeypatch, "history", "--state-store", f"file:{plain}")
    assert code == EXIT_BAD_INPUT
    assert f"--state-store file:{plain} is a file, not a folder" in err
    assert out == ""


def test_a_missing_state_store_folder_is_an_empty_history(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A folder that does not exist yet is an empty store (it is created on the first run)."""
    code, out, err = cli(capsys, monkeypatch, "history", "--state-store", f"file:{tmp_path / 'new'}", "-o", "json")
    assert (code, json.loads(out)) == (EXIT_OK, []), err


@pytest.mark.parametrize(
    "store", ["kubernetes:Bad_NS", "kubernetes:a\nb", "kubernetes:" + "a" * 64, "s3:bucket", "file:"]
)
def test_a_state_store_that_cannot_be_a_namespace_or_folder_is_bad_input_before_any_client(
    store: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A malformed --state-store is exit 2 without building a cluster client."""
    monkeypatch.setattr(runs, "kube_adapter", _explode("no client for bad input"))
    code, _out, err = cli(capsys, monkeypatch, "history", "--state-store", store)
    assert code == EXIT_BAD_INPUT, err
    assert "--state-store" in err


def test_an_unreachable_kubernetes_state_store_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """kubernetes:NS with no API server: the classified 'did not answer' error and a hint, exit 1 (no MaxRetryError)."""
    from upgrader.adapters.kube_state import SecretCheckpointStore  # noqa: PLC0415

    kwdefaults = SecretCheckpointStore.__init__.__kwdefaults__
    assert kwdefaults is not None
    monkeypatch.setitem(kwdefaults, "sleep", lambda _s: None)  # the backoff, not waited for here
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {token: t}}]\n"
    )
    args = ("history", "--state-store", "kubernetes:ns", "--kubeconfig", str(kubeconfig))
    code, _out, err = cli(capsys, monkeypatch, *args)
    assert code == EXIT_FAILED
    assert "error: the Kubernetes API did not answer while listing checkpoint Secrets in ns" in err
    assert "--kubeconfig" in err
    assert "internal error" not in err


# ---- a second rollback ------------------------------------------------------------------------


def test_a_rollback_with_nothing_left_is_refused_with_exit_3(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`rollback` of a run already rolled back to where it started: 'already rolled back', exit 3."""
    cp = good_checkpoint("run-back")
    FileStore(tmp_path).store(checkpoint=cp)
    monkeypatch.setattr(runs, "resume_session", lambda *_a, **_k: object())

    def scope(*_a: object, **_k: object) -> object:
        raise NothingToRollBackError("run run-back is already rolled back to where it started", hint="x")

    monkeypatch.setattr(runs, "rollback_scope", scope)
    code, _out, err = cli(capsys, monkeypatch, "rollback", "run-back", "--state-store", f"file:{tmp_path}", "--yes")
    assert code == EXIT_REFUSED
    assert "already rolled back" in err
    assert NothingToRollBackError("", hint="").exit_code == EXIT_REFUSED


def test_the_shell_never_sees_the_state_store_folder_as_a_file(tmp_path: Path) -> None:
    """open_store refuses a dangling link as the folder too."""
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(Exception, match="is a dangling link, not a folder"):
        runs.open_store(f"file:{link}", None)
    assert not os.path.exists(link)


def test_the_secret_store_lists_good_runs_and_names_each_bad_secret() -> None:
    """kubernetes: store: a Secret with no key, bad base64 or a bad document is named; the good run is listed."""
    import base64  # noqa: PLC0415
    from types import SimpleNamespace  # noqa: PLC0415

    from upgrader.adapters.kube_state import SecretCheckpointStore  # noqa: PLC0415

    def secret(name: str, data: dict[str, str] | None) -> SimpleNamespace:
        return SimpleNamespace(metadata=SimpleNamespace(name=name), data=data)

    good = base64.b64encode(good_checkpoint().model_dump_json().encode()).decode()
    items = [
        secret("upgrader-run-good", {"checkpoint.json": good}),
        secret("upgrader-run-empty", None),
        secret("upgrader-run-b64", {"checkpoint.json": "%%%"}),
        secret("upgrader-run-json", {"checkpoint.json": base64.b64encode(b"{").decode()}),
        secret("upgrader-run-utf8", {"checkpoint.json": base64.b64encode(b"\xff").decode()}),
    ]

    class Core:
        def list_namespaced_secret(self, namespace: str, **_kw: object) -> SimpleNamespace:
            return SimpleNamespace(items=items)

    store = SecretCheckpointStore(None, "ops", sleep=lambda _s: None)  # type: ignore[arg-type]
    store._core = Core()
    found = store.survey()
    assert [c.run_id for c in found.runs] == ["run-good"]
    assert [u.where for u in found.unreadable] == [
        "Secret ops/upgrader-run-empty",
        "Secret ops/upgrader-run-b64",
        "Secret ops/upgrader-run-json",
        "Secret ops/upgrader-run-utf8",
    ]
    assert "not UTF-8" in found.unreadable[-1].problem
