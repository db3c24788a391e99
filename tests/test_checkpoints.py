"""Checkpoints are stored atomically, privately, and never with private keys; the lock decides by table."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest

from upgrader.checkpoints import Checkpoint, FileStore, ReleaseRevisions, parse_state_store, plan_hash
from upgrader.errors import InputError, UpgraderError
from upgrader.locking import LeaseView, decide, holder_gone_here
from upgrader.states import RunState

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
PLAN = {"from": "stable-2.13.7", "to": "stable-2.14.10", "hops": [{"to": "stable-2.14.10"}]}


def _checkpoint(run_id: str = "run-1", **changes: object) -> Checkpoint:
    cp = Checkpoint.new(run_id, PLAN, NOW)
    return cp.model_copy(update=changes)


def test_file_store_round_trips_with_private_permissions(tmp_path: Path) -> None:
    """A stored checkpoint reads back equal; the file is 0600 and no temporary file is left."""
    store = FileStore(tmp_path / "state")
    cp = _checkpoint(
        state=RunState.UPGRADING_CRDS,
        releases={"linkerd-crds": ReleaseRevisions(namespace="linkerd", before=1, after=[2])},
    )
    store.store(checkpoint=cp)
    assert store.fetch(run_id="run-1") == cp
    path = tmp_path / "state" / "run-1.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["run-1.json"]


def test_file_store_lists_runs_oldest_first_and_purges(tmp_path: Path) -> None:
    """runs() lists every run by start time; purge removes one."""
    store = FileStore(tmp_path)
    store.store(checkpoint=_checkpoint("run-b", started_at=NOW + dt.timedelta(minutes=5)))
    store.store(checkpoint=_checkpoint("run-a"))
    assert [c.run_id for c in store.runs()] == ["run-a", "run-b"]
    store.purge(run_id="run-a")
    assert store.fetch(run_id="run-a") is None


def test_a_checkpoint_carrying_a_private_key_is_refused(tmp_path: Path) -> None:
    """If a values diff ever carried the issuer key, storing fails and nothing is written."""
    key = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----"
    cp = _checkpoint(values_diff=[{"key": "identity.issuer.tls.keyPEM", "new": key}])
    with pytest.raises(UpgraderError, match="private-key material"):
        FileStore(tmp_path).store(checkpoint=cp)
    assert list(tmp_path.iterdir()) == []


def test_run_ids_are_checked(tmp_path: Path) -> None:
    """A run id that could escape the folder is bad input."""
    with pytest.raises(InputError, match="not a run id"):
        FileStore(tmp_path).fetch(run_id="../etc/passwd")


def test_plan_hash_ignores_key_order() -> None:
    """The same plan hashes the same whatever the key order."""
    assert plan_hash({"a": 1, "b": [1, 2]}) == plan_hash({"b": [1, 2], "a": 1})
    assert plan_hash({"a": 1}) != plan_hash({"a": 2})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("file:/var/lib/upgrader", ("file", "/var/lib/upgrader")), ("kubernetes:upgrader", ("kubernetes", "upgrader"))],
)
def test_state_store_option(text: str, expected: tuple[str, str]) -> None:
    """--state-store names a backend and its argument."""
    assert parse_state_store(text) == expected


def test_unknown_state_store_is_bad_input() -> None:
    """Anything else names the accepted forms."""
    with pytest.raises(InputError, match="not understood"):
        parse_state_store("s3:bucket")


LIVE = LeaseView("alice@host:1/run-1", NOW - dt.timedelta(seconds=10), 60)
STALE = LeaseView("alice@host:1/run-1", NOW - dt.timedelta(seconds=300), 60)


@pytest.mark.parametrize(
    ("existing", "me", "take_over", "action", "words"),
    [
        pytest.param(None, "bob", False, "create", "no run holds", id="a free lock is created"),
        pytest.param(LIVE, "alice@host:1/run-1", False, "renew", "this run", id="the holder renews"),
        pytest.param(LIVE, "bob", False, "refuse", "alice@host:1/run-1", id="a live holder refuses a second run"),
        pytest.param(LIVE, "bob", True, "refuse", "alice@host:1/run-1", id="a live lock is never taken over"),
        pytest.param(STALE, "bob", False, "refuse", "--take-over-lock", id="a stale lock says how to take it over"),
        pytest.param(STALE, "bob", True, "take-over", "stale", id="a stale lock is taken over when asked"),
    ],
)
def test_lock_decisions(existing: LeaseView | None, me: str, take_over: bool, action: str, words: str) -> None:
    """The lock is taken, renewed, refused (naming the holder) or taken over only when stale and asked."""
    decision = decide(existing, me, NOW, take_over=take_over)
    assert decision.action == action
    assert words in decision.reason


def test_a_holder_whose_process_is_gone_counts_as_stale_but_still_needs_asking() -> None:
    """A killed run on this host frees the lock for an explicit take-over at once, not silently."""
    assert decide(LIVE, "bob", NOW, holder_gone=True).action == "refuse"
    assert decide(LIVE, "bob", NOW, take_over=True, holder_gone=True).action == "take-over"


@pytest.mark.parametrize(
    ("holder", "alive", "gone"),
    [
        ("alice@vm:123/run-1", False, True),
        ("alice@vm:123/run-1", True, False),
        ("alice@other:123/run-1", False, False),
        ("garbage", False, False),
    ],
    ids=["dead pid on this host", "live pid on this host", "another host is never judged", "unparseable holder"],
)
def test_holder_gone_here(holder: str, alive: bool, gone: bool) -> None:
    """Only a holder on this host whose pid is not running is known to be gone."""
    assert holder_gone_here(holder, "vm", lambda _pid: alive) is gone
