"""The application layer's pure parts: run options remembered by a run and reused on resume."""

from __future__ import annotations

import datetime as dt

from tests.fakes import FakeKube
from upgrader.checkpoints import Checkpoint
from upgrader.ports import Pod
from upgrader.runs import ReadOnce, RunOptions

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


def test_resume_reuses_the_options_the_run_started_with() -> None:
    """A run started with --min-cert-days 75 keeps it on resume (it was forgotten before)."""
    checkpoint = Checkpoint.new("run-1", {"from": "a", "to": "b", "hops": []}, NOW)
    checkpoint.options = {**RunOptions(min_cert_days=75, repo="mirror").as_dict(), "namespace": "linkerd"}
    assert RunOptions.stored(checkpoint) == RunOptions(min_cert_days=75, repo="mirror")
    assert RunOptions.stored(checkpoint, min_cert_days=None, repo=None).min_cert_days == 75


def test_an_option_given_again_on_resume_wins() -> None:
    checkpoint = Checkpoint.new("run-1", {"from": "a", "to": "b", "hops": []}, NOW)
    checkpoint.options = {"min_cert_days": 75, "repo": "linkerd"}
    assert RunOptions.stored(checkpoint, min_cert_days=30).min_cert_days == 30


def test_a_checkpoint_without_options_gets_the_defaults() -> None:
    """Runs started by older versions stored no options: the defaults apply."""
    checkpoint = Checkpoint.new("run-1", {"from": "a", "to": "b", "hops": []}, NOW)
    assert RunOptions.stored(checkpoint) == RunOptions()
    assert RunOptions.given(min_cert_days=None, repo="linkerd") == RunOptions()


def test_one_observation_lists_the_meshed_pods_once_and_passes_every_other_read_through() -> None:
    """ReadOnce: discovery and the pin inputs share one LIST per (kind, selector); other reads are not kept."""
    kube = FakeKube(pods=[Pod("shop", "web-1", labels={"linkerd.io/control-plane-ns": "linkerd"})])
    reads = ReadOnce(kube)
    first = reads.list_pods(label_selector="linkerd.io/control-plane-ns")
    assert reads.list_pods(label_selector="linkerd.io/control-plane-ns") is first
    assert [p.name for p in first] == ["web-1"]
    reads.list_pods(label_selector="other")
    reads.list_workloads("linkerd")
    reads.list_workloads()
    reads.list_workloads()
    reads.server_version()
    reads.server_version()
    assert kube.calls == [
        "list_pods linkerd.io/control-plane-ns",
        "list_pods other",
        "list_workloads linkerd",
        "list_workloads *",
        "version",
        "version",
    ]
