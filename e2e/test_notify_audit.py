"""Notifications to a webhook on 127.0.0.1 and the audit record `history` shows, on the local cluster.

The receiver is a real HTTP server in this process: it answers 200, 500, or hangs. Every payload it
captures goes to the leak guard (``e2e/harness/leaks.py``), which also looks for the URL's password
and token in the payloads, upgrader's output and the test's files.
"""

from __future__ import annotations

import base64
import datetime as dt
import getpass
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from e2e.fixtures.world import World
from e2e.harness import leaks
from e2e.harness.leaks import run_upgrader
from upgrader.adapters.webhook import WebhookNotifier

USER, PASSWORD, TOKEN = "hookuser", "hook-pass-5e1f", "tok-9a7c"
STRICT = ("--min-cert-days", "36500")  # no issuer lives a hundred years: preflight fails, nothing changes


class Receiver:
    """A webhook on 127.0.0.1: records each request (payload and Authorization), answers as ``mode`` says."""

    def __init__(self) -> None:
        self.mode = "ok"  # ok | fail (500) | hang (no answer until the test ends)
        self.requests: list[tuple[dict[str, Any], str]] = []
        self.released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                leaks.PAYLOADS.append(body)
                receiver.requests.append((json.loads(body), self.headers.get("Authorization") or ""))
                if receiver.mode == "hang":
                    receiver.released.wait(120)
                    return
                self.send_response(500 if receiver.mode == "fail" else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, *, credentials: bool = True) -> str:
        login = f"{USER}:{PASSWORD}@" if credentials else ""
        return f"http://{login}127.0.0.1:{self.server.server_port}/hook?token={TOKEN}"

    def kinds(self) -> list[str]:
        """Each event kind once, in the order first received (a 500 makes the sender try again)."""
        seen: dict[tuple[str, str], str] = {}
        for payload, _ in self.requests:
            seen.setdefault((payload["kind"], payload["at"]), payload["kind"])
        return list(seen.values())

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    leaks.CREDENTIALS.update({PASSWORD, TOKEN})
    made = Receiver()
    yield made
    made.close()


def _spec(tmp_path: Path, name: str, url: str) -> Path:
    path = tmp_path / "inputs" / f"{name}.yaml"  # inputs/: the spec holds the credentials on purpose
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        f"name: {name}\nwaivers: [kubernetes-version]\nnotify:\n  webhookUrl: '{url}'\n  timeout: 1s\n  retries: 1\n"
    )
    return path


def _apply(world: World, env: dict[str, str], spec: Path, *extra: str) -> tuple[Any, float]:
    started = time.monotonic()
    out = run_upgrader(
        "apply", "--to", "stable-2.14.10", "--spec", str(spec), "--yes", *extra,
        "--kubeconfig", str(world.kubeconfig), "--helm", str(world.helm), env=env, timeout=600,
    )  # fmt: skip
    return out, time.monotonic() - started


def test_a_run_notifies_each_state_change_and_leaves_an_audit_record(
    clean_world: World, tmp_path: Path, receiver: Receiver
) -> None:
    """A failing preflight (issuer validity) sends run-failed with its reason and next command (to a webhook
    answering 500, and to one that hangs, neither slowing the run); a real apply sends started, hop started, hop
    done, done, with the URL's credentials as a header and nowhere else; `history -o json` shows who, the plan
    digest and hop times."""
    world = clean_world
    world.install("stable-2.13.7")
    env = world.helm_env(tmp_path)

    receiver.mode = "fail"
    failed, fail_seconds = _apply(world, env, _spec(tmp_path, "strict", receiver.url()), *STRICT)
    assert failed.returncode == 4, failed.stderr[-2000:]
    assert receiver.kinds() == ["run-started", "hop-started", "run-failed"]
    stop = next(p for p, _ in receiver.requests if p["kind"] == "run-failed")
    assert stop["reason"].startswith("preflight failed before hop 1: ")
    assert "identity.issuer-validity" in stop["reason"]
    assert "upgrader resume run-" in stop["next_command"]
    assert (stop["state"], stop["from"], stop["to"]) == ("Failed", "stable-2.13.7", "stable-2.14.10")
    assert "notification-dropped" in failed.stderr, "a refused event is logged"
    assert "<redacted>" in failed.stderr, "with the URL redacted"

    receiver.mode, receiver.requests = "hang", []
    hung, hang_seconds = _apply(world, env, _spec(tmp_path, "strict-hang", receiver.url()), *STRICT)
    assert hung.returncode == 4, hung.stderr[-2000:]
    assert receiver.requests, "the webhook was called"
    # a blocking sender would wait 120 s per event; this one waits at most timeout + 1 s at the end
    assert hang_seconds < fail_seconds + 20, (hang_seconds, fail_seconds)

    receiver.released.set()
    receiver.mode, receiver.requests = "ok", []
    done, _ = _apply(world, env, _spec(tmp_path, "waived", receiver.url()))
    assert done.returncode == 0, done.stderr[-2000:]
    assert receiver.kinds() == ["run-started", "hop-started", "hop-done", "run-done"]
    payloads = [p for p, _ in receiver.requests]
    run_id = payloads[0]["run_id"]
    assert all(p["schema"] == 1 and p["run_id"] == run_id for p in payloads)
    assert payloads[0]["installation"]["namespace"] == "linkerd"
    assert payloads[0]["installation"]["cluster"].startswith("https://127.0.0.1:")
    assert payloads[1]["hop"] == {"number": 1, "from": "stable-2.13.7", "to": "stable-2.14.10"}
    assert payloads[-1]["state"] == "Done"
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert {auth for _, auth in receiver.requests} == {expected}, "user:pass@ becomes the Authorization header"

    listed = run_upgrader("history", "-o", "json", env=env, timeout=60)
    assert listed.returncode == 0, listed.stderr[-2000:]
    runs = {r["run_id"]: r for r in json.loads(listed.stdout)}
    assert len(runs) == 3
    record = runs[run_id]
    assert record["by"] == f"{getpass.getuser()}@{socket.gethostname()}"
    assert (record["from"], record["to"], record["state"]) == ("stable-2.13.7", "stable-2.14.10", "Done")
    assert record["plan_digest"].startswith("sha256:")
    assert record["audit"]["waivers"] == ["kubernetes-version"]
    (hop,) = record["audit"]["hops"]
    assert (hop["hop"], hop["from"], hop["to"], hop["outcome"]) == (1, "stable-2.13.7", "stable-2.14.10", "done")
    assert dt.datetime.fromisoformat(hop["started_at"]) < dt.datetime.fromisoformat(hop["ended_at"])
    assert [h["outcome"] for r in runs.values() if r["state"] == "Failed" for h in r["audit"]["hops"]] == [
        "failed",
        "failed",
    ]
    table = run_upgrader("history", env={**env, "COLUMNS": "250"}, timeout=60)
    assert "1 done" in table.stdout
    checkpoint = (tmp_path / "state" / f"{run_id}.json").read_text()
    assert "webhookUrl" in checkpoint
    for secret in (PASSWORD, TOKEN):
        assert secret not in checkpoint + done.stdout + done.stderr + failed.stderr + hung.stderr


def test_the_webhook_notifier_retries_a_500_then_delivers_and_never_blocks_its_caller(receiver: Receiver) -> None:
    """Against the real receiver: send returns at once even while the webhook hangs; a 500 is retried."""
    receiver.mode = "hang"
    notifier = WebhookNotifier(receiver.url(credentials=False), timeout=1.0, retries=0, capacity=2)
    started = time.monotonic()
    for n in range(5):  # more than the queue holds: the extra ones are dropped, none waits
        notifier.send({"kind": "run-started", "at": str(n)})
    assert time.monotonic() - started < 0.5
    notifier.close(wait=1.0)
    assert time.monotonic() - started < 5
    assert notifier.sent == 0
    assert notifier.dropped >= 3

    receiver.released.clear()
    receiver.mode, receiver.requests = "fail", []
    flaky = WebhookNotifier(receiver.url(credentials=False), timeout=1.0, retries=2)
    flaky.send({"kind": "run-done", "at": "x"})
    flaky.close(wait=5.0)
    assert len(receiver.requests) == 3, "one attempt and two retries"
    assert (flaky.sent, flaky.dropped) == (0, 1)
