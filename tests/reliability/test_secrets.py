"""Secret hygiene: no private key in any output format, none on helm's command line, no shell.

The issuer key given in a spec's value overrides must not come out of `plan` (table, json,
markdown), the logs (console and json, at debug), checkpoints (file and Secret stores); helm
gets values on stdin and the kubeconfig as a path, never a token or a value on its command line;
and no user input reaches a shell: upgrader's own source never asks for one, and each helm
argument reaches the helm binary as one literal argument.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.harness import certs, leaks
from tests.reliability.harness import REPO, run_inprocess
from upgrader.adapters.helm import HelmAdapter
from upgrader.adapters.kube_state import SecretCheckpointStore
from upgrader.checkpoints import Checkpoint, FileStore, serialise

SOURCE = REPO / "upgrader"


@pytest.fixture(scope="module")
def issuer_key() -> str:
    return certs.new_ca("identity.linkerd.cluster.local").key_pem.decode()


def _spec_with_key(folder: Path, key: str) -> Path:
    spec = {
        "name": "with-secrets",
        "values": {"overrides": {"identity": {"issuer": {"tls": {"keyPEM": key, "crtPEM": "x"}}}}},
    }
    path = folder / "inputs" / "spec.yaml"  # inputs/ holds the key on purpose: the guard skips it
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("log_format", ["console", "json"])
@pytest.mark.parametrize("output", ["table", "json", "markdown"])
def test_a_key_in_the_spec_never_reaches_a_plan_or_a_log(
    tmp_path: Path, issuer_key: str, output: str, log_format: str
) -> None:
    """plan in every output format and log format (at debug), to stdout and to --out, carries no private key."""
    spec = _spec_with_key(tmp_path, issuer_key)
    out_file = tmp_path / f"plan.{output}"
    args = ["--log-format", log_format, "--log-level", "debug", "plan", "--from", "stable-2.12.6", "--offline"]
    args += ["--to", "stable-2.14.10", "--spec", str(spec), "-o", output]
    printed = run_inprocess(args)
    written = run_inprocess([*args, "--out", str(out_file)])
    assert (printed.code, written.code) == (0, 0), printed.stderr + written.stderr
    assert out_file.stat().st_size > 0
    assert not leaks.leaks_in(printed.output + written.output + out_file.read_text())


def test_checkpoints_of_a_plan_with_a_key_carry_none(tmp_path: Path, issuer_key: str) -> None:
    """A checkpoint of that plan, in a file store and in a Secret store, carries no private key."""
    spec = _spec_with_key(tmp_path, issuer_key)
    result = run_inprocess(
        ["plan", "--from", "stable-2.12.6", "--offline", "--to", "stable-2.14.10", "--spec", str(spec), "-o", "json"]
    )
    assert result.code == 0, result.stderr
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    checkpoint = Checkpoint.new("run-1", json.loads(result.stdout), now)
    FileStore(tmp_path / "runs").store(checkpoint=checkpoint)
    stored = (tmp_path / "runs" / "run-1.json").read_text()
    assert stat.S_IMODE(os.stat(tmp_path / "runs" / "run-1.json").st_mode) == 0o600

    class _Secrets:
        bodies: list[Any] = []  # noqa: RUF012 - one test's recorder

        def create_namespaced_secret(self, namespace: str, body: Any, **_kw: object) -> None:
            self.bodies.append(body)

        def replace_namespaced_secret(self, name: str, namespace: str, body: Any, **_kw: object) -> None:
            self.bodies.append(body)

        def read_namespaced_secret(self, name: str, namespace: str, **_kw: object) -> None:
            raise AssertionError("not read here")

    secrets = _Secrets()
    store = SecretCheckpointStore(None, "linkerd", sleep=lambda _s: None)  # type: ignore[arg-type]
    store._core = secrets  # type: ignore[assignment]
    store.store(checkpoint=checkpoint)
    assert secrets.bodies, "the Secret store wrote nothing"
    texts = [stored, serialise(checkpoint), *(repr(b) for b in secrets.bodies)]
    for body in secrets.bodies:
        data = body.get("data") if isinstance(body, dict) else getattr(body, "data", None)
        texts += [base64.b64decode(v).decode(errors="replace") for v in (data or {}).values()]
    assert not any(leaks.leaks_in(t) for t in texts)


def _fake_helm(folder: Path) -> tuple[Path, Path]:
    """A helm stand-in that writes its argv and stdin as JSON, and answers like `helm upgrade -o json`."""
    log = folder / "argv.jsonl"
    script = folder / "helm"
    release = {
        "name": "r",
        "namespace": "n",
        "version": 1,
        "info": {"status": "deployed"},
        "chart": {"metadata": {"name": "c", "version": "1"}},
    }
    script.write_text(
        "#!/usr/bin/env python3\nimport json, sys\n"
        "stdin = '' if sys.stdin.isatty() else sys.stdin.read()\n"
        f"open({str(log)!r}, 'a').write(json.dumps({{'argv': sys.argv[1:], 'stdin': stdin}}) + '\\n')\n"
        f"print({json.dumps(json.dumps(release))})\n"
    )
    script.chmod(0o755)
    return script, log


NASTY = ["$(touch PWNED)", "`touch PWNED`", "a; touch PWNED", "a' \"b", "a\nb", "*", "--kube-token=x"]


@pytest.mark.parametrize("nasty", NASTY)
def test_helm_gets_each_argument_literally_and_values_on_stdin(
    tmp_path: Path, nasty: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Release, chart and namespace with shell syntax reach helm as single arguments, without a shell;
    values only on stdin."""

    shells: list[object] = []

    def no_shell(*args: object, **_kwargs: object) -> None:
        shells.append(args)
        raise OSError("no shell here")

    monkeypatch.setattr(asyncio, "create_subprocess_shell", no_shell)
    script, log = _fake_helm(tmp_path)
    kubeconfig = tmp_path / "kubeconfig"
    helm = HelmAdapter(executable=str(script), kubeconfig=kubeconfig, context="ctx", sleep=lambda _s: None)
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        with contextlib.suppress(Exception):  # the fake's answer may not parse; the command line is what we check
            helm.upgrade(
                nasty,
                f"linkerd/{nasty}",
                nasty,
                {"password": "hunter2-secret", "token": "tok-secret"},
                version="1.0.0",
                repo=nasty,
            )
    finally:
        os.chdir(cwd)
    assert shells == [], "helm was started through a shell"
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    upgrade = next(c for c in calls if c["argv"][:1] == ["upgrade"])
    argv = upgrade["argv"]
    assert argv[1:5] == [nasty, f"linkerd/{nasty}", "--namespace", nasty]
    assert ["--kubeconfig", str(kubeconfig)] == argv[argv.index("--kubeconfig") : argv.index("--kubeconfig") + 2]
    assert argv[argv.index("--values") + 1] == "-"
    joined = "\0".join(argv)
    assert "hunter2-secret" not in joined
    assert "tok-secret" not in joined
    assert not any(a.startswith(("--kube-token", "--password", "--token", "--set")) for a in argv if a != nasty)
    assert "hunter2-secret" in upgrade["stdin"]
    assert not (tmp_path / "PWNED").exists(), "a shell ran part of an argument"


def test_the_helm_adapter_has_no_way_to_put_a_token_on_the_command_line() -> None:
    """HelmAdapter takes a kubeconfig path, never a token: pyhelm3's --kube-token stays unset."""
    helm = HelmAdapter(executable="helm", kubeconfig=Path("/k"))
    command = helm._command
    assert command._kubetoken is None
    assert "token" not in HelmAdapter.__init__.__code__.co_varnames


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            found.append((name, node))
    return found


SHELL_CALLS = {"system", "popen", "create_subprocess_shell", "getoutput", "getstatusoutput"}
SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output", "create_subprocess_exec"}


def test_no_user_input_reaches_a_shell() -> None:
    """upgrader's source never starts a shell: no shell=True, os.system/popen, or a command given as one string."""
    offenders = []
    files = sorted(SOURCE.rglob("*.py"))
    assert len(files) > 20
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for name, call in _calls(tree):
            where = f"{path.relative_to(REPO)}:{call.lineno}"
            if name in SHELL_CALLS:
                offenders.append(f"{where}: {name}()")
            if any(
                k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                for k in call.keywords
            ):
                offenders.append(f"{where}: shell=")
            if (
                name in SUBPROCESS_CALLS
                and call.args
                and isinstance(call.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp))
            ):
                offenders.append(f"{where}: {name}() with a command string")
            if name == "run" and call.args and isinstance(call.args[0], (ast.JoinedStr, ast.BinOp)):
                offenders.append(f"{where}: run() with a built string")
    assert offenders == []


def test_helm_commands_are_built_as_lists() -> None:
    """Every command the helm adapter hands pyhelm3's runner is a list literal (or a list variable), never a string."""
    tree = ast.parse((SOURCE / "adapters" / "helm.py").read_text())
    runs = [call for name, call in _calls(tree) if name == "run" and call.args]
    assert runs, "the helm adapter no longer calls its runner"
    for call in runs:
        first = call.args[0]
        assert isinstance(first, (ast.List, ast.Name, ast.Call, ast.Starred)), ast.unparse(call)
        if isinstance(first, ast.Call):
            assert ast.unparse(first.func) == "list", ast.unparse(call)


@pytest.mark.parametrize("output", ["table", "json", "markdown"])
def test_a_webhook_urls_credentials_never_reach_a_plan_or_a_log(tmp_path: Path, issuer_key: str, output: str) -> None:
    """A spec's notify.webhookUrl with user:pass@ and a token: plan and its debug logs never show either, nor the
    issuer key next to it."""
    spec = _spec_with_key(tmp_path, issuer_key)
    data = yaml.safe_load(spec.read_text())
    data["notify"] = {"webhookUrl": "https://bot:pw-7f3e@hooks.example.com/x?token=tk-51aa"}
    spec.write_text(yaml.safe_dump(data))
    args = ["--log-format", "json", "--log-level", "debug", "plan", "--from", "stable-2.12.6", "--offline"]
    result = run_inprocess([*args, "--to", "stable-2.14.10", "--spec", str(spec), "-o", output])
    assert result.code == 0, result.stderr
    assert not leaks.leaks_in(result.output)
    assert "pw-7f3e" not in result.output
    assert "tk-51aa" not in result.output


def test_a_notification_payload_never_carries_the_issuer_key(issuer_key: str) -> None:
    """A stop reason that quotes the issuer key (a helm error echoing values) is sent redacted."""
    from upgrader.audit import Notice, Transition  # noqa: PLC0415
    from upgrader.notifications import events_for  # noqa: PLC0415
    from upgrader.states import RunState  # noqa: PLC0415

    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    change = Transition(
        "run-1", now, RunState.UPGRADING_CONTROL_PLANE, RunState.FAILED, 0, "stable-2.13.7", "stable-2.14.10",
        f"helm said: bad value {issuer_key}", next_command="upgrader resume run-1",
    )  # fmt: skip
    payloads = events_for(change, [Notice("run-failed", 0)], plan_from=None, plan_to=None, installation={})
    assert payloads
    assert not leaks.leaks_in(json.dumps(payloads))
