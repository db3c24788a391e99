"""The data plane, decided purely: what to restart, in which order, when, and whether it passed.

Nothing here talks to the cluster. The executor observes (a ``DataPlaneView`` from one
cluster-wide list/watch cache), asks these functions, acts (a pod-template patch) and
observes again.

- ``inventory``: meshed workloads (pods carrying a ``linkerd-proxy`` container, or the
  native-sidecar init container, or the injector's label) mapped to their owners, and what
  is reported instead of restarted (bare pods, Jobs, ``OnDelete`` workloads, opted-out or
  skipped ones, injection-enabled namespaces with unmeshed pods).
- ``budget_block``: whether the PodDisruptionBudgets can absorb a workload's rollout (naming every
  one that cannot), and ``budget_hint`` what to change for the workload's own strategy.
- ``next_starts``: the throttle (per namespace, namespaces at once, global rate).
- ``assess``: the per-workload health gate.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from upgrader.discovery import DATA_PLANE_SELECTOR, PROXY_CONTAINER, proxy_version
from upgrader.ports import Budget, DataPlaneView, Namespace, Pod, Workload

SKIP = "upgrader.io/skip"
INJECT = "linkerd.io/inject"
RESTARTABLE = ("Deployment", "StatefulSet", "DaemonSet")
LOOPING = frozenset(
    {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError", "RunContainerError"}
)
MAX_RESTARTS = 3  # a new pod whose containers restarted this often is in a restart loop

Key = tuple[str, str, str]  # kind, namespace, name


@dataclass(frozen=True)
class Reported:
    """Something meshed (or meant to be) that the run leaves alone, and why."""

    kind: str
    namespace: str
    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}: {self.reason}"


@dataclass(frozen=True)
class Inventory:
    targets: tuple[Workload, ...]  # meshed workloads in scope, to restart
    reported: tuple[Reported, ...]
    proxies: Mapping[Key, Mapping[str, int]] = field(default_factory=dict)  # workload -> proxy version -> pods


def meshed(pod: Pod) -> bool:
    """A pod with a linkerd-proxy (container or native sidecar) or the injector's label."""
    return proxy_version(pod) is not None or DATA_PLANE_SELECTOR in pod.labels


def owner_of(pod: Pod) -> tuple[str, str] | None:
    """The (kind, name) of the workload that owns ``pod``: a ReplicaSet's pod belongs to its Deployment."""
    if pod.owner_kind == "ReplicaSet":
        template_hash = pod.labels.get("pod-template-hash")
        if template_hash and pod.owner_name.endswith(f"-{template_hash}"):
            return ("Deployment", pod.owner_name[: -len(template_hash) - 1])
        return ("ReplicaSet", pod.owner_name)
    if pod.owner_kind:
        return (pod.owner_kind, pod.owner_name)
    return None


def pods_of(workload: Workload, pods: Iterable[Pod]) -> list[Pod]:
    """The live (not terminating, not finished) pods of ``workload``."""
    return [
        p
        for p in pods
        if p.namespace == workload.namespace
        and owner_of(p) == (workload.kind, workload.name)
        and p.phase not in ("Terminating", "Succeeded", "Failed")
    ]


def pods_by_namespace(pods: Iterable[Pod]) -> dict[str, list[Pod]]:
    """``pods`` grouped by namespace, in their order (a gate over many workloads scans each namespace only)."""
    out: dict[str, list[Pod]] = {}
    for p in pods:
        out.setdefault(p.namespace, []).append(p)
    return out


def selects(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """Whether ``labels`` satisfy a matchLabels ``selector``."""
    return all(labels.get(k) == v for k, v in selector.items())


def _scope(
    view: DataPlaneView,
    scope: Iterable[str],
    exclude_namespaces: Iterable[str],
    include_selector: Mapping[str, str] | None,
    exclude_selector: Mapping[str, str] | None,
) -> tuple[set[str], list[Reported]]:
    """The namespaces in scope after exclusions, and the in-scope ones left out (with why)."""
    chosen = set(scope) - set(exclude_namespaces)
    reported = []
    for ns in sorted((n for n in view.namespaces if n.name in chosen), key=lambda n: n.name):
        why = ""
        if ns.annotations.get(SKIP) == "true":
            why = f"namespace annotated {SKIP}"
        elif include_selector and not selects(ns.labels, include_selector):
            why = "namespace not selected by dataPlane.includeSelector"
        elif exclude_selector and selects(ns.labels, exclude_selector):
            why = "namespace selected by dataPlane.excludeSelector"
        if why:
            reported.append(Reported("Namespace", ns.name, ns.name, why))
            chosen.discard(ns.name)
    return chosen, reported


def inventory(
    view: DataPlaneView,
    scope: Iterable[str],
    *,
    exclude_namespaces: Iterable[str] = (),
    include_selector: Mapping[str, str] | None = None,
    exclude_selector: Mapping[str, str] | None = None,
) -> Inventory:
    """Meshed workloads to restart in the ``scope`` namespaces, and what is reported instead."""
    chosen, reported = _scope(view, scope, exclude_namespaces, include_selector, exclude_selector)
    spaces = {n.name: n for n in view.namespaces}
    workloads = {w.key: w for w in view.workloads if w.namespace in chosen}
    proxies: dict[Key, Counter[str]] = defaultdict(Counter)
    unmeshed: Counter[str] = Counter()
    bare: dict[Key, str] = {}
    for pod in view.pods:
        if pod.namespace not in chosen or pod.phase in ("Terminating", "Succeeded", "Failed"):
            continue
        owner = owner_of(pod)
        version = proxy_version(pod)  # read once: meshed() would read it again
        if version is None and DATA_PLANE_SELECTOR not in pod.labels:  # not meshed (see meshed())
            injecting = spaces.get(pod.namespace, Namespace(pod.namespace)).annotations.get(INJECT) == "enabled"
            if injecting and pod.annotations.get(INJECT) != "disabled":
                unmeshed[pod.namespace] += 1
        elif owner is None:
            bare[("Pod", pod.namespace, pod.name)] = "bare pod: delete and recreate it to get the new proxy"
        elif (owner[0], pod.namespace, owner[1]) not in workloads:
            what = "Job pod: it picks up the new proxy on its next run" if owner[0] == "Job" else "no restartable owner"
            bare[(owner[0], pod.namespace, owner[1])] = what
        else:
            proxies[(owner[0], pod.namespace, owner[1])][version or "unknown"] += 1
    reported += [Reported(k, ns, n, why) for (k, ns, n), why in sorted(bare.items())]
    reported += [
        Reported("Namespace", ns, ns, f"injection enabled but {count} pod(s) unmeshed; restarting would mesh them")
        for ns, count in sorted(unmeshed.items())
    ]
    targets = []
    for key in sorted(proxies):
        w = workloads[key]
        if w.annotations.get(SKIP) == "true":
            reported.append(Reported(*key, f"annotated {SKIP}"))
        elif w.strategy == "OnDelete":
            reported.append(Reported(*key, "updateStrategy OnDelete: a restart does not replace its pods; delete them"))
        else:
            targets.append(w)
    return Inventory(tuple(targets), tuple(reported), {k: dict(v) for k, v in proxies.items()})


# ---- disruption budgets -------------------------------------------------------------------------
def _scaled(value: str | None, default: str, total: int, *, round_up: bool) -> int:
    text = value if value is not None else default
    if text.endswith("%"):
        exact = float(text[:-1]) * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(text)


def down_at_once(workload: Workload) -> int:
    """How many pods a restart of ``workload`` may take down at once, per its own rollout strategy."""
    n = workload.replicas
    if workload.strategy == "Recreate":
        return n
    if workload.kind == "Deployment":
        unavailable = _scaled(workload.max_unavailable, "25%", n, round_up=False)
        surge = _scaled(workload.max_surge, "25%", n, round_up=True)
        return 1 if unavailable == 0 and surge == 0 else min(unavailable, n)
    if workload.kind == "DaemonSet" and _scaled(workload.max_surge, "0", n, round_up=True) > 0:
        return 0  # surging DaemonSet pods start before old ones go
    return min(max(_scaled(workload.max_unavailable, "1", n, round_up=False), 1), n)


def blocking_budgets(workload: Workload, budgets: Iterable[Budget]) -> list[Budget]:
    """Every PodDisruptionBudget selecting ``workload`` that cannot absorb its restart right now."""
    selecting = [
        b
        for b in budgets
        if b.namespace == workload.namespace and b.match_labels and selects(workload.pod_labels, b.match_labels)
    ]
    if not selecting:  # the common case, checked for every pending workload on every change: no arithmetic
        return []
    down = down_at_once(workload)
    return [b for b in selecting if down > b.disruptions_allowed]


def budget_block(workload: Workload, budgets: Iterable[Budget]) -> str | None:
    """Why the PodDisruptionBudgets cannot absorb ``workload``'s restart right now, naming each (None when they can)."""
    blocking = blocking_budgets(workload, budgets)
    if not blocking:
        return None
    rules = []
    for b in blocking:
        rule = f"maxUnavailable {b.max_unavailable}" if b.max_unavailable else f"minAvailable {b.min_available}"
        rules.append(
            f"PodDisruptionBudget {b.namespace}/{b.name} ({rule}) allows {b.disruptions_allowed} disruption(s)"
        )
    return (
        f"{' and '.join(rules)} but {workload.kind} {workload.namespace}/{workload.name} "
        f"takes up to {down_at_once(workload)} pod(s) down at once"
    )


def budget_hint(workload: Workload) -> str:
    """What to change so a budget allowing no disruption lets ``workload`` restart, for its actual strategy."""
    what = f"{workload.kind} {workload.namespace}/{workload.name}"
    n = workload.replicas
    if workload.kind == "StatefulSet":
        change = f"{what} cannot surge (a StatefulSet replaces one pod at a time): relax the budget"
        return f"{change}, or annotate it {SKIP}=true"
    if workload.strategy == "Recreate":
        change = f"switch {what} to strategy RollingUpdate with maxSurge 1 and maxUnavailable 0 (surge only)"
    elif workload.kind == "Deployment" and _scaled(workload.max_surge, "25%", n, round_up=True) > 0:
        change = f"set {what}'s maxUnavailable to 0 (surge only; its maxSurge is {workload.max_surge or '25%'})"
    else:  # maxSurge 0 (or a DaemonSet, whose default is 0): maxUnavailable 0 alone is rejected by the API
        change = f"set {what}'s maxSurge to at least 1 and maxUnavailable to 0 (surge only)"
    return f"relax the budget, {change}, or annotate it {SKIP}=true"


# ---- throttle ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Throttle:
    per_namespace: int = 1
    namespaces: int = 2
    per_minute: float | None = None

    def next_start_at(self, last_start: float | None) -> float:
        """When the global rate allows the next start (seconds on the same clock as ``last_start``)."""
        if self.per_minute is None or last_start is None:
            return -math.inf
        return last_start + 60 / self.per_minute


def next_starts(
    pending: Sequence[Workload],
    running: Iterable[Workload],
    throttle: Throttle,
    *,
    now: float,
    last_start: float | None,
) -> list[Workload]:
    """Which ``pending`` workloads may start now, in order.

    At most ``per_namespace`` running per namespace, at most ``namespaces`` namespaces with
    something running (a namespace already running is preferred, so namespaces finish one
    after another), and starts spaced by the global rate.
    """
    busy: Counter[str] = Counter(w.namespace for w in running)
    chosen: list[Workload] = []

    def full() -> bool:  # every slot taken: nothing pending can start (checked before sorting thousands)
        return len(+busy) >= throttle.namespaces and all(n >= throttle.per_namespace for n in busy.values())

    if full():
        return chosen
    for w in sorted(pending, key=lambda w: (busy[w.namespace] == 0, w.namespace, w.kind, w.name)):
        if now < throttle.next_start_at(last_start):
            break
        if busy[w.namespace] >= throttle.per_namespace:
            continue
        if busy[w.namespace] == 0 and len(+busy) >= throttle.namespaces:
            continue
        busy[w.namespace] += 1
        chosen.append(w)
        if throttle.per_minute is not None:
            last_start = now
        if full():
            break
    return chosen


# ---- health gate ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    state: Literal["rolling", "passed", "failed"]
    reason: str = ""


def rolled_out(w: Workload) -> bool:
    """The controller finished: it saw the change and every replica is updated and available."""
    if w.observed_generation < w.generation:
        return False
    done = w.updated == w.replicas and w.available == w.replicas and w.ready == w.replicas
    if w.kind != "DaemonSet":
        done = done and (w.total is None or w.total == w.replicas)
    return done and w.revision_settled


def digest_of(pod: Pod) -> str | None:
    """The digest of ``pod``'s proxy image when it is pinned by digest (its version cannot be read), else None.

    The proxy is the ``linkerd-proxy`` container, or the native-sidecar init container of that name.
    """
    sidecars = [c for c in pod.init_containers if c.restart_policy == "Always"]
    for c in (*pod.containers, *sidecars):
        if c.name == PROXY_CONTAINER and "@" in c.image:
            return c.image.split("@", 1)[1]
    return None


def assess(
    workload: Workload,
    pods: Iterable[Pod],
    *,
    marker: str | None,
    version: str | None,
    elapsed: float,
    timeout: float,
) -> Verdict:
    """The gate for one restarted workload: rollout complete, every pod new (``marker``), Ready,
    proxy at ``version`` (when given), no restart loop; failed past ``timeout`` seconds."""
    mine = pods_of(workload, pods)
    looping = sorted(
        f"{p.name} ({', '.join(sorted(set(p.waiting) & LOOPING)) or f'{p.restarts} restarts'})"
        for p in mine
        if set(p.waiting) & LOOPING or p.restarts >= MAX_RESTARTS
    )
    if looping:
        return Verdict("failed", f"restart loop: {', '.join(looping[:5])}")
    digests = sorted(p.name for p in mine if version is not None and digest_of(p) is not None)
    if digests:  # its version can never be read, so it never passes; pins are found before restarting
        return Verdict("failed", f"proxy pinned by image digest, not verifiable as {version}: {', '.join(digests[:5])}")
    problems = []
    if not rolled_out(workload):
        problems.append(
            f"rollout incomplete ({workload.updated} updated, {workload.available} available of {workload.replicas})"
        )
    old = [p.name for p in mine if marker is not None and p.annotations.get("upgrader.io/restarted-by") != marker]
    if old:
        problems.append(f"{len(old)} pod(s) not replaced yet")
    unready = sorted(f"{p.name} ({p.phase or 'unknown'})" for p in mine if not p.ready)
    if unready:
        problems.append(f"not Ready: {', '.join(unready[:5])}")
    if version is not None:
        behind = sorted(f"{p.name} ({proxy_version(p)})" for p in mine if proxy_version(p) not in (version, "unknown"))
        if behind:
            problems.append(f"proxy not at {version}: {', '.join(behind[:5])}")
    if len(mine) < workload.replicas:
        problems.append(f"{len(mine)} of {workload.replicas} pods exist")
    if not problems:
        return Verdict("passed")
    if elapsed >= timeout:
        return Verdict("failed", f"not healthy after {int(timeout)}s: {'; '.join(problems)}")
    return Verdict("rolling", "; ".join(problems))
