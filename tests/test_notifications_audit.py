"""Notifications and the audit record: what each state change sends and records, and what history shows."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import MemoryStore
from tests.test_cli_robustness import cli, good_checkpoint
from tests.test_execution import CAT, NOW, FakeCluster, _plan
from upgrader import audit, notifications, runs
from upgrader.adapters.webhook import WebhookNotifier
from upgrader.audit import Actor, Notice, Transition, follow
from upgrader.checkpoints import Checkpoint, FileStore
from upgrader.errors import EXIT_BAD_INPUT, InputError
from upgrader.execution import Executor, RunStoppedError
from upgrader.planning import Plan
from upgrader.runs import RunOptions, Session, history_entry, new_checkpoint
from upgrader.spec import Spec, load_spec
from upgrader.states import RunState

ME = Actor(kind="user", name="ops", host="bastion")
INSTALLATION = {"namespace": "linkerd", "cluster": "https://10.0.0.1:6443"}


class Sent:
    """The notifier port, recording: each state change's payloads as the run layer builds them."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.events: list[dict[str, Any]] = []
        self.plan = checkpoint.plan

    def __call__(self, change: Transition, notices: list[Notice]) -> None:
        self.events += notifications.events_for(
            change, notices, plan_from=self.plan.get("from"), plan_to=self.plan.get("to"), installation=INSTALLATION
        )

    def kinds(self) -> list[tuple[str, int | None]]:
        return [(e["kind"], e["hop"]["number"] if e["hop"] else None) for e in self.events]


def _run(cluster: FakeCluster, plan: Plan, action: str = "apply") -> tuple[Executor, Sent]:
    checkpoint = Checkpoint.new("run-1", plan.as_json(), NOW)
    checkpoint.audit = audit.begin(
        None, plan=checkpoint.plan, plan_digest=f"sha256:{checkpoint.plan_hash}", by=ME, action=action, now=NOW
    )
    sent = Sent(checkpoint)
    executor = Executor(
        plan, Spec(), CAT, cluster, MemoryStore(), checkpoint, clock=lambda: cluster.now, sleep=cluster.sleep
    )
    executor.on_transition = sent
    return executor, sent


def test_a_two_hop_run_sends_started_each_hop_started_and_done_then_done_in_order() -> None:
    """2.12 -> 2.14: run-started, hop 1 started/done, hop 2 started/done, run-done; each payload complete."""
    cluster = FakeCluster()
    executor, sent = _run(cluster, _plan("stable-2.12.6", "stable-2.14.10"))
    executor.run()
    assert sent.kinds() == [
        ("run-started", 1),
        ("hop-started", 1),
        ("hop-done", 1),
        ("hop-started", 2),
        ("hop-done", 2),
        ("run-done", 2),
    ]
    first, done = sent.events[0], sent.events[-1]
    assert set(first) == {
        "schema", "kind", "run_id", "installation", "from", "to", "hop", "state", "reason", "at", "next_command",
        "resume_at",
    }  # fmt: skip
    assert (first["schema"], first["run_id"], first["installation"]) == (1, "run-1", INSTALLATION)
    assert (first["from"], first["to"]) == ("stable-2.12.6", "stable-2.14.10")
    assert sent.events[2]["hop"] == {"number": 1, "from": "stable-2.12.6", "to": "stable-2.13.7"}
    assert (done["state"], done["next_command"]) == ("Done", None)
    assert dt.datetime.fromisoformat(done["at"]) == cluster.now, "time comes from the injected clock"


def test_the_audit_record_keeps_each_hops_times_and_outcome_from_the_clock() -> None:
    """After a two-hop run the record has both hops done, each started before it ended, who and the digest."""
    cluster = FakeCluster()
    executor, _ = _run(cluster, _plan("stable-2.12.6", "stable-2.14.10"))
    record = executor.run().audit
    assert record is not None
    assert [(h.hop, h.from_, h.to, h.outcome) for h in record.hops] == [
        (1, "stable-2.12.6", "stable-2.13.7", "done"),
        (2, "stable-2.13.7", "stable-2.14.10", "done"),
    ]
    assert all(h.ended_at is not None and h.started_at <= h.ended_at for h in record.hops)
    assert record.hops[0].ended_at == record.hops[1].started_at
    assert str(record.by) == "ops@bastion"
    assert record.plan_digest.startswith("sha256:")
    assert record.waivers == ["kubernetes-version"]
    assert [(i.action, str(i.by)) for i in record.invocations] == [("apply", "ops@bastion")]


def test_a_failed_run_sends_failed_with_the_reason_and_next_command_then_resume_and_rollback() -> None:
    """A failing control-plane upgrade: run-failed naming the reason and resume/rollback; the hop is `failed`,
    a rollback sends rollback-started and rolled-back and marks the hop `rolled-back`."""
    cluster = FakeCluster()
    cluster.fail_upgrade_of = "linkerd-control-plane"
    executor, sent = _run(cluster, _plan("stable-2.12.6", "stable-2.13.7"))
    with pytest.raises(RunStoppedError):
        executor.run()
    failed = sent.events[-1]
    assert failed["kind"] == "run-failed"
    assert "context deadline exceeded" in failed["reason"]
    assert "upgrader resume run-1" in failed["next_command"]
    assert executor.checkpoint.audit is not None
    assert [h.outcome for h in executor.checkpoint.audit.hops] == ["failed"]
    executor.rollback()
    assert [k for k, _ in sent.kinds()][-2:] == ["rollback-started", "rolled-back"]
    assert [h.outcome for h in executor.checkpoint.audit.hops] == ["rolled-back"]


def test_a_resumed_run_sends_resumed_and_keeps_the_hops_first_start() -> None:
    """Failed -> resumed: run-resumed (no second hop-started), the hop's first start kept, then done."""
    change = Transition("run-1", NOW, RunState.PLANNED, RunState.PREFLIGHT, 0, "stable-2.12.6", "stable-2.13.7", "go")
    record = audit.begin(None, plan={}, plan_digest="sha256:x", by=ME, action="apply", now=NOW)
    record, _ = follow(record, change)
    later = NOW + dt.timedelta(minutes=5)
    failing = Transition("run-1", later, RunState.PREFLIGHT, RunState.FAILED, 0, "stable-2.12.6", "stable-2.13.7", "x")
    record, _ = follow(record, failing)
    again = Transition("run-1", later, RunState.FAILED, RunState.PREFLIGHT, 0, "stable-2.12.6", "stable-2.13.7", "r")
    record, notices = follow(record, again)
    assert [n.kind for n in notices] == ["run-resumed"]
    assert record is not None
    assert (record.hops[0].started_at, record.hops[0].outcome, record.hops[0].ended_at) == (NOW, "running", None)


def test_a_paused_run_sends_paused_with_the_reason_the_resume_time_and_the_next_command() -> None:
    """A pause (a closing window says when the next opens) carries its reason, resume_at and next command."""
    at, reopens = NOW, NOW + dt.timedelta(hours=20)
    change = Transition(
        "run-1", at, RunState.RESTARTING_DATA_PLANE, RunState.PAUSED, 0, "stable-2.13.7", "stable-2.14.10",
        "window closes at 05:00 Europe/Berlin; the next wave needs about 12 min",
        next_command="upgrader resume run-1", resume_at=reopens,
    )  # fmt: skip
    _, notices = follow(None, change)
    (payload,) = notifications.events_for(
        change, notices, plan_from="stable-2.13.7", plan_to="stable-2.14.10", installation=INSTALLATION
    )
    assert payload["kind"] == "run-paused"
    assert payload["reason"].startswith("window closes at 05:00")
    assert payload["resume_at"] == reopens.isoformat()
    assert payload["next_command"] == "upgrader resume run-1"


def test_a_private_key_in_a_reason_never_reaches_a_payload() -> None:
    """A reason quoting a PEM private key is sent redacted."""
    pem = "-----BEGIN EC PRIVATE KEY-----\nMHc=\n-----END EC PRIVATE KEY-----"
    payload = notifications.event(
        "run-failed", run_id="r", at=NOW, state="Failed", reason=f"bad value {pem}", plan_from=None, plan_to=None,
        hop=0, hop_from=None, hop_to=None, installation={},
    )  # fmt: skip
    assert "PRIVATE KEY" not in json.dumps(payload)


@pytest.mark.parametrize(
    ("url", "secrets", "shown"),
    [
        pytest.param(
            "https://bot:s3cret@hooks.example.com/x", ["bot", "s3cret", "/x"], "https://hooks.example.com/<redacted>",
            id="user and password are left out",
        ),
        pytest.param(
            "https://hooks.example.com/x?token=abc123&channel=ops", ["abc123", "ops", "token"],
            "https://hooks.example.com/<redacted>", id="the query is left out",
        ),
        pytest.param("http://h:8080/p#sig=zz9", ["zz9", "/p"], "http://h:8080/<redacted>", id="a fragment is left out"),
        pytest.param(
            "https://hooks.slack.com/services/T000/B000/XXXXSECRET", ["XXXXSECRET", "T000", "B000", "services"],
            "https://hooks.slack.com/<redacted>", id="a token in the path (Slack) is left out",
        ),
        pytest.param(
            "https://discord.com/api/webhooks/123/tok3n", ["tok3n", "123"], "https://discord.com/<redacted>",
            id="a token in the path (Discord) is left out",
        ),
        pytest.param("https://hooks.example.com", [], "https://hooks.example.com/<redacted>", id="a bare host too"),
        pytest.param("https://[::1]:9000/x", ["/x"], "https://[::1]:9000/<redacted>", id="an IPv6 host and port"),
    ],
)  # fmt: skip
def test_redacted_url(url: str, secrets: list[str], shown: str) -> None:
    """The stored and logged form of a webhook URL keeps no credential."""
    assert notifications.redacted_url(url) == shown
    assert not any(s in notifications.redacted_url(url) for s in secrets)


def _jwt(claims: dict[str, Any]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJSUzI1NiJ9.{body}.c2ln"


@pytest.mark.parametrize(
    ("env", "files", "who"),
    [
        pytest.param({}, {}, "ops@bastion", id="outside a cluster the user and host"),
        pytest.param(
            {"KUBERNETES_SERVICE_HOST": "10.0.0.1"},
            {"token": _jwt({"kubernetes.io": {"namespace": "ops", "serviceaccount": {"name": "upgrader"}}})},
            "system:serviceaccount:ops:upgrader", id="in a pod the bound token's service account",
        ),
        pytest.param(
            {"KUBERNETES_SERVICE_HOST": "10.0.0.1"},
            {"token": _jwt({"kubernetes.io/serviceaccount/service-account.name": "old"}), "namespace": "legacy\n"},
            "system:serviceaccount:legacy:old", id="a legacy token's name and the namespace file",
        ),
        pytest.param(
            {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, {"token": "not-a-jwt"}, "ops@bastion",
            id="an unreadable token falls back to the user",
        ),
        pytest.param({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, {}, "ops@bastion", id="no token falls back to the user"),
    ],
)  # fmt: skip
def test_who_runs(env: dict[str, str], files: dict[str, str], who: str) -> None:
    """Who a run is recorded as: the ServiceAccount in a pod, else user@host; the token itself is never kept."""
    found = audit.actor(env, files.get, user=lambda: "ops", host="bastion")
    assert str(found) == who
    assert "c2ln" not in found.model_dump_json()


@pytest.mark.parametrize(
    ("notify", "problem"),
    [
        pytest.param("webhookUrl: 'ftp://u:pw@h/x'", "notify.webhookUrl: must be an http", id="not http is refused"),
        pytest.param("webhookUrl: 'https://u:pw@/x'", "notify.webhookUrl: must be an http", id="no host is refused"),
        pytest.param("webhookUrl: 'https://u:pw@h:99999/x'", "notify.webhookUrl: must be", id="a bad port"),
        pytest.param("webhookUrl: https://h/x\n  timeout: 0s", "from 1s to 60s", id="a zero timeout"),
        pytest.param("webhookUrl: https://h/x\n  timeout: 5m", "from 1s to 60s", id="a timeout over a minute"),
        pytest.param("webhookUrl: https://h/x\n  retries: 11", "notify.retries", id="too many retries"),
        pytest.param("webhookUrl: https://h/x\n  retry: 1", "notify.retry: not a known field", id="an unknown key"),
    ],
)
def test_bad_notify_settings_are_bad_input_without_echoing_the_url(tmp_path: Path, notify: str, problem: str) -> None:
    """notify is checked like gates.prometheusUrl: exit 2 naming the field; the URL is never printed back."""
    path = tmp_path / "spec.yaml"
    path.write_text(f"notify:\n  {notify}\n")
    with pytest.raises(InputError) as exc:
        load_spec(path)
    assert exc.value.exit_code == EXIT_BAD_INPUT
    assert problem in exc.value.message
    assert "pw" not in exc.value.message


def test_a_new_run_stores_the_webhook_url_redacted_and_asks_for_the_spec_on_resume() -> None:
    """The checkpoint's spec keeps the URL without its credentials; resume must be given --spec again."""
    spec = Spec.model_validate({"notify": {"webhookUrl": "https://bot:s3cret@hooks.example.com/x?token=t0k"}})
    session = Session(spec, CAT, _plan("stable-2.12.6", "stable-2.13.7"))
    checkpoint = new_checkpoint(session, RunOptions(), clock=lambda: NOW)
    stored = json.dumps(checkpoint.spec)
    assert "s3cret" not in stored
    assert "t0k" not in stored
    assert checkpoint.spec["notify"]["webhookUrl"] == "https://hooks.example.com/<redacted>"
    assert checkpoint.spec_has_values


def test_a_slack_url_is_never_stored_and_any_notify_url_needs_the_spec_on_resume() -> None:
    """A Slack-style URL has its secret in the path: the checkpoint keeps scheme and host only, and even a
    URL without credentials makes resume ask for --spec (the stored one cannot be told apart)."""
    slack = "https://hooks.slack.com/services/T000/B000/XXXXSECRET"
    spec = Spec.model_validate({"notify": {"webhookUrl": slack}})
    checkpoint = new_checkpoint(
        Session(spec, CAT, _plan("stable-2.12.6", "stable-2.13.7")), RunOptions(), clock=lambda: NOW
    )
    stored = checkpoint.model_dump_json()
    assert "XXXXSECRET" not in stored
    assert "T000" not in stored
    assert checkpoint.spec["notify"]["webhookUrl"] == "https://hooks.slack.com/<redacted>"
    assert checkpoint.spec_has_values


def _audited(run_id: str = "run-audited") -> Checkpoint:
    checkpoint = good_checkpoint(run_id)
    checkpoint.audit = audit.begin(
        None, plan=checkpoint.plan, plan_digest=f"sha256:{checkpoint.plan_hash}", by=ME, action="apply", now=NOW
    )
    change = Transition("r", NOW, RunState.PLANNED, RunState.PREFLIGHT, 0, "stable-2.12.6", "stable-2.13.7", "go")
    checkpoint.audit, _ = follow(checkpoint.audit, change)
    done = Transition(
        "r", NOW + dt.timedelta(minutes=4, seconds=12), RunState.VERIFYING_DATA_PLANE, RunState.DONE, 0, None, None, ""
    )
    checkpoint.audit, _ = follow(checkpoint.audit, done)
    checkpoint.state = RunState.DONE
    return checkpoint


def test_history_json_shows_who_the_plan_digest_versions_and_hop_times(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """history -o json: each run's user, plan digest, from/to and each hop's start, end and outcome."""
    FileStore(tmp_path).store(checkpoint=_audited())
    code, out, err = cli(capsys, monkeypatch, "history", "--state-store", f"file:{tmp_path}", "-o", "json")
    assert code == 0, err
    (run,) = json.loads(out)
    assert run == history_entry(FileStore(tmp_path).runs()[0])
    assert (run["by"], run["from"], run["to"], run["state"]) == (
        "ops@bastion",
        "stable-2.12.6",
        "stable-2.13.7",
        "Done",
    )
    assert run["plan_digest"] == run["audit"]["plan_digest"]
    (hop,) = run["audit"]["hops"]
    assert (hop["hop"], hop["outcome"]) == (1, "done")
    assert dt.datetime.fromisoformat(hop["ended_at"]) - dt.datetime.fromisoformat(hop["started_at"]) == dt.timedelta(
        minutes=4, seconds=12
    )


def test_history_table_shows_who_and_each_hop_and_a_run_from_before_audit_records(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The table has the user and `1 done 4m12s`; a checkpoint without a record shows `-`, not an error."""
    FileStore(tmp_path).store(checkpoint=_audited())
    FileStore(tmp_path).store(checkpoint=good_checkpoint("run-old", NOW - dt.timedelta(days=1)))
    monkeypatch.setenv("COLUMNS", "250")
    code, out, err = cli(capsys, monkeypatch, "history", "--state-store", f"file:{tmp_path}")
    assert code == 0, err
    assert "ops@bastion" in out
    assert "1 done 4m12s" in out
    assert "run-old" in out


def test_history_names_a_checkpoint_whose_audit_record_is_damaged_and_lists_the_rest(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A record with a damaged audit part is named on stderr (file and field); the good run is listed; exit 0."""
    FileStore(tmp_path).store(checkpoint=_audited("run-good"))
    bad = json.loads(_audited("run-bad").model_dump_json())
    bad["audit"]["hops"][0]["started_at"] = "yesterday-ish"
    (tmp_path / "run-bad.json").write_text(json.dumps(bad))
    code, out, err = cli(capsys, monkeypatch, "history", "--state-store", f"file:{tmp_path}", "-o", "json")
    assert code == 0, err
    assert [r["run_id"] for r in json.loads(out)] == ["run-good"]
    assert str(tmp_path / "run-bad.json") in err
    assert "audit" in err


# ---- review fixes --------------------------------------------------------------------------------


def test_who_runs_in_a_pod_with_an_arbitrary_uid_and_no_user_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """getpass.getuser raises KeyError for a UID without a passwd entry: the run is recorded as uid:<n>; the
    ServiceAccount is found without asking for the user at all."""

    def no_name() -> str:
        raise KeyError("getpwuid(): uid not found: 1000680000")

    monkeypatch.setattr(runs.getpass, "getuser", no_name)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert runs.who_runs().name == f"uid:{os.getuid()}"

    def never() -> str:
        raise AssertionError("asked for the user")

    token = _jwt({"kubernetes.io": {"namespace": "ops", "serviceaccount": {"name": "upgrader"}}})
    found = audit.actor({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, {"token": token}.get, user=never, host="pod")
    assert str(found) == "system:serviceaccount:ops:upgrader"


def test_a_later_rollback_keeps_the_end_of_hops_an_earlier_one_rolled_back() -> None:
    """Rolled back twice (one hop each): the first hop's rolled-back end is not rewritten by the second."""
    record = audit.begin(None, plan={}, plan_digest="sha256:x", by=ME, action="apply", now=NOW)
    hops = [("stable-2.12.6", "stable-2.13.7"), ("stable-2.13.7", "stable-2.14.10")]
    for n, (a, b) in enumerate(hops):
        record, _ = follow(record, Transition("r", NOW, RunState.PREFLIGHT, RunState.UPGRADING_CRDS, n, a, b, "go"))
    record, _ = follow(record, Transition("r", NOW, RunState.VERIFYING_DATA_PLANE, RunState.DONE, 1, *hops[1], "ok"))
    first, second = NOW + dt.timedelta(hours=1), NOW + dt.timedelta(hours=2)
    record, _ = follow(
        record,
        Transition("r", first, RunState.ROLLING_BACK, RunState.ROLLED_BACK, 1, *hops[1], "x", rolled_back_hops=(1,)),
    )
    record, _ = follow(
        record,
        Transition("r", second, RunState.ROLLING_BACK, RunState.ROLLED_BACK, 0, *hops[0], "y", rolled_back_hops=(0, 1)),
    )
    assert record is not None
    assert [(h.outcome, h.ended_at) for h in record.hops] == [("rolled-back", second), ("rolled-back", first)]


def test_a_pause_before_the_next_hop_ends_the_hop_before_it_and_opens_none() -> None:
    """Paused before hop 2's first step: hop 1 is done then (not paused), no hop-started for hop 2 until the
    resume enters it, and hop 2's start is the resume's time."""
    record = audit.begin(None, plan={}, plan_digest="sha256:x", by=ME, action="apply", now=NOW)
    hops = [("stable-2.12.6", "stable-2.13.7"), ("stable-2.13.7", "stable-2.14.10")]
    record, _ = follow(record, Transition("r", NOW, RunState.PLANNED, RunState.PREFLIGHT, 0, *hops[0], "go"))
    paused_at, resumed_at = NOW + dt.timedelta(minutes=30), NOW + dt.timedelta(hours=20)
    record, notices = follow(
        record, Transition("r", paused_at, RunState.VERIFYING_DATA_PLANE, RunState.PAUSED, 1, *hops[1], "window")
    )
    assert [(n.kind, n.hop) for n in notices] == [("hop-done", 0), ("run-paused", 1)]
    assert record is not None
    assert [(h.hop, h.outcome, h.ended_at) for h in record.hops] == [(1, "done", paused_at)]
    record, notices = follow(
        record, Transition("r", resumed_at, RunState.PAUSED, RunState.PREFLIGHT, 1, *hops[1], "resumed")
    )
    assert [(n.kind, n.hop) for n in notices] == [("run-resumed", 1), ("hop-started", 1)]
    assert record is not None
    assert record.hops[1].started_at == resumed_at


def test_the_sender_thread_ends_after_close_even_when_the_queue_was_full() -> None:
    """An attempt hangs while the queue fills up, so close finds no room for the stop: the thread still
    ends once the attempt returns, and every event is counted once, sent or dropped."""
    answer = threading.Event()

    def hanging(_body: bytes) -> tuple[int | None, str]:
        answer.wait(5)
        return None, "no answer"

    notifier = WebhookNotifier("http://127.0.0.1:9/hook/s3cr3t", retries=0, capacity=2)
    notifier._post = hanging  # type: ignore[method-assign]
    notifier.send({"kind": "run-started", "run_id": "r0"})
    for _ in range(200):  # the thread took the first event and hangs in it
        if notifier._queue.empty():
            break
        time.sleep(0.01)
    for n in range(1, 4):  # two fill the queue, the third is dropped
        notifier.send({"kind": "hop-started", "run_id": f"r{n}"})
    notifier.close(wait=0.1)
    answer.set()
    notifier._thread.join(timeout=3)
    assert not notifier._thread.is_alive()
    assert (notifier.sent, notifier.dropped) == (0, 4)
    assert notifier.shown == "http://127.0.0.1:9/<redacted>"
    assert "s3cr3t" not in notifier._clean("POST http://127.0.0.1:9/hook/s3cr3t failed")
