"""Pod timing on the local cluster: KWOK ``Stage`` resources in which pods take time.

KWOK (v0.7.0, the version ``e2e.harness.binaries`` builds) plays a pod's life as stages; its
built-in "fast" pod stages make a pod Ready and delete it at once. Giving kwok any Pod stage
through ``--config`` replaces all of its built-in Pod stages (``getDefaultPodStages`` is used only
when none is configured), so ``stages_yaml`` writes all three of them (ready, complete for Job
pods, delete), equal to the built-in ones except for a delay on ready and delete:

- ready: ``spec.delay.durationMilliseconds`` is the cluster's shortest start, and
  ``jitterDurationMilliseconds`` its longest; kwok waits a time drawn uniformly between the two
  (``lifecycle.Stage.Delay``). A pod's annotations ``READY_DELAY`` / ``READY_JITTER`` (Go
  durations, "1500ms") override both through ``durationFrom`` / ``jitterDurationFrom``.
- delete: a pod marked for deletion is removed after the cluster's grace period, or its
  ``DELETE_DELAY`` annotation's.

With ``PodTiming()`` (all zero, the default of ``LocalCluster``) every pod without those
annotations is Ready and removed at once, as with kwok's own stages, so the suite is no slower;
a test or the benchmark asks for realistic pods on its own workloads with ``timed(docs, timing)``
(the annotations on their pod templates), which is how timing is set per namespace.

One trap in kwok's arithmetic: a jitter at or below the duration *replaces* it. So a jitter
value is only written when it is above the duration, and ``PodTiming.annotations`` always
writes both ready annotations together.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

READY_DELAY = "upgrader-e2e/ready-delay"  # shortest time from scheduled to Ready
READY_JITTER = "upgrader-e2e/ready-jitter"  # longest time from scheduled to Ready
DELETE_DELAY = "upgrader-e2e/delete-delay"  # grace period between deletion and removal
_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")


@dataclass(frozen=True)
class PodTiming:
    """A pod is Ready ``ready_ms`` +/- ``jitter_ms`` after it is scheduled, and removed ``delete_ms`` after
    its deletion starts."""

    ready_ms: int = 0
    jitter_ms: int = 0
    delete_ms: int = 0

    def __post_init__(self) -> None:
        if min(self.ready_ms, self.jitter_ms, self.delete_ms) < 0 or self.jitter_ms > self.ready_ms:
            raise ValueError(f"{self}: times must be >= 0 and the jitter at most the ready delay")

    @property
    def shortest_ms(self) -> int:
        return self.ready_ms - self.jitter_ms

    @property
    def longest_ms(self) -> int:
        return self.ready_ms + self.jitter_ms

    def annotations(self) -> dict[str, str]:
        """Pod annotations that give a pod this timing whatever the cluster's default."""
        return {
            READY_DELAY: f"{self.shortest_ms}ms",
            READY_JITTER: f"{self.longest_ms}ms",
            DELETE_DELAY: f"{self.delete_ms}ms",
        }


def timed(docs: Iterable[dict[str, Any]], timing: PodTiming) -> list[dict[str, Any]]:
    """``docs`` with ``timing``'s annotations on the pod template of every workload (and on bare Pods)."""
    out = []
    for original in docs:
        doc = yaml.safe_load(yaml.safe_dump(original))  # a deep copy: the caller's manifests stay as they were
        if doc.get("kind") in _KINDS:
            meta = doc["spec"]["template"].setdefault("metadata", {})
        elif doc.get("kind") == "Pod":
            meta = doc.setdefault("metadata", {})
        else:
            out.append(doc)
            continue
        meta["annotations"] = {**(meta.get("annotations") or {}), **timing.annotations()}
        out.append(doc)
    return out


def _delay(default_ms: int, annotation: str, jitter_ms: int | None = None, jitter: str | None = None) -> dict[str, Any]:
    delay: dict[str, Any] = {
        "durationMilliseconds": default_ms,
        "durationFrom": {"jq": {"expression": f'.metadata.annotations["{annotation}"]'}},
    }
    if jitter is not None:
        if jitter_ms is not None and jitter_ms > default_ms:  # see the module docstring: never at or below
            delay["jitterDurationMilliseconds"] = jitter_ms
        delay["jitterDurationFrom"] = {"jq": {"expression": f'.metadata.annotations["{jitter}"]'}}
    return delay


_READY_STATUS = """\
{{ $now := Now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: ContainersReady
{{ range .spec.readinessGates }}
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: {{ .conditionType | Quote }}
{{ end }}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
initContainerStatuses:
{{ range .spec.initContainers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  {{ if eq .restartPolicy "Always" }}
  started: true
  state:
    running:
      startedAt: {{ $now | Quote }}
  {{ else }}
  state:
    terminated:
      exitCode: 0
      finishedAt: {{ $now | Quote }}
      reason: Completed
      startedAt: {{ $now | Quote }}
  {{ end }}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) \
( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
phase: Running
startTime: {{ $now | Quote }}
"""

_COMPLETE_STATUS = """\
{{ $now := Now }}
{{ $root := . }}
containerStatuses:
{{ range $index, $item := .spec.containers }}
- image: {{ $item.image | Quote }}
  name: {{ $item.name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: 0
      finishedAt: {{ $now | Quote }}
      reason: Completed
      startedAt: {{ $now | Quote }}
{{ end }}
phase: Succeeded
"""


def _stage(name: str, expressions: list[dict[str, Any]], nxt: dict[str, Any], delay: dict[str, Any] | None) -> Any:
    spec: dict[str, Any] = {
        "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
        "selector": {"matchExpressions": expressions},
        "next": nxt,
    }
    if delay is not None:
        spec["delay"] = delay
    return {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": name}, "spec": spec}


def stages(timing: PodTiming) -> list[dict[str, Any]]:
    """KWOK's three pod stages (ready, complete, delete) with ``timing`` as the cluster's default."""
    alive = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}
    return [
        _stage(
            "pod-ready",
            [alive, {"key": ".status.podIP", "operator": "DoesNotExist"}],
            {"statusTemplate": _READY_STATUS},
            _delay(timing.shortest_ms, READY_DELAY, timing.longest_ms, READY_JITTER),
        ),
        _stage(
            "pod-complete",
            [
                alive,
                {"key": ".status.phase", "operator": "In", "values": ["Running"]},
                {"key": ".metadata.ownerReferences.[].kind", "operator": "In", "values": ["Job"]},
            ],
            {"statusTemplate": _COMPLETE_STATUS},
            None,
        ),
        _stage(
            "pod-delete",
            [{"key": ".metadata.deletionTimestamp", "operator": "Exists"}],
            {"finalizers": {"empty": True}, "delete": True},
            _delay(timing.delete_ms, DELETE_DELAY),
        ),
    ]


def stages_yaml(timing: PodTiming) -> str:
    """The kwok ``--config`` file for ``timing``."""
    return yaml.safe_dump_all(stages(timing), sort_keys=False)
